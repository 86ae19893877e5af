//! Rollouts: start, list, show, commands; the desired-state side of the agent protocol.

use super::*;

pub(super) fn step_error(error: StepError) -> ApiError {
    let message = match &error {
        // Said in the API's words (`paused`, `pause`), never the engine's enum names.
        StepError::Engine(EngineError::InvalidCommand {
            rollout,
            status,
            command,
            expected,
        }) => format!(
            "rollout {rollout} is {}; {} needs it to be {expected}",
            status.as_str(),
            command_word(*command)
        ),
        _ => error.to_string(),
    };
    match error {
        StepError::Engine(engine) => {
            let (status, code) = match engine {
                EngineError::UnknownRollout(_) => (StatusCode::NOT_FOUND, "not_found"),
                EngineError::UnknownNode(_) => (StatusCode::NOT_FOUND, "not_found"),
                EngineError::InvalidCommand { .. } => (StatusCode::CONFLICT, "invalid_command"),
                EngineError::Quarantined { .. } => (StatusCode::CONFLICT, "quarantined"),
                EngineError::QueueFull { .. } => (StatusCode::CONFLICT, "queue_full"),
                EngineError::NoApprovalPending { .. } => {
                    (StatusCode::CONFLICT, "no_approval_pending")
                }
                EngineError::SelfApproval { .. } => (StatusCode::FORBIDDEN, "self_approval"),
                EngineError::AlreadyApproved { .. } => (StatusCode::CONFLICT, "already_approved"),
                EngineError::EmptyPlan { .. }
                | EngineError::LimitReached { .. }
                | EngineError::InvalidBurnRate { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "refused")
                }
                EngineError::NotQuarantined { .. } => (StatusCode::NOT_FOUND, "not_quarantined"),
                EngineError::UnitBusy { .. } => (StatusCode::CONFLICT, "unit_busy"),
                EngineError::CannotRevert { .. } => (StatusCode::CONFLICT, "invalid_command"),
                EngineError::Frozen { .. } => (StatusCode::CONFLICT, "frozen"),
                EngineError::UnknownWindow { .. } => (StatusCode::NOT_FOUND, "not_found"),
                EngineError::WindowIdTaken { .. } => (StatusCode::CONFLICT, "conflict"),
                EngineError::InvalidWindow(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_window")
                }
            };
            ApiError::new(status, code, message)
        }
        StepError::Store(store) => ApiError::from(store),
        StepError::Serialize(_) | StepError::Task(_) => ApiError::internal(message),
    }
}

/// A command as the API spells it: `pause`, `rollback`, ...
pub(super) fn command_word(command: Command) -> String {
    serde_json::to_value(command)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

use failsmall_wire::requests::ReasonRequest;
use failsmall_wire::rollouts::{CommandRequest, CreateRolloutRequest, RolloutCommand};

pub(super) fn rollout_of(actions: &[Action]) -> Option<RolloutId> {
    actions.iter().find_map(|action| match action {
        Action::Changelog(entry) => Some(entry.rollout),
        Action::Notify { rollout, .. } => Some(*rollout),
        Action::SetDesired { .. } => None,
    })
}

pub(super) async fn create_rollout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::rollouts::Rollout>), ApiError> {
    let request: CreateRolloutRequest = json_body(body)?;
    let unit = unit_name(&request.unit)?;
    let version = version_hash(&request.version)?;
    text_field("reason", &request.reason)?;
    only_admin_overrides_quarantine(&caller, request.override_quarantine)?;
    windows::only_admin_overrides_freeze(&caller, request.override_freeze, &request.reason)?;
    let plan_file = request.plan_file.unwrap_or_else(|| "plan".to_owned());
    let plan = parse_plan(&plan_file, &request.plan)?;
    let (lookup_unit, lookup_version) = (unit.clone(), version.to_string());
    let record = db(&state, move |store| {
        store.version(lookup_unit.as_str(), &lookup_version)?;
        Ok(store.unit(lookup_unit.as_str())?)
    })
    .await?;
    let mut judgement = Judgement::new(CodexAction::RolloutStart, &caller, unit.as_str());
    (judgement.spec, judgement.plan) = (Some(record.spec), Some(plan.clone()));
    judgement.override_quarantine = request.override_quarantine;
    let warnings = state.judge(judgement).await?;
    super::slos::check_error_budget(
        &state,
        &caller,
        &unit,
        &version,
        request.override_error_budget,
        &request.reason,
    )
    .await?;
    let unit_text = unit.to_string();
    let event = Event::RolloutRequested {
        unit,
        version,
        plan,
        actor: caller.name.clone(),
        reason: request.reason,
        override_quarantine: request.override_quarantine,
        override_freeze: request.override_freeze,
    };
    let host = &state.shared.engine;
    let actions = host
        .apply(&state.shared.store, now_ms(), event, Cause::Nothing, None)
        .await
        .map_err(step_error)?;
    let id = match rollout_of(&actions) {
        Some(id) => Some(id),
        None => {
            host.read(|engine, _| engine.rollouts().last().map(|view| view.id))
                .await
        }
    };
    let view = match id {
        Some(id) => host.read(|engine, _| engine.rollout(id)).await,
        None => None,
    };
    if !warnings.is_empty() {
        let (actor, unit) = (caller.name.clone(), unit_text);
        db(&state, move |store| {
            crate::codex::record_warnings(store, &warnings, now_ms(), &actor, &unit)
        })
        .await?;
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(convert::rollout(view, "the rollout started")?),
    ))
}

pub(super) async fn list_rollouts(
    State(state): State<AppState>,
    query: Result<Query<page::PageQuery>, QueryRejection>,
) -> Result<axum::Json<failsmall_wire::rollouts::RolloutList>, ApiError> {
    let page = page::Page::from_query(query)?;
    // Newest first: the page after `after` holds older rollouts.
    let before = page.after_number()?.unwrap_or(u64::MAX);
    let fetch = usize::try_from(page.fetch()).unwrap_or(usize::MAX);
    let rows: Vec<_> = state
        .shared
        .engine
        .read(|engine, _| {
            let all: Vec<_> = engine.rollouts().collect();
            all.into_iter()
                .rev()
                .filter(|view| view.id.0 < before)
                .take(fetch)
                .collect()
        })
        .await;
    let (views, next) = page.split(rows, |view| view.id.0.to_string());
    Ok(axum::Json(failsmall_wire::rollouts::RolloutList {
        rollouts: views.into_iter().map(Into::into).collect(),
        next,
    }))
}

pub(super) async fn show_rollout(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::rollouts::Rollout>, ApiError> {
    let id = RolloutId(path_param(id)?);
    let view = state
        .shared
        .engine
        .read(|engine, _| engine.rollout(id))
        .await;
    view.map(|view| axum::Json(view.into()))
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))
}

/// The engine's command for the one the API names.
fn engine_command(command: RolloutCommand) -> Command {
    match command {
        RolloutCommand::Pause => Command::Pause,
        RolloutCommand::Resume => Command::Resume,
        RolloutCommand::Promote => Command::Promote,
        RolloutCommand::Abort => Command::Abort,
        RolloutCommand::Rollback => Command::Rollback,
    }
}

pub(super) async fn run_command(
    state: &AppState,
    caller: &Caller,
    id: u64,
    command: Command,
    reason: String,
) -> Result<axum::Json<failsmall_wire::rollouts::Rollout>, ApiError> {
    text_field("reason", &reason)?;
    let rollout = RolloutId(id);
    let host = &state.shared.engine;
    let status = host
        .read(|engine, _| engine.rollout(rollout).map(|view| view.status))
        .await;
    // Rolling back an aborted rollout reverts the nodes it left on its version.
    let event = if command == Command::Rollback && status == Some(RolloutStatus::Aborted) {
        Event::RevertAborted {
            rollout,
            actor: caller.name.clone(),
            reason,
        }
    } else {
        Event::Command {
            rollout,
            command,
            actor: caller.name.clone(),
            reason,
        }
    };
    host.apply(&state.shared.store, now_ms(), event, Cause::Nothing, None)
        .await
        .map_err(step_error)?;
    let view = host.read(|engine, _| engine.rollout(rollout)).await;
    Ok(axum::Json(convert::rollout(
        view,
        &format!("rollout {rollout}"),
    )?))
}

pub(super) async fn command_rollout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::rollouts::Rollout>, ApiError> {
    let id = path_param(id)?;
    let request: Value = json_body(body)?;
    // `approve` is no command here (the wire type has none): say where approvals go.
    if request.get("command").and_then(Value::as_str) == Some("approve") {
        return Err(ApiError::bad_request(
            "approvals go to /v1/rollouts/{id}/approve, which needs the approver role",
        ));
    }
    let request: CommandRequest = serde_json::from_value(request).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("body: {e}"),
        )
    })?;
    let command = engine_command(request.command);
    run_command(&state, &caller, id, command, request.reason).await
}

pub(super) async fn approve_rollout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::rollouts::Rollout>, ApiError> {
    let id = path_param(id)?;
    let empty = body.as_ref().is_ok_and(|bytes| bytes.is_empty());
    let request: ReasonRequest = if empty {
        ReasonRequest::default()
    } else {
        json_body(body)?
    };
    run_command(&state, &caller, id, Command::Approve, request.reason).await
}
