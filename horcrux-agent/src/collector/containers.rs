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
        stats::{BlockIoCounters, CgroupReader, ContainerCounters},
    },
    collector::{
        cgroup::{CgroupRates, available},
        ebpf::{EbpfIntervals, ebpf_metrics, ebpf_shares},
        network_totals,
    },
    ebpf::counters::{DeviceOpCounters, EbpfCounters},
    health::CollectorHealth,
    messages::VmStatusChanged,
    model::{
        ContainerMetrics, ContainerNetwork, ContainerState, NetworkMetrics, NetworkTotals, Runtime,
    },
    process::{self, RuntimeNames},
    procfs::{TextReader, netdev},
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
    cgroup_rates: CgroupRates,
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
            cgroup_rates: CgroupRates::default(),
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
        let device_names =
            super::device_names(&mut self.proc, &mut self.health, COLLECTOR, timestamp);
        let now = Instant::now();
        self.cgroup_rates.begin(now);
        self.network_bytes.begin(now);
        let mut namespaces: HashMap<u64, Option<Vec<netdev::NetDevStat>>> = HashMap::new();
        let paths: Vec<&str> = discovered
            .iter()
            .map(|container| container.relative_path.as_str())
            .collect();
        let mut ebpf_shares = ebpf_shares(ebpf, &paths);
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
                    &ebpf_share,
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
        mut counters: ContainerCounters,
        network: Result<ContainerNetwork, String>,
        ebpf: Option<Box<crate::model::EbpfMetrics>>,
        device_names: &HashMap<(u32, u32), String>,
        timestamp: u64,
    ) -> ContainerMetrics {
        let mut unavailable = BTreeMap::new();
        let usage = self.cgroup_rates.usage(
            &container.relative_path,
            &mut counters,
            device_names,
            &mut unavailable,
        );
        let network = available(&mut unavailable, "network", network);
        let state = match (counters.frozen, counters.processes.is_empty()) {
            (true, _) => ContainerState::Paused,
            (false, true) => ContainerState::Empty,
            (false, false) => ContainerState::Running,
        };
        ContainerMetrics {
            cpu_usage_percent: usage.cpu.as_ref().and_then(|cpu| cpu.usage_percent),
            memory_usage_bytes: usage.memory.as_ref().map(|memory| memory.usage_bytes),
            memory_limit_bytes: usage.memory.as_ref().and_then(|memory| memory.limit_bytes),
            block_read_bytes: usage
                .block_io
                .as_ref()
                .map(|block| block.totals.read_bytes_total),
            block_write_bytes: usage
                .block_io
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
            usage,
            network,
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
                    kind: "container",
                    vm_id: container.id.clone(),
                    name: container.name.clone(),
                    runtime: container.runtime.name(),
                    old_status: old.map(ContainerState::name),
                    new_status: Some(container.state.name()),
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
                kind: "container",
                vm_id: id,
                name,
                runtime: runtime.name(),
                old_status: Some(state.name()),
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
