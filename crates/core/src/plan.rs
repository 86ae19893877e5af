//! Rollout plans: ordered stages, each selecting nodes by labels and a percent, with a bake
//! time, gates and an optional manual approval. Parsed from YAML (JSON accepted) by
//! [`Plan::parse`]; every error names the file, the line and the field.
//!
//! # Plan file format
//! ```yaml
//! name: default                 # required; letters, digits, '.', '_', '-'; at most 64 bytes
//! concurrency: queue            # queue (default): one rollout at a time, later versions wait
//!                               # train: version N+1 may enter stage 1 once N has left it
//! queue_limit: 16               # rollouts that may wait; default 16, at most 1000
//! supersede_queued: false       # a newer queued version aborts older queued ones; default false
//! soak: 1h                      # after the last stage passes, keep watching the last stage's
//!                               # gates and hard signals on every exposed node this long before
//!                               # completing; default 1h, 0s = complete at once, at most 7d
//! on_inconclusive: hold         # a stage that cannot conclude by its timeout: hold (default;
//!                               # alert, an operator decides) or rollback (never quarantines)
//! exclusive_nodes: false        # true: a node in another unit's running rollout joins this one
//!                               # only when that one ends, so a failure on it blames one change
//! defaults:                     # apply to every stage unless the stage sets the field
//!   bake: 1m                    # default 1m
//!   timeout: 15m                # default: the stage's bake + 10m; at least the bake
//!   min_requests: 500           # default 500
//!   silence: 30s                # default 30s
//!   hard_signals: { rejections: 1, crashes: 1, health_check_failures: 1, silent_nodes: 1 }
//!   gates:                      # default: none
//!     - p99_latency > 200ms OR error_rate > 0.5%
//!     - significant(error_rate > baseline.error_rate)
//! health_check: { path: /health, expect_status: 200, timeout: 5s }   # optional
//! stages:                       # at least 1, at most 64
//!   - name: employees           # unique, non-empty; default stage-N (N from 1)
//!     select: { cohort: employee }   # label: value or [values]; omitted = every node
//!     bake: 1m
//!   - name: free-10
//!     select: { cohort: free }
//!     percent: 10%              # "10%", 10 or 12.5%; 0 < p <= 100 (two decimals); default 100%
//!   - name: pro-business
//!     select: { cohort: [pro, business] }
//!     gates:                    # a stage's gates replace the defaults; [] = none; at most 32
//!       - error_rate > 1.5 * baseline.error_rate
//!       - min_requests 1000     # sets the stage's min_requests; not a gate
//!     approval: true            # a person other than the pusher approves before the stage
//!                               # exposes its nodes; default false
//!     approvers: 2              # that many distinct people (implies approval); default 1
//! ```
//! A stage accepts `name`, `select`, `percent`, `bake`, `timeout`, `min_requests`, `silence`,
//! `hard_signals`, `gates` and `approval`.
//!
//! - `soak`: the rollout stays `running` (phase `soaking`) after its last stage passed; a
//!   failing gate or hard signal then rolls back every exposed node and quarantines the
//!   version, as in a stage; an inconclusive gate never fails it. When the soak ends (or an
//!   operator promotes the rollout) it completes. Queued rollouts of the unit wait behind it.
//! - `on_inconclusive`: what a stage's timeout does when its gates neither failed nor passed
//!   (too little data, a node that never answered): `hold` keeps the rollout running in
//!   `holding` with an alert, and it passes as soon as its gates pass, or an operator promotes,
//!   rolls back or aborts it; `rollback` reverts every exposed node. Either way the version is
//!   not quarantined: missing data is no evidence against it.
//! - `exclusive_nodes`: a node is never in two units' running rollouts at once when the later
//!   one says so: its stages leave such a node out until the other rollout ends (completed,
//!   rolled back or aborted), then it joins. A stage whose every node is busy waits, without
//!   its timeout running, until one is free. Health measured on a node is then the effect of one
//!   change, so another unit's failure is never blamed on this one.
//! - Durations (`bake`, `timeout`, `silence`, `soak`, `health_check.timeout`) need a unit: `500ms`,
//!   `30s`, `5m`, `1h`, `1m30s`; at most 7 days (see [`crate::duration`]).
//! - Gates are failure conditions (see [`crate::gate`] for the expression language).
//! - `hard_signals`: a count at or above its threshold fails the stage at once; a threshold of
//!   0 disables that signal. Keys left out keep their defaults (1 each, or the `defaults:`
//!   values for a stage).
//! - `health_check`: `path` is required and starts with `/`; `expect_status` defaults to 200,
//!   `timeout` to 5s (at most 5m).
//! - Unknown fields, duplicate keys, YAML aliases and more than one document are errors.
//!   Every error carries the file, line, column and dotted field path (`stages[1].gates[0]`);
//!   all errors are reported together and a plan with any error is not loaded.
//! - JSON is YAML, so a JSON plan file is accepted as is.
//! - Limits: 1 MiB of text, 64 stages, 32 gates per stage, 32 labels per selector, 64 values
//!   per label.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gate::{Gate, GateLine};
use crate::yaml::{self, YamlKind, YamlNode, field_value};

pub mod health_source;
pub use health_source::PrometheusSource;

/// Which nodes a stage may touch: every listed label must match one of its values. An empty
/// selector matches every node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Selector {
    pub labels: BTreeMap<String, Vec<String>>,
}

impl Selector {
    pub fn matches(&self, labels: &crate::domain::Labels) -> bool {
        self.labels.iter().all(|(key, values)| {
            labels
                .get(key)
                .is_some_and(|value| values.iter().any(|v| v == value))
        })
    }
}

/// Share of a stage's selected nodes, in basis points (10_000 = 100%).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Percent {
    pub basis_points: u32,
}

impl Percent {
    pub const ALL: Percent = Percent {
        basis_points: 10_000,
    };
}

/// Thresholds for the signals that fail a gate at once, without statistics. A count at or
/// above its threshold fails the stage.  A threshold of 0 disables that signal. In plan files:
/// `hard_signals: { rejections: 1, crashes: 1, health_check_failures: 1, silent_nodes: 1 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardSignals {
    pub rejections_max: u64,
    pub crashes_max: u64,
    pub health_check_failures_max: u64,
    pub silent_nodes_max: u64,
}

impl Default for HardSignals {
    /// One NACK, one crash, one failed health check or one silent node fails the stage.
    fn default() -> Self {
        Self {
            rejections_max: 1,
            crashes_max: 1,
            health_check_failures_max: 1,
            silent_nodes_max: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub selector: Selector,
    pub percent: Percent,
    /// How long the stage's nodes must be healthy on the new version before promotion.
    pub bake_ms: u64,
    /// Longest the stage may wait (for ACKs, for conclusive gates, for approval does not
    /// count) before the rollout is rolled back.
    pub timeout_ms: u64,
    /// Failure conditions: any gate that evaluates to true fails the stage.
    pub gates: Vec<Gate>,
    /// Fewer canary requests than this makes every statistical or rate gate inconclusive.
    pub min_requests: u64,
    pub hard_signals: HardSignals,
    /// A canary node that has not reported for this long counts as silent (unhealthy).
    pub silence_ms: u64,
    /// People other than the pusher must approve before the stage exposes its nodes.
    pub approval: bool,
    /// How many distinct people must approve (`approvers: N` in the file, which implies
    /// `approval: true`); 0 or 1: one.
    #[serde(default)]
    pub approvers: u32,
}

impl Stage {
    /// Whether the stage judges health at all: at least one gate, or a hard signal with a
    /// non-zero threshold. Only a gated stage that passed with nodes gives a version the
    /// evidence it needs to become a unit's stable version.
    pub fn is_gated(&self) -> bool {
        let signals = self.hard_signals;
        !self.gates.is_empty()
            || [
                signals.rejections_max,
                signals.crashes_max,
                signals.health_check_failures_max,
                signals.silent_nodes_max,
            ]
            .iter()
            .any(|max| *max > 0)
    }
}

/// How versions of one unit share the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// One rollout at a time; later versions wait in order.
    Queue,
    /// Version N+1 may enter stage 1 once N has left it.
    Train,
}

/// A post-apply HTTP check that agents run against the local consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub path: String,
    pub expect_status: u16,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub concurrency: Concurrency,
    /// Most rollouts of one unit that may wait behind the running ones.
    pub queue_limit: u32,
    /// When true, a newer queued version aborts older queued ones ("superseded").
    pub supersede_queued: bool,
    pub health_check: Option<HealthCheck>,
    pub stages: Vec<Stage>,
    /// How long the rollout keeps watching after its last stage passed (the last stage's gates
    /// and hard signals, on every exposed node) before it completes; `0`: it completes when the
    /// last stage passes. Plans stored before this field existed had no soak.
    #[serde(default)]
    pub soak_ms: u64,
    /// What a stage's timeout does when its gates have not concluded.
    #[serde(default)]
    pub on_inconclusive: OnInconclusive,
    /// A node in another unit's running rollout joins this one only when that one ends.
    #[serde(default)]
    pub exclusive_nodes: bool,
    /// Where canary and baseline health come from instead of the agents' reports (see
    /// [`health_source`]); `None`: the agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_source: Option<Box<PrometheusSource>>,
}

/// What a stage that cannot conclude by its timeout does. Neither quarantines the version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInconclusive {
    /// Keep running in `holding`, alert, and pass when the gates pass (or an operator acts).
    #[default]
    Hold,
    /// Revert every exposed node, without quarantine.
    Rollback,
}

/// Where in which file a plan was wrong, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct PlanError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// Dotted path of the field, e.g. `stages[1].gates[0]`.
    pub field: String,
    /// What was wrong and what was expected.
    pub message: String,
}

/// Every error found in a plan file; a plan with any error is not loaded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct PlanErrors {
    pub errors: Vec<PlanError>,
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Largest plan file accepted, in bytes.
pub const PLAN_TEXT_MAX_BYTES: usize = 1024 * 1024;
/// Most stages in one plan.
pub const STAGES_MAX: usize = 64;
/// Most gates in one stage (or in `defaults`).
pub const GATES_PER_STAGE_MAX: usize = 32;
/// Most labels in one selector.
pub const SELECTOR_LABELS_MAX: usize = 32;
/// Most values for one label of a selector.
pub const SELECTOR_VALUES_MAX: usize = 64;
/// Longest plan or stage name, in bytes.
pub const NAME_MAX_BYTES: usize = 64;
/// Largest `queue_limit`.
pub const QUEUE_LIMIT_MAX: u64 = 1000;
/// Largest hard-signal threshold.
pub const HARD_SIGNAL_MAX: u64 = 1_000_000;
/// Longest health check timeout.
pub const HEALTH_CHECK_TIMEOUT_MAX_MS: u64 = 5 * 60 * 1000;

/// Defaults that apply when neither the stage nor `defaults:` sets a field.
pub const BAKE_DEFAULT_MS: u64 = 60 * 1000;
pub const TIMEOUT_AFTER_BAKE_DEFAULT_MS: u64 = 10 * 60 * 1000;
pub const MIN_REQUESTS_DEFAULT: u64 = 500;
pub const SILENCE_DEFAULT_MS: u64 = 30 * 1000;
pub const QUEUE_LIMIT_DEFAULT: u32 = 16;
pub const HEALTH_CHECK_TIMEOUT_DEFAULT_MS: u64 = 5 * 1000;
/// Soak after the last stage when the plan does not set `soak`: one hour.
pub const SOAK_DEFAULT_MS: u64 = 60 * 60 * 1000;
/// Longest soak: 7 days (the longest duration; see [`crate::duration::DURATION_MAX_MS`]).
pub const SOAK_MAX_MS: u64 = crate::duration::DURATION_MAX_MS;

const ROOT_FIELDS: &[&str] = &[
    "name",
    "concurrency",
    "queue_limit",
    "supersede_queued",
    "soak",
    "on_inconclusive",
    "exclusive_nodes",
    "defaults",
    "health_check",
    "health_source",
    "stages",
];
const DEFAULTS_FIELDS: &[&str] = &[
    "bake",
    "timeout",
    "min_requests",
    "silence",
    "hard_signals",
    "gates",
];
/// Most distinct approvers a stage may ask for.
pub const APPROVERS_MAX: u64 = 10;
const STAGE_FIELDS: &[&str] = &[
    "name",
    "select",
    "percent",
    "bake",
    "timeout",
    "min_requests",
    "silence",
    "hard_signals",
    "gates",
    "approval",
    "approvers",
];
const HARD_SIGNAL_FIELDS: &[&str] = &[
    "rejections",
    "crashes",
    "health_check_failures",
    "silent_nodes",
];
const HEALTH_CHECK_FIELDS: &[&str] = &["path", "expect_status", "timeout"];

impl Plan {
    /// Whether a gate of some stage reads the service's burn rates (`burn_rate_1h > 14.4`).
    pub fn reads_burn_rates(&self) -> bool {
        self.stages
            .iter()
            .any(|stage| stage.gates.iter().any(Gate::reads_burn_rate))
    }

    /// Parses and validates a plan file (YAML, or JSON) named `file_name`; see the module
    /// documentation for the format. Either the whole plan loads, or every error found is
    /// returned, each with file, line, column and field path.
    pub fn parse(file_name: &str, text: &str) -> Result<Plan, PlanErrors> {
        let mut loader = Loader {
            file: file_name,
            errors: Vec::new(),
            custom_refs: Vec::new(),
        };
        if text.len() > PLAN_TEXT_MAX_BYTES {
            loader.push(
                1,
                1,
                DOCUMENT,
                format!(
                    "plan file is {} bytes long; the limit is {PLAN_TEXT_MAX_BYTES} bytes",
                    text.len()
                ),
            );
            return Err(PlanErrors {
                errors: loader.errors,
            });
        }
        let root = match yaml::load(text) {
            Ok(root) => root,
            Err(error) => {
                loader.push(error.line, error.column, DOCUMENT, error.message);
                return Err(PlanErrors {
                    errors: loader.errors,
                });
            }
        };
        let plan = loader.plan(&root);
        match plan {
            Some(plan) if loader.errors.is_empty() => Ok(plan),
            _ => Err(PlanErrors {
                errors: loader.errors,
            }),
        }
    }
}

/// Field path used for errors about the file as a whole.
const DOCUMENT: &str = "(document)";

// --- From the tree to domain types -------------------------------------------------------

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn item(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// Gates of a list, and the `min_requests N` line among them with its node.
type GateList<'n> = (Vec<Gate>, Option<(u64, &'n YamlNode)>);

/// Fields of a stage that `defaults:` may also set.
#[derive(Debug, Default)]
struct StageDefaults {
    bake_ms: Option<u64>,
    timeout_ms: Option<u64>,
    min_requests: Option<u64>,
    silence_ms: Option<u64>,
    hard_signals: HardSignals,
    gates: Vec<Gate>,
}

#[derive(Debug)]
struct Loader<'a> {
    file: &'a str,
    errors: Vec<PlanError>,
    /// Gates that read custom metrics, checked against the health source's declared ones
    /// once the whole plan is read.
    custom_refs: Vec<CustomRef>,
}

/// Where a gate reads custom metrics: its place in the file, its text and the names.
#[derive(Debug)]
struct CustomRef {
    line: usize,
    column: usize,
    field: String,
    gate: String,
    names: Vec<String>,
}

impl Loader<'_> {
    fn push(&mut self, line: usize, column: usize, field: &str, message: String) {
        self.errors.push(PlanError {
            file: self.file.to_owned(),
            line,
            column,
            field: if field.is_empty() {
                DOCUMENT.to_owned()
            } else {
                field.to_owned()
            },
            message,
        });
    }

    fn error(&mut self, node: &YamlNode, field: &str, message: String) {
        self.push(node.line, node.column, field, message);
    }

    /// The fields of a mapping, after refusing non-mappings, non-string keys, duplicate keys
    /// and keys outside `allowed` (unless `allowed` is empty: any key).
    fn mapping<'n>(
        &mut self,
        node: &'n YamlNode,
        path: &str,
        allowed: &[&str],
        expected: &str,
    ) -> Option<Vec<(&'n str, &'n YamlNode)>> {
        let YamlKind::Mapping(entries) = &node.kind else {
            self.error(
                node,
                path,
                format!("expected {expected}, found {}", node.describe()),
            );
            return None;
        };
        let mut fields: Vec<(&'n str, &'n YamlNode)> = Vec::new();
        let mut seen: Vec<(&'n str, usize)> = Vec::new();
        for (key, value) in entries {
            let YamlKind::Scalar { text, .. } = &key.kind else {
                self.error(
                    key,
                    path,
                    format!("expected a field name, found {}", key.describe()),
                );
                continue;
            };
            let field = child(path, text);
            if let Some((_, first_line)) = seen.iter().find(|(name, _)| *name == text.as_str()) {
                self.error(
                    key,
                    &field,
                    format!(
                        "duplicate key `{text}` (first set on line {first_line}); \
                         expected each field once"
                    ),
                );
                continue;
            }
            seen.push((text.as_str(), key.line));
            if !allowed.is_empty() && !allowed.contains(&text.as_str()) {
                self.error(
                    key,
                    &field,
                    format!(
                        "unknown field `{text}`, expected one of: {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            fields.push((text.as_str(), value));
        }
        Some(fields)
    }

    /// A non-null scalar, as text.
    fn scalar<'n>(&mut self, node: &'n YamlNode, path: &str, expected: &str) -> Option<&'n str> {
        match &node.kind {
            YamlKind::Scalar { text, .. } if !node.is_null() => Some(text.as_str()),
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected {expected}, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &YamlNode, path: &str) -> Option<bool> {
        match &node.kind {
            YamlKind::Scalar { text, plain: true } if text == "true" => Some(true),
            YamlKind::Scalar { text, plain: true } if text == "false" => Some(false),
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected true or false, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn integer(&mut self, node: &YamlNode, path: &str, max: u64) -> Option<u64> {
        let expected = format!("a whole number from 0 to {max}");
        let text = self.scalar(node, path, &expected)?;
        match text.parse::<u64>() {
            Ok(value) if value <= max && text.bytes().all(|b| b.is_ascii_digit()) => Some(value),
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected {expected}, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &YamlNode, path: &str) -> Option<u64> {
        let text = self.scalar(node, path, "a duration such as 30s, 5m, 1m30s")?;
        match crate::duration::parse_duration_ms(text) {
            Ok(duration_ms) => Some(duration_ms),
            Err(error) => {
                self.error(node, path, error.to_string());
                None
            }
        }
    }

    fn name(&mut self, node: &YamlNode, path: &str, what: &str) -> Option<String> {
        let text = self.scalar(node, path, &format!("a {what} name"))?;
        let problem = if text.is_empty() {
            Some(format!("{what} name is empty"))
        } else if text.len() > NAME_MAX_BYTES {
            Some(format!(
                "{what} name is {} bytes long; the limit is {NAME_MAX_BYTES}",
                text.len()
            ))
        } else {
            text.chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                .map(|c| {
                    format!(
                        "{what} name `{text}` has {c:?}; \
                         expected ASCII letters, digits, '.', '_' or '-'"
                    )
                })
        };
        match problem {
            Some(message) => {
                self.error(node, path, message);
                None
            }
            None => Some(text.to_owned()),
        }
    }

    fn percent(&mut self, node: &YamlNode, path: &str) -> Option<Percent> {
        let expected =
            "a percent above 0 and at most 100, with at most two decimals, e.g. 10% or 12.5%";
        let text = self.scalar(node, path, expected)?;
        let number = text
            .trim()
            .strip_suffix('%')
            .unwrap_or(text.trim())
            .trim_end();
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let basis_points = if !whole.is_empty()
            && whole.len() <= 3
            && fraction.len() <= 2
            && digits_only(whole)
            && digits_only(fraction)
        {
            let whole: u32 = whole.parse().ok()?;
            let fraction_text = format!("{fraction:0<2}");
            let hundredths: u32 = fraction_text.parse().ok()?;
            Some(whole * 100 + hundredths)
        } else {
            None
        };
        match basis_points {
            Some(basis_points) if basis_points > 0 && basis_points <= Percent::ALL.basis_points => {
                Some(Percent { basis_points })
            }
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected {expected}, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn plan(&mut self, root: &YamlNode) -> Option<Plan> {
        let fields = self.mapping(root, "", ROOT_FIELDS, "a mapping with `name` and `stages`")?;
        let mut name = None;
        let mut concurrency = Some(Concurrency::Queue);
        let mut queue_limit = Some(QUEUE_LIMIT_DEFAULT);
        let mut supersede_queued = Some(false);
        let mut defaults = Some(StageDefaults::default());
        let mut health_check = Some(None);
        let mut soak_ms = Some(SOAK_DEFAULT_MS);
        let mut on_inconclusive = Some(OnInconclusive::Hold);
        let mut exclusive_nodes = Some(false);
        let mut health_source = Some(None);
        let mut stage_nodes = None;
        for (key, value) in fields {
            let path = key;
            match key {
                "name" => name = Some(self.name(value, path, "plan")),
                "concurrency" => {
                    concurrency = match self.scalar(value, path, "queue or train") {
                        Some("queue") => Some(Concurrency::Queue),
                        Some("train") => Some(Concurrency::Train),
                        Some(_) => {
                            self.error(
                                value,
                                path,
                                format!("expected queue or train, found {}", value.describe()),
                            );
                            None
                        }
                        None => None,
                    }
                }
                "queue_limit" => {
                    queue_limit = self
                        .integer(value, path, QUEUE_LIMIT_MAX)
                        .and_then(|limit| u32::try_from(limit).ok());
                }
                "supersede_queued" => supersede_queued = self.boolean(value, path),
                "soak" => soak_ms = self.soak(value, path),
                "exclusive_nodes" => exclusive_nodes = self.boolean(value, path),
                "on_inconclusive" => {
                    on_inconclusive = match self.scalar(value, path, "hold or rollback") {
                        Some("hold") => Some(OnInconclusive::Hold),
                        Some("rollback") => Some(OnInconclusive::Rollback),
                        Some(_) => {
                            self.error(
                                value,
                                path,
                                format!("expected hold or rollback, found {}", value.describe()),
                            );
                            None
                        }
                        None => None,
                    }
                }
                "defaults" => defaults = self.defaults(value, path),
                "health_check" => health_check = self.health_check(value, path).map(Some),
                "health_source" => {
                    health_source = self.health_source(value, path).map(|s| Some(Box::new(s)));
                }
                "stages" => stage_nodes = Some(value),
                _ => {}
            }
        }
        let name = match name {
            Some(name) => name,
            None => {
                self.error(
                    root,
                    "name",
                    "missing field `name`; expected the plan's name, e.g. `name: default`"
                        .to_owned(),
                );
                None
            }
        };
        let stages = match (stage_nodes, &defaults) {
            (Some(node), Some(defaults)) => self.stages(node, "stages", defaults),
            (Some(node), None) => {
                // Still report the stages' own errors, against empty defaults.
                let _ = self.stages(node, "stages", &StageDefaults::default());
                None
            }
            (None, _) => {
                self.error(
                    root,
                    "stages",
                    "missing field `stages`; expected a list of at least one stage".to_owned(),
                );
                None
            }
        };
        self.check_custom_refs(health_source.as_ref().and_then(|s| s.as_deref()));
        Some(Plan {
            name: name?,
            concurrency: concurrency?,
            queue_limit: queue_limit?,
            supersede_queued: supersede_queued?,
            health_check: health_check?,
            stages: stages?,
            soak_ms: soak_ms?,
            on_inconclusive: on_inconclusive?,
            exclusive_nodes: exclusive_nodes?,
            health_source: health_source?,
        })
    }

    /// Every custom metric a gate reads must be declared by the plan's health source
    /// (`health_source.prometheus.metrics`): a name that is not is refused, naming the gate,
    /// the metric and the declared ones.
    fn check_custom_refs(&mut self, source: Option<&PrometheusSource>) {
        let declared: Vec<&str> = source
            .map(|source| source.metrics.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let declared_text = if declared.is_empty() {
            "it declares none".to_owned()
        } else {
            format!("it declares: {}", declared.join(", "))
        };
        let refs = std::mem::take(&mut self.custom_refs);
        for reference in refs {
            for name in &reference.names {
                if declared.contains(&name.as_str()) {
                    continue;
                }
                let message = if source.is_none() {
                    format!(
                        "gate `{}` reads custom.{name}, but the plan has no health_source: \
                         custom metrics come from health_source.prometheus.metrics",
                        reference.gate
                    )
                } else {
                    format!(
                        "gate `{}` reads custom.{name}, which health_source.prometheus.metrics \
                         does not declare ({declared_text})",
                        reference.gate
                    )
                };
                self.push(reference.line, reference.column, &reference.field, message);
            }
        }
    }

    fn soak(&mut self, node: &YamlNode, path: &str) -> Option<u64> {
        let soak_ms = self.duration(node, path)?;
        if soak_ms > SOAK_MAX_MS {
            self.error(
                node,
                path,
                format!(
                    "soak is {}; the longest soak is {}",
                    crate::duration::format_ms(soak_ms),
                    crate::duration::format_ms(SOAK_MAX_MS)
                ),
            );
            return None;
        }
        Some(soak_ms)
    }

    fn defaults(&mut self, node: &YamlNode, path: &str) -> Option<StageDefaults> {
        let fields = self.mapping(node, path, DEFAULTS_FIELDS, "a mapping of stage defaults")?;
        let mut defaults = StageDefaults::default();
        let mut ok = true;
        let mut min_requests_field = None;
        let mut min_requests_line = None;
        for (key, value) in fields {
            let field = child(path, key);
            let done = match key {
                "bake" => self
                    .duration(value, &field)
                    .map(|v| defaults.bake_ms = Some(v)),
                "timeout" => self
                    .duration(value, &field)
                    .map(|v| defaults.timeout_ms = Some(v)),
                "silence" => self
                    .silence(value, &field)
                    .map(|v| defaults.silence_ms = Some(v)),
                "min_requests" => self
                    .integer(value, &field, crate::gate::MIN_REQUESTS_MAX)
                    .map(|v| min_requests_field = Some((v, value))),
                "hard_signals" => self
                    .hard_signals(value, &field, HardSignals::default())
                    .map(|v| defaults.hard_signals = v),
                "gates" => self.gates(value, &field).map(|(gates, line)| {
                    defaults.gates = gates;
                    min_requests_line = line;
                }),
                _ => Some(()),
            };
            ok &= done.is_some();
        }
        defaults.min_requests = self.min_requests(min_requests_field, min_requests_line, path);
        ok.then_some(defaults)
    }

    fn silence(&mut self, node: &YamlNode, path: &str) -> Option<u64> {
        let silence_ms = self.duration(node, path)?;
        if silence_ms == 0 {
            self.error(
                node,
                path,
                "silence must be longer than 0s; expected e.g. 30s".to_owned(),
            );
            return None;
        }
        Some(silence_ms)
    }

    /// Merges `min_requests: N` and a `min_requests N` gate line; both set differently is an
    /// error.
    fn min_requests(
        &mut self,
        field: Option<(u64, &YamlNode)>,
        line: Option<(u64, &YamlNode)>,
        path: &str,
    ) -> Option<u64> {
        match (field, line) {
            (Some((a, _)), Some((b, node))) if a != b => {
                self.error(
                    node,
                    &child(path, "gates"),
                    format!(
                        "`min_requests {b}` contradicts `min_requests: {a}`; expected one setting"
                    ),
                );
                Some(a)
            }
            (Some((value, _)), _) | (None, Some((value, _))) => Some(value),
            (None, None) => None,
        }
    }

    fn hard_signals(
        &mut self,
        node: &YamlNode,
        path: &str,
        base: HardSignals,
    ) -> Option<HardSignals> {
        let fields = self.mapping(
            node,
            path,
            HARD_SIGNAL_FIELDS,
            "a mapping of signal thresholds",
        )?;
        let mut signals = base;
        let mut ok = true;
        for (key, value) in fields {
            let Some(threshold) = self.integer(value, &child(path, key), HARD_SIGNAL_MAX) else {
                ok = false;
                continue;
            };
            match key {
                "rejections" => signals.rejections_max = threshold,
                "crashes" => signals.crashes_max = threshold,
                "health_check_failures" => signals.health_check_failures_max = threshold,
                "silent_nodes" => signals.silent_nodes_max = threshold,
                _ => {}
            }
        }
        ok.then_some(signals)
    }

    fn health_check(&mut self, node: &YamlNode, path: &str) -> Option<HealthCheck> {
        let fields = self.mapping(node, path, HEALTH_CHECK_FIELDS, "a mapping with `path`")?;
        let mut check_path = None;
        let mut expect_status = Some(200u16);
        let mut timeout_ms = Some(HEALTH_CHECK_TIMEOUT_DEFAULT_MS);
        for (key, value) in fields {
            let field = child(path, key);
            match key {
                "path" => {
                    let text = self.scalar(value, &field, "an HTTP path such as /health");
                    check_path = Some(text.and_then(|text| {
                        if text.starts_with('/')
                            && text.len() <= 256
                            && !text.chars().any(char::is_whitespace)
                        {
                            Some(text.to_owned())
                        } else {
                            self.error(
                                value,
                                &field,
                                format!(
                                    "expected an HTTP path starting with `/`, without spaces, at most 256 bytes, found {}",
                                    value.describe()
                                ),
                            );
                            None
                        }
                    }));
                }
                "expect_status" => {
                    expect_status = self.integer(value, &field, 599).and_then(|status| {
                        if status >= 100 {
                            u16::try_from(status).ok()
                        } else {
                            self.error(
                                value,
                                &field,
                                format!("expected an HTTP status from 100 to 599, found {status}"),
                            );
                            None
                        }
                    });
                }
                "timeout" => {
                    timeout_ms = self.duration(value, &field).and_then(|timeout_ms| {
                        if timeout_ms > 0 && timeout_ms <= HEALTH_CHECK_TIMEOUT_MAX_MS {
                            Some(timeout_ms)
                        } else {
                            self.error(
                                value,
                                &field,
                                "expected a health check timeout above 0s and at most 5m"
                                    .to_owned(),
                            );
                            None
                        }
                    });
                }
                _ => {}
            }
        }
        let check_path = match check_path {
            Some(Some(check_path)) => check_path,
            Some(None) => return None,
            None => {
                self.error(
                    node,
                    &child(path, "path"),
                    "missing field `path`; expected e.g. `path: /health`".to_owned(),
                );
                return None;
            }
        };
        Some(HealthCheck {
            path: check_path,
            expect_status: expect_status?,
            timeout_ms: timeout_ms?,
        })
    }

    /// The gates of a list, and the `min_requests N` line among them if any.
    fn gates<'n>(&mut self, node: &'n YamlNode, path: &str) -> Option<GateList<'n>> {
        let YamlKind::Sequence(items) = &node.kind else {
            self.error(
                node,
                path,
                format!(
                    "expected a list of gate expressions ([] for none), found {}",
                    node.describe()
                ),
            );
            return None;
        };
        if items.len() > GATES_PER_STAGE_MAX {
            self.error(
                node,
                path,
                format!("{} gates; the limit is {GATES_PER_STAGE_MAX}", items.len()),
            );
            return None;
        }
        let mut gates = Vec::new();
        let mut min_requests: Option<(u64, &'n YamlNode)> = None;
        let mut ok = true;
        for (index, gate_node) in items.iter().enumerate() {
            let field = item(path, index);
            let Some(source) = self.scalar(
                gate_node,
                &field,
                "a gate expression such as `error_rate > 0.5%`",
            ) else {
                ok = false;
                continue;
            };
            match crate::gate::parse_gate_line(source) {
                Ok(GateLine::Gate(gate)) => {
                    let names = gate.custom_metrics();
                    if !names.is_empty() {
                        self.custom_refs.push(CustomRef {
                            line: gate_node.line,
                            column: gate_node.column,
                            field: field.clone(),
                            gate: gate.source.clone(),
                            names,
                        });
                    }
                    gates.push(gate);
                }
                Ok(GateLine::MinRequests(count)) => {
                    if min_requests.is_some() {
                        self.error(
                            gate_node,
                            &field,
                            "`min_requests N` appears twice; expected it once".to_owned(),
                        );
                        ok = false;
                    }
                    min_requests = Some((count, gate_node));
                }
                Err(error) => {
                    // Point at the character when the scalar is written plain on one line.
                    let column = match &gate_node.kind {
                        YamlKind::Scalar { plain: true, .. } => gate_node.column + error.column - 1,
                        _ => gate_node.column,
                    };
                    self.push(
                        gate_node.line,
                        column,
                        &field,
                        format!(
                            "bad gate `{source}`: {} (character {})",
                            error.message, error.column
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some((gates, min_requests))
    }

    fn selector(&mut self, node: &YamlNode, path: &str) -> Option<Selector> {
        let fields = self.mapping(node, path, &[], "a mapping of label: value or [values]")?;
        if fields.len() > SELECTOR_LABELS_MAX {
            self.error(
                node,
                path,
                format!(
                    "{} labels; the limit is {SELECTOR_LABELS_MAX}",
                    fields.len()
                ),
            );
            return None;
        }
        let mut selector = Selector::default();
        let mut ok = true;
        for (label, value) in fields {
            let field = child(path, label);
            if label.is_empty() {
                self.error(node, &field, "label name is empty".to_owned());
                ok = false;
                continue;
            }
            let expected = "a label value or a non-empty list of values";
            let values: Vec<String> = match &value.kind {
                YamlKind::Sequence(items)
                    if !items.is_empty() && items.len() <= SELECTOR_VALUES_MAX =>
                {
                    let mut values = Vec::new();
                    for (index, value_node) in items.iter().enumerate() {
                        match self.scalar(value_node, &item(&field, index), "a label value") {
                            Some(text) => values.push(text.to_owned()),
                            None => ok = false,
                        }
                    }
                    values
                }
                YamlKind::Sequence(items) => {
                    self.error(
                        value,
                        &field,
                        format!(
                            "expected {expected} (1 to {SELECTOR_VALUES_MAX}), found {} values",
                            items.len()
                        ),
                    );
                    ok = false;
                    continue;
                }
                _ => match self.scalar(value, &field, expected) {
                    Some(text) => vec![text.to_owned()],
                    None => {
                        ok = false;
                        continue;
                    }
                },
            };
            selector.labels.insert(label.to_owned(), values);
        }
        ok.then_some(selector)
    }

    fn stages(
        &mut self,
        node: &YamlNode,
        path: &str,
        defaults: &StageDefaults,
    ) -> Option<Vec<Stage>> {
        let YamlKind::Sequence(items) = &node.kind else {
            self.error(
                node,
                path,
                format!("expected a list of stages, found {}", node.describe()),
            );
            return None;
        };
        if items.is_empty() || items.len() > STAGES_MAX {
            self.error(
                node,
                path,
                format!("{} stages; expected 1 to {STAGES_MAX}", items.len()),
            );
            return None;
        }
        let mut stages = Vec::new();
        let mut names: Vec<(String, usize)> = Vec::new();
        let mut ok = true;
        for (index, stage_node) in items.iter().enumerate() {
            let field = item(path, index);
            let stage = self.stage(stage_node, &field, index, defaults);
            // Names are compared even when the stage has other errors.
            let name_node = field_value(stage_node, "name");
            let name = match name_node.map(|node| &node.kind) {
                None => Some(format!("stage-{}", index + 1)),
                Some(YamlKind::Scalar { text, .. }) => Some(text.clone()),
                Some(_) => None,
            };
            if let Some(name) = name {
                if let Some((_, first)) = names.iter().find(|(seen, _)| *seen == name) {
                    self.error(
                        name_node.unwrap_or(stage_node),
                        &child(&field, "name"),
                        format!(
                            "duplicate stage name `{name}` (also stages[{first}]); \
                             expected unique names"
                        ),
                    );
                    ok = false;
                }
                names.push((name, index));
            }
            match stage {
                Some(stage) => stages.push(stage),
                None => ok = false,
            }
        }
        ok.then_some(stages)
    }

    fn stage(
        &mut self,
        node: &YamlNode,
        path: &str,
        index: usize,
        defaults: &StageDefaults,
    ) -> Option<Stage> {
        let fields = self.mapping(
            node,
            path,
            STAGE_FIELDS,
            "a stage: a mapping with fields such as name, select, bake",
        )?;
        let mut ok = true;
        let mut name = format!("stage-{}", index + 1);
        let mut selector = Selector::default();
        let mut percent = Percent::ALL;
        let mut bake_ms = defaults.bake_ms;
        let mut timeout_ms = defaults.timeout_ms;
        let mut silence_ms = defaults.silence_ms;
        let mut hard_signals = defaults.hard_signals;
        let mut gates = defaults.gates.clone();
        let mut approval = false;
        let mut approvers = 0u32;
        let mut min_requests_field = None;
        let mut min_requests_line = None;
        let mut timeout_node = node;
        for (key, value) in fields {
            let field = child(path, key);
            let done = match key {
                "name" => self.name(value, &field, "stage").map(|v| name = v),
                "select" => self.selector(value, &field).map(|v| selector = v),
                "percent" => self.percent(value, &field).map(|v| percent = v),
                "bake" => self.duration(value, &field).map(|v| bake_ms = Some(v)),
                "timeout" => self.duration(value, &field).map(|v| {
                    timeout_ms = Some(v);
                    timeout_node = value;
                }),
                "silence" => self.silence(value, &field).map(|v| silence_ms = Some(v)),
                "min_requests" => self
                    .integer(value, &field, crate::gate::MIN_REQUESTS_MAX)
                    .map(|v| min_requests_field = Some((v, value))),
                "hard_signals" => self
                    .hard_signals(value, &field, defaults.hard_signals)
                    .map(|v| hard_signals = v),
                "gates" => self.gates(value, &field).map(|(v, line)| {
                    gates = v;
                    min_requests_line = line;
                }),
                "approval" => self.boolean(value, &field).map(|v| approval = v),
                "approvers" => self
                    .integer(value, &field, APPROVERS_MAX)
                    .and_then(|v| u32::try_from(v).ok())
                    .map(|v| approvers = v),
                _ => Some(()),
            };
            ok &= done.is_some();
        }
        let min_requests = self
            .min_requests(min_requests_field, min_requests_line, path)
            .or(defaults.min_requests)
            .unwrap_or(MIN_REQUESTS_DEFAULT);
        let bake_ms = bake_ms.unwrap_or(BAKE_DEFAULT_MS);
        let timeout_ms =
            timeout_ms.unwrap_or(bake_ms.saturating_add(TIMEOUT_AFTER_BAKE_DEFAULT_MS));
        if timeout_ms < bake_ms {
            self.error(
                timeout_node,
                &child(path, "timeout"),
                format!(
                    "timeout {} is shorter than bake {}; expected a timeout at least as long as the bake",
                    crate::duration::format_ms(timeout_ms),
                    crate::duration::format_ms(bake_ms)
                ),
            );
            ok = false;
        }
        ok.then(|| Stage {
            name,
            selector,
            percent,
            bake_ms,
            timeout_ms,
            gates,
            min_requests,
            hard_signals,
            silence_ms: silence_ms.unwrap_or(SILENCE_DEFAULT_MS),
            approval: approval || approvers > 0,
            approvers,
        })
    }
}
