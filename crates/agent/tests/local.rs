//! The node side of apply: the local validator command, the post-apply health check (a
//! failure puts back the last known good at once), a consumer's rejection through the local
//! API, and health scraped from the consumer's Prometheus endpoint.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use common::{Agent, Operator, Server, UNIT, agent_config, features, fresh_dir, sha256_hex};
use failsmall_agent::command::LocalCommand;
use failsmall_agent::scrape::MetricNames;
use failsmall_agent::{ConsumerMetrics, UnitLocalConfig};
use failsmall_client::agent::AgentReporter;
use serde_json::json;

const WAIT_MS: u64 = 15_000;
/// One stage that bakes long enough for a consumer to speak up.
/// An instant stage with the plan's post-apply health check.
const CHECKED_PLAN: &str = "name: checked\nsoak: 0s\nhealth_check: { path: /health, expect_status: 200, timeout: 2s }\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 0\n    gates: []\n";
const BAKING_PLAN: &str = "name: baking\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 30s\n    min_requests: 0\n    gates: []\n";

/// A stand-in for the local consumer: a health endpoint with a settable status, and
/// Prometheus counters that grow at every scrape.
#[derive(Default)]
struct Consumer {
    health_status: AtomicU16,
    scrapes: AtomicU64,
}

async fn health(State(consumer): State<Arc<Consumer>>) -> StatusCode {
    StatusCode::from_u16(consumer.health_status.load(Ordering::SeqCst)).unwrap()
}

async fn metrics(State(consumer): State<Arc<Consumer>>) -> String {
    let n = consumer.scrapes.fetch_add(1, Ordering::SeqCst) + 1;
    format!(
        "http_requests_total {}\nhttp_errors_total {}\nhttp_request_duration_seconds_bucket{{le=\"0.01\"}} {}\nhttp_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n",
        n * 100,
        n,
        n * 90,
        n * 100
    )
}

async fn start_consumer() -> (Arc<Consumer>, String) {
    let consumer = Arc::new(Consumer::default());
    consumer.health_status.store(200, Ordering::SeqCst);
    let router = axum::Router::new()
        .route("/health", axum::routing::get(health))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(Arc::clone(&consumer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (consumer, base)
}

struct Node {
    server: Server,
    operator: Operator,
    agent: Agent,
    consumer: Arc<Consumer>,
    v1: Vec<u8>,
    /// Removed when dropped, after the fields above that use it.
    _dir: tempfile::TempDir,
}

/// A node whose agent is connected and has no version yet.
async fn start_empty(name: &str) -> Node {
    let dir_tmp = fresh_dir(name);
    let dir = dir_tmp.path();
    let server = Server::start(&dir.join("server")).await;
    let operator = Operator::new(&server);
    operator.create_unit().await;
    let token = operator.agent_token("n1").await;
    let (consumer, consumer_base) = start_consumer().await;
    let mut config = agent_config(&server.base, &token, "n1", &dir.join("agent"));
    // The consumer's own parser in check mode: refuses any file that mentions BAD.
    let validator = LocalCommand {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            "if grep -q BAD \"$1\"; then echo \"parser: feature BAD is unknown\" >&2; exit 1; fi"
                .into(),
            "validator".into(),
            "{path}".into(),
        ],
        timeout_ms: 5_000,
    };
    let local = UnitLocalConfig {
        validate: Some(validator),
        reload: None,
        // The health check comes from the plan; it is asked of the consumer's URL.
        health_check: None,
    };
    config.units.insert(UNIT.parse().unwrap(), local);
    config.consumer_url = Some(consumer_base.clone());
    config.metrics = Some(ConsumerMetrics {
        url: format!("{consumer_base}/metrics"),
        names: MetricNames::default(),
        interval_ms: 100,
    });
    let agent = Agent::start(config).await;
    agent.wait_status(WAIT_MS, |s| s["connected"] == true).await;
    Node {
        server,
        operator,
        agent,
        consumer,
        v1: features(1),
        _dir: dir_tmp,
    }
}

/// A node running `v1`, its first version.
async fn start(name: &str) -> Node {
    let node = start_empty(name).await;
    let hash = node.operator.push(&node.v1, false).await;
    let id = node.operator.rollout(&hash).await;
    node.operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(node.agent.current().as_deref(), Some(node.v1.as_slice()));
    node
}

async fn wait_current(agent: &Agent, expected: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while agent.current().as_deref() != Some(expected) {
        assert!(tokio::time::Instant::now() < deadline, "never converged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_failed_health_check_puts_back_the_last_known_good_and_reports_it() {
    let node = start("health-check").await;
    // A healthy consumer passes the plan's check.
    let v2 = features(2);
    let hash = node.operator.push(&v2, false).await;
    let id = node.operator.rollout_with(&hash, CHECKED_PLAN).await;
    node.operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(node.agent.current().as_deref(), Some(v2.as_slice()));
    // An unhealthy one fails it: the agent puts back the last known good at once.
    node.consumer.health_status.store(503, Ordering::SeqCst);
    let v3 = features(3);
    let hash = node.operator.push(&v3, false).await;
    let id = node.operator.rollout_with(&hash, CHECKED_PLAN).await;
    node.operator.wait_rollout(id, "rolled_back", WAIT_MS).await;
    node.operator
        .wait_changelog(
            "node_health_check_failed",
            "answered 503; expected 200",
            WAIT_MS,
        )
        .await;
    let status = node
        .agent
        .wait_status(WAIT_MS, |s| !s["units"][UNIT]["last_error"].is_null())
        .await;
    assert_eq!(node.agent.current().as_deref(), Some(v2.as_slice()));
    assert_eq!(status["units"][UNIT]["good"], sha256_hex(&v2).as_str());
    let error = status["units"][UNIT]["last_error"].as_str().unwrap();
    assert!(error.contains("answered 503"), "{error}");
    assert!(error.contains("put back the last known good"), "{error}");
    // Once the consumer is fixed, the same version rolled out again on purpose is applied:
    // a refusal lasts only while the control plane still asks for that version.
    node.consumer.health_status.store(200, Ordering::SeqCst);
    let id = node.operator.rollout_again(&hash, CHECKED_PLAN).await;
    node.operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(node.agent.current().as_deref(), Some(v3.as_slice()));
    node.agent.stop().await;
    node.server.stop().await;
}

#[tokio::test]
async fn a_first_version_that_fails_its_health_check_does_not_stay_active() {
    let node = start_empty("health-check-first").await;
    node.consumer.health_status.store(503, Ordering::SeqCst);
    let hash = node.operator.push(&node.v1, false).await;
    let id = node.operator.rollout_with(&hash, CHECKED_PLAN).await;
    node.operator.wait_rollout(id, "rolled_back", WAIT_MS).await;
    let status = node
        .agent
        .wait_status(WAIT_MS, |s| !s["units"][UNIT]["last_error"].is_null())
        .await;
    let error = status["units"][UNIT]["last_error"].as_str().unwrap();
    assert!(error.contains("removed it from current"), "{error}");
    assert_eq!(node.agent.current(), None, "nothing was active before");
    assert!(status["units"][UNIT]["good"].is_null(), "{status}");
    // Fixed, and rolled out again on purpose: applied.
    node.consumer.health_status.store(200, Ordering::SeqCst);
    let id = node.operator.rollout_again(&hash, CHECKED_PLAN).await;
    node.operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(node.agent.current().as_deref(), Some(node.v1.as_slice()));
    node.agent.stop().await;
    node.server.stop().await;
}

#[tokio::test]
async fn the_local_validator_refuses_what_the_consumer_cannot_parse() {
    let node = start("validator").await;
    let bad = serde_json::to_vec(&json!({"features": [{"name": "BAD"}]})).unwrap();
    let hash = node.operator.push(&bad, false).await;
    let id = node.operator.rollout(&hash).await;
    node.operator.wait_rollout(id, "rolled_back", WAIT_MS).await;
    assert_eq!(node.agent.current().as_deref(), Some(node.v1.as_slice()));
    node.operator
        .wait_changelog("node_rejected", "parser: feature BAD is unknown", WAIT_MS)
        .await;
    node.agent.stop().await;
    node.server.stop().await;
}

/// What this consumer build knows: any feature but `f1`.
struct KnownFeatures(Vec<String>);

impl failsmall_client::UnitValue for KnownFeatures {
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let names: Vec<String> = value["features"]
            .as_array()
            .ok_or("no features array")?
            .iter()
            .filter_map(|f| f["name"].as_str().map(str::to_owned))
            .collect();
        if names.iter().any(|name| name == "f1") {
            return Err("feature f1 is unknown to this build".to_owned());
        }
        Ok(Self(names))
    }
}

fn version_hash(hex: &str) -> failsmall_core::domain::VersionHash {
    hex.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_scraped_and_a_consumer_rejection_reverts_the_version() {
    let node = start("rejection").await;
    // A consumer linked with the client library, fed from the agent's stable path, with
    // rejections reported to the agent's local API.
    let address: std::net::SocketAddr = node
        .agent
        .local_api
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let consumer = Arc::new(
        failsmall_client::Config::<KnownFeatures>::builder(UNIT)
            .reporter(AgentReporter::new(address).with_timeout_ms(2_000))
            .build()
            .unwrap(),
    );
    let current = node.agent.data_dir.join("units").join(UNIT).join("current");
    let watch = consumer.watch_file(current, 10);
    let v1_hash = version_hash(&sha256_hex(&node.v1));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while consumer.source() != Some(failsmall_client::Source::Version(v1_hash)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer never read v1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // v2 names a feature this consumer build does not know. It passes the server's and the
    // agent's validation, reaches the consumer, which refuses it: it keeps serving v1 (fail
    // stale) and tells the agent, which NACKs it; the rollout rolls back during its bake
    // and the node returns to v1.
    let v2 = features(2);
    let hash = node.operator.push(&v2, false).await;
    let id = node.operator.rollout_with(&hash, BAKING_PLAN).await;
    node.operator.wait_rollout(id, "rolled_back", WAIT_MS).await;
    node.operator
        .wait_changelog(
            "node_rejected",
            "feature f1 is unknown to this build",
            WAIT_MS,
        )
        .await;
    wait_current(&node.agent, &node.v1).await;
    assert!(consumer.metrics().rejections >= 1);
    assert_eq!(
        consumer.source(),
        Some(failsmall_client::Source::Version(v1_hash))
    );
    // v3 is fine: while its stage bakes, scraped health reaches the rollout's canary,
    // attributed to v3.
    let v3 = serde_json::to_vec(&json!({"features": [{"name": "f0"}, {"name": "f2"}]})).unwrap();
    let hash = node.operator.push(&v3, false).await;
    let id = node.operator.rollout_with(&hash, BAKING_PLAN).await;
    wait_current(&node.agent, &v3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let view = node.operator.rollout_status(id).await;
        let requests = view["canary"]["sample"]["requests"].as_u64().unwrap_or(0);
        if requests >= 100 {
            assert!(
                view["canary"]["sample"]["errors"].as_u64().unwrap() >= 1,
                "{view}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no health: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while consumer.source() != Some(failsmall_client::Source::Version(version_hash(&hash))) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer never read v3"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(consumer.get().unwrap().value.0, ["f0", "f2"]);
    drop(watch);
    // A malformed rejection is a clear 400.
    let bad = reqwest::Client::new()
        .post(format!(
            "{}/v1/units/{UNIT}/rejections",
            node.agent.local_api
        ))
        .body("{\"version\": \"nothex\", \"reason\": \"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    node.agent.stop().await;
    node.server.stop().await;
}
