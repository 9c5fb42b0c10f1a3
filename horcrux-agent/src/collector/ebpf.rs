//! eBPF counters into the model: histograms, per-device block I/O, and the interval
//! percentiles each consumer (the node, each container) keeps across its cycles.

use std::collections::{BTreeMap, HashMap};

use horcrux_common::{
    BLOCK_OP_DISCARD, BLOCK_OP_FLUSH, BLOCK_OP_READ, BLOCK_OP_WRITE, LATENCY_BUCKETS,
    LatencyHistogram, SchedCounters, device_parts, slot_bound_micros,
};

use crate::{
    cgroup::inodes::nearest_ancestor,
    ebpf::counters::{DeviceOpCounters, EbpfCounters, OwnerCounters},
    model::{
        BlkioDevice, BlkioMetrics, BlkioTotals, EbpfMetrics, Histogram, HistogramBucket,
        SchedMetrics,
    },
};

/// A latency histogram as JSON: cumulative buckets with Prometheus `le` semantics
/// (an observation equal to a bound is counted in that bucket). Bounds are powers of
/// two microseconds; observations above the last bound are in `count` only (+Inf).
pub fn histogram(histogram: &LatencyHistogram) -> Histogram {
    let mut cumulative = 0u64;
    let buckets = histogram
        .slots
        .iter()
        .enumerate()
        .filter_map(|(slot, count)| {
            cumulative = cumulative.wrapping_add(*count);
            slot_bound_micros(slot).map(|le| HistogramBucket {
                le,
                count: cumulative,
            })
        })
        .collect();
    Histogram {
        unit: "us",
        count: histogram.count(),
        sum: histogram.sum_ns as f64 / 1000.0,
        buckets,
    }
}

fn add_entry(totals: &mut BlkioTotals, entry: &DeviceOpCounters) {
    let counters = &entry.counters;
    let ops = counters.requests();
    let (bytes, op_count) = match entry.op {
        BLOCK_OP_READ => (&mut totals.read_bytes, &mut totals.read_ops),
        BLOCK_OP_WRITE => (&mut totals.write_bytes, &mut totals.write_ops),
        BLOCK_OP_DISCARD => (&mut totals.discard_bytes, &mut totals.discard_ops),
        BLOCK_OP_FLUSH => (&mut 0, &mut totals.flush_ops),
        _ => (&mut 0, &mut totals.other_ops),
    };
    *bytes += counters.bytes;
    *op_count += ops;
    totals.in_flight += entry.in_flight;
}

/// One cgroup's (or the node's) block I/O from its counters per device and
/// operation, and, with the writeback family, the page-cache bytes it owns.
pub fn blkio(
    entries: &[DeviceOpCounters],
    owned: Option<&OwnerCounters>,
    device_names: &HashMap<(u32, u32), String>,
    latency_p99_us: Option<u64>,
) -> BlkioMetrics {
    let owned_totals = || BlkioTotals {
        writeback_bytes: owned.map(|_| 0),
        ..BlkioTotals::default()
    };
    let mut devices: BTreeMap<u32, (BlkioTotals, LatencyHistogram)> = BTreeMap::new();
    let (mut totals, mut latency) = (owned_totals(), LatencyHistogram::ZERO);
    for entry in entries {
        let (device_totals, device_latency) = devices
            .entry(entry.device)
            .or_insert_with(|| (owned_totals(), LatencyHistogram::ZERO));
        add_entry(device_totals, entry);
        device_latency.add(&entry.counters.latency);
        add_entry(&mut totals, entry);
        latency.add(&entry.counters.latency);
    }
    // A device may see only write-backs of the cgroup's pages, none of its own I/O.
    for (device, bytes) in owned.iter().flat_map(|owned| &owned.writeback_bytes) {
        let (device_totals, _) = devices
            .entry(*device)
            .or_insert_with(|| (owned_totals(), LatencyHistogram::ZERO));
        for writeback in [
            &mut device_totals.writeback_bytes,
            &mut totals.writeback_bytes,
        ] {
            *writeback = writeback.map(|sum| sum.wrapping_add(*bytes));
        }
    }
    BlkioMetrics {
        totals,
        latency: histogram(&latency),
        latency_p99_us,
        dirtied_bytes: owned.map(|owned| owned.dirtied_bytes),
        devices: devices
            .into_iter()
            .map(|(device, (totals, latency))| {
                let (major, minor) = device_parts(device);
                BlkioDevice {
                    device: device_names.get(&(major, minor)).cloned(),
                    major,
                    minor,
                    totals,
                    latency: histogram(&latency),
                }
            })
            .collect(),
    }
}

/// The latency histogram of a counter set summed over devices and operations.
pub fn block_latency(entries: &[DeviceOpCounters]) -> LatencyHistogram {
    let mut latency = LatencyHistogram::ZERO;
    entries
        .iter()
        .for_each(|entry| latency.add(&entry.counters.latency));
    latency
}

/// The 99th percentile of the observations a cumulative histogram gained since the
/// previous call, as the upper bound of the bucket it falls in (`None` without new
/// observations or when it is beyond the last finite bound).
#[derive(Debug, Clone, Default)]
pub struct IntervalP99 {
    previous: Option<[u64; LATENCY_BUCKETS]>,
}

impl IntervalP99 {
    pub fn observe(&mut self, histogram: &LatencyHistogram) -> Option<u64> {
        let previous = self.previous.replace(histogram.slots)?;
        let delta = |slot: usize| histogram.slots[slot].saturating_sub(previous[slot]);
        let total: u64 = (0..LATENCY_BUCKETS).map(delta).sum();
        if total == 0 {
            return None;
        }
        // The smallest bucket holding at least 99% of the interval's observations.
        let wanted = total - total / 100;
        let mut cumulative = 0;
        (0..LATENCY_BUCKETS).find_map(|slot| {
            cumulative += delta(slot);
            (cumulative >= wanted)
                .then(|| slot_bound_micros(slot))
                .flatten()
        })
    }
}

/// The interval percentiles of one node or container, kept across its cycles.
#[derive(Debug, Clone, Default)]
pub struct EbpfIntervals {
    runq_latency: IntervalP99,
    block_latency: IntervalP99,
}

/// A family is `None` in `share` when it is not attached; a cgroup that has not
/// been seen by an attached family passes zero counters.
pub fn ebpf_metrics(
    since: u64,
    share: &CgroupEbpf,
    device_names: &HashMap<(u32, u32), String>,
    intervals: &mut EbpfIntervals,
) -> EbpfMetrics {
    EbpfMetrics {
        since,
        sched: share.sched.as_ref().map(|sched| SchedMetrics {
            runq_latency: histogram(&sched.runq_latency),
            runq_latency_p99_us: intervals.runq_latency.observe(&sched.runq_latency),
            voluntary_switches: sched.voluntary_switches,
            involuntary_switches: sched.involuntary_switches,
            oncpu_ns: sched.oncpu_ns,
        }),
        blkio: share.block.as_deref().map(|entries| {
            let p99 = intervals.block_latency.observe(&block_latency(entries));
            blkio(entries, share.writeback.as_ref(), device_names, p99)
        }),
    }
}

#[cfg(test)]
mod tests {
    use horcrux_common::{BLOCK_OP_FLUSH, BlockCounters, device_number};

    use super::*;

    fn observed(latencies_ns: &[u64]) -> LatencyHistogram {
        let mut histogram = LatencyHistogram::ZERO;
        latencies_ns.iter().for_each(|ns| histogram.observe(*ns));
        histogram
    }

    #[test]
    fn histogram_json_is_cumulative_with_le_bounds() {
        // 1 µs, exactly 2 µs, 2.001 µs, and one beyond the last bound (+Inf only).
        let json = histogram(&observed(&[1000, 2000, 2001, 100_000_000_000]));
        assert_eq!(json.unit, "us");
        assert_eq!(json.count, 4);
        assert_eq!(json.buckets.len(), LATENCY_BUCKETS - 1);
        assert_eq!(json.buckets[0], HistogramBucket { le: 1, count: 1 });
        assert_eq!(json.buckets[1], HistogramBucket { le: 2, count: 2 });
        assert_eq!(json.buckets[2], HistogramBucket { le: 4, count: 3 });
        assert_eq!(json.buckets.last().map(|b| b.count), Some(3));
        assert!((json.sum - 100_000_005.001).abs() < 1e-6);
    }

    #[test]
    fn p99_covers_the_last_interval_only() {
        let mut p99 = IntervalP99::default();
        let mut cumulative = observed(&[500; 1000]);
        assert_eq!(
            p99.observe(&cumulative),
            None,
            "no interval before the first sample"
        );
        assert_eq!(p99.observe(&cumulative), None, "no new samples");
        // 100 new samples: 98 at 3 µs, 2 at 1 ms → the 99th is in the 1024 µs bucket.
        for _ in 0..98 {
            cumulative.observe(3000);
        }
        cumulative.observe(1_000_000);
        cumulative.observe(1_000_000);
        assert_eq!(p99.observe(&cumulative), Some(1024));
        for _ in 0..100 {
            cumulative.observe(3000);
        }
        assert_eq!(
            p99.observe(&cumulative),
            Some(4),
            "the old slow samples are gone"
        );
    }

    #[test]
    fn block_io_is_grouped_by_disk_and_class() {
        let entry = |device: u32, op: u32, bytes: u64, latencies: &[u64], in_flight: u64| {
            DeviceOpCounters {
                device,
                op,
                counters: BlockCounters {
                    latency: observed(latencies),
                    bytes,
                    untimed: 0,
                },
                in_flight,
            }
        };
        let vda = device_number(254, 0);
        let sdb = device_number(8, 16);
        let entries = [
            entry(vda, BLOCK_OP_READ, 8192, &[1000, 2000], 0),
            entry(vda, BLOCK_OP_WRITE, 4096, &[5000], 2),
            entry(sdb, BLOCK_OP_FLUSH, 0, &[100], 0),
        ];
        let names = HashMap::from([((254, 0), "vda".to_owned())]);
        let owned = OwnerCounters {
            dirtied_bytes: 1 << 20,
            writeback_bytes: BTreeMap::from([(sdb, 4096), (device_number(8, 0), 8192)]),
        };
        let metrics = blkio(&entries, Some(&owned), &names, None);
        assert_eq!(metrics.dirtied_bytes, Some(1 << 20));
        assert_eq!(metrics.totals.writeback_bytes, Some(12288));
        assert_eq!(metrics.devices.len(), 3, "sda has write-backs only");
        assert_eq!(metrics.devices[0].totals.writeback_bytes, Some(8192));
        assert_eq!(metrics.devices[0].totals.write_ops, 0);
        let metrics = blkio(&entries, None, &names, None);
        assert_eq!(metrics.totals.writeback_bytes, None);
        assert_eq!(metrics.totals.read_bytes, 8192);
        assert_eq!(metrics.totals.read_ops, 2);
        assert_eq!(metrics.totals.write_ops, 1);
        assert_eq!(metrics.totals.flush_ops, 1);
        assert_eq!(metrics.totals.in_flight, 2);
        assert_eq!(metrics.latency.count, 4);
        assert_eq!(metrics.devices.len(), 2);
        let sdb = &metrics.devices[0];
        assert_eq!((sdb.major, sdb.minor, sdb.device.as_deref()), (8, 16, None));
        let vda = &metrics.devices[1];
        assert_eq!(vda.device.as_deref(), Some("vda"));
        assert_eq!((vda.totals.read_ops, vda.latency.count), (2, 3));
    }
}

/// One target's share of the eBPF counters: its cgroup and every descendant.
#[derive(Debug, Default)]
pub struct CgroupEbpf {
    pub sched: Option<SchedCounters>,
    pub block: Option<Vec<DeviceOpCounters>>,
    /// Page-cache bytes its memory cgroups own.
    pub writeback: Option<OwnerCounters>,
}

impl CgroupEbpf {
    /// The node's share: everything counted.
    pub fn totals(ebpf: &EbpfCounters) -> Self {
        Self {
            sched: ebpf.sched.as_ref().map(|sched| sched.total),
            block: ebpf.block.as_ref().map(|block| block.total.clone()),
            writeback: ebpf.writeback.as_ref().map(|owned| owned.total.clone()),
        }
    }
}

/// Each target's share of the eBPF counters, in `paths` order (cgroup paths
/// relative to the hierarchy root): a cgroup's counters go to the target whose
/// cgroup is it or its nearest ancestor. A family the programs do not count stays
/// `None`; an attached one starts at zero.
pub fn ebpf_shares(ebpf: Option<&EbpfCounters>, paths: &[&str]) -> Vec<CgroupEbpf> {
    let mut shares: Vec<CgroupEbpf> = paths
        .iter()
        .map(|_| CgroupEbpf {
            sched: ebpf
                .and_then(|ebpf| ebpf.sched.as_ref())
                .map(|_| SchedCounters::ZERO),
            block: ebpf
                .and_then(|ebpf| ebpf.block.as_ref())
                .map(|_| Vec::new()),
            writeback: ebpf
                .and_then(|ebpf| ebpf.writeback.as_ref())
                .map(|_| OwnerCounters::default()),
        })
        .collect();
    let Some(ebpf) = ebpf else {
        return shares;
    };
    let positions: HashMap<&str, usize> = paths
        .iter()
        .enumerate()
        .map(|(position, path)| (*path, position))
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
    for (path, owned) in ebpf.writeback.iter().flat_map(|owned| &owned.by_cgroup) {
        if let Some(&position) = nearest_ancestor(&positions, path)
            && let Some(writeback) = &mut shares[position].writeback
        {
            writeback.add(owned);
        }
    }
    shares
}
