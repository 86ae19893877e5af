//! The demo's calls to its embedded control plane, as the admin.

use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::Value;

/// Time limit of one call.
const CALL_TIMEOUT_MS: u64 = 10_000;
/// Largest answer read, in bytes.
const ANSWER_MAX_BYTES: usize = 8 * 1024 * 1024;

/// An admin's HTTP client for the control plane at `base`.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: String, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { base, token, http })
    }

    /// Sends one request; a non-2xx answer is an error naming the call and the server's message.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Vec<u8>, &'static str)>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path_and_query}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some((bytes, content_type)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}: the embedded server did not answer"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        if bytes.len() > ANSWER_MAX_BYTES {
            bail!(
                "{method} {url}: answer of {} bytes, above {ANSWER_MAX_BYTES}",
                bytes.len()
            );
        }
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if !status.is_success() {
            bail!("{method} {url}: the server answered {status}: {value}");
        }
        Ok(value)
    }

    pub async fn get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path_and_query, None).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let bytes = serde_json::to_vec(body).context("encoding a request")?;
        self.call(Method::POST, path, Some((bytes, "application/json")))
            .await
    }

    /// Pushes `content` as a new version of `unit`; the answer is the stored version (with its
    /// rollout when the unit has a plan).
    pub async fn push(
        &self,
        unit: &str,
        content: &[u8],
        message: &str,
        skip_validation: bool,
    ) -> anyhow::Result<Value> {
        let mut path = format!(
            "/v1/units/{unit}/versions?message={}",
            query_escape(message)
        );
        if skip_validation {
            path.push_str("&skip_validation=true");
        }
        self.call(
            Method::POST,
            &path,
            Some((content.to_vec(), "application/octet-stream")),
        )
        .await
    }
}

/// Percent-encodes `text` for a query string value.
pub fn query_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_escape("good file"), "good%20file");
        assert_eq!(query_escape("a&b=c"), "a%26b%3Dc");
        assert_eq!(query_escape("18 Nov: ×2"), "18%20Nov%3A%20%C3%972");
        assert_eq!(query_escape("plain-text_1.0~"), "plain-text_1.0~");
    }
}
