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

use super::custom::{CustomGroups, CustomHold, judge_custom};
use super::{
    Action, ChangeKind, Engine, GATE_EVAL_INTERVAL_MS, GateReport, cut, same_kind, verdict_text,
};
use crate::domain::{RolloutId, TimeMs, VersionHash};
use crate::gate::{Gate, Verdict};
use crate::health::{CustomValues, GroupMetrics, HealthSample};
use crate::slo::BurnRates;

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
    burn_rates: &BurnRates,
) -> Option<NotTheVersion> {
    if gate.reads_baseline() {
        return None;
    }
    // A baseline that exists but has not its requests yet cannot tell the version from the
    // fleet: hold while it gathers them (with no baseline at all, the caller judges the gate as
    // written).
    if baseline.sample.requests < min_requests.max(1) {
        return Some(NotTheVersion::NotProven(format!(
            "the baseline has {} requests, fewer than min_requests {min_requests}: holding until \
             it can tell the version from the fleet",
            baseline.sample.requests
        )));
    }
    // Compared in what the gate reads: a gate on a metric with no comparison (a count) is
    // judged as written.
    let mut compared = false;
    for (metric, source) in WORSE_THAN_BASELINE {
        // A burn rate counts the SLOs' bad events: the version is to blame for it when its
        // nodes fail more requests than the nodes without it.
        let burn_blames = metric == "error_rate" && gate.reads_burn_rate();
        if !reads_metric(&gate.source, metric) && !burn_blames {
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
    Some(
        match gate.evaluate_with(baseline, None, min_requests, burn_rates) {
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
        },
    )
}

/// Whether a time control has the evidence to speak for the time since a pre-period next to
/// a group with `compared_requests`: reports arrive node by node, and a control whose window
/// just started cannot clear the time, however it compares (a quarter of the group's requests,
/// and `min_requests`).
fn control_suffices(control: &GroupMetrics, compared_requests: u64, min_requests: u64) -> bool {
    control.sample.requests >= (compared_requests / 4).max(min_requests)
}

/// Whether the nodes without the version got significantly worse, in a metric a failing
/// `gate` reads, between the pre-period and now (`control` against `control_pre`): then a
/// before/after comparison blames the time, not the version.
fn fleet_changed(
    gate: &Gate,
    control: &GroupMetrics,
    control_pre: &GroupMetrics,
    min_requests: u64,
    canary_requests: u64,
) -> Option<NotTheVersion> {
    if !control_suffices(control, canary_requests, min_requests) {
        return Some(NotTheVersion::NotProven(format!(
            "the nodes without the version have {} requests since the window started, against \
             the canary's {canary_requests}: too few yet to tell whether the fleet changed since \
             the pre-period",
            control.sample.requests
        )));
    }
    let comparisons = WORSE_THAN_BASELINE
        .iter()
        .filter(|(metric, _)| reads_metric(&gate.source, metric))
        .filter_map(|(_, source)| Gate::parse(source).ok());
    comparisons.into_iter().find_map(|comparison| {
        match comparison.evaluate(control, Some(control_pre), min_requests) {
            Verdict::Fail { detail } => Some(NotTheVersion::FleetUnhealthy(format!(
                "fleet changed: the nodes without the version fail {:?} too against their own \
                 pre-period ({detail}), so the canary's change since its pre-period is not the \
                 version's",
                comparison.source
            ))),
            Verdict::Inconclusive { .. } | Verdict::Pass { .. } => None,
        }
    })
}

/// The pre-period's error rate carried to now: raised as much as the nodes without the
/// version got worse since (the larger of the relative and the absolute change, so that
/// neither a multiplicative nor an additive incident is put on the version), never lowered.
/// Only with a time control that has at least the canary's requests; its point estimate is
/// then at least as precise as the canary's.
fn time_adjusted(
    pre: GroupMetrics,
    control: &GroupMetrics,
    control_pre: &GroupMetrics,
) -> GroupMetrics {
    let rate = |g: &GroupMetrics| g.sample.errors as f64 / g.sample.requests.max(1) as f64;
    let (now, before, pre_rate) = (rate(control), rate(control_pre), rate(&pre));
    if now <= before {
        return pre;
    }
    let relative = if before > 0.0 {
        pre_rate * now / before
    } else {
        0.0
    };
    let adjusted = relative.max(pre_rate + (now - before)).min(1.0);
    let errors = (adjusted * pre.sample.requests as f64).round() as u64;
    GroupMetrics {
        sample: HealthSample {
            errors: errors.min(pre.sample.requests),
            ..pre.sample
        },
        ..pre
    }
}

/// Whether `values` has a reading of every one of `names`.
fn has_every(values: &CustomValues, names: &[String]) -> bool {
    names.iter().all(|name| values.readings(name) > 0)
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
            rollout
                .judged_baseline()
                .0
                .is_none_or(|baseline| baseline.sample.requests == 0)
                && !self.other_version_runs(&rollout.unit, &rollout.version)
        };
        let rollout = self.rollouts.get_mut(&id)?;
        let silence_ms = rollout.current_stage()?.silence_ms;
        rollout.judge_silence(silence_ms, &self.nodes);
        let burn_rates = rollout.burn_rates.clone();
        let stage = rollout.plan.stages.get(rollout.stage)?;
        rollout.canary.nodes = rollout.nodes_applied;
        let stage_canary = GroupMetrics {
            nodes: rollout.stage_canary_nodes(),
            ..rollout.stage_canary
        };
        let (mut baseline, control) = rollout.judged_baseline();
        if let (Some(pre), Some((control, control_pre))) = (baseline, control.as_ref())
            && control_suffices(control, stage_canary.sample.requests, stage.min_requests)
        {
            baseline = Some(time_adjusted(pre, control, control_pre));
        }
        if let Some(nodes) = rollout.roles.0.baseline_nodes() {
            rollout.baseline_carried = Some(GroupMetrics {
                nodes,
                ..rollout.baseline
            });
            rollout.custom.baseline_carried = rollout.custom.baseline.clone();
        }
        // Custom metrics' groups, owned: the loop below changes the rollout.
        let custom_gates = stage.gates.iter().any(Gate::reads_custom);
        let (custom_baseline, custom_control) = if custom_gates {
            let (baseline, control) = rollout.judged_custom_baseline();
            (
                baseline.cloned(),
                control.map(|(now, then)| (now.clone(), then.clone())),
            )
        } else {
            (None, None)
        };
        let mut changes = Vec::new();
        let mut reports = Vec::with_capacity(stage.gates.len());
        let mut fleet_unhealthy = None;
        let mut absolute_breach = false;
        let breach_before = rollout.breach_since_ms;
        for (index, gate) in stage.gates.iter().enumerate() {
            // A comparison with the baseline reads the stage's own nodes, the population the
            // baseline matches; an absolute limit holds for every exposed node.
            let canary = if gate.reads_baseline() {
                &stage_canary
            } else {
                &rollout.canary
            };
            let builtin = !gate.reads_custom();
            let mut verdict = if builtin {
                gate.evaluate_with(canary, baseline.as_ref(), stage.min_requests, &burn_rates)
            } else {
                let windows = &rollout.custom;
                let earlier = (!windows.earlier_pre.is_empty())
                    .then_some((&windows.earlier, &windows.earlier_pre));
                let groups = CustomGroups {
                    canary: if gate.reads_baseline() {
                        &windows.stage_canary
                    } else {
                        &windows.canary
                    },
                    baseline: custom_baseline.as_ref(),
                    control: custom_control.as_ref().map(|(now, then)| (now, then)),
                    earlier,
                    no_baseline_ever,
                    canary_requests: canary.sample.requests,
                    baseline_requests: baseline.map(|b| b.sample.requests),
                    min_requests: stage.min_requests,
                };
                let (verdict, hold) = judge_custom(gate, &groups);
                if let Some(CustomHold::FleetUnhealthy(why)) = hold {
                    fleet_unhealthy.get_or_insert_with(|| format!("gate {:?}: {why}", gate.source));
                }
                verdict
            };
            // The service burns its budget and nothing to compare the version with: a
            // fleet-wide signal cannot blame it (see `gate` on burn-rate gates).
            if builtin
                && let Verdict::Fail { detail } = &verdict
                && gate.reads_burn_rate()
                && (baseline.is_none() || no_baseline_ever)
            {
                let why = format!(
                    "{detail}; fleet unhealthy: the service burns its error budget and no nodes \
                     without the version to compare with, so the version is not blamed"
                );
                fleet_unhealthy.get_or_insert_with(|| format!("gate {:?}: {why}", gate.source));
                verdict = Verdict::Inconclusive { detail: why };
            }
            if builtin
                && let Verdict::Fail { detail } = &verdict
                && let Some(baseline) = baseline.as_ref()
                && !no_baseline_ever
                && let Some(not) = not_the_version(
                    gate,
                    &stage_canary,
                    baseline,
                    stage.min_requests,
                    &burn_rates,
                )
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
            // Judged against a pre-period: the time between then and now is no evidence
            // against the version when the nodes without it changed the same way.
            if builtin
                && let Verdict::Fail { detail } = &verdict
                && let Some((control, control_pre)) = control.as_ref()
                && let Some(not) = fleet_changed(
                    gate,
                    control,
                    control_pre,
                    stage.min_requests,
                    stage_canary.sample.requests,
                )
            {
                let why = match not {
                    NotTheVersion::FleetUnhealthy(why) => {
                        fleet_unhealthy
                            .get_or_insert_with(|| format!("gate {:?}: {why}", gate.source));
                        why
                    }
                    NotTheVersion::NotProven(why) => why,
                };
                verdict = Verdict::Inconclusive {
                    detail: format!("{detail}; {why}"),
                };
            }
            // The nodes of earlier stages keep being compared, with themselves in the stage
            // before (same nodes, same version): a failure that starts late shows there.
            if builtin
                && !matches!(verdict, Verdict::Fail { .. })
                && let Some(earlier_pre) = rollout.earlier_pre
                && rollout.earlier.sample.requests >= stage.min_requests
            {
                let earlier = rollout.earlier;
                // The time control: the unexposed nodes, or with every node exposed, the
                // stage's own nodes against their pre-period.
                let control = rollout.unexposed_control().or_else(|| {
                    rollout
                        .pre_period
                        .filter(|pre| pre.sample.requests > 0)
                        .map(|pre| (rollout.stage_canary, pre))
                });
                let reference = match control.as_ref() {
                    Some((control, control_pre))
                        if control_suffices(
                            control,
                            earlier.sample.requests,
                            stage.min_requests,
                        ) =>
                    {
                        time_adjusted(earlier_pre, control, control_pre)
                    }
                    _ => earlier_pre,
                };
                // A comparison as written; an absolute limit breached by them, when they are
                // significantly worse than themselves then in what it reads.
                let earlier_verdict = if gate.reads_baseline() {
                    gate.evaluate_with(&earlier, Some(&reference), stage.min_requests, &burn_rates)
                } else {
                    match gate.evaluate_with(&earlier, None, stage.min_requests, &burn_rates) {
                        Verdict::Fail { detail }
                            if not_the_version(
                                gate,
                                &earlier,
                                &reference,
                                stage.min_requests,
                                &burn_rates,
                            )
                            .is_none() =>
                        {
                            Verdict::Fail { detail }
                        }
                        // Not worse than themselves then: the stage's own verdict stands.
                        _ => verdict.clone(),
                    }
                };
                if let Verdict::Fail { detail } = earlier_verdict {
                    let not = control.as_ref().and_then(|(control, control_pre)| {
                        fleet_changed(
                            gate,
                            control,
                            control_pre,
                            stage.min_requests,
                            earlier.sample.requests,
                        )
                    });
                    let detail = format!(
                        "the nodes of earlier stages are worse than themselves in the stage \
                         before: {detail}"
                    );
                    verdict = match not {
                        None => Verdict::Fail { detail },
                        Some(NotTheVersion::FleetUnhealthy(why)) => {
                            fleet_unhealthy
                                .get_or_insert_with(|| format!("gate {:?}: {why}", gate.source));
                            Verdict::Inconclusive {
                                detail: format!("{detail}; {why}"),
                            }
                        }
                        Some(NotTheVersion::NotProven(why)) => Verdict::Inconclusive {
                            detail: format!("{detail}; {why}"),
                        },
                    };
                }
            }
            // An absolute breach blames the version only if it is still there one evaluation
            // interval later: reports arrive node by node, and at an incident's onset the
            // canary's may be in before the baseline's.
            let baseline_ready = if builtin {
                baseline.is_some_and(|b| b.sample.requests >= stage.min_requests.max(1))
            } else {
                custom_baseline
                    .as_ref()
                    .is_some_and(|b| has_every(b, &gate.custom_metrics()))
            };
            if !gate.reads_baseline()
                && let Verdict::Fail { detail } = &verdict
                && baseline_ready
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
            let canary_ready = stage_canary.sample.requests >= stage.min_requests
                && (builtin || has_every(&rollout.custom.stage_canary, &gate.custom_metrics()));
            if no_baseline_ever
                && gate.reads_baseline()
                && canary_ready
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
            rollout.stage_canary.sample = HealthSample::default();
            rollout.earlier.sample = HealthSample::default();
            rollout.baseline.sample = HealthSample::default();
            rollout.control.sample = HealthSample::default();
            rollout.custom.restart();
            // Reports of this very moment belong to the spell just judged: every group's
            // window starts after it, so that all cover the same time.
            rollout.window_from_ms = now;
        }
        rollout.held_for_data = !rollout.has_data();
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
