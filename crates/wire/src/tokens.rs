//! Access tokens as the API lists them (only a token's SHA-256 is kept; the secret is shown
//! once, when it is made).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::requests::Role;

/// An access token's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: u64,
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
    /// The node an agent token acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The person the token acts for; none: the token's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When the token stops being accepted; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}
