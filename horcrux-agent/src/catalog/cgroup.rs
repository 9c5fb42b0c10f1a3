//! Cgroup families: what a cgroup and its descendants used (cAdvisor's names),
//! shared by containers (`horcrux_container_…`) and VMs with a cgroup of their own
//! (`horcrux_vm_…`). Samples carry the scope's identity labels.

use super::{Family, Samples, Unit};
use crate::model::{BlockIoTotals, CgroupUsage};

type F = Family<CgroupUsage>;

pub static FAMILIES: &[F] = &[
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
        |c, out| out.one(c.memory.as_ref().map(|m| m.usage_bytes)),
    ),
    F::gauge(
        "memory_limit_bytes",
        Unit::Bytes,
        "Memory limit (absent = unlimited).",
        |c, out| out.one(c.memory.as_ref().and_then(|m| m.limit_bytes)),
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

fn throttling(usage: &CgroupUsage) -> Option<&crate::model::ContainerThrottling> {
    usage.cpu.as_ref()?.throttling.as_ref()
}

/// One sample per device and operation (read, write, discard).
fn each_block_device(
    usage: &CgroupUsage,
    out: &mut Samples<'_, '_>,
    values: fn(&BlockIoTotals) -> [u64; 3],
) {
    for device in usage.block_io.iter().flat_map(|block| &block.devices) {
        let name = device.device.as_deref().unwrap_or("unknown");
        for (op, value) in ["read", "write", "discard"]
            .into_iter()
            .zip(values(&device.counters))
        {
            out.labeled(&[name, op], Some(value));
        }
    }
}
