//! Data source: the eBPF programs of `horcrux-ebpf`, embedded at build time, loaded
//! and attached at start-up, read by the node collector every cycle.
//!
//! Four families, each attached or failed as a whole, each reported per program in
//! `/api/status` with the reason when it failed; the agent runs on without them:
//! - scheduler (`tp_btf` sched_wakeup, sched_wakeup_new, sched_switch);
//! - block I/O (`tp_btf` block_rq_issue, block_rq_complete), as the kernel
//!   charges it (the bio's blkcg);
//! - writeback (`tp_btf` writeback_dirty_folio, block_rq_issue): page-cache bytes
//!   dirtied and written back, charged to the memory cgroup owning the pages;
//! - OOM (`tp_btf` mark_victim): each kill, read by [`oom::OomKills`].
//!
//! `tp_btf` programs attach through BTF, so they need neither tracefs nor kprobes
//! (fentry is refused on this kind of host). The per-cgroup maps are sized from
//! `max_containers` at load time.

pub mod counters;
pub mod layout;
pub mod oom;
pub mod sampler;

use std::path::PathBuf;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePoint,
};
use horcrux_common::{EVENT_SLOTS, KernelLayout};
use serde::Serialize;

use crate::{
    cgroup::{Hierarchies, Hierarchy, inodes::InodeIndex},
    error::chain,
};
use counters::{BlockSource, CgroupIds, CgroupMap, EbpfCounters, SchedSource, WritebackSource};
use layout::{CgroupTree, KernelBtf, VMLINUX_BTF};

/// The object built by `build.rs`; empty when the eBPF toolchain was missing.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/horcrux-ebpf.o"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Sched,
    Block,
    Writeback,
    Oom,
}

impl Family {
    pub const ALL: [Self; 4] = [Self::Sched, Self::Block, Self::Writeback, Self::Oom];

    /// The name in the config (`[ebpf] families`) and in `/api/status`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sched => "sched",
            Self::Block => "block",
            Self::Writeback => "writeback",
            Self::Oom => "oom",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|family| family.name() == name)
    }
}

/// (program, tracepoint, family).
const PROGRAMS: [(&str, &str, Family); 8] = [
    ("sched_wakeup", "sched_wakeup", Family::Sched),
    ("sched_wakeup_new", "sched_wakeup_new", Family::Sched),
    ("sched_switch", "sched_switch", Family::Sched),
    ("block_rq_issue", "block_rq_issue", Family::Block),
    ("block_rq_complete", "block_rq_complete", Family::Block),
    (
        "writeback_dirty_folio",
        "writeback_dirty_folio",
        Family::Writeback,
    ),
    ("writeback_rq_issue", "block_rq_issue", Family::Writeback),
    ("mark_victim", "mark_victim", Family::Oom),
];

/// What the programs could not record, by `EVENTS` slot (`horcrux_common::EVENT_*`).
pub const EVENT_NAMES: [&str; EVENT_SLOTS as usize] = [
    "sched_map_full",
    "runnable_map_full",
    "block_map_full",
    "in_flight_map_full",
    "kernel_read_failed",
    "completion_unmatched",
    "completion_missed",
    "writeback_map_full",
    "dirtied_map_full",
    "writeback_bios_truncated",
    "oom_ring_full",
    "switch_unseen",
];

/// What to load and how big the per-cgroup maps are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfOptions {
    /// `[ebpf] families`.
    pub families: Vec<Family>,
    /// `[monitoring] max_containers`: the maps hold twice as many cgroups (a
    /// container's own and one nested level) plus the host's.
    pub max_containers: usize,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        Self {
            families: Family::ALL.to_vec(),
            max_containers: crate::collector::containers::ContainerSettings::default()
                .max_containers,
        }
    }
}

/// Cgroups besides the containers' (system services, runtimes, nesting).
const HOST_CGROUPS: usize = 128;
/// Kernels cap a map's entries far higher; this caps the agent's own share.
const MAX_CGROUP_ENTRIES: usize = 1 << 20;

impl EbpfOptions {
    /// Cgroups each per-cgroup map holds.
    pub fn cgroup_entries(&self) -> u32 {
        (self.max_containers.saturating_mul(2) + HOST_CGROUPS).min(MAX_CGROUP_ENTRIES) as u32
    }

    /// (map, entries): a cgroup has counters per device and operation in BLOCK
    /// (a few disks, reads and writes), per device in WRITEBACK.
    fn map_sizes(&self) -> [(&'static str, u32); 4] {
        let cgroups = self.cgroup_entries();
        [
            ("SCHED", cgroups),
            ("BLOCK", cgroups.saturating_mul(4)),
            ("WRITEBACK", cgroups.saturating_mul(2)),
            ("DIRTIED", cgroups),
        ]
    }
}

/// A per-cgroup map's size and use, for `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct MapStatus {
    pub name: &'static str,
    pub max_entries: u32,
    /// Entries at the last read.
    pub entries: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramState {
    Attached,
    Failed,
    NotEmbedded,
    /// `[ebpf] enabled = false`.
    Disabled,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramStatus {
    pub name: &'static str,
    pub attach_point: String,
    pub family: Family,
    pub state: ProgramState,
    pub error: Option<String>,
    /// Kernel-measured runs and run time; only counted while `kernel.bpf_stats_enabled` is 1.
    pub run_count: Option<u64>,
    pub run_time_ns: Option<u64>,
}

/// What `/api/status` says about eBPF beyond the programs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EbpfStatus {
    pub programs: Vec<ProgramStatus>,
    /// Events the programs could not record, by kind, since attach.
    pub events: std::collections::BTreeMap<&'static str, u64>,
    /// The hierarchy whose cgroups scheduler counters are charged to.
    pub sched_cgroups: Option<PathBuf>,
    /// The hierarchy whose cgroups block I/O is charged to (the bio's blkcg).
    pub block_cgroups: Option<PathBuf>,
    /// The hierarchy whose (memory) cgroups own page-cache bytes and OOM victims.
    pub memory_cgroups: Option<PathBuf>,
    /// The per-cgroup maps; a full map is counted in `events` (`*_map_full`).
    pub maps: Vec<MapStatus>,
}

/// The loaded programs. Dropping it detaches them.
pub struct EbpfPrograms {
    ebpf: Option<Ebpf>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    sched: Option<SchedSource>,
    block: Option<BlockSource>,
    writeback: Option<WritebackSource>,
    /// Until the agent takes it for its OOM thread.
    oom_kills: Option<oom::OomKills>,
    events: Option<PerCpuArray<MapData, u64>>,
    status: EbpfStatus,
    since: u64,
}

impl EbpfPrograms {
    pub fn embedded() -> bool {
        !OBJECT.is_empty()
    }

    /// Loads and attaches every program, recording why any of them could not be.
    pub fn load(hierarchies: &Hierarchies, options: &EbpfOptions) -> Self {
        let mut programs = Self::unloaded();
        if !Self::embedded() {
            programs.fail(
                None,
                ProgramState::NotEmbedded,
                "built without the eBPF toolchain; run `cargo xtask setup` and rebuild",
            );
            tracing::warn!("eBPF programs are not embedded in this build");
            return programs;
        }
        if let Err(error) = programs.load_and_attach(hierarchies, options) {
            tracing::warn!("eBPF programs not loaded: {error}");
            programs.fail(None, ProgramState::Failed, &error);
        }
        programs
    }

    /// No program loaded, as configured (`[ebpf] enabled = false`).
    pub fn disabled() -> Self {
        let mut programs = Self::unloaded();
        programs.fail(
            None,
            ProgramState::Disabled,
            "disabled in the config ([ebpf] enabled = false)",
        );
        programs
    }

    /// Whether any program is attached.
    pub fn any_attached(&self) -> bool {
        self.status
            .programs
            .iter()
            .any(|program| program.state == ProgramState::Attached)
    }

    fn unloaded() -> Self {
        Self {
            ebpf: None,
            logger: None,
            sched: None,
            block: None,
            writeback: None,
            oom_kills: None,
            events: None,
            status: EbpfStatus {
                programs: PROGRAMS
                    .iter()
                    .map(|&(name, tracepoint, family)| ProgramStatus {
                        name,
                        attach_point: format!("tp_btf/{tracepoint}"),
                        family,
                        state: ProgramState::NotEmbedded,
                        error: None,
                        run_count: None,
                        run_time_ns: None,
                    })
                    .collect(),
                ..EbpfStatus::default()
            },
            // Set when the programs attach; without them no counter is published.
            since: 0,
        }
    }

    /// Marks the programs of `family` (all of them for `None`) as not running, and why.
    fn fail(&mut self, family: Option<Family>, state: ProgramState, error: &str) {
        for program in &mut self.status.programs {
            if family.is_none_or(|family| program.family == family) {
                program.state = state;
                program.error = Some(error.to_owned());
            }
        }
    }

    fn load_and_attach(
        &mut self,
        hierarchies: &Hierarchies,
        options: &EbpfOptions,
    ) -> Result<(), String> {
        raise_memlock_limit();
        let (cpu_tree, sched_root) = controller_tree(hierarchies, "cpu", "cpu");
        let (_, memory_root) = controller_tree(hierarchies, "memory", "memory");
        let block_root = match hierarchies.locate("io", "blkio") {
            Some(hierarchy) => Some(hierarchy.root().to_path_buf()),
            None => hierarchies.unified.clone(),
        };
        let page_size = page_size();
        let kernel_btf = KernelBtf::from_file(VMLINUX_BTF.as_ref())
            .map_err(|error| format!("kernel layout: {error}"))?;
        let mut kernel_layout = KernelLayout::default();
        let layouts = [
            kernel_btf.resolve_sched(cpu_tree, &mut kernel_layout),
            kernel_btf.resolve_block(&mut kernel_layout),
            kernel_btf.resolve_writeback(page_size, &mut kernel_layout),
            kernel_btf.resolve_oom(page_size, &mut kernel_layout),
        ];
        drop(kernel_btf);

        let btf = Btf::from_sys_fs().map_err(|error| format!("kernel BTF: {}", chain(&error)))?;
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .override_global("LAYOUT", &kernel_layout, true)
            .override_global("AYA_LOG_LEVEL", &(aya_log::Level::Warn as u8), false);
        for (map, entries) in options.map_sizes() {
            loader.map_max_entries(map, entries);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|error| format!("loading object: {}", chain(&error)))?;
        self.logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                tracing::warn!("eBPF log forwarding unavailable: {}", chain(&error));
                None
            }
        };

        for (family, resolved) in Family::ALL.into_iter().zip(layouts) {
            if !options.families.contains(&family) {
                self.fail(
                    Some(family),
                    ProgramState::Disabled,
                    &format!("not in the config's [ebpf] families ({})", family.name()),
                );
                continue;
            }
            // The owner's view is reported beside the kernel's, per device.
            if family == Family::Writeback && !self.family_attached(Family::Block) {
                self.fail(
                    Some(family),
                    ProgramState::Failed,
                    "needs the block family, which is not attached",
                );
                continue;
            }
            let attached = resolved
                .map_err(|error| format!("kernel layout: {error}"))
                .and_then(|()| self.attach_family(&mut ebpf, &btf, family));
            if let Err(error) = attached {
                tracing::warn!(?family, "eBPF programs not attached: {error}");
                self.fail(Some(family), ProgramState::Failed, &error);
            }
        }
        let attached = Family::ALL.map(|family| self.family_attached(family));
        let [
            sched_attached,
            block_attached,
            writeback_attached,
            oom_attached,
        ] = attached;
        if let (true, Some(root)) = (sched_attached, &sched_root) {
            let map = take_per_cpu_hash(&mut ebpf, "SCHED")?;
            self.sched = Some(SchedSource {
                map: CgroupMap::new(map),
                ids: CgroupIds::new(InodeIndex::new(root)),
                retired: horcrux_common::SchedCounters::ZERO,
            });
            self.status.sched_cgroups = Some(root.clone());
        }
        if let (true, Some(root)) = (block_attached, &block_root) {
            let map = take_per_cpu_hash(&mut ebpf, "BLOCK")?;
            let in_flight = ebpf.take_map("IN_FLIGHT").ok_or("map IN_FLIGHT missing")?;
            self.block = Some(BlockSource::new(
                CgroupMap::new(map),
                CgroupIds::new(InodeIndex::new(root)),
                aya::maps::HashMap::try_from(in_flight)
                    .map_err(|error| format!("map IN_FLIGHT: {}", chain(&error)))?,
            ));
            self.status.block_cgroups = Some(root.clone());
        }
        if let (true, Some(root)) = (writeback_attached, &memory_root) {
            self.writeback = Some(WritebackSource::new(
                CgroupMap::new(take_per_cpu_hash(&mut ebpf, "WRITEBACK")?),
                CgroupMap::new(take_per_cpu_hash(&mut ebpf, "DIRTIED")?),
                CgroupIds::new(InodeIndex::new(root)),
            ));
        }
        if let (true, Some(root)) = (oom_attached, &memory_root) {
            let ring = ebpf.take_map("OOM_KILLS").ok_or("map OOM_KILLS missing")?;
            let ring = RingBuf::try_from(ring)
                .map_err(|error| format!("map OOM_KILLS: {}", chain(&error)))?;
            self.oom_kills = Some(oom::OomKills::new(ring, InodeIndex::new(root)));
        }
        if writeback_attached || oom_attached {
            self.status.memory_cgroups = memory_root.clone();
        }
        if attached.contains(&true) {
            let events = ebpf.take_map("EVENTS").ok_or("map EVENTS missing")?;
            self.events = Some(PerCpuArray::try_from(events).map_err(|error| chain(&error))?);
        }
        tracing::info!(
            sched_attached,
            block_attached,
            writeback_attached,
            oom_attached,
            "eBPF programs attached"
        );
        self.since = crate::clock::unix_seconds();
        self.ebpf = Some(ebpf);
        Ok(())
    }

    /// The OOM kill reader, once (the agent runs it on a thread of its own).
    pub fn take_oom_kills(&mut self) -> Option<oom::OomKills> {
        self.oom_kills.take()
    }

    fn family_attached(&self, family: Family) -> bool {
        self.status
            .programs
            .iter()
            .filter(|program| program.family == family)
            .all(|program| program.state == ProgramState::Attached)
    }

    /// Loads and attaches a family's programs; on any failure unloads those already
    /// attached, as half a family counts wrong (switches without wakeups).
    fn attach_family(&mut self, ebpf: &mut Ebpf, btf: &Btf, family: Family) -> Result<(), String> {
        let members: Vec<(&'static str, &'static str)> = PROGRAMS
            .iter()
            .filter(|(_, _, program_family)| *program_family == family)
            .map(|&(name, tracepoint, _)| (name, tracepoint))
            .collect();
        let mut outcome = Ok(());
        for &(name, tracepoint) in &members {
            let attached = attach_program(ebpf, btf, name, tracepoint);
            if let Some(status) = self.status.programs.iter_mut().find(|p| p.name == name) {
                match &attached {
                    Ok(()) => status.state = ProgramState::Attached,
                    Err(error) => {
                        status.state = ProgramState::Failed;
                        status.error = Some(error.clone());
                    }
                }
            }
            if let Err(error) = attached {
                outcome = Err(format!("{name}: {error}"));
                break;
            }
        }
        if outcome.is_err() {
            for &(name, _) in &members {
                if let Some(program) = ebpf.program_mut(name)
                    && let Ok(program) = <&mut BtfTracePoint>::try_from(program)
                {
                    let _ = program.unload();
                }
            }
        }
        outcome
    }

    /// Reads the counters; called by the node collector, never by a request.
    /// `idle`: devices with nothing in flight in `/proc/diskstats`, read before this
    /// call (the node collector's own read of it): completions the programs never saw
    /// are counted on them.
    pub fn read(&mut self, idle: &counters::IdleDevices) -> (EbpfCounters, Vec<String>) {
        let mut errors = Vec::new();
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        let sched = self.sched.as_mut().and_then(|source| {
            source
                .read()
                .map_err(|error| errors.push(format!("SCHED map: {error}")))
                .ok()
        });
        let block = self.block.as_mut().and_then(|source| {
            source
                .read(idle)
                .map_err(|error| errors.push(format!("BLOCK map: {error}")))
                .ok()
        });
        let writeback = self.writeback.as_mut().and_then(|source| {
            source
                .read()
                .map_err(|error| errors.push(format!("WRITEBACK/DIRTIED maps: {error}")))
                .ok()
        });
        let mut maps = Vec::new();
        if let Some(source) = &self.sched {
            maps.push(source.map.status("SCHED"));
        }
        if let Some(source) = &self.block {
            maps.push(source.map.status("BLOCK"));
        }
        if let Some(source) = &self.writeback {
            maps.push(source.written.status("WRITEBACK"));
            maps.push(source.dirtied.status("DIRTIED"));
        }
        self.status.maps = maps;
        if let Some(events) = &self.events {
            for (slot, name) in EVENT_NAMES.iter().enumerate() {
                match events.get(&(slot as u32), 0) {
                    Ok(per_cpu) => {
                        let mut total = per_cpu.iter().fold(0u64, |sum, n| sum.wrapping_add(*n));
                        // Unobserved completions the reader counted, besides the programs'.
                        if slot as u32 == horcrux_common::EVENT_COMPLETION_MISSED {
                            total += self.block.as_ref().map_or(0, |block| block.missed_requests);
                        }
                        self.status.events.insert(name, total);
                    }
                    Err(error) => errors.push(format!("EVENTS map: {}", chain(&error))),
                }
            }
        }
        if let Err(error) = self.refresh_run_stats() {
            errors.push(error);
        }
        let counters = EbpfCounters {
            sched,
            block,
            writeback,
            since: self.since,
        };
        (counters, errors)
    }

    fn refresh_run_stats(&mut self) -> Result<(), String> {
        let Some(ebpf) = &self.ebpf else {
            return Ok(());
        };
        let stats_enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|value| value.trim() == "1");
        for status in &mut self.status.programs {
            if status.state != ProgramState::Attached {
                continue;
            }
            let (mut run_count, mut run_time_ns) = (None, None);
            if stats_enabled && let Some(program) = ebpf.program(status.name) {
                let info = program
                    .info()
                    .map_err(|error| format!("{}: {}", status.name, chain(&error)))?;
                run_count = Some(info.run_count());
                run_time_ns = Some(u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX));
            }
            status.run_count = run_count;
            status.run_time_ns = run_time_ns;
        }
        Ok(())
    }

    pub fn status(&self) -> EbpfStatus {
        self.status.clone()
    }
}

/// The kernel's page size.
fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as u64)
}

/// Which hierarchy a controller's cgroups are named in, and its root.
fn controller_tree(
    hierarchies: &Hierarchies,
    unified: &str,
    v1: &str,
) -> (CgroupTree, Option<PathBuf>) {
    match hierarchies.locate(unified, v1) {
        Some(Hierarchy::V1(root)) => (CgroupTree::V1Controller, Some(root.to_path_buf())),
        _ => (CgroupTree::Unified, hierarchies.unified.clone()),
    }
}

fn attach_program(ebpf: &mut Ebpf, btf: &Btf, name: &str, tracepoint: &str) -> Result<(), String> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or("program missing from object")?
        .try_into()
        .map_err(|error| chain(&error))?;
    program
        .load(tracepoint, btf)
        .map_err(|error| format!("verifier/load: {}", chain(&error)))?;
    program
        .attach()
        .map_err(|error| format!("attach: {}", chain(&error)))?;
    Ok(())
}

fn take_per_cpu_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<PerCpuHashMap<MapData, K, V>, String> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| format!("map {name} missing from object"))?;
    PerCpuHashMap::try_from(map).map_err(|error| format!("map {name}: {}", chain(&error)))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones use memcg.
fn raise_memlock_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(errno) = setrlimit(Resource::RLIMIT_MEMLOCK, u64::MAX, u64::MAX) {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {errno}");
    }
}
