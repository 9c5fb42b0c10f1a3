//! Data source: the eBPF programs of `horcrux-ebpf`, embedded at build time, loaded
//! and attached at start-up, read by the node collector every cycle.
//!
//! Two families, each attached or failed as a whole, each reported per program in
//! `/api/status` with the reason when it failed; the agent runs on without them:
//! - scheduler (`tp_btf` sched_wakeup, sched_wakeup_new, sched_switch);
//! - block I/O (`tp_btf` block_rq_issue, block_rq_complete).
//!
//! `tp_btf` programs attach through BTF, so they need neither tracefs nor kprobes.

pub mod counters;
pub mod layout;
pub mod sampler;

use std::path::PathBuf;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePoint,
};
use horcrux_common::{EVENT_SLOTS, KernelLayout};
use serde::Serialize;

use crate::{
    cgroup::{Hierarchies, Hierarchy, inodes::InodeIndex},
    error::chain,
};
use counters::{BlockSource, CgroupMap, EbpfCounters, SchedSource};
use layout::{CpuCgroups, KernelBtf, VMLINUX_BTF};

/// The object built by `build.rs`; empty when the eBPF toolchain was missing.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/horcrux-ebpf.o"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Sched,
    Block,
}

/// (program, tracepoint, family).
const PROGRAMS: [(&str, &str, Family); 5] = [
    ("sched_wakeup", "sched_wakeup", Family::Sched),
    ("sched_wakeup_new", "sched_wakeup_new", Family::Sched),
    ("sched_switch", "sched_switch", Family::Sched),
    ("block_rq_issue", "block_rq_issue", Family::Block),
    ("block_rq_complete", "block_rq_complete", Family::Block),
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
];

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
}

/// The loaded programs. Dropping it detaches them.
pub struct EbpfPrograms {
    ebpf: Option<Ebpf>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    sched: Option<SchedSource>,
    block: Option<BlockSource>,
    events: Option<PerCpuArray<MapData, u64>>,
    status: EbpfStatus,
    since: u64,
}

impl EbpfPrograms {
    pub fn embedded() -> bool {
        !OBJECT.is_empty()
    }

    /// Loads and attaches every program, recording why any of them could not be.
    pub fn load(hierarchies: &Hierarchies) -> Self {
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
        if let Err(error) = programs.load_and_attach(hierarchies) {
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

    fn load_and_attach(&mut self, hierarchies: &Hierarchies) -> Result<(), String> {
        raise_memlock_limit();
        let (cpu_cgroups, sched_root) = match hierarchies.locate("cpu", "cpu") {
            Some(Hierarchy::V1(root)) => (CpuCgroups::V1CpuController, Some(root.to_path_buf())),
            _ => (CpuCgroups::Unified, hierarchies.unified.clone()),
        };
        let block_root = match hierarchies.locate("io", "blkio") {
            Some(hierarchy) => Some(hierarchy.root().to_path_buf()),
            None => hierarchies.unified.clone(),
        };
        let kernel_btf = KernelBtf::from_file(VMLINUX_BTF.as_ref())
            .map_err(|error| format!("kernel layout: {error}"))?;
        let mut kernel_layout = KernelLayout::default();
        let sched_layout = kernel_btf.resolve_sched(cpu_cgroups, &mut kernel_layout);
        let block_layout = kernel_btf.resolve_block(&mut kernel_layout);
        drop(kernel_btf);

        let btf = Btf::from_sys_fs().map_err(|error| format!("kernel BTF: {}", chain(&error)))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("LAYOUT", &kernel_layout, true)
            .override_global("AYA_LOG_LEVEL", &(aya_log::Level::Warn as u8), false)
            .load(OBJECT)
            .map_err(|error| format!("loading object: {}", chain(&error)))?;
        self.logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                tracing::warn!("eBPF log forwarding unavailable: {}", chain(&error));
                None
            }
        };

        for (family, resolved) in [(Family::Sched, sched_layout), (Family::Block, block_layout)] {
            let attached = resolved
                .map_err(|error| format!("kernel layout: {error}"))
                .and_then(|()| self.attach_family(&mut ebpf, &btf, family));
            if let Err(error) = attached {
                tracing::warn!(?family, "eBPF programs not attached: {error}");
                self.fail(Some(family), ProgramState::Failed, &error);
            }
        }
        let sched_attached = self.family_attached(Family::Sched);
        let block_attached = self.family_attached(Family::Block);
        if let (true, Some(root)) = (sched_attached, &sched_root) {
            let map = take_per_cpu_hash(&mut ebpf, "SCHED")?;
            self.sched = Some(SchedSource {
                map: CgroupMap::new(map, InodeIndex::new(root)),
                retired: horcrux_common::SchedCounters::ZERO,
            });
            self.status.sched_cgroups = Some(root.clone());
        }
        if let (true, Some(root)) = (block_attached, &block_root) {
            let map = take_per_cpu_hash(&mut ebpf, "BLOCK")?;
            let in_flight = ebpf.take_map("IN_FLIGHT").ok_or("map IN_FLIGHT missing")?;
            self.block = Some(BlockSource::new(
                CgroupMap::new(map, InodeIndex::new(root)),
                aya::maps::HashMap::try_from(in_flight)
                    .map_err(|error| format!("map IN_FLIGHT: {}", chain(&error)))?,
            ));
            self.status.block_cgroups = Some(root.clone());
        }
        if sched_attached || block_attached {
            let events = ebpf.take_map("EVENTS").ok_or("map EVENTS missing")?;
            self.events = Some(PerCpuArray::try_from(events).map_err(|error| chain(&error))?);
        }
        tracing::info!(sched_attached, block_attached, "eBPF programs attached");
        self.since = crate::clock::unix_seconds();
        self.ebpf = Some(ebpf);
        Ok(())
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
            let attached = (|| {
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
                Ok::<(), String>(())
            })();
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
