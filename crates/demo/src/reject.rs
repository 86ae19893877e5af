//! Reporting the versions a safe consumer rejected, by HTTP POST to a configurable URL.
//!
//! The URL is a template: `{unit}` is replaced by the unit's name. With `{unit}` in the URL the
//! body is the agent local API's shape, `{"version": HASH, "reason": TEXT}`
//! (e.g. `http://127.0.0.1:7071/v1/units/{unit}/rejections`); without it the unit is in the
//! body: `{"unit": NAME, "version": HASH, "reason": TEXT}`.
//!
//! Reports go through a bounded queue to one sending task, so the thread that read the file
//! never waits on the network; a full queue drops the report (counted). The consumer keeps
//! serving its previous value whether or not a report arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use failsmall_client::RejectionReporter;
use failsmall_core::domain::{UnitName, VersionHash};
use serde_json::json;
use tokio::sync::mpsc;

/// Most reports waiting to be sent.
pub const REPORT_QUEUE_MAX: usize = 64;
/// Time limit of one report, in milliseconds.
pub const REPORT_TIMEOUT_MS: u64 = 2_000;
/// The placeholder replaced by the unit's name.
pub const UNIT_PLACEHOLDER: &str = "{unit}";

/// One rejected version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionReport {
    pub unit: String,
    pub version: String,
    pub reason: String,
}

/// How many reports were sent, failed, or dropped on a full queue.
#[derive(Debug, Default)]
pub struct ReportCounts {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

impl ReportCounts {
    pub fn prometheus_text(&self) -> String {
        let mut text = String::from("# TYPE demo_rejection_reports_total counter\n");
        for (outcome, count) in [
            ("sent", &self.sent),
            ("failed", &self.failed),
            ("dropped", &self.dropped),
        ] {
            text.push_str(&format!(
                "demo_rejection_reports_total{{outcome=\"{outcome}\"}} {}\n",
                count.load(Ordering::Relaxed)
            ));
        }
        text
    }
}

/// The [`RejectionReporter`] handed to `failsmall-client`: queues the report.
#[derive(Debug, Clone)]
pub struct QueuedReporter {
    queue: mpsc::Sender<RejectionReport>,
    counts: Arc<ReportCounts>,
}

impl RejectionReporter for QueuedReporter {
    fn rejected(&self, unit: &UnitName, version: &VersionHash, reason: &str) {
        eprintln!("demo-consumer: rejected unit {unit} version {version}: {reason}");
        let report = RejectionReport {
            unit: unit.to_string(),
            version: version.to_string(),
            reason: reason.to_owned(),
        };
        if self.queue.try_send(report).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The URL and body of a report sent to `url_template`.
pub fn request_for(url_template: &str, report: &RejectionReport) -> (String, serde_json::Value) {
    if url_template.contains(UNIT_PLACEHOLDER) {
        (
            url_template.replace(UNIT_PLACEHOLDER, &report.unit),
            json!({"version": report.version, "reason": report.reason}),
        )
    } else {
        (
            url_template.to_owned(),
            json!({"unit": report.unit, "version": report.version, "reason": report.reason}),
        )
    }
}

/// A reporter, and the task that sends what it queues (run it on the consumer's runtime).
pub fn reporter(
    url_template: String,
    counts: Arc<ReportCounts>,
) -> (QueuedReporter, impl Future<Output = ()> + Send + 'static) {
    let (queue, mut queued) = mpsc::channel::<RejectionReport>(REPORT_QUEUE_MAX);
    let sending_counts = Arc::clone(&counts);
    let sender = async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(REPORT_TIMEOUT_MS))
            .build();
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                eprintln!("demo-consumer: cannot build the HTTP client for reports: {error}");
                return;
            }
        };
        while let Some(report) = queued.recv().await {
            let (url, body) = request_for(&url_template, &report);
            let sent = client.post(&url).json(&body).send().await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    sending_counts.sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response) => {
                    eprintln!(
                        "demo-consumer: report to {url} answered {}",
                        response.status()
                    );
                    sending_counts.failed.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    eprintln!("demo-consumer: cannot report to {url}: {error}");
                    sending_counts.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    (QueuedReporter { queue, counts }, sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> RejectionReport {
        RejectionReport {
            unit: "bot-features".into(),
            version: "ab".into(),
            reason: "too many".into(),
        }
    }

    #[test]
    fn the_agent_shape_puts_the_unit_in_the_path() {
        let (url, body) = request_for(
            "http://127.0.0.1:7071/v1/units/{unit}/rejections",
            &report(),
        );
        assert_eq!(
            url,
            "http://127.0.0.1:7071/v1/units/bot-features/rejections"
        );
        assert_eq!(body, json!({"version": "ab", "reason": "too many"}));
    }

    #[test]
    fn a_plain_url_gets_the_unit_in_the_body() {
        let (url, body) = request_for("http://127.0.0.1:9/rejections", &report());
        assert_eq!(url, "http://127.0.0.1:9/rejections");
        assert_eq!(
            body,
            json!({"unit": "bot-features", "version": "ab", "reason": "too many"})
        );
    }
}
