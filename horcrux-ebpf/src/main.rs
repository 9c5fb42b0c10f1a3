//! Horcrux eBPF programs. Built for `bpfel-unknown-none` with nightly and
//! embedded in the agent binary by `horcrux-agent/build.rs`.
//!
//! Scheduler (`tp_btf` sched_wakeup, sched_wakeup_new, sched_switch): per cgroup,
//! run-queue latency, voluntary/involuntary switches and on-CPU time.
//! Block I/O (`tp_btf` block_rq_issue, block_rq_complete): per cgroup, disk and
//! operation, bytes, issued and completed requests and issue→complete latency.
//!
//! Writeback (`tp_btf` writeback_dirty_folio, block_rq_issue): page-cache bytes
//! dirtied and written back, charged to the memory cgroup that owns the pages.
//! OOM (`tp_btf` mark_victim): each kill, with its victim, memory cgroup and the
//! cgroup whose limit was hit, through a ring buffer.
//!
//! Rust eBPF has no CO-RE relocations, so every kernel structure member is read at
//! an offset the agent resolved from the running kernel's BTF and wrote into
//! [`LAYOUT`] before loading.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use horcrux_common::{
    BLOCK_OP_DISCARD, BLOCK_OP_FLUSH, BLOCK_OP_OTHER, BLOCK_OP_READ, BLOCK_OP_WRITE, BlockCounters,
    BlockKey, CgroupPath, EVENT_BLOCK_MAP_FULL, EVENT_COMPLETION_MISSED,
    EVENT_COMPLETION_UNMATCHED, EVENT_DIRTIED_MAP_FULL, EVENT_INFLIGHT_MAP_FULL,
    EVENT_OOM_RING_FULL, EVENT_READ_FAILED, EVENT_SCHED_MAP_FULL, EVENT_SLOTS, EVENT_SWITCH_UNSEEN,
    EVENT_WAKEUP_MAP_FULL, EVENT_WRITEBACK_BIOS_TRUNCATED, EVENT_WRITEBACK_MAP_FULL,
    InFlightRequest, KernelLayout, OOM_CONSTRAINT_GLOBAL, OOM_CONSTRAINT_MEMCG, OOM_MAX_DEPTH,
    OomKill, OwnerKey, REQ_OP_MASK, SchedCounters, WRITEBACK_MAX_BIOS, device_number,
};

/// Overwritten by the agent at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout {
    task_pid: 0,
    task_runtime: 0,
    task_slice_start_runtime: 0,
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
    memory_css: 0,
    request_next_bio: 0,
    bio_io_vec: 0,
    bio_iter_idx: 0,
    bio_iter_size: 0,
    bio_vec_page: 0,
    bio_vec_size: 0,
    page_flags: 0,
    page_compound_head: 0,
    page_mapping: 0,
    page_memcg_data: 0,
    folio_nr_pages: 0,
    memcg_css: 0,
    page_head_mask: 0,
    memcg_data_flags: 0,
    memcg_data_kmem: 0,
    page_size: 0,
    memcg_memory: 0,
    page_counter_usage: 0,
    page_counter_max: 0,
    page_counter_parent: 0,
    page_counter_unlimited: 0,
    oom_limit_slack_pages: 0,
    task_tgid: 0,
    task_comm: 0,
    task_mm: 0,
    mm_file_pages: 0,
    mm_anon_pages: 0,
    mm_shmem_pages: 0,
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
///
/// The per-cgroup maps are sized by the agent at load time (from `max_containers`)
/// and allocate entries as cgroups appear rather than all up front: per-CPU values
/// times possible CPUs would otherwise pin their full size on large hosts.
#[map(name = "SCHED")]
static SCHED: PerCpuHashMap<u64, SchedCounters> =
    PerCpuHashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// When a task became runnable (woken or preempted), by `task_struct` address.
#[map(name = "RUNNABLE_SINCE")]
static RUNNABLE_SINCE: HashMap<u64, u64> = HashMap::with_max_entries(32768, 0);

/// What each CPU is running: the task, its cgroup, since when, and the task's
/// `sum_exec_runtime` then.
#[repr(C)]
struct Running {
    task: u64,
    cgroup_id: u64,
    since_ns: u64,
    runtime_ns: u64,
}

#[map(name = "RUNNING")]
static RUNNING: PerCpuArray<Running> = PerCpuArray::with_max_entries(1, 0);

/// Block I/O counters per (blkio cgroup, disk, operation).
#[map(name = "BLOCK")]
static BLOCK: PerCpuHashMap<BlockKey, BlockCounters> =
    PerCpuHashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Page-cache bytes written back, by owning memory cgroup and disk.
#[map(name = "WRITEBACK")]
static WRITEBACK: PerCpuHashMap<OwnerKey, u64> =
    PerCpuHashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Write requests the writeback program counted, by `struct request` address →
/// `start_time_ns`: a requeued request is issued again with the same start time
/// and must not be counted twice.
#[map(name = "WRITEBACK_ISSUED")]
static WRITEBACK_ISSUED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Page-cache bytes dirtied, by owning memory cgroup (device 0).
#[map(name = "DIRTIED")]
static DIRTIED: PerCpuHashMap<OwnerKey, u64> =
    PerCpuHashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// OOM kills for the agent.
#[map(name = "OOM_KILLS")]
static OOM_KILLS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

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
    // On-CPU time is the kernel's own run time of the slice (`sum_exec_runtime`, what
    // `schedstat` and the cgroup's CPU usage count), not wall time since the switch-in,
    // which also holds steal time on a VM and the interrupts served meanwhile. The
    // scheduler has brought `prev`'s run time up to date before this tracepoint.
    let mut prev_cgroup = running.cgroup_id;
    let wall_ns = now.saturating_sub(running.since_ns);
    let mut slice_start = running.runtime_ns;
    if running.task != prev && running.task != 0 {
        // The kernel does not run the programs for every switch: when the one that
        // put `prev` here went unseen, its slice is charged to its own cgroup, read
        // now, rather than to the task that switch replaced, and starts where the
        // scheduler last picked it.
        count_event(EVENT_SWITCH_UNSEEN);
        let prev_pid: i32 = read(prev, layout!(task_pid));
        prev_cgroup = if prev_pid == 0 {
            0
        } else {
            task_cgroup_id(
                prev,
                layout!(cpu_cgroup.css_set_offset),
                layout!(cpu_cgroup.through_css),
            )
            .unwrap_or(0)
        };
        slice_start = read(prev, layout!(task_slice_start_runtime));
    }
    let runtime: u64 = read(prev, layout!(task_runtime));
    // Never more than the wall time since the last seen switch: that bounds a slice
    // whose start is stale (a real-time task's `prev_sum_exec_runtime` is not reset
    // when it is picked).
    let on_cpu_ns = runtime.saturating_sub(slice_start).min(wall_ns);
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
            counters.oncpu_ns += on_cpu_ns;
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
    running.task = next;
    running.since_ns = now;
    running.cgroup_id = 0;
    running.runtime_ns = read(next, layout!(task_runtime));
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

/// Reads a `T` at `address` through a pointer the verifier does not know the type
/// of (one computed from a scalar, like `memcg_data`): a checked kernel read.
#[inline(always)]
fn probe<T>(address: u64) -> Option<T> {
    if address == 0 {
        return None;
    }
    // SAFETY: the helper checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}

/// The kernfs id of the memory cgroup at `memcg` (a `struct mem_cgroup *` as a scalar).
#[inline(always)]
fn memcg_kernfs_id(memcg: u64) -> Option<u64> {
    let cgroup: u64 = probe(memcg + layout!(memcg_css) + layout!(css_cgroup))?;
    let kernfs_node: u64 = probe(cgroup + layout!(cgroup_kn))?;
    let id: u64 = probe(kernfs_node + layout!(kernfs_node_id))?;
    (id != 0).then_some(id)
}

/// The `struct mem_cgroup *` a folio's `memcg_data` holds; `None` for kernel memory
/// (it holds an `obj_cgroup` then) and for folios charged to no memcg.
#[inline(always)]
fn charged_memcg(memcg_data: u64) -> Option<u64> {
    if memcg_data & layout!(memcg_data_kmem) != 0 {
        return None;
    }
    let memcg = memcg_data & !layout!(memcg_data_flags);
    (memcg != 0).then_some(memcg)
}

/// The memory cgroup owning a page-cache page: the kernfs id of its folio's memcg.
/// `None` for anything but page cache: anonymous memory (a direct write's user
/// buffer), kernel memory, pages without a mapping; and for pages charged to no
/// memcg (only when the memory controller is disabled).
#[inline(always)]
fn page_cache_owner(page: u64) -> Option<u64> {
    let compound_head: u64 = probe(page + layout!(page_compound_head))?;
    // A tail page of a large folio points at its head with bit 0 set.
    let head = if compound_head & 1 != 0 {
        compound_head - 1
    } else {
        page
    };
    let mapping: u64 = probe(head + layout!(page_mapping))?;
    // The low bits tag anonymous and movable mappings.
    if mapping == 0 || mapping & 3 != 0 {
        return None;
    }
    memcg_kernfs_id(charged_memcg(probe(head + layout!(page_memcg_data))?)?)
}

#[inline(always)]
fn add_owned(
    ctx: &impl EbpfContext,
    map: &'static PerCpuHashMap<OwnerKey, u64>,
    key: &OwnerKey,
    bytes: u64,
    full_event: u32,
) {
    if let Some(total) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a per-CPU map.
        unsafe { *total += bytes };
        return;
    }
    if let Err(error) = map.insert(key, &bytes, u64::from(BPF_NOEXIST)) {
        if error == -EEXIST {
            if let Some(total) = map.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe { *total += bytes };
            }
        } else if count_event(full_event) {
            warn!(
                ctx,
                "page-cache owner map full (event slot {}): bytes lost", full_event
            );
        }
    }
}

/// `writeback_dirty_folio(struct folio *folio, struct address_space *mapping)`:
/// a page-cache folio turns dirty (`folio_account_dirtied`, where the kernel
/// counts `nr_dirtied`); its bytes are charged to the memory cgroup owning it.
#[btf_tracepoint(function = "writeback_dirty_folio")]
pub fn writeback_dirty_folio(ctx: BtfTracePointContext) -> u32 {
    let folio: u64 = ctx.arg(0);
    let flags: u64 = read(folio, layout!(page_flags));
    let pages = if flags & layout!(page_head_mask) != 0 {
        let pages: u32 = read(folio, layout!(folio_nr_pages));
        u64::from(pages)
    } else {
        1
    };
    let Some(memcg) = charged_memcg(read(folio, layout!(page_memcg_data))) else {
        return 0;
    };
    let Some(owner) = memcg_kernfs_id(memcg) else {
        count_event(EVENT_READ_FAILED);
        return 0;
    };
    let key = OwnerKey {
        cgroup_id: owner,
        device: 0,
        reserved: 0,
    };
    add_owned(
        &ctx,
        &DIRTIED,
        &key,
        pages * layout!(page_size),
        EVENT_DIRTIED_MAP_FULL,
    );
    0
}

/// `block_rq_issue`, for writes: each bio's bytes charged to the memory cgroup
/// owning its first page when that is page cache (a write-back), per disk. The
/// flusher threads write every cgroup's pages, so the bio's blkcg (what the block
/// family charges) says who wrote, not whose data it was; a bio holds one inode's
/// contiguous pages, dirtied by one owner in all but shared files.
#[btf_tracepoint(function = "block_rq_issue")]
pub fn writeback_rq_issue(ctx: BtfTracePointContext) -> u32 {
    let request: u64 = ctx.arg(0);
    let cmd_flags: u32 = read(request, layout!(request_cmd_flags));
    if cmd_flags & REQ_OP_MASK != layout!(op_write) {
        return 0;
    }
    let started_ns: u64 = read(request, layout!(request_start_time_ns));
    if started_ns != 0 {
        // SAFETY: the value is copied out.
        if unsafe { WRITEBACK_ISSUED.get(&request) }.copied() == Some(started_ns) {
            return 0;
        }
        let _ = WRITEBACK_ISSUED.insert(&request, &started_ns, 0);
    }
    let Some(disk) = pointer(request, layout!(request_q))
        .and_then(|queue| pointer(queue, layout!(request_queue_disk)))
    else {
        count_event(EVENT_READ_FAILED);
        return 0;
    };
    let major: u32 = read(disk, layout!(gendisk_major));
    let minor: u32 = read(disk, layout!(gendisk_first_minor));
    let device = device_number(major, minor);
    let mut bio = pointer(request, layout!(request_bio));
    let mut walked = 0;
    while walked < WRITEBACK_MAX_BIOS {
        let Some(current) = bio else {
            return 0;
        };
        let bytes: u32 = read(current, layout!(bio_iter_size));
        let index: u32 = read(current, layout!(bio_iter_idx));
        // Read as a plain number: older verifiers refuse arithmetic with a variable
        // index on a BTF-typed pointer.
        let page = probe::<u64>(current + layout!(bio_io_vec))
            .filter(|vectors| *vectors != 0)
            .and_then(|vectors| {
                probe::<u64>(
                    vectors + u64::from(index) * layout!(bio_vec_size) + layout!(bio_vec_page),
                )
            });
        if let Some(owner) = page.and_then(page_cache_owner) {
            let key = OwnerKey {
                cgroup_id: owner,
                device,
                reserved: 0,
            };
            add_owned(
                &ctx,
                &WRITEBACK,
                &key,
                u64::from(bytes),
                EVENT_WRITEBACK_MAP_FULL,
            );
        }
        bio = pointer(current, layout!(request_next_bio));
        walked += 1;
    }
    if bio.is_some() {
        count_event(EVENT_WRITEBACK_BIOS_TRUNCATED);
    }
    0
}

/// The nearest memory cgroup, from `memcg` up, whose usage is at its limit: the
/// one whose limit made this an OOM (its kernfs id), or `None` (a global OOM).
#[inline(always)]
fn limit_hit(memcg: u64) -> Option<u64> {
    let mut counter = memcg + layout!(memcg_memory);
    let mut depth = 0;
    while depth < OOM_MAX_DEPTH {
        let usage: u64 = probe(counter + layout!(page_counter_usage))?;
        let max: u64 = probe(counter + layout!(page_counter_max))?;
        if max < layout!(page_counter_unlimited)
            && usage.saturating_add(layout!(oom_limit_slack_pages)) >= max
        {
            return memcg_kernfs_id(counter - layout!(memcg_memory));
        }
        counter = probe(counter + layout!(page_counter_parent))?;
        if counter == 0 {
            return None;
        }
        depth += 1;
    }
    None
}

/// `mark_victim(struct task_struct *task, uid_t uid)`: the OOM killer chose
/// `task` and is killing it.
#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> u32 {
    let victim: u64 = ctx.arg(0);
    let Some(mut entry) = OOM_KILLS.reserve::<OomKill>(0) else {
        if count_event(EVENT_OOM_RING_FULL) {
            warn!(&ctx, "OOM_KILLS ring buffer full: kill not reported");
        }
        return 0;
    };
    let mm = pointer(victim, layout!(task_mm));
    // A checked read: older verifiers refuse a direct load of an `atomic_long_t`.
    let counter = |offset: u64| -> u64 {
        mm.and_then(|mm| probe::<i64>(mm + offset))
            .map_or(0, |pages| pages.max(0) as u64)
    };
    let comm_low: u64 = read(victim, layout!(task_comm));
    let comm_high: u64 = read(victim, layout!(task_comm) + 8);
    let mut comm = [0u8; 16];
    comm[..8].copy_from_slice(&comm_low.to_le_bytes());
    comm[8..].copy_from_slice(&comm_high.to_le_bytes());
    let pid: i32 = read(victim, layout!(task_tgid));
    let victim_tid: i32 = read(victim, layout!(task_pid));
    // The memory css is embedded in its mem_cgroup.
    let memcg = pointer(victim, layout!(task_cgroups))
        .and_then(|css_set| pointer(css_set, layout!(memory_css)))
        .map(|css| css - layout!(memcg_css));
    let limit_cgroup_id = memcg.and_then(limit_hit).unwrap_or(0);
    let kill = OomKill {
        // SAFETY: a helper without preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        victim_cgroup_id: memcg.and_then(memcg_kernfs_id).unwrap_or(0),
        limit_cgroup_id,
        rss_pages: counter(layout!(mm_file_pages))
            + counter(layout!(mm_anon_pages))
            + counter(layout!(mm_shmem_pages)),
        pid: pid as u32,
        tid: victim_tid as u32,
        constraint: if limit_cgroup_id != 0 {
            OOM_CONSTRAINT_MEMCG
        } else {
            OOM_CONSTRAINT_GLOBAL
        },
        reserved: 0,
        comm,
    };
    entry.write(kill);
    entry.submit(0);
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
