//! Online break glass: time-boxed elevated roles, asked for and approved by people.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::requests::Role;

/// A break-glass request: asking, showing, approving and claiming one answer with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Elevation {
    pub id: u64,
    /// The person who asked.
    pub requester: String,
    /// The role asked for.
    pub role: Role,
    /// How long the role lasts from the grant, in ms.
    pub duration_ms: u64,
    pub reason: String,
    /// ms since the Unix epoch.
    pub created_ms: u64,
    /// Who approved, in order.
    pub approvals: Vec<String>,
    /// Approvals a grant needs.
    pub approvals_needed: u64,
    /// When enough people approved; `null` until then.
    pub granted_ms: Option<u64>,
    /// When the role ends; `null` until granted.
    pub ends_ms: Option<u64>,
    /// When the requester took the token; `null` until then.
    pub claimed_ms: Option<u64>,
    /// The elevated token's id, once claimed.
    pub token_id: Option<u64>,
    /// `pending`, `granted`, `claimed` or `expired`.
    pub state: String,
    /// The elevated token's secret: only in the claim's answer, shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET /v1/break-glass/requests`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ElevationList {
    pub requests: Vec<Elevation>,
}
