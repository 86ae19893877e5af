//! Fan-out, side by side with etcd: N connected agents receive a 64 KiB version (document and
//! bundle) from a real failsmall server process, and N etcd watchers receive a 64 KiB value from
//! a real etcd 3.4 process (Debian's `etcd-server`, installed by `scripts/test`), both on
//! 127.0.0.1, rounds interleaved.
//!
//! - failsmall: each simulated agent holds one connection and does what the real agent does:
//!   long-polls `GET /v1/nodes/{id}/desired?after=SEQ&wait_ms=30000`, verifies the document's
//!   signature, checks that it names its node, verifies the version's signature, fetches
//!   `GET /v1/blobs/{hash}` and checks its sha256. A round pushes a 64 KiB version of a unit
//!   (a unit per round) whose plan is one instant stage over every node: the push itself
//!   starts the rollout. The
//!   round's time ends when the last agent has verified both.
//! - etcd: each watcher holds one connection to etcd's HTTP/JSON gRPC gateway
//!   (`POST /v3/watch`, a stream, one watch per connection), and a round is one
//!   `POST /v3/kv/put` of a 64 KiB value; it ends when the last watcher has received the
//!   event carrying the whole value (compared with what was put). etcd's watchers verify no
//!   signature.
//!
//! Also measured: how long the push takes to be answered while its fan-out runs, and the
//! failsmall server's resident memory (VmRSS) idle, with the N agents connected, and after the
//! rounds (the agents connected again).
//!
//! `cargo bench -p failsmall-server --bench fanout` (1,000 then 10,000 agents, 3 rounds each);
//! `FANOUT_AGENTS=10000 FANOUT_ROUNDS=5` to choose; `FANOUT_ETCD=0` leaves etcd out (quick
//! loops on failsmall alone). The server runs in a child process (this
//! bench binary, started again in server mode), so its memory is its own; etcd and its watchers
//! run from another (etcd mode), so that each load process needs one open file per agent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::mpsc;

/// The allocator of the `failsmall` binary (crates/cli/src/main.rs): the server measured here
/// allocates as the one shipped.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The environment variable that makes this binary the server (its value: the data dir).
const SERVER_MODE_ENV: &str = "FAILSMALL_FANOUT_SERVER_DIR";
const VERSION_BYTES: usize = 64 * 1024;
/// Units are named `fanout0`, `fanout1`, ... (one per round).
const UNIT: &str = "fanout";
const PLAN: &str = "name: instant\nsoak: 0s\nstages:\n  - name: everyone\n    bake: 0s\n    min_requests: 0\n    gates: []\n";
/// Connections opened at once while agents and watchers connect.
const CONNECT_BATCH: usize = 250;
/// Longest wait for one round's fan-out.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
const LONG_POLL_MS: u64 = 30_000;
/// Seconds between the two measurements of the server's memory after the rounds.
const SETTLE_S: u64 = 12;
/// Operator reads timed while each fan-out runs (one every 50 ms).
const OPERATOR_READS: usize = 10;
/// The environment variable that makes this binary the etcd side (its value: the number of
/// watchers).
const ETCD_MODE_ENV: &str = "FAILSMALL_FANOUT_ETCD_WATCHERS";

fn main() {
    if let Ok(dir) = std::env::var(SERVER_MODE_ENV) {
        serve(PathBuf::from(dir));
        return;
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if let Ok(watchers) = std::env::var(ETCD_MODE_ENV) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(etcd_load(watchers.parse().unwrap()));
        return;
    }
    let open_files = rlimit::Resource::NOFILE.get_soft().unwrap_or(0);
    let sizes: Vec<usize> = std::env::var("FANOUT_AGENTS")
        .unwrap_or_else(|_| "1000,10000".to_owned())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let rounds: usize = std::env::var("FANOUT_ROUNDS")
        .ok()
        .map_or(3, |s| s.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for size in sizes {
        let needed = u64::try_from(size).unwrap() + 1000;
        assert!(
            open_files >= needed,
            "{size} agents need {needed} open files in each load process; the limit is \
             {open_files} (raise the hard limit: ulimit -Hn)"
        );
        runtime.block_on(measure(size, rounds));
    }
}

/// Server mode: a failsmall server on 127.0.0.1:0 with room for every agent's connection,
/// its URL written to `addr` in the data dir; it stops when stdin closes.
fn serve(dir: PathBuf) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config =
            failsmall_server::ServerConfig::new(dir.join("data"), listener.local_addr().unwrap());
        config.connections.max_connections = 100_000;
        config.connections.max_connections_per_client = 100_000;
        config.addr_file = Some(dir.join("addr"));
        let stdin_closed = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            })
            .await;
        };
        failsmall_server::run(config, listener, stdin_closed)
            .await
            .unwrap();
    });
}

struct ServerProcess {
    child: Child,
    base: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("failsmall-bench-fanout-")
            .tempdir()
            .unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(SERVER_MODE_ENV, dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let addr = wait_for_file(&dir.path().join("addr")).await;
        let admin = wait_for_file(&dir.path().join("data").join("admin.token")).await;
        Self {
            child,
            base: addr.trim().to_owned(),
            admin: admin.trim().to_owned(),
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

struct Etcd {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_etcd() -> Etcd {
    let dir = tempfile::Builder::new()
        .prefix("failsmall-bench-etcd-")
        .tempdir()
        .unwrap();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .args(["--log-level", "error", "--logger", "zap"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian package etcd-server, installed by scripts/test)");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("{client_url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "etcd never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Etcd {
        child,
        base: client_url,
        _dir: dir,
    }
}

async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn content(round: usize) -> Vec<u8> {
    let mut bytes = format!("round {round}\n").into_bytes();
    let mut state = u64::try_from(round)
        .unwrap()
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    while bytes.len() < VERSION_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.push(b'a' + u8::try_from(state % 26).unwrap());
    }
    bytes
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let mut request = http.request(method, format!("{base}{path}")).json(&body);
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {value}");
    value
}

/// One simulated agent: long-polls its document forever, and for each new version of the
/// unit verifies it and fetches its bundle, then says so.
async fn agent(
    http: reqwest::Client,
    base: Arc<str>,
    token: Arc<str>,
    node: String,
    ready: mpsc::UnboundedSender<()>,
    got: mpsc::UnboundedSender<(String, Instant)>,
) {
    let mut after: Option<u64> = None;
    let mut have: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    loop {
        let path = match after {
            Some(seq) => {
                format!("{base}/v1/nodes/{node}/desired?after={seq}&wait_ms={LONG_POLL_MS}")
            }
            None => format!("{base}/v1/nodes/{node}/desired"),
        };
        let Ok(response) = http.get(path).bearer_auth(&*token).send().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(answer) = response.json::<Value>().await else {
            continue;
        };
        let (Some(document), Some(signature), Some(key)) = (
            answer["document"].as_str(),
            answer["signature"].as_str(),
            answer["key"].as_str(),
        ) else {
            panic!("node {node}: not a desired-state answer: {answer}");
        };
        assert!(
            failsmall_server::signing::verify_desired(key, document, signature),
            "node {node}: bad document signature"
        );
        let document: Value = serde_json::from_str(document).unwrap();
        assert_eq!(
            document["node"],
            node.as_str(),
            "a document for another node"
        );
        if after.is_none() {
            let _ = ready.send(());
        }
        after = document["seq"].as_u64();
        let units = document["units"].as_object().cloned().unwrap_or_default();
        for (unit, hash) in units {
            let hash = hash.as_str().unwrap();
            if have.get(&unit).is_some_and(|had| had == hash) {
                continue;
            }
            let signature = document["versions"][&unit].as_str().unwrap();
            assert!(failsmall_server::signing::verify_version(
                key, &unit, hash, signature
            ));
            let bundle = http
                .get(format!("{base}/v1/blobs/{hash}"))
                .bearer_auth(&*token)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(hex::encode(sha2::Sha256::digest(&bundle)), hash, "bundle");
            have.insert(unit, hash.to_owned());
            let _ = got.send((hash.to_owned(), Instant::now()));
        }
    }
}

/// One etcd watcher: one watch stream on its own connection; for each event whose value is
/// whole, says so.
async fn watcher(
    http: reqwest::Client,
    base: Arc<str>,
    key: Arc<str>,
    ready: mpsc::UnboundedSender<()>,
    got: mpsc::UnboundedSender<(String, Instant)>,
) {
    let mut response = http
        .post(format!("{base}/v3/watch"))
        .json(&json!({"create_request": {"key": &*key}}))
        .send()
        .await
        .unwrap();
    let mut pending: Vec<u8> = Vec::new();
    // The stream ends when etcd stops (the end of the bench).
    while let Ok(Some(chunk)) = response.chunk().await {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(message) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if message["result"]["created"] == true {
                let _ = ready.send(());
            }
            if let Some(events) = message["result"]["events"].as_array() {
                for event in events {
                    if let Some(value) = event["kv"]["value"].as_str() {
                        let _ = got.send((value.to_owned(), Instant::now()));
                    }
                }
            }
        }
    }
}

async fn wait_ready(ready: &mut mpsc::UnboundedReceiver<()>, count: usize) {
    for _ in 0..count {
        tokio::time::timeout(ROUND_TIMEOUT, ready.recv())
            .await
            .expect("connecting took too long")
            .unwrap();
    }
}

/// Receives `count` reports of `expected`, returning when the last came; how many came when
/// the round's time ([`ROUND_TIMEOUT`]) ran out first.
async fn last_of(
    got: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    expected: &str,
    count: usize,
) -> Result<Instant, usize> {
    let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
    let mut seen = 0;
    let mut last = Instant::now();
    while seen < count {
        let Ok(Some((value, at))) = tokio::time::timeout_at(deadline, got.recv()).await else {
            return Err(seen);
        };
        if value == expected {
            seen += 1;
            last = last.max(at);
        }
    }
    Ok(last)
}

async fn measure(agents: usize, rounds: usize) {
    let server = ServerProcess::start().await;
    let admin_http = reqwest::Client::new();
    let (base, admin) = (server.base.clone(), server.admin.clone());
    let spec = json!({"format": "raw", "max_bytes": 2 * VERSION_BYTES});
    // A unit per round, each with its own rollout (the simulated agents send no ACKs, so a
    // round's rollout stays open).
    for round in 0..rounds {
        call(
            &admin_http,
            &base,
            &admin,
            reqwest::Method::POST,
            "/v1/units",
            json!({"name": format!("{UNIT}{round}"), "spec": spec, "plan": PLAN}),
        )
        .await;
    }
    let registering = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for node in 0..agents {
        let (http, base, admin) = (admin_http.clone(), base.clone(), admin.clone());
        tasks.spawn(async move {
            call(
                &http,
                &base,
                &admin,
                reqwest::Method::PUT,
                &format!("/v1/nodes/n{node}"),
                json!({"labels": {"cohort": "free"}}),
            )
            .await;
        });
        if tasks.len() >= 64 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    eprintln!("{agents} nodes registered in {:?}", registering.elapsed());
    let with_etcd = std::env::var("FANOUT_ETCD").map_or(true, |v| v != "0");
    let mut etcd = with_etcd.then(|| EtcdLoad::start(agents));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_kib = server.rss_kib();

    // Connect every agent and every watcher, a batch at a time.
    // Idle connections are dropped before the server's idle timeout would close them: a
    // connection reused just as the server closes it fails the request (connection reset).
    let agent_http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_millis(
            failsmall_server::serve::IDLE_TIMEOUT_MS_DEFAULT / 2,
        ))
        .build()
        .unwrap();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let (base_arc, token_arc): (Arc<str>, Arc<str>) = (base.clone().into(), admin.clone().into());
    for node in 0..agents {
        tokio::spawn(agent(
            agent_http.clone(),
            Arc::clone(&base_arc),
            Arc::clone(&token_arc),
            format!("n{node}"),
            ready_tx.clone(),
            got_tx.clone(),
        ));
        if node % CONNECT_BATCH == CONNECT_BATCH - 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_ready(&mut ready, agents).await;
    if let Some(etcd) = etcd.as_mut() {
        etcd.wait_ready();
    }
    // Every long poll has reached the server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected_kib = server.rss_kib();

    let (mut ours, mut theirs, mut pushes) = (Vec::new(), Vec::new(), Vec::new());
    let mut slowest_reads = Vec::new();
    for round in 0..rounds {
        // failsmall: push, and the push's plan sends it to every node.
        let bytes = content(round);
        let hash = hex::encode(sha2::Sha256::digest(&bytes));
        // The push is sent and timed from a thread and runtime of its own: the agents' tasks
        // (verifying signatures, hashing bundles) must not delay reading its answer.
        let (push_base, push_admin, push_bytes) = (base.clone(), admin.clone(), bytes.clone());
        let (started, push_ms, status) = tokio::task::spawn_blocking(move || {
            push_alone(&push_base, &push_admin, round, push_bytes)
        })
        .await
        .unwrap();
        assert!(status.is_success(), "push: {status}");
        // While the fan-out runs, an operator reads the rollouts every 50 ms, from a thread of
        // its own too: the slowest of those answers.
        let (read_base, read_admin) = (base.clone(), admin.clone());
        let reads = std::thread::spawn(move || operator_reads(&read_base, &read_admin));
        let last = last_of(&mut got, &hash, agents)
            .await
            .unwrap_or_else(|seen| panic!("{seen} of {agents} agents got round {round}"));
        let failsmall_s = last.duration_since(started).as_secs_f64();
        let read_ms = reads.join().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "fanout agents={agents} round={round}: failsmall {failsmall_s:.3} s (push answered in \
             {push_ms:.1} ms; operator reads meanwhile: slowest {read_ms:.1} ms)"
        );
        ours.push(failsmall_s);
        pushes.push(push_ms);
        slowest_reads.push(read_ms);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // etcd: one put of a value as large.
        let Some(etcd) = etcd.as_mut() else {
            continue;
        };
        match etcd.round(round) {
            Ok(etcd_s) => {
                println!("fanout agents={agents} round={round}: etcd {etcd_s:.3} s");
                theirs.push(etcd_s);
            }
            Err(seen) => println!(
                "fanout agents={agents} round={round}: etcd: {seen} of {agents} watchers had the \
                 value after {} s",
                ROUND_TIMEOUT.as_secs()
            ),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The agents are connected again, waiting for the next change.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_kib = server.rss_kib();
    // And once threads started for the fan-out (the blocking pool's, kept 10 s when idle) have
    // ended.
    tokio::time::sleep(Duration::from_secs(SETTLE_S)).await;
    let settled_kib = server.rss_kib();
    let (ours, push, read) = (median(ours), median(pushes), median(slowest_reads));
    let etcd_summary = if etcd.is_none() {
        "etcd left out (FANOUT_ETCD=0)".to_owned()
    } else if theirs.is_empty() {
        format!(
            "etcd finished no round within {} s",
            ROUND_TIMEOUT.as_secs()
        )
    } else {
        let finished = theirs.len();
        let theirs = median(theirs);
        format!(
            "etcd {theirs:.3} s ({finished} rounds finished), ratio failsmall/etcd {:.2}",
            ours / theirs
        )
    };
    let per_agent = connected_kib.saturating_sub(idle_kib) as f64 / agents as f64;
    println!(
        "fanout agents={agents}: median of {rounds} rounds: failsmall {ours:.3} s, {etcd_summary}; push \
         answered in {push:.1} ms (median), operator reads during the fan-out at most {read:.1} ms \
         (median of the rounds' slowest); server RSS idle {idle_kib} KiB, connected \
         {connected_kib} KiB ({per_agent:.1} KiB per agent), after the rounds {after_kib} KiB, {SETTLE_S} s later {settled_kib} KiB"
    );
    drop(server);
}

/// Pushes round `round`'s version on a runtime of its own (a new connection); when it was
/// sent, how long its answer took in milliseconds, and its status.
fn push_alone(
    base: &str,
    admin: &str,
    round: usize,
    bytes: Vec<u8>,
) -> (Instant, f64, reqwest::StatusCode) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let started = Instant::now();
        let response = http
            .post(format!(
                "{base}/v1/units/{UNIT}{round}/versions?message=bench"
            ))
            .bearer_auth(admin)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let _ = response.bytes().await;
        (started, started.elapsed().as_secs_f64() * 1000.0, status)
    })
}

/// Operator reads during a fan-out: `GET /v1/rollouts` every 50 ms for [`OPERATOR_READS`]
/// reads, on a runtime of its own; the slowest answer, in milliseconds.
fn operator_reads(base: &str, admin: &str) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let mut slowest = 0f64;
        for _ in 0..OPERATOR_READS {
            let started = Instant::now();
            let response = http
                .get(format!("{base}/v1/rollouts"))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            let _ = response.bytes().await;
            slowest = slowest.max(started.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slowest
    })
}

/// The etcd side in a child process of its own (this binary in etcd mode), so that each
/// process's open files hold one side's connections: etcd, its watchers, and its rounds on
/// command.
struct EtcdLoad {
    child: Child,
    said: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl EtcdLoad {
    fn start(watchers: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ETCD_MODE_ENV, watchers.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let said = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        Self { child, said }
    }

    fn next_line(&mut self) -> String {
        self.said
            .next()
            .expect("the etcd load process ended")
            .unwrap()
    }

    fn wait_ready(&mut self) {
        assert_eq!(self.next_line(), "ready");
    }

    /// Puts round `round`'s value; seconds until the last watcher had it, or how many had it
    /// when the round's time ran out.
    fn round(&mut self, round: usize) -> Result<f64, usize> {
        let stdin = self.child.stdin.as_mut().unwrap();
        std::io::Write::write_all(stdin, format!("{round}\n").as_bytes()).unwrap();
        std::io::Write::flush(stdin).unwrap();
        let said = self.next_line();
        match said.strip_prefix("timeout ") {
            Some(seen) => Err(seen.parse().unwrap()),
            None => Ok(said.parse().unwrap()),
        }
    }
}

impl Drop for EtcdLoad {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Etcd mode: etcd started, `watchers` watchers connected, `ready` said; then for each round
/// number read on stdin, one put of that round's value and the seconds until the last watcher
/// had it, on stdout.
async fn etcd_load(watchers: usize) {
    let etcd = start_etcd().await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .unwrap();
    let key: Arc<str> = base64::engine::general_purpose::STANDARD
        .encode("fanout")
        .into();
    let base: Arc<str> = etcd.base.clone().into();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (got_tx, mut got) = mpsc::unbounded_channel();
    for index in 0..watchers {
        tokio::spawn(watcher(
            http.clone(),
            Arc::clone(&base),
            Arc::clone(&key),
            ready_tx.clone(),
            got_tx.clone(),
        ));
        if index % CONNECT_BATCH == CONNECT_BATCH - 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_ready(&mut ready, watchers).await;
    println!("ready");
    let mut lines = std::io::BufRead::lines(std::io::stdin().lock());
    while let Some(Ok(line)) = lines.next() {
        let round: usize = line.trim().parse().unwrap();
        let value = base64::engine::general_purpose::STANDARD.encode(content(round));
        let started = Instant::now();
        call(
            &http,
            &etcd.base,
            "",
            reqwest::Method::POST,
            "/v3/kv/put",
            json!({"key": &*key, "value": &value}),
        )
        .await;
        match last_of(&mut got, &value, watchers).await {
            Ok(last) => println!("{}", last.duration_since(started).as_secs_f64()),
            Err(seen) => println!("timeout {seen}"),
        }
    }
    drop(etcd);
}
