//! `plan check` numbers on a fleet small enough to check by hand.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use failsmall_core::plan::{
    Concurrency, HardSignals, OnInconclusive, Percent, Plan, Selector, Stage,
};
use failsmall_sim::{
    FleetSpec, PlanCheckLimits, PlanCheckOptions, Strategy, check_plan, resolve_strategy,
};

/// 3 regions × 1 POP × 4 nodes; region `a` carries twice the traffic: 16 traffic units.
const FLEET: &str = "\
regions: [a, b, c]
pops_per_region: 1
nodes_per_pop: 4
traffic_weight:
  region: { a: 2.0 }
";

const OFF: HardSignals = HardSignals {
    rejections_max: 0,
    crashes_max: 0,
    health_check_failures_max: 0,
    silent_nodes_max: 0,
};

fn stage(name: &str, region: Option<&str>, hard_signals: HardSignals) -> Stage {
    let mut selector = Selector::default();
    if let Some(region) = region {
        selector.labels.insert("region".into(), vec![region.into()]);
    }
    Stage {
        name: name.into(),
        selector,
        percent: Percent::ALL,
        bake_ms: 60_000,
        timeout_ms: 300_000,
        gates: vec![],
        min_requests: 0,
        hard_signals,
        silence_ms: 30_000,
        approval: false,
        approvers: 0,
    }
}

fn plan(stages: Vec<Stage>) -> Plan {
    Plan {
        name: "tiny".into(),
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

fn options() -> PlanCheckOptions {
    PlanCheckOptions {
        propagation_ms: 5_000,
        health_interval_ms: 10_000,
        ..Default::default()
    }
}

#[test]
fn exposure_accumulates_until_the_first_stage_that_can_fail() {
    let fleet = FleetSpec::parse("fleet.yaml", FLEET).unwrap();
    let tiny = plan(vec![
        stage("a-blind", Some("a"), OFF),
        stage("b", Some("b"), HardSignals::default()),
        stage("everyone", None, HardSignals::default()),
    ]);
    let report = check_plan(&tiny, &fleet, &options()).unwrap();
    assert_eq!(report.fleet_nodes, 12);
    let exposed: Vec<u64> = report.stages.iter().map(|s| s.nodes_exposed).collect();
    assert_eq!(exposed, vec![4, 8, 12]);
    let traffic: Vec<f64> = report
        .stages
        .iter()
        .map(|s| s.traffic_exposed_fraction)
        .collect();
    assert_eq!(traffic, vec![0.5, 0.75, 1.0]);
    assert!(!report.stages[0].can_fail && report.stages[1].can_fail);
    assert_eq!(report.first_gated_stage, Some(1));
    assert_eq!(report.exposed_nodes_before_gate, 8);
    assert!((report.exposed_nodes_before_gate_fraction - 8.0 / 12.0).abs() < 1e-12);
    assert_eq!(report.exposed_traffic_before_gate_fraction, 0.75);
    // propagation 5s + timeout 300s + one health interval 10s + rollback propagation 5s.
    assert_eq!(report.rollback_worst_ms, Some(320_000));
    assert_eq!(report.stages[0].rollback_worst_ms, None);

    let strict = PlanCheckLimits {
        exposure_fraction_max: Some(0.5),
        rollback_ms_max: Some(300_000),
    };
    let broken = report.exceeds(&strict);
    assert_eq!(broken.len(), 3, "{broken:?}");
    assert!(broken[0].contains("66.67% of nodes"), "{broken:?}");
    assert!(broken[1].contains("75.00% of traffic"), "{broken:?}");
    assert!(broken[2].contains("320s"), "{broken:?}");
    let loose = PlanCheckLimits {
        exposure_fraction_max: Some(0.8),
        rollback_ms_max: Some(400_000),
    };
    assert!(report.exceeds(&loose).is_empty());

    let text = report.text();
    assert!(text.contains("stage \"b\""), "{text}");
    assert!(text.contains("320s"), "{text}");
    assert_eq!(report.to_json()["rollback_worst_ms"], 320_000);
}

#[test]
fn a_plan_that_cannot_fail_exposes_everything_and_never_rolls_back() {
    let fleet = FleetSpec::parse("fleet.yaml", FLEET).unwrap();
    let blind = plan(vec![
        stage("a", Some("a"), OFF),
        stage("everyone", None, OFF),
    ]);
    let report = check_plan(&blind, &fleet, &options()).unwrap();
    assert_eq!(report.first_gated_stage, None);
    assert_eq!(report.exposed_nodes_before_gate, 12);
    assert_eq!(report.rollback_worst_ms, None);
    let broken = report.exceeds(&PlanCheckLimits {
        exposure_fraction_max: None,
        rollback_ms_max: Some(600_000),
    });
    assert_eq!(broken.len(), 1);
    assert!(broken[0].contains("no stage can fail"));
    assert!(report.text().contains("NO stage can fail"));
}

#[test]
fn percent_stages_use_the_engines_buckets() {
    let fleet = FleetSpec::parse("fleet.yaml", "regions: [a]\nnodes_per_pop: 1000\n").unwrap();
    let mut half = stage("half", None, HardSignals::default());
    half.percent = Percent {
        basis_points: 5_000,
    };
    let report = check_plan(&plan(vec![half]), &fleet, &options()).unwrap();
    let exposed = report.stages[0].nodes_exposed;
    assert!((430..=570).contains(&exposed), "{exposed}");
    let other_unit = PlanCheckOptions {
        unit: "another-unit".into(),
        ..options()
    };
    let mut half = stage("half", None, HardSignals::default());
    half.percent = Percent {
        basis_points: 5_000,
    };
    let again = check_plan(&plan(vec![half]), &fleet, &other_unit).unwrap();
    assert_ne!(again.stages[0].nodes_exposed, 0);
}

#[test]
fn the_example_plans_against_the_example_fleet() {
    let fleet_text = include_str!("../../../examples/fleet.yaml");
    let fleet = FleetSpec::parse("examples/fleet.yaml", fleet_text).unwrap();
    let Strategy::Plan { plan: default, .. } =
        resolve_strategy("examples/plans/default.yaml").unwrap()
    else {
        panic!("default plan is not a plan")
    };
    let report = check_plan(&default, &fleet, &options()).unwrap();
    assert_eq!(report.first_gated_stage, Some(0));
    // Employees are 2% of 120 nodes.
    assert_eq!(report.exposed_nodes_before_gate, 2);
    assert!(report.exposed_traffic_before_gate_fraction < 0.05);
    // Its first stage takes every employee, but observes them for its bake first: it has a
    // like-for-like baseline (their own pre-period), so no warning; nor has free-10 (90% of
    // free customers stay unexposed).
    assert!(
        !report.warnings.iter().any(|w| w.contains("like-for-like")),
        "{:?}",
        report.warnings
    );
    // At the example fleet's rate (50 requests/s a node), how long each stage needs to catch
    // errors going 0.1% -> 0.5%: the two employees need more than a minute, within their 2m
    // bake; a stage whose bake is shorter than that is a warning.
    let employees = &report.stages[0];
    let detect_ms = employees.detect_ms.unwrap();
    assert!((30_000..120_000).contains(&detect_ms), "{employees:?}");
    assert!(
        !report
            .warnings
            .iter()
            .any(|w| w.contains("longer than its bake"))
    );
    let mut short = default.clone();
    short.stages[0].bake_ms = 20_000;
    let report_short = check_plan(&short, &fleet, &options()).unwrap();
    assert!(
        report_short
            .warnings
            .iter()
            .any(|w| w.contains("stage \"employees\" needs about")
                && w.contains("longer than its bake of 20s")),
        "{:?}",
        report_short.warnings
    );
    // Without a bake to observe in, the same stage has none.
    let mut no_bake = default.clone();
    no_bake.stages[0].bake_ms = 0;
    let report = check_plan(&no_bake, &fleet, &options()).unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("stage \"employees\" takes every node")
                && w.contains("no like-for-like baseline")),
        "{:?}",
        report.warnings
    );
}

#[test]
fn a_stage_that_exposes_no_node_is_a_warning_not_a_broken_limit() {
    let fleet = FleetSpec::parse("fleet.yaml", FLEET).unwrap();
    // 0.01% of region a's four nodes: none of them.
    let mut sliver = stage("a-sliver", Some("a"), HardSignals::default());
    sliver.percent = Percent { basis_points: 1 };
    let report = check_plan(
        &plan(vec![
            sliver,
            stage("everyone", None, HardSignals::default()),
        ]),
        &fleet,
        &options(),
    )
    .unwrap();
    assert_eq!(report.stages[0].nodes_added, 0);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("\"a-sliver\" exposes no node"),
        "{:?}",
        report.warnings
    );
    assert!(
        report.text().contains("warning: stage \"a-sliver\""),
        "{}",
        report.text()
    );
    assert_eq!(report.to_json()["warnings"][0], report.warnings[0].as_str());
    assert!(report.exceeds(&PlanCheckLimits::default()).is_empty());
    let full = check_plan(
        &plan(vec![stage("everyone", None, HardSignals::default())]),
        &fleet,
        &options(),
    )
    .unwrap();
    assert!(full.warnings.is_empty(), "{:?}", full.warnings);
}

#[test]
fn a_plan_whose_gated_stages_select_no_node_warns_that_nothing_becomes_stable() {
    let ungated_everywhere = plan(vec![
        stage("a-first", Some("a"), OFF),
        stage("gated-nowhere", Some("z"), HardSignals::default()),
        stage("rest", None, OFF),
    ]);
    let report = check_plan(
        &ungated_everywhere,
        &FleetSpec::parse("fleet.yaml", FLEET).unwrap(),
        &options(),
    )
    .unwrap();
    assert!(!report.would_become_stable);
    let warning = report
        .warnings
        .iter()
        .find(|warning| warning.contains("stable version"))
        .unwrap();
    assert!(
        warning.starts_with("plan \"tiny\": no gated stage"),
        "{warning}"
    );
    assert!(report.text().contains(warning.as_str()));

    // One gated stage that selects nodes, even nodes an earlier stage exposed, is enough.
    let gated_rest = plan(vec![
        stage("a-first", Some("a"), OFF),
        stage("gated-a", Some("a"), HardSignals::default()),
    ]);
    let report = check_plan(
        &gated_rest,
        &FleetSpec::parse("fleet.yaml", FLEET).unwrap(),
        &options(),
    )
    .unwrap();
    assert!(report.would_become_stable);
    assert!(
        report
            .warnings
            .iter()
            .all(|w| !w.contains("stable version")),
        "{:?}",
        report.warnings
    );
}

/// A gate on a custom metric is judged on what Prometheus answers, which the simulator cannot
/// produce: `plan check` says so, and estimates no power for it.
#[test]
fn a_custom_metric_gate_is_named_as_one_the_simulator_cannot_judge() {
    let mut gated = stage("a", Some("a"), OFF);
    gated.gates = vec![
        failsmall_core::gate::Gate::parse("custom.queue_depth > 2 * baseline.custom.queue_depth")
            .unwrap(),
    ];
    let fleet = FleetSpec::parse("fleet.yaml", FLEET).unwrap();
    let report = check_plan(
        &plan(vec![gated, stage("rest", None, OFF)]),
        &fleet,
        &options(),
    )
    .unwrap();
    assert!(
        report.warnings.iter().any(|warning| warning.contains("custom.queue_depth")
            && warning.contains("no reading")),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.stages[0].canary_requests_to_detect, None);
    assert!(
        report
            .power
            .is_some_and(|power| power.canary_requests_to_detect.is_none())
    );
}
