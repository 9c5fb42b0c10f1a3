//! Data source: `/proc/<pid>`: a process's network namespace and its interface
//! counters, and container names from the runtimes' own processes and metadata.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::cgroup::discovery::Runtime;

/// The inode that identifies a process's network namespace.
pub fn netns_inode(proc_root: &Path, pid: u32) -> std::io::Result<u64> {
    std::fs::metadata(proc_root.join(pid.to_string()).join("ns/net")).map(|meta| meta.ino())
}

/// The agent's own network namespace.
pub fn own_netns_inode(proc_root: &Path) -> std::io::Result<u64> {
    std::fs::metadata(proc_root.join("self/ns/net")).map(|meta| meta.ino())
}

/// Container names as their runtimes know them, cached by container id.
///
/// - Docker: `<data-root>/containers/<id>/config.v2.json` `"Name"`, where data-root is
///   each running `dockerd`'s `--data-root` (default `/var/lib/docker`).
/// - Podman: each `conmon` process's `-c <id> -n <name>` arguments.
/// - LXC: the id is the name. Kubernetes containers have no local name.
#[derive(Debug, Default)]
pub struct RuntimeNames {
    proc_root: PathBuf,
    names: HashMap<String, String>,
    /// Containers looked up without success: the next `/proc` scan waits for a new one.
    unresolved: std::collections::HashSet<String>,
}

impl RuntimeNames {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            names: HashMap::new(),
            unresolved: std::collections::HashSet::new(),
        }
    }

    /// Looks up every container that has no name yet (one `/proc` scan at most), and
    /// forgets containers that are gone.
    pub fn refresh<'a>(&mut self, containers: impl Iterator<Item = (&'a str, Runtime)>) {
        let containers: Vec<(&str, Runtime)> = containers.collect();
        let live: std::collections::HashSet<&str> = containers.iter().map(|(id, _)| *id).collect();
        self.names.retain(|id, _| live.contains(id.as_str()));
        self.unresolved.retain(|id| live.contains(id.as_str()));
        let unnamed: Vec<(&str, Runtime)> = containers
            .into_iter()
            .filter(|(id, runtime)| {
                matches!(runtime, Runtime::Docker | Runtime::Podman)
                    && !self.names.contains_key(*id)
            })
            .collect();
        // Scan only when a container appeared that was not looked up before.
        if unnamed.iter().all(|(id, _)| self.unresolved.contains(*id)) {
            return;
        }
        let (docker_roots, conmon_names) = self.scan_processes();
        for (id, runtime) in unnamed {
            let name = match runtime {
                Runtime::Docker => docker_roots.iter().find_map(|root| docker_name(root, id)),
                _ => conmon_names.get(id).cloned(),
            };
            match name {
                Some(name) => {
                    self.unresolved.remove(id);
                    self.names.insert(id.to_owned(), name);
                }
                None => {
                    self.unresolved.insert(id.to_owned());
                }
            }
        }
    }

    pub fn name(&self, id: &str, runtime: Runtime) -> Option<String> {
        match runtime {
            Runtime::Lxc => Some(id.to_owned()),
            _ => self.names.get(id).cloned(),
        }
    }

    /// Docker data roots and Podman id → name, from every process's command line.
    fn scan_processes(&self) -> (Vec<PathBuf>, HashMap<String, String>) {
        let mut docker_roots = Vec::new();
        let mut conmon_names = HashMap::new();
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            return (docker_roots, conmon_names);
        };
        for entry in entries.flatten() {
            if !entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&str> = cmdline
                .split(|&byte| byte == 0)
                .filter_map(|arg| std::str::from_utf8(arg).ok())
                .collect();
            let program = args
                .first()
                .and_then(|arg| Path::new(arg).file_name())
                .and_then(|name| name.to_str());
            match program {
                Some("dockerd") => docker_roots.push(PathBuf::from(
                    option_value(&args, &["--data-root", "-g", "--graph"])
                        .unwrap_or("/var/lib/docker"),
                )),
                Some("conmon") => {
                    if let (Some(id), Some(name)) = (
                        option_value(&args, &["-c", "--cid"]),
                        option_value(&args, &["-n", "--name"]),
                    ) {
                        conmon_names.insert(id.to_owned(), name.to_owned());
                    }
                }
                _ => {}
            }
        }
        (docker_roots, conmon_names)
    }
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

fn docker_name(data_root: &Path, id: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(rename = "Name")]
        name: String,
    }
    let text =
        std::fs::read_to_string(data_root.join("containers").join(id).join("config.v2.json"))
            .ok()?;
    let config: Config = serde_json::from_str(&text).ok()?;
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

    #[test]
    fn docker_names_come_from_config_v2() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("containers/abc");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("config.v2.json"), r#"{"ID":"abc","Name":"/web"}"#).expect("write");
        assert_eq!(docker_name(root.path(), "abc"), Some("web".into()));
        assert_eq!(docker_name(root.path(), "nope"), None);
    }
}
