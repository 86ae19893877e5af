//! Units: create, list, show, edit, delete.

use super::*;

use failsmall_wire::units::{CreateUnitRequest, UpdateUnitRequest};

pub(super) fn only_admin_sets_validator(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == Some(Role::Admin) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "only an admin may set, change or remove a unit's validator command",
    )
    .with_detail(json!({"role": caller.role, "field": "validator"})))
}

/// Redeploying a quarantined version is an admin's decision.
pub(crate) fn only_admin_overrides_quarantine(
    caller: &Caller,
    override_quarantine: bool,
) -> Result<(), ApiError> {
    if !override_quarantine || caller.role == Some(Role::Admin) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "only an admin may override a quarantine",
    ))
}

pub(super) fn check_validator(validator: Option<&ValidatorCommand>) -> Result<(), ApiError> {
    let Some(validator) = validator else {
        return Ok(());
    };
    validator.check().map_err(|errors| {
        let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_validator",
            format!("validator command refused: {}", reasons.join("; ")),
        )
        .with_detail(json!({ "reasons": reasons }))
    })
}

pub(super) async fn list_units(
    State(state): State<AppState>,
    query: Result<Query<page::PageQuery>, QueryRejection>,
) -> Result<axum::Json<failsmall_wire::units::UnitList>, ApiError> {
    let page = page::Page::from_query(query)?;
    let (after, fetch) = (page.after.clone(), page.fetch());
    let rows = db(&state, move |store| {
        Ok(store.units_after(after.as_deref(), fetch)?)
    })
    .await?;
    let (units, next) = page.split(rows, |unit| unit.name.clone());
    let units: Vec<failsmall_wire::units::Unit> = units.into_iter().map(Into::into).collect();
    Ok(axum::Json(failsmall_wire::units::UnitList { units, next }))
}

pub(super) async fn create_unit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(body_limit): Extension<BodyLimit>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::units::Unit>), ApiError> {
    let raw_spec = raw_spec(&body);
    let request: CreateUnitRequest = json_body(body)?;
    let name = unit_name(&request.name)?;
    let spec = UnitSpec::from(request.spec.clone());
    let validator = request.validator.clone().map(ValidatorCommand::from);
    text_field("owner", &request.owner)?;
    text_field("description", &request.description)?;
    check_spec(&spec, body_limit)?;
    agent::check_desired_budget(&state, name.as_str(), &spec).await?;
    if validator.is_some() {
        only_admin_sets_validator(&caller)?;
    }
    check_validator(validator.as_ref())?;
    let plan = (request.plan.as_deref())
        .map(|plan| parse_plan(&unit_plan_file(name.as_str()), plan))
        .transpose()?;
    let mut judgement = Judgement::new(CodexAction::UnitCreate, &caller, name.as_str());
    (judgement.spec, judgement.raw_spec, judgement.plan) = (Some(spec.clone()), raw_spec, plan);
    judgement.validator = validator.as_ref().map(|v| json!(v));
    let warnings = state.judge(judgement).await?;
    let unit = db(&state, move |store| {
        let change = NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "unit_created",
            unit: Some(name.as_str()),
            version: None,
            reason: &request.description,
            concerns: None,
            rollout: None,
            stage: None,
        };
        let fields = UnitFields {
            spec: &spec,
            owner: &request.owner,
            description: &request.description,
            plan: request.plan.as_deref(),
            validator: ValidatorChange::Set(validator.as_ref()),
        };
        let unit = store.create_unit_with(name.as_str(), &fields, &change)?;
        crate::codex::record_warnings(store, &warnings, change.at_ms, &caller.name, name.as_str())?;
        Ok(unit)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(failsmall_wire::units::Unit::from(unit)),
    ))
}

pub(super) async fn show_unit(
    State(state): State<AppState>,
    unit: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::units::Unit>, ApiError> {
    let name = unit_name(&path_param(unit)?)?;
    let unit = db(&state, move |store| Ok(store.unit(name.as_str())?)).await?;
    Ok(axum::Json(failsmall_wire::units::Unit::from(unit)))
}

pub(super) async fn update_unit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(body_limit): Extension<BodyLimit>,
    unit: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::units::Unit>, ApiError> {
    let name = unit_name(&path_param(unit)?)?;
    let raw_spec = raw_spec(&body);
    let request: UpdateUnitRequest = json_body(body)?;
    let spec = UnitSpec::from(request.spec.clone());
    let validator: Option<Option<ValidatorCommand>> = request
        .validator
        .clone()
        .map(|validator| validator.map(ValidatorCommand::from));
    text_field("owner", &request.owner)?;
    text_field("description", &request.description)?;
    check_spec(&spec, body_limit)?;
    agent::check_desired_budget(&state, name.as_str(), &spec).await?;
    let mut plan = None;
    if let Some(Some(text)) = &request.plan {
        plan = Some(parse_plan(&unit_plan_file(name.as_str()), text)?);
    }
    if let Some(validator) = &validator {
        check_validator(validator.as_ref())?;
    }
    // A caller that is not an admin may send the validator back as it read it. Comparing
    // with the current one is safe: the update applies only at the revision the caller read.
    let keep_validator = match &validator {
        None => true,
        Some(_) if caller.role == Some(Role::Admin) => false,
        Some(validator) => {
            let lookup = name.clone();
            let current = db(&state, move |store| Ok(store.unit(lookup.as_str())?)).await?;
            if current.revision == request.revision && current.validator != *validator {
                only_admin_sets_validator(&caller)?;
            }
            true
        }
    };
    // The plan the unit will have: the one sent, or (absent) the one it has.
    if request.plan.is_none() && state.shared.codex.is_some() {
        let lookup = name.clone();
        let current = db(&state, move |store| Ok(store.unit(lookup.as_str())?)).await?;
        plan = (current.plan.as_deref())
            .and_then(|text| Plan::parse(&unit_plan_file(name.as_str()), text).ok());
    }
    let mut judgement = Judgement::new(CodexAction::UnitUpdate, &caller, name.as_str());
    (judgement.spec, judgement.raw_spec, judgement.plan) = (Some(spec.clone()), raw_spec, plan);
    judgement.validator = validator.as_ref().map(|v| json!(v));
    let warnings = state.judge(judgement).await?;
    let unit = db(&state, move |store| {
        let validator = match &validator {
            Some(validator) if !keep_validator => ValidatorChange::Set(validator.as_ref()),
            _ => ValidatorChange::Keep,
        };
        // An absent plan keeps the current one. Reading it apart from the update is safe: the
        // update applies only at the revision the caller read, so a plan changed since is a
        // 409 (and so is a diff below made from a unit changed since).
        let current = store.unit(name.as_str())?;
        let plan = match &request.plan {
            Some(plan) => plan.as_deref(),
            None => current.plan.as_deref(),
        };
        let fields = UnitFields {
            spec: &spec,
            owner: &request.owner,
            description: &request.description,
            plan,
            validator,
        };
        // The changelog says what changed, field by field.
        let reason = operator::unit_edit_reason(&current, &fields);
        let change = NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "unit_updated",
            unit: Some(name.as_str()),
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        let unit = store.update_unit_with(name.as_str(), request.revision, &fields, &change)?;
        crate::codex::record_warnings(store, &warnings, change.at_ms, &caller.name, name.as_str())?;
        Ok(unit)
    })
    .await?;
    Ok(axum::Json(failsmall_wire::units::Unit::from(unit)))
}
