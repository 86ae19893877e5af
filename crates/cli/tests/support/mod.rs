//! What the CLI's tests against a real `failsmall server` share: the server process, the
//! CLI run against it, and a tiny in-test agent over HTTP that ACKs, reports health, or NACKs.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_failsmall");

/// One stage over every node, no bake, no gates: one ACK and a health report complete it,
/// one NACK rolls it back.
pub const ONE_STAGE_PLAN: &str = "name: one-stage\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 10\n    gates: []\n";

/// A fresh directory under the system's temporary directory, removed when the test drops it.
pub fn fresh_dir(name: &str) -> tempfile::TempDir {
    failsmall_testkit::scratch_dir(&format!("failsmall-cli-ops-{name}-"))
}

/// Every line `output` writes, as it comes. The thread keeps draining it when nobody listens
/// any more, so the child never blocks on a full pipe.
pub fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    received
}

/// The address and data dir of the server's `listening on ADDR, data in DIR` line, waited for
/// at most 20 s.
pub fn listening_address(said: &mpsc::Receiver<String>) -> (String, PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = said
            .recv_timeout(left)
            .expect("the server printed no listening address within 20 s");
        if let Some((head, dir)) = line.split_once(", data in ")
            && let Some(addr) = head.split("listening on ").nth(1)
        {
            return (addr.to_owned(), PathBuf::from(dir.trim()));
        }
    }
}

/// A `failsmall server` child on `data_dir` with `extra` flags, and its address once it said
/// it (its stderr is drained from then on).
pub fn spawn_server(data_dir: &Path, listen: &str, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        // The Codex would rightly deny these tests' one-stage plans; it has tests of its own.
        .args(["server", "--codex", "off", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = lines_of(child.stderr.take().unwrap());
    let addr = listening_address(&said).0;
    (child, addr)
}

/// A `failsmall server` child process on 127.0.0.1:0.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub admin: String,
    /// Shared with the server started again on it by `restart`.
    pub dir: Arc<tempfile::TempDir>,
    pub http: reqwest::blocking::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start(name: &str) -> Self {
        Self::start_in(Arc::new(fresh_dir(name)), "127.0.0.1:0", &[])
    }

    /// Kills the server (SIGKILL), leaves it down for `down`, and starts it again on the same
    /// data dir and address.
    pub fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let listen = self.addr.trim_start_matches("http://").to_owned();
        *self = Self::start_in(self.dir.clone(), &listen, &[]);
    }

    pub fn start_in(dir: Arc<tempfile::TempDir>, listen: &str, extra: &[&str]) -> Self {
        let data_dir = dir.path().join("data");
        let (child, addr) = spawn_server(&data_dir, listen, extra);
        let http = reqwest::blocking::Client::new();
        let token_path = data_dir.join("admin.token");
        let deadline = Instant::now() + Duration::from_secs(20);
        let admin = loop {
            let healthy = http
                .get(format!("{addr}/healthz"))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if healthy && let Ok(token) = std::fs::read_to_string(&token_path) {
                break token.trim().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "server at {addr} never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            addr,
            admin,
            dir,
            http,
        }
    }

    /// The CLI with this server's address and admin token in the environment, and an empty
    /// config directory.
    pub fn command(&self) -> Command {
        let mut command = Command::new(BIN);
        let config = self.dir.path().join("config-home");
        command
            .env("FAILSMALL_ADDR", &self.addr)
            .env("FAILSMALL_TOKEN", &self.admin)
            .env("XDG_CONFIG_HOME", &config)
            .env("HOME", &config)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs the CLI and expects exit 0; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "failsmall {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs the CLI with `-o json` and expects exit 0; its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Runs the CLI and expects `code`; its stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(
            output.status.code(),
            Some(code),
            "failsmall {args:?}\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
        stderr
    }

    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    pub fn http(&self, method: reqwest::Method, path: &str, token: &str, body: &Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.addr))
            .bearer_auth(token)
            .json(body)
            .send()
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().unwrap();
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    pub fn token(&self, name: &str, role: &str) -> String {
        let answer = self.http(
            reqwest::Method::POST,
            "/v1/tokens",
            &self.admin,
            // Each such token is its own person (the default owner is its creator).
            &json!({"name": name, "role": role, "owner": name}),
        );
        answer["token"].as_str().unwrap().to_owned()
    }
}

/// Nodes played over HTTP, each with its own agent token.
pub struct Agent<'a> {
    pub server: &'a Server,
    pub tokens: std::collections::HashMap<String, String>,
}

impl<'a> Agent<'a> {
    pub fn new(server: &'a Server) -> Self {
        Self {
            server,
            tokens: std::collections::HashMap::new(),
        }
    }

    pub fn register(&mut self, node: &str, labels: Value) {
        let answer = self.server.http(
            reqwest::Method::POST,
            "/v1/tokens",
            &self.server.admin,
            &json!({"name": format!("agent-{node}"), "role": "agent", "node": node}),
        );
        let token = answer["token"].as_str().unwrap().to_owned();
        self.server.http(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{node}"),
            &token,
            &json!({ "labels": labels }),
        );
        self.tokens.insert(node.to_owned(), token);
    }

    pub fn report(&self, node: &str, report: Value) {
        self.server.http(
            reqwest::Method::POST,
            &format!("/v1/nodes/{node}/reports"),
            &self.tokens[node],
            &report,
        );
    }

    pub fn apply_healthy(&self, node: &str, unit: &str, version: &str) {
        self.report(
            node,
            json!({"kind": "applied", "unit": unit, "version": version}),
        );
        let counts = vec![0u64; failsmall_core::health::LATENCY_BUCKETS];
        let sample = json!({"requests": 100, "errors": 0, "latency": {"counts": counts}});
        self.report(
            node,
            json!({"kind": "health", "unit": unit, "version": version, "sample": sample}),
        );
    }

    pub fn nack(&self, node: &str, unit: &str, version: &str) {
        self.report(
            node,
            json!({"kind": "rejected", "unit": unit, "version": version, "reason": "200 features is over the limit"}),
        );
    }
}

/// A `failsmall agent` child process for one node, killed when dropped. Its log is
/// `agent-NODE.log` beside its data dir.
pub struct RealAgent {
    pub child: Child,
    pub data_dir: PathBuf,
    pub token: String,
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RealAgent {
    /// An agent of `server` for `node`, with a new agent token.
    pub fn start(server: &Server, node: &str, labels: &str) -> Self {
        Self::start_via(server, &server.addr, node, labels)
    }

    /// An agent for `node` with a new agent token of `server`, talking to `addr` (the server,
    /// a relay, or several of them separated by commas).
    pub fn start_via(server: &Server, addr: &str, node: &str, labels: &str) -> Self {
        let answer = server.http(
            reqwest::Method::POST,
            "/v1/tokens",
            &server.admin,
            &json!({"name": format!("agent-{node}"), "role": "agent", "node": node}),
        );
        let token = answer["token"].as_str().unwrap().to_owned();
        let data_dir = server.dir.path().join(format!("agent-{node}"));
        let log =
            std::fs::File::create(server.dir.path().join(format!("agent-{node}.log"))).unwrap();
        let child = Command::new(BIN)
            .args([
                "agent",
                "--server",
                addr,
                "--node-id",
                node,
                "--labels",
                labels,
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--watch-wait-ms", "1000", "--backoff-max-ms", "500"])
            .env("FAILSMALL_TOKEN", &token)
            .env_remove("FAILSMALL_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            data_dir,
            token,
        }
    }

    /// What the node serves for `unit` now.
    pub fn serving(&self, unit: &str) -> Option<Vec<u8>> {
        std::fs::read(self.data_dir.join("units").join(unit).join("current")).ok()
    }

    /// Waits (at most 30 s) until the node serves `bytes` for `unit`.
    pub fn wait_serving(&self, unit: &str, bytes: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.serving(unit).as_deref() != Some(bytes) {
            assert!(
                Instant::now() < deadline,
                "{} never served {:?} for {unit}; it serves {:?}; the agent said: {}",
                self.data_dir.display(),
                String::from_utf8_lossy(bytes),
                self.serving(unit)
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `failsmall relay` child process, killed when dropped.
pub struct Relay {
    pub child: Child,
    pub addr: String,
    pub cache_dir: PathBuf,
    pub upstream: String,
    /// The flags it was started with beyond the upstream, address and cache dir.
    pub flags: Vec<String>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    /// A relay of `upstream` (URLs separated by commas) on 127.0.0.1:0, keeping its cache in
    /// `cache_dir`.
    pub fn start(upstream: &str, cache_dir: &std::path::Path) -> Self {
        Self::start_with(upstream, cache_dir, &[])
    }

    /// As [`Relay::start`], with more flags (`--max-connections`, ...).
    pub fn start_with(upstream: &str, cache_dir: &std::path::Path, flags: &[&str]) -> Self {
        let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        Self::start_on(upstream, cache_dir, "127.0.0.1:0", flags)
    }

    fn start_on(
        upstream: &str,
        cache_dir: &std::path::Path,
        listen: &str,
        flags: Vec<String>,
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cache_dir.with_extension("log"))
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["relay", "--upstream", upstream, "--listen", listen])
            .arg("--cache-dir")
            .arg(cache_dir)
            .args(&flags)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let said = lines_of(child.stderr.take().unwrap());
        let addr = listening_address(&said).0;
        // The rest of what it says goes to its log.
        let path = cache_dir.with_extension("log");
        std::thread::spawn(move || {
            use std::io::Write as _;
            if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(path) {
                for line in said.iter() {
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        Self {
            child,
            addr,
            cache_dir: cache_dir.to_owned(),
            upstream: upstream.to_owned(),
            flags,
        }
    }

    /// Kills the relay (SIGKILL) and starts it again on the same address and cache dir.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let listen = self.addr.trim_start_matches("http://").to_owned();
        let (upstream, cache_dir) = (self.upstream.clone(), self.cache_dir.clone());
        let flags = std::mem::take(&mut self.flags);
        *self = Self::start_on(&upstream, &cache_dir, &listen, flags);
    }

    /// The value of `metric` in the relay's `/metrics`.
    pub fn metric(&self, metric: &str) -> u64 {
        let text = reqwest::blocking::get(format!("{}/metrics", self.addr))
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{metric} ")))
            .unwrap_or_else(|| panic!("no {metric} in {text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

/// Whether the peer closed `stream` (end of file or a reset), waiting at most `wait`; what it
/// sent before closing (a 408 or a 400) is read and skipped.
pub fn is_closed(stream: &mut std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read as _;
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buffer = [0u8; 512];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}
