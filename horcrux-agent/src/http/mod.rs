//! The HTTP surface (axum): REST endpoints and the WebSocket. Handlers only read the
//! latest published snapshot; they never collect.

mod api;
mod containers;
mod dashboard;
mod history;
mod prometheus;
mod ws;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::Instant,
};

use axum::{
    Json, Router,
    extract::ws::Utf8Bytes,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::broadcast;

use crate::{
    alerts::AlertEngine,
    cgroup::Hierarchies,
    collector::{ContainerSnapshot, Latest, NodeSnapshot},
    config::Config,
    history::History,
};

pub struct AppState {
    pub config: Config,
    pub node: Latest<NodeSnapshot>,
    pub containers: Latest<ContainerSnapshot>,
    pub ws_messages: broadcast::Sender<Utf8Bytes>,
    pub ws_clients: AtomicUsize,
    pub started: Instant,
    pub hierarchies: Hierarchies,
    /// Where each container metric family comes from on this host (or why not).
    pub cgroup_families: BTreeMap<&'static str, String>,
    /// `None` when `enable_history` is off.
    pub history: Option<Arc<Mutex<History>>>,
    pub alerts: Arc<Mutex<AlertEngine>>,
    pub ebpf_embedded: bool,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/style.css", get(dashboard::style))
        .route("/api/monitoring/node/metrics", get(api::node_metrics))
        .route("/api/status", get(api::status))
        .route("/api/alerts", get(api::alerts))
        .route("/api/containers", get(containers::list))
        .route("/api/containers/{id}/metrics", get(containers::metrics))
        .route("/api/monitoring/node/history", get(history::node))
        .route("/api/containers/{id}/history", get(history::container))
        .route("/metrics", get(prometheus::metrics))
        .route("/ws", get(ws::upgrade))
        .fallback(api::not_found)
        .with_state(state)
}

/// A JSON error body: `{"error": "..."}`.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn no_sample_yet() -> Self {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no sample collected yet; retry after the first collection cycle".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}
