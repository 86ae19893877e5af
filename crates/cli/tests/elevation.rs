//! Online break glass on a real server: a person asks for a time-boxed elevated role, other
//! people approve it (never the requester, each person once), the requester alone claims it
//! once, and the token works for its role and says when it ends. Every step is in the
//! changelog; the claim is a `break_glass` entry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Output;

use serde_json::Value;
use support::Server;

/// Runs the CLI as the holder of `token`.
fn as_person(server: &Server, token: &str, args: &[&str]) -> Output {
    server
        .command()
        .env("FAILSMALL_TOKEN", token)
        .args(args)
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn refused(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(expected), "no {expected:?} in {stderr}");
}

#[test]
fn an_elevated_role_needs_other_peoples_approvals_is_claimed_once_and_ends_on_its_own() {
    let server = Server::start("elevation");
    let alice = server.token("alice", "approver");
    let bob = server.token("bob", "approver");
    let carol = server.token("carol", "approver");
    let dave = server.token("dave", "viewer");

    // Bad requests say what was expected.
    refused(
        &as_person(
            &server,
            &alice,
            &[
                "break-glass",
                "request",
                "--role",
                "admin",
                "--for",
                "9h",
                "--reason",
                "x",
            ],
        ),
        "expected from 1m to 4h",
    );
    refused(
        &as_person(
            &server,
            &alice,
            &[
                "break-glass",
                "request",
                "--role",
                "agent",
                "--for",
                "1h",
                "--reason",
                "x",
            ],
        ),
        "break glass grants admin, deployer or approver",
    );

    let asked = ok(&as_person(
        &server,
        &alice,
        &[
            "break-glass",
            "request",
            "--role",
            "admin",
            "--for",
            "30m",
            "--reason",
            "the control plane's admin is on a plane",
            "-o",
            "json",
        ],
    ));
    let request: Value = serde_json::from_str(&asked).unwrap();
    let id = request["id"].as_u64().unwrap().to_string();
    assert_eq!(request["state"], "pending");
    assert_eq!(request["approvals_needed"], 2);

    // Not the requester, not twice, not a viewer; and nothing to claim before the grant.
    refused(
        &as_person(&server, &alice, &["break-glass", "approve", &id]),
        "alice asked for break-glass request",
    );
    ok(&as_person(
        &server,
        &bob,
        &[
            "break-glass",
            "approve",
            &id,
            "--reason",
            "confirmed by phone",
        ],
    ));
    refused(
        &as_person(&server, &bob, &["break-glass", "approve", &id]),
        "bob approved break-glass request",
    );
    refused(
        &as_person(&server, &dave, &["break-glass", "approve", &id]),
        "403",
    );
    refused(
        &as_person(&server, &alice, &["break-glass", "claim", &id]),
        "has 1 approval(s) and is not granted yet",
    );
    let approved = ok(&as_person(
        &server,
        &carol,
        &["break-glass", "approve", &id],
    ));
    assert!(approved.contains("granted"), "{approved}");

    // Only the requester claims, once; the token acts as admin for alice.
    refused(
        &as_person(&server, &bob, &["break-glass", "claim", &id]),
        "is alice's; only they may claim it",
    );
    let claimed = as_person(&server, &alice, &["break-glass", "claim", &id]);
    let elevated = ok(&claimed).trim().to_owned();
    assert!(
        String::from_utf8_lossy(&claimed.stderr).contains("shown only now"),
        "{claimed:?}"
    );
    refused(
        &as_person(&server, &alice, &["break-glass", "claim", &id]),
        "was claimed already",
    );
    let whoami = ok(&as_person(&server, &elevated, &["whoami", "-o", "json"]));
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["role"], "admin", "{whoami}");
    // An admin-only route answers to it, and the token ends 30 minutes after the grant.
    let tokens = ok(&as_person(
        &server,
        &elevated,
        &["token", "list", "-o", "json"],
    ));
    let tokens: Value = serde_json::from_str(&tokens).unwrap();
    let token = tokens
        .as_array()
        .or_else(|| tokens["tokens"].as_array())
        .unwrap()
        .iter()
        .find(|t| t["name"] == format!("break-glass-{id}"))
        .cloned()
        .unwrap();
    let shown: Value = serde_json::from_str(&ok(&as_person(
        &server,
        &dave,
        &["break-glass", "requests", "-o", "json"],
    )))
    .unwrap();
    let shown = &shown["requests"][0];
    assert_eq!(shown["state"], "claimed");
    assert_eq!(
        token["expires_ms"].as_u64().unwrap(),
        shown["granted_ms"].as_u64().unwrap() + 30 * 60_000
    );
    assert_eq!(token["owner"], "alice");

    // The story is in the changelog; the claim is a break_glass entry.
    let log = server.ok(&["log", "-o", "json"]);
    for kind in [
        "break_glass_requested",
        "break_glass_approved",
        "break_glass",
    ] {
        assert!(
            log.contains(&format!("\"kind\": \"{kind}\"")),
            "{kind}: {log}"
        );
    }
    assert!(
        log.contains("online break glass: alice holds role admin until"),
        "{log}"
    );
}
