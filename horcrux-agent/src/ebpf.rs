//! Data source: eBPF programs from `horcrux-ebpf`, embedded at build time, loaded
//! and attached at start-up. Any failure is reported per program and the agent
//! runs on without it.

use std::{collections::BTreeMap, error::Error, path::Path};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::TracePoint,
};
use serde::Serialize;

/// The object built by `build.rs`; empty when the eBPF toolchain was missing.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/horcrux-ebpf.o"));

const TRACEFS: &str = "/sys/kernel/tracing";
const CONTEXT_SWITCH_PROGRAM: &str = "count_context_switches";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramState {
    Attached,
    Failed,
    NotEmbedded,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramStatus {
    pub name: &'static str,
    pub attach_point: &'static str,
    pub state: ProgramState,
    pub error: Option<String>,
    /// What the program has counted since it was attached.
    pub counters: BTreeMap<&'static str, u64>,
    /// Kernel-measured runs and run time; only counted while `kernel.bpf_stats_enabled` is 1.
    pub run_count: Option<u64>,
    pub run_time_ns: Option<u64>,
}

/// The loaded programs. Dropping it detaches them.
pub struct EbpfPrograms {
    ebpf: Option<Ebpf>,
    context_switches: Option<PerCpuArray<MapData, u64>>,
    context_switch_status: ProgramStatus,
}

impl EbpfPrograms {
    pub fn embedded() -> bool {
        !OBJECT.is_empty()
    }

    /// Loads and attaches every program, recording why any of them could not be.
    pub fn load() -> Self {
        let mut status = ProgramStatus {
            name: CONTEXT_SWITCH_PROGRAM,
            attach_point: "tracepoint/sched/sched_switch",
            state: ProgramState::NotEmbedded,
            error: None,
            counters: BTreeMap::new(),
            run_count: None,
            run_time_ns: None,
        };
        if !Self::embedded() {
            status.error = Some(
                "built without the eBPF toolchain; run `cargo xtask setup` and rebuild".into(),
            );
            tracing::warn!("eBPF programs are not embedded in this build");
            return Self {
                ebpf: None,
                context_switches: None,
                context_switch_status: status,
            };
        }
        match load_context_switch_counter() {
            Ok((ebpf, map)) => {
                tracing::info!(program = CONTEXT_SWITCH_PROGRAM, "eBPF program attached");
                status.state = ProgramState::Attached;
                Self {
                    ebpf: Some(ebpf),
                    context_switches: Some(map),
                    context_switch_status: status,
                }
            }
            Err(error) => {
                tracing::warn!(
                    program = CONTEXT_SWITCH_PROGRAM,
                    "eBPF program not attached: {error}"
                );
                status.state = ProgramState::Failed;
                status.error = Some(error);
                Self {
                    ebpf: None,
                    context_switches: None,
                    context_switch_status: status,
                }
            }
        }
    }

    /// Reads the programs' counters; called by the collector, never by a request.
    pub fn refresh(&mut self) -> Result<(), String> {
        let Some(map) = &self.context_switches else {
            return Ok(());
        };
        let per_cpu = map.get(&0, 0).map_err(|error| chain(&error))?;
        let total = per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
        self.context_switch_status
            .counters
            .insert("context_switches", total);
        if let Some(program) = self
            .ebpf
            .as_ref()
            .and_then(|ebpf| ebpf.program(CONTEXT_SWITCH_PROGRAM))
        {
            let info = <&TracePoint>::try_from(program)
                .map_err(|error| chain(&error))?
                .info();
            let info = info.map_err(|error| chain(&error))?;
            let stats_enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
                .is_ok_and(|value| value.trim() == "1");
            self.context_switch_status.run_count = stats_enabled.then(|| info.run_count());
            self.context_switch_status.run_time_ns = stats_enabled
                .then(|| u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX));
        }
        Ok(())
    }

    pub fn statuses(&self) -> Vec<ProgramStatus> {
        vec![self.context_switch_status.clone()]
    }
}

fn load_context_switch_counter() -> Result<(Ebpf, PerCpuArray<MapData, u64>), String> {
    raise_memlock_limit();
    ensure_tracefs()?;
    let mut ebpf =
        Ebpf::load(OBJECT).map_err(|error| format!("loading object: {}", chain(&error)))?;
    let program: &mut TracePoint = ebpf
        .program_mut(CONTEXT_SWITCH_PROGRAM)
        .ok_or("program missing from object")?
        .try_into()
        .map_err(|error| chain(&error))?;
    program
        .load()
        .map_err(|error| format!("verifier/load: {}", chain(&error)))?;
    program
        .attach("sched", "sched_switch")
        .map_err(|error| format!("attach: {}", chain(&error)))?;
    let map = ebpf
        .take_map("CONTEXT_SWITCHES")
        .ok_or("map CONTEXT_SWITCHES missing from object")?;
    let map = PerCpuArray::try_from(map).map_err(|error| chain(&error))?;
    Ok((ebpf, map))
}

/// Classic tracepoints need tracefs; it is often not mounted on minimal hosts.
fn ensure_tracefs() -> Result<(), String> {
    let mounted = |root: &str| Path::new(root).join("events").is_dir();
    if mounted(TRACEFS) || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| {
        format!("tracefs is not mounted and mounting it at {TRACEFS} failed: {errno}")
    })?;
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones use memcg.
fn raise_memlock_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(errno) = setrlimit(Resource::RLIMIT_MEMLOCK, u64::MAX, u64::MAX) {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {errno}");
    }
}

/// "outer: cause: root cause", since aya's errors keep their causes as sources.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
