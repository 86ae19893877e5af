//! Health from Prometheus: for every unit whose running rollout's plan has a
//! `health_source: prometheus`, the control plane asks that server, every `interval`, for one
//! counter per node (requests, errors, latency buckets), and turns the difference from its
//! previous answer into [`Event::MonitoredHealth`] for the version the node ran over the
//! interval — what an agent does with its consumer's page, for a fleet whose health already
//! lives in Prometheus.
//!
//! A node's interval counts only when the engine saw it run the same version at both ends (a
//! node that switched versions in between counts for neither), and only for nodes the engine
//! knows. When Prometheus cannot be read, nothing is made up: the rollout gets no data, its
//! gates stay inconclusive and its stage holds at its timeout, as with silent agents; the
//! failure is logged once per change of reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use failsmall_core::domain::{NodeId, TimeMs, UnitName, VersionHash};
use failsmall_core::engine::Event;
use failsmall_core::health::{Counters, sample_between};
use failsmall_core::plan::PrometheusSource;
use serde::Deserialize;

use crate::rollouts::{Cause, EngineHost};
use crate::store::Store;

/// How often the poller looks for units to read, in milliseconds.
pub const POLL_TICK_MS: u64 = 500;
/// Longest wait for one query's answer, in milliseconds.
pub const QUERY_TIMEOUT_MS: u64 = 10_000;
/// Largest answer read, in bytes.
pub const ANSWER_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Most series one answer may hold; beyond it the answer is refused (a query that is not
/// grouped by node).
pub const SERIES_MAX: usize = 200_000;
/// Most latency buckets per node.
pub const BUCKETS_MAX: usize = 256;

/// Why one reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{query:?}: {reason}")]
    Query { query: String, reason: String },
}

/// What one reading of one unit found: counters per node.
type Reading = BTreeMap<NodeId, Counters>;

/// What the poller keeps per unit between readings.
#[derive(Debug, Default)]
struct UnitMemory {
    source: Option<PrometheusSource>,
    next_at_ms: TimeMs,
    /// Per node: the counters and the version it ran at the last reading.
    last: HashMap<NodeId, (Counters, Option<VersionHash>)>,
    /// The last failure said, so a lasting one is logged once.
    failing: Option<String>,
}

/// Reads Prometheus for the units that need it until the task is aborted.
pub async fn poll_forever(engine: Arc<EngineHost>, store: Arc<Store>, clock: fn() -> TimeMs) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(QUERY_TIMEOUT_MS))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the HTTP client for Prometheus health sources");
            return;
        }
    };
    let mut memory: HashMap<UnitName, UnitMemory> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let units = engine.read(|engine, _| engine.monitored_units()).await;
        memory.retain(|unit, _| units.iter().any(|(u, _)| u == unit));
        for (unit, source) in units {
            let now = clock();
            let entry = memory.entry(unit.clone()).or_default();
            if entry.source.as_ref() != Some(&source) {
                // A new source (or its first use) starts from scratch.
                *entry = UnitMemory {
                    source: Some(source.clone()),
                    ..UnitMemory::default()
                };
            }
            if now < entry.next_at_ms {
                continue;
            }
            entry.next_at_ms = now.saturating_add(source.interval_ms);
            let reading = match read(&client, &source).await {
                Ok(reading) => {
                    if entry.failing.take().is_some() {
                        tracing::info!(unit = %unit, url = %source.url, "Prometheus health source answers again");
                    }
                    reading
                }
                Err(error) => {
                    let reason = error.to_string();
                    if entry.failing.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(unit = %unit, url = %source.url, %reason,
                            "Prometheus health source not read; the rollout gets no health until it is");
                        entry.failing = Some(reason);
                    }
                    continue;
                }
            };
            let events = engine
                .read(|engine, _| {
                    let mut events = Vec::new();
                    let mut last = HashMap::with_capacity(reading.len());
                    for (node, counters) in reading {
                        let version = engine.running_version(&node, &unit);
                        if let (Some((before, Some(then))), Some(now_version)) =
                            (entry.last.get(&node), version)
                            && *then == now_version
                        {
                            let sample = sample_between(before, &counters);
                            if sample.requests > 0 {
                                events.push((
                                    Event::MonitoredHealth {
                                        node: node.clone(),
                                        unit: unit.clone(),
                                        version: now_version,
                                        sample,
                                    },
                                    None,
                                ));
                            }
                        }
                        last.insert(node, (counters, version));
                    }
                    entry.last = last;
                    events
                })
                .await;
            if events.is_empty() {
                continue;
            }
            let count = events.len();
            if let Err(error) = engine
                .apply_many(&store, clock(), events, Cause::Nothing)
                .await
            {
                tracing::warn!(unit = %unit, samples = count, %error,
                    "health read from Prometheus not applied");
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<AnswerData>,
}

#[derive(Debug, Deserialize)]
struct AnswerData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Series>,
}

#[derive(Debug, Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    /// `[unix time, "value"]`.
    value: (f64, String),
}

/// One reading of `source`: the counters of every node its queries answer for. Series
/// without the node label, or whose value is not a finite number, are skipped.
pub async fn read(
    client: &reqwest::Client,
    source: &PrometheusSource,
) -> Result<Reading, ReadError> {
    let mut reading = Reading::new();
    for (series, value) in instant_query(client, &source.url, &source.requests).await? {
        if let Some(node) = node_of(source, &series) {
            reading.entry(node).or_default().requests += value;
        }
    }
    for (series, value) in instant_query(client, &source.url, &source.errors).await? {
        if let Some(node) = node_of(source, &series) {
            reading.entry(node).or_default().errors += value;
        }
    }
    if let Some(latency) = &source.latency {
        for (series, value) in instant_query(client, &source.url, latency).await? {
            let Some(node) = node_of(source, &series) else {
                continue;
            };
            let Some(Ok(bound)) = series.get("le").map(|le| le.parse::<f64>()) else {
                continue;
            };
            let bound_ms = if source.latency_in_ms {
                bound
            } else {
                bound * 1000.0
            };
            let buckets = &mut reading.entry(node).or_default().buckets;
            let full = buckets.len() >= BUCKETS_MAX;
            match buckets.iter_mut().find(|(b, _)| *b == bound_ms) {
                Some((_, count)) => *count += value,
                None if !full => buckets.push((bound_ms, value)),
                None => {}
            }
        }
        for counters in reading.values_mut() {
            counters
                .buckets
                .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        }
    }
    Ok(reading)
}

fn node_of(source: &PrometheusSource, series: &BTreeMap<String, String>) -> Option<NodeId> {
    NodeId::new(series.get(&source.node_label)?.clone()).ok()
}

/// Runs one instant query against the Prometheus server at `base_url`; its series' labels and
/// values (negative ones as 0, not-a-number ones left out). Used by plans' health sources and
/// by SLOs defined by PromQL (`crate::slo`).
pub async fn instant_query(
    client: &reqwest::Client,
    base_url: &str,
    promql: &str,
) -> Result<Vec<(BTreeMap<String, String>, f64)>, ReadError> {
    let fail = |reason: String| ReadError::Query {
        query: promql.to_owned(),
        reason,
    };
    let url = format!("{base_url}/api/v1/query");
    let mut response = client
        .get(&url)
        .query(&[("query", promql)])
        .send()
        .await
        .map_err(|e| fail(format!("{url} not reached: {e}")))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fail(format!("reading the answer: {e}")))?
    {
        if body.len().saturating_add(chunk.len()) > ANSWER_MAX_BYTES {
            return Err(fail(format!(
                "the answer is larger than {ANSWER_MAX_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
        fail(format!(
            "HTTP {status}: not a Prometheus query answer ({e})"
        ))
    })?;
    if answer.status != "success" {
        return Err(fail(format!(
            "HTTP {status}: {}",
            answer.error.as_deref().unwrap_or("the query failed")
        )));
    }
    let data = answer
        .data
        .ok_or_else(|| fail("the answer has no data".to_owned()))?;
    if data.result_type != "vector" {
        return Err(fail(format!(
            "expected an instant vector (one counter per node), got a {}",
            data.result_type
        )));
    }
    if data.result.len() > SERIES_MAX {
        return Err(fail(format!(
            "{} series; at most {SERIES_MAX} (group the query by node)",
            data.result.len()
        )));
    }
    Ok(data
        .result
        .into_iter()
        .filter_map(|series| {
            let value = series.value.1.parse::<f64>().ok()?;
            value.is_finite().then_some((series.metric, value.max(0.0)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_are_read_as_prometheus_writes_them() {
        let text = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"node":"n1"},"value":[1700000000.1,"120"]},
            {"metric":{"node":"n2"},"value":[1700000000.1,"NaN"]}]}}"#;
        let answer: Answer = serde_json::from_str(text).unwrap();
        let data = answer.data.unwrap();
        assert_eq!(data.result_type, "vector");
        assert_eq!(data.result.len(), 2);
        assert_eq!(data.result[0].value.1, "120");
    }
}
