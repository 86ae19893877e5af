//! Limits that never drop anything silently, through the HTTP API: every list pages with a
//! cursor (`?limit=&after=`, `next`), and a unit create, edit or push that could make a node's
//! desired-state document larger than an agent accepts is refused up front, naming the limit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{TestServer, assert_error_shape, fresh_dir};
use failsmall_core::limits::{DESIRED_DOCUMENT_MAX_BYTES, LIST_PAGE_MAX};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Every row of the list at `path` under `key`, following `next` with pages of `limit`.
async fn every_page(server: &TestServer, path: &str, key: &str, limit: u32) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let query = match &after {
            Some(after) => format!("{path}?limit={limit}&after={after}"),
            None => format!("{path}?limit={limit}"),
        };
        let (status, body) = server.admin(Method::GET, &query, None).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        let page = body[key].as_array().unwrap();
        assert!(page.len() <= limit as usize, "{body}");
        rows.extend(page.iter().cloned());
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => {
                assert!(body["next"].is_null(), "{body}");
                return rows;
            }
        }
    }
    panic!("{path} never ended");
}

#[tokio::test]
async fn every_list_pages_with_a_cursor_and_nothing_is_dropped() {
    let dir = fresh_dir("pages");
    let server = TestServer::start(dir.path()).await;
    for name in ["a", "b", "c", "d", "e"] {
        let (status, body) = server
            .admin(
                Method::POST,
                "/v1/units",
                Some(json!({"name": name, "spec": {"format": "raw", "max_bytes": 64}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let units = every_page(&server, "/v1/units", "units", 2).await;
    let names: Vec<_> = units.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    let (_, whole) = server.admin(Method::GET, "/v1/units", None).await;
    assert_eq!(whole["units"].as_array().unwrap().len(), 5);
    assert!(whole["next"].is_null(), "{whole}");

    for node in ["n1", "n2", "n3"] {
        let token = server.agent_token(&format!("agent-{node}"), node).await;
        let (status, body) = server
            .call(
                Method::PUT,
                &format!("/v1/nodes/{node}"),
                Some(&token),
                Some(json!({"labels": {"cohort": "free"}})),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    let nodes = every_page(&server, "/v1/nodes", "nodes", 2).await;
    let ids: Vec<_> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["n1", "n2", "n3"]);

    for text in ["one", "two", "three"] {
        let response = server
            .request(Method::POST, "/v1/units/a/versions", Some(&server.admin))
            .query(&[("message", text)])
            .body(text.as_bytes().to_vec())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }
    let versions = every_page(&server, "/v1/units/a/versions", "versions", 2).await;
    assert_eq!(versions.len(), 3, "{versions:?}");
    assert_eq!(versions[0]["message"], "three", "newest first");
    let (status, body) = server
        .admin(Method::GET, "/v1/rollouts?limit=1", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("next").is_some(), "{body}");

    for bad in [
        "/v1/units?limit=0",
        &format!("/v1/units?limit={}", LIST_PAGE_MAX + 1),
    ] {
        let (status, body) = server.admin(Method::GET, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_error_shape(&body);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expected 1 to 1000")
        );
    }
    // Tokens: the first admin's and the three agents'.
    let tokens = every_page(&server, "/v1/tokens", "tokens", 2).await;
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    let (status, body) = server
        .admin(Method::GET, "/v1/quarantine?limit=1", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["next"].is_null(), "{body}");
    let (status, _) = server
        .admin(Method::GET, "/v1/rollouts?after=x", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn a_unit_that_could_overfill_a_nodes_desired_state_is_refused_up_front() {
    let dir = fresh_dir("budget");
    let server = TestServer::start_with(dir.path(), |config| {
        config.max_body_bytes = failsmall_server::DEFAULT_MAX_BODY_BYTES;
    })
    .await;
    // Five units whose schemas take 200,000 bytes each fit one document of 1 MiB; a sixth
    // could not be sent to a node that runs them all.
    let big = |name: &str| {
        json!({"name": name, "spec": {"format": "json", "max_bytes": 1024,
            "schema": {"description": "x".repeat(200_000)}}})
    };
    for name in ["b1", "b2", "b3", "b4", "b5"] {
        let (status, body) = server
            .admin(Method::POST, "/v1/units", Some(big(name)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = server
        .admin(Method::POST, "/v1/units", Some(big("b6")))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error_shape(&body);
    assert_eq!(body["error"]["code"], "desired_state_limit", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{DESIRED_DOCUMENT_MAX_BYTES} bytes")),
        "{message}"
    );
    assert!(
        message.contains("desired-state document limit"),
        "{message}"
    );
    assert_eq!(
        body["error"]["detail"]["max_bytes"],
        DESIRED_DOCUMENT_MAX_BYTES
    );
    let (status, _) = server.admin(Method::GET, "/v1/units/b6", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored");
    // A unit already counted is not counted twice: a push to it passes the check.
    let response = server
        .request(Method::POST, "/v1/units/b1/versions", Some(&server.admin))
        .query(&[("message", "small")])
        .body(b"{}".to_vec())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    server.stop().await;
}
