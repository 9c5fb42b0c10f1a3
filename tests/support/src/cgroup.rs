//! Container-like cgroups for live tests (root): `docker/<64-hex id>` in every
//! hierarchy of this host, with workloads started inside, removed in `Drop`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use horcrux_agent::{cgroup::Hierarchies, procfs::mountinfo};

pub fn hierarchies() -> Hierarchies {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    Hierarchies::from_mounts(&mountinfo::parse(&text).expect("parses"))
}

/// One live test at a time: they share the `docker/` parents, and a CPU burner in
/// one would skew another's numbers. Hold the guard for the whole test.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A container-like cgroup `docker/<random 64-hex id>` in every hierarchy.
pub struct TestCgroup {
    pub id: String,
    /// Below every hierarchy root: `<parent>/<leaf>`.
    parent: String,
    leaf: String,
    hierarchies: Hierarchies,
    dirs: Vec<PathBuf>,
    /// `docker/` parents that did not exist before the test.
    created_parents: Vec<PathBuf>,
    children: Vec<Child>,
    pub namespaces: Vec<String>,
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCgroup {
    pub fn new() -> Self {
        Self::with_id(random_id())
    }

    /// A cgroup for the 64-hex `id` (tests of id prefixes choose their own).
    pub fn with_id(id: String) -> Self {
        Self::at("docker", id.clone(), id)
    }

    /// A Podman-like cgroup `libpod_parent/libpod-<random id>`.
    pub fn podman() -> Self {
        let id = random_id();
        Self::at("libpod_parent", format!("libpod-{id}"), id)
    }

    /// A cgroup of its own for a VM: `horcrux-vms/<name>` in every hierarchy.
    pub fn vm(name: &str) -> Self {
        Self::at("horcrux-vms", name.to_owned(), name.to_owned())
    }

    /// Moves the process `pid` (all its threads) into the cgroup in every hierarchy.
    pub fn adopt(&self, pid: u32) {
        for dir in &self.dirs {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|error| panic!("moving {pid} to {}: {error}", dir.display()));
        }
    }

    fn at(parent: &str, leaf: String, id: String) -> Self {
        let hierarchies = hierarchies();
        let mut roots: Vec<PathBuf> = hierarchies.v1.values().cloned().collect();
        roots.sort();
        roots.dedup();
        roots.extend(hierarchies.unified.clone());
        let mut cgroup = Self {
            id,
            parent: parent.to_owned(),
            leaf,
            hierarchies,
            dirs: Vec::new(),
            created_parents: Vec::new(),
            children: Vec::new(),
            namespaces: Vec::new(),
        };
        for root in roots {
            let parent = root.join(&cgroup.parent);
            if !parent.exists() {
                create_dir(&parent, &root);
                cgroup.created_parents.push(parent.clone());
            }
            let dir = parent.join(&cgroup.leaf);
            create_dir(&dir, &root);
            cgroup.dirs.push(dir);
        }
        cgroup
    }

    pub fn controller_file(&self, controller: &str, file: &str) -> PathBuf {
        self.hierarchies.v1[controller]
            .join(&self.parent)
            .join(&self.leaf)
            .join(file)
    }

    /// The cgroup's path below every hierarchy root, as the agent names it.
    pub fn relative_path(&self) -> String {
        format!("{}/{}", self.parent, self.leaf)
    }

    /// Process ids in the cgroup (read from the memory hierarchy).
    pub fn members(&self) -> Vec<u32> {
        self.kernel_value("memory", "cgroup.procs")
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    pub fn kernel_value(&self, controller: &str, file: &str) -> String {
        std::fs::read_to_string(self.controller_file(controller, file)).expect("kernel file")
    }

    pub fn write(&self, controller: &str, file: &str, value: &str) {
        std::fs::write(self.controller_file(controller, file), value).expect("write cgroup file");
    }

    /// Runs `script` with sh after the shell has joined the cgroup in every hierarchy,
    /// so everything it does is charged to the cgroup from its first instruction.
    /// `program` is passed to the script as `$PROGRAM` (no quoting to get wrong).
    pub fn run(&mut self, script: &str, program: &str) -> u32 {
        let procs: Vec<String> = self
            .dirs
            .iter()
            .map(|dir| dir.join("cgroup.procs").display().to_string())
            .collect();
        let joined = format!(
            "for f in {}; do echo $$ > $f || exit 9; done; {script}",
            procs.join(" ")
        );
        let child = Command::new("sh")
            .args(["-c", &joined])
            .env("PROGRAM", program)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn workload");
        let pid = child.id();
        self.children.push(child);
        // Wait until the process is a member (the shell writes cgroup.procs first).
        wait_for(|| {
            self.kernel_value("memory", "cgroup.procs")
                .lines()
                .any(|line| line.trim() == pid.to_string())
        });
        pid
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Workloads may have started processes of their own: end every member.
        for dir in &self.dirs {
            let members = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in members
                .lines()
                .filter_map(|line| line.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for namespace in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "delete", namespace])
                .status();
        }
        // A cgroup can be removed once its processes have exited: retry briefly.
        for dir in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Parents this cgroup created go too, unless another test cgroup still uses them.
        for parent in &self.created_parents {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Makes a cgroup directory; a v1 cpuset cgroup takes no task until it has CPUs and
/// memory nodes, so those are copied from the hierarchy root (as runtimes do).
fn create_dir(dir: &Path, root: &Path) {
    std::fs::create_dir(dir).unwrap_or_else(|error| panic!("mkdir {}: {error}", dir.display()));
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if let Ok(value) = std::fs::read_to_string(root.join(file)) {
            std::fs::write(dir.join(file), value.trim())
                .unwrap_or_else(|error| panic!("{file}: {error}"));
        }
    }
}

/// A random 64-hex-digit container id.
pub fn random_id() -> String {
    (0..4).map(|_| format!("{:016x}", rand_u64())).collect()
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut file) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut file, &mut bytes);
    }
    u64::from_ne_bytes(bytes)
}

pub fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}
