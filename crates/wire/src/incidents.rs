//! Incidents as operators see them, and the public status page's JSON.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An incident, internal fields included: opening, updating, resolving and reviewing one
/// answer with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Incident {
    pub id: u64,
    /// Public.
    pub title: String,
    /// `sev1` (worst) to `sev3`.
    pub severity: String,
    /// `investigating`, `identified`, `monitoring` or `resolved`.
    pub status: String,
    /// Public: the units (or services) affected.
    pub components: Vec<String>,
    /// The node labels affected, where known.
    pub labels: Vec<String>,
    pub unit: Option<String>,
    pub rollout: Option<u64>,
    /// The changelog kind that opened it, or `manual`.
    pub cause: String,
    pub opened_by: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub opened: String,
    /// RFC 3339; `null` while open.
    #[schema(format = DateTime)]
    pub resolved: Option<String>,
    /// RFC 3339: the last public update.
    #[schema(format = DateTime)]
    pub last_update: String,
    /// RFC 3339: when the next public update is due by the severity's cadence; `null` once
    /// resolved.
    #[schema(format = DateTime)]
    pub next_update_due: Option<String>,
    /// The post-incident review (markdown), once written.
    pub review: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub review_at: Option<String>,
}

/// One public update of an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncidentUpdate {
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub at: String,
    pub status: String,
    pub severity: String,
    pub message: String,
    pub author: String,
    /// Written by the server (opened or resolved by a rollout), not a person.
    pub automatic: bool,
}

/// A changelog entry on an incident's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    pub id: u64,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub at: String,
    pub kind: String,
    pub actor: String,
    pub unit: Option<String>,
    pub version: Option<String>,
    pub rollout: Option<u64>,
    pub stage: Option<String>,
    pub reason: String,
}

/// `GET /v1/incidents/{id}`: the incident, its public updates (oldest first) and its
/// timeline from the changelog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: Incident,
    pub updates: Vec<IncidentUpdate>,
    pub timeline: Vec<TimelineEntry>,
}

/// `GET /v1/incidents`: open incidents and those resolved in the last `days`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncidentList {
    pub incidents: Vec<Incident>,
}

/// A public update on the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PublicUpdate {
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub at: String,
    pub status: String,
    pub message: String,
}

/// An incident on the status page: only what is public.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PublicIncident {
    pub id: u64,
    pub title: String,
    pub severity: String,
    pub status: String,
    pub components: Vec<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub opened: String,
    /// RFC 3339; `null` while open.
    #[schema(format = DateTime)]
    pub resolved: Option<String>,
    /// Newest first.
    pub updates: Vec<PublicUpdate>,
    /// The post-incident review (markdown), once written.
    pub review: Option<String>,
}

/// A component (a unit) on the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PublicComponent {
    pub name: String,
    /// `operational`, `degraded_performance`, `partial_outage` or `major_outage`.
    pub status: String,
}

/// `GET /status.json`: the public status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PublicStatus {
    /// `operational`, or the worst open incident's component status.
    pub status: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub updated: String,
    pub components: Vec<PublicComponent>,
    pub open: Vec<PublicIncident>,
    pub resolved: Vec<PublicIncident>,
    /// Resolved incidents of this many days are shown.
    pub resolved_days: u64,
}
