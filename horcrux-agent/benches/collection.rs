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
//! 6. `[[remote_write]]` at 1 s and 15 s pushes beside no push: added CPU, disk and
//!    wire bytes per 1,000 series.

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
    let agent = start_agent("/dev/null".as_ref(), free_port());
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

/// The agent binary with `config`, a 1 s node interval, listening on `port`.
fn start_agent(config: &std::path::Path, port: u16) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_horcrux-agent"))
        .arg("--config")
        .arg(config)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-metrics-interval",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start horcrux-agent");
    Killed(child)
}

/// CPU time of the push threads (`hx-push-…`) of a process.
fn push_cpu(pid: u32) -> Duration {
    let nanos: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("hx-push"))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
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

/// A receiver that acknowledges every request with 204 (what the agent sends is
/// measured from its own figures).
fn acknowledging_receiver() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().map(|addr| addr.port()).expect("port");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 1 << 16];
                let mut pending = Vec::new();
                loop {
                    let Ok(read) = stream.read(&mut buffer) else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buffer[..read]);
                    // One request: headers, then content-length bytes of body.
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
                            .unwrap_or(0);
                        if pending.len() < end + 4 + length {
                            break;
                        }
                        pending.drain(..end + 4 + length);
                        let reply = b"HTTP/1.1 204 No Content\r\n\r\n";
                        if stream.write_all(reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// `[[remote_write]]` cost: the same agent (1 s collection) without a target and with
/// one pushing every 1 s and every 15 s to a receiver that acknowledges everything,
/// side by side in one run: added CPU and disk writes, per 1,000 series.
fn remote_write() {
    let receiver = acknowledging_receiver();
    let run = |push: Option<u64>| {
        let storage = tempfile::tempdir().expect("storage");
        let config = storage.path().join("horcrux.toml");
        let mut text = format!("[storage]\npath = \"{}\"\n", storage.path().display());
        if let Some(interval) = push {
            text += &format!(
                "[[remote_write]]\nname = \"bench\"\nurl = \"http://127.0.0.1:{receiver}/api/v1/write\"\ninterval = {interval}\n"
            );
        }
        std::fs::write(&config, text).expect("config");
        let port = free_port();
        let agent = start_agent(&config, port);
        let pid = agent.0.id();
        std::thread::sleep(SETTLE);
        let written = || {
            std::fs::read_to_string(format!("/proc/{pid}/io"))
                .unwrap_or_default()
                .lines()
                .find_map(|line| {
                    line.strip_prefix("write_bytes:")?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        let status = || -> serde_json::Value {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let _ = stream.write_all(b"GET /api/status HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut body = String::new();
            let _ = stream.read_to_string(&mut body);
            let json = body.split_once("\r\n\r\n").map_or("", |(_, json)| json);
            serde_json::from_str::<serde_json::Value>(json).unwrap_or_default()["exports"][0]
                .clone()
        };
        let window = Duration::from_secs(30);
        let (cpu, push, disk, before) = (process_cpu(pid), push_cpu(pid), written(), status());
        std::thread::sleep(window);
        let after = status();
        let delta = |key: &str| {
            after[key]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(before[key].as_u64().unwrap_or(0))
        };
        (
            (process_cpu(pid) - cpu) / window.as_secs() as u32,
            (push_cpu(pid) - push) / window.as_secs() as u32,
            (written() - disk) / window.as_secs(),
            delta("samples_queued") / window.as_secs(),
            delta("sent_bytes") / window.as_secs(),
        )
    };
    let (base_cpu, _, base_disk, _, _) = run(None);
    println!(
        "agent without remote_write (1 s collection): CPU {base_cpu:.2?}/s, disk {base_disk} B/s"
    );
    for interval in [1, 15] {
        let (cpu, push, disk, samples, wire) = run(Some(interval));
        let thousands = samples as f64 / 1000.0;
        let added = cpu.saturating_sub(base_cpu);
        println!(
            "remote_write every {interval} s: the push thread's own CPU {push:.2?}/s = {:.0} µs per 1,000 series",
            push.as_secs_f64() * 1e6 / thousands.max(1e-9)
        );
        println!(
            "remote_write every {interval} s: {samples} samples/s; added CPU {added:.2?}/s = {:.0} µs per 1,000 series; \
             disk {disk} B/s ({:.0} B per 1,000 series); wire {wire} B/s ({:.0} B per 1,000 series)",
            added.as_secs_f64() * 1e6 / thousands.max(1e-9),
            disk.saturating_sub(base_disk) as f64 / thousands.max(1e-9),
            wire as f64 / thousands.max(1e-9),
        );
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
    // HORCRUX_BENCH_ONLY=remote_write: the push part alone.
    if std::env::var("HORCRUX_BENCH_ONLY").is_ok_and(|part| part == "remote_write") {
        remote_write();
        return;
    }
    in_process();
    let ours = agent();
    node_exporter(ours);
    containers();
    vms();
    remote_write();
}
