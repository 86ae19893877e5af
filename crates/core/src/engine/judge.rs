//! Judging a stage: its gates on the canary against the baseline, its hard signals, and the
//! difference between a bad version and an unhealthy fleet.
//!
//! An absolute gate (`error_rate > 0.5%`, `p99_latency > 200ms`) that fails is a claim about
//! the version only when the version's nodes are worse than the nodes without it: the canary
//! must be significantly worse than a baseline with data in a metric the gate reads (the
//! sequential tests of `significant(error_rate > baseline.error_rate)`,
//! `significant(p99_latency > baseline.p99_latency)` and the other quantiles'). When the baseline breaches the same
//! gate and the canary is not significantly worse, the verdict is *fleet unhealthy*: the gate
//! is inconclusive, the stage holds (never promotes, never quarantines), an alert goes out
//! once, the stage's health window starts again (the incident's requests say nothing about
//! the version), and the stage resumes on fresh data when the fleet recovers. When the
//! baseline does not breach it but the canary is not significantly worse yet (an incident that
//! reached the canary first), the gate is inconclusive and the stage holds while the evidence
//! accumulates: a version that is worse is proven so and rolled back. With no
//! baseline (a stage taking a whole cohort, a unit's first version) the absolute gate is
//! judged as written.
//!
//! A unit's first version, or a stage that took every node, has no baseline at all: no node
//! runs another version of the unit, so nothing reports health for one. A gate that compares with the baseline could only stay
//! inconclusive and hold the stage for ever; once the canary has its `min_requests`, it passes
//! instead (saying why), and the stage is judged by its absolute gates and hard signals.

use super::{
    Action, ChangeKind, Engine, GATE_EVAL_INTERVAL_MS, GateReport, cut, same_kind, verdict_text,
};
use crate::domain::{RolloutId, TimeMs, VersionHash};
use crate::gate::{Gate, Verdict};
use crate::health::{GroupMetrics, HealthSample};

/// The metrics a failing absolute gate may read, each with the comparison that says whether
/// the canary is worse than the baseline in it.
const WORSE_THAN_BASELINE: [(&str, &str); 6] = [
    (
        "error_rate",
        "significant(error_rate > baseline.error_rate)",
    ),
    (
        "p50_latency",
        "significant(p50_latency > baseline.p50_latency)",
    ),
    (
        "p90_latency",
        "significant(p90_latency > baseline.p90_latency)",
    ),
    (
        "p95_latency",
        "significant(p95_latency > baseline.p95_latency)",
    ),
    (
        "p99_latency",
        "significant(p99_latency > baseline.p99_latency)",
    ),
    (
        "p999_latency",
        "significant(p999_latency > baseline.p999_latency)",
    ),
];

/// Whether the gate expression `source` names `metric` (as a whole word).
fn reads_metric(source: &str, metric: &str) -> bool {
    source.match_indices(metric).any(|(at, _)| {
        let before = source.get(..at).and_then(|s| s.chars().next_back());
        let after = source
            .get(at.saturating_add(metric.len())..)
            .and_then(|s| s.chars().next());
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

/// Why a failing absolute `gate` is not yet, or not at all, the version's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotTheVersion {
    /// The baseline fails the gate too and the canary is not significantly worse: the fleet
    /// is unhealthy.
    FleetUnhealthy(String),
    /// The baseline, with data, does not fail it, but the canary is not significantly worse
    /// than the baseline yet (an incident that reached the canary first, or too little data
    /// to tell): hold while the evidence accumulates.
    NotProven(String),
}

/// Whether a failing absolute `gate` blames the version: only when the canary is
/// significantly worse than a baseline with data, or there is no such baseline.
fn not_the_version(
    gate: &Gate,
    canary: &GroupMetrics,
    baseline: &GroupMetrics,
    min_requests: u64,
) -> Option<NotTheVersion> {
    if gate.reads_baseline() || baseline.sample.requests < min_requests.max(1) {
        return None;
    }
    // Compared in what the gate reads: a gate on a metric with no comparison (a count) is
    // judged as written.
    let mut compared = false;
    for (metric, source) in WORSE_THAN_BASELINE {
        if !reads_metric(&gate.source, metric) {
            continue;
        }
        compared = true;
        // A comparison that does not parse cannot clear the version: judge as written.
        let comparison = Gate::parse(source).ok()?;
        match comparison.evaluate(canary, Some(baseline), min_requests) {
            Verdict::Fail { .. } => return None,
            Verdict::Pass { .. } | Verdict::Inconclusive { .. } => {}
        }
    }
    if !compared {
        return None;
    }
    Some(match gate.evaluate(baseline, None, min_requests) {
        Verdict::Fail {
            detail: baseline_detail,
        } => NotTheVersion::FleetUnhealthy(format!(
            "fleet unhealthy: the baseline fails it too ({baseline_detail}) and the canary is \
             not significantly worse than the baseline"
        )),
        Verdict::Pass { .. } | Verdict::Inconclusive { .. } => NotTheVersion::NotProven(
            "breached, but the canary is not significantly worse than the baseline yet: \
             holding while the evidence accumulates"
                .to_owned(),
        ),
    })
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
        let mut absolute_breach = false;
        let breach_before = rollout.breach_since_ms;
        for (index, gate) in stage.gates.iter().enumerate() {
            let mut verdict = gate.evaluate(&rollout.canary, baseline.as_ref(), stage.min_requests);
            if let Verdict::Fail { detail } = &verdict
                && let Some(baseline) = baseline.as_ref()
                && let Some(not) =
                    not_the_version(gate, &rollout.canary, baseline, stage.min_requests)
            {
                let why = match not {
                    NotTheVersion::FleetUnhealthy(why) => {
                        fleet_unhealthy
                            .get_or_insert_with(|| format!("gate {:?}: {why}", gate.source));
                        why
                    }
                    NotTheVersion::NotProven(why) => format!("{detail}; {why}"),
                };
                verdict = Verdict::Inconclusive { detail: why };
            }
            // An absolute breach blames the version only if it is still there one evaluation
            // interval later: reports arrive node by node, and at an incident's onset the
            // canary's may be in before the baseline's.
            if !gate.reads_baseline()
                && let Verdict::Fail { detail } = &verdict
                && baseline.is_some_and(|b| b.sample.requests >= stage.min_requests.max(1))
            {
                let since = *rollout.breach_since_ms.get_or_insert(now);
                if now.saturating_sub(since) < GATE_EVAL_INTERVAL_MS {
                    absolute_breach = true;
                    verdict = Verdict::Inconclusive {
                        detail: format!(
                            "{detail}; confirming: a breach blames the version if it holds one \
                             evaluation later"
                        ),
                    };
                }
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
        // A breach not seen again is forgotten (a failing gate ends the stage anyway).
        if !absolute_breach && breach_before == rollout.breach_since_ms {
            rollout.breach_since_ms = None;
        }
        // Alerted once per unhealthy spell: it ends when every gate passes again.
        let newly_unhealthy = fleet_unhealthy.is_some() && !rollout.fleet_unhealthy;
        if fleet_unhealthy.is_some() {
            rollout.fleet_unhealthy = true;
        } else if rollout
            .gate_reports
            .iter()
            .all(|report| matches!(report.verdict, Verdict::Pass { .. }))
        {
            rollout.fleet_unhealthy = false;
        }
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
