//! Property tests of the rollout engine's invariants (PRODUCT.md 1, 2, 5, 6).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};

use failsmall_core::domain::{Labels, NodeId, RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{Action, ChangeKind, Command, Engine, Event, RolloutStatus};
use failsmall_core::gate::{Gate, Verdict};
use failsmall_core::health::{GroupMetrics, HealthSample};
use failsmall_core::plan::{
    Concurrency, HardSignals, OnInconclusive, Percent, Plan, Selector, Stage,
};
use failsmall_core::select;
use proptest::prelude::*;

const COHORTS: [&str; 4] = ["employee", "free", "pro", "business"];
const TICK_MS: u64 = 5_000;

fn unit(name: &str) -> UnitName {
    UnitName::new(name).unwrap()
}

fn version(seed: u8) -> VersionHash {
    VersionHash::of(&[seed])
}

fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("node-{i:03}")).unwrap()
}

fn cohort_labels(cohort: usize) -> Labels {
    let mut labels = Labels::new();
    labels.insert("cohort".into(), COHORTS[cohort % COHORTS.len()].into());
    labels
}

/// How a node behaves toward the version under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Good,
    /// Every sample has 40% errors.
    Erroring,
    Nack,
    Crash,
    /// Never ACKs.
    Stuck,
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        6 => Just(Behaviour::Good),
        2 => Just(Behaviour::Erroring),
        1 => Just(Behaviour::Nack),
        1 => Just(Behaviour::Crash),
        1 => Just(Behaviour::Stuck),
    ]
}

/// Gates whose verdict the test can recompute from the canary alone. The last one reads the
/// baseline, which never has samples in these tests (no node runs another version), so it is
/// always inconclusive: a stage that has it must never pass.
const CANARY_GATES: [&str; 5] = [
    "error_rate > 5%",
    "errors > 200",
    "p99_latency > 300ms",
    "error_rate > 1% AND requests > 500",
    "error_rate > 2 * baseline.error_rate",
];

fn stage_strategy() -> impl Strategy<Value = Stage> {
    (
        proptest::option::of(0usize..COHORTS.len()),
        0u32..=10_000,
        0u64..60_000,
        0u64..400,
        proptest::sample::subsequence(CANARY_GATES.to_vec(), 0..=2),
    )
        .prop_map(|(cohort, basis_points, bake_ms, min_requests, gates)| {
            let mut selector = Selector::default();
            if let Some(cohort) = cohort {
                selector
                    .labels
                    .insert("cohort".into(), vec![COHORTS[cohort].into()]);
            }
            Stage {
                name: "stage".into(),
                selector,
                percent: Percent { basis_points },
                bake_ms,
                timeout_ms: 300_000,
                gates: gates
                    .iter()
                    .map(|source| Gate::parse(source).unwrap())
                    .collect(),
                min_requests,
                hard_signals: HardSignals::default(),
                silence_ms: 0,
                approval: false,
                approvers: 0,
            }
        })
}

fn plan_strategy() -> impl Strategy<Value = Plan> {
    proptest::collection::vec(stage_strategy(), 1..4).prop_map(|stages| Plan {
        name: "prop".into(),
        concurrency: Concurrency::Queue,
        queue_limit: 4,
        supersede_queued: false,
        health_check: None,
        stages,
        soak_ms: 0,
        on_inconclusive: OnInconclusive::Hold,
        exclusive_nodes: false,
        health_source: None,
    })
}

/// What the test itself saw of the current stage of one rollout, independently of the engine.
#[derive(Debug, Default)]
struct StageOracle {
    /// Nodes told to run the version so far (in this rollout), and whether they ACKed.
    exposed: BTreeMap<NodeId, bool>,
    /// Canary numbers since the stage started.
    canary: GroupMetrics,
    stage: Option<usize>,
    /// The latest version each node was told to run, from the SetDesired actions alone.
    told: BTreeMap<NodeId, Option<VersionHash>>,
}

fn sample_for(behaviour: Behaviour) -> HealthSample {
    let mut sample = HealthSample {
        requests: 40,
        ..Default::default()
    };
    if behaviour == Behaviour::Erroring {
        sample.errors = 16;
        sample.latency.record(400.0, 40);
    } else {
        sample.latency.record(40.0, 40);
    }
    sample
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Invariant 1: every stage the rollout passes had every exposed node ACKed, at least
    /// `min_requests` canary requests, and every gate passing on the canary's numbers as this
    /// test counted them; a hard signal rolls back in the very step it arrives.
    #[test]
    fn never_promotes_past_a_failing_or_inconclusive_gate(
        cohorts in proptest::collection::vec(0usize..COHORTS.len(), 1..30),
        behaviours in proptest::collection::vec(behaviour(), 30),
        plan in plan_strategy(),
    ) {
        let mut engine = Engine::new();
        let mut now = 0u64;
        for (i, cohort) in cohorts.iter().enumerate() {
            engine.step(now, &Event::NodeRegistered { node: node_id(i), labels: cohort_labels(*cohort) }).unwrap();
        }
        let u = unit("u");
        let v = version(1);
        let mut oracle = StageOracle::default();
        let request = Event::RolloutRequested {
            unit: u.clone(), version: v, plan: plan.clone(), actor: "alice".into(),
            reason: "prop".into(), override_quarantine: false, override_freeze: false,
        };
        let mut actions = engine.step(now, &request).unwrap();
        let id = RolloutId(1);
        let mut answered = BTreeSet::new();
        for _round in 0..200 {
            check_actions(&actions, &plan, &mut oracle)?;
            if engine.rollout(id).unwrap().status.is_terminal() {
                break;
            }
            actions = vec![];
            for (i, node) in (0..cohorts.len()).map(|i| (i, node_id(i))) {
                if engine.desired(&node, &u) != Some(v) {
                    continue;
                }
                let behaviour = behaviours[i];
                let status_before = engine.rollout(id).unwrap().status;
                let event = if !answered.contains(&node) {
                    match behaviour {
                        Behaviour::Stuck => continue,
                        Behaviour::Nack => Event::Rejected { node: node.clone(), unit: u.clone(), version: v, reason: "bad".into() },
                        _ => {
                            oracle.exposed.insert(node.clone(), true);
                            Event::Applied { node: node.clone(), unit: u.clone(), version: v }
                        }
                    }
                } else {
                    match behaviour {
                        Behaviour::Crash => Event::Crashed { node: node.clone(), unit: u.clone(), version: v, reason: "boom".into() },
                        Behaviour::Good | Behaviour::Erroring => {
                            let sample = sample_for(behaviour);
                            oracle.canary.sample.merge(&sample);
                            Event::Health { node: node.clone(), unit: u.clone(), version: v, sample }
                        }
                        Behaviour::Nack | Behaviour::Stuck => continue,
                    }
                };
                answered.insert(node.clone());
                let hard = matches!(event, Event::Rejected { .. } | Event::Crashed { .. });
                let step_actions = engine.step(now, &event).unwrap();
                if hard && !status_before.is_terminal() {
                    prop_assert_eq!(engine.rollout(id).unwrap().status, RolloutStatus::RolledBack,
                        "a hard signal must roll back in its own step");
                }
                check_actions(&step_actions, &plan, &mut oracle)?;
                if engine.rollout(id).unwrap().status.is_terminal() {
                    break;
                }
            }
            now += TICK_MS;
            actions.extend(engine.step(now, &Event::Tick).unwrap());
        }
        for i in 0..cohorts.len() {
            let told = oracle.told.get(&node_id(i)).copied().flatten();
            prop_assert_eq!(told, engine.desired(&node_id(i), &u), "actions and state disagree on node {}", i);
        }
        if engine.rollout(id).unwrap().status == RolloutStatus::RolledBack {
            for i in 0..cohorts.len() {
                prop_assert_eq!(engine.desired(&node_id(i), &u), None, "node {} had no version before", i);
            }
        }
    }
}

/// Replays the actions of one step in order against the oracle.
fn check_actions(
    actions: &[Action],
    plan: &Plan,
    oracle: &mut StageOracle,
) -> Result<(), TestCaseError> {
    for action in actions {
        if let Action::SetDesired { version, nodes, .. } = action {
            for node in nodes {
                oracle.told.insert(node.clone(), *version);
            }
        }
        match action {
            Action::SetDesired {
                version: Some(_),
                nodes,
                ..
            } => {
                for node in nodes {
                    oracle.exposed.entry(node.clone()).or_insert(false);
                }
            }
            Action::Changelog(entry) if entry.kind == ChangeKind::StageStarted => {
                let next = oracle.stage.map_or(0, |s| s + 1);
                oracle.stage = Some(next);
                oracle.canary = GroupMetrics::default();
            }
            Action::Changelog(entry)
                if entry.kind == ChangeKind::StagePassed
                    && !entry.reason.contains("no nodes selected")
                    && !entry.reason.contains("exposed by an earlier stage") =>
            {
                let stage = &plan.stages[oracle.stage.unwrap()];
                prop_assert!(
                    oracle.exposed.values().all(|acked| *acked),
                    "passed with un-ACKed nodes"
                );
                prop_assert!(
                    oracle.canary.sample.requests >= stage.min_requests,
                    "passed with {} requests < {}",
                    oracle.canary.sample.requests,
                    stage.min_requests
                );
                let canary = GroupMetrics {
                    nodes: oracle.exposed.len() as u64,
                    ..oracle.canary
                };
                for gate in &stage.gates {
                    let verdict = gate.evaluate(&canary, None, stage.min_requests);
                    // The unit's first version: no node runs another, so a comparison with a
                    // baseline that cannot exist is no reason to hold (the engine says why).
                    let no_baseline_ever = gate.reads_baseline()
                        && matches!(verdict, Verdict::Inconclusive { .. })
                        && canary.sample.requests >= stage.min_requests;
                    prop_assert!(
                        matches!(verdict, Verdict::Pass { .. }) || no_baseline_ever,
                        "passed stage although gate {:?} is {:?}",
                        gate.source,
                        verdict
                    );
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A random fleet, a stable version, a rollout with hard signals and maybe a rollback command.
#[derive(Debug, Clone)]
struct RollbackCase {
    cohorts: Vec<usize>,
    behaviours: Vec<Behaviour>,
    plan: Plan,
    train: bool,
    rollback_at_round: Option<usize>,
    /// Nodes registered in the middle of the rollout.
    late_cohorts: Vec<usize>,
}

fn rollback_case() -> impl Strategy<Value = RollbackCase> {
    (
        proptest::collection::vec(0usize..COHORTS.len(), 1..25),
        proptest::collection::vec(behaviour(), 40),
        plan_strategy(),
        any::<bool>(),
        proptest::option::of(0usize..40),
        proptest::collection::vec(0usize..COHORTS.len(), 0..6),
    )
        .prop_map(
            |(cohorts, behaviours, plan, train, rollback_at_round, late_cohorts)| RollbackCase {
                cohorts,
                behaviours,
                plan,
                train,
                rollback_at_round,
                late_cohorts,
            },
        )
}

/// Drives the nodes of `unit`: each node ACKs what it is told (except the behaviours that do
/// not) and reports. Returns the actions.
fn drive_round(
    engine: &mut Engine,
    now: u64,
    u: &UnitName,
    nodes: usize,
    behaviours: &[Behaviour],
    bad: &BTreeSet<VersionHash>,
    answered: &mut BTreeSet<(NodeId, VersionHash)>,
) -> Vec<Action> {
    let mut actions = vec![];
    for i in 0..nodes {
        let node = node_id(i);
        let Some(desired) = engine.desired(&node, u) else {
            continue;
        };
        let behaviour = if bad.contains(&desired) {
            behaviours[i % behaviours.len()]
        } else {
            Behaviour::Good
        };
        let key = (node.clone(), desired);
        let event = if !answered.contains(&key) {
            match behaviour {
                Behaviour::Stuck => continue,
                Behaviour::Nack => Event::Rejected {
                    node: node.clone(),
                    unit: u.clone(),
                    version: desired,
                    reason: "bad".into(),
                },
                _ => Event::Applied {
                    node: node.clone(),
                    unit: u.clone(),
                    version: desired,
                },
            }
        } else {
            match behaviour {
                Behaviour::Crash => Event::Crashed {
                    node: node.clone(),
                    unit: u.clone(),
                    version: desired,
                    reason: "boom".into(),
                },
                Behaviour::Nack | Behaviour::Stuck => continue,
                _ => Event::Health {
                    node: node.clone(),
                    unit: u.clone(),
                    version: desired,
                    sample: sample_for(behaviour),
                },
            }
        };
        answered.insert(key);
        actions.extend(engine.step(now, &event).unwrap());
    }
    actions
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Invariant 2: after a rollback (automatic or commanded), every node is assigned exactly
    /// what it had before the rollout, and the hash is quarantined. In a release train, a
    /// rollback of N also undoes N+1, so every node ends on what it had before N.
    #[test]
    fn rollback_reaches_every_exposed_node(case in rollback_case()) {
        let mut engine = Engine::new();
        let u = unit("u");
        let mut now = 0u64;
        let total_nodes = case.cohorts.len() + case.late_cohorts.len();
        for (i, cohort) in case.cohorts.iter().enumerate() {
            engine.step(now, &Event::NodeRegistered { node: node_id(i), labels: cohort_labels(*cohort) }).unwrap();
        }
        // A stable v0 on every node (one stage, everyone).
        let all = Plan { stages: vec![Stage { gates: vec![], min_requests: 0, ..case.plan.stages[0].clone() }], ..case.plan.clone() };
        let mut all = all;
        all.stages[0].selector = Selector::default();
        all.stages[0].percent = Percent::ALL;
        engine.step(now, &Event::RolloutRequested { unit: u.clone(), version: version(0), plan: all, actor: "a".into(), reason: "".into(), override_quarantine: false , override_freeze: false}).unwrap();
        let mut answered = BTreeSet::new();
        let bad: BTreeSet<VersionHash> = [version(1), version(2)].into();
        for _ in 0..40 {
            drive_round(&mut engine, now, &u, total_nodes, &case.behaviours, &bad, &mut answered);
            now += TICK_MS;
            engine.step(now, &Event::Tick).unwrap();
        }
        prop_assert_eq!(engine.stable(&u), Some(version(0)));
        let before: BTreeMap<NodeId, Option<VersionHash>> =
            (0..case.cohorts.len()).map(|i| (node_id(i), engine.desired(&node_id(i), &u))).collect();

        let mut plan = case.plan.clone();
        if case.train {
            plan.concurrency = Concurrency::Train;
        }
        let first = RolloutId(2);
        for seed in [1u8, 2] {
            engine.step(now, &Event::RolloutRequested { unit: u.clone(), version: version(seed), plan: plan.clone(), actor: "a".into(), reason: "".into(), override_quarantine: false , override_freeze: false}).unwrap();
        }
        let mut expected_before = before.clone();
        // The nodes the second rollout reached (a completed rollout keeps only its summary,
        // so they are gathered while it runs).
        let mut reached_by_second = BTreeSet::new();
        for round in 0..60 {
            if round == 3 {
                for (offset, cohort) in case.late_cohorts.iter().enumerate() {
                    let node = node_id(case.cohorts.len() + offset);
                    engine.step(now, &Event::NodeRegistered { node: node.clone(), labels: cohort_labels(*cohort) }).unwrap();
                    expected_before.insert(node.clone(), Some(version(0)));
                }
            }
            if case.rollback_at_round == Some(round) {
                let status = engine.rollout(first).unwrap().status;
                if !status.is_terminal() && status != RolloutStatus::Queued {
                    engine.step(now, &Event::Command { rollout: first, command: Command::Rollback, actor: "ops".into(), reason: "".into() }).unwrap();
                }
            }
            drive_round(&mut engine, now, &u, total_nodes, &case.behaviours, &bad, &mut answered);
            reached_by_second.extend(engine.exposed_nodes(RolloutId(3)));
            now += TICK_MS;
            engine.step(now, &Event::Tick).unwrap();
            reached_by_second.extend(engine.exposed_nodes(RolloutId(3)));
        }
        let view = engine.rollout(first).unwrap();
        if view.status == RolloutStatus::RolledBack {
            prop_assert!(engine.is_quarantined(&u, &version(1)));
            let second = engine.rollout(RolloutId(3)).unwrap();
            // The second rollout either rolled back with it (train) or ran after it.
            if second.status == RolloutStatus::RolledBack && second.created_ms == view.created_ms && second.ended_ms == view.ended_ms {
                for (node, expected) in &expected_before {
                    prop_assert_eq!(engine.desired(node, &u), *expected, "node {}", node);
                }
            }
            // Every node the first rollout reached and no later one changed is back.
            for node in engine.exposed_nodes(first) {
                if !reached_by_second.contains(&node) {
                    prop_assert_eq!(engine.desired(&node, &u), expected_before[&node], "node {}", node);
                }
            }
        }
        for id in [first, RolloutId(3)] {
            let view = engine.rollout(id).unwrap();
            if view.status == RolloutStatus::RolledBack {
                for node in engine.exposed_nodes(id) {
                    prop_assert_ne!(engine.desired(&node, &u), Some(view.version), "rolled back but still assigned");
                }
            }
        }
    }

    /// Invariant 6: a stage's exposed set only grows from stage to stage, and does not depend
    /// on the order in which nodes registered.
    #[test]
    fn selection_is_monotone_and_independent_of_insertion_order(
        cohorts in proptest::collection::vec(0usize..COHORTS.len(), 0..60),
        plan in plan_strategy(),
        order_seed in any::<u64>(),
    ) {
        let u = unit("u");
        let nodes: Vec<(NodeId, Labels)> = cohorts.iter().enumerate().map(|(i, c)| (node_id(i), cohort_labels(*c))).collect();
        let mut shuffled = nodes.clone();
        // A deterministic permutation from the seed.
        let len = shuffled.len();
        let mut state = order_seed | 1;
        for i in (1..len).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut previous: Vec<NodeId> = vec![];
        for index in 0..plan.stages.len() {
            let exposed = select::exposed_set(&plan.stages, index, &u, nodes.iter().map(|(n, l)| (n, l)));
            let again = select::exposed_set(&plan.stages, index, &u, shuffled.iter().map(|(n, l)| (n, l)));
            prop_assert_eq!(&exposed, &again);
            let exposed_set: BTreeSet<&NodeId> = exposed.iter().collect();
            prop_assert!(previous.iter().all(|n| exposed_set.contains(n)), "stage {} lost nodes", index);
            previous = exposed;
        }

        // Through the engine: registering in either order exposes the same nodes at each stage.
        let mut in_order = Engine::new();
        let mut reordered = Engine::new();
        for (node, labels) in &nodes {
            in_order.step(0, &Event::NodeRegistered { node: node.clone(), labels: labels.clone() }).unwrap();
        }
        for (node, labels) in &shuffled {
            reordered.step(0, &Event::NodeRegistered { node: node.clone(), labels: labels.clone() }).unwrap();
        }
        let mut single_stage = plan.clone();
        for stage in &mut single_stage.stages {
            stage.gates.clear();
            stage.min_requests = 0;
        }
        let request = Event::RolloutRequested { unit: u.clone(), version: version(1), plan: single_stage.clone(), actor: "a".into(), reason: "".into(), override_quarantine: false , override_freeze: false};
        in_order.step(0, &request).unwrap();
        reordered.step(0, &request).unwrap();
        prop_assert_eq!(in_order.exposed_nodes(RolloutId(1)), reordered.exposed_nodes(RolloutId(1)));
        // (A first stage that selects nobody passes at once.)
        let stage_index = in_order.rollout(RolloutId(1)).unwrap().stage_index;
        let expected = select::exposed_set(&single_stage.stages, stage_index, &u, nodes.iter().map(|(n, l)| (n, l)));
        prop_assert_eq!(in_order.exposed_nodes(RolloutId(1)), expected);
    }
}

/// One random input to the engine, over a small world of names.
#[derive(Debug, Clone)]
enum Input {
    Register(usize, usize),
    Remove(usize),
    Request(u8, usize, bool),
    Applied(usize, u8),
    Rejected(usize, u8),
    Crashed(usize, u8),
    Health(usize, u8, u64, u64),
    Tick(u64),
    Command(u64, usize, bool),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => (0usize..12, 0usize..4).prop_map(|(n, c)| Input::Register(n, c)),
        1 => (0usize..12).prop_map(Input::Remove),
        2 => (0u8..4, 0usize..2, any::<bool>()).prop_map(|(v, u, o)| Input::Request(v, u, o)),
        4 => (0usize..12, 0u8..4).prop_map(|(n, v)| Input::Applied(n, v)),
        1 => (0usize..12, 0u8..4).prop_map(|(n, v)| Input::Rejected(n, v)),
        1 => (0usize..12, 0u8..4).prop_map(|(n, v)| Input::Crashed(n, v)),
        4 => (0usize..12, 0u8..4, 0u64..100, 0u64..20).prop_map(|(n, v, r, e)| Input::Health(n, v, r, e)),
        4 => (0u64..40_000).prop_map(Input::Tick),
        2 => (1u64..6, 0usize..6, any::<bool>()).prop_map(|(r, c, a)| Input::Command(r, c, a)),
    ]
}

fn to_event(input: &Input, plans: &[Plan]) -> (u64, Event) {
    let units = [unit("unit-a"), unit("unit-b")];
    match input {
        Input::Register(n, c) => (
            0,
            Event::NodeRegistered {
                node: node_id(*n),
                labels: cohort_labels(*c),
            },
        ),
        Input::Remove(n) => (0, Event::NodeRemoved { node: node_id(*n) }),
        Input::Request(v, u, o) => (
            0,
            Event::RolloutRequested {
                unit: units[*u].clone(),
                version: version(*v),
                plan: plans[*v as usize % plans.len()].clone(),
                actor: "alice".into(),
                reason: "r".into(),
                override_quarantine: *o,
                override_freeze: false,
            },
        ),
        Input::Applied(n, v) => (
            0,
            Event::Applied {
                node: node_id(*n),
                unit: units[*n % 2].clone(),
                version: version(*v),
            },
        ),
        Input::Rejected(n, v) => (
            0,
            Event::Rejected {
                node: node_id(*n),
                unit: units[*n % 2].clone(),
                version: version(*v),
                reason: "x".into(),
            },
        ),
        Input::Crashed(n, v) => (
            0,
            Event::Crashed {
                node: node_id(*n),
                unit: units[*n % 2].clone(),
                version: version(*v),
                reason: "x".into(),
            },
        ),
        Input::Health(n, v, r, e) => (
            0,
            Event::Health {
                node: node_id(*n),
                unit: units[*n % 2].clone(),
                version: version(*v),
                sample: HealthSample {
                    requests: *r,
                    errors: *e,
                    ..Default::default()
                },
            },
        ),
        Input::Tick(ms) => (*ms, Event::Tick),
        Input::Command(r, c, other_actor) => {
            let command = [
                Command::Pause,
                Command::Resume,
                Command::Promote,
                Command::Abort,
                Command::Rollback,
                Command::Approve,
            ][*c];
            (
                0,
                Event::Command {
                    rollout: RolloutId(*r),
                    command,
                    actor: if *other_actor { "bob" } else { "alice" }.into(),
                    reason: "".into(),
                },
            )
        }
    }
}

/// Runs the inputs; returns every step's result rendered as text, and the final engine. When
/// `reload_at` is set, the engine goes through JSON at that point and continues from the copy.
fn run_inputs(inputs: &[Input], plans: &[Plan], reload_at: Option<usize>) -> (Vec<String>, Engine) {
    let mut engine = Engine::new();
    let mut now = 0u64;
    let mut trace = vec![];
    for (index, input) in inputs.iter().enumerate() {
        if reload_at == Some(index) {
            let text = serde_json::to_string(&engine).unwrap();
            engine = serde_json::from_str(&text).unwrap();
        }
        let (advance, event) = to_event(input, plans);
        now += advance;
        let before = engine.clone();
        let result = engine.step(now, &event);
        // The incrementally kept indexes equal ones rebuilt from the state.
        if let Err(mismatch) = engine.check_derived_indexes() {
            panic!("after step {index} ({event:?}): {mismatch}");
        }
        if result.is_err() {
            assert_eq!(
                engine, before,
                "a refused step must leave the state unchanged"
            );
        }
        trace.push(format!("{result:?}"));
    }
    (trace, engine)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Invariants 5 and 10: the same inputs give the same actions and state, and a state that
    /// went through serde continues identically.
    #[test]
    fn same_inputs_give_same_outputs_even_through_serde(
        inputs in proptest::collection::vec(input(), 1..120),
        plans in proptest::collection::vec(plan_strategy(), 1..3),
        reload_fraction in 0.0f64..1.0,
        train in any::<bool>(),
    ) {
        let plans: Vec<Plan> = plans.into_iter().map(|mut plan| {
            if train { plan.concurrency = Concurrency::Train; }
            plan.stages.iter_mut().for_each(|stage| stage.approval = stage.bake_ms % 2 == 0);
            plan
        }).collect();
        let (trace_a, engine_a) = run_inputs(&inputs, &plans, None);
        let (trace_b, engine_b) = run_inputs(&inputs, &plans, None);
        prop_assert_eq!(&trace_a, &trace_b);
        prop_assert_eq!(&engine_a, &engine_b);
        let reload_at = ((inputs.len() as f64) * reload_fraction) as usize;
        let (trace_c, engine_c) = run_inputs(&inputs, &plans, Some(reload_at));
        prop_assert_eq!(&trace_a, &trace_c);
        prop_assert_eq!(&engine_a, &engine_c);
        // Internal consistency: every running rollout's counts match its nodes.
        for view in engine_a.rollouts() {
            prop_assert!(view.nodes_applied <= view.nodes_exposed);
            if !view.status.is_terminal() {
                prop_assert_eq!(engine_a.exposed_nodes(view.id).len() as u64, view.nodes_exposed);
            }
        }
    }
}

/// What one soak case does once the rollout soaks (rounds counted from the soak's start).
#[derive(Debug, Clone)]
struct SoakCase {
    cohorts: Vec<usize>,
    plan: Plan,
    /// A crash reported by an exposed node (its index among the exposed, modulo their count).
    crash: Option<(usize, usize)>,
    promote_at_round: Option<usize>,
    pause_at_round: Option<usize>,
}

fn soak_case() -> impl Strategy<Value = SoakCase> {
    (
        proptest::collection::vec(0usize..COHORTS.len(), 1..20),
        plan_strategy(),
        1u64..600_000,
        proptest::option::of((0usize..150, 0usize..20)),
        proptest::option::of(0usize..150),
        proptest::option::of(0usize..150),
    )
        .prop_map(
            |(cohorts, plan, soak_ms, crash, promote_at_round, pause_at_round)| SoakCase {
                cohorts,
                plan: Plan { soak_ms, ..plan },
                crash,
                promote_at_round,
                pause_at_round,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Invariant 12: a rollout never completes before `soak_ms` after its last stage passed,
    /// unless an operator promoted it; a hard signal from an exposed node during the soak rolls
    /// back in its own step.
    #[test]
    fn a_soak_holds_completion_and_a_hard_signal_during_it_rolls_back(case in soak_case()) {
        let mut engine = Engine::new();
        let mut now = 0u64;
        for (i, cohort) in case.cohorts.iter().enumerate() {
            engine.step(now, &Event::NodeRegistered { node: node_id(i), labels: cohort_labels(*cohort) }).unwrap();
        }
        let (u, v, id) = (unit("u"), version(1), RolloutId(1));
        let mut actions = engine.step(now, &Event::RolloutRequested {
            unit: u.clone(), version: v, plan: case.plan.clone(), actor: "alice".into(),
            reason: "prop".into(), override_quarantine: false, override_freeze: false,
        }).unwrap();
        let mut soak_started_ms: Option<u64> = None;
        let mut promoted = false;
        let mut soak_round = 0usize;
        let mut answered = BTreeSet::new();
        let check = |actions: &[Action], soak_started_ms: &mut Option<u64>, promoted: bool| -> Result<(), TestCaseError> {
            for action in actions {
                let Action::Changelog(entry) = action else { continue };
                match entry.kind {
                    ChangeKind::SoakStarted => *soak_started_ms = Some(entry.at_ms),
                    // A rollout that exposed no node has nothing to soak.
                    ChangeKind::Completed if soak_started_ms.is_none() => {
                        prop_assert!(entry.reason.contains("no node was exposed"),
                            "completed without a soak: {}", entry.reason);
                    }
                    ChangeKind::Completed => {
                        let started = soak_started_ms.ok_or_else(|| TestCaseError::fail("completed without a soak"))?;
                        prop_assert!(promoted || entry.at_ms >= started + case.plan.soak_ms,
                            "completed at {} before the soak's end {}", entry.at_ms, started + case.plan.soak_ms);
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        for _round in 0..400 {
            check(&actions, &mut soak_started_ms, promoted)?;
            let view = engine.rollout(id).unwrap();
            if view.status.is_terminal() {
                break;
            }
            actions = vec![];
            let soaking = soak_started_ms.is_some();
            if soaking {
                if case.pause_at_round == Some(soak_round) && view.status == RolloutStatus::Running {
                    actions.extend(engine.step(now, &Event::Command { rollout: id, command: Command::Pause, actor: "bob".into(), reason: "look".into() }).unwrap());
                } else if view.status == RolloutStatus::Paused {
                    actions.extend(engine.step(now, &Event::Command { rollout: id, command: Command::Resume, actor: "bob".into(), reason: "go".into() }).unwrap());
                }
                if case.promote_at_round == Some(soak_round) && engine.rollout(id).unwrap().status == RolloutStatus::Running {
                    promoted = true;
                    actions.extend(engine.step(now, &Event::Command { rollout: id, command: Command::Promote, actor: "bob".into(), reason: "hotfix".into() }).unwrap());
                }
                if let Some((round, pick)) = case.crash && round == soak_round {
                    let status = engine.rollout(id).unwrap().status;
                    let exposed = engine.exposed_nodes(id);
                    if !status.is_terminal() && !exposed.is_empty() {
                        let node = exposed[pick % exposed.len()].clone();
                        actions.extend(engine.step(now, &Event::Crashed { node, unit: u.clone(), version: v, reason: "late".into() }).unwrap());
                        prop_assert_eq!(engine.rollout(id).unwrap().status, RolloutStatus::RolledBack,
                            "a hard signal during the soak must roll back in its own step");
                        let outcome = engine.rollout(id).unwrap().outcome.unwrap();
                        prop_assert!(outcome.starts_with("rolled back during soak"), "{}", outcome);
                    }
                }
                soak_round += 1;
            }
            for i in 0..case.cohorts.len() {
                let node = node_id(i);
                if engine.rollout(id).unwrap().status.is_terminal() {
                    break;
                }
                if engine.desired(&node, &u) != Some(v) {
                    continue;
                }
                let event = if answered.insert(node.clone()) {
                    Event::Applied { node, unit: u.clone(), version: v }
                } else {
                    Event::Health { node, unit: u.clone(), version: v, sample: sample_for(Behaviour::Good) }
                };
                actions.extend(engine.step(now, &event).unwrap());
            }
            now += TICK_MS;
            actions.extend(engine.step(now, &Event::Tick).unwrap());
        }
        check(&actions, &mut soak_started_ms, promoted)?;
    }
}

/// Accepted events as the server logs them: `(now_ms, event as JSON)`.
type Log = Vec<(u64, String)>;
/// A snapshot: how many log entries it covers, and the engine as JSON.
type Snapshot = (usize, String);

/// The inputs' accepted events as the server logs them, and the engine after them, with a
/// snapshot taken before input `snapshot_at`.
fn run_logged(
    inputs: &[Input],
    plans: &[Plan],
    snapshot_at: usize,
) -> (Log, Option<Snapshot>, Engine) {
    let mut engine = Engine::new();
    let mut now = 0u64;
    let mut log = vec![];
    let mut snapshot = None;
    for (index, input) in inputs.iter().enumerate() {
        if index == snapshot_at {
            snapshot = Some((log.len(), serde_json::to_string(&engine).unwrap()));
        }
        let (advance, event) = to_event(input, plans);
        now += advance;
        if engine.step(now, &event).is_ok() {
            log.push((now, serde_json::to_string(&event).unwrap()));
        }
    }
    (log, snapshot, engine)
}

/// Replays `log` (from its `from`-th entry) on `engine`.
fn replay(mut engine: Engine, log: &[(u64, String)], from: usize) -> Engine {
    for (now, text) in log.iter().skip(from) {
        let event: Event = serde_json::from_str(text).unwrap();
        engine.step(*now, &event).unwrap();
    }
    engine
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The server's persistence: the accepted events, logged as JSON, replayed from the start
    /// or from a JSON snapshot, give exactly the live engine; none is refused on replay.
    #[test]
    fn the_logged_events_replayed_from_the_start_or_a_snapshot_give_the_live_engine(
        inputs in proptest::collection::vec(input(), 1..120),
        plans in proptest::collection::vec(plan_strategy(), 1..3),
        snapshot_fraction in 0.0f64..1.0,
    ) {
        let snapshot_at = ((inputs.len() as f64) * snapshot_fraction) as usize;
        let (log, snapshot, live) = run_logged(&inputs, &plans, snapshot_at);
        let from_start = replay(Engine::new(), &log, 0);
        prop_assert_eq!(&from_start, &live);
        if let Some((from, text)) = snapshot {
            let restored: Engine = serde_json::from_str(&text).unwrap();
            let from_snapshot = replay(restored, &log, from);
            prop_assert_eq!(&from_snapshot, &live);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Invariant: silence is judged against hearing. A control plane that hears no node for
    /// longer than a stage's silence — down (no ticks either) or cut off from the fleet (its
    /// ticks go on) — never rolls back a good version for silence, whenever it happens and for
    /// however long; the nodes are heard from again afterwards.
    #[test]
    fn a_deaf_control_plane_never_rolls_back_a_good_version(
        cohorts in proptest::collection::vec(0usize..COHORTS.len(), 2..20),
        plan in plan_strategy(),
        silence_ms in 5_000u64..60_000,
        deaf_at_round in 1usize..4,
        deaf_silences in 2u64..10,
        ticking in any::<bool>(),
    ) {
        let mut plan = plan;
        for stage in &mut plan.stages {
            stage.silence_ms = silence_ms;
        }
        let mut engine = Engine::new();
        let mut now = 1_000_000u64;
        for (i, cohort) in cohorts.iter().enumerate() {
            engine.step(now, &Event::NodeRegistered { node: node_id(i), labels: cohort_labels(*cohort) }).unwrap();
        }
        let (u, v, id) = (unit("u"), version(1), RolloutId(1));
        engine.step(now, &Event::RolloutRequested {
            unit: u.clone(), version: v, plan, actor: "alice".into(),
            reason: "prop".into(), override_quarantine: false, override_freeze: false,
        }).unwrap();
        let mut answered = BTreeSet::new();
        for round in 0..80 {
            if engine.rollout(id).unwrap().status.is_terminal() {
                break;
            }
            if round == deaf_at_round {
                let deaf_until = now + deaf_silences * silence_ms;
                while now < deaf_until {
                    now += TICK_MS;
                    if ticking {
                        engine.step(now, &Event::Tick).unwrap();
                    }
                }
                engine.step(now, &Event::Tick).unwrap();
            }
            for i in 0..cohorts.len() {
                let node = node_id(i);
                if engine.desired(&node, &u) != Some(v) {
                    continue;
                }
                let event = if answered.insert(node.clone()) {
                    Event::Applied { node, unit: u.clone(), version: v }
                } else {
                    Event::Health { node, unit: u.clone(), version: v, sample: sample_for(Behaviour::Good) }
                };
                engine.step(now, &event).unwrap();
            }
            now += TICK_MS;
            engine.step(now, &Event::Tick).unwrap();
        }
        let view = engine.rollout(id).unwrap();
        prop_assert_ne!(view.status, RolloutStatus::RolledBack, "{:?}", view.outcome);
    }
}
