//! `[[otlp]]` end-to-end: a receiver decodes the agent's OTLP/HTTP requests with
//! the official OpenTelemetry protobuf definitions (Python `opentelemetry-proto`,
//! installed by `cargo xtask setup` into `target/python`), and what it decoded is
//! checked against the agent's own `/metrics`: names, kinds (counter = cumulative
//! monotonic sum, gauge, histogram = cumulative explicit buckets), units, the
//! node's series and their attributes, histogram bounds and bucket counts.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::Agent;
use serde_json::Value;

struct Receiver {
    process: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Self {
        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/python");
        assert!(
            Path::new(python).join("opentelemetry").exists(),
            "opentelemetry-proto is not installed in {python}: `cargo xtask setup` installs it"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("port")
            .port();
        let out = dir.join("requests.jsonl");
        let process = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/otlp/receiver.py"
            ))
            .arg(port.to_string())
            .arg(&out)
            .env("PYTHONPATH", python)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the receiver");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the receiver never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { process, port, out }
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `/metrics`: family → (TYPE, series as name + sorted labels → value).
fn exposition(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    let mut types = BTreeMap::new();
    let mut series = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (key, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = key.split_once('{').unwrap_or((key, "}"));
            let mut pairs: Vec<&str> = labels
                .trim_end_matches('}')
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| pair.trim_end_matches('"'))
                .collect();
            pairs.sort_unstable();
            series.insert(
                format!("{name}{{{}}}", pairs.join(",")),
                value.parse().unwrap_or(f64::NAN),
            );
        }
    }
    (types, series)
}

/// An OTLP point's attributes as `/metrics` would print its labels (sorted).
fn labels(point: &Value) -> String {
    let mut pairs: Vec<String> = point["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            format!(
                "{}=\"{}",
                kv["key"].as_str().unwrap_or_default(),
                kv["value"]["string_value"].as_str().unwrap_or_default()
            )
        })
        .collect();
    pairs.sort_unstable();
    pairs.join(",")
}

fn number(point: &Value) -> f64 {
    point["as_double"]
        .as_f64()
        .or_else(|| point["as_int"].as_str()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_otlp_receiver_decodes_what_metrics_serves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start(dir.path());
    let agent = Agent::start(&format!(
        "[[otlp]]\nname = \"collector\"\nendpoint = \"http://127.0.0.1:{}/v1/metrics\"\ninterval = 1\n\
         resource_attributes = {{ \"deployment.environment\" = \"test\" }}\n",
        receiver.port
    ));
    agent.wait_for_cycles(3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.requests().len() < 2 {
        assert!(Instant::now() < deadline, "no OTLP requests arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let request = &receiver.requests()[0];
    assert_eq!(request["path"], "/v1/metrics");
    assert_eq!(request["content_type"], "application/x-protobuf");

    // The newest node metrics the receiver has, by name.
    let mut node: BTreeMap<String, Value> = BTreeMap::new();
    let mut resources = BTreeSet::new();
    for request in receiver.requests() {
        for resource in request["request"]["resource_metrics"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let attributes: BTreeMap<String, String> = resource["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap_or_default().to_owned(),
                        kv["value"]["string_value"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    )
                })
                .collect();
            resources.insert(format!("{attributes:?}"));
            assert_eq!(attributes["service.name"], "horcrux");
            assert_eq!(attributes["deployment.environment"], "test");
            assert_eq!(
                attributes["host.name"],
                horcrux_agent::collector::hostname()
            );
            for scope in resource["scope_metrics"].as_array().into_iter().flatten() {
                assert_eq!(scope["scope"]["name"], "horcrux");
                for metric in scope["metrics"].as_array().into_iter().flatten() {
                    let name = metric["name"].as_str().unwrap_or_default();
                    if name.starts_with("horcrux_node_") {
                        node.insert(name.to_owned(), metric.clone());
                    }
                }
            }
        }
    }
    assert_eq!(resources.len(), 1, "one resource: {resources:?}");

    let (types, series) = exposition(&agent.text("/metrics").await);
    let node_families: Vec<&String> = types
        .keys()
        .filter(|n| n.starts_with("horcrux_node_"))
        .collect();
    assert!(node_families.len() > 20, "{node_families:?}");
    let mut compared = 0;
    for family in node_families {
        let Some(metric) = node.get(family) else {
            // A family with no sample in /metrics has no OTLP metric either.
            assert!(
                !series
                    .keys()
                    .any(|key| key.starts_with(&format!("{family}{{"))),
                "{family} is in /metrics but never arrived over OTLP"
            );
            continue;
        };
        let unit = metric["unit"].as_str().unwrap_or_default();
        if family.ends_with("_seconds_total") || family.ends_with("_seconds") {
            assert_eq!(unit, "s", "{family}");
        }
        if family.ends_with("_bytes") || family.ends_with("_bytes_total") {
            assert_eq!(unit, "By", "{family}");
        }
        assert!(
            !metric["description"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
        let (points, expected_series): (&Vec<Value>, Vec<&String>) = match types[family].as_str() {
            "counter" => {
                let sum = &metric["sum"];
                assert_eq!(
                    sum["aggregation_temporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE",
                    "{family}"
                );
                assert_eq!(sum["is_monotonic"], true, "{family}");
                let points = sum["data_points"].as_array().expect("points");
                (
                    points,
                    series
                        .keys()
                        .filter(|k| k.starts_with(&format!("{family}{{")))
                        .collect(),
                )
            }
            "gauge" => {
                let points = metric["gauge"]["data_points"]
                    .as_array()
                    .expect("gauge points");
                (
                    points,
                    series
                        .keys()
                        .filter(|k| k.starts_with(&format!("{family}{{")))
                        .collect(),
                )
            }
            "histogram" => {
                let histogram = &metric["histogram"];
                assert_eq!(
                    histogram["aggregation_temporality"],
                    "AGGREGATION_TEMPORALITY_CUMULATIVE"
                );
                let points = histogram["data_points"]
                    .as_array()
                    .expect("histogram points");
                for point in points {
                    // /metrics' `le` bounds, in order, are OTLP's explicit bounds;
                    // its cumulative buckets are OTLP's per-bucket counts summed.
                    let bounds: Vec<f64> = point["explicit_bounds"]
                        .as_array()
                        .expect("bounds")
                        .iter()
                        .filter_map(Value::as_f64)
                        .collect();
                    let counts: Vec<u64> = point["bucket_counts"]
                        .as_array()
                        .expect("counts")
                        .iter()
                        .filter_map(|c| c.as_str()?.parse().ok())
                        .collect();
                    assert_eq!(counts.len(), bounds.len() + 1, "{family}");
                    let total: u64 = point["count"]
                        .as_str()
                        .and_then(|c| c.parse().ok())
                        .expect("count");
                    assert_eq!(counts.iter().sum::<u64>(), total, "{family}");
                    let prefix = format!("{family}_bucket{{");
                    let mut exposed: Vec<f64> = series
                        .keys()
                        .filter(|key| key.starts_with(&prefix) && !key.contains("+Inf"))
                        .filter_map(|key| {
                            let at = key.find("le=\"")? + 4;
                            key[at..].split([',', '}']).next()?.parse().ok()
                        })
                        .collect();
                    exposed.sort_by(f64::total_cmp);
                    exposed.dedup();
                    assert_eq!(bounds, exposed, "{family}: OTLP bounds = /metrics le");
                }
                let count_series = series
                    .keys()
                    .filter(|k| k.starts_with(&format!("{family}_count{{")))
                    .collect();
                (points, count_series)
            }
            other => panic!("{family}: TYPE {other}"),
        };
        // The same series, with the same attributes as /metrics' labels.
        let otlp: BTreeSet<String> = points.iter().map(labels).collect();
        let exposed: BTreeSet<String> = expected_series
            .iter()
            .map(|key| {
                let inner = &key[key.find('{').map_or(0, |at| at + 1)..key.len() - 1];
                inner.to_owned()
            })
            .collect();
        assert_eq!(otlp, exposed, "{family}: series");
        compared += 1;
    }
    assert!(compared > 20, "{compared} families compared");

    // A constant: the node's memory total, exactly as /metrics has it.
    let total = &node["horcrux_node_memory_total_bytes"]["gauge"]["data_points"][0];
    assert_eq!(number(total), series["horcrux_node_memory_total_bytes{}"]);
    let status = agent.get("/api/status").await.1;
    let export = &status["exports"][0];
    assert_eq!(export["protocol"], "otlp", "{status}");
    assert!(export["samples_sent"].as_u64() > Some(100), "{export}");
    assert_eq!(export["samples_dropped"]["rejected"], 0, "{export}");
}
