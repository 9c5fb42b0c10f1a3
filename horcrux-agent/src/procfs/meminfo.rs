//! `/proc/meminfo`: memory and swap totals, converted to bytes.

use super::{ParseError, parse_u64};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub buffers: u64,
    /// `Cached` alone; procps `free` adds `SReclaimable` to it (see [`MemInfo::cache`]).
    pub cached: u64,
    pub sreclaimable: u64,
    pub shmem: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl MemInfo {
    /// Page cache as procps `free` reports it: `Cached + SReclaimable`.
    pub fn cache(&self) -> u64 {
        self.cached + self.sreclaimable
    }

    /// The spec's "used": total − (free + buffers + cache), never negative.
    pub fn used(&self) -> u64 {
        self.total
            .saturating_sub(self.free + self.buffers + self.cache())
    }
}

pub fn parse(text: &str) -> Result<MemInfo, ParseError> {
    let mut info = MemInfo::default();
    let mut seen_total = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let Some((key, rest)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(ParseError::new(number, "expected \"Key: value\""));
        };
        let slot = match key {
            "MemTotal" => {
                seen_total = true;
                &mut info.total
            }
            "MemFree" => &mut info.free,
            "MemAvailable" => &mut info.available,
            "Buffers" => &mut info.buffers,
            "Cached" => &mut info.cached,
            "SReclaimable" => &mut info.sreclaimable,
            "Shmem" => &mut info.shmem,
            "SwapTotal" => &mut info.swap_total,
            "SwapFree" => &mut info.swap_free,
            _ => continue,
        };
        let mut fields = rest.split_ascii_whitespace();
        let value = parse_u64(fields.next(), number, key)?;
        *slot = match fields.next() {
            Some("kB") => value
                .checked_mul(1024)
                .ok_or_else(|| ParseError::new(number, format!("{key} overflows")))?,
            None => value,
            Some(unit) => return Err(ParseError::new(number, format!("unknown unit {unit:?}"))),
        };
    }
    if !seen_total {
        return Err(ParseError::new(0, "no MemTotal line"));
    }
    Ok(info)
}
