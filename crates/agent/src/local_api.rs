//! The local API on 127.0.0.1, for consumers on this host:
//!
//! - `GET /v1/units/{unit}`: the active version's bytes; header `x-failsmall-version`.
//! - `GET /v1/units/{unit}/watch?after=HASH&wait_ms=N`: waits (at most
//!   [`MAX_WATCH_MS`]) until the active version is not `after`; 200 with the bytes, or 304
//!   when nothing changed in time.
//! - `POST /v1/units/{unit}/rejections` `{"version": HASH, "reason": TEXT}`: a consumer
//!   refused that version (the active or the desired one; any other is a 409). The agent
//!   NACKs it, and if it is active, puts back the last known good at once.
//! - `GET /v1/status`: what the agent knows about itself (JSON).
//! - `POST /ofrep/v1/evaluate/flags[/{key}]`: OFREP, for the flag units named by
//!   `--ofrep-unit` (see [`crate::ofrep`]).

// Handlers return early with a ready response; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use failsmall_core::domain::{UnitName, VersionHash};
use serde::Deserialize;
use serde_json::json;

use crate::control::{Report, cut_reason};
use crate::{AgentConfig, AgentError, Shared};

/// Longest a local watch waits.
pub const MAX_WATCH_MS: u64 = 60_000;
/// Largest request body, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The header that carries a version's hash.
pub const VERSION_HEADER: &str = "x-failsmall-version";

#[derive(Clone)]
struct LocalState {
    shared: Arc<Shared>,
    config: Arc<AgentConfig>,
}

/// Serves the local API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let address = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    axum::serve(listener, router(shared, config))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| AgentError::LocalApi { address, source })
}

/// The local API's routes.
pub fn router(shared: Arc<Shared>, config: AgentConfig) -> Router {
    let ofrep = crate::ofrep::router(shared.clone(), &config.ofrep_units);
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/units/{unit}", get(unit_bytes))
        .route("/v1/units/{unit}/watch", get(watch_unit))
        .route("/v1/units/{unit}/rejections", post(rejection))
        .route(
            "/v1/break-glass",
            get(break_glass_status).post(break_glass_order),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(LocalState {
            shared,
            config: Arc::new(config),
        })
        .merge(ofrep)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({"error": {"message": message}}))).into_response()
}

async fn unknown_route() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route; the local API serves /v1/status and /v1/units/{unit}[/watch|/rejections]"
            .to_owned(),
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method".to_owned(),
    )
}

/// The unit named by the path; a segment that does not decode (say `%ff`) or is not a unit
/// name is a 400 with the JSON error shape, like every refusal here.
fn unit_name(name: Result<Path<String>, PathRejection>) -> Result<UnitName, Response> {
    let Path(name) =
        name.map_err(|e| error(StatusCode::BAD_REQUEST, format!("path: {}", e.body_text())))?;
    UnitName::new(name).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn current(
    shared: &Arc<Shared>,
    unit: &UnitName,
) -> Result<Option<(Vec<u8>, VersionHash)>, Response> {
    let (disk, unit) = (shared.disk.clone(), unit.clone());
    tokio::task::spawn_blocking(move || disk.current(&unit))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn bytes_response(bytes: Vec<u8>, hash: &VersionHash) -> Response {
    let mut response = bytes.into_response();
    if let Ok(value) = HeaderValue::from_str(&hash.to_string()) {
        response.headers_mut().insert(VERSION_HEADER, value);
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// `POST /v1/break-glass`: a signed break-glass order, verified against the pinned root and
/// applied at once (see [`crate::break_glass`]); 422 with the reason when refused.
async fn break_glass_order(State(state): State<LocalState>, body: String) -> Response {
    match crate::break_glass::accept(&state.shared, &state.config, &body).await {
        Ok(lines) => axum::Json(json!({ "applied": lines })).into_response(),
        Err(refused) if refused.is_refusal() => {
            tracing::error!(error = %refused, "refused a break-glass order");
            error(StatusCode::UNPROCESSABLE_ENTITY, refused.to_string())
        }
        Err(failed) => error(StatusCode::INTERNAL_SERVER_ERROR, failed.to_string()),
    }
}

/// `GET /v1/break-glass`: the orders in force, the node's break-glass log, and how much of it
/// the control plane has.
async fn break_glass_status(State(state): State<LocalState>) -> Response {
    let orders = crate::break_glass::in_force(&state.shared, crate::now_ms());
    let (log, reported) = crate::break_glass::log(&state.shared);
    axum::Json(json!({ "in_force": orders, "log": log, "reported": reported })).into_response()
}

async fn status(State(state): State<LocalState>) -> Response {
    let mut status = state.shared.with_status(|s| s.clone()).unwrap_or_default();
    status.reports_queued = state.shared.reports.len();
    status.reports_dropped = state.shared.reports.dropped();
    axum::Json(status).into_response()
}

async fn unit_bytes(
    State(state): State<LocalState>,
    unit: Result<Path<String>, PathRejection>,
) -> Response {
    let unit = match unit_name(unit) {
        Ok(unit) => unit,
        Err(response) => return response,
    };
    match current(&state.shared, &unit).await {
        Ok(Some((bytes, hash))) => bytes_response(bytes, &hash),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("unit {unit} has no active version on this node"),
        ),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    after: Option<String>,
    wait_ms: Option<u64>,
}

async fn watch_unit(
    State(state): State<LocalState>,
    unit: Result<Path<String>, PathRejection>,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Response {
    let unit = match unit_name(unit) {
        Ok(unit) => unit,
        Err(response) => return response,
    };
    let query = match query {
        Ok(Query(query)) => query,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text()));
        }
    };
    let after: Option<VersionHash> = match query.after.as_deref().map(str::parse) {
        None => None,
        Some(Ok(hash)) => Some(hash),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "after is not a SHA-256 hex".to_owned(),
            );
        }
    };
    let wait_ms = query.wait_ms.unwrap_or(30_000).min(MAX_WATCH_MS);
    let mut changes = state.shared.activations.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        changes.borrow_and_update();
        match current(&state.shared, &unit).await {
            Ok(Some((bytes, hash))) if Some(hash) != after => {
                return bytes_response(bytes, &hash);
            }
            Ok(None) if after.is_some() => {
                // The watcher had a version and the unit was taken off the node: it falls
                // back to its fail mode.
                return error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "unit {unit} has no active version on this node any more: it was removed"
                    ),
                );
            }
            Ok(_) => {}
            Err(response) => return response,
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => return StatusCode::NOT_MODIFIED.into_response(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectionRequest {
    version: String,
    reason: String,
}

async fn rejection(
    State(state): State<LocalState>,
    unit: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let unit = match unit_name(unit) {
        Ok(unit) => unit,
        Err(response) => return response,
    };
    // Over MAX_BODY_BYTES is a 413, a body cut short a 400: with the JSON error shape.
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), format!("body: {}", e.body_text())),
    };
    let request: RejectionRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"version\": SHA-256 hex, \"reason\": text}}: {e}"),
            );
        }
    };
    let Ok(version) = request.version.parse::<VersionHash>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("version {:?} is not a SHA-256 hex", request.version),
        );
    };
    let reason = cut_reason(&format!("consumer rejected it: {}", request.reason));
    let shared = &state.shared;
    let active = current(shared, &unit)
        .await
        .ok()
        .flatten()
        .map(|(_, hash)| hash);
    let desired = shared
        .with_status(|s| s.units.get(&unit).and_then(|u| u.desired))
        .flatten();
    // A consumer can only have been served the active or the desired version. Refusing any
    // other would be remembered for the run without the control plane acting on it (no
    // rollout has it yet), and a later rollout of it would wait for this node forever.
    if active != Some(version) && desired != Some(version) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "version {} of unit {unit} is neither active nor desired on this node; nothing to reject",
                version.short()
            ),
        );
    }
    let first = !shared.is_refused(&unit, &version);
    shared.refuse(&unit, &version);
    if first {
        shared.note_refusal(format!("unit {unit} version {}: {reason}", version.short()));
        shared.reports.push(Report::Rejected {
            unit: unit.clone(),
            version,
            reason: reason.clone(),
        });
    }
    let good = shared.disk.good(&unit).ok().flatten();
    let restored = match (active, good) {
        (Some(active), Some(good)) if active == version && good != version => {
            let local = state.config.units.get(&unit).cloned().unwrap_or_default();
            Some(crate::apply::restore(shared, &unit, &good, &local).await)
        }
        _ => None,
    };
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"reported": first, "restored": restored})),
    )
        .into_response()
}
