//! The changelog as the operator API shows it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One changelog entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangeEntry {
    pub id: u64,
    /// ms since the Unix epoch.
    pub at_ms: u64,
    pub actor: String,
    pub kind: String,
    pub unit: Option<String>,
    pub version: Option<String>,
    pub reason: String,
    /// Which nodes the change concerns (`{"selectors": [...]}` or `{"node": {labels}}`);
    /// `null`: every node (fleet-wide).
    #[schema(value_type = Object, nullable = true)]
    pub concerns: Option<serde_json::Value>,
    /// The rollout the change belongs to (`rN`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u64>,
    /// The stage of that rollout it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The unit's team (its owner), while the unit exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// `GET /v1/changelog`: one page; `next_cursor` continues it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangelogPage {
    pub entries: Vec<ChangeEntry>,
    pub next_cursor: Option<u64>,
}
