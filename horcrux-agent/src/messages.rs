//! The WebSocket messages of the spec, one tagged enum: `type` is the variant
//! name. Built by the collectors (metrics, state changes) and the alert recorder,
//! serialized once, fanned out to every client.

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;

use crate::{
    alerts::Alert,
    catalog::node::network_rates,
    model::{ContainerMetrics, EbpfMetrics, NodeMetrics, VmMetrics},
};

#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum Message<'a> {
    NodeMetrics(NodeMetricsMessage<'a>),
    VmMetrics(VmMetricsMessage<'a>),
    VmStatusChanged(&'a VmStatusChanged),
    /// A process was killed by the OOM killer (eBPF OOM family).
    OomKill(&'a crate::oom::OomKillRecord),
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

/// The spec's `VmMetrics` message, for a container or a VM (`runtime` says which:
/// `docker`, …, or `libvirt`, `qemu`).
#[derive(Debug, Clone, Serialize)]
pub struct VmMetricsMessage<'a> {
    /// `container` or `vm` (beyond the spec: what `vm_id` names).
    pub kind: &'static str,
    pub vm_id: &'a str,
    pub name: Option<&'a str>,
    pub runtime: &'static str,
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
        let ebpf = container.ebpf.as_deref();
        Self {
            kind: "container",
            vm_id: &container.id,
            name: container.name.as_deref(),
            runtime: container.runtime.name(),
            cpu_usage: container.cpu_usage_percent,
            memory_usage,
            memory_usage_bytes: container.memory_usage_bytes,
            disk_read: container.block_read_bytes,
            disk_write: container.block_write_bytes,
            network_rx: container.network_rx_bytes,
            network_tx: container.network_tx_bytes,
            runq_latency_p99_us: runq_p99(ebpf),
            block_latency_p99_us: block_p99(ebpf),
            timestamp: container.timestamp,
        }
    }

    /// A VM's message: memory as % of the guest's configured memory; the eBPF
    /// figures of its cgroup, when it has one.
    pub fn from_vm(vm: &'a VmMetrics) -> Self {
        let ebpf = vm.ebpf.as_deref();
        Self {
            kind: "vm",
            vm_id: &vm.id,
            name: vm.name.as_deref(),
            runtime: vm.source.name(),
            cpu_usage: vm.cpu_usage_percent,
            memory_usage: vm
                .memory_usage_bytes
                .zip(vm.memory_limit_bytes.filter(|limit| *limit > 0))
                .map(|(usage, limit)| usage as f64 * 100.0 / limit as f64),
            memory_usage_bytes: vm.memory_usage_bytes,
            disk_read: vm.block_read_bytes,
            disk_write: vm.block_write_bytes,
            network_rx: vm.network_rx_bytes,
            network_tx: vm.network_tx_bytes,
            runq_latency_p99_us: runq_p99(ebpf),
            block_latency_p99_us: block_p99(ebpf),
            timestamp: vm.timestamp,
        }
    }
}

/// The eBPF headline figures: p99 over the last interval.
fn runq_p99(ebpf: Option<&EbpfMetrics>) -> Option<u64> {
    ebpf?.sched.as_ref()?.runq_latency_p99_us
}

fn block_p99(ebpf: Option<&EbpfMetrics>) -> Option<u64> {
    ebpf?.blkio.as_ref()?.latency_p99_us
}

/// The spec's `VmStatusChanged` message: a container or VM appeared (`old_status`
/// `null`), disappeared (`new_status` `null`) or changed state (a container's
/// `running`, `paused`, `empty`; a VM's `running`, `paused`, `shutdown`,
/// `shutoff`, `crashed`, `migrating`, …).
#[derive(Debug, Clone, Serialize)]
pub struct VmStatusChanged {
    /// `container` or `vm`.
    pub kind: &'static str,
    pub vm_id: String,
    pub name: Option<String>,
    pub runtime: &'static str,
    pub old_status: Option<&'static str>,
    pub new_status: Option<&'static str>,
    pub timestamp: u64,
}
