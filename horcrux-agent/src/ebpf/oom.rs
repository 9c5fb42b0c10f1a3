//! The OOM family's kills, read from the `OOM_KILLS` ring buffer as they happen,
//! with the victim's memory cgroup named by its path (the agent attributes them:
//! `crate::oom`).

use std::{
    os::fd::AsFd,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use horcrux_common::{OOM_CONSTRAINT_MEMCG, OomKill};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::{cgroup::inodes::InodeIndex, oom::OomKillRecord};

/// Kills beyond this per wait are left in the ring for the next.
const MAX_PER_WAIT: usize = 1024;

pub struct OomKills {
    ring: RingBuf<MapData>,
    index: InodeIndex,
    page_size: u64,
}

impl OomKills {
    pub fn new(ring: RingBuf<MapData>, index: InodeIndex) -> Self {
        Self {
            ring,
            index,
            page_size: super::page_size(),
        }
    }

    /// Waits up to `timeout` for kills and returns those reported, not yet
    /// attributed (`target` is `None`).
    pub fn wait(&mut self, timeout: Duration) -> Vec<OomKillRecord> {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, timeout).is_err() {
            return Vec::new();
        }
        let mut kills = Vec::new();
        while kills.len() < MAX_PER_WAIT
            && let Some(item) = self.ring.next()
        {
            if let Some(kill) = parse(&item) {
                kills.push(kill);
            }
        }
        kills.into_iter().map(|kill| self.describe(&kill)).collect()
    }

    fn describe(&mut self, kill: &OomKill) -> OomKillRecord {
        let cgroup = self.name(kill.victim_cgroup_id);
        let limit_cgroup = self.name(kill.limit_cgroup_id);
        let comm_length = kill.comm.iter().position(|byte| *byte == 0).unwrap_or(16);
        OomKillRecord {
            timestamp: unix_seconds_of_monotonic(kill.time_ns),
            pid: kill.pid,
            tid: kill.tid,
            comm: String::from_utf8_lossy(&kill.comm[..comm_length]).into_owned(),
            constraint: constraint_name(kill.constraint),
            rss_bytes: kill.rss_pages.saturating_mul(self.page_size),
            cgroup,
            limit_cgroup,
            target: None,
        }
    }

    /// The `/`-prefixed path of a memory cgroup (`None` for id 0, or a cgroup
    /// removed before it was looked up); a new cgroup makes the index walk again.
    fn name(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if self.index.path(id).is_none() {
            self.index.refresh();
        }
        self.index.path(id).map(|path| format!("/{path}"))
    }
}

/// A ring buffer record as the program wrote it; anything else is skipped.
fn parse(bytes: &[u8]) -> Option<OomKill> {
    if bytes.len() < size_of::<OomKill>() {
        return None;
    }
    // SAFETY: the length is checked; `OomKill` is plain integers (any bit pattern
    // is valid) and the read is unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<OomKill>()) })
}

fn constraint_name(constraint: u32) -> &'static str {
    if constraint == OOM_CONSTRAINT_MEMCG {
        "memcg"
    } else {
        "global"
    }
}

/// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) as Unix seconds.
fn unix_seconds_of_monotonic(time_ns: u64) -> f64 {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |now| now.as_secs_f64());
    let age_ns = super::counters::monotonic_ns().saturating_sub(time_ns);
    unix_now - age_ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_records_are_skipped_and_constraints_named() {
        assert_eq!(parse(&[0u8; 10]), None);
        let mut kill = OomKill {
            time_ns: 5,
            victim_cgroup_id: 7,
            limit_cgroup_id: 0,
            rss_pages: 3,
            pid: 42,
            tid: 43,
            constraint: OOM_CONSTRAINT_MEMCG,
            reserved: 0,
            comm: [0; 16],
        };
        kill.comm[..4].copy_from_slice(b"tail");
        // SAFETY: a plain-integer struct viewed as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const kill).cast::<u8>(), size_of::<OomKill>())
        };
        assert_eq!(parse(bytes), Some(kill));
        assert_eq!(constraint_name(OOM_CONSTRAINT_MEMCG), "memcg");
        assert_eq!(
            constraint_name(horcrux_common::OOM_CONSTRAINT_GLOBAL),
            "global"
        );
    }
}
