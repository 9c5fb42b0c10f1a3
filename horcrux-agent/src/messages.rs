//! The WebSocket messages of the spec, one tagged enum: `type` is the variant
//! name. Built by the collectors (metrics, state changes) and the alert recorder,
//! serialized once, fanned out to every client.

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;

use crate::{
    alerts::Alert,
    catalog::node::network_rates,
    model::{ContainerMetrics, ContainerState, NodeMetrics, Runtime},
};

#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum Message<'a> {
    NodeMetrics(NodeMetricsMessage<'a>),
    VmMetrics(VmMetricsMessage<'a>),
    VmStatusChanged(&'a VmStatusChanged),
    AlertTriggered(&'a Alert),
    AlertResolved(&'a Alert),
}

impl Message<'_> {
    /// Serialized once for every client. Serialization cannot fail for these types
    /// (string keys; non-finite floats become `null`); a failure is logged.
    pub fn to_text(&self) -> Utf8Bytes {
        json_text(self).into()
    }

    /// An alert's message: triggered while firing, resolved once resolved.
    pub fn alert(alert: &Alert) -> Message<'_> {
        if alert.resolved_at.is_some() {
            Message::AlertResolved(alert)
        } else {
            Message::AlertTriggered(alert)
        }
    }
}

pub fn json_text(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| {
        tracing::error!("serializing a snapshot failed: {error}");
        "null".into()
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeMetricsMessage<'a> {
    pub node_id: &'a str,
    pub cpu_usage: f64,
    pub memory_usage: f64,
    pub disk_usage: f64,
    pub load_averages: [f64; 3],
    pub timestamp: u64,
    /// Beyond the spec: live network rates for the dashboard (`null` on the first sample).
    pub network_rx_bytes_per_second: Option<f64>,
    pub network_tx_bytes_per_second: Option<f64>,
}

impl<'a> From<&'a NodeMetrics> for NodeMetricsMessage<'a> {
    fn from(node: &'a NodeMetrics) -> Self {
        let rates = network_rates(node);
        Self {
            node_id: &node.hostname,
            cpu_usage: node.cpu_usage,
            memory_usage: node.memory_usage,
            disk_usage: node.disk_usage,
            load_averages: [
                node.load_average_1m,
                node.load_average_5m,
                node.load_average_15m,
            ],
            timestamp: node.timestamp,
            network_rx_bytes_per_second: rates.map(|(rx, _)| rx),
            network_tx_bytes_per_second: rates.map(|(_, tx)| tx),
        }
    }
}

/// The spec's `VmMetrics` message, for a container.
#[derive(Debug, Clone, Serialize)]
pub struct VmMetricsMessage<'a> {
    pub vm_id: &'a str,
    pub name: Option<&'a str>,
    pub runtime: Runtime,
    pub cpu_usage: Option<f64>,
    /// % of the memory limit, or of host memory when unlimited (as `docker stats`).
    pub memory_usage: Option<f64>,
    pub memory_usage_bytes: Option<u64>,
    pub disk_read: Option<u64>,
    pub disk_write: Option<u64>,
    pub network_rx: Option<u64>,
    pub network_tx: Option<u64>,
    /// eBPF headline figures over the last interval (`null` without eBPF or samples).
    pub runq_latency_p99_us: Option<u64>,
    pub block_latency_p99_us: Option<u64>,
    pub timestamp: u64,
}

impl<'a> VmMetricsMessage<'a> {
    pub fn new(container: &'a ContainerMetrics, host_memory_bytes: Option<u64>) -> Self {
        let memory_usage = container.memory_usage_bytes.and_then(|usage| {
            let total = container
                .memory_limit_bytes
                .or(host_memory_bytes)
                .filter(|total| *total > 0)?;
            Some(usage as f64 * 100.0 / total as f64)
        });
        let ebpf = container.ebpf.as_ref();
        Self {
            vm_id: &container.id,
            name: container.name.as_deref(),
            runtime: container.runtime,
            cpu_usage: container.cpu_usage_percent,
            memory_usage,
            memory_usage_bytes: container.memory_usage_bytes,
            disk_read: container.block_read_bytes,
            disk_write: container.block_write_bytes,
            network_rx: container.network_rx_bytes,
            network_tx: container.network_tx_bytes,
            runq_latency_p99_us: ebpf
                .and_then(|ebpf| ebpf.sched.as_ref())
                .and_then(|sched| sched.runq_latency_p99_us),
            block_latency_p99_us: ebpf
                .and_then(|ebpf| ebpf.blkio.as_ref())
                .and_then(|blkio| blkio.latency_p99_us),
            timestamp: container.timestamp,
        }
    }
}

/// The spec's `VmStatusChanged` message: a container appeared (`old_status`
/// `null`), disappeared (`new_status` `null`) or changed state.
#[derive(Debug, Clone, Serialize)]
pub struct VmStatusChanged {
    pub vm_id: String,
    pub name: Option<String>,
    pub runtime: Runtime,
    pub old_status: Option<ContainerState>,
    pub new_status: Option<ContainerState>,
    pub timestamp: u64,
}
