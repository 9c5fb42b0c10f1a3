//! eBPF families, declared once and exported for the node (its totals, under
//! `horcrux_node_`) and for every container (under `horcrux_container_`).

use super::{Family, Unit};
use crate::model::{BlkioDevice, EbpfMetrics};

type F = Family<EbpfMetrics>;

pub static FAMILIES: &[F] = &[
    F::histogram(
        "runqueue_latency_seconds",
        "Time from becoming runnable (wakeup or preemption) to running, charged \
         to the task switched in (eBPF).",
        |e, out| out.one(e.sched.as_ref().map(|sched| &sched.runq_latency)),
    ),
    F::counter(
        "sched_switches_total",
        Unit::Count,
        "Context switches of the cgroup's tasks: voluntary (blocked) or \
         involuntary (preempted) (eBPF).",
        |e, out| {
            if let Some(sched) = &e.sched {
                out.labeled(&["voluntary"], Some(sched.voluntary_switches));
                out.labeled(&["involuntary"], Some(sched.involuntary_switches));
            }
        },
    )
    .labels(&["kind"]),
    F::counter(
        "sched_oncpu_seconds_total",
        Unit::Seconds,
        "Time the cgroup's tasks ran as the kernel counts it (no steal or interrupt time), added at each switch-out (eBPF).",
        |e, out| out.one(e.sched.as_ref().map(|sched| sched.oncpu_ns as f64 / 1e9)),
    ),
    F::histogram(
        "block_io_latency_seconds",
        "Block request latency from issue to the driver to completion, charged \
         to the bio's cgroup (eBPF).",
        |e, out| {
            for device in block_devices(e) {
                out.labeled(&[device_name(device)], Some(&device.latency));
            }
        },
    )
    .labels(&["device"]),
    F::counter(
        "block_requests_total",
        Unit::Count,
        "Completed block requests by device and operation (eBPF).",
        |e, out| {
            for device in block_devices(e) {
                for (op, requests, _) in by_operation(device) {
                    out.labeled(&[device_name(device), op], Some(requests));
                }
            }
        },
    )
    .labels(&["device", "op"]),
    F::counter(
        "block_request_bytes_total",
        Unit::Bytes,
        "Bytes of completed block requests by device and operation (eBPF).",
        |e, out| {
            for device in block_devices(e) {
                for (op, _, bytes) in by_operation(device) {
                    out.labeled(&[device_name(device), op], bytes);
                }
            }
        },
    )
    .labels(&["device", "op"]),
    F::counter(
        "block_writeback_bytes_total",
        Unit::Bytes,
        "Page-cache bytes written back to the device on the cgroup's behalf: pages \
         its memory cgroup owns, whichever task wrote them (the owner's view; the \
         kernel charges flusher-thread writes to the root blkcg on v1) (eBPF).",
        |e, out| {
            for device in block_devices(e) {
                out.labeled(&[device_name(device)], device.totals.writeback_bytes);
            }
        },
    )
    .labels(&["device"]),
    F::counter(
        "page_cache_dirtied_bytes_total",
        Unit::Bytes,
        "Page-cache bytes the cgroup's pages turned dirty (what writeback will \
         write) (eBPF).",
        |e, out| out.one(e.blkio.as_ref().and_then(|blkio| blkio.dirtied_bytes)),
    ),
    F::gauge(
        "block_requests_in_flight",
        Unit::Count,
        "Block requests issued to the driver and not completed (eBPF).",
        |e, out| {
            for device in block_devices(e) {
                out.labeled(&[device_name(device)], Some(device.totals.in_flight));
            }
        },
    )
    .labels(&["device"]),
];

fn block_devices(ebpf: &EbpfMetrics) -> impl Iterator<Item = &BlkioDevice> {
    ebpf.blkio.iter().flat_map(|blkio| &blkio.devices)
}

fn device_name(device: &BlkioDevice) -> &str {
    device.device.as_deref().unwrap_or("unknown")
}

/// (operation, requests, bytes); flushes and other requests carry no bytes.
fn by_operation(device: &BlkioDevice) -> [(&'static str, u64, Option<u64>); 5] {
    let t = device.totals;
    [
        ("read", t.read_ops, Some(t.read_bytes)),
        ("write", t.write_ops, Some(t.write_bytes)),
        ("discard", t.discard_ops, Some(t.discard_bytes)),
        ("flush", t.flush_ops, None),
        ("other", t.other_ops, None),
    ]
}
