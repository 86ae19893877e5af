//! The agent protocol: what a node should run (the signed desired-state document, a long
//! poll) and what its agent reports (ACK / NACK / health, and the reports that are not engine
//! events: staleness, removals done, transport faults, refused documents, repairs).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use failsmall_core::domain::{NodeId, rfc3339_from_ms};
use failsmall_core::engine::Event;
use failsmall_core::health::{HealthSample, LatencyHistogram};
use failsmall_core::limits::{DESIRED_DOCUMENT_MAX_BYTES, DESIRED_UNITS_MAX};
use failsmall_core::validate::UnitSpec;
use serde::Deserialize;
use serde_json::json;

use super::documents::{self, DocumentCache, Shape, Shared, UnitParts};
use super::{
    AppState, body_bytes, db, json_body, node_id, now_ms, path_param, query_param, step_error,
    text_field, unit_name, version_hash,
};
use crate::auth::Caller;
use crate::batcher::SubmitError;
use crate::error::ApiError;
use crate::rollouts::{Cause, MAX_WATCH_MS};
use crate::store::{ChangeRow, Concerns, NodeEffect, NodeRow};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DesiredQuery {
    /// Wait for a sequence number above this one.
    after: Option<u64>,
    /// How long to wait, in milliseconds (at most [`MAX_WATCH_MS`]).
    wait_ms: Option<u64>,
}

/// How long a desired-state document stays fresh by default, in milliseconds
/// (`ServerConfig::desired_ttl_ms`).
pub const DESIRED_TTL_MS: u64 = 5 * 60 * 1000;

/// Most desired-state answers built at once; the others wait their turn, in order. When a
/// change wakes every connected agent at once, the request that made the change (a push) and
/// the other requests are answered between them instead of behind the whole fan-out.
pub const DESIRED_BUILDS_AT_ONCE: usize = 4;
/// Longest time the view of the store that documents are built from is reused, in
/// milliseconds: a unit's spec edited (which changes no node's versions, so wakes nobody)
/// shows in documents within this.
pub const DESIRED_VIEW_MAX_AGE_MS: u64 = 1_000;
/// Most registered nodes and most pending removals the view reads.
const DESIRED_VIEW_ROWS_MAX: u32 = 1_000_000;

/// The in-memory view of desired state that long-poll answers are built from, so that a
/// fan-out to every node reads the store once rather than once per node.
///
/// What each node should run comes from the engine (in memory) as it answers; what the
/// engine does not hold (each unit's spec, the registered nodes, the pending removals) is
/// read from the store once per change that wakes agents (the engine's announced revision,
/// [`crate::rollouts::EngineHost::wait_past`]) and at most [`DESIRED_VIEW_MAX_AGE_MS`] old.
#[derive(Debug)]
pub(super) struct DesiredView {
    current: tokio::sync::Mutex<Option<std::sync::Arc<StoreView>>>,
    builds: tokio::sync::Semaphore,
    /// Moved on by [`DesiredView::invalidate`]: a view read before is read again.
    generation: std::sync::atomic::AtomicU64,
    /// Views read so far: the next one's [`StoreView::id`].
    reads: std::sync::atomic::AtomicU64,
    /// What documents of one shape share, encoded once per revision and view.
    documents: DocumentCache,
}

/// What the store says that documents need, read at once.
#[derive(Debug)]
struct StoreView {
    /// Tells this view from those read before and after it.
    id: u64,
    /// The engine's announced revision when read.
    announced: u64,
    /// The view's generation when read.
    generation: u64,
    read_at: std::time::Instant,
    /// Every unit's name, in the store's order.
    names: Vec<failsmall_core::domain::UnitName>,
    specs: std::collections::HashMap<String, UnitSpec>,
    nodes: std::collections::HashSet<String>,
    removals: std::collections::HashMap<String, Vec<String>>,
}

impl DesiredView {
    pub(super) fn new() -> Self {
        Self {
            current: tokio::sync::Mutex::new(None),
            builds: tokio::sync::Semaphore::new(DESIRED_BUILDS_AT_ONCE),
            generation: std::sync::atomic::AtomicU64::new(0),
            reads: std::sync::atomic::AtomicU64::new(0),
            documents: DocumentCache::default(),
        }
    }

    /// The store changed what documents say without a change that wakes agents (a removal
    /// done, a node deleted): the next answer reads the store again.
    pub(super) fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The view read after revision `announced` was announced (any, when `None`), read now if
    /// the one kept is older or past its age; one request reads it, those at the same time
    /// wait for it.
    async fn get(
        &self,
        state: &AppState,
        announced: Option<u64>,
    ) -> Result<std::sync::Arc<StoreView>, ApiError> {
        let mut current = self.current.lock().await;
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        if let Some(view) = current.as_ref() {
            let fresh = view.generation == generation
                && view.read_at.elapsed()
                    < std::time::Duration::from_millis(DESIRED_VIEW_MAX_AGE_MS);
            if fresh && announced.is_none_or(|announced| view.announced >= announced) {
                return Ok(std::sync::Arc::clone(view));
            }
        }
        // The announced revision before the store is read: a change announced meanwhile
        // makes the next answer read again.
        let announced = state
            .shared
            .engine
            .wait_past(u64::MAX, std::time::Duration::ZERO)
            .await;
        let id = self.reads.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let view = db(state, move |store| {
            let units = store.all_units()?;
            let (nodes, removals) = store.desired_view_rows(DESIRED_VIEW_ROWS_MAX)?;
            let specs = units
                .iter()
                .map(|u| (u.name.clone(), u.spec.clone()))
                .collect();
            let names = crate::rollouts::unit_names(units.into_iter().map(|u| u.name));
            Ok(StoreView {
                id,
                announced,
                generation,
                read_at: std::time::Instant::now(),
                names,
                specs,
                nodes,
                removals,
            })
        })
        .await?;
        let view = std::sync::Arc::new(view);
        *current = Some(std::sync::Arc::clone(&view));
        Ok(view)
    }
}

/// Most bytes of bundles kept in memory for `GET /v1/blobs/{sha256}` (see [`BlobCache`]).
pub const BLOB_CACHE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Bundles by hash, kept in memory once read: when a change reaches every node, each node
/// fetches the same bundle, and all of them share one copy instead of one read of the store
/// (and one buffer) each. A bundle never changes under its hash; the cache starts over when
/// full.
#[derive(Debug, Default)]
pub(super) struct BlobCache {
    kept: std::sync::Mutex<KeptBlobs>,
    /// One read of the store at a time: the requests that miss together wait for the first.
    loading: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct KeptBlobs {
    bytes: usize,
    by_hash: std::collections::HashMap<String, Bytes>,
}

impl BlobCache {
    fn kept(&self, hash: &str) -> Option<Bytes> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_hash
            .get(hash)
            .cloned()
    }

    /// The bundle whose sha256 is `hash` (hex, checked by the caller), from memory or read.
    pub(super) async fn get(&self, state: &AppState, hash: &str) -> Result<Bytes, ApiError> {
        if let Some(content) = self.kept(hash) {
            return Ok(content);
        }
        let _loading = self.loading.lock().await;
        if let Some(content) = self.kept(hash) {
            return Ok(content);
        }
        let lookup = hash.to_owned();
        let content = Bytes::from(db(state, move |store| Ok(store.blob(&lookup)?)).await?);
        if content.len() <= BLOB_CACHE_MAX_BYTES {
            let mut kept = self
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if kept.bytes.saturating_add(content.len()) > BLOB_CACHE_MAX_BYTES {
                *kept = KeptBlobs::default();
            }
            kept.bytes = kept.bytes.saturating_add(content.len());
            kept.by_hash.insert(hash.to_owned(), content.clone());
        }
        Ok(content)
    }
}

pub(super) async fn desired(
    State(state): State<AppState>,
    node: Result<Path<String>, PathRejection>,
    query: Result<Query<DesiredQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let id = node_id(&path_param(node)?)?;
    state.node_seen(&id);
    let query = query_param(query)?;
    let wait_ms = query.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WATCH_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms is {wait_ms}; the limit is {MAX_WATCH_MS}"
        )));
    }
    // What runs before and after the wait is boxed while it runs: the future that stays
    // parked for the wait holds only the wait (ARCHITECTURE.md, "Memory per connection").
    Box::pin(registered(&state, &id)).await?;
    let mut announced = None;
    if let Some(after) = query.after {
        // A connected agent gets a fresh document before its last one expires: a long poll
        // ends after half the documents' lifetime at the latest.
        let wait_ms = wait_ms.min(state.shared.desired_ttl_ms / 2);
        announced = Some(
            state
                .shared
                .engine
                .wait_past(after, std::time::Duration::from_millis(wait_ms))
                .await,
        );
    }
    Box::pin(answer_desired(state, id, announced)).await
}

/// Fails with 404 unless `id` is a registered node.
async fn registered(state: &AppState, id: &NodeId) -> Result<(), ApiError> {
    if !state
        .shared
        .desired_view
        .get(state, None)
        .await?
        .nodes
        .contains(id.as_str())
    {
        // Registered since the view was read, or not at all: the store says.
        let lookup = id.clone();
        db(state, move |store| {
            store
                .node(lookup.as_str())?
                .ok_or_else(|| ApiError::not_found(format!("node {lookup} is not registered")))?;
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// The signed desired-state document of node `id`, as of revision `announced` at least.
async fn answer_desired(
    state: AppState,
    id: NodeId,
    announced: Option<u64>,
) -> Result<axum::response::Response, ApiError> {
    let view = &state.shared.desired_view;
    // Answers are built a few at a time (see `DESIRED_BUILDS_AT_ONCE`).
    let _turn = view
        .builds
        .acquire()
        .await
        .map_err(|e| ApiError::internal(format!("desired-state turns closed: {e}")))?;
    // The store's view read after the wait: a unit created while the agent waited must be in
    // the document that the wait produced, or the agent would not hear of it until the next
    // change.
    let view_now = view.get(&state, announced).await?;
    let documents = &view.documents;
    let pending_removals = view_now
        .removals
        .get(id.as_str())
        .map_or(&[][..], Vec::as_slice);
    let (seq, shape, found) = state
        .shared
        .engine
        .read(|engine, revision| {
            let shape = Shape::of(engine, &id, &view_now.names, pending_removals);
            let found = match documents.get(revision, view_now.id, &shape) {
                Some(shared) => Ok(shared),
                None => Err(UnitParts::read(engine, &shape)),
            };
            (revision, shape, found)
        })
        .await;
    // Encoding (when no node of this shape was answered at this revision yet) and signing run
    // off the async workers.
    let building = state.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let state = building;
        let signer = &state.shared.signer;
        let shared = match found {
            Ok(shared) => shared,
            Err(parts) => {
                let shared = std::sync::Arc::new(Shared::encode(
                    seq,
                    &shape,
                    parts,
                    &view_now.specs,
                    signer,
                )?);
                state.shared.desired_view.documents.keep(
                    seq,
                    view_now.id,
                    shape,
                    std::sync::Arc::clone(&shared),
                );
                shared
            }
        };
        let expires_ms = now_ms().saturating_add(state.shared.desired_ttl_ms);
        documents::answer(&shared, seq, id.as_str(), expires_ms, signer)
    })
    .await
    .map_err(|e| ApiError::internal(format!("desired-state build failed: {e}")))??;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        answer,
    )
        .into_response())
}

use failsmall_wire::reports::{Report as ReportRequest, ReportBatch};

/// Whether the report is an engine event (about a version's health on the node) rather
/// than a note about the node itself.
fn is_engine_event(report: &ReportRequest) -> bool {
    matches!(
        report,
        ReportRequest::Applied { .. }
            | ReportRequest::Rejected { .. }
            | ReportRequest::Crashed { .. }
            | ReportRequest::HealthCheckFailed { .. }
            | ReportRequest::Health { .. }
    )
}

/// How far in the future of the server's clock a stale report's `since_ms` may be, for the
/// skew between the agent's clock and the server's: a minute (expiry is judged by the
/// agent's clock against a time the server set).
pub const STALE_CLOCK_SKEW_MS: u64 = 60_000;
/// Longest staleness a fresh report may carry: a year.
pub const MAX_STALE_MS: u64 = failsmall_wire::reports::STALE_MAX_MS;

/// Most reports in one batch.
pub const MAX_REPORTS_PER_BATCH: usize = failsmall_wire::reports::REPORTS_PER_BATCH_MAX;

/// The engine event (and changelog row, for hard signals) of one report from `node`.
/// Marks the changes of a node's reports as concerning that node (its stored labels), for the
/// changelog's label filter; reports that record no change read nothing.
async fn concerning_node(
    state: &AppState,
    node: &NodeId,
    mut events: Vec<(Event, Option<ChangeRow>)>,
) -> Result<Vec<(Event, Option<ChangeRow>)>, ApiError> {
    if events.iter().all(|(_, change)| change.is_none()) {
        return Ok(events);
    }
    let lookup = node.clone();
    let known = db(state, move |store| Ok(store.node(lookup.as_str())?)).await?;
    if let Some(known) = known {
        let concerns = Concerns::Node(known.labels);
        for change in events.iter_mut().filter_map(|(_, change)| change.as_mut()) {
            change.concerns = Some(concerns.clone());
        }
    }
    // A hard signal belongs to the rollout judging what the node runs, and its stage, so
    // `log --rollout` tells the NACKs and crashes that rolled a version back.
    let trials: Vec<Option<(u64, String)>> = state
        .shared
        .engine
        .read(|engine, _| {
            events
                .iter()
                .map(|(event, change)| {
                    let (Some(_), Some(unit)) = (change, event_unit(event)) else {
                        return None;
                    };
                    let rollout = engine.trial(node, unit)?;
                    let stage = engine
                        .rollout(rollout)
                        .map(|view| view.stage_name)
                        .unwrap_or_default();
                    Some((rollout.0, stage))
                })
                .collect()
        })
        .await;
    for ((_, change), trial) in events.iter_mut().zip(trials) {
        if let (Some(change), Some((rollout, stage))) = (change.as_mut(), trial) {
            change.rollout = Some(rollout);
            change.stage = (!stage.is_empty()).then_some(stage);
        }
    }
    Ok(events)
}

/// The unit a hard-signal event is about.
fn event_unit(event: &Event) -> Option<&failsmall_core::domain::UnitName> {
    match event {
        Event::Rejected { unit, .. }
        | Event::Crashed { unit, .. }
        | Event::HealthCheckFailed { unit, .. } => Some(unit),
        _ => None,
    }
}

fn report_event(
    node: &NodeId,
    caller: &Caller,
    at_ms: u64,
    request: ReportRequest,
) -> Result<(Event, Option<ChangeRow>), ApiError> {
    let (unit, version, reason) = match &request {
        ReportRequest::Applied { unit, version } | ReportRequest::Health { unit, version, .. } => {
            (unit, version, None)
        }
        ReportRequest::Rejected {
            unit,
            version,
            reason,
        }
        | ReportRequest::Crashed {
            unit,
            version,
            reason,
        }
        | ReportRequest::HealthCheckFailed {
            unit,
            version,
            reason,
        } => (unit, version, Some(reason.clone())),
        ReportRequest::Stale { .. }
        | ReportRequest::Fresh { .. }
        | ReportRequest::Removed { .. }
        | ReportRequest::FetchFailed { .. }
        | ReportRequest::Untrusted { .. }
        | ReportRequest::Repaired { .. } => {
            return Err(ApiError::bad_request(
                "kind: this report is a note about the node, not an engine event",
            ));
        }
    };
    let unit = unit_name(unit)?;
    let version = version_hash(version)?;
    if let Some(reason) = &reason {
        text_field("reason", reason)?;
    }
    let (node_, unit_) = (node.clone(), unit.clone());
    let (event, kind) = match request {
        ReportRequest::Applied { .. } => (
            Event::Applied {
                node: node_,
                unit: unit_,
                version,
            },
            None,
        ),
        ReportRequest::Health { sample, .. } => (
            Event::Health {
                node: node_,
                unit: unit_,
                version,
                sample: HealthSample {
                    requests: sample.requests,
                    errors: sample.errors,
                    latency: LatencyHistogram {
                        counts: sample.latency.counts,
                    },
                },
            },
            None,
        ),
        ReportRequest::Rejected { reason, .. } => (
            Event::Rejected {
                node: node_,
                unit: unit_,
                version,
                reason,
            },
            Some("node_rejected"),
        ),
        ReportRequest::Crashed { reason, .. } => (
            Event::Crashed {
                node: node_,
                unit: unit_,
                version,
                reason,
            },
            Some("node_crashed"),
        ),
        ReportRequest::HealthCheckFailed { reason, .. } => (
            Event::HealthCheckFailed {
                node: node_,
                unit: unit_,
                version,
                reason,
            },
            Some("node_health_check_failed"),
        ),
        ReportRequest::Stale { .. }
        | ReportRequest::Fresh { .. }
        | ReportRequest::Removed { .. }
        | ReportRequest::FetchFailed { .. }
        | ReportRequest::Untrusted { .. }
        | ReportRequest::Repaired { .. } => {
            return Err(ApiError::bad_request(
                "kind: this report is a note about the node, not an engine event",
            ));
        }
    };
    let change = kind.map(|kind| ChangeRow {
        at_ms,
        actor: caller.name.clone(),
        kind: kind.to_owned(),
        unit: Some(unit.to_string()),
        version: Some(version.to_string()),
        reason: format!("node {node}: {}", reason.unwrap_or_default()),
        concerns: None,
        rollout: None,
        stage: None,
    });
    Ok((event, change))
}

/// A report field out of its bounds: 422 naming the field.
fn bad_report_field(field: &'static str, message: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_report",
        format!("{field}: {message}"),
    )
    .with_detail(json!({ "field": field }))
}

/// The node row and changelog entry of a stale report received at `at_ms`.
fn stale_row(node: &NodeId, at_ms: u64, since_ms: u64, seq: u64) -> Result<NodeRow, ApiError> {
    let latest_ms = at_ms.saturating_add(STALE_CLOCK_SKEW_MS);
    if since_ms > latest_ms {
        return Err(bad_report_field(
            "since_ms",
            format!(
                "{since_ms} is more than {STALE_CLOCK_SKEW_MS} ms after the server's clock ({at_ms}); a node cannot be stale since a time to come"
            ),
        ));
    }
    Ok(NodeRow {
        node: node.to_string(),
        effect: NodeEffect::Staleness(Some(since_ms)),
        change: ChangeRow {
            at_ms,
            actor: node.to_string(),
            kind: "node_stale".to_owned(),
            unit: None,
            version: None,
            reason: format!(
                "node {node} serves stale configuration since {} (desired-state seq {seq} expired)",
                rfc3339_from_ms(since_ms)
            ),
            concerns: None,
            rollout: None,
            stage: None,
        },
    })
}

/// The node row and changelog entry of a fresh report received at `at_ms`.
fn fresh_row(node: &NodeId, at_ms: u64, stale_ms: u64) -> Result<NodeRow, ApiError> {
    if stale_ms > MAX_STALE_MS {
        return Err(bad_report_field(
            "stale_ms",
            format!("{stale_ms} is above the limit of {MAX_STALE_MS} (a year)"),
        ));
    }
    let shown_ms = stale_ms.saturating_sub(stale_ms % 1000);
    Ok(NodeRow {
        node: node.to_string(),
        effect: NodeEffect::Staleness(None),
        change: ChangeRow {
            at_ms,
            actor: node.to_string(),
            kind: "node_fresh".to_owned(),
            unit: None,
            version: None,
            reason: format!(
                "node {node} fresh again after {} stale",
                failsmall_core::duration::format_ms(shown_ms)
            ),
            concerns: None,
            rollout: None,
            stage: None,
        },
    })
}

/// The node row and changelog entry of a report that is a note about the node: a removal
/// done, a transport fault, a refused document, a repaired file.
fn note_row(node: &NodeId, at_ms: u64, request: ReportRequest) -> Result<NodeRow, ApiError> {
    let change =
        |kind: &str, unit: Option<String>, version: Option<String>, reason: String| ChangeRow {
            at_ms,
            actor: node.to_string(),
            kind: kind.to_owned(),
            unit,
            version,
            reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
    let (effect, change) = match request {
        ReportRequest::Removed { unit, version } => {
            let unit = unit_name(&unit)?.to_string();
            let version = version.as_deref().map(version_hash).transpose()?;
            let what = version.map_or_else(
                || "had nothing active".to_owned(),
                |v| format!("removed version {}", v.short()),
            );
            (
                NodeEffect::Removed { unit: unit.clone() },
                change(
                    "node_removed_unit",
                    Some(unit.clone()),
                    version.map(|v| v.to_string()),
                    format!(
                        "node {node}: unit {unit} left the node's desired state; the node {what}"
                    ),
                ),
            )
        }
        ReportRequest::FetchFailed {
            unit,
            version,
            reason,
        } => {
            let (unit, version) = (unit_name(&unit)?, version_hash(&version)?);
            text_field("reason", &reason)?;
            (
                NodeEffect::Note,
                change(
                    "node_fetch_failed",
                    Some(unit.to_string()),
                    Some(version.to_string()),
                    format!(
                        "node {node}: could not fetch {unit} {} intact (retrying): {reason}",
                        version.short()
                    ),
                ),
            )
        }
        ReportRequest::Untrusted { seq, reason } => {
            text_field("reason", &reason)?;
            (
                NodeEffect::Note,
                change(
                    "node_untrusted",
                    None,
                    None,
                    format!("node {node}: refused desired-state document seq {seq}: {reason}"),
                ),
            )
        }
        ReportRequest::Repaired {
            unit,
            version,
            reason,
        } => {
            let (unit, version) = (unit_name(&unit)?, version_hash(&version)?);
            text_field("reason", &reason)?;
            (
                NodeEffect::Note,
                change(
                    "node_repaired",
                    Some(unit.to_string()),
                    Some(version.to_string()),
                    format!("node {node}: {unit} {}: {reason}", version.short()),
                ),
            )
        }
        _ => {
            return Err(ApiError::bad_request(
                "kind: this report is an engine event, not a note about the node",
            ));
        }
    };
    Ok(NodeRow {
        node: node.to_string(),
        effect,
        change,
    })
}

/// What a report body's top level says about its shape: whether it has a `reports` field (a
/// batch), whatever that field holds (the batch's own parse says what is wrong with it).
#[derive(Deserialize)]
struct ReportShape {
    #[serde(default, deserialize_with = "present")]
    reports: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(field).map(|_| true)
}

/// One report, or a batch `{"reports": [...]}` (at most [`MAX_REPORTS_PER_BATCH`]) applied
/// in order as one engine step: all of it is accepted, or none. Staleness reports are not
/// engine events: their node rows and changelog entries commit in the transaction of the
/// step of the batch's other reports.
pub(super) async fn report(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    node: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::nodes::ReportAnswer>, ApiError> {
    let node = node_id(&path_param(node)?)?;
    state.node_seen(&node);
    let body = body_bytes(body)?;
    // The shape first (a batch has `reports`), read without building a tree; then the reports
    // straight from the bytes.
    let is_batch = json_body::<ReportShape>(Ok(body.clone()))?.reports;
    let requests = if is_batch {
        let batch: ReportBatch = json_body(Ok(body))?;
        if batch.reports.is_empty() || batch.reports.len() > MAX_REPORTS_PER_BATCH {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!(
                    "a batch holds {} reports; expected 1 to {MAX_REPORTS_PER_BATCH}",
                    batch.reports.len()
                ),
            ));
        }
        batch.reports
    } else {
        vec![json_body::<ReportRequest>(Ok(body))?]
    };
    let at_ms = now_ms();
    let count = requests.len();
    let mut events = Vec::new();
    let mut staleness = Vec::new();
    for (index, request) in requests.into_iter().enumerate() {
        let in_batch = |mut error: ApiError| {
            if is_batch {
                error.message = format!("reports[{index}]: {}", error.message);
            }
            error
        };
        match request {
            ReportRequest::Stale { since_ms, seq } => {
                staleness.push(stale_row(&node, at_ms, since_ms, seq).map_err(in_batch)?);
            }
            ReportRequest::Fresh { stale_ms } => {
                staleness.push(fresh_row(&node, at_ms, stale_ms).map_err(in_batch)?);
            }
            engine if is_engine_event(&engine) => {
                events.push(report_event(&node, &caller, at_ms, engine).map_err(in_batch)?);
            }
            note => staleness.push(note_row(&node, at_ms, note).map_err(in_batch)?),
        }
    }
    let events = concerning_node(&state, &node, events).await?;
    // What the SLOs count: each health sample, once accepted (below).
    let slo_samples: Vec<(failsmall_core::domain::UnitName, u64, u64)> = events
        .iter()
        .filter_map(|(event, _)| match event {
            Event::Health { unit, sample, .. } if state.shared.slos.covers_unit(unit) => {
                Some((unit.clone(), sample.requests, sample.errors))
            }
            _ => None,
        })
        .collect();
    let removal_done = staleness
        .iter()
        .any(|row| matches!(row.effect, NodeEffect::Removed { .. }));
    let cause = if staleness.is_empty() {
        Cause::Nothing
    } else {
        let lookup = node.clone();
        let known = db(&state, move |store| Ok(store.node(lookup.as_str())?))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("node {node} is not registered")))?;
        for row in &mut staleness {
            row.change.concerns = Some(Concerns::Node(known.labels.clone()));
        }
        Cause::NodeReports(staleness)
    };
    // Applied with the reports other requests bring meanwhile, in one step; answered after
    // that step is committed.
    let actions =
        state
            .shared
            .reports
            .submit(events, cause)
            .await
            .map_err(|error| match error {
                SubmitError::Step(error) => step_error(error),
                busy @ (SubmitError::Busy | SubmitError::Closed) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    busy.to_string(),
                ),
            })?;
    if removal_done {
        // The node's next document must no longer ask for the removal.
        state.shared.desired_view.invalidate();
    }
    super::slos::count_health(&state, &node, slo_samples, at_ms).await;
    let accepted = if is_batch {
        failsmall_wire::nodes::Accepted::Batch(u64::try_from(count).unwrap_or(u64::MAX))
    } else {
        failsmall_wire::nodes::Accepted::One(true)
    };
    Ok(axum::Json(failsmall_wire::nodes::ReportAnswer {
        accepted,
        actions: u64::try_from(actions).unwrap_or(u64::MAX),
    }))
}

/// Room a document takes besides its units (braces, keys, node id, numbers), in bytes, at most.
const DOCUMENT_BASE_BYTES: usize = 1024;
/// Room a plan's health check takes in a document, in bytes: its path (at most 256 bytes, as
/// plan files allow; twice that for JSON escapes) and its status and timeout.
const HEALTH_CHECK_BYTES: usize = 2 * 256 + 64;

/// Bytes one unit adds to a desired-state document at most: its name under each key
/// (`units`, `specs`, `trial`, `stable`, `health_checks`, `removed`), its version's hash twice,
/// a rollout id, a health check, and its spec as JSON.
pub(super) fn unit_entry_bytes(name: &str, spec: &UnitSpec) -> Result<usize, ApiError> {
    let spec_bytes = serde_json::to_vec(spec)
        .map_err(|e| ApiError::internal(format!("spec of unit {name} does not serialize: {e}")))?
        .len();
    Ok(name
        .len()
        .saturating_add(8)
        .saturating_mul(6)
        .saturating_add(2 * 64 + 24)
        .saturating_add(HEALTH_CHECK_BYTES)
        .saturating_add(spec_bytes))
}

/// Refuses up front (422 `desired_state_limit`, naming the limit) a unit create, edit or push
/// that could make some node's desired-state document larger than an agent accepts. A node
/// registered later is sent every unit's stable version, so any node's document may list every
/// unit: the bound counts every stored unit, with `unit` at `spec`.
pub(super) async fn check_desired_budget(
    state: &AppState,
    unit: &str,
    spec: &UnitSpec,
) -> Result<(), ApiError> {
    let own = unit_entry_bytes(unit, spec)?;
    let units = db(state, |store| Ok(store.all_units()?)).await?;
    let mut bytes = DOCUMENT_BASE_BYTES.saturating_add(own);
    let mut count = 1usize;
    for other in units.iter().filter(|u| u.name != unit) {
        bytes = bytes.saturating_add(unit_entry_bytes(&other.name, &other.spec)?);
        count = count.saturating_add(1);
    }
    if bytes > DESIRED_DOCUMENT_MAX_BYTES || count > DESIRED_UNITS_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "desired_state_limit",
            format!(
                "refused: with unit {unit} ({own} bytes in a desired-state document, its spec \
                 included) a node's desired state could hold {count} units in {bytes} bytes; an \
                 agent accepts at most {DESIRED_UNITS_MAX} units and {DESIRED_DOCUMENT_MAX_BYTES} \
                 bytes (the desired-state document limit); make the spec smaller or delete units \
                 no node needs"
            ),
        )
        .with_detail(json!({
            "limit": "desired_state_document",
            "max_bytes": DESIRED_DOCUMENT_MAX_BYTES,
            "max_units": DESIRED_UNITS_MAX,
            "bytes": bytes,
            "units": count,
            "unit_bytes": own,
        })));
    }
    Ok(())
}
