//! Versions as the operator API shows them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An immutable version of a unit (its bytes are the blob `hash`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Version {
    pub unit: String,
    /// SHA-256 of the bytes, hex.
    pub hash: String,
    /// 1 for a unit's first version, then +1 per version.
    pub seq: u64,
    pub size_bytes: u64,
    pub author: String,
    pub message: String,
    /// The version this one was pushed over, if any.
    pub parent: Option<String>,
    /// ms since the Unix epoch.
    pub created_ms: u64,
    /// Ed25519 signature (hex) over the version's signed message.
    pub signature: String,
    /// The unit's validator command was not run on it (none was set, or it could not run).
    pub validation_skipped: bool,
}

/// A version's latest rollout, in a version list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LatestRollout {
    pub id: u64,
    pub status: crate::rollouts::RolloutStatus,
    /// ms since the Unix epoch; `null` while it runs.
    pub ended_ms: Option<u64>,
}

/// A version in `GET /v1/units/{unit}/versions`: the version and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionEntry {
    #[serde(flatten)]
    pub version: Version,
    /// Where it stands, in words: `stable`, `rolling out`, `queued`, `quarantined`,
    /// `never rolled out`, `rolled back`, `aborted`, `was stable`, `completed, never stable`
    /// or `unknown`.
    pub status: String,
    /// Nodes that should run it now.
    pub live_nodes: u64,
    /// Its newest rollout, if any.
    pub latest_rollout: Option<LatestRollout>,
}

/// `GET /v1/units/{unit}/versions`: one page, newest first, with the unit's stable version
/// and the one stable before it (what `rollout undo` goes back to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<VersionEntry>,
    /// The unit's stable version (hash), if any.
    pub stable: Option<String>,
    /// The version stable before it, if any.
    pub previous_stable: Option<String>,
    /// The `after` of the next page; `null` on the last page.
    pub next: Option<String>,
}

/// `POST /v1/units/{unit}/versions`: the version stored, and the rollout the push started
/// when the unit has a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PushedVersion {
    #[serde(flatten)]
    pub version: Version,
    /// The rollout this push started; absent when none started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollouts::Rollout>,
}
