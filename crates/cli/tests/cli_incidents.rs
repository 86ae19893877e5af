//! Incidents against a real `failsmall server` process: a node's NACK rolls a rollout back and
//! opens an incident (`incident list`); an operator opens one by hand, updates, resolves and
//! attaches its review with the CLI; a viewer lists and shows but may not write; the public
//! status page (no token) shows the incidents, their public updates and the review, and none
//! of the changelog's text.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const ONE_STAGE_PLAN: &str = "name: one\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 10\n    gates: []\n    hard_signals: { rejections: 1 }\n";

fn wait_for_incidents(server: &Server, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = server.json(&["incident", "list"]);
        let incidents = listed["incidents"].as_array().unwrap().clone();
        if incidents.len() >= count {
            return incidents;
        }
        assert!(
            Instant::now() < deadline,
            "never {count} incidents: {listed}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn incidents_from_a_rollback_and_by_hand_through_the_cli_and_the_public_status_page() {
    let server = Server::start("incidents");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    let plan = server.file("one.yaml", ONE_STAGE_PLAN);
    server.ok(&["unit", "create", "flags", "--spec", &spec, "--plan", &plan]);
    let mut agent = Agent::new(&server);
    agent.register("edge-node-77", json!({"cohort": "employee"}));
    let file = server.file("v1.json", r#"{"kill": true}"#);
    let pushed = server.json(&["push", "flags", &file, "-m", "internal-push-message"]);
    let hash = pushed["version"]["hash"].as_str().unwrap().to_owned();
    agent.nack("edge-node-77", "flags", &hash);

    // The rollback opened one incident, sev2, about `flags`.
    let incidents = wait_for_incidents(&server, 1);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let auto = &incidents[0];
    assert_eq!(auto["cause"], "rolled_back");
    assert_eq!(auto["severity"], "sev2");
    assert_eq!(auto["components"], json!(["flags"]));
    let auto_id = auto["id"].as_u64().unwrap().to_string();
    let shown = server.ok(&["incident", "show", &auto_id]);
    assert!(shown.contains("rolled_back"), "the timeline: {shown}");
    assert!(shown.contains("incident_opened"), "{shown}");

    // By hand: open, update, resolve, review.
    let viewer = server.token("vera-the-viewer", "viewer");
    let stderr = server.fails(
        &[
            "incident",
            "open",
            "--title",
            "x",
            "--severity",
            "sev3",
            "--token",
            &viewer,
        ],
        1,
    );
    assert!(stderr.contains("may not use this route"), "{stderr}");
    let stderr = server.fails(
        &["incident", "open", "--title", "x", "--severity", "sev9"],
        1,
    );
    assert!(stderr.contains("sev1, sev2 or sev3"), "{stderr}");
    let out = server.ok(&[
        "incident",
        "open",
        "--title",
        "Slow dashboard",
        "--severity",
        "sev3",
        "--component",
        "flags",
        "--component",
        "dashboard",
        "--message",
        "We are looking into slow dashboard loads.",
    ]);
    assert!(
        out.contains("(sev3, investigating): Slow dashboard"),
        "{out}"
    );
    let manual = server.json(&["incident", "list", "--token", &viewer]);
    let manual_id = manual["incidents"][0]["id"].as_u64().unwrap().to_string();
    assert_ne!(manual_id, auto_id);
    let out = server.ok(&[
        "incident",
        "update",
        &manual_id,
        "--message",
        "We found the cause and are deploying a fix.",
        "--status",
        "identified",
    ]);
    assert!(out.contains("identified"), "{out}");
    let out = server.ok(&["incident", "resolve", &manual_id, "--message", "Fixed."]);
    assert!(out.contains("resolved"), "{out}");
    let stderr = server.fails(&["incident", "update", &manual_id, "--message", "late"], 1);
    assert!(stderr.contains("is resolved"), "{stderr}");
    let review = server.file("review.md", "# Review\n\nThe cache was cold.\n");
    server.ok(&["incident", "review", &manual_id, "--file", &review]);
    let shown = server.ok(&["incident", "show", &manual_id, "--token", &viewer]);
    assert!(shown.contains("The cache was cold."), "{shown}");
    assert!(shown.contains("We found the cause"), "{shown}");

    // Every change is in the changelog.
    let log = server.ok(&["log", "--limit", "100"]);
    for kind in [
        "incident_opened",
        "incident_updated",
        "incident_resolved",
        "incident_review",
    ] {
        assert!(log.contains(kind), "{kind}: {log}");
    }

    // The status page, without a token.
    let status: Value = server
        .http
        .get(format!("{}/status.json", server.addr))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["open"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["resolved"][0]["title"], "Slow dashboard");
    assert_eq!(
        status["resolved"][0]["review"],
        "# Review\n\nThe cache was cold.\n"
    );
    assert_eq!(
        status["components"],
        json!([{"name": "flags", "status": "partial_outage"}])
    );
    let html = server
        .http
        .get(format!("{}/status", server.addr))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(html.contains("Slow dashboard") && html.contains("The cache was cold."));
    for internal in [
        hash.as_str(),
        &hash[..12],
        "internal-push-message",
        "edge-node-77",
        "vera-the-viewer",
        "over the limit",
    ] {
        assert!(!html.contains(internal), "{internal} leaked: {html}");
        assert!(!status.to_string().contains(internal), "{internal} leaked");
    }
}
