//! Container discovery and cgroup reading over fixture trees: a pure cgroup2 host
//! (systemd-driver Docker, Podman, containerd/Kubernetes, LXC), a v1 host (cgroupfs
//! Docker, Podman, Kubernetes) and a hybrid host (v1 controllers plus a cgroup2 tree
//! without controllers), including malformed files, `max` limits and a cgroup that
//! vanishes between discovery and read.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use horcrux_agent::{
    cgroup::{
        CgroupMode, Hierarchies, discovery, files,
        stats::{CgroupReader, V1_BLKIO_WITHOUT_RULE},
    },
    collector::containers::ContainerCollector,
    model::{ContainerState, QosClass, Runtime},
};
use horcrux_test_support::mutate::mutations;

fn id(digit: char) -> String {
    std::iter::repeat_n(digit, 64).collect()
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cgroup")
}

fn v2_host(root: &Path) -> Hierarchies {
    Hierarchies {
        unified: Some(root.join("v2")),
        unified_controllers: ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"]
            .map(String::from)
            .to_vec(),
        v1: BTreeMap::new(),
    }
}

fn hybrid_host(root: &Path) -> Hierarchies {
    let v1 = root.join("v1");
    Hierarchies {
        unified: Some(root.join("unified-hybrid")),
        unified_controllers: vec!["hugetlb".into()],
        v1: BTreeMap::from([
            ("cpu".into(), v1.join("cpu,cpuacct")),
            ("cpuacct".into(), v1.join("cpu,cpuacct")),
            ("memory".into(), v1.join("memory")),
            ("blkio".into(), v1.join("blkio")),
            ("pids".into(), v1.join("pids")),
            ("freezer".into(), v1.join("freezer")),
        ]),
    }
}

#[test]
fn discovers_v2_containers_and_ignores_helpers() {
    let hierarchies = v2_host(&fixtures());
    assert_eq!(hierarchies.mode(), CgroupMode::V2);
    let found = discovery::discover(&hierarchies.discovery_roots()).containers;
    let summary: Vec<(Runtime, &str)> = found.iter().map(|c| (c.runtime, c.id.as_str())).collect();
    let (a, b, c) = (id('a'), id('b'), id('c'));
    assert_eq!(
        summary,
        [
            (Runtime::Containerd, c.as_str()),
            (Runtime::Lxc, "web1"),
            (Runtime::Podman, b.as_str()),
            (Runtime::Docker, a.as_str()),
        ]
    );
    let pod = found[0].pod.as_ref().expect("pod");
    assert_eq!(
        (pod.uid.as_str(), pod.qos_class),
        ("12ab-34cd", QosClass::Burstable)
    );
}

#[test]
fn discovers_v1_and_hybrid_containers_once_each() {
    let hierarchies = hybrid_host(&fixtures());
    assert_eq!(hierarchies.mode(), CgroupMode::Hybrid);
    let found = discovery::discover(&hierarchies.discovery_roots()).containers;
    let summary: Vec<(Runtime, String)> = found.iter().map(|c| (c.runtime, c.id.clone())).collect();
    assert_eq!(
        summary,
        [
            (Runtime::Docker, id('d')),
            (Runtime::Cri, id('f')),
            (Runtime::Podman, id('e'))
        ],
        "docker/<id> is in both the memory hierarchy and the cgroup2 tree: listed once"
    );
    assert_eq!(
        found[1].pod.as_ref().map(|pod| pod.qos_class),
        Some(QosClass::BestEffort)
    );
}

#[test]
fn reads_every_family_from_cgroup_v2() {
    let mut reader = CgroupReader::new(v2_host(&fixtures()), true);
    let docker = reader
        .read(&format!("system.slice/docker-{}.scope", id('a')), false)
        .expect("exists");
    let cpu = docker.cpu.expect("cpu");
    assert_eq!(
        (cpu.usage_ns, cpu.user_ns, cpu.system_ns),
        (2_500_000_000, Some(2_000_000_000), Some(500_000_000))
    );
    assert_eq!(cpu.limit_cores, Some(0.5));
    let throttling = cpu.throttling.expect("throttling");
    assert_eq!(
        (
            throttling.periods,
            throttling.throttled_periods,
            throttling.throttled_ns
        ),
        (40, 10, 300_000_000)
    );
    let memory = docker.memory.expect("memory");
    assert_eq!((memory.usage, memory.limit), (52_428_800, Some(67_108_864)));
    assert_eq!(memory.working_set(), 52_428_800 - 16_777_216);
    assert_eq!(
        (memory.anon, memory.file, memory.kernel, memory.slab),
        (31_457_280, 20_971_520, Some(1_048_576), Some(786_432))
    );
    assert_eq!(
        (memory.oom_events, memory.oom_kills, memory.limit_hits),
        (Some(2), Some(1), Some(7))
    );
    assert_eq!(memory.swap, Some(0));
    let block = docker.block_io.expect("block io");
    assert_eq!(block.source, "io.stat");
    assert_eq!(block.devices.len(), 2);
    assert_eq!(
        (block.devices[0].write_bytes, block.devices[0].discards),
        (16_777_216, 2)
    );
    let pids = docker.pids.expect("pids");
    assert_eq!((pids.current, pids.limit), (3, None));
    let pressure = docker.pressure.expect("pressure");
    assert_eq!(pressure.cpu.map(|cpu| cpu.some.avg10), Some(1.5));
    assert_eq!(
        pressure.io.and_then(|io| io.full).map(|full| full.total_us),
        Some(40)
    );
    assert!(!docker.frozen && docker.processes.is_empty() && docker.errors.is_empty());
}

#[test]
fn malformed_and_unlimited_files_are_reported_not_guessed() {
    let mut reader = CgroupReader::new(v2_host(&fixtures()), false);
    let podman = reader
        .read(&format!("machine.slice/libpod-{}.scope", id('b')), false)
        .expect("exists");
    assert_eq!(
        podman.cpu.expect("cpu").limit_cores,
        None,
        "cpu.max \"max\" is unlimited"
    );
    let error = podman.memory.expect_err("memory.stat is malformed");
    assert!(
        error.contains("memory.stat") && error.contains("line 1"),
        "{error}"
    );
    assert_eq!(
        podman.errors.len(),
        1,
        "the parse failure is recorded for the health report"
    );
    assert_eq!(podman.pids.expect("pids").limit, Some(4096));
    assert!(podman.block_io.expect("empty io.stat").devices.is_empty());
    assert!(podman.frozen, "cgroup.events frozen 1");
    assert!(podman.pressure.expect_err("PSI off").contains("psi=1"));
    // The containerd container has no io.stat at all: unavailable, not an error.
    let containerd = reader.read(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12ab_34cd.slice/cri-containerd-{}.scope",
            id('c')), false)
        .expect("exists");
    assert!(containerd.block_io.is_err() && containerd.errors.is_empty());
    assert_eq!(
        containerd.memory.expect("memory").limit,
        None,
        "no memory.max: unlimited"
    );
}

#[test]
fn reads_v1_on_a_hybrid_host_and_refuses_blkio_without_a_rule() {
    let mut reader = CgroupReader::new(hybrid_host(&fixtures()), false);
    let docker = reader
        .read(&format!("docker/{}", id('d')), false)
        .expect("exists");
    let cpu = docker.cpu.expect("cpu");
    assert_eq!(
        cpu.usage_ns, 4_000_000_000,
        "v1 cpuacct wins over the controller-less cgroup2 cpu.stat"
    );
    assert_eq!(
        (cpu.user_ns, cpu.system_ns),
        (Some(3_000_000_000), Some(1_000_000_000))
    );
    assert_eq!(cpu.limit_cores, None, "cfs_quota_us -1");
    assert_eq!(cpu.throttling.map(|t| t.throttled_ns), Some(2_000_000_000));
    let memory = docker.memory.expect("memory");
    assert_eq!(
        (memory.usage, memory.limit),
        (104_857_600, None),
        "v1's huge limit is unlimited"
    );
    assert_eq!(
        (memory.anon, memory.file, memory.inactive_file),
        (62_914_560, 41_943_040, 20_971_520)
    );
    assert_eq!(
        (memory.swap, memory.kernel, memory.oom_kills),
        (Some(5_242_880), Some(2_097_152), Some(3))
    );
    assert_eq!(
        docker.block_io.expect_err("no throttle rule"),
        V1_BLKIO_WITHOUT_RULE
    );
    assert_eq!(docker.pids.expect("pids").limit, Some(100));
    assert!(!docker.frozen);

    let podman = reader
        .read(&format!("libpod_parent/libpod-{}", id('e')), false)
        .expect("exists");
    assert_eq!(podman.cpu.expect("cpu").limit_cores, Some(1.5));
    let block = podman
        .block_io
        .expect("a throttle rule makes v1 blkio trustworthy");
    assert_eq!(block.devices.len(), 1);
    let device = block.devices[0];
    assert_eq!(
        (
            device.major,
            device.minor,
            device.read_bytes,
            device.write_bytes
        ),
        (254, 0, 4096, 16_781_312)
    );
    assert_eq!((device.reads, device.writes), (1, 4097));
    assert!(podman.frozen, "freezer.state FROZEN");
}

#[test]
fn a_cgroup_that_vanished_since_discovery_is_skipped() {
    let mut reader = CgroupReader::new(hybrid_host(&fixtures()), false);
    assert!(
        reader
            .read(
                "docker/0000000000000000000000000000000000000000000000000000000000000000",
                false
            )
            .is_none()
    );
}

#[test]
fn container_collector_over_fixtures_reports_availability_and_state_changes() {
    let root = fixtures();
    // A /proc capture: diskstats names the devices; it has no container pids.
    let proc_root = root.join("../proc/real");
    let mut collector = ContainerCollector::new(
        CgroupReader::new(v2_host(&root), true),
        proc_root,
        Default::default(),
    );
    let first = collector.collect(100, None);
    assert_eq!(first.containers.len(), 4);
    assert_eq!(first.changes.len(), 4, "every container appears");
    assert!(
        first
            .changes
            .iter()
            .all(|change| change.old_status.is_none())
    );
    let docker = first
        .containers
        .iter()
        .find(|c| c.runtime == Runtime::Docker)
        .expect("docker");
    assert_eq!(
        docker.cpu_usage_percent, None,
        "no rate on the first sample"
    );
    assert_eq!(docker.memory_usage_bytes, Some(52_428_800));
    assert_eq!(docker.memory_limit_bytes, Some(67_108_864));
    assert_eq!(
        (docker.block_read_bytes, docker.block_write_bytes),
        (Some(12_288), Some(16_777_216))
    );
    let devices = &docker.usage.block_io.as_ref().expect("block io").devices;
    assert_eq!(
        devices[0].device.as_deref(),
        Some("vda"),
        "254:0 named from /proc/diskstats"
    );
    assert_eq!(docker.network_rx_bytes, None);
    assert!(docker.unavailable.contains_key("network"));
    assert_eq!(docker.state, ContainerState::Empty);
    assert_eq!(
        docker.cgroup,
        format!("/system.slice/docker-{}.scope", id('a'))
    );
    let podman = first
        .containers
        .iter()
        .find(|c| c.runtime == Runtime::Podman)
        .expect("podman");
    assert_eq!(podman.state, ContainerState::Paused);
    assert_eq!(podman.memory_usage_bytes, None, "malformed memory.stat");
    assert_eq!(collector.health.error_count, 1);

    let second = collector.collect(101, None);
    assert!(second.changes.is_empty(), "nothing changed");
    let docker = second
        .containers
        .iter()
        .find(|c| c.runtime == Runtime::Docker)
        .expect("docker");
    assert_eq!(docker.cpu_usage_percent, Some(0.0), "counters did not move");
}

/// Every cgroup file parser over mutated fixture files (see `support/mutate.rs`):
/// Ok or Err, never a panic.
#[test]
fn cgroup_parsers_survive_mutated_files() {
    type Parser = fn(&str) -> bool;
    let parsers: [(&str, Parser); 8] = [
        ("cpu.stat", |text| {
            files::pick(text, ["usage_usec", "nr_periods", "throttled_usec"]).is_ok()
        }),
        ("cpu.max", |text| files::cpu_max(text).is_ok()),
        ("memory.max", |text| files::limit(text).is_ok()),
        ("io.stat", |text| files::io_stat(text).is_ok()),
        ("cpu.pressure", |text| files::pressure(text).is_ok()),
        ("blkio.throttle.io_service_bytes_recursive", |text| {
            files::blkio_v1(text).is_ok()
        }),
        ("cpuacct.usage_all", |text| {
            files::cpuacct_usage_all(text).is_ok()
        }),
        ("pids.current", |text| files::single(text).is_ok()),
    ];
    let samples: Vec<(String, String)> = walk(&fixtures())
        .into_iter()
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_owned();
            Some((name, std::fs::read_to_string(&path).ok()?))
        })
        .collect();
    let mut runs = 0;
    for (file, parse) in parsers {
        let originals: Vec<&String> = samples
            .iter()
            .filter(|(name, _)| name == file)
            .map(|(_, text)| text)
            .collect();
        assert!(!originals.is_empty(), "no fixture named {file}");
        for original in originals {
            mutations(original, 1000, 0x2545_F491_4F6C_DD1D, |text| {
                parse(text);
                runs += 1;
            });
        }
    }
    assert!(runs >= 8000);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
