//! The CLI reads the server's answers as wire types (`failsmall-wire`), against a real
//! `failsmall server` process: `log -o json` shows each entry's team, `nodes -o json` each
//! node as the API sends it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::json;
use support::*;

#[test]
fn log_json_names_each_entrys_team_and_nodes_json_keeps_the_node_shape() {
    let server = Server::start("wire");
    let spec = server.file("spec.json", r#"{"format": "json", "max_bytes": 256}"#);
    server.ok(&[
        "unit", "create", "flags", "--spec", &spec, "--owner", "edge",
    ]);
    let entries = server.json(&["log"]);
    let created = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["kind"] == "unit_created" && entry["unit"] == "flags")
        .unwrap_or_else(|| panic!("no unit_created entry for flags: {entries}"));
    assert_eq!(created["team"], "edge", "{created}");

    let mut agent = Agent::new(&server);
    agent.register("n1", json!({"region": "eu"}));
    let nodes = server.json(&["nodes"]);
    let text = nodes.to_string();
    assert!(text.contains("\"n1\"") && text.contains("\"eu\""), "{text}");
}
