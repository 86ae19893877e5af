//! SLOs against a real `failsmall server` process: `slo create|list|show|delete`, their
//! refusals, error budget and burn rates from agents' health reports (in `slo show`, `-o json`
//! and `/metrics`), a push whose rollout is refused while the budget is spent, the admin's
//! override (in the changelog), and an undo to a stable version that is never refused.
//!
//! Nodes are played by the in-test agent over HTTP.
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

/// A health report of `requests`, `errors` of them errors, from `node` about `unit`.
fn health(agent: &Agent<'_>, node: &str, unit: &str, version: &str, requests: u64, errors: u64) {
    let counts = vec![0u64; failsmall_core::health::LATENCY_BUCKETS];
    let sample = json!({"requests": requests, "errors": errors, "latency": {"counts": counts}});
    agent.report(
        node,
        json!({"kind": "health", "unit": unit, "version": version, "sample": sample}),
    );
}

/// A raw request: its status and JSON body.
fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let response = server
        .http
        .request(method, format!("{}{path}", server.addr))
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

fn changelog_kinds(server: &Server) -> Vec<(String, String)> {
    let log = server.json(&["log"]);
    let entries = log
        .as_array()
        .cloned()
        .or_else(|| log["entries"].as_array().cloned())
        .unwrap();
    entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits (at most 20 s) until rollout `id` has `status`.
fn wait_status(server: &Server, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = server.json(&["rollout", "status", id]);
        if view["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} never became {status}: {view}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn slo_refuses_bad_input_with_the_field_and_what_was_expected() {
    let server = Server::start("slo-input");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&["unit", "create", "flags", "--spec", &spec]);
    let admin = server.admin.clone();
    let base = json!({"name": "avail", "unit": "flags", "target_percent": 99.9, "window": "30d"});
    let refused = |patch: Value| {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        call(&server, reqwest::Method::POST, "/v1/slos", &admin, &body)
    };
    let (status, body) = refused(json!({"target_percent": 100.0}));
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["message"], "target_percent: 100 is outside (0, 100); expected e.g. 99.9",
        "{body}"
    );
    let (status, body) = refused(json!({"target_percent": 0.0}));
    assert_eq!(status, 422, "{body}");
    let (status, body) = refused(json!({"window": "91d"}));
    assert_eq!(
        (status, body["error"]["message"].as_str().unwrap()),
        (422, "window: \"91d\" is outside 1h to 90d")
    );
    let (status, body) = refused(json!({"window": "30m"}));
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expected a whole number of days or hours from 1h to 90d"),
        "{body}"
    );
    let (status, body) = refused(json!({"unit": "nope"}));
    assert_eq!(
        (status, body["error"]["message"].as_str().unwrap()),
        (404, "unit \"nope\" not found")
    );
    let (status, body) = refused(json!({"name": "Not A Name"}));
    assert_eq!(status, 422, "{body}");
    // A deployer may read SLOs, not create them.
    let deployer = server.token("dora", "deployer");
    let (status, _) = call(&server, reqwest::Method::POST, "/v1/slos", &deployer, &base);
    assert_eq!(status, 403);
    // The CLI says it before asking.
    let stderr = server.fails(
        &[
            "slo", "create", "avail", "--unit", "flags", "--target", "100",
        ],
        1,
    );
    assert!(
        stderr.contains("--target 100: expected a percentage strictly between 0 and 100"),
        "{stderr}"
    );
    server.ok(&[
        "slo", "create", "avail", "--unit", "flags", "--target", "99.9",
    ]);
    let stderr = server.fails(
        &[
            "slo", "create", "avail", "--unit", "flags", "--target", "99.9",
        ],
        1,
    );
    assert!(stderr.contains("slo \"avail\" already exists"), "{stderr}");
    let stderr = server.fails(&["slo", "show", "other"], 1);
    assert!(stderr.contains("no SLO \"other\""), "{stderr}");
    let stderr = server.fails(&["slo", "delete", "other"], 1);
    assert!(stderr.contains("slo \"other\" not found"), "{stderr}");
}

#[test]
fn a_spent_error_budget_blocks_rollout_starts_until_an_admin_overrides() {
    let server = Server::start("slo-budget");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    let plan = server.file("one-stage.yaml", ONE_STAGE_PLAN);
    server.ok(&["unit", "create", "flags", "--spec", &spec, "--plan", &plan]);
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "employee"}));
    agent.register("n2", json!({"cohort": "free"}));

    // A first version, rolled out and stable (what an undo goes back to).
    let v1_file = server.file("v1.json", r#"{"v": 1}"#);
    let pushed = server.json(&["push", "flags", &v1_file, "-m", "v1"]);
    let v1 = pushed["version"]["hash"].as_str().unwrap().to_owned();
    let r1 = pushed["rollout"]["id"].as_u64().unwrap().to_string();
    agent.apply_healthy("n1", "flags", &v1);
    agent.apply_healthy("n2", "flags", &v1);
    wait_status(&server, &r1, "completed");

    let created = server.json(&[
        "slo",
        "create",
        "flags-availability",
        "--unit",
        "flags",
        "--target",
        "99",
        "--window",
        "1d",
        "--reason",
        "launch",
    ]);
    assert_eq!(created["window"], "1d");
    assert_eq!(created["block_rollouts_when_exhausted"], true);
    server.ok(&[
        "slo",
        "create",
        "flags-free",
        "--unit",
        "flags",
        "--selector",
        "cohort=free",
        "--target",
        "99.5",
        "--no-block",
    ]);

    // 200 requests, 1 bad: 0.5% errors against a 1% budget: burn rate 0.5, half the budget.
    health(&agent, "n1", "flags", &v1, 100, 0);
    health(&agent, "n2", "flags", &v1, 100, 1);
    let shown = server.json(&["slo", "show", "flags-availability"]);
    assert_eq!(
        (shown["events_total"].as_u64(), shown["events_bad"].as_u64()),
        (Some(200), Some(1))
    );
    for window in ["5m", "30m", "1h", "2h", "6h", "1d", "3d"] {
        let rate = shown["burn_rates"][window].as_f64().unwrap();
        assert!((rate - 0.5).abs() < 1e-9, "{window}: {shown}");
    }
    assert!(
        (shown["error_budget_remaining"].as_f64().unwrap() - 0.5).abs() < 1e-9,
        "{shown}"
    );
    assert_eq!(shown["exhausted"], false);
    // The selector counts n2 only: 1 bad in 100 against 0.5%: burn 2, budget overspent.
    let free = server.json(&["slo", "show", "flags-free"]);
    assert_eq!(
        (free["events_total"].as_u64(), free["events_bad"].as_u64()),
        (Some(100), Some(1))
    );
    assert!(
        (free["burn_rates"]["1h"].as_f64().unwrap() - 2.0).abs() < 1e-9,
        "{free}"
    );
    assert_eq!(free["exhausted"], true);

    // While only the non-blocking SLO is spent, a push rolls out.
    let v2_file = server.file("v2.json", r#"{"v": 2}"#);
    let pushed = server.json(&["push", "flags", &v2_file, "-m", "v2"]);
    let v2 = pushed["version"]["hash"].as_str().unwrap().to_owned();
    let r2 = pushed["rollout"]["id"].as_u64().unwrap().to_string();
    agent.apply_healthy("n1", "flags", &v2);
    agent.apply_healthy("n2", "flags", &v2);
    wait_status(&server, &r2, "completed");

    // 400 more requests, 9 bad (and apply_healthy reported 200 good): 10 bad in 800: 1.25%
    // errors, burn 1.25; the budget is overspent by a quarter.
    health(&agent, "n2", "flags", &v2, 400, 9);
    let shown = server.json(&["slo", "show", "flags-availability"]);
    assert_eq!(
        (shown["events_total"].as_u64(), shown["events_bad"].as_u64()),
        (Some(800), Some(10))
    );
    let expected_burn = (10.0 / 800.0) / 0.01;
    assert!(
        (shown["burn_rates"]["1h"].as_f64().unwrap() - expected_burn).abs() < 1e-9,
        "{shown}"
    );
    assert_eq!(shown["exhausted"], true);
    let table = server.ok(&["slo", "show", "flags-availability"]);
    assert!(table.contains("events       800 total, 10 bad"), "{table}");
    assert!(table.contains("budget left  -25.0% (exhausted)"), "{table}");
    assert!(table.contains("1h      1.25"), "{table}");
    let listed = server.ok(&["slo", "list"]);
    assert!(
        listed.contains(
            "flags-availability  flags  99%     1d      -25.0%       1.25     1.25     yes"
        ),
        "{listed}"
    );

    // /metrics exports the burn rates and the budget.
    let metrics = server
        .http
        .get(format!("{}/metrics", server.addr))
        .bearer_auth(&server.admin)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let sample = |series: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|line| line.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in {metrics}"));
        line[series.len()..].trim().parse().unwrap()
    };
    let burn =
        sample("failsmall_slo_burn_rate{slo=\"flags-availability\",unit=\"flags\",window=\"1h\"}");
    assert!((burn - 1.25).abs() < 1e-9, "{metrics}");
    let left =
        sample("failsmall_slo_error_budget_remaining{slo=\"flags-availability\",unit=\"flags\"}");
    assert!((left + 0.25).abs() < 1e-9, "{metrics}");
    assert!(
        metrics.contains(
            "failsmall_slo_events_total{slo=\"flags-availability\",unit=\"flags\"} 800\n"
        ),
        "{metrics}"
    );

    // A push that would start a rollout is refused, with what to do.
    let v3_file = server.file("v3.json", r#"{"v": 3}"#);
    let stderr = server.fails(&["push", "flags", &v3_file, "-m", "v3"], 1);
    assert!(
        stderr.contains(
            "refused: no rollout of unit flags starts while its error budget is spent: SLO \
             flags-availability (99% over 1d) has -25.0% of its error budget left; wait for the \
             budget to recover, roll back or undo to a stable version, or ask an admin to \
             override (`--override-error-budget --reason ...`)"
        ),
        "{stderr}"
    );
    // A deployer may not override.
    let deployer = server.token("dora", "deployer");
    let stderr = server.fails(
        &[
            "push",
            "flags",
            &v3_file,
            "-m",
            "v3",
            "--override-error-budget",
            "--token",
            &deployer,
        ],
        1,
    );
    assert!(
        stderr.contains("only an admin may override an exhausted error budget"),
        "{stderr}"
    );
    // An undo to the version stable before is never refused.
    let undone = server.json(&["rollout", "undo", "flags", "--reason", "back to v1"]);
    let r3 = undone["id"].as_u64().unwrap().to_string();
    agent.apply_healthy("n1", "flags", &v1);
    agent.apply_healthy("n2", "flags", &v1);
    wait_status(&server, &r3, "completed");
    // Errors go on: the budget stays spent.
    health(&agent, "n2", "flags", &v1, 100, 20);
    assert_eq!(
        server.json(&["slo", "show", "flags-availability"])["exhausted"],
        true
    );
    // The admin overrides, with a reason: the rollout starts, and the changelog says so.
    let pushed = server.json(&[
        "push",
        "flags",
        &v3_file,
        "-m",
        "fixes the errors",
        "--override-error-budget",
    ]);
    assert!(pushed["rollout"]["id"].as_u64().is_some(), "{pushed}");
    let kinds = changelog_kinds(&server);
    let overridden: Vec<_> = kinds
        .iter()
        .filter(|(kind, _)| kind == "error_budget_overridden")
        .collect();
    assert_eq!(overridden.len(), 1, "{kinds:?}");
    assert!(
        overridden[0].1.contains("fixes the errors"),
        "{overridden:?}"
    );
    assert!(
        kinds.iter().any(|(kind, reason)| kind == "slo_created"
            && reason.contains("SLO flags-availability: 99% of requests good over 1d")),
        "{kinds:?}"
    );

    // Deleted, the SLO blocks nothing more (and the changelog says who deleted it).
    server.ok(&[
        "slo",
        "delete",
        "flags-availability",
        "--reason",
        "replaced",
    ]);
    let listed = server.json(&["slo", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(
        changelog_kinds(&server)
            .iter()
            .any(|(kind, reason)| kind == "slo_deleted"
                && reason == "SLO flags-availability deleted: replaced")
    );
}

#[test]
fn slo_counts_survive_a_server_restart() {
    let mut server = Server::start("slo-restart");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&["unit", "create", "flags", "--spec", &spec]);
    server.ok(&[
        "slo", "create", "avail", "--unit", "flags", "--target", "99", "--window", "7d",
    ]);
    let hash = "0".repeat(64);
    {
        let mut agent = Agent::new(&server);
        agent.register("n1", json!({"cohort": "employee"}));
        health(&agent, "n1", "flags", &hash, 1000, 25);
    }
    let before = server.json(&["slo", "show", "avail"]);
    assert_eq!(
        (
            before["events_total"].as_u64(),
            before["events_bad"].as_u64()
        ),
        (Some(1000), Some(25))
    );
    // SIGTERM, as `systemctl stop` does: the server saves the counts on its way out.
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", server.child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
    let listen = server.addr.trim_start_matches("http://").to_owned();
    server = Server::start_in(server.dir.clone(), &listen, &[]);
    let after = server.json(&["slo", "show", "avail"]);
    for field in [
        "events_total",
        "events_bad",
        "error_budget_remaining",
        "exhausted",
        "burn_rates",
    ] {
        assert_eq!(after[field], before[field], "{field}: {after}");
    }
    assert_eq!(after["exhausted"], true);
    // Deleting the SLO deletes its counts: one created again with that name starts afresh.
    server.ok(&["slo", "delete", "avail"]);
    server.ok(&[
        "slo", "create", "avail", "--unit", "flags", "--target", "99",
    ]);
    assert_eq!(server.json(&["slo", "show", "avail"])["events_total"], 0);
}

/// Plays n1 (stage one) and n2 (stage two) through rollout `id` of `version` of `flags`,
/// healthy, until it completes: the burn-rate feed and the gate evaluation take seconds each.
fn drive(server: &Server, agent: &Agent<'_>, id: &str, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let view = server.json(&["rollout", "status", id]);
        if view["status"] == "completed" {
            return;
        }
        agent.apply_healthy("n1", "flags", version);
        if view["stage_index"] == 1 {
            agent.apply_healthy("n2", "flags", version);
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} never completed: {view}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Two stages, each gated by the SRE workbook's fast burn over 5 minutes.
const BURN_GATED_PLAN: &str = "name: burn-gated\nsoak: 0s\nstages:\n  - name: employees\n    select: {cohort: employee}\n    bake: 0s\n    timeout: 10m\n    gates: [\"min_requests 100\", \"burn_rate_5m > 14.4\"]\n  - name: everyone\n    bake: 0s\n    gates: [\"burn_rate_5m > 14.4\"]\n";

#[test]
fn a_burn_rate_gate_holds_while_the_service_burns_and_blames_no_version() {
    let server = Server::start("slo-burn-gate");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    let plan = server.file("burn.yaml", BURN_GATED_PLAN);
    server.ok(&["unit", "create", "flags", "--spec", &spec, "--plan", &plan]);
    server.ok(&[
        "slo",
        "create",
        "flags-availability",
        "--unit",
        "flags",
        "--target",
        "99",
        "--window",
        "1h",
        "--no-block",
    ]);
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "employee"}));
    agent.register("n2", json!({"cohort": "free"}));

    // A first version: the service is healthy (burn 0), so both stages pass.
    let v1_file = server.file("v1.json", r#"{"v": 1}"#);
    let pushed = server.json(&["push", "flags", &v1_file, "-m", "v1"]);
    let v1 = pushed["version"]["hash"].as_str().unwrap().to_owned();
    let r1 = pushed["rollout"]["id"].as_u64().unwrap().to_string();
    drive(&server, &agent, &r1, &v1);

    // The second version reaches n1; then every node fails half its requests, with the
    // version or not: burn 50 over 5 minutes.
    let v2_file = server.file("v2.json", r#"{"v": 2}"#);
    let pushed = server.json(&["push", "flags", &v2_file, "-m", "v2"]);
    let v2 = pushed["version"]["hash"].as_str().unwrap().to_owned();
    let r2 = pushed["rollout"]["id"].as_u64().unwrap().to_string();
    agent.apply_healthy("n1", "flags", &v2);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        health(&agent, "n1", "flags", &v2, 200, 100);
        health(&agent, "n2", "flags", &v1, 200, 100);
        let log = changelog_kinds(&server);
        if log
            .iter()
            .any(|(kind, reason)| kind == "fleet_unhealthy" && reason.contains("burn_rate_5m"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the burn never held the rollout: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let view = server.json(&["rollout", "status", &r2]);
    assert_eq!(view["status"], "running", "{view}");
    assert_eq!(view["stage_index"], 0, "{view}");
    // Held: the burn is over the limit, and the version is not blamed for it.
    assert!(view.to_string().contains("burn_rate_5m"), "{view}");
    assert!(
        !view["gates"][0]["verdict"]
            .as_object()
            .unwrap()
            .contains_key("Fail"),
        "{view}"
    );

    // The service recovers (good traffic drowns the bad): the rollout goes on and completes,
    // and the version was never quarantined.
    health(&agent, "n1", "flags", &v2, 100_000, 0);
    health(&agent, "n2", "flags", &v1, 100_000, 0);
    drive(&server, &agent, &r2, &v2);
    let versions = server.json(&["versions", "flags"]).to_string();
    assert!(!versions.contains("quarantined\":true"), "{versions}");
}
