//! Parser tests over fixture trees: real captures from a 6.18 host (`real/`), older
//! or unusual layouts (`variants/`), and broken files (`malformed/`), plus a
//! mutation fuzz loop that feeds damaged captures to every parser.

use std::{fs, path::PathBuf};

use horcrux_test_support::mutate::mutations;

use horcrux_agent::{
    collector::node::{NodeCollector, NodeSources},
    model::DiskKind,
    procfs::{ParseError, diskstats, loadavg, meminfo, mountinfo, netdev, stat},
};

/// Every `/proc` parser, by the file it reads, with its value discarded.
type Parser = fn(&str) -> Result<(), ParseError>;
const PARSERS: [(&str, Parser); 6] = [
    ("stat", |text| stat::parse(text).map(drop)),
    ("meminfo", |text| meminfo::parse(text).map(drop)),
    ("loadavg", |text| loadavg::parse(text).map(drop)),
    ("diskstats", |text| diskstats::parse(text).map(drop)),
    ("net/dev", |text| netdev::parse(text).map(drop)),
    ("self/mountinfo", |text| mountinfo::parse(text).map(drop)),
];

fn fixture(tree: &str, file: &str) -> String {
    let path = fixtures().join(tree).join(file);
    fs::read_to_string(&path).unwrap_or_else(|error| panic!("fixture {}: {error}", path.display()))
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/proc")
}

#[test]
fn real_stat() {
    let stat = stat::parse(&fixture("real", "stat")).expect("parses");
    assert_eq!(stat.total.user, 25483);
    assert_eq!(stat.total.system, 5936);
    assert_eq!(stat.total.idle, 135357);
    assert_eq!(stat.total.iowait, 434);
    assert_eq!(stat.total.steal, 56);
    assert_eq!(stat.per_cpu.len(), 2);
    assert_eq!(stat.per_cpu[1].0, 1);
    assert_eq!(stat.per_cpu[1].1.user, 12850);
    assert!(stat.context_switches > 0 && stat.forks > 0 && stat.boot_time > 1_600_000_000);
}

#[test]
fn old_kernel_stat_with_seven_columns_and_offline_cpu() {
    let stat = stat::parse(&fixture("variants", "stat")).expect("parses");
    assert_eq!(stat.total.steal, 0, "absent columns read as 0");
    assert_eq!(stat.total.softirq, 2);
    let cpus: Vec<u32> = stat.per_cpu.iter().map(|(cpu, _)| *cpu).collect();
    assert_eq!(cpus, [0, 2], "CPU 1 offline");
    assert_eq!(
        (
            stat.context_switches,
            stat.forks,
            stat.procs_running,
            stat.procs_blocked
        ),
        (424242, 9001, 3, 1)
    );
}

#[test]
fn real_meminfo_in_bytes() {
    let text = fixture("real", "meminfo");
    let info = meminfo::parse(&text).expect("parses");
    let kib = |key: &str| -> u64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("{key}:")))
            .expect("key");
        line.split_whitespace()
            .nth(1)
            .expect("value")
            .parse::<u64>()
            .expect("number")
            * 1024
    };
    assert_eq!(info.total, kib("MemTotal"));
    assert_eq!(info.available, kib("MemAvailable"));
    assert_eq!(info.cache(), kib("Cached") + kib("SReclaimable"));
    assert_eq!(info.swap_total, kib("SwapTotal"));
}

#[test]
fn meminfo_without_mem_available_and_spec_used_formula() {
    let info = meminfo::parse(&fixture("variants", "meminfo")).expect("parses");
    assert_eq!(info.available, 0);
    // used = total - (free + buffers + cached + sreclaimable) = 1000 - 375 kB
    assert_eq!(info.used(), 625 * 1024);
}

#[test]
fn loadavg_real_and_busy() {
    let real = loadavg::parse(&fixture("real", "loadavg")).expect("parses");
    assert_eq!((real.one, real.five, real.fifteen), (0.42, 0.48, 0.28));
    assert_eq!((real.running_tasks, real.total_tasks), (1, 78));
    let busy = loadavg::parse(&fixture("variants", "loadavg")).expect("parses");
    assert_eq!(
        (busy.one, busy.running_tasks, busy.total_tasks),
        (12.5, 17, 1024)
    );
}

#[test]
fn diskstats_of_every_kernel_era() {
    let real = diskstats::parse(&fixture("real", "diskstats")).expect("parses");
    assert!(
        real.iter()
            .any(|disk| disk.name == "vda" && disk.major == 254)
    );
    let old = diskstats::parse(&fixture("variants", "diskstats")).expect("parses");
    let names: Vec<&str> = old.iter().map(|disk| disk.name.as_str()).collect();
    assert_eq!(names, ["sda", "sda1", "nvme0n1", "dm-0"]);
    assert_eq!(old[0].sectors_read, 20000, "14-field line");
    assert_eq!(old[0].discards, 0);
    assert_eq!(old[2].sectors_discarded, 32, "18-field line");
    assert_eq!(old[3].flushes, 9, "20-field line");
}

#[test]
fn netdev_real_and_wide_counters() {
    let real = netdev::parse(&fixture("real", "net/dev")).expect("parses");
    assert!(real.iter().any(|net| net.interface == "lo"));
    let wide = netdev::parse(&fixture("variants", "net/dev")).expect("parses");
    assert_eq!(wide[0].interface, "verylongifname0");
    assert_eq!(wide[0].rx_bytes, u64::MAX, "no space after the colon");
    assert_eq!((wide[0].tx_bytes, wide[0].tx_dropped), (9, 12));
}

#[test]
fn mountinfo_real_and_escaped() {
    let real = mountinfo::parse(&fixture("real", "self/mountinfo")).expect("parses");
    assert!(
        real.iter()
            .any(|mount| mount.mount_point == "/" && mount.fs_type == "ext4")
    );
    let escaped = mountinfo::parse(&fixture("variants", "self/mountinfo")).expect("parses");
    assert_eq!(escaped[1].mount_point, "/mnt/my disk");
    assert_eq!(escaped[1].source, "tmp fs");
    assert_eq!(escaped[2].super_options, "", "missing super options");
}

#[test]
fn malformed_files_are_errors_with_line_numbers_not_panics() {
    for (file, parse) in PARSERS {
        let error = parse(&fixture("malformed", file)).expect_err(file);
        assert!(!error.reason.is_empty(), "{file}: {error}");
        assert!(error.line <= 3, "{file}: {error}");
        // Empty input is an error or an empty result, never a panic.
        let _ = parse("");
    }
}

#[test]
fn collector_survives_a_tree_of_broken_files() {
    let mut collector = NodeCollector::new(NodeSources {
        proc_root: fixtures().join("malformed"),
        sys_block: fixtures().join("no-sysfs"),
        root_filesystem: "/".into(),
    });
    let metrics = collector.collect("host".into(), 1);
    assert!(metrics.cpu.is_none() && metrics.memory.is_none() && metrics.load.is_none());
    assert!(metrics.disks.is_none() && metrics.network.is_none() && metrics.filesystems.is_none());
    assert_eq!(metrics.cpu_usage, 0.0);
    assert!(metrics.disk_usage > 0.0, "statvfs of / still works");
    assert_eq!(collector.health.error_count, 6);
    assert_eq!(collector.health.errors_by_source.len(), 6);
    assert!(
        collector
            .health
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("line"))
    );
}

#[test]
fn collector_publishes_every_source_beside_an_unreachable_mount() {
    let mut collector = NodeCollector::new(NodeSources {
        proc_root: fixtures().join("variants"),
        sys_block: fixtures().join("no-sysfs"),
        root_filesystem: "/".into(),
    });
    let first = collector.collect("host".into(), 1);
    assert_eq!(first.cpu_usage, 0.0, "first sample, per the spec");
    assert!(
        first
            .cpu
            .as_ref()
            .is_some_and(|cpu| cpu.usage_percent.is_none())
    );
    let disks = first.disks.expect("disks");
    assert!(
        disks.iter().all(|disk| disk.kind == DiskKind::Disk),
        "no sysfs: all whole disks"
    );
    assert_eq!(disks[0].read_bytes_total, 20000 * 512);
    let memory = first.memory.expect("memory");
    assert!((memory.usage_percent - 62.5).abs() < 1e-9);
    assert_eq!(first.load_average_1m, 12.5);
    // "/mnt/my disk" is listed but not mounted here: its statvfs fails, "/" is still reported.
    let filesystems = first.filesystems.expect("filesystems");
    assert_eq!(
        filesystems
            .iter()
            .map(|fs| fs.mount_point.as_str())
            .collect::<Vec<_>>(),
        ["/"]
    );
    assert_eq!(collector.health.error_count, 1);
    assert!(collector.health.errors_by_source.contains_key("statvfs"));
}

/// Mutated captures (see `support/mutate.rs`): every parser returns Ok or Err, never panics.
#[test]
fn parsers_survive_mutated_captures() {
    for (file, parse) in PARSERS {
        for tree in ["real", "variants"] {
            mutations(&fixture(tree, file), 2000, 0x9E37_79B9_7F4A_7C15, |text| {
                let _ = parse(text);
            });
        }
    }
}

/// The VM sources' parsers: QEMU command lines (what a VM's owner writes), `stat`,
/// `schedstat` and `cgroup` of a QEMU process, QMP replies and libvirt stats.
#[test]
fn vm_parsers_survive_mutated_inputs() {
    use horcrux_agent::vm::{libvirt, qemu, qmp};
    let cmdline = "qemu-system-x86_64 -name guest=web,debug-threads=on -uuid 6a1c0e2e-0000-4000-8000-000000000001 \
                   -m size=2097152k -smp 2,sockets=2 -accel kvm -qmp unix:/run/q.sock,server=on,wait=off \
                   -chardev socket,id=mon,path=/tmp/m.sock,server=on -mon chardev=mon,mode=control \
                   -netdev tap,id=n0,ifname=tap0,script=no";
    mutations(cmdline, 2000, 0x51_7C_C1_B7, |text| {
        let args: Vec<String> = text.split(' ').map(str::to_owned).collect();
        let _ = qemu::parse_args(&args);
    });
    let stat = "4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 7 0 123456 1000000 2048";
    mutations(stat, 2000, 0x2545_F491, |text| {
        let _ = qemu::parse_process_stat(text);
        let _ = qemu::parse_schedstat(text);
        let _ = qemu::parse_process_cgroups(text);
    });
    let blockstats = r##"[{"device": "d0", "node-name": "#block2", "stats": {"rd_bytes": 512, "wr_bytes": 67108864, "rd_operations": 1}}]"##;
    mutations(blockstats, 2000, 0x9E37_79B9, |text| {
        if let Ok(value) = serde_json::from_str(text) {
            let _ = qmp::disks(&value);
        }
    });
    let domstats = "state.state=1\nvcpu.maximum=2\nvcpu.0.time=5\nvcpu.0.exits.sum=3\nblock.count=1\n\
                    block.0.name=vda\nblock.0.rd.bytes=512\nnet.count=1\nnet.0.name=vnet0\nballoon.current=65536";
    mutations(domstats, 2000, 0xC2B2_AE35, |text| {
        let params: Vec<(String, libvirt::Param)> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| {
                let value = value
                    .parse()
                    .map(libvirt::Param::Number)
                    .unwrap_or_else(|_| libvirt::Param::Text(value.to_owned()));
                (key.to_owned(), value)
            })
            .collect();
        let _ = libvirt::LibvirtDomain::from_params("x".into(), "u".into(), &params);
    });
}
