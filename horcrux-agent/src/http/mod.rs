//! The HTTP surface (axum): REST endpoints and the WebSocket. Handlers only read the
//! latest published snapshot; they never collect.

mod api;
pub mod containers;
mod dashboard;
mod history;
pub mod prometheus;
pub mod security;
pub mod serve;
pub mod vms;
mod ws;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::Instant,
};

use axum::{
    Json, Router,
    extract::{Request, State, ws::Utf8Bytes},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::broadcast;

use crate::{
    alerts::AlertEngine,
    catalog::agent::AgentView,
    cgroup::Hierarchies,
    clock,
    collector::{
        ContainerSnapshot, Intervals, Latest, NodeSnapshot, VmSnapshot, supervisor::CollectorStatus,
    },
    config::Config,
    ebpf::sampler::EbpfSnapshot,
    history::History,
};

/// The supervisors' view of each collector thread.
#[derive(Debug, Default)]
pub struct Collectors {
    pub node: Arc<CollectorStatus>,
    pub containers: Arc<CollectorStatus>,
    pub vms: Arc<CollectorStatus>,
}

pub struct AppState {
    pub config: Config,
    /// The intervals in force (SIGHUP may have changed them).
    pub intervals: Arc<Intervals>,
    pub node: Latest<NodeSnapshot>,
    pub containers: Latest<ContainerSnapshot>,
    pub vms: Latest<VmSnapshot>,
    /// The eBPF programs' status as of the last read of their maps.
    pub ebpf: Latest<EbpfSnapshot>,
    /// OOM kills so far (eBPF OOM family).
    pub oom: tokio::sync::watch::Receiver<Arc<crate::oom::OomView>>,
    pub ws_messages: broadcast::Sender<Utf8Bytes>,
    pub ws_clients: AtomicUsize,
    pub started: Instant,
    pub hierarchies: Hierarchies,
    /// Where each container metric family comes from on this host (or why not).
    pub cgroup_families: BTreeMap<&'static str, String>,
    /// `None` when `enable_history` is off.
    pub history: Option<Arc<Mutex<History>>>,
    pub alerts: Arc<Mutex<AlertEngine>>,
    pub collectors: Collectors,
    pub ebpf_embedded: bool,
    /// Replaced on SIGHUP.
    pub credentials: std::sync::RwLock<Arc<security::Credentials>>,
    /// Names `Host` may carry.
    pub allowed_hosts: std::collections::HashSet<String>,
    pub tls: Option<Arc<serve::TlsReloader>>,
    /// `/metrics` renders running at once (each walks every container).
    pub renders: tokio::sync::Semaphore,
    /// Effective capabilities after start-up.
    pub capabilities: Vec<String>,
    /// One per `[[remote_write]]` and `[[otlp]]` target.
    pub exports: Vec<Arc<crate::export::TargetStatus>>,
    /// The history file (with `enable_history`).
    pub history_file: Option<Arc<Mutex<crate::history::FileStatus>>>,
}

/// Concurrent `/metrics` renders; further scrapes wait their turn.
pub const MAX_CONCURRENT_RENDERS: usize = 2;
/// A request is answered within this, or gets 503.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl AppState {
    /// Collection is complete: the eBPF programs are attached or have failed, and
    /// every collector has published.
    pub fn ready(&self) -> bool {
        self.node.borrow().is_some()
            && self.containers.borrow().is_some()
            && self.vms.borrow().is_some()
    }

    /// What the agent's own families read, from these snapshots and the
    /// supervisors.
    pub fn agent_view(
        &self,
        node: Option<&NodeSnapshot>,
        containers: Option<&ContainerSnapshot>,
        vms: Option<&VmSnapshot>,
    ) -> AgentView {
        AgentView {
            cgroup_mode: self.hierarchies.mode().name(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            collectors: [
                ("node", node.map(|n| &n.health)),
                ("containers", containers.map(|c| &c.health)),
                ("vms", vms.map(|v| &v.health)),
            ]
            .into_iter()
            .filter_map(|(name, health)| Some((name, health?.clone())))
            .collect(),
            supervision: vec![
                ("node", self.collectors.node.view()),
                ("containers", self.collectors.containers.view()),
                ("vms", self.collectors.vms.view()),
            ],
            ebpf: self.ebpf.borrow().as_ref().map(|ebpf| ebpf.status.clone()),
            websocket_clients: self.ws_clients.load(std::sync::atomic::Ordering::Relaxed) as u64,
            exports: self.exports.iter().map(|status| status.view()).collect(),
            oom: Arc::clone(&self.oom.borrow()),
        }
    }

    /// Every collector published within three of its intervals (at least 30 s).
    pub fn collectors_fresh(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = clock::unix_seconds();
        [
            (&self.collectors.node, &self.intervals.node),
            (&self.collectors.containers, &self.intervals.containers),
            (&self.collectors.vms, &self.intervals.containers),
        ]
        .into_iter()
        .all(|(status, interval)| {
            let allowed = (interval.load(Ordering::Relaxed) * 3).max(30);
            status
                .view()
                .last_success
                .is_some_and(|last| now.saturating_sub(last) <= allowed)
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    // Metrics answer 503 until collection is complete: a figure published before the
    // eBPF programs are attached would silently miss what happened meanwhile.
    let metrics = Router::new()
        .route("/api/monitoring/node/metrics", get(api::node_metrics))
        .route("/api/containers", get(containers::list))
        .route("/api/containers/{id}/metrics", get(containers::metrics))
        .route("/api/monitoring/node/history", get(history::node))
        .route("/api/containers/{id}/history", get(history::container))
        .route("/api/vms", get(vms::list))
        .route("/api/vms/{id}/metrics", get(vms::metrics))
        .route("/api/vms/{id}/history", get(vms::history))
        .route("/metrics", get(prometheus::metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            ready_or_starting,
        ));
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/style.css", get(dashboard::style))
        .route("/api/status", get(api::status))
        .route("/api/alerts", get(api::alerts))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/ws", get(ws::upgrade))
        .merge(metrics)
        .fallback(api::not_found)
        .layer(middleware::from_fn(time_limit))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            security::guard,
        ))
        .with_state(state)
}

async fn time_limit(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, "request timed out".into()).into_response()
        }
    }
}

async fn ready_or_starting(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.ready() {
        next.run(request).await
    } else {
        ApiError::starting().into_response()
    }
}

/// A JSON error body: `{"error": "..."}`.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn starting() -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "starting".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}
