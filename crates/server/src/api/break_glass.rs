//! Break glass, as agents report it once the control plane is back: each use of a
//! break-glass order on a node becomes a changelog entry (`break_glass`), so the audit trail
//! has it even though the order never went through the server.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use failsmall_core::domain::rfc3339_from_ms;

use super::{AppState, db, json_body, node_id, now_ms, path_param, text_field, unit_name};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::store::NewChange;

/// The latest instant shown (the last second of year 9999), in ms.
const SHOWN_MS_MAX: u64 = 253_402_300_799_000;
/// Most signers named in one report.
const SIGNERS_MAX: usize = failsmall_wire::reports::BREAK_GLASS_SIGNERS_MAX;

use failsmall_wire::reports::BreakGlassReport;

pub(super) async fn break_glass(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    node: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<
    (
        StatusCode,
        axum::Json<failsmall_wire::nodes::BreakGlassRecorded>,
    ),
    ApiError,
> {
    let node = node_id(&path_param(node)?)?;
    state.node_seen(&node);
    let report: BreakGlassReport = json_body(body)?;
    unit_name(&report.unit)?;
    for (field, value) in [
        ("nonce", &report.nonce),
        ("reason", &report.reason),
        ("outcome", &report.outcome),
    ] {
        text_field(field, value)?;
    }
    if let Some(version) = &report.version {
        super::version_hash(version)?;
    }
    if report.signers.len() > SIGNERS_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!(
                "{} signers; the limit is {SIGNERS_MAX}",
                report.signers.len()
            ),
        ));
    }
    let signers: Vec<String> = report
        .signers
        .iter()
        .map(|k| k.chars().take(16).collect())
        .collect();
    let reason = format!(
        "break glass on node {node} at {}: order {} signed by {} ({}), in force until {}: {}; {}",
        rfc3339_from_ms(report.at_ms.min(SHOWN_MS_MAX)),
        report.nonce,
        signers.len(),
        signers.join(", "),
        rfc3339_from_ms(report.expires_ms.min(SHOWN_MS_MAX)),
        report.reason,
        report.outcome,
    );
    let reason: String = reason
        .chars()
        .take(failsmall_core::limits::TEXT_MAX_BYTES / 4)
        .collect();
    tracing::warn!(node = %node, nonce = %report.nonce, unit = %report.unit, "{reason}");
    let id = db(&state, move |store| {
        Ok(store.record(&NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "break_glass",
            unit: Some(&report.unit),
            version: report.version.as_deref(),
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        })?)
    })
    .await?;
    state
        .shared
        .counters
        .break_glass_reports
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok((
        StatusCode::CREATED,
        axum::Json(failsmall_wire::nodes::BreakGlassRecorded { changelog_id: id }),
    ))
}
