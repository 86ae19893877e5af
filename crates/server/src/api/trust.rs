//! Trust on the API: tokens' owners and expiry, and the changelog's hash chain
//! (`GET /v1/changelog/verify`; changelog answers say when the chain is broken).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use failsmall_core::domain::rfc3339_from_ms;
use serde::Deserialize;
use serde_json::json;

use super::{AppState, db};
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::store::{NewChange, TokenRecord};

/// Longest a token may be created for: ten years.
pub const TOKEN_EXPIRES_IN_MAX_MS: u64 = 3650 * 24 * 3600 * 1000;
/// Shortest: one minute.
pub const TOKEN_EXPIRES_IN_MIN_MS: u64 = 60 * 1000;
/// Longest owner name, in bytes.
pub const OWNER_MAX_BYTES: usize = 128;
/// The header on changelog answers while the chain is broken.
pub const CHANGELOG_INTEGRITY_HEADER: &str = "x-failsmall-changelog-integrity";

/// The root file the server was started with, as is (404 `no_root` without one): agents
/// verify it against the root they pin, so it needs no authentication.
pub(super) async fn root(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(root) = state.shared.signer.root() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_root",
            "this server has no root.json in its data dir: agents pin its key on first use \
             (README: Keys)",
        ));
    };
    let mut response = Response::new(axum::body::Body::from(root.text.clone()));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// A 401 for a token past its expiry, saying when and what to do.
pub(super) fn refuse_expired(record: &TokenRecord, now_ms: u64) -> Result<(), ApiError> {
    match record.expires_ms {
        Some(expires_ms) if expires_ms <= now_ms => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            format!(
                "the token {:?} expired at {}; ask an admin for a new one (`failsmall token create`)",
                record.name,
                rfc3339_from_ms(expires_ms)
            ),
        )
        .with_detail(json!({"token": record.id, "expires_ms": expires_ms}))),
        _ => Ok(()),
    }
}

/// The owner and expiry of a token `caller` creates: the owner given, else the creator for
/// people's roles (so a token minted under another name is still its creator's: it cannot
/// approve its creator's pushes), none for agent tokens; the expiry from `expires_in`.
pub(super) fn owner_and_expiry(
    caller: &Caller,
    role: Role,
    owner: Option<&str>,
    expires_in: Option<&str>,
    now_ms: u64,
) -> Result<(Option<String>, Option<u64>), ApiError> {
    let owner = match owner {
        Some(owner) => {
            let owner = owner.trim();
            if owner.is_empty()
                || owner.len() > OWNER_MAX_BYTES
                || owner.chars().any(char::is_control)
            {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_owner",
                    format!(
                        "owner must be 1 to {OWNER_MAX_BYTES} bytes of printable text: the person the token acts for"
                    ),
                )
                .with_detail(json!({"field": "owner"})));
            }
            Some(owner.to_owned())
        }
        None if role == Role::Agent => None,
        None => Some(caller.name.clone()),
    };
    let expires_ms = match expires_in {
        None => None,
        Some(text) => {
            let bad = |why: String| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_expires_in",
                    format!("expires_in {text:?}: {why}"),
                )
                .with_detail(json!({"field": "expires_in"}))
            };
            let ms = parse_expires_in_ms(text)
                .map_err(|e| bad(format!("{e}; expected a duration such as 30d or 12h")))?;
            if !(TOKEN_EXPIRES_IN_MIN_MS..=TOKEN_EXPIRES_IN_MAX_MS).contains(&ms) {
                return Err(bad("must be between 1m and 3650d".to_owned()));
            }
            Some(now_ms.saturating_add(ms))
        }
    };
    Ok((owner, expires_ms))
}

/// A token's lifetime: whole days (`30d`, `365d`), which may be longer than the week other
/// durations allow, or any duration (`12h`, `90m`).
fn parse_expires_in_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Some(days) = text.strip_suffix('d')
        && !days.is_empty()
        && days.chars().all(|c| c.is_ascii_digit())
    {
        let days: u64 = days
            .parse()
            .map_err(|_| format!("{days:?} days is too many"))?;
        return days
            .checked_mul(24 * 3600 * 1000)
            .ok_or_else(|| format!("{days} days is too many"));
    }
    failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())
}

/// `, owner alice, expires 2026-...` for the changelog.
pub(super) fn owner_and_expiry_text(owner: Option<&str>, expires_ms: Option<u64>) -> String {
    let mut text = String::new();
    if let Some(owner) = owner {
        text.push_str(&format!(", owner {owner}"));
    }
    if let Some(expires_ms) = expires_ms {
        text.push_str(&format!(", expires {}", rfc3339_from_ms(expires_ms)));
    }
    text
}

/// `POST /v1/tokens/{id}/rotate`: a new secret for the same name, role, node, owner and
/// expiry; the old secret is refused from then on. 201 with the secret (shown once).
pub(super) async fn rotate_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::tokens::NewToken>), ApiError> {
    let id = super::path_param(id)?;
    let token = crate::auth::new_token()
        .map_err(|e| ApiError::internal(format!("no randomness for a token: {e}")))?;
    let hash = crate::auth::token_sha256(&token);
    let record = db(&state, move |store| {
        let reason = format!("token {id} rotated: a new secret replaces it");
        let change = NewChange {
            at_ms: super::now_ms(),
            actor: &caller.name,
            kind: "token_rotated",
            unit: None,
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        Ok(store.rotate_token(id, &hash, &change)?)
    })
    .await?;
    state.shared.tokens.clear();
    Ok((
        StatusCode::CREATED,
        axum::Json(failsmall_wire::tokens::NewToken {
            token,
            record: record.into(),
            replaces: Some(id),
        }),
    ))
}

/// An earlier checkpoint to compare with (`?checkpoint_row=N&checkpoint_hash=H`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckpointQuery {
    checkpoint_row: Option<u64>,
    checkpoint_hash: Option<String>,
}

/// `GET /v1/changelog/verify`: every row's hash recomputed; 200 either way, with `intact`,
/// the first broken row and the head, and — when intact — a checkpoint of the head signed
/// with the server's key, to keep outside the server. Given an earlier checkpoint, also
/// whether row N still has hash H (a rewritten or truncated tail does not).
pub(super) async fn verify_changelog(
    State(state): State<AppState>,
    query: Result<Query<CheckpointQuery>, QueryRejection>,
) -> Result<axum::Json<failsmall_wire::trust::ChangelogVerification>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let earlier = match (query.checkpoint_row, query.checkpoint_hash.clone()) {
        (Some(row), Some(hash)) => Some((row, hash)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "checkpoint_row and checkpoint_hash go together: the row and hash of an earlier checkpoint",
            ));
        }
    };
    let (report, stored) = db(&state, move |store| {
        let report = store.verify_changelog()?;
        let stored = match &earlier {
            Some((row, _)) => store.changelog_hash(*row)?,
            None => None,
        };
        Ok((report, stored))
    })
    .await?;
    let checkpoint = match (&report.first_break, report.head_id, &report.head_hash) {
        (None, Some(id), Some(hash)) => Some(failsmall_wire::trust::Checkpoint {
            row: id,
            hash: hash.clone(),
            signature: state.shared.signer.sign_checkpoint(id, hash),
            public_key: state.shared.signer.public_key_hex(),
        }),
        _ => None,
    };
    let earlier_checkpoint = match (&query.checkpoint_row, &query.checkpoint_hash) {
        (Some(row), Some(hash)) => {
            let holds = stored.as_deref() == Some(hash.as_str());
            let reason = match &stored {
                _ if holds => format!("row {row} still has hash {hash}"),
                Some(now) => format!(
                    "row {row} has hash {now}, not {hash} as the checkpoint says: the history up to it was rewritten"
                ),
                None => format!(
                    "row {row} is gone (the checkpoint says it had hash {hash}): the history was truncated"
                ),
            };
            Some(failsmall_wire::trust::EarlierCheckpoint {
                row: *row,
                hash: hash.clone(),
                holds,
                reason,
            })
        }
        _ => None,
    };
    let holds = earlier_checkpoint
        .as_ref()
        .is_none_or(|earlier| earlier.holds);
    Ok(axum::Json(failsmall_wire::trust::ChangelogVerification {
        intact: report.is_intact() && holds,
        rows: report.rows,
        head: failsmall_wire::trust::ChainHead {
            id: report.head_id,
            hash: report.head_hash,
        },
        first_break: report
            .first_break
            .map(|chain_break| failsmall_wire::trust::ChainBreak {
                id: chain_break.id,
                reason: chain_break.reason,
            }),
        checkpoint,
        earlier_checkpoint,
    }))
}

/// Marks changelog answers while the chain is broken, so no client reads an edited history
/// unwarned: `x-failsmall-changelog-integrity: broken at row N`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes_take_days_beyond_a_week() {
        assert_eq!(parse_expires_in_ms("30d"), Ok(30 * 24 * 3600 * 1000));
        assert_eq!(parse_expires_in_ms("12h"), Ok(12 * 3600 * 1000));
        assert!(parse_expires_in_ms("soon").is_err());
        assert!(parse_expires_in_ms("99999999999999999999d").is_err());
    }
}
