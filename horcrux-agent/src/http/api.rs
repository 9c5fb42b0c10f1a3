//! REST handlers.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::{
    cgroup::CgroupMode,
    clock,
    collector::{self, containers::DiscoveryReport, vms::VmSourcesStatus},
    ebpf::{EbpfStatus, ProgramState},
    health::{CollectorHealth, SupervisorView},
    messages::Message,
    model::StaleFilesystem,
};

/// `GET /api/monitoring/node/metrics`: the latest node snapshot, pre-serialized.
pub async fn node_metrics(State(state): State<Arc<AppState>>) -> Response {
    let latest = state.node.borrow().clone();
    match latest {
        Some(snapshot) => (
            [(header::CONTENT_TYPE, "application/json")],
            snapshot.node_json.clone(),
        )
            .into_response(),
        None => ApiError::starting().into_response(),
    }
}

/// What `/api/status` says of how eBPF counters are attributed.
const EBPF_NOTES: &[&str] = &[
    "Scheduler counters are charged to the task's cgroup in the cpu controller's hierarchy \
     (v1/hybrid) or its cgroup2 directory (v2); block I/O to the bio's blkcg, as the kernel \
     charges it, or the submitting task's io cgroup for requests without one.",
    "On cgroup v1, blkio counts nothing for a cgroup without a blk-throttle rule; such \
     containers' block_read_bytes/block_write_bytes come from the eBPF block programs \
     (block_io.source = \"ebpf\"), counted since the programs were attached.",
    "Counters start when the programs are attached (ebpf.since in the metrics).",
];

/// `GET /api/status`: agent identity, cgroup mode, eBPF programs, collector health.
pub async fn status(State(state): State<Arc<AppState>>) -> Response {
    let node = state.node.borrow().clone();
    let containers = state.containers.borrow().clone();
    let vms = state.vms.borrow().clone();
    let ebpf = state.ebpf.borrow().clone();
    let ebpf_status = ebpf.as_ref().map(|ebpf| &ebpf.status);
    let hierarchies = &state.hierarchies;
    let config = &state.config;
    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        hostname: node.as_ref().map_or_else(collector::hostname, |snapshot| {
            snapshot.node.hostname.clone()
        }),
        uptime_seconds: state.started.elapsed().as_secs(),
        timestamp: clock::unix_seconds(),
        ready: state.ready(),
        cgroup_mode: hierarchies.mode(),
        cgroup: CgroupStatus {
            unified: hierarchies.unified.as_deref(),
            unified_controllers: &hierarchies.unified_controllers,
            v1: &hierarchies.v1,
            families: &state.cgroup_families,
        },
        ebpf: EbpfView {
            // Until the node collector's first snapshot, collection is starting.
            state: if node.is_some() {
                "settled"
            } else {
                "attaching"
            },
            embedded: state.ebpf_embedded,
            attached_programs: ebpf_status.map_or(0, |status| {
                status
                    .programs
                    .iter()
                    .filter(|program| program.state == ProgramState::Attached)
                    .count()
            }),
            status: ebpf_status,
            notes: EBPF_NOTES,
        },
        collectors: CollectorsView {
            node: node.as_ref().map(|snapshot| &snapshot.health),
            containers: containers.as_ref().map(|snapshot| &snapshot.health),
            vms: vms.as_ref().map(|snapshot| &snapshot.health),
            supervision: Supervision {
                node: state.collectors.node.view(),
                containers: state.collectors.containers.view(),
                vms: state.collectors.vms.view(),
            },
        },
        containers: containers
            .as_ref()
            .map_or(0, |snapshot| snapshot.containers.len()),
        discovery: containers.as_ref().map(|snapshot| &snapshot.discovery),
        vms: vms.as_ref().map_or(0, |snapshot| snapshot.vms.len()),
        vm_sources: vms.as_ref().map(|snapshot| &snapshot.sources),
        stale_filesystems: node
            .as_ref()
            .map(|snapshot| snapshot.node.stale_filesystems.as_slice()),
        config: ConfigView {
            node_metrics_interval: state.intervals.node.load(Ordering::Relaxed),
            vm_metrics_interval: state.intervals.containers.load(Ordering::Relaxed),
            max_containers: config.containers.max_containers,
            max_containers_per_user: config.containers.max_containers_per_user,
            enable_history: config.enable_history,
            history_retention: config.history_retention.as_secs(),
            max_ws_clients: config.max_ws_clients,
        },
        websocket: WebsocketView {
            clients: state.ws_clients.load(Ordering::Relaxed),
            max_clients: config.max_ws_clients,
        },
        security: SecurityView {
            tls: state.tls.is_some(),
            client_certificates: config
                .server
                .tls
                .as_ref()
                .is_some_and(|tls| tls.client_ca.is_some()),
            authentication: config.server.authenticates(),
            capabilities: &state.capabilities,
            max_connections: config.server.max_connections,
        },
        exports: state.exports.iter().map(|status| status.view()).collect(),
        history_file: state.history_file.as_ref().map(|status| {
            status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }),
    };
    Json(status).into_response()
}

#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    hostname: String,
    uptime_seconds: u64,
    timestamp: u64,
    ready: bool,
    cgroup_mode: CgroupMode,
    cgroup: CgroupStatus<'a>,
    ebpf: EbpfView<'a>,
    collectors: CollectorsView<'a>,
    containers: usize,
    discovery: Option<&'a DiscoveryReport>,
    vms: usize,
    /// libvirt connected or why not, QMP sockets used or failing, KVM statistics.
    vm_sources: Option<&'a VmSourcesStatus>,
    stale_filesystems: Option<&'a [StaleFilesystem]>,
    config: ConfigView,
    websocket: WebsocketView,
    security: SecurityView<'a>,
    /// Every `[[remote_write]]` and `[[otlp]]` target: queued, sent, retried,
    /// dropped (and why), queue bytes on disk, last success and last error.
    exports: Vec<crate::export::ExportView>,
    /// What start-up restored from the history file and the last checkpoint.
    history_file: Option<crate::history::FileStatus>,
}

#[derive(Serialize)]
struct CgroupStatus<'a> {
    unified: Option<&'a std::path::Path>,
    unified_controllers: &'a [String],
    v1: &'a BTreeMap<String, PathBuf>,
    /// Where each container metric family comes from on this host (or why not).
    families: &'a BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct EbpfView<'a> {
    state: &'static str,
    embedded: bool,
    attached_programs: usize,
    /// Programs, events, and the hierarchies counters are charged to.
    #[serde(flatten)]
    status: Option<&'a EbpfStatus>,
    notes: &'static [&'static str],
}

#[derive(Serialize)]
struct CollectorsView<'a> {
    node: Option<&'a CollectorHealth>,
    containers: Option<&'a CollectorHealth>,
    vms: Option<&'a CollectorHealth>,
    supervision: Supervision,
}

#[derive(Serialize)]
struct Supervision {
    node: SupervisorView,
    containers: SupervisorView,
    vms: SupervisorView,
}

#[derive(Serialize)]
struct ConfigView {
    node_metrics_interval: u64,
    vm_metrics_interval: u64,
    max_containers: usize,
    max_containers_per_user: usize,
    enable_history: bool,
    history_retention: u64,
    max_ws_clients: usize,
}

#[derive(Serialize)]
struct WebsocketView {
    clients: usize,
    max_clients: usize,
}

#[derive(Serialize)]
struct SecurityView<'a> {
    tls: bool,
    client_certificates: bool,
    authentication: bool,
    capabilities: &'a [String],
    max_connections: usize,
}

/// `GET /api/alerts`: the rules, the alerts firing now and the recently resolved ones.
pub async fn alerts(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let engine = state
        .alerts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let active = engine.active();
    let resolved = engine.recently_resolved();
    Json(json!({
        "rules": engine.rules(),
        "active": active.iter().map(Message::alert).collect::<Vec<_>>(),
        "resolved": resolved.iter().map(Message::alert).collect::<Vec<_>>(),
    }))
}

/// `GET /healthz`: the process serves.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 once collection is complete, 503 `starting` before.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        ApiError::starting().into_response()
    }
}

pub async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}
