//! Reading the programs' per-cgroup maps. Each cycle sums the per-CPU values, names
//! each cgroup by its path in the hierarchy the kernel charged it in, and reclaims
//! the entries of removed cgroups (their counts move to a "retired" total so that
//! node totals never go backwards) within [`RECLAIM_EVERY_CYCLES`].

use std::collections::{BTreeMap, HashMap};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap, PerCpuValues};
use horcrux_common::{BlockCounters, BlockKey, InFlightRequest, SchedCounters};

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

/// One per-cgroup map and the hierarchy its cgroup ids belong to.
pub struct CgroupMap<K: aya::Pod, V: aya::Pod> {
    map: PerCpuHashMap<MapData, K, V>,
    index: InodeIndex,
    reads_since_walk: u32,
}

impl<K: aya::Pod, V: aya::Pod> CgroupMap<K, V> {
    pub fn new(map: PerCpuHashMap<MapData, K, V>, index: InodeIndex) -> Self {
        Self {
            map,
            index,
            reads_since_walk: RECLAIM_EVERY_CYCLES,
        }
    }

    fn path(&self, cgroup_id: u64) -> Option<&str> {
        self.index.path(cgroup_id)
    }

    /// Every entry, per-CPU values summed, with the path of its cgroup; `None` once
    /// the cgroup is removed, and then the entry is deleted from the map (the caller
    /// keeps its counts).
    fn read(
        &mut self,
        cgroup_of: impl Fn(&K) -> u64,
        sum: impl Fn(&PerCpuValues<V>) -> V,
    ) -> Result<Vec<(Option<String>, K, V)>, String> {
        let mut entries = Vec::new();
        for entry in self.map.iter() {
            let (key, values) = entry.map_err(|error| super::chain(&error))?;
            entries.push((key, sum(&values)));
        }
        // A cgroup id the index does not know is new (or removed): walk now;
        // otherwise walk now and then to notice removed cgroups.
        self.reads_since_walk += 1;
        if self.reads_since_walk > RECLAIM_EVERY_CYCLES
            || entries
                .iter()
                .any(|(key, _)| self.index.path(cgroup_of(key)).is_none())
        {
            self.index.refresh();
            self.reads_since_walk = 0;
        }
        let mut named = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let path = self.index.path(cgroup_of(&key)).map(str::to_owned);
            if path.is_none() {
                // Counts that land between the read and the removal are lost; the
                // cgroup is gone, so they are few.
                let _ = self.map.remove(&key);
            }
            named.push((path, key, value));
        }
        Ok(named)
    }
}

fn sum_sched(values: &PerCpuValues<SchedCounters>) -> SchedCounters {
    let mut total = SchedCounters::ZERO;
    values.iter().for_each(|cpu| total.add(cpu));
    total
}

fn sum_block(values: &PerCpuValues<BlockCounters>) -> BlockCounters {
    let mut total = BlockCounters::ZERO;
    values.iter().for_each(|cpu| total.add(cpu));
    total
}

/// The scheduler map and the counts of cgroups removed since attach.
pub struct SchedSource {
    pub map: CgroupMap<u64, SchedCounters>,
    pub retired: SchedCounters,
}

impl SchedSource {
    pub fn read(&mut self) -> Result<FamilyCounters<SchedCounters>, String> {
        let entries = self.map.read(|id| *id, sum_sched)?;
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
pub struct BlockSource {
    pub map: CgroupMap<BlockKey, BlockCounters>,
    pub in_flight: BpfHashMap<MapData, u64, InFlightRequest>,
    pub retired: BTreeMap<(u32, u32), BlockCounters>,
}

impl BlockSource {
    pub fn read(&mut self) -> Result<FamilyCounters<Vec<DeviceOpCounters>>, String> {
        let entries = self.map.read(|key| key.cgroup_id, sum_block)?;
        let mut pending: HashMap<BlockKey, u64> = HashMap::new();
        for entry in self.in_flight.iter() {
            let (_, request) = entry.map_err(|error| super::chain(&error))?;
            *pending.entry(request.key).or_default() += 1;
        }
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
            let path = self.map.path(key.cgroup_id).map(str::to_owned);
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
