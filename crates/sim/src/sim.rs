//! The discrete-event simulation: one fleet, one seeded generator, a queue of timed events,
//! and the real engine deciding every rollout.
//!
//! Per node the state lives in vectors indexed by node number; one `Event::Health` per node is
//! built once and its sample rewritten in place each interval, so the hot loop allocates
//! nothing.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use failsmall_core::domain::{NodeId, RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{
    Action, ChangeKind, Command, Engine, EngineError, Event, RolloutStatus, StagePhase,
};
use failsmall_core::health::HealthSample;
use failsmall_core::plan::{
    Concurrency, HardSignals, OnInconclusive, Percent, Plan, Selector, Stage,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use failsmall_core::slo::BURN_FEED_INTERVAL_MS;

mod health;
mod sampling;

use sampling::{LatencyShape, binomial_approx, poisson_capped, poisson_known, round_count};

use crate::SimError;
use crate::fleet::Fleet;
use crate::report::{Marker, MarkerKind, StrategyMetrics, StrategyRun, TimelinePoint};
use crate::scenario::{DeadCount, Effect, Incident, Push, Scenario};

/// Longest delay between a node learning its desired version and applying it.
pub const APPLY_DELAY_MAX_MS: u64 = 5_000;
/// The agent's default post-apply health window: when the version's plan has a `health_check`,
/// the agent ACKs only after the check kept passing this long after the apply; a consumer that
/// goes down inside the window makes the agent put back its last known good and NACK.
pub const POST_APPLY_WINDOW_MS: u64 = 3_000;
/// Most events one strategy run may process (a guard against a runaway loop).
const RUN_MAX_EVENTS: u64 = 2_000_000_000;
/// Most trace lines kept per strategy; later ones are dropped and counted.
pub const TRACE_MAX_LINES: usize = 2_000_000;
/// Shortest spacing between two engine ticks outside health rounds.
const TICK_MIN_SPACING_MS: u64 = 100;
/// Most timeline points kept per strategy (the SVG does not need more).
const TIMELINE_MAX_POINTS: usize = 100_000;
/// How often the server compares when it last heard from each node with its down threshold
/// (`LIVENESS_FLUSH_MS` in `crates/server/src/liveness.rs`).
pub const LIVENESS_CHECK_MS: u64 = 2_000;
/// Below this many requests per interval a node's traffic is drawn from a Poisson
/// distribution; above it, from its normal approximation.
const REQUESTS_POISSON_BELOW: f64 = 30.0;
/// Mixed into the seed to choose which nodes die, apart from the run's generator.
const DEAD_NODES_SEED: u64 = 0x6465_6164_6e6f_6465;

/// How versions reach the fleet.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// One global push to every node, no gates, no automatic rollback; a person reverts a bad
    /// version after the scenario's `manual_revert_after`.
    Instant,
    /// Every version rolls out through this plan on the engine.
    Plan { label: String, plan: Plan },
}

impl Strategy {
    pub fn label(&self) -> &str {
        match self {
            Strategy::Instant => "instant",
            Strategy::Plan { label, .. } => label,
        }
    }
}

/// The plan the instant strategy runs: one stage, every node, no bake, no gates, no hard
/// signals, so nothing is ever rolled back automatically.
pub fn instant_plan(hold_ms: u64) -> Plan {
    Plan {
        name: "instant".to_owned(),
        concurrency: Concurrency::Queue,
        queue_limit: 1_000,
        supersede_queued: true,
        health_check: None,
        stages: vec![Stage {
            name: "everyone".to_owned(),
            selector: Selector::default(),
            percent: Percent::ALL,
            bake_ms: 0,
            timeout_ms: hold_ms,
            gates: Vec::new(),
            min_requests: 0,
            hard_signals: HardSignals {
                rejections_max: 0,
                crashes_max: 0,
                health_check_failures_max: 0,
                silent_nodes_max: 0,
            },
            silence_ms: hold_ms,
            approval: false,
            approvers: 0,
        }],
        soak_ms: 0,
        on_inconclusive: OnInconclusive::Hold,
        exclusive_nodes: false,
        health_source: None,
    }
}

/// What a run should do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Strategies to compare; empty: the scenario's own list.
    pub strategies: Vec<Strategy>,
    /// Keep a one-line-per-event trace.
    pub trace: bool,
}

/// One timed event of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SimEvent {
    Push {
        push: usize,
    },
    Apply {
        node: u32,
        unit: u32,
        slot: u32,
        token: u32,
    },
    /// The post-apply health window of an apply ended: the agent ACKs.
    Ack {
        node: u32,
        unit: u32,
        slot: u32,
        token: u32,
    },
    /// A node's agent stops: no request of any kind until it revives.
    Die {
        node: u32,
    },
    Revive {
        node: u32,
    },
    /// The server's liveness check that finds nodes down or up again (an index into
    /// `Run::liveness`).
    Liveness {
        check: u32,
    },
    HealthRound,
    EngineTick,
    /// The server's feed of burn rates to the engine, every `BURN_FEED_INTERVAL_MS`.
    BurnFeed,
    ManualRevert {
        slot: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timed {
    at_ms: u64,
    seq: u64,
    event: SimEvent,
}

impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        other.at_ms.cmp(&self.at_ms).then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A distinct version (by hash) the run has seen; slot 0 is "no version".
#[derive(Debug, Clone)]
struct VersionSlot {
    hash: Option<VersionHash>,
    /// The unit's index in `Run::units` (0 for the "no version" slot).
    unit: u32,
    name: String,
    effect: Effect,
    bad: bool,
    /// Probability that a request which background noise did not fail fails because of the
    /// effect.
    extra_error_q: f64,
    /// Added to the median latency of the nodes it hurts.
    latency_add_ms: f64,
}

/// Everything one strategy run keeps.
struct Run<'a> {
    scenario: &'a Scenario,
    fleet: &'a Fleet,
    strategy: &'a Strategy,
    plan: Plan,
    /// Every unit rolled out; per (unit, node) state is indexed `unit * nodes + node`.
    units: Vec<UnitName>,
    /// The scenario's `unit`, first of `units`.
    default_unit: UnitName,
    unit_index: HashMap<UnitName, u32>,
    nodes: usize,
    engine: Engine,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Timed>,
    seq: u64,
    now_ms: u64,
    pushes: &'a [Push],
    slots: Vec<VersionSlot>,
    slot_of: HashMap<VersionHash, u32>,
    node_index: HashMap<NodeId, u32>,
    // Per (unit, node), indexed `unit * nodes + node`.
    running: Vec<u32>,
    desired: Vec<u32>,
    apply_token: Vec<u32>,
    hurt_from_ms: Vec<u64>,
    /// The agent reported its consumer's crash for this unit's active version (once per
    /// version and outage).
    crash_reported: Vec<bool>,
    // Per node.
    mean_requests: Vec<f64>,
    /// Bad versions the node runs (of any unit).
    bad_running: Vec<u32>,
    /// The node's agent is dead: it sends nothing and applies nothing.
    dead: Vec<bool>,
    /// The latency median the node's shape was computed for, and the shape.
    latency_median_ms: Vec<f64>,
    latency_shape: Vec<LatencyShape>,
    /// The node ran a bad version at some time / a bad version's effect showed on it.
    ever_ran_bad: Vec<bool>,
    ever_failed: Vec<bool>,
    /// The server's liveness changes, in time order: (down, up).
    liveness: Vec<(Vec<NodeId>, Vec<NodeId>)>,
    /// Per node: mean background errors per interval and `exp(-mean)`, for Poisson draws.
    background_errors: Vec<(f64, f64)>,
    /// Per node: whether the engine needs its health now (canary or baseline of a running
    /// rollout); recomputed when rollouts or stages change.
    health_relevant: Vec<bool>,
    health_relevant_dirty: bool,
    /// The scenario's SLOs, counted from the health agents send (as the server does).
    slos: crate::slo::SloBook,
    /// When false, every node's health goes to the engine while a rollout runs.
    health_filter: bool,
    health_events: Vec<Event>,
    ever_desired_bad: Vec<bool>,
    // Rollouts.
    open_rollouts: BTreeMap<RolloutId, u32>,
    rollout_of_slot: HashMap<u32, RolloutId>,
    /// Per unit.
    last_good_completed: Vec<Option<VersionHash>>,
    revert_scheduled: Vec<bool>,
    tick_at_ms: Option<u64>,
    last_tick_ms: u64,
    // Results.
    nodes_on_bad: u64,
    metrics: StrategyMetrics,
    timeline: Vec<TimelinePoint>,
    markers: Vec<Marker>,
    trace: Option<Vec<String>>,
    trace_dropped: u64,
}

fn trace_time(at_ms: u64) -> String {
    format!("t={:06}.{:03}", at_ms / 1_000, at_ms % 1_000)
}

fn engine_error(event: &str, at_ms: u64, error: &EngineError) -> SimError {
    SimError::Engine {
        event: event.to_owned(),
        at_ms,
        message: error.to_string(),
    }
}

impl<'a> Run<'a> {
    fn new(
        scenario: &'a Scenario,
        fleet: &'a Fleet,
        strategy: &'a Strategy,
        pushes: &'a [Push],
        seed: u64,
        trace: bool,
        health_filter: bool,
    ) -> Result<Self, SimError> {
        let units = scenario
            .units
            .iter()
            .map(|spec| {
                UnitName::new(spec.name.clone()).map_err(|error| SimError::Invalid {
                    file: scenario.source.clone(),
                    line: 0,
                    column: 0,
                    field: "unit".to_owned(),
                    message: error.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let default_unit =
            UnitName::new(scenario.unit.clone()).map_err(|error| SimError::Invalid {
                file: scenario.source.clone(),
                line: 0,
                column: 0,
                field: "unit".to_owned(),
                message: error.to_string(),
            })?;
        let unit_index = units
            .iter()
            .enumerate()
            .map(|(index, unit)| (unit.clone(), u32::try_from(index).unwrap_or(u32::MAX)))
            .collect();
        let plan = match strategy {
            Strategy::Instant => instant_plan(scenario.duration_ms.saturating_mul(2)),
            Strategy::Plan { plan, .. } => plan.clone(),
        };
        let interval_s = scenario.health_interval_ms as f64 / 1_000.0;
        let nodes = fleet.nodes.len();
        let pairs = nodes.saturating_mul(units.len());
        let mean_requests: Vec<f64> = fleet
            .traffic_weight
            .iter()
            .map(|weight| scenario.fleet.requests_per_s * weight * interval_s)
            .collect();
        let background_errors = mean_requests
            .iter()
            .zip(fleet.error_rate.iter())
            .map(|(mean, rate)| {
                let lambda = mean * rate;
                (lambda, (-lambda).exp())
            })
            .collect();
        let health_events = units
            .iter()
            .flat_map(|unit| {
                fleet.nodes.iter().map(|node| Event::Health {
                    node: node.id.clone(),
                    unit: unit.clone(),
                    version: VersionHash::from_bytes([0; 32]),
                    sample: HealthSample::default(),
                })
            })
            .collect();
        let node_index = fleet
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| (node.id.clone(), u32::try_from(index).unwrap_or(u32::MAX)))
            .collect();
        let none_slot = VersionSlot {
            hash: None,
            unit: 0,
            name: "(none)".to_owned(),
            effect: Effect::default(),
            bad: false,
            extra_error_q: 0.0,
            latency_add_ms: 0.0,
        };
        let latency_shape = fleet
            .latency_ms
            .iter()
            .map(|median| LatencyShape::around(*median))
            .collect();
        Ok(Self {
            scenario,
            fleet,
            strategy,
            plan,
            unit_index,
            default_unit,
            nodes,
            engine: Engine::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            now_ms: 0,
            pushes,
            slots: vec![none_slot],
            slot_of: HashMap::new(),
            node_index,
            running: vec![0; pairs],
            desired: vec![0; pairs],
            apply_token: vec![0; pairs],
            hurt_from_ms: vec![u64::MAX; pairs],
            crash_reported: vec![false; pairs],
            mean_requests,
            bad_running: vec![0; nodes],
            dead: vec![false; nodes],
            latency_median_ms: fleet.latency_ms.clone(),
            latency_shape,
            ever_ran_bad: vec![false; nodes],
            ever_failed: vec![false; nodes],
            liveness: Vec::new(),
            background_errors,
            health_relevant: vec![false; pairs],
            health_relevant_dirty: true,
            slos: crate::slo::SloBook::new(&scenario.slos),
            health_filter,
            health_events,
            ever_desired_bad: vec![false; nodes],
            open_rollouts: BTreeMap::new(),
            rollout_of_slot: HashMap::new(),
            last_good_completed: vec![None; units.len()],
            units,
            revert_scheduled: vec![false],
            tick_at_ms: None,
            last_tick_ms: 0,
            nodes_on_bad: 0,
            metrics: StrategyMetrics::default(),
            timeline: Vec::new(),
            markers: Vec::new(),
            trace: trace.then(Vec::new),
            trace_dropped: 0,
        })
    }

    fn schedule(&mut self, at_ms: u64, event: SimEvent) {
        self.seq += 1;
        self.queue.push(Timed {
            at_ms,
            seq: self.seq,
            event,
        });
    }

    fn log(&mut self, node: &str, what: impl FnOnce() -> String) {
        if let Some(lines) = self.trace.as_mut() {
            if lines.len() < TRACE_MAX_LINES {
                lines.push(format!(
                    "{} node={node} event={}",
                    trace_time(self.now_ms),
                    what()
                ));
            } else {
                self.trace_dropped += 1;
            }
        }
    }

    fn slot_for(&mut self, hash: VersionHash, unit: u32, name: &str, effect: &Effect) -> u32 {
        if let Some(slot) = self.slot_of.get(&hash) {
            return *slot;
        }
        let background = self.scenario.fleet.error_rate;
        let mut rate = background;
        if let Some(factor) = effect.error_rate_x {
            rate = (rate * factor).min(1.0);
        }
        if let Some(set) = effect.error_rate {
            rate = set;
        }
        let extra_error_q = if effect.crash {
            1.0
        } else if rate > background && background < 1.0 {
            ((rate - background) / (1.0 - background)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(VersionSlot {
            hash: Some(hash),
            unit,
            name: name.to_owned(),
            effect: effect.clone(),
            bad: !effect.is_none(),
            extra_error_q,
            latency_add_ms: effect.latency_add_ms,
        });
        self.revert_scheduled.push(false);
        self.slot_of.insert(hash, slot);
        slot
    }

    fn slot_of_hash(&self, hash: Option<VersionHash>) -> u32 {
        hash.and_then(|hash| self.slot_of.get(&hash).copied())
            .unwrap_or(0)
    }

    fn slot_is_bad(&self, slot: u32) -> bool {
        self.slots.get(slot as usize).is_some_and(|info| info.bad)
    }

    /// Sends one event to the engine and carries out its actions.
    fn step(&mut self, event: &Event, what: &str) -> Result<(), SimError> {
        let actions = self
            .engine
            .step(self.now_ms, event)
            .map_err(|error| engine_error(what, self.now_ms, &error))?;
        self.carry_out(actions);
        Ok(())
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::SetDesired {
                    unit,
                    version,
                    nodes,
                } => {
                    let Some(unit) = self.unit_index.get(&unit).copied() else {
                        continue;
                    };
                    let slot = self.slot_of_hash(version);
                    let bad = self.slot_is_bad(slot);
                    self.health_relevant_dirty = true;
                    let name = self
                        .slots
                        .get(slot as usize)
                        .map_or("?", |s| s.name.as_str())
                        .to_owned();
                    self.log("-", || {
                        format!("set_desired version={name} nodes={}", nodes.len())
                    });
                    for node in nodes {
                        let Some(index) = self.node_index.get(&node).copied() else {
                            continue;
                        };
                        let i = index as usize;
                        let pair = self.pair(unit, i);
                        if let (Some(desired), Some(token)) =
                            (self.desired.get_mut(pair), self.apply_token.get_mut(pair))
                        {
                            *desired = slot;
                            *token = token.wrapping_add(1);
                            let token = *token;
                            if bad && let Some(flag) = self.ever_desired_bad.get_mut(i) {
                                *flag = true;
                            }
                            let delay_ms = self.rng.random_range(0..=APPLY_DELAY_MAX_MS);
                            self.schedule(
                                self.now_ms + delay_ms,
                                SimEvent::Apply {
                                    node: index,
                                    unit,
                                    slot,
                                    token,
                                },
                            );
                        }
                    }
                }
                Action::Notify { rollout, message } => {
                    self.log("-", || format!("notify rollout={rollout} {message:?}"));
                }
                Action::Changelog(entry) => {
                    let slot = self.slot_of_hash(Some(entry.version));
                    let stage = entry.stage.clone().unwrap_or_default();
                    if entry.kind != ChangeKind::GateVerdict {
                        self.health_relevant_dirty = true;
                    }
                    self.log("-", || {
                        format!(
                            "changelog kind={:?} rollout={} stage={stage:?} actor={} reason={:?}",
                            entry.kind, entry.rollout, entry.actor, entry.reason
                        )
                    });
                    match entry.kind {
                        ChangeKind::RolloutQueued | ChangeKind::RolloutStarted => {
                            if self.slot_is_bad(slot)
                                && !self.open_rollouts.contains_key(&entry.rollout)
                            {
                                self.metrics.rollouts_of_bad_versions += 1;
                            }
                            self.open_rollouts.insert(entry.rollout, slot);
                            self.rollout_of_slot.insert(slot, entry.rollout);
                        }
                        ChangeKind::Quarantined => {
                            self.metrics.quarantines += 1;
                            if !self.slot_is_bad(slot) {
                                self.metrics.quarantines_of_good_versions += 1;
                            }
                        }
                        ChangeKind::Held | ChangeKind::FleetUnhealthy => {
                            self.metrics.holds += 1;
                        }
                        ChangeKind::StageStarted => self.markers.push(Marker {
                            at_ms: self.now_ms,
                            kind: MarkerKind::Stage,
                            label: stage,
                        }),
                        ChangeKind::RolledBack => {
                            self.open_rollouts.remove(&entry.rollout);
                            self.metrics.rollbacks += 1;
                            if self.slot_is_bad(slot) {
                                self.metrics.rollbacks_of_bad_versions += 1;
                            }
                            self.note_rollback_decision();
                            self.markers.push(Marker {
                                at_ms: self.now_ms,
                                kind: MarkerKind::Rollback,
                                label: entry.actor.clone(),
                            });
                        }
                        ChangeKind::Completed => {
                            self.open_rollouts.remove(&entry.rollout);
                            self.metrics.versions_completed += 1;
                            if self.slot_is_bad(slot) {
                                self.metrics.bad_versions_completed += 1;
                            }
                            if !self.slot_is_bad(slot)
                                && let Some(unit) = self.unit_index.get(&entry.unit).copied()
                                && let Some(last) = self.last_good_completed.get_mut(unit as usize)
                            {
                                *last = Some(entry.version);
                            }
                        }
                        ChangeKind::Aborted | ChangeKind::Superseded => {
                            self.open_rollouts.remove(&entry.rollout);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn note_rollback_decision(&mut self) {
        if let Some(first_ms) = self.metrics.first_bad_exposure_ms
            && self.metrics.first_rollback_after_exposure_ms.is_none()
            && self.now_ms >= first_ms
        {
            self.metrics.first_rollback_after_exposure_ms = Some(self.now_ms);
        }
    }

    /// The index of a (unit, node) pair in the per-pair vectors.
    fn pair(&self, unit: u32, node: usize) -> usize {
        (unit as usize)
            .saturating_mul(self.nodes)
            .saturating_add(node)
    }

    fn unit_name(&self, unit: u32) -> UnitName {
        self.units
            .get(unit as usize)
            .cloned()
            .unwrap_or_else(|| self.default_unit.clone())
    }

    fn set_running(&mut self, index: usize, unit: u32, slot: u32) {
        let pair = self.pair(unit, index);
        let Some(old) = self.running.get(pair).copied() else {
            return;
        };
        let was_bad = self.slot_is_bad(old);
        let is_bad = self.slot_is_bad(slot);
        if let Some(running) = self.running.get_mut(pair) {
            *running = slot;
        }
        let info = self.slots.get(slot as usize);
        let hurt_from_ms = match (info, self.fleet.nodes.get(index)) {
            (Some(info), Some(node)) if info.bad && info.effect.applies_to(&node.labels) => {
                self.now_ms.saturating_add(info.effect.onset_ms)
            }
            _ => u64::MAX,
        };
        if let Some(slot_hurt) = self.hurt_from_ms.get_mut(pair) {
            *slot_hurt = hurt_from_ms;
        }
        if let Some(reported) = self.crash_reported.get_mut(pair) {
            *reported = false;
        }
        if let (Some(Event::Health { version, .. }), Some(hash)) = (
            self.health_events.get_mut(pair),
            info.and_then(|info| info.hash),
        ) {
            *version = hash;
        }
        let Some(bad_running) = self.bad_running.get_mut(index) else {
            return;
        };
        match (was_bad, is_bad) {
            (false, true) => {
                *bad_running += 1;
                if *bad_running > 1 {
                    return;
                }
                self.nodes_on_bad += 1;
                if let Some(flag) = self.ever_ran_bad.get_mut(index) {
                    *flag = true;
                }
                if self.metrics.first_bad_exposure_ms.is_none() {
                    self.metrics.first_bad_exposure_ms = Some(self.now_ms);
                }
                let share = self.nodes_on_bad as f64 / self.fleet.nodes.len().max(1) as f64;
                if share > self.metrics.nodes_exposed_max_fraction {
                    self.metrics.nodes_exposed_max_fraction = share;
                }
            }
            (true, false) => {
                *bad_running = bad_running.saturating_sub(1);
                if *bad_running > 0 {
                    return;
                }
                self.nodes_on_bad = self.nodes_on_bad.saturating_sub(1);
                if self.nodes_on_bad == 0
                    && self.metrics.first_bad_exposure_ms.is_some()
                    && self.metrics.first_recovery_ms.is_none()
                {
                    self.metrics.first_recovery_ms = Some(self.now_ms);
                }
            }
            _ => {}
        }
    }

    fn is_dead(&self, index: usize) -> bool {
        self.dead.get(index).copied().unwrap_or(false)
    }

    fn on_apply(&mut self, node: u32, unit: u32, slot: u32, token: u32) -> Result<(), SimError> {
        let index = node as usize;
        let pair = self.pair(unit, index);
        if self.apply_token.get(pair).copied() != Some(token) || self.is_dead(index) {
            // A newer desired version superseded this apply, or the agent is dead (it fetches
            // its desired state again when it revives).
            return Ok(());
        }
        let Some(info) = self.slots.get(slot as usize) else {
            return Ok(());
        };
        let Some(hash) = info.hash else {
            self.set_running(index, unit, 0);
            return Ok(());
        };
        let Some(node_info) = self.fleet.nodes.get(index) else {
            return Ok(());
        };
        let node_id = node_info.id.clone();
        let hurts = info.bad && info.effect.applies_to(&node_info.labels);
        let nack = hurts && info.effect.nack;
        let name = info.name.clone();
        let unit_name = self.unit_name(unit);
        if nack {
            self.log(node_id.as_str(), || format!("rejected version={name}"));
            let event = Event::Rejected {
                node: node_id,
                unit: unit_name,
                version: hash,
                reason: "the agent's validator refused the version".to_owned(),
            };
            return self.step(&event, "Rejected");
        }
        // With a post-apply health check, the agent ACKs only after its window passed; a
        // consumer that goes down inside the window fails the check: the agent puts back its
        // last known good at once and NACKs.
        if self.engine.health_check(&unit_name, &hash).is_some() {
            let down_in_window =
                hurts && info.effect.crash && info.effect.onset_ms < POST_APPLY_WINDOW_MS;
            if down_in_window {
                if let Some(flag) = self.ever_failed.get_mut(index) {
                    *flag = true;
                }
                self.log(node_id.as_str(), || {
                    format!("rejected version={name} post_apply_check=failed")
                });
                let event = Event::Rejected {
                    node: node_id,
                    unit: unit_name,
                    version: hash,
                    reason: "post-apply health check failed: the consumer went down".to_owned(),
                };
                return self.step(&event, "Rejected");
            }
            self.set_running(index, unit, slot);
            self.log(node_id.as_str(), || format!("activated version={name}"));
            self.schedule(
                self.now_ms.saturating_add(POST_APPLY_WINDOW_MS),
                SimEvent::Ack {
                    node,
                    unit,
                    slot,
                    token,
                },
            );
            return Ok(());
        }
        self.set_running(index, unit, slot);
        self.ack(index, unit, slot)
    }

    /// The agent's ACK of the version it runs, once its post-apply window (if any) passed.
    fn on_ack(&mut self, node: u32, unit: u32, slot: u32, token: u32) -> Result<(), SimError> {
        let index = node as usize;
        let pair = self.pair(unit, index);
        if self.apply_token.get(pair).copied() != Some(token)
            || self.running.get(pair).copied() != Some(slot)
            || self.is_dead(index)
        {
            return Ok(()); // A newer desired version superseded this apply, or the agent died.
        }
        self.ack(index, unit, slot)
    }

    fn ack(&mut self, index: usize, unit: u32, slot: u32) -> Result<(), SimError> {
        let (Some(info), Some(node_info)) =
            (self.slots.get(slot as usize), self.fleet.nodes.get(index))
        else {
            return Ok(());
        };
        let Some(hash) = info.hash else {
            return Ok(());
        };
        let name = info.name.clone();
        let node_id = node_info.id.clone();
        self.log(node_id.as_str(), || format!("applied version={name}"));
        let applied = Event::Applied {
            node: node_id,
            unit: self.unit_name(unit),
            version: hash,
        };
        self.step(&applied, "Applied")
    }

    /// The agent found the consumer down (its metrics scrapes fail): it reports the crash for
    /// every unit whose active version is on trial (some rollout still judges it:
    /// `Engine::trial`), once per version and outage (`crates/agent/src/health.rs`). A crash of
    /// a settled version is not reported; the node only falls silent.
    fn report_crash(&mut self, index: usize, unit: u32) -> Result<(), SimError> {
        let pair = self.pair(unit, index);
        if self.crash_reported.get(pair).copied().unwrap_or(true) {
            return Ok(());
        }
        let Some(hash) = self
            .running
            .get(pair)
            .and_then(|slot| self.slots.get(*slot as usize))
            .and_then(|info| info.hash)
        else {
            return Ok(());
        };
        let Some(node_id) = self.fleet.nodes.get(index).map(|node| node.id.clone()) else {
            return Ok(());
        };
        let unit_name = self.unit_name(unit);
        if self.engine.trial(&node_id, &unit_name).is_none() {
            return Ok(());
        }
        if let Some(reported) = self.crash_reported.get_mut(pair) {
            *reported = true;
        }
        let several_units = self.units.len() > 1;
        self.log(node_id.as_str(), || {
            if several_units {
                format!("crashed unit={unit_name}")
            } else {
                "crashed".to_owned()
            }
        });
        let event = Event::Crashed {
            node: node_id,
            unit: unit_name,
            version: hash,
            reason: "the consumer panicked on the new version".to_owned(),
        };
        self.step(&event, "Crashed")
    }

    fn on_push(&mut self, push_index: usize) -> Result<(), SimError> {
        let Some(push) = self.pushes.get(push_index) else {
            return Ok(());
        };
        let Some(unit_index) = self
            .units
            .iter()
            .position(|unit| unit.as_str() == push.unit)
            .and_then(|index| u32::try_from(index).ok())
        else {
            return Ok(());
        };
        let unit = self.unit_name(unit_index);
        let slot = self.slot_for(push.hash, unit_index, &push.name, &push.effect);
        let event = Event::RolloutRequested {
            unit,
            version: push.hash,
            plan: self.plan.clone(),
            actor: "producer".to_owned(),
            reason: format!("publish {}", push.name),
            override_quarantine: false,
            override_freeze: false,
        };
        let name = push.name.clone();
        self.log("-", || {
            format!("push version={name} hash={}", push.hash.short())
        });
        match self.engine.step(self.now_ms, &event) {
            Ok(actions) => {
                self.metrics.pushes_accepted += 1;
                self.carry_out(actions);
            }
            Err(error @ (EngineError::Quarantined { .. } | EngineError::QueueFull { .. })) => {
                self.metrics.pushes_refused += 1;
                self.log("-", || {
                    format!("push_refused version={name} reason={:?}", error.to_string())
                });
            }
            Err(error) => return Err(engine_error("RolloutRequested", self.now_ms, &error)),
        }
        if matches!(self.strategy, Strategy::Instant)
            && self.slot_is_bad(slot)
            && !self
                .revert_scheduled
                .get(slot as usize)
                .copied()
                .unwrap_or(true)
        {
            if let Some(flag) = self.revert_scheduled.get_mut(slot as usize) {
                *flag = true;
            }
            // The first exposure comes within the apply delay; the person reacts after it.
            let at_ms = self
                .now_ms
                .saturating_add(self.scenario.manual_revert_after_ms);
            self.schedule(at_ms, SimEvent::ManualRevert { slot });
        }
        Ok(())
    }

    fn on_manual_revert(&mut self, slot: u32) -> Result<(), SimError> {
        if let Some(flag) = self.revert_scheduled.get_mut(slot as usize) {
            *flag = false;
        }
        if !self.desired.contains(&slot) {
            return Ok(()); // A newer version already replaced it.
        }
        let name = self
            .slots
            .get(slot as usize)
            .map_or_else(String::new, |s| s.name.clone());
        let unit_index = self.slots.get(slot as usize).map_or(0, |s| s.unit);
        self.log("-", || {
            format!("manual_revert version={name} actor=operator")
        });
        let running_rollout = self.rollout_of_slot.get(&slot).copied().filter(|id| {
            self.engine.rollout(*id).is_some_and(|view| {
                matches!(view.status, RolloutStatus::Running | RolloutStatus::Paused)
            })
        });
        if let Some(rollout) = running_rollout {
            let event = Event::Command {
                rollout,
                command: Command::Rollback,
                actor: "operator".to_owned(),
                reason: format!("manual revert of {name}"),
            };
            // The engine's changelog entry counts and marks this rollback.
            return self.step(&event, "Command::Rollback");
        }
        // The rollout is over: the person pushes the last good version again.
        self.metrics.rollbacks += 1;
        self.metrics.rollbacks_of_bad_versions += 1;
        self.note_rollback_decision();
        self.markers.push(Marker {
            at_ms: self.now_ms,
            kind: MarkerKind::Rollback,
            label: "operator".to_owned(),
        });
        let Some(previous) = self
            .last_good_completed
            .get(unit_index as usize)
            .copied()
            .flatten()
        else {
            return Ok(());
        };
        let event = Event::RolloutRequested {
            unit: self.unit_name(unit_index),
            version: previous,
            plan: self.plan.clone(),
            actor: "operator".to_owned(),
            reason: format!("manual revert of {name}"),
            override_quarantine: true,
            override_freeze: false,
        };
        self.step(&event, "RolloutRequested (manual revert)")
    }

    /// Marks the (unit, node) pairs whose health the engine uses now, as the engine tells
    /// (`Engine::wants_health`: a running rollout's canary and its baseline, which may be the
    /// rest of the fleet). The engine discards other reports, so skipping them changes nothing
    /// but the time spent; `filtered_health_changes_nothing` (tests/sim.rs) checks that.
    fn recompute_health_relevant(&mut self) {
        self.health_relevant_dirty = false;
        for (unit_index, unit) in self.units.iter().enumerate() {
            for (index, node) in self.fleet.nodes.iter().enumerate() {
                let relevant = self.engine.wants_health(&node.id, unit);
                let pair = unit_index.saturating_mul(self.nodes).saturating_add(index);
                if let Some(flag) = self.health_relevant.get_mut(pair) {
                    *flag = relevant;
                }
            }
        }
    }

    fn rollout_running(&self) -> bool {
        !self.open_rollouts.is_empty()
    }

    /// A node's agent stops: it sends nothing from now on.
    fn on_die(&mut self, node: u32) {
        let index = node as usize;
        if let Some(flag) = self.dead.get_mut(index) {
            *flag = true;
        }
        let name = self
            .fleet
            .nodes
            .get(index)
            .map_or_else(String::new, |node| node.id.to_string());
        self.log(&name, || "agent_died".to_owned());
    }

    /// A node's agent starts again: it asks for its desired state and applies what changed.
    fn on_revive(&mut self, node: u32) {
        let index = node as usize;
        if let Some(flag) = self.dead.get_mut(index) {
            *flag = false;
        }
        let name = self
            .fleet
            .nodes
            .get(index)
            .map_or_else(String::new, |node| node.id.to_string());
        self.log(&name, || "agent_revived".to_owned());
        for unit in 0..self.units.len() {
            let unit = u32::try_from(unit).unwrap_or(u32::MAX);
            let pair = self.pair(unit, index);
            let (Some(&desired), Some(&running)) = (self.desired.get(pair), self.running.get(pair))
            else {
                continue;
            };
            if desired == running {
                continue;
            }
            let Some(token) = self.apply_token.get_mut(pair) else {
                continue;
            };
            *token = token.wrapping_add(1);
            let token = *token;
            let delay_ms = self.rng.random_range(0..=APPLY_DELAY_MAX_MS);
            self.schedule(
                self.now_ms + delay_ms,
                SimEvent::Apply {
                    node,
                    unit,
                    slot: desired,
                    token,
                },
            );
        }
    }

    /// The server's liveness check tells the engine which nodes went down or came back.
    fn on_liveness(&mut self, check: u32) -> Result<(), SimError> {
        let Some((down, up)) = self.liveness.get(check as usize).cloned() else {
            return Ok(());
        };
        self.log("-", || {
            format!("liveness down={} up={}", down.len(), up.len())
        });
        self.step(&Event::Liveness { down, up }, "Liveness")
    }

    /// Chooses the dead nodes from the seed, schedules their deaths and revivals, and the
    /// server's liveness verdicts exactly as `crates/server/src/liveness.rs` reaches them: it
    /// checks every [`LIVENESS_CHECK_MS`], judges nothing in its first `node_down_after_ms`,
    /// and takes a node for down once it was last heard from more than `node_down_after_ms`
    /// ago. A live agent is heard from continuously (its watch, its reports); a dead one was
    /// last heard from when it died.
    fn schedule_dead_nodes(&mut self, seed: u64) {
        if self.scenario.dead_nodes.is_empty() {
            return;
        }
        let horizon_ms = self.scenario.duration_ms.saturating_add(1);
        let mut windows: Vec<Vec<(u64, u64)>> = vec![Vec::new(); self.nodes];
        for (group_index, group) in self.scenario.dead_nodes.iter().enumerate() {
            let mut candidates: Vec<usize> = self
                .fleet
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, node)| group.applies_to(&node.labels))
                .map(|(index, _)| index)
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ DEAD_NODES_SEED ^ group_index as u64);
            candidates.shuffle(&mut rng);
            let count = match group.count {
                DeadCount::Nodes(count) => usize::try_from(count).unwrap_or(usize::MAX),
                DeadCount::Share(share) => round_count(share * candidates.len() as f64)
                    .try_into()
                    .unwrap_or(usize::MAX),
            };
            for index in candidates.into_iter().take(count) {
                if let Some(list) = windows.get_mut(index) {
                    list.push((group.at_ms, group.until_ms.unwrap_or(horizon_ms)));
                }
            }
        }
        let down_after_ms = self.scenario.node_down_after_ms;
        let mut changes: BTreeMap<u64, (Vec<NodeId>, Vec<NodeId>)> = BTreeMap::new();
        for (index, mut list) in windows.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let Some(id) = self.fleet.nodes.get(index).map(|node| node.id.clone()) else {
                continue;
            };
            list.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for (from_ms, until_ms) in list {
                match merged.last_mut() {
                    Some(last) if from_ms <= last.1 => last.1 = last.1.max(until_ms),
                    _ => merged.push((from_ms, until_ms)),
                }
            }
            let node = u32::try_from(index).unwrap_or(u32::MAX);
            for (from_ms, until_ms) in merged {
                self.schedule(from_ms, SimEvent::Die { node });
                if until_ms < horizon_ms {
                    self.schedule(until_ms, SimEvent::Revive { node });
                }
                // The first check that finds the node silent for longer than the threshold
                // (and comes after the server's own first `down_after_ms`).
                let silent_from_ms = from_ms.saturating_add(down_after_ms);
                let down_ms = next_check_after(silent_from_ms.max(down_after_ms));
                if down_ms >= until_ms {
                    continue; // Back before the server took it for down.
                }
                changes.entry(down_ms).or_default().0.push(id.clone());
                if until_ms < horizon_ms {
                    let up_ms = next_check_at_or_after(until_ms);
                    changes.entry(up_ms).or_default().1.push(id.clone());
                }
            }
        }
        for (at_ms, (mut down, mut up)) in changes {
            down.sort();
            up.sort();
            let check = u32::try_from(self.liveness.len()).unwrap_or(u32::MAX);
            self.liveness.push((down, up));
            self.schedule(at_ms, SimEvent::Liveness { check });
        }
    }

    fn tick(&mut self) -> Result<(), SimError> {
        self.last_tick_ms = self.now_ms;
        self.step(&Event::Tick, "Tick")?;
        self.approve_waiting()?;
        Ok(())
    }

    /// Stages that wait for a person are approved by one at once (the simulator measures
    /// safety, not human latency).
    fn approve_waiting(&mut self) -> Result<(), SimError> {
        let waiting: Vec<RolloutId> = self
            .open_rollouts
            .keys()
            .copied()
            .filter(|id| {
                self.engine.rollout(*id).is_some_and(|view| {
                    view.status == RolloutStatus::Running
                        && view.phase == StagePhase::AwaitingApproval
                })
            })
            .collect();
        for rollout in waiting {
            let event = Event::Command {
                rollout,
                command: Command::Approve,
                actor: "approver".to_owned(),
                reason: "simulated approval".to_owned(),
            };
            self.step(&event, "Command::Approve")?;
        }
        Ok(())
    }

    /// Schedules an engine tick at its next deadline when that comes before the next health
    /// round.
    fn schedule_deadline(&mut self) {
        let Some(deadline_ms) = self.engine.next_deadline_ms() else {
            return;
        };
        let at_ms = deadline_ms
            .max(self.last_tick_ms.saturating_add(TICK_MIN_SPACING_MS))
            .max(self.now_ms);
        let next_round_ms = self.now_ms - self.now_ms % self.scenario.health_interval_ms.max(1)
            + self.scenario.health_interval_ms;
        if at_ms >= next_round_ms || at_ms > self.scenario.duration_ms {
            return;
        }
        if self
            .tick_at_ms
            .is_some_and(|scheduled| scheduled <= at_ms && scheduled >= self.now_ms)
        {
            return;
        }
        self.tick_at_ms = Some(at_ms);
        self.schedule(at_ms, SimEvent::EngineTick);
    }

    fn bootstrap(&mut self) -> Result<(), SimError> {
        for node in &self.fleet.nodes {
            let event = Event::NodeRegistered {
                node: node.id.clone(),
                labels: node.labels.clone(),
            };
            self.engine
                .step(0, &event)
                .map_err(|error| engine_error("NodeRegistered", 0, &error))?;
        }
        // Every node starts on a known-good initial version of each unit that has one,
        // applied at once.
        let trace = self.trace.take();
        for (unit_index, spec) in self.scenario.units.iter().enumerate() {
            if !spec.initial {
                continue;
            }
            let unit_number = u32::try_from(unit_index).unwrap_or(u32::MAX);
            let unit = self.unit_name(unit_number);
            let initial =
                VersionHash::of(format!("{}/{}/initial", self.scenario.name, spec.name).as_bytes());
            let slot = self.slot_for(initial, unit_number, "initial", &Effect::default());
            let event = Event::RolloutRequested {
                unit: unit.clone(),
                version: initial,
                plan: instant_plan(self.scenario.duration_ms.saturating_mul(2)),
                actor: "bootstrap".to_owned(),
                reason: "the fleet's initial version".to_owned(),
                override_quarantine: false,
                override_freeze: false,
            };
            self.engine
                .step(0, &event)
                .map_err(|error| engine_error("RolloutRequested", 0, &error))?;
            for index in 0..self.nodes {
                let pair = self.pair(unit_number, index);
                if let Some(desired) = self.desired.get_mut(pair) {
                    *desired = slot;
                }
                self.set_running(index, unit_number, slot);
                let node = self.fleet.nodes.get(index).map(|node| node.id.clone());
                if let Some(node) = node {
                    let applied = Event::Applied {
                        node,
                        unit: unit.clone(),
                        version: initial,
                    };
                    self.engine
                        .step(0, &applied)
                        .map_err(|error| engine_error("Applied", 0, &error))?;
                }
            }
            let actions = self
                .engine
                .step(0, &Event::Tick)
                .map_err(|error| engine_error("Tick", 0, &error))?;
            drop(actions);
            if let Some(last) = self.last_good_completed.get_mut(unit_index) {
                *last = Some(initial);
            }
        }
        self.trace = trace;
        Ok(())
    }

    fn run(mut self) -> Result<StrategyRun, SimError> {
        self.bootstrap()?;
        for index in 0..self.pushes.len() {
            if let Some(at_ms) = self.pushes.get(index).map(|push| push.at_ms) {
                self.schedule(at_ms, SimEvent::Push { push: index });
            }
        }
        self.schedule(self.scenario.health_interval_ms, SimEvent::HealthRound);
        // The server's feed sends nothing unless a running rollout's plan has a burn-rate gate.
        if self.plan.reads_burn_rates() {
            self.schedule(BURN_FEED_INTERVAL_MS, SimEvent::BurnFeed);
        }
        let mut processed = 0u64;
        while let Some(timed) = self.queue.pop() {
            if timed.at_ms > self.scenario.duration_ms {
                break;
            }
            processed += 1;
            if processed > RUN_MAX_EVENTS {
                return Err(SimError::Limit {
                    what: "events in one strategy run".to_owned(),
                    value: processed,
                    max: RUN_MAX_EVENTS,
                });
            }
            self.now_ms = timed.at_ms;
            match timed.event {
                SimEvent::Push { push } => self.on_push(push)?,
                SimEvent::Apply {
                    node,
                    unit,
                    slot,
                    token,
                } => self.on_apply(node, unit, slot, token)?,
                SimEvent::Ack {
                    node,
                    unit,
                    slot,
                    token,
                } => self.on_ack(node, unit, slot, token)?,
                SimEvent::Die { node } => self.on_die(node),
                SimEvent::Revive { node } => self.on_revive(node),
                SimEvent::Liveness { check } => self.on_liveness(check)?,
                SimEvent::HealthRound => self.on_health_round()?,
                SimEvent::EngineTick => {
                    if self.tick_at_ms == Some(timed.at_ms) {
                        self.tick_at_ms = None;
                        self.tick()?;
                    }
                }
                SimEvent::ManualRevert { slot } => self.on_manual_revert(slot)?,
                SimEvent::BurnFeed => self.on_burn_feed()?,
            }
            if !matches!(timed.event, SimEvent::HealthRound) || self.rollout_running() {
                self.schedule_deadline();
            }
        }
        let exposed_bad_nodes = self
            .ever_desired_bad
            .iter()
            .zip(self.fleet.nodes.iter())
            .filter(|(flag, _)| **flag)
            .map(|(_, node)| node.id.to_string())
            .collect();
        self.metrics.nodes_ran_bad = self.ever_ran_bad.iter().filter(|flag| **flag).count() as u64;
        self.metrics.nodes_failed = self.ever_failed.iter().filter(|flag| **flag).count() as u64;
        self.metrics.finish(self.scenario.duration_ms);
        let mut trace = self.trace.unwrap_or_default();
        if self.trace_dropped > 0 {
            trace.push(format!(
                "# {} more trace lines dropped (limit {TRACE_MAX_LINES})",
                self.trace_dropped
            ));
        }
        Ok(StrategyRun {
            strategy: self.strategy.label().to_owned(),
            metrics: self.metrics,
            timeline: self.timeline,
            markers: self.markers,
            trace,
            exposed_bad_nodes,
        })
    }
}

/// Runs one strategy of a scenario on a fleet already built.
pub(crate) fn run_strategy(
    scenario: &Scenario,
    fleet: &Fleet,
    strategy: &Strategy,
    pushes: &[Push],
    seed: u64,
    trace: bool,
    health_filter: bool,
) -> Result<StrategyRun, SimError> {
    let mut run = Run::new(
        scenario,
        fleet,
        strategy,
        pushes,
        seed,
        trace,
        health_filter,
    )?;
    run.schedule_dead_nodes(seed);
    run.run()
}

/// The first liveness check strictly after `at_ms` (checks run every [`LIVENESS_CHECK_MS`]
/// from the server's start).
fn next_check_after(at_ms: u64) -> u64 {
    (at_ms / LIVENESS_CHECK_MS)
        .saturating_add(1)
        .saturating_mul(LIVENESS_CHECK_MS)
}

/// The first liveness check at or after `at_ms`.
fn next_check_at_or_after(at_ms: u64) -> u64 {
    at_ms
        .div_ceil(LIVENESS_CHECK_MS)
        .max(1)
        .saturating_mul(LIVENESS_CHECK_MS)
}
