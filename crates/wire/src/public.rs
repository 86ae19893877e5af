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

/// `GET /v1/openapi.json`: this API's OpenAPI 3.1 document, generated from these wire types
/// and the server's route table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiDocument {
    /// Always `3.1.0`.
    pub openapi: String,
    /// The title and the server's version.
    #[schema(value_type = Object)]
    pub info: serde_json::Value,
    /// Every operation, by path then method.
    #[schema(value_type = Object)]
    pub paths: serde_json::Value,
    /// The schemas (these wire types) and the bearer security scheme.
    #[schema(value_type = Object)]
    pub components: serde_json::Value,
}
