//! VM families under `horcrux_vm_`: the libvirt exporters' names where they exist
//! (`vcpu_time_seconds_total`, `vcpu_delay_seconds_total`, `block_stats_…`,
//! `interface_stats_…`, `memory_stats_…`), KVM's own statistics per vCPU, and the
//! VM series history and alerts use. Every sample also carries the VM's `id`,
//! `name` and `source`; a VM with a cgroup of its own also gets the
//! [`super::cgroup`] and [`super::ebpf`] families.

use super::{Family, Samples, Unit};
use crate::model::{GuestMemory, KvmStats, NetworkTotals, VmDisk, VmMetrics};

type F = Family<VmMetrics>;

/// What history and alert state are kept by: the libvirt uuid, or the QEMU's id
/// and pid (a name can be reused by another VM).
pub fn history_key(vm: &VmMetrics) -> String {
    match (&vm.uuid, vm.source) {
        (Some(uuid), crate::model::VmSource::Libvirt) => uuid.to_ascii_lowercase(),
        _ => format!("{}@{}", vm.id, vm.pid.unwrap_or(0)),
    }
}

pub static FAMILIES: &[F] = &[
    F::gauge(
        "info",
        Unit::Info,
        "1 for every VM, with its state and uuid.",
        |vm, out| {
            out.labeled(
                &[vm.state.name(), vm.uuid.as_deref().unwrap_or("")],
                Some(1u64),
            )
        },
    )
    .labels(&["state", "uuid"]),
    F::series(
        "cpu_usage_percent",
        Unit::Percent,
        "% of one host CPU used by the QEMU process since the previous sample.",
        |vm, out| out.one(vm.cpu_usage_percent),
    ),
    F::series(
        "steal_percent",
        Unit::Percent,
        "vCPU run-queue wait (the guest's steal) as % of the vCPUs' time.",
        |vm, out| out.one(vm.cpu.as_ref().and_then(|cpu| cpu.steal_percent)),
    ),
    F::counter(
        "cpu_time_seconds_total",
        Unit::Seconds,
        "CPU time of the QEMU process (all threads).",
        |vm, out| out.one(vm.cpu.as_ref().map(|cpu| cpu.usage_seconds_total)),
    ),
    F::counter(
        "emulator_time_seconds_total",
        Unit::Seconds,
        "CPU time of QEMU's other threads (emulator, I/O): process time minus vCPU time.",
        |vm, out| out.one(vm.cpu.as_ref().map(|cpu| cpu.emulator_seconds_total)),
    ),
    F::gauge("vcpus", Unit::Count, "vCPU threads found.", |vm, out| {
        out.one(vm.cpu.as_ref().map(|cpu| cpu.vcpus.len() as u64))
    }),
    F::counter(
        "vcpu_time_seconds_total",
        Unit::Seconds,
        "On-CPU time of each vCPU thread (schedstat).",
        |vm, out| each_vcpu(vm, out, |vcpu| vcpu.time_seconds_total),
    )
    .labels(&["vcpu"]),
    F::counter(
        "vcpu_delay_seconds_total",
        Unit::Seconds,
        "Time each vCPU thread was runnable but waited for a host CPU: the guest's steal.",
        |vm, out| each_vcpu(vm, out, |vcpu| vcpu.wait_seconds_total),
    )
    .labels(&["vcpu"]),
    F::counter(
        "vcpu_timeslices_total",
        Unit::Count,
        "Times each vCPU thread was scheduled.",
        |vm, out| each_vcpu(vm, out, |vcpu| vcpu.timeslices_total as f64),
    )
    .labels(&["vcpu"]),
    F::series(
        "memory_usage_bytes",
        Unit::Bytes,
        "Host memory the QEMU process holds (resident set).",
        |vm, out| out.one(vm.memory_usage_bytes),
    ),
    F::gauge(
        "memory_rss_bytes",
        Unit::Bytes,
        "Resident set of the QEMU process.",
        |vm, out| out.one(vm.memory_usage_bytes),
    ),
    F::gauge(
        "memory_maximum_bytes",
        Unit::Bytes,
        "The guest's configured memory.",
        |vm, out| out.one(vm.memory_limit_bytes),
    ),
    F::gauge(
        "memory_balloon_current_bytes",
        Unit::Bytes,
        "Memory the balloon gives the guest now.",
        |vm, out| out.one(vm.memory.as_ref().and_then(|m| m.balloon_actual_bytes)),
    ),
    F::gauge(
        "memory_stats_available_bytes",
        Unit::Bytes,
        "Memory the guest sees (balloon driver).",
        |vm, out| out.one(guest(vm, |g| g.available_bytes)),
    ),
    F::gauge(
        "memory_stats_unused_bytes",
        Unit::Bytes,
        "Memory the guest leaves unused (balloon driver).",
        |vm, out| out.one(guest(vm, |g| g.unused_bytes)),
    ),
    F::gauge(
        "memory_stats_usable_bytes",
        Unit::Bytes,
        "Memory the guest could use without swapping (balloon driver).",
        |vm, out| out.one(guest(vm, |g| g.usable_bytes)),
    ),
    F::gauge(
        "memory_stats_disk_caches_bytes",
        Unit::Bytes,
        "The guest's page cache (balloon driver).",
        |vm, out| out.one(guest(vm, |g| g.disk_caches_bytes)),
    ),
    F::counter(
        "memory_stats_swap_in_bytes_total",
        Unit::Bytes,
        "Swapped in by the guest (balloon driver).",
        |vm, out| out.one(guest(vm, |g| g.swap_in_bytes_total)),
    ),
    F::counter(
        "memory_stats_swap_out_bytes_total",
        Unit::Bytes,
        "Swapped out by the guest (balloon driver).",
        |vm, out| out.one(guest(vm, |g| g.swap_out_bytes_total)),
    ),
    F::counter(
        "memory_stats_major_faults_total",
        Unit::Count,
        "The guest's major page faults (balloon driver).",
        |vm, out| out.one(guest(vm, |g| g.major_faults_total)),
    ),
    F::counter(
        "memory_stats_minor_faults_total",
        Unit::Count,
        "The guest's minor page faults (balloon driver).",
        |vm, out| out.one(guest(vm, |g| g.minor_faults_total)),
    ),
    F::series(
        "block_read_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s the guest read from its disks.",
        |vm, out| out.one(vm.rates.map(|r| r.block_read_bytes_per_second)),
    ),
    F::series(
        "block_write_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s the guest wrote to its disks.",
        |vm, out| out.one(vm.rates.map(|r| r.block_write_bytes_per_second)),
    ),
    F::counter(
        "block_stats_read_bytes_total",
        Unit::Bytes,
        "Bytes the guest read from each disk.",
        |vm, out| each_disk(vm, out, |d| d.read_bytes_total as f64),
    )
    .labels(&["device"]),
    F::counter(
        "block_stats_write_bytes_total",
        Unit::Bytes,
        "Bytes the guest wrote to each disk.",
        |vm, out| each_disk(vm, out, |d| d.write_bytes_total as f64),
    )
    .labels(&["device"]),
    F::counter(
        "block_stats_read_requests_total",
        Unit::Count,
        "Read requests per disk.",
        |vm, out| each_disk(vm, out, |d| d.read_ops_total as f64),
    )
    .labels(&["device"]),
    F::counter(
        "block_stats_write_requests_total",
        Unit::Count,
        "Write requests per disk.",
        |vm, out| each_disk(vm, out, |d| d.write_ops_total as f64),
    )
    .labels(&["device"]),
    F::counter(
        "block_stats_flush_requests_total",
        Unit::Count,
        "Flush requests per disk.",
        |vm, out| each_disk(vm, out, |d| d.flush_ops_total as f64),
    )
    .labels(&["device"]),
    F::counter(
        "block_stats_read_time_seconds_total",
        Unit::Seconds,
        "Time spent on reads per disk (summed over requests).",
        |vm, out| each_disk(vm, out, |d| d.read_time_seconds_total),
    )
    .labels(&["device"]),
    F::counter(
        "block_stats_write_time_seconds_total",
        Unit::Seconds,
        "Time spent on writes per disk (summed over requests).",
        |vm, out| each_disk(vm, out, |d| d.write_time_seconds_total),
    )
    .labels(&["device"]),
    F::counter(
        "block_stats_flush_time_seconds_total",
        Unit::Seconds,
        "Time spent on flushes per disk (summed over requests).",
        |vm, out| each_disk(vm, out, |d| d.flush_time_seconds_total),
    )
    .labels(&["device"]),
    F::gauge(
        "block_stats_capacity_bytes",
        Unit::Bytes,
        "Size of each disk as the guest sees it (libvirt).",
        |vm, out| {
            for disk in &vm.disks {
                out.labeled(&[&disk.device], disk.capacity_bytes);
            }
        },
    )
    .labels(&["device"]),
    F::gauge(
        "block_stats_allocation_bytes",
        Unit::Bytes,
        "Host storage allocated to each disk (libvirt).",
        |vm, out| {
            for disk in &vm.disks {
                out.labeled(&[&disk.device], disk.allocation_bytes);
            }
        },
    )
    .labels(&["device"]),
    F::series(
        "network_rx_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s the guest received.",
        |vm, out| out.one(vm.rates.map(|r| r.network_rx_bytes_per_second)),
    ),
    F::series(
        "network_tx_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s the guest transmitted.",
        |vm, out| out.one(vm.rates.map(|r| r.network_tx_bytes_per_second)),
    ),
    F::counter(
        "interface_stats_receive_bytes_total",
        Unit::Bytes,
        "Bytes each guest NIC received (its host tap device transmitted).",
        |vm, out| each_interface(vm, out, |n| n.rx_bytes_total),
    )
    .labels(&["device"]),
    F::counter(
        "interface_stats_receive_packets_total",
        Unit::Count,
        "Packets each guest NIC received.",
        |vm, out| each_interface(vm, out, |n| n.rx_packets_total),
    )
    .labels(&["device"]),
    F::counter(
        "interface_stats_receive_errors_total",
        Unit::Count,
        "Receive errors per guest NIC.",
        |vm, out| each_interface(vm, out, |n| n.rx_errors_total),
    )
    .labels(&["device"]),
    F::counter(
        "interface_stats_receive_drops_total",
        Unit::Count,
        "Received packets dropped per guest NIC.",
        |vm, out| each_interface(vm, out, |n| n.rx_dropped_total),
    )
    .labels(&["device"]),
    F::counter(
        "interface_stats_transmit_bytes_total",
        Unit::Bytes,
        "Bytes each guest NIC transmitted (its host tap device received).",
        |vm, out| each_interface(vm, out, |n| n.tx_bytes_total),
    )
    .labels(&["device"]),
    F::counter(
        "interface_stats_transmit_packets_total",
        Unit::Count,
        "Packets each guest NIC transmitted.",
        |vm, out| each_interface(vm, out, |n| n.tx_packets_total),
    )
    .labels(&["device"]),
    F::counter(
        "interface_stats_transmit_errors_total",
        Unit::Count,
        "Transmit errors per guest NIC.",
        |vm, out| each_interface(vm, out, |n| n.tx_errors_total),
    )
    .labels(&["device"]),
    F::counter(
        "interface_stats_transmit_drops_total",
        Unit::Count,
        "Transmitted packets dropped per guest NIC.",
        |vm, out| each_interface(vm, out, |n| n.tx_dropped_total),
    )
    .labels(&["device"]),
    F::counter(
        "kvm_exits_total",
        Unit::Count,
        "VM exits per vCPU (KVM statistics).",
        |vm, out| each_kvm(vm, out, |k| k.exits as f64),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_halt_exits_total",
        Unit::Count,
        "Exits for HLT per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.halt_exits as f64),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_io_exits_total",
        Unit::Count,
        "Exits for port I/O per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.io_exits as f64),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_mmio_exits_total",
        Unit::Count,
        "Exits for MMIO per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.mmio_exits as f64),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_halt_polls_total",
        Unit::Count,
        "Halt polls attempted per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.halt_attempted_poll as f64),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_halt_polls_successful_total",
        Unit::Count,
        "Halt polls that found work per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.halt_successful_poll as f64),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_halt_wakeups_total",
        Unit::Count,
        "Wake-ups from halt per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.halt_wakeup as f64),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_halt_poll_success_seconds_total",
        Unit::Seconds,
        "Time spent in successful halt polls per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.halt_poll_success_ns as f64 / 1e9),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_halt_poll_fail_seconds_total",
        Unit::Seconds,
        "Time spent in failed halt polls per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.halt_poll_fail_ns as f64 / 1e9),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_halt_wait_seconds_total",
        Unit::Seconds,
        "Time halted (waiting for an interrupt) per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.halt_wait_ns as f64 / 1e9),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_pf_fixed_total",
        Unit::Count,
        "Page faults fixed by KVM per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.pf_fixed as f64),
    )
    .labels(&["vcpu"]),
    F::counter(
        "kvm_irq_injections_total",
        Unit::Count,
        "Interrupts injected per vCPU.",
        |vm, out| each_kvm(vm, out, |k| k.irq_injections as f64),
    )
    .labels(&["vcpu"]),
    F::counter(
        "process_read_bytes_total",
        Unit::Bytes,
        "Bytes the QEMU process made the host's block layer read (/proc/<pid>/io).",
        |vm, out| out.one(vm.process.as_ref().and_then(|p| p.read_bytes_total)),
    ),
    F::counter(
        "process_write_bytes_total",
        Unit::Bytes,
        "Bytes the QEMU process made the host's block layer write.",
        |vm, out| out.one(vm.process.as_ref().and_then(|p| p.write_bytes_total)),
    ),
    F::gauge(
        "process_threads",
        Unit::Count,
        "Threads of the QEMU process.",
        |vm, out| out.one(vm.process.as_ref().map(|p| p.threads)),
    ),
];

fn each_vcpu(vm: &VmMetrics, out: &mut Samples<'_, '_>, value: fn(&crate::model::Vcpu) -> f64) {
    for vcpu in vm.cpu.iter().flat_map(|cpu| &cpu.vcpus) {
        out.labeled(&[&vcpu.index.to_string()], Some(value(vcpu)));
    }
}

fn each_kvm(vm: &VmMetrics, out: &mut Samples<'_, '_>, value: fn(&KvmStats) -> f64) {
    for vcpu in vm.cpu.iter().flat_map(|cpu| &cpu.vcpus) {
        out.labeled(&[&vcpu.index.to_string()], vcpu.kvm.as_ref().map(value));
    }
}

fn each_disk(vm: &VmMetrics, out: &mut Samples<'_, '_>, value: fn(&VmDisk) -> f64) {
    for disk in &vm.disks {
        out.labeled(&[&disk.device], Some(value(disk)));
    }
}

fn each_interface(vm: &VmMetrics, out: &mut Samples<'_, '_>, value: fn(&NetworkTotals) -> u64) {
    for interface in &vm.interfaces {
        out.labeled(&[&interface.device], Some(value(&interface.counters)));
    }
}

fn guest(vm: &VmMetrics, value: fn(&GuestMemory) -> Option<u64>) -> Option<u64> {
    value(vm.memory.as_ref()?.guest.as_ref()?)
}
