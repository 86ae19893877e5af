//! Crash at every persistence step: each fail point is made to fail (`return`) and to panic,
//! then the store is reopened as a restarted server would, and nothing may be half-applied.
//! Needs the `failpoints` feature:
//! `cargo nextest run -p failsmall-server --features failpoints -E 'binary(failpoints)'`.
#![cfg(feature = "failpoints")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{TestServer, assert_error_shape, fresh_dir};
use failsmall_core::domain::{Labels, NodeId, UnitFormat};
use failsmall_core::engine::Event;
use failsmall_core::validate::UnitSpec;
use failsmall_server::rollouts::{Cause, EngineHost};
use failsmall_server::store::{
    ChangeRecord, ChangeRow, ChangelogQuery, NewChange, NewVersion, Store, fail_points,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// The two ways a step can die: an error returned, or a panic.
const ACTIONS: [&str; 2] = ["return", "panic"];

fn db_path(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    dir.join("failsmall.db")
}

fn change<'a>(kind: &'a str, reason: &'a str) -> NewChange<'a> {
    NewChange {
        at_ms: 1,
        actor: "ada",
        kind,
        unit: Some("u"),
        version: None,
        reason,
        concerns: None,
        rollout: None,
        stage: None,
    }
}

fn all_changes(store: &Store) -> Vec<ChangeRecord> {
    store
        .changelog(&ChangelogQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
}

/// Runs `f` with fail point `point` set to `action`; a panic is caught like a crashed task.
fn with_fail_point<T>(point: &str, action: &str, f: impl FnOnce() -> T) -> Option<T> {
    fail::cfg(point, action).unwrap();
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    fail::remove(point);
    result.ok()
}

fn after_commit(point: &str) -> bool {
    point.ends_with("after_commit")
}

#[test]
fn a_push_that_dies_at_any_step_is_stored_whole_or_not_at_all() {
    let scenario = fail::FailScenario::setup();
    let points = [
        fail_points::PUSH_BEFORE,
        fail_points::PUSH_AFTER_BLOB,
        fail_points::PUSH_BEFORE_COMMIT,
        fail_points::PUSH_AFTER_COMMIT,
    ];
    for point in points {
        for action in ACTIONS {
            let dir_tmp = fresh_dir(&format!("fp-push-{}-{action}", point.replace("::", "-")));
            let dir = dir_tmp.path();
            let path = db_path(dir);
            let content = format!("content at {point} {action}").into_bytes();
            let hash = failsmall_core::domain::VersionHash::of(&content).to_string();
            let push = NewVersion {
                unit: "u",
                hash: &hash,
                content: &content,
                author: "ada",
                message: "m",
                expected_parent: None,
                created_ms: 2,
                signature: "s",
                validation_skipped: false,
            };
            {
                let store = Store::open(&path).unwrap();
                store
                    .create_unit(
                        "u",
                        &UnitSpec::new(UnitFormat::Raw, 1000),
                        "t",
                        "",
                        &change("unit_created", ""),
                    )
                    .unwrap();
                let outcome = with_fail_point(point, action, || {
                    store.push_version(&push, &[change("version_pushed", "m")])
                });
                match outcome {
                    Some(Ok(_)) => panic!("{point} {action}: the push succeeded"),
                    Some(Err(error)) => assert!(
                        error.to_string().contains(point),
                        "{point} {action}: {error}"
                    ),
                    None => assert_eq!(action, "panic"),
                }
                // The same process goes on using the store after the failure.
                assert_eq!(store.units(10).unwrap().len(), 1, "{point} {action}");
            }
            // Restart: whatever is on disk is the whole push or nothing of it.
            let store = Store::open(&path).unwrap();
            let versions = store.versions("u", 10).unwrap();
            let kinds: Vec<String> = all_changes(&store).into_iter().map(|c| c.kind).collect();
            if after_commit(point) {
                assert_eq!(versions.len(), 1, "{point} {action}");
                assert_eq!(store.blob(&hash).unwrap(), content);
                assert_eq!(
                    kinds,
                    ["unit_created", "version_pushed"],
                    "{point} {action}"
                );
            } else {
                assert!(versions.is_empty(), "{point} {action}: {versions:?}");
                assert!(store.blob(&hash).is_err(), "{point} {action}: blob left");
                assert_eq!(kinds, ["unit_created"], "{point} {action}");
            }
            assert_eq!(
                store.counts().unwrap().versions,
                1 - u64::from(!after_commit(point))
            );
            // Pushing again settles it: stored once, whichever way the first attempt ended.
            let (version, created) = store
                .push_version(&push, &[change("version_pushed", "m")])
                .unwrap();
            assert_eq!(created, !after_commit(point), "{point} {action}");
            assert_eq!((version.seq, version.hash.as_str()), (1, hash.as_str()));
            assert_eq!(store.versions("u", 10).unwrap().len(), 1);
        }
    }
    scenario.teardown();
}

#[test]
fn a_changelog_write_that_dies_is_recorded_once_or_not_at_all() {
    let scenario = fail::FailScenario::setup();
    for point in [
        fail_points::CHANGE_BEFORE_COMMIT,
        fail_points::CHANGE_AFTER_COMMIT,
    ] {
        for action in ACTIONS {
            let dir_tmp = fresh_dir(&format!("fp-change-{}-{action}", point.replace("::", "-")));
            let dir = dir_tmp.path();
            let path = db_path(dir);
            {
                let store = Store::open(&path).unwrap();
                store.record(&change("first", "kept")).unwrap();
                let outcome =
                    with_fail_point(point, action, || store.record(&change("second", "x")));
                assert!(!matches!(outcome, Some(Ok(_))), "{point} {action}");
                store.record(&change("third", "after")).unwrap();
            }
            let store = Store::open(&path).unwrap();
            let kinds: Vec<String> = all_changes(&store).into_iter().map(|c| c.kind).collect();
            if after_commit(point) {
                assert_eq!(kinds, ["first", "second", "third"], "{point} {action}");
            } else {
                assert_eq!(kinds, ["first", "third"], "{point} {action}");
            }
        }
    }
    scenario.teardown();
}

fn labels(pop: &str) -> Labels {
    [("pop".to_owned(), pop.to_owned())].into()
}

fn registration(node: &str, pop: &str) -> (Event, Cause, Option<ChangeRow>) {
    let id = NodeId::new(node).unwrap();
    let event = Event::NodeRegistered {
        node: id.clone(),
        labels: labels(pop),
    };
    let cause = Cause::Node {
        id,
        labels: labels(pop),
    };
    let row = ChangeRow {
        at_ms: 10,
        actor: "agent".to_owned(),
        kind: "node_registered".to_owned(),
        unit: None,
        version: None,
        reason: format!("node {node}"),
        concerns: None,
        rollout: None,
        stage: None,
    };
    (event, cause, Some(row))
}

#[tokio::test]
async fn an_engine_step_that_dies_at_any_step_leaves_memory_and_disk_agreeing() {
    let scenario = fail::FailScenario::setup();
    let points = [
        fail_points::STEP_BEFORE,
        fail_points::STEP_AFTER_STATE,
        fail_points::STEP_BEFORE_COMMIT,
        fail_points::STEP_AFTER_COMMIT,
    ];
    for point in points {
        for action in ACTIONS {
            let dir_tmp = fresh_dir(&format!("fp-step-{}-{action}", point.replace("::", "-")));
            let dir = dir_tmp.path();
            let path = db_path(dir);
            {
                let store = Arc::new(Store::open(&path).unwrap());
                let host = EngineHost::load(&store).unwrap();
                let (event, cause, row) = registration("n1", "fra");
                host.apply(&store, 10, event, cause, row).await.unwrap();
                let (event, cause, row) = registration("n2", "ams");
                fail::cfg(point, action).unwrap();
                let outcome = host.apply(&store, 20, event, cause, row).await;
                fail::remove(point);
                assert!(outcome.is_err(), "{point} {action}: the step succeeded");
                // Memory follows the store: the step is in both or in neither.
                let (stored_state, stored_revision) = store.engine_state().unwrap().unwrap();
                let (in_memory, revision) = host
                    .read(|engine, revision| (serde_json::to_string(engine).unwrap(), revision))
                    .await;
                assert_eq!(revision, stored_revision, "{point} {action}");
                assert_eq!(in_memory, stored_state, "{point} {action}");
                let expected_revision = if after_commit(point) { 2 } else { 1 };
                assert_eq!(revision, expected_revision, "{point} {action}");
                // And the host is not wedged: the next step commits.
                let (event, cause, row) = registration("n3", "lhr");
                host.apply(&store, 30, event, cause, row).await.unwrap();
            }
            // Restart: the node row, the engine state (with its desired-state sequence) and
            // the changelog row of the failed step are all there, or none of them.
            let store = Arc::new(Store::open(&path).unwrap());
            let host = EngineHost::load(&store).unwrap();
            let kept = after_commit(point);
            let n2 = NodeId::new("n2").unwrap();
            let engine_knows_n2 = host
                .read(|engine, _| {
                    let json = serde_json::to_value(engine).unwrap();
                    json.to_string().contains(n2.as_str())
                })
                .await;
            assert_eq!(engine_knows_n2, kept, "{point} {action}");
            assert_eq!(
                store.node("n2").unwrap().is_some(),
                kept,
                "{point} {action}"
            );
            let reasons: Vec<String> = all_changes(&store).into_iter().map(|c| c.reason).collect();
            let expected: Vec<&str> = if kept {
                vec!["node n1", "node n2", "node n3"]
            } else {
                vec!["node n1", "node n3"]
            };
            assert_eq!(reasons, expected, "{point} {action}");
            let revision = host.read(|_, revision| revision).await;
            assert_eq!(revision, if kept { 3 } else { 2 }, "{point} {action}");
        }
    }
    scenario.teardown();
}

/// A caller that goes away mid-step (an agent killed while its report is being committed)
/// does not cut the step short: the step commits, memory follows, and the next step commits
/// instead of being refused as a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_mid_step_leaves_memory_and_disk_agreeing() {
    let scenario = fail::FailScenario::setup();
    let dir_tmp = fresh_dir("fp-step-cancelled");
    let dir = dir_tmp.path();
    let store = Arc::new(Store::open(&db_path(dir)).unwrap());
    let host = EngineHost::load(&store).unwrap();
    let (event, cause, row) = registration("n1", "fra");
    host.apply(&store, 10, event, cause, row).await.unwrap();
    fail::cfg(fail_points::STEP_BEFORE_COMMIT, "sleep(300)").unwrap();
    let (event, cause, row) = registration("n2", "ams");
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        host.apply(&store, 20, event, cause, row),
    )
    .await;
    assert!(
        cut.is_err(),
        "the caller was meant to give up before the commit"
    );
    fail::remove(fail_points::STEP_BEFORE_COMMIT);
    // The next step waits for the first to end, then commits on top of it.
    let (event, cause, row) = registration("n3", "lhr");
    host.apply(&store, 30, event, cause, row).await.unwrap();
    let (stored_state, stored_revision) = store.engine_state().unwrap().unwrap();
    let (in_memory, revision) = host
        .read(|engine, revision| (serde_json::to_string(engine).unwrap(), revision))
        .await;
    assert_eq!((revision, in_memory), (3, stored_state));
    assert_eq!(stored_revision, 3);
    let reasons: Vec<String> = all_changes(&store).into_iter().map(|c| c.reason).collect();
    assert_eq!(reasons, ["node n1", "node n2", "node n3"]);
    scenario.teardown();
}

#[tokio::test]
async fn over_http_an_injected_failure_is_a_503_and_the_server_recovers() {
    let scenario = fail::FailScenario::setup();
    let dir_tmp = fresh_dir("fp-http");
    let dir = dir_tmp.path();
    let server = TestServer::start(dir).await;
    let agent = server.agent_token("agent-n1", "n1").await;
    let agent_n2 = server.agent_token("agent-n2", "n2").await;
    let spec = json!({"format": "raw", "max_bytes": 1000});
    let (status, _) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "u", "spec": spec})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = server.admin.clone();

    fail::cfg(fail_points::PUSH_BEFORE_COMMIT, "return").unwrap();
    let (status, body) = server.push("u", &token, "message=one", b"one").await;
    fail::remove(fail_points::PUSH_BEFORE_COMMIT);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_error_shape(&body);
    let (_, versions) = server
        .admin(Method::GET, "/v1/units/u/versions", None)
        .await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 0);
    let (status, _) = server.push("u", &token, "message=one", b"one").await;
    assert_eq!(status, StatusCode::CREATED);

    // A push into a unit with a plan stores the version and starts its rollout in one
    // step: a failure before the commit leaves neither.
    let plan = "name: p\nstages:\n  - name: all\n    bake: 1h\n    gates: []\n";
    let spec = json!({"format": "raw", "max_bytes": 1000});
    let (status, _) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "planned", "spec": spec, "plan": plan})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for point in [
        fail_points::PUSH_AFTER_BLOB,
        fail_points::STEP_AFTER_STATE,
        fail_points::STEP_BEFORE_COMMIT,
    ] {
        fail::cfg(point, "return").unwrap();
        let (status, body) = server.push("planned", &token, "message=p", b"p").await;
        fail::remove(point);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{point}: {body}");
        let (_, versions) = server
            .admin(Method::GET, "/v1/units/planned/versions", None)
            .await;
        assert_eq!(versions["versions"], json!([]), "{point}");
        let (_, rollouts) = server.admin(Method::GET, "/v1/rollouts", None).await;
        assert_eq!(rollouts["rollouts"], json!([]), "{point}");
    }
    let (status, body) = server.push("planned", &token, "message=p", b"p").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // No node is registered yet, so the rollout is the first and passes at once.
    assert_eq!(body["rollout"]["id"], 1, "{body}");
    assert_eq!(body["rollout"]["status"], "completed", "{body}");

    // A registration whose step committed but whose answer failed: the node is there, and
    // the engine took the step too (the next one is not refused as a conflict).
    fail::cfg(fail_points::STEP_AFTER_COMMIT, "return").unwrap();
    let register = json!({"labels": {"pop": "fra"}});
    let (status, body) = server
        .call(Method::PUT, "/v1/nodes/n1", Some(&agent), Some(register))
        .await;
    fail::remove(fail_points::STEP_AFTER_COMMIT);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = server
        .call(Method::GET, "/v1/nodes/n1/desired", Some(&agent), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Two steps so far: the planned push, then this registration.
    assert_eq!(body["seq"], 2, "{body}");
    let register = json!({"labels": {"pop": "ams"}});
    let (status, body) = server
        .call(Method::PUT, "/v1/nodes/n2", Some(&agent_n2), Some(register))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;
    scenario.teardown();
}
