//! Webhooks and the notifications that ran out of attempts.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A webhook subscription (its secret is never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: u64,
    pub name: String,
    pub url: String,
    /// `slack`, `pagerduty` or `generic`.
    pub kind: String,
    /// The events it is sent.
    pub events: Vec<String>,
    /// Whether deliveries are signed with a secret.
    pub has_secret: bool,
    pub actor: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created: String,
}

/// `GET /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// `DELETE /v1/webhooks/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookRemoved {
    pub id: u64,
    /// Always `true`.
    pub removed: bool,
}

/// A notification that ran out of attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub id: u64,
    /// The delivery's id (the same on every attempt).
    pub delivery: String,
    /// The webhook's name.
    pub webhook: String,
    /// The event it was about.
    pub event: String,
    pub attempts: u32,
    pub last_error: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created: String,
}

/// The outbox's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutboxCounts {
    /// Waiting to be sent (or retried).
    pub pending: u64,
    /// Delivered and still kept.
    pub delivered_kept: u64,
    /// Out of attempts.
    pub dead: u64,
}

/// `GET /v1/notify/dead-letters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
    pub outbox: OutboxCounts,
}

/// `POST /v1/notify/dead-letters/{id}/retry`: back in the outbox, due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterRetried {
    pub id: u64,
    /// Always `true`.
    pub pending: bool,
}
