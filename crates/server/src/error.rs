//! The API's one error shape: `{"error": {"code", "message", "detail"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable: `not_found`, `conflict`, `validation_failed`, ...
    pub code: &'static str,
    /// A sentence for people: what failed, on which input, what was expected.
    pub message: String,
    pub detail: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            detail: Value::Null,
        }
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "detail": self.detail}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::NotFound { .. } => ApiError::not_found(message),
            StoreError::Conflict {
                expected, current, ..
            } => ApiError::new(StatusCode::CONFLICT, "conflict", message)
                .with_detail(json!({"expected_revision": expected, "current_revision": current})),
            StoreError::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            StoreError::LastAdmin { id } => {
                ApiError::new(StatusCode::CONFLICT, "last_admin", message)
                    .with_detail(json!({"token": id}))
            }
            StoreError::Injected { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            StoreError::Open { .. }
            | StoreError::Sql(_)
            | StoreError::Corrupt { .. }
            | StoreError::Poisoned => ApiError::internal(message),
        }
    }
}
