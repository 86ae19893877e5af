//! Rollouts through the server: engine steps persisted with their cause, signed level-triggered
//! desired state, agent reports, automatic rollback, and restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{TestServer, assert_error_shape, fresh_dir};
use failsmall_server::auth::Role;
use failsmall_server::signing::verify_desired;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const INSTANT_PLAN: &str = "name: instant\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 10\n    gates: []\n";

fn healthy(unit: &str, version: &str) -> Value {
    let counts = vec![0u64; failsmall_core::health::LATENCY_BUCKETS];
    let sample = json!({"requests": 100, "errors": 0, "latency": {"counts": counts}});
    json!({"kind": "health", "unit": unit, "version": version, "sample": sample})
}

struct Fleet {
    server: TestServer,
    /// Per node, its agent token.
    agents: std::collections::BTreeMap<String, String>,
    deployer: String,
    public_key: String,
}

impl Fleet {
    async fn start(dir: &std::path::Path) -> Self {
        Self::on(TestServer::start(dir).await).await
    }

    async fn on(server: TestServer) -> Self {
        let mut agents = std::collections::BTreeMap::new();
        for node in ["n1", "n2", "ghost"] {
            let token = server.agent_token(&format!("agent-{node}"), node).await;
            agents.insert(node.to_owned(), token);
        }
        let deployer = server.token("ci", Role::Deployer).await;
        let (_, key) = server
            .call(Method::GET, "/v1/signing-key", None, None)
            .await;
        let public_key = key["public_key"].as_str().unwrap().to_owned();
        Self {
            server,
            agents,
            deployer,
            public_key,
        }
    }

    /// Registers `node` (with its own agent token) in `cohort`.
    async fn register(&self, node: &str, cohort: &str) {
        let labels = json!({"labels": {"cohort": cohort}});
        let (status, body) = self
            .server
            .call(
                Method::PUT,
                &format!("/v1/nodes/{node}"),
                Some(self.agent(node)),
                Some(labels),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// The agent token of `node`.
    fn agent(&self, node: &str) -> &str {
        &self.agents[node]
    }

    /// The node's verified desired state: (seq, units).
    async fn desired(&self, node: &str, query: &str) -> (u64, Value) {
        let path = format!("/v1/nodes/{node}/desired?{query}");
        let (status, body) = self
            .server
            .call(Method::GET, &path, Some(self.agent(node)), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let document = body["document"].as_str().unwrap();
        assert!(verify_desired(
            &self.public_key,
            document,
            body["signature"].as_str().unwrap()
        ));
        let document: Value = serde_json::from_str(document).unwrap();
        assert_eq!(document["node"], node);
        (document["seq"].as_u64().unwrap(), document["units"].clone())
    }

    async fn report(&self, node: &str, report: Value) -> (StatusCode, Value) {
        let path = format!("/v1/nodes/{node}/reports");
        self.server
            .call(Method::POST, &path, Some(self.agent(node)), Some(report))
            .await
    }

    async fn rollout(&self, id: u64) -> Value {
        let (status, view) = self
            .server
            .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        view
    }

    /// Waits, through the desired-state long poll, until the rollout's status is `status`.
    async fn wait_for_status(&self, id: u64, status: &str) -> Value {
        for _ in 0..50 {
            let (seq, _) = self.desired("n1", "").await;
            let view = self.rollout(id).await;
            if view["status"] == status {
                return view;
            }
            self.desired("n1", &format!("after={seq}&wait_ms=2000"))
                .await;
        }
        panic!(
            "rollout {id} never reached {status}: {}",
            self.rollout(id).await
        );
    }

    async fn start_rollout(&self, version: &str) -> (StatusCode, Value) {
        let body =
            json!({"unit": "flags", "version": version, "plan": INSTANT_PLAN, "reason": "test"});
        self.server
            .call(
                Method::POST,
                "/v1/rollouts",
                Some(&self.deployer),
                Some(body),
            )
            .await
    }
}

#[tokio::test]
async fn a_rollout_reaches_nodes_and_a_nack_rolls_it_back_and_quarantines() {
    let dir_tmp = fresh_dir("rollout");
    let dir = dir_tmp.path();
    let fleet = Fleet::start(dir).await;
    let server = &fleet.server;
    for (node, cohort) in [("n1", "employee"), ("n2", "free")] {
        let labels = json!({"labels": {"cohort": cohort}});
        let path = format!("/v1/nodes/{node}");
        let (status, body) = server
            .call(Method::PUT, &path, Some(fleet.agent(node)), Some(labels))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let spec = json!({"format": "json", "max_bytes": 256});
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec})),
        )
        .await;
    let (_, v1) = server
        .push(
            "flags",
            &fleet.deployer,
            "message=one",
            br#"{"kill": false}"#,
        )
        .await;
    let (_, v2) = server
        .push(
            "flags",
            &fleet.deployer,
            "message=two",
            br#"{"kill": true}"#,
        )
        .await;
    let (v1, v2) = (
        v1["hash"].as_str().unwrap().to_owned(),
        v2["hash"].as_str().unwrap().to_owned(),
    );

    let (seq_before, units) = fleet.desired("n1", "").await;
    assert_eq!(units, json!({}));
    let (status, view) = fleet.start_rollout(&v1).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let first = view["id"].as_u64().unwrap();
    let (seq, units) = fleet.desired("n1", "").await;
    assert!(seq > seq_before);
    assert_eq!(units, json!({ "flags": v1 }));
    for node in ["n1", "n2"] {
        let applied = json!({"kind": "applied", "unit": "flags", "version": v1});
        assert_eq!(fleet.report(node, applied).await.0, StatusCode::OK);
        let (status, body) = fleet.report(node, healthy("flags", &v1)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    fleet.wait_for_status(first, "completed").await;
    // Each node's applied version per unit, as it reported it.
    let (_, nodes) = server.admin(Method::GET, "/v1/nodes", None).await;
    for node in nodes["nodes"].as_array().unwrap() {
        assert_eq!(node["versions"]["flags"]["version"], v1.as_str(), "{node}");
        assert!(node["versions"]["flags"]["applied_ms"].is_u64(), "{node}");
    }

    // The second version: one node refuses it, every node goes back to v1, and v2 is quarantined.
    let (status, view) = fleet.start_rollout(&v2).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let second = view["id"].as_u64().unwrap();
    assert_ne!(first, second);
    assert_eq!(fleet.desired("n2", "").await.1, json!({ "flags": v2 }));
    let nack = json!({"kind": "rejected", "unit": "flags", "version": v2, "reason": "kill switch on an execute rule"});
    let (status, body) = fleet.report("n1", nack).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = fleet.wait_for_status(second, "rolled_back").await;
    assert!(view["ended_ms"].is_u64());
    for node in ["n1", "n2"] {
        assert_eq!(
            fleet.desired(node, "").await.1,
            json!({ "flags": v1 }),
            "{node}"
        );
    }
    let (status, refused) = fleet.start_rollout(&v2).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["error"]["code"], "quarantined");

    let (_, log) = server
        .admin(Method::GET, "/v1/changelog?unit=flags&limit=1000", None)
        .await;
    let kinds: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for expected in [
        "rollout_started",
        "completed",
        "node_rejected",
        "rolled_back",
        "quarantined",
    ] {
        assert!(
            kinds.contains(&expected),
            "{expected} missing from {kinds:?}"
        );
    }
    // A rollout's entries carry its id and stage as fields, and filter by rollout.
    let (status, of_second) = server
        .admin(
            Method::GET,
            &format!("/v1/changelog?rollout=r{second}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{of_second}");
    let of_second = of_second["entries"].as_array().unwrap().clone();
    assert!(!of_second.is_empty());
    assert!(
        of_second.iter().all(|e| e["rollout"] == second),
        "{of_second:?}"
    );
    let rolled_back = of_second
        .iter()
        .find(|e| e["kind"] == "rolled_back")
        .unwrap();
    assert_eq!(rolled_back["stage"], "everywhere", "{rolled_back}");
    let (_, by_number) = server
        .admin(
            Method::GET,
            &format!("/v1/changelog?rollout={second}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(by_number["entries"].as_array().unwrap(), &of_second);
    // `/metrics`: every status (zeros too), and the ended rollouts by how they ended.
    let (_, metrics) = server.admin(Method::GET, "/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    for line in [
        "failsmall_rollouts{status=\"running\"} 0",
        "failsmall_rollouts{status=\"completed\"} 1",
        "failsmall_rollouts{status=\"rolled_back\"} 1",
        "failsmall_rollouts_ended_total{outcome=\"completed\"} 1",
        "failsmall_rollouts_ended_total{outcome=\"rolled_back\"} 1",
        "failsmall_rollouts_ended_total{outcome=\"aborted\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    let (status, body) = server
        .admin(Method::GET, "/v1/changelog?rollout=x1", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("r3 or 3")
    );

    // Everything survives a restart: rollouts, desired state, the sequence number.
    let (seq, _) = fleet.desired("n1", "").await;
    let before = (fleet.rollout(first).await, fleet.rollout(second).await);
    let (agents, deployer) = (fleet.agents.clone(), fleet.deployer.clone());
    fleet.server.stop().await;
    let server = TestServer::start(dir).await;
    let (_, key) = server
        .call(Method::GET, "/v1/signing-key", None, None)
        .await;
    let fleet = Fleet {
        server,
        agents,
        deployer,
        public_key: key["public_key"].as_str().unwrap().to_owned(),
    };
    assert_eq!(
        (fleet.rollout(first).await, fleet.rollout(second).await),
        before
    );
    let (seq_after, units) = fleet.desired("n2", "").await;
    assert_eq!(seq_after, seq);
    assert_eq!(units, json!({ "flags": v1 }));
    fleet.server.stop().await;
}

#[tokio::test]
async fn desired_state_long_polls_until_the_engine_moves() {
    let scratch = fresh_dir("watch");
    let fleet = Fleet::start(scratch.path()).await;
    let server = &fleet.server;
    fleet.register("n1", "free").await;
    let (seq, _) = fleet.desired("n1", "").await;
    // Nothing changes: the wait ends at its limit with the same sequence number.
    assert_eq!(
        fleet
            .desired("n1", &format!("after={seq}&wait_ms=50"))
            .await
            .0,
        seq
    );
    // A change that is not about what n1 runs (another node joins) does not wake it.
    let labels = json!({"labels": {"cohort": "pro"}});
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/nodes/n2",
            Some(fleet.agent("n2")),
            Some(labels),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let started = std::time::Instant::now();
    let (quiet, units) = fleet
        .desired("n1", &format!("after={seq}&wait_ms=300"))
        .await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    assert!(quiet > seq, "the sequence number still grows");
    assert_eq!(units, json!({}));
    // A rollout that reaches n1 wakes its watch at once.
    let spec = json!({"format": "json", "max_bytes": 256});
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec})),
        )
        .await;
    let (_, v1) = server
        .push("flags", &fleet.deployer, "message=one", br#"{"a": 1}"#)
        .await;
    let v1 = v1["hash"].as_str().unwrap().to_owned();
    let query = format!("after={quiet}&wait_ms=20000");
    let started = std::time::Instant::now();
    let watch = fleet.desired("n1", &query);
    let change = fleet.start_rollout(&v1);
    let ((next, units), (status, _)) = tokio::join!(watch, change);
    assert_eq!(status, StatusCode::CREATED);
    assert!(next > quiet);
    assert_eq!(units, json!({ "flags": v1 }));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let (status, body) = server
        .call(
            Method::GET,
            "/v1/nodes/n1/desired?wait_ms=30001&after=1",
            Some(fleet.agent("n1")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    fleet.server.stop().await;
}

/// A connected agent never holds an expired document: a long poll ends after half the
/// documents' lifetime at the latest, with a fresh one.
#[tokio::test]
async fn a_long_poll_ends_before_the_document_it_holds_expires() {
    let dir_tmp = fresh_dir("watch-ttl");
    let dir = dir_tmp.path();
    let server = TestServer::start_with(dir, |config| config.desired_ttl_ms = 4_000).await;
    let fleet = Fleet::on(server).await;
    fleet.register("n1", "free").await;
    let (seq, _) = fleet.desired("n1", "").await;
    let started = std::time::Instant::now();
    let path = format!("/v1/nodes/n1/desired?after={seq}&wait_ms=30000");
    let (status, body) = fleet
        .server
        .call(Method::GET, &path, Some(fleet.agent("n1")), None)
        .await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        waited >= std::time::Duration::from_millis(1_900)
            && waited < std::time::Duration::from_millis(3_900),
        "waited {waited:?} for a 4 s lifetime"
    );
    let document: Value = serde_json::from_str(body["document"].as_str().unwrap()).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        document["expires_ms"].as_u64().unwrap() > now_ms + 1_000,
        "{document}"
    );
    fleet.server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_long_polls_at_once() {
    let scratch = fresh_dir("watch-shutdown");
    let fleet = Fleet::start(scratch.path()).await;
    fleet.register("n1", "free").await;
    let (seq, _) = fleet.desired("n1", "").await;
    let path = format!(
        "{}/v1/nodes/n1/desired?after={seq}&wait_ms=30000",
        fleet.server.base
    );
    let watch = fleet
        .server
        .client
        .get(path)
        .bearer_auth(fleet.agent("n1"))
        .send();
    let watching = tokio::spawn(watch);
    // The watch is waiting inside the server before the shutdown starts.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    fleet.server.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "shutdown waited {:?} for a long poll",
        started.elapsed()
    );
    let answer = watching.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
}

#[tokio::test]
async fn rollout_requests_and_reports_refuse_bad_input_with_4xx() {
    let scratch = fresh_dir("rollout-errors");
    let fleet = Fleet::start(scratch.path()).await;
    let server = &fleet.server;
    let approver = server.token("ann", Role::Approver).await;
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": {"format": "raw", "max_bytes": 8}})),
        )
        .await;
    let (_, version) = server
        .push("flags", &fleet.deployer, "message=m", b"on")
        .await;
    let hash = version["hash"].as_str().unwrap();
    let zeros = "0".repeat(64);
    let deployer = Some(fleet.deployer.as_str());
    type Case<'a> = (Method, String, Option<&'a str>, Value, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            Method::POST,
            "/v1/rollouts".into(),
            deployer,
            json!({"unit": "flags", "version": zeros, "plan": INSTANT_PLAN}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/rollouts".into(),
            deployer,
            json!({"unit": "flags", "version": hash, "plan": "name: x\nstages: 7\n"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
        ),
        (
            Method::POST,
            "/v1/rollouts".into(),
            deployer,
            json!({"unit": "flags", "version": "nope", "plan": INSTANT_PLAN}),
            StatusCode::BAD_REQUEST,
            "bad_version_hash",
        ),
        (
            Method::POST,
            "/v1/rollouts".into(),
            deployer,
            json!({"unit": "flags", "version": hash, "plan": INSTANT_PLAN, "override_quarantine": true}),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/rollouts/77/commands".into(),
            deployer,
            json!({"command": "pause"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/rollouts/77/commands".into(),
            deployer,
            json!({"command": "approve"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/rollouts/77/commands".into(),
            deployer,
            json!({"command": "explode"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/rollouts/77/approve".into(),
            Some(approver.as_str()),
            json!({}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/rollouts/77".into(),
            deployer,
            Value::Null,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/rollouts/x".into(),
            deployer,
            Value::Null,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/nodes/ghost/reports".into(),
            Some(fleet.agent("ghost")),
            json!({"kind": "applied", "unit": "flags", "version": hash}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/nodes/ghost/reports".into(),
            Some(fleet.agent("ghost")),
            json!({"kind": "exploded", "unit": "flags", "version": hash}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/nodes/ghost/reports".into(),
            Some(fleet.agent("ghost")),
            json!({"kind": "applied", "unit": "flags", "version": hash, "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/nodes/ghost/desired".into(),
            Some(fleet.agent("ghost")),
            Value::Null,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (index, (method, path, token, body, status, code)) in cases.into_iter().enumerate() {
        let body = if body.is_null() { None } else { Some(body) };
        let (got, answer) = server.call(method, &path, token, body).await;
        assert_eq!(got, status, "case {index}: {answer}");
        assert_error_shape(&answer);
        assert_eq!(answer["error"]["code"], code, "case {index}: {answer}");
    }

    // A finished rollout refuses commands that need it running.
    fleet.register("n1", "free").await;
    let (status, view) = fleet.start_rollout(hash).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let id = view["id"].as_u64().unwrap();
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/v1/rollouts/{id}/commands"),
            deployer,
            Some(json!({"command": "rollback", "reason": "test"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fleet.rollout(id).await["status"], "rolled_back");
    let (status, refused) = server
        .call(
            Method::POST,
            &format!("/v1/rollouts/{id}/commands"),
            deployer,
            Some(json!({"command": "pause"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (_, list) = server.admin(Method::GET, "/v1/rollouts", None).await;
    assert_eq!(list["rollouts"][0]["id"], id);
    let (_, metrics) = server.admin(Method::GET, "/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("failsmall_rollouts{status=\"rolled_back\"} 1\n"),
        "{metrics}"
    );
    fleet.server.stop().await;
}

#[tokio::test]
async fn a_batch_of_reports_is_applied_whole_or_not_at_all() {
    let scratch = fresh_dir("batch");
    let fleet = Fleet::start(scratch.path()).await;
    let server = &fleet.server;
    fleet.register("n1", "free").await;
    let spec = json!({"format": "json", "max_bytes": 256});
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec})),
        )
        .await;
    let (_, v1) = server
        .push("flags", &fleet.deployer, "message=one", br#"{"a": 1}"#)
        .await;
    let v1 = v1["hash"].as_str().unwrap().to_owned();
    let (status, view) = fleet.start_rollout(&v1).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let id = view["id"].as_u64().unwrap();

    // One bad report refuses the whole batch, and names it.
    let bad = json!({"reports": [healthy("flags", &v1), {"kind": "applied", "unit": "flags", "version": "zz"}]});
    let (status, body) = fleet.report("n1", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error_shape(&body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("reports[1]:"),
        "{body}"
    );
    assert_eq!(fleet.rollout(id).await["canary"]["sample"]["requests"], 0);
    for empty in [json!({"reports": []}), json!({"reports": [], "extra": 1})] {
        let (status, body) = fleet.report("n1", empty).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_error_shape(&body);
    }
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"kind": "applied", "unit": "f", "version": "0"}))
        .collect();
    let (status, body) = fleet.report("n1", json!({ "reports": too_many })).await;
    assert!(status.is_client_error(), "{status} {body}");

    // ACK and health in one batch: the rollout completes.
    let batch = json!({"reports": [
        {"kind": "applied", "unit": "flags", "version": v1},
        healthy("flags", &v1),
        healthy("flags", &v1),
    ]});
    let (status, body) = fleet.report("n1", batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 3);
    let view = fleet.wait_for_status(id, "completed").await;
    assert_eq!(view["nodes_applied"], 1);
    fleet.server.stop().await;
}

#[tokio::test]
async fn a_push_starts_a_rollout_of_the_units_plan_or_queues_it() {
    let scratch = fresh_dir("push-plan");
    let fleet = Fleet::start(scratch.path()).await;
    let server = &fleet.server;
    fleet.register("n1", "free").await;
    let spec = json!({"format": "json", "max_bytes": 256});
    let bad = json!({"name": "flags", "spec": spec, "plan": "name: x\nstages: []\n"});
    let (status, body) = server.admin(Method::POST, "/v1/units", Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_plan");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("flags.plan"),
        "{body}"
    );
    let unit = json!({"name": "flags", "spec": spec, "plan": INSTANT_PLAN});
    let (status, body) = server.admin(Method::POST, "/v1/units", Some(unit)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["plan"], INSTANT_PLAN);

    let (status, v1) = server
        .push("flags", &fleet.deployer, "message=one", br#"{"a": 1}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    assert_eq!(v1["rollout"]["status"], "running", "{v1}");
    assert_eq!(v1["rollout"]["actor"], "ci");
    assert_eq!(v1["rollout"]["reason"], "one");
    let hash1 = v1["hash"].as_str().unwrap().to_owned();
    let (_, units) = fleet.desired("n1", "").await;
    assert_eq!(units, json!({ "flags": hash1 }));
    // The same bytes again: the stored version, and no second rollout.
    let (status, again) = server
        .push("flags", &fleet.deployer, "message=one", br#"{"a": 1}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert!(again.get("rollout").is_none(), "{again}");
    // A second version waits behind the running rollout.
    let (status, v2) = server
        .push("flags", &fleet.deployer, "message=two", br#"{"a": 2}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");
    assert_eq!(v2["rollout"]["status"], "queued", "{v2}");
    let (_, list) = server.admin(Method::GET, "/v1/rollouts", None).await;
    assert_eq!(list["rollouts"].as_array().unwrap().len(), 2);
    // The push is recorded before the rollout it started.
    let (_, log) = server
        .admin(Method::GET, "/v1/changelog?unit=flags", None)
        .await;
    let kinds: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let pushed = kinds.iter().position(|k| *k == "version_pushed").unwrap();
    let started = kinds.iter().position(|k| *k == "rollout_started").unwrap();
    assert!(pushed < started, "{kinds:?}");
    fleet.server.stop().await;
}

#[tokio::test]
async fn a_unit_created_while_an_agent_waits_reaches_it_in_that_wait() {
    let scratch = fresh_dir("watch-new-unit");
    let fleet = Fleet::start(scratch.path()).await;
    let server = &fleet.server;
    fleet.register("n1", "free").await;
    let (seq, units) = fleet.desired("n1", "").await;
    assert_eq!(units, json!({}));
    // The agent is already waiting when the unit is created, pushed and rolled out.
    let query = format!("after={seq}&wait_ms=20000");
    let watch = fleet.desired("n1", &query);
    let change = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let spec = json!({"format": "json", "max_bytes": 256});
        server
            .admin(
                Method::POST,
                "/v1/units",
                Some(json!({"name": "flags", "spec": spec})),
            )
            .await;
        let (_, version) = server
            .push("flags", &fleet.deployer, "message=one", br#"{"a": 1}"#)
            .await;
        let version = version["hash"].as_str().unwrap().to_owned();
        let (status, _) = fleet.start_rollout(&version).await;
        (status, version)
    };
    let started = std::time::Instant::now();
    let ((next, units), (status, version)) = tokio::join!(watch, change);
    assert_eq!(status, StatusCode::CREATED);
    assert!(next > seq);
    assert_eq!(units, json!({ "flags": version }));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    fleet.server.stop().await;
}
