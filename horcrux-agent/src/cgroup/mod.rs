//! Data source: the cgroup filesystems. [`Hierarchies`] finds where cgroup2 and each
//! v1 controller are mounted and says which one holds a controller's files;
//! [`discovery`] recognises container cgroups; [`stats`] reads their counters;
//! [`files`] parses the file formats.

pub mod discovery;
pub mod files;
pub mod inodes;
pub mod stats;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::procfs::mountinfo::Mount;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    /// Only the unified cgroup2 hierarchy.
    V2,
    /// Only v1 controller hierarchies.
    V1,
    /// v1 controllers plus a cgroup2 tree (usually `/sys/fs/cgroup/unified`).
    Hybrid,
    /// No cgroup filesystem mounted.
    None,
}

impl CgroupMode {
    /// As serialized.
    pub fn name(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V1 => "v1",
            Self::Hybrid => "hybrid",
            Self::None => "none",
        }
    }
}

const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// Which hierarchy a controller's files are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy<'a> {
    Unified(&'a Path),
    V1(&'a Path),
}

impl Hierarchy<'_> {
    pub fn root(&self) -> &Path {
        match self {
            Hierarchy::Unified(root) | Hierarchy::V1(root) => root,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// Where cgroup2 is mounted.
    pub unified: Option<PathBuf>,
    /// Controllers available on cgroup2 (its root `cgroup.controllers`).
    pub unified_controllers: Vec<String>,
    /// v1 controller → mount point of its hierarchy (co-mounted controllers share one).
    pub v1: BTreeMap<String, PathBuf>,
}

impl Hierarchies {
    /// From `/proc/self/mountinfo`; reads the cgroup2 root's `cgroup.controllers`.
    pub fn from_mounts(mounts: &[Mount]) -> Self {
        let mut hierarchies = Self::default();
        for mount in mounts {
            match mount.fs_type.as_str() {
                // Prefer the host's usual location if cgroup2 is mounted more than once.
                "cgroup2"
                    if hierarchies.unified.is_none()
                        || mount.mount_point.starts_with("/sys/fs/cgroup") =>
                {
                    hierarchies.unified = Some(PathBuf::from(&mount.mount_point));
                }
                "cgroup" => {
                    for option in mount.super_options.split(',') {
                        if V1_CONTROLLERS.contains(&option) {
                            hierarchies
                                .v1
                                .entry(option.to_owned())
                                .or_insert_with(|| PathBuf::from(&mount.mount_point));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = &hierarchies.unified {
            hierarchies.unified_controllers =
                std::fs::read_to_string(root.join("cgroup.controllers"))
                    .map(|text| text.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default();
        }
        hierarchies
    }

    pub fn mode(&self) -> CgroupMode {
        match (!self.v1.is_empty(), self.unified.is_some()) {
            (true, true) => CgroupMode::Hybrid,
            (true, false) => CgroupMode::V1,
            (false, true) => CgroupMode::V2,
            (false, false) => CgroupMode::None,
        }
    }

    /// cgroup2 when the controller is enabled there, else its v1 hierarchy.
    pub fn locate(&self, v2_name: &str, v1_name: &str) -> Option<Hierarchy<'_>> {
        match &self.unified {
            Some(root) if self.unified_controllers.iter().any(|c| c == v2_name) => {
                Some(Hierarchy::Unified(root))
            }
            _ => self.v1.get(v1_name).map(|root| Hierarchy::V1(root)),
        }
    }

    /// The trees to walk for container cgroups: cgroup2 and one v1 hierarchy (memory
    /// first, as every runtime creates a memory cgroup), de-duplicated by path.
    pub fn discovery_roots(&self) -> Vec<&Path> {
        let mut roots: Vec<&Path> = self.unified.iter().map(PathBuf::as_path).collect();
        let primary = ["memory", "cpu", "pids", "cpuacct", "blkio"]
            .iter()
            .find_map(|controller| self.v1.get(*controller));
        roots.extend(primary.map(PathBuf::as_path));
        roots
    }
}

/// Walks the cgroup directories below `root` depth first. `visit` gets each one's
/// path relative to the root (no leading `/`) and its directory entry, and says
/// whether to descend into it. Directories that vanish during the walk are skipped.
pub fn walk(root: &Path, mut visit: impl FnMut(&str, &std::fs::DirEntry) -> bool) {
    let mut pending = vec![String::new()];
    while let Some(relative) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&relative)) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let child = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            if visit(&child, &entry) {
                pending.push(child);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(point: &str, fs_type: &str, super_options: &str) -> Mount {
        Mount {
            major: 0,
            minor: 0,
            mount_point: point.into(),
            fs_type: fs_type.into(),
            source: "cgroup".into(),
            super_options: super_options.into(),
        }
    }

    #[test]
    fn classifies_layouts() {
        let v2 = mount("/nonexistent/unified", "cgroup2", "rw,nsdelegate");
        let cpu = mount("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct");
        let systemd_only = mount("/sys/fs/cgroup/systemd", "cgroup", "rw,xattr,name=systemd");
        let mode = |mounts: &[Mount]| Hierarchies::from_mounts(mounts).mode();
        assert_eq!(mode(std::slice::from_ref(&v2)), CgroupMode::V2);
        assert_eq!(mode(std::slice::from_ref(&cpu)), CgroupMode::V1);
        assert_eq!(mode(&[cpu.clone(), v2.clone()]), CgroupMode::Hybrid);
        assert_eq!(mode(&[systemd_only, v2]), CgroupMode::V2);
        assert_eq!(mode(&[]), CgroupMode::None);
        let hierarchies = Hierarchies::from_mounts(&[cpu]);
        assert_eq!(
            hierarchies.v1.get("cpuacct"),
            Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
    }

    #[test]
    fn locates_controllers_in_v2_only_when_enabled_there() {
        let hierarchies = Hierarchies {
            unified: Some("/u".into()),
            unified_controllers: vec!["hugetlb".into()],
            v1: BTreeMap::from([("memory".into(), PathBuf::from("/m"))]),
        };
        assert_eq!(
            hierarchies.locate("memory", "memory"),
            Some(Hierarchy::V1(Path::new("/m")))
        );
        assert_eq!(
            hierarchies.locate("hugetlb", "hugetlb"),
            Some(Hierarchy::Unified(Path::new("/u")))
        );
        assert_eq!(hierarchies.locate("io", "blkio"), None);
        assert_eq!(
            hierarchies.discovery_roots(),
            [Path::new("/u"), Path::new("/m")]
        );
    }
}
