//! Notifications against a receiver of our own (an axum server on 127.0.0.1:0 in the test):
//! delivery of signed generic JSON and Slack's shape, retries after 500s, a dead letter after
//! the attempt limit and its retry, notifications pending when the server stops delivered once
//! each after it starts again, and a crash between a send and its mark sending again with the
//! same delivery id.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use common::{TestServer, fresh_dir};
use failsmall_server::auth::Role;
use failsmall_server::notify::{DELIVERY_HEADER, NotifyConfig, SIGNATURE_HEADER, signature};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One request the receiver got: path, delivery id, signature, body, and what it answered.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    delivery: String,
    signature: Option<String>,
    body: Value,
    raw: String,
    answered: u16,
}

/// The receiver: records every request and answers `status` (200 unless told otherwise),
/// or 500 for the next `fail_next` requests.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    fail_next: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        receiver.status.store(200, Ordering::SeqCst);
        let shared = receiver.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::post(
                move |axum::extract::Path(path): axum::extract::Path<String>,
                      headers: HeaderMap,
                      body: String| {
                    let shared = shared.clone();
                    async move {
                        let failing = shared
                            .fail_next
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let answered = if failing {
                            500
                        } else {
                            shared.status.load(Ordering::SeqCst)
                        };
                        let header = |name: &str| {
                            headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        shared.got.lock().unwrap().push(Received {
                            path,
                            delivery: header(DELIVERY_HEADER).unwrap_or_default(),
                            signature: header(SIGNATURE_HEADER),
                            body: serde_json::from_str(&body).unwrap_or(Value::Null),
                            raw: body,
                            answered,
                        });
                        AxumStatus::from_u16(answered).unwrap()
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (at most 20 s) until `check` holds for what was received.
    async fn wait(&self, what: &str, check: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.got();
            if check(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "never {what}: {got:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn fast(max_attempts: u32) -> NotifyConfig {
    NotifyConfig {
        retry_base_ms: 20,
        retry_max_ms: 100,
        max_attempts,
        timeout_ms: 5_000,
        poll_ms: 20,
    }
}

async fn subscribe(server: &TestServer, body: Value) -> Value {
    let (status, answer) = server.admin(Method::POST, "/v1/webhooks", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer
}

async fn stop_the_line(server: &TestServer, reason: &str) -> u64 {
    let (status, answer) = server
        .admin(
            Method::POST,
            "/v1/freezes/now",
            Some(json!({ "reason": reason })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["id"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_signed_retried_after_500s_and_dead_lettered_after_the_limit() {
    let (receiver, url) = Receiver::start().await;
    let dir = fresh_dir("notify");
    let server = TestServer::start_with(dir.path(), |config| config.notify = fast(4)).await;
    let generic = subscribe(
        &server,
        json!({"name": "audit", "url": format!("{url}/generic"), "kind": "generic",
               "events": ["freeze_created", "freeze_lifted"], "secret": "s3cret"}),
    )
    .await;
    assert_eq!(generic["has_secret"], true);
    assert!(
        generic.get("secret").is_none(),
        "secrets never leave: {generic}"
    );
    subscribe(
        &server,
        json!({"name": "chat", "url": format!("{url}/slack"), "kind": "slack",
               "events": ["freeze_created"]}),
    )
    .await;

    // The receiver fails twice: the third attempt of the generic one is delivered.
    receiver.fail_next.store(2, Ordering::SeqCst);
    let freeze = stop_the_line(&server, "incident 42").await;
    let got = receiver
        .wait("delivered both", |got| {
            let ok = |path: &str| got.iter().any(|r| r.path == path && r.answered == 200);
            ok("generic") && ok("slack")
        })
        .await;
    let generic: Vec<&Received> = got.iter().filter(|r| r.path == "generic").collect();
    let deliveries: std::collections::BTreeSet<&str> =
        generic.iter().map(|r| r.delivery.as_str()).collect();
    assert_eq!(
        deliveries.len(),
        1,
        "every attempt carries one id: {generic:#?}"
    );
    let accepted = generic.iter().find(|r| r.answered == 200).unwrap();
    assert_eq!(
        accepted.signature.as_deref(),
        Some(signature("s3cret", accepted.raw.as_bytes()).as_str())
    );
    assert_eq!(accepted.body["event"], "freeze_created");
    assert_eq!(accepted.body["actor"], "admin");
    assert!(
        accepted.body["reason"]
            .as_str()
            .unwrap()
            .contains("incident 42")
    );
    assert_eq!(accepted.body["delivery"], accepted.delivery.as_str());
    let slack = got.iter().find(|r| r.path == "slack").unwrap();
    assert!(slack.body["text"].as_str().unwrap().contains("incident 42"));
    assert_eq!(slack.body["blocks"][0]["type"], "section");
    assert!(slack.signature.is_none());

    // Always 500: four attempts, then a dead letter.
    receiver.status.store(500, Ordering::SeqCst);
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/v1/freezes/{freeze}/lift"),
            Some(json!({"reason": "resolved"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    let letter = loop {
        let (_, answer) = server
            .admin(Method::GET, "/v1/notify/dead-letters", None)
            .await;
        if let Some(letter) = answer["dead_letters"].as_array().unwrap().first() {
            break letter.clone();
        }
        assert!(Instant::now() < deadline, "no dead letter: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(letter["attempts"], 4, "{letter}");
    assert_eq!(letter["event"], "freeze_lifted");
    assert!(
        letter["last_error"].as_str().unwrap().contains("500"),
        "{letter}"
    );
    let lifted: Vec<Received> = receiver
        .got()
        .into_iter()
        .filter(|r| r.body["event"] == "freeze_lifted")
        .collect();
    assert_eq!(lifted.len(), 4, "{lifted:#?}");

    // Retried by hand, it is delivered with the same id.
    receiver.status.store(200, Ordering::SeqCst);
    let path = format!("/v1/notify/dead-letters/{}/retry", letter["id"]);
    let (status, answer) = server.admin(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let delivery = letter["delivery"].as_str().unwrap().to_owned();
    receiver
        .wait("delivered the retried letter", |got| {
            got.iter()
                .any(|r| r.delivery == delivery && r.answered == 200)
        })
        .await;
    let (_, answer) = server
        .admin(Method::GET, "/v1/notify/dead-letters", None)
        .await;
    assert_eq!(answer["dead_letters"], json!([]), "{answer}");
    let (status, _) = server.admin(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_are_refused_naming_the_field() {
    let dir = fresh_dir("notify-bad");
    let server = TestServer::start(dir.path()).await;
    for (body, field) in [
        (
            json!({"name": "x", "url": "ftp://example", "kind": "slack", "events": ["stage_passed"]}),
            "url",
        ),
        (
            json!({"name": "x", "url": "http://127.0.0.1:9/", "kind": "teams", "events": ["stage_passed"]}),
            "kind",
        ),
        (
            json!({"name": "x", "url": "http://127.0.0.1:9/", "kind": "slack", "events": ["lunch"]}),
            "events",
        ),
        (
            json!({"name": "x", "url": "http://127.0.0.1:9/", "kind": "pagerduty", "events": ["rollout_rolled_back"]}),
            "secret",
        ),
        (
            json!({"name": "x y", "url": "http://127.0.0.1:9/", "kind": "slack", "events": ["stage_passed"]}),
            "name",
        ),
    ] {
        let (status, answer) = server.admin(Method::POST, "/v1/webhooks", Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["error"]["detail"]["field"], field, "{answer}");
    }
    let viewer = server
        .token("vera", failsmall_server::auth::Role::Viewer)
        .await;
    let (status, _) = server
        .call(Method::GET, "/v1/webhooks", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_pending_when_the_server_stops_are_delivered_once_each_after_restart() {
    let (receiver, url) = Receiver::start().await;
    // The receiver is down (503) while the first server runs.
    receiver.status.store(503, Ordering::SeqCst);
    let dir = fresh_dir("notify-restart");
    let server = TestServer::start_with(dir.path(), |config| config.notify = fast(1_000)).await;
    subscribe(
        &server,
        json!({"name": "audit", "url": format!("{url}/generic"), "kind": "generic",
               "events": ["freeze_created", "freeze_lifted"], "secret": "k"}),
    )
    .await;
    for round in 0..5 {
        let id = stop_the_line(&server, &format!("round {round}")).await;
        let (status, _) = server
            .admin(Method::POST, &format!("/v1/freezes/{id}/lift"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    receiver.wait("tried", |got| got.len() >= 10).await;
    server.stop().await;
    receiver.status.store(200, Ordering::SeqCst);
    let server = TestServer::start_with(dir.path(), |config| config.notify = fast(1_000)).await;
    let got = receiver
        .wait("delivered all ten", |got| {
            got.iter().filter(|r| r.answered == 200).count() >= 10
        })
        .await;
    // Settle: nothing more arrives once all are marked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut accepted: BTreeMap<String, usize> = BTreeMap::new();
    for r in receiver.got().iter().filter(|r| r.answered == 200) {
        *accepted.entry(r.delivery.clone()).or_default() += 1;
    }
    assert_eq!(accepted.len(), 10, "{got:#?}");
    assert!(accepted.values().all(|count| *count == 1), "{accepted:?}");
    let (_, answer) = server
        .admin(Method::GET, "/v1/notify/dead-letters", None)
        .await;
    assert_eq!(answer["outbox"]["pending"], 0, "{answer}");
    server.stop().await;
}

/// A crash between the send and its mark (the fail point skips the mark, as a process killed
/// there would): the notification is sent again, with the same delivery id, and then once
/// marked never again.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_send_and_mark_sends_again_with_the_same_delivery_id() {
    let scenario = fail::FailScenario::setup();
    let (receiver, url) = Receiver::start().await;
    let dir = fresh_dir("notify-crash");
    let server = TestServer::start_with(dir.path(), |config| config.notify = fast(8)).await;
    subscribe(
        &server,
        json!({"name": "audit", "url": format!("{url}/generic"), "kind": "generic",
               "events": ["freeze_created"], "secret": "k"}),
    )
    .await;
    fail::cfg(failsmall_server::notify::FAIL_AFTER_SEND, "1*return").unwrap();
    stop_the_line(&server, "crash test").await;
    let got = receiver.wait("sent twice", |got| got.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_after = receiver.got();
    assert_eq!(
        got_after.len(),
        2,
        "then marked, never sent again: {got_after:#?}"
    );
    assert_eq!(got[0].delivery, got[1].delivery);
    assert_eq!(got[0].raw, got[1].raw);
    server.stop().await;
    scenario.teardown();
}

/// A rollback the engine decides (a node's NACK) is a PagerDuty trigger, written with the
/// engine's step; its dedup key names the rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_rollback_triggers_pagerduty_with_one_key_per_rollout() {
    let (receiver, url) = Receiver::start().await;
    let dir = fresh_dir("notify-pd");
    let server = TestServer::start_with(dir.path(), |config| config.notify = fast(8)).await;
    subscribe(
        &server,
        json!({"name": "oncall", "url": format!("{url}/pd"), "kind": "pagerduty",
               "events": ["rollout_rolled_back", "rollout_completed", "rollout_started"],
               "secret": "ROUTINGKEY"}),
    )
    .await;
    let agent = server.agent_token("agent-n1", "n1").await;
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/nodes/n1",
            Some(&agent),
            Some(json!({"labels": {"cohort": "employee"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let spec = json!({"format": "json", "max_bytes": 256});
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec})),
        )
        .await;
    let admin = server.admin.clone();
    let (status, version) = server
        .push("flags", &admin, "message=one", br#"{"kill": true}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{version}");
    let hash = version["hash"].as_str().unwrap().to_owned();
    let plan = "name: one\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 10\n    gates: []\n    hard_signals: { rejections: 1 }\n";
    let (status, view) = server
        .admin(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"unit": "flags", "version": hash, "plan": plan, "reason": "test"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let rollout = view["id"].as_u64().unwrap();
    let nack = json!({"kind": "rejected", "unit": "flags", "version": hash, "reason": "kill switch on an execute rule"});
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/nodes/n1/reports",
            Some(&agent),
            Some(nack),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = receiver
        .wait("triggered", |got| {
            got.iter().any(|r| r.body["event_action"] == "trigger")
        })
        .await;
    let trigger = got
        .iter()
        .find(|r| r.body["event_action"] == "trigger")
        .unwrap();
    assert_eq!(trigger.body["routing_key"], "ROUTINGKEY");
    assert_eq!(
        trigger.body["dedup_key"],
        format!("failsmall/flags/rollout/{rollout}")
    );
    assert_eq!(trigger.body["payload"]["severity"], "critical");
    assert_eq!(trigger.body["payload"]["source"], "failsmall");
    assert!(
        trigger.body["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{:?}",
        trigger.body
    );
    // PagerDuty takes only what it can trigger or resolve: no `rollout_started` was sent.
    assert!(got.iter().all(|r| r.body["event_action"] != Value::Null));
    server.stop().await;
}

/// A rollout whose first stage waits for a manual approval tells its approvers through the
/// outbox: Slack gets the text with the command to run, the generic webhook signed JSON naming
/// the rollout, the stage and the command, and PagerDuty nothing (an approval is the plan
/// working as written, not a page). After the approval, no second `approval_needed` is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_waiting_for_approval_notifies_slack_and_generic_and_does_not_page() {
    let (receiver, url) = Receiver::start().await;
    let dir = fresh_dir("notify-approval");
    let server = TestServer::start_with(dir.path(), |config| config.notify = fast(8)).await;
    let events = json!(["approval_needed"]);
    subscribe(
        &server,
        json!({"name": "chat", "url": format!("{url}/slack"), "kind": "slack", "events": events}),
    )
    .await;
    subscribe(
        &server,
        json!({"name": "audit", "url": format!("{url}/generic"), "kind": "generic",
               "events": events, "secret": "s3cret"}),
    )
    .await;
    subscribe(
        &server,
        json!({"name": "oncall", "url": format!("{url}/pd"), "kind": "pagerduty",
               "events": ["approval_needed", "rollout_started"], "secret": "ROUTINGKEY"}),
    )
    .await;
    let spec = json!({"format": "json", "max_bytes": 256});
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec})),
        )
        .await;
    let admin = server.admin.clone();
    let (status, version) = server
        .push("flags", &admin, "message=one", br#"{"n": 1}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{version}");
    let hash = version["hash"].as_str().unwrap().to_owned();
    let plan = "name: signed-off\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 10\n    gates: []\n    approval: true\n";
    let (status, view) = server
        .admin(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"unit": "flags", "version": hash, "plan": plan, "reason": "test"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let rollout = view["id"].as_u64().unwrap();
    let got = receiver
        .wait("told slack and generic", |got| {
            got.iter().any(|r| r.path == "slack") && got.iter().any(|r| r.path == "generic")
        })
        .await;
    let slack = got.iter().find(|r| r.path == "slack").unwrap();
    let text = slack.body["text"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "rollout {rollout} of flags: approval needed at stage everywhere"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("failsmall rollout approve {rollout}")),
        "{text}"
    );
    assert_eq!(slack.body["blocks"][0]["type"], "section");
    let generic = got.iter().find(|r| r.path == "generic").unwrap();
    assert_eq!(
        generic.signature.as_deref(),
        Some(signature("s3cret", generic.raw.as_bytes()).as_str())
    );
    assert_eq!(generic.body["event"], "approval_needed");
    assert_eq!(generic.body["unit"], "flags");
    assert_eq!(generic.body["rollout"], rollout);
    assert_eq!(generic.body["stage"], "everywhere");
    assert_eq!(generic.body["version"], hash.as_str());
    assert_eq!(
        generic.body["approve"],
        format!("failsmall rollout approve {rollout} --reason '...'")
    );
    // Another person approves: the stage is entered and nobody is asked again.
    let approver = server.token("approver", Role::Approver).await;
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/v1/rollouts/{rollout}/approve"),
            Some(&approver),
            Some(json!({"reason": "looked at it"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The outbox is drained (nothing pending, nothing dead): PagerDuty was offered neither
    // the approval nor the start, so it got nothing at all.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, letters) = server
            .admin(Method::GET, "/v1/notify/dead-letters", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{letters}");
        if letters["outbox"]["pending"] == 0 {
            assert_eq!(letters["outbox"]["dead"], 0, "{letters}");
            break;
        }
        assert!(Instant::now() < deadline, "never drained: {letters}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = receiver.got();
    assert!(got.iter().all(|r| r.path != "pd"), "{got:#?}");
    let asked: Vec<&Received> = got
        .iter()
        .filter(|r| r.body["event"] == "approval_needed")
        .collect();
    assert_eq!(asked.len(), 1, "{got:#?}");
    server.stop().await;
}
