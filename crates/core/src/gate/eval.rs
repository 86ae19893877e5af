//! Three-valued evaluation of a gate on a canary and its baseline.

use super::*;
use crate::stats::two_proportion_z;

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
            Value::Metric { .. } => format!("{value} {shown}"),
            Value::Arith { .. } => format!("{value} = {shown}"),
        }
    }

    pub(super) fn condition(&self, expr: &GateExpr) -> (Truth, String) {
        match expr {
            GateExpr::Compare { left, op, right } => match (self.value(left), self.value(right)) {
                (Ok(l), Ok(r)) => {
                    let (left_text, right_text) =
                        (Self::describe(left, l), Self::describe(right, r));
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
            },
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

    fn significant(&self, metric: Metric, alpha: f64) -> (Truth, String) {
        let name = metric.name();
        let groups = self
            .group(Group::Canary, metric)
            .and_then(|canary| Ok((canary, self.group(Group::Baseline, metric)?)));
        let (canary, baseline) = match groups {
            Ok(groups) => groups,
            Err(reason) => {
                return (
                    Truth::Unknown,
                    format!("significant({name} > baseline.{name}): inconclusive, {reason}"),
                );
            }
        };
        let Some(test) = two_proportion_z(
            canary.errors(),
            canary.requests(),
            baseline.errors(),
            baseline.requests(),
        ) else {
            return (
                Truth::Unknown,
                format!(
                    "significant({name} > baseline.{name}): inconclusive, a group has no requests"
                ),
            );
        };
        let rate =
            |group: &GroupMetrics| format_in(Dimension::Ratio, group.error_rate().unwrap_or(0.0));
        let failing = test.p_value < alpha;
        let detail = format!(
            "{name} {} ({}/{}) vs baseline {} ({}/{}): z={:.2}, p={:.1e} {} alpha {alpha:e}",
            rate(canary),
            canary.errors(),
            canary.requests(),
            rate(baseline),
            baseline.errors(),
            baseline.requests(),
            test.z,
            test.p_value,
            if failing { "<" } else { ">=" },
        );
        (if failing { Truth::True } else { Truth::False }, detail)
    }
}
