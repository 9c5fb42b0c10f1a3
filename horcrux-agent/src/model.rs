//! The metric model: what one node collection publishes. Serialized as the JSON of
//! `GET /api/monitoring/node/metrics`; the first seven fields are the spec's contract,
//! the rest is detail; containers follow the same pattern. `null` means "not measured" (first sample, source failed).

use std::collections::{BTreeMap, HashMap};

use horcrux_common::{
    BLOCK_OP_DISCARD, BLOCK_OP_FLUSH, BLOCK_OP_READ, BLOCK_OP_WRITE, LATENCY_BUCKETS,
    LatencyHistogram, SchedCounters, device_parts, slot_bound_micros,
};
use serde::Serialize;

use crate::{
    cgroup::{
        discovery::{Pod, Runtime},
        files::DeviceIo,
        stats::PressureCounters,
    },
    ebpf::counters::DeviceOpCounters,
    procfs::netdev::NetDevStat,
};

#[derive(Debug, Clone, Serialize)]
pub struct NodeMetrics {
    /// Busy CPU % over all CPUs since the previous sample (0 on the first sample, per the spec).
    pub cpu_usage: f64,
    /// (total − free − buffers − cache) / total × 100.
    pub memory_usage: f64,
    /// Root filesystem usage % as `df` computes it: used / (used + available).
    pub disk_usage: f64,
    pub load_average_1m: f64,
    pub load_average_5m: f64,
    pub load_average_15m: f64,
    /// Unix seconds when the sample was taken.
    pub timestamp: u64,
    pub hostname: String,
    pub cpu: Option<CpuMetrics>,
    pub processes: Option<ProcessMetrics>,
    pub memory: Option<MemoryMetrics>,
    pub load: Option<LoadMetrics>,
    pub disks: Option<Vec<DiskMetrics>>,
    pub network: Option<Vec<NetworkMetrics>>,
    pub filesystems: Option<Vec<FilesystemMetrics>>,
    /// Mounts whose `statvfs` did not answer in time (a hung NFS server, a stopped
    /// FUSE daemon): left out of `filesystems` and skipped until they answer.
    pub stale_filesystems: Vec<StaleFilesystem>,
    /// Node totals of the eBPF programs (`null` when none is attached).
    pub ebpf: Option<EbpfMetrics>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleFilesystem {
    pub mount_point: String,
    pub device: String,
    pub fs_type: String,
}

impl NodeMetrics {
    /// Received and transmitted bytes/s over every interface but `lo` (`None` before
    /// the second sample).
    pub fn network_rates(&self) -> Option<(f64, f64)> {
        let rates: Vec<&NetworkRates> = self
            .network
            .iter()
            .flatten()
            .filter(|net| net.interface != "lo")
            .filter_map(|net| net.rates.as_ref())
            .collect();
        (!rates.is_empty()).then(|| {
            (
                rates.iter().map(|r| r.rx_bytes_per_second).sum(),
                rates.iter().map(|r| r.tx_bytes_per_second).sum(),
            )
        })
    }
}

/// One value per CPU mode (the eight that partition CPU time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuModes {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

impl CpuModes {
    pub fn from_array([user, nice, system, idle, iowait, irq, softirq, steal]: [f64; 8]) -> Self {
        Self {
            user,
            nice,
            system,
            idle,
            iowait,
            irq,
            softirq,
            steal,
        }
    }

    /// Busy share when the values are percentages: everything but idle and iowait.
    pub fn busy(&self) -> f64 {
        (100.0 - self.idle - self.iowait).clamp(0.0, 100.0)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuMetrics {
    /// Busy % across all CPUs (`null` on the first sample).
    pub usage_percent: Option<f64>,
    /// % of time per mode since the previous sample.
    pub modes_percent: Option<CpuModes>,
    /// Cumulative seconds per mode since boot.
    pub seconds_total: CpuModes,
    /// Guest time (already inside user), seconds since boot.
    pub guest_seconds_total: f64,
    pub per_cpu: Vec<PerCpuMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PerCpuMetrics {
    pub cpu: u32,
    pub usage_percent: Option<f64>,
    pub modes_percent: Option<CpuModes>,
    pub seconds_total: CpuModes,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessMetrics {
    pub context_switches_total: u64,
    pub context_switches_per_second: Option<f64>,
    pub forks_total: u64,
    pub forks_per_second: Option<f64>,
    pub procs_running: u64,
    pub procs_blocked: u64,
    pub boot_time: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryMetrics {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub buffers_bytes: u64,
    /// `Cached + SReclaimable`, as procps `free` reports "cache".
    pub cached_bytes: u64,
    pub shared_bytes: u64,
    pub used_bytes: u64,
    pub usage_percent: f64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
    pub swap_used_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadMetrics {
    pub load_average_1m: f64,
    pub load_average_5m: f64,
    pub load_average_15m: f64,
    pub running_tasks: u64,
    pub total_tasks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskKind {
    Disk,
    Partition,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskMetrics {
    pub device: String,
    pub major: u32,
    pub minor: u32,
    pub kind: DiskKind,
    pub read_bytes_total: u64,
    pub write_bytes_total: u64,
    pub discard_bytes_total: u64,
    pub reads_total: u64,
    pub writes_total: u64,
    pub discards_total: u64,
    pub flushes_total: u64,
    pub read_time_ms_total: u64,
    pub write_time_ms_total: u64,
    pub io_time_ms_total: u64,
    pub in_flight: u64,
    pub rates: Option<DiskRates>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskRates {
    pub read_bytes_per_second: f64,
    pub write_bytes_per_second: f64,
    pub reads_per_second: f64,
    pub writes_per_second: f64,
    /// Share of wall time the device had I/O in flight (iostat's %util).
    pub utilization_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkMetrics {
    pub interface: String,
    #[serde(flatten)]
    pub counters: NetworkTotals,
    pub rates: Option<NetworkRates>,
}

/// Cumulative interface counters, as `/proc/net/dev` has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NetworkTotals {
    pub rx_bytes_total: u64,
    pub rx_packets_total: u64,
    pub rx_errors_total: u64,
    pub rx_dropped_total: u64,
    pub tx_bytes_total: u64,
    pub tx_packets_total: u64,
    pub tx_errors_total: u64,
    pub tx_dropped_total: u64,
}

impl NetworkTotals {
    /// In the order of [`NetworkRates`]' fields.
    pub fn to_array(&self) -> [u64; 8] {
        [
            self.rx_bytes_total,
            self.rx_packets_total,
            self.rx_errors_total,
            self.rx_dropped_total,
            self.tx_bytes_total,
            self.tx_packets_total,
            self.tx_errors_total,
            self.tx_dropped_total,
        ]
    }

    pub fn add(&mut self, other: &Self) {
        let [a, b, c, d, e, f, g, h] = other.to_array();
        self.rx_bytes_total += a;
        self.rx_packets_total += b;
        self.rx_errors_total += c;
        self.rx_dropped_total += d;
        self.tx_bytes_total += e;
        self.tx_packets_total += f;
        self.tx_errors_total += g;
        self.tx_dropped_total += h;
    }
}

impl From<&NetDevStat> for NetworkTotals {
    fn from(net: &NetDevStat) -> Self {
        Self {
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
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkRates {
    pub rx_bytes_per_second: f64,
    pub rx_packets_per_second: f64,
    pub rx_errors_per_second: f64,
    pub rx_dropped_per_second: f64,
    pub tx_bytes_per_second: f64,
    pub tx_packets_per_second: f64,
    pub tx_errors_per_second: f64,
    pub tx_dropped_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilesystemMetrics {
    pub mount_point: String,
    pub device: String,
    pub fs_type: String,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub usage_percent: f64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
}

/// The spec's `NodeMetrics` WebSocket message.
#[derive(Debug, Clone, Serialize)]
pub struct NodeMetricsMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub node_id: &'a str,
    pub cpu_usage: f64,
    pub memory_usage: f64,
    pub disk_usage: f64,
    pub load_averages: [f64; 3],
    pub timestamp: u64,
    /// Beyond the spec: live network rates for the dashboard (`null` on the first sample).
    pub network_rx_bytes_per_second: Option<f64>,
    pub network_tx_bytes_per_second: Option<f64>,
}

impl<'a> From<&'a NodeMetrics> for NodeMetricsMessage<'a> {
    fn from(node: &'a NodeMetrics) -> Self {
        Self {
            kind: "NodeMetrics",
            node_id: &node.hostname,
            cpu_usage: node.cpu_usage,
            memory_usage: node.memory_usage,
            disk_usage: node.disk_usage,
            load_averages: [
                node.load_average_1m,
                node.load_average_5m,
                node.load_average_15m,
            ],
            timestamp: node.timestamp,
            network_rx_bytes_per_second: node.network_rates().map(|(rx, _)| rx),
            network_tx_bytes_per_second: node.network_rates().map(|(_, tx)| tx),
        }
    }
}

/// One container, as `GET /api/containers/{id}/metrics` returns it: the spec's seven
/// fields first (`null` when not measurable, never a made-up 0), then detail.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerMetrics {
    /// % of one CPU since the previous sample (as `docker stats`); `null` on the first.
    pub cpu_usage_percent: Option<f64>,
    pub memory_usage_bytes: Option<u64>,
    /// `null` = no limit.
    pub memory_limit_bytes: Option<u64>,
    pub block_read_bytes: Option<u64>,
    pub block_write_bytes: Option<u64>,
    /// All interfaces of the container's network namespace except `lo`.
    pub network_rx_bytes: Option<u64>,
    pub network_tx_bytes: Option<u64>,
    pub id: String,
    pub name: Option<String>,
    pub runtime: Runtime,
    pub state: ContainerState,
    pub pod: Option<Pod>,
    /// The cgroup path, the same below every hierarchy root (e.g. `/docker/<id>`).
    pub cgroup: String,
    /// The user whose rootless container this is (`null`: a root container).
    pub owner_uid: Option<u32>,
    pub timestamp: u64,
    pub cpu: Option<ContainerCpu>,
    pub memory: Option<ContainerMemory>,
    pub block_io: Option<ContainerBlockIo>,
    pub pids: Option<ContainerPids>,
    pub network: Option<ContainerNetwork>,
    pub pressure: Option<PressureCounters>,
    /// The container's cgroups' eBPF counters (`null` when no program is attached);
    /// boxed: it would otherwise be most of a container's size.
    pub ebpf: Option<Box<EbpfMetrics>>,
    /// Why a family above is `null` (e.g. `"block_io": "cgroup v1 blkio counts …"`).
    pub unavailable: BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Running,
    Paused,
    /// The cgroup exists but holds no process.
    Empty,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerCpu {
    pub usage_percent: Option<f64>,
    pub user_percent: Option<f64>,
    pub system_percent: Option<f64>,
    pub usage_seconds_total: f64,
    pub user_seconds_total: Option<f64>,
    pub system_seconds_total: Option<f64>,
    /// CPUs allowed by the quota (`cpu.max`, `cpu.cfs_quota_us`); `null` = unlimited.
    pub limit_cores: Option<f64>,
    pub throttling: Option<ContainerThrottling>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerThrottling {
    pub periods_total: u64,
    pub throttled_periods_total: u64,
    pub throttled_seconds_total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerMemory {
    pub usage_bytes: u64,
    pub limit_bytes: Option<u64>,
    /// usage − inactive_file.
    pub working_set_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub active_file_bytes: u64,
    pub inactive_file_bytes: u64,
    pub kernel_bytes: Option<u64>,
    pub slab_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub oom_events_total: Option<u64>,
    pub oom_kills_total: Option<u64>,
    pub limit_hits_total: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerBlockIo {
    /// The kernel file the numbers come from.
    pub source: &'static str,
    #[serde(flatten)]
    pub totals: BlockIoTotals,
    pub read_bytes_per_second: Option<f64>,
    pub write_bytes_per_second: Option<f64>,
    pub devices: Vec<ContainerDeviceIo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerDeviceIo {
    /// Kernel name from `/proc/diskstats`, `null` if the device is gone.
    pub device: Option<String>,
    pub major: u32,
    pub minor: u32,
    #[serde(flatten)]
    pub counters: BlockIoTotals,
}

/// Cumulative block I/O of a cgroup on one device, or summed over devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BlockIoTotals {
    pub read_bytes_total: u64,
    pub write_bytes_total: u64,
    pub discard_bytes_total: u64,
    pub reads_total: u64,
    pub writes_total: u64,
    pub discards_total: u64,
}

impl BlockIoTotals {
    pub fn add(&mut self, other: &Self) {
        self.read_bytes_total += other.read_bytes_total;
        self.write_bytes_total += other.write_bytes_total;
        self.discard_bytes_total += other.discard_bytes_total;
        self.reads_total += other.reads_total;
        self.writes_total += other.writes_total;
        self.discards_total += other.discards_total;
    }
}

impl From<&DeviceIo> for BlockIoTotals {
    fn from(io: &DeviceIo) -> Self {
        Self {
            read_bytes_total: io.read_bytes,
            write_bytes_total: io.write_bytes,
            discard_bytes_total: io.discard_bytes,
            reads_total: io.reads,
            writes_total: io.writes,
            discards_total: io.discards,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerPids {
    pub current: u64,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerNetwork {
    pub netns_inode: u64,
    /// Every interface but `lo`.
    #[serde(flatten)]
    pub totals: NetworkTotals,
    pub rx_bytes_per_second: Option<f64>,
    pub tx_bytes_per_second: Option<f64>,
    /// Every interface in the namespace, `lo` included.
    pub interfaces: Vec<NetworkMetrics>,
}

/// The spec's `VmMetrics` WebSocket message, for a container.
#[derive(Debug, Clone, Serialize)]
pub struct VmMetricsMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub vm_id: &'a str,
    pub name: Option<&'a str>,
    pub runtime: Runtime,
    pub cpu_usage: Option<f64>,
    /// % of the memory limit, or of host memory when unlimited (as `docker stats`).
    pub memory_usage: Option<f64>,
    pub memory_usage_bytes: Option<u64>,
    pub disk_read: Option<u64>,
    pub disk_write: Option<u64>,
    pub network_rx: Option<u64>,
    pub network_tx: Option<u64>,
    /// eBPF headline figures over the last interval (`null` without eBPF or samples).
    pub runq_latency_p99_us: Option<u64>,
    pub block_latency_p99_us: Option<u64>,
    pub timestamp: u64,
}

impl<'a> VmMetricsMessage<'a> {
    pub fn new(container: &'a ContainerMetrics, host_memory_bytes: Option<u64>) -> Self {
        let memory_usage = container.memory_usage_bytes.and_then(|usage| {
            let total = container
                .memory_limit_bytes
                .or(host_memory_bytes)
                .filter(|total| *total > 0)?;
            Some(usage as f64 * 100.0 / total as f64)
        });
        let ebpf = container.ebpf.as_ref();
        Self {
            kind: "VmMetrics",
            vm_id: &container.id,
            name: container.name.as_deref(),
            runtime: container.runtime,
            cpu_usage: container.cpu_usage_percent,
            memory_usage,
            memory_usage_bytes: container.memory_usage_bytes,
            disk_read: container.block_read_bytes,
            disk_write: container.block_write_bytes,
            network_rx: container.network_rx_bytes,
            network_tx: container.network_tx_bytes,
            runq_latency_p99_us: ebpf
                .and_then(|ebpf| ebpf.sched.as_ref())
                .and_then(|sched| sched.runq_latency_p99_us),
            block_latency_p99_us: ebpf
                .and_then(|ebpf| ebpf.blkio.as_ref())
                .and_then(|blkio| blkio.latency_p99_us),
            timestamp: container.timestamp,
        }
    }
}

/// The spec's `VmStatusChanged` WebSocket message: a container appeared (`old_status`
/// `null`), disappeared (`new_status` `null`) or changed state.
#[derive(Debug, Clone, Serialize)]
pub struct VmStatusChangedMessage {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub vm_id: String,
    pub name: Option<String>,
    pub runtime: Runtime,
    pub old_status: Option<ContainerState>,
    pub new_status: Option<ContainerState>,
    pub timestamp: u64,
}

/// A latency histogram as JSON: cumulative buckets with Prometheus `le` semantics
/// (an observation equal to a bound is counted in that bucket). Bounds are powers of
/// two microseconds; observations above the last bound are in `count` only (+Inf).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    pub unit: &'static str,
    pub count: u64,
    /// Sum of the observations, in `unit`.
    pub sum: f64,
    pub buckets: Vec<HistogramBucket>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HistogramBucket {
    pub le: u64,
    pub count: u64,
}

impl From<&LatencyHistogram> for Histogram {
    fn from(histogram: &LatencyHistogram) -> Self {
        let mut cumulative = 0u64;
        let buckets = histogram
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, count)| {
                cumulative = cumulative.wrapping_add(*count);
                slot_bound_micros(slot).map(|le| HistogramBucket {
                    le,
                    count: cumulative,
                })
            })
            .collect();
        Self {
            unit: "us",
            count: histogram.count(),
            sum: histogram.sum_ns as f64 / 1000.0,
            buckets,
        }
    }
}

/// The `ebpf` object of node and container metrics; a family is `null` when its
/// programs are not attached. Counters start when the programs were attached.
#[derive(Debug, Clone, Serialize)]
pub struct EbpfMetrics {
    /// Unix seconds when the programs were attached.
    pub since: u64,
    pub sched: Option<SchedMetrics>,
    pub blkio: Option<BlkioMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchedMetrics {
    /// Runnable (woken or preempted) → running, charged to the task switched in.
    pub runq_latency: Histogram,
    /// 99th percentile over the last collection interval (the bucket bound it falls
    /// in), `null` without samples in that interval.
    pub runq_latency_p99_us: Option<u64>,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub oncpu_ns: u64,
}

/// Block I/O counted by request: ops and latency of completed requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BlkioTotals {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub discard_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
    pub discard_ops: u64,
    pub flush_ops: u64,
    /// Write-zeroes, secure erase, zone and driver-private requests.
    pub other_ops: u64,
    pub in_flight: u64,
}

impl BlkioTotals {
    fn add(&mut self, entry: &DeviceOpCounters) {
        let counters = &entry.counters;
        let ops = counters.requests();
        let (bytes, op_count) = match entry.op {
            BLOCK_OP_READ => (&mut self.read_bytes, &mut self.read_ops),
            BLOCK_OP_WRITE => (&mut self.write_bytes, &mut self.write_ops),
            BLOCK_OP_DISCARD => (&mut self.discard_bytes, &mut self.discard_ops),
            BLOCK_OP_FLUSH => (&mut 0, &mut self.flush_ops),
            _ => (&mut 0, &mut self.other_ops),
        };
        *bytes += counters.bytes;
        *op_count += ops;
        self.in_flight += entry.in_flight;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BlkioMetrics {
    #[serde(flatten)]
    pub totals: BlkioTotals,
    /// Issue → completion, all operations.
    pub latency: Histogram,
    /// 99th percentile over the last collection interval, as for run-queue latency.
    pub latency_p99_us: Option<u64>,
    pub devices: Vec<BlkioDevice>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlkioDevice {
    /// Kernel name from `/proc/diskstats`, `null` if unknown.
    pub device: Option<String>,
    pub major: u32,
    pub minor: u32,
    #[serde(flatten)]
    pub totals: BlkioTotals,
    pub latency: Histogram,
}

impl BlkioMetrics {
    /// From one cgroup's (or the node's) counters per device and operation.
    pub fn new(
        entries: &[DeviceOpCounters],
        device_names: &HashMap<(u32, u32), String>,
        latency_p99_us: Option<u64>,
    ) -> Self {
        let mut devices: BTreeMap<u32, (BlkioTotals, LatencyHistogram)> = BTreeMap::new();
        for entry in entries {
            let (totals, latency) = devices
                .entry(entry.device)
                .or_insert((BlkioTotals::default(), LatencyHistogram::ZERO));
            totals.add(entry);
            latency.add(&entry.counters.latency);
        }
        let (mut totals, mut latency) = (BlkioTotals::default(), LatencyHistogram::ZERO);
        for entry in entries {
            totals.add(entry);
            latency.add(&entry.counters.latency);
        }
        Self {
            totals,
            latency: Histogram::from(&latency),
            latency_p99_us,
            devices: devices
                .into_iter()
                .map(|(device, (totals, latency))| {
                    let (major, minor) = device_parts(device);
                    BlkioDevice {
                        device: device_names.get(&(major, minor)).cloned(),
                        major,
                        minor,
                        totals,
                        latency: Histogram::from(&latency),
                    }
                })
                .collect(),
        }
    }
}

/// The latency histogram of a counter set summed over devices and operations.
pub fn block_latency(entries: &[DeviceOpCounters]) -> LatencyHistogram {
    let mut latency = LatencyHistogram::ZERO;
    entries
        .iter()
        .for_each(|entry| latency.add(&entry.counters.latency));
    latency
}

/// The 99th percentile of the observations a cumulative histogram gained since the
/// previous call, as the upper bound of the bucket it falls in (`None` without new
/// observations or when it is beyond the last finite bound).
#[derive(Debug, Clone, Default)]
pub struct IntervalP99 {
    previous: Option<[u64; LATENCY_BUCKETS]>,
}

impl IntervalP99 {
    pub fn observe(&mut self, histogram: &LatencyHistogram) -> Option<u64> {
        let previous = self.previous.replace(histogram.slots)?;
        let delta = |slot: usize| histogram.slots[slot].saturating_sub(previous[slot]);
        let total: u64 = (0..LATENCY_BUCKETS).map(delta).sum();
        if total == 0 {
            return None;
        }
        // The smallest bucket holding at least 99% of the interval's observations.
        let wanted = total - total / 100;
        let mut cumulative = 0;
        (0..LATENCY_BUCKETS).find_map(|slot| {
            cumulative += delta(slot);
            (cumulative >= wanted)
                .then(|| slot_bound_micros(slot))
                .flatten()
        })
    }
}

/// The interval percentiles of one node or container, kept across cycles.
#[derive(Debug, Clone, Default)]
pub struct EbpfIntervals {
    runq_latency: IntervalP99,
    block_latency: IntervalP99,
}

impl EbpfMetrics {
    /// `sched`/`block` are `None` when that family is not attached; a cgroup that
    /// has not been seen by an attached family passes zero counters.
    pub fn new(
        since: u64,
        sched: Option<&SchedCounters>,
        block: Option<&[DeviceOpCounters]>,
        device_names: &HashMap<(u32, u32), String>,
        intervals: &mut EbpfIntervals,
    ) -> Self {
        Self {
            since,
            sched: sched.map(|sched| SchedMetrics {
                runq_latency: Histogram::from(&sched.runq_latency),
                runq_latency_p99_us: intervals.runq_latency.observe(&sched.runq_latency),
                voluntary_switches: sched.voluntary_switches,
                involuntary_switches: sched.involuntary_switches,
                oncpu_ns: sched.oncpu_ns,
            }),
            blkio: block.map(|entries| {
                let p99 = intervals.block_latency.observe(&block_latency(entries));
                BlkioMetrics::new(entries, device_names, p99)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use horcrux_common::{BLOCK_OP_FLUSH, BlockCounters, device_number};

    use super::*;

    fn histogram(latencies_ns: &[u64]) -> LatencyHistogram {
        let mut histogram = LatencyHistogram::ZERO;
        latencies_ns.iter().for_each(|ns| histogram.observe(*ns));
        histogram
    }

    #[test]
    fn histogram_json_is_cumulative_with_le_bounds() {
        // 1 µs, exactly 2 µs, 2.001 µs, and one beyond the last bound (+Inf only).
        let json = Histogram::from(&histogram(&[1000, 2000, 2001, 100_000_000_000]));
        assert_eq!(json.unit, "us");
        assert_eq!(json.count, 4);
        assert_eq!(json.buckets.len(), LATENCY_BUCKETS - 1);
        assert_eq!(json.buckets[0], HistogramBucket { le: 1, count: 1 });
        assert_eq!(json.buckets[1], HistogramBucket { le: 2, count: 2 });
        assert_eq!(json.buckets[2], HistogramBucket { le: 4, count: 3 });
        assert_eq!(json.buckets.last().map(|b| b.count), Some(3));
        assert!((json.sum - 100_000_005.001).abs() < 1e-6);
    }

    #[test]
    fn p99_covers_the_last_interval_only() {
        let mut p99 = IntervalP99::default();
        let mut cumulative = histogram(&[500; 1000]);
        assert_eq!(
            p99.observe(&cumulative),
            None,
            "no interval before the first sample"
        );
        assert_eq!(p99.observe(&cumulative), None, "no new samples");
        // 100 new samples: 98 at 3 µs, 2 at 1 ms → the 99th is in the 1024 µs bucket.
        for _ in 0..98 {
            cumulative.observe(3000);
        }
        cumulative.observe(1_000_000);
        cumulative.observe(1_000_000);
        assert_eq!(p99.observe(&cumulative), Some(1024));
        for _ in 0..100 {
            cumulative.observe(3000);
        }
        assert_eq!(
            p99.observe(&cumulative),
            Some(4),
            "the old slow samples are gone"
        );
    }

    #[test]
    fn block_io_is_grouped_by_disk_and_class() {
        let entry = |device: u32, op: u32, bytes: u64, latencies: &[u64], in_flight: u64| {
            DeviceOpCounters {
                device,
                op,
                counters: BlockCounters {
                    latency: histogram(latencies),
                    bytes,
                    untimed: 0,
                },
                in_flight,
            }
        };
        let vda = device_number(254, 0);
        let sdb = device_number(8, 16);
        let entries = [
            entry(vda, BLOCK_OP_READ, 8192, &[1000, 2000], 0),
            entry(vda, BLOCK_OP_WRITE, 4096, &[5000], 2),
            entry(sdb, BLOCK_OP_FLUSH, 0, &[100], 0),
        ];
        let names = HashMap::from([((254, 0), "vda".to_owned())]);
        let metrics = BlkioMetrics::new(&entries, &names, None);
        assert_eq!(metrics.totals.read_bytes, 8192);
        assert_eq!(metrics.totals.read_ops, 2);
        assert_eq!(metrics.totals.write_ops, 1);
        assert_eq!(metrics.totals.flush_ops, 1);
        assert_eq!(metrics.totals.in_flight, 2);
        assert_eq!(metrics.latency.count, 4);
        assert_eq!(metrics.devices.len(), 2);
        let sdb = &metrics.devices[0];
        assert_eq!((sdb.major, sdb.minor, sdb.device.as_deref()), (8, 16, None));
        let vda = &metrics.devices[1];
        assert_eq!(vda.device.as_deref(), Some("vda"));
        assert_eq!((vda.totals.read_ops, vda.latency.count), (2, 3));
    }
}
