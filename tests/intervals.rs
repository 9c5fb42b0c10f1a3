//! Interval figures with the node and container collectors on different intervals:
//! each samples the eBPF maps at the start of its own cycle, so a container's
//! rates and p99 cover the container interval whatever the node's. Before, the
//! container collector reused the node cycle's eBPF read: with a 5 s node interval
//! and a 1 s container interval, four cycles in five showed 0 B/s and a `null` p99.

mod common;

use std::time::Instant;

use common::{Agent, wait_for_message};
use horcrux_test_support::cgroup::TestCgroup;
use serde_json::Value;
use tokio_tungstenite::connect_async;

const MIB: f64 = 1024.0 * 1024.0;
/// The writer's pace: 16 writes of 1 MiB a second.
const CHUNKS_PER_SECOND: u32 = 16;

/// Writes 1 MiB with O_DIRECT every 1/16 s, paced on the monotonic clock, cycling
/// over a 16 MiB file: a steady 16 MiB/s to the disk.
const WRITER: &str = r#"
import mmap, os, sys, time
chunk = 1 << 20
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
os.posix_fallocate(fd, 0, 16 * chunk)
buffer = mmap.mmap(-1, chunk)
start = time.monotonic()
written = 0
while True:
    os.pwrite(fd, buffer, (written % 16) * chunk)
    written += 1
    delay = start + written / CHUNKS - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"#;

/// `write_bytes` of `/proc/<pid>/io`: what the writer submitted, as the kernel counts it.
fn submitted_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/<pid>/io");
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))
        .and_then(|value| value.trim().parse().ok())
        .expect("write_bytes")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: loads eBPF programs and creates cgroups"]
async fn container_rates_cover_every_container_cycle_with_a_slower_node_interval() {
    let agent = Agent::start_with_node_interval("[monitoring]\nvm_metrics_interval = 1\n", 5);
    agent.wait_ready().await;
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir on a real disk");
    let script = dir.path().join("writer.py");
    std::fs::write(
        &script,
        WRITER.replace("CHUNKS", &CHUNKS_PER_SECOND.to_string()),
    )
    .expect("writer script");
    let target = dir.path().join("steady.bin");
    let mut cgroup = TestCgroup::new();
    let pid = cgroup.run(
        &format!("exec python3 \"$PROGRAM\" {}", target.display()),
        &script.display().to_string(),
    );
    let id = cgroup.id.clone();
    let (mut socket, _) = connect_async(agent.ws_url()).await.expect("WebSocket");
    // Two container cycles with the writer running: the second has a rate.
    for _ in 0..2 {
        wait_for_message(&mut socket, |m| {
            m["type"] == "VmMetrics" && m["vm_id"] == id
        })
        .await;
    }

    // Ten container cycles: two node cycles and more.
    let (started, submitted_before) = (Instant::now(), submitted_bytes(pid));
    let mut cycles: Vec<(u64, Option<f64>, Value)> = Vec::new();
    while cycles.len() < 10 {
        let message = wait_for_message(&mut socket, |m| {
            m["type"] == "VmMetrics" && m["vm_id"] == id
        })
        .await;
        let (status, metrics) = agent.get(&format!("/api/containers/{id}/metrics")).await;
        assert_eq!(status, 200, "{metrics}");
        if metrics["timestamp"] != message["timestamp"] {
            continue; // the next cycle was published in between: take the next one
        }
        cycles.push((
            metrics["timestamp"].as_u64().unwrap_or(0),
            metrics["block_io"]["write_bytes_per_second"].as_f64(),
            metrics["ebpf"]["blkio"]["latency_p99_us"].clone(),
        ));
    }
    let true_rate =
        (submitted_bytes(pid) - submitted_before) as f64 / started.elapsed().as_secs_f64();
    let nominal = f64::from(CHUNKS_PER_SECOND) * MIB;
    assert!(
        (true_rate - nominal).abs() <= nominal * 0.15,
        "the writer did not keep its pace: {:.1} MiB/s",
        true_rate / MIB
    );
    let (_, status) = agent.get("/api/status").await;
    let node_cycles = status["collectors"]["node"]["cycles"].as_u64().unwrap_or(0);
    let ebpf = status["ebpf"]["attached_programs"].as_u64() > Some(0);
    for (timestamp, rate, p99) in &cycles {
        let rate = rate.unwrap_or_else(|| panic!("no rate at {timestamp}: {cycles:?}"));
        assert!(
            (rate - true_rate).abs() <= true_rate * 0.30,
            "cycle {timestamp}: {:.1} MiB/s, the writer {:.1} MiB/s (node cycles {node_cycles}): {cycles:?}",
            rate / MIB,
            true_rate / MIB
        );
        if ebpf {
            assert!(p99.is_u64(), "cycle {timestamp}: p99 {p99}: {cycles:?}");
        }
    }
    eprintln!(
        "writer {:.1} MiB/s; container cycles (MiB/s): {:?}",
        true_rate / MIB,
        cycles
            .iter()
            .map(|(_, rate, _)| (rate.unwrap_or(0.0) / MIB * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    drop(cgroup);
}
