//! Storage: in-memory metric history, enabled by `enable_history`: the series of
//! the metric catalog ([`crate::catalog`]), recorded from every published snapshot
//! by [`crate::recorder`].
//!
//! Each series keeps two ring buffers: every sample for the most recent
//! [`RAW_WINDOW_SECONDS`], and [`BUCKET_SECONDS`] buckets of min/avg/max for the rest
//! of `history_retention`. Both are bounded by time and by entry count, so memory
//! per series is fixed (see [`bytes_per_series`]) whatever the wall clock does:
//! samples are placed on the steady clock ([`crate::clock`]) and shown on the wall
//! clock as it reads when queried. HTTP handlers query.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::{catalog::Scope, clock::Stamp};

/// Full-resolution window.
pub const RAW_WINDOW_SECONDS: u64 = 3600;
/// Downsampled bucket width beyond the raw window.
pub const BUCKET_SECONDS: u64 = 300;

/// One series: a scope's target (the node is `""`, a container its cgroup path)
/// and a series name of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub scope: Scope,
    pub target: String,
    pub metric: &'static str,
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
    series: HashMap<SeriesKey, Series>,
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
    pub fn record(&mut self, key: SeriesKey, steady: u64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let retention = self.retention;
        let raw_window = RAW_WINDOW_SECONDS.min(retention);
        let series = self.series.entry(key).or_default();
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

    /// Forgets the series of a scope's targets that no longer exist.
    pub fn retain_targets(&mut self, scope: Scope, live: &std::collections::HashSet<&str>) {
        self.series
            .retain(|key, _| key.scope != scope || live.contains(key.target.as_str()));
    }

    /// Points of the last `range` seconds before `at`, timestamped on the wall clock
    /// as it reads at `at`. With `step` at or below the data's own spacing, raw
    /// values; otherwise min/avg/max per `step`.
    pub fn query(&self, key: &SeriesKey, at: Stamp, range: u64, step: u64) -> Vec<Point> {
        let Some(series) = self.series.get(key) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(metric: &'static str) -> SeriesKey {
        SeriesKey {
            scope: Scope::Node,
            target: String::new(),
            metric,
        }
    }

    fn container(target: &str) -> SeriesKey {
        SeriesKey {
            scope: Scope::Container,
            target: target.into(),
            metric: "cpu_usage_percent",
        }
    }

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
            history.record(node("cpu_usage"), 1000 + t * 5, t as f64);
        }
        let points = history.query(&node("cpu_usage"), steady(1045), 20, 5);
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
            history.record(node("cpu_usage"), 600 + t, value);
        }
        let points = history.query(&node("cpu_usage"), steady(615), 60, 10);
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
            history.record(node("load_average_1m"), t, (t % 100) as f64);
        }
        let series = &history.series[&node("load_average_1m")];
        assert!(series.raw.len() as u64 <= RAW_WINDOW_SECONDS / interval + 1);
        assert!(series.buckets.len() as u64 <= 2 * 3600 / BUCKET_SECONDS + 1);
        let now = 4 * 3600 - interval;
        let all = history.query(
            &node("load_average_1m"),
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
                    &node("load_average_1m"),
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
            history.record(node("cpu_usage"), 500_000 + second, 1.0);
        }
        let series = &history.series[&node("cpu_usage")];
        assert!(series.raw.len() as u64 <= RAW_WINDOW_SECONDS + 1);
        assert!(series.buckets.len() as u64 <= 2 * 3600 / BUCKET_SECONDS + 1);
        // Queried after the wall clock was stepped back a day: the last minute is
        // still the last minute, shown on the wall clock as it reads now.
        let now = Stamp {
            unix: 500_000 + 5 * 3600 - 1 - 86_400,
            steady: 500_000 + 5 * 3600 - 1,
        };
        let points = history.query(&node("cpu_usage"), now, 60, 1);
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
            history.record(node("cpu_usage"), 7, 1.0);
        }
        let series = &history.series[&node("cpu_usage")];
        assert!(series.raw.len() as u64 <= RAW_WINDOW_SECONDS + 1);
    }

    #[test]
    fn containers_that_are_gone_are_forgotten() {
        let mut history = History::new(3600);
        history.record(container("a"), 1, 1.0);
        history.record(container("b"), 1, 1.0);
        history.record(node("cpu_usage"), 1, f64::NAN);
        history.retain_targets(Scope::Container, &["a"].into_iter().collect());
        assert_eq!(history.series_count(), 1);
    }
}
