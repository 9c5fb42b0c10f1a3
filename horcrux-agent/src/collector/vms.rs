//! The VM collector: each cycle finds the QEMU processes ([`crate::vm::qemu`]) and
//! libvirt's domains ([`crate::vm::libvirt`]), joins them by uuid, asks each plain
//! QEMU's QMP monitor ([`crate::vm::qmp`]), reads the vCPU threads' scheduler
//! statistics and the VM's own cgroup, and derives rates. Between cycles,
//! [`VmCollector::watch_states`] follows libvirt's events as they come, checks
//! every 200 ms that each QEMU still runs and polls plain QEMUs' QMP state every
//! second, so state changes are reported within a second or so, not at the next
//! cycle.
//!
//! VM state is keyed by [`VmKey`] (libvirt uuid, or QEMU pid and start time), never
//! by name alone: two VMs may share a name.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{Receiver, Sender, channel},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    cgroup::{Hierarchies, stats::CgroupReader},
    collector::{
        cgroup::CgroupRates,
        containers::ContainerSettings,
        ebpf::{CgroupEbpf, EbpfIntervals, ebpf_metrics, ebpf_shares},
        network_totals,
    },
    ebpf::counters::EbpfCounters,
    health::CollectorHealth,
    messages::VmStatusChanged,
    model::{
        KvmStats, NetworkTotals, Vcpu, VmCgroup, VmCpu, VmDisk, VmInterface, VmMemory, VmMetrics,
        VmProcess, VmRates, VmSource, VmState,
    },
    probe::{Probe, Prober},
    procfs::{TextReader, netdev},
    rates::{Decrease, RateTracker},
    vm::{
        libvirt::{DomainEvent, Libvirt, LibvirtDomain},
        qemu::{self, QemuProcess},
        qmp::{self, Depth, QmpReport},
    },
};

const COLLECTOR: &str = "vms";
/// One QMP round (connect, greeting, queries) at most.
const QMP_TIMEOUT: Duration = Duration::from_secs(1);
/// A failing QMP socket is retried after this, doubling up to [`MAX_QMP_BACKOFF`].
const FIRST_QMP_BACKOFF: Duration = Duration::from_secs(5);
const MAX_QMP_BACKOFF: Duration = Duration::from_secs(300);
/// The `/proc` scan, when it does not answer (a process stuck holding its memory lock).
const SCAN_TIMEOUT: Duration = Duration::from_secs(2);
/// The system daemon's read-only sockets (monolithic libvirtd, modular virtqemud).
const LIBVIRT_SOCKETS: &[&str] = &[
    "/run/libvirt/libvirt-sock-ro",
    "/run/libvirt/virtqemud-sock-ro",
];

/// libvirt as this agent reads it.
enum LibvirtSource {
    /// Not read, and why.
    Off(String),
    /// To load (the URI) once its daemon runs.
    NotLoaded(String),
    /// Shared with the prober's worker.
    Loaded(Arc<Mutex<Libvirt>>),
}

/// The system libvirt daemon's QEMU pid files.
const LIBVIRT_RUN_DIR: &str = "/run/libvirt/qemu";
/// How often plain QEMUs' QMP state is polled between cycles (a round costs
/// QEMU and the agent a few hundred µs, so not more often).
pub const STATE_POLL: Duration = Duration::from_secs(1);
/// How often the VMs' QEMU processes are checked for having exited (a `stat` read
/// each).
pub const LIVENESS_POLL: Duration = Duration::from_millis(200);

/// What tells one VM from another across cycles.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmKey {
    Libvirt(String),
    Qemu { pid: u32, start_ticks: u64 },
}

/// Which VM sources this host has, for `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VmSourcesStatus {
    /// `"connected to qemu:///system"`, or why not.
    pub libvirt: String,
    pub libvirt_connected: bool,
    pub libvirt_domains: usize,
    /// Trusted QEMU processes found in `/proc`.
    pub qemu_processes: usize,
    /// QMP sockets answered in the last cycle.
    pub qmp_sockets: Vec<String>,
    /// QMP sockets that failed, with why (retried with backoff).
    pub qmp_failures: BTreeMap<String, String>,
    /// VMs with KVM statistics in the last cycle.
    pub kvm_stats_vms: usize,
    /// QEMU processes left out by the VM caps (`max_containers`, per user).
    pub over_limits: u64,
    /// Why there is nothing to report, when there is not.
    pub note: Option<String>,
}

/// What one cycle found.
pub struct VmCycle {
    pub vms: Vec<VmMetrics>,
    pub changes: Vec<VmStatusChanged>,
    pub sources: VmSourcesStatus,
}

struct QmpBackoff {
    retry_at: Instant,
    delay: Duration,
}

/// What the state watch needs of each VM between cycles.
#[derive(Debug, Clone)]
struct Known {
    id: String,
    name: Option<String>,
    source: VmSource,
    state: VmState,
    process: Option<(u32, u64)>,
    qmp_socket: Option<PathBuf>,
}

pub struct VmCollector {
    proc_root: PathBuf,
    reader: CgroupReader,
    settings: ContainerSettings,
    libvirt: LibvirtSource,
    /// Kept to hand to libvirt when it is loaded later.
    events_tx: Sender<DomainEvent>,
    events: Receiver<DomainEvent>,
    prober: Prober,
    scanner: Option<qemu::QemuScanner>,
    /// QMP rounds run here: a socket on a hung mount costs one timeout.
    qmp_prober: Prober,
    qmp_backoff: HashMap<VmKey, QmpBackoff>,
    /// Where each plain QEMU's balloon device is (QOM path).
    balloon_paths: HashMap<VmKey, String>,
    qmp_failures: BTreeMap<String, String>,
    proc: TextReader,
    /// Process CPU ticks.
    process_cpu: RateTracker<VmKey, 1>,
    /// vCPU on-CPU and run-queue wait ns, by VM and vCPU index.
    vcpu_time: RateTracker<(VmKey, u32), 2>,
    /// Guest disk read/write bytes, guest rx/tx bytes (summed).
    guest_io: RateTracker<VmKey, 4>,
    cgroup_rates: CgroupRates,
    ebpf_intervals: HashMap<VmKey, EbpfIntervals>,
    known: BTreeMap<VmKey, Known>,
    next_liveness: Instant,
    next_state_poll: Instant,
    /// Where libvirt keeps its QEMUs' pid files.
    libvirt_run_dir: PathBuf,
    clock_ticks: f64,
    page_size: u64,
    pub health: CollectorHealth,
}

impl VmCollector {
    pub fn new(
        proc_root: impl Into<PathBuf>,
        hierarchies: Hierarchies,
        psi_enabled: bool,
        settings: ContainerSettings,
        libvirt_uri: Option<&str>,
    ) -> Self {
        let proc_root = proc_root.into();
        let (events_tx, events) = channel();
        let libvirt = match libvirt_uri {
            Some(uri) => LibvirtSource::NotLoaded(uri.to_owned()),
            None => LibvirtSource::Off("not read: [vms] libvirt_uri is empty".into()),
        };
        Self {
            reader: CgroupReader::new(hierarchies, psi_enabled),
            settings,
            libvirt,
            events_tx,
            events,
            prober: Prober::new(SCAN_TIMEOUT),
            scanner: Some(qemu::QemuScanner::default()),
            qmp_prober: Prober::new(QMP_TIMEOUT + Duration::from_millis(500)),
            qmp_backoff: HashMap::new(),
            balloon_paths: HashMap::new(),
            qmp_failures: BTreeMap::new(),
            proc: TextReader::new(proc_root.clone()),
            proc_root,
            process_cpu: RateTracker::new(Decrease::Reset),
            vcpu_time: RateTracker::new(Decrease::Reset),
            guest_io: RateTracker::new(Decrease::Reset),
            cgroup_rates: CgroupRates::default(),
            ebpf_intervals: HashMap::new(),
            known: BTreeMap::new(),
            next_liveness: Instant::now(),
            next_state_poll: Instant::now(),
            libvirt_run_dir: PathBuf::from(LIBVIRT_RUN_DIR),
            clock_ticks: nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .map_or(100.0, |ticks| ticks as f64),
            page_size: nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()
                .map_or(4096, |size| size as u64),
            health: CollectorHealth::default(),
        }
    }

    /// One full cycle. `ebpf`: the latest eBPF counters, if any program is attached.
    pub fn collect(&mut self, timestamp: u64, ebpf: Option<&EbpfCounters>) -> VmCycle {
        let mut sources = VmSourcesStatus::default();
        let proc_root = self.proc_root.clone();
        // The scanner goes to the worker and comes back (a stuck one is replaced).
        let mut scanner = self.scanner.take().unwrap_or_default();
        let processes = match self.prober.run("/proc scan for QEMU", move || {
            let processes = scanner.scan(&proc_root);
            (scanner, processes)
        }) {
            Probe::Done((scanner, processes)) => {
                self.scanner = Some(scanner);
                processes
            }
            Probe::Stale => {
                self.health.record_error(
                    COLLECTOR,
                    "/proc scan",
                    "the /proc scan for QEMU processes did not answer in time".into(),
                    timestamp,
                );
                Vec::new()
            }
        };
        sources.qemu_processes = processes.len();
        let (processes, over_limits) = admit(processes, &self.settings);
        sources.over_limits = over_limits;
        let domains = self.libvirt_domains(&mut sources);
        let targets = join(domains, processes, &self.libvirt_run_dir);
        let now = Instant::now();
        self.process_cpu.begin(now);
        self.vcpu_time.begin(now);
        self.guest_io.begin(now);
        self.cgroup_rates.begin(now);
        let host_interfaces = self.host_interfaces(timestamp);
        let device_names =
            super::device_names(&mut self.proc, &mut self.health, COLLECTOR, timestamp);
        let cgroup_paths: Vec<Option<String>> = targets
            .iter()
            .map(|target| {
                target
                    .process
                    .as_ref()
                    .and_then(|process| self.own_cgroup(process))
            })
            .collect();
        self.reader
            .begin_cycle(cgroup_paths.iter().flatten().map(String::as_str));
        // The eBPF counters are keyed by the same relative paths (as containers');
        // VMs without a cgroup of their own get no share.
        let own: Vec<&str> = cgroup_paths.iter().flatten().map(String::as_str).collect();
        let mut owned_shares = ebpf_shares(ebpf, &own).into_iter();
        let mut shares: Vec<Option<CgroupEbpf>> = cgroup_paths
            .iter()
            .map(|path| path.as_ref().and_then(|_| owned_shares.next()))
            .collect();
        let live: HashSet<&VmKey> = targets.iter().map(|target| &target.key).collect();
        self.ebpf_intervals.retain(|key, _| live.contains(key));
        self.qmp_backoff.retain(|key, _| live.contains(key));
        self.balloon_paths.retain(|key, _| live.contains(key));
        let previous = std::mem::take(&mut self.known);
        let mut vms = Vec::with_capacity(targets.len());
        for ((target, cgroup_path), share) in
            targets.into_iter().zip(cgroup_paths).zip(shares.drain(..))
        {
            let mut unavailable = BTreeMap::new();
            let qmp = self.qmp(&target, &mut sources);
            let cgroup = match cgroup_path {
                Some(path) => self.reader.read(&path, true).map(|mut counters| {
                    for error in &counters.errors {
                        let file = error.path().file_name().map(|name| name.to_string_lossy());
                        self.health.record_error(
                            COLLECTOR,
                            &format!("cgroup {}", file.unwrap_or_default()),
                            error.to_string(),
                            timestamp,
                        );
                    }
                    VmCgroup {
                        usage: self.cgroup_rates.usage(
                            &path,
                            &mut counters,
                            &device_names,
                            &mut unavailable,
                        ),
                        path: format!("/{path}"),
                    }
                }),
                None => None,
            };
            if cgroup.is_none() && target.process.is_some() {
                unavailable.insert(
                    "cgroup",
                    "the QEMU process shares its cgroup with other processes (no cgroup of its own)"
                        .to_owned(),
                );
            }
            let ebpf = ebpf
                .zip(share.filter(|_| cgroup.is_some()))
                .map(|(ebpf, share)| {
                    let intervals = self.ebpf_intervals.entry(target.key.clone()).or_default();
                    Box::new(ebpf_metrics(ebpf.since, &share, &device_names, intervals))
                });
            let vm = self.metrics(
                target,
                qmp,
                cgroup,
                ebpf,
                &host_interfaces,
                unavailable,
                timestamp,
            );
            if vm.kvm.is_some() {
                sources.kvm_stats_vms += 1;
            }
            vms.push(vm);
        }
        vms.sort_by(|a, b| a.id.cmp(&b.id).then(a.pid.cmp(&b.pid)));
        sources.qmp_failures = self.qmp_failures.clone();
        if vms.is_empty() {
            sources.note = Some(format!(
                "no VMs: {} QEMU processes; libvirt: {}",
                sources.qemu_processes, sources.libvirt
            ));
        }
        let changes = self.state_changes(previous, timestamp);
        VmCycle {
            vms,
            changes,
            sources,
        }
    }

    /// Every libvirt domain, loading libvirt once its daemon is there. The calls run
    /// on the prober's worker under a timeout (a hung daemon costs one timeout;
    /// keep-alive then closes the connection).
    fn libvirt_domains(&mut self, sources: &mut VmSourcesStatus) -> Vec<LibvirtDomain> {
        if let LibvirtSource::NotLoaded(uri) = &self.libvirt {
            if uri == crate::config::DEFAULT_LIBVIRT_URI
                && !LIBVIRT_SOCKETS
                    .iter()
                    .any(|socket| Path::new(socket).exists())
            {
                // Not loaded without a daemon: libvirt.so and its libraries would
                // cost ~15 MiB of resident memory for nothing.
                sources.libvirt = format!(
                    "no libvirt daemon (none of {} exists)",
                    LIBVIRT_SOCKETS.join(", ")
                );
                return Vec::new();
            }
            self.libvirt = match Libvirt::load(uri, self.events_tx.clone()) {
                Ok(libvirt) => LibvirtSource::Loaded(Arc::new(Mutex::new(libvirt))),
                Err(error) => LibvirtSource::Off(error),
            };
        }
        let libvirt = match &self.libvirt {
            LibvirtSource::Loaded(libvirt) => Arc::clone(libvirt),
            LibvirtSource::Off(why) | LibvirtSource::NotLoaded(why) => {
                sources.libvirt = why.clone();
                return Vec::new();
            }
        };
        let outcome = self.prober.run("libvirt", move || {
            let mut libvirt = libvirt.lock().unwrap_or_else(PoisonError::into_inner);
            libvirt
                .stats()
                .map(|domains| (domains, libvirt.uri().into_owned()))
        });
        match outcome {
            Probe::Done(Ok((domains, uri))) => {
                sources.libvirt = format!("connected to {uri}");
                sources.libvirt_connected = true;
                sources.libvirt_domains = domains.len();
                domains
            }
            Probe::Done(Err(error)) => {
                sources.libvirt = error;
                Vec::new()
            }
            Probe::Stale => {
                sources.libvirt = "the libvirt daemon did not answer in time".into();
                Vec::new()
            }
        }
    }

    /// Between cycles: libvirt events as they come, every [`LIVENESS_POLL`] whether
    /// each VM's QEMU still runs, and every [`STATE_POLL`] the QMP state of plain
    /// QEMUs. Returns at `until`, or early with the changes seen (the caller
    /// publishes them).
    pub fn watch_states(
        &mut self,
        until: Instant,
        timestamp: impl Fn() -> u64,
    ) -> Vec<VmStatusChanged> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Vec::new();
            }
            let wait = self.next_liveness.min(until).saturating_duration_since(now);
            let mut changes = Vec::new();
            if let Ok(event) = self.events.recv_timeout(wait) {
                changes.extend(self.apply_event(event, timestamp()));
                while let Ok(event) = self.events.try_recv() {
                    changes.extend(self.apply_event(event, timestamp()));
                }
            } else if Instant::now() >= self.next_liveness {
                let now = Instant::now();
                self.next_liveness = now + LIVENESS_POLL;
                let with_qmp = now >= self.next_state_poll;
                if with_qmp {
                    self.next_state_poll = now + STATE_POLL;
                }
                changes = self.poll_states(with_qmp, timestamp());
            }
            if !changes.is_empty() {
                return changes;
            }
        }
    }

    /// The current state of each known VM, after the watch's changes.
    pub fn state_of(&self, vm: &VmMetrics) -> Option<VmState> {
        self.known
            .iter()
            .find(|(_, known)| known.id == vm.id && known.process.map(|(pid, _)| pid) == vm.pid)
            .map(|(_, known)| known.state)
    }

    fn apply_event(&mut self, event: DomainEvent, timestamp: u64) -> Option<VmStatusChanged> {
        let key = VmKey::Libvirt(event.uuid.to_ascii_lowercase());
        let Some(new) = event.state else {
            // Undefined: gone now, not at the next cycle.
            let known = self.known.remove(&key)?;
            return Some(change(&known, Some(known.state), None, timestamp));
        };
        let known = self.known.get_mut(&key)?;
        if known.state == new {
            return None;
        }
        let old = std::mem::replace(&mut known.state, new);
        Some(change(known, Some(old), Some(new), timestamp))
    }

    /// Which VMs' QEMU exited, and (`with_qmp`) the QMP state of plain QEMUs.
    fn poll_states(&mut self, with_qmp: bool, timestamp: u64) -> Vec<VmStatusChanged> {
        let mut changes = Vec::new();
        let keys: Vec<VmKey> = self.known.keys().cloned().collect();
        for key in keys {
            let Some(known) = self.known.get(&key).cloned() else {
                continue;
            };
            let alive = known.process.is_none_or(|(pid, start)| {
                qemu::start_ticks(&self.proc_root.join(pid.to_string())) == Some(start)
            });
            let new = if !alive {
                // libvirt reports its own stop (an event); a plain QEMU that exited is off.
                if known.source == VmSource::Libvirt {
                    continue;
                }
                VmState::Shutoff
            } else if let (true, VmSource::Qemu, Some(socket), Some((pid, _))) =
                (with_qmp, known.source, &known.qmp_socket, known.process)
            {
                let target = QmpTarget {
                    key: key.clone(),
                    pid,
                    socket: socket.clone(),
                };
                match self.qmp_round(&target, Depth::Status) {
                    Some(report) => report.state.unwrap_or(known.state),
                    None => continue,
                }
            } else {
                continue;
            };
            if new != known.state
                && let Some(entry) = self.known.get_mut(&key)
            {
                entry.state = new;
                changes.push(change(entry, Some(known.state), Some(new), timestamp));
            }
        }
        changes
    }

    /// The QMP report of a plain QEMU with a socket, unless it is backing off.
    fn qmp(&mut self, target: &Target, sources: &mut VmSourcesStatus) -> Option<QmpReport> {
        if target.domain.is_some() {
            return None;
        }
        let process = target.process.as_ref()?;
        let socket = process.args.qmp_socket.clone()?;
        let report = self.qmp_round(
            &QmpTarget {
                key: target.key.clone(),
                pid: process.pid,
                socket: socket.clone(),
            },
            Depth::Full {
                balloon_path: self.balloon_paths.get(&target.key).cloned(),
            },
        );
        if let Some(report) = &report {
            sources.qmp_sockets.push(socket.display().to_string());
            if let Some(path) = &report.balloon_path {
                self.balloon_paths.insert(target.key.clone(), path.clone());
            }
        }
        report
    }

    fn qmp_round(&mut self, target: &QmpTarget, depth: Depth) -> Option<QmpReport> {
        if self
            .qmp_backoff
            .get(&target.key)
            .is_some_and(|backoff| Instant::now() < backoff.retry_at)
        {
            return None;
        }
        let (proc_root, pid, socket) = (self.proc_root.clone(), target.pid, target.socket.clone());
        let shown = socket.display().to_string();
        let outcome = self.qmp_prober.run(&format!("qmp {shown}"), move || {
            qmp::query(&proc_root, pid, &socket, depth, QMP_TIMEOUT).map_err(|e| e.to_string())
        });
        let error = match outcome {
            Probe::Done(Ok(report)) => {
                self.qmp_backoff.remove(&target.key);
                self.qmp_failures.remove(&shown);
                return Some(report);
            }
            Probe::Done(Err(error)) => error,
            Probe::Stale => "no answer in time (stuck)".to_owned(),
        };
        let delay = self
            .qmp_backoff
            .get(&target.key)
            .map_or(FIRST_QMP_BACKOFF, |backoff| {
                (backoff.delay * 2).min(MAX_QMP_BACKOFF)
            });
        if self.qmp_failures.get(&shown) != Some(&error) {
            tracing::info!(socket = %shown, pid, "QMP unavailable, retrying in {delay:?}: {error}");
        }
        self.qmp_failures.insert(shown, error);
        self.qmp_backoff.insert(
            target.key.clone(),
            QmpBackoff {
                retry_at: Instant::now() + delay,
                delay,
            },
        );
        None
    }

    /// The VM's own cgroup, relative to the hierarchy roots (the same below each,
    /// as for containers): the process's cgroup in the memory hierarchy with
    /// libvirt's `emulator` (and `libvirt`) levels removed, if only this process
    /// lives in it and below.
    fn own_cgroup(&self, process: &QemuProcess) -> Option<String> {
        let cgroups = qemu::process_cgroups(&self.proc_root, process.pid)?;
        let (root, path) = match self.reader.hierarchies().locate("memory", "memory")? {
            crate::cgroup::Hierarchy::Unified(root) => (root, cgroups.unified.as_deref()?),
            crate::cgroup::Hierarchy::V1(root) => (root, cgroups.v1.get("memory")?.as_str()),
        };
        let path = path.strip_suffix("/emulator").unwrap_or(path);
        let path = path.strip_suffix("/libvirt").unwrap_or(path);
        (!path.is_empty() && only_process_in(&root.join(path), process.pid))
            .then(|| path.to_owned())
    }

    #[allow(clippy::too_many_arguments)]
    fn metrics(
        &mut self,
        target: Target,
        qmp: Option<QmpReport>,
        cgroup: Option<VmCgroup>,
        ebpf: Option<Box<crate::model::EbpfMetrics>>,
        host_interfaces: &HashMap<String, NetworkTotals>,
        mut unavailable: BTreeMap<&'static str, String>,
        timestamp: u64,
    ) -> VmMetrics {
        let Target {
            key,
            domain,
            process,
        } = target;
        let mut sources = Vec::new();
        if domain.is_some() {
            sources.push("libvirt");
        }
        if qmp.is_some() {
            sources.push("qmp");
        }
        let stat = process
            .as_ref()
            .and_then(|process| qemu::process_stat(&self.proc_root, process.pid));
        if stat.is_some() {
            sources.push("proc");
        }
        if cgroup.is_some() {
            sources.push("cgroup");
        }
        let state = domain
            .as_ref()
            .and_then(|domain| domain.state)
            .or_else(|| qmp.as_ref().and_then(|report| report.state))
            .unwrap_or(if process.is_some() {
                VmState::Running
            } else {
                VmState::Shutoff
            });
        let process_metrics = process.as_ref().zip(stat).map(|(process, stat)| {
            let io = qemu::process_io(&self.proc_root, process.pid);
            VmProcess {
                cpu_seconds_total: stat.cpu_ticks as f64 / self.clock_ticks,
                rss_bytes: stat.rss_pages.saturating_mul(self.page_size),
                threads: stat.threads,
                read_bytes_total: io.map(|(read, _)| read),
                write_bytes_total: io.map(|(_, write)| write),
            }
        });
        let cpu = process.as_ref().zip(stat).map(|(process, stat)| {
            let usage_percent = self
                .process_cpu
                .observe(key.clone(), [stat.cpu_ticks])
                .map(|deltas| deltas.per_second()[0] / self.clock_ticks * 100.0);
            self.vcpus(
                &key,
                process,
                qmp.as_ref(),
                domain.as_ref(),
                usage_percent,
                stat.cpu_ticks,
            )
        });
        if cpu.is_none() {
            unavailable.insert("cpu", "the VM has no running QEMU process".to_owned());
        }
        let kvm = cpu.as_ref().and_then(|cpu| {
            let mut per_vcpu = cpu.vcpus.iter().filter_map(|vcpu| vcpu.kvm).peekable();
            per_vcpu.peek()?;
            Some(per_vcpu.fold(KvmStats::default(), add_kvm))
        });
        let disks: Vec<VmDisk> = match (&domain, &qmp) {
            (Some(domain), _) => domain.disks.clone(),
            (None, Some(report)) => report.disks.clone(),
            (None, None) => {
                if process.is_some() {
                    unavailable.insert(
                        "disks",
                        "no QMP socket answered and libvirt does not manage this VM".to_owned(),
                    );
                }
                Vec::new()
            }
        };
        let interfaces: Vec<VmInterface> = match &domain {
            Some(domain) => domain.interfaces.clone(),
            None => process
                .iter()
                .flat_map(|process| process.taps.iter().chain(&process.args.tap_names))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter_map(|tap| {
                    let host = host_interfaces.get(tap)?;
                    Some(VmInterface {
                        device: tap.clone(),
                        counters: guest_side(host),
                    })
                })
                .collect(),
        };
        let rss = process_metrics.as_ref().map(|process| process.rss_bytes);
        let configured = domain
            .as_ref()
            .and_then(|domain| domain.balloon_maximum_bytes)
            .or_else(|| {
                process
                    .as_ref()
                    .and_then(|process| process.args.memory_bytes)
            });
        let memory = (configured.is_some() || rss.is_some()).then(|| VmMemory {
            configured_bytes: configured,
            balloon_actual_bytes: domain
                .as_ref()
                .and_then(|domain| domain.balloon_current_bytes)
                .or_else(|| qmp.as_ref().and_then(|report| report.balloon_actual_bytes)),
            rss_bytes: rss,
            guest: domain
                .as_ref()
                .and_then(|domain| domain.guest_memory.clone())
                .or_else(|| qmp.as_ref().and_then(|report| report.guest_memory.clone())),
        });
        let has_disks = !disks.is_empty() || qmp.is_some() || domain.is_some();
        let has_interfaces = !interfaces.is_empty() || domain.is_some();
        let sum = |values: &mut dyn Iterator<Item = u64>| values.fold(0u64, u64::saturating_add);
        let block_read = has_disks.then(|| sum(&mut disks.iter().map(|d| d.read_bytes_total)));
        let block_write = has_disks.then(|| sum(&mut disks.iter().map(|d| d.write_bytes_total)));
        let network_rx =
            has_interfaces.then(|| sum(&mut interfaces.iter().map(|i| i.counters.rx_bytes_total)));
        let network_tx =
            has_interfaces.then(|| sum(&mut interfaces.iter().map(|i| i.counters.tx_bytes_total)));
        let rates = self
            .guest_io
            .observe(
                key.clone(),
                [
                    block_read.unwrap_or(0),
                    block_write.unwrap_or(0),
                    network_rx.unwrap_or(0),
                    network_tx.unwrap_or(0),
                ],
            )
            .map(|deltas| {
                let [read, write, rx, tx] = deltas.per_second();
                VmRates {
                    block_read_bytes_per_second: read,
                    block_write_bytes_per_second: write,
                    network_rx_bytes_per_second: rx,
                    network_tx_bytes_per_second: tx,
                }
            });
        let name = domain
            .as_ref()
            .map(|domain| domain.name.clone())
            .or_else(|| {
                process
                    .as_ref()
                    .and_then(|process| process.args.name.clone())
            });
        let uuid = domain
            .as_ref()
            .map(|domain| domain.uuid.clone())
            .or_else(|| {
                process
                    .as_ref()
                    .and_then(|process| process.args.uuid.clone())
            });
        let pid = process.as_ref().map(|process| process.pid);
        let id = vm_id(name.as_deref(), uuid.as_deref(), pid);
        let owner_uid = process
            .as_ref()
            .map(|process| process.uid)
            .filter(|&uid| uid != 0);
        let source = if domain.is_some() {
            VmSource::Libvirt
        } else {
            VmSource::Qemu
        };
        self.known.insert(
            key,
            Known {
                id: id.clone(),
                name: name.clone(),
                source,
                state,
                process: process
                    .as_ref()
                    .map(|process| (process.pid, process.start_ticks)),
                qmp_socket: process
                    .as_ref()
                    .filter(|_| source == VmSource::Qemu)
                    .and_then(|process| process.args.qmp_socket.clone()),
            },
        );
        if kvm.is_none() {
            unavailable.insert(
                "kvm",
                "no KVM statistics (not KVM, QEMU before 7.1, or neither QMP nor libvirt)"
                    .to_owned(),
            );
        }
        VmMetrics {
            cpu_usage_percent: cpu.as_ref().and_then(|cpu| cpu.usage_percent),
            memory_usage_bytes: rss,
            memory_limit_bytes: configured,
            block_read_bytes: block_read,
            block_write_bytes: block_write,
            network_rx_bytes: network_rx,
            network_tx_bytes: network_tx,
            rates,
            id,
            name,
            uuid,
            source,
            state,
            pid,
            owner_uid,
            timestamp,
            cpu,
            memory,
            disks,
            interfaces,
            kvm,
            process: process_metrics,
            cgroup,
            ebpf,
            sources,
            unavailable,
        }
    }

    /// Total and per-vCPU CPU: vCPU threads from QMP, else named `CPU n/…`.
    fn vcpus(
        &mut self,
        key: &VmKey,
        process: &QemuProcess,
        qmp: Option<&QmpReport>,
        domain: Option<&LibvirtDomain>,
        usage_percent: Option<f64>,
        cpu_ticks: u64,
    ) -> VmCpu {
        let threads: Vec<(u32, u32)> = match qmp {
            Some(report) if !report.vcpu_threads.is_empty() => report.vcpu_threads.clone(),
            _ => qemu::named_vcpu_threads(&self.proc_root, process.pid)
                .into_iter()
                .map(|thread| (thread.index, thread.thread_id))
                .collect(),
        };
        let kvm_of = |index: u32| {
            qmp.and_then(|report| {
                report
                    .kvm_vcpus
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, stats)| *stats)
            })
            .or_else(|| domain?.vcpus.iter().find(|vcpu| vcpu.index == index)?.kvm)
        };
        let vcpus: Vec<Vcpu> = threads
            .into_iter()
            .filter_map(|(index, thread_id)| {
                let schedstat = qemu::thread_schedstat(&self.proc_root, process.pid, thread_id)?;
                let rates = self
                    .vcpu_time
                    .observe((key.clone(), index), [schedstat.run_ns, schedstat.wait_ns])
                    .map(|deltas| deltas.per_second().map(|ns| ns / 1e7));
                Some(Vcpu {
                    index,
                    thread_id,
                    time_seconds_total: schedstat.run_ns as f64 / 1e9,
                    wait_seconds_total: schedstat.wait_ns as f64 / 1e9,
                    timeslices_total: schedstat.timeslices,
                    usage_percent: rates.map(|[run, _]| run),
                    steal_percent: rates.map(|[_, wait]| wait),
                    kvm: kvm_of(index),
                })
            })
            .collect();
        let usage_seconds_total = cpu_ticks as f64 / self.clock_ticks;
        let vcpu_seconds_total: f64 = vcpus.iter().map(|vcpu| vcpu.time_seconds_total).sum();
        let steal_percent = (!vcpus.is_empty() && vcpus.iter().all(|v| v.steal_percent.is_some()))
            .then(|| {
                vcpus
                    .iter()
                    .filter_map(|vcpu| vcpu.steal_percent)
                    .sum::<f64>()
                    / vcpus.len() as f64
            });
        VmCpu {
            usage_percent,
            usage_seconds_total,
            vcpu_seconds_total,
            emulator_seconds_total: (usage_seconds_total - vcpu_seconds_total).max(0.0),
            steal_seconds_total: vcpus.iter().map(|vcpu| vcpu.wait_seconds_total).sum(),
            steal_percent,
            vcpus,
        }
    }

    /// The host's interfaces (the agent's network namespace: taps live there).
    fn host_interfaces(&mut self, timestamp: u64) -> HashMap<String, NetworkTotals> {
        match self.proc.read("net/dev", netdev::parse) {
            Ok(interfaces) => interfaces
                .iter()
                .map(|interface| (interface.interface.clone(), network_totals(interface)))
                .collect(),
            Err(error) => {
                self.health
                    .record_error(COLLECTOR, "/proc/net/dev", error.to_string(), timestamp);
                HashMap::new()
            }
        }
    }

    /// Changes since the last cycle (`previous`: the states then, as the watch
    /// left them): appeared (old `null`), changed, and gone (new `null`; a plain
    /// QEMU that exited is reported `shutoff` first).
    fn state_changes(
        &self,
        mut previous: BTreeMap<VmKey, Known>,
        timestamp: u64,
    ) -> Vec<VmStatusChanged> {
        let mut changes = Vec::new();
        for (key, known) in &self.known {
            let old = previous.remove(key).map(|old| old.state);
            if old != Some(known.state) {
                changes.push(change(known, old, Some(known.state), timestamp));
            }
        }
        for known in previous.values() {
            // A QEMU that exited between two polls still went through shutoff.
            let mut last = known.state;
            if known.source == VmSource::Qemu && last != VmState::Shutoff {
                changes.push(change(known, Some(last), Some(VmState::Shutoff), timestamp));
                last = VmState::Shutoff;
            }
            changes.push(change(known, Some(last), None, timestamp));
        }
        changes
    }
}

/// A VM this cycle: a libvirt domain, a QEMU process, or both.
struct Target {
    key: VmKey,
    domain: Option<LibvirtDomain>,
    process: Option<QemuProcess>,
}

struct QmpTarget {
    key: VmKey,
    pid: u32,
    socket: PathBuf,
}

/// libvirt's domains with their QEMU process, then the plain QEMUs. A domain's
/// process is the one libvirt's pid file names (`<run_dir>/<name>.pid`, in a
/// root-owned directory), never one that merely claims its uuid on its command
/// line (any user can); without the pid file, a root-owned process with the uuid.
fn join(domains: Vec<LibvirtDomain>, processes: Vec<QemuProcess>, run_dir: &Path) -> Vec<Target> {
    let mut remaining: BTreeMap<u32, QemuProcess> = processes
        .into_iter()
        .map(|process| (process.pid, process))
        .collect();
    let mut targets: Vec<Target> = domains
        .into_iter()
        .map(|domain| {
            let uuid = domain.uuid.to_ascii_lowercase();
            let from_pid_file =
                std::fs::read_to_string(run_dir.join(format!("{}.pid", domain.name)))
                    .ok()
                    .filter(|_| !domain.name.contains('/'))
                    .and_then(|text| text.trim().parse::<u32>().ok());
            let pid = from_pid_file.or_else(|| {
                remaining
                    .values()
                    .find(|process| {
                        process.uid == 0
                            && process
                                .args
                                .uuid
                                .as_deref()
                                .is_some_and(|claimed| claimed.eq_ignore_ascii_case(&uuid))
                    })
                    .map(|process| process.pid)
            });
            let process = domain
                .state
                .filter(|state| *state != VmState::Shutoff)
                .and(pid)
                .and_then(|pid| remaining.remove(&pid));
            Target {
                key: VmKey::Libvirt(uuid),
                domain: Some(domain),
                process,
            }
        })
        .collect();
    targets.extend(remaining.into_values().map(|process| Target {
        key: VmKey::Qemu {
            pid: process.pid,
            start_ticks: process.start_ticks,
        },
        domain: None,
        process: Some(process),
    }));
    targets
}

/// Caps on plain QEMU processes, as for containers: root's first, then each
/// user's up to the per-user cap, all up to the total cap.
fn admit(processes: Vec<QemuProcess>, settings: &ContainerSettings) -> (Vec<QemuProcess>, u64) {
    let (root, users): (Vec<_>, Vec<_>) = processes.into_iter().partition(|p| p.uid == 0);
    let mut per_user: HashMap<u32, usize> = HashMap::new();
    let mut admitted = Vec::new();
    let mut refused = 0;
    for process in root.into_iter().chain(users) {
        let count = per_user.entry(process.uid).or_default();
        if (process.uid != 0 && *count >= settings.max_containers_per_user)
            || admitted.len() >= settings.max_containers
        {
            refused += 1;
            continue;
        }
        *count += 1;
        admitted.push(process);
    }
    (admitted, refused)
}

/// Whether the only process in the cgroup at `dir` (and below) is `pid`.
fn only_process_in(dir: &Path, pid: u32) -> bool {
    let mut pending = vec![dir.to_path_buf()];
    let mut visited = 0;
    let mut found = false;
    while let Some(dir) = pending.pop() {
        visited += 1;
        if visited > 256 {
            return false;
        }
        let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            return false;
        };
        for line in procs.lines() {
            if line.trim().parse::<u32>().ok() != Some(pid) {
                return false;
            }
            found = true;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return false;
        };
        pending.extend(
            entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .map(|entry| entry.path()),
        );
    }
    found
}

/// The spec-style id: the name when it is a well-formed id, else the uuid, else
/// `qemu-<pid>`.
fn vm_id(name: Option<&str>, uuid: Option<&str>, pid: Option<u32>) -> String {
    let well_formed = |text: &&str| {
        !text.is_empty()
            && text.len() <= 128
            && text
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"_.-".contains(&byte))
    };
    name.filter(well_formed)
        .or(uuid.filter(well_formed))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("qemu-{}", pid.unwrap_or(0)))
}

/// A tap's host counters from the guest's side: what the host transmits on the
/// tap, the guest receives.
fn guest_side(host: &NetworkTotals) -> NetworkTotals {
    NetworkTotals {
        rx_bytes_total: host.tx_bytes_total,
        rx_packets_total: host.tx_packets_total,
        rx_errors_total: host.tx_errors_total,
        rx_dropped_total: host.tx_dropped_total,
        tx_bytes_total: host.rx_bytes_total,
        tx_packets_total: host.rx_packets_total,
        tx_errors_total: host.rx_errors_total,
        tx_dropped_total: host.rx_dropped_total,
    }
}

fn add_kvm(sum: KvmStats, vcpu: KvmStats) -> KvmStats {
    KvmStats {
        exits: sum.exits + vcpu.exits,
        halt_exits: sum.halt_exits + vcpu.halt_exits,
        io_exits: sum.io_exits + vcpu.io_exits,
        mmio_exits: sum.mmio_exits + vcpu.mmio_exits,
        halt_successful_poll: sum.halt_successful_poll + vcpu.halt_successful_poll,
        halt_attempted_poll: sum.halt_attempted_poll + vcpu.halt_attempted_poll,
        halt_wakeup: sum.halt_wakeup + vcpu.halt_wakeup,
        halt_poll_success_ns: sum.halt_poll_success_ns + vcpu.halt_poll_success_ns,
        halt_poll_fail_ns: sum.halt_poll_fail_ns + vcpu.halt_poll_fail_ns,
        halt_wait_ns: sum.halt_wait_ns + vcpu.halt_wait_ns,
        pf_fixed: sum.pf_fixed + vcpu.pf_fixed,
        irq_injections: sum.irq_injections + vcpu.irq_injections,
    }
}

fn change(
    known: &Known,
    old: Option<VmState>,
    new: Option<VmState>,
    timestamp: u64,
) -> VmStatusChanged {
    VmStatusChanged {
        kind: "vm",
        vm_id: known.id.clone(),
        name: known.name.clone(),
        runtime: known.source.name(),
        old_status: old.map(VmState::name),
        new_status: new.map(VmState::name),
        timestamp,
    }
}
