//! End-to-end tests on real processes: one `failsmall server`, 21 nodes (each a `failsmall
//! agent` and a `failsmall demo-consumer`) across 3 regions and the cohorts employee, free, pro,
//! business and enterprise, both proxy generations, some naive consumers, and a `failsmall
//! loadgen` keeping traffic on every consumer. Everything listens on loopback on ports chosen
//! by the OS (printed addresses are parsed), lives in a temporary dir, and is killed when the
//! test ends, passing or not.
//!
//! The fleet starts once and one test walks through the stories in order:
//!
//! 1. a good version of each unit goes through every stage and completes;
//! 2. nov18: the oversized feature file (server validation skipped) is refused or fails the
//!    naive consumers of the first stage only, the rollout rolls back on its own, no node
//!    outside the first stage ever had it, and safe consumers fail no request;
//! 3. dec5: the killswitch rules raise 500s on fl1 nodes of the first stage only and roll back;
//! 4. the server is SIGKILLed during a rollout: consumers keep serving, and after a restart on
//!    the same data dir the rollout ends and every agent serves the final version;
//! 5. an agent restarted with a wrong `--server-key` refuses the document, keeps its last
//!    known good and reports why;
//! 6. the first version of a new unit, rolled back, leaves every node that had it (the file
//!    is gone, each removal acknowledged);
//! 7. two units pushed at once, one good and one bad, with `exclusive_nodes`: only the bad one
//!    is rolled back;
//! 8. a consumer killed while a version is on trial is reported as a crash by its agent, and
//!    the version is rolled back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const FEATURES: &str = "bot-features";
const RULES: &str = "rules";
/// A unit no consumer reads, whose first version is rolled back.
const EXTRA: &str = "extra";
/// Every node of the first stage: both generations, naive and safe consumers.
const FIRST_STAGE_COHORT: &str = "employee";
const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// The cohort of each node, by index; the generation alternates (fl1 on even indices) and every
/// third node (index multiple of 3) runs a naive consumer.
const COHORTS: [&str; 21] = [
    "employee",
    "employee",
    "employee",
    "employee",
    "employee",
    "employee",
    "free",
    "free",
    "free",
    "free",
    "free",
    "pro",
    "pro",
    "pro",
    "business",
    "business",
    "business",
    "enterprise",
    "enterprise",
    "enterprise",
    "enterprise",
];
/// The node whose agent is restarted with a wrong server key (a safe enterprise node).
const WRONG_KEY_NODE: usize = 20;
/// An Ed25519 public key (RFC 8032, test 1) that is not the server's.
const WRONG_SERVER_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
/// The default stages (examples/plans/default.yaml) with bakes of a couple of seconds and
/// small samples.
const PLAN: &str = "name: e2e
concurrency: queue
soak: 0s
queue_limit: 16
defaults:
  bake: 2s
  timeout: 30s
  min_requests: 20
  silence: 10s
  hard_signals: { rejections: 1, crashes: 1, health_check_failures: 1, silent_nodes: 1 }
  gates:
    - error_rate > 1%
stages:
  - name: employees
    select: { cohort: employee }
  - name: free-50
    select: { cohort: free }
    percent: 50%
  - name: free
    select: { cohort: free }
  - name: pro-business
    select: { cohort: [pro, business] }
  - name: enterprise
    select: { cohort: enterprise }
";
/// Total requests per second the background load sends, over every consumer.
const LOAD_RPS: u32 = 300;
/// How long the background load lasts at most (the test ends well before).
const LOAD_DURATION: &str = "300s";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Five stages of 2 s bakes take 15–25 s; a loaded 2-core machine (debug builds, 21 agents,
/// 21 consumers and the load generator) can take several times that.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(90);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts of a node before giving up on finding a free port for its local API.
const LOCAL_API_ATTEMPTS: u32 = 5;
const POLL: Duration = Duration::from_millis(50);

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/units")
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(examples_dir().join(name)).unwrap()
}

/// Polls `check` until it gives a value, or panics with `what` after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// A child process, killed (SIGKILL) and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `failsmall args...` with stdout and stderr in `log`.
    fn spawn(name: &str, log: PathBuf, args: &[String], env: &[(&str, &str)]) -> Self {
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_failsmall"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Waits for a line of the log containing `marker` and returns what follows it, up to the
    /// first `,` or whitespace.
    fn printed_after(&mut self, marker: &str) -> String {
        let what = format!(
            "{} printing {marker:?} in {}",
            self.name,
            self.log.display()
        );
        wait_for(&what, STARTUP_TIMEOUT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{} exited with {status} before printing: {log}", self.name);
            }
            let log = std::fs::read_to_string(&self.log).ok()?;
            let rest = log.lines().find_map(|line| line.split(marker).nth(1))?;
            let value: String = rest
                .chars()
                .take_while(|c| *c != ',' && !c.is_whitespace())
                .collect();
            (!value.is_empty()).then_some(value)
        })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory, removed when dropped unless the test failed (kept for its logs).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("failsmall-e2e-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("e2e: logs and data kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free loopback port (bound, then released for a child to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The control plane's HTTP API with the admin token.
struct Api {
    base: String,
    admin: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send()?;
        let status = response.status().as_u16();
        let bytes = response.bytes()?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(body).unwrap();
        self.send(reqwest::Method::POST, path, Some(body))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// Pushes `content` to `unit`; returns the version's hash and the rollout its plan started.
    fn push(
        &self,
        unit: &str,
        content: &[u8],
        message: &str,
        skip_validation: bool,
    ) -> (String, u64) {
        let mut path = format!("/v1/units/{unit}/versions?message={message}");
        if skip_validation {
            path.push_str("&skip_validation=true");
        }
        let (status, body) = self
            .send(reqwest::Method::POST, &path, Some(content.to_vec()))
            .unwrap();
        assert!(
            (200..300).contains(&status),
            "push {message}: {status} {body}"
        );
        let hash = body["hash"].as_str().unwrap().to_owned();
        let rollout = body["rollout"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("push {message} started no rollout: {body}"));
        (hash, rollout)
    }

    fn rollout(&self, id: u64) -> Option<Value> {
        match self.send(reqwest::Method::GET, &format!("/v1/rollouts/{id}"), None) {
            Ok((200, view)) => Some(view),
            _ => None,
        }
    }

    /// Sends an operator's command (pause, rollback, ...) to rollout `id`.
    fn command(&self, id: u64, command: &str) {
        let body = json!({"command": command, "reason": "e2e"});
        let (status, body) = self.post(&format!("/v1/rollouts/{id}/commands"), &body);
        assert!(
            (200..300).contains(&status),
            "{command} {id}: {status} {body}"
        );
    }

    /// Waits until rollout `id` ends; returns its view.
    fn wait_rollout_end(&self, id: u64) -> Value {
        wait_for(&format!("rollout {id} ending"), ROLLOUT_TIMEOUT, || {
            let view = self.rollout(id)?;
            matches!(
                view["status"].as_str(),
                Some("completed" | "rolled_back" | "aborted")
            )
            .then_some(view)
        })
    }

    /// The whole changelog, oldest first: "kind reason" lines.
    fn changelog(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut cursor = 0u64;
        for _ in 0..100 {
            let (status, page) = self.get(&format!("/v1/changelog?limit=1000&cursor={cursor}"));
            assert_eq!(status, 200, "{page}");
            for entry in page["entries"].as_array().cloned().unwrap_or_default() {
                lines.push(format!(
                    "{} {}",
                    entry["kind"].as_str().unwrap_or_default(),
                    entry["reason"].as_str().unwrap_or_default()
                ));
            }
            match page["next_cursor"].as_u64() {
                Some(next) => cursor = next,
                None => return lines,
            }
        }
        panic!("the changelog has more than 100 pages");
    }
}

/// One node: its labels, its agent and its consumer.
struct Node {
    id: String,
    cohort: &'static str,
    region: &'static str,
    fl1: bool,
    naive: bool,
    data_dir: PathBuf,
    token: String,
    local_api_port: u16,
    consumer_url: String,
    agent: Option<Proc>,
    _consumer: Proc,
}

impl Node {
    fn first_stage(&self) -> bool {
        self.cohort == FIRST_STAGE_COHORT
    }

    fn local_api(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_api_port)
    }

    fn start_agent(&mut self, dir: &Path, server: &str, server_key: Option<&str>, run: u32) {
        let labels = format!(
            "cohort={},region={},generation={}",
            self.cohort,
            self.region,
            if self.fl1 { "fl1" } else { "fl2" }
        );
        let mut args: Vec<String> = [
            "agent",
            "--server",
            server,
            "--labels",
            &labels,
            "--node-id",
            &self.id,
            "--consumer-url",
            &self.consumer_url,
            "--metrics-url",
            &format!("{}/metrics", self.consumer_url),
            "--local-api",
            &format!("127.0.0.1:{}", self.local_api_port),
            "--health-interval-ms",
            "250",
            "--watch-wait-ms",
            "2000",
            "--backoff-max-ms",
            "300",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push("--data-dir".to_owned());
        args.push(self.data_dir.display().to_string());
        if let Some(key) = server_key {
            args.push("--server-key".to_owned());
            args.push(key.to_owned());
        }
        let log = dir.join(format!("agent-{}-{run}.log", self.id));
        self.agent = Some(Proc::spawn(
            &format!("agent {}", self.id),
            log,
            &args,
            &[("FAILSMALL_TOKEN", &self.token)],
        ));
    }

    /// Waits until the agent's local API listens; false when the agent exited first.
    fn agent_up(&mut self) -> bool {
        let Some(agent) = self.agent.as_mut() else {
            return false;
        };
        let what = format!("agent {} starting its local API", self.id);
        wait_for(&what, STARTUP_TIMEOUT, || {
            let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
            if log.contains("local API on http://") {
                return Some(true);
            }
            agent.child.try_wait().unwrap().map(|_| false)
        })
    }

    /// The agent's status from its local API.
    fn status(&self, http: &reqwest::blocking::Client) -> Option<Value> {
        let response = http
            .get(format!("{}/v1/status", self.local_api()))
            .send()
            .ok()?;
        response.json().ok()
    }

    /// The consumer's counters: (requests, 5xx errors).
    fn counters(&self, http: &reqwest::blocking::Client) -> (u64, u64) {
        let text = http
            .get(format!("{}/metrics", self.consumer_url))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("node {} consumer metrics: {e}", self.id));
        let read = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("node {}: no {name} in {text}", self.id))
        };
        (read("http_requests_total "), read("http_errors_total "))
    }

    /// The version files the agent holds for `unit` (`DIR/units/<unit>/versions/<hash>`).
    fn stored_versions(&self, unit: &str) -> BTreeSet<String> {
        let dir = self.data_dir.join("units").join(unit).join("versions");
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every hash each node's agent was seen with (active or desired), per unit.
type Seen = BTreeMap<String, BTreeSet<(String, String)>>;

/// Samples every agent's local status every 100 ms until stopped.
struct Sampler {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(nodes: &[(String, String)]) -> Self {
        let seen = Arc::new(Mutex::new(Seen::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let nodes = nodes.to_vec();
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_millis(500))
                    .build()
                    .unwrap();
                // Bounded: at most an hour of samples.
                for _ in 0..36_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    for (id, local_api) in &nodes {
                        let Ok(response) = http.get(format!("{local_api}/v1/status")).send() else {
                            continue;
                        };
                        let Ok(status) = response.json::<Value>() else {
                            continue;
                        };
                        let mut seen = seen.lock().unwrap();
                        let entry = seen.entry(id.clone()).or_default();
                        for (unit, unit_status) in
                            status["units"].as_object().cloned().unwrap_or_default()
                        {
                            for field in ["active", "desired", "good"] {
                                if let Some(hash) = unit_status[field].as_str() {
                                    entry.insert((unit.clone(), hash.to_owned()));
                                }
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn saw(&self, node: &str, unit: &str, hash: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .get(node)
            .is_some_and(|set| set.contains(&(unit.to_owned(), hash.to_owned())))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Fleet {
    dir: PathBuf,
    server: Proc,
    server_address: String,
    api: Api,
    nodes: Vec<Node>,
    http: reqwest::blocking::Client,
}

impl Fleet {
    fn start_server(dir: &Path, listen: &str, run: u32) -> (Proc, String) {
        let args: Vec<String> = [
            "server",
            "--codex",
            "off",
            "--data-dir",
            &dir.join("server").display().to_string(),
            "--listen",
            listen,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut server = Proc::spawn("server", dir.join(format!("server-{run}.log")), &args, &[]);
        let address = server.printed_after("listening on http://");
        (server, address)
    }

    fn start(dir: &Path) -> Self {
        let (server, server_address) = Self::start_server(dir, "127.0.0.1:0", 0);
        let http = http();
        let base = format!("http://{server_address}");
        let admin = wait_for("the admin token", STARTUP_TIMEOUT, || {
            let token = std::fs::read_to_string(dir.join("server/admin.token")).ok()?;
            let token = token.trim().to_owned();
            (!token.is_empty()).then_some(token)
        });
        let api = Api {
            base: base.clone(),
            admin,
            http: http.clone(),
        };
        wait_for("the server answering /healthz", STARTUP_TIMEOUT, || {
            matches!(
                api.send(reqwest::Method::GET, "/healthz", None),
                Ok((200, _))
            )
            .then_some(())
        });
        let feature_spec = json!({
            "format": "json",
            "max_bytes": 65536,
            "max_entries": [{"path": "/features", "max": 200}],
        });
        let rules_spec = json!({"format": "json", "max_bytes": 4096});
        for (unit, spec) in [(FEATURES, feature_spec), (RULES, rules_spec)] {
            let body = json!({"name": unit, "spec": spec, "plan": PLAN, "owner": "edge"});
            let (status, body) = api.post("/v1/units", &body);
            assert_eq!(status, 201, "creating unit {unit}: {body}");
        }

        let mut nodes = Vec::with_capacity(COHORTS.len());
        for (index, cohort) in COHORTS.iter().enumerate() {
            let id = format!("n{index:02}-{cohort}");
            let (fl1, naive) = (index % 2 == 0, index % 3 == 0);
            let body = json!({"name": format!("agent-{id}"), "role": "agent", "node": id});
            let (status, body) = api.post("/v1/tokens", &body);
            assert_eq!(status, 201, "agent token for {id}: {body}");
            let token = body["token"].as_str().unwrap().to_owned();
            let data_dir = dir.join(&id);
            std::fs::create_dir_all(&data_dir).unwrap();
            // The local API's port is picked before the agent binds it, so another process
            // may take it first: the agent then exits, and the node starts again on another.
            let mut started = None;
            for attempt in 0..LOCAL_API_ATTEMPTS {
                let local_api_port = free_port();
                let mut args: Vec<String> = [
                    "demo-consumer",
                    "--mode",
                    if naive { "naive" } else { "safe" },
                    "--generation",
                    if fl1 { "fl1" } else { "fl2" },
                    "--listen",
                    "127.0.0.1:0",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
                args.push("--units-dir".to_owned());
                args.push(data_dir.display().to_string());
                if !naive {
                    args.push("--reject-url".to_owned());
                    args.push(format!(
                        "http://127.0.0.1:{local_api_port}/v1/units/{{unit}}/rejections"
                    ));
                }
                let log = dir.join(format!("consumer-{id}-{attempt}.log"));
                let mut consumer = Proc::spawn(&format!("consumer {id}"), log, &args, &[]);
                let address = consumer.printed_after("listening on http://");
                let mut node = Node {
                    id: id.clone(),
                    cohort,
                    region: REGIONS[index % 3],
                    fl1,
                    naive,
                    data_dir: data_dir.clone(),
                    token: token.clone(),
                    local_api_port,
                    consumer_url: format!("http://{address}"),
                    agent: None,
                    _consumer: consumer,
                };
                node.start_agent(dir, &base, None, attempt);
                if node.agent_up() {
                    started = Some(node);
                    break;
                }
            }
            let node = started.unwrap_or_else(|| {
                panic!("node {id}: no agent started in {LOCAL_API_ATTEMPTS} attempts")
            });
            nodes.push(node);
        }
        let fleet = Self {
            dir: dir.to_owned(),
            server,
            server_address,
            api,
            nodes,
            http,
        };
        wait_for("every node registered", STARTUP_TIMEOUT, || {
            let (_, body) = fleet.api.get("/v1/nodes");
            let known: BTreeSet<String> = body["nodes"]
                .as_array()?
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect();
            fleet
                .nodes
                .iter()
                .all(|n| known.contains(&n.id))
                .then_some(())
        });
        fleet
    }

    fn consumer_targets(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("{}/", n.consumer_url))
            .collect()
    }

    fn loadgen(&self, name: &str, rps: u32, duration: &str) -> Proc {
        let mut args = vec!["loadgen".to_owned()];
        for target in self.consumer_targets() {
            args.push("--target".to_owned());
            args.push(target);
        }
        for arg in [
            "--rps",
            &rps.to_string(),
            "--duration",
            duration,
            "--timeout-ms",
            "2000",
            "-o",
            "json",
        ] {
            args.push(arg.to_owned());
        }
        Proc::spawn(name, self.dir.join(format!("{name}.log")), &args, &[])
    }

    /// Every consumer's counters, by node index.
    fn counters(&self) -> Vec<(u64, u64)> {
        self.nodes.iter().map(|n| n.counters(&self.http)).collect()
    }

    /// Waits until every agent reports `hash` of `unit` as both desired and served.
    fn wait_converged(&self, unit: &str, hash: &str) {
        let what = format!("every agent desiring and serving {unit} {hash}");
        wait_for(&what, CONVERGE_TIMEOUT, || {
            self.nodes
                .iter()
                .all(|n| {
                    n.status(&self.http).is_some_and(|status| {
                        let unit_status = &status["units"][unit];
                        unit_status["active"] == hash && unit_status["desired"] == hash
                    })
                })
                .then_some(())
        });
    }

    /// Waits until every consumer has answered at least `more` requests since `before`.
    fn wait_traffic(&self, before: &[(u64, u64)], more: u64) {
        wait_for("traffic on every consumer", CONVERGE_TIMEOUT, || {
            self.counters()
                .iter()
                .zip(before)
                .all(|(now, then)| now.0 >= then.0 + more)
                .then_some(())
        });
    }
}

/// The good feature file with one weight changed: a new, valid version.
fn features_variant(weight: f64) -> Vec<u8> {
    let mut file: Value = serde_json::from_slice(&example("bot-features.json")).unwrap();
    file["features"][0]["weight"] = json!(weight);
    serde_json::to_vec_pretty(&file).unwrap()
}

/// Errors each node's consumer answered between two counter snapshots.
fn new_errors(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<u64> {
    before
        .iter()
        .zip(after)
        .map(|(then, now)| now.1.saturating_sub(then.1))
        .collect()
}

#[test]
fn fleet_of_real_processes_releases_good_versions_and_contains_bad_ones() {
    let started = Instant::now();
    let temp = TempDir::new();
    let dir = temp.0.clone();
    let mut fleet = Fleet::start(&dir);
    let _load = fleet.loadgen("load", LOAD_RPS, LOAD_DURATION);
    let sampler = Sampler::start(
        &fleet
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.local_api()))
            .collect::<Vec<_>>(),
    );
    let zero = vec![(0, 0); fleet.nodes.len()];
    fleet.wait_traffic(&zero, 5);
    println!(
        "e2e: fleet of {} nodes up in {:?}",
        fleet.nodes.len(),
        started.elapsed()
    );

    // 1. Good versions of both units go through every stage and complete.
    let (good_features, features_rollout) = fleet.api.push(
        FEATURES,
        &example("bot-features.json"),
        "good-features",
        false,
    );
    let (good_rules, rules_rollout) =
        fleet
            .api
            .push(RULES, &example("rules.json"), "good-rules", false);
    for id in [features_rollout, rules_rollout] {
        let view = fleet.api.wait_rollout_end(id);
        assert_eq!(view["status"], "completed", "rollout {id}: {view}");
        assert_eq!(
            view["stage_index"], 4,
            "rollout {id} ran every stage: {view}"
        );
    }
    fleet.wait_converged(FEATURES, &good_features);
    fleet.wait_converged(RULES, &good_rules);
    let log = fleet.api.changelog();
    for stage in ["employees", "free-50", "free", "pro-business", "enterprise"] {
        assert!(
            log.iter()
                .any(|l| l.starts_with("stage_passed") && l.contains(stage)),
            "stage {stage} never passed: {log:#?}"
        );
    }
    println!("e2e: good versions completed at {:?}", started.elapsed());

    // 2. nov18: the oversized feature file, server validation skipped.
    let before = fleet.counters();
    let (bad_features, nov18_rollout) = fleet.api.push(
        FEATURES,
        &example("bot-features-oversized.json"),
        "nov18",
        true,
    );
    let view = fleet.api.wait_rollout_end(nov18_rollout);
    assert_eq!(view["status"], "rolled_back", "nov18: {view}");
    assert_eq!(
        view["stage_index"], 0,
        "nov18 went past the first stage: {view}"
    );
    fleet.wait_converged(FEATURES, &good_features);
    let errors = new_errors(&before, &fleet.counters());
    let log = fleet.api.changelog();
    let mut exposed = 0;
    for (node, errors) in fleet.nodes.iter().zip(&errors) {
        let had_it = sampler.saw(&node.id, FEATURES, &bad_features)
            || node.stored_versions(FEATURES).contains(&bad_features);
        if node.first_stage() {
            exposed += usize::from(had_it);
        } else {
            assert!(!had_it, "nov18 reached {} outside the first stage", node.id);
            assert_eq!(*errors, 0, "node {} failed requests during nov18", node.id);
        }
        if !node.naive {
            assert_eq!(
                *errors, 0,
                "safe consumer {} failed requests during nov18",
                node.id
            );
        }
    }
    assert!(
        exposed > 0,
        "no first-stage node ever had nov18: the check saw nothing"
    );
    let naive_failed = fleet
        .nodes
        .iter()
        .zip(&errors)
        .any(|(node, errors)| node.naive && node.first_stage() && *errors > 0);
    let refused = log.iter().any(|l| {
        let l = l.to_lowercase();
        l.contains("reject") || l.contains("nack")
    });
    assert!(
        naive_failed || refused,
        "nov18 rolled back, but neither a refusal nor a failed naive consumer explains it: {log:#?}"
    );
    println!(
        "e2e: nov18 rolled back at {:?}, errors by node {errors:?}, changelog: {:#?}",
        started.elapsed(),
        log.iter()
            .filter(|l| l.contains(&bad_features[..12]) || l.contains("nov18"))
            .collect::<Vec<_>>()
    );

    // 3. dec5: the killswitch fails fl1 nodes of the first stage only, and rolls back.
    let before = fleet.counters();
    let (killswitch, dec5_rollout) =
        fleet
            .api
            .push(RULES, &example("rules-killswitch.json"), "dec5", false);
    let view = fleet.api.wait_rollout_end(dec5_rollout);
    assert_eq!(view["status"], "rolled_back", "dec5: {view}");
    assert_eq!(
        view["stage_index"], 0,
        "dec5 went past the first stage: {view}"
    );
    fleet.wait_converged(RULES, &good_rules);
    let errors = new_errors(&before, &fleet.counters());
    for (node, errors) in fleet.nodes.iter().zip(&errors) {
        if !(node.first_stage() && node.fl1) {
            assert_eq!(*errors, 0, "node {} failed requests during dec5", node.id);
        }
        if !node.first_stage() {
            assert!(
                !sampler.saw(&node.id, RULES, &killswitch),
                "dec5 reached {} outside the first stage",
                node.id
            );
        }
    }
    let fl1_failed = fleet
        .nodes
        .iter()
        .zip(&errors)
        .filter(|(node, errors)| node.first_stage() && node.fl1 && **errors > 0)
        .count();
    assert!(
        fl1_failed > 0,
        "dec5 raised no 500 on fl1 nodes: {errors:?}"
    );
    println!(
        "e2e: dec5 rolled back at {:?}, errors by node {errors:?}",
        started.elapsed()
    );

    // 4. The server is SIGKILLed during a rollout; consumers keep serving.
    let v2 = features_variant(0.5);
    let (v2_hash, v2_rollout) = fleet.api.push(FEATURES, &v2, "v2", false);
    let at_kill = wait_for(
        "the v2 rollout past its first stage",
        ROLLOUT_TIMEOUT,
        || {
            let view = fleet.api.rollout(v2_rollout)?;
            (view["stage_index"].as_u64()? >= 1 || view["status"] != "running").then_some(view)
        },
    );
    fleet.server.kill();
    assert_eq!(
        at_kill["status"], "running",
        "v2 ended before the kill: {at_kill}"
    );
    println!(
        "e2e: server killed at {:?}, v2 at stage {}",
        started.elapsed(),
        at_kill["stage_index"]
    );
    let before = fleet.counters();
    let mut outage_load = fleet.loadgen("outage-load", 100, "3s");
    let exit = wait_for("the outage load ending", Duration::from_secs(30), || {
        outage_load.child.try_wait().unwrap()
    });
    assert!(exit.success(), "loadgen during the outage: {exit}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&outage_load.log).unwrap()).unwrap();
    assert!(report["requests_sent"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["errors"], 0,
        "requests failed while the server was down: {report}"
    );
    let errors = new_errors(&before, &fleet.counters());
    assert!(
        errors.iter().all(|e| *e == 0),
        "consumers failed requests while the server was down: {errors:?}"
    );
    // Restart on the same data dir and address (the agents know only that one).
    let listen = fleet.server_address.clone();
    let mut run = 1;
    let restarted = wait_for("the server restarting", STARTUP_TIMEOUT, || {
        run += 1;
        let args = vec![
            "server".to_owned(),
            "--codex".to_owned(),
            "off".to_owned(),
            "--data-dir".to_owned(),
            dir.join("server").display().to_string(),
            "--listen".to_owned(),
            listen.clone(),
        ];
        let mut server = Proc::spawn("server", dir.join(format!("server-{run}.log")), &args, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            if log.contains("listening on http://") {
                return Some(server);
            }
            if server.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                server.kill();
                return None;
            }
            std::thread::sleep(POLL);
        }
    });
    fleet.server = restarted;
    println!("e2e: server restarted at {:?}", started.elapsed());
    let view = fleet.api.wait_rollout_end(v2_rollout);
    let final_features = match view["status"].as_str() {
        Some("completed") => v2_hash.clone(),
        Some("rolled_back") => good_features.clone(),
        _ => panic!("v2 after the restart: {view}"),
    };
    fleet.wait_converged(FEATURES, &final_features);
    fleet.wait_converged(RULES, &good_rules);
    println!(
        "e2e: v2 {} after the restart, fleet converged at {:?}",
        view["status"],
        started.elapsed()
    );

    // 5. An agent given a wrong server key refuses the document and keeps its last known good.
    let node = &mut fleet.nodes[WRONG_KEY_NODE];
    // The final version becomes the node's last known good once the node hears it is stable
    // (a document after the rollout completed); wait for that before cutting it off.
    wait_for(
        "the final version as last known good",
        STARTUP_TIMEOUT,
        || {
            let status = node.status(&fleet.http)?;
            (status["units"][FEATURES]["good"] == final_features).then_some(())
        },
    );
    let current_path = node.data_dir.join("units").join(FEATURES).join("current");
    let current_before = std::fs::read(&current_path).unwrap();
    if let Some(mut agent) = node.agent.take() {
        agent.kill();
    }
    node.start_agent(
        &dir,
        &fleet.api.base,
        Some(WRONG_SERVER_KEY),
        LOCAL_API_ATTEMPTS,
    );
    assert!(node.agent_up(), "the wrong-key agent did not start");
    let status = wait_for("the wrong-key agent refusing", STARTUP_TIMEOUT, || {
        let status = node.status(&fleet.http)?;
        let refused = status["refusals"]
            .as_array()?
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("signature")));
        refused.then_some(status)
    });
    assert_eq!(
        status["units"][FEATURES]["active"], final_features,
        "the wrong-key agent dropped its last known good: {status}"
    );
    assert_eq!(
        status["units"][FEATURES]["good"], final_features,
        "{status}"
    );
    assert_eq!(std::fs::read(&current_path).unwrap(), current_before);
    let answer = fleet
        .http
        .get(format!("{}/", node.consumer_url))
        .send()
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        200,
        "the wrong-key node stopped serving"
    );
    // The refusal is reported once, not once per document.
    let untrusted = wait_for("the wrong-key node's report", CONVERGE_TIMEOUT, || {
        let lines: Vec<String> = fleet
            .api
            .changelog()
            .into_iter()
            .filter(|line| line.starts_with("node_untrusted") && line.contains(&node.id))
            .collect();
        (!lines.is_empty()).then_some(lines)
    });
    assert_eq!(untrusted.len(), 1, "{untrusted:#?}");
    // Given the right key again, the node trusts the server and serves on.
    let (status, key) = fleet.api.get("/v1/signing-key");
    assert_eq!(status, 200, "{key}");
    let right_key = key["public_key"].as_str().unwrap().to_owned();
    if let Some(mut agent) = node.agent.take() {
        agent.kill();
    }
    node.start_agent(
        &dir,
        &fleet.api.base,
        Some(&right_key),
        LOCAL_API_ATTEMPTS + 1,
    );
    assert!(
        node.agent_up(),
        "the agent did not start again with the right key"
    );
    wait_for(
        "the node trusting the server again",
        CONVERGE_TIMEOUT,
        || {
            node.status(&fleet.http)
                .is_some_and(|status| {
                    status["connected"] == true && status["seq"].as_u64() > Some(0)
                })
                .then_some(())
        },
    );

    // 6. The first version of a new unit, rolled back, leaves every node that had it: the
    //    file consumers read is gone and each agent acknowledges the removal.
    let spec = json!({"format": "json", "max_bytes": 4096});
    let body = json!({"name": EXTRA, "spec": spec, "plan": PLAN, "owner": "edge"});
    let (status, body) = fleet.api.post("/v1/units", &body);
    assert_eq!(status, 201, "creating unit {EXTRA}: {body}");
    let (extra_hash, extra_rollout) = fleet.api.push(EXTRA, b"{\"limit\": 1}", "extra-v1", false);
    fleet.api.command(extra_rollout, "pause");
    let first_stage: Vec<usize> = (0..fleet.nodes.len())
        .filter(|&i| fleet.nodes[i].first_stage())
        .collect();
    wait_for("the first stage applying extra", ROLLOUT_TIMEOUT, || {
        first_stage
            .iter()
            .all(|&i| {
                fleet.nodes[i]
                    .status(&fleet.http)
                    .is_some_and(|s| s["units"][EXTRA]["active"] == extra_hash.as_str())
            })
            .then_some(())
    });
    fleet.api.command(extra_rollout, "rollback");
    let view = fleet.api.wait_rollout_end(extra_rollout);
    assert_eq!(view["status"], "rolled_back", "{view}");
    wait_for(
        "every first-stage node removing extra",
        CONVERGE_TIMEOUT,
        || {
            first_stage
                .iter()
                .all(|&i| {
                    let node = &fleet.nodes[i];
                    let gone = !node
                        .data_dir
                        .join("units")
                        .join(EXTRA)
                        .join("current")
                        .exists();
                    gone && node
                        .status(&fleet.http)
                        .is_some_and(|s| s["units"][EXTRA]["active"].is_null())
                })
                .then_some(())
        },
    );
    wait_for("every removal acknowledged", CONVERGE_TIMEOUT, || {
        let removals = fleet
            .api
            .changelog()
            .iter()
            .filter(|line| line.starts_with("node_removed_unit"))
            .count();
        (removals == first_stage.len()).then_some(())
    });
    println!(
        "e2e: a rolled-back first version left the nodes at {:?}",
        started.elapsed()
    );

    // 7. Two units pushed at the same moment on the same nodes, one good (a features
    //    variant) and one bad (another killswitch: 500s on fl1): with `exclusive_nodes`, a node
    //    runs one change at a time, and only the bad version is rolled back.
    let exclusive_plan = PLAN.replace("soak: 0s\n", "soak: 0s\nexclusive_nodes: true\n");
    for unit in [FEATURES, RULES] {
        let (status, record) = fleet.api.get(&format!("/v1/units/{unit}"));
        assert_eq!(status, 200, "{record}");
        let body = json!({
            "revision": record["revision"], "spec": record["spec"], "owner": record["owner"],
            "description": record["description"], "plan": exclusive_plan,
        });
        let (status, body) = fleet
            .api
            .send(
                reqwest::Method::PUT,
                &format!("/v1/units/{unit}"),
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .unwrap();
        assert_eq!(status, 200, "updating {unit}'s plan: {body}");
    }
    let mut killswitch_again: Value =
        serde_json::from_slice(&example("rules-killswitch.json")).unwrap();
    killswitch_again["note"] = json!("the same killswitch, pushed again by another team");
    let (good_hash, good_rollout) = fleet.api.push(
        FEATURES,
        &features_variant(0.61),
        "features-together",
        false,
    );
    let (bad_hash, bad_rollout) = fleet.api.push(
        RULES,
        &serde_json::to_vec_pretty(&killswitch_again).unwrap(),
        "rules-together",
        false,
    );
    let good_view = fleet.api.wait_rollout_end(good_rollout);
    let bad_view = fleet.api.wait_rollout_end(bad_rollout);
    assert_eq!(bad_view["status"], "rolled_back", "{bad_view}");
    assert_eq!(
        good_view["status"], "completed",
        "the good version was blamed for the other unit's failure: {good_view}"
    );
    fleet.wait_converged(FEATURES, &good_hash);
    assert!(
        !fleet
            .api
            .changelog()
            .iter()
            .any(|line| line.starts_with("quarantined") && line.contains(&good_hash[..12])),
        "the good version was quarantined"
    );
    println!(
        "e2e: two units at once, only the bad one ({}) rolled back at {:?}",
        &bad_hash[..12],
        started.elapsed()
    );

    // 8. A consumer that dies while a version is on trial is reported by its agent at once
    //    (its metrics endpoint refuses connections), and the version is rolled back.
    let (trial_hash, trial_rollout) =
        fleet
            .api
            .push(FEATURES, &features_variant(0.77), "features-trial", false);
    fleet.api.command(trial_rollout, "pause");
    let victim = first_stage[1];
    wait_for(
        "the victim applying the trial version",
        ROLLOUT_TIMEOUT,
        || {
            fleet.nodes[victim]
                .status(&fleet.http)
                .is_some_and(|s| s["units"][FEATURES]["active"] == trial_hash.as_str())
                .then_some(())
        },
    );
    fleet.nodes[victim]._consumer.kill();
    let view = fleet.api.wait_rollout_end(trial_rollout);
    assert_eq!(view["status"], "rolled_back", "{view}");
    assert!(
        view["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("consumer crashes")),
        "{view}"
    );
    let victim_id = fleet.nodes[victim].id.clone();
    assert!(
        fleet
            .api
            .changelog()
            .iter()
            .any(|line| line.starts_with("node_crashed") && line.contains(&victim_id)),
        "no crash of {victim_id} in the changelog"
    );
    println!(
        "e2e: a dead consumer rolled its trial version back at {:?}",
        started.elapsed()
    );
    println!("e2e: done in {:?}", started.elapsed());
    drop(sampler);
}
