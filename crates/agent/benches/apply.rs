//! Agent apply of a 10 MiB bundle (target: at most 50 ms), and the idle agent's resident
//! memory (target: at most 20 MiB), read from /proc.
//!
//! Apply here is the whole local path after the fetch: hash check, the server's validation,
//! store the version (write, fsync, rename, fsync the directory), activate it (`current`
//! replaced by rename, directory fsynced), and record it as the last known good.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use failsmall_agent::disk::DataDir;
use failsmall_core::domain::{UnitFormat, UnitName, VersionHash};
use failsmall_core::validate::{UnitSpec, validate};

const BUNDLE_BYTES: usize = 10 * 1024 * 1024;
const ROUNDS: usize = 15;

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn idle_rss(dir: &std::path::Path) -> Option<u64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Nothing listens on port 9: the agent serves what is on disk and retries with backoff.
    let mut config =
        failsmall_agent::AgentConfig::new("http://127.0.0.1:9", "token", dir.join("idle"));
    config.node_id = Some("bench".into());
    config.local_api = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    runtime.block_on(async {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(failsmall_agent::run(config, async {
            let _ = stopped.await;
        }));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib();
        let _ = stop.send(());
        let _ = agent.await;
        rss
    })
}

fn main() {
    let dir = std::env::temp_dir().join(format!("failsmall-agent-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Measured first, before the bench allocates its bundles: the whole process (the
    // runtime and an agent with its local API, retrying an unreachable server).
    let rss = idle_rss(&dir);

    let disk = DataDir::open(dir.join("apply")).unwrap();
    let unit = UnitName::new("features").unwrap();
    let spec = UnitSpec::new(UnitFormat::Raw, BUNDLE_BYTES as u64);
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut bundle = vec![0u8; BUNDLE_BYTES];
        for (i, byte) in bundle.iter_mut().enumerate() {
            *byte = (i as u64).wrapping_mul(31).wrapping_add(round as u64) as u8;
        }
        let expected = VersionHash::of(&bundle);
        let started = Instant::now();
        assert_eq!(VersionHash::of(&bundle), expected);
        validate(&spec, &bundle).unwrap();
        disk.store_version(&unit, &expected, &bundle).unwrap();
        disk.activate(&unit, &expected).unwrap();
        disk.set_good(&unit, &expected).unwrap();
        times.push(started.elapsed());
        disk.prune(&unit, &[expected]).unwrap();
    }
    times.sort();
    let median = times[ROUNDS / 2];
    let worst = times[ROUNDS - 1];
    println!(
        "agent apply of a 10 MiB bundle: median {:.1} ms, worst {:.1} ms over {ROUNDS} rounds (target <= 50 ms)",
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    match rss {
        Some(kib) => println!(
            "idle agent RSS: {:.1} MiB (target <= 20 MiB; the whole bench process)",
            kib as f64 / 1024.0
        ),
        None => println!("idle agent RSS: /proc/self/status not readable"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
