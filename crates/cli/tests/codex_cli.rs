//! `failsmall codex check|list|explain` through the real binary: exit codes for CI, text with
//! file and line, JSON, and SARIF 2.1.0 validated against the standard's JSON Schema.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Output};

use serde_json::Value;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn failsmall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_failsmall"))
        .args(args)
        .current_dir(REPO)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_exits_3_on_a_deny_and_names_file_line_rule_sentence_and_link() {
    let denied = failsmall(&["codex", "check", "examples/codex/plan-has-gates/violating"]);
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    let text = stdout(&denied);
    assert!(
        text.contains(
            "examples/codex/plan-has-gates/violating/plan.yaml:7:1: deny plan-has-gates:"
        ),
        "{text}"
    );
    assert!(text.contains("If you need to roll out a change"), "{text}");
    assert!(text.contains("docs/codex/plan-has-gates.md"), "{text}");

    let clean = failsmall(&["codex", "check", "examples/codex/plan-has-gates/compliant"]);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));

    // A warning alone does not fail CI.
    let warned = failsmall(&[
        "codex",
        "check",
        "examples/codex/approval-before-exposure/violating",
    ]);
    assert_eq!(warned.status.code(), Some(0), "{}", stdout(&warned));
    assert!(stdout(&warned).contains("warn approval-before-exposure"));
}

#[test]
fn check_as_json_lists_files_and_findings() {
    let output = failsmall(&["codex", "check", "--format", "json", "examples/codex"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["files"].as_array().unwrap().len(), 16);
    let rules: std::collections::BTreeSet<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules.len(), 8, "{rules:?}");
    for finding in report["findings"].as_array().unwrap() {
        assert!(
            finding["file"].as_str().unwrap().contains("/violating/"),
            "{finding}"
        );
        assert!(finding["line"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn check_as_sarif_is_valid_sarif_2_1_0_with_findings_on_their_lines() {
    let output = failsmall(&[
        "codex",
        "check",
        "--format",
        "sarif",
        "examples/codex",
        "examples/plans",
    ]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let log: Value = serde_json::from_str(&stdout(&output)).unwrap();

    let schema_path = format!("{REPO}/crates/codex/tests/sarif-schema-2.1.0.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&log)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    let run = &log["runs"][0];
    assert_eq!(log["version"], "2.1.0");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 8);
    let results = run["results"].as_array().unwrap();
    let instant = results
        .iter()
        .find(|r| {
            r["ruleId"] == "no-instant-plan"
                && r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                    == "examples/plans/instant.yaml"
        })
        .unwrap_or_else(|| panic!("{results:#?}"));
    assert_eq!(instant["level"], "error");
    let region = &instant["locations"][0]["physicalLocation"]["region"];
    assert_eq!(region["startLine"], 7, "{instant}");
    let index = instant["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(rules[index]["id"], "no-instant-plan");
    let warn = results
        .iter()
        .find(|r| r["ruleId"] == "approval-before-exposure")
        .unwrap();
    assert_eq!(warn["level"], "warning");
    // The schema is strict (no unknown properties), so an invalid log is caught: prove it.
    let mut broken = log.clone();
    broken["runs"][0]["results"][0]["level"] = Value::from("fatal");
    assert!(!validator.is_valid(&broken));
}

#[test]
fn list_and_explain_print_the_rules() {
    let list = failsmall(&["codex", "list"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    let text = stdout(&list);
    for id in [
        "first-gate-covers-builds",
        "collections-bounded",
        "fail-mode-declared",
        "exposure-before-gate",
        "rollback-time",
        "plan-has-gates",
        "no-instant-plan",
        "approval-before-exposure",
    ] {
        assert!(text.contains(id), "{id}: {text}");
    }
    let explain = failsmall(&["codex", "explain", "first-gate-covers-builds"]);
    assert_eq!(explain.status.code(), Some(0), "{}", stderr(&explain));
    let text = stdout(&explain);
    assert!(
        text.contains("If you need to change what every consumer build reads"),
        "{text}"
    );
    assert!(text.contains("5 December 2025"), "{text}");

    let unknown = failsmall(&["codex", "explain", "no-such-rule"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("plan-has-gates"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn a_bad_team_rule_directory_is_an_error_naming_the_file() {
    let scratch = failsmall_testkit::scratch_dir("failsmall-codex-cli-");
    let dir = scratch.path();
    std::fs::write(
        dir.join("broken.rego"),
        "package failsmall.codex.broken\nrule := {\n",
    )
    .unwrap();
    let output = failsmall(&["codex", "list", "--codex-dir", dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("broken.rego"),
        "{}",
        stderr(&output)
    );
}

/// A `failsmall server` child on 127.0.0.1:0 with its defaults (the Codex enforced), killed
/// when dropped.
struct Server {
    child: std::process::Child,
    addr: String,
    admin: String,
    http: reqwest::blocking::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Self {
        use std::io::BufRead as _;
        let dir = failsmall_testkit::scratch_dir("failsmall-codex-cli-server-");
        let data_dir = dir.path().join("data");
        let mut child = Command::new(env!("CARGO_BIN_EXE_failsmall"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .unwrap();
            if let Some((head, _)) = line.split_once(", data in ")
                && let Some(addr) = head.split("listening on ").nth(1)
            {
                break addr.to_owned();
            }
        };
        // Keep draining the server's stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        // The server writes its first admin token once it has opened its store, just after it
        // printed where it listens; the health check answers once that is done.
        let http = reqwest::blocking::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !http
            .get(format!("{addr}/healthz"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the server never served"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let admin = std::fs::read_to_string(data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            addr,
            admin,
            http,
            _dir: dir,
        }
    }

    /// Registers `node` with its labels, as its agent would.
    fn register(&self, node: &str, cohort: &str, generation: &str) {
        let token: Value = self
            .http
            .post(format!("{}/v1/tokens", self.addr))
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({"name": format!("agent-{node}"), "role": "agent", "node": node}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let response = self
            .http
            .put(format!("{}/v1/nodes/{node}", self.addr))
            .bearer_auth(token["token"].as_str().unwrap())
            .json(&serde_json::json!({"labels": {"cohort": cohort, "generation": generation}}))
            .send()
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().unwrap()
        );
    }

    fn failsmall(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_failsmall"))
            .args(args)
            .current_dir(REPO)
            .env("FAILSMALL_ADDR", &self.addr)
            .env("FAILSMALL_TOKEN", &self.admin)
            .output()
            .unwrap()
    }
}

/// End to end, through the real binaries: `failsmall server` enforces the starter Codex by
/// default. A unit whose plan's first stage (employees, all on generation fl2) covered every
/// build is accepted; once a node of generation fl1 registers, `failsmall push` is refused
/// with the rule, its sentence and its link, and no version is stored.
#[test]
fn a_push_that_breaks_a_deny_rule_is_refused_through_the_cli() {
    let server = Server::start();
    server.register("emp-1", "employee", "fl2");
    for index in 0..19 {
        server.register(&format!("free-{index}"), "free", "fl2");
    }
    let created = server.failsmall(&[
        "unit",
        "create",
        "bot-features",
        "--spec",
        "examples/units/bot-features.spec.yaml",
        "--plan",
        "examples/codex/first-gate-covers-builds/compliant/plan.yaml",
    ]);
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));

    // The instant plan is refused at once, whatever the fleet.
    let instant = server.failsmall(&[
        "unit",
        "create",
        "everywhere",
        "--spec",
        "examples/units/bot-features.spec.yaml",
        "--plan",
        "examples/plans/instant.yaml",
    ]);
    assert_eq!(instant.status.code(), Some(1), "{}", stdout(&instant));
    let said = stderr(&instant);
    assert!(said.contains("no-instant-plan"), "{said}");
    assert!(
        said.contains("If you need a change everywhere now, use break glass"),
        "{said}"
    );

    // The CLI sends a spec as its file writes it: one that declares no fail mode is refused
    // (filled in with the default, the author's silence would not show).
    let silent = server.failsmall(&[
        "unit",
        "create",
        "rules",
        "--spec",
        "examples/codex/fail-mode-declared/violating/rules.spec.yaml",
        "--plan",
        "examples/codex/first-gate-covers-builds/compliant/plan.yaml",
    ]);
    assert_eq!(silent.status.code(), Some(1), "{}", stdout(&silent));
    assert!(
        stderr(&silent).contains("fail-mode-declared"),
        "{}",
        stderr(&silent)
    );

    server.register("free-fl1", "free", "fl1");
    let pushed = server.failsmall(&[
        "push",
        "bot-features",
        "examples/units/bot-features.json",
        "-m",
        "regenerated",
    ]);
    assert_eq!(pushed.status.code(), Some(1), "{}", stdout(&pushed));
    let said = stderr(&pushed);
    assert!(said.contains("422"), "{said}");
    assert!(said.contains("first-gate-covers-builds"), "{said}");
    assert!(
        said.contains("If you need to change what every consumer build reads, use a first gated stage that holds nodes of every build"),
        "{said}"
    );
    assert!(
        said.contains("docs/codex/first-gate-covers-builds.md"),
        "{said}"
    );
    let versions = server.failsmall(&["unit", "show", "bot-features", "-o", "json"]);
    assert_eq!(versions.status.code(), Some(0), "{}", stderr(&versions));
    let shown: Value = serde_json::from_str(&stdout(&versions)).unwrap();
    assert_eq!(shown["versions"], serde_json::json!([]), "{shown}");
}
