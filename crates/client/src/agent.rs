//! Reporting rejections to the node's agent through its local API
//! (`POST /v1/units/{unit}/rejections` on 127.0.0.1), so the agent NACKs the version and the
//! rollout's gate fails.
//!
//! The report is a small blocking HTTP/1.1 request with a short time limit: a consumer that
//! cannot reach its agent keeps serving its previous value all the same.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use failsmall_core::domain::{UnitName, VersionHash};

use crate::{REASON_MAX_BYTES, RejectionReporter};

/// Default time limit of one report (connect, write, read), in milliseconds.
pub const REPORT_TIMEOUT_MS: u64 = 500;
/// Most bytes of the agent's answer read.
const ANSWER_MAX_BYTES: u64 = 4096;

/// A [`RejectionReporter`] that tells the agent on this host.
#[derive(Debug, Clone)]
pub struct AgentReporter {
    address: SocketAddr,
    timeout: Duration,
}

impl AgentReporter {
    /// Reports to the agent's local API at `address` (e.g. `127.0.0.1:7071`).
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            timeout: Duration::from_millis(REPORT_TIMEOUT_MS),
        }
    }

    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout = Duration::from_millis(timeout_ms.max(1));
        self
    }

    /// Sends one rejection; returns the agent's HTTP status.
    pub fn report(
        &self,
        unit: &UnitName,
        version: &VersionHash,
        reason: &str,
    ) -> std::io::Result<u16> {
        let body = format!(
            "{{\"version\":\"{version}\",\"reason\":\"{}\"}}",
            json_escape(cut(reason))
        );
        let request = format!(
            "POST /v1/units/{unit}/rejections HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        );
        let mut stream = TcpStream::connect_timeout(&self.address, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        stream.write_all(request.as_bytes())?;
        let mut answer = String::new();
        stream
            .take(ANSWER_MAX_BYTES)
            .read_to_string(&mut answer)
            .or_else(|e| {
                // The status line is enough; a slow end of the body is not an error.
                if answer.starts_with("HTTP/") {
                    Ok(0)
                } else {
                    Err(e)
                }
            })?;
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok())
            .ok_or_else(|| std::io::Error::other("the agent's answer has no HTTP status line"))
    }
}

impl RejectionReporter for AgentReporter {
    fn rejected(&self, unit: &UnitName, version: &VersionHash, reason: &str) {
        // Fail stale regardless: the previous value stays whether or not the agent heard.
        let _ = self.report(unit, version, reason);
    }
}

fn cut(reason: &str) -> &str {
    let mut end = reason.len().min(REASON_MAX_BYTES);
    while !reason.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    reason.get(..end).unwrap_or_default()
}

fn json_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if u32::from(c) < 0x20 => escaped.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn a_rejection_reaches_the_agent_as_json() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let agent = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream);
            let mut head = Vec::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(value) = line.strip_prefix("Content-Length: ") {
                    length = value.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
                head.push(line);
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        let unit = UnitName::new("features").unwrap();
        let version = VersionHash::of(b"v2");
        let status = AgentReporter::new(address)
            .report(&unit, &version, "line 3: \"x\" is\tunknown")
            .unwrap();
        assert_eq!(status, 202);
        let (head, body) = agent.join().unwrap();
        assert_eq!(
            head.first().map(String::as_str),
            Some("POST /v1/units/features/rejections HTTP/1.1\r\n")
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["version"], version.to_string());
        assert_eq!(parsed["reason"], "line 3: \"x\" is\tunknown");
    }

    #[test]
    fn an_absent_agent_is_an_error_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let unit = UnitName::new("features").unwrap();
        let reporter = AgentReporter::new(address).with_timeout_ms(200);
        assert!(reporter.report(&unit, &VersionHash::of(b"v"), "x").is_err());
        // Through the trait it is silent.
        reporter.rejected(&unit, &VersionHash::of(b"v"), "x");
    }
}
