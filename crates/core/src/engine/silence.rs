//! Silence, judged like for like.
//!
//! A canary node that applied the version and then said nothing about the unit while the
//! unit's other nodes were heard for longer than the stage's `silence` is *silent*. Nodes fall
//! silent for reasons of their own (a reboot, a lost link, a host replaced), at a rate that has
//! nothing to do with the version; one of them in a stage of thousands must not roll a good
//! version back and quarantine it. So the canary's silence is set against the silence of the
//! nodes the version did not reach, over the same time, measured the same way: up to
//! [`MAX_SILENCE_BASELINE_NODES`] unexposed nodes of the unit, the first heard (each with the
//! time it last spoke), judged silent by the same rule as a canary node. A baseline node that
//! goes down stays watched (a reboot wave in the baseline is what makes canary silence
//! expected); one that gets exposed, leaves the fleet or enters maintenance is dropped.
//!
//! With `s` of the `n` watched baseline nodes silent and `S` of the `N` watched canary nodes
//! (ACKed, not in maintenance):
//!
//! - up to `floor(N * (s + 1) / (n + 2))` silent canary nodes (the baseline's rate by the rule
//!   of succession, so that a quiet baseline still expects the odd silent node among many) are
//!   what the fleet shows: they neither hold the stage nor count against the version;
//! - more than that holds the stage (it does not pass while more of its nodes are silent than
//!   the baseline's rate explains; its timeout, if any, ends it as inconclusive, which never
//!   quarantines);
//! - the hard signal (rollback and quarantine) needs both the plan's `silent_nodes` threshold
//!   and more than `q` silent canary nodes, where `p_u` is the one-sided upper confidence bound
//!   (Clopper–Pearson, level `1 - SILENCE_ALPHA`) on the baseline's rate and `q` the
//!   `1 - SILENCE_ALPHA` quantile of `Binomial(N, p_u)`.
//!
//! The false-positive bound: if canary nodes fall silent independently and no more often than
//! the baseline's nodes, one judgement blames the version with probability at most
//! `2 * SILENCE_ALPHA` (0.2%): `p_u` is below the true rate with probability at most `alpha`,
//! and above it the canary exceeds `q` with probability at most `alpha`. A baseline observed in
//! an earlier stage is carried into a stage that leaves no node unexposed (the last stage, the
//! soak). With no baseline ever (every node exposed from the start), nothing tells a reboot
//! from the version: the plan's threshold alone decides, as it says.
//!
//! What it costs in catching failures: one silent node among few canary nodes, against a
//! healthy baseline of `n` nodes, is no longer blamed at once when `p_u` (about `6.9 / n` with
//! no baseline node silent) exceeds `SILENCE_ALPHA`; it holds the stage instead, and the stage
//! ends when the node speaks again (it rebooted) or at its timeout (it did not). Two silent
//! nodes of five against a quiet baseline of 2,000 are blamed at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LookupMap, MAX_SILENCE_BASELINE_NODES, NodeState, Rollout};
use crate::domain::{NodeId, TimeMs};
use crate::stats::{binomial_quantile, binomial_upper_bound};

/// The level of the silence judgement: one judgement blames a version whose nodes fall silent
/// no more often than the fleet's with probability at most twice this (see the module docs).
pub const SILENCE_ALPHA: f64 = 0.001;

/// The unexposed nodes whose silence the canary's is set against.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(super) struct BaselineHearing {
    /// Up to [`MAX_SILENCE_BASELINE_NODES`] unexposed nodes of the unit, the first heard, with
    /// the time each last spoke about the unit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    heard: BTreeMap<NodeId, TimeMs>,
    /// The latest judgement that had baseline nodes: `(silent, watched)`, for stages without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    carried: Option<(u64, u64)>,
}

impl BaselineHearing {
    pub(super) fn is_empty(&self) -> bool {
        self.heard.is_empty() && self.carried.is_none()
    }

    /// An unexposed node spoke about the unit at `now`.
    pub(super) fn heard(&mut self, node: &NodeId, now: TimeMs) {
        if let Some(spoke) = self.heard.get_mut(node) {
            *spoke = (*spoke).max(now);
        } else if self.heard.len() < MAX_SILENCE_BASELINE_NODES {
            self.heard.insert(node.clone(), now);
        }
    }

    /// Forgets the nodes it watches (a rollout that ended judges nothing more).
    pub(super) fn clear(&mut self) {
        self.heard.clear();
    }
}

/// A silence judgement as people read it (`GET /v1/rollouts/{id}`, `rollout status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceView {
    /// Silent canary nodes, of `watched` (ACKed, not in maintenance).
    pub silent: u64,
    pub watched: u64,
    /// The unexposed nodes compared with: silent, of watched; `None`: none ever (the plan's
    /// threshold alone decides).
    pub baseline_silent: Option<u64>,
    pub baseline_watched: Option<u64>,
    /// Silent canary nodes the baseline's rate explains: neither held for nor blamed.
    pub tolerated: u64,
    /// Above this many (and at the plan's threshold), silence is a hard signal.
    pub blame_above: u64,
}

/// The latest silence judgement of a rollout's current stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) struct SilenceJudgement {
    /// Silent canary nodes, of `watched` (ACKed, not in maintenance).
    pub(super) silent: u64,
    pub(super) watched: u64,
    /// The baseline it was set against, `(silent, watched)`; `None`: none ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) baseline: Option<(u64, u64)>,
    /// Silent canary nodes the baseline's rate explains: the stage neither holds for them nor
    /// blames the version.
    pub(super) tolerated: u64,
    /// The most silent canary nodes chance at the baseline's rate explains (see the module
    /// docs): above it, and at the plan's threshold, silence is a hard signal.
    pub(super) blame_above: u64,
}

impl SilenceJudgement {
    /// Judges `silent` of `watched` canary nodes against `baseline` (`(silent, watched)`).
    pub(super) fn of(silent: u64, watched: u64, baseline: Option<(u64, u64)>) -> Self {
        let (tolerated, blame_above) = match baseline {
            Some((baseline_silent, baseline_watched)) if baseline_watched > 0 => {
                // The baseline's rate by the rule of succession, `(s + 1) / (n + 2)`: a quiet
                // baseline still expects the odd silent node among many canary nodes.
                let expected = u128::from(watched) * (u128::from(baseline_silent) + 1)
                    / (u128::from(baseline_watched) + 2);
                let tolerated = u64::try_from(expected).unwrap_or(u64::MAX);
                let upper = binomial_upper_bound(baseline_silent, baseline_watched, SILENCE_ALPHA);
                let explained = binomial_quantile(watched, upper, 1.0 - SILENCE_ALPHA);
                (tolerated, explained.max(tolerated))
            }
            _ => (0, 0),
        };
        Self {
            silent,
            watched,
            baseline: baseline.filter(|(_, watched)| *watched > 0),
            tolerated,
            blame_above,
        }
    }

    /// As people read it; `None` before the first judgement.
    pub(super) fn view(&self) -> Option<SilenceView> {
        (self.watched > 0 || self.baseline.is_some()).then(|| SilenceView {
            silent: self.silent,
            watched: self.watched,
            baseline_silent: self.baseline.map(|(silent, _)| silent),
            baseline_watched: self.baseline.map(|(_, watched)| watched),
            tolerated: self.tolerated,
            blame_above: self.blame_above,
        })
    }

    /// Whether `silent` canary nodes are more than the baseline explains: the stage holds.
    pub(super) fn holds(&self, silent: u64) -> bool {
        silent > self.tolerated
    }

    /// Whether the silence blames the version at the plan's threshold `max` (`0`: never).
    pub(super) fn blames(&self, max: u64) -> bool {
        max > 0 && self.silent >= max && self.silent > self.blame_above
    }

    /// The baseline in a few words, for the numbers people read.
    pub(super) fn baseline_in_brief(&self) -> String {
        match self.baseline {
            Some((silent, watched)) => format!("unexposed: {silent} of {watched}"),
            None => "no unexposed node to compare with".to_owned(),
        }
    }

    /// The comparison, for a rollback's reason.
    pub(super) fn against(&self) -> String {
        match self.baseline {
            Some((silent, watched)) => format!(
                "{silent} of {watched} unexposed nodes silent, which explains up to {} of {} \
                 canary nodes",
                self.blame_above, self.watched
            ),
            None => "no unexposed node to compare with".to_owned(),
        }
    }
}

impl Rollout {
    /// Exposed nodes that ACKed and then said nothing while the unit's other nodes were
    /// heard for longer than `silence_ms` (`0`: silence is not watched).
    pub(super) fn silent_nodes(&self, silence_ms: u64) -> u64 {
        if silence_ms == 0 {
            return 0;
        }
        self.exposed
            .iter()
            .filter(|(_, exposure)| {
                exposure.acked
                    && !exposure.maintenance
                    && self.silent_since(exposure.last_report_ms, silence_ms)
            })
            .count() as u64
    }

    /// Whether a node that last spoke at `last_report_ms` is silent: the unit's nodes were
    /// heard for longer than `silence_ms` since it last spoke (or since hearing resumed, if
    /// later).
    pub(super) fn silent_since(&self, last_report_ms: TimeMs, silence_ms: u64) -> bool {
        let spoke_ms = last_report_ms.max(self.hearing_from_ms);
        silence_ms > 0 && self.heard_ms.saturating_sub(spoke_ms) > silence_ms
    }

    /// Judges the canary's silence against the baseline's (see the module docs), drops the
    /// baseline nodes that are no longer unexposed nodes in service, and records the result.
    pub(super) fn judge_silence(&mut self, silence_ms: u64, nodes: &LookupMap<NodeId, NodeState>) {
        let watched = self
            .exposed
            .iter()
            .filter(|(_, exposure)| exposure.acked && !exposure.maintenance)
            .count() as u64;
        let silent = self.silent_nodes(silence_ms);
        let exposed = &self.exposed;
        let mut hearing = std::mem::take(&mut self.baseline_hearing);
        hearing.heard.retain(|node, _| {
            !exposed.contains_key(node) && nodes.get(node).is_some_and(|state| !state.maintenance)
        });
        let baseline_watched = hearing.heard.len() as u64;
        let baseline = if baseline_watched > 0 {
            let baseline_silent = hearing
                .heard
                .values()
                .filter(|spoke| self.silent_since(**spoke, silence_ms))
                .count() as u64;
            hearing.carried = Some((baseline_silent, baseline_watched));
            hearing.carried
        } else {
            hearing.carried
        };
        self.baseline_hearing = hearing;
        self.silence = SilenceJudgement::of(silent, watched, baseline);
        self.canary.silent_nodes = silent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_silent_node_in_a_large_stage_is_what_the_fleet_shows() {
        // 5,000 canary nodes, one silent; 3 of 2,000 baseline nodes silent.
        let judgement = SilenceJudgement::of(1, 5_000, Some((3, 2_000)));
        assert_eq!(judgement.tolerated, 9);
        assert!(!judgement.holds(1));
        assert!(!judgement.blames(1));
        // Many more than the baseline explains: blamed.
        let judgement = SilenceJudgement::of(80, 5_000, Some((3, 2_000)));
        assert!(judgement.blames(1), "{judgement:?}");
    }

    #[test]
    fn a_small_canary_holds_for_one_silent_node_and_is_blamed_for_two() {
        let one = SilenceJudgement::of(1, 5, Some((0, 2_000)));
        assert!(one.holds(1));
        assert!(!one.blames(1), "{one:?}");
        let two = SilenceJudgement::of(2, 5, Some((0, 2_000)));
        assert!(two.blames(1), "{two:?}");
        // The plan's threshold still applies.
        assert!(!two.blames(3));
        assert!(!two.blames(0));
    }

    #[test]
    fn a_silent_baseline_explains_a_silent_canary() {
        // A reboot wave: a tenth of every group silent.
        let judgement = SilenceJudgement::of(10, 100, Some((200, 2_000)));
        assert!(!judgement.holds(10));
        assert!(!judgement.blames(1));
    }

    #[test]
    fn without_a_baseline_the_plans_threshold_decides() {
        let judgement = SilenceJudgement::of(1, 5_000, None);
        assert!(judgement.holds(1));
        assert!(judgement.blames(1));
        assert!(!SilenceJudgement::of(0, 5_000, None).blames(1));
    }

    proptest::proptest! {
        /// Like for like, exactly: a canary whose share of silent nodes is no larger than the
        /// baseline's is never blamed, and (up to half silent) never held either.
        #[test]
        fn a_canary_no_more_silent_than_the_baseline_is_never_blamed(
            watched in 1u64..20_000,
            baseline_watched in 1u64..2_000,
            baseline_share in 0.0f64..=1.0,
            canary_share in 0.0f64..=1.0,
            max in 1u64..5,
        ) {
            let baseline_silent = (baseline_share * baseline_watched as f64).floor() as u64;
            let rate = baseline_silent as f64 / baseline_watched as f64;
            let silent = (canary_share * rate * watched as f64).floor() as u64;
            let judgement =
                SilenceJudgement::of(silent, watched, Some((baseline_silent, baseline_watched)));
            proptest::prop_assert!(!judgement.blames(max), "{judgement:?}");
            if 2 * baseline_silent <= baseline_watched {
                proptest::prop_assert!(!judgement.holds(silent), "{judgement:?}");
            }
        }
    }

    /// The stated bound, by simulation: canary and baseline nodes fall silent at the same
    /// rate; the version is blamed in at most `2 * SILENCE_ALPHA` of the judgements.
    #[test]
    fn the_false_positive_rate_is_within_its_bound() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut uniform = move || {
            // xorshift64*: deterministic, no dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        };
        let trials = 4_000;
        for (rate, canary, baseline) in [
            (0.001, 5_000u64, 2_000u64),
            (0.01, 50, 2_000),
            (0.05, 500, 300),
        ] {
            let mut blamed = 0;
            for _ in 0..trials {
                let mut count = |n: u64| (0..n).filter(|_| uniform() < rate).count() as u64;
                let silent = count(canary);
                let baseline_silent = count(baseline);
                if SilenceJudgement::of(silent, canary, Some((baseline_silent, baseline))).blames(1)
                {
                    blamed += 1;
                }
            }
            let bound = 2.0 * SILENCE_ALPHA * trials as f64;
            // Allow the simulation's own noise: the bound plus four standard deviations.
            assert!(
                f64::from(blamed) <= bound + 4.0 * bound.sqrt(),
                "rate {rate}, {canary} canary, {baseline} baseline: {blamed} of {trials} blamed"
            );
        }
    }
}
