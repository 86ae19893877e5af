//! `failsmall freeze create|list|lift|now`, `failsmall freezes` and
//! `failsmall maintenance create|list|end`: freeze windows, the stop-the-line button, and
//! maintenance windows (see the server's `api/windows.rs` for the wire shapes).

use std::collections::BTreeMap;

use anyhow::bail;
use clap::{Args, Subcommand};
use failsmall_wire::windows::{
    Freeze, FreezeLifted, FreezeList, Maintenance, MaintenanceEnded, MaintenanceList,
};
use reqwest::Method;
use serde_json::json;

use super::RemoteArgs;
use super::render::{Table, print_json};
use crate::Outcome;

#[derive(Debug, Args)]
pub struct FreezeArgs {
    #[command(subcommand)]
    pub command: FreezeCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum FreezeCommand {
    /// Freeze rollouts (admin): no rollout in scope starts or enters its next stage while the
    /// window holds; rollbacks always go on. Scope: every unit (default), `--unit`, or
    /// `--select`. Window: `--from/--until` (RFC 3339; no `--until`: until lifted), or
    /// `--weekly DAYS --at HH:MM-HH:MM --tz ZONE`.
    Create {
        /// Only this unit's rollouts.
        #[arg(long, conflicts_with = "select")]
        unit: Option<String>,
        /// Only rollouts whose next stage would expose a node with these labels
        /// (`KEY=V1,V2`, repeatable; every one must match).
        #[arg(long, value_name = "KEY=VALUES")]
        select: Vec<String>,
        /// Start (RFC 3339, e.g. 2026-12-24T00:00:00Z) [default: now].
        #[arg(long, conflicts_with = "weekly")]
        from: Option<String>,
        /// End (RFC 3339) [default: until lifted].
        #[arg(long, conflicts_with = "weekly")]
        until: Option<String>,
        /// Every week on these days (`fri,sat`), with `--at` and `--tz`.
        #[arg(long, value_name = "DAYS", requires = "at")]
        weekly: Option<String>,
        /// The weekly window's wall-clock times, `HH:MM-HH:MM` (end up to 24:00).
        #[arg(long, value_name = "HH:MM-HH:MM", requires = "weekly")]
        at: Option<String>,
        /// The weekly window's IANA time zone (e.g. Europe/Paris).
        #[arg(long, value_name = "ZONE", default_value = "UTC")]
        tz: String,
        /// Why: shown on every refused push, held rollout and in the changelog (required).
        #[arg(long)]
        reason: String,
    },
    /// List freezes (holding now or later).
    List,
    /// Lift a freeze (admin); held rollouts go on.
    Lift {
        /// The freeze's id (see `failsmall freeze list`).
        id: u64,
        /// Why: recorded in the changelog.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stop the line (admin): freeze every rollout from now until lifted.
    Now {
        /// Why: shown everywhere the freeze holds something (required).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct FreezesArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    #[command(subcommand)]
    pub command: MaintenanceCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Put nodes in maintenance (admin): from `--from` until `--until` they are left out of
    /// canaries and baselines; then they join the stages that select them.
    Create {
        /// The nodes, by label (`KEY=V1,V2`, repeatable, at least one).
        #[arg(long, value_name = "KEY=VALUES", required = true)]
        select: Vec<String>,
        /// Start (RFC 3339) [default: now].
        #[arg(long)]
        from: Option<String>,
        /// End (RFC 3339).
        #[arg(long)]
        until: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// List maintenance windows.
    List,
    /// End a maintenance window early (admin).
    End {
        /// The window's id (see `failsmall maintenance list`).
        id: u64,
        /// Why: recorded in the changelog.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `KEY=V1,V2` flags as a selector; an error names the flag and what was expected.
fn selector(flags: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for flag in flags {
        let Some((key, values)) = flag.split_once('=') else {
            bail!("--select {flag:?}: expected KEY=VALUE[,VALUE...], e.g. --select region=eu,us");
        };
        let values: Vec<String> = values
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        if key.trim().is_empty() || values.is_empty() {
            bail!("--select {flag:?}: expected KEY=VALUE[,VALUE...], e.g. --select region=eu,us");
        }
        labels
            .entry(key.trim().to_owned())
            .or_default()
            .extend(values);
    }
    Ok(labels)
}

fn need_reason(reason: &str) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        bail!("--reason is empty; say why (it is shown wherever the window holds something)");
    }
    Ok(())
}

fn list_freezes(remote: &RemoteArgs) -> anyhow::Result<Outcome> {
    let client = remote.connect()?;
    let answer: FreezeList = client.get("/v1/freezes", &[])?;
    if remote.json() {
        print_json(&answer)?;
        return Ok(Outcome::Success);
    }
    let freezes = answer.freezes;
    if freezes.is_empty() {
        outln!("no freezes");
        return Ok(Outcome::Success);
    }
    let mut table = Table::new(&["ID", "HOLDS NOW", "WHAT, WHEN", "BY", "REASON"]);
    for freeze in &freezes {
        table.row(vec![
            freeze.id.to_string(),
            if freeze.active { "yes" } else { "no" }.to_owned(),
            freeze.describe.clone(),
            freeze.actor.clone(),
            freeze.reason.clone(),
        ]);
    }
    out!("{}", table.render());
    Ok(Outcome::Success)
}

pub fn freezes(args: &FreezesArgs) -> anyhow::Result<Outcome> {
    list_freezes(&args.remote)
}

pub fn freeze(args: &FreezeArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let (path, body) = match &args.command {
        FreezeCommand::List => return list_freezes(&args.remote),
        FreezeCommand::Now { reason } => {
            need_reason(reason)?;
            ("/v1/freezes/now".to_owned(), json!({"reason": reason}))
        }
        FreezeCommand::Lift { id, reason } => {
            (format!("/v1/freezes/{id}/lift"), json!({"reason": reason}))
        }
        FreezeCommand::Create {
            unit,
            select,
            from,
            until,
            weekly,
            at,
            tz,
            reason,
        } => {
            need_reason(reason)?;
            let scope = match (unit, select.is_empty()) {
                (Some(unit), _) => json!({"kind": "unit", "unit": unit}),
                (None, false) => json!({"kind": "nodes", "selector": selector(select)?}),
                (None, true) => json!({"kind": "global"}),
            };
            let window = match (weekly, at) {
                (Some(days), Some(at)) => {
                    let Some((start, end)) = at.split_once('-') else {
                        bail!("--at {at:?}: expected HH:MM-HH:MM, e.g. 16:00-24:00");
                    };
                    // The API takes days as it spells them: mon ... sun.
                    let days = days
                        .split(',')
                        .map(|day| {
                            failsmall_core::freeze::Day::parse(day.trim())
                                .map(|day| day.as_str())
                                .ok_or_else(|| {
                                    anyhow::anyhow!(
                                        "--weekly {day:?}: expected mon, tue, wed, thu, fri, sat or sun"
                                    )
                                })
                        })
                        .collect::<anyhow::Result<Vec<&str>>>()?;
                    json!({"kind": "weekly", "days": days, "start": start, "end": end, "time_zone": tz})
                }
                _ => json!({"kind": "once", "from": from, "until": until}),
            };
            (
                "/v1/freezes".to_owned(),
                json!({"scope": scope, "window": window, "reason": reason}),
            )
        }
    };
    if let FreezeCommand::Lift { id, .. } = &args.command {
        let (_, answer): (u16, FreezeLifted) = client.send_json(Method::POST, &path, &body)?;
        if args.remote.json() {
            print_json(&answer)?;
        } else {
            outln!("freeze {id} lifted; held rollouts go on");
        }
        return Ok(Outcome::Success);
    }
    let (_, answer): (u16, Freeze) = client.send_json(Method::POST, &path, &body)?;
    if args.remote.json() {
        print_json(&answer)?;
        return Ok(Outcome::Success);
    }
    outln!(
        "freeze {} created ({}){}: {}",
        answer.id,
        answer.describe,
        if answer.active { ", holding now" } else { "" },
        answer.reason
    );
    outln!("lift it with `failsmall freeze lift {}` (admin)", answer.id);
    Ok(Outcome::Success)
}

pub fn maintenance(args: &MaintenanceArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let (path, body) = match &args.command {
        MaintenanceCommand::List => {
            let answer: MaintenanceList = client.get("/v1/maintenance", &[])?;
            if args.remote.json() {
                print_json(&answer)?;
                return Ok(Outcome::Success);
            }
            let windows = answer.maintenance;
            if windows.is_empty() {
                outln!("no maintenance windows");
                return Ok(Outcome::Success);
            }
            let mut table = Table::new(&["ID", "HOLDS NOW", "NODES, WHEN", "BY", "REASON"]);
            for window in &windows {
                table.row(vec![
                    window.id.to_string(),
                    if window.active { "yes" } else { "no" }.to_owned(),
                    window.describe.clone(),
                    window.actor.clone(),
                    window.reason.clone(),
                ]);
            }
            out!("{}", table.render());
            return Ok(Outcome::Success);
        }
        MaintenanceCommand::End { id, reason } => (
            format!("/v1/maintenance/{id}/end"),
            json!({"reason": reason}),
        ),
        MaintenanceCommand::Create {
            select,
            from,
            until,
            reason,
        } => {
            need_reason(reason)?;
            (
                "/v1/maintenance".to_owned(),
                json!({"selector": selector(select)?, "from": from, "until": until, "reason": reason}),
            )
        }
    };
    if let MaintenanceCommand::End { id, .. } = &args.command {
        let (_, answer): (u16, MaintenanceEnded) = client.send_json(Method::POST, &path, &body)?;
        if args.remote.json() {
            print_json(&answer)?;
        } else {
            outln!("maintenance {id} ended; its nodes join the stages that select them");
        }
        return Ok(Outcome::Success);
    }
    let (_, answer): (u16, Maintenance) = client.send_json(Method::POST, &path, &body)?;
    if args.remote.json() {
        print_json(&answer)?;
        return Ok(Outcome::Success);
    }
    outln!(
        "maintenance {} created ({}): {}",
        answer.id,
        answer.describe,
        answer.reason
    );
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_flags_become_a_selector_and_bad_ones_say_what_was_expected() {
        let labels = selector(&["region=eu,us".into(), "cohort=free".into()]).unwrap();
        assert_eq!(labels["region"], vec!["eu", "us"]);
        assert_eq!(labels["cohort"], vec!["free"]);
        let error = selector(&["region".into()]).unwrap_err().to_string();
        assert!(error.contains("expected KEY=VALUE"), "{error}");
        assert!(selector(&["region=".into()]).is_err());
    }
}
