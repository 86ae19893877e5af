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
