//! Freeze and maintenance windows in the rollout engine: a freeze refuses starts and holds
//! promotions (never rollbacks), a maintenance window takes its nodes out of canaries and
//! baselines. Virtual time, a small fleet of 4 employees and 10 free nodes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use failsmall_core::domain::{Labels, NodeId, RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{
    Action, ChangeKind, Command, Engine, EngineError, Event, RolloutStatus, StagePhase,
};
use failsmall_core::freeze::{Freeze, FreezeScope, Maintenance, Window};
use failsmall_core::gate::Gate;
use failsmall_core::health::HealthSample;
use failsmall_core::plan::{
    Concurrency, HardSignals, OnInconclusive, Percent, Plan, Selector, Stage,
};

const TICK_MS: u64 = 5_000;

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn unit(name: &str) -> UnitName {
    UnitName::new(name).unwrap()
}

fn version(seed: &str) -> VersionHash {
    VersionHash::of(seed.as_bytes())
}

fn selector(key: &str, value: &str) -> Selector {
    let mut selector = Selector::default();
    selector
        .labels
        .insert(key.to_owned(), vec![value.to_owned()]);
    selector
}

fn stage(name: &str, select: Selector, gates: &[&str]) -> Stage {
    Stage {
        name: name.into(),
        selector: select,
        percent: Percent {
            basis_points: 10_000,
        },
        bake_ms: 20_000,
        timeout_ms: 0,
        gates: gates.iter().map(|g| Gate::parse(g).unwrap()).collect(),
        min_requests: 100,
        hard_signals: HardSignals::default(),
        silence_ms: 30_000,
        approval: false,
        approvers: 0,
    }
}

/// employees, then free.
fn two_stages(gates: &[&str]) -> Plan {
    Plan {
        name: "test".into(),
        concurrency: Concurrency::Queue,
        queue_limit: 4,
        supersede_queued: false,
        health_check: None,
        stages: vec![
            stage("employees", selector("cohort", "employee"), gates),
            stage("free", selector("cohort", "free"), gates),
        ],
        soak_ms: 0,
        on_inconclusive: OnInconclusive::Hold,
        exclusive_nodes: false,
        health_source: None,
    }
}

struct Fleet {
    engine: Engine,
    now_ms: u64,
    actions: Vec<Action>,
    nodes: Vec<NodeId>,
    acked: BTreeSet<(NodeId, VersionHash)>,
}

impl Fleet {
    fn new() -> Self {
        let mut fleet = Self {
            engine: Engine::new(),
            now_ms: 1_000_000,
            actions: vec![],
            nodes: vec![],
            acked: BTreeSet::new(),
        };
        for i in 0..4 {
            fleet.register(&format!("emp-{i}"), "employee");
        }
        for i in 0..10 {
            fleet.register(&format!("free-{i}"), "free");
        }
        fleet
    }

    fn register(&mut self, name: &str, cohort: &str) {
        let labels: Labels = [("cohort".to_owned(), cohort.to_owned())].into();
        self.step(Event::NodeRegistered {
            node: node(name),
            labels,
        });
        self.nodes.push(node(name));
    }

    fn try_step(&mut self, event: Event) -> Result<Vec<Action>, EngineError> {
        let actions = self.engine.step(self.now_ms, &event)?;
        self.actions.extend(actions.iter().cloned());
        Ok(actions)
    }

    fn step(&mut self, event: Event) -> Vec<Action> {
        self.try_step(event).unwrap()
    }

    fn request(
        &mut self,
        unit_name: &str,
        seed: &str,
        override_freeze: bool,
    ) -> Result<RolloutId, EngineError> {
        self.request_plan(unit_name, seed, two_stages(&[]), override_freeze)
    }

    fn request_plan(
        &mut self,
        unit_name: &str,
        seed: &str,
        plan: Plan,
        override_freeze: bool,
    ) -> Result<RolloutId, EngineError> {
        let actions = self.try_step(Event::RolloutRequested {
            unit: unit(unit_name),
            version: version(seed),
            plan,
            actor: "alice".into(),
            reason: "test".into(),
            override_quarantine: false,
            override_freeze,
        })?;
        Ok(actions
            .iter()
            .find_map(|action| match action {
                Action::Changelog(entry)
                    if matches!(
                        entry.kind,
                        ChangeKind::RolloutStarted | ChangeKind::RolloutQueued
                    ) =>
                {
                    Some(entry.rollout)
                }
                _ => None,
            })
            .unwrap())
    }

    fn freeze(&mut self, scope: FreezeScope, window: Window, reason: &str) -> u64 {
        let id = self.engine.next_window_id();
        self.step(Event::FreezeCreated {
            freeze: Freeze {
                id,
                scope,
                window,
                reason: reason.into(),
                actor: "admin".into(),
                created_ms: self.now_ms,
            },
        });
        id
    }

    fn stop_the_line(&mut self, reason: &str) -> u64 {
        let window = Window::Once {
            from_ms: self.now_ms,
            until_ms: None,
        };
        self.freeze(FreezeScope::Global, window, reason)
    }

    /// Every node ACKs what it should run and reports 200 requests (`errors(node)` of them
    /// failing); then time moves on by a tick.
    fn round(&mut self, unit_name: &str, errors: &dyn Fn(&NodeId) -> u64) {
        let unit = unit(unit_name);
        for node in self.nodes.clone() {
            let Some(desired) = self.engine.desired(&node, &unit) else {
                continue;
            };
            if self.acked.insert((node.clone(), desired)) {
                self.step(Event::Applied {
                    node: node.clone(),
                    unit: unit.clone(),
                    version: desired,
                });
            }
            let sample = HealthSample {
                requests: 200,
                errors: errors(&node),
                ..HealthSample::default()
            };
            self.step(Event::Health {
                node: node.clone(),
                unit: unit.clone(),
                version: desired,
                sample,
            });
        }
        self.now_ms += TICK_MS;
        self.step(Event::Tick);
    }

    fn rounds(&mut self, unit_name: &str, count: usize, errors: &dyn Fn(&NodeId) -> u64) {
        for _ in 0..count {
            self.round(unit_name, errors);
        }
    }

    fn held_entries(&self, id: RolloutId) -> Vec<String> {
        self.actions
            .iter()
            .filter_map(|action| match action {
                Action::Changelog(entry)
                    if entry.rollout == id && entry.kind == ChangeKind::Held =>
                {
                    Some(entry.reason.clone())
                }
                _ => None,
            })
            .collect()
    }
}

fn healthy(_: &NodeId) -> u64 {
    0
}

#[test]
fn a_freeze_holds_a_running_rollout_before_its_next_stage_and_lifting_it_lets_it_go_on() {
    let mut fleet = Fleet::new();
    let id = fleet.request("u", "v1", false).unwrap();
    let freeze = fleet.stop_the_line("incident 42: stop the line");
    fleet.rounds("u", 20, &healthy);
    let view = fleet.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Running);
    assert_eq!(
        view.stage_index, 0,
        "a freeze never lets a rollout enter a stage"
    );
    assert_eq!(
        view.phase,
        StagePhase::Passed,
        "the stage itself was judged and passed"
    );
    assert_eq!(
        view.held_by_freeze.as_deref(),
        Some(format!("freeze {freeze}: incident 42: stop the line").as_str())
    );
    assert_eq!(
        fleet.engine.exposed_nodes(id).len(),
        4,
        "only the employees"
    );
    let held = fleet.held_entries(id);
    assert_eq!(held.len(), 1, "logged once: {held:?}");
    assert!(held[0].contains("incident 42: stop the line"), "{held:?}");
    assert!(fleet.engine.next_deadline_ms().is_some());

    fleet.step(Event::FreezeLifted { id: freeze });
    assert!(fleet.engine.windows().freezes.is_empty());
    fleet.rounds("u", 20, &healthy);
    let view = fleet.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Completed);
    assert_eq!(view.held_by_freeze, None);
    assert_eq!(
        fleet.step_err(Event::FreezeLifted { id: freeze }),
        EngineError::UnknownWindow {
            what: "freeze",
            id: freeze
        }
    );
}

impl Fleet {
    fn step_err(&mut self, event: Event) -> EngineError {
        self.try_step(event).unwrap_err()
    }
}

#[test]
fn a_freeze_refuses_a_push_unless_an_admin_overrides_it_and_never_blocks_a_rollback() {
    let mut fleet = Fleet::new();
    let freeze = fleet.stop_the_line("holiday change freeze");
    let refused = fleet.request("u", "v1", false).unwrap_err();
    assert!(
        matches!(&refused, EngineError::Frozen { id, reason, .. } if *id == freeze && reason == "holiday change freeze"),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("holiday change freeze"));
    assert!(
        fleet.engine.rollouts().next().is_none(),
        "nothing half applied"
    );
    // The admin's override: the rollout is never held by the freeze.
    let id = fleet.request("u", "v1", true).unwrap();
    assert!(
        fleet
            .engine
            .rollout(id)
            .unwrap()
            .reason
            .contains("admin override of freeze")
    );
    fleet.rounds("u", 4, &healthy);
    assert!(fleet.engine.rollout(id).unwrap().stage_index >= 1);
    // A rollback is never blocked.
    fleet
        .try_step(Event::Command {
            rollout: id,
            command: Command::Rollback,
            actor: "bob".into(),
            reason: "undo".into(),
        })
        .unwrap();
    assert_eq!(
        fleet.engine.rollout(id).unwrap().status,
        RolloutStatus::RolledBack
    );
    assert_eq!(fleet.engine.desired(&node("emp-0"), &unit("u")), None);
}

#[test]
fn a_units_freeze_and_a_label_freeze_cover_only_their_scope() {
    let mut fleet = Fleet::new();
    let window = Window::Once {
        from_ms: fleet.now_ms,
        until_ms: Some(fleet.now_ms + 120_000),
    };
    fleet.freeze(
        FreezeScope::Unit { unit: unit("a") },
        window.clone(),
        "a is frozen",
    );
    assert!(matches!(
        fleet.request("a", "v1", false),
        Err(EngineError::Frozen { .. })
    ));
    // Free nodes frozen: the employees stage starts, the free stage waits.
    fleet.freeze(
        FreezeScope::Nodes {
            selector: selector("cohort", "free"),
        },
        window,
        "free cohort frozen",
    );
    let id = fleet.request("b", "v1", false).unwrap();
    fleet.rounds("b", 20, &healthy);
    let view = fleet.engine.rollout(id).unwrap();
    assert_eq!((view.stage_index, view.phase), (0, StagePhase::Passed));
    assert!(view.held_by_freeze.unwrap().contains("free cohort frozen"));
    // The window ends by itself: the rollout goes on without anyone lifting it.
    fleet.rounds("b", 5, &healthy);
    assert!(
        fleet.engine.windows().freezes.is_empty(),
        "ended windows are forgotten"
    );
    fleet.rounds("b", 20, &healthy);
    let view = fleet.engine.rollout(id).unwrap();
    assert_eq!(view.status, RolloutStatus::Completed, "{:?}", view.outcome);
}

#[test]
fn a_queued_rollout_waits_for_the_freeze_to_end_before_it_starts() {
    let mut fleet = Fleet::new();
    let first = fleet.request("u", "v1", false).unwrap();
    let second = fleet.request("u", "v2", false).unwrap();
    assert_eq!(
        fleet.engine.rollout(second).unwrap().status,
        RolloutStatus::Queued
    );
    let freeze = fleet.freeze(
        FreezeScope::Unit { unit: unit("u") },
        Window::Once {
            from_ms: fleet.now_ms + 1,
            until_ms: None,
        },
        "wait",
    );
    fleet.rounds("u", 40, &healthy);
    assert_eq!(fleet.engine.rollout(first).unwrap().stage_index, 0);
    fleet
        .try_step(Event::Command {
            rollout: first,
            command: Command::Abort,
            actor: "bob".into(),
            reason: "give way".into(),
        })
        .unwrap();
    let view = fleet.engine.rollout(second).unwrap();
    assert_eq!(
        view.status,
        RolloutStatus::Queued,
        "a freeze blocks a start"
    );
    assert_eq!(
        view.held_by_freeze.as_deref(),
        Some(format!("freeze {freeze}: wait").as_str())
    );
    fleet.step(Event::FreezeLifted { id: freeze });
    assert_eq!(
        fleet.engine.rollout(second).unwrap().status,
        RolloutStatus::Running
    );
}

#[test]
fn nodes_in_maintenance_are_in_no_canary_and_no_baseline_and_join_when_it_ends() {
    let mut fleet = Fleet::new();
    let id = fleet.engine.next_window_id();
    let until_ms = fleet.now_ms + 30_000;
    fleet.step(Event::MaintenanceCreated {
        maintenance: Maintenance {
            id,
            selector: selector("rack", "r1"),
            from_ms: fleet.now_ms,
            until_ms,
            reason: "kernel upgrade".into(),
            actor: "ops".into(),
            created_ms: fleet.now_ms,
        },
    });
    // emp-0 and free-0 get the rack label: they enter the window.
    for (name, cohort) in [("emp-0", "employee"), ("free-0", "free")] {
        fleet.step(Event::NodeRegistered {
            node: node(name),
            labels: [
                ("cohort".to_owned(), cohort.to_owned()),
                ("rack".to_owned(), "r1".to_owned()),
            ]
            .into(),
        });
    }
    assert!(fleet.engine.in_maintenance_now(&node("emp-0")));
    // A relative gate: a baseline node in maintenance failing all its requests must not
    // make the version look better, and an exposed one must not make it look worse.
    let plan = two_stages(&["error_rate > 5%"]);
    let rollout = fleet.request_plan("u", "v1", plan, false).unwrap();
    let exposed = fleet.engine.exposed_nodes(rollout);
    assert_eq!(exposed.len(), 3, "{exposed:?}");
    assert!(!exposed.contains(&node("emp-0")));
    assert!(fleet.actions.iter().any(|a| matches!(
        a,
        Action::Changelog(entry) if entry.kind == ChangeKind::StageStarted
            && entry.reason.contains("1 left out, in a maintenance window: emp-0")
    )));
    let in_rack = |n: &NodeId| if n.as_str().ends_with("-0") { 200 } else { 0 };
    fleet.rounds("u", 3, &in_rack);
    let view = fleet.engine.rollout(rollout).unwrap();
    assert_eq!(view.status, RolloutStatus::Running);
    assert!(view.canary.sample.requests > 0);
    assert_eq!(
        view.canary.sample.errors, 0,
        "maintenance health counts nowhere"
    );
    // The window ends: both nodes join the stages that select them, and count again.
    let seen = fleet.actions.len();
    while fleet.now_ms < until_ms {
        fleet.round("u", &in_rack);
    }
    let actions = fleet.actions[seen..].to_vec();
    assert!(!fleet.engine.in_maintenance_now(&node("emp-0")));
    assert!(fleet.engine.windows().maintenance.is_empty());
    let told: BTreeSet<NodeId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::SetDesired {
                version: Some(_),
                nodes,
                ..
            } => Some(nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(told.contains(&node("emp-0")), "{told:?}");
    fleet.rounds("u", 6, &in_rack);
    assert_eq!(
        fleet.engine.rollout(rollout).unwrap().status,
        RolloutStatus::RolledBack,
        "out of maintenance, a failing node counts against the version again"
    );
}

#[test]
fn an_exposed_node_put_in_maintenance_is_neither_judged_nor_silent() {
    let mut fleet = Fleet::new();
    let plan = two_stages(&["error_rate > 5%"]);
    let rollout = fleet.request_plan("u", "v1", plan, false).unwrap();
    fleet.round("u", &healthy);
    assert!(fleet.engine.exposed_nodes(rollout).contains(&node("emp-1")));
    let id = fleet.engine.next_window_id();
    fleet.step(Event::MaintenanceCreated {
        maintenance: Maintenance {
            id,
            selector: selector("cohort", "employee"),
            from_ms: fleet.now_ms,
            until_ms: fleet.now_ms + 3_600_000,
            reason: "power work".into(),
            actor: "ops".into(),
            created_ms: fleet.now_ms,
        },
    });
    // emp-1 fails everything and then goes quiet: neither blames the version.
    let failing = |n: &NodeId| if n.as_str() == "emp-1" { 200 } else { 0 };
    fleet.rounds("u", 3, &failing);
    fleet.nodes.retain(|n| n.as_str() != "emp-1");
    fleet.rounds("u", 12, &healthy);
    let view = fleet.engine.rollout(rollout).unwrap();
    assert_ne!(view.status, RolloutStatus::RolledBack, "{:?}", view.outcome);
    assert_eq!(view.canary.silent_nodes, 0);
    fleet.step(Event::MaintenanceEnded { id });
    assert!(!fleet.engine.in_maintenance_now(&node("emp-1")));
    assert!(matches!(
        fleet.try_step(Event::MaintenanceEnded { id }),
        Err(EngineError::UnknownWindow { .. })
    ));
}

#[test]
fn windows_are_validated_and_ids_are_not_reused() {
    let mut fleet = Fleet::new();
    let id = fleet.stop_the_line("first");
    let taken = fleet.try_step(Event::FreezeCreated {
        freeze: Freeze {
            id,
            scope: FreezeScope::Global,
            window: Window::Once {
                from_ms: 0,
                until_ms: None,
            },
            reason: "again".into(),
            actor: "admin".into(),
            created_ms: 0,
        },
    });
    assert_eq!(taken.unwrap_err(), EngineError::WindowIdTaken { id });
    let no_reason = fleet.try_step(Event::FreezeCreated {
        freeze: Freeze {
            id: fleet.engine.next_window_id(),
            scope: FreezeScope::Global,
            window: Window::Once {
                from_ms: 0,
                until_ms: None,
            },
            reason: " ".into(),
            actor: "admin".into(),
            created_ms: 0,
        },
    });
    assert!(no_reason.unwrap_err().to_string().contains("reason"));
    // The state round-trips through serde with its windows.
    let text = serde_json::to_string(&fleet.engine).unwrap();
    let restored: Engine = serde_json::from_str(&text).unwrap();
    assert_eq!(restored.windows(), fleet.engine.windows());
}
