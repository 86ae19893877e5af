//! The server's SLO book: every SLO with its event counts in time buckets (see
//! [`failsmall_core::slo`]), fed by agents' health reports as they are accepted, read by
//! `/metrics`, `GET /v1/slos` and the rollout-start check.
//!
//! Memory is bounded: at most [`SLOS_MAX`] SLOs (the API refuses more), each with at most
//! [`failsmall_core::slo::MINUTE_BUCKETS_MAX`] + [`failsmall_core::slo::HOUR_BUCKETS_MAX`]
//! buckets, pruned past its window on every write and read. Counts live in memory: a restart
//! starts every SLO's counts afresh (its spec is in the store).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use failsmall_core::domain::{Labels, UnitName};
use failsmall_core::slo::{SloCounts, SloSpec, SloStatus, status};

use crate::store::{Store, StoreError};

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
}

impl SloBook {
    /// The book with every stored SLO, no events yet.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let book = Self::default();
        for spec in store.slos()? {
            book.insert(spec);
        }
        Ok(book)
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
            let covered = spec.unit == *unit
                && match labels {
                    Some(labels) => spec.covers(labels),
                    None => spec.selector.is_empty(),
                };
            if covered {
                tracked.counts.record(at_ms, total, bad);
                tracked.counts.prune(at_ms, spec.window_ms);
            }
        }
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

    /// The SLOs of `unit` that block rollouts and whose error budget is spent.
    pub fn blocking(&self, unit: &UnitName, now_ms: u64) -> Vec<(SloSpec, SloStatus)> {
        self.statuses(Some(unit), now_ms)
            .into_iter()
            .filter(|(spec, status)| spec.block_rollouts_when_exhausted && status.exhausted)
            .collect()
    }
}
