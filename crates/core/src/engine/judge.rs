//! Judging a stage: its gates on the canary against the baseline, its hard signals, and the
//! difference between a bad version and an unhealthy fleet.
//!
//! An absolute gate (`error_rate > 0.5%`, `p99_latency > 200ms`) that fails is a claim about
//! the version only when the version's nodes are worse than the nodes without it. When the
//! baseline breaches the same gate and the canary is not significantly worse than it (the
//! sequential tests of `significant(error_rate > baseline.error_rate)` and
//! `significant(p99_latency > baseline.p99_latency)`), the verdict is *fleet unhealthy*: the
//! gate is inconclusive, the stage holds (never promotes, never quarantines), an alert goes
//! out once, the stage's health window starts again (the incident's requests say nothing
//! about the version), and the stage resumes on fresh data when the fleet recovers. With no
//! baseline (a stage taking a whole cohort, a unit's first version) the absolute gate is
//! judged as written.
//!
//! A unit's first version, or a stage that took every node, has no baseline at all: no node
//! runs another version of the unit, so nothing reports health for one. A gate that compares with the baseline could only stay
//! inconclusive and hold the stage for ever; once the canary has its `min_requests`, it passes
//! instead (saying why), and the stage is judged by its absolute gates and hard signals.

use super::{Action, ChangeKind, Engine, GateReport, cut, same_kind, verdict_text};
use crate::domain::{RolloutId, TimeMs, VersionHash};
use crate::gate::{Gate, Verdict};
use crate::health::{GroupMetrics, HealthSample};

/// The canary is compared with the baseline by these before a fleet-wide breach is taken for
/// the fleet's, not the version's.
const WORSE_THAN_BASELINE: [&str; 2] = [
    "significant(error_rate > baseline.error_rate)",
    "significant(p99_latency > baseline.p99_latency)",
];

/// Why a failing absolute `gate` is the fleet's problem rather than the version's, if it is:
/// the baseline fails it too and the canary is not significantly worse than the baseline.
fn fleet_wide(
    gate: &Gate,
    canary: &GroupMetrics,
    baseline: &GroupMetrics,
    min_requests: u64,
) -> Option<String> {
    if gate.reads_baseline() {
        return None;
    }
    let Verdict::Fail {
        detail: baseline_detail,
    } = gate.evaluate(baseline, None, min_requests)
    else {
        return None;
    };
    for source in WORSE_THAN_BASELINE {
        // A comparison that does not parse cannot clear the version: judge as written.
        let comparison = Gate::parse(source).ok()?;
        match comparison.evaluate(canary, Some(baseline), min_requests) {
            Verdict::Fail { .. } => return None,
            Verdict::Pass { .. } | Verdict::Inconclusive { .. } => {}
        }
    }
    Some(format!(
        "fleet unhealthy: the baseline fails it too ({baseline_detail}) and the canary is not \
         significantly worse than the baseline"
    ))
}

impl Engine {
    /// Whether some node should run a version of `unit` other than `version` (a baseline for
    /// it can exist). Walks the fleet; called only when the baseline has no data.
    fn other_version_runs(&self, unit: &crate::domain::UnitName, version: &VersionHash) -> bool {
        self.nodes
            .iter()
            .any(|(_, state)| state.desired.get(unit).is_some_and(|v| v != version))
    }

    /// Evaluates the current stage's gates and silence; records verdicts (changelog on change).
    /// Returns the reason to roll back when a gate fails or too many canary nodes are silent.
    pub(super) fn evaluate_gates(
        &mut self,
        id: RolloutId,
        now: TimeMs,
        out: &mut Vec<Action>,
    ) -> Option<String> {
        let no_baseline_ever = {
            let rollout = self.rollouts.get(&id)?;
            (rollout.baseline.sample.requests == 0)
                && !self.other_version_runs(&rollout.unit, &rollout.version)
        };
        let rollout = self.rollouts.get_mut(&id)?;
        let stage = rollout.plan.stages.get(rollout.stage)?;
        let silent = rollout.silent_nodes(now, stage.silence_ms);
        rollout.canary.silent_nodes = silent;
        rollout.canary.nodes = rollout.nodes_applied;
        let baseline = match rollout.roles.0.baseline_nodes() {
            Some(baseline_nodes) => {
                let current = GroupMetrics {
                    nodes: baseline_nodes,
                    ..rollout.baseline
                };
                rollout.baseline_carried = Some(current);
                Some(current)
            }
            None => rollout.baseline_carried,
        };
        let mut changes = Vec::new();
        let mut reports = Vec::with_capacity(stage.gates.len());
        let mut fleet_unhealthy = None;
        for (index, gate) in stage.gates.iter().enumerate() {
            let mut verdict = gate.evaluate(&rollout.canary, baseline.as_ref(), stage.min_requests);
            if matches!(verdict, Verdict::Fail { .. })
                && let Some(baseline) = baseline.as_ref()
                && let Some(why) = fleet_wide(gate, &rollout.canary, baseline, stage.min_requests)
            {
                fleet_unhealthy.get_or_insert_with(|| format!("gate {:?}: {why}", gate.source));
                verdict = Verdict::Inconclusive { detail: why };
            }
            // No node runs another version of the unit (its first version): a comparison with
            // a baseline can never conclude, and is not held against the version.
            if no_baseline_ever
                && gate.reads_baseline()
                && rollout.canary.sample.requests >= stage.min_requests
                && let Verdict::Inconclusive { detail } = &verdict
            {
                verdict = Verdict::Pass {
                    detail: format!(
                        "{detail}; no baseline: no node runs another version of this unit (its \
                         first version, or every node has this one), so the stage is judged by \
                         its absolute gates and hard signals"
                    ),
                };
            }
            let previous_changed = rollout.gate_reports.get(index).map_or(
                !matches!(verdict, Verdict::Inconclusive { .. }),
                |previous| !same_kind(&previous.verdict, &verdict),
            );
            if previous_changed {
                changes.push(format!(
                    "gate {:?}: {}",
                    gate.source,
                    verdict_text(&verdict)
                ));
            }
            reports.push(GateReport {
                gate: gate.source.clone(),
                verdict,
            });
        }
        let failure = reports
            .iter()
            .find(|report| matches!(report.verdict, Verdict::Fail { .. }))
            .map(|report| {
                format!(
                    "gate {:?} failed: {}",
                    report.gate,
                    verdict_text(&report.verdict)
                )
            });
        rollout.gate_reports = reports;
        rollout.last_gate_eval_ms = Some(now);
        let newly_unhealthy = fleet_unhealthy.is_some() && !rollout.fleet_unhealthy;
        rollout.fleet_unhealthy = fleet_unhealthy.is_some();
        if fleet_unhealthy.is_some() {
            // The incident's requests say nothing about the version: the stage's health window
            // starts again, so it resumes on fresh data once the fleet recovers (hard-signal
            // counts stay).
            rollout.canary.sample = HealthSample::default();
            rollout.baseline.sample = HealthSample::default();
        }
        rollout.held_for_data = !rollout.has_data(now);
        let stage_name = rollout.stage_name();
        let failure = failure.or_else(|| rollout.hard_signal_breach());
        if newly_unhealthy && let Some(why) = &fleet_unhealthy {
            out.push(Action::Notify {
                rollout: id,
                message: cut(&format!(
                    "rollout {id} holds: the fleet is unhealthy, not the version ({why}); it \
                     resumes when the fleet recovers, or run `failsmall rollout \
                     promote|rollback|abort {}`",
                    id.0
                )),
            });
            self.log(
                id,
                ChangeKind::FleetUnhealthy,
                None,
                stage_name.clone(),
                format!("{why}; holding, the version is not blamed"),
                now,
                out,
            );
        }
        for change in changes {
            self.log(
                id,
                ChangeKind::GateVerdict,
                None,
                stage_name.clone(),
                change,
                now,
                out,
            );
        }
        failure
    }
}
