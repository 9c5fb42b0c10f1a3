//! Reading the programs' per-cgroup maps. Each cycle sums the per-CPU values, names
//! each cgroup by its path in the hierarchy the kernel charged it in, and reclaims
//! the entries of removed cgroups (their counts move to a "retired" total so that
//! node totals never go backwards) within [`RECLAIM_EVERY_CYCLES`].

use std::collections::{BTreeMap, HashMap};

use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData, PerCpuHashMap, PerCpuValues};
use horcrux_common::{BlockCounters, BlockKey, InFlightRequest, OwnerKey, SchedCounters};

use crate::cgroup::inodes::InodeIndex;

/// Block I/O of one cgroup, device and operation class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceOpCounters {
    /// `MKDEV(major, minor)` of the whole disk.
    pub device: u32,
    pub op: u32,
    pub counters: BlockCounters,
    /// Requests issued to the driver and not completed, at the read.
    pub in_flight: u64,
}

/// What one cycle read, by cgroup path (relative to the hierarchy root, no leading
/// `/`). A family is `None` when its programs are not attached.
#[derive(Debug, Clone, Default)]
pub struct EbpfCounters {
    pub sched: Option<FamilyCounters<SchedCounters>>,
    pub block: Option<FamilyCounters<Vec<DeviceOpCounters>>>,
    /// By memory cgroup (the pages' owner), not by blkio cgroup.
    pub writeback: Option<FamilyCounters<OwnerCounters>>,
    /// Unix seconds when the programs were attached: the counters start there.
    pub since: u64,
}

#[derive(Debug, Clone, Default)]
pub struct FamilyCounters<T> {
    pub by_cgroup: HashMap<String, T>,
    /// Everything counted since attach, removed cgroups included.
    pub total: T,
}

/// Cycles between walks of the hierarchy when every id is known: removed cgroups
/// are noticed (and their entries reclaimed) within this many cycles. An unknown id
/// (a new cgroup) makes the next read walk at once.
pub const RECLAIM_EVERY_CYCLES: u32 = 12;

/// Devices (`MKDEV`) with no request in flight, as `/proc/diskstats` counts them.
pub type IdleDevices = std::collections::HashSet<u32>;

/// The idle devices among `(major, minor, requests in flight)`.
pub fn idle_devices(disks: impl IntoIterator<Item = (u32, u32, u64)>) -> IdleDevices {
    disks
        .into_iter()
        .filter(|&(_, _, in_flight)| in_flight == 0)
        .map(|(major, minor, _)| horcrux_common::device_number(major, minor))
        .collect()
}

/// An in-flight entry this old is a completion the programs never saw.
const STALE_IN_FLIGHT_NS: u64 = 60_000_000_000;

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
pub(super) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |time| {
        time.tv_sec() as u64 * 1_000_000_000 + time.tv_nsec() as u64
    })
}

/// The paths of one hierarchy's cgroups by id, shared by the maps keyed by them.
pub struct CgroupIds {
    index: InodeIndex,
    reads_since_walk: u32,
}

impl CgroupIds {
    pub fn new(index: InodeIndex) -> Self {
        Self {
            index,
            reads_since_walk: RECLAIM_EVERY_CYCLES,
        }
    }

    fn path(&self, cgroup_id: u64) -> Option<&str> {
        self.index.path(cgroup_id)
    }

    /// One read of the maps keyed by this hierarchy, holding `cgroup_ids`: an id
    /// the index does not know is new (or removed), so walk now; otherwise walk now
    /// and then to notice removed cgroups.
    fn update(&mut self, mut cgroup_ids: impl Iterator<Item = u64>) {
        self.reads_since_walk += 1;
        if self.reads_since_walk > RECLAIM_EVERY_CYCLES
            || cgroup_ids.any(|id| self.index.path(id).is_none())
        {
            self.index.refresh();
            self.reads_since_walk = 0;
        }
    }
}

/// One per-cgroup map.
pub struct CgroupMap<K: aya::Pod, V: aya::Pod> {
    map: PerCpuHashMap<MapData, K, V>,
    max_entries: u32,
    /// Entries at the last read.
    entries: usize,
}

impl<K: aya::Pod, V: aya::Pod> CgroupMap<K, V> {
    pub fn new(map: PerCpuHashMap<MapData, K, V>) -> Self {
        let max_entries = map.map().info().map_or(0, |info| info.max_entries());
        Self {
            map,
            max_entries,
            entries: 0,
        }
    }

    pub fn status(&self, name: &'static str) -> super::MapStatus {
        super::MapStatus {
            name,
            max_entries: self.max_entries,
            entries: self.entries,
        }
    }

    /// Every entry, per-CPU values summed.
    fn entries(&mut self, sum: impl Fn(&PerCpuValues<V>) -> V) -> Result<Vec<(K, V)>, String> {
        let mut entries = Vec::new();
        for entry in self.map.iter() {
            let (key, values) = entry.map_err(|error| super::chain(&error))?;
            entries.push((key, sum(&values)));
        }
        self.entries = entries.len();
        Ok(entries)
    }

    /// Each entry with the path of its cgroup, from `ids` updated for them; `None`
    /// once the cgroup is removed, and then the entry is deleted from the map (the
    /// caller keeps its counts).
    fn name(
        &mut self,
        entries: Vec<(K, V)>,
        ids: &CgroupIds,
        cgroup_of: impl Fn(&K) -> u64,
    ) -> Vec<(Option<String>, K, V)> {
        let mut named = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let path = ids.path(cgroup_of(&key)).map(str::to_owned);
            if path.is_none() {
                // Counts that land between the read and the removal are lost; the
                // cgroup is gone, so they are few.
                let _ = self.map.remove(&key);
            }
            named.push((path, key, value));
        }
        named
    }

    /// [`Self::entries`] named, for a map that is alone in its hierarchy.
    fn read(
        &mut self,
        ids: &mut CgroupIds,
        cgroup_of: impl Fn(&K) -> u64,
        sum: impl Fn(&PerCpuValues<V>) -> V,
    ) -> Result<Vec<(Option<String>, K, V)>, String> {
        let entries = self.entries(sum)?;
        ids.update(entries.iter().map(|(key, _)| cgroup_of(key)));
        Ok(self.name(entries, ids, cgroup_of))
    }
}

fn sum_sched(values: &PerCpuValues<SchedCounters>) -> SchedCounters {
    let mut total = SchedCounters::ZERO;
    values.iter().for_each(|cpu| total.add(cpu));
    total
}

fn sum_bytes(values: &PerCpuValues<u64>) -> u64 {
    values.iter().fold(0, |sum, bytes| sum.wrapping_add(*bytes))
}

fn sum_block(values: &PerCpuValues<BlockCounters>) -> BlockCounters {
    let mut total = BlockCounters::ZERO;
    values.iter().for_each(|cpu| total.add(cpu));
    total
}

/// The scheduler map and the counts of cgroups removed since attach.
pub struct SchedSource {
    pub map: CgroupMap<u64, SchedCounters>,
    pub ids: CgroupIds,
    pub retired: SchedCounters,
}

impl SchedSource {
    pub fn read(&mut self) -> Result<FamilyCounters<SchedCounters>, String> {
        let entries = self.map.read(&mut self.ids, |id| *id, sum_sched)?;
        let mut family = FamilyCounters {
            by_cgroup: HashMap::with_capacity(entries.len()),
            total: self.retired,
        };
        for (path, _, counters) in entries {
            match path {
                Some(path) => family
                    .by_cgroup
                    .entry(path)
                    .or_insert(SchedCounters::ZERO)
                    .add(&counters),
                None => self.retired.add(&counters),
            }
            family.total.add(&counters);
        }
        Ok(family)
    }
}

/// The block map, the requests in flight, and the counts of cgroups removed since
/// attach, per device and operation.
///
/// The kernel does not run the completion program for every completion (see
/// `block_rq_issue` in the eBPF programs). The programs count such a request when
/// its request struct is issued again; on a device that goes idle that may be
/// never, so this reader counts it too: an entry seen at two reads, issued over
/// [`MISSED_AFTER_NS`] ago, on a device the kernel says has nothing in flight
/// (`/proc/diskstats`, read by the caller before this read), is a completion that
/// went unobserved.
pub struct BlockSource {
    pub map: CgroupMap<BlockKey, BlockCounters>,
    pub ids: CgroupIds,
    pub in_flight: BpfHashMap<MapData, u64, InFlightRequest>,
    pub retired: BTreeMap<(u32, u32), BlockCounters>,
    /// In-flight entries seen at the last read: request address → issue time.
    pub suspects: HashMap<u64, u64>,
    /// What the reader counted for unobserved completions, by key.
    pub missed: HashMap<BlockKey, BlockCounters>,
    /// Unobserved completions the reader counted since attach.
    pub missed_requests: u64,
}

/// An unobserved completion is counted no sooner than this after its issue.
const MISSED_AFTER_NS: u64 = 2_000_000_000;

impl BlockSource {
    pub fn new(
        map: CgroupMap<BlockKey, BlockCounters>,
        ids: CgroupIds,
        in_flight: BpfHashMap<MapData, u64, InFlightRequest>,
    ) -> Self {
        Self {
            map,
            ids,
            in_flight,
            retired: BTreeMap::new(),
            suspects: HashMap::new(),
            missed: HashMap::new(),
            missed_requests: 0,
        }
    }

    /// `idle`: devices (`MKDEV`) with nothing in flight in `/proc/diskstats`, read
    /// before this call.
    pub fn read(
        &mut self,
        idle: &IdleDevices,
    ) -> Result<FamilyCounters<Vec<DeviceOpCounters>>, String> {
        let mut entries = self
            .map
            .read(&mut self.ids, |key| key.cgroup_id, sum_block)?;
        let mut pending: HashMap<BlockKey, u64> = HashMap::new();
        let mut unobserved = Vec::new();
        let mut suspects = HashMap::new();
        let now_ns = monotonic_ns();
        for entry in self.in_flight.iter() {
            let (address, request) = entry.map_err(|error| super::chain(&error))?;
            if request.completed != 0 {
                continue;
            }
            let age = now_ns.saturating_sub(request.issued_ns);
            if self.suspects.get(&address) == Some(&request.issued_ns)
                && age >= MISSED_AFTER_NS
                && idle.contains(&request.key.device)
            {
                unobserved.push((address, request));
            } else {
                suspects.insert(address, request.issued_ns);
                // The kernel times a request out after 30 s: older is not in flight.
                if age < STALE_IN_FLIGHT_NS {
                    *pending.entry(request.key).or_default() += 1;
                }
            }
        }
        self.suspects = suspects;
        for (address, request) in unobserved {
            // Still the same entry (not re-issued since the iteration)?
            if self
                .in_flight
                .get(&address, 0)
                .is_ok_and(|now| now.issued_ns == request.issued_ns && now.completed == 0)
            {
                let _ = self.in_flight.remove(&address);
                let counters = self
                    .missed
                    .entry(request.key)
                    .or_insert(BlockCounters::ZERO);
                counters.bytes += request.bytes_left;
                counters.untimed += 1;
                self.missed_requests += 1;
            }
        }
        // What this reader counted joins the kernel's counts (and retires with them).
        self.missed.retain(|key, counters| {
            let path = self.ids.path(key.cgroup_id).map(str::to_owned);
            entries.push((path.clone(), *key, *counters));
            path.is_some()
        });
        let mut by_cgroup: HashMap<String, Vec<DeviceOpCounters>> = HashMap::new();
        let mut total: BTreeMap<(u32, u32), (BlockCounters, u64)> = self
            .retired
            .iter()
            .map(|(device_op, counters)| (*device_op, (*counters, 0)))
            .collect();
        let mut add = |path: Option<String>, key: BlockKey, counters: BlockCounters, in_flight| {
            let (sum, pending) = total
                .entry((key.device, key.op))
                .or_insert((BlockCounters::ZERO, 0));
            sum.add(&counters);
            *pending += in_flight;
            if let Some(path) = path {
                by_cgroup.entry(path).or_default().push(DeviceOpCounters {
                    device: key.device,
                    op: key.op,
                    counters,
                    in_flight,
                });
            }
        };
        for (path, key, counters) in entries {
            if path.is_none() {
                self.retired
                    .entry((key.device, key.op))
                    .or_insert(BlockCounters::ZERO)
                    .add(&counters);
            }
            add(path, key, counters, pending.remove(&key).unwrap_or(0));
        }
        // Requests of a cgroup with nothing completed yet.
        for (key, in_flight) in pending {
            let path = self.ids.path(key.cgroup_id).map(str::to_owned);
            add(path, key, BlockCounters::ZERO, in_flight);
        }
        let total = total
            .into_iter()
            .map(|((device, op), (counters, in_flight))| DeviceOpCounters {
                device,
                op,
                counters,
                in_flight,
            })
            .collect();
        Ok(FamilyCounters { by_cgroup, total })
    }
}

/// Page-cache bytes one memory cgroup owns: dirtied, and written back per device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerCounters {
    pub dirtied_bytes: u64,
    /// `MKDEV` of the whole disk → bytes.
    pub writeback_bytes: BTreeMap<u32, u64>,
}

impl OwnerCounters {
    pub fn add(&mut self, other: &Self) {
        self.dirtied_bytes = self.dirtied_bytes.wrapping_add(other.dirtied_bytes);
        for (device, bytes) in &other.writeback_bytes {
            let total = self.writeback_bytes.entry(*device).or_default();
            *total = total.wrapping_add(*bytes);
        }
    }
}

/// The writeback and dirtied maps (keyed by memory cgroup, one index of the
/// hierarchy for both) and the counts of cgroups removed since attach.
pub struct WritebackSource {
    pub written: CgroupMap<OwnerKey, u64>,
    pub dirtied: CgroupMap<OwnerKey, u64>,
    ids: CgroupIds,
    retired: OwnerCounters,
}

impl WritebackSource {
    pub fn new(
        written: CgroupMap<OwnerKey, u64>,
        dirtied: CgroupMap<OwnerKey, u64>,
        ids: CgroupIds,
    ) -> Self {
        Self {
            written,
            dirtied,
            ids,
            retired: OwnerCounters::default(),
        }
    }

    pub fn read(&mut self) -> Result<FamilyCounters<OwnerCounters>, String> {
        let owner = |key: &OwnerKey| key.cgroup_id;
        let written = self.written.entries(sum_bytes)?;
        let dirtied = self.dirtied.entries(sum_bytes)?;
        self.ids
            .update(written.iter().chain(&dirtied).map(|(key, _)| owner(key)));
        let written = self.written.name(written, &self.ids, owner);
        let dirtied = self.dirtied.name(dirtied, &self.ids, owner);
        let mut family = FamilyCounters {
            by_cgroup: HashMap::with_capacity(written.len().max(dirtied.len())),
            total: self.retired.clone(),
        };
        let owned = written
            .into_iter()
            .map(|(path, key, bytes)| {
                let counters = OwnerCounters {
                    dirtied_bytes: 0,
                    writeback_bytes: BTreeMap::from([(key.device, bytes)]),
                };
                (path, counters)
            })
            .chain(dirtied.into_iter().map(|(path, _, bytes)| {
                let counters = OwnerCounters {
                    dirtied_bytes: bytes,
                    writeback_bytes: BTreeMap::new(),
                };
                (path, counters)
            }));
        for (path, counters) in owned {
            match path {
                Some(path) => family.by_cgroup.entry(path).or_default().add(&counters),
                None => self.retired.add(&counters),
            }
            family.total.add(&counters);
        }
        Ok(family)
    }
}
