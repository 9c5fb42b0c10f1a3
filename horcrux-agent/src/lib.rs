//! Horcrux agent: node and container metrics from `/proc`, cgroups and eBPF, served
//! over REST and WebSocket.
//!
//! Data sources: [`procfs`], [`statfs`], [`cgroup`], [`process`], [`vm`] (QEMU,
//! QMP, libvirt), [`ebpf`] (its [`ebpf::sampler`] publishes the maps to every
//! consumer). Metric model, catalog
//! and rate cache: [`model`], [`catalog`], [`rates`]. Collection schedule and
//! snapshots: [`collector`]. Consumers of the snapshots: [`recorder`] (into
//! [`history`] and [`alerts`]), [`http`] (REST, WebSocket [`messages`],
//! Prometheus), [`export`] (remote_write and OTLP push through disk queues). Start-up:
//! [`run`].

pub mod alerts;
pub mod catalog;
pub mod cgroup;
pub mod clock;
pub mod collector;
pub mod config;
pub mod crash;
pub mod ebpf;
pub mod error;
pub mod export;
pub mod health;
pub mod history;
pub mod http;
pub mod messages;
pub mod model;
pub mod oom;
pub mod privileges;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod rates;
pub mod recorder;
pub mod records;
pub mod statfs;
mod systemd;
pub mod vm;

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

/// What start-up does before any thread exists: find the cgroup hierarchies, load
/// and attach the eBPF programs, then give up the capabilities only that needed
/// (threads inherit the caller's, so this must come first).
pub struct Prepared {
    hierarchies: Hierarchies,
    ebpf: Option<ebpf::EbpfPrograms>,
    /// The effective capabilities after the drop (empty when not root).
    capabilities: Vec<String>,
}

pub fn prepare(config: &Config) -> Prepared {
    // Read as bytes: a mount point with a non-UTF-8 byte must not hide every other mount.
    let mounts = std::fs::read("/proc/self/mountinfo")
        .ok()
        .and_then(|bytes| procfs::mountinfo::parse(&String::from_utf8_lossy(&bytes)).ok())
        .unwrap_or_default();
    let hierarchies = Hierarchies::from_mounts(&mounts);
    let ebpf = config.ebpf_enabled.then(|| {
        ebpf::EbpfPrograms::load(
            &hierarchies,
            &ebpf::EbpfOptions {
                families: config.ebpf_families.clone(),
                max_containers: config.containers.max_containers,
            },
        )
    });
    collector::release_freed_heap();
    let attached = ebpf.as_ref().is_some_and(ebpf::EbpfPrograms::any_attached);
    let capabilities = match privileges::drop_to_runtime(attached) {
        Ok(kept) => {
            tracing::info!(capabilities = ?kept, "capabilities dropped");
            kept
        }
        Err(error) => {
            tracing::warn!("capabilities not dropped: {error}");
            privileges::effective()
        }
    };
    Prepared {
        hierarchies,
        ebpf,
        capabilities,
    }
}

/// Starts collection and serves HTTP until Ctrl-C or SIGTERM. SIGHUP calls
/// `reload` and applies what can change while running (alert rules, intervals,
/// credentials, certificates).
pub async fn run(
    config: Config,
    prepared: Prepared,
    reload: impl Fn() -> Result<Config, ConfigError> + Send + 'static,
) -> Result<(), StartError> {
    let credentials = http::security::Credentials::load(&config.server)?;
    let tls = config
        .server
        .tls
        .clone()
        .map(http::serve::TlsReloader::new)
        .transpose()?
        .map(Arc::new);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            address: config.listen,
            source,
        })?;
    let Prepared {
        hierarchies,
        ebpf,
        capabilities,
    } = prepared;
    // PSI files exist but fail to read when the kernel was booted without psi=1.
    let psi_enabled = std::fs::read_to_string("/proc/pressure/cpu").is_ok();
    let cgroup_families = CgroupReader::new(hierarchies.clone(), psi_enabled).family_sources();

    let history = config.enable_history.then(|| {
        Arc::new(Mutex::new(history::History::new(
            config.history_retention.as_secs(),
        )))
    });
    // Read back before anything is recorded, so restored points come first.
    let history_file = history.as_ref().map(|history| {
        history::HistoryFile::open(
            Arc::clone(history),
            config.storage_path.join("history.dat"),
            config.history_max_bytes,
        )
    });
    if let Some(file) = &history_file {
        file.spawn_checkpoints(config.history_checkpoint_interval)?;
    }
    let alerts = Arc::new(Mutex::new(alerts::AlertEngine::new(config.alerts.clone())));
    let (node_tx, node_rx) = watch::channel(None);
    let (containers_tx, containers_rx) = watch::channel(None);
    let (vms_tx, vms_rx) = watch::channel(None);
    let (ws_tx, _) = broadcast::channel(ws_buffer(&config));
    let intervals = Arc::new(Intervals::new(
        config.node_metrics_interval,
        config.vm_metrics_interval,
    ));
    let collectors = http::Collectors::default();
    let ebpf_embedded = ebpf::EbpfPrograms::embedded();
    let mut ebpf = ebpf.unwrap_or_else(ebpf::EbpfPrograms::disabled);
    let oom_kills = ebpf.take_oom_kills();
    let sampler = Arc::new(ebpf::sampler::EbpfSampler::new(ebpf));
    let ebpf_rx = sampler.subscribe();
    collector::spawn_node(
        Arc::clone(&intervals),
        NodeSources::default(),
        Arc::clone(&sampler),
        collector::Outputs {
            snapshots: node_tx,
            ws_messages: ws_tx.clone(),
        },
        Arc::clone(&collectors.node),
    )?;
    collector::spawn_containers(
        Arc::clone(&intervals),
        config.containers,
        hierarchies.clone(),
        psi_enabled,
        Arc::clone(&sampler),
        node_rx.clone(),
        collector::Outputs {
            snapshots: containers_tx,
            ws_messages: ws_tx.clone(),
        },
        Arc::clone(&collectors.containers),
    )?;
    collector::spawn_vms(
        Arc::clone(&intervals),
        config.containers,
        hierarchies.clone(),
        psi_enabled,
        config.libvirt_uri.clone(),
        sampler,
        collector::Outputs {
            snapshots: vms_tx,
            ws_messages: ws_tx.clone(),
        },
        Arc::clone(&collectors.vms),
    )?;
    recorder::Recorder {
        history: history.clone(),
        alerts: alerts.clone(),
        ws_messages: ws_tx.clone(),
    }
    .spawn(node_rx.clone(), containers_rx.clone(), vms_rx.clone())?;
    let (oom_tx, oom_rx) = watch::channel(Arc::new(oom::OomView::default()));
    if let Some(kills) = oom_kills {
        oom::spawn(
            kills,
            containers_rx.clone(),
            vms_rx.clone(),
            oom_tx,
            ws_tx.clone(),
        )?;
    }
    let allowed_hosts =
        http::security::allowed_hosts(&config.server.allowed_hosts, listener.local_addr()?);
    let max_connections = config.server.max_connections;
    let exports: Vec<Arc<export::TargetStatus>> = config
        .exports
        .iter()
        .map(|target| Arc::new(export::TargetStatus::new(target)))
        .collect();
    let state = Arc::new(http::AppState {
        config,
        intervals,
        node: node_rx,
        containers: containers_rx,
        vms: vms_rx,
        ebpf: ebpf_rx,
        oom: oom_rx,
        ws_messages: ws_tx,
        ws_clients: AtomicUsize::new(0),
        started: Instant::now(),
        hierarchies,
        cgroup_families,
        history,
        alerts,
        collectors,
        ebpf_embedded,
        credentials: std::sync::RwLock::new(Arc::new(credentials)),
        allowed_hosts,
        tls: tls.clone(),
        renders: tokio::sync::Semaphore::new(http::MAX_CONCURRENT_RENDERS),
        capabilities,
        exports: exports.clone(),
        history_file: history_file.as_ref().map(|file| Arc::clone(&file.status)),
    });
    export::spawn_all(&state, &exports);
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        authentication = state.config.server.authenticates(),
        cgroup_mode = ?state.hierarchies.mode(),
        "horcrux-agent serving"
    );
    if let Some(tls) = &tls {
        tokio::spawn(Arc::clone(tls).watch());
    }
    tokio::spawn(systemd::notify_when_ready(Arc::clone(&state)));
    tokio::spawn(reload_on_sighup(Arc::clone(&state), reload));
    // The collector threads end with the process when the server returns.
    http::serve::serve(
        listener,
        http::router(state),
        tls,
        max_connections,
        shutdown_signal(),
    )
    .await?;
    if let Some(file) = &history_file {
        file.save();
    }
    Ok(())
}

/// Why the agent could not start (exit code 2 for configuration problems).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Secret(#[from] http::security::SecretError),
    #[error(transparent)]
    Tls(#[from] http::serve::TlsError),
    #[error("binding {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl StartError {
    /// Configuration the operator must fix (exit code 2), or a runtime failure.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Secret(_) | Self::Tls(_))
    }
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
            (
                "server (TLS files, allow lists, connection cap)",
                config.server.tls != running.server.tls
                    || config.server.allowed_origins != running.server.allowed_origins
                    || config.server.allowed_hosts != running.server.allowed_hosts
                    || config.server.max_connections != running.server.max_connections,
            ),
            ("ebpf.enabled", config.ebpf_enabled != running.ebpf_enabled),
            ("vms.libvirt_uri", config.libvirt_uri != running.libvirt_uri),
            (
                "storage",
                config.storage_path != running.storage_path
                    || config.history_checkpoint_interval != running.history_checkpoint_interval
                    || config.history_max_bytes != running.history_max_bytes,
            ),
            ("remote_write, otlp", config.exports != running.exports),
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
        match http::security::Credentials::load(&config.server) {
            Ok(credentials) => {
                *state
                    .credentials
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(credentials);
            }
            Err(error) => tracing::error!("SIGHUP: credentials not reloaded: {error}"),
        }
        if let Some(tls) = &state.tls {
            tls.reload();
        }
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
