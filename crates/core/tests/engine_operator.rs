//! The operator's everyday steps on the engine: lifting a quarantine, reverting an aborted
//! rollout, removing a deleted unit from every node.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use failsmall_core::domain::{Labels, NodeId, RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{
    Action, ChangeKind, Command, Engine, EngineError, Event, RolloutStatus,
};
use failsmall_core::plan::Plan;

const PLAN: &str = "name: two\nsoak: 0s\nstages:\n  - name: employees\n    select: { cohort: employee }\n    bake: 0s\n    min_requests: 1\n    gates: []\n  - name: free\n    select: { cohort: free }\n    bake: 0s\n    min_requests: 1\n    gates: []\n";

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn unit() -> UnitName {
    UnitName::new("flags").unwrap()
}

fn version(seed: &str) -> VersionHash {
    VersionHash::of(seed.as_bytes())
}

struct Fleet {
    engine: Engine,
    now_ms: u64,
}

impl Fleet {
    fn new() -> Self {
        let mut fleet = Self {
            engine: Engine::new(),
            now_ms: 1_000,
        };
        for (name, cohort) in [("e1", "employee"), ("f1", "free")] {
            let labels: Labels = [("cohort".to_owned(), cohort.to_owned())]
                .into_iter()
                .collect();
            fleet.step(Event::NodeRegistered {
                node: node(name),
                labels,
            });
        }
        fleet
    }

    fn try_step(&mut self, event: Event) -> Result<Vec<Action>, EngineError> {
        self.now_ms += 1_000;
        let before = self.engine.clone();
        let result = self.engine.step(self.now_ms, &event);
        // A refused step leaves the state untouched; derived indexes always match a rebuild.
        if result.is_err() {
            assert_eq!(self.engine, before);
        }
        self.engine.check_derived_indexes().unwrap();
        result
    }

    fn step(&mut self, event: Event) -> Vec<Action> {
        self.try_step(event).unwrap()
    }

    fn roll_out(&mut self, seed: &str) -> RolloutId {
        let actions = self.step(Event::RolloutRequested {
            unit: unit(),
            version: version(seed),
            plan: Plan::parse("two.yaml", PLAN).unwrap(),
            actor: "dev".into(),
            reason: seed.into(),
            override_quarantine: false,
            override_freeze: false,
        });
        actions
            .iter()
            .find_map(|a| match a {
                Action::Changelog(entry) => Some(entry.rollout),
                _ => None,
            })
            .unwrap()
    }

    fn apply(&mut self, name: &str, seed: &str) {
        self.step(Event::Applied {
            node: node(name),
            unit: unit(),
            version: version(seed),
        });
    }

    fn command(&mut self, id: RolloutId, command: Command) -> Result<Vec<Action>, EngineError> {
        self.try_step(Event::Command {
            rollout: id,
            command,
            actor: "ops".into(),
            reason: "test".into(),
        })
    }
}

#[test]
fn an_aborted_rollout_is_reverted_and_quarantined_and_the_quarantine_can_be_lifted() {
    let mut fleet = Fleet::new();
    let first = fleet.roll_out("v1");
    fleet.apply("e1", "v1");
    assert_eq!(
        fleet.engine.desired(&node("e1"), &unit()),
        Some(version("v1"))
    );
    fleet.command(first, Command::Abort).unwrap();
    assert_eq!(
        fleet.engine.rollout(first).unwrap().status,
        RolloutStatus::Aborted
    );
    // A running rollout is not reverted this way; an unknown one is unknown.
    assert!(matches!(
        fleet.try_step(Event::RevertAborted {
            rollout: RolloutId(99),
            actor: "ops".into(),
            reason: String::new(),
        }),
        Err(EngineError::UnknownRollout(_))
    ));

    let actions = fleet.step(Event::RevertAborted {
        rollout: first,
        actor: "ops".into(),
        reason: "bad flag".into(),
    });
    // Every node the rollout reached goes back to what it had: here, nothing at all.
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::SetDesired { version: None, nodes, .. } if !nodes.is_empty()
    )));
    assert_eq!(fleet.engine.desired(&node("e1"), &unit()), None);
    let view = fleet.engine.rollout(first).unwrap();
    assert_eq!(view.status, RolloutStatus::RolledBack);
    assert!(view.outcome.unwrap().contains("reverted by ops"));
    assert!(fleet.engine.is_quarantined(&unit(), &version("v1")));
    let listed = fleet.engine.quarantined();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].rollout, first);
    // Reverting again is refused, naming what it is now.
    let again = fleet
        .try_step(Event::RevertAborted {
            rollout: first,
            actor: "ops".into(),
            reason: String::new(),
        })
        .unwrap_err()
        .to_string();
    assert!(again.contains("it is rolled_back"), "{again}");

    // Lifting: a changelog entry with the reason; then it rolls out without an override.
    let actions = fleet.step(Event::QuarantineLifted {
        unit: unit(),
        version: version("v1"),
        actor: "admin".into(),
        reason: "consumer fixed".into(),
    });
    let entry = actions
        .iter()
        .find_map(|a| match a {
            Action::Changelog(entry) => Some(entry.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(entry.kind, ChangeKind::QuarantineLifted);
    assert!(entry.reason.contains("consumer fixed"), "{}", entry.reason);
    assert!(!fleet.engine.is_quarantined(&unit(), &version("v1")));
    assert!(matches!(
        fleet.try_step(Event::QuarantineLifted {
            unit: unit(),
            version: version("v1"),
            actor: "admin".into(),
            reason: String::new(),
        }),
        Err(EngineError::NotQuarantined { .. })
    ));
    let second = fleet.roll_out("v1");
    assert_eq!(
        fleet.engine.rollout(second).unwrap().status,
        RolloutStatus::Running
    );
    assert_eq!(fleet.engine.rollout_plan(second).unwrap().name, "two");
}

#[test]
fn an_aborted_rollout_that_reached_no_node_has_nothing_to_revert() {
    let mut fleet = Fleet::new();
    let first = fleet.roll_out("v1");
    // Queued behind the first, then aborted: it never reached a node.
    let queued = fleet.roll_out("v2");
    assert_eq!(
        fleet.engine.rollout(queued).unwrap().status,
        RolloutStatus::Queued
    );
    fleet.command(queued, Command::Abort).unwrap();
    let refused = fleet
        .try_step(Event::RevertAborted {
            rollout: queued,
            actor: "ops".into(),
            reason: String::new(),
        })
        .unwrap_err()
        .to_string();
    assert!(refused.contains("it reached no node"), "{refused}");
    assert!(!fleet.engine.is_quarantined(&unit(), &version("v2")));
    // While another rollout of the unit runs, an aborted one is not reverted.
    fleet.command(first, Command::Abort).unwrap();
    let _third = fleet.roll_out("v3");
    let refused = fleet
        .try_step(Event::RevertAborted {
            rollout: first,
            actor: "ops".into(),
            reason: String::new(),
        })
        .unwrap_err()
        .to_string();
    assert!(refused.contains("is running; roll it back"), "{refused}");
}

#[test]
fn a_unit_is_removed_from_every_node_but_not_while_a_rollout_is_open() {
    let mut fleet = Fleet::new();
    let id = fleet.roll_out("v1");
    assert_eq!(fleet.engine.open_rollout(&unit()), Some(id));
    let refused = fleet
        .try_step(Event::UnitRemoved { unit: unit() })
        .unwrap_err();
    assert!(matches!(refused, EngineError::UnitBusy { .. }), "{refused}");
    assert!(refused.to_string().contains("abort it"), "{refused}");
    fleet.command(id, Command::Abort).unwrap();
    assert!(fleet.engine.desired(&node("e1"), &unit()).is_some());
    let actions = fleet.step(Event::UnitRemoved { unit: unit() });
    assert_eq!(
        actions,
        vec![Action::SetDesired {
            unit: unit(),
            version: None,
            nodes: vec![node("e1")],
        }]
    );
    assert_eq!(fleet.engine.desired(&node("e1"), &unit()), None);
    assert_eq!(fleet.engine.open_rollout(&unit()), None);
    // Its ended rollout is still listed.
    assert!(fleet.engine.rollout(id).is_some());
}
