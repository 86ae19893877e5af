//! Incidents: what opens one, their severities and statuses, and the update cadence.
//!
//! An incident is opened automatically, in the transaction of the changelog row that causes it
//! (`store::record_change` calls [`store::incidents::on_change`](crate::store)), by a rollback
//! (`rolled_back`), a fleet-unhealthy hold (`fleet_unhealthy`) or a break-glass use
//! (`break_glass`); or by hand (`POST /v1/incidents`). One incident is open per rollout at a
//! time: a second rollback of the same rollout lands in the open incident's timeline.
//!
//! Updates keep a cadence per severity ([`Cadence`]). [`cadence_step`] is pure: given an open
//! incident's last public update, whether the on-call was reminded, and `now`, it says whether
//! to remind (`incident_update_due`) or to publish a holding update ([`holding_text`]). The
//! server drives it from [`cadence_forever`] with its clock; tests drive it with their own.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::store::Store;

/// The changelog kinds that open an incident, with the severity each opens at.
pub const AUTO_OPEN_KINDS: [(&str, Severity); 3] = [
    ("rolled_back", Severity::Sev2),
    ("fleet_unhealthy", Severity::Sev1),
    ("break_glass", Severity::Sev2),
];

/// Longest title, update text and component name, in bytes.
pub const MAX_TITLE_BYTES: usize = failsmall_wire::requests::INCIDENT_TITLE_MAX_BYTES;
pub const MAX_UPDATE_BYTES: usize = failsmall_wire::requests::INCIDENT_UPDATE_MAX_BYTES;
pub const MAX_COMPONENT_BYTES: usize = failsmall_wire::requests::INCIDENT_COMPONENT_MAX_BYTES;
/// Most components one incident names.
pub const MAX_COMPONENTS: usize = failsmall_wire::requests::INCIDENT_COMPONENTS_MAX;
/// Longest post-incident review (markdown), in bytes.
pub const MAX_REVIEW_BYTES: usize = failsmall_wire::requests::INCIDENT_REVIEW_MAX_BYTES;
/// Most updates one incident keeps (past it, holding updates stop; people may still resolve).
pub const MAX_UPDATES_PER_INCIDENT: u64 = 1_000;
/// Most incidents listed at once (the status page and `GET /v1/incidents`).
pub const MAX_LISTED: u32 = 200;
/// Most changelog entries in one incident's timeline.
pub const MAX_TIMELINE_ENTRIES: u32 = 500;

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Sev1,
    Sev2,
    Sev3,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Self::Sev1, Self::Sev2, Self::Sev3];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sev1 => "sev1",
            Self::Sev2 => "sev2",
            Self::Sev3 => "sev3",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// PagerDuty's severity for it.
    pub fn pagerduty(self) -> &'static str {
        match self {
            Self::Sev1 => "critical",
            Self::Sev2 => "error",
            Self::Sev3 => "warning",
        }
    }

    /// A component's status on the status page while an incident of this severity is open.
    pub fn component_status(self) -> &'static str {
        match self {
            Self::Sev1 => "major_outage",
            Self::Sev2 => "partial_outage",
            Self::Sev3 => "degraded_performance",
        }
    }
}

/// Where an incident stands (as Statuspage names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Self::Investigating,
        Self::Identified,
        Self::Monitoring,
        Self::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Investigating => "investigating",
            Self::Identified => "identified",
            Self::Monitoring => "monitoring",
            Self::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// How often an open incident gets a public update, per severity, and how long before one is
/// due the on-call is reminded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    pub sev1_ms: u64,
    pub sev2_ms: u64,
    pub sev3_ms: u64,
    /// Remind this long before an update is due (at most half the cadence).
    pub remind_before_ms: u64,
    /// How often the server looks for due updates.
    pub poll_ms: u64,
}

const MINUTE_MS: u64 = 60_000;

impl Default for Cadence {
    fn default() -> Self {
        Self {
            sev1_ms: 30 * MINUTE_MS,
            sev2_ms: 60 * MINUTE_MS,
            sev3_ms: 120 * MINUTE_MS,
            remind_before_ms: 10 * MINUTE_MS,
            poll_ms: 15_000,
        }
    }
}

impl Cadence {
    pub fn every_ms(&self, severity: Severity) -> u64 {
        match severity {
            Severity::Sev1 => self.sev1_ms,
            Severity::Sev2 => self.sev2_ms,
            Severity::Sev3 => self.sev3_ms,
        }
        .max(1)
    }

    /// Every cadence is at least a minute and the reminder within it.
    pub fn validate(&self) -> Result<(), String> {
        for severity in Severity::ALL {
            if self.every_ms(severity) < MINUTE_MS {
                return Err(format!(
                    "the {} update cadence is {} ms; expected at least one minute",
                    severity.as_str(),
                    self.every_ms(severity)
                ));
            }
        }
        Ok(())
    }
}

/// What an open incident needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CadenceAction {
    /// An update is due soon: remind the on-call (`incident_update_due`).
    Remind { due_ms: u64 },
    /// The update is due and nobody wrote one: publish a holding update.
    Hold,
}

/// The cadence's decision for one open incident whose last public update was at
/// `last_update_ms`, last reminded at `reminded_ms` (if ever). Pure: no clock, no store.
pub fn cadence_step(
    cadence: &Cadence,
    severity: Severity,
    last_update_ms: u64,
    reminded_ms: Option<u64>,
    now_ms: u64,
) -> Option<CadenceAction> {
    let every = cadence.every_ms(severity);
    let due_ms = last_update_ms.saturating_add(every);
    if now_ms >= due_ms {
        return Some(CadenceAction::Hold);
    }
    let remind_before = cadence.remind_before_ms.min(every / 2);
    let reminded_since_update = reminded_ms.is_some_and(|at| at >= last_update_ms);
    (now_ms >= due_ms.saturating_sub(remind_before) && !reminded_since_update)
        .then_some(CadenceAction::Remind { due_ms })
}

/// `HH:MM` of a time, in UTC.
pub fn hh_mm_utc(at_ms: u64) -> String {
    let minutes_of_day = (at_ms / MINUTE_MS) % (24 * 60);
    format!("{:02}:{:02}", minutes_of_day / 60, minutes_of_day % 60)
}

/// The holding update's public text: says where things stand and when the last update was,
/// and nothing internal.
pub fn holding_text(status: Status, last_update_ms: u64) -> String {
    let doing = match status {
        Status::Investigating => "We are still investigating",
        Status::Identified => "We are still working on a fix",
        Status::Monitoring | Status::Resolved => "We are still monitoring",
    };
    format!(
        "{doing}; no new changes since {} UTC. We will post again by the next update.",
        hh_mm_utc(last_update_ms)
    )
}

/// The public title and first update of an incident a changelog kind opens.
pub fn auto_text(kind: &str, unit: Option<&str>) -> (String, String) {
    let component = unit.unwrap_or("the service");
    match kind {
        "rolled_back" => (
            format!("Configuration change to {component} rolled back"),
            format!(
                "A configuration change to {component} was rolled back after it degraded \
                 service. We are investigating."
            ),
        ),
        "fleet_unhealthy" => (
            format!("Degraded service affecting {component}"),
            format!(
                "We are seeing degraded service affecting {component} and have paused \
                 configuration changes. We are investigating."
            ),
        ),
        _ => (
            format!("Emergency change to {component}"),
            format!("An emergency change to {component} is in progress. We are investigating."),
        ),
    }
}

/// The severity an auto-opening kind opens at, if it opens one.
pub fn auto_open_severity(kind: &str) -> Option<Severity> {
    AUTO_OPEN_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, severity)| *severity)
}

/// The incident an incident changelog row is about: its reason begins `incident ID SEV`.
pub fn incident_of_reason(reason: &str) -> Option<(u64, Option<Severity>)> {
    let mut words = reason.split_whitespace();
    if words.next() != Some("incident") {
        return None;
    }
    let id = words.next()?.trim_end_matches(':').parse().ok()?;
    Some((id, words.next().and_then(Severity::parse)))
}

/// Publishes holding updates and reminders on the cadence until the task is dropped.
pub async fn cadence_forever(store: Arc<Store>, cadence: Cadence, now_ms: fn() -> u64) {
    loop {
        let store = Arc::clone(&store);
        let ran =
            tokio::task::spawn_blocking(move || store.incidents_cadence(&cadence, now_ms())).await;
        match ran {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "incidents: the update cadence failed"),
            Err(error) => tracing::error!(%error, "incidents: cadence task failed"),
        }
        tokio::time::sleep(Duration::from_millis(cadence.poll_ms.max(100))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = MINUTE_MS;

    #[test]
    fn reminds_once_before_due_then_holds_when_due() {
        let cadence = Cadence::default();
        let sev1 = Severity::Sev1;
        assert_eq!(cadence_step(&cadence, sev1, 0, None, 0), None);
        assert_eq!(cadence_step(&cadence, sev1, 0, None, 19 * M), None);
        assert_eq!(
            cadence_step(&cadence, sev1, 0, None, 20 * M),
            Some(CadenceAction::Remind { due_ms: 30 * M })
        );
        // Reminded at 20m: not again before it is due.
        assert_eq!(cadence_step(&cadence, sev1, 0, Some(20 * M), 25 * M), None);
        assert_eq!(
            cadence_step(&cadence, sev1, 0, Some(20 * M), 30 * M),
            Some(CadenceAction::Hold)
        );
        // A reminder from before the last update does not count.
        assert_eq!(
            cadence_step(&cadence, sev1, 30 * M, Some(20 * M), 50 * M),
            Some(CadenceAction::Remind { due_ms: 60 * M })
        );
    }

    #[test]
    fn each_severity_keeps_its_own_cadence_and_the_reminder_fits_in_it() {
        let cadence = Cadence {
            sev1_ms: 2 * M,
            ..Cadence::default()
        };
        // The reminder is at most half the cadence: at 1m, not at 0.
        assert_eq!(cadence_step(&cadence, Severity::Sev1, 0, None, 0), None);
        assert!(matches!(
            cadence_step(&cadence, Severity::Sev1, 0, None, M),
            Some(CadenceAction::Remind { .. })
        ));
        assert_eq!(
            cadence_step(&cadence, Severity::Sev2, 0, None, 59 * M),
            Some(CadenceAction::Remind { due_ms: 60 * M })
        );
        assert_eq!(
            cadence_step(&cadence, Severity::Sev3, 0, None, 60 * M),
            None
        );
        assert_eq!(
            cadence_step(&cadence, Severity::Sev3, 0, None, 120 * M),
            Some(CadenceAction::Hold)
        );
        assert!(
            Cadence {
                sev3_ms: 1,
                ..cadence
            }
            .validate()
            .is_err()
        );
        assert!(cadence.validate().is_ok());
    }

    /// Simulated time over a long incident: whatever the poll interval, no public update is
    /// more than the cadence plus one poll late, and each gap gets one reminder first.
    #[test]
    fn over_a_long_incident_no_update_is_more_than_a_poll_late() {
        let cadence = Cadence::default();
        for (severity, poll_ms) in [
            (Severity::Sev1, 15_000),
            (Severity::Sev2, 7_000),
            (Severity::Sev3, 60_000),
        ] {
            let (mut last, mut reminded, mut reminders, mut holds) = (0u64, None, 0u32, 0u32);
            let mut now = 0;
            while now < 48 * 60 * M {
                now += poll_ms;
                match cadence_step(&cadence, severity, last, reminded, now) {
                    Some(CadenceAction::Hold) => {
                        assert!(now - last <= cadence.every_ms(severity) + poll_ms);
                        last = now;
                        holds += 1;
                    }
                    Some(CadenceAction::Remind { .. }) => {
                        reminded = Some(now);
                        reminders += 1;
                    }
                    None => {}
                }
            }
            assert!(
                holds
                    >= u32::try_from(48 * 60 * M / (cadence.every_ms(severity) + poll_ms)).unwrap()
            );
            assert_eq!(
                reminders,
                holds + u32::from(reminders > holds),
                "{severity:?}"
            );
        }
    }

    #[test]
    fn the_holding_text_names_the_last_update_time_and_nothing_else() {
        // 2026-12-04T13:07:00Z
        let at = 1_796_389_620_000;
        assert_eq!(hh_mm_utc(at), "13:07");
        assert_eq!(
            holding_text(Status::Investigating, at),
            "We are still investigating; no new changes since 13:07 UTC. We will post again by the next update."
        );
    }

    #[test]
    fn an_incident_row_names_its_incident() {
        assert_eq!(
            incident_of_reason("incident 12 sev1 opened: x"),
            Some((12, Some(Severity::Sev1)))
        );
        assert_eq!(incident_of_reason("incident 3: resolved"), Some((3, None)));
        assert_eq!(incident_of_reason("rollout 3"), None);
    }
}
