//! The caller and the server: `GET /v1/whoami`, `GET /v1/status`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::requests::Role;

/// `GET /v1/whoami`: the caller's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The person (or service) acting: the token's owner, else its name.
    pub name: String,
    /// The token's own name.
    pub token: String,
    pub role: Option<Role>,
    /// The node an agent token is bound to.
    pub node: Option<String>,
}

/// The server's side of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// The server's version.
    pub version: String,
    /// The server's clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// A node not heard from for this long is down, in ms.
    pub node_down_after_ms: u64,
    /// How long a desired-state document stays fresh, in ms.
    pub desired_ttl_ms: u64,
}

/// The store's side of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoreInfo {
    /// Always `sqlite`.
    pub kind: String,
    /// Migrations applied.
    pub schema_version: u64,
    /// The engine's state revision (the change counter).
    pub engine_revision: u64,
    pub blob_bytes: u64,
    pub changelog_entries: u64,
}

/// What the server holds, counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusCounts {
    pub units: u64,
    pub versions: u64,
    /// Registered nodes.
    pub nodes: u64,
    /// Nodes the rollout engine knows.
    pub nodes_in_engine: u64,
    pub nodes_down: u64,
    /// Nodes whose latest report says they serve stale configuration.
    pub nodes_stale: u64,
    /// Quarantined versions.
    pub quarantined: u64,
    /// Rollouts the engine keeps, by status (every status, 0 included).
    pub rollouts: BTreeMap<String, u64>,
}

/// `GET /v1/status`: the server, its store, and counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerStatus {
    pub server: ServerInfo,
    /// Who leads: this server (one control plane over its own store).
    pub leader: String,
    pub store: StoreInfo,
    pub counts: StatusCounts,
}
