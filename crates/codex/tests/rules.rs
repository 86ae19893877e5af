//! The starter Codex: it loads, its Rego tests pass, and each rule passes its compliant
//! example and denies (or warns about) its violating one, from `examples/codex/<rule>/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use failsmall_codex::offline::{built_in_fleet, check_paths};
use failsmall_codex::{Codex, RuleConfig, Severity};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_starter_codex_loads_and_its_rule_tests_pass() {
    let codex = Codex::starter().unwrap();
    let tests = codex.run_tests();
    assert!(tests.len() >= 16, "{tests:#?}");
    let failed: Vec<_> = tests.iter().filter(|t| !t.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let ids: Vec<&str> = codex.rules().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 8, "{ids:?}");
    for rule in codex.rules() {
        assert!(rule.sentence.starts_with("If you need"), "{rule:?}");
        assert!(
            repo().join(&rule.link).is_file(),
            "{}: {}",
            rule.id,
            rule.link
        );
        assert!(Codex::starter_doc(&rule.id).is_some(), "{}", rule.id);
    }
}

#[test]
fn the_codex_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Codex>();
}

/// Runs the Codex on `examples/codex/<rule>/<case>` over the built-in fleet.
fn check(rule: &str, case: &str) -> failsmall_codex::offline::CheckReport {
    let codex = Codex::starter().unwrap();
    let path = repo().join("examples/codex").join(rule).join(case);
    assert!(path.is_dir(), "{}", path.display());
    let report = check_paths(
        &codex,
        &[path],
        &built_in_fleet().unwrap(),
        &RuleConfig::default(),
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert!(!report.files.is_empty(), "{rule}/{case}: no file checked");
    report
}

/// The compliant example breaks no rule at all; the violating one breaks `rule`, with the
/// rule's severity, sentence and link, on a line of the example file.
fn rule_case(rule: &str, severity: Severity) {
    let compliant = check(rule, "compliant");
    assert!(
        compliant.findings.is_empty(),
        "{rule}/compliant: {:#?}",
        compliant.findings
    );
    let violating = check(rule, "violating");
    let codex = Codex::starter().unwrap();
    let expected = codex.rule(rule).unwrap();
    assert_eq!(expected.severity, severity);
    let found: Vec<_> = violating
        .findings
        .iter()
        .filter(|f| f.rule == rule)
        .collect();
    assert!(
        !found.is_empty(),
        "{rule}/violating: {:#?}",
        violating.findings
    );
    for finding in found {
        assert_eq!(finding.severity, severity);
        assert_eq!(finding.sentence, expected.sentence);
        assert_eq!(finding.link, expected.link);
        let file = finding.file.as_deref().unwrap();
        assert!(file.contains(&format!("{rule}/violating/")), "{file}");
        assert!(finding.line.unwrap() > 1, "{finding:?}");
    }
}

#[test]
fn first_gate_covers_builds() {
    rule_case("first-gate-covers-builds", Severity::Deny);
}

#[test]
fn collections_bounded() {
    rule_case("collections-bounded", Severity::Deny);
}

#[test]
fn fail_mode_declared() {
    rule_case("fail-mode-declared", Severity::Deny);
}

#[test]
fn exposure_before_gate() {
    rule_case("exposure-before-gate", Severity::Deny);
}

#[test]
fn rollback_time() {
    rule_case("rollback-time", Severity::Deny);
}

#[test]
fn plan_has_gates() {
    rule_case("plan-has-gates", Severity::Deny);
}

#[test]
fn no_instant_plan() {
    rule_case("no-instant-plan", Severity::Deny);
}

#[test]
fn approval_before_exposure() {
    rule_case("approval-before-exposure", Severity::Warn);
}

/// The shipped examples (the default, demo and walkthrough plans, the incident units) keep to
/// the Codex;
/// `instant.yaml` (today's practice) and `seed-hmd.yaml` (regions, a third of the fleet
/// first) are the counter-examples.
#[test]
fn the_shipped_plans_and_units_keep_to_the_codex() {
    let codex = Codex::starter().unwrap();
    let report = check_paths(
        &codex,
        &[repo().join("examples/plans"), repo().join("examples/units")],
        &built_in_fleet().unwrap(),
        &RuleConfig::default(),
    )
    .unwrap();
    let mut denied: Vec<String> = report
        .findings
        .iter()
        .filter_map(|f| f.file.as_deref())
        .map(|file| file.rsplit('/').next().unwrap_or(file).to_owned())
        .collect();
    denied.dedup();
    assert_eq!(
        denied,
        ["instant.yaml", "seed-hmd.yaml"],
        "{:#?}",
        report.findings
    );
    assert_eq!(report.files.len(), 7);
}

/// A team rule from a directory joins the starter Codex; one whose own tests fail, or that
/// lacks its metadata, refuses the whole set with the file named.
#[test]
fn team_rules_load_from_a_directory_and_are_checked_at_load() {
    let scratch = failsmall_testkit::scratch_dir("failsmall-codex-");
    let dir = scratch.path().to_owned();
    let rule = r#"package failsmall.codex.team.owner_named

rule := {
	"id": "owner-named",
	"severity": "warn",
	"sentence": "If you need someone to answer for a plan, use a plan name that starts with the team's name.",
	"link": "https://wiki.example/codex/owner-named",
}

violations contains v if {
	is_object(input.plan)
	not startswith(input.plan.name, "edge-")
	v := {"message": sprintf("plan %q does not start with edge-", [input.plan.name]), "field": "name"}
}
"#;
    let test = r#"package failsmall.codex.team.owner_named_test

import data.failsmall.codex.team.owner_named as rule

test_edge_passes if {
	count(rule.violations) == 0 with input as {"plan": {"name": "edge-default"}}
}

test_other_warns if {
	count(rule.violations) == 1 with input as {"plan": {"name": "default"}}
}
"#;
    std::fs::write(dir.join("owner_named.rego"), rule).unwrap();
    std::fs::write(dir.join("owner_named_test.rego"), test).unwrap();
    let codex = Codex::load(std::slice::from_ref(&dir)).unwrap();
    let team = codex.rule("owner-named").unwrap();
    assert!(!team.starter);
    assert_eq!(team.severity, Severity::Warn);

    // A failing test refuses the set.
    std::fs::write(
        dir.join("owner_named_test.rego"),
        test.replace("== 1 with", "== 2 with"),
    )
    .unwrap();
    let error = Codex::load(std::slice::from_ref(&dir))
        .unwrap_err()
        .to_string();
    assert!(error.contains("test_other_warns"), "{error}");

    // Metadata without the sentence refuses the set.
    std::fs::write(dir.join("owner_named_test.rego"), test).unwrap();
    std::fs::write(
        dir.join("owner_named.rego"),
        rule.replace("If you need someone", "Someone"),
    )
    .unwrap();
    let error = Codex::load(std::slice::from_ref(&dir))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("owner_named.rego") && error.contains("If you need"),
        "{error}"
    );

    // A file that does not parse names itself.
    std::fs::write(
        dir.join("owner_named.rego"),
        "package failsmall.codex.x\nrule := {\n",
    )
    .unwrap();
    let error = Codex::load(std::slice::from_ref(&dir))
        .unwrap_err()
        .to_string();
    assert!(error.contains("owner_named.rego"), "{error}");
}

/// The team rule the README shows loads, and its tests pass: the documentation is a test.
#[test]
fn the_readme_example_team_rule_loads_and_its_tests_pass() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let scratch = failsmall_testkit::scratch_dir("failsmall-codex-readme-");
    let dir = scratch.path().to_owned();
    let mut written = 0;
    for block in readme.split("```rego\n").skip(1) {
        let body = block.split("```").next().unwrap();
        let first = body.lines().next().unwrap();
        let name = first.strip_prefix("# codex/").unwrap();
        std::fs::write(dir.join(name), body).unwrap();
        written += 1;
    }
    assert_eq!(written, 2);
    let codex = Codex::load(std::slice::from_ref(&dir)).unwrap();
    assert!(codex.rule("edge-soak").is_some());
    let tests = codex.run_tests();
    assert!(
        tests
            .iter()
            .any(|t| t.name == "test_ten_minutes_is_denied" && t.passed)
    );
}

/// Every plan and spec in the repository (examples, scenarios, the Codex's own examples) is
/// judged by every rule without a rule failing to evaluate, and every finding lands on a line.
#[test]
fn every_file_of_the_repository_is_judged_without_a_broken_rule() {
    let codex = Codex::starter().unwrap();
    let report = check_paths(
        &codex,
        &[repo().join("examples"), repo().join("scenarios")],
        &built_in_fleet().unwrap(),
        &RuleConfig::default(),
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert!(report.files.len() >= 20, "{:#?}", report.files);
    for finding in &report.findings {
        assert!(
            !finding.message.contains("could not be evaluated"),
            "{finding:#?}"
        );
        assert!(
            finding.file.is_some() && finding.line.is_some(),
            "{finding:#?}"
        );
    }
}

/// A rule that fails at evaluation denies, saying so: a broken rule never lets a change through.
#[test]
fn a_rule_that_fails_to_evaluate_denies() {
    let scratch = failsmall_testkit::scratch_dir("failsmall-codex-broken-");
    let dir = scratch.path().to_owned();
    std::fs::write(
        dir.join("divides.rego"),
        r#"package failsmall.codex.team.divides

rule := {
	"id": "divides",
	"severity": "warn",
	"sentence": "If you need a broken rule, use this one.",
	"link": "docs/none.md",
}

# Two values for one complete rule: an error at evaluation.
share := 1 if is_object(input.plan)

share := 2 if is_object(input.plan)

violations contains v if {
	share > 0
	v := {"message": "unreachable"}
}
"#,
    )
    .unwrap();
    let codex = Codex::load(std::slice::from_ref(&dir)).unwrap();
    let mut input = failsmall_codex::Input::new(failsmall_codex::Action::Check);
    input.plan = Some(
        failsmall_core::plan::Plan::parse(
            "p.yaml",
            "name: p\nstages:\n  - select: { cohort: employee }\n    gates: ['error_rate > 1%']\n",
        )
        .unwrap(),
    );
    let findings = codex.evaluate(&input).unwrap();
    let broken: Vec<_> = findings.iter().filter(|f| f.rule == "divides").collect();
    assert_eq!(broken.len(), 1, "{findings:#?}");
    for finding in &broken {
        assert_eq!(finding.severity, Severity::Deny, "{finding:#?}");
        assert!(
            finding.message.contains("could not be evaluated"),
            "{finding:#?}"
        );
    }
}
