//! The operator CLI against a real `failsmall server` process: every subcommand's happy path,
//! `-o json` output, exit codes (0, 1, 2, and 3 for a watched rollout that was rolled back),
//! and the error messages people see.
//!
//! Nodes are played by a tiny in-test agent over HTTP that ACKs, reports health, or NACKs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, BufReader};
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const FEATURES_SPEC: &str = r#"{
  "format": "json",
  "max_bytes": 4096,
  "max_entries": [{"path": "/features", "max": 3}],
  "unique_entries": [{"path": "/features", "key": "name"}],
  "schema": {"type": "object", "required": ["features"]}
}"#;

/// A fresh directory under the system's temporary directory, removed when the test drops it.
fn fresh_dir(name: &str) -> tempfile::TempDir {
    failsmall_testkit::scratch_dir(&format!("failsmall-cli-ops-{name}-"))
}

fn features(names: &[&str]) -> String {
    let list: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
    serde_json::to_string_pretty(&json!({ "features": list })).unwrap()
}

/// A running `rollout watch`, its stdout read line by line.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// What it printed on stderr (retries, errors).
    errors: mpsc::Receiver<String>,
}

impl Watch {
    fn spawn(server: &Server, id: &str, extra: &[&str]) -> Self {
        let mut child = server
            .command()
            .args(["rollout", "watch", id, "--interval", "100ms"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send_error, errors) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send_error.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            errors,
        }
    }

    /// The next line printed, waiting at most 20 s.
    fn next_line(&mut self) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the watch printed nothing within 20 s");
        self.seen.push(line.clone());
        line
    }

    /// Waits for the exit, at most 30 s; the exit code and every line printed.
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the watch did not end within 30 s: {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }
}

#[test]
fn nodes_show_which_serve_stale_configuration_and_stale_lists_only_those() {
    let server = Server::start("nodes-stale");
    let mut agent = Agent::new(&server);
    agent.register("edge-1", json!({"cohort": "free"}));
    agent.register("edge-2", json!({"cohort": "pro"}));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // edge-2's desired state expired twelve minutes ago.
    agent.report(
        "edge-2",
        json!({"kind": "stale", "since_ms": now_ms - 12 * 60_000 - 5_000, "seq": 7}),
    );
    let table = server.ok(&["nodes"]);
    let header = table.lines().next().unwrap();
    assert!(header.contains("STALE"), "{table}");
    let row = |id: &str| {
        table
            .lines()
            .find(|line| line.starts_with(id))
            .unwrap()
            .to_owned()
    };
    assert!(row("edge-2").contains("since 12m"), "{table}");
    assert!(row("edge-1").contains(" - "), "{table}");
    let stale = server.ok(&["nodes", "--stale"]);
    assert!(
        stale.contains("edge-2") && !stale.contains("edge-1"),
        "{stale}"
    );
    let stale = server.json(&["nodes", "--stale"]);
    assert_eq!(stale.as_array().unwrap().len(), 1, "{stale}");
    assert!(stale[0]["stale_since_ms"].is_u64(), "{stale}");
    // Fresh again: no node is stale.
    agent.report("edge-2", json!({"kind": "fresh", "stale_ms": 725_000}));
    assert_eq!(server.json(&["nodes", "--stale"]), json!([]));
    assert!(!server.ok(&["nodes"]).contains("since "));
}

#[test]
fn units_versions_diff_validate_log_nodes_and_completions() {
    let server = Server::start("happy");
    let spec = server.file("features.spec.json", FEATURES_SPEC);
    let out = server.ok(&[
        "unit", "create", "features", "--spec", &spec, "--owner", "bots",
    ]);
    assert!(out.contains("unit features created"), "{out}");

    let units = server.json(&["unit", "list"]);
    assert_eq!(units[0]["name"], "features");
    assert_eq!(units[0]["owner"], "bots");
    let table = server.ok(&["unit", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("features"), "{table}");

    let edited = server.json(&["unit", "edit", "features", "--description", "bot features"]);
    assert_eq!(edited["revision"], 2);
    let yaml_spec = server.file(
        "features.spec.yaml",
        "format: json\nmax_bytes: 8192\nmax_entries:\n  - path: /features\n    max: 3\nunique_entries:\n  - path: /features\n    key: name\n",
    );
    let out = server.ok(&["unit", "edit", "features", "--spec", &yaml_spec]);
    assert!(out.contains("revision 2 → 3"), "{out}");
    let shown = server.json(&["unit", "show", "features"]);
    assert_eq!(shown["unit"]["description"], "bot features");
    assert_eq!(shown["unit"]["owner"], "bots");
    assert_eq!(shown["unit"]["spec"]["max_bytes"], 8192);
    assert_eq!(shown["unit"]["revision"], 3);
    assert_eq!(shown["versions"], json!([]));

    // Offline validation, with the spec from the server or from a file.
    let good = server.file("good.json", &features(&["a", "b"]));
    let newer = server.file("newer.json", &features(&["a", "c"]));
    let out = server.ok(&["validate", "features", &good]);
    assert!(out.contains("a valid version of unit features"), "{out}");
    let verdict = server.json(&["validate", "features", &good, "--spec", &spec]);
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["hash"].as_str().unwrap().len(), 64);

    // Versions and their diff (by unique prefix and by full hash).
    let first = server.json(&["push", "features", &good, "-m", "first", "--no-rollout"]);
    assert_eq!(first["created"], true);
    assert_eq!(first["rollout"], Value::Null);
    let first_hash = first["version"]["hash"].as_str().unwrap().to_owned();
    assert_eq!(first_hash, verdict["hash"]);
    let again = server.json(&["push", "features", &good, "-m", "same", "--no-rollout"]);
    assert_eq!(again["created"], false);
    let out = server.ok(&["push", "features", &newer, "-m", "second", "--no-rollout"]);
    assert!(out.contains("(new)"), "{out}");
    let second = server.json(&["unit", "show", "features"])["versions"][0]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let diff = server.ok(&["diff", "features", &first_hash[..8], &second]);
    assert!(diff.contains("-      \"name\": \"b\""), "{diff}");
    assert!(diff.contains("+      \"name\": \"c\""), "{diff}");
    let diff = server.json(&["diff", "features", &first_hash, &second]);
    assert_eq!(diff["from"], first_hash.as_str());
    assert!(diff["diff"].as_str().unwrap().contains("@@"));

    // Nodes, filtered by label.
    let mut agent = Agent::new(&server);
    agent.register("edge-1", json!({"cohort": "free", "region": "eu"}));
    agent.register("edge-2", json!({"cohort": "pro", "region": "us"}));
    let nodes = server.json(&["nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    let free = server.json(&["nodes", "--label", "cohort=free"]);
    assert_eq!(free.as_array().unwrap().len(), 1);
    assert_eq!(free[0]["id"], "edge-1");
    assert_eq!(free[0]["labels"]["region"], "eu");
    let table = server.ok(&["nodes"]);
    assert!(table.contains("cohort=free,region=eu"), "{table}");

    // The changelog, with its filters.
    let log = server.json(&["log", "--unit", "features"]);
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "unit_created",
            "unit_updated",
            "unit_updated",
            "version_pushed",
            "version_pushed"
        ]
    );
    let last = server.json(&["log", "--limit", "1"]);
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0]["kind"], "node_registered");
    let since = server.json(&["log", "--since", "1h"]);
    assert!(since.as_array().unwrap().len() >= 7);
    let future_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000)
        .to_string();
    assert_eq!(server.json(&["log", "--since", &future_ms]), json!([]));
    // `--label`: entries about nodes with that label, and fleet-wide ones.
    let registered_for = |label: &str| -> Vec<String> {
        let entries = server.json(&["log", "--label", label]);
        let entries = entries.as_array().unwrap();
        assert!(
            entries.iter().any(|e| e["kind"] == "unit_created"),
            "fleet-wide entries match"
        );
        entries
            .iter()
            .filter(|e| e["kind"] == "node_registered")
            .map(|e| e["reason"].as_str().unwrap().to_owned())
            .collect()
    };
    let eu = registered_for("region=eu");
    assert!(eu.len() == 1 && eu[0].contains("edge-1"), "{eu:?}");
    let us = registered_for("region=us");
    assert!(us.len() == 1 && us[0].contains("edge-2"), "{us:?}");
    let error = server.fails(&["log", "--label", "region"], 1);
    assert!(error.contains("KEY=VALUE"), "{error}");
    let table = server.ok(&["log", "--unit", "features"]);
    assert!(table.contains("unit_created"), "{table}");
    assert!(table.contains(&first_hash[..12]), "{table}");

    // Completion scripts name the subcommands.
    let script = server.ok(&["completions", "bash"]);
    assert!(script.contains("failsmall"), "{script}");
    assert!(script.contains("rollout"), "{script}");
    assert!(
        server
            .ok(&["completions", "zsh"])
            .contains("#compdef failsmall")
    );
}

#[test]
fn push_starts_a_rollout_and_watch_exits_0_on_completion_and_3_on_rollback() {
    let server = Server::start("watch");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&["unit", "create", "flags", "--spec", &spec]);
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "employee"}));
    let plan = server.file("one-stage.yaml", ONE_STAGE_PLAN);
    let v1 = server.file("v1.json", r#"{"kill": false}"#);
    let v2 = server.file("v2.json", r#"{"kill": true}"#);

    let pushed = server.json(&["push", "flags", &v1, "-m", "one", "--plan", &plan]);
    let version = pushed["version"]["hash"].as_str().unwrap().to_owned();
    assert_eq!(pushed["rollout"]["status"], "running");
    assert_eq!(pushed["rollout"]["plan"], "one-stage");
    let id = pushed["rollout"]["id"].as_u64().unwrap().to_string();

    let status = server.json(&["rollout", "status", &id]);
    assert_eq!(status["version"], version.as_str());
    assert_eq!(status["nodes_targeted"], 1);
    let text = server.ok(&["rollout", "status", &format!("r{id}")]);
    assert!(text.contains("stage     stage 1/1 everywhere"), "{text}");
    let list = server.json(&["rollout", "list", "--active"]);
    assert_eq!(list[0]["id"].as_u64().unwrap().to_string(), id);
    assert_eq!(server.json(&["rollout", "list", "--unit", "flags"]), list);
    assert_eq!(
        server.json(&["rollout", "list", "--unit", "other"]),
        json!([])
    );
    let table = server.ok(&["rollout", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&version[..12]), "{table}");

    // Watch while the node applies and reports health: exit 0, plain timestamped lines.
    let mut watch = Watch::spawn(&server, &id, &[]);
    let first_line = watch.next_line();
    assert!(
        first_line.starts_with("20") && first_line.contains('T') && first_line.contains("Z r"),
        "{first_line}"
    );
    assert!(
        first_line.contains("running stage 1/1 everywhere"),
        "{first_line}"
    );
    assert!(first_line.contains("0/1 nodes applied"), "{first_line}");
    agent.apply_healthy("n1", "flags", &version);
    let (code, out) = watch.finish();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rollout 1 completed"), "{out}");
    // The node's applied version, as it reported it.
    let nodes = server.ok(&["nodes"]);
    assert!(
        nodes.contains(&format!("flags={}", &version[..12])),
        "{nodes}"
    );

    // The second version is refused by the node: the watch exits 3.
    let out = server.ok(&["push", "flags", &v2, "-m", "two", "--plan", &plan]);
    assert!(out.contains("version  "), "{out}");
    let id2 = server.json(&["rollout", "list"])[0]["id"]
        .as_u64()
        .unwrap()
        .to_string();
    assert_ne!(id, id2);
    let version2 = server.json(&["rollout", "status", &id2])["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut watch = Watch::spawn(&server, &id2, &[]);
    assert!(watch.next_line().contains("running"));
    agent.nack("n1", "flags", &version2);
    let (code, out) = watch.finish();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("rolled_back"), "{out}");

    // Watching a rollout that already ended answers at once; -o json prints the view.
    let (code, out) = Watch::spawn(&server, &id2, &["-o", "json"]).finish();
    assert_eq!(code, 3, "{out}");
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "rolled_back");
    assert_eq!(Watch::spawn(&server, &id, &[]).finish().0, 0);

    // The rolled-back version is quarantined: pushing it again is refused with a hint.
    let stderr = server.fails(&["push", "flags", &v2, "-m", "again", "--plan", &plan], 1);
    assert!(stderr.contains("quarantined"), "{stderr}");
    assert!(stderr.contains("HTTP 409"), "{stderr}");
    let finished = server.json(&["rollout", "list"]);
    let statuses: Vec<&str> = finished
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["rolled_back", "completed"]);
    assert_eq!(server.json(&["rollout", "list", "--active"]), json!([]));

    // A stored version rolls out again by a hash prefix; a quarantined one only deliberately.
    let prefix = &version2[..8];
    let stderr = server.fails(&["rollout", "start", "flags", prefix, "--plan", &plan], 1);
    assert!(stderr.contains("quarantined"), "{stderr}");
    let started = server.json(&[
        "rollout",
        "start",
        "flags",
        prefix,
        "--plan",
        &plan,
        "--override-quarantine",
        "--reason",
        "consumer fixed",
    ]);
    assert_eq!(started["status"], "running", "{started}");
    assert_eq!(started["version"], version2.as_str());
    assert_eq!(started["plan"], "one-stage");
    let stderr = server.fails(&["rollout", "start", "flags", "zz"], 1);
    assert!(stderr.contains("hexadecimal prefix"), "{stderr}");
}

/// `rollout watch` rides out a control-plane restart: it says it is retrying, and still exits
/// with the rollout's outcome.
#[test]
fn watch_retries_while_the_server_restarts_and_ends_with_the_outcome() {
    let mut server = Server::start("watch-restart");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&["unit", "create", "flags", "--spec", &spec]);
    Agent::new(&server).register("n1", json!({"cohort": "employee"}));
    let plan = server.file("one-stage.yaml", ONE_STAGE_PLAN);
    let v1 = server.file("v1.json", r#"{"kill": false}"#);
    let pushed = server.json(&["push", "flags", &v1, "-m", "one", "--plan", &plan]);
    let version = pushed["version"]["hash"].as_str().unwrap().to_owned();
    let id = pushed["rollout"]["id"].as_u64().unwrap().to_string();
    let mut watch = Watch::spawn(&server, &id, &[]);
    assert!(watch.next_line().contains("running"));
    server.restart(Duration::from_secs(1));
    let retried = watch
        .errors
        .recv_timeout(Duration::from_secs(20))
        .expect("the watch never said it was retrying");
    assert!(retried.contains("server unreachable"), "{retried}");
    assert!(retried.contains("retrying in"), "{retried}");
    // The node reports to the restarted server (registering again only says it is alive).
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "employee"}));
    agent.apply_healthy("n1", "flags", &version);
    let (code, out) = watch.finish();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("completed"), "{out}");
}

/// A control plane that was down for longer than a stage's `silence` blames no version for
/// its nodes' silence when it is back: nobody was listening. A node that stays quiet once the
/// others are heard again still rolls the version back.
#[test]
fn a_server_down_longer_than_the_silence_blames_no_version_but_a_node_quiet_after_it_does() {
    let mut server = Server::start("deaf");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&["unit", "create", "flags", "--spec", &spec]);
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "employee"}));
    agent.register("n2", json!({"cohort": "free"}));
    let plan = server.file(
        "silence.yaml",
        "name: silence\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 10m\n    silence: 2s\n    min_requests: 0\n    gates: []\n",
    );
    let v1 = server.file("v1.json", r#"{"kill": false}"#);
    let pushed = server.json(&["push", "flags", &v1, "-m", "one", "--plan", &plan]);
    let version = pushed["version"]["hash"].as_str().unwrap().to_owned();
    let id = pushed["rollout"]["id"].as_u64().unwrap().to_string();
    agent.apply_healthy("n1", "flags", &version);
    agent.apply_healthy("n2", "flags", &version);
    drop(agent);
    // Down for 5 s, more than twice the silence; back, its ticker judges every second.
    server.restart(Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    let view = server.json(&["rollout", "status", &id]);
    assert_eq!(view["status"], "running", "{view}");
    // Heard again: n1 reports every half second, n2 stays quiet.
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "employee"}));
    let heard_again = Instant::now();
    let view = loop {
        agent.apply_healthy("n1", "flags", &version);
        let view = server.json(&["rollout", "status", &id]);
        if view["status"] != "running" {
            break view;
        }
        assert!(
            heard_again.elapsed() < Duration::from_secs(30),
            "n2 was never found silent: {view}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(view["status"], "rolled_back", "{view}");
    let outcome = view["outcome"].as_str().unwrap_or_default();
    assert!(outcome.contains("1 silent nodes"), "{outcome}");
    assert!(
        heard_again.elapsed() >= Duration::from_secs(2),
        "silent before n1 was heard for the silence: {outcome}"
    );
}

#[test]
fn pause_resume_promote_abort_rollback_and_approve_steer_rollouts() {
    let server = Server::start("steer");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&["unit", "create", "flags", "--spec", &spec]);
    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"cohort": "employee"}));
    agent.register("n2", json!({"cohort": "free"}));
    let two_stages = server.file(
        "two.yaml",
        "name: two\nstages:\n  - name: employees\n    select: { cohort: employee }\n    bake: 10m\n    min_requests: 10\n    gates: []\n  - name: free\n    select: { cohort: free }\n    bake: 10m\n    min_requests: 10\n    gates: []\n",
    );
    let approval = server.file(
        "approval.yaml",
        "name: approval\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 10\n    gates: []\n    approval: true\n",
    );
    let push = |n: u32, plan: &str| -> (String, String) {
        let file = server.file(&format!("v{n}.json"), &format!("{{\"n\": {n}}}"));
        let pushed = server.json(&[
            "push",
            "flags",
            &file,
            "-m",
            &format!("v{n}"),
            "--plan",
            plan,
        ]);
        (
            pushed["rollout"]["id"].as_u64().unwrap().to_string(),
            pushed["version"]["hash"].as_str().unwrap().to_owned(),
        )
    };

    let (id, version) = push(1, &two_stages);
    let paused = server.json(&["rollout", "pause", &id, "--reason", "lunch"]);
    assert_eq!(paused["status"], "paused");
    let resumed = server.json(&["rollout", "resume", &id]);
    assert_eq!(resumed["status"], "running");
    // Promote needs every exposed node to have applied: refused first, with what to do.
    let stderr = server.fails(&["rollout", "promote", &id], 1);
    assert!(stderr.contains("HTTP 409 invalid_command"), "{stderr}");
    assert!(stderr.contains("failsmall rollout status"), "{stderr}");
    agent.apply_healthy("n1", "flags", &version);
    let promoted = server.json(&["rollout", "promote", &id]);
    assert!(
        promoted["phase"] == "passed" || promoted["stage_index"] == 1,
        "{promoted}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.json(&["rollout", "status", &id])["stage_name"] != "free" {
        assert!(
            Instant::now() < deadline,
            "the rollout never left the first stage"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = server.ok(&["rollout", "abort", &id, "--reason", "enough"]);
    assert!(out.contains("abort sent; now aborted"), "{out}");
    // The rollout's story, on its own: every entry is its, with the stage it concerns.
    let story = server.json(&["log", "--rollout", &format!("r{id}")]);
    let story = story.as_array().unwrap();
    assert!(
        story
            .iter()
            .all(|e| e["rollout"].as_u64() == id.parse::<u64>().ok()),
        "{story:?}"
    );
    let stages: Vec<&str> = story
        .iter()
        .filter(|e| e["kind"] == "stage_started")
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["employees", "free"], "{story:?}");
    assert!(story.iter().any(|e| e["kind"] == "aborted"), "{story:?}");
    let stderr = server.fails(&["log", "--rollout", "third"], 2);
    assert!(
        stderr.contains("\"third\": expected a number such as 7 or r7"),
        "{stderr}"
    );

    let (id, _) = push(2, &two_stages);
    let rolled = server.json(&["rollout", "rollback", &id]);
    assert_eq!(rolled["status"], "rolled_back");

    // A stage with approval waits for someone other than the pusher, before it exposes any
    // node.
    let (id, version) = push(3, &approval);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.json(&["rollout", "status", &id])["phase"] != "awaiting_approval" {
        assert!(
            Instant::now() < deadline,
            "the stage never awaited approval"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        server.json(&["rollout", "status", &id])["nodes_exposed"],
        0,
        "nothing runs the version before the approval"
    );
    let stderr = server.fails(&["rollout", "approve", &id], 1);
    assert!(stderr.contains("cannot approve"), "{stderr}");
    let approver = server.token("ann", "approver");
    let approved = server.json(&["rollout", "approve", &id, "--token", &approver]);
    assert_eq!(approved["status"], "running", "{approved}");
    let stderr = server.fails(&["rollout", "approve", &id, "--token", &approver], 1);
    assert!(stderr.contains("HTTP 409"), "{stderr}");
    agent.apply_healthy("n1", "flags", &version);
    agent.apply_healthy("n2", "flags", &version);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.json(&["rollout", "status", &id])["status"] != "completed" {
        assert!(
            Instant::now() < deadline,
            "the approved rollout never completed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tokens_are_created_listed_used_and_revoked() {
    let server = Server::start("tokens");
    // Table output: the secret alone on stdout, what it is on stderr.
    let output = server.run(&["token", "create", "ci", "--role", "deployer"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let secret = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("\"ci\" (deployer) created"), "{said}");
    assert!(!secret.is_empty() && !secret.contains(' '), "{secret:?}");
    // The new token works for what its role allows.
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&[
        "unit", "create", "flags", "--spec", &spec, "--token", &secret,
    ]);

    let agent = server.json(&["token", "create", "n1", "--role", "agent", "--node", "n1"]);
    assert_eq!(agent["record"]["node"], "n1");
    assert_eq!(agent["record"]["role"], "agent");
    let stderr = server.fails(&["token", "create", "n2", "--role", "agent"], 1);
    assert!(stderr.contains("node_required"), "{stderr}");
    let stderr = server.fails(&["token", "create", "x", "--role", "root"], 2);
    assert!(stderr.contains("expected viewer, deployer"), "{stderr}");

    let listed = server.ok(&["token", "list"]);
    assert!(
        listed.contains("ci") && listed.contains("deployer"),
        "{listed}"
    );
    assert!(
        !listed.contains(&secret),
        "a secret is never listed: {listed}"
    );
    let tokens = server.json(&["token", "list"]);
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap()["id"]
        .as_u64()
        .unwrap()
        .to_string();

    let revoked = server.ok(&["token", "revoke", &id]);
    assert!(revoked.contains("revoked"), "{revoked}");
    let stderr = server.fails(&["unit", "list", "--token", &secret], 1);
    assert!(stderr.contains("wrong or revoked"), "{stderr}");
    let tokens = server.json(&["token", "list"]);
    let ci = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap();
    assert!(ci["revoked_ms"].is_u64(), "{ci}");
    // Only an admin manages tokens.
    let stderr = server.fails(
        &["token", "list", "--token", agent["token"].as_str().unwrap()],
        1,
    );
    assert!(stderr.contains("HTTP 403"), "{stderr}");
    let stderr = server.fails(&["token", "revoke", "999"], 1);
    assert!(stderr.contains("404"), "{stderr}");
}

/// Starts `failsmall server --dev` with `extra` arguments, waits until it serves, stops it with
/// SIGTERM (as `systemctl stop` does); its data dir, and whether that still exists after.
fn dev_server_data_dir(extra: &[&str]) -> (PathBuf, bool) {
    let mut child = Command::new(BIN)
        .args(["server", "--dev", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = lines_of(child.stderr.take().unwrap());
    let (addr, dir) = listening_address(&said);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::blocking::get(format!("{addr}/healthz")).is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the dev server at {addr} never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dir.join("admin.token").exists(), "{}", dir.display());
    // The shell's own `kill`: a fresh Debian machine may have no /usr/bin/kill (procps).
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let said: Vec<String> = said.iter().collect();
    assert_eq!(status.code(), Some(0), "{said:?}");
    (dir.clone(), dir.exists())
}

#[test]
fn a_dev_server_removes_its_own_data_dir_at_shutdown_but_not_one_it_was_given() {
    let (dir, exists) = dev_server_data_dir(&[]);
    assert!(!exists, "{} is still there", dir.display());
    let given = fresh_dir("dev-given");
    let named = given.path().join("data");
    let (dir, exists) = dev_server_data_dir(&["--data-dir", named.to_str().unwrap()]);
    assert_eq!(dir, named);
    assert!(exists, "{} was removed", dir.display());
}

#[test]
fn log_follow_prints_entries_as_they_are_written() {
    let server = Server::start("follow");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&["unit", "create", "other", "--spec", &spec]);
    server.ok(&["unit", "create", "followed", "--spec", &spec]);
    let mut child = server
        .command()
        .args(["log", "--follow", "--unit", "followed", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let received = lines_of(child.stdout.take().unwrap());
    let next = || -> Value {
        let line = received.recv_timeout(Duration::from_secs(20)).unwrap();
        serde_json::from_str(&line).unwrap()
    };
    // What was there: the one entry of the followed unit, as one JSON line.
    let first = next();
    assert_eq!(first["kind"], "unit_created", "{first}");
    assert_eq!(first["unit"], "followed", "{first}");
    // Written after the first look: it comes too, and the other unit's entries do not.
    server.ok(&["unit", "edit", "other", "--description", "not followed"]);
    server.ok(&["unit", "edit", "followed", "--description", "followed"]);
    let second = next();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(second["kind"], "unit_updated", "{second}");
    assert_eq!(second["unit"], "followed", "{second}");
    assert!(second["id"].as_u64() > first["id"].as_u64(), "{second}");
}

#[test]
fn errors_say_what_went_wrong_and_what_to_do() {
    let server = Server::start("errors");
    let spec = server.file("features.spec.json", FEATURES_SPEC);
    server.ok(&["unit", "create", "features", "--spec", &spec]);

    // A wrong token, and no token at all.
    let stderr = server.fails(&["unit", "list", "--token", "wrong"], 1);
    assert!(
        stderr.contains("the token from the --token flag"),
        "{stderr}"
    );
    assert!(
        stderr.contains("set FAILSMALL_TOKEN or --token"),
        "{stderr}"
    );
    let output = server
        .command()
        .env_remove("FAILSMALL_TOKEN")
        .args(["unit", "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no token was given"), "{stderr}");
    assert!(stderr.contains("FAILSMALL_TOKEN"), "{stderr}");

    // A token whose role does not allow the route.
    let viewer = server.token("val", "viewer");
    let good = server.file("good.json", &features(&["a"]));
    let stderr = server.fails(
        &[
            "push",
            "features",
            &good,
            "-m",
            "x",
            "--no-rollout",
            "--token",
            &viewer,
        ],
        1,
    );
    assert!(
        stderr.contains("role viewer may not use this route"),
        "{stderr}"
    );
    assert!(
        stderr.contains("use a token whose role allows this"),
        "{stderr}"
    );

    // An unreachable server: the address tried, and where it came from.
    let stderr = server.fails(&["unit", "list", "--addr", "127.0.0.1:1"], 1);
    assert!(
        stderr.contains("cannot reach the failsmall server at http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(stderr.contains("--addr"), "{stderr}");

    // A missing file.
    let missing = server.dir.path().join("nope.json");
    let missing = missing.to_str().unwrap();
    let stderr = server.fails(&["push", "features", missing, "-m", "x", "--no-rollout"], 1);
    assert!(stderr.contains(missing), "{stderr}");
    let stderr = server.fails(&["unit", "create", "other", "--spec", missing], 1);
    assert!(stderr.contains(missing), "{stderr}");

    // A bad plan: file:line:column: field, and nothing is pushed.
    let bad_plan = server.file(
        "bad-plan.yaml",
        "name: bad\nstages:\n  - name: one\n    bake: forever\n",
    );
    let stderr = server.fails(
        &["push", "features", &good, "-m", "x", "--plan", &bad_plan],
        1,
    );
    assert!(stderr.contains(&format!("{bad_plan}:4:")), "{stderr}");
    assert!(stderr.contains("stages[0].bake"), "{stderr}");
    assert_eq!(
        server.json(&["unit", "show", "features"])["versions"],
        json!([])
    );

    // A refused version: every reason, one per line (422), and the same offline.
    let bad = server.file("bad.json", &features(&["a", "a", "b", "c"]));
    let stderr = server.fails(&["push", "features", &bad, "-m", "x", "--no-rollout"], 1);
    assert!(stderr.contains("HTTP 422 validation_failed"), "{stderr}");
    let reasons = stderr.lines().filter(|l| l.starts_with("  - ")).count();
    assert!(reasons >= 2, "{stderr}");
    let offline = server.fails(&["validate", "features", &bad, "--spec", &spec], 1);
    assert!(
        offline.contains("the server would refuse it for"),
        "{offline}"
    );
    assert!(offline.contains(&format!("{bad}: ")), "{offline}");
    let offline_reasons = offline.lines().filter(|l| l.starts_with("  ")).count();
    assert_eq!(offline_reasons, reasons, "{offline}\n---\n{stderr}");

    // Not found, with a hint.
    let stderr = server.fails(&["rollout", "status", "42"], 1);
    assert!(stderr.contains("no rollout r42"), "{stderr}");
    assert!(stderr.contains("HTTP 404"), "{stderr}");

    // Usage errors exit 2.
    server.fails(&["rollout", "watch"], 2);
    server.fails(&["rollout", "status", "seven"], 2);
    server.fails(&["push", "features", &good], 2);
    server.fails(&["completions", "tcsh"], 2);
}

#[test]
fn a_unit_keeps_its_plan_and_validator_until_an_edit_changes_them() {
    let server = Server::start("unit-plan");
    let spec = server.file("flags.spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    let plan = server.file("one-stage.yaml", ONE_STAGE_PLAN);
    let validator = json!({"command": ["/bin/cat", "-u", "{path}"], "timeout_ms": 2000});
    let created = server.json(&[
        "unit",
        "create",
        "flags",
        "--spec",
        &spec,
        "--plan",
        &plan,
        "--validator",
        "/bin/cat",
        "--validator-arg",
        "-u",
        "--validator-arg",
        "{path}",
        "--validator-timeout",
        "2s",
    ]);
    assert_eq!(created["plan"], ONE_STAGE_PLAN);
    assert_eq!(created["validator"], validator);
    let shown = server.ok(&["unit", "show", "flags"]);
    assert!(shown.contains("one-stage: everywhere"), "{shown}");
    assert!(shown.contains("/bin/cat -u {path} (timeout 2s)"), "{shown}");
    // The validator accepts what `cat` reads to the end.
    let v1 = server.file("v1.json", r#"{"kill": false}"#);
    // The unit's plan rolls the push out, once; the CLI starts no second rollout.
    let pushed = server.json(&["push", "flags", &v1, "-m", "first"]);
    assert_eq!(pushed["created"], true);
    assert_eq!(pushed["rollout"]["plan"], "one-stage", "{pushed}");
    let rollouts = server.json(&["rollout", "list", "--unit", "flags"]);
    assert_eq!(rollouts.as_array().unwrap().len(), 1, "{rollouts}");
    // --no-rollout and --plan cannot hold for such a unit: refused before anything is stored.
    let v0 = server.file("v0.json", r#"{"kill": null}"#);
    let stderr = server.fails(&["push", "flags", &v0, "-m", "x", "--no-rollout"], 1);
    assert!(stderr.contains("unit edit flags --no-plan"), "{stderr}");
    let stderr = server.fails(&["push", "flags", &v0, "-m", "x", "--plan", &plan], 1);
    assert!(stderr.contains("drop --plan"), "{stderr}");
    let versions = server.json(&["unit", "show", "flags"])["versions"].clone();
    assert_eq!(versions.as_array().unwrap().len(), 1, "{versions}");

    // An edit keeps what it is not told to change.
    let edited = server.json(&["unit", "edit", "flags", "--owner", "bots"]);
    assert_eq!(edited["owner"], "bots");
    assert_eq!(edited["plan"], ONE_STAGE_PLAN);
    assert_eq!(edited["validator"], validator);
    let deployer = server.token("ci", "deployer");
    let edited = server.json(&[
        "unit",
        "edit",
        "flags",
        "--description",
        "kill switch",
        "--token",
        &deployer,
    ]);
    assert_eq!(edited["validator"], validator);
    assert_eq!(edited["plan"], ONE_STAGE_PLAN);

    // --no-plan removes the plan, and only it.
    let edited = server.json(&["unit", "edit", "flags", "--no-plan"]);
    assert!(edited.get("plan").is_none(), "{edited}");
    assert_eq!(edited["validator"], validator);
    assert_eq!(edited["description"], "kill switch");
    let shown = server.ok(&["unit", "show", "flags"]);
    assert!(
        shown.contains("none of its own: a push rolls out through `--plan FILE` when given, else the built-in default plan default: employees ("),
        "{shown}"
    );

    // --no-validator removes the validator, and only it.
    let edited = server.json(&["unit", "edit", "flags", "--plan", &plan, "--no-validator"]);
    assert!(edited.get("validator").is_none(), "{edited}");
    assert_eq!(edited["plan"], ONE_STAGE_PLAN);
    let shown = server.ok(&["unit", "show", "flags"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("validator") && l.ends_with("none")),
        "{shown}"
    );

    // A deployer may not set a validator: the server's message.
    let stderr = server.fails(
        &[
            "unit",
            "edit",
            "flags",
            "--validator",
            "/bin/cat",
            "--validator-arg",
            "-",
            "--token",
            &deployer,
        ],
        1,
    );
    assert!(
        stderr.contains("only an admin may set, change or remove a unit's validator command"),
        "{stderr}"
    );
    let stderr = server.fails(
        &[
            "unit",
            "create",
            "other",
            "--spec",
            &spec,
            "--validator",
            "/bin/cat",
            "--validator-arg",
            "-",
            "--token",
            &deployer,
        ],
        1,
    );
    assert!(stderr.contains("only an admin may"), "{stderr}");
    assert!(
        server.json(&["unit", "show", "flags"])["unit"]
            .get("validator")
            .is_none()
    );

    // A bad plan is refused before anything is sent: file:line: field, even with no server.
    let bad_plan = server.file(
        "bad-plan.yaml",
        "name: bad\nstages:\n  - name: one\n    bake: forever\n",
    );
    for args in [
        vec!["unit", "edit", "flags", "--plan", &bad_plan],
        vec![
            "unit", "create", "other", "--spec", &spec, "--plan", &bad_plan,
        ],
        vec![
            "unit",
            "create",
            "other",
            "--spec",
            &spec,
            "--plan",
            &bad_plan,
            "--addr",
            "127.0.0.1:1",
        ],
    ] {
        let stderr = server.fails(&args, 1);
        assert!(stderr.contains(&format!("{bad_plan}:4:")), "{stderr}");
        assert!(stderr.contains("stages[0].bake"), "{stderr}");
    }
    server.fails(&["unit", "show", "other"], 1);
    assert_eq!(
        server.json(&["unit", "show", "flags"])["unit"]["revision"],
        edited["revision"]
    );
    // A bad timeout is refused locally too.
    let stderr = server.fails(
        &[
            "unit",
            "edit",
            "flags",
            "--validator",
            "/bin/cat",
            "--validator-timeout",
            "5",
        ],
        1,
    );
    assert!(stderr.contains("--validator-timeout"), "{stderr}");

    // Nothing to change names every flag; contradictory or orphan flags are usage errors.
    let stderr = server.fails(&["unit", "edit", "flags"], 1);
    for flag in [
        "--spec",
        "--owner",
        "--description",
        "--plan",
        "--no-plan",
        "--validator",
        "--validator-arg",
        "--validator-timeout",
        "--no-validator",
    ] {
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
    server.fails(&["unit", "edit", "flags", "--plan", &plan, "--no-plan"], 2);
    server.fails(
        &[
            "unit",
            "edit",
            "flags",
            "--validator",
            "/bin/cat",
            "--no-validator",
        ],
        2,
    );
    server.fails(&["unit", "edit", "flags", "--validator-arg", "x"], 2);
    server.fails(&["unit", "edit", "flags", "--validator-timeout", "1s"], 2);
}

#[test]
fn the_config_file_supplies_address_and_token() {
    let server = Server::start("config");
    let config = server.dir.path().join("config-home").join("failsmall");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!("addr = \"{}\"\ntoken = \"{}\"\n", server.addr, server.admin),
    )
    .unwrap();
    let output = server
        .command()
        .env_remove("FAILSMALL_ADDR")
        .env_remove("FAILSMALL_TOKEN")
        .args(["unit", "list", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let units: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(units, json!([]));
    // The environment wins over the file.
    let output = server
        .command()
        .env("FAILSMALL_TOKEN", "wrong")
        .args(["unit", "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FAILSMALL_TOKEN variable"), "{stderr}");
}
