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

/// A label selector as the server keeps it: key → accepted values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeSelector {
    pub labels: BTreeMap<String, Vec<String>>,
}

/// What a kept freeze holds back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredScope {
    /// Every rollout.
    Global,
    /// One unit's rollouts.
    Unit { unit: String },
    /// Rollouts reaching the nodes the selector admits.
    Nodes { selector: NodeSelector },
}

/// When a kept freeze holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredWindow {
    /// From `from_ms` (inclusive) until `until_ms` (exclusive; `null`: until lifted), ms
    /// since the Unix epoch.
    Once {
        from_ms: u64,
        #[serde(default)]
        until_ms: Option<u64>,
    },
    /// Every week on `days` from `start_minute` to `end_minute` (minutes after midnight) of
    /// the wall clock in `time_zone`.
    Weekly {
        days: Vec<Weekday>,
        start_minute: u16,
        end_minute: u16,
        time_zone: String,
    },
}

/// A freeze the server keeps: `POST /v1/freezes` and `POST /v1/freezes/now` answer with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Freeze {
    pub id: u64,
    pub scope: StoredScope,
    pub window: StoredWindow,
    /// Scope and window in words.
    pub describe: String,
    /// Whether it holds now.
    pub active: bool,
    pub reason: String,
    pub actor: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created: String,
}

/// `GET /v1/freezes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FreezeList {
    pub freezes: Vec<Freeze>,
}

/// `POST /v1/freezes/{id}/lift`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FreezeLifted {
    pub id: u64,
    /// Always `true`.
    pub lifted: bool,
}

/// A maintenance window the server keeps: `POST /v1/maintenance` answers with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Maintenance {
    pub id: u64,
    /// The nodes in maintenance: label → accepted values.
    pub selector: BTreeMap<String, Vec<String>>,
    /// Nodes and window in words.
    pub describe: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub from: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub until: String,
    /// Whether it holds now.
    pub active: bool,
    pub reason: String,
    pub actor: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created: String,
}

/// `GET /v1/maintenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MaintenanceList {
    pub maintenance: Vec<Maintenance>,
}

/// `POST /v1/maintenance/{id}/end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MaintenanceEnded {
    pub id: u64,
    /// Always `true`.
    pub ended: bool,
}

mod from_core {
    use failsmall_core::freeze as core;

    impl From<core::Day> for super::Weekday {
        fn from(day: core::Day) -> Self {
            match day {
                core::Day::Mon => Self::Mon,
                core::Day::Tue => Self::Tue,
                core::Day::Wed => Self::Wed,
                core::Day::Thu => Self::Thu,
                core::Day::Fri => Self::Fri,
                core::Day::Sat => Self::Sat,
                core::Day::Sun => Self::Sun,
            }
        }
    }

    impl From<core::FreezeScope> for super::StoredScope {
        fn from(scope: core::FreezeScope) -> Self {
            match scope {
                core::FreezeScope::Global => Self::Global,
                core::FreezeScope::Unit { unit } => Self::Unit {
                    unit: unit.as_str().to_owned(),
                },
                core::FreezeScope::Nodes { selector } => Self::Nodes {
                    selector: super::NodeSelector {
                        labels: selector.labels,
                    },
                },
            }
        }
    }

    impl From<core::Window> for super::StoredWindow {
        fn from(window: core::Window) -> Self {
            match window {
                core::Window::Once { from_ms, until_ms } => Self::Once { from_ms, until_ms },
                core::Window::Weekly {
                    days,
                    start_minute,
                    end_minute,
                    time_zone,
                } => Self::Weekly {
                    days: days.into_iter().map(Into::into).collect(),
                    start_minute,
                    end_minute,
                    time_zone,
                },
            }
        }
    }
}
