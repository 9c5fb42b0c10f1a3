//! REST handlers.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{ApiError, AppState};
use crate::{clock, collector, ebpf::ProgramState};

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
pub async fn status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let latest = state.node.borrow().clone();
    let containers = state.containers.borrow().clone();
    let (node_health, programs) = match &latest {
        Some(snapshot) => (json!(snapshot.health), json!(snapshot.ebpf_status)),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    let container_health = containers.as_ref().map(|snapshot| json!(snapshot.health));
    let supervised = |status: &crate::collector::supervisor::CollectorStatus| json!(status.view());
    // Until the node collector's first snapshot, the programs are being loaded.
    let ebpf_state = if latest.is_some() {
        "settled"
    } else {
        "attaching"
    };
    let hierarchies = &state.hierarchies;
    let attached = latest.as_ref().map_or(0, |snapshot| {
        snapshot
            .ebpf_status
            .programs
            .iter()
            .filter(|program| program.state == ProgramState::Attached)
            .count()
    });
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": latest.as_ref().map_or_else(collector::hostname, |snapshot| snapshot.node.hostname.clone()),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "timestamp": clock::unix_seconds(),
        "ready": state.ready(),
        "cgroup_mode": hierarchies.mode(),
        "cgroup": {
            "unified": hierarchies.unified,
            "unified_controllers": hierarchies.unified_controllers,
            "v1": hierarchies.v1,
            "families": state.cgroup_families,
        },
        "ebpf": {
            "state": ebpf_state,
            "embedded": state.ebpf_embedded,
            "attached_programs": attached,
            "programs": programs.get("programs"),
            "events": programs.get("events"),
            "sched_cgroups": programs.get("sched_cgroups"),
            "block_cgroups": programs.get("block_cgroups"),
            "notes": EBPF_NOTES,
        },
        "collectors": {
            "node": node_health,
            "containers": container_health,
            "supervision": {
                "node": supervised(&state.collectors.node),
                "containers": supervised(&state.collectors.containers),
            },
        },
        "containers": containers.as_ref().map_or(0, |snapshot| snapshot.containers.len()),
        "discovery": containers.as_ref().map(|snapshot| &snapshot.discovery),
        "stale_filesystems": latest.as_ref().map(|snapshot| &snapshot.node.stale_filesystems),
        "config": {
            "node_metrics_interval": state.intervals.node.load(Ordering::Relaxed),
            "vm_metrics_interval": state.intervals.containers.load(Ordering::Relaxed),
            "max_containers": state.config.containers.max_containers,
            "max_containers_per_user": state.config.containers.max_containers_per_user,
            "enable_history": state.config.enable_history,
            "history_retention": state.config.history_retention.as_secs(),
            "max_ws_clients": state.config.max_ws_clients,
        },
        "websocket": {
            "clients": state.ws_clients.load(Ordering::Relaxed),
            "max_clients": state.config.max_ws_clients,
        },
        "security": {
            "tls": state.tls.is_some(),
            "client_certificates": state.config.server.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
            "authentication": state.config.server.authenticates(),
            "capabilities": state.capabilities,
            "max_connections": state.config.server.max_connections,
        },
    }))
}

/// `GET /api/alerts`: the rules, the alerts firing now and the recently resolved ones.
pub async fn alerts(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let engine = state
        .alerts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Json(json!({
        "rules": engine.rules(),
        "active": engine.active(),
        "resolved": engine.recently_resolved(),
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
