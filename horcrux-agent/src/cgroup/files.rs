//! Parsers for the cgroup file formats (Documentation/admin-guide/cgroup-v2.rst
//! "Interface Files", and the v1 controller documents). Pure functions over text.

use crate::model::{Pressure, PressureLine};
use crate::procfs::{ParseError, parse_u64};

/// v1 reports "no limit" as a huge page-aligned number (LONG_MAX rounded down to a page).
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// A single number (`memory.current`, `cpuacct.usage`, `pids.current`).
pub fn single(text: &str) -> Result<u64, ParseError> {
    parse_u64(text.split_whitespace().next(), 1, "value")
}

/// A limit: `max` (v2) or v1's near-`i64::MAX` sentinel mean unlimited (`None`).
pub fn limit(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim() {
        "max" => Ok(None),
        value => single(value).map(|value| (value < V1_UNLIMITED).then_some(value)),
    }
}

/// The values of `keys` in a "key value" file (`cpu.stat`, `memory.stat`,
/// `memory.events`, `cgroup.events`, …), without allocating. Keys not asked for are
/// skipped; an asked-for key whose value is not a number is an error.
pub fn pick<const N: usize>(text: &str, keys: [&str; N]) -> Result<[Option<u64>; N], ParseError> {
    let mut values = [None; N];
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        if let Some(slot) = keys.iter().position(|wanted| *wanted == key) {
            values[slot] = Some(parse_u64(fields.next(), index + 1, key)?);
        }
    }
    Ok(values)
}

/// v1 `cpuacct.usage_all`: a "cpu user system" header, then nanoseconds per CPU.
/// Returns (user, system) summed over CPUs (tick-based: their sum is not `cpuacct.usage`).
pub fn cpuacct_usage_all(text: &str) -> Result<(u64, u64), ParseError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.split_whitespace().eq(["cpu", "user", "system"]) => {}
        _ => return Err(ParseError::new(1, "expected header \"cpu user system\"")),
    }
    let (mut user, mut system) = (0u64, 0u64);
    for (index, line) in lines {
        let mut fields = line.split_whitespace();
        if fields.next().is_none() {
            continue;
        }
        user = user.saturating_add(parse_u64(fields.next(), index + 1, "user")?);
        system = system.saturating_add(parse_u64(fields.next(), index + 1, "system")?);
    }
    Ok((user, system))
}

/// `cpu.max`: "$MAX $PERIOD" → the limit in CPUs (`None` = unlimited).
pub fn cpu_max(text: &str) -> Result<Option<f64>, ParseError> {
    let mut fields = text.split_whitespace();
    let quota = fields
        .next()
        .ok_or_else(|| ParseError::new(1, "empty cpu.max"))?;
    let period = parse_u64(fields.next(), 1, "period")?;
    if quota == "max" {
        return Ok(None);
    }
    let quota = parse_u64(Some(quota), 1, "quota")?;
    Ok(cores(quota as i64, period))
}

/// v1 `cpu.cfs_quota_us` (-1 = unlimited) over `cpu.cfs_period_us`.
pub fn cores(quota_us: i64, period_us: u64) -> Option<f64> {
    (quota_us > 0 && period_us > 0).then(|| quota_us as f64 / period_us as f64)
}

/// One device's counters from `io.stat` (v2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceIo {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub discard_bytes: u64,
    pub reads: u64,
    pub writes: u64,
    pub discards: u64,
}

/// `io.stat`: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6".
pub fn io_stat(text: &str) -> Result<Vec<DeviceIo>, ParseError> {
    let mut devices = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let mut fields = line.split_whitespace();
        let Some(device) = fields.next() else {
            continue;
        };
        let (major, minor) = device_number(device, number)?;
        let mut io = DeviceIo {
            major,
            minor,
            ..DeviceIo::default()
        };
        for field in fields {
            let (key, value) = field.split_once('=').ok_or_else(|| {
                ParseError::new(number, format!("expected key=value, got {field:?}"))
            })?;
            let slot = match key {
                "rbytes" => &mut io.read_bytes,
                "wbytes" => &mut io.write_bytes,
                "dbytes" => &mut io.discard_bytes,
                "rios" => &mut io.reads,
                "wios" => &mut io.writes,
                "dios" => &mut io.discards,
                _ => continue,
            };
            *slot = parse_u64(Some(value), number, key)?;
        }
        devices.push(io);
    }
    Ok(devices)
}

/// v1 `blkio.throttle.io_service_bytes` / `io_serviced`: "8:0 Read 1048576" lines and a
/// final "Total N". Returns per-device (read, write, discard) in the file's unit.
pub fn blkio_v1(text: &str) -> Result<Vec<(u32, u32, [u64; 3])>, ParseError> {
    let mut devices: Vec<(u32, u32, [u64; 3])> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [] | ["Total", _] => continue,
            [device, operation, value] => {
                let slot = match operation {
                    "Read" => 0,
                    "Write" => 1,
                    "Discard" => 2,
                    "Sync" | "Async" | "Total" => continue,
                    other => {
                        return Err(ParseError::new(
                            number,
                            format!("unknown operation {other:?}"),
                        ));
                    }
                };
                let (major, minor) = device_number(device, number)?;
                let value = parse_u64(Some(value), number, operation)?;
                match devices
                    .iter_mut()
                    .find(|(ma, mi, _)| (*ma, *mi) == (major, minor))
                {
                    Some((_, _, counters)) => counters[slot] = value,
                    None => {
                        let mut counters = [0; 3];
                        counters[slot] = value;
                        devices.push((major, minor, counters));
                    }
                }
            }
            _ => {
                return Err(ParseError::new(
                    number,
                    "expected \"MAJ:MIN Operation value\"",
                ));
            }
        }
    }
    Ok(devices)
}

pub fn pressure(text: &str) -> Result<Pressure, ParseError> {
    let mut result = Pressure::default();
    let mut seen_some = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let mut fields = line.split_whitespace();
        let Some(kind) = fields.next() else { continue };
        let mut parsed = PressureLine::default();
        for field in fields {
            let (key, value) = field.split_once('=').ok_or_else(|| {
                ParseError::new(number, format!("expected key=value, got {field:?}"))
            })?;
            let average = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|value| value.is_finite())
                    .ok_or_else(|| {
                        ParseError::new(number, format!("{key}: {value:?} is not a number"))
                    })
            };
            match key {
                "avg10" => parsed.avg10 = average()?,
                "avg60" => parsed.avg60 = average()?,
                "avg300" => parsed.avg300 = average()?,
                "total" => parsed.total_us = parse_u64(Some(value), number, "total")?,
                _ => {}
            }
        }
        match kind {
            "some" => {
                result.some = parsed;
                seen_some = true;
            }
            "full" => result.full = Some(parsed),
            other => {
                return Err(ParseError::new(
                    number,
                    format!("unknown pressure line {other:?}"),
                ));
            }
        }
    }
    if !seen_some {
        return Err(ParseError::new(1, "no \"some\" line"));
    }
    Ok(result)
}

fn device_number(text: &str, line: usize) -> Result<(u32, u32), ParseError> {
    let (major, minor) = text
        .split_once(':')
        .ok_or_else(|| ParseError::new(line, format!("bad device {text:?}")))?;
    let parse = |part: &str| {
        part.parse::<u32>()
            .map_err(|_| ParseError::new(line, format!("bad device {text:?}")))
    };
    Ok((parse(major)?, parse(minor)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(limit("max\n"), Ok(None));
        assert_eq!(limit("9223372036854771712\n"), Ok(None));
        assert_eq!(limit("67108864\n"), Ok(Some(67_108_864)));
        assert!(limit("lots").is_err());
        assert_eq!(cpu_max("50000 100000\n"), Ok(Some(0.5)));
        assert_eq!(cpu_max("max 100000\n"), Ok(None));
        assert!(cpu_max("").is_err());
        assert_eq!(cores(-1, 100_000), None);
        assert_eq!(cores(150_000, 100_000), Some(1.5));
    }

    #[test]
    fn cpuacct_usage_all_sums_cpus() {
        assert_eq!(
            cpuacct_usage_all("cpu user system\n0 10 5\n1 20 7\n"),
            Ok((30, 12))
        );
        assert!(cpuacct_usage_all("0 10 5\n").is_err());
        assert!(cpuacct_usage_all("cpu user system\n0 10\n").is_err());
    }

    #[test]
    fn io_stat_lines() {
        let devices =
            io_stat("254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1\n")
                .expect("parses");
        assert_eq!(devices[0].write_bytes, 8192);
        assert_eq!(devices[0].writes, 2);
        assert_eq!(
            (devices[1].major, devices[1].minor, devices[1].read_bytes),
            (8, 16, 1)
        );
        assert!(io_stat("254:0 rbytes\n").is_err());
        assert!(io_stat("vda rbytes=1\n").is_err());
    }

    #[test]
    fn blkio_v1_lines() {
        let text = "254:0 Read 4096\n254:0 Write 16781312\n254:0 Sync 0\n254:0 Async 0\n254:0 Discard 512\n254:0 Total 16785920\nTotal 16785920\n";
        assert_eq!(blkio_v1(text), Ok(vec![(254, 0, [4096, 16_781_312, 512])]));
        assert_eq!(blkio_v1("Total 0\n"), Ok(vec![]));
        assert!(blkio_v1("254:0 Teleport 1\n").is_err());
    }

    #[test]
    fn pressure_lines() {
        let parsed = pressure("some avg10=1.50 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n")
            .expect("parses");
        assert_eq!(parsed.some.avg10, 1.5);
        assert_eq!(parsed.some.total_us, 1234);
        assert_eq!(parsed.full.map(|full| full.total_us), Some(5));
        assert!(pressure("").is_err());
        assert!(pressure("some avg10=NaN\n").is_err());
    }

    #[test]
    fn picks_keys() {
        let text = "usage_usec 10\nuser_usec 7\n\nsystem_usec 3\nodd line here\n";
        assert_eq!(
            pick(text, ["user_usec", "system_usec", "absent"]),
            Ok([Some(7), Some(3), None])
        );
        assert!(pick("usage_usec ten\n", ["usage_usec"]).is_err());
        assert!(
            pick("usage_usec ten\n", ["other"]).is_ok(),
            "lines not asked for are not examined"
        );
    }
}
