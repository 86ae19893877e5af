//! The control plane's speed targets, measured on a real server over loopback HTTP:
//!
//! 1. push of a 64 KiB version (validate + store + sign): p99 ≤ 20 ms;
//! 2. 1,000 connected watchers (long polls) receive a new desired state within 1 s;
//! 3. 10,000 health reports per second ingested (run the whole bench on one core:
//!    `taskset -c 0 cargo bench -p failsmall-server --bench control_plane`);
//! 4. (`fleet`) 2,000 nodes each sending single reports at once, as agents do every interval;
//! 5. (`state`) the engine state of 10,000 nodes: its size, the time to copy, serialize and
//!    save it as a snapshot (every `SNAPSHOT_EVERY_STEPS` steps, off the request path), and
//!    the commit of one step's log row.
//!
//! 6. (`scale`) one registration and one health report, each its own step, with 1,000 and
//!    with 50,000 nodes: the same cost (the step is in place and logs only its events);
//! 7. (`fleet20k`) 20,000 nodes register over HTTP, [`FLEET_IN_FLIGHT`] at once (wall
//!    time), then single-report requests/s; again, then batched reports/s (batches of 100).
//!
//! The report benches (`reports`, `fleet`, `fleet20k`) run a simulated fleet: every node holds
//! its own connection (see `support/fleet.rs`), [`FLEET_IN_FLIGHT`] requests at once; a request
//! not answered 2xx is counted by kind, and the bench fails when the failures exceed
//! [`FLEET_FAILURES_ALLOWED`] (none).
//!
//! Numbers are printed as medians (and p99 / max where the target is a tail). Arguments:
//! `push`, `watch`, `reports`, `fleet`, `state`, `scale`, `fleet20k` pick sections (default:
//! all).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use failsmall_core::domain::{Labels, NodeId, UnitName, VersionHash};
use failsmall_core::engine::{Engine, Event};
use failsmall_core::plan::Plan;
use failsmall_server::rollouts::{Cause, EngineHost};
use failsmall_server::store::{EngineStep, Store};
use failsmall_server::{ServerConfig, run};
use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::sync::oneshot;

#[path = "support/fleet.rs"]
mod fleet;

/// The allocator of the `failsmall` binary (crates/cli/src/main.rs): the server measured here
/// allocates as the one shipped.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PUSHES: usize = 300;
const WATCHERS: usize = 1000;
const WATCH_ROUNDS: usize = 5;
const REPORT_NODES: usize = 100;
const REPORTS_PER_BATCH: usize = 100;
const REPORT_BATCHES_PER_NODE: usize = 20;
const STATE_NODES: usize = 10_000;
const FLEET_NODES: usize = 2_000;
const FLEET_REPORTS_PER_NODE: usize = 5;
const SCALE_FLEETS: [usize; 2] = [1_000, 50_000];
const SCALE_SAMPLES: usize = 200;
const BIG_FLEET_NODES: usize = 20_000;
/// Report and registration requests in flight at once in the fleet benches: nodes that send
/// at the same instant (under the server's `MAX_WAITING_REQUESTS` for reports).
const FLEET_IN_FLIGHT: usize = 1_000;
/// Requests of a fleet bench that may fail (any status but 2xx, a transport error, no answer
/// in time) or reports the canary may miss before the bench fails: none. The server has room
/// for every node's connection and every waiting request.
const FLEET_FAILURES_ALLOWED: u64 = 0;
/// Longest one phase of a fleet bench (registration, acknowledgements, health reports) runs;
/// then it stops, and what was not sent counts as failed.
const FLEET_PHASE_DEADLINE: Duration = Duration::from_secs(300);

struct Bench {
    address: SocketAddr,
    base: String,
    admin: String,
    client: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), failsmall_server::ServerError>>,
    /// The server's data dir, removed when the bench is dropped.
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn start(name: &str) -> Self {
        Self::start_with(name, failsmall_server::serve::MAX_CONNECTIONS_DEFAULT).await
    }

    /// A server with room for `max_connections` connections.
    async fn start_with(name: &str, max_connections: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("failsmall-bench-{name}-"))
            .tempdir()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut config = ServerConfig::new(dir.path(), address);
        config.connections.max_connections = max_connections;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config.clone(), listener, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(2 * WATCHERS)
            .build()
            .unwrap();
        let base = format!("http://{address}");
        client.get(format!("{base}/healthz")).send().await.unwrap();
        let admin = std::fs::read_to_string(config.admin_token_path())
            .unwrap()
            .trim()
            .to_owned();
        Self {
            address,
            base,
            admin,
            client,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    async fn create_unit(&self, name: &str, spec: Value) {
        self.call(
            reqwest::Method::POST,
            "/v1/units",
            Some(json!({"name": name, "spec": spec})),
        )
        .await;
    }

    async fn push(&self, unit: &str, content: Vec<u8>) -> (Duration, String) {
        let started = Instant::now();
        let response = self
            .client
            .post(format!(
                "{}/v1/units/{unit}/versions?message=bench",
                self.base
            ))
            .bearer_auth(&self.admin)
            .body(content)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap();
        let took = started.elapsed();
        assert!(status.is_success(), "push: {status} {value}");
        (took, value["hash"].as_str().unwrap().to_owned())
    }

    async fn register(&self, node: &str, labels: Value) {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{node}"),
            Some(json!({ "labels": labels })),
        )
        .await;
    }

    async fn start_rollout(&self, unit: &str, version: &str, plan: &str) {
        self.call(
            reqwest::Method::POST,
            "/v1/rollouts",
            Some(json!({"unit": unit, "version": version, "plan": plan})),
        )
        .await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "median {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        samples.len()
    )
}

/// A JSON feature file of about `bytes` bytes, distinct per `seed`.
fn feature_file(bytes: usize, seed: usize) -> Vec<u8> {
    let mut features = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < bytes.saturating_sub(64) {
        let feature =
            json!({"name": format!("feature-{seed}-{i}"), "weight": i % 97, "enabled": i % 3 == 0});
        size += feature.to_string().len() + 1;
        features.push(feature);
        i += 1;
    }
    serde_json::to_vec(&json!({ "features": features })).unwrap()
}

async fn bench_push() {
    let bench = Bench::start("push").await;
    let spec = json!({
        "format": "json",
        "max_bytes": 128 * 1024,
        "max_entries": [{"path": "/features", "max": 10_000}],
        "unique_entries": [{"path": "/features", "key": "name"}],
        "schema": {"type": "object", "required": ["features"],
            "properties": {"features": {"type": "array", "items": {"type": "object", "required": ["name"]}}}}
    });
    bench.create_unit("features", spec).await;
    let files: Vec<Vec<u8>> = (0..PUSHES).map(|i| feature_file(64 * 1024, i)).collect();
    let size = files[0].len();
    let mut took = Vec::new();
    for file in files {
        took.push(bench.push("features", file).await.0);
    }
    println!(
        "push of a {size}-byte JSON version (validate + store + sign, over HTTP): {}",
        summary(took)
    );
    bench.stop().await;
}

async fn bench_watch() {
    let bench = Arc::new(Bench::start("watch").await);
    let plan = "name: all\nstages:\n  - name: everyone\n    bake: 1h\n    gates: []\n";
    for node in 0..WATCHERS {
        bench
            .register(&format!("w{node}"), json!({"cohort": "free"}))
            .await;
    }
    let mut rounds = Vec::new();
    for round in 0..WATCH_ROUNDS {
        let unit = format!("u{round}");
        bench
            .create_unit(&unit, json!({"format": "raw", "max_bytes": 64}))
            .await;
        let (_, version) = bench.push(&unit, format!("v{round}").into_bytes()).await;
        // Every watcher is connected and waiting past the current sequence number.
        let (_, body) = {
            let value = bench
                .call(reqwest::Method::GET, "/v1/nodes/w0/desired", None)
                .await;
            ((), value)
        };
        let seq = body["seq"].as_u64().unwrap();
        let mut watchers = Vec::new();
        for node in 0..WATCHERS {
            let bench = Arc::clone(&bench);
            let (unit, version) = (unit.clone(), version.clone());
            watchers.push(tokio::spawn(async move {
                let mut after = seq;
                loop {
                    let path = format!("/v1/nodes/w{node}/desired?after={after}&wait_ms=30000");
                    let body = bench.call(reqwest::Method::GET, &path, None).await;
                    let document: Value =
                        serde_json::from_str(body["document"].as_str().unwrap()).unwrap();
                    if document["units"][&unit] == version.as_str() {
                        return Instant::now();
                    }
                    after = document["seq"].as_u64().unwrap();
                }
            }));
        }
        // Let every long poll reach the server before the change.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let started = Instant::now();
        bench.start_rollout(&unit, &version, plan).await;
        let mut delays = Vec::new();
        for watcher in watchers {
            delays.push(watcher.await.unwrap().saturating_duration_since(started));
        }
        delays.sort();
        let last = delays.last().copied().unwrap_or_default();
        println!(
            "round {round}: {WATCHERS} watchers got the new desired state: {}",
            summary(delays)
        );
        rounds.push(last);
    }
    println!(
        "{WATCHERS} watchers, time until the last one had the new desired state: {}",
        summary(rounds)
    );
    match Arc::try_unwrap(bench) {
        Ok(bench) => bench.stop().await,
        Err(_) => panic!("watchers still hold the bench"),
    }
}

/// Registers a fleet of `nodes` (each its own connection, [`FLEET_IN_FLIGHT`] requests at
/// once), starts a rollout over it, and has every node send `batches_per_node` requests of
/// `per_batch` health reports (one report as itself, more as a batch). Prints each phase's
/// wall time, rate, answer times and failures; returns the failures (requests not answered
/// 2xx, and reports the rollout's canary did not count).
async fn bench_reports(
    client: tokio::runtime::Handle,
    nodes: usize,
    per_batch: usize,
    batches_per_node: usize,
) -> u64 {
    let (connections, open_files) = fleet::connections_that_fit(nodes);
    if connections == 0 {
        println!("fleet of {nodes}: not run: the open-file limit {open_files} leaves no room");
        return 1;
    }
    let max_connections = connections + usize::try_from(fleet::OPEN_FILES_SPARE).unwrap();
    let bench = Bench::start_with("reports", max_connections).await;
    bench
        .create_unit("flags", json!({"format": "raw", "max_bytes": 64}))
        .await;
    let (_, version) = bench.push("flags", b"on".to_vec()).await;
    let mut fleet = fleet::Fleet::new(
        bench.address,
        &bench.admin,
        "h",
        nodes,
        connections,
        FLEET_IN_FLIGHT,
        client,
    );
    let in_flight = fleet.in_flight();
    println!(
        "fleet of {nodes} nodes on {} connections (open-file limit {open_files}), {in_flight} requests at once",
        fleet.connections()
    );
    let mut failures = 0;
    let register = Bytes::from(json!({"labels": {"cohort": "free"}}).to_string());
    let registered = fleet
        .run(
            1,
            FLEET_PHASE_DEADLINE,
            Arc::new(move |node| (Method::PUT, format!("/v1/nodes/{node}"), register.clone())),
        )
        .await;
    println!(
        "  registration: {nodes} nodes in {:.2} s = {:.0}/s; per request: {}",
        registered.elapsed.as_secs_f64(),
        nodes as f64 / registered.elapsed.as_secs_f64(),
        summary(registered.took.clone())
    );
    println!("    {}", cpu_line(&registered, registered.tally.ok));
    println!("    {}", registered.tally.line());
    failures += registered.tally.failed();
    // A running rollout with a long bake: every health report lands in its canary. The
    // simulated fleet reports in rounds, not every few seconds as agents do: on a loaded
    // machine a round outlasts the default 30 s silence while the other nodes are heard, and
    // its nodes would be silent (a hard signal, rightly), so the plan allows an hour.
    let plan =
        "name: long\nstages:\n  - name: everyone\n    bake: 1h\n    silence: 1h\n    gates: []\n";
    bench.start_rollout("flags", &version, plan).await;
    let applied =
        Bytes::from(json!({"kind": "applied", "unit": "flags", "version": version}).to_string());
    let acked = fleet
        .run(
            1,
            FLEET_PHASE_DEADLINE,
            Arc::new(move |node| {
                (
                    Method::POST,
                    format!("/v1/nodes/{node}/reports"),
                    applied.clone(),
                )
            }),
        )
        .await;
    println!("  applied reports: {}", acked.tally.line());
    failures += acked.tally.failed();
    let counts = vec![1u64; failsmall_core::health::LATENCY_BUCKETS];
    let sample = json!({"requests": 100, "errors": 1, "latency": {"counts": counts}});
    let report = json!({"kind": "health", "unit": "flags", "version": version, "sample": sample});
    let batch = if per_batch == 1 {
        report
    } else {
        json!({ "reports": vec![report; per_batch] })
    };
    let batch = Bytes::from(batch.to_string());
    let health = fleet
        .run(
            batches_per_node,
            FLEET_PHASE_DEADLINE,
            Arc::new(move |node| {
                (
                    Method::POST,
                    format!("/v1/nodes/{node}/reports"),
                    batch.clone(),
                )
            }),
        )
        .await;
    let requests = health.tally.ok;
    let reports = requests * per_batch as u64;
    let seconds = health.elapsed.as_secs_f64();
    println!(
        "  health reports: {reports} in {seconds:.2} s = {:.0} reports/s, {:.0} requests/s (batches of {per_batch}); per request: {}",
        reports as f64 / seconds,
        requests as f64 / seconds,
        summary(health.took.clone())
    );
    println!("    {}", cpu_line(&health, requests));
    println!("    {}", health.tally.line());
    failures += health.tally.failed();
    let view = bench
        .call(reqwest::Method::GET, "/v1/rollouts/1", None)
        .await;
    let counted = view["canary"]["sample"]["requests"].as_u64().unwrap_or(0);
    if counted != 100 * reports {
        println!(
            "  LOST REPORTS: the canary counted {counted} requests, the accepted reports carry {}; rollout: {}",
            100 * reports,
            json!({"phase": view["phase"], "stage": view["stage"], "status": view["status"], "outcome": view["outcome"]})
        );
        let metrics = bench
            .client
            .get(format!("{}/metrics", bench.base))
            .bearer_auth(&bench.admin)
            .send()
            .await
            .ok();
        let metrics = match metrics {
            Some(response) => response.text().await.unwrap_or_default(),
            None => String::new(),
        };
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("failsmall_report"))
        {
            println!("    {line}");
        }
        failures += 1;
    }
    drop(fleet);
    bench.stop().await;
    failures
}

/// The CPU the server and the fleet used in a phase, in all and per answered request.
fn cpu_line(phase: &fleet::Phase, requests: u64) -> String {
    let per = |cpu_s: f64| cpu_s * 1e6 / requests.max(1) as f64;
    format!(
        "CPU: server {:.2} s ({:.0} µs per request), fleet {:.2} s ({:.0} µs per request), over {:.2} s",
        phase.server_cpu_s,
        per(phase.server_cpu_s),
        phase.client_cpu_s,
        per(phase.client_cpu_s),
        phase.elapsed.as_secs_f64()
    )
}

fn bench_state() {
    let mut engine = Engine::new();
    let mut now = 1_000u64;
    for node in 0..STATE_NODES {
        let labels: Labels = [
            ("cohort".to_owned(), "free".to_owned()),
            ("region".to_owned(), format!("r{}", node % 8)),
        ]
        .into();
        engine
            .step(
                now,
                &Event::NodeRegistered {
                    node: NodeId::new(format!("node-{node:05}")).unwrap(),
                    labels,
                },
            )
            .unwrap();
    }
    let plan = Plan::parse(
        "plan",
        "name: all\nstages:\n  - name: everyone\n    bake: 1h\n    gates: []\n",
    )
    .unwrap();
    let unit = UnitName::new("flags").unwrap();
    let version = VersionHash::of(b"on");
    now += 1;
    engine
        .step(
            now,
            &Event::RolloutRequested {
                unit: unit.clone(),
                version,
                plan,
                actor: "bench".to_owned(),
                reason: String::new(),
                override_quarantine: false,
                override_freeze: false,
            },
        )
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("failsmall-bench-state-")
        .tempdir()
        .unwrap();
    let store = Store::open(&dir.path().join("failsmall.db")).unwrap();
    let mut serialize = Vec::new();
    let mut commit = Vec::new();
    let mut snapshot = Vec::new();
    let mut clone = Vec::new();
    let mut size_bytes = 0;
    for revision in 0..20u64 {
        let started = Instant::now();
        let next = engine.clone();
        clone.push(started.elapsed());
        let started = Instant::now();
        let state = serde_json::to_string(&next).unwrap();
        serialize.push(started.elapsed());
        size_bytes = state.len();
        let started = Instant::now();
        store
            .commit_step(&EngineStep {
                expected_revision: revision,
                now_ms: now,
                events: "[]",
                changes: &[],
                nodes: &[],
                version: None,
            })
            .unwrap();
        commit.push(started.elapsed());
        let started = Instant::now();
        store.write_engine_snapshot(revision + 1, &state).unwrap();
        snapshot.push(started.elapsed());
    }
    println!(
        "engine state with {STATE_NODES} nodes and one rollout over all of them: {size_bytes} bytes of JSON"
    );
    println!(
        "  clone (a snapshot's copy, taken under the engine's lock): {}",
        summary(clone)
    );
    println!(
        "  serialize (a snapshot, on its own thread): {}",
        summary(serialize)
    );
    println!("  write a snapshot (its own thread): {}", summary(snapshot));
    println!(
        "  commit of one step's log row (SQLite, WAL, synchronous=FULL): {}",
        summary(commit)
    );
}

/// Median cost of one registration and of one health report, each its own committed step
/// (in place, one log row), with `nodes` registered, on the server's engine host and store.
async fn step_costs(nodes: usize, place: &std::path::Path) -> (Duration, Duration) {
    let dir = tempfile::Builder::new()
        .prefix("failsmall-bench-scale-")
        .tempdir_in(place)
        .unwrap();
    let store = Arc::new(Store::open(&dir.path().join("failsmall.db")).unwrap());
    let host = EngineHost::load(&store).unwrap();
    let labels = |node: usize| -> Labels {
        [
            ("cohort".to_owned(), "free".to_owned()),
            ("region".to_owned(), format!("r{}", node % 8)),
        ]
        .into()
    };
    let mut now = 1_000u64;
    // The fleet, a thousand registrations per step.
    for chunk in (0..nodes).collect::<Vec<_>>().chunks(1_000) {
        let events = chunk
            .iter()
            .map(|node| {
                (
                    Event::NodeRegistered {
                        node: NodeId::new(format!("node-{node:05}")).unwrap(),
                        labels: labels(*node),
                    },
                    None,
                )
            })
            .collect();
        host.apply_many(&store, now, events, Cause::Nothing)
            .await
            .unwrap();
    }
    let plan = Plan::parse(
        "plan",
        "name: all\nstages:\n  - name: everyone\n    bake: 1h\n    gates: []\n",
    )
    .unwrap();
    let unit = UnitName::new("flags").unwrap();
    let version = VersionHash::of(b"on");
    now += 1;
    let request = Event::RolloutRequested {
        unit: unit.clone(),
        version,
        plan,
        actor: "bench".to_owned(),
        reason: String::new(),
        override_quarantine: false,
        override_freeze: false,
    };
    host.apply(&store, now, request, Cause::Nothing, None)
        .await
        .unwrap();
    let mut register = Vec::new();
    for extra in 0..SCALE_SAMPLES {
        let id = NodeId::new(format!("late-{extra:05}")).unwrap();
        let event = Event::NodeRegistered {
            node: id.clone(),
            labels: labels(extra),
        };
        let cause = Cause::Node {
            id,
            labels: labels(extra),
        };
        let started = Instant::now();
        host.apply(&store, now, event, cause, None).await.unwrap();
        register.push(started.elapsed());
    }
    let counts = vec![1u64; failsmall_core::health::LATENCY_BUCKETS];
    let sample: failsmall_core::health::HealthSample = serde_json::from_value(
        json!({"requests": 100, "errors": 1, "latency": {"counts": counts}}),
    )
    .unwrap();
    let mut report = Vec::new();
    for i in 0..SCALE_SAMPLES {
        let event = Event::Health {
            node: NodeId::new(format!("node-{:05}", (i * 7) % nodes)).unwrap(),
            unit: unit.clone(),
            version,
            sample,
        };
        let started = Instant::now();
        host.apply(&store, now, event, Cause::Nothing, None)
            .await
            .unwrap();
        report.push(started.elapsed());
    }
    (median(register), median(report))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// One registration and one report cost the same with 50,000 nodes as with 1,000: measured
/// with the store on the disk (each step's cost there is mostly its fsync, which a shared disk
/// makes noisy) and, where the machine has one, in memory (`/dev/shm`, where an fsync costs
/// nothing: what is left is the engine's and the database's own work).
async fn bench_scale() {
    let mut places = vec![("disk", std::env::temp_dir())];
    let memory = std::path::PathBuf::from("/dev/shm");
    if memory.is_dir() {
        places.push(("memory", memory));
    }
    for (name, place) in places {
        let mut rows = Vec::new();
        for nodes in SCALE_FLEETS {
            let (register, report) = step_costs(nodes, &place).await;
            println!(
                "one step with {nodes} nodes, store in {name} ({}) (median of {SCALE_SAMPLES}): registration {register:?}, health report {report:?}",
                place.display()
            );
            rows.push((register, report));
        }
        let (small, large) = (rows[0], rows[rows.len() - 1]);
        println!(
            "  ratio {} / {} nodes, store in {name}: registration {:.2}x, health report {:.2}x",
            SCALE_FLEETS[SCALE_FLEETS.len() - 1],
            SCALE_FLEETS[0],
            large.0.as_secs_f64() / small.0.as_secs_f64(),
            large.1.as_secs_f64() / small.1.as_secs_f64()
        );
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |section: &str| args.is_empty() || args.iter().any(|a| a == section);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The simulated fleet runs on threads of its own, so its CPU is told apart from the server's.
    let client = tokio::runtime::Builder::new_multi_thread()
        .thread_name(fleet::CLIENT_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let mut failures = 0;
    if wants("push") {
        runtime.block_on(bench_push());
    }
    if wants("watch") {
        runtime.block_on(bench_watch());
    }
    if wants("reports") {
        failures += runtime.block_on(bench_reports(
            client.handle().clone(),
            REPORT_NODES,
            REPORTS_PER_BATCH,
            REPORT_BATCHES_PER_NODE,
        ));
        failures += runtime.block_on(bench_reports(
            client.handle().clone(),
            REPORT_NODES,
            1,
            REPORT_BATCHES_PER_NODE,
        ));
    }
    if wants("fleet") {
        // Every node of a larger fleet sends its own reports, one per request: what a fleet of
        // agents does every health interval.
        failures += runtime.block_on(bench_reports(
            client.handle().clone(),
            FLEET_NODES,
            1,
            FLEET_REPORTS_PER_NODE,
        ));
    }
    if wants("state") {
        bench_state();
    }
    if wants("scale") {
        runtime.block_on(bench_scale());
    }
    if wants("fleet20k") {
        // 20,000 nodes register, then send single reports; again, then batches.
        failures += runtime.block_on(bench_reports(
            client.handle().clone(),
            BIG_FLEET_NODES,
            1,
            FLEET_REPORTS_PER_NODE,
        ));
        failures += runtime.block_on(bench_reports(
            client.handle().clone(),
            BIG_FLEET_NODES,
            REPORTS_PER_BATCH,
            1,
        ));
    }
    if failures > FLEET_FAILURES_ALLOWED {
        println!("FAILED: {failures} failures; the budget is {FLEET_FAILURES_ALLOWED}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
