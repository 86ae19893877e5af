//! Incidents: an engine rollback (a node's NACK) opens one, in the transaction of its changelog
//! row, with a PagerDuty trigger keyed by the incident and a resolve with the same key; one
//! incident per rollout; the update cadence driven by a clock of the test's own (reminder,
//! then a holding update); viewers read incidents but may not write; and the public status
//! page (HTML, JSON, Atom parsed by a real XML parser) carries none of the changelog's
//! internal data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestServer, fresh_dir};
use failsmall_server::auth::Role;
use failsmall_server::incidents::Cadence;
use failsmall_server::notify::NotifyConfig;
use failsmall_server::store::{ChangelogQuery, IncidentChange, NewChange, Store};
use quick_xml::events::Event as XmlEvent;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const MINUTE_MS: u64 = 60_000;

/// A receiver of our own: every JSON body POSTed to it.
async fn receiver() -> (Arc<Mutex<Vec<Value>>>, String) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(move |body: String| {
            let shared = Arc::clone(&shared);
            async move {
                shared
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str::<Value>(&body).unwrap_or(Value::Null));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (got, url)
}

async fn wait_for(got: &Arc<Mutex<Vec<Value>>>, what: &str, check: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if check(&got.lock().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: {:#?}",
            got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn text(server: &TestServer, path: &str) -> (StatusCode, String, String) {
    let response = server
        .client
        .get(format!("{}{path}", server.base))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

/// The Atom feed parsed by quick-xml (well-formed, end tags matching): each entry's children
/// by name, their text unescaped.
fn atom_entries(xml: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut entries = Vec::new();
    let mut current = std::collections::BTreeMap::new();
    let mut saw_feed = false;
    loop {
        match reader.read_event().unwrap() {
            XmlEvent::Start(start) => {
                let name = start.name().into_inner().to_owned();
                if name == "feed" {
                    saw_feed = true;
                }
                path.push(name);
            }
            XmlEvent::End(end) => {
                let name = end.name().into_inner().to_owned();
                assert_eq!(path.pop().as_deref(), Some(name.as_str()));
                if name == "entry" {
                    entries.push(std::mem::take(&mut current));
                }
            }
            XmlEvent::Text(t) if path.len() >= 3 && path[1] == "entry" => {
                let text = t.into_inner().into_owned();
                current
                    .entry(path[2].clone())
                    .or_insert_with(String::new)
                    .push_str(&text);
            }
            XmlEvent::GeneralRef(reference) if path.len() >= 3 && path[1] == "entry" => {
                let resolved = match &*reference {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    other => panic!("unexpected entity {other:?}"),
                };
                current
                    .entry(path[2].clone())
                    .or_insert_with(String::new)
                    .push_str(resolved);
            }
            XmlEvent::Eof => break,
            _ => {}
        }
    }
    assert!(saw_feed && path.is_empty(), "{xml}");
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_opens_an_incident_paged_by_it_and_the_status_page_leaks_nothing_internal() {
    let (got, url) = receiver().await;
    let dir = fresh_dir("incidents");
    let server = TestServer::start_with(dir.path(), |config| {
        config.notify = NotifyConfig {
            retry_base_ms: 20,
            retry_max_ms: 100,
            max_attempts: 8,
            timeout_ms: 5_000,
            poll_ms: 20,
        };
    })
    .await;
    let (status, answer) = server
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(
                json!({"name": "oncall", "url": format!("{url}/pd"), "kind": "pagerduty",
                        "events": ["incident_opened", "incident_resolved", "incident_updated"],
                        "secret": "ROUTING-KEY-SECRET"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let agent = server
        .agent_token("agent-secret-name", "edge-node-77")
        .await;
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/nodes/edge-node-77",
            Some(&agent),
            Some(json!({"labels": {"cohort": "employee", "rack": "rack-internal-9"}})),
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
        .push(
            "flags",
            &admin,
            "message=internal-push-message",
            br#"{"kill": true}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{version}");
    let hash = version["hash"].as_str().unwrap().to_owned();
    let plan = "name: one\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 10\n    gates: []\n    hard_signals: { rejections: 1 }\n";
    let (status, view) = server
        .admin(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"unit": "flags", "version": hash, "plan": plan,
                        "reason": "internal-rollout-reason"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let rollout = view["id"].as_u64().unwrap();
    let nack = json!({"kind": "rejected", "unit": "flags", "version": hash,
                      "reason": "internal-nack-reason: kill switch on an execute rule"});
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/nodes/edge-node-77/reports",
            Some(&agent),
            Some(nack),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The rollback opened an incident; PagerDuty is triggered with the incident as its key.
    wait_for(&got, "triggered", |got| {
        got.iter().any(|b| b["event_action"] == "trigger")
    })
    .await;
    let (_, listed) = server.admin(Method::GET, "/v1/incidents", None).await;
    let incidents = listed["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "{listed}");
    let incident = &incidents[0];
    let id = incident["id"].as_u64().unwrap();
    assert_eq!(incident["rollout"], rollout);
    assert_eq!(incident["cause"], "rolled_back");
    assert_eq!(incident["severity"], "sev2");
    assert_eq!(incident["status"], "investigating");
    assert_eq!(incident["components"], json!(["flags"]));
    let trigger = got
        .lock()
        .unwrap()
        .iter()
        .find(|b| b["event_action"] == "trigger")
        .cloned()
        .unwrap();
    assert_eq!(trigger["dedup_key"], format!("failsmall/incident/{id}"));
    assert_eq!(trigger["routing_key"], "ROUTING-KEY-SECRET");
    assert_eq!(trigger["payload"]["severity"], "error");

    // Its timeline is the rollout's changelog from its start.
    let (status, shown) = server
        .admin(Method::GET, &format!("/v1/incidents/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    let kinds: Vec<&str> = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        // From the rollout's start: its first entries come before the rollback.
        kinds.iter().position(|k| *k == "rolled_back") > Some(0)
            && kinds.contains(&"incident_opened"),
        "{kinds:?}"
    );
    assert_eq!(shown["updates"].as_array().unwrap().len(), 1);

    // A viewer reads incidents but may not write them.
    let viewer = server.token("vera-viewer", Role::Viewer).await;
    let (status, _) = server
        .call(Method::GET, "/v1/incidents", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .call(
            Method::GET,
            &format!("/v1/incidents/{id}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/incidents".to_owned(),
            json!({"title": "x", "severity": "sev1"}),
        ),
        (
            Method::POST,
            format!("/v1/incidents/{id}/updates"),
            json!({"message": "x"}),
        ),
        (
            Method::POST,
            format!("/v1/incidents/{id}/resolve"),
            json!({}),
        ),
        (
            Method::PUT,
            format!("/v1/incidents/{id}/review"),
            json!({"markdown": "x"}),
        ),
    ] {
        let (status, answer) = server.call(method, &path, Some(&viewer), Some(body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    // Bad input is a 4xx naming the field.
    let (status, answer) = server
        .admin(
            Method::POST,
            "/v1/incidents",
            Some(json!({"title": "x", "severity": "sev7"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer.to_string().contains("severity"), "{answer}");

    // An update, the resolution (PagerDuty resolves the same key) and the review.
    let (status, answer) = server
        .admin(
            Method::POST,
            &format!("/v1/incidents/{id}/updates"),
            Some(json!({"message": "We identified a bad configuration & reverted it.", "status": "identified"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = server
        .admin(
            Method::POST,
            &format!("/v1/incidents/{id}/resolve"),
            Some(json!({"message": "Service is fully restored."})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "resolved");
    wait_for(&got, "resolved", |got| {
        got.iter().any(|b| {
            b["event_action"] == "resolve" && b["dedup_key"] == format!("failsmall/incident/{id}")
        })
    })
    .await;
    let (status, _) = server
        .admin(
            Method::PUT,
            &format!("/v1/incidents/{id}/review"),
            Some(json!({"markdown": "# Review\n\nA <b>kill switch</b> reached every node."})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The status page, without a token, in its three shapes.
    let (status, kind, page_json) = text(&server, "/status.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("application/json"), "{kind}");
    let public: Value = serde_json::from_str(&page_json).unwrap();
    assert_eq!(public["status"], "operational");
    assert_eq!(
        public["components"],
        json!([{"name": "flags", "status": "operational"}])
    );
    assert_eq!(public["open"], json!([]));
    let resolved = &public["resolved"][0];
    assert_eq!(
        resolved["title"],
        "Configuration change to flags rolled back"
    );
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["updates"].as_array().unwrap().len(), 3);
    assert_eq!(
        resolved["updates"][0]["message"],
        "Service is fully restored."
    );
    assert!(resolved["review"].as_str().unwrap().contains("kill switch"));
    let (status, kind, html) = text(&server, "/status").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(html.starts_with("<!doctype html>") && html.trim_end().ends_with("</html>"));
    assert!(html.contains("Configuration change to flags rolled back"));
    assert!(
        html.contains("A &lt;b&gt;kill switch&lt;/b&gt; reached every node."),
        "escaped"
    );
    assert!(html.contains("bad configuration &amp; reverted"));
    let (status, kind, atom) = text(&server, "/status/feed.atom").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("application/atom+xml"), "{kind}");
    let entries = atom_entries(&atom);
    assert_eq!(entries.len(), 3, "{atom}");
    for entry in &entries {
        for field in ["id", "title", "updated", "content"] {
            assert!(entry.contains_key(field), "{field}: {entry:?}");
        }
    }
    assert_eq!(entries[0]["content"], "Service is fully restored.");
    assert_eq!(
        entries[1]["content"],
        "We identified a bad configuration & reverted it."
    );

    // Nothing internal: no token, key, node, label, actor, hash, reason or changelog text.
    let (_, changelog) = server
        .admin(Method::GET, "/v1/changelog?limit=500", None)
        .await;
    let mut internal: Vec<String> = vec![
        server.admin.clone(),
        agent.clone(),
        viewer.clone(),
        "ROUTING-KEY-SECRET".to_owned(),
        "edge-node-77".to_owned(),
        "rack-internal-9".to_owned(),
        "agent-secret-name".to_owned(),
        "vera-viewer".to_owned(),
        "internal-push-message".to_owned(),
        "internal-rollout-reason".to_owned(),
        "internal-nack-reason".to_owned(),
        "rolled_back".to_owned(),
        "failsmall/incident".to_owned(),
        hash.clone(),
        hash[..12].to_owned(),
    ];
    for entry in changelog["entries"].as_array().unwrap() {
        let reason = entry["reason"].as_str().unwrap();
        if reason.len() > 8 {
            internal.push(reason.to_owned());
        }
        if let Some(actor) = entry["actor"]
            .as_str()
            .filter(|a| a.len() > 3 && *a != "failsmall")
        {
            internal.push(actor.to_owned());
        }
    }
    for (shape, body) in [("json", &page_json), ("html", &html), ("atom", &atom)] {
        for secret in &internal {
            assert!(
                !body.contains(secret.as_str()),
                "{shape} leaks {secret:?}: {body}"
            );
        }
    }
    server.stop().await;
}

fn change<'a>(kind: &'a str, unit: &'a str, rollout: Option<u64>, at_ms: u64) -> NewChange<'a> {
    NewChange {
        at_ms,
        actor: "failsmall",
        kind,
        unit: Some(unit),
        version: None,
        reason: "internal",
        concerns: None,
        rollout,
        stage: None,
    }
}

#[test]
fn one_incident_per_rollout_and_break_glass_opens_one() {
    let dir = fresh_dir("incidents-store");
    let store = Store::open(&dir.path().join("db")).unwrap();
    store
        .record(&change("rolled_back", "flags", Some(7), 1_000))
        .unwrap();
    store
        .record(&change("rolled_back", "flags", Some(7), 2_000))
        .unwrap();
    store
        .record(&change("fleet_unhealthy", "flags", Some(7), 3_000))
        .unwrap();
    assert_eq!(store.incidents(0).unwrap().len(), 1, "one per rollout");
    store
        .record(&change("held", "flags", Some(8), 3_000))
        .unwrap();
    store
        .record(&change("completed", "flags", Some(8), 3_000))
        .unwrap();
    assert_eq!(
        store.incidents(0).unwrap().len(),
        1,
        "only the kinds that open one"
    );
    store
        .record(&change("fleet_unhealthy", "flags", Some(8), 4_000))
        .unwrap();
    store
        .record(&change("break_glass", "flags", None, 5_000))
        .unwrap();
    store
        .record(&change("break_glass", "flags", None, 6_000))
        .unwrap();
    let incidents = store.incidents(0).unwrap();
    assert_eq!(incidents.len(), 3, "{incidents:#?}");
    // Newest first.
    assert_eq!(incidents[0].cause, "break_glass");
    assert_eq!(incidents[1].severity.as_str(), "sev1");
    assert_eq!(incidents[1].rollout, Some(8));
    // Resolved, the rollout may open another.
    let first = incidents[2].id;
    store
        .update_incident(
            first,
            &IncidentChange {
                status: Some(failsmall_server::incidents::Status::Resolved),
                severity: None,
                message: "done".to_owned(),
            },
            "someone",
            7_000,
        )
        .unwrap();
    store
        .record(&change("rolled_back", "flags", Some(7), 8_000))
        .unwrap();
    assert_eq!(store.incidents(0).unwrap().len(), 4);
    // Each opening is in the changelog.
    let opened = store
        .changelog(&ChangelogQuery {
            limit: 100,
            ..ChangelogQuery::default()
        })
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "incident_opened")
        .count();
    assert_eq!(opened, 4);
}

/// The cadence with a clock of the test's own: a reminder before the update is due, a holding
/// update when nobody wrote one, and a person's update resetting the clock.
#[test]
fn the_cadence_reminds_then_publishes_a_holding_update_on_a_driven_clock() {
    let dir = fresh_dir("incidents-cadence");
    let store = Store::open(&dir.path().join("db")).unwrap();
    // 2026-12-04T13:07:00Z.
    let t0 = 1_796_389_620_000;
    store
        .record(&change("rolled_back", "flags", Some(1), t0))
        .unwrap();
    let id = store.incidents(0).unwrap()[0].id;
    let cadence = Cadence::default(); // sev2: 60 minutes, reminded 10 minutes before.
    let kinds = |store: &Store| -> Vec<String> {
        store
            .changelog(&ChangelogQuery {
                limit: 100,
                ..ChangelogQuery::default()
            })
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    };
    assert_eq!(
        store
            .incidents_cadence(&cadence, t0 + 49 * MINUTE_MS)
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .incidents_cadence(&cadence, t0 + 50 * MINUTE_MS)
            .unwrap(),
        1
    );
    assert_eq!(kinds(&store).last().unwrap(), "incident_update_due");
    assert_eq!(
        store
            .incidents_cadence(&cadence, t0 + 55 * MINUTE_MS)
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .incidents_cadence(&cadence, t0 + 60 * MINUTE_MS)
            .unwrap(),
        1
    );
    let (incident, updates) = store.incident(id).unwrap().unwrap();
    assert_eq!(updates.len(), 2);
    let holding = &updates[1];
    assert!(holding.automatic);
    assert_eq!(
        holding.body,
        "We are still investigating; no new changes since 13:07 UTC. We will post again by the next update."
    );
    assert_eq!(incident.last_update_ms, t0 + 60 * MINUTE_MS);
    assert_eq!(kinds(&store).last().unwrap(), "incident_updated");
    // A person's update at 1h10 moves the next one to 2h10.
    store
        .update_incident(
            id,
            &IncidentChange {
                status: Some(failsmall_server::incidents::Status::Identified),
                severity: None,
                message: "We found it.".to_owned(),
            },
            "oncall",
            t0 + 70 * MINUTE_MS,
        )
        .unwrap();
    assert_eq!(
        store
            .incidents_cadence(&cadence, t0 + 119 * MINUTE_MS)
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .incidents_cadence(&cadence, t0 + 120 * MINUTE_MS)
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .incidents_cadence(&cadence, t0 + 130 * MINUTE_MS)
            .unwrap(),
        1
    );
    let (_, updates) = store.incident(id).unwrap().unwrap();
    assert_eq!(
        updates.last().unwrap().body,
        "We are still working on a fix; no new changes since 14:17 UTC. We will post again by the next update."
    );
    // Over a day at a 15 s poll, no gap between public updates is longer than the cadence
    // and one poll.
    let mut now = t0 + 130 * MINUTE_MS;
    while now < t0 + 26 * 60 * MINUTE_MS {
        now += 15_000;
        store.incidents_cadence(&cadence, now).unwrap();
    }
    let (_, updates) = store.incident(id).unwrap().unwrap();
    assert!(updates.len() >= 24, "{}", updates.len());
    for pair in updates.windows(2) {
        assert!(pair[1].at_ms - pair[0].at_ms <= 60 * MINUTE_MS + 15_000);
    }
}

/// The clock the next test gives the cadence task.
static DRIVEN_NOW_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn driven_now_ms() -> u64 {
    DRIVEN_NOW_MS.load(std::sync::atomic::Ordering::SeqCst)
}

/// The server's cadence task with a clock of the test's own: nothing before the update is due,
/// the holding update once the clock says it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cadence_task_publishes_on_the_clock_it_is_given() {
    let dir = fresh_dir("incidents-task");
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    let t0 = 1_796_389_620_000;
    DRIVEN_NOW_MS.store(t0, std::sync::atomic::Ordering::SeqCst);
    store
        .record(&change("rolled_back", "flags", Some(1), t0))
        .unwrap();
    let id = store.incidents(0).unwrap()[0].id;
    let cadence = Cadence {
        poll_ms: 100,
        ..Cadence::default()
    };
    let task = tokio::spawn(failsmall_server::incidents::cadence_forever(
        Arc::clone(&store),
        cadence,
        driven_now_ms,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.incident(id).unwrap().unwrap().1.len(),
        1,
        "not due yet"
    );
    DRIVEN_NOW_MS.store(t0 + 60 * MINUTE_MS, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (incident, updates) = store.incident(id).unwrap().unwrap();
        if updates.len() == 2 {
            assert!(updates[1].automatic);
            assert_eq!(incident.last_update_ms, t0 + 60 * MINUTE_MS);
            break;
        }
        assert!(Instant::now() < deadline, "no holding update: {updates:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}
