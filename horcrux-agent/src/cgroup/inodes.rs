//! Cgroup directories by inode number. The kernel names a cgroup to BPF programs
//! by its kernfs id, which on 64-bit hosts is the inode number of the cgroup's
//! directory in that hierarchy; this index turns it back into a path.

use std::{
    collections::HashMap,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
};

/// Paths are relative to the hierarchy root, without a leading `/` (the root is "").
#[derive(Debug)]
pub struct InodeIndex {
    root: PathBuf,
    paths: HashMap<u64, String>,
}

impl InodeIndex {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            paths: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, inode: u64) -> Option<&str> {
        self.paths.get(&inode).map(String::as_str)
    }

    /// Walks the whole hierarchy again. A directory entry's inode number comes with
    /// it from `readdir`, so the walk needs no `stat` per cgroup.
    pub fn refresh(&mut self) {
        self.paths.clear();
        if let Ok(root) = std::fs::metadata(&self.root) {
            self.paths.insert(root.ino(), String::new());
        }
        let paths = &mut self.paths;
        super::walk(&self.root, |relative, entry| {
            paths.insert(entry.ino(), relative.to_owned());
            true
        });
    }
}

/// The nearest path among `paths` that is `path` itself or one of its ancestors
/// ("a/b/c" → "a/b/c", "a/b", "a"), by walking up one component at a time.
pub fn nearest_ancestor<'a, T>(paths: &'a HashMap<&str, T>, path: &str) -> Option<&'a T> {
    let mut candidate = path;
    loop {
        if let Some(found) = paths.get(candidate) {
            return Some(found);
        }
        candidate = &candidate[..candidate.rfind('/')?];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_a_tree_by_inode() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("docker/abc/child")).unwrap();
        std::fs::write(root.path().join("docker/cgroup.procs"), "").unwrap();
        let mut index = InodeIndex::new(root.path());
        index.refresh();
        let inode = |path: &str| std::fs::metadata(root.path().join(path)).unwrap().ino();
        assert_eq!(index.path(inode("")), Some(""));
        assert_eq!(
            index.path(inode("docker/abc/child")),
            Some("docker/abc/child")
        );
        assert_eq!(
            index.path(inode("docker/cgroup.procs")),
            None,
            "files are not cgroups"
        );
        std::fs::remove_dir(root.path().join("docker/abc/child")).unwrap();
        let gone = inode("docker/abc");
        std::fs::remove_dir(root.path().join("docker/abc")).unwrap();
        index.refresh();
        assert_eq!(index.path(gone), None);
    }

    #[test]
    fn finds_the_nearest_ancestor() {
        let paths = HashMap::from([("docker/abc", 1), ("lxc.payload.c1", 2)]);
        assert_eq!(nearest_ancestor(&paths, "docker/abc"), Some(&1));
        assert_eq!(nearest_ancestor(&paths, "docker/abc/sub/deeper"), Some(&1));
        assert_eq!(nearest_ancestor(&paths, "lxc.payload.c1/init"), Some(&2));
        assert_eq!(nearest_ancestor(&paths, "docker"), None);
        assert_eq!(nearest_ancestor(&paths, "docker/abcdef"), None);
        assert_eq!(nearest_ancestor(&paths, ""), None);
    }
}
