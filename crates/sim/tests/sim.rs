//! The simulator's acceptance: determinism, the two incidents contained at stage 1, healthy
//! versions never rolled back, a subtle regression caught.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use failsmall_core::domain::UnitName;
use failsmall_core::plan::Plan;
use failsmall_core::select;
use failsmall_sim::{RunOptions, Scenario, SimReport, Strategy, resolve_strategy, run};

fn default_plan() -> Plan {
    match resolve_strategy("examples/plans/default.yaml").unwrap() {
        Strategy::Plan { plan, .. } => plan,
        Strategy::Instant => panic!("the default plan resolved to instant"),
    }
}

/// The default plan without its soak: for scenarios whose producer pushes every few minutes,
/// where each rollout's hour of soak would hold the next versions in the queue.
fn default_plan_without_soak() -> Plan {
    Plan {
        soak_ms: 0,
        ..default_plan()
    }
}

fn both(scenario: &Scenario, seed: Option<u64>, trace: bool) -> SimReport {
    both_with(scenario, seed, trace, default_plan())
}

fn both_with(scenario: &Scenario, seed: Option<u64>, trace: bool, plan: Plan) -> SimReport {
    let options = RunOptions {
        seed,
        strategies: vec![
            Strategy::Instant,
            Strategy::Plan {
                label: "default".into(),
                plan,
            },
        ],
        trace,
    };
    run(scenario, &options).unwrap()
}

/// A short, small copy of a scenario, for loops over many seeds.
fn shrunk(name: &str, duration_ms: u64, nodes_per_pop: u32) -> Scenario {
    let mut scenario = Scenario::built_in(name).unwrap();
    scenario.duration_ms = duration_ms;
    scenario.fleet.nodes_per_pop = nodes_per_pop;
    scenario
}

#[test]
fn same_seed_gives_identical_json_and_trace_and_another_seed_differs() {
    let scenario = shrunk("nov18", 30 * 60_000, 5);
    let first = both(&scenario, Some(42), true);
    let second = both(&scenario, Some(42), true);
    assert_eq!(first.to_json(), second.to_json());
    assert_eq!(first.trace(), second.trace());
    assert!(first.trace().lines().count() > 100);
    let trace = first.trace();
    assert!(
        trace.starts_with("# scenario=nov18 seed=42 strategy=instant\n"),
        "{trace}"
    );
    for line in trace.lines().filter(|line| !line.starts_with('#')) {
        assert!(line.starts_with("t=") && line.contains(" node=") && line.contains(" event="));
    }
    let other = both(&scenario, Some(43), true);
    assert_ne!(
        first.to_json(),
        other.to_json(),
        "seed 43 gave the same numbers as seed 42"
    );
    assert_ne!(first.trace(), other.trace());
    assert_eq!(first.to_json()[0]["seed"], 42);
}

/// The nodes the default plan's first stage selects for the scenario's unit.
fn first_stage_nodes(scenario: &Scenario, seed: u64, plan: &Plan) -> Vec<String> {
    let fleet = scenario.fleet.build(seed).unwrap();
    let unit = UnitName::new(scenario.unit.clone()).unwrap();
    let stage = &plan.stages[0];
    fleet
        .nodes
        .iter()
        .filter(|node| select::stage_selects(stage, &unit, &node.id, &node.labels))
        .map(|node| node.id.to_string())
        .collect()
}

fn assert_contained_at_stage_one(name: &str, seed: Option<u64>) {
    let scenario = Scenario::built_in(name).unwrap();
    let report = both(&scenario, seed, false);
    let instant = &report.runs[0];
    let planned = &report.runs[1];
    let stage_one = first_stage_nodes(&scenario, report.seed, &default_plan());
    assert!(
        !planned.exposed_bad_nodes.is_empty(),
        "{name}: the bad version never started"
    );
    for node in &planned.exposed_bad_nodes {
        assert!(
            stage_one.contains(node),
            "{name}: bad version reached {node}, outside stage 1"
        );
    }
    assert!(planned.metrics.rollbacks >= 1, "{name}: no rollback");
    assert!(instant.metrics.requests_failed > 0);
    assert!(
        planned.metrics.requests_failed as f64 <= 0.001 * instant.metrics.requests_failed as f64,
        "{name}: {} failed requests with the plan, {} with instant",
        planned.metrics.requests_failed,
        instant.metrics.requests_failed
    );
    assert!(planned.metrics.nodes_exposed_max_fraction < 0.1);
    assert_eq!(instant.metrics.nodes_exposed_max_fraction, 1.0);
    assert!(planned.metrics.detect_s.is_some() && planned.metrics.recover_s.is_some());
}

#[test]
fn nov18_never_passes_stage_one_and_costs_a_thousandth_of_instant() {
    assert_contained_at_stage_one("nov18", None);
    // The same bad bytes come back every 10 minutes: quarantined after the first rollback.
    // Without the soak, each good version completes before the next push.
    let report = both_with(
        &Scenario::built_in("nov18").unwrap(),
        None,
        false,
        default_plan_without_soak(),
    );
    let metrics = &report.runs[1].metrics;
    assert!(metrics.pushes_refused >= 5, "{metrics:?}");
    assert_eq!(metrics.rollbacks_of_bad_versions, 1, "{metrics:?}");
    // The good versions in between pass: the fleet flips once, for the one bad hash.
    assert_eq!(metrics.rollbacks, 1, "{metrics:?}");
    assert!(metrics.versions_completed >= 4, "{metrics:?}");
}

#[test]
fn dec5_never_passes_stage_one_and_costs_a_thousandth_of_instant() {
    // The first stage (employees) holds both proxy generations whatever the seed.
    for seed in [None, Some(1), Some(2), Some(3), Some(4)] {
        assert_contained_at_stage_one("dec5", seed);
    }
}

#[test]
fn subtle_error_rate_rise_rolls_back() {
    // A good version first, then the subtle one 10 minutes later: without the soak, the good
    // one completes before the subtle one is pushed.
    let report = both_with(
        &Scenario::built_in("subtle").unwrap(),
        None,
        false,
        default_plan_without_soak(),
    );
    let planned = &report.runs[1];
    assert!(planned.metrics.rollbacks >= 1, "{:?}", planned.metrics);
    assert!(planned.metrics.recover_s.is_some());
    assert!(planned.metrics.requests_failed < report.runs[0].metrics.requests_failed / 10);
}

#[test]
fn healthy_versions_never_roll_back_over_100_seeds() {
    let scenario = shrunk("healthy", 30 * 60_000, 25);
    let options = |seed| RunOptions {
        seed: Some(seed),
        strategies: vec![Strategy::Plan {
            label: "default".into(),
            plan: default_plan_without_soak(),
        }],
        trace: false,
    };
    for seed in 0..100 {
        let report = run(&scenario, &options(seed)).unwrap();
        let metrics = &report.runs[0].metrics;
        assert_eq!(metrics.rollbacks, 0, "seed {seed}: {metrics:?}");
        assert_eq!(metrics.requests_failed, 0, "seed {seed}");
        assert!(metrics.versions_completed >= 1, "seed {seed}: {metrics:?}");
    }
}

#[test]
fn outputs_render() {
    let scenario = shrunk("dec5", 20 * 60_000, 4);
    let report = both(&scenario, Some(5), false);
    let table = report.table();
    assert!(
        table.contains("instant") && table.contains("default"),
        "{table}"
    );
    assert!(table.contains("time to detect"));
    let json = report.to_json();
    for run in json.as_array().unwrap() {
        for key in [
            "strategy",
            "scenario",
            "seed",
            "requests_failed",
            "requests_failed_fraction",
            "nodes_exposed_max_fraction",
            "detect_s",
            "recover_s",
            "rollbacks",
        ] {
            assert!(run.get(key).is_some(), "missing {key} in {run}");
        }
    }
    let svg = report.svg();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains("rollback") && svg.contains("stage started"));
}

#[test]
fn filtered_health_changes_nothing() {
    // Only the canary's and the baseline's health reach the engine by default; sending every
    // node's must give the very same run (the engine ignores the rest).
    // Stages that compare canary with baseline from the second one on.
    let plan = Plan::parse(
        "compare.yaml",
        "name: compare\n\
         defaults: { bake: 1m, timeout: 5m, min_requests: 100, gates: [ 'significant(error_rate > baseline.error_rate)', 'error_rate > 2 * baseline.error_rate' ] }\n\
         stages:\n\
         - { name: employees, select: { cohort: employee }, gates: [ 'error_rate > 0.5%' ] }\n\
         - { name: free-half, select: { cohort: free }, percent: 50% }\n\
         - { name: pro, select: { cohort: [pro, business] }, percent: 50% }\n",
    )
    .unwrap();
    for name in ["dec5", "subtle", "healthy"] {
        let scenario = shrunk(name, 40 * 60_000, 4);
        let options = RunOptions {
            seed: Some(3),
            strategies: vec![Strategy::Plan {
                label: "compare".into(),
                plan: plan.clone(),
            }],
            trace: true,
        };
        let filtered = failsmall_sim::run_with_health_filter(&scenario, &options, true).unwrap();
        let everything = failsmall_sim::run_with_health_filter(&scenario, &options, false).unwrap();
        assert_eq!(filtered.to_json(), everything.to_json(), "{name}");
        assert_eq!(filtered.trace(), everything.trace(), "{name}");
        let stages = filtered.trace().matches("kind=StageStarted").count();
        assert!(
            stages >= 2,
            "{name}: only {stages} stages started; the test needs a baseline"
        );
    }
}

/// Late failures: errors start 15 or 30 minutes after a node applies the version, when the
/// default plan's stage bakes are long over (late30: after its last stage passed). The soak
/// after the last stage, and the gates watching every stage, roll it back while few nodes fail.
#[test]
fn late_failures_roll_back_while_few_nodes_fail() {
    let seeds = [1u64, 2, 3, 4, 5, 6];
    for name in ["late15", "late30"] {
        let scenario = Scenario::built_in(name).unwrap();
        let (mut failing_max, mut exposed_max) = (0f64, 0f64);
        for seed in seeds {
            let options = RunOptions {
                seed: Some(seed),
                strategies: vec![Strategy::Plan {
                    label: "default".into(),
                    plan: default_plan(),
                }],
                trace: false,
            };
            let report = run(&scenario, &options).unwrap();
            let metrics = &report.runs[0].metrics;
            assert_eq!(
                metrics.rollbacks_of_bad_versions, 1,
                "{name} seed {seed}: {metrics:?}"
            );
            assert_eq!(metrics.versions_completed, 0, "{name} seed {seed}");
            assert!(metrics.recover_s.is_some(), "{name} seed {seed}");
            failing_max = failing_max.max(metrics.nodes_failing_max_fraction);
            exposed_max = exposed_max.max(metrics.nodes_exposed_max_fraction);
            eprintln!(
                "{name} seed {seed}: failing at most {:.1}% of nodes, running it at most {:.1}%, detected after {:?} s",
                metrics.nodes_failing_max_fraction * 100.0,
                metrics.nodes_exposed_max_fraction * 100.0,
                metrics.detect_s
            );
        }
        assert!(
            failing_max <= 0.1,
            "{name}: up to {:.1}% of nodes failed before the rollback",
            failing_max * 100.0
        );
        eprintln!(
            "{name}: over seeds {seeds:?}, at most {:.1}% of nodes failing, {:.1}% running it",
            failing_max * 100.0,
            exposed_max * 100.0
        );
    }
}

/// Without the soak, the failure that starts 30 minutes after apply is missed: the rollout
/// completes before any node fails.
#[test]
fn without_the_soak_late30_completes_unnoticed() {
    let options = RunOptions {
        seed: Some(1),
        strategies: vec![Strategy::Plan {
            label: "no-soak".into(),
            plan: default_plan_without_soak(),
        }],
        trace: false,
    };
    let report = run(&Scenario::built_in("late30").unwrap(), &options).unwrap();
    let metrics = &report.runs[0].metrics;
    assert_eq!(metrics.versions_completed, 1, "{metrics:?}");
    assert_eq!(metrics.rollbacks, 0, "{metrics:?}");
    assert_eq!(metrics.nodes_failing_max_fraction, 1.0, "{metrics:?}");
}

/// Healthy versions, the default plan with its hour of soak: never a rollback.
#[test]
fn healthy_versions_never_roll_back_through_the_soak() {
    let scenario = shrunk("healthy", 90 * 60_000, 10);
    for seed in 0..30 {
        let options = RunOptions {
            seed: Some(seed),
            strategies: vec![Strategy::Plan {
                label: "default".into(),
                plan: default_plan(),
            }],
            trace: false,
        };
        let report = run(&scenario, &options).unwrap();
        let metrics = &report.runs[0].metrics;
        assert_eq!(metrics.rollbacks, 0, "seed {seed}: {metrics:?}");
        assert_eq!(metrics.requests_failed, 0, "seed {seed}");
        assert!(metrics.versions_completed >= 1, "seed {seed}: {metrics:?}");
    }
}

/// The agent reports a consumer's crash only while the version is on trial: a crash 30 minutes
/// after apply is reported (and rolls back) during the soak, and never once the version is
/// settled (no soak: the rollout completed first).
#[test]
fn a_late_crash_is_reported_only_while_the_version_is_on_trial() {
    let text = include_str!("../../../scenarios/late30.yaml").replace(
        "effect: { error_rate: 20%, onset: 30m }",
        "effect: { crash: true, onset: 30m }",
    );
    assert!(text.contains("crash: true"));
    let scenario = Scenario::parse("late30-crash.yaml", &text).unwrap();
    let with_plan = |plan: Plan| RunOptions {
        seed: Some(2),
        strategies: vec![Strategy::Plan {
            label: "default".into(),
            plan,
        }],
        trace: true,
    };
    let soaking = run(&scenario, &with_plan(default_plan())).unwrap();
    let trace = soaking.trace();
    assert!(trace.contains("event=crashed"), "no crash reported");
    assert!(
        trace.contains("rolled back during soak: hard signal"),
        "no rollback in the soak"
    );
    assert_eq!(soaking.runs[0].metrics.rollbacks_of_bad_versions, 1);

    let settled = run(&scenario, &with_plan(default_plan_without_soak())).unwrap();
    assert!(!settled.trace().contains("event=crashed"));
    assert_eq!(settled.runs[0].metrics.rollbacks, 0);
}

#[test]
fn dead_nodes_are_down_for_the_server_after_its_threshold_and_up_when_they_report_again() {
    let text = "\
name: dead
duration: 10m
unit: u
fleet:
  nodes_per_pop: 20
dead_nodes:
  - { at: 0s, until: 5m, nodes: 3 }
strategies: [examples/plans/default.yaml]
";
    let scenario = Scenario::parse("dead.yaml", text).unwrap();
    let options = RunOptions {
        seed: Some(1),
        strategies: Vec::new(),
        trace: true,
    };
    let report = run(&scenario, &options).unwrap();
    let liveness: Vec<&String> = report.runs[0]
        .trace
        .iter()
        .filter(|line| line.contains("event=liveness"))
        .collect();
    // Silent since 0 s: the server's first check after 90 s of silence is at 92 s; back at
    // 5 min, it is up at the next check (300 s is one).
    assert_eq!(liveness.len(), 2, "{liveness:?}");
    assert!(liveness[0].starts_with("t=000092.000") && liveness[0].contains("down=3 up=0"));
    assert!(liveness[1].starts_with("t=000300.000") && liveness[1].contains("down=0 up=3"));
}

/// A plan that takes health from Prometheus reads the same consumer counters through it: the
/// simulator sends them as monitored health, and the runs' verdicts are those of the plan
/// without a health source (the engine counts one origin per plan, never both, never none).
#[test]
fn a_plan_with_a_prometheus_health_source_reaches_the_same_verdicts() {
    let monitored = Plan {
        health_source: Some(Box::new(failsmall_core::plan::PrometheusSource {
            url: "http://127.0.0.1:9090".into(),
            node_label: "node".into(),
            requests: "sum by (node) (http_requests_total)".into(),
            errors: "sum by (node) (http_errors_total)".into(),
            latency: None,
            latency_in_ms: false,
            interval_ms: 5_000,
            metrics: Default::default(),
        })),
        ..default_plan_without_soak()
    };
    for name in ["dec5", "subtle", "healthy"] {
        let scenario = shrunk(name, 40 * 60_000, 4);
        let through_agents = both_with(&scenario, Some(5), false, default_plan_without_soak());
        let through_prometheus = both_with(&scenario, Some(5), false, monitored.clone());
        assert_eq!(
            through_agents.runs[1].metrics, through_prometheus.runs[1].metrics,
            "{name}"
        );
    }
}

/// Burn-rate gates in the simulator, as on the server: the agents' health counts in the
/// scenario's SLOs, the feed sends the burn rates every 5 s, and a service burning its budget
/// holds the rollout of a good version (fleet unhealthy: canary and baseline alike) without
/// rolling it back or quarantining it; with the budget burning slowly the gate changes nothing.
#[test]
fn a_burn_rate_gate_holds_a_good_version_while_the_service_burns_its_budget_and_never_blames_it() {
    let gated = {
        let mut plan = default_plan_without_soak();
        for stage in &mut plan.stages {
            stage
                .gates
                .push(failsmall_core::gate::Gate::parse("burn_rate_1h > 14.4").unwrap());
        }
        plan
    };
    let mut scenario = shrunk("healthy", 40 * 60_000, 4);
    // 99.99%: the fleet's 0.1% background errors burn at 10, under the workbook's 14.4.
    scenario.slos = vec![failsmall_core::slo::SloSpec {
        name: "availability".into(),
        unit: UnitName::new(scenario.unit.clone()).unwrap(),
        selector: Default::default(),
        target_percent: 99.99,
        window_ms: 30 * failsmall_core::slo::DAY_MS,
        block_rollouts_when_exhausted: false,
        description: String::new(),
        prometheus: None,
    }];
    let one = |scenario: &Scenario, plan: &Plan| {
        let options = RunOptions {
            seed: Some(5),
            strategies: vec![Strategy::Plan {
                label: "default".into(),
                plan: plan.clone(),
            }],
            trace: true,
        };
        run(scenario, &options).unwrap()
    };
    let calm_plain = one(&scenario, &default_plan_without_soak());
    let calm_gated = one(&scenario, &gated);
    let (plain, with_gate) = (&calm_plain.runs[0].metrics, &calm_gated.runs[0].metrics);
    assert!(plain.versions_completed > 0, "{plain:?}");
    assert_eq!(plain.versions_completed, with_gate.versions_completed);
    assert_eq!(plain.holds, with_gate.holds);
    assert_eq!(with_gate.rollbacks, 0);
    // A fleet-wide incident doubles the errors everywhere (0.2%, under the plan's 0.5% gate):
    // the service burns at about 20.
    scenario.incidents = vec![failsmall_sim::scenario::Incident {
        from_ms: 0,
        until_ms: scenario.duration_ms,
        error_rate: 0.001,
        latency_x: 1.0,
        when: Default::default(),
    }];
    let burning_plain = one(&scenario, &default_plan_without_soak());
    let burning_gated = one(&scenario, &gated);
    let plain = &burning_plain.runs[0].metrics;
    let with_gate = &burning_gated.runs[0].metrics;
    assert!(plain.versions_completed > 0, "{plain:?}");
    assert!(with_gate.holds > plain.holds, "{with_gate:?} vs {plain:?}");
    assert!(
        with_gate.versions_completed < plain.versions_completed,
        "{with_gate:?}"
    );
    assert_eq!(with_gate.rollbacks, 0, "{with_gate:?}");
    assert_eq!(with_gate.quarantines, 0, "{with_gate:?}");
    let trace = burning_gated.trace();
    assert!(
        trace.contains("burn_rate_1h") && trace.contains("fleet unhealthy"),
        "no burn-rate hold in the trace"
    );
}

/// Custom metrics in the simulator: it evaluates no PromQL, so a gate on one has no reading,
/// as when the real Prometheus answers nothing: every stage it gates holds (inconclusive), and
/// no version completes, is rolled back or is quarantined on it — even a bad one, which only
/// the gates the simulator can judge catch.
#[test]
fn a_custom_metric_gate_has_no_reading_in_the_simulator_and_holds() {
    let mut plan = default_plan_without_soak();
    plan.health_source = Some(Box::new(failsmall_core::plan::PrometheusSource {
        url: "http://127.0.0.1:9090".into(),
        node_label: "node".into(),
        requests: "sum by (node) (http_requests_total)".into(),
        errors: "sum by (node) (http_errors_total)".into(),
        latency: None,
        latency_in_ms: false,
        interval_ms: 5_000,
        metrics: [(
            "queue_depth".to_owned(),
            "max by (node) (queue_depth)".to_owned(),
        )]
        .into(),
    }));
    for stage in &mut plan.stages {
        stage.gates = vec![failsmall_core::gate::Gate::parse("custom.queue_depth > 100").unwrap()];
    }
    let report = both_with(&shrunk("healthy", 40 * 60_000, 4), Some(5), true, plan);
    let metrics = &report.runs[1].metrics;
    assert_eq!(metrics.versions_completed, 0, "{metrics:?}");
    assert_eq!(metrics.rollbacks, 0, "{metrics:?}");
    assert_eq!(metrics.quarantines, 0, "{metrics:?}");
    assert!(metrics.holds > 0, "{metrics:?}");
}

/// Nodes reboot while good versions roll out (a few minutes without a word, then back): their
/// silence is the fleet's, which the unexposed nodes show too, not the versions'. No good
/// version is rolled back or quarantined for it, on any seed.
#[test]
fn nodes_rebooting_during_rollouts_never_quarantine_a_good_version() {
    let text = "\
name: reboots
duration: 1h
unit: u
fleet:
  regions: [us-east-1, eu-west-1]
  pops_per_region: 3
  nodes_per_pop: 10
  labels:
    cohort: { employee: 0.05, free: 0.5, pro: 0.2, business: 0.15, enterprise: 0.1 }
  requests_per_s: 50
  error_rate: 0.1%
  latency_ms: 40
producer:
  every: 15m
  pattern: [good]
dead_nodes:
  - { at: 1m, until: 4m, share: 5% }
  - { at: 8m, until: 11m, share: 5% }
  - { at: 16m, until: 19m, share: 5% }
  - { at: 24m, until: 27m, share: 5% }
  - { at: 33m, until: 36m, share: 5% }
  - { at: 46m, until: 49m, share: 5% }
strategies: [examples/plans/default.yaml]
";
    let scenario = Scenario::parse("reboots.yaml", text).unwrap();
    for seed in 1..=6 {
        let options = RunOptions {
            seed: Some(seed),
            strategies: vec![Strategy::Plan {
                label: "default".into(),
                plan: default_plan_without_soak(),
            }],
            trace: false,
        };
        let report = run(&scenario, &options).unwrap();
        let metrics = &report.runs[0].metrics;
        assert_eq!(
            metrics.quarantines_of_good_versions, 0,
            "seed {seed}: {metrics:?}"
        );
        assert_eq!(metrics.rollbacks, 0, "seed {seed}: {metrics:?}");
    }
}
