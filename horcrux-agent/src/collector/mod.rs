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
pub mod supervisor;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{broadcast, watch};

use crate::{
    alerts::{AlertEngine, Target},
    cgroup::Hierarchies,
    cgroup::stats::CgroupReader,
    clock::{self, Stamp},
    ebpf::{
        EbpfPrograms, EbpfStatus,
        counters::{EbpfCounters, idle_devices},
    },
    history::{self, History, Scope},
    model::{
        ContainerMetrics, EbpfIntervals, EbpfMetrics, NodeMetrics, NodeMetricsMessage,
        VmMetricsMessage,
    },
};
use containers::{ContainerCollector, ContainerSettings, DiscoveryReport};
use health::CollectorHealth;
use node::{NodeCollector, NodeSources};
use supervisor::CollectorStatus;

/// What one node cycle publishes.
#[derive(Debug)]
pub struct NodeSnapshot {
    pub node: NodeMetrics,
    /// `node` serialized once here rather than on every request.
    pub node_json: bytes::Bytes,
    /// The spec's `NodeMetrics` WebSocket message for `node`.
    pub node_message: Utf8Bytes,
    pub health: CollectorHealth,
    pub ebpf_status: EbpfStatus,
    /// Per-cgroup eBPF counters, for the container collector.
    pub ebpf: Arc<EbpfCounters>,
}

/// What one container cycle publishes.
#[derive(Debug)]
pub struct ContainerSnapshot {
    pub containers: Vec<ContainerMetrics>,
    /// What discovery accepted, refused and capped this cycle.
    pub discovery: DiscoveryReport,
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
    pub alerts: Arc<Mutex<AlertEngine>>,
}

impl<T> Outputs<T> {
    fn publish(&self, snapshot: T, messages: impl IntoIterator<Item = Utf8Bytes>) {
        self.snapshots.send_replace(Some(Arc::new(snapshot)));
        for message in messages {
            // No subscribers is normal (no WebSocket client connected).
            let _ = self.ws_messages.send(message);
        }
    }

    /// Records series in history (when enabled) and evaluates the alert rules of one
    /// scope on them; returns the alert messages to send.
    fn record(&self, scope_is_node: bool, targets: &[Target], at: Stamp) -> Vec<Utf8Bytes> {
        if let Some(history) = &self.history {
            let mut history = history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for target in targets {
                let scope = if scope_is_node {
                    Scope::Node
                } else {
                    Scope::Container(target.key.to_owned())
                };
                for &(metric, value) in target.values {
                    history.record(scope.clone(), metric, at.steady, value);
                }
            }
            if !scope_is_node {
                history.retain_containers(&targets.iter().map(|target| target.key).collect());
            }
        }
        let mut alerts = self
            .alerts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        alerts
            .evaluate(scope_is_node, targets, at)
            .iter()
            .map(to_json)
            .collect()
    }
}

/// Seconds between cycles of each collector; SIGHUP may change them while running.
#[derive(Debug)]
pub struct Intervals {
    pub node: AtomicU64,
    pub containers: AtomicU64,
}

impl Intervals {
    pub fn new(node: Duration, containers: Duration) -> Self {
        Self {
            node: AtomicU64::new(node.as_secs()),
            containers: AtomicU64::new(containers.as_secs()),
        }
    }
}

/// Runs the node collector (and the eBPF programs) on its own supervised thread.
/// The eBPF programs were loaded before any thread started ([`crate::prepare`]); they
/// stay attached across restarts of this collector.
pub fn spawn_node(
    intervals: Arc<Intervals>,
    sources: NodeSources,
    ebpf: Option<EbpfPrograms>,
    outputs: Outputs<NodeSnapshot>,
    status: Arc<CollectorStatus>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let supervised = Arc::clone(&status);
    let mut ebpf = ebpf.unwrap_or_else(EbpfPrograms::disabled);
    supervisor::spawn("node", supervised, move || {
        let mut collector = NodeCollector::new(sources.clone());
        let mut ebpf_intervals = EbpfIntervals::default();
        every(
            &intervals.node,
            || !outputs.snapshots.is_closed(),
            || {
                let (started, cpu_before, at) = (Instant::now(), thread_cpu_time(), clock::now());
                status.maybe_inject_panic("node", collector.health.cycles);
                let mut node = collector.collect(hostname(), at.unix);
                // The cycle's `/proc/diskstats`, read before the eBPF maps.
                let idle = idle_devices(
                    node.disks
                        .iter()
                        .flatten()
                        .map(|disk| (disk.major, disk.minor, disk.in_flight)),
                );
                let (counters, errors) = ebpf.read(&idle);
                for error in errors {
                    collector
                        .health
                        .record_error("node", "ebpf maps", error, at.unix);
                }
                node.ebpf = node_ebpf(&node, &counters, &mut ebpf_intervals);
                collector
                    .health
                    .record_cycle(started.elapsed(), cpu_since(cpu_before), at.unix);
                let values = history::node_values(&node);
                let target = Target {
                    key: &node.hostname,
                    id: &node.hostname,
                    name: None,
                    values: &values,
                };
                let alerts = outputs.record(true, &[target], at);
                let node_message = to_json(&NodeMetricsMessage::from(&node));
                let snapshot = NodeSnapshot {
                    node_json: json_text(&node).into(),
                    node_message: node_message.clone(),
                    node,
                    health: collector.health.clone(),
                    ebpf_status: ebpf.status(),
                    ebpf: Arc::new(counters),
                };
                outputs.publish(snapshot, std::iter::once(node_message).chain(alerts));
                status.succeeded(at.unix);
            },
        );
    })
}

/// The node's eBPF totals (`None` when no family is attached).
fn node_ebpf(
    node: &NodeMetrics,
    counters: &EbpfCounters,
    intervals: &mut EbpfIntervals,
) -> Option<EbpfMetrics> {
    if counters.sched.is_none() && counters.block.is_none() {
        return None;
    }
    let device_names = node
        .disks
        .iter()
        .flatten()
        .map(|disk| ((disk.major, disk.minor), disk.device.clone()))
        .collect();
    Some(EbpfMetrics::new(
        counters.since,
        counters.sched.as_ref().map(|sched| &sched.total),
        counters.block.as_ref().map(|block| block.total.as_slice()),
        &device_names,
        intervals,
    ))
}

/// Runs the container collector on its own supervised thread. `node` supplies the
/// eBPF counters and host memory, the denominator of `VmMetrics.memory_usage` for
/// containers without a limit; the first cycle waits for the first node snapshot,
/// so that no container figure is published before the eBPF programs are attached
/// (or have failed).
pub fn spawn_containers(
    intervals: Arc<Intervals>,
    settings: ContainerSettings,
    hierarchies: Hierarchies,
    psi_enabled: bool,
    node: Latest<NodeSnapshot>,
    outputs: Outputs<ContainerSnapshot>,
    status: Arc<CollectorStatus>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let supervised = Arc::clone(&status);
    supervisor::spawn("containers", supervised, move || {
        while node.borrow().is_none() {
            if outputs.snapshots.is_closed() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let reader = CgroupReader::new(hierarchies.clone(), psi_enabled);
        let mut collector = ContainerCollector::new(reader, "/proc", settings);
        every(
            &intervals.containers,
            || !outputs.snapshots.is_closed(),
            || {
                let (started, cpu_before, at) = (Instant::now(), thread_cpu_time(), clock::now());
                status.maybe_inject_panic("containers", collector.health.cycles);
                let ebpf = node.borrow().as_ref().map(|snapshot| snapshot.ebpf.clone());
                let ebpf = ebpf.filter(|ebpf| ebpf.sched.is_some() || ebpf.block.is_some());
                let cycle = collector.collect(at.unix, ebpf.as_deref());
                collector
                    .health
                    .record_cycle(started.elapsed(), cpu_since(cpu_before), at.unix);
                let host_memory = node.borrow().as_ref().and_then(|snapshot| {
                    snapshot
                        .node
                        .memory
                        .as_ref()
                        .map(|memory| memory.total_bytes)
                });
                let values: Vec<_> = cycle
                    .containers
                    .iter()
                    .map(history::container_values)
                    .collect();
                let targets: Vec<Target> = cycle
                    .containers
                    .iter()
                    .zip(&values)
                    .map(|(container, values)| Target {
                        key: &container.cgroup,
                        id: &container.id,
                        name: container.name.as_deref(),
                        values,
                    })
                    .collect();
                let alerts = outputs.record(false, &targets, at);
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
                    .chain(alerts)
                    .collect();
                let snapshot = ContainerSnapshot {
                    containers: cycle.containers,
                    discovery: cycle.discovery,
                    health: collector.health.clone(),
                    timestamp: at.unix,
                };
                outputs.publish(snapshot, messages);
                status.succeeded(at.unix);
            },
        );
    })
}

/// Calls `cycle` every `interval` seconds while `keep_going()`; a cycle that
/// overruns (or a suspended machine) skips the missed ticks instead of bursting to
/// catch up. The interval is re-read each cycle (SIGHUP can change it).
fn every(interval: &AtomicU64, keep_going: impl Fn() -> bool, mut cycle: impl FnMut()) {
    let mut next_cycle = Instant::now();
    while keep_going() {
        cycle();
        let interval = Duration::from_secs(interval.load(Ordering::Relaxed).max(1));
        next_cycle += interval;
        let now = Instant::now();
        if next_cycle <= now || next_cycle > now + interval {
            next_cycle = now + interval;
        }
        std::thread::sleep(next_cycle - now);
    }
}

/// Loading eBPF parses the kernel's BTF (~20 MB of short-lived allocations); glibc
/// keeps freed heap mapped unless asked, which would double the agent's resident size.
pub fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serialization cannot fail for the model's types (string keys; serde_json writes
/// non-finite floats as `null`), but a failure would be logged, not a panic.
fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| {
        tracing::error!("serializing a snapshot failed: {error}");
        "null".into()
    })
}

fn to_json(value: &impl serde::Serialize) -> Utf8Bytes {
    json_text(value).into()
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
