//! Service level objectives: what an SLO is, and the error-budget arithmetic behind its burn
//! rates (the Google SRE workbook's multiwindow, multi-burn-rate alerts).
//!
//! An SLO covers the nodes of one unit (optionally only those whose labels match a selector);
//! its good and total events are the requests and errors those nodes' agents report. Event
//! counts are kept in [`SloCounts`]: per-minute buckets for the last [`MINUTE_SPAN_MS`] (the
//! longest burn-rate window) and per-hour buckets for the whole SLO window, so memory is
//! bounded by [`MINUTE_BUCKETS_MAX`] + [`HOUR_BUCKETS_MAX`] buckets per SLO whatever the load.
//!
//! Burn rate over a window = (bad events / total events) / (1 - target). A burn rate of 1
//! spends the budget exactly over the SLO window; 14.4 spends 2% of a 30-day budget in an hour.
//! Pure arithmetic: time arrives as `now_ms`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::domain::{Labels, UnitName};

/// One minute, in milliseconds.
pub const MINUTE_MS: u64 = 60_000;
/// One hour, in milliseconds.
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
/// One day, in milliseconds.
pub const DAY_MS: u64 = 24 * HOUR_MS;
/// The shortest SLO window.
pub const WINDOW_MIN_MS: u64 = HOUR_MS;
/// The longest SLO window (a quarter, as SLO tools commonly allow).
pub const WINDOW_MAX_MS: u64 = 90 * DAY_MS;
/// How far back per-minute buckets reach: the longest burn-rate window (3 days).
pub const MINUTE_SPAN_MS: u64 = 3 * DAY_MS;
/// Most per-minute buckets one SLO keeps.
pub const MINUTE_BUCKETS_MAX: usize = (MINUTE_SPAN_MS / MINUTE_MS) as usize;
/// Most per-hour buckets one SLO keeps (the longest window).
pub const HOUR_BUCKETS_MAX: usize = (WINDOW_MAX_MS / HOUR_MS) as usize;
/// Most SLOs a server keeps.
pub const SLOS_MAX: usize = 256;
/// How often the control plane sends the engine the burn rates of the units whose running
/// rollouts have burn-rate gates ([`crate::engine::Event::BurnRates`]), in milliseconds (the
/// server, and the simulator modelling it).
pub const BURN_FEED_INTERVAL_MS: u64 = 5_000;
/// Longest SLO name, in bytes.
pub const NAME_MAX_BYTES: usize = 64;

/// The burn-rate windows, as the SRE workbook's alerts pair them.
pub const BURN_WINDOWS: [BurnWindow; 7] = [
    BurnWindow::M5,
    BurnWindow::M30,
    BurnWindow::H1,
    BurnWindow::H2,
    BurnWindow::H6,
    BurnWindow::D1,
    BurnWindow::D3,
];

/// A burn-rate window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BurnWindow {
    #[serde(rename = "5m")]
    M5,
    #[serde(rename = "30m")]
    M30,
    #[serde(rename = "1h")]
    H1,
    #[serde(rename = "2h")]
    H2,
    #[serde(rename = "6h")]
    H6,
    #[serde(rename = "1d")]
    D1,
    #[serde(rename = "3d")]
    D3,
}

impl BurnWindow {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::M5 => "5m",
            Self::M30 => "30m",
            Self::H1 => "1h",
            Self::H2 => "2h",
            Self::H6 => "6h",
            Self::D1 => "1d",
            Self::D3 => "3d",
        }
    }

    /// The window called `name` (`5m`, `1h`, ...).
    pub fn from_name(name: &str) -> Option<BurnWindow> {
        BURN_WINDOWS.into_iter().find(|w| w.as_str() == name)
    }

    pub fn duration_ms(self) -> u64 {
        match self {
            Self::M5 => 5 * MINUTE_MS,
            Self::M30 => 30 * MINUTE_MS,
            Self::H1 => HOUR_MS,
            Self::H2 => 2 * HOUR_MS,
            Self::H6 => 6 * HOUR_MS,
            Self::D1 => DAY_MS,
            Self::D3 => 3 * DAY_MS,
        }
    }
}

/// A service's burn rates now, per window: the highest among the SLOs of a unit (a window
/// without events has none). What burn-rate gates (`burn_rate_1h > 14.4`) read.
pub type BurnRates = std::collections::BTreeMap<BurnWindow, f64>;

/// The workbook's multiwindow, multi-burn-rate alerts for a 30-day SLO: (long window, short
/// window, burn-rate threshold, severity). An alert fires when both windows burn faster than
/// the threshold.
pub const WORKBOOK_ALERTS: [(BurnWindow, BurnWindow, f64, &str); 3] = [
    (BurnWindow::H1, BurnWindow::M5, 14.4, "page"),
    (BurnWindow::H6, BurnWindow::M30, 6.0, "page"),
    (BurnWindow::D3, BurnWindow::H6, 1.0, "ticket"),
];

/// An SLO as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    pub name: String,
    /// The unit whose nodes' health the SLO counts.
    pub unit: UnitName,
    /// Only nodes with all these labels count; empty: every node of the unit.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub selector: Labels,
    /// The objective, in percent of good events: strictly between 0 and 100.
    pub target_percent: f64,
    /// The SLO window, in milliseconds.
    pub window_ms: u64,
    /// No rollout of the unit starts while the error budget is exhausted (rollbacks, undo to
    /// a version that was stable and break glass are never blocked).
    #[serde(default = "yes")]
    pub block_rollouts_when_exhausted: bool,
    #[serde(default)]
    pub description: String,
    /// Good and total events from PromQL queries against a Prometheus server, instead of the
    /// agents' health (then `selector` is not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<SloQueries>,
}

/// Longest query and URL of an SLO's [`SloQueries`], in bytes.
pub const SLO_QUERY_MAX_BYTES: usize = 4096;
pub const SLO_URL_MAX_BYTES: usize = 1024;

/// An SLO's events from Prometheus: each query answers one cumulative counter (e.g.
/// `sum(http_requests_total{job="edge"})`); the control plane reads both every
/// `SLO_QUERY_INTERVAL_MS` and counts the increase since its previous reading (none across a
/// counter reset), as `total` events of which `total - good` are bad.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloQueries {
    /// The Prometheus server's base URL (`http://host:9090`).
    pub url: String,
    /// A counter of good events.
    pub good: String,
    /// A counter of all events.
    pub total: String,
}

/// How often the control plane reads the queries of SLOs defined by PromQL, in milliseconds.
pub const SLO_QUERY_INTERVAL_MS: u64 = 5_000;

fn yes() -> bool {
    true
}

/// Why an SLO is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SloError {
    #[error(
        "name: {0:?} is not an SLO name; expected 1 to {NAME_MAX_BYTES} bytes of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
    )]
    Name(String),
    #[error("target_percent: {0} is outside (0, 100); expected e.g. 99.9")]
    Target(f64),
    #[error("window: {0}")]
    Window(String),
    #[error("prometheus.{field}: {message}")]
    Prometheus {
        field: &'static str,
        message: String,
    },
}

impl SloSpec {
    /// Checks every field; the first problem, naming its field.
    pub fn validate(&self) -> Result<(), SloError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= NAME_MAX_BYTES
            && self.name.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || (i > 0 && matches!(b, b'-' | b'_' | b'.'))
            });
        if !name_ok {
            return Err(SloError::Name(self.name.clone()));
        }
        if !(self.target_percent.is_finite()
            && self.target_percent > 0.0
            && self.target_percent < 100.0)
        {
            return Err(SloError::Target(self.target_percent));
        }
        if !(WINDOW_MIN_MS..=WINDOW_MAX_MS).contains(&self.window_ms) {
            return Err(SloError::Window(format!(
                "{} ms is outside 1h to 90d",
                self.window_ms
            )));
        }
        if let Some(queries) = &self.prometheus {
            let url = &queries.url;
            let url_ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() <= SLO_URL_MAX_BYTES
                && !url.chars().any(|c| c.is_whitespace() || c.is_control())
                && !url.contains(['?', '#']);
            if !url_ok {
                return Err(SloError::Prometheus {
                    field: "url",
                    message: format!(
                        "{url:?}: expected the Prometheus server's base URL (http:// or https://, no query, at most {SLO_URL_MAX_BYTES} bytes)"
                    ),
                });
            }
            for (field, query) in [("good", &queries.good), ("total", &queries.total)] {
                if query.trim().is_empty() || query.len() > SLO_QUERY_MAX_BYTES {
                    return Err(SloError::Prometheus {
                        field,
                        message: format!(
                            "expected a PromQL query of 1 to {SLO_QUERY_MAX_BYTES} bytes answering one counter, e.g. sum(http_requests_total)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The share of events allowed to be bad (1 - target), in (0, 1).
    pub fn budget_ratio(&self) -> f64 {
        (100.0 - self.target_percent) / 100.0
    }

    /// Whether a node with `labels` is covered.
    pub fn covers(&self, labels: &Labels) -> bool {
        self.selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// Parses an SLO window: a whole number of days or hours (`30d`, `28d`, `12h`), 1h to 90d.
pub fn parse_window_ms(text: &str) -> Result<u64, SloError> {
    let text = text.trim();
    let bad = || {
        SloError::Window(format!(
            "{text:?} is not a window; expected a whole number of days or hours from 1h to 90d, e.g. 30d"
        ))
    };
    let (digits, unit_ms) = if let Some(days) = text.strip_suffix('d') {
        (days, DAY_MS)
    } else if let Some(hours) = text.strip_suffix('h') {
        (hours, HOUR_MS)
    } else {
        return Err(bad());
    };
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let count: u64 = digits.parse().map_err(|_| bad())?;
    let window_ms = count.saturating_mul(unit_ms);
    if !(WINDOW_MIN_MS..=WINDOW_MAX_MS).contains(&window_ms) {
        return Err(SloError::Window(format!("{text:?} is outside 1h to 90d")));
    }
    Ok(window_ms)
}

/// Formats a window as `30d` or `12h`.
pub fn format_window(window_ms: u64) -> String {
    if window_ms.is_multiple_of(DAY_MS) {
        format!("{}d", window_ms / DAY_MS)
    } else {
        format!("{}h", window_ms / HOUR_MS)
    }
}

/// Good and total events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    pub total: u64,
    pub bad: u64,
}

impl EventCounts {
    fn add(&mut self, other: EventCounts) {
        self.total = self.total.saturating_add(other.total);
        self.bad = self.bad.saturating_add(other.bad.min(other.total));
    }

    /// Bad events per event; `None` without events.
    pub fn error_ratio(self) -> Option<f64> {
        (self.total > 0).then(|| self.bad.min(self.total) as f64 / self.total as f64)
    }
}

/// Event counts in time buckets: per minute for the last 3 days, per hour for the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SloCounts {
    /// (minute index since the epoch, counts), oldest first.
    minutes: VecDeque<(u64, EventCounts)>,
    /// (hour index since the epoch, counts), oldest first.
    hours: VecDeque<(u64, EventCounts)>,
}

impl SloCounts {
    /// Adds `total` events, `bad` of them bad, at `at_ms`. Events older than what is kept are
    /// dropped; events out of order land in their own bucket.
    pub fn record(&mut self, at_ms: u64, total: u64, bad: u64) {
        let counts = EventCounts {
            total,
            bad: bad.min(total),
        };
        if total == 0 {
            return;
        }
        add_to(&mut self.minutes, at_ms / MINUTE_MS, counts);
        add_to(&mut self.hours, at_ms / HOUR_MS, counts);
        self.bound();
    }

    /// Drops buckets older than the minute span and `window_ms` as of `now_ms`.
    pub fn prune(&mut self, now_ms: u64, window_ms: u64) {
        let oldest_minute = now_ms.saturating_sub(MINUTE_SPAN_MS) / MINUTE_MS;
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| *m < oldest_minute)
        {
            self.minutes.pop_front();
        }
        let oldest_hour = now_ms.saturating_sub(window_ms.min(WINDOW_MAX_MS)) / HOUR_MS;
        while self.hours.front().is_some_and(|(h, _)| *h < oldest_hour) {
            self.hours.pop_front();
        }
        self.bound();
    }

    fn bound(&mut self) {
        while self.minutes.len() > MINUTE_BUCKETS_MAX {
            self.minutes.pop_front();
        }
        while self.hours.len() > HOUR_BUCKETS_MAX {
            self.hours.pop_front();
        }
    }

    /// The counts of one bucket: `width_ms` is [`MINUTE_MS`] or [`HOUR_MS`], `index` the
    /// bucket's start divided by its width; zero when it is not kept.
    pub fn bucket(&self, width_ms: u64, index: u64) -> EventCounts {
        let buckets = if width_ms == HOUR_MS {
            &self.hours
        } else {
            &self.minutes
        };
        buckets
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, counts)| *counts)
            .unwrap_or_default()
    }

    /// Restores one bucket (as [`Self::bucket`] read it), replacing what it held.
    pub fn restore(&mut self, width_ms: u64, index: u64, counts: EventCounts) {
        let buckets = if width_ms == HOUR_MS {
            &mut self.hours
        } else if width_ms == MINUTE_MS {
            &mut self.minutes
        } else {
            return;
        };
        if let Some((_, slot)) = buckets.iter_mut().find(|(i, _)| *i == index) {
            *slot = EventCounts::default();
        }
        add_to(buckets, index, counts);
        self.bound();
    }

    /// The oldest bucket index [`Self::prune`] keeps at `now_ms` for `window_ms`: (minutes,
    /// hours).
    pub fn horizon(now_ms: u64, window_ms: u64) -> (u64, u64) {
        (
            now_ms.saturating_sub(MINUTE_SPAN_MS) / MINUTE_MS,
            now_ms.saturating_sub(window_ms.min(WINDOW_MAX_MS)) / HOUR_MS,
        )
    }

    /// Buckets kept (minutes, hours).
    pub fn buckets(&self) -> (usize, usize) {
        (self.minutes.len(), self.hours.len())
    }

    /// Events in the `span_ms` up to and including the minute of `now_ms`: from per-minute
    /// buckets when the span is at most 3 days, else from per-hour buckets.
    pub fn over(&self, now_ms: u64, span_ms: u64) -> EventCounts {
        let mut sum = EventCounts::default();
        if span_ms <= MINUTE_SPAN_MS {
            let last = now_ms / MINUTE_MS;
            let first = last.saturating_add(1).saturating_sub(span_ms / MINUTE_MS);
            for (_, counts) in self
                .minutes
                .iter()
                .filter(|(m, _)| (first..=last).contains(m))
            {
                sum.add(*counts);
            }
        } else {
            let last = now_ms / HOUR_MS;
            let first = last.saturating_add(1).saturating_sub(span_ms / HOUR_MS);
            for (_, counts) in self
                .hours
                .iter()
                .filter(|(h, _)| (first..=last).contains(h))
            {
                sum.add(*counts);
            }
        }
        sum
    }
}

fn add_to(buckets: &mut VecDeque<(u64, EventCounts)>, index: u64, counts: EventCounts) {
    if let Some(at) = buckets.iter().rposition(|(i, _)| *i <= index) {
        if let Some((i, slot)) = buckets.get_mut(at)
            && *i == index
        {
            slot.add(counts);
            return;
        }
        buckets.insert(at.saturating_add(1), (index, counts));
    } else {
        buckets.push_front((index, counts));
    }
}

/// Where an SLO stands at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloStatus {
    /// Events over the SLO window.
    pub window: EventCounts,
    /// The share of events that were good over the window, in percent; `None` without events.
    pub attained_percent: Option<f64>,
    /// The share of the window's error budget left: 1 untouched, 0 spent, below 0 overspent;
    /// 1 without events.
    pub error_budget_remaining: f64,
    /// Whether the budget is spent (remaining at or below 0).
    pub exhausted: bool,
    /// Burn rate per window; `None` for a window without events.
    pub burn_rates: Vec<(BurnWindow, Option<f64>)>,
    /// The workbook alerts that fire now (severity and windows).
    pub alerts: Vec<String>,
}

impl SloStatus {
    pub fn burn_rate(&self, window: BurnWindow) -> Option<f64> {
        self.burn_rates
            .iter()
            .find(|(w, _)| *w == window)
            .and_then(|(_, rate)| *rate)
    }
}

/// The service's burn rates from its SLOs' statuses: per window, the highest among them (a
/// window where no SLO has events is left out). What burn-rate gates read, computed the same
/// way by the server and the simulator.
pub fn service_burn_rates<'a>(statuses: impl IntoIterator<Item = &'a SloStatus>) -> BurnRates {
    let statuses: Vec<&SloStatus> = statuses.into_iter().collect();
    BURN_WINDOWS
        .iter()
        .filter_map(|window| {
            statuses
                .iter()
                .filter_map(|status| status.burn_rate(*window))
                .filter(|rate| rate.is_finite())
                .reduce(f64::max)
                .map(|rate| (*window, rate))
        })
        .collect()
}

/// The burn rate of `counts` against `spec`'s target: `None` without events.
pub fn burn_rate(counts: EventCounts, budget_ratio: f64) -> Option<f64> {
    counts.error_ratio().map(|ratio| ratio / budget_ratio)
}

/// Where `spec` stands at `now_ms` given `counts`.
pub fn status(spec: &SloSpec, counts: &SloCounts, now_ms: u64) -> SloStatus {
    let budget = spec.budget_ratio();
    let window = counts.over(now_ms, spec.window_ms);
    let remaining = match window.error_ratio() {
        Some(ratio) => 1.0 - ratio / budget,
        None => 1.0,
    };
    let burn_rates: Vec<_> = BURN_WINDOWS
        .iter()
        .map(|w| (*w, burn_rate(counts.over(now_ms, w.duration_ms()), budget)))
        .collect();
    let rate = |w: BurnWindow| {
        burn_rates
            .iter()
            .find(|(x, _)| *x == w)
            .and_then(|(_, r)| *r)
    };
    let alerts = WORKBOOK_ALERTS
        .iter()
        .filter(|(long, short, threshold, _)| {
            rate(*long).is_some_and(|r| r > *threshold)
                && rate(*short).is_some_and(|r| r > *threshold)
        })
        .map(|(long, short, threshold, severity)| {
            format!(
                "{severity}: burn rate above {threshold} over {} and {}",
                long.as_str(),
                short.as_str()
            )
        })
        .collect();
    SloStatus {
        window,
        attained_percent: window.error_ratio().map(|r| (1.0 - r) * 100.0),
        error_budget_remaining: remaining,
        exhausted: window.total > 0 && remaining <= 0.0,
        burn_rates,
        alerts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target_percent: f64, window_ms: u64) -> SloSpec {
        SloSpec {
            name: "checkout".into(),
            unit: UnitName::new("rules").unwrap(),
            selector: Labels::new(),
            target_percent,
            window_ms,
            block_rollouts_when_exhausted: true,
            description: String::new(),
            prometheus: None,
        }
    }

    /// A steady series: `per_minute` events a minute, `bad_per_minute` bad, for `minutes`
    /// minutes ending at `end_ms`.
    fn steady(counts: &mut SloCounts, end_ms: u64, minutes: u64, per_minute: u64, bad: u64) {
        for m in 0..minutes {
            counts.record(end_ms - m * MINUTE_MS, per_minute, bad);
        }
    }

    #[test]
    fn windows_parse_and_refuse_clearly() {
        assert_eq!(parse_window_ms("30d").unwrap(), 30 * DAY_MS);
        assert_eq!(parse_window_ms("12h").unwrap(), 12 * HOUR_MS);
        assert_eq!(format_window(30 * DAY_MS), "30d");
        assert_eq!(format_window(12 * HOUR_MS), "12h");
        for bad in ["", "30", "d", "1.5d", "30m", "-1d", "0h"] {
            let error = parse_window_ms(bad).unwrap_err().to_string();
            assert!(error.starts_with("window: "), "{bad}: {error}");
        }
        assert_eq!(
            parse_window_ms("91d").unwrap_err().to_string(),
            "window: \"91d\" is outside 1h to 90d"
        );
    }

    #[test]
    fn a_target_outside_zero_to_a_hundred_is_refused() {
        for target in [0.0, 100.0, -1.0, 100.5, f64::NAN] {
            let error = spec(target, DAY_MS).validate().unwrap_err().to_string();
            assert!(error.starts_with("target_percent: "), "{error}");
        }
        spec(99.9, 30 * DAY_MS).validate().unwrap();
        let mut bad = spec(99.9, 30 * DAY_MS);
        bad.name = "Bad Name".into();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("name: ")
        );
    }

    #[test]
    fn a_steady_error_ratio_burns_at_ratio_over_budget_in_every_window() {
        // 99.9%: budget 0.1%. 1 bad in 100 = 1% errors = burn rate 10.
        let slo = spec(99.9, 30 * DAY_MS);
        let now = 10 * DAY_MS;
        let mut counts = SloCounts::default();
        steady(&mut counts, now, 4 * 24 * 60, 100, 1);
        let status = status(&slo, &counts, now);
        for (window, rate) in &status.burn_rates {
            let rate = rate.unwrap();
            assert!((rate - 10.0).abs() < 1e-9, "{}: {rate}", window.as_str());
        }
        // Over the 30-day window only 4 days have events: 1% errors overspend the budget.
        assert!((status.error_budget_remaining - (1.0 - 10.0)).abs() < 1e-9);
        assert!(status.exhausted);
        assert_eq!(
            status.attained_percent.map(|p| (p * 1e6).round()),
            Some(99e6)
        );
    }

    #[test]
    fn the_workbook_pairs_fire_only_when_both_windows_burn() {
        let slo = spec(99.9, 30 * DAY_MS);
        let now = 10 * DAY_MS;
        // An hour of clean traffic, then 5 minutes at 2% errors (burn 20 over 5m), the hour
        // before clean: 1h burn = 20 * 5/60 = 1.67, so the 14.4 page does not fire (the 3d
        // and 6h windows hold only this hour: 1.67 > 1 opens a ticket).
        let mut counts = SloCounts::default();
        steady(&mut counts, now - 5 * MINUTE_MS, 55, 1000, 0);
        steady(&mut counts, now, 5, 1000, 20);
        let s = status(&slo, &counts, now);
        assert!((s.burn_rate(BurnWindow::M5).unwrap() - 20.0).abs() < 1e-9);
        assert!((s.burn_rate(BurnWindow::H1).unwrap() - 20.0 * 5.0 / 60.0).abs() < 1e-9);
        assert_eq!(
            s.alerts,
            vec!["ticket: burn rate above 1 over 3d and 6h".to_owned()]
        );
        // A whole hour at 2% errors: both 1h and 5m burn at 20 > 14.4: the fast page fires;
        // the 6h window (5h clean before it) burns at 20/6 < 6: the slow page does not.
        // The 3d window holds these 6 hours only: 20/6 > 1 with the 6h one: a ticket.
        let mut counts = SloCounts::default();
        steady(&mut counts, now - HOUR_MS, 5 * 60, 1000, 0);
        steady(&mut counts, now, 60, 1000, 20);
        let s = status(&slo, &counts, now);
        assert!((s.burn_rate(BurnWindow::H6).unwrap() - 20.0 / 6.0).abs() < 1e-9);
        assert_eq!(
            s.alerts,
            vec![
                "page: burn rate above 14.4 over 1h and 5m".to_owned(),
                "ticket: burn rate above 1 over 3d and 6h".to_owned()
            ]
        );
        // A steady 0.7% errors for 3 days: burn 7 > 6 (6h and 30m) and > 1 (3d and 6h), < 14.4.
        let mut counts = SloCounts::default();
        steady(&mut counts, now, 3 * 24 * 60, 1000, 7);
        let s = status(&slo, &counts, now);
        assert_eq!(
            s.alerts,
            vec![
                "page: burn rate above 6 over 6h and 30m".to_owned(),
                "ticket: burn rate above 1 over 3d and 6h".to_owned()
            ]
        );
    }

    #[test]
    fn no_events_means_no_burn_rate_and_a_whole_budget() {
        let slo = spec(99.0, DAY_MS);
        let s = status(&slo, &SloCounts::default(), DAY_MS);
        assert!(s.burn_rates.iter().all(|(_, r)| r.is_none()));
        assert_eq!(s.error_budget_remaining, 1.0);
        assert!(!s.exhausted);
        assert_eq!(s.attained_percent, None);
    }

    #[test]
    fn budget_remaining_counts_only_the_window_and_buckets_stay_bounded() {
        // 99%: budget 1%. Half the budget spent inside a 1-day window; errors before it
        // do not count.
        let slo = spec(99.0, DAY_MS);
        let now = 20 * DAY_MS;
        let mut counts = SloCounts::default();
        steady(&mut counts, now - 2 * DAY_MS, 60, 100, 100);
        steady(&mut counts, now, 24 * 60, 1000, 5);
        counts.prune(now, slo.window_ms);
        let s = status(&slo, &counts, now);
        assert!((s.error_budget_remaining - 0.5).abs() < 1e-9, "{s:?}");
        assert!(!s.exhausted);
        // Ten days of traffic keep at most 3 days of minutes and the window's hours.
        let mut counts = SloCounts::default();
        steady(&mut counts, now, 10 * 24 * 60, 10, 0);
        counts.prune(now, slo.window_ms);
        let (minutes, hours) = counts.buckets();
        assert!((MINUTE_BUCKETS_MAX - 1..=MINUTE_BUCKETS_MAX).contains(&minutes));
        assert!(hours <= 25, "{hours}");
    }

    #[test]
    fn buckets_read_back_restore_the_same_counts() {
        let slo = spec(99.0, 2 * DAY_MS);
        let now = 5 * DAY_MS;
        let mut counts = SloCounts::default();
        steady(&mut counts, now, 36 * 60, 10, 1);
        let mut restored = SloCounts::default();
        for minute in (now - 3 * DAY_MS) / MINUTE_MS..=now / MINUTE_MS {
            let c = counts.bucket(MINUTE_MS, minute);
            if c.total > 0 {
                restored.restore(MINUTE_MS, minute, c);
            }
        }
        for hour in (now - 2 * DAY_MS) / HOUR_MS..=now / HOUR_MS {
            let c = counts.bucket(HOUR_MS, hour);
            if c.total > 0 {
                restored.restore(HOUR_MS, hour, c);
            }
        }
        assert_eq!(restored, counts);
        assert_eq!(status(&slo, &restored, now), status(&slo, &counts, now));
        // Restoring a bucket again replaces it, never adds.
        let minute = now / MINUTE_MS;
        restored.restore(MINUTE_MS, minute, counts.bucket(MINUTE_MS, minute));
        assert_eq!(restored, counts);
    }

    #[test]
    fn out_of_order_events_land_in_their_own_bucket() {
        let mut counts = SloCounts::default();
        counts.record(10 * MINUTE_MS, 10, 1);
        counts.record(5 * MINUTE_MS, 10, 2);
        counts.record(10 * MINUTE_MS + 1, 10, 0);
        assert_eq!(counts.buckets().0, 2);
        assert_eq!(
            counts.over(10 * MINUTE_MS, 5 * MINUTE_MS),
            EventCounts { total: 20, bad: 1 }
        );
        assert_eq!(
            counts.over(10 * MINUTE_MS, 6 * MINUTE_MS),
            EventCounts { total: 30, bad: 3 }
        );
    }
}
