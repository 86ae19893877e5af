//! The changelog's label filter and a unit's validator command, through the HTTP API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{TestServer, assert_error_shape, fresh_dir};
use failsmall_server::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const EU_PLAN: &str = "name: regional\nstages:\n  - name: eu-first\n    select: { region: eu-west-1 }\n    bake: 1h\n    min_requests: 10\n    gates: []\n";

/// (kind, reason) of every entry of a changelog answer.
fn kinds(body: &Value) -> Vec<(String, String)> {
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn has(entries: &[(String, String)], kind: &str, reason_part: &str) -> bool {
    entries
        .iter()
        .any(|(k, reason)| k == kind && reason.contains(reason_part))
}

async fn register(server: &TestServer, node: &str, labels: Value) {
    let agent = server.agent_token(&format!("agent-{node}"), node).await;
    let (status, body) = server
        .call(
            Method::PUT,
            &format!("/v1/nodes/{node}"),
            Some(&agent),
            Some(json!({ "labels": labels })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn changelog_label_filter_returns_what_concerns_nodes_with_that_label() {
    let scratch = fresh_dir("label-filter");
    let server = TestServer::start(scratch.path()).await;
    register(&server, "eu1", json!({"region": "eu-west-1"})).await;
    register(&server, "us1", json!({"region": "us-east-1"})).await;
    let spec = json!({"format": "json", "max_bytes": 256});
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec, "plan": EU_PLAN})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let admin = server.admin.clone();
    let (status, body) = server
        .push("flags", &admin, "message=first", b"{\"a\":1}")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, all) = server.admin(Method::GET, "/v1/changelog", None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let all = kinds(&all);
    assert!(has(&all, "stage_started", "eu-first"), "{all:?}");

    let (status, eu) = server
        .admin(Method::GET, "/v1/changelog?label=region=eu-west-1", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{eu}");
    let eu_entries = kinds(&eu);
    assert!(has(&eu_entries, "stage_started", "eu-first"), "{eu}");
    assert!(has(&eu_entries, "node_registered", "eu1"), "{eu}");
    assert!(!has(&eu_entries, "node_registered", "us1"), "{eu}");
    // Fleet-wide entries concern every node.
    assert!(has(&eu_entries, "unit_created", ""), "{eu}");
    assert!(has(&eu_entries, "version_pushed", "first"), "{eu}");
    let stage = eu["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "stage_started")
        .unwrap();
    assert_eq!(
        stage["concerns"],
        json!({"selectors": [{"labels": {"region": ["eu-west-1"]}}]})
    );

    let (status, us) = server
        .admin(Method::GET, "/v1/changelog?label=region=us-east-1", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{us}");
    let us_entries = kinds(&us);
    assert!(!has(&us_entries, "stage_started", "eu-first"), "{us}");
    assert!(!has(&us_entries, "node_registered", "eu1"), "{us}");
    assert!(has(&us_entries, "node_registered", "us1"), "{us}");
    assert!(has(&us_entries, "version_pushed", "first"), "{us}");

    // Several labels: every one must hold. The stage does not name `cohort`, so it selects
    // free nodes in eu-west-1 too; node eu1 has no cohort at all.
    let (_, both) = server
        .admin(
            Method::GET,
            "/v1/changelog?label=region=eu-west-1&label=cohort=free",
            None,
        )
        .await;
    let both = kinds(&both);
    assert!(has(&both, "stage_started", "eu-first"), "{both:?}");
    assert!(!has(&both, "node_registered", "eu1"), "{both:?}");

    // The filter combines with unit and paging.
    let (_, unit_eu) = server
        .admin(
            Method::GET,
            "/v1/changelog?unit=flags&label=region=eu-west-1&limit=1",
            None,
        )
        .await;
    assert_eq!(unit_eu["entries"].as_array().unwrap().len(), 1, "{unit_eu}");
    let cursor = unit_eu["next_cursor"].as_u64().unwrap();
    let (_, rest) = server
        .admin(
            Method::GET,
            &format!("/v1/changelog?unit=flags&label=region=eu-west-1&cursor={cursor}"),
            None,
        )
        .await;
    let mut paged = kinds(&unit_eu);
    paged.extend(kinds(&rest));
    let (_, unpaged) = server
        .admin(
            Method::GET,
            "/v1/changelog?unit=flags&label=region=eu-west-1",
            None,
        )
        .await;
    assert_eq!(paged, kinds(&unpaged));

    // The Atom feed filters the same way.
    for (label, expected) in [("eu-west-1", true), ("us-east-1", false)] {
        let feed = server
            .request(
                Method::GET,
                &format!("/v1/changelog.atom?label=region={label}"),
                Some(&admin),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(feed.status(), StatusCode::OK);
        let xml = feed.text().await.unwrap();
        assert_eq!(xml.contains("stage_started flags"), expected, "{xml}");
    }

    for bad in [
        "label=region",
        "label==eu-west-1",
        "label=",
        "label=region=eu-west-1&label=pop",
    ] {
        let (status, body) = server
            .admin(Method::GET, &format!("/v1/changelog?{bad}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_error_shape(&body);
        assert_eq!(body["error"]["code"], "bad_label", "{bad}: {body}");
    }
    let too_many: Vec<String> = (0..=failsmall_server::api::MAX_LABEL_FILTERS)
        .map(|i| format!("label=k{i}=v"))
        .collect();
    let (status, body) = server
        .admin(
            Method::GET,
            &format!("/v1/changelog?{}", too_many.join("&")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .admin(Method::GET, "/v1/changelog?unit=flags&unit=flags", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_rollback_concerns_every_stage_it_reached() {
    let scratch = fresh_dir("label-rollback");
    let server = TestServer::start(scratch.path()).await;
    register(&server, "eu1", json!({"region": "eu-west-1"})).await;
    let plan = "name: two\nstages:\n  - name: eu-first\n    select: { region: eu-west-1 }\n    bake: 1h\n    min_requests: 10\n    gates: []\n  - name: us-next\n    select: { region: us-east-1 }\n    bake: 1h\n    min_requests: 10\n    gates: []\n";
    let spec = json!({"format": "json", "max_bytes": 256});
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec, "plan": plan})),
        )
        .await;
    let admin = server.admin.clone();
    let (status, body) = server.push("flags", &admin, "message=v1", b"{}").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rollout = body["rollout"]["id"].as_u64().unwrap();
    let (status, body) = server
        .admin(
            Method::POST,
            &format!("/v1/rollouts/{rollout}/commands"),
            Some(json!({"command": "rollback", "reason": "drill"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, eu) = server
        .admin(Method::GET, "/v1/changelog?label=region=eu-west-1", None)
        .await;
    assert!(has(&kinds(&eu), "rolled_back", ""), "{eu}");
    // The rollout never left its first stage: us-east-1 nodes were not touched.
    let (_, us) = server
        .admin(Method::GET, "/v1/changelog?label=region=us-east-1", None)
        .await;
    assert!(!has(&kinds(&us), "rolled_back", ""), "{us}");
    server.stop().await;
}

async fn create_validated_unit(server: &TestServer, name: &str, command: Value) {
    let spec = json!({"format": "raw", "max_bytes": 1024});
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": name, "spec": spec, "validator": command})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["validator"], command, "{body}");
}

#[tokio::test]
async fn a_validator_that_accepts_lets_the_version_in_and_reads_its_bytes() {
    let scratch = fresh_dir("validator-accepts");
    let server = TestServer::start(scratch.path()).await;
    // The version's bytes are the command's stdin (`-`): grep accepts only bytes holding
    // "good".
    let grep = json!({"command": ["grep", "-q", "good", "-"], "timeout_ms": 5000});
    create_validated_unit(&server, "parsed", grep).await;
    let admin = server.admin.clone();
    let (status, body) = server
        .push("parsed", &admin, "message=ok", b"a good file\n")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .push("parsed", &admin, "message=no", b"a bad file\n")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, versions) = server
        .admin(Method::GET, "/v1/units/parsed/versions", None)
        .await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_validators_path_is_a_private_file_in_the_servers_data_dir_and_goes_after() {
    let scratch = fresh_dir("validator-path");
    let server = TestServer::start(scratch.path()).await;
    // Refuses on purpose, saying where its input was.
    let where_ = json!({
        "command": ["sh", "-c", "echo \"at $1\" >&2; test -s \"$1\"; exit 1", "where", "{path}"],
        "timeout_ms": 5000
    });
    create_validated_unit(&server, "placed", where_).await;
    let admin = server.admin.clone();
    let (status, body) = server.push("placed", &admin, "message=m", b"bytes").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    let data_dir = scratch.path().display().to_string();
    assert!(message.contains(&format!("at {data_dir}")), "{message}");
    let path = message
        .split("at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .trim_end_matches([';', ',']);
    assert!(
        !std::path::Path::new(path).exists(),
        "{path} was left behind"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_validator_that_refuses_is_a_422_with_its_stderr_among_the_reasons() {
    let scratch = fresh_dir("validator-refuses");
    let server = TestServer::start(scratch.path()).await;
    let refuses = json!({
        "command": ["sh", "-c", "echo 'features: 412 entries, limit 200' >&2; echo second >&2; exit 1", "parser", "{path}"],
        "timeout_ms": 5000
    });
    let spec = json!({"format": "json", "max_bytes": 1024, "schema": {"type": "object"}});
    server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "features", "spec": spec, "validator": refuses})),
        )
        .await;
    let admin = server.admin.clone();
    // Valid for the spec, refused by the command.
    let (status, body) = server
        .push("features", &admin, "message=m", b"{\"features\":[]}")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error_shape(&body);
    assert_eq!(body["error"]["code"], "validation_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("features: 412 entries, limit 200 / second"),
        "{message}"
    );
    let issues = body["error"]["detail"]["issues"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "{body}");
    assert_eq!(issues[0]["kind"], "validator_refused");
    // Invalid for the spec too: both reasons, in one list.
    let (status, body) = server
        .push("features", &admin, "message=m", b"[1, 2]")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let issues = body["error"]["detail"]["issues"].as_array().unwrap();
    let issue_kinds: Vec<&str> = issues.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(issue_kinds, ["schema", "validator_refused"], "{body}");
    let (_, versions) = server
        .admin(Method::GET, "/v1/units/features/versions", None)
        .await;
    assert!(versions["versions"].as_array().unwrap().is_empty());
    // The admin override skips the command too, and says so in the changelog.
    let (status, body) = server
        .push(
            "features",
            &admin,
            "message=m&skip_validation=true",
            b"{\"features\":[]}",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, log) = server
        .admin(Method::GET, "/v1/changelog?unit=features", None)
        .await;
    assert!(
        has(
            &kinds(&log),
            "validation_skipped",
            "validator command not run"
        ),
        "{log}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_validator_that_hangs_is_killed_and_the_push_refused_naming_the_timeout() {
    let scratch = fresh_dir("validator-hangs");
    let server = TestServer::start(scratch.path()).await;
    create_validated_unit(
        &server,
        "slow",
        json!({"command": ["sh", "-c", "exec sleep 30", "sleep", "-"], "timeout_ms": 300}),
    )
    .await;
    let admin = server.admin.clone();
    let started = std::time::Instant::now();
    let (status, body) = server.push("slow", &admin, "message=m", b"x").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("timed out after 300ms") && message.contains("\"sh\""),
        "{message}"
    );
    assert_eq!(
        body["error"]["detail"]["issues"][0]["kind"],
        "validator_timed_out"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_validator_that_is_not_found_refuses_the_push_naming_the_command() {
    let scratch = fresh_dir("validator-missing");
    let server = TestServer::start(scratch.path()).await;
    create_validated_unit(
        &server,
        "missing",
        json!({"command": ["/nonexistent/failsmall-parser", "--check", "{path}"], "timeout_ms": 1000}),
    )
    .await;
    let admin = server.admin.clone();
    let (status, body) = server.push("missing", &admin, "message=m", b"x").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"/nonexistent/failsmall-parser\" was not found"),
        "{message}"
    );
    server.stop().await;
}

#[tokio::test]
async fn only_an_admin_sets_changes_or_removes_a_validator() {
    let scratch = fresh_dir("validator-admin");
    let server = TestServer::start(scratch.path()).await;
    let deployer = server.token("ci", Role::Deployer).await;
    let spec = json!({"format": "raw", "max_bytes": 64});
    let validator = json!({"command": ["true", "-"], "timeout_ms": 1000});
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/units",
            Some(&deployer),
            Some(json!({"name": "u", "spec": spec, "validator": validator})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error_shape(&body);
    let (status, _) = server
        .call(Method::GET, "/v1/units/u", Some(&deployer), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A deployer creates the unit without one; only an admin adds it.
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/units",
            Some(&deployer),
            Some(json!({"name": "u", "spec": spec})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body.get("validator").is_none(), "{body}");
    let update = |revision: u64, validator: Option<Value>| {
        let mut body = json!({"revision": revision, "spec": spec, "description": "d"});
        if let Some(validator) = validator {
            body["validator"] = validator;
        }
        body
    };
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/units/u",
            Some(&deployer),
            Some(update(1, Some(validator.clone()))),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/units/u",
            Some(update(1, Some(validator.clone()))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["validator"], validator);

    // A deployer's update that leaves it out, or sends it back unchanged, keeps it.
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/units/u",
            Some(&deployer),
            Some(update(2, None)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["validator"], validator);
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/units/u",
            Some(&deployer),
            Some(update(3, Some(validator.clone()))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Changing or removing it is an admin's.
    let other = json!({"command": ["false", "-"], "timeout_ms": 1000});
    for attempt in [other, Value::Null] {
        let (status, body) = server
            .call(
                Method::PUT,
                "/v1/units/u",
                Some(&deployer),
                Some(update(4, Some(attempt))),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/units/u",
            Some(update(4, Some(Value::Null))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("validator").is_none(), "{body}");

    // A command that is not an argv, or is unbounded, is refused whoever sends it.
    for bad in [
        json!({"command": "sh -c 'parse'"}),
        json!({"command": []}),
        json!({"command": ["x"], "timeout_ms": 0}),
        json!({"command": ["x"], "timeout_ms": 600000}),
        json!({"command": ["x"], "shell": true}),
        // No {path} and no `-`: the version's bytes would never reach it.
        json!({"command": ["x", "--check"]}),
    ] {
        let (status, body) = server
            .admin(
                Method::PUT,
                "/v1/units/u",
                Some(update(5, Some(bad.clone()))),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_error_shape(&body);
    }
    server.stop().await;
}

#[tokio::test]
async fn an_update_without_a_plan_keeps_it_null_removes_it_and_a_bad_one_changes_nothing() {
    let scratch = fresh_dir("plan-update");
    let server = TestServer::start(scratch.path()).await;
    let spec = json!({"format": "json", "max_bytes": 256});
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/units",
            Some(json!({"name": "flags", "spec": spec, "plan": EU_PLAN})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["plan"], EU_PLAN);

    // Absent: the plan stays, whoever sends the update.
    let deployer = server.token("ci", Role::Deployer).await;
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/units/flags",
            Some(&deployer),
            Some(json!({"revision": 1, "spec": spec, "owner": "bots"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["revision"].as_u64(), &body["owner"]),
        (Some(2), &json!("bots"))
    );
    assert_eq!(body["plan"], EU_PLAN);
    // A stale revision is still a conflict when the plan is left out.
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/units/flags",
            Some(json!({"revision": 1, "spec": spec})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A bad plan is refused naming the line and field, and the unit is unchanged.
    let bad_plan = "name: bad\nstages:\n  - name: one\n    bake: forever\n";
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/units/flags",
            Some(json!({"revision": 2, "spec": spec, "owner": "other", "plan": bad_plan})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error_shape(&body);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("flags.plan:4:"), "{message}");
    assert!(message.contains("stages[0].bake"), "{message}");
    let (_, unit) = server.admin(Method::GET, "/v1/units/flags", None).await;
    assert_eq!(unit["revision"], 2, "{unit}");
    assert_eq!(unit["owner"], "bots", "{unit}");
    assert_eq!(unit["plan"], EU_PLAN, "{unit}");

    // `null` removes it, and a later update without one does not bring it back.
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/units/flags",
            Some(json!({"revision": 2, "spec": spec, "owner": "bots", "plan": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("plan").is_none(), "{body}");
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/units/flags",
            Some(json!({"revision": 3, "spec": spec, "description": "no plan"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("plan").is_none(), "{body}");

    // A value sets it.
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/units/flags",
            Some(json!({"revision": 4, "spec": spec, "plan": EU_PLAN})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plan"], EU_PLAN);
    server.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_the_label_filter_and_the_validator() {
    let scratch = fresh_dir("openapi-extra");
    let server = TestServer::start(scratch.path()).await;
    let (status, document) = server
        .call(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for path in ["/v1/changelog", "/v1/changelog.atom"] {
        let parameters = document["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap();
        let label = parameters
            .iter()
            .find(|p| p["name"] == "label")
            .unwrap_or_else(|| panic!("{path} has no label parameter"));
        assert_eq!(label["in"], "query");
        assert_eq!(label["explode"], true);
    }
    let schemas = &document["components"]["schemas"];
    let validator = &schemas["ValidatorCommand"];
    assert_eq!(validator["required"], json!(["command"]));
    assert_eq!(validator["additionalProperties"], false);
    assert_eq!(
        validator["properties"]["timeout_ms"]["maximum"],
        json!(failsmall_server::validator::MAX_TIMEOUT_MS)
    );
    for (method, path, body) in [
        ("post", "/v1/units", "CreateUnitRequest"),
        ("put", "/v1/units/{unit}", "UpdateUnitRequest"),
    ] {
        assert_eq!(
            document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
                ["$ref"],
            format!("#/components/schemas/{body}")
        );
        assert_eq!(schemas[body]["additionalProperties"], false, "{body}");
    }
    assert_eq!(
        schemas["CreateUnitRequest"]["required"],
        json!(["name", "spec"])
    );
    server.stop().await;
}
