//! The agent against the real control plane: apply and ACK; a version that fails validation,
//! a corrupted blob (a transport fault, retried), a wrong signature and a replayed document
//! (untrusted) each refused with the last
//! known good kept and the reason reported; the control plane down and back; the desired
//! state expiring while it is down, reported stale then fresh.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{
    Agent, Mode, Operator, Proxy, Server, UNIT, agent_config, features, fresh_dir, sha256_hex,
};

const WAIT_MS: u64 = 15_000;

/// A control plane whose desired-state documents stay fresh for `desired_ttl_ms`.
struct ShortLivedServer {
    base: String,
    admin: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), failsmall_server::ServerError>>,
}

impl ShortLivedServer {
    async fn start(data_dir: &std::path::Path, desired_ttl_ms: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut config = failsmall_server::ServerConfig::new(data_dir, address);
        config.desired_ttl_ms = desired_ttl_ms;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(failsmall_server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let base = format!("http://{address}");
        let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
        let admin = std::fs::read_to_string(data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            base,
            admin,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn agent_token(&self, node: &str) -> String {
        let body: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v1/tokens", self.base))
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({"name": format!("agent-{node}"), "role": "agent", "node": node}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    /// Waits until `node`'s record satisfies `check`; returns it.
    async fn wait_node(
        &self,
        node: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(WAIT_MS);
        loop {
            let nodes = self.get("/v1/nodes").await;
            if let Some(found) = nodes["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == node)
                && check(found)
            {
                return found.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {node} never matched: {nodes}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The changelog entries of `kind`.
    async fn entries(&self, kind: &str) -> Vec<serde_json::Value> {
        let log = self.get("/v1/changelog?limit=1000").await;
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    }
}

/// A proxy in front of the control plane that can hold back desired-state documents (502)
/// while it forwards everything else, reports among them.
#[derive(Clone)]
struct Gate {
    base: String,
    upstream: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    hold_desired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Self {
            base: format!("http://{}", listener.local_addr().unwrap()),
            upstream: std::sync::Arc::new(std::sync::Mutex::new(Some(upstream.to_owned()))),
            hold_desired: std::sync::Arc::default(),
        };
        let router = axum::Router::new()
            .fallback(Self::forward)
            .with_state(gate.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        gate
    }

    fn set_upstream(&self, upstream: Option<&str>) {
        *self.upstream.lock().unwrap() = upstream.map(str::to_owned);
    }

    fn hold_desired(&self, hold: bool) {
        self.hold_desired
            .store(hold, std::sync::atomic::Ordering::SeqCst);
    }

    async fn forward(
        axum::extract::State(gate): axum::extract::State<Gate>,
        request: axum::extract::Request,
    ) -> (axum::http::StatusCode, Vec<u8>) {
        let bad_gateway = axum::http::StatusCode::BAD_GATEWAY;
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let upstream = gate.upstream.lock().unwrap().clone();
        let held = path.contains("/desired")
            && gate.hold_desired.load(std::sync::atomic::Ordering::SeqCst);
        let Some(upstream) = upstream.filter(|_| !held) else {
            return (bad_gateway, b"held".to_vec());
        };
        let method = request.method().clone();
        let headers = request.headers().clone();
        let body = axum::body::to_bytes(request.into_body(), 1024 * 1024)
            .await
            .unwrap();
        let mut outgoing = reqwest::Client::new()
            .request(method, format!("{upstream}{path}"))
            .body(body);
        for (name, value) in &headers {
            if name != "host" && name != "content-length" {
                outgoing = outgoing.header(name, value);
            }
        }
        let Ok(response) = outgoing.send().await else {
            return (bad_gateway, b"unreachable".to_vec());
        };
        let status = axum::http::StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.bytes().await.unwrap_or_default().to_vec())
    }
}

/// A server, a proxy in front of it, the unit, and one agent (node `n1`) that applied `v1`.
struct World {
    server: Server,
    proxy: Proxy,
    operator: Operator,
    agent: Agent,
    v1: Vec<u8>,
    /// Removed when dropped, after the fields above that use it.
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(name: &str) -> Self {
        let dir_tmp = fresh_dir(name);
        let dir = dir_tmp.path();
        let server = Server::start(&dir.join("server")).await;
        let proxy = Proxy::start(Some(&server.base)).await;
        let operator = Operator::new(&server);
        operator.create_unit().await;
        let token = operator.agent_token("n1").await;
        let agent = Agent::start(agent_config(&proxy.base, &token, "n1", &dir.join("agent"))).await;
        // Registered before the rollout starts, so its first stage selects the node.
        agent.wait_status(WAIT_MS, |s| s["connected"] == true).await;
        let v1 = features(1);
        let hash = operator.push(&v1, false).await;
        let id = operator.rollout(&hash).await;
        operator.wait_rollout(id, "completed", WAIT_MS).await;
        assert_eq!(agent.current().as_deref(), Some(v1.as_slice()));
        // The last known good once the node hears that no rollout judges v1 any more.
        let v1_hash = sha256_hex(&v1);
        agent
            .wait_status(WAIT_MS, |s| s["units"][UNIT]["good"] == v1_hash.as_str())
            .await;
        Self {
            server,
            proxy,
            operator,
            agent,
            v1,
            _dir: dir_tmp,
        }
    }

    /// Rolls `content` out and waits for the agent to refuse it: the rollout rolls back, the
    /// last known good stays active, and the changelog has the agent's reason.
    async fn refused(&self, content: &[u8], skip: bool, reason: &str) {
        let hash = self.operator.push(content, skip).await;
        let id = self.operator.rollout(&hash).await;
        self.operator.wait_rollout(id, "rolled_back", WAIT_MS).await;
        assert_eq!(self.agent.current().as_deref(), Some(self.v1.as_slice()));
        let reasons = self.operator.changelog_reasons().await;
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("node_rejected") && r.contains(reason)),
            "no NACK with {reason:?} in {reasons:#?}"
        );
        let status = self.agent.status().await;
        let good = status["units"][UNIT]["good"].as_str().unwrap().to_owned();
        assert_eq!(good, sha256_hex(&self.v1));
        assert!(
            status["refusals"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains(reason)),
            "{status}"
        );
    }
}

#[tokio::test]
async fn applies_acks_and_serves_the_version_locally() {
    let world = World::start("apply").await;
    let agent = &world.agent;
    let v1_hash = sha256_hex(&world.v1);
    let status = agent.status().await;
    assert_eq!(status["units"][UNIT]["active"], v1_hash.as_str());
    assert_eq!(status["units"][UNIT]["good"], v1_hash.as_str());
    assert_eq!(status["connected"], true);
    assert_eq!(status["stale"], false);
    // The local API serves the bytes and their version.
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/v1/units/{UNIT}", agent.local_api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-failsmall-version"], v1_hash.as_str());
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        world.v1.as_slice()
    );
    // A watch waits for the next version, then returns it.
    let watch = http
        .get(format!(
            "{}/v1/units/{UNIT}/watch?after={v1_hash}&wait_ms=20000",
            agent.local_api
        ))
        .send();
    let v2 = features(2);
    let v2_hash = world.operator.push(&v2, false).await;
    let id = world.operator.rollout(&v2_hash).await;
    let watched = watch.await.unwrap();
    assert_eq!(watched.status(), 200);
    assert_eq!(watched.headers()["x-failsmall-version"], v2_hash.as_str());
    assert_eq!(watched.bytes().await.unwrap().as_ref(), v2.as_slice());
    world.operator.wait_rollout(id, "completed", WAIT_MS).await;
    let versions = agent.data_dir.join("units").join(UNIT).join("versions");
    assert!(versions.join(&v1_hash).exists() && versions.join(&v2_hash).exists());
    // Nothing new: the watch times out with 304.
    let idle = http
        .get(format!(
            "{}/v1/units/{UNIT}/watch?after={v2_hash}&wait_ms=50",
            agent.local_api
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(idle.status(), 304);
    world.agent.stop().await;
    world.server.stop().await;
}

#[tokio::test]
async fn a_version_that_fails_validation_is_refused_and_the_good_one_kept() {
    let world = World::start("invalid").await;
    // Four features break the unit's limit of three; the server's check is skipped, the
    // agent's (the same code) is not.
    world.refused(&features(4), true, "validation failed").await;
    world.agent.stop().await;
    world.server.stop().await;
}

#[tokio::test]
async fn a_corrupted_blob_is_a_transport_fault_retried_never_the_versions_nack() {
    let world = World::start("corrupt").await;
    world.proxy.set_mode(Mode::CorruptBlobs);
    let v2 = features(2);
    let hash = world.operator.push(&v2, false).await;
    let id = world.operator.rollout(&hash).await;
    // Reported as what it is, once: the version is not blamed and the rollout waits.
    world
        .operator
        .wait_changelog("node_fetch_failed", "bundle hash mismatch", WAIT_MS)
        .await;
    assert_eq!(world.agent.current().as_deref(), Some(world.v1.as_slice()));
    let view = world.operator.rollout_status(id).await;
    assert_eq!(view["status"], "running", "{view}");
    assert_eq!(view["canary"]["rejections"], 0, "{view}");
    let reasons = world.operator.changelog_reasons().await;
    assert!(
        !reasons.iter().any(|r| r.starts_with("node_rejected")),
        "{reasons:#?}"
    );
    // The agent fetches again on its own; once the transport is sound the same rollout
    // completes with the same version.
    world.proxy.set_mode(Mode::Pass);
    world.operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(world.agent.current().as_deref(), Some(v2.as_slice()));
    let fetch_failures = world
        .operator
        .changelog_reasons()
        .await
        .into_iter()
        .filter(|r| r.starts_with("node_fetch_failed"))
        .count();
    assert_eq!(fetch_failures, 1, "reported once per version and run");
    world.agent.stop().await;
    world.server.stop().await;
}

#[tokio::test]
async fn a_document_with_a_wrong_signature_is_refused_and_the_good_one_kept() {
    let world = World::start("signature").await;
    world.proxy.set_mode(Mode::TamperDocuments);
    // The forged document names a version nobody pushed; the agent refuses it and reports
    // it as untrusted, blaming no version. The real rollout never gets an ACK.
    let v2 = features(2);
    let hash = world.operator.push(&v2, false).await;
    let id = world.operator.rollout(&hash).await;
    let status = world
        .agent
        .wait_status(WAIT_MS, |s| {
            s["refusals"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains("signature does not verify"))
        })
        .await;
    assert_eq!(
        status["units"][UNIT]["active"],
        sha256_hex(&world.v1).as_str()
    );
    assert_eq!(world.agent.current().as_deref(), Some(world.v1.as_slice()));
    world
        .operator
        .wait_changelog("node_untrusted", "signature does not verify", WAIT_MS)
        .await;
    assert_eq!(world.operator.rollout_status(id).await["nodes_applied"], 0);
    // The same rollout converges once the documents are genuine again.
    world.proxy.set_mode(Mode::Pass);
    world.operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(world.agent.current().as_deref(), Some(v2.as_slice()));
    world.agent.stop().await;
    world.server.stop().await;
}

#[tokio::test]
async fn a_replayed_older_document_is_refused_and_the_newer_version_kept() {
    let world = World::start("replay").await;
    // The proxy records every genuine document, among them one naming v1.
    let v2 = features(2);
    let hash = world.operator.push(&v2, false).await;
    let id = world.operator.rollout(&hash).await;
    world.operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(world.agent.current().as_deref(), Some(v2.as_slice()));
    // Now an attacker replays the old, validly signed document.
    world.proxy.set_mode(Mode::Replay(sha256_hex(&world.v1)));
    let status = world
        .agent
        .wait_status(WAIT_MS, |s| {
            s["refusals"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains("replay refused"))
        })
        .await;
    assert_eq!(status["units"][UNIT]["active"], hash.as_str());
    assert_eq!(world.agent.current().as_deref(), Some(v2.as_slice()));
    world
        .operator
        .wait_changelog("node_untrusted", "replay refused", WAIT_MS)
        .await;
    world.agent.stop().await;
    world.server.stop().await;
}

#[tokio::test]
async fn the_agent_keeps_serving_while_the_server_is_down_and_converges_after() {
    let world = World::start("down").await;
    let World {
        server,
        proxy,
        operator,
        agent,
        v1,
        _dir,
    } = world;
    let data_dir = server.data_dir.clone();
    server.stop().await;
    proxy.set_upstream(None);
    agent
        .wait_status(WAIT_MS, |s| s["connected"] == false)
        .await;
    assert_eq!(agent.current().as_deref(), Some(v1.as_slice()));
    // A restarted agent with the server still down serves what is on disk.
    let agent_dir = agent.data_dir.clone();
    agent.stop().await;
    let token = operator.agent_token_offline();
    let agent = Agent::start(agent_config(&proxy.base, &token, "n1", &agent_dir)).await;
    let status = agent
        .wait_status(WAIT_MS, |s| !s["units"][UNIT]["active"].is_null())
        .await;
    assert_eq!(status["units"][UNIT]["active"], sha256_hex(&v1).as_str());
    let served = reqwest::get(format!("{}/v1/units/{UNIT}", agent.local_api))
        .await
        .unwrap();
    assert_eq!(served.bytes().await.unwrap().as_ref(), v1.as_slice());
    // The server comes back (new address, same data): the agent reconnects and converges.
    let server = Server::start(&data_dir).await;
    proxy.set_upstream(Some(&server.base));
    let operator = Operator::new(&server);
    let v2 = features(3);
    let hash = operator.push(&v2, false).await;
    let id = operator.rollout(&hash).await;
    operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(agent.current().as_deref(), Some(v2.as_slice()));
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_idle_node_is_not_silent_through_a_long_bake() {
    let world = World::start("silence").await;
    // The stage bakes 1.5 s and takes a node with no report for 400 ms for silent (a hard
    // signal). The agent has no consumer metrics: it still reports every 100 ms.
    let plan = "name: watchful\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 1500ms\n    silence: 400ms\n    min_requests: 0\n    gates: []\n";
    let v2 = features(2);
    let hash = world.operator.push(&v2, false).await;
    let id = world.operator.rollout_with(&hash, plan).await;
    let view = world.operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(view["canary"]["silent_nodes"], 0, "{view}");
    assert_eq!(world.agent.current().as_deref(), Some(v2.as_slice()));
    world.agent.stop().await;
    world.server.stop().await;
}

#[tokio::test]
async fn a_desired_state_that_expires_while_the_server_is_down_is_reported_stale_then_fresh() {
    // Documents stay fresh 2 s; the agent asks again every 300 ms while connected.
    const TTL_MS: u64 = 2_000;
    let dir_tmp = fresh_dir("stale");
    let dir = dir_tmp.path();
    let server_dir = dir.join("server");
    let server = ShortLivedServer::start(&server_dir, TTL_MS).await;
    let gate = Gate::start(&server.base).await;
    let token = server.agent_token("n1").await;
    let mut config = agent_config(&gate.base, &token, "n1", &dir.join("agent"));
    config.watch_wait_ms = 300;
    let agent = Agent::start(config).await;
    agent
        .wait_status(WAIT_MS, |s| {
            s["connected"] == true && s["seq"].as_u64() > Some(0)
        })
        .await;
    // Connected, the documents renew: fresh over more than a lifetime.
    tokio::time::sleep(std::time::Duration::from_millis(TTL_MS + 500)).await;
    assert_eq!(agent.status().await["stale"], false);
    assert!(server.entries("node_stale").await.is_empty());

    // The server is down for longer than a lifetime: the agent turns stale.
    server.stop().await;
    gate.set_upstream(None);
    let status = agent.wait_status(WAIT_MS, |s| s["stale"] == true).await;
    let since_ms = status["stale_since_ms"].as_u64().unwrap();
    assert_eq!(Some(since_ms), status["expires_ms"].as_u64(), "{status}");

    // The server returns but documents are held back: the stale report queued while it was
    // down arrives, and the node's record shows it.
    let server = ShortLivedServer::start(&server_dir, TTL_MS).await;
    gate.hold_desired(true);
    gate.set_upstream(Some(&server.base));
    server
        .wait_node("n1", |n| n["stale_since_ms"] == since_ms)
        .await;
    let stale = server.entries("node_stale").await;
    assert_eq!(stale.len(), 1, "{stale:?}");
    let reason = stale[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("node n1 serves stale configuration since")
            && reason.contains(&format!("(desired-state seq {} expired)", status["seq"])),
        "{reason}"
    );
    assert_eq!(agent.status().await["stale"], true);

    // Documents flow again: the agent is fresh, says so, and the record is cleared.
    gate.hold_desired(false);
    agent.wait_status(WAIT_MS, |s| s["stale"] == false).await;
    server
        .wait_node("n1", |n| n.get("stale_since_ms").is_none())
        .await;
    let fresh = server.entries("node_fresh").await;
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(
        fresh[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("node n1 fresh again after"),
        "{fresh:?}"
    );
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_agent_listing_two_servers_fails_over_when_the_first_breaks() {
    let dir_tmp = fresh_dir("failover");
    let dir = dir_tmp.path();
    let server = Server::start(&dir.join("server")).await;
    // Two ways to the same control plane (as two servers of it, or two relays would be).
    let first = Proxy::start(Some(&server.base)).await;
    let second = Proxy::start(Some(&server.base)).await;
    let operator = Operator::new(&server);
    operator.create_unit().await;
    let token = operator.agent_token("n1").await;
    let servers = format!("{},{}", first.base, second.base);
    let agent = Agent::start(agent_config(&servers, &token, "n1", &dir.join("agent"))).await;
    agent.wait_status(WAIT_MS, |s| s["connected"] == true).await;
    let v1 = features(1);
    let id = operator.rollout(&operator.push(&v1, false).await).await;
    operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(agent.current().as_deref(), Some(v1.as_slice()));
    assert_eq!(
        second.requests(),
        0,
        "the second server is not used while the first works"
    );

    // The first breaks (it answers 502): the agent goes on through the second.
    first.set_upstream(None);
    let v2 = features(2);
    let id = operator.rollout(&operator.push(&v2, false).await).await;
    operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(agent.current().as_deref(), Some(v2.as_slice()));
    assert!(second.requests() > 0);
    agent.stop().await;
    server.stop().await;
}

#[test]
fn an_agent_refuses_a_server_list_with_a_url_that_is_not_http() {
    let mut config = agent_config(
        "http://127.0.0.1:1,ftp://x",
        "t",
        "n1",
        std::path::Path::new("/tmp/none"),
    );
    let refused = config.validate().unwrap_err().to_string();
    assert!(
        refused.contains("\"ftp://x\" is not an http:// or https:// URL"),
        "{refused}"
    );
    config.server_url = " , ".into();
    let refused = config.validate().unwrap_err().to_string();
    assert!(refused.contains("names no server"), "{refused}");
}
