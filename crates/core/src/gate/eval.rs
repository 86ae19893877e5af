//! Three-valued evaluation of a gate on a canary and its baseline.

use super::*;
use crate::stats::{SequentialTest, excess_rate_test, latency_tail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Truth {
    True,
    False,
    Unknown,
}

#[derive(Debug)]
pub(super) struct EvalContext<'a> {
    pub(super) canary: &'a GroupMetrics,
    pub(super) baseline: Option<&'a GroupMetrics>,
    pub(super) min_requests: u64,
    pub(super) burn_rates: &'a BurnRates,
    /// The groups' custom metrics (`custom.NAME`).
    pub(super) canary_custom: &'a CustomValues,
    pub(super) baseline_custom: Option<&'a CustomValues>,
}

impl EvalContext<'_> {
    /// The group's metrics, or why they cannot be used for `metric`.
    fn group(&self, group: Group, metric: Metric) -> Result<&GroupMetrics, String> {
        let (metrics, name) = match group {
            Group::Canary => (self.canary, "canary"),
            Group::Baseline => (
                self.baseline
                    .ok_or_else(|| "no baseline nodes to compare with".to_owned())?,
                "baseline",
            ),
        };
        let needs_sample = metric.dimension() != Dimension::Count;
        if needs_sample && metrics.requests() < self.min_requests {
            return Err(format!(
                "{name} has {} requests, fewer than min_requests {}",
                metrics.requests(),
                self.min_requests
            ));
        }
        Ok(metrics)
    }

    fn value(&self, value: &Value) -> Result<f64, String> {
        match value {
            Value::Literal { value, .. } => Ok(*value),
            Value::Metric { group, metric } => {
                let metrics = self.group(*group, *metric)?;
                metric.value_of(metrics).ok_or_else(|| {
                    format!("{value} has no data (no requests or no latency observations)")
                })
            }
            Value::Custom { group, name } => {
                let (values, whose) = match group {
                    Group::Canary => (self.canary_custom, "the canary"),
                    Group::Baseline => (
                        self.baseline_custom
                            .ok_or_else(|| "no baseline nodes to compare with".to_owned())?,
                        "the baseline",
                    ),
                };
                values.mean(name).ok_or_else(|| {
                    format!(
                        "{value} has no data: the health source answered no value for \
                         {whose}'s nodes"
                    )
                })
            }
            Value::BurnRate { window } => self.burn_rates.get(window).copied().ok_or_else(|| {
                format!(
                    "{value} has no data (no SLO of this unit has events over the last {}; \
                     `failsmall slo create` defines one)",
                    window.as_str()
                )
            }),
            Value::Arith { op, left, right } => {
                let left = self.value(left)?;
                let right = self.value(right)?;
                let result = match op {
                    ArithOp::Add => left + right,
                    ArithOp::Sub => left - right,
                    ArithOp::Mul => left * right,
                    ArithOp::Div if right == 0.0 => {
                        return Err(format!("{value} divides by zero"));
                    }
                    ArithOp::Div => left / right,
                };
                if result.is_finite() {
                    Ok(result)
                } else {
                    Err(format!("{value} is not a finite number"))
                }
            }
        }
    }

    /// `p99_latency 312.4ms`, `200ms`, or `1.5 * baseline.error_rate = 0.15%`.
    fn describe(value: &Value, number: f64) -> String {
        let shown = format_in(value.dimension(), number);
        match value {
            Value::Literal { .. } => shown,
            Value::Metric { .. } | Value::BurnRate { .. } | Value::Custom { .. } => {
                format!("{value} {shown}")
            }
            Value::Arith { .. } => format!("{value} = {shown}"),
        }
    }

    pub(super) fn condition(&self, expr: &GateExpr) -> (Truth, String) {
        match expr {
            GateExpr::Compare { left, op, right } => {
                if let Some(factor) = relative_error_factor(left, *op, right) {
                    return self.relative(expr, factor);
                }
                self.compare(expr, left, *op, right)
            }
            GateExpr::Significant { metric, alpha } => self.significant(*metric, *alpha),
            GateExpr::Not(inner) => {
                let (truth, detail) = self.condition(inner);
                let truth = match truth {
                    Truth::True => Truth::False,
                    Truth::False => Truth::True,
                    Truth::Unknown => Truth::Unknown,
                };
                (truth, format!("NOT ({detail})"))
            }
            GateExpr::Or(parts) => self.combine(parts, Truth::True, Truth::False),
            GateExpr::And(parts) => self.combine(parts, Truth::False, Truth::True),
        }
    }

    /// A comparison evaluated as arithmetic on the metrics' values.
    fn compare(&self, expr: &GateExpr, left: &Value, op: CmpOp, right: &Value) -> (Truth, String) {
        match (self.value(left), self.value(right)) {
            (Ok(l), Ok(r)) => {
                let (left_text, right_text) = (Self::describe(left, l), Self::describe(right, r));
                if op.holds(l, r) {
                    (
                        Truth::True,
                        format!("{left_text} {} {right_text}", op.symbol()),
                    )
                } else {
                    (
                        Truth::False,
                        format!("{left_text} {} {right_text}", op.negated_symbol()),
                    )
                }
            }
            (Err(reason), _) | (_, Err(reason)) => {
                (Truth::Unknown, format!("{expr}: inconclusive, {reason}"))
            }
        }
    }

    /// Kleene OR (`dominant` = True) or AND (`dominant` = False): any dominant part decides;
    /// else any unknown part makes the whole unknown; else every part is `otherwise`.
    fn combine(&self, parts: &[GateExpr], dominant: Truth, otherwise: Truth) -> (Truth, String) {
        let results: Vec<(Truth, String)> = parts.iter().map(|part| self.condition(part)).collect();
        let truth = if results.iter().any(|(truth, _)| *truth == dominant) {
            dominant
        } else if results.iter().any(|(truth, _)| *truth == Truth::Unknown) {
            Truth::Unknown
        } else {
            otherwise
        };
        let detail = results
            .iter()
            .filter(|(part_truth, _)| *part_truth == truth)
            .map(|(_, detail)| detail.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        (truth, detail)
    }

    /// Canary and baseline for a test of `metric`, or why the test cannot run yet.
    fn both_groups(&self, metric: Metric) -> Result<(&GroupMetrics, &GroupMetrics), String> {
        let canary = self.group(Group::Canary, metric)?;
        let baseline = self.group(Group::Baseline, metric)?;
        Ok((canary, baseline))
    }

    /// `significant(metric > baseline.metric)`: the sequential test of [`crate::stats`] fails
    /// the gate once its e-value reaches `1 / alpha`; until then the gate passes (given
    /// `min_requests` on both sides).
    fn significant(&self, metric: Metric, alpha: f64) -> (Truth, String) {
        let name = metric.name();
        let inconclusive = |reason: &str| {
            (
                Truth::Unknown,
                format!("significant({name} > baseline.{name}): inconclusive, {reason}"),
            )
        };
        let (canary, baseline) = match self.both_groups(metric) {
            Ok(groups) => groups,
            Err(reason) => return inconclusive(&reason),
        };
        let (test, counts) = match metric.quantile() {
            None => {
                let Some(test) = excess_rate_test(
                    canary.errors(),
                    canary.requests(),
                    baseline.errors(),
                    baseline.requests(),
                    1.0,
                ) else {
                    return inconclusive("a group has no requests");
                };
                (test, error_counts(name, canary, baseline, 1.0))
            }
            Some(quantile) => {
                let Some(tail) =
                    latency_tail(&canary.sample.latency, &baseline.sample.latency, quantile)
                else {
                    return inconclusive("a group has no latency observations");
                };
                let Some(test) = tail.test() else {
                    return inconclusive("a group has no latency observations");
                };
                let share = |slow: u64, total: u64| {
                    format_in(Dimension::Ratio, slow as f64 / total.max(1) as f64)
                };
                let counts = format!(
                    "{name}: {} ({}/{}) of canary requests above {} vs baseline {} ({}/{})",
                    share(tail.slow_a, tail.total_a),
                    tail.slow_a,
                    tail.total_a,
                    format_in(Dimension::Latency, tail.threshold_ms),
                    share(tail.slow_b, tail.total_b),
                    tail.slow_b,
                    tail.total_b,
                );
                (test, counts)
            }
        };
        let failing = test.rejects(alpha);
        let detail = format!(
            "{counts}: {} {}",
            evidence(&test),
            threshold(alpha, failing)
        );
        (if failing { Truth::True } else { Truth::False }, detail)
    }

    /// A relative error gate (`error_rate > K * baseline.error_rate` and its spellings):
    /// fails when the sequential test rejects `p_canary <= K * p_baseline` at [`ALPHA_DEFAULT`];
    /// inconclusive while the canary's rate is above `K` times the baseline's without the test
    /// rejecting; passes when it is not above.
    fn relative(&self, expr: &GateExpr, factor: f64) -> (Truth, String) {
        let inconclusive =
            |reason: &str| (Truth::Unknown, format!("{expr}: inconclusive, {reason}"));
        let (canary, baseline) = match self.both_groups(Metric::ErrorRate) {
            Ok(groups) => groups,
            Err(reason) => return inconclusive(&reason),
        };
        let Some(test) = excess_rate_test(
            canary.errors(),
            canary.requests(),
            baseline.errors(),
            baseline.requests(),
            factor,
        ) else {
            return inconclusive("a group has no requests");
        };
        let counts = error_counts("error_rate", canary, baseline, factor);
        let failing = test.rejects(ALPHA_DEFAULT);
        let rate = |group: &GroupMetrics| group.error_rate().unwrap_or(0.0);
        let above = rate(canary) > factor * rate(baseline);
        let evidence = evidence(&test);
        let threshold = threshold(ALPHA_DEFAULT, failing);
        if failing {
            (
                Truth::True,
                format!("{expr}: {counts}: {evidence} {threshold}"),
            )
        } else if above {
            inconclusive(&format!(
                "{counts}: above, not significant yet: {evidence} {threshold}"
            ))
        } else {
            (
                Truth::False,
                format!("{expr}: {counts}: not above, {evidence}"),
            )
        }
    }
}

/// `error_rate 0.42% (21/5000) vs baseline 0.1% (10/10000)`, with ` * K` when K is not 1.
fn error_counts(name: &str, canary: &GroupMetrics, baseline: &GroupMetrics, factor: f64) -> String {
    let rate =
        |group: &GroupMetrics| format_in(Dimension::Ratio, group.error_rate().unwrap_or(0.0));
    let factor = if factor == 1.0 {
        String::new()
    } else {
        format!("{} * ", format_number(factor))
    };
    format!(
        "{name} {} ({}/{}) vs {factor}baseline {} ({}/{})",
        rate(canary),
        canary.errors(),
        canary.requests(),
        rate(baseline),
        baseline.errors(),
        baseline.requests(),
    )
}

fn evidence(test: &SequentialTest) -> String {
    format!("e={:.2e}", test.e_value())
}

/// `>= 1/alpha 2e4` or `< 1/alpha 2e4`.
fn threshold(alpha: f64, failing: bool) -> String {
    format!(
        "{} 1/alpha {:.0e}",
        if failing { ">=" } else { "<" },
        1.0 / alpha
    )
}

/// The factor `K` when `left op right` is a relative error gate: `error_rate > K *
/// baseline.error_rate`, `error_rate > baseline.error_rate * K`, `error_rate >
/// baseline.error_rate` (K = 1), `error_rate > baseline.error_rate / D` (K = 1/D),
/// `error_rate / baseline.error_rate > K`, each also with `>=` and mirrored (`K *
/// baseline.error_rate < error_rate`). `None` for anything else, which is evaluated as
/// arithmetic.
fn relative_error_factor(left: &Value, op: CmpOp, right: &Value) -> Option<f64> {
    let (canary_side, baseline_side) = match op {
        CmpOp::Gt | CmpOp::Ge => (left, right),
        CmpOp::Lt | CmpOp::Le => (right, left),
    };
    let canary = Value::Metric {
        group: Group::Canary,
        metric: Metric::ErrorRate,
    };
    let baseline = Value::Metric {
        group: Group::Baseline,
        metric: Metric::ErrorRate,
    };
    let scalar = |value: &Value| match value {
        Value::Literal {
            value,
            dimension: Dimension::Scalar,
        } => Some(*value),
        _ => None,
    };
    let factor = if *canary_side == canary {
        match baseline_side {
            side if *side == baseline => Some(1.0),
            Value::Arith {
                op: ArithOp::Mul,
                left,
                right,
            } if **right == baseline => scalar(left),
            Value::Arith {
                op: ArithOp::Mul,
                left,
                right,
            } if **left == baseline => scalar(right),
            Value::Arith {
                op: ArithOp::Div,
                left,
                right,
            } if **left == baseline => scalar(right).map(|divisor| 1.0 / divisor),
            _ => None,
        }
    } else {
        match canary_side {
            Value::Arith {
                op: ArithOp::Div,
                left,
                right,
            } if **left == canary && **right == baseline => scalar(baseline_side),
            _ => None,
        }
    };
    factor.filter(|factor| *factor > 0.0 && factor.is_finite())
}
