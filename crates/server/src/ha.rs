//! Several servers on one PostgreSQL store: one drives the engine under the store's lease
//! (`store/lease.rs`), the others stand by.
//!
//! A standby holds its listener and answers every request 503 (`standby`, naming the lease's
//! holder), so agents, which fail over on 503, and load balancers go to the active server. It
//! tries for the lease every [`poll_ms`]; once it has it, it loads the engine from the store and
//! serves. The active server renews the lease every quarter of its time to live; when a renewal
//! finds the lease taken, or none succeeded for a whole time to live, it stops serving and
//! [`crate::run`] returns [`crate::ServerError::Deposed`] (a supervisor restarts it as a
//! standby). Until then the fence keeps every write of a deposed server out of the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio::sync::watch;

use crate::store::{LeaseAttempt, Store};

/// The lease's default time to live: a new server drives the engine within about this long
/// after the active one died.
pub const LEASE_TTL_MS_DEFAULT: u64 = 10_000;
/// The shortest time to live accepted (renewals and polls run at fractions of it).
pub const LEASE_TTL_MS_MIN: u64 = 1_000;

/// How often a standby tries for the lease.
pub fn poll_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 10).max(100)
}

/// How often the active server renews the lease.
pub fn renew_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 4).max(100)
}

/// Names this server in the lease: host, listening address and process.
pub fn holder_id(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned());
    format!("{host} {listen} pid {}", std::process::id())
}

/// Waits for the lease, answering every request 503 meanwhile. `Some(epoch)` once taken,
/// `None` when told to stop first.
pub async fn stand_by(
    store: Arc<Store>,
    listener: tokio::net::TcpListener,
    serving: (
        Option<Arc<rustls::ServerConfig>>,
        crate::serve::ConnectionLimits,
    ),
    holder: String,
    ttl_ms: u64,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<u64>, crate::ServerError> {
    // A lone server takes the lease at once and never answers as a standby.
    let first = try_take(&store, &holder, ttl_ms).await?;
    if let Ok(LeaseAttempt::Taken { epoch }) = first {
        tracing::info!(epoch, holder = %holder, "took the engine's lease: serving");
        return Ok(Some(epoch));
    }
    let held_by = Arc::new(std::sync::Mutex::new(String::from("another server")));
    let router = {
        let held_by = Arc::clone(&held_by);
        Router::new().fallback(move || {
            let holder = held_by
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            async move { standby_answer(&holder) }
        })
    };
    let (taken_tx, mut taken_rx) = watch::channel(false);
    let serving_standby = tokio::spawn(crate::serve::serve(
        listener,
        router,
        serving.0,
        serving.1,
        async move {
            let _ = taken_rx.wait_for(|taken| *taken).await;
        },
    ));
    let mut said = false;
    let mut attempt = first;
    let outcome = loop {
        match attempt {
            Ok(LeaseAttempt::Taken { epoch }) => {
                tracing::info!(epoch, holder = %holder, "took the engine's lease: serving");
                break Some(epoch);
            }
            Ok(LeaseAttempt::HeldBy(current)) => {
                if !said {
                    tracing::info!(
                        holder = %current.holder,
                        epoch = current.epoch,
                        expires_in_ms = current.expires_in_ms,
                        "standing by: another server drives the engine"
                    );
                    said = true;
                }
                if let Ok(mut slot) = held_by.lock() {
                    *slot = format!("{} (lease epoch {})", current.holder, current.epoch);
                }
            }
            Err(error) => tracing::warn!(%error, "standing by: the lease could not be read"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(poll_ms(ttl_ms))) => {}
            _ = stop.wait_for(|stop| *stop) => break None,
        }
        attempt = try_take(&store, &holder, ttl_ms).await?;
    };
    let _ = taken_tx.send(true);
    match serving_standby.await {
        Ok(result) => result.map_err(crate::ServerError::Serve)?,
        Err(e) => {
            return Err(crate::ServerError::Engine(format!(
                "standby task failed: {e}"
            )));
        }
    }
    Ok(outcome)
}

async fn try_take(
    store: &Arc<Store>,
    holder: &str,
    ttl_ms: u64,
) -> Result<Result<LeaseAttempt, crate::store::StoreError>, crate::ServerError> {
    let store = Arc::clone(store);
    let holder = holder.to_owned();
    tokio::task::spawn_blocking(move || store.try_take_lease(&holder, ttl_ms))
        .await
        .map_err(|e| crate::ServerError::Engine(format!("lease task failed: {e}")))
}

fn standby_answer(holder: &str) -> axum::response::Response {
    let body = failsmall_wire::ErrorBody {
        error: failsmall_wire::ErrorDetail {
            code: "standby".to_owned(),
            message: format!(
                "this server stands by: {holder} drives the engine; ask it, or retry here later"
            ),
            detail: serde_json::Value::Null,
        },
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "1")],
        axum::Json(body),
    )
        .into_response()
}

/// Renews the lease until it is lost; then says so on `deposed` and returns.
pub async fn keep_lease(store: Arc<Store>, ttl_ms: u64, deposed: watch::Sender<bool>) {
    let mut renewed_at = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(renew_ms(ttl_ms))).await;
        let store = Arc::clone(&store);
        let renewal = tokio::task::spawn_blocking(move || store.renew_lease(ttl_ms)).await;
        match renewal {
            Ok(Ok(true)) => renewed_at = Instant::now(),
            Ok(Ok(false)) => {
                tracing::error!("the engine's lease was taken by another server: stopping");
                break;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the engine's lease was not renewed");
                if renewed_at.elapsed() >= Duration::from_millis(ttl_ms) {
                    tracing::error!(
                        ttl_ms,
                        "no renewal of the engine's lease for its whole time to live: stopping"
                    );
                    break;
                }
            }
            Err(error) => tracing::warn!(%error, "the lease renewal task failed"),
        }
    }
    let _ = deposed.send(true);
}
