//! `cargo xtask bench-churn [MINUTES] [CONTAINERS]` (root): the agent under a churning
//! container population. CONTAINERS container cgroups (`docker/<id>` in the memory
//! hierarchy and the cgroup2 tree) exist at all times; every second a tenth of them
//! is removed and as many new ones created, so the whole population turns over every
//! ten seconds. The agent runs from the release build with 1 s intervals, history
//! on, and an alert rule that fires for every container. Every 15 s the bench
//! samples what must stay flat: open descriptors, resident memory, the size of the
//! error counters, the container cycle's wall and CPU time, and how long
//! `GET /api/alerts` takes; it prints them as a table.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Result, is_root, stdout_of, workspace_root};

pub const DEFAULT_MINUTES: u64 = 5;
pub const DEFAULT_CONTAINERS: usize = 10_000;
const AGENT_ADDRESS: &str = "127.0.0.1:18098";
const SAMPLE_EVERY: Duration = Duration::from_secs(15);

pub fn run(minutes: u64, containers: usize) -> Result {
    if !is_root() {
        return Err("bench-churn creates cgroups: run it as root".into());
    }
    let roots = cgroup_roots()?;
    let mut population = Population::new(roots);
    let started = Instant::now();
    population.grow(containers)?;
    eprintln!(
        "xtask: {containers} container cgroups created in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let config = std::env::temp_dir().join("horcrux-bench-churn.toml");
    std::fs::write(
        &config,
        format!(
            "[monitoring]\nnode_metrics_interval = 1\nvm_metrics_interval = 1\n\
             enable_history = true\nmax_containers = {}\n\
             [[alerts]]\nname = \"every-container\"\nscope = \"container\"\n\
             metric = \"memory_usage_bytes\"\nop = \">=\"\nthreshold = 0\n",
            containers.max(1)
        ),
    )
    .map_err(|error| format!("writing {}: {error}", config.display()))?;
    let agent = workspace_root().join("target/release/horcrux-agent");
    let agent = Agent(
        Command::new(&agent)
            .arg("--config")
            .arg(&config)
            .args(["--listen", AGENT_ADDRESS])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("starting {}: {error}", agent.display()))?,
    );
    wait_ready()?;
    println!(
        "| minute | containers | descriptors | RSS MiB | error sources | cycle ms (wall) | cycle ms (CPU) | /api/alerts ms | active alerts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let mut next_sample = Instant::now();
    while Instant::now() < end {
        let tick = Instant::now();
        population.churn(containers / 10)?;
        if Instant::now() >= next_sample {
            println!("{}", sample(agent.0.id(), started.elapsed())?);
            next_sample += SAMPLE_EVERY;
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    println!("{}", sample(agent.0.id(), started.elapsed())?);
    drop(agent);
    let _ = std::fs::remove_file(&config);
    Ok(())
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The memory hierarchy (v1) and the cgroup2 tree, whichever exist: the trees the
/// agent walks for containers.
fn cgroup_roots() -> Result<Vec<PathBuf>> {
    let is_hierarchy = |root: &Path| root.join("cgroup.procs").exists();
    let roots: Vec<PathBuf> = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .filter(|root| is_hierarchy(root))
        .collect();
    match roots.is_empty() {
        false => Ok(roots),
        // Pure cgroup v2.
        true if is_hierarchy(Path::new("/sys/fs/cgroup")) => Ok(vec!["/sys/fs/cgroup".into()]),
        true => Err("no cgroup hierarchy found under /sys/fs/cgroup".into()),
    }
}

/// The churning container cgroups, removed when dropped.
struct Population {
    roots: Vec<PathBuf>,
    live: std::collections::VecDeque<String>,
    next_id: u64,
}

impl Population {
    fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots,
            live: std::collections::VecDeque::new(),
            next_id: 0,
        }
    }

    fn grow(&mut self, count: usize) -> Result {
        for _ in 0..count {
            let id = format!("c0ffee{:058x}", self.next_id);
            self.next_id += 1;
            for root in &self.roots {
                let dir = root.join("docker").join(&id);
                std::fs::create_dir_all(&dir)
                    .map_err(|error| format!("mkdir {}: {error}", dir.display()))?;
            }
            self.live.push_back(id);
        }
        Ok(())
    }

    fn churn(&mut self, count: usize) -> Result {
        for _ in 0..count.min(self.live.len()) {
            if let Some(id) = self.live.pop_front() {
                self.remove(&id);
            }
        }
        self.grow(count)
    }

    fn remove(&self, id: &str) {
        for root in &self.roots {
            let _ = std::fs::remove_dir(root.join("docker").join(id));
        }
    }
}

impl Drop for Population {
    fn drop(&mut self) {
        for id in &self.live {
            self.remove(id);
        }
        for root in &self.roots {
            let _ = std::fs::remove_dir(root.join("docker"));
        }
    }
}

fn wait_ready() -> Result {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if stdout_of(Command::new("curl").args(["-sf", &format!("http://{AGENT_ADDRESS}/readyz")]))
            .is_ok()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("the agent did not become ready within 120 s".into())
}

/// One table row.
fn sample(pid: u32, elapsed: Duration) -> Result<String> {
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .map_err(|error| format!("agent descriptors: {error}"))?;
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.split_whitespace().next()?.parse().ok())
        })
        .ok_or("agent RSS")?;
    let status: serde_json::Value = serde_json::from_str(&stdout_of(
        Command::new("curl").args(["-sf", &format!("http://{AGENT_ADDRESS}/api/status")]),
    )?)
    .map_err(|error| format!("status JSON: {error}"))?;
    let collectors = &status["collectors"];
    let error_sources = ["node", "containers"]
        .iter()
        .filter_map(|name| collectors[name]["errors_by_source"].as_object())
        .map(serde_json::Map::len)
        .sum::<usize>();
    let alerts = stdout_of(Command::new("curl").args([
        "-sf",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total} ",
        &format!("http://{AGENT_ADDRESS}/api/alerts"),
    ]))?;
    let alerts_ms = alerts.trim().parse::<f64>().unwrap_or(f64::NAN) * 1e3;
    let active = serde_json::from_str::<serde_json::Value>(&stdout_of(
        Command::new("curl").args(["-sf", &format!("http://{AGENT_ADDRESS}/api/alerts")]),
    )?)
    .ok()
    .and_then(|body| body["active"].as_array().map(Vec::len))
    .unwrap_or(0);
    let containers = &collectors["containers"];
    Ok(format!(
        "| {:.1} | {} | {descriptors} | {:.1} | {error_sources} | {:.1} | {:.1} | {alerts_ms:.1} | {active} |",
        elapsed.as_secs_f64() / 60.0,
        status["containers"],
        rss_kib as f64 / 1024.0,
        containers["last_duration_ms"].as_f64().unwrap_or(f64::NAN),
        containers["last_cpu_time_ms"].as_f64().unwrap_or(f64::NAN),
    ))
}
