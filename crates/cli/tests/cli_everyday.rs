//! The everyday operator commands against a real `failsmall server` process: global flags
//! before or after the subcommand, `whoami`, `status`, `versions` with each version's status,
//! `version get`, `rollout undo|retry`, rolling back an aborted rollout, `quarantine
//! list|lift`, `unit delete`, `node remove`, `push --watch`.
//!
//! Nodes are played by a tiny in-test agent over HTTP that ACKs, reports health, or NACKs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// A unit `flags` whose own plan is [`ONE_STAGE_PLAN`], and a node `n1` (employee).
fn flags_unit(server: &Server) -> Agent<'_> {
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    let plan = server.file("one-stage.yaml", ONE_STAGE_PLAN);
    server.ok(&["unit", "create", "flags", "--spec", &spec, "--plan", &plan]);
    let mut agent = Agent::new(server);
    agent.register("n1", json!({"cohort": "employee"}));
    agent
}

/// Pushes `text` to `flags`; the version and its rollout's id.
fn push(server: &Server, name: &str, text: &str) -> (String, String) {
    let file = server.file(name, text);
    let pushed = server.json(&["push", "flags", &file, "-m", name]);
    (
        pushed["version"]["hash"].as_str().unwrap().to_owned(),
        pushed["rollout"]["id"].as_u64().unwrap().to_string(),
    )
}

/// Waits (at most 20 s) until rollout `id` has `status`.
fn wait_status(server: &Server, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = server.json(&["rollout", "status", id]);
        if view["status"] == status {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} never became {status}: {view}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status `versions` gives each version, by hash.
fn statuses(server: &Server) -> std::collections::BTreeMap<String, String> {
    let listed = server.json(&["versions", "flags"]);
    listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["hash"].as_str().unwrap().to_owned(),
                v["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn global_flags_work_before_or_after_the_subcommand_and_whoami_and_status_answer() {
    let server = Server::start("global");
    let viewer = server.token("vera", "viewer");
    // No address or token in the environment: only the flags, before the subcommand.
    let run = |args: &[&str]| -> Output {
        Command::new(BIN)
            .args(args)
            .env_remove("FAILSMALL_ADDR")
            .env_remove("FAILSMALL_TOKEN")
            .env("HOME", server.dir.path())
            .env("XDG_CONFIG_HOME", server.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let before = run(&[
        "--addr",
        &server.addr,
        "--token",
        &viewer,
        "-o",
        "json",
        "whoami",
    ]);
    assert_eq!(before.status.code(), Some(0), "{before:?}");
    let who: Value = serde_json::from_slice(&before.stdout).unwrap();
    assert_eq!(who["name"], "vera");
    assert_eq!(who["role"], "viewer");
    let after = run(&[
        "whoami",
        "--addr",
        &server.addr,
        "--token",
        &viewer,
        "-o",
        "json",
    ]);
    assert_eq!(serde_json::from_slice::<Value>(&after.stdout).unwrap(), who);
    let nested = run(&[
        "--addr",
        &server.addr,
        "--token",
        &viewer,
        "rollout",
        "list",
    ]);
    assert_eq!(nested.status.code(), Some(0), "{nested:?}");
    assert!(String::from_utf8_lossy(&nested.stdout).starts_with("ID"));
    let text = server.ok(&["whoami"]);
    assert!(text.starts_with("admin (role admin)"), "{text}");

    let mut agent = flags_unit(&server);
    agent.register("n2", json!({"cohort": "free"}));
    let status = server.json(&["status"]);
    assert_eq!(status["counts"]["units"], 1, "{status}");
    assert_eq!(status["counts"]["nodes"], 2, "{status}");
    assert_eq!(status["counts"]["rollouts"]["running"], 0, "{status}");
    assert!(status["store"]["schema_version"].as_u64().unwrap() > 0);
    let text = server.ok(&["status"]);
    assert!(
        text.contains("nodes      2: 0 down (not heard from for 1m30s)"),
        "{text}"
    );
    assert!(
        text.contains("units      1 (0 versions, 0 quarantined)"),
        "{text}"
    );
    assert!(!text.contains("90000"), "{text}");
}

#[test]
fn versions_show_their_status_get_writes_the_bytes_and_undo_goes_back() {
    let server = Server::start("versions");
    let agent = flags_unit(&server);
    let out = server.ok(&["versions", "flags"]);
    assert!(out.contains("no versions yet"), "{out}");
    let stderr = server.fails(&["versions", "nope"], 1);
    assert!(stderr.contains("not found"), "{stderr}");

    let (v1, r1) = push(&server, "v1.json", r#"{"kill": false}"#);
    assert_eq!(statuses(&server)[&v1], "rolling out");
    agent.apply_healthy("n1", "flags", &v1);
    wait_status(&server, &r1, "completed");
    let (v2, r2) = push(&server, "v2.json", r#"{"kill": true}"#);
    agent.apply_healthy("n1", "flags", &v2);
    wait_status(&server, &r2, "completed");
    // A unit without a plan stores versions that never rolled out.
    let spec = server.file("raw.spec.json", r#"{"format": "raw", "max_bytes": 64}"#);
    server.ok(&["unit", "create", "raw", "--spec", &spec]);
    let file = server.file("never.txt", "never");
    let never = server.json(&["push", "raw", &file, "-m", "never", "--no-rollout"]);
    let listed = server.json(&["versions", "raw"]);
    assert_eq!(
        listed["versions"][0]["status"], "never rolled out",
        "{listed}"
    );
    assert_eq!(listed["versions"][0]["hash"], never["version"]["hash"]);
    let listed = statuses(&server);
    assert_eq!(listed[&v2], "stable", "{listed:?}");
    assert_eq!(listed[&v1], "was stable", "{listed:?}");
    let table = server.ok(&["versions", "flags"]);
    assert!(table.starts_with("SEQ"), "{table}");
    assert!(
        table.contains("stable") && table.contains("1 nodes"),
        "{table}"
    );

    // The bytes, exactly, to stdout or to a file; by a prefix too.
    let got = server.run(&["version", "get", "flags", &v1[..8]]);
    assert_eq!(got.status.code(), Some(0));
    assert_eq!(got.stdout, br#"{"kill": false}"#);
    let out_path = server.dir.path().join("got.json");
    server.ok(&[
        "version",
        "get",
        "flags",
        &v2,
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out_path).unwrap(), br#"{"kill": true}"#);
    let stderr = server.fails(&["version", "get", "flags", "abcd"], 1);
    assert!(stderr.contains("no version starting with abcd"), "{stderr}");

    // Undo: back to v1 through the unit's plan; then v1 is stable and v2 was.
    let undone = server.json(&["rollout", "undo", "flags", "--reason", "v2 confuses people"]);
    assert_eq!(undone["version"], v1.as_str(), "{undone}");
    assert_eq!(undone["plan"], "one-stage");
    let r3 = undone["id"].as_u64().unwrap().to_string();
    // While it runs, another undo is refused with the way out.
    let stderr = server.fails(&["rollout", "undo", "flags"], 1);
    assert!(
        stderr.contains(&format!("rollout rollback {r3}")),
        "{stderr}"
    );
    agent.apply_healthy("n1", "flags", &v1);
    wait_status(&server, &r3, "completed");
    let listed = statuses(&server);
    assert_eq!(listed[&v1], "stable", "{listed:?}");
    assert_eq!(listed[&v2], "was stable", "{listed:?}");
    let story = server.json(&["log", "--rollout", &r3]);
    assert!(
        story
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("undo: back from")),
        "{story}"
    );
    // Undo --fast: at once, through the fast plan.
    let fast = server.json(&["rollout", "undo", "flags", "--fast"]);
    assert_eq!(fast["version"], v2.as_str(), "{fast}");
    assert_eq!(fast["plan"], "fast-undo");
    let r4 = fast["id"].as_u64().unwrap().to_string();
    agent.apply_healthy("n1", "flags", &v2);
    wait_status(&server, &r4, "completed");
    assert_eq!(statuses(&server)[&v2], "stable");

    // A NACKed version is quarantined: listed, then lifted by an admin with a reason.
    let (v5, r5) = push(&server, "v5.json", r#"{"kill": 5}"#);
    agent.nack("n1", "flags", &v5);
    wait_status(&server, &r5, "rolled_back");
    assert_eq!(statuses(&server)[&v5], "quarantined");
    // The rollout's story holds the NACK that rolled it back, with the node and its reason.
    let story = server.json(&["log", "--rollout", &r5]);
    let nack = story
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "node_rejected")
        .unwrap_or_else(|| panic!("no node_rejected entry in the rollout's story: {story}"));
    assert_eq!(nack["stage"], "everywhere", "{nack}");
    assert!(
        nack["reason"]
            .as_str()
            .unwrap()
            .contains("node n1: 200 features is over the limit"),
        "{nack}"
    );
    let listed = server.json(&["quarantine", "list"]);
    assert_eq!(listed[0]["version"], v5.as_str(), "{listed}");
    assert_eq!(listed[0]["rollout"].as_u64().unwrap().to_string(), r5);
    let table = server.ok(&["quarantine", "list", "--unit", "flags"]);
    assert!(
        table.contains(&v5[..12]) && table.contains(&format!("r{r5}")),
        "{table}"
    );
    let deployer = server.token("dee", "deployer");
    let stderr = server.fails(
        &[
            "quarantine",
            "lift",
            "flags",
            &v5,
            "--reason",
            "x",
            "--token",
            &deployer,
        ],
        1,
    );
    assert!(stderr.contains("HTTP 403"), "{stderr}");
    let stderr = server.fails(&["quarantine", "lift", "flags", &v5, "--reason", " "], 1);
    assert!(stderr.contains("--reason is empty"), "{stderr}");
    let out = server.ok(&[
        "quarantine",
        "lift",
        "flags",
        &v5[..10],
        "--reason",
        "consumer fixed in 2.4",
    ]);
    assert!(out.contains("lifted"), "{out}");
    assert_eq!(server.json(&["quarantine", "list"]), json!([]));
    let log = server.json(&["log", "--unit", "flags"]);
    let lifted = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "quarantine_lifted")
        .unwrap_or_else(|| panic!("no quarantine_lifted entry: {log}"));
    assert!(
        lifted["reason"]
            .as_str()
            .unwrap()
            .contains("consumer fixed in 2.4")
    );
    assert_eq!(lifted["actor"], "admin");
    assert_eq!(statuses(&server)[&v5], "rolled back");
    let stderr = server.fails(
        &["quarantine", "lift", "flags", &v5, "--reason", "again"],
        1,
    );
    assert!(stderr.contains("is not quarantined"), "{stderr}");
}

#[test]
fn an_aborted_rollout_is_rolled_back_retried_and_units_and_nodes_are_removed() {
    let server = Server::start("abort-retry");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    let two_stages = server.file(
        "two.yaml",
        "name: two\nstages:\n  - name: employees\n    select: { cohort: employee }\n    bake: 10m\n    min_requests: 10\n    gates: []\n  - name: free\n    select: { cohort: free }\n    bake: 10m\n    min_requests: 10\n    gates: []\n",
    );
    server.ok(&[
        "unit",
        "create",
        "flags",
        "--spec",
        &spec,
        "--plan",
        &two_stages,
    ]);
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "employee"}));
    agent.register("n2", json!({"cohort": "free"}));
    let (v1, r1) = push(&server, "v1.json", r#"{"n": 1}"#);
    agent.apply_healthy("n1", "flags", &v1);
    let aborted = server.json(&["rollout", "abort", &r1, "--reason", "wrong file"]);
    assert_eq!(aborted["status"], "aborted");
    // Errors speak the API's words, never the engine's enum names.
    let stderr = server.fails(&["rollout", "pause", &r1], 1);
    assert!(
        stderr.contains(&format!(
            "rollout r{r1} is aborted; pause needs it to be running"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Aborted") && !stderr.contains("Pause"),
        "{stderr}"
    );

    // Rolling back the aborted rollout puts n1 back on nothing and quarantines v1.
    let rolled = server.json(&[
        "rollout",
        "rollback",
        &r1,
        "--reason",
        "it was bad after all",
    ]);
    assert_eq!(rolled["status"], "rolled_back", "{rolled}");
    assert!(
        rolled["outcome"]
            .as_str()
            .unwrap()
            .contains("1 nodes put back"),
        "{rolled}"
    );
    assert_eq!(
        server.json(&["quarantine", "list"])[0]["version"],
        v1.as_str()
    );
    let stderr = server.fails(&["rollout", "rollback", &r1], 1);
    assert!(stderr.contains("is rolled_back"), "{stderr}");

    // Retry: the same version through the same plan; a quarantined one only by an admin.
    let deployer = server.token("dee", "deployer");
    let stderr = server.fails(&["rollout", "retry", &r1, "--token", &deployer], 1);
    assert!(stderr.contains("quarantined"), "{stderr}");
    let retried = server.json(&[
        "rollout",
        "retry",
        &format!("r{r1}"),
        "--override-quarantine",
    ]);
    assert_eq!(retried["version"], v1.as_str(), "{retried}");
    assert_eq!(retried["plan"], "two");
    assert_eq!(retried["status"], "running");
    let r2 = retried["id"].as_u64().unwrap().to_string();
    let stderr = server.fails(&["rollout", "retry", &r2], 1);
    assert!(
        stderr.contains("is running; only a rolled back or aborted"),
        "{stderr}"
    );

    // A unit with a running rollout is not deleted; once it ended, it is, and nodes drop it.
    let stderr = server.fails(&["unit", "delete", "flags"], 1);
    assert!(stderr.contains(&format!("rollout abort {r2}")), "{stderr}");
    server.ok(&["rollout", "abort", &r2]);
    let stderr = server.fails(&["rollout", "undo", "flags"], 1);
    assert!(
        stderr.contains(
            "unit flags has no earlier stable version to go back to (it has no stable version)"
        ),
        "{stderr}"
    );
    let deleter = server.token("dee2", "deployer");
    let stderr = server.fails(&["unit", "delete", "flags", "--token", &deleter], 1);
    assert!(stderr.contains("HTTP 403"), "{stderr}");
    let out = server.ok(&["unit", "delete", "flags", "--reason", "retired"]);
    assert!(
        out.contains("unit flags deleted with its 1 versions"),
        "{out}"
    );
    let stderr = server.fails(&["unit", "show", "flags"], 1);
    assert!(stderr.contains("not found"), "{stderr}");
    let log = server.json(&["log", "--unit", "flags"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "unit_deleted"
                && e["reason"].as_str().unwrap().contains("retired")),
        "{log}"
    );

    // A node is removed from the fleet, with a changelog entry.
    let out = server.ok(&["node", "remove", "n2", "--reason", "decommissioned"]);
    assert!(out.contains("node n2 removed"), "{out}");
    let nodes = server.json(&["nodes"]);
    let ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["n1"]);
    let stderr = server.fails(&["node", "remove", "n2"], 1);
    assert!(stderr.contains("not registered"), "{stderr}");
    let log = server.json(&["log"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "node_removed"
                && e["reason"].as_str().unwrap().contains("decommissioned")),
        "{log}"
    );
}

#[test]
fn push_watch_follows_the_rollout_it_started() {
    let server = Server::start("push-watch");
    let agent = flags_unit(&server);
    let file = server.file("v1.json", r#"{"kill": false}"#);
    let mut child = server
        .command()
        .args(["push", "flags", &file, "-m", "watched", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let version = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("push --watch printed no version");
        seen.push(line.clone());
        if let Some(hash) = line.strip_prefix("version  ") {
            break hash.split_whitespace().next().unwrap().to_owned();
        }
    };
    agent.apply_healthy("n1", "flags", &version);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "push --watch never ended: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        seen.push(line);
    }
    assert_eq!(status.code(), Some(0), "{seen:?}");
    assert!(seen.iter().any(|l| l.contains("completed")), "{seen:?}");
}

#[test]
fn nodes_silent_past_the_expiry_are_removed_and_live_ones_stay() {
    let server = Server::start_in(
        Arc::new(fresh_dir("expiry")),
        "127.0.0.1:0",
        &["--node-expire-after", "2s"],
    );
    let mut agent = Agent::new(&server);
    agent.register("dead", json!({"cohort": "free"}));
    agent.register("live", json!({"cohort": "free"}));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The live node's agent keeps asking; the dead one says nothing.
        agent.register("live", json!({"cohort": "free"}));
        let nodes = server.json(&["nodes"]);
        let ids: Vec<&str> = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        if ids == ["live"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node never expired: {nodes}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = server.json(&["log"]);
    let expired = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "node_removed")
        .unwrap_or_else(|| panic!("no node_removed entry: {log}"));
    let reason = expired["reason"].as_str().unwrap();
    assert!(reason.contains("node dead expired"), "{reason}");
    assert!(reason.contains("--node-expire-after 2s"), "{reason}");
    assert_eq!(expired["actor"], "failsmall");
    let stderr = server.fails(
        &[
            "server",
            "--data-dir",
            "/nonexistent",
            "--node-expire-after",
            "5ms",
        ],
        2,
    );
    assert!(stderr.contains("shorter than 1s"), "{stderr}");
}

#[test]
fn progress_counts_add_up_skipped_stages_say_why_and_an_approval_says_how() {
    let server = Server::start("progress");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    let plan = server.file(
        "three.yaml",
        "name: three\nsoak: 0s\nstages:\n  - name: employees\n    select: { cohort: employee }\n    bake: 0s\n    min_requests: 10\n    gates: []\n  - name: nobody\n    select: { cohort: enterprise }\n    bake: 0s\n    min_requests: 10\n    gates: []\n  - name: free\n    select: { cohort: free }\n    bake: 0s\n    min_requests: 10\n    gates: []\n    approval: true\n",
    );
    server.ok(&["unit", "create", "flags", "--spec", &spec, "--plan", &plan]);
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "employee"}));
    agent.register("n2", json!({"cohort": "free"}));
    let (version, id) = push(&server, "v1.json", r#"{"n": 1}"#);
    agent.apply_healthy("n1", "flags", &version);
    // The approval of stage free comes before it exposes its node: after stage nobody.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.json(&["rollout", "status", &id])["phase"] != "awaiting_approval" {
        assert!(
            Instant::now() < deadline,
            "the stage never awaited approval"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = server.ok(&["rollout", "status", &id]);
    let hint = format!("failsmall rollout approve {id} --reason");
    assert!(
        text.contains(&format!("approval  waiting for approval: {hint}")),
        "{text}"
    );
    assert!(text.contains("someone other than admin"), "{text}");
    assert!(
        text.contains("skipped   stage nobody: skipped: no nodes selected by this stage"),
        "{text}"
    );
    assert_eq!(server.json(&["rollout", "status", &id])["nodes_exposed"], 1);
    // The plain watch says the same.
    let watched = server.run(&[
        "rollout",
        "watch",
        &id,
        "--interval",
        "100ms",
        "--timeout",
        "300ms",
    ]);
    let out = String::from_utf8_lossy(&watched.stdout);
    assert_eq!(watched.status.code(), Some(1), "{out}");
    assert!(
        out.contains("stage nobody skipped: no nodes selected by this stage"),
        "{out}"
    );
    assert!(out.contains(&hint), "{out}");
    let approver = server.token("ann", "approver");
    let approved = server.json(&["rollout", "approve", &id, "--token", &approver]);
    assert_eq!(approved["stage_name"], "free", "{approved}");
    // Two stages' nodes are exposed, one applied; the current stage selects one.
    let text = server.ok(&["rollout", "status", &id]);
    assert!(
        text.contains("nodes     1 of 2 exposed applied; this stage selects 1"),
        "{text}"
    );
    agent.apply_healthy("n2", "flags", &version);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.json(&["rollout", "status", &id])["status"] != "completed" {
        assert!(Instant::now() < deadline, "the rollout never completed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unit_show_says_what_a_push_does_edits_are_diffs_and_refused_pushes_are_logged() {
    let server = Server::start("units");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&["unit", "create", "flags", "--spec", &spec]);
    let shown = server.ok(&["unit", "show", "flags"]);
    assert!(
        shown.contains("plan         none of its own: a push rolls out through `--plan FILE` when given, else the built-in default plan default: employees (bake"),
        "{shown}"
    );
    assert!(shown.contains("→ enterprise (bake"), "{shown}");
    assert!(shown.contains("soak 1h"), "{shown}");
    let plan = server.file("one-stage.yaml", ONE_STAGE_PLAN);
    server.ok(&["unit", "edit", "flags", "--plan", &plan]);
    let shown = server.ok(&["unit", "show", "flags"]);
    assert!(
        shown.contains("plan         one-stage: everywhere (bake 0s); soak 0s (its own; every push rolls out through it)"),
        "{shown}"
    );

    // An edit is recorded as what changed, field by field.
    let bigger = server.file(
        "bigger.spec.json",
        r#"{"format": "json", "max_bytes": 512, "fail_mode": "open", "safe_default": "{}"}"#,
    );
    server.ok(&[
        "unit",
        "edit",
        "flags",
        "--spec",
        &bigger,
        "--no-plan",
        "--validator",
        "cat",
        "--validator-arg",
        "-",
    ]);
    let log = server.json(&["log", "--unit", "flags"]);
    let edits: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "unit_updated")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(edits.len(), 2, "{log}");
    assert_eq!(
        edits[0],
        "revision 1 → 2: plan none → one-stage: everywhere"
    );
    let last = edits[1];
    assert!(last.starts_with("revision 2 → 3: "), "{last}");
    assert!(last.contains("spec.max_bytes 256 → 512"), "{last}");
    assert!(last.contains("fail mode closed → open"), "{last}");
    assert!(last.contains("spec.safe_default none → {}"), "{last}");
    assert!(last.contains("plan one-stage: everywhere → none"), "{last}");
    assert!(
        last.contains("validator none → cat - (timeout 5s)"),
        "{last}"
    );

    // A refused push is in the changelog, with who, which bytes and why.
    let bad = server.file("bad.json", "{not json");
    let stderr = server.fails(&["push", "flags", &bad, "-m", "broken", "--no-rollout"], 1);
    assert!(stderr.contains("HTTP 422"), "{stderr}");
    let log = server.json(&["log", "--unit", "flags"]);
    let refused = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "push_refused")
        .unwrap_or_else(|| panic!("no push_refused entry: {log}"));
    assert_eq!(refused["actor"], "admin");
    assert_eq!(refused["version"].as_str().unwrap().len(), 64);
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("refused (\"broken\")"), "{reason}");
    assert!(server.json(&["versions", "flags"])["versions"] == json!([]));
}

#[test]
fn undo_and_the_rollback_of_an_aborted_rollout_move_a_real_agent_back() {
    let server = Server::start("real-agent");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    // No consumer here: a stage passes on the node's ACK alone (a NACK still fails it).
    let quick = server.file(
        "quick.yaml",
        "name: quick\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 0\n    gates: []\n",
    );
    server.ok(&["unit", "create", "flags", "--spec", &spec, "--plan", &quick]);
    let agent = RealAgent::start(&server, "n1", "cohort=employee");
    // A rollout selects the nodes registered when its stage starts: wait for the agent's.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.json(&["nodes"]).as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the agent never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (v1_text, v2_text) = (r#"{"v": 1}"#, r#"{"v": 2}"#);
    let (_, r1) = push(&server, "v1.json", v1_text);
    agent.wait_serving("flags", v1_text.as_bytes());
    wait_status(&server, &r1, "completed");
    let (_, r2) = push(&server, "v2.json", v2_text);
    agent.wait_serving("flags", v2_text.as_bytes());
    wait_status(&server, &r2, "completed");

    // Undo: the node goes back to v1, through the plan, and v1 is stable again.
    let undone = server.json(&["rollout", "undo", "flags", "--reason", "v2 was a mistake"]);
    let r3 = undone["id"].as_u64().unwrap().to_string();
    agent.wait_serving("flags", v1_text.as_bytes());
    wait_status(&server, &r3, "completed");
    let versions = server.json(&["versions", "flags"]);
    assert_eq!(versions["versions"][1]["status"], "stable", "{versions}");
    assert_eq!(versions["versions"][1]["live_nodes"], 1, "{versions}");

    // A version that bakes for an hour, aborted: the node keeps it until the aborted rollout
    // is rolled back, which puts the node back on what it had (v1).
    let slow = server.file(
        "slow.yaml",
        "name: slow\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 1h\n    min_requests: 0\n    gates: []\n",
    );
    server.ok(&["unit", "edit", "flags", "--plan", &slow]);
    let v3_text = r#"{"v": 3}"#;
    let (_, r4) = push(&server, "v3.json", v3_text);
    agent.wait_serving("flags", v3_text.as_bytes());
    server.ok(&["rollout", "abort", &r4, "--reason", "not today"]);
    std::thread::sleep(Duration::from_millis(500));
    agent.wait_serving("flags", v3_text.as_bytes());
    let rolled = server.json(&["rollout", "rollback", &r4, "--reason", "v3 is wrong"]);
    assert_eq!(rolled["status"], "rolled_back", "{rolled}");
    agent.wait_serving("flags", v1_text.as_bytes());
    // `nodes` shows the version the node went back to, as its agent reported it.
    let v1 = versions["versions"][1]["hash"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = server.json(&["nodes"]);
        if nodes[0]["versions"]["flags"]["version"] == v1.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes never showed v1 again: {nodes}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nodes_wait_for_returns_once_enough_are_alive_and_fails_past_its_timeout() {
    let server = Server::start("wait-for");
    let said = server.fails(&["nodes", "--wait-for", "1", "--timeout", "300ms"], 1);
    assert!(
        said.contains("0 of the 1 nodes waited for are alive after 300ms"),
        "{said}"
    );
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "free"}));
    let listed = server.ok(&["nodes", "--wait-for", "1", "--timeout", "5s"]);
    assert!(
        listed.contains("n1") && listed.contains("alive"),
        "{listed}"
    );
    // The filters choose whom to wait for.
    let said = server.fails(
        &[
            "nodes",
            "--wait-for",
            "1",
            "--label",
            "cohort=pro",
            "--timeout",
            "300ms",
        ],
        1,
    );
    assert!(said.contains("0 of the 1"), "{said}");
    let said = server.fails(&["nodes", "--timeout", "5s"], 2);
    assert!(said.contains("--wait-for"), "{said}");
}
