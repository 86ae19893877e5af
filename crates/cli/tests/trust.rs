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
    _scratch: tempfile::TempDir,
    _said: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("data");
        Self::start_in(scratch, dir, extra)
    }

    fn start_in(scratch: tempfile::TempDir, dir: PathBuf, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("server")
            .arg("--data-dir")
            .arg(&dir)
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
        // The server prints its address before it opens the data dir; the admin token
        // follows (and is absent only on a restart, where the file is kept).
        let admin = loop {
            if let Ok(token) = std::fs::read_to_string(dir.join("admin.token"))
                && !token.trim().is_empty()
            {
                break token.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "no admin token within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        // And it answers once the store is open.
        let ready_deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < ready_deadline, "the server never accepted");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            addr,
            port,
            admin,
            dir,
            _scratch: scratch,
            _said: said,
        }
    }

    /// `failsmall ARGS` against this server with the admin token (and `extra` flags first).
    fn cli(&self, extra: &[&str], args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--addr", &self.addr, "--token", &self.admin])
            .args(extra)
            .env_remove("FAILSMALL_CA")
            .env("HOME", self.dir.parent().unwrap())
            .stdin(Stdio::null())
            .output()
            .unwrap()
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

/// Whether the server closed `stream` (end of file or a reset), waiting at most `wait`.
fn is_closed(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buffer = [0u8; 512];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            // A 408 or a 400 the server sent before closing.
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

#[test]
fn idle_and_half_open_connections_cannot_take_the_control_plane_down() {
    const IDLE: usize = 1_200;
    let server = Server::start(&[
        "--max-connections",
        "1000",
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
        if !is_closed(stream, Duration::from_millis(20)) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "{still_open} idle connections are still open"
    );
    assert!(healthz_ms(server.port) < 1_000);
}
