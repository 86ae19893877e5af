//! Online break glass: a person asks for a time-boxed elevated role (`admin`, `deployer` or
//! `approver`) with a reason; M other people approve (M = `--break-glass-approvals`); the
//! requester claims the role once, as a token that expires on its own `duration` after the
//! grant. Every step is a changelog row; the claim is a `break_glass` row, so it notifies
//! (`break_glass_used`) and opens an incident like a node's break glass does.

use super::*;
use crate::store::{ElevationOutcome, ElevationRecord};
use failsmall_wire::requests::{ElevationRequest, ReasonRequest};

/// Shortest and longest elevated role.
pub const ELEVATION_MIN_MS: u64 = 60_000;
pub const ELEVATION_MAX_MS: u64 = 4 * 3600 * 1000;
/// How long a request waits for its approvals.
pub const ELEVATION_PENDING_MS: u64 = 3600 * 1000;
/// Most requests pending at once.
pub const ELEVATIONS_PENDING_MAX: u64 = 64;
/// Most requests a list shows (the newest).
pub const ELEVATIONS_LISTED_MAX: u32 = 200;
/// Approvals a request needs unless the server says otherwise, and the most it may ask.
pub const ELEVATION_APPROVALS_DEFAULT: usize = 2;
pub const ELEVATION_APPROVALS_MAX: usize = 10;

fn refused(why: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "break_glass_refused", why)
}

fn change<'a>(actor: &'a str, kind: &'a str, reason: &'a str) -> NewChange<'a> {
    NewChange {
        at_ms: now_ms(),
        actor,
        kind,
        unit: None,
        version: None,
        reason,
        concerns: None,
        rollout: None,
        stage: None,
    }
}

/// The request as people see it: its state in words, and when the role ends.
fn view(
    record: &ElevationRecord,
    needed: usize,
    now: u64,
) -> failsmall_wire::elevations::Elevation {
    let state = match (record.granted_ms, record.claimed_ms) {
        (_, Some(_))
            if record
                .granted_ms
                .is_some_and(|at| at + record.duration_ms <= now) =>
        {
            "expired"
        }
        (_, Some(_)) => "claimed",
        (Some(at), None) if at + record.duration_ms <= now => "expired",
        (Some(_), None) => "granted",
        (None, _) if record.created_ms + ELEVATION_PENDING_MS <= now => "expired",
        (None, _) => "pending",
    };
    failsmall_wire::elevations::Elevation {
        id: record.id,
        requester: record.requester.clone(),
        role: record.role.into(),
        duration_ms: record.duration_ms,
        reason: record.reason.clone(),
        created_ms: record.created_ms,
        approvals: record.approvals.clone(),
        approvals_needed: u64::try_from(needed).unwrap_or(u64::MAX),
        granted_ms: record.granted_ms,
        ends_ms: record.granted_ms.map(|at| at + record.duration_ms),
        claimed_ms: record.claimed_ms,
        token_id: record.token_id,
        state: state.to_owned(),
        token: None,
    }
}

pub(super) async fn request(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<
    (
        StatusCode,
        axum::Json<failsmall_wire::elevations::Elevation>,
    ),
    ApiError,
> {
    let body: ElevationRequest = json_body(body)?;
    let role = Role::from(body.role);
    if !matches!(role, Role::Admin | Role::Deployer | Role::Approver) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_role",
            format!(
                "role: break glass grants admin, deployer or approver, not {}",
                role
            ),
        ));
    }
    let duration_ms = failsmall_core::duration::parse_duration_ms(&body.duration)
        .ok()
        .filter(|ms| (ELEVATION_MIN_MS..=ELEVATION_MAX_MS).contains(ms))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_duration",
                format!(
                    "duration {:?}: expected from 1m to 4h, e.g. 30m",
                    body.duration
                ),
            )
        })?;
    if body.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason_required",
            "reason: say why the role is needed; it goes to the changelog and the approvers",
        ));
    }
    text_field("reason", &body.reason)?;
    let needed = state.break_glass_approvals();
    let record = db(&state, move |store| {
        let pending = store.pending_elevations(now_ms().saturating_sub(ELEVATION_PENDING_MS))?;
        if pending >= ELEVATIONS_PENDING_MAX {
            return Ok(Err(format!(
                "{pending} break-glass requests are pending; the limit is {ELEVATIONS_PENDING_MAX}"
            )));
        }
        let text = format!(
            "{} asks for role {} for {}: {}; {needed} other people must approve",
            caller.name,
            role,
            failsmall_core::duration::format_ms(duration_ms),
            body.reason
        );
        let change = change(&caller.name, "break_glass_requested", &text);
        Ok(Ok(store.create_elevation(
            &caller.name,
            role,
            duration_ms,
            &body.reason,
            &change,
        )?))
    })
    .await?
    .map_err(|why| ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", why))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(view(&record, needed, now_ms())),
    ))
}

pub(super) async fn list(
    State(state): State<AppState>,
) -> Result<axum::Json<failsmall_wire::elevations::ElevationList>, ApiError> {
    let needed = state.break_glass_approvals();
    let records = db(&state, |store| Ok(store.elevations(ELEVATIONS_LISTED_MAX)?)).await?;
    let now = now_ms();
    let requests = records.iter().map(|r| view(r, needed, now)).collect();
    Ok(axum::Json(failsmall_wire::elevations::ElevationList {
        requests,
    }))
}

pub(super) async fn show(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::elevations::Elevation>, ApiError> {
    let id = path_param(id)?;
    let needed = state.break_glass_approvals();
    let record = db(&state, move |store| Ok(store.elevation(id)?)).await?;
    Ok(axum::Json(view(&record, needed, now_ms())))
}

pub(super) async fn approve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::elevations::Elevation>, ApiError> {
    let id = path_param(id)?;
    let body: ReasonRequest = optional_json_body(body)?;
    text_field("reason", &body.reason)?;
    let needed = state.break_glass_approvals();
    let outcome = db(&state, move |store| {
        let text = if body.reason.is_empty() {
            format!("{} approves break-glass request {id}", caller.name)
        } else {
            format!(
                "{} approves break-glass request {id}: {}",
                caller.name, body.reason
            )
        };
        let change = change(&caller.name, "break_glass_approved", &text);
        let since = now_ms().saturating_sub(ELEVATION_PENDING_MS);
        Ok(store.approve_elevation(id, &caller.name, needed, since, &change)?)
    })
    .await?;
    match outcome {
        ElevationOutcome::Done(record) => Ok(axum::Json(view(&record, needed, now_ms()))),
        ElevationOutcome::Refused(why) => Err(refused(why)),
    }
}

pub(super) async fn claim(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::elevations::Elevation>, ApiError> {
    let id = path_param(id)?;
    let needed = state.break_glass_approvals();
    let secret =
        new_token().map_err(|e| ApiError::internal(format!("no randomness for a token: {e}")))?;
    let hash = token_sha256(&secret);
    let outcome = db(&state, move |store| {
        let record = store.elevation(id)?;
        let ends_ms = record
            .granted_ms
            .map(|at| at.saturating_add(record.duration_ms));
        let name = format!("break-glass-{id}");
        let token = crate::store::NewToken {
            name: &name,
            role: record.role,
            node: None,
            owner: Some(&record.requester),
            // Not granted yet: the store refuses before this matters.
            expires_ms: Some(ends_ms.unwrap_or(0)),
            token_sha256: &hash,
        };
        let text = format!(
            "online break glass: {} holds role {} until {} (request {id}, approved by {}): {}",
            record.requester,
            record.role,
            failsmall_core::domain::rfc3339_from_ms(ends_ms.unwrap_or(0)),
            record.approvals.join(", "),
            record.reason
        );
        let change = change(&caller.name, "break_glass", &text);
        Ok(store.claim_elevation(id, &caller.name, &token, &change)?)
    })
    .await?;
    state.shared.tokens.clear();
    match outcome {
        ElevationOutcome::Done(record) => Ok(axum::Json(failsmall_wire::elevations::Elevation {
            token: Some(secret),
            ..view(&record, needed, now_ms())
        })),
        ElevationOutcome::Refused(why) => Err(refused(why)),
    }
}
