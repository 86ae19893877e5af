//! Input conversion: path, query and body extraction with 4xx errors, and domain checks.

use super::*;

pub(super) fn path_param<T>(param: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    param
        .map(|Path(value)| value)
        .map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))
}

pub(super) fn query_param<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(value)| value)
        .map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))
}

pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        ApiError::new(e.status(), code, format!("body: {}", e.body_text()))
    })
}

pub(super) fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    // Every body is a JSON object; serde would also read a struct from an array of its fields.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "body: expected a JSON object, found an array",
        ));
    }
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

/// A body whose every field is optional: an empty body is the default.
pub(super) fn optional_json_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    if body.as_ref().is_ok_and(|bytes| bytes.is_empty()) {
        return Ok(T::default());
    }
    json_body(body)
}

pub(super) fn unit_name(name: &str) -> Result<UnitName, ApiError> {
    UnitName::new(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_unit_name", e.to_string()))
}

pub(super) fn version_hash(hash: &str) -> Result<VersionHash, ApiError> {
    hash.parse::<VersionHash>()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_version_hash", e.to_string()))
}

pub(super) fn text_field(field: &str, value: &str) -> Result<(), ApiError> {
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
pub(super) fn parse_plan(plan_file: &str, text: &str) -> Result<Plan, ApiError> {
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
pub(super) fn raw_spec(body: &Result<Bytes, BytesRejection>) -> Option<Value> {
    let bytes = body.as_ref().ok()?;
    serde_json::from_slice::<Value>(bytes)
        .ok()?
        .get("spec")
        .cloned()
}

/// The file name a unit's plan is reported under.
pub(super) fn unit_plan_file(unit: &str) -> String {
    format!("{unit}.plan")
}

pub(super) fn check_spec(spec: &UnitSpec, body_limit: BodyLimit) -> Result<(), ApiError> {
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
