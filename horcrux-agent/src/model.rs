//! The metric model: plain data, what one node and one container collection
//! publish. Serialized as the JSON of `GET /api/monitoring/node/metrics` and
//! `GET /api/containers/{id}/metrics`: the spec's fields first, then detail. `null`
//! means "not measured" (first sample, source failed). The collectors fill it; the
//! metric catalog ([`crate::catalog`]) says how every output reads it.

use std::collections::BTreeMap;

use serde::Serialize;

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
    #[serde(flatten)]
    pub usage: CgroupUsage,
    pub network: Option<ContainerNetwork>,
    /// The container's cgroups' eBPF counters (`null` when no program is attached);
    /// boxed: it would otherwise be most of a container's size.
    pub ebpf: Option<Box<EbpfMetrics>>,
    /// Why a family above is `null` (e.g. `"block_io": "cgroup v1 blkio counts …"`).
    pub unavailable: BTreeMap<&'static str, String>,
}

/// What a cgroup (with its descendants) used: the figures containers and VMs
/// share. A family is `null` when its controller is missing or unreadable.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CgroupUsage {
    pub cpu: Option<ContainerCpu>,
    pub memory: Option<ContainerMemory>,
    pub block_io: Option<ContainerBlockIo>,
    pub pids: Option<ContainerPids>,
    pub pressure: Option<PressureCounters>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Running,
    Paused,
    /// The cgroup exists but holds no process.
    Empty,
}

impl ContainerState {
    /// As serialized.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Empty => "empty",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    Crio,
    /// A Kubernetes container under the cgroupfs driver: the CRI runtime is not in the path.
    Cri,
    Lxc,
}

impl Runtime {
    /// As serialized.
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Containerd => "containerd",
            Self::Crio => "crio",
            Self::Cri => "cri",
            Self::Lxc => "lxc",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub uid: String,
    pub qos_class: QosClass,
}

/// Pressure stall information of one resource (`cpu.pressure`, …).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Pressure {
    pub some: PressureLine,
    /// Absent for CPU at the system level on older kernels.
    pub full: Option<PressureLine>,
}

/// "some avg10=0.00 avg60=0.00 avg300=0.00 total=0".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PressureCounters {
    pub cpu: Option<Pressure>,
    pub memory: Option<Pressure>,
    pub io: Option<Pressure>,
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
    /// Page-cache bytes written back on the cgroup's behalf — the owner's view:
    /// pages its memory cgroup owns, whichever task (a flusher thread) wrote them
    /// and whichever blkcg the kernel charged (`write_bytes`). `null` without the
    /// eBPF writeback family.
    pub writeback_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlkioMetrics {
    #[serde(flatten)]
    pub totals: BlkioTotals,
    /// Issue → completion, all operations.
    pub latency: Histogram,
    /// 99th percentile over the last collection interval, as for run-queue latency.
    pub latency_p99_us: Option<u64>,
    /// Page-cache bytes the cgroup's pages turned dirty (what writeback will
    /// write); `null` without the eBPF writeback family.
    pub dirtied_bytes: Option<u64>,
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

/// One VM, as `GET /api/vms/{id}/metrics` returns it: the spec's seven fields
/// first (as for containers; `null` when not measurable), then detail. Guest-side
/// figures (disks, interfaces, balloon) are the guest's view; host-side ones
/// (process, cgroup, vCPU threads, eBPF) are what the host spends on it.
#[derive(Debug, Clone, Serialize)]
pub struct VmMetrics {
    /// % of one host CPU used by the QEMU process (all threads) since the previous sample.
    pub cpu_usage_percent: Option<f64>,
    /// Host memory the VM holds: the QEMU process's resident set.
    pub memory_usage_bytes: Option<u64>,
    /// The guest's configured memory.
    pub memory_limit_bytes: Option<u64>,
    /// Summed over the guest's disks (the guest's reads and writes).
    pub block_read_bytes: Option<u64>,
    pub block_write_bytes: Option<u64>,
    /// Summed over the guest's interfaces, as the guest counts them (a tap's
    /// transmit is the guest's receive).
    pub network_rx_bytes: Option<u64>,
    pub network_tx_bytes: Option<u64>,
    /// The four byte counters above per second since the previous sample.
    pub rates: Option<VmRates>,
    /// The libvirt name or QEMU `-name` (else the uuid, else `qemu-<pid>`).
    pub id: String,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub source: VmSource,
    pub state: VmState,
    /// The QEMU process (`null` when the VM does not run).
    pub pid: Option<u32>,
    /// The user whose VM this is (`null`: root's).
    pub owner_uid: Option<u32>,
    pub timestamp: u64,
    pub cpu: Option<VmCpu>,
    pub memory: Option<VmMemory>,
    pub disks: Vec<VmDisk>,
    pub interfaces: Vec<VmInterface>,
    /// KVM's own statistics summed over the vCPUs (`null` without KVM or a source).
    pub kvm: Option<KvmStats>,
    /// The QEMU process as the host sees it.
    pub process: Option<VmProcess>,
    /// The VM's own cgroup (libvirt's `machine` slice), when it has one.
    pub cgroup: Option<VmCgroup>,
    /// The VM cgroup's eBPF counters (`null` without a cgroup of its own or eBPF).
    pub ebpf: Option<Box<EbpfMetrics>>,
    /// Which sources answered for this VM.
    pub sources: Vec<&'static str>,
    /// Why a family above is `null`.
    pub unavailable: BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VmRates {
    pub block_read_bytes_per_second: f64,
    pub block_write_bytes_per_second: f64,
    pub network_rx_bytes_per_second: f64,
    pub network_tx_bytes_per_second: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmSource {
    /// A domain of the system libvirt daemon.
    Libvirt,
    /// A QEMU process libvirt does not manage.
    Qemu,
}

impl VmSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::Libvirt => "libvirt",
            Self::Qemu => "qemu",
        }
    }
}

/// libvirt's domain states; QEMU's run states map onto them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    /// The guest is shutting down, or has and its QEMU stays (`-no-shutdown`).
    Shutdown,
    /// Defined but not running (or its QEMU process exited).
    Shutoff,
    Crashed,
    Migrating,
    /// Suspended by guest power management.
    Pmsuspended,
    /// Blocked on a resource, or a state the source does not name.
    Blocked,
}

impl VmState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Shutdown => "shutdown",
            Self::Shutoff => "shutoff",
            Self::Crashed => "crashed",
            Self::Migrating => "migrating",
            Self::Pmsuspended => "pmsuspended",
            Self::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VmCpu {
    /// % of one host CPU, all QEMU threads.
    pub usage_percent: Option<f64>,
    pub usage_seconds_total: f64,
    /// Run time of the vCPU threads, summed.
    pub vcpu_seconds_total: f64,
    /// Everything else QEMU ran (emulator, I/O threads): usage − vCPU time.
    pub emulator_seconds_total: f64,
    /// Run-queue wait of the vCPU threads summed: the guest's steal, seen from the host.
    pub steal_seconds_total: f64,
    /// Steal since the previous sample as % of the vCPUs' wall time (100 = every
    /// vCPU waited all the time).
    pub steal_percent: Option<f64>,
    pub vcpus: Vec<Vcpu>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Vcpu {
    pub index: u32,
    pub thread_id: u32,
    /// On-CPU time of the vCPU thread.
    pub time_seconds_total: f64,
    /// Time runnable but waiting for a host CPU (schedstat's run-queue wait).
    pub wait_seconds_total: f64,
    pub timeslices_total: u64,
    /// % of one host CPU since the previous sample.
    pub usage_percent: Option<f64>,
    /// Run-queue wait since the previous sample as % of wall time.
    pub steal_percent: Option<f64>,
    pub kvm: Option<KvmStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmMemory {
    pub configured_bytes: Option<u64>,
    /// What the balloon currently gives the guest.
    pub balloon_actual_bytes: Option<u64>,
    /// The QEMU process's resident set.
    pub rss_bytes: Option<u64>,
    /// Reported by the guest's balloon driver (`null` when it reports nothing).
    pub guest: Option<GuestMemory>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuestMemory {
    pub available_bytes: Option<u64>,
    pub unused_bytes: Option<u64>,
    pub usable_bytes: Option<u64>,
    pub disk_caches_bytes: Option<u64>,
    pub swap_in_bytes_total: Option<u64>,
    pub swap_out_bytes_total: Option<u64>,
    pub major_faults_total: Option<u64>,
    pub minor_faults_total: Option<u64>,
}

/// One guest disk, as QEMU counts its requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmDisk {
    /// libvirt's target (`vda`) or QEMU's drive id / node name.
    pub device: String,
    pub read_ops_total: u64,
    pub write_ops_total: u64,
    pub flush_ops_total: u64,
    pub read_bytes_total: u64,
    pub write_bytes_total: u64,
    pub read_time_seconds_total: f64,
    pub write_time_seconds_total: f64,
    pub flush_time_seconds_total: f64,
    pub allocation_bytes: Option<u64>,
    pub capacity_bytes: Option<u64>,
}

/// One guest NIC's host device (tap/vnet), counted from the guest's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInterface {
    pub device: String,
    #[serde(flatten)]
    pub counters: NetworkTotals,
}

/// KVM's statistics (binary stats), the cumulative ones that explain where guest
/// time goes: exits, halts and halt polling, page faults, interrupts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KvmStats {
    pub exits: u64,
    pub halt_exits: u64,
    pub io_exits: u64,
    pub mmio_exits: u64,
    pub halt_successful_poll: u64,
    pub halt_attempted_poll: u64,
    pub halt_wakeup: u64,
    pub halt_poll_success_ns: u64,
    pub halt_poll_fail_ns: u64,
    pub halt_wait_ns: u64,
    pub pf_fixed: u64,
    pub irq_injections: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmProcess {
    pub cpu_seconds_total: f64,
    pub rss_bytes: u64,
    pub threads: u64,
    /// Bytes the process made the host read and write (`/proc/<pid>/io`).
    pub read_bytes_total: Option<u64>,
    pub write_bytes_total: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmCgroup {
    /// Relative to the hierarchy root, as for containers.
    pub path: String,
    #[serde(flatten)]
    pub usage: CgroupUsage,
}
