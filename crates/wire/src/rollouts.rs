//! Rollouts: start one, command it, approve a stage, retry one that ended badly.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/rollouts`. `plan` is a plan file's text (YAML; JSON accepted), parsed and
/// checked (422 naming the file, line and field); the unit and version must exist (404).
/// Overrides are an admin's (403) and need a `reason` (422).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRolloutRequest {
    #[schema(schema_with = crate::schema::unit_name)]
    pub unit: String,
    #[schema(schema_with = crate::schema::hash)]
    pub version: String,
    pub plan: String,
    /// The plan file's name, for error messages.
    #[serde(default)]
    pub plan_file: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub reason: String,
    #[serde(default)]
    pub override_quarantine: bool,
    /// Start during a freeze (logged in the rollout's reason).
    #[serde(default)]
    pub override_freeze: bool,
    /// Start although the unit's error budget is spent.
    #[serde(default)]
    pub override_error_budget: bool,
}

/// An operator's command on a rollout (`approve` goes to `/v1/rollouts/{id}/approve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutCommand {
    Pause,
    Resume,
    /// Skip the rest of the current stage's bake; on a soaking rollout, end the soak.
    Promote,
    /// Stop where it is: exposed nodes keep the new version.
    Abort,
    /// Revert every exposed node.
    Rollback,
}

/// `POST /v1/rollouts/{id}/commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub command: RolloutCommand,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub reason: String,
}

/// `POST /v1/rollouts/{id}/retry`: the same version through the same plan; an empty body is
/// `{}`. Overrides are an admin's (403) and need a `reason` (422).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub reason: String,
    #[serde(default)]
    pub override_quarantine: bool,
    #[serde(default)]
    pub override_error_budget: bool,
}

/// Where a rollout is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    /// As in JSON: `queued`, `running`, `paused`, `completed`, `rolled_back`, `aborted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
        }
    }

    /// Completed, rolled back or aborted: it moves no more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::RolledBack | Self::Aborted)
    }
}

/// Where a running rollout is inside its current stage: a name, or a one-key object naming
/// the phase and the instant (ms since the Unix epoch) it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StagePhase {
    /// Waiting until every exposed node has ACKed the version.
    Applying,
    /// Every exposed node ACKed; baking until `bake_ends_ms`.
    Baking { bake_ends_ms: u64 },
    /// The bake is over but the stage has not passed: held until it passes or times out.
    Holding,
    /// The stage passed and waits for a person's approval.
    AwaitingApproval,
    /// The stage passed; moves on when the earlier rollout of the unit left the next stage.
    Passed,
    /// The last stage passed; still judged on every exposed node until `soak_ends_ms`.
    Soaking { soak_ends_ms: u64 },
    /// Watching the first stage's nodes on their current version until `observe_ends_ms`
    /// (the pre-period the canary is compared with).
    Observing { observe_ends_ms: u64 },
}

/// What a gate concluded, with the numbers behind it (a one-key object: `Pass`, `Fail` or
/// `Inconclusive`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Verdict {
    /// The failure condition is false on enough data.
    Pass { detail: String },
    /// The failure condition is true.
    Fail { detail: String },
    /// Not enough data to say: hold, never promote.
    Inconclusive { detail: String },
}

/// A gate's latest verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GateReport {
    /// The gate's expression.
    pub gate: String,
    pub verdict: Verdict,
}

/// The health of a group of nodes (the current stage's canary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupMetrics {
    /// Nodes in the group.
    pub nodes: u64,
    /// The sum of every sample of every node in the group.
    pub sample: crate::reports::HealthSample,
    /// Nodes that rejected the version (NACK).
    pub rejections: u64,
    /// Consumer crashes reported.
    pub crashes: u64,
    /// Failed post-apply health checks reported.
    pub health_check_failures: u64,
    /// Nodes that stopped reporting for longer than the stage allows.
    pub silent_nodes: u64,
}

impl GroupMetrics {
    /// Requests over the group's samples.
    pub fn requests(&self) -> u64 {
        self.sample.requests
    }

    /// Errors over the group's samples.
    pub fn errors(&self) -> u64 {
        self.sample.errors
    }
}

impl Default for GroupMetrics {
    fn default() -> Self {
        Self {
            nodes: 0,
            sample: crate::reports::HealthSample {
                requests: 0,
                errors: 0,
                latency: crate::reports::LatencyHistogram {
                    counts: [0; failsmall_core::health::LATENCY_BUCKETS],
                },
            },
            rejections: 0,
            crashes: 0,
            health_check_failures: 0,
            silent_nodes: 0,
        }
    }
}

/// A rollout: `POST /v1/rollouts`, `GET /v1/rollouts/{id}`, its commands, approvals and
/// retries answer with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    /// The rollout's number (`rN`).
    pub id: u64,
    pub unit: String,
    /// The version it rolls out (SHA-256, hex).
    pub version: String,
    /// The plan's name.
    pub plan: String,
    /// Who started it.
    pub actor: String,
    pub reason: String,
    pub status: RolloutStatus,
    pub phase: StagePhase,
    /// The current stage, from 0.
    pub stage_index: u64,
    pub stage_name: String,
    pub stages_total: u64,
    /// Nodes the current stage's own selection holds.
    pub nodes_targeted: u64,
    /// Nodes that ACKed the version.
    pub nodes_applied: u64,
    /// Nodes the rollout reached so far (the union over entered stages).
    pub nodes_exposed: u64,
    /// Bake left, in ms (frozen while paused); `null` when not baking.
    pub bake_remaining_ms: Option<u64>,
    /// Soak left, in ms, while soaking.
    #[serde(default)]
    pub soak_remaining_ms: Option<u64>,
    /// The current stage's gates and their latest verdicts.
    pub gates: Vec<GateReport>,
    /// The current stage's canary health and hard signals.
    pub canary: GroupMetrics,
    /// ms since the Unix epoch.
    pub created_ms: u64,
    /// ms since the Unix epoch; `null` while it runs.
    pub ended_ms: Option<u64>,
    /// Why it ended.
    pub outcome: Option<String>,
    /// The freeze that holds it before its next stage or its start (`freeze ID: reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by_freeze: Option<String>,
    /// The current stage's silent canary nodes against the unexposed nodes' silence, as last
    /// judged; absent before the first judgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence: Option<Silence>,
}

/// Silence judged like for like: the canary's silent nodes against those of the nodes the
/// version has not reached, over the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Silence {
    /// Silent canary nodes, of `watched` (ACKed, not in maintenance).
    pub silent: u64,
    pub watched: u64,
    /// The unexposed nodes compared with (at most 2,000): silent, of watched; `null` when
    /// there were none (the plan's `silent_nodes` threshold alone decides).
    pub baseline_silent: Option<u64>,
    pub baseline_watched: Option<u64>,
    /// Silent canary nodes the unexposed nodes' rate explains: the stage neither holds for
    /// them nor blames the version.
    pub tolerated: u64,
    /// More silent canary nodes than this (and at the plan's threshold) is a hard signal:
    /// rollback and quarantine.
    pub blame_above: u64,
}

/// `GET /v1/rollouts`: one page, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<Rollout>,
    /// The `after` of the next page; `null` on the last page.
    pub next: Option<String>,
}

mod from_core {
    use failsmall_core::engine as core;

    impl From<core::RolloutStatus> for super::RolloutStatus {
        fn from(status: core::RolloutStatus) -> Self {
            use core::RolloutStatus as C;
            match status {
                C::Queued => Self::Queued,
                C::Running => Self::Running,
                C::Paused => Self::Paused,
                C::Completed => Self::Completed,
                C::RolledBack => Self::RolledBack,
                C::Aborted => Self::Aborted,
            }
        }
    }

    impl From<core::StagePhase> for super::StagePhase {
        fn from(phase: core::StagePhase) -> Self {
            use core::StagePhase as C;
            match phase {
                C::Applying => Self::Applying,
                C::Baking { bake_ends_ms } => Self::Baking { bake_ends_ms },
                C::Holding => Self::Holding,
                C::AwaitingApproval => Self::AwaitingApproval,
                C::Passed => Self::Passed,
                C::Soaking { soak_ends_ms } => Self::Soaking { soak_ends_ms },
                C::Observing { observe_ends_ms } => Self::Observing { observe_ends_ms },
            }
        }
    }

    impl From<failsmall_core::gate::Verdict> for super::Verdict {
        fn from(verdict: failsmall_core::gate::Verdict) -> Self {
            use failsmall_core::gate::Verdict as C;
            match verdict {
                C::Pass { detail } => Self::Pass { detail },
                C::Fail { detail } => Self::Fail { detail },
                C::Inconclusive { detail } => Self::Inconclusive { detail },
            }
        }
    }

    impl From<failsmall_core::health::GroupMetrics> for super::GroupMetrics {
        fn from(group: failsmall_core::health::GroupMetrics) -> Self {
            Self {
                nodes: group.nodes,
                sample: crate::reports::HealthSample {
                    requests: group.sample.requests,
                    errors: group.sample.errors,
                    latency: crate::reports::LatencyHistogram {
                        counts: group.sample.latency.counts,
                    },
                },
                rejections: group.rejections,
                crashes: group.crashes,
                health_check_failures: group.health_check_failures,
                silent_nodes: group.silent_nodes,
            }
        }
    }

    impl From<core::RolloutView> for super::Rollout {
        fn from(view: core::RolloutView) -> Self {
            Self {
                id: view.id.0,
                unit: view.unit.as_str().to_owned(),
                version: view.version.to_string(),
                plan: view.plan,
                actor: view.actor,
                reason: view.reason,
                status: view.status.into(),
                phase: view.phase.into(),
                stage_index: u64::try_from(view.stage_index).unwrap_or(u64::MAX),
                stage_name: view.stage_name,
                stages_total: u64::try_from(view.stages_total).unwrap_or(u64::MAX),
                nodes_targeted: view.nodes_targeted,
                nodes_applied: view.nodes_applied,
                nodes_exposed: view.nodes_exposed,
                bake_remaining_ms: view.bake_remaining_ms,
                soak_remaining_ms: view.soak_remaining_ms,
                gates: view
                    .gates
                    .into_iter()
                    .map(|gate| super::GateReport {
                        gate: gate.gate,
                        verdict: gate.verdict.into(),
                    })
                    .collect(),
                canary: view.canary.into(),
                created_ms: view.created_ms,
                ended_ms: view.ended_ms,
                outcome: view.outcome,
                held_by_freeze: view.held_by_freeze,
                silence: view.silence.map(|silence| super::Silence {
                    silent: silence.silent,
                    watched: silence.watched,
                    baseline_silent: silence.baseline_silent,
                    baseline_watched: silence.baseline_watched,
                    tolerated: silence.tolerated,
                    blame_above: silence.blame_above,
                }),
            }
        }
    }
}
