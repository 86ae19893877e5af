//! The rollout engine: a pure, deterministic state machine.
//!
//! `Engine::step(now_ms, event)` applies one [`Event`] and returns the [`Action`]s the caller
//! must carry out. It never reads a clock, never does IO, never draws a random number; the
//! same sequence of `(now_ms, event)` always yields the same state and actions. On `Err` the
//! state is unchanged.

use serde::{Deserialize, Serialize};

use crate::domain::{Labels, NodeId, RolloutId, TimeMs, UnitName, VersionHash};
use crate::gate::Verdict;
use crate::health::HealthSample;
use crate::plan::Plan;

/// Operator commands on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Pause,
    Resume,
    /// Skip the rest of the current stage's bake (gates must still not be failing).
    Promote,
    /// Stop where it is: exposed nodes keep the new version; ends `aborted`.
    Abort,
    /// Revert every exposed node; ends `rolled_back`.
    Rollback,
    /// Satisfy the current stage's manual approval.
    Approve,
}

/// Everything that can happen to the engine. One closed enum: every trigger is here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A node joined the fleet or changed its labels.
    NodeRegistered { node: NodeId, labels: Labels },
    /// A node left the fleet for good.
    NodeRemoved { node: NodeId },
    /// A new version should roll out through `plan`.
    RolloutRequested {
        unit: UnitName,
        version: VersionHash,
        plan: Plan,
        actor: String,
        reason: String,
        /// Admin override: deploy a quarantined hash anyway.
        override_quarantine: bool,
    },
    /// The node activated `version` of `unit` (ACK).
    Applied { node: NodeId, unit: UnitName, version: VersionHash },
    /// The node refused `version` of `unit` (NACK).
    Rejected { node: NodeId, unit: UnitName, version: VersionHash, reason: String },
    /// A consumer on the node crashed while running `version` of `unit`.
    Crashed { node: NodeId, unit: UnitName, version: VersionHash, reason: String },
    /// A post-apply HTTP health check failed on the node.
    HealthCheckFailed { node: NodeId, unit: UnitName, version: VersionHash, reason: String },
    /// Health over one interval, attributed to the version that was active.
    Health { node: NodeId, unit: UnitName, version: VersionHash, sample: HealthSample },
    /// Time passed; deadlines (bakes, timeouts, silences) are checked.
    Tick,
    /// An operator's command.
    Command { rollout: RolloutId, command: Command, actor: String, reason: String },
}

/// What the caller must do after a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// These nodes should now run `version` of `unit` (`None`: no version at all).
    SetDesired { unit: UnitName, version: Option<VersionHash>, nodes: Vec<NodeId> },
    /// Tell people (status page, chat, CLI watchers).
    Notify { rollout: RolloutId, message: String },
    /// Record a change in the global changelog.
    Changelog(ChangelogEntry),
}

/// Kinds of change recorded in the changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    RolloutQueued,
    RolloutStarted,
    StageStarted,
    GateVerdict,
    StagePassed,
    Approved,
    Paused,
    Resumed,
    Promoted,
    RolledBack,
    Aborted,
    Completed,
    Quarantined,
    Superseded,
}

/// One changelog record: who did what, why, where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangelogEntry {
    pub at_ms: TimeMs,
    pub actor: String,
    pub kind: ChangeKind,
    pub unit: UnitName,
    pub version: VersionHash,
    pub rollout: RolloutId,
    /// The stage's name, when the change concerns one.
    pub stage: Option<String>,
    pub reason: String,
}

/// Where a rollout is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    Queued,
    Running,
    Paused,
    Completed,
    RolledBack,
    Aborted,
}

impl RolloutStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::RolledBack | Self::Aborted)
    }
}

/// A gate's latest verdict, for people and the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    pub gate: String,
    pub verdict: Verdict,
}

/// Why a step was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("no rollout {0}")]
    UnknownRollout(RolloutId),
    #[error("rollout {rollout} is {status:?}; {command:?} needs it to be {expected}")]
    InvalidCommand { rollout: RolloutId, status: RolloutStatus, command: Command, expected: &'static str },
    #[error("version {version} of unit {unit} is quarantined after a rollback; an admin override is needed")]
    Quarantined { unit: UnitName, version: VersionHash },
    #[error("unit {unit} already has {queued} rollouts queued, the plan's limit")]
    QueueFull { unit: UnitName, queued: u32 },
    #[error("plan {plan:?} has no stages")]
    EmptyPlan { plan: String },
    #[error("{actor} pushed this version and so cannot approve it; another person must")]
    SelfApproval { actor: String },
    #[error("rollout {rollout}'s current stage does not wait for an approval")]
    NoApprovalPending { rollout: RolloutId },
}
