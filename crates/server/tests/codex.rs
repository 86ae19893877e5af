//! The Codex on a real server: a unit, a push and a rollout that break a deny rule are refused
//! with 422 naming the rule, its sentence and its link, and nothing is stored; a warn rule's
//! finding is recorded in the changelog; `warn` mode only records; team rules join.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{TestServer, features, fresh_dir};
use failsmall_server::codex::{CodexConfig, CodexMode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn register(server: &TestServer, node: &str, cohort: &str, generation: &str) {
    let token = server.agent_token(&format!("agent-{node}"), node).await;
    let labels = json!({"labels": {"cohort": cohort, "generation": generation}});
    let (status, body) = server
        .call(
            Method::PUT,
            &format!("/v1/nodes/{node}"),
            Some(&token),
            Some(labels),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// One employee node and 19 free nodes, all of generation fl2.
async fn fleet_of_one_generation(server: &TestServer) {
    register(server, "emp-1", "employee", "fl2").await;
    for index in 0..19 {
        register(server, &format!("free-{index}"), "free", "fl2").await;
    }
}

fn spec() -> Value {
    json!({
        "format": "json",
        "max_bytes": 4096,
        "schema": {"type": "object", "required": ["features"], "properties": {"features": {"type": "array"}}},
        "max_entries": [{"path": "/features", "max": 3}],
        "fail_mode": "closed"
    })
}

const PLAN: &str = "name: employees-first\nsoak: 0s\ndefaults:\n  bake: 1m\n  timeout: 3m\n  gates: ['error_rate > 0.5%']\nstages:\n  - name: employees\n    select: { cohort: employee }\n  - name: free\n    select: { cohort: free }\n";

async fn changelog(server: &TestServer, unit: &str) -> Vec<Value> {
    let (status, body) = server
        .admin(Method::GET, &format!("/v1/changelog?unit={unit}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["entries"].as_array().unwrap().clone()
}

fn assert_denied_by(body: &Value, rule: &str, sentence_start: &str) {
    common::assert_error_shape(body);
    assert_eq!(body["error"]["code"], "codex_denied", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(rule), "{message}");
    assert!(message.contains(sentence_start), "{message}");
    assert!(
        message.contains(&format!("docs/codex/{rule}.md")),
        "{message}"
    );
    let findings = body["error"]["detail"]["findings"].as_array().unwrap();
    let finding = findings.iter().find(|f| f["rule"] == rule).unwrap();
    assert_eq!(finding["severity"], "deny");
    assert!(
        finding["sentence"]
            .as_str()
            .unwrap()
            .starts_with(sentence_start)
    );
    assert_eq!(finding["link"], format!("docs/codex/{rule}.md"));
}

#[tokio::test]
async fn a_push_that_breaks_a_deny_rule_is_refused_with_the_rules_sentence_and_link() {
    let dir = fresh_dir("codex-push");
    let server = TestServer::start_with(dir.path(), |config| {
        config.codex = CodexConfig::enforce();
    })
    .await;
    fleet_of_one_generation(&server).await;

    // Every node runs fl2: a first stage of employees covers every build, so the unit and its
    // plan are accepted.
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "bot-features", "spec": spec(), "plan": PLAN})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // An fl1 node joins the fleet (the older proxy generation of 5 Dec). The plan's first
    // gated stage holds no fl1 node any more: the next push is refused, and nothing is stored.
    register(&server, "free-fl1", "free", "fl1").await;
    let (status, body) = server
        .push(
            "bot-features",
            &server.admin,
            "message=regenerated",
            &features(2),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_denied_by(
        &body,
        "first-gate-covers-builds",
        "If you need to change what every consumer build reads",
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("holds no node of generation fl1"),
        "{message}"
    );
    let (status, versions) = server
        .admin(Method::GET, "/v1/units/bot-features/versions", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{versions}");
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        0,
        "{versions}"
    );
    let (_, rollouts) = server.admin(Method::GET, "/v1/rollouts", None).await;
    assert_eq!(
        rollouts["rollouts"].as_array().unwrap().len(),
        0,
        "{rollouts}"
    );

    // An update that leaves the plan out keeps it, so it is judged with it: refused too.
    let (_, unit) = server
        .admin(Method::GET, "/v1/units/bot-features", None)
        .await;
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/units/bot-features",
            Some(json!({"revision": unit["revision"], "spec": spec(), "owner": "bots"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_denied_by(
        &body,
        "first-gate-covers-builds",
        "If you need to change what every consumer build reads",
    );
    server.stop().await;
}

#[tokio::test]
async fn units_and_rollouts_are_judged_and_warnings_reach_the_changelog() {
    let dir = fresh_dir("codex-units");
    let server = TestServer::start_with(dir.path(), |config| {
        config.codex = CodexConfig::enforce();
    })
    .await;
    fleet_of_one_generation(&server).await;

    // A unit that does not say how it fails is refused at creation.
    let mut undeclared = spec();
    undeclared.as_object_mut().unwrap().remove("fail_mode");
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "rules", "spec": undeclared})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_denied_by(
        &body,
        "fail-mode-declared",
        "If you need consumers to behave",
    );
    let (status, _) = server.admin(Method::GET, "/v1/units/rules", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A plan whose approval stage's nodes were reached by an earlier stage is a warning: the
    // unit is created and the changelog says why.
    let late_approval = "name: late-approval\nsoak: 0s\ndefaults:\n  bake: 1m\n  timeout: 3m\n  gates: ['error_rate > 0.5%']\nstages:\n  - name: employees\n    select: { cohort: employee }\n  - name: half\n    percent: 50%\n  - name: free\n    select: { cohort: free }\n    approval: true\n";
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec(), "plan": late_approval})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let entries = changelog(&server, "flags").await;
    let warning = entries
        .iter()
        .find(|e| e["kind"] == "codex_warning")
        .unwrap_or_else(|| panic!("{entries:#?}"));
    let reason = warning["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("warn approval-before-exposure"),
        "{reason}"
    );
    assert!(
        reason.contains("docs/codex/approval-before-exposure.md"),
        "{reason}"
    );

    // A unit changed to a plan without gates is refused; the unit keeps its plan.
    let ungated = "name: ungated\nstages:\n  - name: employees\n    select: { cohort: employee }\n    gates: []\n  - name: free\n    select: { cohort: free }\n    gates: []\n";
    let (_, unit) = server.admin(Method::GET, "/v1/units/flags", None).await;
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/units/flags",
            Some(json!({"revision": unit["revision"], "spec": spec(), "plan": ungated})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_denied_by(&body, "plan-has-gates", "If you need to roll out a change");

    // A version stored without a plan, then a rollout through an instant plan: refused.
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "stored", "spec": spec()})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, version) = server
        .push("stored", &server.admin, "message=first", &features(1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{version}");
    let instant =
        "name: instant\nstages:\n  - name: everywhere\n    gates: ['error_rate > 0.5%']\n";
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"unit": "stored", "version": version["hash"], "plan": instant, "reason": "now"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_denied_by(
        &body,
        "no-instant-plan",
        "If you need a change everywhere now",
    );
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"unit": "stored", "version": version["hash"], "plan": PLAN, "reason": "staged"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn warn_mode_records_denies_and_refuses_nothing() {
    let dir = fresh_dir("codex-warn");
    let server = TestServer::start_with(dir.path(), |config| {
        config.codex = CodexConfig {
            mode: CodexMode::Warn,
            dirs: Vec::new(),
        };
    })
    .await;
    let mut undeclared = spec();
    undeclared.as_object_mut().unwrap().remove("fail_mode");
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "rules", "spec": undeclared})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let entries = changelog(&server, "rules").await;
    assert!(
        entries.iter().any(|e| e["kind"] == "codex_warning"
            && e["reason"]
                .as_str()
                .unwrap()
                .starts_with("deny fail-mode-declared")),
        "{entries:#?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn team_rules_from_a_directory_are_enforced_too() {
    let dir = fresh_dir("codex-team");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("owner.rego"),
        r#"package failsmall.codex.team.owner

rule := {
	"id": "owner-declared",
	"severity": "deny",
	"sentence": "If you need a unit, use a spec whose schema names a title, so that pages say what it is.",
	"link": "https://wiki.example/codex/owner-declared",
}

violations contains v if {
	is_object(input.unit)
	not input.unit.spec.schema.title
	v := {"message": sprintf("unit %q: schema has no title", [input.unit.name]), "field": "schema"}
}
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_with(&data, |config| {
        config.codex = CodexConfig {
            mode: CodexMode::Enforce,
            dirs: vec![rules.clone()],
        };
    })
    .await;
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "untitled", "spec": spec()})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("owner-declared"), "{message}");
    assert!(
        message.contains("https://wiki.example/codex/owner-declared"),
        "{message}"
    );
    server.stop().await;
}

/// A team rule that does not load stops the server at start, naming the file: a server never
/// runs with fewer rules than it was given.
#[tokio::test]
async fn a_team_rule_that_does_not_load_stops_the_server() {
    let dir = fresh_dir("codex-broken");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("half.rego"),
        "package failsmall.codex.half\nrule := {\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = failsmall_server::ServerConfig::new(dir.path().join("data"), address);
    config.codex = CodexConfig {
        mode: CodexMode::Enforce,
        dirs: vec![rules],
    };
    let error = failsmall_server::run(config, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("half.rego"), "{error}");
}
