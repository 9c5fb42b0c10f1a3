//! Collection schedule. A dedicated thread runs the node collector every
//! `node_metrics_interval`, then publishes an immutable [`Snapshot`] (read by HTTP
//! handlers) and one pre-serialized `NodeMetrics` WebSocket message (fanned out to
//! clients). Readers never trigger collection and cannot slow it down.

pub mod health;
pub mod node;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{broadcast, watch};

use crate::{
    ebpf::{EbpfPrograms, ProgramStatus},
    model::{NodeMetrics, NodeMetricsMessage},
};
use health::CollectorHealth;
use node::{NodeCollector, NodeSources};

/// Everything one cycle publishes.
#[derive(Debug)]
pub struct Snapshot {
    pub node: NodeMetrics,
    /// `node` serialized once here rather than on every request.
    pub node_json: Utf8Bytes,
    /// The spec's `NodeMetrics` WebSocket message for `node`.
    pub node_message: Utf8Bytes,
    pub node_health: CollectorHealth,
    pub ebpf: Vec<ProgramStatus>,
}

pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

pub struct Publishers {
    pub snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    pub ws_messages: broadcast::Sender<Utf8Bytes>,
}

/// Starts the collection thread. It stops when every snapshot reader is gone.
pub fn spawn(
    interval: Duration,
    sources: NodeSources,
    publishers: Publishers,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("collector".into())
        .spawn(move || run(interval, sources, publishers))
}

fn run(interval: Duration, sources: NodeSources, publishers: Publishers) {
    let mut ebpf = EbpfPrograms::load();
    release_freed_heap();
    let mut node = NodeCollector::new(sources);
    let mut next_cycle = Instant::now();
    while !publishers.snapshots.is_closed() {
        let started = Instant::now();
        let cpu_before = thread_cpu_time();
        let timestamp = unix_seconds();
        let metrics = node.collect(hostname(), timestamp);
        if let Err(error) = ebpf.refresh() {
            node.health.record_error(
                "node",
                "ebpf maps",
                format!("reading eBPF counters: {error}"),
                timestamp,
            );
        }
        let cpu_time = thread_cpu_time()
            .zip(cpu_before)
            .map(|(after, before)| after.saturating_sub(before));
        node.health
            .record_cycle(started.elapsed(), cpu_time, timestamp);
        publish(&publishers, metrics, node.health.clone(), ebpf.statuses());

        next_cycle += interval;
        let now = Instant::now();
        if next_cycle <= now {
            // A cycle overran (or the machine was suspended): skip the missed ticks.
            next_cycle = now + interval;
        }
        std::thread::sleep(next_cycle - now);
    }
}

fn publish(
    publishers: &Publishers,
    node: NodeMetrics,
    node_health: CollectorHealth,
    ebpf: Vec<ProgramStatus>,
) {
    let node_json = to_json(&node);
    let node_message = to_json(&NodeMetricsMessage::from(&node));
    publishers.snapshots.send_replace(Some(Arc::new(Snapshot {
        node,
        node_json,
        node_message: node_message.clone(),
        node_health,
        ebpf,
    })));
    // No subscribers is normal (no WebSocket client connected).
    let _ = publishers.ws_messages.send(node_message);
}

/// Serialization cannot fail for the model's types (string keys; serde_json writes
/// non-finite floats as `null`), but a failure would be logged, not a panic.
fn to_json(value: &impl serde::Serialize) -> Utf8Bytes {
    match serde_json::to_string(value) {
        Ok(text) => text.into(),
        Err(error) => {
            tracing::error!("serializing a snapshot failed: {error}");
            "null".into()
        }
    }
}

/// Loading eBPF parses the kernel's BTF (~20 MB of short-lived allocations); glibc
/// keeps freed heap mapped unless asked, which would double the agent's resident size.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

fn thread_cpu_time() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}
