//! The control plane's HTTP wire types: request and response bodies as the server sends and
//! takes them, apart from the server's domain types (store rows, engine views), which convert
//! into them with `From`/`TryFrom` in the server. Each derives [`utoipa::ToSchema`]; the
//! server's OpenAPI document (`GET /v1/openapi.json`) is generated from them.
//!
//! Field names and JSON shapes are a contract with agents and the CLI in the field: a rename
//! here is a breaking change.

pub mod changelog;
pub mod changes;
pub mod elevations;
pub mod error;
pub mod incidents;
pub mod int;
pub mod limits;
pub mod nodes;
pub mod notify;
pub mod operator;
pub mod public;
pub mod quarantine;
pub mod reports;
pub mod requests;
pub mod rollouts;
pub(crate) mod schema;
pub mod slos;
pub mod tokens;
pub mod trust;
pub mod units;
pub mod versions;
pub mod windows;

pub use changelog::{ChangeEntry, ChangelogPage};
pub use changes::Changes;
pub use error::{ErrorBody, ErrorDetail};
pub use nodes::{AppliedVersion, Node, NodeList};
pub use public::{ApiDocument, Health, SigningKey};
pub use versions::Version;

/// A unit name's pattern (as `failsmall_core::domain::UnitName` checks it, at most 64 bytes).
pub const UNIT_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
/// A node id's pattern (as `failsmall_core::domain::NodeId` checks it, at most 128 bytes).
pub const NODE_ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";
/// A version hash or blob digest: SHA-256 as 64 hex digits.
pub const HASH_PATTERN: &str = "^[0-9a-fA-F]{64}$";
