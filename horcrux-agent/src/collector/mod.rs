//! Collection schedule. Two threads, each on its own interval:
//! - node (every `node_metrics_interval`): `/proc`, filesystems and the eBPF counters;
//! - containers (every `vm_metrics_interval`): cgroup discovery and per-container counters.
//!
//! Each cycle publishes an immutable snapshot (tokio `watch`, read by HTTP handlers)
//! and pre-serialized WebSocket messages (tokio `broadcast`, fanned out to clients).
//! Readers never trigger collection and cannot slow it down.

pub mod containers;
pub mod health;
pub mod node;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{broadcast, watch};

use crate::{
    cgroup::stats::CgroupReader,
    ebpf::{EbpfPrograms, ProgramStatus},
    history::{History, Scope},
    model::{ContainerMetrics, DiskKind, NodeMetrics, NodeMetricsMessage, VmMetricsMessage},
};
use containers::ContainerCollector;
use health::CollectorHealth;
use node::{NodeCollector, NodeSources};

/// What one node cycle publishes.
#[derive(Debug)]
pub struct NodeSnapshot {
    pub node: NodeMetrics,
    /// `node` serialized once here rather than on every request.
    pub node_json: Utf8Bytes,
    /// The spec's `NodeMetrics` WebSocket message for `node`.
    pub node_message: Utf8Bytes,
    pub health: CollectorHealth,
    pub ebpf: Vec<ProgramStatus>,
}

/// What one container cycle publishes.
#[derive(Debug)]
pub struct ContainerSnapshot {
    pub containers: Vec<ContainerMetrics>,
    pub health: CollectorHealth,
    pub timestamp: u64,
}

pub type Latest<T> = watch::Receiver<Option<Arc<T>>>;

/// Where a collector publishes each cycle.
pub struct Outputs<T> {
    pub snapshots: watch::Sender<Option<Arc<T>>>,
    pub ws_messages: broadcast::Sender<Utf8Bytes>,
    /// Present when `enable_history` is on.
    pub history: Option<Arc<Mutex<History>>>,
}

impl<T> Outputs<T> {
    fn publish(&self, snapshot: T, messages: impl IntoIterator<Item = Utf8Bytes>) {
        self.snapshots.send_replace(Some(Arc::new(snapshot)));
        for message in messages {
            // No subscribers is normal (no WebSocket client connected).
            let _ = self.ws_messages.send(message);
        }
    }

    fn record(&self, write: impl FnOnce(&mut History)) {
        if let Some(history) = &self.history {
            write(
                &mut history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
    }
}

/// Runs the node collector (and the eBPF programs) on its own thread.
pub fn spawn_node(
    interval: Duration,
    sources: NodeSources,
    outputs: Outputs<NodeSnapshot>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn("node-collector", move || {
        let mut ebpf = EbpfPrograms::load();
        release_freed_heap();
        let mut collector = NodeCollector::new(sources);
        every(
            interval,
            || !outputs.snapshots.is_closed(),
            || {
                let (started, cpu_before, timestamp) =
                    (Instant::now(), thread_cpu_time(), unix_seconds());
                let node = collector.collect(hostname(), timestamp);
                if let Err(error) = ebpf.refresh() {
                    let message = format!("reading eBPF counters: {error}");
                    collector
                        .health
                        .record_error("node", "ebpf maps", message, timestamp);
                }
                collector
                    .health
                    .record_cycle(started.elapsed(), cpu_since(cpu_before), timestamp);
                outputs.record(|history| {
                    for (metric, value) in history_values(&node) {
                        history.record(Scope::Node, metric, timestamp, value);
                    }
                });
                let node_message = to_json(&NodeMetricsMessage::from(&node));
                let snapshot = NodeSnapshot {
                    node_json: to_json(&node),
                    node_message: node_message.clone(),
                    node,
                    health: collector.health.clone(),
                    ebpf: ebpf.statuses(),
                };
                outputs.publish(snapshot, [node_message]);
            },
        );
    })
}

/// Runs the container collector on its own thread. `node` supplies host memory, the
/// denominator of `VmMetrics.memory_usage` for containers without a limit.
pub fn spawn_containers(
    interval: Duration,
    reader: CgroupReader,
    node: Latest<NodeSnapshot>,
    outputs: Outputs<ContainerSnapshot>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn("container-collector", move || {
        let mut collector = ContainerCollector::new(reader, "/proc");
        every(
            interval,
            || !outputs.snapshots.is_closed(),
            || {
                let (started, cpu_before, timestamp) =
                    (Instant::now(), thread_cpu_time(), unix_seconds());
                let cycle = collector.collect(timestamp);
                collector
                    .health
                    .record_cycle(started.elapsed(), cpu_since(cpu_before), timestamp);
                let host_memory = node.borrow().as_ref().and_then(|snapshot| {
                    snapshot
                        .node
                        .memory
                        .as_ref()
                        .map(|memory| memory.total_bytes)
                });
                outputs.record(|history| {
                    for container in &cycle.containers {
                        for (metric, value) in container_history_values(container) {
                            history.record(
                                Scope::Container(container.id.clone()),
                                metric,
                                timestamp,
                                value,
                            );
                        }
                    }
                    history.retain_containers(
                        &cycle.containers.iter().map(|c| c.id.as_str()).collect(),
                    );
                });
                let messages: Vec<Utf8Bytes> = cycle
                    .changes
                    .iter()
                    .map(to_json)
                    .chain(
                        cycle
                            .containers
                            .iter()
                            .map(|c| to_json(&VmMetricsMessage::new(c, host_memory))),
                    )
                    .collect();
                let snapshot = ContainerSnapshot {
                    containers: cycle.containers,
                    health: collector.health.clone(),
                    timestamp,
                };
                outputs.publish(snapshot, messages);
            },
        );
    })
}

/// The node series kept in history ([`crate::history::NODE_METRICS`]).
fn history_values(node: &NodeMetrics) -> Vec<(&'static str, f64)> {
    let mut values = vec![
        ("memory_usage", node.memory_usage),
        ("disk_usage", node.disk_usage),
        ("load_average_1m", node.load_average_1m),
        ("load_average_5m", node.load_average_5m),
        ("load_average_15m", node.load_average_15m),
    ];
    if let Some(usage) = node.cpu.as_ref().and_then(|cpu| cpu.usage_percent) {
        values.push(("cpu_usage", usage));
    }
    let outside = node
        .network
        .iter()
        .flatten()
        .filter(|net| net.interface != "lo");
    let network: Vec<_> = outside.filter_map(|net| net.rates.as_ref()).collect();
    if !network.is_empty() {
        values.push((
            "network_rx_bytes_per_second",
            network.iter().map(|r| r.rx_bytes_per_second).sum(),
        ));
        values.push((
            "network_tx_bytes_per_second",
            network.iter().map(|r| r.tx_bytes_per_second).sum(),
        ));
    }
    let disks: Vec<_> = node
        .disks
        .iter()
        .flatten()
        .filter(|disk| disk.kind == DiskKind::Disk)
        .filter_map(|disk| disk.rates.as_ref())
        .collect();
    if !disks.is_empty() {
        values.push((
            "disk_read_bytes_per_second",
            disks.iter().map(|r| r.read_bytes_per_second).sum(),
        ));
        values.push((
            "disk_write_bytes_per_second",
            disks.iter().map(|r| r.write_bytes_per_second).sum(),
        ));
    }
    values
}

/// The container series kept in history ([`crate::history::CONTAINER_METRICS`]).
fn container_history_values(container: &ContainerMetrics) -> Vec<(&'static str, f64)> {
    let network = container.network.as_ref();
    let block = container.block_io.as_ref();
    [
        ("cpu_usage_percent", container.cpu_usage_percent),
        (
            "memory_usage_bytes",
            container.memory_usage_bytes.map(|bytes| bytes as f64),
        ),
        (
            "network_rx_bytes_per_second",
            network.and_then(|n| n.rx_bytes_per_second),
        ),
        (
            "network_tx_bytes_per_second",
            network.and_then(|n| n.tx_bytes_per_second),
        ),
        (
            "block_read_bytes_per_second",
            block.and_then(|b| b.read_bytes_per_second),
        ),
        (
            "block_write_bytes_per_second",
            block.and_then(|b| b.write_bytes_per_second),
        ),
    ]
    .into_iter()
    .filter_map(|(metric, value)| Some((metric, value?)))
    .collect()
}

fn spawn(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(body)
}

/// Calls `cycle` every `interval` while `keep_going()`; a cycle that overruns (or a
/// suspended machine) skips the missed ticks instead of bursting to catch up.
fn every(interval: Duration, keep_going: impl Fn() -> bool, mut cycle: impl FnMut()) {
    let mut next_cycle = Instant::now();
    while keep_going() {
        cycle();
        next_cycle += interval;
        let now = Instant::now();
        if next_cycle <= now {
            next_cycle = now + interval;
        }
        std::thread::sleep(next_cycle - now);
    }
}

/// Loading eBPF parses the kernel's BTF (~20 MB of short-lived allocations); glibc
/// keeps freed heap mapped unless asked, which would double the agent's resident size.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serialization cannot fail for the model's types (string keys; serde_json writes
/// non-finite floats as `null`), but a failure would be logged, not a panic.
fn to_json(value: &impl serde::Serialize) -> Utf8Bytes {
    match serde_json::to_string(value) {
        Ok(text) => text.into(),
        Err(error) => {
            tracing::error!("serializing a snapshot failed: {error}");
            "null".into()
        }
    }
}

pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

fn thread_cpu_time() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

fn cpu_since(before: Option<Duration>) -> Option<Duration> {
    thread_cpu_time()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before))
}
