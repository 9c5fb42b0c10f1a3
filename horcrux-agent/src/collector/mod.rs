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
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{broadcast, watch};

use crate::{
    cgroup::stats::CgroupReader,
    ebpf::{EbpfPrograms, ProgramStatus},
    model::{ContainerMetrics, NodeMetrics, NodeMetricsMessage, VmMetricsMessage},
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

/// Runs the node collector (and the eBPF programs) on its own thread.
pub fn spawn_node(
    interval: Duration,
    sources: NodeSources,
    snapshots: watch::Sender<Option<Arc<NodeSnapshot>>>,
    ws_messages: broadcast::Sender<Utf8Bytes>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn("node-collector", move || {
        let mut ebpf = EbpfPrograms::load();
        release_freed_heap();
        let mut collector = NodeCollector::new(sources);
        every(
            interval,
            || !snapshots.is_closed(),
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
                let node_message = to_json(&NodeMetricsMessage::from(&node));
                snapshots.send_replace(Some(Arc::new(NodeSnapshot {
                    node_json: to_json(&node),
                    node_message: node_message.clone(),
                    node,
                    health: collector.health.clone(),
                    ebpf: ebpf.statuses(),
                })));
                // No subscribers is normal (no WebSocket client connected).
                let _ = ws_messages.send(node_message);
            },
        );
    })
}

/// Runs the container collector on its own thread. `node` supplies host memory, the
/// denominator of `VmMetrics.memory_usage` for containers without a limit.
pub fn spawn_containers(
    interval: Duration,
    reader: CgroupReader,
    snapshots: watch::Sender<Option<Arc<ContainerSnapshot>>>,
    node: Latest<NodeSnapshot>,
    ws_messages: broadcast::Sender<Utf8Bytes>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn("container-collector", move || {
        let mut collector = ContainerCollector::new(reader, "/proc");
        every(
            interval,
            || !snapshots.is_closed(),
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
                snapshots.send_replace(Some(Arc::new(ContainerSnapshot {
                    containers: cycle.containers,
                    health: collector.health.clone(),
                    timestamp,
                })));
                for message in messages {
                    let _ = ws_messages.send(message);
                }
            },
        );
    })
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
