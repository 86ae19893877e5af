//! Freezes and maintenance windows against a real `failsmall server` process: the stop-the-
//! line button refuses pushes and holds a running rollout before its next stage (its reason
//! in the refusal, `rollout status` and `freezes`), only admins create, lift or override,
//! viewers list, every create and lift is in the changelog with its author; a maintenance
//! window leaves its nodes out of a stage until it ends.
//!
//! Nodes are played by a tiny in-test agent over HTTP that ACKs and reports health.
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

/// employees, then free; no bake, no soak.
const TWO_STAGE_PLAN: &str = "name: two\nsoak: 0s\nstages:\n  - name: employees\n    select: { cohort: employee }\n    bake: 0s\n    min_requests: 10\n    gates: []\n  - name: free\n    select: { cohort: free }\n    bake: 0s\n    min_requests: 10\n    gates: []\n";

/// A unit `flags` through [`TWO_STAGE_PLAN`], nodes `n1` (employee) and `n2` (free).
fn fleet(server: &Server) -> Agent<'_> {
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    let plan = server.file("two.yaml", TWO_STAGE_PLAN);
    server.ok(&["unit", "create", "flags", "--spec", &spec, "--plan", &plan]);
    let mut agent = Agent::new(server);
    agent.register("n1", json!({"cohort": "employee"}));
    agent.register("n2", json!({"cohort": "free"}));
    agent
}

fn push(server: &Server, name: &str, text: &str, extra: &[&str]) -> (String, String) {
    let file = server.file(name, text);
    let mut args = vec!["push", "flags", file.as_str(), "-m", name];
    args.extend(extra);
    let pushed = server.json(&args);
    (
        pushed["version"]["hash"].as_str().unwrap().to_owned(),
        pushed["rollout"]["id"].as_u64().unwrap().to_string(),
    )
}

/// Waits (at most 20 s) until `check` holds for rollout `id`'s JSON status.
fn wait_for(server: &Server, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = server.json(&["rollout", "status", id]);
        if check(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} never {what}: {view}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A day from now, RFC 3339 (windows last at most 366 days).
fn tomorrow() -> String {
    days_from_now(1)
}

fn in_two_days() -> String {
    days_from_now(2)
}

fn days_from_now(days: u64) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    failsmall_core::domain::rfc3339_from_ms(now_ms + days * 86_400_000)
}

fn log_entry(server: &Server, kind: &str) -> Value {
    let log = server.json(&["log"]);
    log.as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} entry: {log}"))
}

#[test]
fn stopping_the_line_refuses_pushes_holds_rollouts_and_lifting_it_lets_them_go_on() {
    let server = Server::start("freeze");
    let agent = fleet(&server);
    let (v1, id) = push(&server, "v1.json", r#"{"n": 1}"#, &[]);
    let viewer = server.token("vera", "viewer");
    let deployer = server.token("dan", "deployer");

    // Only an admin stops the line; a viewer lists.
    let stderr = server.fails(&["freeze", "now", "--reason", "x", "--token", &viewer], 1);
    assert!(stderr.contains("may not use this route"), "{stderr}");
    let stderr = server.fails(&["freeze", "now", "--reason", " "], 1);
    assert!(stderr.contains("--reason is empty"), "{stderr}");
    let out = server.ok(&["freeze", "now", "--reason", "incident 42: bad deploys"]);
    assert!(out.contains("freeze 1 created"), "{out}");
    let listed = server.ok(&["freezes", "--token", &viewer]);
    assert!(
        listed.contains("incident 42: bad deploys") && listed.contains("yes"),
        "{listed}"
    );

    // The running rollout finishes its stage, then holds before the next one.
    agent.apply_healthy("n1", "flags", &v1);
    let view = wait_for(&server, &id, "held", |v| !v["held_by_freeze"].is_null());
    assert_eq!(view["stage_name"], "employees");
    assert_eq!(view["nodes_exposed"], 1);
    let text = server.ok(&["rollout", "status", &id]);
    assert!(
        text.contains("(held by freeze 1: incident 42: bad deploys)"),
        "{text}"
    );

    // A push is refused with the freeze's reason, and the refusal is logged.
    let v2 = server.file("v2.json", r#"{"n": 2}"#);
    let stderr = server.fails(&["push", "flags", &v2, "-m", "v2"], 1);
    assert!(stderr.contains("incident 42: bad deploys"), "{stderr}");
    let refused = log_entry(&server, "push_refused");
    assert!(
        refused["reason"].as_str().unwrap().contains("frozen"),
        "{refused}"
    );
    // The override is an admin's, with a reason.
    let stderr = server.fails(
        &[
            "push",
            "flags",
            &v2,
            "-m",
            "v2",
            "--override-freeze",
            "--token",
            &deployer,
        ],
        1,
    );
    assert!(
        stderr.contains("only an admin may override a freeze"),
        "{stderr}"
    );

    // Rollbacks are never frozen... but here the rollout goes on once the line moves again.
    let out = server.ok(&["freeze", "lift", "1", "--reason", "incident resolved"]);
    assert!(out.contains("freeze 1 lifted"), "{out}");
    assert_eq!(server.json(&["freezes"])["freezes"], json!([]));
    agent.apply_healthy("n2", "flags", &v1);
    wait_for(&server, &id, "completed", |v| v["status"] == "completed");

    let created = log_entry(&server, "freeze_created");
    assert_eq!(created["actor"], "admin", "{created}");
    assert!(
        created["reason"]
            .as_str()
            .unwrap()
            .contains("incident 42: bad deploys"),
        "{created}"
    );
    let lifted = log_entry(&server, "freeze_lifted");
    assert!(
        lifted["reason"]
            .as_str()
            .unwrap()
            .contains("incident resolved"),
        "{lifted}"
    );
    let held = log_entry(&server, "held");
    assert!(
        held["reason"].as_str().unwrap().contains("freeze 1"),
        "{held}"
    );

    // A unit's freeze, and an admin's logged override of it.
    let out = server.ok(&[
        "freeze",
        "create",
        "--unit",
        "flags",
        "--until",
        &tomorrow(),
        "--reason",
        "flags audit",
    ]);
    assert!(out.contains("unit flags"), "{out}");
    let stderr = server.fails(&["push", "flags", &v2, "-m", "v2"], 1);
    assert!(stderr.contains("flags audit"), "{stderr}");
    let (_, overridden) = push(&server, "v2.json", r#"{"n": 2}"#, &["--override-freeze"]);
    let view = server.json(&["rollout", "status", &overridden]);
    assert!(
        view["reason"]
            .as_str()
            .unwrap()
            .contains("admin override of freeze 2"),
        "{view}"
    );
}

#[test]
fn bad_windows_get_clear_errors_and_a_weekly_window_names_its_zone() {
    let server = Server::start("freeze-bad");
    let stderr = server.fails(
        &["freeze", "create", "--until", "tomorrow", "--reason", "x"],
        1,
    );
    assert!(
        stderr.contains("window.until") && stderr.contains("RFC 3339"),
        "{stderr}"
    );
    let stderr = server.fails(
        &[
            "freeze",
            "create",
            "--weekly",
            "fri",
            "--at",
            "16:00-24:00",
            "--tz",
            "Mars/Base",
            "--reason",
            "x",
        ],
        1,
    );
    assert!(stderr.contains("IANA time zone"), "{stderr}");
    let stderr = server.fails(
        &[
            "freeze",
            "create",
            "--weekly",
            "caturday",
            "--at",
            "16:00-24:00",
            "--reason",
            "x",
        ],
        1,
    );
    assert!(stderr.contains("expected mon, tue"), "{stderr}");
    let out = server.ok(&[
        "freeze",
        "create",
        "--weekly",
        "fri,sat",
        "--at",
        "16:00-24:00",
        "--tz",
        "Europe/Paris",
        "--select",
        "region=eu",
        "--reason",
        "weekend freeze",
    ]);
    assert!(
        out.contains("nodes region=eu, weekly fri,sat 16:00-24:00 Europe/Paris"),
        "{out}"
    );
    let stderr = server.fails(&["freeze", "lift", "99"], 1);
    assert!(stderr.contains("no freeze 99"), "{stderr}");
    // A freeze that ran out by its own end time: lifting it says it ended then.
    let soon = failsmall_core::domain::rfc3339_from_ms(
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
            + 1_500,
    );
    let out = server.ok(&["freeze", "create", "--until", &soon, "--reason", "brief"]);
    let brief = out.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let stderr = loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let listed = server.json(&["freeze", "list"]);
        if listed.to_string().contains("brief") {
            assert!(
                std::time::Instant::now() < deadline,
                "never ended: {listed}"
            );
            continue;
        }
        break server.fails(&["freeze", "lift", &brief], 1);
    };
    assert!(
        stderr.contains(&format!("freeze {brief} already ended at"))
            && stderr.contains("its end time"),
        "{stderr}"
    );
    let stderr = server.fails(
        &[
            "maintenance",
            "create",
            "--select",
            "rack",
            "--until",
            &tomorrow(),
            "--reason",
            "x",
        ],
        1,
    );
    assert!(stderr.contains("expected KEY=VALUE"), "{stderr}");
    let stderr = server.fails(
        &[
            "maintenance",
            "create",
            "--select",
            "rack=r1",
            "--from",
            &in_two_days(),
            "--until",
            &tomorrow(),
            "--reason",
            "x",
        ],
        1,
    );
    assert!(stderr.contains("until"), "{stderr}");
}

#[test]
fn a_maintenance_window_leaves_its_nodes_out_of_a_stage_until_it_ends() {
    let server = Server::start("maintenance");
    let plan = server.file(
        "everyone.yaml",
        "name: everyone\nsoak: 0s\nstages:\n  - name: everyone\n    bake: 0s\n    min_requests: 10\n    gates: []\n",
    );
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&["unit", "create", "flags", "--spec", &spec, "--plan", &plan]);
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"rack": "r1"}));
    agent.register("n2", json!({"rack": "r2"}));
    let out = server.ok(&[
        "maintenance",
        "create",
        "--select",
        "rack=r1",
        "--until",
        &tomorrow(),
        "--reason",
        "kernel upgrade",
    ]);
    assert!(out.contains("maintenance 1 created"), "{out}");
    let listed = server.ok(&["maintenance", "list"]);
    assert!(
        listed.contains("nodes rack=r1") && listed.contains("kernel upgrade"),
        "{listed}"
    );
    let (version, id) = push(&server, "v1.json", r#"{"n": 1}"#, &[]);
    let view = server.json(&["rollout", "status", &id]);
    assert_eq!(view["nodes_exposed"], 1, "{view}");
    let started = log_entry(&server, "stage_started");
    assert!(
        started["reason"]
            .as_str()
            .unwrap()
            .contains("in a maintenance window: n1"),
        "{started}"
    );
    // Ended early: n1 joins the stage and the rollout waits for its ACK.
    let out = server.ok(&["maintenance", "end", "1", "--reason", "done early"]);
    assert!(out.contains("maintenance 1 ended"), "{out}");
    // Ended already: said so (409), not "no such window".
    let stderr = server.fails(&["maintenance", "end", "1"], 1);
    assert!(
        stderr.contains("maintenance window 1 already ended at")
            && stderr.contains("ended early by request"),
        "{stderr}"
    );
    let view = server.json(&["rollout", "status", &id]);
    assert_eq!(view["nodes_exposed"], 2, "{view}");
    agent.apply_healthy("n2", "flags", &version);
    agent.apply_healthy("n1", "flags", &version);
    wait_for(&server, &id, "completed", |v| v["status"] == "completed");
    let ended = log_entry(&server, "maintenance_ended");
    assert!(
        ended["reason"].as_str().unwrap().contains("done early"),
        "{ended}"
    );
}
