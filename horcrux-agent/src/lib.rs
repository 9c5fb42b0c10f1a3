//! Horcrux agent: node and container metrics from `/proc`, cgroups and eBPF, served
//! over REST and WebSocket.
//!
//! Data sources: [`procfs`], [`statfs`], [`cgroup`], [`process`], [`ebpf`]. Metric
//! model and rate cache: [`model`], [`rates`]. Collection schedule and snapshots:
//! [`collector`]. Storage: [`history`]. HTTP surface: [`http`]. Start-up: [`run`].

pub mod alerts;
pub mod cgroup;
pub mod clock;
pub mod collector;
pub mod config;
pub mod ebpf;
pub mod history;
pub mod http;
pub mod model;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod rates;
pub mod statfs;
mod systemd;

use std::{
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::Instant,
};

use tokio::sync::{broadcast, watch};

use cgroup::{Hierarchies, stats::CgroupReader};
use collector::{Intervals, node::NodeSources};
use config::{Config, ConfigError};

/// WebSocket messages buffered per client before a slow client starts skipping: a
/// whole container cycle (a state change and a metrics message per container, plus
/// alerts) fits, so a full cycle of `max_containers` never makes every client skip.
fn ws_buffer(config: &Config) -> usize {
    (config.containers.max_containers * 2 + 256).max(4096)
}

/// Starts collection and serves HTTP until Ctrl-C or SIGTERM. SIGHUP calls
/// `reload` and applies what can change while running (alert rules, intervals).
pub async fn run(
    config: Config,
    reload: impl Fn() -> Result<Config, ConfigError> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    // Read as bytes: a mount point with a non-UTF-8 byte must not hide every other mount.
    let mounts = std::fs::read("/proc/self/mountinfo")
        .ok()
        .and_then(|bytes| procfs::mountinfo::parse(&String::from_utf8_lossy(&bytes)).ok())
        .unwrap_or_default();
    let hierarchies = Hierarchies::from_mounts(&mounts);
    // PSI files exist but fail to read when the kernel was booted without psi=1.
    let psi_enabled = std::fs::read_to_string("/proc/pressure/cpu").is_ok();
    let cgroup_families = CgroupReader::new(hierarchies.clone(), psi_enabled).family_sources();

    let history = config.enable_history.then(|| {
        Arc::new(Mutex::new(history::History::new(
            config.history_retention.as_secs(),
        )))
    });
    let alerts = Arc::new(Mutex::new(alerts::AlertEngine::new(config.alerts.clone())));
    let (node_tx, node_rx) = watch::channel(None);
    let (containers_tx, containers_rx) = watch::channel(None);
    let (ws_tx, _) = broadcast::channel(ws_buffer(&config));
    let intervals = Arc::new(Intervals::new(
        config.node_metrics_interval,
        config.vm_metrics_interval,
    ));
    let collectors = http::Collectors::default();
    collector::spawn_node(
        Arc::clone(&intervals),
        NodeSources::default(),
        hierarchies.clone(),
        collector::Outputs {
            snapshots: node_tx,
            ws_messages: ws_tx.clone(),
            history: history.clone(),
            alerts: alerts.clone(),
        },
        Arc::clone(&collectors.node),
    )?;
    collector::spawn_containers(
        Arc::clone(&intervals),
        config.containers,
        hierarchies.clone(),
        psi_enabled,
        node_rx.clone(),
        collector::Outputs {
            snapshots: containers_tx,
            ws_messages: ws_tx.clone(),
            history: history.clone(),
            alerts: alerts.clone(),
        },
        Arc::clone(&collectors.containers),
    )?;
    let state = Arc::new(http::AppState {
        config,
        intervals,
        node: node_rx,
        containers: containers_rx,
        ws_messages: ws_tx,
        ws_clients: AtomicUsize::new(0),
        started: Instant::now(),
        hierarchies,
        cgroup_families,
        history,
        alerts,
        collectors,
        ebpf_embedded: ebpf::EbpfPrograms::embedded(),
    });
    tracing::info!(
        listen = %listener.local_addr()?,
        cgroup_mode = ?state.hierarchies.mode(),
        "horcrux-agent serving"
    );
    tokio::spawn(systemd::notify_when_ready(Arc::clone(&state)));
    tokio::spawn(reload_on_sighup(Arc::clone(&state), reload));
    // The collector threads end with the process when the server returns.
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// SIGHUP: re-reads the config and applies alert rules and intervals; keys that
/// need a restart are named in the log. An invalid file changes nothing.
async fn reload_on_sighup(
    state: Arc<http::AppState>,
    reload: impl Fn() -> Result<Config, ConfigError>,
) {
    use std::sync::atomic::Ordering;
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot handle SIGHUP; config reload is unavailable");
        return;
    };
    while hangups.recv().await.is_some() {
        let config = match reload() {
            Ok(config) => config,
            Err(error) => {
                tracing::error!("SIGHUP: config not reloaded: {error}");
                continue;
            }
        };
        let running = &state.config;
        let needs_restart: Vec<&str> = [
            ("server.listen", config.listen != running.listen),
            (
                "monitoring.enable_history",
                config.enable_history != running.enable_history,
            ),
            (
                "monitoring.history_retention",
                config.history_retention != running.history_retention,
            ),
            (
                "monitoring.max_ws_clients",
                config.max_ws_clients != running.max_ws_clients,
            ),
            (
                "monitoring.max_containers",
                config.containers != running.containers,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !needs_restart.is_empty() {
            tracing::warn!(
                keys = ?needs_restart,
                "SIGHUP: these keys changed but take effect only after a restart"
            );
        }
        state
            .intervals
            .node
            .store(config.node_metrics_interval.as_secs(), Ordering::Relaxed);
        state
            .intervals
            .containers
            .store(config.vm_metrics_interval.as_secs(), Ordering::Relaxed);
        let rules = config.alerts.len();
        state
            .alerts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace_rules(config.alerts);
        tracing::info!(alert_rules = rules, "SIGHUP: config reloaded");
    }
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
