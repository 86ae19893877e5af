//! A consumer fed from the agent's stable file path picks up new versions, keeps the last
//! good one when a bad version appears, and falls back to its fail mode when the file goes
//! (the agent removed the unit).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use failsmall_client::{Config, Source, UnitValue};
use failsmall_core::domain::VersionHash;

#[derive(Debug, PartialEq)]
struct Limit(u32);

impl UnitValue for Limit {
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let value: u32 = text.trim().parse().map_err(|e| format!("{text:?}: {e}"))?;
        (value <= 200)
            .then_some(Limit(value))
            .ok_or_else(|| format!("{value} > 200"))
    }
}

/// Waits (bounded) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Replaces the file the way the agent does: write a temporary file, then rename.
fn publish(path: &std::path::Path, bytes: &[u8]) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[test]
fn follows_the_file_and_fails_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("current");
    let config = Arc::new(Config::<Limit>::builder("limits").build().unwrap());
    let _watch = config.watch_file(&path, 10);
    assert!(config.get().is_err(), "no file yet: fail closed");

    publish(&path, b"60");
    eventually("the first version", || {
        config.source() == Some(Source::Version(VersionHash::of(b"60")))
    });

    publish(&path, b"412");
    eventually("the rejection", || config.metrics().rejections == 1);
    assert_eq!(config.get().unwrap().value, Limit(60));

    // The agent replaces the file by rename, never leaving it missing: a file that goes means
    // the unit was taken off the node, and the fail mode (closed) answers.
    std::fs::remove_file(&path).unwrap();
    eventually("the withdrawal", || config.get().is_err());
    assert_eq!(config.metrics().mode_in_use(), "closed");
    publish(&path, b"61");
    eventually("the next good version", || {
        config.get().is_ok_and(|s| s.value == Limit(61))
    });
}
