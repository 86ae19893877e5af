//! Nodes as the operator API shows them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A registered node. `stale_since_ms` is present while the node's latest staleness report
/// says it serves stale configuration: its desired-state document expired then and nothing
/// newer came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// ms since the Unix epoch.
    pub registered_ms: u64,
    /// ms since the Unix epoch.
    pub last_seen_ms: u64,
    /// ms since the Unix epoch; absent while fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_since_ms: Option<u64>,
    /// Per unit, the version the node last reported applied (ACK) and when.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, AppliedVersion>,
}

/// A version a node reported applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppliedVersion {
    pub version: String,
    /// ms since the Unix epoch.
    pub applied_ms: u64,
}

/// `GET /v1/nodes`: one page of nodes, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<Node>,
    /// The `after` of the next page; `null` on the last page.
    pub next: Option<String>,
    /// The server's clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// A node not heard from for this long is down, in ms.
    pub down_after_ms: u64,
}
