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

/// What the receiver got: (delivery id, event) per answered request.
type Got = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A receiver of our own on 127.0.0.1:0 (plain HTTP/1.1, one request per connection): records
/// each request's delivery id and event, answers 200 after a short delay (so that a kill finds
/// sends in flight).
fn receiver() -> (String, Got) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut length, mut delivery, mut event) = (0usize, String::new(), String::new());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        match name.trim().to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "x-failsmall-delivery" => delivery = value.trim().to_owned(),
                            "x-failsmall-event" => event = value.trim().to_owned(),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(30));
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .is_ok()
                {
                    shared.lock().unwrap().push((delivery, event));
                }
            });
        }
    });
    (url, got)
}

/// The server is killed (SIGKILL) 8 times while freezes are created and lifted and their
/// notifications sent: none is lost, and a notification received twice (sent, then killed
/// before it was marked) carries the same delivery id both times.
#[test]
fn notifications_survive_repeated_kills_none_lost_and_repeats_share_their_id() {
    let (url, got) = receiver();
    let mut server = Server::start("notify-kill");
    server.ok(&[
        "notify",
        "webhook",
        "add",
        "audit",
        "--url",
        &url,
        "--kind",
        "generic",
        "--events",
        "freeze_created,freeze_lifted",
        "--secret",
        "k",
    ]);
    for round in 0..8 {
        let reason = format!("round {round}");
        let created = server.json(&["freeze", "now", "--reason", &reason]);
        let id = created["id"].as_u64().unwrap().to_string();
        server.ok(&["freeze", "lift", &id]);
        // Let some sends start, then kill the server wherever it is.
        std::thread::sleep(std::time::Duration::from_millis(150 * (round % 5)));
        server.restart(std::time::Duration::ZERO);
    }
    let log = server.json(&["log", "--limit", "1000"]);
    let expected: std::collections::BTreeSet<String> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "freeze_created" || e["kind"] == "freeze_lifted")
        .map(|e| format!("failsmall-{}-1", e["id"]))
        .collect();
    assert_eq!(expected.len(), 16);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let received: std::collections::BTreeSet<String> =
            got.lock().unwrap().iter().map(|(d, _)| d.clone()).collect();
        if received == expected {
            break;
        }
        assert!(
            received.is_subset(&expected),
            "a delivery id no changelog row has: {received:?} vs {expected:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "lost: {:?}",
            expected.difference(&received).collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = server.ok(&["notify", "dead-letters"]);
    assert!(out.contains("0 pending, 0 dead"), "{out}");
}
