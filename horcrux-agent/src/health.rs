//! What the agent knows of its collectors, as `/api/status` and the agent's metric
//! families show it: the supervisor's view of each collector thread
//! ([`SupervisorView`]), and per-collector health: how long the last cycle took,
//! and every error, counted
//! per source kind (`/proc/stat`, `cgroup memory.stat`, never a per-container or
//! per-pid path, so the map stays small). Errors are logged once per distinct
//! message so a permanently broken file does not flood the log.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

/// A collector thread as its supervisor sees it.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorView {
    pub panics: u64,
    pub last_panic: Option<String>,
    pub last_success: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CollectorHealth {
    pub cycles: u64,
    pub last_duration_ms: Option<f64>,
    /// CPU time (user + system) the collecting thread spent in the last cycle.
    pub last_cpu_time_ms: Option<f64>,
    pub last_run_timestamp: Option<u64>,
    pub error_count: u64,
    pub last_error: Option<String>,
    pub last_error_timestamp: Option<u64>,
    /// Errors per source kind (e.g. `/proc/diskstats`) since start.
    pub errors_by_source: BTreeMap<String, u64>,
}

/// Source kinds kept apart at most; further ones are counted under `other`.
const MAX_SOURCES: usize = 64;

impl CollectorHealth {
    pub fn record_error(&mut self, collector: &str, source: &str, message: String, timestamp: u64) {
        if self.last_error.as_deref() == Some(message.as_str()) {
            tracing::debug!(collector, source, "{message}");
        } else {
            tracing::warn!(collector, source, "{message}");
        }
        self.error_count += 1;
        let source = if self.errors_by_source.len() < MAX_SOURCES
            || self.errors_by_source.contains_key(source)
        {
            source
        } else {
            "other"
        };
        *self.errors_by_source.entry(source.to_owned()).or_default() += 1;
        self.last_error = Some(message);
        self.last_error_timestamp = Some(timestamp);
    }

    pub fn record_cycle(&mut self, wall: Duration, cpu: Option<Duration>, timestamp: u64) {
        self.cycles += 1;
        self.last_duration_ms = Some(wall.as_secs_f64() * 1e3);
        self.last_cpu_time_ms = cpu.map(|cpu| cpu.as_secs_f64() * 1e3);
        self.last_run_timestamp = Some(timestamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_sources_are_bounded() {
        let mut health = CollectorHealth::default();
        for index in 0..10_000 {
            health.record_error("test", &format!("source {index}"), "failed".into(), 0);
        }
        assert_eq!(health.errors_by_source.len(), MAX_SOURCES + 1);
        assert_eq!(health.error_count, 10_000);
    }
}
