//! The state machine of a rollout: start, expose, judge a stage, pass, soak, complete,
//! abort, roll back, quarantine, retire.

use super::*;

// ----- the state machine ----------------------------------------------------------------------
impl Engine {
    /// Whether a rollout with `plan` may start now beside the unit's active rollouts.
    pub(super) fn can_start(&self, unit: &UnitState, plan: &Plan) -> bool {
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

    pub(super) fn start(&mut self, id: RolloutId, now: TimeMs, out: &mut Vec<Action>) {
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
        // An approval comes before a stage exposes its nodes: a first stage that asks for one
        // waits for it before it is entered.
        let first_approval = rollout_first_stage_approval(self.rollouts.get(&id));
        if let Some(stage) = first_approval {
            if let Some(rollout) = self.rollouts.get_mut(&id) {
                rollout.phase = StagePhase::AwaitingApproval;
                rollout.awaiting_entry = true;
            }
            // The nodes' roles as any active rollout has them (rebuilt again on entry).
            self.rebuild_roles(id);
            let message = format!(
                "stage {stage:?} waits for approval by someone other than the pusher before it exposes any node"
            );
            self.log(
                id,
                ChangeKind::ApprovalNeeded,
                None,
                Some(stage),
                message,
                now,
                out,
            );
            return;
        }
        self.enter_stage(id, 0, now, out);
    }

    /// Starts queued rollouts of the unit that may start now, in order.
    pub(super) fn start_ready(
        &mut self,
        unit: &UnitName,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) -> bool {
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
            if !ready || self.held_by_freeze(front, 0, now, out) {
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
    pub(super) fn expose(&mut self, id: RolloutId, node: &NodeId, now: TimeMs) -> bool {
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
                        maintenance: false,
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

    pub(super) fn enter_stage(
        &mut self,
        id: RolloutId,
        index: usize,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        self.enter_stage_observing(id, index, true, now, out);
    }

    /// Enters stage `index`. With `may_observe`, a stage with a gate that reads the baseline,
    /// that would leave no node of its selector unexposed, whose nodes run a version of the
    /// unit, and whose pre-period so far lacks `min_requests` (a first stage, or one after a
    /// stage that passed at once), observes them first (see
    /// [`StagePhase::Observing`]) and exposes them when that ends.
    pub(super) fn enter_stage_observing(
        &mut self,
        id: RolloutId,
        index: usize,
        may_observe: bool,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
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
        // Selected but in a maintenance window: it joins when the window ends.
        let mut maintained: Vec<NodeId> = Vec::new();
        // Selected but in another unit's running rollout (`exclusive_nodes`): it joins when
        // that one ends.
        let mut deferred: Vec<NodeId> = Vec::new();
        // Live nodes of the stage's selector it leaves unexposed (its concurrent baseline),
        // and selected nodes that run a version of the unit (with a pre-period to observe).
        let mut selector_left = 0u64;
        let mut selected_with_version = 0u64;
        for (node, state) in &self.nodes {
            let node_bucket = select::bucket(&rollout.unit, node);
            let matches = stage.selector.matches(&state.labels);
            if matches && select::bucket_within(node_bucket, stage.percent) {
                targeted = targeted.saturating_add(1);
            }
            if rollout.exposed.contains_key(node) {
                continue;
            }
            let selected = rollout.selects_through(index, node, &state.labels);
            if matches && !selected && !state.out_of_service() {
                selector_left = selector_left.saturating_add(1);
            }
            if selected && state.desired.contains_key(&rollout.unit) {
                selected_with_version = selected_with_version.saturating_add(1);
            }
            if selected {
                if state.maintenance {
                    maintained.push(node.clone());
                } else if state.out_of_service() {
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
        maintained.sort();
        deferred.sort();
        let (unit, version, timeout_ms, name) = (
            rollout.unit.clone(),
            rollout.version,
            stage.timeout_ms,
            stage.name.clone(),
        );
        let observe_ms = stage.bake_ms;
        // The health of its nodes while the stage before ran: too little (a first stage, or
        // one after a stage that passed at once) and the stage observes them first.
        let pre_short = rollout.upcoming.sample.requests < stage.min_requests.max(1);
        if may_observe
            && pre_short
            && observe_ms > 0
            && stage.gates.iter().any(Gate::reads_baseline)
            && selector_left == 0
            && selected_with_version > 0
        {
            self.observe(id, index, targeted, observe_ms, now, out);
            return;
        }
        if let Some(rollout) = self.rollouts.get_mut(&id) {
            // The health collected while the previous stage ran (or while this one observed)
            // becomes this stage's pre-period and time control.
            let pre = std::mem::take(&mut rollout.upcoming);
            let control_pre = std::mem::take(&mut rollout.upcoming_control);
            rollout.pre_period = with_data(pre);
            rollout.control_pre = with_data(control_pre);
            rollout.canary_from_stage = if newly.is_empty() { 0 } else { index };
            // The canary so far is exactly the earlier stages' nodes now.
            rollout.earlier_pre =
                with_data(rollout.canary).filter(|_| rollout.canary_from_stage > 0);
            let custom = &mut rollout.custom;
            custom.pre_period = std::mem::take(&mut custom.upcoming);
            custom.control_pre = std::mem::take(&mut custom.upcoming_control);
            custom.earlier_pre = if rollout.canary_from_stage > 0 {
                custom.canary.clone()
            } else {
                CustomValues::default()
            };
            rollout.restart_windows();
            rollout.stage = index;
            rollout.phase = StagePhase::Applying;
            rollout.stage_entered_ms = now;
            // A stage whose every node is busy elsewhere waits for one, its timeout not running.
            rollout.waiting_for_nodes = newly.is_empty() && !deferred.is_empty();
            rollout.timeout_at_ms = (timeout_ms > 0 && !rollout.waiting_for_nodes)
                .then(|| now.saturating_add(timeout_ms));
            rollout.nodes_targeted = targeted;
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
        if !maintained.is_empty() {
            reason.push_str(&format!(
                "; {} left out, in a maintenance window: {}",
                maintained.len(),
                name_nodes(&maintained)
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

    /// Starts stage `index` by observing the nodes it selects, unexposed, for `observe_ms`:
    /// their health on their current version becomes the stage's pre-period.
    fn observe(
        &mut self,
        id: RolloutId,
        index: usize,
        targeted: u64,
        observe_ms: u64,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        let timeout_ms = rollout
            .plan
            .stages
            .get(index)
            .map_or(0, |stage| stage.timeout_ms);
        rollout.stage = index;
        rollout.phase = StagePhase::Observing {
            observe_ends_ms: now.saturating_add(observe_ms),
        };
        rollout.stage_entered_ms = now;
        rollout.timeout_at_ms = (timeout_ms > 0).then(|| now.saturating_add(timeout_ms));
        rollout.nodes_targeted = targeted;
        rollout.restart_windows();
        rollout.upcoming = GroupMetrics::default();
        rollout.upcoming_control = GroupMetrics::default();
        rollout.custom.upcoming = CustomValues::default();
        rollout.custom.upcoming_control = CustomValues::default();
        let name = rollout.stage_name();
        self.rebuild_roles(id);
        let why = format!(
            "{targeted} nodes selected, none of the stage's selector left out to compare with: \
             observing them on their current version for {} before exposing them; their health \
             now is the baseline their canary is judged against",
            crate::duration::format_ms(observe_ms)
        );
        self.log(id, ChangeKind::StageStarted, None, name, why, now, out);
    }

    /// Lets the unit's rollouts move (bakes, holds, stages, train order, queue) until nothing
    /// changes.
    pub(super) fn settle(&mut self, unit: &UnitName, now: TimeMs, out: &mut Vec<Action>) {
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
    pub(super) fn progress(&mut self, id: RolloutId, now: TimeMs, out: &mut Vec<Action>) -> bool {
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
                StagePhase::Observing { observe_ends_ms } => {
                    let enough = rollout.upcoming.sample.requests >= stage.min_requests;
                    if !(now >= observe_ends_ms && enough || timed_out) {
                        return changed;
                    }
                    // Short of requests by the stage's timeout: exposed anyway, the stage
                    // holds until its comparison has the data (never guilty for lack of it).
                    let index = rollout.stage;
                    self.enter_stage_observing(id, index, false, now, out);
                }
                StagePhase::Applying if rollout.nodes_targeted == 0 => {
                    self.pass_stage(id, "no nodes selected by this stage", now, out);
                }
                StagePhase::Applying if rollout.waiting_for_nodes => return changed,
                // Every node it selects was exposed by an earlier stage: nothing new to judge
                // (those nodes are still watched, by later stages and the soak).
                StagePhase::Applying
                    if rollout.stage > 0 && rollout.canary_from_stage != rollout.stage =>
                {
                    self.pass_stage(
                        id,
                        "every node this stage selects was exposed by an earlier stage",
                        now,
                        out,
                    );
                }
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
                        && rollout.has_data() =>
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
                    // An unhealthy fleet proves nothing for the version: the soak goes on until
                    // it recovers (or an operator decides), it never completes into it.
                    if self
                        .rollouts
                        .get(&id)
                        .is_some_and(|rollout| rollout.fleet_unhealthy)
                    {
                        return changed;
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
                    if self.held_by_freeze(id, next, now, out) {
                        return changed;
                    }
                    if let Some(rollout) = self.rollouts.get_mut(&id) {
                        rollout.held_by_freeze = None;
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
    pub(super) fn hold(&mut self, id: RolloutId, why: &str, now: TimeMs, out: &mut Vec<Action>) {
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

    pub(super) fn stage_ready(&self, rollout: &Rollout) -> bool {
        let Some(stage) = rollout.current_stage() else {
            return false;
        };
        rollout.nodes_applied >= rollout.nodes_exposed
            && rollout.canary.sample.requests >= stage.min_requests
            && !rollout.silence.holds(rollout.canary.silent_nodes)
            && rollout.gate_reports.len() == stage.gates.len()
            && rollout
                .gate_reports
                .iter()
                .all(|report| matches!(report.verdict, Verdict::Pass { .. }))
    }

    /// In a release train, whether the earlier rollout of the unit has not yet left stage
    /// `next` (or, when `next` is past the last stage, has not completed).
    pub(super) fn blocked_by_predecessor(&self, id: RolloutId, next: usize) -> bool {
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

    pub(super) fn pass_stage(
        &mut self,
        id: RolloutId,
        why: &str,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        // The next stage's approval comes before it exposes its nodes: this one waits for it.
        let next_stage = rollout
            .plan
            .stages
            .get(rollout.stage.saturating_add(1))
            .filter(|stage| stage.approval)
            .map(|stage| stage.name.clone());
        let approval = next_stage.is_some();
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
        if let Some(next_stage) = next_stage {
            let message = format!(
                "stage {:?} passed; stage {next_stage:?} waits for approval by someone other than the pusher before it exposes its nodes",
                stage.unwrap_or_default()
            );
            self.log(
                id,
                ChangeKind::ApprovalNeeded,
                None,
                Some(next_stage),
                message,
                now,
                out,
            );
        }
    }

    /// Starts the soak after the last stage passed: a fresh window of canary and baseline
    /// health, judged by the last stage's gates and hard signals like a stage, with no timeout.
    pub(super) fn start_soak(&mut self, id: RolloutId, now: TimeMs, out: &mut Vec<Action>) {
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        let soak_ms = rollout.plan.soak_ms;
        let soak_ends_ms = now.saturating_add(soak_ms);
        rollout.phase = StagePhase::Soaking { soak_ends_ms };
        rollout.timeout_at_ms = None;
        // The soak watches every exposed node, each group compared with itself during the
        // last stage (a late failure is a change over time on the same nodes): the last
        // stage's nodes and the earlier ones, each the other's time control when no node is
        // left unexposed.
        rollout.pre_period = with_data(rollout.stage_canary);
        rollout.earlier_pre = with_data(rollout.earlier).filter(|_| rollout.canary_from_stage > 0);
        rollout.control_pre = with_data(rollout.control);
        let custom = &mut rollout.custom;
        custom.pre_period = custom.stage_canary.clone();
        custom.earlier_pre = if rollout.canary_from_stage > 0 {
            custom.earlier.clone()
        } else {
            CustomValues::default()
        };
        custom.control_pre = custom.control.clone();
        rollout.restart_windows();
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
    pub(super) fn complete(
        &mut self,
        id: RolloutId,
        why: &str,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
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
    pub(super) fn abort(
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

    pub(super) fn end_superseded(
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
    pub(super) fn roll_back(
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
                self.quarantine_logged(&unit, version, *rollout_id, actor, stage, now, out);
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
    pub(super) fn end_queued_of_quarantined(
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

    /// Quarantines `version` for `unit` (see [`Engine::quarantine`]) and says so in the
    /// changelog, as `actor`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn quarantine_logged(
        &mut self,
        unit: &UnitName,
        version: VersionHash,
        by: RolloutId,
        actor: &str,
        stage: Option<String>,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) {
        self.quarantine(unit, version, by);
        self.log_as(
            by,
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

    pub(super) fn quarantine(&mut self, unit: &UnitName, version: VersionHash, by: RolloutId) {
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

    /// Records a terminal rollout and prunes old ones. A finished rollout keeps its summary
    /// (counts, health, gates, outcome); only an aborted or rolled-back one keeps the nodes it
    /// reached with the version each had before (a revert puts an aborted one's back; a
    /// rollback's tell where a bad version went), and only while among the latest
    /// [`MAX_TERMINAL_ROLLOUTS_WITH_NODES`] terminal ones. Completed rollouts, the bulk of the
    /// history, cost per rollout, not per node.
    pub(super) fn retire(&mut self, id: RolloutId, now: TimeMs, out: &mut Vec<Action>) {
        let released: Vec<NodeId> = match self.rollouts.get_mut(&id) {
            Some(rollout) => {
                rollout.roles = Derived::default();
                rollout.baseline_hearing.clear();
                let mut nodes: Vec<NodeId> = rollout.exposed.keys().cloned().collect();
                nodes.sort();
                if !matches!(
                    rollout.status,
                    RolloutStatus::Aborted | RolloutStatus::RolledBack
                ) {
                    rollout.exposed = Exposures::default();
                }
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
    pub(super) fn log(
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
    pub(super) fn log_as(
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

/// The first stage's name when it asks for an approval (which comes before it is entered).
fn rollout_first_stage_approval(rollout: Option<&Rollout>) -> Option<String> {
    rollout
        .and_then(|rollout| rollout.plan.stages.first())
        .filter(|stage| stage.approval)
        .map(|stage| stage.name.clone())
}
