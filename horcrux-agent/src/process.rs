//! Data source: `/proc/<pid>`: a process's network namespace, and container names
//! and rootless containers from the runtimes' own processes and metadata, read
//! with the care a root process owes files that other users can shape.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    cgroup::discovery::DiscoveredContainer,
    model::Runtime,
    probe::{Probe, Prober},
};

/// The inode that identifies a process's network namespace.
pub fn netns_inode(proc_root: &Path, pid: u32) -> std::io::Result<u64> {
    std::fs::metadata(proc_root.join(pid.to_string()).join("ns/net")).map(|meta| meta.ino())
}

/// The agent's own network namespace.
pub fn own_netns_inode(proc_root: &Path) -> std::io::Result<u64> {
    std::fs::metadata(proc_root.join("self/ns/net")).map(|meta| meta.ino())
}

/// The runtime processes the agent trusts for container names and for rootless
/// containers, from one `/proc` scan.
///
/// A process counts only if its executable (`/proc/<pid>/exe`, which its owner
/// cannot fake, unlike `argv[0]` or `comm`) is a root-owned file that no one else
/// can write, with the runtime's file name; a script of that name runs as its
/// interpreter and does not count. A process owned by root speaks for root
/// containers; one owned by another user speaks only for that user's rootless
/// containers (see [`RuntimeProcesses::runs`]).
#[derive(Debug, Clone, Default)]
pub struct RuntimeProcesses {
    /// Each running dockerd's data root, with the uid that runs it.
    pub docker_roots: Vec<(PathBuf, u32)>,
    /// conmon `-c <id> -n <name>`: (id, uid) → name.
    pub conmon_names: HashMap<(String, u32), String>,
    /// containerd shims (rootless Docker): (container id, uid).
    pub shims: HashSet<(String, u32)>,
}

impl RuntimeProcesses {
    /// Scans `proc_root`. Reads `comm` first (cheap, no lock on the process's
    /// memory) and only then the executable, owner and command line of candidates.
    pub fn scan(proc_root: &Path) -> Self {
        let mut found = Self::default();
        let Ok(entries) = std::fs::read_dir(proc_root) else {
            return found;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let dir = proc_root.join(pid);
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            // comm is the executable's name cut to 15 bytes.
            let Some(&program) = RUNTIME_PROGRAMS
                .iter()
                .find(|program| program.starts_with(comm.trim_end()) && !comm.trim().is_empty())
            else {
                continue;
            };
            let Some(uid) = trusted_executable_uid(&dir, |name| name == program) else {
                continue;
            };
            let Ok(cmdline) = read_capped(&dir.join("cmdline"), MAX_CMDLINE) else {
                continue;
            };
            let args: Vec<&str> = cmdline
                .split(|&byte| byte == 0)
                .filter_map(|arg| std::str::from_utf8(arg).ok())
                .collect();
            match program {
                "dockerd" => {
                    let root = option_value(&args, &["--data-root", "-g", "--graph"])
                        .map(PathBuf::from)
                        .or_else(|| default_docker_root(uid));
                    found.docker_roots.extend(root.map(|root| (root, uid)));
                }
                "conmon" => {
                    if let (Some(id), Some(name)) = (
                        option_value(&args, &["-c", "--cid"]),
                        option_value(&args, &["-n", "--name"]),
                    ) {
                        found
                            .conmon_names
                            .insert((id.to_owned(), uid), name.to_owned());
                    }
                }
                _ => {
                    if let Some(id) = option_value(&args, &["-id"]) {
                        found.shims.insert((id.to_owned(), uid));
                    }
                }
            }
        }
        found
    }

    /// Whether a runtime process of `uid` runs the rootless container `id`.
    pub fn runs(&self, runtime: Runtime, id: &str, uid: u32) -> bool {
        match runtime {
            Runtime::Podman => self.conmon_names.contains_key(&(id.to_owned(), uid)),
            Runtime::Docker => self.shims.contains(&(id.to_owned(), uid)),
            _ => false,
        }
    }
}

/// Executables whose processes name containers or vouch for rootless ones.
const RUNTIME_PROGRAMS: &[&str] = &["dockerd", "conmon", "containerd-shim-runc-v2"];
/// Longest command line read from a runtime process.
const MAX_CMDLINE: usize = 64 * 1024;
/// Largest runtime metadata file read (`config.v2.json` is a few KiB).
pub const MAX_METADATA: usize = 1024 * 1024;

/// The uid a process (`dir` = `/proc/<pid>`) runs as, if its executable is a
/// root-owned regular file no one else can write whose name `accepts`. Real and
/// effective uid must agree (no set-uid games).
pub(crate) fn trusted_executable_uid(dir: &Path, accepts: impl Fn(&str) -> bool) -> Option<u32> {
    let exe = std::fs::read_link(dir.join("exe")).ok()?;
    let exe_name = exe.file_name()?.to_str()?;
    if !accepts(exe_name.trim_end_matches(" (deleted)")) {
        return None;
    }
    let binary = std::fs::metadata(dir.join("exe")).ok()?;
    if !binary.is_file() || binary.uid() != 0 || binary.mode() & 0o022 != 0 {
        return None;
    }
    let status = read_capped(&dir.join("status"), 16 * 1024).ok()?;
    let status = std::str::from_utf8(&status).ok()?;
    let ids: Vec<u32> = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect();
    match ids[..] {
        [real, effective, ..] if real == effective => Some(effective),
        _ => None,
    }
}

/// Rootless dockerd's default data root: `~/.local/share/docker`.
fn default_docker_root(uid: u32) -> Option<PathBuf> {
    if uid == 0 {
        return Some(PathBuf::from("/var/lib/docker"));
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(user.dir.join(".local/share/docker"))
}

/// Reads at most `cap` bytes; a longer file is an error.
pub(crate) fn read_capped(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > cap {
        return Err(std::io::Error::other(format!("larger than {cap} bytes")));
    }
    Ok(bytes)
}

/// Reads a file that belongs to `owner` the way a root process must when others
/// can shape the path: every directory from `/` down is owned by root or `owner`
/// and writable by no one else (or is root's sticky directory, like `/tmp`), no
/// component is a symbolic link (checked with `O_NOFOLLOW` at each step, after the
/// directory's own links were resolved once), and the file is a regular file of
/// `owner`'s, no larger than `cap`. Opened with `O_NONBLOCK`, so a FIFO cannot hang
/// the open; the caller still runs this under a timeout (a FUSE mount can).
pub fn read_owned_file(path: &Path, owner: u32, cap: usize) -> Result<Vec<u8>, String> {
    use nix::{fcntl::OFlag, sys::stat::Mode};
    use std::io::Read;
    let parent = path
        .parent()
        .ok_or("no parent directory")?
        .canonicalize()
        .map_err(|error| format!("resolving {}: {error}", path.display()))?;
    let file_name = path.file_name().ok_or("no file name")?;
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
    let open = |dir: &std::os::fd::OwnedFd, name: &std::ffi::OsStr, extra: OFlag| {
        nix::fcntl::openat(dir, name, flags | extra, Mode::empty())
            .map_err(|error| format!("opening {:?} in {}: {error}", name, path.display()))
    };
    let mut dir: std::os::fd::OwnedFd =
        nix::fcntl::open("/", flags | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|error| format!("opening /: {error}"))?;
    check_directory(&dir, owner, Path::new("/"))?;
    for component in parent.components().skip(1) {
        let name = component.as_os_str();
        dir = open(&dir, name, OFlag::O_DIRECTORY)?;
        check_directory(&dir, owner, Path::new(name))?;
    }
    let file = open(&dir, file_name, OFlag::empty())?;
    let stat = nix::sys::stat::fstat(&file).map_err(|error| error.to_string())?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if stat.st_uid != owner {
        return Err(format!(
            "{} belongs to uid {}, not {owner}",
            path.display(),
            stat.st_uid
        ));
    }
    if stat.st_size as u64 > cap as u64 {
        return Err(format!("{} is larger than {cap} bytes", path.display()));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(file)
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("reading {}: {error}", path.display()))?;
    if bytes.len() > cap {
        return Err(format!("{} is larger than {cap} bytes", path.display()));
    }
    Ok(bytes)
}

fn check_directory(dir: &std::os::fd::OwnedFd, owner: u32, name: &Path) -> Result<(), String> {
    let stat = nix::sys::stat::fstat(dir).map_err(|error| error.to_string())?;
    let owned = stat.st_uid == 0 || stat.st_uid == owner;
    let others_write = stat.st_mode & 0o022 != 0;
    let sticky_root = stat.st_uid == 0 && stat.st_mode & libc::S_ISVTX != 0;
    if owned && (!others_write || sticky_root) {
        Ok(())
    } else {
        Err(format!(
            "directory {} (uid {}, mode {:o}) can be changed by others than uid {owner}",
            name.display(),
            stat.st_uid,
            stat.st_mode & 0o7777
        ))
    }
}

/// Container names as their runtimes know them, and which rootless containers a
/// runtime vouches for; cached by cgroup path (an id can be claimed twice).
///
/// - Docker: `<data-root>/containers/<id>/config.v2.json` `"Name"`, read with
///   [`read_owned_file`] from the data root of a dockerd of the container's owner.
/// - Podman: the `-n <name>` of the container owner's `conmon -c <id>`.
/// - LXC: the id is the name. Kubernetes containers have no local name.
///
/// The `/proc` scan and each metadata read run under a [`Prober`] timeout: a
/// process stuck in a page fault or a hung mount costs one timeout, then is skipped.
pub struct RuntimeNames {
    proc_root: PathBuf,
    prober: Prober,
    processes: RuntimeProcesses,
    /// Names found (or `None`: looked up, no name), by cgroup path.
    names: HashMap<String, Option<String>>,
    /// Cycles since the last `/proc` scan.
    since_scan: u32,
}

/// A rootless candidate nothing vouched for is looked for again after this many
/// cycles (not every cycle: a user can create thousands of them).
const RESCAN_CYCLES: u32 = 10;
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl RuntimeNames {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            prober: Prober::new(PROBE_TIMEOUT),
            processes: RuntimeProcesses::default(),
            names: HashMap::new(),
            since_scan: RESCAN_CYCLES,
        }
    }

    /// Looks up the containers not seen before (one `/proc` scan at most), forgets
    /// those that are gone, and returns the containers to trust: every root one,
    /// and the rootless ones their owner's runtime runs.
    pub fn refresh(&mut self, containers: Vec<DiscoveredContainer>) -> RuntimeVerdict {
        let live: HashSet<&str> = containers
            .iter()
            .map(|container| container.relative_path.as_str())
            .collect();
        self.names.retain(|path, _| live.contains(path.as_str()));
        self.since_scan = self.since_scan.saturating_add(1);
        let new_container = containers.iter().any(|container| {
            needs_name(container.runtime) && !self.names.contains_key(&container.relative_path)
        });
        let unverified = containers.iter().any(|container| {
            container
                .owner_uid
                .is_some_and(|uid| !self.processes.runs(container.runtime, &container.id, uid))
        });
        let unnamed = self.names.values().any(Option::is_none);
        if new_container || ((unverified || unnamed) && self.since_scan >= RESCAN_CYCLES) {
            let proc_root = self.proc_root.clone();
            if let Probe::Done(processes) = self
                .prober
                .run("/proc scan", move || RuntimeProcesses::scan(&proc_root))
            {
                self.processes = processes;
                // Names not found before are looked up again.
                self.names.retain(|_, name| name.is_some());
            }
            self.since_scan = 0;
        }
        let mut verdict = RuntimeVerdict::default();
        for container in containers {
            let trusted = container
                .owner_uid
                .is_none_or(|uid| self.processes.runs(container.runtime, &container.id, uid));
            if !trusted {
                verdict.unverified += 1;
                continue;
            }
            if needs_name(container.runtime) && !self.names.contains_key(&container.relative_path) {
                let name = self.look_up(&container);
                self.names.insert(container.relative_path.clone(), name);
            }
            verdict.trusted.push(container);
        }
        verdict
    }

    pub fn name(&self, container: &DiscoveredContainer) -> Option<String> {
        match container.runtime {
            Runtime::Lxc => Some(container.id.clone()),
            _ => self.names.get(&container.relative_path).cloned().flatten(),
        }
    }

    /// Runtime metadata files that did not answer in time.
    pub fn stuck(&self) -> Vec<String> {
        self.prober.stuck()
    }

    fn look_up(&self, container: &DiscoveredContainer) -> Option<String> {
        let owner = container.owner_uid.unwrap_or(0);
        match container.runtime {
            Runtime::Podman => self
                .processes
                .conmon_names
                .get(&(container.id.clone(), owner))
                .cloned(),
            Runtime::Docker => self
                .processes
                .docker_roots
                .iter()
                .filter(|(_, uid)| *uid == owner)
                .find_map(|(root, _)| {
                    let path = root
                        .join("containers")
                        .join(&container.id)
                        .join("config.v2.json");
                    let key = path.display().to_string();
                    match self
                        .prober
                        .run(&key, move || read_owned_file(&path, owner, MAX_METADATA))
                    {
                        Probe::Done(Ok(bytes)) => docker_name(&bytes),
                        Probe::Done(Err(error)) => {
                            tracing::debug!("docker metadata refused: {error}");
                            None
                        }
                        Probe::Stale => None,
                    }
                }),
            _ => None,
        }
    }
}

/// Which containers a runtime vouched for.
#[derive(Debug, Default)]
pub struct RuntimeVerdict {
    pub trusted: Vec<DiscoveredContainer>,
    /// Rootless candidates no runtime process of their user runs.
    pub unverified: u64,
}

fn needs_name(runtime: Runtime) -> bool {
    matches!(runtime, Runtime::Docker | Runtime::Podman)
}

/// `--flag value` or `--flag=value`.
fn option_value<'a>(args: &[&'a str], flags: &[&str]) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(index, arg)| {
        flags.iter().find_map(|flag| {
            if arg == flag {
                args.get(index + 1).copied()
            } else {
                arg.strip_prefix(flag)?.strip_prefix('=')
            }
        })
    })
}

fn docker_name(config_v2: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(rename = "Name")]
        name: String,
    }
    let config: Config = serde_json::from_slice(config_v2).ok()?;
    Some(config.name.trim_start_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_in_both_spellings() {
        let args = ["dockerd", "--data-root=/tmp/d", "-H", "unix:///s"];
        assert_eq!(option_value(&args, &["--data-root"]), Some("/tmp/d"));
        let args = ["conmon", "--api-version", "1", "-c", "abc", "-n", "web"];
        assert_eq!(option_value(&args, &["-c", "--cid"]), Some("abc"));
        assert_eq!(option_value(&args, &["-n", "--name"]), Some("web"));
        assert_eq!(option_value(&args, &["--missing"]), None);
        assert_eq!(option_value(&["x", "-n"], &["-n"]), None);
    }

    /// A private directory below the system's temporary directory, and its owner.
    fn private_dir() -> (tempfile::TempDir, u32) {
        let dir = tempfile::tempdir().expect("temp dir");
        let owner = std::fs::metadata(dir.path()).expect("stat").uid();
        (dir, owner)
    }

    #[test]
    fn owned_regular_files_are_read() {
        let (dir, owner) = private_dir();
        let path = dir.path().join("config.v2.json");
        std::fs::write(&path, "{}").expect("write");
        assert_eq!(read_owned_file(&path, owner, 1024), Ok(b"{}".to_vec()));
    }

    #[test]
    fn hostile_metadata_files_are_refused_without_blocking() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let (dir, owner) = private_dir();
        let started = std::time::Instant::now();
        // A FIFO (opening it for reading would wait for a writer forever).
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644))
            .expect("mkfifo");
        assert!(read_owned_file(&fifo, owner, MAX_METADATA).is_err());
        // A link to an endless device, and a link to a real file.
        let zero = dir.path().join("zero");
        symlink("/dev/zero", &zero).expect("symlink");
        assert!(read_owned_file(&zero, owner, MAX_METADATA).is_err());
        // A 1 GiB sparse file: refused by its size, never read.
        let sparse = dir.path().join("sparse");
        std::fs::File::create(&sparse)
            .and_then(|file| file.set_len(1 << 30))
            .expect("sparse file");
        assert!(read_owned_file(&sparse, owner, MAX_METADATA).is_err());
        // A file of another owner.
        let file = dir.path().join("file");
        std::fs::write(&file, "{}").expect("write");
        assert!(read_owned_file(&file, owner + 1, MAX_METADATA).is_err());
        // A directory on the way that others can write.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        std::fs::write(open.join("file"), "{}").expect("write");
        assert!(read_owned_file(&open.join("file"), owner, MAX_METADATA).is_err());
        // A linked directory on the way is resolved once, then checked.
        let linked = dir.path().join("linked");
        symlink(dir.path(), &linked).expect("symlink");
        assert!(read_owned_file(&linked.join("file"), owner, MAX_METADATA).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_script_named_like_a_runtime_is_not_that_runtime() {
        // This test's own process: its executable is not called dockerd.
        let me = Path::new("/proc/self");
        assert_eq!(trusted_executable_uid(me, |name| name == "dockerd"), None);
    }

    #[test]
    fn docker_names_come_from_config_v2() {
        assert_eq!(
            docker_name(br#"{"ID":"abc","Name":"/web"}"#),
            Some("web".into())
        );
        assert_eq!(docker_name(b"{"), None);
    }
}
