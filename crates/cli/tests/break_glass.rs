//! The break-glass drill, run by CI on every test run: a real `failsmall server` and three
//! real `failsmall agent`s under an offline root; a bad version reaches every node; the
//! control plane is killed; a break-glass order signed by 2 of the 3 key holders is delivered
//! straight to the agents' local APIs and every node is back on the good version, with the
//! control plane still down; one signature is not enough and a replay is refused; when the
//! control plane comes back, the changelog has one `break_glass` entry per node and the
//! order still holds. The time from delivery to every node reverted is printed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod roots;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roots::*;
use serde_json::Value;

#[test]
fn drill_break_glass_with_the_control_plane_down() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let keys = scratch.path().join("keys");
    let root = keys.join("root.json");
    let share = |n: u32| keys.join(format!("root-share-{n}.key"));
    let listen = format!("127.0.0.1:{}", free_port());

    let server = start_server(&data, &listen).unwrap();
    let admin = admin(&data);
    let tokens: Vec<(&str, String)> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|node| (node, agent_token(&server, &admin, node)))
        .collect();
    drop(server);
    cli(&[
        "keys",
        "init-root",
        "--out",
        path(&keys),
        "--data-dir",
        path(&data),
    ]);
    sign_root(&root, &[share(1), share(2)]);
    install_root(&root, &data);
    let server = start_server(&data, &listen).unwrap();

    let mut agents = Vec::new();
    let mut locals = Vec::new();
    for (node, token) in &tokens {
        let local = format!("127.0.0.1:{}", free_port());
        let dir = scratch.path().join(format!("agent-{node}"));
        agents.push(Agent(
            Command::new(BIN)
                .args(["agent", "--server", &format!("http://{listen}")])
                .args(["--node-id", node, "--labels", "region=eu"])
                .args(["--data-dir", path(&dir), "--root", path(&root)])
                .args(["--local-api", &local, "--backoff-max-ms", "500"])
                .args(["--health-interval-ms", "200"])
                .env("FAILSMALL_TOKEN", token)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        locals.push(local);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let nodes = api(&server, &admin, reqwest::Method::GET, "/v1/nodes", vec![]).to_string();
        if ["n1", "n2", "n3"]
            .iter()
            .all(|n| nodes.contains(&format!("\"{n}\"")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the agents never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (good, bad) = ("{\"limit\":60}", "{\"limit\":6000}");
    create_and_push(&server, &admin, "features", good);
    for local in &locals {
        wait_serves(local, "features", good, "the good version");
    }
    api(
        &server,
        &admin,
        reqwest::Method::POST,
        "/v1/units/features/versions?message=bad",
        bad.as_bytes().to_vec(),
    );
    for local in &locals {
        wait_serves(local, "features", bad, "the bad version");
    }

    // The control plane goes down.
    drop(server);

    let order = scratch.path().join("order.json");
    let good_hash = failsmall_core::domain::VersionHash::of(good.as_bytes()).to_string();
    cli(&[
        "break-glass",
        "draft",
        "--out",
        path(&order),
        "--pin",
        &format!("features={good_hash}"),
        "--select",
        "region=eu",
        "--reason",
        "drill: the bad features file is everywhere and the control plane is down",
        "--expires-in",
        "1h",
    ]);
    let apply = |agents: &[String]| {
        let mut command = Command::new(BIN);
        command.args(["break-glass", "apply", "--order", path(&order)]);
        for agent in agents {
            command.args(["--agent", agent]);
        }
        command.output().unwrap()
    };
    // One signature of the two needed: every agent refuses, nothing changes.
    cli(&[
        "break-glass",
        "sign",
        "--order",
        path(&order),
        "--key",
        path(&share(1)),
    ]);
    let refused = apply(&locals);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(
        text(&refused).contains("threshold not met"),
        "{}",
        text(&refused)
    );
    for local in &locals {
        wait_serves(local, "features", bad, "after a refused order");
    }

    // The second holder signs: every node is back on the good version, at once.
    cli(&[
        "break-glass",
        "sign",
        "--order",
        path(&order),
        "--key",
        path(&share(3)),
    ]);
    let started = Instant::now();
    let applied = apply(&locals);
    assert!(applied.status.success(), "{}", text(&applied));
    for local in &locals {
        wait_serves(local, "features", good, "after the break glass");
    }
    let drill_ms = started.elapsed().as_millis();
    eprintln!("break-glass drill: 3 nodes reverted in {drill_ms} ms with the control plane down");

    // The same order again is a replay.
    let replayed = apply(&locals[..1]);
    assert_eq!(replayed.status.code(), Some(3), "{}", text(&replayed));
    assert!(
        text(&replayed).contains("replay refused"),
        "{}",
        text(&replayed)
    );
    let status = cli(&["break-glass", "status", "--agent", &locals[0]]);
    assert!(status.contains("1 order(s) in force"), "{status}");

    // The control plane is back: each node's use is in the changelog, and the order holds
    // though the desired state still names the bad version.
    let server = start_server(&data, &listen).unwrap();
    let deadline = Instant::now() + WAIT;
    let entries = loop {
        let log = api(
            &server,
            &admin,
            reqwest::Method::GET,
            "/v1/changelog?limit=1000",
            vec![],
        );
        let entries: Vec<Value> = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "break_glass")
            .cloned()
            .collect();
        if entries.len() >= 3 {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "the changelog never got the break-glass entries: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(entries.len(), 3, "{entries:?}");
    for node in ["n1", "n2", "n3"] {
        assert!(
            entries.iter().any(|e| e["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("on node {node}"))),
            "{entries:?}"
        );
    }
    assert!(entries.iter().all(|e| e["version"] == good_hash.as_str()));
    // And an alert can fire on it.
    let metrics = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", server.addr))
        .bearer_auth(&admin)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("failsmall_break_glass_reports_total 3"),
        "{metrics}"
    );
    for local in &locals {
        wait_serves(local, "features", good, "with the control plane back");
    }
}
