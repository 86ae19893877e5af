//! The kill test: the real `failsmall server` process runs rollouts driven by in-test agents
//! (register, watch, ACK or NACK, health) and a pusher, and is killed with SIGKILL at random
//! moments (seeded; the seed is printed), then restarted on the same data dir. Checked after
//! each restart and at the end:
//!
//! - no acknowledged write is missing: every push and every rollout request that got a 2xx
//!   is there after the restart;
//! - no stage transition is lost: what a client saw of a rollout (its stage, its end) before
//!   the kill is still true after it, and the changelog holds every stage the rollout entered;
//! - none is repeated: each rollout starts, enters each stage, passes each stage and ends at
//!   most once in the changelog;
//! - once the kills stop, every rollout ends `completed` or `rolled_back`.
//!
//! `FAILSMALL_KILL_ROUNDS` sets the number of kills (default 100; the ignored test: 1,000),
//! `FAILSMALL_KILL_SEED` replays a run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Its rollouts are requested on their own, after each push.
const UNIT: &str = "flags";
/// It has a plan: each push starts its rollout in the same step.
const PLANNED_UNIT: &str = "features";
const PLAN: &str = "name: killtest
soak: 0s
defaults:
  bake: 150ms
  min_requests: 10
  silence: 30s
  gates: []
stages:
  - name: canary
    select: { cohort: employee }
  - name: rest
";
const STAGES: [&str; 2] = ["canary", "rest"];
const NODES: [(&str, &str); 4] = [
    ("n1", "employee"),
    ("n2", "free"),
    ("n3", "pro"),
    ("n4", "business"),
];
/// Longest time a server may run before it is killed, in milliseconds.
const MAX_LIFE_MS: u64 = 400;
/// Kills during the very first start, before the rounds.
const FIRST_START_KILLS: u64 = 5;
/// How long the rollouts get to finish once the kills stop.
const SETTLE: Duration = Duration::from_secs(60);

/// SplitMix64: a small seeded generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One run of the server process.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// A server on `data_dir`, its state in SQLite there or in PostgreSQL at `store`.
    fn start(data_dir: &Path, store: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_failsmall"));
        command
            .args(["server", "--codex", "off", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"]);
        if let Some(url) = store {
            // The killed server's lease must run out before the next one drives the engine.
            command.args(["--store", url, "--lease-ttl", "1s"]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        // Keep reading stderr for the process's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut address_tx = Some(address_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1)
                    && let Some(tx) = address_tx.take()
                {
                    let address = rest.split(',').next().unwrap_or_default().to_owned();
                    let _ = tx.send(address);
                }
            }
        });
        let address = address_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server printed no listening address");
        Self {
            child,
            base: format!("http://{address}"),
        }
    }

    fn kill(mut self) {
        // std's kill is SIGKILL on Unix: no shutdown code runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

#[derive(Clone)]
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn get(&self, path: &str, token: &str) -> Result<(u16, Value), reqwest::Error> {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    async fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> Result<(u16, Value), reqwest::Error> {
        let body = serde_json::to_vec(&body).unwrap();
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// Waits for `/healthz` to answer 200 (on PostgreSQL a new server stands by, answering
    /// 503, until the killed one's lease runs out).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.get("/healthz", "").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server at {} never answered /healthz 200", self.base);
    }
}

/// What the test saw acknowledged or observed, across every server run.
#[derive(Default)]
struct Seen {
    /// Versions whose push got a 2xx.
    pushed: BTreeSet<String>,
    /// Rollouts whose request got a 2xx.
    requested: BTreeSet<u64>,
    /// Per rollout, the furthest stage index seen, and its end if one was seen.
    progress: BTreeMap<u64, (u64, Option<String>)>,
    kills: u64,
    /// Requests the server refused with a 4xx: the test sends none that deserve it.
    refused: Vec<String>,
}

impl Seen {
    fn observe(&mut self, view: &Value) {
        let Some(id) = view["id"].as_u64() else {
            return;
        };
        let stage = view["stage_index"].as_u64().unwrap_or(0);
        let status = view["status"].as_str().unwrap_or_default().to_owned();
        let terminal = matches!(status.as_str(), "completed" | "rolled_back" | "aborted");
        let entry = self.progress.entry(id).or_insert((0, None));
        entry.0 = entry.0.max(stage);
        if terminal {
            entry.1 = Some(status);
        }
    }
}

struct Tokens {
    admin: String,
    deployer: String,
    /// Per node, its agent token.
    agents: HashMap<String, String>,
}

fn is_bad(content: &[u8]) -> bool {
    serde_json::from_slice::<Value>(content).is_ok_and(|v| v["bad"] == true)
}

fn health(unit: &str, version: &str) -> Value {
    let counts = vec![0u64; failsmall_core::health::LATENCY_BUCKETS];
    json!({"kind": "health", "unit": unit, "version": version,
        "sample": {"requests": 100, "errors": 0, "latency": {"counts": counts}}})
}

/// An in-test agent: registers, then watches its desired state, fetches each version by hash
/// and ACKs it with health, or NACKs a bad one. Ends when its task is aborted.
async fn agent(api: Api, token: String, node: &'static str, cohort: &'static str) {
    let labels = serde_json::to_vec(&json!({"labels": {"cohort": cohort}})).unwrap();
    loop {
        let registered = api
            .send(
                reqwest::Method::PUT,
                &format!("/v1/nodes/{node}"),
                &token,
                Some(labels.clone()),
            )
            .await;
        if let Ok((200, _)) = registered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut bad_by_hash: HashMap<String, bool> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let path = format!("/v1/nodes/{node}/desired?after={seq}&wait_ms=300");
        let Ok((200, body)) = api.get(&path, &token).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let document: Value =
            serde_json::from_str(body["document"].as_str().unwrap_or("{}")).unwrap_or_default();
        seq = document["seq"].as_u64().unwrap_or(seq);
        let Some(units) = document["units"].as_object() else {
            continue;
        };
        let reports = format!("/v1/nodes/{node}/reports");
        for (unit, hash) in units {
            let Some(hash) = hash.as_str() else { continue };
            if !bad_by_hash.contains_key(hash) {
                let blob = api
                    .client
                    .get(format!("{}/v1/blobs/{hash}", api.base))
                    .bearer_auth(&token)
                    .send()
                    .await;
                let Ok(blob) = blob else { continue };
                let Ok(content) = blob.bytes().await else {
                    continue;
                };
                bad_by_hash.insert(hash.to_owned(), is_bad(&content));
            }
            let report = if bad_by_hash.get(hash) == Some(&true) {
                json!({"kind": "rejected", "unit": unit, "version": hash, "reason": "bad: true"})
            } else {
                let _ = api
                    .post(
                        &reports,
                        &token,
                        json!({"kind": "applied", "unit": unit, "version": hash}),
                    )
                    .await;
                health(unit, hash)
            };
            let _ = api.post(&reports, &token, report).await;
        }
    }
}

/// Whenever no rollout is open, pushes a version (every third one bad), alternately to the
/// unit whose push starts the rollout and to the one whose rollout is requested after.
async fn pusher(api: Api, token: String, seen: Arc<Mutex<Seen>>, counter: Arc<AtomicU64>) {
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Ok((200, list)) = api.get("/v1/rollouts", &token).await else {
            continue;
        };
        let rollouts = list["rollouts"].as_array().cloned().unwrap_or_default();
        {
            let mut seen = seen.lock().unwrap();
            for view in &rollouts {
                seen.observe(view);
            }
        }
        let open = rollouts.iter().any(|view| {
            !matches!(
                view["status"].as_str(),
                Some("completed" | "rolled_back" | "aborted")
            )
        });
        if open {
            continue;
        }
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let content = serde_json::to_vec(&json!({"n": n, "bad": n % 3 == 2})).unwrap();
        let unit = if n.is_multiple_of(2) {
            PLANNED_UNIT
        } else {
            UNIT
        };
        let path = format!("/v1/units/{unit}/versions?message=push-{n}");
        let Ok((status, version)) = api
            .send(reqwest::Method::POST, &path, &token, Some(content))
            .await
        else {
            continue;
        };
        if !(200..300).contains(&status) {
            continue;
        }
        let hash = version["hash"].as_str().unwrap().to_owned();
        seen.lock().unwrap().pushed.insert(format!("{unit}/{hash}"));
        if unit == PLANNED_UNIT {
            let mut seen = seen.lock().unwrap();
            match version["rollout"]["id"].as_u64() {
                Some(id) => {
                    seen.requested.insert(id);
                    seen.observe(&version["rollout"]);
                }
                None => seen
                    .refused
                    .push(format!("push {n} started no rollout: {version}")),
            }
            continue;
        }
        let request =
            json!({"unit": UNIT, "version": hash, "plan": PLAN, "reason": format!("push {n}")});
        match api.post("/v1/rollouts", &token, request).await {
            Ok((201, view)) => {
                let id = view["id"].as_u64().unwrap();
                let mut seen = seen.lock().unwrap();
                seen.requested.insert(id);
                seen.observe(&view);
            }
            // Refused, not lost: the request was invalid, which the test must never send.
            Ok((status, answer)) if (400..500).contains(&status) => {
                let refusal = format!("rollout request refused with {status}: {answer}");
                seen.lock().unwrap().refused.push(refusal);
            }
            // The server died (or answered 5xx while dying): unknown, not acknowledged.
            Ok(_) | Err(_) => {}
        }
    }
}

fn spawn_fleet(
    runtime: &tokio::runtime::Runtime,
    api: &Api,
    tokens: &Tokens,
) -> Vec<tokio::task::JoinHandle<()>> {
    NODES
        .iter()
        .map(|(node, cohort)| {
            let token = tokens.agents[*node].clone();
            runtime.spawn(agent(api.clone(), token, node, cohort))
        })
        .collect()
}

/// First start: tokens and the units.
async fn set_up(api: &Api, data_dir: &Path) -> Tokens {
    let admin = std::fs::read_to_string(data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let token = |name: &str, role: &str, node: Option<&str>| {
        let mut body = json!({"name": name, "role": role});
        if let Some(node) = node {
            body["node"] = json!(node);
        }
        let (api, admin) = (api.clone(), admin.clone());
        async move {
            let (status, body) = api.post("/v1/tokens", &admin, body).await.unwrap();
            assert_eq!(status, 201, "{body}");
            body["token"].as_str().unwrap().to_owned()
        }
    };
    let deployer = token("ci", "deployer", None).await;
    let mut agents = HashMap::new();
    for (node, _) in NODES {
        agents.insert(
            node.to_owned(),
            token(&format!("agent-{node}"), "agent", Some(node)).await,
        );
    }
    let spec = json!({"format": "json", "max_bytes": 4096});
    let (status, body) = api
        .post("/v1/units", &admin, json!({"name": UNIT, "spec": spec}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let planned = json!({"name": PLANNED_UNIT, "spec": spec, "plan": PLAN});
    let (status, body) = api.post("/v1/units", &admin, planned).await.unwrap();
    assert_eq!(status, 201, "{body}");
    Tokens {
        admin,
        deployer,
        agents,
    }
}

/// Every acknowledged write is there, and no rollout went back on what a client saw.
async fn check_nothing_lost(api: &Api, tokens: &Tokens, seen: &Seen, pushed_since: &[String]) {
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    for pushed in pushed_since {
        let (unit, hash) = pushed.split_once('/').unwrap();
        let path = format!("/v1/units/{unit}/versions/{hash}");
        let (status, body) = api.get(&path, &tokens.admin).await.unwrap();
        assert_eq!(status, 200, "acknowledged push {pushed} lost: {body}");
    }
    // One listing (newest first, up to 1,000: more than any run here makes) for every rollout.
    let (status, list) = api.get("/v1/rollouts", &tokens.admin).await.unwrap();
    assert_eq!(status, 200, "{list}");
    let views: BTreeMap<u64, Value> = list["rollouts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|view| Some((view["id"].as_u64()?, view)))
        .collect();
    for (id, (stage, end)) in &seen.progress {
        let Some(view) = views.get(id) else {
            panic!("rollout {id} lost");
        };
        let now_stage = view["stage_index"].as_u64().unwrap();
        assert!(
            now_stage >= *stage,
            "rollout {id} was seen at stage {stage}, is at {now_stage} after the restart"
        );
        if let Some(end) = end {
            assert_eq!(view["status"], end.as_str(), "rollout {id} ended {end}");
        }
    }
}

/// The whole changelog, oldest first.
async fn changelog(api: &Api, token: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor = 0u64;
    loop {
        let path = format!("/v1/changelog?limit=1000&cursor={cursor}");
        let (status, page) = api.get(&path, token).await.unwrap();
        assert_eq!(status, 200, "{page}");
        let page_entries = page["entries"].as_array().cloned().unwrap_or_default();
        entries.extend(page_entries);
        match page["next_cursor"].as_u64() {
            Some(next) => cursor = next,
            None => return entries,
        }
    }
}

/// Each rollout's transitions in the changelog: (kind, stage) in order.
fn transitions(entries: &[Value]) -> BTreeMap<u64, Vec<(String, Option<String>)>> {
    const KINDS: [&str; 7] = [
        "rollout_queued",
        "rollout_started",
        "stage_started",
        "stage_passed",
        "completed",
        "rolled_back",
        "aborted",
    ];
    let mut by_rollout: BTreeMap<u64, Vec<(String, Option<String>)>> = BTreeMap::new();
    for entry in entries {
        let kind = entry["kind"].as_str().unwrap_or_default();
        if !KINDS.contains(&kind) {
            continue;
        }
        let Some(id) = entry["rollout"].as_u64() else {
            panic!("changelog entry without a rollout: {entry}");
        };
        let stage = entry["stage"].as_str().map(str::to_owned);
        by_rollout
            .entry(id)
            .or_default()
            .push((kind.to_owned(), stage));
    }
    by_rollout
}

/// No transition repeated, none lost, every rollout ended completed or rolled back.
async fn check_final(api: &Api, tokens: &Tokens, seen: &Seen) {
    let (_, list) = api.get("/v1/rollouts", &tokens.admin).await.unwrap();
    let views = list["rollouts"].as_array().cloned().unwrap_or_default();
    let entries = changelog(api, &tokens.admin).await;
    let by_rollout = transitions(&entries);
    let mut ended = BTreeMap::<String, u64>::new();
    for view in &views {
        let id = view["id"].as_u64().unwrap();
        let status = view["status"].as_str().unwrap().to_owned();
        assert!(
            status == "completed" || status == "rolled_back",
            "rollout {id} ended {status}: {view}"
        );
        *ended.entry(status.clone()).or_default() += 1;
        let log = by_rollout.get(&id).cloned().unwrap_or_default();
        let count = |kind: &str, stage: Option<&str>| {
            log.iter()
                .filter(|(k, s)| k == kind && s.as_deref() == stage)
                .count()
        };
        assert_eq!(count("rollout_started", None), 1, "rollout {id}: {log:?}");
        assert!(count("rollout_queued", None) <= 1, "rollout {id}: {log:?}");
        let ends = log
            .iter()
            .filter(|(kind, _)| matches!(kind.as_str(), "completed" | "rolled_back" | "aborted"))
            .count();
        assert_eq!(ends, 1, "rollout {id} end: {log:?}");
        let stage_index = usize::try_from(view["stage_index"].as_u64().unwrap()).unwrap();
        for (index, stage) in STAGES.iter().enumerate() {
            let entered = count("stage_started", Some(stage));
            let passed = count("stage_passed", Some(stage));
            if index <= stage_index {
                assert_eq!(entered, 1, "rollout {id} stage {stage} entered: {log:?}");
            } else {
                assert_eq!(entered, 0, "rollout {id} stage {stage} entered: {log:?}");
            }
            let expect_passed =
                usize::from(index < stage_index || (index == stage_index && status == "completed"));
            assert_eq!(
                passed, expect_passed,
                "rollout {id} stage {stage} passed: {log:?}"
            );
        }
        // The ends are last: nothing happens to a rollout after it ended.
        let last = log.last().map(|(kind, _)| kind.as_str());
        assert_eq!(last, Some(status.as_str()), "rollout {id}: {log:?}");
    }
    for id in &seen.requested {
        assert!(
            views.iter().any(|view| view["id"].as_u64() == Some(*id)),
            "acknowledged rollout {id} lost"
        );
    }
    let all_pushed: Vec<String> = seen.pushed.iter().cloned().collect();
    check_nothing_lost(api, tokens, seen, &all_pushed).await;
    println!(
        "kill test: {} kills, {} acknowledged pushes, {} rollouts ({ended:?}), {} changelog entries",
        seen.kills,
        seen.pushed.len(),
        views.len(),
        entries.len()
    );
    assert!(
        ended.get("completed").copied().unwrap_or(0) > 0,
        "no rollout completed: the test drove nothing"
    );
}

fn kill_test(rounds: u64, store: Option<&str>) {
    let seed = std::env::var("FAILSMALL_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let rounds = std::env::var("FAILSMALL_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(rounds);
    println!("kill test: seed {seed} (FAILSMALL_KILL_SEED={seed} replays it), {rounds} kills");
    let mut rng = Rng(seed);
    let data_dir: PathBuf =
        std::env::temp_dir().join(format!("failsmall-kill-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    // The first start is killed too: the schema, the signing key and the first admin token
    // are created whole or not at all, and a later start finishes the job.
    for _ in 0..FIRST_START_KILLS {
        let starting = Server::start(&data_dir, store);
        std::thread::sleep(Duration::from_millis(rng.next() % 30));
        starting.kill();
        seen.lock().unwrap().kills += 1;
    }
    let server = Server::start(&data_dir, store);
    let api = Api::new(&server.base);
    runtime.block_on(api.wait_ready());
    let tokens = runtime.block_on(set_up(&api, &data_dir));
    let mut server = Some(server);
    for round in 0..rounds {
        let running = server
            .take()
            .unwrap_or_else(|| Server::start(&data_dir, store));
        let api = Api::new(&running.base);
        // Half the kills land before the server is known to serve, during its start.
        if rng.next().is_multiple_of(2) {
            runtime.block_on(api.wait_ready());
        }
        let mut tasks = spawn_fleet(&runtime, &api, &tokens);
        tasks.push(runtime.spawn(pusher(
            api.clone(),
            tokens.deployer.clone(),
            Arc::clone(&seen),
            Arc::clone(&counter),
        )));
        let pushed_before: BTreeSet<String> = seen.lock().unwrap().pushed.clone();
        std::thread::sleep(Duration::from_millis(rng.next() % MAX_LIFE_MS));
        running.kill();
        for task in &tasks {
            task.abort();
        }
        seen.lock().unwrap().kills += 1;
        // Restart on the same data dir and check what the killed run acknowledged.
        let restarted = Server::start(&data_dir, store);
        let api = Api::new(&restarted.base);
        runtime.block_on(api.wait_ready());
        let (pushed_since, snapshot) = {
            let seen = seen.lock().unwrap();
            let pushed_since: Vec<String> =
                seen.pushed.difference(&pushed_before).cloned().collect();
            (
                pushed_since,
                Seen {
                    pushed: BTreeSet::new(),
                    requested: seen.requested.clone(),
                    progress: seen.progress.clone(),
                    kills: seen.kills,
                    refused: seen.refused.clone(),
                },
            )
        };
        runtime.block_on(check_nothing_lost(&api, &tokens, &snapshot, &pushed_since));
        if round.is_multiple_of(10) {
            println!("kill test: round {round}, {:?} elapsed", started.elapsed());
        }
        server = Some(restarted);
    }

    // The kills stop: the agents alone must bring every rollout to its end.
    let running = server
        .take()
        .unwrap_or_else(|| Server::start(&data_dir, store));
    let api = Api::new(&running.base);
    runtime.block_on(api.wait_ready());
    let tasks = spawn_fleet(&runtime, &api, &tokens);
    let deadline = Instant::now() + SETTLE;
    runtime.block_on(async {
        loop {
            let (_, list) = api.get("/v1/rollouts", &tokens.admin).await.unwrap();
            let views = list["rollouts"].as_array().cloned().unwrap_or_default();
            let open: Vec<&Value> = views
                .iter()
                .filter(|view| {
                    !matches!(
                        view["status"].as_str(),
                        Some("completed" | "rolled_back" | "aborted")
                    )
                })
                .collect();
            if open.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: rollouts still open after {SETTLE:?}: {open:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    for task in &tasks {
        task.abort();
    }
    let seen = seen.lock().unwrap();
    runtime.block_on(check_final(&api, &tokens, &seen));
    println!("kill test: seed {seed} passed in {:?}", started.elapsed());
    running.kill();
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn kill_server_at_random_moments_loses_and_repeats_nothing() {
    kill_test(100, None);
}

#[test]
#[ignore = "long: 1,000 kills; run with --run-ignored"]
fn kill_server_a_thousand_times_loses_and_repeats_nothing() {
    kill_test(1000, None);
}

/// The same on a real PostgreSQL: each kill lands on the server holding the engine's lease,
/// and the next server drives the engine once that lease runs out.
#[test]
fn kill_server_on_postgres_at_random_moments_loses_and_repeats_nothing() {
    let pg = failsmall_testkit::postgres::Postgres::start().unwrap();
    let url = pg.database("kill").unwrap();
    kill_test(100, Some(&url));
}

#[test]
#[ignore = "long: 1,000 kills on PostgreSQL; run with --run-ignored"]
fn kill_server_on_postgres_a_thousand_times_loses_and_repeats_nothing() {
    let pg = failsmall_testkit::postgres::Postgres::start().unwrap();
    let url = pg.database("kill").unwrap();
    kill_test(1000, Some(&url));
}
