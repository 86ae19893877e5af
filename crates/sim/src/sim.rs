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
use failsmall_core::health::{HealthSample, LatencyHistogram};
use failsmall_core::plan::{
    Concurrency, HardSignals, OnInconclusive, Percent, Plan, Selector, Stage,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::SimError;
use crate::fleet::Fleet;
use crate::report::{Marker, MarkerKind, StrategyMetrics, StrategyRun, TimelinePoint};
use crate::scenario::{Effect, Push, Scenario};

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
        }],
        soak_ms: 0,
        on_inconclusive: OnInconclusive::Hold,
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
        slot: u32,
        token: u32,
    },
    /// The post-apply health window of an apply ended: the agent ACKs.
    Ack {
        node: u32,
        slot: u32,
        token: u32,
    },
    HealthRound,
    EngineTick,
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

/// Three latency buckets and the share of requests in the first two (the rest go to the third).
#[derive(Debug, Clone, Copy, PartialEq)]
struct LatencyShape {
    buckets: [usize; 3],
}

impl LatencyShape {
    fn around(median_ms: f64) -> Self {
        let median_ms = median_ms.max(0.1);
        Self {
            buckets: [
                LatencyHistogram::bucket_of(median_ms * 0.8),
                LatencyHistogram::bucket_of(median_ms * 1.5),
                LatencyHistogram::bucket_of(median_ms * 2.5),
            ],
        }
    }

    /// 50% / 45% / 5% of `requests` (at 0.8, 1.5 and 2.5 times the median).
    fn fill(&self, histogram: &mut LatencyHistogram, requests: u64) {
        histogram.counts = [0; failsmall_core::health::LATENCY_BUCKETS];
        let first = requests / 2;
        let second = requests * 45 / 100;
        let third = requests - first - second;
        for (bucket, count) in self.buckets.iter().zip([first, second, third]) {
            if let Some(slot) = histogram.counts.get_mut(*bucket) {
                *slot += count;
            }
        }
    }
}

/// A distinct version (by hash) the run has seen; slot 0 is "no version".
#[derive(Debug, Clone)]
struct VersionSlot {
    hash: Option<VersionHash>,
    name: String,
    effect: Effect,
    bad: bool,
    /// Probability that a request which background noise did not fail fails because of the
    /// effect.
    extra_error_q: f64,
    latency: LatencyShape,
}

/// Everything one strategy run keeps.
struct Run<'a> {
    scenario: &'a Scenario,
    fleet: &'a Fleet,
    strategy: &'a Strategy,
    plan: Plan,
    unit: UnitName,
    engine: Engine,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Timed>,
    seq: u64,
    now_ms: u64,
    pushes: &'a [Push],
    slots: Vec<VersionSlot>,
    slot_of: HashMap<VersionHash, u32>,
    node_index: HashMap<NodeId, u32>,
    // Per node, indexed by node number.
    running: Vec<u32>,
    desired: Vec<u32>,
    apply_token: Vec<u32>,
    hurt_from_ms: Vec<u64>,
    /// Per node: the agent reported its consumer's crash (it reports one per activation).
    crash_reported: Vec<bool>,
    mean_requests: Vec<f64>,
    /// Per node: mean background errors per interval and `exp(-mean)`, for Poisson draws.
    background_errors: Vec<(f64, f64)>,
    /// Per node: whether the engine needs its health now (canary or baseline of a running
    /// rollout); recomputed when rollouts or stages change.
    health_relevant: Vec<bool>,
    health_relevant_dirty: bool,
    /// When false, every node's health goes to the engine while a rollout runs.
    health_filter: bool,
    health_events: Vec<Event>,
    ever_desired_bad: Vec<bool>,
    background_latency: LatencyShape,
    background_error_rate: f64,
    // Rollouts.
    open_rollouts: BTreeMap<RolloutId, u32>,
    rollout_of_slot: HashMap<u32, RolloutId>,
    last_good_completed: Option<VersionHash>,
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

/// A Poisson draw with mean `lambda` (inversion below 30, a normal approximation above),
/// capped at `cap`.
fn poisson_capped(rng: &mut ChaCha8Rng, lambda: f64, cap: u64) -> u64 {
    if lambda <= 0.0 || cap == 0 {
        return 0;
    }
    let draw = if lambda < 30.0 {
        let u: f64 = rng.random();
        let mut k = 0u64;
        let mut p = (-lambda).exp();
        let mut cumulative = p;
        // Bounded: the tail beyond 200 draws is below 1e-60 for lambda < 30.
        while u > cumulative && k < 200 {
            k += 1;
            p *= lambda / k as f64;
            cumulative += p;
        }
        k
    } else {
        let z: f64 = rng.sample(StandardNormal);
        round_count(lambda + lambda.sqrt() * z)
    };
    draw.min(cap)
}

/// A Poisson draw with mean `lambda` whose `exp(-lambda)` is known, capped at `cap`.
fn poisson_known(rng: &mut ChaCha8Rng, lambda: f64, exp_neg_lambda: f64, cap: u64) -> u64 {
    if lambda >= 30.0 {
        return poisson_capped(rng, lambda, cap);
    }
    let u: f64 = rng.random();
    let mut k = 0u64;
    let mut p = exp_neg_lambda;
    let mut cumulative = p;
    while u > cumulative && k < 200 {
        k += 1;
        p *= lambda / k as f64;
        cumulative += p;
    }
    k.min(cap)
}

/// Rounds a non-negative float to the nearest whole number (negative gives 0).
fn round_count(value: f64) -> u64 {
    (value + 0.5).max(0.0) as u64
}

/// A binomial draw (Poisson or normal approximation), at most `trials`.
fn binomial_approx(rng: &mut ChaCha8Rng, trials: u64, probability: f64) -> u64 {
    if probability <= 0.0 || trials == 0 {
        return 0;
    }
    if probability >= 1.0 {
        return trials;
    }
    let mean = trials as f64 * probability;
    if mean < 30.0 && probability < 0.1 {
        return poisson_capped(rng, mean, trials);
    }
    let z: f64 = rng.sample(StandardNormal);
    let sd = (mean * (1.0 - probability)).sqrt();
    round_count(mean + sd * z).min(trials)
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
        let unit = UnitName::new(scenario.unit.clone()).map_err(|error| SimError::Invalid {
            file: scenario.source.clone(),
            line: 0,
            column: 0,
            field: "unit".to_owned(),
            message: error.to_string(),
        })?;
        let plan = match strategy {
            Strategy::Instant => instant_plan(scenario.duration_ms.saturating_mul(2)),
            Strategy::Plan { plan, .. } => plan.clone(),
        };
        let interval_s = scenario.health_interval_ms as f64 / 1_000.0;
        let nodes = fleet.nodes.len();
        let mean_requests: Vec<f64> = fleet
            .traffic_weight
            .iter()
            .map(|weight| scenario.fleet.requests_per_s * weight * interval_s)
            .collect();
        let background_errors = mean_requests
            .iter()
            .map(|mean| {
                let lambda = mean * scenario.fleet.error_rate;
                (lambda, (-lambda).exp())
            })
            .collect();
        let health_events = fleet
            .nodes
            .iter()
            .map(|node| Event::Health {
                node: node.id.clone(),
                unit: unit.clone(),
                version: VersionHash::from_bytes([0; 32]),
                sample: HealthSample::default(),
            })
            .collect();
        let node_index = fleet
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| (node.id.clone(), u32::try_from(index).unwrap_or(u32::MAX)))
            .collect();
        let background_latency = LatencyShape::around(scenario.fleet.latency_ms);
        let none_slot = VersionSlot {
            hash: None,
            name: "(none)".to_owned(),
            effect: Effect::default(),
            bad: false,
            extra_error_q: 0.0,
            latency: background_latency,
        };
        Ok(Self {
            scenario,
            fleet,
            strategy,
            plan,
            unit,
            engine: Engine::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            now_ms: 0,
            pushes,
            slots: vec![none_slot],
            slot_of: HashMap::new(),
            node_index,
            running: vec![0; nodes],
            desired: vec![0; nodes],
            apply_token: vec![0; nodes],
            hurt_from_ms: vec![u64::MAX; nodes],
            crash_reported: vec![false; nodes],
            mean_requests,
            background_errors,
            health_relevant: vec![false; nodes],
            health_relevant_dirty: true,
            health_filter,
            health_events,
            ever_desired_bad: vec![false; nodes],
            background_latency,
            background_error_rate: scenario.fleet.error_rate,
            open_rollouts: BTreeMap::new(),
            rollout_of_slot: HashMap::new(),
            last_good_completed: None,
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

    fn slot_for(&mut self, hash: VersionHash, name: &str, effect: &Effect) -> u32 {
        if let Some(slot) = self.slot_of.get(&hash) {
            return *slot;
        }
        let background = self.background_error_rate;
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
            name: name.to_owned(),
            effect: effect.clone(),
            bad: !effect.is_none(),
            extra_error_q,
            latency: LatencyShape::around(self.scenario.fleet.latency_ms + effect.latency_add_ms),
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
                Action::SetDesired { version, nodes, .. } => {
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
                        if let (Some(desired), Some(token)) =
                            (self.desired.get_mut(i), self.apply_token.get_mut(i))
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
                            self.open_rollouts.insert(entry.rollout, slot);
                            self.rollout_of_slot.insert(slot, entry.rollout);
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
                            if !self.slot_is_bad(slot) {
                                self.last_good_completed = Some(entry.version);
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

    fn set_running(&mut self, index: usize, slot: u32) {
        let Some(old) = self.running.get(index).copied() else {
            return;
        };
        let was_bad = self.slot_is_bad(old);
        let is_bad = self.slot_is_bad(slot);
        if let Some(running) = self.running.get_mut(index) {
            *running = slot;
        }
        let info = self.slots.get(slot as usize);
        let hurt_from_ms = match (info, self.fleet.nodes.get(index)) {
            (Some(info), Some(node)) if info.bad && info.effect.applies_to(&node.labels) => {
                self.now_ms.saturating_add(info.effect.onset_ms)
            }
            _ => u64::MAX,
        };
        if let Some(slot_hurt) = self.hurt_from_ms.get_mut(index) {
            *slot_hurt = hurt_from_ms;
        }
        if let Some(reported) = self.crash_reported.get_mut(index) {
            *reported = false;
        }
        if let (Some(Event::Health { version, .. }), Some(hash)) = (
            self.health_events.get_mut(index),
            info.and_then(|info| info.hash),
        ) {
            *version = hash;
        }
        match (was_bad, is_bad) {
            (false, true) => {
                self.nodes_on_bad += 1;
                if self.metrics.first_bad_exposure_ms.is_none() {
                    self.metrics.first_bad_exposure_ms = Some(self.now_ms);
                }
                let share = self.nodes_on_bad as f64 / self.fleet.nodes.len().max(1) as f64;
                if share > self.metrics.nodes_exposed_max_fraction {
                    self.metrics.nodes_exposed_max_fraction = share;
                }
            }
            (true, false) => {
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

    fn on_apply(&mut self, node: u32, slot: u32, token: u32) -> Result<(), SimError> {
        let index = node as usize;
        if self.apply_token.get(index).copied() != Some(token) {
            return Ok(()); // A newer desired version superseded this apply.
        }
        let Some(info) = self.slots.get(slot as usize) else {
            return Ok(());
        };
        let Some(hash) = info.hash else {
            self.set_running(index, 0);
            return Ok(());
        };
        let Some(node_info) = self.fleet.nodes.get(index) else {
            return Ok(());
        };
        let node_id = node_info.id.clone();
        let hurts = info.bad && info.effect.applies_to(&node_info.labels);
        let nack = hurts && info.effect.nack;
        let name = info.name.clone();
        if nack {
            self.log(node_id.as_str(), || format!("rejected version={name}"));
            let event = Event::Rejected {
                node: node_id,
                unit: self.unit.clone(),
                version: hash,
                reason: "the agent's validator refused the version".to_owned(),
            };
            return self.step(&event, "Rejected");
        }
        // With a post-apply health check, the agent ACKs only after its window passed; a
        // consumer that goes down inside the window fails the check: the agent puts back its
        // last known good at once and NACKs.
        if self.engine.health_check(&self.unit, &hash).is_some() {
            let down_in_window =
                hurts && info.effect.crash && info.effect.onset_ms < POST_APPLY_WINDOW_MS;
            if down_in_window {
                self.log(node_id.as_str(), || {
                    format!("rejected version={name} post_apply_check=failed")
                });
                let event = Event::Rejected {
                    node: node_id,
                    unit: self.unit.clone(),
                    version: hash,
                    reason: "post-apply health check failed: the consumer went down".to_owned(),
                };
                return self.step(&event, "Rejected");
            }
            self.set_running(index, slot);
            self.log(node_id.as_str(), || format!("activated version={name}"));
            self.schedule(
                self.now_ms.saturating_add(POST_APPLY_WINDOW_MS),
                SimEvent::Ack { node, slot, token },
            );
            return Ok(());
        }
        self.set_running(index, slot);
        self.ack(index, slot)
    }

    /// The agent's ACK of the version it runs, once its post-apply window (if any) passed.
    fn on_ack(&mut self, node: u32, slot: u32, token: u32) -> Result<(), SimError> {
        let index = node as usize;
        if self.apply_token.get(index).copied() != Some(token)
            || self.running.get(index).copied() != Some(slot)
        {
            return Ok(()); // A newer desired version superseded this apply.
        }
        self.ack(index, slot)
    }

    fn ack(&mut self, index: usize, slot: u32) -> Result<(), SimError> {
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
            unit: self.unit.clone(),
            version: hash,
        };
        self.step(&applied, "Applied")
    }

    /// The agent found the consumer down (its metrics scrapes fail): it reports the crash, once
    /// per activation, and only while the active version is on trial (some rollout still
    /// judges it: `Engine::trial`). A crash of a settled version is not reported; the node
    /// only falls silent.
    fn report_crash(&mut self, index: usize, hash: VersionHash) -> Result<(), SimError> {
        if self.crash_reported.get(index).copied().unwrap_or(true) {
            return Ok(());
        }
        let Some(node_id) = self.fleet.nodes.get(index).map(|node| node.id.clone()) else {
            return Ok(());
        };
        if self.engine.trial(&node_id, &self.unit).is_none() {
            return Ok(());
        }
        if let Some(reported) = self.crash_reported.get_mut(index) {
            *reported = true;
        }
        self.log(node_id.as_str(), || "crashed".to_owned());
        let event = Event::Crashed {
            node: node_id,
            unit: self.unit.clone(),
            version: hash,
            reason: "the consumer panicked on the new version".to_owned(),
        };
        self.step(&event, "Crashed")
    }

    fn on_push(&mut self, push_index: usize) -> Result<(), SimError> {
        let Some(push) = self.pushes.get(push_index) else {
            return Ok(());
        };
        let slot = self.slot_for(push.hash, &push.name, &push.effect);
        let event = Event::RolloutRequested {
            unit: self.unit.clone(),
            version: push.hash,
            plan: self.plan.clone(),
            actor: "producer".to_owned(),
            reason: format!("publish {}", push.name),
            override_quarantine: false,
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
        let Some(previous) = self.last_good_completed else {
            return Ok(());
        };
        let event = Event::RolloutRequested {
            unit: self.unit.clone(),
            version: previous,
            plan: self.plan.clone(),
            actor: "operator".to_owned(),
            reason: format!("manual revert of {name}"),
            override_quarantine: true,
        };
        self.step(&event, "RolloutRequested (manual revert)")
    }

    /// Marks the nodes whose health the engine uses now, as the engine tells
    /// (`Engine::wants_health`: a running rollout's canary and its baseline, which may be the
    /// rest of the fleet). The engine discards other reports, so skipping them changes nothing
    /// but the time spent; `filtered_health_changes_nothing` (tests/sim.rs) checks that.
    fn recompute_health_relevant(&mut self) {
        self.health_relevant_dirty = false;
        for (index, node) in self.fleet.nodes.iter().enumerate() {
            let relevant = self.engine.wants_health(&node.id, &self.unit);
            if let Some(flag) = self.health_relevant.get_mut(index) {
                *flag = relevant;
            }
        }
    }

    fn rollout_running(&self) -> bool {
        !self.open_rollouts.is_empty()
    }

    fn on_health_round(&mut self) -> Result<(), SimError> {
        let now_ms = self.now_ms;
        let send = matches!(self.strategy, Strategy::Plan { .. }) && self.rollout_running();
        if send && self.health_relevant_dirty {
            self.recompute_health_relevant();
        }
        let mut requests_total = 0u64;
        let mut errors_total = 0u64;
        let mut failed_total = 0u64;
        let mut crashes_due: Vec<(usize, VersionHash)> = Vec::new();
        let mut nodes_failing = 0u64;
        for index in 0..self.health_events.len() {
            let (Some(&slot), Some(&hurt_from_ms), Some(&mean), Some(&(lambda, exp_neg))) = (
                self.running.get(index),
                self.hurt_from_ms.get(index),
                self.mean_requests.get(index),
                self.background_errors.get(index),
            ) else {
                continue;
            };
            let Some(info) = self.slots.get(slot as usize) else {
                continue;
            };
            let z: f64 = self.rng.sample(StandardNormal);
            let requests = round_count(mean + mean.sqrt() * z);
            // Errors of Poisson traffic thinned by the error rate are Poisson with the thinned
            // mean, so the per-node `exp(-mean)` can be computed once.
            let background_errors = poisson_known(&mut self.rng, lambda, exp_neg, requests);
            let hurt = now_ms >= hurt_from_ms;
            nodes_failing += u64::from(hurt);
            let failed = if hurt {
                binomial_approx(
                    &mut self.rng,
                    requests - background_errors,
                    info.extra_error_q,
                )
            } else {
                0
            };
            let errors = background_errors + failed;
            requests_total += requests;
            errors_total += errors;
            failed_total += failed;
            // A crashed consumer answers no metrics scrape: the agent sends no health for the
            // node (so silence can fire) and reports the crash within this interval.
            let down = hurt && info.effect.crash;
            if down
                && !self.crash_reported.get(index).copied().unwrap_or(true)
                && let Some(hash) = info.hash
            {
                crashes_due.push((index, hash));
            }
            let shape = if hurt {
                info.latency
            } else {
                self.background_latency
            };
            let has_version = info.hash.is_some();
            if let Some(Event::Health { sample, .. }) = self.health_events.get_mut(index) {
                sample.requests = requests;
                sample.errors = errors;
                shape.fill(&mut sample.latency, requests);
            }
            let relevant =
                !self.health_filter || self.health_relevant.get(index).copied().unwrap_or(false);
            if send
                && relevant
                && has_version
                && !down
                && let Some(event) = self.health_events.get(index)
            {
                let actions = self
                    .engine
                    .step(now_ms, event)
                    .map_err(|error| engine_error("Health", now_ms, &error))?;
                if !actions.is_empty() {
                    self.carry_out(actions);
                }
            }
        }
        for (index, hash) in crashes_due {
            self.report_crash(index, hash)?;
        }
        let failing_share = nodes_failing as f64 / self.fleet.nodes.len().max(1) as f64;
        if failing_share > self.metrics.nodes_failing_max_fraction {
            self.metrics.nodes_failing_max_fraction = failing_share;
        }
        self.metrics.requests_total += requests_total;
        self.metrics.requests_errors += errors_total;
        self.metrics.requests_failed += failed_total;
        if self.timeline.len() < TIMELINE_MAX_POINTS {
            self.timeline.push(TimelinePoint {
                at_ms: now_ms,
                error_rate: if requests_total > 0 {
                    errors_total as f64 / requests_total as f64
                } else {
                    0.0
                },
                nodes_bad_fraction: self.nodes_on_bad as f64 / self.fleet.nodes.len().max(1) as f64,
            });
        }
        let nodes_on_bad = self.nodes_on_bad;
        self.log("-", || {
            format!(
                "health requests={requests_total} errors={errors_total} nodes_on_bad={nodes_on_bad}"
            )
        });
        self.tick()?;
        let next_ms = now_ms.saturating_add(self.scenario.health_interval_ms);
        if next_ms <= self.scenario.duration_ms {
            self.schedule(next_ms, SimEvent::HealthRound);
        }
        Ok(())
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
        // Every node starts on a known-good initial version, applied at once.
        let initial = VersionHash::of(
            format!("{}/{}/initial", self.scenario.name, self.scenario.unit).as_bytes(),
        );
        let slot = self.slot_for(initial, "initial", &Effect::default());
        let event = Event::RolloutRequested {
            unit: self.unit.clone(),
            version: initial,
            plan: instant_plan(self.scenario.duration_ms.saturating_mul(2)),
            actor: "bootstrap".to_owned(),
            reason: "the fleet's initial version".to_owned(),
            override_quarantine: false,
        };
        let trace = self.trace.take();
        self.engine
            .step(0, &event)
            .map_err(|error| engine_error("RolloutRequested", 0, &error))?;
        for index in 0..self.fleet.nodes.len() {
            if let Some(desired) = self.desired.get_mut(index) {
                *desired = slot;
            }
            self.set_running(index, slot);
            let node = self.fleet.nodes.get(index).map(|node| node.id.clone());
            if let Some(node) = node {
                let applied = Event::Applied {
                    node,
                    unit: self.unit.clone(),
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
        self.last_good_completed = Some(initial);
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
                SimEvent::Apply { node, slot, token } => self.on_apply(node, slot, token)?,
                SimEvent::Ack { node, slot, token } => self.on_ack(node, slot, token)?,
                SimEvent::HealthRound => self.on_health_round()?,
                SimEvent::EngineTick => {
                    if self.tick_at_ms == Some(timed.at_ms) {
                        self.tick_at_ms = None;
                        self.tick()?;
                    }
                }
                SimEvent::ManualRevert { slot } => self.on_manual_revert(slot)?,
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
    Run::new(
        scenario,
        fleet,
        strategy,
        pushes,
        seed,
        trace,
        health_filter,
    )?
    .run()
}
