//! The subcommands that need no server: `sim`, `plan check` and `validate`, through the real binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Output};

use serde_json::Value;

fn failsmall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_failsmall"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn sim_compares_strategies_as_a_table_and_as_json() {
    let table = failsmall(&["sim", "dec5"]);
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.contains("scenario dec5 (seed 5)"), "{text}");
    assert!(
        text.contains("instant") && text.contains("plan:default"),
        "{text}"
    );

    let json = failsmall(&["sim", "dec5", "-o", "json", "--seed", "9"]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let runs: Value = serde_json::from_slice(&json.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let by_strategy = |name: &str| runs.iter().find(|run| run["strategy"] == name).unwrap();
    let (instant, plan) = (by_strategy("instant"), by_strategy("plan:default"));
    for run in [instant, plan] {
        assert_eq!(run["seed"], 9);
        for field in [
            "requests_failed_fraction",
            "nodes_exposed_max_fraction",
            "rollbacks",
        ] {
            assert!(run[field].is_number(), "{field} in {run}");
        }
    }
    assert_eq!(instant["nodes_exposed_max_fraction"], 1.0);
    let contained = plan["nodes_exposed_max_fraction"].as_f64().unwrap();
    assert!(contained < 0.05, "{plan}");
    let failed = |run: &Value| run["requests_failed"].as_f64().unwrap();
    assert!(
        failed(plan) <= failed(instant) * 0.001,
        "{plan} vs {instant}"
    );
}

#[test]
fn sim_writes_an_svg_timeline_and_the_same_seed_gives_the_same_output() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let svg = dir.join("healthy.svg");
    let first = failsmall(&["sim", "healthy", "--svg", svg.to_str().unwrap()]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(
        picture.starts_with("<svg") && picture.contains("</svg>"),
        "{picture}"
    );
    let second = failsmall(&["sim", "healthy", "--svg", svg.to_str().unwrap()]);
    assert_eq!(stdout(&first), stdout(&second));
}

#[test]
fn sim_refuses_an_unknown_scenario_and_names_the_built_in_ones() {
    let output = failsmall(&["sim", "nov19"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("nov19") && message.contains("nov18"),
        "{message}"
    );
}

#[test]
fn plan_check_passes_the_default_plan_and_exits_3_for_an_instant_push() {
    let good = failsmall(&["plan", "check", "examples/plans/default.yaml"]);
    assert_eq!(good.status.code(), Some(0), "{}", stdout(&good));
    assert!(stdout(&good).contains("within limits"), "{}", stdout(&good));

    let instant = failsmall(&["plan", "check", "examples/plans/instant.yaml", "-o", "json"]);
    assert_eq!(instant.status.code(), Some(3), "{}", stderr(&instant));
    let report: Value = serde_json::from_slice(&instant.stdout).unwrap();
    assert_eq!(report["exposed_nodes_before_gate_fraction"], 1.0);
    assert!(
        !report["over_limits"].as_array().unwrap().is_empty(),
        "{report}"
    );

    let strict = failsmall(&[
        "plan",
        "check",
        "examples/plans/default.yaml",
        "--max-exposure",
        "1%",
        "--max-rollback",
        "1m",
    ]);
    assert_eq!(strict.status.code(), Some(3), "{}", stdout(&strict));
    assert!(
        stdout(&strict).contains("OVER LIMIT"),
        "{}",
        stdout(&strict)
    );
}

#[test]
fn plan_check_errors_name_the_file_line_and_field() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let plan = dir.join("bad.yaml");
    std::fs::write(
        &plan,
        "name: bad\nstages:\n  - name: one\n    bake: 5\n    gates:\n      - p99_latency > 0.5%\n",
    )
    .unwrap();
    let output = failsmall(&["plan", "check", plan.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("bad.yaml:4:") && message.contains("stages[0].bake"),
        "{message}"
    );
    assert!(
        message.contains("bad.yaml:6:") && message.contains("stages[0].gates[0]"),
        "{message}"
    );

    let missing = failsmall(&["plan", "check", "no/such/plan.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("no/such/plan.yaml"),
        "{}",
        stderr(&missing)
    );

    let usage = failsmall(&[
        "plan",
        "check",
        "examples/plans/default.yaml",
        "--max-exposure",
        "lots",
    ]);
    assert_eq!(usage.status.code(), Some(1));
    assert!(
        stderr(&usage).contains("--max-exposure"),
        "{}",
        stderr(&usage)
    );
}

/// The example units the README points at: each example file is valid for its unit's spec,
/// and the 18 Nov file is refused for its 412 features, as the server would.
#[test]
fn the_example_units_validate_against_their_specs() {
    for (unit, file) in [
        ("bot-features", "bot-features.json"),
        ("rules", "rules.json"),
        ("rules", "rules-killswitch.json"),
    ] {
        let output = failsmall(&[
            "validate",
            unit,
            &format!("examples/units/{file}"),
            "--spec",
            &format!("examples/units/{unit}.spec.yaml"),
        ]);
        assert_eq!(output.status.code(), Some(0), "{file}: {}", stderr(&output));
        assert!(stdout(&output).contains("a valid version"), "{file}");
    }
    let output = failsmall(&[
        "validate",
        "bot-features",
        "examples/units/bot-features-oversized.json",
        "--spec",
        "examples/units/bot-features.spec.yaml",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("412 entries, limit 200"),
        "{}",
        stderr(&output)
    );
}
