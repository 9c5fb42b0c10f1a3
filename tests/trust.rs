//! The agent is root on shared hosts: what an unprivileged local user (`nobody`,
//! uid 65534) can shape must not hang, blind or forge it. Each test attacks the
//! real binary as such a user would, and checks the agent against the kernel.
// Each #[tokio::test] runs on its own single-threaded runtime: holding the serial
// guard across awaits blocks only other tests, which is its purpose.
#![allow(clippy::await_holding_lock)]

mod common;

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::Agent;
use horcrux_test_support::cgroup::{TestCgroup, hierarchies, random_id, serial};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// A directory `nobody` can enter, removed at the end.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("horcrux-trust")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Copies `cat` to `dir/name`: a real, root-owned executable with the runtime's
/// name. Run as `name -- ARGS… -`, it reports each ARG as a missing file and then
/// waits on its standard input: a long-lived process with the runtime's command line.
fn runtime_binary(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/usr/bin/cat", &path).expect("copy cat");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Runs `program -- args… -` as `uid`, until dropped.
struct Runtime(Child);

impl Runtime {
    fn start(program: &Path, args: &[&str], uid: u32) -> Self {
        let child = Command::new(program)
            .arg("--")
            .args(args)
            .arg("-")
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start runtime stand-in");
        Self(child)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
}

async fn containers(agent: &Agent) -> Vec<Value> {
    let (status, body) = agent.get("/api/containers").await;
    assert_eq!(status, 200, "{body}");
    body["containers"].as_array().cloned().unwrap_or_default()
}

/// Polls `check` every 200 ms until it returns `Some` (at most `seconds`).
async fn eventually<T>(seconds: u64, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {seconds} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn resident_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("memory field")
}

#[tokio::test]
#[ignore = "needs root: creates cgroups and runs processes as another user"]
async fn forged_runtimes_neither_hang_the_agent_nor_rename_containers() {
    let _serial = serial();
    let work = shared_dir();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dockerd = runtime_binary(&bin, "dockerd");
    let conmon = runtime_binary(&bin, "conmon");

    // Real containers, named by root's runtimes.
    let mut docker = TestCgroup::new();
    docker.run("exec sleep 120", "");
    let mut podman = TestCgroup::podman();
    podman.run("exec sleep 120", "");
    let data_root = work.path().join("docker-data");
    let metadata = data_root.join("containers").join(&docker.id);
    std::fs::create_dir_all(&metadata).expect("mkdir");
    std::fs::write(
        metadata.join("config.v2.json"),
        format!(r#"{{"ID":"{}","Name":"/real-web"}}"#, docker.id),
    )
    .expect("metadata");
    let data_root_arg = format!("--data-root={}", data_root.display());
    let _real_dockerd = Runtime::start(&dockerd, &[&data_root_arg], 0);
    let _real_conmon = Runtime::start(&conmon, &["-c", &podman.id, "-n", "real-pod"], 0);

    // nobody's forgeries: the real binaries run as nobody, a script named dockerd,
    // and nobody's own copy of a runtime binary; all pointing at hostile metadata.
    let evil = work.path().join("evil");
    let evil_metadata = evil.join("containers").join(&docker.id);
    std::fs::create_dir_all(&evil_metadata).expect("mkdir");
    nix::unistd::mkfifo(
        &evil_metadata.join("config.v2.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("FIFO");
    for (name, make) in [
        ("zero", 0),   // a link to /dev/zero
        ("sparse", 1), // a 1 GiB sparse file
    ] {
        let dir = evil.join("containers").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("config.v2.json");
        if make == 0 {
            std::os::unix::fs::symlink("/dev/zero", &file).expect("symlink");
        } else {
            std::fs::File::create(&file)
                .and_then(|f| f.set_len(1 << 30))
                .expect("sparse");
        }
    }
    let script = evil.join("dockerd");
    std::fs::write(&script, "#!/bin/sh\nwhile :; do sleep 1; done\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let own_copy_dir = evil.join("bin");
    std::fs::create_dir(&own_copy_dir).expect("mkdir");
    let own_copy = runtime_binary(&own_copy_dir, "dockerd");
    for entry in walk(&evil) {
        let _ = std::os::unix::fs::lchown(&entry, Some(NOBODY), Some(NOBODY));
    }
    let evil_root_arg = format!("--data-root={}", evil.display());
    let _forged = [
        Runtime::start(&dockerd, &[&evil_root_arg], NOBODY),
        Runtime::start(&own_copy, &[&evil_root_arg], NOBODY),
        Runtime::start(&conmon, &["-c", &podman.id, "-n", "hijacked"], NOBODY),
    ];
    let _script = Command::new(&script)
        .arg(&evil_root_arg)
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .map(Runtime);

    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 1\n");
    agent.wait_ready().await;
    let names = eventually(20, "both containers named", async || {
        let list = containers(&agent).await;
        let name_of = |id: &str| {
            list.iter()
                .find(|c| c["id"] == id)
                .map(|c| c["name"].clone())
        };
        match (name_of(&docker.id), name_of(&podman.id)) {
            (Some(Value::String(a)), Some(Value::String(b))) => Some((a, b)),
            _ => None,
        }
    })
    .await;
    assert_eq!(names, ("real-web".to_owned(), "real-pod".to_owned()));

    // Cycles keep their 1 s interval and memory stays put.
    let (_, before) = agent.get("/api/status").await;
    let rss_before = resident_kib(agent.pid(), "VmRSS:");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, after) = agent.get("/api/status").await;
    let cycles = |status: &Value| {
        status["collectors"]["containers"]["cycles"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        cycles(&after) >= cycles(&before) + 4,
        "{} → {} container cycles in 5 s",
        cycles(&before),
        cycles(&after)
    );
    let rss_after = resident_kib(agent.pid(), "VmRSS:");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert!(resident_kib(agent.pid(), "VmHWM:") < 200 * 1024, "peak RSS");
    let list = containers(&agent).await;
    assert!(
        list.iter().all(|c| c["name"] != "hijacked"),
        "a forged conmon renamed a container: {list:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_owned()];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// A cgroup2 subtree delegated to `nobody` the way systemd delegates
/// `user@UID.service`, removed (with everything made in it) when dropped.
struct DelegatedSubtree {
    top: PathBuf,
    service: PathBuf,
}

impl DelegatedSubtree {
    fn new() -> Self {
        let unified = hierarchies().unified.expect("a cgroup2 hierarchy");
        let top = unified.join("user.slice");
        let service = top
            .join(format!("user-{NOBODY}.slice"))
            .join(format!("user@{NOBODY}.service"));
        std::fs::create_dir_all(&service).expect("mkdir delegated subtree");
        for path in [
            service.clone(),
            service.join("cgroup.procs"),
            service.join("cgroup.subtree_control"),
            service.join("cgroup.threads"),
        ] {
            chown(&path, NOBODY);
        }
        Self { top, service }
    }

    /// Runs a Python snippet as `nobody` inside the subtree's directory.
    fn as_nobody(&self, code: &str) {
        let status = Command::new("/usr/bin/python3")
            .args(["-c", code])
            .current_dir(&self.service)
            .uid(NOBODY)
            .gid(NOBODY)
            .status()
            .expect("python3");
        assert!(status.success(), "{code}");
    }
}

impl Drop for DelegatedSubtree {
    fn drop(&mut self) {
        // Deepest first.
        let mut dirs: Vec<PathBuf> = walk(&self.top)
            .into_iter()
            .filter(|path| path.is_dir())
            .collect();
        dirs.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[tokio::test]
#[ignore = "needs root: creates cgroups, delegates a subtree and runs processes as another user"]
async fn a_users_delegated_cgroups_cannot_pose_as_containers() {
    let _serial = serial();
    // The real container burns half a CPU under a (v1) quota.
    let mut real = TestCgroup::new();
    real.write("cpu", "cpu.cfs_quota_us", "50000");
    real.run("while :; do :; done", "");

    let subtree = DelegatedSubtree::new();
    let id = &real.id;
    let verified: Vec<String> = (0..3).map(|_| random_id()).collect();
    subtree.as_nobody(&format!(
        "import os\n\
         os.mkdir('docker-{id}.scope')\n\
         os.makedirs('app.slice/docker/{id}')\n\
         os.mkdir('lxc.payload.fake')\n\
         for n in range(5000): os.mkdir('libpod-%064x.scope' % n)\n\
         for v in {verified:?}: os.mkdir('libpod-' + v + '.scope')\n"
    ));
    // nobody's own Podman runs three of them: rootless containers of nobody's.
    let work = shared_dir();
    let conmon = runtime_binary(work.path(), "conmon");
    let _conmons: Vec<Runtime> = verified
        .iter()
        .map(|v| Runtime::start(&conmon, &["-c", v, "-n", "mine"], NOBODY))
        .collect();

    let agent =
        Agent::start("[monitoring]\nvm_metrics_interval = 1\nmax_containers_per_user = 2\n");
    agent.wait_ready().await;
    let status = eventually(30, "the caps reported", async || {
        let (_, status) = agent.get("/api/status").await;
        (status["discovery"]["over_user_limit"][NOBODY.to_string()] == 1).then_some(status)
    })
    .await;
    let discovery = &status["discovery"];
    assert!(
        discovery["unverified_rootless"].as_u64() >= Some(5001),
        "{discovery}"
    );
    let list = containers(&agent).await;
    let claiming: Vec<&Value> = list.iter().filter(|c| c["id"] == id.as_str()).collect();
    assert_eq!(claiming.len(), 1, "only the real cgroup is container {id}");
    assert_eq!(claiming[0]["cgroup"], format!("/docker/{id}"));
    let rootless: Vec<&Value> = list
        .iter()
        .filter(|c| {
            c["cgroup"]
                .as_str()
                .is_some_and(|p| p.starts_with("/user.slice"))
        })
        .collect();
    assert_eq!(rootless.len(), 2, "per-user cap: {rootless:?}");
    assert!(
        rootless
            .iter()
            .all(|c| c["owner_uid"] == NOBODY && c["name"] == "mine"),
        "{rootless:?}"
    );
    assert!(
        list.iter().all(|c| c["id"] != "fake"),
        "lxc.payload in a user's subtree"
    );

    // The real container's CPU rate is its own: half a CPU, as the kernel counts it.
    let usage_file = real.controller_file("cpuacct", "cpuacct.usage");
    let read_usage = || -> u64 {
        std::fs::read_to_string(&usage_file)
            .expect("cpuacct.usage")
            .trim()
            .parse()
            .expect("number")
    };
    let (kernel_before, started) = (read_usage(), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kernel_percent =
        (read_usage() - kernel_before) as f64 / started.elapsed().as_nanos() as f64 * 100.0;
    let (_, metrics) = agent.get(&format!("/api/containers/{id}/metrics")).await;
    let reported = metrics["cpu_usage_percent"].as_f64().expect("CPU rate");
    assert!(
        (reported - kernel_percent).abs() < 10.0 && (35.0..60.0).contains(&reported),
        "agent {reported:.1}% vs kernel {kernel_percent:.1}%"
    );
    let (_, status) = agent.get("/api/status").await;
    let cycle_ms = status["collectors"]["containers"]["last_duration_ms"]
        .as_f64()
        .expect("cycle time");
    assert!(cycle_ms < 1000.0, "a container cycle took {cycle_ms} ms");
    eprintln!("container cycle with 5,006 refused cgroups: {cycle_ms:.1} ms");
}

/// `bindfs -f SRC DST` as root, unmounted when dropped.
struct FuseMount {
    daemon: Child,
    mount_point: PathBuf,
    _dirs: tempfile::TempDir,
}

impl FuseMount {
    fn new() -> Self {
        let dirs = tempfile::tempdir().expect("temp dir");
        let (source, mount_point) = (dirs.path().join("src"), dirs.path().join("mnt"));
        std::fs::create_dir(&source).expect("mkdir");
        std::fs::create_dir(&mount_point).expect("mkdir");
        let daemon = Command::new("bindfs")
            .arg("-f")
            .arg(&source)
            .arg(&mount_point)
            .spawn()
            .expect("bindfs (Debian package bindfs)");
        let mount = Self {
            daemon,
            mount_point,
            _dirs: dirs,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mount.mounted() {
            assert!(Instant::now() < deadline, "bindfs did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        mount
    }

    fn mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|text| text.contains(&format!(" {} ", self.mount_point.display())))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.daemon.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal bindfs");
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

#[tokio::test]
#[ignore = "needs root: mounts a FUSE filesystem"]
async fn a_hung_fuse_mount_is_reported_stale_and_never_stalls_a_cycle() {
    let _serial = serial();
    let fuse = FuseMount::new();
    let mount_point = fuse.mount_point.display().to_string();
    let agent = Agent::start("");
    agent.wait_ready().await;
    // Whether `list` (an array of filesystems) names the FUSE mount.
    let lists = |list: &Value| {
        list.as_array().is_some_and(|list| {
            list.iter()
                .any(|fs| fs["mount_point"] == mount_point.as_str())
        })
    };
    let node_metrics = async || agent.get("/api/monitoring/node/metrics").await.1;
    eventually(15, "the FUSE mount listed", async || {
        lists(&node_metrics().await["filesystems"]).then_some(())
    })
    .await;

    fuse.signal(nix::sys::signal::Signal::SIGSTOP);
    let (_, before) = agent.get("/api/status").await;
    let node_cycles = |status: &Value| status["collectors"]["node"]["cycles"].as_u64().unwrap_or(0);
    eventually(10, "the stopped mount reported stale", async || {
        lists(&agent.get("/api/status").await.1["stale_filesystems"]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, after) = agent.get("/api/status").await;
    // 1 s interval: one statvfs timeout (0.5 s) at most, then the mount is skipped.
    assert!(
        node_cycles(&after) >= node_cycles(&before) + 4,
        "node cycles {} → {} while the mount hung",
        node_cycles(&before),
        node_cycles(&after)
    );
    let exposition = agent.text("/metrics").await;
    assert!(
        exposition.contains(&format!(
            "horcrux_node_filesystem_stale{{mountpoint=\"{mount_point}\""
        )),
        "no stale gauge for {mount_point}"
    );

    fuse.signal(nix::sys::signal::Signal::SIGCONT);
    eventually(10, "the mount recovered", async || {
        let node = node_metrics().await;
        (lists(&node["filesystems"]) && !lists(&node["stale_filesystems"])).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs root: loads the eBPF programs"]
async fn a_panicking_collector_is_restarted_and_the_panic_shows() {
    for collector in ["containers", "node"] {
        let agent = Agent::start_with_env(
            "[monitoring]\nvm_metrics_interval = 1\n",
            &[("HORCRUX_INJECT_PANIC", collector)],
        );
        agent.wait_ready().await;
        let supervision = |status: &Value| status["collectors"]["supervision"][collector].clone();
        let panicked = eventually(20, "the panic counted", async || {
            let (_, status) = agent.get("/api/status").await;
            (supervision(&status)["panics"] == 1).then_some(supervision(&status))
        })
        .await;
        assert!(
            panicked["last_panic"]
                .as_str()
                .is_some_and(|message| message.contains("HORCRUX_INJECT_PANIC")),
            "{panicked}"
        );
        let restarted_after = panicked["last_success"].as_u64().unwrap_or(0);
        // Restarted after a 1 s backoff: publishing again.
        eventually(20, "publishing again", async || {
            let (_, status) = agent.get("/api/status").await;
            (supervision(&status)["last_success"].as_u64()? > restarted_after + 1).then_some(())
        })
        .await;
        let exposition = agent.text("/metrics").await;
        assert!(
            exposition.contains(&format!(
                "horcrux_agent_collector_panics_total{{collector=\"{collector}\"}} 1"
            )),
            "{collector}: panic counter missing"
        );
        assert!(exposition.contains(&format!(
            "horcrux_collector_last_success_timestamp_seconds{{collector=\"{collector}\"}}"
        )));
    }
}

#[tokio::test]
#[ignore = "needs root: loads the eBPF programs"]
async fn sighup_reloads_rules_and_intervals_and_survives_a_bad_file() {
    let mut agent = Agent::start(
        "[monitoring]\nvm_metrics_interval = 1\n\
         [[alerts]]\nname = \"before\"\nmetric = \"cpu_usage\"\nop = \">\"\nthreshold = 1000\n",
    );
    agent.wait_for_cycles(1).await;
    agent.rewrite_config(
        "[monitoring]\nvm_metrics_interval = 2\n\
         [[alerts]]\nname = \"after\"\nmetric = \"cpu_usage\"\nop = \">=\"\nthreshold = 0\n",
    );
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let fired = eventually(10, "the reloaded rule fires", async || {
        let (_, alerts) = agent.get("/api/alerts").await;
        let active = alerts["active"].as_array()?;
        active
            .iter()
            .any(|alert| alert["rule"] == "after")
            .then_some(alerts)
    })
    .await;
    assert_eq!(fired["rules"].as_array().map(Vec::len), Some(1));
    let (_, status) = agent.get("/api/status").await;
    assert_eq!(status["config"]["vm_metrics_interval"], 2);

    agent.rewrite_config("[monitoring]\nno_such_key = 1\n");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(agent.is_running(), "a bad file on SIGHUP is not fatal");
    let (_, alerts) = agent.get("/api/alerts").await;
    assert_eq!(alerts["rules"][0]["name"], "after", "the old rules stay");
}

#[tokio::test]
#[ignore = "needs root: loads the eBPF programs and creates cgroups"]
async fn metrics_wait_for_the_programs_and_count_from_the_first_answer() {
    let _serial = serial();
    let mut cgroup = TestCgroup::new();
    cgroup.run("exec sleep 120", "");
    let file = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).expect("temp file");
    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 1\n");
    let client = reqwest::Client::new();
    // Poll from the first moment: before the programs settle, metrics say so.
    let mut saw_starting = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "never ready");
        let Ok(response) = client.get(agent.url("/api/containers")).send().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let code = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON");
        if code == 200 {
            break;
        }
        assert_eq!((code, &body["error"]), (503, &Value::from("starting")));
        saw_starting = true;
        let (status_code, status) = agent.get("/api/status").await;
        assert_eq!(status_code, 200, "status answers while starting");
        assert!(status["ready"].is_boolean(), "{status}");
        let (health, _) = agent.get("/healthz").await;
        assert_eq!(health, 200);
    }
    let (_, status) = agent.get("/api/status").await;
    assert_eq!(status["ebpf"]["state"], "settled");
    assert_eq!(status["ebpf"]["attached_programs"], 8, "{}", status["ebpf"]);
    let (ready, _) = agent.get("/readyz").await;
    assert_eq!(ready, 200);
    eprintln!("saw 503 starting before ready: {saw_starting}");

    // A workload started in the existing container at the first answer is counted whole.
    let path = file.path().display().to_string();
    cgroup.run(
        &format!(
            "fallocate -l 16M {path} && dd if=/dev/zero of={path} bs=1M count=16 oflag=direct conv=notrunc status=none && exec sleep 120"
        ),
        "",
    );
    let written = eventually(20, "the write counted", async || {
        let (code, metrics) = agent
            .get(&format!("/api/containers/{}/metrics", cgroup.id))
            .await;
        let bytes = metrics["ebpf"]["blkio"]["write_bytes"].as_u64();
        bytes.filter(|&bytes| code == 200 && bytes >= 16 << 20)
    })
    .await;
    assert!(written < 17 << 20, "{written} bytes");
}
