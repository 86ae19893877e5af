//! `failsmall incident open|list|show|update|resolve|review`: incidents, their public updates
//! and post-incident reviews.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::RemoteArgs;
use super::render::{Table, print_json};
use crate::Outcome;

#[derive(Debug, Args)]
pub struct IncidentArgs {
    #[command(subcommand)]
    pub command: IncidentCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Open an incident by hand (deployer, admin).
    Open {
        /// Its public title.
        #[arg(long)]
        title: String,
        /// sev1, sev2 or sev3 (sets its update cadence).
        #[arg(long)]
        severity: String,
        /// A component affected (a unit's name, or a service); repeatable.
        #[arg(long = "component", value_name = "NAME")]
        components: Vec<String>,
        /// The first public update [default: "We are investigating this issue."].
        #[arg(long)]
        message: Option<String>,
    },
    /// List open incidents and those resolved lately.
    List {
        /// Resolved incidents of the last DAYS days [default: 14, at most 90].
        #[arg(long, value_name = "DAYS")]
        days: Option<u64>,
    },
    /// Show an incident: its public updates and its timeline from the changelog.
    Show {
        /// The incident's id.
        id: u64,
    },
    /// Publish a public update (deployer, admin), optionally moving its status or severity.
    Update {
        /// The incident's id.
        id: u64,
        /// The update's public text.
        #[arg(long)]
        message: String,
        /// investigating, identified, monitoring (or resolved: as `incident resolve`).
        #[arg(long)]
        status: Option<String>,
        /// sev1, sev2 or sev3.
        #[arg(long)]
        severity: Option<String>,
    },
    /// Resolve an incident with a last public update (deployer, admin).
    Resolve {
        /// The incident's id.
        id: u64,
        /// The last public update [default: "This incident has been resolved."].
        #[arg(long)]
        message: Option<String>,
    },
    /// Attach (or replace) the post-incident review, a markdown file (deployer, admin); it
    /// is public on the status page.
    Review {
        /// The incident's id.
        id: u64,
        /// The review's markdown file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

fn one_line(incident: &Value) -> String {
    format!(
        "incident {} ({}, {}): {}",
        text(incident, "id"),
        text(incident, "severity"),
        text(incident, "status"),
        text(incident, "title")
    )
}

fn show(incident: &Value) {
    outln!("{}", one_line(incident));
    outln!("components: {}", text(incident, "components"));
    if !text(incident, "labels").is_empty() {
        outln!("labels: {}", text(incident, "labels"));
    }
    outln!(
        "opened: {} by {} ({})",
        text(incident, "opened"),
        text(incident, "opened_by"),
        text(incident, "cause")
    );
    if !text(incident, "resolved").is_empty() {
        outln!("resolved: {}", text(incident, "resolved"));
    }
    if !text(incident, "next_update_due").is_empty() {
        outln!("next update due: {}", text(incident, "next_update_due"));
    }
    let list = |key: &str| {
        incident
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let updates = list("updates");
    if !updates.is_empty() {
        outln!("updates (public):");
        for update in &updates {
            outln!(
                "  {} {} [{}{}] {}",
                text(update, "at"),
                text(update, "status"),
                text(update, "author"),
                if update.get("automatic") == Some(&Value::Bool(true)) {
                    ", automatic"
                } else {
                    ""
                },
                text(update, "message")
            );
        }
    }
    let timeline = list("timeline");
    if !timeline.is_empty() {
        outln!("timeline (changelog):");
        for entry in &timeline {
            outln!(
                "  {} #{} {} by {}: {}",
                text(entry, "at"),
                text(entry, "id"),
                text(entry, "kind"),
                text(entry, "actor"),
                text(entry, "reason")
            );
        }
    }
    if let Some(review) = incident.get("review").and_then(Value::as_str) {
        outln!("post-incident review:\n{review}");
    }
}

pub fn run(args: &IncidentArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let json_out = args.remote.json();
    let answer: Value = match &args.command {
        IncidentCommand::Open {
            title,
            severity,
            components,
            message,
        } => {
            let body = json!({"title": title, "severity": severity, "components": components,
                              "message": message.clone().unwrap_or_default()});
            client
                .send_json::<Value>(Method::POST, "/v1/incidents", &body)?
                .1
        }
        IncidentCommand::List { days } => {
            let query: Vec<(&str, String)> =
                days.map(|d| ("days", d.to_string())).into_iter().collect();
            let answer: Value = client.get("/v1/incidents", &query)?;
            if json_out {
                print_json(&answer)?;
                return Ok(Outcome::Success);
            }
            let rows = answer
                .get("incidents")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if rows.is_empty() {
                outln!("no incidents");
                return Ok(Outcome::Success);
            }
            let mut table =
                Table::new(&["ID", "SEVERITY", "STATUS", "OPENED", "COMPONENTS", "TITLE"]);
            for row in &rows {
                table.row(vec![
                    text(row, "id"),
                    text(row, "severity"),
                    text(row, "status"),
                    text(row, "opened"),
                    text(row, "components"),
                    text(row, "title"),
                ]);
            }
            out!("{}", table.render());
            return Ok(Outcome::Success);
        }
        IncidentCommand::Show { id } => {
            let answer: Value = client.get(&format!("/v1/incidents/{id}"), &[])?;
            if json_out {
                print_json(&answer)?;
            } else {
                show(&answer);
            }
            return Ok(Outcome::Success);
        }
        IncidentCommand::Update {
            id,
            message,
            status,
            severity,
        } => {
            let body = json!({"message": message, "status": status, "severity": severity});
            client
                .send_json::<Value>(Method::POST, &format!("/v1/incidents/{id}/updates"), &body)?
                .1
        }
        IncidentCommand::Resolve { id, message } => {
            let body = json!({"message": message.clone().unwrap_or_default()});
            client
                .send_json::<Value>(Method::POST, &format!("/v1/incidents/{id}/resolve"), &body)?
                .1
        }
        IncidentCommand::Review { id, file } => {
            let markdown = std::fs::read_to_string(file)
                .with_context(|| format!("reading the review {}", file.display()))?;
            client
                .send_json::<Value>(
                    Method::PUT,
                    &format!("/v1/incidents/{id}/review"),
                    &json!({ "markdown": markdown }),
                )?
                .1
        }
    };
    if json_out {
        print_json(&answer)?;
    } else {
        outln!("{}", one_line(&answer));
    }
    Ok(Outcome::Success)
}
