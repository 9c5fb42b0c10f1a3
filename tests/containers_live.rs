//! Live container tests (root): cgroups named like Docker containers are created in
//! this host's real hierarchies (every v1 controller and the cgroup2 tree), real
//! workloads run inside them, and the collector's numbers are compared with the
//! kernel's own counters for the same cgroup. Everything created is removed in
//! `Drop`, also when an assertion fails.

use horcrux_test_support::cgroup;

use std::{process::Command, time::Duration};

use cgroup::{TestCgroup, hierarchies, serial, wait_for};
use horcrux_agent::{
    cgroup::stats::CgroupReader,
    collector::containers::ContainerCollector,
    model::{ContainerMetrics, ContainerState},
};

const MIB: u64 = 1024 * 1024;

fn collect(cgroup: &TestCgroup, collector: &mut ContainerCollector) -> ContainerMetrics {
    collector
        .collect(0, None)
        .containers
        .into_iter()
        .find(|container| container.id == cgroup.id)
        .expect("the test cgroup is discovered as a Docker container")
}

fn collector() -> ContainerCollector {
    let psi = std::fs::read_to_string("/proc/pressure/cpu").is_ok();
    ContainerCollector::new(
        CgroupReader::new(hierarchies(), psi),
        "/proc",
        Default::default(),
    )
}

fn between(what: &str, low: u64, value: u64, high: u64) {
    assert!(
        (low..=high).contains(&value),
        "{what}: {value} not within {low}..={high}"
    );
}

#[test]
#[ignore = "needs root: creates cgroups"]
fn cpu_burner_with_a_half_cpu_quota() {
    let _serial = serial();
    let mut cgroup = TestCgroup::new();
    cgroup.write("cpu", "cpu.cfs_period_us", "100000");
    cgroup.write("cpu", "cpu.cfs_quota_us", "50000");
    cgroup.run("while :; do :; done", "");
    let mut collector = collector();
    std::thread::sleep(Duration::from_millis(500));
    let kernel_before: u64 = cgroup
        .kernel_value("cpuacct", "cpuacct.usage")
        .trim()
        .parse()
        .expect("ns");
    collect(&cgroup, &mut collector);
    std::thread::sleep(Duration::from_secs(2));
    let metrics = collect(&cgroup, &mut collector);
    let kernel_after: u64 = cgroup
        .kernel_value("cpuacct", "cpuacct.usage")
        .trim()
        .parse()
        .expect("ns");

    let cpu = metrics.usage.cpu.expect("cpu");
    let ours_ns = (cpu.usage_seconds_total * 1e9) as u64;
    between(
        "usage vs cpuacct.usage",
        kernel_before,
        ours_ns,
        kernel_after,
    );
    assert_eq!(cpu.limit_cores, Some(0.5));
    let percent = metrics.cpu_usage_percent.expect("second sample has a rate");
    assert!(
        (40.0..=55.0).contains(&percent),
        "a busy loop under a 0.5 CPU quota used {percent}%"
    );
    let throttling = cpu.throttling.expect("throttling");
    assert!(throttling.throttled_periods_total > 0, "{throttling:?}");
    let kernel_stat = cgroup.kernel_value("cpu", "cpu.stat");
    let kernel_throttled: u64 = kernel_stat
        .lines()
        .find_map(|line| line.strip_prefix("nr_throttled "))
        .and_then(|value| value.parse().ok())
        .expect("nr_throttled");
    assert!(throttling.throttled_periods_total <= kernel_throttled);
    assert_eq!(metrics.state, ContainerState::Running);
    assert_eq!(metrics.usage.pids.expect("pids").current, 1);
}

#[test]
#[ignore = "needs root: creates cgroups"]
fn memory_allocation_of_known_size() {
    let _serial = serial();
    let mut cgroup = TestCgroup::new();
    cgroup.write("memory", "memory.limit_in_bytes", &(256 * MIB).to_string());
    // 96 MiB of written (not just reserved) anonymous memory, then wait.
    cgroup.run(
        "exec python3 -c \"$PROGRAM\"",
        "import time\nb = b'x' * (96 << 20)\ntime.sleep(60)",
    );
    // Until the kernel counts all 96 MiB as anonymous: usage alone (with the
    // interpreter's page cache) gets there while the bytes are still being written.
    wait_for(|| {
        let anon = cgroup
            .kernel_value("memory", "memory.stat")
            .lines()
            .find_map(|line| line.strip_prefix("rss ")?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        anon >= 96 * MIB
    });
    let mut collector = collector();
    let before: u64 = cgroup
        .kernel_value("memory", "memory.usage_in_bytes")
        .trim()
        .parse()
        .expect("bytes");
    let metrics = collect(&cgroup, &mut collector);
    let after: u64 = cgroup
        .kernel_value("memory", "memory.usage_in_bytes")
        .trim()
        .parse()
        .expect("bytes");
    let usage = metrics.memory_usage_bytes.expect("usage");
    between(
        "memory usage vs memory.usage_in_bytes",
        before.min(after),
        usage,
        before.max(after),
    );
    assert_eq!(metrics.memory_limit_bytes, Some(256 * MIB));
    let memory = metrics.usage.memory.expect("memory");
    assert!(memory.anon_bytes >= 96 * MIB, "anon {}", memory.anon_bytes);
    assert!(memory.working_set_bytes >= 96 * MIB && memory.working_set_bytes <= usage);
    assert_eq!(memory.oom_kills_total, Some(0));
}

#[test]
#[ignore = "needs root: creates cgroups"]
fn direct_io_write_counts_with_a_throttle_rule_and_is_unavailable_without() {
    let _serial = serial();
    let dir =
        tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir on a real block device");
    let device = {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(dir.path()).expect("stat").dev();
        format!(
            "{}:{}",
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev)
        )
    };
    let mut cgroup = TestCgroup::new();
    let first = collect(&cgroup, &mut collector());
    assert!(
        first.block_write_bytes.is_none(),
        "no throttle rule: not a confident 0"
    );
    assert!(first.unavailable["block_io"].contains("throttle"));

    // A rule far above anything this disk can do makes blk-throttle account the cgroup.
    if std::fs::write(
        cgroup.controller_file("blkio", "blkio.throttle.write_bps_device"),
        format!("{device} 100000000000"),
    )
    .is_err()
    {
        eprintln!("SKIPPED the counted half: {device} takes no blk-throttle rule (a partition?)");
        return;
    }
    // Limits and rules are re-read every few cycles; a fresh collector reads them now.
    let mut collector = collector();
    let file = dir.path().join("direct.bin");
    let pid = cgroup.run(
        &format!(
            "dd if=/dev/zero of={} bs=1M count=64 oflag=direct status=none; exec sleep 60",
            file.display()
        ),
        "",
    );
    wait_for(|| {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.starts_with("sleep"))
    });
    let metrics = collect(&cgroup, &mut collector);
    let written = metrics
        .block_write_bytes
        .expect("a rule makes v1 blkio trustworthy");
    let kernel = cgroup.kernel_value("blkio", "blkio.throttle.io_service_bytes_recursive");
    let kernel_written: u64 = kernel
        .lines()
        .filter(|line| line.contains(" Write "))
        .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum();
    assert_eq!(written, kernel_written, "same as the kernel's counter");
    let expected = 64 * MIB;
    assert!(
        written.abs_diff(expected) * 100 <= expected,
        "wrote {written} bytes, expected {expected} ± 1%"
    );
    let block = metrics.usage.block_io.expect("block io");
    assert!(
        block.totals.writes_total >= 64,
        "{} write ops",
        block.totals.writes_total
    );
}

#[test]
#[ignore = "needs root: creates cgroups"]
fn network_namespace_traffic_over_a_veth_pair() {
    let _serial = serial();
    let mut cgroup = TestCgroup::new();
    let suffix = cgroup.id[..6].to_owned();
    let (inside, peer) = (format!("hxa{suffix}"), format!("hxb{suffix}"));
    for namespace in [&inside, &peer] {
        assert!(
            Command::new("ip")
                .args(["netns", "add", namespace])
                .status()
                .expect("ip")
                .success()
        );
        cgroup.namespaces.push(namespace.clone());
    }
    // Both ends live in namespaces this test made: no host interface or route is touched.
    let ip = |args: &str| {
        let status = Command::new("sh")
            .args(["-c", &format!("ip {args}")])
            .status()
            .expect("ip");
        assert!(status.success(), "ip {args}");
    };
    ip(&format!(
        "link add va{suffix} netns {inside} type veth peer name vb{suffix} netns {peer}"
    ));
    ip(&format!(
        "-n {inside} addr add 10.213.0.1/30 dev va{suffix}"
    ));
    ip(&format!("-n {peer} addr add 10.213.0.2/30 dev vb{suffix}"));
    ip(&format!("-n {inside} link set va{suffix} up"));
    ip(&format!("-n {peer} link set vb{suffix} up"));

    // The container's process sends 4 MiB of UDP to the peer namespace, then stays.
    let sender = "import socket, time\n\
                  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  for _ in range(4096): s.sendto(b'x' * 1024, ('10.213.0.2', 9))\n\
                  time.sleep(60)";
    let mut collector = collector();
    // Join the cgroup first: `ip netns exec` remounts /sys, hiding the cgroup files.
    let pid = cgroup.run(
        &format!("exec ip netns exec {inside} python3 -c \"$PROGRAM\""),
        sender,
    );
    std::thread::sleep(Duration::from_millis(500));
    let reference = |interface: &str| -> u64 {
        let output = Command::new("ip")
            .args(["-n", &inside, "-s", "-o", "link", "show", interface])
            .output()
            .expect("ip -s link");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        // "... TX: bytes packets ...\    N N ..." : the first number after "TX:".
        text.split("TX:")
            .nth(1)
            .and_then(|tx| tx.split('\\').nth(1))
            .and_then(|numbers| numbers.split_whitespace().next()?.parse().ok())
            .expect("TX bytes")
    };
    let before = reference(&format!("va{suffix}"));
    let metrics = collect(&cgroup, &mut collector);
    let after = reference(&format!("va{suffix}"));
    let network = metrics.network.as_ref().expect("own network namespace");
    let tx = metrics.network_tx_bytes.expect("tx");
    between("tx bytes vs ip -s link", before, tx, after);
    assert!(tx >= 4096 * 1024, "sent 4 MiB of payload, counted {tx}");
    assert!(
        network.interfaces.iter().any(|net| net.interface == "lo"),
        "lo is listed but not summed"
    );
    assert_eq!(
        network.netns_inode,
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|meta| std::os::unix::fs::MetadataExt::ino(&meta))
            .expect("ns")
    );
}

#[test]
#[ignore = "needs root: creates cgroups"]
fn a_container_in_the_host_network_namespace_is_not_credited_host_traffic() {
    let _serial = serial();
    let mut cgroup = TestCgroup::new();
    cgroup.run("exec sleep 60", "");
    let metrics = collect(&cgroup, &mut collector());
    assert_eq!(metrics.network_rx_bytes, None);
    assert!(metrics.unavailable["network"].contains("host network namespace"));
}
