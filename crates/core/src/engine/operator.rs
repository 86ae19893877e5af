//! The operator's everyday steps that are not commands on a running rollout: lifting a
//! quarantine, reverting what an aborted rollout left behind, and removing a deleted unit from
//! every node. Queries the operator views need (the quarantine list, a rollout's plan).
//!
//! Like the rest of the engine: no clock, no IO; a refused step leaves the state untouched.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Action, ChangeKind, ChangelogEntry, Engine, EngineError, RolloutStatus, cut};
use crate::domain::{NodeId, RolloutId, TimeMs, UnitName, VersionHash};
use crate::plan::Plan;

/// A quarantined version, and the rollout whose rollback quarantined it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedVersion {
    pub unit: UnitName,
    pub version: VersionHash,
    pub rollout: RolloutId,
}

impl Engine {
    /// Every quarantined version, by unit then hash.
    pub fn quarantined(&self) -> Vec<QuarantinedVersion> {
        self.units
            .iter()
            .flat_map(|(unit, state)| {
                state
                    .quarantined
                    .iter()
                    .map(|(version, rollout)| QuarantinedVersion {
                        unit: unit.clone(),
                        version: *version,
                        rollout: *rollout,
                    })
            })
            .collect()
    }

    /// The plan rollout `id` runs (or ran); `None` when unknown or pruned.
    pub fn rollout_plan(&self, id: RolloutId) -> Option<&Plan> {
        self.rollouts.get(&id).map(|rollout| &rollout.plan)
    }

    /// How many nodes should run each version of `unit` now (what is live), by version.
    /// O(fleet).
    pub fn desired_counts(&self, unit: &UnitName) -> BTreeMap<VersionHash, u64> {
        let mut counts: BTreeMap<VersionHash, u64> = BTreeMap::new();
        for state in self.nodes.values() {
            if let Some(version) = state.desired.get(unit) {
                let count = counts.entry(*version).or_default();
                *count = count.saturating_add(1);
            }
        }
        counts
    }

    /// The oldest open (queued, running or paused) rollout of `unit`, if any.
    pub fn open_rollout(&self, unit: &UnitName) -> Option<RolloutId> {
        let state = self.units.get(unit)?;
        state
            .active
            .iter()
            .chain(state.queued.iter())
            .copied()
            .min()
    }

    pub(super) fn on_quarantine_lifted(
        &mut self,
        now: TimeMs,
        unit: &UnitName,
        version: VersionHash,
        actor: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        let by = self
            .units
            .get(unit)
            .and_then(|state| state.quarantined.get(&version).copied())
            .ok_or_else(|| EngineError::NotQuarantined {
                unit: unit.clone(),
                version,
            })?;
        if let Some(state) = self.units.get_mut(unit) {
            state.quarantined.remove(&version);
        }
        out.push(Action::Changelog(ChangelogEntry {
            at_ms: now,
            actor: cut(actor),
            kind: ChangeKind::QuarantineLifted,
            unit: unit.clone(),
            version,
            rollout: by,
            stage: None,
            reason: cut(&format!(
                "quarantine of {} (by {by}) lifted: {reason}",
                version.short()
            )),
        }));
        Ok(())
    }

    /// Reverts every node an aborted rollout left on its version to what the node had before
    /// the rollout reached it, quarantines the version (as an operator's rollback of a running
    /// rollout does) and ends the rollout `rolled_back`. Nodes that moved on since (a later
    /// rollout reached them) are left alone. Refused while another rollout of the unit runs,
    /// and for a rollout so old that its nodes are no longer kept.
    pub(super) fn on_revert_aborted(
        &mut self,
        now: TimeMs,
        id: RolloutId,
        actor: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        let rollout = self
            .rollouts
            .get(&id)
            .ok_or(EngineError::UnknownRollout(id))?;
        let refuse = |why: String| EngineError::CannotRevert { rollout: id, why };
        if rollout.status != RolloutStatus::Aborted {
            return Err(refuse(format!(
                "it is {}; only an aborted rollout is reverted this way (a running or paused one \
                 is rolled back directly)",
                rollout.status.as_str()
            )));
        }
        if rollout.nodes_exposed == 0 {
            return Err(refuse(
                "it reached no node: nothing to put back (start a rollout of another version \
                 instead)"
                    .to_owned(),
            ));
        }
        let unit = rollout.unit.clone();
        let version = rollout.version;
        if let Some(state) = self.units.get(&unit)
            && let Some(open) = state.active.first()
        {
            return Err(refuse(format!(
                "rollout {open} of unit {unit} is running; roll it back or let it end first"
            )));
        }
        if rollout.exposed.len() == 0 {
            return Err(refuse(
                "it ended too long ago: the nodes it reached are no longer kept".to_owned(),
            ));
        }
        let mut groups: BTreeMap<Option<VersionHash>, Vec<NodeId>> = BTreeMap::new();
        for (node, exposure) in rollout.exposed.iter() {
            let still_on_it = self
                .nodes
                .get(node)
                .is_some_and(|state| state.desired.get(&unit) == Some(&version));
            if still_on_it {
                groups
                    .entry(exposure.before)
                    .or_default()
                    .push(node.clone());
            }
        }
        let mut reverted: u64 = 0;
        for (before, nodes) in &mut groups {
            nodes.sort();
            for node in nodes.iter() {
                if let Some(state) = self.nodes.get_mut(node) {
                    match before {
                        Some(previous) => state.desired.insert(unit.clone(), *previous),
                        None => state.desired.remove(&unit),
                    };
                    reverted = reverted.saturating_add(1);
                }
            }
        }
        for (before, nodes) in groups {
            out.push(Action::SetDesired {
                unit: unit.clone(),
                version: before,
                nodes,
            });
        }
        let why = cut(&format!(
            "aborted rollout reverted by {actor}: {reason}; {reverted} nodes put back on what \
             they had before"
        ));
        let stage = rollout.stage_name();
        if let Some(rollout) = self.rollouts.get_mut(&id) {
            rollout.status = RolloutStatus::RolledBack;
            rollout.ended_ms = Some(now);
            rollout.outcome = Some(why.clone());
        }
        self.log_as(
            id,
            ChangeKind::RolledBack,
            actor,
            stage.clone(),
            why.clone(),
            now,
            out,
        );
        self.quarantine_logged(&unit, version, id, actor, stage, now, out);
        out.push(Action::Notify {
            rollout: id,
            message: format!(
                "{unit} {} rolled back after its abort on {reverted} nodes",
                version.short()
            ),
        });
        self.end_queued_of_quarantined(&unit, version, id, now, out);
        Ok(())
    }

    /// Takes a deleted unit from every node (each gets it in its desired state as removed)
    /// and forgets the unit's state. Refused while a rollout of it is queued, running or
    /// paused. Its ended rollouts stay listed.
    pub(super) fn on_unit_removed(
        &mut self,
        unit: &UnitName,
        out: &mut Vec<Action>,
    ) -> Result<(), EngineError> {
        if let Some(open) = self.open_rollout(unit) {
            return Err(EngineError::UnitBusy {
                unit: unit.clone(),
                rollout: open,
            });
        }
        let mut nodes: Vec<NodeId> = self
            .nodes
            .iter_mut()
            .filter_map(|(node, state)| state.desired.remove(unit).map(|_| node.clone()))
            .collect();
        nodes.sort();
        self.units.remove(unit);
        if !nodes.is_empty() {
            out.push(Action::SetDesired {
                unit: unit.clone(),
                version: None,
                nodes,
            });
        }
        Ok(())
    }
}
