//! Raw HTTP exchanges for the fuzzers: one request written as it is on a fresh TCP connection,
//! the whole answer read back.
//!
//! Nothing is normalised on the way out (dot segments, malformed percent-encoding and odd
//! methods reach the server as generated), and a connection closed without an answer is an
//! `Err`, not a retry.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How many characters of the target and of the body [`Wire::describe`] shows.
const DESCRIBE_CHARS: usize = 600;

/// A request as written on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire {
    /// The method, as sent (not checked).
    pub method: String,
    /// The request target, as sent (not encoded).
    pub target: String,
    /// Headers sent after `host`, `connection: close` and `content-length`, in order.
    pub headers: Vec<(String, String)>,
    /// The body, sent whole after the head.
    pub body: Vec<u8>,
}

impl Wire {
    /// A request with no headers of its own and an empty body.
    #[must_use]
    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A request with `content-type: application/json` and `body`.
    #[must_use]
    pub fn json(method: &str, target: &str, body: Vec<u8>) -> Self {
        Self {
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body,
            ..Self::new(method, target)
        }
    }

    /// The request for a failure message: method, target and body cut to 600 characters, their
    /// sizes, and the headers.
    #[must_use]
    pub fn describe(&self) -> String {
        let target: String = self.target.chars().take(DESCRIBE_CHARS).collect();
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(DESCRIBE_CHARS).collect();
        format!(
            "{} {target} ({} target bytes, {} body bytes) {:?}\n  body: {body}",
            self.method,
            self.target.len(),
            self.body.len(),
            self.headers
        )
    }
}

/// An answer as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code of the status line.
    pub status: u16,
    /// The headers, names in lower case, names and values trimmed, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when the answer was `transfer-encoding: chunked`.
    pub body: Vec<u8>,
}

/// Writes one request on a fresh connection to `address` and reads the whole answer
/// (`connection: close`), waiting at most `read_timeout` for the server to close.
///
/// # Errors
///
/// A connection that could not be made, or that closed or timed out without a status line;
/// the message says which, with the bytes read.
pub async fn exchange(
    address: SocketAddr,
    request: &Wire,
    read_timeout: Duration,
) -> Result<Answer, String> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\ncontent-length: {}\r\n",
        request.method,
        request.target,
        request.body.len()
    );
    for (name, value) in &request.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&request.body);
    // The server may answer (and close) before reading a body it does not need.
    let _ = stream.write_all(&bytes).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(read_timeout, stream.read_to_end(&mut raw)).await;
    let read_error = match read {
        Err(_) => Some(format!("no answer within {} s", read_timeout.as_secs_f64())),
        Ok(Err(e)) => Some(format!("read: {e}")),
        Ok(Ok(_)) => None,
    };
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let Some((head, rest)) = split.map(|at| raw.split_at(at)) else {
        return Err(format!(
            "the connection ended without an answer ({}; {} bytes: {:?})",
            read_error.unwrap_or_else(|| "closed".to_owned()),
            raw.len(),
            String::from_utf8_lossy(&raw)
        ));
    };
    let head = String::from_utf8_lossy(head).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = rest.get(4..).unwrap_or_default().to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// The data of a chunked body: chunks are read until the last (size 0) chunk, a size line that
/// is not hexadecimal, or the end of `raw`; a cut chunk ends it. Chunk extensions (after `;`)
/// and trailers are ignored.
#[must_use]
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = raw
            .get(..end)
            .and_then(|line| std::str::from_utf8(line).ok())
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        let Some(chunk) = start
            .checked_add(size)
            .and_then(|stop| raw.get(start..stop))
        else {
            break;
        };
        out.extend_from_slice(chunk);
        raw = raw.get(start + size + 2..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Wire, dechunk, exchange};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    #[test]
    fn dechunk_joins_the_chunks_up_to_the_last_one() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"),
            b"hello, world"
        );
        assert_eq!(
            dechunk(b"A;name=value\r\n0123456789\r\n0\r\n\r\n"),
            b"0123456789"
        );
        assert_eq!(dechunk(b"3\r\nabc\r\n0\r\n\r\n3\r\nxyz\r\n"), b"abc");
        assert_eq!(dechunk(b""), b"");
    }

    #[test]
    fn dechunk_stops_at_a_cut_chunk_or_a_bad_size() {
        assert_eq!(dechunk(b"3\r\nabc\r\n9\r\nshort"), b"abc");
        assert_eq!(dechunk(b"3\r\nabc\r\nzz\r\nmore\r\n"), b"abc");
        assert_eq!(dechunk(b"3\r\nabc"), b"abc");
        assert_eq!(dechunk(b"ffffffffffffffff\r\nabc\r\n"), b"");
    }

    /// Listens on a free local port and serves one connection there: reads the request head
    /// and its body, answers `answer`, closes; the task returns the request's bytes.
    async fn serve_once(answer: &'static [u8]) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        (address, tokio::spawn(answer_once(listener, answer)))
    }

    async fn answer_once(listener: TcpListener, answer: &'static [u8]) -> Vec<u8> {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            request.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&request).into_owned();
            if let Some(at) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if request.len() >= at + 4 + length {
                    break;
                }
            }
            assert!(n > 0, "the client closed early");
        }
        stream.write_all(answer).await.unwrap();
        stream.shutdown().await.unwrap();
        request
    }

    #[tokio::test]
    async fn exchange_sends_the_request_as_written_and_reads_a_chunked_answer() {
        let (address, server) = serve_once(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n",
        )
        .await;
        let request = Wire::json("POST", "/v1/../x?y=%zz", b"{\"b\": 2}".to_vec());
        let answer = exchange(address, &request, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(answer.status, 404);
        assert_eq!(
            answer.headers,
            [
                ("content-type".to_owned(), "application/json".to_owned()),
                ("transfer-encoding".to_owned(), "chunked".to_owned()),
            ]
        );
        assert_eq!(answer.body, b"{\"a\": 1}");
        let sent = server.await.unwrap();
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            format!(
                "POST /v1/../x?y=%zz HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\ncontent-length: 8\r\ncontent-type: application/json\r\n\r\n{{\"b\": 2}}"
            )
        );
    }

    #[tokio::test]
    async fn exchange_reads_a_plain_answer_as_it_is() {
        let (address, server) =
            serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n5\r\nab").await;
        let answer = exchange(address, &Wire::new("GET", "/"), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"5\r\nab");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_closed_or_silent_without_an_answer_is_an_error() {
        let (address, server) = serve_once(b"HTTP/1.1 20").await;
        let error = exchange(address, &Wire::new("GET", "/"), Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(
            error.contains("without an answer (closed; 11 bytes"),
            "{error}"
        );
        server.await.unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(stream);
        });
        let error = exchange(address, &Wire::new("GET", "/"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(error.contains("no answer within 0.2 s"), "{error}");
        silent.abort();
    }

    #[test]
    fn describe_cuts_long_targets_and_bodies() {
        let request = Wire::json("PUT", &"t".repeat(1000), vec![b'b'; 1000]);
        let text = request.describe();
        assert!(text.starts_with(&format!(
            "PUT {} (1000 target bytes, 1000 body bytes)",
            "t".repeat(600)
        )));
        assert!(text.ends_with(&format!("\n  body: {}", "b".repeat(600))));
        assert!(text.contains("application/json"));
    }
}
