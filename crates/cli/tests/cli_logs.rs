//! Agents and servers that say what is wrong, on real processes: an agent refuses a token that
//! retrying cannot make right (invalid, an admin's, another node's) and exits non-zero saying
//! why; an agent that cannot reach its server logs every attempt with the reason and the next
//! retry and reports `connected: false` on its local API; a server started with
//! `--log-format json` writes one JSON line per changelog entry, inside the request's span; and
//! the CLI follows the API's page cursors, so a list longer than a page is shown whole.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_failsmall");

fn fresh_dir(name: &str) -> tempfile::TempDir {
    failsmall_testkit::scratch_dir(&format!("failsmall-cli-logs-{name}-"))
}

/// Every line `output` writes, as it comes (drained to the end by its own thread).
fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    received
}

/// Lines from `said` until one satisfies `found` (at most 20 s); every line read, in order.
fn read_until(said: &mpsc::Receiver<String>, mut found: impl FnMut(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match said.recv_timeout(left) {
            Ok(line) => {
                let done = found(&line);
                lines.push(line);
                if done {
                    return lines;
                }
            }
            Err(_) => panic!("not found within 20 s; read:\n{}", lines.join("\n")),
        }
    }
}

/// A `failsmall server` child on 127.0.0.1:0 with `extra` flags, and its stderr's lines.
struct Server {
    child: Child,
    addr: String,
    admin: String,
    said: mpsc::Receiver<String>,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(name: &str, extra: &[&str]) -> Self {
        let dir = fresh_dir(name);
        let data_dir = dir.path().join("data");
        let mut child = Command::new(BIN)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let said = lines_of(child.stderr.take().unwrap());
        let lines = read_until(&said, |line| line.contains("listening on "));
        let head = lines.last().unwrap();
        let addr = head
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap()
            .to_owned();
        let token_path = data_dir.join("admin.token");
        let deadline = Instant::now() + Duration::from_secs(20);
        let admin = loop {
            if let Ok(token) = std::fs::read_to_string(&token_path)
                && !token.trim().is_empty()
            {
                break token.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "no admin token");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            addr,
            admin,
            said,
            dir,
        }
    }

    fn token(&self, body: &Value) -> String {
        let response = reqwest::blocking::Client::new()
            .post(format!("{}/v1/tokens", self.addr))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .unwrap();
        assert!(response.status().is_success());
        let answer: Value = response.json().unwrap();
        answer["token"].as_str().unwrap().to_owned()
    }

    fn agent_token(&self, node: &str) -> String {
        self.token(&json!({"name": format!("agent-{node}"), "role": "agent", "node": node}))
    }
}

/// `failsmall agent` against `addr` with `token`, in a fresh data dir, with `extra` flags.
fn agent(addr: &str, token: &str, data_dir: &PathBuf, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["agent", "--addr", addr, "--data-dir"])
        .arg(data_dir)
        .args(["--backoff-max-ms", "200", "--watch-wait-ms", "1000"])
        .args(extra)
        .env("FAILSMALL_TOKEN", token)
        .env_remove("FAILSMALL_ADDR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runs an agent that must stop by itself within 20 s; its exit code and stderr.
fn agent_stops(mut command: Command) -> (Option<i32>, String) {
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the agent did not stop: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The local API's address from an agent's `local API on http://ADDR` line.
fn local_api(said: &mpsc::Receiver<String>) -> (String, Vec<String>) {
    let lines = read_until(said, |line| line.contains("local API on http://"));
    let address = lines
        .last()
        .unwrap()
        .split("local API on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    (address, lines)
}

fn local_status(local: &str) -> Value {
    reqwest::blocking::get(format!("{local}/v1/status"))
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn an_agent_refuses_tokens_that_retrying_cannot_fix_and_exits_saying_why() {
    let server = Server::start("refuse", &[]);
    let dir = server.dir.path();

    let (code, stderr) = agent_stops(agent(
        &server.addr,
        "fs_wrong",
        &dir.join("a-wrong"),
        &["--node-id", "n1"],
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("refused as invalid (401"), "{stderr}");
    assert!(stderr.contains("--token / FAILSMALL_TOKEN"), "{stderr}");
    assert!(
        stderr.contains("(401: the token is unknown or revoked)"),
        "{stderr}"
    );

    let (code, stderr) = agent_stops(agent(
        &server.addr,
        &server.admin,
        &dir.join("a-admin"),
        &["--node-id", "n1"],
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("has role admin"), "{stderr}");
    assert!(
        stderr.contains("failsmall token create n1 --role agent --node n1"),
        "{stderr}"
    );

    let other = server.agent_token("n2");
    let (code, stderr) = agent_stops(agent(
        &server.addr,
        &other,
        &dir.join("a-other"),
        &["--node-id", "n1"],
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("bound to node n2, but this agent is node n1 (from --node-id)"),
        "{stderr}"
    );

    // No node id: the agent makes one up, and says so when the token names another node.
    let (code, stderr) = agent_stops(agent(&server.addr, &other, &dir.join("a-none"), &[]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no --node-id was given"), "{stderr}");
    assert!(stderr.contains("start it with --node-id n2"), "{stderr}");

    // The node's own agent token: it connects, and says so on its local API.
    let token = server.agent_token("n1");
    let mut child = agent(
        &server.addr,
        &token,
        &dir.join("a-good"),
        &["--node-id", "n1", "--local-api", "127.0.0.1:0"],
    )
    .spawn()
    .unwrap();
    let said = lines_of(child.stderr.take().unwrap());
    let (local, _) = local_api(&said);
    read_until(&said, |line| {
        line.contains("connected to the control plane")
    });
    assert_eq!(local_status(&local)["connected"], true);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn an_agent_that_cannot_reach_its_server_logs_each_try_and_reports_not_connected() {
    // A port nobody listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = fresh_dir("unreachable");
    let mut child = agent(
        &addr,
        "fs_any",
        &dir.path().join("agent"),
        &["--node-id", "n1", "--local-api", "127.0.0.1:0"],
    )
    .spawn()
    .unwrap();
    let said = lines_of(child.stderr.take().unwrap());
    let (local, _) = local_api(&said);
    let mut tries = 0;
    let lines = read_until(&said, |line| {
        if line.contains("control plane not reached") && line.contains("retry_in_ms=") {
            tries += 1;
        }
        tries >= 3
    });
    let logged = lines.join("\n");
    assert!(logged.contains(&addr), "{logged}");
    assert!(logged.contains("unreachable"), "{logged}");
    let status = local_status(&local);
    assert_eq!(status["connected"], false, "{status}");
    assert_eq!(child.try_wait().unwrap(), None, "retrying, not stopped");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_server_with_json_logs_writes_one_line_per_change_with_the_request_id() {
    let server = Server::start("json", &["--log-format", "json", "--codex", "off"]);
    let spec = server.dir.path().join("flags.spec.json");
    std::fs::write(&spec, r#"{"format": "json", "max_bytes": 256}"#).unwrap();
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/v1/units", server.addr))
        .bearer_auth(&server.admin)
        .header("x-request-id", "test-create-1")
        .json(&json!({"name": "flags", "spec": {"format": "json", "max_bytes": 256}}))
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{:?}", response.text());
    assert_eq!(response.headers()["x-request-id"], "test-create-1");
    let lines = read_until(&server.said, |line| {
        line.contains("\"changelog\"") && line.contains("\"unit\":\"flags\"")
    });
    let entry: Value = serde_json::from_str(lines.last().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {}", lines.join("\n")));
    assert_eq!(entry["level"], "INFO", "{entry}");
    assert_eq!(entry["message"], "changelog", "{entry}");
    assert_eq!(entry["unit"], "flags", "{entry}");
    assert_eq!(entry["actor"], "admin", "{entry}");
    assert!(entry["kind"].as_str().is_some(), "{entry}");
    assert!(entry["changelog_id"].as_u64().is_some(), "{entry}");
    assert_eq!(entry["span"]["request_id"], "test-create-1", "{entry}");
    assert_eq!(entry["span"]["method"], "POST", "{entry}");
    assert!(entry["timestamp"].as_str().is_some(), "{entry}");
}

#[test]
fn the_cli_follows_cursors_and_shows_a_list_longer_than_a_page() {
    let server = Server::start("pages", &["--codex", "off"]);
    let http = reqwest::blocking::Client::new();
    let count = failsmall_core::limits::LIST_PAGE_MAX as usize + 1;
    for index in 0..count {
        let response = http
            .post(format!("{}/v1/units", server.addr))
            .bearer_auth(&server.admin)
            .json(&json!({"name": format!("u{index:04}"), "spec": {"format": "raw", "max_bytes": 64}}))
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{:?}", response.text());
    }
    let first: Value = http
        .get(format!("{}/v1/units", server.addr))
        .bearer_auth(&server.admin)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(first["units"].as_array().unwrap().len(), count - 1);
    assert_eq!(
        first["next"], "u0999",
        "one page, and the cursor of the next"
    );
    let output = Command::new(BIN)
        .args(["unit", "list", "-o", "json"])
        .env("FAILSMALL_ADDR", &server.addr)
        .env("FAILSMALL_TOKEN", &server.admin)
        .env("HOME", server.dir.path())
        .env("XDG_CONFIG_HOME", server.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let units = listed.as_array().unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(units.len(), count, "every unit, over two pages");
    assert_eq!(units.last().unwrap()["name"], "u1000");
}
