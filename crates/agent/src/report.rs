//! The bounded queue of reports waiting for the control plane, sent in batches.
//!
//! When the queue is full, the oldest health sample is dropped first (a later one carries
//! fresher news), then the oldest report of any kind; drops are counted.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::control::Report;

/// Most reports waiting.
pub const MAX_QUEUED: usize = 1024;
/// Most reports sent in one batch.
pub const BATCH_MAX: usize = 64;

#[derive(Debug, Default)]
pub struct ReportQueue {
    queue: Mutex<VecDeque<Report>>,
    ready: Notify,
    dropped: AtomicU64,
}

impl ReportQueue {
    pub fn push(&self, report: Report) {
        if let Ok(mut queue) = self.queue.lock() {
            if queue.len() >= MAX_QUEUED {
                let health = queue
                    .iter()
                    .position(|r| matches!(r, Report::Health { .. }));
                match health {
                    Some(index) => drop(queue.remove(index)),
                    None => drop(queue.pop_front()),
                }
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(report);
        }
        self.ready.notify_one();
    }

    /// Takes up to [`BATCH_MAX`] reports, oldest first.
    pub fn take_batch(&self) -> Vec<Report> {
        match self.queue.lock() {
            Ok(mut queue) => {
                let count = queue.len().min(BATCH_MAX);
                queue.drain(..count).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Puts back reports that could not be sent, ahead of newer ones (within the limit).
    pub fn put_back(&self, reports: Vec<Report>) {
        if let Ok(mut queue) = self.queue.lock() {
            for report in reports.into_iter().rev() {
                if queue.len() >= MAX_QUEUED {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                queue.push_front(report);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until a report is pushed (or returns at once if one was pushed since the last
    /// wait).
    pub async fn wait(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsmall_core::domain::{UnitName, VersionHash};
    use failsmall_core::health::HealthSample;

    fn health(i: u64) -> Report {
        Report::Health {
            unit: UnitName::new("u").unwrap(),
            version: VersionHash::of(b"v"),
            sample: HealthSample {
                requests: i,
                ..Default::default()
            },
        }
    }

    fn nack(i: u8) -> Report {
        Report::Rejected {
            unit: UnitName::new("u").unwrap(),
            version: VersionHash::of(&[i]),
            reason: "bad".into(),
        }
    }

    #[test]
    fn a_full_queue_drops_health_before_verdicts() {
        let queue = ReportQueue::default();
        queue.push(health(0));
        for i in 0..(MAX_QUEUED - 1) {
            queue.push(nack((i % 200) as u8));
        }
        assert_eq!(queue.len(), MAX_QUEUED);
        queue.push(nack(250));
        assert_eq!(queue.len(), MAX_QUEUED);
        assert_eq!(queue.dropped(), 1);
        let batch = queue.take_batch();
        assert_eq!(batch.len(), BATCH_MAX);
        assert!(batch.iter().all(|r| matches!(r, Report::Rejected { .. })));
        queue.put_back(batch.clone());
        assert_eq!(queue.take_batch(), batch, "put back keeps the order");
    }
}
