//! The SLOs of a scenario, counted as the server counts them (`crates/server/src/slo.rs`): every
//! health sample an agent sends adds its requests and errors to each SLO of its unit whose
//! selector covers the node, in the same minute and hour buckets ([`SloCounts`]); the burn rates
//! a burn-rate gate reads are the highest per window among the unit's SLOs
//! ([`service_burn_rates`]).

use failsmall_core::domain::{Labels, UnitName};
use failsmall_core::slo::{BurnRates, SloCounts, SloSpec, service_burn_rates, status};

/// The scenario's SLOs and their counts.
#[derive(Debug, Default)]
pub(crate) struct SloBook {
    tracked: Vec<(SloSpec, SloCounts)>,
}

impl SloBook {
    pub(crate) fn new(specs: &[SloSpec]) -> Self {
        Self {
            tracked: specs
                .iter()
                .map(|spec| (spec.clone(), SloCounts::default()))
                .collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }

    /// The indexes of the SLOs of `unit` covering a node with `labels`.
    pub(crate) fn covering(&self, unit: &UnitName, labels: &Labels) -> Vec<usize> {
        self.tracked
            .iter()
            .enumerate()
            .filter(|(_, (spec, _))| spec.unit == *unit && spec.covers(labels))
            .map(|(index, _)| index)
            .collect()
    }

    /// Adds one health sample to SLO `index`.
    pub(crate) fn record(&mut self, index: usize, requests: u64, errors: u64, at_ms: u64) {
        if let Some((spec, counts)) = self.tracked.get_mut(index) {
            counts.record(at_ms, requests, errors);
            counts.prune(at_ms, spec.window_ms);
        }
    }

    /// The service's burn rates for `unit` at `now_ms`.
    pub(crate) fn burn_rates(&self, unit: &UnitName, now_ms: u64) -> BurnRates {
        let statuses: Vec<_> = self
            .tracked
            .iter()
            .filter(|(spec, _)| spec.unit == *unit)
            .map(|(spec, counts)| status(spec, counts, now_ms))
            .collect();
        service_burn_rates(&statuses)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use failsmall_core::slo::{BurnWindow, DAY_MS, MINUTE_MS};

    #[test]
    fn burn_rates_are_the_highest_among_the_units_slos_covering_the_nodes() {
        let unit = UnitName::new("edge").unwrap();
        let spec = |name: &str, target_percent: f64, region: Option<&str>| SloSpec {
            name: name.to_owned(),
            unit: unit.clone(),
            selector: region
                .map(|r| Labels::from([("region".to_owned(), r.to_owned())]))
                .unwrap_or_default(),
            target_percent,
            window_ms: 30 * DAY_MS,
            block_rollouts_when_exhausted: false,
            description: String::new(),
            prometheus: None,
        };
        let mut book = SloBook::new(&[spec("all", 99.0, None), spec("us", 99.9, Some("us"))]);
        let us = Labels::from([("region".to_owned(), "us".to_owned())]);
        let eu = Labels::from([("region".to_owned(), "eu".to_owned())]);
        assert_eq!(book.covering(&unit, &us), vec![0, 1]);
        assert_eq!(book.covering(&unit, &eu), vec![0]);
        assert!(
            book.covering(&UnitName::new("other").unwrap(), &us)
                .is_empty()
        );
        let now = 10 * MINUTE_MS;
        // 1% errors: burn 1 for the 99% SLO, 10 for the 99.9% one.
        for index in book.covering(&unit, &us) {
            book.record(index, 1_000, 10, now);
        }
        let rates = book.burn_rates(&unit, now);
        let one_hour = rates.get(&BurnWindow::H1).copied().unwrap();
        assert!((one_hour - 10.0).abs() < 1e-9, "{rates:?}");
        assert!(
            book.burn_rates(&UnitName::new("other").unwrap(), now)
                .is_empty()
        );
    }
}
