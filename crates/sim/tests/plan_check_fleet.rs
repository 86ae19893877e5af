//! `plan check` over a given set of nodes (a control plane's registered fleet): which label
//! values each stage holds, the fleet's own values, and the first gate's power.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use failsmall_core::domain::{Node, NodeId};
use failsmall_core::plan::Plan;
use failsmall_sim::{PlanCheckOptions, check_plan_on_nodes};

fn node(id: &str, cohort: &str, generation: &str) -> Node {
    Node {
        id: NodeId::new(id.to_owned()).unwrap(),
        labels: [("cohort", cohort), ("generation", generation)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

const PLAN: &str = "name: p\ndefaults:\n  gates: ['significant(error_rate > baseline.error_rate)']\nstages:\n  - name: employees\n    select: { cohort: employee }\n  - name: free\n    select: { cohort: free }\n";

#[test]
fn label_values_per_stage_the_fleets_values_and_power() {
    let plan = Plan::parse("p.yaml", PLAN).unwrap();
    let mut nodes = vec![node("emp-1", "employee", "fl2")];
    nodes.extend((0..9).map(|i| {
        node(
            &format!("free-{i}"),
            "free",
            if i < 3 { "fl1" } else { "fl2" },
        )
    }));
    let report = check_plan_on_nodes(&plan, &nodes, &[], &PlanCheckOptions::default()).unwrap();
    assert_eq!(report.fleet_nodes, 10);
    let values = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        values(&report.fleet_label_values["generation"]),
        ["fl1", "fl2"]
    );
    assert_eq!(
        values(&report.stages[0].label_values_selected["generation"]),
        ["fl2"]
    );
    assert_eq!(
        values(&report.stages[1].label_values_selected["generation"]),
        ["fl1", "fl2"]
    );
    assert_eq!(report.exposed_nodes_before_gate, 1);
    // The employee stage takes its whole cohort: it is compared with its own nodes before the
    // version, as much traffic as the canary (half of the two together).
    let power = report.power.as_ref().unwrap();
    assert_eq!(power.stage, "employees");
    assert!((power.canary_traffic_fraction - 0.5).abs() < 1e-12);
    let requests = power.canary_requests_to_detect.unwrap();
    assert!((5_000.0..10_000.0).contains(&requests), "{requests}");
    assert_eq!(report.stages[0].canary_requests_to_detect, Some(requests));
    // Without a request rate there is no time.
    assert_eq!(report.stages[0].detect_ms, None);
    assert!(
        report.text().contains("power of stage \"employees\""),
        "{}",
        report.text()
    );
}

#[test]
fn an_empty_fleet_exposes_nothing() {
    let plan = Plan::parse("p.yaml", PLAN).unwrap();
    let report = check_plan_on_nodes(&plan, &[], &[], &PlanCheckOptions::default()).unwrap();
    assert_eq!(report.fleet_nodes, 0);
    assert_eq!(report.exposed_nodes_before_gate, 0);
    assert_eq!(report.exposed_nodes_before_gate_fraction, 0.0);
    assert!(report.fleet_label_values.is_empty());
    assert_eq!(report.power.unwrap().canary_requests_to_detect, None);
}
