//! Collection schedule. Three threads, each on its own interval:
//! - node (every `node_metrics_interval`): `/proc`, filesystems, eBPF node totals;
//! - containers (every `vm_metrics_interval`): cgroup discovery and per-container
//!   counters, eBPF per-cgroup counters;
//! - VMs (every `vm_metrics_interval`): QEMU processes, libvirt, QMP, vCPU threads,
//!   the VMs' cgroups; between cycles it follows VM state changes every second.
//!
//! Each samples the eBPF maps itself at the start of its cycle
//! ([`crate::ebpf::sampler`]), so its interval figures cover its own interval.
//! Each cycle publishes an immutable snapshot (tokio `watch`, read by HTTP handlers
//! and by [`crate::recorder`] for history and alerts) and pre-serialized WebSocket
//! messages (tokio `broadcast`, fanned out to clients). Readers never trigger
//! collection and cannot slow it down.

pub mod cgroup;
pub mod containers;
pub mod ebpf;
pub mod node;
pub mod supervisor;
pub mod vms;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{broadcast, watch};

use crate::{
    cgroup::Hierarchies,
    cgroup::stats::CgroupReader,
    clock::{self, Stamp},
    ebpf::{counters::EbpfCounters, sampler::EbpfSampler},
    health::CollectorHealth,
    messages::{Message, NodeMetricsMessage, VmMetricsMessage, json_text},
    model::{ContainerMetrics, EbpfMetrics, NodeMetrics},
};
use containers::{ContainerCollector, ContainerSettings, DiscoveryReport};
use ebpf::{CgroupEbpf, EbpfIntervals, ebpf_metrics};
use node::{NodeCollector, NodeSources};
use supervisor::CollectorStatus;

/// What one node cycle publishes.
#[derive(Debug)]
pub struct NodeSnapshot {
    pub node: NodeMetrics,
    /// `node` serialized once here rather than on every request.
    pub node_json: bytes::Bytes,
    /// The spec's `NodeMetrics` WebSocket message for `node`, sent to new clients.
    pub node_message: Utf8Bytes,
    pub health: CollectorHealth,
    pub at: Stamp,
}

/// What one container cycle publishes.
#[derive(Debug)]
pub struct ContainerSnapshot {
    pub containers: Vec<ContainerMetrics>,
    /// What discovery accepted, refused and capped this cycle.
    pub discovery: DiscoveryReport,
    pub health: CollectorHealth,
    pub at: Stamp,
}

/// What one VM cycle publishes (and republishes when a VM's state changes
/// between cycles).
#[derive(Debug, Clone)]
pub struct VmSnapshot {
    pub vms: Vec<crate::model::VmMetrics>,
    pub sources: vms::VmSourcesStatus,
    pub health: CollectorHealth,
    pub at: Stamp,
}

pub type Latest<T> = watch::Receiver<Option<Arc<T>>>;

/// Where a collector publishes each cycle.
pub struct Outputs<T> {
    pub snapshots: watch::Sender<Option<Arc<T>>>,
    pub ws_messages: broadcast::Sender<Utf8Bytes>,
}

impl<T: Clone> Outputs<T> {
    /// Publishes a copy of `snapshot` (which the caller keeps to update).
    fn publish_shared(&self, snapshot: &T, messages: impl IntoIterator<Item = Utf8Bytes>) {
        self.publish(snapshot.clone(), messages);
    }
}

impl<T> Outputs<T> {
    fn publish(&self, snapshot: T, messages: impl IntoIterator<Item = Utf8Bytes>) {
        self.snapshots.send_replace(Some(Arc::new(snapshot)));
        for message in messages {
            // No subscribers is normal (no WebSocket client connected).
            let _ = self.ws_messages.send(message);
        }
    }
}

/// Seconds between cycles of each collector; SIGHUP may change them while running.
#[derive(Debug)]
pub struct Intervals {
    pub node: AtomicU64,
    /// Containers and VMs.
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

/// Runs the node collector on its own supervised thread. The eBPF programs were
/// loaded before any thread started ([`crate::prepare`]); they stay attached
/// across restarts of the collectors.
pub fn spawn_node(
    intervals: Arc<Intervals>,
    sources: NodeSources,
    ebpf: Arc<EbpfSampler>,
    outputs: Outputs<NodeSnapshot>,
    status: Arc<CollectorStatus>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let supervised = Arc::clone(&status);
    supervisor::spawn("node", supervised, move || {
        let mut collector = NodeCollector::new(sources.clone());
        let mut ebpf_intervals = EbpfIntervals::default();
        every(
            &intervals.node,
            || !outputs.snapshots.is_closed(),
            || {
                let (started, cpu_before, at) = (Instant::now(), thread_cpu_time(), clock::now());
                status.maybe_inject_panic("node", collector.health.cycles);
                let counters = sample_ebpf(&ebpf, &mut collector.health, "node", at.unix);
                let mut node = collector.collect(hostname(), at.unix);
                node.ebpf =
                    counters.and_then(|counters| node_ebpf(&node, &counters, &mut ebpf_intervals));
                collector
                    .health
                    .record_cycle(started.elapsed(), cpu_since(cpu_before), at.unix);
                let message = Message::NodeMetrics(NodeMetricsMessage::from(&node)).to_text();
                let snapshot = NodeSnapshot {
                    node_json: json_text(&node).into(),
                    node_message: message.clone(),
                    node,
                    health: collector.health.clone(),
                    at,
                };
                outputs.publish(snapshot, [message]);
                status.succeeded(at.unix);
            },
        );
    })
}

/// Reads the eBPF maps for one cycle (`None` when no program is attached); read
/// errors go to the collector's health.
fn sample_ebpf(
    ebpf: &EbpfSampler,
    health: &mut CollectorHealth,
    collector: &str,
    timestamp: u64,
) -> Option<Arc<crate::ebpf::sampler::EbpfSnapshot>> {
    if !ebpf.attached() {
        return None;
    }
    let sample = ebpf.sample();
    for error in sample.errors {
        health.record_error(collector, "ebpf maps", error, timestamp);
    }
    Some(sample.snapshot)
}

/// The node's eBPF totals (`None` when no family is attached).
fn node_ebpf(
    node: &NodeMetrics,
    ebpf: &crate::ebpf::sampler::EbpfSnapshot,
    intervals: &mut EbpfIntervals,
) -> Option<EbpfMetrics> {
    let counters: &EbpfCounters = &ebpf.counters;
    if counters.sched.is_none() && counters.block.is_none() && counters.writeback.is_none() {
        return None;
    }
    let device_names = node
        .disks
        .iter()
        .flatten()
        .map(|disk| ((disk.major, disk.minor), disk.device.clone()))
        .collect();
    Some(ebpf_metrics(
        counters.since,
        &CgroupEbpf::totals(counters),
        &device_names,
        intervals,
    ))
}

/// Runs the container collector on its own supervised thread. `node` supplies host
/// memory, the denominator of `VmMetrics.memory_usage` for containers without a
/// limit: the first cycle waits for the first node snapshot.
#[allow(clippy::too_many_arguments)]
pub fn spawn_containers(
    intervals: Arc<Intervals>,
    settings: ContainerSettings,
    hierarchies: Hierarchies,
    psi_enabled: bool,
    ebpf: Arc<EbpfSampler>,
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
                let counters = sample_ebpf(&ebpf, &mut collector.health, "containers", at.unix);
                let cycle = collector.collect(at.unix, counters.as_deref().map(|e| &e.counters));
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
                let messages: Vec<Utf8Bytes> = cycle
                    .changes
                    .iter()
                    .map(|change| Message::VmStatusChanged(change).to_text())
                    .chain(cycle.containers.iter().map(|container| {
                        Message::VmMetrics(VmMetricsMessage::new(container, host_memory)).to_text()
                    }))
                    .collect();
                let snapshot = ContainerSnapshot {
                    containers: cycle.containers,
                    discovery: cycle.discovery,
                    health: collector.health.clone(),
                    at,
                };
                outputs.publish(snapshot, messages);
                status.succeeded(at.unix);
            },
        );
    })
}

/// Runs the VM collector on its own supervised thread: a full cycle every
/// `vm_metrics_interval`, and between cycles the state watch, whose changes are
/// sent and republished at once.
#[allow(clippy::too_many_arguments)]
pub fn spawn_vms(
    intervals: Arc<Intervals>,
    settings: ContainerSettings,
    hierarchies: Hierarchies,
    psi_enabled: bool,
    libvirt_uri: Option<String>,
    ebpf: Arc<EbpfSampler>,
    outputs: Outputs<VmSnapshot>,
    status: Arc<CollectorStatus>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let supervised = Arc::clone(&status);
    supervisor::spawn("vms", supervised, move || {
        let mut collector = vms::VmCollector::new(
            "/proc",
            hierarchies.clone(),
            psi_enabled,
            settings,
            libvirt_uri.as_deref(),
        );
        let mut next_cycle = Instant::now();
        while !outputs.snapshots.is_closed() {
            let (started, cpu_before, at) = (Instant::now(), thread_cpu_time(), clock::now());
            status.maybe_inject_panic("vms", collector.health.cycles);
            let counters = sample_ebpf(&ebpf, &mut collector.health, "vms", at.unix);
            let cycle = collector.collect(at.unix, counters.as_deref().map(|e| &e.counters));
            collector
                .health
                .record_cycle(started.elapsed(), cpu_since(cpu_before), at.unix);
            let messages: Vec<Utf8Bytes> = cycle
                .changes
                .iter()
                .map(|change| Message::VmStatusChanged(change).to_text())
                .chain(
                    cycle
                        .vms
                        .iter()
                        .map(|vm| Message::VmMetrics(VmMetricsMessage::from_vm(vm)).to_text()),
                )
                .collect();
            let mut snapshot = VmSnapshot {
                vms: cycle.vms,
                sources: cycle.sources,
                health: collector.health.clone(),
                at,
            };
            outputs.publish_shared(&snapshot, messages);
            status.succeeded(at.unix);
            let interval = Duration::from_secs(intervals.containers.load(Ordering::Relaxed).max(1));
            next_cycle = next_tick(next_cycle, interval);
            loop {
                let changes = collector.watch_states(next_cycle, || clock::now().unix);
                if changes.is_empty() {
                    break;
                }
                for vm in &mut snapshot.vms {
                    if let Some(state) = collector.state_of(vm) {
                        vm.state = state;
                    }
                }
                outputs.publish_shared(
                    &snapshot,
                    changes
                        .iter()
                        .map(|change| Message::VmStatusChanged(change).to_text()),
                );
            }
        }
    })
}

/// The next cycle's start: `interval` after the last, or `interval` from now when a
/// cycle overran (or the machine was suspended), skipping missed ticks; then
/// moved to the middle of its wall-clock second.
fn next_tick(last: Instant, interval: Duration) -> Instant {
    let next = last + interval;
    let now = Instant::now();
    let next = if next <= now || next > now + interval {
        now + interval
    } else {
        next
    };
    mid_second(next, now)
}

/// Snapshots are stamped in whole seconds (history, remote_write): a cycle that
/// starts half-way through a second keeps its own second even when it starts up to
/// half a second late or early, so two 1 s cycles never share a stamp (which
/// history would average and a receiver would refuse as a duplicate).
fn mid_second(at: Instant, now: Instant) -> Instant {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        + at.saturating_duration_since(now);
    let past_half = i64::from(wall.subsec_nanos()) - 500_000_000;
    let shift = Duration::from_nanos(past_half.unsigned_abs());
    if past_half >= 0 {
        at - shift
    } else {
        at + shift
    }
}

/// Calls `cycle` every `interval` seconds while `keep_going()`; a cycle that
/// overruns (or a suspended machine) skips the missed ticks instead of bursting to
/// catch up. The interval is re-read each cycle (SIGHUP can change it).
fn every(interval: &AtomicU64, keep_going: impl Fn() -> bool, mut cycle: impl FnMut()) {
    let mut next_cycle = Instant::now();
    while keep_going() {
        cycle();
        let interval = Duration::from_secs(interval.load(Ordering::Relaxed).max(1));
        next_cycle = next_tick(next_cycle, interval);
        std::thread::sleep(next_cycle.saturating_duration_since(Instant::now()));
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

/// Block device names by major:minor (`/proc/diskstats`), for per-device figures;
/// a read failure is recorded in `health` and gives none.
pub fn device_names(
    proc: &mut crate::procfs::TextReader,
    health: &mut CollectorHealth,
    collector: &str,
    timestamp: u64,
) -> std::collections::HashMap<(u32, u32), String> {
    match proc.read("diskstats", crate::procfs::diskstats::parse) {
        Ok(disks) => disks
            .into_iter()
            .map(|disk| ((disk.major, disk.minor), disk.name))
            .collect(),
        Err(error) => {
            let source = error.path().display().to_string();
            health.record_error(collector, &source, error.to_string(), timestamp);
            std::collections::HashMap::new()
        }
    }
}

/// An interface's counters as `/proc/net/dev` has them.
pub fn network_totals(net: &crate::procfs::netdev::NetDevStat) -> crate::model::NetworkTotals {
    crate::model::NetworkTotals {
        rx_bytes_total: net.rx_bytes,
        rx_packets_total: net.rx_packets,
        rx_errors_total: net.rx_errors,
        rx_dropped_total: net.rx_dropped,
        tx_bytes_total: net.tx_bytes,
        tx_packets_total: net.tx_packets,
        tx_errors_total: net.tx_errors,
        tx_dropped_total: net.tx_dropped,
    }
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
