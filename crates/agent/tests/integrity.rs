//! `current` is independent of the stored versions: a write into it, while the agent runs
//! or while it is stopped, is found, restored from the verified copy, reloaded and reported;
//! the node never keeps serving bytes that match no signed version.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Agent, Operator, Server, UNIT, agent_config, features, fresh_dir, sha256_hex};
use failsmall_agent::command::LocalCommand;
use failsmall_agent::{AgentConfig, UnitLocalConfig};

const WAIT_MS: u64 = 15_000;
/// How often the running agent checks `current` in these tests.
const INTEGRITY_INTERVAL_MS: u64 = 200;

/// The agent's configuration, with a reload command that counts its runs in `marks`.
fn config(server: &Server, token: &str, agent_dir: &Path, marks: &Path) -> AgentConfig {
    let mut config = agent_config(&server.base, token, "n1", agent_dir);
    config.integrity_interval_ms = INTEGRITY_INTERVAL_MS;
    let reload = LocalCommand {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            "echo reloaded >> \"$0\"".into(),
            marks.display().to_string(),
        ],
        timeout_ms: 5_000,
    };
    config.units.insert(
        UNIT.parse().unwrap(),
        UnitLocalConfig {
            reload: Some(reload),
            ..UnitLocalConfig::default()
        },
    );
    config
}

fn reloads(marks: &Path) -> usize {
    std::fs::read_to_string(marks)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

fn current_path(agent_dir: &Path) -> PathBuf {
    agent_dir.join("units").join(UNIT).join("current")
}

/// Writes into `current` in place (the same file, not a rename), as a stray process would.
fn scribble(agent_dir: &Path) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(current_path(agent_dir))
        .unwrap();
    file.write_all(b"{\"features\": 9999").unwrap();
    file.sync_all().unwrap();
}

async fn wait_current(agent_dir: &Path, expected: &[u8], timeout_ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    while std::fs::read(current_path(agent_dir)).ok().as_deref() != Some(expected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "current not restored within {timeout_ms} ms"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server and an agent that applied `features(1)`.
async fn start(dir: &Path) -> (Server, Operator, Agent, String, Vec<u8>, PathBuf, PathBuf) {
    let server = Server::start(&dir.join("server")).await;
    let operator = Operator::new(&server);
    operator.create_unit().await;
    let token = operator.agent_token("n1").await;
    let agent_dir = dir.join("agent");
    let marks = dir.join("reloads");
    let agent = Agent::start(config(&server, &token, &agent_dir, &marks)).await;
    // Registered before the push, so the rollout's stage selects it.
    agent.wait_status(WAIT_MS, |s| s["connected"] == true).await;
    let v1 = features(1);
    let hash = operator.push(&v1, false).await;
    let id = operator.rollout(&hash).await;
    operator.wait_rollout(id, "completed", WAIT_MS).await;
    wait_current(&agent_dir, &v1, WAIT_MS).await;
    (server, operator, agent, token, v1, agent_dir, marks)
}

#[tokio::test]
async fn a_current_written_into_while_the_agent_runs_is_restored_and_reported() {
    let dir = fresh_dir("integrity-running");
    let (server, operator, agent, _token, v1, agent_dir, marks) = start(dir.path()).await;
    let hash = sha256_hex(&v1);
    let before = reloads(&marks);
    scribble(&agent_dir);
    // The stored copy is its own file: the write did not reach it.
    let stored = agent_dir
        .join("units")
        .join(UNIT)
        .join("versions")
        .join(&hash);
    assert_eq!(std::fs::read(&stored).unwrap(), v1);
    // Restored within the interval (and a round's work of leeway), reloaded, reported.
    wait_current(&agent_dir, &v1, 3 * INTEGRITY_INTERVAL_MS + 2_000).await;
    operator
        .wait_changelog(
            "node_repaired",
            &format!("features {}", &hash[..12]),
            WAIT_MS,
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while reloads(&marks) <= before {
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = agent.status().await;
    assert_eq!(status["units"][UNIT]["active"], hash.as_str());
    // Once repaired, nothing more happens: no second repair.
    tokio::time::sleep(Duration::from_millis(3 * INTEGRITY_INTERVAL_MS)).await;
    let repairs = operator
        .changelog_reasons()
        .await
        .into_iter()
        .filter(|r| r.starts_with("node_repaired"))
        .count();
    assert_eq!(repairs, 1);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_current_written_into_while_the_agent_is_stopped_is_restored_at_start() {
    let dir = fresh_dir("integrity-stopped");
    let (server, operator, agent, token, v1, agent_dir, marks) = start(dir.path()).await;
    let hash = sha256_hex(&v1);
    agent.stop().await;
    scribble(&agent_dir);
    let before = reloads(&marks);
    let mut config = config(&server, &token, &agent_dir, &marks);
    // Only the check at start may repair it.
    config.integrity_interval_ms = 3_600_000;
    let agent = Agent::start(config).await;
    agent.wait_status(WAIT_MS, |s| s["connected"] == true).await;
    assert_eq!(
        std::fs::read(current_path(&agent_dir)).unwrap(),
        v1,
        "restored before the agent served anything"
    );
    operator
        .wait_changelog("node_repaired", "restored", WAIT_MS)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while reloads(&marks) <= before {
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = agent.status().await;
    assert_eq!(status["units"][UNIT]["active"], hash.as_str());
    agent.stop().await;
    server.stop().await;
}
