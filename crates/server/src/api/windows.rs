//! Freezes and maintenance windows: list (viewers), create, lift or end (admins). Each is an
//! engine step committed with its changelog row (`freeze_created`, `freeze_lifted`,
//! `maintenance_created`, `maintenance_ended`, the admin as its actor) in one transaction.
//!
//! Wire shapes (times RFC 3339, days `mon`..`sun`, times of day `HH:MM`):
//!
//! ```json
//! POST /v1/freezes
//! {"scope": {"kind": "global"} | {"kind": "unit", "unit": "NAME"}
//!           | {"kind": "nodes", "selector": {"region": ["eu"]}},
//!  "window": {"kind": "once", "from": "2026-12-24T00:00:00Z", "until": "2026-12-27T00:00:00Z"}
//!          | {"kind": "weekly", "days": ["fri"], "start": "16:00", "end": "24:00",
//!             "time_zone": "Europe/Paris"},
//!  "reason": "holiday change freeze"}
//! POST /v1/freezes/now        {"reason": "incident 42"}   (global, from now until lifted)
//! POST /v1/freezes/{id}/lift  {"reason": "..."}
//! POST /v1/maintenance        {"selector": {"rack": ["r1"]}, "from": "...", "until": "...",
//!                              "reason": "kernel upgrade"}   (`from` defaults to now)
//! POST /v1/maintenance/{id}/end {"reason": "..."}
//! ```

use std::collections::BTreeMap;

use failsmall_core::freeze::{
    Day, Freeze, FreezeScope, Maintenance, Window, WindowKind, describe_selector, parse_minute,
    parse_rfc3339_ms,
};
use failsmall_core::plan::Selector;

use super::*;
use failsmall_wire::requests::{ReasonRequest, RequiredReasonRequest};

use failsmall_wire::windows::{
    CreateFreezeRequest, CreateMaintenanceRequest, FreezeScope as ScopeWire,
    FreezeWindow as WindowWire,
};

fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_window",
        format!("{field}: {message}"),
    )
    .with_detail(json!({"field": field}))
}

fn instant(field: &str, text: &str) -> Result<u64, ApiError> {
    parse_rfc3339_ms(text).ok_or_else(|| {
        invalid(
            field,
            format!("{text:?} is not an RFC 3339 time, e.g. 2026-12-24T00:00:00Z"),
        )
    })
}

fn reason_required(what: &str, reason: &str) -> Result<(), ApiError> {
    text_field("reason", reason)?;
    if reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason_required",
            format!("reason is empty; {what} needs a reason for the changelog"),
        ));
    }
    Ok(())
}

fn window_of(wire: WindowWire, now: u64) -> Result<Window, ApiError> {
    let window = match wire {
        WindowWire::Once { from, until } => Window::Once {
            from_ms: from
                .as_deref()
                .map(|text| instant("window.from", text))
                .transpose()?
                .unwrap_or(now),
            until_ms: until
                .as_deref()
                .map(|text| instant("window.until", text))
                .transpose()?,
        },
        WindowWire::Weekly {
            days,
            start,
            end,
            time_zone,
        } => {
            let days = days
                .iter()
                .map(|day| {
                    Day::parse(day.as_str()).ok_or_else(|| {
                        invalid(
                            "window.days",
                            format!("{:?}: expected mon, tue, ... sun", day.as_str()),
                        )
                    })
                })
                .collect::<Result<Vec<Day>, ApiError>>()?;
            let minute = |field: &str, text: &str| {
                parse_minute(text).ok_or_else(|| {
                    invalid(field, format!("{text:?}: expected HH:MM, 00:00 to 24:00"))
                })
            };
            Window::Weekly {
                days,
                start_minute: minute("window.start", &start)?,
                end_minute: minute("window.end", &end)?,
                time_zone,
            }
        }
    };
    window
        .validate()
        .map_err(|error| invalid("window", error))?;
    Ok(window)
}

fn selector_of(field: &str, labels: BTreeMap<String, Vec<String>>) -> Result<Selector, ApiError> {
    let selector = Selector { labels };
    failsmall_core::freeze::validate_selector(&selector).map_err(|error| invalid(field, error))?;
    Ok(selector)
}

fn freeze_json(freeze: &Freeze, now: u64) -> failsmall_wire::windows::Freeze {
    failsmall_wire::windows::Freeze {
        id: freeze.id,
        scope: freeze.scope.clone().into(),
        window: freeze.window.clone().into(),
        describe: format!("{}, {}", freeze.scope.describe(), freeze.window.describe()),
        active: freeze.window.contains(now),
        reason: freeze.reason.clone(),
        actor: freeze.actor.clone(),
        created: rfc3339_from_ms(freeze.created_ms),
    }
}

fn maintenance_json(maintenance: &Maintenance, now: u64) -> failsmall_wire::windows::Maintenance {
    failsmall_wire::windows::Maintenance {
        id: maintenance.id,
        selector: maintenance.selector.labels.clone(),
        describe: format!(
            "nodes {}, {}",
            describe_selector(&maintenance.selector),
            maintenance.window().describe()
        ),
        from: rfc3339_from_ms(maintenance.from_ms),
        until: rfc3339_from_ms(maintenance.until_ms),
        active: maintenance.window().contains(now),
        reason: maintenance.reason.clone(),
        actor: maintenance.actor.clone(),
        created: rfc3339_from_ms(maintenance.created_ms),
    }
}

fn change(
    caller: &Caller,
    at_ms: u64,
    kind: &str,
    unit: Option<String>,
    reason: String,
) -> ChangeRow {
    ChangeRow {
        at_ms,
        actor: caller.name.clone(),
        kind: kind.to_owned(),
        unit,
        version: None,
        reason,
        concerns: None,
        rollout: None,
        stage: None,
    }
}

/// Applies a window event with its changelog row. The id was read just before: when another
/// window took it meanwhile, the step is tried once more with the next one.
async fn apply_window(
    state: &AppState,
    now: u64,
    make: impl Fn(u64) -> (Event, ChangeRow),
) -> Result<u64, ApiError> {
    let host = &state.shared.engine;
    let mut last = None;
    for _ in 0..2 {
        let id = host.read(|engine, _| engine.next_window_id()).await;
        let (event, row) = make(id);
        match host
            .apply(&state.shared.store, now, event, Cause::Nothing, Some(row))
            .await
        {
            Ok(_) => return Ok(id),
            Err(StepError::Engine(EngineError::WindowIdTaken { .. })) => {
                last = Some(id);
            }
            Err(error) => return Err(step_error(error)),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!(
            "window id {} was taken twice by concurrent requests; try again",
            last.unwrap_or_default()
        ),
    ))
}

async fn create_freeze_with(
    state: &AppState,
    caller: &Caller,
    scope: FreezeScope,
    window: Window,
    reason: String,
    now: u64,
) -> Result<(StatusCode, axum::Json<failsmall_wire::windows::Freeze>), ApiError> {
    let unit = match &scope {
        FreezeScope::Unit { unit } => Some(unit.to_string()),
        _ => None,
    };
    let id = apply_window(state, now, |id| {
        let freeze = Freeze {
            id,
            scope: scope.clone(),
            window: window.clone(),
            reason: reason.clone(),
            actor: caller.name.clone(),
            created_ms: now,
        };
        let text = format!(
            "freeze {id} ({}, {}): {reason}",
            scope.describe(),
            window.describe()
        );
        (
            Event::FreezeCreated { freeze },
            change(caller, now, "freeze_created", unit.clone(), text),
        )
    })
    .await?;
    let freeze = state
        .shared
        .engine
        .read(|engine, _| engine.windows().freezes.get(&id).cloned())
        .await;
    // Lifted meanwhile: the answer is the freeze as it was made.
    let freeze = freeze.unwrap_or(Freeze {
        id,
        scope,
        window,
        reason,
        actor: caller.name.clone(),
        created_ms: now,
    });
    Ok((StatusCode::CREATED, axum::Json(freeze_json(&freeze, now))))
}

/// `POST /v1/freezes`.
pub(super) async fn create_freeze(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::windows::Freeze>), ApiError> {
    let request: CreateFreezeRequest = json_body(body)?;
    reason_required("a freeze", &request.reason)?;
    let now = now_ms();
    let scope = match request.scope {
        ScopeWire::Global => FreezeScope::Global,
        ScopeWire::Unit { unit } => FreezeScope::Unit {
            unit: unit_name(&unit)?,
        },
        ScopeWire::Nodes { selector } => FreezeScope::Nodes {
            selector: selector_of("scope.selector", selector)?,
        },
    };
    let window = window_of(request.window, now)?;
    create_freeze_with(&state, &caller, scope, window, request.reason, now).await
}

/// `POST /v1/freezes/now`: stop the line — a global freeze from now until lifted.
pub(super) async fn freeze_now(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::windows::Freeze>), ApiError> {
    let request: RequiredReasonRequest = json_body(body)?;
    reason_required("stopping the line", &request.reason)?;
    let now = now_ms();
    let window = Window::Once {
        from_ms: now,
        until_ms: None,
    };
    create_freeze_with(
        &state,
        &caller,
        FreezeScope::Global,
        window,
        request.reason,
        now,
    )
    .await
}

fn optional_reason(body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    if body.as_ref().is_ok_and(|bytes| bytes.is_empty()) {
        return Ok(String::new());
    }
    let request: ReasonRequest = optional_json_body(body)?;
    text_field("reason", &request.reason)?;
    Ok(request.reason)
}

/// `POST /v1/freezes/{id}/lift`.
pub(super) async fn lift_freeze(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::windows::FreezeLifted>, ApiError> {
    let id = path_param(id)?;
    let reason = optional_reason(body)?;
    let now = now_ms();
    let host = &state.shared.engine;
    let Some(freeze) = host
        .read(|engine, _| engine.windows().freezes.get(&id).cloned())
        .await
    else {
        return Err(window_gone(&state, WindowKind::Freeze, id).await);
    };
    let unit = match &freeze.scope {
        FreezeScope::Unit { unit } => Some(unit.to_string()),
        _ => None,
    };
    let text = format!(
        "freeze {id} ({}, {}: {}) lifted{}",
        freeze.scope.describe(),
        freeze.window.describe(),
        freeze.reason,
        if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        }
    );
    let row = change(&caller, now, "freeze_lifted", unit, text);
    let step = host
        .apply(
            &state.shared.store,
            now,
            Event::FreezeLifted { id },
            Cause::Nothing,
            Some(row),
        )
        .await;
    if let Err(error) = step {
        return ended_meanwhile(step_error(error), WindowKind::Freeze, id, &state).await;
    }
    Ok(axum::Json(failsmall_wire::windows::FreezeLifted {
        id,
        lifted: true,
    }))
}

/// `GET /v1/freezes`: every freeze kept (holding now or later), with whether it holds now.
pub(super) async fn list_freezes(
    State(state): State<AppState>,
) -> axum::Json<failsmall_wire::windows::FreezeList> {
    let now = now_ms();
    let freezes = state
        .shared
        .engine
        .read(|engine, _| {
            engine
                .windows()
                .freezes
                .values()
                .map(|freeze| freeze_json(freeze, now))
                .collect()
        })
        .await;
    axum::Json(failsmall_wire::windows::FreezeList { freezes })
}

/// `POST /v1/maintenance`.
pub(super) async fn create_maintenance(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::windows::Maintenance>), ApiError> {
    let request: CreateMaintenanceRequest = json_body(body)?;
    reason_required("a maintenance window", &request.reason)?;
    let now = now_ms();
    let selector = selector_of("selector", request.selector)?;
    let from_ms = request
        .from
        .as_deref()
        .map(|text| instant("from", text))
        .transpose()?
        .unwrap_or(now);
    let until_ms = instant("until", &request.until)?;
    let probe = Maintenance {
        id: 1,
        selector: selector.clone(),
        from_ms,
        until_ms,
        reason: request.reason.clone(),
        actor: caller.name.clone(),
        created_ms: now,
    };
    probe
        .validate()
        .map_err(|error| invalid("maintenance", error))?;
    let id = apply_window(&state, now, |id| {
        let maintenance = Maintenance {
            id,
            ..probe.clone()
        };
        let text = format!(
            "maintenance {id} (nodes {}, {}): {}",
            describe_selector(&maintenance.selector),
            maintenance.window().describe(),
            maintenance.reason
        );
        (
            Event::MaintenanceCreated { maintenance },
            change(&caller, now, "maintenance_created", None, text),
        )
    })
    .await?;
    let maintenance = state
        .shared
        .engine
        .read(|engine, _| engine.windows().maintenance.get(&id).cloned())
        .await;
    // Ended meanwhile: the answer is the window as it was made.
    let maintenance = maintenance.unwrap_or(Maintenance { id, ..probe });
    Ok((
        StatusCode::CREATED,
        axum::Json(maintenance_json(&maintenance, now)),
    ))
}

/// A window `id` of `kind` that is not open: 409 `already_ended` when the engine remembers it
/// ending (by its `until`, or lifted or ended early), 404 otherwise.
async fn window_gone(state: &AppState, kind: WindowKind, id: u64) -> ApiError {
    let ended = state
        .shared
        .engine
        .read(|engine, _| engine.windows().ended.get(&id).copied())
        .await;
    let (what, list) = match kind {
        WindowKind::Freeze => ("freeze", "failsmall freeze list"),
        WindowKind::Maintenance => ("maintenance window", "failsmall maintenance list"),
    };
    match ended {
        Some(ended) if ended.kind == kind => ApiError::new(
            StatusCode::CONFLICT,
            "already_ended",
            format!(
                "{what} {id} already ended at {} ({}); the changelog has it",
                rfc3339_from_ms(ended.ended_ms),
                if ended.early {
                    "ended early by request"
                } else {
                    "its end time"
                }
            ),
        )
        .with_detail(json!({"id": id, "ended": rfc3339_from_ms(ended.ended_ms)})),
        _ => ApiError::not_found(format!(
            "no {what} {id} (ended ones are in the changelog); see `{list}`"
        )),
    }
}

/// A step that found window `id` gone although it was open when read: it ended meanwhile.
async fn ended_meanwhile<T>(
    error: ApiError,
    kind: WindowKind,
    id: u64,
    state: &AppState,
) -> Result<T, ApiError> {
    if error.status == StatusCode::NOT_FOUND {
        return Err(window_gone(state, kind, id).await);
    }
    Err(error)
}

/// `POST /v1/maintenance/{id}/end`.
pub(super) async fn end_maintenance(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::windows::MaintenanceEnded>, ApiError> {
    let id = path_param(id)?;
    let reason = optional_reason(body)?;
    let now = now_ms();
    let host = &state.shared.engine;
    let Some(maintenance) = host
        .read(|engine, _| engine.windows().maintenance.get(&id).cloned())
        .await
    else {
        return Err(window_gone(&state, WindowKind::Maintenance, id).await);
    };
    let text = format!(
        "maintenance {id} (nodes {}) ended early{}",
        describe_selector(&maintenance.selector),
        if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        }
    );
    let row = change(&caller, now, "maintenance_ended", None, text);
    let step = host
        .apply(
            &state.shared.store,
            now,
            Event::MaintenanceEnded { id },
            Cause::Nothing,
            Some(row),
        )
        .await;
    if let Err(error) = step {
        return ended_meanwhile(step_error(error), WindowKind::Maintenance, id, &state).await;
    }
    Ok(axum::Json(failsmall_wire::windows::MaintenanceEnded {
        id,
        ended: true,
    }))
}

/// `GET /v1/maintenance`: every maintenance window kept, with whether it holds now.
pub(super) async fn list_maintenance(
    State(state): State<AppState>,
) -> axum::Json<failsmall_wire::windows::MaintenanceList> {
    let now = now_ms();
    let windows = state
        .shared
        .engine
        .read(|engine, _| {
            engine
                .windows()
                .maintenance
                .values()
                .map(|maintenance| maintenance_json(maintenance, now))
                .collect()
        })
        .await;
    axum::Json(failsmall_wire::windows::MaintenanceList {
        maintenance: windows,
    })
}

/// A freeze override on a push or a rollout start is an admin's decision, with a reason.
pub(crate) fn only_admin_overrides_freeze(
    caller: &Caller,
    override_freeze: bool,
    reason: &str,
) -> Result<(), ApiError> {
    if !override_freeze {
        return Ok(());
    }
    if caller.role != Some(Role::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin may override a freeze",
        ));
    }
    reason_required("overriding a freeze", reason)
}
