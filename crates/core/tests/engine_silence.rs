//! Silence judged like for like (`engine/silence.rs`): a canary node that falls silent is set
//! against the unexposed nodes of the unit over the same time, so that a node rebooting in a
//! large stage, or a reboot wave across the fleet, never rolls a good version back, while a
//! version whose nodes fall silent more often than the fleet's is still blamed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use failsmall_core::domain::{Labels, NodeId, RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{Action, ChangeKind, Engine, Event, RolloutStatus};
use failsmall_core::health::HealthSample;
use failsmall_core::plan::{
    Concurrency, HardSignals, OnInconclusive, Percent, Plan, Selector, Stage,
};

const TICK_MS: u64 = 5_000;
const FREE_NODES: usize = 400;

struct Fleet {
    engine: Engine,
    now_ms: u64,
    actions: Vec<Action>,
    nodes: Vec<NodeId>,
    answered: BTreeSet<(NodeId, VersionHash)>,
}

fn unit() -> UnitName {
    UnitName::new("flags").unwrap()
}

fn version(seed: &str) -> VersionHash {
    VersionHash::of(seed.as_bytes())
}

fn stage(name: &str, cohort: Option<&str>, percent: u32) -> Stage {
    let mut selector = Selector::default();
    if let Some(cohort) = cohort {
        selector
            .labels
            .insert("cohort".to_owned(), vec![cohort.to_owned()]);
    }
    Stage {
        name: name.into(),
        selector,
        percent: Percent {
            basis_points: percent * 100,
        },
        bake_ms: 60_000,
        timeout_ms: 1_800_000,
        gates: vec![],
        min_requests: 100,
        hard_signals: HardSignals::default(),
        silence_ms: 30_000,
        approval: false,
        approvers: 0,
    }
}

fn plan(stages: Vec<Stage>) -> Plan {
    Plan {
        name: "test".into(),
        concurrency: Concurrency::Queue,
        queue_limit: 4,
        supersede_queued: false,
        health_check: None,
        stages,
        soak_ms: 0,
        on_inconclusive: OnInconclusive::Hold,
        exclusive_nodes: false,
        health_source: None,
    }
}

impl Fleet {
    /// 4 employees and [`FREE_NODES`] free nodes, all running `v0` (rolled out to everyone
    /// and healthy), so that the unexposed nodes of the next rollout report on it.
    fn running_v0() -> Self {
        let mut fleet = Self {
            engine: Engine::new(),
            now_ms: 1_000_000,
            actions: Vec::new(),
            nodes: Vec::new(),
            answered: BTreeSet::new(),
        };
        let names = (0..4)
            .map(|i| (format!("emp-{i}"), "employee"))
            .chain((0..FREE_NODES).map(|i| (format!("free-{i:03}"), "free")));
        for (name, cohort) in names {
            let node = NodeId::new(name).unwrap();
            let labels: Labels = [("cohort".to_owned(), cohort.to_owned())].into();
            fleet.step(Event::NodeRegistered {
                node: node.clone(),
                labels,
            });
            fleet.nodes.push(node);
        }
        let first = fleet.request("v0", plan(vec![stage("everyone", None, 100)]));
        fleet.run(first, 3_600_000, &|_, _| true);
        assert_eq!(fleet.status(first), RolloutStatus::Completed);
        fleet
    }

    fn step(&mut self, event: Event) {
        let actions = self.engine.step(self.now_ms, &event).unwrap();
        self.actions.extend(actions);
    }

    fn request(&mut self, seed: &str, plan: Plan) -> RolloutId {
        let before = self.actions.len();
        self.step(Event::RolloutRequested {
            unit: unit(),
            version: version(seed),
            plan,
            actor: "alice".into(),
            reason: "test".into(),
            override_quarantine: false,
            override_freeze: false,
        });
        self.actions[before..]
            .iter()
            .find_map(|action| match action {
                Action::Changelog(entry) if entry.kind == ChangeKind::RolloutStarted => {
                    Some(entry.rollout)
                }
                _ => None,
            })
            .unwrap()
    }

    /// One round: every node ACKs what it is told to run, then reports healthy traffic on it
    /// if `speaks(node, version)`; then a tick, [`TICK_MS`] later.
    fn round(&mut self, speaks: &dyn Fn(&NodeId, VersionHash) -> bool) {
        for node in self.nodes.clone() {
            let Some(desired) = self.engine.desired(&node, &unit()) else {
                continue;
            };
            if self.answered.insert((node.clone(), desired)) {
                self.step(Event::Applied {
                    node: node.clone(),
                    unit: unit(),
                    version: desired,
                });
            }
            if speaks(&node, desired) {
                let mut sample = HealthSample {
                    requests: 50,
                    errors: 0,
                    ..Default::default()
                };
                sample.latency.record(25.0, 50);
                self.step(Event::Health {
                    node,
                    unit: unit(),
                    version: desired,
                    sample,
                });
            }
        }
        self.now_ms += TICK_MS;
        self.step(Event::Tick);
    }

    fn run(&mut self, id: RolloutId, limit_ms: u64, speaks: &dyn Fn(&NodeId, VersionHash) -> bool) {
        let end = self.now_ms + limit_ms;
        while self.now_ms < end && !self.status(id).is_terminal() {
            self.round(speaks);
        }
    }

    fn status(&self, id: RolloutId) -> RolloutStatus {
        self.engine.rollout(id).unwrap().status
    }

    /// The exposed nodes of rollout `id`, in order.
    fn exposed(&self, id: RolloutId) -> Vec<NodeId> {
        let mut nodes = self.engine.exposed_nodes(id);
        nodes.sort();
        nodes
    }
}

fn two_stages() -> Plan {
    plan(vec![
        stage("free-half", Some("free"), 50),
        stage("everyone", None, 100),
    ])
}

#[test]
fn a_canary_node_that_reboots_in_a_large_stage_blames_nothing() {
    let mut fleet = Fleet::running_v0();
    let id = fleet.request("v1", two_stages());
    // The stage exposes its half, which ACKs and reports.
    fleet.round(&|_, _| true);
    let exposed = fleet.exposed(id);
    assert!(exposed.len() >= 150, "{}", exposed.len());
    let rebooting = exposed[7].clone();
    let back_at = fleet.now_ms + 120_000;
    // One canary node says nothing for two minutes (a reboot), then speaks again: one silent
    // node among some 200 is what the fleet shows (the rule of succession on a quiet baseline
    // of some 200 expects one), so the stage goes on.
    while fleet.now_ms < back_at && !fleet.status(id).is_terminal() {
        let rebooting = rebooting.clone();
        fleet.round(&move |node: &NodeId, _: VersionHash| *node != rebooting);
        assert_ne!(fleet.status(id), RolloutStatus::RolledBack);
    }
    fleet.run(id, 3_600_000, &|_, _| true);
    assert_eq!(fleet.status(id), RolloutStatus::Completed);
    assert!(!fleet.engine.is_quarantined(&unit(), &version("v1")));
}

#[test]
fn a_version_whose_canary_nodes_fall_silent_is_rolled_back_and_quarantined() {
    let mut fleet = Fleet::running_v0();
    let id = fleet.request("v1", two_stages());
    fleet.round(&|_, _| true);
    // A fifth of the canary falls silent on v1; the unexposed nodes on v0 keep speaking.
    let doomed: BTreeSet<NodeId> = fleet.exposed(id).into_iter().step_by(5).collect();
    let v1 = version("v1");
    fleet.run(id, 600_000, &|node, running| {
        !(running == v1 && doomed.contains(node))
    });
    assert_eq!(fleet.status(id), RolloutStatus::RolledBack);
    assert!(fleet.engine.is_quarantined(&unit(), &v1));
    let outcome = fleet.engine.rollout(id).unwrap().outcome.unwrap();
    assert!(
        outcome.contains("silent nodes") && outcome.contains("like for like"),
        "{outcome}"
    );
}

#[test]
fn a_reboot_wave_across_the_fleet_never_quarantines_the_version() {
    let mut fleet = Fleet::running_v0();
    let id = fleet.request("v1", two_stages());
    fleet.round(&|_, _| true);
    // Every tenth node of the whole fleet falls silent, whatever it runs.
    let gone: BTreeSet<NodeId> = fleet.nodes.iter().step_by(10).cloned().collect();
    fleet.run(id, 600_000, &|node, _| !gone.contains(node));
    assert_ne!(fleet.status(id), RolloutStatus::RolledBack);
    assert!(!fleet.engine.is_quarantined(&unit(), &version("v1")));
}

#[test]
fn a_small_canary_holds_for_one_silent_node_and_is_blamed_when_most_fall_silent() {
    let employees_first = || {
        plan(vec![
            stage("employees", Some("employee"), 100),
            stage("everyone", None, 100),
        ])
    };
    // One of four employees silent: held, not blamed (a node reboots).
    let mut fleet = Fleet::running_v0();
    let id = fleet.request("v1", employees_first());
    let emp0 = NodeId::new("emp-0").unwrap();
    let v1 = version("v1");
    fleet.run(id, 600_000, &|node, running| {
        !(running == v1 && *node == emp0)
    });
    assert_eq!(fleet.status(id), RolloutStatus::Running);
    assert_eq!(fleet.engine.rollout(id).unwrap().stage_index, 0);
    assert!(!fleet.engine.is_quarantined(&unit(), &v1));
    // What people read: one silent of four, against a quiet baseline; held, not blamed.
    let silence = fleet.engine.rollout(id).unwrap().silence.unwrap();
    assert_eq!((silence.silent, silence.watched), (1, 4), "{silence:?}");
    assert_eq!(silence.baseline_silent, Some(0), "{silence:?}");
    assert!(silence.baseline_watched.unwrap() >= 400, "{silence:?}");
    assert!(silence.silent > silence.tolerated && silence.silent <= silence.blame_above);
    // Three of four: far more than the fleet's silence explains.
    let mut fleet = Fleet::running_v0();
    let id = fleet.request("v1", employees_first());
    let spared = NodeId::new("emp-3").unwrap();
    fleet.run(id, 600_000, &|node, running| {
        !(running == v1 && node.as_str().starts_with("emp-") && *node != spared)
    });
    assert_eq!(fleet.status(id), RolloutStatus::RolledBack);
    assert!(fleet.engine.is_quarantined(&unit(), &v1));
}

#[test]
fn a_node_that_dies_for_good_in_a_large_last_stage_neither_stalls_nor_blames() {
    let mut fleet = Fleet::running_v0();
    let id = fleet.request("v1", two_stages());
    // The first stage passes, judged against the unexposed half.
    while fleet.status(id) == RolloutStatus::Running
        && fleet.engine.rollout(id).unwrap().stage_index == 0
    {
        fleet.round(&|_, _| true);
    }
    assert_eq!(fleet.engine.rollout(id).unwrap().stage_index, 1);
    // In the last stage (every node: none left unexposed, the comparison carried), one node
    // dies and never speaks again.
    let dead = NodeId::new("free-123").unwrap();
    fleet.run(id, 3_600_000, &|node, _| *node != dead);
    assert_eq!(fleet.status(id), RolloutStatus::Completed);
    assert!(!fleet.engine.is_quarantined(&unit(), &version("v1")));
}
