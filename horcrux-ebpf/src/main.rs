//! Horcrux eBPF programs. Built for `bpfel-unknown-none` with nightly and
//! embedded in the agent binary by `horcrux-agent/build.rs`.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};

/// Number of `sched_switch` events seen, one slot per CPU (no contention on the hot path).
#[map(name = "CONTEXT_SWITCHES")]
static CONTEXT_SWITCHES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Attached to `sched/sched_switch`: counts every context switch on every CPU.
#[tracepoint]
pub fn count_context_switches(_ctx: TracePointContext) -> u32 {
    if let Some(count) = CONTEXT_SWITCHES.get_ptr_mut(0) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU map; preemption is off here.
        unsafe { *count += 1 };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
