//! Notifications through a transactional outbox.
//!
//! Admins subscribe webhooks (`slack`, `pagerduty`, `generic`) to events. When a changelog row
//! of a subscribed kind is written, the outbox rows for its subscribers are written **in the
//! same transaction** (`store/outbox.rs`, called from the one place a changelog row is
//! written), so an event that happened is never without its notification and a notification
//! never announces an event that was rolled back. The delivery worker ([`deliver_forever`])
//! sends due rows with a timeout, marks them delivered on a 2xx, and otherwise retries with
//! exponential backoff and full jitter up to [`NotifyConfig::max_attempts`], then moves the row
//! to the dead letters (`failsmall notify dead-letters`, `notify retry ID`).
//!
//! Delivery is at least once: a crash between a send and its mark sends the row again after
//! restart. Every attempt of a row carries the same delivery id (`x-failsmall-delivery`, and
//! `delivery` in the generic body) and PagerDuty events the same `dedup_key` per rollout, so a
//! receiver drops duplicates by that key.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use crate::store::{NewChange, OutboxRow, Store, StoreError};

/// Most webhook subscriptions.
pub const MAX_WEBHOOKS: usize = 100;
/// Most notifications pending delivery; past it a new one goes straight to the dead letters
/// (with why), so a receiver that is down for long cannot fill the disk.
pub const MAX_OUTBOX_PENDING: u64 = 10_000;
/// Most dead letters kept; the oldest are forgotten beyond it.
pub const MAX_DEAD_LETTERS: u64 = 10_000;
/// Largest payload, in bytes (a changelog reason is at most 4 KiB, so a payload is far below).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest webhook URL and secret, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
pub const MAX_SECRET_BYTES: usize = 256;
/// Rows the worker sends per round.
pub const DELIVERY_BATCH: u32 = 16;
/// The header carrying a delivery's id (the same on every attempt).
pub const DELIVERY_HEADER: &str = "x-failsmall-delivery";
/// The header carrying the event's name.
pub const EVENT_HEADER: &str = "x-failsmall-event";
/// The generic kind's signature header: `sha256=` and the hex HMAC-SHA256 of the body, keyed
/// with the subscription's secret.
pub const SIGNATURE_HEADER: &str = "x-failsmall-signature";

/// Fail point: a notification was sent and its receiver answered; it is not marked yet.
pub const FAIL_AFTER_SEND: &str = "notify::after_send";

/// How the worker delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyConfig {
    /// The first retry waits up to this long; each next one up to twice as long.
    pub retry_base_ms: u64,
    /// The longest wait between two attempts.
    pub retry_max_ms: u64,
    /// Attempts before a notification is a dead letter.
    pub max_attempts: u32,
    /// Each request's timeout.
    pub timeout_ms: u64,
    /// How often the worker looks for due notifications.
    pub poll_ms: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            max_attempts: 8,
            timeout_ms: 10_000,
            poll_ms: 500,
        }
    }
}

/// A webhook's payload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    /// A Slack incoming webhook: `text` and `blocks`.
    Slack,
    /// PagerDuty Events API v2: trigger on a rollback or a hold, resolve on completion; the
    /// secret is the integration's routing key.
    Pagerduty,
    /// JSON signed with HMAC-SHA256 of the body (the secret is the key).
    Generic,
}

impl WebhookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Pagerduty => "pagerduty",
            Self::Generic => "generic",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Slack, Self::Pagerduty, Self::Generic]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// The events a webhook may subscribe to, with the changelog kinds behind each.
pub const EVENTS: [(&str, &[&str]); 13] = [
    ("rollout_started", &["rollout_started"]),
    ("stage_passed", &["stage_passed"]),
    ("rollout_completed", &["completed"]),
    ("rollout_rolled_back", &["rolled_back"]),
    ("rollout_held", &["fleet_unhealthy", "held"]),
    ("freeze_created", &["freeze_created"]),
    ("freeze_lifted", &["freeze_lifted"]),
    ("break_glass_used", &["break_glass"]),
    ("incident_opened", &["incident_opened"]),
    ("incident_updated", &["incident_updated"]),
    ("incident_resolved", &["incident_resolved"]),
    ("incident_update_due", &["incident_update_due"]),
    ("approval_needed", &["approval_needed"]),
];

/// What an approver runs, for an `approval_needed` notification of `rollout`.
pub fn approve_hint(rollout: u64) -> String {
    format!("failsmall rollout approve {rollout} --reason '...'")
}

/// The event a changelog kind is, if any.
pub fn event_of(kind: &str) -> Option<&'static str> {
    EVENTS
        .iter()
        .find(|(_, kinds)| kinds.contains(&kind))
        .map(|(event, _)| *event)
}

pub fn is_event(name: &str) -> bool {
    EVENTS.iter().any(|(event, _)| *event == name)
}

/// One line for people: `rollout 7 of bot-features rolled back at stage employees: ...`.
fn summary(event: &str, change: &NewChange<'_>) -> String {
    let subject = match (change.rollout, change.unit) {
        (Some(rollout), Some(unit)) => format!("rollout {rollout} of {unit}"),
        (None, Some(unit)) => format!("unit {unit}"),
        _ => "failsmall".to_owned(),
    };
    let what = event.replace('_', " ");
    let stage = change
        .stage
        .map(|stage| format!(" at stage {stage}"))
        .unwrap_or_default();
    let mut line = format!(
        "{subject}: {what}{stage}: {} (by {})",
        change.reason, change.actor
    );
    if event == "approval_needed"
        && let Some(rollout) = change.rollout
    {
        line.push_str(&format!("; to approve: {}", approve_hint(rollout)));
    }
    line
}

/// The body for a subscriber of `kind`, or `None` when that kind does not take this event
/// (PagerDuty only takes what it can trigger or resolve). `delivery` is the row's id.
pub fn payload(
    kind: WebhookKind,
    event: &str,
    change: &NewChange<'_>,
    changelog_id: u64,
    delivery: &str,
    secret: Option<&str>,
) -> Option<String> {
    let text = summary(event, change);
    let body = match kind {
        WebhookKind::Slack => json!({
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": format!("*failsmall* — {text}")}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("event `{event}` · changelog #{changelog_id} · delivery `{delivery}`")}]},
            ],
        }),
        WebhookKind::Pagerduty => {
            let incident_severity = crate::incidents::incident_of_reason(change.reason)
                .and_then(|(_, severity)| severity)
                .map_or("error", crate::incidents::Severity::pagerduty);
            let (action, severity) = match event {
                "rollout_rolled_back" => ("trigger", "critical"),
                "rollout_held" => ("trigger", "warning"),
                // Someone bypassed the control plane: a person looks, and resolves it.
                "break_glass_used" => ("trigger", "critical"),
                "rollout_completed" => ("resolve", "info"),
                "incident_opened" => ("trigger", incident_severity),
                "incident_resolved" => ("resolve", "info"),
                // Not a page: a stage waiting for its approval is the plan working as
                // written, nothing is broken and nothing gets worse while it waits (the
                // stage exposes no node until approved). Waking the on-call for a routine
                // sign-off would teach people to ignore pages; approvers get it through
                // Slack or a generic webhook instead.
                "approval_needed" => return None,
                _ => return None,
            };
            json!({
                "routing_key": secret.unwrap_or_default(),
                "event_action": action,
                "dedup_key": dedup_key(change),
                "payload": {
                    "summary": text,
                    "severity": severity,
                    "source": "failsmall",
                    "component": change.unit,
                    "custom_details": {"event": event, "stage": change.stage, "version": change.version, "changelog_id": changelog_id},
                },
            })
        }
        WebhookKind::Generic => json!({
            "delivery": delivery,
            "event": event,
            "at": failsmall_core::domain::rfc3339_from_ms(change.at_ms),
            "actor": change.actor,
            "unit": change.unit,
            "version": change.version,
            "rollout": change.rollout,
            "stage": change.stage,
            "reason": change.reason,
            "summary": text,
            "changelog_id": changelog_id,
            // The incident an `incident_*` event concerns, and the key a receiver drops
            // repeats by (PagerDuty's `dedup_key`: one per incident, else one per rollout).
            "incident": change.kind.starts_with("incident_").then(|| crate::incidents::incident_of_reason(change.reason).map(|(id, _)| id)).flatten(),
            "dedup_key": dedup_key(change),
            // What an approver runs (only on `approval_needed`).
            "approve": (event == "approval_needed").then(|| change.rollout.map(approve_hint)).flatten(),
        }),
    };
    let mut text = body.to_string();
    if text.len() > MAX_PAYLOAD_BYTES {
        text = json!({"delivery": delivery, "event": event, "summary": "payload too large; see the changelog", "changelog_id": changelog_id}).to_string();
    }
    Some(text)
}

/// PagerDuty's `dedup_key`: one incident per rollout (its trigger and its resolve share it);
/// an incident's own events carry the incident (`failsmall/incident/ID`).
pub fn dedup_key(change: &NewChange<'_>) -> String {
    if change.kind.starts_with("incident_")
        && let Some((id, _)) = crate::incidents::incident_of_reason(change.reason)
    {
        return format!("failsmall/incident/{id}");
    }
    match (change.unit, change.rollout) {
        (Some(unit), Some(rollout)) => format!("failsmall/{unit}/rollout/{rollout}"),
        (Some(unit), None) => format!("failsmall/{unit}"),
        _ => "failsmall".to_owned(),
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}

/// The wait before attempt `attempts + 1`: full jitter over `base * 2^(attempts-1)`, capped.
pub fn backoff_ms(config: &NotifyConfig, attempts: u32, random: u64) -> u64 {
    let exponent = attempts.saturating_sub(1).min(32);
    let ceiling = config
        .retry_base_ms
        .saturating_mul(1u64 << exponent)
        .min(config.retry_max_ms)
        .max(1);
    // At least half the ceiling, so retries still spread out when the draw is small.
    ceiling / 2 + random % (ceiling / 2 + 1)
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness the jitter is 0: still a valid wait.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Sends due notifications until the task is dropped.
pub async fn deliver_forever(store: Arc<Store>, config: NotifyConfig, now_ms: fn() -> u64) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(config.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "notifications: no HTTP client; nothing will be delivered");
            return;
        }
    };
    loop {
        let claimed = {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.outbox_due(now_ms(), DELIVERY_BATCH)).await
        };
        let rows = match claimed {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => {
                tracing::error!(%error, "notifications: reading the outbox failed");
                Vec::new()
            }
            Err(error) => {
                tracing::error!(%error, "notifications: outbox task failed");
                Vec::new()
            }
        };
        let busy = rows.len() >= DELIVERY_BATCH as usize;
        for row in rows {
            deliver(&store, &client, &config, row, now_ms).await;
        }
        if !busy {
            tokio::time::sleep(Duration::from_millis(config.poll_ms.max(10))).await;
        }
    }
}

async fn deliver(
    store: &Arc<Store>,
    client: &reqwest::Client,
    config: &NotifyConfig,
    row: OutboxRow,
    now_ms: fn() -> u64,
) {
    let mut request = client
        .post(&row.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(DELIVERY_HEADER, &row.delivery)
        .header(EVENT_HEADER, &row.event);
    if row.kind == WebhookKind::Generic
        && let Some(secret) = &row.secret
    {
        request = request.header(SIGNATURE_HEADER, signature(secret, row.body.as_bytes()));
    }
    let outcome = match request.body(row.body.clone()).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("{} answered {}", row.url, response.status())),
        Err(error) => Err(format!("{}: {error}", row.url)),
    };
    if outcome.is_ok() {
        // A crash here (between the send and its mark) sends the row again after restart,
        // with the same delivery id.
        let skip_mark: Result<(), StoreError> = (|| {
            fail::fail_point!(FAIL_AFTER_SEND, |_| Err(StoreError::Injected {
                point: FAIL_AFTER_SEND
            }));
            Ok(())
        })();
        if skip_mark.is_err() {
            return;
        }
    }
    let store = Arc::clone(store);
    let config = *config;
    let id = row.id;
    let attempts = row.attempts.saturating_add(1);
    let marked = tokio::task::spawn_blocking(move || match outcome {
        Ok(()) => store.outbox_delivered(id, now_ms()),
        Err(error) => {
            let dead = attempts >= config.max_attempts;
            let next_ms = now_ms().saturating_add(backoff_ms(&config, attempts, random_u64()));
            tracing::warn!(delivery = id, attempts, dead, %error, "notification not delivered");
            store.outbox_failed(id, attempts, next_ms, &error, dead)
        }
    })
    .await;
    match marked {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "notifications: marking a delivery failed"),
        Err(error) => tracing::error!(%error, "notifications: marking task failed"),
    }
}

/// A webhook subscription as the API shows it (the secret never leaves the server).
pub fn webhook_json(webhook: &crate::store::WebhookRecord) -> failsmall_wire::notify::Webhook {
    failsmall_wire::notify::Webhook {
        id: webhook.id,
        name: webhook.name.clone(),
        url: webhook.url.clone(),
        kind: webhook.kind.as_str().to_owned(),
        events: webhook.events.clone(),
        has_secret: webhook.secret.is_some(),
        actor: webhook.actor.clone(),
        created: failsmall_core::domain::rfc3339_from_ms(webhook.created_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let config = NotifyConfig {
            retry_base_ms: 1_000,
            retry_max_ms: 8_000,
            ..NotifyConfig::default()
        };
        for random in [0, 1, 499, 500, u64::MAX] {
            let first = backoff_ms(&config, 1, random);
            assert!((500..=1_000).contains(&first), "{first}");
            let third = backoff_ms(&config, 3, random);
            assert!((2_000..=4_000).contains(&third), "{third}");
            let late = backoff_ms(&config, 30, random);
            assert!((4_000..=8_000).contains(&late), "{late}");
        }
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pagerduty_triggers_on_rollback_and_resolves_on_completion_with_one_key_per_rollout() {
        let change = |kind| NewChange {
            at_ms: 0,
            actor: "failsmall",
            kind,
            unit: Some("bot-features"),
            version: Some("abc"),
            reason: "gate failed",
            concerns: None,
            rollout: Some(7),
            stage: Some("employees"),
        };
        let body = |event, kind| {
            let text = payload(
                WebhookKind::Pagerduty,
                event,
                &change(kind),
                1,
                "d1",
                Some("KEY"),
            )?;
            serde_json::from_str::<Value>(&text).ok()
        };
        let trigger = body("rollout_rolled_back", "rolled_back").unwrap();
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["routing_key"], "KEY");
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "failsmall");
        let resolve = body("rollout_completed", "completed").unwrap();
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(trigger["dedup_key"], resolve["dedup_key"]);
        assert_eq!(trigger["dedup_key"], "failsmall/bot-features/rollout/7");
        assert!(body("stage_passed", "stage_passed").is_none());
        // A node's break glass pages someone.
        assert_eq!(event_of("break_glass"), Some("break_glass_used"));
        let glass = body("break_glass_used", "break_glass").unwrap();
        assert_eq!(glass["event_action"], "trigger");
        assert_eq!(glass["payload"]["severity"], "critical");
        let slack: Value = serde_json::from_str(
            &payload(
                WebhookKind::Slack,
                "stage_passed",
                &change("stage_passed"),
                1,
                "d1",
                None,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(
            slack["text"]
                .as_str()
                .unwrap()
                .contains("rollout 7 of bot-features")
        );
        assert_eq!(slack["blocks"][0]["type"], "section");
    }

    #[test]
    fn an_approval_needed_is_told_in_slack_and_generic_and_does_not_page() {
        let change = NewChange {
            at_ms: 0,
            actor: "failsmall",
            kind: "approval_needed",
            unit: Some("bot-features"),
            version: Some("abc"),
            reason: "7 stage free: stage \"free\" waits for approval",
            concerns: None,
            rollout: Some(7),
            stage: Some("free"),
        };
        assert_eq!(event_of("approval_needed"), Some("approval_needed"));
        let body = |kind| payload(kind, "approval_needed", &change, 3, "d3", Some("KEY"));
        assert!(body(WebhookKind::Pagerduty).is_none());
        let slack: Value = serde_json::from_str(&body(WebhookKind::Slack).unwrap()).unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(
            text.contains("rollout 7 of bot-features: approval needed at stage free"),
            "{text}"
        );
        assert!(text.contains("failsmall rollout approve 7"), "{text}");
        let generic: Value = serde_json::from_str(&body(WebhookKind::Generic).unwrap()).unwrap();
        assert_eq!(generic["event"], "approval_needed");
        assert_eq!(generic["stage"], "free");
        assert_eq!(generic["rollout"], 7);
        assert_eq!(
            generic["approve"],
            "failsmall rollout approve 7 --reason '...'"
        );
    }
}
