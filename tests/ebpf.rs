//! eBPF end to end, through the real agent binary (root: CAP_BPF, CAP_PERFMON and
//! creating cgroups): every program attaches without tracefs (tp_btf attaches
//! through BTF), and a container's own I/O and scheduling come back in its REST
//! metrics, its `VmMetrics` WebSocket message and Prometheus histograms. The
//! attribution itself is checked against kernel counters in
//! `tests/ebpf_live.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, wait_for_message};
use horcrux_test_support::cgroup::{TestCgroup, hierarchies};
use serde_json::Value;
use tokio_tungstenite::connect_async;

const TRACEFS: &str = "/sys/kernel/tracing";
const MIB: u64 = 1 << 20;

/// Checks a histogram's shape: µs, power-of-two bounds, cumulative counts.
fn check_histogram(what: &str, histogram: &Value) {
    assert_eq!(histogram["unit"], "us", "{what}: {histogram}");
    let count = histogram["count"].as_u64().expect("count");
    assert!(histogram["sum"].as_f64().is_some(), "{what}: sum");
    let buckets = histogram["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 27, "{what}: 1 µs … 2^26 µs");
    let mut previous = 0;
    for (index, bucket) in buckets.iter().enumerate() {
        assert_eq!(
            bucket["le"].as_u64(),
            Some(1 << index),
            "{what}: bound {index}"
        );
        let cumulative = bucket["count"].as_u64().expect("bucket count");
        assert!(cumulative >= previous, "{what}: buckets are cumulative");
        previous = cumulative;
    }
    assert!(
        previous <= count,
        "{what}: the last bound holds at most every sample"
    );
}

/// Polls the container's metrics until `ready` accepts them (20 s at most).
async fn container_metrics(agent: &Agent, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, metrics) = agent.get(&format!("/api/containers/{id}/metrics")).await;
        if status == 200 && ready(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "container metrics never ready: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: loads eBPF programs and creates cgroups"]
async fn programs_attach_without_tracefs_and_report_per_container() {
    // tp_btf programs need no tracefs: take it away (if nothing holds it) to prove it.
    let _ = nix::mount::umount(TRACEFS);
    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 1\n");
    let status = agent.wait_for_cycles(1).await;
    let ebpf = &status["ebpf"];
    assert_eq!(
        ebpf["embedded"], true,
        "the agent was built without eBPF programs: run `cargo xtask setup` and rebuild"
    );
    let programs = ebpf["programs"].as_array().expect("programs");
    let names: Vec<&str> = programs.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "sched_wakeup",
            "sched_wakeup_new",
            "sched_switch",
            "block_rq_issue",
            "block_rq_complete",
            "writeback_dirty_folio",
            "writeback_rq_issue",
            "mark_victim"
        ]
    );
    for program in programs {
        assert_eq!(program["state"], "attached", "{program}");
        assert!(
            program["attach_point"]
                .as_str()
                .is_some_and(|point| point.starts_with("tp_btf/"))
        );
    }
    assert_eq!(ebpf["attached_programs"], 8);
    let maps = ebpf["maps"].as_array().expect("maps");
    assert_eq!(maps.len(), 4, "{maps:?}");
    for map in maps {
        assert!(
            map["max_entries"].as_u64() > Some(0)
                && map["entries"].as_u64() <= map["max_entries"].as_u64(),
            "{map}"
        );
    }

    // With the kernel's BPF statistics on, each program's runs and run time show.
    const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let stats_before = std::fs::read_to_string(BPF_STATS).expect("bpf_stats_enabled");
    std::fs::write(BPF_STATS, "1").expect("enable BPF statistics");
    agent
        .wait_for_cycles(status["collectors"]["node"]["cycles"].as_u64().unwrap_or(0) + 2)
        .await;
    let (_, with_stats) = agent.get("/api/status").await;
    std::fs::write(BPF_STATS, stats_before.trim()).expect("restore BPF statistics");
    let switch = &with_stats["ebpf"]["programs"][2];
    assert_eq!(switch["name"], "sched_switch");
    assert!(switch["run_count"].as_u64() > Some(0), "{switch}");
    assert!(switch["run_time_ns"].as_u64() > Some(0), "{switch}");
    // Nothing lost to full maps or failed reads. Completions without a recorded
    // issue (issued before attach) or unseen by the programs are counted, not lost;
    // so are switches the kernel ran no program for.
    let events = ebpf["events"].as_object().expect("events");
    for (event, count) in events {
        if !event.starts_with("completion_") && event != "switch_unseen" {
            assert_eq!(count, 0, "{event}: {}", ebpf["events"]);
        }
    }
    assert!(
        events.contains_key("completion_missed"),
        "{}",
        ebpf["events"]
    );
    assert!(ebpf["sched_cgroups"].is_string() && ebpf["block_cgroups"].is_string());

    let (mut socket, _) = connect_async(agent.ws_url()).await.expect("WebSocket");
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir on a real disk");
    let mut cgroup = TestCgroup::new();
    cgroup.run(
        "fallocate -l 16M \"$PROGRAM\" && \
         dd if=/dev/zero of=\"$PROGRAM\" bs=1M count=16 oflag=direct conv=notrunc status=none; \
         exec sleep 120",
        &dir.path().join("direct.bin").display().to_string(),
    );
    let id = cgroup.id.clone();
    let written = |metrics: &Value| {
        metrics["ebpf"]["blkio"]["write_bytes"]
            .as_u64()
            .unwrap_or(0)
    };
    let metrics = container_metrics(&agent, &id, |m| written(m) >= 16 * MIB).await;

    let sched = &metrics["ebpf"]["sched"];
    check_histogram("runq_latency", &sched["runq_latency"]);
    assert!(sched["voluntary_switches"].as_u64() > Some(0), "{sched}");
    assert!(sched["oncpu_ns"].as_u64() > Some(0), "{sched}");
    let blkio = &metrics["ebpf"]["blkio"];
    check_histogram("blkio latency", &blkio["latency"]);
    let expected = 16 * MIB;
    assert!(
        written(&metrics).abs_diff(expected) * 100 <= expected,
        "{blkio}"
    );
    assert!(blkio["write_ops"].as_u64() >= Some(16), "{blkio}");
    let device = &blkio["devices"][0];
    assert!(
        device["device"].is_string() && device["major"].is_u64(),
        "{device}"
    );
    check_histogram("device latency", &device["latency"]);
    // Direct I/O from a user buffer is the block family's only: no page cache of the
    // container's was dirtied or written back.
    for owned in ["writeback_bytes", "dirtied_bytes"] {
        let bytes = blkio[owned]
            .as_u64()
            .expect("the writeback family's figures");
        assert!(bytes < MIB, "{owned}: {bytes} for an O_DIRECT writer");
    }

    // On v1 blkio without a throttle rule the kernel counts nothing: eBPF fills in.
    if hierarchies().v1.contains_key("blkio") {
        assert_eq!(
            metrics["block_io"]["source"], "ebpf",
            "{}",
            metrics["block_io"]
        );
        assert_eq!(
            metrics["block_write_bytes"].as_u64(),
            Some(written(&metrics))
        );
    }

    let (_, node) = agent.get("/api/monitoring/node/metrics").await;
    let node_written = node["ebpf"]["blkio"]["write_bytes"]
        .as_u64()
        .expect("node totals");
    assert!(
        node_written >= written(&metrics),
        "node {node_written} < container"
    );
    check_histogram("node runq_latency", &node["ebpf"]["sched"]["runq_latency"]);

    let vm_metrics = wait_for_message(&mut socket, |message| {
        message["type"] == "VmMetrics" && message["vm_id"] == id
    })
    .await;
    for field in ["runq_latency_p99_us", "block_latency_p99_us"] {
        assert!(
            vm_metrics.get(field).is_some(),
            "VmMetrics lacks {field}: {vm_metrics}"
        );
    }

    let text = agent.text("/metrics").await;
    for family in [
        "horcrux_node_runqueue_latency_seconds_bucket{le=\"+Inf\"}",
        "horcrux_node_block_io_latency_seconds_count{device=",
        "horcrux_node_sched_switches_total{kind=\"voluntary\"}",
        "horcrux_node_block_writeback_bytes_total{device=",
        "horcrux_node_page_cache_dirtied_bytes_total ",
        "# TYPE horcrux_container_oom_kills_total counter",
        "horcrux_agent_ebpf_map_max_entries{map=\"SCHED\"}",
    ] {
        assert!(text.contains(family), "/metrics lacks {family}");
    }
    // Cumulative counters: the exposition, rendered later, holds at least what the
    // JSON showed.
    // Summed over the matching samples (one per disk for the byte counters).
    let sample = |prefix: &str, label: &str| -> u64 {
        let values: Vec<u64> = text
            .lines()
            .filter(|line| line.starts_with(prefix) && line.contains(&id) && line.contains(label))
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(
            !values.is_empty(),
            "no {prefix}…{label} sample for the container"
        );
        values.iter().sum()
    };
    let runq_count = metrics["ebpf"]["sched"]["runq_latency"]["count"]
        .as_u64()
        .expect("count");
    let inf_bucket = sample(
        "horcrux_container_runqueue_latency_seconds_bucket{",
        "le=\"+Inf\"",
    );
    assert!(
        inf_bucket >= runq_count,
        "+Inf {inf_bucket} < JSON count {runq_count}"
    );
    let written_sample = sample(
        "horcrux_container_block_request_bytes_total{",
        "op=\"write\"",
    );
    assert!(
        written_sample >= written(&metrics),
        "written bytes {written_sample} < JSON {}",
        written(&metrics)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs the agent as another user"]
async fn without_privileges_each_program_says_why_and_the_rest_runs() {
    let agent = Agent::start_unprivileged("");
    let status = agent.wait_for_cycles(2).await;
    let ebpf = &status["ebpf"];
    assert_eq!(ebpf["attached_programs"], 0, "{ebpf}");
    for program in ebpf["programs"].as_array().expect("programs") {
        assert_eq!(program["state"], "failed", "{program}");
        let error = program["error"].as_str().expect("a reason");
        assert!(
            error.contains("ermi"),
            "names the missing permission: {error}"
        );
    }
    let (status, node) = agent.get("/api/monitoring/node/metrics").await;
    assert_eq!(status, 200);
    assert!(node["cpu_usage"].is_number() && node["memory"]["total_bytes"].is_u64());
    assert_eq!(
        node["ebpf"],
        Value::Null,
        "no eBPF figures without the programs"
    );
}
