//! Public answers: health and the signing key.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /healthz`: the server is up and its store answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// The store's schema version (migrations applied).
    pub schema_version: u64,
}

/// `GET /v1/signing-key`: the key versions are signed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SigningKey {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The public key, hex.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub public_key: String,
}
