//! `/proc/stat`: CPU time per mode (in clock ticks), context switches, forks and
//! runnable/blocked task counts.

use super::{ParseError, parse_u64};

/// Cumulative CPU time per mode, in USER_HZ ticks, as `/proc/stat` reports it.
/// `guest` and `guest_nice` are already included in `user` and `nice`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    pub guest: u64,
    pub guest_nice: u64,
}

impl CpuTimes {
    /// The eight modes that partition CPU time (guest time is inside user/nice):
    /// user, nice, system, idle, iowait, irq, softirq, steal.
    pub fn modes(&self) -> [u64; 8] {
        [
            self.user,
            self.nice,
            self.system,
            self.idle,
            self.iowait,
            self.irq,
            self.softirq,
            self.steal,
        ]
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelStat {
    /// The aggregate `cpu` line.
    pub total: CpuTimes,
    /// `cpuN` lines, with N; offline CPUs are absent.
    pub per_cpu: Vec<(u32, CpuTimes)>,
    pub context_switches: u64,
    pub forks: u64,
    pub procs_running: u64,
    pub procs_blocked: u64,
    pub boot_time: u64,
}

pub fn parse(text: &str) -> Result<KernelStat, ParseError> {
    let mut stat = KernelStat::default();
    let mut seen_total = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        match key {
            "cpu" => {
                stat.total = parse_cpu_times(fields, number)?;
                seen_total = true;
            }
            _ if key.starts_with("cpu") => {
                let cpu = key[3..]
                    .parse()
                    .map_err(|_| ParseError::new(number, format!("bad CPU label {key:?}")))?;
                stat.per_cpu.push((cpu, parse_cpu_times(fields, number)?));
            }
            "ctxt" => stat.context_switches = parse_u64(fields.next(), number, "ctxt")?,
            "processes" => stat.forks = parse_u64(fields.next(), number, "processes")?,
            "procs_running" => {
                stat.procs_running = parse_u64(fields.next(), number, "procs_running")?
            }
            "procs_blocked" => {
                stat.procs_blocked = parse_u64(fields.next(), number, "procs_blocked")?
            }
            "btime" => stat.boot_time = parse_u64(fields.next(), number, "btime")?,
            _ => {}
        }
    }
    if !seen_total {
        return Err(ParseError::new(0, "no aggregate \"cpu\" line"));
    }
    Ok(stat)
}

fn parse_cpu_times<'a>(
    mut fields: impl Iterator<Item = &'a str>,
    line: usize,
) -> Result<CpuTimes, ParseError> {
    let mut next = |what| parse_u64(fields.next(), line, what);
    // user..idle exist on every kernel; later columns were added over time.
    let user = next("user")?;
    let nice = next("nice")?;
    let system = next("system")?;
    let idle = next("idle")?;
    let mut optional = |what| match fields.next() {
        None => Ok(0),
        some => parse_u64(some, line, what),
    };
    Ok(CpuTimes {
        user,
        nice,
        system,
        idle,
        iowait: optional("iowait")?,
        irq: optional("irq")?,
        softirq: optional("softirq")?,
        steal: optional("steal")?,
        guest: optional("guest")?,
        guest_nice: optional("guest_nice")?,
    })
}
