//! Staleness reports: an agent whose desired state expired says so (`stale`), then says when it
//! is fresh again (`fresh`); the node's row, the changelog and `/metrics` follow, and bad
//! reports change nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{TestServer, assert_error_shape, fresh_dir};
use failsmall_server::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const INSTANT_PLAN: &str = "name: instant\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 10\n    gates: []\n";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn healthy(unit: &str, version: &str) -> Value {
    let counts = vec![0u64; failsmall_core::health::LATENCY_BUCKETS];
    let sample = json!({"requests": 100, "errors": 0, "latency": {"counts": counts}});
    json!({"kind": "health", "unit": unit, "version": version, "sample": sample})
}

/// A server with node `n7` (region eu) registered with its own agent token.
struct World {
    server: TestServer,
    agent: String,
    /// Removed when dropped, after the fields above that use it.
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(name: &str) -> Self {
        let scratch = fresh_dir(name);
        let server = TestServer::start(scratch.path()).await;
        let agent = server.agent_token("agent-n7", "n7").await;
        let (status, body) = server
            .call(
                Method::PUT,
                "/v1/nodes/n7",
                Some(&agent),
                Some(json!({"labels": {"region": "eu", "cohort": "free"}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Self {
            server,
            agent,
            _dir: scratch,
        }
    }

    async fn report(&self, body: Value) -> (StatusCode, Value) {
        self.server
            .call(
                Method::POST,
                "/v1/nodes/n7/reports",
                Some(&self.agent),
                Some(body),
            )
            .await
    }

    async fn node(&self) -> Value {
        let (status, body) = self.server.admin(Method::GET, "/v1/nodes", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == "n7")
            .cloned()
            .unwrap()
    }

    /// The changelog entries of `kind`.
    async fn entries(&self, kind: &str) -> Vec<Value> {
        let (status, body) = self
            .server
            .admin(Method::GET, "/v1/changelog?limit=1000", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    }

    async fn stale_gauge(&self) -> u64 {
        let (status, body) = self.server.admin(Method::GET, "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        let text = body.as_str().unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("failsmall_nodes_stale "))
            .unwrap_or_else(|| panic!("no failsmall_nodes_stale in {text}"))
            .parse()
            .unwrap()
    }

    /// Nothing says n7 is or was stale.
    async fn assert_never_stale(&self) {
        assert!(self.node().await.get("stale_since_ms").is_none());
        assert!(self.entries("node_stale").await.is_empty());
        assert!(self.entries("node_fresh").await.is_empty());
        assert_eq!(self.stale_gauge().await, 0);
    }
}

#[tokio::test]
async fn stale_then_fresh_set_and_clear_the_node_the_changelog_and_the_metric() {
    let world = World::start("stale-fresh").await;
    world.assert_never_stale().await;
    let since_ms = now_ms() - 90_000;
    let (status, body) = world
        .report(json!({"kind": "stale", "since_ms": since_ms, "seq": 41}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(world.node().await["stale_since_ms"], since_ms);
    assert_eq!(world.stale_gauge().await, 1);
    let stale = world.entries("node_stale").await;
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0]["actor"], "n7");
    let reason = stale[0]["reason"].as_str().unwrap();
    let since_text = failsmall_core::domain::rfc3339_from_ms(since_ms);
    assert_eq!(
        reason,
        format!(
            "node n7 serves stale configuration since {since_text} (desired-state seq 41 expired)"
        )
    );
    // The entry concerns the node: the label filter finds it.
    let (_, eu) = world
        .server
        .admin(Method::GET, "/v1/changelog?label=region=eu", None)
        .await;
    assert!(
        eu["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "node_stale"),
        "{eu}"
    );
    let (_, us) = world
        .server
        .admin(Method::GET, "/v1/changelog?label=region=us", None)
        .await;
    assert!(
        us["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] != "node_stale"),
        "{us}"
    );

    let (status, body) = world
        .report(json!({"kind": "fresh", "stale_ms": 723_456}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(world.node().await.get("stale_since_ms").is_none());
    assert_eq!(world.stale_gauge().await, 0);
    let fresh = world.entries("node_fresh").await;
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!(fresh[0]["actor"], "n7");
    assert_eq!(fresh[0]["reason"], "node n7 fresh again after 12m3s stale");
    // A fresh report for a node that is not stale records nothing.
    let (status, body) = world.report(json!({"kind": "fresh", "stale_ms": 5})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(world.entries("node_fresh").await.len(), 1);
    world.server.stop().await;
}

#[tokio::test]
async fn bad_staleness_reports_are_refused_naming_the_field_and_change_nothing() {
    let world = World::start("stale-bad").await;
    let far_future = now_ms() + 3_600_000;
    let (status, body) = world
        .report(json!({"kind": "stale", "since_ms": far_future, "seq": 1}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error_shape(&body);
    assert_eq!(body["error"]["detail"]["field"], "since_ms", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("since_ms:"),
        "{body}"
    );
    world.assert_never_stale().await;

    let (status, body) = world
        .report(json!({"kind": "fresh", "stale_ms": u64::MAX}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["detail"]["field"], "stale_ms", "{body}");

    for malformed in [
        json!({"kind": "stale", "since_ms": 1}),
        json!({"kind": "stale", "since_ms": -5, "seq": 1}),
        json!({"kind": "stale", "since_ms": "yesterday", "seq": 1}),
        json!({"kind": "fresh"}),
        json!({"kind": "fresh", "stale_ms": 1, "unit": "u"}),
    ] {
        let (status, body) = world.report(malformed.clone()).await;
        assert!(status.is_client_error(), "{malformed}: {status} {body}");
        assert_error_shape(&body);
    }

    // One bad report in a batch: nothing of the batch is stored.
    let batch = json!({"reports": [
        {"kind": "stale", "since_ms": now_ms() - 1000, "seq": 3},
        {"kind": "fresh", "stale_ms": u64::MAX},
    ]});
    let (status, body) = world.report(batch).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("reports[1]: stale_ms:"),
        "{body}"
    );
    let batch = json!({"reports": [
        {"kind": "stale", "since_ms": now_ms() - 1000, "seq": 3},
        {"kind": "applied", "unit": "flags", "version": "zz"},
    ]});
    let (status, body) = world.report(batch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    world.assert_never_stale().await;

    // A node that never registered: 404, never a 5xx.
    let ghost = world.server.agent_token("agent-ghost", "ghost").await;
    let (status, body) = world
        .server
        .call(
            Method::POST,
            "/v1/nodes/ghost/reports",
            Some(&ghost),
            Some(json!({"kind": "stale", "since_ms": 1, "seq": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error_shape(&body);
    world.server.stop().await;
}

#[tokio::test]
async fn a_batch_of_engine_and_staleness_reports_commits_together() {
    let world = World::start("stale-mixed").await;
    let server = &world.server;
    let deployer = server.token("ci", Role::Deployer).await;
    let spec = json!({"format": "json", "max_bytes": 256});
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, v1) = server
        .push("flags", &deployer, "message=one", br#"{"a": 1}"#)
        .await;
    let v1 = v1["hash"].as_str().unwrap().to_owned();
    let (status, view) = server
        .call(
            Method::POST,
            "/v1/rollouts",
            Some(&deployer),
            Some(json!({"unit": "flags", "version": v1, "plan": INSTANT_PLAN, "reason": "t"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let id = view["id"].as_u64().unwrap();
    let since_ms = now_ms() - 5_000;
    let batch = json!({"reports": [
        {"kind": "applied", "unit": "flags", "version": v1},
        {"kind": "stale", "since_ms": since_ms, "seq": 2},
        healthy("flags", &v1),
    ]});
    let (status, body) = world.report(batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 3);
    assert_eq!(world.node().await["stale_since_ms"], since_ms);
    assert_eq!(world.entries("node_stale").await.len(), 1);
    let (_, view) = server
        .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
        .await;
    assert_eq!(view["nodes_applied"], 1, "{view}");
    let (status, body) = world
        .report(json!({"reports": [{"kind": "fresh", "stale_ms": 5_000}, healthy("flags", &v1)]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(world.node().await.get("stale_since_ms").is_none());
    assert_eq!(world.stale_gauge().await, 0);
    world.server.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_staleness_reports_and_the_node() {
    let world = World::start("stale-openapi").await;
    let (status, document) = world
        .server
        .call(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let schemas = &document["components"]["schemas"];
    // One variant per kind, each closed to unknown fields as the server reads it.
    let variants = schemas["Report"]["oneOf"].as_array().unwrap();
    let kinds: Vec<&Value> = variants
        .iter()
        .map(|variant| {
            assert_eq!(variant["additionalProperties"], false, "{variant}");
            &variant["properties"]["kind"]["enum"][0]
        })
        .collect();
    assert!(kinds.contains(&&json!("stale")) && kinds.contains(&&json!("fresh")));
    let stale = variants
        .iter()
        .find(|variant| variant["properties"]["kind"]["enum"][0] == "stale")
        .unwrap();
    assert_eq!(stale["required"], json!(["since_ms", "seq", "kind"]));
    assert!(schemas["Node"]["properties"]["stale_since_ms"].is_object());
    let reports = &document["paths"]["/v1/nodes/{node}/reports"]["post"];
    assert!(reports["requestBody"].is_object(), "{reports}");
    world.server.stop().await;
}

#[tokio::test]
async fn every_agent_request_marks_its_node_seen_and_a_silent_node_reads_as_down() {
    let scratch = fresh_dir("liveness");
    let server =
        TestServer::start_with(scratch.path(), |config| config.node_down_after_ms = 1_000).await;
    let agent = server.agent_token("agent-n7", "n7").await;
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/nodes/n7",
            Some(&agent),
            Some(json!({"labels": {"region": "eu"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = |list: &Value| list["nodes"][0]["last_seen_ms"].as_u64().unwrap();
    let (_, registered) = server.admin(Method::GET, "/v1/nodes", None).await;
    assert_eq!(registered["down_after_ms"], 1_000);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // A watch is a sign of life: seen at once, before the mark is written.
    let (status, _) = server
        .call(Method::GET, "/v1/nodes/n7/desired", Some(&agent), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, watched) = server.admin(Method::GET, "/v1/nodes", None).await;
    assert!(seen(&watched) > seen(&registered), "{watched}");
    // Silent for longer than the threshold: down by the server's own clock.
    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    let (_, silent) = server.admin(Method::GET, "/v1/nodes", None).await;
    let now = silent["now_ms"].as_u64().unwrap();
    assert!(now - seen(&silent) > 1_000, "{silent}");
    // A report brings it back; the mark reaches the store within a flush.
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/nodes/n7/reports",
            Some(&agent),
            Some(json!({"kind": "fresh", "stale_ms": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, back) = server.admin(Method::GET, "/v1/nodes", None).await;
    assert!(
        back["now_ms"].as_u64().unwrap() - seen(&back) < 1_000,
        "{back}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_node_silent_past_the_threshold_is_left_out_of_a_stage_and_joins_when_heard_from() {
    let scratch = fresh_dir("down");
    let server =
        TestServer::start_with(scratch.path(), |config| config.node_down_after_ms = 1_000).await;
    let mut agents = Vec::new();
    for node in ["n1", "n2"] {
        let agent = server.agent_token(&format!("agent-{node}"), node).await;
        let (status, body) = server
            .call(
                Method::PUT,
                &format!("/v1/nodes/{node}"),
                Some(&agent),
                Some(json!({"labels": {"cohort": "free"}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        agents.push(agent);
    }
    let watch = |node: &'static str, agent: String| {
        let request = server.request(
            Method::GET,
            &format!("/v1/nodes/{node}/desired"),
            Some(&agent),
        );
        async move { request.send().await.unwrap().status() }
    };
    // n1's agent keeps asking; n2's says nothing until it is taken for down.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        assert_eq!(watch("n1", agents[0].clone()).await, StatusCode::OK);
        let (_, body) = server
            .admin(Method::GET, "/v1/changelog?limit=100", None)
            .await;
        let down = body["entries"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "node_liveness" && e["reason"].as_str().unwrap().contains("down")
        });
        if down {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "n2 never down: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let spec = json!({"format": "json", "max_bytes": 256});
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, v1) = server
        .push("flags", &server.admin, "message=one", br#"{"a": 1}"#)
        .await;
    let v1 = v1["hash"].as_str().unwrap().to_owned();
    let (status, view) = server
        .admin(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"unit": "flags", "version": v1, "plan": INSTANT_PLAN, "reason": "t"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["nodes_exposed"], 1, "only the live node: {view}");
    let (_, body) = server
        .admin(Method::GET, "/v1/changelog?limit=100", None)
        .await;
    assert!(
        body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "stage_started"
                && e["reason"]
                    .as_str()
                    .unwrap()
                    .contains("left out, down (not heard from): n2")),
        "{body}"
    );
    // n2 is heard from again (its agent asks as a live one does): it joins the rollout.
    let id = view["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        assert_eq!(watch("n2", agents[1].clone()).await, StatusCode::OK);
        let (_, view) = server
            .admin(Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await;
        if view["nodes_exposed"] == 2 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let (_, log) = server
                .admin(Method::GET, "/v1/changelog?limit=100", None)
                .await;
            let lines: Vec<String> = log["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| format!("{} {}", e["kind"], e["reason"]))
                .collect();
            panic!("n2 never joined: {view}\n{lines:#?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}
