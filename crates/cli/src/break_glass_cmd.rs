//! `failsmall break-glass`: emergency orders that go straight to agents, with the control
//! plane down (README: Break glass). `draft` writes an unsigned order; each break-glass key
//! holder runs `sign` on it; `apply` posts it to each agent's local API, which verifies it
//! against its pinned root and applies it at once; `status` shows what agents hold.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use failsmall_core::break_glass::{Action, Order, SignedOrder};
use failsmall_core::trust::parse_seed;
use serde_json::Value;

use crate::Outcome;

/// How long one agent is given to answer.
const AGENT_TIMEOUT_MS: u64 = 10_000;
/// Most agents one command talks to.
const AGENTS_MAX: usize = 10_000;

#[derive(Debug, Subcommand)]
pub enum BreakGlassCommand {
    /// Write an unsigned order: units to pin or revert, which nodes, why, for how long.
    Draft(DraftArgs),
    /// Sign an order with one break-glass key (each holder in turn, offline).
    Sign(SignArgs),
    /// Deliver a signed order to agents' local APIs; each verifies and applies it at once.
    Apply(ApplyArgs),
    /// Show the orders in force on agents and their break-glass logs.
    Status(StatusArgs),
    /// Online break glass: ask the control plane for a time-boxed elevated role (admin,
    /// deployer, approver); other people approve it.
    Request(crate::ops::elevation::RequestArgs),
    /// Online break-glass requests: who asked, for what, approvals, state, when the role ends.
    Requests(crate::ops::elevation::ListArgs),
    /// Approve another person's online break-glass request (approver or admin).
    Approve(crate::ops::elevation::ApproveArgs),
    /// Take your granted role, once: prints a token that expires on its own.
    Claim(crate::ops::elevation::ClaimArgs),
}

#[derive(Debug, Args)]
pub struct DraftArgs {
    /// Where to write the order.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Pin a unit to a version stored on the nodes: UNIT=SHA256 (repeatable).
    #[arg(long, value_name = "UNIT=SHA256")]
    pub pin: Vec<String>,
    /// Put a unit back to each node's last known good (repeatable).
    #[arg(long, value_name = "UNIT")]
    pub revert: Vec<String>,
    /// Lift an earlier order by its nonce (repeatable): its units follow the desired state
    /// again.
    #[arg(long, value_name = "NONCE")]
    pub lift: Vec<String>,
    /// Pause everything: every unit of the selected nodes keeps what it serves and nothing
    /// from the control plane is applied or removed there while the order is in force.
    #[arg(long)]
    pub pause_all: bool,
    /// Only nodes with this label (`node=ID` for one node); repeatable; none: every node.
    #[arg(long, value_name = "KEY=VALUE")]
    pub select: Vec<String>,
    /// Why: kept in every node's log and in the changelog.
    #[arg(long)]
    pub reason: String,
    /// How long the order is in force (at most 6h); then the desired state rules again.
    #[arg(long, value_name = "DURATION", default_value = "2h")]
    pub expires_in: String,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The order to sign; the signature is added to it.
    #[arg(long, value_name = "FILE")]
    pub order: PathBuf,
    /// This holder's break-glass key (a root key share, unless the root names others).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The signed order.
    #[arg(long, value_name = "FILE")]
    pub order: PathBuf,
    /// An agent's local API address, HOST:PORT (repeatable).
    #[arg(long = "agent", value_name = "ADDR", required = true)]
    pub agents: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// An agent's local API address, HOST:PORT (repeatable).
    #[arg(long = "agent", value_name = "ADDR", required = true)]
    pub agents: Vec<String>,
}

pub fn run(command: &BreakGlassCommand) -> anyhow::Result<Outcome> {
    match command {
        BreakGlassCommand::Draft(args) => draft(args),
        BreakGlassCommand::Sign(args) => sign(args),
        BreakGlassCommand::Apply(args) => apply(args),
        BreakGlassCommand::Status(args) => status(args),
        BreakGlassCommand::Request(args) => crate::ops::elevation::request(args),
        BreakGlassCommand::Requests(args) => crate::ops::elevation::list(args),
        BreakGlassCommand::Approve(args) => crate::ops::elevation::approve(args),
        BreakGlassCommand::Claim(args) => crate::ops::elevation::claim(args),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn pair<'a>(flag: &str, text: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok((key, value)),
        _ => bail!("{flag} {text:?}: expected KEY=VALUE"),
    }
}

fn draft(args: &DraftArgs) -> anyhow::Result<Outcome> {
    let mut actions = Vec::new();
    for pin in &args.pin {
        let (unit, version) = pair("--pin", pin)?;
        actions.push(Action::Pin {
            unit: unit.to_owned(),
            version: version.to_owned(),
        });
    }
    for unit in &args.revert {
        actions.push(Action::Revert { unit: unit.clone() });
    }
    let mut selector = std::collections::BTreeMap::new();
    for select in &args.select {
        let (key, value) = pair("--select", select)?;
        selector.insert(key.to_owned(), value.to_owned());
    }
    let in_force = humantime::parse_duration(&args.expires_in)
        .with_context(|| format!("--expires-in {:?}: expected e.g. 2h", args.expires_in))?;
    let issued_ms = now_ms();
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness for a nonce: {e}"))?;
    let order = SignedOrder {
        order: Order {
            nonce: hex::encode(nonce),
            reason: args.reason.clone(),
            issued_ms,
            expires_ms: issued_ms
                .saturating_add(u64::try_from(in_force.as_millis()).unwrap_or(u64::MAX)),
            selector,
            actions,
            lifts: args.lift.clone(),
            pause_all: args.pause_all,
        },
        signatures: vec![],
    };
    order.order.validate()?;
    if args.out.exists() {
        bail!("{} exists: an order is drafted once", args.out.display());
    }
    std::fs::write(&args.out, order.to_text())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} (order {}, unsigned). Break-glass key holders sign it \
         (`failsmall break-glass sign --order {} --key FILE`), then deliver it \
         (`failsmall break-glass apply --order {} --agent HOST:PORT ...`).",
        args.out.display(),
        order.order.nonce,
        args.out.display(),
        args.out.display()
    );
    Ok(Outcome::Success)
}

fn read_order(path: &std::path::Path) -> anyhow::Result<(String, SignedOrder)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let order = SignedOrder::parse(&text).with_context(|| format!("{}", path.display()))?;
    Ok((text, order))
}

fn sign(args: &SignArgs) -> anyhow::Result<Outcome> {
    let (_, mut order) = read_order(&args.order)?;
    order.order.validate()?;
    let text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading {}", args.key.display()))?;
    let seed = parse_seed(&text).with_context(|| {
        format!(
            "{}: expected 64 hex characters (a break-glass key)",
            args.key.display()
        )
    })?;
    order.sign_with(&seed);
    std::fs::write(&args.order, order.to_text())
        .with_context(|| format!("writing {}", args.order.display()))?;
    println!(
        "signed order {} with {}: {} signature(s)",
        order.order.nonce,
        failsmall_core::trust::public_key_hex(&seed),
        order.signatures.len()
    );
    Ok(Outcome::Success)
}

/// The JSON value at `pointer` (`/a/b`), null when absent.
fn field<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or(&Value::Null)
}

fn client() -> anyhow::Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(AGENT_TIMEOUT_MS))
        .build()?)
}

fn agent_url(agent: &str) -> String {
    if agent.starts_with("http://") || agent.starts_with("https://") {
        format!("{}/v1/break-glass", agent.trim_end_matches('/'))
    } else {
        format!("http://{agent}/v1/break-glass")
    }
}

fn apply(args: &ApplyArgs) -> anyhow::Result<Outcome> {
    if args.agents.len() > AGENTS_MAX {
        bail!("{} agents; the limit is {AGENTS_MAX}", args.agents.len());
    }
    let (text, order) = read_order(&args.order)?;
    let client = client()?;
    let mut refused = 0usize;
    for agent in &args.agents {
        let answer = client
            .post(agent_url(agent))
            .header("content-type", "application/json")
            .body(text.clone())
            .send()
            .and_then(|response| {
                let status = response.status();
                response.json::<Value>().map(|body| (status, body))
            });
        match answer {
            Ok((status, body)) if status.is_success() => {
                for line in field(&body, "/applied").as_array().into_iter().flatten() {
                    println!(
                        "{agent}: unit {}: {}",
                        field(line, "/unit").as_str().unwrap_or("?"),
                        field(line, "/outcome").as_str().unwrap_or("?")
                    );
                }
            }
            Ok((status, body)) => {
                refused += 1;
                println!(
                    "{agent}: REFUSED ({status}): {}",
                    field(&body, "/error/message")
                        .as_str()
                        .unwrap_or("no reason given")
                );
            }
            Err(error) => {
                refused += 1;
                println!("{agent}: UNREACHABLE: {error}");
            }
        }
    }
    println!(
        "order {}: {} of {} agents applied it",
        order.order.nonce,
        args.agents.len() - refused,
        args.agents.len()
    );
    Ok(if refused == 0 {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}

fn status(args: &StatusArgs) -> anyhow::Result<Outcome> {
    if args.agents.len() > AGENTS_MAX {
        bail!("{} agents; the limit is {AGENTS_MAX}", args.agents.len());
    }
    let client = client()?;
    let mut unreachable = 0usize;
    for agent in &args.agents {
        match client
            .get(agent_url(agent))
            .send()
            .and_then(|r| r.json::<Value>())
        {
            Ok(body) => {
                let orders = field(&body, "/in_force").as_array().map_or(0, Vec::len);
                let log = field(&body, "/log").as_array().map_or(0, Vec::len);
                println!(
                    "{agent}: {orders} order(s) in force; {log} log line(s), {} reported to the control plane",
                    field(&body, "/reported")
                );
                for accepted in field(&body, "/in_force").as_array().into_iter().flatten() {
                    println!(
                        "  order {} until {}: {}",
                        field(accepted, "/order/nonce").as_str().unwrap_or("?"),
                        failsmall_core::domain::rfc3339_from_ms(
                            field(accepted, "/order/expires_ms")
                                .as_u64()
                                .unwrap_or(0)
                                .min(253_402_300_799_000)
                        ),
                        field(accepted, "/order/reason").as_str().unwrap_or("")
                    );
                }
            }
            Err(error) => {
                unreachable += 1;
                println!("{agent}: UNREACHABLE: {error}");
            }
        }
    }
    Ok(if unreachable == 0 {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}
