//! `GET /metrics`: the latest snapshots in the Prometheus text format (0.0.4).
//! Node metrics follow node_exporter's names under `horcrux_node_`, containers
//! cAdvisor's under `horcrux_container_`, and the agent's own under `horcrux_agent_`.
//! Base units: seconds and bytes.

use std::{
    fmt::{Display, Write},
    sync::{Arc, atomic::Ordering},
};

use axum::{extract::State, http::header, response::IntoResponse};

use super::AppState;
use crate::{
    collector::{ContainerSnapshot, NodeSnapshot, health::CollectorHealth},
    ebpf::ProgramState,
    model::{
        BlkioDevice, BlockIoTotals, ContainerMetrics, CpuModes, DiskMetrics, EbpfMetrics,
        FilesystemMetrics, Histogram, NetworkTotals, NodeMetrics, SchedMetrics,
    },
};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // Renders walk every container: a few at a time, the rest wait their turn.
    let _render = state.renders.acquire().await;
    let node = state.node.borrow().clone();
    let containers = state.containers.borrow().clone();
    let mut out = Exposition::default();
    if let Some(node) = &node {
        node_families(&mut out, &node.node);
    }
    if let Some(containers) = &containers {
        container_families(&mut out, &containers.containers);
    }
    agent_families(&mut out, &state, node.as_deref(), containers.as_deref());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], out.text)
}

/// Writes metric families: a HELP and TYPE line, then the family's samples.
#[derive(Default)]
pub struct Exposition {
    pub text: String,
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// How one metric family reads its value from a model struct.
type Field<T, V> = fn(&T) -> V;

/// A family's name suffix, type, help text and value.
type FamilySpec<T, V> = (&'static str, &'static str, &'static str, Field<T, V>);

impl Exposition {
    pub fn family<'a, V: Sample>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels<'a>, V)>,
    ) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if let Some(value) = value.render() {
                self.sample(name, &labels, value);
            }
        }
    }

    /// A histogram family: cumulative `_bucket`s with `le` in seconds, then `+Inf`,
    /// `_sum` (seconds) and `_count`. The model's bounds are microseconds.
    pub fn histogram_family<'a>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels<'a>, &'a Histogram)>,
    ) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} histogram");
        let bucket_name = format!("{name}_bucket");
        for (labels, histogram) in samples {
            fn with_le<'l>(
                labels: &[(&'static str, &'l str)],
                le: &'l str,
            ) -> Vec<(&'static str, &'l str)> {
                let mut labels = labels.to_vec();
                labels.push(("le", le));
                labels
            }
            for bucket in &histogram.buckets {
                let le = (bucket.le as f64 / 1e6).to_string();
                self.sample(&bucket_name, &with_le(&labels, &le), bucket.count);
            }
            self.sample(&bucket_name, &with_le(&labels, "+Inf"), histogram.count);
            self.sample(&format!("{name}_sum"), &labels, histogram.sum / 1e6);
            self.sample(&format!("{name}_count"), &labels, histogram.count);
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"");
                escape_into(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// A sample value: integers print exactly; non-finite floats are left out.
pub trait Sample {
    fn render(&self) -> Option<String>;
}

impl Sample for u64 {
    fn render(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Sample for f64 {
    fn render(&self) -> Option<String> {
        self.is_finite().then(|| self.to_string())
    }
}

impl<T: Sample> Sample for Option<T> {
    fn render(&self) -> Option<String> {
        self.as_ref().and_then(Sample::render)
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_into(out: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

fn modes(values: &CpuModes) -> [(&'static str, f64); 8] {
    [
        ("user", values.user),
        ("nice", values.nice),
        ("system", values.system),
        ("idle", values.idle),
        ("iowait", values.iowait),
        ("irq", values.irq),
        ("softirq", values.softirq),
        ("steal", values.steal),
    ]
}

fn node_families(out: &mut Exposition, node: &NodeMetrics) {
    if let Some(ebpf) = &node.ebpf {
        ebpf_families(out, "horcrux_node", &[(vec![], ebpf)]);
    }
    if let Some(cpu) = &node.cpu {
        let cpus: Vec<(String, &CpuModes)> = cpu
            .per_cpu
            .iter()
            .map(|per_cpu| (per_cpu.cpu.to_string(), &per_cpu.seconds_total))
            .collect();
        out.family(
            "horcrux_node_cpu_seconds_total",
            "counter",
            "Seconds the CPUs spent in each mode (/proc/stat).",
            cpus.iter().flat_map(|(cpu, seconds)| {
                modes(seconds)
                    .into_iter()
                    .map(move |(mode, value)| (vec![("cpu", cpu.as_str()), ("mode", mode)], value))
            }),
        );
        out.family(
            "horcrux_node_cpu_usage_ratio",
            "gauge",
            "Busy share of all CPUs over the last collection interval (0-1).",
            [(vec![], cpu.usage_percent.map(|percent| percent / 100.0))],
        );
    }
    if let Some(processes) = &node.processes {
        out.family(
            "horcrux_node_context_switches_total",
            "counter",
            "Context switches (/proc/stat ctxt).",
            [(vec![], processes.context_switches_total)],
        );
        out.family(
            "horcrux_node_forks_total",
            "counter",
            "Processes created (/proc/stat processes).",
            [(vec![], processes.forks_total)],
        );
        out.family(
            "horcrux_node_procs_running",
            "gauge",
            "Runnable tasks (/proc/stat procs_running).",
            [(vec![], processes.procs_running)],
        );
        out.family(
            "horcrux_node_procs_blocked",
            "gauge",
            "Tasks blocked on I/O (/proc/stat procs_blocked).",
            [(vec![], processes.procs_blocked)],
        );
        out.family(
            "horcrux_node_boot_time_seconds",
            "gauge",
            "Boot time, Unix seconds.",
            [(vec![], processes.boot_time)],
        );
    }
    if let Some(memory) = &node.memory {
        for (name, help, value) in [
            ("total", "MemTotal", memory.total_bytes),
            ("free", "MemFree", memory.free_bytes),
            ("available", "MemAvailable", memory.available_bytes),
            ("buffers", "Buffers", memory.buffers_bytes),
            (
                "cached",
                "Cached + SReclaimable, as procps free",
                memory.cached_bytes,
            ),
            ("shared", "Shmem", memory.shared_bytes),
            ("used", "total - free - buffers - cache", memory.used_bytes),
            ("swap_total", "SwapTotal", memory.swap_total_bytes),
            ("swap_free", "SwapFree", memory.swap_free_bytes),
        ] {
            out.family(
                &format!("horcrux_node_memory_{name}_bytes"),
                "gauge",
                &format!("Memory: {help} (/proc/meminfo)."),
                [(vec![], value)],
            );
        }
    }
    if let Some(load) = &node.load {
        for (name, value) in [
            ("load1", load.load_average_1m),
            ("load5", load.load_average_5m),
            ("load15", load.load_average_15m),
        ] {
            out.family(
                &format!("horcrux_node_{name}"),
                "gauge",
                "Load average (/proc/loadavg).",
                [(vec![], value)],
            );
        }
    }
    if let Some(disks) = &node.disks {
        let families: [(&str, &str, Field<DiskMetrics, f64>); 8] = [
            ("read_bytes_total", "Bytes read (sectors x 512).", |d| {
                d.read_bytes_total as f64
            }),
            (
                "written_bytes_total",
                "Bytes written (sectors x 512).",
                |d| d.write_bytes_total as f64,
            ),
            (
                "discarded_bytes_total",
                "Bytes discarded (sectors x 512).",
                |d| d.discard_bytes_total as f64,
            ),
            ("reads_completed_total", "Reads completed.", |d| {
                d.reads_total as f64
            }),
            ("writes_completed_total", "Writes completed.", |d| {
                d.writes_total as f64
            }),
            ("discards_completed_total", "Discards completed.", |d| {
                d.discards_total as f64
            }),
            ("flush_requests_total", "Flushes completed.", |d| {
                d.flushes_total as f64
            }),
            (
                "io_time_seconds_total",
                "Seconds the device had I/O in flight.",
                |d| d.io_time_ms_total as f64 / 1e3,
            ),
        ];
        for (suffix, help, value) in families {
            out.family(
                &format!("horcrux_node_disk_{suffix}"),
                "counter",
                &format!("{help} (/proc/diskstats)"),
                disks.iter().map(|disk| (disk_labels(disk), value(disk))),
            );
        }
        out.family(
            "horcrux_node_disk_io_now",
            "gauge",
            "I/Os in flight (/proc/diskstats).",
            disks.iter().map(|disk| (disk_labels(disk), disk.in_flight)),
        );
    }
    if let Some(network) = &node.network {
        let families: [(&str, Field<NetworkTotals, u64>); 8] = [
            ("receive_bytes_total", |n| n.rx_bytes_total),
            ("receive_packets_total", |n| n.rx_packets_total),
            ("receive_errs_total", |n| n.rx_errors_total),
            ("receive_drop_total", |n| n.rx_dropped_total),
            ("transmit_bytes_total", |n| n.tx_bytes_total),
            ("transmit_packets_total", |n| n.tx_packets_total),
            ("transmit_errs_total", |n| n.tx_errors_total),
            ("transmit_drop_total", |n| n.tx_dropped_total),
        ];
        for (suffix, value) in families {
            out.family(
                &format!("horcrux_node_network_{suffix}"),
                "counter",
                "Interface counter (/proc/net/dev).",
                network.iter().map(|net| {
                    (
                        vec![("device", net.interface.as_str())],
                        value(&net.counters),
                    )
                }),
            );
        }
    }
    if let Some(filesystems) = &node.filesystems {
        let families: [(&str, &str, Field<FilesystemMetrics, u64>); 5] = [
            ("size_bytes", "Filesystem size.", |fs| fs.size_bytes),
            ("used_bytes", "Used space, as df.", |fs| fs.used_bytes),
            (
                "avail_bytes",
                "Space available to unprivileged users, as df.",
                |fs| fs.available_bytes,
            ),
            ("files", "Inodes.", |fs| fs.inodes_total),
            ("files_free", "Free inodes.", |fs| fs.inodes_free),
        ];
        for (suffix, help, value) in families {
            out.family(
                &format!("horcrux_node_filesystem_{suffix}"),
                "gauge",
                &format!("{help} (statvfs)"),
                filesystems
                    .iter()
                    .map(|fs| (filesystem_labels(fs), value(fs))),
            );
        }
    }
    out.family(
        "horcrux_node_filesystem_stale",
        "gauge",
        "1 for a mount whose statvfs did not answer in time (hung network or FUSE mount); skipped until it answers.",
        node.stale_filesystems.iter().map(|fs| {
            (
                vec![
                    ("mountpoint", fs.mount_point.as_str()),
                    ("device", fs.device.as_str()),
                    ("fstype", fs.fs_type.as_str()),
                ],
                1u64,
            )
        }),
    );
}

fn container_families(out: &mut Exposition, containers: &[ContainerMetrics]) {
    out.family(
        "horcrux_container_info",
        "gauge",
        "1 for every discovered container, with its state and cgroup.",
        containers.iter().map(|c| {
            let mut labels = identity(c);
            labels.push(("state", state_name(c)));
            labels.push(("cgroup", c.cgroup.as_str()));
            (labels, 1u64)
        }),
    );
    let families: [FamilySpec<ContainerMetrics, Option<f64>>; 16] = [
        (
            "cpu_usage_seconds_total",
            "counter",
            "CPU time used.",
            |c| c.cpu.as_ref().map(|cpu| cpu.usage_seconds_total),
        ),
        (
            "cpu_user_seconds_total",
            "counter",
            "CPU time in user mode.",
            |c| c.cpu.as_ref()?.user_seconds_total,
        ),
        (
            "cpu_system_seconds_total",
            "counter",
            "CPU time in kernel mode.",
            |c| c.cpu.as_ref()?.system_seconds_total,
        ),
        (
            "cpu_limit_cores",
            "gauge",
            "CPU quota in CPUs (absent = unlimited).",
            |c| c.cpu.as_ref()?.limit_cores,
        ),
        (
            "cpu_cfs_periods_total",
            "counter",
            "Enforcement periods.",
            |c| Some(c.cpu.as_ref()?.throttling.as_ref()?.periods_total as f64),
        ),
        (
            "cpu_cfs_throttled_periods_total",
            "counter",
            "Throttled periods.",
            |c| Some(c.cpu.as_ref()?.throttling.as_ref()?.throttled_periods_total as f64),
        ),
        (
            "cpu_cfs_throttled_seconds_total",
            "counter",
            "Time throttled.",
            |c| Some(c.cpu.as_ref()?.throttling.as_ref()?.throttled_seconds_total),
        ),
        (
            "memory_usage_bytes",
            "gauge",
            "Memory charged to the cgroup.",
            |c| c.memory_usage_bytes.map(|v| v as f64),
        ),
        (
            "memory_limit_bytes",
            "gauge",
            "Memory limit (absent = unlimited).",
            |c| c.memory_limit_bytes.map(|v| v as f64),
        ),
        (
            "memory_working_set_bytes",
            "gauge",
            "Usage minus inactive file cache.",
            |c| Some(c.memory.as_ref()?.working_set_bytes as f64),
        ),
        ("memory_anon_bytes", "gauge", "Anonymous memory.", |c| {
            Some(c.memory.as_ref()?.anon_bytes as f64)
        }),
        ("memory_file_bytes", "gauge", "Page cache.", |c| {
            Some(c.memory.as_ref()?.file_bytes as f64)
        }),
        ("memory_swap_bytes", "gauge", "Swap used.", |c| {
            c.memory.as_ref()?.swap_bytes.map(|v| v as f64)
        }),
        (
            "memory_oom_kills_total",
            "counter",
            "Processes killed by the OOM killer.",
            |c| c.memory.as_ref()?.oom_kills_total.map(|v| v as f64),
        ),
        ("pids", "gauge", "Tasks in the cgroup.", |c| {
            Some(c.pids.as_ref()?.current as f64)
        }),
        (
            "pids_limit",
            "gauge",
            "Task limit (absent = unlimited).",
            |c| c.pids.as_ref()?.limit.map(|v| v as f64),
        ),
    ];
    for (suffix, kind, help, value) in families {
        out.family(
            &format!("horcrux_container_{suffix}"),
            kind,
            help,
            containers.iter().map(|c| (identity(c), value(c))),
        );
    }
    for (suffix, help, operation_value) in [
        (
            "block_io_bytes_total",
            "Block I/O bytes by device and operation (absent where the kernel does not count it).",
            (|t: &BlockIoTotals| {
                [
                    t.read_bytes_total,
                    t.write_bytes_total,
                    t.discard_bytes_total,
                ]
            }) as Field<BlockIoTotals, [u64; 3]>,
        ),
        (
            "block_io_ops_total",
            "Block I/O operations by device and operation.",
            |t: &BlockIoTotals| [t.reads_total, t.writes_total, t.discards_total],
        ),
    ] {
        out.family(
            &format!("horcrux_container_{suffix}"),
            "counter",
            help,
            containers.iter().flat_map(|c| {
                c.block_io.iter().flat_map(move |block| {
                    block.devices.iter().flat_map(move |device| {
                        let name = device.device.as_deref().unwrap_or("unknown");
                        ["read", "write", "discard"]
                            .into_iter()
                            .zip(operation_value(&device.counters))
                            .map(move |(op, value)| {
                                let mut labels = identity(c);
                                labels.push(("device", name));
                                labels.push(("op", op));
                                (labels, value)
                            })
                    })
                })
            }),
        );
    }
    let network: [(&str, Field<NetworkTotals, u64>); 4] = [
        ("network_receive_bytes_total", |n| n.rx_bytes_total),
        ("network_transmit_bytes_total", |n| n.tx_bytes_total),
        ("network_receive_packets_total", |n| n.rx_packets_total),
        ("network_transmit_packets_total", |n| n.tx_packets_total),
    ];
    for (suffix, value) in network {
        out.family(
            &format!("horcrux_container_{suffix}"),
            "counter",
            "Traffic of the container's network namespace, all interfaces but lo.",
            containers
                .iter()
                .map(|c| (identity(c), c.network.as_ref().map(|n| value(&n.totals)))),
        );
    }
    out.family(
        "horcrux_container_pressure_stalled_seconds_total",
        "counter",
        "Pressure stall time (PSI) by resource and kind (some, full).",
        containers.iter().flat_map(|c| {
            let pressure = c.pressure.as_ref();
            [
                ("cpu", pressure.and_then(|p| p.cpu)),
                ("memory", pressure.and_then(|p| p.memory)),
                ("io", pressure.and_then(|p| p.io)),
            ]
            .into_iter()
            .flat_map(move |(resource, value)| {
                let some = value.map(|p| p.some.total_us as f64 / 1e6);
                let full = value
                    .and_then(|p| p.full)
                    .map(|full| full.total_us as f64 / 1e6);
                [("some", some), ("full", full)]
                    .into_iter()
                    .map(move |(kind, seconds)| {
                        let mut labels = identity(c);
                        labels.push(("resource", resource));
                        labels.push(("kind", kind));
                        (labels, seconds)
                    })
            })
        }),
    );
    let scopes: Vec<(Labels<'_>, &EbpfMetrics)> = containers
        .iter()
        .filter_map(|c| Some((identity(c), c.ebpf.as_deref()?)))
        .collect();
    ebpf_families(out, "horcrux_container", &scopes);
}

fn agent_families(
    out: &mut Exposition,
    state: &AppState,
    node: Option<&NodeSnapshot>,
    containers: Option<&ContainerSnapshot>,
) {
    out.family(
        "horcrux_agent_info",
        "gauge",
        "Agent version and cgroup mode.",
        [(
            vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("cgroup_mode", cgroup_mode_name(state)),
            ],
            1u64,
        )],
    );
    out.family(
        "horcrux_agent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        [(vec![], state.started.elapsed().as_secs_f64())],
    );
    let collectors: Vec<(&str, &CollectorHealth)> = [
        ("node", node.map(|n| &n.health)),
        ("containers", containers.map(|c| &c.health)),
    ]
    .into_iter()
    .filter_map(|(name, health)| Some((name, health?)))
    .collect();
    let families: [FamilySpec<CollectorHealth, Option<f64>>; 4] = [
        (
            "collector_cycles_total",
            "counter",
            "Collection cycles run.",
            |h| Some(h.cycles as f64),
        ),
        (
            "collector_errors_total",
            "counter",
            "Errors met while collecting (each logged).",
            |h| Some(h.error_count as f64),
        ),
        (
            "collector_last_duration_seconds",
            "gauge",
            "Wall time of the last cycle.",
            |h| h.last_duration_ms.map(|ms| ms / 1e3),
        ),
        (
            "collector_last_cpu_seconds",
            "gauge",
            "CPU time of the last cycle.",
            |h| h.last_cpu_time_ms.map(|ms| ms / 1e3),
        ),
    ];
    for (suffix, kind, help, value) in families {
        out.family(
            &format!("horcrux_agent_{suffix}"),
            kind,
            help,
            collectors
                .iter()
                .map(|(name, health)| (vec![("collector", *name)], value(health))),
        );
    }
    let supervised = [
        ("node", state.collectors.node.view()),
        ("containers", state.collectors.containers.view()),
    ];
    out.family(
        "horcrux_collector_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the collector's last published cycle: staleness is now minus this.",
        supervised
            .iter()
            .map(|(name, view)| (vec![("collector", *name)], view.last_success)),
    );
    out.family(
        "horcrux_agent_collector_panics_total",
        "counter",
        "Collector panics; each panicked collector is restarted after a backoff.",
        supervised
            .iter()
            .map(|(name, view)| (vec![("collector", *name)], view.panics)),
    );
    let programs = node
        .map(|n| n.ebpf_status.programs.as_slice())
        .unwrap_or_default();
    out.family(
        "horcrux_agent_ebpf_program_attached",
        "gauge",
        "1 if the eBPF program is loaded and attached.",
        programs.iter().map(|p| {
            (
                vec![("program", p.name)],
                u64::from(p.state == ProgramState::Attached),
            )
        }),
    );
    out.family(
        "horcrux_agent_ebpf_program_runs_total",
        "counter",
        "Program invocations (counted while kernel.bpf_stats_enabled is 1).",
        programs
            .iter()
            .map(|p| (vec![("program", p.name)], p.run_count)),
    );
    out.family(
        "horcrux_agent_ebpf_program_run_seconds_total",
        "counter",
        "Time spent in the program (counted while kernel.bpf_stats_enabled is 1).",
        programs.iter().map(|p| {
            (
                vec![("program", p.name)],
                p.run_time_ns.map(|ns| ns as f64 / 1e9),
            )
        }),
    );
    let events = node.map(|n| &n.ebpf_status.events);
    out.family(
        "horcrux_agent_ebpf_events_total",
        "counter",
        "Events the eBPF programs could not record (full maps, failed kernel reads).",
        events
            .into_iter()
            .flatten()
            .map(|(event, count)| (vec![("event", *event)], *count)),
    );
    out.family(
        "horcrux_agent_websocket_clients",
        "gauge",
        "Connected WebSocket clients.",
        [(vec![], state.ws_clients.load(Ordering::Relaxed) as u64)],
    );
}

/// The eBPF families of one scope (`horcrux_node` or `horcrux_container`), one
/// sample set per (labels, metrics).
fn ebpf_families<'a>(out: &mut Exposition, prefix: &str, scopes: &[(Labels<'a>, &'a EbpfMetrics)]) {
    let sched: Vec<(&Labels<'a>, &'a SchedMetrics)> = scopes
        .iter()
        .filter_map(|(labels, ebpf)| Some((labels, ebpf.sched.as_ref()?)))
        .collect();
    out.histogram_family(
        &format!("{prefix}_runqueue_latency_seconds"),
        "Time from becoming runnable (wakeup or preemption) to running, charged to the task switched in (eBPF).",
        sched
            .iter()
            .map(|(labels, sched)| ((*labels).clone(), &sched.runq_latency)),
    );
    out.family(
        &format!("{prefix}_sched_switches_total"),
        "counter",
        "Context switches of the cgroup's tasks: voluntary (blocked) or involuntary (preempted) (eBPF).",
        sched.iter().flat_map(|(labels, sched)| {
            [
                ("voluntary", sched.voluntary_switches),
                ("involuntary", sched.involuntary_switches),
            ]
            .map(|(kind, count)| {
                let mut labels = (*labels).clone();
                labels.push(("kind", kind));
                (labels, count)
            })
        }),
    );
    out.family(
        &format!("{prefix}_sched_oncpu_seconds_total"),
        "counter",
        "Time the cgroup's tasks ran, counted at each switch-out (eBPF).",
        sched
            .iter()
            .map(|(labels, sched)| ((*labels).clone(), sched.oncpu_ns as f64 / 1e9)),
    );
    let devices: Vec<(Labels<'a>, &'a BlkioDevice)> = scopes
        .iter()
        .filter_map(|(labels, ebpf)| Some((labels, ebpf.blkio.as_ref()?)))
        .flat_map(|(labels, blkio)| {
            blkio.devices.iter().map(move |device| {
                let mut labels = labels.clone();
                labels.push(("device", device.device.as_deref().unwrap_or("unknown")));
                (labels, device)
            })
        })
        .collect();
    out.histogram_family(
        &format!("{prefix}_block_io_latency_seconds"),
        "Block request latency from issue to the driver to completion, charged to the bio's cgroup (eBPF).",
        devices
            .iter()
            .map(|(labels, device)| (labels.clone(), &device.latency)),
    );
    let by_op = |device: &BlkioDevice| {
        let t = device.totals;
        [
            ("read", t.read_ops, Some(t.read_bytes)),
            ("write", t.write_ops, Some(t.write_bytes)),
            ("discard", t.discard_ops, Some(t.discard_bytes)),
            ("flush", t.flush_ops, None),
            ("other", t.other_ops, None),
        ]
    };
    let with_op = |labels: &Labels<'a>, op: &'static str| {
        let mut labels = labels.clone();
        labels.push(("op", op));
        labels
    };
    out.family(
        &format!("{prefix}_block_requests_total"),
        "counter",
        "Completed block requests by device and operation (eBPF).",
        devices.iter().flat_map(|(labels, device)| {
            by_op(device).map(|(op, ops, _)| (with_op(labels, op), ops))
        }),
    );
    out.family(
        &format!("{prefix}_block_request_bytes_total"),
        "counter",
        "Bytes of completed block requests by device and operation (eBPF).",
        devices.iter().flat_map(|(labels, device)| {
            by_op(device).map(|(op, _, bytes)| (with_op(labels, op), bytes))
        }),
    );
    out.family(
        &format!("{prefix}_block_requests_in_flight"),
        "gauge",
        "Block requests issued to the driver and not completed (eBPF).",
        devices
            .iter()
            .map(|(labels, device)| (labels.clone(), device.totals.in_flight)),
    );
}

fn disk_labels(disk: &DiskMetrics) -> Labels<'_> {
    vec![("device", disk.device.as_str())]
}

fn filesystem_labels(fs: &FilesystemMetrics) -> Labels<'_> {
    vec![
        ("mountpoint", fs.mount_point.as_str()),
        ("device", fs.device.as_str()),
        ("fstype", fs.fs_type.as_str()),
    ]
}

fn identity(container: &ContainerMetrics) -> Labels<'_> {
    vec![
        ("id", container.id.as_str()),
        ("name", container.name.as_deref().unwrap_or("")),
        ("runtime", runtime_name(container)),
    ]
}

fn runtime_name(container: &ContainerMetrics) -> &'static str {
    use crate::cgroup::discovery::Runtime;
    match container.runtime {
        Runtime::Docker => "docker",
        Runtime::Podman => "podman",
        Runtime::Containerd => "containerd",
        Runtime::Crio => "crio",
        Runtime::Cri => "cri",
        Runtime::Lxc => "lxc",
    }
}

fn state_name(container: &ContainerMetrics) -> &'static str {
    use crate::model::ContainerState;
    match container.state {
        ContainerState::Running => "running",
        ContainerState::Paused => "paused",
        ContainerState::Empty => "empty",
    }
}

fn cgroup_mode_name(state: &AppState) -> &'static str {
    use crate::cgroup::CgroupMode;
    match state.hierarchies.mode() {
        CgroupMode::V2 => "v2",
        CgroupMode::V1 => "v1",
        CgroupMode::Hybrid => "hybrid",
        CgroupMode::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaped_labels() {
        let mut out = Exposition::default();
        out.family(
            "horcrux_test_total",
            "counter",
            "A test.",
            [(vec![("name", "a\"b\\c\nd")], 3u64)],
        );
        out.family(
            "horcrux_gauge",
            "gauge",
            "Skips non-finite.",
            [(vec![], f64::NAN), (vec![], 0.5)],
        );
        assert_eq!(
            out.text,
            "# HELP horcrux_test_total A test.\n# TYPE horcrux_test_total counter\n\
             horcrux_test_total{name=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP horcrux_gauge Skips non-finite.\n# TYPE horcrux_gauge gauge\nhorcrux_gauge 0.5\n"
        );
    }
}
