//! End-to-end: the real agent binary on an ephemeral port with a 1 s interval,
//! read over REST and WebSocket the way a user would.

mod common;

use std::time::{Duration, Instant};

use common::Agent;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::{connect_async, tungstenite::Message};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_node_metrics(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("valid frame");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON message");
            if value["type"] == "NodeMetrics" {
                return value;
            }
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .expect("hostname")
        .into_string()
        .expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn node_metrics_endpoint_has_the_spec_fields_and_detail() {
    let agent = Agent::start("");
    agent.wait_for_cycles(2).await;
    let (status, metrics) = agent.get("/api/monitoring/node/metrics").await;
    assert_eq!(status, 200);
    for field in [
        "cpu_usage",
        "memory_usage",
        "disk_usage",
        "load_average_1m",
        "load_average_5m",
        "load_average_15m",
    ] {
        let value = metrics[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} is a number: {metrics}"));
        assert!(value >= 0.0, "{field} = {value}");
    }
    for percent in ["cpu_usage", "memory_usage", "disk_usage"] {
        assert!(metrics[percent].as_f64() <= Some(100.0), "{percent}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let timestamp = metrics["timestamp"]
        .as_u64()
        .expect("timestamp in Unix seconds");
    assert!(
        now.abs_diff(timestamp) <= 5,
        "timestamp {timestamp} vs now {now}"
    );
    assert_eq!(metrics["hostname"], hostname());
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(
        metrics["cpu"]["per_cpu"].as_array().map(Vec::len),
        Some(cpus)
    );
    assert!(
        metrics["cpu"]["usage_percent"].is_number(),
        "second sample has a CPU rate"
    );
    assert!(metrics["memory"]["total_bytes"].as_u64() > Some(0));
    assert!(
        metrics["network"]
            .as_array()
            .is_some_and(|nets| nets.iter().any(|net| net["interface"] == "lo"))
    );
    assert!(
        metrics["disks"]
            .as_array()
            .is_some_and(|disks| !disks.is_empty())
    );
    assert!(
        metrics["filesystems"]
            .as_array()
            .is_some_and(|filesystems| filesystems.iter().any(|fs| fs["mount_point"] == "/"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_identity_health_and_ebpf() {
    let agent = Agent::start("");
    let status = agent.wait_for_cycles(1).await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["hostname"], hostname());
    assert!(
        ["v1", "v2", "hybrid", "none"].contains(&status["cgroup_mode"].as_str().expect("mode"))
    );
    let node = &status["collectors"]["node"];
    assert!(node["last_duration_ms"].as_f64() > Some(0.0));
    assert_eq!(node["error_count"], 0, "{node}");
    let programs = status["ebpf"]["programs"].as_array().expect("program list");
    assert!(!programs.is_empty());
    for program in programs {
        // Whatever the state, a program that is not attached says why.
        if program["state"] != "attached" {
            assert!(
                program["error"]
                    .as_str()
                    .is_some_and(|error| !error.is_empty()),
                "{program}"
            );
        }
    }
    let (code, body) = agent.get("/api/no/such/thing").await;
    assert_eq!(code, 404);
    assert!(body["error"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_streams_node_metrics_and_cpu_usage_rises_under_load() {
    let agent = Agent::start("");
    agent.wait_for_cycles(2).await;
    let (mut socket, _) = connect_async(agent.ws_url())
        .await
        .expect("WebSocket connects");
    let first = next_node_metrics(&mut socket).await;
    let second = next_node_metrics(&mut socket).await;
    for message in [&first, &second] {
        assert_eq!(message["node_id"], hostname());
        assert_eq!(message["load_averages"].as_array().map(Vec::len), Some(3));
        for field in ["cpu_usage", "memory_usage", "disk_usage"] {
            assert!(message[field].is_number(), "{field}: {message}");
        }
    }
    assert!(
        second["timestamp"].as_u64() > first["timestamp"].as_u64(),
        "a new sample each second"
    );

    // Keep every CPU busy; the agent must see it within a few samples.
    let burner = common::CpuBurner::start();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut highest = 0.0_f64;
    while Instant::now() < deadline && highest < 80.0 {
        highest = highest.max(
            next_node_metrics(&mut socket).await["cpu_usage"]
                .as_f64()
                .unwrap_or(0.0),
        );
    }
    drop(burner);
    assert!(
        highest >= 80.0,
        "cpu_usage peaked at {highest}% with all CPUs busy"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn extra_websocket_clients_are_refused_with_503() {
    let agent = Agent::start("[monitoring]\nmax_ws_clients = 2\n");
    agent.wait_for_cycles(1).await;
    let (mut first, _) = connect_async(agent.ws_url()).await.expect("client 1");
    let (_second, _) = connect_async(agent.ws_url()).await.expect("client 2");
    match connect_async(agent.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
        }
        other => panic!("third client should be refused, got {other:?}"),
    }
    let (_, status) = agent.get("/api/status").await;
    assert_eq!(status["websocket"]["clients"], 2);
    assert_eq!(status["websocket"]["max_clients"], 2);
    // A client that leaves frees its place.
    first.close(None).await.expect("close");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if connect_async(agent.ws_url()).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "place not freed after a client left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_does_not_delay_collection_or_others() {
    let agent = Agent::start("");
    agent.wait_for_cycles(1).await;
    // Connects, then never reads. (At one small message a second it cannot fill a
    // loopback socket buffer within a test; the collector only ever does a
    // non-blocking broadcast send, which is what keeps a full buffer harmless.)
    let (_idle, _) = connect_async(agent.ws_url()).await.expect("idle client");
    let (mut reader, _) = connect_async(agent.ws_url()).await.expect("reader");
    let before = agent.wait_for_cycles(1).await["collectors"]["node"]["cycles"]
        .as_u64()
        .unwrap_or(0);
    let mut timestamps = Vec::new();
    for _ in 0..4 {
        timestamps.push(
            next_node_metrics(&mut reader).await["timestamp"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    let after = agent.wait_for_cycles(before + 3).await["collectors"]["node"]["cycles"]
        .as_u64()
        .unwrap_or(0);
    assert!(after >= before + 3, "collection kept its 1 s schedule");
    assert!(timestamps.windows(2).all(|pair| pair[1] >= pair[0]));
}

#[tokio::test(flavor = "multi_thread")]
async fn terminates_cleanly_on_sigterm() {
    let mut agent = Agent::start("");
    agent.wait_for_cycles(1).await;
    assert!(agent.terminate(), "exit status 0 after SIGTERM");
}

/// `kill -SEGV` (`systemctl kill -s SEGV`) crashes the agent as it would a C daemon,
/// so its supervisor restarts it; Rust's stack-overflow handler alone would let it
/// run on after the first one.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigsegv_sent_to_the_agent_crashes_it() {
    use std::os::unix::process::ExitStatusExt;
    // No core file in the checkout: the agent inherits a zero core size.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE)
        .expect("RLIMIT_CORE");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, hard)
        .expect("no core files");
    let mut agent = Agent::start("");
    agent.wait_for_cycles(1).await;
    let status = agent.exit_on(nix::sys::signal::Signal::SIGSEGV);
    assert_eq!(
        status.and_then(|status| status.signal()),
        Some(libc::SIGSEGV),
        "{status:?}"
    );
}

#[test]
fn bad_config_stops_start_up_naming_key_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            "[monitoring]\nnode_metrics_interval = 0\n",
            "monitoring.node_metrics_interval",
            "line 2",
        ),
        (
            "[monitoring]\n\nvm_interval = 10\n",
            "vm_interval",
            "line 3",
        ),
        (
            "[monitoring]\nenable_history = \"yes\"\n",
            "enable_history",
            "line 2",
        ),
    ];
    for (text, key, line) in cases {
        let path = dir.path().join("horcrux.toml");
        std::fs::write(&path, text).expect("write config");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_horcrux-agent"))
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .expect("run agent");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(line),
            "{key} / {line} not in: {stderr}"
        );
    }
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_horcrux-agent"))
        .args(["--config", "/nonexistent/horcrux.toml"])
        .output()
        .expect("run agent");
    assert_eq!(missing.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn history_serves_raw_and_downsampled_points() {
    let agent = Agent::start("[monitoring]\nenable_history = true\nhistory_retention = 3600\n");
    agent.wait_for_cycles(4).await;
    let (status, raw) = agent
        .get("/api/monitoring/node/history?metric=memory_usage&range=60")
        .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(raw["metric"], "memory_usage");
    let points = raw["points"].as_array().expect("points");
    assert!(points.len() >= 3, "{raw}");
    let timestamps: Vec<u64> = points
        .iter()
        .filter_map(|p| p["timestamp"].as_u64())
        .collect();
    assert!(
        timestamps.windows(2).all(|pair| pair[0] < pair[1]),
        "ascending: {timestamps:?}"
    );
    assert!(points.iter().all(|p| {
        p["value"]
            .as_f64()
            .is_some_and(|v| (0.0..=100.0).contains(&v))
    }));

    let (_, coarse) = agent
        .get("/api/monitoring/node/history?metric=load_average_1m&range=600&step=300")
        .await;
    let coarse = coarse["points"].as_array().expect("points").clone();
    assert!(!coarse.is_empty() && coarse.len() <= 3);
    for point in &coarse {
        let (min, avg, max) = (
            point["min"].as_f64(),
            point["avg"].as_f64(),
            point["max"].as_f64(),
        );
        assert!(min <= avg && avg <= max && min.is_some(), "{point}");
    }

    let (status, body) = agent
        .get("/api/monitoring/node/history?metric=nonsense")
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("cpu_usage") && e.contains("memory_usage")),
        "{body}"
    );
    let (status, _) = agent
        .get("/api/monitoring/node/history?metric=cpu_usage&range=999999")
        .await;
    assert_eq!(status, 400, "range beyond retention");

    let disabled = Agent::start("");
    disabled.wait_for_cycles(1).await;
    let (status, body) = disabled
        .get("/api/monitoring/node/history?metric=cpu_usage")
        .await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("enable_history"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_rules_fire_over_websocket_and_are_listed() {
    // Memory use is always above 0%: fires on the first cycle.
    let agent = Agent::start(
        "[[alerts]]\nname = \"memory-in-use\"\nmetric = \"memory_usage\"\nop = \">\"\nthreshold = 0\nfor = 0\nseverity = \"info\"\n\
         [[alerts]]\nname = \"never\"\nmetric = \"load_average_1m\"\nop = \">\"\nthreshold = 1e9\nfor = 5\n",
    );
    agent.wait_for_cycles(1).await;
    let (mut socket, _) = connect_async(agent.ws_url()).await.expect("WebSocket");
    let deadline = Instant::now() + Duration::from_secs(15);
    let triggered = loop {
        assert!(Instant::now() < deadline, "no AlertTriggered");
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).expect("JSON");
        if value["type"] == "AlertTriggered" {
            break value;
        }
        // The alert may have fired before we connected: then it is listed as active.
        let (_, alerts) = agent.get("/api/alerts").await;
        if let Some(active) = alerts["active"]
            .as_array()
            .and_then(|active| active.first())
        {
            break active.clone();
        }
    };
    assert_eq!(triggered["rule"], "memory-in-use");
    assert_eq!(
        (&triggered["scope"], &triggered["target"]),
        (&Value::from("node"), &Value::from(hostname()))
    );
    assert_eq!(
        (
            &triggered["op"],
            &triggered["threshold"],
            &triggered["severity"]
        ),
        (&Value::from(">"), &Value::from(0.0), &Value::from("info"))
    );
    assert!(triggered["value"].as_f64() > Some(0.0));
    let (status, alerts) = agent.get("/api/alerts").await;
    assert_eq!(status, 200);
    assert_eq!(alerts["rules"].as_array().map(Vec::len), Some(2));
    let active = alerts["active"].as_array().expect("active");
    assert_eq!(
        active.len(),
        1,
        "only the rule whose condition holds: {alerts}"
    );
    assert_eq!(active[0]["rule"], "memory-in-use");
}
