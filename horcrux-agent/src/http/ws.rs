//! `GET /ws`: every client gets the latest `NodeMetrics` on connect, then one per
//! collection. Messages come from a broadcast channel: a slow client lags and skips
//! messages instead of delaying the collector or the other clients, and a client
//! that cannot take a message within [`SEND_TIMEOUT`] is disconnected.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{Message, Utf8Bytes, WebSocket},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
};
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, AppState};

const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients have nothing to say: frames and messages beyond this close the connection.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

pub async fn upgrade(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    let admitted = state
        .ws_clients
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |clients| {
            (clients < state.config.max_ws_clients).then_some(clients + 1)
        })
        .is_ok();
    if !admitted {
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many WebSocket clients (max_ws_clients = {})",
                state.config.max_ws_clients
            ),
        )
        .into_response();
    }
    let slot = ClientSlot(Arc::clone(&state));
    upgrade
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(socket, slot))
}

/// Frees the client's place when its connection ends, however it ends.
struct ClientSlot(Arc<AppState>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.ws_clients.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve(mut socket: WebSocket, slot: ClientSlot) {
    let state = &slot.0;
    let mut messages = state.ws_messages.subscribe();
    let latest = state.node.borrow().clone();
    if let Some(snapshot) = latest
        && !send(&mut socket, snapshot.node_message.clone()).await
    {
        return;
    }
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(text) => if !send(&mut socket, text).await { return },
                Err(RecvError::Lagged(skipped)) => tracing::debug!(skipped, "slow WebSocket client skipped messages"),
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                // Clients have nothing to say; pings are answered by axum.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn send(socket: &mut WebSocket, text: Utf8Bytes) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text))).await,
        Ok(Ok(()))
    )
}
