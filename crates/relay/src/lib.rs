//! `failsmall relay`: a regional pull-through relay between agents and the control plane.
//!
//! Agents point `--addr` at a relay as they would at a server. The relay speaks the agent
//! protocol only (register, heartbeat, the desired-state long poll, blobs, reports,
//! break-glass notes, the signing key and root, whoami) and forwards each request with the
//! agent's own `Authorization` header: it holds no credential of its own, and it is trusted
//! for transport only — agents verify every signature and hash as they do against a server.
//!
//! - Blobs are kept on disk by SHA-256 ([`blobs`]), fetched upstream once per hash however
//!   many agents ask at once, checked against the hash before they are kept or served.
//! - Each node's latest desired-state answer is kept in memory until its document expires
//!   ([`documents`]) and served while no upstream answers; identical polls share one request.
//! - Reports that cannot go upstream are spooled on disk ([`spool`]) and sent, in order, when
//!   one answers: an outage or a relay restart loses none.
//! - Upstreams are tried in turn with a jittered backoff, one probe at a time while all are
//!   away, and a bound on requests in flight ([`upstream`]).

pub mod blobs;
pub mod documents;
pub mod spool;
pub mod upstream;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;

use crate::blobs::{BLOB_FETCH_TIMEOUT_MS, BLOB_MAX_BYTES, BlobCache, is_sha256_hex, sha256_hex};
use crate::documents::Documents;
use crate::spool::{Spool, SpoolError};
use crate::upstream::{
    Answer, Outgoing, UPSTREAM_ANSWER_MAX_BYTES, UPSTREAM_TIMEOUT_MS, UPSTREAMS_MAX, UpstreamError,
    Upstreams, agent_headers,
};

/// Largest request body an agent may send through the relay, in bytes.
pub const REQUEST_BODY_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Longest long poll forwarded, in milliseconds (the server's own limit is lower).
pub const WATCH_WAIT_MAX_MS: u64 = 120_000;
/// While no upstream answers, a long poll that already has the kept document waits at most
/// this long before it is answered with it again, in milliseconds.
pub const AWAY_POLL_MAX_MS: u64 = 5_000;
/// Most tokens remembered as accepted upstream (by SHA-256); past it the set starts over.
pub const TOKENS_REMEMBERED_MAX: usize = 200_000;

/// What a relay runs with, parsed and then [`Config::validate`]d.
#[derive(Debug, Clone)]
pub struct Config {
    /// Upstream base URLs (servers of one control plane, or relays), in the order tried.
    pub upstreams: Vec<String>,
    /// Where blobs and spooled reports are kept.
    pub cache_dir: PathBuf,
    /// Bounds on agents' connections and their timeouts, as the server's (a relay holds a
    /// connection per agent, and agents' networks are not trusted).
    pub connections: failsmall_serve::ConnectionLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("upstream: at least one URL is required (http://HOST:PORT or https://...)")]
    NoUpstream,
    #[error("upstream: {given} names {count} URLs; the limit is {UPSTREAMS_MAX}")]
    TooManyUpstreams { given: String, count: usize },
    #[error("upstream: {0:?} is not an http:// or https:// URL")]
    NotHttp(String),
    #[error("cache-dir: {path}: {reason}")]
    CacheDir { path: String, reason: String },
    #[error("connections: {0}")]
    Connections(String),
}

impl Config {
    /// `upstreams`: one URL, or several separated by commas.
    pub fn new(upstreams: &str, cache_dir: PathBuf) -> Self {
        Self {
            upstreams: upstreams
                .split(',')
                .map(|url| url.trim().trim_end_matches('/').to_owned())
                .filter(|url| !url.is_empty())
                .collect(),
            cache_dir,
            connections: failsmall_serve::ConnectionLimits::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.upstreams.is_empty() {
            return Err(ConfigError::NoUpstream);
        }
        if self.upstreams.len() > UPSTREAMS_MAX {
            return Err(ConfigError::TooManyUpstreams {
                given: self.upstreams.join(","),
                count: self.upstreams.len(),
            });
        }
        for url in &self.upstreams {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || reqwest::Url::parse(url).is_err() {
                return Err(ConfigError::NotHttp(url.clone()));
            }
        }
        self.connections
            .validate()
            .map_err(ConfigError::Connections)?;
        if self.cache_dir.exists() && !self.cache_dir.is_dir() {
            return Err(ConfigError::CacheDir {
                path: self.cache_dir.display().to_string(),
                reason: "exists and is not a directory".to_owned(),
            });
        }
        Ok(())
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
struct Served {
    blobs_from_cache: AtomicU64,
    documents_from_cache: AtomicU64,
    reports_spooled: AtomicU64,
    reports_refused_full: AtomicU64,
}

#[derive(Debug)]
struct Relay {
    upstreams: Arc<Upstreams>,
    blobs: BlobCache,
    documents: Documents,
    spool: Arc<Spool>,
    /// SHA-256 of `Authorization` headers upstream accepted: only these are served from the
    /// caches (a relay never answers a token the control plane has not taken).
    accepted: Mutex<HashSet<String>>,
    served: Served,
}

type Shared = State<Arc<Relay>>;

impl Relay {
    fn accept(&self, token_sha256: &str) {
        let mut accepted = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        if accepted.len() >= TOKENS_REMEMBERED_MAX {
            accepted.clear();
        }
        accepted.insert(token_sha256.to_owned());
    }

    fn is_accepted(&self, token_sha256: &str) -> bool {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(token_sha256)
    }
}

/// Runs the relay on `listener` until `shutdown` completes. Spooled reports stay on disk
/// for the next run.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    raise_open_file_limit();
    let cache_error = |e: std::io::Error| RunError::CacheDir {
        path: config.cache_dir.display().to_string(),
        reason: e.to_string(),
    };
    let blobs = BlobCache::open(&config.cache_dir.join("blobs")).map_err(cache_error)?;
    let spool = Arc::new(Spool::open(&config.cache_dir.join("reports")).map_err(cache_error)?);
    let upstreams = Upstreams::new(config.upstreams.clone()).map_err(RunError::Client)?;
    let relay = Arc::new(Relay {
        upstreams: Arc::clone(&upstreams),
        blobs,
        documents: Documents::default(),
        spool: Arc::clone(&spool),
        accepted: Mutex::new(HashSet::new()),
        served: Served::default(),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let drainer = tokio::spawn(Arc::clone(&spool).drain(upstreams, stopped));
    let served =
        failsmall_serve::serve(listener, router(relay), None, config.connections, shutdown)
            .await
            .map_err(|e| RunError::Listener(e.to_string()));
    let _ = stop.send(true);
    let _ = drainer.await;
    served
}

/// Raises the soft open-file limit to the hard limit (each agent's long poll holds one
/// connection in and one upstream), and logs it; a limit that cannot be raised is logged only.
fn raise_open_file_limit() {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => match rlimit::increase_nofile_limit(hard) {
            Ok(now) => tracing::info!(open_files = now, was = soft, hard, "open-file limit"),
            Err(error) => {
                tracing::warn!(open_files = soft, hard, %error, "open-file limit not raised");
            }
        },
        Err(error) => tracing::warn!(%error, "open-file limit unknown"),
    }
}

/// Why the relay could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cache-dir: {path}: {reason}")]
    CacheDir { path: String, reason: String },
    #[error("{0}")]
    Client(String),
    #[error("the relay's listener failed: {0}")]
    Listener(String),
}

fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/signing-key", get(forward))
        .route("/v1/root", get(forward))
        .route("/v1/whoami", get(forward))
        .route("/v1/nodes/{node}", put(forward))
        .route("/v1/nodes/{node}/heartbeat", post(forward))
        .route("/v1/nodes/{node}/break-glass", post(forward))
        .route("/v1/nodes/{node}/desired", get(desired))
        .route("/v1/nodes/{node}/reports", post(reports))
        .route("/v1/blobs/{sha256}", get(blob))
        .fallback(not_relayed)
        .layer(DefaultBodyLimit::max(REQUEST_BODY_MAX_BYTES))
        .with_state(relay)
}

/// A JSON error in the control plane's shape (`{"error": {"code", "message", "detail"}}`).
fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "error": {"code": code, "message": message.into(), "detail": null}
    });
    (status, axum::Json(body)).into_response()
}

fn upstream_error(error: &UpstreamError) -> Response {
    match error {
        UpstreamError::Unreachable(why) => error_response_unreachable(why),
        UpstreamError::Lost(why) => {
            json_error(StatusCode::BAD_GATEWAY, "upstream_lost", why.clone())
        }
        UpstreamError::TooLarge(limit) => json_error(
            StatusCode::BAD_GATEWAY,
            "upstream_too_large",
            format!("the upstream answer is larger than {limit} bytes"),
        ),
    }
}

fn error_response_unreachable(why: &str) -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_unreachable",
        format!("no upstream answers ({why}); try again later"),
    )
}

/// An upstream answer, passed on as it came.
fn relayed(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, answer.body).into_response();
    if let Some(content_type) = answer
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}

fn token_sha256(authorization: Option<&str>) -> String {
    sha256_hex(authorization.unwrap_or_default().as_bytes())
}

fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned())
}

async fn not_relayed(uri: Uri) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "not_relayed",
        format!(
            "{}: a relay serves the agent protocol only; send other requests to the control plane",
            uri.path()
        ),
    )
}

async fn healthz(State(relay): Shared) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "upstream": if relay.upstreams.is_away() { "away" } else { "reachable" },
        "reports_spooled": relay.spool.len(),
    });
    axum::Json(body).into_response()
}

async fn metrics(State(relay): Shared) -> Response {
    let upstreams = &relay.upstreams;
    let served = &relay.served;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let text = format!(
        "# TYPE failsmall_relay_upstream_requests_total counter\n\
         failsmall_relay_upstream_requests_total {}\n\
         # TYPE failsmall_relay_upstream_blob_fetches_total counter\n\
         failsmall_relay_upstream_blob_fetches_total {}\n\
         # TYPE failsmall_relay_upstream_probes_total counter\n\
         failsmall_relay_upstream_probes_total {}\n\
         # TYPE failsmall_relay_upstream_away gauge\n\
         failsmall_relay_upstream_away {}\n\
         # TYPE failsmall_relay_blobs_served_from_cache_total counter\n\
         failsmall_relay_blobs_served_from_cache_total {}\n\
         # TYPE failsmall_relay_blob_cache_bytes gauge\n\
         failsmall_relay_blob_cache_bytes {}\n\
         # TYPE failsmall_relay_documents_served_from_cache_total counter\n\
         failsmall_relay_documents_served_from_cache_total {}\n\
         # TYPE failsmall_relay_documents_kept gauge\n\
         failsmall_relay_documents_kept {}\n\
         # TYPE failsmall_relay_reports_spooled_total counter\n\
         failsmall_relay_reports_spooled_total {}\n\
         # TYPE failsmall_relay_reports_refused_full_total counter\n\
         failsmall_relay_reports_refused_full_total {}\n\
         # TYPE failsmall_relay_reports_waiting gauge\n\
         failsmall_relay_reports_waiting {}\n",
        load(&upstreams.sent),
        load(&upstreams.blob_fetches),
        load(&upstreams.probes),
        u8::from(upstreams.is_away()),
        load(&served.blobs_from_cache),
        relay.blobs.bytes(),
        load(&served.documents_from_cache),
        relay.documents.len(),
        load(&served.reports_spooled),
        load(&served.reports_refused_full),
        relay.spool.len(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Register, heartbeat, break-glass notes, signing key, root, whoami: forwarded as they are.
async fn forward(
    State(relay): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (authorization, content_type) = agent_headers(&headers);
    let token = token_sha256(authorization.as_deref());
    let request = Outgoing {
        method,
        path: path_and_query(&uri),
        authorization,
        content_type,
        body,
        timeout_ms: UPSTREAM_TIMEOUT_MS,
        limit_bytes: UPSTREAM_ANSWER_MAX_BYTES,
        watch: false,
    };
    match relay.upstreams.send(&request).await {
        Ok(answer) => {
            if (200..300).contains(&answer.status) {
                relay.accept(&token);
            }
            relayed(answer)
        }
        Err(error) => upstream_error(&error),
    }
}

#[derive(Debug, Deserialize)]
struct DesiredQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The long poll: forwarded (identical polls in flight share one upstream request); the
/// answer is kept; while no upstream answers, the kept answer is served until it expires.
async fn desired(
    State(relay): Shared,
    Path(node): Path<String>,
    query: Result<Query<DesiredQuery>, axum::extract::rejection::QueryRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(query)) = query else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "after and wait_ms: expected non-negative integers",
        );
    };
    let wait_ms = query.wait_ms.unwrap_or(0);
    if wait_ms > WATCH_WAIT_MAX_MS {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("wait_ms is {wait_ms}; the limit is {WATCH_WAIT_MAX_MS}"),
        );
    }
    let (authorization, _) = agent_headers(&headers);
    let token = token_sha256(authorization.as_deref());
    let path = path_and_query(&uri);
    let request = Outgoing {
        method: Method::GET,
        path: path.clone(),
        authorization,
        content_type: None,
        body: Bytes::new(),
        timeout_ms: wait_ms.saturating_add(UPSTREAM_TIMEOUT_MS),
        limit_bytes: UPSTREAM_ANSWER_MAX_BYTES,
        watch: true,
    };
    let key = format!("{token} {path}");
    let upstreams = Arc::clone(&relay.upstreams);
    let answer = relay
        .documents
        .shared(&key, || async move { upstreams.send(&request).await })
        .await;
    let unreachable = match answer {
        Ok(answer) if answer.status == 200 => {
            relay.accept(&token);
            relay.documents.keep(&node, &token, &answer.body);
            return relayed(answer);
        }
        Ok(answer) if answer.is_server_fault() => format!("upstream answered {}", answer.status),
        Ok(answer) => return relayed(answer),
        // A poll is harmless to answer from what was kept, whether or not upstream saw it.
        Err(error) => error.to_string(),
    };
    // No upstream answers: the kept answer, if it has not expired.
    let Some(kept) = relay.documents.kept(&node, &token, now_ms()) else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unreachable",
            format!(
                "no upstream answers ({unreachable}) and the relay holds no unexpired desired state for node {node}"
            ),
        );
    };
    if query.after.is_some_and(|after| kept.seq <= after) {
        // The agent has it already: answer it again after a while, as a server does when
        // nothing changed, so that the agent does not poll in a loop.
        let pause_ms = wait_ms
            .min(AWAY_POLL_MAX_MS)
            .max(relay.upstreams.away_for_ms().min(AWAY_POLL_MAX_MS));
        tokio::time::sleep(Duration::from_millis(upstream::jittered(pause_ms))).await;
    }
    relay
        .served
        .documents_from_cache
        .fetch_add(1, Ordering::Relaxed);
    relayed(Answer {
        status: 200,
        content_type: Some("application/json".to_owned()),
        body: kept.body,
    })
}

/// A bundle by hash: from the disk cache to a token upstream accepted, else fetched upstream
/// once for every request that asks at the same time, checked against its hash, kept.
async fn blob(State(relay): Shared, Path(hash): Path<String>, headers: HeaderMap) -> Response {
    if !is_sha256_hex(&hash) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_hash",
            format!("sha256: {hash:?} is not 64 lowercase hex digits"),
        );
    }
    let (authorization, _) = agent_headers(&headers);
    let token = token_sha256(authorization.as_deref());
    let from_cache = |bytes: Bytes| {
        relay
            .served
            .blobs_from_cache
            .fetch_add(1, Ordering::Relaxed);
        ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
    };
    if relay.is_accepted(&token)
        && let Some(bytes) = relay.blobs.kept(&hash).await
    {
        return from_cache(bytes);
    }
    let lock = relay.blobs.fetch_lock(&hash);
    let fetched = {
        let turn = lock.lock().await;
        // Fetched by the request this one waited for.
        if relay.is_accepted(&token)
            && let Some(bytes) = relay.blobs.kept(&hash).await
        {
            drop(turn);
            drop(lock);
            relay.blobs.fetch_done(&hash);
            return from_cache(bytes);
        }
        let fetched = fetch_blob(&relay, &hash, authorization).await;
        drop(turn);
        fetched
    };
    drop(lock);
    relay.blobs.fetch_done(&hash);
    match fetched {
        Ok(answer) if answer.status == 200 => {
            relay.accept(&token);
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                answer.body,
            )
                .into_response()
        }
        Ok(answer) => relayed(answer),
        Err(response) => response,
    }
}

/// Fetches blob `hash` upstream; a 200 answer is checked against the hash and kept.
async fn fetch_blob(
    relay: &Relay,
    hash: &str,
    authorization: Option<String>,
) -> Result<Answer, Response> {
    let request = Outgoing {
        method: Method::GET,
        path: format!("/v1/blobs/{hash}"),
        authorization,
        content_type: None,
        body: Bytes::new(),
        timeout_ms: BLOB_FETCH_TIMEOUT_MS,
        limit_bytes: BLOB_MAX_BYTES,
        watch: false,
    };
    relay.upstreams.blob_fetches.fetch_add(1, Ordering::Relaxed);
    let answer = relay
        .upstreams
        .send(&request)
        .await
        .map_err(|e| upstream_error(&e))?;
    if answer.status != 200 {
        return Ok(answer);
    }
    let actual = sha256_hex(&answer.body);
    if actual != hash {
        tracing::warn!(%hash, %actual, "upstream blob does not match its hash; refused");
        return Err(json_error(
            StatusCode::BAD_GATEWAY,
            "upstream_hash_mismatch",
            format!("the upstream's bytes for blob {hash} hash to {actual}; not served"),
        ));
    }
    relay.blobs.keep(hash, &answer.body).await;
    Ok(answer)
}

/// Reports: forwarded while upstream answers and the node has none waiting; else spooled on
/// disk (answered 202) and sent in order later; 503 when the spool is full.
async fn reports(
    State(relay): Shared,
    Path(node): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (authorization, content_type) = agent_headers(&headers);
    if !relay.spool.holds(&node) && !relay.upstreams.is_away() {
        let request = Outgoing {
            method: Method::POST,
            path: format!("/v1/nodes/{node}/reports"),
            authorization: authorization.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
            timeout_ms: UPSTREAM_TIMEOUT_MS,
            limit_bytes: UPSTREAM_ANSWER_MAX_BYTES,
            watch: false,
        };
        match relay.upstreams.send(&request).await {
            Ok(answer) if !answer.is_server_fault() => {
                if (200..300).contains(&answer.status) {
                    relay.accept(&token_sha256(authorization.as_deref()));
                }
                return relayed(answer);
            }
            // Not delivered: spooled below.
            Ok(_) | Err(UpstreamError::Unreachable(_)) => {}
            // It may have arrived: the agent decides (it sends again).
            Err(other) => return upstream_error(&other),
        }
    }
    match relay
        .spool
        .push(&node, authorization, content_type, &body)
        .await
    {
        Ok(()) => {
            relay.served.reports_spooled.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"spooled": true})),
            )
                .into_response()
        }
        Err(SpoolError::Full) => {
            relay
                .served
                .reports_refused_full
                .fetch_add(1, Ordering::Relaxed);
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "spool_full",
                SpoolError::Full.to_string(),
            )
        }
        Err(SpoolError::NotText) => json_error(
            StatusCode::BAD_REQUEST,
            "invalid_report",
            "body: expected a JSON report or batch of reports (UTF-8 text)",
        ),
        Err(other @ SpoolError::Disk(_)) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "spool_unavailable",
            other.to_string(),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_flag_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let ok = Config::new("http://a:1, https://b:2/", dir.path().to_owned());
        assert_eq!(ok.upstreams, ["http://a:1", "https://b:2"]);
        ok.validate().unwrap();
        let none = Config::new(" , ", dir.path().to_owned())
            .validate()
            .unwrap_err();
        assert!(none.to_string().starts_with("upstream:"), "{none}");
        let ftp = Config::new("ftp://a", dir.path().to_owned())
            .validate()
            .unwrap_err();
        assert!(ftp.to_string().contains("not an http"), "{ftp}");
        let many = vec!["http://a:1"; UPSTREAMS_MAX + 1].join(",");
        let many = Config::new(&many, dir.path().to_owned())
            .validate()
            .unwrap_err();
        assert!(many.to_string().contains("the limit is 16"), "{many}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let not_dir = Config::new("http://a:1", file).validate().unwrap_err();
        assert!(not_dir.to_string().starts_with("cache-dir:"), "{not_dir}");
    }
}
