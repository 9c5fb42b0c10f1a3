//! Recognises container cgroups by their path, as each runtime names them:
//!
//! | runtime | cgroup path (relative to a hierarchy root) |
//! |---|---|
//! | Docker, systemd driver | `system.slice/docker-<id>.scope` |
//! | Docker, cgroupfs driver | `docker/<id>` |
//! | Podman | `machine.slice/libpod-<id>.scope`, `libpod_parent/libpod-<id>`, rootless `user.slice/…/libpod-<id>.scope` |
//! | containerd (CRI) | `kubepods.slice/…/cri-containerd-<id>.scope` |
//! | CRI-O | `kubepods.slice/…/crio-<id>.scope` |
//! | Kubernetes, cgroupfs driver | `kubepods/[burstable\|besteffort/]pod<uid>/<id>` |
//! | LXC / Incus | `lxc.payload.<name>`, `lxc/<name>` |
//!
//! `<id>` is 64 hex digits. Helper cgroups (`libpod-conmon-…`, `crio-conmon-…`,
//! `lxc.monitor.…`, `lxc.pivot`, `….mount`) do not match, and the walk does not
//! descend into a recognised container (its `init.scope` and other children belong
//! to it).

use std::{collections::HashSet, path::Path};

use serde::Serialize;

/// Deepest cgroup the walk visits (rootless Podman sits about 6 levels down).
const MAX_DEPTH: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    Crio,
    /// A Kubernetes container under the cgroupfs driver: the CRI runtime is not in the path.
    Cri,
    Lxc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub uid: String,
    pub qos_class: QosClass,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredContainer {
    /// 64 hex digits for OCI runtimes, the container name for LXC.
    pub id: String,
    pub runtime: Runtime,
    pub pod: Option<Pod>,
    /// Path below each hierarchy's root, without a leading `/` (e.g. `docker/<id>`).
    pub relative_path: String,
}

/// Walks each root and returns every container found in any of them, once.
pub fn discover(roots: &[&Path]) -> Vec<DiscoveredContainer> {
    let mut found: Vec<DiscoveredContainer> = Vec::new();
    let mut seen = HashSet::new();
    for root in roots {
        super::walk(root, |relative, _| match classify(relative) {
            Some(container) => {
                if seen.insert(container.relative_path.clone()) {
                    found.push(container);
                }
                false
            }
            None => relative.split('/').count() <= MAX_DEPTH,
        });
    }
    found.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    found
}

/// Recognises one relative cgroup path.
pub fn classify(relative_path: &str) -> Option<DiscoveredContainer> {
    let mut segments = relative_path.rsplit('/');
    let last = segments.next()?;
    let parent = segments.next().unwrap_or("");
    let (runtime, id) = if let Some(id) = scope_id(last, "docker-") {
        (Runtime::Docker, id)
    } else if parent == "docker" && is_container_id(last) {
        (Runtime::Docker, last)
    } else if let Some(id) = scope_id(last, "libpod-") {
        (Runtime::Podman, id)
    } else if parent == "libpod_parent" && last.strip_prefix("libpod-").is_some_and(is_container_id)
    {
        (Runtime::Podman, &last["libpod-".len()..])
    } else if let Some(id) = scope_id(last, "cri-containerd-") {
        (Runtime::Containerd, id)
    } else if let Some(id) = scope_id(last, "crio-") {
        (Runtime::Crio, id)
    } else if is_container_id(last)
        && parent.starts_with("pod")
        && relative_path.starts_with("kubepods")
    {
        (Runtime::Cri, last)
    } else if let Some(name) = last.strip_prefix("lxc.payload.") {
        (Runtime::Lxc, name)
    } else if parent == "lxc" && relative_path == format!("lxc/{last}") {
        (Runtime::Lxc, last)
    } else {
        return None;
    };
    if id.is_empty() {
        return None;
    }
    Some(DiscoveredContainer {
        id: id.to_owned(),
        runtime,
        pod: pod_of(relative_path),
        relative_path: relative_path.to_owned(),
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
                    "user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Runtime::Podman,
            ),
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
