//! Types that cross the kernel/user boundary: the layouts of the eBPF map keys and
//! values, the kernel structure offsets the agent resolves from BTF and hands to the
//! programs, and the latency bucket rule both sides must agree on.
#![no_std]

/// Latency histogram slots: slot `i < LATENCY_BUCKETS - 1` counts observations in
/// (2^(i-1), 2^i] microseconds (slot 0: [0, 1] µs); the last slot counts the rest.
pub const LATENCY_BUCKETS: usize = 28;

/// The slot of a latency, with Prometheus `le` semantics: an observation equal to a
/// bound is counted in that bound's bucket. Exact in nanoseconds: a latency `ns` is
/// ≤ 2^i µs exactly when ceil(ns / 1000) ≤ 2^i.
#[inline(always)]
pub fn latency_slot(latency_ns: u64) -> usize {
    let micros_ceil = latency_ns.div_ceil(1000);
    if micros_ceil <= 1 {
        return 0;
    }
    // ceil(log2(x)) for x ≥ 2.
    let slot = (64 - (micros_ceil - 1).leading_zeros()) as usize;
    if slot < LATENCY_BUCKETS - 1 {
        slot
    } else {
        LATENCY_BUCKETS - 1
    }
}

/// The upper bound of slot `i` in microseconds (`None` for the overflow slot, +Inf).
pub fn slot_bound_micros(slot: usize) -> Option<u64> {
    (slot < LATENCY_BUCKETS - 1).then(|| 1u64 << slot)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Non-cumulative counts per slot; their sum is the observation count.
    pub slots: [u64; LATENCY_BUCKETS],
    pub sum_ns: u64,
}

impl LatencyHistogram {
    pub const ZERO: Self = Self {
        slots: [0; LATENCY_BUCKETS],
        sum_ns: 0,
    };

    #[inline(always)]
    pub fn observe(&mut self, latency_ns: u64) {
        let slot = latency_slot(latency_ns);
        // The index is bounded by `latency_slot`; the check also satisfies the verifier.
        if let Some(count) = self.slots.get_mut(slot) {
            *count += 1;
        }
        self.sum_ns += latency_ns;
    }

    pub fn count(&self) -> u64 {
        self.slots
            .iter()
            .fold(0, |sum, count| sum.wrapping_add(*count))
    }

    pub fn add(&mut self, other: &Self) {
        for (slot, count) in self.slots.iter_mut().zip(other.slots) {
            *slot = slot.wrapping_add(count);
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }
}

/// Scheduler counters of one cgroup (per CPU in the map; summed by the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedCounters {
    /// Wakeup (or preemption) to being switched in, charged to the task switched in.
    pub runq_latency: LatencyHistogram,
    /// The task switched out had blocked (sleep, I/O, lock, pipe read…).
    pub voluntary_switches: u64,
    /// The task switched out was still runnable (preempted or yielded).
    pub involuntary_switches: u64,
    pub oncpu_ns: u64,
}

impl SchedCounters {
    pub const ZERO: Self = Self {
        runq_latency: LatencyHistogram::ZERO,
        voluntary_switches: 0,
        involuntary_switches: 0,
        oncpu_ns: 0,
    };

    pub fn add(&mut self, other: &Self) {
        self.runq_latency.add(&other.runq_latency);
        self.voluntary_switches = self
            .voluntary_switches
            .wrapping_add(other.voluntary_switches);
        self.involuntary_switches = self
            .involuntary_switches
            .wrapping_add(other.involuntary_switches);
        self.oncpu_ns = self.oncpu_ns.wrapping_add(other.oncpu_ns);
    }
}

/// Block request classes, from the request's operation.
pub const BLOCK_OP_READ: u32 = 0;
pub const BLOCK_OP_WRITE: u32 = 1;
pub const BLOCK_OP_DISCARD: u32 = 2;
pub const BLOCK_OP_FLUSH: u32 = 3;
/// Write-zeroes, secure erase, zone management, driver-private operations.
pub const BLOCK_OP_OTHER: u32 = 4;

/// The kernel's `MKDEV(major, minor)` (its internal `dev_t`), which [`BlockKey`] uses.
#[inline(always)]
pub const fn device_number(major: u32, minor: u32) -> u32 {
    (major << 20) | minor
}

/// (major, minor) of a [`device_number`].
pub const fn device_parts(device: u32) -> (u32, u32) {
    (device >> 20, device & ((1 << 20) - 1))
}

/// Block I/O counters are kept per cgroup, device and operation class.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// kernfs id (= directory inode) of the blkio/io cgroup charged.
    pub cgroup_id: u64,
    /// The whole disk, as [`device_number`].
    pub device: u32,
    pub op: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCounters {
    /// Issue to completion of the requests whose issue was recorded.
    pub latency: LatencyHistogram,
    /// Bytes of the completed requests.
    pub bytes: u64,
    /// Completed requests whose issue was not recorded (issued before attach, or
    /// the entry was lost): in `bytes` and [`Self::requests`], not timed.
    pub untimed: u64,
}

impl BlockCounters {
    pub const ZERO: Self = Self {
        latency: LatencyHistogram::ZERO,
        bytes: 0,
        untimed: 0,
    };

    pub fn add(&mut self, other: &Self) {
        self.latency.add(&other.latency);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.untimed = self.untimed.wrapping_add(other.untimed);
    }

    /// Completed requests, timed or not.
    pub fn requests(&self) -> u64 {
        self.latency.count().wrapping_add(self.untimed)
    }
}

/// Bytes of page-cache pages, charged to the memory cgroup that owns the pages
/// (the one they were charged to when created), kept per owner and device.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey {
    /// kernfs id of the memory cgroup owning the pages.
    pub cgroup_id: u64,
    /// The whole disk, as [`device_number`] (0 for bytes dirtied: no device yet).
    pub device: u32,
    pub reserved: u32,
}

/// What an OOM kill answered: memory ran out host-wide (or in a cpuset or memory
/// policy), or a memory cgroup — the victim's or an ancestor — was at its limit.
pub const OOM_CONSTRAINT_GLOBAL: u32 = 0;
pub const OOM_CONSTRAINT_MEMCG: u32 = 1;

/// Memory cgroups above the victim's that the OOM program looks at for a limit.
pub const OOM_MAX_DEPTH: u32 = 16;

/// One OOM kill, sent to the agent through the `OOM_KILLS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomKill {
    /// `CLOCK_MONOTONIC` nanoseconds of the kill.
    pub time_ns: u64,
    /// kernfs id of the victim's memory cgroup.
    pub victim_cgroup_id: u64,
    /// kernfs id of the memory cgroup found at its limit (0 for a global OOM).
    pub limit_cgroup_id: u64,
    /// Resident pages of the victim's mm (file + anon + shmem).
    pub rss_pages: u64,
    pub pid: u32,
    pub tid: u32,
    /// `OOM_CONSTRAINT_*`.
    pub constraint: u32,
    pub reserved: u32,
    /// The victim's `comm`, NUL-padded.
    pub comm: [u8; 16],
}

/// A request between issue and completion: its key at issue (the agent counts
/// in-flight requests by it; a request without a bio, like a flush, is attributed
/// by it at completion), when it was issued (for its latency), and what is needed
/// to account for it if its completion goes unobserved (see `block_rq_issue`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InFlightRequest {
    pub key: BlockKey,
    pub issued_ns: u64,
    /// `request.start_time_ns`: set when the request is allocated, kept across
    /// requeues, so a new use of the same request struct is told from a re-issue.
    pub started_ns: u64,
    /// Bytes not yet reported by a completion.
    pub bytes_left: u64,
    /// 1 once its completion was counted (the entry could not be removed).
    pub completed: u64,
}

/// A cgroup is reached from a `css_set` either directly (`css_set.dfl_cgrp`, the
/// task's own cgroup2 directory) or through a controller's state
/// (`css_set.subsys[id]->cgroup`, its cgroup in that controller's hierarchy).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupPath {
    /// Offset within `struct css_set` of the pointer to follow.
    pub css_set_offset: u64,
    /// 1: that pointer is a `cgroup_subsys_state *` (follow `css.cgroup`);
    /// 0: it is the `cgroup *` itself.
    pub through_css: u64,
}

/// Byte offsets of the kernel structure members the programs read, resolved from
/// the running kernel's BTF (Rust eBPF has no CO-RE relocations), plus the enum
/// values they compare against.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub task_pid: u64,
    /// `task_struct.se.sum_exec_runtime` (the task's run time as the kernel counts
    /// it) and `.prev_sum_exec_runtime` (its value when the task was last picked).
    pub task_runtime: u64,
    pub task_slice_start_runtime: u64,
    pub task_cgroups: u64,
    pub css_cgroup: u64,
    pub cgroup_kn: u64,
    pub kernfs_node_id: u64,
    /// The cgroup CPU work is charged to (cpu controller's hierarchy on v1/hybrid,
    /// the cgroup2 directory on v2).
    pub cpu_cgroup: CgroupPath,
    /// The io/blkio cgroup of the submitting task, for requests without a blkcg.
    pub io_cgroup: CgroupPath,
    pub request_q: u64,
    pub request_bio: u64,
    pub request_cmd_flags: u64,
    pub request_data_len: u64,
    pub request_start_time_ns: u64,
    pub request_queue_disk: u64,
    pub gendisk_major: u64,
    pub gendisk_first_minor: u64,
    pub bio_blkg: u64,
    pub blkg_blkcg: u64,
    pub blkcg_css: u64,
    /// Page-cache ownership (writeback family) and OOM victims: a task's memory
    /// css (`css_set.subsys[memory_cgrp_id]`, v1 and v2 alike), a page's memcg
    /// (`folio.memcg_data`), and a memcg's cgroup (`mem_cgroup.css.cgroup`).
    pub memory_css: u64,
    pub request_next_bio: u64,
    pub bio_io_vec: u64,
    pub bio_iter_idx: u64,
    pub bio_iter_size: u64,
    pub bio_vec_page: u64,
    pub bio_vec_size: u64,
    pub page_flags: u64,
    pub page_compound_head: u64,
    pub page_mapping: u64,
    pub page_memcg_data: u64,
    /// `folio._nr_pages`: pages of a large folio.
    pub folio_nr_pages: u64,
    pub memcg_css: u64,
    /// `1 << PG_head`.
    pub page_head_mask: u64,
    /// Low bits of `memcg_data` that are flags (`__NR_MEMCG_DATA_FLAGS - 1`).
    pub memcg_data_flags: u64,
    /// `MEMCG_DATA_KMEM`: the pointer is an object cgroup, not a page-cache owner.
    pub memcg_data_kmem: u64,
    pub page_size: u64,
    /// OOM family: the memory page counter (`mem_cgroup.memory`) and its usage,
    /// limit and parent, to find the cgroup whose limit was hit.
    pub memcg_memory: u64,
    pub page_counter_usage: u64,
    pub page_counter_max: u64,
    pub page_counter_parent: u64,
    /// `PAGE_COUNTER_MAX`: a `max` at or above it is no limit.
    pub page_counter_unlimited: u64,
    /// A counter this close to its limit (in pages: a charge batch and a huge
    /// page) at the kill is the limit that was hit.
    pub oom_limit_slack_pages: u64,
    pub task_tgid: u64,
    pub task_comm: u64,
    pub task_mm: u64,
    /// `mm_struct.rss_stat[MM_*].count`.
    pub mm_file_pages: u64,
    pub mm_anon_pages: u64,
    pub mm_shmem_pages: u64,
    /// `enum req_op` values.
    pub op_read: u32,
    pub op_write: u32,
    pub op_flush: u32,
    pub op_discard: u32,
}

/// Bits of `cmd_flags` that hold the operation (`REQ_OP_MASK`, a macro, not in BTF).
pub const REQ_OP_MASK: u32 = 0xff;

/// Slots of the per-CPU `EVENTS` array: what the programs could not record.
pub const EVENT_SCHED_MAP_FULL: u32 = 0;
pub const EVENT_WAKEUP_MAP_FULL: u32 = 1;
pub const EVENT_BLOCK_MAP_FULL: u32 = 2;
pub const EVENT_INFLIGHT_MAP_FULL: u32 = 3;
pub const EVENT_READ_FAILED: u32 = 4;
/// A block request completed that no issue was recorded for (issued before attach,
/// or its issue went unobserved): counted from the completion, without a latency.
pub const EVENT_COMPLETION_UNMATCHED: u32 = 5;
/// A block request whose completion the program never saw (the kernel did not run
/// it for that tracepoint hit): counted when the request struct is issued again.
pub const EVENT_COMPLETION_MISSED: u32 = 6;
pub const EVENT_WRITEBACK_MAP_FULL: u32 = 7;
pub const EVENT_DIRTIED_MAP_FULL: u32 = 8;
/// A write request with more bios than the program walks: the rest of its bytes
/// went to the owner of the last bio walked.
pub const EVENT_WRITEBACK_BIOS_TRUNCATED: u32 = 9;
/// The OOM ring buffer was full: a kill was not reported.
pub const EVENT_OOM_RING_FULL: u32 = 10;
/// The task switched out is not the one last seen switched in on its CPU: the
/// switch that put it there ran no program (its slice, as the kernel timed it, is
/// charged to its own cgroup).
pub const EVENT_SWITCH_UNSEEN: u32 = 11;
pub const EVENT_SLOTS: u32 = 12;

/// Bios of one write request the writeback program walks (merged requests rarely
/// hold more; the rest is counted in [`EVENT_WRITEBACK_BIOS_TRUNCATED`]).
pub const WRITEBACK_MAX_BIOS: u32 = 32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] and made only of integers, with no padding.
    unsafe impl aya::Pod for super::SchedCounters {}
    unsafe impl aya::Pod for super::BlockKey {}
    unsafe impl aya::Pod for super::BlockCounters {}
    unsafe impl aya::Pod for super::InFlightRequest {}
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::OwnerKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip() {
        assert_eq!(device_number(254, 0), 254 << 20);
        assert_eq!(device_parts(device_number(8, 16)), (8, 16));
        assert_eq!(
            device_parts(device_number(259, (1 << 20) - 1)),
            (259, (1 << 20) - 1)
        );
    }

    #[test]
    fn slots_follow_prometheus_le() {
        // (latency ns, expected slot): a value equal to a bound is in that bucket.
        for (ns, slot) in [
            (0, 0),
            (1, 0),
            (1000, 0),
            (1001, 1),
            (2000, 1),
            (2001, 2),
            (4000, 2),
            (4001, 3),
            (1_024_000, 10),
            (1_024_001, 11),
            (u64::MAX, LATENCY_BUCKETS - 1),
        ] {
            assert_eq!(latency_slot(ns), slot, "{ns} ns");
        }
        assert_eq!(slot_bound_micros(0), Some(1));
        assert_eq!(slot_bound_micros(26), Some(1 << 26));
        assert_eq!(slot_bound_micros(LATENCY_BUCKETS - 1), None);
        // Every slot's bound holds what the slot holds and nothing of the next.
        for slot in 0..LATENCY_BUCKETS - 1 {
            let bound_ns = slot_bound_micros(slot).unwrap() * 1000;
            assert_eq!(latency_slot(bound_ns), slot);
            assert_eq!(latency_slot(bound_ns + 1), slot + 1);
        }
    }
}
