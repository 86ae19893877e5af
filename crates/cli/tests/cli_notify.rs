//! `failsmall notify` against a real `failsmall server` process: subscribe, list (no secret
//! shown), the dead letters, a retry of an unknown letter, remove. Delivery itself is tested
//! against a receiver in `crates/server/tests/notify.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::*;

#[test]
fn webhooks_are_added_listed_without_secrets_and_removed() {
    let server = Server::start("notify");
    let out = server.ok(&[
        "notify",
        "webhook",
        "add",
        "audit",
        "--url",
        "http://127.0.0.1:9/hook",
        "--kind",
        "generic",
        "--events",
        "rollout_rolled_back,freeze_created",
        "--secret",
        "topsecret",
    ]);
    assert!(out.contains("webhook 1 (generic) added"), "{out}");
    let listed = server.ok(&["notify", "webhook", "list"]);
    assert!(
        listed.contains("audit") && listed.contains("freeze_created"),
        "{listed}"
    );
    let listed = server.json(&["notify", "webhook", "list"]);
    assert!(!listed.to_string().contains("topsecret"), "{listed}");
    let stderr = server.fails(
        &[
            "notify",
            "webhook",
            "add",
            "pd",
            "--url",
            "http://127.0.0.1:9/",
            "--kind",
            "pagerduty",
            "--events",
            "rollout_held",
        ],
        1,
    );
    assert!(stderr.contains("routing key"), "{stderr}");
    let out = server.ok(&["notify", "dead-letters"]);
    assert!(out.contains("no dead letters"), "{out}");
    let stderr = server.fails(&["notify", "retry", "42"], 1);
    assert!(stderr.contains("not found"), "{stderr}");
    let out = server.ok(&["notify", "webhook", "remove", "1"]);
    assert!(out.contains("webhook 1 removed"), "{out}");
    let log = server.json(&["log"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "webhook_created"),
        "{log}"
    );
}
