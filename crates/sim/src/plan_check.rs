//! `plan check`: static analysis of a plan over a fleet, without simulating.
//!
//! It answers two questions: how much of the fleet (nodes and traffic) can a bad version reach
//! before the first gate able to fail, and how long can it take, at worst, from the first node
//! running a bad version to the last node back on the previous one. Node selection uses
//! `failsmall_core::select`, the very function the engine uses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use failsmall_core::domain::{Node, UnitName};
use failsmall_core::plan::{HardSignals, Plan, Stage};
use failsmall_core::select;
use serde::Serialize;

use crate::SimError;
use crate::fleet::FleetSpec;

/// Assumptions of the analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCheckOptions {
    /// Longest time for a desired version to reach and be applied on every node.
    pub propagation_ms: u64,
    /// How often nodes report health: a failure shows up at most one interval late.
    pub health_interval_ms: u64,
    /// The unit the plan would roll out (node buckets depend on it).
    pub unit: String,
    /// Seed for dealing the fleet's labels.
    pub fleet_seed: u64,
}

impl Default for PlanCheckOptions {
    fn default() -> Self {
        Self {
            propagation_ms: 5_000,
            health_interval_ms: 10_000,
            unit: "plan-check".to_owned(),
            fleet_seed: 0,
        }
    }
}

/// Limits a plan must respect; `None` is not checked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PlanCheckLimits {
    /// Largest share (0..=1) of nodes or of traffic exposed before the first gate can fail.
    pub exposure_fraction_max: Option<f64>,
    /// Longest worst-case time from first bad exposure to full rollback.
    pub rollback_ms_max: Option<u64>,
}

/// One stage's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageCheck {
    pub stage: String,
    /// Nodes this stage newly exposes.
    pub nodes_added: u64,
    /// Nodes the stage's own selection holds (some may be exposed by earlier stages).
    pub nodes_selected: u64,
    /// Nodes exposed once this stage is entered (this stage and all earlier ones).
    pub nodes_exposed: u64,
    pub nodes_exposed_fraction: f64,
    pub traffic_exposed_fraction: f64,
    /// Whether a gate or a hard signal of this stage can fail it.
    pub can_fail: bool,
    /// Worst case, for a bad version caught at this stage, from the first node running it
    /// to every node reverted; `None` when the stage cannot fail.
    pub rollback_worst_ms: Option<u64>,
    /// Label → the values of it among the nodes the stage's own selection holds (which builds,
    /// cohorts, regions a failure there can show on).
    pub label_values_selected: BTreeMap<String, BTreeSet<String>>,
    /// For a stage with a gate that reads the baseline and nodes of its own: canary requests
    /// its test needs to catch errors going 0.1% → 0.5% against its like-for-like baseline
    /// (the unexposed nodes of its selector, or its own nodes before the version, as much
    /// traffic as the canary).
    pub canary_requests_to_detect: Option<f64>,
    /// The same as time at the fleet's request rate (`requests_per_s` of a fleet file); `None`
    /// without one.
    pub detect_ms: Option<u64>,
    /// The traffic weight of the nodes this stage newly exposes (its canary).
    #[serde(skip)]
    pub canary_traffic: f64,
}

/// What a plan check can tell about the power of the first stage that can fail: how many
/// canary requests its `significant(...)` test needs to catch a reference regression (0.1% →
/// 0.5% errors) at the default level, given the canary's share of the fleet's traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerEstimate {
    pub stage: String,
    /// The canary's share of the traffic of canary and baseline together.
    pub canary_traffic_fraction: f64,
    /// `None`: the stage takes every node (no baseline), or the estimate is out of range.
    pub canary_requests_to_detect: Option<f64>,
    /// The stage's `min_requests`: below it no rate gate concludes.
    pub min_requests: u64,
}

/// What `plan check` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanCheckReport {
    pub plan: String,
    pub unit: String,
    pub fleet_nodes: u64,
    pub propagation_ms: u64,
    pub health_interval_ms: u64,
    pub stages: Vec<StageCheck>,
    /// Index of the first stage that can fail; `None` when no stage can.
    pub first_gated_stage: Option<usize>,
    /// Nodes exposed before the first gate can fail (every node the plan reaches when none can).
    pub exposed_nodes_before_gate: u64,
    pub exposed_nodes_before_gate_fraction: f64,
    pub exposed_traffic_before_gate_fraction: f64,
    /// Worst case from first bad exposure to full rollback when caught at the first gate-able
    /// stage; `None` when no stage can fail.
    pub rollback_worst_ms: Option<u64>,
    /// Whether a version this plan rolls out on this fleet could become the unit's stable
    /// version: some gated stage (see [`stage_can_fail`]) selects at least one node. The engine
    /// makes a version stable only after such a stage passed with a node that ACKed it.
    pub would_become_stable: bool,
    /// What looks wrong without breaking a limit, one sentence each: stages that expose no
    /// node of this fleet (they pass at once, so the plan has a wave fewer than it says), and a
    /// plan whose versions could never become stable on this fleet.
    pub warnings: Vec<String>,
    /// Label → every value of it in the fleet.
    pub fleet_label_values: BTreeMap<String, BTreeSet<String>>,
    /// The first stage that can fail, and how much traffic its test needs; `None` when no
    /// stage can fail.
    pub power: Option<PowerEstimate>,
}

/// Whether any hard signal of a stage is armed. The engine treats a threshold of 0 as off;
/// `u64::MAX` can never be reached either.
fn hard_signals_armed(signals: &HardSignals) -> bool {
    [
        signals.rejections_max,
        signals.crashes_max,
        signals.health_check_failures_max,
        signals.silent_nodes_max,
    ]
    .iter()
    .any(|max| *max > 0 && *max < u64::MAX)
}

/// Whether a bad version can fail `stage`: it has a gate or an armed hard signal.
pub fn stage_can_fail(stage: &Stage) -> bool {
    !stage.gates.is_empty() || hard_signals_armed(&stage.hard_signals)
}

/// Canary requests a stage's comparison with its baseline needs to catch the reference
/// regression ([`POWER_BASELINE_ERROR_RATE`] → [`POWER_CANARY_ERROR_RATE`]): against the
/// unexposed nodes of its selector (`baseline_traffic`), or, with none, its own nodes before
/// the version (as much traffic as the canary). `None` for a stage without such a gate or
/// without nodes of its own.
fn detection_requests(stage: &Stage, canary_traffic: f64, baseline_traffic: f64) -> Option<f64> {
    // A custom metric's gate (`custom.NAME`) reads what Prometheus answers: no error-rate
    // test whose power could be estimated.
    let tested = stage
        .gates
        .iter()
        .any(|gate| gate.reads_baseline() && !gate.reads_custom());
    if canary_traffic <= 0.0 || !tested {
        return None;
    }
    let baseline = if baseline_traffic > 0.0 {
        baseline_traffic
    } else {
        canary_traffic
    };
    failsmall_core::stats::canary_requests_to_detect(
        POWER_BASELINE_ERROR_RATE,
        POWER_CANARY_ERROR_RATE,
        canary_traffic / (canary_traffic + baseline),
        failsmall_core::gate::ALPHA_DEFAULT,
    )
}

/// Analyses `plan` over the fleet built from `fleet`.
pub fn check_plan(
    plan: &Plan,
    fleet: &FleetSpec,
    options: &PlanCheckOptions,
) -> Result<PlanCheckReport, SimError> {
    let built = fleet.build(options.fleet_seed)?;
    let mut report = check_plan_on_nodes(plan, &built.nodes, &built.traffic_weight, options)?;
    // Time to detect, at the fleet's request rate: a node of weight w serves w times
    // `requests_per_s`.
    for (check, stage) in report.stages.iter_mut().zip(&plan.stages) {
        let rate = check.canary_traffic * fleet.requests_per_s;
        check.detect_ms = check
            .canary_requests_to_detect
            .filter(|_| rate > 0.0)
            .map(|requests| (requests / rate * 1_000.0).ceil() as u64);
        if let Some(detect_ms) = check.detect_ms
            && detect_ms > stage.bake_ms
        {
            report.warnings.push(format!(
                "stage {:?} needs about {} of canary traffic to catch errors going 0.1% -> 0.5% (it takes {:.0} requests at {:.0} requests/s), longer than its bake of {}: a regression like that could pass it; lengthen its bake or give it more nodes",
                stage.name,
                failsmall_core::duration::format_ms(detect_ms),
                check.canary_requests_to_detect.unwrap_or(0.0),
                rate,
                failsmall_core::duration::format_ms(stage.bake_ms),
            ));
        }
    }
    Ok(report)
}

/// Analyses `plan` over given nodes (a real fleet, as a control plane knows it), each with its
/// traffic weight (same order; a missing weight counts 1). An empty fleet exposes nothing.
pub fn check_plan_on_nodes(
    plan: &Plan,
    nodes: &[Node],
    traffic_weight: &[f64],
    options: &PlanCheckOptions,
) -> Result<PlanCheckReport, SimError> {
    let unit = UnitName::new(options.unit.clone()).map_err(|error| SimError::Plan {
        source_name: plan.name.clone(),
        message: format!("unit for plan check: {error}"),
    })?;
    let weights: Vec<f64> = (0..nodes.len())
        .map(|index| traffic_weight.get(index).copied().unwrap_or(1.0))
        .collect();
    let fleet_nodes = nodes.len() as u64;
    let traffic_total: f64 = weights.iter().sum();
    let mut fleet_label_values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut label_values_selected = vec![BTreeMap::new(); plan.stages.len()];
    let mut selected_traffic = vec![0f64; plan.stages.len()];
    // First stage index at which each node is exposed, if any.
    let mut added_nodes = vec![0u64; plan.stages.len()];
    let mut added_traffic = vec![0f64; plan.stages.len()];
    let mut selected_nodes = vec![0u64; plan.stages.len()];
    let mut same_population_baseline = vec![0u64; plan.stages.len()];
    let mut same_population_traffic = vec![0f64; plan.stages.len()];
    for (node, weight) in nodes.iter().zip(weights.iter()) {
        let bucket = select::bucket(&unit, &node.id);
        for (key, value) in &node.labels {
            fleet_label_values
                .entry(key.clone())
                .or_default()
                .insert(value.clone());
        }
        for (((stage, count), values), traffic) in plan
            .stages
            .iter()
            .zip(selected_nodes.iter_mut())
            .zip(label_values_selected.iter_mut())
            .zip(selected_traffic.iter_mut())
        {
            if stage.selector.matches(&node.labels) && select::bucket_within(bucket, stage.percent)
            {
                *count += 1;
                *traffic += weight;
                let values: &mut BTreeMap<String, BTreeSet<String>> = values;
                for (key, value) in &node.labels {
                    values.entry(key.clone()).or_default().insert(value.clone());
                }
            }
        }
        let first = plan.stages.iter().position(|stage| {
            stage.selector.matches(&node.labels) && select::bucket_within(bucket, stage.percent)
        });
        // The stage's own population that is still unexposed while it runs: its like-for-like
        // baseline.
        for (index, ((stage, count), traffic)) in plan
            .stages
            .iter()
            .zip(same_population_baseline.iter_mut())
            .zip(same_population_traffic.iter_mut())
            .enumerate()
        {
            if stage.selector.matches(&node.labels) && first.is_none_or(|first| first > index) {
                *count += 1;
                *traffic += weight;
            }
        }
        if let Some(index) = first {
            if let Some(slot) = added_nodes.get_mut(index) {
                *slot += 1;
            }
            if let Some(slot) = added_traffic.get_mut(index) {
                *slot += weight;
            }
        }
    }
    let fraction = |part: f64, whole: f64| if whole > 0.0 { part / whole } else { 0.0 };
    let mut stages = Vec::with_capacity(plan.stages.len());
    let mut nodes_exposed = 0u64;
    let mut traffic_exposed = 0f64;
    for (
        ((((stage, nodes_added), traffic_added), nodes_selected), label_values_selected),
        baseline_traffic,
    ) in plan
        .stages
        .iter()
        .zip(added_nodes)
        .zip(added_traffic)
        .zip(selected_nodes)
        .zip(label_values_selected)
        .zip(same_population_traffic.iter().copied())
    {
        nodes_exposed += nodes_added;
        traffic_exposed += traffic_added;
        let can_fail = stage_can_fail(stage);
        let hold_ms = stage.timeout_ms.max(stage.bake_ms);
        let rollback_worst_ms = can_fail.then(|| {
            options
                .propagation_ms
                .saturating_add(hold_ms)
                .saturating_add(options.health_interval_ms)
                .saturating_add(options.propagation_ms)
        });
        stages.push(StageCheck {
            stage: stage.name.clone(),
            nodes_added,
            nodes_selected,
            nodes_exposed,
            nodes_exposed_fraction: fraction(nodes_exposed as f64, fleet_nodes as f64),
            traffic_exposed_fraction: fraction(traffic_exposed, traffic_total),
            can_fail,
            rollback_worst_ms,
            label_values_selected,
            canary_requests_to_detect: detection_requests(stage, traffic_added, baseline_traffic),
            detect_ms: None,
            canary_traffic: traffic_added,
        });
    }
    let would_become_stable = stages
        .iter()
        .any(|stage| stage.can_fail && stage.nodes_selected > 0);
    let mut warnings: Vec<String> = stages
        .iter()
        .filter(|stage| stage.nodes_added == 0)
        .map(|stage| {
            format!(
                "stage {:?} exposes no node of this fleet: it would pass at once, a wave fewer than the plan says; widen its percent or check its selector",
                stage.stage
            )
        })
        .collect();
    // A stage that leaves no node of its selector unexposed is compared with its own nodes
    // before the version: the first stage observes them for its bake before exposing them, a
    // later one uses their health while the stage before it ran. Without that time there is
    // no like-for-like baseline.
    for (index, (stage, baseline)) in plan
        .stages
        .iter()
        .zip(&same_population_baseline)
        .enumerate()
    {
        let gated = stage.gates.iter().any(|gate| gate.reads_baseline());
        let pre_period_ms = match index.checked_sub(1) {
            None => stage.bake_ms,
            Some(before) => plan.stages.get(before).map_or(0, |s| s.bake_ms),
        };
        if *baseline == 0 && gated && pre_period_ms == 0 {
            warnings.push(format!(
                "stage {:?} takes every node its selector matches and has no time to see them before the version ({}): its gates have no like-for-like baseline and compare with another population (the rest of the fleet), whose background error rate and latency may differ; give it a bake of its own, or add a wave below 100% of the same selector first",
                stage.name,
                if index == 0 { "it has no bake to observe them first".to_owned() } else { "the stage before it has no bake".to_owned() }
            ));
        }
    }
    // The simulator evaluates no PromQL: a gate on a custom metric has no reading there.
    for stage in &plan.stages {
        if let Some(gate) = stage.gates.iter().find(|gate| gate.reads_custom()) {
            warnings.push(format!(
                "stage {:?}: gate {:?} reads custom metrics, which only the plan's Prometheus source answers: `failsmall sim` has no reading of them and holds the stage, and no power is estimated for it",
                stage.name, gate.source
            ));
        }
    }
    if !would_become_stable {
        warnings.push(format!(
            "plan {:?}: no gated stage (one with a gate or a hard signal) selects a node of this fleet, so a version it rolls out would complete without becoming the unit's stable version; nodes registered later would not get it",
            plan.name
        ));
    }
    let first_gated_stage = stages.iter().position(|stage| stage.can_fail);
    // The first gated stage's comparison, like for like (see `detection_requests`).
    let power = first_gated_stage.and_then(|index| {
        let stage = plan.stages.get(index)?;
        let check = stages.get(index)?;
        let baseline = same_population_traffic.get(index).copied().unwrap_or(0.0);
        let baseline = if baseline > 0.0 {
            baseline
        } else {
            check.canary_traffic
        };
        Some(PowerEstimate {
            stage: stage.name.clone(),
            canary_traffic_fraction: fraction(
                check.canary_traffic,
                check.canary_traffic + baseline,
            ),
            canary_requests_to_detect: check.canary_requests_to_detect,
            min_requests: stage.min_requests,
        })
    });
    let headline = first_gated_stage
        .and_then(|index| stages.get(index))
        .or(stages.last());
    Ok(PlanCheckReport {
        plan: plan.name.clone(),
        unit: options.unit.clone(),
        fleet_nodes,
        propagation_ms: options.propagation_ms,
        health_interval_ms: options.health_interval_ms,
        first_gated_stage,
        exposed_nodes_before_gate: headline.map_or(0, |stage| stage.nodes_exposed),
        exposed_nodes_before_gate_fraction: headline.map_or(0.0, |s| s.nodes_exposed_fraction),
        exposed_traffic_before_gate_fraction: headline
            .map_or(0.0, |stage| stage.traffic_exposed_fraction),
        rollback_worst_ms: first_gated_stage
            .and_then(|index| stages.get(index))
            .and_then(|stage| stage.rollback_worst_ms),
        stages,
        would_become_stable,
        warnings,
        fleet_label_values,
        power,
    })
}

/// The reference regression of [`PowerEstimate`]: 0.1% errors on the baseline...
pub const POWER_BASELINE_ERROR_RATE: f64 = 0.001;
/// ... and 0.5% on the canary.
pub const POWER_CANARY_ERROR_RATE: f64 = 0.005;

fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{:.3}s", ms as f64 / 1e3)
    }
}

impl PlanCheckReport {
    /// The limits this plan breaks, one sentence each; empty when it respects them all.
    pub fn exceeds(&self, limits: &PlanCheckLimits) -> Vec<String> {
        let mut broken = Vec::new();
        if let Some(max) = limits.exposure_fraction_max {
            if self.exposed_nodes_before_gate_fraction > max {
                broken.push(format!(
                    "{:.2}% of nodes are exposed before the first gate can fail; the limit is {:.2}%",
                    self.exposed_nodes_before_gate_fraction * 100.0,
                    max * 100.0
                ));
            }
            if self.exposed_traffic_before_gate_fraction > max {
                broken.push(format!(
                    "{:.2}% of traffic is exposed before the first gate can fail; the limit is {:.2}%",
                    self.exposed_traffic_before_gate_fraction * 100.0,
                    max * 100.0
                ));
            }
        }
        if let Some(max_ms) = limits.rollback_ms_max {
            match self.rollback_worst_ms {
                Some(worst_ms) if worst_ms > max_ms => broken.push(format!(
                    "a bad version may take up to {} to roll back; the limit is {}",
                    seconds(worst_ms),
                    seconds(max_ms)
                )),
                Some(_) => {}
                None => broken.push(format!(
                    "no stage can fail, so nothing rolls a bad version back; the limit is {}",
                    seconds(max_ms)
                )),
            }
        }
        broken
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// A table for people, with the two headline answers first.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan {:?} for unit {:?} over {} nodes (propagation {}, health interval {})",
            self.plan,
            self.unit,
            self.fleet_nodes,
            seconds(self.propagation_ms),
            seconds(self.health_interval_ms)
        );
        match self
            .first_gated_stage
            .and_then(|index| self.stages.get(index))
        {
            Some(stage) => {
                let _ = writeln!(
                    out,
                    "exposed before the first gate can fail (stage {:?}): {} nodes = {:.2}% of nodes, {:.2}% of traffic",
                    stage.stage,
                    self.exposed_nodes_before_gate,
                    self.exposed_nodes_before_gate_fraction * 100.0,
                    self.exposed_traffic_before_gate_fraction * 100.0
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "NO stage can fail: a bad version reaches {} nodes = {:.2}% of nodes, {:.2}% of traffic",
                    self.exposed_nodes_before_gate,
                    self.exposed_nodes_before_gate_fraction * 100.0,
                    self.exposed_traffic_before_gate_fraction * 100.0
                );
            }
        }
        let worst = self
            .rollback_worst_ms
            .map_or_else(|| "never".to_owned(), seconds);
        let _ = writeln!(
            out,
            "worst case from first bad exposure to full rollback: {worst}"
        );
        if let Some(power) = &self.power {
            let requests = power.canary_requests_to_detect.map_or_else(
                || "no estimate (no baseline beside the canary)".to_owned(),
                |n| format!("about {n:.0} canary requests"),
            );
            let _ = writeln!(
                out,
                "power of stage {:?}: {requests} to catch errors going 0.1% -> 0.5% with significant(error_rate > baseline.error_rate) (canary {:.2}% of traffic)",
                power.stage,
                power.canary_traffic_fraction * 100.0
            );
        }
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>10} {:>9} {:>9} {:>9} {:>12} {:>10}",
            "stage", "added", "exposed", "nodes%", "traffic%", "can fail", "rollback", "detect"
        );
        for stage in &self.stages {
            let rollback = stage
                .rollback_worst_ms
                .map_or_else(|| "-".to_owned(), seconds);
            // Time to catch errors going 0.1% -> 0.5%, or the requests it takes without a
            // request rate.
            let detect = match (stage.detect_ms, stage.canary_requests_to_detect) {
                (Some(ms), _) => seconds(ms),
                (None, Some(requests)) => format!("{requests:.0} req"),
                (None, None) => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:<20} {:>8} {:>10} {:>8.2}% {:>8.2}% {:>9} {:>12} {:>10}",
                stage.stage,
                stage.nodes_added,
                stage.nodes_exposed,
                stage.nodes_exposed_fraction * 100.0,
                stage.traffic_exposed_fraction * 100.0,
                if stage.can_fail { "yes" } else { "no" },
                rollback,
                detect
            );
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }
}
