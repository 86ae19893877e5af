//! The simulator's performance target: 30,000 nodes (300 POPs × 100) over 6 hours of virtual
//! time with a 10 s health interval (65 million node-intervals), the default plan on the real
//! engine, in at most 10 s of wall time on one core. Runs it 3 times, prints each wall time and
//! the median, and exits non-zero when the median is over the target.
//!
//! `cargo bench -p failsmall-sim --bench fleet`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use failsmall_sim::{RunOptions, Scenario, resolve_strategy, run};

const RUNS: usize = 3;
const TARGET: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let scenario = match Scenario::built_in("bench-30k") {
        Ok(scenario) => scenario,
        Err(error) => {
            eprintln!("bench-30k: {error}");
            return ExitCode::FAILURE;
        }
    };
    let strategy = match resolve_strategy("examples/plans/default.yaml") {
        Ok(strategy) => strategy,
        Err(error) => {
            eprintln!("default plan: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = RunOptions {
        seed: None,
        strategies: vec![strategy],
        trace: false,
    };
    let node_intervals =
        scenario.fleet.node_count() * (scenario.duration_ms / scenario.health_interval_ms.max(1));
    println!(
        "bench-30k: {} nodes, {} h virtual, {} node-intervals, seed {}",
        scenario.fleet.node_count(),
        scenario.duration_ms / 3_600_000,
        node_intervals,
        scenario.seed
    );
    let mut walls = Vec::with_capacity(RUNS);
    for attempt in 1..=RUNS {
        let started = Instant::now();
        let report = match run(&scenario, &options) {
            Ok(report) => report,
            Err(error) => {
                eprintln!("run {attempt}: {error}");
                return ExitCode::FAILURE;
            }
        };
        let wall = started.elapsed();
        let completed = report
            .runs
            .first()
            .map_or(0, |run| run.metrics.versions_completed);
        println!(
            "run {attempt}: {:.3} s wall ({:.0} ns per node-interval), {completed} versions completed",
            wall.as_secs_f64(),
            wall.as_nanos() as f64 / node_intervals.max(1) as f64
        );
        if completed == 0 {
            println!(
                "WARNING: no version completed its rollout, so the run did not exercise every stage"
            );
        }
        walls.push(wall);
    }
    walls.sort();
    let median = walls.get(RUNS / 2).copied().unwrap_or(Duration::MAX);
    println!(
        "median: {:.3} s (target {} s)",
        median.as_secs_f64(),
        TARGET.as_secs()
    );
    if median > TARGET {
        eprintln!(
            "the median wall time is over the {} s target",
            TARGET.as_secs()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
