//! Plan files at the boundary: text in, a `Plan` or every error (file:line:column field) out.
// Test helpers may panic: a panic is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use failsmall_core::gate::{GateExpr, Verdict};
use failsmall_core::health::{GroupMetrics, HealthSample, LatencyHistogram};
use failsmall_core::plan::{Concurrency, HardSignals, HealthCheck, Percent, Plan, PlanErrors};

/// Parses `text` as `plan.yaml` and checks the errors: each expected entry is the
/// `file:line:column: field` prefix and a part of the message, in order.
fn check(text: &str, expected: &[(&str, &str)]) {
    let errors = match Plan::parse("plan.yaml", text) {
        Ok(plan) => panic!("expected errors, parsed {plan:#?}"),
        Err(PlanErrors { errors }) => errors,
    };
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors.len(),
        expected.len(),
        "errors:\n{}",
        shown.join("\n")
    );
    for (line, (prefix, message_part)) in shown.iter().zip(expected) {
        let location = format!("{prefix}: ");
        assert!(
            line.starts_with(&location),
            "{line:?} does not start with {location:?}"
        );
        assert!(
            line.contains(message_part),
            "{line:?} does not contain {message_part:?}"
        );
    }
}

fn parse_ok(file_name: &str, text: &str) -> Plan {
    Plan::parse(file_name, text).unwrap_or_else(|errors| panic!("{errors}"))
}

fn example(name: &str) -> Plan {
    let path = format!("{}/../../examples/plans/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    parse_ok(name, &text)
}

fn group(requests: u64, errors: u64, latency_ms: f64) -> GroupMetrics {
    let mut latency = LatencyHistogram::default();
    latency.record(latency_ms, requests);
    GroupMetrics {
        nodes: 3,
        sample: HealthSample {
            requests,
            errors,
            latency,
        },
        ..Default::default()
    }
}

fn verdict_kind(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Pass { .. } => "pass",
        Verdict::Fail { .. } => "fail",
        Verdict::Inconclusive { .. } => "inconclusive",
    }
}

#[test]
fn every_example_plan_parses() {
    let dir = format!("{}/../../examples/plans", env!("CARGO_MANIFEST_DIR"));
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.display().to_string();
            let plan = parse_ok(&name, &text);
            assert!(!plan.stages.is_empty(), "{name}");
            parsed += 1;
        }
    }
    assert!(parsed >= 3, "only {parsed} plans in {dir}");
}

#[test]
fn default_plan_means_what_it_says() {
    let plan = example("default.yaml");
    assert_eq!(plan.name, "default");
    assert_eq!(plan.concurrency, Concurrency::Queue);
    assert_eq!(plan.queue_limit, 16);
    assert!(!plan.supersede_queued);
    assert_eq!(plan.health_check, None);
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["employees", "free-10", "free", "pro-business", "enterprise"]
    );
    let [employees, free_10, free, pro_business, enterprise] = &plan.stages[..] else {
        panic!("five stages");
    };
    assert_eq!(employees.selector.labels["cohort"], ["employee"]);
    assert_eq!(employees.bake_ms, 120_000);
    assert_eq!(employees.timeout_ms, 5 * 60_000);
    assert_eq!(free_10.timeout_ms, 8 * 60_000);
    assert_eq!(free_10.percent, Percent { basis_points: 1000 });
    assert_eq!(free_10.bake_ms, 300_000);
    assert_eq!(free.percent, Percent::ALL);
    assert_eq!(pro_business.selector.labels["cohort"], ["pro", "business"]);
    assert_eq!(pro_business.gates.len(), 2);
    assert_eq!(pro_business.min_requests, 1000);
    assert_eq!(free.min_requests, 500);
    assert_eq!(free.gates.len(), 2);
    assert!(
        matches!(free.gates[1].expr, GateExpr::Significant { alpha, .. } if alpha == failsmall_core::gate::ALPHA_DEFAULT)
    );
    assert!(enterprise.approval && !free.approval);
    assert_eq!(enterprise.hard_signals, HardSignals::default());
    assert_eq!(enterprise.silence_ms, 30_000);
}

#[test]
fn seed_plan_rolls_over_regions_and_fails_on_latency_or_errors() {
    let plan = example("seed-hmd.yaml");
    let regions: Vec<&str> = plan
        .stages
        .iter()
        .map(|s| s.selector.labels["region"][0].as_str())
        .collect();
    assert_eq!(regions, ["us-east-1", "eu-west-1", "ap-southeast-2"]);
    assert_eq!(
        plan.health_check,
        Some(HealthCheck {
            path: "/health".into(),
            expect_status: 200,
            timeout_ms: 5000
        })
    );
    for stage in &plan.stages {
        assert_eq!(stage.timeout_ms, 300_000);
        assert_eq!(stage.percent, Percent::ALL);
        assert_eq!(stage.gates.len(), 1);
        let gate = &stage.gates[0];
        let min = stage.min_requests;
        let cases = [
            (group(1000, 1, 120.0), "pass"),
            (group(1000, 1, 450.0), "fail"),
            (group(1000, 6, 120.0), "fail"),
            (group(100, 0, 120.0), "inconclusive"),
        ];
        for (canary, expected) in cases {
            let verdict = gate.evaluate(&canary, None, min);
            assert_eq!(verdict_kind(&verdict), expected, "{verdict:?}");
        }
    }
}

#[test]
fn instant_plan_is_one_stage_everywhere() {
    let plan = example("instant.yaml");
    let [stage] = &plan.stages[..] else {
        panic!("one stage")
    };
    assert!(stage.selector.labels.is_empty());
    assert_eq!(stage.percent, Percent::ALL);
    assert_eq!(stage.bake_ms, 0);
    assert!(stage.gates.is_empty());
    assert_eq!(stage.timeout_ms, 10 * 60_000);
}

#[test]
fn json_plans_are_accepted() {
    let text = r#"{
        "name": "from-json",
        "concurrency": "train",
        "queue_limit": 3,
        "supersede_queued": true,
        "health_check": {"path": "/ready", "expect_status": 204},
        "defaults": {"bake": "30s", "gates": ["error_rate > 1%"]},
        "stages": [
            {"name": "canary", "select": {"pop": ["fra", "ams"]}, "percent": 12.5},
            {"select": {"cohort": "free"}, "percent": "50%", "hard_signals": {"crashes": 0}},
            {"gates": []}
        ]
    }"#;
    let plan = parse_ok("plan.json", text);
    assert_eq!(plan.concurrency, Concurrency::Train);
    assert_eq!(plan.queue_limit, 3);
    assert!(plan.supersede_queued);
    assert_eq!(
        plan.health_check.as_ref().map(|h| h.expect_status),
        Some(204)
    );
    assert_eq!(plan.stages[0].percent, Percent { basis_points: 1250 });
    assert_eq!(plan.stages[1].name, "stage-2");
    assert_eq!(plan.stages[1].percent, Percent { basis_points: 5000 });
    assert_eq!(plan.stages[1].hard_signals.crashes_max, 0);
    assert_eq!(plan.stages[1].hard_signals.rejections_max, 1);
    assert_eq!(plan.stages[1].gates.len(), 1);
    assert_eq!(plan.stages[2].gates.len(), 0);
    assert_eq!(plan.stages[2].bake_ms, 30_000);
    assert_eq!(plan.stages[2].timeout_ms, 30_000 + 600_000);
}

#[test]
fn yaml_syntax_error_names_the_line() {
    check(
        "name: x\nstages:\n  - name: [a\n",
        &[("plan.yaml:4:1: (document)", "YAML syntax error")],
    );
    check("", &[("plan.yaml:1:1: (document)", "empty")]);
    check(
        "name: a\n---\nname: b\n",
        &[("plan.yaml:2:1: (document)", "more than one YAML document")],
    );
    check(
        "name: &n a\nstages:\n  - name: *n\n",
        &[("plan.yaml:3:11: (document)", "aliases")],
    );
}

#[test]
fn unknown_fields_list_what_is_expected() {
    check(
        "name: x\nstages:\n  - name: a\n    bakee: 1m\n",
        &[(
            "plan.yaml:4:5: stages[0].bakee",
            "unknown field `bakee`, expected one of: name, select",
        )],
    );
    check(
        "name: x\nstage: []\n",
        &[
            ("plan.yaml:2:1: stage", "unknown field `stage`"),
            ("plan.yaml:1:1: stages", "missing field `stages`"),
        ],
    );
    check(
        "name: x\ndefaults: { hard_signals: { nacks: 1 } }\nstages: [{}]\n",
        &[(
            "plan.yaml:2:29: defaults.hard_signals.nacks",
            "expected one of: rejections, crashes",
        )],
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    check(
        "name: x\nsupersede_queued: yes\nqueue_limit: 2000\nstages:\n  - approval: 1\n    select: { cohort: {a: b} }\n    gates: error_rate > 1%\n",
        &[
            (
                "plan.yaml:2:19: supersede_queued",
                "expected true or false, found `yes`",
            ),
            (
                "plan.yaml:3:14: queue_limit",
                "expected a whole number from 0 to 1000",
            ),
            (
                "plan.yaml:5:15: stages[0].approval",
                "expected true or false",
            ),
            (
                "plan.yaml:6:23: stages[0].select.cohort",
                "expected a label value",
            ),
            (
                "plan.yaml:7:12: stages[0].gates",
                "expected a list of gate expressions",
            ),
        ],
    );
    check(
        "- a\n- b\n",
        &[(
            "plan.yaml:1:1: (document)",
            "expected a mapping with `name` and `stages`",
        )],
    );
    check(
        "name: x\nstages: {}\n",
        &[("plan.yaml:2:9: stages", "expected a list of stages")],
    );
    check(
        "name: x\nstages: []\n",
        &[("plan.yaml:2:9: stages", "0 stages; expected 1 to 64")],
    );
    check(
        "name: x\nconcurrency: parallel\nstages: [{}]\n",
        &[("plan.yaml:2:14: concurrency", "expected queue or train")],
    );
}

#[test]
fn bad_durations_are_located() {
    check(
        "name: x\nstages:\n  - bake: 30\n  - timeout: 5min\n  - silence: 0s\n  - bake: 10m\n    timeout: 5m\n",
        &[
            ("plan.yaml:3:11: stages[0].bake", "add a unit: 30s, 5m"),
            ("plan.yaml:4:14: stages[1].timeout", "unknown unit \"min\""),
            ("plan.yaml:5:14: stages[2].silence", "longer than 0s"),
            (
                "plan.yaml:7:14: stages[3].timeout",
                "timeout 5m is shorter than bake 10m",
            ),
        ],
    );
    check(
        "name: x\nhealth_check: { path: health, timeout: 1h }\nstages: [{}]\n",
        &[
            ("plan.yaml:2:23: health_check.path", "starting with `/`"),
            ("plan.yaml:2:40: health_check.timeout", "at most 5m"),
        ],
    );
}

#[test]
fn bad_percents_are_located() {
    check(
        "name: x\nstages:\n  - percent: 0%\n  - percent: 101\n  - percent: 12.345%\n  - percent: ten\n",
        &[
            (
                "plan.yaml:3:14: stages[0].percent",
                "above 0 and at most 100",
            ),
            ("plan.yaml:4:14: stages[1].percent", "found `101`"),
            ("plan.yaml:5:14: stages[2].percent", "two decimals"),
            ("plan.yaml:6:14: stages[3].percent", "found `ten`"),
        ],
    );
}

#[test]
fn bad_gates_point_into_the_expression() {
    check(
        "name: x\nstages:\n  - name: a\n  - name: b\n    gates:\n      - error_rate > 1%\n      - p99_latency > 0.5%\n      - error_rate > 0.005\n      - \"errors >\"\n      - p99_latncy > 2ms\n",
        &[
            (
                "plan.yaml:7:21: stages[1].gates[1]",
                "(latency in ms) with `0.5%` (ratio in %)",
            ),
            ("plan.yaml:8:20: stages[1].gates[2]", "0.5%"),
            (
                "plan.yaml:9:9: stages[1].gates[3]",
                "found the end of the gate",
            ),
            (
                "plan.yaml:10:9: stages[1].gates[4]",
                "unknown metric `p99_latncy`",
            ),
        ],
    );
    check(
        "name: x\nstages:\n  - min_requests: 10\n    gates: [min_requests 20, min_requests 20]\n",
        &[("plan.yaml:4:30: stages[0].gates[1]", "appears twice")],
    );
    check(
        "name: x\nstages:\n  - min_requests: 10\n    gates: [crashes > 0, min_requests 20]\n",
        &[(
            "plan.yaml:4:26: stages[0].gates",
            "`min_requests 20` contradicts `min_requests: 10`",
        )],
    );
}

#[test]
fn min_requests_line_sets_the_stage_sample() {
    let plan = parse_ok(
        "plan.yaml",
        "name: x\ndefaults:\n  gates: [min_requests 50, crashes > 2]\nstages:\n  - {}\n  - gates: [min_requests 70]\n  - min_requests: 9\n",
    );
    let sample: Vec<u64> = plan.stages.iter().map(|s| s.min_requests).collect();
    assert_eq!(sample, [50, 70, 9]);
    assert_eq!(plan.stages[0].gates.len(), 1);
    assert!(plan.stages[1].gates.is_empty());
}

#[test]
fn duplicates_are_refused() {
    check(
        "name: x\nname: y\nstages:\n  - name: a\n    bake: 1m\n    bake: 2m\n  - name: a\n  - {}\n  - name: stage-3\n",
        &[
            (
                "plan.yaml:2:1: name",
                "duplicate key `name` (first set on line 1)",
            ),
            ("plan.yaml:6:5: stages[0].bake", "duplicate key `bake`"),
            (
                "plan.yaml:7:11: stages[1].name",
                "duplicate stage name `a` (also stages[0])",
            ),
            (
                "plan.yaml:9:11: stages[3].name",
                "duplicate stage name `stage-3` (also stages[2])",
            ),
        ],
    );
    check(
        r#"{"name": "x", "stages": [{"name": "a", "name": "b"}]}"#,
        &[("plan.yaml:1:40: stages[0].name", "duplicate key `name`")],
    );
}

#[test]
fn duplicate_names_are_found_even_in_stages_with_other_errors() {
    check(
        "name: x\nstages:\n  - name: a\n    bake: 1\n  - name: a\n    percent: 0\n",
        &[
            ("plan.yaml:4:11: stages[0].bake", "add a unit"),
            ("plan.yaml:6:14: stages[1].percent", "found `0`"),
            ("plan.yaml:5:11: stages[1].name", "duplicate stage name `a`"),
        ],
    );
}

#[test]
fn every_error_is_collected_and_nothing_half_loads() {
    let text = "name: bad name\nqueue_limit: -1\ndefaults:\n  bake: soon\nstages:\n  - percent: 0\n    gates: [requests > 1ms]\n";
    let errors = Plan::parse("p.yaml", text).unwrap_err().errors;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "name",
            "queue_limit",
            "defaults.bake",
            "stages[0].percent",
            "stages[0].gates[0]"
        ]
    );
    assert!(
        errors
            .iter()
            .all(|e| e.file == "p.yaml" && e.line > 0 && e.column > 0)
    );
}

#[test]
fn limits_are_enforced() {
    let many_stages: String = (0..65).map(|i| format!("  - name: s{i}\n")).collect();
    check(
        &format!("name: x\nstages:\n{many_stages}"),
        &[("plan.yaml:3:3: stages", "65 stages")],
    );
    let many_gates: String = (0..33)
        .map(|i| format!("      - crashes > {i}\n"))
        .collect();
    check(
        &format!("name: x\nstages:\n  - gates:\n{many_gates}"),
        &[(
            "plan.yaml:4:7: stages[0].gates",
            "33 gates; the limit is 32",
        )],
    );
    let huge = format!("name: x\n#{}\nstages: [{{}}]\n", "x".repeat(1024 * 1024));
    check(
        &huge,
        &[("plan.yaml:1:1: (document)", "the limit is 1048576 bytes")],
    );
    let deep = format!(
        "name: x\nstages: [{{}}]\nx: {}{}",
        "[".repeat(40),
        "]".repeat(40)
    );
    check(&deep, &[("plan.yaml:3:19: (document)", "deeper than 16")]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const DEFAULT_PLAN: &str = include_str!("../../../examples/plans/default.yaml");

    proptest! {
        /// No text makes the parser panic; it loads a plan or says where it is wrong.
        #[test]
        fn parser_never_panics(text in "\\PC{0,300}") {
            if let Err(errors) = Plan::parse("p.yaml", &text) {
                prop_assert!(!errors.errors.is_empty());
                prop_assert!(errors.errors.iter().all(|e| e.line >= 1 && e.column >= 1));
            }
        }

        /// Damaging a real plan anywhere never panics and never half-loads.
        #[test]
        fn damaged_plan_never_panics(
            at in 0..DEFAULT_PLAN.len(),
            length in 0usize..20,
            insert in "[ :\\-\\[\\]{}%0-9a-z\\n]{0,6}",
        ) {
            let mut text = DEFAULT_PLAN.to_owned();
            let start = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (start + length).min(text.len());
            let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text.replace_range(start..end, &insert);
            match Plan::parse("default.yaml", &text) {
                Ok(plan) => prop_assert!(!plan.stages.is_empty() && plan.stages.len() <= 64),
                Err(errors) => prop_assert!(!errors.errors.is_empty()),
            }
        }
    }
}

#[test]
fn soak_defaults_to_an_hour_takes_0s_and_has_an_upper_bound() {
    let plan = parse_ok("p.yaml", "name: x\nstages: [{}]\n");
    assert_eq!(plan.soak_ms, failsmall_core::plan::SOAK_DEFAULT_MS);
    assert_eq!(plan.soak_ms, 3_600_000);
    assert_eq!(
        parse_ok("p.yaml", "name: x\nsoak: 0s\nstages: [{}]\n").soak_ms,
        0
    );
    assert_eq!(
        parse_ok("p.yaml", "name: x\nsoak: 7d\nstages: [{}]\n").soak_ms,
        7 * 24 * 3_600_000
    );
    check(
        "name: x\nsoak: 8d\nstages: [{}]\n",
        &[("plan.yaml:2:7: soak", "longer than the limit of 7 days")],
    );
    check(
        "name: x\nsoak: soon\nstages: [{}]\n",
        &[("plan.yaml:2:7: soak", "duration")],
    );
    assert_eq!(example("default.yaml").soak_ms, 3_600_000);
    assert_eq!(example("instant.yaml").soak_ms, 0);
    assert_eq!(example("demo.yaml").soak_ms, 5_000);
}

#[test]
fn approvers_imply_an_approval_and_are_bounded() {
    let plan = failsmall_core::plan::Plan::parse(
        "p.yaml",
        "name: x\nstages:\n  - name: a\n    approvers: 2\n  - name: b\n",
    )
    .unwrap();
    assert!(plan.stages[0].approval);
    assert_eq!(plan.stages[0].approvers, 2);
    assert!(!plan.stages[1].approval);
    let error = failsmall_core::plan::Plan::parse(
        "p.yaml",
        "name: x\nstages:\n  - name: a\n    approvers: 11\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("approvers"), "{error}");
}

#[test]
fn a_prometheus_health_source_parses_and_its_mistakes_are_named() {
    let base = "name: p\nstages:\n  - name: all\n";
    let plan = parse_ok(
        "plan.yaml",
        &format!(
            "health_source:\n  prometheus:\n    url: http://127.0.0.1:9090/\n    node_label: node\n    requests: sum by (node) (http_requests_total)\n    errors: sum by (node) (http_errors_total)\n    latency: sum by (node, le) (http_request_duration_seconds_bucket)\n    interval: 2s\n{base}"
        ),
    );
    let source = plan.health_source.unwrap();
    assert_eq!(source.url, "http://127.0.0.1:9090");
    assert_eq!(source.node_label, "node");
    assert_eq!(source.interval_ms, 2_000);
    assert!(source.latency.is_some() && !source.latency_in_ms);
    // Without one, health comes from the agents.
    assert!(parse_ok("plan.yaml", base).health_source.is_none());

    check(
        &format!(
            "health_source:\n  prometheus:\n    url: ftp://x\n    node_label: 9node\n    requests: ''\n    interval: 100ms\n{base}"
        ),
        &[
            ("plan.yaml:3:10: health_source.prometheus.url", "base URL"),
            (
                "plan.yaml:4:17: health_source.prometheus.node_label",
                "label name",
            ),
            (
                "plan.yaml:5:15: health_source.prometheus.requests",
                "PromQL query",
            ),
            (
                "plan.yaml:6:15: health_source.prometheus.interval",
                "expected from 1s to 5m",
            ),
            (
                "plan.yaml:3:5: health_source.prometheus.errors",
                "missing field `errors`",
            ),
        ],
    );
    check(
        &format!("health_source:\n  datadog: {{}}\n{base}"),
        &[("plan.yaml:2:3: health_source.datadog", "unknown field")],
    );
}

#[test]
fn custom_metrics_are_declared_by_the_source_and_gates_may_name_only_those() {
    let source = "health_source:\n  prometheus:\n    url: http://127.0.0.1:9090\n    node_label: node\n    requests: sum by (node) (r)\n    errors: sum by (node) (e)\n    metrics:\n      queue_depth: max by (node) (edge_queue_depth)\n      retries: sum by (node) (rate(edge_retries_total[1m]))\n";
    let plan = parse_ok(
        "plan.yaml",
        &format!(
            "name: p\n{source}stages:\n  - name: all\n    gates:\n      - custom.queue_depth > 100\n      - custom.retries > 1.5 * baseline.custom.retries\n"
        ),
    );
    let declared = &plan.health_source.unwrap().metrics;
    assert_eq!(
        declared.keys().map(String::as_str).collect::<Vec<_>>(),
        ["queue_depth", "retries"]
    );
    let gates = &plan.stages[0].gates;
    assert_eq!(gates[0].custom_metrics(), ["queue_depth"]);
    assert!(!gates[0].reads_baseline() && gates[1].reads_baseline());

    // An undeclared name (a typo) is refused, naming the gate, the metric and the declared ones.
    check(
        &format!(
            "name: p\n{source}stages:\n  - name: all\n    gates:\n      - custom.queue_dept > 100\n"
        ),
        &[(
            "plan.yaml:14:9: stages[0].gates[0]",
            "gate `custom.queue_dept > 100` reads custom.queue_dept, which health_source.prometheus.metrics does not declare (it declares: queue_depth, retries)",
        )],
    );
    // In the defaults too; and without a health source at all.
    check(
        "name: p\ndefaults:\n  gates: [custom.queue_depth > 100]\nstages:\n  - name: all\n",
        &[(
            "plan.yaml:3:11: defaults.gates[0]",
            "reads custom.queue_depth, but the plan has no health_source",
        )],
    );
    // Bad names and too many metrics.
    let many: String = (0..=failsmall_core::health::CUSTOM_METRICS_MAX)
        .map(|index| format!("      m{index}: up\n"))
        .collect();
    check(
        &format!(
            "name: p\nhealth_source:\n  prometheus:\n    url: http://127.0.0.1:9090\n    node_label: node\n    requests: r\n    errors: e\n    metrics:\n{many}stages:\n  - name: all\n"
        ),
        &[(
            "plan.yaml:9:7: health_source.prometheus.metrics",
            "17 custom metrics; at most 16",
        )],
    );
    check(
        "name: p\nhealth_source:\n  prometheus:\n    url: http://127.0.0.1:9090\n    node_label: node\n    requests: r\n    errors: e\n    metrics:\n      Queue-Depth: up\n      empty: ''\nstages:\n  - name: all\n",
        &[
            (
                "plan.yaml:9:20: health_source.prometheus.metrics.Queue-Depth",
                "expected a custom metric name of [a-z][a-z0-9_]*",
            ),
            (
                "plan.yaml:10:14: health_source.prometheus.metrics.empty",
                "PromQL query",
            ),
        ],
    );
}
