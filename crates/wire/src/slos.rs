//! SLOs: the body that defines one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

fn yes() -> bool {
    true
}

/// Good and total events from PromQL counters, read from a Prometheus server. The URL is
/// `http://` or `https://` with no query, fragment or whitespace (422 naming `prometheus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SloQueries {
    #[schema(pattern = "^https?://")]
    pub url: String,
    #[schema(min_length = 1)]
    pub good: String,
    #[schema(min_length = 1)]
    pub total: String,
}

/// An SLO's name: 1 to 64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit.
pub const SLO_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";

/// `POST /v1/slos`. The window is a whole number of hours or days from `1h` to `90d` (422
/// naming `window` outside that); the target is a percentage strictly between 0 and 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSloRequest {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub name: String,
    #[schema(schema_with = crate::schema::unit_name)]
    pub unit: String,
    /// Only the health of nodes carrying every one of these labels counts.
    #[serde(default)]
    #[schema(schema_with = crate::schema::labels)]
    pub selector: BTreeMap<String, String>,
    #[schema(exclusive_minimum = 0, exclusive_maximum = 100)]
    pub target_percent: f64,
    #[schema(pattern = "^[0-9]{1,6}[dh]$")]
    pub window: String,
    #[serde(default = "yes")]
    pub block_rollouts_when_exhausted: bool,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub description: String,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub reason: String,
    #[serde(default)]
    pub prometheus: Option<SloQueries>,
}

/// An SLO and where it stands: `POST /v1/slos` and `GET /v1/slos/{name}` answer with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Slo {
    pub name: String,
    pub unit: String,
    /// Only the health of nodes carrying every one of these labels counts.
    pub selector: BTreeMap<String, String>,
    pub target_percent: f64,
    /// The window as written (`30d`, `12h`).
    pub window: String,
    pub window_ms: u64,
    pub block_rollouts_when_exhausted: bool,
    pub description: String,
    /// The PromQL counters it reads instead of the agents' health; `null`: the agents'.
    pub prometheus: Option<SloQueries>,
    /// Events over the window.
    pub events_total: u64,
    /// Bad events over the window.
    pub events_bad: u64,
    /// Good events' share over the window, in percent; `null` without events.
    pub attained_percent: Option<f64>,
    /// The error budget left: 1 untouched, 0 spent, below 0 overspent.
    pub error_budget_remaining: f64,
    /// The budget is spent.
    pub exhausted: bool,
    /// Burn rate per window (`5m`, `30m`, `1h`, `2h`, `6h`, `1d`, `3d`); `null` for a window
    /// without events.
    pub burn_rates: BTreeMap<String, Option<f64>>,
    /// The alerts that fire now (severity and windows).
    pub alerts: Vec<String>,
}

/// `GET /v1/slos`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SloList {
    pub slos: Vec<Slo>,
}

/// `DELETE /v1/slos/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SloDeleted {
    /// The SLO's name.
    pub deleted: String,
}

impl From<failsmall_core::slo::SloQueries> for SloQueries {
    fn from(queries: failsmall_core::slo::SloQueries) -> Self {
        Self {
            url: queries.url,
            good: queries.good,
            total: queries.total,
        }
    }
}
