//! The changelog's team dimension against a real `failsmall server` process: a unit's owner is
//! its team; `log --team` shows only the entries about that team's units, and the API names
//! each entry's team.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::*;

#[test]
fn log_team_shows_only_that_teams_units_and_entries_name_their_team() {
    let server = Server::start("team");
    let spec = server.file("spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&[
        "unit", "create", "flags", "--spec", &spec, "--owner", "edge",
    ]);
    server.ok(&[
        "unit", "create", "features", "--spec", &spec, "--owner", "bots",
    ]);
    for unit in ["flags", "features"] {
        let file = server.file(&format!("{unit}.json"), r#"{"n": 1}"#);
        server.ok(&["push", unit, &file, "-m", "first", "--no-rollout"]);
    }
    let edge = server.json(&["log", "--team", "edge"]);
    let entries = edge.as_array().unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["unit"] == "flags"), "{edge}");
    let bots = server.json(&["log", "--team", "bots"]);
    assert!(
        bots.as_array()
            .unwrap()
            .iter()
            .all(|e| e["unit"] == "features"),
        "{bots}"
    );
    assert_eq!(
        server.json(&["log", "--team", "nobody"]),
        serde_json::json!([])
    );
    let page: serde_json::Value = server
        .http
        .get(format!("{}/v1/changelog?team=edge", server.addr))
        .bearer_auth(&server.admin)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["team"] == "edge"),
        "{page}"
    );
}
