//! A simulated fleet for the control-plane benches: every node holds its own HTTP/1.1
//! connection to the server, as an agent does, from one of several loopback source addresses
//! (at most [`CONNECTIONS_PER_SOURCE`] each, under the server's per-client bound) — as far as
//! this process's open-file limit allows: the bench holds both ends of each connection, so
//! past `(limit - OPEN_FILES_SPARE) / 2` connections the nodes share them, each node always
//! on the same one ([`connections_that_fit`]). At most `in_flight` requests are outstanding at
//! once; each sender task serves its own share of the connections (and their nodes) in turn.
//!
//! Nothing here unwraps an answer: a request that fails is counted by what went wrong (the
//! status and error code, or the transport error), and the caller compares the count with its
//! error budget. The server closes a keep-alive connection on which no request head arrived
//! for its header timeout; like an HTTP client whose pool lets connections go sooner than the
//! server does, a connection idle for [`REOPEN_IDLE_AFTER`] (or already closed) is opened again
//! before its next request, and a request the connection closed before sending it (hyper
//! hands it back) is sent once more on a new one — counted apart as reconnects, since nothing
//! is lost. Every phase stops by itself at its deadline; requests not sent by then count as
//! failures.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;

/// Connections opened from one source address: under the server's default per-client bound
/// (`MAX_CONNECTIONS_PER_CLIENT_DEFAULT`, 1,024), with room for the bench's own admin client.
pub const CONNECTIONS_PER_SOURCE: usize = 1_000;
/// Longest wait for one answer; a request that takes longer is a failure.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Open files the fleet benches keep for other uses besides two per connection (its two ends).
pub const OPEN_FILES_SPARE: u64 = 4_096;
/// A connection idle this long is opened again before its next request: half the server's
/// default header timeout, after which the server closes an idle keep-alive connection.
pub const REOPEN_IDLE_AFTER: Duration =
    Duration::from_millis(failsmall_server::serve::HEADER_TIMEOUT_MS_DEFAULT / 2);

/// What went wrong, by kind, and how often.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests answered with a 2xx.
    pub ok: u64,
    /// Failures by kind: `"503 unavailable"`, `"transport: connection closed ..."`, ...
    pub failures: BTreeMap<String, u64>,
    /// Connections opened again: closed by the server or idle for [`REOPEN_IDLE_AFTER`], or
    /// closed with a request not yet sent (which is then sent on the new one).
    pub reconnects: u64,
}

impl Tally {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn fail(&mut self, kind: String) {
        *self.failures.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.reconnects += other.reconnects;
        for (kind, n) in other.failures {
            *self.failures.entry(kind).or_default() += n;
        }
    }

    /// One line: answered, failed (by kind), reconnects.
    pub fn line(&self) -> String {
        let failures = if self.failures.is_empty() {
            "none".to_owned()
        } else {
            self.failures
                .iter()
                .map(|(kind, n)| format!("{n} × {kind}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{} answered 2xx, failures: {failures}, connections opened again: {}",
            self.ok, self.reconnects
        )
    }
}

/// One connection (opened on its first request) and the nodes whose requests it carries.
pub struct Link {
    pub nodes: Vec<String>,
    source: IpAddr,
    server: SocketAddr,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
    /// When the connection last finished a request.
    last_used: Instant,
}

impl Link {
    /// Opens the connection from its source address.
    async fn connect(&mut self) -> Result<(), String> {
        let socket =
            tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
        socket
            .bind(SocketAddr::new(self.source, 0))
            .map_err(|e| format!("bind {}: {}", self.source, e.kind()))?;
        let stream = socket
            .connect(self.server)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection's task ends when either side closes it.
        tokio::spawn(connection);
        self.sender = Some(sender);
        Ok(())
    }

    /// A connection ready for a request: the one open, unless it is closed or was idle for
    /// [`REOPEN_IDLE_AFTER`], else a new one.
    async fn ready(&mut self, tally: &mut Tally) -> Result<(), String> {
        let stale = self.last_used.elapsed() >= REOPEN_IDLE_AFTER;
        if let Some(sender) = self.sender.as_mut() {
            if !stale && !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok(());
            }
            tally.reconnects += 1;
        }
        // Dropping the old sender closes its connection.
        self.sender = None;
        self.connect().await
    }

    /// Sends one request for a node on this connection and counts the outcome; the answer's
    /// body when it was a 2xx.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: &str,
        body: Bytes,
        tally: &mut Tally,
    ) -> Option<Bytes> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "failsmall")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let mut request = match request {
            Ok(request) => request,
            Err(error) => {
                tally.fail(format!("request: {error}"));
                return None;
            }
        };
        let mut resent = false;
        let answered = loop {
            if let Err(kind) = self.ready(tally).await {
                tally.fail(kind);
                return None;
            }
            let sender = self.sender.as_mut()?;
            let sent = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let response = sender.try_send_request(request).await.map_err(|mut e| {
                    let unsent = e.take_message();
                    (e.into_error(), unsent)
                })?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| (e, None))?
                    .to_bytes();
                Ok::<_, (hyper::Error, Option<Request<Full<Bytes>>>)>((status, body))
            })
            .await;
            match sent {
                // Closed before the request went out: it is handed back, and sent once more
                // on a new connection.
                Ok(Err((_, Some(unsent)))) if !resent => {
                    tally.reconnects += 1;
                    self.sender = None;
                    request = unsent;
                    resent = true;
                }
                other => break other,
            }
        };
        self.last_used = Instant::now();
        match answered {
            Ok(Ok((status, body))) if status.is_success() => {
                tally.ok += 1;
                Some(body)
            }
            Ok(Ok((status, body))) => {
                let code = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                tally.fail(format!("{} {code}", status.as_u16()));
                None
            }
            Ok(Err((error, _))) => {
                tally.fail(format!("transport: {error}"));
                self.sender = None;
                None
            }
            Err(_) => {
                tally.fail(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()));
                self.sender = None;
                None
            }
        }
    }
}

/// The loopback address the `index`-th connection comes from: 127.1.0.1, 127.1.0.2, ... each
/// shared by [`CONNECTIONS_PER_SOURCE`] connections.
fn source_of(index: usize) -> IpAddr {
    let source = index / CONNECTIONS_PER_SOURCE + 1;
    let [_, _, high, low] = u32::try_from(source).unwrap_or(u32::MAX).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, 1, high, low))
}

/// Raises this process's open-file limit as far as it goes (the soft limit to the hard one)
/// and returns how many connections of `nodes` fit (both ends of each are in this process,
/// with [`OPEN_FILES_SPARE`] kept for the rest) and the limit.
pub fn connections_that_fit(nodes: usize) -> (usize, u64) {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::Resource::NOFILE.get_soft())
        .unwrap_or(0);
    let fit = limit.saturating_sub(OPEN_FILES_SPARE) / 2;
    (nodes.min(usize::try_from(fit).unwrap_or(usize::MAX)), limit)
}

/// The fleet: `nodes` nodes on `connections` connections, split among `in_flight` senders,
/// which run on the runtime `client` (threads named [`CLIENT_THREAD`]) apart from the
/// server's, so that [`cpu_seconds`] tells the two apart.
pub struct Fleet {
    senders: Vec<Vec<Link>>,
    pub token: Arc<str>,
    client: tokio::runtime::Handle,
}

/// The name of the fleet's runtime threads.
pub const CLIENT_THREAD: &str = "fleet-client";

/// CPU time this process's threads used so far, in seconds: the fleet's ([`CLIENT_THREAD`])
/// and everyone else's (the server's, in these benches). Read from `/proc/self/task`.
pub fn cpu_seconds() -> (f64, f64) {
    // `/proc` counts CPU time in USER_HZ ticks, 100 a second on Linux.
    let ticks = 100.0;
    let (mut client, mut rest) = (0u64, 0u64);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0.0, 0.0);
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is the 3rd field, utime the 14th and
        // stime the 15th of the whole line.
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let used: u64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        if comm.trim() == CLIENT_THREAD {
            client += used;
        } else {
            rest += used;
        }
    }
    (client as f64 / ticks, rest as f64 / ticks)
}

/// The request a node sends in a phase, by node id: method, path and body.
pub type RequestFor = Arc<dyn Fn(&str) -> (Method, String, Bytes) + Send + Sync>;

/// What one phase did: the tally, each answered request's time, the wall time, and the CPU
/// time the fleet and the server used.
pub struct Phase {
    pub tally: Tally,
    pub took: Vec<Duration>,
    pub elapsed: Duration,
    pub client_cpu_s: f64,
    pub server_cpu_s: f64,
}

impl Fleet {
    /// Nodes `{prefix}0` .. `{prefix}{nodes-1}` of a server at `server`: node `i` on
    /// connection `i % connections`, connection `k` served by sender `k % in_flight`.
    pub fn new(
        server: SocketAddr,
        token: &str,
        prefix: &str,
        nodes: usize,
        connections: usize,
        in_flight: usize,
        client: tokio::runtime::Handle,
    ) -> Self {
        let connections = connections.clamp(1, nodes.max(1));
        let in_flight = in_flight.clamp(1, connections);
        let mut links: Vec<Link> = (0..connections)
            .map(|index| Link {
                nodes: Vec::new(),
                source: source_of(index),
                server,
                sender: None,
                last_used: Instant::now(),
            })
            .collect();
        for index in 0..nodes {
            if let Some(link) = links.get_mut(index % connections) {
                link.nodes.push(format!("{prefix}{index}"));
            }
        }
        let mut senders: Vec<Vec<Link>> = (0..in_flight).map(|_| Vec::new()).collect();
        for (index, link) in links.into_iter().enumerate() {
            if let Some(share) = senders.get_mut(index % in_flight) {
                share.push(link);
            }
        }
        Self {
            senders,
            token: Arc::from(token),
            client,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.senders.len()
    }

    pub fn connections(&self) -> usize {
        self.senders.iter().map(Vec::len).sum()
    }

    /// Every node sends `rounds` requests (`request(node id)`: method, path and body), the
    /// senders at once; stops at `deadline`, counting what was not sent as failures.
    pub async fn run(&mut self, rounds: usize, deadline: Duration, request: RequestFor) -> Phase {
        let started = Instant::now();
        let cpu_before = cpu_seconds();
        let stop_at = started + deadline;
        let mut tasks = Vec::new();
        for share in std::mem::take(&mut self.senders) {
            let request = Arc::clone(&request);
            let token = Arc::clone(&self.token);
            tasks.push(self.client.spawn(async move {
                let mut share = share;
                let mut tally = Tally::default();
                let mut took = Vec::new();
                // Each pass takes one node of every connection, so a connection waits for
                // the sender's other connections only, not for their every node.
                let passes = share.iter().map(|link| link.nodes.len()).max().unwrap_or(0);
                for _ in 0..rounds {
                    for pass in 0..passes {
                        for link in &mut share {
                            let Some(node) = link.nodes.get(pass) else {
                                continue;
                            };
                            if Instant::now() >= stop_at {
                                tally.fail("not sent: the phase's deadline passed".to_owned());
                                continue;
                            }
                            let (method, path, body) = request(node);
                            let sent = Instant::now();
                            let answer = link.send(method, &path, &token, body, &mut tally).await;
                            if answer.is_some() {
                                took.push(sent.elapsed());
                            }
                        }
                    }
                }
                (share, tally, took)
            }));
        }
        let mut phase = Phase {
            tally: Tally::default(),
            took: Vec::new(),
            elapsed: Duration::ZERO,
            client_cpu_s: 0.0,
            server_cpu_s: 0.0,
        };
        for task in tasks {
            match task.await {
                Ok((share, tally, took)) => {
                    self.senders.push(share);
                    phase.tally.merge(tally);
                    phase.took.extend(took);
                }
                Err(error) => phase.tally.fail(format!("sender task: {error}")),
            }
        }
        phase.elapsed = started.elapsed();
        let cpu_after = cpu_seconds();
        phase.client_cpu_s = cpu_after.0 - cpu_before.0;
        phase.server_cpu_s = cpu_after.1 - cpu_before.1;
        phase
    }
}
