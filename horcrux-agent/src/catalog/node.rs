//! Node families: node_exporter's names under `horcrux_node_`, from `/proc` and
//! `statvfs`, and the node series history and alerts use.

use super::{Family, Samples, Unit, Value};
use crate::model::{
    CpuModes, DiskKind, DiskMetrics, FilesystemMetrics, NetworkTotals, NodeMetrics,
};

type F = Family<NodeMetrics>;

pub static FAMILIES: &[F] = &[
    F::counter(
        "cpu_seconds_total",
        Unit::Seconds,
        "Seconds the CPUs spent in each mode (/proc/stat).",
        |n, out| {
            for cpu in n.cpu.iter().flat_map(|cpu| &cpu.per_cpu) {
                let number = cpu.cpu.to_string();
                for (mode, seconds) in modes(&cpu.seconds_total) {
                    out.labeled(&[&number, mode], Some(seconds));
                }
            }
        },
    )
    .labels(&["cpu", "mode"]),
    F::gauge(
        "cpu_usage_ratio",
        Unit::Ratio,
        "Busy share of all CPUs over the last collection interval (0-1).",
        |n, out| {
            out.one(
                n.cpu
                    .as_ref()
                    .and_then(|cpu| cpu.usage_percent.map(|percent| percent / 100.0)),
            )
        },
    ),
    F::series(
        "cpu_usage",
        Unit::Percent,
        "Busy CPU % over all CPUs since the previous sample.",
        |n, out| out.one(n.cpu.as_ref().and_then(|cpu| cpu.usage_percent)),
    ),
    F::counter(
        "context_switches_total",
        Unit::Count,
        "Context switches (/proc/stat ctxt).",
        |n, out| out.one(n.processes.as_ref().map(|p| p.context_switches_total)),
    ),
    F::counter(
        "forks_total",
        Unit::Count,
        "Processes created (/proc/stat processes).",
        |n, out| out.one(n.processes.as_ref().map(|p| p.forks_total)),
    ),
    F::gauge(
        "procs_running",
        Unit::Count,
        "Runnable tasks (/proc/stat procs_running).",
        |n, out| out.one(n.processes.as_ref().map(|p| p.procs_running)),
    ),
    F::gauge(
        "procs_blocked",
        Unit::Count,
        "Tasks blocked on I/O (/proc/stat procs_blocked).",
        |n, out| out.one(n.processes.as_ref().map(|p| p.procs_blocked)),
    ),
    F::gauge(
        "boot_time_seconds",
        Unit::Timestamp,
        "Boot time, Unix seconds.",
        |n, out| out.one(n.processes.as_ref().map(|p| p.boot_time)),
    ),
    F::gauge(
        "memory_total_bytes",
        Unit::Bytes,
        "Memory: MemTotal (/proc/meminfo).",
        |n, out| out.one(n.memory.as_ref().map(|m| m.total_bytes)),
    ),
    F::gauge(
        "memory_free_bytes",
        Unit::Bytes,
        "Memory: MemFree (/proc/meminfo).",
        |n, out| out.one(n.memory.as_ref().map(|m| m.free_bytes)),
    ),
    F::gauge(
        "memory_available_bytes",
        Unit::Bytes,
        "Memory: MemAvailable (/proc/meminfo).",
        |n, out| out.one(n.memory.as_ref().map(|m| m.available_bytes)),
    ),
    F::gauge(
        "memory_buffers_bytes",
        Unit::Bytes,
        "Memory: Buffers (/proc/meminfo).",
        |n, out| out.one(n.memory.as_ref().map(|m| m.buffers_bytes)),
    ),
    F::gauge(
        "memory_cached_bytes",
        Unit::Bytes,
        "Memory: Cached + SReclaimable, as procps free (/proc/meminfo).",
        |n, out| out.one(n.memory.as_ref().map(|m| m.cached_bytes)),
    ),
    F::gauge(
        "memory_shared_bytes",
        Unit::Bytes,
        "Memory: Shmem (/proc/meminfo).",
        |n, out| out.one(n.memory.as_ref().map(|m| m.shared_bytes)),
    ),
    F::gauge(
        "memory_used_bytes",
        Unit::Bytes,
        "Memory: total - free - buffers - cache (/proc/meminfo).",
        |n, out| out.one(n.memory.as_ref().map(|m| m.used_bytes)),
    ),
    F::gauge(
        "memory_swap_total_bytes",
        Unit::Bytes,
        "Memory: SwapTotal (/proc/meminfo).",
        |n, out| out.one(n.memory.as_ref().map(|m| m.swap_total_bytes)),
    ),
    F::gauge(
        "memory_swap_free_bytes",
        Unit::Bytes,
        "Memory: SwapFree (/proc/meminfo).",
        |n, out| out.one(n.memory.as_ref().map(|m| m.swap_free_bytes)),
    ),
    F::series(
        "memory_usage",
        Unit::Percent,
        "Used memory %: (total - free - buffers - cache) / total.",
        |n, out| out.one(Some(n.memory_usage)),
    ),
    F::series(
        "disk_usage",
        Unit::Percent,
        "Root filesystem use %, as df: used / (used + available).",
        |n, out| out.one(Some(n.disk_usage)),
    ),
    F::gauge(
        "load1",
        Unit::Count,
        "Load average (/proc/loadavg).",
        |n, out| out.one(n.load.as_ref().map(|l| l.load_average_1m)),
    )
    .recorded_as("load_average_1m"),
    F::gauge(
        "load5",
        Unit::Count,
        "Load average (/proc/loadavg).",
        |n, out| out.one(n.load.as_ref().map(|l| l.load_average_5m)),
    )
    .recorded_as("load_average_5m"),
    F::gauge(
        "load15",
        Unit::Count,
        "Load average (/proc/loadavg).",
        |n, out| out.one(n.load.as_ref().map(|l| l.load_average_15m)),
    )
    .recorded_as("load_average_15m"),
    F::counter(
        "disk_read_bytes_total",
        Unit::Bytes,
        "Bytes read (sectors x 512). (/proc/diskstats)",
        |n, out| each_disk(n, out, |d| d.read_bytes_total.into()),
    )
    .labels(&["device"]),
    F::counter(
        "disk_written_bytes_total",
        Unit::Bytes,
        "Bytes written (sectors x 512). (/proc/diskstats)",
        |n, out| each_disk(n, out, |d| d.write_bytes_total.into()),
    )
    .labels(&["device"]),
    F::counter(
        "disk_discarded_bytes_total",
        Unit::Bytes,
        "Bytes discarded (sectors x 512). (/proc/diskstats)",
        |n, out| each_disk(n, out, |d| d.discard_bytes_total.into()),
    )
    .labels(&["device"]),
    F::counter(
        "disk_reads_completed_total",
        Unit::Count,
        "Reads completed. (/proc/diskstats)",
        |n, out| each_disk(n, out, |d| d.reads_total.into()),
    )
    .labels(&["device"]),
    F::counter(
        "disk_writes_completed_total",
        Unit::Count,
        "Writes completed. (/proc/diskstats)",
        |n, out| each_disk(n, out, |d| d.writes_total.into()),
    )
    .labels(&["device"]),
    F::counter(
        "disk_discards_completed_total",
        Unit::Count,
        "Discards completed. (/proc/diskstats)",
        |n, out| each_disk(n, out, |d| d.discards_total.into()),
    )
    .labels(&["device"]),
    F::counter(
        "disk_flush_requests_total",
        Unit::Count,
        "Flushes completed. (/proc/diskstats)",
        |n, out| each_disk(n, out, |d| d.flushes_total.into()),
    )
    .labels(&["device"]),
    F::counter(
        "disk_io_time_seconds_total",
        Unit::Seconds,
        "Seconds the device had I/O in flight. (/proc/diskstats)",
        |n, out| each_disk(n, out, |d| (d.io_time_ms_total as f64 / 1e3).into()),
    )
    .labels(&["device"]),
    F::gauge(
        "disk_io_now",
        Unit::Count,
        "I/Os in flight (/proc/diskstats).",
        |n, out| each_disk(n, out, |d| d.in_flight.into()),
    )
    .labels(&["device"]),
    F::series(
        "disk_read_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s read from whole disks.",
        |n, out| out.one(disk_rate(n, |d| d.read_bytes_per_second)),
    ),
    F::series(
        "disk_write_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s written to whole disks.",
        |n, out| out.one(disk_rate(n, |d| d.write_bytes_per_second)),
    ),
    F::counter(
        "network_receive_bytes_total",
        Unit::Bytes,
        "Interface counter (/proc/net/dev).",
        |n, out| each_interface(n, out, |t| t.rx_bytes_total),
    )
    .labels(&["device"]),
    F::counter(
        "network_receive_packets_total",
        Unit::Count,
        "Interface counter (/proc/net/dev).",
        |n, out| each_interface(n, out, |t| t.rx_packets_total),
    )
    .labels(&["device"]),
    F::counter(
        "network_receive_errs_total",
        Unit::Count,
        "Interface counter (/proc/net/dev).",
        |n, out| each_interface(n, out, |t| t.rx_errors_total),
    )
    .labels(&["device"]),
    F::counter(
        "network_receive_drop_total",
        Unit::Count,
        "Interface counter (/proc/net/dev).",
        |n, out| each_interface(n, out, |t| t.rx_dropped_total),
    )
    .labels(&["device"]),
    F::counter(
        "network_transmit_bytes_total",
        Unit::Bytes,
        "Interface counter (/proc/net/dev).",
        |n, out| each_interface(n, out, |t| t.tx_bytes_total),
    )
    .labels(&["device"]),
    F::counter(
        "network_transmit_packets_total",
        Unit::Count,
        "Interface counter (/proc/net/dev).",
        |n, out| each_interface(n, out, |t| t.tx_packets_total),
    )
    .labels(&["device"]),
    F::counter(
        "network_transmit_errs_total",
        Unit::Count,
        "Interface counter (/proc/net/dev).",
        |n, out| each_interface(n, out, |t| t.tx_errors_total),
    )
    .labels(&["device"]),
    F::counter(
        "network_transmit_drop_total",
        Unit::Count,
        "Interface counter (/proc/net/dev).",
        |n, out| each_interface(n, out, |t| t.tx_dropped_total),
    )
    .labels(&["device"]),
    F::series(
        "network_rx_bytes_per_second",
        Unit::BytesPerSecond,
        "Received bytes/s, all interfaces but lo.",
        |n, out| out.one(network_rates(n).map(|(rx, _)| rx)),
    ),
    F::series(
        "network_tx_bytes_per_second",
        Unit::BytesPerSecond,
        "Transmitted bytes/s, all interfaces but lo.",
        |n, out| out.one(network_rates(n).map(|(_, tx)| tx)),
    ),
    F::gauge(
        "filesystem_size_bytes",
        Unit::Bytes,
        "Filesystem size. (statvfs)",
        |n, out| each_filesystem(n, out, |fs| fs.size_bytes),
    )
    .labels(FILESYSTEM_LABELS),
    F::gauge(
        "filesystem_used_bytes",
        Unit::Bytes,
        "Used space, as df. (statvfs)",
        |n, out| each_filesystem(n, out, |fs| fs.used_bytes),
    )
    .labels(FILESYSTEM_LABELS),
    F::gauge(
        "filesystem_avail_bytes",
        Unit::Bytes,
        "Space available to unprivileged users, as df. (statvfs)",
        |n, out| each_filesystem(n, out, |fs| fs.available_bytes),
    )
    .labels(FILESYSTEM_LABELS),
    F::gauge(
        "filesystem_files",
        Unit::Count,
        "Inodes. (statvfs)",
        |n, out| each_filesystem(n, out, |fs| fs.inodes_total),
    )
    .labels(FILESYSTEM_LABELS),
    F::gauge(
        "filesystem_files_free",
        Unit::Count,
        "Free inodes. (statvfs)",
        |n, out| each_filesystem(n, out, |fs| fs.inodes_free),
    )
    .labels(FILESYSTEM_LABELS),
    F::gauge(
        "filesystem_stale",
        Unit::Info,
        "1 for a mount whose statvfs did not answer in time (hung network or \
         FUSE mount); skipped until it answers.",
        |n, out| {
            for fs in &n.stale_filesystems {
                out.labeled(&[&fs.mount_point, &fs.device, &fs.fs_type], Some(1u64));
            }
        },
    )
    .labels(FILESYSTEM_LABELS),
];

const FILESYSTEM_LABELS: &[&str] = &["mountpoint", "device", "fstype"];

/// The eight modes that partition CPU time, as `/proc/stat` orders them.
pub fn modes(values: &CpuModes) -> [(&'static str, f64); 8] {
    [
        ("user", values.user),
        ("nice", values.nice),
        ("system", values.system),
        ("idle", values.idle),
        ("iowait", values.iowait),
        ("irq", values.irq),
        ("softirq", values.softirq),
        ("steal", values.steal),
    ]
}

fn each_disk<'a>(
    node: &'a NodeMetrics,
    out: &mut Samples<'_, 'a>,
    value: fn(&DiskMetrics) -> Value<'a>,
) {
    for disk in node.disks.iter().flatten() {
        out.labeled(&[&disk.device], Some(value(disk)));
    }
}

fn each_interface(node: &NodeMetrics, out: &mut Samples<'_, '_>, value: fn(&NetworkTotals) -> u64) {
    for interface in node.network.iter().flatten() {
        out.labeled(&[&interface.interface], Some(value(&interface.counters)));
    }
}

fn each_filesystem(
    node: &NodeMetrics,
    out: &mut Samples<'_, '_>,
    value: fn(&FilesystemMetrics) -> u64,
) {
    for fs in node.filesystems.iter().flatten() {
        out.labeled(&[&fs.mount_point, &fs.device, &fs.fs_type], Some(value(fs)));
    }
}

/// A rate summed over whole disks (partitions would count twice); `None` before
/// the second sample.
fn disk_rate(node: &NodeMetrics, rate: fn(&crate::model::DiskRates) -> f64) -> Option<f64> {
    let rates: Vec<f64> = node
        .disks
        .iter()
        .flatten()
        .filter(|disk| disk.kind == DiskKind::Disk)
        .filter_map(|disk| disk.rates.as_ref().map(rate))
        .collect();
    (!rates.is_empty()).then(|| rates.iter().sum())
}

/// Received and transmitted bytes/s over every interface but `lo` (`None` before
/// the second sample).
pub fn network_rates(node: &NodeMetrics) -> Option<(f64, f64)> {
    let rates: Vec<_> = node
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
