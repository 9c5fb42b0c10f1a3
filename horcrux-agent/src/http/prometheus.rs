//! `GET /metrics`: the latest snapshots in the Prometheus text format (0.0.4),
//! rendered from the metric catalog ([`crate::catalog`]): node_exporter's names
//! under `horcrux_node_`, cAdvisor's under `horcrux_container_`, the agent's own
//! under `horcrux_agent_`. Base units: seconds and bytes.

use std::{
    fmt::{Display, Write},
    sync::Arc,
};

use axum::{extract::State, http::header, response::IntoResponse};

use super::AppState;
use crate::{
    catalog::{self, Kind, Unit, Value, Visitor, agent::AgentView},
    model::{ContainerMetrics, NodeMetrics, VmMetrics},
};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // Renders walk every container: a few at a time, the rest wait their turn.
    let _render = state.renders.acquire().await;
    let node = state.node.borrow().clone();
    let containers = state.containers.borrow().clone();
    let vms = state.vms.borrow().clone();
    let agent = state.agent_view(node.as_deref(), containers.as_deref(), vms.as_deref());
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
    catalog::NODE.visit(node.into_iter(), &mut out);
    catalog::CONTAINER.visit(containers.iter(), &mut out);
    catalog::VM.visit(vms.iter(), &mut out);
    catalog::AGENT.visit(std::iter::once(agent), &mut out);
    out.text
}

/// Prometheus text: a HELP and TYPE line per family, then its samples.
#[derive(Default)]
pub struct Exposition {
    pub text: String,
}

impl Visitor for Exposition {
    fn family(&mut self, name: &str, help: &'static str, kind: Kind, _unit: Unit) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value<'_>) {
        catalog::prometheus_samples(
            name,
            labels,
            value,
            &mut |name, labels, value| match value {
                Value::Integer(value) => self.line(name, labels, value),
                Value::Float(value) => self.line(name, labels, value),
                Value::Histogram(_) => {}
            },
        );
    }
}

impl Exposition {
    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
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
    use crate::catalog::{Catalog, Family, Scope};

    /// A target with a label value that needs escaping and a value per family.
    struct Probe {
        name: &'static str,
        ratio: f64,
    }

    static COUNTER: [Family<Probe>; 1] =
        [
            Family::counter("test_total", Unit::Count, "A test.", |p: &Probe, out| {
                out.labeled(&[p.name], Some(3u64))
            })
            .labels(&["name"]),
        ];
    static GAUGE: [Family<Probe>; 1] = [Family::gauge(
        "gauge",
        Unit::Ratio,
        "Skips non-finite.",
        |p: &Probe, out| out.one(Some(p.ratio)),
    )];

    fn probes(families: &'static [Family<Probe>]) -> Catalog<Probe> {
        Catalog {
            scope: Scope::Agent,
            prefix: "horcrux_",
            identity: &[],
            identify: |_| Vec::new(),
            families,
            cgroup: None,
            ebpf: None,
        }
    }

    #[test]
    fn families_and_escaped_labels() {
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
        probes(&COUNTER).visit(targets[..1].iter(), &mut out);
        probes(&GAUGE).visit(targets.iter(), &mut out);
        assert_eq!(
            out.text,
            "# HELP horcrux_test_total A test.\n# TYPE horcrux_test_total counter\n\
             horcrux_test_total{name=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP horcrux_gauge Skips non-finite.\n# TYPE horcrux_gauge gauge\nhorcrux_gauge 0.5\n"
        );
    }
}
