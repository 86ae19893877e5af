//! failsmall-agent: the daemon on each node.
//!
//! It registers the node with its labels, holds a long-poll watch on the node's signed
//! desired state, verifies each document ([`verify`]), fetches each bundle by hash, checks
//! the hash, validates it with the same code the server uses
//! ([`failsmall_core::validate::validate`]) plus the unit's optional local validator
//! command, applies it atomically ([`disk`]), runs the unit's reload command and post-apply
//! HTTP health check, and on any failure puts back the last known good at once. It reports
//! ACK / NACK / health to the control plane through a bounded queue ([`report`]), and serves
//! local consumers on 127.0.0.1 ([`local_api`]).
//!
//! When the control plane is unreachable the agent keeps serving what is on disk and
//! reconnects with backoff and jitter; it starts with the server down just as well.
//!
//! Trust: with a root (`--root FILE`, then pinned in the data dir, see [`root`]) documents
//! and versions are acted on only when signed by an online key the root names, under its
//! epoch. Without one (the simple case, warned about), the server's public key is given
//! (`server_key`) or fetched once at first start and pinned (trust on first use).

pub mod apply;
pub mod args;
pub mod break_glass;
pub mod check;
pub mod command;
pub mod control;
mod converge;
pub mod disk;
mod health;
pub mod identity;
pub mod integrity;
pub mod local_api;
pub mod ofrep;
pub mod report;
mod root;
pub mod scrape;
pub mod tls;
pub mod verify;

pub use health::ConsumerLiveness;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use failsmall_core::domain::{NodeId, UnitName, VersionHash};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::command::LocalCommand;
use crate::control::{ControlPlane, Report};
use crate::converge::Handled;
use crate::disk::{DataDir, DiskError};
use crate::identity::{NodeIdFrom, Trouble};
use crate::report::ReportQueue;
use crate::scrape::MetricNames;
use crate::verify::Refusal;

/// Longest wait of one watch request (the server allows at most 30 s).
pub const WATCH_WAIT_MS_MAX: u64 = 30_000;
/// Most versions remembered as refused in one run (oldest forgotten first).
pub const MAX_REFUSED: usize = 1024;
/// Shortest interval between two health reports.
pub const HEALTH_INTERVAL_MIN_MS: u64 = 50;
/// Most refusal messages kept for the status page.
pub const MAX_RECENT_REFUSALS: usize = 32;

/// A post-apply HTTP health check of the local consumer: it must answer `expect_status`
/// continuously for `window_ms` before `deadline_ms` (see [`check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The full URL, e.g. `http://127.0.0.1:8080/health`.
    pub url: String,
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Longest wait for one probe's answer.
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// How long the check must pass without a single failure.
    #[serde(default = "check::default_window_ms")]
    pub window_ms: u64,
    /// Time between two probes.
    #[serde(default = "check::default_interval_ms")]
    pub interval_ms: u64,
    /// The check fails when no full window passed this long after the reload (> window_ms).
    #[serde(default = "check::default_deadline_ms")]
    pub deadline_ms: u64,
    /// A readiness probe run after the reload (no stdin, `{path}` = `current`), again every
    /// `interval_ms` until it exits 0, before the window starts.
    #[serde(default)]
    pub ready: Option<LocalCommand>,
}

impl HealthCheckConfig {
    /// The check a plan declares (the server sends its path, status and timeout), at `url`
    /// on the local consumer, with this agent's defaults for the rest.
    pub fn for_plan(url: String, expect_status: u16, timeout_ms: u64) -> Self {
        Self {
            expect_status,
            timeout_ms,
            ..Self::new(url)
        }
    }
}

fn default_status() -> u16 {
    200
}

fn default_check_timeout_ms() -> u64 {
    5_000
}

/// What this node does around one unit's apply. Local to the node: the control plane never
/// sends commands to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitLocalConfig {
    /// The consumer's parser in check mode: the version's bytes on stdin, `{path}` a file
    /// holding them (see [`command`]); a non-zero exit refuses the version.
    #[serde(default)]
    pub validate: Option<LocalCommand>,
    /// Runs after the version became active, as written: no stdin, `{path}` = `current`.
    #[serde(default)]
    pub reload: Option<LocalCommand>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
}

/// Where the local consumer's Prometheus metrics are, and what they are called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerMetrics {
    pub url: String,
    #[serde(default)]
    pub names: MetricNames,
    #[serde(default = "default_scrape_interval_ms")]
    pub interval_ms: u64,
}

fn default_scrape_interval_ms() -> u64 {
    5_000
}

/// Everything the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The control plane's base URL, e.g. `http://127.0.0.1:7070`; or several (servers of
    /// one control plane, or relays), separated by commas, tried in turn when one fails.
    pub server_url: String,
    /// An agent token bound to this node.
    pub token: String,
    /// The node's id; when absent, the one saved in the data dir, or a new one.
    pub node_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    /// The server's public key (hex); when absent, trust on first use.
    pub server_key: Option<String>,
    /// A signed root file (`root.json` from `failsmall keys`): the keys this agent trusts.
    pub root: Option<PathBuf>,
    /// A PEM CA bundle: the only CAs trusted for an https:// server (default: the public root CAs built in).
    pub ca_path: Option<PathBuf>,
    /// The SHA-256 (hex) of the one server certificate trusted, instead of any CA.
    pub pin_sha256: Option<String>,
    /// Where the local API listens (must be a loopback address).
    pub local_api: Option<SocketAddr>,
    pub units: BTreeMap<UnitName, UnitLocalConfig>,
    /// The local consumer's base URL (e.g. `http://127.0.0.1:8080`): a plan's health check
    /// path is requested there, unless the unit's local configuration has its own check.
    pub consumer_url: Option<String>,
    pub metrics: Option<ConsumerMetrics>,
    /// How often what `current` serves is checked against the active version ([`integrity`]).
    pub integrity_interval_ms: u64,
    /// The timing of a plan-declared health check (the plan sends its path, status and probe
    /// timeout only; see [`check`]).
    pub health_window: check::HealthWindow,
    /// How the agent tells that its consumer is down, besides its metrics endpoint.
    pub liveness: ConsumerLiveness,
    /// How often health is reported without consumer metrics (a plan's `silence` must be
    /// longer).
    pub health_interval_ms: u64,
    /// How long one watch request waits for news.
    pub watch_wait_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// The flag units served over OFREP on the local API ([`ofrep`]), their flags merged.
    pub ofrep_units: Vec<UnitName>,
}

impl AgentConfig {
    pub fn new(server_url: &str, token: &str, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            server_url: server_url.to_owned(),
            token: token.to_owned(),
            node_id: None,
            labels: BTreeMap::new(),
            data_dir: data_dir.into(),
            server_key: None,
            root: None,
            ca_path: None,
            pin_sha256: None,
            local_api: None,
            units: BTreeMap::new(),
            consumer_url: None,
            metrics: None,
            integrity_interval_ms: integrity::INTERVAL_MS_DEFAULT,
            health_window: check::HealthWindow::default(),
            liveness: ConsumerLiveness::default(),
            health_interval_ms: 5_000,
            watch_wait_ms: 25_000,
            backoff_min_ms: 100,
            backoff_max_ms: 5_000,
            ofrep_units: Vec::new(),
        }
    }

    /// Checks the configuration before anything starts.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |field: &'static str, reason: String| AgentError::Config { field, reason };
        let servers = control::server_urls(&self.server_url);
        if servers.is_empty() {
            return Err(bad(
                "server",
                format!(
                    "{:?} names no server; expected an http:// or https:// URL, or several separated by commas",
                    self.server_url
                ),
            ));
        }
        if servers.len() > control::SERVERS_MAX {
            return Err(bad(
                "server",
                format!(
                    "{} servers listed; at most {}",
                    servers.len(),
                    control::SERVERS_MAX
                ),
            ));
        }
        if let Some(url) = servers
            .iter()
            .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(bad(
                "server",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        if self.token.trim().is_empty() {
            return Err(bad("token", "is empty".into()));
        }
        if let Some(id) = &self.node_id {
            NodeId::new(id.clone()).map_err(|e| bad("node-id", e.to_string()))?;
        }
        if let Some(address) = self.local_api
            && !address.ip().is_loopback()
        {
            return Err(bad(
                "local-api",
                format!("{address} is not a loopback address; the local API serves only this host"),
            ));
        }
        if let Some(url) = &self.consumer_url
            && !url.starts_with("http://")
            && !url.starts_with("https://")
        {
            return Err(bad(
                "consumer-url",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        if self.watch_wait_ms > WATCH_WAIT_MS_MAX {
            return Err(bad(
                "watch_wait_ms",
                format!("{} is above {WATCH_WAIT_MS_MAX}", self.watch_wait_ms),
            ));
        }
        if self.backoff_min_ms == 0 || self.backoff_min_ms > self.backoff_max_ms {
            return Err(bad(
                "backoff",
                format!(
                    "min {} ms and max {} ms; expected 0 < min <= max",
                    self.backoff_min_ms, self.backoff_max_ms
                ),
            ));
        }
        if let Some(key) = &self.server_key {
            verify::parse_key(key).map_err(|e| bad("server-key", e.to_string()))?;
        }
        if self.ofrep_units.len() > ofrep::OFREP_UNITS_MAX {
            return Err(bad(
                "ofrep-unit",
                format!(
                    "{} units; the limit is {}",
                    self.ofrep_units.len(),
                    ofrep::OFREP_UNITS_MAX
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for unit in &self.ofrep_units {
            if !seen.insert(unit) {
                return Err(bad("ofrep-unit", format!("unit {unit} is named twice")));
            }
        }
        if let Some(path) = &self.root {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad("root", format!("{}: {e}", path.display())))?;
            failsmall_core::trust::SignedRoot::parse(&text)
                .and_then(|root| root.verify_self().map(drop))
                .map_err(|e| bad("root", format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("pinned server key in the data dir: {0}")]
    PinnedKey(Refusal),
    #[error("local API on {address}: {source}")]
    LocalApi {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("no randomness for a node id: {0}")]
    Random(String),
    /// The control plane refused this agent for a reason that retrying cannot fix (its token
    /// is invalid, not an agent token, or bound to another node): the agent stops.
    #[error("the control plane refuses this agent: {0}")]
    Refused(String),
    /// The configuration (flags and file) has these problems, every one found.
    #[error("the agent's configuration has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid { problems: Vec<String> },
}

/// One unit as the agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnitStatus {
    pub active: Option<VersionHash>,
    pub good: Option<VersionHash>,
    pub desired: Option<VersionHash>,
    /// The rollout still judging the desired version (its stages or its soak): until it ends,
    /// the version is on trial and `good` stays the one before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial: Option<u64>,
    pub last_error: Option<String>,
}

impl UnitStatus {
    /// Whether the active version is on trial: a consumer crash now blames it.
    pub fn on_trial(&self) -> bool {
        self.trial.is_some() && self.active.is_some() && self.active == self.desired
    }
}

/// What the agent knows about itself, for the local API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub node: String,
    /// The highest desired-state sequence number trusted.
    pub seq: u64,
    /// The trusted root's version and epoch; none: no root (the key pinned on first use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Whether the control plane answered the latest request.
    pub connected: bool,
    /// The latest document expired and nothing newer came: what is served may be stale.
    pub stale: bool,
    /// While stale: when the document expired (reported to the control plane as `since_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_since_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub units: BTreeMap<UnitName, UnitStatus>,
    /// The latest refusals (documents or versions), newest last.
    pub refusals: Vec<String>,
    pub reports_queued: usize,
    pub reports_dropped: u64,
    /// Why the local consumer is taken for down (see [`health`]); none while it is up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_down: Option<String>,
}

/// State shared by the agent's tasks.
#[derive(Debug)]
pub struct Shared {
    pub disk: DataDir,
    pub status: Mutex<Status>,
    /// Bumped at every activation on disk (local watchers wait on it).
    pub activations: watch::Sender<u64>,
    pub reports: ReportQueue,
    /// Versions refused in this run, each with the rollout that was judging it then (none: it
    /// was the unit's stable version): never applied again in this run unless another rollout
    /// deliberately brings it again.
    refused: Mutex<BTreeMap<(UnitName, VersionHash), Option<u64>>>,
    /// What was reported once in this run and need not be again.
    reported: Mutex<Reported>,
    /// The trusted root, if any ([`root`]).
    trusted_root: Mutex<Option<failsmall_core::trust::SignedRoot>>,
}

/// Reports made once per run (a restarted agent makes them once more), each set bounded by
/// [`MAX_REFUSED`] (cleared when full: at worst a report is made twice).
#[derive(Debug, Default)]
struct Reported {
    /// ACKs: the unit, the version, and the rollout they answered (none: no rollout was
    /// judging the version), so a version activated again for another rollout is ACKed again.
    acknowledged: BTreeSet<(UnitName, VersionHash, Option<u64>)>,
    /// Units whose removal was reported while nothing was active.
    removals: BTreeSet<UnitName>,
    /// Versions whose bundle could not be fetched intact.
    fetch_failures: BTreeSet<(UnitName, VersionHash)>,
    /// The kind of the latest refusal of a document (see [`Refusal::kind`]), until a document
    /// is trusted again.
    untrusted: Option<&'static str>,
}

/// Inserts into a set bounded by [`MAX_REFUSED`]; returns whether `item` is new.
fn insert_bounded<T: Ord>(set: &mut BTreeSet<T>, item: T) -> bool {
    if set.len() >= MAX_REFUSED && !set.contains(&item) {
        set.clear();
    }
    set.insert(item)
}

impl Shared {
    fn new(disk: DataDir, node: &str) -> Self {
        let (activations, _) = watch::channel(0);
        Self {
            disk,
            status: Mutex::new(Status {
                node: node.to_owned(),
                ..Status::default()
            }),
            activations,
            reports: ReportQueue::default(),
            refused: Mutex::new(BTreeMap::new()),
            reported: Mutex::new(Reported::default()),
            trusted_root: Mutex::new(None),
        }
    }

    /// The trusted root, if any.
    pub fn root(&self) -> Option<failsmall_core::trust::SignedRoot> {
        self.trusted_root.lock().ok().and_then(|root| root.clone())
    }

    pub(crate) fn set_root(&self, root: failsmall_core::trust::SignedRoot) {
        self.with_status(|s| {
            s.root_version = Some(root.signed.version);
            s.epoch = Some(root.signed.epoch);
        });
        if let Ok(mut trusted) = self.trusted_root.lock() {
            *trusted = Some(root);
        }
    }

    pub fn with_status<T>(&self, f: impl FnOnce(&mut Status) -> T) -> Option<T> {
        self.status.lock().ok().map(|mut status| f(&mut status))
    }

    pub fn note_refusal(&self, message: String) {
        let repeated = self
            .with_status(|status| status.refusals.last() == Some(&message))
            .unwrap_or(false);
        if repeated {
            return;
        }
        tracing::warn!("refused: {message}");
        self.with_status(|status| {
            if status.refusals.len() >= MAX_RECENT_REFUSALS {
                status.refusals.remove(0);
            }
            status.refusals.push(message);
        });
    }

    pub fn is_refused(&self, unit: &UnitName, hash: &VersionHash) -> bool {
        self.refused
            .lock()
            .map(|set| set.contains_key(&(unit.clone(), *hash)))
            .unwrap_or(false)
    }

    /// The control plane now wants `wanted` for `unit`, judged by rollout `trial`: refusals of
    /// its other versions are forgotten, and so is a refusal of `wanted` itself made under
    /// another rollout, so a version deliberately rolled out again is tried again. That holds
    /// even when this agent never saw a document without it in between (the rollback's
    /// document and the new rollout's can reach it as one).
    pub fn forget_other_refusals(&self, unit: &UnitName, wanted: &VersionHash, trial: Option<u64>) {
        if let Ok(mut set) = self.refused.lock() {
            set.retain(|(refused_unit, hash), refused_under| {
                refused_unit != unit
                    || (hash == wanted && (trial.is_none() || *refused_under == trial))
            });
        }
    }

    /// The control plane no longer asks for any version of a unit (its first version was
    /// rolled back): its refusals are forgotten, so a version rolled out again later is tried.
    pub fn forget_refusals_of_units_not_in(&self, desired: &verify::Desired) {
        if let Ok(mut set) = self.refused.lock() {
            set.retain(|(unit, _), _| desired.units.contains_key(unit));
        }
    }

    /// Remembers `hash` as refused for `unit`, under the rollout judging it now.
    pub fn refuse(&self, unit: &UnitName, hash: &VersionHash) {
        let trial = self
            .with_status(|s| s.units.get(unit).and_then(|entry| entry.trial))
            .flatten();
        if let Ok(mut set) = self.refused.lock() {
            if set.len() >= MAX_REFUSED
                && !set.contains_key(&(unit.clone(), *hash))
                && let Some(first) = set.keys().next().cloned()
            {
                set.remove(&first);
            }
            set.insert((unit.clone(), *hash), trial);
        }
    }

    /// Reports `hash` applied (ACK). An activation (`activated`: `hash` was just made active)
    /// is always acknowledged, so the control plane knows what the node went back to after a
    /// revert; a version kept active is acknowledged once per run for each rollout that asks
    /// for it, so a version kept for another rollout is acknowledged for that rollout too.
    pub fn acknowledge(
        &self,
        unit: &UnitName,
        hash: &VersionHash,
        rollout: Option<u64>,
        activated: bool,
    ) {
        let first = self
            .reported
            .lock()
            .map(|mut reported| {
                insert_bounded(&mut reported.acknowledged, (unit.clone(), *hash, rollout))
            })
            .unwrap_or(true);
        if first || activated {
            self.reports.push(Report::Applied {
                unit: unit.clone(),
                version: *hash,
            });
        }
    }

    /// An ACK of `hash` was refused and dropped: the next document that names it ACKs it
    /// again, so one refused answer does not leave a rollout waiting for this node forever.
    pub fn forget_acknowledgment(&self, unit: &UnitName, hash: &VersionHash) {
        if let Ok(mut reported) = self.reported.lock() {
            reported
                .acknowledged
                .retain(|(acked_unit, acked, _)| acked_unit != unit || acked != hash);
        }
    }

    /// Reports that `unit` was removed (`removed`: the version that was active). A removal
    /// with nothing active is reported once, until the unit is desired again.
    pub fn report_removal(&self, unit: &UnitName, removed: Option<VersionHash>) {
        let report = removed.is_some()
            || self
                .reported
                .lock()
                .map(|mut reported| insert_bounded(&mut reported.removals, unit.clone()))
                .unwrap_or(true);
        if report {
            self.reports.push(Report::Removed {
                unit: unit.clone(),
                version: removed,
            });
        }
    }

    /// `unit` is desired again: a later removal is reported again.
    pub fn forget_removal(&self, unit: &UnitName) {
        if let Ok(mut reported) = self.reported.lock() {
            reported.removals.remove(unit);
        }
    }

    /// Reports that `hash` could not be fetched intact, once per version and run (the fetch
    /// itself is retried); a fetch that succeeds later forgets it.
    pub fn report_fetch_failure(&self, unit: &UnitName, hash: &VersionHash, reason: &str) {
        let first = self
            .reported
            .lock()
            .map(|mut reported| insert_bounded(&mut reported.fetch_failures, (unit.clone(), *hash)))
            .unwrap_or(true);
        if first {
            self.reports.push(Report::FetchFailed {
                unit: unit.clone(),
                version: *hash,
                reason: control::cut_reason(reason),
            });
        }
    }

    pub fn forget_fetch_failure(&self, unit: &UnitName, hash: &VersionHash) {
        if let Ok(mut reported) = self.reported.lock() {
            reported.fetch_failures.remove(&(unit.clone(), *hash));
        }
    }

    /// Reports a refused document, once per kind of refusal until a document is trusted
    /// again (every change brings a document with a new sequence number).
    pub fn report_untrusted(&self, seq: u64, refusal: &Refusal) {
        let reason = refusal.to_string();
        let first = self
            .reported
            .lock()
            .map(|mut reported| reported.untrusted.replace(refusal.kind()) != Some(refusal.kind()))
            .unwrap_or(true);
        if first {
            self.reports.push(Report::Untrusted {
                seq,
                reason: control::cut_reason(&reason),
            });
        }
    }

    /// A document was trusted: a later refusal is reported again.
    pub fn trusted_again(&self) {
        if let Ok(mut reported) = self.reported.lock() {
            reported.untrusted = None;
        }
    }

    /// The active version of `unit`, as last recorded (read from disk once at start, then
    /// kept at every activation; a large bundle is not hashed again).
    pub fn active(&self, unit: &UnitName) -> Option<VersionHash> {
        self.with_status(|s| s.units.get(unit).and_then(|u| u.active))
            .flatten()
    }

    /// Records that `active` is now `unit`'s active version on disk.
    pub fn activated(&self, unit: &UnitName, active: Option<VersionHash>) {
        let good = self.disk.good(unit).ok().flatten();
        self.with_status(|status| {
            let entry = status.units.entry(unit.clone()).or_default();
            entry.active = active;
            entry.good = good;
        });
        self.activations.send_modify(|n| *n = n.wrapping_add(1));
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return now_ms();
    }
    u64::from_le_bytes(bytes)
}

/// A delay between `delay_ms / 2` and `delay_ms`: full jitter on the upper half, so agents
/// that lost the server together do not return together.
pub fn jittered(delay_ms: u64, random: u64) -> u64 {
    let half = delay_ms / 2;
    half.saturating_add(random % (delay_ms.saturating_sub(half).saturating_add(1)))
}

/// The node id: given, saved in the data dir, or new (then saved).
fn node_id(config: &AgentConfig, disk: &DataDir) -> Result<(String, NodeIdFrom), AgentError> {
    if let Some(id) = &config.node_id {
        return Ok((id.clone(), NodeIdFrom::Flag));
    }
    if let Some(id) = disk.node_id()?
        && NodeId::new(id.clone()).is_ok()
    {
        return Ok((id, NodeIdFrom::DataDir));
    }
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| AgentError::Random(e.to_string()))?;
    let id = format!("node-{}", hex::encode(suffix));
    disk.save_node_id(&id)?;
    Ok((id, NodeIdFrom::New))
}

/// At start, before anything else: removes temporaries; where an apply was cut short (the
/// active version is neither the last known good nor the one on trial, or nothing is
/// active), puts back the last known good; where `current` serves bytes that match no stored
/// version (written into in place), restores the version it should serve from its verified
/// copy (the one on trial, else the last known good; see [`integrity`]) and reports it.
/// Returns the units so repaired: their reload command runs once the agent runs.
fn recover(shared: &Shared) -> Result<Vec<UnitName>, AgentError> {
    let mut repaired = Vec::new();
    for unit in shared.disk.units()? {
        shared.disk.clean_temporaries(&unit)?;
        let good = shared.disk.good(&unit)?;
        let trial = shared.disk.trial(&unit).ok().flatten();
        let active = shared.disk.current(&unit)?.map(|(_, hash)| hash);
        // A version on trial was checked before the restart: it stays.
        let on_trial = active.is_some() && active == trial;
        let damaged = match active {
            Some(hash) if Some(hash) != good && Some(hash) != trial => {
                shared.disk.version(&unit, &hash)?.is_none()
            }
            _ => false,
        };
        if damaged {
            match trial.or(good) {
                Some(believed) => {
                    let (now, reason) = integrity::restore(&shared.disk, &unit, believed, active)?;
                    integrity::repaired(shared, &unit, now.unwrap_or(believed), &reason);
                    repaired.push(unit.clone());
                }
                None => {
                    // No version is known good here: bytes that match no signed version are
                    // not served.
                    tracing::warn!(
                        "unit {unit}: current matches no stored version and none is known good; removed it"
                    );
                    shared.disk.deactivate(&unit)?;
                }
            }
        } else if let Some(good) = good
            && !on_trial
            && active != Some(good)
            && shared.disk.version(&unit, &good)?.is_some()
        {
            tracing::warn!(
                "unit {unit}: an apply was interrupted; putting back the last known good {}",
                good.short()
            );
            shared.disk.activate(&unit, &good)?;
        }
        let active = shared.disk.current(&unit)?.map(|(_, hash)| hash);
        shared.activated(&unit, active);
    }
    Ok(repaired)
}

/// Runs the agent until `shutdown` completes.
/// Raises the soft open-file limit to the hard limit (bundles, the local API's and the OFREP
/// server's connections all take descriptors) and logs the limit the agent runs with; a
/// limit that cannot be raised is logged, never fatal.
fn raise_open_file_limit() {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => match rlimit::increase_nofile_limit(hard) {
            Ok(now) => tracing::info!(open_files = now, was = soft, hard, "open-file limit"),
            Err(error) => {
                tracing::warn!(open_files = soft, hard, %error, "open-file limit not raised");
            }
        },
        Err(error) => tracing::warn!(%error, "open-file limit unknown"),
    }
}

pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    config.validate()?;
    for url in control::server_urls(&config.server_url) {
        if let Some(warning) = tls::plaintext_warning(&url) {
            eprintln!("failsmall agent: {warning}");
        }
    }
    let disk = DataDir::open(&config.data_dir)?;
    let (node, node_from) = node_id(&config, &disk)?;
    tracing::info!(node = %node, from = node_from.describe(), "agent starting");
    raise_open_file_limit();
    let trusted_root = root::load(&config, &disk)?;
    let seq = root::trusted_seq(&disk, trusted_root.as_ref())?;
    let shared = Arc::new(Shared::new(disk, &node));
    match trusted_root {
        Some(trusted) => {
            tracing::info!(
                version = trusted.signed.version,
                epoch = trusted.signed.epoch,
                "trusting the root pinned in the data dir"
            );
            shared.set_root(trusted);
        }
        None => tracing::warn!(
            "no root (--root FILE): {}; a lost server key or a restored server backup locks \
             this agent out. For production, install the root.json made with `failsmall keys \
             init-root` (README: Keys)",
            if config.server_key.is_some() {
                "the server's key is pinned from --server-key"
            } else {
                "the server's key is pinned on first use"
            }
        ),
    }
    shared.with_status(|status| status.seq = seq);
    restore_freshness(&shared);
    let repaired = recover(&shared)?;
    // Break-glass orders in force outlive a restart (the recovery above may have put back the
    // last known good in place of an order's version).
    break_glass::enforce_all(&shared, &config).await;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(address) = config.local_api {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| AgentError::LocalApi { address, source })?;
        let bound = listener.local_addr().unwrap_or(address);
        tracing::info!("local API on http://{bound}");
        let mut stopping = stopped.clone();
        tasks.spawn(local_api::serve(
            listener,
            Arc::clone(&shared),
            config.clone(),
            async move {
                let _ = stopping.wait_for(|s| *s).await;
            },
        ));
    }
    let control = ControlPlane::new(&config.server_url, &config.token, &node)
        .with_tls(config.ca_path.as_deref(), config.pin_sha256.as_deref())
        .map_err(|(field, reason)| AgentError::Config { field, reason })?;
    tasks.spawn(break_glass::run(
        config.clone(),
        control.clone(),
        Arc::clone(&shared),
        stopped.clone(),
    ));
    tasks.spawn(send_reports(
        control.clone(),
        Arc::clone(&shared),
        stopped.clone(),
    ));
    let health_interval_ms = config
        .metrics
        .as_ref()
        .map_or(config.health_interval_ms, |m| m.interval_ms);
    tasks.spawn(health::report_health(
        config.metrics.clone(),
        config.liveness.clone(),
        health_interval_ms,
        Arc::clone(&shared),
        stopped.clone(),
    ));
    tasks.spawn(integrity::run(
        config.clone(),
        Arc::clone(&shared),
        repaired,
        stopped.clone(),
    ));
    let watching = watch_loop(
        config,
        control,
        node_from,
        Arc::clone(&shared),
        stopped.clone(),
    );
    tokio::select! {
        result = watching => {
            let _ = stop.send(true);
            while tasks.join_next().await.is_some() {}
            result
        }
        () = shutdown => {
            let _ = stop.send(true);
            while tasks.join_next().await.is_some() {}
            Ok(())
        }
    }
}

/// Sleeps `ms`, or less if the agent is stopping; returns whether it is stopping.
pub(crate) async fn pause(ms: u64, stopped: &mut watch::Receiver<bool>) -> bool {
    let slept = tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => true,
        _ = stopped.wait_for(|s| *s) => false,
    };
    !slept || *stopped.borrow()
}

/// The pinned key: from the configuration (then pinned), from the data dir, or fetched once
/// from the server (trust on first use).
async fn pinned_key(
    config: &AgentConfig,
    control: &ControlPlane,
    shared: &Shared,
    unreachable: &mut Option<String>,
) -> Result<Option<ed25519_dalek::VerifyingKey>, AgentError> {
    if let Some(key) = &config.server_key {
        let parsed = verify::parse_key(key).map_err(AgentError::PinnedKey)?;
        if shared.disk.pinned_key()?.as_deref() != Some(key.trim()) {
            shared.disk.pin_key(key.trim())?;
        }
        return Ok(Some(parsed));
    }
    if let Some(key) = shared.disk.pinned_key()? {
        return verify::parse_key(&key)
            .map(Some)
            .map_err(AgentError::PinnedKey);
    }
    match control.signing_key().await {
        Ok(key) => {
            let parsed = verify::parse_key(&key).map_err(AgentError::PinnedKey)?;
            shared.disk.pin_key(&key)?;
            tracing::info!("pinned the server key {key} (trust on first use)");
            Ok(Some(parsed))
        }
        Err(error) => {
            *unreachable = Some(error.to_string());
            if error.is_untrusted_certificate() {
                tracing::error!(
                    reason = %error,
                    "the server's TLS certificate is not trusted: pass --ca FILE (or \
                     FAILSMALL_CA) with the CA bundle that signed it"
                );
            }
            Ok(None)
        }
    }
}

async fn watch_loop(
    config: AgentConfig,
    control: ControlPlane,
    node_from: NodeIdFrom,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut backoff_ms = config.backoff_min_ms;
    let mut refusal_backoff_ms = 0u64;
    let mut fetch_backoff_ms = 0u64;
    let mut key = None;
    // Why the server's key could not be fetched, while it is not pinned.
    let mut key_unreachable: Option<String> = None;
    let mut registered = false;
    let mut caught_up = false;
    loop {
        if *stopped.borrow() {
            return Ok(());
        }
        refresh_staleness(&shared);
        if key.is_none() && shared.root().is_none() {
            match pinned_key(&config, &control, &shared, &mut key_unreachable).await {
                Ok(pinned) => key = pinned,
                Err(error) => {
                    tracing::error!(
                        %error,
                        retry_in_ms = config.backoff_max_ms,
                        "cannot pin the server key; serving what is on disk"
                    );
                    if pause(config.backoff_max_ms, &mut stopped).await {
                        return Ok(());
                    }
                    continue;
                }
            }
        }
        let step = async {
            if key.is_none() && shared.root().is_none() {
                return Err(Trouble::Retry(format!(
                    "the server key is not pinned yet: {}",
                    key_unreachable
                        .as_deref()
                        .unwrap_or("the server is unreachable")
                )));
            };
            if !registered {
                identity::check(&control, node_from).await?;
                control
                    .register(&config.labels)
                    .await
                    .map_err(|e| Trouble::Retry(e.to_string()))?;
                registered = true;
            }
            let seq = shared.with_status(|s| s.seq).unwrap_or(0);
            let after = caught_up.then_some(seq);
            let envelope = control
                .desired(after, config.watch_wait_ms)
                .await
                .map_err(|e| Trouble::Retry(e.to_string()))?;
            Ok((key, envelope))
        };
        let outcome = tokio::select! {
            outcome = step => outcome,
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        };
        match outcome {
            Ok((key, envelope)) => {
                let was_connected = shared
                    .with_status(|s| std::mem::replace(&mut s.connected, true))
                    .unwrap_or(true);
                if !was_connected {
                    tracing::info!(server = %control.server(), "connected to the control plane");
                }
                backoff_ms = config.backoff_min_ms;
                // A local failure (the disk) is not fatal either: what is active stays, and
                // the document is asked for again.
                let handled = match converge::on_envelope(
                    &config,
                    &control,
                    &shared,
                    key.as_ref(),
                    &envelope,
                )
                .await
                {
                    Ok(handled) => handled,
                    Err(error) => {
                        tracing::error!(%error, "keeping what is active");
                        Handled::Refused
                    }
                };
                caught_up = handled == Handled::Converged;
                if handled == Handled::Retry {
                    // A bundle could not be fetched: the same document again after a pause
                    // that grows, without waiting for a newer one.
                    fetch_backoff_ms = fetch_backoff_ms
                        .saturating_mul(2)
                        .clamp(config.backoff_min_ms, config.backoff_max_ms);
                    if pause(jittered(fetch_backoff_ms, random_u64()), &mut stopped).await {
                        return Ok(());
                    }
                } else {
                    fetch_backoff_ms = 0;
                }
                if handled == Handled::Refused {
                    // A refused document is asked for again, more and more slowly.
                    refusal_backoff_ms = refusal_backoff_ms
                        .saturating_mul(2)
                        .clamp(config.backoff_min_ms, config.backoff_max_ms);
                    if pause(jittered(refusal_backoff_ms, random_u64()), &mut stopped).await {
                        return Ok(());
                    }
                } else {
                    refusal_backoff_ms = 0;
                }
            }
            Err(Trouble::Fatal(error)) => {
                shared.with_status(|s| s.connected = false);
                tracing::error!(%error, "stopping: retrying cannot fix this");
                return Err(error);
            }
            Err(Trouble::Retry(reason)) => {
                shared.with_status(|s| s.connected = false);
                let retry_in_ms = jittered(backoff_ms, random_u64());
                tracing::warn!(
                    server = %control.server(),
                    %reason,
                    retry_in_ms,
                    "control plane not reached; serving what is on disk"
                );
                registered = false;
                caught_up = false;
                if pause(retry_in_ms, &mut stopped).await {
                    return Ok(());
                }
                backoff_ms = backoff_ms.saturating_mul(2).min(config.backoff_max_ms);
            }
        }
    }
}

/// Marks the agent stale when the latest document expired, and fresh again once a trusted
/// document that has not expired came. Each turn is queued as a report (`stale` with when the
/// document expired and its sequence, then `fresh` with how long it lasted), so a stale report
/// made while the control plane is unreachable reaches it after reconnection, before the
/// fresh one.
pub(crate) fn refresh_staleness(shared: &Shared) {
    let now = now_ms();
    let turn = shared.with_status(|status| {
        let expired_at = status.expires_ms.filter(|expires| now > *expires);
        let turn = match (status.stale_since_ms, expired_at) {
            (None, Some(since_ms)) => Some(Report::Stale {
                since_ms,
                seq: status.seq,
            }),
            (Some(since_ms), None) => Some(Report::Fresh {
                stale_ms: now.saturating_sub(since_ms),
            }),
            _ => None,
        };
        status.stale = expired_at.is_some();
        // Stale since the first expiry, even when a newer document came already expired.
        status.stale_since_ms = expired_at.and(status.stale_since_ms.or(expired_at));
        turn
    });
    let turn = turn.flatten();
    if turn.is_some() {
        save_freshness(shared);
    }
    match turn {
        Some(report @ Report::Stale { .. }) => {
            tracing::warn!("desired state expired; serving what is on disk (stale)");
            shared.reports.push(report);
        }
        Some(report @ Report::Fresh { stale_ms }) => {
            tracing::info!("desired state fresh again after {stale_ms} ms stale");
            shared.reports.push(report);
        }
        _ => {}
    }
}

/// At start: the freshness saved by the previous run (unreadable is not fatal: the next
/// document sets it again).
fn restore_freshness(shared: &Shared) {
    let freshness = shared.disk.freshness().unwrap_or_default();
    shared.with_status(|status| {
        status.expires_ms = freshness.expires_ms;
        status.stale_since_ms = freshness.stale_since_ms;
        status.stale = freshness.stale_since_ms.is_some();
    });
}

/// Keeps the freshness on disk (see [`disk::DataDir::freshness`]); a failure is logged, not
/// fatal.
pub(crate) fn save_freshness(shared: &Shared) {
    let freshness = shared.with_status(|status| disk::Freshness {
        expires_ms: status.expires_ms,
        stale_since_ms: status.stale_since_ms,
    });
    if let Some(freshness) = freshness
        && let Err(error) = shared.disk.save_freshness(&freshness)
    {
        tracing::warn!("{error}; freshness kept in memory only");
    }
}

/// Sends queued reports in batches; on failure puts them back and retries with backoff.
async fn send_reports(
    control: ControlPlane,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut backoff_ms = 100u64;
    loop {
        let batch = shared.reports.take_batch();
        if batch.is_empty() {
            tokio::select! {
                () = shared.reports.wait() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped.wait_for(|s| *s) => return Ok(()),
            }
            continue;
        }
        let (unsent, failed) = send_batch(&control, &shared, batch).await;
        shared.with_status(|s| {
            s.reports_queued = shared.reports.len().saturating_add(unsent.len());
            s.reports_dropped = shared.reports.dropped();
        });
        if let Some(reason) = failed {
            let retry_in_ms = jittered(backoff_ms, random_u64());
            tracing::warn!(
                reports = unsent.len(),
                %reason,
                retry_in_ms,
                "reports not delivered; kept and sent again"
            );
            shared.reports.put_back(unsent);
            if pause(retry_in_ms, &mut stopped).await {
                return Ok(());
            }
            backoff_ms = backoff_ms.saturating_mul(2).min(5_000);
        } else {
            backoff_ms = 100;
        }
    }
}

/// Sends `batch` in one request. When the control plane refuses the batch for what it holds,
/// each report is sent alone, so one refused report does not take the others with it; a
/// refused report is dropped (and logged), since sending it again cannot help; a dropped ACK
/// is sent again at the next document that names its version. Returns what is still to send,
/// and why sending failed for a reason that may pass (then retry).
async fn send_batch(
    control: &ControlPlane,
    shared: &Shared,
    batch: Vec<Report>,
) -> (Vec<Report>, Option<String>) {
    match control.report_batch(&batch).await {
        Ok(()) => return (Vec::new(), None),
        Err(error) if !error.is_refusal() => return (batch, Some(error.to_string())),
        Err(_) => {}
    }
    let mut unsent = Vec::new();
    let mut failed = None;
    for report in batch {
        if failed.is_some() {
            unsent.push(report);
            continue;
        }
        match control.report(&report).await {
            Ok(()) => {}
            Err(error) if error.is_refusal() => {
                tracing::warn!("report refused by the control plane: {error}");
                if let Report::Applied { unit, version } = &report {
                    shared.forget_acknowledgment(unit, version);
                }
            }
            Err(error) => {
                failed = Some(error.to_string());
                unsent.push(report);
            }
        }
    }
    (unsent, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_upper_half() {
        for random in [0, 1, 7, 999, u64::MAX] {
            let delay = jittered(1000, random);
            assert!((500..=1000).contains(&delay), "{delay}");
        }
        assert_eq!(jittered(0, 5), 0);
    }

    #[test]
    fn an_expired_document_makes_the_agent_stale_until_a_fresh_one_comes() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("agent");
        let shared = Shared::new(DataDir::open(&dir).unwrap(), "n1");
        refresh_staleness(&shared);
        assert_eq!(
            shared.with_status(|s| s.stale),
            Some(false),
            "no document yet"
        );
        assert!(shared.reports.is_empty());
        shared.with_status(|s| {
            s.seq = 41;
            s.expires_ms = Some(1);
        });
        refresh_staleness(&shared);
        assert_eq!(shared.with_status(|s| s.stale), Some(true));
        // A newer document that came already expired: still stale since the first expiry,
        // and not reported again.
        shared.with_status(|s| s.expires_ms = Some(2));
        refresh_staleness(&shared);
        assert_eq!(shared.with_status(|s| s.stale_since_ms), Some(Some(1)));
        shared.with_status(|s| s.expires_ms = Some(now_ms() + 60_000));
        refresh_staleness(&shared);
        refresh_staleness(&shared);
        assert_eq!(shared.with_status(|s| s.stale), Some(false));
        assert_eq!(shared.with_status(|s| s.stale_since_ms), Some(None));
        let reports = shared.reports.take_batch();
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert_eq!(
            reports[0],
            Report::Stale {
                since_ms: 1,
                seq: 41
            }
        );
        assert!(
            matches!(reports[1], Report::Fresh { stale_ms } if stale_ms >= now_ms() - 60_000),
            "{reports:?}"
        );
    }

    #[test]
    fn staleness_outlives_a_restart() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("agent");
        // The last document expired while the agent was down: stale at once after start.
        DataDir::open(&dir)
            .unwrap()
            .save_freshness(&disk::Freshness {
                expires_ms: Some(1_000),
                stale_since_ms: None,
            })
            .unwrap();
        let shared = Shared::new(DataDir::open(&dir).unwrap(), "n1");
        restore_freshness(&shared);
        refresh_staleness(&shared);
        assert_eq!(shared.with_status(|s| s.stale), Some(true));
        assert!(matches!(
            shared.reports.take_batch().as_slice(),
            [Report::Stale {
                since_ms: 1_000,
                ..
            }]
        ));
        // Restarted while stale: the fresh document still ends the stale period it began.
        let restarted = Shared::new(DataDir::open(&dir).unwrap(), "n1");
        restore_freshness(&restarted);
        assert_eq!(
            restarted.with_status(|s| s.stale_since_ms),
            Some(Some(1_000))
        );
        refresh_staleness(&restarted);
        assert!(restarted.reports.is_empty(), "no second stale report");
        restarted.with_status(|s| s.expires_ms = Some(now_ms() + 60_000));
        refresh_staleness(&restarted);
        assert!(matches!(
            restarted.reports.take_batch().as_slice(),
            [Report::Fresh { stale_ms }] if *stale_ms >= now_ms() - 1_000 - 60_000
        ));
        assert_eq!(
            DataDir::open(&dir)
                .unwrap()
                .freshness()
                .unwrap()
                .stale_since_ms,
            None
        );
    }

    #[test]
    fn a_refusal_holds_for_its_rollout_and_not_for_one_that_brings_the_version_again() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("agent");
        let shared = Shared::new(DataDir::open(&dir).unwrap(), "n1");
        let unit = UnitName::new("u").unwrap();
        let version = VersionHash::of(b"v1");
        shared.with_status(|s| s.units.entry(unit.clone()).or_default().trial = Some(1));
        shared.refuse(&unit, &version);
        // The same rollout still lists it: still refused.
        shared.forget_other_refusals(&unit, &version, Some(1));
        assert!(shared.is_refused(&unit, &version));
        // Listed as the stable version, judged by no rollout: still refused.
        shared.forget_other_refusals(&unit, &version, None);
        assert!(shared.is_refused(&unit, &version));
        // Another rollout brings it again on purpose (even with no document between that
        // left it out): tried again.
        shared.forget_other_refusals(&unit, &version, Some(2));
        assert!(!shared.is_refused(&unit, &version));
    }

    #[test]
    fn refusals_are_remembered_bounded_and_not_repeated() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("agent");
        let shared = Shared::new(DataDir::open(&dir).unwrap(), "n1");
        let unit = UnitName::new("u").unwrap();
        for i in 0..(MAX_REFUSED + 10) {
            shared.refuse(&unit, &VersionHash::of(&i.to_le_bytes()));
        }
        assert_eq!(shared.refused.lock().unwrap().len(), MAX_REFUSED);
        let latest = VersionHash::of(&(MAX_REFUSED + 9).to_le_bytes());
        assert!(shared.is_refused(&unit, &latest));
        let other = UnitName::new("other").unwrap();
        shared.refuse(&other, &latest);
        shared.forget_other_refusals(&unit, &latest, None);
        assert_eq!(
            shared.refused.lock().unwrap().len(),
            2,
            "only the unit's other versions go"
        );
        assert!(shared.is_refused(&unit, &latest) && shared.is_refused(&other, &latest));
        shared.note_refusal("same".into());
        shared.note_refusal("same".into());
        for i in 0..MAX_RECENT_REFUSALS {
            shared.note_refusal(format!("r{i}"));
        }
        let refusals = shared.with_status(|s| s.refusals.clone()).unwrap();
        assert_eq!(refusals.len(), MAX_RECENT_REFUSALS);
        assert_eq!(
            refusals.iter().filter(|r| *r == "same").count(),
            0,
            "oldest dropped"
        );
    }

    #[test]
    fn config_is_checked_before_start() {
        let good = AgentConfig::new("http://127.0.0.1:1", "t", "/tmp/x");
        good.validate().unwrap();
        let mut remote_api = good.clone();
        remote_api.local_api = Some(SocketAddr::from(([0, 0, 0, 0], 9000)));
        assert!(matches!(
            remote_api.validate(),
            Err(AgentError::Config {
                field: "local-api",
                ..
            })
        ));
        let mut bad_url = good.clone();
        bad_url.server_url = "ftp://x".into();
        assert!(bad_url.validate().is_err());
        let mut bad_key = good.clone();
        bad_key.server_key = Some("abc".into());
        assert!(bad_key.validate().is_err());
        // A root file that is missing, or not signed by its threshold, is said at check time.
        let scratch = tempfile::tempdir().unwrap();
        let mut no_root = good.clone();
        no_root.root = Some(scratch.path().join("root.json"));
        let said = no_root.validate().unwrap_err().to_string();
        assert!(said.contains("configuration root"), "{said}");
        let unsigned = failsmall_core::trust::SignedRoot {
            signed: failsmall_core::trust::RootDocument {
                version: 1,
                epoch: 1,
                expires_ms: u64::MAX,
                threshold: 1,
                root_keys: vec![failsmall_core::trust::public_key_hex(&[1; 32])],
                online_keys: vec![failsmall_core::trust::public_key_hex(&[2; 32])],
                revoked_keys: vec![],
                break_glass_threshold: 0,
                break_glass_keys: vec![],
            },
            signatures: vec![],
        };
        std::fs::write(scratch.path().join("root.json"), unsigned.to_text()).unwrap();
        let said = no_root.validate().unwrap_err().to_string();
        assert!(said.contains("threshold not met"), "{said}");
        let mut signed = unsigned;
        signed.sign_with(&[1; 32]);
        std::fs::write(scratch.path().join("root.json"), signed.to_text()).unwrap();
        assert!(no_root.validate().is_ok());
    }
}
