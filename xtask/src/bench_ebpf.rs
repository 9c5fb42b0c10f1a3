//! `cargo xtask bench-ebpf`: what the eBPF programs cost the workloads they watch.
//!
//! Each round runs every workload with nothing attached, with the agent running
//! (all programs attached), and with the libbpf-tools reference attached instead
//! (`runqlat` for the scheduler workloads, `biolatency` for fio), in that order, so
//! that drift in this noisy VM spreads over every configuration alike. Medians over
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

const ROUNDS: usize = 7;
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

fn workloads(fio_file: &Path) -> Vec<Workload> {
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

pub fn run() -> Result {
    if !is_root() {
        return Err("bench-ebpf loads eBPF programs: run it as root".into());
    }
    let root = workspace_root();
    let agent = root.join("target/release/horcrux-agent");
    let fio_file = root.join("target/bench-fio.bin");
    let workloads = workloads(&fio_file);
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
    for round in 1..=ROUNDS {
        eprintln!("xtask bench-ebpf: round {round}/{ROUNDS}");
        for (index, workload) in workloads.iter().enumerate() {
            for configuration in ["detached", "horcrux", workload.reference] {
                let attached = attach(configuration, &agent)?;
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
    let _ = std::fs::remove_file(&fio_file);

    println!("| workload | detached | horcrux (all programs) | reference |");
    println!("|---|---|---|---|");
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
            "| {} | {base:.2} {} | {} | {}: {} |",
            workload.name,
            workload.unit,
            cell("horcrux"),
            workload.reference,
            cell(workload.reference)
        );
    }
    println!("\nMedians of {ROUNDS} alternating rounds.");
    per_invocation(&workloads, &agent)
}

/// The kernel's own measure of each program (`kernel.bpf_stats_enabled`): run time
/// per invocation, free of the workloads' run-to-run noise. One run per
/// configuration of the two workloads each reference watches.
fn per_invocation(workloads: &[Workload], agent: &Path) -> Result {
    const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before =
        std::fs::read_to_string(BPF_STATS).map_err(|error| format!("{BPF_STATS}: {error}"))?;
    std::fs::write(BPF_STATS, "1").map_err(|error| format!("enabling BPF statistics: {error}"))?;
    let mut rows = Vec::new();
    let mut outcome = Ok(());
    for workload in workloads.iter().take(2) {
        for configuration in ["horcrux", workload.reference] {
            let attached = match attach(configuration, agent) {
                Ok(attached) => attached,
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            };
            let ran = run_workload(Command::new(&workload.command[0]).args(&workload.command[1..]));
            let programs = stdout_of(Command::new("bpftool").args(["prog", "show"]));
            drop(attached);
            match ran.and(programs) {
                Ok(programs) => rows.extend(program_stats(&programs).into_iter().map(
                    |(program, runs, nanos)| (workload.name, configuration, program, runs, nanos),
                )),
                Err(error) => outcome = Err(error),
            }
        }
    }
    let _ = std::fs::write(BPF_STATS, before.trim());
    outcome?;
    println!("\n| workload | attached | program | runs | ns per run |");
    println!("|---|---|---|---|---|");
    for (workload, configuration, program, runs, nanos) in rows {
        let per_run = nanos as f64 / runs as f64;
        println!("| {workload} | {configuration} | {program} | {runs} | {per_run:.0} |");
    }
    Ok(())
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

fn attach(configuration: &str, agent: &Path) -> Result<Attached> {
    let spawn = |command: &mut Command| {
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("starting {command:?}: {error}"))
    };
    let child = match configuration {
        "detached" => return Ok(Attached(None)),
        "horcrux" => spawn(Command::new(agent).args(["--listen", AGENT_ADDRESS]))?,
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
        let ready = match configuration {
            "horcrux" => stdout_of(
                Command::new("curl").args(["-sf", &format!("http://{AGENT_ADDRESS}/api/status")]),
            )
            .is_ok_and(|status| status.contains("\"attached_programs\":5")),
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
