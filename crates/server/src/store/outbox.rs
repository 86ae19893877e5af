//! Webhook subscriptions and the notification outbox (see `crate::notify`). The outbox rows of
//! a changelog row are written by [`enqueue`], inside the transaction that writes the row.

use super::*;
use crate::notify::{self, WebhookKind};

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: u64,
    pub name: String,
    pub url: String,
    pub kind: WebhookKind,
    pub events: Vec<String>,
    pub secret: Option<String>,
    pub actor: String,
    pub created_ms: u64,
}

/// A notification the worker should send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: u64,
    pub delivery: String,
    pub event: String,
    pub url: String,
    pub kind: WebhookKind,
    pub secret: Option<String>,
    pub body: String,
    pub attempts: u32,
}

/// A notification that ran out of attempts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub id: u64,
    pub delivery: String,
    pub webhook: String,
    pub event: String,
    pub attempts: u32,
    pub last_error: String,
    pub created_ms: u64,
}

fn webhook_from_row(row: &Row) -> sql::Result<WebhookRecord> {
    let kind: String = row.get(3)?;
    let StoredJson(events) = row.get(4)?;
    Ok(WebhookRecord {
        id: to_u64(row.get(0)?),
        name: row.get(1)?,
        url: row.get(2)?,
        kind: WebhookKind::parse(&kind).unwrap_or(WebhookKind::Generic),
        events,
        secret: row.get(5)?,
        actor: row.get(6)?,
        created_ms: to_u64(row.get(7)?),
    })
}

const WEBHOOK_COLUMNS: &str = "id, name, url, kind, events, secret, actor, created_ms";

/// Writes the outbox rows of changelog row `id` for every webhook subscribed to its event, in
/// the caller's transaction. Past [`notify::MAX_OUTBOX_PENDING`] pending rows a new one is a
/// dead letter at once (with why), never a failed write of the change itself.
pub(super) fn enqueue(
    tx: &Transaction<'_>,
    change: &NewChange<'_>,
    id: u64,
) -> Result<(), StoreError> {
    let Some(event) = notify::event_of(change.kind) else {
        return Ok(());
    };
    let webhooks: Vec<WebhookRecord> = {
        let mut statement = tx.prepare_cached(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY id"
        ))?;
        statement
            .query_map([], webhook_from_row)?
            .collect::<Result<_, _>>()?
    };
    for webhook in webhooks {
        if !webhook.events.iter().any(|e| e == event) {
            continue;
        }
        let delivery = format!("failsmall-{id}-{}", webhook.id);
        let Some(body) = notify::payload(
            webhook.kind,
            event,
            change,
            id,
            &delivery,
            webhook.secret.as_deref(),
        ) else {
            continue;
        };
        let pending: i64 = tx.query_row(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending'",
            [],
            |row| row.get(0),
        )?;
        let full = to_u64(pending) >= notify::MAX_OUTBOX_PENDING;
        let (state, error) = if full {
            (
                "dead",
                Some(format!(
                    "outbox full ({} notifications pending)",
                    notify::MAX_OUTBOX_PENDING
                )),
            )
        } else {
            ("pending", None)
        };
        tx.execute(
            "INSERT INTO outbox (webhook, delivery, event, body, state, attempts, next_attempt_ms, last_error, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?6)",
            params![to_i64(webhook.id), delivery, event, body, state, to_i64(change.at_ms), error],
        )?;
        if full {
            prune_dead(tx)?;
        }
    }
    Ok(())
}

fn prune_dead(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM outbox WHERE state = 'dead' AND id NOT IN
           (SELECT id FROM outbox WHERE state = 'dead' ORDER BY id DESC LIMIT ?1)",
        params![to_i64(notify::MAX_DEAD_LETTERS)],
    )?;
    Ok(())
}

impl Store {
    /// Adds a webhook subscription, with its changelog entry, in one transaction.
    pub fn create_webhook(
        &self,
        webhook: &WebhookRecord,
        change: &NewChange<'_>,
    ) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let events =
                serde_json::to_string(&webhook.events).map_err(|e| StoreError::Corrupt {
                    what: "webhook events".to_owned(),
                    reason: e.to_string(),
                })?;
            let inserted = tx
                .query_row(
                    "INSERT INTO webhooks (name, url, kind, events, secret, actor, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO NOTHING RETURNING id",
                    params![
                        webhook.name,
                        webhook.url,
                        webhook.kind.as_str(),
                        events,
                        webhook.secret,
                        webhook.actor,
                        to_i64(webhook.created_ms)
                    ],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            let Some(id) = inserted.map(to_u64) else {
                return Err(StoreError::AlreadyExists {
                    kind: "webhook",
                    key: webhook.name.clone(),
                });
            };
            record_change(&tx, change)?;
            tx.commit()?;
            Ok(id)
        })
    }

    /// Every webhook subscription, by id.
    pub fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut statement = conn.prepare(&format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY id"
            ))?;
            let rows = statement
                .query_map([], webhook_from_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// Removes a webhook and its notifications not yet delivered, with its changelog entry.
    pub fn delete_webhook(&self, id: u64, change: &NewChange<'_>) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            if tx.execute("DELETE FROM webhooks WHERE id = ?1", params![to_i64(id)])? == 0 {
                return Err(StoreError::NotFound {
                    kind: "webhook",
                    key: id.to_string(),
                });
            }
            tx.execute("DELETE FROM outbox WHERE webhook = ?1", params![to_i64(id)])?;
            record_change(&tx, change)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Pending notifications due at `now_ms`, oldest first, at most `limit`.
    pub fn outbox_due(&self, now_ms: u64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        self.with_conn(|conn| {
            let mut statement = conn.prepare(
                "SELECT o.id, o.delivery, o.event, w.url, w.kind, w.secret, o.body, o.attempts
                 FROM outbox o JOIN webhooks w ON w.id = o.webhook
                 WHERE o.state = 'pending' AND o.next_attempt_ms <= ?1
                 ORDER BY o.next_attempt_ms, o.id LIMIT ?2",
            )?;
            let rows = statement
                .query_map(params![to_i64(now_ms), limit], |row| {
                    let kind: String = row.get(4)?;
                    Ok(OutboxRow {
                        id: to_u64(row.get(0)?),
                        delivery: row.get(1)?,
                        event: row.get(2)?,
                        url: row.get(3)?,
                        kind: WebhookKind::parse(&kind).unwrap_or(WebhookKind::Generic),
                        secret: row.get(5)?,
                        body: row.get(6)?,
                        attempts: u32::try_from(row.get::<_, i64>(7)?).unwrap_or(u32::MAX),
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    pub fn outbox_delivered(&self, id: u64, now_ms: u64) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            conn.execute(
                "UPDATE outbox SET state = 'delivered', delivered_ms = ?2, last_error = NULL,
                   attempts = attempts + 1 WHERE id = ?1",
                params![to_i64(id), to_i64(now_ms)],
            )?;
            // Delivered rows are history the receiver has; keep only the newest.
            conn.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND id NOT IN
                   (SELECT id FROM outbox WHERE state = 'delivered' ORDER BY id DESC LIMIT ?1)",
                params![to_i64(notify::MAX_OUTBOX_PENDING)],
            )?;
            Ok(())
        })
    }

    pub fn outbox_failed(
        &self,
        id: u64,
        attempts: u32,
        next_attempt_ms: u64,
        error: &str,
        dead: bool,
    ) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4,
                   state = CASE WHEN ?5 THEN 'dead' ELSE 'pending' END WHERE id = ?1",
                params![
                    to_i64(id),
                    attempts,
                    to_i64(next_attempt_ms),
                    error.get(..error.len().min(1024)).unwrap_or(error),
                    dead
                ],
            )?;
            if dead {
                prune_dead(&tx)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The dead letters, oldest first (at most [`notify::MAX_DEAD_LETTERS`]).
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_conn(|conn| {
            let mut statement = conn.prepare(
                "SELECT o.id, o.delivery, w.name, o.event, o.attempts, COALESCE(o.last_error, ''), o.created_ms
                 FROM outbox o JOIN webhooks w ON w.id = o.webhook
                 WHERE o.state = 'dead' ORDER BY o.id LIMIT ?1",
            )?;
            let rows = statement
                .query_map(params![to_i64(notify::MAX_DEAD_LETTERS)], |row| {
                    Ok(DeadLetter {
                        id: to_u64(row.get(0)?),
                        delivery: row.get(1)?,
                        webhook: row.get(2)?,
                        event: row.get(3)?,
                        attempts: u32::try_from(row.get::<_, i64>(4)?).unwrap_or(u32::MAX),
                        last_error: row.get(5)?,
                        created_ms: to_u64(row.get(6)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// Puts a dead letter back in the outbox (due now, attempts from zero); its delivery id
    /// stays, so a receiver that did get it drops it.
    pub fn retry_dead_letter(&self, id: u64, now_ms: u64) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            let changed = conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_ms = ?2
                 WHERE id = ?1 AND state = 'dead'",
                params![to_i64(id), to_i64(now_ms)],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    kind: "dead letter",
                    key: id.to_string(),
                });
            }
            Ok(())
        })
    }

    /// Counts of the outbox by state: (pending, delivered, dead).
    pub fn outbox_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.with_conn(|conn| {
            let count = |state: &str| -> Result<u64, StoreError> {
                let n: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM outbox WHERE state = ?1",
                    params![state],
                    |row| row.get(0),
                )?;
                Ok(to_u64(n))
            };
            Ok((count("pending")?, count("delivered")?, count("dead")?))
        })
    }
}
