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
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use failsmall_codex::{Action as CodexAction, Finding};
use failsmall_core::domain::{NodeId, RolloutId, UnitName, VersionHash, rfc3339_from_ms};
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
mod changes;
mod convert;
mod documents;
mod elevations;
mod envelope;
mod token_cache;
pub use elevations::{ELEVATION_APPROVALS_DEFAULT, ELEVATION_APPROVALS_MAX};
mod incidents;
mod input;
mod layers;
mod nodes;
mod notify;
mod openapi;
mod operator;
mod page;
mod public;
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
use input::*;
use layers::*;
use nodes::*;
use openapi::openapi;
pub use openapi::openapi_document;
use public::*;
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
pub const MAX_LABELS: usize = failsmall_wire::limits::LABELS_MAX;
pub const MAX_LABEL_BYTES: usize = failsmall_wire::limits::LABEL_MAX_BYTES;
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
                "/v1/changes",
                Read,
                "The store's change counter; with after, waits (up to wait_ms) until it differs",
            ),
            get(changes::changes),
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
        .route_layer(layers::AuthorizeLayer {
            state: state.clone(),
        })
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(Extension(BodyLimit(max_body_bytes)))
        .layer(envelope::EnvelopeLayer {
            state: state.clone(),
        })
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
