//! Reads one container cgroup's counters. Each metric family comes from cgroup2 when
//! its controller is enabled there, else from its v1 hierarchy; a family that cannot
//! be read is `Err(reason)`, never a made-up zero.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
};

use super::{Hierarchies, Hierarchy, files};
use crate::procfs::{ParseError, SourceError, TextReader};

/// Why v1 block I/O is not reported for a cgroup without a throttle rule.
pub const V1_BLKIO_WITHOUT_RULE: &str = "cgroup v1 blkio counts I/O only for cgroups with a blk-throttle rule \
     (blkio.throttle.*_device); this cgroup has none, so its kernel counters read 0";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuCounters {
    pub usage_ns: u64,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    pub throttling: Option<Throttling>,
    /// CPUs the cgroup may use (`None` = unlimited or unknown).
    pub limit_cores: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryCounters {
    pub usage: u64,
    /// `None` = unlimited.
    pub limit: Option<u64>,
    pub anon: u64,
    pub file: u64,
    pub active_file: u64,
    pub inactive_file: u64,
    pub kernel: Option<u64>,
    pub slab: Option<u64>,
    pub swap: Option<u64>,
    /// Times the cgroup's OOM killer was invoked (v2 `memory.events oom`; not in v1).
    pub oom_events: Option<u64>,
    pub oom_kills: Option<u64>,
    /// Times usage hit the limit (v2 `memory.events max`, v1 `memory.failcnt`).
    pub limit_hits: Option<u64>,
}

impl MemoryCounters {
    /// Usage minus inactive file cache: what the kernel cannot reclaim easily (cAdvisor's working set).
    pub fn working_set(&self) -> u64 {
        self.usage.saturating_sub(self.inactive_file)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIoCounters {
    /// The file the numbers come from.
    pub source: &'static str,
    pub devices: Vec<files::DeviceIo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidsCounters {
    pub current: u64,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureCounters {
    pub cpu: Option<files::Pressure>,
    pub memory: Option<files::Pressure>,
    pub io: Option<files::Pressure>,
}

/// Everything read for one container in one cycle.
#[derive(Debug)]
pub struct ContainerCounters {
    pub cpu: Result<CpuCounters, String>,
    pub memory: Result<MemoryCounters, String>,
    pub block_io: Result<BlockIoCounters, String>,
    pub pids: Result<PidsCounters, String>,
    pub pressure: Result<PressureCounters, String>,
    /// Process ids in the container's cgroup (the first non-empty one, searching children).
    pub processes: Vec<u32>,
    pub frozen: bool,
    /// Failures other than "file absent", for the collector's health record.
    pub errors: Vec<SourceError>,
}

/// Re-read limits and throttle rules every this many cycles (1 min at the default
/// 10 s interval): runtimes write them once, and they cost a file each per container.
pub const LIMITS_REFRESH_CYCLES: u64 = 6;

/// Settings rather than measurements: a container's limits, whether its v1 blkio
/// cgroup has a throttle rule, and which directory lists its processes.
#[derive(Debug, Clone, Default, PartialEq)]
struct Limits {
    cpu_cores: Option<f64>,
    memory: Option<u64>,
    pids: Option<u64>,
    blkio_rule: bool,
    /// `None`: the cgroup was gone when the settings were read.
    member_dir: Option<PathBuf>,
}

pub struct CgroupReader {
    hierarchies: Hierarchies,
    text: TextReader,
    psi_enabled: bool,
    cycle: u64,
    /// Per cgroup path: the cycle the limits were read in, and the limits.
    limits: HashMap<String, (u64, Limits)>,
    /// Cgroup files kept open between cycles, with the cycle each was last read in.
    open_files: HashMap<PathBuf, (std::fs::File, u64)>,
    open_file_budget: usize,
}

impl CgroupReader {
    pub fn new(hierarchies: Hierarchies, psi_enabled: bool) -> Self {
        Self {
            hierarchies,
            text: TextReader::new("/"),
            psi_enabled,
            cycle: 0,
            limits: HashMap::new(),
            open_files: HashMap::new(),
            open_file_budget: open_file_budget(),
        }
    }

    /// Starts a cycle over the cgroups in `live`; cached limits of others are dropped.
    pub fn begin_cycle<'a>(&mut self, live: impl Iterator<Item = &'a str>) {
        self.cycle += 1;
        let live: HashSet<&str> = live.collect();
        self.limits.retain(|path, _| live.contains(path.as_str()));
        // Files not read last cycle belong to containers that are gone (or to limits,
        // read every few cycles): close them.
        let cycle = self.cycle;
        self.open_files.retain(|_, (_, used)| *used + 1 >= cycle);
    }

    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// cgroup2's `cpu.stat` has usage even without the cpu controller; on hybrid hosts
    /// the v1 cpuacct hierarchy is where runtimes set limits, so it wins there.
    fn cpu_from_unified(&self) -> bool {
        self.hierarchies.unified.is_some()
            && (self
                .hierarchies
                .unified_controllers
                .iter()
                .any(|c| c == "cpu")
                || !self.hierarchies.v1.contains_key("cpuacct"))
    }

    /// Where each metric family is read from on this host, or why it is unavailable.
    pub fn family_sources(&self) -> BTreeMap<&'static str, String> {
        let hierarchies = &self.hierarchies;
        let located =
            |v2: &str, v1: &str, v2_files: &str, v1_files: &str| match hierarchies.locate(v2, v1) {
                Some(Hierarchy::Unified(_)) => format!("cgroup2 {v2_files}"),
                Some(Hierarchy::V1(_)) => format!("cgroup v1 {v1_files}"),
                None => format!("unavailable: neither cgroup2 {v2} nor v1 {v1} is mounted"),
            };
        let cpu = if self.cpu_from_unified() {
            "cgroup2 cpu.stat, cpu.max".to_owned()
        } else if hierarchies.v1.contains_key("cpuacct") {
            "cgroup v1 cpuacct.usage*, cpu.stat, cpu.cfs_quota_us".to_owned()
        } else {
            "unavailable: no cgroup CPU accounting mounted".to_owned()
        };
        let block_io = match hierarchies.locate("io", "blkio") {
            Some(Hierarchy::V1(_)) => "cgroup v1 blkio.throttle.io_service*_recursive, only for cgroups \
                 with a blk-throttle rule: without one the kernel counts nothing, so those report unavailable"
                .to_owned(),
            _ => located("io", "blkio", "io.stat", ""),
        };
        let pressure = match (self.psi_enabled, &hierarchies.unified) {
            (true, Some(_)) => "cgroup2 cpu.pressure, memory.pressure, io.pressure".to_owned(),
            (false, _) => {
                "unavailable: PSI is disabled in this kernel (boot with psi=1)".to_owned()
            }
            (true, None) => "unavailable: PSI needs cgroup2".to_owned(),
        };
        BTreeMap::from([
            ("cpu", cpu),
            (
                "memory",
                located(
                    "memory",
                    "memory",
                    "memory.current, memory.stat, memory.events",
                    "memory.usage_in_bytes, memory.stat, memory.failcnt, memory.oom_control",
                ),
            ),
            ("block_io", block_io),
            (
                "pids",
                located(
                    "pids",
                    "pids",
                    "pids.current, pids.max",
                    "pids.current, pids.max",
                ),
            ),
            ("pressure", pressure),
            (
                "network",
                "/proc/<pid>/net/dev of a member process, once per network namespace".to_owned(),
            ),
        ])
    }

    /// Reads a container's counters, or `None` if its cgroup no longer exists.
    /// `search_children`: look for member processes in child cgroups too (LXC).
    pub fn read(
        &mut self,
        relative_path: &str,
        search_children: bool,
    ) -> Option<ContainerCounters> {
        let mut errors = Vec::new();
        let limits = self.cached_limits(relative_path, &mut errors);
        // The member list is read first: a cgroup removed since discovery ends here.
        let processes = self.processes(limits.member_dir.as_deref()?, search_children)?;
        Some(ContainerCounters {
            cpu: self.cpu(relative_path, &limits, &mut errors),
            memory: self.memory(relative_path, &limits, &mut errors),
            block_io: self.block_io(relative_path, &limits, &mut errors),
            pids: self.pids(relative_path, &limits, &mut errors),
            pressure: self.pressure(relative_path, &mut errors),
            processes,
            frozen: self.frozen(relative_path),
            errors,
        })
    }

    fn cached_limits(&mut self, relative: &str, errors: &mut Vec<SourceError>) -> Limits {
        match self.limits.get(relative) {
            Some((read_in, limits))
                if self.cycle.saturating_sub(*read_in) < LIMITS_REFRESH_CYCLES =>
            {
                limits.clone()
            }
            _ => {
                let limits = self.read_limits(relative, errors);
                self.limits
                    .insert(relative.to_owned(), (self.cycle, limits.clone()));
                limits
            }
        }
    }

    fn read_limits(&mut self, relative: &str, errors: &mut Vec<SourceError>) -> Limits {
        let mut limits = Limits {
            member_dir: self.member_dir(relative),
            ..Limits::default()
        };
        let open = |root: &PathBuf| Some(CgroupDir::at(root.join(relative)));
        let unified = self.hierarchies.unified.as_ref().and_then(open);
        if self.cpu_from_unified() {
            if let Some(dir) = &unified {
                limits.cpu_cores = self
                    .optional(dir, "cpu.max", files::cpu_max, errors)
                    .flatten();
            }
        } else if let Some(dir) = self.hierarchies.v1.get("cpu").and_then(open) {
            let quota = self.setting(&dir, "cpu.cfs_quota_us", signed, errors);
            let period = self.setting(&dir, "cpu.cfs_period_us", files::single, errors);
            limits.cpu_cores = quota
                .zip(period)
                .and_then(|(quota, period)| files::cores(quota, period));
        }
        // (directory, whether it is cgroup2) of each controller, resolved up front.
        let hierarchies = &self.hierarchies;
        let dir_of = |v2, v1| {
            let hierarchy = hierarchies.locate(v2, v1)?;
            Some((
                open(&hierarchy.root().to_path_buf())?,
                matches!(hierarchy, Hierarchy::Unified(_)),
            ))
        };
        let (memory, pids, blkio) = (
            dir_of("memory", "memory"),
            dir_of("pids", "pids"),
            dir_of("io", "blkio"),
        );
        if let Some((dir, unified)) = memory {
            let name = if unified {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            limits.memory = self.setting(&dir, name, files::limit, errors).flatten();
        }
        if let Some((dir, _)) = pids {
            limits.pids = self
                .optional(&dir, "pids.max", files::limit, errors)
                .flatten();
        }
        if let Some((dir, false)) = blkio {
            limits.blkio_rule = ["read_bps", "write_bps", "read_iops", "write_iops"]
                .iter()
                .any(|kind| {
                    let name = format!("blkio.throttle.{kind}_device");
                    self.setting(&dir, &name, |text| Ok(!text.trim().is_empty()), errors)
                        == Some(true)
                });
        }
        limits
    }

    /// The container's directory in the hierarchy that lists its processes
    /// (`None` once the cgroup is gone).
    fn member_dir(&self, relative_path: &str) -> Option<PathBuf> {
        let unified = self.hierarchies.unified.iter();
        let v1 = ["memory", "pids", "cpu", "cpuacct"]
            .iter()
            .filter_map(|controller| self.hierarchies.v1.get(*controller));
        unified
            .chain(v1)
            .map(|root| root.join(relative_path))
            .find(|dir| dir.is_dir())
    }

    fn cpu(
        &mut self,
        relative: &str,
        limits: &Limits,
        errors: &mut Vec<SourceError>,
    ) -> Result<CpuCounters, String> {
        let unified = self
            .hierarchies
            .unified
            .clone()
            .map(|root| root.join(relative));
        match unified.filter(|dir| self.cpu_from_unified() && dir.is_dir()) {
            Some(path) => {
                let dir = CgroupDir::at(path);
                let stat = self.required(&dir, "cpu.stat", files::flat_keyed, errors)?;
                let usec = |key: &str| stat.get(key).map(|value| value.saturating_mul(1000));
                let usage_ns = usec("usage_usec").ok_or("cpu.stat has no usage_usec")?;
                let throttling = stat.get("nr_periods").map(|&periods| Throttling {
                    periods,
                    throttled_periods: stat.get("nr_throttled").copied().unwrap_or(0),
                    throttled_ns: usec("throttled_usec").unwrap_or(0),
                });
                Ok(CpuCounters {
                    usage_ns,
                    user_ns: usec("user_usec"),
                    system_ns: usec("system_usec"),
                    throttling,
                    limit_cores: limits.cpu_cores,
                })
            }
            None => self.cpu_v1(relative, limits, errors),
        }
    }

    fn cpu_v1(
        &mut self,
        relative: &str,
        limits: &Limits,
        errors: &mut Vec<SourceError>,
    ) -> Result<CpuCounters, String> {
        let cpuacct = CgroupDir::at(
            self.hierarchies
                .v1
                .get("cpuacct")
                .ok_or("no cpuacct controller mounted")?
                .join(relative),
        );
        // cpuacct.usage is the scheduler's precise runtime; usage_all's user/system split
        // is tick-based cputime (their sum differs), so it only provides the split.
        let usage_ns = self.required(&cpuacct, "cpuacct.usage", files::single, errors)?;
        let split = self.optional(
            &cpuacct,
            "cpuacct.usage_all",
            files::cpuacct_usage_all,
            errors,
        );
        let (user_ns, system_ns) = (split.map(|(user, _)| user), split.map(|(_, system)| system));
        let mut throttling = None;
        if let Some(cpu) = self
            .hierarchies
            .v1
            .get("cpu")
            .map(|root| CgroupDir::at(root.join(relative)))
        {
            throttling = self
                .optional(&cpu, "cpu.stat", files::flat_keyed, errors)
                .and_then(|stat| {
                    Some(Throttling {
                        periods: *stat.get("nr_periods")?,
                        throttled_periods: *stat.get("nr_throttled")?,
                        throttled_ns: *stat.get("throttled_time")?,
                    })
                });
        }
        Ok(CpuCounters {
            usage_ns,
            user_ns,
            system_ns,
            throttling,
            limit_cores: limits.cpu_cores,
        })
    }

    fn memory(
        &mut self,
        relative: &str,
        limits: &Limits,
        errors: &mut Vec<SourceError>,
    ) -> Result<MemoryCounters, String> {
        let hierarchy = self
            .hierarchies
            .locate("memory", "memory")
            .ok_or("no memory controller")?;
        let dir = CgroupDir::at(hierarchy.root().join(relative));
        match hierarchy {
            Hierarchy::Unified(_) => {
                let usage = self.required(&dir, "memory.current", files::single, errors)?;
                let stat = self.required(&dir, "memory.stat", files::flat_keyed, errors)?;
                let events = self.optional(&dir, "memory.events", files::flat_keyed, errors);
                let event = |key: &str| events.as_ref().and_then(|events| events.get(key).copied());
                let value = |key: &str| stat.get(key).copied().unwrap_or(0);
                Ok(MemoryCounters {
                    usage,
                    limit: limits.memory,
                    anon: value("anon"),
                    file: value("file"),
                    active_file: value("active_file"),
                    inactive_file: value("inactive_file"),
                    kernel: stat.get("kernel").copied(),
                    slab: stat.get("slab").copied(),
                    swap: self.optional(&dir, "memory.swap.current", files::single, errors),
                    oom_events: event("oom"),
                    oom_kills: event("oom_kill"),
                    limit_hits: event("max"),
                })
            }
            Hierarchy::V1(_) => {
                let usage = self.required(&dir, "memory.usage_in_bytes", files::single, errors)?;
                let stat = self.required(&dir, "memory.stat", files::flat_keyed, errors)?;
                // total_* keys include descendants, as usage_in_bytes does.
                let value = |key: &str| stat.get(key).copied().unwrap_or(0);
                let oom = self.optional(&dir, "memory.oom_control", files::flat_keyed, errors);
                Ok(MemoryCounters {
                    usage,
                    limit: limits.memory,
                    anon: value("total_rss") + value("total_shmem"),
                    file: value("total_cache"),
                    active_file: value("total_active_file"),
                    inactive_file: value("total_inactive_file"),
                    kernel: self.optional(
                        &dir,
                        "memory.kmem.usage_in_bytes",
                        files::single,
                        errors,
                    ),
                    slab: None,
                    // Present only with swap accounting (memsw) enabled.
                    swap: stat.get("total_swap").copied(),
                    oom_events: None,
                    oom_kills: oom.and_then(|oom| oom.get("oom_kill").copied()),
                    limit_hits: self.optional(&dir, "memory.failcnt", files::single, errors),
                })
            }
        }
    }

    fn block_io(
        &mut self,
        relative: &str,
        limits: &Limits,
        errors: &mut Vec<SourceError>,
    ) -> Result<BlockIoCounters, String> {
        let hierarchy = self
            .hierarchies
            .locate("io", "blkio")
            .ok_or("no io/blkio controller")?;
        if let Hierarchy::V1(_) = hierarchy
            && !limits.blkio_rule
        {
            return Err(V1_BLKIO_WITHOUT_RULE.into());
        }
        let dir = CgroupDir::at(hierarchy.root().join(relative));
        if let Hierarchy::Unified(_) = hierarchy {
            let devices = self.required(&dir, "io.stat", files::io_stat, errors)?;
            return Ok(BlockIoCounters {
                source: "io.stat",
                devices,
            });
        }
        let bytes = self.required(
            &dir,
            "blkio.throttle.io_service_bytes_recursive",
            files::blkio_v1,
            errors,
        )?;
        let ops = self.required(
            &dir,
            "blkio.throttle.io_serviced_recursive",
            files::blkio_v1,
            errors,
        )?;
        let devices = bytes
            .iter()
            .map(
                |&(major, minor, [read_bytes, write_bytes, discard_bytes])| {
                    let [reads, writes, discards] = ops
                        .iter()
                        .find(|(ma, mi, _)| (*ma, *mi) == (major, minor))
                        .map_or([0; 3], |(_, _, counts)| *counts);
                    files::DeviceIo {
                        major,
                        minor,
                        read_bytes,
                        write_bytes,
                        discard_bytes,
                        reads,
                        writes,
                        discards,
                    }
                },
            )
            .collect();
        Ok(BlockIoCounters {
            source: "blkio.throttle.io_service_bytes_recursive",
            devices,
        })
    }

    fn pids(
        &mut self,
        relative: &str,
        limits: &Limits,
        errors: &mut Vec<SourceError>,
    ) -> Result<PidsCounters, String> {
        let dir = CgroupDir::at(
            self.hierarchies
                .locate("pids", "pids")
                .ok_or("no pids controller")?
                .root()
                .join(relative),
        );
        Ok(PidsCounters {
            current: self.required(&dir, "pids.current", files::single, errors)?,
            limit: limits.pids,
        })
    }

    fn pressure(
        &mut self,
        relative: &str,
        errors: &mut Vec<SourceError>,
    ) -> Result<PressureCounters, String> {
        if !self.psi_enabled {
            return Err("PSI is disabled in this kernel (boot with psi=1)".into());
        }
        let dir = self
            .hierarchies
            .unified
            .as_ref()
            .map(|root| root.join(relative))
            .filter(|path| path.is_dir())
            .map(CgroupDir::at)
            .ok_or("PSI needs the container's cgroup2 directory")?;
        Ok(PressureCounters {
            cpu: self.optional(&dir, "cpu.pressure", files::pressure, errors),
            memory: self.optional(&dir, "memory.pressure", files::pressure, errors),
            io: self.optional(&dir, "io.pressure", files::pressure, errors),
        })
    }

    /// Members of the cgroup; with `search_children`, of its first non-empty
    /// descendant (LXC and nested systemd put processes in children), a few levels down.
    /// `None` when the cgroup itself is gone.
    fn processes(&mut self, top: &std::path::Path, search_children: bool) -> Option<Vec<u32>> {
        let mut pending = vec![(top.to_path_buf(), 0)];
        while let Some((dir, depth)) = pending.pop() {
            let members = self
                .read_cached(dir.join("cgroup.procs"), |text| {
                    Ok(text
                        .lines()
                        .filter_map(|line| line.trim().parse().ok())
                        .collect::<Vec<u32>>())
                })
                .or_else(|error| {
                    // The directory itself gone (not just an unreadable list) means the cgroup is.
                    if error.is_not_found() && depth == 0 && !top.is_dir() {
                        Err(())
                    } else {
                        Ok(Vec::new())
                    }
                });
            let Ok(members) = members else { return None };
            if !members.is_empty() {
                return Some(members);
            }
            if search_children
                && depth < 3
                && let Ok(entries) = std::fs::read_dir(&dir)
            {
                pending.extend(
                    entries
                        .flatten()
                        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                        .map(|entry| (entry.path(), depth + 1)),
                );
            }
        }
        Some(Vec::new())
    }

    fn frozen(&mut self, relative: &str) -> bool {
        if let Some(freezer) = self.hierarchies.v1.get("freezer") {
            let path = freezer.join(relative).join("freezer.state");
            return self
                .read_cached(path, |text| Ok(text.trim() == "FROZEN"))
                .unwrap_or(false);
        }
        let Some(unified) = &self.hierarchies.unified else {
            return false;
        };
        let path = unified.join(relative).join("cgroup.events");
        self.read_cached(path, files::flat_keyed)
            .is_ok_and(|events| events.get("frozen") == Some(&1))
    }

    /// A file the family cannot do without: any failure makes the family unavailable.
    fn required<T>(
        &mut self,
        dir: &CgroupDir,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
        errors: &mut Vec<SourceError>,
    ) -> Result<T, String> {
        self.read_cached(dir.path.join(name), parse)
            .map_err(|error| {
                let message = error.to_string();
                if !error.is_not_found() {
                    errors.push(error);
                }
                message
            })
    }

    /// A file that may legitimately be absent (feature not compiled in, swap accounting off).
    fn optional<T>(
        &mut self,
        dir: &CgroupDir,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
        errors: &mut Vec<SourceError>,
    ) -> Option<T> {
        let result = self.read_cached(dir.path.join(name), parse);
        absent_or_recorded(result, errors)
    }

    /// Like [`Self::optional`] for settings, which are read every few cycles: not
    /// worth keeping open.
    fn setting<T>(
        &mut self,
        dir: &CgroupDir,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
        errors: &mut Vec<SourceError>,
    ) -> Option<T> {
        let result = self.text.read_path(&dir.path.join(name), parse);
        absent_or_recorded(result, errors)
    }

    /// Reads a cgroup file through the open-file cache: a cached file is re-read in
    /// place (one syscall); a new one is opened and kept while the budget allows; a
    /// cached file that fails (its cgroup was removed) is dropped and opened afresh.
    fn read_cached<T>(
        &mut self,
        path: PathBuf,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, SourceError> {
        let reread = match self.open_files.get_mut(&path) {
            Some((file, used)) => {
                *used = self.cycle;
                self.text.load(file).is_ok()
            }
            None => false,
        };
        if !reread {
            self.open_files.remove(&path);
            let io_error = |source| SourceError::Io {
                path: path.clone(),
                source,
            };
            let file = std::fs::File::open(&path).map_err(io_error)?;
            self.text.load(&file).map_err(io_error)?;
            if self.open_files.len() < self.open_file_budget {
                self.open_files.insert(path.clone(), (file, self.cycle));
            }
        }
        self.text.parse_loaded(&path, parse)
    }
}

/// A missing file is simply absent; any other failure is recorded.
fn absent_or_recorded<T>(
    result: Result<T, SourceError>,
    errors: &mut Vec<SourceError>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) if error.is_not_found() => None,
        Err(error) => {
            errors.push(error);
            None
        }
    }
}

/// A cgroup directory whose files a family reads.
struct CgroupDir {
    path: PathBuf,
}

impl CgroupDir {
    fn at(path: PathBuf) -> Self {
        Self { path }
    }
}

/// How many cgroup files may stay open: the open-files limit (raised from its soft to
/// its hard value, which needs no privilege) less a reserve for sockets and the rest.
fn open_file_budget() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const RESERVE: u64 = 512;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    usize::try_from(limit.saturating_sub(RESERVE)).unwrap_or(usize::MAX)
}

/// v1 `cpu.cfs_quota_us` is signed (-1 = unlimited).
fn signed(text: &str) -> Result<i64, ParseError> {
    let value = text.trim();
    value
        .parse()
        .map_err(|_| ParseError::new(1, format!("{value:?} is not an integer")))
}
