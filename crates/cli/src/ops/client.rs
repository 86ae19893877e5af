//! A blocking client for the control plane's `/v1` API. Every failure becomes a
//! [`ClientError`] that says what went wrong and what to do about it.

use std::io::Read as _;
use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::{Client, RequestBuilder};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::remote::{Remote, Source};

/// Most pages [`ApiClient::get_all`] follows (a million rows at the API's page size).
pub const PAGES_MAX: usize = 1000;
/// Longest wait for a TCP connection, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest wait for a whole request, in milliseconds.
pub const REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Largest response body read, in bytes.
pub const RESPONSE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Most reasons listed from one refusal.
pub const REASONS_MAX: usize = 100;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the failsmall server at {addr} (address from {origin}): {reason}; \
         start it (`failsmall server --dev`) or point --addr / FAILSMALL_ADDR at it"
    )]
    Unreachable {
        addr: String,
        origin: Source,
        reason: String,
    },
    #[error(
        "the server at {addr} presented a TLS certificate this client does not trust: {reason}; \
         pass --ca FILE (or FAILSMALL_CA) naming the CA bundle that signed the server's certificate, \
         or --pin-sha256 with the certificate's SHA-256 that the server printed at start"
    )]
    UntrustedCertificate { addr: String, reason: String },
    #[error("the server at {addr} refused the request: {message}; {hint}")]
    Unauthorized {
        addr: String,
        message: String,
        hint: String,
    },
    #[error("{message} (HTTP 403 {code}); use a token whose role allows this")]
    Forbidden { code: String, message: String },
    #[error("{}", refusal_text(.status, .code, .message, .reasons))]
    Refused {
        status: u16,
        code: String,
        message: String,
        reasons: Vec<String>,
    },
    #[error(
        "{what}: the server at {addr} answered something failsmall does not understand: {reason}"
    )]
    Unexpected {
        addr: String,
        what: String,
        reason: String,
    },
    #[error("cannot build an HTTP client: {0}")]
    Setup(String),
}

fn hint_for(code: &str) -> Option<&'static str> {
    Some(match code {
        "not_found" => {
            "check the name, hash or id (`failsmall unit list`, `failsmall rollout list`)"
        }
        "validation_failed" => {
            "fix the file (check it offline with `failsmall validate UNIT FILE`) and push again"
        }
        "invalid_spec" => "fix the unit spec and try again",
        "invalid_plan" => "fix the plan (check it offline with `failsmall plan check FILE`)",
        "conflict" => "it changed since it was read; read it again and retry",
        "already_exists" => "pick another name, or change it with `failsmall unit edit`",
        "quarantined" => "push a fixed version; an admin may override with --override-quarantine",
        "invalid_command" | "no_approval_pending" => {
            "see where the rollout is with `failsmall rollout status ID`"
        }
        "too_large" | "too_long" => "make it smaller",
        _ => return None,
    })
}

fn refusal_text(status: &u16, code: &str, message: &str, reasons: &[String]) -> String {
    let mut text = if reasons.is_empty() {
        message.to_owned()
    } else {
        // The message repeats the reasons after its first ": "; list them one per line instead.
        let head = message.split_once(": ").map_or(message, |(head, _)| head);
        let mut text = format!("{head}:");
        for reason in reasons {
            text.push_str("\n  - ");
            text.push_str(reason);
        }
        text
    };
    text.push_str(&format!("\n(HTTP {status} {code})"));
    if let Some(hint) = hint_for(code) {
        text.push_str("; ");
        text.push_str(hint);
    }
    text
}

/// The reasons in an error's `detail`: `reasons` (strings) or `issues` (objects with a
/// `message` and a `path`).
fn reasons_of(detail: &Value) -> Vec<String> {
    if let Some(reasons) = detail.get("reasons").and_then(Value::as_array) {
        return reasons
            .iter()
            .take(REASONS_MAX)
            .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_owned))
            .collect();
    }
    if let Some(issues) = detail.get("issues").and_then(Value::as_array) {
        return issues
            .iter()
            .take(REASONS_MAX)
            .map(|issue| {
                let message = issue
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| issue.to_string(), str::to_owned);
                match issue.get("path").and_then(Value::as_str) {
                    Some(path) if !path.is_empty() && !message.contains(path) => {
                        format!("{path}: {message}")
                    }
                    _ => message,
                }
            })
            .collect();
    }
    Vec::new()
}

/// The innermost cause of an error: "Connection refused (os error 111)" rather than
/// "error sending request".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    let mut depth = 0;
    while let Some(next) = current.source()
        && depth < 16
    {
        current = next;
        depth += 1;
    }
    current.to_string()
}

/// Whether a transport error is rustls refusing the server's certificate.
fn is_certificate_error(reason: &str) -> bool {
    reason.contains("invalid peer certificate")
        || reason.contains("UnknownIssuer")
        || reason.contains("certificate pin mismatch")
}

/// A connection to one control plane.
#[derive(Debug, Clone)]
pub struct ApiClient {
    remote: Remote,
    http: Client,
}

impl ApiClient {
    /// A client of `remote`; `ca`: a PEM CA bundle, the only CAs trusted for https://
    /// (default: the public root CAs built in). Plain http:// to a host that is not loopback is
    /// warned about on stderr.
    pub fn new(
        remote: Remote,
        ca: Option<&std::path::Path>,
        pin_sha256: Option<&str>,
    ) -> Result<Self, ClientError> {
        if let Some(warning) = failsmall_agent::tls::plaintext_warning(&remote.addr) {
            eprintln!("{warning}");
        }
        let mut builder = Client::builder();
        if let Some(pin) = pin_sha256 {
            builder = builder.use_preconfigured_tls(
                failsmall_agent::tls::pinned_config(pin)
                    .map_err(|e| ClientError::Setup(e.to_string()))?,
            );
        } else if let Some(path) = ca {
            builder = builder.tls_built_in_root_certs(false);
            for cert in failsmall_agent::tls::read_ca_bundle(path)
                .map_err(|e| ClientError::Setup(e.to_string()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .user_agent(concat!("failsmall-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self { remote, http })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.remote.addr));
        match &self.remote.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// GET `path` with `query`, decoded from JSON.
    pub fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let what = format!("GET {path}");
        let (_, body) = self.execute(self.request(Method::GET, path).query(query), &what)?;
        self.decode(&what, &body)
    }

    /// GET every page of the list at `path` (its rows under `key`), following `next` until
    /// the last page: nothing beyond one page is dropped. The other fields are the first
    /// page's. At most [`PAGES_MAX`] pages.
    pub fn get_all<T: DeserializeOwned>(&self, path: &str, key: &str) -> Result<T, ClientError> {
        let what = format!("GET {path}");
        let mut first: serde_json::Value = self.get(path, &[])?;
        let mut next = first
            .get("next")
            .and_then(|n| n.as_str())
            .map(str::to_owned);
        let mut pages = 1usize;
        while let Some(after) = next.take() {
            if pages >= PAGES_MAX {
                return Err(self.unexpected(
                    &what,
                    format!("more than {PAGES_MAX} pages; ask with a narrower filter"),
                ));
            }
            let page: serde_json::Value = self.get(path, &[("after", after)])?;
            let rows = page
                .get(key)
                .and_then(|rows| rows.as_array())
                .cloned()
                .unwrap_or_default();
            if let Some(all) = first.get_mut(key).and_then(|all| all.as_array_mut()) {
                all.extend(rows);
            }
            next = page.get("next").and_then(|n| n.as_str()).map(str::to_owned);
            pages = pages.saturating_add(1);
        }
        if let Some(fields) = first.as_object_mut() {
            fields.remove("next");
        }
        serde_json::from_value(first).map_err(|e| self.unexpected(&what, e.to_string()))
    }

    /// GET `path` with `query`, as text.
    pub fn get_text(&self, path: &str, query: &[(&str, String)]) -> Result<String, ClientError> {
        let what = format!("GET {path}");
        let (_, body) = self.execute(self.request(Method::GET, path).query(query), &what)?;
        String::from_utf8(body).map_err(|e| self.unexpected(&what, e.to_string()))
    }

    /// GET `path`, as bytes.
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let what = format!("GET {path}");
        let (_, body) = self.execute(self.request(Method::GET, path), &what)?;
        Ok(body)
    }

    /// The server's address, as resolved.
    pub fn addr(&self) -> &str {
        &self.remote.addr
    }

    /// `method path` with a JSON body; the status and the decoded answer.
    pub fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<(u16, T), ClientError> {
        let what = format!("{method} {path}");
        let (status, answer) = self.execute(self.request(method, path).json(body), &what)?;
        Ok((status, self.decode(&what, &answer)?))
    }

    /// POST raw bytes to `path` with `query`; the status and the decoded answer.
    pub fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(u16, T), ClientError> {
        let what = format!("POST {path}");
        let builder = self
            .request(Method::POST, path)
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let (status, answer) = self.execute(builder, &what)?;
        Ok((status, self.decode(&what, &answer)?))
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| self.unexpected(what, e.to_string()))
    }

    fn unexpected(&self, what: &str, reason: String) -> ClientError {
        ClientError::Unexpected {
            addr: self.remote.addr.clone(),
            what: what.to_owned(),
            reason,
        }
    }

    fn execute(&self, builder: RequestBuilder, what: &str) -> Result<(u16, Vec<u8>), ClientError> {
        let response = builder.send().map_err(|e| {
            let reason = root_cause(&e);
            if is_certificate_error(&reason) {
                ClientError::UntrustedCertificate {
                    addr: self.remote.addr.clone(),
                    reason,
                }
            } else if e.is_connect() || e.is_timeout() {
                ClientError::Unreachable {
                    addr: self.remote.addr.clone(),
                    origin: self.remote.addr_source.clone(),
                    reason: root_cause(&e),
                }
            } else {
                self.unexpected(what, root_cause(&e))
            }
        })?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        response
            .take(RESPONSE_MAX_BYTES.saturating_add(1))
            .read_to_end(&mut body)
            .map_err(|e| self.unexpected(what, format!("reading the answer: {e}")))?;
        if u64::try_from(body.len()).unwrap_or(u64::MAX) > RESPONSE_MAX_BYTES {
            return Err(self.unexpected(
                what,
                format!("the answer is over the limit of {RESPONSE_MAX_BYTES} bytes"),
            ));
        }
        if (200..300).contains(&status) {
            return Ok((status, body));
        }
        Err(self.refusal(what, status, &body))
    }

    fn refusal(&self, what: &str, status: u16, body: &[u8]) -> ClientError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let code = error
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let message = error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let shown: String = text.chars().take(200).collect();
                format!("{what}: HTTP {status}: {shown}")
            });
        let reasons = error
            .and_then(|e| e.get("detail"))
            .map(reasons_of)
            .unwrap_or_default();
        match status {
            401 => {
                let hint = match &self.remote.token_source {
                    None => "no token was given: set FAILSMALL_TOKEN or --token (or `token` in the config file)".to_owned(),
                    Some(origin) => format!(
                        "the token from {origin} is wrong or revoked: set FAILSMALL_TOKEN or --token to a valid token"
                    ),
                };
                ClientError::Unauthorized {
                    addr: self.remote.addr.clone(),
                    message,
                    hint,
                }
            }
            403 => ClientError::Forbidden { code, message },
            _ => ClientError::Refused {
                status,
                code,
                message,
                reasons,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refusals_list_every_reason_once_with_a_hint() {
        let reasons = reasons_of(&json!({"issues": [
            {"kind": "schema", "path": "/a", "message": "/a: expected a number"},
            {"kind": "too_many_entries", "path": "/features", "message": "too many"},
        ]}));
        assert_eq!(reasons, ["/a: expected a number", "/features: too many"]);
        let text = refusal_text(
            &422,
            "validation_failed",
            "version of unit u refused: /a: expected a number; too many",
            &reasons,
        );
        assert!(
            text.starts_with("version of unit u refused:\n  - /a: expected"),
            "{text}"
        );
        assert!(text.contains("(HTTP 422 validation_failed)"), "{text}");
        assert!(text.contains("failsmall validate"), "{text}");
        let plain = refusal_text(&404, "not_found", "no rollout r9", &[]);
        assert!(
            plain.starts_with("no rollout r9\n(HTTP 404 not_found)"),
            "{plain}"
        );
    }

    #[test]
    fn reasons_as_strings_are_kept() {
        let reasons = reasons_of(&json!({"reasons": ["a", "b"]}));
        assert_eq!(reasons, ["a", "b"]);
        assert!(reasons_of(&Value::Null).is_empty());
    }
}
