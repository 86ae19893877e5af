//! Freeze windows and maintenance windows: data the engine judges at the `now` it is given.
//!
//! A [`Freeze`] blocks starting a rollout and entering its next stage while its [`Window`]
//! contains `now` (rollbacks are never blocked). Its [`FreezeScope`] says which rollouts: every
//! one, one unit's, or those whose next stage would expose a node matching a label selector.
//! A [`Maintenance`] window takes the nodes matching its selector out of canaries and
//! baselines from `from_ms` until `until_ms`.
//!
//! Architecture invariant: nothing here reads a clock. A weekly window's wall-clock times are
//! read in its IANA time zone through `jiff`'s bundled time-zone database (no file is read), so
//! the same instant gives the same verdict on every machine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::domain::{TimeMs, UnitName};
use crate::plan::Selector;

/// Most freezes the engine keeps (lifted and ended ones are forgotten; the changelog keeps them).
pub const MAX_FREEZES: usize = 1_000;
/// Most maintenance windows the engine keeps.
pub const MAX_MAINTENANCE: usize = 1_000;
/// The longest one-off window: a year.
pub const MAX_WINDOW_MS: u64 = 366 * 24 * 3_600_000;
/// Most bytes in a time zone name.
pub const MAX_TIME_ZONE_BYTES: usize = 64;
/// Most labels in a window's selector, and values per label.
pub const MAX_SELECTOR_LABELS: usize = 32;
pub const MAX_SELECTOR_VALUES: usize = 64;
/// A recurring window is looked at again at every minute boundary.
pub const RECURRING_CHECK_MS: u64 = 60_000;

/// Days of the week, as in a recurring window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    pub const ALL: [Day; 7] = [
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ];

    pub fn parse(text: &str) -> Option<Day> {
        Self::ALL
            .into_iter()
            .find(|day| day.as_str().eq_ignore_ascii_case(text))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Day::Mon => "mon",
            Day::Tue => "tue",
            Day::Wed => "wed",
            Day::Thu => "thu",
            Day::Fri => "fri",
            Day::Sat => "sat",
            Day::Sun => "sun",
        }
    }

    fn of(weekday: jiff::civil::Weekday) -> Day {
        match weekday {
            jiff::civil::Weekday::Monday => Day::Mon,
            jiff::civil::Weekday::Tuesday => Day::Tue,
            jiff::civil::Weekday::Wednesday => Day::Wed,
            jiff::civil::Weekday::Thursday => Day::Thu,
            jiff::civil::Weekday::Friday => Day::Fri,
            jiff::civil::Weekday::Saturday => Day::Sat,
            jiff::civil::Weekday::Sunday => Day::Sun,
        }
    }
}

/// When a freeze holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Window {
    /// From `from_ms` (inclusive) until `until_ms` (exclusive); `until_ms: None` holds until
    /// lifted (a stop-the-line freeze).
    Once {
        from_ms: TimeMs,
        #[serde(default)]
        until_ms: Option<TimeMs>,
    },
    /// Every week on `days`, from `start_minute` until `end_minute` (minutes after midnight,
    /// `start_minute < end_minute <= 1440`) of the wall clock in `time_zone` (IANA, e.g.
    /// `Europe/Paris`).
    Weekly {
        days: Vec<Day>,
        start_minute: u16,
        end_minute: u16,
        time_zone: String,
    },
}

/// Why a window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
}

fn invalid(field: &'static str, why: impl Into<String>) -> WindowError {
    WindowError::Invalid {
        field,
        why: why.into(),
    }
}

impl Window {
    /// Checks the window on its own: an order of times, a known time zone, bounded sizes.
    pub fn validate(&self) -> Result<(), WindowError> {
        match self {
            Window::Once { from_ms, until_ms } => {
                if let Some(until_ms) = until_ms {
                    if until_ms <= from_ms {
                        return Err(invalid("until", "expected a time after `from`"));
                    }
                    if until_ms - from_ms > MAX_WINDOW_MS {
                        return Err(invalid("until", "a window lasts at most 366 days"));
                    }
                }
                Ok(())
            }
            Window::Weekly {
                days,
                start_minute,
                end_minute,
                time_zone,
            } => {
                if days.is_empty() || days.len() > 7 {
                    return Err(invalid("days", "expected 1 to 7 days, e.g. fri,sat"));
                }
                if start_minute >= end_minute || *end_minute > 1440 {
                    return Err(invalid(
                        "start, end",
                        "expected HH:MM-HH:MM with the start before the end, within one day",
                    ));
                }
                if time_zone.len() > MAX_TIME_ZONE_BYTES {
                    return Err(invalid("time_zone", "longer than 64 bytes"));
                }
                jiff::tz::TimeZone::get(time_zone).map_err(|_| {
                    invalid(
                        "time_zone",
                        format!("{time_zone:?} is not an IANA time zone, e.g. Europe/Paris or UTC"),
                    )
                })?;
                Ok(())
            }
        }
    }

    /// Whether the window holds at `now_ms`.
    pub fn contains(&self, now_ms: TimeMs) -> bool {
        match self {
            Window::Once { from_ms, until_ms } => {
                now_ms >= *from_ms && until_ms.is_none_or(|until| now_ms < until)
            }
            Window::Weekly {
                days,
                start_minute,
                end_minute,
                time_zone,
            } => {
                let Ok(zone) = jiff::tz::TimeZone::get(time_zone) else {
                    return false;
                };
                let Ok(millis) = i64::try_from(now_ms) else {
                    return false;
                };
                let Ok(at) = jiff::Timestamp::from_millisecond(millis) else {
                    return false;
                };
                let local = at.to_zoned(zone);
                let minute = u16::try_from(local.hour())
                    .unwrap_or(0)
                    .saturating_mul(60)
                    .saturating_add(u16::try_from(local.minute()).unwrap_or(0));
                days.contains(&Day::of(local.weekday()))
                    && minute >= *start_minute
                    && minute < *end_minute
            }
        }
    }

    /// Whether the window can never hold again after `now_ms`.
    pub fn ended(&self, now_ms: TimeMs) -> bool {
        matches!(self, Window::Once { until_ms: Some(until), .. } if now_ms >= *until)
    }

    /// The next instant after `now_ms` at which [`Self::contains`] may change.
    pub fn next_change_ms(&self, now_ms: TimeMs) -> Option<TimeMs> {
        match self {
            Window::Once { from_ms, until_ms } => {
                if *from_ms > now_ms {
                    Some(*from_ms)
                } else {
                    until_ms.filter(|until| *until > now_ms)
                }
            }
            Window::Weekly { .. } => Some(
                (now_ms / RECURRING_CHECK_MS)
                    .saturating_add(1)
                    .saturating_mul(RECURRING_CHECK_MS),
            ),
        }
    }

    /// For people: `2026-12-04T10:00:00Z .. 2026-12-05T10:00:00Z`, `from ... until lifted`,
    /// `weekly fri,sat 16:00-23:59 Europe/Paris`.
    pub fn describe(&self) -> String {
        match self {
            Window::Once { from_ms, until_ms } => match until_ms {
                Some(until) => format!(
                    "{} .. {}",
                    crate::domain::rfc3339_from_ms(*from_ms),
                    crate::domain::rfc3339_from_ms(*until)
                ),
                None => format!(
                    "from {} until lifted",
                    crate::domain::rfc3339_from_ms(*from_ms)
                ),
            },
            Window::Weekly {
                days,
                start_minute,
                end_minute,
                time_zone,
            } => format!(
                "weekly {} {}-{} {time_zone}",
                days.iter()
                    .map(|d| d.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                format_minute(*start_minute),
                format_minute(*end_minute)
            ),
        }
    }
}

fn format_minute(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// `HH:MM` (or `24:00`) as minutes after midnight.
pub fn parse_minute(text: &str) -> Option<u16> {
    let (hours, minutes) = text.split_once(':')?;
    let hours: u16 = hours.parse().ok()?;
    let minutes: u16 = minutes.parse().ok()?;
    let total = hours.checked_mul(60)?.checked_add(minutes)?;
    (minutes < 60 && total <= 1440).then_some(total)
}

/// An RFC 3339 instant (`2026-12-04T10:00:00Z`, `2026-12-04T11:00:00+01:00`) as milliseconds
/// since the Unix epoch; `None` when it is not one or is before 1970.
pub fn parse_rfc3339_ms(text: &str) -> Option<TimeMs> {
    let at: jiff::Timestamp = text.parse().ok()?;
    u64::try_from(at.as_millisecond()).ok()
}

/// What a freeze covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FreezeScope {
    /// Every unit.
    Global,
    /// One unit's rollouts.
    Unit { unit: UnitName },
    /// Rollouts whose next stage would expose a node matching the selector.
    Nodes { selector: Selector },
}

impl FreezeScope {
    pub fn describe(&self) -> String {
        match self {
            FreezeScope::Global => "every unit".to_owned(),
            FreezeScope::Unit { unit } => format!("unit {unit}"),
            FreezeScope::Nodes { selector } => format!("nodes {}", describe_selector(selector)),
        }
    }
}

/// `region=eu,us cohort=free` (`every node` for an empty selector).
pub fn describe_selector(selector: &Selector) -> String {
    if selector.labels.is_empty() {
        return "every node".to_owned();
    }
    selector
        .labels
        .iter()
        .map(|(key, values)| format!("{key}={}", values.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a window's selector against its limits.
pub fn validate_selector(selector: &Selector) -> Result<(), WindowError> {
    if selector.labels.len() > MAX_SELECTOR_LABELS {
        return Err(invalid("selector", "more than 32 labels"));
    }
    for (key, values) in &selector.labels {
        if key.is_empty() || key.len() > crate::engine::MAX_LABEL_BYTES {
            return Err(invalid("selector", "a label key must have 1 to 256 bytes"));
        }
        if values.is_empty() || values.len() > MAX_SELECTOR_VALUES {
            return Err(invalid(
                "selector",
                format!("label {key:?}: expected 1 to 64 values"),
            ));
        }
        if values
            .iter()
            .any(|v| v.len() > crate::engine::MAX_LABEL_BYTES)
        {
            return Err(invalid(
                "selector",
                format!("label {key:?}: a value has more than 256 bytes"),
            ));
        }
    }
    Ok(())
}

/// A freeze: no rollout in its scope starts or enters a new stage while its window holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub id: u64,
    pub scope: FreezeScope,
    pub window: Window,
    pub reason: String,
    pub actor: String,
    pub created_ms: TimeMs,
}

impl Freeze {
    pub fn validate(&self) -> Result<(), WindowError> {
        self.window.validate()?;
        if let FreezeScope::Nodes { selector } = &self.scope {
            validate_selector(selector)?;
        }
        if self.reason.trim().is_empty() {
            return Err(invalid("reason", "a freeze needs a reason people can read"));
        }
        Ok(())
    }
}

/// A maintenance window: its nodes count in no canary and no baseline while it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub id: u64,
    pub selector: Selector,
    pub from_ms: TimeMs,
    pub until_ms: TimeMs,
    pub reason: String,
    pub actor: String,
    pub created_ms: TimeMs,
}

impl Maintenance {
    pub fn window(&self) -> Window {
        Window::Once {
            from_ms: self.from_ms,
            until_ms: Some(self.until_ms),
        }
    }

    pub fn validate(&self) -> Result<(), WindowError> {
        self.window().validate()?;
        validate_selector(&self.selector)?;
        if self.selector.labels.is_empty() {
            return Err(invalid(
                "selector",
                "a maintenance window names its nodes by label (an empty selector is the whole fleet)",
            ));
        }
        if self.reason.trim().is_empty() {
            return Err(invalid("reason", "a maintenance window needs a reason"));
        }
        Ok(())
    }
}

/// Ended windows remembered (the latest, by id), so that lifting or ending one again says it
/// ended rather than that it never was.
pub const ENDED_WINDOWS_KEPT: usize = 1_024;

/// Which kind of window an id was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Freeze,
    Maintenance,
}

/// A window that is over: its kind, when it ended, and whether a person ended it early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedWindow {
    pub kind: WindowKind,
    pub ended_ms: TimeMs,
    pub early: bool,
}

/// The windows the engine keeps, and which of them hold at the engine's latest `now`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Windows {
    pub freezes: BTreeMap<u64, Freeze>,
    pub maintenance: BTreeMap<u64, Maintenance>,
    /// The next id a window gets (ids are shared by freezes and maintenance windows).
    pub next_id: u64,
    /// The freezes holding, as of the last look.
    pub active_freezes: BTreeSet<u64>,
    /// Whether some maintenance window held at the last look.
    pub maintenance_active: bool,
    /// When the windows must be looked at again (a window starts or ends).
    pub next_check_ms: TimeMs,
    /// The latest [`ENDED_WINDOWS_KEPT`] windows that ended, by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ended: BTreeMap<u64, EndedWindow>,
}

impl Windows {
    /// Remembers that window `id` ended, forgetting the oldest past [`ENDED_WINDOWS_KEPT`].
    pub fn remember_ended(&mut self, id: u64, ended: EndedWindow) {
        self.ended.insert(id, ended);
        while self.ended.len() > ENDED_WINDOWS_KEPT {
            self.ended.pop_first();
        }
    }

    /// The next id to give a window (ids start at 1).
    pub fn next_id(&self) -> u64 {
        self.next_id.max(1)
    }

    /// The earliest instant after `now_ms` at which a window starts or ends.
    pub fn next_change_ms(&self, now_ms: TimeMs) -> Option<TimeMs> {
        self.freezes
            .values()
            .map(|freeze| &freeze.window)
            .cloned()
            .chain(self.maintenance.values().map(Maintenance::window))
            .filter_map(|window| window.next_change_ms(now_ms))
            .min()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ended_windows_are_remembered_up_to_their_bound_oldest_first_out() {
        let mut windows = Windows::default();
        let ended = EndedWindow {
            kind: WindowKind::Maintenance,
            ended_ms: 1,
            early: false,
        };
        for id in 1..=(ENDED_WINDOWS_KEPT as u64 + 6) {
            windows.remember_ended(id, ended);
        }
        assert_eq!(windows.ended.len(), ENDED_WINDOWS_KEPT);
        assert_eq!(windows.ended.keys().next(), Some(&7));
    }

    use super::*;

    fn at(text: &str) -> TimeMs {
        parse_rfc3339_ms(text).unwrap()
    }

    #[test]
    fn a_weekly_window_reads_the_wall_clock_of_its_time_zone() {
        let window = Window::Weekly {
            days: vec![Day::Fri],
            start_minute: parse_minute("16:00").unwrap(),
            end_minute: parse_minute("24:00").unwrap(),
            time_zone: "Europe/Paris".to_owned(),
        };
        window.validate().unwrap();
        // Friday 4 December 2026: Paris is UTC+1.
        assert!(!window.contains(at("2026-12-04T14:59:00Z")));
        assert!(window.contains(at("2026-12-04T15:00:00Z")));
        assert!(window.contains(at("2026-12-04T22:59:00Z")));
        assert!(!window.contains(at("2026-12-04T23:00:00Z")));
        // A Friday in summer: UTC+2.
        assert!(window.contains(at("2026-07-03T14:00:00Z")));
        assert!(!window.contains(at("2026-07-03T13:59:00Z")));
        assert_eq!(
            window.next_change_ms(at("2026-12-04T14:59:30Z")),
            Some(at("2026-12-04T15:00:00Z"))
        );
    }

    #[test]
    fn bad_windows_are_refused_with_the_field() {
        let bad_zone = Window::Weekly {
            days: vec![Day::Mon],
            start_minute: 0,
            end_minute: 60,
            time_zone: "Mars/Olympus".to_owned(),
        };
        assert!(
            bad_zone
                .validate()
                .unwrap_err()
                .to_string()
                .contains("time_zone")
        );
        let backwards = Window::Once {
            from_ms: 10,
            until_ms: Some(5),
        };
        assert!(
            backwards
                .validate()
                .unwrap_err()
                .to_string()
                .contains("until")
        );
        assert_eq!(parse_minute("24:01"), None);
        assert_eq!(parse_minute("9:30"), Some(570));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(
            parse_rfc3339_ms("2026-12-04T11:00:00+01:00"),
            Some(at("2026-12-04T10:00:00Z"))
        );
    }

    #[test]
    fn a_one_off_window_holds_from_its_start_until_its_end() {
        let window = Window::Once {
            from_ms: 100,
            until_ms: Some(200),
        };
        assert!(!window.contains(99));
        assert!(window.contains(100));
        assert!(!window.contains(200));
        assert!(window.ended(200));
        assert_eq!(window.next_change_ms(0), Some(100));
        assert_eq!(window.next_change_ms(150), Some(200));
        let open = Window::Once {
            from_ms: 100,
            until_ms: None,
        };
        assert!(open.contains(u64::MAX));
        assert!(!open.ended(u64::MAX));
    }
}
