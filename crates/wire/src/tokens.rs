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

/// `GET /v1/tokens`: one page of tokens, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<Token>,
    /// The `after` of the next page; `null` on the last page.
    pub next: Option<String>,
}

/// `POST /v1/tokens` and `POST /v1/tokens/{id}/rotate`: the new token's secret, shown this
/// once, and its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    /// The bearer secret: only its SHA-256 is kept.
    pub token: String,
    pub record: Token,
    /// A rotation: the id of the token it replaces (now revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<u64>,
}
