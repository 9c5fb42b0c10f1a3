//! Horcrux agent: node and container metrics from `/proc`, cgroups and eBPF, served
//! over REST and WebSocket.
//!
//! Data sources: [`procfs`], [`statfs`], [`cgroup`], [`process`], [`ebpf`]. Metric
//! model and rate cache: [`model`], [`rates`]. Collection schedule and snapshots:
//! [`collector`]. Storage: [`history`]. HTTP surface: [`http`]. Start-up: [`run`].

pub mod alerts;
pub mod cgroup;
pub mod collector;
pub mod config;
pub mod ebpf;
pub mod history;
pub mod http;
pub mod model;
pub mod process;
pub mod procfs;
pub mod rates;
pub mod statfs;

use std::{
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::Instant,
};

use tokio::sync::{broadcast, watch};

use cgroup::{Hierarchies, stats::CgroupReader};
use collector::node::NodeSources;
use config::Config;

/// WebSocket messages buffered per client before a slow client starts skipping. One
/// container cycle sends a message per container, so this bounds a full cycle for
/// thousands of containers.
const WS_BUFFER: usize = 4096;

/// Starts collection and serves HTTP until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| procfs::mountinfo::parse(&text).ok())
        .unwrap_or_default();
    let hierarchies = Hierarchies::from_mounts(&mounts);
    // PSI files exist but fail to read when the kernel was booted without psi=1.
    let psi_enabled = std::fs::read_to_string("/proc/pressure/cpu").is_ok();
    let reader = CgroupReader::new(hierarchies.clone(), psi_enabled);
    let cgroup_families = reader.family_sources();

    let history = config.enable_history.then(|| {
        Arc::new(Mutex::new(history::History::new(
            config.history_retention.as_secs(),
        )))
    });
    let alerts = Arc::new(Mutex::new(alerts::AlertEngine::new(config.alerts.clone())));
    let (node_tx, node_rx) = watch::channel(None);
    let (containers_tx, containers_rx) = watch::channel(None);
    let (ws_tx, _) = broadcast::channel(WS_BUFFER);
    let node_outputs = collector::Outputs {
        snapshots: node_tx,
        ws_messages: ws_tx.clone(),
        history: history.clone(),
        alerts: alerts.clone(),
    };
    let container_outputs = collector::Outputs {
        snapshots: containers_tx,
        ws_messages: ws_tx.clone(),
        history: history.clone(),
        alerts: alerts.clone(),
    };
    collector::spawn_node(
        config.node_metrics_interval,
        NodeSources::default(),
        hierarchies.clone(),
        node_outputs,
    )?;
    collector::spawn_containers(
        config.vm_metrics_interval,
        reader,
        node_rx.clone(),
        container_outputs,
    )?;
    let state = Arc::new(http::AppState {
        config,
        node: node_rx,
        containers: containers_rx,
        ws_messages: ws_tx,
        ws_clients: AtomicUsize::new(0),
        started: Instant::now(),
        hierarchies,
        cgroup_families,
        history,
        alerts,
        ebpf_embedded: ebpf::EbpfPrograms::embedded(),
    });
    tracing::info!(
        listen = %listener.local_addr()?,
        cgroup_mode = ?state.hierarchies.mode(),
        "horcrux-agent serving"
    );
    // The collector threads end with the process when the server returns.
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = terminate.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutting down");
}
