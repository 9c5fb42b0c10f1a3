//! Real VMs for the VM tests (root): QEMU guests started and killed here, a QMP
//! client of the tests' own (an independent reference for what the agent reports),
//! the guest's serial console, tap devices, and the libvirt daemons.
//!
//! Two guests: a boot sector that spins (or halts) under KVM, enough for vCPU
//! threads and KVM statistics (this machine's `/dev/kvm` runs nothing bigger), and
//! Debian's kernel under TCG with the workload initramfs of `cargo xtask vm-image`
//! (`tests/vm/guest-init.sh`), which writes to its disk and pings over its NIC on
//! command.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// A boot sector that loops on itself: the vCPU is always busy.
pub const SPIN: &[u8] = &[0xEB, 0xFE];
/// A boot sector that enables interrupts and halts in a loop: the vCPU sleeps
/// between timer interrupts (halt exits, interrupt injections).
pub const HALT: &[u8] = &[0xFB, 0xF4, 0xEB, 0xFD];

/// One live VM test at a time: guests compete for the two CPUs.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A 1 MiB raw disk whose boot sector is `code`.
pub fn boot_sector_image(path: &Path, code: &[u8]) {
    let mut image = vec![0u8; 1 << 20];
    image[..code.len()].copy_from_slice(code);
    image[510] = 0x55;
    image[511] = 0xAA;
    std::fs::write(path, image).expect("write the boot sector image");
}

/// The workload guest's kernel and initramfs (`cargo xtask vm-image`).
pub fn workload_guest() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vm-image");
    let files = (dir.join("vmlinuz"), dir.join("initrd.img"));
    assert!(
        files.0.exists() && files.1.exists(),
        "no guest image in {}: run `sudo cargo xtask vm-image` (cargo xtask test does)",
        dir.display()
    );
    files
}

/// A running QEMU, killed on drop.
pub struct Qemu {
    child: Child,
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl Qemu {
    /// Starts `qemu-system-x86_64` with `args` plus `-name NAME,debug-threads=on`,
    /// no display, a QMP socket (`qmp.sock` in its directory) unless `qmp` is false.
    pub fn start(name: &str, qmp: bool, args: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), name, qmp, args)
    }

    /// The same in `dir` (where the caller put the guest's files: QEMU opens them
    /// after it creates its QMP socket, so they must not move after the start).
    fn start_in(dir: tempfile::TempDir, name: &str, qmp: bool, args: &[&str]) -> Self {
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-name", &format!("{name},debug-threads=on")])
            .args(["-display", "none", "-no-reboot"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if qmp {
            let socket = dir.path().join("qmp.sock");
            command.args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", socket.display()),
            ]);
        }
        let child = command.spawn().expect("start qemu-system-x86_64");
        let qemu = Self {
            child,
            dir,
            name: name.to_owned(),
        };
        if qmp {
            wait_until(Duration::from_secs(20), "the QMP socket", || {
                qemu.qmp_socket().exists()
            });
        }
        qemu
    }

    /// A boot sector guest under KVM with `vcpus` vCPUs.
    pub fn kvm(name: &str, code: &[u8], vcpus: u32, qmp: bool) -> Self {
        Self::kvm_with(name, code, vcpus, qmp, &[])
    }

    /// The same with `extra` QEMU arguments (`-S`: created, never run).
    pub fn kvm_with(name: &str, code: &[u8], vcpus: u32, qmp: bool, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("boot.img");
        boot_sector_image(&image, code);
        let vcpus = vcpus.to_string();
        let drive = format!("file={},format=raw,if=virtio,id=boot", image.display());
        let mut args = vec!["-enable-kvm", "-m", "64", "-smp", &vcpus, "-drive", &drive];
        args.extend_from_slice(extra);
        Self::start_in(dir, name, qmp, &args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    /// A QMP session of the test's own.
    pub fn qmp(&self) -> Qmp {
        Qmp::connect(&self.qmp_socket())
    }

    /// Waits (20 s at most) for QEMU to exit, checking every 10 ms.
    pub fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "QEMU did not exit within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Thread ids of threads named `CPU <n>/<accel>`, by n.
    pub fn vcpu_threads(&self) -> Vec<u32> {
        let mut threads: Vec<(u32, u32)> = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .expect("task dir")
            .flatten()
            .filter_map(|task| {
                let tid: u32 = task.file_name().to_str()?.parse().ok()?;
                let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
                let index = comm
                    .trim()
                    .strip_prefix("CPU ")?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()?;
                Some((index, tid))
            })
            .collect();
        threads.sort();
        threads.into_iter().map(|(_, tid)| tid).collect()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `utime + stime` of a thread in seconds (`/proc/<pid>/task/<tid>/stat`).
pub fn thread_cpu_seconds(pid: u32, tid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect(")") + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

/// The test's QMP client.
pub struct Qmp {
    reader: BufReader<UnixStream>,
}

impl Qmp {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connect to QMP");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut qmp = Self {
            reader: BufReader::new(stream),
        };
        let greeting = qmp.read();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        qmp.execute("qmp_capabilities", Value::Null);
        qmp
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let mut request = serde_json::json!({ "execute": command });
        if !arguments.is_null() {
            request["arguments"] = arguments;
        }
        writeln!(self.reader.get_mut(), "{request}").expect("QMP write");
        loop {
            let reply = self.read();
            if reply.get("event").is_some() {
                continue;
            }
            return reply
                .get("return")
                .cloned()
                .unwrap_or_else(|| panic!("{command}: {reply}"));
        }
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).expect("QMP JSON")
    }
}

/// The workload guest: Debian's kernel under TCG, a 128 MiB disk (`disk0`), a
/// virtio NIC on `tap`, a balloon polled every second (as Proxmox sets it), its
/// console on a socket.
pub struct WorkloadGuest {
    pub qemu: Qemu,
    pub console: Console,
}

impl WorkloadGuest {
    pub fn boot(name: &str, uuid: &str, tap: &str) -> Self {
        let (kernel, initrd) = workload_guest();
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|file| file.set_len(128 << 20))
            .expect("disk image");
        let console = dir.path().join("console.sock");
        let qemu = Qemu::start_in(
            dir,
            name,
            true,
            &[
                "-uuid",
                uuid,
                "-accel",
                "tcg",
                "-m",
                "256",
                "-smp",
                "1",
                "-kernel",
                &kernel.display().to_string(),
                "-initrd",
                &initrd.display().to_string(),
                "-append",
                "console=ttyS0 quiet panic=-1",
                "-drive",
                &format!(
                    "file={},format=raw,if=none,id=disk0,cache=none",
                    disk.display()
                ),
                "-device",
                "virtio-blk-pci,drive=disk0",
                "-netdev",
                &format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
                "-device",
                "virtio-net-pci,netdev=net0",
                "-device",
                "virtio-balloon,guest-stats-polling-interval=1",
                "-chardev",
                &format!(
                    "socket,id=console,path={},server=on,wait=off",
                    console.display()
                ),
                "-serial",
                "chardev:console",
            ],
        );
        wait_until(Duration::from_secs(10), "the console socket", || {
            console.exists()
        });
        let mut console = Console::connect(&console);
        console.expect("horcrux-guest ready", Duration::from_secs(120));
        Self { qemu, console }
    }
}

/// The workload guest's serial console (`tests/vm/guest-init.sh` reads commands
/// from it and answers on it).
pub struct Console {
    reader: BufReader<UnixStream>,
    pub transcript: String,
}

impl Console {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("console");
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        Self {
            reader: BufReader::new(stream),
            transcript: String::new(),
        }
    }

    /// Waits (`timeout` at most) until the guest answers on its console: for a
    /// console attached after the guest said it was ready.
    pub fn greet(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            writeln!(self.reader.get_mut(), "hello").expect("console write");
            if self.wait_for("horcrux-guest unknown hello", Duration::from_secs(2)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no answer on the console: {}",
                self.transcript
            );
        }
    }

    /// Sends `command` and waits for the guest's "done".
    pub fn run(&mut self, command: &str, timeout: Duration) {
        writeln!(self.reader.get_mut(), "{command}").expect("console write");
        let verb = command.split_whitespace().next().unwrap_or(command);
        self.expect(&format!("horcrux-guest done {verb}"), timeout);
    }

    /// Sends `poweroff` (the guest answers `bye` and powers off).
    pub fn power_off(&mut self) {
        writeln!(self.reader.get_mut(), "poweroff").expect("console write");
        self.expect("horcrux-guest bye", Duration::from_secs(30));
    }

    fn expect(&mut self, marker: &str, timeout: Duration) {
        assert!(
            self.wait_for(marker, timeout),
            "the guest did not say {marker:?} within {timeout:?}; console: {}",
            self.transcript
        );
    }

    /// Reads the console until `marker` (consumed with what precedes it) or `timeout`.
    fn wait_for(&mut self, marker: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.transcript.find(marker) {
                self.transcript.drain(..at + marker.len());
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let mut buffer = [0u8; 4096];
            match self.reader.read(&mut buffer) {
                Ok(0) => panic!("the guest console closed; console: {}", self.transcript),
                Ok(count) => self
                    .transcript
                    .push_str(&String::from_utf8_lossy(&buffer[..count])),
                Err(_) => {}
            }
        }
    }
}

/// A tap device with address 10.231.0.1/24 (the workload guest pings it), IPv6
/// off so the host sends nothing of its own; deleted on drop.
pub struct Tap {
    pub name: String,
}

impl Tap {
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip")
            .args(["link", "delete", name])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["tuntap", "add", name, "mode", "tap"],
            vec!["addr", "add", "10.231.0.1/24", "dev", name],
            vec!["link", "set", name, "up"],
        ] {
            if args[0] == "addr" {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
            }
            let ok = Command::new("ip")
                .args(&args)
                .status()
                .is_ok_and(|status| status.success());
            assert!(ok, "ip {}", args.join(" "));
        }
        Self {
            name: name.to_owned(),
        }
    }

    /// The tap's counters as the host counts them ([`link_counters`]).
    pub fn host_counters(&self) -> [u64; 4] {
        link_counters(&self.name)
    }
}

/// `ip -s -j link show NAME` counters: (rx bytes, rx packets, tx bytes, tx packets).
pub fn link_counters(name: &str) -> [u64; 4] {
    let output = Command::new("ip")
        .args(["-s", "-j", "link", "show", name])
        .output()
        .expect("ip -s link");
    let links: Value = serde_json::from_slice(&output.stdout).expect("ip JSON");
    let stats = &links[0]["stats64"];
    let value = |direction: &str, field: &str| {
        stats[direction][field]
            .as_u64()
            .unwrap_or_else(|| panic!("{direction} {field} of {name}: {links}"))
    };
    [
        value("rx", "bytes"),
        value("rx", "packets"),
        value("tx", "bytes"),
        value("tx", "packets"),
    ]
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.name])
            .status();
    }
}

/// The system libvirt daemons (`virtlogd -d`, `libvirtd -d`, no systemd), started
/// if not running and stopped on drop if started here.
pub struct Libvirtd {
    started: Vec<&'static str>,
}

impl Libvirtd {
    pub fn ensure() -> Self {
        // libvirt runs its QEMUs as libvirt-qemu, in group kvm.
        let _ = Command::new("chgrp").args(["kvm", "/dev/kvm"]).status();
        let _ = Command::new("chmod").args(["0660", "/dev/kvm"]).status();
        let mut started = Vec::new();
        for daemon in ["virtlogd", "libvirtd"] {
            if !running(daemon) {
                let ok = Command::new(daemon)
                    .arg("-d")
                    .status()
                    .is_ok_and(|status| status.success());
                assert!(ok, "starting {daemon} (cargo xtask setup installs libvirt)");
                started.push(daemon);
            }
        }
        wait_until(Duration::from_secs(20), "libvirtd to answer", || {
            virsh(&["-r", "list"]).is_ok()
        });
        Self { started }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for daemon in self.started.iter().rev() {
            let _ = Command::new("pkill").args(["-x", daemon]).status();
        }
    }
}

fn running(program: &str) -> bool {
    Command::new("pgrep")
        .args(["-x", program])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `virsh args` and returns its output.
pub fn virsh(args: &[&str]) -> Result<String, String> {
    let output = Command::new("virsh")
        .args(args)
        .output()
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `virsh domstats NAME` as field → value.
pub fn domstats(name: &str) -> std::collections::BTreeMap<String, String> {
    virsh(&["domstats", name])
        .expect("virsh domstats")
        .lines()
        .filter_map(|line| line.trim().split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
