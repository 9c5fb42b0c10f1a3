//! Recognises container cgroups by their path, as each runtime names them, and
//! only where that runtime puts them: a directory that an unprivileged user can
//! create (in a delegated subtree) must not pass for a root container.
//!
//! | runtime | cgroup path (relative to a hierarchy root) |
//! |---|---|
//! | Docker, systemd driver | `system.slice/docker-<id>.scope` |
//! | Docker, cgroupfs driver | `docker/<id>` |
//! | Podman | `machine.slice/libpod-<id>.scope`, `libpod_parent/libpod-<id>` |
//! | containerd (CRI) | `kubepods…/…/cri-containerd-<id>.scope` |
//! | CRI-O | `kubepods…/…/crio-<id>.scope` |
//! | Kubernetes, cgroupfs driver | `kubepods/[burstable\|besteffort/]pod<uid>/<id>` |
//! | LXC / Incus | `lxc.payload.<name>`, `lxc/<name>` (at the top) |
//! | rootless Podman / Docker | `user.slice/…/user@<uid>.service/…/libpod-<id>.scope` or `docker-<id>.scope` |
//!
//! `<id>` is 64 hex digits. Helper cgroups (`libpod-conmon-…`, `crio-conmon-…`,
//! `lxc.monitor.…`, `lxc.pivot`, `….mount`) do not match, and the walk does not
//! descend into a recognised container (its `init.scope` and other children belong
//! to it). A rootless candidate is only a candidate: the collector accepts it once
//! a runtime process of that user is found running it ([`crate::process`]).

use std::{collections::HashSet, path::Path};

use crate::model::{Pod, QosClass, Runtime};

/// Deepest cgroup the walk visits (rootless Podman sits about 6 levels down).
const MAX_DEPTH: usize = 12;
/// Directories visited per walk at most: a user can create any number in a
/// delegated subtree, and the walk must stay bounded.
pub const MAX_WALKED: usize = 200_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredContainer {
    /// 64 hex digits for OCI runtimes, the container name for LXC.
    pub id: String,
    pub runtime: Runtime,
    pub pod: Option<Pod>,
    /// Path below each hierarchy's root, without a leading `/` (e.g. `docker/<id>`).
    pub relative_path: String,
    /// `Some(uid)` for a rootless container in that user's delegated subtree.
    pub owner_uid: Option<u32>,
}

/// One walk's findings.
#[derive(Debug, Default)]
pub struct Discovered {
    pub containers: Vec<DiscoveredContainer>,
    /// The walk stopped at [`MAX_WALKED`] directories.
    pub truncated: bool,
}

/// Walks each root and returns every container found in any of them, once.
pub fn discover(roots: &[&Path]) -> Discovered {
    let mut found = Discovered::default();
    let mut seen = HashSet::new();
    let mut walked = 0usize;
    for root in roots {
        super::walk(root, |relative, _| {
            walked += 1;
            if walked > MAX_WALKED {
                found.truncated = true;
                return false;
            }
            match classify(relative) {
                Some(container) => {
                    if seen.insert(container.relative_path.clone()) {
                        found.containers.push(container);
                    }
                    false
                }
                None => relative.split('/').count() <= MAX_DEPTH,
            }
        });
    }
    found
        .containers
        .sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    found
}

/// Recognises one relative cgroup path.
pub fn classify(relative_path: &str) -> Option<DiscoveredContainer> {
    let segments: Vec<&str> = relative_path.split('/').collect();
    let (&last, parents) = segments.split_last()?;
    let container = |runtime, id: &str, owner_uid| {
        (!id.is_empty()).then(|| DiscoveredContainer {
            id: id.to_owned(),
            runtime,
            pod: pod_of(relative_path),
            relative_path: relative_path.to_owned(),
            owner_uid,
        })
    };
    // A user's delegated subtree: only rootless Podman and Docker scopes, for that user.
    if let Some(uid) = delegated_user(parents) {
        return if let Some(id) = scope_id(last, "libpod-") {
            container(Runtime::Podman, id, Some(uid))
        } else if let Some(id) = scope_id(last, "docker-") {
            container(Runtime::Docker, id, Some(uid))
        } else {
            None
        };
    }
    match parents {
        ["system.slice"] => container(Runtime::Docker, scope_id(last, "docker-")?, None),
        ["docker"] if is_container_id(last) => container(Runtime::Docker, last, None),
        ["machine.slice"] => container(Runtime::Podman, scope_id(last, "libpod-")?, None),
        ["libpod_parent"] => container(
            Runtime::Podman,
            last.strip_prefix("libpod-")
                .filter(|id| is_container_id(id))?,
            None,
        ),
        [top, .., parent] if top.starts_with("kubepods") => {
            if let Some(id) = scope_id(last, "cri-containerd-") {
                container(Runtime::Containerd, id, None)
            } else if let Some(id) = scope_id(last, "crio-") {
                container(Runtime::Crio, id, None)
            } else if *top == "kubepods" && parent.starts_with("pod") && is_container_id(last) {
                container(Runtime::Cri, last, None)
            } else {
                None
            }
        }
        [] => container(Runtime::Lxc, last.strip_prefix("lxc.payload.")?, None),
        ["lxc"] => container(Runtime::Lxc, last, None),
        _ => None,
    }
}

/// The uid of a `user.slice/…/user@<uid>.service/…` path: systemd delegates that
/// subtree to the user.
fn delegated_user(parents: &[&str]) -> Option<u32> {
    if parents.first() != Some(&"user.slice") {
        return None;
    }
    parents.iter().find_map(|segment| {
        segment
            .strip_prefix("user@")?
            .strip_suffix(".service")?
            .parse()
            .ok()
    })
}

/// `<prefix><64 hex>.scope` → the id.
fn scope_id<'a>(segment: &'a str, prefix: &str) -> Option<&'a str> {
    segment
        .strip_prefix(prefix)?
        .strip_suffix(".scope")
        .filter(|id| is_container_id(id))
}

pub fn is_container_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase())
}

/// Pod UID and QoS class from a `kubepods` path (systemd or cgroupfs driver).
fn pod_of(relative_path: &str) -> Option<Pod> {
    if !relative_path.starts_with("kubepods") {
        return None;
    }
    let mut qos_class = QosClass::Guaranteed;
    let mut uid = None;
    for segment in relative_path.split('/') {
        let segment = segment.strip_suffix(".slice").unwrap_or(segment);
        if segment.contains("besteffort") {
            qos_class = QosClass::BestEffort;
        } else if segment.contains("burstable") {
            qos_class = QosClass::Burstable;
        }
        // systemd: kubepods-burstable-pod<uid with _>.slice; cgroupfs: pod<uid>
        if let Some((_, pod)) = segment
            .rsplit_once("pod")
            .filter(|(before, _)| before.is_empty() || before.ends_with('-'))
        {
            uid = Some(pod.replace('_', "-"));
        }
    }
    uid.filter(|uid| !uid.is_empty())
        .map(|uid| Pod { uid, qos_class })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e8a1c9b2d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

    fn runtime(path: &str) -> Option<(Runtime, String)> {
        classify(path).map(|container| (container.runtime, container.id))
    }

    #[test]
    fn recognises_every_runtime_layout() {
        let cases = [
            (format!("system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("docker/{ID}"), Runtime::Docker),
            (format!("machine.slice/libpod-{ID}.scope"), Runtime::Podman),
            (format!("libpod_parent/libpod-{ID}"), Runtime::Podman),
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_3c.slice/cri-containerd-{ID}.scope"
                ),
                Runtime::Containerd,
            ),
            (
                format!("kubepods.slice/kubepods-pod9_9.slice/crio-{ID}.scope"),
                Runtime::Crio,
            ),
            (format!("kubepods/besteffort/pod1a2b-3c/{ID}"), Runtime::Cri),
        ];
        for (path, expected) in cases {
            assert_eq!(runtime(&path), Some((expected, ID.to_owned())), "{path}");
        }
        assert_eq!(
            runtime("lxc.payload.web1"),
            Some((Runtime::Lxc, "web1".into()))
        );
        assert_eq!(runtime("lxc/web2"), Some((Runtime::Lxc, "web2".into())));
    }

    #[test]
    fn ignores_helpers_and_look_alikes() {
        for path in [
            format!("machine.slice/libpod-conmon-{ID}.scope"),
            format!("kubepods.slice/crio-conmon-{ID}.scope"),
            "lxc.monitor.web1".to_owned(),
            "lxc.pivot".to_owned(),
            format!("system.slice/var-lib-docker-containers-{ID}-mounts-shm.mount"),
            format!("system.slice/docker-{}.scope", &ID[..12]),
            format!("docker/{}", ID.to_uppercase()),
            "docker".to_owned(),
            "lxc.payload.".to_owned(),
            format!("other/{ID}"),
            "system.slice/docker.service".to_owned(),
        ] {
            assert_eq!(runtime(&path), None, "{path}");
        }
    }

    #[test]
    fn runtime_names_count_only_where_the_runtime_puts_them() {
        for path in [
            // What a user can create in a delegated subtree, or a service elsewhere.
            format!("user.slice/user-1000.slice/user@1000.service/app.slice/x/docker/{ID}"),
            "user.slice/user-1000.slice/user@1000.service/lxc.payload.x".to_owned(),
            format!("user.slice/user-1000.slice/user@1000.service/kubepods/pod1/{ID}"),
            format!("system.slice/foo.service/docker-{ID}.scope"),
            format!("system.slice/foo.service/docker/{ID}"),
            format!("x/machine.slice/libpod-{ID}.scope"),
            format!("other/libpod_parent/libpod-{ID}"),
            "system.slice/lxc.payload.x".to_owned(),
            "a/lxc/web".to_owned(),
            format!("kube/kubepods/pod1/{ID}"),
        ] {
            assert_eq!(runtime(&path), None, "{path}");
        }
    }

    #[test]
    fn rootless_scopes_are_candidates_of_their_user() {
        for (path, expected) in [
            (
                format!(
                    "user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Runtime::Podman,
            ),
            (
                format!("user.slice/user-1001.slice/user@1001.service/app.slice/docker-{ID}.scope"),
                Runtime::Docker,
            ),
        ] {
            let container = classify(&path).expect("candidate");
            assert_eq!(container.runtime, expected);
            assert!(container.owner_uid.is_some_and(|uid| uid >= 1000));
        }
        assert_eq!(
            classify(&format!("user.slice/libpod-{ID}.scope")).map(|c| c.owner_uid),
            None
        );
    }

    #[test]
    fn pod_uid_and_qos() {
        let pod = |path: &str| classify(path).and_then(|container| container.pod);
        let systemd = pod(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_3c4d.slice/cri-containerd-{ID}.scope"
        ))
        .expect("pod");
        assert_eq!(systemd.uid, "1a2b-3c4d");
        assert_eq!(systemd.qos_class, QosClass::Burstable);
        let guaranteed = pod(&format!("kubepods/pod77-88/{ID}")).expect("pod");
        assert_eq!(
            (guaranteed.uid.as_str(), guaranteed.qos_class),
            ("77-88", QosClass::Guaranteed)
        );
        let best = pod(&format!("kubepods/besteffort/podab/{ID}")).expect("pod");
        assert_eq!(best.qos_class, QosClass::BestEffort);
        assert_eq!(pod(&format!("docker/{ID}")), None);
    }
}
