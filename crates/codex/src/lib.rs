//! The Codex: lessons from incidents as rules that enforce themselves.
//!
//! A rule is a Rego module (evaluated in-process by `regorus`; no rule language of our own) in
//! a package under `failsmall.codex`, which defines:
//!
//! ```rego
//! package failsmall.codex.plan_has_gates
//!
//! rule := {
//!     "id": "plan-has-gates",               # unique; letters, digits, '-'
//!     "severity": "deny",                   # deny: refused; warn: recorded
//!     "sentence": "If you need to roll out a change, use a plan with a stage that can fail.",
//!     "link": "docs/codex/plan-has-gates.md",   # a URL or a file in the repository
//! }
//!
//! violations contains v if {
//!     input.plan
//!     not some_stage_gated
//!     v := {"message": "no stage of the plan has a gate or a hard signal", "field": "stages"}
//! }
//! ```
//!
//! A violation is an object with a `message` and optionally a `field` (the dotted path in the
//! unit spec or plan file, e.g. `stages[0].select`, used to find the line offline) and a
//! `subject` (`unit`, `plan` or `request`; default: `plan` when the field starts with `stages`
//! and the input has a plan, else `unit`). What the rules see is in [`input`].
//!
//! A rule's tests live beside it in a package of the same name with `_test` appended, as rules
//! named `test_...` that must all be true (`with input as {...}`). [`Codex::run_tests`] runs
//! them; loading a rule set refuses one whose tests fail.

pub mod input;
pub mod offline;
pub mod sarif;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

pub use input::{Action, FleetInput, Input, RequestInput, RuleConfig, UnitInput};

/// Most rule files in one directory.
pub const RULE_FILES_MAX: usize = 256;
/// Largest rule file, in bytes.
pub const RULE_FILE_MAX_BYTES: u64 = 256 * 1024;
/// Most findings one rule may report for one input; the rest are counted in the last.
pub const FINDINGS_PER_RULE_MAX: usize = 64;
/// Longest one evaluation of the whole rule set may run.
pub const EVAL_TIME_MAX_MS: u64 = 2_000;

/// The starter Codex: the lessons of 18 Nov and 5 Dec 2025, on by default.
const STARTER: &[(&str, &str)] = &[
    (
        "rules/first_gate_covers_builds.rego",
        include_str!("../rules/first_gate_covers_builds.rego"),
    ),
    (
        "rules/first_gate_covers_builds_test.rego",
        include_str!("../rules/first_gate_covers_builds_test.rego"),
    ),
    (
        "rules/collections_bounded.rego",
        include_str!("../rules/collections_bounded.rego"),
    ),
    (
        "rules/collections_bounded_test.rego",
        include_str!("../rules/collections_bounded_test.rego"),
    ),
    (
        "rules/fail_mode_declared.rego",
        include_str!("../rules/fail_mode_declared.rego"),
    ),
    (
        "rules/fail_mode_declared_test.rego",
        include_str!("../rules/fail_mode_declared_test.rego"),
    ),
    (
        "rules/exposure_before_gate.rego",
        include_str!("../rules/exposure_before_gate.rego"),
    ),
    (
        "rules/exposure_before_gate_test.rego",
        include_str!("../rules/exposure_before_gate_test.rego"),
    ),
    (
        "rules/rollback_time.rego",
        include_str!("../rules/rollback_time.rego"),
    ),
    (
        "rules/rollback_time_test.rego",
        include_str!("../rules/rollback_time_test.rego"),
    ),
    (
        "rules/plan_has_gates.rego",
        include_str!("../rules/plan_has_gates.rego"),
    ),
    (
        "rules/plan_has_gates_test.rego",
        include_str!("../rules/plan_has_gates_test.rego"),
    ),
    (
        "rules/no_instant_plan.rego",
        include_str!("../rules/no_instant_plan.rego"),
    ),
    (
        "rules/no_instant_plan_test.rego",
        include_str!("../rules/no_instant_plan_test.rego"),
    ),
    (
        "rules/approval_before_exposure.rego",
        include_str!("../rules/approval_before_exposure.rego"),
    ),
    (
        "rules/approval_before_exposure_test.rego",
        include_str!("../rules/approval_before_exposure_test.rego"),
    ),
];

/// Why a rule set cannot be loaded or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodexError {
    #[error("{file}: {message}")]
    Load { file: String, message: String },
    #[error("rule directory {dir}: {message}")]
    Dir { dir: String, message: String },
    #[error("{file}: rule {package}: {message}")]
    Rule {
        file: String,
        package: String,
        message: String,
    },
    #[error("rule {id:?} is defined twice: in {first} and in {second}")]
    DuplicateId {
        id: String,
        first: String,
        second: String,
    },
    #[error("rule tests failed: {}", .failed.join(", "))]
    TestsFailed { failed: Vec<String> },
    #[error("plan check analysis: {0}")]
    Analysis(String),
}

/// What a violated rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Recorded (the changelog on a server; a warning offline), never refused.
    Warn,
    /// Refused: HTTP 422 on a server, a non-zero exit offline.
    Deny,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warn => "warn",
            Severity::Deny => "deny",
        }
    }
}

/// A rule's metadata, as its `rule := {...}` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: String,
    pub severity: Severity,
    /// "If you need X, use Y."
    pub sentence: String,
    /// Why: a URL, or a file in the repository.
    pub link: String,
    /// The Rego package that holds it.
    pub package: String,
    /// Where it was loaded from (`rules/...` for the starter Codex).
    pub file: String,
    /// Whether it ships with failsmall.
    pub starter: bool,
}

/// Which file a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    Unit,
    Plan,
    Request,
}

/// One violation of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub sentence: String,
    pub link: String,
    pub message: String,
    pub subject: Subject,
    /// The dotted field path in the unit spec or plan, when the rule names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Offline: the file, and where in it the field is (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Finding {
    /// `deny plan-has-gates: no stage ... — If you need ..., use .... (docs/codex/...)`
    pub fn one_line(&self) -> String {
        format!(
            "{} {}: {} — {} ({})",
            self.severity.as_str(),
            self.rule,
            self.message,
            self.sentence,
            self.link
        )
    }
}

/// One Rego test of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    pub package: String,
    pub name: String,
    pub file: String,
    pub passed: bool,
    /// Why it did not pass, when it did not.
    pub error: Option<String>,
}

/// A loaded rule set: the starter Codex, plus any team rules.
#[derive(Clone)]
pub struct Codex {
    engine: regorus::Engine,
    rules: Vec<Rule>,
    /// (package, test rule, file).
    tests: Vec<(String, String, String)>,
}

impl std::fmt::Debug for Codex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codex")
            .field("rules", &self.rules)
            .field("tests", &self.tests.len())
            .finish_non_exhaustive()
    }
}

/// A source file given to the engine.
struct Source {
    file: String,
    text: String,
    starter: bool,
}

impl Codex {
    /// The starter Codex alone.
    pub fn starter() -> Result<Self, CodexError> {
        Self::load(&[])
    }

    /// The starter Codex plus every `*.rego` file of each directory (not recursive). A rule
    /// file that does not parse, a rule without valid metadata, a duplicate id or a failing
    /// rule test refuses the whole set.
    pub fn load(dirs: &[PathBuf]) -> Result<Self, CodexError> {
        let mut sources: Vec<Source> = STARTER
            .iter()
            .map(|(file, text)| Source {
                file: (*file).to_owned(),
                text: (*text).to_owned(),
                starter: true,
            })
            .collect();
        for dir in dirs {
            sources.extend(read_dir(dir)?);
        }
        let codex = Self::from_sources(sources)?;
        let failed: Vec<String> = codex
            .run_tests()
            .into_iter()
            .filter(|test| !test.passed)
            .map(|test| {
                format!(
                    "{} ({}){}",
                    test.name,
                    test.file,
                    test.error.map(|e| format!(": {e}")).unwrap_or_default()
                )
            })
            .collect();
        if !failed.is_empty() {
            return Err(CodexError::TestsFailed { failed });
        }
        Ok(codex)
    }

    fn from_sources(sources: Vec<Source>) -> Result<Self, CodexError> {
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: std::time::Duration::from_millis(EVAL_TIME_MAX_MS),
            check_interval: std::num::NonZeroU32::MIN,
        });
        let mut packages: Vec<(String, String, bool)> = Vec::new();
        let mut tests = Vec::new();
        for source in &sources {
            let package = engine
                .add_policy(source.file.clone(), source.text.clone())
                .map_err(|error| CodexError::Load {
                    file: source.file.clone(),
                    message: error.to_string(),
                })?;
            let package = package.strip_prefix("data.").unwrap_or(&package).to_owned();
            if !package.starts_with("failsmall.codex.") {
                return Err(CodexError::Load {
                    file: source.file.clone(),
                    message: format!(
                        "package {package} is not under failsmall.codex; write `package failsmall.codex.<name>`"
                    ),
                });
            }
            if package.ends_with("_test") {
                for name in test_rule_names(&source.text) {
                    tests.push((package.clone(), name, source.file.clone()));
                }
            } else {
                packages.push((package, source.file.clone(), source.starter));
            }
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (package, file, starter) in packages {
            let metadata = engine
                .eval_rule(format!("data.{package}.rule"))
                .map_err(|error| CodexError::Rule {
                    file: file.clone(),
                    package: package.clone(),
                    message: error.to_string(),
                })?;
            let metadata: Value =
                serde_json::to_value(&metadata).map_err(|error| CodexError::Rule {
                    file: file.clone(),
                    package: package.clone(),
                    message: error.to_string(),
                })?;
            let rule = rule_from_metadata(&metadata, &package, &file, starter)?;
            if let Some(first) = rules.iter().find(|r| r.id == rule.id) {
                return Err(CodexError::DuplicateId {
                    id: rule.id.clone(),
                    first: first.file.clone(),
                    second: rule.file,
                });
            }
            rules.push(rule);
        }
        Ok(Self {
            engine,
            rules,
            tests,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.id == id)
    }

    /// Runs every rule on `input`; findings ordered deny first, then by rule id. A rule that
    /// fails to evaluate (a runtime error, or too slow) is a deny finding saying so: a broken
    /// rule never lets a change through unjudged.
    pub fn evaluate(&self, input: &Input) -> Result<Vec<Finding>, CodexError> {
        let document = input.to_json()?;
        Ok(self.evaluate_json(&document))
    }

    /// [`Codex::evaluate`] on an input already built.
    pub fn evaluate_json(&self, document: &Value) -> Vec<Finding> {
        let mut engine = self.engine.clone();
        let has_plan = document.get("plan").is_some_and(|plan| !plan.is_null());
        let input = serde_json::from_value::<regorus::Value>(document.clone());
        let mut findings = Vec::new();
        match input {
            Ok(input) => engine.set_input(input),
            Err(error) => {
                return self
                    .rules
                    .iter()
                    .map(|rule| broken(rule, &format!("input: {error}")))
                    .collect();
            }
        }
        for rule in &self.rules {
            let value = match engine.eval_rule(format!("data.{}.violations", rule.package)) {
                Ok(value) => value,
                Err(error) => {
                    findings.push(broken(rule, &error.to_string()));
                    continue;
                }
            };
            let violations = match serde_json::to_value(&value) {
                Ok(Value::Array(items)) => items,
                Ok(Value::Null) => Vec::new(),
                Ok(Value::String(text)) if text == "<undefined>" => Vec::new(),
                Ok(other) => {
                    findings.push(broken(
                        rule,
                        &format!("violations is {other}, expected a set of objects"),
                    ));
                    continue;
                }
                Err(error) => {
                    findings.push(broken(rule, &error.to_string()));
                    continue;
                }
            };
            let count = violations.len();
            for (index, violation) in violations.into_iter().enumerate() {
                if index + 1 == FINDINGS_PER_RULE_MAX && count > FINDINGS_PER_RULE_MAX {
                    findings.push(finding(
                        rule,
                        format!("and {} more", count - index),
                        None,
                        Subject::Request,
                    ));
                    break;
                }
                let message = match violation.get("message").and_then(Value::as_str) {
                    Some(message) => message.to_owned(),
                    None => match &violation {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    },
                };
                let field = violation
                    .get("field")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let subject = match violation.get("subject").and_then(Value::as_str) {
                    Some("unit") => Subject::Unit,
                    Some("plan") => Subject::Plan,
                    Some("request") => Subject::Request,
                    _ if has_plan && field.as_deref().is_some_and(is_plan_field) => Subject::Plan,
                    _ if document.get("unit").is_some_and(|u| !u.is_null()) => Subject::Unit,
                    _ if has_plan => Subject::Plan,
                    _ => Subject::Request,
                };
                findings.push(finding(rule, message, field, subject));
            }
        }
        findings.sort_by(|a, b| {
            (b.severity, &a.rule, &a.message).cmp(&(a.severity, &b.rule, &b.message))
        });
        findings
    }

    /// Runs every rule's Rego tests.
    pub fn run_tests(&self) -> Vec<TestResult> {
        self.tests
            .iter()
            .map(|(package, name, file)| {
                let mut engine = self.engine.clone();
                let outcome = engine.eval_rule(format!("data.{package}.{name}"));
                let (passed, error) = match outcome {
                    Ok(value) => match serde_json::to_value(&value) {
                        Ok(Value::Bool(true)) => (true, None),
                        Ok(other) => (false, Some(format!("evaluated to {other}"))),
                        Err(error) => (false, Some(error.to_string())),
                    },
                    Err(error) => (false, Some(error.to_string())),
                };
                TestResult {
                    package: package.clone(),
                    name: name.clone(),
                    file: file.clone(),
                    passed,
                    error,
                }
            })
            .collect()
    }

    /// The source of a starter rule's explanation (its `docs/codex/<id>.md`), if it ships one.
    pub fn starter_doc(id: &str) -> Option<&'static str> {
        STARTER_DOCS
            .iter()
            .find(|(doc_id, _)| *doc_id == id)
            .map(|(_, text)| *text)
    }
}

/// Each starter rule's explanation, the file its link names.
const STARTER_DOCS: &[(&str, &str)] = &[
    (
        "first-gate-covers-builds",
        include_str!("../../../docs/codex/first-gate-covers-builds.md"),
    ),
    (
        "collections-bounded",
        include_str!("../../../docs/codex/collections-bounded.md"),
    ),
    (
        "fail-mode-declared",
        include_str!("../../../docs/codex/fail-mode-declared.md"),
    ),
    (
        "exposure-before-gate",
        include_str!("../../../docs/codex/exposure-before-gate.md"),
    ),
    (
        "rollback-time",
        include_str!("../../../docs/codex/rollback-time.md"),
    ),
    (
        "plan-has-gates",
        include_str!("../../../docs/codex/plan-has-gates.md"),
    ),
    (
        "no-instant-plan",
        include_str!("../../../docs/codex/no-instant-plan.md"),
    ),
    (
        "approval-before-exposure",
        include_str!("../../../docs/codex/approval-before-exposure.md"),
    ),
];

fn is_plan_field(field: &str) -> bool {
    field.starts_with("stages") || field == "soak" || field == "name" || field == "defaults"
}

fn finding(rule: &Rule, message: String, field: Option<String>, subject: Subject) -> Finding {
    Finding {
        rule: rule.id.clone(),
        severity: rule.severity,
        sentence: rule.sentence.clone(),
        link: rule.link.clone(),
        message,
        subject,
        field,
        file: None,
        line: None,
        column: None,
    }
}

fn broken(rule: &Rule, error: &str) -> Finding {
    Finding {
        severity: Severity::Deny,
        ..finding(
            rule,
            format!("rule could not be evaluated: {error}"),
            None,
            Subject::Request,
        )
    }
}

/// The names of the `test_...` rules a test module defines (at the start of a line).
fn test_rule_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            name.starts_with("test_").then_some(name)
        })
        .collect()
}

fn rule_from_metadata(
    metadata: &Value,
    package: &str,
    file: &str,
    starter: bool,
) -> Result<Rule, CodexError> {
    let error = |message: String| CodexError::Rule {
        file: file.to_owned(),
        package: package.to_owned(),
        message,
    };
    let Some(object) = metadata.as_object() else {
        return Err(error(
            "defines no `rule := {\"id\": ..., \"severity\": ..., \"sentence\": ..., \"link\": ...}`"
                .to_owned(),
        ));
    };
    let text = |key: &str| -> Result<String, CodexError> {
        match object.get(key).and_then(Value::as_str) {
            Some(value) if !value.trim().is_empty() => Ok(value.to_owned()),
            _ => Err(error(format!("rule.{key}: expected a non-empty string"))),
        }
    };
    let id = text("id")?;
    if id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(error(format!(
            "rule.id {id:?}: expected at most 64 lowercase letters, digits and '-'"
        )));
    }
    let severity = match text("severity")?.as_str() {
        "deny" => Severity::Deny,
        "warn" => Severity::Warn,
        other => {
            return Err(error(format!(
                "rule.severity {other:?}: expected \"deny\" or \"warn\""
            )));
        }
    };
    let sentence = text("sentence")?;
    if !sentence.starts_with("If you need") {
        return Err(error(format!(
            "rule.sentence {sentence:?}: expected \"If you need X, use Y.\""
        )));
    }
    Ok(Rule {
        id,
        severity,
        sentence,
        link: text("link")?,
        package: package.to_owned(),
        file: file.to_owned(),
        starter,
    })
}

fn read_dir(dir: &Path) -> Result<Vec<Source>, CodexError> {
    let shown = dir.display().to_string();
    let dir_error = |message: String| CodexError::Dir {
        dir: shown.clone(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| dir_error(e.to_string()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| dir_error(e.to_string()))?.path();
        if path.extension().is_some_and(|ext| ext == "rego") {
            paths.push(path);
        }
        if paths.len() > RULE_FILES_MAX {
            return Err(dir_error(format!("more than {RULE_FILES_MAX} rule files")));
        }
    }
    paths.sort();
    let mut sources = Vec::new();
    for path in paths {
        let file = path.display().to_string();
        let size = std::fs::metadata(&path)
            .map_err(|e| CodexError::Load {
                file: file.clone(),
                message: e.to_string(),
            })?
            .len();
        if size > RULE_FILE_MAX_BYTES {
            return Err(CodexError::Load {
                file,
                message: format!("{size} bytes; the limit is {RULE_FILE_MAX_BYTES}"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| CodexError::Load {
            file: file.clone(),
            message: e.to_string(),
        })?;
        sources.push(Source {
            file,
            text,
            starter: false,
        });
    }
    Ok(sources)
}
