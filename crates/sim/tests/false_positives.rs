//! The sequential gates' false-positive bound, end to end: seeded healthy rollouts of the
//! built-in `healthy` scenario through a plan whose only gates are `significant(...)`, judged by
//! the real engine. None of the default 1,000 may roll back.
//!
//! By default 250 seeds of four rollouts each (1,000 rollouts) run;
//! `FAILSMALL_SIM_FP_SEEDS=2500 cargo nextest run -p failsmall-sim --test false_positives --release --no-capture` runs 10,000
//! rollouts; `FAILSMALL_SIM_FP_FIRST_SEED` moves the seeds (the first is 10,000), and the
//! gate verdicts of a run that rolled back are printed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use failsmall_core::gate::ALPHA_PER_ROLLOUT;
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

/// The environment variable `name` as a number, or `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn seeds() -> u64 {
    env_or("FAILSMALL_SIM_FP_SEEDS", 250)
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
    let first_seed = env_or("FAILSMALL_SIM_FP_FIRST_SEED", 10_000);
    for seed in first_seed..first_seed + seeds() {
        let report = failsmall_sim::run(&scenario, &options(&plan, seed)).unwrap();
        for run in &report.runs {
            rollouts += run.metrics.pushes_accepted;
            completed += run.metrics.versions_completed;
            rollbacks += run.metrics.rollbacks;
            if run.metrics.rollbacks > 0 {
                rolled_back_seeds.push(seed);
                let mut traced = options(&plan, seed);
                traced.trace = true;
                let trace = failsmall_sim::run(&scenario, &traced).unwrap().trace();
                for line in trace
                    .lines()
                    .filter(|line| line.contains("GateVerdict") || line.contains("RolledBack"))
                {
                    println!("seed {seed}: {line}");
                }
            }
        }
    }
    println!(
        "{} seeds of `healthy`: {rollouts} rollouts, {completed} completed, {rollbacks} rolled back ({:.1?})",
        seeds(),
        started.elapsed()
    );
    // The default 1,000 rollouts must all complete; a larger run may see what the bound allows,
    // at most ALPHA_PER_ROLLOUT of its rollouts (seed 12,033 is one of 10,000).
    let allowed = if rollouts <= 1_000 {
        0
    } else {
        (ALPHA_PER_ROLLOUT * rollouts as f64).floor() as u64
    };
    assert!(
        rollbacks <= allowed,
        "{rollbacks} healthy versions rolled back (at most {allowed}) with seeds {rolled_back_seeds:?}"
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
