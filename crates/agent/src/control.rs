//! The control plane as the agent sees it: register, watch the desired state, fetch bundles,
//! report. Every response body is read with a size limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use failsmall_core::domain::{UnitName, VersionHash};
use failsmall_core::health::HealthSample;
use serde::Serialize;

use crate::verify::{Envelope, MAX_DOCUMENT_BYTES};

/// Longest any request other than the watch may take.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Largest JSON response read (besides blobs), in bytes.
const MAX_RESPONSE_BYTES: usize = 2 * MAX_DOCUMENT_BYTES + 4096;
/// Most control-plane servers (or relays) one agent may list.
pub const SERVERS_MAX: usize = 16;

/// The servers listed in `urls`: one URL, or several separated by commas, in the order tried.
pub fn server_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(|url| url.trim().trim_end_matches('/').to_owned())
        .filter(|url| !url.is_empty())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("{what}: control plane unreachable: {reason}")]
    Unreachable { what: String, reason: String },
    #[error("{what}: control plane answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: response is larger than {limit} bytes")]
    TooLarge { what: String, limit: usize },
    #[error("{what}: response does not parse: {reason}")]
    Malformed { what: String, reason: String },
}

/// One report to the control plane (`POST /v1/nodes/{node}/reports`). Most name a unit's
/// version; the staleness reports ([`Report::Stale`], [`Report::Fresh`]) are about the node.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    Applied {
        unit: UnitName,
        version: VersionHash,
    },
    Rejected {
        unit: UnitName,
        version: VersionHash,
        reason: String,
    },
    Crashed {
        unit: UnitName,
        version: VersionHash,
        reason: String,
    },
    HealthCheckFailed {
        unit: UnitName,
        version: VersionHash,
        reason: String,
    },
    Health {
        unit: UnitName,
        version: VersionHash,
        sample: HealthSample,
    },
    /// The latest desired-state document (sequence `seq`, the highest trusted) expired at
    /// `since_ms` and nothing newer came: the node serves what it has, possibly stale.
    Stale { since_ms: u64, seq: u64 },
    /// A fresh, trusted document came after `stale_ms` of staleness.
    Fresh { stale_ms: u64 },
    /// The unit left the node's desired state (a removal the document asked for) and
    /// `version`, which was active, was removed from `current`; none: nothing was active. The
    /// ACK of a removal.
    Removed {
        unit: UnitName,
        version: Option<VersionHash>,
    },
    /// The bundle of `version` could not be fetched intact (unreachable, a hash mismatch, an
    /// answer larger than the unit allows): a transport fault, retried, never the version's
    /// fault.
    FetchFailed {
        unit: UnitName,
        version: VersionHash,
        reason: String,
    },
    /// A desired-state document was refused for trust (signature, replay, wrong node,
    /// malformed): nothing in it was acted on.
    Untrusted { seq: u64, reason: String },
    /// The bytes served for `version` did not match its hash (damaged on disk); they were
    /// restored from the verified copy.
    Repaired {
        unit: UnitName,
        version: VersionHash,
        reason: String,
    },
}

/// Most bytes of a reason sent (the server refuses longer text: one home,
/// [`failsmall_core::limits::TEXT_MAX_BYTES`]).
pub const REASON_MAX_BYTES: usize = failsmall_core::limits::TEXT_MAX_BYTES;

/// Cuts `reason` to at most [`REASON_MAX_BYTES`], on a character boundary.
pub fn cut_reason(reason: &str) -> String {
    let mut end = reason.len().min(REASON_MAX_BYTES);
    while !reason.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    reason.get(..end).unwrap_or_default().to_owned()
}

/// An error and its causes, `outer: inner: innermost` (the innermost says what went wrong:
/// a refused connection, a certificate not trusted).
pub(crate) fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
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

impl ControlError {
    /// Whether the server's TLS certificate is not trusted (no `--ca`, or the wrong one).
    pub fn is_untrusted_certificate(&self) -> bool {
        matches!(self, Self::Unreachable { reason, .. }
            if reason.contains("invalid peer certificate")
                || reason.contains("UnknownIssuer")
                || reason.contains("certificate pin mismatch"))
    }

    /// Whether sending the same request again cannot help: the control plane understood it
    /// and refused it for what it says (any 4xx but unauthorized, timeout, conflict and too
    /// many requests, which say something about the moment, not the request).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Status { status, .. }
            if (400..500).contains(status) && !matches!(status, 401 | 408 | 409 | 429))
    }
}

/// Who the control plane takes a token for (`GET /v1/whoami`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Identity {
    pub name: Option<String>,
    pub role: Option<String>,
    pub node: Option<String>,
}

/// A client of the control plane, for one node: one server, or several (servers of one
/// control plane, or relays) tried in turn. Requests go to the current server; one that is
/// unreachable or answers 500, 502, 503 or 504 makes the next server current, so the
/// caller's next attempt (after its jittered backoff) goes there. Clones share the current
/// server. Every answer is verified by the caller as before: a server or relay is never
/// trusted for content, only for transport.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    http: reqwest::Client,
    bases: Arc<[String]>,
    current: Arc<AtomicUsize>,
    token: String,
    node: String,
}

impl ControlPlane {
    /// `bases`: one URL, or several separated by commas ([`server_urls`]).
    pub fn new(bases: &str, token: &str, node: &str) -> Self {
        let mut list = server_urls(bases);
        list.truncate(SERVERS_MAX);
        if list.is_empty() {
            list.push(bases.trim_end_matches('/').to_owned());
        }
        Self {
            http: reqwest::Client::new(),
            bases: list.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token: token.to_owned(),
            node: node.to_owned(),
        }
    }

    /// The current server's index and `path` on it.
    fn url(&self, path: &str) -> (usize, String) {
        let at = self.current.load(Ordering::Relaxed) % self.bases.len().max(1);
        let base = self.bases.get(at).map_or("", String::as_str);
        (at, format!("{base}{path}"))
    }

    /// The server requests go to now.
    pub fn server(&self) -> &str {
        let at = self.current.load(Ordering::Relaxed) % self.bases.len().max(1);
        self.bases.get(at).map_or("", String::as_str)
    }

    /// After server `at` failed: the next one becomes current (unless another request
    /// already moved on).
    fn fail_over(&self, at: usize, why: &str) {
        let count = self.bases.len();
        if count < 2 {
            return;
        }
        let next = (at + 1) % count;
        if self
            .current
            .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                from = %self.bases.get(at).map_or("", String::as_str),
                to = %self.bases.get(next).map_or("", String::as_str),
                %why,
                "control plane server failed; the next attempt goes to the next one"
            );
        }
    }

    /// Trusts, for an https:// server, only the certificate whose SHA-256 is `pin` when
    /// given, else only the CAs of the PEM bundle at `ca` (none: the public root CAs built
    /// in). An error names the flag at fault.
    pub fn with_tls(
        mut self,
        ca: Option<&std::path::Path>,
        pin: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let builder = match (pin, ca) {
            (Some(pin), _) => reqwest::Client::builder().use_preconfigured_tls(
                crate::tls::pinned_config(pin).map_err(|e| ("pin-sha256", e.to_string()))?,
            ),
            (None, Some(_)) => crate::tls::client_builder(ca).map_err(|e| ("ca", e.to_string()))?,
            (None, None) => return Ok(self),
        };
        self.http = builder
            .build()
            .map_err(|e| ("ca", format!("cannot build the HTTP client: {e}")))?;
        Ok(self)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    async fn send(
        &self,
        what: &str,
        (at, request): (usize, reqwest::RequestBuilder),
        timeout_ms: u64,
        limit: usize,
    ) -> Result<Vec<u8>, ControlError> {
        let sent = self.send_to(what, request, timeout_ms, limit).await;
        if let Err(error) = &sent {
            let server_fault = match error {
                ControlError::Unreachable { .. } => true,
                ControlError::Status { status, .. } => matches!(status, 500 | 502 | 503 | 504),
                ControlError::TooLarge { .. } | ControlError::Malformed { .. } => false,
            };
            if server_fault {
                self.fail_over(at, &error.to_string());
            }
        }
        sent.map_err(|error| match error {
            ControlError::Unreachable { what, reason } if self.bases.len() > 1 => {
                let server = self.bases.get(at).map_or("", String::as_str);
                ControlError::Unreachable {
                    what,
                    reason: format!("{server}: {reason}"),
                }
            }
            other => other,
        })
    }

    async fn send_to(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        timeout_ms: u64,
        limit: usize,
    ) -> Result<Vec<u8>, ControlError> {
        let unreachable = |e: reqwest::Error| ControlError::Unreachable {
            what: what.to_owned(),
            reason: with_causes(&e),
        };
        let mut response = request
            .bearer_auth(&self.token)
            .timeout(Duration::from_millis(timeout_ms))
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len().saturating_add(chunk.len()) > limit {
                return Err(ControlError::TooLarge {
                    what: what.to_owned(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(ControlError::Status {
                what: what.to_owned(),
                status: status.as_u16(),
                body: cut_reason(&String::from_utf8_lossy(&body)),
            });
        }
        Ok(body)
    }

    fn json<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, ControlError> {
        serde_json::from_slice(body).map_err(|e| ControlError::Malformed {
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The server's public key (hex), for trust on first use.
    pub async fn signing_key(&self) -> Result<String, ControlError> {
        let what = "GET /v1/signing-key";
        let (at, url) = self.url("/v1/signing-key");
        let request = (at, self.http.get(url));
        let body = self
            .send(what, request, REQUEST_TIMEOUT_MS, MAX_RESPONSE_BYTES)
            .await?;
        let value: serde_json::Value = Self::json(what, &body)?;
        value
            .get("public_key")
            .and_then(|k| k.as_str())
            .map(str::to_owned)
            .ok_or_else(|| ControlError::Malformed {
                what: what.to_owned(),
                reason: "no public_key string".to_owned(),
            })
    }

    /// The root the server serves (`GET /v1/root`), as text: verified by the caller against
    /// the root it trusts.
    pub async fn root(&self) -> Result<String, ControlError> {
        let what = "GET /v1/root";
        let (at, url) = self.url("/v1/root");
        let request = (at, self.http.get(url));
        let body = self
            .send(
                what,
                request,
                REQUEST_TIMEOUT_MS,
                failsmall_core::trust::ROOT_FILE_MAX_BYTES,
            )
            .await?;
        String::from_utf8(body).map_err(|_| ControlError::Malformed {
            what: what.to_owned(),
            reason: "not UTF-8 text".to_owned(),
        })
    }

    /// Reports one use of a break-glass order (from the node's log) to the changelog.
    pub async fn break_glass(
        &self,
        line: &crate::break_glass::LogLine,
    ) -> Result<(), ControlError> {
        let what = format!("POST /v1/nodes/{}/break-glass", self.node);
        let (at, url) = self.url(&format!("/v1/nodes/{}/break-glass", self.node));
        let request = (at, self.http.post(url).json(line));
        self.send(&what, request, REQUEST_TIMEOUT_MS, MAX_RESPONSE_BYTES)
            .await
            .map(drop)
    }

    /// Registers the node with its labels (idempotent).
    pub async fn register(&self, labels: &BTreeMap<String, String>) -> Result<(), ControlError> {
        let what = format!("PUT /v1/nodes/{}", self.node);
        let (at, url) = self.url(&format!("/v1/nodes/{}", self.node));
        let request = (
            at,
            self.http
                .put(url)
                .json(&serde_json::json!({ "labels": labels })),
        );
        self.send(&what, request, REQUEST_TIMEOUT_MS, MAX_RESPONSE_BYTES)
            .await
            .map(drop)
    }

    /// The desired state; with `after`, waits up to `wait_ms` for a newer one.
    pub async fn desired(
        &self,
        after: Option<u64>,
        wait_ms: u64,
    ) -> Result<Envelope, ControlError> {
        let what = format!("GET /v1/nodes/{}/desired", self.node);
        let query = match after {
            Some(after) => format!("?after={after}&wait_ms={wait_ms}"),
            None => String::new(),
        };
        let (at, url) = self.url(&format!("/v1/nodes/{}/desired{query}", self.node));
        let request = (at, self.http.get(url));
        let timeout_ms = wait_ms.saturating_add(REQUEST_TIMEOUT_MS);
        let body = self
            .send(&what, request, timeout_ms, MAX_RESPONSE_BYTES)
            .await?;
        Self::json(&what, &body)
    }

    /// A bundle's bytes by hash, at most `max_bytes` (not yet checked against the hash).
    pub async fn blob(
        &self,
        hash: &VersionHash,
        max_bytes: usize,
    ) -> Result<Vec<u8>, ControlError> {
        let what = format!("GET /v1/blobs/{hash}");
        let (at, url) = self.url(&format!("/v1/blobs/{hash}"));
        let request = (at, self.http.get(url));
        self.send(&what, request, REQUEST_TIMEOUT_MS * 6, max_bytes)
            .await
    }

    /// Sends one report.
    pub async fn report(&self, report: &Report) -> Result<(), ControlError> {
        self.post_reports(&serde_json::json!(report)).await
    }

    /// Sends `reports` as one batch, applied whole by the control plane or not at all.
    pub async fn report_batch(&self, reports: &[Report]) -> Result<(), ControlError> {
        self.post_reports(&serde_json::json!({ "reports": reports }))
            .await
    }

    /// Who the control plane takes the token for: its name, role and bound node
    /// (`GET /v1/whoami`).
    pub async fn whoami(&self) -> Result<Identity, ControlError> {
        let what = "GET /v1/whoami";
        let (at, url) = self.url("/v1/whoami");
        let request = (at, self.http.get(url));
        let body = self
            .send(what, request, REQUEST_TIMEOUT_MS, MAX_RESPONSE_BYTES)
            .await?;
        Self::json(what, &body)
    }

    async fn post_reports(&self, body: &serde_json::Value) -> Result<(), ControlError> {
        let what = format!("POST /v1/nodes/{}/reports", self.node);
        let (at, url) = self.url(&format!("/v1/nodes/{}/reports", self.node));
        let request = (at, self.http.post(url).json(body));
        self.send(&what, request, REQUEST_TIMEOUT_MS, MAX_RESPONSE_BYTES)
            .await
            .map(drop)
    }
}
