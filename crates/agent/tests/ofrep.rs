//! OFREP read by a real OpenFeature SDK: the Python SDK (`openfeature-sdk`) and its OFREP
//! provider (`openfeature-provider-ofrep`), from a venv that `scripts/test` makes under
//! `target/ofrep-venv`, evaluate the flags of a flag unit through the agent's local API,
//! from the version active on the node: booleans, strings, numbers and objects, targeting
//! by context, a split, the default, a disabled flag, a flag not found. A bad flag file is
//! refused by the server (422, naming the field) and, pushed past it, by the agent (NACK):
//! the SDK goes on reading the last good flags (fail stale). A new good version changes
//! what the SDK reads. The bulk endpoint's ETag answers 304 until the active version or the
//! context changes.
//!
//! Skipped, with a message, only when the venv is missing and the test does not run as root;
//! as root without it, it fails (`scripts/test` makes it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{Agent, Operator, Server, UNIT, agent_config, fresh_dir, sha256_hex};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const WAIT_MS: u64 = 20_000;

/// The venv's Python: `FAILSMALL_OFREP_PYTHON`, else `target/ofrep-venv/bin/python3`.
fn sdk_python() -> Option<PathBuf> {
    let python = std::env::var_os("FAILSMALL_OFREP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ofrep-venv/bin/python3")
        });
    let imports = std::process::Command::new(&python)
        .args(["-c", "import openfeature.contrib.provider.ofrep"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    imports.then_some(python)
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs the SDK script on `evaluations`; its details, one per evaluation.
async fn sdk(python: &PathBuf, base: &str, evaluations: &Value) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ofrep/evaluate.py");
    let mut child = tokio::process::Command::new(python)
        .arg(&script)
        .arg(base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(evaluations.to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the SDK script did not finish in 120 s")
        .unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(results.len(), evaluations.as_array().unwrap().len());
    results
}

fn eval(
    kind: &str,
    key: &str,
    default: Value,
    targeting_key: Option<&str>,
    attributes: Value,
) -> Value {
    json!({"type": kind, "key": key, "default": default, "targeting_key": targeting_key,
           "attributes": attributes})
}

/// Version 1 of the flag set.
fn flags_v1() -> Value {
    json!({
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            "new-banner": {
                "state": "ENABLED",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [
                    {"ends_with": [{"var": "email"}, "@example.com"]}, "on",
                    {"in": [{"var": "plan"}, ["enterprise", "business"]]}, "on",
                    null
                ]},
                "metadata": {"owner": "web"}
            },
            "color": {"state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"},
                      "defaultVariant": "red"},
            "max-items": {"state": "ENABLED", "variants": {"small": 10, "large": 50},
                          "defaultVariant": "small",
                          "targeting": {"if": [{"starts_with": [{"var": "region"}, "eu-"]}, "large"]}},
            "ratio": {"state": "ENABLED", "variants": {"low": 0.25, "high": 0.75},
                      "defaultVariant": "low"},
            "limits": {"state": "ENABLED",
                       "variants": {"tight": {"rps": 100, "burst": [1, 2]}, "loose": {"rps": 1000}},
                       "defaultVariant": "tight"},
            "checkout": {"state": "ENABLED", "variants": {"old": "v1", "new": "v2"},
                         "defaultVariant": "old",
                         "targeting": {"fractional": [["old", 50], ["new", 50]]}},
            "killswitch": {"state": "DISABLED", "variants": {"on": true, "off": false},
                           "defaultVariant": "on"}
        }
    })
}

fn push_bytes(document: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(document).unwrap()
}

/// The bulk evaluation: status, ETag, body.
async fn bulk(base: &str, context: Value, if_none_match: Option<&str>) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/ofrep/v1/evaluate/flags"))
        .json(&json!({"context": context}));
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    (
        status,
        etag,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openfeature_sdk_reads_the_flags_active_on_the_node_over_ofrep_and_fails_stale() {
    let Some(python) = sdk_python() else {
        if is_root() {
            panic!(
                "the OpenFeature SDK venv is missing; scripts/test makes it (target/ofrep-venv)"
            );
        }
        println!(
            "SKIPPED: the OpenFeature SDK venv is missing and this is not root; scripts/test makes it"
        );
        return;
    };
    let scratch = fresh_dir("ofrep");
    let dir = scratch.path();
    let server = Server::start(&dir.join("server")).await;
    let operator = Operator::new(&server);
    let token = operator.agent_token("n1").await;
    operator
        .create_unit_with(json!({"format": "json", "max_bytes": 65_536, "shape": "flag_set"}))
        .await;
    let mut config = agent_config(&server.base, &token, "n1", &dir.join("agent"));
    config.ofrep_units = vec![UNIT.parse().unwrap()];
    let agent = Agent::start(config).await;
    agent.wait_status(WAIT_MS, |s| s["connected"] == true).await;
    let base = agent.local_api.clone();

    // No version on the node yet: every flag is not found, the SDK returns the default.
    let results = sdk(
        &python,
        &base,
        &json!([eval("boolean", "new-banner", json!(false), None, json!({}))]),
    )
    .await;
    assert_eq!(results[0]["error_code"], "FLAG_NOT_FOUND", "{results:#?}");
    assert_eq!(results[0]["value"], false);

    // v1, rolled out.
    let v1 = push_bytes(&flags_v1());
    let hash1 = operator.push(&v1, false).await;
    let id = operator.rollout(&hash1).await;
    operator.wait_rollout(id, "completed", WAIT_MS).await;
    let short1 = &sha256_hex(&v1)[..12];

    let evaluations = json!([
        eval(
            "boolean",
            "new-banner",
            json!(false),
            Some("u-1"),
            json!({"email": "ann@example.com"})
        ),
        eval(
            "boolean",
            "new-banner",
            json!(true),
            Some("u-2"),
            json!({"email": "bob@other.org", "plan": "free"})
        ),
        eval(
            "boolean",
            "new-banner",
            json!(false),
            Some("u-3"),
            json!({"plan": "enterprise"})
        ),
        eval("string", "color", json!("black"), None, json!({})),
        eval(
            "integer",
            "max-items",
            json!(1),
            None,
            json!({"region": "eu-west"})
        ),
        eval(
            "integer",
            "max-items",
            json!(1),
            None,
            json!({"region": "us-east"})
        ),
        eval("float", "ratio", json!(0.0), None, json!({})),
        eval("object", "limits", json!({}), None, json!({})),
        eval(
            "string",
            "checkout",
            json!("none"),
            Some("user-42"),
            json!({})
        ),
        eval(
            "string",
            "checkout",
            json!("none"),
            Some("user-42"),
            json!({})
        ),
        eval("boolean", "killswitch", json!(false), None, json!({})),
        eval("boolean", "no-such-flag", json!(true), None, json!({})),
        eval("string", "checkout", json!("none"), None, json!({})),
    ]);
    let results = sdk(&python, &base, &evaluations).await;
    let summary: Vec<(Value, Value, Value, Value)> = results
        .iter()
        .map(|r| {
            (
                r["value"].clone(),
                r["variant"].clone(),
                r["reason"].clone(),
                r["error_code"].clone(),
            )
        })
        .collect();
    let expect =
        |value: Value, variant: Value, reason: &str| (value, variant, json!(reason), Value::Null);
    assert_eq!(
        summary[0],
        expect(json!(true), json!("on"), "TARGETING_MATCH"),
        "{results:#?}"
    );
    assert_eq!(
        summary[1],
        expect(json!(false), json!("off"), "DEFAULT"),
        "{results:#?}"
    );
    assert_eq!(
        summary[2],
        expect(json!(true), json!("on"), "TARGETING_MATCH"),
        "{results:#?}"
    );
    assert_eq!(
        summary[3],
        expect(json!("#f00"), json!("red"), "STATIC"),
        "{results:#?}"
    );
    assert_eq!(
        summary[4],
        expect(json!(50), json!("large"), "TARGETING_MATCH"),
        "{results:#?}"
    );
    assert_eq!(
        summary[5],
        expect(json!(10), json!("small"), "DEFAULT"),
        "{results:#?}"
    );
    assert_eq!(
        summary[6],
        expect(json!(0.25), json!("low"), "STATIC"),
        "{results:#?}"
    );
    assert_eq!(
        summary[7],
        expect(
            json!({"rps": 100, "burst": [1, 2]}),
            json!("tight"),
            "STATIC"
        ),
        "{results:#?}"
    );
    assert_eq!(summary[8].2, "SPLIT", "{results:#?}");
    assert!(summary[8].0 == "v1" || summary[8].0 == "v2", "{results:#?}");
    assert_eq!(
        summary[8], summary[9],
        "the same targeting key gets the same variant"
    );
    // Disabled: the caller's own default, reason DISABLED.
    assert_eq!(
        summary[10],
        (json!(false), Value::Null, json!("DISABLED"), Value::Null),
        "{results:#?}"
    );
    assert_eq!(summary[11].0, true);
    assert_eq!(summary[11].3, "FLAG_NOT_FOUND");
    assert!(
        results[11]["error_message"]
            .as_str()
            .unwrap()
            .contains("no-such-flag"),
        "{results:#?}"
    );
    assert_eq!(summary[12].0, "none");
    assert_eq!(summary[12].3, "TARGETING_KEY_MISSING", "{results:#?}");
    assert_eq!(results[0]["flag_metadata"]["owner"], "web");
    assert_eq!(results[0]["flag_metadata"]["failsmallUnit"], UNIT);
    assert_eq!(results[0]["flag_metadata"]["failsmallVersion"], short1);

    // Bulk: every flag, an ETag, 304 while nothing changed, 200 for another context.
    let context = json!({"targetingKey": "u-1", "email": "ann@example.com"});
    let (status, etag1, body) = bulk(&base, context.clone(), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(etag1.starts_with('"') && etag1.len() > 2, "{etag1}");
    let flags = body["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 7, "{body}");
    let banner = flags.iter().find(|f| f["key"] == "new-banner").unwrap();
    assert_eq!(
        (&banner["value"], &banner["reason"]),
        (&json!(true), &json!("TARGETING_MATCH"))
    );
    let (status, etag, _) = bulk(&base, context.clone(), Some(&etag1)).await;
    assert_eq!((status, etag.as_str()), (304, etag1.as_str()));
    let (status, other, _) = bulk(&base, json!({"targetingKey": "u-9"}), Some(&etag1)).await;
    assert_eq!(status, 200);
    assert_ne!(other, etag1);

    // A bad flag file: the server refuses it, naming the field...
    let mut bad = flags_v1();
    bad["flags"]["color"]["defaultVariant"] = json!("green");
    let response = operator
        .http
        .post(format!(
            "{}/v1/units/{UNIT}/versions?message=bad",
            operator.base
        ))
        .bearer_auth(&operator.admin)
        .body(push_bytes(&bad))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("/flags/color/defaultVariant")
            && text.contains("\\\"green\\\" is not one of the variants"),
        "{text}"
    );
    // ...and, pushed past it, the agent refuses it (NACK, rolled back); the SDK reads v1 on.
    let refused = operator.push(&push_bytes(&bad), true).await;
    let id = operator.rollout(&refused).await;
    operator.wait_rollout(id, "rolled_back", WAIT_MS).await;
    operator
        .wait_changelog("node_rejected", "/flags/color/defaultVariant", WAIT_MS)
        .await;
    let results = sdk(
        &python,
        &base,
        &json!([eval("string", "color", json!("black"), None, json!({}))]),
    )
    .await;
    assert_eq!(results[0]["value"], "#f00", "{results:#?}");
    assert_eq!(results[0]["flag_metadata"]["failsmallVersion"], short1);
    let (status, _, _) = bulk(&base, context.clone(), Some(&etag1)).await;
    assert_eq!(status, 304, "nothing changed on the node");

    // v2: the SDK sees the change.
    let mut good = flags_v1();
    good["flags"]["color"]["defaultVariant"] = json!("blue");
    good["flags"]["killswitch"]["state"] = json!("ENABLED");
    let v2 = push_bytes(&good);
    let hash2 = operator.push(&v2, false).await;
    let id = operator.rollout(&hash2).await;
    operator.wait_rollout(id, "completed", WAIT_MS).await;
    let results = sdk(
        &python,
        &base,
        &json!([
            eval("string", "color", json!("black"), None, json!({})),
            eval("boolean", "killswitch", json!(false), None, json!({})),
        ]),
    )
    .await;
    assert_eq!(
        (&results[0]["value"], &results[0]["variant"]),
        (&json!("#00f"), &json!("blue")),
        "{results:#?}"
    );
    assert_eq!(
        results[0]["flag_metadata"]["failsmallVersion"],
        &sha256_hex(&v2)[..12]
    );
    assert_eq!(
        (&results[1]["value"], &results[1]["reason"]),
        (&json!(true), &json!("STATIC")),
        "{results:#?}"
    );
    let (status, etag2, _) = bulk(&base, context, Some(&etag1)).await;
    assert_eq!(status, 200);
    assert_ne!(etag2, etag1);

    agent.stop().await;
    server.stop().await;
}
