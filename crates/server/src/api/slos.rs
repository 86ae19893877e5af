//! SLOs: create, list, show (with burn rates and the error budget), delete; and the check
//! that keeps a rollout from starting while its unit's error budget is spent.

use failsmall_core::slo::{BURN_WINDOWS, SloSpec, SloStatus, format_window, parse_window_ms};

use super::*;

use failsmall_wire::requests::ReasonRequest;
use failsmall_wire::slos::CreateSloRequest;

fn invalid_slo(field: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_slo", message)
        .with_detail(json!({ "field": field }))
}

/// The SLO a request defines, checked.
fn slo_spec(request: CreateSloRequest) -> Result<SloSpec, ApiError> {
    text_field("description", &request.description)?;
    let unit = unit_name(&request.unit)?;
    let window_ms =
        parse_window_ms(&request.window).map_err(|e| invalid_slo("window", e.to_string()))?;
    if request.selector.len() > MAX_LABELS {
        return Err(invalid_slo(
            "selector",
            format!(
                "selector: {} labels; expected at most {MAX_LABELS}",
                request.selector.len()
            ),
        ));
    }
    if let Some((key, _)) = request
        .selector
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES)
    {
        return Err(invalid_slo(
            "selector",
            format!(
                "selector: label {key:?}: expected a key of 1 to {MAX_LABEL_BYTES} bytes and a value of at most {MAX_LABEL_BYTES}"
            ),
        ));
    }
    let spec = SloSpec {
        name: request.name,
        unit,
        selector: request.selector,
        target_percent: request.target_percent,
        window_ms,
        block_rollouts_when_exhausted: request.block_rollouts_when_exhausted,
        description: request.description,
        prometheus: request
            .prometheus
            .map(|queries| failsmall_core::slo::SloQueries {
                url: queries.url,
                good: queries.good,
                total: queries.total,
            }),
    };
    spec.validate().map_err(|e| {
        let field = match e {
            failsmall_core::slo::SloError::Name(_) => "name",
            failsmall_core::slo::SloError::Target(_) => "target_percent",
            failsmall_core::slo::SloError::Window(_) => "window",
            failsmall_core::slo::SloError::Prometheus { .. } => "prometheus",
        };
        invalid_slo(field, e.to_string())
    })?;
    Ok(spec)
}

/// An SLO and where it stands, as the API answers it.
pub(super) fn slo_json(spec: &SloSpec, status: &SloStatus) -> failsmall_wire::slos::Slo {
    let burn_rates = status
        .burn_rates
        .iter()
        .map(|(window, rate)| (window.as_str().to_owned(), *rate))
        .collect();
    failsmall_wire::slos::Slo {
        name: spec.name.clone(),
        unit: spec.unit.as_str().to_owned(),
        selector: spec.selector.clone(),
        target_percent: spec.target_percent,
        window: format_window(spec.window_ms),
        window_ms: spec.window_ms,
        block_rollouts_when_exhausted: spec.block_rollouts_when_exhausted,
        description: spec.description.clone(),
        prometheus: spec.prometheus.clone().map(Into::into),
        events_total: status.window.total,
        events_bad: status.window.bad,
        attained_percent: status.attained_percent,
        error_budget_remaining: status.error_budget_remaining,
        exhausted: status.exhausted,
        burn_rates,
        alerts: status.alerts.clone(),
    }
}

pub(super) async fn create_slo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::slos::Slo>), ApiError> {
    let request: CreateSloRequest = json_body(body)?;
    text_field("reason", &request.reason)?;
    let reason = request.reason.clone();
    let spec = slo_spec(request)?;
    let book = Arc::clone(&state.shared.slos);
    if book.len() >= crate::slo::SLOS_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit_reached",
            format!(
                "refused: the server keeps at most {} SLOs; delete one first",
                crate::slo::SLOS_MAX
            ),
        ));
    }
    let summary = format!(
        "SLO {}: {}% of requests good over {}{}{}",
        spec.name,
        spec.target_percent,
        format_window(spec.window_ms),
        if spec.block_rollouts_when_exhausted {
            ", blocks rollouts when the error budget is spent"
        } else {
            ""
        },
        if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        }
    );
    let (stored, actor) = (spec.clone(), caller.name.clone());
    db(&state, move |store| {
        let unit = stored.unit.to_string();
        Ok(store.create_slo(
            &stored,
            &NewChange {
                at_ms: now_ms(),
                actor: &actor,
                kind: "slo_created",
                unit: Some(&unit),
                version: None,
                reason: &summary,
                concerns: None,
                rollout: None,
                stage: None,
            },
        )?)
    })
    .await?;
    tracing::info!(slo = %spec.name, unit = %spec.unit, "slo created");
    book.insert(spec.clone());
    let status =
        failsmall_core::slo::status(&spec, &failsmall_core::slo::SloCounts::default(), now_ms());
    Ok((StatusCode::CREATED, axum::Json(slo_json(&spec, &status))))
}

pub(super) async fn list_slos(
    State(state): State<AppState>,
) -> axum::Json<failsmall_wire::slos::SloList> {
    let slos = state
        .shared
        .slos
        .statuses(None, now_ms())
        .iter()
        .map(|(spec, status)| slo_json(spec, status))
        .collect();
    axum::Json(failsmall_wire::slos::SloList { slos })
}

pub(super) async fn show_slo(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::slos::Slo>, ApiError> {
    let name = path_param(name)?;
    let (spec, status) = state
        .shared
        .slos
        .status(&name, now_ms())
        .ok_or_else(|| ApiError::not_found(format!("no SLO {name:?}")))?;
    Ok(axum::Json(slo_json(&spec, &status)))
}

pub(super) async fn delete_slo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::slos::SloDeleted>, ApiError> {
    let name = path_param(name)?;
    let request: ReasonRequest = if body.as_ref().is_ok_and(|b| b.is_empty()) {
        ReasonRequest::default()
    } else {
        json_body(body)?
    };
    text_field("reason", &request.reason)?;
    let unit = state
        .shared
        .slos
        .status(&name, now_ms())
        .map(|(spec, _)| spec.unit.to_string());
    let (deleted, actor) = (name.clone(), caller.name.clone());
    let reason = if request.reason.is_empty() {
        format!("SLO {name} deleted")
    } else {
        format!("SLO {name} deleted: {}", request.reason)
    };
    db(&state, move |store| {
        Ok(store.delete_slo(
            &deleted,
            &NewChange {
                at_ms: now_ms(),
                actor: &actor,
                kind: "slo_deleted",
                unit: unit.as_deref(),
                version: None,
                reason: &reason,
                concerns: None,
                rollout: None,
                stage: None,
            },
        )?)
    })
    .await?;
    state.shared.slos.remove(&name);
    Ok(axum::Json(failsmall_wire::slos::SloDeleted {
        deleted: name,
    }))
}

/// Refuses (409 `error_budget_exhausted`) the start of a rollout of `version` of `unit`
/// while an SLO of the unit that blocks rollouts has spent its error budget, unless the
/// version goes back to one that was stable (an undo), or an admin overrides it with a
/// reason (logged as `error_budget_overridden`). Rollbacks are commands on a running
/// rollout and never come here.
pub(super) async fn check_error_budget(
    state: &AppState,
    caller: &Caller,
    unit: &UnitName,
    version: &VersionHash,
    override_error_budget: bool,
    reason: &str,
) -> Result<(), ApiError> {
    if override_error_budget && caller.role != Some(Role::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin may override an exhausted error budget",
        ));
    }
    let at_ms = now_ms();
    let blocking = state.shared.slos.blocking(unit, at_ms);
    if blocking.is_empty() {
        return Ok(());
    }
    let going_back = state
        .shared
        .engine
        .read(|engine, _| {
            engine.stable(unit) == Some(*version)
                || engine.rollouts().any(|view| {
                    view.unit == *unit
                        && view.version == *version
                        && operator::was_stable(Some(&view))
                })
        })
        .await;
    if going_back {
        return Ok(());
    }
    let spent: Vec<String> = blocking
        .iter()
        .map(|(spec, status)| {
            format!(
                "SLO {} ({}% over {}) has {:.1}% of its error budget left",
                spec.name,
                spec.target_percent,
                format_window(spec.window_ms),
                status.error_budget_remaining * 100.0
            )
        })
        .collect();
    let names: Vec<&str> = blocking
        .iter()
        .map(|(spec, _)| spec.name.as_str())
        .collect();
    if !override_error_budget {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "error_budget_exhausted",
            format!(
                "refused: no rollout of unit {unit} starts while its error budget is spent: {}; \
                 wait for the budget to recover, roll back or undo to a stable version, or ask an \
                 admin to override (`--override-error-budget --reason ...`)",
                spent.join("; ")
            ),
        )
        .with_detail(json!({ "slos": names })));
    }
    if reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "reason: overriding an exhausted error budget needs a reason",
        ));
    }
    let (unit, version, actor) = (unit.to_string(), version.to_string(), caller.name.clone());
    let text = format!("error budget override: {}: {reason}", spent.join("; "));
    db(state, move |store| {
        Ok(store.record(&NewChange {
            at_ms,
            actor: &actor,
            kind: "error_budget_overridden",
            unit: Some(&unit),
            version: Some(&version),
            reason: &text,
            concerns: None,
            rollout: None,
            stage: None,
        })?)
    })
    .await?;
    Ok(())
}

/// `/metrics` lines for every SLO.
pub(super) fn metrics_text(state: &AppState) -> String {
    let statuses = state.shared.slos.statuses(None, now_ms());
    let mut text = String::new();
    let families: [(&str, &str); 5] = [
        (
            "failsmall_slo_burn_rate",
            "How fast an SLO spends its error budget over a window (1: exactly over the SLO window); absent without events.",
        ),
        (
            "failsmall_slo_error_budget_remaining",
            "Share of the SLO window's error budget left (1 untouched, 0 spent, below 0 overspent).",
        ),
        (
            "failsmall_slo_target_ratio",
            "The SLO's objective, as a ratio of good events.",
        ),
        (
            "failsmall_slo_events_total",
            "Events counted over the SLO window.",
        ),
        (
            "failsmall_slo_bad_events_total",
            "Bad events counted over the SLO window.",
        ),
    ];
    for (name, help) in families {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (spec, status) in &statuses {
            let slo = &spec.name;
            let unit = spec.unit.as_str();
            match name {
                "failsmall_slo_burn_rate" => {
                    for window in BURN_WINDOWS {
                        if let Some(rate) = status.burn_rate(window) {
                            text.push_str(&format!(
                                "{name}{{slo=\"{slo}\",unit=\"{unit}\",window=\"{}\"}} {rate}\n",
                                window.as_str()
                            ));
                        }
                    }
                }
                "failsmall_slo_error_budget_remaining" => text.push_str(&format!(
                    "{name}{{slo=\"{slo}\",unit=\"{unit}\"}} {}\n",
                    status.error_budget_remaining
                )),
                "failsmall_slo_target_ratio" => text.push_str(&format!(
                    "{name}{{slo=\"{slo}\",unit=\"{unit}\"}} {}\n",
                    spec.target_percent / 100.0
                )),
                "failsmall_slo_events_total" => text.push_str(&format!(
                    "{name}{{slo=\"{slo}\",unit=\"{unit}\"}} {}\n",
                    status.window.total
                )),
                _ => text.push_str(&format!(
                    "{name}{{slo=\"{slo}\",unit=\"{unit}\"}} {}\n",
                    status.window.bad
                )),
            }
        }
    }
    text
}

/// Counts accepted health samples (`unit`, requests, errors) of `node` for the SLOs that
/// cover them; the node's labels are read only when some SLO of the unit selects by label.
pub(super) async fn count_health(
    state: &AppState,
    node: &NodeId,
    samples: Vec<(UnitName, u64, u64)>,
    at_ms: u64,
) {
    if samples.is_empty() {
        return;
    }
    let book = Arc::clone(&state.shared.slos);
    let labels = if samples.iter().any(|(unit, _, _)| book.needs_labels(unit)) {
        let lookup = node.to_string();
        match db(state, move |store| Ok(store.node(&lookup)?)).await {
            Ok(found) => found.map(|record| record.labels),
            Err(error) => {
                tracing::warn!(%node, error = %error.message, "slo: node labels unreadable; its health counts only for SLOs without a selector");
                None
            }
        }
    } else {
        None
    };
    for (unit, requests, errors) in samples {
        book.record(&unit, labels.as_ref(), requests, errors, at_ms);
    }
}
