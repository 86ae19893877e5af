//! Crash safety of apply (invariant 4): the agent runs as a real process and is killed with
//! SIGKILL at random moments during repeated applies of different bundles, and (with the
//! `failpoints` feature) made to crash at every fail point of the apply path. After every
//! crash the active file is exactly the old or the new bundle — never torn, never missing —
//! and a restarted agent converges.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Operator, Server, UNIT, fresh_dir, sha256_hex};
use serde_json::json;

const WAIT_MS: u64 = 20_000;
const NODE: &str = "k1";

/// A bundle of `len` bytes that differs for every `n`.
fn bundle(n: u64, len: usize) -> Vec<u8> {
    let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Fixture {
    server: Server,
    operator: Operator,
    token: String,
    agent_dir: PathBuf,
    log: PathBuf,
    /// Removed when dropped, after the fields above that use it.
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(name: &str) -> Self {
        let dir_tmp = fresh_dir(name);
        let dir = dir_tmp.path();
        let server = Server::start(&dir.join("server")).await;
        let operator = Operator::new(&server);
        operator
            .create_unit_with(json!({"format": "raw", "max_bytes": 4 * 1024 * 1024}))
            .await;
        let token = operator.agent_token(NODE).await;
        Self {
            server,
            operator,
            token,
            agent_dir: dir.join("agent"),
            log: dir.join("agent.log"),
            _dir: dir_tmp,
        }
    }

    fn spawn(&self, crash_at: Option<&str>) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_failsmall-agent"));
        command
            .args(["--server", &self.server.base, "--token", &self.token])
            .args(["--labels", "cohort=employee", "--node-id", NODE])
            .arg("--data-dir")
            .arg(&self.agent_dir)
            .args(["--watch-wait-ms", "2000", "--backoff-max-ms", "200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(point) = crash_at {
            command.env("FAILSMALL_CRASH_AT", point);
        }
        command.spawn().unwrap()
    }

    fn current(&self) -> Option<Vec<u8>> {
        std::fs::read(self.agent_dir.join("units").join(UNIT).join("current")).ok()
    }

    /// Pushes `content` and starts its rollout; returns the rollout's id.
    async fn roll_out(&self, content: &[u8]) -> u64 {
        let hash = self.operator.push(content, false).await;
        self.operator.rollout(&hash).await
    }
}

fn assert_old_or_new(active: Option<Vec<u8>>, old: &[u8], new: &[u8], when: &str) {
    let Some(active) = active else {
        panic!("{when}: the active file is missing");
    };
    let hash = sha256_hex(&active);
    assert!(
        hash == sha256_hex(old) || hash == sha256_hex(new),
        "{when}: the active file ({} bytes, sha256 {hash}) is neither the old nor the new bundle",
        active.len()
    );
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for the agent process to end on its own (a crash at a fail point).
#[cfg(feature = "failpoints")]
fn wait_exit(child: &mut Child, timeout_ms: u64) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_millis(timeout_ms);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// First version, applied without interruption.
async fn first_version(fixture: &Fixture) -> Vec<u8> {
    let agent = fixture.spawn(None);
    // Registered first, so the rollout's stage selects the node.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while !fixture.operator.node_known(NODE).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = bundle(0, 256 * 1024);
    let id = fixture.roll_out(&first).await;
    fixture
        .operator
        .wait_rollout(id, "completed", WAIT_MS)
        .await;
    kill(agent);
    assert_eq!(fixture.current().as_deref(), Some(first.as_slice()));
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_leaves_the_old_or_the_new_bundle() {
    let fixture = Fixture::start("kill-random").await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut old = first_version(&fixture).await;
    for round in 1..=12u64 {
        let agent = fixture.spawn(None);
        let new = bundle(round, 64 * 1024 + rng.below(512 * 1024) as usize);
        let id = fixture.roll_out(&new).await;
        let delay_ms = rng.below(120);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        kill(agent);
        let when = format!("seed {seed} round {round}: SIGKILL after {delay_ms} ms");
        assert_old_or_new(fixture.current(), &old, &new, &when);
        // A restarted agent converges to the new bundle.
        let agent = fixture.spawn(None);
        fixture
            .operator
            .wait_rollout(id, "completed", WAIT_MS)
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
        while fixture.current().as_deref() != Some(new.as_slice()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{when}: never converged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill(agent);
        assert_old_or_new(fixture.current(), &old, &new, &when);
        old = new;
    }
    fixture.server.stop().await;
}

/// Every fail point of the apply path, in order.
#[cfg(feature = "failpoints")]
const CRASH_POINTS: [&str; 11] = [
    "agent::fetched",
    "agent::before_rename",
    "agent::after_version_stored",
    "agent::validated",
    "agent::before_current_written",
    "agent::before_current_renamed",
    "agent::after_current_renamed",
    "agent::after_current_synced",
    "agent::reloaded",
    "agent::checked",
    "agent::before_good",
];

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_fail_point_leaves_the_old_or_the_new_bundle() {
    let fixture = Fixture::start("kill-failpoints").await;
    let mut old = first_version(&fixture).await;
    for (round, point) in CRASH_POINTS.iter().enumerate() {
        let new = bundle(100 + round as u64, 128 * 1024);
        let mut agent = fixture.spawn(Some(point));
        let id = fixture.roll_out(&new).await;
        assert!(
            wait_exit(&mut agent, WAIT_MS),
            "the agent never reached {point}"
        );
        let when = format!("crash at {point}");
        assert_old_or_new(fixture.current(), &old, &new, &when);
        let agent = fixture.spawn(None);
        fixture
            .operator
            .wait_rollout(id, "completed", WAIT_MS)
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
        while fixture.current().as_deref() != Some(new.as_slice()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{when}: never converged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill(agent);
        old = new;
    }
    fixture.server.stop().await;
}
