//! Quarantined versions: rolled back, refused by new rollouts until an admin lifts them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A quarantined version, with its version record's message and author when stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuarantinedVersion {
    pub unit: String,
    /// The version's hash.
    pub version: String,
    /// The rollout whose rollback quarantined it.
    pub rollout: u64,
    /// The version's push message; `null` when its record is gone.
    pub message: Option<String>,
    /// Who pushed it; `null` when its record is gone.
    pub author: Option<String>,
}

/// `GET /v1/quarantine`: one page, by unit then version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuarantineList {
    pub quarantined: Vec<QuarantinedVersion>,
    /// The `after` of the next page (`unit/version`); `null` on the last page.
    pub next: Option<String>,
}

/// `POST /v1/units/{unit}/quarantine/{hash}/lift`: the version may be rolled out again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuarantineLifted {
    pub unit: String,
    pub version: String,
    /// Always `false`.
    pub quarantined: bool,
}
