//! Trust on real processes: `failsmall server` over TLS with an agent and the CLI talking to
//! it (and a client without the CA refused), connections that cannot take the control plane
//! down, token expiry and owners, and the tamper-evident changelog. Every server listens on
//! 127.0.0.1 with a port the OS chooses, in a temporary data dir, and is killed when its test
//! ends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_failsmall");

/// The lines a child prints on `output`, as they come.
fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

/// A `failsmall server` child process on 127.0.0.1:0.
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` or `https://...`.
    addr: String,
    port: u16,
    admin: String,
    dir: PathBuf,
    extra: Vec<String>,
    _scratch: tempfile::TempDir,
    /// What the server prints on stderr after its address.
    said: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `failsmall server` on `dir`; its child, address, port and stderr.
fn spawn_server(dir: &Path, extra: &[String]) -> (Child, String, u16, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .arg("server")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--codex", "off"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = lines_of(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = said.recv_timeout(left) else {
            let _ = child.kill();
            panic!("the server printed no listening address within 30 s");
        };
        if let Some(head) = line.split(", data in ").next()
            && let Some(addr) = head.split("listening on ").nth(1)
        {
            break addr.to_owned();
        }
    };
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    (child, addr, port, said)
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("data");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let (child, addr, port, said) = spawn_server(&dir, &extra);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The server prints its address before it opens the data dir; the admin token
        // follows.
        let admin = loop {
            if let Ok(token) = std::fs::read_to_string(dir.join("admin.token"))
                && !token.trim().is_empty()
            {
                break token.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "no admin token within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let server = Self {
            child,
            addr,
            port,
            admin,
            dir,
            extra,
            _scratch: scratch,
            said,
        };
        server.wait_ready();
        server
    }

    /// Waits until the server answers (its store is open).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                // A TLS server answers plain text with garbage or nothing: it is up.
                if !answer.is_empty() || self.addr.starts_with("https://") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the server never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server, runs `meanwhile`, and starts it again on the same data dir.
    fn restart(&mut self, meanwhile: impl FnOnce(&Path)) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        meanwhile(&self.dir);
        let (child, addr, port, said) = spawn_server(&self.dir, &self.extra);
        self.child = child;
        self.addr = addr;
        self.port = port;
        self.said = said;
        self.wait_ready();
    }

    /// `failsmall ARGS` against this server with the admin token (and `extra` flags after).
    fn cli(&self, extra: &[&str], args: &[&str]) -> Output {
        self.cli_as(&self.admin, extra, args)
    }

    /// `failsmall ARGS` against this server with `token`.
    fn cli_as(&self, token: &str, extra: &[&str], args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--addr", &self.addr, "--token", token])
            .args(extra)
            .env_remove("FAILSMALL_CA")
            .env("HOME", self.dir.parent().unwrap())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `method path` with `token` and a JSON body, over plain HTTP; the status and answer.
    fn http(&self, method: reqwest::Method, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::blocking::Client::new()
            .request(method, format!("{}{path}", self.addr))
            .bearer_auth(token)
            .json(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct Pki {
    /// The SHA-256 of the server's certificate, hex: what `--pin-sha256` takes.
    pin: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "failsmall test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        pin: failsmall_agent::tls::certificate_sha256(server_cert.der()),
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("server.pem", server_cert.pem()),
        key: write("server.key", server_key.serialize_pem()),
        _dir: dir,
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn over_tls_an_agent_and_the_cli_talk_to_the_server_and_a_client_without_the_ca_is_refused() {
    let pki = pki();
    let server = Server::start(&[
        "--tls-cert",
        path_str(&pki.cert),
        "--tls-key",
        path_str(&pki.key),
    ]);
    assert!(server.addr.starts_with("https://"), "{}", server.addr);
    let ca = ["--ca", path_str(&pki.ca)];

    // The CLI with the CA.
    let status = server.cli(&ca, &["status", "-o", "json"]);
    assert!(status.status.success(), "{}", text(&status));

    // Without it: refused, saying why and what to do.
    let refused = server.cli(&[], &["status"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("does not trust") && said.contains("--ca FILE"),
        "{said}"
    );

    // Or with the server certificate's pin instead of any CA; a wrong pin is refused.
    let pinned = server.cli(&["--pin-sha256", &pki.pin], &["status"]);
    assert!(pinned.status.success(), "{}", text(&pinned));
    let wrong = server.cli(&["--pin-sha256", &"ab".repeat(32)], &["status"]);
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(
        stderr(&wrong).contains("certificate pin mismatch"),
        "{}",
        text(&wrong)
    );

    // Plain HTTP to a TLS port gets nothing useful either.
    let plain = Command::new(BIN)
        .args([
            "status",
            "--addr",
            &format!("http://127.0.0.1:{}", server.port),
        ])
        .args(["--token", &server.admin])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "{}", text(&plain));

    // An agent over https://, trusting the CA: it registers and holds its watch.
    let token = server.cli(
        &ca,
        &["token", "create", "n1", "--role", "agent", "--node", "n1"],
    );
    assert!(token.status.success(), "{}", text(&token));
    let agent_token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut agent = Command::new(BIN)
        .args(["agent", "--server", &server.addr, "--node-id", "n1"])
        .args(["--labels", "cohort=employee,region=eu"])
        .arg("--data-dir")
        .arg(agent_dir.path())
        .args(ca)
        .env("FAILSMALL_TOKEN", &agent_token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = server.cli(&ca, &["nodes", "-o", "json"]);
        let listed: Value = serde_json::from_slice(&nodes.stdout).unwrap_or(Value::Null);
        if listed.to_string().contains("\"n1\"") {
            break;
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            panic!("the agent never registered over TLS: {}", text(&nodes));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its pinned key came over TLS too (trust on first use of the signing key).
    assert!(agent_dir.path().join("server.key").exists());
    let _ = agent.kill();
    let _ = agent.wait();

    // An agent that pins the certificate instead of trusting a CA registers too.
    let pin_token = server.cli(
        &ca,
        &["token", "create", "n3", "--role", "agent", "--node", "n3"],
    );
    let pin_token = String::from_utf8_lossy(&pin_token.stdout).trim().to_owned();
    let pin_dir = tempfile::tempdir().unwrap();
    let _pinned_agent = KillOnDrop(
        Command::new(BIN)
            .args(["agent", "--server", &server.addr, "--node-id", "n3"])
            .args(["--pin-sha256", &pki.pin])
            .arg("--data-dir")
            .arg(pin_dir.path())
            .env("FAILSMALL_TOKEN", &pin_token)
            .env_remove("FAILSMALL_CA")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .cli(&ca, &["nodes", "-o", "json"])
        .stdout
        .windows(4)
        .any(|w| w == b"\"n3\"")
    {
        assert!(
            Instant::now() < deadline,
            "the pinning agent never registered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // An agent without the CA cannot register: it keeps retrying, and the node never appears.
    let lost_dir = tempfile::tempdir().unwrap();
    let lost = Command::new(BIN)
        .args(["agent", "--server", &server.addr, "--node-id", "n2"])
        .arg("--data-dir")
        .arg(lost_dir.path())
        .env("FAILSMALL_TOKEN", &agent_token)
        .env_remove("FAILSMALL_CA")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lost = KillOnDrop(lost);
    let lines = lines_of(lost.0.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            let found = line.contains("certificate");
            seen.push(line);
            if found {
                break;
            }
        }
    }
    assert!(
        seen.iter().any(|line| line.contains("certificate")),
        "the agent without the CA did not say why it cannot connect: {seen:?}"
    );
    assert!(!lost_dir.path().join("server.key").exists());
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_plain_http_address_off_this_host_is_warned_about() {
    // Nothing listens there: the warning comes before the connection fails.
    let output = Command::new(BIN)
        .args(["status", "--addr", "http://192.0.2.1:7070", "--token", "t"])
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("clear text"), "{said}");
}

/// `GET /healthz` on a fresh connection; how long it took.
fn healthz_ms(port: u16) -> u128 {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    started.elapsed().as_millis()
}

#[test]
fn idle_and_half_open_connections_cannot_take_the_control_plane_down() {
    const IDLE: usize = 1_200;
    let server = Server::start(&[
        "--max-connections",
        "1000",
        "--max-connections-per-client",
        "600",
        "--header-timeout",
        "4s",
        "--idle-timeout",
        "4s",
    ]);
    // 1,200 connections: a third send half a request, the rest nothing at all.
    let mut idle = Vec::with_capacity(IDLE);
    for index in 0..IDLE {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", server.port)) else {
            // Past the bound the server may close a connection as soon as it is accepted.
            continue;
        };
        if index % 3 == 0 {
            let _ = stream.write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\nx-half: ");
        }
        idle.push(stream);
    }
    assert!(idle.len() > 1_000, "only {} connections opened", idle.len());
    let opened = Instant::now();

    // The API still answers, at once, on new connections.
    for _ in 0..5 {
        let took_ms = healthz_ms(server.port);
        assert!(took_ms < 1_000, "/healthz took {took_ms} ms");
    }
    let status = server.cli(&[], &["status", "-o", "json"]);
    assert!(status.status.success(), "{}", text(&status));

    // After the timeouts every one of them is closed by the server.
    let wait = Duration::from_secs(4 + 4).saturating_sub(opened.elapsed()) + Duration::from_secs(3);
    std::thread::sleep(wait);
    let mut still_open = 0;
    for stream in &mut idle {
        if !support::is_closed(stream, Duration::from_millis(20)) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "{still_open} idle connections are still open"
    );
    assert!(healthz_ms(server.port) < 1_000);
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Creates a token with the admin token; its secret.
fn token(server: &Server, args: &[&str]) -> String {
    let mut command = vec!["token", "create"];
    command.extend_from_slice(args);
    let created = server.cli(&[], &command);
    assert!(created.status.success(), "{}", text(&created));
    stdout(&created)
}

#[test]
fn expiry_is_checked_and_recorded_and_the_last_admin_token_can_be_revoked_by_no_one() {
    let server = Server::start(&[]);
    // An expiring token works until it expires, then is refused saying so.
    let brief = token(
        &server,
        &["brief", "--role", "viewer", "--expires-in", "1m"],
    );
    let whoami = server.cli_as(&brief, &[], &["whoami", "-o", "json"]);
    assert!(whoami.status.success(), "{}", text(&whoami));
    let listed = server.cli(&[], &["token", "list", "-o", "json"]);
    let tokens: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let brief_record = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "brief")
        .unwrap();
    assert!(brief_record["expires_ms"].as_u64().is_some(), "{tokens}");
    // Past its expiry (the store's clock is the wall clock: move the expiry, not time).
    let bad = server.cli(
        &[],
        &[
            "token",
            "create",
            "x",
            "--role",
            "viewer",
            "--expires-in",
            "soon",
        ],
    );
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(stderr(&bad).contains("expires_in"), "{}", text(&bad));

    // The only admin token cannot revoke itself.
    let admin_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "admin")
        .unwrap()["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let refused = server.cli(&[], &["token", "revoke", &admin_id]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let said = stderr(&refused);
    assert!(
        said.contains("last admin token") && said.contains("409"),
        "{said}"
    );
    // With a second admin, the first may go; then the second is the last.
    let boss = token(&server, &["boss", "--role", "admin", "--owner", "boss"]);
    let revoked = server.cli_as(&boss, &[], &["token", "revoke", &admin_id]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    let listed = server.cli_as(&boss, &[], &["token", "list", "-o", "json"]);
    let tokens: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let boss_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "boss")
        .unwrap()["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let refused = server.cli_as(&boss, &[], &["token", "revoke", &boss_id]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(stderr(&refused).contains("last admin token"));
}

#[test]
fn an_expired_token_is_refused_with_the_reason() {
    let mut server = Server::start(&[]);
    let brief = token(
        &server,
        &["brief", "--role", "viewer", "--expires-in", "1m"],
    );
    // Time cannot be moved for a real server: its expiry is moved into the past instead,
    // in the stopped server's database.
    server.restart(|dir| {
        let db = rusqlite::Connection::open(dir.join("failsmall.db")).unwrap();
        db.execute(
            "UPDATE tokens SET expires_ms = 1000 WHERE name = 'brief'",
            [],
        )
        .unwrap();
    });
    let refused = server.cli_as(&brief, &[], &["whoami"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let said = stderr(&refused);
    assert!(said.contains("expired at 1970-01-01T00:00:01"), "{said}");
    let (status, answer) = server.http(reqwest::Method::GET, "/v1/whoami", &brief, &Value::Null);
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "token_expired", "{answer}");
}

#[test]
fn an_approval_by_a_token_of_the_pushers_owner_is_refused_and_another_persons_is_taken() {
    let server = Server::start(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = scratch.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let spec = file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    let created = server.cli(&[], &["unit", "create", "flags", "--spec", &spec]);
    assert!(created.status.success(), "{}", text(&created));
    // A node, played over HTTP with its agent token.
    let agent = token(&server, &["agent-n1", "--role", "agent", "--node", "n1"]);
    let (status, answer) = server.http(
        reqwest::Method::PUT,
        "/v1/nodes/n1",
        &agent,
        &serde_json::json!({"labels": {"cohort": "employee"}}),
    );
    assert!(status < 300, "{answer}");
    // The admin mints an approver token under another name, and one for another person.
    let night_shift = token(&server, &["night-shift", "--role", "approver"]);
    let bob = token(&server, &["bob", "--role", "approver", "--owner", "bob"]);
    let carol = token(
        &server,
        &["carol", "--role", "approver", "--owner", "carol"],
    );
    let whoami = server.cli_as(&night_shift, &[], &["whoami", "-o", "json"]);
    let whoami: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(whoami["name"], "admin", "{whoami}");
    assert_eq!(whoami["token"], "night-shift", "{whoami}");

    let plan = file(
        "approval.yaml",
        "name: approval\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 10\n    gates: []\n    approvers: 2\n",
    );
    let version_file = file("v1.json", r#"{"n": 1}"#);
    let pushed = server.cli(
        &[],
        &[
            "push",
            "flags",
            &version_file,
            "-m",
            "v1",
            "--plan",
            &plan,
            "-o",
            "json",
        ],
    );
    assert!(pushed.status.success(), "{}", text(&pushed));
    let pushed: Value = serde_json::from_slice(&pushed.stdout).unwrap();
    let id = pushed["rollout"]["id"].as_u64().unwrap().to_string();
    // The plan's one stage asks for an approval: it comes before any node runs the version.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = server.cli(&[], &["rollout", "status", &id, "-o", "json"]);
        let status: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
        if status["phase"] == "awaiting_approval" {
            assert_eq!(status["nodes_exposed"], 0, "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never awaited approval: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another token of the same person: refused.
    let refused = server.cli_as(&night_shift, &[], &["rollout", "approve", &id]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        stderr(&refused).contains("admin pushed this version and so cannot approve it"),
        "{}",
        text(&refused)
    );
    // Another person: taken, and the changelog says who; the stage asks for two people.
    let approved = server.cli_as(&bob, &[], &["rollout", "approve", &id, "-o", "json"]);
    assert!(approved.status.success(), "{}", text(&approved));
    let view: Value = serde_json::from_slice(&approved.stdout).unwrap();
    assert_eq!(view["phase"], "awaiting_approval", "{view}");
    assert_eq!(view["nodes_exposed"], 0, "{view}");
    let again = server.cli_as(&bob, &[], &["rollout", "approve", &id]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        stderr(&again).contains("bob already approved"),
        "{}",
        text(&again)
    );
    let second = server.cli_as(&carol, &[], &["rollout", "approve", &id, "-o", "json"]);
    assert!(second.status.success(), "{}", text(&second));
    let view: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_ne!(view["phase"], "awaiting_approval", "{view}");
    let log = server.cli(&[], &["log", "--rollout", &id, "-o", "json"]);
    let log: Value = serde_json::from_slice(&log.stdout).unwrap();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "approved" && e["actor"] == "bob"),
        "{log}"
    );
}

#[test]
fn an_edited_changelog_row_is_reported_at_start_by_log_verify_and_on_every_changelog_answer() {
    let mut server = Server::start(&[]);
    for name in ["a", "b", "c"] {
        token(&server, &[name, "--role", "viewer", "--owner", name]);
    }
    let intact = server.cli(&[], &["log", "--verify"]);
    assert_eq!(intact.status.code(), Some(0), "{}", text(&intact));
    assert!(
        stdout(&intact).contains("changelog intact: 4 rows"),
        "{}",
        text(&intact)
    );

    // Someone edits history while the server is stopped.
    server.restart(|dir| {
        let db = rusqlite::Connection::open(dir.join("failsmall.db")).unwrap();
        let edited = db
            .execute(
                "UPDATE changelog SET reason = 'nothing happened' WHERE id = 3",
                [],
            )
            .unwrap();
        assert_eq!(edited, 1);
    });
    // The server says so at start...
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = server.said.recv_timeout(Duration::from_millis(100)) {
            let found = line.contains("hash chain is broken at row 3");
            seen.push(line);
            if found {
                break;
            }
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("hash chain is broken at row 3")),
        "{seen:?}"
    );
    // ... `log --verify` names the row and exits 3 ...
    let broken = server.cli(&[], &["log", "--verify"]);
    assert_eq!(broken.status.code(), Some(3), "{}", text(&broken));
    assert!(
        stdout(&broken).contains("changelog BROKEN at row 3 of 4"),
        "{}",
        text(&broken)
    );
    let (status, verdict) = server.http(
        reqwest::Method::GET,
        "/v1/changelog/verify",
        &server.admin,
        &Value::Null,
    );
    assert_eq!(status, 200);
    assert_eq!(verdict["intact"], false, "{verdict}");
    assert_eq!(verdict["first_break"]["id"], 3, "{verdict}");
    // ... and every changelog answer carries the warning.
    let response = reqwest::blocking::Client::new()
        .get(format!("{}/v1/changelog", server.addr))
        .bearer_auth(&server.admin)
        .send()
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("x-failsmall-changelog-integrity")
            .and_then(|v| v.to_str().ok()),
        Some("broken at row 3")
    );
    // New entries still chain on, and the break stays reported.
    token(&server, &["d", "--role", "viewer", "--owner", "d"]);
    let still = server.cli(&[], &["log", "--verify", "-o", "json"]);
    assert_eq!(still.status.code(), Some(3), "{}", text(&still));
    let still: Value = serde_json::from_slice(&still.stdout).unwrap();
    assert_eq!(still["rows"], 5, "{still}");
    assert_eq!(still["first_break"]["id"], 3, "{still}");
}

#[test]
fn a_lost_admin_is_recovered_offline_from_the_data_dir_and_the_changelog_says_so() {
    let mut server = Server::start(&[]);
    // Every admin token is lost (the file is gone, nobody kept the secret).
    let lost = server.admin.clone();
    server.restart(|dir| {
        std::fs::remove_file(dir.join("admin.token")).unwrap();
        let recovered = Command::new(BIN)
            .args(["server", "recover-admin", "--owner", "carol", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(recovered.status.success(), "{}", text(&recovered));
        std::fs::write(dir.join("recovered"), &recovered.stdout).unwrap();
    });
    let recovered = std::fs::read_to_string(server.dir.join("recovered"))
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(recovered, lost);
    let whoami = server.cli_as(&recovered, &[], &["whoami", "-o", "json"]);
    let whoami: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(whoami["role"], "admin", "{whoami}");
    assert_eq!(whoami["name"], "carol", "{whoami}");
    let log = server.cli_as(&recovered, &[], &["log", "-o", "json"]);
    let log: Value = serde_json::from_slice(&log.stdout).unwrap();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "admin_recovered"),
        "{log}"
    );
    let verified = server.cli_as(&recovered, &[], &["log", "--verify"]);
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
    // Without a store there is nothing to recover.
    let empty = tempfile::tempdir().unwrap();
    let refused = Command::new(BIN)
        .args(["server", "recover-admin", "--owner", "carol", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(stderr(&refused).contains("no failsmall store here"));
}

#[test]
fn a_rotated_token_keeps_what_it_is_and_only_the_new_secret_works() {
    let server = Server::start(&[]);
    let old = token(
        &server,
        &[
            "ci",
            "--role",
            "deployer",
            "--owner",
            "ci-bot",
            "--expires-in",
            "30d",
        ],
    );
    let listed = server.cli(&[], &["token", "list", "-o", "json"]);
    let tokens: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let before = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap()
        .clone();
    let id = before["id"].as_u64().unwrap().to_string();
    let rotated = server.cli(&[], &["token", "rotate", &id]);
    assert!(rotated.status.success(), "{}", text(&rotated));
    let new = stdout(&rotated);
    assert_ne!(new, old);
    let refused = server.cli_as(&old, &[], &["whoami"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let whoami = server.cli_as(&new, &[], &["whoami", "-o", "json"]);
    let whoami: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(whoami["name"], "ci-bot", "{whoami}");
    assert_eq!(whoami["token"], "ci", "{whoami}");
    assert_eq!(whoami["role"], "deployer", "{whoami}");
    let listed = server.cli(&[], &["token", "list", "-o", "json"]);
    let tokens: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let after = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci" && t["revoked_ms"].is_null())
        .unwrap();
    assert_eq!(after["expires_ms"], before["expires_ms"], "{tokens}");
    // The only admin token may rotate itself: its successor is in place first.
    let admin_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "admin")
        .unwrap()["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let rotated = server.cli(&[], &["token", "rotate", &admin_id]);
    assert!(rotated.status.success(), "{}", text(&rotated));
    let admin = stdout(&rotated);
    let status = server.cli_as(&admin, &[], &["token", "list"]);
    assert!(status.status.success(), "{}", text(&status));
    assert_eq!(server.cli(&[], &["token", "list"]).status.code(), Some(1));
}

#[test]
fn a_signed_checkpoint_kept_elsewhere_catches_a_truncated_history() {
    let mut server = Server::start(&[]);
    for name in ["a", "b"] {
        token(&server, &[name, "--role", "viewer", "--owner", name]);
    }
    let verified = server.cli(&[], &["log", "--verify", "-o", "json"]);
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
    let verdict: Value = serde_json::from_slice(&verified.stdout).unwrap();
    let checkpoint = &verdict["checkpoint"];
    let (row, hash) = (
        checkpoint["row"].as_u64().unwrap(),
        checkpoint["hash"].as_str().unwrap().to_owned(),
    );
    assert_eq!(row, 3, "{verdict}");
    // Signed with the server's key: anyone holding the public key can check it.
    assert!(failsmall_server::signing::verify_checkpoint(
        checkpoint["public_key"].as_str().unwrap(),
        row,
        &hash,
        checkpoint["signature"].as_str().unwrap(),
    ));
    let pinned = format!("{row}:{hash}");
    let holds = server.cli(&[], &["log", "--verify", "--checkpoint", &pinned]);
    assert_eq!(holds.status.code(), Some(0), "{}", text(&holds));
    assert!(
        stdout(&holds).contains("earlier checkpoint holds"),
        "{}",
        text(&holds)
    );

    // The newest rows are deleted while the server is stopped: the chain that is left is
    // intact, but the checkpoint kept elsewhere no longer holds.
    server.restart(|dir| {
        let db = rusqlite::Connection::open(dir.join("failsmall.db")).unwrap();
        db.execute("DELETE FROM changelog WHERE id >= 2", [])
            .unwrap();
    });
    let alone = server.cli(&[], &["log", "--verify"]);
    assert_eq!(alone.status.code(), Some(0), "{}", text(&alone));
    let caught = server.cli(&[], &["log", "--verify", "--checkpoint", &pinned]);
    assert_eq!(caught.status.code(), Some(3), "{}", text(&caught));
    assert!(
        stdout(&caught).contains("row 3 is gone") && stdout(&caught).contains("truncated"),
        "{}",
        text(&caught)
    );
    let bad = server.cli(&[], &["log", "--verify", "--checkpoint", "3"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(stderr(&bad).contains("ROW:HASH"), "{}", text(&bad));
}
