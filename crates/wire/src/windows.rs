//! Freezes and maintenance windows. Times are RFC 3339 (`2026-12-24T00:00:00Z`); a window
//! that ends before it starts, or an unknown time zone, is 422 naming the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a freeze holds back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum FreezeScope {
    /// Every rollout.
    Global,
    /// One unit's rollouts.
    Unit {
        #[schema(schema_with = crate::schema::unit_name)]
        unit: String,
    },
    /// Rollouts reaching the nodes the selector admits.
    Nodes {
        #[schema(schema_with = crate::schema::selector)]
        selector: BTreeMap<String, Vec<String>>,
    },
}

/// When a freeze holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum FreezeWindow {
    /// From `from` (default: now) until `until` (default: until lifted).
    Once {
        #[serde(default)]
        #[schema(format = DateTime)]
        from: Option<String>,
        #[serde(default)]
        #[schema(format = DateTime)]
        until: Option<String>,
    },
    /// Every week on `days` (`mon` ... `sun`) from `start` to `end` (`HH:MM`, 00:00 to
    /// 24:00) in an IANA `time_zone`.
    Weekly {
        days: Vec<Weekday>,
        start: String,
        end: String,
        time_zone: String,
    },
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// The day as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mon => "mon",
            Self::Tue => "tue",
            Self::Wed => "wed",
            Self::Thu => "thu",
            Self::Fri => "fri",
            Self::Sat => "sat",
            Self::Sun => "sun",
        }
    }
}

/// `POST /v1/freezes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFreezeRequest {
    pub scope: FreezeScope,
    pub window: FreezeWindow,
    #[schema(schema_with = crate::schema::required_text)]
    pub reason: String,
}

/// `POST /v1/maintenance`: the nodes the selector admits are in maintenance from `from`
/// (default: now) until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMaintenanceRequest {
    #[schema(schema_with = crate::schema::selector)]
    pub selector: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub from: Option<String>,
    #[schema(format = DateTime)]
    pub until: String,
    #[schema(schema_with = crate::schema::required_text)]
    pub reason: String,
}
