//! Rate cache: turns cumulative kernel counters into deltas and per-second rates
//! between two samples, keyed by device, interface or CPU.
//!
//! Elapsed time comes from the monotonic clock at the moment each source was read.
//! Keys that vanish are forgotten after one cycle; keys that appear get their first
//! rate on their second sample.

use std::{
    collections::HashMap,
    hash::Hash,
    mem,
    time::{Duration, Instant},
};

/// What a counter that went down between two samples means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decrease {
    /// The counter was reset or wrapped (device re-created, driver reloaded): as
    /// Prometheus' `rate()` does, count from zero, so the delta is the new value.
    Reset,
    /// A known kernel quirk, not a reset (per-CPU iowait can step back): delta 0.
    NoChange,
}

/// Differences between two samples of `N` counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deltas<const N: usize> {
    pub values: [u64; N],
    pub elapsed: Duration,
}

impl<const N: usize> Deltas<N> {
    pub fn per_second(&self) -> [f64; N] {
        let seconds = self.elapsed.as_secs_f64();
        self.values.map(|delta| delta as f64 / seconds)
    }
}

#[derive(Debug)]
pub struct RateTracker<K, const N: usize> {
    decrease: Decrease,
    previous: HashMap<K, [u64; N]>,
    current: HashMap<K, [u64; N]>,
    previous_at: Option<Instant>,
    current_at: Option<Instant>,
}

impl<K: Eq + Hash, const N: usize> RateTracker<K, N> {
    pub fn new(decrease: Decrease) -> Self {
        Self {
            decrease,
            previous: HashMap::new(),
            current: HashMap::new(),
            previous_at: None,
            current_at: None,
        }
    }

    /// Starts a new sample taken at `now`; the last sample becomes the baseline.
    pub fn begin(&mut self, now: Instant) {
        mem::swap(&mut self.previous, &mut self.current);
        self.current.clear();
        self.previous_at = self.current_at.replace(now);
    }

    /// Records `counters` for `key` in the current sample and returns the deltas
    /// since the previous sample, if `key` was in it.
    pub fn observe(&mut self, key: K, counters: [u64; N]) -> Option<Deltas<N>> {
        let elapsed = self
            .current_at
            .zip(self.previous_at)
            .and_then(|(current, previous)| current.checked_duration_since(previous))
            .filter(|elapsed| !elapsed.is_zero());
        let deltas = elapsed
            .zip(self.previous.get(&key))
            .map(|(elapsed, previous)| Deltas {
                values: std::array::from_fn(|i| self.delta(previous[i], counters[i])),
                elapsed,
            });
        self.current.insert(key, counters);
        deltas
    }

    fn delta(&self, previous: u64, current: u64) -> u64 {
        match (current.checked_sub(previous), self.decrease) {
            (Some(delta), _) => delta,
            (None, Decrease::Reset) => current,
            (None, Decrease::NoChange) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(decrease: Decrease) -> (RateTracker<&'static str, 1>, Instant) {
        (RateTracker::new(decrease), Instant::now())
    }

    #[test]
    fn first_sample_has_no_rate_second_does() {
        let (mut rates, t0) = tracker(Decrease::Reset);
        rates.begin(t0);
        assert_eq!(rates.observe("eth0", [1000]), None);
        rates.begin(t0 + Duration::from_secs(2));
        let deltas = rates.observe("eth0", [3000]).expect("second sample");
        assert_eq!(deltas.values, [2000]);
        assert_eq!(deltas.per_second(), [1000.0]);
    }

    #[test]
    fn uses_real_elapsed_time_not_nominal_interval() {
        let (mut rates, t0) = tracker(Decrease::Reset);
        rates.begin(t0);
        rates.observe("sda", [0]);
        rates.begin(t0 + Duration::from_millis(1250));
        let rate = rates.observe("sda", [500]).expect("rate").per_second()[0];
        assert!((rate - 400.0).abs() < 1e-9);
    }

    #[test]
    fn counter_reset_counts_from_zero_and_quirk_counts_nothing() {
        let (mut reset, t0) = tracker(Decrease::Reset);
        reset.begin(t0);
        reset.observe("x", [u64::MAX - 5]);
        reset.begin(t0 + Duration::from_secs(1));
        assert_eq!(reset.observe("x", [7]).expect("rate").values, [7]);

        let (mut quirk, t0) = tracker(Decrease::NoChange);
        quirk.begin(t0);
        quirk.observe("cpu0", [100]);
        quirk.begin(t0 + Duration::from_secs(1));
        assert_eq!(quirk.observe("cpu0", [99]).expect("rate").values, [0]);
    }

    #[test]
    fn vanished_keys_are_forgotten_and_reappear_without_rate() {
        let (mut rates, t0) = tracker(Decrease::Reset);
        rates.begin(t0);
        rates.observe("veth1", [10]);
        rates.begin(t0 + Duration::from_secs(1));
        // veth1 is gone this cycle.
        rates.begin(t0 + Duration::from_secs(2));
        assert_eq!(rates.observe("veth1", [50]), None);
        assert!(rates.previous.is_empty(), "old keys are not kept");
    }

    #[test]
    fn zero_elapsed_time_gives_no_rate() {
        let (mut rates, t0) = tracker(Decrease::Reset);
        rates.begin(t0);
        rates.observe("lo", [1]);
        rates.begin(t0);
        assert_eq!(rates.observe("lo", [2]), None);
    }
}
