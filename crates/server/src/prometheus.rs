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
//!
//! A source's custom metrics (`metrics: { NAME: PromQL }`) are asked with the others: each
//! answers one value per node, read as it is (a gauge, or a `rate()`), and goes with the
//! node's health in the same event for the gates that read `custom.NAME`. A custom query that
//! fails leaves that metric without a reading (its gates hold) and the others read as usual.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use failsmall_core::domain::{NodeId, TimeMs, UnitName, VersionHash};
use failsmall_core::engine::Event;
use failsmall_core::health::{Counters, CustomValues, sample_between};
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

/// What one reading of one unit found.
#[derive(Debug, Default)]
pub struct Reading {
    /// Counters per node.
    pub counters: BTreeMap<NodeId, Counters>,
    /// Custom metrics per node (one reading each).
    pub custom: BTreeMap<NodeId, CustomValues>,
    /// The custom queries that failed, with why (their metrics have no reading).
    pub custom_failures: Vec<String>,
}

/// What the poller keeps per unit between readings.
#[derive(Debug, Default)]
struct UnitMemory {
    source: Option<PrometheusSource>,
    next_at_ms: TimeMs,
    /// Per node: the counters and the version it ran at the last reading.
    last: HashMap<NodeId, (Counters, Option<VersionHash>)>,
    /// The last failure said, so a lasting one is logged once.
    failing: Option<String>,
    /// Likewise for the custom queries.
    failing_custom: Option<String>,
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
            let custom_failures = reading.custom_failures.join("; ");
            if custom_failures.is_empty() {
                if entry.failing_custom.take().is_some() {
                    tracing::info!(unit = %unit, url = %source.url, "Prometheus custom metrics answer again");
                }
            } else if entry.failing_custom.as_deref() != Some(custom_failures.as_str()) {
                tracing::warn!(unit = %unit, url = %source.url, reason = %custom_failures,
                    "Prometheus custom metrics not read; gates reading them hold until they are");
                entry.failing_custom = Some(custom_failures);
            }
            let Reading {
                counters: reading,
                mut custom,
                ..
            } = reading;
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
                            let custom = custom.remove(&node).unwrap_or_default();
                            if sample.requests > 0 || !custom.is_empty() {
                                events.push((
                                    Event::MonitoredHealth {
                                        node: node.clone(),
                                        unit: unit.clone(),
                                        version: now_version,
                                        sample,
                                        custom,
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

/// One reading of `source`: the counters of every node its queries answer for, and its
/// custom metrics. Series
/// without the node label, or whose value is not a finite number, are skipped.
pub async fn read(
    client: &reqwest::Client,
    source: &PrometheusSource,
) -> Result<Reading, ReadError> {
    let mut all = Reading::default();
    let reading = &mut all.counters;
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
    for (name, query) in &source.metrics {
        match instant_query_values(client, &source.url, query).await {
            Ok(series) => {
                for (labels, value) in series {
                    // A node answered by more than one series keeps its first value: a
                    // query not grouped by node has no one value per node.
                    if let Some(node) = node_of(source, &labels) {
                        let values = all.custom.entry(node).or_default();
                        if values.readings(name) == 0 {
                            values.record(name, value);
                        }
                    }
                }
            }
            Err(error) => all.custom_failures.push(format!("custom.{name}: {error}")),
        }
    }
    Ok(all)
}

fn node_of(source: &PrometheusSource, series: &BTreeMap<String, String>) -> Option<NodeId> {
    NodeId::new(series.get(&source.node_label)?.clone()).ok()
}

/// Runs one instant query against the Prometheus server at `base_url`; its series' labels and
/// values (negative ones as 0, not-a-number ones left out): counters. Used by plans' health
/// sources and by SLOs defined by PromQL (`crate::slo`).
pub async fn instant_query(
    client: &reqwest::Client,
    base_url: &str,
    promql: &str,
) -> Result<Vec<(BTreeMap<String, String>, f64)>, ReadError> {
    let mut series = instant_query_values(client, base_url, promql).await?;
    for (_, value) in &mut series {
        *value = value.max(0.0);
    }
    Ok(series)
}

/// [`instant_query`] with every finite value as answered (a gauge may be negative).
pub async fn instant_query_values(
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
            value.is_finite().then_some((series.metric, value))
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
