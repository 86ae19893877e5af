//! The OpenAPI document: its schemas are generated from the wire types
//! ([`failsmall_wire`], `utoipa::ToSchema`), its operations from [`route_table`], so a route
//! cannot exist without an operation nor an operation without a route.

use failsmall_wire::elevations::{Elevation, ElevationList};
use failsmall_wire::incidents::{
    Incident, IncidentDetail, IncidentList, IncidentUpdate, PublicComponent, PublicIncident,
    PublicStatus, PublicUpdate, TimelineEntry,
};
use failsmall_wire::nodes::{
    Accepted, BreakGlassRecorded, DesiredAnswer, NodeRemoved, ReportAnswer,
};
use failsmall_wire::notify::{
    DeadLetter, DeadLetterRetried, DeadLetters, OutboxCounts, Webhook, WebhookList, WebhookRemoved,
};
use failsmall_wire::operator::{ServerInfo, ServerStatus, StatusCounts, StoreInfo, WhoAmI};
use failsmall_wire::quarantine::{QuarantineLifted, QuarantineList, QuarantinedVersion};
use failsmall_wire::reports::{
    BreakGlassReport, HealthSample, LatencyHistogram, Report, ReportBatch,
};
use failsmall_wire::requests::{
    CreateTokenRequest, CreateWebhookRequest, ElevationRequest, OpenIncidentRequest, ReasonRequest,
    RegisterNodeRequest, RequiredReasonRequest, ResolveIncidentRequest, ReviewIncidentRequest,
    Role, UpdateIncidentRequest,
};
use failsmall_wire::rollouts::{
    CommandRequest, CreateRolloutRequest, GateReport, GroupMetrics, RetryRequest, Rollout,
    RolloutCommand, RolloutList, RolloutStatus as WireRolloutStatus, Silence, StagePhase, Verdict,
};
use failsmall_wire::slos::{CreateSloRequest, Slo, SloDeleted, SloList, SloQueries};
use failsmall_wire::tokens::{NewToken, Token, TokenList};
use failsmall_wire::trust::{
    ChainBreak, ChainHead, ChangelogVerification, Checkpoint, EarlierCheckpoint, KeySignature,
    RootDocument, SignedRoot,
};
use failsmall_wire::units::{
    CreateUnitRequest, EntryLimit, FailMode, Shape, UniqueEntries, Unit, UnitDeleted, UnitFormat,
    UnitList, UnitSpec, UpdateUnitRequest, ValidatorCommand,
};
use failsmall_wire::versions::{LatestRollout, PushedVersion, VersionEntry, VersionList};
use failsmall_wire::windows::{
    CreateFreezeRequest, CreateMaintenanceRequest, Freeze, FreezeLifted, FreezeList, FreezeScope,
    FreezeWindow, Maintenance, MaintenanceEnded, MaintenanceList, NodeSelector, StoredScope,
    StoredWindow, Weekday,
};
use failsmall_wire::{
    ApiDocument, AppliedVersion, ChangeEntry, ChangelogPage, Changes, ErrorBody, ErrorDetail,
    HASH_PATTERN, Health, NODE_ID_PATTERN, Node, NodeList, SigningKey, UNIT_NAME_PATTERN, Version,
};
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use super::*;

/// The wire types' schemas and the bearer security scheme.
#[derive(OpenApi)]
#[openapi(
    info(title = "failsmall control plane"),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        Health,
        SigningKey,
        Node,
        AppliedVersion,
        NodeList,
        ChangeEntry,
        ChangelogPage,
        Changes,
        Version,
        Role,
        CreateTokenRequest,
        RegisterNodeRequest,
        OpenIncidentRequest,
        UpdateIncidentRequest,
        ResolveIncidentRequest,
        ReviewIncidentRequest,
        ReasonRequest,
        RequiredReasonRequest,
        ElevationRequest,
        CreateWebhookRequest,
        UnitFormat,
        FailMode,
        Shape,
        EntryLimit,
        UniqueEntries,
        UnitSpec,
        ValidatorCommand,
        CreateUnitRequest,
        UpdateUnitRequest,
        Unit,
        Token,
        CreateRolloutRequest,
        RolloutCommand,
        CommandRequest,
        RetryRequest,
        FreezeScope,
        FreezeWindow,
        Weekday,
        CreateFreezeRequest,
        CreateMaintenanceRequest,
        SloQueries,
        CreateSloRequest,
        Report,
        ReportBatch,
        HealthSample,
        LatencyHistogram,
        BreakGlassReport,
        ApiDocument,
        RootDocument,
        KeySignature,
        SignedRoot,
        UnitList,
        UnitDeleted,
        VersionEntry,
        LatestRollout,
        VersionList,
        PushedVersion,
        QuarantinedVersion,
        QuarantineList,
        QuarantineLifted,
        NodeRemoved,
        DesiredAnswer,
        Accepted,
        ReportAnswer,
        BreakGlassRecorded,
        WireRolloutStatus,
        StagePhase,
        Verdict,
        GateReport,
        GroupMetrics,
        Silence,
        Rollout,
        RolloutList,
        ChainHead,
        ChainBreak,
        Checkpoint,
        EarlierCheckpoint,
        ChangelogVerification,
        WhoAmI,
        ServerInfo,
        StoreInfo,
        StatusCounts,
        ServerStatus,
        TokenList,
        NewToken,
        NodeSelector,
        StoredScope,
        StoredWindow,
        Freeze,
        FreezeList,
        FreezeLifted,
        Maintenance,
        MaintenanceList,
        MaintenanceEnded,
        Webhook,
        WebhookList,
        WebhookRemoved,
        DeadLetter,
        OutboxCounts,
        DeadLetters,
        DeadLetterRetried,
        Slo,
        SloList,
        SloDeleted,
        Incident,
        IncidentUpdate,
        TimelineEntry,
        IncidentDetail,
        IncidentList,
        PublicUpdate,
        PublicIncident,
        PublicComponent,
        PublicStatus,
        Elevation,
        ElevationList
    )),
    modifiers(&BearerScheme, &ClosedVariants)
)]
struct WireTypes;

/// Tagged enums the server reads with unknown fields refused: the derive closes a struct
/// (`additionalProperties: false`) but not an enum's variants, so this closes each of theirs.
const CLOSED_TAGGED_ENUMS: [&str; 3] = ["Report", "FreezeScope", "FreezeWindow"];

struct ClosedVariants;

impl utoipa::Modify for ClosedVariants {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for name in CLOSED_TAGGED_ENUMS {
            let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(name) else {
                continue;
            };
            for variant in &mut one_of.items {
                if let RefOr::T(Schema::Object(object)) = variant {
                    object.additional_properties =
                        Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
    }
}

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// Creates: the POST routes answering 201 Created.
const CREATED_ROUTES: &[&str] = &[
    "/v1/units",
    "/v1/units/{unit}/versions",
    "/v1/rollouts",
    "/v1/tokens",
    "/v1/tokens/{id}/rotate",
    "/v1/freezes",
    "/v1/freezes/now",
    "/v1/maintenance",
    "/v1/webhooks",
    "/v1/slos",
    "/v1/incidents",
    "/v1/nodes/{node}/break-glass",
    "/v1/break-glass/requests",
    "/v1/rollouts/{id}/retry",
];

/// Creates that answer 200 when what they were asked to create exists already (a version
/// pushed again).
const IDEMPOTENT_CREATES: &[&str] = &["/v1/units/{unit}/versions"];

/// Routes that are rate limited (429 while too many are in flight or asked for).
const LIMITED_ROUTES: &[&str] = &["/v1/units/{unit}/versions", "/v1/break-glass/requests"];

/// Paged lists ordered by a number: their `after` cursor is one.
const NUMBERED_PAGES: &[&str] = &["/v1/units/{unit}/versions", "/v1/rollouts", "/v1/tokens"];

/// Routes answering 304 to a matching `If-None-Match`.
const CONDITIONAL_ROUTES: &[&str] = &["/v1/blobs/{sha256}"];

/// The media type of a route's success answer other than JSON.
fn media_type(path: &str) -> Option<&'static str> {
    match path {
        "/" | "/status" => Some("text/html"),
        "/dashboard.js" => Some("text/javascript"),
        "/metrics" | "/v1/units/{unit}/diff" => Some("text/plain"),
        "/v1/changelog.atom" | "/status/feed.atom" => Some("application/atom+xml"),
        "/v1/blobs/{sha256}" => Some("application/octet-stream"),
        _ => None,
    }
}

/// The schema of a path parameter, by its name.
fn path_parameter(name: &str) -> Value {
    let schema = match name {
        "unit" => {
            json!({"type": "string", "pattern": UNIT_NAME_PATTERN, "description": "A unit name"})
        }
        "node" => json!({"type": "string", "pattern": NODE_ID_PATTERN, "description": "A node id"}),
        "hash" | "sha256" => {
            json!({"type": "string", "pattern": HASH_PATTERN, "description": "SHA-256, 64 hex digits"})
        }
        "name" => {
            json!({"type": "string", "pattern": UNIT_NAME_PATTERN, "description": "An SLO name"})
        }
        _ => json!({"type": "integer", "format": "int64", "minimum": 0}),
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
}

/// Every status a route may answer, each with its body.
fn responses(route: &RouteSpec) -> Value {
    let mut responses = serde_json::Map::new();
    let created = route.method == Method::POST && CREATED_ROUTES.contains(&route.path);
    let mut ok = json!({"description": if created { "Created" } else { "OK" }});
    if let (Some(fields), Some(content)) = (ok.as_object_mut(), success_content(route)) {
        fields.insert("content".to_owned(), content);
    }
    if created && IDEMPOTENT_CREATES.contains(&route.path) {
        let mut again = ok.clone();
        if let Some(fields) = again.as_object_mut() {
            fields.insert("description".to_owned(), json!("OK: it existed already"));
        }
        responses.insert("200".to_owned(), again);
    }
    responses.insert((if created { "201" } else { "200" }).to_owned(), ok);
    if CONDITIONAL_ROUTES.contains(&route.path) {
        responses.insert("304".to_owned(), json!({"description": "Not modified"}));
    }
    let writes = route.method != Method::GET;
    let mut errors = vec![("400", "Bad input: path, query or body")];
    if route.access != Access::Public {
        errors.push((
            "401",
            "No bearer token, or an unknown, revoked or expired one",
        ));
        errors.push(("403", "The token's role may not use this route"));
    }
    errors.push(("404", "No such resource"));
    if !writes && !query_parameters(route.path).is_empty() {
        errors.push((
            "422",
            "A query parameter is out of bounds (the reason names it)",
        ));
    }
    if writes {
        errors.push((
            "409",
            "Conflict with the current state (a stale revision, an existing name)",
        ));
        errors.push(("413", "The request body is larger than the server takes"));
        errors.push((
            "422",
            "The request is well-formed but refused (the reason names the field)",
        ));
    }
    if LIMITED_ROUTES.contains(&route.path) {
        errors.push(("429", "Too many requests of this kind at once"));
    }
    errors.push(("500", "The server failed"));
    errors.push(("503", "The store is busy; retry"));
    for (status, description) in errors {
        responses.insert(status.to_owned(), error_response(description));
    }
    Value::Object(responses)
}

/// The content of a route's success answer.
fn success_content(route: &RouteSpec) -> Option<Value> {
    if let Some(media) = media_type(route.path) {
        return Some(json!({ media: {"schema": {"type": "string"}} }));
    }
    let schema = response_schema(&route.method, route.path).unwrap_or_else(|| json!({}));
    Some(json!({"application/json": {"schema": schema}}))
}

/// The OpenAPI document: one operation per route of [`route_table`].
pub fn openapi_document() -> Value {
    let mut document = serde_json::to_value(WireTypes::openapi()).unwrap_or_else(|_| json!({}));
    let mut paths = serde_json::Map::new();
    for route in route_table() {
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(path_parameter)
            .collect();
        if route.method == Method::GET {
            parameters.extend(query_parameters(route.path));
        }
        if route.method == Method::POST && route.path == "/v1/units/{unit}/versions" {
            parameters.extend(push_parameters());
        }
        if route.method == Method::GET && page::PAGED_ROUTES.contains(&route.path) {
            parameters.extend(page::parameters().map(|mut parameter| {
                if parameter.get("name").and_then(Value::as_str) == Some("after")
                    && NUMBERED_PAGES.contains(&route.path)
                    && let Some(schema) = parameter.get_mut("schema")
                {
                    *schema = json!({"type": "string", "pattern": "^[0-9]{0,19}$"});
                }
                parameter
            }));
        }
        let security = if route.access == Access::Public {
            json!([])
        } else {
            json!([{"bearer": []}])
        };
        let mut operation = json!({
            "operationId": format!("{} {}", route.method, route.path),
            "summary": route.summary,
            "parameters": parameters,
            "security": security,
            "x-failsmall-access": route.access,
            "responses": responses(&route),
        });
        if let (Some(body), Some(fields)) = (
            request_body(&route.method, route.path),
            operation.as_object_mut(),
        ) {
            fields.insert("requestBody".to_owned(), body);
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        if let Some(methods) = entry.as_object_mut() {
            methods.insert(route.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    if let Some(fields) = document.as_object_mut() {
        fields.insert("openapi".to_owned(), json!("3.1.0"));
        fields.insert(
            "info".to_owned(),
            json!({"title": "failsmall control plane", "version": env!("CARGO_PKG_VERSION")}),
        );
        fields.insert("paths".to_owned(), Value::Object(paths));
    }
    document
}

/// The query parameters a route takes, for the OpenAPI document.
pub(super) fn query_parameters(path: &str) -> Vec<Value> {
    match path {
        "/v1/changelog" | "/v1/changelog.atom" => vec![
            json!({"name": "unit", "in": "query", "schema": {"type": "string", "pattern": UNIT_NAME_PATTERN}, "description": "Only this unit's entries"}),
            json!({"name": "team", "in": "query", "schema": {"type": "string", "maxLength": MAX_TEXT_BYTES}, "description": "Only entries about the units this team owns (a unit's owner is its team)"}),
            json!({"name": "rollout", "in": "query", "schema": {"type": "string", "pattern": format!("^r?[0-9]{{1,{}}}$", changelog::ROLLOUT_ID_DIGITS_MAX)}, "example": "r3", "description": "Only this rollout's entries (r3 or 3)"}),
            json!({"name": "since_ms", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}, "description": "Only entries at or after this time (ms since the Unix epoch)"}),
            json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_ROWS, "default": CHANGELOG_PAGE_DEFAULT}}),
            json!({"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}, "description": "The next_cursor of the previous page: entries after it oldest first, before it newest first"}),
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
        "/v1/changes" => vec![
            json!({"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}, "description": "The change counter the reader holds: the answer waits while the server's is the same (it restarts at 0 with the server, so compare for equality)"}),
            json!({"name": "wait_ms", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": crate::rollouts::MAX_WATCH_MS, "default": 0}, "description": "How long to wait at most; the answer comes at once on a change or at shutdown"}),
        ],
        "/v1/units/{unit}/diff" => ["from", "to"]
            .map(|name| json!({"name": name, "in": "query", "required": true, "schema": {"type": "string", "pattern": HASH_PATTERN}, "description": "A version's hash"}))
            .to_vec(),
        "/v1/incidents" | "/status" | "/status.json" | "/status/feed.atom" => vec![
            json!({"name": "days", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": incidents::RESOLVED_DAYS_MAX, "default": incidents::RESOLVED_DAYS_DEFAULT}, "description": "Resolved incidents of the last DAYS days (open ones always)"}),
        ],
        _ => Vec::new(),
    }
}

/// The query parameters of a push (`POST /v1/units/{unit}/versions`): its message and the
/// head it was made over; the flags are an admin's (403 otherwise).
fn push_parameters() -> Vec<Value> {
    vec![
        json!({"name": "message", "in": "query", "required": true, "schema": {"type": "string", "maxLength": MAX_TEXT_BYTES}, "description": "What the version changes (the changelog's reason)"}),
        json!({"name": "parent", "in": "query", "schema": {"type": "string", "pattern": HASH_PATTERN}, "description": "The head version the pusher read; another head is 409"}),
        json!({"name": "skip_validation", "in": "query", "schema": {"type": "boolean", "default": false}, "description": "Admin only: store it without running the unit's validator command"}),
        json!({"name": "override_freeze", "in": "query", "schema": {"type": "boolean", "default": false}, "description": "Admin only: roll out during a freeze; the message is the reason"}),
        json!({"name": "override_error_budget", "in": "query", "schema": {"type": "boolean", "default": false}, "description": "Admin only: roll out although the unit's error budget is spent"}),
    ]
}

/// The request body a route takes, where it takes one: its wire type's schema, and whether
/// an empty body is refused (an optional body's every field is optional: empty is `{}`).
fn wire_body(method: &Method, path: &str) -> Option<(&'static str, bool)> {
    let body = match (method.as_str(), path) {
        ("POST", "/v1/units") => ("CreateUnitRequest", true),
        ("PUT", "/v1/units/{unit}") => ("UpdateUnitRequest", true),
        ("POST", "/v1/rollouts") => ("CreateRolloutRequest", true),
        ("POST", "/v1/rollouts/{id}/commands") => ("CommandRequest", true),
        ("POST", "/v1/rollouts/{id}/retry") => ("RetryRequest", false),
        ("POST", "/v1/tokens") => ("CreateTokenRequest", true),
        ("PUT", "/v1/nodes/{node}") => ("RegisterNodeRequest", true),
        ("POST", "/v1/nodes/{node}/break-glass") => ("BreakGlassReport", true),
        ("POST", "/v1/incidents") => ("OpenIncidentRequest", true),
        ("POST", "/v1/incidents/{id}/updates") => ("UpdateIncidentRequest", true),
        ("POST", "/v1/incidents/{id}/resolve") => ("ResolveIncidentRequest", false),
        ("PUT", "/v1/incidents/{id}/review") => ("ReviewIncidentRequest", true),
        ("POST", "/v1/break-glass/requests") => ("ElevationRequest", true),
        ("POST", "/v1/freezes") => ("CreateFreezeRequest", true),
        ("POST", "/v1/maintenance") => ("CreateMaintenanceRequest", true),
        ("POST", "/v1/slos") => ("CreateSloRequest", true),
        ("POST", "/v1/webhooks") => ("CreateWebhookRequest", true),
        ("POST", "/v1/freezes/now") | ("POST", "/v1/units/{unit}/quarantine/{hash}/lift") => {
            ("RequiredReasonRequest", true)
        }
        ("POST", "/v1/rollouts/{id}/approve")
        | ("POST", "/v1/break-glass/requests/{id}/approve")
        | ("POST", "/v1/freezes/{id}/lift")
        | ("POST", "/v1/maintenance/{id}/end")
        | ("DELETE", "/v1/slos/{name}")
        | ("DELETE", "/v1/units/{unit}")
        | ("DELETE", "/v1/nodes/{node}") => ("ReasonRequest", false),
        _ => return None,
    };
    Some(body)
}

/// The request body a route takes, where it takes one.
pub(super) fn request_body(method: &Method, path: &str) -> Option<Value> {
    if method == Method::POST && path == "/v1/units/{unit}/versions" {
        return Some(
            json!({"required": true, "content": {"application/octet-stream": {"schema": {
                "type": "string",
                "format": "binary",
                "description": "The version's bytes, at most the unit's spec.max_bytes and the server's --max-body-bytes (413 past that); they must pass the unit's validation (422 naming every issue)"
            }}}}),
        );
    }
    if method == Method::POST && path == "/v1/nodes/{node}/reports" {
        return Some(
            json!({"required": true, "content": {"application/json": {"schema": {"oneOf": [
                {"$ref": "#/components/schemas/Report"},
                {"$ref": "#/components/schemas/ReportBatch"}
            ]}}}}),
        );
    }
    let (name, required) = wire_body(method, path)?;
    Some(json!({
        "required": required,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}
    }))
}

/// The schema of a route's success answer (200 or 201): the wire type the handler answers
/// with. `None` only for routes whose answer is not JSON ([`media_type`]).
pub(super) fn response_schema(method: &Method, path: &str) -> Option<Value> {
    let name = match (method.as_str(), path) {
        ("GET", "/healthz") => "Health",
        ("GET", "/v1/openapi.json") => "ApiDocument",
        ("GET", "/v1/signing-key") => "SigningKey",
        ("GET", "/v1/root") => "SignedRoot",
        ("GET", "/v1/units") => "UnitList",
        ("POST", "/v1/units") | ("GET" | "PUT", "/v1/units/{unit}") => "Unit",
        ("DELETE", "/v1/units/{unit}") => "UnitDeleted",
        ("GET", "/v1/units/{unit}/versions") => "VersionList",
        ("POST", "/v1/units/{unit}/versions") => "PushedVersion",
        ("GET", "/v1/units/{unit}/versions/{hash}") => "Version",
        ("GET", "/v1/quarantine") => "QuarantineList",
        ("POST", "/v1/units/{unit}/quarantine/{hash}/lift") => "QuarantineLifted",
        ("GET", "/v1/nodes") => "NodeList",
        ("PUT", "/v1/nodes/{node}") | ("POST", "/v1/nodes/{node}/heartbeat") => "Node",
        ("DELETE", "/v1/nodes/{node}") => "NodeRemoved",
        ("GET", "/v1/nodes/{node}/desired") => "DesiredAnswer",
        ("POST", "/v1/nodes/{node}/reports") => "ReportAnswer",
        ("POST", "/v1/nodes/{node}/break-glass") => "BreakGlassRecorded",
        ("GET", "/v1/rollouts") => "RolloutList",
        ("POST", "/v1/rollouts")
        | ("GET", "/v1/rollouts/{id}")
        | ("POST", "/v1/rollouts/{id}/commands")
        | ("POST", "/v1/rollouts/{id}/approve")
        | ("POST", "/v1/rollouts/{id}/retry") => "Rollout",
        ("GET", "/v1/changelog") => "ChangelogPage",
        ("GET", "/v1/changes") => "Changes",
        ("GET", "/v1/changelog/verify") => "ChangelogVerification",
        ("GET", "/v1/whoami") => "WhoAmI",
        ("GET", "/v1/status") => "ServerStatus",
        ("GET", "/v1/tokens") => "TokenList",
        ("POST", "/v1/tokens") | ("POST", "/v1/tokens/{id}/rotate") => "NewToken",
        ("DELETE", "/v1/tokens/{id}") => "Token",
        ("GET", "/v1/freezes") => "FreezeList",
        ("POST", "/v1/freezes") | ("POST", "/v1/freezes/now") => "Freeze",
        ("POST", "/v1/freezes/{id}/lift") => "FreezeLifted",
        ("GET", "/v1/maintenance") => "MaintenanceList",
        ("POST", "/v1/maintenance") => "Maintenance",
        ("POST", "/v1/maintenance/{id}/end") => "MaintenanceEnded",
        ("GET", "/v1/webhooks") => "WebhookList",
        ("POST", "/v1/webhooks") => "Webhook",
        ("DELETE", "/v1/webhooks/{id}") => "WebhookRemoved",
        ("GET", "/v1/notify/dead-letters") => "DeadLetters",
        ("POST", "/v1/notify/dead-letters/{id}/retry") => "DeadLetterRetried",
        ("GET", "/v1/slos") => "SloList",
        ("POST", "/v1/slos") | ("GET", "/v1/slos/{name}") => "Slo",
        ("DELETE", "/v1/slos/{name}") => "SloDeleted",
        ("GET", "/v1/incidents") => "IncidentList",
        ("GET", "/v1/incidents/{id}") => "IncidentDetail",
        ("POST", "/v1/incidents")
        | ("POST", "/v1/incidents/{id}/updates")
        | ("POST", "/v1/incidents/{id}/resolve")
        | ("PUT", "/v1/incidents/{id}/review") => "Incident",
        ("GET", "/status.json") => "PublicStatus",
        ("GET", "/v1/break-glass/requests") => "ElevationList",
        ("POST", "/v1/break-glass/requests")
        | ("GET", "/v1/break-glass/requests/{id}")
        | ("POST", "/v1/break-glass/requests/{id}/approve")
        | ("POST", "/v1/break-glass/requests/{id}/claim") => "Elevation",
        _ => return None,
    };
    Some(json!({"$ref": format!("#/components/schemas/{name}")}))
}

pub(super) async fn openapi() -> Result<axum::Json<ApiDocument>, ApiError> {
    serde_json::from_value(openapi_document())
        .map(axum::Json)
        .map_err(|e| ApiError::internal(format!("the OpenAPI document: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

    #[test]
    fn the_route_table_and_the_document_list_the_same_operations() {
        let document = openapi_document();
        let routes: BTreeSet<(String, String)> = route_table()
            .into_iter()
            .map(|r| (r.method.as_str().to_ascii_lowercase(), r.path.to_owned()))
            .collect();
        let mut operations = BTreeSet::new();
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for (method, _) in item.as_object().into_iter().flatten() {
                assert!(METHODS.contains(&method.as_str()), "{method} {path}");
                operations.insert((method.clone(), path.clone()));
            }
        }
        let missing: Vec<_> = routes.difference(&operations).collect();
        let extra: Vec<_> = operations.difference(&routes).collect();
        assert!(
            missing.is_empty(),
            "routes without an operation: {missing:?}"
        );
        assert!(extra.is_empty(), "operations without a route: {extra:?}");
    }

    #[test]
    fn every_operation_types_its_path_ids_and_documents_its_errors_and_creates() {
        let document = openapi_document();
        let schemas = &document["components"]["schemas"];
        for name in [
            "ErrorBody",
            "ErrorDetail",
            "Node",
            "ChangeEntry",
            "Unit",
            "Report",
        ] {
            assert!(schemas[name].is_object(), "schema {name} is missing");
        }
        assert_eq!(
            document["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for route in route_table() {
            let op = &document["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
            let where_ = format!("{} {}", route.method, route.path);
            for parameter in op["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] != "path" {
                    continue;
                }
                let schema = &parameter["schema"];
                let typed = schema["type"] == "integer" && schema["minimum"] == 0
                    || schema["pattern"].is_string();
                assert!(typed, "{where_}: path parameter {parameter} is not typed");
            }
            let error = &op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(error, "#/components/schemas/ErrorBody", "{where_}");
            if route.access != Access::Public {
                assert!(op["responses"]["401"].is_object(), "{where_}: no 401");
                assert!(op["responses"]["403"].is_object(), "{where_}: no 403");
            }
            let created = route.method == Method::POST && CREATED_ROUTES.contains(&route.path);
            assert_eq!(op["responses"]["201"].is_object(), created, "{where_}");
            let again = created && IDEMPOTENT_CREATES.contains(&route.path);
            assert_eq!(
                op["responses"]["200"].is_object(),
                !created || again,
                "{where_}"
            );
        }
        let page = &document["paths"]["/v1/changelog"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["$ref"];
        assert_eq!(page, "#/components/schemas/ChangelogPage");
        assert!(schemas["ChangeEntry"]["properties"]["team"].is_object());
    }

    #[test]
    fn every_json_answer_names_a_wire_schema_that_exists() {
        let document = openapi_document();
        let schemas = &document["components"]["schemas"];
        let mut undescribed = Vec::new();
        for route in route_table() {
            if media_type(route.path).is_some() {
                continue;
            }
            let op = &document["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
            let created = route.method == Method::POST && CREATED_ROUTES.contains(&route.path);
            let status = if created { "201" } else { "200" };
            let reference =
                op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                    .as_str()
                    .unwrap_or_default();
            let name = reference.strip_prefix("#/components/schemas/");
            match name {
                Some(name) if schemas[name].is_object() => {}
                _ => undescribed.push(format!("{} {}", route.method, route.path)),
            }
        }
        assert!(
            undescribed.is_empty(),
            "JSON answers without a wire schema: {undescribed:?}"
        );
    }

    #[test]
    fn no_answer_schema_is_left_open() {
        // An open-ended field says what it holds: no schema of the document is `{}`.
        let document = openapi_document();
        for (name, schema) in document["components"]["schemas"]
            .as_object()
            .into_iter()
            .flatten()
        {
            assert!(
                schema.as_object().is_some_and(|fields| !fields.is_empty()),
                "schema {name} is empty"
            );
        }
        let rollout = &document["components"]["schemas"]["Rollout"]["properties"];
        for field in ["id", "status", "phase", "gates", "canary", "held_by_freeze"] {
            assert!(
                rollout[field].is_object(),
                "Rollout.{field} is not described"
            );
        }
    }
}
