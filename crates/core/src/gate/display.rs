//! Canonical text of gate expressions, used in verdict details.

use std::fmt;

use super::*;

pub(super) fn format_number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 0.01 {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else if value.abs() >= 1e-4 {
        let text = format!("{value:.6}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        format!("{value:.2e}")
    }
}

pub(super) fn format_in(dimension: Dimension, value: f64) -> String {
    match dimension {
        Dimension::Latency => format!("{}ms", format_number(value)),
        Dimension::Ratio => format!("{}%", format_number(value * 100.0)),
        Dimension::Count | Dimension::Scalar => format_number(value),
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Literal { value, dimension } => f.write_str(&format_in(*dimension, *value)),
            Value::Metric {
                group: Group::Canary,
                metric,
            } => f.write_str(metric.name()),
            Value::Metric {
                group: Group::Baseline,
                metric,
            } => {
                write!(f, "baseline.{}", metric.name())
            }
            Value::BurnRate { window } => write!(f, "burn_rate_{}", window.as_str()),
            Value::Custom {
                group: Group::Canary,
                name,
            } => write!(f, "custom.{name}"),
            Value::Custom {
                group: Group::Baseline,
                name,
            } => write!(f, "baseline.custom.{name}"),
            Value::Arith { op, left, right } => {
                for (index, side) in [left, right].into_iter().enumerate() {
                    if index == 1 {
                        write!(f, " {} ", op.symbol())?;
                    }
                    if matches!(**side, Value::Arith { .. }) {
                        write!(f, "({side})")?;
                    } else {
                        write!(f, "{side}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for GateExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, parts: &[GateExpr], keyword: &str| {
            for (index, part) in parts.iter().enumerate() {
                if index > 0 {
                    write!(f, " {keyword} ")?;
                }
                if matches!(part, GateExpr::Or(_) | GateExpr::And(_)) {
                    write!(f, "({part})")?;
                } else {
                    write!(f, "{part}")?;
                }
            }
            Ok(())
        };
        match self {
            GateExpr::Compare { left, op, right } => write!(f, "{left} {} {right}", op.symbol()),
            GateExpr::Significant { metric, alpha } => {
                write!(
                    f,
                    "significant({0} > baseline.{0}, alpha={alpha:e})",
                    metric.name()
                )
            }
            GateExpr::Not(inner) => write!(f, "NOT ({inner})"),
            GateExpr::And(parts) => join(f, parts, "AND"),
            GateExpr::Or(parts) => join(f, parts, "OR"),
        }
    }
}
