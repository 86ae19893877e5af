//! `failsmall codex check|list|explain` through the real binary: exit codes for CI, text with
//! file and line, JSON, and SARIF 2.1.0 validated against the standard's JSON Schema.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Output};

use serde_json::Value;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn failsmall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_failsmall"))
        .args(args)
        .current_dir(REPO)
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
fn check_exits_3_on_a_deny_and_names_file_line_rule_sentence_and_link() {
    let denied = failsmall(&["codex", "check", "examples/codex/plan-has-gates/violating"]);
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    let text = stdout(&denied);
    assert!(
        text.contains(
            "examples/codex/plan-has-gates/violating/plan.yaml:7:1: deny plan-has-gates:"
        ),
        "{text}"
    );
    assert!(text.contains("If you need to roll out a change"), "{text}");
    assert!(text.contains("docs/codex/plan-has-gates.md"), "{text}");

    let clean = failsmall(&["codex", "check", "examples/codex/plan-has-gates/compliant"]);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));

    // A warning alone does not fail CI.
    let warned = failsmall(&[
        "codex",
        "check",
        "examples/codex/approval-before-exposure/violating",
    ]);
    assert_eq!(warned.status.code(), Some(0), "{}", stdout(&warned));
    assert!(stdout(&warned).contains("warn approval-before-exposure"));
}

#[test]
fn check_as_json_lists_files_and_findings() {
    let output = failsmall(&["codex", "check", "--format", "json", "examples/codex"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["files"].as_array().unwrap().len(), 16);
    let rules: std::collections::BTreeSet<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules.len(), 8, "{rules:?}");
    for finding in report["findings"].as_array().unwrap() {
        assert!(
            finding["file"].as_str().unwrap().contains("/violating/"),
            "{finding}"
        );
        assert!(finding["line"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn check_as_sarif_is_valid_sarif_2_1_0_with_findings_on_their_lines() {
    let output = failsmall(&[
        "codex",
        "check",
        "--format",
        "sarif",
        "examples/codex",
        "examples/plans",
    ]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let log: Value = serde_json::from_str(&stdout(&output)).unwrap();

    let schema_path = format!("{REPO}/crates/codex/tests/sarif-schema-2.1.0.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&log)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    let run = &log["runs"][0];
    assert_eq!(log["version"], "2.1.0");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 8);
    let results = run["results"].as_array().unwrap();
    let instant = results
        .iter()
        .find(|r| {
            r["ruleId"] == "no-instant-plan"
                && r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                    == "examples/plans/instant.yaml"
        })
        .unwrap_or_else(|| panic!("{results:#?}"));
    assert_eq!(instant["level"], "error");
    let region = &instant["locations"][0]["physicalLocation"]["region"];
    assert_eq!(region["startLine"], 7, "{instant}");
    let index = instant["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(rules[index]["id"], "no-instant-plan");
    let warn = results
        .iter()
        .find(|r| r["ruleId"] == "approval-before-exposure")
        .unwrap();
    assert_eq!(warn["level"], "warning");
    // The schema is strict (no unknown properties), so an invalid log is caught: prove it.
    let mut broken = log.clone();
    broken["runs"][0]["results"][0]["level"] = Value::from("fatal");
    assert!(!validator.is_valid(&broken));
}

#[test]
fn list_and_explain_print_the_rules() {
    let list = failsmall(&["codex", "list"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    let text = stdout(&list);
    for id in [
        "first-gate-covers-builds",
        "collections-bounded",
        "fail-mode-declared",
        "exposure-before-gate",
        "rollback-time",
        "plan-has-gates",
        "no-instant-plan",
        "approval-before-exposure",
    ] {
        assert!(text.contains(id), "{id}: {text}");
    }
    let explain = failsmall(&["codex", "explain", "first-gate-covers-builds"]);
    assert_eq!(explain.status.code(), Some(0), "{}", stderr(&explain));
    let text = stdout(&explain);
    assert!(
        text.contains("If you need to change what every consumer build reads"),
        "{text}"
    );
    assert!(text.contains("5 December 2025"), "{text}");

    let unknown = failsmall(&["codex", "explain", "no-such-rule"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("plan-has-gates"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn a_bad_team_rule_directory_is_an_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("failsmall-codex-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("broken.rego"),
        "package failsmall.codex.broken\nrule := {\n",
    )
    .unwrap();
    let output = failsmall(&["codex", "list", "--codex-dir", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("broken.rego"),
        "{}",
        stderr(&output)
    );
}
