//! History and alerts as consumers: they subscribe to the published node,
//! container and VM snapshots, record the catalog's series of every target in history
//! (when enabled), evaluate the alert rules of that scope, and send the alert
//! messages. Collectors know nothing of either.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast;

use crate::{
    alerts::{AlertEngine, Target},
    catalog::{self, Catalog},
    clock::Stamp,
    collector::Latest,
    history::{History, SeriesKey},
    messages::Message,
};

/// Where the recorder writes.
#[derive(Clone)]
pub struct Recorder {
    /// Present when `enable_history` is on.
    pub history: Option<Arc<Mutex<History>>>,
    pub alerts: Arc<Mutex<AlertEngine>>,
    pub ws_messages: broadcast::Sender<Utf8Bytes>,
}

/// One target of a snapshot: what alert state and history are kept by (the node is
/// `""`, a container its cgroup path: an id can be claimed by two cgroups, a path
/// cannot), how alerts show it, and its series values.
struct Recorded<'a> {
    key: &'a str,
    id: &'a str,
    name: Option<&'a str>,
    values: Vec<(&'static str, f64)>,
}

impl Recorder {
    /// Records every node snapshot and every container snapshot as they are
    /// published, until the collectors stop; on threads of their own, as a cycle of
    /// thousands of containers takes milliseconds. Call within the tokio runtime.
    pub fn spawn(
        self,
        node: Latest<crate::collector::NodeSnapshot>,
        containers: Latest<crate::collector::ContainerSnapshot>,
        vms: Latest<crate::collector::VmSnapshot>,
    ) -> std::io::Result<()> {
        let recorder = self.clone();
        follow("record-node", node, move |snapshot| {
            let node = &snapshot.node;
            recorder.record(
                &catalog::NODE,
                vec![Recorded {
                    key: "",
                    id: &node.hostname,
                    name: None,
                    values: catalog::NODE.series_values(node),
                }],
                snapshot.at,
            );
        })?;
        let recorder = self.clone();
        follow("record-vms", vms, move |snapshot| {
            let keys: Vec<String> = snapshot.vms.iter().map(catalog::vm::history_key).collect();
            let targets = snapshot
                .vms
                .iter()
                .zip(&keys)
                .map(|(vm, key)| Recorded {
                    key,
                    id: &vm.id,
                    name: vm.name.as_deref(),
                    values: catalog::VM.series_values(vm),
                })
                .collect();
            recorder.record(&catalog::VM, targets, snapshot.at);
        })?;
        follow("record-containers", containers, move |snapshot| {
            let targets = snapshot
                .containers
                .iter()
                .map(|container| Recorded {
                    key: &container.cgroup,
                    id: &container.id,
                    name: container.name.as_deref(),
                    values: catalog::CONTAINER.series_values(container),
                })
                .collect();
            self.record(&catalog::CONTAINER, targets, snapshot.at);
        })?;
        Ok(())
    }

    fn record<T>(&self, catalog: &Catalog<T>, targets: Vec<Recorded<'_>>, at: Stamp) {
        let scope = catalog.scope;
        if let Some(history) = &self.history {
            let mut history = history.lock().unwrap_or_else(PoisonError::into_inner);
            for target in &targets {
                for &(metric, value) in &target.values {
                    let key = SeriesKey {
                        scope,
                        target: target.key.to_owned(),
                        metric,
                    };
                    history.record(key, at.steady, value);
                }
            }
            history.retain_targets(scope, &targets.iter().map(|target| target.key).collect());
        }
        let alert_targets: Vec<Target> = targets
            .iter()
            .map(|target| Target {
                key: target.key,
                id: target.id,
                name: target.name,
                values: &target.values,
            })
            .collect();
        let alerts = self
            .alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evaluate(scope, &alert_targets, at);
        for alert in &alerts {
            // No subscribers is normal (no WebSocket client connected).
            let _ = self.ws_messages.send(Message::alert(alert).to_text());
        }
    }
}

/// Calls `record` with each snapshot published on `latest`, on a thread named
/// `name` (a burst of snapshots while a record runs coalesces to the newest).
fn follow<T: Send + Sync + 'static>(
    name: &str,
    mut latest: Latest<T>,
    record: impl Fn(&T) + Send + 'static,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                let snapshot = latest.borrow_and_update().clone();
                if let Some(snapshot) = snapshot {
                    record(&snapshot);
                }
                if runtime.block_on(latest.changed()).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
