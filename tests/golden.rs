//! Golden end-to-end output, as node_exporter's e2e test does it: the collectors run
//! over the fixture trees (a `/proc` capture; cgroup v2, v1 and hybrid trees), and
//! the whole `/metrics` text and the JSON of each metrics endpoint are compared with
//! the checked-in files under `tests/golden/`. A difference is a change of the
//! public output: review it, then regenerate with `cargo xtask bless` (which sets
//! `HORCRUX_BLESS=1`).
//!
//! Only the first cycle is taken (rates need elapsed time, which a fixture cannot
//! fix); figures from the live host are kept out: the root filesystem is absent
//! (`disk_usage` 0), the fixture mounts are pseudo filesystems, no process runs in
//! the fixture cgroups.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use horcrux_agent::{
    catalog::agent::AgentView,
    cgroup::{Hierarchies, stats::CgroupReader},
    collector::{
        containers::ContainerCollector,
        node::{NodeCollector, NodeSources},
    },
    config::Protocol,
    ebpf::EbpfPrograms,
    export::{DroppedView, ExportView},
    health::{CollectorHealth, SupervisorView},
    http::{containers::list_body, prometheus},
    model::{ContainerMetrics, NodeMetrics},
};

const TIMESTAMP: u64 = 1_767_225_600;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn node() -> NodeMetrics {
    let proc_root = fixtures().join("proc/golden");
    let mut collector = NodeCollector::new(NodeSources {
        root_filesystem: proc_root.join("absent-root"),
        sys_block: fixtures().join("sys/block"),
        proc_root,
    });
    collector.collect("golden-host".into(), TIMESTAMP)
}

fn hierarchies(mode: &str) -> Hierarchies {
    let root = fixtures().join("cgroup");
    let v1 = root.join("v1");
    let v1_controllers = BTreeMap::from(
        [
            ("cpu", "cpu,cpuacct"),
            ("cpuacct", "cpu,cpuacct"),
            ("memory", "memory"),
            ("blkio", "blkio"),
            ("pids", "pids"),
            ("freezer", "freezer"),
        ]
        .map(|(controller, dir)| (controller.to_owned(), v1.join(dir))),
    );
    match mode {
        "v2" => Hierarchies {
            unified: Some(root.join("v2")),
            unified_controllers: ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"]
                .map(String::from)
                .to_vec(),
            v1: BTreeMap::new(),
        },
        "hybrid" => Hierarchies {
            unified: Some(root.join("unified-hybrid")),
            unified_controllers: vec!["hugetlb".into()],
            v1: v1_controllers,
        },
        _ => Hierarchies {
            unified: None,
            unified_controllers: Vec::new(),
            v1: v1_controllers,
        },
    }
}

fn containers(mode: &str) -> Vec<ContainerMetrics> {
    let mut collector = ContainerCollector::new(
        CgroupReader::new(hierarchies(mode), true),
        fixtures().join("proc/golden"),
        Default::default(),
    );
    collector.collect(TIMESTAMP, None).containers
}

/// The agent's own figures, fixed: they describe the running process.
fn agent(mode: &str) -> AgentView {
    let health = CollectorHealth {
        cycles: 1,
        ..CollectorHealth::default()
    };
    let supervised = SupervisorView {
        panics: 0,
        last_panic: None,
        last_success: Some(TIMESTAMP),
    };
    AgentView {
        cgroup_mode: hierarchies(mode).mode().name(),
        uptime_seconds: 1.0,
        collectors: vec![("node", health.clone()), ("containers", health)],
        supervision: vec![("node", supervised.clone()), ("containers", supervised)],
        ebpf: Some(EbpfPrograms::disabled().status()),
        websocket_clients: 0,
        exports: vec![ExportView {
            protocol: Protocol::RemoteWrite,
            name: "central".into(),
            url: "http://prometheus:9090/api/v1/write".into(),
            samples_queued: 1200,
            samples_sent: 1000,
            samples_retried: 300,
            samples_dropped: DroppedView {
                rejected: 100,
                queue_full: 50,
            },
            queue_samples: 50,
            queue_bytes: 4096,
            corrupt_bytes: 0,
            requests: 12,
            sent_bytes: 20_480,
            last_success: Some(TIMESTAMP),
            last_error: None,
        }],
        // Two kills of a container named web, across a recreation.
        oom: std::sync::Arc::new(horcrux_agent::oom::OomView {
            by_name: BTreeMap::from([(("container", "docker", "web".to_owned()), 2)]),
            ..Default::default()
        }),
    }
}

/// Compares `actual` with the checked-in `name`, or writes it when blessing. Paths
/// into the fixtures (in the reasons of unavailable figures) are written from
/// `$FIXTURES`, wherever the checkout is.
fn check(name: &str, actual: &str) {
    let actual = actual.replace(&fixtures().display().to_string(), "$FIXTURES");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(name);
    if std::env::var_os("HORCRUX_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("golden dir");
        std::fs::write(&path, actual).expect("writing a golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error} (run `cargo xtask bless`)", path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from the golden file at line {}:\n  golden: {:?}\n  now:    {:?}\n\
             Review the change; `cargo xtask bless` accepts it.",
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("model serializes") + "\n"
}

#[test]
fn node_json_matches_the_golden_file() {
    check("node.json", &pretty(&node()));
}

fn check_mode(mode: &str) {
    let node = node();
    let containers = containers(mode);
    assert!(
        !containers.is_empty(),
        "{mode}: the fixture tree has containers"
    );
    check(
        &format!("{mode}/metrics.txt"),
        &prometheus::render(Some(&node), &containers, &[], &agent(mode)),
    );
    check(
        &format!("{mode}/containers.json"),
        &pretty(&list_body(&containers, TIMESTAMP)),
    );
    for container in &containers {
        check(
            &format!("{mode}/container-{}.json", container.id),
            &pretty(container),
        );
    }
}

#[test]
fn cgroup_v2_outputs_match_the_golden_files() {
    check_mode("v2");
}

#[test]
fn cgroup_v1_outputs_match_the_golden_files() {
    check_mode("v1");
}

#[test]
fn hybrid_outputs_match_the_golden_files() {
    check_mode("hybrid");
}
