//! The server's SLO book: every SLO with its event counts in time buckets (see
//! [`failsmall_core::slo`]), fed by agents' health reports as they are accepted, read by
//! `/metrics`, `GET /v1/slos` and the rollout-start check.
//!
//! Memory is bounded: at most [`SLOS_MAX`] SLOs (the API refuses more), each with at most
//! [`failsmall_core::slo::MINUTE_BUCKETS_MAX`] + [`failsmall_core::slo::HOUR_BUCKETS_MAX`]
//! buckets, pruned past its window on every write and read. The buckets a report changed are
//! written to the store every [`FLUSH_INTERVAL_MS`] (`flush_forever`), and loaded at start:
//! a crash loses at most that interval's counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use failsmall_core::domain::{Labels, UnitName};
use failsmall_core::engine::Event;
use failsmall_core::slo::{
    BurnRates, EventCounts, HOUR_MS, MINUTE_MS, SLO_QUERY_INTERVAL_MS, SloCounts, SloQueries,
    SloSpec, SloStatus, service_burn_rates, status,
};

use crate::rollouts::{Cause, EngineHost};
use crate::store::{SloBucketRow, SloHorizon, Store, StoreError};

/// How often the buckets that changed are written to the store, in milliseconds.
pub const FLUSH_INTERVAL_MS: u64 = 5_000;
/// How often the burn rates of units whose running rollouts have burn-rate gates are sent to
/// the engine, in milliseconds (gates are judged every `GATE_EVAL_INTERVAL_MS`, 10 s); the
/// simulator sends them as often.
pub use failsmall_core::slo::BURN_FEED_INTERVAL_MS;

pub use failsmall_core::slo::SLOS_MAX;

#[derive(Debug)]
struct Tracked {
    spec: SloSpec,
    counts: SloCounts,
}

/// Every SLO and its counts.
#[derive(Debug, Default)]
pub struct SloBook {
    slos: Mutex<BTreeMap<String, Tracked>>,
    /// Buckets changed since the last flush: (SLO, width, index). At most two per SLO and
    /// minute between flushes.
    dirty: Mutex<BTreeSet<(String, u64, u64)>>,
}

impl SloBook {
    /// The book with every stored SLO, no events yet.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let book = Self::default();
        for spec in store.slos()? {
            book.insert(spec);
        }
        {
            let mut slos = book.lock();
            for row in store.slo_buckets()? {
                if let Some(tracked) = slos.get_mut(&row.slo) {
                    let counts = EventCounts {
                        total: row.total,
                        bad: row.bad,
                    };
                    tracked.counts.restore(row.width_ms, row.index, counts);
                }
            }
        }
        Ok(book)
    }

    fn lock_dirty(&self) -> MutexGuard<'_, BTreeSet<(String, u64, u64)>> {
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The buckets changed since the last call, as rows, and every SLO's horizon as of
    /// `now_ms`; the changed set starts afresh.
    fn take_dirty(&self, now_ms: u64) -> (Vec<SloBucketRow>, Vec<SloHorizon>) {
        let dirty = std::mem::take(&mut *self.lock_dirty());
        let slos = self.lock();
        let rows = dirty
            .into_iter()
            .filter_map(|(slo, width_ms, index)| {
                let counts = slos.get(&slo)?.counts.bucket(width_ms, index);
                Some(SloBucketRow {
                    slo,
                    width_ms,
                    index,
                    total: counts.total,
                    bad: counts.bad,
                })
            })
            .collect();
        let horizons = slos
            .values()
            .map(|tracked| {
                let (oldest_minute, oldest_hour) =
                    SloCounts::horizon(now_ms, tracked.spec.window_ms);
                SloHorizon {
                    slo: tracked.spec.name.clone(),
                    oldest_minute,
                    oldest_hour,
                }
            })
            .collect();
        (rows, horizons)
    }

    /// Writes the changed buckets to `store` (and deletes what is past each horizon); on
    /// failure they stay changed, for the next flush.
    pub fn flush(&self, store: &Store, now_ms: u64) -> Result<(), StoreError> {
        let (rows, horizons) = self.take_dirty(now_ms);
        if rows.is_empty() && horizons.is_empty() {
            return Ok(());
        }
        store.save_slo_buckets(&rows, &horizons).inspect_err(|_| {
            let mut dirty = self.lock_dirty();
            for row in rows {
                dirty.insert((row.slo, row.width_ms, row.index));
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Tracked>> {
        // A panic while holding the lock cannot leave the map torn (each write is one call).
        self.slos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn insert(&self, spec: SloSpec) {
        self.lock().insert(
            spec.name.clone(),
            Tracked {
                spec,
                counts: SloCounts::default(),
            },
        );
    }

    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some SLO of `unit` selects nodes by label (then [`Self::record`] needs them).
    pub fn needs_labels(&self, unit: &UnitName) -> bool {
        self.lock()
            .values()
            .any(|t| t.spec.unit == *unit && !t.spec.selector.is_empty())
    }

    /// Whether some SLO counts `unit`'s health.
    pub fn covers_unit(&self, unit: &UnitName) -> bool {
        self.lock().values().any(|t| t.spec.unit == *unit)
    }

    /// Counts `total` requests, `bad` of them errors, that a node with `labels` (`None`:
    /// unknown, so only SLOs without a selector count them) served for `unit` at `at_ms`.
    pub fn record(
        &self,
        unit: &UnitName,
        labels: Option<&Labels>,
        total: u64,
        bad: u64,
        at_ms: u64,
    ) {
        for tracked in self.lock().values_mut() {
            let spec = &tracked.spec;
            // An SLO defined by PromQL counts only what Prometheus answers.
            let covered = spec.unit == *unit
                && spec.prometheus.is_none()
                && match labels {
                    Some(labels) => spec.covers(labels),
                    None => spec.selector.is_empty(),
                };
            if covered && total > 0 {
                tracked.counts.record(at_ms, total, bad);
                tracked.counts.prune(at_ms, spec.window_ms);
                let mut dirty = self.lock_dirty();
                dirty.insert((spec.name.clone(), MINUTE_MS, at_ms / MINUTE_MS));
                dirty.insert((spec.name.clone(), HOUR_MS, at_ms / HOUR_MS));
            }
        }
    }

    /// Counts `total` events, `bad` of them bad, for SLO `name` at `at_ms` (an SLO defined by
    /// PromQL; see [`read_prometheus_forever`]). Nothing when the SLO is gone.
    pub fn record_named(&self, name: &str, total: u64, bad: u64, at_ms: u64) {
        if total == 0 {
            return;
        }
        if let Some(tracked) = self.lock().get_mut(name) {
            tracked.counts.record(at_ms, total, bad);
            tracked.counts.prune(at_ms, tracked.spec.window_ms);
            let mut dirty = self.lock_dirty();
            dirty.insert((name.to_owned(), MINUTE_MS, at_ms / MINUTE_MS));
            dirty.insert((name.to_owned(), HOUR_MS, at_ms / HOUR_MS));
        }
    }

    /// The SLOs defined by PromQL, with their queries.
    pub fn prometheus_slos(&self) -> Vec<(String, SloQueries)> {
        self.lock()
            .values()
            .filter_map(|t| Some((t.spec.name.clone(), t.spec.prometheus.clone()?)))
            .collect()
    }

    /// Every SLO (`unit`: only its SLOs) and where it stands at `now_ms`.
    pub fn statuses(&self, unit: Option<&UnitName>, now_ms: u64) -> Vec<(SloSpec, SloStatus)> {
        let mut slos = self.lock();
        slos.values_mut()
            .filter(|t| unit.is_none_or(|unit| t.spec.unit == *unit))
            .map(|t| {
                t.counts.prune(now_ms, t.spec.window_ms);
                (t.spec.clone(), status(&t.spec, &t.counts, now_ms))
            })
            .collect()
    }

    /// One SLO and where it stands.
    pub fn status(&self, name: &str, now_ms: u64) -> Option<(SloSpec, SloStatus)> {
        let mut slos = self.lock();
        let t = slos.get_mut(name)?;
        t.counts.prune(now_ms, t.spec.window_ms);
        Some((t.spec.clone(), status(&t.spec, &t.counts, now_ms)))
    }

    /// The service's burn rates for `unit` at `now_ms`: per window, the highest among the
    /// unit's SLOs (a window where no SLO has events is left out).
    pub fn burn_rates(&self, unit: &UnitName, now_ms: u64) -> BurnRates {
        let statuses = self.statuses(Some(unit), now_ms);
        service_burn_rates(statuses.iter().map(|(_, status)| status))
    }

    /// The SLOs of `unit` that block rollouts and whose error budget is spent.
    pub fn blocking(&self, unit: &UnitName, now_ms: u64) -> Vec<(SloSpec, SloStatus)> {
        self.statuses(Some(unit), now_ms)
            .into_iter()
            .filter(|(spec, status)| spec.block_rollouts_when_exhausted && status.exhausted)
            .collect()
    }
}

/// Flushes `book` to `store` every [`FLUSH_INTERVAL_MS`], for as long as the server runs
/// (the caller aborts the task at shutdown, after a last [`SloBook::flush`]).
pub async fn flush_forever(book: Arc<SloBook>, store: Arc<Store>, now_ms: fn() -> u64) {
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(FLUSH_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let (book, store) = (Arc::clone(&book), Arc::clone(&store));
        let flushed = tokio::task::spawn_blocking(move || book.flush(&store, now_ms())).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "slo: event counts not saved; retried at the next flush")
            }
            Err(error) => tracing::warn!(%error, "slo: the flush task failed"),
        }
    }
}

/// Sends the engine, every [`BURN_FEED_INTERVAL_MS`], the burn rates of each unit whose
/// running rollout has a burn-rate gate ([`Event::BurnRates`]), for as long as the server
/// runs (the caller aborts the task at shutdown). A step that fails is logged and tried again
/// at the next interval; the gates judge the rates last sent meanwhile.
pub async fn feed_burn_rates_forever(
    book: Arc<SloBook>,
    engine: Arc<EngineHost>,
    store: Arc<Store>,
    now_ms: fn() -> u64,
) {
    let mut interval =
        tokio::time::interval(std::time::Duration::from_millis(BURN_FEED_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let units = engine
            .read(|engine, _| engine.units_reading_burn_rates())
            .await;
        for unit in units {
            let at_ms = now_ms();
            let burn_rates = book.burn_rates(&unit, at_ms);
            let event = Event::BurnRates {
                unit: unit.clone(),
                burn_rates,
            };
            if let Err(error) = engine
                .apply(&store, at_ms, event, Cause::Nothing, None)
                .await
            {
                tracing::warn!(unit = %unit, %error, "slo: burn rates not sent to the engine; sent again at the next interval");
            }
        }
    }
}

/// What the PromQL reader keeps per SLO between readings.
#[derive(Debug, Clone, PartialEq)]
struct QueryMemory {
    queries: SloQueries,
    /// The counters (good, total) at the last reading.
    last: Option<(f64, f64)>,
    /// The last failure said, so a lasting one is logged once.
    failing: Option<String>,
}

/// The increase of the counters `(good, total)` since `before`, as (total, bad) events;
/// `None` across a counter reset (a counter went down) or without a reading before.
pub fn events_between(before: Option<(f64, f64)>, now: (f64, f64)) -> Option<(u64, u64)> {
    let (good_before, total_before) = before?;
    let (good, total) = now;
    if good < good_before || total < total_before {
        return None;
    }
    let total_events = (total - total_before).round();
    let good_events = (good - good_before).round().min(total_events);
    // Finite and non-negative here; counters beyond 2^64 events saturate.
    Some((
        total_events as u64,
        (total_events - good_events).max(0.0) as u64,
    ))
}

/// The one number a query answers: the sum of its series (`sum(...)` answers one).
async fn read_counter(
    client: &reqwest::Client,
    url: &str,
    query: &str,
) -> Result<f64, crate::prometheus::ReadError> {
    let series = crate::prometheus::instant_query(client, url, query).await?;
    Ok(series.iter().map(|(_, value)| value).sum())
}

/// Reads the queries of every SLO defined by PromQL every [`SLO_QUERY_INTERVAL_MS`] and counts
/// the increase of its counters since the previous reading in the book, until the task is
/// aborted. A query that fails counts nothing (logged once per change of reason); the next
/// reading starts afresh from the counters it then finds.
pub async fn read_prometheus_forever(book: Arc<SloBook>, now_ms: fn() -> u64) {
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(
            crate::prometheus::QUERY_TIMEOUT_MS,
        ))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "slo: no HTTP client for SLOs defined by PromQL; they count nothing");
            return;
        }
    };
    let mut memory: BTreeMap<String, QueryMemory> = BTreeMap::new();
    let mut interval =
        tokio::time::interval(std::time::Duration::from_millis(SLO_QUERY_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let slos = book.prometheus_slos();
        memory.retain(|name, _| slos.iter().any(|(n, _)| n == name));
        for (name, queries) in slos {
            let entry = memory.entry(name.clone()).or_insert_with(|| QueryMemory {
                queries: queries.clone(),
                last: None,
                failing: None,
            });
            if entry.queries != queries {
                // Recreated with other queries: start from scratch.
                entry.queries = queries.clone();
                entry.last = None;
            }
            let read = async {
                let good = read_counter(&client, &queries.url, &queries.good).await?;
                let total = read_counter(&client, &queries.url, &queries.total).await?;
                Ok::<_, crate::prometheus::ReadError>((good, total))
            };
            match read.await {
                Ok(now) => {
                    if entry.failing.take().is_some() {
                        tracing::info!(slo = %name, url = %queries.url, "slo: Prometheus answers again");
                    }
                    if let Some((total, bad)) = events_between(entry.last, now) {
                        book.record_named(&name, total, bad, now_ms());
                    }
                    entry.last = Some(now);
                }
                Err(error) => {
                    let reason = error.to_string();
                    if entry.failing.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(slo = %name, url = %queries.url, %reason,
                            "slo: Prometheus not read; the SLO counts nothing until it is");
                        entry.failing = Some(reason);
                    }
                    entry.last = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn events_are_the_counters_increase_and_nothing_across_a_reset() {
        assert_eq!(events_between(None, (10.0, 12.0)), None);
        assert_eq!(
            events_between(Some((10.0, 12.0)), (100.0, 112.0)),
            Some((100, 10))
        );
        assert_eq!(events_between(Some((10.0, 12.0)), (1.0, 112.0)), None);
        assert_eq!(
            events_between(Some((10.0, 12.0)), (10.0, 12.0)),
            Some((0, 0))
        );
        // More good than total (queries scraped a moment apart): no negative bad events.
        assert_eq!(events_between(Some((0.0, 0.0)), (5.0, 4.0)), Some((4, 0)));
    }
}
