//! Gates on custom metrics (`custom.NAME`, declared by a plan's Prometheus health source) in
//! the rollout engine: a breach on the version's nodes alone rolls back; a breach the nodes
//! without the version share holds as fleet unhealthy; a metric with no reading holds; a
//! relative gate compares with a like-for-like baseline. Virtual time, 4 employees and 10 free
//! nodes, health read through the monitoring source ([`Event::MonitoredHealth`]).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use failsmall_core::domain::{Labels, NodeId, RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{Action, ChangeKind, Engine, Event, RolloutStatus};
use failsmall_core::gate::{Gate, Verdict};
use failsmall_core::health::{CustomValues, HealthSample};
use failsmall_core::plan::{
    Concurrency, HardSignals, OnInconclusive, Percent, Plan, PrometheusSource, Selector, Stage,
};
use proptest::prelude::*;

const TICK_MS: u64 = 5_000;
const ROUNDS: usize = 120;

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn unit() -> UnitName {
    UnitName::new("u").unwrap()
}

fn version(seed: &str) -> VersionHash {
    VersionHash::of(seed.as_bytes())
}

fn stage(name: &str, cohort: &str, gates: &[&str]) -> Stage {
    let mut selector = Selector::default();
    selector
        .labels
        .insert("cohort".to_owned(), vec![cohort.to_owned()]);
    Stage {
        name: name.into(),
        selector,
        percent: Percent {
            basis_points: 10_000,
        },
        bake_ms: 30_000,
        timeout_ms: 0,
        gates: gates.iter().map(|g| Gate::parse(g).unwrap()).collect(),
        min_requests: 100,
        hard_signals: HardSignals::default(),
        silence_ms: 60_000,
        approval: false,
        approvers: 0,
    }
}

/// employees, then free; health (and `queue_depth`) from Prometheus.
fn plan(gates: &[&str]) -> Plan {
    Plan {
        name: "custom".into(),
        concurrency: Concurrency::Queue,
        queue_limit: 4,
        supersede_queued: false,
        health_check: None,
        stages: vec![
            stage("employees", "employee", gates),
            stage("free", "free", gates),
        ],
        soak_ms: 0,
        on_inconclusive: OnInconclusive::Hold,
        exclusive_nodes: false,
        health_source: Some(Box::new(PrometheusSource {
            url: "http://127.0.0.1:9090".into(),
            node_label: "node".into(),
            requests: "sum by (node) (r)".into(),
            errors: "sum by (node) (e)".into(),
            latency: None,
            latency_in_ms: false,
            interval_ms: 5_000,
            metrics: [("queue_depth".to_owned(), "max by (node) (q)".to_owned())].into(),
        })),
    }
}

struct Fleet {
    engine: Engine,
    now_ms: u64,
    nodes: Vec<NodeId>,
    acked: BTreeSet<(NodeId, VersionHash)>,
    changes: Vec<(ChangeKind, String)>,
}

impl Fleet {
    fn new() -> Self {
        let mut fleet = Self {
            engine: Engine::new(),
            now_ms: 1_000_000,
            nodes: vec![],
            acked: BTreeSet::new(),
            changes: vec![],
        };
        for (prefix, cohort, count) in [("emp", "employee", 4), ("free", "free", 10)] {
            for index in 0..count {
                let name = node(&format!("{prefix}-{index}"));
                let labels: Labels = [("cohort".to_owned(), cohort.to_owned())].into();
                fleet.step(Event::NodeRegistered {
                    node: name.clone(),
                    labels,
                });
                fleet.nodes.push(name);
            }
        }
        fleet
    }

    fn step(&mut self, event: Event) {
        for action in self.engine.step(self.now_ms, &event).unwrap() {
            if let Action::Changelog(entry) = action {
                self.changes.push((entry.kind, entry.reason));
            }
        }
    }

    fn request(&mut self, seed: &str, plan: Plan) -> RolloutId {
        self.step(Event::RolloutRequested {
            unit: unit(),
            version: version(seed),
            plan,
            actor: "alice".into(),
            reason: "test".into(),
            override_quarantine: false,
            override_freeze: false,
        });
        self.engine
            .rollouts()
            .filter(|view| view.version == version(seed))
            .map(|view| view.id)
            .max()
            .unwrap()
    }

    fn status(&self, id: RolloutId) -> RolloutStatus {
        self.engine.rollout(id).unwrap().status
    }

    /// Every node ACKs what it should run; Prometheus reads 200 requests and
    /// `queue(node, version)` for it (`None`: no value); then time moves on by a tick.
    fn round(&mut self, queue: &dyn Fn(&NodeId, VersionHash) -> Option<f64>) {
        for node in self.nodes.clone() {
            let Some(desired) = self.engine.desired(&node, &unit()) else {
                continue;
            };
            if self.acked.insert((node.clone(), desired)) {
                self.step(Event::Applied {
                    node: node.clone(),
                    unit: unit(),
                    version: desired,
                });
            }
            let mut custom = CustomValues::default();
            if let Some(value) = queue(&node, desired) {
                custom.record("queue_depth", value);
            }
            self.step(Event::MonitoredHealth {
                node: node.clone(),
                unit: unit(),
                version: desired,
                sample: HealthSample {
                    requests: 200,
                    ..HealthSample::default()
                },
                custom,
            });
        }
        self.now_ms += TICK_MS;
        self.step(Event::Tick);
    }

    /// Rounds until `id` ends or `ROUNDS` passed.
    fn run(&mut self, id: RolloutId, queue: &dyn Fn(&NodeId, VersionHash) -> Option<f64>) {
        for _ in 0..ROUNDS {
            if self.status(id).is_terminal() {
                return;
            }
            self.round(queue);
        }
    }

    /// A first version, healthy everywhere: every node runs `v1` afterwards.
    fn with_v1(gates: &[&str]) -> Self {
        let mut fleet = Fleet::new();
        let id = fleet.request("v1", plan(gates));
        fleet.run(id, &|_, _| Some(10.0));
        assert_eq!(fleet.status(id), RolloutStatus::Completed);
        fleet
    }

    fn gate_verdicts(&self, id: RolloutId) -> Vec<Verdict> {
        self.engine
            .rollout(id)
            .unwrap()
            .gates
            .into_iter()
            .map(|report| report.verdict)
            .collect()
    }
}

const ABSOLUTE: &str = "custom.queue_depth > 100";
const RELATIVE: &str = "custom.queue_depth > 2 * baseline.custom.queue_depth";

#[test]
fn an_absolute_custom_gate_breached_by_the_versions_nodes_alone_rolls_back() {
    let mut fleet = Fleet::with_v1(&[ABSOLUTE]);
    let id = fleet.request("v2", plan(&[ABSOLUTE]));
    let v2 = version("v2");
    fleet.run(id, &|_, running| {
        Some(if running == v2 { 500.0 } else { 10.0 })
    });
    assert_eq!(fleet.status(id), RolloutStatus::RolledBack);
    let outcome = fleet.engine.rollout(id).unwrap().outcome.unwrap();
    assert!(
        outcome.contains("custom.queue_depth 500 > 100"),
        "{outcome}"
    );
    // Only the first stage's nodes ever ran it.
    assert!(
        fleet
            .acked
            .iter()
            .all(|(node, version)| *version != v2 || node.as_str().starts_with("emp-"))
    );
}

#[test]
fn a_custom_breach_the_whole_fleet_shares_holds_and_never_blames_the_version() {
    let mut fleet = Fleet::with_v1(&[ABSOLUTE]);
    let id = fleet.request("v2", plan(&[ABSOLUTE]));
    fleet.run(id, &|_, _| Some(500.0));
    assert_eq!(fleet.status(id), RolloutStatus::Running, "held");
    assert!(
        fleet
            .changes
            .iter()
            .any(|(kind, message)| *kind == ChangeKind::FleetUnhealthy
                && message.contains("the baseline fails it too")),
        "{:?}",
        fleet.changes
    );
    // When the fleet recovers, the stage resumes on fresh data and the version completes.
    fleet.run(id, &|_, _| Some(10.0));
    assert_eq!(fleet.status(id), RolloutStatus::Completed);
}

#[test]
fn a_custom_metric_without_readings_holds_the_stage() {
    let mut fleet = Fleet::with_v1(&[ABSOLUTE]);
    let id = fleet.request("v2", plan(&[ABSOLUTE]));
    fleet.run(id, &|_, _| None);
    assert_eq!(
        fleet.status(id),
        RolloutStatus::Running,
        "neither passes nor rolls back"
    );
    let view = fleet.engine.rollout(id).unwrap();
    assert_eq!(view.stage_index, 0);
    assert!(
        matches!(&fleet.gate_verdicts(id)[..], [Verdict::Inconclusive { detail }] if detail.contains("has no data")),
        "{:?}",
        fleet.gate_verdicts(id)
    );
    // The readings come back: judged on them.
    fleet.run(id, &|_, _| Some(10.0));
    assert_eq!(fleet.status(id), RolloutStatus::Completed);
}

#[test]
fn a_relative_custom_gate_compares_with_a_like_for_like_baseline() {
    let v2 = version("v2");
    let mut fleet = Fleet::with_v1(&[RELATIVE]);
    let id = fleet.request("v2", plan(&[RELATIVE]));
    fleet.run(id, &|_, running| {
        Some(if running == v2 { 50.0 } else { 10.0 })
    });
    assert_eq!(fleet.status(id), RolloutStatus::RolledBack);

    let mut fleet = Fleet::with_v1(&[RELATIVE]);
    let id = fleet.request("v3", plan(&[RELATIVE]));
    let v3 = version("v3");
    fleet.run(id, &|_, running| {
        Some(if running == v3 { 15.0 } else { 10.0 })
    });
    assert_eq!(fleet.status(id), RolloutStatus::Completed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A version whose nodes read exactly what the others read (whatever the level, the
    /// fleet's included beyond the absolute limit) is never rolled back nor quarantined by a
    /// custom gate.
    #[test]
    fn a_version_as_good_as_the_fleet_is_never_blamed_by_a_custom_gate(
        level in 0.0f64..400.0,
        relative in any::<bool>(),
    ) {
        let gate = if relative { RELATIVE } else { ABSOLUTE };
        let mut fleet = Fleet::with_v1(&[gate]);
        let id = fleet.request("v2", plan(&[gate]));
        fleet.run(id, &|_, _| Some(level));
        prop_assert_ne!(fleet.status(id), RolloutStatus::RolledBack);
        prop_assert!(fleet.engine.quarantined().is_empty());
    }
}
