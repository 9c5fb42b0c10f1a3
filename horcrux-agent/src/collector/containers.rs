//! The container collector: each cycle discovers container cgroups, admits those
//! the trust rules and caps allow, reads their counters, derives rates through the
//! rate cache, and reports which containers appeared, disappeared or changed state.
//! Every piece of per-container state is keyed by cgroup path, never by id alone:
//! a cgroup that claims another's id cannot touch that container's figures.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    time::Instant,
};

use serde::Serialize;

use crate::{
    cgroup::{
        discovery::{self, DiscoveredContainer},
        files::DeviceIo,
        inodes::nearest_ancestor,
        stats::{BlockIoCounters, CgroupReader, ContainerCounters},
    },
    collector::{
        ebpf::{EbpfIntervals, ebpf_metrics},
        network_totals,
    },
    ebpf::counters::{DeviceOpCounters, EbpfCounters},
    health::CollectorHealth,
    messages::VmStatusChanged,
    model::{
        BlockIoTotals, ContainerBlockIo, ContainerCpu, ContainerDeviceIo, ContainerMemory,
        ContainerMetrics, ContainerNetwork, ContainerPids, ContainerState, ContainerThrottling,
        NetworkMetrics, NetworkTotals, Runtime,
    },
    process::{self, RuntimeNames},
    procfs::{TextReader, diskstats, netdev},
    rates::{Decrease, RateTracker},
};

const COLLECTOR: &str = "containers";
/// Id conflicts listed in the discovery report at most (all are counted).
const MAX_LISTED_CONFLICTS: usize = 20;

/// Caps on what discovery admits (`[monitoring]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerSettings {
    /// `max_containers`: containers collected per cycle at most.
    pub max_containers: usize,
    /// `max_containers_per_user`: rootless containers per user at most.
    pub max_containers_per_user: usize,
}

impl Default for ContainerSettings {
    fn default() -> Self {
        Self {
            max_containers: 10_000,
            max_containers_per_user: 100,
        }
    }
}

/// What discovery accepted, refused and capped in one cycle (`/api/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiscoveryReport {
    pub containers: usize,
    /// Rootless candidates (in a user's delegated subtree) that no runtime process of
    /// that user runs: not containers.
    pub unverified_rootless: u64,
    /// Containers left out by `max_containers` (root containers are kept first).
    pub over_max_containers: u64,
    /// Rootless containers left out by `max_containers_per_user`, per uid.
    pub over_user_limit: BTreeMap<u32, u64>,
    /// The cgroup walk stopped at its directory limit.
    pub walk_truncated: bool,
    /// Ids claimed by more than one cgroup: each is shown, none is merged.
    pub id_conflicts: Vec<IdConflict>,
    pub id_conflict_count: usize,
    /// Runtime metadata or process scans that did not answer in time.
    pub stale_sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdConflict {
    pub id: String,
    pub cgroups: Vec<String>,
}

pub struct ContainerCollector {
    reader: CgroupReader,
    settings: ContainerSettings,
    proc: TextReader,
    proc_root: PathBuf,
    /// The agent's own network namespace: the one the node metrics describe.
    host_netns: Option<u64>,
    names: RuntimeNames,
    /// usage, user, system CPU nanoseconds, by cgroup path.
    cpu_time: RateTracker<String, 3>,
    /// read bytes, write bytes, by cgroup path.
    block_bytes: RateTracker<String, 2>,
    /// rx bytes, tx bytes, by cgroup path (each container is credited its
    /// namespace's traffic).
    network_bytes: RateTracker<String, 2>,
    /// By cgroup path: (state, id, name, runtime).
    states: HashMap<String, (ContainerState, String, Option<String>, Runtime)>,
    ebpf_intervals: HashMap<String, EbpfIntervals>,
    /// The last report's refusals, to log when they change (not every cycle).
    last_refusals: (u64, u64, usize),
    pub health: CollectorHealth,
}

/// One container's share of the eBPF counters: its cgroup and every descendant.
#[derive(Debug, Default)]
struct ContainerEbpf {
    sched: Option<horcrux_common::SchedCounters>,
    block: Option<Vec<DeviceOpCounters>>,
}

/// One cycle's result.
pub struct ContainerCycle {
    pub containers: Vec<ContainerMetrics>,
    pub changes: Vec<VmStatusChanged>,
    pub discovery: DiscoveryReport,
}

impl ContainerCollector {
    pub fn new(
        reader: CgroupReader,
        proc_root: impl Into<PathBuf>,
        settings: ContainerSettings,
    ) -> Self {
        let proc_root = proc_root.into();
        Self {
            settings,
            last_refusals: (0, 0, 0),
            host_netns: process::own_netns_inode(&proc_root).ok(),
            names: RuntimeNames::new(proc_root.clone()),
            proc: TextReader::new(proc_root.clone()),
            proc_root,
            reader,
            cpu_time: RateTracker::new(Decrease::Reset),
            block_bytes: RateTracker::new(Decrease::Reset),
            network_bytes: RateTracker::new(Decrease::Reset),
            states: HashMap::new(),
            ebpf_intervals: HashMap::new(),
            health: CollectorHealth::default(),
        }
    }

    /// `ebpf`: the node collector's latest eBPF counters, if any program is attached.
    pub fn collect(&mut self, timestamp: u64, ebpf: Option<&EbpfCounters>) -> ContainerCycle {
        let found = discovery::discover(&self.reader.hierarchies().discovery_roots());
        let verdict = self.names.refresh(found.containers);
        let (discovered, mut report) = admit(verdict.trusted, &self.settings);
        report.unverified_rootless = verdict.unverified;
        report.walk_truncated = found.truncated;
        report.stale_sources = self.names.stuck();
        self.log_refusals(&report);
        self.reader.begin_cycle(
            discovered
                .iter()
                .map(|container| container.relative_path.as_str()),
        );
        let device_names = self.device_names(timestamp);
        let now = Instant::now();
        self.cpu_time.begin(now);
        self.block_bytes.begin(now);
        self.network_bytes.begin(now);
        let mut namespaces: HashMap<u64, Option<Vec<netdev::NetDevStat>>> = HashMap::new();
        let mut ebpf_shares = ebpf_per_container(ebpf, &discovered);
        if !self.ebpf_intervals.is_empty() {
            let current: HashSet<&str> = discovered
                .iter()
                .map(|c| c.relative_path.as_str())
                .collect();
            self.ebpf_intervals
                .retain(|path, _| current.contains(path.as_str()));
        }
        let mut containers = Vec::with_capacity(discovered.len());
        for (container, ebpf_share) in discovered.into_iter().zip(ebpf_shares.drain(..)) {
            // A cgroup removed since discovery is simply gone, not an error.
            let search_children = container.runtime == Runtime::Lxc;
            let Some(mut counters) = self.reader.read(&container.relative_path, search_children)
            else {
                continue;
            };
            // cgroup v1 blkio counts nothing without a throttle rule: the eBPF block
            // programs close that gap.
            if counters.block_io.is_err()
                && let Some(entries) = &ebpf_share.block
            {
                counters.block_io = Ok(block_io_from_ebpf(entries));
            }
            for error in &counters.errors {
                // Counted by file kind: per-container paths would grow without bound.
                let file = error.path().file_name().map(|name| name.to_string_lossy());
                let source = format!("cgroup {}", file.unwrap_or_default());
                self.health
                    .record_error(COLLECTOR, &source, error.to_string(), timestamp);
            }
            let network = self.network(
                &container.relative_path,
                &counters.processes,
                &mut namespaces,
                timestamp,
            );
            let ebpf = ebpf.map(|ebpf| {
                // Kept only while eBPF is attached; the path is cloned once per container.
                if !self.ebpf_intervals.contains_key(&container.relative_path) {
                    self.ebpf_intervals
                        .insert(container.relative_path.clone(), EbpfIntervals::default());
                }
                let mut unused = EbpfIntervals::default();
                let intervals = self
                    .ebpf_intervals
                    .get_mut(&container.relative_path)
                    .unwrap_or(&mut unused);
                Box::new(ebpf_metrics(
                    ebpf.since,
                    ebpf_share.sched.as_ref(),
                    ebpf_share.block.as_deref(),
                    &device_names,
                    intervals,
                ))
            });
            containers.push(self.metrics(
                container,
                counters,
                network,
                ebpf,
                &device_names,
                timestamp,
            ));
        }
        // A stable order for every output, whatever order the directories were read in.
        containers.sort_unstable_by(|a, b| a.cgroup.cmp(&b.cgroup));
        let changes = self.state_changes(&containers, timestamp);
        report.containers = containers.len();
        ContainerCycle {
            containers,
            changes,
            discovery: report,
        }
    }

    /// Logs refusals and caps when they change, not every cycle.
    fn log_refusals(&mut self, report: &DiscoveryReport) {
        let over_users: u64 = report.over_user_limit.values().sum();
        let refusals = (
            report.unverified_rootless,
            report.over_max_containers + over_users,
            report.id_conflict_count,
        );
        if refusals != self.last_refusals {
            tracing::warn!(
                unverified_rootless = report.unverified_rootless,
                over_max_containers = report.over_max_containers,
                over_user_limit = over_users,
                id_conflicts = report.id_conflict_count,
                "container discovery refused or capped cgroups (see /api/status)"
            );
            self.last_refusals = refusals;
        }
    }

    fn metrics(
        &mut self,
        container: DiscoveredContainer,
        counters: ContainerCounters,
        network: Result<ContainerNetwork, String>,
        ebpf: Option<Box<crate::model::EbpfMetrics>>,
        device_names: &HashMap<(u32, u32), String>,
        timestamp: u64,
    ) -> ContainerMetrics {
        let mut unavailable = BTreeMap::new();
        let cpu = available(&mut unavailable, "cpu", counters.cpu).map(|cpu| {
            let rates = self
                .cpu_time
                .observe(
                    container.relative_path.clone(),
                    [
                        cpu.usage_ns,
                        cpu.user_ns.unwrap_or(0),
                        cpu.system_ns.unwrap_or(0),
                    ],
                )
                .map(|deltas| deltas.per_second().map(|ns_per_second| ns_per_second / 1e7));
            let seconds = |ns: u64| ns as f64 / 1e9;
            ContainerCpu {
                usage_percent: rates.map(|[usage, _, _]| usage),
                user_percent: rates
                    .filter(|_| cpu.user_ns.is_some())
                    .map(|[_, user, _]| user),
                system_percent: rates
                    .filter(|_| cpu.system_ns.is_some())
                    .map(|[_, _, system]| system),
                usage_seconds_total: seconds(cpu.usage_ns),
                user_seconds_total: cpu.user_ns.map(seconds),
                system_seconds_total: cpu.system_ns.map(seconds),
                limit_cores: cpu.limit_cores,
                throttling: cpu.throttling.map(|throttling| ContainerThrottling {
                    periods_total: throttling.periods,
                    throttled_periods_total: throttling.throttled_periods,
                    throttled_seconds_total: seconds(throttling.throttled_ns),
                }),
            }
        });
        let memory =
            available(&mut unavailable, "memory", counters.memory).map(|memory| ContainerMemory {
                usage_bytes: memory.usage,
                limit_bytes: memory.limit,
                working_set_bytes: memory.working_set(),
                anon_bytes: memory.anon,
                file_bytes: memory.file,
                active_file_bytes: memory.active_file,
                inactive_file_bytes: memory.inactive_file,
                kernel_bytes: memory.kernel,
                slab_bytes: memory.slab,
                swap_bytes: memory.swap,
                oom_events_total: memory.oom_events,
                oom_kills_total: memory.oom_kills,
                limit_hits_total: memory.limit_hits,
            });
        let block_io = available(&mut unavailable, "block_io", counters.block_io).map(|block| {
            let devices: Vec<ContainerDeviceIo> = block
                .devices
                .iter()
                .map(|io| ContainerDeviceIo {
                    device: device_names.get(&(io.major, io.minor)).cloned(),
                    major: io.major,
                    minor: io.minor,
                    counters: block_io_totals(io),
                })
                .collect();
            let totals = devices
                .iter()
                .fold(BlockIoTotals::default(), |sum, device| {
                    let d = &device.counters;
                    BlockIoTotals {
                        read_bytes_total: sum.read_bytes_total + d.read_bytes_total,
                        write_bytes_total: sum.write_bytes_total + d.write_bytes_total,
                        discard_bytes_total: sum.discard_bytes_total + d.discard_bytes_total,
                        reads_total: sum.reads_total + d.reads_total,
                        writes_total: sum.writes_total + d.writes_total,
                        discards_total: sum.discards_total + d.discards_total,
                    }
                });
            let rates = self
                .block_bytes
                .observe(
                    container.relative_path.clone(),
                    [totals.read_bytes_total, totals.write_bytes_total],
                )
                .map(|deltas| deltas.per_second());
            ContainerBlockIo {
                source: block.source,
                totals,
                read_bytes_per_second: rates.map(|[read, _]| read),
                write_bytes_per_second: rates.map(|[_, write]| write),
                devices,
            }
        });
        let pids = available(&mut unavailable, "pids", counters.pids).map(|pids| ContainerPids {
            current: pids.current,
            limit: pids.limit,
        });
        let network = available(&mut unavailable, "network", network);
        let pressure = available(&mut unavailable, "pressure", counters.pressure);
        let state = match (counters.frozen, counters.processes.is_empty()) {
            (true, _) => ContainerState::Paused,
            (false, true) => ContainerState::Empty,
            (false, false) => ContainerState::Running,
        };
        ContainerMetrics {
            cpu_usage_percent: cpu.as_ref().and_then(|cpu| cpu.usage_percent),
            memory_usage_bytes: memory.as_ref().map(|memory| memory.usage_bytes),
            memory_limit_bytes: memory.as_ref().and_then(|memory| memory.limit_bytes),
            block_read_bytes: block_io.as_ref().map(|block| block.totals.read_bytes_total),
            block_write_bytes: block_io
                .as_ref()
                .map(|block| block.totals.write_bytes_total),
            network_rx_bytes: network
                .as_ref()
                .map(|network| network.totals.rx_bytes_total),
            network_tx_bytes: network
                .as_ref()
                .map(|network| network.totals.tx_bytes_total),
            name: self.names.name(&container),
            owner_uid: container.owner_uid,
            id: container.id,
            runtime: container.runtime,
            state,
            pod: container.pod,
            cgroup: format!("/{}", container.relative_path),
            timestamp,
            cpu,
            memory,
            block_io,
            pids,
            network,
            pressure,
            ebpf,
            unavailable,
        }
    }

    /// The container's network namespace counters, read once per namespace per cycle.
    fn network(
        &mut self,
        cgroup_path: &str,
        processes: &[u32],
        namespaces: &mut HashMap<u64, Option<Vec<netdev::NetDevStat>>>,
        timestamp: u64,
    ) -> Result<ContainerNetwork, String> {
        let pid = *processes
            .first()
            .ok_or("no process in the container to read its network namespace")?;
        let inode = process::netns_inode(&self.proc_root, pid)
            .map_err(|error| format!("network namespace of pid {pid}: {error}"))?;
        if Some(inode) == self.host_netns {
            return Err(
                "shares the host network namespace; host traffic is not credited to it".into(),
            );
        }
        let interfaces = match namespaces.get(&inode) {
            Some(cached) => cached.clone(),
            None => {
                let read = match self.proc.read(&format!("{pid}/net/dev"), netdev::parse) {
                    Ok(interfaces) => Some(interfaces),
                    Err(error) => {
                        if !error.is_not_found() {
                            self.health.record_error(
                                COLLECTOR,
                                "/proc/<pid>/net/dev",
                                error.to_string(),
                                timestamp,
                            );
                        }
                        None
                    }
                };
                namespaces.insert(inode, read.clone());
                read
            }
        }
        .ok_or_else(|| format!("could not read /proc/{pid}/net/dev"))?;
        let interfaces: Vec<NetworkMetrics> = interfaces
            .iter()
            .map(|net| NetworkMetrics {
                interface: net.interface.clone(),
                counters: network_totals(net),
                rates: None,
            })
            .collect();
        let totals = interfaces.iter().filter(|net| net.interface != "lo").fold(
            NetworkTotals::default(),
            |sum, net| {
                let n = &net.counters;
                NetworkTotals {
                    rx_bytes_total: sum.rx_bytes_total + n.rx_bytes_total,
                    rx_packets_total: sum.rx_packets_total + n.rx_packets_total,
                    rx_errors_total: sum.rx_errors_total + n.rx_errors_total,
                    rx_dropped_total: sum.rx_dropped_total + n.rx_dropped_total,
                    tx_bytes_total: sum.tx_bytes_total + n.tx_bytes_total,
                    tx_packets_total: sum.tx_packets_total + n.tx_packets_total,
                    tx_errors_total: sum.tx_errors_total + n.tx_errors_total,
                    tx_dropped_total: sum.tx_dropped_total + n.tx_dropped_total,
                }
            },
        );
        let rates = self
            .network_bytes
            .observe(
                cgroup_path.to_owned(),
                [totals.rx_bytes_total, totals.tx_bytes_total],
            )
            .map(|deltas| deltas.per_second());
        Ok(ContainerNetwork {
            netns_inode: inode,
            totals,
            rx_bytes_per_second: rates.map(|[rx, _]| rx),
            tx_bytes_per_second: rates.map(|[_, tx]| tx),
            interfaces,
        })
    }

    /// Block device names by major:minor, for per-device container I/O.
    fn device_names(&mut self, timestamp: u64) -> HashMap<(u32, u32), String> {
        match self.proc.read("diskstats", diskstats::parse) {
            Ok(disks) => disks
                .into_iter()
                .map(|disk| ((disk.major, disk.minor), disk.name))
                .collect(),
            Err(error) => {
                let source = error.path().display().to_string();
                self.health
                    .record_error(COLLECTOR, &source, error.to_string(), timestamp);
                HashMap::new()
            }
        }
    }

    fn state_changes(
        &mut self,
        containers: &[ContainerMetrics],
        timestamp: u64,
    ) -> Vec<VmStatusChanged> {
        let mut changes = Vec::new();
        let mut current = HashMap::with_capacity(containers.len());
        for container in containers {
            let old = self
                .states
                .remove(&container.cgroup)
                .map(|(state, ..)| state);
            if old != Some(container.state) {
                changes.push(VmStatusChanged {
                    vm_id: container.id.clone(),
                    name: container.name.clone(),
                    runtime: container.runtime,
                    old_status: old,
                    new_status: Some(container.state),
                    timestamp,
                });
            }
            current.insert(
                container.cgroup.clone(),
                (
                    container.state,
                    container.id.clone(),
                    container.name.clone(),
                    container.runtime,
                ),
            );
        }
        // Whatever is left was not seen this cycle: gone.
        for (_, (state, id, name, runtime)) in self.states.drain() {
            changes.push(VmStatusChanged {
                vm_id: id,
                name,
                runtime,
                old_status: Some(state),
                new_status: None,
                timestamp,
            });
        }
        self.states = current;
        changes
    }
}

/// Applies the caps: root containers first (in path order), then each user's
/// rootless ones up to `max_containers_per_user`, all up to `max_containers`; and
/// finds ids claimed by more than one cgroup. Nothing is dropped uncounted.
fn admit(
    trusted: Vec<DiscoveredContainer>,
    settings: &ContainerSettings,
) -> (Vec<DiscoveredContainer>, DiscoveryReport) {
    let mut report = DiscoveryReport::default();
    let (root, rootless): (Vec<_>, Vec<_>) = trusted
        .into_iter()
        .partition(|container| container.owner_uid.is_none());
    let mut per_user: HashMap<u32, usize> = HashMap::new();
    let mut admitted = Vec::with_capacity(root.len().min(settings.max_containers));
    for container in root.into_iter().chain(rootless) {
        if let Some(uid) = container.owner_uid {
            let count = per_user.entry(uid).or_default();
            if *count >= settings.max_containers_per_user {
                *report.over_user_limit.entry(uid).or_default() += 1;
                continue;
            }
            *count += 1;
        }
        if admitted.len() >= settings.max_containers {
            report.over_max_containers += 1;
            continue;
        }
        admitted.push(container);
    }
    admitted.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    for container in &admitted {
        by_id
            .entry(&container.id)
            .or_default()
            .push(&container.relative_path);
    }
    let mut conflicts: Vec<IdConflict> = by_id
        .into_iter()
        .filter(|(_, cgroups)| cgroups.len() > 1)
        .map(|(id, cgroups)| IdConflict {
            id: id.to_owned(),
            cgroups: cgroups.iter().map(|path| format!("/{path}")).collect(),
        })
        .collect();
    conflicts.sort_by(|a, b| a.id.cmp(&b.id));
    report.id_conflict_count = conflicts.len();
    conflicts.truncate(MAX_LISTED_CONFLICTS);
    report.id_conflicts = conflicts;
    (admitted, report)
}

/// Each container's share of the eBPF counters, in `discovered` order: a cgroup's
/// counters go to the container whose cgroup is it or its nearest ancestor. A
/// family the programs do not count stays `None`; an attached one starts at zero.
fn ebpf_per_container(
    ebpf: Option<&EbpfCounters>,
    discovered: &[DiscoveredContainer],
) -> Vec<ContainerEbpf> {
    let mut shares: Vec<ContainerEbpf> = discovered
        .iter()
        .map(|_| ContainerEbpf {
            sched: ebpf
                .and_then(|ebpf| ebpf.sched.as_ref())
                .map(|_| horcrux_common::SchedCounters::ZERO),
            block: ebpf
                .and_then(|ebpf| ebpf.block.as_ref())
                .map(|_| Vec::new()),
        })
        .collect();
    let Some(ebpf) = ebpf else {
        return shares;
    };
    let positions: HashMap<&str, usize> = discovered
        .iter()
        .enumerate()
        .map(|(position, container)| (container.relative_path.as_str(), position))
        .collect();
    for (path, counters) in ebpf.sched.iter().flat_map(|sched| &sched.by_cgroup) {
        if let Some(&position) = nearest_ancestor(&positions, path)
            && let Some(sched) = &mut shares[position].sched
        {
            sched.add(counters);
        }
    }
    for (path, entries) in ebpf.block.iter().flat_map(|block| &block.by_cgroup) {
        if let Some(&position) = nearest_ancestor(&positions, path)
            && let Some(block) = &mut shares[position].block
        {
            block.extend_from_slice(entries);
        }
    }
    shares
}

/// Per-device block I/O in the cgroup readers' shape, from eBPF request counters.
fn block_io_totals(io: &DeviceIo) -> BlockIoTotals {
    BlockIoTotals {
        read_bytes_total: io.read_bytes,
        write_bytes_total: io.write_bytes,
        discard_bytes_total: io.discard_bytes,
        reads_total: io.reads,
        writes_total: io.writes,
        discards_total: io.discards,
    }
}

fn block_io_from_ebpf(entries: &[DeviceOpCounters]) -> BlockIoCounters {
    let mut devices: BTreeMap<u32, DeviceIo> = BTreeMap::new();
    for entry in entries {
        let (major, minor) = horcrux_common::device_parts(entry.device);
        let device = devices.entry(entry.device).or_insert(DeviceIo {
            major,
            minor,
            read_bytes: 0,
            write_bytes: 0,
            discard_bytes: 0,
            reads: 0,
            writes: 0,
            discards: 0,
        });
        let (bytes, count) = (entry.counters.bytes, entry.counters.requests());
        match entry.op {
            horcrux_common::BLOCK_OP_READ => {
                (device.read_bytes, device.reads) =
                    (device.read_bytes + bytes, device.reads + count)
            }
            horcrux_common::BLOCK_OP_WRITE => {
                (device.write_bytes, device.writes) =
                    (device.write_bytes + bytes, device.writes + count)
            }
            horcrux_common::BLOCK_OP_DISCARD => {
                (device.discard_bytes, device.discards) =
                    (device.discard_bytes + bytes, device.discards + count)
            }
            _ => {}
        }
    }
    BlockIoCounters {
        source: "ebpf",
        devices: devices.into_values().collect(),
    }
}

/// Records why a family is missing and turns the result into an option.
fn available<T>(
    unavailable: &mut BTreeMap<&'static str, String>,
    family: &'static str,
    result: Result<T, String>,
) -> Option<T> {
    result
        .map_err(|reason| unavailable.insert(family, reason))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(path: &str, id: &str, owner_uid: Option<u32>) -> DiscoveredContainer {
        DiscoveredContainer {
            id: id.to_owned(),
            runtime: Runtime::Podman,
            pod: None,
            relative_path: path.to_owned(),
            owner_uid,
        }
    }

    #[test]
    fn caps_keep_root_containers_first_and_count_the_excess() {
        let settings = ContainerSettings {
            max_containers: 3,
            max_containers_per_user: 1,
        };
        let found = vec![
            container("user.slice/u@1000/a", "a", Some(1000)),
            container("user.slice/u@1000/b", "b", Some(1000)),
            container("user.slice/u@1001/c", "c", Some(1001)),
            container("docker/r1", "r1", None),
            container("docker/r2", "r2", None),
        ];
        let (admitted, report) = admit(found, &settings);
        let paths: Vec<&str> = admitted.iter().map(|c| c.relative_path.as_str()).collect();
        assert_eq!(paths, ["docker/r1", "docker/r2", "user.slice/u@1000/a"]);
        assert_eq!(report.over_user_limit, BTreeMap::from([(1000, 1)]));
        assert_eq!(report.over_max_containers, 1, "uid 1001's one container");
    }

    #[test]
    fn two_cgroups_claiming_one_id_are_both_kept_and_reported() {
        let found = vec![
            container("docker/abc", "abc", None),
            container("user.slice/u@1000/x/docker-abc.scope", "abc", Some(1000)),
        ];
        let (admitted, report) = admit(found, &ContainerSettings::default());
        assert_eq!(admitted.len(), 2);
        assert_eq!(report.id_conflict_count, 1);
        assert_eq!(
            report.id_conflicts[0].cgroups,
            ["/docker/abc", "/user.slice/u@1000/x/docker-abc.scope"]
        );
    }
}
