//! The control plane's durable state in SQLite: units, versions, blobs, nodes, the changelog,
//! access tokens and the engine's state.
//!
//! Architecture invariant: only this module talks SQL. Every mutation runs in one transaction,
//! so a crash leaves the store before or after it, never between. Updates carry the revision
//! the caller read; a different current revision is [`StoreError::Conflict`]. The SQL keeps to
//! what PostgreSQL also runs, except the `INTEGER PRIMARY KEY` row ids (`BIGSERIAL` there) and
//! `BLOB` (`BYTEA`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use fail::fail_point;

use failsmall_core::domain::Labels;
use failsmall_core::plan::Selector;
use failsmall_core::validate::UnitSpec;
use serde::{Deserialize, Serialize};
use sql::{Connection, OptionalExtension, Queryable, Row, Transaction, params};

use crate::auth::Role;
use crate::validator::ValidatorCommand;

/// The fail points at the store's persistence steps. They do nothing unless the crate is built
/// with the `failpoints` feature and a test configures them (`fail::cfg(name, "return")` makes
/// the step fail with [`StoreError::Injected`], `"panic"` makes it panic).
pub mod fail_points {
    /// An engine step: before its transaction begins.
    pub const STEP_BEFORE: &str = "store::commit_step::before";
    /// An engine step: the cause (node) and the engine state with its bumped revision (the
    /// desired-state sequence) are written; its changelog rows are not.
    pub const STEP_AFTER_STATE: &str = "store::commit_step::after_state";
    /// An engine step: everything is written, the transaction is not committed.
    pub const STEP_BEFORE_COMMIT: &str = "store::commit_step::before_commit";
    /// An engine step: committed, the caller not yet told.
    pub const STEP_AFTER_COMMIT: &str = "store::commit_step::after_commit";
    /// A push: before its transaction begins.
    pub const PUSH_BEFORE: &str = "store::push_version::before";
    /// A push: the blob is written; the version row and its changelog rows are not.
    pub const PUSH_AFTER_BLOB: &str = "store::push_version::after_blob";
    /// A push: everything is written, the transaction is not committed.
    pub const PUSH_BEFORE_COMMIT: &str = "store::push_version::before_commit";
    /// A push: committed, the caller not yet told.
    pub const PUSH_AFTER_COMMIT: &str = "store::push_version::after_commit";
    /// A changelog write on its own: written, not committed.
    pub const CHANGE_BEFORE_COMMIT: &str = "store::record::before_commit";
    /// A changelog write on its own: committed, the caller not yet told.
    pub const CHANGE_AFTER_COMMIT: &str = "store::record::after_commit";
    /// An engine snapshot: the steps it covers are committed in the log, the snapshot is not
    /// written yet.
    pub const SNAPSHOT_BEFORE: &str = "store::engine_snapshot::before";
    /// Every fail point above.
    pub const ALL: [&str; 11] = [
        STEP_BEFORE,
        STEP_AFTER_STATE,
        STEP_BEFORE_COMMIT,
        STEP_AFTER_COMMIT,
        PUSH_BEFORE,
        PUSH_AFTER_BLOB,
        PUSH_BEFORE_COMMIT,
        PUSH_AFTER_COMMIT,
        CHANGE_BEFORE_COMMIT,
        CHANGE_AFTER_COMMIT,
        SNAPSHOT_BEFORE,
    ];
}

/// Fails with [`StoreError::Injected`] when the fail point `name` is configured to `return`.
fn fail_at(name: &'static str) -> Result<(), StoreError> {
    let _ = name;
    fail_point!(name, |_| Err(StoreError::Injected { point: name }));
    Ok(())
}

/// Listings return at most this many rows.
pub const MAX_LIST_ROWS: u32 = failsmall_core::limits::LIST_PAGE_MAX;
/// Most rows a page query reads: a page and one more, to tell whether another follows.
const PAGE_FETCH_MAX: u32 = MAX_LIST_ROWS + 1;
/// Most applied versions a page of nodes reads; a page with more ends early (see
/// [`Store::nodes_page`]). At least the engine's units, so one node's versions always fit.
pub const NODE_VERSIONS_PAGE_MAX: i64 = 100_000;
const _: () = assert!(NODE_VERSIONS_PAGE_MAX as usize >= failsmall_core::engine::MAX_UNITS);
/// A changelog page filtered by labels examines at most this many entries; when it stops
/// there, its `next_cursor` continues the scan.
pub const MAX_CHANGELOG_SCAN_ROWS: u32 = 10_000;

/// Numbered schema migrations, applied in order at open; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE units (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        owner TEXT NOT NULL,
        description TEXT NOT NULL,
        revision BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
    );
    CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        size_bytes BIGINT NOT NULL,
        content BLOB NOT NULL
    );
    CREATE TABLE versions (
        unit TEXT NOT NULL REFERENCES units(name),
        hash TEXT NOT NULL REFERENCES blobs(sha256),
        seq BIGINT NOT NULL,
        size_bytes BIGINT NOT NULL,
        author TEXT NOT NULL,
        message TEXT NOT NULL,
        parent TEXT,
        created_ms BIGINT NOT NULL,
        signature TEXT NOT NULL,
        validation_skipped BOOLEAN NOT NULL,
        PRIMARY KEY (unit, hash),
        UNIQUE (unit, seq)
    );
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        labels TEXT NOT NULL,
        registered_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL
    );
    CREATE TABLE changelog (
        id INTEGER PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        kind TEXT NOT NULL,
        unit TEXT,
        version TEXT,
        reason TEXT NOT NULL
    );
    CREATE INDEX changelog_unit ON changelog (unit, id);
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT
    );
    CREATE TABLE engine_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL,
        revision BIGINT NOT NULL
    );",
    // 2: an agent token is bound to the one node it acts for.
    "ALTER TABLE tokens ADD COLUMN node TEXT;",
    // 3: a unit's plan (the plan file's text): each push starts a rollout through it.
    "ALTER TABLE units ADD COLUMN plan TEXT;",
    // 4: which nodes a changelog entry concerns (JSON `Concerns`; none: every node).
    "ALTER TABLE changelog ADD COLUMN concerns TEXT;",
    // 5: a unit's validator command (JSON `ValidatorCommand`), run by the server on pushes.
    "ALTER TABLE units ADD COLUMN validator TEXT;",
    // 6: the rollout and stage a changelog entry belongs to, as columns of their own.
    "ALTER TABLE changelog ADD COLUMN rollout BIGINT;
    ALTER TABLE changelog ADD COLUMN stage TEXT;
    CREATE INDEX changelog_rollout ON changelog (rollout, id);",
    // 7: since when a node serves stale configuration (its latest desired-state document
    // expired, by its own report); none: fresh.
    "ALTER TABLE nodes ADD COLUMN stale_since_ms BIGINT;",
    // 8: the version each node last reported applied, per unit.
    "CREATE TABLE node_versions (
        node TEXT NOT NULL,
        unit TEXT NOT NULL,
        version TEXT NOT NULL,
        applied_ms BIGINT NOT NULL,
        PRIMARY KEY (node, unit)
    );",
    // 9: changelog entries by kind, so `/metrics` counts the ended rollouts without a scan.
    "CREATE INDEX changelog_kind ON changelog (kind);",
    // 10: units a node must remove (a rollback took every version of them from it), until
    // its agent reports the removal done.
    "CREATE TABLE node_removals (
        node TEXT NOT NULL,
        unit TEXT NOT NULL,
        since_ms BIGINT NOT NULL,
        PRIMARY KEY (node, unit)
    );",
    // 11: a token's owner (the person it acts for; approvals compare owners) and expiry.
    "ALTER TABLE tokens ADD COLUMN owner TEXT;
    ALTER TABLE tokens ADD COLUMN expires_ms BIGINT;",
    // 12: the changelog's hash chain (`store/trust.rs`): each row's SHA-256 over the previous
    // row's hash and its own content; rows from before are chained once, at this upgrade.
    "ALTER TABLE changelog ADD COLUMN hash TEXT;
    CREATE TABLE changelog_chain (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        chained_ms BIGINT NOT NULL
    );",
    // 13: webhook subscriptions and the notification outbox (`store/outbox.rs`): a changelog
    // row's notifications are written in its transaction.
    "CREATE TABLE webhooks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL,
        kind TEXT NOT NULL,
        events TEXT NOT NULL,
        secret TEXT,
        actor TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        webhook INTEGER NOT NULL,
        delivery TEXT NOT NULL UNIQUE,
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_ms BIGINT NOT NULL,
        last_error TEXT,
        created_ms BIGINT NOT NULL,
        delivered_ms BIGINT
    );
    CREATE INDEX outbox_due ON outbox (state, next_attempt_ms);",
    // 14: service level objectives (`store/slos.rs`): the spec as JSON, keyed by name, and
    // their event counts per minute and per hour (pruned past what `SloCounts` keeps).
    "CREATE TABLE slos (
        name TEXT PRIMARY KEY,
        unit TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE slo_buckets (
        slo TEXT NOT NULL,
        width_ms BIGINT NOT NULL,
        idx BIGINT NOT NULL,
        total BIGINT NOT NULL,
        bad BIGINT NOT NULL,
        PRIMARY KEY (slo, width_ms, idx)
    );",
    // 15: online break glass (`store/elevations.rs`): requests for a time-boxed elevated
    // role, the people who approved each, and the one claim that minted its token.
    "CREATE TABLE elevations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        requester TEXT NOT NULL,
        role TEXT NOT NULL,
        duration_ms BIGINT NOT NULL,
        reason TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        approvals TEXT NOT NULL,
        granted_ms BIGINT,
        claimed_ms BIGINT,
        token_id BIGINT
    );",
    // 16: incidents and their public updates (`store/incidents.rs`).
    incidents::MIGRATION,
    // 17: the engine's state as an append-only log of its steps plus snapshots
    // (`store/engine.rs`); the state saved whole so far becomes the first snapshot.
    engine::MIGRATION,
    // 18: the engine's lease on a shared PostgreSQL store (`store/lease.rs`).
    lease::MIGRATION,
];

/// The changelog kinds that end a rollout, as counted for `/metrics`.
pub const ROLLOUT_END_KINDS: [&str; 4] = ["completed", "rolled_back", "aborted", "superseded"];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {key:?} not found")]
    NotFound { kind: &'static str, key: String },
    #[error(
        "{kind} {key:?} is at revision {current}, not {expected} as the caller read; re-read and retry"
    )]
    Conflict {
        kind: &'static str,
        key: String,
        expected: u64,
        current: u64,
    },
    #[error("{kind} {key:?} already exists")]
    AlreadyExists { kind: &'static str, key: String },
    #[error("database {path}: {source}")]
    Open { path: String, source: sql::SqlError },
    #[error("database: {0}")]
    Sql(#[from] sql::SqlError),
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt { what: String, reason: String },
    #[error(
        "token {id} is the last admin token that is not revoked and never expires; create another \
         (`failsmall token create NAME --role admin --owner PERSON`, no --expires-in), then revoke this one"
    )]
    LastAdmin { id: u64 },
    #[error("the store's lock was poisoned by an earlier failure")]
    Poisoned,
    /// A fail point (crash tests only) made this step fail.
    #[error("injected failure at fail point {point}")]
    Injected { point: &'static str },
}

/// A unit as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    pub name: String,
    pub spec: UnitSpec,
    pub owner: String,
    pub description: String,
    pub revision: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The plan file's text (YAML) every push of this unit rolls out through; none: pushes
    /// only store versions, and rollouts are requested on their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The consumer's own parser, run by the server on every push (see [`crate::validator`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<ValidatorCommand>,
}

/// What a unit is made of, to create or update it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitFields<'a> {
    pub spec: &'a UnitSpec,
    pub owner: &'a str,
    pub description: &'a str,
    /// The plan file's text; none: a push rolls out only through a plan its pusher names.
    pub plan: Option<&'a str>,
    pub validator: ValidatorChange<'a>,
}

/// What an update does to a unit's validator command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidatorChange<'a> {
    /// Leaves it as it is.
    Keep,
    /// Sets it (none: removes it).
    Set(Option<&'a ValidatorCommand>),
}

/// An immutable version as stored (its bytes are the blob `hash`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub unit: String,
    pub hash: String,
    /// 1 for a unit's first version, then +1 per version.
    pub seq: u64,
    pub size_bytes: u64,
    pub author: String,
    pub message: String,
    pub parent: Option<String>,
    pub created_ms: u64,
    /// Ed25519 signature (hex) over [`crate::signing::version_message`].
    pub signature: String,
    pub validation_skipped: bool,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub labels: failsmall_core::domain::Labels,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    /// Since when the node serves stale configuration (the expiry of its latest desired-state
    /// document, by its own report); absent while it is fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_since_ms: Option<u64>,
    /// Per unit, the version the node last reported applied (ACK), and when.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, AppliedVersion>,
}

/// A version a node reported applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedVersion {
    pub version: String,
    pub applied_ms: u64,
}

/// An ACK to record with the engine step that took it: `node` runs `version` of `unit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRow {
    pub node: String,
    pub unit: String,
    pub version: String,
    pub at_ms: u64,
}

/// One changelog row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub id: u64,
    pub at_ms: u64,
    pub actor: String,
    pub kind: String,
    pub unit: Option<String>,
    pub version: Option<String>,
    pub reason: String,
    /// Which nodes the change concerns; none: every node (fleet-wide).
    pub concerns: Option<Concerns>,
    /// The rollout the change belongs to (`rN`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u64>,
    /// The stage of that rollout it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// Which nodes a changelog entry concerns, for the changelog's label filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concerns {
    /// The nodes any of these stage selectors admits.
    Selectors(Vec<Selector>),
    /// The one node with exactly these labels.
    Node(Labels),
}

impl Concerns {
    /// The nodes of these stages: none (every node) when a selector is empty, so selects
    /// every node, or when there is no stage at all.
    pub fn of_selectors(selectors: Vec<Selector>) -> Option<Self> {
        if selectors.is_empty() || selectors.iter().any(|s| s.labels.is_empty()) {
            None
        } else {
            Some(Self::Selectors(selectors))
        }
    }

    /// Whether the change concerns nodes that carry every label of `wanted`. A selector that
    /// does not name a label's key selects nodes with any value of it, so admits it.
    pub fn admits(&self, wanted: &[(String, String)]) -> bool {
        match self {
            Self::Selectors(selectors) => selectors.iter().any(|selector| {
                wanted.iter().all(|(key, value)| {
                    selector
                        .labels
                        .get(key)
                        .is_none_or(|values| values.iter().any(|v| v == value))
                })
            }),
            Self::Node(labels) => wanted
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value)),
        }
    }
}

/// One page of the changelog; `next_cursor` continues it (a page filtered by labels may hold
/// fewer entries than asked and still have one: it stopped at [`MAX_CHANGELOG_SCAN_ROWS`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangelogPage {
    pub entries: Vec<ChangeRecord>,
    pub next_cursor: Option<u64>,
}

/// A change to record, in the same transaction as the mutation it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChange<'a> {
    pub at_ms: u64,
    pub actor: &'a str,
    pub kind: &'a str,
    pub unit: Option<&'a str>,
    pub version: Option<&'a str>,
    pub reason: &'a str,
    /// Which nodes the change concerns; none: every node.
    pub concerns: Option<&'a Concerns>,
    /// The rollout the change belongs to, if any.
    pub rollout: Option<u64>,
    /// The stage of that rollout it concerns, if any.
    pub stage: Option<&'a str>,
}

/// A change owned by its holder (to move into a blocking task); see [`NewChange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    pub at_ms: u64,
    pub actor: String,
    pub kind: String,
    pub unit: Option<String>,
    pub version: Option<String>,
    pub reason: String,
    /// Which nodes the change concerns; none: every node.
    pub concerns: Option<Concerns>,
    /// The rollout the change belongs to, if any.
    pub rollout: Option<u64>,
    /// The stage of that rollout it concerns, if any.
    pub stage: Option<String>,
}

impl ChangeRow {
    pub fn as_new(&self) -> NewChange<'_> {
        NewChange {
            at_ms: self.at_ms,
            actor: &self.actor,
            kind: &self.kind,
            unit: self.unit.as_deref(),
            version: self.version.as_deref(),
            reason: &self.reason,
            concerns: self.concerns.as_ref(),
            rollout: self.rollout,
            stage: self.stage.as_deref(),
        }
    }
}

/// One engine step to persist, with the mutation that caused it, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStep<'a> {
    /// The engine state's revision the step started from (0: none saved yet).
    pub expected_revision: u64,
    /// When the step ran (the `now_ms` its events were applied at).
    pub now_ms: u64,
    /// The step's events in order (a JSON array of engine events), appended to the engine's
    /// log: replayed on the latest snapshot they give the state after the step.
    pub events: &'a str,
    /// The changes the step produced, and the one describing the cause.
    pub changes: &'a [ChangeRow],
    /// The nodes the step registered (or gave new labels), in order: one registration, or
    /// the registrations the report batcher grouped into the step. Each is stored with
    /// `now_ms` as when it was registered and last seen.
    pub nodes: &'a [(&'a str, &'a failsmall_core::domain::Labels)],
    /// A pushed version that caused the step (its rollout): stored with it, or the whole step
    /// fails with [`StoreError::AlreadyExists`] when the unit already has these bytes.
    pub version: Option<&'a NewVersion<'a>>,
}

/// What one of a node's reports changes besides the engine, with the changelog row that says
/// so; stored in the transaction of the engine step of the same batch of reports
/// ([`Store::commit_step_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node: String,
    pub effect: NodeEffect,
    /// Recorded as [`NodeEffect`] says.
    pub change: ChangeRow,
}

/// What a [`NodeRow`] changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEffect {
    /// Since when the node serves stale configuration; none: fresh again. The change is
    /// recorded when the node's staleness changes: always for a stale report, for a fresh one
    /// only when the node was stale (a repeated fresh report records nothing).
    Staleness(Option<u64>),
    /// The node removed `unit` (the ACK of a removal): the unit's removal mark and applied
    /// version go. The change is recorded only when a removal was pending, so an agent that
    /// says it again records nothing.
    Removed { unit: String },
    /// Only the changelog row: a transport fault, a refused document, a repaired file.
    Note,
}

/// A unit that a step took from a node (no version at all any more): the node must remove it
/// ([`Store::removals_of`]) until its agent reports it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovalRow {
    pub node: String,
    pub unit: String,
    pub at_ms: u64,
}

/// An access token as stored (only its SHA-256 is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: u64,
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
    /// The node an agent token acts for; only that node's routes admit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The person the token acts for (approvals compare owners); none: the token's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When the token stops being accepted; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// Which changelog rows to return: `id > after_id` oldest first, or `id < before_id` newest
/// first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangelogQuery {
    pub unit: Option<String>,
    /// Only entries about units this team owns (a unit's `owner` is its team).
    pub team: Option<String>,
    /// Only the entries of this rollout.
    pub rollout: Option<u64>,
    /// Only entries that concern nodes carrying every one of these labels (key, value), and
    /// fleet-wide ones.
    pub labels: Vec<(String, String)>,
    pub since_ms: Option<u64>,
    pub after_id: Option<u64>,
    /// Newest first: only entries below this id (the previous page's `next_cursor`).
    pub before_id: Option<u64>,
    pub limit: u32,
    /// Newest first instead (feeds, the latest entries); then `before_id` applies and
    /// `after_id` is ignored.
    pub newest_first: bool,
}

/// A version to store; the caller has hashed, validated and signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion<'a> {
    pub unit: &'a str,
    pub hash: &'a str,
    pub content: &'a [u8],
    pub author: &'a str,
    pub message: &'a str,
    /// The head version the caller read (`None`: the caller expects no version yet). A
    /// different current head is a conflict.
    pub expected_parent: Option<Option<&'a str>>,
    pub created_ms: u64,
    pub signature: &'a str,
    pub validation_skipped: bool,
}

/// A version owned by its holder (to move into a blocking task); see [`NewVersion`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub unit: String,
    pub hash: String,
    pub content: Vec<u8>,
    pub author: String,
    pub message: String,
    pub expected_parent: Option<Option<String>>,
    pub created_ms: u64,
    pub signature: String,
    pub validation_skipped: bool,
}

impl VersionRow {
    pub fn as_new(&self) -> NewVersion<'_> {
        NewVersion {
            unit: &self.unit,
            hash: &self.hash,
            content: &self.content,
            author: &self.author,
            message: &self.message,
            expected_parent: self
                .expected_parent
                .as_ref()
                .map(|parent| parent.as_deref()),
            created_ms: self.created_ms,
            signature: &self.signature,
            validation_skipped: self.validation_skipped,
        }
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreCounts {
    pub units: u64,
    pub versions: u64,
    pub nodes: u64,
    /// Nodes whose latest staleness report says they serve stale configuration.
    pub nodes_stale: u64,
    pub blob_bytes: u64,
    pub changelog_entries: u64,
    /// Rollouts ended, by the changelog kind that ended them, in [`ROLLOUT_END_KINDS`] order.
    pub rollouts_ended: [u64; ROLLOUT_END_KINDS.len()],
}

/// The SQLite store. Cheap to share behind an `Arc`; calls are serialized by one lock.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    /// The changelog chain's first break, as the last verification found it.
    chain_break: Mutex<Option<ChainBreak>>,
    /// Bumped after every call that changed a row (committed or not: a spurious wake only
    /// costs a reader one look), so long polls such as `GET /v1/changes` wake on any write.
    changes: tokio::sync::watch::Sender<u64>,
}

mod changelog;
mod desired;
mod elevations;
mod engine;
mod incidents;
mod lease;
mod nodes;
mod outbox;
mod slos;
pub mod sql;
mod tokens;
mod trust;
mod units;
mod versions;
pub use elevations::{ElevationOutcome, ElevationRecord};
pub use engine::{ENGINE_LOG_TAIL_STEPS, EngineLogRow};
pub use incidents::{IncidentChange, IncidentRecord, IncidentUpdate, NewIncident};
pub use lease::{LeaseAttempt, LeaseHolder};
pub use nodes::MARKS_PER_TRANSACTION;
pub use outbox::{DeadLetter, OutboxRow, WebhookRecord};
pub use slos::{SloBucketRow, SloHorizon};
pub use trust::{ChainBreak, ChainReport, NewToken};

/// A database URL without its password, to name it in errors and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A number from outside (an id, a cursor, a time) as SQL's signed 64-bit integer: larger
/// ones are clamped, so they find nothing instead of failing the query.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A column holding JSON, decoded on read; malformed JSON is a read error.
struct StoredJson<T>(T);

impl<T: serde::de::DeserializeOwned> sql::FromSql for StoredJson<T> {
    fn from_sql(value: &sql::Value) -> Result<Self, String> {
        let text = String::from_sql(value)?;
        serde_json::from_str(&text)
            .map(StoredJson)
            .map_err(|e| e.to_string())
    }
}

impl sql::FromSql for Role {
    fn from_sql(value: &sql::Value) -> Result<Self, String> {
        String::from_sql(value)?
            .parse()
            .map_err(|e: crate::auth::RoleError| e.to_string())
    }
}

fn unit_from_row(row: &Row) -> sql::Result<UnitRecord> {
    let StoredJson(spec) = row.get(1)?;
    let validator = row
        .get::<_, Option<StoredJson<ValidatorCommand>>>(8)?
        .map(|StoredJson(validator)| validator);
    Ok(UnitRecord {
        name: row.get(0)?,
        spec,
        owner: row.get(2)?,
        description: row.get(3)?,
        revision: to_u64(row.get(4)?),
        created_ms: to_u64(row.get(5)?),
        updated_ms: to_u64(row.get(6)?),
        plan: row.get(7)?,
        validator,
    })
}

const VERSION_COLUMNS: &str = "unit, hash, seq, size_bytes, author, message, parent, created_ms, signature, validation_skipped";

fn version_from_row(row: &Row) -> sql::Result<VersionRecord> {
    Ok(VersionRecord {
        unit: row.get(0)?,
        hash: row.get(1)?,
        seq: to_u64(row.get(2)?),
        size_bytes: to_u64(row.get(3)?),
        author: row.get(4)?,
        message: row.get(5)?,
        parent: row.get(6)?,
        created_ms: to_u64(row.get(7)?),
        signature: row.get(8)?,
        validation_skipped: row.get(9)?,
    })
}

fn change_from_row(row: &Row) -> sql::Result<ChangeRecord> {
    let concerns = row
        .get::<_, Option<StoredJson<Concerns>>>(7)?
        .map(|StoredJson(concerns)| concerns);
    Ok(ChangeRecord {
        id: to_u64(row.get(0)?),
        at_ms: to_u64(row.get(1)?),
        actor: row.get(2)?,
        kind: row.get(3)?,
        unit: row.get(4)?,
        version: row.get(5)?,
        reason: row.get(6)?,
        concerns,
        rollout: row.get::<_, Option<i64>>(8)?.map(to_u64),
        stage: row.get(9)?,
    })
}

fn node_from_row(row: &Row) -> sql::Result<NodeRecord> {
    let StoredJson(labels) = row.get(1)?;
    Ok(NodeRecord {
        id: row.get(0)?,
        labels,
        registered_ms: to_u64(row.get(2)?),
        last_seen_ms: to_u64(row.get(3)?),
        stale_since_ms: row.get::<_, Option<i64>>(4)?.map(to_u64),
        versions: BTreeMap::new(),
    })
}

fn token_from_row(row: &Row) -> sql::Result<TokenRecord> {
    Ok(TokenRecord {
        id: to_u64(row.get(0)?),
        name: row.get(1)?,
        role: row.get(2)?,
        created_ms: to_u64(row.get(3)?),
        revoked_ms: row.get::<_, Option<i64>>(4)?.map(to_u64),
        node: row.get(5)?,
        owner: row.get(6)?,
        expires_ms: row.get::<_, Option<i64>>(7)?.map(to_u64),
    })
}

fn spec_json(name: &str, spec: &UnitSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
        what: format!("spec of unit {name}"),
        reason: e.to_string(),
    })
}

fn validator_json(
    name: &str,
    validator: Option<&ValidatorCommand>,
) -> Result<Option<String>, StoreError> {
    validator
        .map(|validator| {
            serde_json::to_string(validator).map_err(|e| StoreError::Corrupt {
                what: format!("validator of unit {name}"),
                reason: e.to_string(),
            })
        })
        .transpose()
}

fn record_change(tx: &Transaction<'_>, change: &NewChange<'_>) -> Result<u64, StoreError> {
    let concerns = change
        .concerns
        .map(|concerns| {
            serde_json::to_string(concerns).map_err(|e| StoreError::Corrupt {
                what: format!("nodes concerned by change {:?}", change.kind),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let id = to_u64(tx.query_row(
        "INSERT INTO changelog (at_ms, actor, kind, unit, version, reason, concerns, rollout, stage) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
        params![change.at_ms, change.actor, change.kind, change.unit, change.version, change.reason, concerns, change.rollout.map(to_i64), change.stage],
        |r| r.get::<_, i64>(0),
    )?);
    trust::chain_row(tx, id)?;
    // Its notifications, in the same transaction (see `crate::notify`).
    outbox::enqueue(tx, change, id)?;
    // The incident it opens, if any, in the same transaction (see `crate::incidents`).
    incidents::on_change(tx, change)?;
    // One line per state change: every changelog entry, as it is written in its transaction.
    tracing::info!(
        changelog_id = id,
        kind = change.kind,
        actor = change.actor,
        unit = change.unit,
        version = change.version,
        rollout = change.rollout,
        stage = change.stage,
        reason = change.reason,
        "changelog"
    );
    Ok(id)
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            source: source.into(),
        };
        let conn = rusqlite::Connection::open(path).map_err(open_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_error)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        Self::with_connection(Connection::sqlite(conn))
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user@host:port/db`) and
    /// applies pending migrations.
    pub fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let conn = Connection::postgres(url).map_err(|source| StoreError::Open {
            path: redact_url(url),
            source,
        })?;
        Self::with_connection(conn)
    }

    fn with_connection(conn: Connection) -> Result<Self, StoreError> {
        let store = Self {
            conn: Mutex::new(conn),
            chain_break: Mutex::new(None),
            changes: tokio::sync::watch::channel(0).0,
        };
        store.migrate()?;
        store.chain_upgrade()?;
        Ok(store)
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (result, changed) = self.with_conn_unwatched(|conn| {
            let before = conn.total_changes();
            let result = f(conn);
            (result, conn.total_changes() != before)
        });
        if changed {
            self.changes
                .send_modify(|count| *count = count.wrapping_add(1));
        }
        result
    }

    /// As [`Store::with_conn`], for what readers must not be woken by (the engine's lease,
    /// renewed every few seconds, is not a change anyone reads).
    fn with_conn_unwatched<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        // A panic while the lock was held dropped (so rolled back) the transaction it was in;
        // the connection is usable, so a poisoned lock is taken over instead of refusing all
        // later calls.
        let mut conn = match self.conn.lock() {
            Ok(conn) => conn,
            Err(poisoned) => {
                self.conn.clear_poison();
                poisoned.into_inner()
            }
        };
        f(&mut conn)
    }

    /// Follows the count of calls that changed the store since it was opened.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            let tx_is_postgres = conn.is_postgres();
            let tx = conn.transaction()?;
            if tx_is_postgres {
                // Servers starting together on one database migrate one after another.
                tx.execute_batch("SELECT pg_advisory_xact_lock(7468126)")?;
            }
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)",
            )?;
            let applied: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )?;
            for (index, sql) in MIGRATIONS.iter().enumerate() {
                let number = i64::try_from(index).unwrap_or(i64::MAX).saturating_add(1);
                if number > applied {
                    if tx_is_postgres {
                        tx.execute_batch(&sql::postgres_ddl(sql))?;
                    } else {
                        tx.execute_batch(sql)?;
                    }
                    tx.execute(
                        "INSERT INTO schema_migrations (version) VALUES (?1)",
                        [number],
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The number of the last applied migration.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            let version: i64 = conn.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )?;
            Ok(to_u64(version))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsmall_core::domain::UnitFormat;

    fn change(kind: &'static str) -> NewChange<'static> {
        NewChange {
            at_ms: 5,
            actor: "ada",
            kind,
            unit: Some("u"),
            version: None,
            reason: "",
            concerns: None,
            rollout: None,
            stage: None,
        }
    }

    /// A database path in a fresh temporary directory, removed when the guard is dropped.
    fn temp_db(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix(&format!("failsmall-store-{name}-"))
            .tempdir()
            .unwrap();
        let path = dir.path().join("failsmall.db");
        (dir, path)
    }

    #[test]
    fn migrations_apply_once_and_data_survives_reopen() {
        let (_dir, path) = temp_db("reopen");
        let spec = UnitSpec::new(UnitFormat::Json, 100);
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u64);
            store
                .create_unit("u", &spec, "team", "d", &change("unit_created"))
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u64);
        assert_eq!(store.unit("u").unwrap().spec, spec);
    }

    #[test]
    fn stale_revision_is_a_conflict_and_changes_nothing() {
        let (_dir, db) = temp_db("conflict");
        let store = Store::open(&db).unwrap();
        let spec = UnitSpec::new(UnitFormat::Json, 100);
        store
            .create_unit("u", &spec, "team", "d", &change("unit_created"))
            .unwrap();
        let updated = store
            .update_unit("u", 1, &spec, "team", "d2", &change("unit_updated"))
            .unwrap();
        assert_eq!(updated.revision, 2);
        let stale = store.update_unit("u", 1, &spec, "team", "d3", &change("unit_updated"));
        assert!(matches!(
            stale,
            Err(StoreError::Conflict {
                expected: 1,
                current: 2,
                ..
            })
        ));
        assert_eq!(store.unit("u").unwrap().description, "d2");
        let entries = store
            .changelog(&ChangelogQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn versions_chain_to_their_parent_and_dedupe() {
        let (_dir, db) = temp_db("versions");
        let store = Store::open(&db).unwrap();
        store
            .create_unit(
                "u",
                &UnitSpec::new(UnitFormat::Raw, 100),
                "t",
                "",
                &change("unit_created"),
            )
            .unwrap();
        let push = |hash: &'static str, content: &'static [u8]| NewVersion {
            unit: "u",
            hash,
            content,
            author: "ada",
            message: "m",
            expected_parent: None,
            created_ms: 1,
            signature: "s",
            validation_skipped: false,
        };
        let (first, created) = store.push_version(&push("aa", b"1"), &[]).unwrap();
        assert!(created);
        assert_eq!((first.seq, first.parent.clone()), (1, None));
        let (second, _) = store.push_version(&push("bb", b"2"), &[]).unwrap();
        assert_eq!((second.seq, second.parent.as_deref()), (2, Some("aa")));
        let (again, created) = store.push_version(&push("aa", b"1"), &[]).unwrap();
        assert!(!created);
        assert_eq!(again, first);
        let mut stale = push("cc", b"3");
        stale.expected_parent = Some(Some("aa"));
        assert!(matches!(
            store.push_version(&stale, &[]),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.blob("bb").unwrap(), b"2");
        assert_eq!(store.versions("u", 10).unwrap().len(), 2);
    }

    #[test]
    fn an_engine_step_commits_with_its_cause_or_not_at_all() {
        let (_dir, db) = temp_db("step");
        let store = Store::open(&db).unwrap();
        let labels: failsmall_core::domain::Labels = [("pop".to_owned(), "fra".to_owned())].into();
        let changes = vec![ChangeRow {
            at_ms: 9,
            actor: "agent".into(),
            kind: "node_registered".into(),
            unit: None,
            version: None,
            reason: "n1".into(),
            concerns: None,
            rollout: None,
            stage: None,
        }];
        let registered = [("n1", &labels)];
        let step = |expected_revision, events| EngineStep {
            expected_revision,
            now_ms: 9,
            events,
            changes: &changes,
            nodes: &registered,
            version: None,
        };
        assert_eq!(store.commit_step(&step(0, "[]")).unwrap(), 1);
        assert_eq!(store.node("n1").unwrap().unwrap().labels, labels);
        // A step from a stale revision writes nothing: no state, no node, no change.
        let other: failsmall_core::domain::Labels = [("pop".to_owned(), "ams".to_owned())].into();
        let stale = EngineStep {
            nodes: &[("n1", &other)],
            ..step(0, "[\"Tick\"]")
        };
        assert!(matches!(
            store.commit_step(&stale),
            Err(StoreError::Conflict {
                expected: 0,
                current: 1,
                ..
            })
        ));
        assert_eq!(store.engine_revision().unwrap(), 1);
        assert_eq!(
            store.engine_log_after(0).unwrap(),
            [EngineLogRow {
                revision: 1,
                now_ms: 9,
                events: "[]".to_owned()
            }]
        );
        assert_eq!(store.node("n1").unwrap().unwrap().labels, labels);
        let entries = store
            .changelog(&ChangelogQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn staleness_commits_with_its_step_and_an_unknown_node_fails_the_whole_step() {
        let (_dir, db) = temp_db("stale");
        let store = Store::open(&db).unwrap();
        let labels: failsmall_core::domain::Labels = [("pop".to_owned(), "fra".to_owned())].into();
        let registered = [("n1", &labels)];
        let step = |expected_revision, nodes| EngineStep {
            expected_revision,
            now_ms: 0,
            events: "[]",
            changes: &[],
            nodes,
            version: None,
        };
        assert_eq!(store.commit_step(&step(0, &registered[..])).unwrap(), 1);
        let row = |node: &str, stale_since_ms, kind: &str| NodeRow {
            node: node.to_owned(),
            effect: NodeEffect::Staleness(stale_since_ms),
            change: ChangeRow {
                at_ms: 9,
                actor: node.to_owned(),
                kind: kind.to_owned(),
                unit: None,
                version: None,
                reason: "r".into(),
                concerns: None,
                rollout: None,
                stage: None,
            },
        };
        let unknown = [
            row("n1", Some(5), "node_stale"),
            row("ghost", Some(5), "node_stale"),
        ];
        assert!(matches!(
            store.commit_step_with(&step(1, &[][..]), &unknown, &[], &[]),
            Err(StoreError::NotFound { kind: "node", .. })
        ));
        assert_eq!(store.node("n1").unwrap().unwrap().stale_since_ms, None);
        assert_eq!(store.engine_revision().unwrap(), 1);
        store
            .commit_step_with(
                &step(1, &[][..]),
                &[row("n1", Some(5), "node_stale")],
                &[],
                &[],
            )
            .unwrap();
        assert_eq!(store.node("n1").unwrap().unwrap().stale_since_ms, Some(5));
        assert_eq!(store.counts().unwrap().nodes_stale, 1);
        let fresh = [row("n1", None, "node_fresh"), row("n1", None, "node_fresh")];
        store
            .commit_step_with(&step(2, &[][..]), &fresh, &[], &[])
            .unwrap();
        assert_eq!(store.node("n1").unwrap().unwrap().stale_since_ms, None);
        assert_eq!(store.counts().unwrap().nodes_stale, 0);
        let kinds: Vec<String> = store
            .changelog(&ChangelogQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            ["node_stale", "node_fresh"],
            "a repeated fresh records nothing"
        );
    }

    #[test]
    fn a_removal_is_pending_until_the_node_reports_it_done_and_is_recorded_once() {
        let (_dir, db) = temp_db("removal");
        let store = Store::open(&db).unwrap();
        let labels: failsmall_core::domain::Labels = [("pop".to_owned(), "fra".to_owned())].into();
        let registered = [("n1", &labels)];
        let step = |expected_revision, nodes| EngineStep {
            expected_revision,
            now_ms: 0,
            events: "[]",
            changes: &[],
            nodes,
            version: None,
        };
        store.commit_step(&step(0, &registered[..])).unwrap();
        let applied = [AppliedRow {
            node: "n1".into(),
            unit: "u".into(),
            version: "aa".into(),
            at_ms: 3,
        }];
        let removal = [RemovalRow {
            node: "n1".into(),
            unit: "u".into(),
            at_ms: 4,
        }];
        store
            .commit_step_with(&step(1, &[][..]), &[], &applied, &removal)
            .unwrap();
        store
            .commit_step_with(&step(2, &[][..]), &[], &[], &removal)
            .unwrap();
        assert_eq!(store.removals_of("n1").unwrap(), ["u"]);
        assert!(store.removals_of("n2").unwrap().is_empty());
        let done = NodeRow {
            node: "n1".into(),
            effect: NodeEffect::Removed { unit: "u".into() },
            change: ChangeRow {
                at_ms: 5,
                actor: "n1".into(),
                kind: "node_removed_unit".into(),
                unit: Some("u".into()),
                version: Some("aa".into()),
                reason: "r".into(),
                concerns: None,
                rollout: None,
                stage: None,
            },
        };
        let twice = [done.clone(), done];
        store
            .commit_step_with(&step(3, &[][..]), &twice, &[], &[])
            .unwrap();
        assert!(store.removals_of("n1").unwrap().is_empty());
        let node = store.nodes(10).unwrap().remove(0);
        assert!(node.versions.is_empty(), "{node:?}");
        let kinds: Vec<String> = store
            .changelog(&ChangelogQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["node_removed_unit"], "recorded once");
    }

    fn selector(key: &str, values: &[&str]) -> Selector {
        Selector {
            labels: [(
                key.to_owned(),
                values.iter().map(|v| (*v).to_owned()).collect(),
            )]
            .into(),
        }
    }

    fn wanted(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn concerns_admit_labels_a_selector_allows_and_a_node_has() {
        let eu = Concerns::of_selectors(vec![selector("region", &["eu-west-1", "eu-central-1"])])
            .unwrap();
        assert!(eu.admits(&wanted(&[("region", "eu-west-1")])));
        assert!(!eu.admits(&wanted(&[("region", "us-east-1")])));
        // A key the selector does not name: it selects nodes with any value of it.
        assert!(eu.admits(&wanted(&[("region", "eu-west-1"), ("cohort", "free")])));
        let node = Concerns::Node([("region".to_owned(), "eu-west-1".to_owned())].into());
        assert!(node.admits(&wanted(&[("region", "eu-west-1")])));
        assert!(!node.admits(&wanted(&[("region", "eu-west-1"), ("cohort", "free")])));
        // A stage that selects every node, or no stage, concerns the whole fleet.
        assert_eq!(
            Concerns::of_selectors(vec![selector("region", &["x"]), Selector::default()]),
            None
        );
        assert_eq!(Concerns::of_selectors(Vec::new()), None);
    }

    #[test]
    fn a_label_filtered_page_keeps_fleet_wide_entries_and_continues_by_cursor() {
        let (_dir, db) = temp_db("labels");
        let store = Store::open(&db).unwrap();
        let eu = Concerns::Selectors(vec![selector("region", &["eu-west-1"])]);
        let us = Concerns::Selectors(vec![selector("region", &["us-east-1"])]);
        for (reason, concerns) in [
            ("eu-1", Some(&eu)),
            ("us-1", Some(&us)),
            ("fleet", None),
            ("us-2", Some(&us)),
            ("eu-2", Some(&eu)),
        ] {
            let change = NewChange {
                reason,
                concerns,
                rollout: None,
                stage: None,
                ..change("stage_started")
            };
            store.record(&change).unwrap();
        }
        let reasons = |page: &ChangelogPage| -> Vec<String> {
            page.entries.iter().map(|e| e.reason.clone()).collect()
        };
        let query = ChangelogQuery {
            labels: wanted(&[("region", "eu-west-1")]),
            limit: 2,
            ..Default::default()
        };
        let first = store.changelog_page(&query).unwrap();
        assert_eq!(reasons(&first), ["eu-1", "fleet"]);
        assert_eq!(first.entries[0].concerns, Some(eu.clone()));
        let second = store
            .changelog_page(&ChangelogQuery {
                after_id: first.next_cursor,
                ..query.clone()
            })
            .unwrap();
        assert_eq!(reasons(&second), ["eu-2"]);
        assert_eq!(second.next_cursor, None);
        let newest = store
            .changelog_page(&ChangelogQuery {
                newest_first: true,
                limit: 10,
                ..query
            })
            .unwrap();
        assert_eq!(reasons(&newest), ["eu-2", "fleet", "eu-1"]);
    }
}
