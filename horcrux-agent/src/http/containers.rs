//! Container endpoints. `{id}` is looked up among the discovered containers (full id,
//! unique hex prefix of at least 12 digits, or name); no path is built from it.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{ApiError, AppState};
use crate::model::{ContainerMetrics, ContainerState, Pod, Runtime};

/// Shortest id prefix accepted, as `docker ps` prints ids.
const MIN_PREFIX: usize = 12;
pub const MAX_QUERY: usize = 128;

/// One row of `GET /api/containers`: identity and the spec's headline metrics.
#[derive(Serialize)]
struct Summary<'a> {
    id: &'a str,
    name: Option<&'a str>,
    runtime: Runtime,
    state: ContainerState,
    pod: Option<&'a Pod>,
    cgroup: &'a str,
    owner_uid: Option<u32>,
    cpu_usage_percent: Option<f64>,
    memory_usage_bytes: Option<u64>,
    memory_limit_bytes: Option<u64>,
    block_read_bytes: Option<u64>,
    block_write_bytes: Option<u64>,
    network_rx_bytes: Option<u64>,
    network_tx_bytes: Option<u64>,
}

impl<'a> From<&'a ContainerMetrics> for Summary<'a> {
    fn from(container: &'a ContainerMetrics) -> Self {
        Self {
            id: &container.id,
            name: container.name.as_deref(),
            runtime: container.runtime,
            state: container.state,
            pod: container.pod.as_ref(),
            cgroup: &container.cgroup,
            owner_uid: container.owner_uid,
            cpu_usage_percent: container.cpu_usage_percent,
            memory_usage_bytes: container.memory_usage_bytes,
            memory_limit_bytes: container.memory_limit_bytes,
            block_read_bytes: container.block_read_bytes,
            block_write_bytes: container.block_write_bytes,
            network_rx_bytes: container.network_rx_bytes,
            network_tx_bytes: container.network_tx_bytes,
        }
    }
}

/// `GET /api/containers`.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let Some(snapshot) = state.containers.borrow().clone() else {
        return ApiError::starting().into_response();
    };
    Json(list_body(&snapshot.containers, snapshot.at.unix)).into_response()
}

/// The body of `GET /api/containers`.
pub fn list_body(containers: &[ContainerMetrics], timestamp: u64) -> serde_json::Value {
    let containers: Vec<Summary> = containers.iter().map(Summary::from).collect();
    serde_json::json!({
        "timestamp": timestamp,
        "count": containers.len(),
        "containers": containers,
    })
}

/// `GET /api/containers/{id}/metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>, Path(query): Path<String>) -> Response {
    let Some(snapshot) = state.containers.borrow().clone() else {
        return ApiError::starting().into_response();
    };
    match resolve(&snapshot.containers, &query) {
        Ok(container) => Json(WithOomKills {
            oom_kills: state.oom.borrow().recent_of("container", &container.id),
            metrics: container,
        })
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// A container's or VM's metrics with its recent OOM kills (eBPF OOM family),
/// newest first.
#[derive(serde::Serialize)]
pub struct WithOomKills<'a, T> {
    #[serde(flatten)]
    pub metrics: &'a T,
    pub oom_kills: Vec<crate::oom::OomKillRecord>,
}

/// An id, name or uuid as the API accepts them: `[A-Za-z0-9_.-]`, at most
/// [`MAX_QUERY`] bytes. Nothing else is looked up.
pub fn well_formed(query: &str) -> bool {
    !query.is_empty()
        && query.len() <= MAX_QUERY
        && query
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"_.-".contains(&byte))
}

/// Finds the container `query` names: exact id, exact name, or unique id prefix.
pub fn resolve<'a>(
    containers: &'a [ContainerMetrics],
    query: &str,
) -> Result<&'a ContainerMetrics, ApiError> {
    if !well_formed(query) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "malformed container id {query:?}: expected hex id, id prefix or name ([A-Za-z0-9_.-], at most {MAX_QUERY})"
            ),
        ));
    }
    // Two cgroups can claim one id (see /api/status discovery.id_conflicts): then
    // the id is ambiguous, not the first one's.
    let exact: Vec<&ContainerMetrics> = containers
        .iter()
        .filter(|container| container.id == query)
        .collect();
    if let [container] = exact[..] {
        return Ok(container);
    }
    let named: Vec<&ContainerMetrics> = containers
        .iter()
        .filter(|container| container.name.as_deref() == Some(query))
        .collect();
    if let ([], [container]) = (&exact[..], &named[..]) {
        return Ok(container);
    }
    let prefix = query.to_ascii_lowercase();
    let matches: Vec<&ContainerMetrics> = if exact.len() > 1 {
        exact
    } else if named.len() > 1 {
        named
    } else if prefix.len() >= MIN_PREFIX && prefix.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        containers
            .iter()
            .filter(|container| container.id.starts_with(&prefix))
            .collect()
    } else {
        Vec::new()
    };
    match matches[..] {
        [container] => Ok(container),
        [] => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no container {query:?} (ids, {MIN_PREFIX}+ digit id prefixes and names are accepted)"
            ),
        )),
        _ => Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "{query:?} matches {} containers: {}",
                matches.len(),
                matches
                    .iter()
                    .map(|container| container.cgroup.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
