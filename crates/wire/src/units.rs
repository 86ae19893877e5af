//! Units: the request bodies that create and edit them and the unit the API answers.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::limits::{MAX_BYTES_CEILING, MAX_RULES};

/// How a unit's bytes are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnitFormat {
    Json,
    Yaml,
    Toml,
    Raw,
}

/// What a consumer does when it has no valid version at all (it always fails stale first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Open,
    Closed,
}

/// What the content is, beyond its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    FlagSet,
}

/// A JSON pointer (RFC 6901): `""` or a path starting with `/`.
pub const POINTER_PATTERN: &str = "^(/.*)?$";

/// "The array or object at `path` has at most `max` entries."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryLimit {
    #[schema(pattern = "^(/.*)?$")]
    pub path: String,
    #[serde(deserialize_with = "crate::int::u64")]
    #[schema(schema_with = crate::schema::uint)]
    pub max: u64,
}

/// "The entries of the array at `path` are distinct" (whole entries, or their field `key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UniqueEntries {
    #[schema(pattern = "^(/.*)?$")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub key: Option<String>,
}

fn fail_mode_closed() -> FailMode {
    FailMode::Closed
}

/// What a unit declares about its bytes. Checked as a whole on create and update (422 naming
/// each reason): `schema` must compile as a JSON Schema; `raw` takes no `schema`,
/// `max_entries`, `unique_entries` or `shape`; `fail_mode: open` needs a `safe_default` that
/// itself passes validation; `max_bytes` is at most the server's `--max-body-bytes` too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    pub format: UnitFormat,
    /// A JSON Schema the parsed document must satisfy (local references only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// The largest file accepted, in bytes.
    #[serde(deserialize_with = "crate::int::u64")]
    #[schema(schema_with = max_bytes)]
    pub max_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = entry_limits)]
    pub max_entries: Vec<EntryLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = unique_rules)]
    pub unique_entries: Vec<UniqueEntries>,
    #[serde(default = "fail_mode_closed")]
    pub fail_mode: FailMode,
    /// The content a consumer uses when it fails open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Shape>,
}

fn max_bytes() -> utoipa::openapi::Schema {
    crate::schema::count_from(1, MAX_BYTES_CEILING)
}

fn entry_limits() -> utoipa::openapi::Schema {
    crate::schema::array_of::<EntryLimit>(MAX_RULES, 0)
}

fn unique_rules() -> utoipa::openapi::Schema {
    crate::schema::array_of::<UniqueEntries>(MAX_RULES, 0)
}

/// The consumer's own parser in check mode, run by the server on every pushed version
/// before it is stored: argv (no shell), the version's bytes on stdin or at `{path}`, killed
/// after `timeout_ms`. One argument must be `-`, `/dev/stdin` or contain `{path}`, and
/// none may contain NUL (422 otherwise). Only an admin may set, change or remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidatorCommand {
    #[schema(schema_with = validator_argv)]
    pub command: Vec<String>,
    #[serde(default = "default_timeout_ms", deserialize_with = "crate::int::u64")]
    #[schema(schema_with = validator_timeout)]
    pub timeout_ms: u64,
}

/// Most arguments of a validator command (the program included), the longest one in bytes,
/// and its longest and default run time in milliseconds.
pub const VALIDATOR_ARGS_MAX: usize = 64;
pub const VALIDATOR_ARG_MAX_BYTES: usize = 4096;
pub const VALIDATOR_TIMEOUT_MAX_MS: u64 = 60_000;
pub const VALIDATOR_TIMEOUT_DEFAULT_MS: u64 = 5_000;

fn default_timeout_ms() -> u64 {
    VALIDATOR_TIMEOUT_DEFAULT_MS
}

fn validator_argv() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::ArrayBuilder;
    let arg = crate::schema::string(0, VALIDATOR_ARG_MAX_BYTES, None).build();
    utoipa::openapi::Schema::Array(
        ArrayBuilder::new()
            .items(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(
                arg,
            )))
            .min_items(Some(2))
            .max_items(Some(VALIDATOR_ARGS_MAX))
            .build(),
    )
}

fn validator_timeout() -> utoipa::openapi::Schema {
    crate::schema::count_from(1, VALIDATOR_TIMEOUT_MAX_MS)
}

/// Absent stays `None`; present (even `null`) becomes `Some`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `POST /v1/units`. `plan` is a plan file's text (YAML), parsed and checked before anything
/// is stored (422 naming the line and field); only an admin may set `validator` (403).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUnitRequest {
    #[schema(schema_with = crate::schema::unit_name)]
    pub name: String,
    pub spec: UnitSpec,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub owner: String,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub description: String,
    /// The plan every push rolls out through; none: a push only stores its version.
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub validator: Option<ValidatorCommand>,
}

/// `PUT /v1/units/{unit}` at the revision read (a stale one is 409). An absent `plan` or
/// `validator` is unchanged and `null` removes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUnitRequest {
    #[serde(deserialize_with = "crate::int::u64")]
    #[schema(schema_with = crate::schema::uint)]
    pub revision: u64,
    pub spec: UnitSpec,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub owner: String,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub description: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub plan: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<ValidatorCommand>)]
    pub validator: Option<Option<ValidatorCommand>>,
}

/// A unit as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Unit {
    pub name: String,
    pub spec: UnitSpec,
    pub owner: String,
    pub description: String,
    /// Bumped by every update; an update names the revision it read.
    pub revision: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<ValidatorCommand>,
}

/// The domain's spec for the one the API carries, and back: the fields are the same, so the
/// conversion cannot fail (the spec is checked as a whole apart from it).
mod domain {
    use failsmall_core::domain;
    use failsmall_core::validate as core;

    use super::{EntryLimit, FailMode, Shape, UniqueEntries, UnitFormat, UnitSpec};

    impl From<UnitFormat> for domain::UnitFormat {
        fn from(format: UnitFormat) -> Self {
            match format {
                UnitFormat::Json => Self::Json,
                UnitFormat::Yaml => Self::Yaml,
                UnitFormat::Toml => Self::Toml,
                UnitFormat::Raw => Self::Raw,
            }
        }
    }

    impl From<domain::UnitFormat> for UnitFormat {
        fn from(format: domain::UnitFormat) -> Self {
            match format {
                domain::UnitFormat::Json => Self::Json,
                domain::UnitFormat::Yaml => Self::Yaml,
                domain::UnitFormat::Toml => Self::Toml,
                domain::UnitFormat::Raw => Self::Raw,
            }
        }
    }

    impl From<FailMode> for domain::FailMode {
        fn from(mode: FailMode) -> Self {
            match mode {
                FailMode::Open => Self::Open,
                FailMode::Closed => Self::Closed,
            }
        }
    }

    impl From<domain::FailMode> for FailMode {
        fn from(mode: domain::FailMode) -> Self {
            match mode {
                domain::FailMode::Open => Self::Open,
                domain::FailMode::Closed => Self::Closed,
            }
        }
    }

    impl From<UnitSpec> for core::UnitSpec {
        fn from(spec: UnitSpec) -> Self {
            Self {
                format: spec.format.into(),
                schema: spec.schema,
                max_bytes: spec.max_bytes,
                max_entries: spec
                    .max_entries
                    .into_iter()
                    .map(|limit| core::EntryLimit {
                        path: limit.path,
                        max: limit.max,
                    })
                    .collect(),
                unique_entries: spec
                    .unique_entries
                    .into_iter()
                    .map(|rule| core::UniqueEntries {
                        path: rule.path,
                        key: rule.key,
                    })
                    .collect(),
                fail_mode: spec.fail_mode.into(),
                safe_default: spec.safe_default,
                shape: spec.shape.map(|Shape::FlagSet| core::Shape::FlagSet),
            }
        }
    }

    impl From<core::UnitSpec> for UnitSpec {
        fn from(spec: core::UnitSpec) -> Self {
            Self {
                format: spec.format.into(),
                schema: spec.schema,
                max_bytes: spec.max_bytes,
                max_entries: spec
                    .max_entries
                    .into_iter()
                    .map(|limit| EntryLimit {
                        path: limit.path,
                        max: limit.max,
                    })
                    .collect(),
                unique_entries: spec
                    .unique_entries
                    .into_iter()
                    .map(|rule| UniqueEntries {
                        path: rule.path,
                        key: rule.key,
                    })
                    .collect(),
                fail_mode: spec.fail_mode.into(),
                safe_default: spec.safe_default,
                shape: spec.shape.map(|core::Shape::FlagSet| Shape::FlagSet),
            }
        }
    }
}

/// `GET /v1/units`: one page of units, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnitList {
    pub units: Vec<Unit>,
    /// The `after` of the next page; `null` on the last page.
    pub next: Option<String>,
}

/// `DELETE /v1/units/{unit}`: the unit and its versions are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnitDeleted {
    pub unit: String,
    /// Always `true`.
    pub deleted: bool,
    pub versions_deleted: u64,
}
