//! The metric catalog: every metric family is declared once here — name, help,
//! unit, type, labels and how to read its value from the model — and every output
//! derives from it: the Prometheus exposition (`/metrics`), the history series and
//! alert metrics (the families with a series name), and `docs/metrics.md`
//! ([`markdown`]). Adding a metric means one declaration here plus its source.
//!
//! One file per model scope: [`node`], [`container`], [`vm`], [`agent`]; and the
//! families scopes share: [`cgroup`] (containers and VMs), [`ebpf`] (node,
//! containers and VMs).

pub mod agent;
pub mod cgroup;
pub mod container;
pub mod ebpf;
pub mod node;
pub mod vm;

use std::fmt::Write;

use serde::Serialize;

use crate::model::{CgroupUsage, ContainerMetrics, EbpfMetrics, Histogram, NodeMetrics, VmMetrics};

/// What a metric describes: the node, one container, or the agent itself. History
/// series, alert rules and their targets are kept per scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Node,
    Container,
    Vm,
    Agent,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Container => "container",
            Self::Vm => "vm",
            Self::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
    BytesPerSecond,
    /// 0–100.
    Percent,
    /// 0–1.
    Ratio,
    /// Unix seconds.
    Timestamp,
    /// A count of things (tasks, requests, cycles).
    Count,
    /// CPUs' worth of time.
    Cores,
    /// A constant 1 carrying labels (`_info`, state).
    Info,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Self::Seconds => "seconds",
            Self::Bytes => "bytes",
            Self::BytesPerSecond => "bytes/s",
            Self::Percent => "percent",
            Self::Ratio => "ratio",
            Self::Timestamp => "unix seconds",
            Self::Count => "count",
            Self::Cores => "CPUs",
            Self::Info => "info",
        }
    }
}

/// One sample's value. Histograms are the model's (microsecond bounds); outputs
/// convert them to their own base unit.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Integer(u64),
    Float(f64),
    Histogram(&'a Histogram),
}

impl Value<'_> {
    /// The value as one number (a histogram's has none).
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Self::Integer(value) => Some(value as f64),
            Self::Float(value) => value.is_finite().then_some(value),
            Self::Histogram(_) => None,
        }
    }
}

impl From<u64> for Value<'_> {
    fn from(value: u64) -> Self {
        Self::Integer(value)
    }
}

impl From<f64> for Value<'_> {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}

impl<'a> From<&'a Histogram> for Value<'a> {
    fn from(histogram: &'a Histogram) -> Self {
        Self::Histogram(histogram)
    }
}

/// Where a family's read function puts its samples: label values in the order of
/// the family's `labels`, and a value (`None` = not measured, no sample).
pub struct Samples<'s, 'a> {
    emit: &'s mut dyn FnMut(&[&str], Value<'a>),
}

impl<'s, 'a> Samples<'s, 'a> {
    pub fn new(emit: &'s mut dyn FnMut(&[&str], Value<'a>)) -> Self {
        Self { emit }
    }

    /// The one sample of an unlabelled family.
    pub fn one<V: Into<Value<'a>>>(&mut self, value: Option<V>) {
        self.labeled(&[], value);
    }

    pub fn labeled<V: Into<Value<'a>>>(&mut self, labels: &[&str], value: Option<V>) {
        if let Some(value) = value {
            (self.emit)(labels, value.into());
        }
    }
}

/// Reads one family's samples from a model value.
pub type Read<T> = for<'a> fn(&'a T, &mut Samples<'_, 'a>);

/// One metric family.
pub struct Family<T: 'static> {
    /// The Prometheus name after the scope's prefix (`None`: not exported there).
    pub prometheus: Option<&'static str>,
    /// The history series and alert metric name (`None`: not recorded); such a
    /// family has one unlabelled value per target.
    pub series: Option<&'static str>,
    pub help: &'static str,
    pub unit: Unit,
    pub kind: Kind,
    /// Labels besides the scope's identity labels.
    pub labels: &'static [&'static str],
    pub read: Read<T>,
}

impl<T> Family<T> {
    const fn new(
        kind: Kind,
        name: &'static str,
        unit: Unit,
        help: &'static str,
        read: Read<T>,
    ) -> Self {
        Self {
            prometheus: Some(name),
            series: None,
            help,
            unit,
            kind,
            labels: &[],
            read,
        }
    }

    pub const fn counter(
        name: &'static str,
        unit: Unit,
        help: &'static str,
        read: Read<T>,
    ) -> Self {
        Self::new(Kind::Counter, name, unit, help, read)
    }

    pub const fn gauge(name: &'static str, unit: Unit, help: &'static str, read: Read<T>) -> Self {
        Self::new(Kind::Gauge, name, unit, help, read)
    }

    pub const fn histogram(name: &'static str, help: &'static str, read: Read<T>) -> Self {
        Self::new(Kind::Histogram, name, Unit::Seconds, help, read)
    }

    /// A gauge recorded in history and watched by alerts, not exported to Prometheus
    /// (which computes its own rates and ratios from the counters).
    pub const fn series(name: &'static str, unit: Unit, help: &'static str, read: Read<T>) -> Self {
        let mut family = Self::new(Kind::Gauge, name, unit, help, read);
        family.prometheus = None;
        family.series = Some(name);
        family
    }

    pub const fn labels(mut self, labels: &'static [&'static str]) -> Self {
        self.labels = labels;
        self
    }

    /// Also recorded in history under `name`.
    pub const fn recorded_as(mut self, name: &'static str) -> Self {
        self.series = Some(name);
        self
    }

    /// Calls `emit` with every sample of `target`.
    pub fn each_sample<'a>(&self, target: &'a T, emit: &mut dyn FnMut(&[&str], Value<'a>)) {
        (self.read)(target, &mut Samples::new(emit));
    }

    /// The single value of a series family.
    pub fn value(&self, target: &T) -> Option<f64> {
        let mut value = None;
        self.each_sample(target, &mut |_, sample| value = value.or(sample.as_f64()));
        value
    }
}

/// The families of one scope and how its targets are told apart.
pub struct Catalog<T: 'static> {
    pub scope: Scope,
    /// Prepended to every Prometheus name (`horcrux_node_`).
    pub prefix: &'static str,
    /// Labels every sample carries (a container's id, name, runtime).
    pub identity: &'static [&'static str],
    pub identify: for<'a> fn(&'a T) -> Vec<&'a str>,
    pub families: &'static [Family<T>],
    /// The scope's cgroup families ([`cgroup::FAMILIES`]), when it has them.
    pub cgroup: Option<for<'a> fn(&'a T) -> Option<&'a CgroupUsage>>,
    /// The scope's eBPF families ([`ebpf::FAMILIES`]), when it has them.
    pub ebpf: Option<for<'a> fn(&'a T) -> Option<&'a EbpfMetrics>>,
}

impl<T> Catalog<T> {
    /// The series (history and alert) values of one target, skipping those not
    /// measured.
    pub fn series_values(&self, target: &T) -> Vec<(&'static str, f64)> {
        self.families
            .iter()
            .filter_map(|family| Some((family.series?, family.value(target)?)))
            .collect()
    }

    /// The series names, as history and alert rules accept them.
    pub fn series_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.families.iter().filter_map(|family| family.series)
    }
}

pub static NODE: Catalog<NodeMetrics> = Catalog {
    scope: Scope::Node,
    prefix: "horcrux_node_",
    identity: &[],
    identify: |_| Vec::new(),
    families: node::FAMILIES,
    cgroup: None,
    ebpf: Some(|node| node.ebpf.as_ref()),
};

pub static CONTAINER: Catalog<ContainerMetrics> = Catalog {
    scope: Scope::Container,
    prefix: "horcrux_container_",
    identity: &["id", "name", "runtime"],
    identify: |container| {
        vec![
            container.id.as_str(),
            container.name.as_deref().unwrap_or(""),
            container.runtime.name(),
        ]
    },
    families: container::FAMILIES,
    cgroup: Some(|container| Some(&container.usage)),
    ebpf: Some(|container| container.ebpf.as_deref()),
};

pub static VM: Catalog<VmMetrics> = Catalog {
    scope: Scope::Vm,
    prefix: "horcrux_vm_",
    identity: &["id", "name", "source"],
    identify: |vm| {
        vec![
            vm.id.as_str(),
            vm.name.as_deref().unwrap_or(""),
            vm.source.name(),
        ]
    },
    families: vm::FAMILIES,
    cgroup: Some(|vm| vm.cgroup.as_ref().map(|cgroup| &cgroup.usage)),
    ebpf: Some(|vm| vm.ebpf.as_deref()),
};

pub static AGENT: Catalog<agent::AgentView> = Catalog {
    scope: Scope::Agent,
    prefix: "horcrux_",
    identity: &[],
    identify: |_| Vec::new(),
    families: agent::FAMILIES,
    cgroup: None,
    ebpf: None,
};

/// What an output does with the catalog's families and samples: the Prometheus
/// exposition, remote_write and OTLP each implement it, so every output walks the
/// same families the same way ([`Catalog::visit`]).
pub trait Visitor {
    /// A family starts; `name` has the scope's prefix.
    fn family(&mut self, name: &str, help: &'static str, kind: Kind, unit: Unit);
    /// One sample of the family last started: identity labels, then the family's.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value<'_>);
}

impl<T> Catalog<T> {
    /// Every exported family of this scope over `targets`, then the cgroup and eBPF
    /// families the scope shares.
    pub fn visit<'a>(&self, targets: impl Iterator<Item = &'a T>, visitor: &mut impl Visitor)
    where
        T: 'a,
    {
        let identified: Vec<(Vec<&str>, &T)> = targets
            .map(|target| ((self.identify)(target), target))
            .collect();
        for family in self.families {
            self.visit_family(family, &identified, visitor);
        }
        if let Some(cgroup) = self.cgroup {
            self.visit_shared(&identified, cgroup, cgroup::FAMILIES, visitor);
        }
        if let Some(ebpf) = self.ebpf {
            self.visit_shared(&identified, ebpf, ebpf::FAMILIES, visitor);
        }
    }

    /// Families several scopes share, over the part of each target they describe.
    fn visit_shared<'a, Part>(
        &self,
        identified: &[(Vec<&'a str>, &'a T)],
        part: for<'p> fn(&'p T) -> Option<&'p Part>,
        families: &[Family<Part>],
        visitor: &mut impl Visitor,
    ) {
        let scoped: Vec<(Vec<&str>, &Part)> = identified
            .iter()
            .filter_map(|(identity, target)| Some((identity.clone(), part(target)?)))
            .collect();
        for family in families {
            self.visit_family(family, &scoped, visitor);
        }
    }

    /// One family over `(identity label values, target)` pairs; a family not
    /// exported to Prometheus is a history series only and is not visited.
    fn visit_family<Target>(
        &self,
        family: &Family<Target>,
        targets: &[(Vec<&str>, &Target)],
        visitor: &mut impl Visitor,
    ) {
        let Some(name) = family.prometheus else {
            return;
        };
        let name = format!("{}{name}", self.prefix);
        visitor.family(&name, family.help, family.kind, family.unit);
        let label_names: Vec<&str> = self.identity.iter().chain(family.labels).copied().collect();
        for (identity_values, target) in targets {
            family.each_sample(target, &mut |values, value| {
                // A read function that gives the wrong number of label values
                // would shift every label after the gap: caught by any test run.
                debug_assert_eq!(values.len(), family.labels.len(), "{name}: label values");
                let labels: Vec<(&str, &str)> = label_names
                    .iter()
                    .copied()
                    .zip(identity_values.iter().chain(values).copied())
                    .collect();
                match value {
                    Value::Float(value) if !value.is_finite() => {}
                    Value::Histogram(_) if family.kind != Kind::Histogram => {}
                    value => visitor.sample(&name, &labels, value),
                }
            });
        }
    }
}

/// Receives `(name, labels, number)` for each Prometheus sample.
pub type Emit<'e> = dyn FnMut(&str, &[(&str, &str)], Value<'static>) + 'e;

/// A sample in Prometheus's data model, where a histogram is cumulative
/// `_bucket`s (`le` in seconds, then `+Inf`), `_sum` (seconds) and `_count`; the
/// model's bounds are microseconds. Calls `emit(name, labels, number)`.
pub fn prometheus_samples(
    name: &str,
    labels: &[(&str, &str)],
    value: Value<'_>,
    emit: &mut Emit<'_>,
) {
    let histogram = match value {
        Value::Integer(value) => return emit(name, labels, Value::Integer(value)),
        Value::Float(value) => return emit(name, labels, Value::Float(value)),
        Value::Histogram(histogram) => histogram,
    };
    let bucket_name = format!("{name}_bucket");
    let with_le = |le: &str, count: u64, emit: &mut Emit<'_>| {
        let mut labels = labels.to_vec();
        labels.push(("le", le));
        emit(&bucket_name, &labels, Value::Integer(count));
    };
    for bucket in &histogram.buckets {
        with_le(&(bucket.le as f64 / 1e6).to_string(), bucket.count, emit);
    }
    with_le("+Inf", histogram.count, emit);
    emit(
        &format!("{name}_sum"),
        labels,
        Value::Float(histogram.sum / 1e6),
    );
    emit(
        &format!("{name}_count"),
        labels,
        Value::Integer(histogram.count),
    );
}

/// The series names of a scope, as history and alert rules accept them.
pub fn series_names(scope: Scope) -> Vec<&'static str> {
    match scope {
        Scope::Node => NODE.series_names().collect(),
        Scope::Container => CONTAINER.series_names().collect(),
        Scope::Vm => VM.series_names().collect(),
        Scope::Agent => AGENT.series_names().collect(),
    }
}

/// `name` as the `&'static str` of one of `scope`'s series, if it is one.
pub fn series_name(scope: Scope, name: &str) -> Option<&'static str> {
    series_names(scope)
        .into_iter()
        .find(|series| *series == name)
}

/// `docs/metrics.md`, generated: a test keeps the checked-in file equal to this.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Metrics\n\n\
         Generated from the metric catalog (`horcrux-agent/src/catalog/`) by \
         `cargo xtask bless`; do not edit by hand. \
         Prometheus names are served at `/metrics`; series names are what \
         `GET …/history?metric=` and alert rules (`[[alerts]] metric`) accept.\n\n\
         Histograms are exported as `_bucket` (with `le` in seconds), `_sum` and \
         `_count`. Container samples also carry `id`, `name` and `runtime`; VM samples \
         `id`, `name` and `source`. \
         Where each figure comes from and how it is computed: [sources.md](sources.md).\n",
    );
    markdown_scope(&mut out, "Node", &NODE);
    markdown_scope(&mut out, "Containers", &CONTAINER);
    markdown_scope(&mut out, "VMs", &VM);
    let _ = write!(
        out,
        "\n## Cgroups (containers and VMs)\n\nExported as `horcrux_container_<name>` \
         (per container) and `horcrux_vm_<name>` (per VM with a cgroup of its own).\n\n"
    );
    markdown_table(&mut out, "", cgroup::FAMILIES);
    let _ = write!(
        out,
        "\n## eBPF (node, containers and VMs)\n\nExported as `horcrux_node_<name>` (node \
         totals), `horcrux_container_<name>` (per container) and `horcrux_vm_<name>` \
         (per VM with a cgroup of its own).\n\n"
    );
    markdown_table(&mut out, "", ebpf::FAMILIES);
    markdown_scope(&mut out, "Agent", &AGENT);
    out
}

fn markdown_scope<T>(out: &mut String, title: &str, catalog: &Catalog<T>) {
    let _ = write!(out, "\n## {title}\n\n");
    markdown_table(out, catalog.prefix, catalog.families);
    let series: Vec<&Family<T>> = catalog
        .families
        .iter()
        .filter(|family| family.series.is_some())
        .collect();
    if !series.is_empty() {
        let _ = write!(
            out,
            "\nSeries ({} history and alerts):\n\n| series | unit | description |\n|---|---|---|\n",
            catalog.scope.name()
        );
        for family in series {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} |",
                family.series.unwrap_or_default(),
                family.unit.name(),
                family.help
            );
        }
    }
}

fn markdown_table<T>(out: &mut String, prefix: &str, families: &[Family<T>]) {
    out.push_str(
        "| Prometheus name | type | unit | labels | description |\n|---|---|---|---|---|\n",
    );
    for family in families {
        let Some(name) = family.prometheus else {
            continue;
        };
        let labels: Vec<String> = family.labels.iter().map(|l| format!("`{l}`")).collect();
        let _ = writeln!(
            out,
            "| `{prefix}{name}` | {} | {} | {} | {} |",
            family.kind.name(),
            family.unit.name(),
            labels.join(", "),
            family.help.replace('|', "\\|")
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn check<T>(catalog: &Catalog<T>, names: &mut HashSet<String>) {
        let mut series = HashSet::new();
        let ebpf = catalog.ebpf.map(|_| {
            ebpf::FAMILIES
                .iter()
                .map(|f| (f.prometheus, f.kind, f.labels))
        });
        let cgroup = catalog.cgroup.map(|_| {
            cgroup::FAMILIES
                .iter()
                .map(|f| (f.prometheus, f.kind, f.labels))
        });
        let families = catalog
            .families
            .iter()
            .map(|f| (f.prometheus, f.kind, f.labels))
            .chain(cgroup.into_iter().flatten())
            .chain(ebpf.into_iter().flatten());
        for (name, kind, labels) in families {
            let Some(name) = name else { continue };
            let full = format!("{}{name}", catalog.prefix);
            assert!(
                full.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{full}"
            );
            assert!(names.insert(full.clone()), "{full} declared twice");
            assert_eq!(
                kind == Kind::Counter,
                full.ends_with("_total"),
                "{full}: counters, and only counters, end in _total"
            );
            for label in labels.iter().chain(catalog.identity) {
                assert!(
                    label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{full}: {label}"
                );
                assert_ne!(*label, "le", "{full}");
            }
        }
        for family in catalog.families {
            if let Some(name) = family.series {
                assert!(series.insert(name), "series {name} declared twice");
                assert!(family.labels.is_empty(), "series {name} has labels");
                assert_ne!(family.kind, Kind::Histogram, "series {name}");
            }
        }
    }

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut names = HashSet::new();
        check(&NODE, &mut names);
        check(&CONTAINER, &mut names);
        check(&VM, &mut names);
        check(&AGENT, &mut names);
        assert!(names.len() > 80, "{}", names.len());
    }

    #[test]
    fn the_grafana_dashboard_queries_only_declared_metrics() {
        let mut names = HashSet::new();
        check(&NODE, &mut names);
        check(&CONTAINER, &mut names);
        check(&VM, &mut names);
        check(&AGENT, &mut names);
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../grafana/horcrux-dashboard.json"
        );
        let dashboard = std::fs::read_to_string(path).expect("grafana dashboard");
        let mut queried = 0;
        for (at, _) in dashboard.match_indices("horcrux_") {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| names.contains(*family))
                .unwrap_or(&name);
            if family == "horcrux_node" || family == "horcrux_" {
                continue; // the dashboard's uid and title words
            }
            assert!(
                names.contains(family),
                "the dashboard queries {name}, which no family declares"
            );
            queried += 1;
        }
        assert!(queried > 20, "{queried}");
    }

    #[test]
    fn docs_metrics_md_is_generated_from_the_catalog() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        if std::env::var_os("HORCRUX_BLESS").is_some() {
            std::fs::write(path, markdown()).expect("writing docs/metrics.md");
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == markdown(),
            "docs/metrics.md is out of date: run `cargo xtask bless`"
        );
    }
}
