//! The operator's everyday routes: who am I, the server's status, the quarantine (list, lift),
//! retrying an ended rollout, deleting a unit or a node, and each version's status.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use failsmall_core::domain::{RolloutId, UnitName, VersionHash};
use failsmall_core::engine::{Engine, Event, RolloutStatus, RolloutView};
use serde_json::{Value, json};

use super::{
    AppState, db, json_body, node_id, now_ms, path_param, rollout_of, step_error, text_field,
    unit_name, version_hash,
};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::rollouts::{Cause, StepError};
use crate::store::{NewChange, VersionRecord};

/// What a rollout's outcome says when it completed without making its version stable.
const NOT_STABLE_MARK: &str = "completed without a stable version";

use failsmall_wire::requests::{ReasonRequest, RequiredReasonRequest};
use failsmall_wire::rollouts::RetryRequest;

fn reason_body(body: Result<Bytes, BytesRejection>) -> Result<ReasonRequest, ApiError> {
    if body.as_ref().is_ok_and(|bytes| bytes.is_empty()) {
        return Ok(ReasonRequest::default());
    }
    let request: ReasonRequest = json_body(body)?;
    text_field("reason", &request.reason)?;
    Ok(request)
}

/// `GET /v1/whoami`: the caller's token name, role, and node (agent tokens).
pub(super) async fn whoami(
    Extension(caller): Extension<Caller>,
) -> axum::Json<failsmall_wire::operator::WhoAmI> {
    axum::Json(failsmall_wire::operator::WhoAmI {
        name: caller.name,
        token: caller.token,
        role: caller.role.map(Into::into),
        node: caller.node,
    })
}

/// `GET /v1/status`: the server, its store, and counts of what it holds.
pub(super) async fn status(
    State(state): State<AppState>,
) -> Result<axum::Json<failsmall_wire::operator::ServerStatus>, ApiError> {
    let (schema_version, counts) = db(&state, |store| {
        Ok((store.schema_version()?, store.counts()?))
    })
    .await?;
    let (by_status, nodes_down, quarantined, engine_nodes, revision) = state
        .shared
        .engine
        .read(|engine, revision| {
            let mut by_status = std::collections::BTreeMap::new();
            for status in RolloutStatus::ALL {
                by_status.insert(status.as_str().to_owned(), 0u64);
            }
            for status in engine.rollout_statuses() {
                if let Some(count) = by_status.get_mut(status.as_str()) {
                    *count = count.saturating_add(1);
                }
            }
            (
                by_status,
                engine.down_nodes().len(),
                engine.quarantined().len(),
                engine.node_count(),
                revision,
            )
        })
        .await;
    use failsmall_wire::operator::{ServerInfo, ServerStatus, StatusCounts, StoreInfo};
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    Ok(axum::Json(ServerStatus {
        server: ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            now_ms: now_ms(),
            node_down_after_ms: state.shared.node_down_after_ms,
            desired_ttl_ms: state.shared.desired_ttl_ms,
        },
        leader: "this server: one control plane over its own store, no replicas".to_owned(),
        store: StoreInfo {
            kind: "sqlite".to_owned(),
            schema_version,
            engine_revision: revision,
            blob_bytes: counts.blob_bytes,
            changelog_entries: counts.changelog_entries,
        },
        counts: StatusCounts {
            units: counts.units,
            versions: counts.versions,
            nodes: counts.nodes,
            nodes_in_engine: count(engine_nodes),
            nodes_down: count(nodes_down),
            nodes_stale: counts.nodes_stale,
            quarantined: count(quarantined),
            rollouts: by_status,
        },
    }))
}

/// `GET /v1/quarantine`: every quarantined version, with its version record when stored.
pub(super) async fn list_quarantine(
    State(state): State<AppState>,
    query: Result<
        axum::extract::Query<super::page::PageQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<axum::Json<failsmall_wire::quarantine::QuarantineList>, ApiError> {
    let page = super::page::Page::from_query(query)?;
    // By unit, then version; the cursor is the page's last `unit/version`.
    let key = |unit: &str, version: &str| format!("{unit}/{version}");
    let fetch = usize::try_from(page.fetch()).unwrap_or(usize::MAX);
    let mut quarantined = state
        .shared
        .engine
        .read(|engine, _| engine.quarantined())
        .await;
    quarantined.sort_by_key(|q| key(q.unit.as_str(), &q.version.to_string()));
    let quarantined: Vec<_> = quarantined
        .into_iter()
        .filter(|q| {
            page.after
                .as_deref()
                .is_none_or(|after| key(q.unit.as_str(), &q.version.to_string()).as_str() > after)
        })
        .take(fetch)
        .collect();
    let (quarantined, next) = page.split(quarantined, |q| {
        key(q.unit.as_str(), &q.version.to_string())
    });
    let lookups: Vec<(String, String)> = quarantined
        .iter()
        .map(|q| (q.unit.to_string(), q.version.to_string()))
        .collect();
    let records = db(&state, move |store| {
        Ok(lookups
            .iter()
            .map(|(unit, hash)| store.version(unit, hash).ok())
            .collect::<Vec<Option<VersionRecord>>>())
    })
    .await?;
    let entries = quarantined
        .iter()
        .zip(records)
        .map(
            |(q, record)| failsmall_wire::quarantine::QuarantinedVersion {
                unit: q.unit.as_str().to_owned(),
                version: q.version.to_string(),
                rollout: q.rollout.0,
                message: record.as_ref().map(|r| r.message.clone()),
                author: record.as_ref().map(|r| r.author.clone()),
            },
        )
        .collect();
    Ok(axum::Json(failsmall_wire::quarantine::QuarantineList {
        quarantined: entries,
        next,
    }))
}

/// `POST /v1/units/{unit}/quarantine/{hash}/lift`, admin: `{"reason": ...}` (required).
pub(super) async fn lift_quarantine(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::quarantine::QuarantineLifted>, ApiError> {
    let (unit, hash) = path_param(params)?;
    let unit = unit_name(&unit)?;
    let version = version_hash(&hash)?;
    let request: RequiredReasonRequest = json_body(body)?;
    text_field("reason", &request.reason)?;
    if request.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason_required",
            "reason is empty; lifting a quarantine needs a reason for the changelog",
        ));
    }
    let event = Event::QuarantineLifted {
        unit: unit.clone(),
        version,
        actor: caller.name.clone(),
        reason: request.reason,
    };
    state
        .shared
        .engine
        .apply(&state.shared.store, now_ms(), event, Cause::Nothing, None)
        .await
        .map_err(step_error)?;
    Ok(axum::Json(failsmall_wire::quarantine::QuarantineLifted {
        unit: unit.as_str().to_owned(),
        version: version.to_string(),
        quarantined: false,
    }))
}

/// `POST /v1/rollouts/{id}/retry`: the same version through the same plan, as a new rollout.
/// Only for a rollout that ended rolled back or aborted.
pub(super) async fn retry_rollout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::rollouts::Rollout>), ApiError> {
    let id = RolloutId(path_param(id)?);
    let request: RetryRequest = if body.as_ref().is_ok_and(|bytes| bytes.is_empty()) {
        RetryRequest::default()
    } else {
        json_body(body)?
    };
    text_field("reason", &request.reason)?;
    super::only_admin_overrides_quarantine(&caller, request.override_quarantine)?;
    let host = &state.shared.engine;
    let found = host
        .read(|engine, _| {
            let view = engine.rollout(id)?;
            let plan = engine.rollout_plan(id)?.clone();
            Some((view, plan))
        })
        .await;
    let Some((view, plan)) = found else {
        return Err(ApiError::not_found(format!(
            "no rollout {id} (ended rollouts are kept for a while; start the version again with \
             `failsmall rollout start`)"
        )));
    };
    if !matches!(
        view.status,
        RolloutStatus::RolledBack | RolloutStatus::Aborted
    ) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_command",
            format!(
                "rollout {id} is {}; only a rolled back or aborted rollout is retried",
                view.status.as_str()
            ),
        ));
    }
    super::slos::check_error_budget(
        &state,
        &caller,
        &view.unit,
        &view.version,
        request.override_error_budget,
        &request.reason,
    )
    .await?;
    let reason = if request.reason.is_empty() {
        format!("retry of {id}")
    } else {
        format!("retry of {id}: {}", request.reason)
    };
    let event = Event::RolloutRequested {
        unit: view.unit.clone(),
        version: view.version,
        plan,
        actor: caller.name.clone(),
        reason,
        override_quarantine: request.override_quarantine,
        override_freeze: false,
    };
    let actions = host
        .apply(&state.shared.store, now_ms(), event, Cause::Nothing, None)
        .await
        .map_err(step_error)?;
    let new_view = match rollout_of(&actions) {
        Some(new_id) => host.read(|engine, _| engine.rollout(new_id)).await,
        None => None,
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(super::convert::rollout(
            new_view,
            &format!("retry of {id}"),
        )?),
    ))
}

/// `DELETE /v1/units/{unit}`, admin: refused while a rollout of the unit is open. The unit
/// leaves every node first (an engine step), then its rows go.
pub(super) async fn delete_unit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    unit: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::units::UnitDeleted>, ApiError> {
    let unit = unit_name(&path_param(unit)?)?;
    let request = reason_body(body)?;
    let lookup = unit.clone();
    db(&state, move |store| Ok(store.unit(lookup.as_str())?)).await?;
    let open = state
        .shared
        .engine
        .read(|engine, _| engine.open_rollout(&unit))
        .await;
    if let Some(open) = open {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "unit_busy",
            format!(
                "unit {unit} has rollout {open} open; abort it (`failsmall rollout abort {}`) or \
                 let it end, then delete the unit",
                open.0
            ),
        ));
    }
    state
        .shared
        .engine
        .apply(
            &state.shared.store,
            now_ms(),
            Event::UnitRemoved { unit: unit.clone() },
            Cause::Nothing,
            None,
        )
        .await
        .map_err(step_error)?;
    let name = unit.to_string();
    let versions = db(&state, move |store| {
        let reason = if request.reason.is_empty() {
            format!("unit {name} deleted with its versions; nodes remove it")
        } else {
            format!(
                "unit {name} deleted with its versions; nodes remove it: {}",
                request.reason
            )
        };
        let change = NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "unit_deleted",
            unit: Some(&name),
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        Ok(store.delete_unit(&name, &change)?)
    })
    .await?;
    Ok(axum::Json(failsmall_wire::units::UnitDeleted {
        unit: unit.to_string(),
        deleted: true,
        versions_deleted: versions,
    }))
}

/// `DELETE /v1/nodes/{node}`, admin: the node leaves the fleet (the engine forgets it, so no
/// stage waits for it) and its rows go.
pub(super) async fn delete_node(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    node: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::nodes::NodeRemoved>, ApiError> {
    let id = node_id(&path_param(node)?)?;
    let request = reason_body(body)?;
    let reason = if request.reason.is_empty() {
        format!("node {id} removed by {}", caller.name)
    } else {
        format!("node {id} removed by {}: {}", caller.name, request.reason)
    };
    remove_node(&state, &caller.name, &id, &reason).await?;
    Ok(axum::Json(failsmall_wire::nodes::NodeRemoved {
        node: id.to_string(),
        removed: true,
    }))
}

/// Removes `node` from the engine and the store, recording `reason` as `node_removed`. A node
/// the engine no longer knows (a removal interrupted after its engine step) is still removed
/// from the store.
pub(crate) async fn remove_node(
    state: &AppState,
    actor: &str,
    id: &failsmall_core::domain::NodeId,
    reason: &str,
) -> Result<(), ApiError> {
    let lookup = id.clone();
    let known = db(state, move |store| Ok(store.node(lookup.as_str())?)).await?;
    let Some(record) = known else {
        return Err(ApiError::not_found(format!(
            "node {id} is not registered (see `failsmall nodes`)"
        )));
    };
    let stepped = state
        .shared
        .engine
        .apply(
            &state.shared.store,
            now_ms(),
            Event::NodeRemoved { node: id.clone() },
            Cause::Nothing,
            None,
        )
        .await;
    match stepped {
        Ok(_) | Err(StepError::Engine(failsmall_core::engine::EngineError::UnknownNode(_))) => {}
        Err(error) => return Err(step_error(error)),
    }
    let (name, actor, reason) = (id.to_string(), actor.to_owned(), reason.to_owned());
    db(state, move |store| {
        let concerns = crate::store::Concerns::Node(record.labels);
        let change = NewChange {
            at_ms: now_ms(),
            actor: &actor,
            kind: "node_removed",
            unit: None,
            version: None,
            reason: &reason,
            concerns: Some(&concerns),
            rollout: None,
            stage: None,
        };
        Ok(store.delete_node(&name, &change)?)
    })
    .await?;
    state.shared.liveness.forget(id.as_str());
    state.shared.desired_view.invalidate();
    Ok(())
}

/// How often nodes are checked for expiry, at most, in milliseconds.
pub const EXPIRY_CHECK_MAX_MS: u64 = 10_000;
/// Most nodes expired in one check (the rest wait for the next).
pub const EXPIRED_PER_CHECK_MAX: usize = 100;

/// Removes nodes not heard from for `expire_after_ms` (`failsmall server --node-expire-after`)
/// until the task is aborted. Silence counts from the later of the node's last sighting and
/// this server's start, so a server that was down itself never expires the fleet it comes
/// back to.
pub(crate) async fn expire_forever(state: AppState, expire_after_ms: u64) {
    let started_ms = now_ms();
    let check_ms = (expire_after_ms / 2).clamp(500, EXPIRY_CHECK_MAX_MS);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(check_ms)).await;
        let Ok(seen) = db(&state, |store| Ok(store.nodes_last_seen()?)).await else {
            continue;
        };
        let now = now_ms();
        let expired: Vec<(String, u64)> = seen
            .into_iter()
            .filter_map(|(node, at_ms)| {
                let pending = state.shared.liveness.pending(&node).unwrap_or(0);
                let last_ms = at_ms.max(pending).max(started_ms);
                (now.saturating_sub(last_ms) > expire_after_ms).then_some((node, last_ms))
            })
            .take(EXPIRED_PER_CHECK_MAX)
            .collect();
        for (node, last_ms) in expired {
            let Ok(id) = failsmall_core::domain::NodeId::new(node) else {
                continue;
            };
            let reason = format!(
                "node {id} expired: not heard from for {} (since {}), longer than \
                 --node-expire-after {}",
                failsmall_core::duration::format_ms(now.saturating_sub(last_ms)),
                failsmall_core::domain::rfc3339_from_ms(last_ms),
                failsmall_core::duration::format_ms(expire_after_ms)
            );
            if let Err(error) =
                remove_node(&state, failsmall_core::engine::ENGINE_ACTOR, &id, &reason).await
            {
                tracing::warn!("expiring node {id}: {}; tried again", error.message);
            }
        }
    }
}

/// What people call a version's state, from the engine's view of the unit's rollouts.
fn version_status(
    version: &VersionHash,
    stable: Option<&VersionHash>,
    quarantined: bool,
    latest: Option<&RolloutView>,
) -> &'static str {
    if quarantined {
        return "quarantined";
    }
    if let Some(view) = latest {
        match view.status {
            RolloutStatus::Running | RolloutStatus::Paused => return "rolling out",
            RolloutStatus::Queued => return "queued",
            _ => {}
        }
    }
    if stable == Some(version) {
        return "stable";
    }
    match latest.map(|view| view.status) {
        None => "never rolled out",
        Some(RolloutStatus::RolledBack) => "rolled back",
        Some(RolloutStatus::Aborted) => "aborted",
        Some(RolloutStatus::Completed) if was_stable(latest) => "was stable",
        Some(_) => "completed, never stable",
    }
}

pub(super) fn was_stable(view: Option<&RolloutView>) -> bool {
    view.is_some_and(|view| {
        view.status == RolloutStatus::Completed
            && !view
                .outcome
                .as_deref()
                .is_some_and(|outcome| outcome.contains(NOT_STABLE_MARK))
    })
}

/// The versions of `unit`, each with its status, its latest rollout, and on how many nodes it
/// is live; the unit's stable version, and the one stable before it (what `rollout undo`
/// goes back to).
pub(super) fn versions_with_status(
    engine: &Engine,
    unit: &UnitName,
    versions: Vec<VersionRecord>,
) -> failsmall_wire::versions::VersionList {
    let views: Vec<RolloutView> = engine.rollouts().filter(|v| v.unit == *unit).collect();
    let stable = engine.stable(unit);
    let live = engine.desired_counts(unit);
    // The newest completed rollout whose version became stable and is not the stable one now.
    let previous_stable = views
        .iter()
        .filter(|view| was_stable(Some(view)))
        .filter(|view| Some(view.version) != stable && !engine.is_quarantined(unit, &view.version))
        .max_by_key(|view| (view.ended_ms, view.id))
        .map(|view| view.version);
    let entries = versions
        .into_iter()
        .map(|record| {
            let parsed = record.hash.parse::<VersionHash>().ok();
            let latest = parsed.and_then(|hash| {
                views
                    .iter()
                    .filter(|view| view.version == hash)
                    .max_by_key(|view| view.id)
            });
            let status = match &parsed {
                Some(hash) => version_status(
                    hash,
                    stable.as_ref(),
                    engine.is_quarantined(unit, hash),
                    latest,
                ),
                None => "unknown",
            };
            let nodes = parsed
                .and_then(|hash| live.get(&hash).copied())
                .unwrap_or(0);
            failsmall_wire::versions::VersionEntry {
                version: record.into(),
                status: status.to_owned(),
                live_nodes: nodes,
                latest_rollout: latest.map(|view| failsmall_wire::versions::LatestRollout {
                    id: view.id.0,
                    status: view.status.into(),
                    ended_ms: view.ended_ms,
                }),
            }
        })
        .collect();
    failsmall_wire::versions::VersionList {
        versions: entries,
        stable: stable.map(|hash| hash.to_string()),
        previous_stable: previous_stable.map(|hash| hash.to_string()),
        next: None,
    }
}

/// `GET /v1/units/{unit}/versions`: see [`versions_with_status`].
pub(super) async fn list_versions(
    State(state): State<AppState>,
    unit: Result<Path<String>, PathRejection>,
    query: Result<
        axum::extract::Query<super::page::PageQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<axum::Json<failsmall_wire::versions::VersionList>, ApiError> {
    let name = unit_name(&path_param(unit)?)?;
    let page = super::page::Page::from_query(query)?;
    // Newest first: the page after `after` (a sequence number) holds older versions.
    let (before, fetch) = (page.after_number()?, page.fetch());
    let lookup = name.clone();
    let rows = db(&state, move |store| {
        // The unit must exist: an unknown unit is a 404, not an empty list.
        store.unit(lookup.as_str())?;
        Ok(store.versions_before(lookup.as_str(), before, fetch)?)
    })
    .await?;
    let (versions, next) = page.split(rows, |version| version.seq.to_string());
    let answer = state
        .shared
        .engine
        .read(|engine, _| versions_with_status(engine, &name, versions))
        .await;
    Ok(axum::Json(failsmall_wire::versions::VersionList {
        next,
        ..answer
    }))
}

/// Longest changelog reason this module writes, in bytes (the API's text limit).
const REASON_MAX_BYTES: usize = super::MAX_TEXT_BYTES;
/// Longest value shown on either side of one changed field, in characters.
const DIFF_VALUE_MAX_CHARS: usize = 200;

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
fn cut_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

fn shown(value: &Value) -> String {
    let text = match value {
        Value::Null => "none".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= DIFF_VALUE_MAX_CHARS {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(DIFF_VALUE_MAX_CHARS).collect();
    cut.push('…');
    cut
}

/// A plan for people: `name: a → b → c`, or `none` (pushes roll out through the plan the
/// pusher names, else the built-in default plan).
fn plan_shown(unit: &str, plan: Option<&str>) -> String {
    match plan {
        None => "none".to_owned(),
        Some(text) => match failsmall_core::plan::Plan::parse(&super::unit_plan_file(unit), text) {
            Ok(plan) => {
                let stages: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
                format!("{}: {}", plan.name, stages.join(" → "))
            }
            Err(_) => "unreadable".to_owned(),
        },
    }
}

fn validator_shown(validator: Option<&crate::validator::ValidatorCommand>) -> String {
    match validator {
        None => "none".to_owned(),
        Some(validator) => format!(
            "{} (timeout {})",
            validator.command.join(" "),
            failsmall_core::duration::format_ms(validator.timeout_ms)
        ),
    }
}

/// What a unit edit changes, field by field (`spec.max_bytes 256 → 512; fail mode stale →
/// closed; plan two: a → b → one: c; validator none → cat - (timeout 5s)`), for the changelog.
/// `validator`: `None` when the edit keeps it.
pub(super) fn unit_edit_reason(
    current: &crate::store::UnitRecord,
    fields: &crate::store::UnitFields<'_>,
) -> String {
    let mut changes: Vec<String> = Vec::new();
    let old_spec = json!(current.spec);
    let new_spec = json!(fields.spec);
    if let (Some(old), Some(new)) = (old_spec.as_object(), new_spec.as_object()) {
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for key in keys {
            let (before, after) = (
                old.get(key).unwrap_or(&Value::Null),
                new.get(key).unwrap_or(&Value::Null),
            );
            if before != after {
                let name = match key.as_str() {
                    "fail_mode" => "fail mode".to_owned(),
                    other => format!("spec.{other}"),
                };
                changes.push(format!("{name} {} → {}", shown(before), shown(after)));
            }
        }
    }
    if current.owner != fields.owner {
        changes.push(format!("owner {:?} → {:?}", current.owner, fields.owner));
    }
    if current.description != fields.description {
        changes.push(format!(
            "description {:?} → {:?}",
            cut_text(&current.description, DIFF_VALUE_MAX_CHARS),
            cut_text(fields.description, DIFF_VALUE_MAX_CHARS)
        ));
    }
    if current.plan.as_deref() != fields.plan {
        let (before, after) = (
            plan_shown(&current.name, current.plan.as_deref()),
            plan_shown(&current.name, fields.plan),
        );
        if before == after {
            changes.push(format!("plan {after}: its settings changed"));
        } else {
            changes.push(format!("plan {before} → {after}"));
        }
    }
    if let crate::store::ValidatorChange::Set(validator) = fields.validator
        && current.validator.as_ref() != validator
    {
        changes.push(format!(
            "validator {} → {}",
            validator_shown(current.validator.as_ref()),
            validator_shown(validator)
        ));
    }
    let what = if changes.is_empty() {
        "nothing changed".to_owned()
    } else {
        changes.join("; ")
    };
    cut_text(
        &format!(
            "revision {} → {}: {what}",
            current.revision,
            current.revision.saturating_add(1)
        ),
        REASON_MAX_BYTES,
    )
}

/// Records a refused push (`push_refused`): who pushed which bytes, and every reason. A
/// failure to record is reported on stderr; the push is refused either way.
pub(super) async fn record_refused_push(
    state: &AppState,
    actor: &str,
    unit: &UnitName,
    hash: &VersionHash,
    message: &str,
    reasons: &[String],
) {
    let reason = cut_text(
        &format!(
            "push of {} by {actor} refused ({:?}): {}",
            hash.short(),
            cut_text(message, DIFF_VALUE_MAX_CHARS),
            reasons.join("; ")
        ),
        REASON_MAX_BYTES,
    );
    let (actor, unit, hash) = (actor.to_owned(), unit.to_string(), hash.to_string());
    let recorded = db(state, move |store| {
        let change = NewChange {
            at_ms: now_ms(),
            actor: &actor,
            kind: "push_refused",
            unit: Some(&unit),
            version: Some(&hash),
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        Ok(store.record(&change)?)
    })
    .await;
    if let Err(error) = recorded {
        tracing::warn!("recording a refused push: {}", error.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        assert_eq!(cut_text("short", 10), "short");
        let cut = cut_text(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
    }
}
