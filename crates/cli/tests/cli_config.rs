//! Configuration files for `failsmall server` and `failsmall agent`, on real processes: a TOML
//! file as well as flags (flags override it), unknown keys refused naming the file, line and
//! key, and `--check`, which validates the whole configuration, prints every problem and
//! exits (0 valid, 1 not).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_failsmall");

fn fresh_dir(name: &str) -> tempfile::TempDir {
    failsmall_testkit::scratch_dir(&format!("failsmall-cli-config-{name}-"))
}

fn failsmall(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FAILSMALL_ADDR")
        .env_remove("FAILSMALL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn fails(args: &[&str]) -> String {
    let output = failsmall(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    stderr
}

fn passes(args: &[&str]) -> String {
    let output = failsmall(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
    stderr
}

#[test]
fn the_server_reads_a_file_checks_it_whole_and_flags_override_it() {
    let dir = fresh_dir("server");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();

    let typo = file(
        "typo.toml",
        &format!("data_dir = {data:?}\ndesired_ttl = \"5m\"\nlisn = \"127.0.0.1:7070\"\n"),
    );
    let stderr = fails(&["server", "--config", &typo, "--check"]);
    assert!(stderr.contains("typo.toml"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("unknown field `lisn`"), "{stderr}");
    // The file did not load, so nothing named the data dir either: both are said.
    assert!(stderr.contains("--data-dir DIR is required"), "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");

    let wrong = file(
        "wrong.toml",
        &format!(
            "data_dir = {data:?}\ndesired_ttl = \"5 minutes\"\nnode_down_after = \"10s\"\ncodex = \"strict\"\n"
        ),
    );
    let stderr = fails(&["server", "--config", &wrong, "--check"]);
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(stderr.contains("wrong.toml:2: desired_ttl:"), "{stderr}");
    assert!(
        stderr.contains("wrong.toml:3: node_down_after: \"10s\" is shorter than 30s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("wrong.toml:4: codex: \"strict\""),
        "{stderr}"
    );

    // The network settings too: a certificate without its key, a timeout that does not parse.
    let net = file(
        "net.toml",
        &format!(
            "data_dir = {data:?}\ntls_cert = \"/etc/failsmall/server.pem\"\nheader_timeout = \"soon\"\nmax_connections = 100\nidle_timeout = \"30s\"\n"
        ),
    );
    let stderr = fails(&["server", "--config", &net, "--check"]);
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(stderr.contains("net.toml:3: header_timeout:"), "{stderr}");
    assert!(
        stderr.contains("give both tls_cert and tls_key"),
        "{stderr}"
    );

    let missing_rules = dir.path().join("no-such-rules");
    let good = file(
        "good.toml",
        &format!(
            "data_dir = {data:?}\nlisten = \"127.0.0.1:1\"\ndesired_ttl = \"2m\"\ncodex = \"warn\"\nlog_format = \"json\"\n"
        ),
    );
    let stderr = passes(&["server", "--config", &good, "--check"]);
    assert!(stderr.contains("server configuration is valid"), "{stderr}");
    assert!(!data_dir.exists(), "--check writes nothing");
    let stderr = fails(&[
        "server",
        "--config",
        &good,
        "--check",
        "--codex-dir",
        missing_rules.to_str().unwrap(),
    ]);
    assert!(stderr.contains("the Codex"), "{stderr}");

    // Started for real: the file's JSON logs and data dir, the flag's address.
    let mut child = Command::new(BIN)
        .args(["server", "--config", &good, "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut listening = None;
    let mut json_lines = 0;
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("listening on http://").nth(1) {
            listening = Some(rest.split(',').next().unwrap().to_owned());
        }
        if serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| v["level"].is_string()) {
            json_lines += 1;
        }
        if listening.is_some() && json_lines > 0 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let listening = listening.expect("the server never listened");
    assert!(
        !listening.ends_with(":1"),
        "the flag overrides the file: {listening}"
    );
    assert!(json_lines > 0, "the file's log_format = \"json\" is used");
    assert!(
        data_dir.join("admin.token").exists(),
        "the file's data_dir is used"
    );
}

#[test]
fn the_agent_reads_a_file_checks_it_whole_and_flags_override_it() {
    let dir = fresh_dir("agent");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let data = dir.path().join("agent");
    let data = data.to_str().unwrap();

    // A key after [labels] is a label; a key the agent does not know at the top level is
    // refused, naming the file, its line and the key.
    let typo = file(
        "typo2.toml",
        "addr = \"http://127.0.0.1:7070\"\nnode = \"n1\"\n",
    );
    let stderr = fails(&["agent", "--config", &typo, "--data-dir", data, "--check"]);
    assert!(stderr.contains("typo2.toml"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(stderr.contains("unknown field `node`"), "{stderr}");

    let wrong = file(
        "wrong.toml",
        "integrity_interval_ms = 1\ncheck_window_ms = 5000\ncheck_deadline_ms = 4000\nlocal_api = \"10.0.0.1:7071\"\n",
    );
    let stderr = fails(&["agent", "--config", &wrong, "--data-dir", data, "--check"]);
    assert!(
        stderr.contains("--addr (or FAILSMALL_ADDR) is required"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--token (or FAILSMALL_TOKEN) is required"),
        "{stderr}"
    );
    assert!(
        stderr.contains("integrity-interval-ms: 1 is out of range"),
        "{stderr}"
    );
    assert!(stderr.contains("must be greater than"), "{stderr}");
    assert!(stderr.contains("4 problem(s)"), "{stderr}");

    let good = file(
        "good.toml",
        &format!(
            "addr = \"http://127.0.0.1:7070\"\ntoken = \"fs_x\"\nnode_id = \"n1\"\ndata_dir = {data:?}\nlocal_api = \"10.0.0.1:7071\"\nlog_format = \"json\"\n\n[labels]\nregion = \"eu\"\ncohort = \"free\"\n"
        ),
    );
    // The file's local API is not loopback: refused; the flag's overrides it.
    let stderr = fails(&["agent", "--config", &good, "--check"]);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    let stderr = passes(&[
        "agent",
        "--config",
        &good,
        "--local-api",
        "127.0.0.1:0",
        "--check",
    ]);
    assert!(stderr.contains("agent configuration is valid"), "{stderr}");
}
