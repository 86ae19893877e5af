//! The HTTP API under `/v1`, with `/healthz` and `/metrics`.
//!
//! API boundary: the request and response shapes here are the wire types; they convert into
//! domain types (`UnitName`, `VersionHash`, `UnitSpec`) with a 4xx error on failure. Every
//! route is listed, with its access class, in [`route_table`]; the router is built from that
//! one list, so a route cannot exist without a class.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::RequestExt as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{
    DefaultBodyLimit, Extension, MatchedPath, Path, Query, RawPathParams, Request, State,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use failsmall_codex::{Action as CodexAction, Finding};
use failsmall_core::domain::{Labels, NodeId, RolloutId, UnitName, VersionHash, rfc3339_from_ms};
use failsmall_core::engine::{Action, Command, EngineError, Event, RolloutStatus};
use failsmall_core::plan::Plan;
use failsmall_core::validate::{UnitSpec, validate};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::{Access, Caller, Role, new_token, token_sha256};
use crate::batcher::ReportBatcher;
use crate::codex::{CodexGate, Judgement};
use crate::error::ApiError;
use crate::liveness::{Liveness, NODE_DOWN_AFTER_MS_DEFAULT};
use crate::rollouts::{Cause, EngineHost, StepError};
use crate::signing::VersionSigner;
use crate::store::{
    ChangeRow, ChangelogQuery, Concerns, MAX_CHANGELOG_SCAN_ROWS, MAX_LIST_ROWS, NewChange,
    ROLLOUT_END_KINDS, Store, UnitFields, ValidatorChange, VersionRow,
};
use crate::validator::{Refusal, ValidatorCommand};

mod agent;
mod break_glass;
mod changelog;
mod elevations;
mod token_cache;
pub use elevations::{ELEVATION_APPROVALS_DEFAULT, ELEVATION_APPROVALS_MAX};
mod incidents;
mod nodes;
mod notify;
mod operator;
mod page;
mod rollouts;
mod slos;
mod status;
mod tokens;
mod trust;
mod units;
mod versions;
mod windows;

pub use changelog::MAX_LABEL_FILTERS;
use changelog::*;
use nodes::*;
use rollouts::*;
use tokens::*;
use units::*;
pub use versions::MAX_RUNNING_VALIDATORS;
use versions::*;

pub(crate) use operator::expire_forever;

pub use agent::{DESIRED_TTL_MS, MAX_REPORTS_PER_BATCH, MAX_STALE_MS, STALE_CLOCK_SKEW_MS};
use agent::{desired, report};

/// Longest free-text field (messages, descriptions, reasons), in bytes (the engine keeps as
/// much: one home, [`failsmall_core::limits::TEXT_MAX_BYTES`]).
pub const MAX_TEXT_BYTES: usize = failsmall_core::limits::TEXT_MAX_BYTES;
/// Most labels a node may carry, and the longest label key or value, in bytes.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_BYTES: usize = 256;
/// Versions larger than this are not diffed, in bytes.
pub const MAX_DIFF_BYTES: usize = 4 * 1024 * 1024;
/// Default and largest page of changelog entries.
pub const CHANGELOG_PAGE_DEFAULT: u32 = 100;

/// One route: its method, path (axum and OpenAPI syntax), access class and purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
}

fn spec(method: Method, path: &'static str, access: Access, summary: &'static str) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        summary,
    }
}

/// Every route with its handler. The only place routes are declared.
fn routes() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Access::*;
    vec![
        (
            spec(Method::GET, "/healthz", Public, "Liveness and store check"),
            get(healthz),
        ),
        (
            spec(
                Method::GET,
                "/",
                Public,
                "The web dashboard (HTML; it signs in with a token and reads this API)",
            ),
            get(crate::dashboard::page),
        ),
        (
            spec(
                Method::GET,
                "/dashboard.js",
                Public,
                "The web dashboard's script",
            ),
            get(crate::dashboard::script),
        ),
        (
            spec(Method::GET, "/metrics", Read, "Prometheus metrics"),
            get(metrics),
        ),
        (
            spec(
                Method::GET,
                "/v1/openapi.json",
                Public,
                "This API's OpenAPI document",
            ),
            get(openapi),
        ),
        (
            spec(
                Method::GET,
                "/v1/signing-key",
                Public,
                "The Ed25519 key versions are signed with",
            ),
            get(signing_key),
        ),
        (
            spec(
                Method::GET,
                "/v1/root",
                Public,
                "The signed root document naming the keys agents trust",
            ),
            get(trust::root),
        ),
        (
            spec(Method::GET, "/v1/units", Read, "List units"),
            get(list_units),
        ),
        (
            spec(Method::POST, "/v1/units", Deploy, "Create a unit"),
            post(create_unit),
        ),
        (
            spec(Method::GET, "/v1/units/{unit}", Read, "Show a unit"),
            get(show_unit),
        ),
        (
            spec(
                Method::PUT,
                "/v1/units/{unit}",
                Deploy,
                "Update a unit at the revision read",
            ),
            put(update_unit),
        ),
        (
            spec(
                Method::GET,
                "/v1/units/{unit}/versions",
                Read,
                "List a unit's versions, newest first",
            ),
            get(operator::list_versions),
        ),
        (
            spec(
                Method::POST,
                "/v1/units/{unit}/versions",
                Deploy,
                "Push bytes as a new version (and start its rollout when the unit has a plan)",
            ),
            post(push_version),
        ),
        (
            spec(
                Method::GET,
                "/v1/units/{unit}/versions/{hash}",
                Read,
                "Show a version",
            ),
            get(show_version),
        ),
        (
            spec(
                Method::GET,
                "/v1/units/{unit}/diff",
                Read,
                "Unified diff between two versions",
            ),
            get(diff_versions),
        ),
        (
            spec(
                Method::GET,
                "/v1/blobs/{sha256}",
                Fetch,
                "A version's bytes by SHA-256 (immutable)",
            ),
            get(blob),
        ),
        (
            spec(
                Method::GET,
                "/v1/nodes",
                Read,
                "List nodes with when they were last seen",
            ),
            get(list_nodes),
        ),
        (
            spec(
                Method::PUT,
                "/v1/nodes/{node}",
                AgentReport,
                "Register a node with its labels",
            ),
            put(register_node),
        ),
        (
            spec(
                Method::POST,
                "/v1/nodes/{node}/heartbeat",
                AgentReport,
                "A node is alive",
            ),
            post(heartbeat),
        ),
        (
            spec(
                Method::GET,
                "/v1/nodes/{node}/desired",
                Fetch,
                "What the node should run, signed; may wait for a newer one",
            ),
            get(desired),
        ),
        (
            spec(
                Method::POST,
                "/v1/nodes/{node}/reports",
                AgentReport,
                "ACK, NACK, crash, failed health check or health of a version, or the node's staleness (stale / fresh again); one, or a batch {\"reports\": [...]} applied whole",
            ),
            post(report),
        ),
        (
            spec(
                Method::POST,
                "/v1/nodes/{node}/break-glass",
                AgentReport,
                "A break-glass order used on the node, reported once the control plane is back (a changelog entry)",
            ),
            post(break_glass::break_glass),
        ),
        (
            spec(
                Method::GET,
                "/v1/rollouts",
                Read,
                "List rollouts, newest first",
            ),
            get(list_rollouts),
        ),
        (
            spec(
                Method::POST,
                "/v1/rollouts",
                Deploy,
                "Start (or queue) a rollout of a version through a plan",
            ),
            post(create_rollout),
        ),
        (
            spec(Method::GET, "/v1/rollouts/{id}", Read, "Show a rollout"),
            get(show_rollout),
        ),
        (
            spec(
                Method::POST,
                "/v1/rollouts/{id}/commands",
                Deploy,
                "Pause, resume, promote, abort or roll back",
            ),
            post(command_rollout),
        ),
        (
            spec(
                Method::POST,
                "/v1/rollouts/{id}/approve",
                Approve,
                "Approve the current stage",
            ),
            post(approve_rollout),
        ),
        (
            spec(
                Method::GET,
                "/v1/changelog",
                Read,
                "Changelog entries, oldest first, by cursor",
            ),
            get(changelog),
        ),
        (
            spec(
                Method::GET,
                "/v1/changelog.atom",
                Read,
                "The changelog as an Atom feed",
            ),
            get(changelog_feed),
        ),
        (
            spec(
                Method::DELETE,
                "/v1/units/{unit}",
                Admin,
                "Delete a unit and its versions (refused while a rollout of it is open); nodes remove it",
            ),
            delete(operator::delete_unit),
        ),
        (
            spec(
                Method::DELETE,
                "/v1/nodes/{node}",
                Admin,
                "Remove a node from the fleet",
            ),
            delete(operator::delete_node),
        ),
        (
            spec(
                Method::POST,
                "/v1/rollouts/{id}/retry",
                Deploy,
                "Roll out a rolled back or aborted rollout's version again through its plan",
            ),
            post(operator::retry_rollout),
        ),
        (
            spec(
                Method::GET,
                "/v1/quarantine",
                Read,
                "Every quarantined version",
            ),
            get(operator::list_quarantine),
        ),
        (
            spec(
                Method::POST,
                "/v1/units/{unit}/quarantine/{hash}/lift",
                Admin,
                "Lift a version's quarantine, with a reason",
            ),
            post(operator::lift_quarantine),
        ),
        (
            spec(
                Method::GET,
                "/v1/whoami",
                Fetch,
                "The caller's token name, role and node",
            ),
            get(operator::whoami),
        ),
        (
            spec(
                Method::GET,
                "/v1/status",
                Read,
                "The server, its store, and counts",
            ),
            get(operator::status),
        ),
        (
            spec(Method::GET, "/v1/tokens", Admin, "List access tokens"),
            get(list_tokens),
        ),
        (
            spec(Method::POST, "/v1/tokens", Admin, "Create an access token"),
            post(create_token),
        ),
        (
            spec(
                Method::DELETE,
                "/v1/tokens/{id}",
                Admin,
                "Revoke an access token",
            ),
            delete(revoke_token),
        ),
        (
            spec(
                Method::POST,
                "/v1/tokens/{id}/rotate",
                Admin,
                "Rotate an access token: a new secret, the old one revoked",
            ),
            post(trust::rotate_token),
        ),
        (
            spec(
                Method::GET,
                "/v1/changelog/verify",
                Admin,
                "Verify the changelog's hash chain: the first broken row, and the head",
            ),
            get(trust::verify_changelog),
        ),
        (
            spec(
                Method::GET,
                "/v1/freezes",
                Read,
                "Freezes kept, with whether each holds now",
            ),
            get(windows::list_freezes),
        ),
        (
            spec(
                Method::POST,
                "/v1/freezes",
                Admin,
                "Freeze rollouts (global, a unit, or a label selector; once or weekly) with a reason",
            ),
            post(windows::create_freeze),
        ),
        (
            spec(
                Method::POST,
                "/v1/freezes/now",
                Admin,
                "Stop the line: a global freeze from now until lifted, with a reason",
            ),
            post(windows::freeze_now),
        ),
        (
            spec(
                Method::POST,
                "/v1/freezes/{id}/lift",
                Admin,
                "Lift a freeze",
            ),
            post(windows::lift_freeze),
        ),
        (
            spec(
                Method::GET,
                "/v1/maintenance",
                Read,
                "Maintenance windows kept, with whether each holds now",
            ),
            get(windows::list_maintenance),
        ),
        (
            spec(
                Method::POST,
                "/v1/maintenance",
                Admin,
                "Take nodes (a label selector) out of canaries and baselines from..until",
            ),
            post(windows::create_maintenance),
        ),
        (
            spec(
                Method::POST,
                "/v1/maintenance/{id}/end",
                Admin,
                "End a maintenance window early",
            ),
            post(windows::end_maintenance),
        ),
        (
            spec(
                Method::GET,
                "/v1/webhooks",
                Admin,
                "Webhook subscriptions (no secrets)",
            ),
            get(notify::list_webhooks),
        ),
        (
            spec(
                Method::POST,
                "/v1/webhooks",
                Admin,
                "Subscribe a webhook (slack, pagerduty, generic) to events",
            ),
            post(notify::create_webhook),
        ),
        (
            spec(
                Method::DELETE,
                "/v1/webhooks/{id}",
                Admin,
                "Remove a webhook and its undelivered notifications",
            ),
            delete(notify::delete_webhook),
        ),
        (
            spec(
                Method::GET,
                "/v1/notify/dead-letters",
                Read,
                "Notifications that ran out of attempts, and the outbox's counts",
            ),
            get(notify::dead_letters),
        ),
        (
            spec(
                Method::POST,
                "/v1/notify/dead-letters/{id}/retry",
                Admin,
                "Put a dead letter back in the outbox",
            ),
            post(notify::retry_dead_letter),
        ),
        (
            spec(
                Method::GET,
                "/v1/slos",
                Read,
                "List SLOs with their error budget and burn rates",
            ),
            get(slos::list_slos),
        ),
        (
            spec(Method::POST, "/v1/slos", Admin, "Create an SLO"),
            post(slos::create_slo),
        ),
        (
            spec(
                Method::GET,
                "/v1/slos/{name}",
                Read,
                "Show an SLO: events over its window, error budget left, burn rates, alerts",
            ),
            get(slos::show_slo),
        ),
        (
            spec(Method::DELETE, "/v1/slos/{name}", Admin, "Delete an SLO"),
            delete(slos::delete_slo),
        ),
        (
            spec(
                Method::GET,
                "/v1/incidents",
                Read,
                "Open incidents and those resolved in the last `days` (14)",
            ),
            get(incidents::list_incidents),
        ),
        (
            spec(
                Method::POST,
                "/v1/incidents",
                Deploy,
                "Open an incident by hand: title, severity, components, first update",
            ),
            post(incidents::open_incident),
        ),
        (
            spec(
                Method::GET,
                "/v1/incidents/{id}",
                Read,
                "An incident, its public updates, and its timeline from the changelog",
            ),
            get(incidents::show_incident),
        ),
        (
            spec(
                Method::POST,
                "/v1/incidents/{id}/updates",
                Deploy,
                "Publish an incident update, optionally moving its status or severity",
            ),
            post(incidents::update_incident),
        ),
        (
            spec(
                Method::POST,
                "/v1/incidents/{id}/resolve",
                Deploy,
                "Resolve an incident with a last public update",
            ),
            post(incidents::resolve_incident),
        ),
        (
            spec(
                Method::PUT,
                "/v1/incidents/{id}/review",
                Deploy,
                "Attach (or replace) an incident's post-incident review (markdown)",
            ),
            put(incidents::review_incident),
        ),
        (
            spec(
                Method::GET,
                "/status",
                Public,
                "The public status page (HTML): components, incidents, public updates",
            ),
            get(status::page),
        ),
        (
            spec(
                Method::GET,
                "/status.json",
                Public,
                "The public status page as JSON",
            ),
            get(status::json),
        ),
        (
            spec(
                Method::GET,
                "/status/feed.atom",
                Public,
                "The public status page's incident updates as an Atom feed",
            ),
            get(status::feed),
        ),
        (
            spec(
                Method::GET,
                "/v1/break-glass/requests",
                Read,
                "Online break-glass requests, newest first, with their approvals and state",
            ),
            get(elevations::list),
        ),
        (
            spec(
                Method::POST,
                "/v1/break-glass/requests",
                Read,
                "Ask for a time-boxed elevated role (admin, deployer, approver), with a reason",
            ),
            post(elevations::request),
        ),
        (
            spec(
                Method::GET,
                "/v1/break-glass/requests/{id}",
                Read,
                "One online break-glass request",
            ),
            get(elevations::show),
        ),
        (
            spec(
                Method::POST,
                "/v1/break-glass/requests/{id}/approve",
                Approve,
                "Approve another person's break-glass request",
            ),
            post(elevations::approve),
        ),
        (
            spec(
                Method::POST,
                "/v1/break-glass/requests/{id}/claim",
                Read,
                "The requester takes the granted role, once: a token that expires on its own",
            ),
            post(elevations::claim),
        ),
    ]
}

/// Every route and its access class (for the OpenAPI document and the role-matrix test).
pub fn route_table() -> Vec<RouteSpec> {
    routes().into_iter().map(|(route, _)| route).collect()
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    responses_by_class: [AtomicU64; 5],
    versions_rejected: AtomicU64,
    validation_skipped: AtomicU64,
    /// Break-glass uses reported by agents (an alert: any rise is an emergency on some node).
    break_glass_reports: AtomicU64,
    denied: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    store: Arc<Store>,
    engine: Arc<EngineHost>,
    signer: VersionSigner,
    access: HashMap<(Method, &'static str), Access>,
    counters: Counters,
    /// Turns for validator commands (at most [`MAX_RUNNING_VALIDATORS`] at once).
    validators: tokio::sync::Semaphore,
    /// How long a desired-state document stays fresh, in milliseconds.
    desired_ttl_ms: u64,
    /// Agents' reports, grouped into engine steps (see [`crate::batcher`]).
    reports: ReportBatcher,
    /// When each node's agent was last heard from (see [`crate::liveness`]).
    liveness: Arc<Liveness>,
    /// A node not heard from for this long is down.
    node_down_after_ms: u64,
    /// Where validator commands' input files are written (the server's data dir: private to
    /// the server); `None`: the system's temporary directory.
    scratch_dir: Option<std::path::PathBuf>,
    /// The Codex that judges units, pushes and rollouts; `None`: off.
    codex: Option<Arc<CodexGate>>,
    /// SLOs and their event counts (see [`crate::slo`]).
    slos: Arc<crate::slo::SloBook>,
    /// Incidents' update cadence (shown as each open incident's next update due).
    cadence: crate::incidents::Cadence,
    /// Approvals an online break-glass request needs (see [`elevations`]).
    break_glass_approvals: usize,
    /// What long-poll answers are built from (see [`agent::DesiredView`]).
    desired_view: agent::DesiredView,
    /// Turns for requests' store tasks (at most [`STORE_TASKS_AT_ONCE`] at once).
    store_turns: tokio::sync::Semaphore,
    /// Bundles served by `GET /v1/blobs/{sha256}`, kept once read (see [`agent::BlobCache`]).
    blobs: agent::BlobCache,
    /// Token lookups kept for a moment (see [`token_cache`]).
    tokens: token_cache::TokenCache,
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

impl AppState {
    /// Desired-state documents stay fresh for `desired_ttl_ms` (at least 1 ms).
    pub fn new(
        store: Arc<Store>,
        engine: Arc<EngineHost>,
        signer: VersionSigner,
        desired_ttl_ms: u64,
    ) -> Self {
        let access = route_table()
            .into_iter()
            .map(|r| ((r.method, r.path), r.access))
            .collect();
        let reports = ReportBatcher::start(Arc::clone(&engine), Arc::clone(&store), now_ms);
        Self {
            shared: Arc::new(Shared {
                reports,
                store,
                engine,
                signer,
                access,
                counters: Counters::default(),
                validators: tokio::sync::Semaphore::new(MAX_RUNNING_VALIDATORS),
                desired_ttl_ms: desired_ttl_ms.max(1),
                liveness: Arc::new(Liveness::default()),
                node_down_after_ms: NODE_DOWN_AFTER_MS_DEFAULT,
                scratch_dir: None,
                codex: None,
                slos: Arc::new(crate::slo::SloBook::default()),
                cadence: crate::incidents::Cadence::default(),
                break_glass_approvals: elevations::ELEVATION_APPROVALS_DEFAULT,
                desired_view: agent::DesiredView::new(),
                store_turns: tokio::sync::Semaphore::new(STORE_TASKS_AT_ONCE),
                blobs: agent::BlobCache::default(),
                tokens: token_cache::TokenCache::default(),
            }),
        }
    }

    /// Validator commands' input files go in `dir` (the server's data dir). Call before serving.
    pub fn with_scratch_dir(mut self, dir: std::path::PathBuf) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.scratch_dir = Some(dir);
        }
        self
    }

    /// A node not heard from for `ms` (at least 1 s) is down. Call before serving.
    pub fn with_node_down_after_ms(mut self, ms: u64) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.node_down_after_ms = ms.max(1_000);
        }
        self
    }

    /// Units, pushes and rollouts are judged by `codex` (see [`crate::codex`]). Call before
    /// serving.
    pub fn with_codex(mut self, codex: Option<CodexGate>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.codex = codex.map(Arc::new);
        }
        self
    }

    /// SLOs (loaded from the store) counted from agents' reports. Call before serving.
    pub fn with_slos(mut self, slos: Arc<crate::slo::SloBook>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.slos = slos;
        }
        self
    }

    /// Incidents' update cadence. Call before serving.
    pub fn with_cadence(mut self, cadence: crate::incidents::Cadence) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.cadence = cadence;
        }
        self
    }

    fn cadence(&self) -> crate::incidents::Cadence {
        self.shared.cadence
    }

    /// An online break-glass request needs `approvals` other people (1 to 10). Call before
    /// serving.
    pub fn with_break_glass_approvals(mut self, approvals: usize) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.break_glass_approvals = approvals.clamp(1, elevations::ELEVATION_APPROVALS_MAX);
        }
        self
    }

    fn break_glass_approvals(&self) -> usize {
        self.shared.break_glass_approvals
    }

    /// Judges a request by the Codex: a deny (enforced) is the 422 to answer; otherwise the
    /// findings to record as warnings (none when the Codex is off).
    async fn judge(&self, judgement: Judgement) -> Result<Vec<Finding>, ApiError> {
        let Some(gate) = self.shared.codex.clone() else {
            return Ok(Vec::new());
        };
        db(self, move |store| {
            crate::codex::judge(&gate, store, judgement)
        })
        .await
    }

    /// Where agents' requests mark their nodes seen; its flush task is the caller's.
    pub fn liveness(&self) -> Arc<Liveness> {
        Arc::clone(&self.shared.liveness)
    }

    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.shared.store)
    }

    /// Marks `node` seen now (an agent's request).
    fn node_seen(&self, node: &NodeId) {
        self.shared.liveness.seen(node.as_str(), now_ms());
    }
}

/// The request body limit the router enforces, in bytes: a unit may not declare a
/// `max_bytes` its versions could not be pushed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BodyLimit(usize);

/// The whole HTTP surface, with a request body limit of `max_body_bytes`.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut router = Router::new();
    for (route, handler) in routes() {
        router = router.route(route.path, handler);
    }
    router
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            trust::mark_changelog,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(Extension(BodyLimit(max_body_bytes)))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .layer(middleware::from_fn(crate::trace::request_span))
        .with_state(state)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs store work off the async threads.
async fn db<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(&state.shared.store);
    // The store is one connection: more threads waiting on it than a few would only cost
    // memory (a burst of requests, say every agent fetching a bundle, would grow the blocking
    // pool to hundreds of threads). The rest wait their turn here, in order.
    let _turn = state
        .shared
        .store_turns
        .acquire()
        .await
        .map_err(|e| ApiError::internal(format!("store turns closed: {e}")))?;
    // The work logs inside the request's span (its changelog entries carry the request id).
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| work(&store)))
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
}

/// Most store tasks of requests running at once (see `db`).
pub const STORE_TASKS_AT_ONCE: usize = 4;

// --- middleware ----------------------------------------------------------------------------

async fn authorize(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = if request.method() == Method::HEAD {
        Method::GET
    } else {
        request.method().clone()
    };
    let access =
        matched.and_then(|path| state.shared.access.get(&(method, path.as_str())).copied());
    let Some(access) = access else {
        state.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is not classified; access denied",
        )
        .into_response();
    };
    let caller = match authenticate(&state, access, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => {
            state.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
            return error.into_response();
        }
    };
    // A route about one node admits an agent only for the node its token is bound to.
    if let Ok(params) = request.extract_parts::<RawPathParams>().await
        && let Some((_, node)) = params.iter().find(|(name, _)| *name == "node")
        && !caller.may_act_for(node)
    {
        state.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
        let bound = caller.node.as_deref().unwrap_or("no node");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {} is bound to {bound}; it may not act for node {node}",
                caller.name
            ),
        )
        .with_detail(json!({"token_node": caller.node, "node": node}))
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

async fn authenticate(
    state: &AppState,
    access: Access,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let anonymous = Caller {
        name: "anonymous".to_owned(),
        token: "anonymous".to_owned(),
        role: None,
        node: None,
    };
    if access == Access::Public {
        return Ok(anonymous);
    }
    let unauthorized = |message: &str| {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            .with_detail(json!({"expected": "Authorization: Bearer <token>"}))
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("this route needs a bearer token"));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .ok_or_else(|| unauthorized("the Authorization header is not 'Bearer <token>'"))?;
    let hash = token_sha256(token);
    let record = match state.shared.tokens.get(&hash) {
        Some(record) => Some(record),
        None => {
            let lookup = hash.clone();
            let record = db(state, move |store| Ok(store.active_token(&lookup)?)).await?;
            if let Some(record) = &record {
                state.shared.tokens.keep(hash, record.clone());
            }
            record
        }
    };
    let Some(record) = record else {
        return Err(unauthorized("the token is unknown or revoked"));
    };
    trust::refuse_expired(&record, now_ms())?;
    if !access.admits(Some(record.role)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {} may not use this route", record.role),
        )
        .with_detail(json!({"role": record.role, "access": access})));
    }
    Ok(Caller {
        name: record.owner.clone().unwrap_or_else(|| record.name.clone()),
        token: record.name,
        role: Some(record.role),
        node: record.node,
    })
}

async fn count_responses(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let class = usize::from(response.status().as_u16() / 100).saturating_sub(1);
    if let Some(counter) = state.shared.counters.responses_by_class.get(class) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("no such route; see /v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

// --- input conversion ----------------------------------------------------------------------

fn path_param<T>(param: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    param
        .map(|Path(value)| value)
        .map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))
}

fn query_param<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(value)| value)
        .map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        ApiError::new(e.status(), code, format!("body: {}", e.body_text()))
    })
}

fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("body: {e}"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("body is not JSON: {e}"),
            )
        }
    })
}

fn unit_name(name: &str) -> Result<UnitName, ApiError> {
    UnitName::new(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_unit_name", e.to_string()))
}

fn version_hash(hash: &str) -> Result<VersionHash, ApiError> {
    hash.parse::<VersionHash>()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_version_hash", e.to_string()))
}

fn text_field(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_long",
            format!(
                "{field} is {} bytes; the limit is {MAX_TEXT_BYTES}",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// A plan file's text parsed and checked; every error names the file, line and field.
fn parse_plan(plan_file: &str, text: &str) -> Result<Plan, ApiError> {
    Plan::parse(plan_file, text).map_err(|errors| {
        let reasons: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
            format!("plan refused: {}", reasons.join("; ")),
        )
        .with_detail(json!({ "reasons": reasons }))
    })
}

/// The `spec` of a unit request as written, to tell the keys it declares from defaults.
fn raw_spec(body: &Result<Bytes, BytesRejection>) -> Option<Value> {
    let bytes = body.as_ref().ok()?;
    serde_json::from_slice::<Value>(bytes)
        .ok()?
        .get("spec")
        .cloned()
}

/// The file name a unit's plan is reported under.
fn unit_plan_file(unit: &str) -> String {
    format!("{unit}.plan")
}

fn check_spec(spec: &UnitSpec, body_limit: BodyLimit) -> Result<(), ApiError> {
    let BodyLimit(max_body_bytes) = body_limit;
    if usize::try_from(spec.max_bytes).map_or(true, |max| max > max_body_bytes) {
        let reason = format!(
            "max_bytes is {}; this server takes request bodies (a pushed version is one) of at most {max_body_bytes} bytes, so expected at most that (or start the server with a larger --max-body-bytes)",
            spec.max_bytes
        );
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_spec",
            format!("unit spec refused: {reason}"),
        )
        .with_detail(json!({ "reasons": [reason], "max_body_bytes": max_body_bytes })));
    }
    spec.check().map_err(|errors| {
        let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_spec",
            format!("unit spec refused: {}", reasons.join("; ")),
        )
        .with_detail(json!({ "reasons": reasons }))
    })
}

// --- public --------------------------------------------------------------------------------

async fn healthz(State(state): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    let schema_version = db(&state, |store| Ok(store.schema_version()?)).await?;
    Ok(axum::Json(
        json!({"status": "ok", "schema_version": schema_version}),
    ))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = db(&state, |store| Ok(store.counts()?)).await?;
    let counters = &state.shared.counters;
    let mut text = String::new();
    text.push_str("# HELP failsmall_http_responses_total HTTP responses by status class.\n");
    text.push_str("# TYPE failsmall_http_responses_total counter\n");
    for (index, counter) in counters.responses_by_class.iter().enumerate() {
        let class = index.saturating_add(1);
        text.push_str(&format!(
            "failsmall_http_responses_total{{class=\"{class}xx\"}} {}\n",
            counter.load(Ordering::Relaxed)
        ));
    }
    let reports = state.shared.reports.counts();
    let gauges: [(&str, &str, &str, u64); 14] = [
        (
            "failsmall_report_requests_total",
            "counter",
            "Agents' report requests answered by the group commit.",
            reports.requests.load(Ordering::Relaxed),
        ),
        (
            "failsmall_report_steps_total",
            "counter",
            "Engine steps that applied report requests (a group, or one request on its own).",
            reports.steps.load(Ordering::Relaxed),
        ),
        (
            "failsmall_report_groups_split_total",
            "counter",
            "Groups of report requests the engine refused whole, then applied one by one.",
            reports.groups_split.load(Ordering::Relaxed),
        ),
        (
            "failsmall_report_requests_busy_total",
            "counter",
            "Report requests answered 503 because the queue was full.",
            reports.busy.load(Ordering::Relaxed),
        ),
        (
            "failsmall_versions_rejected_total",
            "counter",
            "Pushes refused by validation.",
            counters.versions_rejected.load(Ordering::Relaxed),
        ),
        (
            "failsmall_validation_skipped_total",
            "counter",
            "Pushes stored with validation skipped by an admin.",
            counters.validation_skipped.load(Ordering::Relaxed),
        ),
        (
            "failsmall_break_glass_reports_total",
            "counter",
            "Break-glass uses reported by agents (alert on any rise).",
            counters.break_glass_reports.load(Ordering::Relaxed),
        ),
        (
            "failsmall_requests_denied_total",
            "counter",
            "Requests refused by access control.",
            counters.denied.load(Ordering::Relaxed),
        ),
        ("failsmall_units", "gauge", "Units defined.", counts.units),
        (
            "failsmall_versions",
            "gauge",
            "Versions stored.",
            counts.versions,
        ),
        (
            "failsmall_nodes",
            "gauge",
            "Nodes registered.",
            counts.nodes,
        ),
        (
            "failsmall_nodes_stale",
            "gauge",
            "Nodes that reported serving stale configuration (their desired state expired) and not yet fresh again.",
            counts.nodes_stale,
        ),
        (
            "failsmall_blob_bytes",
            "gauge",
            "Bytes of stored blobs.",
            counts.blob_bytes,
        ),
        (
            "failsmall_changelog_entries",
            "gauge",
            "Changelog entries.",
            counts.changelog_entries,
        ),
    ];
    for (name, kind, help, value) in gauges {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    let (revision, by_status) = state
        .shared
        .engine
        .read(|engine, revision| {
            let mut by_status = [0u64; RolloutStatus::ALL.len()];
            for status in engine.rollout_statuses() {
                if let Some(index) = RolloutStatus::ALL.iter().position(|s| *s == status)
                    && let Some(count) = by_status.get_mut(index)
                {
                    *count = count.saturating_add(1);
                }
            }
            (revision, by_status)
        })
        .await;
    text.push_str(
        "# HELP failsmall_rollouts Rollouts the engine keeps, by status (ended ones are pruned, oldest first).\n",
    );
    text.push_str("# TYPE failsmall_rollouts gauge\n");
    for (status, count) in RolloutStatus::ALL.iter().zip(by_status) {
        text.push_str(&format!(
            "failsmall_rollouts{{status=\"{}\"}} {count}\n",
            status.as_str()
        ));
    }
    text.push_str(
        "# HELP failsmall_rollouts_ended_total Rollouts ended since the data dir was created, by how (from the changelog).\n",
    );
    text.push_str("# TYPE failsmall_rollouts_ended_total counter\n");
    for (outcome, count) in ROLLOUT_END_KINDS.iter().zip(counts.rollouts_ended) {
        text.push_str(&format!(
            "failsmall_rollouts_ended_total{{outcome=\"{outcome}\"}} {count}\n"
        ));
    }
    text.push_str("# HELP failsmall_engine_revision Engine steps persisted.\n");
    text.push_str(&format!(
        "# TYPE failsmall_engine_revision counter\nfailsmall_engine_revision {revision}\n"
    ));
    text.push_str(&slos::metrics_text(&state));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The OpenAPI document, generated from [`route_table`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for route in route_table() {
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(query_parameters(route.path));
        if route.method == Method::GET && page::PAGED_ROUTES.contains(&route.path) {
            parameters.extend(page::parameters());
        }
        let security = if route.access == Access::Public {
            json!([])
        } else {
            json!([{"bearer": []}])
        };
        let operation = json!({
            "summary": route.summary,
            "parameters": parameters,
            "security": security,
            "x-failsmall-access": route.access,
            "responses": {
                "200": {"description": "OK"},
                "4XX": {"description": "Bad input", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        let mut operation = operation;
        if let (Some(body), Some(fields)) = (
            request_body(&route.method, route.path),
            operation.as_object_mut(),
        ) {
            fields.insert("requestBody".to_owned(), body);
        }
        if let (Some(schema), Some(ok)) = (
            response_schema(&route.method, route.path),
            operation.pointer_mut("/responses/200"),
        ) {
            *ok = json!({"description": "OK", "content": {"application/json": {"schema": schema}}});
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        if let Some(methods) = entry.as_object_mut() {
            methods.insert(route.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "failsmall control plane", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "ValidatorCommand": {
                    "type": "object",
                    "description": "The consumer's own parser in check mode, run by the server (never by agents) on every pushed version before it is stored: argv (no shell), the version's bytes on stdin, empty environment but PATH, killed after timeout_ms. A non-zero exit refuses the push with 422 and the first lines of its stderr among the issues. Only an admin may set, change or remove it.",
                    "required": ["command"],
                    "additionalProperties": false,
                    "properties": {
                        "command": {"type": "array", "minItems": 1, "maxItems": crate::validator::MAX_ARGS, "items": {"type": "string", "maxLength": crate::validator::MAX_ARG_BYTES}},
                        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": crate::validator::MAX_TIMEOUT_MS, "default": crate::validator::DEFAULT_TIMEOUT_MS}
                    }
                },
                "Unit": {
                    "type": "object",
                    "description": "A unit to create (name) or update (revision: the one read; a stale one is 409). On update an absent plan or validator is unchanged and null removes it.",
                    "properties": {
                        "name": {"type": "string"},
                        "revision": {"type": "integer"},
                        "spec": {"type": "object", "description": "failsmall_core::validate::UnitSpec: format, schema, max_bytes, max_entries, unique_entries, fail_mode, safe_default, shape (flag_set)"},
                        "owner": {"type": "string"},
                        "description": {"type": "string"},
                        "plan": {"type": ["string", "null"], "description": "The plan file's text (YAML), checked before anything is stored; none: a push starts no rollout on the server (the CLI then requests one through the plan its pusher names, else the built-in default plan). On update, absent keeps the current plan and null removes it"},
                        "validator": {"oneOf": [{"$ref": "#/components/schemas/ValidatorCommand"}, {"type": "null"}]}
                    }
                },
                "Node": {
                    "type": "object",
                    "description": "A registered node. stale_since_ms is present while the node's latest staleness report says it serves stale configuration: its desired-state document expired then and nothing newer came.",
                    "required": ["id", "labels", "registered_ms", "last_seen_ms"],
                    "properties": {
                        "id": {"type": "string"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "registered_ms": {"type": "integer"},
                        "last_seen_ms": {"type": "integer"},
                        "stale_since_ms": {"type": "integer", "description": "ms since the Unix epoch; absent while fresh"},
                        "versions": {
                            "type": "object",
                            "description": "Per unit, the version the node last reported applied (ACK) and when",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {"version": {"type": "string"}, "applied_ms": {"type": "integer"}}
                            }
                        }
                    }
                },
                "Report": {
                    "type": "object",
                    "description": format!("One report from a node, by kind. applied, rejected, crashed, health_check_failed and health name a unit and version and are engine events. stale (since_ms: when the node's desired-state document expired, at most {STALE_CLOCK_SKEW_MS} ms after the server's clock for clock skew; seq: that document's sequence) and fresh (stale_ms: how long it was stale, at most {MAX_STALE_MS}) set and clear the node's stale_since_ms and write node_stale / node_fresh to the changelog (a fresh report for a node that is not stale records nothing). removed (unit, version: what was active, or absent) ends a removal the node's desired-state document asked for (node_removed_unit, recorded once). fetch_failed (unit, version, reason: the bundle could not be fetched intact), untrusted (seq, reason: a desired-state document refused for trust) and repaired (unit, version, reason: a damaged active file restored from its verified copy) write node_fetch_failed, node_untrusted and node_repaired to the changelog and blame no version. A field out of bounds is 422 naming it."),
                    "required": ["kind"],
                    "properties": {
                        "kind": {"type": "string", "enum": ["applied", "rejected", "crashed", "health_check_failed", "health", "stale", "fresh", "removed", "fetch_failed", "untrusted", "repaired"]},
                        "unit": {"type": "string"},
                        "version": {"type": "string"},
                        "reason": {"type": "string", "maxLength": MAX_TEXT_BYTES},
                        "sample": {"type": "object"},
                        "since_ms": {"type": "integer", "minimum": 0},
                        "seq": {"type": "integer", "minimum": 0},
                        "stale_ms": {"type": "integer", "minimum": 0, "maximum": MAX_STALE_MS}
                    }
                },
                "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message", "detail"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}, "detail": {}
                }}}
            }}
        }
    })
}

/// The query parameters a route takes, for the OpenAPI document.
fn query_parameters(path: &str) -> Vec<Value> {
    match path {
        "/v1/changelog" | "/v1/changelog.atom" => vec![
            json!({"name": "unit", "in": "query", "schema": {"type": "string"}, "description": "Only this unit's entries"}),
            json!({"name": "rollout", "in": "query", "schema": {"type": "string", "pattern": "^r?[0-9]+$"}, "example": "r3", "description": "Only this rollout's entries (r3 or 3)"}),
            json!({"name": "since_ms", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "Only entries at or after this time (ms since the Unix epoch)"}),
            json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_ROWS, "default": CHANGELOG_PAGE_DEFAULT}}),
            json!({"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "The next_cursor of the previous page: entries after it oldest first, before it newest first"}),
            json!({"name": "order", "in": "query", "schema": {"type": "string", "enum": ["oldest", "newest"]}, "description": "oldest first (the default of /v1/changelog) or newest first (the default of the feed)"}),
            json!({
                "name": "label",
                "in": "query",
                "style": "form",
                "explode": true,
                "schema": {"type": "array", "maxItems": MAX_LABEL_FILTERS, "items": {"type": "string", "pattern": "^[^=]+=.*$"}},
                "example": ["region=eu-west-1"],
                "description": format!("KEY=VALUE, repeatable: only entries that concern nodes carrying every such label (a stage whose selector admits it, a node that has it) and fleet-wide entries. A filtered page examines at most {MAX_CHANGELOG_SCAN_ROWS} entries, so it may be short and still have a next_cursor. A malformed label is 400.")
            }),
        ],
        "/v1/incidents" | "/status" | "/status.json" | "/status/feed.atom" => vec![
            json!({"name": "days", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": incidents::RESOLVED_DAYS_MAX, "default": incidents::RESOLVED_DAYS_DEFAULT}, "description": "Resolved incidents of the last DAYS days (open ones always)"}),
        ],
        _ => Vec::new(),
    }
}

/// The request body a route takes, where the document describes one.
fn request_body(method: &Method, path: &str) -> Option<Value> {
    let unit_route = (method == Method::POST && path == "/v1/units")
        || (method == Method::PUT && path == "/v1/units/{unit}");
    if unit_route {
        return Some(
            json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Unit"}}}}),
        );
    }
    (method == Method::POST && path == "/v1/nodes/{node}/reports").then(|| {
        json!({"required": true, "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/Report"},
            {"type": "object", "required": ["reports"], "properties": {"reports": {
                "type": "array", "minItems": 1, "maxItems": MAX_REPORTS_PER_BATCH,
                "items": {"$ref": "#/components/schemas/Report"}
            }}}
        ]}}}})
    })
}

/// The schema of a route's 200 answer, where the document describes one.
fn response_schema(method: &Method, path: &str) -> Option<Value> {
    (method == Method::GET && path == "/v1/nodes").then(|| {
        json!({"type": "object", "properties": {"nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}})
    })
}

async fn openapi() -> axum::Json<Value> {
    axum::Json(openapi_document())
}

async fn signing_key(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(json!({"algorithm": "ed25519", "public_key": state.shared.signer.public_key_hex()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_classified_once() {
        let table = route_table();
        let mut seen = std::collections::HashSet::new();
        for route in &table {
            assert!(
                seen.insert((route.method.clone(), route.path)),
                "duplicate route {} {}",
                route.method,
                route.path
            );
        }
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml_escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
