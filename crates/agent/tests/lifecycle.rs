//! A version's life on a node, against the real control plane over loopback: on trial while a
//! rollout judges it (the last known good stays the one before), good once it passed; removed
//! when a rollback takes a unit's first version away (and the removal acknowledged); ACKed
//! again when an earlier version is rolled out again; a consumer that dies while a version
//! is on trial reported as a crash at once, which rolls the version back, also when the failure
//! starts after the last stage, during the soak; and a version no node ran never becomes what
//! nodes registering later receive.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Agent, Operator, Server, UNIT, agent_config, features, fresh_dir};
use reqwest::Method;
use serde_json::json;

const WAIT_MS: u64 = 20_000;

/// One stage over every node that bakes for an hour: the rollout stays running (the version
/// on trial) until an operator acts. Any crash fails it at once.
const LONG_PLAN: &str = "name: long
soak: 0s
stages:
  - name: everywhere
    bake: 1h
    timeout: 2h
    min_requests: 0
    silence: 1h
    hard_signals: { rejections: 1, crashes: 1, health_check_failures: 1, silent_nodes: 0 }
    gates: []
";

/// A control plane, the unit, and one agent whose consumer is a real process (`sleep`) known
/// to the agent by its pid file; v1 rolled out and the node's last known good.
struct WithConsumer {
    server: Server,
    operator: Operator,
    agent: Agent,
    consumer: std::process::Child,
    v1_hash: String,
    /// Removed when dropped, after the fields above that use it.
    _dir: tempfile::TempDir,
}

/// A control plane with the unit, and one agent for node `n1`, connected; `adjust` changes
/// the agent's configuration first (given the test's directory).
struct Node {
    server: Server,
    operator: Operator,
    token: String,
    agent: Agent,
    /// Removed when dropped, after the fields above that use it.
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(
        name: &str,
        adjust: impl FnOnce(&mut failsmall_agent::AgentConfig, &std::path::Path),
    ) -> Self {
        let dir = fresh_dir(name);
        let server = Server::start(&dir.path().join("server")).await;
        let operator = Operator::new(&server);
        operator.create_unit().await;
        let token = operator.agent_token("n1").await;
        let mut config = agent_config(&server.base, &token, "n1", &dir.path().join("agent"));
        adjust(&mut config, dir.path());
        let agent = Agent::start(config).await;
        agent.wait_status(WAIT_MS, |s| s["connected"] == true).await;
        Self {
            server,
            operator,
            token,
            agent,
            _dir: dir,
        }
    }
}

impl WithConsumer {
    async fn start(name: &str) -> Self {
        let consumer = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = consumer.id();
        let Node {
            server,
            operator,
            agent,
            _dir: dir,
            ..
        } = Node::start(name, |config, dir| {
            let pid_file = dir.join("consumer.pid");
            std::fs::write(&pid_file, pid.to_string()).unwrap();
            config.liveness.pid_file = Some(pid_file);
        })
        .await;
        let v1_hash = operator.push(&features(1), false).await;
        let id = operator.rollout(&v1_hash).await;
        operator.wait_rollout(id, "completed", WAIT_MS).await;
        agent
            .wait_status(WAIT_MS, |s| s["units"][UNIT]["good"] == v1_hash.as_str())
            .await;
        Self {
            _dir: dir,
            server,
            operator,
            agent,
            consumer,
            v1_hash,
        }
    }
}

async fn command(operator: &Operator, id: u64, command: &str) {
    let (status, body) = operator
        .call(
            Method::POST,
            &format!("/v1/rollouts/{id}/commands"),
            Some(json!({"command": command, "reason": "test"})),
        )
        .await;
    assert!(status.is_success(), "{command}: {status} {body}");
}

#[tokio::test]
async fn a_rolled_back_first_version_leaves_the_node_and_the_removal_is_acknowledged() {
    let Node {
        server,
        operator,
        token,
        agent,
        _dir,
    } = Node::start("removal", |_, _| {}).await;
    let v1 = features(1);
    let hash = operator.push(&v1, false).await;
    let id = operator.rollout_with(&hash, LONG_PLAN).await;
    // Applied and ACKed, but on trial: no last known good yet.
    let status = agent
        .wait_status(WAIT_MS, |s| s["units"][UNIT]["active"] == hash.as_str())
        .await;
    assert_eq!(status["units"][UNIT]["trial"], id, "{status}");
    assert!(status["units"][UNIT]["good"].is_null(), "{status}");
    operator
        .wait_rollout_where(id, WAIT_MS, |v| v["nodes_applied"] == 1)
        .await;
    // A consumer watching the unit hears of the removal.
    let watch = reqwest::Client::new()
        .get(format!(
            "{}/v1/units/{UNIT}/watch?after={hash}&wait_ms=20000",
            agent.local_api
        ))
        .send();
    command(&operator, id, "rollback").await;
    operator.wait_rollout(id, "rolled_back", WAIT_MS).await;
    let watched = watch.await.unwrap();
    assert_eq!(watched.status(), 404);
    let status = agent
        .wait_status(WAIT_MS, |s| s["units"][UNIT]["active"].is_null())
        .await;
    assert!(status["units"][UNIT]["good"].is_null(), "{status}");
    assert_eq!(agent.current(), None, "current is gone");
    operator
        .wait_changelog("node_removed_unit", "removed version", WAIT_MS)
        .await;
    // Acknowledged once: the next documents no longer ask for the removal.
    let desired = operator.desired_as(&token, "n1").await;
    assert!(desired.get("removed").is_none(), "{desired}");
    // A restart does not bring the removed version back.
    let config = agent_config(&server.base, &token, "n1", &agent.data_dir);
    agent.stop().await;
    let agent = Agent::start(config).await;
    agent.wait_status(WAIT_MS, |s| s["connected"] == true).await;
    assert_eq!(agent.current(), None);
    let removals = operator
        .changelog_reasons()
        .await
        .into_iter()
        .filter(|r| r.starts_with("node_removed_unit"))
        .count();
    assert_eq!(removals, 1);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_earlier_version_rolled_out_again_is_acknowledged_for_that_rollout() {
    let Node {
        server,
        operator,
        agent,
        _dir,
        ..
    } = Node::start("again", |_, _| {}).await;
    let (v1, v2, v3) = (features(1), features(2), features(3));
    let mut hashes = Vec::new();
    for version in [&v1, &v2] {
        let hash = operator.push(version, false).await;
        let id = operator.rollout(&hash).await;
        operator.wait_rollout(id, "completed", WAIT_MS).await;
        hashes.push(hash);
    }
    // Back to v1 after v2 completed: the node runs v1 again and ACKs it for this rollout.
    let id = operator.rollout(&hashes[0]).await;
    operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(agent.current().as_deref(), Some(v1.as_slice()));
    // v3 stops half way (aborted: the node keeps it); then v2 again.
    let v3_hash = operator.push(&v3, false).await;
    let id = operator.rollout_with(&v3_hash, LONG_PLAN).await;
    operator
        .wait_rollout_where(id, WAIT_MS, |v| v["nodes_applied"] == 1)
        .await;
    command(&operator, id, "abort").await;
    operator.wait_rollout(id, "aborted", WAIT_MS).await;
    let id = operator.rollout(&hashes[1]).await;
    operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert_eq!(agent.current().as_deref(), Some(v2.as_slice()));
    // And once more the version it already runs: ACKed without being applied again.
    let id = operator.rollout(&hashes[1]).await;
    operator.wait_rollout(id, "completed", WAIT_MS).await;
    let status = agent.status().await;
    assert_eq!(status["units"][UNIT]["good"], hashes[1].as_str());
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_consumer_that_dies_while_a_version_is_on_trial_rolls_it_back_at_once() {
    let WithConsumer {
        _dir,
        server,
        operator,
        agent,
        mut consumer,
        v1_hash,
    } = WithConsumer::start("crash").await;
    let v2 = features(2);
    let v2_hash = operator.push(&v2, false).await;
    let id = operator.rollout_with(&v2_hash, LONG_PLAN).await;
    let status = agent
        .wait_status(WAIT_MS, |s| s["units"][UNIT]["active"] == v2_hash.as_str())
        .await;
    assert_eq!(
        status["units"][UNIT]["good"],
        v1_hash.as_str(),
        "v2 is on trial: v1 stays the last known good"
    );
    consumer.kill().unwrap();
    consumer.wait().unwrap();
    let view = operator.wait_rollout(id, "rolled_back", WAIT_MS).await;
    assert!(
        view["outcome"]
            .as_str()
            .unwrap()
            .contains("consumer crashes"),
        "{view}"
    );
    operator
        .wait_changelog("node_crashed", "consumer down", WAIT_MS)
        .await;
    let status = agent
        .wait_status(WAIT_MS, |s| s["units"][UNIT]["active"] == v1_hash.as_str())
        .await;
    assert!(
        status["consumer_down"]
            .as_str()
            .unwrap()
            .contains("is gone"),
        "{status}"
    );
    // The revert is acknowledged: the control plane shows what the node went back to.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let (_, nodes) = operator.call(Method::GET, "/v1/nodes", None).await;
        if nodes["nodes"][0]["versions"][UNIT]["version"] == v1_hash.as_str() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{nodes}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // v1 is not on trial: the consumer still being down blames no version.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let crashes = operator
        .changelog_reasons()
        .await
        .into_iter()
        .filter(|r| r.starts_with("node_crashed"))
        .count();
    assert_eq!(crashes, 1);
    agent.stop().await;
    server.stop().await;
}

/// One stage that passes as soon as the node ACKs, then an hour of soak.
const SOAK_PLAN: &str = "name: soak
soak: 1h
stages:
  - name: everywhere
    bake: 0s
    min_requests: 0
    silence: 1h
    hard_signals: { rejections: 1, crashes: 1, health_check_failures: 1, silent_nodes: 0 }
    gates: []
";

#[tokio::test]
async fn a_failure_that_starts_after_the_last_stage_is_caught_by_the_soak() {
    let WithConsumer {
        _dir,
        server,
        operator,
        agent,
        mut consumer,
        v1_hash,
    } = WithConsumer::start("soak").await;
    // Every stage passes, and the rollout soaks: the version is still on trial.
    let v2_hash = operator.push(&features(2), false).await;
    let id = operator.rollout_with(&v2_hash, SOAK_PLAN).await;
    let view = operator
        .wait_rollout_where(id, WAIT_MS, |v| v["phase"].get("soaking").is_some())
        .await;
    assert!(
        view["soak_remaining_ms"].as_u64().unwrap() > 3_500_000,
        "{view}"
    );
    let status = agent
        .wait_status(WAIT_MS, |s| s["units"][UNIT]["active"] == v2_hash.as_str())
        .await;
    assert_eq!(status["units"][UNIT]["good"], v1_hash.as_str(), "{status}");
    assert_eq!(status["units"][UNIT]["trial"], id, "{status}");
    // The failure starts late: the soak still rolls the version back, to v1.
    consumer.kill().unwrap();
    consumer.wait().unwrap();
    let view = operator.wait_rollout(id, "rolled_back", WAIT_MS).await;
    assert!(
        view["outcome"]
            .as_str()
            .unwrap()
            .starts_with("rolled back during soak"),
        "{view}"
    );
    agent
        .wait_status(WAIT_MS, |s| s["units"][UNIT]["active"] == v1_hash.as_str())
        .await;
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_version_no_node_ran_never_reaches_a_node_that_registers_later() {
    let dir = fresh_dir("nobody");
    let server = Server::start(&dir.path().join("server")).await;
    let operator = Operator::new(&server);
    operator.create_unit().await;
    // Gated, but with no node registered: the plan ends without evidence for the version.
    let plan = "name: gated\nsoak: 1h\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 0\n    gates: []\n";
    let hash = operator.push(&features(1), false).await;
    let id = operator.rollout_with(&hash, plan).await;
    let view = operator.wait_rollout(id, "completed", WAIT_MS).await;
    assert!(
        operator
            .changelog_reasons()
            .await
            .iter()
            .any(|r| r.contains("completed without a stable version")),
        "{view}"
    );
    let token = operator.agent_token("n1").await;
    let agent = Agent::start(agent_config(
        &server.base,
        &token,
        "n1",
        &dir.path().join("agent"),
    ))
    .await;
    agent.wait_status(WAIT_MS, |s| s["connected"] == true).await;
    let desired = operator.desired_as(&token, "n1").await;
    assert!(desired["units"].get(UNIT).is_none(), "{desired}");
    assert_eq!(agent.current(), None);
    agent.stop().await;
    server.stop().await;
}
