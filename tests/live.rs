//! Live tests: the node collector on this machine's real `/proc`, compared with
//! independent tools (procps `free`, coreutils `df`, iproute2 `ip`, procps `uptime`)
//! and sysfs. Values move while we measure, so each reference reading is bracketed
//! by two collections and must lie between them (with a small slack).

use std::{collections::HashMap, process::Command};

use horcrux_agent::{
    collector::node::{NodeCollector, NodeSources},
    model::NodeMetrics,
};

fn collect() -> NodeMetrics {
    let mut collector = NodeCollector::new(NodeSources::default());
    let metrics = collector.collect("live".into(), 0);
    assert_eq!(
        collector.health.error_count, 0,
        "{:?}",
        collector.health.last_error
    );
    metrics
}

fn tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("{program} is needed as a reference (cargo xtask setup installs it): {error}")
        });
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts `reference` lies within [min(a,b) - slack, max(a,b) + slack].
fn assert_bracketed(what: &str, before: u64, reference: u64, after: u64, slack: u64) {
    let low = before.min(after).saturating_sub(slack);
    let high = before.max(after).saturating_add(slack);
    assert!(
        (low..=high).contains(&reference),
        "{what}: reference {reference} outside our readings {before}..{after} (slack {slack})"
    );
}

const MIB: u64 = 1024 * 1024;

#[test]
fn memory_matches_procps_free() {
    let before = collect().memory.expect("memory");
    let free = tool("free", &["-b"]);
    let after = collect().memory.expect("memory");
    // "Mem:  total used free shared buff/cache available"
    let columns: Vec<u64> = free
        .lines()
        .find(|line| line.starts_with("Mem:"))
        .expect("Mem: line")
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().expect("number"))
        .collect();
    let [
        total,
        _used_total_minus_available,
        free,
        shared,
        buff_cache,
        available,
    ] = columns[..]
    else {
        panic!("unexpected free output: {free}")
    };
    assert_eq!(before.total_bytes, total);
    assert_bracketed("free", before.free_bytes, free, after.free_bytes, 8 * MIB);
    assert_bracketed(
        "shared",
        before.shared_bytes,
        shared,
        after.shared_bytes,
        8 * MIB,
    );
    let cache = |m: &horcrux_agent::model::MemoryMetrics| m.buffers_bytes + m.cached_bytes;
    assert_bracketed(
        "buff/cache",
        cache(&before),
        buff_cache,
        cache(&after),
        8 * MIB,
    );
    assert_bracketed(
        "available",
        before.available_bytes,
        available,
        after.available_bytes,
        8 * MIB,
    );
    // The spec's used = total - free - buffers - cache, from free's own columns.
    assert_bracketed(
        "used",
        before.used_bytes,
        total - free - buff_cache,
        after.used_bytes,
        16 * MIB,
    );
    let expected_percent = before.used_bytes as f64 * 100.0 / before.total_bytes as f64;
    assert!((before.usage_percent - expected_percent).abs() < 1e-9);
}

#[test]
fn filesystems_match_df() {
    let before = collect();
    let df = tool(
        "df",
        &["-B1", "--output=size,used,avail,pcent,itotal,iused,target"],
    );
    let after = collect();
    let by_target: HashMap<&str, Vec<u64>> = df
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let numbers = fields[..6]
                .iter()
                .map(|field| field.trim_end_matches('%').parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            Some((*fields.last()?, numbers))
        })
        .collect();
    let ours = before.filesystems.expect("filesystems");
    let later = after.filesystems.expect("filesystems");
    assert!(
        ours.iter().any(|fs| fs.mount_point == "/"),
        "root filesystem listed"
    );
    for (fs, fs_after) in ours.iter().zip(&later) {
        let Some(reference) = by_target.get(fs.mount_point.as_str()) else {
            panic!("{} is not in df's list:\n{df}", fs.mount_point)
        };
        let [size, used, avail, pcent, inodes, inodes_used] = reference[..] else {
            unreachable!()
        };
        assert_eq!(fs.size_bytes, size, "{}", fs.mount_point);
        assert_bracketed(
            &fs.mount_point,
            fs.used_bytes,
            used,
            fs_after.used_bytes,
            16 * MIB,
        );
        assert_bracketed(
            &fs.mount_point,
            fs.available_bytes,
            avail,
            fs_after.available_bytes,
            16 * MIB,
        );
        assert_eq!(fs.inodes_total, inodes, "{}", fs.mount_point);
        assert_bracketed(
            &fs.mount_point,
            fs.inodes_used,
            inodes_used,
            fs_after.inodes_used,
            1000,
        );
        // df rounds Use% up to a whole percent.
        assert!(
            (fs.usage_percent.ceil() - pcent as f64).abs() <= 1.0,
            "{}: {} vs df {pcent}%",
            fs.mount_point,
            fs.usage_percent
        );
        if fs.mount_point == "/" {
            assert!(
                (before.disk_usage.ceil() - pcent as f64).abs() <= 1.0,
                "disk_usage vs df"
            );
        }
    }
}

#[test]
fn network_matches_ip_link() {
    let before = collect().network.expect("network");
    let ip = tool("ip", &["-s", "-o", "link"]);
    let after = collect().network.expect("network");
    for (ours, ours_after) in before.iter().zip(&after) {
        // "1: lo: <...> ...\    RX: bytes packets errors dropped ...\    N N N N ...\    TX: ..."
        let line = ip
            .lines()
            .find(|line| {
                line.split(": ").nth(1).map(|name| name.split('@').next())
                    == Some(Some(&ours.interface))
            })
            .unwrap_or_else(|| panic!("{} not in ip -s -o link", ours.interface));
        let blocks: Vec<Vec<u64>> = line
            .split('\\')
            .map(|part| {
                part.split_whitespace()
                    .filter_map(|field| field.parse().ok())
                    .collect()
            })
            .filter(|numbers: &Vec<u64>| numbers.len() >= 4)
            .collect();
        let (rx, tx) = (&blocks[0], &blocks[1]);
        let check = |what: &str, ours: u64, reference: u64, later: u64| {
            assert_bracketed(
                &format!("{} {what}", ours_after.interface),
                ours,
                reference,
                later,
                0,
            )
        };
        check(
            "rx bytes",
            ours.counters.rx_bytes_total,
            rx[0],
            ours_after.counters.rx_bytes_total,
        );
        check(
            "rx packets",
            ours.counters.rx_packets_total,
            rx[1],
            ours_after.counters.rx_packets_total,
        );
        check(
            "rx errors",
            ours.counters.rx_errors_total,
            rx[2],
            ours_after.counters.rx_errors_total,
        );
        check(
            "tx bytes",
            ours.counters.tx_bytes_total,
            tx[0],
            ours_after.counters.tx_bytes_total,
        );
        check(
            "tx packets",
            ours.counters.tx_packets_total,
            tx[1],
            ours_after.counters.tx_packets_total,
        );
    }
}

#[test]
fn load_average_matches_uptime() {
    let before = collect();
    let uptime = tool("uptime", &[]);
    let after = collect();
    let averages: Vec<f64> = uptime
        .rsplit("load average:")
        .next()
        .expect("load average")
        .split(',')
        .map(|field| field.trim().parse().expect("number"))
        .collect();
    let ours = [
        before.load_average_1m,
        before.load_average_5m,
        before.load_average_15m,
    ];
    let later = [
        after.load_average_1m,
        after.load_average_5m,
        after.load_average_15m,
    ];
    for i in 0..3 {
        let (low, high) = (ours[i].min(later[i]), ours[i].max(later[i]));
        assert!(
            (low - 0.005..=high + 0.005).contains(&averages[i]),
            "{averages:?} vs {ours:?}..{later:?}"
        );
    }
    let load = before.load.expect("load");
    assert!(load.running_tasks >= 1 && load.total_tasks > load.running_tasks);
}

#[test]
fn disks_match_sysfs_block_stat() {
    let before = collect().disks.expect("disks");
    let sysfs: Vec<Option<String>> = before
        .iter()
        .map(|disk| std::fs::read_to_string(format!("/sys/class/block/{}/stat", disk.device)).ok())
        .collect();
    let after = collect().disks.expect("disks");
    assert!(!before.is_empty(), "this machine has a block device");
    for ((ours, later), stat) in before.iter().zip(&after).zip(sysfs) {
        let stat = stat.unwrap_or_else(|| panic!("/sys/class/block/{}/stat missing", ours.device));
        let fields: Vec<u64> = stat
            .split_whitespace()
            .map(|field| field.parse().expect("number"))
            .collect();
        assert_bracketed(
            &ours.device,
            ours.reads_total,
            fields[0],
            later.reads_total,
            0,
        );
        assert_bracketed(
            &ours.device,
            ours.read_bytes_total,
            fields[2] * 512,
            later.read_bytes_total,
            0,
        );
        assert_bracketed(
            &ours.device,
            ours.writes_total,
            fields[4],
            later.writes_total,
            0,
        );
        assert_bracketed(
            &ours.device,
            ours.write_bytes_total,
            fields[6] * 512,
            later.write_bytes_total,
            0,
        );
        assert!(!ours.device.starts_with("loop") && !ours.device.starts_with("ram"));
    }
}

#[test]
fn cpu_percentages_partition_the_interval() {
    let mut collector = NodeCollector::new(NodeSources::default());
    collector.collect("live".into(), 0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let cpu = collector.collect("live".into(), 0).cpu.expect("cpu");
    let modes = cpu.modes_percent.expect("second sample has rates");
    let sum = modes.user
        + modes.nice
        + modes.system
        + modes.idle
        + modes.iowait
        + modes.irq
        + modes.softirq
        + modes.steal;
    assert!((sum - 100.0).abs() < 1e-6, "modes sum to {sum}");
    assert_eq!(
        cpu.per_cpu.len(),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
}
