//! Runs the real `horcrux-agent` binary on an ephemeral loopback port.
// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads WebSocket messages until one satisfies `wanted` (15 s at most).
pub async fn wait_for_message(socket: &mut Socket, wanted: impl Fn(&Value) -> bool) -> Value {
    use futures_util::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .expect("the expected WebSocket message within 15 s")
            .expect("stream open")
            .expect("valid frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if wanted(&value) {
                return value;
            }
        }
    }
}

pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    config: tempfile::NamedTempFile,
    /// `[storage] path` when the config names none: the history file and queues
    /// of one test never reach another's agent (nor `/var/lib/horcrux`).
    storage: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent with `config` as its config file and a 1 s node interval.
    pub fn start(config: &str) -> Agent {
        Self::spawn(config, None, &[], 1)
    }

    /// The same with another node interval (seconds).
    pub fn start_with_node_interval(config: &str, seconds: u64) -> Agent {
        Self::spawn(config, None, &[], seconds)
    }

    /// The same as user `nobody` (65534): what an agent without root gets.
    pub fn start_unprivileged(config: &str) -> Agent {
        Self::spawn(config, Some(65534), &[], 1)
    }

    /// The same, with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Agent {
        Self::spawn(config, None, env, 1)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the config file's text (the agent reads it again on SIGHUP).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(self.config.path(), with_storage(text, self.storage.path()))
            .expect("rewrite config");
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the agent");
    }

    /// Still running (not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn spawn(config: &str, user: Option<u32>, env: &[(&str, &str)], node_interval: u64) -> Agent {
        use std::os::unix::{fs::PermissionsExt, process::CommandExt};
        let storage = tempfile::tempdir().expect("storage dir");
        let mut file = tempfile::NamedTempFile::new().expect("temp config");
        file.write_all(with_storage(config, storage.path()).as_bytes())
            .expect("write config");
        let addr = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_horcrux-agent"));
        if let Some(id) = user {
            std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644))
                .expect("config readable by the agent's user");
            std::fs::set_permissions(storage.path(), std::fs::Permissions::from_mode(0o777))
                .expect("storage writable by the agent's user");
            command.uid(id).gid(id);
        }
        let child = command
            .envs(env.iter().copied())
            .arg("--config")
            .arg(file.path())
            .args([
                "--listen",
                &addr.to_string(),
                "--node-metrics-interval",
                &node_interval.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start horcrux-agent");
        Agent {
            child,
            addr,
            config: file,
            storage,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(self.url(path)).await.expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Waits until the agent has published `cycles` node collections and is ready
    /// (metrics endpoints answer 503 `starting` before).
    pub async fn wait_for_cycles(&self, cycles: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = reqwest::get(self.url("/api/status")).await
                && let Ok(status) = response.json::<Value>().await
                && status["collectors"]["node"]["cycles"].as_u64() >= Some(cycles)
                && status["ready"] == true
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent at {} never became ready",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The body of `GET path` as text (e.g. the Prometheus exposition).
    pub async fn text(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .expect("HTTP request")
            .text()
            .await
            .expect("text body")
    }

    /// Waits until `/readyz` answers 200: collection is complete (30 s at most).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(self.url("/readyz"))
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "agent at {} never became ready",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and returns whether the agent exited cleanly within 10 s.
    pub fn terminate(&mut self) -> bool {
        self.exit_on(nix::sys::signal::Signal::SIGTERM)
            .is_some_and(|status| status.success())
    }

    /// Sends `signal` and returns how the agent ended, if it did within 10 s.
    pub fn exit_on(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `config` with a `[storage]` table at `dir` unless it has its own.
fn with_storage(config: &str, dir: &std::path::Path) -> String {
    if config.contains("[storage]") {
        config.to_owned()
    } else {
        format!("{config}\n[storage]\npath = \"{}\"\n", dir.display())
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    listener.local_addr().expect("local addr")
}

/// Keeps every CPU busy until dropped.
pub struct CpuBurner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuBurner {
    pub fn start() -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..std::thread::available_parallelism().map_or(1, usize::from))
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuBurner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

pub const PROMTOOL: &str = "/usr/bin/promtool";

/// `promtool check metrics` finds nothing to complain about in `text`.
pub fn promtool_check(text: &str) {
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), text.as_bytes())
        .expect("pipe");
    let checked = promtool.wait_with_output().expect("promtool output");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && complaints.trim().is_empty(),
        "promtool: {complaints}"
    );
}
