//! Health from the local consumer's Prometheus endpoint: counters read at each scrape, the
//! difference from the previous scrape becomes a [`HealthSample`] for the version that was
//! active over that interval.

pub use failsmall_core::health::{Counters, sample_between};

/// Largest metrics page read, in bytes.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most histogram buckets read.
pub const MAX_BUCKETS: usize = 256;

/// Which metrics mean what. Counters are summed over all their label sets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetricNames {
    /// A counter of requests served.
    pub requests: String,
    /// A counter of failed requests.
    pub errors: String,
    /// A histogram of latency (its `_bucket` series), in seconds unless `latency_in_ms`.
    pub latency: String,
    #[serde(default)]
    pub latency_in_ms: bool,
}

impl Default for MetricNames {
    fn default() -> Self {
        Self {
            requests: "http_requests_total".into(),
            errors: "http_errors_total".into(),
            latency: "http_request_duration_seconds".into(),
            latency_in_ms: false,
        }
    }
}

/// Reads the counters named by `names` from a Prometheus text page.
pub fn parse(page: &str, names: &MetricNames) -> Counters {
    let bucket_name = format!("{}_bucket", names.latency);
    let mut counters = Counters::default();
    for line in page.lines().take(1_000_000) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (
                    line.get(..open).unwrap_or_default(),
                    line.get(open..=close)
                        .map(|labels| (labels, line.get(close + 1..))),
                )
            }
            None => (
                line.split_whitespace().next().unwrap_or_default(),
                Some(("", line.split_once(char::is_whitespace).map(|(_, v)| v))),
            ),
        };
        let Some((labels, Some(value))) = rest else {
            continue;
        };
        let Some(Ok(value)) = value.split_whitespace().next().map(str::parse::<f64>) else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        if series == names.requests {
            counters.requests += value;
        } else if series == names.errors {
            counters.errors += value;
        } else if series == bucket_name && counters.buckets.len() < MAX_BUCKETS {
            let Some(le) = label(labels, "le") else {
                continue;
            };
            let Ok(bound) = le.parse::<f64>() else {
                continue;
            };
            let bound_ms = if names.latency_in_ms {
                bound
            } else {
                bound * 1000.0
            };
            match counters.buckets.iter_mut().find(|(b, _)| *b == bound_ms) {
                Some((_, count)) => *count += value,
                None => counters.buckets.push((bound_ms, value)),
            }
        }
    }
    counters
        .buckets
        .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    counters
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let inner = labels.strip_prefix('{')?.strip_suffix('}')?;
    inner.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_1: &str = r#"
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{status="200"} 90
http_requests_total{status="500"} 10
http_errors_total 10
http_request_duration_seconds_bucket{le="0.005"} 50
http_request_duration_seconds_bucket{le="0.1"} 95
http_request_duration_seconds_bucket{le="+Inf"} 100
"#;
    const PAGE_2: &str = r#"
http_requests_total{status="200"} 180
http_requests_total{status="500"} 20
http_errors_total 20
http_request_duration_seconds_bucket{le="0.005"} 60
http_request_duration_seconds_bucket{le="0.1"} 150
http_request_duration_seconds_bucket{le="+Inf"} 200
"#;

    #[test]
    fn counters_sum_over_labels_and_deltas_rebucket() {
        let names = MetricNames::default();
        let first = parse(PAGE_1, &names);
        assert_eq!(first.requests, 100.0);
        assert_eq!(first.errors, 10.0);
        assert_eq!(first.buckets.len(), 3);
        let second = parse(PAGE_2, &names);
        let sample = sample_between(&first, &second);
        assert_eq!(sample.requests, 100);
        assert_eq!(sample.errors, 10);
        assert_eq!(sample.latency.total(), 100);
        let p50 = sample.latency.quantile_ms(0.5).unwrap();
        assert!((50.0..=100.0).contains(&p50), "{p50}");
    }

    #[test]
    fn a_restarted_consumer_counts_from_zero() {
        let names = MetricNames::default();
        let before = parse(PAGE_2, &names);
        let after = parse(PAGE_1, &names);
        let sample = sample_between(&before, &after);
        assert_eq!(sample.requests, 100);
        assert_eq!(sample.errors, 10);
    }

    #[test]
    fn garbage_is_ignored() {
        let names = MetricNames::default();
        let counters = parse(
            "http_requests_total{ 12\n{}}} x\nhttp_errors_total NaN",
            &names,
        );
        assert_eq!(counters, Counters::default());
    }
}
