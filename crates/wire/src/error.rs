//! The API's one error shape: `{"error": {"code", "message", "detail"}}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every 4xx and 5xx answer's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `conflict`, `invalid_spec`, ...
    pub code: String,
    /// A sentence for people: what failed, on which input, what was expected.
    pub message: String,
    /// More about the failure (the fields at fault, the expected values); `null` when none.
    #[schema(value_type = Object, nullable = true)]
    pub detail: serde_json::Value,
}
