//! Health samples that nodes report, and their aggregates that gates judge.

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in milliseconds. The last bucket is unbounded.
/// Prometheus histograms from consumers are re-bucketed onto these by the agent.
pub const LATENCY_BUCKET_BOUNDS_MS: [f64; 23] = [
    1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0,
    750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 10000.0,
];

/// The largest finite bound: observations in the unbounded bucket count as this much.
pub const LATENCY_LAST_FINITE_BOUND_MS: f64 = 10000.0;

/// Number of buckets: one per bound, plus the unbounded one.
pub const LATENCY_BUCKETS: usize = LATENCY_BUCKET_BOUNDS_MS.len() + 1;

/// A latency distribution with fixed buckets, mergeable by addition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    pub counts: [u64; LATENCY_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: [0; LATENCY_BUCKETS],
        }
    }
}

impl LatencyHistogram {
    /// Index of the bucket that holds `latency_ms`.
    pub fn bucket_of(latency_ms: f64) -> usize {
        LATENCY_BUCKET_BOUNDS_MS
            .iter()
            .position(|bound| latency_ms <= *bound)
            .unwrap_or(LATENCY_BUCKETS - 1)
    }

    /// Records `count` observations of `latency_ms`.
    pub fn record(&mut self, latency_ms: f64, count: u64) {
        if let Some(slot) = self.counts.get_mut(Self::bucket_of(latency_ms)) {
            *slot = slot.saturating_add(count);
        }
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |sum, c| sum.saturating_add(*c))
    }

    /// The `q` quantile (0..=1) in milliseconds, interpolated linearly inside its bucket.
    /// `None` when the histogram is empty. Observations in the unbounded bucket count as the
    /// last finite bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        let mut lower_ms = 0.0;
        for (index, count) in self.counts.iter().enumerate() {
            let upper_ms = LATENCY_BUCKET_BOUNDS_MS
                .get(index)
                .copied()
                .unwrap_or(LATENCY_LAST_FINITE_BOUND_MS);
            let next = seen.saturating_add(*count);
            if *count > 0 && next as f64 >= rank {
                let within = (rank - seen as f64) / *count as f64;
                return Some(lower_ms + (upper_ms - lower_ms) * within);
            }
            seen = next;
            lower_ms = upper_ms;
        }
        Some(lower_ms)
    }
}

/// What one node reports about one unit's version over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthSample {
    pub requests: u64,
    pub errors: u64,
    pub latency: LatencyHistogram,
}

impl HealthSample {
    pub fn merge(&mut self, other: &HealthSample) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors.min(other.requests));
        self.latency.merge(&other.latency);
    }
}

/// The health of a group of nodes (the canary or the baseline of a stage) over a window:
/// what gate expressions are evaluated against.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct GroupMetrics {
    /// Nodes in the group.
    pub nodes: u64,
    /// Sum of every sample of every node in the group.
    pub sample: HealthSample,
    /// Nodes that rejected the version (NACK).
    pub rejections: u64,
    /// Consumer crashes reported.
    pub crashes: u64,
    /// Failed post-apply HTTP health checks reported.
    pub health_check_failures: u64,
    /// Nodes that stopped reporting for longer than the stage allows.
    pub silent_nodes: u64,
}

impl GroupMetrics {
    pub fn requests(&self) -> u64 {
        self.sample.requests
    }

    pub fn errors(&self) -> u64 {
        self.sample.errors
    }

    /// Errors per request, 0..=1; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.sample.requests > 0).then(|| self.sample.errors as f64 / self.sample.requests as f64)
    }

    pub fn latency_quantile_ms(&self, q: f64) -> Option<f64> {
        self.sample.latency.quantile_ms(q)
    }
}

/// Most custom metrics a plan's health source may declare (`health_source.prometheus.metrics`),
/// and so most names one group's [`CustomValues`] holds.
pub const CUSTOM_METRICS_MAX: usize = 16;
/// Longest custom metric name, in bytes.
pub const CUSTOM_METRIC_NAME_MAX_BYTES: usize = 64;

/// Whether `name` may name a custom metric: `[a-z][a-z0-9_]*`, at most
/// [`CUSTOM_METRIC_NAME_MAX_BYTES`] bytes. Gates write it `custom.NAME`.
pub fn valid_custom_metric_name(name: &str) -> bool {
    name.len() <= CUSTOM_METRIC_NAME_MAX_BYTES
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The readings of one custom metric for a group over a window: their sum and count, so the
/// group's value is their mean and groups merge by addition.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CustomSum {
    pub sum: f64,
    pub readings: u64,
}

/// A group's custom metrics (a plan's PromQL queries beyond requests, errors and latency) over
/// a window: per name, the readings of every node of the group. A group's value of a metric is
/// the mean of its readings (one per node per reading of the source); a name with no reading
/// has no value, and a gate reading it is inconclusive. At most [`CUSTOM_METRICS_MAX`] names,
/// each valid ([`valid_custom_metric_name`]); others are ignored. Kept apart from
/// [`GroupMetrics`], which is `Copy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomValues {
    values: std::collections::BTreeMap<String, CustomSum>,
}

impl CustomValues {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// One reading of `name` (a finite value; others, and names beyond the limits, are
    /// ignored).
    pub fn record(&mut self, name: &str, value: f64) {
        self.add(
            name,
            CustomSum {
                sum: value,
                readings: 1,
            },
        );
    }

    fn add(&mut self, name: &str, more: CustomSum) {
        if !more.sum.is_finite() || more.readings == 0 || !valid_custom_metric_name(name) {
            return;
        }
        if let Some(sum) = self.values.get_mut(name) {
            let total = sum.sum + more.sum;
            if total.is_finite() {
                sum.sum = total;
                sum.readings = sum.readings.saturating_add(more.readings);
            }
        } else if self.values.len() < CUSTOM_METRICS_MAX {
            self.values.insert(name.to_owned(), more);
        }
    }

    /// Adds every reading of `other`.
    pub fn merge(&mut self, other: &CustomValues) {
        for (name, more) in &other.values {
            self.add(name, *more);
        }
    }

    /// The mean of `name`'s readings; `None` without any.
    pub fn mean(&self, name: &str) -> Option<f64> {
        self.values
            .get(name)
            .filter(|sum| sum.readings > 0)
            .map(|sum| sum.sum / sum.readings as f64)
    }

    /// How many readings of `name` there are.
    pub fn readings(&self, name: &str) -> u64 {
        self.values.get(name).map_or(0, |sum| sum.readings)
    }

    /// Whether any name has a reading.
    pub fn has_readings(&self) -> bool {
        self.values.values().any(|sum| sum.readings > 0)
    }
}

/// Counter values at one reading (an agent's scrape of its consumer, or the control plane's
/// query of a Prometheus server for one node).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counters {
    pub requests: f64,
    pub errors: f64,
    /// (upper bound in ms, cumulative count), sorted by bound.
    pub buckets: Vec<(f64, f64)>,
}

fn delta(now: f64, before: f64) -> u64 {
    // A counter that went down means the consumer restarted: count from zero.
    let difference = if now >= before { now - before } else { now };
    if difference.is_finite() && difference > 0.0 {
        difference.round() as u64
    } else {
        0
    }
}

/// The health over the interval between two readings of the same counters.
pub fn sample_between(before: &Counters, now: &Counters) -> HealthSample {
    let requests = delta(now.requests, before.requests);
    let errors = delta(now.errors, before.errors).min(requests);
    let mut latency = LatencyHistogram::default();
    let mut cumulative_before_prev = 0u64;
    for (bound_ms, cumulative) in &now.buckets {
        let previous = before
            .buckets
            .iter()
            .find(|(b, _)| b == bound_ms)
            .map_or(0.0, |(_, c)| *c);
        let cumulative_delta = delta(*cumulative, previous);
        let in_bucket = cumulative_delta.saturating_sub(cumulative_before_prev);
        cumulative_before_prev = cumulative_delta.max(cumulative_before_prev);
        if in_bucket > 0 {
            latency.record(
                if bound_ms.is_finite() {
                    *bound_ms
                } else {
                    f64::MAX
                },
                in_bucket,
            );
        }
    }
    HealthSample {
        requests,
        errors,
        latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut histogram = LatencyHistogram::default();
        histogram.record(40.0, 99);
        histogram.record(400.0, 1);
        let p50 = histogram.quantile_ms(0.5).unwrap();
        assert!((30.0..=50.0).contains(&p50), "{p50}");
        let p99 = histogram.quantile_ms(0.99).unwrap();
        assert!(p99 <= 50.0, "{p99}");
        let p100 = histogram.quantile_ms(1.0).unwrap();
        assert!((300.0..=500.0).contains(&p100), "{p100}");
        assert_eq!(LatencyHistogram::default().quantile_ms(0.99), None);
    }

    #[test]
    fn last_finite_bound_is_the_last_bound() {
        assert_eq!(
            LATENCY_BUCKET_BOUNDS_MS.last(),
            Some(&LATENCY_LAST_FINITE_BOUND_MS)
        );
    }

    #[test]
    fn errors_never_exceed_requests_when_merged() {
        let mut sum = HealthSample::default();
        sum.merge(&HealthSample {
            requests: 10,
            errors: 50,
            ..Default::default()
        });
        assert_eq!(sum.errors, 10);
    }

    #[test]
    fn custom_values_average_their_readings_within_their_limits() {
        let mut canary = CustomValues::default();
        canary.record("queue_depth", 10.0);
        canary.record("queue_depth", 30.0);
        canary.record("Bad-Name", 1.0);
        canary.record("queue_depth", f64::NAN);
        assert_eq!(canary.mean("queue_depth"), Some(20.0));
        assert_eq!(canary.readings("queue_depth"), 2);
        assert_eq!(canary.mean("Bad-Name"), None);
        let mut group = CustomValues::default();
        group.merge(&canary);
        group.record("queue_depth", 50.0);
        assert_eq!(group.mean("queue_depth"), Some(30.0));
        for index in 0..CUSTOM_METRICS_MAX + 5 {
            group.record(&format!("m{index}"), 1.0);
        }
        let names = (0..CUSTOM_METRICS_MAX + 5)
            .filter(|index| group.mean(&format!("m{index}")).is_some())
            .count();
        assert_eq!(names, CUSTOM_METRICS_MAX - 1, "queue_depth takes one place");
        assert!(!valid_custom_metric_name(
            &"a".repeat(CUSTOM_METRIC_NAME_MAX_BYTES + 1)
        ));
        assert!(valid_custom_metric_name("queue_depth_2"));
        assert!(!valid_custom_metric_name("2queue"));
    }
}
