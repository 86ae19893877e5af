//! The rollout engine: a pure, deterministic state machine.
//!
//! `Engine::step(now_ms, event)` applies one [`Event`] and returns the [`Action`]s the caller
//! must carry out. It never reads a clock, never does IO, never draws a random number; the
//! same sequence of `(now_ms, event)` always yields the same state and actions. On `Err` the
//! state is unchanged. The whole state is in [`Engine`] and serializes with serde: a snapshot
//! with the events stepped after it replayed in order restarts exactly where it was.
//!
//! # A rollout's life
//! `RolloutRequested` starts a rollout at stage 0, or queues it behind the unit's running one
//! (`Concurrency::Queue`), or, in a release train (`Concurrency::Train`), starts it once the
//! earlier version has left stage 0. Entering stage `i` exposes every node selected by stages
//! `0..=i` (see [`crate::select`]; the set only grows) and records, per node, the version it had
//! before. Each stage then goes through [`StagePhase`]s:
//!
//! 1. `Applying`: wait until every exposed node ACKed the version;
//! 2. `Baking`: `bake_ms` of canary health;
//! 3. `Holding`: the bake is over; the stage passes only when every gate's verdict is `Pass`,
//!    computed in that very step, with at least `min_requests` canary requests and no silent
//!    canary node. An inconclusive gate holds, never promotes;
//! 4. `AwaitingApproval` when the *next* stage asks for an approval (an approval comes before
//!    a stage exposes its nodes; for the first stage, right after the start, before it is
//!    entered), then `Passed`: on to the next stage;
//! 5. after the last stage, `Soaking` for the plan's `soak_ms` (none when `0`): the last
//!    stage's gates and hard signals keep judging every exposed node, as in a stage, over a
//!    fresh window of health; a failure rolls back ("rolled back during soak"), an
//!    inconclusive gate never fails it, an operator's `Promote` ends it at once. Then
//!    `Completed`. Queued rollouts of the unit wait behind a soaking one.
//!
//! A completed version becomes the unit's stable version (what later nodes get) only with
//! evidence: a gated stage ([`Stage::is_gated`]) passed with at least one node that ACKed it.
//! Without it the rollout still completes, but the stable version stays ("completed without a
//! stable version"). [`Engine::trial`] names the open rollout still judging what a node runs.
//!
//! A gate `Fail`, a hard signal (NACK, crash, failed health check, silent nodes, each against
//! its threshold), the stage's `timeout_ms` (counted from its entry, `0` = none) or an
//! operator's `Rollback` reverts every exposed node to its own previous version in the same
//! step and quarantines the hash for the unit. Hard signals act in the step that reports
//! them, even while the rollout is paused; gates are evaluated on `Tick`, at most once per
//! [`GATE_EVAL_INTERVAL_MS`], when a bake ends, when a stage is about to pass, and — after an
//! evaluation that lacked data — in the step whose report could end the hold.
//!
//! Health accounting of the current stage. The canary is the exposed nodes that ACKed (their
//! samples for the rollout's version); an absolute gate (`error_rate > 0.5%`) reads all of it.
//! A comparison with the baseline must compare like with like, so it reads the *stage
//! canary*, the nodes this stage exposed, against a baseline of the same population:
//!
//! 1. the nodes the stage's selector matches that are not exposed (concurrent, same
//!    population: Kayenta's design);
//! 2. if there are none (the stage takes its whole selection, like `employees` at 100%), the
//!    same nodes before they had the version: their *pre-period*. A later stage's is their
//!    health while the stage before it ran; the first stage observes them for its bake before
//!    exposing any ([`StagePhase::Observing`]). A before/after comparison confounds the time, so
//!    the unexposed nodes outside the stage are its *time control*: the pre-period's error rate
//!    is carried to now as much as they got worse (the larger of the relative and the absolute
//!    change), and when they got significantly worse in what a failing gate reads, the verdict
//!    is "fleet changed": hold, never blame (see `judge`);
//! 3. with no pre-period either (a unit's first version: no node ran anything), every
//!    unexposed node, and once the rollout reached every node, the latest baseline carried.
//!
//! A stage whose pre-period so far lacks its `min_requests` (the first stage; one after a
//! stage that passed at once) observes its nodes first. A stage that selects no node it has
//! not exposed already passes at once. With every node exposed, the stage's own nodes and the
//! earlier stages' nodes are each other's time control; when all of them got worse together,
//! nothing tells the version from the time, and the stage (or the soak, which never completes
//! into it) holds as fleet unhealthy. After a "fleet unhealthy" verdict every window starts
//! again after that moment, so that the groups cover the same time.
//!
//! The nodes of earlier stages are compared with themselves too: in each gate that reads the
//! baseline, their health now against their health in the stage before (same nodes, same
//! version, with the same time control), so a failure that starts late is caught while few
//! nodes fail. The soak compares every exposed node with itself during the last stage.
//!
//! [`Engine::wants_health`] tells which nodes' reports count now. A canary node with no report
//! about the unit for `silence_ms` (`0` = not checked) is silent; silent canary nodes count
//! against the version only beyond the silence of the unexposed nodes over the same time
//! (`engine/silence.rs`). When a rollback quarantines
//! a hash, every queued rollout of the same unit and hash ends at once (`Aborted`, changelog
//! kind `Superseded`, "version quarantined after rollback rN"): the same bytes would fail the
//! same way.
//!
//! # Speed
//! `Health` is the hot event (one per node per interval), bound by cache misses. Node ids get
//! dense slots (an FxHash map keyed by the id inline, lookups only; the slot after the
//! previous lookup's is tried first, since fleets report in a stable order). Each running
//! rollout keeps every node's role (exposed, with the position of its record in the rollout's
//! dense exposure list; baseline of the stage's selector; rest of the fleet) in a vector by
//! slot, with the baseline counts kept up to date as nodes register, leave, or get exposed;
//! it is rebuilt when a stage is entered. So a report costs one slot lookup and, per running
//! rollout of the unit, a role read and a record update, with no hashing of the id; a gate
//! evaluation does not scan the fleet. These indexes are derived: serde
//! skips them, the first step after deserialization rebuilds them, equality ignores them, and
//! [`Engine::check_derived_indexes`] compares them with a fresh rebuild.
//!
//! Architecture invariant: anything iterated into an action or a query is ordered (`BTreeMap`,
//! sorted `Vec`); the hash maps keyed by node id serve lookups only, and node slots never
//! reach an output.

use std::collections::{BTreeMap, HashMap, VecDeque};

use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

use crate::domain::{Labels, NodeId, RolloutId, TimeMs, UnitName, VersionHash};
use crate::freeze::{Freeze, Maintenance, Windows};
use crate::gate::{Gate, Verdict};
use crate::health::{CustomValues, GroupMetrics, HealthSample};
use crate::plan::{Concurrency, OnInconclusive, Plan, Stage};
use crate::select;
use custom::{BaselineFrom, ControlFrom, CustomWindows};

mod custom;
mod events;
mod index;
mod judge;
mod lifecycle;
mod operator;
mod silence;
mod windows;

use index::{Derived, Exposure, Exposures, FleetIndex, Role, RoleIndex};
pub use operator::QuarantinedVersion;
use silence::{BaselineHearing, SilenceJudgement};
pub use silence::{SILENCE_ALPHA, SilenceView};

/// Operator commands on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Pause,
    Resume,
    /// Skip the rest of the current stage's bake (gates must still not be failing); on a
    /// soaking rollout, end the soak at once (the rollout completes).
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
    /// The control plane has not heard from the `down` nodes' agents for its threshold, and
    /// hears from the `up` ones again. A down node is left out of the stages that start while it
    /// is down (a dead node is not a canary); once up, it gets what the entered stages of
    /// running rollouts select for it. A node already exposed that falls silent still counts
    /// against the version (`silence`).
    Liveness { down: Vec<NodeId>, up: Vec<NodeId> },
    /// A new version should roll out through `plan`.
    RolloutRequested {
        unit: UnitName,
        version: VersionHash,
        plan: Plan,
        actor: String,
        reason: String,
        /// Admin override: deploy a quarantined hash anyway.
        override_quarantine: bool,
        /// Admin override: start (and go through its stages) while a freeze covers it.
        #[serde(default)]
        override_freeze: bool,
    },
    /// The node activated `version` of `unit` (ACK).
    Applied {
        node: NodeId,
        unit: UnitName,
        version: VersionHash,
    },
    /// The node refused `version` of `unit` (NACK).
    Rejected {
        node: NodeId,
        unit: UnitName,
        version: VersionHash,
        reason: String,
    },
    /// A consumer on the node crashed while running `version` of `unit`.
    Crashed {
        node: NodeId,
        unit: UnitName,
        version: VersionHash,
        reason: String,
    },
    /// A post-apply HTTP health check failed on the node.
    HealthCheckFailed {
        node: NodeId,
        unit: UnitName,
        version: VersionHash,
        reason: String,
    },
    /// Health over one interval, attributed to the version that was active.
    Health {
        node: NodeId,
        unit: UnitName,
        version: VersionHash,
        sample: HealthSample,
    },
    /// Health over one interval that the control plane read from a monitoring system (a
    /// plan's `health_source`), attributed to the version the node ran. It counts only for
    /// rollouts whose plan takes health from there; [`Event::Health`] only for the others.
    MonitoredHealth {
        node: NodeId,
        unit: UnitName,
        version: VersionHash,
        sample: HealthSample,
        /// The node's readings of the plan's custom metrics (`health_source.prometheus.
        /// metrics`), for gates that read `custom.NAME`.
        #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
        custom: CustomValues,
    },
    /// Time passed; deadlines (bakes, timeouts, silences) are checked.
    Tick,
    /// An operator's command.
    Command {
        rollout: RolloutId,
        command: Command,
        actor: String,
        reason: String,
    },
    /// An admin lifted the quarantine of `version` of `unit` (see `engine/operator.rs`).
    QuarantineLifted {
        unit: UnitName,
        version: VersionHash,
        actor: String,
        reason: String,
    },
    /// Revert the nodes an aborted rollout left on its version (see `engine/operator.rs`).
    RevertAborted {
        rollout: RolloutId,
        actor: String,
        reason: String,
    },
    /// A unit was deleted: it leaves every node (see `engine/operator.rs`).
    UnitRemoved { unit: UnitName },
    /// An admin froze rollouts (see `engine/windows.rs`); `freeze.id` is
    /// [`Engine::next_window_id`].
    FreezeCreated { freeze: Freeze },
    /// An admin lifted freeze `id`.
    FreezeLifted { id: u64 },
    /// An admin put nodes in maintenance; `maintenance.id` is [`Engine::next_window_id`].
    MaintenanceCreated { maintenance: Maintenance },
    /// An admin ended maintenance window `id` early.
    MaintenanceEnded { id: u64 },
    /// The service's burn rates now (the highest among `unit`'s SLOs, per window): what
    /// burn-rate gates of `unit`'s running rollouts read until the next such event. The
    /// control plane sends them while a running rollout's plan has a burn-rate gate.
    BurnRates {
        unit: UnitName,
        burn_rates: crate::slo::BurnRates,
    },
}

/// What the caller must do after a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// These nodes should now run `version` of `unit` (`None`: no version at all).
    SetDesired {
        unit: UnitName,
        version: Option<VersionHash>,
        nodes: Vec<NodeId>,
    },
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
    /// A stage could not conclude by its timeout and holds (`on_inconclusive: hold`).
    Held,
    /// An absolute gate failed on the baseline as much as on the canary: the stage holds.
    FleetUnhealthy,
    /// The last stage passed; the rollout keeps watching it until the soak ends.
    SoakStarted,
    /// The soak ended with no failing gate or hard signal.
    SoakPassed,
    /// An admin lifted a version's quarantine.
    QuarantineLifted,
    /// The rollout reached a stage that waits for a manual approval before it exposes its
    /// nodes (the entry names that stage).
    ApprovalNeeded,
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
    pub const ALL: [RolloutStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::RolledBack,
        Self::Aborted,
    ];

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
    InvalidCommand {
        rollout: RolloutId,
        status: RolloutStatus,
        command: Command,
        expected: &'static str,
    },
    #[error(
        "version {version} of unit {unit} is quarantined after a rollback; an admin override is needed"
    )]
    Quarantined {
        unit: UnitName,
        version: VersionHash,
    },
    #[error("unit {unit} already has {queued} rollouts queued, the plan's limit")]
    QueueFull { unit: UnitName, queued: u32 },
    #[error("plan {plan:?} has no stages")]
    EmptyPlan { plan: String },
    #[error("{actor} pushed this version and so cannot approve it; another person must")]
    SelfApproval { actor: String },
    #[error("{actor} already approved this stage; it needs another person's approval too")]
    AlreadyApproved { actor: String },
    #[error("rollout {rollout}'s current stage does not wait for an approval")]
    NoApprovalPending { rollout: RolloutId },
    #[error("no node {0} is registered; register it before it reports")]
    UnknownNode(NodeId),
    #[error("{what}: {given} is more than the limit of {limit}")]
    LimitReached {
        what: &'static str,
        given: usize,
        limit: usize,
    },
    #[error("version {version} of unit {unit} is not quarantined")]
    NotQuarantined {
        unit: UnitName,
        version: VersionHash,
    },
    #[error("unit {unit} has rollout {rollout} open; abort it or let it end first")]
    UnitBusy { unit: UnitName, rollout: RolloutId },
    #[error("rollout {rollout} cannot be reverted: {why}")]
    CannotRevert { rollout: RolloutId, why: String },
    #[error(
        "frozen: freeze {id} ({scope}, {window}) holds: {reason}; an admin may override with a reason"
    )]
    Frozen {
        id: u64,
        scope: String,
        window: String,
        reason: String,
    },
    #[error("no {what} {id}")]
    UnknownWindow { what: &'static str, id: u64 },
    #[error("window id {id} is taken (another was created meanwhile); try again")]
    WindowIdTaken { id: u64 },
    #[error("{0}")]
    InvalidWindow(#[from] crate::freeze::WindowError),
    #[error("burn rate over {window} is {value}; expected a finite number at or above 0")]
    InvalidBurnRate { window: &'static str, value: String },
}

/// Gates of a rollout are evaluated at most once per this many milliseconds of `now_ms` (on
/// `Tick`), plus once when a bake ends. This bounds how often the statistical tests run; a
/// `Health` event only merges a histogram.
pub const GATE_EVAL_INTERVAL_MS: u64 = 10_000;
/// Most nodes in the fleet.
pub const MAX_NODES: usize = 1_000_000;
/// Most labels on one node.
pub const MAX_LABELS_PER_NODE: usize = 64;
/// Most bytes in one label key or value.
pub const MAX_LABEL_BYTES: usize = 256;
/// Most units the engine tracks.
pub const MAX_UNITS: usize = 100_000;
/// Most rollouts that are not terminal (queued, running, paused), over all units.
pub const MAX_OPEN_ROLLOUTS: usize = 10_000;
/// Most terminal rollouts kept; beyond it the oldest are forgotten.
pub const MAX_TERMINAL_ROLLOUTS_KEPT: usize = 10_000;
/// Aborted and rolled-back rollouts keep their per-node exposure list while they are among
/// the latest this many terminal ones; a completed rollout keeps only its summary (counts,
/// health, gates, outcome).
pub const MAX_TERMINAL_ROLLOUTS_WITH_NODES: usize = 64;
/// Most stages in one plan.
pub const MAX_STAGES: usize = 64;
/// Most unexposed nodes per running rollout whose silence the canary's is set against (see
/// `engine/silence.rs`): the first heard; enough for a tight bound on the fleet's own rate.
pub const MAX_SILENCE_BASELINE_NODES: usize = 2_000;
/// Most quarantined hashes per unit; beyond it the oldest quarantine is lifted.
pub const MAX_QUARANTINED_PER_UNIT: usize = 1_024;
/// Reasons, actors and messages are cut to this many bytes.
pub const MAX_TEXT_BYTES: usize = crate::limits::TEXT_MAX_BYTES;
/// The actor of the changes the engine makes by itself.
pub const ENGINE_ACTOR: &str = "failsmall";
/// Most nodes a changelog entry names (the rest are counted).
pub const LEFT_OUT_NAMED_MAX: usize = 10;

/// `a, b, c and 7 more`: the first [`LEFT_OUT_NAMED_MAX`] of `nodes`, for a changelog entry.
pub fn name_nodes(nodes: &[NodeId]) -> String {
    let mut text = nodes
        .iter()
        .take(LEFT_OUT_NAMED_MAX)
        .map(NodeId::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let more = nodes.len().saturating_sub(LEFT_OUT_NAMED_MAX);
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// A hash map with a fixed, fast hasher (FxHash, from `rustc-hash`), for the hot lookups by
/// node id. Architecture invariant: its iteration order never reaches an output; whatever is
/// iterated into an action or a query is sorted first.
type LookupMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// Bound on the internal transitions of one rollout in one step (each stage can at most
/// enter, bake, hold and pass).
const MAX_TRANSITIONS_PER_STAGE: usize = 6;
/// Bound on the rounds that let the rollouts of one unit move each other along in one step.
const MAX_SETTLE_ROUNDS: usize = 2 * MAX_STAGES + 8;

/// Where a running rollout is inside its current stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagePhase {
    /// Waiting until every exposed node has ACKed the version.
    Applying,
    /// Every exposed node ACKed; baking until `bake_ends_ms`.
    Baking { bake_ends_ms: TimeMs },
    /// The bake is over but the stage has not passed (a gate inconclusive, too few requests,
    /// a silent or un-ACKed node): held, never promoted, until it passes or times out.
    Holding,
    /// The stage passed and waits for a person's approval.
    AwaitingApproval,
    /// The stage passed (and was approved when required); moves on as soon as the earlier
    /// train rollout of the unit has left the next stage.
    Passed,
    /// The last stage passed; its gates and hard signals keep being judged on every exposed
    /// node until `soak_ends_ms`, when the rollout completes. A failure rolls back.
    Soaking { soak_ends_ms: TimeMs },
    /// The first stage leaves no node of its selector unexposed: before exposing any, it
    /// watches its nodes' health on their current version until `observe_ends_ms` (and until
    /// it has `min_requests`), the pre-period its canary is compared with.
    Observing { observe_ends_ms: TimeMs },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NodeState {
    labels: Labels,
    /// Per unit, the version this node should run.
    desired: BTreeMap<UnitName, VersionHash>,
    /// Since when the control plane has not heard from the node (see [`Event::Liveness`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    down_since_ms: Option<TimeMs>,
    /// In a maintenance window now: in no canary and no baseline (see `engine/windows.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    maintenance: bool,
}

impl NodeState {
    /// Down or in maintenance: left out of the stages that start, in no baseline.
    fn out_of_service(&self) -> bool {
        self.down_since_ms.is_some() || self.maintenance
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct UnitState {
    stable: Option<VersionHash>,
    /// Running or paused rollouts, oldest first (more than one only in a release train).
    active: Vec<RolloutId>,
    queued: VecDeque<RolloutId>,
    /// Quarantined hashes, with the rollout whose rollback quarantined them.
    quarantined: BTreeMap<VersionHash, RolloutId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rollout {
    id: RolloutId,
    unit: UnitName,
    version: VersionHash,
    plan: Plan,
    actor: String,
    reason: String,
    status: RolloutStatus,
    created_ms: TimeMs,
    ended_ms: Option<TimeMs>,
    /// Why it ended.
    outcome: Option<String>,
    stage: usize,
    phase: StagePhase,
    stage_entered_ms: TimeMs,
    timeout_at_ms: Option<TimeMs>,
    paused_at_ms: Option<TimeMs>,
    exposed: Exposures,
    nodes_exposed: u64,
    nodes_applied: u64,
    nodes_targeted: u64,
    /// Canary health and hard signals since the current stage's entry.
    canary: GroupMetrics,
    /// Baseline health since the current stage's entry.
    baseline: GroupMetrics,
    /// The latest baseline this rollout judged against, carried into stages without one.
    baseline_carried: Option<GroupMetrics>,
    /// Exposed nodes count in the stage canary from this exposure stage on: the current stage
    /// when it exposed nodes of its own (a stage is compared with its baseline on the
    /// population it took), `0` (every exposed node) otherwise and while soaking.
    #[serde(default)]
    canary_from_stage: usize,
    /// The part of the canary that the current stage exposed (from `canary_from_stage` on):
    /// what a comparison with the baseline reads, so that both sides are one population.
    #[serde(default)]
    stage_canary: GroupMetrics,
    /// The rest of the canary: nodes that earlier stages exposed, since the stage's entry,
    /// and (`earlier_pre`) the same nodes over the stage before. A comparison with the
    /// baseline also compares them with themselves then: a failure that starts late shows.
    #[serde(default)]
    earlier: GroupMetrics,
    #[serde(default)]
    earlier_pre: Option<GroupMetrics>,
    /// The health windows take reports that arrive after this time: set when they start
    /// again after a "fleet unhealthy" verdict, whose moment's reports belong to the spell.
    #[serde(default)]
    window_from_ms: TimeMs,
    /// Since the stage's entry, the health of the unexposed nodes that the next stage (while
    /// observing: this one) will expose, on their previous version: its pre-period.
    #[serde(default)]
    upcoming: GroupMetrics,
    /// Over the same time, the other unexposed nodes: the next stage's time control.
    #[serde(default)]
    upcoming_control: GroupMetrics,
    /// The current stage's new nodes before they had the version: its baseline when the stage
    /// leaves no node of its own selector unexposed (see the module docs).
    #[serde(default)]
    pre_period: Option<GroupMetrics>,
    /// The nodes left unexposed by the stage, over the pre-period and (`control`) since the
    /// stage's entry: whether the fleet itself changed since the pre-period.
    #[serde(default)]
    control_pre: Option<GroupMetrics>,
    #[serde(default)]
    control: GroupMetrics,
    /// The custom metrics of each window above (plans whose health source declares some).
    #[serde(default, skip_serializing_if = "CustomWindows::is_empty")]
    custom: CustomWindows,
    gate_reports: Vec<GateReport>,
    last_gate_eval_ms: Option<TimeMs>,
    /// The latest time a report about the unit came from any of its nodes (exposed or not).
    /// Silence is judged against it, not against the clock: a node is silent when the unit's
    /// other nodes were heard `silence_ms` after it last spoke. A control plane that hears
    /// nobody (down, restarting, cut off from the fleet) learns nothing about the version.
    #[serde(default)]
    heard_ms: TimeMs,
    /// When the engine last began hearing the unit's nodes again after hearing none of them
    /// for longer than the stage's silence: silence counts from here for every node, so a
    /// spell in which nobody was heard is never held against the version.
    #[serde(default)]
    hearing_from_ms: TimeMs,
    /// The latest gate evaluation lacked data (see [`Rollout::has_data`]): the stage is judged
    /// again in the step that brings enough, not at the next periodic evaluation.
    #[serde(default)]
    held_for_data: bool,
    /// The latest evaluation found the fleet unhealthy, not the version (see `judge`).
    #[serde(default)]
    fleet_unhealthy: bool,
    /// When an absolute gate was first seen breached in the current spell (confirmed one
    /// evaluation interval later before it blames the version).
    #[serde(default)]
    breach_since_ms: Option<TimeMs>,
    /// The current stage selected only nodes busy in other units' rollouts
    /// (`exclusive_nodes`): it waits for one, without a timeout.
    #[serde(default)]
    waiting_for_nodes: bool,
    /// A gated stage (see [`Stage::is_gated`]) passed with at least one node that ACKed the
    /// version: the evidence a version needs to become the unit's stable version.
    #[serde(default)]
    gated_evidence: bool,
    /// The first stage asks for an approval, which comes before it exposes any node: the
    /// rollout started and waits (`AwaitingApproval`) without having entered it.
    #[serde(default)]
    awaiting_entry: bool,
    /// The distinct people who approved the stage that waits, while it needs more.
    #[serde(default)]
    approved_by: Vec<String>,
    /// An admin started it during a freeze: freezes never hold it.
    #[serde(default)]
    freeze_override: bool,
    /// The freeze holding it before its next stage (or its start), logged once per freeze.
    #[serde(default)]
    held_by_freeze: Option<u64>,
    /// The service's burn rates as last sent ([`Event::BurnRates`]), for burn-rate gates.
    #[serde(default, skip_serializing_if = "crate::slo::BurnRates::is_empty")]
    burn_rates: crate::slo::BurnRates,
    /// The unexposed nodes whose silence the canary's is set against (`engine/silence.rs`).
    #[serde(default, skip_serializing_if = "BaselineHearing::is_empty")]
    baseline_hearing: BaselineHearing,
    /// The latest silence judgement of the current stage.
    #[serde(default)]
    silence: SilenceJudgement,
    /// Derived: every node's role while the rollout is running or paused (empty otherwise).
    #[serde(skip)]
    roles: Derived<RoleIndex>,
}

impl Rollout {
    fn current_stage(&self) -> Option<&Stage> {
        self.plan.stages.get(self.stage)
    }

    /// Every health window starts again (at a stage's entry, an observation's, a soak's):
    /// the groups, and the verdicts judged on them.
    fn restart_windows(&mut self) {
        self.canary = GroupMetrics::default();
        self.stage_canary = GroupMetrics::default();
        self.earlier = GroupMetrics::default();
        self.baseline = GroupMetrics::default();
        self.control = GroupMetrics::default();
        self.custom.restart();
        self.gate_reports.clear();
        self.last_gate_eval_ms = None;
        self.held_for_data = false;
    }

    /// ACKed exposed nodes in the stage canary.
    fn stage_canary_nodes(&self) -> u64 {
        self.exposed
            .iter()
            .filter(|(_, exposure)| exposure.acked && exposure.stage >= self.canary_from_stage)
            .count() as u64
    }

    /// Whether stages `0..=last` select `node` (the set a rollout exposes by stage `last`).
    fn selects_through(&self, last: usize, node: &NodeId, labels: &Labels) -> bool {
        let bucket = select::bucket(&self.unit, node);
        self.plan
            .stages
            .iter()
            .take(last.saturating_add(1))
            .any(|stage| {
                stage.selector.matches(labels) && select::bucket_within(bucket, stage.percent)
            })
    }

    /// The stage whose new nodes' health is being collected as their pre-period: this one
    /// while it observes, else the next.
    fn upcoming_stage(&self) -> usize {
        match self.phase {
            StagePhase::Observing { .. } => self.stage,
            _ => self.stage.saturating_add(1),
        }
    }

    /// What the current stage's canary is compared with, and the time control when that is a
    /// pre-period: the unexposed nodes of the stage's own selector (concurrent, same
    /// population); else the stage's new nodes before the version; else, with no pre-period
    /// (a unit's first version), the other unexposed nodes, or the latest baseline carried.
    /// While soaking: every exposed node during the last stage.
    fn judged_baseline(&self) -> (Option<GroupMetrics>, Option<(GroupMetrics, GroupMetrics)>) {
        match self.baseline_from() {
            BaselineFrom::StageUnexposed => (
                Some(GroupMetrics {
                    nodes: self.roles.0.stage_unexposed,
                    ..self.baseline
                }),
                None,
            ),
            BaselineFrom::PrePeriod(control) => (
                self.pre_period,
                control.and_then(|control| match control {
                    ControlFrom::Unexposed => self.control_pre.map(|pre| (self.control, pre)),
                    ControlFrom::Earlier => self.earlier_pre.map(|pre| (self.earlier, pre)),
                }),
            ),
            BaselineFrom::FleetUnexposed(nodes) => (
                Some(GroupMetrics {
                    nodes,
                    ..self.baseline
                }),
                None,
            ),
            BaselineFrom::Carried => (self.baseline_carried, None),
        }
    }

    /// [`Rollout::judged_baseline`]'s groups' custom metrics: the baseline's (`None`: there
    /// is none) and the time control's (now, then).
    fn judged_custom_baseline(
        &self,
    ) -> (
        Option<&CustomValues>,
        Option<(&CustomValues, &CustomValues)>,
    ) {
        let custom = &self.custom;
        match self.baseline_from() {
            BaselineFrom::StageUnexposed | BaselineFrom::FleetUnexposed(_) => {
                (Some(&custom.baseline), None)
            }
            BaselineFrom::PrePeriod(control) => (
                Some(&custom.pre_period),
                control.map(|control| match control {
                    ControlFrom::Unexposed => (&custom.control, &custom.control_pre),
                    ControlFrom::Earlier => (&custom.earlier, &custom.earlier_pre),
                }),
            ),
            BaselineFrom::Carried => (
                self.baseline_carried.map(|_| &custom.baseline_carried),
                None,
            ),
        }
    }

    /// Which group [`Rollout::judged_baseline`] compares the canary with.
    fn baseline_from(&self) -> BaselineFrom {
        let roles = &self.roles.0;
        // A pre-period too short to judge against (a stage before it that passed in a moment)
        // gives way to the unexposed nodes, whose window grows.
        let min_requests = self
            .current_stage()
            .map_or(1, |stage| stage.min_requests.max(1));
        let pre = self
            .pre_period
            .filter(|pre| pre.sample.requests >= min_requests || roles.fleet_unexposed == 0)
            .filter(|pre| pre.sample.requests > 0);
        if roles.stage_unexposed > 0 && !matches!(self.phase, StagePhase::Soaking { .. }) {
            return BaselineFrom::StageUnexposed;
        }
        if pre.is_some() {
            // With every node exposed, the earlier stages' nodes (on the version both then and
            // now) stand in for the time.
            let control = if self.unexposed_control().is_some() {
                Some(ControlFrom::Unexposed)
            } else if self
                .earlier_pre
                .is_some_and(|earlier_pre| earlier_pre.sample.requests > 0)
            {
                Some(ControlFrom::Earlier)
            } else {
                None
            };
            return BaselineFrom::PrePeriod(control);
        }
        match roles.baseline_nodes() {
            Some(nodes) => BaselineFrom::FleetUnexposed(nodes),
            None => BaselineFrom::Carried,
        }
    }

    /// The time control: the unexposed nodes since the stage's entry, and the same nodes
    /// over the pre-period; `None` when no node is left unexposed or they sent nothing then.
    fn unexposed_control(&self) -> Option<(GroupMetrics, GroupMetrics)> {
        if self.roles.0.fleet_unexposed == 0 {
            return None;
        }
        self.control_pre
            .filter(|control_pre| control_pre.sample.requests > 0)
            .map(|control_pre| (self.control, control_pre))
    }

    /// A report about the unit came from one of its nodes at `now`. After a spell longer
    /// than the stage's silence in which no node was heard, silence counts from now (said
    /// once, so people know why silent nodes were not held against the version).
    fn heard(&mut self, now: TimeMs, out: &mut Vec<Action>) {
        let silence_ms = self.current_stage().map_or(0, |stage| stage.silence_ms);
        let deaf_ms = now.saturating_sub(self.heard_ms);
        if silence_ms > 0 && deaf_ms > silence_ms && !self.status.is_terminal() {
            self.hearing_from_ms = now;
            // Said only where silence would have been judged: nodes that applied the version.
            if self.heard_ms > 0 && self.nodes_applied > 0 {
                out.push(Action::Notify {
                    rollout: self.id,
                    message: cut(&format!(
                        "rollout {}: no node of unit {} was heard for {} (the control plane \
                         was down or cut off from the fleet); that says nothing about the \
                         version, and silence counts again from now",
                        self.id,
                        self.unit,
                        crate::duration::format_ms(deaf_ms)
                    )),
                });
            }
        }
        self.heard_ms = self.heard_ms.max(now);
    }

    /// Whether the data a verdict needs is there: every exposed node ACKed and
    /// reports, the canary has `min_requests`, and so has the baseline when a gate reads it.
    /// Cheap checks first; the silence check walks the exposed nodes.
    fn has_data(&self) -> bool {
        let Some(stage) = self.current_stage() else {
            return false;
        };
        let baseline_requests = self.judged_baseline().0.map(|b| b.sample.requests);
        let baseline_ready = !stage.gates.iter().any(Gate::reads_baseline)
            || baseline_requests.is_some_and(|requests| requests >= stage.min_requests);
        self.nodes_applied >= self.nodes_exposed
            && self.canary.sample.requests >= stage.min_requests
            && self.stage_canary.sample.requests >= stage.min_requests
            && baseline_ready
            && !self.silence.holds(self.silent_nodes(stage.silence_ms))
    }

    fn stage_name(&self) -> Option<String> {
        self.current_stage().map(|stage| stage.name.clone())
    }

    fn numbers(&self) -> String {
        format!(
            "nodes exposed {}, applied {}; canary requests {}, errors {}, rejections {}, crashes {}, failed health checks {}, silent nodes {} ({})",
            self.nodes_exposed,
            self.nodes_applied,
            self.canary.sample.requests,
            self.canary.sample.errors,
            self.canary.rejections,
            self.canary.crashes,
            self.canary.health_check_failures,
            self.canary.silent_nodes,
            self.silence.baseline_in_brief(),
        )
    }

    /// The first hard-signal threshold the current stage's counts reach, as a reason.
    fn hard_signal_breach(&self) -> Option<String> {
        let limits = self.current_stage()?.hard_signals;
        let checks = [
            (
                "rejections (NACK)",
                self.canary.rejections,
                limits.rejections_max,
            ),
            ("consumer crashes", self.canary.crashes, limits.crashes_max),
            (
                "failed health checks",
                self.canary.health_check_failures,
                limits.health_check_failures_max,
            ),
        ];
        let counted = checks
            .iter()
            .find(|(_, count, max)| *max > 0 && count >= max)
            .map(|(what, count, max)| format!("hard signal: {count} {what}, threshold {max}"));
        counted.or_else(|| {
            self.silence.blames(limits.silent_nodes_max).then(|| {
                format!(
                    "hard signal: {} silent nodes, threshold {}; like for like: {}",
                    self.silence.silent,
                    limits.silent_nodes_max,
                    self.silence.against()
                )
            })
        })
    }
}

/// A rollout as people and the API see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: RolloutId,
    pub unit: UnitName,
    pub version: VersionHash,
    pub plan: String,
    pub actor: String,
    pub reason: String,
    pub status: RolloutStatus,
    pub phase: StagePhase,
    pub stage_index: usize,
    pub stage_name: String,
    pub stages_total: usize,
    /// Nodes the current stage's own selection holds.
    pub nodes_targeted: u64,
    /// Nodes that ACKed the version.
    pub nodes_applied: u64,
    /// Nodes the rollout reached so far (the union over entered stages).
    pub nodes_exposed: u64,
    /// Bake left, relative to the latest step's time (frozen while paused).
    pub bake_remaining_ms: Option<u64>,
    /// Soak left, likewise (while soaking).
    #[serde(default)]
    pub soak_remaining_ms: Option<u64>,
    pub gates: Vec<GateReport>,
    /// Canary health and hard signals of the current stage.
    pub canary: GroupMetrics,
    pub created_ms: TimeMs,
    pub ended_ms: Option<TimeMs>,
    /// Why it ended.
    pub outcome: Option<String>,
    /// The freeze that holds it before its next stage or its start (`freeze ID: reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by_freeze: Option<String>,
    /// The latest silence judgement of the current stage; `None` before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence: Option<SilenceView>,
}

/// The rollout engine's whole state. Persist it with serde after each step; a restored engine
/// continues exactly where it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Engine {
    /// The latest `now_ms` seen (time never goes back inside the engine).
    now_ms: TimeMs,
    nodes: LookupMap<NodeId, NodeState>,
    units: BTreeMap<UnitName, UnitState>,
    rollouts: BTreeMap<RolloutId, Rollout>,
    next_rollout: u64,
    /// Terminal rollouts, oldest first, for pruning.
    terminal: VecDeque<RolloutId>,
    /// Derived: dense node slots.
    #[serde(skip)]
    index: Derived<FleetIndex>,
    /// Freeze and maintenance windows (see `engine/windows.rs`).
    #[serde(default)]
    windows: Windows,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

fn same_kind(a: &Verdict, b: &Verdict) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// A group's health, when it has any.
fn with_data(group: GroupMetrics) -> Option<GroupMetrics> {
    (group.sample.requests > 0).then_some(group)
}

/// Which hard signal an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Rejected,
    Crashed,
    HealthCheckFailed,
}

impl Engine {
    pub fn new() -> Self {
        Self {
            now_ms: 0,
            nodes: LookupMap::default(),
            units: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            next_rollout: 1,
            terminal: VecDeque::new(),
            index: Derived(FleetIndex {
                built: true,
                ..FleetIndex::default()
            }),
            windows: Windows::default(),
        }
    }

    /// Applies one event at `now_ms` and returns what the caller must do. On `Err` the state is
    /// unchanged. A `now_ms` earlier than one already seen counts as the latest one seen.
    pub fn step(&mut self, now_ms: TimeMs, event: &Event) -> Result<Vec<Action>, EngineError> {
        let now = now_ms.max(self.now_ms);
        if !self.index.0.built {
            self.rebuild_index();
        }
        let mut out = Vec::new();
        match event {
            Event::NodeRegistered { node, labels } => {
                self.on_node_registered(now, node, labels, &mut out)?
            }
            Event::NodeRemoved { node } => self.on_node_removed(now, node, &mut out)?,
            Event::Liveness { down, up } => self.on_liveness(now, down, up, &mut out)?,
            Event::RolloutRequested {
                unit,
                version,
                plan,
                actor,
                reason,
                override_quarantine,
                override_freeze,
            } => self.on_rollout_requested(
                now,
                unit,
                *version,
                plan,
                actor,
                reason,
                *override_quarantine,
                *override_freeze,
                &mut out,
            )?,
            Event::Applied {
                node,
                unit,
                version,
            } => self.on_applied(now, node, unit, *version, &mut out)?,
            Event::Rejected {
                node,
                unit,
                version,
                reason,
            } => self.on_signal(
                now,
                node,
                unit,
                *version,
                Signal::Rejected,
                reason,
                &mut out,
            )?,
            Event::Crashed {
                node,
                unit,
                version,
                reason,
            } => self.on_signal(now, node, unit, *version, Signal::Crashed, reason, &mut out)?,
            Event::HealthCheckFailed {
                node,
                unit,
                version,
                reason,
            } => self.on_signal(
                now,
                node,
                unit,
                *version,
                Signal::HealthCheckFailed,
                reason,
                &mut out,
            )?,
            Event::Health {
                node,
                unit,
                version,
                sample,
            } => self.on_health(
                now,
                events::HealthReport {
                    node,
                    unit,
                    version: *version,
                    sample,
                    custom: None,
                    monitored: false,
                },
                &mut out,
            )?,
            Event::MonitoredHealth {
                node,
                unit,
                version,
                sample,
                custom,
            } => self.on_health(
                now,
                events::HealthReport {
                    node,
                    unit,
                    version: *version,
                    sample,
                    custom: (!custom.is_empty()).then_some(custom),
                    monitored: true,
                },
                &mut out,
            )?,
            Event::Tick => self.on_tick(now, &mut out),
            Event::Command {
                rollout,
                command,
                actor,
                reason,
            } => self.on_command(now, *rollout, *command, actor, reason, &mut out)?,
            Event::QuarantineLifted {
                unit,
                version,
                actor,
                reason,
            } => self.on_quarantine_lifted(now, unit, *version, actor, reason, &mut out)?,
            Event::RevertAborted {
                rollout,
                actor,
                reason,
            } => self.on_revert_aborted(now, *rollout, actor, reason, &mut out)?,
            Event::UnitRemoved { unit } => self.on_unit_removed(unit, &mut out)?,
            Event::FreezeCreated { freeze } => self.on_freeze_created(now, freeze, &mut out)?,
            Event::FreezeLifted { id } => self.on_freeze_lifted(now, *id, &mut out)?,
            Event::MaintenanceCreated { maintenance } => {
                self.on_maintenance_created(now, maintenance, &mut out)?
            }
            Event::MaintenanceEnded { id } => self.on_maintenance_ended(now, *id, &mut out)?,
            Event::BurnRates { unit, burn_rates } => self.on_burn_rates(unit, burn_rates)?,
        }
        // Only after the event was accepted, so that a refused step changes nothing.
        if now >= self.windows.next_check_ms {
            self.sync_windows(now, &mut out);
        }
        self.now_ms = now;
        Ok(out)
    }

    // ----- queries -------------------------------------------------------------------------

    /// The rollout as people see it; `None` when unknown or pruned.
    pub fn rollout(&self, id: RolloutId) -> Option<RolloutView> {
        self.rollouts.get(&id).map(|rollout| self.view(rollout))
    }

    /// The stages of a rollout's plan, in order, and the index of the stage it is at; `None`
    /// when unknown or pruned. Tells which nodes a rollout's changes concern.
    pub fn rollout_stages(&self, id: RolloutId) -> Option<(&[Stage], usize)> {
        self.rollouts
            .get(&id)
            .map(|rollout| (rollout.plan.stages.as_slice(), rollout.stage))
    }

    /// Every rollout kept, oldest first.
    pub fn rollouts(&self) -> impl Iterator<Item = RolloutView> + '_ {
        self.rollouts.values().map(|rollout| self.view(rollout))
    }

    /// The status of every rollout the engine keeps (terminal ones are pruned, oldest first),
    /// without building their views.
    pub fn rollout_statuses(&self) -> impl Iterator<Item = RolloutStatus> + '_ {
        self.rollouts.values().map(|rollout| rollout.status)
    }

    /// The units with a running or paused rollout whose plan takes health from a monitoring
    /// system, each with that source (the newest such rollout's), sorted by unit.
    pub fn monitored_units(&self) -> Vec<(UnitName, crate::plan::PrometheusSource)> {
        self.units
            .iter()
            .filter_map(|(unit, state)| {
                let source = state
                    .active
                    .iter()
                    .rev()
                    .filter_map(|id| self.rollouts.get(id))
                    .filter(|rollout| {
                        matches!(
                            rollout.status,
                            RolloutStatus::Running | RolloutStatus::Paused
                        )
                    })
                    .find_map(|rollout| rollout.plan.health_source.as_deref().cloned())?;
                Some((unit.clone(), source))
            })
            .collect()
    }

    /// The units with a running or paused rollout whose plan has a burn-rate gate: the control
    /// plane sends their services' burn rates ([`Event::BurnRates`]).
    pub fn units_reading_burn_rates(&self) -> Vec<UnitName> {
        self.units
            .iter()
            .filter(|(_, state)| {
                state
                    .active
                    .iter()
                    .filter_map(|id| self.rollouts.get(id))
                    .any(|rollout| {
                        matches!(
                            rollout.status,
                            RolloutStatus::Running | RolloutStatus::Paused
                        ) && rollout.plan.reads_burn_rates()
                    })
            })
            .map(|(unit, _)| unit.clone())
            .collect()
    }

    /// The version `node` runs for `unit` as far as the engine knows: the one it should run,
    /// unless a rollout exposed the node to it and the node has not acknowledged it yet (the
    /// node is between versions: `None`).
    pub fn running_version(&self, node: &NodeId, unit: &UnitName) -> Option<VersionHash> {
        let desired = self.desired(node, unit)?;
        let state = self.units.get(unit)?;
        let switching = state.active.iter().any(|id| {
            self.rollouts.get(id).is_some_and(|rollout| {
                rollout.version == desired
                    && rollout
                        .exposed
                        .get(node)
                        .is_some_and(|exposure| !exposure.acked)
            })
        });
        (!switching).then_some(desired)
    }

    /// The version `node` should run for `unit`, if any.
    pub fn desired(&self, node: &NodeId, unit: &UnitName) -> Option<VersionHash> {
        self.nodes.get(node)?.desired.get(unit).copied()
    }

    /// The running or paused (soaking included) rollout of `unit` that exposed `node` and whose
    /// version is the one the node should run for the unit: the rollout still judging what the
    /// node runs. `None` when no such rollout is open (the node's version is settled, or the
    /// node was not reached). Cost: the unit's active rollouts, one exposure lookup each.
    pub fn trial(&self, node: &NodeId, unit: &UnitName) -> Option<RolloutId> {
        let desired = self.desired(node, unit)?;
        let state = self.units.get(unit)?;
        state.active.iter().rev().copied().find(|id| {
            self.rollouts.get(id).is_some_and(|rollout| {
                rollout.version == desired
                    && matches!(
                        rollout.status,
                        RolloutStatus::Running | RolloutStatus::Paused
                    )
                    && rollout.exposed.contains_key(node)
            })
        })
    }

    /// The unit's stable version: the latest whose rollout completed with evidence (a gated
    /// stage passed with at least one node that ACKed it).
    pub fn stable(&self, unit: &UnitName) -> Option<VersionHash> {
        self.units.get(unit)?.stable
    }

    pub fn is_quarantined(&self, unit: &UnitName, version: &VersionHash) -> bool {
        self.units
            .get(unit)
            .is_some_and(|state| state.quarantined.contains_key(version))
    }

    /// The post-apply health check declared by the plan of the running (or paused) rollout
    /// of `version` of `unit`, if there is one; agents run it after applying that version.
    pub fn health_check(
        &self,
        unit: &UnitName,
        version: &VersionHash,
    ) -> Option<&crate::plan::HealthCheck> {
        self.units
            .get(unit)?
            .active
            .iter()
            .filter_map(|id| self.rollouts.get(id))
            .find(|rollout| rollout.version == *version)?
            .plan
            .health_check
            .as_ref()
    }

    /// The earliest time at which a `Tick` would change something (a bake end, a stage
    /// timeout, the next gate evaluation); `None` when nothing waits on time.
    pub fn next_deadline_ms(&self) -> Option<TimeMs> {
        self.units
            .values()
            .flat_map(|unit| unit.active.iter())
            .filter_map(|id| self.rollouts.get(id))
            .filter(|rollout| rollout.status == RolloutStatus::Running)
            .filter_map(|rollout| {
                // Gates are not evaluated while observing; past its end, an observation
                // short of requests is looked at again every evaluation interval.
                let next_eval = match rollout.phase {
                    StagePhase::Observing { observe_ends_ms } => {
                        observe_ends_ms.max(self.now_ms.saturating_add(GATE_EVAL_INTERVAL_MS))
                    }
                    _ => rollout
                        .last_gate_eval_ms
                        .map_or(self.now_ms, |at| at.saturating_add(GATE_EVAL_INTERVAL_MS)),
                };
                let bake = match rollout.phase {
                    StagePhase::Baking { bake_ends_ms } => Some(bake_ends_ms),
                    StagePhase::Soaking { soak_ends_ms } => {
                        (soak_ends_ms > self.now_ms).then_some(soak_ends_ms)
                    }
                    StagePhase::Observing { observe_ends_ms } => {
                        (observe_ends_ms > self.now_ms).then_some(observe_ends_ms)
                    }
                    _ => None,
                };
                let timeout = match rollout.phase {
                    StagePhase::Applying
                    | StagePhase::Baking { .. }
                    | StagePhase::Holding
                    | StagePhase::Observing { .. } => rollout.timeout_at_ms,
                    StagePhase::AwaitingApproval
                    | StagePhase::Passed
                    | StagePhase::Soaking { .. } => None,
                };
                [Some(next_eval), bake, timeout].into_iter().flatten().min()
            })
            .chain(self.next_window_check_ms())
            .min()
    }

    /// The nodes rollout `id` reached, sorted (empty when unknown, or pruned long ago).
    pub fn exposed_nodes(&self, id: RolloutId) -> Vec<NodeId> {
        self.rollouts
            .get(&id)
            .map(|rollout| {
                let mut nodes: Vec<NodeId> = rollout.exposed.keys().cloned().collect();
                nodes.sort();
                nodes
            })
            .unwrap_or_default()
    }

    /// What `node` was assigned for the unit just before rollout `id` reached it; `None` when the
    /// rollout did not reach it (or the node had no version).
    pub fn version_before(&self, id: RolloutId, node: &NodeId) -> Option<VersionHash> {
        self.rollouts.get(&id)?.exposed.get(node)?.before
    }

    /// Whether a `Health` report from `node` about `unit` would count now: the node is live and
    /// known to a running or paused rollout of the unit: exposed (its canary, and silence is
    /// measured on its reports), or not (a baseline, a pre-period, a time control: see the
    /// module docs). A caller with a
    /// large fleet may send only these reports; the others change nothing. Before the first
    /// step of an engine restored from serde, answers `true` (it cannot tell cheaply).
    pub fn wants_health(&self, node: &NodeId, unit: &UnitName) -> bool {
        let Some(state) = self.units.get(unit) else {
            return false;
        };
        if state.active.is_empty() {
            return false;
        }
        if !self.index.0.built {
            return true;
        }
        let Some(slot) = self.index.0.slot(node) else {
            return false;
        };
        state.active.iter().any(|id| {
            self.rollouts.get(id).is_some_and(|rollout| {
                let roles = &rollout.roles.0;
                let role = roles.role(slot);
                role != Role::Vacant
            })
        })
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes taken for down (see [`Event::Liveness`]), sorted.
    pub fn down_nodes(&self) -> Vec<NodeId> {
        let mut down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, state)| state.down_since_ms.is_some())
            .map(|(node, _)| node.clone())
            .collect();
        down.sort();
        down
    }

    /// The latest `now_ms` the engine has seen.
    pub fn now_ms(&self) -> TimeMs {
        self.now_ms
    }

    fn view(&self, rollout: &Rollout) -> RolloutView {
        let reference_ms = rollout.paused_at_ms.unwrap_or(self.now_ms);
        let bake_remaining_ms = match rollout.phase {
            StagePhase::Baking { bake_ends_ms } if !rollout.status.is_terminal() => {
                Some(bake_ends_ms.saturating_sub(reference_ms))
            }
            _ => None,
        };
        let soak_remaining_ms = match rollout.phase {
            StagePhase::Soaking { soak_ends_ms } if !rollout.status.is_terminal() => {
                Some(soak_ends_ms.saturating_sub(reference_ms))
            }
            _ => None,
        };
        RolloutView {
            id: rollout.id,
            unit: rollout.unit.clone(),
            version: rollout.version,
            plan: rollout.plan.name.clone(),
            actor: rollout.actor.clone(),
            reason: rollout.reason.clone(),
            status: rollout.status,
            phase: rollout.phase,
            stage_index: rollout.stage,
            stage_name: rollout.stage_name().unwrap_or_default(),
            stages_total: rollout.plan.stages.len(),
            nodes_targeted: rollout.nodes_targeted,
            nodes_applied: rollout.nodes_applied,
            nodes_exposed: rollout.nodes_exposed,
            bake_remaining_ms,
            soak_remaining_ms,
            gates: rollout.gate_reports.clone(),
            canary: rollout.canary,
            created_ms: rollout.created_ms,
            ended_ms: rollout.ended_ms,
            outcome: rollout.outcome.clone(),
            held_by_freeze: self.freeze_hold_text(rollout),
            silence: rollout.silence.view(),
        }
    }
}

fn verdict_text(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Pass { detail } => format!("pass ({detail})"),
        Verdict::Fail { detail } => format!("fail ({detail})"),
        Verdict::Inconclusive { detail } => format!("inconclusive ({detail})"),
    }
}

fn gate_summary(reports: &[GateReport]) -> String {
    if reports.is_empty() {
        return "none evaluated".into();
    }
    reports
        .iter()
        .map(|report| format!("{:?} {}", report.gate, verdict_text(&report.verdict)))
        .collect::<Vec<_>>()
        .join("; ")
}
