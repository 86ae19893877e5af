//! `failsmall slo create|list|show|delete`: service level objectives (create and delete:
//! admin), with their error budget and multi-window burn rates.

use anyhow::bail;
use clap::{Args, Subcommand};
use failsmall_wire::slos::{Slo as SloView, SloDeleted, SloList};
use reqwest::Method;
use serde_json::json;

use super::RemoteArgs;
use super::render::{Table, print_json};
use crate::Outcome;

#[derive(Debug, Args)]
pub struct SloArgs {
    #[command(subcommand)]
    pub command: SloCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum SloCommand {
    /// Create an SLO on a unit's nodes (admin): good events are requests its agents report
    /// answered without an error.
    Create(CreateArgs),
    /// List the SLOs: target, window, error budget left, the 1h and 6h burn rates.
    List,
    /// Show an SLO: events over its window, error budget left, burn rate per window (5m to
    /// 3d), and the SRE workbook's alerts that fire.
    Show {
        /// The SLO's name.
        name: String,
    },
    /// Delete an SLO (admin).
    Delete {
        /// The SLO's name.
        name: String,
        /// Why: recorded in the changelog.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The SLO's name: a-z, 0-9, '-', '_', '.', e.g. `checkout-availability`.
    pub name: String,
    /// The unit whose nodes' health counts.
    #[arg(long)]
    pub unit: String,
    /// Only nodes with this label count (`key=value`; repeat for several, all must match).
    #[arg(long = "selector", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    /// The objective, in percent of good events, strictly between 0 and 100: `99.9`.
    #[arg(long)]
    pub target: f64,
    /// The SLO window: whole days or hours from 1h to 90d [default: 30d].
    #[arg(long, default_value = "30d")]
    pub window: String,
    /// Let rollouts of the unit start while the error budget is spent (by default they do
    /// not; rollbacks and undo to a stable version never wait).
    #[arg(long)]
    pub no_block: bool,
    /// What the SLO promises, for people.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Why: recorded in the changelog.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Count good and total events from this Prometheus server's answers to
    /// `--good-query` and `--total-query` instead of the agents' health.
    #[arg(long, value_name = "URL", requires_all = ["good_query", "total_query"])]
    pub prometheus: Option<String>,
    /// With `--prometheus`: a PromQL query answering one counter of good events, e.g.
    /// `sum(http_requests_total) - sum(http_errors_total)`.
    #[arg(long, value_name = "PROMQL", requires = "prometheus")]
    pub good_query: Option<String>,
    /// With `--prometheus`: a PromQL query answering one counter of all events, e.g.
    /// `sum(http_requests_total)`.
    #[arg(long, value_name = "PROMQL", requires = "prometheus")]
    pub total_query: Option<String>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!(
            "selector {text:?}: expected KEY=VALUE, e.g. cohort=free"
        )),
    }
}

/// An SLO as the server answers it.
/// A burn rate for people: two decimals, `-` for a window without events.
fn burn_rate(view: &SloView, window: &str) -> String {
    view.burn_rates
        .get(window)
        .copied()
        .flatten()
        .map_or_else(|| "-".to_owned(), |rate| format!("{rate:.2}"))
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

pub fn run(args: &SloArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    match &args.command {
        SloCommand::Create(create) => {
            if !(create.target > 0.0 && create.target < 100.0) {
                bail!(
                    "--target {}: expected a percentage strictly between 0 and 100, e.g. 99.9",
                    create.target
                );
            }
            let selector: std::collections::BTreeMap<_, _> =
                create.selector.iter().cloned().collect();
            let body = json!({
                "name": create.name,
                "unit": create.unit,
                "selector": selector,
                "target_percent": create.target,
                "window": create.window,
                "block_rollouts_when_exhausted": !create.no_block,
                "description": create.description,
                "reason": create.reason,
                "prometheus": create.prometheus.as_ref().map(|url| json!({
                    "url": url,
                    "good": create.good_query,
                    "total": create.total_query,
                })),
            });
            let (_, view): (u16, SloView) = client.send_json(Method::POST, "/v1/slos", &body)?;
            if args.remote.json() {
                print_json(&view)?;
            } else {
                outln!(
                    "slo {} created: {}% of requests to unit {} good over {}{}",
                    view.name,
                    view.target_percent,
                    view.unit,
                    view.window,
                    if view.block_rollouts_when_exhausted {
                        "; rollouts wait while its error budget is spent"
                    } else {
                        ""
                    }
                );
            }
        }
        SloCommand::List => {
            let list: SloList = client.get("/v1/slos", &[])?;
            if args.remote.json() {
                print_json(&list.slos)?;
            } else {
                let mut table = Table::new(&[
                    "NAME",
                    "UNIT",
                    "TARGET",
                    "WINDOW",
                    "BUDGET LEFT",
                    "BURN 1H",
                    "BURN 6H",
                    "BLOCKS",
                ]);
                for slo in &list.slos {
                    table.row(vec![
                        slo.name.clone(),
                        slo.unit.clone(),
                        format!("{}%", slo.target_percent),
                        slo.window.clone(),
                        percent(slo.error_budget_remaining),
                        burn_rate(slo, "1h"),
                        burn_rate(slo, "6h"),
                        if slo.block_rollouts_when_exhausted {
                            "yes".to_owned()
                        } else {
                            "no".to_owned()
                        },
                    ]);
                }
                out!("{}", table.render());
            }
        }
        SloCommand::Show { name } => {
            let view: SloView = client.get(&format!("/v1/slos/{name}"), &[])?;
            if args.remote.json() {
                print_json(&view)?;
            } else {
                out!("{}", show_text(&view));
            }
        }
        SloCommand::Delete { name, reason } => {
            let (_, _): (u16, SloDeleted) = client.send_json(
                Method::DELETE,
                &format!("/v1/slos/{name}"),
                &json!({ "reason": reason }),
            )?;
            if args.remote.json() {
                print_json(&json!({ "deleted": name }))?;
            } else {
                outln!("slo {name} deleted");
            }
        }
    }
    Ok(Outcome::Success)
}

/// `slo show` for people.
fn show_text(view: &SloView) -> String {
    let selector = if let Some(queries) = &view.prometheus {
        format!(
            "events from Prometheus {}: good {}, total {}",
            queries.url, queries.good, queries.total
        )
    } else if view.selector.is_empty() {
        "every node".to_owned()
    } else {
        view.selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let attained = view
        .attained_percent
        .map_or_else(|| "no events yet".to_owned(), |p| format!("{p:.3}%"));
    let mut text = format!(
        "slo          {}\nunit         {} ({selector})\ntarget       {}% over {}\nevents       {} total, {} bad\nattained     {attained}\nbudget left  {}{}\nblocks       {}\n",
        view.name,
        view.unit,
        view.target_percent,
        view.window,
        view.events_total,
        view.events_bad,
        percent(view.error_budget_remaining),
        if view.exhausted { " (exhausted)" } else { "" },
        if view.block_rollouts_when_exhausted {
            "rollouts of the unit while the budget is spent"
        } else {
            "nothing"
        },
    );
    let mut table = Table::new(&["WINDOW", "BURN RATE"]);
    for window in ["5m", "30m", "1h", "2h", "6h", "1d", "3d"] {
        table.row(vec![window.to_owned(), burn_rate(view, window)]);
    }
    text.push_str(&table.render());
    for alert in &view.alerts {
        text.push_str(&format!("alert        {alert}\n"));
    }
    text
}
