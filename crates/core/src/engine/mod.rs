//! The rollout engine: a pure, deterministic state machine.
//!
//! `Engine::step(now_ms, event)` applies one [`Event`] and returns the [`Action`]s the caller
//! must carry out. It never reads a clock, never does IO, never draws a random number; the
//! same sequence of `(now_ms, event)` always yields the same state and actions. On `Err` the
//! state is unchanged. The whole state is in [`Engine`] and serializes with serde: persist it
//! after each step and a restart continues exactly where it was.
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
//! 4. `AwaitingApproval` (when the stage asks for it), then `Passed`: on to the next stage;
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
//! Health accounting of the current stage: the canary is the exposed nodes that ACKed (their
//! samples for the rollout's version). The baseline is made of nodes the rollout has not
//! reached (their samples for any other version), chosen in this order:
//!
//! 1. the nodes the stage's selector matches that are not exposed;
//! 2. if there are none (the stage takes its whole selection, like `employees` at 100%), every
//!    unexposed node of the fleet: they run the previous version, the honest comparison;
//! 3. if there are none either (the rollout reached the whole fleet), the latest baseline the
//!    rollout judged against, carried forward.
//!
//! [`Engine::wants_health`] tells which nodes' reports count now. A canary node with no report
//! about the unit for `silence_ms` (`0` = not checked) is silent. When a rollback quarantines
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
use crate::gate::{Gate, Verdict};
use crate::health::{GroupMetrics, HealthSample};
use crate::plan::{Concurrency, OnInconclusive, Plan, Stage};
use crate::select;

mod judge;
mod operator;

pub use operator::QuarantinedVersion;

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
/// Terminal rollouts that keep their per-node exposure list; older ones keep only counts.
pub const MAX_TERMINAL_ROLLOUTS_WITH_NODES: usize = 64;
/// Most stages in one plan.
pub const MAX_STAGES: usize = 64;
/// Most quarantined hashes per unit; beyond it the oldest quarantine is lifted.
pub const MAX_QUARANTINED_PER_UNIT: usize = 1_024;
/// Reasons, actors and messages are cut to this many bytes.
pub const MAX_TEXT_BYTES: usize = 1_024;
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
}

/// One node reached by a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Exposure {
    /// What the node was assigned just before this rollout reached it; a rollback restores it.
    before: Option<VersionHash>,
    /// The stage that reached it.
    stage: usize,
    acked: bool,
    rejected: bool,
    /// The latest report of any kind from this node about this unit (or the exposure time):
    /// what silence is measured from.
    last_report_ms: TimeMs,
}

/// The nodes a rollout reached, with their records: a dense vector, so that the role index can
/// point at a record by position, and a map from id to position. Serializes as a map from node
/// id to record; equality is that of the maps (order aside).
#[derive(Debug, Clone, Default)]
struct Exposures {
    entries: Vec<(NodeId, Exposure)>,
    position: LookupMap<NodeId, u32>,
}

impl Exposures {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn position_of(&self, node: &NodeId) -> Option<u32> {
        self.position.get(node).copied()
    }

    fn contains_key(&self, node: &NodeId) -> bool {
        self.position.contains_key(node)
    }

    fn get(&self, node: &NodeId) -> Option<&Exposure> {
        let at = self.position_of(node)?;
        self.entries.get(at as usize).map(|(_, exposure)| exposure)
    }

    fn get_mut(&mut self, node: &NodeId) -> Option<&mut Exposure> {
        let at = self.position_of(node)?;
        self.entries
            .get_mut(at as usize)
            .map(|(_, exposure)| exposure)
    }

    /// The record at `position` (from the role index, which [`Engine::check_derived_indexes`]
    /// keeps honest): no hashing and no comparison of ids on the `Health` path.
    fn get_at_mut(&mut self, position: u32) -> Option<&mut Exposure> {
        self.entries
            .get_mut(position as usize)
            .map(|(_, exposure)| exposure)
    }

    /// Inserts or replaces `node`'s record; returns the replaced one.
    fn insert(&mut self, node: NodeId, exposure: Exposure) -> Option<Exposure> {
        if let Some(existing) = self.get_mut(&node) {
            return Some(std::mem::replace(existing, exposure));
        }
        // At most one record per node, and nodes are at most MAX_NODES: it always fits.
        let at = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.position.insert(node.clone(), at);
        self.entries.push((node, exposure));
        None
    }

    /// Removes `node`'s record; returns it, and the node whose record moved into its position
    /// (the last one), if any.
    fn remove(&mut self, node: &NodeId) -> Option<(Exposure, Option<(NodeId, u32)>)> {
        let at = self.position.remove(node)?;
        let index = at as usize;
        if index >= self.entries.len() {
            return None;
        }
        let (_, removed) = self.entries.swap_remove(index);
        let moved = self.entries.get(index).map(|(id, _)| (id.clone(), at));
        if let Some((id, _)) = &moved {
            self.position.insert(id.clone(), at);
        }
        Some((removed, moved))
    }

    fn keys(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.entries.iter().map(|(node, _)| node)
    }

    fn iter(&self) -> impl Iterator<Item = (&NodeId, &Exposure)> + '_ {
        self.entries.iter().map(|(node, exposure)| (node, exposure))
    }
}

impl PartialEq for Exposures {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(node, exposure)| other.get(node) == Some(exposure))
    }
}

impl Serialize for Exposures {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Exposures {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<NodeId, Exposure>::deserialize(deserializer)?;
        let mut exposures = Exposures::default();
        for (node, exposure) in map {
            exposures.insert(node, exposure);
        }
        Ok(exposures)
    }
}

/// A cache derived from the engine's state: skipped by serde and rebuilt after
/// deserialization, and left out of equality (two engines are equal when their states are,
/// whatever their caches hold).
#[derive(Clone, Default)]
struct Derived<T>(T);

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Derived<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived(..)")
    }
}

/// Bytes of a node id kept inline in the slot table: ids up to this long are compared there,
/// without following a pointer to the id's text (the `Health` path is bound by cache misses).
const SHORT_ID_BYTES: usize = 31;

/// A node id of at most [`SHORT_ID_BYTES`] bytes, inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ShortId {
    len: u8,
    bytes: [u8; SHORT_ID_BYTES],
}

impl ShortId {
    fn of(node: &NodeId) -> Option<Self> {
        let text = node.as_str().as_bytes();
        let mut bytes = [0u8; SHORT_ID_BYTES];
        bytes.get_mut(..text.len())?.copy_from_slice(text);
        Some(Self {
            len: u8::try_from(text.len()).ok()?,
            bytes,
        })
    }
}

/// Dense slots for node ids, so that per-rollout tables are vectors indexed by slot.
/// Derived from the fleet table; which slot a node gets never reaches an output.
#[derive(Debug, Clone, Default)]
struct FleetIndex {
    /// False after deserialization: the next step rebuilds every derived index.
    built: bool,
    /// Slots of ids of at most [`SHORT_ID_BYTES`] bytes.
    short_slots: LookupMap<ShortId, u32>,
    /// Slots of longer ids.
    long_slots: LookupMap<NodeId, u32>,
    /// The short id in each slot, to check [`FleetIndex::next_guess`] without hashing.
    short_by_slot: Vec<Option<ShortId>>,
    /// The slot after the latest one looked up on the `Health` path: fleets report in rounds,
    /// in a stable order, so the next report is likely from that slot's node.
    next_guess: u32,
    /// Slots of removed nodes, reused first.
    free: Vec<u32>,
    /// Slots handed out so far (the highest slot + 1); at most [`MAX_NODES`].
    slots_used: u32,
}

impl FleetIndex {
    fn slot(&self, node: &NodeId) -> Option<u32> {
        match ShortId::of(node) {
            Some(short) => self.short_slots.get(&short).copied(),
            None => self.long_slots.get(node).copied(),
        }
    }

    fn len(&self) -> usize {
        self.short_slots.len().saturating_add(self.long_slots.len())
    }

    /// [`FleetIndex::slot`], trying first the slot after the previous lookup's: a sequential
    /// read instead of a random one into the table when reports come in a stable order.
    fn slot_hinted(&mut self, node: &NodeId) -> Option<u32> {
        let Some(short) = ShortId::of(node) else {
            return self.long_slots.get(node).copied();
        };
        let guess = self.next_guess;
        let slot = if self.short_by_slot.get(guess as usize) == Some(&Some(short)) {
            guess
        } else {
            self.short_slots.get(&short).copied()?
        };
        self.next_guess = slot.saturating_add(1);
        Some(slot)
    }

    fn set_short(&mut self, slot: u32, short: Option<ShortId>) {
        let index = slot as usize;
        if short.is_some() && self.short_by_slot.len() <= index {
            self.short_by_slot.resize(index.saturating_add(1), None);
        }
        if let Some(entry) = self.short_by_slot.get_mut(index) {
            *entry = short;
        }
    }

    /// The node's slot, given one when it has none.
    fn insert(&mut self, node: &NodeId) -> u32 {
        if let Some(slot) = self.slot(node) {
            return slot;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            let fresh = self.slots_used;
            self.slots_used = self.slots_used.saturating_add(1);
            fresh
        });
        let short = ShortId::of(node);
        match short {
            Some(short) => self.short_slots.insert(short, slot),
            None => self.long_slots.insert(node.clone(), slot),
        };
        self.set_short(slot, short);
        slot
    }

    fn remove(&mut self, node: &NodeId) -> Option<u32> {
        let slot = match ShortId::of(node) {
            Some(short) => self.short_slots.remove(&short),
            None => self.long_slots.remove(node),
        }?;
        self.set_short(slot, None);
        self.free.push(slot);
        Some(slot)
    }
}

/// Where one node stands for one running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Role {
    /// No node holds this slot.
    #[default]
    Vacant,
    /// The rollout reached the node (canary once it ACKed); its record's position.
    Exposed { position: u32 },
    /// Not reached, and the current stage's selector matches it.
    StageBaseline,
    /// Not reached, and the current stage's selector does not match it.
    FleetBaseline,
}

/// Per running rollout: every node's [`Role`] by slot, and the baseline counts, kept up to date
/// on every change instead of being counted over the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RoleIndex {
    roles: Vec<Role>,
    /// Unexposed nodes that the current stage's selector matches.
    stage_unexposed: u64,
    /// Every unexposed node of the fleet (including the ones above).
    fleet_unexposed: u64,
}

impl RoleIndex {
    fn role(&self, slot: u32) -> Role {
        self.roles.get(slot as usize).copied().unwrap_or_default()
    }

    fn set(&mut self, slot: u32, role: Role) {
        let index = slot as usize;
        if role != Role::Vacant && self.roles.len() <= index {
            self.roles.resize(index.saturating_add(1), Role::Vacant);
        }
        let Some(entry) = self.roles.get_mut(index) else {
            return;
        };
        let old = std::mem::replace(entry, role);
        for (role, add) in [(old, false), (role, true)] {
            let (stage, fleet) = match role {
                Role::Vacant | Role::Exposed { .. } => (0, 0),
                Role::StageBaseline => (1, 1),
                Role::FleetBaseline => (0, 1),
            };
            if add {
                self.stage_unexposed = self.stage_unexposed.saturating_add(stage);
                self.fleet_unexposed = self.fleet_unexposed.saturating_add(fleet);
            } else {
                self.stage_unexposed = self.stage_unexposed.saturating_sub(stage);
                self.fleet_unexposed = self.fleet_unexposed.saturating_sub(fleet);
            }
        }
    }

    /// Whether a node in `role` belongs to the current stage's baseline: the stage selector's
    /// unexposed nodes, or every unexposed node when the selector has none.
    fn in_baseline(&self, role: Role) -> bool {
        match role {
            Role::StageBaseline => true,
            Role::FleetBaseline => self.stage_unexposed == 0,
            Role::Vacant | Role::Exposed { .. } => false,
        }
    }

    /// Nodes in the current stage's baseline; `None` when every node is exposed.
    fn baseline_nodes(&self) -> Option<u64> {
        [self.stage_unexposed, self.fleet_unexposed]
            .into_iter()
            .find(|count| *count > 0)
    }
}

/// A node's role for a rollout, from the rollout's state and the node's labels.
fn role_of(rollout: &Rollout, node: &NodeId, state: &NodeState) -> Role {
    let labels = &state.labels;
    if let Some(position) = rollout.exposed.position_of(node) {
        Role::Exposed { position }
    } else if state.down_since_ms.is_some() {
        // Down and unexposed: in no group, so a baseline is not counted on nodes that send
        // nothing.
        Role::Vacant
    } else if rollout
        .current_stage()
        .is_some_and(|stage| stage.selector.matches(labels))
    {
        Role::StageBaseline
    } else {
        Role::FleetBaseline
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NodeState {
    labels: Labels,
    /// Per unit, the version this node should run.
    desired: BTreeMap<UnitName, VersionHash>,
    /// Since when the control plane has not heard from the node (see [`Event::Liveness`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    down_since_ms: Option<TimeMs>,
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
    gate_reports: Vec<GateReport>,
    last_gate_eval_ms: Option<TimeMs>,
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
    /// Derived: every node's role while the rollout is running or paused (empty otherwise).
    #[serde(skip)]
    roles: Derived<RoleIndex>,
}

impl Rollout {
    fn current_stage(&self) -> Option<&Stage> {
        self.plan.stages.get(self.stage)
    }

    /// Exposed nodes that ACKed and then said nothing for longer than `silence_ms` (`0`:
    /// silence is not watched).
    fn silent_nodes(&self, now: TimeMs, silence_ms: u64) -> u64 {
        if silence_ms == 0 {
            return 0;
        }
        self.exposed
            .iter()
            .filter(|(_, exposure)| {
                exposure.acked && now.saturating_sub(exposure.last_report_ms) > silence_ms
            })
            .count() as u64
    }

    /// Whether the data a verdict needs is there at `now`: every exposed node ACKed and
    /// reports, the canary has `min_requests`, and so has the baseline when a gate reads it.
    /// Cheap checks first; the silence check walks the exposed nodes.
    fn has_data(&self, now: TimeMs) -> bool {
        let Some(stage) = self.current_stage() else {
            return false;
        };
        let baseline_requests = match self.roles.0.baseline_nodes() {
            Some(_) => Some(self.baseline.sample.requests),
            None => self.baseline_carried.map(|b| b.sample.requests),
        };
        let baseline_ready = !stage.gates.iter().any(Gate::reads_baseline)
            || baseline_requests.is_some_and(|requests| requests >= stage.min_requests);
        self.nodes_applied >= self.nodes_exposed
            && self.canary.sample.requests >= stage.min_requests
            && baseline_ready
            && self.silent_nodes(now, stage.silence_ms) == 0
    }

    fn stage_name(&self) -> Option<String> {
        self.current_stage().map(|stage| stage.name.clone())
    }

    fn numbers(&self) -> String {
        format!(
            "nodes exposed {}, applied {}; canary requests {}, errors {}, rejections {}, crashes {}, failed health checks {}, silent nodes {}",
            self.nodes_exposed,
            self.nodes_applied,
            self.canary.sample.requests,
            self.canary.sample.errors,
            self.canary.rejections,
            self.canary.crashes,
            self.canary.health_check_failures,
            self.canary.silent_nodes,
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
            (
                "silent nodes",
                self.canary.silent_nodes,
                limits.silent_nodes_max,
            ),
        ];
        checks
            .iter()
            .find(|(_, count, max)| *max > 0 && count >= max)
            .map(|(what, count, max)| format!("hard signal: {count} {what}, threshold {max}"))
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
            } => self.on_rollout_requested(
                now,
                unit,
                *version,
                plan,
                actor,
                reason,
                *override_quarantine,
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
            } => self.on_health(now, node, unit, *version, sample, &mut out)?,
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
                let next_eval = rollout
                    .last_gate_eval_ms
                    .map_or(self.now_ms, |at| at.saturating_add(GATE_EVAL_INTERVAL_MS));
                let bake = match rollout.phase {
                    StagePhase::Baking { bake_ends_ms } => Some(bake_ends_ms),
                    StagePhase::Soaking { soak_ends_ms } => Some(soak_ends_ms),
                    _ => None,
                };
                let timeout = match rollout.phase {
                    StagePhase::Applying | StagePhase::Baking { .. } | StagePhase::Holding => {
                        rollout.timeout_at_ms
                    }
                    StagePhase::AwaitingApproval
                    | StagePhase::Passed
                    | StagePhase::Soaking { .. } => None,
                };
                [Some(next_eval), bake, timeout].into_iter().flatten().min()
            })
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

    /// Whether a `Health` report from `node` about `unit` would count now: the node is exposed
    /// to a running or paused rollout of the unit (its canary, and silence is measured on its
    /// reports), or it is in such a rollout's baseline (see the module docs). A caller with a
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
                matches!(role, Role::Exposed { .. }) || roles.in_baseline(role)
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
        }
    }
}

// ----- derived indexes ----------------------------------------------------------------------
impl Engine {
    /// Rebuilds every derived index from the state (after deserialization).
    fn rebuild_index(&mut self) {
        let mut ids: Vec<&NodeId> = self.nodes.keys().collect();
        ids.sort();
        let mut index = FleetIndex {
            built: true,
            ..FleetIndex::default()
        };
        for id in ids {
            index.insert(id);
        }
        self.index = Derived(index);
        for id in self.active_rollouts() {
            self.rebuild_roles(id);
        }
    }

    /// Running and paused rollouts of every unit.
    fn active_rollouts(&self) -> Vec<RolloutId> {
        self.units
            .values()
            .flat_map(|unit| unit.active.iter().copied())
            .collect()
    }

    /// Recomputes the rollout's role of every node: O(fleet), on stage entry only.
    fn rebuild_roles(&mut self, id: RolloutId) {
        let Self {
            nodes,
            rollouts,
            index,
            ..
        } = self;
        let Some(rollout) = rollouts.get_mut(&id) else {
            return;
        };
        let mut roles = RoleIndex {
            roles: vec![Role::Vacant; index.0.slots_used as usize],
            ..RoleIndex::default()
        };
        for (node, state) in nodes.iter() {
            if let Some(slot) = index.0.slot(node) {
                roles.set(slot, role_of(rollout, node, state));
            }
        }
        rollout.roles = Derived(roles);
    }

    /// Recomputes one node's role for one active rollout.
    fn refresh_role(&mut self, id: RolloutId, node: &NodeId) {
        let Self {
            nodes,
            rollouts,
            index,
            ..
        } = self;
        let (Some(rollout), Some(state), Some(slot)) =
            (rollouts.get_mut(&id), nodes.get(node), index.0.slot(node))
        else {
            return;
        };
        let role = role_of(rollout, node, state);
        rollout.roles.0.set(slot, role);
    }

    /// Checks every derived index against one rebuilt from the state; `Err` says what differs.
    /// For tests and audits: O(fleet × running rollouts).
    pub fn check_derived_indexes(&self) -> Result<(), String> {
        let mut fresh = self.clone();
        fresh.rebuild_index();
        for id in self.active_rollouts() {
            let (Some(kept), Some(rebuilt)) = (self.rollouts.get(&id), fresh.rollouts.get(&id))
            else {
                return Err(format!("active rollout {id} is missing"));
            };
            let (kept, rebuilt) = (&kept.roles.0, &rebuilt.roles.0);
            if (kept.stage_unexposed, kept.fleet_unexposed)
                != (rebuilt.stage_unexposed, rebuilt.fleet_unexposed)
            {
                return Err(format!(
                    "rollout {id}: kept baseline counts (stage {}, fleet {}), rebuilt (stage {}, fleet {})",
                    kept.stage_unexposed,
                    kept.fleet_unexposed,
                    rebuilt.stage_unexposed,
                    rebuilt.fleet_unexposed
                ));
            }
            for (node, _) in self.nodes.iter() {
                let kept_role = self.index.0.slot(node).map(|slot| kept.role(slot));
                let rebuilt_role = fresh.index.0.slot(node).map(|slot| rebuilt.role(slot));
                if kept_role != rebuilt_role {
                    return Err(format!(
                        "rollout {id}, node {node}: kept role {kept_role:?}, rebuilt {rebuilt_role:?}"
                    ));
                }
            }
        }
        for node in self.nodes.keys() {
            let short = ShortId::of(node);
            let kept = self.index.0.slot(node).map(|slot| {
                self.index
                    .0
                    .short_by_slot
                    .get(slot as usize)
                    .copied()
                    .flatten()
            });
            if short.is_some() && kept != Some(short) {
                return Err(format!("node {node}: its slot does not hold its id"));
            }
        }
        if self.index.0.len() != self.nodes.len() {
            return Err(format!(
                "{} node slots for {} nodes",
                self.index.0.len(),
                self.nodes.len()
            ));
        }
        Ok(())
    }
}

// ----- event handlers ---------------------------------------------------------------------
impl Engine {
    fn on_node_registered(
        &mut self,
        now: TimeMs,
        node: &NodeId,
        labels: &Labels,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        let is_new = !self.nodes.contains_key(node);
        if is_new && self.nodes.len() >= MAX_NODES {
            return Err(EngineError::LimitReached {
                what: "nodes in the fleet",
                given: self.nodes.len().saturating_add(1),
                limit: MAX_NODES,
            });
        }
        if labels.len() > MAX_LABELS_PER_NODE {
            return Err(EngineError::LimitReached {
                what: "labels on one node",
                given: labels.len(),
                limit: MAX_LABELS_PER_NODE,
            });
        }
        if let Some(longest) = labels
            .iter()
            .map(|(key, value)| key.len().max(value.len()))
            .max()
            && longest > MAX_LABEL_BYTES
        {
            return Err(EngineError::LimitReached {
                what: "bytes in a label key or value",
                given: longest,
                limit: MAX_LABEL_BYTES,
            });
        }
        let previous = match self.nodes.get_mut(node) {
            Some(state) => {
                state.labels = labels.clone();
                // A node that registers is heard from.
                state.down_since_ms = None;
                state.desired.clone()
            }
            None => {
                let desired = self
                    .units
                    .iter()
                    .filter_map(|(unit, state)| state.stable.map(|stable| (unit.clone(), stable)))
                    .collect();
                self.nodes.insert(
                    node.clone(),
                    NodeState {
                        labels: labels.clone(),
                        desired,
                        down_since_ms: None,
                    },
                );
                BTreeMap::new()
            }
        };
        self.index.0.insert(node);
        self.expose_where_selected(node, labels, now);
        self.tell_changes(node, &previous, out);
        let units: Vec<UnitName> = self.units.keys().cloned().collect();
        for unit in units {
            self.settle(&unit, now, out);
        }
        Ok(())
    }

    /// Tells `node` every version that changed for it since `before` (its desired versions
    /// then).
    fn tell_changes(
        &self,
        node: &NodeId,
        before: &BTreeMap<UnitName, VersionHash>,
        out: &mut Vec<Action>,
    ) {
        let Some(state) = self.nodes.get(node) else {
            return;
        };
        for (unit, version) in &state.desired {
            if before.get(unit) != Some(version) {
                out.push(Action::SetDesired {
                    unit: unit.clone(),
                    version: Some(*version),
                    nodes: vec![node.clone()],
                });
            }
        }
    }

    /// [`Self::expose_where_selected`], telling the node what changed for it.
    fn expose_and_tell(
        &mut self,
        node: &NodeId,
        labels: &Labels,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        let before = self
            .nodes
            .get(node)
            .map(|state| state.desired.clone())
            .unwrap_or_default();
        self.expose_where_selected(node, labels, now);
        self.tell_changes(node, &before, out);
    }

    /// Level-triggered: `node` gets every running rollout whose entered stages select it.
    fn expose_where_selected(&mut self, node: &NodeId, labels: &Labels, now: TimeMs) {
        for id in self.active_rollouts() {
            let selects = self.rollouts.get(&id).is_some_and(|rollout| {
                let busy = rollout.plan.exclusive_nodes && self.busy_elsewhere(node, &rollout.unit);
                !busy
                    && !rollout.exposed.contains_key(node)
                    && select::exposed_by(
                        &rollout.plan.stages,
                        rollout.stage,
                        &rollout.unit,
                        node,
                        labels,
                    )
            });
            if selects {
                self.expose(id, node, now);
                self.resume_waiting(id, now);
                if let Some(rollout) = self.rollouts.get_mut(&id)
                    && let Some(stage) = rollout.plan.stages.get(rollout.stage)
                    && select::stage_selects(stage, &rollout.unit, node, labels)
                {
                    rollout.nodes_targeted = rollout.nodes_targeted.saturating_add(1);
                }
            }
            self.refresh_role(id, node);
        }
    }

    /// A waiting stage got a node: its timeout starts now.
    fn resume_waiting(&mut self, id: RolloutId, now: TimeMs) {
        if let Some(rollout) = self.rollouts.get_mut(&id)
            && rollout.waiting_for_nodes
        {
            rollout.waiting_for_nodes = false;
            let timeout_ms = rollout.current_stage().map_or(0, |stage| stage.timeout_ms);
            rollout.timeout_at_ms = (timeout_ms > 0).then(|| now.saturating_add(timeout_ms));
        }
    }

    /// Whether `node` is in a running (or paused) rollout of a unit other than `unit`.
    fn busy_elsewhere(&self, node: &NodeId, unit: &UnitName) -> bool {
        self.units
            .iter()
            .filter(|(other, _)| *other != unit)
            .flat_map(|(_, state)| state.active.iter())
            .filter_map(|id| self.rollouts.get(id))
            .any(|rollout| !rollout.status.is_terminal() && rollout.exposed.contains_key(node))
    }

    /// Nodes a rollout held have left it: those that `exclusive_nodes` rollouts of other units
    /// left out join them now (level-triggered), in node order.
    fn release(&mut self, nodes: &[NodeId], now: TimeMs, out: &mut Vec<Action>) {
        let waiting = self.active_rollouts().iter().any(|id| {
            self.rollouts.get(id).is_some_and(|rollout| {
                rollout.plan.exclusive_nodes && !rollout.status.is_terminal()
            })
        });
        if !waiting {
            return;
        }
        for node in nodes {
            let Some(state) = self.nodes.get(node) else {
                continue;
            };
            if state.down_since_ms.is_some() {
                continue;
            }
            let labels = state.labels.clone();
            self.expose_and_tell(node, &labels, now, out);
        }
    }

    /// Marks nodes down or up (see [`Event::Liveness`]). Unknown nodes are skipped: one may
    /// have been removed since the control plane looked.
    fn on_liveness(
        &mut self,
        now: TimeMs,
        down: &[NodeId],
        up: &[NodeId],
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        let given = down.len().saturating_add(up.len());
        if given > MAX_NODES {
            return Err(EngineError::LimitReached {
                what: "nodes in one liveness event",
                given,
                limit: MAX_NODES,
            });
        }
        let mut changed = Vec::new();
        for node in down {
            if let Some(state) = self.nodes.get_mut(node)
                && state.down_since_ms.is_none()
            {
                state.down_since_ms = Some(now);
                changed.push(node.clone());
            }
        }
        let mut back = Vec::new();
        for node in up {
            if let Some(state) = self.nodes.get_mut(node)
                && state.down_since_ms.take().is_some()
            {
                back.push((node.clone(), state.labels.clone()));
            }
        }
        back.sort_by(|a, b| a.0.cmp(&b.0));
        changed.extend(back.iter().map(|(node, _)| node.clone()));
        // A node's liveness is part of its role (a down node is in no baseline).
        for id in self.active_rollouts() {
            for node in &changed {
                self.refresh_role(id, node);
            }
        }
        for (node, labels) in &back {
            self.expose_and_tell(node, labels, now, out);
        }
        if !back.is_empty() {
            let units: Vec<UnitName> = self.units.keys().cloned().collect();
            for unit in units {
                self.settle(&unit, now, out);
            }
        }
        Ok(())
    }

    fn on_node_removed(
        &mut self,
        now: TimeMs,
        node: &NodeId,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        if self.nodes.remove(node).is_none() {
            return Err(EngineError::UnknownNode(node.clone()));
        }
        let slot = self.index.0.remove(node);
        for rollout in self.rollouts.values_mut() {
            if let Some(slot) = slot {
                rollout.roles.0.set(slot, Role::Vacant);
            }
            if let Some((exposure, moved)) = rollout.exposed.remove(node) {
                if let Some((moved_node, position)) = moved
                    && let Some(moved_slot) = self.index.0.slot(&moved_node)
                    && rollout.roles.0.role(moved_slot) != Role::Vacant
                {
                    rollout.roles.0.set(moved_slot, Role::Exposed { position });
                }
                rollout.nodes_exposed = rollout.nodes_exposed.saturating_sub(1);
                if exposure.acked {
                    rollout.nodes_applied = rollout.nodes_applied.saturating_sub(1);
                }
            }
        }
        let units: Vec<UnitName> = self.units.keys().cloned().collect();
        for unit in units {
            self.settle(&unit, now, out);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_rollout_requested(
        &mut self,
        now: TimeMs,
        unit: &UnitName,
        version: VersionHash,
        plan: &Plan,
        actor: &str,
        reason: &str,
        override_quarantine: bool,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        if plan.stages.is_empty() {
            return Err(EngineError::EmptyPlan {
                plan: cut(&plan.name),
            });
        }
        if plan.stages.len() > MAX_STAGES {
            return Err(EngineError::LimitReached {
                what: "stages in a plan",
                given: plan.stages.len(),
                limit: MAX_STAGES,
            });
        }
        let quarantined = self.is_quarantined(unit, &version);
        if quarantined && !override_quarantine {
            return Err(EngineError::Quarantined {
                unit: unit.clone(),
                version,
            });
        }
        let open = self.rollouts.len().saturating_sub(self.terminal.len());
        if open >= MAX_OPEN_ROLLOUTS {
            return Err(EngineError::LimitReached {
                what: "open rollouts",
                given: open.saturating_add(1),
                limit: MAX_OPEN_ROLLOUTS,
            });
        }
        if !self.units.contains_key(unit) && self.units.len() >= MAX_UNITS {
            return Err(EngineError::LimitReached {
                what: "units",
                given: self.units.len().saturating_add(1),
                limit: MAX_UNITS,
            });
        }
        let start_now = self
            .units
            .get(unit)
            .is_none_or(|state| state.queued.is_empty() && self.can_start(state, plan));
        if !start_now {
            let queued = self.units.get(unit).map_or(0, |state| state.queued.len());
            if !plan.supersede_queued && queued >= plan.queue_limit as usize {
                return Err(EngineError::QueueFull {
                    unit: unit.clone(),
                    queued: u32::try_from(queued).unwrap_or(u32::MAX),
                });
            }
        }

        // Validated: from here on the step succeeds.
        let id = RolloutId(self.next_rollout);
        self.next_rollout = self.next_rollout.saturating_add(1);
        let mut reason_text = cut(reason);
        if quarantined {
            reason_text = cut(&format!("{reason_text} (admin override of the quarantine)"));
        }
        self.rollouts.insert(
            id,
            Rollout {
                id,
                unit: unit.clone(),
                version,
                plan: plan.clone(),
                actor: cut(actor),
                reason: reason_text,
                status: RolloutStatus::Queued,
                created_ms: now,
                ended_ms: None,
                outcome: None,
                stage: 0,
                phase: StagePhase::Applying,
                stage_entered_ms: now,
                timeout_at_ms: None,
                paused_at_ms: None,
                exposed: Exposures::default(),
                nodes_exposed: 0,
                nodes_applied: 0,
                nodes_targeted: 0,
                canary: GroupMetrics::default(),
                baseline: GroupMetrics::default(),
                baseline_carried: None,
                gate_reports: Vec::new(),
                last_gate_eval_ms: None,
                held_for_data: false,
                fleet_unhealthy: false,
                waiting_for_nodes: false,
                breach_since_ms: None,
                gated_evidence: false,
                roles: Derived::default(),
            },
        );
        self.units.entry(unit.clone()).or_default();
        if start_now {
            self.start(id, now, out);
        } else {
            if plan.supersede_queued {
                let older: Vec<RolloutId> = self
                    .units
                    .get_mut(unit)
                    .map(|state| state.queued.drain(..).collect())
                    .unwrap_or_default();
                for old in older {
                    self.end_superseded(old, id, now, out);
                }
            }
            if let Some(state) = self.units.get_mut(unit) {
                state.queued.push_back(id);
            }
            self.log(
                id,
                ChangeKind::RolloutQueued,
                None,
                None,
                "waiting behind the unit's running rollout".into(),
                now,
                out,
            );
        }
        self.settle(unit, now, out);
        Ok(())
    }

    fn on_applied(
        &mut self,
        now: TimeMs,
        node: &NodeId,
        unit: &UnitName,
        version: VersionHash,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        let Self {
            nodes,
            units,
            rollouts,
            ..
        } = self;
        if !nodes.contains_key(node) {
            return Err(EngineError::UnknownNode(node.clone()));
        }
        let Some(unit_state) = units.get(unit) else {
            return Ok(());
        };
        let mut changed = false;
        for id in &unit_state.active {
            if let Some(rollout) = rollouts.get_mut(id)
                && let Some(exposure) = rollout.exposed.get_mut(node)
            {
                exposure.last_report_ms = now;
                if rollout.version == version && !exposure.acked {
                    exposure.acked = true;
                    rollout.nodes_applied = rollout.nodes_applied.saturating_add(1);
                    changed = true;
                }
            }
        }
        if changed {
            self.settle(unit, now, out);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_signal(
        &mut self,
        now: TimeMs,
        node: &NodeId,
        unit: &UnitName,
        version: VersionHash,
        signal: Signal,
        reason: &str,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        if !self.nodes.contains_key(node) {
            return Err(EngineError::UnknownNode(node.clone()));
        }
        let active = self
            .units
            .get(unit)
            .map(|state| state.active.clone())
            .unwrap_or_default();
        for id in active {
            let Some(rollout) = self.rollouts.get_mut(&id) else {
                continue;
            };
            if rollout.status.is_terminal() {
                continue;
            }
            let Some(exposure) = rollout.exposed.get_mut(node) else {
                continue;
            };
            exposure.last_report_ms = now;
            if rollout.version != version {
                continue;
            }
            match signal {
                Signal::Rejected => {
                    if !exposure.rejected {
                        exposure.rejected = true;
                        rollout.canary.rejections = rollout.canary.rejections.saturating_add(1);
                    }
                }
                Signal::Crashed => {
                    rollout.canary.crashes = rollout.canary.crashes.saturating_add(1);
                }
                Signal::HealthCheckFailed => {
                    rollout.canary.health_check_failures =
                        rollout.canary.health_check_failures.saturating_add(1);
                }
            }
            if let Some(breach) = rollout.hard_signal_breach() {
                let why = format!("{breach}; last from node {node}: {reason}");
                self.roll_back(id, &why, ENGINE_ACTOR, true, now, out);
                break;
            }
        }
        self.settle(unit, now, out);
        Ok(())
    }

    /// The hot path: one slot lookup, then per running rollout of the unit a role read from a
    /// vector and a histogram merge (an exposed node also updates its small record). Health
    /// for a unit without a running rollout is ignored before anything else. A stage held
    /// for lack of data is judged again in the step whose sample could end the hold (a group
    /// reaching `min_requests`, a silent node speaking again).
    fn on_health(
        &mut self,
        now: TimeMs,
        node: &NodeId,
        unit: &UnitName,
        version: VersionHash,
        sample: &HealthSample,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        let Self {
            units,
            rollouts,
            index,
            ..
        } = self;
        let Some(unit_state) = units.get(unit) else {
            return Ok(());
        };
        if unit_state.active.is_empty() {
            return Ok(());
        }
        let Some(slot) = index.0.slot_hinted(node) else {
            // An unknown node is exposed nowhere; its report could only have been a baseline
            // sample, so it is refused only where it would have been one.
            let baseline_candidate = unit_state.active.iter().any(|id| {
                rollouts
                    .get(id)
                    .is_some_and(|rollout| rollout.version != version)
            });
            if baseline_candidate {
                return Err(EngineError::UnknownNode(node.clone()));
            }
            return Ok(());
        };
        let mut recheck = false;
        for id in &unit_state.active {
            let Some(rollout) = rollouts.get_mut(id) else {
                continue;
            };
            let held = rollout.held_for_data && rollout.phase == StagePhase::Holding;
            let (min_requests, silence_ms) =
                rollout.current_stage().map_or((u64::MAX, 0), |stage| {
                    (stage.min_requests, stage.silence_ms)
                });
            let reaches = |before: u64, after: u64| before < min_requests && after >= min_requests;
            let role = rollout.roles.0.role(slot);
            if let Role::Exposed { position } = role {
                if let Some(exposure) = rollout.exposed.get_at_mut(position) {
                    let was_silent = silence_ms > 0
                        && exposure.acked
                        && now.saturating_sub(exposure.last_report_ms) > silence_ms;
                    exposure.last_report_ms = now;
                    let mut reached = false;
                    if exposure.acked && version == rollout.version {
                        let before = rollout.canary.sample.requests;
                        rollout.canary.sample.merge(sample);
                        reached = reaches(before, rollout.canary.sample.requests);
                    }
                    recheck |= held && (was_silent || reached);
                }
            } else if version != rollout.version && rollout.roles.0.in_baseline(role) {
                let before = rollout.baseline.sample.requests;
                rollout.baseline.sample.merge(sample);
                recheck |= held && reaches(before, rollout.baseline.sample.requests);
            }
        }
        if recheck {
            self.settle(unit, now, out);
        }
        Ok(())
    }

    fn on_tick(&mut self, now: TimeMs, out: &mut Vec<Action>) {
        let units: Vec<UnitName> = self
            .units
            .iter()
            .filter(|(_, state)| !state.active.is_empty() || !state.queued.is_empty())
            .map(|(unit, _)| unit.clone())
            .collect();
        for unit in units {
            let active = self
                .units
                .get(&unit)
                .map(|state| state.active.clone())
                .unwrap_or_default();
            for id in active {
                let due = self.rollouts.get(&id).is_some_and(|rollout| {
                    rollout.status == RolloutStatus::Running
                        && rollout
                            .last_gate_eval_ms
                            .is_none_or(|at| now >= at.saturating_add(GATE_EVAL_INTERVAL_MS))
                });
                if due && let Some(failure) = self.evaluate_gates(id, now, out) {
                    self.roll_back(id, &failure, ENGINE_ACTOR, true, now, out);
                }
            }
            self.settle(&unit, now, out);
        }
    }
}

// ----- commands -----------------------------------------------------------------------------
impl Engine {
    fn on_command(
        &mut self,
        now: TimeMs,
        id: RolloutId,
        command: Command,
        actor: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        let Some(rollout) = self.rollouts.get(&id) else {
            return Err(EngineError::UnknownRollout(id));
        };
        let status = rollout.status;
        let invalid = |expected: &'static str| EngineError::InvalidCommand {
            rollout: id,
            status,
            command,
            expected,
        };
        let actor = cut(actor);
        let reason = cut(reason);
        let stage = rollout.stage_name();
        let unit = rollout.unit.clone();
        match command {
            Command::Pause => {
                if status != RolloutStatus::Running {
                    return Err(invalid("running"));
                }
                if let Some(rollout) = self.rollouts.get_mut(&id) {
                    rollout.status = RolloutStatus::Paused;
                    rollout.paused_at_ms = Some(now);
                }
                self.log_as(id, ChangeKind::Paused, &actor, stage, reason, now, out);
            }
            Command::Resume => {
                if status != RolloutStatus::Paused {
                    return Err(invalid("paused"));
                }
                if let Some(rollout) = self.rollouts.get_mut(&id) {
                    let paused_ms = now.saturating_sub(rollout.paused_at_ms.unwrap_or(now));
                    rollout.status = RolloutStatus::Running;
                    rollout.paused_at_ms = None;
                    rollout.timeout_at_ms =
                        rollout.timeout_at_ms.map(|at| at.saturating_add(paused_ms));
                    match rollout.phase {
                        StagePhase::Baking { bake_ends_ms } => {
                            rollout.phase = StagePhase::Baking {
                                bake_ends_ms: bake_ends_ms.saturating_add(paused_ms),
                            };
                        }
                        StagePhase::Soaking { soak_ends_ms } => {
                            rollout.phase = StagePhase::Soaking {
                                soak_ends_ms: soak_ends_ms.saturating_add(paused_ms),
                            };
                        }
                        _ => {}
                    }
                }
                self.log_as(id, ChangeKind::Resumed, &actor, stage, reason, now, out);
            }
            Command::Promote => {
                if status != RolloutStatus::Running {
                    return Err(invalid("running"));
                }
                if !matches!(
                    rollout.phase,
                    StagePhase::Baking { .. } | StagePhase::Holding | StagePhase::Soaking { .. }
                ) {
                    return Err(invalid(
                        "baking, holding (every exposed node has applied) or soaking",
                    ));
                }
                if rollout
                    .gate_reports
                    .iter()
                    .any(|report| matches!(report.verdict, Verdict::Fail { .. }))
                {
                    return Err(invalid("free of failing gates"));
                }
                if matches!(rollout.phase, StagePhase::Soaking { .. }) {
                    let why = format!("soak ended early by {actor}: {reason}");
                    self.log_as(
                        id,
                        ChangeKind::Promoted,
                        &actor,
                        stage,
                        why.clone(),
                        now,
                        out,
                    );
                    self.complete(id, &why, now, out);
                } else {
                    let why = format!("promoted by {actor}: {reason}");
                    self.log_as(id, ChangeKind::Promoted, &actor, stage, reason, now, out);
                    self.pass_stage(id, &why, now, out);
                }
            }
            Command::Abort => {
                if status.is_terminal() {
                    return Err(invalid("queued, running or paused"));
                }
                self.abort(id, &actor, &reason, ChangeKind::Aborted, now, out);
            }
            Command::Rollback => {
                if !matches!(status, RolloutStatus::Running | RolloutStatus::Paused) {
                    return Err(invalid(
                        "running or paused (abort a queued rollout instead)",
                    ));
                }
                let why = format!("rollback requested by {actor}: {reason}");
                self.roll_back(id, &why, &actor, true, now, out);
            }
            Command::Approve => {
                if status != RolloutStatus::Running {
                    return Err(invalid("running"));
                }
                if rollout.phase != StagePhase::AwaitingApproval {
                    return Err(EngineError::NoApprovalPending { rollout: id });
                }
                if rollout.actor == actor {
                    return Err(EngineError::SelfApproval { actor });
                }
                if let Some(rollout) = self.rollouts.get_mut(&id) {
                    rollout.phase = StagePhase::Passed;
                }
                self.log_as(id, ChangeKind::Approved, &actor, stage, reason, now, out);
            }
        }
        self.settle(&unit, now, out);
        Ok(())
    }
}

// ----- the state machine ----------------------------------------------------------------------
impl Engine {
    /// Whether a rollout with `plan` may start now beside the unit's active rollouts.
    fn can_start(&self, unit: &UnitState, plan: &Plan) -> bool {
        let Some(newest) = unit.active.last() else {
            return true;
        };
        plan.concurrency == Concurrency::Train
            && unit.active.iter().all(|id| {
                self.rollouts
                    .get(id)
                    .is_some_and(|rollout| rollout.plan.concurrency == Concurrency::Train)
            })
            && self
                .rollouts
                .get(newest)
                .is_some_and(|rollout| rollout.stage > 0)
    }

    fn start(&mut self, id: RolloutId, now: TimeMs, out: &mut Vec<Action>) {
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        rollout.status = RolloutStatus::Running;
        let unit = rollout.unit.clone();
        let reason = rollout.reason.clone();
        let actor = rollout.actor.clone();
        if let Some(state) = self.units.get_mut(&unit) {
            state.active.push(id);
        }
        self.log_as(
            id,
            ChangeKind::RolloutStarted,
            &actor,
            None,
            reason,
            now,
            out,
        );
        self.enter_stage(id, 0, now, out);
    }

    /// Starts queued rollouts of the unit that may start now, in order.
    fn start_ready(&mut self, unit: &UnitName, now: TimeMs, out: &mut Vec<Action>) -> bool {
        let mut started = false;
        let bound = self.units.get(unit).map_or(0, |state| state.queued.len());
        for _ in 0..bound {
            let Some(state) = self.units.get(unit) else {
                break;
            };
            let Some(front) = state.queued.front().copied() else {
                break;
            };
            let ready = self
                .rollouts
                .get(&front)
                .is_some_and(|rollout| self.can_start(state, &rollout.plan));
            if !ready {
                break;
            }
            if let Some(state) = self.units.get_mut(unit) {
                state.queued.pop_front();
            }
            self.start(front, now, out);
            started = true;
        }
        started
    }

    /// Points `node` at the rollout's version and records what it had before. When a later
    /// train rollout of the unit already reached the node, the node stays on that later
    /// version (which builds on this one): this rollout takes over the node's old "before",
    /// the later one now reverts to this version, and the node counts as applied here.
    /// Returns whether the node's desired version changed.
    fn expose(&mut self, id: RolloutId, node: &NodeId, now: TimeMs) -> bool {
        let Some(rollout) = self.rollouts.get(&id) else {
            return false;
        };
        let (unit, version, stage) = (rollout.unit.clone(), rollout.version, rollout.stage);
        let later: Vec<RolloutId> = self
            .units
            .get(&unit)
            .map(|state| {
                state
                    .active
                    .iter()
                    .copied()
                    .skip_while(|other| *other != id)
                    .skip(1)
                    .collect()
            })
            .unwrap_or_default();
        let mut inherited = None;
        for later_id in later {
            if let Some(exposure) = self
                .rollouts
                .get_mut(&later_id)
                .and_then(|later| later.exposed.get_mut(node))
            {
                inherited = Some(exposure.before);
                exposure.before = Some(version);
                break;
            }
        }
        let (before, acked, changed) = match inherited {
            Some(before) => (before, true, false),
            None => {
                let Some(node_state) = self.nodes.get_mut(node) else {
                    return false;
                };
                let before = node_state.desired.insert(unit, version);
                (before, false, before != Some(version))
            }
        };
        if let Some(rollout) = self.rollouts.get_mut(&id) {
            let fresh = rollout
                .exposed
                .insert(
                    node.clone(),
                    Exposure {
                        before,
                        stage,
                        acked,
                        rejected: false,
                        last_report_ms: now,
                    },
                )
                .is_none();
            if fresh {
                rollout.nodes_exposed = rollout.nodes_exposed.saturating_add(1);
                if acked {
                    rollout.nodes_applied = rollout.nodes_applied.saturating_add(1);
                }
            }
        }
        changed
    }

    fn enter_stage(&mut self, id: RolloutId, index: usize, now: TimeMs, out: &mut Vec<Action>) {
        let Some(rollout) = self.rollouts.get(&id) else {
            return;
        };
        let Some(stage) = rollout.plan.stages.get(index) else {
            return;
        };
        let mut targeted = 0u64;
        let mut newly: Vec<NodeId> = Vec::new();
        // Selected but down: a dead node is not a canary (it joins when it is heard from).
        let mut left_out: Vec<NodeId> = Vec::new();
        // Selected but in another unit's running rollout (`exclusive_nodes`): it joins when
        // that one ends.
        let mut deferred: Vec<NodeId> = Vec::new();
        for (node, state) in &self.nodes {
            let node_bucket = select::bucket(&rollout.unit, node);
            if stage.selector.matches(&state.labels)
                && select::bucket_within(node_bucket, stage.percent)
            {
                targeted = targeted.saturating_add(1);
            }
            if rollout.exposed.contains_key(node) {
                continue;
            }
            let selected = rollout
                .plan
                .stages
                .iter()
                .take(index.saturating_add(1))
                .any(|earlier| {
                    earlier.selector.matches(&state.labels)
                        && select::bucket_within(node_bucket, earlier.percent)
                });
            if selected {
                if state.down_since_ms.is_some() {
                    left_out.push(node.clone());
                } else if rollout.plan.exclusive_nodes && self.busy_elsewhere(node, &rollout.unit) {
                    deferred.push(node.clone());
                } else {
                    newly.push(node.clone());
                }
            }
        }
        // The fleet map's order is arbitrary: expose in node order.
        newly.sort();
        left_out.sort();
        deferred.sort();
        let (unit, version, timeout_ms, name) = (
            rollout.unit.clone(),
            rollout.version,
            stage.timeout_ms,
            stage.name.clone(),
        );
        if let Some(rollout) = self.rollouts.get_mut(&id) {
            rollout.stage = index;
            rollout.phase = StagePhase::Applying;
            rollout.stage_entered_ms = now;
            // A stage whose every node is busy elsewhere waits for one, its timeout not running.
            rollout.waiting_for_nodes = newly.is_empty() && !deferred.is_empty();
            rollout.timeout_at_ms = (timeout_ms > 0 && !rollout.waiting_for_nodes)
                .then(|| now.saturating_add(timeout_ms));
            rollout.nodes_targeted = targeted;
            rollout.canary = GroupMetrics::default();
            rollout.baseline = GroupMetrics::default();
            rollout.gate_reports.clear();
            rollout.last_gate_eval_ms = None;
            rollout.held_for_data = false;
        }
        let mut set_nodes = Vec::new();
        for node in &newly {
            if self.expose(id, node, now) {
                set_nodes.push(node.clone());
            }
        }
        self.rebuild_roles(id);
        let exposed_total = self
            .rollouts
            .get(&id)
            .map_or(0, |rollout| rollout.nodes_exposed);
        if !set_nodes.is_empty() {
            out.push(Action::SetDesired {
                unit,
                version: Some(version),
                nodes: set_nodes,
            });
        }
        let mut reason = if targeted == 0 {
            "no nodes selected by this stage; it passes at once".to_owned()
        } else {
            format!(
                "{targeted} nodes selected, {} newly exposed, {exposed_total} exposed in all",
                newly.len()
            )
        };
        if !deferred.is_empty() {
            reason.push_str(&format!(
                "; {} deferred, in another unit's running rollout (exclusive_nodes): {}",
                deferred.len(),
                name_nodes(&deferred)
            ));
        }
        if !left_out.is_empty() {
            reason.push_str(&format!(
                "; {} left out, down (not heard from): {}",
                left_out.len(),
                name_nodes(&left_out)
            ));
        }
        self.log(
            id,
            ChangeKind::StageStarted,
            None,
            Some(name),
            reason,
            now,
            out,
        );
    }

    /// Lets the unit's rollouts move (bakes, holds, stages, train order, queue) until nothing
    /// changes.
    fn settle(&mut self, unit: &UnitName, now: TimeMs, out: &mut Vec<Action>) {
        for _ in 0..MAX_SETTLE_ROUNDS {
            let active = self
                .units
                .get(unit)
                .map(|state| state.active.clone())
                .unwrap_or_default();
            let mut changed = false;
            for id in active {
                changed |= self.progress(id, now, out);
            }
            changed |= self.start_ready(unit, now, out);
            if !changed {
                break;
            }
        }
    }

    /// Moves one running rollout through the transitions that are due now. Returns whether
    /// anything changed.
    fn progress(&mut self, id: RolloutId, now: TimeMs, out: &mut Vec<Action>) -> bool {
        let mut changed = false;
        let bound = self
            .rollouts
            .get(&id)
            .map_or(0, |rollout| rollout.plan.stages.len().saturating_add(1))
            .saturating_mul(MAX_TRANSITIONS_PER_STAGE);
        for _ in 0..bound {
            let Some(rollout) = self.rollouts.get(&id) else {
                return changed;
            };
            if rollout.status != RolloutStatus::Running {
                return changed;
            }
            let Some(stage) = rollout.current_stage() else {
                return changed;
            };
            let all_applied = rollout.nodes_applied >= rollout.nodes_exposed;
            let timed_out = rollout.timeout_at_ms.is_some_and(|at| now >= at);
            match rollout.phase {
                StagePhase::Applying if rollout.nodes_targeted == 0 => {
                    self.pass_stage(id, "no nodes selected by this stage", now, out);
                }
                StagePhase::Applying if rollout.waiting_for_nodes => return changed,
                StagePhase::Applying if all_applied => {
                    let bake_ends_ms = now.saturating_add(stage.bake_ms);
                    if let Some(rollout) = self.rollouts.get_mut(&id) {
                        rollout.phase = StagePhase::Baking { bake_ends_ms };
                    }
                }
                StagePhase::Baking { bake_ends_ms } if now >= bake_ends_ms => {
                    let fresh = rollout
                        .last_gate_eval_ms
                        .is_some_and(|at| at >= bake_ends_ms);
                    if !fresh && let Some(failure) = self.evaluate_gates(id, now, out) {
                        self.roll_back(id, &failure, ENGINE_ACTOR, true, now, out);
                        return true;
                    }
                    if let Some(rollout) = self.rollouts.get_mut(&id) {
                        rollout.phase = StagePhase::Holding;
                    }
                }
                // Held at the last evaluation for lack of data, and the data is here now:
                // judge at once (at most once per hold, so the count of evaluations stays
                // within twice the periodic ones).
                StagePhase::Holding
                    if rollout.held_for_data
                        && rollout.last_gate_eval_ms != Some(now)
                        && rollout.has_data(now) =>
                {
                    if let Some(failure) = self.evaluate_gates(id, now, out) {
                        self.roll_back(id, &failure, ENGINE_ACTOR, true, now, out);
                        return true;
                    }
                }
                StagePhase::Holding if self.stage_ready(rollout) => {
                    // Never pass on stale verdicts: judge the data of this very step.
                    if rollout.last_gate_eval_ms != Some(now) {
                        if let Some(failure) = self.evaluate_gates(id, now, out) {
                            self.roll_back(id, &failure, ENGINE_ACTOR, true, now, out);
                            return true;
                        }
                        if !self
                            .rollouts
                            .get(&id)
                            .is_some_and(|rollout| self.stage_ready(rollout))
                        {
                            continue;
                        }
                    }
                    let why = self.rollouts.get(&id).map_or_else(String::new, |rollout| {
                        format!(
                            "bake over; gates: {}; {}",
                            gate_summary(&rollout.gate_reports),
                            rollout.numbers()
                        )
                    });
                    self.pass_stage(id, &why, now, out);
                }
                StagePhase::Applying | StagePhase::Baking { .. } | StagePhase::Holding => {
                    if timed_out {
                        // The gates neither failed nor passed: missing data is no evidence
                        // against the version, so it is never quarantined for it.
                        let why = format!(
                            "stage {:?} inconclusive after {}: gates: {}; {}",
                            stage.name,
                            crate::duration::format_ms(stage.timeout_ms),
                            gate_summary(&rollout.gate_reports),
                            rollout.numbers(),
                        );
                        match rollout.plan.on_inconclusive {
                            OnInconclusive::Rollback => {
                                let why = format!("{why}; on_inconclusive: rollback");
                                self.roll_back(id, &why, ENGINE_ACTOR, false, now, out);
                            }
                            OnInconclusive::Hold => self.hold(id, &why, now, out),
                        }
                        return true;
                    }
                    return changed;
                }
                StagePhase::AwaitingApproval => return changed,
                StagePhase::Soaking { soak_ends_ms } => {
                    if now < soak_ends_ms {
                        return changed;
                    }
                    // Never complete on stale verdicts: judge the data of this very step.
                    if rollout.last_gate_eval_ms != Some(now)
                        && let Some(failure) = self.evaluate_gates(id, now, out)
                    {
                        self.roll_back(id, &failure, ENGINE_ACTOR, true, now, out);
                        return true;
                    }
                    let (soak_ms, numbers) = self
                        .rollouts
                        .get(&id)
                        .map_or((0, String::new()), |rollout| {
                            (rollout.plan.soak_ms, rollout.numbers())
                        });
                    let stage = self.rollouts.get(&id).and_then(Rollout::stage_name);
                    let why = format!(
                        "soak of {} passed with no failing gate or hard signal; {numbers}",
                        crate::duration::format_ms(soak_ms)
                    );
                    self.log(id, ChangeKind::SoakPassed, None, stage, why, now, out);
                    self.complete(id, "every stage and the soak passed", now, out);
                    return true;
                }
                StagePhase::Passed => {
                    let next = rollout.stage.saturating_add(1);
                    if self.blocked_by_predecessor(id, next) {
                        return changed;
                    }
                    if next >= rollout.plan.stages.len() {
                        // A soak watches the nodes the version reached; with none there is
                        // nothing to watch (and no evidence to make it stable either).
                        if rollout.plan.soak_ms > 0 && rollout.nodes_exposed > 0 {
                            self.start_soak(id, now, out);
                            changed = true;
                            continue;
                        }
                        let why = if rollout.nodes_exposed == 0 {
                            "every stage passed; no node was exposed, so there was nothing to soak"
                        } else {
                            "every stage passed"
                        };
                        self.complete(id, why, now, out);
                        return true;
                    }
                    self.enter_stage(id, next, now, out);
                }
            }
            changed = true;
        }
        changed
    }

    /// Whether the stage may pass now: every exposed node applied, enough canary requests,
    /// every gate's latest verdict `Pass`, no silent canary node.
    /// A stage that could not conclude by its timeout keeps running without one: it passes
    /// as soon as its gates pass, a failing gate still rolls it back, and an operator may
    /// promote, roll back or abort it. Alerts once.
    fn hold(&mut self, id: RolloutId, why: &str, now: TimeMs, out: &mut Vec<Action>) {
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        rollout.timeout_at_ms = None;
        let stage = rollout.stage_name();
        let message = format!(
            "rollout {id} holds: {why}; it passes when its gates pass, or run `failsmall rollout promote|rollback|abort {}`",
            id.0
        );
        out.push(Action::Notify {
            rollout: id,
            message: cut(&message),
        });
        self.log(
            id,
            ChangeKind::Held,
            None,
            stage,
            format!("{why}; holding (on_inconclusive: hold), the version is not blamed"),
            now,
            out,
        );
    }

    fn stage_ready(&self, rollout: &Rollout) -> bool {
        let Some(stage) = rollout.current_stage() else {
            return false;
        };
        rollout.nodes_applied >= rollout.nodes_exposed
            && rollout.canary.sample.requests >= stage.min_requests
            && rollout.canary.silent_nodes == 0
            && rollout.gate_reports.len() == stage.gates.len()
            && rollout
                .gate_reports
                .iter()
                .all(|report| matches!(report.verdict, Verdict::Pass { .. }))
    }

    /// In a release train, whether the earlier rollout of the unit has not yet left stage
    /// `next` (or, when `next` is past the last stage, has not completed).
    fn blocked_by_predecessor(&self, id: RolloutId, next: usize) -> bool {
        let Some(rollout) = self.rollouts.get(&id) else {
            return false;
        };
        let Some(state) = self.units.get(&rollout.unit) else {
            return false;
        };
        let Some(position) = state.active.iter().position(|other| *other == id) else {
            return false;
        };
        let Some(earlier) = position.checked_sub(1).and_then(|p| state.active.get(p)) else {
            return false;
        };
        self.rollouts
            .get(earlier)
            .is_some_and(|earlier| earlier.stage <= next)
    }

    fn pass_stage(&mut self, id: RolloutId, why: &str, now: TimeMs, out: &mut Vec<Action>) {
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        let approval = rollout.current_stage().is_some_and(|stage| stage.approval);
        let gated = rollout.current_stage().is_some_and(Stage::is_gated);
        if gated && rollout.nodes_targeted > 0 && rollout.nodes_applied > 0 {
            rollout.gated_evidence = true;
        }
        rollout.phase = if approval {
            StagePhase::AwaitingApproval
        } else {
            StagePhase::Passed
        };
        let stage = rollout.stage_name();
        self.log(
            id,
            ChangeKind::StagePassed,
            None,
            stage.clone(),
            cut(why),
            now,
            out,
        );
        if approval {
            let message = format!(
                "stage {:?} passed and waits for approval by someone other than the pusher",
                stage.unwrap_or_default()
            );
            out.push(Action::Notify {
                rollout: id,
                message,
            });
        }
    }

    /// Starts the soak after the last stage passed: a fresh window of canary and baseline
    /// health, judged by the last stage's gates and hard signals like a stage, with no timeout.
    fn start_soak(&mut self, id: RolloutId, now: TimeMs, out: &mut Vec<Action>) {
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        let soak_ms = rollout.plan.soak_ms;
        let soak_ends_ms = now.saturating_add(soak_ms);
        rollout.phase = StagePhase::Soaking { soak_ends_ms };
        rollout.timeout_at_ms = None;
        rollout.canary = GroupMetrics::default();
        rollout.baseline = GroupMetrics::default();
        rollout.gate_reports.clear();
        rollout.last_gate_eval_ms = None;
        rollout.held_for_data = false;
        let (stage, exposed) = (rollout.stage_name(), rollout.nodes_exposed);
        let why = format!(
            "soaking for {} until t={soak_ends_ms} ms: the last stage's gates and hard signals keep \
             watching {exposed} exposed nodes; a failure rolls every one back",
            crate::duration::format_ms(soak_ms)
        );
        self.log(id, ChangeKind::SoakStarted, None, stage, why, now, out);
    }

    /// Ends a rollout `completed`. Its version becomes the unit's stable version only with
    /// evidence (see [`Rollout::gated_evidence`]); otherwise the stable version stays.
    fn complete(&mut self, id: RolloutId, why: &str, now: TimeMs, out: &mut Vec<Action>) {
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        let evidence = rollout.gated_evidence;
        let outcome = if evidence {
            cut(why)
        } else {
            cut(&format!(
                "{why}; completed without a stable version: no gated stage ran it on any node"
            ))
        };
        rollout.status = RolloutStatus::Completed;
        rollout.ended_ms = Some(now);
        rollout.outcome = Some(outcome.clone());
        let (unit, version) = (rollout.unit.clone(), rollout.version);
        let numbers = rollout.numbers();
        if let Some(state) = self.units.get_mut(&unit) {
            if evidence {
                state.stable = Some(version);
            }
            state.active.retain(|other| *other != id);
        }
        self.log(
            id,
            ChangeKind::Completed,
            None,
            None,
            format!("{outcome}; {numbers}"),
            now,
            out,
        );
        let message = if evidence {
            format!(
                "{unit} {} completed: it is now the stable version",
                version.short()
            )
        } else {
            format!(
                "{unit} {} completed without a stable version: no gated stage ran it on any node",
                version.short()
            )
        };
        out.push(Action::Notify {
            rollout: id,
            message,
        });
        self.retire(id, now, out);
    }

    /// Ends a queued or active rollout where it is: exposed nodes keep the version.
    fn abort(
        &mut self,
        id: RolloutId,
        actor: &str,
        why: &str,
        kind: ChangeKind,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        rollout.status = RolloutStatus::Aborted;
        rollout.ended_ms = Some(now);
        rollout.outcome = Some(cut(why));
        let unit = rollout.unit.clone();
        let stage = rollout.stage_name();
        if let Some(state) = self.units.get_mut(&unit) {
            state.active.retain(|other| *other != id);
            state.queued.retain(|other| *other != id);
        }
        self.log_as(id, kind, actor, stage, cut(why), now, out);
        out.push(Action::Notify {
            rollout: id,
            message: format!("aborted by {actor}: {}", cut(why)),
        });
        self.retire(id, now, out);
    }

    fn end_superseded(
        &mut self,
        old: RolloutId,
        by: RolloutId,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        let why = format!("superseded by {by}, a newer version of the unit");
        self.abort(old, ENGINE_ACTOR, &why, ChangeKind::Superseded, now, out);
    }

    /// Reverts every node the rollout reached (and, in a release train, every later rollout of
    /// the unit first, newest first) to what it had before, in this step.
    fn roll_back(
        &mut self,
        id: RolloutId,
        why: &str,
        actor: &str,
        quarantine: bool,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        let Some(rollout) = self.rollouts.get(&id) else {
            return;
        };
        let unit = rollout.unit.clone();
        let soaking_why;
        let why = if matches!(rollout.phase, StagePhase::Soaking { .. }) {
            soaking_why = format!("rolled back during soak: {why}");
            soaking_why.as_str()
        } else {
            why
        };
        let chain: Vec<RolloutId> = self
            .units
            .get(&unit)
            .map(|state| {
                state
                    .active
                    .iter()
                    .copied()
                    .skip_while(|other| *other != id)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let chain: Vec<RolloutId> = if chain.is_empty() { vec![id] } else { chain };
        let mut targets: BTreeMap<NodeId, Option<VersionHash>> = BTreeMap::new();
        for rollout_id in chain.iter().rev() {
            if let Some(rollout) = self.rollouts.get(rollout_id) {
                for (node, exposure) in rollout.exposed.iter() {
                    targets.insert(node.clone(), exposure.before);
                }
            }
        }
        let mut groups: BTreeMap<Option<VersionHash>, Vec<NodeId>> = BTreeMap::new();
        for (node, before) in targets {
            let Some(state) = self.nodes.get_mut(&node) else {
                continue;
            };
            match before {
                Some(version) => state.desired.insert(unit.clone(), version),
                None => state.desired.remove(&unit),
            };
            groups.entry(before).or_default().push(node);
        }
        for (version, nodes) in groups {
            out.push(Action::SetDesired {
                unit: unit.clone(),
                version,
                nodes,
            });
        }
        for rollout_id in chain.iter().rev() {
            let primary = *rollout_id == id;
            let Some(rollout) = self.rollouts.get_mut(rollout_id) else {
                continue;
            };
            let reason = if primary {
                cut(&format!("{why}; at rollback: {}", rollout.numbers()))
            } else {
                cut(&format!(
                    "{id}, an earlier version this one builds on, rolled back: {why}; at rollback: {}",
                    rollout.numbers()
                ))
            };
            rollout.status = RolloutStatus::RolledBack;
            rollout.ended_ms = Some(now);
            rollout.paused_at_ms = None;
            rollout.outcome = Some(reason.clone());
            let version = rollout.version;
            let stage = rollout.stage_name();
            let exposed = rollout.nodes_exposed;
            if let Some(state) = self.units.get_mut(&unit) {
                state.active.retain(|other| other != rollout_id);
            }
            self.log_as(
                *rollout_id,
                ChangeKind::RolledBack,
                actor,
                stage.clone(),
                reason.clone(),
                now,
                out,
            );
            if primary && quarantine {
                self.quarantine(&unit, version, *rollout_id);
                self.log_as(
                    *rollout_id,
                    ChangeKind::Quarantined,
                    actor,
                    stage,
                    format!(
                        "{} is quarantined for {unit}; redeploying it needs an admin override",
                        version.short()
                    ),
                    now,
                    out,
                );
            }
            out.push(Action::Notify {
                rollout: *rollout_id,
                message: format!(
                    "{unit} {} rolled back on {exposed} nodes: {reason}",
                    version.short()
                ),
            });
            self.retire(*rollout_id, now, out);
        }
        if quarantine && let Some(version) = self.rollouts.get(&id).map(|rollout| rollout.version) {
            self.end_queued_of_quarantined(&unit, version, id, now, out);
        }
    }

    /// Ends every queued rollout of `version` of the unit, just quarantined by rollout `by`:
    /// the same bytes would fail the same way.
    fn end_queued_of_quarantined(
        &mut self,
        unit: &UnitName,
        version: VersionHash,
        by: RolloutId,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        let doomed: Vec<RolloutId> = self
            .units
            .get(unit)
            .map(|state| {
                state
                    .queued
                    .iter()
                    .copied()
                    .filter(|queued| {
                        self.rollouts
                            .get(queued)
                            .is_some_and(|rollout| rollout.version == version)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let why = format!("version quarantined after rollback {by}");
        for queued in doomed {
            self.abort(queued, ENGINE_ACTOR, &why, ChangeKind::Superseded, now, out);
        }
    }

    fn quarantine(&mut self, unit: &UnitName, version: VersionHash, by: RolloutId) {
        let Some(state) = self.units.get_mut(unit) else {
            return;
        };
        state.quarantined.insert(version, by);
        if state.quarantined.len() > MAX_QUARANTINED_PER_UNIT
            && let Some(oldest) = state
                .quarantined
                .iter()
                .min_by_key(|(_, by)| **by)
                .map(|(hash, _)| *hash)
        {
            state.quarantined.remove(&oldest);
        }
    }

    /// Records a terminal rollout and prunes old ones.
    fn retire(&mut self, id: RolloutId, now: TimeMs, out: &mut Vec<Action>) {
        let released: Vec<NodeId> = match self.rollouts.get_mut(&id) {
            Some(rollout) => {
                rollout.roles = Derived::default();
                let mut nodes: Vec<NodeId> = rollout.exposed.keys().cloned().collect();
                nodes.sort();
                nodes
            }
            None => Vec::new(),
        };
        self.release(&released, now, out);
        self.terminal.push_back(id);
        let kept = self.terminal.len();
        if kept > MAX_TERMINAL_ROLLOUTS_WITH_NODES
            && let Some(old) = self
                .terminal
                .get(kept - MAX_TERMINAL_ROLLOUTS_WITH_NODES - 1)
            && let Some(rollout) = self.rollouts.get_mut(old)
        {
            rollout.exposed = Exposures::default();
        }
        while self.terminal.len() > MAX_TERMINAL_ROLLOUTS_KEPT {
            if let Some(oldest) = self.terminal.pop_front() {
                self.rollouts.remove(&oldest);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        id: RolloutId,
        kind: ChangeKind,
        actor: Option<&str>,
        stage: Option<String>,
        reason: String,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        self.log_as(
            id,
            kind,
            actor.unwrap_or(ENGINE_ACTOR),
            stage,
            reason,
            now,
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn log_as(
        &self,
        id: RolloutId,
        kind: ChangeKind,
        actor: &str,
        stage: Option<String>,
        reason: String,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        let Some(rollout) = self.rollouts.get(&id) else {
            return;
        };
        out.push(Action::Changelog(ChangelogEntry {
            at_ms: now,
            actor: cut(actor),
            kind,
            unit: rollout.unit.clone(),
            version: rollout.version,
            rollout: id,
            stage,
            reason: cut(&reason),
        }));
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
