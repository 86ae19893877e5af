//! The operator commands: talk to a running control plane over its HTTP API (`unit`, `push`,
//! `diff`, `rollout`, `log`, `nodes`, `token`), check files offline (`validate`), and print shell
//! completions. One file per command group; [`client`] is the API client and [`remote`]
//! resolves the address and token.

pub mod client;
pub mod completions;
pub mod elevation;
pub mod everyday;
pub mod incident;
pub mod log;
pub mod log_verify;
pub mod nodes;
pub mod notify;
pub mod remote;
pub mod render;
pub mod rollout;
pub mod slo;
pub mod token;
pub mod unit;
pub mod validate;
pub mod versions;
pub mod watch;
pub mod windows;

use std::path::Path;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::{Outcome, Output};
use client::ApiClient;

/// How to reach the server, and how to print. Global: accepted before or after a subcommand.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The server's address [else FAILSMALL_ADDR, else `addr` in
    /// ~/.config/failsmall/config.toml, else http://127.0.0.1:7070].
    #[arg(long, value_name = "URL", global = true)]
    pub addr: Option<String>,
    /// The bearer token [else FAILSMALL_TOKEN, else `token` in the config file].
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// A PEM CA bundle: for an https:// address, trust only these CAs [else FAILSMALL_CA,
    /// else the public root CAs built in].
    #[arg(long, value_name = "FILE", global = true, env = "FAILSMALL_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// For an https:// address, trust only the certificate with this SHA-256 (hex, as
    /// `failsmall server` prints it) instead of any CA [else FAILSMALL_PIN_SHA256].
    #[arg(
        long,
        value_name = "HEX",
        global = true,
        env = "FAILSMALL_PIN_SHA256",
        conflicts_with = "ca"
    )]
    pub pin_sha256: Option<String>,
    /// Output format: tables for people, JSON for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

impl RemoteArgs {
    /// A client for the resolved address and token.
    pub fn connect(&self) -> anyhow::Result<ApiClient> {
        let env = |key: &str| std::env::var(key).ok();
        let remote = remote::resolve(self.addr.as_deref(), self.token.as_deref(), &env)?;
        Ok(ApiClient::new(
            remote,
            self.ca.as_deref(),
            self.pin_sha256.as_deref(),
        )?)
    }

    pub fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// The operator subcommands, inlined into the top-level command list.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Define, list, show, edit and delete units of configuration.
    Unit(unit::UnitArgs),
    /// Push a file as a new version of a unit and start its rollout.
    Push(versions::PushArgs),
    /// Show the unified diff between two versions of a unit.
    Diff(versions::DiffArgs),
    /// List, follow and steer rollouts.
    Rollout(rollout::RolloutArgs),
    /// Show the changelog: every change to the fleet, by whom, when and why.
    Log(log::LogArgs),
    /// List the nodes the server knows, with their labels and when they were last seen.
    Nodes(nodes::NodesArgs),
    /// Create, list and revoke access tokens (admin).
    Token(token::TokenArgs),
    /// Service level objectives: create, list, show (error budget, burn rates), delete.
    Slo(slo::SloArgs),
    /// Check a file against a unit's spec offline, with the same checks as the server.
    Validate(validate::ValidateArgs),
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
    /// Get a version's bytes.
    Version(everyday::VersionArgs),
    /// List a unit's versions, each with its status (stable, rolling out, quarantined, rolled
    /// back, never rolled out, ...) and how many nodes it is live on.
    Versions(everyday::VersionsArgs),
    /// List and lift quarantined versions.
    Quarantine(everyday::QuarantineArgs),
    /// Remove a node from the fleet.
    Node(everyday::NodeArgs),
    /// Show which token the server sees: its name, role and node.
    Whoami(everyday::WhoamiArgs),
    /// Show the server's status: its version, store, and counts of units, nodes and rollouts.
    Status(everyday::StatusArgs),
    /// Freeze rollouts (a window, or stop the line now), list and lift freezes.
    Freeze(windows::FreezeArgs),
    /// List freezes (as `freeze list`).
    Freezes(windows::FreezesArgs),
    /// Take nodes out of canaries and baselines for a maintenance window; list and end them.
    Maintenance(windows::MaintenanceArgs),
    /// Webhook notifications: subscriptions, dead letters, retries.
    Notify(notify::NotifyArgs),
    /// Incidents: open one, list, show, publish updates, resolve, attach the review.
    Incident(incident::IncidentArgs),
}

pub fn run(command: &OpsCommand) -> anyhow::Result<Outcome> {
    match command {
        OpsCommand::Unit(args) => unit::run(args),
        OpsCommand::Push(args) => versions::push(args),
        OpsCommand::Diff(args) => versions::diff(args),
        OpsCommand::Rollout(args) => rollout::run(args),
        OpsCommand::Log(args) => log::run(args),
        OpsCommand::Nodes(args) => nodes::run(args),
        OpsCommand::Token(args) => token::run(args),
        OpsCommand::Slo(args) => slo::run(args),
        OpsCommand::Validate(args) => validate::run(args),
        OpsCommand::Completions(args) => completions::run(args),
        OpsCommand::Version(args) => everyday::version(args),
        OpsCommand::Versions(args) => everyday::versions(args),
        OpsCommand::Quarantine(args) => everyday::quarantine(args),
        OpsCommand::Node(args) => everyday::node(args),
        OpsCommand::Whoami(args) => everyday::whoami(args),
        OpsCommand::Status(args) => everyday::status(args),
        OpsCommand::Freeze(args) => windows::freeze(args),
        OpsCommand::Freezes(args) => windows::freezes(args),
        OpsCommand::Maintenance(args) => windows::maintenance(args),
        OpsCommand::Notify(args) => notify::run(args),
        OpsCommand::Incident(args) => incident::run(args),
    }
}

/// Reads a whole file of at most `max_bytes`, saying which file failed and why.
pub fn read_file_limited(path: &Path, max_bytes: u64) -> anyhow::Result<Vec<u8>> {
    let size_bytes = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}; check the path", path.display()))?
        .len();
    if size_bytes > max_bytes {
        bail!(
            "{}: {size_bytes} bytes; the limit is {max_bytes}",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads a whole UTF-8 text file of at most `max_bytes`.
pub fn read_text_limited(path: &Path, max_bytes: u64) -> anyhow::Result<String> {
    let bytes = read_file_limited(path, max_bytes)?;
    String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not UTF-8 text: {e}", path.display()))
}
