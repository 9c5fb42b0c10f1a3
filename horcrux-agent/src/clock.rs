//! Time as the agent uses it. Every published figure carries the wall clock
//! (`unix`), but everything that measures an interval — rates, history expiry and
//! downsampling, alert `for` windows — runs on `steady`: the monotonic clock,
//! offset once so that it reads the wall clock's seconds at the agent's start. A
//! wall-clock step in either direction therefore neither stalls expiry (memory
//! growth) nor holds or hurries an alert.

use std::sync::OnceLock;

/// One instant on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Wall clock, Unix seconds: what the API reports.
    pub unix: u64,
    /// Monotonic seconds, equal to `unix` until the wall clock is stepped.
    pub steady: u64,
}

impl Stamp {
    /// The wall-clock time of a steady-clock second, as the wall clock reads now: a
    /// step moves every past instant with it, so "ten minutes ago" stays true.
    pub fn unix_of(&self, steady: u64) -> u64 {
        steady.saturating_add(self.unix).saturating_sub(self.steady)
    }

    /// The steady-clock second of a wall-clock time, as the wall clock reads now.
    pub fn steady_of(&self, unix: u64) -> u64 {
        unix.saturating_add(self.steady).saturating_sub(self.unix)
    }
}

pub fn now() -> Stamp {
    let wall = wall_nanos();
    let monotonic = monotonic_nanos();
    // Anchored at the first call (start-up) to the nanosecond, so steady == unix
    // until a step (whole-second anchoring would make them differ by one second
    // for part of every second).
    let offset = *OFFSET.get_or_init(|| wall - monotonic);
    Stamp {
        unix: (wall / NANOS).max(0) as u64,
        steady: ((monotonic + offset) / NANOS).max(0) as u64,
    }
}

const NANOS: i128 = 1_000_000_000;

static OFFSET: OnceLock<i128> = OnceLock::new();

pub fn unix_seconds() -> u64 {
    (wall_nanos() / NANOS).max(0) as u64
}

fn wall_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i128)
}

fn monotonic_nanos() -> i128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |time| {
        i128::from(time.tv_sec()) * NANOS + i128::from(time.tv_nsec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_matches_wall_clock_without_steps() {
        for _ in 0..50 {
            let stamp = now();
            // Off by one only when the two clock reads straddle a second boundary.
            assert!(stamp.unix.abs_diff(stamp.steady) <= 1, "{stamp:?}");
            std::thread::sleep(std::time::Duration::from_millis(23));
        }
        let agree = (0..20)
            .filter(|_| {
                std::thread::sleep(std::time::Duration::from_millis(37));
                let stamp = now();
                stamp.unix == stamp.steady
            })
            .count();
        assert!(agree >= 18, "steady and unix agreed {agree} times in 20");
    }

    #[test]
    fn conversions_follow_the_current_step() {
        // The wall clock was stepped back an hour: steady 10_000 is now unix 6_400.
        let stamp = Stamp {
            unix: 6_400,
            steady: 10_000,
        };
        assert_eq!(stamp.unix_of(9_400), 5_800);
        assert_eq!(stamp.steady_of(5_800), 9_400);
    }
}
