//! The post-apply health check: proof that the new configuration is live, not one lucky GET.
//!
//! A reload command often returns before the consumer runs the new configuration
//! (`nginx -s reload` only signals the master; new workers start a moment later), so a single
//! request right after it may still reach the old workers. The check therefore:
//!
//! 1. runs the optional **readiness probe** (`ready`, a local command with no stdin and
//!    `{path}` = the unit's `current`), again every `interval_ms` until it exits 0;
//! 2. then asks the URL every `interval_ms` and passes once it answered the expected status
//!    **continuously for `window_ms`**: any failed probe inside the window starts it again;
//! 3. fails when `deadline_ms` (counted from the start, readiness included) passes without a
//!    full window, saying how many probes passed and failed and what the last one saw.
//!
//! Every wait is bounded: each probe by `timeout_ms` and the time left, the whole check by
//! `deadline_ms` (at most [`DEADLINE_MS_MAX`]) and at most [`MAX_PROBES`] probes.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::HealthCheckConfig;
use crate::command::Role;

/// How long the check must pass without a failure, by default.
pub const WINDOW_MS_DEFAULT: u64 = 3_000;
/// Time between two probes, by default.
pub const INTERVAL_MS_DEFAULT: u64 = 250;
/// How long the whole check may take before it fails, by default.
pub const DEADLINE_MS_DEFAULT: u64 = 30_000;
/// Shortest time between two probes.
pub const INTERVAL_MS_MIN: u64 = 10;
/// Longest deadline a check may be given.
pub const DEADLINE_MS_MAX: u64 = 600_000;
/// Longest time one probe may take.
pub const PROBE_TIMEOUT_MS_MAX: u64 = 60_000;
/// Most probes (readiness tries included) of one check.
pub const MAX_PROBES: u64 = 10_000;
/// Longest health check URL, in bytes.
pub const URL_MAX_BYTES: usize = 2048;

pub(crate) fn default_window_ms() -> u64 {
    WINDOW_MS_DEFAULT
}

pub(crate) fn default_interval_ms() -> u64 {
    INTERVAL_MS_DEFAULT
}

pub(crate) fn default_deadline_ms() -> u64 {
    DEADLINE_MS_DEFAULT
}

/// The timing of a check: what a plan-declared check (which sends only its path, status and
/// probe timeout) gets from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthWindow {
    pub window_ms: u64,
    pub interval_ms: u64,
    pub deadline_ms: u64,
}

impl Default for HealthWindow {
    fn default() -> Self {
        Self {
            window_ms: WINDOW_MS_DEFAULT,
            interval_ms: INTERVAL_MS_DEFAULT,
            deadline_ms: DEADLINE_MS_DEFAULT,
        }
    }
}

impl HealthWindow {
    /// Every problem, each naming its field under `prefix` (e.g. `features.health_check`).
    pub fn check(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.interval_ms < INTERVAL_MS_MIN || self.interval_ms > DEADLINE_MS_MAX {
            problems.push(format!(
                "{prefix}.interval_ms is {}; expected {INTERVAL_MS_MIN} to {DEADLINE_MS_MAX}",
                self.interval_ms
            ));
        }
        if self.deadline_ms == 0 || self.deadline_ms > DEADLINE_MS_MAX {
            problems.push(format!(
                "{prefix}.deadline_ms is {}; expected 1 to {DEADLINE_MS_MAX}",
                self.deadline_ms
            ));
        }
        if self.window_ms >= self.deadline_ms {
            problems.push(format!(
                "{prefix}.deadline_ms {} must be greater than {prefix}.window_ms {}: the window must fit before the deadline",
                self.deadline_ms, self.window_ms
            ));
        }
        if self.deadline_ms / self.interval_ms.max(1) > MAX_PROBES {
            problems.push(format!(
                "{prefix}.deadline_ms {} / interval_ms {} is more than {MAX_PROBES} probes; lengthen the interval",
                self.deadline_ms, self.interval_ms
            ));
        }
        problems
    }
}

impl HealthCheckConfig {
    /// A check of `url` (status 200, the default timing).
    pub fn new(url: String) -> Self {
        let window = HealthWindow::default();
        Self {
            url,
            expect_status: crate::default_status(),
            timeout_ms: crate::default_check_timeout_ms(),
            window_ms: window.window_ms,
            interval_ms: window.interval_ms,
            deadline_ms: window.deadline_ms,
            ready: None,
        }
    }

    /// The same check with `window`'s timing.
    #[must_use]
    pub fn with_window(mut self, window: &HealthWindow) -> Self {
        self.window_ms = window.window_ms;
        self.interval_ms = window.interval_ms;
        self.deadline_ms = window.deadline_ms;
        self
    }

    pub fn window(&self) -> HealthWindow {
        HealthWindow {
            window_ms: self.window_ms,
            interval_ms: self.interval_ms,
            deadline_ms: self.deadline_ms,
        }
    }

    /// Every problem, each naming its field under `prefix` (e.g. `features.health_check`).
    pub fn check(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            problems.push(format!(
                "{prefix}.url {:?} is not an http:// or https:// URL",
                self.url
            ));
        }
        if self.url.len() > URL_MAX_BYTES {
            problems.push(format!(
                "{prefix}.url is {} bytes; the limit is {URL_MAX_BYTES}",
                self.url.len()
            ));
        }
        if !(100..=599).contains(&self.expect_status) {
            problems.push(format!(
                "{prefix}.expect_status is {}; expected an HTTP status, 100 to 599",
                self.expect_status
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > PROBE_TIMEOUT_MS_MAX {
            problems.push(format!(
                "{prefix}.timeout_ms is {}; expected 1 to {PROBE_TIMEOUT_MS_MAX}",
                self.timeout_ms
            ));
        }
        problems.extend(self.window().check(prefix));
        if let Some(ready) = &self.ready
            && let Err(found) = ready.check(Role::Probe)
        {
            problems.extend(found.into_iter().map(|p| format!("{prefix}.ready: {p}")));
        }
        problems
    }
}

/// What a passed check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub probes_passed: u64,
    pub probes_failed: u64,
    pub ready_tries: u64,
}

/// Why one probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// The consumer answered, with another status than the check expects.
    Answered { status: u16, expected: u16 },
    /// No answer: the connection was refused or reset, or the probe timed out (the text says
    /// which, with its causes).
    NoAnswer(String),
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Answered { status, expected } => {
                write!(f, "answered {status}; expected {expected}")
            }
            Self::NoAnswer(reason) => f.write_str(reason),
        }
    }
}

/// Runs `check` against the live consumer after a reload; `current` is the unit's active
/// file (the readiness probe's `{path}`). `Err` holds the reason reported.
pub async fn run(check: &HealthCheckConfig, current: &Path) -> Result<Passed, String> {
    let client = reqwest::Client::new();
    let url = check.url.clone();
    let expect = check.expect_status;
    let probe = |timeout: Duration| {
        let request = client.get(&url).timeout(timeout);
        let url = url.clone();
        async move {
            let response = request.send().await.map_err(|e| {
                ProbeFailure::NoAnswer(format!("GET {url}: {}", crate::control::with_causes(&e)))
            })?;
            let status = response.status().as_u16();
            if status == expect {
                Ok(())
            } else {
                Err(ProbeFailure::Answered {
                    status,
                    expected: expect,
                })
            }
        }
    };
    let command = check.ready.clone();
    let ready = || {
        let command = command.clone();
        async move {
            match &command {
                Some(command) => command.run_reload(current).await,
                None => Ok(()),
            }
        }
    };
    run_with(check, probe, ready).await
}

/// [`run`] with the probe and the run of `check.ready` given (tests drive it in virtual time).
pub async fn run_with<P, PF, R, RF, E>(
    check: &HealthCheckConfig,
    mut probe: P,
    mut ready: R,
) -> Result<Passed, String>
where
    P: FnMut(Duration) -> PF,
    PF: Future<Output = Result<(), ProbeFailure>>,
    R: FnMut() -> RF,
    RF: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let deadline = started + Duration::from_millis(check.deadline_ms);
    let interval = Duration::from_millis(check.interval_ms.max(INTERVAL_MS_MIN));
    let window = Duration::from_millis(check.window_ms);
    let mut tries = 0u64;
    // 1. Readiness: the reload's own proof that the new configuration is loaded.
    if let Some(command) = &check.ready {
        loop {
            tries = tries.saturating_add(1);
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match tokio::time::timeout(left, ready()).await {
                Ok(Ok(())) => break,
                Ok(Err(error)) => error.to_string(),
                Err(_) => "still running at the deadline".to_owned(),
            };
            if Instant::now() + interval >= deadline || tries >= MAX_PROBES {
                return Err(format!(
                    "health check: readiness probe {:?} did not pass within deadline_ms {} ({tries} tries); last: {last}",
                    command.program, check.deadline_ms
                ));
            }
            tokio::time::sleep(interval).await;
        }
    }
    // 2. The window: consecutive successes for `window_ms`.
    let (mut passed, mut failed, mut unanswered) = (0u64, 0u64, 0u64);
    let mut window_start: Option<Instant> = None;
    let mut last = "no probe ran".to_owned();
    // The latest wrong status the consumer answered: what the check caught, even when the
    // very last probe got no answer at all.
    let mut last_answer: Option<ProbeFailure> = None;
    loop {
        let probe_started = Instant::now();
        let left = deadline.saturating_duration_since(probe_started);
        let timeout = Duration::from_millis(check.timeout_ms)
            .min(left)
            .max(Duration::from_millis(1));
        match probe(timeout).await {
            Ok(()) => {
                passed = passed.saturating_add(1);
                let start = *window_start.get_or_insert(probe_started);
                if Instant::now().saturating_duration_since(start) >= window {
                    return Ok(Passed {
                        probes_passed: passed,
                        probes_failed: failed,
                        ready_tries: tries,
                    });
                }
            }
            Err(failure) => {
                failed = failed.saturating_add(1);
                last = failure.to_string();
                match failure {
                    ProbeFailure::Answered { .. } => last_answer = Some(failure),
                    ProbeFailure::NoAnswer(_) => unanswered = unanswered.saturating_add(1),
                }
                window_start = None;
            }
        }
        let probes = passed.saturating_add(failed).saturating_add(tries);
        if Instant::now() + interval >= deadline || probes >= MAX_PROBES {
            let mut last = if window_start.is_some() {
                format!("the window was still open (last failure: {last})")
            } else {
                format!("last: {last}")
            };
            if let Some(answer) = &last_answer
                && !last.contains(&answer.to_string())
            {
                last.push_str(&format!("; last answer: {answer}"));
            }
            let unanswered = if unanswered > 0 {
                format!(" ({unanswered} unanswered)")
            } else {
                String::new()
            };
            return Err(format!(
                "health check GET {}: no {} ms of continuous success within deadline_ms {}: {passed} probes passed, {failed} failed{unanswered}; {last}",
                check.url, check.window_ms, check.deadline_ms
            ));
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::command::LocalCommand;

    fn config(window_ms: u64, interval_ms: u64, deadline_ms: u64) -> HealthCheckConfig {
        HealthCheckConfig {
            window_ms,
            interval_ms,
            deadline_ms,
            ..HealthCheckConfig::new("http://127.0.0.1:1/health".to_owned())
        }
    }

    /// A probe that answers from a timeline: failing at the given virtual times.
    fn timeline(
        started: Instant,
        failing: impl Fn(u64) -> bool,
    ) -> impl FnMut(Duration) -> std::future::Ready<Result<(), ProbeFailure>> {
        move |_| {
            let at_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
            std::future::ready(if failing(at_ms) {
                Err(ProbeFailure::Answered {
                    status: 500,
                    expected: 200,
                })
            } else {
                Ok(())
            })
        }
    }

    fn no_ready() -> std::future::Ready<Result<(), String>> {
        std::future::ready(Ok(()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_consumer_passes_after_one_full_window() {
        let started = Instant::now();
        let passed = run_with(
            &config(3_000, 250, 30_000),
            timeline(started, |_| false),
            no_ready,
        )
        .await
        .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(3_000));
        assert_eq!(passed.probes_passed, 13);
        assert_eq!(passed.probes_failed, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_inside_the_window_starts_it_again() {
        let started = Instant::now();
        // The old workers answer well for 1 s, the new ones fail once at 1 s, then all is well.
        let passed = run_with(
            &config(3_000, 250, 30_000),
            timeline(started, |at| at == 1_000),
            no_ready,
        )
        .await
        .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(4_250));
        assert_eq!(passed.probes_failed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_config_that_breaks_health_after_the_reload_fails_at_the_deadline() {
        let started = Instant::now();
        // The first probes reach old workers (healthy), then every probe fails: the window
        // never completes and the deadline ends the check, with the counts and last status.
        let reason = run_with(
            &config(3_000, 250, 10_000),
            timeline(started, |at| at >= 500),
            no_ready,
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() <= Duration::from_millis(10_000));
        assert!(
            reason.contains("2 probes passed, 38 failed; last: answered 500; expected 200"),
            "{reason}"
        );
        assert!(reason.contains("within deadline_ms 10000"), "{reason}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_wrong_answer_is_said_when_the_last_probes_got_none() {
        let started = Instant::now();
        // The consumer answers 503 for a second, then stops answering at all.
        let probe = move |_: Duration| {
            let at_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
            std::future::ready(if at_ms < 1_000 {
                Err(ProbeFailure::Answered {
                    status: 503,
                    expected: 200,
                })
            } else {
                Err(ProbeFailure::NoAnswer(
                    "GET /health: connection refused".to_owned(),
                ))
            })
        };
        let reason = run_with(&config(1_000, 250, 3_000), probe, no_ready)
            .await
            .unwrap_err();
        assert!(
            reason.contains(
                "0 probes passed, 12 failed (8 unanswered); last: GET /health: connection \
                 refused; last answer: answered 503; expected 200"
            ),
            "{reason}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_is_retried_until_it_passes_before_the_window() {
        let started = Instant::now();
        let tries = Mutex::new(0u32);
        let ready = || {
            let mut tries = tries.lock().unwrap();
            *tries += 1;
            std::future::ready(if *tries < 4 {
                Err("workers still old".to_owned())
            } else {
                Ok(())
            })
        };
        let mut check = config(1_000, 100, 5_000);
        check.ready = Some(LocalCommand {
            program: "probe".into(),
            args: vec![],
            timeout_ms: 1_000,
        });
        let passed = run_with(&check, timeline(started, |_| false), ready)
            .await
            .unwrap();
        assert_eq!(passed.ready_tries, 4);
        assert_eq!(started.elapsed(), Duration::from_millis(1_300));
        // Never ready: fails at the deadline, naming the probe and its last error.
        let never = || std::future::ready(Err("workers still old".to_owned()));
        let reason = run_with(&check, timeline(started, |_| false), never)
            .await
            .unwrap_err();
        assert!(
            reason.contains("readiness probe \"probe\" did not pass within deadline_ms 5000"),
            "{reason}"
        );
        assert!(reason.ends_with("last: workers still old"), "{reason}");
    }

    #[tokio::test]
    async fn a_real_readiness_command_gets_current_as_path() {
        let scratch = tempfile::tempdir().unwrap();
        let current = scratch.path().join("current");
        std::fs::write(&current, b"x").unwrap();
        let mut check = config(0, 10, 2_000);
        check.ready = Some(LocalCommand {
            program: "test".into(),
            args: vec!["-s".into(), "{path}".into()],
            timeout_ms: 1_000,
        });
        let passed = run(&check, &current).await;
        // The probe's URL answers nothing: readiness passed, then the window failed.
        let reason = passed.unwrap_err();
        assert!(reason.contains("0 probes passed"), "{reason}");
        let ok = |_: Duration| std::future::ready(Ok(()));
        let command = check.ready.clone().unwrap();
        let ready = || command.run_reload(&current);
        let passed = run_with(&check, ok, ready).await.unwrap();
        assert_eq!(passed.ready_tries, 1);
    }

    #[test]
    fn fields_are_checked_by_name() {
        assert!(
            HealthCheckConfig::new("http://127.0.0.1/h".into())
                .check("u.health_check")
                .is_empty()
        );
        let problems = config(3_000, 250, 3_000).check("u.health_check");
        assert!(
            problems[0].contains(
                "u.health_check.deadline_ms 3000 must be greater than u.health_check.window_ms 3000"
            ),
            "{problems:?}"
        );
        let problems = config(0, 1, 700_000).check("u.health_check");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("u.health_check.interval_ms is 1"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("u.health_check.deadline_ms is 700000"))
        );
        let mut bad = HealthCheckConfig::new("ftp://x".into());
        bad.expect_status = 42;
        bad.timeout_ms = 0;
        bad.ready = Some(LocalCommand {
            program: String::new(),
            args: vec![],
            timeout_ms: 10,
        });
        let problems = bad.check("u.health_check");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[3].starts_with("u.health_check.ready: program is empty"));
    }
}
