//! Data source: a plain QEMU's QMP monitor (a Unix socket named on its command
//! line). One short connection per query round: greeting, `qmp_capabilities`, the
//! queries, close. The socket is never held between rounds, so QEMU's other
//! clients (management tools, a user's `socat`) are never locked out; a socket
//! another client holds answers no greeting and costs one timeout.
//!
//! The path is the QEMU owner's to choose, so it is resolved in the QEMU's own
//! filesystem view (`/proc/<pid>/root`, `/proc/<pid>/cwd`), must be a socket (not a
//! link to one), and the listening end must be that very QEMU process
//! (`SO_PEERCRED`) before a byte is read or written: a path pointing at another
//! service's socket gets nothing. Replies are capped in size and every read and
//! write has a deadline.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::model::{GuestMemory, KvmStats, VmDisk, VmState};

/// Largest reply line accepted (a `query-stats` of 64 vCPUs is ~200 KiB).
const MAX_REPLY: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("socket {path}: {reason}")]
    Socket { path: String, reason: String },
    #[error("the socket's listener is pid {peer:?}, not the QEMU process {expected}")]
    WrongPeer { peer: Option<i32>, expected: u32 },
    #[error("no answer within {0:?} (another client holds the monitor, or QEMU is stuck)")]
    Timeout(Duration),
    #[error("{0}")]
    Protocol(String),
    #[error("{command}: {error}")]
    Command {
        command: &'static str,
        error: String,
    },
}

/// What one query round learned. A query QEMU refuses (no balloon device, no
/// `query-stats` before QEMU 7.1, no KVM) leaves its part empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QmpReport {
    pub state: Option<VmState>,
    /// vCPU index → thread id (`query-cpus-fast`).
    pub vcpu_threads: Vec<(u32, u32)>,
    pub disks: Vec<VmDisk>,
    pub balloon_actual_bytes: Option<u64>,
    /// KVM statistics by vCPU index.
    pub kvm_vcpus: Vec<(u32, KvmStats)>,
    /// The balloon device's QOM path (found once, then passed back as a hint).
    pub balloon_path: Option<String>,
    /// What the guest's balloon driver reports, when polling is on (`-device
    /// virtio-balloon,guest-stats-polling-interval=N`, as Proxmox sets it; the
    /// agent never turns it on in a VM it does not own).
    pub guest_memory: Option<GuestMemory>,
}

/// What a round asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Depth {
    /// `query-status` only (the state watch between collection cycles).
    Status,
    /// Everything; `balloon_path` is where the balloon was found last time.
    Full { balloon_path: Option<String> },
}

/// The KVM statistics asked for (QEMU answers with these only).
const KVM_STATS: &[&str] = &[
    "exits",
    "halt_exits",
    "io_exits",
    "mmio_exits",
    "halt_successful_poll",
    "halt_attempted_poll",
    "halt_wakeup",
    "halt_poll_success_ns",
    "halt_poll_fail_ns",
    "halt_wait_ns",
    "pf_fixed",
    "irq_injections",
];

/// Connects to `socket` as seen by QEMU process `pid` and runs one round: after
/// the greeting, `qmp_capabilities` and every query go out in one write and the
/// replies are read in one go (QMP answers in order), two wake-ups of QEMU a round.
pub fn query(
    proc_root: &Path,
    pid: u32,
    socket: &Path,
    depth: Depth,
    timeout: Duration,
) -> Result<QmpReport, QmpError> {
    let deadline = Instant::now() + timeout;
    let mut monitor = Monitor::connect(proc_root, pid, socket, deadline)?;
    monitor.greeting()?;
    let mut commands = vec![("qmp_capabilities", None), ("query-status", None)];
    let balloon_hint = match &depth {
        Depth::Status => None,
        Depth::Full { balloon_path } => balloon_path.clone(),
    };
    if let Depth::Full { .. } = depth {
        commands.extend([
            ("query-cpus-fast", None),
            ("query-blockstats", None),
            ("query-balloon", None),
            (
                "query-stats",
                Some(serde_json::json!({
                    "target": "vcpu",
                    "providers": [{"provider": "kvm", "names": KVM_STATS}],
                })),
            ),
        ]);
        if let Some(path) = &balloon_hint {
            commands.push(("qom-get", Some(guest_stats_request(path))));
        }
    }
    let mut replies = monitor.batch(&commands)?.into_iter();
    let mut next = |command: &'static str| replies.next().flatten().ok_or(command);
    let required = |reply: Result<Value, &'static str>| {
        reply.map_err(|command| QmpError::Command {
            command,
            error: "refused".into(),
        })
    };
    required(next("qmp_capabilities"))?;
    let mut report = QmpReport {
        state: Some(state_of(&required(next("query-status"))?)),
        ..QmpReport::default()
    };
    if depth == Depth::Status {
        return Ok(report);
    }
    let cpus = required(next("query-cpus-fast"))?;
    let qom_paths: Vec<(String, u32)> = cpus
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|cpu| {
            let index = u32::try_from(cpu.get("cpu-index")?.as_u64()?).ok()?;
            let thread = u32::try_from(cpu.get("thread-id")?.as_u64()?).ok()?;
            report.vcpu_threads.push((index, thread));
            Some((cpu.get("qom-path")?.as_str()?.to_owned(), index))
        })
        .collect();
    report.disks = disks(&required(next("query-blockstats"))?);
    // No balloon device, or QEMU before query-stats (7.1): those parts stay empty.
    report.balloon_actual_bytes = next("query-balloon")
        .ok()
        .and_then(|balloon| balloon.get("actual")?.as_u64());
    if let Ok(stats) = next("query-stats") {
        report.kvm_vcpus = kvm_vcpus(&stats, &qom_paths);
    }
    if report.balloon_actual_bytes.is_some() {
        // The path from last time, else (or if it moved: hot-plug) found again.
        let stats = match (balloon_hint, next("qom-get")) {
            (Some(path), Ok(stats)) => Some((path, stats)),
            _ => monitor.find_balloon()?,
        };
        if let Some((path, stats)) = stats {
            report.guest_memory = guest_memory(&stats);
            report.balloon_path = Some(path);
        }
    }
    Ok(report)
}

/// Where QEMU puts devices: with an id, and without.
const DEVICE_CONTAINERS: &[&str] = &["/machine/peripheral", "/machine/peripheral-anon"];

fn guest_stats_request(path: &str) -> Value {
    serde_json::json!({ "path": path, "property": "guest-stats" })
}

/// `qom-get … guest-stats`: `null` until the driver has reported (`last-update`
/// 0); a statistic the guest does not report is all ones (-1).
fn guest_memory(reply: &Value) -> Option<GuestMemory> {
    if reply
        .get("last-update")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        == 0
    {
        return None;
    }
    let stats = reply.get("stats")?;
    let stat = |name: &str| stats.get(name)?.as_u64().filter(|value| *value != u64::MAX);
    Some(GuestMemory {
        available_bytes: stat("stat-total-memory"),
        unused_bytes: stat("stat-free-memory"),
        usable_bytes: stat("stat-available-memory"),
        disk_caches_bytes: stat("stat-disk-caches"),
        swap_in_bytes_total: stat("stat-swap-in"),
        swap_out_bytes_total: stat("stat-swap-out"),
        major_faults_total: stat("stat-major-faults"),
        minor_faults_total: stat("stat-minor-faults"),
    })
}

struct Monitor {
    reader: BufReader<UnixStream>,
    deadline: Instant,
    path: String,
}

impl Monitor {
    fn connect(
        proc_root: &Path,
        pid: u32,
        socket: &Path,
        deadline: Instant,
    ) -> Result<Self, QmpError> {
        use nix::{
            fcntl::OFlag,
            sys::{socket, stat::Mode},
        };
        let process = proc_root.join(pid.to_string());
        let seen_by_qemu: PathBuf = if socket.is_absolute() {
            process
                .join("root")
                .join(socket.strip_prefix("/").unwrap_or(socket))
        } else {
            process.join("cwd").join(socket)
        };
        let shown = socket.display().to_string();
        let fail = |reason: String| QmpError::Socket {
            path: shown.clone(),
            reason,
        };
        // O_PATH | O_NOFOLLOW: the last component itself must be the socket.
        let handle: OwnedFd = nix::fcntl::open(
            &seen_by_qemu,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|error| fail(error.to_string()))?;
        let stat = nix::sys::stat::fstat(&handle).map_err(|error| fail(error.to_string()))?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(fail("not a socket".into()));
        }
        let fd = socket::socket(
            socket::AddressFamily::Unix,
            socket::SockType::Stream,
            socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|error| fail(error.to_string()))?;
        let remaining = remaining(deadline)?;
        let timeval = nix::sys::time::TimeVal::new(
            remaining.as_secs() as libc::time_t,
            remaining.subsec_micros() as libc::suseconds_t,
        );
        // A full backlog blocks connect() up to the send timeout.
        socket::setsockopt(&fd, socket::sockopt::SendTimeout, &timeval)
            .map_err(|error| fail(error.to_string()))?;
        // Connecting through the descriptor: no path length limit, no second lookup.
        let address =
            socket::UnixAddr::new(format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str())
                .map_err(|error| fail(error.to_string()))?;
        socket::connect(fd.as_raw_fd(), &address).map_err(|error| match error {
            nix::errno::Errno::EAGAIN => QmpError::Timeout(remaining),
            error => fail(error.to_string()),
        })?;
        let peer = socket::getsockopt(&fd, socket::sockopt::PeerCredentials)
            .ok()
            .map(|credentials| credentials.pid());
        if peer != Some(pid as i32) {
            return Err(QmpError::WrongPeer {
                peer,
                expected: pid,
            });
        }
        Ok(Self {
            reader: BufReader::new(UnixStream::from(fd)),
            deadline,
            path: shown,
        })
    }

    /// The balloon device's path and its guest statistics (two more round trips,
    /// once per VM: the path is kept by the caller).
    fn find_balloon(&mut self) -> Result<Option<(String, Value)>, QmpError> {
        let lists: Vec<(&'static str, Option<Value>)> = DEVICE_CONTAINERS
            .iter()
            .map(|path| ("qom-list", Some(serde_json::json!({ "path": path }))))
            .collect();
        let replies = self.batch(&lists)?;
        let found = DEVICE_CONTAINERS
            .iter()
            .zip(&replies)
            .find_map(|(container, children)| {
                let child = children.as_ref()?.as_array()?.iter().find(|child| {
                    child
                        .get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|kind| kind.starts_with("child<virtio-balloon"))
                })?;
                Some(format!("{container}/{}", child.get("name")?.as_str()?))
            });
        let Some(path) = found else {
            return Ok(None);
        };
        let stats = self.batch(&[("qom-get", Some(guest_stats_request(&path)))])?;
        Ok(stats
            .into_iter()
            .next()
            .flatten()
            .map(|stats| (path, stats)))
    }

    fn greeting(&mut self) -> Result<(), QmpError> {
        let greeting = self.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "{}: expected the QMP greeting",
                self.path
            )));
        }
        Ok(())
    }

    /// Sends `commands` in one write (each with its index as `id`) and returns
    /// their replies in order: `None` for an error reply (a device or feature QEMU
    /// lacks). Events in between are skipped.
    fn batch(
        &mut self,
        commands: &[(&'static str, Option<Value>)],
    ) -> Result<Vec<Option<Value>>, QmpError> {
        let mut text = String::new();
        for (id, (command, arguments)) in commands.iter().enumerate() {
            let mut request = serde_json::json!({ "execute": command, "id": id });
            if let Some(arguments) = arguments {
                request["arguments"] = arguments.clone();
            }
            text.push_str(&request.to_string());
            text.push('\n');
        }
        let stream = self.reader.get_mut();
        stream
            .set_write_timeout(Some(remaining(self.deadline)?))
            .map_err(|error| QmpError::Protocol(error.to_string()))?;
        stream
            .write_all(text.as_bytes())
            .map_err(|error| io_error(error, self.deadline))?;
        let mut replies = Vec::with_capacity(commands.len());
        while replies.len() < commands.len() {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(replies.len() as u64) {
                return Err(QmpError::Protocol(format!(
                    "{}: a reply out of order",
                    self.path
                )));
            }
            replies.push(reply.get("return").cloned());
        }
        Ok(replies)
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        self.reader
            .get_mut()
            .set_read_timeout(Some(remaining(self.deadline)?))
            .map_err(|error| QmpError::Protocol(error.to_string()))?;
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_REPLY as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|error| io_error(error, self.deadline))?;
        if read == 0 {
            return Err(QmpError::Protocol(
                "the monitor closed the connection".into(),
            ));
        }
        if line.len() > MAX_REPLY {
            return Err(QmpError::Protocol(format!(
                "a reply over {MAX_REPLY} bytes"
            )));
        }
        serde_json::from_slice(&line)
            .map_err(|error| QmpError::Protocol(format!("malformed reply: {error}")))
    }
}

fn remaining(deadline: Instant) -> Result<Duration, QmpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(QmpError::Timeout(Duration::ZERO))
    } else {
        Ok(left)
    }
}

fn io_error(error: std::io::Error, deadline: Instant) -> QmpError {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            QmpError::Timeout(deadline.saturating_duration_since(Instant::now()))
        }
        _ => QmpError::Protocol(error.to_string()),
    }
}

/// QEMU's `RunState` as libvirt would name it.
fn state_of(status: &Value) -> VmState {
    match status.get("status").and_then(Value::as_str).unwrap_or("") {
        "running" => VmState::Running,
        "paused" | "suspended" | "debug" | "save-vm" | "restore-vm" | "prelaunch" | "io-error"
        | "watchdog" | "colo" => VmState::Paused,
        "inmigrate" | "postmigrate" | "finish-migrate" => VmState::Migrating,
        "shutdown" => VmState::Shutdown,
        "internal-error" | "guest-panicked" => VmState::Crashed,
        _ => VmState::Blocked,
    }
}

/// `query-blockstats`: one entry per drive with a medium (a block node) and a name;
/// QEMU's default empty CD-ROM and floppy drives have no node.
pub fn disks(reply: &Value) -> Vec<VmDisk> {
    reply
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry.get("node-name").is_some())
        .filter_map(|entry| {
            let name = [
                entry.get("device"),
                entry.get("qdev"),
                entry.get("node-name"),
            ]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|name| !name.is_empty())?;
            let stats = entry.get("stats")?;
            let count = |key: &str| stats.get(key).and_then(Value::as_u64).unwrap_or(0);
            let seconds = |key: &str| count(key) as f64 / 1e9;
            Some(VmDisk {
                device: name.chars().take(256).collect(),
                read_ops_total: count("rd_operations"),
                write_ops_total: count("wr_operations"),
                flush_ops_total: count("flush_operations"),
                read_bytes_total: count("rd_bytes"),
                write_bytes_total: count("wr_bytes"),
                read_time_seconds_total: seconds("rd_total_time_ns"),
                write_time_seconds_total: seconds("wr_total_time_ns"),
                flush_time_seconds_total: seconds("flush_total_time_ns"),
                allocation_bytes: None,
                capacity_bytes: None,
            })
        })
        .collect()
}

/// `query-stats` (target `vcpu`, provider `kvm`) by vCPU index.
fn kvm_vcpus(reply: &Value, qom_paths: &[(String, u32)]) -> Vec<(u32, KvmStats)> {
    let mut vcpus: Vec<(u32, KvmStats)> = reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.get("qom-path")?.as_str()?;
            let index = qom_paths.iter().find(|(qom, _)| qom == path)?.1;
            let mut stats = KvmStats::default();
            for stat in entry.get("stats")?.as_array()? {
                if let (Some(name), Some(value)) = (
                    stat.get("name").and_then(Value::as_str),
                    stat.get("value").and_then(Value::as_u64),
                ) {
                    set_kvm_stat(&mut stats, name, value);
                }
            }
            Some((index, stats))
        })
        .collect();
    vcpus.sort_by_key(|(index, _)| *index);
    vcpus
}

/// Sets the KVM statistic `name` (KVM's own name) if it is one we keep.
pub fn set_kvm_stat(stats: &mut KvmStats, name: &str, value: u64) {
    let field = match name {
        "exits" => &mut stats.exits,
        "halt_exits" => &mut stats.halt_exits,
        "io_exits" => &mut stats.io_exits,
        "mmio_exits" => &mut stats.mmio_exits,
        "halt_successful_poll" => &mut stats.halt_successful_poll,
        "halt_attempted_poll" => &mut stats.halt_attempted_poll,
        "halt_wakeup" => &mut stats.halt_wakeup,
        "halt_poll_success_ns" => &mut stats.halt_poll_success_ns,
        "halt_poll_fail_ns" => &mut stats.halt_poll_fail_ns,
        "halt_wait_ns" => &mut stats.halt_wait_ns,
        "pf_fixed" => &mut stats.pf_fixed,
        "irq_injections" => &mut stats.irq_injections,
        _ => return,
    };
    *field = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockstats_replies_become_disks() {
        let reply: Value = serde_json::from_str(
            r##"[{"device": "d0", "node-name": "#block2", "stats": {"rd_bytes": 512, "wr_bytes": 67108864,
                 "rd_operations": 1, "wr_operations": 64, "flush_operations": 2,
                 "wr_total_time_ns": 1500000000}},
                {"device": "", "node-name": "#block1", "stats": {}},
                {"device": "", "stats": {}},
                {"device": "ide1-cd0", "stats": {"rd_bytes": 0}},
                "garbage", {"device": 5}]"##,
        )
        .expect("json");
        let disks = disks(&reply);
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].device, "d0");
        assert_eq!(disks[0].write_bytes_total, 64 << 20);
        assert_eq!(disks[0].write_time_seconds_total, 1.5);
        assert_eq!(disks[1].device, "#block1");
    }

    #[test]
    fn stats_replies_map_to_vcpus_by_qom_path() {
        let reply: Value = serde_json::from_str(
            r#"[{"provider": "kvm", "qom-path": "/machine/unattached/device[2]",
                 "stats": [{"name": "exits", "value": 14}, {"name": "halt_wait_ns", "value": 9},
                           {"name": "halt_wait_hist", "value": [0, 1]}, {"name": "blocking", "value": false}]},
                {"provider": "kvm", "qom-path": "/machine/unknown", "stats": []}]"#,
        )
        .expect("json");
        let vcpus = kvm_vcpus(&reply, &[("/machine/unattached/device[2]".into(), 1)]);
        assert_eq!(vcpus.len(), 1);
        assert_eq!(vcpus[0].0, 1);
        assert_eq!(vcpus[0].1.exits, 14);
        assert_eq!(vcpus[0].1.halt_wait_ns, 9);
    }

    #[test]
    fn guest_stats_need_a_report_and_skip_what_the_guest_does_not_say() {
        assert_eq!(
            guest_memory(&serde_json::json!({"last-update": 0, "stats": {"stat-free-memory": 5}})),
            None
        );
        let memory = guest_memory(&serde_json::json!({"last-update": 1796154838u64,
            "stats": {"stat-total-memory": 215801856u64, "stat-free-memory": 185405440u64,
                      "stat-swap-in": u64::MAX, "stat-minor-faults": 683}}))
        .expect("reported");
        assert_eq!(memory.available_bytes, Some(215801856));
        assert_eq!(memory.unused_bytes, Some(185405440));
        assert_eq!(memory.swap_in_bytes_total, None);
        assert_eq!(memory.minor_faults_total, Some(683));
    }

    #[test]
    fn run_states_map_to_vm_states() {
        for (status, state) in [
            ("running", VmState::Running),
            ("paused", VmState::Paused),
            ("shutdown", VmState::Shutdown),
            ("guest-panicked", VmState::Crashed),
            ("inmigrate", VmState::Migrating),
            ("nonsense", VmState::Blocked),
        ] {
            assert_eq!(state_of(&serde_json::json!({ "status": status })), state);
        }
    }
}
