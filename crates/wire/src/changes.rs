//! The store's change counter, for readers that wait for the next change (the dashboard).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/changes`: how many calls have changed the server's store since it started. It only
/// grows while the server runs and starts again at 0 when it restarts, so a reader compares it
/// for equality, not order: any other number than the one it holds means "read again".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Changes {
    pub change: u64,
}
