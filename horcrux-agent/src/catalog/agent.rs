//! The agent's own families (`horcrux_agent_…`, `horcrux_collector_…`): build,
//! collector health and supervision, eBPF programs, WebSocket clients, and
//! (`horcrux_export_…`) every push target.

use super::{Family, Samples, Unit};
use crate::{
    ebpf::{EbpfStatus, ProgramStatus},
    export::ExportView,
    health::{CollectorHealth, SupervisorView},
};

/// What the agent families read: gathered from the latest snapshots and the
/// supervisors when `/metrics` is rendered.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub cgroup_mode: &'static str,
    pub uptime_seconds: f64,
    /// The last published health of each collector that has published.
    pub collectors: Vec<(&'static str, CollectorHealth)>,
    /// Every supervised collector thread.
    pub supervision: Vec<(&'static str, SupervisorView)>,
    pub ebpf: Option<EbpfStatus>,
    pub websocket_clients: u64,
    /// Every `[[remote_write]]` and `[[otlp]]` target.
    pub exports: Vec<ExportView>,
    /// OOM kills attributed so far.
    pub oom: std::sync::Arc<crate::oom::OomView>,
}

type F = Family<AgentView>;

pub static FAMILIES: &[F] = &[
    F::gauge(
        "agent_info",
        Unit::Info,
        "Agent version and cgroup mode.",
        |a, out| out.labeled(&[env!("CARGO_PKG_VERSION"), a.cgroup_mode], Some(1u64)),
    )
    .labels(&["version", "cgroup_mode"]),
    F::gauge(
        "agent_uptime_seconds",
        Unit::Seconds,
        "Seconds since the agent started.",
        |a, out| out.one(Some(a.uptime_seconds)),
    ),
    F::counter(
        "agent_collector_cycles_total",
        Unit::Count,
        "Collection cycles run.",
        |a, out| each_collector(a, out, |h| Some(h.cycles as f64)),
    )
    .labels(&["collector"]),
    F::counter(
        "agent_collector_errors_total",
        Unit::Count,
        "Errors met while collecting (each logged).",
        |a, out| each_collector(a, out, |h| Some(h.error_count as f64)),
    )
    .labels(&["collector"]),
    F::gauge(
        "agent_collector_last_duration_seconds",
        Unit::Seconds,
        "Wall time of the last cycle.",
        |a, out| each_collector(a, out, |h| h.last_duration_ms.map(|ms| ms / 1e3)),
    )
    .labels(&["collector"]),
    F::gauge(
        "agent_collector_last_cpu_seconds",
        Unit::Seconds,
        "CPU time of the last cycle.",
        |a, out| each_collector(a, out, |h| h.last_cpu_time_ms.map(|ms| ms / 1e3)),
    )
    .labels(&["collector"]),
    F::gauge(
        "collector_last_success_timestamp_seconds",
        Unit::Timestamp,
        "Unix time of the collector's last published cycle: staleness is now \
         minus this.",
        |a, out| {
            for (name, view) in &a.supervision {
                out.labeled(&[name], view.last_success);
            }
        },
    )
    .labels(&["collector"]),
    F::counter(
        "agent_collector_panics_total",
        Unit::Count,
        "Collector panics; each panicked collector is restarted after a backoff.",
        |a, out| {
            for (name, view) in &a.supervision {
                out.labeled(&[name], Some(view.panics));
            }
        },
    )
    .labels(&["collector"]),
    F::gauge(
        "agent_ebpf_program_attached",
        Unit::Info,
        "1 if the eBPF program is loaded and attached.",
        |a, out| {
            each_program(a, out, |p| {
                Some(u64::from(p.state == crate::ebpf::ProgramState::Attached) as f64)
            })
        },
    )
    .labels(&["program"]),
    F::counter(
        "agent_ebpf_program_runs_total",
        Unit::Count,
        "Program invocations (counted while kernel.bpf_stats_enabled is 1).",
        |a, out| each_program(a, out, |p| p.run_count.map(|runs| runs as f64)),
    )
    .labels(&["program"]),
    F::counter(
        "agent_ebpf_program_run_seconds_total",
        Unit::Seconds,
        "Time spent in the program (counted while kernel.bpf_stats_enabled is 1).",
        |a, out| each_program(a, out, |p| p.run_time_ns.map(|ns| ns as f64 / 1e9)),
    )
    .labels(&["program"]),
    F::counter(
        "agent_ebpf_events_total",
        Unit::Count,
        "Events the eBPF programs could not record (full maps, failed kernel reads).",
        |a, out| {
            for (event, count) in a.ebpf.iter().flat_map(|ebpf| &ebpf.events) {
                out.labeled(&[event], Some(*count));
            }
        },
    )
    .labels(&["event"]),
    F::gauge(
        "agent_ebpf_map_entries",
        Unit::Count,
        "Entries in a per-cgroup eBPF map at the last read; new cgroups are not \
         counted while it is at its maximum (see `agent_ebpf_events_total`).",
        |a, out| {
            for map in a.ebpf.iter().flat_map(|ebpf| &ebpf.maps) {
                out.labeled(&[map.name], Some(map.entries as u64));
            }
        },
    )
    .labels(&["map"]),
    F::gauge(
        "agent_ebpf_map_max_entries",
        Unit::Count,
        "Capacity of a per-cgroup eBPF map, sized from `max_containers` at load.",
        |a, out| {
            for map in a.ebpf.iter().flat_map(|ebpf| &ebpf.maps) {
                out.labeled(&[map.name], Some(u64::from(map.max_entries)));
            }
        },
    )
    .labels(&["map"]),
    F::counter(
        "container_oom_kills_total",
        Unit::Count,
        "Processes killed by the OOM killer in a container (or VM: `kind`), by \
         name: the count carries on when a container is recreated under the same \
         name (eBPF; since the agent started).",
        |a, out| {
            for ((kind, runtime, name), kills) in &a.oom.by_name {
                out.labeled(&[name, runtime, kind], Some(*kills));
            }
        },
    )
    .labels(&["name", "runtime", "kind"]),
    F::counter(
        "oom_kills_total",
        Unit::Count,
        "Every OOM kill the eBPF OOM family saw since the agent started, attributed \
         to a container or VM or not.",
        |a, out| out.one(Some(a.oom.total)),
    ),
    F::gauge(
        "agent_websocket_clients",
        Unit::Count,
        "Connected WebSocket clients.",
        |a, out| out.one(Some(a.websocket_clients)),
    ),
    F::counter(
        "export_samples_queued_total",
        Unit::Count,
        "Samples appended to the target's disk queue.",
        |a, out| each_export(a, out, |e| e.samples_queued),
    )
    .labels(&["protocol", "target"]),
    F::counter(
        "export_samples_sent_total",
        Unit::Count,
        "Samples the receiver acknowledged.",
        |a, out| each_export(a, out, |e| e.samples_sent),
    )
    .labels(&["protocol", "target"]),
    F::counter(
        "export_samples_retried_total",
        Unit::Count,
        "Samples in requests that failed transiently (a connection error; remote_write: \
         5xx, 429; OTLP: 429, 502, 503, 504) and were sent again.",
        |a, out| each_export(a, out, |e| e.samples_retried),
    )
    .labels(&["protocol", "target"]),
    F::counter(
        "export_samples_dropped_total",
        Unit::Count,
        "Samples dropped: refused for good by the receiver (`rejected`), or the \
         oldest queued when the disk budget was full (`queue_full`).",
        |a, out| {
            for export in &a.exports {
                let protocol = export_protocol(export);
                out.labeled(
                    &[protocol, &export.name, "rejected"],
                    Some(export.samples_dropped.rejected),
                );
                out.labeled(
                    &[protocol, &export.name, "queue_full"],
                    Some(export.samples_dropped.queue_full),
                );
            }
        },
    )
    .labels(&["protocol", "target", "reason"]),
    F::gauge(
        "export_queue_samples",
        Unit::Count,
        "Samples on disk not yet acknowledged.",
        |a, out| each_export(a, out, |e| e.queue_samples),
    )
    .labels(&["protocol", "target"]),
    F::gauge(
        "export_queue_bytes",
        Unit::Bytes,
        "Bytes of the target's queue segments on disk.",
        |a, out| each_export(a, out, |e| e.queue_bytes),
    )
    .labels(&["protocol", "target"]),
    F::counter(
        "export_queue_corrupt_bytes_total",
        Unit::Bytes,
        "Damaged queue bytes found and skipped at start-up.",
        |a, out| each_export(a, out, |e| e.corrupt_bytes),
    )
    .labels(&["protocol", "target"]),
    F::counter(
        "export_requests_total",
        Unit::Count,
        "HTTP requests sent, retries included.",
        |a, out| each_export(a, out, |e| e.requests),
    )
    .labels(&["protocol", "target"]),
    F::counter(
        "export_sent_bytes_total",
        Unit::Bytes,
        "Acknowledged request bodies, as sent (snappy-compressed).",
        |a, out| each_export(a, out, |e| e.sent_bytes),
    )
    .labels(&["protocol", "target"]),
    F::gauge(
        "export_last_success_timestamp_seconds",
        Unit::Timestamp,
        "Unix time of the last acknowledged request.",
        |a, out| {
            for export in &a.exports {
                out.labeled(
                    &[export_protocol(export), &export.name],
                    export.last_success,
                );
            }
        },
    )
    .labels(&["protocol", "target"]),
];

fn each_export(agent: &AgentView, out: &mut Samples<'_, '_>, value: fn(&ExportView) -> u64) {
    for export in &agent.exports {
        out.labeled(
            &[export_protocol(export), &export.name],
            Some(value(export)),
        );
    }
}

fn export_protocol(export: &ExportView) -> &'static str {
    export.protocol.name()
}

fn each_collector(
    agent: &AgentView,
    out: &mut Samples<'_, '_>,
    value: fn(&CollectorHealth) -> Option<f64>,
) {
    for (name, health) in &agent.collectors {
        out.labeled(&[name], value(health));
    }
}

fn each_program(
    agent: &AgentView,
    out: &mut Samples<'_, '_>,
    value: fn(&ProgramStatus) -> Option<f64>,
) {
    for program in agent.ebpf.iter().flat_map(|ebpf| &ebpf.programs) {
        out.labeled(&[program.name], value(program));
    }
}
