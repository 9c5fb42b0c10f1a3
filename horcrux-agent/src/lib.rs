//! Horcrux agent: node metrics from `/proc`, eBPF counters, served over REST and WebSocket.
//!
//! Data sources: [`procfs`], [`statfs`], [`cgroup`], [`ebpf`]. Metric model and rate
//! cache: [`model`], [`rates`]. Collection schedule and snapshots: [`collector`].
//! HTTP surface: [`http`]. Start-up: [`run`].

pub mod cgroup;
pub mod collector;
pub mod config;
pub mod ebpf;
pub mod http;
pub mod model;
pub mod procfs;
pub mod rates;
pub mod statfs;

use std::{
    sync::{Arc, atomic::AtomicUsize},
    time::Instant,
};

use tokio::sync::{broadcast, watch};

use collector::{Publishers, node::NodeSources};
use config::Config;

/// WebSocket messages buffered per client before a slow client starts skipping.
const WS_BUFFER: usize = 16;

/// Starts collection and serves HTTP until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    let (ws_tx, _) = broadcast::channel(WS_BUFFER);
    let cgroup_mode = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| procfs::mountinfo::parse(&text).ok())
        .map_or(cgroup::CgroupMode::None, |mounts| {
            cgroup::detect_mode(&mounts)
        });
    let collector = collector::spawn(
        config.node_metrics_interval,
        NodeSources::default(),
        Publishers {
            snapshots: snapshot_tx,
            ws_messages: ws_tx.clone(),
        },
    )?;
    let state = Arc::new(http::AppState {
        config,
        snapshots: snapshot_rx,
        ws_messages: ws_tx,
        ws_clients: AtomicUsize::new(0),
        started: Instant::now(),
        cgroup_mode,
        ebpf_embedded: ebpf::EbpfPrograms::embedded(),
    });
    tracing::info!(
        listen = %listener.local_addr()?,
        ?cgroup_mode,
        "horcrux-agent serving"
    );
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // The router (and its snapshot receiver) is gone: the collector stops after its cycle.
    drop(collector);
    Ok(())
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
