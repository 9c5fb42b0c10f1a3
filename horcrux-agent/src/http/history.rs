//! History endpoints: `GET /api/monitoring/node/history`,
//! `GET /api/containers/{id}/history` (and the VMs' in [`super::vms`]), with
//! `?metric=<name>&range=<s>&step=<s>`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{ApiError, AppState, containers::resolve};
use crate::{
    catalog::{self, Scope},
    clock,
    history::SeriesKey,
};

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    metric: Option<String>,
    /// Seconds back from now (default one hour).
    range: Option<u64>,
    /// Seconds per point; at or below the sampling interval the points are raw values
    /// (default 1: raw where possible).
    step: Option<u64>,
}

pub async fn node(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    answer(&state, Scope::Node, String::new(), &query)
}

pub async fn container(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let Some(snapshot) = state.containers.borrow().clone() else {
        return ApiError::starting().into_response();
    };
    match resolve(&snapshot.containers, &id) {
        Ok(container) => answer(&state, Scope::Container, container.cgroup.clone(), &query),
        Err(error) => error.into_response(),
    }
}

/// `target`: `""` for the node, a container's cgroup path, a VM's history key.
pub fn answer(state: &AppState, scope: Scope, target: String, query: &HistoryQuery) -> Response {
    let Some(store) = &state.history else {
        return ApiError(
            StatusCode::NOT_FOUND,
            "history is disabled: set enable_history = true under [monitoring]".into(),
        )
        .into_response();
    };
    let valid = || catalog::series_names(scope).join(", ");
    let Some(metric) = query
        .metric
        .as_deref()
        .and_then(|name| catalog::series_name(scope, name))
    else {
        return ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown or missing metric {:?}; valid metrics: {}",
                query.metric.as_deref().unwrap_or(""),
                valid()
            ),
        )
        .into_response();
    };
    let retention = state.config.history_retention.as_secs();
    let range = query.range.unwrap_or(3600);
    let step = query.step.unwrap_or(1);
    if range == 0 || range > retention || step == 0 || step > range {
        return ApiError(
            StatusCode::BAD_REQUEST,
            format!("need 0 < range <= history_retention ({retention}) and 0 < step <= range"),
        )
        .into_response();
    }
    let points = store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .query(
            &SeriesKey {
                scope,
                target,
                metric,
            },
            clock::now(),
            range,
            step,
        );
    Json(serde_json::json!({
        "metric": metric,
        "range": range,
        "step": step,
        "points": points,
    }))
    .into_response()
}
