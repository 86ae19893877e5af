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
mod operator;
mod page;
mod trust;

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
    // The work logs inside the request's span (its changelog entries carry the request id).
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| work(&store)))
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
}

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
    let record = db(state, move |store| Ok(store.active_token(&hash)?)).await?;
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
    let gauges: [(&str, &str, &str, u64); 13] = [
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
                        "spec": {"type": "object", "description": "failsmall_core::validate::UnitSpec: format, schema, max_bytes, max_entries, unique_entries, fail_mode, safe_default"},
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

// --- units ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUnitRequest {
    name: String,
    spec: UnitSpec,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    description: String,
    /// The plan file's text (YAML) every push rolls out through.
    #[serde(default)]
    plan: Option<String>,
    /// The consumer's parser, run on every push; admins only.
    #[serde(default)]
    validator: Option<ValidatorCommand>,
}

/// Absent stays `None`; present (even `null`) becomes `Some`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUnitRequest {
    revision: u64,
    spec: UnitSpec,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    description: String,
    /// The plan file's text (YAML) every push rolls out through. Absent: unchanged; `null`
    /// removes it (pushes then only store versions).
    #[serde(default, deserialize_with = "present")]
    plan: Option<Option<String>>,
    /// Absent: unchanged. An object sets it, `null` removes it; only an admin may change it.
    #[serde(default, deserialize_with = "present")]
    validator: Option<Option<ValidatorCommand>>,
}

fn only_admin_sets_validator(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == Some(Role::Admin) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "only an admin may set, change or remove a unit's validator command",
    )
    .with_detail(json!({"role": caller.role, "field": "validator"})))
}

/// Redeploying a quarantined version is an admin's decision.
pub(crate) fn only_admin_overrides_quarantine(
    caller: &Caller,
    override_quarantine: bool,
) -> Result<(), ApiError> {
    if !override_quarantine || caller.role == Some(Role::Admin) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "only an admin may override a quarantine",
    ))
}

fn check_validator(validator: Option<&ValidatorCommand>) -> Result<(), ApiError> {
    let Some(validator) = validator else {
        return Ok(());
    };
    validator.check().map_err(|errors| {
        let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_validator",
            format!("validator command refused: {}", reasons.join("; ")),
        )
        .with_detail(json!({ "reasons": reasons }))
    })
}

async fn list_units(
    State(state): State<AppState>,
    query: Result<Query<page::PageQuery>, QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let page = page::Page::from_query(query)?;
    let (after, fetch) = (page.after.clone(), page.fetch());
    let rows = db(&state, move |store| {
        Ok(store.units_after(after.as_deref(), fetch)?)
    })
    .await?;
    let (units, next) = page.split(rows, |unit| unit.name.clone());
    Ok(axum::Json(json!({ "units": units, "next": next })))
}

async fn create_unit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(body_limit): Extension<BodyLimit>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let raw_spec = raw_spec(&body);
    let request: CreateUnitRequest = json_body(body)?;
    let name = unit_name(&request.name)?;
    text_field("owner", &request.owner)?;
    text_field("description", &request.description)?;
    check_spec(&request.spec, body_limit)?;
    agent::check_desired_budget(&state, name.as_str(), &request.spec).await?;
    if request.validator.is_some() {
        only_admin_sets_validator(&caller)?;
    }
    check_validator(request.validator.as_ref())?;
    let plan = (request.plan.as_deref())
        .map(|plan| parse_plan(&unit_plan_file(name.as_str()), plan))
        .transpose()?;
    let mut judgement = Judgement::new(CodexAction::UnitCreate, &caller, name.as_str());
    (judgement.spec, judgement.raw_spec, judgement.plan) =
        (Some(request.spec.clone()), raw_spec, plan);
    judgement.validator = request.validator.as_ref().map(|v| json!(v));
    let warnings = state.judge(judgement).await?;
    let unit = db(&state, move |store| {
        let change = NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "unit_created",
            unit: Some(name.as_str()),
            version: None,
            reason: &request.description,
            concerns: None,
            rollout: None,
            stage: None,
        };
        let fields = UnitFields {
            spec: &request.spec,
            owner: &request.owner,
            description: &request.description,
            plan: request.plan.as_deref(),
            validator: ValidatorChange::Set(request.validator.as_ref()),
        };
        let unit = store.create_unit_with(name.as_str(), &fields, &change)?;
        crate::codex::record_warnings(store, &warnings, change.at_ms, &caller.name, name.as_str())?;
        Ok(unit)
    })
    .await?;
    Ok((StatusCode::CREATED, axum::Json(json!(unit))))
}

async fn show_unit(
    State(state): State<AppState>,
    unit: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = unit_name(&path_param(unit)?)?;
    let unit = db(&state, move |store| Ok(store.unit(name.as_str())?)).await?;
    Ok(axum::Json(json!(unit)))
}

async fn update_unit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(body_limit): Extension<BodyLimit>,
    unit: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = unit_name(&path_param(unit)?)?;
    let raw_spec = raw_spec(&body);
    let request: UpdateUnitRequest = json_body(body)?;
    text_field("owner", &request.owner)?;
    text_field("description", &request.description)?;
    check_spec(&request.spec, body_limit)?;
    agent::check_desired_budget(&state, name.as_str(), &request.spec).await?;
    let mut plan = None;
    if let Some(Some(text)) = &request.plan {
        plan = Some(parse_plan(&unit_plan_file(name.as_str()), text)?);
    }
    if let Some(validator) = &request.validator {
        check_validator(validator.as_ref())?;
    }
    // A caller that is not an admin may send the validator back as it read it. Comparing
    // with the current one is safe: the update applies only at the revision the caller read.
    let keep_validator = match &request.validator {
        None => true,
        Some(_) if caller.role == Some(Role::Admin) => false,
        Some(validator) => {
            let lookup = name.clone();
            let current = db(&state, move |store| Ok(store.unit(lookup.as_str())?)).await?;
            if current.revision == request.revision && current.validator != *validator {
                only_admin_sets_validator(&caller)?;
            }
            true
        }
    };
    // The plan the unit will have: the one sent, or (absent) the one it has.
    if request.plan.is_none() && state.shared.codex.is_some() {
        let lookup = name.clone();
        let current = db(&state, move |store| Ok(store.unit(lookup.as_str())?)).await?;
        plan = (current.plan.as_deref())
            .and_then(|text| Plan::parse(&unit_plan_file(name.as_str()), text).ok());
    }
    let mut judgement = Judgement::new(CodexAction::UnitUpdate, &caller, name.as_str());
    (judgement.spec, judgement.raw_spec, judgement.plan) =
        (Some(request.spec.clone()), raw_spec, plan);
    judgement.validator = request.validator.as_ref().map(|v| json!(v));
    let warnings = state.judge(judgement).await?;
    let unit = db(&state, move |store| {
        let validator = match &request.validator {
            Some(validator) if !keep_validator => ValidatorChange::Set(validator.as_ref()),
            _ => ValidatorChange::Keep,
        };
        // An absent plan keeps the current one. Reading it apart from the update is safe: the
        // update applies only at the revision the caller read, so a plan changed since is a
        // 409 (and so is a diff below made from a unit changed since).
        let current = store.unit(name.as_str())?;
        let plan = match &request.plan {
            Some(plan) => plan.as_deref(),
            None => current.plan.as_deref(),
        };
        let fields = UnitFields {
            spec: &request.spec,
            owner: &request.owner,
            description: &request.description,
            plan,
            validator,
        };
        // The changelog says what changed, field by field.
        let reason = operator::unit_edit_reason(&current, &fields);
        let change = NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "unit_updated",
            unit: Some(name.as_str()),
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        let unit = store.update_unit_with(name.as_str(), request.revision, &fields, &change)?;
        crate::codex::record_warnings(store, &warnings, change.at_ms, &caller.name, name.as_str())?;
        Ok(unit)
    })
    .await?;
    Ok(axum::Json(json!(unit)))
}

// --- versions ------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushQuery {
    message: String,
    /// The head version the pusher read; a different head is a conflict.
    parent: Option<String>,
    #[serde(default)]
    skip_validation: bool,
}

async fn push_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    unit: Result<Path<String>, PathRejection>,
    query: Result<Query<PushQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let name = unit_name(&path_param(unit)?)?;
    let query = query_param(query)?;
    let content = body_bytes(body)?;
    text_field("message", &query.message)?;
    let parent = query
        .parent
        .as_deref()
        .map(version_hash)
        .transpose()?
        .map(|h| h.to_string());
    if query.skip_validation && caller.role != Some(Role::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin may skip validation",
        ));
    }
    let lookup = name.clone();
    let unit = db(&state, move |store| Ok(store.unit(lookup.as_str())?)).await?;
    agent::check_desired_budget(&state, name.as_str(), &unit.spec).await?;
    // The unit's plan was checked when it was set; a plan that no longer parses (a newer
    // plan format) refuses the push rather than storing a version that would not roll out.
    let plan = unit
        .plan
        .as_deref()
        .map(|text| parse_plan(&unit_plan_file(name.as_str()), text))
        .transpose()?;
    let mut judgement = Judgement::new(CodexAction::Push, &caller, name.as_str());
    (judgement.spec, judgement.plan) = (Some(unit.spec.clone()), plan.clone());
    judgement.skip_validation = query.skip_validation;
    judgement.validator = unit.validator.as_ref().map(|v| json!(v));
    let warnings = state.judge(judgement).await?;

    let checked = content.clone();
    let validator = unit.validator.clone();
    let verdict = tokio::task::spawn_blocking(move || validate(&unit.spec, &checked))
        .await
        .map_err(|e| ApiError::internal(format!("validation task failed: {e}")))?;
    // The validator command is not run when validation is skipped: the override exists to
    // get a version past every check.
    let refusal = match (&validator, query.skip_validation) {
        (Some(validator), false) => run_validator(&state, validator, &content).await?,
        _ => None,
    };
    let mut skipped_reasons = Vec::new();
    if verdict.is_err() || refusal.is_some() {
        let mut issues: Vec<Value> = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        if let Err(found) = verdict {
            reasons.extend(found.iter().map(|i| i.message.clone()));
            issues.extend(found.iter().map(|i| json!(i)));
        }
        if let Some(refusal) = refusal {
            reasons.push(refusal.to_string());
            issues.push(validator_issue(&refusal));
        }
        if !query.skip_validation {
            state
                .shared
                .counters
                .versions_rejected
                .fetch_add(1, Ordering::Relaxed);
            operator::record_refused_push(
                &state,
                &caller.name,
                &name,
                &VersionHash::of(&content),
                &query.message,
                &reasons,
            )
            .await;
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("version of unit {name} refused: {}", reasons.join("; ")),
            )
            .with_detail(json!({ "issues": issues })));
        }
        skipped_reasons = reasons;
    }
    if query.skip_validation && validator.is_some() {
        skipped_reasons.push("validator command not run".to_owned());
    }

    let hash = VersionHash::of(&content).to_string();
    let signature = state.shared.signer.sign_version(name.as_str(), &hash);
    let skipped = query.skip_validation;
    let at_ms = now_ms();
    let pushed = ChangeRow {
        at_ms,
        actor: caller.name.clone(),
        kind: "version_pushed".to_owned(),
        unit: Some(name.to_string()),
        version: Some(hash.clone()),
        reason: query.message.clone(),
        concerns: None,
        rollout: None,
        stage: None,
    };
    let mut changes = vec![pushed.clone()];
    changes.extend(warnings.iter().map(|finding| ChangeRow {
        kind: crate::codex::WARNING_KIND.to_owned(),
        reason: finding.one_line(),
        ..pushed.clone()
    }));
    if skipped {
        changes.push(ChangeRow {
            kind: "validation_skipped".to_owned(),
            reason: format!(
                "validation skipped by {}: {}",
                caller.name,
                skipped_reasons.join("; ")
            ),
            ..pushed
        });
    }
    let row = VersionRow {
        unit: name.to_string(),
        hash: hash.clone(),
        content: content.to_vec(),
        author: caller.name.clone(),
        message: query.message.clone(),
        expected_parent: parent.map(Some),
        created_ms: at_ms,
        signature,
        validation_skipped: skipped,
    };
    let (version, created, rollout) = match plan {
        None => {
            let (version, created) = db(&state, move |store| {
                let changes: Vec<NewChange<'_>> = changes.iter().map(ChangeRow::as_new).collect();
                Ok(store.push_version(&row.as_new(), &changes)?)
            })
            .await?;
            (version, created, None)
        }
        Some(plan) => push_and_roll_out(&state, &caller, row, changes, plan).await?,
    };
    if created && skipped {
        state
            .shared
            .counters
            .validation_skipped
            .fetch_add(1, Ordering::Relaxed);
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut answer = json!(version);
    if let (Some(rollout), Some(fields)) = (rollout, answer.as_object_mut()) {
        fields.insert("rollout".to_owned(), rollout);
    }
    Ok((status, axum::Json(answer)))
}

/// Most validator commands running at once; a push that waits longer than
/// [`crate::validator::MAX_TIMEOUT_MS`] for a turn is answered 429.
pub const MAX_RUNNING_VALIDATORS: usize = 4;

/// Runs the unit's validator command on `content`; `Some` when it refuses the version.
async fn run_validator(
    state: &AppState,
    validator: &ValidatorCommand,
    content: &[u8],
) -> Result<Option<Refusal>, ApiError> {
    let wait = std::time::Duration::from_millis(crate::validator::MAX_TIMEOUT_MS);
    let permit = tokio::time::timeout(wait, state.shared.validators.acquire())
        .await
        .ok()
        .and_then(Result::ok);
    let Some(_permit) = permit else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "validators_busy",
            format!(
                "{MAX_RUNNING_VALIDATORS} validator commands are running and none finished in {}; retry later",
                failsmall_core::duration::format_ms(crate::validator::MAX_TIMEOUT_MS)
            ),
        ));
    };
    let outcome = match &state.shared.scratch_dir {
        Some(dir) => validator.run_in(dir, content).await,
        None => validator.run(content).await,
    };
    Ok(outcome.err())
}

/// A validator's refusal in the list of a push's issues (the shape of `ValidationIssue`).
fn validator_issue(refusal: &Refusal) -> Value {
    let kind = match refusal {
        Refusal::Refused { .. } => "validator_refused",
        Refusal::TimedOut { .. } => "validator_timed_out",
        Refusal::NotFound { .. } | Refusal::Spawn { .. } | Refusal::Io { .. } => "validator_failed",
    };
    json!({"kind": kind, "path": "", "message": refusal.to_string()})
}

/// Stores a version and requests its rollout through the unit's plan in one engine step, so
/// a crash leaves both or neither. Bytes the unit already has start nothing and answer the
/// stored version.
async fn push_and_roll_out(
    state: &AppState,
    caller: &Caller,
    row: VersionRow,
    changes: Vec<ChangeRow>,
    plan: Plan,
) -> Result<(crate::store::VersionRecord, bool, Option<Value>), ApiError> {
    let (unit, hash) = (row.unit.clone(), row.hash.clone());
    let existing = {
        let (unit, hash) = (unit.clone(), hash.clone());
        db(state, move |store| match store.version(&unit, &hash) {
            Ok(version) => Ok(Some(version)),
            Err(crate::store::StoreError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        })
        .await?
    };
    if let Some(version) = existing {
        return Ok((version, false, None));
    }
    let event = Event::RolloutRequested {
        unit: unit_name(&unit)?,
        version: version_hash(&hash)?,
        plan,
        actor: caller.name.clone(),
        reason: row.message.clone(),
        override_quarantine: false,
    };
    let at_ms = row.created_ms;
    let cause = Cause::Push {
        version: Box::new(row),
        changes,
    };
    let host = &state.shared.engine;
    let stepped = host
        .apply_many(&state.shared.store, at_ms, vec![(event, None)], cause)
        .await;
    let lookup = move |store: &Store| Ok(store.version(&unit, &hash)?);
    match stepped {
        Ok(actions) => {
            let version = db(state, lookup).await?;
            let view = match rollout_of(&actions) {
                Some(id) => host.read(|engine, _| engine.rollout(id)).await,
                None => None,
            };
            Ok((version, true, view.map(|view| json!(view))))
        }
        // The same bytes were pushed meanwhile: they are stored, with their own rollout.
        Err(StepError::Store(crate::store::StoreError::AlreadyExists { .. })) => {
            Ok((db(state, lookup).await?, false, None))
        }
        Err(error) => Err(step_error(error)),
    }
}

async fn show_version(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let (unit, hash) = path_param(params)?;
    let name = unit_name(&unit)?;
    let hash = version_hash(&hash)?.to_string();
    let version = db(
        &state,
        move |store| Ok(store.version(name.as_str(), &hash)?),
    )
    .await?;
    Ok(axum::Json(json!(version)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: String,
    to: String,
}

async fn diff_versions(
    State(state): State<AppState>,
    unit: Result<Path<String>, PathRejection>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let name = unit_name(&path_param(unit)?)?;
    let query = query_param(query)?;
    let from = version_hash(&query.from)?.to_string();
    let to = version_hash(&query.to)?.to_string();
    let (old, new) = db(&state, move |store| {
        let old = store.version(name.as_str(), &from)?;
        let new = store.version(name.as_str(), &to)?;
        for version in [&old, &new] {
            if usize::try_from(version.size_bytes).unwrap_or(usize::MAX) > MAX_DIFF_BYTES {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "too_large",
                    format!(
                        "version {} is {} bytes; diffs stop at {MAX_DIFF_BYTES}",
                        version.hash, version.size_bytes
                    ),
                ));
            }
        }
        Ok((store.blob(&old.hash)?, store.blob(&new.hash)?))
    })
    .await?;
    let (Ok(old_text), Ok(new_text)) = (String::from_utf8(old), String::from_utf8(new)) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_text",
            "one of the versions is not UTF-8 text",
        ));
    };
    let (from, to) = (query.from, query.to);
    let diff = tokio::task::spawn_blocking(move || {
        similar::TextDiff::configure()
            .timeout(std::time::Duration::from_secs(2))
            .diff_lines(&old_text, &new_text)
            .unified_diff()
            .context_radius(3)
            .header(&from, &to)
            .to_string()
    })
    .await
    .map_err(|e| ApiError::internal(format!("diff task failed: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], diff).into_response())
}

async fn blob(
    State(state): State<AppState>,
    sha256: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hash = version_hash(&path_param(sha256)?)?.to_string();
    let etag = format!("\"{hash}\"");
    let cache = [
        (
            header::CACHE_CONTROL,
            "public, max-age=31536000, immutable".to_owned(),
        ),
        (header::ETAG, etag.clone()),
    ];
    let lookup = hash.clone();
    let content = db(&state, move |store| Ok(store.blob(&lookup)?)).await?;
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    let mut response = (cache, content).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

// --- nodes ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterNodeRequest {
    #[serde(default)]
    labels: Labels,
}

fn node_id(id: &str) -> Result<NodeId, ApiError> {
    NodeId::new(id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_node_id", e.to_string()))
}

async fn register_node(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    node: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let id = node_id(&path_param(node)?)?;
    let request: RegisterNodeRequest = json_body(body)?;
    if request.labels.len() > MAX_LABELS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_labels",
            format!(
                "node {id} has {} labels; the limit is {MAX_LABELS}",
                request.labels.len()
            ),
        ));
    }
    if let Some((key, value)) = request
        .labels
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_label",
            format!(
                "label {key:?}={value:?}: keys must be 1 to {MAX_LABEL_BYTES} bytes, values at most {MAX_LABEL_BYTES}"
            ),
        ));
    }
    let lookup = id.clone();
    let known = db(&state, move |store| Ok(store.node(lookup.as_str())?)).await?;
    if known.is_some_and(|node| node.labels == request.labels) {
        // Nothing changed: a re-registration only says the node is alive.
        let node = db(&state, move |store| {
            Ok(store.heartbeat(id.as_str(), now_ms())?)
        })
        .await?;
        return Ok(axum::Json(json!(node)));
    }
    let at_ms = now_ms();
    let labels_text = serde_json::to_string(&request.labels).unwrap_or_default();
    let change = ChangeRow {
        at_ms,
        actor: caller.name.clone(),
        kind: "node_registered".to_owned(),
        unit: None,
        version: None,
        reason: format!("node {id} labels {labels_text}"),
        concerns: Some(Concerns::Node(request.labels.clone())),
        rollout: None,
        stage: None,
    };
    let event = Event::NodeRegistered {
        node: id.clone(),
        labels: request.labels.clone(),
    };
    let cause = Cause::Node {
        id: id.clone(),
        labels: request.labels,
    };
    state
        .shared
        .engine
        .apply(&state.shared.store, at_ms, event, cause, Some(change))
        .await
        .map_err(step_error)?;
    let node = db(&state, move |store| {
        store
            .node(id.as_str())?
            .ok_or_else(|| ApiError::not_found(format!("node {id} not found")))
    })
    .await?;
    Ok(axum::Json(json!(node)))
}

async fn heartbeat(
    State(state): State<AppState>,
    node: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let id = node_id(&path_param(node)?)?;
    let node = db(&state, move |store| {
        Ok(store.heartbeat(id.as_str(), now_ms())?)
    })
    .await?;
    Ok(axum::Json(json!(node)))
}

/// The nodes, each with when its agent was last heard from (marks not yet written included),
/// and the threshold after which a node is down.
async fn list_nodes(
    State(state): State<AppState>,
    query: Result<Query<page::PageQuery>, QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let page = page::Page::from_query(query)?;
    let (after, limit) = (page.after.clone(), page.limit);
    // A page ends early rather than show a node with some of its versions (see nodes_page).
    let (mut nodes, more) = db(&state, move |store| {
        Ok(store.nodes_page(after.as_deref(), limit)?)
    })
    .await?;
    let next = more
        .then(|| nodes.last().map(|node| node.id.clone()))
        .flatten();
    for node in &mut nodes {
        if let Some(seen_ms) = state.shared.liveness.pending(&node.id) {
            node.last_seen_ms = node.last_seen_ms.max(seen_ms);
        }
    }
    Ok(axum::Json(json!({
        "nodes": nodes,
        "next": next,
        "now_ms": now_ms(),
        "down_after_ms": state.shared.node_down_after_ms,
    })))
}

// --- rollouts and the agent protocol -------------------------------------------------------

fn step_error(error: StepError) -> ApiError {
    let message = match &error {
        // Said in the API's words (`paused`, `pause`), never the engine's enum names.
        StepError::Engine(EngineError::InvalidCommand {
            rollout,
            status,
            command,
            expected,
        }) => format!(
            "rollout {rollout} is {}; {} needs it to be {expected}",
            status.as_str(),
            command_word(*command)
        ),
        _ => error.to_string(),
    };
    match error {
        StepError::Engine(engine) => {
            let (status, code) = match engine {
                EngineError::UnknownRollout(_) => (StatusCode::NOT_FOUND, "not_found"),
                EngineError::UnknownNode(_) => (StatusCode::NOT_FOUND, "not_found"),
                EngineError::InvalidCommand { .. } => (StatusCode::CONFLICT, "invalid_command"),
                EngineError::Quarantined { .. } => (StatusCode::CONFLICT, "quarantined"),
                EngineError::QueueFull { .. } => (StatusCode::CONFLICT, "queue_full"),
                EngineError::NoApprovalPending { .. } => {
                    (StatusCode::CONFLICT, "no_approval_pending")
                }
                EngineError::SelfApproval { .. } => (StatusCode::FORBIDDEN, "self_approval"),
                EngineError::AlreadyApproved { .. } => (StatusCode::CONFLICT, "already_approved"),
                EngineError::EmptyPlan { .. } | EngineError::LimitReached { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "refused")
                }
                EngineError::NotQuarantined { .. } => (StatusCode::NOT_FOUND, "not_quarantined"),
                EngineError::UnitBusy { .. } => (StatusCode::CONFLICT, "unit_busy"),
                EngineError::CannotRevert { .. } => (StatusCode::CONFLICT, "invalid_command"),
            };
            ApiError::new(status, code, message)
        }
        StepError::Store(store) => ApiError::from(store),
        StepError::Serialize(_) | StepError::Task(_) => ApiError::internal(message),
    }
}

/// A command as the API spells it: `pause`, `rollback`, ...
fn command_word(command: Command) -> String {
    serde_json::to_value(command)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRolloutRequest {
    unit: String,
    version: String,
    /// The plan file's text (YAML; JSON accepted).
    plan: String,
    /// The plan file's name, for error messages.
    #[serde(default)]
    plan_file: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    override_quarantine: bool,
}

fn rollout_of(actions: &[Action]) -> Option<RolloutId> {
    actions.iter().find_map(|action| match action {
        Action::Changelog(entry) => Some(entry.rollout),
        Action::Notify { rollout, .. } => Some(*rollout),
        Action::SetDesired { .. } => None,
    })
}

async fn create_rollout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let request: CreateRolloutRequest = json_body(body)?;
    let unit = unit_name(&request.unit)?;
    let version = version_hash(&request.version)?;
    text_field("reason", &request.reason)?;
    only_admin_overrides_quarantine(&caller, request.override_quarantine)?;
    let plan_file = request.plan_file.unwrap_or_else(|| "plan".to_owned());
    let plan = parse_plan(&plan_file, &request.plan)?;
    let (lookup_unit, lookup_version) = (unit.clone(), version.to_string());
    let record = db(&state, move |store| {
        store.version(lookup_unit.as_str(), &lookup_version)?;
        Ok(store.unit(lookup_unit.as_str())?)
    })
    .await?;
    let mut judgement = Judgement::new(CodexAction::RolloutStart, &caller, unit.as_str());
    (judgement.spec, judgement.plan) = (Some(record.spec), Some(plan.clone()));
    judgement.override_quarantine = request.override_quarantine;
    let warnings = state.judge(judgement).await?;
    let unit_text = unit.to_string();
    let event = Event::RolloutRequested {
        unit,
        version,
        plan,
        actor: caller.name.clone(),
        reason: request.reason,
        override_quarantine: request.override_quarantine,
    };
    let host = &state.shared.engine;
    let actions = host
        .apply(&state.shared.store, now_ms(), event, Cause::Nothing, None)
        .await
        .map_err(step_error)?;
    let id = match rollout_of(&actions) {
        Some(id) => Some(id),
        None => {
            host.read(|engine, _| engine.rollouts().last().map(|view| view.id))
                .await
        }
    };
    let view = match id {
        Some(id) => host.read(|engine, _| engine.rollout(id)).await,
        None => None,
    };
    if !warnings.is_empty() {
        let (actor, unit) = (caller.name.clone(), unit_text);
        db(&state, move |store| {
            crate::codex::record_warnings(store, &warnings, now_ms(), &actor, &unit)
        })
        .await?;
    }
    Ok((StatusCode::CREATED, axum::Json(json!(view))))
}

async fn list_rollouts(
    State(state): State<AppState>,
    query: Result<Query<page::PageQuery>, QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let page = page::Page::from_query(query)?;
    // Newest first: the page after `after` holds older rollouts.
    let before = page.after_number()?.unwrap_or(u64::MAX);
    let fetch = usize::try_from(page.fetch()).unwrap_or(usize::MAX);
    let rows: Vec<_> = state
        .shared
        .engine
        .read(|engine, _| {
            let all: Vec<_> = engine.rollouts().collect();
            all.into_iter()
                .rev()
                .filter(|view| view.id.0 < before)
                .take(fetch)
                .collect()
        })
        .await;
    let (views, next) = page.split(rows, |view| view.id.0.to_string());
    Ok(axum::Json(json!({ "rollouts": views, "next": next })))
}

async fn show_rollout(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let id = RolloutId(path_param(id)?);
    let view = state
        .shared
        .engine
        .read(|engine, _| engine.rollout(id))
        .await;
    view.map(|view| axum::Json(json!(view)))
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    command: Command,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveRequest {
    #[serde(default)]
    reason: String,
}

async fn run_command(
    state: &AppState,
    caller: &Caller,
    id: u64,
    command: Command,
    reason: String,
) -> Result<axum::Json<Value>, ApiError> {
    text_field("reason", &reason)?;
    let rollout = RolloutId(id);
    let host = &state.shared.engine;
    let status = host
        .read(|engine, _| engine.rollout(rollout).map(|view| view.status))
        .await;
    // Rolling back an aborted rollout reverts the nodes it left on its version.
    let event = if command == Command::Rollback && status == Some(RolloutStatus::Aborted) {
        Event::RevertAborted {
            rollout,
            actor: caller.name.clone(),
            reason,
        }
    } else {
        Event::Command {
            rollout,
            command,
            actor: caller.name.clone(),
            reason,
        }
    };
    host.apply(&state.shared.store, now_ms(), event, Cause::Nothing, None)
        .await
        .map_err(step_error)?;
    let view = host.read(|engine, _| engine.rollout(rollout)).await;
    Ok(axum::Json(json!(view)))
}

async fn command_rollout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let id = path_param(id)?;
    let request: CommandRequest = json_body(body)?;
    if request.command == Command::Approve {
        return Err(ApiError::bad_request(
            "approvals go to /v1/rollouts/{id}/approve, which needs the approver role",
        ));
    }
    run_command(&state, &caller, id, request.command, request.reason).await
}

async fn approve_rollout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let id = path_param(id)?;
    let empty = body.as_ref().is_ok_and(|bytes| bytes.is_empty());
    let request: ApproveRequest = if empty {
        ApproveRequest::default()
    } else {
        json_body(body)?
    };
    run_command(&state, &caller, id, Command::Approve, request.reason).await
}

// --- changelog -----------------------------------------------------------------------------

/// Most `label` filters one changelog request may carry.
pub const MAX_LABEL_FILTERS: usize = 16;

/// The changelog's query parameters: `unit`, `rollout`, `since_ms`, `limit`, `cursor`, `order` at most once each,
/// `label=KEY=VALUE` repeatable (entries must concern nodes with every such label).
#[derive(Debug, Default)]
struct ChangelogParams {
    unit: Option<String>,
    rollout: Option<u64>,
    since_ms: Option<u64>,
    limit: Option<u32>,
    cursor: Option<u64>,
    /// `newest` lists newest first (and `cursor` then reads on below it).
    newest_first: Option<bool>,
    labels: Vec<(String, String)>,
}

fn once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), ApiError> {
    if slot.replace(value).is_some() {
        return Err(ApiError::bad_request(format!(
            "query: {name} is given more than once; expected at most one"
        )));
    }
    Ok(())
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "query: {name}={value:?} is not a non-negative integer"
        ))
    })
}

/// `KEY=VALUE`, with the key and value limits of node labels.
fn label_filter(value: &str) -> Result<(String, String), ApiError> {
    let bad = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_label",
            format!("query: label={value:?}: {why}"),
        )
        .with_detail(json!({"expected": "label=KEY=VALUE, e.g. label=region=eu-west-1"}))
    };
    let Some((key, wanted)) = value.split_once('=') else {
        return Err(bad("expected KEY=VALUE".to_owned()));
    };
    if key.is_empty() || key.len() > MAX_LABEL_BYTES || wanted.len() > MAX_LABEL_BYTES {
        return Err(bad(format!(
            "keys must be 1 to {MAX_LABEL_BYTES} bytes, values at most {MAX_LABEL_BYTES}"
        )));
    }
    Ok((key.to_owned(), wanted.to_owned()))
}

impl ChangelogParams {
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut params = Self::default();
        for (name, value) in pairs {
            match name.as_str() {
                "unit" => once(&mut params.unit, "unit", value)?,
                "rollout" => {
                    let id = value
                        .strip_prefix('r')
                        .unwrap_or(&value)
                        .parse()
                        .map_err(|_| {
                            ApiError::bad_request(format!(
                                "query: rollout={value:?} is not a rollout id; expected e.g. r3 or 3"
                            ))
                        })?;
                    once(&mut params.rollout, "rollout", id)?;
                }
                "since_ms" => once(&mut params.since_ms, "since_ms", number(&name, &value)?)?,
                "limit" => once(&mut params.limit, "limit", number(&name, &value)?)?,
                "cursor" => once(&mut params.cursor, "cursor", number(&name, &value)?)?,
                "order" => {
                    let newest_first = match value.as_str() {
                        "oldest" => false,
                        "newest" => true,
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "query: order={value:?}; expected oldest or newest"
                            )));
                        }
                    };
                    once(&mut params.newest_first, "order", newest_first)?;
                }
                "label" => {
                    if params.labels.len() >= MAX_LABEL_FILTERS {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_label",
                            format!("query: more than {MAX_LABEL_FILTERS} label filters"),
                        ));
                    }
                    params.labels.push(label_filter(&value)?);
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "query: unknown parameter {name:?}; expected unit, rollout, since_ms, limit, cursor, order or label"
                    )));
                }
            }
        }
        Ok(params)
    }

    /// The store's query; `newest_first` is the route's order when `order` is not given.
    fn into_query(self, newest_first: bool) -> Result<ChangelogQuery, ApiError> {
        let newest_first = self.newest_first.unwrap_or(newest_first);
        let unit = self
            .unit
            .as_deref()
            .map(unit_name)
            .transpose()?
            .map(String::from);
        let limit = self.limit.unwrap_or(CHANGELOG_PAGE_DEFAULT);
        if limit == 0 || limit > MAX_LIST_ROWS {
            return Err(ApiError::bad_request(format!(
                "limit is {limit}; expected 1 to {MAX_LIST_ROWS}"
            )));
        }
        Ok(ChangelogQuery {
            unit,
            rollout: self.rollout,
            labels: self.labels,
            since_ms: self.since_ms,
            after_id: self.cursor.filter(|_| !newest_first),
            before_id: self.cursor.filter(|_| newest_first),
            limit,
            newest_first,
        })
    }
}

fn changelog_query(
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
    newest_first: bool,
) -> Result<ChangelogQuery, ApiError> {
    ChangelogParams::parse(query_param(params)?)?.into_query(newest_first)
}

async fn changelog(
    State(state): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let query = changelog_query(params, false)?;
    let page = db(&state, move |store| Ok(store.changelog_page(&query)?)).await?;
    Ok(axum::Json(
        json!({ "entries": page.entries, "next_cursor": page.next_cursor }),
    ))
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn changelog_feed(
    State(state): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = changelog_query(params, true)?;
    let entries = db(&state, move |store| Ok(store.changelog(&query)?)).await?;
    let updated = rfc3339_from_ms(entries.first().map_or(0, |e| e.at_ms));
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n\
         <title>failsmall changelog</title>\n<id>urn:failsmall:changelog</id>\n<updated>{updated}</updated>\n"
    );
    for entry in &entries {
        let title = format!(
            "{} {}{}",
            entry.kind,
            entry.unit.as_deref().unwrap_or(""),
            entry
                .version
                .as_deref()
                .map(|v| format!("@{}", v.get(..12).unwrap_or(v)))
                .unwrap_or_default()
        );
        xml.push_str(&format!(
            "<entry>\n<id>urn:failsmall:change:{}</id>\n<title>{}</title>\n<updated>{}</updated>\n\
             <author><name>{}</name></author>\n<content type=\"text\">{}</content>\n</entry>\n",
            entry.id,
            xml_escape(title.trim()),
            rfc3339_from_ms(entry.at_ms),
            xml_escape(&entry.actor),
            xml_escape(&entry.reason)
        ));
    }
    xml.push_str("</feed>\n");
    Ok((
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
        xml,
    )
        .into_response())
}

// --- tokens --------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTokenRequest {
    name: String,
    role: Role,
    /// The node an agent token acts for: required for `agent`, refused for other roles.
    #[serde(default)]
    node: Option<String>,
    /// The person the token acts for; default: the creator, for people's roles.
    #[serde(default)]
    owner: Option<String>,
    /// How long it is accepted (`30d`, `12h`); default: until revoked.
    #[serde(default)]
    expires_in: Option<String>,
}

async fn list_tokens(
    State(state): State<AppState>,
    query: Result<Query<page::PageQuery>, QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let page = page::Page::from_query(query)?;
    let (after, fetch) = (page.after_number()?, page.fetch());
    let rows = db(&state, move |store| Ok(store.tokens_after(after, fetch)?)).await?;
    let (tokens, next) = page.split(rows, |token| token.id.to_string());
    Ok(axum::Json(json!({ "tokens": tokens, "next": next })))
}

async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let request: CreateTokenRequest = json_body(body)?;
    if request.name.is_empty() || request.name.len() > 128 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_name",
            "token name must be 1 to 128 bytes",
        ));
    }
    let node = match (request.role, request.node.as_deref()) {
        (Role::Agent, Some(node)) => Some(node_id(node)?.to_string()),
        (Role::Agent, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "node_required",
                "an agent token acts for one node; give its id as \"node\"",
            ));
        }
        (role, Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "node_not_allowed",
                format!("only agent tokens are bound to a node, not {role} tokens"),
            ));
        }
        (_, None) => None,
    };
    let (owner, expires_ms) = trust::owner_and_expiry(
        &caller,
        request.role,
        request.owner.as_deref(),
        request.expires_in.as_deref(),
        now_ms(),
    )?;
    let token =
        new_token().map_err(|e| ApiError::internal(format!("no randomness for a token: {e}")))?;
    let hash = token_sha256(&token);
    let record = db(&state, move |store| {
        let bound = node
            .as_deref()
            .map(|node| format!(" for node {node}"))
            .unwrap_or_default();
        let reason = format!(
            "token {:?} with role {}{bound}{}",
            request.name,
            request.role,
            trust::owner_and_expiry_text(owner.as_deref(), expires_ms)
        );
        let change = NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "token_created",
            unit: None,
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        let new = crate::store::NewToken {
            name: &request.name,
            role: request.role,
            node: node.as_deref(),
            owner: owner.as_deref(),
            expires_ms,
            token_sha256: &hash,
        };
        Ok(store.create_token_with(&new, &change)?)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "token": token, "record": record })),
    ))
}

async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let id = path_param(id)?;
    let record = db(&state, move |store| {
        let reason = format!("token {id}");
        let change = NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "token_revoked",
            unit: None,
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        Ok(store.revoke_token(id, &change)?)
    })
    .await?;
    Ok(axum::Json(json!(record)))
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
