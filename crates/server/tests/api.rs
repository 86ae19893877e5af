//! The control plane's HTTP API, end to end: a real server on 127.0.0.1:0 in this process,
//! a real HTTP client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{
    MAX_BODY_BYTES, TestServer, assert_documented, assert_error_shape, features, fresh_dir,
};
use failsmall_server::api::route_table;
use failsmall_server::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The check every test's answers go through (`common::assert_documented`) refuses an
/// answer unlike its route's schema, so the suite's passing says the answers match the
/// document.
#[test]
fn an_answer_unlike_its_schema_is_refused() {
    assert_documented(
        &Method::GET,
        "/healthz",
        StatusCode::OK,
        &json!({"status": "ok", "schema_version": 3}),
    );
    for wrong in [
        json!({"status": "ok"}),
        json!({"status": "ok", "schema_version": "3"}),
    ] {
        let refused = std::panic::catch_unwind(|| {
            assert_documented(&Method::GET, "/healthz", StatusCode::OK, &wrong);
        });
        assert!(refused.is_err(), "{wrong} passed as a health answer");
    }
    let rollout_list = json!({"rollouts": [{"id": 1}], "next": null});
    let refused = std::panic::catch_unwind(|| {
        assert_documented(
            &Method::GET,
            "/v1/rollouts?limit=5",
            StatusCode::OK,
            &rollout_list,
        );
    });
    assert!(refused.is_err(), "a rollout without its fields passed");
}

#[tokio::test]
async fn units_are_created_listed_shown_and_updated_with_revision_checks() {
    let scratch = fresh_dir("units");
    let server = TestServer::start(scratch.path()).await;
    server.create_features_unit("bot-features").await;
    let (status, list) = server.admin(Method::GET, "/v1/units", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["units"][0]["name"], "bot-features");
    let (status, unit) = server
        .admin(Method::GET, "/v1/units/bot-features", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (unit["revision"].as_u64(), unit["owner"].as_str()),
        (Some(1), Some("bots"))
    );

    let spec = json!({"format": "json", "max_bytes": 8192});
    let update = json!({"revision": 1, "spec": spec, "description": "bigger"});
    let (status, updated) = server
        .admin(Method::PUT, "/v1/units/bot-features", Some(update.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["revision"], 2);
    let (status, conflict) = server
        .admin(Method::PUT, "/v1/units/bot-features", Some(update))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error_shape(&conflict);
    assert_eq!(conflict["error"]["detail"]["current_revision"], 2);
    let (_, unit) = server
        .admin(Method::GET, "/v1/units/bot-features", None)
        .await;
    assert_eq!(unit["spec"]["max_bytes"], 8192);

    let (status, duplicate) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "bot-features", "spec": spec})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(duplicate["error"]["code"], "already_exists");
    let bad_spec = json!({"name": "raw", "spec": {"format": "raw", "max_bytes": 0}});
    let (status, refused) = server
        .admin(Method::POST, "/v1/units", Some(bad_spec))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["error"]["code"], "invalid_spec");
    server.stop().await;
}

#[tokio::test]
async fn push_validates_before_storing_and_signs() {
    let scratch = fresh_dir("push");
    let server = TestServer::start(scratch.path()).await;
    server.create_features_unit("bot-features").await;
    let deployer = server.token("ci", Role::Deployer).await;

    let (status, version) = server
        .push("bot-features", &deployer, "message=first", &features(2))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{version}");
    assert_eq!(version["author"], "ci");
    assert_eq!(version["seq"], 1);
    let (_, key) = server
        .call(Method::GET, "/v1/signing-key", None, None)
        .await;
    assert!(failsmall_server::signing::verify_version(
        key["public_key"].as_str().unwrap(),
        "bot-features",
        version["hash"].as_str().unwrap(),
        version["signature"].as_str().unwrap()
    ));
    let (status, again) = server
        .push("bot-features", &deployer, "message=again", &features(2))
        .await;
    assert_eq!((status, &again["hash"]), (StatusCode::OK, &version["hash"]));

    // Too many entries and a duplicate name: both reasons, nothing stored.
    let mut bad = features(4);
    bad.truncate(bad.len() - 2);
    bad.extend_from_slice(br#",{"name":"f0"}]}"#);
    let (status, refused) = server
        .push("bot-features", &deployer, "message=bad", &bad)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "validation_failed");
    let messages: Vec<&str> = refused["error"]["detail"]["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.contains(&"features: 5 entries, limit 3"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("duplicates entry 0")),
        "{messages:?}"
    );
    let (_, versions) = server
        .admin(Method::GET, "/v1/units/bot-features/versions", None)
        .await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
    let bad_hash = failsmall_core::domain::VersionHash::of(&bad).to_string();
    let (status, _) = server
        .admin(Method::GET, &format!("/v1/blobs/{bad_hash}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Only an admin may skip validation, and it is recorded.
    let (status, _) = server
        .push(
            "bot-features",
            &deployer,
            "message=force&skip_validation=true",
            &bad,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let admin = server.admin.clone();
    let (status, forced) = server
        .push(
            "bot-features",
            &admin,
            "message=force&skip_validation=true",
            &bad,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{forced}");
    assert_eq!(forced["validation_skipped"], true);
    assert_eq!(forced["parent"], version["hash"]);
    let (_, log) = server
        .admin(Method::GET, "/v1/changelog?unit=bot-features", None)
        .await;
    let kinds: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "unit_created",
            "version_pushed",
            "push_refused",
            "version_pushed",
            "validation_skipped"
        ]
    );
    let skipped = &log["entries"][4]["reason"];
    assert!(
        skipped
            .as_str()
            .unwrap()
            .contains("features: 5 entries, limit 3"),
        "{skipped}"
    );

    // A stale parent is a conflict.
    let query = format!("message=late&parent={}", version["hash"].as_str().unwrap());
    let (status, _) = server
        .push("bot-features", &deployer, &query, &features(1))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    server.stop().await;
}

#[tokio::test]
async fn versions_diff_and_blobs_are_served_with_cache_headers() {
    let scratch = fresh_dir("blobs");
    let server = TestServer::start(scratch.path()).await;
    let admin = server.admin.clone();
    let spec = json!({"format": "yaml", "max_bytes": 1024});
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "waf", "spec": spec})),
        )
        .await;
    let (_, v1) = server
        .push("waf", &admin, "message=one", b"rules:\n  - a\n  - b\n")
        .await;
    let (_, v2) = server
        .push("waf", &admin, "message=two", b"rules:\n  - a\n  - c\n")
        .await;
    let (h1, h2) = (v1["hash"].as_str().unwrap(), v2["hash"].as_str().unwrap());

    let (status, shown) = server
        .admin(Method::GET, &format!("/v1/units/waf/versions/{h2}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (shown["message"].as_str(), shown["parent"].as_str()),
        (Some("two"), Some(h1))
    );
    let (status, diff) = server
        .admin(
            Method::GET,
            &format!("/v1/units/waf/diff?from={h1}&to={h2}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let diff = diff.as_str().unwrap();
    assert!(
        diff.contains("-  - b\n") && diff.contains("+  - c\n"),
        "{diff}"
    );

    let response = server
        .request(Method::GET, &format!("/v1/blobs/{h1}"), Some(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(headers["etag"], format!("\"{h1}\"").as_str());
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        b"rules:\n  - a\n  - b\n"
    );
    let cached = server
        .request(Method::GET, &format!("/v1/blobs/{h1}"), Some(&admin))
        .header("if-none-match", format!("\"{h1}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    let zeros = "0".repeat(64);
    for (path, expected) in [
        (format!("/v1/blobs/{zeros}"), StatusCode::NOT_FOUND),
        ("/v1/blobs/not-a-hash".to_owned(), StatusCode::BAD_REQUEST),
        (
            format!("/v1/units/waf/versions/{zeros}"),
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/units/waf/versions/xyz".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v1/units/nope/versions/{h1}"),
            StatusCode::NOT_FOUND,
        ),
        ("/v1/units/nope".to_owned(), StatusCode::NOT_FOUND),
        ("/v1/units/bad%20name".to_owned(), StatusCode::BAD_REQUEST),
        (
            format!("/v1/units/waf/diff?from={h1}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v1/units/waf/diff?from={h1}&to={zeros}"),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = server.admin(Method::GET, &path, None).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert_error_shape(&body);
    }
    server.stop().await;
}

#[tokio::test]
async fn nodes_register_heartbeat_and_list() {
    let scratch = fresh_dir("nodes");
    let server = TestServer::start(scratch.path()).await;
    let agent = server.agent_token("agent-fra-01", "fra-01").await;
    let viewer = server.token("eve", Role::Viewer).await;
    let labels = json!({"labels": {"region": "eu", "cohort": "free"}});
    let (status, node) = server
        .call(Method::PUT, "/v1/nodes/fra-01", Some(&agent), Some(labels))
        .await;
    assert_eq!(status, StatusCode::OK, "{node}");
    assert_eq!(node["labels"]["cohort"], "free");
    let (status, beat) = server
        .call(
            Method::POST,
            "/v1/nodes/fra-01/heartbeat",
            Some(&agent),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(beat["last_seen_ms"].as_u64() >= node["last_seen_ms"].as_u64());
    let (status, list) = server
        .call(Method::GET, "/v1/nodes", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["nodes"][0]["id"], "fra-01");
    assert!(list["nodes"][0]["last_seen_ms"].is_u64());

    // Other nodes' errors, as an admin (an agent token acts only for its own node).
    let admin = server.admin.clone();
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/nodes/ghost/heartbeat",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/nodes/fra-02",
            Some(&admin),
            Some(json!({"labels": many})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/nodes/fra%2002",
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn changelog_pages_by_cursor_filters_and_feeds() {
    let scratch = fresh_dir("changelog");
    let server = TestServer::start(scratch.path()).await;
    for name in ["a", "b", "c"] {
        let spec = json!({"format": "raw", "max_bytes": 10});
        server
            .admin(
                Method::POST,
                "/v1/units",
                Some(json!({"name": name, "spec": spec})),
            )
            .await;
    }
    let (_, first) = server
        .admin(Method::GET, "/v1/changelog?limit=2", None)
        .await;
    let entries = first["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    // Entry 1 is the first admin token.
    assert_eq!(entries[0]["kind"], "token_created");
    let cursor = first["next_cursor"].as_u64().unwrap();
    let (_, second) = server
        .admin(
            Method::GET,
            &format!("/v1/changelog?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    let units: Vec<&str> = second["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["unit"].as_str().unwrap())
        .collect();
    assert_eq!(units, vec!["b", "c"]);
    let (_, last) = server
        .admin(
            Method::GET,
            &format!("/v1/changelog?limit=2&cursor={}", cursor + 2),
            None,
        )
        .await;
    assert!(last["entries"].as_array().unwrap().is_empty());
    assert!(last["next_cursor"].is_null());
    // Newest first: the latest entries in one request, then on below the cursor, to the end.
    let kinds_units = |page: &Value| -> Vec<String> {
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["kind"].as_str().unwrap(),
                    e["unit"].as_str().unwrap_or("-")
                )
            })
            .collect()
    };
    let (_, newest) = server
        .admin(Method::GET, "/v1/changelog?order=newest&limit=2", None)
        .await;
    assert_eq!(kinds_units(&newest), ["unit_created:c", "unit_created:b"]);
    let below = newest["next_cursor"].as_u64().unwrap();
    let (_, older) = server
        .admin(
            Method::GET,
            &format!("/v1/changelog?order=newest&limit=2&cursor={below}"),
            None,
        )
        .await;
    assert_eq!(kinds_units(&older), ["unit_created:a", "token_created:-"]);
    let (_, end) = server
        .admin(
            Method::GET,
            &format!(
                "/v1/changelog?order=newest&limit=2&cursor={}",
                older["next_cursor"].as_u64().unwrap()
            ),
            None,
        )
        .await;
    assert!(end["entries"].as_array().unwrap().is_empty(), "{end}");
    assert!(end["next_cursor"].is_null(), "{end}");
    let (status, body) = server
        .call(
            Method::GET,
            "/v1/changelog?order=sideways",
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("oldest or newest"),
        "{body}"
    );
    let (_, only_b) = server
        .admin(Method::GET, "/v1/changelog?unit=b", None)
        .await;
    assert_eq!(only_b["entries"].as_array().unwrap().len(), 1);
    let (_, future) = server
        .admin(Method::GET, "/v1/changelog?since_ms=99999999999999", None)
        .await;
    assert!(future["entries"].as_array().unwrap().is_empty());
    for bad in [
        "limit=0",
        "limit=5000",
        "limit=x",
        "colour=red",
        "unit=a%20b",
    ] {
        let (status, body) = server
            .admin(Method::GET, &format!("/v1/changelog?{bad}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }

    let admin = server.admin.clone();
    let feed = server
        .request(Method::GET, "/v1/changelog.atom", Some(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    assert!(
        feed.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/atom+xml")
    );
    let xml = feed.text().await.unwrap();
    assert!(xml.starts_with("<?xml"));
    assert_eq!(xml.matches("<entry>").count(), 4);
    assert!(xml.contains("<title>unit_created c</title>"));
    server.stop().await;
}

#[tokio::test]
async fn every_bad_input_is_a_4xx_with_the_error_shape() {
    let scratch = fresh_dir("errors");
    let server = TestServer::start(scratch.path()).await;
    let admin = server.admin.clone();
    let raw = |method: Method, path: &str, body: &'static [u8]| {
        server
            .request(method, path, Some(&admin))
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            raw(Method::POST, "/v1/units", b"{\"name\": "),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            raw(Method::POST, "/v1/units", b""),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            raw(
                Method::POST,
                "/v1/units",
                br#"{"name": "u", "spec": {"format": "raw", "max_bytes": 1}, "x": 1}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            raw(
                Method::POST,
                "/v1/units",
                br#"{"name": 7, "spec": {"format": "raw", "max_bytes": 1}}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            raw(
                Method::POST,
                "/v1/units",
                br#"{"name": "u", "spec": {"format": "xml", "max_bytes": 1}}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            raw(
                Method::POST,
                "/v1/units",
                br#"{"name": "a/b", "spec": {"format": "raw", "max_bytes": 1}}"#,
            ),
            StatusCode::BAD_REQUEST,
            "bad_unit_name",
        ),
        (
            server
                .request(Method::POST, "/v1/units", Some(&admin))
                .body(vec![b' '; MAX_BODY_BYTES + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            raw(Method::GET, "/v1/nowhere", b""),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            raw(Method::PATCH, "/v1/units", b""),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            raw(Method::POST, "/v1/units/nope/versions?message=m", b"x"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            raw(Method::POST, "/v1/units/nope/versions", b"x"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            raw(Method::DELETE, "/v1/tokens/abc", b""),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            raw(Method::DELETE, "/v1/tokens/424242", b""),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            server.request(Method::GET, "/v1/units", None),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            server.request(Method::GET, "/v1/units", Some("fs_wrong")),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            server
                .request(Method::GET, "/v1/units", None)
                .header("authorization", "Basic abc"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ];
    for (index, (request, status, code)) in cases.into_iter().enumerate() {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "case {index}");
        let body: Value = response.json().await.unwrap();
        assert_error_shape(&body);
        assert_eq!(body["error"]["code"], code, "case {index}: {body}");
    }

    // A revoked token stops working at once.
    let (_, created) = server
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "tmp", "role": "viewer"})),
        )
        .await;
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["record"]["id"].as_u64().unwrap();
    assert_eq!(
        server
            .call(Method::GET, "/v1/units", Some(&token), None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, revoked) = server
        .admin(Method::DELETE, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(revoked["revoked_ms"].is_u64());
    assert_eq!(
        server
            .call(Method::GET, "/v1/units", Some(&token), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    server.stop().await;
}

/// Sample values for a route's path parameters.
fn concrete(path: &str) -> String {
    path.replace("{unit}", "matrix")
        .replace("{hash}", &"0".repeat(64))
        .replace("{sha256}", &"0".repeat(64))
        .replace("{node}", "node-1")
        .replace("{id}", "999999")
        .replace("{name}", "matrix")
}

#[tokio::test]
async fn every_route_admits_exactly_the_roles_of_its_class() {
    let scratch = fresh_dir("matrix");
    let server = TestServer::start(scratch.path()).await;
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "matrix", "spec": {"format": "raw", "max_bytes": 8}})),
        )
        .await;
    let mut callers: Vec<(Option<Role>, Option<String>)> = vec![(None, None)];
    for role in Role::ALL {
        let token = if role == Role::Agent {
            server.agent_token("matrix-agent", "node-1").await
        } else {
            server.token(&format!("matrix-{role}"), role).await
        };
        callers.push((Some(role), Some(token)));
    }
    // The reviewed classification: a new route fails this test until it is added here.
    use failsmall_server::auth::Access::{self, *};
    let expected: &[(&str, &str, Access)] = &[
        ("GET", "/healthz", Public),
        ("GET", "/", Public),
        ("GET", "/dashboard.js", Public),
        ("GET", "/metrics", Read),
        ("GET", "/v1/openapi.json", Public),
        ("GET", "/v1/signing-key", Public),
        ("GET", "/v1/root", Public),
        ("GET", "/v1/units", Read),
        ("POST", "/v1/units", Deploy),
        ("GET", "/v1/units/{unit}", Read),
        ("PUT", "/v1/units/{unit}", Deploy),
        ("GET", "/v1/units/{unit}/versions", Read),
        ("POST", "/v1/units/{unit}/versions", Deploy),
        ("GET", "/v1/units/{unit}/versions/{hash}", Read),
        ("GET", "/v1/units/{unit}/diff", Read),
        ("GET", "/v1/blobs/{sha256}", Fetch),
        ("GET", "/v1/nodes", Read),
        ("PUT", "/v1/nodes/{node}", AgentReport),
        ("POST", "/v1/nodes/{node}/heartbeat", AgentReport),
        ("GET", "/v1/nodes/{node}/desired", Fetch),
        ("POST", "/v1/nodes/{node}/reports", AgentReport),
        ("POST", "/v1/nodes/{node}/break-glass", AgentReport),
        ("GET", "/v1/rollouts", Read),
        ("POST", "/v1/rollouts", Deploy),
        ("GET", "/v1/rollouts/{id}", Read),
        ("POST", "/v1/rollouts/{id}/commands", Deploy),
        ("POST", "/v1/rollouts/{id}/approve", Approve),
        ("GET", "/v1/changelog", Read),
        ("GET", "/v1/changes", Read),
        ("GET", "/v1/changelog.atom", Read),
        ("DELETE", "/v1/units/{unit}", Admin),
        ("DELETE", "/v1/nodes/{node}", Admin),
        ("POST", "/v1/rollouts/{id}/retry", Deploy),
        ("GET", "/v1/quarantine", Read),
        ("POST", "/v1/units/{unit}/quarantine/{hash}/lift", Admin),
        ("GET", "/v1/whoami", Fetch),
        ("GET", "/v1/status", Read),
        ("GET", "/v1/tokens", Admin),
        ("POST", "/v1/tokens", Admin),
        ("DELETE", "/v1/tokens/{id}", Admin),
        ("POST", "/v1/tokens/{id}/rotate", Admin),
        ("GET", "/v1/changelog/verify", Admin),
        ("GET", "/v1/freezes", Read),
        ("POST", "/v1/freezes", Admin),
        ("POST", "/v1/freezes/now", Admin),
        ("POST", "/v1/freezes/{id}/lift", Admin),
        ("GET", "/v1/maintenance", Read),
        ("POST", "/v1/maintenance", Admin),
        ("POST", "/v1/maintenance/{id}/end", Admin),
        ("GET", "/v1/webhooks", Admin),
        ("POST", "/v1/webhooks", Admin),
        ("DELETE", "/v1/webhooks/{id}", Admin),
        ("GET", "/v1/notify/dead-letters", Read),
        ("POST", "/v1/notify/dead-letters/{id}/retry", Admin),
        ("GET", "/v1/slos", Read),
        ("POST", "/v1/slos", Admin),
        ("GET", "/v1/slos/{name}", Read),
        ("DELETE", "/v1/slos/{name}", Admin),
        ("GET", "/v1/incidents", Read),
        ("POST", "/v1/incidents", Deploy),
        ("GET", "/v1/incidents/{id}", Read),
        ("POST", "/v1/incidents/{id}/updates", Deploy),
        ("POST", "/v1/incidents/{id}/resolve", Deploy),
        ("PUT", "/v1/incidents/{id}/review", Deploy),
        ("GET", "/status", Public),
        ("GET", "/status.json", Public),
        ("GET", "/status/feed.atom", Public),
        ("GET", "/v1/break-glass/requests", Read),
        ("POST", "/v1/break-glass/requests", Read),
        ("GET", "/v1/break-glass/requests/{id}", Read),
        ("POST", "/v1/break-glass/requests/{id}/approve", Approve),
        ("POST", "/v1/break-glass/requests/{id}/claim", Read),
    ];
    let table = route_table();
    let actual: Vec<(&str, &str, Access)> = table
        .iter()
        .map(|r| (r.method.as_str(), r.path, r.access))
        .collect();
    assert_eq!(actual, expected);
    // Which roles each class admits, written out independently of `Access::admits`.
    let admitted = |access: Access, role: Option<Role>| -> bool {
        use Role::*;
        let roles: &[Role] = match access {
            Public => return true,
            Read => &[Viewer, Deployer, Approver, Admin],
            Fetch => &[Viewer, Deployer, Approver, Admin, Agent],
            Deploy => &[Deployer, Admin],
            Approve => &[Approver, Admin],
            AgentReport => &[Agent, Admin],
            Access::Admin => &[Role::Admin],
        };
        role.is_some_and(|role| roles.contains(&role))
    };
    for route in &table {
        let path = concrete(route.path);
        for (role, token) in &callers {
            let method = Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
            let response = server
                .request(method, &path, token.as_deref())
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status();
            let label = format!("{} {} as {role:?}: {status}", route.method, route.path);
            assert!(!status.is_server_error(), "{label}");
            if admitted(route.access, *role) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{label}"
                );
            } else if role.is_none() {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{label}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{label}");
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn openapi_lists_every_route_and_health_and_metrics_answer() {
    let scratch = fresh_dir("openapi");
    let server = TestServer::start(scratch.path()).await;
    let (status, document) = server
        .call(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    for route in route_table() {
        let operation = &document["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        assert!(
            operation["summary"].is_string(),
            "{} {} is missing from the document",
            route.method,
            route.path
        );
    }
    let (status, health) = server.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, &health["status"]), (StatusCode::OK, &json!("ok")));

    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "m", "spec": {"format": "raw", "max_bytes": 8}})),
        )
        .await;
    let admin = server.admin.clone();
    let (status, _) = server.push("m", &admin, "message=x", b"123456789").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, metrics) = server.admin(Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().unwrap();
    assert!(text.contains("failsmall_units 1\n"), "{text}");
    assert!(
        text.contains("failsmall_versions_rejected_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE failsmall_http_responses_total counter"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_data_dir_keeps_everything() {
    let dir_tmp = fresh_dir("restart");
    let dir = dir_tmp.path();
    let server = TestServer::start(dir).await;
    server.create_features_unit("bot-features").await;
    let admin = server.admin.clone();
    let (_, version) = server
        .push("bot-features", &admin, "message=kept", &features(1))
        .await;
    let agent = server.agent_token("agent", "n1").await;
    server
        .call(
            Method::PUT,
            "/v1/nodes/n1",
            Some(&agent),
            Some(json!({"labels": {"pop": "fra"}})),
        )
        .await;
    let (_, key_before) = server
        .call(Method::GET, "/v1/signing-key", None, None)
        .await;
    let (_, log_before) = server.admin(Method::GET, "/v1/changelog", None).await;
    server.stop().await;

    let server = TestServer::start(dir).await;
    assert_eq!(server.admin, admin, "the first admin token is not replaced");
    let (status, shown) = server
        .admin(
            Method::GET,
            &format!(
                "/v1/units/bot-features/versions/{}",
                version["hash"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, version);
    let (_, nodes) = server
        .call(Method::GET, "/v1/nodes", Some(&admin), None)
        .await;
    assert_eq!(nodes["nodes"][0]["labels"]["pop"], "fra");
    let (_, key_after) = server
        .call(Method::GET, "/v1/signing-key", None, None)
        .await;
    assert_eq!(key_before, key_after);
    let (_, log_after) = server.admin(Method::GET, "/v1/changelog", None).await;
    assert_eq!(log_before, log_after);
    assert_eq!(
        server
            .call(Method::GET, "/v1/nodes", Some(&agent), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["admin.token", "signing.key"] {
            let mode = std::fs::metadata(dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn garbage_bodies_never_cause_a_5xx() {
    let scratch = fresh_dir("garbage");
    let server = TestServer::start(scratch.path()).await;
    let admin = server.admin.clone();
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "g", "spec": {"format": "yaml", "max_bytes": 512}})),
        )
        .await;
    let bodies: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00],
        b"[]".to_vec(),
        b"null".to_vec(),
        b"{\"name\": \"x\", \"spec\": null}".to_vec(),
        b"{\"name\": \"x\", \"spec\": {\"format\": \"json\", \"max_bytes\": -1}}".to_vec(),
        b"{\"name\": \"x\", \"spec\": {\"format\": \"json\", \"max_bytes\": 1e400}}".to_vec(),
        "{\"labels\": {\"\u{0}\": 1}}".as_bytes().to_vec(),
        b"a: &a [*a]".to_vec(),
        b"- - - - - - - - - - - - - - - - - - - - - - - - - - - -".to_vec(),
    ];
    for body in &bodies {
        for (method, path) in [
            (Method::POST, "/v1/units"),
            (Method::PUT, "/v1/units/g"),
            (Method::PUT, "/v1/nodes/n"),
            (Method::POST, "/v1/tokens"),
            (Method::POST, "/v1/units/g/versions?message=m"),
        ] {
            let response = server
                .request(method, path, Some(&admin))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert!(
                !response.status().is_server_error(),
                "{path} {body:?}: {}",
                response.status()
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn an_agent_token_acts_only_for_its_own_node() {
    let scratch = fresh_dir("agent-binding");
    let server = TestServer::start(scratch.path()).await;
    let own = server.agent_token("agent-a", "node-a").await;
    let labels = json!({"labels": {"cohort": "free"}});
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/nodes/node-a",
            Some(&own),
            Some(labels.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let admin = server.admin.clone();
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/nodes/node-b",
            Some(&admin),
            Some(labels.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "an admin may act for any node");
    let report = json!({"kind": "applied", "unit": "u", "version": "0".repeat(64)});
    let other_node: [(Method, &str, Option<Value>); 4] = [
        (Method::PUT, "/v1/nodes/node-b", Some(labels)),
        (Method::POST, "/v1/nodes/node-b/heartbeat", None),
        (Method::GET, "/v1/nodes/node-b/desired", None),
        (Method::POST, "/v1/nodes/node-b/reports", Some(report)),
    ];
    for (method, path, body) in other_node {
        let (status, answer) = server.call(method.clone(), path, Some(&own), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_error_shape(&answer);
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("bound to node-a"),
            "{answer}"
        );
    }
    let (status, _) = server
        .call(Method::POST, "/v1/nodes/node-a/heartbeat", Some(&own), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // An agent token names its node; no other token does.
    for (body, code) in [
        (json!({"name": "a", "role": "agent"}), "node_required"),
        (
            json!({"name": "v", "role": "viewer", "node": "node-a"}),
            "node_not_allowed",
        ),
        (
            json!({"name": "a", "role": "agent", "node": "bad node/"}),
            "bad_node_id",
        ),
    ] {
        let (status, answer) = server.admin(Method::POST, "/v1/tokens", Some(body)).await;
        assert!(status.is_client_error(), "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn numbers_beyond_the_store_are_4xx_or_empty_not_5xx() {
    let scratch = fresh_dir("huge-numbers");
    let server = TestServer::start(scratch.path()).await;
    let huge = u64::MAX;
    for path in [
        format!("/v1/changelog?cursor={huge}"),
        format!("/v1/changelog?since_ms={huge}"),
        format!("/v1/changelog.atom?since_ms={huge}"),
        format!("/v1/rollouts/{huge}"),
    ] {
        let (status, body) = server.admin(Method::GET, &path, None).await;
        assert!(!status.is_server_error(), "{path}: {status} {body}");
    }
    let (status, body) = server
        .admin(Method::GET, &format!("/v1/changelog?cursor={huge}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["entries"], json!([]));
    let (status, body) = server
        .admin(Method::DELETE, &format!("/v1/tokens/{huge}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error_shape(&body);
    server.stop().await;
}

#[tokio::test]
async fn a_unit_cannot_allow_versions_larger_than_the_body_limit() {
    let scratch = fresh_dir("body-limit");
    let server = TestServer::start(scratch.path()).await;
    let limit = common::MAX_BODY_BYTES;
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "big", "spec": {"format": "raw", "max_bytes": limit + 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_spec");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-body-bytes"),
        "{body}"
    );
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "big", "spec": {"format": "raw", "max_bytes": limit}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A version as large as the unit allows is taken, not refused as too large a body.
    let admin = server.admin.clone();
    let (status, body) = server
        .push("big", &admin, "message=full", &vec![b'x'; limit])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["size_bytes"], limit);
    let update = json!({"revision": 1, "spec": {"format": "raw", "max_bytes": limit * 2}});
    let (status, body) = server
        .admin(Method::PUT, "/v1/units/big", Some(update))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_change_wait_answers_at_the_next_write_and_at_shutdown() {
    let scratch = fresh_dir("changes");
    let server = TestServer::start(scratch.path()).await;
    let viewer = server.token("dash", Role::Viewer).await;
    let (status, now) = server
        .call(Method::GET, "/v1/changes", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{now}");
    let held = now["change"].as_u64().unwrap();

    // Nothing written: the wait runs its course and answers the same counter.
    let started = std::time::Instant::now();
    let (status, same) = server
        .call(
            Method::GET,
            &format!("/v1/changes?after={held}&wait_ms=300"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same["change"].as_u64(), Some(held));
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));

    // A write during the wait answers it at once with another counter.
    let waiting = server
        .request(
            Method::GET,
            &format!("/v1/changes?after={held}&wait_ms=20000"),
            Some(&viewer),
        )
        .send();
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let answer: Value = waiting.await.unwrap().json().await.unwrap();
        (answer, started.elapsed())
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    server.create_features_unit("dash-features").await;
    let (answer, waited) = waiter.await.unwrap();
    assert_ne!(answer["change"].as_u64(), Some(held), "{answer}");
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");

    // A counter the server never had (it restarted since) answers at once.
    let (_, at_once) = server
        .call(
            Method::GET,
            "/v1/changes?after=999999999&wait_ms=20000",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(at_once["change"], answer["change"]);

    // Bounds and access.
    let (status, refused) = server
        .call(
            Method::GET,
            "/v1/changes?wait_ms=30001",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_error_shape(&refused);
    let (status, _) = server.call(Method::GET, "/v1/changes", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A wait in flight does not hold the server's shutdown back.
    let current = answer["change"].as_u64().unwrap();
    let pending = server
        .request(
            Method::GET,
            &format!("/v1/changes?after={current}&wait_ms=30000"),
            Some(&viewer),
        )
        .send();
    let pending = tokio::spawn(pending);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "shutdown waited {:?}",
        started.elapsed()
    );
    let _ = pending.await;
}

#[tokio::test]
async fn a_changelog_rollout_filter_is_a_rollout_id_of_at_most_19_digits() {
    let scratch = fresh_dir("changelog-rollout-filter");
    let server = TestServer::start(scratch.path()).await;
    for good in ["r3", "3", "r9999999999999999999"] {
        let (status, page) = server
            .admin(Method::GET, &format!("/v1/changelog?rollout={good}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{good}: {page}");
    }
    // Past 19 digits (the document's pattern), a sign, or no digits: 400, never a guess.
    for bad in [
        "r12345678901234567890",
        "r432307050055195361868856983135516",
        "%2B5",
        "r",
        "r-1",
    ] {
        let (status, refused) = server
            .admin(Method::GET, &format!("/v1/changelog?rollout={bad}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {refused}");
        assert_error_shape(&refused);
    }
    server.stop().await;
}
