//! Collection-cost benchmark (`cargo bench -p horcrux-agent`, or `cargo xtask bench`).
//!
//! 1. In process: CPU time of one node collection cycle on this machine's `/proc`.
//! 2. The real agent binary at a 1 s interval: CPU per second (= per cycle) and RSS.
//! 3. prometheus-node-exporter, when installed, measured the same way in the same
//!    run: CPU per scrape and RSS, and the ratio to ours.
//! 4. As root: the container collector over 10, 100 and 1,000 Docker-like cgroups
//!    created in this host's hierarchies: CPU per cycle and resident memory.
//! 5. As root: the VM collector over 1, 4 and 8 plain QEMU guests under KVM (paused),
//!    each with a QMP socket: CPU (collector and QMP workers) and wall time per cycle.

use horcrux_test_support::{cgroup, vm};

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use horcrux_agent::{
    cgroup::stats::CgroupReader,
    collector::{
        containers::ContainerCollector,
        node::{NodeCollector, NodeSources},
        vms::VmCollector,
    },
};

const CYCLES: u32 = 500;
const SETTLE: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_secs(10);
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// CPU time of every thread of a process, in nanoseconds (`/proc/<pid>/task/*/schedstat`:
/// the first field is time on CPU; `/proc/<pid>/stat` only has 10 ms ticks).
fn process_cpu(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    let nanos: u64 = tasks
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("ephemeral port")
}

fn http_get(port: u16, path: &str) -> usize {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut body = Vec::new();
    if stream.write_all(request.as_bytes()).is_ok() {
        let _ = stream.read_to_end(&mut body);
    }
    body.len()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_process() {
    let mut collector = NodeCollector::new(NodeSources::default());
    collector.collect("bench".into(), 0);
    let (cpu_start, wall_start) = (thread_cpu(), Instant::now());
    for _ in 0..CYCLES {
        std::hint::black_box(collector.collect("bench".into(), 0));
    }
    let cpu = (thread_cpu() - cpu_start) / CYCLES;
    let wall = wall_start.elapsed() / CYCLES;
    println!(
        "node collection cycle (in process, {CYCLES} cycles): CPU {cpu:.1?}/cycle, wall {wall:.1?}/cycle"
    );
}

fn agent() -> Duration {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_horcrux-agent"))
        .args([
            "--config",
            "/dev/null",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--node-metrics-interval", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start horcrux-agent");
    let agent = Killed(child);
    let pid = agent.0.id();
    std::thread::sleep(SETTLE);
    let start = process_cpu(pid);
    std::thread::sleep(WINDOW);
    let per_cycle = (process_cpu(pid) - start) / WINDOW.as_secs() as u32;
    println!(
        "horcrux-agent (1 s interval, eBPF attached if root): CPU {per_cycle:.2?}/cycle, RSS {} MiB",
        rss_kib(pid) as f64 / 1024.0
    );
    per_cycle
}

fn node_exporter(ours: Duration) {
    if !std::path::Path::new(NODE_EXPORTER).exists() {
        println!("prometheus-node-exporter not installed: no side-by-side figures");
        return;
    }
    let port = free_port();
    let child = Command::new(NODE_EXPORTER)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node exporter");
    let exporter = Killed(child);
    let pid = exporter.0.id();
    std::thread::sleep(SETTLE);
    http_get(port, "/metrics");
    let scrapes = 20;
    let start = process_cpu(pid);
    for _ in 0..scrapes {
        http_get(port, "/metrics");
    }
    let per_scrape = (process_cpu(pid) - start) / scrapes;
    println!(
        "prometheus-node-exporter (default collectors): CPU {per_scrape:.2?}/scrape, RSS {} MiB; ours/theirs CPU ratio {:.2}",
        rss_kib(pid) as f64 / 1024.0,
        ours.as_secs_f64() / per_scrape.as_secs_f64().max(1e-9)
    );
}

fn containers() {
    if !nix::unistd::geteuid().is_root() {
        println!("container collection: not measured (creating cgroups needs root)");
        return;
    }
    let own_pid = std::process::id();
    for count in [10, 100, 1000] {
        // Popped in reverse so the cgroup that created the `docker/` parents goes last.
        let mut cgroups: Vec<cgroup::TestCgroup> =
            (0..count).map(|_| cgroup::TestCgroup::new()).collect();
        let mut collector = ContainerCollector::new(
            CgroupReader::new(cgroup::hierarchies(), false),
            "/proc",
            Default::default(),
        );
        let found = collector.collect(0, None).containers.len();
        let rounds = 20;
        let cpu_start = thread_cpu();
        for _ in 0..rounds {
            std::hint::black_box(collector.collect(0, None));
        }
        let per_cycle = (thread_cpu() - cpu_start) / rounds;
        println!(
            "container collection, {count} cgroups ({found} found): CPU {per_cycle:.2?}/cycle ({:.1?}/container), bench RSS {:.1} MiB",
            per_cycle / count,
            rss_kib(own_pid) as f64 / 1024.0
        );
        while let Some(cgroup) = cgroups.pop() {
            drop(cgroup);
        }
    }
}

/// CPU time of this whole process (the VM collector's QMP rounds run on workers).
fn own_process_cpu() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let time =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    time(usage.user_time()) + time(usage.system_time())
}

fn vms() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/dev/kvm").exists() {
        println!("VM collection: not measured (needs root and /dev/kvm)");
        return;
    }
    for (count, qmp) in [(1u32, true), (4, true), (8, true), (8, false)] {
        let guests: Vec<vm::Qemu> = (0..count)
            // Paused (-S): the guests' own CPU would otherwise crowd out the collector.
            .map(|index| vm::Qemu::kvm_with(&format!("bench-{index}"), vm::HALT, 1, qmp, &["-S"]))
            .collect();
        let mut collector = VmCollector::new(
            "/proc",
            cgroup::hierarchies(),
            false,
            Default::default(),
            None,
        );
        let found = collector.collect(0, None).vms.len();
        let rounds = 20;
        let (cpu_start, wall_start) = (own_process_cpu(), Instant::now());
        for _ in 0..rounds {
            std::hint::black_box(collector.collect(0, None));
        }
        let cpu = (own_process_cpu() - cpu_start) / rounds;
        let wall = wall_start.elapsed() / rounds;
        println!(
            "VM collection, {count} QEMU guests {} ({found} found): CPU {cpu:.2?}/cycle ({:.1?}/VM), wall {wall:.2?}/cycle ({:.1?}/VM)",
            if qmp { "with QMP" } else { "without QMP" },
            cpu / count,
            wall / count
        );
        drop(guests);
    }
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; only measure on `cargo bench`.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    // HORCRUX_BENCH_ONLY=vms: the VM part alone.
    if std::env::var("HORCRUX_BENCH_ONLY").is_ok_and(|part| part == "vms") {
        vms();
        return;
    }
    in_process();
    let ours = agent();
    node_exporter(ours);
    containers();
    vms();
}
