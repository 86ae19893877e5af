//! Versions: push (validate, store, sign), list, get, diff.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PushQuery {
    message: String,
    /// The head version the pusher read; a different head is a conflict.
    parent: Option<String>,
    #[serde(default)]
    skip_validation: bool,
    /// Admin only: roll out during a freeze; the message is the reason (logged).
    #[serde(default)]
    override_freeze: bool,
    /// An admin starts the push's rollout although its unit's error budget is spent (the
    /// message is the reason).
    #[serde(default)]
    override_error_budget: bool,
}

pub(super) async fn push_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    unit: Result<Path<String>, PathRejection>,
    query: Result<Query<PushQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<
    (
        StatusCode,
        axum::Json<failsmall_wire::versions::PushedVersion>,
    ),
    ApiError,
> {
    let name = unit_name(&path_param(unit)?)?;
    let query = query_param(query)?;
    let content = body_bytes(body)?;
    text_field("message", &query.message)?;
    let parent = query
        .parent
        .as_deref()
        .map(version_hash)
        .transpose()?
        .map(|h| h.to_string());
    if query.skip_validation && caller.role != Some(Role::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin may skip validation",
        ));
    }
    windows::only_admin_overrides_freeze(&caller, query.override_freeze, &query.message)?;
    let lookup = name.clone();
    let unit = db(&state, move |store| Ok(store.unit(lookup.as_str())?)).await?;
    agent::check_desired_budget(&state, name.as_str(), &unit.spec).await?;
    // The unit's plan was checked when it was set; a plan that no longer parses (a newer
    // plan format) refuses the push rather than storing a version that would not roll out.
    let plan = unit
        .plan
        .as_deref()
        .map(|text| parse_plan(&unit_plan_file(name.as_str()), text))
        .transpose()?;
    let mut judgement = Judgement::new(CodexAction::Push, &caller, name.as_str());
    (judgement.spec, judgement.plan) = (Some(unit.spec.clone()), plan.clone());
    judgement.skip_validation = query.skip_validation;
    judgement.validator = unit.validator.as_ref().map(|v| json!(v));
    let warnings = state.judge(judgement).await?;

    let checked = content.clone();
    let validator = unit.validator.clone();
    let verdict = tokio::task::spawn_blocking(move || validate(&unit.spec, &checked))
        .await
        .map_err(|e| ApiError::internal(format!("validation task failed: {e}")))?;
    // The validator command is not run when validation is skipped: the override exists to
    // get a version past every check.
    let refusal = match (&validator, query.skip_validation) {
        (Some(validator), false) => run_validator(&state, validator, &content).await?,
        _ => None,
    };
    let mut skipped_reasons = Vec::new();
    if verdict.is_err() || refusal.is_some() {
        let mut issues: Vec<Value> = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        if let Err(found) = verdict {
            reasons.extend(found.iter().map(|i| i.message.clone()));
            issues.extend(found.iter().map(|i| json!(i)));
        }
        if let Some(refusal) = refusal {
            reasons.push(refusal.to_string());
            issues.push(validator_issue(&refusal));
        }
        if !query.skip_validation {
            state
                .shared
                .counters
                .versions_rejected
                .fetch_add(1, Ordering::Relaxed);
            operator::record_refused_push(
                &state,
                &caller.name,
                &name,
                &VersionHash::of(&content),
                &query.message,
                &reasons,
            )
            .await;
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("version of unit {name} refused: {}", reasons.join("; ")),
            )
            .with_detail(json!({ "issues": issues })));
        }
        skipped_reasons = reasons;
    }
    if query.skip_validation && validator.is_some() {
        skipped_reasons.push("validator command not run".to_owned());
    }

    let hash = VersionHash::of(&content).to_string();
    let signature = state.shared.signer.sign_version(name.as_str(), &hash);
    let skipped = query.skip_validation;
    let at_ms = now_ms();
    let pushed = ChangeRow {
        at_ms,
        actor: caller.name.clone(),
        kind: "version_pushed".to_owned(),
        unit: Some(name.to_string()),
        version: Some(hash.clone()),
        reason: query.message.clone(),
        concerns: None,
        rollout: None,
        stage: None,
    };
    let mut changes = vec![pushed.clone()];
    changes.extend(warnings.iter().map(|finding| ChangeRow {
        kind: crate::codex::WARNING_KIND.to_owned(),
        reason: finding.one_line(),
        ..pushed.clone()
    }));
    if skipped {
        changes.push(ChangeRow {
            kind: "validation_skipped".to_owned(),
            reason: format!(
                "validation skipped by {}: {}",
                caller.name,
                skipped_reasons.join("; ")
            ),
            ..pushed
        });
    }
    let row = VersionRow {
        unit: name.to_string(),
        hash: hash.clone(),
        content: content.to_vec(),
        author: caller.name.clone(),
        message: query.message.clone(),
        expected_parent: parent.map(Some),
        created_ms: at_ms,
        signature,
        validation_skipped: skipped,
    };
    let (version, created, rollout) = match plan {
        None => {
            let (version, created) = db(&state, move |store| {
                let changes: Vec<NewChange<'_>> = changes.iter().map(ChangeRow::as_new).collect();
                Ok(store.push_version(&row.as_new(), &changes)?)
            })
            .await?;
            (version, created, None)
        }
        Some(plan) => {
            let (override_freeze, override_budget) =
                (query.override_freeze, query.override_error_budget);
            push_and_roll_out(
                &state,
                &caller,
                row,
                changes,
                plan,
                override_freeze,
                override_budget,
            )
            .await?
        }
    };
    if created && skipped {
        state
            .shared
            .counters
            .validation_skipped
            .fetch_add(1, Ordering::Relaxed);
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(failsmall_wire::versions::PushedVersion {
            version: version.into(),
            rollout,
        }),
    ))
}

/// Most validator commands running at once; a push that waits longer than
/// [`crate::validator::MAX_TIMEOUT_MS`] for a turn is answered 429.
pub const MAX_RUNNING_VALIDATORS: usize = 4;

/// Runs the unit's validator command on `content`; `Some` when it refuses the version.
pub(super) async fn run_validator(
    state: &AppState,
    validator: &ValidatorCommand,
    content: &[u8],
) -> Result<Option<Refusal>, ApiError> {
    let wait = std::time::Duration::from_millis(crate::validator::MAX_TIMEOUT_MS);
    let permit = tokio::time::timeout(wait, state.shared.validators.acquire())
        .await
        .ok()
        .and_then(Result::ok);
    let Some(_permit) = permit else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "validators_busy",
            format!(
                "{MAX_RUNNING_VALIDATORS} validator commands are running and none finished in {}; retry later",
                failsmall_core::duration::format_ms(crate::validator::MAX_TIMEOUT_MS)
            ),
        ));
    };
    let outcome = match &state.shared.scratch_dir {
        Some(dir) => validator.run_in(dir, content).await,
        None => validator.run(content).await,
    };
    Ok(outcome.err())
}

/// A validator's refusal in the list of a push's issues (the shape of `ValidationIssue`).
pub(super) fn validator_issue(refusal: &Refusal) -> Value {
    let kind = match refusal {
        Refusal::Refused { .. } => "validator_refused",
        Refusal::TimedOut { .. } => "validator_timed_out",
        Refusal::NotFound { .. } | Refusal::Spawn { .. } | Refusal::Io { .. } => "validator_failed",
    };
    json!({"kind": kind, "path": "", "message": refusal.to_string()})
}

/// Stores a version and requests its rollout through the unit's plan in one engine step, so
/// a crash leaves both or neither. Bytes the unit already has start nothing and answer the
/// stored version.
pub(super) async fn push_and_roll_out(
    state: &AppState,
    caller: &Caller,
    row: VersionRow,
    changes: Vec<ChangeRow>,
    plan: Plan,
    override_freeze: bool,
    override_error_budget: bool,
) -> Result<
    (
        crate::store::VersionRecord,
        bool,
        Option<failsmall_wire::rollouts::Rollout>,
    ),
    ApiError,
> {
    let (unit, hash) = (row.unit.clone(), row.hash.clone());
    let existing = {
        let (unit, hash) = (unit.clone(), hash.clone());
        db(state, move |store| match store.version(&unit, &hash) {
            Ok(version) => Ok(Some(version)),
            Err(crate::store::StoreError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        })
        .await?
    };
    if let Some(version) = existing {
        return Ok((version, false, None));
    }
    let (unit_checked, version_checked) = (unit_name(&unit)?, version_hash(&hash)?);
    super::slos::check_error_budget(
        state,
        caller,
        &unit_checked,
        &version_checked,
        override_error_budget,
        &row.message,
    )
    .await?;
    let event = Event::RolloutRequested {
        unit: unit_checked,
        version: version_checked,
        plan,
        actor: caller.name.clone(),
        reason: row.message.clone(),
        override_quarantine: false,
        override_freeze,
    };
    let at_ms = row.created_ms;
    let (refused_unit, refused_hash, refused_message) =
        (row.unit.clone(), row.hash.clone(), row.message.clone());
    let cause = Cause::Push {
        version: Box::new(row),
        changes,
    };
    let host = &state.shared.engine;
    // The stored version and the rollout's view are read in the step, before it wakes the
    // long polls: the push is answered without waiting behind the fan-out it starts.
    let (read_unit, read_hash) = (unit.clone(), hash.clone());
    let stepped = host
        .apply_many_then(
            &state.shared.store,
            at_ms,
            vec![(event, None)],
            cause,
            move |engine, store, actions| {
                let version = store.version(&read_unit, &read_hash);
                let view = rollout_of(actions).and_then(|id| engine.rollout(id));
                (version, view)
            },
        )
        .await;
    let lookup = move |store: &Store| Ok(store.version(&unit, &hash)?);
    match stepped {
        Ok((_, (version, view))) => Ok((version?, true, view.map(Into::into))),
        // The same bytes were pushed meanwhile: they are stored, with their own rollout.
        Err(StepError::Store(crate::store::StoreError::AlreadyExists { .. })) => {
            Ok((db(state, lookup).await?, false, None))
        }
        // A freeze refuses the push: nothing was stored; the refusal and its reason are
        // in the changelog.
        Err(StepError::Engine(frozen @ EngineError::Frozen { .. })) => {
            if let (Ok(unit), Ok(hash)) = (unit_name(&refused_unit), version_hash(&refused_hash)) {
                operator::record_refused_push(
                    state,
                    &caller.name,
                    &unit,
                    &hash,
                    &refused_message,
                    &[frozen.to_string()],
                )
                .await;
            }
            Err(step_error(StepError::Engine(frozen)))
        }
        Err(error) => Err(step_error(error)),
    }
}

pub(super) async fn show_version(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::Version>, ApiError> {
    let (unit, hash) = path_param(params)?;
    let name = unit_name(&unit)?;
    let hash = version_hash(&hash)?.to_string();
    let version = db(
        &state,
        move |store| Ok(store.version(name.as_str(), &hash)?),
    )
    .await?;
    Ok(axum::Json(version.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiffQuery {
    from: String,
    to: String,
}

pub(super) async fn diff_versions(
    State(state): State<AppState>,
    unit: Result<Path<String>, PathRejection>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let name = unit_name(&path_param(unit)?)?;
    let query = query_param(query)?;
    let from = version_hash(&query.from)?.to_string();
    let to = version_hash(&query.to)?.to_string();
    let (old, new) = db(&state, move |store| {
        let old = store.version(name.as_str(), &from)?;
        let new = store.version(name.as_str(), &to)?;
        for version in [&old, &new] {
            if usize::try_from(version.size_bytes).unwrap_or(usize::MAX) > MAX_DIFF_BYTES {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "too_large",
                    format!(
                        "version {} is {} bytes; diffs stop at {MAX_DIFF_BYTES}",
                        version.hash, version.size_bytes
                    ),
                ));
            }
        }
        Ok((store.blob(&old.hash)?, store.blob(&new.hash)?))
    })
    .await?;
    let (Ok(old_text), Ok(new_text)) = (String::from_utf8(old), String::from_utf8(new)) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_text",
            "one of the versions is not UTF-8 text",
        ));
    };
    let (from, to) = (query.from, query.to);
    let diff = tokio::task::spawn_blocking(move || {
        similar::TextDiff::configure()
            .timeout(std::time::Duration::from_secs(2))
            .diff_lines(&old_text, &new_text)
            .unified_diff()
            .context_radius(3)
            .header(&from, &to)
            .to_string()
    })
    .await
    .map_err(|e| ApiError::internal(format!("diff task failed: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], diff).into_response())
}

pub(super) async fn blob(
    State(state): State<AppState>,
    sha256: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hash = version_hash(&path_param(sha256)?)?.to_string();
    let etag = format!("\"{hash}\"");
    let cache = [
        (
            header::CACHE_CONTROL,
            "public, max-age=31536000, immutable".to_owned(),
        ),
        (header::ETAG, etag.clone()),
    ];
    let content = state.shared.blobs.get(&state, &hash).await?;
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    let mut response = (cache, content).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}
