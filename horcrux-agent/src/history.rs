//! Storage: in-memory metric history, enabled by `enable_history`. The named series
//! ([`NODE_METRICS`], [`CONTAINER_METRICS`]) are also what alert rules can watch.
//!
//! Each series keeps two ring buffers: every sample for the most recent
//! [`RAW_WINDOW_SECONDS`], and [`BUCKET_SECONDS`] buckets of min/avg/max for the rest
//! of `history_retention`. Both are bounded by time and by entry count, so memory
//! per series is fixed (see [`bytes_per_series`]) whatever the wall clock does:
//! samples are placed on the steady clock ([`crate::clock`]) and shown on the wall
//! clock as it reads when queried. Collectors record after each cycle; HTTP handlers
//! query.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::{
    clock::Stamp,
    model::{ContainerMetrics, DiskKind, NodeMetrics},
};

/// Full-resolution window.
pub const RAW_WINDOW_SECONDS: u64 = 3600;
/// Downsampled bucket width beyond the raw window.
pub const BUCKET_SECONDS: u64 = 300;

/// Node series recorded, with what they are.
pub const NODE_METRICS: &[(&str, &str)] = &[
    ("cpu_usage", "busy CPU %"),
    ("memory_usage", "used memory %"),
    ("disk_usage", "root filesystem use %"),
    ("load_average_1m", "1-minute load average"),
    ("load_average_5m", "5-minute load average"),
    ("load_average_15m", "15-minute load average"),
    (
        "network_rx_bytes_per_second",
        "received bytes/s, all interfaces but lo",
    ),
    (
        "network_tx_bytes_per_second",
        "transmitted bytes/s, all interfaces but lo",
    ),
    (
        "disk_read_bytes_per_second",
        "bytes/s read from whole disks",
    ),
    (
        "disk_write_bytes_per_second",
        "bytes/s written to whole disks",
    ),
];

/// Container series recorded.
pub const CONTAINER_METRICS: &[(&str, &str)] = &[
    ("cpu_usage_percent", "% of one CPU"),
    ("memory_usage_bytes", "memory charged to the cgroup"),
    ("network_rx_bytes_per_second", "received bytes/s"),
    ("network_tx_bytes_per_second", "transmitted bytes/s"),
    ("block_read_bytes_per_second", "bytes/s read"),
    ("block_write_bytes_per_second", "bytes/s written"),
];

/// The values of [`NODE_METRICS`] in a node sample (absent when not measured).
pub fn node_values(node: &NodeMetrics) -> Vec<(&'static str, f64)> {
    let mut values = vec![
        ("memory_usage", node.memory_usage),
        ("disk_usage", node.disk_usage),
        ("load_average_1m", node.load_average_1m),
        ("load_average_5m", node.load_average_5m),
        ("load_average_15m", node.load_average_15m),
    ];
    if let Some(usage) = node.cpu.as_ref().and_then(|cpu| cpu.usage_percent) {
        values.push(("cpu_usage", usage));
    }
    if let Some((rx, tx)) = node.network_rates() {
        values.push(("network_rx_bytes_per_second", rx));
        values.push(("network_tx_bytes_per_second", tx));
    }
    let disks: Vec<_> = node
        .disks
        .iter()
        .flatten()
        .filter(|disk| disk.kind == DiskKind::Disk)
        .filter_map(|disk| disk.rates.as_ref())
        .collect();
    if !disks.is_empty() {
        values.push((
            "disk_read_bytes_per_second",
            disks.iter().map(|r| r.read_bytes_per_second).sum(),
        ));
        values.push((
            "disk_write_bytes_per_second",
            disks.iter().map(|r| r.write_bytes_per_second).sum(),
        ));
    }
    values
}

/// The values of [`CONTAINER_METRICS`] in a container sample.
pub fn container_values(container: &ContainerMetrics) -> Vec<(&'static str, f64)> {
    let network = container.network.as_ref();
    let block = container.block_io.as_ref();
    [
        ("cpu_usage_percent", container.cpu_usage_percent),
        (
            "memory_usage_bytes",
            container.memory_usage_bytes.map(|bytes| bytes as f64),
        ),
        (
            "network_rx_bytes_per_second",
            network.and_then(|n| n.rx_bytes_per_second),
        ),
        (
            "network_tx_bytes_per_second",
            network.and_then(|n| n.tx_bytes_per_second),
        ),
        (
            "block_read_bytes_per_second",
            block.and_then(|b| b.read_bytes_per_second),
        ),
        (
            "block_write_bytes_per_second",
            block.and_then(|b| b.write_bytes_per_second),
        ),
    ]
    .into_iter()
    .filter_map(|(metric, value)| Some((metric, value?)))
    .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Node,
    Container(String),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: u64,
    min: f64,
    max: f64,
    sum: f64,
    count: u32,
}

#[derive(Debug, Default)]
struct Series {
    raw: VecDeque<(u64, f64)>,
    buckets: VecDeque<Bucket>,
}

/// One point of a query answer: a raw value, or a downsampled min/avg/max.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Point {
    Raw {
        timestamp: u64,
        value: f64,
    },
    Aggregate {
        timestamp: u64,
        min: f64,
        avg: f64,
        max: f64,
    },
}

#[derive(Debug)]
pub struct History {
    retention: u64,
    series: HashMap<(Scope, &'static str), Series>,
}

/// Upper bound of one series' memory for `retention` at a sampling `interval`.
pub fn bytes_per_series(retention: u64, interval: u64) -> u64 {
    let raw_points = RAW_WINDOW_SECONDS.min(retention) / interval.max(1) + 1;
    let buckets = retention / BUCKET_SECONDS + 1;
    raw_points * size_of::<(u64, f64)>() as u64 + buckets * size_of::<Bucket>() as u64
}

impl History {
    pub fn new(retention_seconds: u64) -> Self {
        Self {
            retention: retention_seconds,
            series: HashMap::new(),
        }
    }

    /// Records one sample taken at `steady` seconds ([`crate::clock::Stamp::steady`]);
    /// non-finite values are skipped.
    pub fn record(&mut self, scope: Scope, metric: &'static str, steady: u64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let retention = self.retention;
        let raw_window = RAW_WINDOW_SECONDS.min(retention);
        let series = self.series.entry((scope, metric)).or_default();
        series.raw.push_back((steady, value));
        // Samples leaving the raw window are kept as buckets. The count cap (one
        // sample a second, the shortest interval) holds even if time misbehaves.
        let raw_cutoff = steady.saturating_sub(raw_window);
        while let Some(&(old, old_value)) = series.raw.front() {
            if old >= raw_cutoff && series.raw.len() as u64 <= raw_window + 1 {
                break;
            }
            series.raw.pop_front();
            let start = old - old % BUCKET_SECONDS;
            match series.buckets.back_mut() {
                Some(bucket) if bucket.start == start => {
                    bucket.min = bucket.min.min(old_value);
                    bucket.max = bucket.max.max(old_value);
                    bucket.sum += old_value;
                    bucket.count += 1;
                }
                _ => series.buckets.push_back(Bucket {
                    start,
                    min: old_value,
                    max: old_value,
                    sum: old_value,
                    count: 1,
                }),
            }
        }
        let cutoff = steady.saturating_sub(retention);
        let max_buckets = (retention / BUCKET_SECONDS + 1) as usize;
        while series.buckets.front().is_some_and(|bucket| {
            bucket.start + BUCKET_SECONDS <= cutoff || series.buckets.len() > max_buckets
        }) {
            series.buckets.pop_front();
        }
    }

    /// Forgets the series of containers that no longer exist.
    pub fn retain_containers(&mut self, live: &std::collections::HashSet<&str>) {
        self.series.retain(|(scope, _), _| match scope {
            Scope::Node => true,
            Scope::Container(id) => live.contains(id.as_str()),
        });
    }

    /// Points of the last `range` seconds before `at`, timestamped on the wall clock
    /// as it reads at `at`. With `step` at or below the data's own spacing, raw
    /// values; otherwise min/avg/max per `step`.
    pub fn query(
        &self,
        scope: &Scope,
        metric: &'static str,
        at: Stamp,
        range: u64,
        step: u64,
    ) -> Vec<Point> {
        let Some(series) = self.series.get(&(scope.clone(), metric)) else {
            return Vec::new();
        };
        let now = at.steady;
        let from = now.saturating_sub(range);
        let raw = series
            .raw
            .iter()
            .filter(|(timestamp, _)| (from..=now).contains(timestamp));
        let spacing = series
            .raw
            .iter()
            .zip(series.raw.iter().skip(1))
            .map(|(a, b)| b.0.saturating_sub(a.0))
            .min()
            .unwrap_or(1);
        let buckets_needed = series
            .buckets
            .iter()
            .any(|bucket| bucket.start + BUCKET_SECONDS > from);
        if step <= spacing && !buckets_needed {
            return raw
                .map(|&(steady, value)| Point::Raw {
                    timestamp: at.unix_of(steady),
                    value,
                })
                .collect();
        }
        // Re-aggregate buckets and raw samples into `step`-wide windows.
        let step = step.max(1);
        let mut windows: Vec<Bucket> = Vec::new();
        let mut add = |start: u64, min: f64, max: f64, sum: f64, count: u32| {
            let window = start - start % step;
            match windows.last_mut() {
                Some(last) if last.start == window => {
                    last.min = last.min.min(min);
                    last.max = last.max.max(max);
                    last.sum += sum;
                    last.count += count;
                }
                _ => windows.push(Bucket {
                    start: window,
                    min,
                    max,
                    sum,
                    count,
                }),
            }
        };
        for bucket in series
            .buckets
            .iter()
            .filter(|bucket| bucket.start + BUCKET_SECONDS > from && bucket.start <= now)
        {
            add(
                bucket.start.max(from),
                bucket.min,
                bucket.max,
                bucket.sum,
                bucket.count,
            );
        }
        for &(timestamp, value) in raw {
            add(timestamp, value, value, value, 1);
        }
        windows
            .into_iter()
            .map(|window| Point::Aggregate {
                timestamp: at.unix_of(window.start),
                min: window.min,
                avg: window.sum / f64::from(window.count),
                max: window.max,
            })
            .collect()
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

/// The valid metric name for `scope`, as `&'static str`, if `name` is one.
pub fn metric_name(
    metrics: &'static [(&'static str, &'static str)],
    name: &str,
) -> Option<&'static str> {
    metrics
        .iter()
        .map(|(metric, _)| *metric)
        .find(|metric| *metric == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instant with no wall-clock step.
    fn steady(seconds: u64) -> Stamp {
        Stamp {
            unix: seconds,
            steady: seconds,
        }
    }

    #[test]
    fn recent_samples_come_back_raw() {
        let mut history = History::new(86_400);
        for t in 0..10 {
            history.record(Scope::Node, "cpu_usage", 1000 + t * 5, t as f64);
        }
        let points = history.query(&Scope::Node, "cpu_usage", steady(1045), 20, 5);
        assert_eq!(
            points,
            (5..10)
                .map(|t| Point::Raw {
                    timestamp: 1000 + t * 5,
                    value: t as f64
                })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn coarser_steps_keep_min_avg_max() {
        let mut history = History::new(86_400);
        for (t, value) in [(0, 1.0), (5, 3.0), (10, 8.0), (15, 0.0)] {
            history.record(Scope::Node, "cpu_usage", 600 + t, value);
        }
        let points = history.query(&Scope::Node, "cpu_usage", steady(615), 60, 10);
        assert_eq!(
            points,
            [
                Point::Aggregate {
                    timestamp: 600,
                    min: 1.0,
                    avg: 2.0,
                    max: 3.0
                },
                Point::Aggregate {
                    timestamp: 610,
                    min: 0.0,
                    avg: 4.0,
                    max: 8.0
                },
            ]
        );
    }

    #[test]
    fn old_samples_are_downsampled_then_dropped_and_memory_is_bounded() {
        let mut history = History::new(2 * 3600);
        let interval = 10;
        for t in (0..4 * 3600).step_by(interval as usize) {
            history.record(Scope::Node, "load_average_1m", t, (t % 100) as f64);
        }
        let series = &history.series[&(Scope::Node, "load_average_1m")];
        assert!(series.raw.len() as u64 <= RAW_WINDOW_SECONDS / interval + 1);
        assert!(series.buckets.len() as u64 <= 2 * 3600 / BUCKET_SECONDS + 1);
        let now = 4 * 3600 - interval;
        let all = history.query(
            &Scope::Node,
            "load_average_1m",
            steady(now),
            2 * 3600,
            BUCKET_SECONDS,
        );
        assert!(
            all.iter()
                .all(|point| matches!(point, Point::Aggregate { .. }))
        );
        assert!(
            all.len() as u64 <= 2 * 3600 / BUCKET_SECONDS + 2,
            "{}",
            all.len()
        );
        assert!(
            history
                .query(
                    &Scope::Node,
                    "load_average_1m",
                    steady(now),
                    10 * 3600,
                    BUCKET_SECONDS
                )
                .len()
                <= all.len() + 1
        );
        assert!(bytes_per_series(86_400, 5) < 32 * 1024);
    }

    #[test]
    fn wall_clock_steps_keep_memory_bounded_and_points_in_order() {
        let mut history = History::new(2 * 3600);
        // Five hours of 1 s samples: expiry and the count caps follow the steady
        // clock, whatever the wall clock did meanwhile.
        for second in 0..5 * 3600u64 {
            history.record(Scope::Node, "cpu_usage", 500_000 + second, 1.0);
        }
        let series = &history.series[&(Scope::Node, "cpu_usage")];
        assert!(series.raw.len() as u64 <= RAW_WINDOW_SECONDS + 1);
        assert!(series.buckets.len() as u64 <= 2 * 3600 / BUCKET_SECONDS + 1);
        // Queried after the wall clock was stepped back a day: the last minute is
        // still the last minute, shown on the wall clock as it reads now.
        let now = Stamp {
            unix: 500_000 + 5 * 3600 - 1 - 86_400,
            steady: 500_000 + 5 * 3600 - 1,
        };
        let points = history.query(&Scope::Node, "cpu_usage", now, 60, 1);
        assert_eq!(points.len(), 61);
        assert_eq!(
            points.last(),
            Some(&Point::Raw {
                timestamp: now.unix,
                value: 1.0
            })
        );
    }

    #[test]
    fn entry_counts_are_capped_even_when_time_stands_still() {
        let mut history = History::new(3600);
        for _ in 0..20_000 {
            history.record(Scope::Node, "cpu_usage", 7, 1.0);
        }
        let series = &history.series[&(Scope::Node, "cpu_usage")];
        assert!(series.raw.len() as u64 <= RAW_WINDOW_SECONDS + 1);
    }

    #[test]
    fn containers_that_are_gone_are_forgotten() {
        let mut history = History::new(3600);
        history.record(Scope::Container("a".into()), "cpu_usage_percent", 1, 1.0);
        history.record(Scope::Container("b".into()), "cpu_usage_percent", 1, 1.0);
        history.record(Scope::Node, "cpu_usage", 1, f64::NAN);
        history.retain_containers(&["a"].into_iter().collect());
        assert_eq!(history.series_count(), 1);
    }
}
