//! The consumer's own metrics, in Prometheus text format:
//! `http_requests_total`, `http_responses_total{status}`, `http_errors_total` (5xx) and the
//! histogram `http_request_duration_seconds`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds (`+Inf` is added).
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Most distinct status codes counted; HTTP has fewer (100..=999).
const STATUSES_MAX: usize = 900;

/// Counters of the traffic a consumer served (`GET /`).
#[derive(Debug, Default)]
pub struct DemoMetrics {
    requests_total: AtomicU64,
    errors_total: AtomicU64,
    responses_by_status: Mutex<BTreeMap<u16, u64>>,
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    bucket_counts: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    duration_sum_us: AtomicU64,
}

impl DemoMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one request that was answered with `status` after `elapsed`.
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut by_status) = self.responses_by_status.lock()
            && (by_status.len() < STATUSES_MAX || by_status.contains_key(&status))
        {
            *by_status.entry(status).or_insert(0) += 1;
        }
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        if let Some(count) = self.bucket_counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors_total.load(Ordering::Relaxed)
    }

    /// Responses counted for each status.
    pub fn responses_by_status(&self) -> BTreeMap<u16, u64> {
        self.responses_by_status
            .lock()
            .map(|by_status| by_status.clone())
            .unwrap_or_default()
    }

    /// Prometheus text exposition of these numbers.
    pub fn prometheus_text(&self) -> String {
        let mut text = String::new();
        let requests = self.requests_total();
        let _ = writeln!(text, "# HELP http_requests_total Requests served on /.");
        let _ = writeln!(text, "# TYPE http_requests_total counter");
        let _ = writeln!(text, "http_requests_total {requests}");
        let _ = writeln!(
            text,
            "# HELP http_responses_total Responses by HTTP status."
        );
        let _ = writeln!(text, "# TYPE http_responses_total counter");
        for (status, count) in self.responses_by_status() {
            let _ = writeln!(text, "http_responses_total{{status=\"{status}\"}} {count}");
        }
        let _ = writeln!(
            text,
            "# HELP http_errors_total Responses with a 5xx status."
        );
        let _ = writeln!(text, "# TYPE http_errors_total counter");
        let _ = writeln!(text, "http_errors_total {}", self.errors_total());
        let _ = writeln!(
            text,
            "# HELP http_request_duration_seconds Time to answer a request on /."
        );
        let _ = writeln!(text, "# TYPE http_request_duration_seconds histogram");
        let mut cumulative = 0u64;
        for (at, count) in self.bucket_counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(count.load(Ordering::Relaxed));
            let bound = LATENCY_BUCKETS_SECONDS
                .get(at)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(
                text,
                "http_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let sum_seconds = self.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(text, "http_request_duration_seconds_sum {sum_seconds}");
        let _ = writeln!(text, "http_request_duration_seconds_count {cumulative}");
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counts_requests_statuses_errors_and_latency() {
        let metrics = DemoMetrics::new();
        metrics.record(200, Duration::from_micros(300));
        metrics.record(200, Duration::from_millis(20));
        metrics.record(500, Duration::from_secs(10));
        assert_eq!(metrics.requests_total(), 3);
        assert_eq!(metrics.errors_total(), 1);
        assert_eq!(
            metrics.responses_by_status(),
            BTreeMap::from([(200, 2), (500, 1)])
        );
        let text = metrics.prometheus_text();
        for line in [
            "http_requests_total 3",
            "http_responses_total{status=\"200\"} 2",
            "http_responses_total{status=\"500\"} 1",
            "http_errors_total 1",
            "http_request_duration_seconds_bucket{le=\"0.0005\"} 1",
            "http_request_duration_seconds_bucket{le=\"0.025\"} 2",
            "http_request_duration_seconds_bucket{le=\"2.5\"} 2",
            "http_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "http_request_duration_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
