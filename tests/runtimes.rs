//! Real container runtimes (root), no registry: a tiny image is built from a tarball
//! of a busybox-static root filesystem. The agent binary must discover the runtime's
//! containers, read the limits the runtime set, and agree with the runtime's own view
//! (`docker stats`) and with the kernel's counters. Each runtime runs privately (temp
//! directories, its own socket) and is torn down in `Drop`, also on failure.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::Agent;
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

/// One runtime at a time: each runs a quota-bound CPU burner and compares CPU %.
static ONE_RUNTIME_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const BUSYBOX: &str = "/usr/bin/busybox";

/// The runtime's binaries must be there: `cargo xtask setup` installs them.
fn require(binaries: &[&str]) {
    for binary in binaries {
        assert!(
            Path::new(binary).exists(),
            "{binary} is not installed (`cargo xtask setup` installs it)"
        );
    }
}

fn checked(output: std::io::Result<Output>, what: &str) -> String {
    let output = output.unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A busybox-static root filesystem packed as an image tarball.
fn busybox_tarball(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("rootfs");
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "sleep", "cat", "ls", "ps", "nc", "dd", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    let tarball = dir.join("busybox.tar");
    checked(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .output(),
        "tar",
    );
    tarball
}

/// A runtime's command line (`docker` and `podman` take the same subcommands here).
trait Cli {
    fn command(&self) -> Command;

    fn output(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("run the runtime's CLI")
    }

    fn run(&self, args: &[&str]) -> String {
        checked(Ok(self.output(args)), &format!("{args:?}"))
    }
}

struct Dockerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Dockerd {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        let daemon = Command::new("/usr/sbin/dockerd")
            .arg("--data-root")
            .arg(path("data"))
            .arg("--exec-root")
            .arg(path("exec"))
            .arg("--pidfile")
            .arg(path("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", path("docker.sock").display()))
            // No bridge, no NAT, no forwarding: the host's network is left as it was.
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(path("dockerd.log")).expect("log file"))
            .spawn()
            .expect("start dockerd");
        let dockerd = Self { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dockerd.output(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dockerd
    }
}

impl Cli for Dockerd {
    fn command(&self) -> Command {
        let mut command = Command::new("/usr/bin/docker");
        command.arg("-H").arg(format!(
            "unix://{}",
            self.dir.path().join("docker.sock").display()
        ));
        command
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = String::from_utf8_lossy(&self.output(&["ps", "-aq"]).stdout).into_owned();
        for id in ids.split_whitespace() {
            let _ = self.output(&["rm", "-f", id]);
        }
        let pid = nix::unistd::Pid::from_raw(self.daemon.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.daemon.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // dockerd leaves its (now empty) parent cgroups; rmdir only removes empty ones.
        let _ = Command::new("sh")
            .args([
                "-c",
                "rmdir /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker 2>/dev/null",
            ])
            .status();
        // dockerd unmounts its overlays on exit; whatever is left is lazily detached.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mounts | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}

async fn container(agent: &Agent, id: &str) -> Option<Value> {
    let (status, metrics) = agent.get(&format!("/api/containers/{id}/metrics")).await;
    (status == 200).then_some(metrics)
}

/// Polls until `condition` holds for the container's metrics (20 s at most).
async fn wait_until(
    agent: &Agent,
    id: &str,
    what: &str,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(metrics) = container(agent, id).await
            && condition(&metrics)
        {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within 20 s: {:?}",
            container(agent, id).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// "1.5MiB", "64MiB", "12.3kB" → bytes.
fn docker_size(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "KiB" => 1024.0,
        "MB" => 1e6,
        "MiB" => MIB as f64,
        "GiB" => 1024.0 * MIB as f64,
        other => panic!("unknown unit {other:?}"),
    };
    number.trim().parse::<f64>().expect("number") * scale
}

/// Imports the busybox image, runs a CPU burner with `--memory 64m --cpus 0.5
/// --network none`, and checks the agent against the runtime's view and the kernel.
/// `run_options` are runtime-specific `run` flags; `cgroup` is the expected cgroup
/// path for an id.
async fn check_limited_burner(
    cli: &impl Cli,
    scratch: &Path,
    runtime: &str,
    run_options: &[&str],
    cgroup: impl Fn(&str) -> String,
) {
    let tarball = busybox_tarball(scratch);
    cli.run(&[
        "import",
        &tarball.display().to_string(),
        "localhost/hx-busybox:test",
    ]);
    let name = format!("hx-{runtime}-burner");
    let mut run = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
    ];
    run.extend(run_options);
    run.extend([
        "localhost/hx-busybox:test",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let id = cli.run(&run);
    assert_eq!(id.len(), 64, "run prints the full id: {id}");

    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 1\n");
    agent.wait_for_cycles(1).await;
    let metrics = wait_until(&agent, &id, "a CPU rate", |m| {
        m["cpu_usage_percent"].is_number()
    })
    .await;
    assert_eq!(metrics["runtime"], runtime);
    assert_eq!(
        metrics["name"],
        name.as_str(),
        "the runtime's own name for it"
    );
    assert_eq!(metrics["cgroup"], cgroup(&id));
    assert_eq!(metrics["state"], "running");
    assert_eq!(metrics["memory_limit_bytes"], 64 * MIB, "--memory 64m");
    assert_eq!(metrics["cpu"]["limit_cores"], 0.5, "--cpus 0.5");
    let (_, by_name) = agent.get(&format!("/api/containers/{name}/metrics")).await;
    assert_eq!(by_name["id"], id.as_str());

    // The kernel's own counter for the same cgroup.
    let kernel_pids =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids{}/pids.current", cgroup(&id)))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .expect("pids.current");
    assert_eq!(metrics["pids"]["current"], kernel_pids);

    // Let the quota settle, then compare with the runtime's stats taken right after our sample.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ours = container(&agent, &id).await.expect("still there");
    let stats = cli.run(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.CPUPerc}} {{.MemUsage}}",
        &id,
    ]);
    let fields: Vec<&str> = stats.split_whitespace().collect();
    let their_cpu: f64 = fields[0].trim_end_matches('%').parse().expect("CPU %");
    let our_cpu = ours["cpu_usage_percent"].as_f64().expect("cpu");
    assert!(
        (40.0..=56.0).contains(&our_cpu),
        "busy loop under --cpus 0.5: {our_cpu}%"
    );
    assert!(
        (our_cpu - their_cpu).abs() <= 10.0,
        "ours {our_cpu}% vs {runtime} stats {their_cpu}%"
    );
    // Runtimes show usage minus inactive file cache on v1: our working set.
    let their_memory = docker_size(fields[1]);
    let working_set = ours["memory"]["working_set_bytes"]
        .as_f64()
        .expect("working set");
    assert!(
        (working_set - their_memory).abs() <= (0.05 * their_memory).max(512.0 * 1024.0),
        "working set {working_set} vs {runtime} stats {their_memory}"
    );
    let their_limit = docker_size(fields[3]);
    assert!(
        (their_limit - (64 * MIB) as f64).abs() < 0.01 * their_limit,
        "{runtime} stats limit {their_limit}"
    );

    // --network none: only lo, and loopback traffic inside the container is counted on lo.
    // busybox `nc -l` stops at end of its stdin, hence the `sleep |`. The exec'd shell
    // shares the 0.5-CPU quota with the busy loop, so the listener may start late:
    // retry (bounded) until the kernel's counter shows the bytes.
    let lo_rx = || -> u64 {
        cli.run(&["exec", &id, "cat", "/proc/net/dev"])
            .lines()
            .find_map(|line| line.trim().strip_prefix("lo:"))
            .and_then(|counters| counters.split_whitespace().next()?.parse().ok())
            .expect("lo in the container's /proc/net/dev")
    };
    let mut kernel_lo_rx = lo_rx();
    for _ in 0..5 {
        if kernel_lo_rx >= 512 * 1024 {
            break;
        }
        let _ = cli.output(&[
            "exec", &id, "sh", "-c",
            "sleep 3 | nc -l -p 9 > /dev/null & sleep 1; dd if=/dev/zero bs=1024 count=512 2>/dev/null | nc -w 1 127.0.0.1 9",
        ]);
        kernel_lo_rx = lo_rx();
    }
    assert!(
        kernel_lo_rx >= 512 * 1024,
        "loopback traffic happened: {kernel_lo_rx}"
    );
    let after = wait_until(&agent, &id, "the loopback traffic", |m| {
        m["network"]["interfaces"]
            .as_array()
            .and_then(|nets| nets.iter().find(|net| net["interface"] == "lo"))
            .is_some_and(|lo| lo["rx_bytes_total"].as_u64() >= Some(kernel_lo_rx))
    })
    .await;
    assert_eq!(
        after["network_rx_bytes"], 0,
        "no interface but lo: nothing outside (as {runtime} stats)"
    );

    cli.run(&["rm", "-f", &id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while container(&agent, &id).await.is_some() {
        assert!(Instant::now() < deadline, "removed container still listed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs a private dockerd"]
async fn docker_container_is_discovered_with_limits_and_matches_docker_stats() {
    require(&["/usr/sbin/dockerd", "/usr/bin/docker", BUSYBOX]);
    let _serial = ONE_RUNTIME_AT_A_TIME.lock().await;
    let dockerd = Dockerd::start();
    check_limited_burner(&dockerd, dockerd.dir.path(), "docker", &[], |id| {
        format!("/docker/{id}")
    })
    .await;
}

/// A container under a 64 MiB limit whose `dd` allocates 128 MiB once told to
/// (after the agent lists it): the OOM killer kills `dd`. The agent must say so on
/// the WebSocket within 2 s, naming the container, and count it under the
/// container's name; recreated under the same name and killed again, the count
/// for that name reads 2 (the cgroup's own counter starts again at 1). A container
/// killed as it starts is attributed too.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs a private dockerd and OOM-kills a process in it"]
async fn oom_kills_are_attributed_and_counted_by_name_across_recreation() {
    require(&["/usr/sbin/dockerd", "/usr/bin/docker", BUSYBOX]);
    let _serial = ONE_RUNTIME_AT_A_TIME.lock().await;
    let dockerd = Dockerd::start();
    let tarball = busybox_tarball(dockerd.dir.path());
    dockerd.run(&[
        "import",
        &tarball.display().to_string(),
        "localhost/hx-busybox:test",
    ]);
    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 1\n");
    agent.wait_for_cycles(1).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(agent.ws_url())
        .await
        .expect("WebSocket");
    // `dd` allocates a 128 MiB buffer in a container limited to 64 MiB.
    let start_limited = |name: &str, before_dd: &str| {
        dockerd.run(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--memory",
            "64m",
            "--memory-swap",
            "64m",
            "localhost/hx-busybox:test",
            "sh",
            "-c",
            &format!("{before_dd} dd if=/dev/zero of=/dev/null bs=128M count=1; exec sleep 1000"),
        ])
    };
    let name = "hx-oom-victim";
    for round in 1..=2u64 {
        let id = start_limited(name, "while [ ! -e /go ]; do sleep 1; done;");
        wait_until(&agent, &id, "the container", |m| m["state"] == "running").await;
        dockerd.run(&["exec", name, "sh", "-c", ": > /go"]);
        let kill = common::wait_for_message(&mut socket, |message| {
            message["type"] == "OomKill" && message["target"]["id"] == id.as_str()
        })
        .await;
        let received = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let killed_at = kill["timestamp"].as_f64().expect("timestamp");
        assert!(
            received - killed_at < 2.0,
            "OomKill {:.3} s after the kill",
            received - killed_at
        );
        assert_eq!(kill["comm"], "dd", "{kill}");
        assert_eq!(kill["target"]["name"], name);
        assert_eq!(kill["target"]["runtime"], "docker");
        assert_eq!(kill["constraint"], "memcg", "{kill}");
        assert_eq!(kill["cgroup"], format!("/docker/{id}"));
        let rss = kill["rss_bytes"].as_u64().expect("rss_bytes");
        assert!(
            (16 * MIB..=80 * MIB).contains(&rss),
            "victim RSS {rss} under a 64 MiB limit"
        );
        // The kernel's own counter for the cgroup: one kill, this incarnation.
        let kernel = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/docker/{id}/memory.oom_control"
        ))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/docker/{id}/memory.events")))
        .expect("the cgroup's OOM counters");
        assert!(
            kernel.lines().any(|line| line == "oom_kill 1"),
            "kernel: {kernel}"
        );

        let metrics = wait_until(&agent, &id, "the kill in its metrics", |m| {
            m["oom_kills"]
                .as_array()
                .is_some_and(|kills| !kills.is_empty())
        })
        .await;
        assert_eq!(metrics["oom_kills"][0]["comm"], "dd");
        assert_eq!(metrics["oom_kills"].as_array().map(Vec::len), Some(1));
        let exposition = agent.text("/metrics").await;
        let series = format!(
            "horcrux_container_oom_kills_total{{name=\"{name}\",runtime=\"docker\",kind=\"container\"}} "
        );
        let count = exposition
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .unwrap_or_else(|| panic!("{series} missing"));
        assert_eq!(count, round.to_string(), "kills counted for {name}");
        dockerd.run(&["rm", "-f", name]);
    }

    // Killed as it starts, before a snapshot is likely to list it: still the
    // container's kill, known from its cgroup path (by id; by name if listed).
    let at_start = "hx-oom-at-start";
    let id = start_limited(at_start, "");
    let kill = common::wait_for_message(&mut socket, |message| {
        message["type"] == "OomKill" && message["target"]["id"] == id.as_str()
    })
    .await;
    eprintln!("killed at start: {}", kill["target"]);
    assert_eq!(kill["comm"], "dd", "{kill}");
    assert_eq!(kill["target"]["runtime"], "docker", "{kill}");
    assert_eq!(kill["target"]["kind"], "container", "{kill}");
    dockerd.run(&["rm", "-f", at_start]);
}

/// Podman without a daemon, with its own storage; runc and the cgroupfs manager
/// (crun refuses hybrid hosts), explicit rlimits (the defaults are refused here),
/// file-based events (no journald).
struct Podman {
    dir: tempfile::TempDir,
}

impl Cli for Podman {
    fn command(&self) -> Command {
        let mut command = Command::new("/usr/bin/podman");
        command
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .args([
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                "runc",
            ])
            .env("TMPDIR", self.dir.path());
        command
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.output(&["rm", "-f", "-a"]);
        let _ = self.output(&["system", "reset", "--force"]);
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mounts | xargs -r -n1 umount -l; \
                 rmdir /sys/fs/cgroup/*/libpod_parent/conmon /sys/fs/cgroup/*/libpod_parent 2>/dev/null",
                self.dir.path().display()
            ))
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs rootful Podman"]
async fn podman_container_is_discovered_with_limits_and_matches_podman_stats() {
    require(&["/usr/bin/podman", "/usr/sbin/runc", BUSYBOX]);
    let _serial = ONE_RUNTIME_AT_A_TIME.lock().await;
    let podman = Podman {
        dir: tempfile::tempdir().expect("temp dir"),
    };
    let limits = [
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
    ];
    check_limited_burner(&podman, podman.dir.path(), "podman", &limits, |id| {
        format!("/libpod_parent/libpod-{id}")
    })
    .await;
}

/// An LXC container from the busybox template, in a private lxcpath, with an
/// unbridged veth (no lxcbr0 here).
struct Lxc {
    dir: tempfile::TempDir,
    name: String,
}

impl Lxc {
    fn start(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // The memory limit key differs between v1 and cgroup2 controllers.
        let memory_limit = if Path::new("/sys/fs/cgroup/memory").is_dir() {
            "lxc.cgroup.memory.limit_in_bytes = 67108864"
        } else {
            "lxc.cgroup2.memory.max = 67108864"
        };
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            format!(
                "lxc.net.0.type = veth\nlxc.net.0.flags = up\nlxc.apparmor.profile = unconfined\n{memory_limit}\n"
            ),
        )
        .expect("config");
        let lxc = Self {
            dir,
            name: name.to_owned(),
        };
        let path = lxc.dir.path().display().to_string();
        checked(
            Command::new("lxc-create")
                .args(["-P", &path, "-n", name, "-t", "busybox", "-f"])
                .arg(&config)
                .output(),
            "lxc-create",
        );
        checked(
            Command::new("lxc-start")
                .args(["-P", &path, "-n", name])
                .output(),
            "lxc-start",
        );
        lxc
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Command {
        let mut command = Command::new(tool);
        command
            .args([
                "-P",
                &self.dir.path().display().to_string(),
                "-n",
                &self.name,
            ])
            .args(args);
        command
    }

    /// A figure from `lxc-info -S` (e.g. "CPU use" in seconds, "Memory use" in bytes).
    fn info(&self, key: &str) -> f64 {
        let info = checked(self.tool("lxc-info", &["-S"]).output(), "lxc-info");
        let value = info
            .lines()
            .find_map(|line| line.strip_prefix(key)?.trim_start().strip_prefix(':'))
            .unwrap_or_else(|| panic!("{key} not in lxc-info: {info}"))
            .trim();
        let (number, unit) = value.split_once(' ').unwrap_or((value, ""));
        let number: f64 = number.parse().expect("number");
        number
            * match unit {
                "KiB" => 1024.0,
                "MiB" => MIB as f64,
                "GiB" => 1024.0 * MIB as f64,
                _ => 1.0,
            }
    }
}

impl Drop for Lxc {
    fn drop(&mut self) {
        let _ = self.tool("lxc-stop", &["-k"]).output();
        let _ = self.tool("lxc-destroy", &[]).output();
        // lxc-stop leaves lxc.pivot cgroups behind; rmdir only removes empty ones.
        let _ = Command::new("sh")
            .args([
                "-c",
                "rmdir /sys/fs/cgroup/*/lxc.pivot /sys/fs/cgroup/lxc.pivot 2>/dev/null",
            ])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs LXC"]
async fn lxc_container_is_discovered_and_matches_lxc_info() {
    require(&[
        "/usr/bin/lxc-create",
        "/usr/share/lxc/templates/lxc-busybox",
        BUSYBOX,
    ]);
    let _serial = ONE_RUNTIME_AT_A_TIME.lock().await;
    let lxc = Lxc::start("hx-lxc");
    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 1\n");
    agent.wait_for_cycles(1).await;
    let metrics = wait_until(&agent, "hx-lxc", "the LXC container", |m| {
        m["state"] == "running"
    })
    .await;
    assert_eq!(
        (&metrics["id"], &metrics["name"], &metrics["runtime"]),
        (&"hx-lxc".into(), &"hx-lxc".into(), &"lxc".into())
    );
    assert_eq!(metrics["cgroup"], "/lxc.payload.hx-lxc");
    assert_eq!(
        metrics["memory_limit_bytes"],
        64 * MIB,
        "limit from the container's config"
    );
    let network = &metrics["network"];
    assert!(
        network["netns_inode"].is_u64(),
        "its own network namespace: {metrics}"
    );
    let interfaces: Vec<&str> = network["interfaces"]
        .as_array()
        .map(|nets| {
            nets.iter()
                .filter_map(|net| net["interface"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        interfaces.contains(&"eth0") && interfaces.contains(&"lo"),
        "{interfaces:?}"
    );

    // A finite CPU burner inside; once it is done both views of the counter must agree.
    checked(
        lxc.tool(
            "lxc-attach",
            &[
                "--",
                "sh",
                "-c",
                "i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done",
            ],
        )
        .output(),
        "lxc-attach burner",
    );
    let lxc_cpu = lxc.info("CPU use");
    assert!(lxc_cpu >= 0.5, "the burner ran: {lxc_cpu} s");
    let ours = wait_until(&agent, "hx-lxc", "CPU seconds as lxc-info", |m| {
        m["cpu"]["usage_seconds_total"]
            .as_f64()
            .is_some_and(|ours| (ours - lxc_cpu).abs() <= 0.05)
    })
    .await;
    let memory = lxc.info("Memory use");
    let our_memory = ours["memory_usage_bytes"].as_f64().expect("memory");
    assert!(
        (our_memory - memory).abs() <= 0.05 * memory + 64.0 * 1024.0,
        "ours {our_memory} vs lxc-info {memory}"
    );
}
