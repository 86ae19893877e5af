//! Break glass on the node: a [`failsmall_core::break_glass::SignedOrder`] delivered straight
//! to the agent (local API `POST /v1/break-glass`, or a file dropped in
//! `DIR/break-glass/inbox/`), with no control plane needed.
//!
//! The agent verifies the order against the root it pins (M of the root's break-glass keys,
//! in force, a nonce it never accepted), applies it at once (each unit to the pinned version,
//! or back to its last known good: versions already stored on the node), and from then until
//! the order expires keeps those units as the order says, whatever the desired state says.
//! Every use is logged on the node (`DIR/break-glass/log.jsonl`, and a warning) and reported
//! to the control plane's changelog when it is reachable (`POST /v1/nodes/{node}/break-glass`),
//! from the log on disk: a restart loses nothing.
//!
//! Files in `DIR/break-glass/`: `orders.json` (the orders accepted and not yet expired: their
//! nonces refuse replays, their actions override), `log.jsonl`, `reported` (how many log
//! lines the control plane has), `inbox/` (dropped orders; each is consumed).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use failsmall_core::break_glass::{Action, Order, OrderError, SignedOrder};
use failsmall_core::domain::{UnitName, VersionHash};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::control::ControlPlane;
use crate::disk::{DiskError, write_atomic};
use crate::{AgentConfig, Shared, now_ms, pause};

/// Most orders in force at once on one node.
pub const ORDERS_MAX: usize = 64;
/// Most log lines sent to the control plane in one round.
pub const REPORT_BATCH_MAX: usize = 32;
/// How often the inbox is looked at and the log sent, in milliseconds.
pub const INTERVAL_MS: u64 = 1_000;
/// Largest log file read back for reporting, in bytes.
pub const LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// An order the node accepted, and what each of its units is kept at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub order: Order,
    pub signers: Vec<String>,
    pub accepted_ms: u64,
    /// Per unit, the version the order keeps it at (a revert resolved when accepted); none:
    /// the version was not on the node.
    pub targets: BTreeMap<String, Option<String>>,
    /// When a later order lifted it: its nonce stays spent, its units follow the desired
    /// state again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_ms: Option<u64>,
}

/// One line of the node's break-glass log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub nonce: String,
    pub reason: String,
    pub unit: String,
    pub version: Option<String>,
    pub outcome: String,
    pub at_ms: u64,
    pub expires_ms: u64,
    pub signers: Vec<String>,
}

/// Why an order was not applied.
#[derive(Debug, thiserror::Error)]
pub enum BreakGlassError {
    #[error(
        "this agent pins no root (--root FILE): break-glass orders are verified against the root's break-glass keys"
    )]
    NoRoot,
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("break-glass order {nonce}: its selector {selector:?} does not select node {node}")]
    NotSelected {
        nonce: String,
        node: String,
        selector: BTreeMap<String, String>,
    },
    #[error("{ORDERS_MAX} break-glass orders are in force already; the limit is {ORDERS_MAX}")]
    TooMany,
    #[error(transparent)]
    Disk(#[from] DiskError),
}

impl BreakGlassError {
    /// Whether the order itself is at fault (a 4xx), not the node.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Self::Disk(_))
    }
}

fn dir(shared: &Shared) -> PathBuf {
    shared.disk.root().join("break-glass")
}

/// The orders on disk still in force at `now_ms` (not expired, not lifted).
pub fn in_force(shared: &Shared, now_ms: u64) -> Vec<Accepted> {
    recorded(shared, now_ms)
        .into_iter()
        .filter(|accepted| accepted.lifted_ms.is_none())
        .collect()
}

/// The orders on disk not yet expired, lifted ones included (their nonces stay spent).
fn recorded(shared: &Shared, now_ms: u64) -> Vec<Accepted> {
    let path = dir(shared).join("orders.json");
    let orders: Vec<Accepted> = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|error| {
            tracing::error!(path = %path.display(), %error, "break-glass orders unreadable");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    orders
        .into_iter()
        .filter(|accepted| !accepted.order.is_expired(now_ms))
        .collect()
}

/// The order in force that pauses everything on this node, if any (its nonce).
pub fn pausing(orders: &[Accepted]) -> Option<&str> {
    orders
        .iter()
        .rev()
        .find(|accepted| accepted.order.pause_all)
        .map(|accepted| accepted.order.nonce.as_str())
}

/// The version an order in force keeps `unit` at, if any (the latest order wins).
pub fn override_of(orders: &[Accepted], unit: &UnitName) -> Option<(String, Option<VersionHash>)> {
    orders.iter().rev().find_map(|accepted| {
        accepted.targets.get(unit.as_str()).map(|target| {
            (
                accepted.order.nonce.clone(),
                target.as_deref().and_then(|h| h.parse().ok()),
            )
        })
    })
}

/// Verifies and applies an order's text; what each unit became.
pub async fn accept(
    shared: &Arc<Shared>,
    config: &AgentConfig,
    text: &str,
) -> Result<Vec<LogLine>, BreakGlassError> {
    // One order at a time: the nonce check and the record are one step.
    static APPLYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = APPLYING.lock().await;
    let now = now_ms();
    let root = shared.root().ok_or(BreakGlassError::NoRoot)?;
    let signed = SignedOrder::parse(text)?;
    let order = signed.verify(&root.signed, now)?.clone();
    let node = shared.with_status(|s| s.node.clone()).unwrap_or_default();
    let mut orders = recorded(shared, now);
    if orders.iter().any(|a| a.order.nonce == order.nonce) {
        return Err(OrderError::Replayed { nonce: order.nonce }.into());
    }
    if !order.selects(&node, &config.labels) {
        return Err(BreakGlassError::NotSelected {
            nonce: order.nonce,
            node,
            selector: order.selector,
        });
    }
    if orders.iter().filter(|a| a.lifted_ms.is_none()).count() >= ORDERS_MAX
        || orders.len() >= 2 * ORDERS_MAX
    {
        return Err(BreakGlassError::TooMany);
    }
    let signers: Vec<String> = signed
        .signatures
        .iter()
        .filter(|s| root.signed.break_glass_keys.contains(&s.key))
        .map(|s| s.key.clone())
        .collect();
    let mut targets = BTreeMap::new();
    for action in &order.actions {
        let unit = UnitName::new(action.unit().to_owned()).map_err(|e| OrderError::Invalid {
            field: "actions",
            reason: e.to_string(),
        })?;
        let target = match action {
            Action::Pin { version, .. } => version.parse::<VersionHash>().ok(),
            Action::Revert { .. } => shared.disk.good(&unit)?,
        };
        let stored = match target {
            Some(hash) => shared.disk.version(&unit, &hash)?.map(|_| hash),
            None => None,
        };
        targets.insert(unit.to_string(), stored.map(|h| h.to_string()));
    }
    // Pause everything: every unit the node serves is kept at what it serves now.
    if order.pause_all {
        let units: Vec<UnitName> = shared
            .with_status(|s| s.units.keys().cloned().collect())
            .unwrap_or_default();
        for unit in units {
            if let Some(active) = shared.active(&unit) {
                targets
                    .entry(unit.to_string())
                    .or_insert_with(|| Some(active.to_string()));
            }
        }
    }
    // Lifted orders: their units follow the desired state again from the next document.
    let mut lifted_units = Vec::new();
    for earlier in orders
        .iter_mut()
        .filter(|a| a.lifted_ms.is_none() && order.lifts.contains(&a.order.nonce))
    {
        earlier.lifted_ms = Some(now);
        lifted_units.extend(
            earlier
                .targets
                .keys()
                .map(|unit| (earlier.order.nonce.clone(), unit.clone())),
        );
    }
    // Recorded before it is applied: a crash halfway is finished by the next document's
    // convergence (the order overrides) and the nonce is spent.
    orders.push(Accepted {
        order: order.clone(),
        signers: signers.clone(),
        accepted_ms: now,
        targets: targets.clone(),
        lifted_ms: None,
    });
    save_orders(shared, &orders)?;
    let mut lines = Vec::new();
    for (nonce, unit) in lifted_units {
        let line = LogLine {
            nonce: order.nonce.clone(),
            reason: order.reason.clone(),
            unit,
            version: None,
            outcome: format!(
                "lifted order {nonce}: the unit follows the desired state again from the next document"
            ),
            at_ms: now,
            expires_ms: order.expires_ms,
            signers: signers.clone(),
        };
        tracing::warn!(nonce = %line.nonce, unit = %line.unit, outcome = %line.outcome, "BREAK GLASS: lifted");
        append_log(shared, &line)?;
        lines.push(line);
    }
    if order.pause_all {
        for (unit, version) in &targets {
            if order.actions.iter().any(|action| action.unit() == unit) {
                continue;
            }
            let line = LogLine {
                nonce: order.nonce.clone(),
                reason: order.reason.clone(),
                unit: unit.clone(),
                version: version.clone(),
                outcome:
                    "paused: keeps what it serves; nothing from the control plane is applied here"
                        .to_owned(),
                at_ms: now,
                expires_ms: order.expires_ms,
                signers: signers.clone(),
            };
            tracing::warn!(nonce = %line.nonce, unit = %line.unit, outcome = %line.outcome,
                "BREAK GLASS: every unit paused on this node");
            append_log(shared, &line)?;
            lines.push(line);
        }
    }
    for action in &order.actions {
        let unit_text = action.unit().to_owned();
        let target = targets.get(&unit_text).cloned().flatten();
        let outcome = match (&target, UnitName::new(unit_text.clone())) {
            (Some(hash), Ok(unit)) => match hash.parse::<VersionHash>() {
                Ok(hash) => enforce(shared, config, &unit, &hash).await,
                Err(_) => "not applied: the version is not a SHA-256 hex".to_owned(),
            },
            (None, _) => match action {
                Action::Pin { version, .. } => format!(
                    "not applied: version {version} is not stored on this node (only versions it ran are)"
                ),
                Action::Revert { .. } => {
                    "not applied: no last known good stored on this node".to_owned()
                }
            },
            (_, Err(error)) => format!("not applied: {error}"),
        };
        let line = LogLine {
            nonce: order.nonce.clone(),
            reason: order.reason.clone(),
            unit: unit_text,
            version: target,
            outcome,
            at_ms: now,
            expires_ms: order.expires_ms,
            signers: signers.clone(),
        };
        tracing::warn!(
            nonce = %line.nonce, unit = %line.unit, outcome = %line.outcome,
            signers = line.signers.len(), reason = %line.reason,
            "BREAK GLASS: an emergency order overrides the control plane on this node"
        );
        append_log(shared, &line)?;
        lines.push(line);
    }
    Ok(lines)
}

/// Makes `hash` the active version of `unit` now (a stored version), runs the unit's reload
/// command; says what happened.
pub(crate) async fn enforce(
    shared: &Arc<Shared>,
    config: &AgentConfig,
    unit: &UnitName,
    hash: &VersionHash,
) -> String {
    if shared.active(unit) == Some(*hash) {
        return format!("already serving {}", hash.short());
    }
    let (disk, owned, target) = (shared.disk.clone(), unit.clone(), *hash);
    if let Err(error) = crate::apply::blocking(move || disk.activate(&owned, &target)).await {
        return format!("activating {} failed: {error}", hash.short());
    }
    shared.activated(unit, Some(*hash));
    if let Some(reload) = config.units.get(unit).and_then(|l| l.reload.as_ref())
        && let Ok(current) = shared.disk.current_path(unit)
        && let Err(error) = reload.run_reload(&current).await
    {
        return format!("serving {}, but its reload failed: {error}", hash.short());
    }
    format!("serving {}", hash.short())
}

fn save_orders(shared: &Shared, orders: &[Accepted]) -> Result<(), DiskError> {
    let text = serde_json::to_string_pretty(orders).unwrap_or_default();
    write_atomic(&dir(shared), "orders.json", text.as_bytes())
}

fn append_log(shared: &Shared, line: &LogLine) -> Result<(), DiskError> {
    use std::io::Write as _;
    let dir = dir(shared);
    let path = dir.join("log.jsonl");
    let io = |source| DiskError::Io {
        what: "appending to",
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The node's break-glass log, oldest first, and how many lines the control plane has.
pub fn log(shared: &Shared) -> (Vec<LogLine>, usize) {
    let dir = dir(shared);
    let path = dir.join("log.jsonl");
    let lines = match std::fs::metadata(&path) {
        Ok(meta) if meta.len() <= LOG_MAX_BYTES => std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect(),
        Ok(_) => {
            tracing::error!(path = %path.display(), "break-glass log over {LOG_MAX_BYTES} bytes; not read");
            Vec::new()
        }
        Err(_) => Vec::new(),
    };
    let reported = std::fs::read_to_string(dir.join("reported"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    (lines, reported)
}

/// Takes dropped orders from the inbox and sends the log to the control plane, every
/// [`INTERVAL_MS`], until the agent stops.
pub(crate) async fn run(
    config: AgentConfig,
    control: ControlPlane,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), crate::AgentError> {
    loop {
        take_inbox(&config, &shared).await;
        send_log(&control, &shared).await;
        if pause(INTERVAL_MS, &mut stopped).await {
            return Ok(());
        }
    }
}

async fn take_inbox(config: &AgentConfig, shared: &Arc<Shared>) {
    let inbox = dir(shared).join("inbox");
    let Ok(entries) = std::fs::read_dir(&inbox) else {
        return;
    };
    for entry in entries.flatten().take(ORDERS_MAX) {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() <= failsmall_core::break_glass::ORDER_FILE_MAX_BYTES as u64 => {
                std::fs::read_to_string(&path).unwrap_or_default()
            }
            _ => String::new(),
        };
        match accept(shared, config, &text).await {
            Ok(lines) => {
                tracing::warn!(file = %path.display(), units = lines.len(), "applied a dropped break-glass order")
            }
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "refused a dropped break-glass order");
                shared.note_refusal(format!("{}: {error}", path.display()));
            }
        }
        // Consumed either way: a refused file is not tried again and again.
        let done = path.with_extension("json.done");
        if let Err(error) = std::fs::rename(&path, &done) {
            tracing::error!(file = %path.display(), %error, "could not mark a dropped order done");
        }
    }
}

async fn send_log(control: &ControlPlane, shared: &Shared) {
    let (lines, reported) = log(shared);
    for (index, line) in lines
        .iter()
        .enumerate()
        .skip(reported)
        .take(REPORT_BATCH_MAX)
    {
        if let Err(error) = control.break_glass(line).await {
            tracing::debug!(%error, "break-glass log not sent yet");
            return;
        }
        if let Err(error) =
            write_atomic(&dir(shared), "reported", (index + 1).to_string().as_bytes())
        {
            tracing::error!(%error, "could not record a break-glass report as sent");
            return;
        }
    }
}

/// Puts every unit an order in force names back at the order's version (at start, and
/// when a document arrives): a restart or a document does not undo a break glass.
pub(crate) async fn enforce_all(shared: &Arc<Shared>, config: &AgentConfig) {
    let orders = in_force(shared, now_ms());
    let mut done = std::collections::BTreeSet::new();
    for accepted in orders.iter().rev() {
        for (unit, target) in &accepted.targets {
            if !done.insert(unit.clone()) {
                continue;
            }
            if let (Ok(unit), Some(Ok(hash))) = (
                UnitName::new(unit.clone()),
                target.as_deref().map(str::parse::<VersionHash>),
            ) && shared.active(&unit) != Some(hash)
            {
                let outcome = enforce(shared, config, &unit, &hash).await;
                tracing::warn!(
                    nonce = %accepted.order.nonce, unit = %unit, %outcome,
                    "break-glass order in force: kept the unit at its version"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsmall_core::break_glass::Order;
    use failsmall_core::trust::{RootDocument, SignedRoot, public_key_hex};

    fn unit() -> UnitName {
        UnitName::new("features").unwrap()
    }

    /// A node with two stored versions of `features`: `bad` active, `good` the last known good.
    fn node(scratch: &std::path::Path) -> (Arc<Shared>, AgentConfig, VersionHash, VersionHash) {
        let disk = crate::disk::DataDir::open(scratch).unwrap();
        let (good, bad) = (VersionHash::of(b"{\"a\":1}"), VersionHash::of(b"{\"a\":2}"));
        disk.store_version(&unit(), &good, b"{\"a\":1}").unwrap();
        disk.store_version(&unit(), &bad, b"{\"a\":2}").unwrap();
        disk.set_good(&unit(), &good).unwrap();
        disk.activate(&unit(), &bad).unwrap();
        let shared = Arc::new(Shared::new(disk, "n1"));
        shared.activated(&unit(), Some(bad));
        let mut config = AgentConfig::new("http://127.0.0.1:9", "t", scratch);
        config.labels.insert("region".into(), "eu".into());
        (shared, config, good, bad)
    }

    fn root() -> SignedRoot {
        SignedRoot {
            signed: RootDocument {
                version: 1,
                epoch: 1,
                expires_ms: u64::MAX,
                threshold: 1,
                root_keys: vec![public_key_hex(&[1; 32])],
                online_keys: vec![public_key_hex(&[9; 32])],
                revoked_keys: vec![],
                break_glass_threshold: 2,
                break_glass_keys: (1..=3).map(|s| public_key_hex(&[s; 32])).collect(),
            },
            signatures: vec![],
        }
    }

    fn order(nonce: &str, selector: &[(&str, &str)], signers: &[u8]) -> String {
        let now = now_ms();
        let mut signed = SignedOrder {
            order: Order {
                nonce: nonce.into(),
                reason: "test".into(),
                issued_ms: now,
                expires_ms: now + 3_600_000,
                selector: selector
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                actions: vec![Action::Revert {
                    unit: "features".into(),
                }],
                lifts: vec![],
                pause_all: false,
            },
            signatures: vec![],
        };
        for seed in signers {
            signed.sign_with(&[*seed; 32]);
        }
        signed.to_text()
    }

    #[tokio::test]
    async fn a_revert_order_puts_back_the_last_known_good_once_and_holds() {
        let scratch = tempfile::tempdir().unwrap();
        let (shared, config, good, bad) = node(scratch.path());
        // No root pinned: nothing to verify an order against.
        let no_root = accept(&shared, &config, &order("a", &[], &[1, 2])).await;
        assert!(matches!(no_root, Err(BreakGlassError::NoRoot)));
        shared.set_root(root());
        let one = accept(&shared, &config, &order("a", &[], &[1])).await;
        assert!(
            one.unwrap_err().to_string().contains("threshold not met"),
            "one signature of two"
        );
        let elsewhere = accept(&shared, &config, &order("b", &[("region", "us")], &[1, 2])).await;
        assert!(matches!(
            elsewhere,
            Err(BreakGlassError::NotSelected { .. })
        ));
        assert_eq!(shared.active(&unit()), Some(bad));

        let lines = accept(&shared, &config, &order("c", &[("region", "eu")], &[1, 3]))
            .await
            .unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].version, Some(good.to_string()));
        assert_eq!(shared.active(&unit()), Some(good));
        assert_eq!(shared.disk.current(&unit()).unwrap().unwrap().1, good);
        let replay = accept(&shared, &config, &order("c", &[], &[1, 3])).await;
        assert!(replay.unwrap_err().to_string().contains("replay refused"));

        // In force: it overrides, and a restart's recovery does not undo it.
        let orders = in_force(&shared, now_ms());
        assert_eq!(
            override_of(&orders, &unit()),
            Some(("c".into(), Some(good)))
        );
        shared.disk.activate(&unit(), &bad).unwrap();
        shared.activated(&unit(), Some(bad));
        enforce_all(&shared, &config).await;
        assert_eq!(shared.active(&unit()), Some(good));
        // Expired: no longer in force.
        assert!(in_force(&shared, now_ms() + 3_600_001).is_empty());
        let (log_lines, reported) = log(&shared);
        assert_eq!((log_lines.len(), reported), (1, 0));

        // Lifted by a later order: no longer in force, its nonce still spent.
        let now = now_ms();
        let mut lift = SignedOrder {
            order: Order {
                nonce: "e".into(),
                reason: "fixed".into(),
                issued_ms: now,
                expires_ms: now + 60_000,
                selector: BTreeMap::new(),
                actions: vec![],
                lifts: vec!["c".into()],
                pause_all: false,
            },
            signatures: vec![],
        };
        lift.sign_with(&[2; 32]);
        lift.sign_with(&[3; 32]);
        let lines = accept(&shared, &config, &lift.to_text()).await.unwrap();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].outcome.contains("lifted order c"), "{lines:?}");
        assert_eq!(override_of(&in_force(&shared, now_ms()), &unit()), None);
        let replay = accept(&shared, &config, &order("c", &[], &[1, 3])).await;
        assert!(replay.unwrap_err().to_string().contains("replay refused"));
    }

    #[tokio::test]
    async fn a_dropped_order_file_is_applied_and_consumed() {
        let scratch = tempfile::tempdir().unwrap();
        let (shared, config, good, _) = node(scratch.path());
        shared.set_root(root());
        let inbox = scratch.path().join("break-glass").join("inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        std::fs::write(inbox.join("o.json"), order("d", &[], &[2, 3])).unwrap();
        take_inbox(&config, &shared).await;
        assert_eq!(shared.active(&unit()), Some(good));
        assert!(!inbox.join("o.json").exists());
        assert!(inbox.join("o.json.done").exists());
    }

    #[tokio::test]
    async fn a_pause_order_keeps_every_unit_at_what_it_serves_until_lifted() {
        let scratch = tempfile::tempdir().unwrap();
        let (shared, config, _good, bad) = node(scratch.path());
        shared.with_status(|s| {
            s.units.entry(unit()).or_default();
        });
        shared.set_root(root());
        let now = now_ms();
        let mut pause = SignedOrder {
            order: Order {
                nonce: "p".into(),
                reason: "stop the line on this node".into(),
                issued_ms: now,
                expires_ms: now + 60_000,
                selector: BTreeMap::new(),
                actions: vec![],
                lifts: vec![],
                pause_all: true,
            },
            signatures: vec![],
        };
        pause.sign_with(&[1; 32]);
        pause.sign_with(&[3; 32]);
        let lines = accept(&shared, &config, &pause.to_text()).await.unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].outcome.starts_with("paused"), "{lines:?}");
        let orders = in_force(&shared, now_ms());
        assert_eq!(pausing(&orders), Some("p"));
        // The unit stays at what it served (the bad version: a pause changes nothing).
        assert_eq!(
            override_of(&orders, &unit()),
            Some(("p".to_owned(), Some(bad)))
        );
        assert_eq!(shared.active(&unit()), Some(bad));
        // An order must do something: no actions, no lifts and no pause is refused.
        let empty = Order {
            pause_all: false,
            ..pause.order.clone()
        };
        assert!(empty.validate().is_err());
    }
}
