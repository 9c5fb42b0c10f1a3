//! VM endpoints: `GET /api/vms`, `/api/vms/{id}/metrics`, `/api/vms/{id}/history`.
//! `{id}` is a VM's id, libvirt name or uuid (or QEMU `-name`), looked up among
//! the discovered VMs; the same 400/404/409 rules as containers.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{
    ApiError, AppState,
    containers::{MAX_QUERY, well_formed},
    history::{HistoryQuery, answer},
};
use crate::{
    catalog::{self, Scope},
    model::{VmMetrics, VmSource, VmState},
};

/// One row of `GET /api/vms`: identity and the spec's headline metrics.
#[derive(Serialize)]
struct Summary<'a> {
    id: &'a str,
    name: Option<&'a str>,
    uuid: Option<&'a str>,
    source: VmSource,
    state: VmState,
    pid: Option<u32>,
    owner_uid: Option<u32>,
    vcpus: Option<usize>,
    steal_percent: Option<f64>,
    cpu_usage_percent: Option<f64>,
    memory_usage_bytes: Option<u64>,
    memory_limit_bytes: Option<u64>,
    block_read_bytes: Option<u64>,
    block_write_bytes: Option<u64>,
    network_rx_bytes: Option<u64>,
    network_tx_bytes: Option<u64>,
}

impl<'a> From<&'a VmMetrics> for Summary<'a> {
    fn from(vm: &'a VmMetrics) -> Self {
        Self {
            id: &vm.id,
            name: vm.name.as_deref(),
            uuid: vm.uuid.as_deref(),
            source: vm.source,
            state: vm.state,
            pid: vm.pid,
            owner_uid: vm.owner_uid,
            vcpus: vm.cpu.as_ref().map(|cpu| cpu.vcpus.len()),
            steal_percent: vm.cpu.as_ref().and_then(|cpu| cpu.steal_percent),
            cpu_usage_percent: vm.cpu_usage_percent,
            memory_usage_bytes: vm.memory_usage_bytes,
            memory_limit_bytes: vm.memory_limit_bytes,
            block_read_bytes: vm.block_read_bytes,
            block_write_bytes: vm.block_write_bytes,
            network_rx_bytes: vm.network_rx_bytes,
            network_tx_bytes: vm.network_tx_bytes,
        }
    }
}

/// `GET /api/vms`.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let Some(snapshot) = state.vms.borrow().clone() else {
        return ApiError::starting().into_response();
    };
    let vms: Vec<Summary> = snapshot.vms.iter().map(Summary::from).collect();
    Json(serde_json::json!({
        "timestamp": snapshot.at.unix,
        "count": vms.len(),
        "vms": vms,
        "sources": snapshot.sources,
    }))
    .into_response()
}

/// `GET /api/vms/{id}/metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>, Path(query): Path<String>) -> Response {
    let Some(snapshot) = state.vms.borrow().clone() else {
        return ApiError::starting().into_response();
    };
    match resolve(&snapshot.vms, &query) {
        Ok(vm) => Json(super::containers::WithOomKills {
            oom_kills: state.oom.borrow().recent_of("vm", &vm.id),
            metrics: vm,
        })
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// `GET /api/vms/{id}/history`.
pub async fn history(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let Some(snapshot) = state.vms.borrow().clone() else {
        return ApiError::starting().into_response();
    };
    match resolve(&snapshot.vms, &id) {
        Ok(vm) => answer(&state, Scope::Vm, catalog::vm::history_key(vm), &query),
        Err(error) => error.into_response(),
    }
}

/// Finds the VM `query` names: its id, name or uuid (any case).
pub fn resolve<'a>(vms: &'a [VmMetrics], query: &str) -> Result<&'a VmMetrics, ApiError> {
    if !well_formed(query) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "malformed VM id {query:?}: expected an id, name or uuid ([A-Za-z0-9_.-], at most {MAX_QUERY})"
            ),
        ));
    }
    let matches: Vec<&VmMetrics> = vms
        .iter()
        .filter(|vm| {
            vm.id == query
                || vm.name.as_deref() == Some(query)
                || vm
                    .uuid
                    .as_deref()
                    .is_some_and(|uuid| uuid.eq_ignore_ascii_case(query))
        })
        .collect();
    match matches[..] {
        [vm] => Ok(vm),
        [] => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no VM {query:?} (ids, names and uuids are accepted)"),
        )),
        _ => Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "{query:?} matches {} VMs (pids {}): use a uuid",
                matches.len(),
                matches
                    .iter()
                    .map(|vm| vm.pid.map_or("-".to_owned(), |pid| pid.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
