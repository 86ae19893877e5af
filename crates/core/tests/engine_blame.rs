//! Property: a version whose nodes are exactly as healthy as they were on the previous version
//! is never rolled back nor quarantined, and (without a relative gate) completes, whatever the populations' differences
//! (cohorts with their own background error rates, latencies and traffic), and the plan's shape
//! (stages taking part or all of a cohort, a soak or none, a relative gate or none). Health is
//! deterministic here (each node reports its cohort's exact rate), so the property is about the
//! engine's comparisons, not the statistics: like with like.
//!
//! The cohorts differ but each stays within the plan's absolute limits when healthy (a cohort
//! always beyond one is a mis-set limit: the stage holds as "fleet unhealthy"), and the fleet is
//! large enough for each comparison to have data (two nodes a cohort at least, 50 requests a
//! tick): an absolute limit judged with no baseline data at all is judged as written, by design
//! (a unit's first version).
//!
//! Not yet held to this property: fleet-wide incidents in fleets this small. With a handful of
//! nodes per cohort, and a verdict taken the moment a group reaches its `min_requests` (some
//! nodes have reported in that round, others not yet), the groups' windows can cover different
//! moments of an incident's onset or end, and a before/after comparison can still blame the
//! version. The simulator's `incident` scenario (120 nodes, `crates/sim/tests/verdicts.rs`)
//! blames none in 100 seeds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use failsmall_core::domain::{Labels, NodeId, RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{Engine, Event, RolloutStatus};
use failsmall_core::health::HealthSample;
use failsmall_core::plan::Plan;
use proptest::prelude::*;

const COHORTS: [&str; 4] = ["employee", "free", "pro", "business"];
const TICK_MS: u64 = 5_000;
const ROUNDS: usize = 600;

#[derive(Debug, Clone)]
struct Cohort {
    nodes: usize,
    /// Background errors per 10,000 requests, whatever the version.
    errors_per_10k: u64,
    requests_per_tick: u64,
    latency_ms: f64,
}

#[derive(Debug, Clone)]
struct Case {
    cohorts: Vec<Cohort>,
    free_percent: u32,
    soak: bool,
    relative_gate: bool,
}

fn cohort(max_nodes: usize) -> impl Strategy<Value = Cohort> {
    (
        2..=max_nodes,
        prop::sample::select(vec![0u64, 10, 20, 40]),
        50u64..200,
        prop::sample::select(vec![40.0, 60.0, 90.0]),
    )
        .prop_map(
            |(nodes, errors_per_10k, requests_per_tick, latency_ms)| Cohort {
                nodes,
                errors_per_10k,
                requests_per_tick,
                latency_ms,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    (
        (cohort(4), cohort(14), cohort(8), cohort(6)),
        prop::sample::select(vec![10u32, 25, 50]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(cohorts, free_percent, soak, relative_gate)| Case {
            cohorts: vec![cohorts.0, cohorts.1, cohorts.2, cohorts.3],
            free_percent,
            soak,
            relative_gate,
        })
}

/// The default plan's shape, short: employees (all of them), part of free, free, the rest.
fn plan(case: &Case) -> Plan {
    let relative = if case.relative_gate {
        "\n    - error_rate > 2 * baseline.error_rate"
    } else {
        ""
    };
    let text = format!(
        "name: blame
concurrency: queue
soak: {soak}
defaults:
  bake: 30s
  timeout: 2m
  min_requests: 200
  silence: 1m
  hard_signals: {{ rejections: 1, crashes: 1 }}
  gates:
    - p99_latency > 100ms OR error_rate > 0.5%
    - significant(error_rate > baseline.error_rate){relative}
stages:
  - name: employees
    select: {{ cohort: employee }}
  - name: free-part
    select: {{ cohort: free }}
    percent: {percent}%
  - name: free
    select: {{ cohort: free }}
  - name: the-rest
    select: {{ cohort: [pro, business] }}
",
        soak = if case.soak { "2m" } else { "0s" },
        percent = case.free_percent,
    );
    Plan::parse("blame.yaml", &text).unwrap()
}

fn nodes(case: &Case) -> Vec<(NodeId, usize)> {
    let mut out = Vec::new();
    for (index, cohort) in case.cohorts.iter().enumerate() {
        for n in 0..cohort.nodes {
            out.push((
                NodeId::new(format!("{}-{n}", COHORTS[index])).unwrap(),
                index,
            ));
        }
    }
    out
}

/// A node's report for one tick: its cohort's exact health. Exact on average: the errors of
/// its ticks up to this one, less those before, each node at its own phase, spread by the
/// golden ratio (nodes that erred all in the same tick would be a fleet-wide incident, not a
/// steady rate).
fn sample(case: &Case, cohort: usize, node: usize, round: usize) -> HealthSample {
    let c = &case.cohorts[cohort];
    let phase = (node as u64 * 6_180) % 10_000;
    let errors_through =
        |ticks: u64| (ticks * c.requests_per_tick * c.errors_per_10k + phase) / 10_000;
    let tick = round as u64;
    let mut sample = HealthSample {
        requests: c.requests_per_tick,
        errors: errors_through(tick + 1) - errors_through(tick),
        ..HealthSample::default()
    };
    sample.latency.record(c.latency_ms, c.requests_per_tick);
    sample
}

/// Every node ACKs what it is told and reports its health for what it runs.
fn round(
    engine: &mut Engine,
    case: &Case,
    now: u64,
    round: usize,
    acked: &mut BTreeSet<(NodeId, VersionHash)>,
) {
    let u = UnitName::new("u").unwrap();
    for (index, (node, cohort)) in nodes(case).into_iter().enumerate() {
        let Some(desired) = engine.desired(&node, &u) else {
            continue;
        };
        if acked.insert((node.clone(), desired)) {
            let applied = Event::Applied {
                node: node.clone(),
                unit: u.clone(),
                version: desired,
            };
            engine.step(now, &applied).unwrap();
        }
        let health = Event::Health {
            node: node.clone(),
            unit: u.clone(),
            version: desired,
            sample: sample(case, cohort, index, round),
        };
        engine.step(now, &health).unwrap();
    }
    engine.step(now, &Event::Tick).unwrap();
}

proptest! {
    // A fixed seed, so that CI replays the same 256 fleets every run; 5,000 fleets drawn at
    // random passed before it was fixed (change the seed to explore others).
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20_261_204),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_version_as_healthy_as_its_baseline_is_never_rolled_back_nor_quarantined(case in case()) {
        let u = UnitName::new("u").unwrap();
        let mut engine = Engine::new();
        let mut now = 0u64;
        for (node, cohort) in nodes(&case) {
            let mut labels = Labels::new();
            labels.insert("cohort".into(), COHORTS[cohort].into());
            engine.step(now, &Event::NodeRegistered { node, labels }).unwrap();
        }
        // Every node runs v0, rolled out at once.
        let instant = Plan::parse("instant.yaml", "name: instant\nsoak: 0s\nstages:\n  - name: all\n    select: {}\n").unwrap();
        let (v0, v1) = (VersionHash::of(b"v0"), VersionHash::of(b"v1"));
        let request = |version, plan: Plan| Event::RolloutRequested {
            unit: u.clone(), version, plan, actor: "alice".into(), reason: "prop".into(),
            override_quarantine: false, override_freeze: false,
        };
        engine.step(now, &request(v0, instant)).unwrap();
        let mut acked = BTreeSet::new();
        for r in 0..200 {
            now += TICK_MS;
            round(&mut engine, &case, now, r, &mut acked);
            if engine.rollout(RolloutId(1)).unwrap().status.is_terminal() {
                break;
            }
        }
        prop_assert_eq!(engine.rollout(RolloutId(1)).unwrap().status, RolloutStatus::Completed);

        engine.step(now, &request(v1, plan(&case))).unwrap();
        let id = RolloutId(2);
        for r in 0..ROUNDS {
            now += TICK_MS;
            round(&mut engine, &case, now, r, &mut acked);
            let view = engine.rollout(id).unwrap();
            prop_assert_ne!(view.status, RolloutStatus::RolledBack, "{:?}", view);
            prop_assert!(!engine.is_quarantined(&u, &v1));
            if view.status.is_terminal() {
                break;
            }
        }
        // A relative gate (`error_rate > 2 * baseline.error_rate`) against a pre-period with
        // no error holds on the canary's first (above, never proven): it may hold, never blame.
        if !case.relative_gate {
            let view = engine.rollout(id).unwrap();
            prop_assert_eq!(view.status, RolloutStatus::Completed, "{:?}", view);
        }
    }
}
