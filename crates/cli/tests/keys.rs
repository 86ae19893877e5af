//! Keys with roles on real processes: `failsmall keys` makes an offline root (3 shares, 2 to
//! sign), a `failsmall server` serves it, a `failsmall agent` pins it. Then the lessons: a
//! root below its threshold is refused by server and agent; a server restored from an older
//! backup is refused by the agent (a lower sequence) until the root holders sign a new epoch;
//! the online key rotates without touching the agent; a revoked or deleted key stops the
//! server at start with what to do. Everything listens on 127.0.0.1 with ports the OS chooses,
//! lives in one temporary dir, and is killed when the test ends.
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
use serde_json::{Value, json};

#[test]
fn a_root_lets_agents_through_rotation_and_a_restored_backup_and_nothing_else() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let keys = scratch.path().join("keys");
    let root = keys.join("root.json");
    let share = |n: u32| keys.join(format!("root-share-{n}.key"));

    let listen = format!("127.0.0.1:{}", free_port());
    // First start makes the data dir (and its key, the only time one is made).
    let server = start_server(&data, &listen).unwrap();
    let admin = admin(&data);
    let token = agent_token(&server, &admin, "n1");
    drop(server);

    // The offline root: 3 shares, 2 to sign, naming the server's key.
    cli(&[
        "keys",
        "init-root",
        "--out",
        path(&keys),
        "--shares",
        "3",
        "--threshold",
        "2",
        "--data-dir",
        path(&data),
    ]);
    // One signature is below the threshold: the server refuses the root, and so would an
    // agent.
    sign_root(&root, &[share(1)]);
    let show = Command::new(BIN)
        .args(["keys", "show", "--root", path(&root)])
        .output()
        .unwrap();
    assert_eq!(show.status.code(), Some(3), "{}", text(&show));
    assert!(text(&show).contains("threshold NOT met"), "{}", text(&show));
    install_root(&root, &data);
    let refused = start_server(&data, &listen)
        .err()
        .expect("a root below threshold");
    assert!(refused.contains("threshold not met"), "{refused}");
    let agent_dir = scratch.path().join("agent");
    let local = format!("127.0.0.1:{}", free_port());
    let agent_args = |server: &str| -> Vec<String> {
        [
            "agent",
            "--server",
            server,
            "--node-id",
            "n1",
            "--data-dir",
            path(&agent_dir),
            "--root",
            path(&root),
            "--local-api",
            &local,
            "--backoff-max-ms",
            "500",
            "--health-interval-ms",
            "200",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let early = Command::new(BIN)
        .args(agent_args("http://127.0.0.1:9"))
        .env("FAILSMALL_TOKEN", &token)
        .output()
        .unwrap();
    assert!(!early.status.success(), "{}", text(&early));
    assert!(
        text(&early).contains("threshold not met"),
        "{}",
        text(&early)
    );

    // The second holder signs: the server starts, the agent pins the root.
    sign_root(&root, &[share(2)]);
    install_root(&root, &data);
    let server = start_server(&data, &listen).unwrap();
    let served: Value = reqwest::blocking::get(format!("{}/v1/root", server.addr))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(served["signed"]["version"], 1);
    let _agent = Agent(
        Command::new(BIN)
            .args(agent_args(&server.addr))
            .env("FAILSMALL_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + WAIT;
    while !api(&server, &admin, reqwest::Method::GET, "/v1/nodes", vec![])
        .to_string()
        .contains("\"n1\"")
    {
        assert!(Instant::now() < deadline, "the agent never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    create_and_push(&server, &admin, "u1", "{\"v\":1}");
    wait_serves(&local, "u1", "{\"v\":1}", "under root version 1");
    assert_eq!(status(&local)["root_version"], 1);

    // A backup now; more changes after it.
    drop(server);
    let backup = scratch.path().join("backup");
    copy_dir(&data, &backup);
    let server = start_server(&data, &listen).unwrap();
    for unit in ["u2", "u3", "u4"] {
        create_and_push(&server, &admin, unit, "{\"v\":2}");
    }
    wait_serves(&local, "u4", "{\"v\":2}", "after the backup");

    // The data dir is restored from the backup: its sequence numbers are lower, and the agent
    // refuses them as a replay, whatever the restored server pushes.
    drop(server);
    // With the server down, nothing newer can come: the highest sequence the agent trusts.
    let before = status(&local)["seq"].as_u64().unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);
    let server = start_server(&data, &listen).unwrap();
    create_and_push(&server, &admin, "u5", "{\"v\":5}");
    wait_status(&local, "the restored server refused", |s| {
        s["refusals"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r.as_str().unwrap().contains("replay")))
    });
    assert_eq!(status(&local)["seq"].as_u64().unwrap(), before);
    assert!(
        reqwest::blocking::get(format!("http://{local}/v1/units/u5"))
            .unwrap()
            .status()
            != 200
    );

    // The root holders sign a new epoch: the agent adopts it from the server and starts its
    // sequence check afresh.
    drop(server);
    cli(&["keys", "new-epoch", "--root", path(&root)]);
    sign_root(&root, &[share(1), share(3)]);
    install_root(&root, &data);
    let server = start_server(&data, &listen).unwrap();
    wait_serves(&local, "u5", "{\"v\":5}", "after the new epoch");
    let adopted = status(&local);
    assert_eq!(adopted["epoch"], 2, "{adopted}");
    // What it serves now came from the restored server's documents, refused above as
    // replays (their sequence numbers below `before`) until the new epoch.

    // The online key rotates: a new key waits in the data dir until the signed root names
    // it; the agent is not touched.
    let old_key: Value = reqwest::blocking::get(format!("{}/v1/signing-key", server.addr))
        .unwrap()
        .json()
        .unwrap();
    let old_key = old_key["public_key"].as_str().unwrap().to_owned();
    drop(server);
    cli(&[
        "keys",
        "rotate",
        "--root",
        path(&root),
        "--data-dir",
        path(&data),
    ]);
    sign_root(&root, &[share(2), share(3)]);
    install_root(&root, &data);
    let server = start_server(&data, &listen).unwrap();
    let new_key: Value = reqwest::blocking::get(format!("{}/v1/signing-key", server.addr))
        .unwrap()
        .json()
        .unwrap();
    assert_ne!(new_key["public_key"].as_str().unwrap(), old_key);
    create_and_push(&server, &admin, "u6", "{\"v\":6}");
    wait_serves(&local, "u6", "{\"v\":6}", "after the rotation");
    assert_eq!(status(&local)["root_version"], 3);

    // The old key revoked: put back in place of the new one, the server refuses to start.
    drop(server);
    cli(&["keys", "revoke", "--root", path(&root), "--key", &old_key]);
    sign_root(&root, &[share(1), share(2)]);
    install_root(&root, &data);
    let server = start_server(&data, &listen).unwrap();
    create_and_push(&server, &admin, "u7", "{\"v\":7}");
    wait_serves(&local, "u7", "{\"v\":7}", "after the revocation");
    drop(server);
    let current = std::fs::read(data.join("signing.key")).unwrap();
    std::fs::copy(data.join("signing.key.retired"), data.join("signing.key")).unwrap();
    let revoked = start_server(&data, &listen).err().expect("a revoked key");
    assert!(
        revoked.contains("does not name this server's key"),
        "{revoked}"
    );

    // The key file deleted: the server refuses to start rather than mint a key the agents
    // would refuse, and says what to do.
    std::fs::remove_file(data.join("signing.key")).unwrap();
    let lost = start_server(&data, &listen).err().expect("a lost key");
    assert!(lost.contains("Restore the file"), "{lost}");
    assert!(!data.join("signing.key").exists());
    std::fs::write(data.join("signing.key"), current).unwrap();
    let server = start_server(&data, &listen).unwrap();
    create_and_push(&server, &admin, "u8", "{\"v\":8}");
    wait_serves(&local, "u8", "{\"v\":8}", "with the key restored");
}

#[test]
fn without_a_root_the_server_warns_and_agents_pin_its_key() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let mut child = Command::new(BIN)
        .args(["server", "--data-dir", path(&data)])
        .args(["--listen", "127.0.0.1:0", "--codex", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = lines_of(child.stderr.take().unwrap());
    let deadline = Instant::now() + WAIT;
    let warned = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = said.recv_timeout(left) else {
            break false;
        };
        if line.contains("no root.json") && line.contains("keys init-root") {
            break true;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning about the missing root");
}

#[test]
fn keys_commands_draft_each_version_and_refuse_what_would_not_verify() {
    let scratch = tempfile::tempdir().unwrap();
    let keys = scratch.path().join("keys");
    let root = keys.join("root.json");
    let online = failsmall_core::trust::public_key_hex(&[7; 32]);
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let too_many = run(&[
        "keys",
        "init-root",
        "--out",
        path(&keys),
        "--shares",
        "2",
        "--threshold",
        "3",
        "--online-key",
        &online,
    ]);
    assert_eq!(too_many.status.code(), Some(1), "{}", text(&too_many));
    assert!(
        text(&too_many).contains("--threshold 3"),
        "{}",
        text(&too_many)
    );
    cli(&[
        "keys",
        "init-root",
        "--out",
        path(&keys),
        "--online-key",
        &online,
    ]);
    let again = run(&[
        "keys",
        "init-root",
        "--out",
        path(&keys),
        "--online-key",
        &online,
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("a root is made once"),
        "{}",
        text(&again)
    );

    // A key that is not a root share cannot sign.
    let stranger = scratch.path().join("stranger.key");
    std::fs::write(&stranger, hex_seed(9)).unwrap();
    let refused = run(&[
        "keys",
        "sign",
        "--root",
        path(&root),
        "--share",
        path(&stranger),
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("is not one of the root keys"),
        "{}",
        text(&refused)
    );

    // Each draft is the next version, its signatures cleared; the lost-key path makes a new
    // key in the data dir and names it.
    let share = keys.join("root-share-1.key");
    cli(&[
        "keys",
        "sign",
        "--root",
        path(&root),
        "--share",
        path(&share),
    ]);
    let data = scratch.path().join("data");
    let added = cli(&[
        "keys",
        "add",
        "--root",
        path(&root),
        "--data-dir",
        path(&data),
    ]);
    assert!(added.contains("made a new online key"), "{added}");
    let parsed: Value = serde_json::from_str(&std::fs::read_to_string(&root).unwrap()).unwrap();
    assert_eq!(parsed["signed"]["version"], 2);
    assert_eq!(parsed["signatures"].as_array().unwrap().len(), 0);
    assert_eq!(parsed["signed"]["online_keys"].as_array().unwrap().len(), 2);
    let twice = run(&["keys", "add", "--root", path(&root), "--key", &online]);
    assert_eq!(twice.status.code(), Some(1), "{}", text(&twice));
    cli(&["keys", "revoke", "--root", path(&root), "--key", &online]);
    let shown = run(&["keys", "show", "--root", path(&root)]);
    assert_eq!(shown.status.code(), Some(3), "{}", text(&shown));
    let shown = text(&shown);
    assert!(shown.contains("root version 3 epoch 1"), "{shown}");
    assert!(shown.contains(&format!("revoked: {online}")), "{shown}");
    for n in [2, 3] {
        let share = keys.join(format!("root-share-{n}.key"));
        cli(&[
            "keys",
            "sign",
            "--root",
            path(&root),
            "--share",
            path(&share),
        ]);
    }
    let complete = cli(&["keys", "show", "--root", path(&root)]);
    assert!(complete.contains("complete"), "{complete}");

    // Break-glass keys of other people, made on their machines.
    let mut holders = Vec::new();
    for n in 1..=3 {
        let file = scratch.path().join(format!("holder-{n}.key"));
        let public = cli(&["keys", "generate", "--out", path(&file)]);
        holders.push(public.trim().to_owned());
    }
    let again = run(&[
        "keys",
        "generate",
        "--out",
        path(&scratch.path().join("holder-1.key")),
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let other = scratch.path().join("other");
    let mut args = vec![
        "keys".to_owned(),
        "init-root".to_owned(),
        "--out".to_owned(),
        path(&other).to_owned(),
        "--online-key".to_owned(),
        online.clone(),
        "--break-glass-threshold".to_owned(),
        "2".to_owned(),
    ];
    for holder in &holders {
        args.extend(["--break-glass-key".to_owned(), holder.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&args);
    let parsed: Value =
        serde_json::from_str(&std::fs::read_to_string(other.join("root.json")).unwrap()).unwrap();
    assert_eq!(parsed["signed"]["break_glass_keys"], json!(holders));
    assert_eq!(parsed["signed"]["break_glass_threshold"], 2);
}

fn hex_seed(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}
