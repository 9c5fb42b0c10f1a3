//! Data source: `statvfs(2)` on mounted filesystems, computed the way `df` does.

use std::path::Path;

use crate::procfs::mountinfo::Mount;

/// Pseudo and overlay filesystems that hold no user data (node_exporter's default exclusions).
const IGNORED_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// Mount points below which only runtime internals live.
const IGNORED_MOUNT_PREFIXES: &[&str] = &[
    "/dev/",
    "/proc/",
    "/sys/",
    "/run/credentials/",
    "/var/lib/docker/",
    "/var/lib/containers/storage/",
];

/// Filesystems a user would see in `df`: no pseudo filesystems, and each device once
/// (bind mounts of the same filesystem are reported at their shortest mount point).
pub fn real_filesystems(mounts: &[Mount]) -> Vec<&Mount> {
    let mut chosen: Vec<&Mount> = Vec::new();
    let wanted = mounts.iter().filter(|mount| {
        !IGNORED_FS_TYPES.contains(&mount.fs_type.as_str())
            && !matches!(mount.mount_point.as_str(), "/dev" | "/proc" | "/sys")
            && !IGNORED_MOUNT_PREFIXES
                .iter()
                .any(|prefix| mount.mount_point.starts_with(prefix))
    });
    for mount in wanted {
        match chosen
            .iter_mut()
            .find(|seen| (seen.major, seen.minor) == (mount.major, mount.minor))
        {
            Some(seen) if mount.mount_point.len() < seen.mount_point.len() => *seen = mount,
            Some(_) => {}
            None => chosen.push(mount),
        }
    }
    chosen
}

/// Filesystems whose `statvfs` can wait on something other than this kernel: a
/// network server, a user-space daemon (FUSE), a cluster lock. Unknown types (`""`)
/// count as such.
pub fn may_hang(fs_type: &str) -> bool {
    const LOCAL: &[&str] = &[
        "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "vfat", "exfat", "f2fs", "zfs",
        "jfs", "reiserfs", "ntfs3", "devtmpfs", "erofs",
    ];
    !LOCAL.contains(&fs_type)
}

/// Space and inode usage of the filesystem holding `path`.
pub fn usage(path: &Path) -> nix::Result<Usage> {
    let stat = nix::sys::statvfs::statvfs(path)?;
    let block = stat.fragment_size();
    let blocks = stat.blocks();
    let free = stat.blocks_free();
    let available = stat.blocks_available();
    Ok(Usage {
        size_bytes: blocks * block,
        used_bytes: blocks.saturating_sub(free) * block,
        available_bytes: available * block,
        inodes_total: stat.files(),
        inodes_free: stat.files_free(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

impl Usage {
    /// `df`'s Use%: used / (used + available), which leaves out root-reserved blocks.
    pub fn usage_percent(&self) -> f64 {
        let usable = self.used_bytes + self.available_bytes;
        if usable == 0 {
            0.0
        } else {
            self.used_bytes as f64 * 100.0 / usable as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(major: u32, minor: u32, point: &str, fs_type: &str) -> Mount {
        Mount {
            major,
            minor,
            mount_point: point.into(),
            fs_type: fs_type.into(),
            source: "/dev/x".into(),
            super_options: String::new(),
        }
    }

    #[test]
    fn keeps_real_filesystems_once_each() {
        let mounts = [
            mount(0, 22, "/proc", "proc"),
            mount(254, 0, "/", "ext4"),
            mount(254, 0, "/srv/bind", "ext4"),
            mount(0, 30, "/sys/fs/cgroup/memory", "cgroup"),
            mount(0, 40, "/run", "tmpfs"),
            mount(0, 41, "/var/lib/docker/overlay2/x/merged", "ext4"),
        ];
        let points: Vec<_> = real_filesystems(&mounts)
            .iter()
            .map(|m| m.mount_point.as_str())
            .collect();
        assert_eq!(points, ["/", "/run"]);
    }

    #[test]
    fn usage_percent_leaves_out_reserved_blocks() {
        let usage = Usage {
            size_bytes: 100,
            used_bytes: 45,
            available_bytes: 45,
            inodes_total: 0,
            inodes_free: 0,
        };
        assert_eq!(usage.usage_percent(), 50.0);
    }
}
