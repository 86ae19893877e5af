//! OFREP, the OpenFeature Remote Evaluation Protocol, on the local API: any OpenFeature SDK's
//! OFREP provider reads the flags of the units named by `--ofrep-unit`, evaluated from the
//! version *active on this node* — what the rollout brought here, gradually.
//!
//! - `POST /ofrep/v1/evaluate/flags/{key}` `{"context": {...}}`: one flag. 200
//!   `{"key", "reason", "variant", "value", "metadata"}`; 404 `FLAG_NOT_FOUND`; 400
//!   `INVALID_CONTEXT` (the body is not JSON, `context` not an object, `targetingKey` not a
//!   string), `TARGETING_KEY_MISSING` (a `fractional` needs it), `PARSE_ERROR` (the active
//!   version does not read as a flag set and no earlier one did), `GENERAL` (the key is in
//!   two served units, or targeting names no variant).
//! - `POST /ofrep/v1/evaluate/flags` `{"context": {...}}`: every flag, `{"flags": [...]}`,
//!   each a result or an error with its key; an `ETag` that changes with the active versions
//!   and the context, so `If-None-Match` with it answers 304 until either changes.
//!
//! Reasons: `STATIC` (no targeting), `TARGETING_MATCH`, `SPLIT` (a `fractional` chose),
//! `DEFAULT` (targeting matched nothing), `DISABLED` (the flag is disabled: no `value` and
//! a null `variant`, so the caller's own default applies). Each result's `metadata` holds the
//! flag set's and the flag's metadata, and `failsmallUnit` and `failsmallVersion` (the
//! active version's short hash).
//!
//! Fail stale: each unit's flags are read once per active version. A version that does not
//! read as a flag set (possible only for a unit that does not declare `shape: flag_set`;
//! one that does is refused before activation) is logged once and the last flags read are
//! served on; a unit removed from the node serves no flags.

// Handlers return early with a ready response; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use failsmall_core::domain::{UnitName, VersionHash};
use failsmall_core::flags::{FlagSet, Reason, ResolveError};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::Shared;

/// Largest OFREP request body (an evaluation context), in bytes.
pub const OFREP_BODY_MAX_BYTES: usize = 64 * 1024;
/// At most this many units are served over OFREP.
pub const OFREP_UNITS_MAX: usize = 64;

/// A unit's flags as last read, per unit served.
#[derive(Debug, Clone)]
struct Loaded {
    hash: VersionHash,
    set: Arc<FlagSet>,
}

#[derive(Debug, Default)]
struct Cache {
    loaded: BTreeMap<UnitName, Loaded>,
    /// The latest active version of each unit that did not read (logged once).
    unreadable: BTreeMap<UnitName, VersionHash>,
}

#[derive(Clone)]
struct OfrepState {
    shared: Arc<Shared>,
    units: Arc<Vec<UnitName>>,
    cache: Arc<Mutex<Cache>>,
}

/// What one unit serves for one request.
#[derive(Debug, Clone)]
enum Served {
    Flags(Loaded),
    /// No active version on this node.
    Absent,
    /// The active version does not read, and no earlier one did.
    Unreadable {
        hash: VersionHash,
        reason: String,
    },
}

/// Every served unit, as of one request.
struct Snapshot {
    units: Vec<(UnitName, Served)>,
}

/// The OFREP routes (their own body limit), merged into the local API.
pub fn router(shared: Arc<Shared>, units: &[UnitName]) -> Router {
    Router::new()
        .route("/ofrep/v1/evaluate/flags", post(bulk))
        .route("/ofrep/v1/evaluate/flags/{key}", post(single))
        .layer(DefaultBodyLimit::max(OFREP_BODY_MAX_BYTES))
        .with_state(OfrepState {
            shared,
            units: Arc::new(units.to_vec()),
            cache: Arc::new(Mutex::new(Cache::default())),
        })
}

fn general(status: StatusCode, details: String) -> Response {
    (status, axum::Json(json!({"errorDetails": details}))).into_response()
}

fn failure(status: StatusCode, key: &str, code: &str, details: String) -> Response {
    (
        status,
        axum::Json(json!({"key": key, "errorCode": code, "errorDetails": details})),
    )
        .into_response()
}

impl OfrepState {
    /// Reads each served unit's active version (once per version) into a snapshot, off the
    /// async threads (reading and parsing a version is disk and CPU work).
    async fn snapshot(&self) -> Result<Snapshot, Response> {
        let (disk, units, cache) = (
            self.shared.disk.clone(),
            self.units.clone(),
            self.cache.clone(),
        );
        tokio::task::spawn_blocking(move || read_snapshot(&disk, &units, &cache))
            .await
            .map_err(|e| general(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| general(StatusCode::INTERNAL_SERVER_ERROR, e))
    }
}

fn read_snapshot(
    disk: &crate::disk::DataDir,
    units: &[UnitName],
    cache: &Mutex<Cache>,
) -> Result<Snapshot, String> {
    let current = units
        .iter()
        .map(|unit| disk.current(unit).map(|c| (unit.clone(), c)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut cache = cache
        .lock()
        .map_err(|_| "the OFREP cache is poisoned".to_owned())?;
    let mut out = Vec::with_capacity(current.len());
    for (unit, active) in current {
        let Some((bytes, hash)) = active else {
            cache.loaded.remove(&unit);
            cache.unreadable.remove(&unit);
            out.push((unit, Served::Absent));
            continue;
        };
        if let Some(loaded) = cache.loaded.get(&unit)
            && loaded.hash == hash
        {
            out.push((unit, Served::Flags(loaded.clone())));
            continue;
        }
        match FlagSet::read(&bytes) {
            Ok(set) => {
                let loaded = Loaded {
                    hash,
                    set: Arc::new(set),
                };
                tracing::info!(%unit, version = %hash.short(), flags = loaded.set.flags.len(), "OFREP serves a new flag set");
                cache.loaded.insert(unit.clone(), loaded.clone());
                cache.unreadable.remove(&unit);
                out.push((unit, Served::Flags(loaded)));
            }
            Err(errors) => {
                let reason = errors
                    .iter()
                    .take(5)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                if cache.unreadable.insert(unit.clone(), hash) != Some(hash) {
                    tracing::warn!(%unit, version = %hash.short(), %reason, "the active version does not read as a flag set; OFREP serves the last flags read, if any");
                }
                match cache.loaded.get(&unit) {
                    Some(stale) => out.push((unit, Served::Flags(stale.clone()))),
                    None => out.push((unit, Served::Unreadable { hash, reason })),
                }
            }
        }
    }
    Ok(Snapshot { units: out })
}

impl Snapshot {
    /// The units whose flags hold `key`.
    fn holders(&self, key: &str) -> Vec<(&UnitName, &Loaded)> {
        self.units
            .iter()
            .filter_map(|(unit, served)| match served {
                Served::Flags(loaded) if loaded.set.flags.contains_key(key) => Some((unit, loaded)),
                _ => None,
            })
            .collect()
    }

    fn unreadable(&self) -> Vec<String> {
        self.units
            .iter()
            .filter_map(|(unit, served)| match served {
                Served::Unreadable { hash, reason } => Some(format!(
                    "unit {unit} version {} does not read as a flag set: {reason}",
                    hash.short()
                )),
                _ => None,
            })
            .collect()
    }

    /// The validator of what a bulk evaluation answers: the served units' versions and the
    /// context.
    fn etag(&self, context: &Map<String, Value>) -> String {
        let mut digest = Sha256::new();
        for (unit, served) in &self.units {
            let state = match served {
                Served::Flags(loaded) => loaded.hash.to_string(),
                Served::Absent => "absent".to_owned(),
                Served::Unreadable { hash, .. } => format!("unreadable {hash}"),
            };
            digest.update(format!("{unit} {state}\n"));
        }
        digest.update(serde_json::to_vec(context).unwrap_or_default());
        let hex = hex::encode(digest.finalize());
        format!("\"{}\"", hex.get(..32).unwrap_or(&hex))
    }
}

/// One evaluation: the success body, or (status, error code, details).
fn evaluate(
    snapshot: &Snapshot,
    key: &str,
    context: &Map<String, Value>,
) -> Result<Value, (StatusCode, &'static str, String)> {
    let holders = snapshot.holders(key);
    let (unit, loaded) = match holders.as_slice() {
        [] => {
            let unreadable = snapshot.unreadable();
            if !unreadable.is_empty() {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "PARSE_ERROR",
                    format!(
                        "flag {key:?} is not in any flag set that reads; {}",
                        unreadable.join("; ")
                    ),
                ));
            }
            let served: Vec<String> = snapshot
                .units
                .iter()
                .map(|(unit, served)| match served {
                    Served::Absent => format!("{unit} (no active version on this node)"),
                    _ => unit.to_string(),
                })
                .collect();
            let details = if served.is_empty() {
                format!("flag {key:?} not found: this agent serves no flag units (--ofrep-unit)")
            } else {
                format!(
                    "flag {key:?} is not in the flag units served here: {}",
                    served.join(", ")
                )
            };
            return Err((StatusCode::NOT_FOUND, "FLAG_NOT_FOUND", details));
        }
        [one] => *one,
        many => {
            let names: Vec<String> = many.iter().map(|(unit, _)| unit.to_string()).collect();
            return Err((
                StatusCode::BAD_REQUEST,
                "GENERAL",
                format!(
                    "flag {key:?} is defined by units {}; a flag key may be in one served unit only",
                    names.join(" and ")
                ),
            ));
        }
    };
    let resolution = loaded
        .set
        .resolve(key, context)
        .map_err(|error| match error {
            ResolveError::NotFound { .. } => {
                (StatusCode::NOT_FOUND, "FLAG_NOT_FOUND", error.to_string())
            }
            ResolveError::TargetingKeyMissing { .. } => (
                StatusCode::BAD_REQUEST,
                "TARGETING_KEY_MISSING",
                error.to_string(),
            ),
            ResolveError::NoSuchVariant { .. } => {
                (StatusCode::BAD_REQUEST, "GENERAL", error.to_string())
            }
        })?;
    let mut metadata = loaded.set.metadata.clone();
    if let Some(flag) = loaded.set.flags.get(key) {
        metadata.extend(flag.metadata.clone());
    }
    metadata.insert("failsmallUnit".to_owned(), Value::String(unit.to_string()));
    metadata.insert(
        "failsmallVersion".to_owned(),
        Value::String(loaded.hash.short().to_string()),
    );
    let mut body = Map::new();
    body.insert("key".to_owned(), Value::String(key.to_owned()));
    body.insert(
        "reason".to_owned(),
        Value::String(resolution.reason.as_str().to_owned()),
    );
    body.insert(
        "variant".to_owned(),
        resolution.variant.map_or(Value::Null, Value::String),
    );
    if let Some(value) = resolution.value
        && resolution.reason != Reason::Disabled
    {
        body.insert("value".to_owned(), value);
    }
    body.insert("metadata".to_owned(), Value::Object(metadata));
    Ok(Value::Object(body))
}

/// The request's evaluation context (`targetingKey` among its attributes), or why not.
fn context_of(
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, (StatusCode, String)> {
    let body = body.map_err(|e| (e.status(), format!("body: {}", e.body_text())))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let request: Value = serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON ({e}); expected {{\"context\": {{...}}}}"),
        )
    })?;
    let Value::Object(mut request) = request else {
        return Err((
            StatusCode::BAD_REQUEST,
            "the body is not a JSON object; expected {\"context\": {...}}".to_owned(),
        ));
    };
    let context = match request.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(context)) => context,
        Some(other) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("context is {other}; expected an object"),
            ));
        }
    };
    match context.get("targetingKey") {
        None | Some(Value::String(_)) => Ok(context),
        Some(other) => Err((
            StatusCode::BAD_REQUEST,
            format!("context.targetingKey is {other}; expected a string"),
        )),
    }
}

async fn single(
    State(state): State<OfrepState>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let key = match key {
        Ok(Path(key)) => key,
        Err(e) => {
            return general(StatusCode::BAD_REQUEST, format!("path: {}", e.body_text()));
        }
    };
    let context = match context_of(body) {
        Ok(context) => context,
        Err((status, details)) if status == StatusCode::BAD_REQUEST => {
            return failure(status, &key, "INVALID_CONTEXT", details);
        }
        Err((status, details)) => return general(status, details),
    };
    let snapshot = match state.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(response) => return response,
    };
    match evaluate(&snapshot, &key, &context) {
        Ok(body) => axum::Json(body).into_response(),
        Err((status, code, details)) => failure(status, &key, code, details),
    }
}

/// Whether `If-None-Match` holds `etag` (or `*`).
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

async fn bulk(
    State(state): State<OfrepState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let context = match context_of(body) {
        Ok(context) => context,
        Err((status, details)) if status == StatusCode::BAD_REQUEST => {
            return (
                status,
                axum::Json(json!({"errorCode": "INVALID_CONTEXT", "errorDetails": details})),
            )
                .into_response();
        }
        Err((status, details)) => return general(status, details),
    };
    let snapshot = match state.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(response) => return response,
    };
    let etag = snapshot.etag(&context);
    let etag_value = HeaderValue::from_str(&etag).ok();
    if matches(&headers, &etag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Some(value) = etag_value {
            response.headers_mut().insert(header::ETAG, value);
        }
        return response;
    }
    let mut keys: Vec<&String> = snapshot
        .units
        .iter()
        .filter_map(|(_, served)| match served {
            Served::Flags(loaded) => Some(loaded.set.flags.keys()),
            _ => None,
        })
        .flatten()
        .collect();
    keys.sort();
    keys.dedup();
    let flags: Vec<Value> = keys
        .into_iter()
        .map(|key| match evaluate(&snapshot, key, &context) {
            Ok(body) => body,
            Err((_, code, details)) => {
                json!({"key": key, "errorCode": code, "errorDetails": details})
            }
        })
        .collect();
    let mut metadata = Map::new();
    let unreadable = snapshot.unreadable();
    if !unreadable.is_empty() {
        metadata.insert(
            "failsmallUnreadable".to_owned(),
            Value::String(unreadable.join("; ")),
        );
    }
    let mut response = axum::Json(json!({"flags": flags, "metadata": metadata})).into_response();
    if let Some(value) = etag_value {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn loaded(document: Value) -> Served {
        let bytes = serde_json::to_vec(&document).unwrap();
        Served::Flags(Loaded {
            hash: VersionHash::of(&bytes),
            set: Arc::new(FlagSet::read(&bytes).unwrap()),
        })
    }

    fn flag(value: Value) -> Value {
        json!({"state": "ENABLED", "variants": {"only": value}, "defaultVariant": "only"})
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            units: vec![
                (
                    "web".parse().unwrap(),
                    loaded(json!({"flags": {"a": flag(json!(1)), "both": flag(json!(true))}})),
                ),
                (
                    "api".parse().unwrap(),
                    loaded(json!({"flags": {"b": flag(json!("x")), "both": flag(json!(false))}})),
                ),
                ("gone".parse().unwrap(), Served::Absent),
            ],
        }
    }

    #[test]
    fn flags_of_several_units_merge_and_a_key_in_two_is_an_error_naming_both() {
        let snapshot = snapshot();
        let context = Map::new();
        let a = evaluate(&snapshot, "a", &context).unwrap();
        assert_eq!(
            (&a["value"], &a["reason"], &a["metadata"]["failsmallUnit"]),
            (&json!(1), &json!("STATIC"), &json!("web"))
        );
        let b = evaluate(&snapshot, "b", &context).unwrap();
        assert_eq!(b["metadata"]["failsmallUnit"], "api");
        let (status, code, details) = evaluate(&snapshot, "both", &context).unwrap_err();
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, "GENERAL"));
        assert!(details.contains("units web and api"), "{details}");
        let (status, code, details) = evaluate(&snapshot, "nope", &context).unwrap_err();
        assert_eq!((status, code), (StatusCode::NOT_FOUND, "FLAG_NOT_FOUND"));
        assert!(
            details.contains("gone (no active version on this node)"),
            "{details}"
        );
        let unreadable = Snapshot {
            units: vec![(
                "web".parse().unwrap(),
                Served::Unreadable {
                    hash: VersionHash::of(b"x"),
                    reason: "/flags: expected an object".into(),
                },
            )],
        };
        let (status, code, details) = evaluate(&unreadable, "a", &context).unwrap_err();
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, "PARSE_ERROR"));
        assert!(details.contains("does not read as a flag set"), "{details}");
    }

    #[test]
    fn a_context_is_an_object_with_a_string_targeting_key() {
        let ok = |body: &str| context_of(Ok(Bytes::from(body.to_owned())));
        assert_eq!(ok("").unwrap(), Map::new());
        assert_eq!(ok("{}").unwrap(), Map::new());
        assert_eq!(
            ok(r#"{"context": {"targetingKey": "k", "a": 1}}"#)
                .unwrap()
                .len(),
            2
        );
        for bad in [
            "nope",
            "[]",
            r#"{"context": 3}"#,
            r#"{"context": {"targetingKey": 7}}"#,
        ] {
            let (status, details) = ok(bad).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {details}");
        }
    }

    #[test]
    fn the_etag_follows_versions_and_context_and_if_none_match_reads_lists() {
        let snapshot = snapshot();
        let empty = Map::new();
        let mut other = Map::new();
        other.insert("targetingKey".into(), json!("k"));
        let etag = snapshot.etag(&empty);
        assert_eq!(etag, snapshot.etag(&empty));
        assert_ne!(etag, snapshot.etag(&other));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{etag}")).unwrap(),
        );
        assert!(matches(&headers, &etag));
        assert!(!matches(&headers, "\"y\""));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches(&headers, "\"y\""));
    }
}
