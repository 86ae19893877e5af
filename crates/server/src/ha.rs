//! Several servers on one PostgreSQL store: one drives the engine under the store's lease
//! (`store/lease.rs`), the others stand by.
//!
//! A standby holds its listener and forwards every request to the active server, at the URL
//! the active server wrote into the lease (`--advertise-url`), and passes its answer back: any
//! server answers the whole API, long polls included. `/healthz` and `/metrics` are its own:
//! 503 `standby`, so load balancers that check health send traffic to the active server. When
//! there is no active server to forward to (the lease expired, the holder unreachable) a
//! standby answers 503 `standby` (agents fail over on 503). It tries for the lease every
//! [`poll_ms`]; once it has it, it keeps it from that moment, loads the engine from the store
//! and serves on the same socket, without waiting for the requests it was still forwarding.
//!
//! The active server renews the lease every quarter of its time to live ([`renew_ms`]); when
//! a renewal finds the lease taken, or none succeeded for a whole time to live (a renewal that
//! hangs counts as failed), it stops serving and [`crate::run`] returns
//! [`crate::ServerError::Deposed`] (a supervisor restarts it as a standby). Until then the
//! fence keeps every write of a deposed server out of the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use tokio::sync::watch;

use crate::store::{LeaseAttempt, LeaseHolder, Store};

/// Set on a request a standby forwards: a standby never forwards one again (a loop, when an
/// advertised URL leads back to a standby).
const FORWARDED: &str = "x-failsmall-forwarded-by";
/// How long a standby that stops (took the lease, or was told to stop) lets the requests it is
/// forwarding finish.
const STANDBY_DRAIN: Duration = Duration::from_secs(5);
/// How long a forwarded request may take: the longest long poll, and some.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(crate::rollouts::MAX_WATCH_MS + 30_000);

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
fn holder_id(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned());
    format!("{host} {listen} pid {}", std::process::id())
}

/// Who this server is in the lease and how long the lease lasts.
#[derive(Debug, Clone)]
struct Candidate {
    pub holder: String,
    /// Where the others reach it.
    pub url: String,
    pub ttl_ms: u64,
    /// Largest request body a standby forwards.
    pub max_body_bytes: usize,
}

/// What a standby's requests are answered with.
#[derive(Clone)]
struct Standby {
    leader: Arc<std::sync::Mutex<Option<LeaseHolder>>>,
    client: reqwest::Client,
    me: String,
    max_body_bytes: usize,
}

/// This server's URL for the others when none is configured: the listening address when it
/// names one host, else this host's name with the listening port.
fn default_url(listen: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if listen.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        format!("{scheme}://{host}:{}", listen.port())
    } else {
        format!("{scheme}://{listen}")
    }
}

/// On a shared store: stands by on `listener` until this server holds the engine's lease
/// (forwarding requests meanwhile), then keeps the lease from that moment on, saying on
/// `deposed` if it is lost. The listener to serve on and the keeper; `None` when told to stop
/// first.
pub async fn take_the_lease(
    config: &crate::ServerConfig,
    store: &Arc<Store>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: watch::Receiver<bool>,
    deposed: watch::Sender<bool>,
) -> Result<Option<(tokio::net::TcpListener, LeaseKeeper)>, crate::ServerError> {
    use crate::ServerError;
    // One socket, two accept loops in turn: the standby's, then the active server's.
    let shared = listener.into_std().map_err(ServerError::Serve)?;
    let standby =
        tokio::net::TcpListener::from_std(shared.try_clone().map_err(ServerError::Serve)?)
            .map_err(ServerError::Serve)?;
    let listener = tokio::net::TcpListener::from_std(shared).map_err(ServerError::Serve)?;
    let bound = Arc::clone(store);
    let ttl_ms = config.lease_ttl_ms;
    tokio::task::spawn_blocking(move || bound.bound_idle_transactions(ttl_ms))
        .await
        .map_err(|e| ServerError::Random(format!("startup task failed: {e}")))??;
    let address = listener.local_addr().map_err(ServerError::Serve)?;
    let candidate = Candidate {
        holder: holder_id(address),
        url: config
            .advertise_url
            .clone()
            .unwrap_or_else(|| default_url(address, config.tls.is_some())),
        ttl_ms,
        max_body_bytes: config.max_body_bytes,
    };
    let taken = stand_by(
        Arc::clone(store),
        standby,
        (tls, config.connections),
        candidate,
        stop,
    )
    .await?;
    Ok(taken.map(|_| {
        (
            listener,
            LeaseKeeper::spawn(Arc::clone(store), ttl_ms, deposed),
        )
    }))
}

/// Waits for the lease, forwarding requests to the active server meanwhile. `Some(epoch)`
/// once taken, `None` when told to stop first.
async fn stand_by(
    store: Arc<Store>,
    listener: tokio::net::TcpListener,
    serving: (
        Option<Arc<rustls::ServerConfig>>,
        crate::serve::ConnectionLimits,
    ),
    me: Candidate,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<u64>, crate::ServerError> {
    let Candidate {
        holder,
        url,
        ttl_ms,
        max_body_bytes,
    } = me;
    // A lone server takes the lease at once and never answers as a standby.
    let first = try_take(&store, &holder, &url, ttl_ms).await?;
    if let Ok(LeaseAttempt::Taken { epoch }) = first {
        tracing::info!(epoch, holder = %holder, "took the engine's lease: serving");
        return Ok(Some(epoch));
    }
    let client = reqwest::Client::builder()
        .timeout(FORWARD_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| crate::ServerError::Engine(format!("standby's HTTP client: {e}")))?;
    let standby = Standby {
        leader: Arc::new(std::sync::Mutex::new(None)),
        client,
        me: holder.clone(),
        max_body_bytes,
    };
    // Before the first request: whom to forward to.
    if let (Ok(LeaseAttempt::HeldBy(current)), Ok(mut slot)) = (&first, standby.leader.lock()) {
        *slot = (current.expires_in_ms > 0).then(|| current.clone());
    }
    let router = Router::new().fallback(forward).with_state(standby.clone());
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
                if let Ok(mut slot) = standby.leader.lock() {
                    *slot = (current.expires_in_ms > 0).then_some(current);
                }
            }
            Err(error) => tracing::warn!(%error, "standing by: the lease could not be read"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(poll_ms(ttl_ms))) => {}
            _ = stop.wait_for(|stop| *stop) => break None,
        }
        attempt = try_take(&store, &holder, &url, ttl_ms).await?;
    };
    // The standby stops accepting; requests it is still forwarding (long polls to a server
    // that died or hangs) end on their own. A new active server does not wait for them: it
    // serves on the same socket at once and keeps its lease from now on.
    let _ = taken_tx.send(true);
    let draining = async move {
        match tokio::time::timeout(STANDBY_DRAIN, serving_standby).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "standby: serving ended with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "standby: its serving task failed"),
            Err(_) => tracing::warn!(
                "standby: forwarded requests still open {STANDBY_DRAIN:?} after it stopped"
            ),
        }
    };
    if outcome.is_some() {
        tokio::spawn(draining);
    } else {
        draining.await;
    }
    Ok(outcome)
}

async fn try_take(
    store: &Arc<Store>,
    holder: &str,
    url: &str,
    ttl_ms: u64,
) -> Result<Result<LeaseAttempt, crate::store::StoreError>, crate::ServerError> {
    let store = Arc::clone(store);
    let holder = holder.to_owned();
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || store.try_take_lease(&holder, &url, ttl_ms))
        .await
        .map_err(|e| crate::ServerError::Engine(format!("lease task failed: {e}")))
}

/// Headers that belong to one connection, never passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

async fn forward(
    State(standby): State<Standby>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let leader = standby
        .leader
        .lock()
        .map(|l| l.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let path = request.uri().path();
    let own = path == "/healthz" || path == "/metrics";
    let (Some(leader), false, false) = (
        leader.clone(),
        own,
        request.headers().contains_key(FORWARDED),
    ) else {
        return standby_answer(leader.as_ref());
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, standby.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return crate::error::ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is over {} bytes", standby.max_body_bytes),
            )
            .into_response();
        }
    };
    let target = format!(
        "{}{}",
        leader.url.trim_end_matches('/'),
        parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    let mut outgoing = standby.client.request(parts.method, &target).body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    outgoing = outgoing.header(FORWARDED, standby.me.as_str());
    match outgoing.send().await {
        Ok(answer) => {
            let mut response = axum::response::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if !hop_by_hop(name) {
                    response = response.header(name, value);
                }
            }
            response
                .body(axum::body::Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|_| standby_answer(Some(&leader)))
        }
        Err(error) => {
            tracing::warn!(%error, leader = %leader.url, "standby: the active server did not answer a forwarded request");
            standby_answer(Some(&leader))
        }
    }
}

fn standby_answer(leader: Option<&LeaseHolder>) -> axum::response::Response {
    let holder = leader.map_or_else(
        || "no server (the lease is free)".to_owned(),
        |l| format!("{} at {} (lease epoch {})", l.holder, l.url, l.epoch),
    );
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

/// The task that renews the lease while this server holds it; stopped when dropped.
#[derive(Debug)]
pub struct LeaseKeeper(tokio::task::JoinHandle<()>);

impl LeaseKeeper {
    /// Renews the lease in the store from now on; says so on `deposed` when it is lost.
    pub fn spawn(store: Arc<Store>, ttl_ms: u64, deposed: watch::Sender<bool>) -> Self {
        Self(tokio::spawn(keep_lease(store, ttl_ms, deposed)))
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease until it is lost; then says so on `deposed` and returns. A renewal that
/// does not answer within the lease's time to live counts as failed (a database that stopped
/// answering must not keep a deposed server serving).
async fn keep_lease(store: Arc<Store>, ttl_ms: u64, deposed: watch::Sender<bool>) {
    let mut renewed_at = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(renew_ms(ttl_ms))).await;
        if renewed_at.elapsed() >= Duration::from_millis(ttl_ms) {
            tracing::error!(
                ttl_ms,
                "no renewal of the engine's lease for its whole time to live: stopping"
            );
            break;
        }
        let store = Arc::clone(&store);
        let renewal = tokio::time::timeout(
            Duration::from_millis(ttl_ms),
            tokio::task::spawn_blocking(move || store.renew_lease(ttl_ms)),
        )
        .await;
        match renewal {
            Ok(Ok(Ok(true))) => renewed_at = Instant::now(),
            Ok(Ok(Ok(false))) => {
                tracing::error!("the engine's lease was taken by another server: stopping");
                break;
            }
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the engine's lease was not renewed"),
            Ok(Err(error)) => tracing::warn!(%error, "the lease renewal task failed"),
            Err(_) => tracing::warn!(ttl_ms, "the lease renewal did not answer in time"),
        }
    }
    let _ = deposed.send(true);
}
