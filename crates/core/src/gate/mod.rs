//! Gate expressions: failure conditions on the health of a stage's canary nodes compared with
//! its baseline nodes, e.g. `p99_latency > 200ms OR error_rate > 0.5%`.
//!
//! A gate is a FAILURE condition: when it evaluates true, the stage fails and the rollout rolls
//! back.
//!
//! # Grammar
//! Keywords (`OR`, `AND`, `NOT`, `significant`, `alpha`, `baseline`, `min_requests`) are
//! case-insensitive.
//! ```text
//! gate    := or | "min_requests" INT
//! or      := and ("OR" and)*
//! and     := unary ("AND" unary)*
//! unary   := "NOT" unary | "(" or ")" | cmp
//!          | "significant" "(" metric ">" "baseline." metric ["," "alpha" "=" NUMBER] ")"
//! cmp     := sum (">" | ">=" | "<" | "<=") sum
//! sum     := prod (("+"|"-") prod)*
//! prod    := atom (("*"|"/") atom)*
//! atom    := NUMBER [unit] | metric | "baseline." metric | "(" sum ")"
//!          | "custom." NAME | "baseline.custom." NAME
//! unit    := "ms" | "s" | "%"
//! metric  := error_rate | requests | errors | p50_latency | p90_latency | p95_latency
//!          | p99_latency | p999_latency | rejections | crashes | health_check_failures
//!          | silent_nodes | burn_rate_5m | burn_rate_30m | burn_rate_1h | burn_rate_2h
//!          | burn_rate_6h | burn_rate_1d | burn_rate_3d
//! ```
//! A metric alone means the canary's; `baseline.metric` means the baseline's. A burn rate is
//! neither: it is the service's, the highest among the SLOs of the rollout's unit over that
//! window (`failsmall slo`), a bare number (1 spends the budget exactly over the SLO window).
//!
//! # Custom metrics
//! `custom.NAME` reads a metric the plan's health source declares (`health_source.prometheus.
//! metrics: { NAME: PromQL }`): the mean, over the group's nodes and the window's readings, of
//! what the query answers per node; `baseline.custom.NAME` the baseline's. The prefix keeps a
//! typo of a built-in metric (`eror_rate`) an error instead of a custom name, and a plan whose
//! gate names a metric its source does not declare is refused when it is loaded. A custom
//! metric is a bare number (`custom.queue_depth > 100`, `custom.queue_depth > 1.5 *
//! baseline.custom.queue_depth`); `significant(...)` does not take one (a gauge has no
//! sequential test). A gate reads either custom metrics or built-in ones, not both: the two are
//! judged differently (see `engine/judge.rs`), so write two gates. A custom metric with no
//! reading (the query failed or answered nothing for the group's nodes) is inconclusive: the
//! stage holds, it neither passes nor rolls back.
//!
//! # Burn-rate gates
//! `burn_rate_1h > 14.4` reads the whole service, canary and baseline alike, so a breach is
//! a fleet-wide signal first: the stage holds ("fleet unhealthy", alerted once, never
//! promoted, nothing quarantined), unless the canary is significantly worse than the
//! baseline in error rate, which blames the version (it rolls back). Without a baseline to
//! compare with, it holds too. With no SLO events over the window the gate is inconclusive.
//!
//! # Dimensions
//! Every value has a dimension, checked when the gate is parsed:
//! - latency, in milliseconds: `200ms`, `0.2s`, `p99_latency`;
//! - ratio: `0.5%`, `error_rate`;
//! - count: `requests`, `errors`, `rejections`, `crashes`, `health_check_failures`,
//!   `silent_nodes`; bare numbers compare with counts (`rejections > 0`);
//! - scalar: bare numbers in `*` and `/` (`1.5 * baseline.error_rate`), and burn rates.
//!
//! `scalar * x = x`, `x / scalar = x`, `count * ratio = count`, `count / count = ratio`,
//! `latency / latency = scalar`, `ratio / ratio = scalar`; `+` and `-` need equal dimensions
//! (a bare number added to a count is a count). Both sides of a comparison must have the same
//! dimension: `p99_latency > 0.5%` is refused, and `error_rate > 0.005` is refused with the
//! suggestion `0.5%`.
//!
//! # Evaluation
//! Three-valued (Kleene) logic. A comparison that reads a rate or a latency (`error_rate`,
//! `pNN_latency`) of a group with fewer than `min_requests` requests is Inconclusive, for the
//! baseline too; a reference to the baseline when there is none is Inconclusive. Counts are
//! always conclusive. `OR` fails if any side fails, else is inconclusive if any side is, else
//! passes; `AND` is the dual; `NOT` swaps pass and fail.
//!
//! # Sequential tests
//! `significant(error_rate > baseline.error_rate)` and `significant(p99_latency >
//! baseline.p99_latency)` (any latency quantile) run the always-valid sequential test of
//! [`crate::stats`] on the cumulative counts of the stage's window: the gate fails once the
//! test's e-value reaches `1 / alpha` and passes until then (given `min_requests` on both
//! sides). For latency the test compares the canary's share of requests in or above the bucket
//! holding the pooled quantile with the baseline's. The e-value may be checked after every
//! report, any number of times: the chance that it ever fails a version no worse than its
//! baseline, over the whole window, is at most `alpha`.
//!
//! A relative error gate, `error_rate > K * baseline.error_rate` (also written
//! `baseline.error_rate * K`, `baseline.error_rate / D`, `error_rate / baseline.error_rate >
//! K`, with `>=`, or mirrored; `K = 1` for `error_rate > baseline.error_rate`), runs the same
//! test against `p_canary <= K * p_baseline` at [`ALPHA_DEFAULT`]: it fails when the test
//! rejects that, is inconclusive (holds) while the canary's rate is above `K` times the
//! baseline's without the test rejecting, and passes when it is not above. One canary error
//! against a baseline with none is never enough. Other comparisons, including latency and
//! additive ones (`error_rate > baseline.error_rate + 1%`), are arithmetic on the values.
//!
//! The level: failsmall's false-positive budget is [`ALPHA_PER_ROLLOUT`] = 0.1% per rollout.
//! A gate does not know its plan, so the budget is split evenly over [`ALPHA_SPLIT`] = 20
//! sequential tests: [`ALPHA_DEFAULT`] = 5e-5 per sequential gate per window (a stage, or the
//! soak). Windows are independent tests, so by the union bound a rollout whose plan has at
//! most 20 (sequential gate, window) pairs — the default plan has 6 — fails a healthy version
//! with probability at most 0.1%. `significant(..., alpha = X)` sets one gate's level per
//! window.
//!
//! `min_requests N` written as a gate line is not a condition: it sets the stage's
//! `min_requests` (see [`parse_gate_line`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::health::{CustomValues, GroupMetrics};
use crate::slo::{BurnRates, BurnWindow};

mod display;
mod eval;
mod parse;
#[cfg(test)]
mod tests;

use display::{format_in, format_number};
use eval::{EvalContext, Truth};
use parse::arith_dimension;
pub use parse::parse_gate_line;

/// Longest gate expression accepted, in bytes.
pub const GATE_SOURCE_MAX_BYTES: usize = 1024;
/// Most tokens in one gate expression.
pub const GATE_TOKENS_MAX: usize = 256;
/// Deepest nesting of parentheses and `NOT` in one gate expression.
pub const GATE_DEPTH_MAX: usize = 32;
/// The chance, per rollout, that sequential gates fail a version no worse than its baseline.
pub const ALPHA_PER_ROLLOUT: f64 = 1e-3;
/// Sequential tests (a sequential gate in one stage or the soak) [`ALPHA_PER_ROLLOUT`] is split
/// over.
pub const ALPHA_SPLIT: u32 = 20;
/// Default level of one sequential gate (`significant(...)` or a relative error gate) over one
/// window (a stage, or the soak): `ALPHA_PER_ROLLOUT / ALPHA_SPLIT` = 5e-5.
pub const ALPHA_DEFAULT: f64 = ALPHA_PER_ROLLOUT / ALPHA_SPLIT as f64;
/// Largest `min_requests` a gate line may set.
pub const MIN_REQUESTS_MAX: u64 = 1_000_000_000;
/// Largest number literal accepted (in its written unit).
const NUMBER_MAX: f64 = 1e15;

/// One gate of a stage, as written and as parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// The expression as the plan file wrote it.
    pub source: String,
    pub expr: GateExpr,
}

/// A health metric of a group of nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ErrorRate,
    Requests,
    Errors,
    P50Latency,
    P90Latency,
    P95Latency,
    P99Latency,
    P999Latency,
    Rejections,
    Crashes,
    HealthCheckFailures,
    SilentNodes,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::ErrorRate,
        Metric::Requests,
        Metric::Errors,
        Metric::P50Latency,
        Metric::P90Latency,
        Metric::P95Latency,
        Metric::P99Latency,
        Metric::P999Latency,
        Metric::Rejections,
        Metric::Crashes,
        Metric::HealthCheckFailures,
        Metric::SilentNodes,
    ];

    /// The name gate expressions use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::Requests => "requests",
            Metric::Errors => "errors",
            Metric::P50Latency => "p50_latency",
            Metric::P90Latency => "p90_latency",
            Metric::P95Latency => "p95_latency",
            Metric::P99Latency => "p99_latency",
            Metric::P999Latency => "p999_latency",
            Metric::Rejections => "rejections",
            Metric::Crashes => "crashes",
            Metric::HealthCheckFailures => "health_check_failures",
            Metric::SilentNodes => "silent_nodes",
        }
    }

    /// The metric called `name` (ASCII case-insensitive).
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL
            .into_iter()
            .find(|metric| metric.name().eq_ignore_ascii_case(name))
    }

    pub fn dimension(self) -> Dimension {
        match self {
            Metric::ErrorRate => Dimension::Ratio,
            Metric::P50Latency
            | Metric::P90Latency
            | Metric::P95Latency
            | Metric::P99Latency
            | Metric::P999Latency => Dimension::Latency,
            Metric::Requests
            | Metric::Errors
            | Metric::Rejections
            | Metric::Crashes
            | Metric::HealthCheckFailures
            | Metric::SilentNodes => Dimension::Count,
        }
    }

    /// Latency quantile (0..=1) for latency metrics.
    fn quantile(self) -> Option<f64> {
        match self {
            Metric::P50Latency => Some(0.50),
            Metric::P90Latency => Some(0.90),
            Metric::P95Latency => Some(0.95),
            Metric::P99Latency => Some(0.99),
            Metric::P999Latency => Some(0.999),
            _ => None,
        }
    }

    fn value_of(self, group: &GroupMetrics) -> Option<f64> {
        match self {
            Metric::ErrorRate => group.error_rate(),
            Metric::Requests => Some(group.requests() as f64),
            Metric::Errors => Some(group.errors() as f64),
            Metric::Rejections => Some(group.rejections as f64),
            Metric::Crashes => Some(group.crashes as f64),
            Metric::HealthCheckFailures => Some(group.health_check_failures as f64),
            Metric::SilentNodes => Some(group.silent_nodes as f64),
            Metric::P50Latency
            | Metric::P90Latency
            | Metric::P95Latency
            | Metric::P99Latency
            | Metric::P999Latency => self.quantile().and_then(|q| group.latency_quantile_ms(q)),
        }
    }
}

/// What kind of quantity a value is; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Milliseconds.
    Latency,
    /// A fraction, written in percent.
    Ratio,
    /// A number of things.
    Count,
    /// A bare number.
    Scalar,
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dimension::Latency => "latency in ms",
            Dimension::Ratio => "ratio in %",
            Dimension::Count => "count",
            Dimension::Scalar => "bare number",
        })
    }
}

/// Whose metrics a reference reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Nodes of the stage that have the new version.
    Canary,
    /// Nodes that do not have it yet.
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl ArithOp {
    fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }

    /// The symbol of the negation, for "not failing" details.
    fn negated_symbol(self) -> &'static str {
        match self {
            CmpOp::Gt => "<=",
            CmpOp::Ge => "<",
            CmpOp::Lt => ">=",
            CmpOp::Le => ">",
        }
    }

    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
        }
    }
}

/// A number-valued expression. Literals hold canonical units: milliseconds for latencies,
/// fractions (0..=1) for ratios.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Literal {
        value: f64,
        dimension: Dimension,
    },
    Metric {
        group: Group,
        metric: Metric,
    },
    Arith {
        op: ArithOp,
        left: Box<Value>,
        right: Box<Value>,
    },
    /// The service's burn rate over `window` (the highest among the unit's SLOs): a
    /// fleet-wide signal, the same for canary and baseline (see the module docs).
    BurnRate {
        window: BurnWindow,
    },
    /// A custom metric the plan's health source declares (`custom.NAME`), a bare number.
    Custom {
        group: Group,
        name: String,
    },
}

/// A parsed, dimension-checked gate: true means the stage fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateExpr {
    Compare {
        left: Value,
        op: CmpOp,
        right: Value,
    },
    /// Always-valid one-sided sequential test of the canary's `metric` against the
    /// baseline's at level `alpha` per window; see [`crate::stats`].
    Significant {
        metric: Metric,
        alpha: f64,
    },
    Not(Box<GateExpr>),
    And(Vec<GateExpr>),
    Or(Vec<GateExpr>),
}

/// What a gate concluded, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    /// The failure condition is false on enough data.
    Pass { detail: String },
    /// The failure condition is true.
    Fail { detail: String },
    /// Not enough data to say: hold, never promote.
    Inconclusive { detail: String },
}

/// Why a gate expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {column}: {message}")]
pub struct GateError {
    /// 1-based character position in the expression.
    pub column: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

/// One line of a stage's `gates:` list.
#[derive(Debug, Clone, PartialEq)]
pub enum GateLine {
    /// A failure condition.
    Gate(Gate),
    /// `min_requests N`: sets the stage's minimum sample; not a condition.
    MinRequests(u64),
}

impl Gate {
    /// Parses a gate expression (not a `min_requests` line).
    pub fn parse(source: &str) -> Result<Gate, GateError> {
        match parse_gate_line(source)? {
            GateLine::Gate(gate) => Ok(gate),
            GateLine::MinRequests(_) => Err(GateError {
                column: 1,
                message: "`min_requests N` sets a stage's minimum sample; it is not a condition"
                    .to_owned(),
            }),
        }
    }

    /// Whether the condition reads the baseline (then it needs the baseline's data too).
    pub fn reads_baseline(&self) -> bool {
        fn value(v: &Value) -> bool {
            match v {
                Value::Literal { .. } | Value::BurnRate { .. } => false,
                Value::Metric { group, .. } | Value::Custom { group, .. } => {
                    *group == Group::Baseline
                }
                Value::Arith { left, right, .. } => value(left) || value(right),
            }
        }
        fn expr(e: &GateExpr) -> bool {
            match e {
                GateExpr::Compare { left, right, .. } => value(left) || value(right),
                GateExpr::Significant { .. } => true,
                GateExpr::Not(inner) => expr(inner),
                GateExpr::And(all) | GateExpr::Or(all) => all.iter().any(expr),
            }
        }
        expr(&self.expr)
    }

    /// Whether the condition reads a burn rate of the service's SLOs.
    pub fn reads_burn_rate(&self) -> bool {
        fn value(v: &Value) -> bool {
            match v {
                Value::Literal { .. } | Value::Metric { .. } | Value::Custom { .. } => false,
                Value::BurnRate { .. } => true,
                Value::Arith { left, right, .. } => value(left) || value(right),
            }
        }
        fn expr(e: &GateExpr) -> bool {
            match e {
                GateExpr::Compare { left, right, .. } => value(left) || value(right),
                GateExpr::Significant { .. } => false,
                GateExpr::Not(inner) => expr(inner),
                GateExpr::And(all) | GateExpr::Or(all) => all.iter().any(expr),
            }
        }
        expr(&self.expr)
    }

    /// The custom metrics the condition reads (`custom.NAME`, canary's or baseline's), sorted
    /// and once each.
    pub fn custom_metrics(&self) -> Vec<String> {
        fn value(v: &Value, names: &mut std::collections::BTreeSet<String>) {
            match v {
                Value::Literal { .. } | Value::Metric { .. } | Value::BurnRate { .. } => {}
                Value::Custom { name, .. } => {
                    names.insert(name.clone());
                }
                Value::Arith { left, right, .. } => {
                    value(left, names);
                    value(right, names);
                }
            }
        }
        fn expr(e: &GateExpr, names: &mut std::collections::BTreeSet<String>) {
            match e {
                GateExpr::Compare { left, right, .. } => {
                    value(left, names);
                    value(right, names);
                }
                GateExpr::Significant { .. } => {}
                GateExpr::Not(inner) => expr(inner, names),
                GateExpr::And(all) | GateExpr::Or(all) => {
                    for part in all {
                        expr(part, names);
                    }
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        expr(&self.expr, &mut names);
        names.into_iter().collect()
    }

    /// Whether the condition reads custom metrics (then it reads nothing built in).
    pub fn reads_custom(&self) -> bool {
        !self.custom_metrics().is_empty()
    }

    /// Evaluates a gate on custom metrics: the canary's values, against the baseline's when
    /// there is a baseline. A name without readings is inconclusive.
    pub fn evaluate_custom(
        &self,
        canary: &CustomValues,
        baseline: Option<&CustomValues>,
    ) -> Verdict {
        let nothing = GroupMetrics::default();
        self.run(EvalContext {
            canary: &nothing,
            baseline: baseline.map(|_| &nothing),
            min_requests: 0,
            burn_rates: &BurnRates::new(),
            canary_custom: canary,
            baseline_custom: baseline,
        })
    }

    /// Evaluates the failure condition on the canary, against the baseline when there is one,
    /// with no burn rates known.
    pub fn evaluate(
        &self,
        canary: &GroupMetrics,
        baseline: Option<&GroupMetrics>,
        min_requests: u64,
    ) -> Verdict {
        self.evaluate_with(canary, baseline, min_requests, &BurnRates::new())
    }

    /// [`Gate::evaluate`], with the service's current `burn_rates`.
    pub fn evaluate_with(
        &self,
        canary: &GroupMetrics,
        baseline: Option<&GroupMetrics>,
        min_requests: u64,
        burn_rates: &BurnRates,
    ) -> Verdict {
        let none = CustomValues::default();
        self.run(EvalContext {
            canary,
            baseline,
            min_requests,
            burn_rates,
            canary_custom: &none,
            baseline_custom: baseline.map(|_| &none),
        })
    }

    fn run(&self, context: EvalContext<'_>) -> Verdict {
        let (truth, detail) = context.condition(&self.expr);
        match truth {
            Truth::True => Verdict::Fail { detail },
            Truth::False => Verdict::Pass { detail },
            Truth::Unknown => Verdict::Inconclusive { detail },
        }
    }
}

impl Value {
    fn reads_metric(&self) -> bool {
        match self {
            Value::Literal { .. } => false,
            Value::Metric { .. } | Value::BurnRate { .. } | Value::Custom { .. } => true,
            Value::Arith { left, right, .. } => left.reads_metric() || right.reads_metric(),
        }
    }

    /// The dimension of the value (literals keep the dimension they were written with).
    pub fn dimension(&self) -> Dimension {
        match self {
            Value::Literal { dimension, .. } => *dimension,
            Value::Metric { metric, .. } => metric.dimension(),
            Value::BurnRate { .. } | Value::Custom { .. } => Dimension::Scalar,
            // Only dimension-checked values exist outside this module's parser, so the
            // fallback is never taken for parsed gates.
            Value::Arith { op, left, right } => {
                arith_dimension(*op, left.dimension(), right.dimension())
                    .unwrap_or(Dimension::Scalar)
            }
        }
    }
}
