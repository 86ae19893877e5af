//! One server per data dir: a second real `failsmall server` process started on the data dir
//! of a running one is refused at start with an error naming the data dir and the first one's
//! pid, and the first one keeps serving; once the first is gone, the data dir is free again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{BIN, Server, fresh_dir};

/// Longest wait for the refused server to exit.
const REFUSAL_WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_second_server_on_one_data_dir_is_refused_naming_the_dir_and_the_holder() {
    let dir = Arc::new(fresh_dir("lock"));
    let mut first = Server::start_in(Arc::clone(&dir), "127.0.0.1:0", &[]);
    let data_dir = dir.path().join("data");
    let mut second = Command::new(BIN)
        .args([
            "server",
            "--codex",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + REFUSAL_WAIT;
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second server on {} kept running", data_dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = second.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "the second server exited 0: {said}");
    assert!(
        said.contains(&data_dir.display().to_string()),
        "the refusal names no data dir: {said}"
    );
    assert!(
        said.contains(&format!("pid {}", first.child.id())),
        "the refusal names not the holder's pid: {said}"
    );
    assert!(
        said.contains("in use by another failsmall server"),
        "{said}"
    );
    // The first one is undisturbed: it still answers, its token still works.
    let units = first
        .http
        .get(format!("{}/v1/units", first.addr))
        .bearer_auth(&first.admin)
        .send()
        .unwrap();
    assert!(units.status().is_success(), "{}", units.status());
    // Killed (no shutdown code runs), the first leaves no stale lock: a restart takes it.
    first.restart(Duration::ZERO);
    let healthy = first
        .http
        .get(format!("{}/healthz", first.addr))
        .send()
        .unwrap();
    assert!(healthy.status().is_success());
}
