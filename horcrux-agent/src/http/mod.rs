//! The HTTP surface (axum): REST endpoints and the WebSocket. Handlers only read the
//! latest published snapshot; they never collect.

mod api;
mod ws;

use std::{
    sync::{Arc, atomic::AtomicUsize},
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

use crate::{cgroup::CgroupMode, collector::SnapshotReceiver, config::Config};

pub struct AppState {
    pub config: Config,
    pub snapshots: SnapshotReceiver,
    pub ws_messages: broadcast::Sender<Utf8Bytes>,
    pub ws_clients: AtomicUsize,
    pub started: Instant,
    pub cgroup_mode: CgroupMode,
    pub ebpf_embedded: bool,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/monitoring/node/metrics", get(api::node_metrics))
        .route("/api/status", get(api::status))
        .route("/ws", get(ws::upgrade))
        .fallback(api::not_found)
        .with_state(state)
}

/// A JSON error body: `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}
