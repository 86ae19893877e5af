//! Event handlers: what each [`Event`] and operator [`Command`] does to the state.

use super::*;

// ----- event handlers ---------------------------------------------------------------------
impl Engine {
    pub(super) fn on_node_registered(
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
        let in_maintenance = self.in_maintenance(labels, now);
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
                        maintenance: in_maintenance,
                    },
                );
                BTreeMap::new()
            }
        };
        self.index.0.insert(node);
        // New labels may move a known node into or out of a maintenance window.
        if self.windows.maintenance_active {
            self.sync_windows(now, out);
        }
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
    pub(super) fn tell_changes(
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
    pub(super) fn expose_and_tell(
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
    pub(super) fn expose_where_selected(&mut self, node: &NodeId, labels: &Labels, now: TimeMs) {
        // A node in maintenance joins no rollout until its window ends.
        if self.nodes.get(node).is_some_and(|state| state.maintenance) {
            for id in self.active_rollouts() {
                self.refresh_role(id, node);
            }
            return;
        }
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
    pub(super) fn resume_waiting(&mut self, id: RolloutId, now: TimeMs) {
        if let Some(rollout) = self.rollouts.get_mut(&id)
            && rollout.waiting_for_nodes
        {
            rollout.waiting_for_nodes = false;
            let timeout_ms = rollout.current_stage().map_or(0, |stage| stage.timeout_ms);
            rollout.timeout_at_ms = (timeout_ms > 0).then(|| now.saturating_add(timeout_ms));
        }
    }

    /// Whether `node` is in a running (or paused) rollout of a unit other than `unit`.
    pub(super) fn busy_elsewhere(&self, node: &NodeId, unit: &UnitName) -> bool {
        self.units
            .iter()
            .filter(|(other, _)| *other != unit)
            .flat_map(|(_, state)| state.active.iter())
            .filter_map(|id| self.rollouts.get(id))
            .any(|rollout| !rollout.status.is_terminal() && rollout.exposed.contains_key(node))
    }

    /// Nodes a rollout held have left it: those that `exclusive_nodes` rollouts of other units
    /// left out join them now (level-triggered), in node order.
    pub(super) fn release(&mut self, nodes: &[NodeId], now: TimeMs, out: &mut Vec<Action>) {
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
            if state.out_of_service() {
                continue;
            }
            let labels = state.labels.clone();
            self.expose_and_tell(node, &labels, now, out);
        }
    }

    /// Marks nodes down or up (see [`Event::Liveness`]). Unknown nodes are skipped: one may
    /// have been removed since the control plane looked.
    pub(super) fn on_liveness(
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

    pub(super) fn on_node_removed(
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
    pub(super) fn on_rollout_requested(
        &mut self,
        now: TimeMs,
        unit: &UnitName,
        version: VersionHash,
        plan: &Plan,
        actor: &str,
        reason: &str,
        override_quarantine: bool,
        override_freeze: bool,
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
        // A freeze refuses the push up front (its reason is the answer), unless an admin
        // overrides it.
        if !override_freeze
            && let Some(freeze) = self.freeze_blocking(unit, &plan.stages, 0, None, now)
        {
            return Err(EngineError::Frozen {
                id: freeze.id,
                scope: freeze.scope.describe(),
                window: freeze.window.describe(),
                reason: freeze.reason.clone(),
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
        let frozen = self
            .freeze_blocking(unit, &plan.stages, 0, None, now)
            .map(|freeze| freeze.id);
        if let Some(freeze) = frozen.filter(|_| override_freeze) {
            reason_text = cut(&format!(
                "{reason_text} (admin override of freeze {freeze})"
            ));
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
                canary_from_stage: 0,
                stage_canary: GroupMetrics::default(),
                earlier: GroupMetrics::default(),
                earlier_pre: None,
                window_from_ms: 0,
                upcoming: GroupMetrics::default(),
                upcoming_control: GroupMetrics::default(),
                pre_period: None,
                control_pre: None,
                control: GroupMetrics::default(),
                custom: CustomWindows::default(),
                gate_reports: Vec::new(),
                last_gate_eval_ms: None,
                heard_ms: now,
                hearing_from_ms: now,
                held_for_data: false,
                fleet_unhealthy: false,
                waiting_for_nodes: false,
                breach_since_ms: None,
                gated_evidence: false,
                awaiting_entry: false,
                approved_by: Vec::new(),
                freeze_override: override_freeze,
                held_by_freeze: None,
                burn_rates: crate::slo::BurnRates::new(),
                baseline_hearing: BaselineHearing::default(),
                silence: SilenceJudgement::default(),
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

    pub(super) fn on_applied(
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
            let Some(rollout) = rollouts.get_mut(id) else {
                continue;
            };
            rollout.heard(now, out);
            if let Some(exposure) = rollout.exposed.get_mut(node) {
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
    pub(super) fn on_signal(
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
            rollout.heard(now, out);
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
    pub(super) fn on_health(
        &mut self,
        now: TimeMs,
        report: HealthReport<'_>,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        let HealthReport {
            node,
            unit,
            version,
            sample,
            custom,
            monitored,
        } = report;
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
            rollout.heard(now, out);
            let held = rollout.held_for_data && rollout.phase == StagePhase::Holding;
            let (min_requests, silence_ms) =
                rollout.current_stage().map_or((u64::MAX, 0), |stage| {
                    (stage.min_requests, stage.silence_ms)
                });
            let reaches = |before: u64, after: u64| before < min_requests && after >= min_requests;
            // A sample counts where the plan takes health from its origin: the agents, or
            // the monitoring system of its `health_source`. Either says the node is heard.
            let counts = rollout.plan.health_source.is_some() == monitored;
            let role = rollout.roles.0.role(slot);
            if matches!(
                role,
                Role::StageBaseline { .. } | Role::FleetBaseline { .. }
            ) {
                rollout.baseline_hearing.heard(node, now);
            }
            match role {
                Role::Exposed { position } => {
                    let Some(spoke_ms) = rollout
                        .exposed
                        .get_at_mut(position)
                        .map(|exposure| exposure.last_report_ms)
                    else {
                        continue;
                    };
                    let silent_until_now = rollout.silent_since(spoke_ms, silence_ms);
                    let Some(exposure) = rollout.exposed.get_at_mut(position) else {
                        continue;
                    };
                    if exposure.maintenance {
                        // In maintenance: heard from, but its health counts for nothing.
                        exposure.last_report_ms = now;
                        continue;
                    }
                    let was_silent = exposure.acked && silent_until_now;
                    exposure.last_report_ms = now;
                    let mut reached = false;
                    if counts
                        && exposure.acked
                        && version == rollout.version
                        && now > rollout.window_from_ms
                    {
                        let stage_node = exposure.stage >= rollout.canary_from_stage;
                        if stage_node {
                            let before = rollout.stage_canary.sample.requests;
                            rollout.stage_canary.sample.merge(sample);
                            reached = reaches(before, rollout.stage_canary.sample.requests);
                        } else {
                            rollout.earlier.sample.merge(sample);
                        }
                        rollout.canary.sample.merge(sample);
                        if let Some(values) = custom {
                            let windows = &mut rollout.custom;
                            if stage_node {
                                windows.stage_canary.merge(values);
                            } else {
                                windows.earlier.merge(values);
                            }
                            windows.canary.merge(values);
                        }
                    }
                    recheck |= held && (was_silent || reached);
                }
                Role::StageBaseline { upcoming } | Role::FleetBaseline { upcoming }
                    if counts && version != rollout.version =>
                {
                    let in_baseline = rollout.roles.0.in_baseline(role);
                    if let Some(values) = custom {
                        let windows = &mut rollout.custom;
                        if upcoming {
                            windows.upcoming.merge(values);
                        } else {
                            windows.upcoming_control.merge(values);
                        }
                        if now > rollout.window_from_ms {
                            windows.control.merge(values);
                            if in_baseline {
                                windows.baseline.merge(values);
                            }
                        }
                    }
                    if upcoming {
                        rollout.upcoming.sample.merge(sample);
                    } else {
                        rollout.upcoming_control.sample.merge(sample);
                    }
                    if now <= rollout.window_from_ms {
                        continue;
                    }
                    rollout.control.sample.merge(sample);
                    if in_baseline {
                        let before = rollout.baseline.sample.requests;
                        rollout.baseline.sample.merge(sample);
                        recheck |= held && reaches(before, rollout.baseline.sample.requests);
                    }
                }
                Role::StageBaseline { .. } | Role::FleetBaseline { .. } | Role::Vacant => {}
            }
        }
        if recheck {
            self.settle(unit, now, out);
        }
        Ok(())
    }

    pub(super) fn on_tick(&mut self, now: TimeMs, out: &mut Vec<Action>) {
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
                        && !matches!(rollout.phase, StagePhase::Observing { .. })
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
    pub(super) fn on_command(
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
                        StagePhase::Observing { observe_ends_ms } => {
                            rollout.phase = StagePhase::Observing {
                                observe_ends_ms: observe_ends_ms.saturating_add(paused_ms),
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
                if rollout.approved_by.contains(&actor) {
                    return Err(EngineError::AlreadyApproved { actor });
                }
                // The stage that waits: the first, not entered yet, or the next one.
                let waiting = if rollout.awaiting_entry {
                    rollout.plan.stages.first()
                } else {
                    rollout.plan.stages.get(rollout.stage.saturating_add(1))
                };
                let required = waiting.map_or(1, |stage| stage.approvers.max(1));
                let given = rollout.approved_by.len().saturating_add(1);
                let enter_first = rollout.awaiting_entry;
                let complete = given >= usize::try_from(required).unwrap_or(usize::MAX);
                let reason = if required > 1 {
                    format!("approval {given} of {required}: {reason}")
                } else {
                    reason
                };
                if let Some(rollout) = self.rollouts.get_mut(&id) {
                    if complete {
                        rollout.phase = StagePhase::Passed;
                        rollout.awaiting_entry = false;
                        rollout.approved_by.clear();
                    } else {
                        rollout.approved_by.push(actor.clone());
                    }
                }
                self.log_as(id, ChangeKind::Approved, &actor, stage, reason, now, out);
                if complete && enter_first {
                    // The first stage was approved before it exposed anything: enter it now.
                    self.enter_stage(id, 0, now, out);
                }
            }
        }
        self.settle(&unit, now, out);
        Ok(())
    }
}

/// One node's health over an interval ([`Event::Health`] or [`Event::MonitoredHealth`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct HealthReport<'a> {
    pub node: &'a NodeId,
    pub unit: &'a UnitName,
    pub version: VersionHash,
    pub sample: &'a HealthSample,
    /// The node's readings of the plan's custom metrics (monitored health only).
    pub custom: Option<&'a CustomValues>,
    /// Read from the plan's monitoring system (`health_source`), not reported by the agent.
    pub monitored: bool,
}
