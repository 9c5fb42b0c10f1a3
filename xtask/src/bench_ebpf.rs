//! `cargo xtask bench-ebpf`: what the eBPF programs cost the workloads they watch.
//!
//! Each round runs every workload with nothing attached, with the agent running
//! with only its scheduler and block families (`horcrux-base`), with every family
//! (writeback and OOM too), and with the libbpf-tools reference attached instead
//! (`runqlat` for the scheduler workloads, `biolatency` for the disk ones), in that
//! order, so that drift in this noisy VM spreads over every configuration alike. Medians over
//! the rounds are reported, with each configuration's ratio to the detached run.
//! Then, with the kernel's BPF statistics on, each program's run time per
//! invocation: ours against the reference's, without the workloads' noise.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Result, is_root, stdout_of, workspace_root};

/// Rounds unless `cargo xtask bench-ebpf ROUNDS` says otherwise.
pub const DEFAULT_ROUNDS: usize = 7;
const AGENT_ADDRESS: &str = "127.0.0.1:18099";

/// A workload and how to read its figure from its output; `higher_is_better` for
/// throughput figures.
struct Workload {
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    reference: &'static str,
    command: Vec<String>,
    figure: fn(&str) -> Option<f64>,
}

fn workloads(fio_file: &Path, buffered_file: &Path) -> Vec<Workload> {
    let strings = |words: &[&str]| words.iter().map(|word| (*word).to_owned()).collect();
    vec![
        Workload {
            name: "sched pipe, pinned to one CPU (taskset -c 0 perf bench sched pipe)",
            unit: "µs/op",
            higher_is_better: false,
            reference: "runqlat",
            command: strings(&[
                "taskset", "-c", "0", "perf", "bench", "sched", "pipe", "-l", "200000",
            ]),
            figure: |output| {
                output
                    .lines()
                    .find(|line| line.contains("usecs/op"))
                    .and_then(|line| line.split_whitespace().next()?.parse().ok())
            },
        },
        Workload {
            name: "fio 4k random reads, O_DIRECT, libaio, depth 32",
            unit: "IOPS",
            higher_is_better: true,
            reference: "biolatency",
            command: vec![
                "fio".into(),
                "--name=randread".into(),
                format!("--filename={}", fio_file.display()),
                "--size=256M".into(),
                "--rw=randread".into(),
                "--bs=4k".into(),
                "--direct=1".into(),
                "--ioengine=libaio".into(),
                "--iodepth=32".into(),
                "--runtime=5".into(),
                "--time_based".into(),
                "--output-format=terse".into(),
                "--terse-version=3".into(),
            ],
            // Terse v3: field 8 (1-based) is read IOPS.
            figure: |output| output.lines().last()?.split(';').nth(7)?.parse().ok(),
        },
        Workload {
            name: "buffered writes: dd 256 MiB through the page cache, then sync",
            unit: "ms",
            higher_is_better: false,
            reference: "biolatency",
            command: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "s=$(date +%s%N); dd if=/dev/zero of={0} bs=1M count=256 status=none && \
                     sync && e=$(date +%s%N) && rm {0} && echo $(( (e - s) / 1000000 ))",
                    buffered_file.display()
                ),
            ],
            figure: |output| output.lines().last()?.trim().parse().ok(),
        },
        Workload {
            name: "mixed: hackbench, 4 groups of 40 processes over pipes",
            unit: "s",
            higher_is_better: false,
            reference: "runqlat",
            command: strings(&["hackbench", "-g", "4", "-l", "1000"]),
            figure: |output| {
                output
                    .lines()
                    .find_map(|line| line.strip_prefix("Time:"))
                    .and_then(|time| time.trim().parse().ok())
            },
        },
    ]
}

pub fn run(rounds: usize) -> Result {
    if !is_root() {
        return Err("bench-ebpf loads eBPF programs: run it as root".into());
    }
    let root = workspace_root();
    let agent = root.join("target/release/horcrux-agent");
    let fio_file = root.join("target/bench-fio.bin");
    let buffered_file = root.join("target/bench-buffered.bin");
    let base_config = root.join("target/bench-ebpf-base.toml");
    std::fs::write(&base_config, "[ebpf]\nfamilies = [\"sched\", \"block\"]\n")
        .map_err(|error| format!("{}: {error}", base_config.display()))?;
    let agents = Agents {
        binary: &agent,
        base_config: &base_config,
    };
    let workloads = workloads(&fio_file, &buffered_file);
    // Lay the fio file out once, so no run pays for allocating it.
    run_workload(Command::new("fio").args([
        "--name=layout",
        &format!("--filename={}", fio_file.display()),
        "--size=256M",
        "--rw=write",
        "--bs=1M",
        "--direct=1",
        "--output-format=terse",
    ]))?;

    // (workload, configuration) → figures.
    let mut figures: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    for round in 1..=rounds {
        eprintln!("xtask bench-ebpf: round {round}/{rounds}");
        for (index, workload) in workloads.iter().enumerate() {
            for configuration in ["detached", "horcrux-base", "horcrux", workload.reference] {
                let attached = attach(configuration, &agents)?;
                let output =
                    run_workload(Command::new(&workload.command[0]).args(&workload.command[1..]));
                drop(attached);
                let output = output?;
                let figure = (workload.figure)(&output).ok_or_else(|| {
                    format!("no figure in the output of {}:\n{output}", workload.name)
                })?;
                figures
                    .entry((index, configuration))
                    .or_default()
                    .push(figure);
            }
        }
    }

    println!(
        "| workload | detached | horcrux: sched + block | horcrux: all families | reference |"
    );
    println!("|---|---|---|---|---|");
    for (index, workload) in workloads.iter().enumerate() {
        let median = |configuration: &str| median(&figures[&(index, configuration)]);
        let base = median("detached");
        let cell = |configuration: &str| {
            let value = median(configuration);
            let change = if workload.higher_is_better {
                (base - value) / base * 100.0
            } else {
                (value - base) / base * 100.0
            };
            let word = if workload.higher_is_better {
                "loss"
            } else {
                "cost"
            };
            format!("{value:.2} {} ({change:+.1}% {word})", workload.unit)
        };
        println!(
            "| {} | {base:.2} {} | {} | {} | {}: {} |",
            workload.name,
            workload.unit,
            cell("horcrux-base"),
            cell("horcrux"),
            workload.reference,
            cell(workload.reference)
        );
    }
    println!("\nMedians of {rounds} alternating rounds.");
    // The fio file stays laid out for the statistics runs too.
    let measured = per_invocation(&workloads, &agents);
    let _ = std::fs::remove_file(&fio_file);
    measured
}

/// The kernel's own measure of each program (`kernel.bpf_stats_enabled`): run time
/// per invocation, free of the workloads' run-to-run noise, and the programs' share
/// of all busy CPU time while the workload ran (`/proc/stat`). One run per workload
/// and configuration; the statistics are read just before and after the workload.
fn per_invocation(workloads: &[Workload], agents: &Agents) -> Result {
    const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before =
        std::fs::read_to_string(BPF_STATS).map_err(|error| format!("{BPF_STATS}: {error}"))?;
    std::fs::write(BPF_STATS, "1").map_err(|error| format!("enabling BPF statistics: {error}"))?;
    let measured = (|| {
        let mut programs = Vec::new();
        let mut shares = Vec::new();
        for workload in workloads {
            for configuration in ["horcrux", workload.reference] {
                let attached = attach(configuration, agents)?;
                let stats_before =
                    program_stats(&stdout_of(Command::new("bpftool").args(["prog", "show"]))?);
                let busy_before = busy_cpu_ns()?;
                run_workload(Command::new(&workload.command[0]).args(&workload.command[1..]))?;
                let busy = busy_cpu_ns()? - busy_before;
                let stats_after =
                    program_stats(&stdout_of(Command::new("bpftool").args(["prog", "show"]))?);
                drop(attached);
                let mut in_programs = 0;
                for (name, runs, nanos) in stats_after {
                    let (runs_before, nanos_before) = stats_before
                        .iter()
                        .find(|(before, _, _)| *before == name)
                        .map_or((0, 0), |(_, runs, nanos)| (*runs, *nanos));
                    let (runs, nanos) = (runs - runs_before, nanos - nanos_before);
                    if runs > 0 {
                        in_programs += nanos;
                        programs.push((workload.name, configuration, name, runs, nanos));
                    }
                }
                shares.push((workload.name, configuration, in_programs, busy));
            }
        }
        Ok::<_, String>((programs, shares))
    })();
    let _ = std::fs::write(BPF_STATS, before.trim());
    let (programs, shares) = measured?;
    println!("\n| workload | attached | program | runs | ns per run |");
    println!("|---|---|---|---|---|");
    for (workload, configuration, program, runs, nanos) in programs {
        let per_run = nanos as f64 / runs as f64;
        println!("| {workload} | {configuration} | {program} | {runs} | {per_run:.0} |");
    }
    println!("\n| workload | attached | time in the programs | share of busy CPU time |");
    println!("|---|---|---|---|");
    for (workload, configuration, in_programs, busy) in shares {
        let share = in_programs as f64 / busy as f64 * 100.0;
        let millis = in_programs as f64 / 1e6;
        println!("| {workload} | {configuration} | {millis:.1} ms | {share:.2}% |");
    }
    Ok(())
}

/// CPU time spent busy on every CPU since boot (`/proc/stat`: all but idle and iowait).
fn busy_cpu_ns() -> Result<u64> {
    let stat =
        std::fs::read_to_string("/proc/stat").map_err(|error| format!("/proc/stat: {error}"))?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .ok_or("/proc/stat is empty")?
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal; USER_HZ is 100 on Linux.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(index, _)| *index != 3 && *index != 4)
        .map(|(_, ticks)| ticks)
        .sum();
    Ok(busy * 10_000_000)
}

/// (program, runs, run time ns) of the tracing programs that ran, from
/// `bpftool prog show` ("… name X  tag … run_time_ns N run_cnt M").
fn program_stats(listing: &str) -> Vec<(String, u64, u64)> {
    listing
        .lines()
        .filter(|line| line.contains(" tracing "))
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                let position = words.iter().position(|word| *word == key)?;
                words.get(position + 1).copied()
            };
            let runs: u64 = after("run_cnt")?.parse().ok()?;
            let nanos: u64 = after("run_time_ns")?.parse().ok()?;
            let name = after("name")?.to_owned();
            (runs > 0).then_some((name, runs, nanos))
        })
        .collect()
}

/// A program each reference tool loads (names are cut to 15 characters).
fn reference_program(tool: &str) -> &'static str {
    match tool {
        "runqlat" => "sched_switch",
        _ => "block_rq_compl",
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn run_workload(command: &mut Command) -> Result<String> {
    stdout_of(command)
}

/// What is attached for one run; dropping it detaches.
struct Attached(Option<Child>);

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The agent binary, and a config attaching only the families before writeback
/// and OOM.
struct Agents<'a> {
    binary: &'a Path,
    base_config: &'a Path,
}

/// Programs the agent attaches: every family, or the scheduler and block ones.
const ALL_PROGRAMS: usize = 8;
const BASE_PROGRAMS: usize = 5;

fn attach(configuration: &str, agents: &Agents) -> Result<Attached> {
    let spawn = |command: &mut Command| {
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("starting {command:?}: {error}"))
    };
    let child = match configuration {
        "detached" => return Ok(Attached(None)),
        "horcrux" => spawn(Command::new(agents.binary).args(["--listen", AGENT_ADDRESS]))?,
        "horcrux-base" => spawn(
            Command::new(agents.binary)
                .args(["--listen", AGENT_ADDRESS, "--config"])
                .arg(agents.base_config),
        )?,
        // One long interval: the tool's own printing stays out of the measurement.
        reference => spawn(Command::new(reference).args(["600", "1"]))?,
    };
    let attached = Attached(Some(child));
    wait_until_attached(configuration)?;
    Ok(attached)
}

/// The agent says so in `/api/status`; the libbpf tools print a banner when attached.
fn wait_until_attached(configuration: &str) -> Result {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let agent_attached = |programs: usize| {
            stdout_of(
                Command::new("curl").args(["-sf", &format!("http://{AGENT_ADDRESS}/api/status")]),
            )
            .is_ok_and(|status| status.contains(&format!("\"attached_programs\":{programs}")))
        };
        let ready = match configuration {
            "horcrux" => agent_attached(ALL_PROGRAMS),
            "horcrux-base" => agent_attached(BASE_PROGRAMS),
            // Their programs appear in the kernel's program list once loaded.
            reference => stdout_of(Command::new("bpftool").args(["prog", "show"]))
                .is_ok_and(|programs| programs.contains(reference_program(reference))),
        };
        if ready {
            // Let start-up work settle before measuring.
            std::thread::sleep(Duration::from_secs(1));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("{configuration} did not attach within 30 s"))
}
