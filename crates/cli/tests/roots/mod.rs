//! What the key and break-glass tests share: a `failsmall server` child on a fixed loopback
//! port, the agent's local API, and `failsmall` commands.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_failsmall");
/// How long anything asked of the processes may take.
pub const WAIT: Duration = Duration::from_secs(60);

pub const PLAN: &str = "name: keys
soak: 0s
defaults:
  bake: 100ms
  min_requests: 0
  silence: 60s
  gates: []
stages:
  - name: all
";

pub fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, received) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(output).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    received
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `failsmall ARGS`, expected to succeed; its stdout.
pub fn cli(args: &[&str]) -> String {
    let output = Command::new(BIN).args(args).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A `failsmall server` child on 127.0.0.1:0.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server on `dir` listening on `listen` (the same port across restarts, as the
/// agent knows it): its address, or what it said on stderr when it exited.
pub fn start_server(dir: &Path, listen: &str) -> Result<Server, String> {
    let mut child = Command::new(BIN)
        .args(["server", "--data-dir", path(dir)])
        .args(["--listen", listen, "--codex", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = lines_of(child.stderr.take().unwrap());
    let deadline = Instant::now() + WAIT;
    let mut heard = Vec::new();
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match said.recv_timeout(left) {
            Ok(line) => {
                if let Some(head) = line.split(", data in ").next()
                    && let Some(addr) = head.split("listening on ").nth(1)
                {
                    break addr.to_owned();
                }
                heard.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(heard.join("\n"));
            }
        }
    };
    // The address is printed before the data dir is opened: wait for an answer, or the exit.
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            while let Ok(line) = said.recv_timeout(Duration::from_secs(5)) {
                heard.push(line);
            }
            return Err(heard.join("\n"));
        }
        if reqwest::blocking::get(format!("{addr}/healthz")).is_ok_and(|r| r.status() == 200) {
            std::thread::spawn(move || while said.recv().is_ok() {});
            return Ok(Server { child, addr });
        }
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn admin(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned()
}

pub fn api(
    server: &Server,
    token: &str,
    method: reqwest::Method,
    at: &str,
    body: Vec<u8>,
) -> Value {
    let response = reqwest::blocking::Client::new()
        .request(method, format!("{}{at}", server.addr))
        .bearer_auth(token)
        .body(body)
        .send()
        .unwrap();
    let status = response.status();
    let value: Value = response.json().unwrap_or(Value::Null);
    assert!(status.is_success(), "{at}: {status} {value}");
    value
}

/// Creates unit `unit` with a one-stage plan and pushes `content` to it.
pub fn create_and_push(server: &Server, token: &str, unit: &str, content: &str) {
    let spec = json!({"format": "json", "max_bytes": 4096});
    let body = json!({"name": unit, "spec": spec, "plan": PLAN});
    api(
        server,
        token,
        reqwest::Method::POST,
        "/v1/units",
        serde_json::to_vec(&body).unwrap(),
    );
    api(
        server,
        token,
        reqwest::Method::POST,
        &format!("/v1/units/{unit}/versions?message=keys"),
        content.as_bytes().to_vec(),
    );
}

/// The agent's local status.
pub fn status(local: &str) -> Value {
    reqwest::blocking::get(format!("http://{local}/v1/status"))
        .and_then(|r| r.json())
        .unwrap_or(Value::Null)
}

/// Waits until the agent serves `content` for `unit` on its local API.
pub fn wait_serves(local: &str, unit: &str, content: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = reqwest::blocking::get(format!("http://{local}/v1/units/{unit}"))
            && response.status() == 200
            && response.text().is_ok_and(|t| t == content)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the agent never served {unit}; status {}",
            status(local)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the agent's status satisfies `ok`.
pub fn wait_status(local: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status(local);
        if ok(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: status {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Agent(pub Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An agent token for `node`, made by the admin.
pub fn agent_token(server: &Server, admin: &str, node: &str) -> String {
    let body = json!({"name": format!("agent-{node}"), "role": "agent", "node": node});
    api(
        server,
        admin,
        reqwest::Method::POST,
        "/v1/tokens",
        serde_json::to_vec(&body).unwrap(),
    )["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `failsmall keys sign` of `root` with each of `shares`, in order.
pub fn sign_root(root: &Path, shares: &[PathBuf]) {
    for share in shares {
        cli(&["keys", "sign", "--root", path(root), "--share", path(share)]);
    }
}

/// Puts the signed `root` where the server in `data` reads it at start.
pub fn install_root(root: &Path, data: &Path) {
    std::fs::copy(root, data.join("root.json")).unwrap();
}
