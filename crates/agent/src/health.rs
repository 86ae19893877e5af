//! Health of the node's consumer, reported every interval: a sample of its requests while it
//! is up, and at once a crash when it goes down.
//!
//! The consumer is down when its metrics endpoint refuses the connection, when the process in
//! its pid file is gone, or when its systemd unit is not active (the last two when the agent's
//! configuration names them). While it is down the agent sends no health sample at all, so the
//! control plane sees the node fall silent, and it reports `crashed` for every unit whose
//! active version is on trial (a rollout is still judging it), once per version and outage: a
//! crash blames the version that is being tried, never one that already proved itself. A
//! scrape that fails for another reason (a timeout, an error status, a page too large) sends
//! no sample either, but is not a crash.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use failsmall_core::domain::{UnitName, VersionHash};
use failsmall_core::health::HealthSample;
use tokio::sync::watch;

use crate::control::{Report, cut_reason};
use crate::{AgentError, ConsumerMetrics, HEALTH_INTERVAL_MIN_MS, Shared, pause, scrape};

/// Longest a `systemctl is-active` check may take before it counts as failed.
pub const SYSTEMD_CHECK_TIMEOUT_MS: u64 = 5_000;
/// Largest pid file read, in bytes.
const PID_FILE_MAX_BYTES: u64 = 64;

/// How the agent knows its consumer is alive, besides its metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerLiveness {
    /// A pid file: the consumer is down when it is missing or its process is gone.
    pub pid_file: Option<PathBuf>,
    /// A systemd unit: the consumer is down when `systemctl is-active` says it is not active.
    pub systemd_unit: Option<String>,
}

/// What one look at the consumer found.
enum Look {
    /// Up, with a scraped page (none: no metrics configured).
    Up(Option<String>),
    /// Up as far as is known, but the scrape failed: no sample this interval.
    NoSample(String),
    /// Down: a crash.
    Down(String),
}

/// Reports the health of each unit's active version every interval (see the module docs).
pub(crate) async fn report_health(
    metrics: Option<ConsumerMetrics>,
    liveness: ConsumerLiveness,
    interval_ms: u64,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let http = reqwest::Client::new();
    let interval_ms = interval_ms.max(HEALTH_INTERVAL_MIN_MS);
    let mut previous: Option<(scrape::Counters, u64)> = None;
    let mut crashes_reported: BTreeSet<(UnitName, VersionHash)> = BTreeSet::new();
    // Whether the latest look found no sample (logged once per run of failures).
    let mut sampling_failed = false;
    loop {
        if pause(interval_ms, &mut stopped).await {
            return Ok(());
        }
        let generation = *shared.activations.borrow();
        let look = look(&http, metrics.as_ref(), &liveness, interval_ms).await;
        let mut sample = HealthSample::default();
        match look {
            Look::Up(page) => {
                if shared
                    .with_status(|s| s.consumer_down.take())
                    .flatten()
                    .is_some()
                {
                    tracing::info!("the consumer is up again");
                }
                crashes_reported.clear();
                sampling_failed = false;
                if let (Some(page), Some(metrics)) = (page, &metrics) {
                    let counters = scrape::parse(&page, &metrics.names);
                    if let Some((before, before_generation)) = &previous
                        && *before_generation == generation
                    {
                        sample = scrape::sample_between(before, &counters);
                    }
                    previous = Some((counters, generation));
                }
            }
            Look::NoSample(reason) => {
                if !sampling_failed {
                    tracing::warn!("no health sample: {reason}");
                }
                sampling_failed = true;
                previous = None;
                continue;
            }
            Look::Down(reason) => {
                previous = None;
                let first = shared
                    .with_status(|s| s.consumer_down.replace(reason.clone()).is_none())
                    .unwrap_or(true);
                if first {
                    tracing::warn!("the consumer is down: {reason}");
                }
                report_crash(&shared, &reason, &mut crashes_reported);
                continue;
            }
        }
        let active: Vec<(UnitName, VersionHash)> = shared
            .with_status(|s| {
                s.units
                    .iter()
                    .filter_map(|(unit, st)| st.active.map(|h| (unit.clone(), h)))
                    .collect()
            })
            .unwrap_or_default();
        for (unit, version) in active {
            shared.reports.push(Report::Health {
                unit,
                version,
                sample,
            });
        }
    }
}

/// Reports `crashed` for each unit whose active version is on trial, once per version and
/// outage (`reported`, bounded by the units the node runs).
fn report_crash(shared: &Shared, reason: &str, reported: &mut BTreeSet<(UnitName, VersionHash)>) {
    let on_trial: Vec<(UnitName, VersionHash)> = shared
        .with_status(|s| {
            s.units
                .iter()
                .filter(|(_, st)| st.on_trial())
                .filter_map(|(unit, st)| st.active.map(|h| (unit.clone(), h)))
                .collect()
        })
        .unwrap_or_default();
    for (unit, version) in on_trial {
        if reported.insert((unit.clone(), version)) {
            shared.reports.push(Report::Crashed {
                unit,
                version,
                reason: cut_reason(&format!("consumer down: {reason}")),
            });
        }
    }
}

async fn look(
    http: &reqwest::Client,
    metrics: Option<&ConsumerMetrics>,
    liveness: &ConsumerLiveness,
    timeout_ms: u64,
) -> Look {
    if let Some(path) = &liveness.pid_file
        && let Err(reason) = process_alive(path)
    {
        return Look::Down(reason);
    }
    if let Some(unit) = &liveness.systemd_unit
        && let Err(reason) = systemd_active(unit).await
    {
        return Look::Down(reason);
    }
    let Some(metrics) = metrics else {
        return Look::Up(None);
    };
    match scrape_page(http, &metrics.url, timeout_ms).await {
        Ok(page) => Look::Up(Some(page)),
        Err(Scrape::Refused(reason)) => Look::Down(reason),
        Err(Scrape::Failed(reason)) => Look::NoSample(reason),
    }
}

/// Whether the process named in `pid_file` runs (Linux: `/proc/<pid>` exists).
fn process_alive(pid_file: &Path) -> Result<(), String> {
    let shown = pid_file.display();
    let size = std::fs::metadata(pid_file)
        .map_err(|e| format!("pid file {shown}: {e}"))?
        .len();
    if size > PID_FILE_MAX_BYTES {
        return Err(format!(
            "pid file {shown} is {size} bytes; expected a process id"
        ));
    }
    let text = std::fs::read_to_string(pid_file).map_err(|e| format!("pid file {shown}: {e}"))?;
    let pid: u32 = text.trim().parse().map_err(|_| {
        format!(
            "pid file {shown} holds {:?}; expected a process id",
            text.trim()
        )
    })?;
    if Path::new("/proc").join(pid.to_string()).exists() {
        Ok(())
    } else {
        Err(format!("process {pid} (pid file {shown}) is gone"))
    }
}

/// Whether `systemctl is-active --quiet UNIT` says the unit is active.
async fn systemd_active(unit: &str) -> Result<(), String> {
    let run = tokio::process::Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(Duration::from_millis(SYSTEMD_CHECK_TIMEOUT_MS), run).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("systemd unit {unit} is not active ({status})")),
        Ok(Err(error)) => Err(format!("systemctl is-active {unit}: {error}")),
        Err(_) => Err(format!(
            "systemctl is-active {unit} took longer than {SYSTEMD_CHECK_TIMEOUT_MS} ms"
        )),
    }
}

/// Why a scrape failed.
enum Scrape {
    /// Nothing listens (connection refused or reset): the consumer is down.
    Refused(String),
    /// Anything else: no sample, no verdict.
    Failed(String),
}

async fn scrape_page(http: &reqwest::Client, url: &str, timeout_ms: u64) -> Result<String, Scrape> {
    let mut response = http
        .get(url)
        .timeout(Duration::from_millis(timeout_ms))
        .send()
        .await
        .map_err(|e| {
            let reason = format!("metrics GET {url}: {e}");
            if e.is_connect() {
                Scrape::Refused(reason)
            } else {
                Scrape::Failed(reason)
            }
        })?;
    if !response.status().is_success() {
        return Err(Scrape::Failed(format!(
            "metrics GET {url} answered {}",
            response.status()
        )));
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len().saturating_add(chunk.len()) > scrape::MAX_PAGE_BYTES {
                    return Err(Scrape::Failed(format!(
                        "metrics GET {url}: the page is larger than {} bytes",
                        scrape::MAX_PAGE_BYTES
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Scrape::Failed(format!(
                    "metrics GET {url}: {}",
                    crate::control::with_causes(&e)
                )));
            }
        }
    }
    String::from_utf8(body).map_err(|_| Scrape::Failed(format!("metrics GET {url}: not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_tells_whether_the_consumer_runs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("consumer.pid");
        assert!(process_alive(&file).unwrap_err().contains("pid file"));
        std::fs::write(&file, format!("{}\n", std::process::id())).unwrap();
        process_alive(&file).unwrap();
        std::fs::write(&file, "4194304999").unwrap();
        assert!(process_alive(&file).unwrap_err().contains("is gone"));
        std::fs::write(&file, "not a pid").unwrap();
        assert!(
            process_alive(&file)
                .unwrap_err()
                .contains("expected a process id")
        );
    }
}
