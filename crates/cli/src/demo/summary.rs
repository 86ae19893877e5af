//! What each act of the demo concluded, and how it is printed: a table for people, JSON for
//! scripts. Pure: no IO here.

use serde::Serialize;

/// How an act ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActOutcome {
    /// The version passed every stage.
    Completed,
    /// A gate or a hard signal failed and every exposed node was put back.
    RolledBack,
    /// The rollout was aborted.
    Aborted,
    /// The act's time limit passed before the rollout ended.
    Unfinished,
}

impl ActOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
            Self::Unfinished => "unfinished",
        }
    }

    /// The outcome named by a rollout's `status`, when it has ended.
    pub fn of_status(status: &str) -> Option<Self> {
        match status {
            "completed" => Some(Self::Completed),
            "rolled_back" => Some(Self::RolledBack),
            "aborted" => Some(Self::Aborted),
            _ => None,
        }
    }
}

/// One act's line of the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActSummary {
    /// 1, 2, 3.
    pub act: u32,
    /// A short name: `good`, `nov18`, `dec5`.
    pub name: String,
    pub unit: String,
    pub outcome: ActOutcome,
    /// What a correct system does with this act.
    pub expected: ActOutcome,
    /// Nodes the rollout reached (the union over the stages it entered).
    pub nodes_exposed: u64,
    pub nodes_total: u64,
    /// Nodes the plan's first stage selects.
    pub first_stage_nodes: u64,
    /// Requests the consumers answered with an error during the act.
    pub requests_failed: u64,
    /// From the push to the rollback decision, in seconds; `null` when nothing failed.
    pub detect_s: Option<f64>,
    /// From the rollback decision until no node serves the version any more, in seconds.
    pub revert_s: Option<f64>,
    /// The incident the act's rollback opened (on the public status page), if any.
    pub incident: Option<IncidentBrief>,
}

/// An incident as the demo shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentBrief {
    pub id: u64,
    pub severity: String,
    pub title: String,
    /// What the demo's webhook receiver got for it (`null` when nothing arrived in time).
    pub notified: Option<NotifiedBrief>,
}

/// A notification the demo's own webhook receiver got, as the demo shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotifiedBrief {
    /// The event (`incident_opened`).
    pub event: String,
    /// The incident the generic (signed JSON) payload names.
    pub incident: Option<u64>,
    /// The key a receiver drops repeats by (`failsmall/incident/ID`).
    pub dedup_key: String,
    /// The delivery id, the same on every attempt.
    pub delivery: String,
    /// Whether the generic payload's HMAC-SHA256 signature matched the demo's secret.
    pub signature_ok: bool,
    /// The text the Slack-shaped subscription got for the same event.
    pub slack_text: Option<String>,
}

/// Milliseconds as seconds with one decimal, for JSON and tables.
pub fn seconds(ms: u64) -> f64 {
    // Exact for any duration a demo can have (below 2^53 ms).
    let tenths = ms.saturating_add(50) / 100;
    tenths as f64 / 10.0
}

/// Whether every act ended as a correct system ends it.
pub fn all_as_expected(acts: &[ActSummary]) -> bool {
    !acts.is_empty() && acts.iter().all(|act| act.outcome == act.expected)
}

fn optional_seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"))
}

/// The summary table, one line per act, with a header.
pub fn table(acts: &[ActSummary]) -> String {
    let mut text = format!(
        "{:<4} {:<8} {:<13} {:<12} {:>14} {:>16} {:>8} {:>8}\n",
        "act", "name", "unit", "outcome", "nodes exposed", "requests failed", "detect", "revert"
    );
    for act in acts {
        let exposed = format!("{} of {}", act.nodes_exposed, act.nodes_total);
        text.push_str(&format!(
            "{:<4} {:<8} {:<13} {:<12} {:>14} {:>16} {:>8} {:>8}\n",
            act.act,
            act.name,
            act.unit,
            act.outcome.as_str(),
            exposed,
            act.requests_failed,
            optional_seconds(act.detect_s),
            optional_seconds(act.revert_s),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(number: u32, outcome: ActOutcome, expected: ActOutcome) -> ActSummary {
        ActSummary {
            act: number,
            name: format!("act{number}"),
            unit: "bot-features".into(),
            outcome,
            expected,
            nodes_exposed: 6,
            nodes_total: 30,
            first_stage_nodes: 6,
            requests_failed: 12,
            detect_s: Some(4.25),
            revert_s: None,
            incident: None,
        }
    }

    #[test]
    fn seconds_round_to_a_tenth() {
        assert_eq!(seconds(0), 0.0);
        assert_eq!(seconds(1_049), 1.0);
        assert_eq!(seconds(1_050), 1.1);
        assert_eq!(seconds(61_234), 61.2);
    }

    #[test]
    fn outcomes_read_from_rollout_status() {
        assert_eq!(
            ActOutcome::of_status("completed"),
            Some(ActOutcome::Completed)
        );
        assert_eq!(
            ActOutcome::of_status("rolled_back"),
            Some(ActOutcome::RolledBack)
        );
        assert_eq!(ActOutcome::of_status("aborted"), Some(ActOutcome::Aborted));
        assert_eq!(ActOutcome::of_status("running"), None);
        assert_eq!(ActOutcome::of_status("queued"), None);
    }

    #[test]
    fn expectation_needs_every_act_and_at_least_one() {
        let good = act(1, ActOutcome::Completed, ActOutcome::Completed);
        let reverted = act(2, ActOutcome::RolledBack, ActOutcome::RolledBack);
        let stuck = act(3, ActOutcome::Unfinished, ActOutcome::RolledBack);
        assert!(all_as_expected(&[good.clone(), reverted.clone()]));
        assert!(!all_as_expected(&[good, reverted, stuck]));
        assert!(!all_as_expected(&[]));
    }

    #[test]
    fn json_uses_the_documented_field_names() {
        let value =
            serde_json::to_value(act(2, ActOutcome::RolledBack, ActOutcome::RolledBack)).unwrap();
        assert_eq!(value["act"], 2);
        assert_eq!(value["outcome"], "rolled_back");
        assert_eq!(value["nodes_exposed"], 6);
        assert_eq!(value["nodes_total"], 30);
        assert_eq!(value["requests_failed"], 12);
        assert_eq!(value["detect_s"], 4.25);
        assert!(value["revert_s"].is_null());
    }

    #[test]
    fn table_has_a_line_per_act() {
        let text = table(&[
            act(1, ActOutcome::Completed, ActOutcome::Completed),
            act(2, ActOutcome::RolledBack, ActOutcome::RolledBack),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("act"));
        assert!(lines[2].contains("rolled_back"), "{text}");
        assert!(lines[2].contains("6 of 30"), "{text}");
        assert!(
            lines[2].contains("4.2s") || lines[2].contains("4.3s"),
            "{text}"
        );
    }
}
