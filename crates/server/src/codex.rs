//! The Codex on the control plane: every unit created or changed, every push and every
//! rollout requested is judged by the rules (`failsmall-codex`) before anything is stored.
//!
//! A deny refuses the request with 422 `codex_denied`, naming each rule, its sentence and its
//! link; a warn is recorded in the changelog (`codex_warning`, one entry per finding, with the
//! request's own changes when it has them). The rules see the unit, the plan, the fleet as
//! this server knows it (every registered node's labels) and `plan check`'s analysis of the
//! plan over that fleet.
//!
//! Modes (`failsmall server --codex`): `enforce` (the default of `failsmall server`), `warn`
//! (an adoption mode: every finding, deny or warn, is only recorded; nothing is refused) and
//! `off`. Break glass, the one way an admin will override a deny, does not exist yet: until
//! it does, no role overrides the Codex.

use std::path::PathBuf;
use std::str::FromStr;

use axum::http::StatusCode;
use failsmall_codex::{
    Action, Codex, CodexError, Finding, FleetInput, Input, RequestInput, Severity, UnitInput,
};
use failsmall_core::domain::{Node, NodeId};
use failsmall_core::plan::Plan;
use failsmall_core::validate::UnitSpec;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::store::{NewChange, Store};

/// Most registered nodes the rules see (the fleet's labels and `plan check`'s analysis).
pub const FLEET_NODES_MAX: u32 = 100_000;
/// The changelog kind of a warn finding.
pub const WARNING_KIND: &str = "codex_warning";

/// What the server does with the Codex's findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodexMode {
    /// A deny refuses the request (422); a warn is recorded.
    Enforce,
    /// Every finding is recorded in the changelog as a warning; nothing is refused.
    Warn,
    /// The Codex is not consulted.
    #[default]
    Off,
}

impl FromStr for CodexMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "enforce" => Ok(CodexMode::Enforce),
            "warn" => Ok(CodexMode::Warn),
            "off" => Ok(CodexMode::Off),
            other => Err(format!(
                "{other:?}: expected enforce, warn or off (the Codex's mode)"
            )),
        }
    }
}

/// How the server loads the Codex: its mode and the team rule directories added to the
/// starter rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CodexConfig {
    pub mode: CodexMode,
    pub dirs: Vec<PathBuf>,
}

impl CodexConfig {
    /// The starter Codex, enforced.
    pub fn enforce() -> Self {
        Self {
            mode: CodexMode::Enforce,
            dirs: Vec::new(),
        }
    }
}

/// The loaded rules and what to do with their findings.
#[derive(Debug)]
pub struct CodexGate {
    codex: Codex,
    mode: CodexMode,
}

impl CodexGate {
    /// `None` when the mode is off. Team rules that do not load (or whose tests fail) stop
    /// the server from starting, with the file named.
    pub fn load(config: &CodexConfig) -> Result<Option<Self>, CodexError> {
        if config.mode == CodexMode::Off {
            return Ok(None);
        }
        Ok(Some(Self {
            codex: Codex::load(&config.dirs)?,
            mode: config.mode,
        }))
    }
}

/// One request to judge, owned so it can move to a blocking thread.
#[derive(Debug, Clone)]
pub(crate) struct Judgement {
    pub action: Action,
    pub actor: String,
    pub role: String,
    pub unit: String,
    pub spec: Option<UnitSpec>,
    /// The spec as the request wrote it (to tell declared keys from defaults).
    pub raw_spec: Option<Value>,
    pub validator: Option<Value>,
    pub plan: Option<Plan>,
    pub skip_validation: bool,
    pub override_quarantine: bool,
}

impl Judgement {
    pub fn new(action: Action, caller: &Caller, unit: &str) -> Self {
        let role = caller
            .role
            .and_then(|role| serde_json::to_value(role).ok())
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default();
        Self {
            action,
            actor: caller.name.clone(),
            role,
            unit: unit.to_owned(),
            spec: None,
            raw_spec: None,
            validator: None,
            plan: None,
            skip_validation: false,
            override_quarantine: false,
        }
    }
}

/// The registered nodes, as the rules see the fleet.
fn fleet(store: &Store) -> Result<FleetInput, ApiError> {
    // Every node, page by page: a rule that sees part of the fleet judges wrongly.
    let records = store.all_nodes(FLEET_NODES_MAX)?;
    let nodes = records
        .into_iter()
        .filter_map(|record| {
            NodeId::new(record.id).ok().map(|id| Node {
                id,
                labels: record.labels,
            })
        })
        .collect();
    Ok(FleetInput {
        source: "server".to_owned(),
        nodes,
        traffic_weight: Vec::new(),
    })
}

/// Judges `judgement` (call on a blocking thread: it reads the store and runs the rules). A
/// deny in enforce mode is the 422 to answer; otherwise the findings to record as warnings.
pub(crate) fn judge(
    gate: &CodexGate,
    store: &Store,
    judgement: Judgement,
) -> Result<Vec<Finding>, ApiError> {
    let mut input = Input::new(judgement.action);
    input.request = RequestInput {
        actor: judgement.actor,
        role: judgement.role,
        skip_validation: judgement.skip_validation,
        override_quarantine: judgement.override_quarantine,
        break_glass: false,
    };
    if let Some(spec) = &judgement.spec {
        let mut unit = UnitInput::new(&judgement.unit, spec, judgement.raw_spec.as_ref());
        unit.validator = judgement.validator;
        input.unit = Some(unit);
    }
    input.plan = judgement.plan;
    input.fleet = fleet(store)?;
    let findings = gate
        .codex
        .evaluate(&input)
        .map_err(|error| ApiError::internal(format!("the Codex could not judge: {error}")))?;
    let denied: Vec<&Finding> = findings
        .iter()
        .filter(|finding| finding.severity == Severity::Deny)
        .collect();
    if gate.mode == CodexMode::Enforce && !denied.is_empty() {
        let lines: Vec<String> = denied.iter().map(|finding| finding.one_line()).collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "codex_denied",
            format!("refused by the Codex: {}", lines.join("; ")),
        )
        .with_detail(json!({ "findings": findings })));
    }
    Ok(findings)
}

/// Records each finding as a `codex_warning` changelog entry.
pub(crate) fn record_warnings(
    store: &Store,
    findings: &[Finding],
    at_ms: u64,
    actor: &str,
    unit: &str,
) -> Result<(), ApiError> {
    for finding in findings {
        let reason = finding.one_line();
        store.record(&NewChange {
            at_ms,
            actor,
            kind: WARNING_KIND,
            unit: Some(unit),
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        })?;
    }
    Ok(())
}
