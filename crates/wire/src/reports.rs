//! What agents send about their node: reports (one, or a batch) and break-glass uses.

use failsmall_core::health::LATENCY_BUCKETS;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One report from a node, by `kind`. `applied`, `rejected`, `crashed`,
/// `health_check_failed` and `health` are engine events about a unit's version. `stale`
/// (`since_ms`: when the node's desired-state document expired, at most a minute after the
/// server's clock; `seq`: that document's sequence) and `fresh` (`stale_ms`: how long it was
/// stale, at most a year) mark the node. `removed` ends a removal the node's document asked
/// for. `fetch_failed`, `untrusted` and `repaired` are changelog notes. A field out of its
/// bounds (a unit, a version hash, a time) is 422 naming it; reports on an unregistered node
/// are 404.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Report {
    Applied {
        #[schema(schema_with = crate::schema::unit_name)]
        unit: String,
        #[schema(schema_with = crate::schema::hash)]
        version: String,
    },
    Rejected {
        #[schema(schema_with = crate::schema::unit_name)]
        unit: String,
        #[schema(schema_with = crate::schema::hash)]
        version: String,
        #[schema(schema_with = crate::schema::text)]
        reason: String,
    },
    Crashed {
        #[schema(schema_with = crate::schema::unit_name)]
        unit: String,
        #[schema(schema_with = crate::schema::hash)]
        version: String,
        #[schema(schema_with = crate::schema::text)]
        reason: String,
    },
    HealthCheckFailed {
        #[schema(schema_with = crate::schema::unit_name)]
        unit: String,
        #[schema(schema_with = crate::schema::hash)]
        version: String,
        #[schema(schema_with = crate::schema::text)]
        reason: String,
    },
    /// `sample`: what the node saw over the agent's last interval.
    Health {
        #[schema(schema_with = crate::schema::unit_name)]
        unit: String,
        #[schema(schema_with = crate::schema::hash)]
        version: String,
        sample: HealthSample,
    },
    Stale {
        #[serde(deserialize_with = "crate::int::u64")]
        #[schema(schema_with = crate::schema::uint)]
        since_ms: u64,
        #[serde(deserialize_with = "crate::int::u64")]
        #[schema(schema_with = crate::schema::uint)]
        seq: u64,
    },
    Fresh {
        #[serde(deserialize_with = "crate::int::u64")]
        #[schema(schema_with = stale_ms)]
        stale_ms: u64,
    },
    Removed {
        #[schema(schema_with = crate::schema::unit_name)]
        unit: String,
        #[serde(default)]
        #[schema(schema_with = crate::schema::optional_hash)]
        version: Option<String>,
    },
    FetchFailed {
        #[schema(schema_with = crate::schema::unit_name)]
        unit: String,
        #[schema(schema_with = crate::schema::hash)]
        version: String,
        #[schema(schema_with = crate::schema::text)]
        reason: String,
    },
    Untrusted {
        #[serde(deserialize_with = "crate::int::u64")]
        #[schema(schema_with = crate::schema::uint)]
        seq: u64,
        #[schema(schema_with = crate::schema::text)]
        reason: String,
    },
    Repaired {
        #[schema(schema_with = crate::schema::unit_name)]
        unit: String,
        #[schema(schema_with = crate::schema::hash)]
        version: String,
        #[schema(schema_with = crate::schema::text)]
        reason: String,
    },
}

/// Longest staleness a fresh report may carry: a year.
pub const STALE_MAX_MS: u64 = 366 * 24 * 60 * 60 * 1000;

fn stale_ms() -> utoipa::openapi::Schema {
    crate::schema::count_from(0, STALE_MAX_MS)
}

/// Most reports in one batch.
pub const REPORTS_PER_BATCH_MAX: usize = 1000;

/// A batch of reports, applied in order as one engine step: all of it, or none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBatch {
    #[schema(schema_with = report_list)]
    pub reports: Vec<Report>,
}

fn report_list() -> utoipa::openapi::Schema {
    crate::schema::array_of::<Report>(REPORTS_PER_BATCH_MAX, 1)
}

/// Most signers named in one break-glass report.
pub const BREAK_GLASS_SIGNERS_MAX: usize = 32;

/// `POST /v1/nodes/{node}/break-glass`: one use of a break-glass order, as the agent logged
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassReport {
    #[schema(schema_with = crate::schema::text)]
    pub nonce: String,
    #[schema(schema_with = crate::schema::text)]
    pub reason: String,
    #[schema(schema_with = crate::schema::unit_name)]
    pub unit: String,
    /// The version the node serves after the order, if any.
    #[serde(default)]
    #[schema(schema_with = crate::schema::optional_hash)]
    pub version: Option<String>,
    /// What the agent did (or why it could not).
    #[schema(schema_with = crate::schema::text)]
    pub outcome: String,
    /// When the node applied it, and when the order stops being in force (ms).
    #[serde(deserialize_with = "crate::int::u64")]
    #[schema(schema_with = crate::schema::uint)]
    pub at_ms: u64,
    #[serde(deserialize_with = "crate::int::u64")]
    #[schema(schema_with = crate::schema::uint)]
    pub expires_ms: u64,
    /// The break-glass keys that signed the order.
    #[schema(schema_with = signer_list)]
    pub signers: Vec<String>,
}

fn signer_list() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    let key = ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .build();
    utoipa::openapi::Schema::Array(
        ArrayBuilder::new()
            .items(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(
                key,
            )))
            .max_items(Some(BREAK_GLASS_SIGNERS_MAX))
            .build(),
    )
}

/// Requests, errors (counted at most as many as requests) and the latency histogram of one
/// unit's version on one node over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthSample {
    #[serde(deserialize_with = "crate::int::u64")]
    #[schema(schema_with = crate::schema::uint)]
    pub requests: u64,
    #[serde(deserialize_with = "crate::int::u64")]
    #[schema(schema_with = crate::schema::uint)]
    pub errors: u64,
    pub latency: LatencyHistogram,
}

/// Request counts per latency bucket (the buckets' bounds are fixed: `LATENCY_BUCKETS`
/// counts, the last one open-ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LatencyHistogram {
    #[serde(deserialize_with = "crate::int::u64_array")]
    #[schema(schema_with = latency_counts)]
    pub counts: [u64; LATENCY_BUCKETS],
}

fn latency_counts() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    let count = ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Integer))
        .minimum(Some(0))
        .build();
    utoipa::openapi::Schema::Array(
        ArrayBuilder::new()
            .items(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(
                count,
            )))
            .min_items(Some(LATENCY_BUCKETS))
            .max_items(Some(LATENCY_BUCKETS))
            .build(),
    )
}
