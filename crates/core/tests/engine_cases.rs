//! Scenario tests of the rollout engine through a small harness: a fleet, rollouts, ACKs,
//! health, and virtual time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};

use failsmall_core::domain::{Labels, NodeId, RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{
    Action, ChangeKind, Command, Engine, EngineError, Event, RolloutStatus, StagePhase,
};
use failsmall_core::gate::{Gate, Verdict};
use failsmall_core::health::HealthSample;
use failsmall_core::plan::{
    Concurrency, HardSignals, OnInconclusive, Percent, Plan, Selector, Stage,
};
use failsmall_core::slo::BurnWindow;

const TICK_MS: u64 = 5_000;

/// How a node reacts to a version it is told to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reaction {
    /// ACK, then report healthy traffic.
    Healthy,
    /// NACK (the agent's validation refused it).
    Nack,
    /// ACK, then the consumer crashes.
    Crash,
    /// ACK, then the HTTP health check fails.
    CheckFails,
    /// ACK, then never report again.
    Silent,
    /// Never ACK (nor report).
    Stuck,
    /// ACK, then report traffic with 20% errors.
    Errors,
    /// ACK, then report traffic with 2% errors.
    SomeErrors,
}

struct Harness {
    engine: Engine,
    now_ms: u64,
    actions: Vec<Action>,
    /// (node, unit, version) already answered.
    answered: BTreeSet<(NodeId, UnitName, VersionHash)>,
    /// Every (node, version) that was ever told to run a version, per unit.
    ever_set: BTreeMap<UnitName, BTreeSet<(NodeId, Option<VersionHash>)>>,
    /// Registered nodes.
    fleet: BTreeSet<NodeId>,
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn unit(name: &str) -> UnitName {
    UnitName::new(name).unwrap()
}

fn version(seed: &str) -> VersionHash {
    VersionHash::of(seed.as_bytes())
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn selector(pairs: &[(&str, &str)]) -> Selector {
    let mut selector = Selector::default();
    for (key, value) in pairs {
        selector
            .labels
            .entry((*key).to_owned())
            .or_default()
            .push((*value).to_owned());
    }
    selector
}

fn stage(name: &str, select: &[(&str, &str)], percent: u32, bake_ms: u64) -> Stage {
    Stage {
        name: name.into(),
        selector: selector(select),
        percent: Percent {
            basis_points: percent * 100,
        },
        bake_ms,
        timeout_ms: 600_000,
        gates: vec![],
        min_requests: 100,
        hard_signals: HardSignals::default(),
        silence_ms: 30_000,
        approval: false,
        approvers: 0,
    }
}

/// employees (100%), then half of free, then everyone.
fn three_stage_plan() -> Plan {
    plan(vec![
        stage("employees", &[("cohort", "employee")], 100, 30_000),
        stage("free-half", &[("cohort", "free")], 50, 60_000),
        stage("everyone", &[], 100, 60_000),
    ])
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

impl Harness {
    fn new() -> Self {
        Self {
            engine: Engine::new(),
            now_ms: 1_000_000,
            actions: vec![],
            answered: BTreeSet::new(),
            ever_set: BTreeMap::new(),
            fleet: BTreeSet::new(),
        }
    }

    /// 4 employees, 20 free, 10 pro nodes.
    fn with_fleet() -> Self {
        let mut harness = Self::new();
        for i in 0..4 {
            harness.register(&format!("emp-{i}"), &[("cohort", "employee")]);
        }
        for i in 0..20 {
            harness.register(&format!("free-{i}"), &[("cohort", "free")]);
        }
        for i in 0..10 {
            harness.register(&format!("pro-{i}"), &[("cohort", "pro")]);
        }
        harness
    }

    fn register(&mut self, name: &str, pairs: &[(&str, &str)]) {
        self.step(Event::NodeRegistered {
            node: node(name),
            labels: labels(pairs),
        });
    }

    fn try_step(&mut self, event: Event) -> Result<Vec<Action>, EngineError> {
        let actions = self.engine.step(self.now_ms, &event)?;
        match &event {
            Event::NodeRegistered { node, .. } => {
                self.fleet.insert(node.clone());
            }
            Event::NodeRemoved { node } => {
                self.fleet.remove(node);
            }
            _ => {}
        }
        for action in &actions {
            if let Action::SetDesired {
                unit,
                version,
                nodes,
            } = action
            {
                let set = self.ever_set.entry(unit.clone()).or_default();
                for node in nodes {
                    set.insert((node.clone(), *version));
                }
            }
        }
        self.actions.extend(actions.iter().cloned());
        Ok(actions)
    }

    fn step(&mut self, event: Event) -> Vec<Action> {
        self.try_step(event).unwrap()
    }

    fn request(&mut self, unit_name: &str, seed: &str, plan: Plan, actor: &str) -> RolloutId {
        let actions = self.step(Event::RolloutRequested {
            unit: unit(unit_name),
            version: version(seed),
            plan,
            actor: actor.into(),
            reason: "test".into(),
            override_quarantine: false,
            override_freeze: false,
        });
        actions
            .iter()
            .find_map(|action| match action {
                Action::Changelog(entry)
                    if matches!(
                        entry.kind,
                        ChangeKind::RolloutStarted | ChangeKind::RolloutQueued
                    ) && entry.version == version(seed) =>
                {
                    Some(entry.rollout)
                }
                _ => None,
            })
            .unwrap()
    }

    fn command(
        &mut self,
        id: RolloutId,
        command: Command,
        actor: &str,
    ) -> Result<Vec<Action>, EngineError> {
        self.try_step(Event::Command {
            rollout: id,
            command,
            actor: actor.into(),
            reason: "test".into(),
        })
    }

    /// One round of node behaviour for `unit_name` then a tick, `TICK_MS` later.
    fn round(&mut self, unit_name: &str, react: &dyn Fn(&NodeId, VersionHash) -> Reaction) {
        let unit = unit(unit_name);
        let nodes: Vec<NodeId> = self.all_nodes();
        for node in nodes {
            let Some(desired) = self.engine.desired(&node, &unit) else {
                continue;
            };
            let reaction = react(&node, desired);
            let key = (node.clone(), unit.clone(), desired);
            let first = !self.answered.contains(&key);
            if first {
                match reaction {
                    Reaction::Stuck => continue,
                    Reaction::Nack => {
                        self.answered.insert(key);
                        self.step(Event::Rejected {
                            node: node.clone(),
                            unit: unit.clone(),
                            version: desired,
                            reason: "too many features".into(),
                        });
                        continue;
                    }
                    _ => {
                        self.answered.insert(key);
                        self.step(Event::Applied {
                            node: node.clone(),
                            unit: unit.clone(),
                            version: desired,
                        });
                    }
                }
            }
            match reaction {
                Reaction::Healthy | Reaction::Errors | Reaction::SomeErrors => {
                    let (requests, errors) = match reaction {
                        Reaction::Errors => (50, 10),
                        Reaction::SomeErrors => (50, 1),
                        _ => (50, 0),
                    };
                    let mut sample = HealthSample {
                        requests,
                        errors,
                        ..Default::default()
                    };
                    sample.latency.record(25.0, 50);
                    self.step(Event::Health {
                        node: node.clone(),
                        unit: unit.clone(),
                        version: desired,
                        sample,
                    });
                }
                Reaction::Crash => {
                    self.step(Event::Crashed {
                        node: node.clone(),
                        unit: unit.clone(),
                        version: desired,
                        reason: "panic".into(),
                    });
                }
                Reaction::CheckFails => {
                    self.step(Event::HealthCheckFailed {
                        node: node.clone(),
                        unit: unit.clone(),
                        version: desired,
                        reason: "GET /healthz: 500".into(),
                    });
                }
                Reaction::Nack | Reaction::Silent | Reaction::Stuck => {}
            }
        }
        self.tick(TICK_MS);
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        self.step(Event::Tick);
    }

    /// Rounds until the rollout is terminal or `limit_ms` of virtual time passed.
    fn run(
        &mut self,
        id: RolloutId,
        unit_name: &str,
        limit_ms: u64,
        react: &dyn Fn(&NodeId, VersionHash) -> Reaction,
    ) {
        let end = self.now_ms + limit_ms;
        while self.now_ms < end && !self.status(id).is_terminal() {
            self.round(unit_name, react);
        }
    }

    fn status(&self, id: RolloutId) -> RolloutStatus {
        self.engine.rollout(id).unwrap().status
    }

    fn all_nodes(&self) -> Vec<NodeId> {
        self.fleet.iter().cloned().collect()
    }

    fn kinds(&self, id: RolloutId) -> Vec<ChangeKind> {
        self.actions
            .iter()
            .filter_map(|action| match action {
                Action::Changelog(entry) if entry.rollout == id => Some(entry.kind),
                _ => None,
            })
            .collect()
    }

    fn nodes_ever_given(&self, unit_name: &str, seed: &str) -> BTreeSet<NodeId> {
        self.ever_set
            .get(&unit(unit_name))
            .map(|set| {
                set.iter()
                    .filter(|(_, v)| *v == Some(version(seed)))
                    .map(|(node, _)| node.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn healthy(_: &NodeId, _: VersionHash) -> Reaction {
    Reaction::Healthy
}

#[test]
fn good_version_goes_through_every_stage_and_completes() {
    let mut h = Harness::with_fleet();
    let id = h.request("bot-features", "v1", three_stage_plan(), "alice");
    assert_eq!(h.engine.rollout(id).unwrap().stage_name, "employees");
    // Only employees got it at first.
    let first = h.engine.exposed_nodes(id);
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|n| n.as_str().starts_with("emp-")));

    h.run(id, "bot-features", 3_600_000, &healthy);

    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Completed, "{view:?}");
    assert_eq!(h.engine.stable(&unit("bot-features")), Some(version("v1")));
    for n in h.all_nodes() {
        assert_eq!(
            h.engine.desired(&n, &unit("bot-features")),
            Some(version("v1")),
            "{n}"
        );
    }
    let kinds = h.kinds(id);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == ChangeKind::StagePassed)
            .count(),
        3
    );
    assert_eq!(kinds.first(), Some(&ChangeKind::RolloutStarted));
    assert_eq!(kinds.last(), Some(&ChangeKind::Completed));
    assert_eq!(h.engine.next_deadline_ms(), None);
}

#[test]
fn stage_waits_for_its_bake_before_passing() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    // 30 s bake: after 25 s of healthy rounds the first stage has not passed yet.
    for _ in 0..5 {
        h.round("u", &healthy);
    }
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.stage_index, 0);
    assert!(matches!(view.phase, StagePhase::Baking { .. }), "{view:?}");
    assert!(view.bake_remaining_ms.unwrap() > 0);
    h.run(id, "u", 20_000, &healthy);
    assert!(h.engine.rollout(id).unwrap().stage_index >= 1);
}

#[test]
fn nack_in_stage_one_rolls_back_at_once_and_never_reaches_later_stages() {
    let mut h = Harness::with_fleet();
    let id = h.request("bot-features", "v1", three_stage_plan(), "alice");
    // Employees are fine; free nodes NACK the version.
    let react = |n: &NodeId, _: VersionHash| {
        if n.as_str().starts_with("free-") {
            Reaction::Nack
        } else {
            Reaction::Healthy
        }
    };
    let mut stage_one_exposed = BTreeSet::new();
    while !h.status(id).is_terminal() {
        let view = h.engine.rollout(id).unwrap();
        if view.stage_index == 1 {
            stage_one_exposed.extend(h.engine.exposed_nodes(id));
        }
        // Send the NACK and look at the actions of that very step.
        h.round("bot-features", &react);
        assert!(h.now_ms < 2_000_000, "did not end");
    }
    assert_eq!(h.status(id), RolloutStatus::RolledBack);
    assert!(h.kinds(id).contains(&ChangeKind::Quarantined));
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.stage_index, 1, "failed in stage 1");
    // No node outside stages 0 and 1 ever got v1.
    let given = h.nodes_ever_given("bot-features", "v1");
    assert!(!given.is_empty());
    assert!(
        given.iter().all(|n| !n.as_str().starts_with("pro-")),
        "{given:?}"
    );
    assert!(given.is_subset(&stage_one_exposed));
    // Every node that got it is back to what it had (nothing).
    for n in &given {
        assert_eq!(h.engine.desired(n, &unit("bot-features")), None);
    }
    assert!(
        h.engine
            .is_quarantined(&unit("bot-features"), &version("v1"))
    );
}

#[test]
fn hard_signal_rolls_back_in_the_same_step() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    let exposed = h.engine.exposed_nodes(id);
    let victim = exposed.first().unwrap().clone();
    h.step(Event::Applied {
        node: victim.clone(),
        unit: unit("u"),
        version: version("v1"),
    });
    let actions = h.step(Event::Crashed {
        node: victim.clone(),
        unit: unit("u"),
        version: version("v1"),
        reason: "segfault".into(),
    });
    assert_eq!(h.status(id), RolloutStatus::RolledBack);
    let reverted: Vec<NodeId> = actions
        .iter()
        .filter_map(|action| match action {
            Action::SetDesired {
                version: None,
                nodes,
                ..
            } => Some(nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(reverted, exposed);
    assert!(actions.iter().any(|a| matches!(a, Action::Notify { .. })));
}

#[test]
fn crash_rolls_back_and_restores_the_previous_version() {
    let mut h = Harness::with_fleet();
    let good = h.request("u", "good", three_stage_plan(), "alice");
    h.run(good, "u", 3_600_000, &healthy);
    assert_eq!(h.status(good), RolloutStatus::Completed);

    let bad = h.request("u", "bad", three_stage_plan(), "alice");
    let react = |_: &NodeId, v: VersionHash| {
        if v == version("bad") {
            Reaction::Crash
        } else {
            Reaction::Healthy
        }
    };
    h.run(bad, "u", 600_000, &react);
    assert_eq!(h.status(bad), RolloutStatus::RolledBack);
    for n in h.all_nodes() {
        assert_eq!(h.engine.desired(&n, &unit("u")), Some(version("good")));
    }
    assert_eq!(h.engine.stable(&unit("u")), Some(version("good")));
}

#[test]
fn failed_health_check_rolls_back() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    h.run(id, "u", 600_000, &|_, _| Reaction::CheckFails);
    assert_eq!(h.status(id), RolloutStatus::RolledBack);
    assert!(
        h.engine
            .rollout(id)
            .unwrap()
            .outcome
            .unwrap()
            .contains("health checks")
    );
}

#[test]
fn silent_canary_nodes_roll_back() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    h.run(id, "u", 600_000, &|n, _| {
        if n.as_str() == "emp-0" {
            Reaction::Silent
        } else {
            Reaction::Healthy
        }
    });
    assert_eq!(h.status(id), RolloutStatus::RolledBack);
    let outcome = h.engine.rollout(id).unwrap().outcome.unwrap();
    assert!(outcome.contains("silent"), "{outcome}");
}

#[test]
fn missing_acks_time_out_into_a_hold_that_blames_nothing() {
    for on_inconclusive in [OnInconclusive::Hold, OnInconclusive::Rollback] {
        let mut h = Harness::with_fleet();
        let mut plan = three_stage_plan();
        plan.stages[0].timeout_ms = 120_000;
        plan.on_inconclusive = on_inconclusive;
        let id = h.request("u", "v1", plan, "alice");
        let start = h.now_ms;
        let stuck = |n: &NodeId, _: VersionHash| {
            if n.as_str() == "emp-1" {
                Reaction::Stuck
            } else {
                Reaction::Healthy
            }
        };
        h.run(id, "u", 3_600_000, &stuck);
        let view = h.engine.rollout(id).unwrap();
        // A node that never answered is no evidence against the version.
        assert!(
            !h.engine.is_quarantined(&unit("u"), &version("v1")),
            "{view:?}"
        );
        match on_inconclusive {
            OnInconclusive::Hold => {
                assert_eq!(view.status, RolloutStatus::Running, "{view:?}");
                assert_eq!(view.stage_index, 0);
                assert!(h.kinds(id).contains(&ChangeKind::Held));
                assert!(h.actions.iter().any(|a| matches!(
                    a,
                    Action::Notify { rollout, message } if *rollout == id
                        && message.contains("inconclusive")
                        && message.contains("failsmall rollout promote|rollback|abort")
                )));
                // An operator decides.
                h.command(id, Command::Rollback, "oncall").unwrap();
                assert_eq!(h.status(id), RolloutStatus::RolledBack);
            }
            OnInconclusive::Rollback => {
                assert_eq!(view.status, RolloutStatus::RolledBack, "{view:?}");
                assert!(view.outcome.unwrap().contains("inconclusive"));
                let ended = view.ended_ms.unwrap();
                assert!(
                    ended >= start + 120_000 && ended <= start + 120_000 + TICK_MS,
                    "{ended}"
                );
            }
        }
    }
}

#[test]
fn too_few_requests_hold_and_never_promote() {
    let mut h = Harness::with_fleet();
    let mut plan = three_stage_plan();
    plan.stages[0].min_requests = 1_000_000;
    plan.stages[0].timeout_ms = 300_000;
    let id = h.request("u", "v1", plan, "alice");
    for _ in 0..20 {
        h.round("u", &healthy);
    }
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.stage_index, 0);
    assert_eq!(view.phase, StagePhase::Holding);
    // Past its timeout it holds: never promoted for lack of data, never blamed for it.
    h.run(id, "u", 600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Running);
    assert_eq!(h.engine.rollout(id).unwrap().stage_index, 0);
    assert!(h.kinds(id).contains(&ChangeKind::Held));
    assert!(!h.engine.is_quarantined(&unit("u"), &version("v1")));
}

/// A stage whose bake ended while it lacked data passes in the very step that brings enough,
/// not at the next periodic gate evaluation.
#[test]
fn a_stage_held_for_data_passes_in_the_step_that_brings_enough() {
    let mut h = Harness::with_fleet();
    let mut only = stage("employees", &[("cohort", "employee")], 100, 2_000);
    only.gates = vec![Gate::parse("error_rate > 5%").unwrap()];
    let id = h.request("u", "v1", plan(vec![only]), "alice");
    for i in 0..4 {
        h.step(Event::Applied {
            node: node(&format!("emp-{i}")),
            unit: unit("u"),
            version: version("v1"),
        });
    }
    h.tick(2_000);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(
        view.phase,
        StagePhase::Holding,
        "bake over, no requests yet"
    );
    h.now_ms += 500;
    h.step(Event::Health {
        node: node("emp-0"),
        unit: unit("u"),
        version: version("v1"),
        sample: HealthSample {
            requests: 150,
            ..Default::default()
        },
    });
    assert_eq!(h.status(id), RolloutStatus::Completed);
}

#[test]
fn approval_comes_before_exposure_and_self_approval_is_refused() {
    let mut h = Harness::with_fleet();
    let mut plan = three_stage_plan();
    plan.stages[0].approval = true;
    let id = h.request("u", "v1", plan, "alice");
    h.run(id, "u", 300_000, &healthy);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.phase, StagePhase::AwaitingApproval);
    assert_eq!(view.stage_index, 0);
    // Nothing runs the version before the approval.
    assert_eq!(view.nodes_exposed, 0, "{view:?}");
    let before = h.engine.clone();
    assert!(matches!(
        h.command(id, Command::Approve, "alice"),
        Err(EngineError::SelfApproval { .. })
    ));
    assert_eq!(h.engine, before, "a refused step changes nothing");
    h.command(id, Command::Approve, "bob").unwrap();
    // Approved: the first stage is entered and exposes its nodes.
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.stage_index, 0);
    assert!(view.nodes_exposed > 0, "{view:?}");
    assert!(matches!(
        h.command(id, Command::Approve, "bob"),
        Err(EngineError::NoApprovalPending { .. })
    ));
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
    assert!(h.kinds(id).contains(&ChangeKind::Approved));
}

#[test]
fn pause_freezes_deadlines_and_resume_extends_them() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    h.round("u", &healthy);
    let StagePhase::Baking { bake_ends_ms } = h.engine.rollout(id).unwrap().phase else {
        panic!("baking expected");
    };
    h.command(id, Command::Pause, "ops").unwrap();
    assert_eq!(h.status(id), RolloutStatus::Paused);
    assert_eq!(h.engine.next_deadline_ms(), None);
    let remaining = h.engine.rollout(id).unwrap().bake_remaining_ms.unwrap();
    // Ten minutes pass: far past the bake end and the stage timeout.
    h.tick(600_000);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Paused);
    assert_eq!(view.stage_index, 0);
    assert_eq!(view.bake_remaining_ms, Some(remaining));
    assert!(matches!(
        h.command(id, Command::Pause, "ops"),
        Err(EngineError::InvalidCommand { .. })
    ));
    h.command(id, Command::Resume, "ops").unwrap();
    let StagePhase::Baking {
        bake_ends_ms: extended,
    } = h.engine.rollout(id).unwrap().phase
    else {
        panic!("still baking expected");
    };
    assert_eq!(extended, bake_ends_ms + 600_000);
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
    let kinds = h.kinds(id);
    assert!(kinds.contains(&ChangeKind::Paused) && kinds.contains(&ChangeKind::Resumed));
}

#[test]
fn promote_skips_the_rest_of_the_bake() {
    let mut h = Harness::with_fleet();
    let mut plan = three_stage_plan();
    plan.stages[0].bake_ms = 3_600_000;
    plan.stages[0].min_requests = 0;
    let id = h.request("u", "v1", plan, "alice");
    assert!(matches!(
        h.command(id, Command::Promote, "ops"),
        Err(EngineError::InvalidCommand { .. })
    ));
    h.round("u", &healthy);
    h.command(id, Command::Promote, "ops").unwrap();
    assert_eq!(h.engine.rollout(id).unwrap().stage_index, 1);
    let promoted = h.actions.iter().any(
        |a| matches!(a, Action::Changelog(e) if e.kind == ChangeKind::Promoted && e.actor == "ops"),
    );
    assert!(promoted);
}

#[test]
fn abort_keeps_exposed_nodes_on_the_version() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    h.round("u", &healthy);
    let exposed = h.engine.exposed_nodes(id);
    h.command(id, Command::Abort, "ops").unwrap();
    assert_eq!(h.status(id), RolloutStatus::Aborted);
    for n in &exposed {
        assert_eq!(h.engine.desired(n, &unit("u")), Some(version("v1")));
    }
    assert_eq!(h.engine.stable(&unit("u")), None);
    assert!(!h.engine.is_quarantined(&unit("u"), &version("v1")));
    assert!(matches!(
        h.command(id, Command::Resume, "ops"),
        Err(EngineError::InvalidCommand { .. })
    ));
}

#[test]
fn rollback_command_reverts_and_quarantines() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    h.run(id, "u", 100_000, &healthy);
    assert!(h.engine.rollout(id).unwrap().stage_index >= 1);
    let exposed = h.engine.exposed_nodes(id);
    let actions = h.command(id, Command::Rollback, "ops").unwrap();
    assert_eq!(h.status(id), RolloutStatus::RolledBack);
    for n in &exposed {
        assert_eq!(h.engine.desired(n, &unit("u")), None);
    }
    let logged = actions.iter().any(|a| {
        matches!(a, Action::Changelog(e) if e.kind == ChangeKind::RolledBack && e.actor == "ops")
    });
    assert!(logged);
    assert!(h.engine.is_quarantined(&unit("u"), &version("v1")));
}

#[test]
fn quarantined_hash_is_refused_unless_overridden() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    h.command(id, Command::Rollback, "ops").unwrap();
    let request = |override_quarantine| Event::RolloutRequested {
        unit: unit("u"),
        version: version("v1"),
        plan: three_stage_plan(),
        actor: "alice".into(),
        reason: "again".into(),
        override_quarantine,
        override_freeze: false,
    };
    let before = h.engine.clone();
    assert!(matches!(
        h.try_step(request(false)),
        Err(EngineError::Quarantined { .. })
    ));
    assert_eq!(h.engine, before);
    let actions = h.step(request(true));
    let started = actions.iter().find_map(|a| match a {
        Action::Changelog(e) if e.kind == ChangeKind::RolloutStarted => Some(e.clone()),
        _ => None,
    });
    assert!(started.unwrap().reason.contains("override"));
}

#[test]
fn empty_plan_is_refused() {
    let mut h = Harness::with_fleet();
    let result = h.try_step(Event::RolloutRequested {
        unit: unit("u"),
        version: version("v1"),
        plan: plan(vec![]),
        actor: "alice".into(),
        reason: "".into(),
        override_quarantine: false,
        override_freeze: false,
    });
    assert!(matches!(result, Err(EngineError::EmptyPlan { .. })));
}

#[test]
fn versions_queue_then_run_in_order_and_the_queue_is_bounded() {
    let mut h = Harness::with_fleet();
    let mut small_queue = three_stage_plan();
    small_queue.queue_limit = 1;
    let first = h.request("u", "v1", small_queue.clone(), "alice");
    let second = h.request("u", "v2", small_queue.clone(), "alice");
    assert_eq!(h.status(second), RolloutStatus::Queued);
    let full = h.try_step(Event::RolloutRequested {
        unit: unit("u"),
        version: version("v3"),
        plan: small_queue,
        actor: "alice".into(),
        reason: "".into(),
        override_quarantine: false,
        override_freeze: false,
    });
    assert!(matches!(
        full,
        Err(EngineError::QueueFull { queued: 1, .. })
    ));
    h.run(first, "u", 3_600_000, &healthy);
    assert_eq!(h.status(first), RolloutStatus::Completed);
    assert_eq!(h.status(second), RolloutStatus::Running);
    h.run(second, "u", 3_600_000, &healthy);
    assert_eq!(h.engine.stable(&unit("u")), Some(version("v2")));
}

#[test]
fn a_newer_queued_version_supersedes_older_queued_ones() {
    let mut h = Harness::with_fleet();
    let mut superseding = three_stage_plan();
    superseding.supersede_queued = true;
    let first = h.request("u", "v1", superseding.clone(), "alice");
    let second = h.request("u", "v2", superseding.clone(), "alice");
    let third = h.request("u", "v3", superseding, "alice");
    assert_eq!(h.status(first), RolloutStatus::Running);
    assert_eq!(h.status(second), RolloutStatus::Aborted);
    assert!(h.kinds(second).contains(&ChangeKind::Superseded));
    assert_eq!(h.status(third), RolloutStatus::Queued);
}

fn train_plan() -> Plan {
    let mut plan = three_stage_plan();
    plan.concurrency = Concurrency::Train;
    plan
}

/// Runs rounds until `id` reaches `stage_index` (or ends).
fn run_to_stage(
    h: &mut Harness,
    id: RolloutId,
    stage_index: usize,
    react: &dyn Fn(&NodeId, VersionHash) -> Reaction,
) {
    for _ in 0..1_000 {
        let view = h.engine.rollout(id).unwrap();
        if view.stage_index >= stage_index || view.status.is_terminal() {
            return;
        }
        h.round("u", react);
    }
}

#[test]
fn release_train_failure_of_the_later_version_reverts_only_its_nodes() {
    let mut h = Harness::with_fleet();
    let n = h.request("u", "n", train_plan(), "alice");
    let next = h.request("u", "n1", train_plan(), "alice");
    assert_eq!(
        h.status(next),
        RolloutStatus::Queued,
        "waits until N leaves stage 0"
    );
    run_to_stage(&mut h, n, 1, &healthy);
    assert_eq!(h.status(next), RolloutStatus::Running);
    // Employees now run N+1 on top of N.
    let react = |_: &NodeId, v: VersionHash| {
        if v == version("n1") {
            Reaction::Nack
        } else {
            Reaction::Healthy
        }
    };
    h.round("u", &react);
    assert_eq!(h.status(next), RolloutStatus::RolledBack);
    assert_eq!(h.status(n), RolloutStatus::Running);
    for i in 0..4 {
        assert_eq!(
            h.engine.desired(&node(&format!("emp-{i}")), &unit("u")),
            Some(version("n"))
        );
    }
    h.run(n, "u", 3_600_000, &healthy);
    assert_eq!(h.status(n), RolloutStatus::Completed);
}

#[test]
fn release_train_failure_of_the_earlier_version_reverts_both() {
    let mut h = Harness::with_fleet();
    let n = h.request("u", "n", train_plan(), "alice");
    let next = h.request("u", "n1", train_plan(), "alice");
    run_to_stage(&mut h, n, 1, &healthy);
    // N+1 reaches the employees; N is in stage 1.
    h.round("u", &healthy);
    assert!(h.engine.exposed_nodes(next).len() == 4);
    assert_eq!(h.engine.rollout(next).unwrap().stage_index, 0);
    assert_eq!(
        h.engine.version_before(next, &node("emp-0")),
        Some(version("n"))
    );
    h.command(n, Command::Rollback, "ops").unwrap();
    assert_eq!(h.status(n), RolloutStatus::RolledBack);
    assert_eq!(h.status(next), RolloutStatus::RolledBack);
    for node_id in h.all_nodes() {
        assert_eq!(h.engine.desired(&node_id, &unit("u")), None, "{node_id}");
    }
    assert!(h.engine.is_quarantined(&unit("u"), &version("n")));
}

#[test]
fn train_versions_never_overtake_and_complete_in_order() {
    let mut h = Harness::with_fleet();
    let n = h.request("u", "n", train_plan(), "alice");
    let next = h.request("u", "n1", train_plan(), "alice");
    let mut completed = vec![];
    for _ in 0..2_000 {
        let (a, b) = (
            h.engine.rollout(n).unwrap(),
            h.engine.rollout(next).unwrap(),
        );
        if b.status == RolloutStatus::Running && a.status == RolloutStatus::Running {
            assert!(
                b.stage_index < a.stage_index,
                "{} vs {}",
                b.stage_index,
                a.stage_index
            );
        }
        for id in [n, next] {
            if h.status(id) == RolloutStatus::Completed && !completed.contains(&id) {
                completed.push(id);
            }
        }
        if completed.len() == 2 {
            break;
        }
        h.round("u", &healthy);
    }
    assert_eq!(completed, vec![n, next]);
    assert_eq!(h.engine.stable(&unit("u")), Some(version("n1")));
}

#[test]
fn a_down_node_is_left_out_of_a_stage_and_joins_once_heard_from() {
    let mut h = Harness::with_fleet();
    h.step(Event::Liveness {
        down: vec![node("emp-0"), node("ghost")],
        up: vec![],
    });
    assert_eq!(
        h.engine.down_nodes(),
        vec![node("emp-0")],
        "unknown nodes are skipped"
    );
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    let exposed = h.engine.exposed_nodes(id);
    assert_eq!(exposed.len(), 3, "{exposed:?}");
    assert!(!exposed.contains(&node("emp-0")));
    assert!(h.actions.iter().any(|a| matches!(
        a,
        Action::Changelog(entry) if entry.kind == ChangeKind::StageStarted
            && entry.reason.contains("1 left out, down (not heard from): emp-0")
    )));
    // The stage does not wait for the dead node: it passes on the live ones.
    h.run(id, "u", 60_000, &healthy);
    assert!(h.engine.rollout(id).unwrap().stage_index >= 1);
    // Heard from again: it gets what the entered stages select for it.
    let actions = h.step(Event::Liveness {
        down: vec![],
        up: vec![node("emp-0")],
    });
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::SetDesired { version: Some(v), nodes, .. }
            if *v == version("v1") && nodes == &vec![node("emp-0")]
    )));
    assert!(h.engine.down_nodes().is_empty());
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
}

#[test]
fn a_node_joining_mid_rollout_gets_the_version_of_entered_stages() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    h.round("u", &healthy);
    let actions = h.step(Event::NodeRegistered {
        node: node("late-0"),
        labels: labels(&[("cohort", "employee")]),
    });
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::SetDesired { version: Some(v), nodes, .. } if *v == version("v1") && nodes == &vec![node("late-0")]
    )));
    let actions = h.step(Event::NodeRegistered {
        node: node("late-1"),
        labels: labels(&[("cohort", "pro")]),
    });
    assert!(
        actions
            .iter()
            .all(|a| !matches!(a, Action::SetDesired { .. }))
    );
    assert_eq!(h.engine.rollout(id).unwrap().nodes_exposed, 5);
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
    assert_eq!(
        h.engine.desired(&node("late-1"), &unit("u")),
        Some(version("v1"))
    );
    // A node joining after completion gets the stable version.
    let actions = h.step(Event::NodeRegistered {
        node: node("late-2"),
        labels: labels(&[]),
    });
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::SetDesired { version: Some(v), .. } if *v == version("v1"))
        )
    );
}

#[test]
fn removed_nodes_are_forgotten() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    h.step(Event::NodeRemoved {
        node: node("emp-0"),
    });
    assert_eq!(h.engine.rollout(id).unwrap().nodes_exposed, 3);
    assert!(matches!(
        h.try_step(Event::NodeRemoved {
            node: node("emp-0")
        }),
        Err(EngineError::UnknownNode(_))
    ));
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
}

#[test]
fn several_units_roll_out_at_once_independently() {
    let mut h = Harness::with_fleet();
    let a = h.request("unit-a", "a1", three_stage_plan(), "alice");
    let b = h.request("unit-b", "b1", three_stage_plan(), "alice");
    assert_eq!(h.status(a), RolloutStatus::Running);
    assert_eq!(h.status(b), RolloutStatus::Running);
    // unit-b's nodes NACK; unit-a is healthy.
    for _ in 0..200 {
        h.round("unit-a", &healthy);
        h.round("unit-b", &|_, _| Reaction::Nack);
        if h.status(a).is_terminal() && h.status(b).is_terminal() {
            break;
        }
    }
    assert_eq!(h.status(a), RolloutStatus::Completed);
    assert_eq!(h.status(b), RolloutStatus::RolledBack);
    assert_eq!(h.engine.stable(&unit("unit-a")), Some(version("a1")));
    assert_eq!(h.engine.stable(&unit("unit-b")), None);
}

#[test]
fn a_stage_that_selects_no_node_passes_at_once() {
    let mut h = Harness::with_fleet();
    let plan = plan(vec![
        stage("nobody", &[("cohort", "none-such")], 100, 60_000),
        stage("employees", &[("cohort", "employee")], 100, 0),
    ]);
    let id = h.request("u", "v1", plan, "alice");
    assert_eq!(h.engine.rollout(id).unwrap().stage_index, 1);
    let noted = h.actions.iter().any(|a| {
        matches!(a, Action::Changelog(e) if e.kind == ChangeKind::StagePassed && e.reason.contains("no nodes"))
    });
    assert!(noted);
}

#[test]
fn engine_state_survives_serde_mid_rollout() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    h.run(id, "u", 60_000, &healthy);
    let text = serde_json::to_string(&h.engine).unwrap();
    let restored: Engine = serde_json::from_str(&text).unwrap();
    assert_eq!(restored, h.engine);
}

#[test]
fn unknown_rollout_and_unknown_node_are_errors() {
    let mut h = Harness::with_fleet();
    assert!(matches!(
        h.command(RolloutId(99), Command::Pause, "ops"),
        Err(EngineError::UnknownRollout(_))
    ));
    let result = h.try_step(Event::Applied {
        node: node("nobody"),
        unit: unit("u"),
        version: version("v"),
    });
    assert!(matches!(result, Err(EngineError::UnknownNode(_))));
}

fn gated(mut stage: Stage, gates: &[&str]) -> Stage {
    stage.gates = gates
        .iter()
        .map(|source| Gate::parse(source).unwrap())
        .collect();
    stage
}

/// The three-stage plan with an absolute error gate on every stage.
fn absolute_gate_plan() -> Plan {
    let mut plan = three_stage_plan();
    for stage in &mut plan.stages {
        *stage = gated(stage.clone(), &["error_rate > 1%"]);
    }
    plan
}

#[test]
fn a_fleet_wide_incident_holds_the_stage_and_never_blames_the_version() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v0", absolute_gate_plan(), "alice");
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
    // Every node, with the new version or not, fails 20% of its requests.
    let id = h.request("u", "v1", absolute_gate_plan(), "alice");
    for _ in 0..40 {
        h.round("u", &|_, _| Reaction::Errors);
    }
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Running, "{view:?}");
    assert_eq!(view.stage_index, 0);
    assert!(h.kinds(id).contains(&ChangeKind::FleetUnhealthy));
    assert!(matches!(
        &view.gates[0].verdict,
        Verdict::Inconclusive { detail } if detail.contains("fleet unhealthy")
    ));
    assert!(!h.engine.is_quarantined(&unit("u"), &version("v1")));
    // The fleet recovers: the rollout goes on and completes.
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
}

#[test]
fn a_units_first_version_is_judged_without_a_baseline_it_cannot_have() {
    let relative = |plan: &mut Plan| {
        for stage in &mut plan.stages {
            *stage = gated(
                stage.clone(),
                &[
                    "significant(error_rate > baseline.error_rate)",
                    "error_rate > 5%",
                ],
            );
        }
    };
    let mut plan = three_stage_plan();
    relative(&mut plan);
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", plan.clone(), "alice");
    h.run(id, "u", 3_600_000, &healthy);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Completed, "{view:?}");
    assert!(matches!(
        &view.gates[0].verdict,
        Verdict::Pass { detail } if detail.contains("no baseline")
    ));
    // A bad first version is still caught by the absolute gate.
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", plan, "alice");
    h.run(id, "u", 3_600_000, &|_, _| Reaction::Errors);
    assert_eq!(h.status(id), RolloutStatus::RolledBack);
}

#[test]
fn with_exclusive_nodes_another_units_failure_is_never_blamed_on_this_one() {
    let exclusive = || Plan {
        exclusive_nodes: true,
        health_source: None,
        ..absolute_gate_plan()
    };
    for bad_first in [true, false] {
        let mut h = Harness::with_fleet();
        // Pushed at the same moment, on the same nodes.
        let first = h.request("first", "f1", exclusive(), "alice");
        let second = h.request("second", "s1", exclusive(), "bob");
        assert!(
            h.engine.exposed_nodes(second).is_empty(),
            "every employee is busy"
        );
        assert!(h.actions.iter().any(|a| matches!(
            a,
            Action::Changelog(entry) if entry.rollout == second
                && entry.reason.contains("4 deferred, in another unit's running rollout")
        )));
        let (bad, good) = if bad_first {
            (version("f1"), version("s1"))
        } else {
            (version("s1"), version("f1"))
        };
        // A node's consumer fails when it runs the bad version of either unit: its health,
        // reported for every unit it runs, shows the errors.
        let runs_bad = |h: &Harness, node: &NodeId| {
            [unit("first"), unit("second")]
                .iter()
                .any(|u| h.engine.desired(node, u) == Some(bad))
        };
        for _ in 0..2_000 {
            if h.status(first).is_terminal() && h.status(second).is_terminal() {
                break;
            }
            let sick: BTreeSet<NodeId> = h
                .all_nodes()
                .into_iter()
                .filter(|node| runs_bad(&h, node))
                .collect();
            let react = |node: &NodeId, _: VersionHash| {
                if sick.contains(node) {
                    Reaction::Errors
                } else {
                    Reaction::Healthy
                }
            };
            for name in ["first", "second"] {
                let nodes: Vec<NodeId> = h.all_nodes();
                for node in nodes {
                    let Some(desired) = h.engine.desired(&node, &unit(name)) else {
                        continue;
                    };
                    let key = (node.clone(), unit(name), desired);
                    if h.answered.insert(key) {
                        h.step(Event::Applied {
                            node: node.clone(),
                            unit: unit(name),
                            version: desired,
                        });
                    }
                    let errors = if react(&node, desired) == Reaction::Errors {
                        10
                    } else {
                        0
                    };
                    let mut sample = HealthSample {
                        requests: 50,
                        errors,
                        ..Default::default()
                    };
                    sample.latency.record(25.0, 50);
                    h.step(Event::Health {
                        node: node.clone(),
                        unit: unit(name),
                        version: desired,
                        sample,
                    });
                }
            }
            h.tick(TICK_MS);
        }
        let (bad_id, good_id) = if bad_first {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(
            h.status(bad_id),
            RolloutStatus::RolledBack,
            "bad first: {bad_first}"
        );
        assert_eq!(
            h.status(good_id),
            RolloutStatus::Completed,
            "bad first: {bad_first}"
        );
        assert!(
            h.engine
                .is_quarantined(&unit(if bad_first { "first" } else { "second" }), &bad)
        );
        let good_unit = unit(if bad_first { "second" } else { "first" });
        assert!(!h.engine.is_quarantined(&good_unit, &good));
        assert_eq!(h.engine.stable(&good_unit), Some(good));
    }
}

#[test]
fn a_version_worse_than_an_unhealthy_fleet_is_still_rolled_back() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v0", absolute_gate_plan(), "alice");
    h.run(id, "u", 3_600_000, &healthy);
    // The baseline fails 2% of its requests (above the 1% gate); the canary fails 20%.
    let id = h.request("u", "v1", absolute_gate_plan(), "alice");
    let v1 = version("v1");
    h.run(id, "u", 3_600_000, &|_, desired| {
        if desired == v1 {
            Reaction::Errors
        } else {
            Reaction::SomeErrors
        }
    });
    assert_eq!(h.status(id), RolloutStatus::RolledBack);
    assert!(h.engine.is_quarantined(&unit("u"), &v1));
}

#[test]
fn error_rate_gate_fails_the_stage_on_a_tick_and_rolls_back() {
    let mut h = Harness::with_fleet();
    let mut plan = three_stage_plan();
    plan.stages[0] = gated(plan.stages[0].clone(), &["error_rate > 1%"]);
    let id = h.request("u", "v1", plan, "alice");
    h.run(id, "u", 600_000, &|_, _| Reaction::Errors);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::RolledBack);
    assert_eq!(view.stage_index, 0);
    assert!(view.outcome.unwrap().contains("error_rate > 1%"));
    let verdicts: Vec<String> = h
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Changelog(e) if e.kind == ChangeKind::GateVerdict => Some(e.reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        verdicts.len(),
        1,
        "logged once, on the change to fail: {verdicts:?}"
    );
    assert!(
        h.nodes_ever_given("u", "v1")
            .iter()
            .all(|n| n.as_str().starts_with("emp-"))
    );
}

#[test]
fn healthy_version_passes_error_rate_gates() {
    let mut h = Harness::with_fleet();
    let mut plan = three_stage_plan();
    for stage in &mut plan.stages {
        *stage = gated(
            stage.clone(),
            &["error_rate > 1%", "p99_latency > 200ms OR errors > 1000"],
        );
    }
    let id = h.request("u", "v1", plan, "alice");
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(
        h.status(id),
        RolloutStatus::Completed,
        "{:?}",
        h.engine.rollout(id)
    );
}

/// A stable v0 everywhere, then a rollout to half of the free nodes judged against the other
/// half (the baseline).
fn relative_gate_rollout(canary: Reaction) -> (Harness, RolloutId) {
    let mut h = Harness::with_fleet();
    let v0 = h.request("u", "v0", plan(vec![stage("all", &[], 100, 0)]), "alice");
    h.run(v0, "u", 600_000, &healthy);
    assert_eq!(h.status(v0), RolloutStatus::Completed);
    let relative = gated(
        stage("free-half", &[("cohort", "free")], 50, 60_000),
        &["error_rate > 2 * baseline.error_rate + 1%"],
    );
    let id = h.request(
        "u",
        "v1",
        plan(vec![relative, stage("all", &[], 100, 0)]),
        "alice",
    );
    h.run(id, "u", 3_600_000, &|_, v| {
        if v == version("v1") {
            canary
        } else {
            Reaction::Healthy
        }
    });
    (h, id)
}

#[test]
fn relative_gate_compares_canary_with_baseline() {
    let (h, id) = relative_gate_rollout(Reaction::Healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
    let (h, id) = relative_gate_rollout(Reaction::Errors);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::RolledBack);
    assert_eq!(view.stage_index, 0);
    assert!(matches!(
        view.gates.first().unwrap().verdict,
        Verdict::Fail { .. }
    ));
    // Only the canary half of the free nodes ever saw v1, and all are back on v0.
    let given = h.nodes_ever_given("u", "v1");
    assert!(!given.is_empty() && given.len() < 20);
    assert!(given.iter().all(|n| n.as_str().starts_with("free-")));
    for n in h.all_nodes() {
        assert_eq!(h.engine.desired(&n, &unit("u")), Some(version("v0")));
    }
}

#[test]
fn a_stage_taking_every_node_passes_relative_gates_it_can_never_judge() {
    let mut h = Harness::with_fleet();
    // Everyone at once: no node runs another version, so there is never a baseline; the
    // relative gate cannot conclude and is not held against the version.
    let mut only = gated(
        stage("everyone", &[], 100, 30_000),
        &["error_rate > 2 * baseline.error_rate"],
    );
    only.timeout_ms = 300_000;
    let id = h.request(
        "u",
        "v1",
        plan(vec![only, stage("after", &[], 100, 0)]),
        "alice",
    );
    h.run(id, "u", 3_600_000, &healthy);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Completed, "{view:?}");
    assert!(h.actions.iter().any(|a| matches!(
        a,
        Action::Changelog(entry) if entry.kind == ChangeKind::GateVerdict
            && entry.reason.contains("no baseline")
    )));
    assert!(!h.kinds(id).contains(&ChangeKind::Held));
}

/// nov18: the feature-file source alternates a good and a bad file every 5 minutes. The bad
/// file (always the same bytes, so the same hash) is NACKed by first-stage agents: it never
/// gets past the first stage, and the fleet flips to it at most once.
#[test]
fn nov18_alternating_bad_file_never_passes_the_first_stage_and_flips_once() {
    let mut h = Harness::with_fleet();
    let mut plan = three_stage_plan();
    plan.supersede_queued = true;
    let bad = version("features: 240 entries");
    let mut refused = 0;
    for generation in 0..8 {
        let seed = if generation % 2 == 0 {
            format!("features: 60 entries, generation {generation}")
        } else {
            "features: 240 entries".to_owned()
        };
        let request = Event::RolloutRequested {
            unit: unit("bot-features"),
            version: version(&seed),
            plan: plan.clone(),
            actor: "feature-generator".into(),
            reason: format!("generation {generation}"),
            override_quarantine: false,
            override_freeze: false,
        };
        match h.try_step(request) {
            Ok(_) => {}
            Err(EngineError::Quarantined { version: v, .. }) => {
                assert_eq!(v, bad);
                refused += 1;
            }
            Err(other) => panic!("{other}"),
        }
        // Five minutes of agents: the bad file fails the validator (NACK).
        for _ in 0..60 {
            h.round("bot-features", &|_, v| {
                if v == bad {
                    Reaction::Nack
                } else {
                    Reaction::Healthy
                }
            });
        }
    }
    assert_eq!(
        refused, 3,
        "the bad hash is quarantined after its first rollback"
    );
    let given_bad = h.nodes_ever_given("bot-features", "features: 240 entries");
    assert!(!given_bad.is_empty());
    assert!(
        given_bad.iter().all(|n| n.as_str().starts_with("emp-")),
        "{given_bad:?}"
    );
    let flips_to_bad: usize = h
        .actions
        .iter()
        .filter(|a| matches!(a, Action::SetDesired { version: Some(v), .. } if *v == bad))
        .count();
    assert_eq!(flips_to_bad, 1);
    // The last good generation is stable everywhere.
    let last_good = version("features: 60 entries, generation 6");
    assert_eq!(h.engine.stable(&unit("bot-features")), Some(last_good));
    for n in h.all_nodes() {
        assert_eq!(h.engine.desired(&n, &unit("bot-features")), Some(last_good));
    }
}

/// dec5: a killswitch flag breaks one proxy generation (about a quarter of the fleet). The
/// first stage holds nodes of every generation; the 5xx rise there fails the gate, and only
/// first-stage nodes ever saw the flag.
#[test]
fn dec5_killswitch_fails_the_first_stage_on_one_generation_only() {
    let mut h = Harness::new();
    let generation_of = |name: &str| {
        let index: usize = name.rsplit('-').next().unwrap().parse().unwrap();
        if index.is_multiple_of(4) {
            "lua"
        } else {
            "rust"
        }
    };
    for i in 0..8 {
        let name = format!("emp-{i}");
        h.register(
            &name,
            &[("cohort", "employee"), ("generation", generation_of(&name))],
        );
    }
    for i in 0..40 {
        let name = format!("free-{i}");
        h.register(
            &name,
            &[("cohort", "free"), ("generation", generation_of(&name))],
        );
    }
    let mut plan = three_stage_plan();
    for stage in &mut plan.stages {
        *stage = gated(stage.clone(), &["error_rate > 1%"]);
    }
    let flag = "waf: rule 4242 execute=skip";
    let id = h.request("waf-killswitches", flag, plan, "waf-team");
    h.run(id, "waf-killswitches", 3_600_000, &move |n, v| {
        if v == version(flag) && generation_of(n.as_str()) == "lua" {
            Reaction::Errors
        } else {
            Reaction::Healthy
        }
    });
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::RolledBack);
    assert_eq!(view.stage_index, 0);
    let given = h.nodes_ever_given("waf-killswitches", flag);
    assert!(given.iter().all(|n| n.as_str().starts_with("emp-")));
    let generations: BTreeSet<&str> = given.iter().map(|n| generation_of(n.as_str())).collect();
    assert_eq!(generations, BTreeSet::from(["lua", "rust"]));
    for n in h.all_nodes() {
        assert_eq!(h.engine.desired(&n, &unit("waf-killswitches")), None);
    }
}

#[test]
fn next_deadline_is_the_earliest_evaluation_bake_end_or_timeout() {
    let mut h = Harness::with_fleet();
    assert_eq!(h.engine.next_deadline_ms(), None);
    let mut plan = three_stage_plan();
    plan.stages[0].bake_ms = 12_000;
    plan.stages[0].min_requests = 0;
    let id = h.request("u", "v1", plan, "alice");
    // Never evaluated: due now.
    assert_eq!(h.engine.next_deadline_ms(), Some(h.now_ms));
    h.step(Event::Tick);
    let entered = h.now_ms;
    assert_eq!(
        h.engine.next_deadline_ms(),
        Some(entered + 10_000),
        "next evaluation"
    );
    for n in h.engine.exposed_nodes(id) {
        h.step(Event::Applied {
            node: n,
            unit: unit("u"),
            version: version("v1"),
        });
    }
    let StagePhase::Baking { bake_ends_ms } = h.engine.rollout(id).unwrap().phase else {
        panic!("baking expected");
    };
    assert_eq!(bake_ends_ms, entered + 12_000);
    // A tick at the next deadline evaluates; one at the bake end passes the stage.
    h.now_ms = entered + 10_000;
    h.step(Event::Tick);
    assert_eq!(h.engine.next_deadline_ms(), Some(bake_ends_ms));
    h.now_ms = bake_ends_ms - 1;
    h.step(Event::Tick);
    assert_eq!(h.engine.rollout(id).unwrap().stage_index, 0);
    h.now_ms = bake_ends_ms;
    h.step(Event::Tick);
    assert_eq!(h.engine.rollout(id).unwrap().stage_index, 1);
}

// ----- the baseline a stage is judged against -----------------------------------------------

/// Completes `v0` everywhere, then requests `v1` through `stages` and runs it with every node's
/// reaction given by `react`; returns the harness and the rollout of `v1`.
fn baseline_rollout(
    stages: Vec<Stage>,
    react: &dyn Fn(&NodeId, VersionHash) -> Reaction,
) -> (Harness, RolloutId) {
    let mut h = Harness::with_fleet();
    let v0 = h.request("u", "v0", plan(vec![stage("all", &[], 100, 0)]), "alice");
    h.run(v0, "u", 600_000, &healthy);
    assert_eq!(h.status(v0), RolloutStatus::Completed);
    let id = h.request("u", "v1", plan(stages), "alice");
    h.run(id, "u", 3_600_000, react);
    (h, id)
}

/// A gate that fails when the baseline errs: it shows which nodes the baseline is made of.
const BASELINE_ERRS: &str = "baseline.error_rate > 5%";

#[test]
fn the_baseline_is_the_stage_selectors_unexposed_nodes_when_there_are_some() {
    // Half of the free nodes get v1; the other half is the baseline. Employees and pro nodes
    // err on v0, but they are not in the stage's selection, so the baseline stays healthy.
    let stages = vec![
        gated(
            stage("free-half", &[("cohort", "free")], 50, 60_000),
            &[BASELINE_ERRS],
        ),
        stage("all", &[], 100, 0),
    ];
    let mut h = Harness::with_fleet();
    let v0 = h.request("u", "v0", plan(vec![stage("all", &[], 100, 0)]), "alice");
    h.run(v0, "u", 600_000, &healthy);
    let id = h.request("u", "v1", plan(stages.clone()), "alice");
    let exposed: BTreeSet<NodeId> = h.engine.exposed_nodes(id).into_iter().collect();
    assert!(!exposed.is_empty() && exposed.len() < 20);
    // Every live node counts: the canary, the stage's baseline, or the time control.
    for n in h.all_nodes() {
        assert!(h.engine.wants_health(&n, &unit("u")), "{n}");
    }

    let react = |n: &NodeId, v: VersionHash| {
        if v == version("v0") && !n.as_str().starts_with("free-") {
            Reaction::Errors
        } else {
            Reaction::Healthy
        }
    };
    let (h, id) = baseline_rollout(stages, &react);
    assert_eq!(
        h.status(id),
        RolloutStatus::Completed,
        "{:?}",
        h.engine.rollout(id)
    );
}

#[test]
fn without_unexposed_stage_nodes_the_baseline_is_their_own_pre_period() {
    // Stage 0 takes every employee: no employee is left to compare with, so the stage first
    // observes them on v0, and their health then is the baseline.
    let employees = |gates: &[&str]| {
        vec![
            gated(
                stage("employees", &[("cohort", "employee")], 100, 30_000),
                gates,
            ),
            stage("all", &[], 100, 0),
        ]
    };
    let mut h = Harness::with_fleet();
    let v0 = h.request("u", "v0", plan(vec![stage("all", &[], 100, 0)]), "alice");
    h.run(v0, "u", 600_000, &healthy);
    let id = h.request("u", "v1", plan(employees(&[])), "alice");
    assert_eq!(h.engine.rollout(id).unwrap().stage_index, 0);
    for n in h.all_nodes() {
        assert!(h.engine.wants_health(&n, &unit("u")), "{n}");
    }

    // A healthy version passes a significance gate against it.
    let (h, id) = baseline_rollout(
        employees(&["significant(error_rate > baseline.error_rate)"]),
        &healthy,
    );
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Completed, "{view:?}");
    let observed = h.actions.iter().any(|action| {
        matches!(action, Action::Changelog(entry)
            if entry.rollout == id && entry.reason.contains("observing them on their current version"))
    });
    assert!(observed);

    // Different populations: employees err on any version, the rest of the fleet does not. A
    // version that changes nothing is not worse than the employees' own past.
    let employees_err = |n: &NodeId, _: VersionHash| {
        if n.as_str().starts_with("emp-") {
            Reaction::SomeErrors
        } else {
            Reaction::Healthy
        }
    };
    let (h, id) = baseline_rollout(
        employees(&["significant(error_rate > baseline.error_rate)"]),
        &employees_err,
    );
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Completed, "{view:?}");

    // The employees on v0 are that baseline: when they err, the gate sees it; the rest of the
    // fleet erring on v0 does not count.
    let react = |_: &NodeId, v: VersionHash| {
        if v == version("v0") {
            Reaction::Errors
        } else {
            Reaction::Healthy
        }
    };
    let (h, id) = baseline_rollout(employees(&[BASELINE_ERRS]), &react);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::RolledBack, "{view:?}");
    assert_eq!(view.stage_index, 0);
    assert!(
        view.outcome.as_deref().unwrap().contains(BASELINE_ERRS),
        "{view:?}"
    );
}

#[test]
fn once_the_whole_fleet_is_exposed_the_baseline_is_carried_forward() {
    // Stage 0 (half of the free nodes) is judged against the other free half; stage 1 reaches
    // every node, so it is judged against the baseline carried from stage 0.
    let stages = || {
        vec![
            stage("free-half", &[("cohort", "free")], 50, 60_000),
            gated(stage("everyone", &[], 100, 60_000), &[BASELINE_ERRS]),
        ]
    };
    let (h, id) = baseline_rollout(stages(), &healthy);
    assert_eq!(
        h.status(id),
        RolloutStatus::Completed,
        "{:?}",
        h.engine.rollout(id)
    );

    // The free half that made stage 0's baseline erred on v0: stage 1 fails on that.
    let react = |n: &NodeId, v: VersionHash| {
        if v == version("v0") && n.as_str().starts_with("free-") {
            Reaction::Errors
        } else {
            Reaction::Healthy
        }
    };
    let (h, id) = baseline_rollout(stages(), &react);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::RolledBack, "{view:?}");
    assert_eq!(view.stage_index, 1);
    assert!(matches!(
        view.gates.first().unwrap().verdict,
        Verdict::Fail { .. }
    ));
    // Nothing is left unexposed at stage 1: the engine wants only the canary's health.
    assert_eq!(view.nodes_exposed, 34);
}

// ----- quarantine -----------------------------------------------------------------------------

/// nov18 with queueing: the same bad bytes are pushed again and again while a good version
/// still runs, so they queue. The first bad rollout rolls back and quarantines the hash; every
/// other queued rollout of that hash ends at once, and the good versions go on.
#[test]
fn queued_rollouts_of_a_quarantined_hash_end_at_once() {
    let mut h = Harness::with_fleet();
    let mut queue_plan = three_stage_plan();
    queue_plan.queue_limit = 8;
    let bad_seed = "features: 240 entries";
    let bad = version(bad_seed);
    let first = h.request(
        "bot-features",
        "features: 60 entries, g0",
        queue_plan.clone(),
        "gen",
    );
    let mut bad_ids = Vec::new();
    for generation in 1..=6 {
        let seed = if generation % 2 == 1 {
            bad_seed.to_owned()
        } else {
            format!("features: 60 entries, g{generation}")
        };
        let id = h.request("bot-features", &seed, queue_plan.clone(), "gen");
        assert_eq!(h.status(id), RolloutStatus::Queued);
        if generation % 2 == 1 {
            bad_ids.push(id);
        }
    }
    let react = |_: &NodeId, v: VersionHash| {
        if v == bad {
            Reaction::Nack
        } else {
            Reaction::Healthy
        }
    };
    for _ in 0..2_000 {
        h.round("bot-features", &react);
        if h.engine.rollouts().all(|view| view.status.is_terminal()) {
            break;
        }
    }
    assert_eq!(h.status(first), RolloutStatus::Completed);
    let [rolled_back, rest @ ..] = bad_ids.as_slice() else {
        panic!("three bad rollouts expected");
    };
    assert_eq!(h.status(*rolled_back), RolloutStatus::RolledBack);
    for id in rest {
        let view = h.engine.rollout(*id).unwrap();
        assert_eq!(view.status, RolloutStatus::Aborted);
        assert_eq!(view.stage_index, 0);
        assert_eq!(view.nodes_exposed, 0);
        let ended = h
            .actions
            .iter()
            .find_map(|action| match action {
                Action::Changelog(entry)
                    if entry.rollout == *id && entry.kind == ChangeKind::Superseded =>
                {
                    Some(entry.reason.clone())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            ended,
            format!("version quarantined after rollback {rolled_back}")
        );
    }
    // The bad hash reached stage 0 once: one flip to it, employees only.
    let flips_to_bad = h
        .actions
        .iter()
        .filter(|a| matches!(a, Action::SetDesired { version: Some(v), .. } if *v == bad))
        .count();
    assert_eq!(flips_to_bad, 1);
    assert!(
        h.nodes_ever_given("bot-features", bad_seed)
            .iter()
            .all(|n| n.as_str().starts_with("emp-"))
    );
    let last_good = version("features: 60 entries, g6");
    assert_eq!(h.engine.stable(&unit("bot-features")), Some(last_good));
    for n in h.all_nodes() {
        assert_eq!(h.engine.desired(&n, &unit("bot-features")), Some(last_good));
    }
}

#[test]
fn status_names_are_their_json_names() {
    for status in RolloutStatus::ALL {
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            serde_json::Value::String(status.as_str().to_owned())
        );
    }
}

// ----- soak, trial, and the stable version ------------------------------------------------

const SOAK_MS: u64 = 600_000;

/// The three-stage plan with a 10-minute soak.
fn soaking_plan() -> Plan {
    Plan {
        soak_ms: SOAK_MS,
        ..three_stage_plan()
    }
}

/// v0 completed everywhere (no soak), then v1 requested with `plan` and run healthy until its
/// soak starts. Returns the harness, v1's rollout and the soak's end.
fn soaking(plan: Plan) -> (Harness, RolloutId, u64) {
    let mut h = Harness::with_fleet();
    let v0 = h.request("u", "v0", three_stage_plan(), "alice");
    h.run(v0, "u", 3_600_000, &healthy);
    assert_eq!(h.status(v0), RolloutStatus::Completed);
    let id = h.request("u", "v1", plan, "alice");
    for _ in 0..1_000 {
        if let StagePhase::Soaking { soak_ends_ms } = h.engine.rollout(id).unwrap().phase {
            return (h, id, soak_ends_ms);
        }
        assert!(!h.status(id).is_terminal(), "{:?}", h.engine.rollout(id));
        h.round("u", &healthy);
    }
    panic!("the soak never started: {:?}", h.engine.rollout(id));
}

fn changelog_reasons(h: &Harness, id: RolloutId, kind: ChangeKind) -> Vec<String> {
    h.actions
        .iter()
        .filter_map(|action| match action {
            Action::Changelog(entry) if entry.rollout == id && entry.kind == kind => {
                Some(entry.reason.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn after_the_last_stage_the_rollout_soaks_then_completes_and_becomes_stable() {
    let (mut h, id, soak_ends_ms) = soaking(soaking_plan());
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Running);
    assert_eq!(view.stage_index, 2, "the soak keeps the last stage");
    assert_eq!(h.engine.stable(&unit("u")), Some(version("v0")));
    let started = changelog_reasons(&h, id, ChangeKind::SoakStarted);
    assert_eq!(started.len(), 1);
    assert!(
        started[0].contains(&format!("until t={soak_ends_ms} ms")),
        "{started:?}"
    );
    assert!(h.engine.next_deadline_ms().unwrap() <= soak_ends_ms);
    // Healthy rounds up to just before the end: still soaking.
    while h.now_ms + TICK_MS < soak_ends_ms {
        h.round("u", &healthy);
        assert_eq!(h.status(id), RolloutStatus::Running);
    }
    h.run(id, "u", 60_000, &healthy);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Completed, "{view:?}");
    assert!(view.ended_ms.unwrap() >= soak_ends_ms);
    assert_eq!(h.engine.stable(&unit("u")), Some(version("v1")));
    let kinds = h.kinds(id);
    let n = kinds.len();
    assert_eq!(
        &kinds[n - 2..],
        &[ChangeKind::SoakPassed, ChangeKind::Completed]
    );
}

#[test]
fn a_hard_signal_during_the_soak_rolls_every_exposed_node_back_and_quarantines() {
    let (mut h, id, _) = soaking(soaking_plan());
    h.now_ms += 60_000;
    h.step(Event::Crashed {
        node: node("pro-3"),
        unit: unit("u"),
        version: version("v1"),
        reason: "panic after 15 minutes".into(),
    });
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::RolledBack);
    let outcome = view.outcome.unwrap();
    assert!(
        outcome.starts_with("rolled back during soak: hard signal"),
        "{outcome}"
    );
    assert!(h.engine.is_quarantined(&unit("u"), &version("v1")));
    for n in h.all_nodes() {
        assert_eq!(h.engine.desired(&n, &unit("u")), Some(version("v0")), "{n}");
    }
    assert_eq!(h.engine.stable(&unit("u")), Some(version("v0")));
}

#[test]
fn every_node_failing_at_once_during_the_soak_holds_it_as_fleet_unhealthy() {
    let mut plan = soaking_plan();
    for stage in &mut plan.stages {
        *stage = gated(stage.clone(), &["error_rate > 5%"]);
    }
    let (mut h, id, soak_ends_ms) = soaking(plan);
    // Every node has the version and every node errs from the same moment: nothing tells an
    // incident from the version, so the soak holds (never completes into it), alerting once.
    h.run(id, "u", SOAK_MS * 2, &|_, _| Reaction::Errors);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Running, "{view:?}");
    assert!(h.now_ms > soak_ends_ms);
    assert!(!h.engine.is_quarantined(&unit("u"), &version("v1")));
    assert_eq!(
        changelog_reasons(&h, id, ChangeKind::FleetUnhealthy).len(),
        1,
        "{view:?}"
    );
}

#[test]
fn a_failing_gate_during_the_soak_rolls_back() {
    let mut plan = soaking_plan();
    for stage in &mut plan.stages {
        *stage = gated(stage.clone(), &["error_rate > 5%"]);
    }
    // v1 through its stages, noting the nodes it reached before its last stage.
    let mut h = Harness::with_fleet();
    let v0 = h.request("u", "v0", three_stage_plan(), "alice");
    h.run(v0, "u", 3_600_000, &healthy);
    let id = h.request("u", "v1", plan, "alice");
    let mut earlier: BTreeSet<NodeId> = BTreeSet::new();
    let soak_ends_ms = loop {
        let view = h.engine.rollout(id).unwrap();
        if let StagePhase::Soaking { soak_ends_ms } = view.phase {
            break soak_ends_ms;
        }
        if view.stage_index < 2 {
            earlier = h.engine.exposed_nodes(id).into_iter().collect();
        }
        assert!(!view.status.is_terminal(), "{view:?}");
        h.round("u", &healthy);
    };
    // Errors start late, on the nodes that have had the version longest (not on the last
    // stage's): a late failure, told from an incident by the nodes it spares.
    h.run(id, "u", SOAK_MS, &|n, _| {
        if earlier.contains(n) {
            Reaction::Errors
        } else {
            Reaction::Healthy
        }
    });
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::RolledBack, "{view:?}");
    assert!(view.ended_ms.unwrap() < soak_ends_ms);
    let outcome = view.outcome.unwrap();
    assert!(
        outcome.starts_with("rolled back during soak: gate \"error_rate > 5%\" failed"),
        "{outcome}"
    );
    assert!(h.engine.is_quarantined(&unit("u"), &version("v1")));
    for n in h.all_nodes() {
        assert_eq!(h.engine.desired(&n, &unit("u")), Some(version("v0")), "{n}");
    }
}

#[test]
fn promote_ends_the_soak_at_once_and_says_who_and_why() {
    let (mut h, id, _) = soaking(soaking_plan());
    h.try_step(Event::Command {
        rollout: id,
        command: Command::Promote,
        actor: "bob".into(),
        reason: "hotfix must go out".into(),
    })
    .unwrap();
    assert_eq!(h.status(id), RolloutStatus::Completed);
    assert_eq!(h.engine.stable(&unit("u")), Some(version("v1")));
    let promoted = changelog_reasons(&h, id, ChangeKind::Promoted);
    assert_eq!(
        promoted,
        vec!["soak ended early by bob: hotfix must go out".to_owned()]
    );
    assert!(changelog_reasons(&h, id, ChangeKind::SoakPassed).is_empty());
}

#[test]
fn pause_during_the_soak_moves_its_end() {
    let (mut h, id, soak_ends_ms) = soaking(soaking_plan());
    h.command(id, Command::Pause, "bob").unwrap();
    h.tick(100_000);
    h.command(id, Command::Resume, "bob").unwrap();
    let StagePhase::Soaking {
        soak_ends_ms: later,
    } = h.engine.rollout(id).unwrap().phase
    else {
        panic!("not soaking");
    };
    assert_eq!(later, soak_ends_ms + 100_000);
}

#[test]
fn a_queued_rollout_waits_behind_a_soaking_one() {
    let (mut h, id, soak_ends_ms) = soaking(soaking_plan());
    let next = h.request("u", "v2", three_stage_plan(), "alice");
    assert_eq!(h.status(next), RolloutStatus::Queued);
    while h.now_ms + TICK_MS < soak_ends_ms {
        h.round("u", &healthy);
        assert_eq!(h.status(next), RolloutStatus::Queued);
    }
    h.run(id, "u", 60_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
    assert_eq!(h.status(next), RolloutStatus::Running);
}

#[test]
fn trial_names_the_rollout_judging_what_the_node_runs() {
    let mut h = Harness::with_fleet();
    let (emp, pro) = (node("emp-0"), node("pro-0"));
    let u = unit("u");
    assert_eq!(h.engine.trial(&emp, &u), None);
    let v0 = h.request("u", "v0", three_stage_plan(), "alice");
    assert_eq!(h.engine.trial(&emp, &u), Some(v0));
    assert_eq!(h.engine.trial(&pro, &u), None, "not reached yet");
    h.run(v0, "u", 3_600_000, &healthy);
    assert_eq!(h.engine.trial(&emp, &u), None, "completed: settled");

    let id = h.request("u", "v1", soaking_plan(), "alice");
    h.step(Event::Command {
        rollout: id,
        command: Command::Pause,
        actor: "bob".into(),
        reason: "look".into(),
    });
    assert_eq!(h.engine.trial(&emp, &u), Some(id), "paused still judges");
    h.command(id, Command::Resume, "bob").unwrap();
    let mut soak_end = None;
    for _ in 0..1_000 {
        if let StagePhase::Soaking { soak_ends_ms } = h.engine.rollout(id).unwrap().phase {
            soak_end = Some(soak_ends_ms);
            break;
        }
        h.round("u", &healthy);
    }
    let soak_end = soak_end.unwrap();
    assert_eq!(h.engine.trial(&emp, &u), Some(id), "soaking still judges");
    assert_eq!(h.engine.trial(&pro, &u), Some(id));
    while h.now_ms <= soak_end {
        h.round("u", &healthy);
    }
    assert_eq!(h.status(id), RolloutStatus::Completed);
    assert_eq!(h.engine.trial(&emp, &u), None);

    // Going back to the older version: the rollout asking for it is the one judging it.
    let back = h.request(
        "u",
        "v0",
        Plan {
            soak_ms: 0,
            ..three_stage_plan()
        },
        "alice",
    );
    assert_eq!(h.engine.desired(&emp, &u), Some(version("v0")));
    assert_eq!(h.engine.trial(&emp, &u), Some(back));
    assert_eq!(h.engine.trial(&pro, &u), None, "still on v1, not on trial");

    // A rollback settles it: nothing judges the restored version.
    h.command(back, Command::Rollback, "bob").unwrap();
    assert_eq!(h.engine.desired(&emp, &u), Some(version("v1")));
    assert_eq!(h.engine.trial(&emp, &u), None);
}

fn ungated(mut stage: Stage) -> Stage {
    stage.gates = vec![];
    stage.hard_signals = HardSignals {
        rejections_max: 0,
        crashes_max: 0,
        health_check_failures_max: 0,
        silent_nodes_max: 0,
    };
    stage
}

#[test]
fn a_version_no_gated_stage_ran_completes_without_becoming_stable() {
    let mut h = Harness::with_fleet();
    let v0 = h.request("u", "v0", three_stage_plan(), "alice");
    h.run(v0, "u", 3_600_000, &healthy);
    assert_eq!(h.engine.stable(&unit("u")), Some(version("v0")));

    // Every stage ungated: it reaches every node, but proves nothing.
    let mut unproven = three_stage_plan();
    for stage in &mut unproven.stages {
        *stage = ungated(stage.clone());
    }
    let v1 = h.request("u", "v1", unproven, "alice");
    h.run(v1, "u", 3_600_000, &healthy);
    let view = h.engine.rollout(v1).unwrap();
    assert_eq!(view.status, RolloutStatus::Completed);
    assert!(
        view.outcome
            .unwrap()
            .contains("completed without a stable version: no gated stage ran it on any node")
    );
    let completed = changelog_reasons(&h, v1, ChangeKind::Completed);
    assert!(
        completed[0]
            .contains("completed without a stable version: no gated stage ran it on any node"),
        "{completed:?}"
    );
    assert_eq!(h.engine.stable(&unit("u")), Some(version("v0")));
    assert_eq!(
        h.engine.desired(&node("emp-0"), &unit("u")),
        Some(version("v1")),
        "the nodes keep what they run"
    );
    // A node registered later gets the stable version, not the unproven one.
    h.register("late-1", &[("cohort", "free")]);
    assert_eq!(
        h.engine.desired(&node("late-1"), &unit("u")),
        Some(version("v0"))
    );

    // Gated stages that select no node prove nothing either: no stable at all on a new unit.
    let nobody = plan(vec![stage("nobody", &[("cohort", "none-such")], 100, 0)]);
    let w1 = h.request("w", "w1", nobody, "alice");
    assert_eq!(h.status(w1), RolloutStatus::Completed);
    assert_eq!(h.engine.stable(&unit("w")), None);
    h.register("late-2", &[("cohort", "free")]);
    assert_eq!(h.engine.desired(&node("late-2"), &unit("w")), None);

    // One gated stage with nodes is enough, even after ungated ones.
    let mut mixed = three_stage_plan();
    mixed.stages[0] = ungated(mixed.stages[0].clone());
    mixed.stages[2] = ungated(mixed.stages[2].clone());
    let v2 = h.request("u", "v2", mixed, "alice");
    h.run(v2, "u", 3_600_000, &healthy);
    assert_eq!(h.status(v2), RolloutStatus::Completed);
    assert_eq!(h.engine.stable(&unit("u")), Some(version("v2")));
}

#[test]
fn engine_state_stored_before_soak_and_evidence_still_loads() {
    let (h, _, _) = soaking(soaking_plan());
    let mut value = serde_json::to_value(&h.engine).unwrap();
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("soak_ms");
                map.remove("gated_evidence");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    let restored: Engine = serde_json::from_value(value).unwrap();
    assert!(restored.rollouts().count() >= 2);
}

#[test]
fn a_later_stage_with_approval_waits_before_it_exposes_its_nodes() {
    let mut h = Harness::with_fleet();
    let mut plan = three_stage_plan();
    plan.stages[1].approval = true;
    let id = h.request("u", "v1", plan, "alice");
    h.run(id, "u", 300_000, &healthy);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.phase, StagePhase::AwaitingApproval, "{view:?}");
    // Still on the first stage: the second's nodes do not run the version yet.
    assert_eq!(view.stage_index, 0, "{view:?}");
    let exposed = view.nodes_exposed;
    h.command(id, Command::Approve, "bob").unwrap();
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.stage_index, 1, "{view:?}");
    assert!(view.nodes_exposed > exposed, "{view:?}");
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
}

#[test]
fn a_stage_asking_for_two_approvers_needs_two_distinct_people_other_than_the_pusher() {
    let mut h = Harness::with_fleet();
    let mut plan = three_stage_plan();
    plan.stages[1].approval = true;
    plan.stages[1].approvers = 2;
    let id = h.request("u", "v1", plan, "alice");
    h.run(id, "u", 300_000, &healthy);
    assert_eq!(
        h.engine.rollout(id).unwrap().phase,
        StagePhase::AwaitingApproval
    );
    assert!(matches!(
        h.command(id, Command::Approve, "alice"),
        Err(EngineError::SelfApproval { .. })
    ));
    h.command(id, Command::Approve, "bob").unwrap();
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.phase, StagePhase::AwaitingApproval, "one of two");
    assert_eq!(view.stage_index, 0);
    let before = h.engine.clone();
    assert!(matches!(
        h.command(id, Command::Approve, "bob"),
        Err(EngineError::AlreadyApproved { .. })
    ));
    assert_eq!(h.engine, before, "a refused step changes nothing");
    h.command(id, Command::Approve, "carol").unwrap();
    assert_eq!(h.engine.rollout(id).unwrap().stage_index, 1);
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
}

/// A plan whose `health_source` is a monitoring system is judged on what that system says of
/// each node ([`Event::MonitoredHealth`]), never on the agents' own reports, and the other
/// way round for a plan without one.
#[test]
fn a_plan_with_a_health_source_is_judged_on_it_and_not_on_the_agents_reports() {
    let source = failsmall_core::plan::PrometheusSource {
        url: "http://127.0.0.1:9090".into(),
        node_label: "node".into(),
        requests: "sum by (node) (http_requests_total)".into(),
        errors: "sum by (node) (http_errors_total)".into(),
        latency: None,
        latency_in_ms: false,
        interval_ms: 1_000,
        metrics: Default::default(),
    };
    let sample = |errors: u64| {
        let mut sample = HealthSample {
            requests: 50,
            errors,
            ..Default::default()
        };
        sample.latency.record(25.0, 50);
        sample
    };
    for (monitored, agents_say, monitoring_errors, expected) in [
        (true, Reaction::Errors, 0, RolloutStatus::Completed),
        (true, Reaction::Healthy, 10, RolloutStatus::RolledBack),
        (false, Reaction::Healthy, 10, RolloutStatus::Completed),
    ] {
        let mut plan = absolute_gate_plan();
        if monitored {
            plan.health_source = Some(Box::new(source.clone()));
        }
        let mut h = Harness::with_fleet();
        let id = h.request("u", "v1", plan, "alice");
        let end = h.now_ms + 3_600_000;
        while h.now_ms < end && !h.status(id).is_terminal() {
            h.round("u", &|_, _| agents_say);
            for node in h.all_nodes() {
                if let Some(version) = h.engine.running_version(&node, &unit("u")) {
                    h.step(Event::MonitoredHealth {
                        node,
                        unit: unit("u"),
                        version,
                        sample: sample(monitoring_errors),
                        custom: Default::default(),
                    });
                }
            }
        }
        assert_eq!(
            h.status(id),
            expected,
            "monitored {monitored}, agents {agents_say:?}, monitoring errors {monitoring_errors}"
        );
    }
}

/// The three-stage plan with the SRE workbook's fast-burn page on every stage.
fn burn_gate_plan() -> Plan {
    let mut plan = three_stage_plan();
    for stage in &mut plan.stages {
        *stage = gated(
            stage.clone(),
            &["burn_rate_1h > 14.4 AND burn_rate_5m > 14.4"],
        );
    }
    plan
}

fn burning(h: &mut Harness, rate: f64) {
    let burn_rates = [(BurnWindow::H1, rate), (BurnWindow::M5, rate)]
        .into_iter()
        .collect();
    h.step(Event::BurnRates {
        unit: unit("u"),
        burn_rates,
    });
}

#[test]
fn a_burning_error_budget_holds_a_version_no_worse_than_its_baseline_and_blames_nothing() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v0", three_stage_plan(), "alice");
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
    let id = h.request("u", "v1", burn_gate_plan(), "alice");
    // The service burns its budget 20 times too fast, canary and baseline alike.
    burning(&mut h, 20.0);
    for _ in 0..40 {
        h.round("u", &|_, _| Reaction::SomeErrors);
    }
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Running, "{view:?}");
    assert_eq!(view.stage_index, 0);
    assert!(h.kinds(id).contains(&ChangeKind::FleetUnhealthy));
    assert!(matches!(
        &view.gates[0].verdict,
        Verdict::Inconclusive { detail } if detail.contains("fleet unhealthy")
            && detail.contains("burn_rate_1h 20")
    ));
    assert!(!h.engine.is_quarantined(&unit("u"), &version("v1")));
    // The budget stops burning: the rollout goes on and completes.
    burning(&mut h, 0.5);
    h.run(id, "u", 3_600_000, &healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
}

#[test]
fn a_burning_error_budget_blames_a_version_whose_nodes_fail_more_than_the_others() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v0", three_stage_plan(), "alice");
    h.run(id, "u", 3_600_000, &healthy);
    let v0 = version("v0");
    let id = h.request("u", "v1", burn_gate_plan(), "alice");
    burning(&mut h, 20.0);
    h.run(id, "u", 3_600_000, &|_, running| {
        if running == v0 {
            Reaction::Healthy
        } else {
            Reaction::Errors
        }
    });
    assert_eq!(h.status(id), RolloutStatus::RolledBack);
    assert!(h.engine.is_quarantined(&unit("u"), &version("v1")));
}

#[test]
fn burn_rates_that_are_not_numbers_are_refused_and_change_nothing() {
    let mut h = Harness::with_fleet();
    let before = h.engine.clone();
    let burn_rates = [(BurnWindow::H1, f64::NAN)].into_iter().collect();
    let refused = h.try_step(Event::BurnRates {
        unit: unit("u"),
        burn_rates,
    });
    assert!(matches!(refused, Err(EngineError::InvalidBurnRate { .. })));
    assert_eq!(h.engine, before);
}

#[test]
fn a_burn_rate_gate_without_burn_rates_holds_the_stage() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v0", three_stage_plan(), "alice");
    h.run(id, "u", 3_600_000, &healthy);
    let id = h.request("u", "v1", burn_gate_plan(), "alice");
    for _ in 0..20 {
        h.round("u", &healthy);
    }
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.stage_index, 0, "{view:?}");
    assert!(matches!(
        &view.gates[0].verdict,
        Verdict::Inconclusive { detail } if detail.contains("no SLO of this unit has events")
    ));
}

#[test]
fn a_control_plane_that_hears_nobody_learns_nothing_about_the_version() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    for _ in 0..3 {
        h.round("u", &|_, _| Reaction::Healthy);
    }
    assert_eq!(h.engine.rollout(id).unwrap().nodes_applied, 4);
    // The control plane hears no node for a minute (down, restarting, cut off from the
    // fleet), twice the stage's silence, and its clock moves on.
    h.tick(60_000);
    let view = h.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Running, "{:?}", view.outcome);
    assert_eq!(view.canary.silent_nodes, 0);
    // Hearing resumes: said once, and the rollout goes on to complete.
    let before = h.actions.len();
    h.round("u", &|_, _| Reaction::Healthy);
    let notices: Vec<&String> = h.actions[before..]
        .iter()
        .filter_map(|action| match action {
            Action::Notify { message, .. } if message.contains("was heard for") => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].contains("no node of unit u was heard for 1m"),
        "{}",
        notices[0]
    );
    h.run(id, "u", 3_600_000, &|_, _| Reaction::Healthy);
    assert_eq!(h.status(id), RolloutStatus::Completed);
}

#[test]
fn a_node_that_stays_silent_once_the_others_are_heard_again_rolls_back() {
    let mut h = Harness::with_fleet();
    let id = h.request("u", "v1", three_stage_plan(), "alice");
    for _ in 0..3 {
        h.round("u", &|_, _| Reaction::Healthy);
    }
    h.tick(60_000);
    let resumed_ms = h.now_ms;
    h.run(id, "u", 600_000, &|n, _| {
        if n.as_str() == "emp-0" {
            Reaction::Silent
        } else {
            Reaction::Healthy
        }
    });
    assert_eq!(h.status(id), RolloutStatus::RolledBack);
    let view = h.engine.rollout(id).unwrap();
    assert!(
        view.outcome
            .as_deref()
            .unwrap_or("")
            .contains("1 silent nodes"),
        "{:?}",
        view.outcome
    );
    // Judged on the time the others were heard, not on the deaf minute.
    let ended_ms = view.ended_ms.unwrap();
    assert!(
        ended_ms > resumed_ms + 30_000,
        "rolled back {} ms after hearing resumed",
        ended_ms - resumed_ms
    );
}
