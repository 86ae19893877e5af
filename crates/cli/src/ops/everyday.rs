//! The everyday operator commands: `whoami`, `status`, `version get`, `versions`,
//! `quarantine list|lift`, `node remove`, and `rollout undo|retry` (called from
//! [`super::rollout`]).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use failsmall_core::duration::format_ms;
use failsmall_wire::Version;
use failsmall_wire::nodes::NodeRemoved;
use failsmall_wire::operator::{ServerStatus, WhoAmI};
use failsmall_wire::quarantine::{QuarantineLifted, QuarantineList, QuarantinedVersion};
use failsmall_wire::requests::Role;
use failsmall_wire::rollouts::Rollout as RolloutView;
use failsmall_wire::units::Unit as UnitRecord;
use failsmall_wire::versions::VersionList as VersionStatusList;
use reqwest::Method;
use serde_json::json;

use super::RemoteArgs;
use super::client::ApiClient;
use super::render::{Table, print_json, rfc3339, short_hash};
use super::rollout::{stage_text, status_name};
use crate::Outcome;

/// The plan `rollout undo --fast` goes back through: every node at once, no bake, no soak;
/// a NACK, a crash or a failed health check still fails it (so the version it restores
/// becomes stable again once a node ACKs it).
pub const FAST_UNDO_PLAN: &str = "name: fast-undo\nsoak: 0s\nexclusive_nodes: false\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 0\n    gates: []\n    hard_signals: { rejections: 1, crashes: 1, health_check_failures: 1, silent_nodes: 0 }\n";
/// The name `rollout undo --fast` gives that plan in the changelog.
pub const FAST_UNDO_PLAN_NAME: &str = "the fast undo plan (every node at once)";

#[derive(Debug, Args)]
pub struct WhoamiArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    #[command(subcommand)]
    pub command: VersionCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Write a version's bytes to stdout, or to a file.
    Get {
        /// The unit.
        unit: String,
        /// The version: a hash, or a unique prefix of at least 4 characters.
        hash: String,
        /// Write the bytes to this file instead of stdout (`-o` is the output format).
        #[arg(long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// The unit.
    pub unit: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    pub command: QuarantineCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined versions (rolled back: they roll out again only with an override).
    List {
        /// Only this unit's.
        #[arg(long)]
        unit: Option<String>,
    },
    /// Lift a version's quarantine, so it may roll out again without an override (admin).
    Lift {
        /// The unit.
        unit: String,
        /// The version: a hash, or a unique prefix of at least 4 characters.
        hash: String,
        /// Why: recorded in the changelog (required).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Remove a node from the fleet (admin): no stage waits for it any more. An agent that
    /// starts again registers it again.
    Remove {
        /// The node's id.
        node: String,
        /// Why: recorded in the changelog.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `rollout undo UNIT`.
#[derive(Debug, Args)]
pub struct UndoArgs {
    /// The unit.
    pub unit: String,
    /// Go back at once: every node in one step, no bake and no soak (a NACK or a crash still
    /// fails it). Without it the unit's plan (else the built-in default plan) is used.
    #[arg(long)]
    pub fast: bool,
    /// Why: recorded in the changelog.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Then follow the rollout as `rollout watch` does: exits 0 when it completes, 3 when it
    /// is rolled back or aborted.
    #[arg(long)]
    pub watch: bool,
}

/// `rollout retry ID`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The rollout's id (`7` or `r7`): one that was rolled back or aborted.
    #[arg(value_parser = super::rollout::parse_rollout_id)]
    pub id: u64,
    /// Why: recorded in the changelog.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Retry a version its rollback quarantined (admin only).
    #[arg(long)]
    pub override_quarantine: bool,
    /// Retry although an SLO of the unit has spent its error budget (admin only; needs
    /// --reason, recorded in the changelog).
    #[arg(long)]
    pub override_error_budget: bool,
    /// Then follow the rollout as `rollout watch` does: exits 0 when it completes, 3 when it
    /// is rolled back or aborted.
    #[arg(long)]
    pub watch: bool,
}

pub fn whoami(args: &WhoamiArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let who: WhoAmI = client.get("/v1/whoami", &[])?;
    if args.remote.json() {
        print_json(&who)?;
        return Ok(Outcome::Success);
    }
    let role = who.role.map_or("none", Role::as_str);
    match who.node {
        Some(node) => outln!("{} (role {role}, acts for node {node})", who.name),
        None => outln!("{} (role {role})", who.name),
    }
    outln!("server {}", client.addr());
    Ok(Outcome::Success)
}

pub fn status(args: &StatusArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let answer: ServerStatus = client.get("/v1/status", &[])?;
    if args.remote.json() {
        print_json(&answer)?;
        return Ok(Outcome::Success);
    }
    let (server, store, counts) = (&answer.server, &answer.store, &answer.counts);
    outln!(
        "server     {} (failsmall {}), up and answering",
        client.addr(),
        server.version
    );
    outln!("leader     {}", answer.leader);
    outln!(
        "store      {} schema {}, engine revision {}, {} bytes of versions, {} changelog entries",
        store.kind,
        store.schema_version,
        store.engine_revision,
        store.blob_bytes,
        store.changelog_entries
    );
    outln!(
        "units      {} ({} versions, {} quarantined)",
        counts.units,
        counts.versions,
        counts.quarantined
    );
    outln!(
        "nodes      {}: {} down (not heard from for {}), {} stale",
        counts.nodes,
        counts.nodes_down,
        format_ms(server.node_down_after_ms),
        counts.nodes_stale
    );
    let rollouts = counts
        .rollouts
        .iter()
        .map(|(status, count)| format!("{count} {status}"))
        .collect::<Vec<_>>()
        .join(", ");
    outln!("rollouts   {rollouts}");
    Ok(Outcome::Success)
}

pub fn version(args: &VersionArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    match &args.command {
        VersionCommand::Get { unit, hash, out } => {
            let hash = super::versions::resolve_hash(&client, unit, hash)?;
            // The version must be the unit's: a blob of another unit is not this one's version.
            let _: Version = client.get(&format!("/v1/units/{unit}/versions/{hash}"), &[])?;
            let bytes = client.get_bytes(&format!("/v1/blobs/{hash}"))?;
            match out {
                Some(path) => {
                    std::fs::write(path, &bytes)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "{} bytes of {unit} {} written to {}",
                        bytes.len(),
                        short_hash(&hash),
                        path.display()
                    );
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&bytes).context("cannot write to stdout")?;
                    stdout.flush().context("cannot write to stdout")?;
                }
            }
        }
    }
    Ok(Outcome::Success)
}

pub fn versions(args: &VersionsArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    // An unknown unit is a clear error, not an empty list.
    let _: UnitRecord = client.get(&format!("/v1/units/{}", args.unit), &[])?;
    let list: VersionStatusList =
        client.get_all(&format!("/v1/units/{}/versions", args.unit), "versions")?;
    if args.remote.json() {
        print_json(&list)?;
        return Ok(Outcome::Success);
    }
    if list.versions.is_empty() {
        outln!(
            "unit {} has no versions yet; push one with `failsmall push {} FILE -m MESSAGE`",
            args.unit,
            args.unit
        );
        return Ok(Outcome::Success);
    }
    let mut table = Table::new(&[
        "SEQ", "VERSION", "STATUS", "LIVE ON", "ROLLOUT", "CREATED", "AUTHOR", "MESSAGE",
    ]);
    for version in &list.versions {
        let rollout = version.latest_rollout.as_ref().map_or_else(
            || "-".to_owned(),
            |r| format!("r{} {}", r.id, r.status.as_str()),
        );
        table.row(vec![
            version.version.seq.to_string(),
            short_hash(&version.version.hash).to_owned(),
            version.status.clone(),
            format!("{} nodes", version.live_nodes),
            rollout,
            rfc3339(version.version.created_ms),
            version.version.author.clone(),
            version.version.message.clone(),
        ]);
    }
    out!("{}", table.render());
    Ok(Outcome::Success)
}

pub fn quarantine(args: &QuarantineArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    match &args.command {
        QuarantineCommand::List { unit } => {
            let list: QuarantineList = client.get_all("/v1/quarantine", "quarantined")?;
            let entries: Vec<&QuarantinedVersion> = list
                .quarantined
                .iter()
                .filter(|q| unit.as_deref().is_none_or(|u| q.unit == u))
                .collect();
            if args.remote.json() {
                print_json(&entries)?;
                return Ok(Outcome::Success);
            }
            if entries.is_empty() {
                outln!("no quarantined versions");
                return Ok(Outcome::Success);
            }
            let mut table = Table::new(&["UNIT", "VERSION", "BY ROLLOUT", "AUTHOR", "MESSAGE"]);
            for entry in entries {
                table.row(vec![
                    entry.unit.clone(),
                    short_hash(&entry.version).to_owned(),
                    format!("r{}", entry.rollout),
                    entry.author.clone().unwrap_or_default(),
                    entry.message.clone().unwrap_or_default(),
                ]);
            }
            out!("{}", table.render());
            outln!(
                "lift one with `failsmall quarantine lift UNIT VERSION --reason \"...\"` (admin)"
            );
        }
        QuarantineCommand::Lift { unit, hash, reason } => {
            if reason.trim().is_empty() {
                bail!(
                    "--reason is empty; say why the quarantine is lifted (it goes to the changelog)"
                );
            }
            let hash = super::versions::resolve_hash(&client, unit, hash)?;
            let path = format!("/v1/units/{unit}/quarantine/{hash}/lift");
            let (_, answer): (u16, QuarantineLifted) =
                client.send_json(Method::POST, &path, &json!({"reason": reason}))?;
            if args.remote.json() {
                print_json(&answer)?;
            } else {
                outln!(
                    "quarantine of {unit} {} lifted; it may roll out again",
                    short_hash(&hash)
                );
            }
        }
    }
    Ok(Outcome::Success)
}

pub fn node(args: &NodeArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    match &args.command {
        NodeCommand::Remove { node, reason } => {
            let (_, answer): (u16, NodeRemoved) = client.send_json(
                Method::DELETE,
                &format!("/v1/nodes/{node}"),
                &json!({"reason": reason}),
            )?;
            if args.remote.json() {
                print_json(&answer)?;
            } else {
                outln!("node {node} removed from the fleet");
            }
        }
    }
    Ok(Outcome::Success)
}

/// `rollout undo UNIT`: the version that was stable before the current stable one, rolled
/// out through the unit's plan (else the built-in default plan), or at once with `--fast`.
/// `rollout undo UNIT`: the id of the rollout it started, if the server started one at once.
pub fn undo(client: &ApiClient, args: &UndoArgs, json_output: bool) -> anyhow::Result<Option<u64>> {
    let unit: UnitRecord = client.get(&format!("/v1/units/{}", args.unit), &[])?;
    let list: VersionStatusList =
        client.get_all(&format!("/v1/units/{}/versions", args.unit), "versions")?;
    if let Some(open) = list
        .versions
        .iter()
        .find(|v| matches!(v.status.as_str(), "rolling out" | "queued"))
    {
        let id = open.latest_rollout.as_ref().map_or(0, |r| r.id);
        bail!(
            "unit {} has rollout r{id} of {} open; roll it back with `failsmall rollout rollback \
             {id}` (or abort it), then undo",
            args.unit,
            short_hash(&open.version.hash)
        );
    }
    let Some(target) = list.previous_stable.clone() else {
        let now = match &list.stable {
            Some(stable) => format!("its stable version is {}", short_hash(stable)),
            None => "it has no stable version".to_owned(),
        };
        bail!(
            "unit {} has no earlier stable version to go back to ({now}); roll out a stored \
             version with `failsmall rollout start {} VERSION`",
            args.unit,
            args.unit
        );
    };
    let (plan_file, plan_text) = if args.fast {
        (FAST_UNDO_PLAN_NAME.to_owned(), FAST_UNDO_PLAN.to_owned())
    } else {
        match &unit.plan {
            Some(own) => (format!("the plan of unit {}", args.unit), own.clone()),
            None => super::versions::load_plan(None)?,
        }
    };
    let from = list.stable.as_deref().map_or("none", short_hash).to_owned();
    let reason = if args.reason.is_empty() {
        format!("undo: back from {from} to {}", short_hash(&target))
    } else {
        format!(
            "undo: back from {from} to {}: {}",
            short_hash(&target),
            args.reason
        )
    };
    let view = super::versions::request_rollout(
        client,
        &super::versions::RolloutRequest {
            unit: &args.unit,
            version: &target,
            plan_file: &plan_file,
            plan_text: &plan_text,
            reason: &reason,
            override_quarantine: false,
            override_error_budget: false,
        },
    )?;
    print_started(view, &args.unit, &target, json_output, "undo")
}

/// `rollout retry ID`: the id of the rollout it started, if the server started one at once.
pub fn retry(
    client: &ApiClient,
    args: &RetryArgs,
    json_output: bool,
) -> anyhow::Result<Option<u64>> {
    let (_, view): (u16, Option<RolloutView>) = client.send_json(
        Method::POST,
        &format!("/v1/rollouts/{}/retry", args.id),
        &json!({
            "reason": args.reason,
            "override_quarantine": args.override_quarantine,
            "override_error_budget": args.override_error_budget,
        }),
    )?;
    let (unit, version) = view
        .as_ref()
        .map(|v| (v.unit.clone(), v.version.clone()))
        .unwrap_or_default();
    print_started(view, &unit, &version, json_output, "retry")
}

fn print_started(
    view: Option<RolloutView>,
    unit: &str,
    version: &str,
    json_output: bool,
    what: &str,
) -> anyhow::Result<Option<u64>> {
    let started = view.as_ref().map(|view| view.id);
    if json_output {
        print_json(&view)?;
        return Ok(started);
    }
    match view {
        Some(view) => {
            outln!(
                "{what}: rollout {} of {unit} {}: {} {} (plan {})",
                view.id,
                short_hash(version),
                status_name(view.status),
                stage_text(&view),
                view.plan
            );
            outln!("follow  failsmall rollout watch {}", view.id);
        }
        None => outln!(
            "{what}: rollout of {unit} {} requested",
            short_hash(version)
        ),
    }
    Ok(started)
}
