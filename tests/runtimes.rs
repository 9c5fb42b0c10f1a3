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
const BUSYBOX: &str = "/usr/bin/busybox";

fn missing(test: &str, binaries: &[&str]) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {test}: container runtimes need root; CI runs as root");
        return true;
    }
    for binary in binaries {
        if !Path::new(binary).exists() {
            eprintln!(
                "SKIPPED {test}: {binary} is not installed (`cargo xtask setup` installs it)"
            );
            return true;
        }
    }
    false
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
        while !dockerd.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dockerd
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("/usr/bin/docker")
            .arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args)
            .output()
            .expect("run docker")
    }

    fn run(&self, args: &[&str]) -> String {
        checked(Ok(self.docker(args)), &format!("docker {args:?}"))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = String::from_utf8_lossy(&self.docker(&["ps", "-aq"]).stdout).into_owned();
        for id in ids.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
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

#[tokio::test(flavor = "multi_thread")]
async fn docker_container_is_discovered_with_limits_and_matches_docker_stats() {
    if missing("docker", &["/usr/sbin/dockerd", "/usr/bin/docker", BUSYBOX]) {
        return;
    }
    let dockerd = Dockerd::start();
    let tarball = busybox_tarball(dockerd.dir.path());
    dockerd.run(&["import", &tarball.display().to_string(), "hx-busybox:test"]);
    let id = dockerd.run(&[
        "run",
        "-d",
        "--name",
        "hx-burner",
        "--network",
        "none",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "hx-busybox:test",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    assert_eq!(id.len(), 64, "docker run prints the full id: {id}");

    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 1\n");
    agent.wait_for_cycles(1).await;
    let metrics = wait_until(&agent, &id, "a CPU rate", |m| {
        m["cpu_usage_percent"].is_number()
    })
    .await;
    assert_eq!(metrics["runtime"], "docker");
    assert_eq!(
        metrics["name"], "hx-burner",
        "name from the daemon's own --data-root"
    );
    assert_eq!(metrics["state"], "running");
    assert_eq!(metrics["memory_limit_bytes"], 64 * MIB, "--memory 64m");
    assert_eq!(metrics["cpu"]["limit_cores"], 0.5, "--cpus 0.5");
    let (_, by_name) = agent.get("/api/containers/hx-burner/metrics").await;
    assert_eq!(by_name["id"], id.as_str());

    // The kernel's own view of the same cgroup.
    let kernel = |controller: &str, file: &str| -> u64 {
        let path = format!("/sys/fs/cgroup/{controller}/docker/{id}/{file}");
        let unified = format!("/sys/fs/cgroup/docker/{id}/{file}");
        std::fs::read_to_string(&path)
            .or_else(|_| std::fs::read_to_string(&unified))
            .map(|text| {
                text.split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    assert_eq!(metrics["pids"]["current"], kernel("pids", "pids.current"));

    // Let the quota settle, then compare with `docker stats` taken right after our sample.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ours = container(&agent, &id).await.expect("still there");
    let stats = dockerd.run(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.CPUPerc}} {{.MemUsage}}",
        &id,
    ]);
    let fields: Vec<&str> = stats.split_whitespace().collect();
    let docker_cpu: f64 = fields[0].trim_end_matches('%').parse().expect("CPU %");
    let our_cpu = ours["cpu_usage_percent"].as_f64().expect("cpu");
    assert!(
        (40.0..=56.0).contains(&our_cpu),
        "busy loop under --cpus 0.5: {our_cpu}%"
    );
    assert!(
        (our_cpu - docker_cpu).abs() <= 10.0,
        "ours {our_cpu}% vs docker stats {docker_cpu}%"
    );
    // docker stats' memory on v1 is usage minus inactive file cache: our working set.
    let docker_memory = docker_size(fields[1]);
    let working_set = ours["memory"]["working_set_bytes"]
        .as_f64()
        .expect("working set");
    assert!(
        (working_set - docker_memory).abs() <= (0.05 * docker_memory).max(512.0 * 1024.0),
        "working set {working_set} vs docker stats {docker_memory}"
    );
    assert_eq!(
        docker_size(fields[3]),
        (64 * MIB) as f64,
        "docker stats shows the same limit"
    );

    // --network none: only lo, and loopback traffic inside the container is counted on lo.
    dockerd.run(&[
        "exec", &id, "sh", "-c",
        "nc -l -p 9 > /dev/null & sleep 0.3; dd if=/dev/zero bs=1024 count=512 2>/dev/null | nc -w 1 127.0.0.1 9; wait",
    ]);
    let inside = dockerd.run(&["exec", &id, "cat", "/proc/net/dev"]);
    let kernel_lo_rx: u64 = inside
        .lines()
        .find_map(|line| line.trim().strip_prefix("lo:"))
        .and_then(|counters| counters.split_whitespace().next()?.parse().ok())
        .expect("lo in the container's /proc/net/dev");
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
        "no interface but lo: nothing outside (as docker stats)"
    );

    dockerd.run(&["rm", "-f", &id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while container(&agent, &id).await.is_some() {
        assert!(Instant::now() < deadline, "removed container still listed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
