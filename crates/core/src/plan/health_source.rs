//! `health_source:` — where a plan's canary and baseline health come from when it is not the
//! agents' own scrape of their consumer: a Prometheus server the team already runs.
//!
//! ```yaml
//! health_source:
//!   prometheus:
//!     url: http://prometheus.internal:9090
//!     node_label: node          # the series label whose value is the failsmall node id
//!     requests: sum by (node) (http_requests_total{job="edge"})
//!     errors: sum by (node) (http_errors_total{job="edge"})
//!     latency: sum by (node, le) (http_request_duration_seconds_bucket{job="edge"})
//!     interval: 5s
//!     metrics:                  # custom metrics, for gates that read `custom.NAME`
//!       queue_depth: max by (node) (edge_queue_depth{job="edge"})
//! ```
//!
//! Each query is an instant query whose answer is one *counter* per node (cumulative since
//! the process started, as Prometheus stores them; not a rate): the control plane asks every
//! `interval` and takes the difference from the answer before, per node, as that node's health
//! over the interval, exactly as an agent does with its consumer's page. `latency` (optional)
//! answers the cumulative histogram buckets per node and `le`, in seconds unless
//! `latency_in_ms: true`. Nodes are told apart by `node_label`, so a group (the canary, the
//! baseline, the time control) is the nodes the engine puts in it, whatever the query.
//!
//! `metrics` (optional) declares custom metrics: each query answers one *value* per node (a
//! gauge, or a `rate()`; read as it is, not differenced), asked with the others every
//! `interval`. A group's value is the mean of its nodes' readings over the window, what gates
//! read as `custom.NAME` and `baseline.custom.NAME`. At most
//! [`CUSTOM_METRICS_MAX`](crate::health::CUSTOM_METRICS_MAX) names of
//! [`valid_custom_metric_name`](crate::health::valid_custom_metric_name); a gate naming a metric
//! the source does not declare is refused when the plan is loaded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Loader, child};
use crate::health::{CUSTOM_METRIC_NAME_MAX_BYTES, CUSTOM_METRICS_MAX, valid_custom_metric_name};
use crate::yaml::YamlNode;

/// Shortest and longest `interval`, in milliseconds.
pub const PROMETHEUS_INTERVAL_MIN_MS: u64 = 1_000;
pub const PROMETHEUS_INTERVAL_MAX_MS: u64 = 5 * 60 * 1000;
/// `interval` when not given.
pub const PROMETHEUS_INTERVAL_DEFAULT_MS: u64 = 5_000;
/// Longest query and URL, in bytes.
pub const PROMETHEUS_QUERY_MAX_BYTES: usize = 4096;
pub const PROMETHEUS_URL_MAX_BYTES: usize = 1024;

const SOURCE_FIELDS: &[&str] = &["prometheus"];
const PROMETHEUS_FIELDS: &[&str] = &[
    "url",
    "node_label",
    "requests",
    "errors",
    "latency",
    "latency_in_ms",
    "interval",
    "metrics",
];

/// Health from a Prometheus server: per-node counters answered by instant queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrometheusSource {
    /// The server's base URL (`http://host:9090`); queries go to `URL/api/v1/query`.
    pub url: String,
    /// The label of each answered series that names the failsmall node.
    pub node_label: String,
    /// One counter of requests per node.
    pub requests: String,
    /// One counter of failed requests per node.
    pub errors: String,
    /// Cumulative latency histogram buckets per node and `le`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// Whether `le` is in milliseconds (else seconds).
    #[serde(default)]
    pub latency_in_ms: bool,
    /// How often the control plane asks.
    pub interval_ms: u64,
    /// Custom metrics by name: one value per node each, for gates reading `custom.NAME`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, String>,
}

impl Loader<'_> {
    pub(super) fn health_source(
        &mut self,
        node: &YamlNode,
        path: &str,
    ) -> Option<PrometheusSource> {
        let fields = self.mapping(node, path, SOURCE_FIELDS, "a mapping with `prometheus`")?;
        let mut source = None;
        for (key, value) in fields {
            if key == "prometheus" {
                source = self.prometheus(value, &child(path, key));
            }
        }
        if source.is_none() && self.errors.is_empty() {
            self.error(
                node,
                path,
                "expected `prometheus:` (the one health source besides the agents)".to_owned(),
            );
        }
        source
    }

    fn prometheus(&mut self, node: &YamlNode, path: &str) -> Option<PrometheusSource> {
        let fields = self.mapping(
            node,
            path,
            PROMETHEUS_FIELDS,
            "a mapping with `url`, `node_label`, `requests` and `errors`",
        )?;
        let mut url = None;
        let mut node_label = None;
        let mut requests = None;
        let mut errors = None;
        let mut latency = Some(None);
        let mut latency_in_ms = Some(false);
        let mut interval_ms = Some(PROMETHEUS_INTERVAL_DEFAULT_MS);
        let mut metrics = Some(BTreeMap::new());
        for (key, value) in fields {
            let field = child(path, key);
            match key {
                "url" => url = Some(self.prometheus_url(value, &field)),
                "node_label" => {
                    node_label = Some(self.scalar(value, &field, "a label name").and_then(
                        |text| {
                            let valid = !text.is_empty()
                                && text.len() <= 128
                                && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                                && !text.starts_with(|c: char| c.is_ascii_digit());
                            if valid {
                                Some(text.to_owned())
                            } else {
                                self.error(
                                    value,
                                    &field,
                                    format!(
                                        "expected a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*), found {}",
                                        value.describe()
                                    ),
                                );
                                None
                            }
                        },
                    ));
                }
                "requests" => requests = Some(self.query(value, &field)),
                "errors" => errors = Some(self.query(value, &field)),
                "latency" => latency = self.query(value, &field).map(Some),
                "latency_in_ms" => latency_in_ms = self.boolean(value, &field),
                "metrics" => metrics = self.custom_metrics(value, &field),
                "interval" => {
                    interval_ms = self.duration(value, &field).and_then(|ms| {
                        if (PROMETHEUS_INTERVAL_MIN_MS..=PROMETHEUS_INTERVAL_MAX_MS).contains(&ms) {
                            Some(ms)
                        } else {
                            self.error(
                                value,
                                &field,
                                format!(
                                    "expected from {} to {}, found {}",
                                    crate::duration::format_ms(PROMETHEUS_INTERVAL_MIN_MS),
                                    crate::duration::format_ms(PROMETHEUS_INTERVAL_MAX_MS),
                                    crate::duration::format_ms(ms)
                                ),
                            );
                            None
                        }
                    });
                }
                _ => {}
            }
        }
        for (missing, what) in [
            (url.is_none(), "url"),
            (node_label.is_none(), "node_label"),
            (requests.is_none(), "requests"),
            (errors.is_none(), "errors"),
        ] {
            if missing {
                self.error(node, &child(path, what), format!("missing field `{what}`"));
            }
        }
        Some(PrometheusSource {
            url: url??,
            node_label: node_label??,
            requests: requests??,
            errors: errors??,
            latency: latency?,
            latency_in_ms: latency_in_ms?,
            interval_ms: interval_ms?,
            metrics: metrics?,
        })
    }

    /// `metrics: { NAME: PromQL, ... }`.
    fn custom_metrics(&mut self, node: &YamlNode, path: &str) -> Option<BTreeMap<String, String>> {
        let fields = self.mapping(
            node,
            path,
            &[],
            "a mapping of metric name: PromQL query (one value per node)",
        )?;
        if fields.len() > CUSTOM_METRICS_MAX {
            self.error(
                node,
                path,
                format!(
                    "{} custom metrics; at most {CUSTOM_METRICS_MAX}",
                    fields.len()
                ),
            );
            return None;
        }
        let mut metrics = BTreeMap::new();
        let mut ok = true;
        for (name, value) in fields {
            let field = child(path, name);
            if !valid_custom_metric_name(name) {
                self.error(
                    value,
                    &field,
                    format!(
                        "expected a custom metric name of [a-z][a-z0-9_]*, at most \
                         {CUSTOM_METRIC_NAME_MAX_BYTES} bytes, found `{name}`"
                    ),
                );
                ok = false;
                continue;
            }
            match self.query(value, &field) {
                Some(query) => {
                    metrics.insert(name.to_owned(), query);
                }
                None => ok = false,
            }
        }
        ok.then_some(metrics)
    }

    fn prometheus_url(&mut self, node: &YamlNode, path: &str) -> Option<String> {
        let text = self.scalar(node, path, "an http:// or https:// URL")?;
        let valid = (text.starts_with("http://") || text.starts_with("https://"))
            && text.len() <= PROMETHEUS_URL_MAX_BYTES
            && !text.chars().any(|c| c.is_whitespace() || c.is_control())
            && !text.contains(['?', '#']);
        if valid {
            Some(text.trim_end_matches('/').to_owned())
        } else {
            self.error(
                node,
                path,
                format!(
                    "expected the Prometheus server's base URL (http:// or https://, no query, at most {PROMETHEUS_URL_MAX_BYTES} bytes), found {}",
                    node.describe()
                ),
            );
            None
        }
    }

    fn query(&mut self, node: &YamlNode, path: &str) -> Option<String> {
        let text = self.scalar(node, path, "a PromQL query")?;
        let text = text.trim();
        if text.is_empty() || text.len() > PROMETHEUS_QUERY_MAX_BYTES {
            self.error(
                node,
                path,
                format!(
                    "expected a PromQL query of 1 to {PROMETHEUS_QUERY_MAX_BYTES} bytes, found {}",
                    node.describe()
                ),
            );
            return None;
        }
        Some(text.to_owned())
    }
}
