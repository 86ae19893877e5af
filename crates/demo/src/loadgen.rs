//! A bounded load generator for local consumers: a fixed rate, at most
//! [`CONCURRENCY_MAX`] requests in flight, at most [`REQUESTS_MAX`] requests in all, and it
//! stops by itself after its duration (plus at most one request time limit).
//!
//! Requests go to the targets in turn. Only loopback targets are accepted: this is a tool for
//! a demo on one machine, not for loading someone else's servers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Highest request rate, per second.
pub const RPS_MAX: u32 = 50_000;
/// Longest run, in milliseconds (one hour).
pub const DURATION_MAX_MS: u64 = 3_600_000;
/// Most requests in flight at once.
pub const CONCURRENCY_MAX: usize = 1_024;
/// Most requests in one run.
pub const REQUESTS_MAX: u64 = 2_000_000;
/// Most targets.
pub const TARGETS_MAX: usize = 256;
/// Longest time limit of one request, in milliseconds.
pub const TIMEOUT_MAX_MS: u64 = 60_000;

/// What to load, how hard, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadConfig {
    /// URLs on loopback, e.g. `http://127.0.0.1:8080/`.
    pub targets: Vec<String>,
    pub rps: u32,
    pub duration_ms: u64,
    pub concurrency: usize,
    pub timeout_ms: u64,
}

impl LoadConfig {
    pub fn new(targets: Vec<String>, rps: u32, duration_ms: u64) -> Self {
        Self {
            targets,
            rps,
            duration_ms,
            concurrency: 64,
            timeout_ms: 2_000,
        }
    }

    /// How many requests the run will send if nothing holds it back.
    pub fn requests_planned(&self) -> u64 {
        let planned = u64::from(self.rps).saturating_mul(self.duration_ms) / 1_000;
        planned.clamp(1, REQUESTS_MAX)
    }

    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |field: &'static str, reason: String| Err(LoadError::Config { field, reason });
        if self.targets.is_empty() {
            return bad("target", "give at least one --target URL".to_owned());
        }
        if self.targets.len() > TARGETS_MAX {
            return bad(
                "target",
                format!("{} targets; the limit is {TARGETS_MAX}", self.targets.len()),
            );
        }
        for target in &self.targets {
            check_target(target)?;
        }
        if self.rps == 0 || self.rps > RPS_MAX {
            return bad("rps", format!("{}; expected 1..={RPS_MAX}", self.rps));
        }
        if self.duration_ms == 0 || self.duration_ms > DURATION_MAX_MS {
            return bad(
                "duration",
                format!("{} ms; expected 1..={DURATION_MAX_MS} ms", self.duration_ms),
            );
        }
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            return bad(
                "concurrency",
                format!("{}; expected 1..={CONCURRENCY_MAX}", self.concurrency),
            );
        }
        if self.timeout_ms == 0 || self.timeout_ms > TIMEOUT_MAX_MS {
            return bad(
                "timeout-ms",
                format!("{}; expected 1..={TIMEOUT_MAX_MS}", self.timeout_ms),
            );
        }
        Ok(())
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loadgen: --{field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("loadgen: --target {target:?}: {reason}")]
    Target { target: String, reason: String },
    #[error("loadgen: cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

fn check_target(target: &str) -> Result<(), LoadError> {
    let bad = |reason: &str| LoadError::Target {
        target: target.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(target).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if url.scheme() != "http" {
        return Err(bad("only http:// targets are supported"));
    }
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(bad(
            "only loopback targets (127.0.0.0/8, ::1, localhost) are accepted",
        ))
    }
}

/// What one target answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub requests_sent: u64,
    /// Responses by HTTP status (as a string key, for JSON).
    pub responses_by_status: BTreeMap<String, u64>,
    /// Requests that got no response (refused, reset, timed out).
    pub errors: u64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub rps: u32,
    pub duration_ms: u64,
    pub elapsed_ms: u64,
    pub requests_planned: u64,
    pub requests_sent: u64,
    pub responses_by_status: BTreeMap<String, u64>,
    pub errors: u64,
    /// Latency of the requests that got a response, nearest rank; `None` without any.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub targets: Vec<TargetReport>,
}

impl LoadReport {
    /// Responses with this status, over all targets.
    pub fn responses_with(&self, status: u16) -> u64 {
        self.responses_by_status
            .get(&status.to_string())
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Tally {
    targets: Vec<TargetReport>,
    latencies_us: Vec<u64>,
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// Runs the load and reports what happened.
pub async fn run(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    config.validate()?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(config.timeout_ms))
        .pool_max_idle_per_host(config.concurrency)
        .build()
        .map_err(LoadError::Client)?;
    let planned = config.requests_planned();
    let tally = Arc::new(Mutex::new(Tally {
        targets: config
            .targets
            .iter()
            .map(|target| TargetReport {
                target: target.clone(),
                ..TargetReport::default()
            })
            .collect(),
        latencies_us: Vec::with_capacity(usize::try_from(planned).unwrap_or(0).min(1 << 20)),
    }));
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let period = Duration::from_secs(1) / config.rps;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(config.duration_ms);
    let mut sent = 0u64;
    for index in 0..planned {
        let due = started + period.saturating_mul(u32::try_from(index).unwrap_or(u32::MAX));
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due).await;
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit,
            () = tokio::time::sleep_until(deadline) => break,
        };
        let Ok(permit) = permit else { break };
        let target_index = usize::try_from(index).unwrap_or(0) % config.targets.len();
        let Some(url) = config.targets.get(target_index).cloned() else {
            break;
        };
        sent += 1;
        let client = client.clone();
        let tally = Arc::clone(&tally);
        tokio::spawn(async move {
            let request_started = Instant::now();
            let answered = client.get(&url).send().await;
            let outcome = match answered {
                // Read the body so the connection can be reused.
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    Some((status, request_started.elapsed()))
                }
                Err(_) => None,
            };
            if let Ok(mut tally) = tally.lock() {
                let Tally {
                    targets,
                    latencies_us,
                } = &mut *tally;
                if let Some(report) = targets.get_mut(target_index) {
                    report.requests_sent += 1;
                    match outcome {
                        Some((status, elapsed)) => {
                            *report
                                .responses_by_status
                                .entry(status.to_string())
                                .or_insert(0) += 1;
                            latencies_us
                                .push(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
                        }
                        None => report.errors += 1,
                    }
                }
            }
            drop(permit);
        });
    }
    // Every request in flight ends within its time limit; wait for all of them.
    let all = u32::try_from(config.concurrency).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut tally = match tally.lock() {
        Ok(mut tally) => std::mem::take(&mut *tally),
        Err(_) => Tally::default(),
    };
    tally.latencies_us.sort_unstable();
    let mut responses_by_status = BTreeMap::new();
    for target in &tally.targets {
        for (status, count) in &target.responses_by_status {
            *responses_by_status.entry(status.clone()).or_insert(0) += count;
        }
    }
    let to_ms = |us: u64| us as f64 / 1_000.0;
    Ok(LoadReport {
        rps: config.rps,
        duration_ms: config.duration_ms,
        elapsed_ms,
        requests_planned: planned,
        requests_sent: sent,
        responses_by_status,
        errors: tally.targets.iter().map(|t| t.errors).sum(),
        latency_p50_ms: quantile(&tally.latencies_us, 0.50).map(to_ms),
        latency_p99_ms: quantile(&tally.latencies_us, 0.99).map(to_ms),
        targets: tally.targets,
    })
}

/// Parses a duration such as `30s`, `500ms`, `2m` or `1h` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number then ms, s, m or h (e.g. 30s)"))?;
    let factor = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; use ms, s, m or h"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?}: too long"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("7"), Ok(7_000));
        assert!(parse_duration_ms("3 weeks").is_err());
        assert!(parse_duration_ms("s").is_err());
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        let config = |target: &str| LoadConfig::new(vec![target.to_owned()], 10, 1_000);
        assert!(config("http://127.0.0.1:8080/").validate().is_ok());
        assert!(config("http://localhost:1/").validate().is_ok());
        assert!(config("http://[::1]:1/").validate().is_ok());
        assert!(config("http://10.0.0.1:80/").validate().is_err());
        assert!(config("http://example.com/").validate().is_err());
        assert!(config("https://127.0.0.1/").validate().is_err());
        assert!(LoadConfig::new(vec![], 10, 1_000).validate().is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let mut config = LoadConfig::new(vec!["http://127.0.0.1:1/".into()], RPS_MAX + 1, 1_000);
        assert!(config.validate().is_err());
        config.rps = RPS_MAX;
        config.duration_ms = DURATION_MAX_MS;
        assert!(config.validate().is_ok());
        assert_eq!(config.requests_planned(), REQUESTS_MAX);
        config.concurrency = CONCURRENCY_MAX + 1;
        assert!(config.validate().is_err());
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.99), Some(99));
        assert_eq!(quantile(&values, 1.0), Some(100));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7], 0.0), Some(7));
    }

    #[tokio::test]
    async fn a_refused_target_counts_errors_and_stops_by_itself() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let mut config = LoadConfig::new(vec![format!("http://{address}/")], 50, 200);
        config.timeout_ms = 500;
        let report = run(&config).await.unwrap();
        assert_eq!(report.requests_planned, 10);
        assert_eq!(report.requests_sent, report.errors);
        assert!(report.requests_sent >= 1 && report.requests_sent <= 10);
        assert!(report.responses_by_status.is_empty());
        assert_eq!(report.latency_p50_ms, None);
    }

    proptest! {
        #[test]
        fn quantiles_are_members_and_ordered(mut values in proptest::collection::vec(0u64..1_000_000, 1..200)) {
            values.sort_unstable();
            let p50 = quantile(&values, 0.5).unwrap();
            let p99 = quantile(&values, 0.99).unwrap();
            prop_assert!(values.contains(&p50) && values.contains(&p99));
            prop_assert!(p50 <= p99);
        }
    }
}
