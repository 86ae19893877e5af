//! The sequential gates' false-positive bound, end to end: seeded healthy rollouts of the
//! built-in `healthy` scenario through a plan whose only gates are `significant(...)`, judged by
//! the real engine. None may roll back.
//!
//! By default 250 seeds of four rollouts each (1,000 rollouts) run; `FAILSMALL_SIM_FP_SEEDS=2500 cargo nextest run -p
//! failsmall-sim --test false_positives --release --no-capture` runs 10,000
//! rollouts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use failsmall_core::plan::Plan;
use failsmall_sim::scenario::Scenario;
use failsmall_sim::{RunOptions, Strategy};

/// Five stages like the default plan's, with short bakes and soak so that each of the
/// scenario's four pushes (one every 15 minutes) is a rollout of its own that completes.
const PLAN: &str = "name: significant-only
soak: 2m
defaults:
  bake: 1m
  timeout: 10m
  min_requests: 500
  gates:
    - significant(error_rate > baseline.error_rate)
    - significant(p99_latency > baseline.p99_latency)
stages:
  - { name: employees, select: { cohort: employee } }
  - { name: free-10, select: { cohort: free }, percent: 10% }
  - { name: free, select: { cohort: free } }
  - { name: pro-business, select: { cohort: [pro, business] } }
  - { name: enterprise, select: { cohort: enterprise } }
";

fn seeds() -> u64 {
    std::env::var("FAILSMALL_SIM_FP_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse().ok())
        .unwrap_or(250)
}

fn options(plan: &Plan, seed: u64) -> RunOptions {
    RunOptions {
        seed: Some(seed),
        strategies: vec![Strategy::Plan {
            label: "significant-only".into(),
            plan: plan.clone(),
        }],
        trace: false,
    }
}

#[test]
fn healthy_rollouts_judged_by_significant_gates_never_roll_back() {
    let plan = Plan::parse("significant-only.yaml", PLAN).unwrap();
    let scenario = Scenario::built_in("healthy").unwrap();
    let started = std::time::Instant::now();
    let (mut rollouts, mut completed, mut rollbacks) = (0u64, 0u64, 0u64);
    let mut rolled_back_seeds = Vec::new();
    for seed in 0..seeds() {
        let report = failsmall_sim::run(&scenario, &options(&plan, 10_000 + seed)).unwrap();
        for run in &report.runs {
            rollouts += run.metrics.pushes_accepted;
            completed += run.metrics.versions_completed;
            rollbacks += run.metrics.rollbacks;
            if run.metrics.rollbacks > 0 {
                rolled_back_seeds.push(10_000 + seed);
            }
        }
    }
    println!(
        "{} seeds of `healthy`: {rollouts} rollouts, {completed} completed, {rollbacks} rolled back ({:.1?})",
        seeds(),
        started.elapsed()
    );
    assert_eq!(
        rollbacks, 0,
        "healthy versions rolled back with seeds {rolled_back_seeds:?}"
    );
    assert!(rollouts >= 3 * seeds(), "only {rollouts} rollouts");
}

/// The same plan still catches `subtle` (0.1% -> 0.5% on every node) in its first two stages
/// (employees, then a tenth of the free nodes: about a tenth of the fleet).
#[test]
fn the_same_plan_catches_a_subtle_regression_in_its_first_two_stages() {
    let plan = Plan::parse("significant-only.yaml", PLAN).unwrap();
    let scenario = Scenario::built_in("subtle").unwrap();
    let mut exposures = Vec::new();
    for seed in 0..20 {
        let report = failsmall_sim::run(&scenario, &options(&plan, 20_000 + seed)).unwrap();
        let metrics = &report.runs[0].metrics;
        assert!(
            metrics.rollbacks_of_bad_versions >= 1,
            "seed {seed}: {metrics:?}"
        );
        assert!(
            metrics.nodes_exposed_max_fraction < 0.2,
            "seed {seed}: {metrics:?}"
        );
        exposures.push((metrics.nodes_exposed_max_fraction, metrics.detect_s));
    }
    println!("subtle, 20 seeds: (largest exposed fraction, detection s) {exposures:?}");
}
