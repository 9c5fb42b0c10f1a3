//! Data source: QEMU processes in `/proc`. Finds every running QEMU (libvirt's and
//! plain ones), what its command line says about it (`-name`, `-uuid`, memory,
//! the QMP socket), its tap devices, its vCPU threads and their scheduler
//! statistics.
//!
//! A QEMU counts only if its executable is a root-owned `qemu-system-*` (or
//! `qemu-kvm`, `kvm`) binary no one else can write, with equal real and effective
//! uid (the trust rules of [`crate::process`]): its owner then speaks for that VM
//! only. Everything else on the command line is the owner's to shape, so it is
//! parsed with caps and never used to reach anything but that owner's own sockets
//! ([`super::qmp`] checks the peer).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::process::{read_capped, trusted_executable_uid};

/// Longest command line read from a QEMU process.
const MAX_CMDLINE: usize = 256 * 1024;
/// Threads and file descriptors looked at per process, at most.
const MAX_TASKS: usize = 4096;
const MAX_FDS: usize = 4096;
/// Longest name or id taken from a command line.
const MAX_NAME: usize = 256;

/// One trusted QEMU process.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuProcess {
    pub pid: u32,
    /// Start time in clock ticks since boot: tells a reused pid apart.
    pub start_ticks: u64,
    pub uid: u32,
    pub args: QemuArgs,
    /// Tap devices the process holds open (`/dev/net/tun` descriptors).
    pub taps: Vec<String>,
}

/// What a QEMU command line says about the VM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QemuArgs {
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// A QMP (control mode) monitor on a Unix socket the process listens on.
    pub qmp_socket: Option<PathBuf>,
    pub memory_bytes: Option<u64>,
    pub vcpus: Option<u32>,
    /// `ifname=` of `-netdev tap` / `-net tap`.
    pub tap_names: Vec<String>,
    /// `-enable-kvm`, `-accel kvm` or `accel=kvm`.
    pub kvm: bool,
}

/// Whether an executable's file name is QEMU's system emulator.
pub fn is_qemu_executable(name: &str) -> bool {
    name.starts_with("qemu-system-") || name == "qemu-kvm" || name == "kvm"
}

/// Finds the QEMU processes, remembering which pids are not QEMU: a scan reads
/// the executable link of new pids only, and every [`FULL_SCAN_CYCLES`] scans all
/// again (a pid number reused by a later process is then seen for what it is).
#[derive(Debug, Default)]
pub struct QemuScanner {
    /// Pids seen at the last scan: their QEMU, or `None` (not a trusted QEMU).
    seen: HashMap<u32, Option<QemuProcess>>,
    scans: u32,
}

/// Scans between two full scans.
pub const FULL_SCAN_CYCLES: u32 = 10;

impl QemuScanner {
    /// Every trusted QEMU process below `proc_root`, in pid order.
    pub fn scan(&mut self, proc_root: &Path) -> Vec<QemuProcess> {
        if self.scans.is_multiple_of(FULL_SCAN_CYCLES) {
            self.seen.clear();
        }
        self.scans = self.scans.wrapping_add(1);
        let Ok(entries) = std::fs::read_dir(proc_root) else {
            return Vec::new();
        };
        let mut seen = HashMap::with_capacity(self.seen.len());
        for pid in entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        {
            let process = match self.seen.remove(&pid) {
                None => inspect(proc_root, pid),
                Some(None) => None,
                // Still the same process (same start time): its taps may have changed.
                Some(Some(mut known)) => {
                    let dir = proc_root.join(pid.to_string());
                    (start_ticks(&dir) == Some(known.start_ticks)).then(|| {
                        known.taps = tap_devices(&dir);
                        known
                    })
                }
            };
            seen.insert(pid, process);
        }
        self.seen = seen;
        let mut found: Vec<QemuProcess> = self.seen.values().flatten().cloned().collect();
        found.sort_by_key(|process| process.pid);
        found
    }
}

/// The QEMU process `pid`, if it is one and trusted.
pub fn inspect(proc_root: &Path, pid: u32) -> Option<QemuProcess> {
    let dir = proc_root.join(pid.to_string());
    // The executable link first: cheap, and no lock on the process's memory.
    let exe = std::fs::read_link(dir.join("exe")).ok()?;
    if !is_qemu_executable(exe.file_name()?.to_str()?.trim_end_matches(" (deleted)")) {
        return None;
    }
    let uid = trusted_executable_uid(&dir, is_qemu_executable)?;
    // An exited QEMU its parent has not reaped yet is no VM.
    let stat = process_stat(proc_root, pid).filter(|stat| stat.state != 'Z')?;
    let start_ticks = stat.start_ticks;
    let cmdline = read_capped(&dir.join("cmdline"), MAX_CMDLINE).ok()?;
    let args: Vec<String> = cmdline
        .split(|&byte| byte == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    Some(QemuProcess {
        pid,
        start_ticks,
        uid,
        args: parse_args(&args),
        taps: tap_devices(&dir),
    })
}

/// Field 22 of `/proc/<pid>/stat`.
pub fn start_ticks(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    stat_fields(&stat)?.get(19)?.parse().ok()
}

/// The fields of a `stat` line after `(comm)`: index 0 is field 3 (state). The
/// command name can hold spaces and parentheses, so the line is cut at the last `)`.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// Parses the options that matter here. Unknown options are skipped; values are
/// cut to [`MAX_NAME`].
pub fn parse_args(args: &[String]) -> QemuArgs {
    let mut parsed = QemuArgs::default();
    // chardev id → socket path; monitors in control mode → chardev id.
    let mut chardev_paths: HashMap<String, String> = HashMap::new();
    let mut control_chardevs = Vec::new();
    let mut index = 0;
    while index < args.len() {
        // QEMU accepts `-opt` and `--opt`.
        let option = args[index].strip_prefix('-').unwrap_or("");
        let option = option.strip_prefix('-').unwrap_or(option);
        let value = args.get(index + 1).map(String::as_str);
        index += 1;
        // Options not listed are skipped one argument at a time: their values do
        // not start with `-` and so are not taken for options.
        match (option, value) {
            ("enable-kvm", _) => {
                parsed.kvm = true;
                continue;
            }
            ("name", Some(value)) => {
                let options = split_options(value);
                parsed.name = option_or_first(&options, "guest").map(capped);
            }
            ("uuid", Some(value)) => parsed.uuid = Some(capped(value)),
            ("m", Some(value)) => {
                let options = split_options(value);
                parsed.memory_bytes = option_or_first(&options, "size").and_then(memory_size);
            }
            ("smp", Some(value)) => {
                let options = split_options(value);
                parsed.vcpus = option_or_first(&options, "cpus").and_then(|n| n.parse().ok());
            }
            ("accel", Some(value)) => {
                let options = split_options(value);
                parsed.kvm |= option_or_first(&options, "accel") == Some("kvm");
            }
            ("machine", Some(value)) => {
                parsed.kvm |= split_options(value)
                    .iter()
                    .any(|(key, value)| key == "accel" && value.split(':').any(|a| a == "kvm"));
            }
            ("qmp" | "qmp-pretty", Some(value)) => {
                let options = split_options(value);
                if let Some((path, _)) = options.first()
                    && let Some(path) = path.strip_prefix("unix:")
                    && parsed.qmp_socket.is_none()
                {
                    parsed.qmp_socket = Some(PathBuf::from(path));
                }
            }
            ("chardev", Some(value)) => {
                let options = split_options(value);
                let kind = options.first().map(|(kind, _)| kind.as_str());
                let get = |key: &str| {
                    options
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                };
                let server = get("server").is_some_and(|v| v != "off");
                if kind == Some("socket")
                    && server
                    && let (Some(id), Some(path)) = (get("id"), get("path"))
                {
                    chardev_paths.insert(id, path);
                }
            }
            ("mon", Some(value)) => {
                let options = split_options(value);
                let get = |key: &str| {
                    options
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                };
                if get("mode").as_deref() == Some("control")
                    && let Some(chardev) = get("chardev")
                {
                    control_chardevs.push(chardev);
                }
            }
            ("netdev" | "net", Some(value)) => {
                let options = split_options(value);
                let is_tap = options.first().is_some_and(|(kind, _)| kind == "tap");
                if is_tap
                    && let Some((_, name)) = options.iter().find(|(key, _)| key == "ifname")
                    && parsed.tap_names.len() < 64
                {
                    parsed.tap_names.push(capped(name));
                }
            }
            _ => continue,
        }
        index += 1;
    }
    if parsed.qmp_socket.is_none() {
        parsed.qmp_socket = control_chardevs
            .iter()
            .find_map(|id| chardev_paths.get(id))
            .map(PathBuf::from);
    }
    parsed
}

fn capped(value: &str) -> String {
    value.chars().take(MAX_NAME).collect()
}

/// QEMU's option syntax: `a,key=value,key2=value2`, `,,` escaping a comma. The
/// first element without `=` comes back as `(value, "")`.
fn split_options(text: &str) -> Vec<(String, String)> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                parts.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
        if parts.len() > 64 {
            break;
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|part| match part.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => (part, String::new()),
        })
        .collect()
}

/// `key=value`, or the implied first element (`-name foo` = `-name guest=foo`).
fn option_or_first<'a>(options: &'a [(String, String)], key: &str) -> Option<&'a str> {
    options
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .or_else(|| {
            options
                .first()
                .filter(|(_, value)| value.is_empty())
                .map(|(first, _)| first.as_str())
                .filter(|first| !first.is_empty())
        })
}

/// `-m` sizes: MiB without a suffix; k, M, G, T suffixes (binary).
fn memory_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, shift) = match text.char_indices().last()? {
        (at, 'k' | 'K') => (&text[..at], 10),
        (at, 'm' | 'M') => (&text[..at], 20),
        (at, 'g' | 'G') => (&text[..at], 30),
        (at, 't' | 'T') => (&text[..at], 40),
        (at, 'b' | 'B') => (&text[..at], 0),
        _ => (text, 20),
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| (value * (1u64 << shift) as f64) as u64)
}

/// Names of the tap devices behind the process's `/dev/net/tun` descriptors
/// (`iff:` in their fdinfo), whether QEMU opened them or was handed them.
fn tap_devices(dir: &Path) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return Vec::new();
    };
    let mut taps = Vec::new();
    for entry in fds.flatten().take(MAX_FDS) {
        let is_tun = std::fs::read_link(entry.path())
            .is_ok_and(|target| target == Path::new("/dev/net/tun"));
        if !is_tun {
            continue;
        }
        let info = dir.join("fdinfo").join(entry.file_name());
        let Ok(info) = read_capped(&info, 4096) else {
            continue;
        };
        let info = String::from_utf8_lossy(&info);
        if let Some(name) = info
            .lines()
            .find_map(|line| line.strip_prefix("iff:"))
            .map(str::trim)
            .filter(|name| !name.is_empty())
            && !taps.iter().any(|tap| tap == name)
        {
            taps.push(capped(name));
        }
    }
    taps.sort();
    taps
}

/// A vCPU thread: `CPU <n>/KVM` (or `/TCG`, `/HVF`) when QEMU names its threads
/// (`-name …,debug-threads=on`, which libvirt sets), or a thread id from QMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuThread {
    pub index: u32,
    pub thread_id: u32,
}

/// The vCPU threads named as such, by index.
pub fn named_vcpu_threads(proc_root: &Path, pid: u32) -> Vec<VcpuThread> {
    let task_dir = proc_root.join(pid.to_string()).join("task");
    let Ok(tasks) = std::fs::read_dir(&task_dir) else {
        return Vec::new();
    };
    let mut threads: Vec<VcpuThread> = tasks
        .flatten()
        .take(MAX_TASKS)
        .filter_map(|task| {
            let thread_id: u32 = task.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let index = vcpu_index(comm.trim_end())?;
            Some(VcpuThread { index, thread_id })
        })
        .collect();
    threads.sort_by_key(|thread| thread.index);
    threads
}

/// `CPU 3/KVM` → 3.
fn vcpu_index(comm: &str) -> Option<u32> {
    let rest = comm.strip_prefix("CPU ")?;
    let (index, accelerator) = rest.split_once('/')?;
    (!accelerator.is_empty()).then_some(())?;
    index.parse().ok()
}

/// `/proc/<pid>/task/<tid>/schedstat`: on-CPU ns, run-queue wait ns, timeslices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedstat {
    pub run_ns: u64,
    pub wait_ns: u64,
    pub timeslices: u64,
}

pub fn thread_schedstat(proc_root: &Path, pid: u32, thread_id: u32) -> Option<Schedstat> {
    let path = proc_root
        .join(pid.to_string())
        .join("task")
        .join(thread_id.to_string())
        .join("schedstat");
    parse_schedstat(&std::fs::read_to_string(path).ok()?)
}

pub fn parse_schedstat(text: &str) -> Option<Schedstat> {
    let mut fields = text.split_whitespace().map(|field| field.parse::<u64>());
    Some(Schedstat {
        run_ns: fields.next()?.ok()?,
        wait_ns: fields.next()?.ok()?,
        timeslices: fields.next()?.ok()?,
    })
}

/// The QEMU process's own figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStat {
    /// R, S, D, Z, …
    pub state: char,
    /// utime + stime, in clock ticks, of every thread (live and exited).
    pub cpu_ticks: u64,
    pub threads: u64,
    pub rss_pages: u64,
    pub start_ticks: u64,
}

pub fn process_stat(proc_root: &Path, pid: u32) -> Option<ProcessStat> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_process_stat(&stat)
}

pub fn parse_process_stat(stat: &str) -> Option<ProcessStat> {
    let fields = stat_fields(stat)?;
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(ProcessStat {
        state: fields.first()?.chars().next()?,
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// `read_bytes` and `write_bytes` of `/proc/<pid>/io`: what the process made the
/// host's block layer read and write.
pub fn process_io(proc_root: &Path, pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("io")).ok()?;
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok())
    };
    Some((value("read_bytes:")?, value("write_bytes:")?))
}

/// The cgroup paths of `pid` (`/proc/<pid>/cgroup`): the cgroup2 path (`0::`) and
/// the v1 paths by controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessCgroups {
    pub unified: Option<String>,
    pub v1: HashMap<String, String>,
}

pub fn process_cgroups(proc_root: &Path, pid: u32) -> Option<ProcessCgroups> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    Some(parse_process_cgroups(&text))
}

pub fn parse_process_cgroups(text: &str) -> ProcessCgroups {
    let mut cgroups = ProcessCgroups::default();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/').to_owned();
        if id == "0" && controllers.is_empty() {
            cgroups.unified = Some(path);
        } else {
            for controller in controllers.split(',') {
                let controller = controller.trim_start_matches("name=");
                cgroups.v1.insert(controller.to_owned(), path.clone());
            }
        }
    }
    cgroups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn libvirt_command_lines_are_understood() {
        let parsed = parse_args(&args(
            "/usr/bin/qemu-system-x86_64 -name guest=web,,1,debug-threads=on -S \
             -machine pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram \
             -accel kvm -m size=2097152k -smp 2,sockets=2,cores=1,threads=1 \
             -uuid 6a1c0e2e-0000-4000-8000-000000000001 -no-user-config \
             -chardev socket,id=charmonitor,fd=31,server=on,wait=off \
             -mon chardev=charmonitor,id=monitor,mode=control \
             -netdev tap,fd=33,vhost=on,vhostfd=35,id=hostnet0",
        ));
        assert_eq!(parsed.name.as_deref(), Some("web,1"));
        assert_eq!(parsed.memory_bytes, Some(2 << 30));
        assert_eq!(parsed.vcpus, Some(2));
        assert!(parsed.kvm);
        assert_eq!(
            parsed.uuid.as_deref(),
            Some("6a1c0e2e-0000-4000-8000-000000000001")
        );
        // libvirt hands its monitor over as a descriptor: no path to use (or steal).
        assert_eq!(parsed.qmp_socket, None);
        assert!(parsed.tap_names.is_empty());
    }

    #[test]
    fn plain_qemu_command_lines_are_understood() {
        let parsed = parse_args(&args(
            "qemu-system-x86_64 -name vm-100 -m 512 -smp cpus=4 -enable-kvm \
             -qmp unix:/run/qemu/100.qmp,server=on,wait=off \
             -netdev tap,id=n0,ifname=tap100i0,script=no -device virtio-net-pci,netdev=n0",
        ));
        assert_eq!(parsed.name.as_deref(), Some("vm-100"));
        assert_eq!(parsed.memory_bytes, Some(512 << 20));
        assert_eq!(parsed.vcpus, Some(4));
        assert_eq!(
            parsed.qmp_socket.as_deref(),
            Some(Path::new("/run/qemu/100.qmp"))
        );
        assert_eq!(parsed.tap_names, ["tap100i0"]);
        let parsed = parse_args(&args(
            "qemu-system-x86_64 --name x -chardev socket,id=qmp,path=/tmp/q.sock,server=on,wait=off \
             -mon chardev=qmp,mode=control -machine q35,accel=kvm:tcg -m 1G",
        ));
        assert_eq!(parsed.qmp_socket.as_deref(), Some(Path::new("/tmp/q.sock")));
        assert!(parsed.kvm);
        assert_eq!(parsed.memory_bytes, Some(1 << 30));
    }

    #[test]
    fn hostile_command_lines_are_survived() {
        for line in [
            "",
            "-name",
            "-m",
            "-m -m -m ,,,,=,=",
            "-smp =,=, -qmp tcp:1.2.3.4:5 -chardev socket",
            "-m 99999999999999999999T -name ,,,,",
        ] {
            let parsed = parse_args(&args(line));
            assert!(parsed.qmp_socket.is_none(), "{line}");
        }
        let long = format!("-name {}", "x".repeat(100_000));
        assert_eq!(
            parse_args(&args(&long)).name.map(|name| name.len()),
            Some(MAX_NAME)
        );
    }

    #[test]
    fn thread_names_give_vcpu_indexes() {
        assert_eq!(vcpu_index("CPU 0/KVM"), Some(0));
        assert_eq!(vcpu_index("CPU 12/TCG"), Some(12));
        assert_eq!(vcpu_index("CPU x/KVM"), None);
        assert_eq!(vcpu_index("CPU 1/"), None);
        assert_eq!(vcpu_index("qemu-system-x86"), None);
    }

    #[test]
    fn stat_and_schedstat_lines_parse_whatever_the_command_name() {
        let stat = "4242 (evil) (name) 1 2) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 150 0 0 20 0 7 0 123456 1000000 2048 18446744073709551615";
        let parsed = parse_process_stat(stat).expect("stat");
        assert_eq!(parsed.cpu_ticks, 400);
        assert_eq!(parsed.threads, 7);
        assert_eq!(parsed.start_ticks, 123456);
        assert_eq!(parsed.rss_pages, 2048);
        assert_eq!(
            parse_schedstat("1009760232 3976363 81\n"),
            Some(Schedstat {
                run_ns: 1009760232,
                wait_ns: 3976363,
                timeslices: 81
            })
        );
        assert_eq!(parse_schedstat("1 2"), None);
        assert_eq!(parse_process_stat("1 (x"), None);
    }

    #[test]
    fn cgroup_lines_give_v2_and_v1_paths() {
        let cgroups = parse_process_cgroups(
            "12:memory:/machine/qemu-1-web.libvirt-qemu/emulator\n\
             4:cpu,cpuacct:/machine/qemu-1-web.libvirt-qemu/emulator\n\
             1:name=systemd:/machine/qemu-1-web.libvirt-qemu\n\
             0::/machine.slice/machine-qemu\\x2d1\\x2dweb.scope/libvirt/emulator\n",
        );
        assert_eq!(
            cgroups.unified.as_deref(),
            Some("machine.slice/machine-qemu\\x2d1\\x2dweb.scope/libvirt/emulator")
        );
        assert_eq!(
            cgroups.v1.get("cpuacct").map(String::as_str),
            Some("machine/qemu-1-web.libvirt-qemu/emulator")
        );
        assert!(cgroups.v1.contains_key("systemd"));
    }
}
