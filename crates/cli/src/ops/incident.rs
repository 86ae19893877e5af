//! `failsmall incident open|list|show|update|resolve|review`: incidents, their public updates
//! and post-incident reviews.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use failsmall_wire::incidents::{Incident, IncidentDetail, IncidentList};
use reqwest::Method;
use serde_json::json;

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

fn one_line(incident: &Incident) -> String {
    format!(
        "incident {} ({}, {}): {}",
        incident.id, incident.severity, incident.status, incident.title
    )
}

fn show(detail: &IncidentDetail) {
    let incident = &detail.incident;
    outln!("{}", one_line(incident));
    outln!("components: {}", incident.components.join(","));
    if !incident.labels.is_empty() {
        outln!("labels: {}", incident.labels.join(","));
    }
    outln!(
        "opened: {} by {} ({})",
        incident.opened,
        incident.opened_by,
        incident.cause
    );
    if let Some(resolved) = &incident.resolved {
        outln!("resolved: {resolved}");
    }
    if let Some(due) = &incident.next_update_due {
        outln!("next update due: {due}");
    }
    if !detail.updates.is_empty() {
        outln!("updates (public):");
        for update in &detail.updates {
            outln!(
                "  {} {} [{}{}] {}",
                update.at,
                update.status,
                update.author,
                if update.automatic { ", automatic" } else { "" },
                update.message
            );
        }
    }
    if !detail.timeline.is_empty() {
        outln!("timeline (changelog):");
        for entry in &detail.timeline {
            outln!(
                "  {} #{} {} by {}: {}",
                entry.at,
                entry.id,
                entry.kind,
                entry.actor,
                entry.reason
            );
        }
    }
    if let Some(review) = &incident.review {
        outln!("post-incident review:\n{review}");
    }
}

pub fn run(args: &IncidentArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let json_out = args.remote.json();
    let answer: Incident = match &args.command {
        IncidentCommand::Open {
            title,
            severity,
            components,
            message,
        } => {
            let body = json!({"title": title, "severity": severity, "components": components,
                              "message": message.clone().unwrap_or_default()});
            client
                .send_json::<Incident>(Method::POST, "/v1/incidents", &body)?
                .1
        }
        IncidentCommand::List { days } => {
            let query: Vec<(&str, String)> =
                days.map(|d| ("days", d.to_string())).into_iter().collect();
            let answer: IncidentList = client.get("/v1/incidents", &query)?;
            if json_out {
                print_json(&answer)?;
                return Ok(Outcome::Success);
            }
            let rows = answer.incidents;
            if rows.is_empty() {
                outln!("no incidents");
                return Ok(Outcome::Success);
            }
            let mut table =
                Table::new(&["ID", "SEVERITY", "STATUS", "OPENED", "COMPONENTS", "TITLE"]);
            for row in &rows {
                table.row(vec![
                    row.id.to_string(),
                    row.severity.clone(),
                    row.status.clone(),
                    row.opened.clone(),
                    row.components.join(","),
                    row.title.clone(),
                ]);
            }
            out!("{}", table.render());
            return Ok(Outcome::Success);
        }
        IncidentCommand::Show { id } => {
            let answer: IncidentDetail = client.get(&format!("/v1/incidents/{id}"), &[])?;
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
                .send_json::<Incident>(Method::POST, &format!("/v1/incidents/{id}/updates"), &body)?
                .1
        }
        IncidentCommand::Resolve { id, message } => {
            let body = json!({"message": message.clone().unwrap_or_default()});
            client
                .send_json::<Incident>(Method::POST, &format!("/v1/incidents/{id}/resolve"), &body)?
                .1
        }
        IncidentCommand::Review { id, file } => {
            let markdown = std::fs::read_to_string(file)
                .with_context(|| format!("reading the review {}", file.display()))?;
            client
                .send_json::<Incident>(
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
