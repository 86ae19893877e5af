//! Gate expressions: failure conditions on the health of a stage's canary nodes compared with
//! its baseline nodes, e.g. `p99_latency > 200ms OR error_rate > 0.5%`.
//!
//! (Parser, unit checker and evaluator: see the module body.)

use serde::{Deserialize, Serialize};

use crate::health::GroupMetrics;

/// One gate of a stage, as written and as parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// The expression as the plan file wrote it.
    pub source: String,
    pub expr: GateExpr,
}

/// Placeholder until the parser lands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GateExpr {}

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

impl Gate {
    /// Evaluates the failure condition on the canary, against the baseline when there is one.
    pub fn evaluate(
        &self,
        _canary: &GroupMetrics,
        _baseline: Option<&GroupMetrics>,
        _min_requests: u64,
    ) -> Verdict {
        Verdict::Inconclusive { detail: format!("gate {:?} cannot be evaluated yet", self.source) }
    }
}
