//! Custom metrics (`custom.NAME` in gates, declared by a plan's Prometheus health source): the
//! groups' values, kept beside the `Copy` [`GroupMetrics`](crate::health::GroupMetrics) in
//! windows that mirror them one for one, and how a gate on them is judged.
//!
//! A custom metric has no sequential test (it is a mean of gauge readings, not a count of
//! failed requests), so its verdicts follow the same rules as the built-in metrics' with the
//! comparison the data allows:
//! - a relative gate (`custom.queue_depth > 1.5 * baseline.custom.queue_depth`) compares the
//!   stage's own nodes with the like-for-like baseline the built-in gates use (the unexposed
//!   nodes of the stage's selector, else their own pre-period, else the other unexposed
//!   nodes, else the baseline carried from an earlier stage); against a pre-period, a failure
//!   that the time control shows too (the unexposed nodes now against themselves then, by the
//!   same gate) blames the time: the fleet is unhealthy, the stage holds;
//! - an absolute gate (`custom.queue_depth > 100`) that the canary breaches blames the
//!   version only while the baseline, judged by the same gate, does not: when the baseline
//!   breaches too the fleet is unhealthy (hold, never quarantine); when the baseline has no
//!   reading of the metric yet the gate holds until it has; with no baseline at all (a unit's
//!   first version) it is judged as written. A breach is confirmed one evaluation later, as
//!   for the built-in absolute gates;
//! - a metric with no reading (the query failed or answered nothing for the group's nodes)
//!   is inconclusive: the stage holds, it neither passes nor rolls back.

use serde::{Deserialize, Serialize};

use crate::gate::{Gate, Verdict};
use crate::health::CustomValues;

/// The custom metrics of each of a rollout's health windows; each field is the namesake of a
/// [`GroupMetrics`](crate::health::GroupMetrics) field of the rollout, and changes with it. An
/// empty value is a group with no reading (or none at all).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(super) struct CustomWindows {
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub canary: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub stage_canary: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub earlier: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub earlier_pre: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub baseline: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub baseline_carried: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub upcoming: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub upcoming_control: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub pre_period: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub control_pre: CustomValues,
    #[serde(default, skip_serializing_if = "CustomValues::is_empty")]
    pub control: CustomValues,
}

impl CustomWindows {
    pub(super) fn is_empty(&self) -> bool {
        *self == CustomWindows::default()
    }

    /// The windows that start again at a stage's entry, an observation's or a soak's (as
    /// `Rollout::restart_windows`), and after a fleet-unhealthy verdict.
    pub(super) fn restart(&mut self) {
        self.canary = CustomValues::default();
        self.stage_canary = CustomValues::default();
        self.earlier = CustomValues::default();
        self.baseline = CustomValues::default();
        self.control = CustomValues::default();
    }
}

/// Which group a stage's canary is compared with, and the time control when that group is a
/// pre-period: the choice `Rollout::judged_baseline` makes, for built-in and custom metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BaselineFrom {
    /// The unexposed nodes of the stage's selector.
    StageUnexposed,
    /// The stage's nodes before the version, with its time control.
    PrePeriod(Option<ControlFrom>),
    /// The other unexposed nodes.
    FleetUnexposed(u64),
    /// The latest baseline judged against, carried from an earlier stage (if any).
    Carried,
}

/// The time control next to a pre-period: now against the same nodes then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ControlFrom {
    /// The unexposed nodes (`control` against `control_pre`).
    Unexposed,
    /// With every node exposed, the earlier stages' nodes (`earlier` against `earlier_pre`).
    Earlier,
}

/// Why a failing custom gate is not the version's fault (as `judge::NotTheVersion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CustomHold {
    FleetUnhealthy(String),
    NotProven(String),
}

/// The groups a custom gate is judged on.
#[derive(Debug)]
pub(super) struct CustomGroups<'a> {
    /// Every exposed node (absolute gates) or the stage's own nodes (relative ones).
    pub canary: &'a CustomValues,
    pub baseline: Option<&'a CustomValues>,
    /// The time control when the baseline is a pre-period: now, then.
    pub control: Option<(&'a CustomValues, &'a CustomValues)>,
    /// The nodes of earlier stages: now, and in the stage before (relative gates compare
    /// them with themselves then, as the built-in gates do).
    pub earlier: Option<(&'a CustomValues, &'a CustomValues)>,
    /// No node runs another version of the unit: no baseline can ever exist.
    pub no_baseline_ever: bool,
    /// The requests of the canary and of the baseline over the same windows, and the stage's
    /// minimum sample: a group with fewer is no evidence either way, as for the built-in
    /// metrics.
    pub canary_requests: u64,
    pub baseline_requests: Option<u64>,
    pub min_requests: u64,
}

/// A custom gate's verdict on `groups`, and why a failure does not blame the version when it
/// does not (then the verdict is inconclusive).
pub(super) fn judge_custom(
    gate: &Gate,
    groups: &CustomGroups<'_>,
) -> (Verdict, Option<CustomHold>) {
    let short = |whose: &str, requests: u64| Verdict::Inconclusive {
        detail: format!(
            "{}: inconclusive, {whose} has {requests} requests, fewer than min_requests {}",
            gate.source, groups.min_requests
        ),
    };
    if groups.canary_requests < groups.min_requests {
        return (short("canary", groups.canary_requests), None);
    }
    if gate.reads_baseline()
        && let Some(requests) = groups.baseline_requests
        && requests < groups.min_requests
    {
        return (short("baseline", requests), None);
    }
    let mut verdict = gate.evaluate_custom(groups.canary, groups.baseline);
    // The nodes of earlier stages, against themselves in the stage before: a failure that
    // starts late shows there.
    if gate.reads_baseline()
        && !matches!(verdict, Verdict::Fail { .. })
        && let Some((now, then)) = groups.earlier
        && let Verdict::Fail { detail } = gate.evaluate_custom(now, Some(then))
    {
        verdict = Verdict::Fail {
            detail: format!(
                "the nodes of earlier stages are worse than themselves in the stage before: \
                 {detail}"
            ),
        };
    }
    let Verdict::Fail { detail } = &verdict else {
        return (verdict, None);
    };
    let hold = |hold: CustomHold| {
        let why = match &hold {
            CustomHold::FleetUnhealthy(why) | CustomHold::NotProven(why) => why,
        };
        Verdict::Inconclusive {
            detail: format!("{detail}; {why}"),
        }
    };
    // The nodes without the version changed the same way since the pre-period: the time,
    // not the version.
    if let Some((now, then)) = groups.control {
        let changed = if gate.reads_baseline() {
            match gate.evaluate_custom(now, Some(then)) {
                Verdict::Fail { detail } => Some(detail),
                Verdict::Pass { .. } | Verdict::Inconclusive { .. } => None,
            }
        } else {
            // An absolute limit the control breaches now and did not then.
            match (
                gate.evaluate_custom(now, None),
                gate.evaluate_custom(then, None),
            ) {
                (Verdict::Fail { detail }, Verdict::Pass { .. }) => Some(detail),
                _ => None,
            }
        };
        if let Some(control) = changed {
            let why = CustomHold::FleetUnhealthy(format!(
                "fleet unhealthy: the nodes without the version changed the same way since the \
                 pre-period ({control})"
            ));
            return (hold(why.clone()), Some(why));
        }
    }
    if gate.reads_baseline() || groups.no_baseline_ever {
        return (verdict, None);
    }
    let Some(baseline) = groups.baseline else {
        // No baseline to compare with: judged as written.
        return (verdict, None);
    };
    let baseline_requests = groups.baseline_requests.unwrap_or(0);
    if baseline_requests < groups.min_requests.max(1) {
        let why = CustomHold::NotProven(format!(
            "the baseline has {baseline_requests} requests, fewer than min_requests {}: \
             holding until it can tell the version from the fleet",
            groups.min_requests
        ));
        return (hold(why.clone()), Some(why));
    }
    match gate.evaluate_custom(baseline, None) {
        Verdict::Fail {
            detail: baseline_detail,
        } => {
            let why = CustomHold::FleetUnhealthy(format!(
                "fleet unhealthy: the baseline fails it too ({baseline_detail})"
            ));
            (hold(why.clone()), Some(why))
        }
        Verdict::Inconclusive { .. } => {
            let why = CustomHold::NotProven(
                "the baseline has no reading of it yet: holding until it can tell the version \
                 from the fleet"
                    .to_owned(),
            );
            (hold(why.clone()), Some(why))
        }
        Verdict::Pass { .. } => (verdict, None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn values(value: Option<f64>) -> CustomValues {
        let mut custom = CustomValues::default();
        if let Some(value) = value {
            custom.record("queue_depth", value);
        }
        custom
    }

    fn kind(verdict: &Verdict) -> &'static str {
        match verdict {
            Verdict::Pass { .. } => "pass",
            Verdict::Fail { .. } => "fail",
            Verdict::Inconclusive { .. } => "inconclusive",
        }
    }

    /// `gate` on a canary of `canary`, a baseline of `baseline` (`None`: none at all) and a
    /// time control (now, then): the verdict's kind and the hold's, if any.
    fn check(
        gate: &str,
        canary: Option<f64>,
        baseline: Option<Option<f64>>,
        control: Option<(Option<f64>, Option<f64>)>,
        baseline_requests: u64,
    ) -> (&'static str, Option<&'static str>) {
        let gate = Gate::parse(gate).unwrap();
        let canary = values(canary);
        let baseline = baseline.map(values);
        let control = control.map(|(now, then)| (values(now), values(then)));
        let groups = CustomGroups {
            canary: &canary,
            baseline: baseline.as_ref(),
            control: control.as_ref().map(|(now, then)| (now, then)),
            earlier: None,
            no_baseline_ever: false,
            canary_requests: 1_000,
            baseline_requests: baseline.as_ref().map(|_| baseline_requests),
            min_requests: 100,
        };
        let (verdict, hold) = judge_custom(&gate, &groups);
        let hold = hold.map(|hold| match hold {
            CustomHold::FleetUnhealthy(_) => "fleet unhealthy",
            CustomHold::NotProven(_) => "not proven",
        });
        (kind(&verdict), hold)
    }

    const ABSOLUTE: &str = "custom.queue_depth > 100";
    const RELATIVE: &str = "custom.queue_depth > 2 * baseline.custom.queue_depth";

    #[test]
    fn a_custom_breach_blames_the_version_only_where_the_built_in_rules_would() {
        // The canary alone breaches: the version.
        assert_eq!(
            check(ABSOLUTE, Some(500.0), Some(Some(10.0)), None, 1_000),
            ("fail", None)
        );
        // The baseline too: the fleet.
        assert_eq!(
            check(ABSOLUTE, Some(500.0), Some(Some(400.0)), None, 1_000),
            ("inconclusive", Some("fleet unhealthy"))
        );
        // The baseline has no reading, or too few requests: hold until it can tell.
        assert_eq!(
            check(ABSOLUTE, Some(500.0), Some(None), None, 1_000),
            ("inconclusive", Some("not proven"))
        );
        assert_eq!(
            check(ABSOLUTE, Some(500.0), Some(Some(10.0)), None, 10),
            ("inconclusive", Some("not proven"))
        );
        // No baseline at all: judged as written.
        assert_eq!(check(ABSOLUTE, Some(500.0), None, None, 0), ("fail", None));
        // Missing data on the canary: hold, never pass.
        assert_eq!(
            check(ABSOLUTE, None, Some(Some(10.0)), None, 1_000),
            ("inconclusive", None)
        );
        assert_eq!(
            check(ABSOLUTE, Some(50.0), Some(Some(10.0)), None, 1_000),
            ("pass", None)
        );

        // Relative: against the baseline as written.
        assert_eq!(
            check(RELATIVE, Some(50.0), Some(Some(10.0)), None, 1_000),
            ("fail", None)
        );
        assert_eq!(
            check(RELATIVE, Some(15.0), Some(Some(10.0)), None, 1_000),
            ("pass", None)
        );
        assert_eq!(
            check(RELATIVE, Some(50.0), Some(Some(10.0)), None, 10),
            ("inconclusive", None),
            "a baseline short of min_requests is no evidence"
        );
        assert_eq!(
            check(RELATIVE, Some(50.0), None, None, 0),
            ("inconclusive", None)
        );
        // Against a pre-period: the nodes without the version went the same way, the time.
        assert_eq!(
            check(
                RELATIVE,
                Some(50.0),
                Some(Some(10.0)),
                Some((Some(60.0), Some(10.0))),
                1_000
            ),
            ("inconclusive", Some("fleet unhealthy"))
        );
        assert_eq!(
            check(
                RELATIVE,
                Some(50.0),
                Some(Some(10.0)),
                Some((Some(12.0), Some(10.0))),
                1_000
            ),
            ("fail", None)
        );
        // An absolute limit the control breaches now and not then: the time too.
        assert_eq!(
            check(
                ABSOLUTE,
                Some(500.0),
                Some(Some(10.0)),
                Some((Some(300.0), Some(10.0))),
                1_000
            ),
            ("inconclusive", Some("fleet unhealthy"))
        );
    }
}
