//! Webhook subscriptions (admins) and the dead letters of the notification outbox (see
//! `crate::notify`).

use crate::notify::{self as outbox, WebhookKind};
use crate::store::WebhookRecord;

use super::*;
use failsmall_wire::requests::CreateWebhookRequest;

fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_webhook",
        format!("{field}: {message}"),
    )
    .with_detail(json!({"field": field}))
}

fn check(request: CreateWebhookRequest) -> Result<(WebhookKind, CreateWebhookRequest), ApiError> {
    let name_ok = !request.name.is_empty()
        && request.name.len() <= 64
        && request
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(invalid(
            "name",
            "expected 1 to 64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
        ));
    }
    let scheme_ok = request.url.starts_with("http://") || request.url.starts_with("https://");
    if !scheme_ok
        || request.url.len() > outbox::MAX_URL_BYTES
        || reqwest::Url::parse(&request.url).is_err()
    {
        return Err(invalid(
            "url",
            format!(
                "expected an http:// or https:// URL of at most {} bytes",
                outbox::MAX_URL_BYTES
            ),
        ));
    }
    let Some(kind) = WebhookKind::parse(&request.kind) else {
        return Err(invalid("kind", "expected slack, pagerduty or generic"));
    };
    let known: Vec<&str> = outbox::EVENTS.iter().map(|(event, _)| *event).collect();
    if request.events.is_empty() || request.events.len() > known.len() {
        return Err(invalid(
            "events",
            format!("expected one or more of {}", known.join(", ")),
        ));
    }
    if let Some(unknown) = request.events.iter().find(|e| !outbox::is_event(e)) {
        return Err(invalid(
            "events",
            format!("{unknown:?} is not an event; expected {}", known.join(", ")),
        ));
    }
    match (&request.secret, kind) {
        (Some(secret), _) if secret.is_empty() || secret.len() > outbox::MAX_SECRET_BYTES => {
            return Err(invalid(
                "secret",
                format!("expected 1 to {} bytes", outbox::MAX_SECRET_BYTES),
            ));
        }
        (None, WebhookKind::Pagerduty) => {
            return Err(invalid(
                "secret",
                "a pagerduty webhook needs its integration's routing key as the secret",
            ));
        }
        (None, WebhookKind::Generic) => {
            return Err(invalid(
                "secret",
                "a generic webhook needs a secret: its bodies are signed with it (HMAC-SHA256)",
            ));
        }
        _ => {}
    }
    Ok((kind, request))
}

/// `POST /v1/webhooks`.
pub(super) async fn create_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::notify::Webhook>), ApiError> {
    let request: CreateWebhookRequest = json_body(body)?;
    let (kind, request) = check(request)?;
    let mut events = request.events;
    events.sort();
    events.dedup();
    let now = now_ms();
    let webhook = WebhookRecord {
        id: 0,
        name: request.name,
        url: request.url,
        kind,
        events,
        secret: request.secret,
        actor: caller.name.clone(),
        created_ms: now,
    };
    let reason = format!(
        "webhook {} ({}) subscribed to {}",
        webhook.name,
        kind.as_str(),
        webhook.events.join(", ")
    );
    let (created, actor) = (webhook.clone(), caller.name.clone());
    let id = db(&state, move |store| {
        if store.webhooks()?.len() >= outbox::MAX_WEBHOOKS {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused",
                format!(
                    "at most {} webhooks; remove one first",
                    outbox::MAX_WEBHOOKS
                ),
            ));
        }
        let change = NewChange {
            at_ms: now,
            actor: &actor,
            kind: "webhook_created",
            unit: None,
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        Ok(store.create_webhook(&created, &change)?)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(outbox::webhook_json(&WebhookRecord { id, ..webhook })),
    ))
}

/// `GET /v1/webhooks`: subscriptions, without their secrets.
pub(super) async fn list_webhooks(
    State(state): State<AppState>,
) -> Result<axum::Json<failsmall_wire::notify::WebhookList>, ApiError> {
    let webhooks = db(&state, |store| Ok(store.webhooks()?)).await?;
    Ok(axum::Json(failsmall_wire::notify::WebhookList {
        webhooks: webhooks.iter().map(outbox::webhook_json).collect(),
    }))
}

/// `DELETE /v1/webhooks/{id}`: the subscription and its undelivered notifications.
pub(super) async fn delete_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::notify::WebhookRemoved>, ApiError> {
    let id = path_param(id)?;
    let actor = caller.name.clone();
    db(&state, move |store| {
        let reason = format!("webhook {id} removed with its undelivered notifications");
        let change = NewChange {
            at_ms: now_ms(),
            actor: &actor,
            kind: "webhook_removed",
            unit: None,
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        Ok(store.delete_webhook(id, &change)?)
    })
    .await?;
    Ok(axum::Json(failsmall_wire::notify::WebhookRemoved {
        id,
        removed: true,
    }))
}

/// `GET /v1/notify/dead-letters`: notifications that ran out of attempts, and the outbox's
/// counts.
pub(super) async fn dead_letters(
    State(state): State<AppState>,
) -> Result<axum::Json<failsmall_wire::notify::DeadLetters>, ApiError> {
    let (letters, (pending, delivered, dead)) = db(&state, |store| {
        Ok((store.dead_letters()?, store.outbox_counts()?))
    })
    .await?;
    let dead_letters = letters
        .into_iter()
        .map(|letter| failsmall_wire::notify::DeadLetter {
            id: letter.id,
            delivery: letter.delivery,
            webhook: letter.webhook,
            event: letter.event,
            attempts: letter.attempts,
            last_error: letter.last_error,
            created: rfc3339_from_ms(letter.created_ms),
        })
        .collect();
    Ok(axum::Json(failsmall_wire::notify::DeadLetters {
        dead_letters,
        outbox: failsmall_wire::notify::OutboxCounts {
            pending,
            delivered_kept: delivered,
            dead,
        },
    }))
}

/// `POST /v1/notify/dead-letters/{id}/retry`: back in the outbox, due now.
pub(super) async fn retry_dead_letter(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::notify::DeadLetterRetried>, ApiError> {
    let id = path_param(id)?;
    db(&state, move |store| {
        Ok(store.retry_dead_letter(id, now_ms())?)
    })
    .await?;
    Ok(axum::Json(failsmall_wire::notify::DeadLetterRetried {
        id,
        pending: true,
    }))
}
