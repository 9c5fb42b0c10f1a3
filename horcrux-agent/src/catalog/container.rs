//! Container families: cAdvisor's names under `horcrux_container_`, from cgroups
//! and `/proc/<pid>/net/dev`, and the container series history and alerts use.
//! Every sample also carries the container's `id`, `name` and `runtime`.

use super::{Family, Samples, Unit};
use crate::model::{BlockIoTotals, ContainerMetrics, NetworkTotals};

type F = Family<ContainerMetrics>;

pub static FAMILIES: &[F] = &[
    F::gauge(
        "info",
        Unit::Info,
        "1 for every discovered container, with its state and cgroup.",
        |c, out| out.labeled(&[c.state.name(), &c.cgroup], Some(1u64)),
    )
    .labels(&["state", "cgroup"]),
    F::series(
        "cpu_usage_percent",
        Unit::Percent,
        "% of one CPU since the previous sample (as docker stats).",
        |c, out| out.one(c.cpu_usage_percent),
    ),
    F::counter(
        "cpu_usage_seconds_total",
        Unit::Seconds,
        "CPU time used.",
        |c, out| out.one(c.cpu.as_ref().map(|cpu| cpu.usage_seconds_total)),
    ),
    F::counter(
        "cpu_user_seconds_total",
        Unit::Seconds,
        "CPU time in user mode.",
        |c, out| out.one(c.cpu.as_ref().and_then(|cpu| cpu.user_seconds_total)),
    ),
    F::counter(
        "cpu_system_seconds_total",
        Unit::Seconds,
        "CPU time in kernel mode.",
        |c, out| out.one(c.cpu.as_ref().and_then(|cpu| cpu.system_seconds_total)),
    ),
    F::gauge(
        "cpu_limit_cores",
        Unit::Cores,
        "CPU quota in CPUs (absent = unlimited).",
        |c, out| out.one(c.cpu.as_ref().and_then(|cpu| cpu.limit_cores)),
    ),
    F::counter(
        "cpu_cfs_periods_total",
        Unit::Count,
        "Enforcement periods.",
        |c, out| out.one(throttling(c).map(|t| t.periods_total)),
    ),
    F::counter(
        "cpu_cfs_throttled_periods_total",
        Unit::Count,
        "Throttled periods.",
        |c, out| out.one(throttling(c).map(|t| t.throttled_periods_total)),
    ),
    F::counter(
        "cpu_cfs_throttled_seconds_total",
        Unit::Seconds,
        "Time throttled.",
        |c, out| out.one(throttling(c).map(|t| t.throttled_seconds_total)),
    ),
    F::gauge(
        "memory_usage_bytes",
        Unit::Bytes,
        "Memory charged to the cgroup.",
        |c, out| out.one(c.memory_usage_bytes),
    )
    .recorded_as("memory_usage_bytes"),
    F::gauge(
        "memory_limit_bytes",
        Unit::Bytes,
        "Memory limit (absent = unlimited).",
        |c, out| out.one(c.memory_limit_bytes),
    ),
    F::gauge(
        "memory_working_set_bytes",
        Unit::Bytes,
        "Usage minus inactive file cache.",
        |c, out| out.one(c.memory.as_ref().map(|m| m.working_set_bytes)),
    ),
    F::gauge(
        "memory_anon_bytes",
        Unit::Bytes,
        "Anonymous memory.",
        |c, out| out.one(c.memory.as_ref().map(|m| m.anon_bytes)),
    ),
    F::gauge("memory_file_bytes", Unit::Bytes, "Page cache.", |c, out| {
        out.one(c.memory.as_ref().map(|m| m.file_bytes))
    }),
    F::gauge("memory_swap_bytes", Unit::Bytes, "Swap used.", |c, out| {
        out.one(c.memory.as_ref().and_then(|m| m.swap_bytes))
    }),
    F::counter(
        "memory_oom_kills_total",
        Unit::Count,
        "Processes killed by the OOM killer.",
        |c, out| out.one(c.memory.as_ref().and_then(|m| m.oom_kills_total)),
    ),
    F::gauge("pids", Unit::Count, "Tasks in the cgroup.", |c, out| {
        out.one(c.pids.as_ref().map(|p| p.current))
    }),
    F::gauge(
        "pids_limit",
        Unit::Count,
        "Task limit (absent = unlimited).",
        |c, out| out.one(c.pids.as_ref().and_then(|p| p.limit)),
    ),
    F::counter(
        "block_io_bytes_total",
        Unit::Bytes,
        "Block I/O bytes by device and operation (absent where the kernel does \
         not count it).",
        |c, out| {
            each_block_device(c, out, |t| {
                [
                    t.read_bytes_total,
                    t.write_bytes_total,
                    t.discard_bytes_total,
                ]
            })
        },
    )
    .labels(&["device", "op"]),
    F::counter(
        "block_io_ops_total",
        Unit::Count,
        "Block I/O operations by device and operation.",
        |c, out| {
            each_block_device(c, out, |t| {
                [t.reads_total, t.writes_total, t.discards_total]
            })
        },
    )
    .labels(&["device", "op"]),
    F::series(
        "block_read_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s read.",
        |c, out| out.one(c.block_io.as_ref().and_then(|b| b.read_bytes_per_second)),
    ),
    F::series(
        "block_write_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s written.",
        |c, out| out.one(c.block_io.as_ref().and_then(|b| b.write_bytes_per_second)),
    ),
    F::counter(
        "network_receive_bytes_total",
        Unit::Bytes,
        "Traffic of the container's network namespace, all interfaces but lo.",
        |c, out| out.one(network(c, |n| n.rx_bytes_total)),
    ),
    F::counter(
        "network_transmit_bytes_total",
        Unit::Bytes,
        "Traffic of the container's network namespace, all interfaces but lo.",
        |c, out| out.one(network(c, |n| n.tx_bytes_total)),
    ),
    F::counter(
        "network_receive_packets_total",
        Unit::Count,
        "Traffic of the container's network namespace, all interfaces but lo.",
        |c, out| out.one(network(c, |n| n.rx_packets_total)),
    ),
    F::counter(
        "network_transmit_packets_total",
        Unit::Count,
        "Traffic of the container's network namespace, all interfaces but lo.",
        |c, out| out.one(network(c, |n| n.tx_packets_total)),
    ),
    F::series(
        "network_rx_bytes_per_second",
        Unit::BytesPerSecond,
        "Received bytes/s.",
        |c, out| out.one(c.network.as_ref().and_then(|n| n.rx_bytes_per_second)),
    ),
    F::series(
        "network_tx_bytes_per_second",
        Unit::BytesPerSecond,
        "Transmitted bytes/s.",
        |c, out| out.one(c.network.as_ref().and_then(|n| n.tx_bytes_per_second)),
    ),
    F::counter(
        "pressure_stalled_seconds_total",
        Unit::Seconds,
        "Pressure stall time (PSI) by resource and kind (some, full).",
        |c, out| {
            let pressure = c.pressure.as_ref();
            for (resource, stalls) in [
                ("cpu", pressure.and_then(|p| p.cpu)),
                ("memory", pressure.and_then(|p| p.memory)),
                ("io", pressure.and_then(|p| p.io)),
            ] {
                let some = stalls.map(|p| p.some.total_us as f64 / 1e6);
                let full = stalls
                    .and_then(|p| p.full)
                    .map(|full| full.total_us as f64 / 1e6);
                out.labeled(&[resource, "some"], some);
                out.labeled(&[resource, "full"], full);
            }
        },
    )
    .labels(&["resource", "kind"]),
];

fn throttling(container: &ContainerMetrics) -> Option<&crate::model::ContainerThrottling> {
    container.cpu.as_ref()?.throttling.as_ref()
}

fn network(container: &ContainerMetrics, value: fn(&NetworkTotals) -> u64) -> Option<u64> {
    container
        .network
        .as_ref()
        .map(|network| value(&network.totals))
}

/// One sample per device and operation (read, write, discard).
fn each_block_device(
    container: &ContainerMetrics,
    out: &mut Samples<'_, '_>,
    values: fn(&BlockIoTotals) -> [u64; 3],
) {
    for device in container.block_io.iter().flat_map(|block| &block.devices) {
        let name = device.device.as_deref().unwrap_or("unknown");
        for (op, value) in ["read", "write", "discard"]
            .into_iter()
            .zip(values(&device.counters))
        {
            out.labeled(&[name, op], Some(value));
        }
    }
}
