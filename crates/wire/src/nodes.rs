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

/// `DELETE /v1/nodes/{node}`: the node left the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeRemoved {
    pub node: String,
    /// Always `true`.
    pub removed: bool,
}

/// How many reports were accepted: `true` for one report, the count for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Accepted {
    /// One report (always `true`).
    One(bool),
    /// A batch: how many reports it held.
    Batch(u64),
}

/// `POST /v1/nodes/{node}/reports`: the reports were applied (a batch whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReportAnswer {
    pub accepted: Accepted,
    /// Engine actions the reports led to (a rollback, a stage passed, ...).
    pub actions: u64,
}

/// `POST /v1/nodes/{node}/break-glass`: the order's changelog entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BreakGlassRecorded {
    pub changelog_id: u64,
}

/// `GET /v1/nodes/{node}/desired`: what the node should run, signed. `document` is the
/// signed text itself (a JSON object: `node`, `seq`, `epoch`, `units` (unit → version
/// hash), `expires_ms`, `specs`, `versions` (unit → version signature), and when not empty
/// `health_checks`, `removed`, `trial`, `stable`); agents verify `signature` over those
/// exact bytes before parsing them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesiredAnswer {
    /// The engine revision the document was built at (`after` of the next long poll).
    pub seq: u64,
    /// Ed25519 signature (hex) over `document`'s bytes.
    pub signature: String,
    /// The desired-state document, as signed text.
    pub document: String,
    /// The online public key (hex) that signed it.
    pub key: String,
    /// The version of the root document the server runs under; `null` without a root.
    pub root_version: Option<u64>,
}
