//! `[[remote_write]]` end-to-end, against real receivers started privately:
//! Prometheus 2.42 (`--web.enable-remote-write-receiver`) and VictoriaMetrics hold
//! exactly what the agent's own history holds at the same timestamps; an outage of
//! the receiver, with the agent SIGKILLed and restarted in the middle of it, leaves
//! no gap beyond the seconds the agent was down; a full disk budget drops the
//! oldest samples and counts them; a damaged queue is recovered at start-up; a
//! receiver's 5xx and 429 are retried and its 400 counted as a refusal.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::Agent;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const VICTORIA_METRICS: &str = "/usr/bin/victoria-metrics";

/// A receiver on a fixed loopback port with its data in `data`, so that it can be
/// stopped and started again with what it had.
struct Receiver {
    kind: Kind,
    port: u16,
    data: PathBuf,
    process: Option<Child>,
}

#[derive(Clone, Copy)]
enum Kind {
    Prometheus,
    VictoriaMetrics,
}

impl Receiver {
    fn start(kind: Kind, data: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let mut receiver = Self {
            kind,
            port,
            data: data.to_owned(),
            process: None,
        };
        receiver.resume();
        receiver
    }

    fn resume(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut command = match self.kind {
            Kind::Prometheus => {
                assert!(
                    Path::new(PROMETHEUS).exists(),
                    "Debian `prometheus` is not installed: `cargo xtask setup` installs it"
                );
                let config = self.data.join("prometheus.yml");
                std::fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("config");
                let mut command = Command::new(PROMETHEUS);
                command.args([
                    format!("--config.file={}", config.display()),
                    format!("--storage.tsdb.path={}", self.data.join("tsdb").display()),
                    format!("--web.listen-address={listen}"),
                    "--web.enable-remote-write-receiver".into(),
                ]);
                command
            }
            Kind::VictoriaMetrics => {
                assert!(
                    Path::new(VICTORIA_METRICS).exists(),
                    "Debian `victoria-metrics` is not installed: `cargo xtask setup` installs it"
                );
                let mut command = Command::new(VICTORIA_METRICS);
                command.args([
                    format!("-storageDataPath={}", self.data.join("vm").display()),
                    format!("-httpListenAddr={listen}"),
                    // Recent samples are queryable at once.
                    "-search.latencyOffset=0s".into(),
                    "-search.disableCache".into(),
                ]);
                command
            }
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the receiver");
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "the receiver never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// The raw samples of `selector` over the last `seconds`: (Unix ms, value) per
    /// series, by the series' labels.
    async fn raw(&self, selector: &str, seconds: u64) -> BTreeMap<String, Vec<(i64, f64)>> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let query = format!("{selector}[{seconds}s]");
        let Ok(response) = reqwest::Client::new()
            .get(url)
            .query(&[("query", query.as_str())])
            .send()
            .await
        else {
            return BTreeMap::new();
        };
        let body: Value = response.json().await.unwrap_or_default();
        let mut out = BTreeMap::new();
        for series in body["data"]["result"].as_array().into_iter().flatten() {
            let samples = series["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|pair| {
                    let at = pair[0].as_f64()?;
                    let value = pair[1].as_str()?.parse::<f64>().ok()?;
                    Some(((at * 1000.0).round() as i64, value))
                })
                .collect();
            out.insert(series["metric"].to_string(), samples);
        }
        out
    }

    /// The one series of `selector`, waiting until it has `at_least` samples.
    async fn wait_for(&self, selector: &str, seconds: u64, at_least: usize) -> Vec<(i64, f64)> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let series = self.raw(selector, seconds).await;
            if let Some(samples) = series.values().next()
                && samples.len() >= at_least
            {
                assert_eq!(series.len(), 1, "{selector} is one series: {series:?}");
                return samples.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{selector}: never {at_least} samples: {series:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn agent_config(storage: &Path, url: &str, extra: &str) -> String {
    format!(
        "[monitoring]\nenable_history = true\nhistory_retention = 3600\nvm_metrics_interval = 1\n\
         [storage]\npath = \"{}\"\n\
         [[remote_write]]\nname = \"central\"\nurl = \"{url}\"\ninterval = 1\n\
         external_labels = {{ instance = \"node-1\" }}\n{extra}",
        storage.display()
    )
}

/// The agent's history of one series: (Unix ms, value).
async fn history(agent: &Agent, path: &str) -> Vec<(i64, f64)> {
    let (status, body) = agent.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|point| {
            Some((
                point["timestamp"].as_i64()? * 1000,
                point["value"].as_f64()?,
            ))
        })
        .collect()
}

async fn export_status(agent: &Agent) -> Value {
    let (_, status) = agent.get("/api/status").await;
    status["exports"][0].clone()
}

/// Every history point the receiver also has is equal there; returns how many
/// matched (the receiver may lag the newest points).
fn matched(history: &[(i64, f64)], pushed: &[(i64, f64)], scale: f64, what: &str) -> usize {
    let pushed: BTreeMap<i64, f64> = pushed.iter().copied().collect();
    let mut matched = 0;
    for (at, value) in history {
        if let Some(received) = pushed.get(at) {
            assert!(
                (received * scale - value).abs() <= 1e-9 * value.abs().max(1.0),
                "{what} at {at}: history {value}, receiver {received}"
            );
            matched += 1;
        }
    }
    matched
}

/// The receiver's node figures equal the agent's history at the same timestamps:
/// load (a gauge), CPU usage (the pushed ratio, and recomputed from the pushed
/// per-CPU seconds counters), and the eBPF run-queue histogram's count is
/// monotonic and equals its `+Inf` bucket.
async fn receiver_holds_the_history(kind: Kind) {
    let data = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start(kind, data.path());
    let storage = tempfile::tempdir().expect("storage");
    let agent = Agent::start(&agent_config(storage.path(), &receiver.write_url(), ""));
    agent.wait_for_cycles(1).await;
    let selector = "horcrux_node_load1{instance=\"node-1\"}";
    receiver.wait_for(selector, 600, 8).await;
    let load = history(
        &agent,
        "/api/monitoring/node/history?metric=load_average_1m&range=600",
    )
    .await;
    let pushed = receiver.raw(selector, 600).await;
    let pushed = pushed.values().next().expect("load series");
    assert!(
        matched(&load, pushed, 1.0, "load1") >= 6,
        "{load:?} vs {pushed:?}"
    );

    let cpu = history(
        &agent,
        "/api/monitoring/node/history?metric=cpu_usage&range=600",
    )
    .await;
    let ratio = receiver
        .wait_for("horcrux_node_cpu_usage_ratio", 600, 6)
        .await;
    assert!(matched(&cpu, &ratio, 100.0, "cpu usage ratio") >= 5);
    // From the counters: busy = all modes but idle and iowait (guest time is
    // already inside user and nice).
    let all = "sum(horcrux_node_cpu_seconds_total{mode!~\"guest.*\"})";
    let idle = "sum(horcrux_node_cpu_seconds_total{mode=~\"idle|iowait\"})";
    let mut recomputed = 0;
    // Only intervals whose both ends the receiver already had (an instant query
    // at a time it has no sample for would answer with an older one).
    let received: std::collections::BTreeSet<i64> = ratio.iter().map(|(at, _)| *at).collect();
    for window in cpu.windows(2) {
        let [(before, _), (at, percent)] = window else {
            continue;
        };
        if !received.contains(before) || !received.contains(at) {
            continue;
        }
        let Some(delta_all) = delta(&receiver, all, *before, *at).await else {
            continue;
        };
        let Some(delta_idle) = delta(&receiver, idle, *before, *at).await else {
            continue;
        };
        if delta_all > 0.0 {
            let from_counters = 100.0 * (1.0 - delta_idle / delta_all);
            // The agent's percent is from /proc/stat's total line, the counters are
            // its per-CPU lines: the kernel computes a tickless CPU's idle time when
            // each line is printed, so they may differ by a tick (10 ms) per CPU at
            // each end of the interval.
            let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
            let tolerance = 100.0 * 2.0 * cpus * 0.01 / delta_all + 1e-9;
            assert!(
                (from_counters - percent).abs() <= tolerance,
                "CPU at {at}: history {percent}%, pushed counters {from_counters}%"
            );
            recomputed += 1;
        }
    }
    assert!(recomputed >= 3, "{recomputed} CPU intervals recomputed");

    let buckets = receiver
        .raw(
            "horcrux_node_runqueue_latency_seconds_bucket{le=\"+Inf\"}",
            600,
        )
        .await;
    let counts = receiver
        .raw("horcrux_node_runqueue_latency_seconds_count", 600)
        .await;
    if let (Some(buckets), Some(counts)) = (buckets.values().next(), counts.values().next()) {
        // The two queries ran one after the other: newer samples may have
        // arrived in between, so compare the timestamps both have.
        let counted: BTreeMap<i64, f64> = counts.iter().copied().collect();
        let common: Vec<_> = buckets
            .iter()
            .filter_map(|(at, bucket)| Some((bucket, counted.get(at)?)))
            .collect();
        assert!(common.len() >= 5, "{buckets:?} vs {counts:?}");
        assert!(
            common.iter().all(|(bucket, count)| bucket == count),
            "+Inf bucket = count at every timestamp: {buckets:?} vs {counts:?}"
        );
        assert!(
            counts.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "{counts:?}"
        );
    }
    let status = export_status(&agent).await;
    assert!(status["samples_sent"].as_u64() > Some(1000), "{status}");
    assert_eq!(status["samples_dropped"]["rejected"], 0, "{status}");
    assert!(status["last_success"].as_u64().is_some(), "{status}");
}

/// A counter's increase between two instants, from the receiver (the sum at each).
async fn delta(receiver: &Receiver, sum: &str, before_ms: i64, at_ms: i64) -> Option<f64> {
    let value = |at_ms: i64| async move {
        let url = format!("http://127.0.0.1:{}/api/v1/query", receiver.port);
        let time = format!("{}", at_ms as f64 / 1000.0);
        let body: Value = reqwest::Client::new()
            .get(url)
            .query(&[("query", sum), ("time", time.as_str())])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()
    };
    Some(value(at_ms).await? - value(before_ms).await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_receives_what_the_history_holds() {
    receiver_holds_the_history(Kind::Prometheus).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn victoria_metrics_receives_what_the_history_holds() {
    receiver_holds_the_history(Kind::VictoriaMetrics).await;
}

/// A container's memory, pushed, equals its history (root: the test makes the
/// container's cgroup).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: creates cgroups"]
async fn a_containers_memory_arrives_as_its_history_holds_it() {
    let mut cgroup = horcrux_test_support::cgroup::TestCgroup::new();
    cgroup.run("exec sleep 120", "");
    let data = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start(Kind::Prometheus, data.path());
    let storage = tempfile::tempdir().expect("storage");
    let agent = Agent::start(&agent_config(storage.path(), &receiver.write_url(), ""));
    agent.wait_for_cycles(1).await;
    let selector = format!(
        "horcrux_container_memory_usage_bytes{{id=\"{}\",runtime=\"docker\",instance=\"node-1\"}}",
        cgroup.id
    );
    let pushed = receiver.wait_for(&selector, 600, 6).await;
    let memory = history(
        &agent,
        &format!(
            "/api/containers/{}/history?metric=memory_usage_bytes&range=600",
            cgroup.id
        ),
    )
    .await;
    assert!(
        matched(&memory, &pushed, 1.0, "container memory") >= 5,
        "{memory:?} vs {pushed:?}"
    );
}

/// Receiver down for two minutes, the agent SIGKILLed and restarted in the middle:
/// once the receiver is back, every node cycle of the outage is there, in order,
/// but for the seconds the agent was down.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_and_an_agent_kill_lose_nothing_beyond_the_downtime() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut receiver = Receiver::start(Kind::Prometheus, data.path());
    let storage = tempfile::tempdir().expect("storage");
    let config = agent_config(storage.path(), &receiver.write_url(), "");
    let mut agent = Agent::start(&config);
    agent.wait_for_cycles(1).await;
    let selector = "horcrux_node_load1{instance=\"node-1\"}";
    receiver.wait_for(selector, 600, 3).await;
    receiver.stop();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let queued = export_status(&agent).await;
    assert!(queued["queue_samples"].as_u64() > Some(10_000), "{queued}");
    assert!(queued["samples_retried"].as_u64() > Some(0), "{queued}");
    let killed_at = horcrux_agent::clock::unix_seconds() as i64 * 1000;
    assert!(agent.exit_on(nix::sys::signal::Signal::SIGKILL).is_some());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agent = Agent::start(&config);
    agent.wait_for_cycles(1).await;
    let restarted_at = horcrux_agent::clock::unix_seconds() as i64 * 1000;
    let resumed = export_status(&agent).await;
    assert!(
        resumed["queue_samples"].as_u64() > queued["queue_samples"].as_u64(),
        "the restarted agent took over the queue: {resumed}"
    );
    tokio::time::sleep(Duration::from_secs(120).saturating_sub(outage.elapsed())).await;
    receiver.resume();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = export_status(&agent).await;
        if status["queue_samples"].as_u64() < Some(2000) && status["last_success"].is_u64() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue never drained: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = receiver.wait_for(selector, 600, 100).await;
    let timestamps: Vec<i64> = samples.iter().map(|(at, _)| *at).collect();
    assert!(
        timestamps.windows(2).all(|pair| pair[0] < pair[1]),
        "in order"
    );
    let outage_start = timestamps[0];
    for pair in timestamps.windows(2) {
        let gap = pair[1] - pair[0];
        let spans_the_kill = pair[0] <= killed_at && pair[1] >= killed_at - 2000;
        if spans_the_kill {
            assert!(
                pair[1] <= restarted_at + 2000,
                "samples resumed {} ms after the restart",
                pair[1] - restarted_at
            );
        } else {
            // Node cycles are 1 s apart, stamped in whole seconds.
            assert!(
                gap <= 2000,
                "a {gap} ms gap at {} (outage began after {outage_start})",
                pair[0]
            );
        }
    }
    let status = export_status(&agent).await;
    assert_eq!(status["samples_dropped"]["rejected"], 0, "{status}");
    assert_eq!(status["samples_dropped"]["queue_full"], 0, "{status}");
}

/// No receiver and a 64 KiB budget: the queue stays within it, the oldest samples
/// are dropped and counted, and the agent's memory does not grow.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_budget_drops_the_oldest_samples_and_counts_them() {
    let storage = tempfile::tempdir().expect("storage");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("port");
    let budget = 64 << 10;
    let agent = Agent::start(&agent_config(
        storage.path(),
        &format!("http://{closed}/api/v1/write"),
        &format!("queue_max_bytes = {budget}\n"),
    ));
    agent.wait_for_cycles(1).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rss_at_first_drop = None;
    loop {
        let status = export_status(&agent).await;
        let dropped = status["samples_dropped"]["queue_full"]
            .as_u64()
            .unwrap_or(0);
        let bytes = status["queue_bytes"].as_u64().expect("queue_bytes");
        let on_disk: u64 = std::fs::read_dir(storage.path().join("remote_write/central"))
            .expect("queue dir")
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .map(|metadata| metadata.len())
            .sum();
        // One record (a tick's samples) may overshoot before the oldest segment goes.
        assert!(
            bytes <= budget + (32 << 10),
            "{bytes} queued bytes: {status}"
        );
        assert!(on_disk <= budget + (33 << 10), "{on_disk} bytes on disk");
        if dropped > 0 {
            let rss = rss_kib(agent.pid());
            match rss_at_first_drop {
                None => rss_at_first_drop = Some((rss, Instant::now())),
                Some((first, since)) if since.elapsed() > Duration::from_secs(20) => {
                    assert!(
                        rss < first + (8 << 10),
                        "RSS grew from {first} to {rss} KiB"
                    );
                    assert!(
                        status["samples_queued"].as_u64()
                            >= Some(dropped + status["queue_samples"].as_u64().unwrap_or(0)),
                        "{status}"
                    );
                    break;
                }
                Some(_) => {}
            }
        }
        assert!(Instant::now() < deadline, "never dropped: {status}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The queue's last segment damaged in the middle and torn at the end while the
/// agent is down: the restarted agent reports the damage, and the receiver gets
/// every intact sample from before.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_queue_is_recovered_and_reported() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut receiver = Receiver::start(Kind::Prometheus, data.path());
    receiver.stop();
    let storage = tempfile::tempdir().expect("storage");
    let config = agent_config(storage.path(), &receiver.write_url(), "");
    let mut agent = Agent::start(&config);
    agent.wait_for_cycles(1).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let before = horcrux_agent::clock::unix_seconds() as i64 * 1000;
    assert!(agent.exit_on(nix::sys::signal::Signal::SIGKILL).is_some());
    let dir = storage.path().join("remote_write/central");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("queue dir")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment");
    let mut bytes = std::fs::read(last).expect("segment");
    assert!(bytes.len() > 20_000, "{} bytes queued", bytes.len());
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 16] {
        *byte ^= 0x5a;
    }
    bytes.truncate(bytes.len() - 100);
    std::fs::write(last, &bytes).expect("damage");
    receiver.resume();
    let agent = Agent::start(&config);
    agent.wait_for_cycles(1).await;
    let status = export_status(&agent).await;
    assert!(status["corrupt_bytes"].as_u64() > Some(100), "{status}");
    assert!(
        status["last_error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("damaged")),
        "{status}"
    );
    let metrics = agent.text("/metrics").await;
    assert!(
        metrics.contains(
            "horcrux_export_queue_corrupt_bytes_total{protocol=\"remote_write\",target=\"central\"}"
        ),
        "exported"
    );
    let samples = receiver.wait_for("horcrux_node_load1", 600, 10).await;
    let from_before = samples.iter().filter(|(at, _)| *at < before).count();
    // 12 s at 1 s: two records lost to the damage (the flipped one, the torn one).
    assert!(
        from_before >= 8,
        "{from_before} samples from before the kill: {samples:?}"
    );
}

/// A scripted receiver: 503, then 429 with `Retry-After: 1`, then 400, then 204
/// for ever. Checks the protocol's headers and the agent's bearer token.
#[tokio::test(flavor = "multi_thread")]
async fn retries_5xx_and_429_and_counts_a_400_as_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (requests_tx, mut requests) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut served = 0usize;
        while let Ok((mut stream, _)) = listener.accept().await {
            let reply = match served {
                0 => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown",
                1 => {
                    "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 4\r\n\r\nslow"
                }
                2 => "HTTP/1.1 400 Bad Request\r\ncontent-length: 9\r\n\r\nmalformed",
                _ => "HTTP/1.1 204 No Content\r\n\r\n",
            };
            served += 1;
            let head = read_request_head(&mut stream).await;
            let _ = requests_tx.send(head);
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    let storage = tempfile::tempdir().expect("storage");
    let token = storage.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let agent = Agent::start(&agent_config(
        storage.path(),
        &format!("http://{address}/api/v1/write"),
        &format!("bearer_token_file = \"{}\"\n", token.display()),
    ));
    let head = tokio::time::timeout(Duration::from_secs(30), requests.recv())
        .await
        .expect("a request")
        .expect("head");
    for header in [
        "post /api/v1/write http/1.1",
        "content-encoding: snappy",
        "content-type: application/x-protobuf",
        "x-prometheus-remote-write-version: 0.1.0",
        "authorization: bearer s3cret",
    ] {
        assert!(
            head.to_ascii_lowercase().contains(header),
            "{header} in {head}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = export_status(&agent).await;
        let rejected = status["samples_dropped"]["rejected"].as_u64().unwrap_or(0);
        if rejected > 0 && status["samples_sent"].as_u64() > Some(0) {
            assert!(
                status["samples_retried"].as_u64() >= Some(2 * rejected),
                "{status}"
            );
            assert!(status["requests"].as_u64() >= Some(4), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = agent.text("/metrics").await;
    assert!(
        metrics.contains(
            "horcrux_export_samples_dropped_total{protocol=\"remote_write\",target=\"central\",reason=\"rejected\"}"
        ),
        "exported"
    );
}

/// The request line and headers, then the body (by content-length) read and dropped.
async fn read_request_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buffer.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
    let end = buffer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map_or(buffer.len(), |at| at + 4);
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = buffer.len() - end;
    while body < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => body += read,
        }
    }
    head
}
