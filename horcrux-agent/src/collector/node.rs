//! The node collector: one cycle reads every node source, turns counters into rates
//! through the rate cache, and returns a [`NodeMetrics`]. A failing source leaves its
//! part `null` and is recorded in [`CollectorHealth`]; the others still publish.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    health::CollectorHealth,
    model::{
        CpuMetrics, CpuModes, DiskKind, DiskMetrics, DiskRates, FilesystemMetrics, LoadMetrics,
        MemoryMetrics, NetworkMetrics, NetworkRates, NodeMetrics, PerCpuMetrics, ProcessMetrics,
        StaleFilesystem,
    },
    probe::{Probe, Prober},
    procfs::{
        SourceError, TextReader, diskstats, diskstats::SECTOR_BYTES, loadavg, meminfo, mountinfo,
        netdev, stat, stat::CpuTimes,
    },
    rates::{Decrease, Deltas, RateTracker},
    statfs,
};

const COLLECTOR: &str = "node";

/// Block devices that are not storage: loop files, RAM disks and compressed RAM.
const IGNORED_DISK_PREFIXES: &[&str] = &["loop", "ram", "zram"];

/// Where the collector reads from; tests point these at fixture trees.
#[derive(Debug, Clone)]
pub struct NodeSources {
    pub proc_root: PathBuf,
    /// `/sys/class/block`: tells partitions from whole disks.
    pub sys_block: PathBuf,
    /// The filesystem whose usage is the spec's `disk_usage`.
    pub root_filesystem: PathBuf,
}

impl Default for NodeSources {
    fn default() -> Self {
        Self {
            proc_root: "/proc".into(),
            sys_block: "/sys/class/block".into(),
            root_filesystem: "/".into(),
        }
    }
}

pub struct NodeCollector {
    sources: NodeSources,
    proc: TextReader,
    ticks_per_second: f64,
    /// Key `None` is the aggregate CPU line, `Some(n)` is CPU n.
    cpu_times: RateTracker<Option<u32>, 8>,
    /// Context switches and forks.
    process_counters: RateTracker<(), 2>,
    /// Bytes read, bytes written, reads, writes, I/O milliseconds.
    disk_counters: RateTracker<String, 5>,
    network_counters: RateTracker<String, 8>,
    prober: Prober,
    /// Whose mounts are the node's filesystems: PID 1's (`1/mountinfo`, reached
    /// through `/proc/1/root`) when readable, so that a service in its own mount
    /// namespace (systemd's `ProtectSystem=`, `PrivateTmp=`) still reports the host's;
    /// else the agent's own.
    mount_view: MountView,
    pub health: CollectorHealth,
}

struct MountView {
    mountinfo: &'static str,
    /// Prefix for statvfs paths (`/proc/1/root`), `None` for the agent's own view.
    root: Option<PathBuf>,
}

impl MountView {
    fn of(proc_root: &Path) -> Self {
        let host_root = proc_root.join("1/root");
        let readable = std::fs::read(proc_root.join("1/mountinfo")).is_ok()
            && std::fs::metadata(&host_root).is_ok();
        if readable {
            Self {
                mountinfo: "1/mountinfo",
                root: Some(host_root),
            }
        } else {
            Self {
                mountinfo: "self/mountinfo",
                root: None,
            }
        }
    }

    /// Where to `statvfs` a mount point of this view.
    fn path(&self, mount_point: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join(mount_point.strip_prefix("/").unwrap_or(mount_point)),
            None => mount_point.to_owned(),
        }
    }
}

/// How long a `statvfs` may take before its mount is reported stale.
pub const STATVFS_TIMEOUT: Duration = Duration::from_millis(500);

impl NodeCollector {
    pub fn new(sources: NodeSources) -> Self {
        let mount_view = MountView::of(&sources.proc_root);
        Self {
            proc: TextReader::new(sources.proc_root.clone()),
            sources,
            ticks_per_second: clock_ticks_per_second(),
            cpu_times: RateTracker::new(Decrease::NoChange),
            process_counters: RateTracker::new(Decrease::Reset),
            disk_counters: RateTracker::new(Decrease::Reset),
            network_counters: RateTracker::new(Decrease::Reset),
            prober: Prober::new(STATVFS_TIMEOUT),
            mount_view,
            health: CollectorHealth::default(),
        }
    }

    /// Runs one collection cycle.
    pub fn collect(&mut self, hostname: String, timestamp: u64) -> NodeMetrics {
        let stat = self.read(timestamp, "stat", stat::parse);
        let (cpu, processes) = match stat {
            Some(stat) => (
                Some(self.cpu_metrics(&stat)),
                Some(self.process_metrics(&stat)),
            ),
            None => (None, None),
        };
        let memory = self
            .read(timestamp, "meminfo", meminfo::parse)
            .map(|info| memory_metrics(&info));
        let load = self
            .read(timestamp, "loadavg", loadavg::parse)
            .map(|load| LoadMetrics {
                load_average_1m: load.one,
                load_average_5m: load.five,
                load_average_15m: load.fifteen,
                running_tasks: load.running_tasks,
                total_tasks: load.total_tasks,
            });
        let disks = self
            .read(timestamp, "diskstats", diskstats::parse)
            .map(|disks| self.disk_metrics(disks));
        let network = self
            .read(timestamp, "net/dev", netdev::parse)
            .map(|interfaces| self.network_metrics(interfaces));
        let mut stale_filesystems = Vec::new();
        let filesystems = self
            .read(timestamp, self.mount_view.mountinfo, mountinfo::parse)
            .map(|mounts| self.filesystem_metrics(&mounts, &mut stale_filesystems, timestamp));
        // The root filesystem was measured with the others; its own statvfs (its type
        // unknown, so off-thread like a remote one) only when it was not.
        let root = self.sources.root_filesystem.to_string_lossy().into_owned();
        let measured = filesystems
            .iter()
            .flatten()
            .find(|fs| fs.mount_point == root)
            .map(|fs| Probe::Done(Ok(fs.usage_percent)));
        let disk_usage = match measured.unwrap_or_else(|| {
            self.statvfs(&self.sources.root_filesystem.clone(), "")
                .map(|usage| usage.map(|usage| usage.usage_percent()))
        }) {
            Probe::Done(Ok(percent)) => percent,
            outcome => {
                let root = self.sources.root_filesystem.display();
                let message = match outcome {
                    Probe::Done(Err(error)) => format!("statvfs {root}: {error}"),
                    _ => format!("statvfs {root}: no answer within {STATVFS_TIMEOUT:?}"),
                };
                self.health
                    .record_error(COLLECTOR, "statvfs", message, timestamp);
                0.0
            }
        };

        NodeMetrics {
            // The spec's fields are plain numbers: 0 when their source failed or on
            // the first CPU sample; the detail objects say `null` instead.
            cpu_usage: cpu
                .as_ref()
                .and_then(|cpu| cpu.usage_percent)
                .unwrap_or(0.0),
            memory_usage: memory.as_ref().map_or(0.0, |memory| memory.usage_percent),
            disk_usage,
            load_average_1m: load.as_ref().map_or(0.0, |load| load.load_average_1m),
            load_average_5m: load.as_ref().map_or(0.0, |load| load.load_average_5m),
            load_average_15m: load.as_ref().map_or(0.0, |load| load.load_average_15m),
            timestamp,
            hostname,
            cpu,
            processes,
            memory,
            load,
            disks,
            network,
            filesystems,
            stale_filesystems,
            ebpf: None,
        }
    }

    /// `statvfs` of a mount: on a filesystem that can hang (network, FUSE), off the
    /// collector thread with a timeout; on a local one, inline (a hand-off costs
    /// ~15 µs, more than the call).
    fn statvfs(&self, mount_point: &Path, fs_type: &str) -> Probe<nix::Result<statfs::Usage>> {
        let path = self.mount_view.path(mount_point);
        if !statfs::may_hang(fs_type) {
            return Probe::Done(statfs::usage(&path));
        }
        self.prober
            .run(&mount_point.to_string_lossy(), move || statfs::usage(&path))
    }

    /// Reads and parses one `/proc` file, recording a failure instead of returning it.
    fn read<T>(
        &mut self,
        timestamp: u64,
        relative: &str,
        parse: impl FnOnce(&str) -> Result<T, crate::procfs::ParseError>,
    ) -> Option<T> {
        match self.proc.read(relative, parse) {
            Ok(value) => Some(value),
            Err(error) => {
                let source = match &error {
                    SourceError::Io { path, .. } | SourceError::Parse { path, .. } => {
                        path.display().to_string()
                    }
                };
                self.health
                    .record_error(COLLECTOR, &source, error.to_string(), timestamp);
                None
            }
        }
    }

    fn cpu_metrics(&mut self, stat: &stat::KernelStat) -> CpuMetrics {
        self.cpu_times.begin(Instant::now());
        let (usage_percent, modes_percent) =
            split_usage(self.cpu_times.observe(None, stat.total.modes()));
        let per_cpu = stat
            .per_cpu
            .iter()
            .map(|(cpu, times)| {
                let (usage_percent, modes_percent) =
                    split_usage(self.cpu_times.observe(Some(*cpu), times.modes()));
                PerCpuMetrics {
                    cpu: *cpu,
                    usage_percent,
                    modes_percent,
                    seconds_total: self.seconds(times),
                }
            })
            .collect();
        CpuMetrics {
            usage_percent,
            modes_percent,
            seconds_total: self.seconds(&stat.total),
            guest_seconds_total: (stat.total.guest + stat.total.guest_nice) as f64
                / self.ticks_per_second,
            per_cpu,
        }
    }

    fn seconds(&self, times: &CpuTimes) -> CpuModes {
        cpu_modes(
            times
                .modes()
                .map(|ticks| ticks as f64 / self.ticks_per_second),
        )
    }

    fn process_metrics(&mut self, stat: &stat::KernelStat) -> ProcessMetrics {
        self.process_counters.begin(Instant::now());
        let rates = self
            .process_counters
            .observe((), [stat.context_switches, stat.forks])
            .map(|deltas| deltas.per_second());
        ProcessMetrics {
            context_switches_total: stat.context_switches,
            context_switches_per_second: rates.map(|[switches, _]| switches),
            forks_total: stat.forks,
            forks_per_second: rates.map(|[_, forks]| forks),
            procs_running: stat.procs_running,
            procs_blocked: stat.procs_blocked,
            boot_time: stat.boot_time,
        }
    }

    fn disk_metrics(&mut self, disks: Vec<diskstats::DiskStat>) -> Vec<DiskMetrics> {
        self.disk_counters.begin(Instant::now());
        disks
            .into_iter()
            .filter(|disk| {
                !IGNORED_DISK_PREFIXES
                    .iter()
                    .any(|prefix| disk.name.starts_with(prefix))
            })
            .map(|disk| {
                let read_bytes = disk.sectors_read.saturating_mul(SECTOR_BYTES);
                let write_bytes = disk.sectors_written.saturating_mul(SECTOR_BYTES);
                let counters = [read_bytes, write_bytes, disk.reads, disk.writes, disk.io_ms];
                let rates = self
                    .disk_counters
                    .observe(disk.name.clone(), counters)
                    .map(|deltas| {
                        let [read_bytes, write_bytes, reads, writes, io_ms_per_second] =
                            deltas.per_second();
                        DiskRates {
                            read_bytes_per_second: read_bytes,
                            write_bytes_per_second: write_bytes,
                            reads_per_second: reads,
                            writes_per_second: writes,
                            // ms of busy time per second of wall time, as a percentage.
                            utilization_percent: (io_ms_per_second / 10.0).min(100.0),
                        }
                    });
                DiskMetrics {
                    kind: disk_kind(&self.sources.sys_block, &disk.name),
                    device: disk.name,
                    major: disk.major,
                    minor: disk.minor,
                    read_bytes_total: read_bytes,
                    write_bytes_total: write_bytes,
                    discard_bytes_total: disk.sectors_discarded.saturating_mul(SECTOR_BYTES),
                    reads_total: disk.reads,
                    writes_total: disk.writes,
                    discards_total: disk.discards,
                    flushes_total: disk.flushes,
                    read_time_ms_total: disk.read_ms,
                    write_time_ms_total: disk.write_ms,
                    io_time_ms_total: disk.io_ms,
                    in_flight: disk.in_flight,
                    rates,
                }
            })
            .collect()
    }

    fn network_metrics(&mut self, interfaces: Vec<netdev::NetDevStat>) -> Vec<NetworkMetrics> {
        self.network_counters.begin(Instant::now());
        interfaces
            .into_iter()
            .map(|net| {
                let counters = super::network_totals(&net);
                let rates = self
                    .network_counters
                    .observe(
                        net.interface.clone(),
                        [
                            net.rx_bytes,
                            net.rx_packets,
                            net.rx_errors,
                            net.rx_dropped,
                            net.tx_bytes,
                            net.tx_packets,
                            net.tx_errors,
                            net.tx_dropped,
                        ],
                    )
                    .as_ref()
                    .map(Deltas::per_second)
                    .map(
                        |[
                            rx_bytes,
                            rx_packets,
                            rx_errors,
                            rx_dropped,
                            tx_bytes,
                            tx_packets,
                            tx_errors,
                            tx_dropped,
                        ]| {
                            NetworkRates {
                                rx_bytes_per_second: rx_bytes,
                                rx_packets_per_second: rx_packets,
                                rx_errors_per_second: rx_errors,
                                rx_dropped_per_second: rx_dropped,
                                tx_bytes_per_second: tx_bytes,
                                tx_packets_per_second: tx_packets,
                                tx_errors_per_second: tx_errors,
                                tx_dropped_per_second: tx_dropped,
                            }
                        },
                    );
                NetworkMetrics {
                    interface: net.interface,
                    counters,
                    rates,
                }
            })
            .collect()
    }

    fn filesystem_metrics(
        &mut self,
        mounts: &[mountinfo::Mount],
        stale: &mut Vec<StaleFilesystem>,
        timestamp: u64,
    ) -> Vec<FilesystemMetrics> {
        let mut filesystems = Vec::new();
        for mount in statfs::real_filesystems(mounts) {
            match self.statvfs(Path::new(&mount.mount_point), &mount.fs_type) {
                Probe::Done(Ok(usage)) => filesystems.push(filesystem_metrics(&usage, mount)),
                Probe::Done(Err(error)) => {
                    let message = format!("statvfs {}: {error}", mount.mount_point);
                    self.health
                        .record_error(COLLECTOR, "statvfs", message, timestamp);
                }
                Probe::Stale => stale.push(StaleFilesystem {
                    mount_point: mount.mount_point.clone(),
                    device: mount.source.clone(),
                    fs_type: mount.fs_type.clone(),
                }),
            }
        }
        filesystems
    }
}

fn filesystem_metrics(usage: &statfs::Usage, mount: &mountinfo::Mount) -> FilesystemMetrics {
    FilesystemMetrics {
        mount_point: mount.mount_point.clone(),
        device: mount.source.clone(),
        fs_type: mount.fs_type.clone(),
        size_bytes: usage.size_bytes,
        used_bytes: usage.used_bytes,
        available_bytes: usage.available_bytes,
        usage_percent: usage.usage_percent(),
        inodes_total: usage.inodes_total,
        inodes_used: usage.inodes_total.saturating_sub(usage.inodes_free),
        inodes_free: usage.inodes_free,
    }
}

/// Busy % and per-mode % from one interval's tick deltas.
fn split_usage(deltas: Option<Deltas<8>>) -> (Option<f64>, Option<CpuModes>) {
    let Some(deltas) = deltas else {
        return (None, None);
    };
    let total: u64 = deltas.values.iter().sum();
    if total == 0 {
        return (None, None);
    }
    let modes = cpu_modes(
        deltas
            .values
            .map(|ticks| ticks as f64 * 100.0 / total as f64),
    );
    // Busy: everything but idle and iowait.
    let busy = (100.0 - modes.idle - modes.iowait).clamp(0.0, 100.0);
    (Some(busy), Some(modes))
}

/// [`CpuTimes::modes`] order: user, nice, system, idle, iowait, irq, softirq, steal.
fn cpu_modes([user, nice, system, idle, iowait, irq, softirq, steal]: [f64; 8]) -> CpuModes {
    CpuModes {
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

fn memory_metrics(info: &meminfo::MemInfo) -> MemoryMetrics {
    let used = info.used();
    MemoryMetrics {
        total_bytes: info.total,
        free_bytes: info.free,
        available_bytes: info.available,
        buffers_bytes: info.buffers,
        cached_bytes: info.cache(),
        shared_bytes: info.shmem,
        used_bytes: used,
        usage_percent: if info.total == 0 {
            0.0
        } else {
            used as f64 * 100.0 / info.total as f64
        },
        swap_total_bytes: info.swap_total,
        swap_free_bytes: info.swap_free,
        swap_used_bytes: info.swap_total.saturating_sub(info.swap_free),
    }
}

/// Partitions have a `partition` attribute in sysfs; whole disks do not.
fn disk_kind(sys_block: &Path, name: &str) -> DiskKind {
    if sys_block.join(name).join("partition").exists() {
        DiskKind::Partition
    } else {
        DiskKind::Disk
    }
}

/// USER_HZ, the unit of `/proc/stat` CPU times (100 on every mainstream kernel).
fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}
