//! What the rules see: one JSON document, `input`, built here from failsmall's own types so
//! that the server and the offline check give the rules the same shape.
//!
//! ```text
//! input.action    "unit_create" | "unit_update" | "push" | "rollout_start" | "check"
//! input.request   { actor, role, skip_validation, override_quarantine, break_glass }
//! input.unit      { name, spec, declared: [keys written], collections: [...], validator } | null
//! input.plan      { name, soak_ms, stages: [{ name, select, percent, bake_ms, timeout_ms,
//!                   gates: [text], min_requests, hard_signals, gated, approval }] } | null
//! input.fleet     { source, nodes, labels: { label: [values] } }
//! input.analysis  `plan check`'s report over that fleet (exposure before the first gate,
//!                 worst-case time to rollback, label values per stage, power) | null
//! input.config    { build_labels: ["generation"], exposure_max_fraction, rollback_max_ms }
//! ```
//!
//! `unit.collections` lists the arrays the unit's schema declares, reached from the root
//! through `properties` (and `items` of a root array), each with its JSON pointer, the
//! `max_entries` limit the unit declares there and the schema's own `maxItems`, so a rule can
//! ask "is every list bounded?" without walking a JSON Schema in Rego.

use std::collections::BTreeSet;

use failsmall_core::domain::Node;
use failsmall_core::plan::Plan;
use failsmall_core::validate::UnitSpec;
use failsmall_sim::plan_check::PlanCheckReport;
use failsmall_sim::{PlanCheckOptions, check_plan_on_nodes};
use serde::Serialize;
use serde_json::{Value, json};

use crate::CodexError;

/// Labels whose values distinguish consumer builds by default (the 5 Dec lesson: one proxy
/// generation failed, the other did not).
pub const BUILD_LABELS_DEFAULT: &[&str] = &["generation"];
/// Most nodes exposed before the first gate can fail, as a share of the fleet (seed 004).
pub const EXPOSURE_MAX_FRACTION_DEFAULT: f64 = 0.05;
/// Longest worst-case time from first bad exposure to full rollback (seed 004).
pub const ROLLBACK_MAX_MS_DEFAULT: u64 = 10 * 60 * 1000;
/// Deepest schema nesting [`collections`] follows.
const SCHEMA_DEPTH_MAX: usize = 16;
/// Most collections listed for one unit.
const COLLECTIONS_MAX: usize = 256;

/// Where the rules run, and so which request they judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    UnitCreate,
    UnitUpdate,
    Push,
    RolloutStart,
    /// `failsmall codex check`, offline.
    Check,
}

/// Who asks, and with which overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestInput {
    pub actor: String,
    pub role: String,
    pub skip_validation: bool,
    pub override_quarantine: bool,
    /// Always false until break glass exists.
    pub break_glass: bool,
}

/// A unit as the rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitInput {
    pub name: String,
    pub spec: UnitSpec,
    /// The spec's keys as written (a default filled in by the parser is not "declared").
    pub declared: BTreeSet<String>,
    /// The server's validator command, if any.
    pub validator: Option<Value>,
}

impl UnitInput {
    /// `raw_spec` is the spec as written (JSON), to tell declared keys from defaults; `None`
    /// counts every key the parsed spec serialises as declared.
    pub fn new(name: &str, spec: &UnitSpec, raw_spec: Option<&Value>) -> Self {
        let declared = match raw_spec.and_then(Value::as_object) {
            Some(object) => object.keys().cloned().collect(),
            None => serde_json::to_value(spec)
                .ok()
                .and_then(|value| value.as_object().map(|o| o.keys().cloned().collect()))
                .unwrap_or_default(),
        };
        Self {
            name: name.to_owned(),
            spec: spec.clone(),
            declared,
            validator: None,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "spec": self.spec,
            "declared": self.declared,
            "collections": collections(&self.spec),
            "validator": self.validator,
        })
    }
}

/// The arrays a spec's schema declares, with the limits on each.
fn collections(spec: &UnitSpec) -> Vec<Value> {
    let mut found = Vec::new();
    if let Some(schema) = &spec.schema {
        walk_schema(schema, String::new(), 0, &mut found);
    }
    found
        .into_iter()
        .map(|(pointer, max_items)| {
            let max_entries = spec
                .max_entries
                .iter()
                .find(|limit| limit.path == pointer)
                .map(|limit| limit.max);
            json!({"pointer": pointer, "max_entries": max_entries, "max_items": max_items})
        })
        .collect()
}

fn walk_schema(schema: &Value, pointer: String, depth: usize, found: &mut Vec<(String, Value)>) {
    if depth > SCHEMA_DEPTH_MAX || found.len() >= COLLECTIONS_MAX {
        return;
    }
    let Some(object) = schema.as_object() else {
        return;
    };
    let is_array = match object.get("type") {
        Some(Value::String(kind)) => kind == "array",
        Some(Value::Array(kinds)) => kinds.iter().any(|k| k == "array"),
        _ => object.contains_key("items"),
    };
    if is_array {
        let max_items = object.get("maxItems").cloned().unwrap_or(Value::Null);
        found.push((pointer.clone(), max_items));
    }
    if let Some(Value::Object(properties)) = object.get("properties") {
        for (name, property) in properties {
            let escaped = name.replace('~', "~0").replace('/', "~1");
            walk_schema(property, format!("{pointer}/{escaped}"), depth + 1, found);
        }
    }
}

/// The fleet as the rules see it: its nodes' labels (and traffic weights, 1 when unknown).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetInput {
    /// `server` (registered nodes), or the fleet file's name.
    pub source: String,
    pub nodes: Vec<Node>,
    pub traffic_weight: Vec<f64>,
}

/// Thresholds the starter rules read; a team may set other ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleConfig {
    pub build_labels: Vec<String>,
    pub exposure_max_fraction: f64,
    pub rollback_max_ms: u64,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            build_labels: BUILD_LABELS_DEFAULT
                .iter()
                .map(|label| (*label).to_owned())
                .collect(),
            exposure_max_fraction: EXPOSURE_MAX_FRACTION_DEFAULT,
            rollback_max_ms: ROLLBACK_MAX_MS_DEFAULT,
        }
    }
}

/// Everything one evaluation judges.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub action: Action,
    pub request: RequestInput,
    pub unit: Option<UnitInput>,
    pub plan: Option<Plan>,
    pub fleet: FleetInput,
    pub config: RuleConfig,
}

impl Input {
    pub fn new(action: Action) -> Self {
        Self {
            action,
            request: RequestInput::default(),
            unit: None,
            plan: None,
            fleet: FleetInput::default(),
            config: RuleConfig::default(),
        }
    }

    /// The JSON document the rules see as `input`, with `plan check`'s analysis of the plan
    /// over the fleet.
    pub fn to_json(&self) -> Result<Value, CodexError> {
        let analysis = match &self.plan {
            Some(plan) => Some(self.analysis(plan)?),
            None => None,
        };
        let mut labels = serde_json::Map::new();
        for node in &self.fleet.nodes {
            for (key, value) in &node.labels {
                let entry = labels
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(values) = entry
                    && !values.iter().any(|v| v == value)
                {
                    values.push(Value::String(value.clone()));
                }
            }
        }
        for values in labels.values_mut() {
            if let Value::Array(values) = values {
                values.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
        Ok(json!({
            "action": self.action,
            "request": self.request,
            "unit": self.unit.as_ref().map(UnitInput::to_json),
            "plan": self.plan.as_ref().map(plan_json),
            "fleet": {
                "source": self.fleet.source,
                "nodes": self.fleet.nodes.len(),
                "labels": labels,
            },
            "analysis": analysis,
            "config": self.config,
        }))
    }

    fn analysis(&self, plan: &Plan) -> Result<PlanCheckReport, CodexError> {
        let options = PlanCheckOptions {
            unit: self
                .unit
                .as_ref()
                .map_or_else(|| PlanCheckOptions::default().unit, |u| u.name.clone()),
            ..PlanCheckOptions::default()
        };
        check_plan_on_nodes(
            plan,
            &self.fleet.nodes,
            &self.fleet.traffic_weight,
            &options,
        )
        .map_err(|error| CodexError::Analysis(error.to_string()))
    }
}

/// A plan in the rules' words: selectors as label → values, percent as a number 0..=100,
/// gates as the text the plan file wrote, and whether each stage can fail at all.
fn plan_json(plan: &Plan) -> Value {
    let stages: Vec<Value> = plan
        .stages
        .iter()
        .map(|stage| {
            json!({
                "name": stage.name,
                "select": stage.selector.labels,
                "percent": f64::from(stage.percent.basis_points) / 100.0,
                "bake_ms": stage.bake_ms,
                "timeout_ms": stage.timeout_ms,
                "gates": stage.gates.iter().map(|gate| gate.source.clone()).collect::<Vec<_>>(),
                "min_requests": stage.min_requests,
                "hard_signals": stage.hard_signals,
                "gated": stage.is_gated(),
                "approval": stage.approval,
            })
        })
        .collect();
    json!({
        "name": plan.name,
        "soak_ms": plan.soak_ms,
        "exclusive_nodes": plan.exclusive_nodes,
        "stages": stages,
    })
}
