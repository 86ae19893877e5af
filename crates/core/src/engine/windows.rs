//! Freeze and maintenance windows inside the engine. They are data in its state, judged at the
//! `now` of each step (the engine still reads no clock; whether a freeze holds is read at that
//! `now`): after a step, the windows are looked at again when
//! one starts or ends (`Windows::next_check_ms`, part of [`Engine::next_deadline_ms`]) and when
//! one is created, lifted or ended.
//!
//! - A freeze that holds keeps the rollouts it covers from starting (a push is refused with
//!   its reason, [`EngineError::Frozen`]; a queued rollout stays queued) and from entering
//!   their next stage (they wait in `Passed`, shown in [`RolloutView::held_by_freeze`], logged
//!   once per freeze as `held`). Bakes, gates, soaks, completions and rollbacks go on: a
//!   freeze never blocks getting back to safety. A rollout an admin started with
//!   `override_freeze` is never held.
//! - A maintenance window takes its nodes out of service for its duration, like a down node:
//!   no stage that starts exposes them, they are in no baseline, and an exposed one's health
//!   counts for nothing (nor is it silent). When the window ends, each node joins the stages
//!   that select it, as a node coming back up does.

use super::*;
use crate::freeze::{EndedWindow, FreezeScope, MAX_FREEZES, MAX_MAINTENANCE, Window, WindowKind};

impl Engine {
    /// Freezes and maintenance windows kept (lifted and ended ones are forgotten).
    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// The id the next freeze or maintenance window gets.
    pub fn next_window_id(&self) -> u64 {
        self.windows.next_id()
    }

    /// The freezes holding at `now_ms`, by id.
    pub fn active_freezes(&self, now_ms: TimeMs) -> impl Iterator<Item = &Freeze> + '_ {
        self.windows
            .freezes
            .values()
            .filter(move |freeze| freeze.window.contains(now_ms))
    }

    /// Whether the maintenance window holds `node` out of service now.
    pub fn in_maintenance_now(&self, node: &NodeId) -> bool {
        self.nodes.get(node).is_some_and(|state| state.maintenance)
    }

    pub(super) fn next_window_check_ms(&self) -> Option<TimeMs> {
        let any = !self.windows.freezes.is_empty() || !self.windows.maintenance.is_empty();
        (any && self.windows.next_check_ms < TimeMs::MAX).then_some(self.windows.next_check_ms)
    }

    fn take_id(&mut self, id: u64) -> Result<(), EngineError> {
        if id == 0
            || self.windows.freezes.contains_key(&id)
            || self.windows.maintenance.contains_key(&id)
        {
            return Err(EngineError::WindowIdTaken { id });
        }
        self.windows.next_id = self.windows.next_id().max(id.saturating_add(1));
        Ok(())
    }

    pub(super) fn on_freeze_created(
        &mut self,
        now: TimeMs,
        freeze: &Freeze,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        freeze.validate()?;
        if self.windows.freezes.len() >= MAX_FREEZES {
            return Err(EngineError::LimitReached {
                what: "freezes",
                given: self.windows.freezes.len().saturating_add(1),
                limit: MAX_FREEZES,
            });
        }
        self.take_id(freeze.id)?;
        let mut freeze = freeze.clone();
        freeze.reason = cut(&freeze.reason);
        freeze.actor = cut(&freeze.actor);
        self.windows.freezes.insert(freeze.id, freeze);
        self.sync_windows(now, out);
        Ok(())
    }

    pub(super) fn on_freeze_lifted(
        &mut self,
        now: TimeMs,
        id: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        if self.windows.freezes.remove(&id).is_none() {
            return Err(EngineError::UnknownWindow { what: "freeze", id });
        }
        self.windows.remember_ended(
            id,
            EndedWindow {
                kind: WindowKind::Freeze,
                ended_ms: now,
                early: true,
            },
        );
        self.sync_windows(now, out);
        Ok(())
    }

    pub(super) fn on_maintenance_created(
        &mut self,
        now: TimeMs,
        maintenance: &Maintenance,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        maintenance.validate()?;
        if self.windows.maintenance.len() >= MAX_MAINTENANCE {
            return Err(EngineError::LimitReached {
                what: "maintenance windows",
                given: self.windows.maintenance.len().saturating_add(1),
                limit: MAX_MAINTENANCE,
            });
        }
        self.take_id(maintenance.id)?;
        let mut maintenance = maintenance.clone();
        maintenance.reason = cut(&maintenance.reason);
        maintenance.actor = cut(&maintenance.actor);
        self.windows.maintenance.insert(maintenance.id, maintenance);
        self.sync_windows(now, out);
        Ok(())
    }

    /// Keeps the service's burn rates on `unit`'s running rollouts, for their burn-rate gates
    /// (judged at the next evaluation). Refused whole if a rate is not a finite number >= 0.
    pub(super) fn on_burn_rates(
        &mut self,
        unit: &UnitName,
        burn_rates: &crate::slo::BurnRates,
    ) -> Result<(), EngineError> {
        if let Some((window, value)) = burn_rates
            .iter()
            .find(|(_, value)| !value.is_finite() || **value < 0.0)
        {
            return Err(EngineError::InvalidBurnRate {
                window: window.as_str(),
                value: value.to_string(),
            });
        }
        let Some(state) = self.units.get(unit) else {
            return Ok(());
        };
        for id in &state.active {
            if let Some(rollout) = self.rollouts.get_mut(id)
                && matches!(
                    rollout.status,
                    RolloutStatus::Running | RolloutStatus::Paused
                )
            {
                rollout.burn_rates.clone_from(burn_rates);
            }
        }
        Ok(())
    }

    pub(super) fn on_maintenance_ended(
        &mut self,
        now: TimeMs,
        id: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        if self.windows.maintenance.remove(&id).is_none() {
            return Err(EngineError::UnknownWindow {
                what: "maintenance window",
                id,
            });
        }
        self.windows.remember_ended(
            id,
            EndedWindow {
                kind: WindowKind::Maintenance,
                ended_ms: now,
                early: true,
            },
        );
        self.sync_windows(now, out);
        Ok(())
    }

    /// Whether a maintenance window holding now selects a node with `labels`.
    pub(super) fn in_maintenance(&self, labels: &Labels, now: TimeMs) -> bool {
        self.windows.maintenance.values().any(|maintenance| {
            maintenance.window().contains(now) && maintenance.selector.matches(labels)
        })
    }

    /// Looks at the windows at `now`: forgets the ended ones, notes which freezes hold, moves
    /// nodes into and out of maintenance, and lets the rollouts move when anything changed.
    /// O(fleet) only while a maintenance window holds or has just ended.
    pub(super) fn sync_windows(&mut self, now: TimeMs, out: &mut Vec<Action>) {
        let over: Vec<(u64, EndedWindow)> = self
            .windows
            .freezes
            .values()
            .filter_map(|freeze| match freeze.window {
                Window::Once {
                    until_ms: Some(until_ms),
                    ..
                } if now >= until_ms => Some((freeze.id, WindowKind::Freeze, until_ms)),
                _ => None,
            })
            .chain(
                self.windows
                    .maintenance
                    .values()
                    .filter(|maintenance| now >= maintenance.until_ms)
                    .map(|maintenance| {
                        (
                            maintenance.id,
                            WindowKind::Maintenance,
                            maintenance.until_ms,
                        )
                    }),
            )
            .map(|(id, kind, ended_ms)| {
                let ended = EndedWindow {
                    kind,
                    ended_ms,
                    early: false,
                };
                (id, ended)
            })
            .collect();
        for (id, ended) in over {
            self.windows.remember_ended(id, ended);
        }
        self.windows
            .freezes
            .retain(|_, freeze| !freeze.window.ended(now));
        self.windows
            .maintenance
            .retain(|_, maintenance| !maintenance.window().ended(now));
        let active: std::collections::BTreeSet<u64> = self
            .windows
            .freezes
            .values()
            .filter(|freeze| freeze.window.contains(now))
            .map(|freeze| freeze.id)
            .collect();
        let freezes_changed = active != self.windows.active_freezes;
        self.windows.active_freezes = active;
        let maintenance_active = self
            .windows
            .maintenance
            .values()
            .any(|maintenance| maintenance.window().contains(now));
        let mut entering = Vec::new();
        let mut leaving = Vec::new();
        if maintenance_active || self.windows.maintenance_active {
            for (node, state) in &self.nodes {
                let inside = maintenance_active && self.in_maintenance(&state.labels, now);
                if inside && !state.maintenance {
                    entering.push(node.clone());
                } else if !inside && state.maintenance {
                    leaving.push(node.clone());
                }
            }
        }
        self.windows.maintenance_active = maintenance_active;
        self.windows.next_check_ms = self.windows.next_change_ms(now).unwrap_or(TimeMs::MAX);
        entering.sort();
        leaving.sort();
        for (nodes, inside) in [(&entering, true), (&leaving, false)] {
            for node in nodes {
                if let Some(state) = self.nodes.get_mut(node) {
                    state.maintenance = inside;
                }
                for rollout in self.rollouts.values_mut() {
                    if let Some(exposure) = rollout.exposed.get_mut(node) {
                        exposure.maintenance = inside;
                        // Back from maintenance: silence is counted from now.
                        exposure.last_report_ms = now;
                    }
                }
            }
        }
        let moved = !entering.is_empty() || !leaving.is_empty();
        for id in self.active_rollouts() {
            for node in entering.iter().chain(&leaving) {
                self.refresh_role(id, node);
            }
        }
        for node in &leaving {
            let Some(state) = self.nodes.get(node) else {
                continue;
            };
            if state.down_since_ms.is_some() {
                continue;
            }
            let labels = state.labels.clone();
            self.expose_and_tell(node, &labels, now, out);
        }
        if freezes_changed || moved {
            let units: Vec<UnitName> = self
                .units
                .iter()
                .filter(|(_, state)| !state.active.is_empty() || !state.queued.is_empty())
                .map(|(unit, _)| unit.clone())
                .collect();
            for unit in units {
                self.settle(&unit, now, out);
            }
        }
    }

    /// The first freeze holding now that covers a rollout of `unit` entering stage `upto` of
    /// `stages` (with `exposed` already reached): global, the unit's, or one whose selector
    /// matches a node the stage would newly expose.
    pub(super) fn freeze_blocking(
        &self,
        unit: &UnitName,
        stages: &[Stage],
        upto: usize,
        exposed: Option<&Exposures>,
        now: TimeMs,
    ) -> Option<&Freeze> {
        self.active_freezes(now).find(|freeze| match &freeze.scope {
            FreezeScope::Global => true,
            FreezeScope::Unit { unit: frozen } => frozen == unit,
            FreezeScope::Nodes { selector } => self.nodes.iter().any(|(node, state)| {
                selector.matches(&state.labels)
                    && !exposed.is_some_and(|exposed| exposed.contains_key(node))
                    && select::exposed_by(stages, upto, unit, node, &state.labels)
            }),
        })
    }

    /// The freeze holding a rollout before its start or its next stage, if any.
    fn freeze_holding(&self, rollout: &Rollout) -> Option<&Freeze> {
        if rollout.freeze_override {
            return None;
        }
        match (rollout.status, rollout.phase) {
            (RolloutStatus::Queued, _) => {
                self.freeze_blocking(&rollout.unit, &rollout.plan.stages, 0, None, self.now_ms)
            }
            (RolloutStatus::Running | RolloutStatus::Paused, StagePhase::Passed) => {
                let next = rollout.stage.saturating_add(1);
                if next >= rollout.plan.stages.len() {
                    return None;
                }
                self.freeze_blocking(
                    &rollout.unit,
                    &rollout.plan.stages,
                    next,
                    Some(&rollout.exposed),
                    self.now_ms,
                )
            }
            _ => None,
        }
    }

    /// `freeze 3: change freeze for the holidays`, for the rollout's view.
    pub(super) fn freeze_hold_text(&self, rollout: &Rollout) -> Option<String> {
        self.freeze_holding(rollout)
            .map(|freeze| format!("freeze {}: {}", freeze.id, freeze.reason))
    }

    /// Whether a freeze keeps rollout `id` from entering stage `next` (from starting, when
    /// queued and `next` is 0). Logs the hold once per freeze.
    pub(super) fn held_by_freeze(
        &mut self,
        id: RolloutId,
        next: usize,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(rollout) = self.rollouts.get(&id) else {
            return false;
        };
        if rollout.freeze_override {
            return false;
        }
        let exposed = (rollout.status != RolloutStatus::Queued).then_some(&rollout.exposed);
        let Some(freeze) =
            self.freeze_blocking(&rollout.unit, &rollout.plan.stages, next, exposed, now)
        else {
            return false;
        };
        let (freeze_id, text) = (
            freeze.id,
            format!(
                "frozen by freeze {} ({}, {}): {}",
                freeze.id,
                freeze.scope.describe(),
                freeze.window.describe(),
                freeze.reason
            ),
        );
        if rollout.held_by_freeze == Some(freeze_id) {
            return true;
        }
        let stage = rollout.stage_name();
        let queued = rollout.status == RolloutStatus::Queued;
        if let Some(rollout) = self.rollouts.get_mut(&id) {
            rollout.held_by_freeze = Some(freeze_id);
        }
        let why = if queued {
            format!("{text}; it starts when the freeze ends or is lifted")
        } else {
            format!("{text}; the next stage starts when the freeze ends or is lifted")
        };
        out.push(Action::Notify {
            rollout: id,
            message: cut(&format!("rollout {id} holds: {why}")),
        });
        let stage = if queued { None } else { stage };
        self.log(id, ChangeKind::Held, None, stage, cut(&why), now, out);
        true
    }
}
