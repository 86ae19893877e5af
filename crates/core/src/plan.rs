//! Rollout plans: ordered stages, each selecting nodes by labels and a percent, with a bake
//! time, gates and an optional manual approval. Parsed from YAML (JSON accepted) by
//! [`Plan::parse`]; every error names the file, the line and the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gate::Gate;

/// Which nodes a stage may touch: every listed label must match one of its values. An empty
/// selector matches every node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Selector {
    pub labels: BTreeMap<String, Vec<String>>,
}

impl Selector {
    pub fn matches(&self, labels: &crate::domain::Labels) -> bool {
        self.labels.iter().all(|(key, values)| {
            labels.get(key).is_some_and(|value| values.iter().any(|v| v == value))
        })
    }
}

/// Share of a stage's selected nodes, in basis points (10_000 = 100%).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Percent {
    pub basis_points: u32,
}

impl Percent {
    pub const ALL: Percent = Percent { basis_points: 10_000 };
}

/// Thresholds for the signals that fail a gate at once, without statistics. A count at or
/// above its threshold fails the stage.
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
        Self { rejections_max: 1, crashes_max: 1, health_check_failures_max: 1, silent_nodes_max: 1 }
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
    /// A person must approve before the rollout leaves this stage.
    pub approval: bool,
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
