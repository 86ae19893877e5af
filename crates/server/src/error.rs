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
        // A 5xx is the server's fault: its cause goes to the log (inside the request's span,
        // with its id), not only to the caller.
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                code = self.code,
                cause = %self.message,
                "request failed"
            );
        }
        let body = failsmall_wire::ErrorBody {
            error: failsmall_wire::ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                detail: self.detail,
            },
        };
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
            // Deposed: agents and clients go to the server that took the lease.
            StoreError::Sql(crate::store::sql::SqlError::Fenced { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message)
            }
            StoreError::Open { .. }
            | StoreError::Sql(_)
            | StoreError::Corrupt { .. }
            | StoreError::Poisoned => ApiError::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log lines written while `f` runs, as text.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_server_error_is_logged_with_its_cause_and_a_client_error_is_not() {
        let text = logged(|| {
            let _ = ApiError::internal("store: disk I/O error on units").into_response();
        });
        assert!(text.contains("ERROR"), "{text}");
        assert!(text.contains("request failed"), "{text}");
        assert!(text.contains("disk I/O error on units"), "{text}");
        assert!(text.contains("status=500"), "{text}");
        let text = logged(|| {
            let _ = ApiError::not_found("no such unit").into_response();
        });
        assert!(text.is_empty(), "{text}");
    }
}
