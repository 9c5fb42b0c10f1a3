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
//!
//! [`HistoryFile`] keeps it across restarts: a checkpoint file of checksummed
//! per-series records ([`crate::records`]) under `[storage] path`, read back at
//! start-up (damage skipped and counted) and rewritten every
//! `history_checkpoint_interval` and at shutdown.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use serde::Serialize;

use crate::{
    catalog::Scope,
    clock::{self, Stamp},
    records,
};

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

    /// The whole history as a history file: one checksummed record per series
    /// ([`crate::records`]), wall-clock timestamps as of `at`, node series first;
    /// series that would take the file past `budget` bytes are left out (counted).
    pub fn checkpoint(&self, at: Stamp, budget: u64) -> (Vec<u8>, Checkpoint) {
        let mut keys: Vec<&SeriesKey> = self.series.keys().collect();
        keys.sort_by(|a, b| (a.scope, &a.target, a.metric).cmp(&(b.scope, &b.target, b.metric)));
        let mut file = HISTORY_MAGIC.to_vec();
        let mut report = Checkpoint::default();
        for key in keys {
            let Some(series) = self.series.get(key) else {
                continue;
            };
            let payload = encode_series(key, series, at);
            let points = (series.raw.len() + series.buckets.len()) as u64;
            let record = records::encode_record(points, at.unix as i64 * 1000, &payload);
            if (file.len() + record.len()) as u64 > budget {
                report.omitted_series += 1;
                continue;
            }
            file.extend_from_slice(&record);
            report.series += 1;
            report.points += points;
        }
        report.bytes = file.len() as u64;
        (file, report)
    }

    /// Adds the series of a history file read at start-up, before anything is
    /// recorded: intact records are kept, damage skipped and counted, series the
    /// catalog no longer has left out.
    pub fn restore(&mut self, file: &[u8], at: Stamp) -> Restored {
        let scan = records::scan(file, HISTORY_MAGIC);
        let mut report = Restored {
            damaged_bytes: scan.corrupt_bytes,
            ..Restored::default()
        };
        for span in &scan.records {
            let payload = &file[span.offset as usize + records::HEADER_LEN..span.end as usize];
            let Some((key, raw, buckets)) = decode_series(payload, at) else {
                report.skipped_series += 1;
                continue;
            };
            report.series += 1;
            report.points += (raw.len() + buckets.len()) as u64;
            let series = self.series.entry(key.clone()).or_default();
            series.buckets = buckets;
            series.raw.clear();
            // Replayed in order, so raw points now older than the raw window become
            // buckets and points beyond the retention go, as if recorded live.
            for (steady, value) in raw {
                self.record(key.clone(), steady, value);
            }
        }
        report
    }
}

/// The history file's magic (`<[storage] path>/history.dat`).
pub const HISTORY_MAGIC: &[u8; 8] = b"HXHIST01";

/// What a checkpoint wrote.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Checkpoint {
    pub series: u64,
    pub points: u64,
    pub bytes: u64,
    /// Series left out to stay within `history_max_bytes`.
    pub omitted_series: u64,
}

/// What start-up read back.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Restored {
    pub series: u64,
    /// Raw points and 5-minute buckets.
    pub points: u64,
    /// Bytes that did not check out (skipped).
    pub damaged_bytes: u64,
    /// Intact records that did not decode, or name a series the catalog no longer has.
    pub skipped_series: u64,
}

/// A series record's payload, snappy-compressed: scope (u8), target and metric
/// (u16 length + UTF-8), raw points (u32 count, then Unix seconds u64 + value f64),
/// buckets (u32 count, then start u64, min, max, sum f64, count u32); little-endian.
fn encode_series(key: &SeriesKey, series: &Series, at: Stamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + series.raw.len() * 16 + series.buckets.len() * 36);
    out.push(scope_code(key.scope));
    for text in [key.target.as_str(), key.metric] {
        let bytes = &text.as_bytes()[..text.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&(series.raw.len() as u32).to_le_bytes());
    for &(steady, value) in &series.raw {
        out.extend_from_slice(&at.unix_of(steady).to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&(series.buckets.len() as u32).to_le_bytes());
    for bucket in &series.buckets {
        out.extend_from_slice(&at.unix_of(bucket.start).to_le_bytes());
        for value in [bucket.min, bucket.max, bucket.sum] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&bucket.count.to_le_bytes());
    }
    snap::raw::Encoder::new()
        .compress_vec(&out)
        .unwrap_or_default()
}

type Decoded = (SeriesKey, Vec<(u64, f64)>, VecDeque<Bucket>);

fn decode_series(payload: &[u8], at: Stamp) -> Option<Decoded> {
    let bytes = snap::raw::Decoder::new().decompress_vec(payload).ok()?;
    let mut reader = Reader(&bytes);
    let scope = scope_of(reader.take(1)?[0])?;
    let mut text = || -> Option<String> {
        let length = usize::from(u16::from_le_bytes(reader.take(2)?.try_into().ok()?));
        String::from_utf8(reader.take(length)?.to_vec()).ok()
    };
    let target = text()?;
    let metric = crate::catalog::series_name(scope, &text()?)?;
    let raw_count = reader.u32()? as usize;
    let mut raw = Vec::with_capacity(raw_count.min(bytes.len() / 16));
    for _ in 0..raw_count {
        raw.push((at.steady_of(reader.u64()?), reader.f64()?));
    }
    let bucket_count = reader.u32()? as usize;
    let mut buckets = VecDeque::with_capacity(bucket_count.min(bytes.len() / 36));
    for _ in 0..bucket_count {
        let start = at.steady_of(reader.u64()?);
        buckets.push_back(Bucket {
            start: start - start % BUCKET_SECONDS,
            min: reader.f64()?,
            max: reader.f64()?,
            sum: reader.f64()?,
            count: reader.u32()?,
        });
    }
    let key = SeriesKey {
        scope,
        target,
        metric,
    };
    Some((key, raw, buckets))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(count)?;
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn scope_code(scope: Scope) -> u8 {
    match scope {
        Scope::Node => 0,
        Scope::Container => 1,
        Scope::Vm => 2,
        Scope::Agent => 3,
    }
}

fn scope_of(code: u8) -> Option<Scope> {
    [Scope::Node, Scope::Container, Scope::Vm, Scope::Agent]
        .into_iter()
        .find(|scope| scope_code(*scope) == code)
}

/// The history file's state, for `/api/status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FileStatus {
    pub path: std::path::PathBuf,
    pub restored: Option<Restored>,
    pub last_checkpoint: Option<Checkpoint>,
    /// Unix seconds of the last checkpoint written.
    pub last_checkpoint_at: Option<u64>,
    pub last_error: Option<String>,
}

/// Keeps history across restarts: reads `path` back at start-up, then writes a
/// checkpoint every `interval` (and once more at shutdown, [`HistoryFile::save`])
/// through a temporary file and a rename. A process killed outright loses at
/// most one interval.
pub struct HistoryFile {
    history: Arc<Mutex<History>>,
    budget: u64,
    pub status: Arc<Mutex<FileStatus>>,
}

impl HistoryFile {
    pub fn open(history: Arc<Mutex<History>>, path: std::path::PathBuf, budget: u64) -> Self {
        let mut status = FileStatus {
            path: path.clone(),
            ..FileStatus::default()
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let restored = history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .restore(&bytes, clock::now());
                if restored.damaged_bytes > 0 || restored.skipped_series > 0 {
                    tracing::warn!(
                        path = %path.display(),
                        series = restored.series,
                        damaged_bytes = restored.damaged_bytes,
                        skipped_series = restored.skipped_series,
                        "history file damaged: restored what checked out"
                    );
                } else {
                    tracing::info!(
                        series = restored.series,
                        points = restored.points,
                        "history restored"
                    );
                }
                status.restored = Some(restored);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), "history file not read: {error}");
                status.last_error = Some(format!("reading: {error}"));
            }
        }
        Self {
            history,
            budget,
            status: Arc::new(Mutex::new(status)),
        }
    }

    /// Writes a checkpoint every `interval` on a thread of its own.
    pub fn spawn_checkpoints(&self, interval: std::time::Duration) -> std::io::Result<()> {
        let writer = Self {
            history: Arc::clone(&self.history),
            budget: self.budget,
            status: Arc::clone(&self.status),
        };
        std::thread::Builder::new()
            .name("history-file".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    writer.save();
                }
            })
            .map(drop)
    }

    /// Writes a checkpoint now (encoded under the lock, written outside it).
    pub fn save(&self) {
        let at = clock::now();
        let (bytes, checkpoint) = self
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .checkpoint(at, self.budget);
        let path = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .path
            .clone();
        let written = path
            .parent()
            .map_or(Ok(()), |dir| {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
            })
            .and_then(|()| records::rewrite(&path, &bytes, records::Flush::Durable));
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        match written {
            Ok(()) => {
                if checkpoint.omitted_series > 0
                    && status
                        .last_checkpoint
                        .as_ref()
                        .is_none_or(|last| last.omitted_series == 0)
                {
                    tracing::warn!(
                        omitted_series = checkpoint.omitted_series,
                        budget = self.budget,
                        "history file budget reached: series left out"
                    );
                }
                status.last_checkpoint = Some(checkpoint);
                status.last_checkpoint_at = Some(at.unix);
                status.last_error = None;
            }
            Err(error) => {
                if status.last_error.is_none() {
                    tracing::warn!(path = %path.display(), "history checkpoint not written: {error}");
                }
                status.last_error = Some(format!("writing: {error}"));
            }
        }
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
    fn a_checkpoint_restores_raw_points_and_buckets_and_skips_garbage() {
        let mut history = History::new(86_400);
        let start = 1_000_000;
        // Two hours at 10 s: the first hour in buckets, the second raw.
        for offset in (0..7200).step_by(10) {
            history.record(node("cpu_usage"), start + offset, offset as f64);
            history.record(container("/docker/a"), start + offset, 1.5);
        }
        let at = steady(start + 7200);
        let (file, checkpoint) = history.checkpoint(at, u64::MAX);
        assert_eq!(checkpoint.series, 2);
        let mut restored = History::new(86_400);
        let report = restored.restore(&file, at);
        assert_eq!((report.series, report.damaged_bytes), (2, 0));
        for key in [node("cpu_usage"), container("/docker/a")] {
            for (range, step) in [(600, 1), (7200, 300)] {
                assert_eq!(
                    restored.query(&key, at, range, step),
                    history.query(&key, at, range, step)
                );
            }
        }
        // After a restart 100 s later (a new process anchors its steady clock to
        // the wall clock), the same wall-clock points.
        let later = steady(at.unix + 100);
        let mut moved = History::new(86_400);
        moved.restore(&file, later);
        assert_eq!(
            moved.query(&node("cpu_usage"), later, 700, 1),
            history.query(
                &node("cpu_usage"),
                Stamp {
                    unix: at.unix + 100,
                    steady: at.steady + 100
                },
                700,
                1
            )
        );
        let (small, limited) = history.checkpoint(at, 3000);
        assert_eq!(limited.omitted_series, 1, "{limited:?}");
        assert!(small.len() <= 3000);
        let garbage: Vec<u8> = HISTORY_MAGIC
            .iter()
            .copied()
            .chain((0..5000).map(|i| (i * 7 % 256) as u8))
            .collect();
        assert_eq!(History::new(60).restore(&garbage, at).series, 0);
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
