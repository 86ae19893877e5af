//! The demo consumer and the load generator as real processes (`failsmall demo-consumer`,
//! `failsmall loadgen`), on loopback ports chosen by the OS, reading unit files from a temporary
//! agent data dir that the test replaces atomically, as the agent does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failsmall_core::domain::VersionHash;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_failsmall");
const WAIT: Duration = Duration::from_secs(10);
const FL1_ERROR: &str = "attempt to index field 'execute' (a nil value)";

fn example(name: &str) -> Vec<u8> {
    let path = format!("{}/../../examples/units/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A temporary agent data dir, removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "failsmall-demo-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Replaces a unit's active file atomically (write, then rename), as the agent does.
    fn install(&self, unit: &str, bytes: &[u8]) {
        let unit_dir = self.0.join("units").join(unit);
        std::fs::create_dir_all(&unit_dir).unwrap();
        let temporary = unit_dir.join("current.tmp");
        std::fs::write(&temporary, bytes).unwrap();
        std::fs::rename(&temporary, unit_dir.join("current")).unwrap();
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `failsmall demo-consumer`; killed on drop.
struct Consumer {
    child: Child,
    address: SocketAddr,
    stderr_path: PathBuf,
    http: reqwest::blocking::Client,
}

impl Consumer {
    fn start(dir: &DataDir, mode: &str, generation: &str, reject_url: Option<&str>) -> Self {
        let stderr_path = dir.0.join(format!("consumer-{mode}-{generation}.stderr"));
        let mut command = Command::new(BIN);
        command.args(["demo-consumer", "--units-dir"]);
        command.arg(&dir.0);
        command.args([
            "--listen",
            "127.0.0.1:0",
            "--mode",
            mode,
            "--generation",
            generation,
            "--poll-interval-ms",
            "20",
        ]);
        if let Some(url) = reject_url {
            command.args(["--reject-url", url]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Self {
            child,
            address,
            stderr_path,
            http,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("http://{}{path}", self.address))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().unwrap())
    }

    fn state(&self) -> Value {
        serde_json::from_str(&self.get("/state").1).unwrap()
    }

    /// Waits until the consumer's `/state` satisfies `done`.
    fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self.state();
            if done(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {what}; state: {state}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the consumer has seen this version of `unit` (loaded or rejected).
    fn wait_for_version(&self, unit: &str, bytes: &[u8]) -> Value {
        let version = VersionHash::of(bytes).to_string();
        let key = if unit == "rules" { "rules" } else { "features" };
        self.wait_for(&format!("{unit} version {version}"), |state| {
            state[key]["version"] == version.as_str()
        })
    }

    /// The value of one Prometheus sample, by its full series name.
    fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in for the agent's local API: records each POST (path, JSON body), answers 202.
struct FakeAgent {
    address: SocketAddr,
    received: Arc<Mutex<Vec<(String, Value)>>>,
}

impl FakeAgent {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_owned();
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                sink.lock().unwrap().push((path, body));
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Self { address, received }
    }

    fn wait_for_reports(&self, count: usize) -> Vec<(String, Value)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let received = self.received.lock().unwrap().clone();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{} reports of {count}",
                received.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn naive_consumer_fails_every_request_on_the_oversized_file() {
    let dir = DataDir::new("naive");
    let good = example("bot-features.json");
    let oversized = example("bot-features-oversized.json");
    dir.install("bot-features", &good);
    dir.install("rules", &example("rules.json"));
    let consumer = Consumer::start(&dir, "naive", "fl2", None);
    let state = consumer.wait_for_version("bot-features", &good);
    assert_eq!(state["features"]["count"], 60);
    for _ in 0..5 {
        let (status, body) = consumer.get("/");
        assert_eq!(
            (status, body.as_str()),
            (200, "ok: 60 features, 5 rules run, 0 skipped\n")
        );
    }

    dir.install("bot-features", &oversized);
    consumer.wait_for_version("bot-features", &oversized);
    for _ in 0..10 {
        let (status, body) = consumer.get("/");
        assert_eq!(status, 500);
        assert!(
            body.contains("called `Result::unwrap()` on an `Err` value"),
            "{body}"
        );
        assert!(
            body.contains("412 features; the table holds at most 200"),
            "{body}"
        );
    }
    assert_eq!(
        consumer.get("/health").0,
        500,
        "the agent's health check sees it"
    );
    assert_eq!(consumer.metric("http_requests_total"), 15.0);
    assert_eq!(consumer.metric("http_responses_total{status=\"200\"}"), 5.0);
    assert_eq!(
        consumer.metric("http_responses_total{status=\"500\"}"),
        10.0
    );
    assert_eq!(consumer.metric("http_errors_total"), 10.0);
    assert_eq!(
        consumer.metric("http_request_duration_seconds_count"),
        15.0,
        "every request is in the latency histogram"
    );
    assert!(consumer.stderr().contains("every request will fail"));

    // The generated file alternated: the next good one heals the node.
    dir.install("bot-features", &good);
    consumer.wait_for_version("bot-features", &good);
    assert_eq!(consumer.get("/").0, 200);
    assert_eq!(consumer.get("/health").0, 200);
}

#[test]
fn safe_consumer_keeps_serving_and_reports_the_rejection() {
    let dir = DataDir::new("safe");
    let agent = FakeAgent::start();
    let good = example("bot-features.json");
    let oversized = example("bot-features-oversized.json");
    dir.install("bot-features", &good);
    dir.install("rules", &example("rules.json"));
    let reject_url = format!("http://{}/v1/units/{{unit}}/rejections", agent.address);
    let consumer = Consumer::start(&dir, "safe", "fl2", Some(&reject_url));
    consumer.wait_for_version("bot-features", &good);
    assert_eq!(consumer.get("/").0, 200);

    dir.install("bot-features", &oversized);
    let state = consumer.wait_for("the rejection", |state| {
        state["features"]["rejections"] == 1
    });
    assert_eq!(
        state["features"]["version"],
        VersionHash::of(&good).to_string(),
        "the last good file keeps serving"
    );
    for _ in 0..20 {
        let (status, body) = consumer.get("/");
        assert_eq!(
            (status, body.as_str()),
            (200, "ok: 60 features, 5 rules run, 0 skipped\n")
        );
    }
    assert_eq!(consumer.get("/health").0, 200);

    let reports = agent.wait_for_reports(1);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let (path, body) = &reports[0];
    assert_eq!(path, "/v1/units/bot-features/rejections");
    assert_eq!(body["version"], VersionHash::of(&oversized).to_string());
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("412 features; the table holds at most 200"),
        "{reason}"
    );
    assert!(
        body.get("unit").is_none(),
        "the agent's shape: the unit is in the path"
    );

    assert_eq!(consumer.metric("http_requests_total"), 21.0);
    assert_eq!(consumer.metric("http_errors_total"), 0.0);
    assert_eq!(
        consumer.metric("failsmall_client_rejections_total{unit=\"bot-features\"}"),
        1.0
    );
    assert_eq!(
        consumer.metric("failsmall_client_fail_mode_in_use{unit=\"bot-features\",mode=\"stale\"}"),
        1.0
    );
    let sent = || consumer.metric("demo_rejection_reports_total{outcome=\"sent\"}");
    let deadline = Instant::now() + WAIT;
    while sent() < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sent(), 1.0);
}

#[test]
fn a_plain_reject_url_gets_the_unit_in_the_body() {
    let dir = DataDir::new("plain-url");
    let agent = FakeAgent::start();
    let bad_rules = br#"{"rules":[{"id":"r1","action":"drop"}]}"#;
    dir.install("rules", bad_rules);
    let reject_url = format!("http://{}/rejections", agent.address);
    let consumer = Consumer::start(&dir, "safe", "fl1", Some(&reject_url));
    let reports = agent.wait_for_reports(1);
    assert_eq!(reports[0].0, "/rejections");
    assert_eq!(reports[0].1["unit"], "rules");
    assert_eq!(
        reports[0].1["version"],
        VersionHash::of(bad_rules).to_string()
    );
    // No valid rules yet: the safe default (no rules) serves, fail open.
    assert_eq!(consumer.get("/").0, 200);
    assert_eq!(consumer.state()["rules"]["version"], "safe-default");
}

#[test]
fn fl1_fails_on_the_killswitch_and_fl2_does_not() {
    let dir = DataDir::new("dec5");
    let rules = example("rules.json");
    let killswitch = example("rules-killswitch.json");
    dir.install("bot-features", &example("bot-features.json"));
    dir.install("rules", &rules);
    let fl1 = Consumer::start(&dir, "safe", "fl1", None);
    let fl2 = Consumer::start(&dir, "safe", "fl2", None);
    for consumer in [&fl1, &fl2] {
        consumer.wait_for_version("rules", &rules);
        assert_eq!(consumer.get("/").0, 200);
    }

    dir.install("rules", &killswitch);
    for consumer in [&fl1, &fl2] {
        consumer.wait_for_version("rules", &killswitch);
    }
    for _ in 0..10 {
        let (status, body) = fl1.get("/");
        assert_eq!(status, 500);
        assert_eq!(
            body,
            format!("rules: rule r-300-managed-challenge: {FL1_ERROR}\n")
        );
        let (status, body) = fl2.get("/");
        assert_eq!(
            (status, body.as_str()),
            (200, "ok: 60 features, 4 rules run, 1 skipped\n")
        );
    }
    assert_eq!(fl1.get("/health").0, 500);
    assert_eq!(fl2.get("/health").0, 200);
    assert!(fl1.stderr().contains(FL1_ERROR), "the fault is logged");
    assert_eq!(fl1.metric("http_responses_total{status=\"500\"}"), 10.0);
    assert_eq!(fl2.metric("http_errors_total"), 0.0);
    assert_eq!(
        fl1.metric("demo_info{mode=\"safe\",generation=\"fl1\"}"),
        1.0
    );

    // The flag is reverted: fl1 serves again.
    dir.install("rules", &rules);
    fl1.wait_for_version("rules", &rules);
    assert_eq!(fl1.get("/").0, 200);
}

#[test]
fn loadgen_reports_what_the_consumers_answered() {
    let dir = DataDir::new("loadgen");
    dir.install("bot-features", &example("bot-features.json"));
    let killswitch = example("rules-killswitch.json");
    dir.install("rules", &killswitch);
    let fl1 = Consumer::start(&dir, "safe", "fl1", None);
    let fl2 = Consumer::start(&dir, "safe", "fl2", None);
    fl1.wait_for_version("rules", &killswitch);
    fl2.wait_for_version("rules", &killswitch);
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };

    let output = Command::new(BIN)
        .args(["loadgen", "--target", &fl1.url(), "--target", &fl2.url()])
        .args(["--target", &format!("http://{closed}/")])
        .args([
            "--rps",
            "150",
            "--duration",
            "1s",
            "--timeout-ms",
            "1000",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["requests_planned"], 150);
    assert_eq!(report["requests_sent"], 150);
    assert_eq!(
        report["responses_by_status"],
        serde_json::json!({"200": 50, "500": 50})
    );
    assert_eq!(report["errors"], 50, "the closed port");
    let per_target: BTreeMap<String, (u64, Value, u64)> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["target"].as_str().unwrap().to_owned(),
                (
                    t["requests_sent"].as_u64().unwrap(),
                    t["responses_by_status"].clone(),
                    t["errors"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        per_target[&fl1.url()],
        (50, serde_json::json!({"500": 50}), 0)
    );
    assert_eq!(
        per_target[&fl2.url()],
        (50, serde_json::json!({"200": 50}), 0)
    );
    assert_eq!(per_target[&format!("http://{closed}/")].2, 50);
    let p50 = report["latency_p50_ms"].as_f64().unwrap();
    let p99 = report["latency_p99_ms"].as_f64().unwrap();
    assert!(
        0.0 < p50 && p50 <= p99 && p99 < 1_000.0,
        "p50 {p50} p99 {p99}"
    );
    let elapsed_ms = report["elapsed_ms"].as_u64().unwrap();
    assert!(
        (990..5_000).contains(&elapsed_ms),
        "stops by itself: {elapsed_ms} ms"
    );
    // The consumers counted the same requests.
    assert_eq!(fl1.metric("http_requests_total"), 50.0);
    assert_eq!(fl1.metric("http_errors_total"), 50.0);
    assert_eq!(fl2.metric("http_responses_total{status=\"200\"}"), 50.0);
}

#[test]
fn loadgen_refuses_targets_off_this_machine_and_bad_durations() {
    let remote = Command::new(BIN)
        .args([
            "loadgen",
            "--target",
            "http://192.0.2.1/",
            "--rps",
            "1",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(remote.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&remote.stderr);
    assert!(stderr.contains("only loopback targets"), "{stderr}");

    let duration = Command::new(BIN)
        .args([
            "loadgen",
            "--target",
            "http://127.0.0.1:1/",
            "--duration",
            "3 weeks",
        ])
        .output()
        .unwrap();
    assert_eq!(duration.status.code(), Some(2), "a usage error");
}

#[test]
fn a_missing_units_dir_serves_the_safe_defaults() {
    let dir = DataDir::new("empty");
    let consumer = Consumer::start(&dir, "naive", "fl1", None);
    assert_eq!(
        consumer.get("/"),
        (200, "ok: 0 features, 0 rules run, 0 skipped\n".to_owned())
    );
}
