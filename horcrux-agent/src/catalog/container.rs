//! Container families: identity, network (`/proc/<pid>/net/dev`) and the
//! container series history and alerts use; the cgroup families are
//! [`super::cgroup`]'s, under `horcrux_container_`.
//! Every sample also carries the container's `id`, `name` and `runtime`.

use super::{Family, Unit};
use crate::model::{ContainerMetrics, NetworkTotals};

type F = Family<ContainerMetrics>;

pub static FAMILIES: &[F] = &[
    F::gauge(
        "info",
        Unit::Info,
        "1 for every discovered container, with its state and cgroup.",
        |c, out| out.labeled(&[c.state.name(), &c.cgroup], Some(1u64)),
    )
    .labels(&["state", "cgroup"]),
    F::series(
        "cpu_usage_percent",
        Unit::Percent,
        "% of one CPU since the previous sample (as docker stats).",
        |c, out| out.one(c.cpu_usage_percent),
    ),
    F::series(
        "memory_usage_bytes",
        Unit::Bytes,
        "Memory charged to the cgroup.",
        |c, out| out.one(c.memory_usage_bytes),
    ),
    F::series(
        "block_read_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s read.",
        |c, out| {
            out.one(
                c.usage
                    .block_io
                    .as_ref()
                    .and_then(|b| b.read_bytes_per_second),
            )
        },
    ),
    F::series(
        "block_write_bytes_per_second",
        Unit::BytesPerSecond,
        "Bytes/s written.",
        |c, out| {
            out.one(
                c.usage
                    .block_io
                    .as_ref()
                    .and_then(|b| b.write_bytes_per_second),
            )
        },
    ),
    F::counter(
        "network_receive_bytes_total",
        Unit::Bytes,
        "Traffic of the container's network namespace, all interfaces but lo.",
        |c, out| out.one(network(c, |n| n.rx_bytes_total)),
    ),
    F::counter(
        "network_transmit_bytes_total",
        Unit::Bytes,
        "Traffic of the container's network namespace, all interfaces but lo.",
        |c, out| out.one(network(c, |n| n.tx_bytes_total)),
    ),
    F::counter(
        "network_receive_packets_total",
        Unit::Count,
        "Traffic of the container's network namespace, all interfaces but lo.",
        |c, out| out.one(network(c, |n| n.rx_packets_total)),
    ),
    F::counter(
        "network_transmit_packets_total",
        Unit::Count,
        "Traffic of the container's network namespace, all interfaces but lo.",
        |c, out| out.one(network(c, |n| n.tx_packets_total)),
    ),
    F::series(
        "network_rx_bytes_per_second",
        Unit::BytesPerSecond,
        "Received bytes/s.",
        |c, out| out.one(c.network.as_ref().and_then(|n| n.rx_bytes_per_second)),
    ),
    F::series(
        "network_tx_bytes_per_second",
        Unit::BytesPerSecond,
        "Transmitted bytes/s.",
        |c, out| out.one(c.network.as_ref().and_then(|n| n.tx_bytes_per_second)),
    ),
];

fn network(container: &ContainerMetrics, value: fn(&NetworkTotals) -> u64) -> Option<u64> {
    container
        .network
        .as_ref()
        .map(|network| value(&network.totals))
}
