//! `failsmall notify webhook add|list|remove`, `failsmall notify dead-letters` and
//! `failsmall notify retry ID`: webhook subscriptions and the outbox's dead letters.

use anyhow::bail;
use clap::{Args, Subcommand};
use failsmall_wire::notify::{
    DeadLetterRetried, DeadLetters, Webhook, WebhookList, WebhookRemoved,
};
use reqwest::Method;
use serde_json::json;

use super::RemoteArgs;
use super::render::{Table, print_json};
use crate::Outcome;

#[derive(Debug, Args)]
pub struct NotifyArgs {
    #[command(subcommand)]
    pub command: NotifyCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Webhook subscriptions (admin).
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Notifications that ran out of attempts, and the outbox's counts.
    DeadLetters,
    /// Put a dead letter back in the outbox (admin); it keeps its delivery id.
    Retry {
        /// The dead letter's id (see `failsmall notify dead-letters`).
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Subscribe a webhook to events: rollout_started, stage_passed, rollout_completed,
    /// rollout_rolled_back, rollout_held, freeze_created, freeze_lifted, incident_opened,
    /// incident_updated, incident_resolved, incident_update_due.
    Add {
        /// A name for it.
        name: String,
        /// Where to POST.
        #[arg(long)]
        url: String,
        /// The payload's shape: slack, pagerduty or generic.
        #[arg(long)]
        kind: String,
        /// The events, comma-separated.
        #[arg(long, value_name = "EVENTS")]
        events: String,
        /// generic: the HMAC-SHA256 key; pagerduty: the routing key [else
        /// FAILSMALL_WEBHOOK_SECRET].
        #[arg(long, env = "FAILSMALL_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// List webhook subscriptions (secrets are never shown).
    List,
    /// Remove a webhook and its undelivered notifications.
    Remove {
        /// The webhook's id.
        id: u64,
    },
}

pub fn run(args: &NotifyArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let json_out = args.remote.json();
    match &args.command {
        NotifyCommand::Webhook {
            command:
                WebhookCommand::Add {
                    name,
                    url,
                    kind,
                    events,
                    secret,
                },
        } => {
            let events: Vec<&str> = events
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect();
            if events.is_empty() {
                bail!("--events is empty; expected e.g. --events rollout_rolled_back,rollout_held");
            }
            let body =
                json!({"name": name, "url": url, "kind": kind, "events": events, "secret": secret});
            let (_, answer): (u16, Webhook) =
                client.send_json(Method::POST, "/v1/webhooks", &body)?;
            if json_out {
                print_json(&answer)?;
            } else {
                outln!(
                    "webhook {} ({}) added: {} for {}",
                    answer.id,
                    answer.kind,
                    answer.url,
                    answer.events.join(",")
                );
            }
        }
        NotifyCommand::Webhook {
            command: WebhookCommand::List,
        } => {
            let answer: WebhookList = client.get("/v1/webhooks", &[])?;
            if json_out {
                print_json(&answer)?;
                return Ok(Outcome::Success);
            }
            let rows = answer.webhooks;
            if rows.is_empty() {
                outln!("no webhooks");
                return Ok(Outcome::Success);
            }
            let mut table = Table::new(&["ID", "NAME", "KIND", "URL", "EVENTS"]);
            for row in &rows {
                table.row(vec![
                    row.id.to_string(),
                    row.name.clone(),
                    row.kind.clone(),
                    row.url.clone(),
                    row.events.join(","),
                ]);
            }
            out!("{}", table.render());
        }
        NotifyCommand::Webhook {
            command: WebhookCommand::Remove { id },
        } => {
            let (_, answer): (u16, WebhookRemoved) =
                client.send_json(Method::DELETE, &format!("/v1/webhooks/{id}"), &json!({}))?;
            if json_out {
                print_json(&answer)?;
            } else {
                outln!("webhook {id} removed");
            }
        }
        NotifyCommand::DeadLetters => {
            let answer: DeadLetters = client.get("/v1/notify/dead-letters", &[])?;
            if json_out {
                print_json(&answer)?;
                return Ok(Outcome::Success);
            }
            let rows = answer.dead_letters;
            outln!(
                "outbox: {} pending, {} dead",
                answer.outbox.pending,
                answer.outbox.dead
            );
            if rows.is_empty() {
                outln!("no dead letters");
                return Ok(Outcome::Success);
            }
            let mut table = Table::new(&["ID", "WEBHOOK", "EVENT", "ATTEMPTS", "LAST ERROR"]);
            for row in &rows {
                table.row(vec![
                    row.id.to_string(),
                    row.webhook.clone(),
                    row.event.clone(),
                    row.attempts.to_string(),
                    row.last_error.clone(),
                ]);
            }
            out!("{}", table.render());
            outln!("send one again with `failsmall notify retry ID` (admin)");
        }
        NotifyCommand::Retry { id } => {
            let (_, answer): (u16, DeadLetterRetried) = client.send_json(
                Method::POST,
                &format!("/v1/notify/dead-letters/{id}/retry"),
                &json!({}),
            )?;
            if json_out {
                print_json(&answer)?;
            } else {
                outln!("dead letter {id} is back in the outbox");
            }
        }
    }
    Ok(Outcome::Success)
}
