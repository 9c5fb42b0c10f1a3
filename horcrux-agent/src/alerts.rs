//! Alert rules from `[[alerts]]` in the config, evaluated by [`crate::recorder`] on
//! every published snapshot, over the series of the metric catalog. A rule fires once its
//! condition has held for `for` seconds and resolves once it has been false for `for`
//! seconds (at least one cycle), so a value hovering at the threshold cannot flap.
//! Windows run on the steady clock ([`crate::clock`]): a wall-clock step neither
//! holds nor hurries an alert. Evaluation is linear in the number of targets.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

use crate::{catalog::Scope, clock::Stamp};

/// Resolved alerts kept for `GET /api/alerts`.
const RESOLVED_KEPT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Comparison {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            ">" => Some(Self::Above),
            ">=" => Some(Self::AtLeast),
            "<" => Some(Self::Below),
            "<=" => Some(Self::AtMost),
            _ => None,
        }
    }

    fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Above => value > threshold,
            Self::AtLeast => value >= threshold,
            Self::Below => value < threshold,
            Self::AtMost => value <= threshold,
        }
    }
}

/// What a rule watches: the node, or the containers it matches.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleScope {
    Node,
    /// Containers whose id or name matches the glob (`*` = any run of characters).
    Container {
        pattern: Option<String>,
    },
    /// VMs whose id or name matches the glob.
    Vm {
        pattern: Option<String>,
    },
}

impl RuleScope {
    pub fn scope(&self) -> Scope {
        match self {
            Self::Node => Scope::Node,
            Self::Container { .. } => Scope::Container,
            Self::Vm { .. } => Scope::Vm,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub name: String,
    pub metric: &'static str,
    pub scope: RuleScope,
    pub op: Comparison,
    pub threshold: f64,
    /// Seconds the condition must hold (and then not hold) before a change.
    #[serde(rename = "for")]
    pub for_seconds: u64,
    pub severity: String,
}

/// An alert's state, as listed by `GET /api/alerts` and sent over the WebSocket
/// ([`crate::messages::Message::alert`]).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub rule: String,
    pub severity: String,
    pub metric: &'static str,
    pub op: Comparison,
    pub threshold: f64,
    pub scope: Scope,
    /// The hostname or the container id.
    pub target: String,
    pub target_name: Option<String>,
    pub value: f64,
    /// When the condition started to hold.
    pub since: u64,
    pub triggered_at: u64,
    pub resolved_at: Option<u64>,
    pub timestamp: u64,
}

#[derive(Debug, Default)]
struct Tracking {
    /// Steady second when the condition (while resting) or its negation (while
    /// firing) began.
    changing_since: Option<u64>,
    firing: Option<Alert>,
}

/// One evaluated target: its identity, display name and current metric values.
pub struct Target<'a> {
    /// What alert state is kept by: the hostname, or a container's cgroup path (an
    /// id can be claimed by two cgroups; a path cannot).
    pub key: &'a str,
    /// The hostname or container id, as alerts show it.
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub values: &'a [(&'static str, f64)],
}

#[derive(Debug, Default)]
pub struct AlertEngine {
    rules: Vec<Rule>,
    tracking: HashMap<(usize, String), Tracking>,
    resolved: VecDeque<Alert>,
}

impl AlertEngine {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// New rules (a config reload): alerts of rules that are gone or changed resolve
    /// silently and start over; unchanged rules keep their state.
    pub fn replace_rules(&mut self, rules: Vec<Rule>) {
        let old = std::mem::replace(&mut self.rules, rules);
        let tracking = std::mem::take(&mut self.tracking);
        self.tracking = tracking
            .into_iter()
            .filter_map(|((index, key), state)| {
                let rule = old.get(index)?;
                let new_index = self.rules.iter().position(|new| new == rule)?;
                Some(((new_index, key), state))
            })
            .collect();
    }

    /// Evaluates the rules of one scope over every target seen this cycle; targets of
    /// that scope not in `targets` are gone and their alerts resolve. Returns the
    /// `AlertTriggered`/`AlertResolved` messages to send.
    pub fn evaluate(&mut self, scope: Scope, targets: &[Target], at: Stamp) -> Vec<Alert> {
        let now = at.steady;
        let mut messages = Vec::new();
        let mut seen = HashSet::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.scope.scope() != scope {
                continue;
            }
            for target in targets.iter().filter(|target| applies(rule, target)) {
                let Some(value) = target
                    .values
                    .iter()
                    .find(|(metric, _)| *metric == rule.metric)
                    .map(|(_, v)| *v)
                else {
                    continue;
                };
                let key = (index, target.key.to_owned());
                seen.insert(key.clone());
                let tracking = self.tracking.entry(key).or_default();
                let holds = rule.op.holds(value, rule.threshold);
                let changing = holds != tracking.firing.is_some();
                if !changing {
                    tracking.changing_since = None;
                    if let Some(alert) = &mut tracking.firing {
                        alert.value = value;
                    }
                    continue;
                }
                let since = *tracking.changing_since.get_or_insert(now);
                // Resolving needs at least one cycle of the condition being false.
                let due = now.saturating_sub(since) >= rule.for_seconds
                    && (holds || now > since || rule.for_seconds == 0);
                if !due {
                    continue;
                }
                tracking.changing_since = None;
                if holds {
                    let alert = Alert {
                        rule: rule.name.clone(),
                        severity: rule.severity.clone(),
                        metric: rule.metric,
                        op: rule.op,
                        threshold: rule.threshold,
                        scope,
                        target: target.id.to_owned(),
                        target_name: target.name.map(str::to_owned),
                        value,
                        since: at.unix_of(since),
                        triggered_at: at.unix,
                        resolved_at: None,
                        timestamp: at.unix,
                    };
                    messages.push(alert.clone());
                    tracking.firing = Some(alert);
                } else if let Some(alert) = tracking.firing.take() {
                    messages.push(resolve(alert, value, at.unix));
                }
            }
        }
        // Targets that disappeared resolve at once.
        let gone: Vec<(usize, String)> = self
            .tracking
            .keys()
            .filter(|key| self.rules[key.0].scope.scope() == scope && !seen.contains(key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(alert) = self
                .tracking
                .remove(&key)
                .and_then(|tracking| tracking.firing)
            {
                let value = alert.value;
                messages.push(resolve(alert, value, at.unix));
            }
        }
        for message in messages
            .iter()
            .filter(|message| message.resolved_at.is_some())
        {
            self.resolved.push_front(message.clone());
            self.resolved.truncate(RESOLVED_KEPT);
        }
        messages
    }

    pub fn active(&self) -> Vec<Alert> {
        self.tracking
            .values()
            .filter_map(|tracking| tracking.firing.clone())
            .collect()
    }

    pub fn recently_resolved(&self) -> Vec<Alert> {
        self.resolved.iter().cloned().collect()
    }
}

fn resolve(mut alert: Alert, value: f64, now: u64) -> Alert {
    alert.value = value;
    alert.resolved_at = Some(now);
    alert.timestamp = now;
    alert
}

fn applies(rule: &Rule, target: &Target) -> bool {
    match &rule.scope {
        RuleScope::Node => true,
        RuleScope::Container { pattern: None } | RuleScope::Vm { pattern: None } => true,
        RuleScope::Container {
            pattern: Some(pattern),
        }
        | RuleScope::Vm {
            pattern: Some(pattern),
        } => glob(pattern, target.id) || target.name.is_some_and(|name| glob(pattern, name)),
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instant with no wall-clock step.
    fn steady(seconds: u64) -> Stamp {
        Stamp {
            unix: seconds,
            steady: seconds,
        }
    }

    fn rule(for_seconds: u64) -> Rule {
        Rule {
            name: "high-cpu".into(),
            metric: "cpu_usage",
            scope: RuleScope::Node,
            op: Comparison::Above,
            threshold: 90.0,
            for_seconds,
            severity: "warning".into(),
        }
    }

    /// The WebSocket message type an alert is sent as.
    fn kind(alert: &Alert) -> &'static str {
        match crate::messages::Message::alert(alert) {
            crate::messages::Message::AlertResolved(_) => "AlertResolved",
            _ => "AlertTriggered",
        }
    }

    fn step(engine: &mut AlertEngine, now: u64, value: f64) -> Vec<&'static str> {
        let values = [("cpu_usage", value)];
        let targets = [Target {
            key: "node1",
            id: "node1",
            name: None,
            values: &values,
        }];
        engine
            .evaluate(Scope::Node, &targets, steady(now))
            .into_iter()
            .map(|alert| kind(&alert))
            .collect()
    }

    #[test]
    fn fires_after_the_for_window_and_resolves_after_it_too() {
        let mut engine = AlertEngine::new(vec![rule(30)]);
        assert!(step(&mut engine, 0, 95.0).is_empty());
        assert!(step(&mut engine, 20, 95.0).is_empty());
        assert_eq!(step(&mut engine, 30, 95.0), ["AlertTriggered"]);
        assert_eq!(engine.active().len(), 1);
        assert_eq!(engine.active()[0].since, 0);
        assert!(
            step(&mut engine, 40, 50.0).is_empty(),
            "not yet: must stay below for 30 s"
        );
        assert!(
            step(&mut engine, 50, 95.0).is_empty(),
            "back above: still firing, no message"
        );
        assert!(step(&mut engine, 60, 50.0).is_empty());
        assert_eq!(step(&mut engine, 90, 50.0), ["AlertResolved"]);
        assert!(engine.active().is_empty());
        assert_eq!(engine.recently_resolved()[0].resolved_at, Some(90));
    }

    #[test]
    fn wall_clock_steps_neither_hold_nor_hurry_an_alert() {
        let mut engine = AlertEngine::new(vec![rule(30)]);
        let mut kinds = Vec::new();
        // Steady time advances 10 s a cycle; the wall clock jumps a day ahead at the
        // third cycle and two days back at the sixth.
        for cycle in 0..10u64 {
            let steady = 1_000_000 + cycle * 10;
            let unix = match cycle {
                0..=2 => steady,
                3..=5 => steady + 86_400,
                _ => steady - 86_400,
            };
            let value = if cycle < 4 { 95.0 } else { 50.0 };
            let values = [("cpu_usage", value)];
            let targets = [Target {
                key: "node1",
                id: "node1",
                values: &values,
                name: None,
            }];
            for alert in engine.evaluate(Scope::Node, &targets, Stamp { unix, steady }) {
                kinds.push((cycle, kind(&alert), alert.since));
            }
        }
        // Fires after 30 steady seconds (cycle 3), resolves 30 s after the value
        // dropped at cycle 4 (cycle 7); `since` is shown on the wall clock as it read
        // when the alert fired.
        assert_eq!(
            kinds,
            [
                (3, "AlertTriggered", 1_000_000 + 86_400),
                (7, "AlertResolved", 1_000_000 + 86_400)
            ]
        );
    }

    #[test]
    fn a_value_flapping_at_the_threshold_does_not_flap_the_alert() {
        let mut engine = AlertEngine::new(vec![rule(10)]);
        let mut messages = Vec::new();
        for second in 0..120 {
            let value = if second % 2 == 0 { 91.0 } else { 89.0 };
            messages.extend(step(&mut engine, second, value));
        }
        assert!(messages.is_empty(), "{messages:?}");
    }

    #[test]
    fn for_zero_fires_at_once_and_resolves_on_the_next_cycle() {
        let mut engine = AlertEngine::new(vec![rule(0)]);
        assert_eq!(step(&mut engine, 0, 95.0), ["AlertTriggered"]);
        assert_eq!(step(&mut engine, 5, 10.0), ["AlertResolved"]);
    }

    #[test]
    fn container_rules_match_patterns_and_resolve_when_the_container_goes() {
        let mut container_rule = rule(0);
        container_rule.metric = "memory_usage_bytes";
        container_rule.scope = RuleScope::Container {
            pattern: Some("web-*".into()),
        };
        container_rule.threshold = 100.0;
        let mut engine = AlertEngine::new(vec![container_rule]);
        let values = [("memory_usage_bytes", 500.0)];
        let targets = [
            Target {
                key: "/docker/aaa",
                id: "aaa",
                name: Some("web-1"),
                values: &values,
            },
            Target {
                key: "/docker/bbb",
                id: "bbb",
                name: Some("db-1"),
                values: &values,
            },
        ];
        let fired = engine.evaluate(Scope::Container, &targets, steady(1));
        assert_eq!(fired.len(), 1);
        assert_eq!(
            (fired[0].target.as_str(), fired[0].target_name.as_deref()),
            ("aaa", Some("web-1"))
        );
        let resolved = engine.evaluate(Scope::Container, &targets[1..], steady(2));
        assert_eq!(resolved.len(), 1);
        assert_eq!(kind(&resolved[0]), "AlertResolved");
        assert!(
            engine.evaluate(Scope::Node, &[], steady(3)).is_empty(),
            "node evaluation leaves container alerts alone"
        );
    }

    #[test]
    fn globs() {
        assert!(glob("web-*", "web-1"));
        assert!(glob("*", "anything"));
        assert!(glob("a*c*e", "abcde"));
        assert!(glob("exact", "exact"));
        assert!(!glob("web-*", "db-1"));
        assert!(!glob("a*a", "a"));
        assert!(!glob("exact", "exactly"));
    }
}
