//! `GET /metrics`: the latest snapshots in the Prometheus text format (0.0.4),
//! rendered from the metric catalog ([`crate::catalog`]): node_exporter's names
//! under `horcrux_node_`, cAdvisor's under `horcrux_container_`, the agent's own
//! under `horcrux_agent_`. Base units: seconds and bytes.

use std::{
    fmt::{Display, Write},
    sync::{Arc, atomic::Ordering},
};

use axum::{extract::State, http::header, response::IntoResponse};

use super::AppState;
use crate::{
    catalog::{self, Catalog, Family, Kind, Value, agent::AgentView},
    collector::{ContainerSnapshot, NodeSnapshot, VmSnapshot},
    model::{ContainerMetrics, NodeMetrics, VmMetrics},
};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // Renders walk every container: a few at a time, the rest wait their turn.
    let _render = state.renders.acquire().await;
    let node = state.node.borrow().clone();
    let containers = state.containers.borrow().clone();
    let vms = state.vms.borrow().clone();
    let agent = agent_view(
        &state,
        node.as_deref(),
        containers.as_deref(),
        vms.as_deref(),
    );
    let text = render(
        node.as_ref().map(|node| &node.node),
        containers
            .as_ref()
            .map_or(&[], |containers| containers.containers.as_slice()),
        vms.as_ref().map_or(&[], |vms| vms.vms.as_slice()),
        &agent,
    );
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

/// The whole exposition of one node snapshot, its containers, VMs and the agent.
pub fn render(
    node: Option<&NodeMetrics>,
    containers: &[ContainerMetrics],
    vms: &[VmMetrics],
    agent: &AgentView,
) -> String {
    let mut out = Exposition::default();
    out.catalog(&catalog::NODE, node.into_iter());
    out.catalog(&catalog::CONTAINER, containers.iter());
    out.catalog(&catalog::VM, vms.iter());
    out.catalog(&catalog::AGENT, std::iter::once(agent));
    out.text
}

fn agent_view(
    state: &AppState,
    node: Option<&NodeSnapshot>,
    containers: Option<&ContainerSnapshot>,
    vms: Option<&VmSnapshot>,
) -> AgentView {
    AgentView {
        cgroup_mode: state.hierarchies.mode().name(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        collectors: [
            ("node", node.map(|n| &n.health)),
            ("containers", containers.map(|c| &c.health)),
            ("vms", vms.map(|v| &v.health)),
        ]
        .into_iter()
        .filter_map(|(name, health)| Some((name, health?.clone())))
        .collect(),
        supervision: vec![
            ("node", state.collectors.node.view()),
            ("containers", state.collectors.containers.view()),
            ("vms", state.collectors.vms.view()),
        ],
        ebpf: state.ebpf.borrow().as_ref().map(|ebpf| ebpf.status.clone()),
        websocket_clients: state.ws_clients.load(Ordering::Relaxed) as u64,
    }
}

/// Prometheus text: a HELP and TYPE line per family, then its samples.
#[derive(Default)]
pub struct Exposition {
    pub text: String,
}

impl Exposition {
    /// Every family of a scope over its targets, then the scope's eBPF families.
    fn catalog<'a, T: 'a>(&mut self, catalog: &Catalog<T>, targets: impl Iterator<Item = &'a T>) {
        let identified: Vec<(Vec<&str>, &T)> = targets
            .map(|target| ((catalog.identify)(target), target))
            .collect();
        for family in catalog.families {
            self.family(catalog.prefix, catalog.identity, family, &identified);
        }
        if let Some(cgroup) = catalog.cgroup {
            self.shared(catalog, &identified, cgroup, catalog::cgroup::FAMILIES);
        }
        if let Some(ebpf) = catalog.ebpf {
            self.shared(catalog, &identified, ebpf, catalog::ebpf::FAMILIES);
        }
    }

    /// Families several scopes share, over the part of each target they describe.
    fn shared<'a, T, Part>(
        &mut self,
        catalog: &Catalog<T>,
        identified: &[(Vec<&'a str>, &'a T)],
        part: for<'p> fn(&'p T) -> Option<&'p Part>,
        families: &[Family<Part>],
    ) {
        let scoped: Vec<(Vec<&str>, &Part)> = identified
            .iter()
            .filter_map(|(identity, target)| Some((identity.clone(), part(target)?)))
            .collect();
        for family in families {
            self.family(catalog.prefix, catalog.identity, family, &scoped);
        }
    }

    /// One family over `(identity label values, target)` pairs.
    fn family<T>(
        &mut self,
        prefix: &str,
        identity: &[&str],
        family: &Family<T>,
        targets: &[(Vec<&str>, &T)],
    ) {
        let Some(name) = family.prometheus else {
            return;
        };
        let name = format!("{prefix}{name}");
        let _ = writeln!(self.text, "# HELP {name} {}", family.help);
        let _ = writeln!(self.text, "# TYPE {name} {}", family.kind.name());
        let label_names: Vec<&str> = identity.iter().chain(family.labels).copied().collect();
        for (identity_values, target) in targets {
            family.each_sample(target, &mut |values, value| {
                let labels: Vec<(&str, &str)> = label_names
                    .iter()
                    .copied()
                    .zip(identity_values.iter().chain(values).copied())
                    .collect();
                match value {
                    Value::Integer(value) => self.sample(&name, &labels, value),
                    Value::Float(value) if value.is_finite() => self.sample(&name, &labels, value),
                    Value::Histogram(histogram) if family.kind == Kind::Histogram => {
                        self.histogram(&name, &labels, histogram)
                    }
                    Value::Float(_) | Value::Histogram(_) => {}
                }
            });
        }
    }

    /// Cumulative `_bucket`s with `le` in seconds, then `+Inf`, `_sum` (seconds) and
    /// `_count`. The model's bounds are microseconds.
    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        histogram: &crate::model::Histogram,
    ) {
        let bucket_name = format!("{name}_bucket");
        fn with_le<'l>(labels: &[(&'l str, &'l str)], le: &'l str) -> Vec<(&'l str, &'l str)> {
            let mut labels = labels.to_vec();
            labels.push(("le", le));
            labels
        }
        for bucket in &histogram.buckets {
            let le = (bucket.le as f64 / 1e6).to_string();
            self.sample(&bucket_name, &with_le(labels, &le), bucket.count);
        }
        self.sample(&bucket_name, &with_le(labels, "+Inf"), histogram.count);
        self.sample(&format!("{name}_sum"), labels, histogram.sum / 1e6);
        self.sample(&format!("{name}_count"), labels, histogram.count);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"");
                escape_into(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_into(out: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Unit;

    /// A target with a label value that needs escaping and a value per family.
    struct Probe {
        name: &'static str,
        ratio: f64,
    }

    #[test]
    fn families_and_escaped_labels() {
        let counter = Family::<Probe>::counter("test_total", Unit::Count, "A test.", |p, out| {
            out.labeled(&[p.name], Some(3u64))
        })
        .labels(&["name"]);
        let gauge = Family::<Probe>::gauge("gauge", Unit::Ratio, "Skips non-finite.", |p, out| {
            out.one(Some(p.ratio))
        });
        let targets = [
            Probe {
                name: "a\"b\\c\nd",
                ratio: f64::NAN,
            },
            Probe {
                name: "e",
                ratio: 0.5,
            },
        ];
        let mut out = Exposition::default();
        let identified: Vec<(Vec<&str>, &Probe)> = targets.iter().map(|p| (vec![], p)).collect();
        out.family("horcrux_", &[], &counter, &identified[..1]);
        out.family("horcrux_", &[], &gauge, &identified);
        assert_eq!(
            out.text,
            "# HELP horcrux_test_total A test.\n# TYPE horcrux_test_total counter\n\
             horcrux_test_total{name=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP horcrux_gauge Skips non-finite.\n# TYPE horcrux_gauge gauge\nhorcrux_gauge 0.5\n"
        );
    }
}
