//! Verdicts over many seeds, through the scenario's plan on the real engine: healthy versions
//! in the six cases of issue 9 (different populations, a fleet-wide incident, a unit's first
//! version, sparse traffic, another unit's failure, dead nodes) must never be rolled back or
//! quarantined; real regressions (nov18, dec5, subtle, a latency-only regression, a crash
//! confined to one region) must still be rolled back, with no more exposure than today.
//!
//! Prints one row per scenario (`--no-capture`). By default each scenario runs over
//! `DEFAULT_SEEDS` seeds; `FAILSMALL_SIM_VERDICT_SEEDS=100 cargo nextest run -p failsmall-sim
//! --test verdicts --no-capture` runs more.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use failsmall_sim::{RunOptions, Scenario, Strategy, StrategyMetrics, resolve_strategy};

/// Seeds per scenario unless `FAILSMALL_SIM_VERDICT_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 20;
/// The `subtle` scenario lasts 1 h, while its first (good) version rolls out and soaks for
/// 82 min under the default plan: the bad version would never start. It runs for this long.
const SUBTLE_DURATION_MS: u64 = 3 * 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Every version is healthy (two-units: one unit's version is bad, the other's healthy).
    Healthy,
    /// A real regression.
    Bad,
}

struct Case {
    name: &'static str,
    kind: Kind,
}

const CASES: [Case; 12] = [
    Case {
        name: "populations",
        kind: Kind::Healthy,
    },
    Case {
        name: "incident",
        kind: Kind::Healthy,
    },
    Case {
        name: "first-version",
        kind: Kind::Healthy,
    },
    Case {
        name: "sparse",
        kind: Kind::Healthy,
    },
    Case {
        name: "two-units",
        kind: Kind::Healthy,
    },
    Case {
        name: "two-units-bad-first",
        kind: Kind::Healthy,
    },
    Case {
        name: "dead-nodes",
        kind: Kind::Healthy,
    },
    Case {
        name: "nov18",
        kind: Kind::Bad,
    },
    Case {
        name: "dec5",
        kind: Kind::Bad,
    },
    Case {
        name: "subtle",
        kind: Kind::Bad,
    },
    Case {
        name: "latency",
        kind: Kind::Bad,
    },
    Case {
        name: "region-crash",
        kind: Kind::Bad,
    },
];

/// What one scenario did over every seed.
#[derive(Debug, Default, Clone)]
struct Row {
    seeds: u64,
    /// Rollbacks of good versions, and the seeds with any.
    false_rollbacks: u64,
    seeds_with_false_rollback: u64,
    good_quarantines: u64,
    completed_good: u64,
    holds: u64,
    seeds_with_hold: u64,
    bad_rollouts: u64,
    bad_rolled_back: u64,
    bad_completed: u64,
    /// Seeds where a bad version was pushed but never rolled back.
    seeds_bad_missed: u64,
    /// Nodes that ran a bad version / on which its failure showed: sum and worst seed.
    ran_bad_sum: u64,
    ran_bad_max: u64,
    failed_sum: u64,
    failed_max: u64,
}

impl Row {
    fn add(&mut self, m: &StrategyMetrics) {
        self.seeds += 1;
        let false_rollbacks = m.rollbacks.saturating_sub(m.rollbacks_of_bad_versions);
        self.false_rollbacks += false_rollbacks;
        self.seeds_with_false_rollback += u64::from(false_rollbacks > 0);
        self.good_quarantines += m.quarantines_of_good_versions;
        self.completed_good += m
            .versions_completed
            .saturating_sub(m.bad_versions_completed);
        self.holds += m.holds;
        self.seeds_with_hold += u64::from(m.holds > 0);
        self.bad_rollouts += m.rollouts_of_bad_versions;
        self.bad_rolled_back += m.rollbacks_of_bad_versions;
        self.bad_completed += m.bad_versions_completed;
        self.seeds_bad_missed +=
            u64::from(m.rollouts_of_bad_versions > 0 && m.rollbacks_of_bad_versions == 0);
        self.ran_bad_sum += m.nodes_ran_bad;
        self.ran_bad_max = self.ran_bad_max.max(m.nodes_ran_bad);
        self.failed_sum += m.nodes_failed;
        self.failed_max = self.failed_max.max(m.nodes_failed);
    }

    fn mean(sum: u64, seeds: u64) -> f64 {
        sum as f64 / seeds.max(1) as f64
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn seeds() -> u64 {
    std::env::var("FAILSMALL_SIM_VERDICT_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_SEEDS)
}

/// The scenario file and its first plan strategy (the instant strategy is not judged here).
fn load(name: &str) -> (Scenario, Strategy) {
    let path = root().join("scenarios").join(format!("{name}.yaml"));
    let mut scenario = Scenario::load(path.to_str().unwrap()).unwrap();
    if name == "subtle" {
        scenario.duration_ms = SUBTLE_DURATION_MS;
    }
    let spec = scenario
        .strategies
        .iter()
        .find(|spec| *spec != "instant")
        .unwrap()
        .clone();
    let strategy = resolve_strategy(root().join(&spec).to_str().unwrap()).unwrap();
    (scenario, strategy)
}

/// Runs every case over `seeds` seeds on every core and returns one row per case.
fn run_all(seeds: u64) -> Vec<Row> {
    let loaded: Vec<(Scenario, Strategy)> = CASES.iter().map(|case| load(case.name)).collect();
    let jobs: Vec<(usize, u64)> = (0..CASES.len())
        .flat_map(|case| (1..=seeds).map(move |seed| (case, seed)))
        .collect();
    let rows = Mutex::new(vec![Row::default(); CASES.len()]);
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(&(case, seed)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (scenario, strategy) = &loaded[case];
                    let options = RunOptions {
                        seed: Some(seed),
                        strategies: vec![strategy.clone()],
                        trace: false,
                    };
                    let report = failsmall_sim::run(scenario, &options).unwrap_or_else(|error| {
                        panic!("{} seed {seed}: {error}", CASES[case].name)
                    });
                    rows.lock().unwrap()[case].add(&report.runs[0].metrics);
                }
            });
        }
    });
    rows.into_inner().unwrap()
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<20} {:>5} | {:>8} {:>8} {:>8} {:>10} | {:>8} {:>8} {:>8} {:>8} | {:>9} {:>9}",
        "scenario",
        "seeds",
        "false",
        "good",
        "good",
        "holds",
        "bad",
        "bad",
        "bad",
        "seeds",
        "ran bad",
        "failed"
    );
    println!(
        "{:<20} {:>5} | {:>8} {:>8} {:>8} {:>10} | {:>8} {:>8} {:>8} {:>8} | {:>9} {:>9}",
        "",
        "",
        "rollback",
        "quarant.",
        "complete",
        "(seeds)",
        "rollouts",
        "rolled",
        "complete",
        "missed",
        "mean/max",
        "mean/max"
    );
    for (case, row) in CASES.iter().zip(rows) {
        println!(
            "{:<20} {:>5} | {:>8} {:>8} {:>8} {:>10} | {:>8} {:>8} {:>8} {:>8} | {:>9} {:>9}",
            case.name,
            row.seeds,
            row.false_rollbacks,
            row.good_quarantines,
            row.completed_good,
            format!("{}({})", row.holds, row.seeds_with_hold),
            row.bad_rollouts,
            row.bad_rolled_back,
            row.bad_completed,
            row.seeds_bad_missed,
            format!(
                "{:.1}/{}",
                Row::mean(row.ran_bad_sum, row.seeds),
                row.ran_bad_max
            ),
            format!(
                "{:.1}/{}",
                Row::mean(row.failed_sum, row.seeds),
                row.failed_max
            ),
        );
    }
}

#[test]
fn healthy_versions_are_never_blamed_and_regressions_are_still_caught() {
    let seeds = seeds();
    let started = std::time::Instant::now();
    let rows = run_all(seeds);
    print_table(&rows);
    println!("{} seeds per scenario in {:.1?}", seeds, started.elapsed());
    let row = |name: &str| {
        CASES
            .iter()
            .position(|case| case.name == name)
            .and_then(|index| rows.get(index))
            .unwrap()
    };
    for (case, row) in CASES.iter().zip(&rows) {
        assert_eq!(row.seeds, seeds, "{}", case.name);
        if case.kind == Kind::Bad {
            // Every regression is rolled back in every seed, and never completes.
            assert_eq!(row.seeds_bad_missed, 0, "{}: {row:?}", case.name);
            assert_eq!(row.bad_completed, 0, "{}: {row:?}", case.name);
            assert_eq!(row.false_rollbacks, 0, "{}: {row:?}", case.name);
            assert_eq!(row.good_quarantines, 0, "{}: {row:?}", case.name);
        }
    }
    // Healthy versions: never rolled back, never quarantined.
    for name in [
        "populations",
        "incident",
        "first-version",
        "sparse",
        "two-units",
        "two-units-bad-first",
        "dead-nodes",
    ] {
        let row = row(name);
        assert_eq!(row.false_rollbacks, 0, "{name}: {row:?}");
        assert_eq!(row.good_quarantines, 0, "{name}: {row:?}");
    }
    // A unit's first version has no baseline; its baseline gates pass once the canary has its
    // requests, and it completes.
    assert_eq!(row("first-version").completed_good, seeds);
    // Another unit's failure: with `exclusive_nodes` (the default plan) the second unit's
    // rollout waits for the nodes the first one holds, so the healthy unit completes in every
    // seed and the bad unit is rolled back from its first stage.
    assert_eq!(row("two-units").completed_good, seeds);
    assert_eq!(row("two-units").bad_rolled_back, seeds);
    assert_eq!(row("two-units-bad-first").completed_good, seeds);
    assert_eq!(row("two-units-bad-first").bad_rolled_back, seeds);
    // Sparse traffic: a stage that lacks requests holds instead of blaming the version.
    let sparse = row("sparse");
    assert!(
        sparse.completed_good + sparse.seeds_with_hold >= seeds,
        "{sparse:?}"
    );
    // Dead nodes: left out of the stages, and in no baseline (they send nothing), so the
    // stages judge on the live nodes and the version completes in every seed.
    let dead = row("dead-nodes");
    assert_eq!(dead.completed_good, seeds, "{dead:?}");
    // Different populations: the first stage takes every employee node, whose background
    // error rate (0.4%) is four times the rest of the fleet's. With no employee left out to
    // compare with, the stage observes them before exposing them, and judges them against that
    // pre-period: the unchanged version completes in every seed.
    let populations = row("populations");
    assert_eq!(populations.false_rollbacks, 0, "{populations:?}");
    assert_eq!(populations.good_quarantines, 0, "{populations:?}");
    assert_eq!(populations.completed_good, seeds, "{populations:?}");
    // A fleet-wide incident holds the stage ("fleet unhealthy", or "fleet changed" when the
    // baseline is a pre-period and the nodes without the version got worse too), and the
    // version completes once the incident is over.
    let incident = row("incident");
    assert_eq!(incident.false_rollbacks, 0, "{incident:?}");
    assert_eq!(incident.good_quarantines, 0, "{incident:?}");
    assert_eq!(incident.completed_good, seeds, "{incident:?}");
    // Regressions: no more exposure than today (the worst seed of 100, default plan).
    for (name, ran_bad_max) in [
        ("nov18", 2),
        ("dec5", 2),
        ("subtle", 6),
        ("latency", 6),
        ("region-crash", 16),
    ] {
        let row = row(name);
        assert!(row.ran_bad_max <= ran_bad_max, "{name}: {row:?}");
    }
}

/// Healthy rollouts the bound test runs unless `FAILSMALL_SIM_BOUND_ROLLOUTS` says otherwise
/// (1,000 for the measurement in ARCHITECTURE.md).
const BOUND_ROLLOUTS: u64 = 40;

/// The stated false-positive bound, checked empirically: the default plan's gates are checked
/// continuously (every evaluation interval, through every stage and the soak) on healthy
/// rollouts of the `populations` scenario, one rollout per seed, and a healthy version may be
/// rolled back in at most a 0.1% share of them (with room for chance: at most 3 in 1,000;
/// none in fewer than 300).
#[test]
fn healthy_rollouts_stay_within_the_false_positive_bound() {
    let rollouts = std::env::var("FAILSMALL_SIM_BOUND_ROLLOUTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(BOUND_ROLLOUTS);
    let (scenario, strategy) = load("populations");
    let next = AtomicUsize::new(1);
    let totals = Mutex::new((0u64, 0u64, 0u64));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed) as u64;
                    if seed > rollouts {
                        return;
                    }
                    let options = RunOptions {
                        seed: Some(seed),
                        strategies: vec![strategy.clone()],
                        trace: false,
                    };
                    let report = failsmall_sim::run(&scenario, &options).unwrap();
                    let m = &report.runs[0].metrics;
                    let mut totals = totals.lock().unwrap();
                    totals.0 += m.pushes_accepted;
                    totals.1 += m.rollbacks;
                    totals.2 += m.versions_completed;
                }
            });
        }
    });
    let (pushed, rolled_back, completed) = totals.into_inner().unwrap();
    println!(
        "{rollouts} seeds: {pushed} healthy rollouts, {rolled_back} rolled back, {completed} completed, in {:.1?}",
        started.elapsed()
    );
    assert_eq!(pushed, rollouts);
    let allowed = if rollouts < 300 {
        0
    } else {
        rollouts * 3 / 1_000
    };
    assert!(
        rolled_back <= allowed,
        "{rolled_back} of {pushed} healthy rollouts rolled back"
    );
}
