//! Data source: the cgroup filesystems. For now, which cgroup layout the host uses.

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

/// Classifies the host from its mounts. A v1 mount that carries no controller
/// (`name=systemd` only) does not make a host v1.
pub fn detect_mode(mounts: &[Mount]) -> CgroupMode {
    let has_v2 = mounts.iter().any(|mount| mount.fs_type == "cgroup2");
    let has_v1_controller = mounts.iter().any(|mount| {
        mount.fs_type == "cgroup"
            && mount
                .super_options
                .split(',')
                .any(|option| V1_CONTROLLERS.contains(&option))
    });
    match (has_v1_controller, has_v2) {
        (true, true) => CgroupMode::Hybrid,
        (true, false) => CgroupMode::V1,
        (false, true) => CgroupMode::V2,
        (false, false) => CgroupMode::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(fs_type: &str, super_options: &str) -> Mount {
        Mount {
            major: 0,
            minor: 0,
            mount_point: "/sys/fs/cgroup/x".into(),
            fs_type: fs_type.into(),
            source: "cgroup".into(),
            super_options: super_options.into(),
        }
    }

    #[test]
    fn classifies_layouts() {
        let v2 = mount("cgroup2", "rw,nsdelegate");
        let memory = mount("cgroup", "rw,memory");
        let systemd_only = mount("cgroup", "rw,xattr,name=systemd");
        assert_eq!(detect_mode(std::slice::from_ref(&v2)), CgroupMode::V2);
        assert_eq!(detect_mode(std::slice::from_ref(&memory)), CgroupMode::V1);
        assert_eq!(detect_mode(&[memory, v2.clone()]), CgroupMode::Hybrid);
        assert_eq!(detect_mode(&[systemd_only, v2]), CgroupMode::V2);
        assert_eq!(detect_mode(&[]), CgroupMode::None);
    }
}
