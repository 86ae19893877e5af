//! The OpenAPI document.

use super::*;

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
pub(super) fn query_parameters(path: &str) -> Vec<Value> {
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
pub(super) fn request_body(method: &Method, path: &str) -> Option<Value> {
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
pub(super) fn response_schema(method: &Method, path: &str) -> Option<Value> {
    (method == Method::GET && path == "/v1/nodes").then(|| {
        json!({"type": "object", "properties": {"nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}})
    })
}

pub(super) async fn openapi() -> axum::Json<Value> {
    axum::Json(openapi_document())
}
