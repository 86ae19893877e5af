//! `GET /v1/changes`: a long poll that answers when anything the server stores has changed
//! (an engine step, a changelog row, a unit, an incident, a freeze...), so a reader such as the
//! dashboard reads its views again at once instead of on a timer.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::{AppState, query_param};
use crate::error::ApiError;
use crate::rollouts::MAX_WATCH_MS;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangesQuery {
    /// The change counter the reader holds: the answer waits while the store's is the same.
    after: Option<u64>,
    /// How long to wait, in milliseconds (at most [`MAX_WATCH_MS`]); 0 answers at once.
    wait_ms: Option<u64>,
}

pub(super) async fn changes(
    State(state): State<AppState>,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<axum::Json<failsmall_wire::Changes>, ApiError> {
    let query = query_param(query)?;
    let wait_ms = query.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WATCH_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms is {wait_ms}; the limit is {MAX_WATCH_MS}"
        )));
    }
    let mut changes = state.shared.store.watch_changes();
    if let Some(after) = query.after {
        let changed = changes.wait_for(|count| *count != after);
        tokio::select! {
            _ = tokio::time::timeout(std::time::Duration::from_millis(wait_ms), changed) => {}
            () = state.shared.engine.closed() => {}
        }
    }
    let change = *changes.borrow();
    Ok(axum::Json(failsmall_wire::Changes { change }))
}
