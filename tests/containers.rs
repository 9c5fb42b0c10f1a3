//! End-to-end container tests (root): the real agent binary with a 1 s container
//! interval discovers container cgroups created by the test, serves them over REST
//! with id/prefix/name lookup, and announces them over the WebSocket.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, wait_for_message};
use horcrux_test_support::cgroup::TestCgroup;
use serde_json::Value;
use tokio_tungstenite::connect_async;

async fn listed(agent: &Agent, id: &str) -> bool {
    let (_, list) = agent.get("/api/containers").await;
    list["containers"]
        .as_array()
        .is_some_and(|containers| containers.iter().any(|container| container["id"] == id))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: creates cgroups"]
async fn containers_are_discovered_served_and_announced() {
    // Any container named like our test ids has memory >= 0: the rule fires when the
    // container appears and resolves when it is gone.
    let agent = Agent::start(
        "[monitoring]\nvm_metrics_interval = 1\nenable_history = true\n\
         [[alerts]]\nname = \"container-present\"\nscope = \"container\"\ntarget = \"*\"\n\
         metric = \"memory_usage_bytes\"\nop = \">=\"\nthreshold = 0\n",
    );
    agent.wait_for_cycles(1).await;
    let (mut socket, _) = connect_async(agent.ws_url()).await.expect("WebSocket");

    let mut cgroup = TestCgroup::new();
    cgroup.run("exec sleep 120", "");
    let id = cgroup.id.clone();
    let mut appeared = wait_for_message(&mut socket, |m| {
        m["type"] == "VmStatusChanged" && m["vm_id"] == id
    })
    .await;
    assert_eq!(appeared["old_status"], Value::Null);
    // A cycle can fall between the cgroup's mkdir and its first process joining:
    // then it really was empty for that cycle, and turns running at the next.
    if appeared["new_status"] == "empty" {
        appeared = wait_for_message(&mut socket, |m| {
            m["type"] == "VmStatusChanged" && m["vm_id"] == id
        })
        .await;
        assert_eq!(appeared["old_status"], "empty");
    }
    assert_eq!(appeared["new_status"], "running");
    assert_eq!(appeared["runtime"], "docker");
    let metrics_message = wait_for_message(&mut socket, |m| {
        m["type"] == "VmMetrics" && m["vm_id"] == id
    })
    .await;
    for field in [
        "cpu_usage",
        "memory_usage",
        "disk_read",
        "disk_write",
        "network_rx",
        "network_tx",
        "timestamp",
    ] {
        assert!(
            metrics_message.get(field).is_some(),
            "VmMetrics lacks {field}: {metrics_message}"
        );
    }

    assert!(listed(&agent, &id).await);
    let (status, metrics) = agent.get(&format!("/api/containers/{id}/metrics")).await;
    assert_eq!(status, 200, "{metrics}");
    for field in [
        "cpu_usage_percent",
        "memory_usage_bytes",
        "memory_limit_bytes",
        "block_read_bytes",
        "block_write_bytes",
        "network_rx_bytes",
        "network_tx_bytes",
    ] {
        assert!(
            metrics.get(field).is_some(),
            "spec field {field} missing: {metrics}"
        );
    }
    assert!(metrics["memory_usage_bytes"].is_u64());
    assert_eq!(metrics["memory_limit_bytes"], Value::Null, "no limit set");
    // v1 blkio counts nothing without a throttle rule; the eBPF block programs,
    // which charge each request to its bio's cgroup, fill in.
    assert_eq!(
        metrics["block_io"]["source"], "ebpf",
        "{}",
        metrics["block_io"]
    );
    assert!(metrics["block_write_bytes"].is_u64(), "{metrics}");
    assert_eq!(
        metrics["network_rx_bytes"],
        Value::Null,
        "host network namespace"
    );
    assert_eq!(metrics["cgroup"], format!("/docker/{id}"));
    let (status, history) = agent
        .get(&format!(
            "/api/containers/{}/history?metric=memory_usage_bytes&range=60",
            &id[..12]
        ))
        .await;
    assert_eq!(status, 200, "{history}");
    assert!(
        history["points"]
            .as_array()
            .is_some_and(|points| !points.is_empty()),
        "{history}"
    );

    let (status, by_prefix) = agent
        .get(&format!("/api/containers/{}/metrics", &id[..12]))
        .await;
    assert_eq!(
        (status, &by_prefix["id"]),
        (200, &Value::String(id.clone()))
    );
    let (status, body) = agent
        .get(&format!("/api/containers/{}/metrics", &id[..11]))
        .await;
    assert_eq!(status, 404, "11 digits is too short to be a prefix: {body}");
    assert!(body["error"].is_string());
    for malformed in ["bad%2Fid", "has%20space", "..%2F..%2Fetc"] {
        let (status, body) = agent
            .get(&format!("/api/containers/{malformed}/metrics"))
            .await;
        assert_eq!(status, 400, "{malformed}: {body}");
    }
    let (status, _) = agent
        .get(&format!("/api/containers/{}/metrics", "0".repeat(64)))
        .await;
    assert_eq!(status, 404);

    // A second container whose id shares the first 12 digits (and differs in the
    // 13th) makes that prefix ambiguous.
    let thirteenth = if id.as_bytes()[12] == b'0' { '1' } else { '0' };
    let twin_id = format!("{}{thirteenth}{}", &id[..12], "0".repeat(51));
    let twin = TestCgroup::with_id(twin_id.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listed(&agent, &twin_id).await {
        assert!(Instant::now() < deadline, "twin never listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = agent
        .get(&format!("/api/containers/{}/metrics", &id[..12]))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = agent
        .get(&format!("/api/containers/{}/metrics", &id[..13]))
        .await;
    assert_eq!(status, 200, "a longer prefix is unique again");
    let empty = wait_for_message(&mut socket, |m| {
        m["type"] == "VmStatusChanged" && m["vm_id"] == twin_id
    })
    .await;
    assert_eq!(empty["new_status"], "empty", "a cgroup without processes");

    drop(twin);
    drop(cgroup);
    let gone = wait_for_message(&mut socket, |m| {
        m["type"] == "VmStatusChanged" && m["vm_id"] == id
    })
    .await;
    assert_eq!(
        (&gone["old_status"], &gone["new_status"]),
        (&Value::from("running"), &Value::Null)
    );
    assert!(!listed(&agent, &id).await);
}
