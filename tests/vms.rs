//! VM metrics end-to-end, with real guests (root): a plain QEMU running Debian's
//! kernel under TCG with a workload initramfs, boot-sector guests under KVM,
//! libvirt domains, and hostile QMP sockets. References: the tests' own QMP
//! session, `ip -s link` of the tap, `/proc/<pid>/task/<tid>/{stat,schedstat}`,
//! `virsh domstats`.
// Each #[tokio::test] runs on its own runtime: holding the serial guard across
// awaits blocks only other tests, which is its purpose.
#![allow(clippy::await_holding_lock)]

mod common;

use std::{
    io::Read,
    os::unix::net::{UnixListener, UnixStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Agent, Socket, promtool_check, wait_for_message};
use horcrux_test_support::{
    cgroup::TestCgroup,
    vm::{self, HALT, Libvirtd, Qemu, SPIN, Tap, WorkloadGuest, virsh},
};
use serde_json::Value;

const CONFIG: &str = "[monitoring]\nvm_metrics_interval = 1\n";

/// Polls `GET /api/vms/{id}/metrics` until `ready` holds (60 s at most).
async fn vm_when(agent: &Agent, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, vm) = agent.get(&format!("/api/vms/{id}/metrics")).await;
        if status == 200 && ready(&vm) {
            return vm;
        }
        assert!(
            Instant::now() < deadline,
            "VM {id} never got there; last answer {status}: {vm}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the VM collector has run `cycles` more cycles.
async fn vm_cycles(agent: &Agent, cycles: u64) {
    let count = |status: &Value| status["collectors"]["vms"]["cycles"].as_u64().unwrap_or(0);
    let start = count(&agent.get("/api/status").await.1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&agent.get("/api/status").await.1) < start + cycles {
        assert!(Instant::now() < deadline, "the VM collector stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn websocket(agent: &Agent) -> Socket {
    tokio_tungstenite::connect_async(agent.ws_url())
        .await
        .expect("WebSocket")
        .0
}

/// Waits for the `VmStatusChanged` of `id` to `status` and returns how long it took.
async fn status_change(
    socket: &mut Socket,
    id: &str,
    status: Option<&str>,
    since: Instant,
) -> Duration {
    let wanted = status.map(Value::from).unwrap_or(Value::Null);
    wait_for_message(socket, |message| {
        message["type"] == "VmStatusChanged"
            && message["vm_id"] == id
            && message["new_status"] == wanted
    })
    .await;
    since.elapsed()
}

fn disk<'a>(vm: &'a Value, device: &str) -> &'a Value {
    vm["disks"]
        .as_array()
        .and_then(|disks| disks.iter().find(|disk| disk["device"] == device))
        .unwrap_or_else(|| panic!("no disk {device} in {}", vm["disks"]))
}

fn interface<'a>(vm: &'a Value, device: &str) -> Option<&'a Value> {
    vm["interfaces"]
        .as_array()?
        .iter()
        .find(|interface| interface["device"] == device)
}

fn number(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: boots a QEMU guest, creates a tap device and a cgroup"]
async fn a_plain_qemu_guest_is_measured_from_qmp_proc_and_its_tap() {
    let _serial = vm::serial();
    const UUID: &str = "5f2c3d4e-0000-4000-8000-0000000000a1";
    let tap = Tap::new("hxtap0");
    let cgroup = TestCgroup::vm("hx-plain");
    let mut guest = WorkloadGuest::boot("hx-plain", UUID, &tap.name);
    cgroup.adopt(guest.qemu.pid());
    let agent = Agent::start(CONFIG);
    agent.wait_ready().await;
    let vm = vm_when(&agent, "hx-plain", |vm| {
        vm["sources"]
            .as_array()
            .is_some_and(|s| s.contains(&"qmp".into()))
    })
    .await;
    assert_eq!(vm["source"], "qemu");
    assert_eq!(vm["uuid"], UUID);
    assert_eq!(vm["pid"], guest.qemu.pid());
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["memory_limit_bytes"], 256u64 << 20);
    assert_eq!(vm["memory"]["balloon_actual_bytes"], 256u64 << 20);
    assert_eq!(vm["cgroup"]["path"], "/horcrux-vms/hx-plain");
    // Found by uuid too; the default empty drives are not disks.
    let (status, by_uuid) = agent.get(&format!("/api/vms/{UUID}/metrics")).await;
    assert_eq!((status, &by_uuid["id"]), (200, &Value::from("hx-plain")));
    assert_eq!(
        vm["disks"].as_array().map(Vec::len),
        Some(1),
        "{}",
        vm["disks"]
    );

    // Block: 64 MiB written with O_DIRECT by the guest.
    let written = 64u64 << 20;
    guest.console.run("write 64", Duration::from_secs(120));
    let vm = vm_when(&agent, "hx-plain", |vm| {
        disk(vm, "disk0")["write_bytes_total"].as_u64() >= Some(written)
    })
    .await;
    let reported = number(&disk(&vm, "disk0")["write_bytes_total"]);
    let blockstats = guest.qemu.qmp().execute("query-blockstats", Value::Null);
    let qmp_bytes = blockstats
        .as_array()
        .and_then(|drives| drives.iter().find(|drive| drive["device"] == "disk0"))
        .map(|drive| number(&drive["stats"]["wr_bytes"]))
        .expect("disk0 in query-blockstats");
    assert_eq!(reported, qmp_bytes, "the agent's figure is QEMU's");
    assert!(
        reported.abs_diff(written) * 100 <= written,
        "{reported} bytes reported for {written} written"
    );
    assert_eq!(vm["block_write_bytes"], reported);

    // Network: pings over the guest's NIC, against the tap's own counters.
    guest.console.run("net 20", Duration::from_secs(120));
    let vm = vm_when(&agent, "hx-plain", |vm| {
        interface(vm, "hxtap0").is_some_and(|nic| nic["tx_packets_total"].as_u64() >= Some(20))
    })
    .await;
    vm_cycles(&agent, 2).await;
    let host_before = tap.host_counters();
    let vm_now = agent.get("/api/vms/hx-plain/metrics").await.1;
    let host_after = tap.host_counters();
    let nic = interface(&vm_now, "hxtap0").expect("hxtap0");
    // The guest transmits what the host's tap receives, and the reverse.
    for (guest_field, host_index) in [
        ("tx_bytes_total", 0),
        ("tx_packets_total", 1),
        ("rx_bytes_total", 2),
        ("rx_packets_total", 3),
    ] {
        let value = number(&nic[guest_field]);
        assert!(
            host_before[host_index] <= value && value <= host_after[host_index],
            "{guest_field} {value} outside the tap's {} ..= {}",
            host_before[host_index],
            host_after[host_index]
        );
    }
    assert!(number(&nic["tx_bytes_total"]) >= 20 * 1000, "{nic}");
    assert_eq!(
        vm["network_tx_bytes"],
        vm["interfaces"][0]["tx_bytes_total"]
    );

    // The VM's cgroup and process: what the host spends on it.
    assert!(
        vm["cgroup"]["memory"]["usage_bytes"].as_u64() > Some(0),
        "{}",
        vm["cgroup"]
    );
    assert!(
        vm["process"]["rss_bytes"].as_u64() > Some(16 << 20),
        "{}",
        vm["process"]
    );
    let status = agent.get("/api/status").await.1;
    if status["ebpf"]["attached_programs"].as_u64() > Some(0) {
        assert!(
            vm["ebpf"]["sched"]["oncpu_ns"].as_u64() > Some(0),
            "eBPF on-CPU time of the VM's cgroup: {}",
            vm["ebpf"]
        );
    }

    // State changes: pause and resume over QMP, then a guest power-off.
    let mut socket = websocket(&agent).await;
    let started = Instant::now();
    guest.qemu.qmp().execute("stop", Value::Null);
    let paused = status_change(&mut socket, "hx-plain", Some("paused"), started).await;
    // Paused, the balloon driver's report stands still: the agent's guest memory
    // equals the test's own qom-get of it.
    vm_cycles(&agent, 2).await;
    let vm = agent.get("/api/vms/hx-plain/metrics").await.1;
    let mut qmp = guest.qemu.qmp();
    let balloon = ["/machine/peripheral", "/machine/peripheral-anon"]
        .iter()
        .find_map(|container| {
            let children = qmp.execute("qom-list", serde_json::json!({ "path": container }));
            let child = children.as_array()?.iter().find(|child| {
                child["type"]
                    .as_str()
                    .is_some_and(|kind| kind.starts_with("child<virtio-balloon"))
            })?;
            Some(format!("{container}/{}", child["name"].as_str()?))
        })
        .expect("the balloon device");
    let reported = qmp.execute(
        "qom-get",
        serde_json::json!({ "path": balloon, "property": "guest-stats" }),
    );
    drop(qmp);
    let guest_memory = &vm["memory"]["guest"];
    for (field, stat) in [
        ("available_bytes", "stat-total-memory"),
        ("unused_bytes", "stat-free-memory"),
        ("usable_bytes", "stat-available-memory"),
        ("disk_caches_bytes", "stat-disk-caches"),
        ("minor_faults_total", "stat-minor-faults"),
    ] {
        assert_eq!(
            guest_memory[field], reported["stats"][stat],
            "{field}: {reported}"
        );
    }
    assert!(
        guest_memory["available_bytes"].as_u64() > Some(128 << 20),
        "{guest_memory}"
    );
    let started = Instant::now();
    guest.qemu.qmp().execute("cont", Value::Null);
    let resumed = status_change(&mut socket, "hx-plain", Some("running"), started).await;
    // Power-off: timed from QEMU's exit (the guest kernel takes its time to get there).
    let asked = Instant::now();
    guest.console.power_off();
    guest.qemu.wait_exit();
    let exited = Instant::now();
    let off = status_change(&mut socket, "hx-plain", Some("shutoff"), exited).await;
    eprintln!(
        "VmStatusChanged after: pause {paused:?}, resume {resumed:?}, \
         power-off {off:?} after QEMU exited ({:?} after the guest was asked)",
        exited - asked
    );
    for (what, took) in [("pause", paused), ("resume", resumed), ("power-off", off)] {
        assert!(
            took < Duration::from_secs(2),
            "{what} reported after {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs KVM guests and pins threads"]
async fn kvm_guests_show_vcpu_threads_steal_and_kvm_statistics() {
    let _serial = vm::serial();
    let qemu = Qemu::kvm("hx-kvm", SPIN, 1, true);
    // History and a VM alert rule: the spinning guest keeps its QEMU at one CPU.
    let agent = Agent::start(
        "[monitoring]\nvm_metrics_interval = 1\nenable_history = true\n\
         [[alerts]]\nname = \"vm-busy\"\nmetric = \"cpu_usage_percent\"\nscope = \"vm\"\n\
         target = \"hx-*\"\nop = \">\"\nthreshold = 50\nfor = 1\n",
    );
    agent.wait_ready().await;
    let vm = vm_when(&agent, "hx-kvm", |vm| {
        vm["kvm"]["exits"].as_u64() > Some(0) && vm["cpu"]["vcpus"][0]["usage_percent"].is_number()
    })
    .await;
    let threads = qemu.vcpu_threads();
    assert_eq!(threads.len(), 1, "QEMU names its vCPU thread CPU 0/KVM");
    let vcpu_thread = threads[0];
    assert_eq!(vm["cpu"]["vcpus"][0]["thread_id"], vcpu_thread);
    assert!(vm["cpu"]["vcpus"][0]["kvm"]["exits"].as_u64() > Some(0));

    // vCPU time bracketed by the thread's own counters around a full agent cycle.
    let pid = qemu.pid();
    let before = vm::thread_cpu_seconds(pid, vcpu_thread);
    vm_cycles(&agent, 2).await;
    let reported =
        agent.get("/api/vms/hx-kvm/metrics").await.1["cpu"]["vcpus"][0]["time_seconds_total"]
            .as_f64()
            .expect("vCPU time");
    let after = vm::thread_cpu_seconds(pid, vcpu_thread);
    assert!(
        before - 0.02 <= reported && reported <= after + 0.02,
        "vCPU time {reported} s outside the thread's {before} ..= {after} s"
    );

    // History and alerts of the VM scope.
    let (code, history) = agent
        .get("/api/vms/hx-kvm/history?metric=steal_percent&range=60")
        .await;
    assert_eq!(code, 200, "{history}");
    assert!(
        history["points"]
            .as_array()
            .is_some_and(|points| points.len() >= 3),
        "{history}"
    );
    // It fires while the guest spins alone (a hog on its CPU later halves the
    // QEMU's CPU, which may resolve it).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alerts = agent.get("/api/alerts").await.1;
        let active = alerts["active"].as_array().is_some_and(|alerts| {
            alerts
                .iter()
                .any(|alert| alert["rule"] == "vm-busy" && alert["target_name"] == "hx-kvm")
        });
        if active {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VM alert never fired: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Run-queue wait (the guest's steal): ≈0 alone on a CPU, large with a hog there.
    let pin = |pid: u32| {
        let ok = Command::new("taskset")
            .args(["-p", "-c", "1", &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(ok, "taskset");
    };
    pin(vcpu_thread);
    let steal_over = |window: Duration| {
        let agent = &agent;
        async move {
            let wait = |vm: &Value| {
                vm["cpu"]["vcpus"][0]["wait_seconds_total"]
                    .as_f64()
                    .expect("wait")
            };
            vm_cycles(agent, 1).await;
            let first = agent.get("/api/vms/hx-kvm/metrics").await.1;
            let started = Instant::now();
            tokio::time::sleep(window).await;
            vm_cycles(agent, 1).await;
            let last = agent.get("/api/vms/hx-kvm/metrics").await.1;
            (wait(&last) - wait(&first)) / started.elapsed().as_secs_f64() * 100.0
        }
    };
    let alone = steal_over(Duration::from_secs(3)).await;
    let mut hog = Command::new("taskset")
        .args(["-c", "1", "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("hog");
    let contended = steal_over(Duration::from_secs(3)).await;
    let latest = agent.get("/api/vms/hx-kvm/metrics").await.1;
    let _ = hog.kill();
    let _ = hog.wait();
    eprintln!("vCPU run-queue wait: alone {alone:.1} %, with a hog on its CPU {contended:.1} %");
    assert!(alone < 10.0, "steal without contention: {alone:.1} %");
    assert!(
        contended > 25.0,
        "steal with a hog on the vCPU's CPU: {contended:.1} %"
    );
    assert!(
        latest["cpu"]["steal_percent"].as_f64() > Some(15.0),
        "{}",
        latest["cpu"]
    );

    // Prometheus: the VM families, libvirt exporters' names, promtool-clean.
    let text = agent.text("/metrics").await;
    for line in [
        "horcrux_vm_vcpu_time_seconds_total{id=\"hx-kvm\",name=\"hx-kvm\",source=\"qemu\",vcpu=\"0\"}",
        "horcrux_vm_vcpu_delay_seconds_total{id=\"hx-kvm\",name=\"hx-kvm\",source=\"qemu\",vcpu=\"0\"}",
        "horcrux_vm_kvm_exits_total{id=\"hx-kvm\",name=\"hx-kvm\",source=\"qemu\",vcpu=\"0\"}",
        "horcrux_vm_block_stats_read_bytes_total{id=\"hx-kvm\",name=\"hx-kvm\",source=\"qemu\",device=\"boot\"}",
    ] {
        assert!(text.contains(line), "no {line} in /metrics");
    }
    promtool_check(&text);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs the libvirt daemons and a domain"]
async fn libvirt_domains_match_virsh_and_events_drive_status_changes() {
    let _serial = vm::serial();
    let _libvirtd = Libvirtd::ensure();
    let name = format!(
        "hx-virt-{}",
        &horcrux_test_support::cgroup::random_id()[..8]
    );
    let uuid = "7a3e1c55-0000-4000-8000-0000000000b2";
    let images = std::path::Path::new("/var/lib/horcrux-test");
    std::fs::create_dir_all(images).expect("image dir");
    let image = images.join(format!("{name}.img"));
    vm::boot_sector_image(&image, HALT);
    let xml = format!(
        "<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>\
         <memory unit='MiB'>64</memory><currentMemory unit='MiB'>64</currentMemory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <memballoon model='virtio'/></devices></domain>",
        image.display()
    );
    let xml_file = tempfile::NamedTempFile::new().expect("xml");
    std::fs::write(xml_file.path(), xml).expect("write xml");
    let _ = virsh(&["undefine", &name]);
    virsh(&["define", &xml_file.path().display().to_string()]).expect("virsh define");
    struct Domain(String);
    impl Drop for Domain {
        fn drop(&mut self) {
            let _ = virsh(&["destroy", &self.0]);
            let _ = virsh(&["undefine", &self.0]);
        }
    }
    let domain = Domain(name.clone());
    virsh(&["start", &name]).expect("virsh start");
    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 2\n");
    agent.wait_ready().await;
    let vm = vm_when(&agent, &name, |vm| vm["cpu"]["vcpus"][0]["kvm"].is_object()).await;
    assert_eq!(vm["source"], "libvirt");
    assert_eq!(vm["uuid"], uuid);
    let pid_file =
        std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid")).expect("pid file");
    assert_eq!(vm["pid"].to_string(), pid_file.trim());
    let (status, by_uuid) = agent.get(&format!("/api/vms/{uuid}/metrics")).await;
    assert_eq!((status, &by_uuid["id"]), (200, &Value::from(name.as_str())));
    assert!(
        vm["cgroup"]["path"]
            .as_str()
            .is_some_and(|path| path.contains(&name)),
        "{}",
        vm["cgroup"]
    );

    // Events: suspend and resume reach clients at once, not at the next poll.
    let mut socket = websocket(&agent).await;
    let started = Instant::now();
    virsh(&["suspend", &name]).expect("suspend");
    let paused = status_change(&mut socket, &name, Some("paused"), started).await;

    // While paused nothing moves: the agent's figures equal virsh domstats, read
    // before and after an agent cycle (a counter that still moved must lie between).
    let before = vm::domstats(&name);
    vm_cycles(&agent, 2).await;
    let vm = agent.get(&format!("/api/vms/{name}/metrics")).await.1;
    let after = vm::domstats(&name);
    let stat = |stats: &std::collections::BTreeMap<String, String>, key: &str| -> u64 {
        stats
            .get(key)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{key} in virsh domstats"))
    };
    let between = |what: &str, value: u64, key: &str| {
        let (low, high) = (stat(&before, key), stat(&after, key));
        assert!(
            low <= value && value <= high,
            "{what} {value} outside virsh's {key} {low} ..= {high}"
        );
    };
    assert_eq!(vm["state"], "paused");
    assert_eq!(
        number(&vm["memory"]["balloon_actual_bytes"]),
        stat(&after, "balloon.current") * 1024
    );
    assert_eq!(
        number(&vm["memory_limit_bytes"]),
        stat(&after, "balloon.maximum") * 1024
    );
    let vda = disk(&vm, "vda");
    between(
        "read bytes",
        number(&vda["read_bytes_total"]),
        "block.0.rd.bytes",
    );
    between(
        "read requests",
        number(&vda["read_ops_total"]),
        "block.0.rd.reqs",
    );
    assert_eq!(
        number(&vda["capacity_bytes"]),
        stat(&after, "block.0.capacity")
    );
    let vcpu = &vm["cpu"]["vcpus"][0];
    between(
        "KVM exits",
        number(&vcpu["kvm"]["exits"]),
        "vcpu.0.exits.sum",
    );
    between(
        "KVM halt exits",
        number(&vcpu["kvm"]["halt_exits"]),
        "vcpu.0.halt_exits.sum",
    );
    let delay_ns = (vcpu["wait_seconds_total"].as_f64().expect("wait") * 1e9).round() as u64;
    between("vCPU run-queue delay (ns)", delay_ns, "vcpu.0.delay");
    let moved = ["block.0.rd.bytes", "vcpu.0.exits.sum", "vcpu.0.delay"]
        .iter()
        .filter(|key| before.get(**key) != after.get(**key))
        .count();
    eprintln!("virsh domstats counters that moved while paused: {moved} of 3");

    let started = Instant::now();
    virsh(&["resume", &name]).expect("resume");
    let resumed = status_change(&mut socket, &name, Some("running"), started).await;
    let started = Instant::now();
    virsh(&["destroy", &name]).expect("destroy");
    let destroy_command = started.elapsed();
    let off = status_change(&mut socket, &name, Some("shutoff"), started).await;
    let started = Instant::now();
    virsh(&["undefine", &name]).expect("undefine");
    let gone = status_change(&mut socket, &name, None, started).await;
    eprintln!(
        "libvirt events → VmStatusChanged: suspend {paused:?}, resume {resumed:?}, \
         destroy {off:?} (virsh destroy itself {destroy_command:?}), undefine {gone:?}"
    );
    // Within a second of the change (virsh destroy returns once QEMU is gone).
    for (what, took) in [
        ("suspend", paused),
        ("resume", resumed),
        ("destroy", off.saturating_sub(destroy_command)),
        ("undefine", gone),
    ] {
        assert!(
            took < Duration::from_secs(1),
            "{what} reported after {took:?}"
        );
    }
    drop(domain);
    let _ = std::fs::remove_file(image);
    let _ = std::fs::remove_dir(images);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs the libvirt daemons and a TCG domain with a tap"]
async fn a_libvirt_guest_reports_its_memory_disk_and_nic_as_virsh_does() {
    let _serial = vm::serial();
    let _libvirtd = Libvirtd::ensure();
    let name = format!("hx-wl-{}", &horcrux_test_support::cgroup::random_id()[..8]);
    let (kernel, initrd) = vm::workload_guest();
    let images = std::path::Path::new("/var/lib/horcrux-test");
    std::fs::create_dir_all(images).expect("image dir");
    let image = images.join(format!("{name}.img"));
    std::fs::File::create(&image)
        .and_then(|file| file.set_len(64 << 20))
        .expect("disk image");
    let console = images.join(format!("{name}.console"));
    let tap = "hxvnet0";
    // TCG (PVM cannot run Debian's kernel); the balloon driver reports every second.
    let xml = format!(
        "<domain type='qemu'><name>{name}</name>\
         <memory unit='MiB'>256</memory><currentMemory unit='MiB'>256</currentMemory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 quiet panic=-1</cmdline></os><features><acpi/></features>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <interface type='ethernet'><target dev='{tap}' managed='yes'/><model type='virtio'/></interface>\
         <memballoon model='virtio'><stats period='1'/></memballoon>\
         <serial type='unix'><source mode='bind' path='{}'/><target port='0'/></serial></devices></domain>",
        std::fs::canonicalize(&kernel).expect("kernel").display(),
        std::fs::canonicalize(&initrd).expect("initrd").display(),
        image.display(),
        console.display()
    );
    let xml_file = tempfile::NamedTempFile::new().expect("xml");
    std::fs::write(xml_file.path(), xml).expect("write xml");
    virsh(&["define", &xml_file.path().display().to_string()]).expect("virsh define");
    struct Domain(String, Vec<std::path::PathBuf>);
    impl Drop for Domain {
        fn drop(&mut self) {
            let _ = virsh(&["destroy", &self.0]);
            let _ = virsh(&["undefine", &self.0]);
            for file in &self.1 {
                let _ = std::fs::remove_file(file);
            }
        }
    }
    let _domain = Domain(name.clone(), vec![image.clone(), console.clone()]);
    virsh(&["start", &name]).expect("virsh start");
    let mut guest = vm::Console::connect(&console);
    guest.greet(Duration::from_secs(120));
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1");
    let added = Command::new("ip")
        .args(["addr", "add", "10.231.0.1/24", "dev", tap])
        .status()
        .is_ok_and(|status| status.success());
    assert!(added, "address on {tap}");
    let agent = Agent::start(CONFIG);
    agent.wait_ready().await;
    guest.run("write 16", Duration::from_secs(120));
    guest.run("net 10", Duration::from_secs(120));
    let vm = vm_when(&agent, &name, |vm| {
        vm["memory"]["guest"]["available_bytes"].is_number()
            && interface(vm, tap).is_some_and(|nic| nic["tx_packets_total"].as_u64() >= Some(10))
    })
    .await;
    assert_eq!(vm["source"], "libvirt");
    assert_eq!(vm["kvm"], Value::Null, "TCG: no KVM statistics");

    // Paused, the guest's balloon reports stop: the agent's figures equal virsh's.
    virsh(&["suspend", &name]).expect("suspend");
    vm_cycles(&agent, 2).await;
    let vm = agent.get(&format!("/api/vms/{name}/metrics")).await.1;
    let stats = vm::domstats(&name);
    let stat = |key: &str| -> u64 {
        stats
            .get(key)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{key} in virsh domstats: {stats:?}"))
    };
    let guest_memory = &vm["memory"]["guest"];
    for (field, key) in [
        ("available_bytes", "balloon.available"),
        ("unused_bytes", "balloon.unused"),
        ("usable_bytes", "balloon.usable"),
        ("disk_caches_bytes", "balloon.disk_caches"),
        ("swap_in_bytes_total", "balloon.swap_in"),
        ("swap_out_bytes_total", "balloon.swap_out"),
    ] {
        assert_eq!(number(&guest_memory[field]), stat(key) * 1024, "{field}");
    }
    assert_eq!(
        number(&guest_memory["minor_faults_total"]),
        stat("balloon.minor_fault")
    );
    let vda = disk(&vm, "vda");
    assert_eq!(number(&vda["write_bytes_total"]), stat("block.0.wr.bytes"));
    assert!(number(&vda["write_bytes_total"]) >= 16 << 20, "{vda}");
    let nic = interface(&vm, tap).expect("the NIC");
    for (field, key) in [
        ("rx_bytes_total", "net.0.rx.bytes"),
        ("rx_packets_total", "net.0.rx.pkts"),
        ("tx_bytes_total", "net.0.tx.bytes"),
        ("tx_packets_total", "net.0.tx.pkts"),
    ] {
        assert_eq!(number(&nic[field]), stat(key), "{field}");
    }
    // And libvirt's NIC counters are the guest's side of the tap.
    let host = vm::link_counters(tap);
    assert_eq!(
        number(&nic["tx_bytes_total"]),
        host[0],
        "guest tx = the tap's rx"
    );
    assert_eq!(
        number(&nic["rx_bytes_total"]),
        host[2],
        "guest rx = the tap's tx"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs QEMU as root and as nobody, and fake QMP servers"]
async fn hostile_qmp_sockets_and_users_cost_at_most_a_timeout() {
    let _serial = vm::serial();
    // A monitor another client holds: no greeting for the agent.
    let held = Qemu::kvm("hx-held", HALT, 1, true);
    let mut holder = UnixStream::connect(held.qmp_socket()).expect("hold QMP");
    let mut greeting = [0u8; 64];
    let _ = holder.read(&mut greeting);
    // A socket path that now leads to another process: never spoken to.
    let impostor = Qemu::kvm("hx-impostor", HALT, 1, true);
    std::fs::remove_file(impostor.qmp_socket()).expect("unlink QMP socket");
    let fake = UnixListener::bind(impostor.qmp_socket()).expect("fake server");
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in fake.incoming().flatten() {
            let counted = std::sync::Arc::clone(&counted);
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = [0u8; 1024];
                while let Ok(count) = stream.read(&mut buffer) {
                    if count == 0 {
                        break;
                    }
                    counted.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    // Two VMs with one name: ambiguous by name.
    let _twin_a = Qemu::kvm("hx-twin", HALT, 1, false);
    let _twin_b = Qemu::kvm("hx-twin", HALT, 1, false);
    // A user's QEMU (TCG: nobody cannot open /dev/kvm), its QMP socket in its own dir.
    let home = tempfile::tempdir().expect("home");
    std::os::unix::fs::chown(home.path(), Some(65534), Some(65534)).expect("chown home");
    let image = home.path().join("boot.img");
    vm::boot_sector_image(&image, HALT);
    let user_socket = home.path().join("qmp.sock");
    let _user_qemu = vm::KillOnDrop({
        use std::os::unix::process::CommandExt;
        Command::new("qemu-system-x86_64")
            .args([
                "-name",
                "hx-user,debug-threads=on",
                "-accel",
                "tcg",
                "-m",
                "32",
                "-display",
                "none",
            ])
            .args([
                "-drive",
                &format!("file={},format=raw,if=virtio,readonly=on", image.display()),
            ])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", user_socket.display()),
            ])
            .uid(65534)
            .gid(65534)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("user QEMU")
    });

    let agent = Agent::start(CONFIG);
    agent.wait_ready().await;
    vm_cycles(&agent, 4).await;
    let status = agent.get("/api/status").await.1;
    let failures = &status["vm_sources"]["qmp_failures"];
    let failure = |socket: &std::path::Path| {
        failures[socket.display().to_string()]
            .as_str()
            .unwrap_or_else(|| panic!("no failure for {} in {failures}", socket.display()))
            .to_owned()
    };
    assert!(
        failure(&held.qmp_socket()).contains("no answer"),
        "{failures}"
    );
    assert!(
        failure(&impostor.qmp_socket()).contains("not the QEMU process"),
        "{failures}"
    );
    assert!(
        failure(&user_socket).contains("ermission denied"),
        "{failures}"
    );
    assert_eq!(
        received.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the agent wrote to a socket that is not the QEMU's"
    );
    // One timeout at most per cycle, then backoff: cycles keep their pace.
    let slowest = status["collectors"]["vms"]["last_duration_ms"]
        .as_f64()
        .expect("duration");
    assert!(slowest < 2500.0, "a VM cycle took {slowest} ms");
    let started = Instant::now();
    vm_cycles(&agent, 5).await;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "5 cycles took {:?}",
        started.elapsed()
    );

    // Every VM is still measured from /proc; the user's is marked as theirs.
    let user = vm_when(&agent, "hx-user", |vm| vm["cpu"].is_object()).await;
    assert_eq!(user["owner_uid"], 65534);
    assert_eq!(user["source"], "qemu");
    let held_vm = vm_when(&agent, "hx-held", |vm| vm["cpu"].is_object()).await;
    assert!(held_vm["unavailable"]["disks"].is_string(), "{held_vm}");
    // Ids: malformed 400, unknown 404, ambiguous 409.
    assert_eq!(agent.get("/api/vms/bad$id/metrics").await.0, 400);
    assert_eq!(agent.get("/api/vms/no-such-vm/metrics").await.0, 404);
    assert_eq!(agent.get("/api/vms/hx-twin/metrics").await.0, 409);

    // Released, the held monitor is used again once its backoff ends.
    drop(holder);
    let vm = vm_when(&agent, "hx-held", |vm| {
        vm["sources"]
            .as_array()
            .is_some_and(|s| s.contains(&"qmp".into()))
    })
    .await;
    assert_eq!(vm["state"], "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_vm_sources_the_agent_says_why_and_logs_nothing_per_cycle() {
    let _serial = vm::serial();
    let agent = Agent::start(
        "[monitoring]\nvm_metrics_interval = 1\n\
         [vms]\nlibvirt_uri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"\n",
    );
    agent.wait_ready().await;
    vm_cycles(&agent, 3).await;
    let status = agent.get("/api/status").await.1;
    let sources = &status["vm_sources"];
    assert!(
        sources["libvirt"]
            .as_str()
            .is_some_and(|why| why.contains("cannot connect")),
        "{sources}"
    );
    assert_eq!(sources["libvirt_connected"], false);
    assert_eq!(status["collectors"]["vms"]["error_count"], 0, "{status}");
    let qemu_running = Command::new("pgrep")
        .args(["-f", "qemu-system"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !qemu_running {
        assert_eq!(status["vms"], 0);
        assert!(
            sources["note"]
                .as_str()
                .is_some_and(|note| note.contains("no VMs")),
            "{sources}"
        );
        let (code, list) = agent.get("/api/vms").await;
        assert_eq!((code, &list["count"]), (200, &Value::from(0)));
    }
}
