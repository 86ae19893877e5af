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
//! 7. (`fleet20k`) 20,000 nodes registered one by one over HTTP, then single-report
//!    requests/s and batched reports/s.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use failsmall_core::domain::{Labels, NodeId, UnitName, VersionHash};
use failsmall_core::engine::{Engine, Event};
use failsmall_core::plan::Plan;
use failsmall_server::rollouts::{Cause, EngineHost};
use failsmall_server::store::{EngineStep, Store};
use failsmall_server::{ServerConfig, run};
use serde_json::{Value, json};
use tokio::sync::oneshot;

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
/// Most report requests in flight at once in the report benches (under the server's
/// connections per client).
const MAX_SENDERS: usize = 1_000;

struct Bench {
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
        let dir = tempfile::Builder::new()
            .prefix(&format!("failsmall-bench-{name}-"))
            .tempdir()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = ServerConfig::new(dir.path(), address);
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

async fn bench_reports(nodes: usize, per_batch: usize, batches_per_node: usize) {
    let bench = Arc::new(Bench::start("reports").await);
    bench
        .create_unit("flags", json!({"format": "raw", "max_bytes": 64}))
        .await;
    let (_, version) = bench.push("flags", b"on".to_vec()).await;
    let registering = Instant::now();
    for node in 0..nodes {
        bench
            .register(&format!("h{node}"), json!({"cohort": "free"}))
            .await;
    }
    let registered = registering.elapsed();
    // A running rollout with a long bake: every health report lands in its canary.
    let plan = "name: long\nstages:\n  - name: everyone\n    bake: 1h\n    gates: []\n";
    bench.start_rollout("flags", &version, plan).await;
    for node in 0..nodes {
        bench
            .call(
                reqwest::Method::POST,
                &format!("/v1/nodes/h{node}/reports"),
                Some(json!({"kind": "applied", "unit": "flags", "version": version})),
            )
            .await;
    }
    let counts = vec![1u64; failsmall_core::health::LATENCY_BUCKETS];
    let sample = json!({"requests": 100, "errors": 1, "latency": {"counts": counts}});
    let report = json!({"kind": "health", "unit": "flags", "version": version, "sample": sample});
    // One report is sent as itself, more as a batch.
    let batch = if per_batch == 1 {
        report
    } else {
        json!({ "reports": vec![report; per_batch] })
    };
    let started = Instant::now();
    let mut senders = Vec::new();
    // At most `MAX_SENDERS` requests in flight; each sender serves every `MAX_SENDERS`-th node.
    let sender_count = nodes.min(MAX_SENDERS);
    for first in 0..sender_count {
        let bench = Arc::clone(&bench);
        let batch = batch.clone();
        senders.push(tokio::spawn(async move {
            let mut took = Vec::new();
            for _ in 0..batches_per_node {
                for node in (first..nodes).step_by(sender_count) {
                    let sent = Instant::now();
                    bench
                        .call(
                            reqwest::Method::POST,
                            &format!("/v1/nodes/h{node}/reports"),
                            Some(batch.clone()),
                        )
                        .await;
                    took.push(sent.elapsed());
                }
            }
            took
        }));
    }
    let mut took = Vec::new();
    for sender in senders {
        took.extend(sender.await.unwrap());
    }
    let elapsed = started.elapsed();
    let reports = nodes * batches_per_node * per_batch;
    println!(
        "health reports: {reports} in {:.2} s = {:.0} reports/s ({nodes} nodes, {sender_count} requests at once, batches of {per_batch}); per request: {}",
        elapsed.as_secs_f64(),
        reports as f64 / elapsed.as_secs_f64(),
        summary(took)
    );
    println!(
        "  ({nodes} nodes registered one after another in {:.2} s)",
        registered.as_secs_f64()
    );
    let view = bench
        .call(reqwest::Method::GET, "/v1/rollouts/1", None)
        .await;
    assert_eq!(
        view["canary"]["sample"]["requests"].as_u64(),
        Some(100 * reports as u64),
        "every report reached the rollout's canary"
    );
    match Arc::try_unwrap(bench) {
        Ok(bench) => bench.stop().await,
        Err(_) => panic!("senders still hold the bench"),
    }
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
                node: None,
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
async fn step_costs(nodes: usize) -> (Duration, Duration) {
    let dir = tempfile::Builder::new()
        .prefix("failsmall-bench-scale-")
        .tempdir()
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

/// One registration and one report cost the same with 50,000 nodes as with 1,000.
async fn bench_scale() {
    let mut rows = Vec::new();
    for nodes in SCALE_FLEETS {
        let (register, report) = step_costs(nodes).await;
        println!(
            "one step with {nodes} nodes (median of {SCALE_SAMPLES}): registration {register:?}, health report {report:?}"
        );
        rows.push((register, report));
    }
    let (small, large) = (rows[0], rows[rows.len() - 1]);
    println!(
        "  ratio {} / {} nodes: registration {:.2}x, health report {:.2}x",
        SCALE_FLEETS[SCALE_FLEETS.len() - 1],
        SCALE_FLEETS[0],
        large.0.as_secs_f64() / small.0.as_secs_f64(),
        large.1.as_secs_f64() / small.1.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |section: &str| args.is_empty() || args.iter().any(|a| a == section);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if wants("push") {
        runtime.block_on(bench_push());
    }
    if wants("watch") {
        runtime.block_on(bench_watch());
    }
    if wants("reports") {
        runtime.block_on(bench_reports(
            REPORT_NODES,
            REPORTS_PER_BATCH,
            REPORT_BATCHES_PER_NODE,
        ));
        runtime.block_on(bench_reports(REPORT_NODES, 1, REPORT_BATCHES_PER_NODE));
    }
    if wants("fleet") {
        // Every node of a larger fleet sends its own reports, one per request, all at once:
        // what a fleet of agents does every health interval.
        runtime.block_on(bench_reports(FLEET_NODES, 1, FLEET_REPORTS_PER_NODE));
    }
    if wants("state") {
        bench_state();
    }
    if wants("scale") {
        runtime.block_on(bench_scale());
    }
    if wants("fleet20k") {
        // 20,000 nodes registered one by one over HTTP, then single reports and batches.
        runtime.block_on(bench_reports(BIG_FLEET_NODES, 1, FLEET_REPORTS_PER_NODE));
        runtime.block_on(bench_reports(BIG_FLEET_NODES, REPORTS_PER_BATCH, 1));
    }
}
