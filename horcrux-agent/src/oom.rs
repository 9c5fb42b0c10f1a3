//! OOM kills attributed: each kill the eBPF OOM family reports is mapped to the
//! container or VM whose memory cgroup held the victim, announced on the WebSocket
//! (`OomKill`), counted per container name — so the count survives the container
//! being recreated under that name, unlike the cgroup's own `oom_kill` counter —
//! and kept in a short recent list (`/api/containers/{id}/metrics`, the dashboard).
//! One thread (`hx-oom`) reads the ring buffer and publishes an immutable view.

use std::{collections::BTreeMap, collections::HashMap, collections::VecDeque, sync::Arc};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::{
    cgroup::{discovery, inodes::nearest_ancestor},
    collector::{ContainerSnapshot, Latest, VmSnapshot},
    ebpf::oom::OomKills,
    messages::Message,
};

/// Kills kept in the recent list (all targets together).
const RECENT_KILLS: usize = 256;
/// Names with a kill count; beyond it the least recently killed name is dropped.
const COUNTED_NAMES: usize = 10_000;

/// What a kill is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OomTarget {
    /// `container` or `vm`.
    pub kind: &'static str,
    pub id: String,
    pub name: Option<String>,
    /// The container runtime, or the VM's source.
    pub runtime: &'static str,
}

/// One kill, as the WebSocket message and the recent lists carry it.
#[derive(Debug, Clone, Serialize)]
pub struct OomKillRecord {
    pub timestamp: f64,
    pub pid: u32,
    pub tid: u32,
    /// The victim's command name (`comm`).
    pub comm: String,
    /// `memcg` (a cgroup was at its limit) or `global`.
    pub constraint: &'static str,
    /// The victim's resident memory when killed (file + anon + shmem).
    pub rss_bytes: u64,
    /// The victim's memory cgroup (`/`-prefixed, as container `cgroup` fields).
    pub cgroup: Option<String>,
    /// The cgroup whose limit was hit (a memcg OOM).
    pub limit_cgroup: Option<String>,
    /// `null` when the cgroup is no known container's or VM's.
    pub target: Option<OomTarget>,
}

/// Counts key: (kind, runtime, name).
pub type NameKey = (&'static str, &'static str, String);

/// The kills so far, as published after each.
#[derive(Debug, Clone, Default)]
pub struct OomView {
    /// Kills per container or VM name (unnamed ones by id), since the agent started.
    pub by_name: BTreeMap<NameKey, u64>,
    pub recent: VecDeque<Arc<OomKillRecord>>,
    /// Every kill reported, attributed or not.
    pub total: u64,
}

impl OomView {
    /// The recent kills of one container or VM, newest first.
    pub fn recent_of(&self, kind: &str, id: &str) -> Vec<OomKillRecord> {
        self.recent
            .iter()
            .rev()
            .filter(|kill| {
                kill.target
                    .as_ref()
                    .is_some_and(|target| target.kind == kind && target.id == id)
            })
            .map(|kill| (**kill).clone())
            .collect()
    }

    fn record(&mut self, kill: OomKillRecord) -> Arc<OomKillRecord> {
        self.total += 1;
        if let Some(target) = &kill.target {
            let key = target.name_key();
            if !self.by_name.contains_key(&key) && self.by_name.len() >= COUNTED_NAMES {
                self.forget_a_name_not_recently_killed();
            }
            *self.by_name.entry(key).or_default() += 1;
        }
        let kill = Arc::new(kill);
        if self.recent.len() == RECENT_KILLS {
            self.recent.pop_front();
        }
        self.recent.push_back(Arc::clone(&kill));
        kill
    }

    /// Drops the count of a name with no kill in the recent list (the first such
    /// in key order): names that keep being killed keep their counts.
    fn forget_a_name_not_recently_killed(&mut self) {
        let recent: std::collections::HashSet<NameKey> = self
            .recent
            .iter()
            .filter_map(|kill| kill.target.as_ref().map(OomTarget::name_key))
            .collect();
        if let Some(stale) = self
            .by_name
            .keys()
            .find(|key| !recent.contains(*key))
            .cloned()
        {
            self.by_name.remove(&stale);
        }
    }
}

impl OomTarget {
    /// What kills are counted by: the name, or the id of an unnamed target.
    fn name_key(&self) -> NameKey {
        (
            self.kind,
            self.runtime,
            self.name.clone().unwrap_or_else(|| self.id.clone()),
        )
    }
}

/// The container or VM whose cgroup is the victim's or its nearest ancestor.
fn attribute(
    cgroup: &str,
    containers: Option<&ContainerSnapshot>,
    vms: Option<&VmSnapshot>,
) -> Option<OomTarget> {
    let mut targets: HashMap<&str, OomTarget> = HashMap::new();
    for container in containers.iter().flat_map(|snapshot| &snapshot.containers) {
        targets.insert(
            container.cgroup.trim_start_matches('/'),
            OomTarget {
                kind: "container",
                id: container.id.clone(),
                name: container.name.clone(),
                runtime: container.runtime.name(),
            },
        );
    }
    for vm in vms.iter().flat_map(|snapshot| &snapshot.vms) {
        if let Some(vm_cgroup) = &vm.cgroup {
            targets.insert(
                vm_cgroup.path.trim_start_matches('/'),
                OomTarget {
                    kind: "vm",
                    id: vm.id.clone(),
                    name: vm.name.clone(),
                    runtime: vm.source.name(),
                },
            );
        }
    }
    let cgroup = cgroup.trim_start_matches('/');
    if cgroup.is_empty() {
        return None;
    }
    nearest_ancestor(&targets, cgroup)
        .cloned()
        .or_else(|| recognise(cgroup))
}

/// A container no snapshot has shown yet (one killed as it started, within a
/// discovery interval), recognised from its cgroup path as discovery would: known
/// by id and runtime, not by name. Not in a user's delegated subtree, where a path
/// alone proves nothing (discovery waits for the user's runtime process there).
fn recognise(cgroup: &str) -> Option<OomTarget> {
    let mut path = cgroup;
    loop {
        if let Some(container) = discovery::classify(path) {
            return container.owner_uid.is_none().then(|| OomTarget {
                kind: "container",
                id: container.id,
                name: None,
                runtime: container.runtime.name(),
            });
        }
        path = path.rsplit_once('/')?.0;
    }
}

/// Reads kills until the agent exits, publishing the view after each batch.
pub fn spawn(
    mut kills: OomKills,
    containers: Latest<ContainerSnapshot>,
    vms: Latest<VmSnapshot>,
    view: watch::Sender<Arc<OomView>>,
    ws_messages: broadcast::Sender<Utf8Bytes>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("hx-oom".into())
        .spawn(move || {
            loop {
                let events = kills.wait(std::time::Duration::from_millis(500));
                if events.is_empty() {
                    continue;
                }
                let mut next = (**view.borrow()).clone();
                for mut kill in events {
                    kill.target = kill.cgroup.as_deref().and_then(|cgroup| {
                        attribute(
                            cgroup,
                            containers.borrow().as_deref(),
                            vms.borrow().as_deref(),
                        )
                    });
                    tracing::warn!(
                        pid = kill.pid,
                        comm = %kill.comm,
                        cgroup = ?kill.cgroup,
                        constraint = kill.constraint,
                        target = ?kill.target.as_ref().map(|t| (&t.id, &t.name)),
                        "OOM kill"
                    );
                    let kill = next.record(kill);
                    let _ = ws_messages.send(Message::OomKill(&kill).to_text());
                }
                view.send_replace(Arc::new(next));
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(target: Option<(&'static str, &str, &str)>) -> OomKillRecord {
        OomKillRecord {
            timestamp: 1.0,
            pid: 1,
            tid: 1,
            comm: "tail".into(),
            constraint: "memcg",
            rss_bytes: 0,
            cgroup: None,
            limit_cgroup: None,
            target: target.map(|(kind, id, name)| OomTarget {
                kind,
                id: id.into(),
                name: Some(name.into()),
                runtime: "docker",
            }),
        }
    }

    #[test]
    fn counts_follow_the_name_across_ids() {
        let mut view = OomView::default();
        view.record(kill(Some(("container", "a1", "web"))));
        view.record(kill(Some(("container", "b2", "web"))));
        view.record(kill(None));
        assert_eq!(view.by_name[&("container", "docker", "web".to_owned())], 2);
        assert_eq!(view.total, 3);
        assert_eq!(view.recent_of("container", "b2").len(), 1);
        assert_eq!(view.recent_of("vm", "b2").len(), 0);
    }

    #[test]
    fn a_container_not_yet_in_a_snapshot_is_known_by_its_cgroup() {
        let id = "ab".repeat(32);
        let target = attribute(&format!("/system.slice/docker-{id}.scope/init"), None, None)
            .expect("recognised");
        assert_eq!(
            (target.kind, target.id.as_str(), target.name, target.runtime),
            ("container", id.as_str(), None, "docker")
        );
        assert!(attribute(&format!("/docker/{id}"), None, None).is_some());
        // Not a container's cgroup, or one a user could have made.
        assert!(attribute("/system.slice/cron.service", None, None).is_none());
        assert!(attribute("/", None, None).is_none());
        let delegated =
            format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{id}.scope");
        assert!(attribute(&delegated, None, None).is_none());
    }

    #[test]
    fn the_recent_list_is_bounded() {
        let mut view = OomView::default();
        for _ in 0..RECENT_KILLS + 10 {
            view.record(kill(Some(("container", "a1", "web"))));
        }
        assert_eq!(view.recent.len(), RECENT_KILLS);
        assert_eq!(view.total as usize, RECENT_KILLS + 10);
    }
}
