//! Horcrux eBPF programs. Built for `bpfel-unknown-none` with nightly and
//! embedded in the agent binary by `horcrux-agent/build.rs`.
//!
//! Scheduler (`tp_btf` sched_wakeup, sched_wakeup_new, sched_switch): per cgroup,
//! run-queue latency, voluntary/involuntary switches and on-CPU time.
//! Block I/O (`tp_btf` block_rq_issue, block_rq_complete): per cgroup, disk and
//! operation, bytes, issued and completed requests and issue→complete latency.
//!
//! Rust eBPF has no CO-RE relocations, so every kernel structure member is read at
//! an offset the agent resolved from the running kernel's BTF and wrote into
//! [`LAYOUT`] before loading.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use horcrux_common::{
    BLOCK_OP_DISCARD, BLOCK_OP_FLUSH, BLOCK_OP_OTHER, BLOCK_OP_READ, BLOCK_OP_WRITE, BlockCounters,
    BlockKey, CgroupPath, EVENT_BLOCK_MAP_FULL, EVENT_COMPLETION_MISSED,
    EVENT_COMPLETION_UNMATCHED, EVENT_INFLIGHT_MAP_FULL, EVENT_READ_FAILED, EVENT_SCHED_MAP_FULL,
    EVENT_SLOTS, EVENT_WAKEUP_MAP_FULL, InFlightRequest, KernelLayout, REQ_OP_MASK, SchedCounters,
    device_number,
};

/// Overwritten by the agent at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout {
    task_pid: 0,
    task_cgroups: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    cpu_cgroup: CgroupPath {
        css_set_offset: 0,
        through_css: 0,
    },
    io_cgroup: CgroupPath {
        css_set_offset: 0,
        through_css: 0,
    },
    request_q: 0,
    request_bio: 0,
    request_cmd_flags: 0,
    request_data_len: 0,
    request_start_time_ns: 0,
    request_queue_disk: 0,
    gendisk_major: 0,
    gendisk_first_minor: 0,
    bio_blkg: 0,
    blkg_blkcg: 0,
    blkcg_css: 0,
    op_read: 0,
    op_write: 0,
    op_flush: 0,
    op_discard: 0,
};

/// Reads one member of [`LAYOUT`]. A volatile read keeps the compiler from folding
/// the placeholder value; the verifier sees the loaded constant (read-only map).
macro_rules! layout {
    ($($member:ident).+) => {
        // SAFETY: LAYOUT is a plain static; the pointer is in bounds and aligned.
        unsafe { core::ptr::read_volatile(&raw const LAYOUT.$($member).+) }
    };
}

/// Zeroed values to insert on a map miss, from read-only memory rather than the
/// 512-byte stack.
static SCHED_ZERO: SchedCounters = SchedCounters::ZERO;
static BLOCK_ZERO: BlockCounters = BlockCounters::ZERO;

/// Scheduler counters per cgroup (kernfs id in the hierarchy CPU time is charged in).
#[map(name = "SCHED")]
static SCHED: PerCpuHashMap<u64, SchedCounters> = PerCpuHashMap::with_max_entries(8192, 0);

/// When a task became runnable (woken or preempted), by `task_struct` address.
#[map(name = "RUNNABLE_SINCE")]
static RUNNABLE_SINCE: HashMap<u64, u64> = HashMap::with_max_entries(32768, 0);

/// What each CPU is running: the cgroup charged and since when.
#[repr(C)]
struct Running {
    cgroup_id: u64,
    since_ns: u64,
}

#[map(name = "RUNNING")]
static RUNNING: PerCpuArray<Running> = PerCpuArray::with_max_entries(1, 0);

/// Block I/O counters per (blkio cgroup, disk, operation).
#[map(name = "BLOCK")]
static BLOCK: PerCpuHashMap<BlockKey, BlockCounters> = PerCpuHashMap::with_max_entries(8192, 0);

/// Requests issued and not yet completed, by `struct request` address; the agent
/// counts them by key for the in-flight figures.
#[map(name = "IN_FLIGHT")]
static IN_FLIGHT: HashMap<u64, InFlightRequest> = HashMap::with_max_entries(16384, 0);

/// What could not be recorded, per CPU (slots are `EVENT_*`).
#[map(name = "EVENTS")]
static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_SLOTS, 0);

const EEXIST: i32 = 17;

/// Reads a `T` at `base + offset` through a pointer whose type the verifier knows
/// from BTF (a tp_btf argument, or a pointer loaded through one). The verifier
/// checks the offset and size against that type (the offsets are constants to it:
/// they come from the frozen, read-only `LAYOUT`) and makes the load fault-safe,
/// so no helper call is needed: a NULL or stale pointer reads as 0.
#[inline(always)]
fn read<T: Copy>(base: u64, offset: u64) -> T {
    // SAFETY: see above: the kernel guards the load.
    unsafe { core::ptr::read_volatile((base + offset) as *const T) }
}

/// A pointer member; `None` when NULL.
#[inline(always)]
fn pointer(base: u64, offset: u64) -> Option<u64> {
    let value: u64 = read(base, offset);
    (value != 0).then_some(value)
}

/// Counts an event; returns true the first time on this CPU, to log it once.
#[inline(always)]
fn count_event(slot: u32) -> bool {
    match EVENTS.get_ptr_mut(slot) {
        Some(count) => {
            // SAFETY: this CPU's slot of a per-CPU array; the program is not reentrant on a CPU.
            unsafe {
                *count += 1;
                *count == 1
            }
        }
        None => false,
    }
}

/// The kernfs id (= inode number) of a cgroup.
#[inline(always)]
fn cgroup_kernfs_id(cgroup: u64) -> Option<u64> {
    let kernfs_node = pointer(cgroup, layout!(cgroup_kn))?;
    let id: u64 = read(kernfs_node, layout!(kernfs_node_id));
    (id != 0).then_some(id)
}

/// The kernfs id of a task's cgroup, reached along `path` from its `css_set`.
#[inline(always)]
fn task_cgroup_id(task: u64, css_set_offset: u64, through_css: u64) -> Option<u64> {
    let css_set = pointer(task, layout!(task_cgroups))?;
    let mut cgroup = pointer(css_set, css_set_offset)?;
    if through_css != 0 {
        cgroup = pointer(cgroup, layout!(css_cgroup))?;
    }
    cgroup_kernfs_id(cgroup)
}

/// This CPU's counters under `key` in a per-CPU hash map, created on first use from
/// `zero` (read-only memory: a copy would fill the 512-byte stack). A full map is
/// counted in `EVENTS[full_event]` and logged once per CPU.
#[inline(always)]
#[expect(
    clippy::mut_from_ref,
    reason = "a per-CPU map value: the kernel hands each CPU its own copy"
)]
fn counters<K, V>(
    ctx: &BtfTracePointContext,
    map: &'static PerCpuHashMap<K, V>,
    key: &K,
    zero: &'static V,
    full_event: u32,
) -> Option<&'static mut V> {
    if let Some(counters) = map.get_ptr_mut(key) {
        // SAFETY: a per-CPU map value, only touched by this CPU with preemption off.
        return Some(unsafe { &mut *counters });
    }
    if let Err(error) = map.insert(key, zero, u64::from(BPF_NOEXIST))
        && error != -EEXIST
    {
        if count_event(full_event) {
            warn!(
                ctx,
                "per-cgroup map full (event slot {}): counts lost", full_event
            );
        }
        return None;
    }
    // SAFETY: as above.
    map.get_ptr_mut(key)
        .map(|counters| unsafe { &mut *counters })
}

#[inline(always)]
fn mark_runnable(ctx: &BtfTracePointContext, task: u64, now: u64) {
    // Overwrite: a wakeup seen while the task still ran must not linger.
    if RUNNABLE_SINCE.insert(task, now, 0).is_err() && count_event(EVENT_WAKEUP_MAP_FULL) {
        warn!(
            ctx,
            "RUNNABLE_SINCE map full: run-queue latency samples lost"
        );
    }
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg(0);
    // SAFETY: a helper without preconditions.
    mark_runnable(&ctx, task, unsafe { bpf_ktime_get_ns() });
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg(0);
    // SAFETY: a helper without preconditions.
    mark_runnable(&ctx, task, unsafe { bpf_ktime_get_ns() });
    0
}

/// `sched_switch(bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(running) = RUNNING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; the program is not reentrant on a CPU.
    let running = unsafe { &mut *running };

    // The task switched out: 0 is the idle task (or nothing seen yet on this CPU).
    let prev_cgroup = running.cgroup_id;
    let mut prev_counters = None;
    if prev_cgroup != 0 {
        // As the scheduler decides: a task that was not preempted and whose state is
        // not TASK_RUNNING (0) blocked (voluntary); otherwise it stays runnable.
        let still_runnable = preempt & 0xff != 0 || prev_state as u32 == 0;
        prev_counters = counters(
            &ctx,
            &SCHED,
            &prev_cgroup,
            &SCHED_ZERO,
            EVENT_SCHED_MAP_FULL,
        );
        if let Some(counters) = &mut prev_counters {
            counters.oncpu_ns += now.saturating_sub(running.since_ns);
            if still_runnable {
                counters.involuntary_switches += 1;
            } else {
                counters.voluntary_switches += 1;
            }
        }
        if still_runnable {
            mark_runnable(&ctx, prev, now);
        }
    }

    // The task switched in.
    running.since_ns = now;
    running.cgroup_id = 0;
    let pid: i32 = read(next, layout!(task_pid));
    if pid == 0 {
        return 0;
    }
    let Some(cgroup_id) = task_cgroup_id(
        next,
        layout!(cpu_cgroup.css_set_offset),
        layout!(cpu_cgroup.through_css),
    ) else {
        count_event(EVENT_READ_FAILED);
        return 0;
    };
    running.cgroup_id = cgroup_id;
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(since) = unsafe { RUNNABLE_SINCE.get(next) }.copied() {
        let _ = RUNNABLE_SINCE.remove(next);
        // Switching between two tasks of one cgroup: one map lookup serves both.
        let counters = if cgroup_id == prev_cgroup {
            prev_counters
        } else {
            counters(&ctx, &SCHED, &cgroup_id, &SCHED_ZERO, EVENT_SCHED_MAP_FULL)
        };
        if let Some(counters) = counters {
            counters.runq_latency.observe(now.saturating_sub(since));
        }
    }
    0
}

/// The blkio/io cgroup a request is charged to: its bio's blkcg, as the kernel
/// charges it, or the submitting task's when the request carries none (flushes).
#[inline(always)]
fn request_cgroup_id(request: u64) -> Option<u64> {
    if let Some(cgroup) = bio_cgroup_id(request) {
        return Some(cgroup);
    }
    // SAFETY: a helper without preconditions; the result is BTF-typed like the arguments.
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    task_cgroup_id(
        task,
        layout!(io_cgroup.css_set_offset),
        layout!(io_cgroup.through_css),
    )
}

/// The cgroup of the request's first bio's blkcg, as the kernel charges it.
#[inline(always)]
fn bio_cgroup_id(request: u64) -> Option<u64> {
    let cgroup = pointer(request, layout!(request_bio))
        .and_then(|bio| pointer(bio, layout!(bio_blkg)))
        .and_then(|blkg| pointer(blkg, layout!(blkg_blkcg)))
        .and_then(|blkcg| pointer(blkcg + layout!(blkcg_css), layout!(css_cgroup)))?;
    cgroup_kernfs_id(cgroup)
}

/// (cgroup, disk, operation class) of a request; `cgroup_id` says how to find its cgroup.
#[inline(always)]
fn request_key(request: u64, cgroup_id: fn(u64) -> Option<u64>) -> Option<BlockKey> {
    let cmd_flags: u32 = read(request, layout!(request_cmd_flags));
    let disk = pointer(request, layout!(request_q))
        .and_then(|queue| pointer(queue, layout!(request_queue_disk)))?;
    let cgroup_id = cgroup_id(request)?;
    let major: u32 = read(disk, layout!(gendisk_major));
    let minor: u32 = read(disk, layout!(gendisk_first_minor));
    Some(BlockKey {
        cgroup_id,
        device: device_number(major, minor),
        op: operation_class(cmd_flags),
    })
}

#[inline(always)]
fn operation_class(cmd_flags: u32) -> u32 {
    let op = cmd_flags & REQ_OP_MASK;
    if op == layout!(op_read) {
        BLOCK_OP_READ
    } else if op == layout!(op_write) {
        BLOCK_OP_WRITE
    } else if op == layout!(op_discard) {
        BLOCK_OP_DISCARD
    } else if op == layout!(op_flush) {
        BLOCK_OP_FLUSH
    } else {
        BLOCK_OP_OTHER
    }
}

/// `block_rq_issue(struct request *rq)`: the driver takes the request.
///
/// The kernel does not run a tracepoint's programs for every hit: on this kind of
/// host a completion handled in softirq on behalf of some tasks runs none (seen
/// with ftrace and the programs' own run counts; no recursion miss is reported).
/// A completion gone unobserved leaves its entry behind, so when the same request
/// struct is issued for a new request (`start_time_ns` differs; a requeue keeps
/// it), the previous one is counted here: its bytes and class, without a latency.
#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue(ctx: BtfTracePointContext) -> u32 {
    let request: u64 = ctx.arg(0);
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let started_ns: u64 = read(request, layout!(request_start_time_ns));
    // SAFETY: the value is copied out before the entry is replaced.
    if let Some(previous) = (unsafe { IN_FLIGHT.get(request) }).copied()
        && previous.completed == 0
        && previous.started_ns != started_ns
        && previous.started_ns != 0
    {
        count_event(EVENT_COMPLETION_MISSED);
        if let Some(counters) = counters(
            &ctx,
            &BLOCK,
            &previous.key,
            &BLOCK_ZERO,
            EVENT_BLOCK_MAP_FULL,
        ) {
            counters.bytes += previous.bytes_left;
            counters.untimed += 1;
        }
    }
    let Some(key) = request_key(request, request_cgroup_id) else {
        count_event(EVENT_READ_FAILED);
        return 0;
    };
    let bytes: u32 = read(request, layout!(request_data_len));
    let in_flight = InFlightRequest {
        key,
        issued_ns: now,
        started_ns,
        bytes_left: u64::from(bytes),
        completed: 0,
    };
    // One update, overwriting: a requeued request's latency runs from its last issue.
    if IN_FLIGHT.insert(request, in_flight, 0).is_err() && count_event(EVENT_INFLIGHT_MAP_FULL) {
        warn!(&ctx, "IN_FLIGHT map full: block requests not timed");
    }
    0
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`:
/// `nr_bytes` of the request are done; it is finished once they cover what remains.
///
/// What is counted comes from the completion itself, as the kernel's own statistics
/// do: the bytes it reports, the class of its command, the cgroup of its bio. The
/// issue-time entry times the request (and attributes a request without a bio,
/// such as a flush), so a lost or stale entry costs one latency sample, not bytes.
#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> u32 {
    let request: u64 = ctx.arg(0);
    let nr_bytes: u32 = ctx.arg(2);
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let remaining: u32 = read(request, layout!(request_data_len));
    let finished = nr_bytes >= remaining;
    // The issue-time key and time of this request, if its issue was recorded.
    let mut recorded: Option<(BlockKey, u64)> = None;
    if let Some(entry) = IN_FLIGHT.get_ptr_mut(request) {
        // SAFETY: the entry is this request's until it is removed below; it is
        // copied whole (volatile: the verifier must see every field initialised).
        let value = unsafe { core::ptr::read_volatile(entry) };
        if value.completed == 0 {
            recorded = Some((value.key, value.issued_ns));
        }
        // SAFETY: as above; written before the removal, so that an entry the removal
        // leaves behind (its bucket was busy) is not counted again at the next issue.
        unsafe {
            if finished {
                (*entry).completed = 1;
            } else {
                (*entry).bytes_left = value.bytes_left.saturating_sub(u64::from(nr_bytes));
            }
        }
        if finished {
            let _ = IN_FLIGHT.remove(request);
        }
    }
    let Some(key) = request_key(request, bio_cgroup_id).or(recorded.map(|(key, _)| key)) else {
        count_event(EVENT_COMPLETION_UNMATCHED);
        return 0;
    };
    // A flush sequence ends a request whose data was already counted once more, with
    // nothing left: not another request.
    if nr_bytes == 0 && key.op != BLOCK_OP_FLUSH {
        return 0;
    }
    let Some(counters) = counters(&ctx, &BLOCK, &key, &BLOCK_ZERO, EVENT_BLOCK_MAP_FULL) else {
        return 0;
    };
    counters.bytes += u64::from(nr_bytes);
    if finished {
        match recorded {
            Some((_, issued_ns)) => counters.latency.observe(now.saturating_sub(issued_ns)),
            None => {
                count_event(EVENT_COMPLETION_UNMATCHED);
                counters.untimed += 1;
            }
        }
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
