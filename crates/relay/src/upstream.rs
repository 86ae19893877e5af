//! The relay's side of the control plane: one or more upstream URLs (servers of one control
//! plane, or other relays), tried in turn, with a jittered backoff after a failure, one probe
//! at a time while every upstream is away, and a bound on requests in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, header};

/// Most upstream URLs one relay may list.
pub const UPSTREAMS_MAX: usize = 16;
/// Most requests other than long polls in flight upstream at once; the others wait their turn.
pub const UPSTREAM_REQUESTS_AT_ONCE: usize = 64;
/// Most long polls held open upstream at once; the others wait their turn.
pub const UPSTREAM_WATCHES_AT_ONCE: usize = 16_384;
/// Longest any upstream request other than a long poll may take, in milliseconds.
pub const UPSTREAM_TIMEOUT_MS: u64 = 10_000;
/// First and largest delay before an upstream that failed is tried again, in milliseconds
/// (doubled on each failure, jittered into its upper half).
pub const UPSTREAM_BACKOFF_MIN_MS: u64 = 100;
pub const UPSTREAM_BACKOFF_MAX_MS: u64 = 5_000;
/// Longest the probe of an upstream after failures may take, in milliseconds.
pub const UPSTREAM_PROBE_TIMEOUT_MS: u64 = 2_000;
/// Largest upstream answer read (besides blobs), in bytes.
pub const UPSTREAM_ANSWER_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Why an upstream request gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No upstream could be reached (or all are backing off): nothing was delivered.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The request may or may not have arrived (timed out or cut mid-answer).
    #[error("upstream answer lost: {0}")]
    Lost(String),
    #[error("upstream answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// One upstream answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    /// The control plane is away or overloaded (500, 502, 503, 504): worth another upstream.
    pub fn is_server_fault(&self) -> bool {
        matches!(self.status, 500 | 502 | 503 | 504)
    }
}

/// One request to send upstream, with the agent's own headers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub method: Method,
    /// Path and query, e.g. `/v1/nodes/n1/desired?after=3&wait_ms=25000`.
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
    pub timeout_ms: u64,
    pub limit_bytes: usize,
    /// A long poll (counted against [`UPSTREAM_WATCHES_AT_ONCE`]).
    pub watch: bool,
}

#[derive(Debug)]
struct Backoff {
    /// Consecutive failures of every upstream.
    failures: AtomicU64,
    /// Until when (ms since `started`) no request goes upstream but one probe.
    down_until_ms: AtomicU64,
    probing: AtomicBool,
}

/// The upstreams, shared by every handler.
#[derive(Debug)]
pub struct Upstreams {
    http: reqwest::Client,
    bases: Vec<String>,
    current: AtomicUsize,
    backoff: Backoff,
    started: Instant,
    requests: tokio::sync::Semaphore,
    watches: tokio::sync::Semaphore,
    /// Requests sent upstream, by kind, for `/metrics`.
    pub sent: AtomicU64,
    pub blob_fetches: AtomicU64,
    pub probes: AtomicU64,
}

/// A delay in the upper half of `delay_ms`, chosen at random: relays that lost their upstream
/// together do not come back together.
pub fn jittered(delay_ms: u64) -> u64 {
    let mut bytes = [0u8; 8];
    let random = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => 0,
    };
    let half = delay_ms / 2;
    half.saturating_add(random % (delay_ms.saturating_sub(half).saturating_add(1)))
}

impl Upstreams {
    pub fn new(bases: Vec<String>) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            http,
            bases,
            current: AtomicUsize::new(0),
            backoff: Backoff {
                failures: AtomicU64::new(0),
                down_until_ms: AtomicU64::new(0),
                probing: AtomicBool::new(false),
            },
            started: Instant::now(),
            requests: tokio::sync::Semaphore::new(UPSTREAM_REQUESTS_AT_ONCE),
            watches: tokio::sync::Semaphore::new(UPSTREAM_WATCHES_AT_ONCE),
            sent: AtomicU64::new(0),
            blob_fetches: AtomicU64::new(0),
            probes: AtomicU64::new(0),
        }))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether every upstream is backing off now (a request would not be sent).
    pub fn is_away(&self) -> bool {
        self.now_ms() < self.backoff.down_until_ms.load(Ordering::Acquire)
    }

    /// How long until the next upstream attempt may go, in milliseconds.
    pub fn away_for_ms(&self) -> u64 {
        self.backoff
            .down_until_ms
            .load(Ordering::Acquire)
            .saturating_sub(self.now_ms())
    }

    /// Whether a request may go now. Not while backing off; after it, while the upstreams
    /// were failing, one request (and only one at a time) first probes the current upstream
    /// with `GET /healthz`: the others are answered "unreachable" at once, so that a control
    /// plane coming back meets one request per relay, not every agent's.
    async fn admit(&self) -> Result<(), UpstreamError> {
        if self.is_away() {
            return Err(UpstreamError::Unreachable(format!(
                "every upstream failed; next attempt in {} ms",
                self.away_for_ms()
            )));
        }
        if self.backoff.failures.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        if self
            .backoff
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(UpstreamError::Unreachable(
                "an upstream is being probed after failures".to_owned(),
            ));
        }
        let at = self.current.load(Ordering::Acquire) % self.bases.len().max(1);
        let base = self.bases.get(at).map_or("", String::as_str);
        self.probes.fetch_add(1, Ordering::Relaxed);
        let probed = self
            .http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_millis(UPSTREAM_PROBE_TIMEOUT_MS))
            .send()
            .await;
        self.backoff.probing.store(false, Ordering::Release);
        match probed {
            Ok(response) if response.status().is_success() => {
                tracing::info!(upstream = %base, "upstream answers again");
                self.succeeded();
                Ok(())
            }
            Ok(response) => {
                let why = format!("{base}/healthz answered {}", response.status().as_u16());
                self.failed(at, &why);
                Err(UpstreamError::Unreachable(why))
            }
            Err(error) => {
                let why = format!("{base}: {}", causes(&error));
                self.failed(at, &why);
                Err(UpstreamError::Unreachable(why))
            }
        }
    }

    fn succeeded(&self) {
        self.backoff.failures.store(0, Ordering::Release);
        self.backoff.down_until_ms.store(0, Ordering::Release);
    }

    /// Upstream `at` failed: the next becomes current; once every upstream failed in a row,
    /// the relay backs off (jittered, doubling) before it tries again.
    fn failed(&self, at: usize, why: &str) {
        let count = self.bases.len().max(1);
        let _ = self.current.compare_exchange(
            at,
            (at + 1) % count,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let failures = self
            .backoff
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failures >= count as u64 {
            let rounds = failures / count as u64;
            let shift = u32::try_from(rounds.saturating_sub(1).min(16)).unwrap_or(16);
            let delay_ms = UPSTREAM_BACKOFF_MIN_MS
                .saturating_mul(1u64 << shift)
                .min(UPSTREAM_BACKOFF_MAX_MS);
            let wait_ms = jittered(delay_ms);
            self.backoff
                .down_until_ms
                .store(self.now_ms().saturating_add(wait_ms), Ordering::Release);
            tracing::warn!(
                upstream = %self.bases.get(at).map_or("", String::as_str),
                %why,
                retry_in_ms = wait_ms,
                "every upstream failed; serving from the cache until one answers"
            );
        } else {
            tracing::warn!(
                upstream = %self.bases.get(at).map_or("", String::as_str),
                %why,
                "upstream failed; the next request goes to the next one"
            );
        }
    }

    /// Sends `request` to the current upstream. An answer of any status is returned (the
    /// caller decides); an upstream that cannot be reached, or answers 500/502/503/504, makes
    /// the next one current.
    pub async fn send(&self, request: &Outgoing) -> Result<Answer, UpstreamError> {
        let permits = if request.watch {
            &self.watches
        } else {
            &self.requests
        };
        let _permit = permits
            .acquire()
            .await
            .map_err(|e| UpstreamError::Unreachable(format!("upstream turns closed: {e}")))?;
        self.admit().await?;
        let at = self.current.load(Ordering::Acquire) % self.bases.len().max(1);
        let base = self.bases.get(at).map_or("", String::as_str);
        let sent = self.send_to(base, request).await;
        match &sent {
            Ok(answer) if answer.is_server_fault() => {
                self.failed(at, &format!("answered {}", answer.status));
            }
            Ok(_) => self.succeeded(),
            Err(UpstreamError::Unreachable(why)) => self.failed(at, why),
            Err(UpstreamError::Lost(_) | UpstreamError::TooLarge(_)) => {}
        }
        sent
    }

    async fn send_to(&self, base: &str, request: &Outgoing) -> Result<Answer, UpstreamError> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut builder = self
            .http
            .request(request.method.clone(), format!("{base}{}", request.path))
            .timeout(Duration::from_millis(request.timeout_ms))
            .body(request.body.clone());
        if let Some(authorization) = &request.authorization {
            builder = builder.header(header::AUTHORIZATION, authorization);
        }
        if let Some(content_type) = &request.content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let mut response = builder.send().await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Unreachable(format!("{base}: {}", causes(&e)))
            } else {
                UpstreamError::Lost(format!("{base}: {}", causes(&e)))
            }
        })?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| UpstreamError::Lost(format!("{base}: {}", causes(&e))))?
        {
            if body.len().saturating_add(chunk.len()) > request.limit_bytes {
                return Err(UpstreamError::TooLarge(request.limit_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            content_type,
            body: Bytes::from(body),
        })
    }
}

/// The agent's headers that go upstream with its request: its token and its body's type.
pub fn agent_headers(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let get = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (get(header::AUTHORIZATION), get(header::CONTENT_TYPE))
}

/// An error and its causes, `outer: inner`.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    let mut depth = 0;
    while let Some(cause) = current
        && depth < 8
    {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        current = cause.source();
        depth += 1;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_upper_half() {
        for _ in 0..100 {
            let delay = jittered(1000);
            assert!((500..=1000).contains(&delay), "{delay}");
        }
        assert_eq!(jittered(0), 0);
    }
}
