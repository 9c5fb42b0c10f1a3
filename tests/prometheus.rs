//! `GET /metrics` end-to-end: `promtool check metrics` accepts the live output (and,
//! as root, with a container present, so container families have samples), and a
//! real Prometheus on loopback scrapes the agent and answers PromQL queries with the
//! kernel's numbers and every query of the Grafana dashboard.

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Agent, PROMTOOL, promtool_check};
use horcrux_test_support::cgroup::TestCgroup;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn require_prometheus() {
    assert!(
        Path::new(PROMTOOL).exists() && Path::new(PROMETHEUS).exists(),
        "Debian `prometheus` is not installed: `cargo xtask setup` installs it"
    );
}

async fn exposition(agent: &Agent) -> String {
    let response = reqwest::get(agent.url("/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.expect("body")
}

fn mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("MemTotal");
    kib * 1024
}

/// The exposition of a fresh agent after two node cycles and a container cycle.
async fn live_exposition() -> String {
    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 1\n");
    agent.wait_for_cycles(2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    exposition(&agent).await
}

#[tokio::test(flavor = "multi_thread")]
async fn promtool_accepts_the_live_exposition() {
    require_prometheus();
    let text = live_exposition().await;
    promtool_check(&text);
    assert!(text.contains(&format!(
        "horcrux_node_memory_total_bytes {}\n",
        mem_total_bytes()
    )));
    assert!(text.contains("horcrux_node_cpu_seconds_total{cpu=\"0\",mode=\"user\"}"));
    assert!(text.contains("horcrux_agent_collector_cycles_total{collector=\"node\"}"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: creates cgroups"]
async fn promtool_accepts_the_container_families() {
    require_prometheus();
    let mut cgroup = TestCgroup::new();
    cgroup.run("exec sleep 60", "");
    let text = live_exposition().await;
    promtool_check(&text);
    let info = format!(
        "horcrux_container_info{{id=\"{}\",name=\"\",runtime=\"docker\",state=\"running\"",
        cgroup.id
    );
    assert!(text.contains(&info), "container {} not exported", cgroup.id);
    assert!(text.contains(&format!(
        "horcrux_container_cpu_usage_seconds_total{{id=\"{}\"",
        cgroup.id
    )));
}

/// The server is stopped before its data directory is removed (fields drop after `drop`).
struct Prometheus {
    process: Child,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Prometheus' whole answer to an instant query (`Null` while it is not up).
async fn evaluate(port: u16, promql: &str) -> Value {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let Ok(response) = reqwest::Client::new()
        .get(url)
        .query(&[("query", promql)])
        .send()
        .await
    else {
        return Value::Null;
    };
    response.json().await.unwrap_or_default()
}

async fn query(port: u16, promql: &str) -> Vec<Value> {
    evaluate(port, promql).await["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every query of the shipped Grafana dashboard, its variables set as Grafana
/// would for this agent and all containers and VMs.
fn grafana_queries(instance: &str) -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../grafana/horcrux-dashboard.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("grafana dashboard"))
            .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .map(|expr| {
            expr.replace("$instance", instance)
                .replace("$container", ".*")
                .replace("$vm", ".*")
                .replace("$__rate_interval", "4s")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_agent() {
    require_prometheus();
    let agent = Agent::start("");
    agent.wait_for_cycles(1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: horcrux\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
    )
    .expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _prometheus = Prometheus {
        process: child,
        _data: dir,
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let memory = loop {
        let result = query(port, "horcrux_node_memory_total_bytes{job=\"horcrux\"}").await;
        if let Some(sample) = result.first() {
            break sample["value"][1]
                .as_str()
                .expect("value")
                .parse::<u64>()
                .expect("integer");
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had the agent's series"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(memory, mem_total_bytes());
    let up = query(port, "up{job=\"horcrux\"}").await;
    assert_eq!(
        up.first().map(|sample| sample["value"][1].clone()),
        Some(Value::from("1"))
    );
    let cpus = query(
        port,
        "count(count by (cpu) (horcrux_node_cpu_seconds_total))",
    )
    .await;
    let expected = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .to_string();
    assert_eq!(
        cpus.first().map(|sample| sample["value"][1].clone()),
        Some(Value::from(expected))
    );
    let queries = grafana_queries(&agent.addr.to_string());
    assert!(queries.len() > 20, "{} dashboard queries", queries.len());
    // The node panels have data once a rate has two samples in its window.
    let deadline = Instant::now() + Duration::from_secs(20);
    for promql in queries {
        let node_only = !promql.contains("horcrux_container_")
            && !promql.contains("horcrux_vm_")
            && !promql.contains("horcrux_oom_");
        loop {
            let answer = evaluate(port, &promql).await;
            assert_eq!(answer["status"], "success", "{promql}: {answer}");
            let has_data = answer["data"]["result"]
                .as_array()
                .is_some_and(|result| !result.is_empty());
            if has_data || !node_only {
                break;
            }
            assert!(Instant::now() < deadline, "no data for {promql}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
