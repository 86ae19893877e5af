//! Flag sets: a unit whose content is a set of feature flags, in a documented subset of
//! flagd's flag definitions, read once and evaluated against an OpenFeature evaluation
//! context (the agent serves them over OFREP).
//!
//! ```json
//! {
//!   "$schema": "https://flagd.dev/schema/v0/flags.json",
//!   "flags": {
//!     "new-checkout": {
//!       "state": "ENABLED",
//!       "variants": {"on": true, "off": false},
//!       "defaultVariant": "off",
//!       "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on"]},
//!       "metadata": {"owner": "payments"}
//!     }
//!   }
//! }
//! ```
//!
//! - `flags` (required): flag key → flag. A key is 1 to [`FLAG_KEY_MAX_BYTES`] bytes of
//!   ASCII letters, digits and `-_.:`; at most [`FLAGS_MAX`] flags.
//! - `state` (required): `ENABLED` or `DISABLED`. A disabled flag evaluates to the caller's
//!   own default (no value, reason `DISABLED`).
//! - `variants` (required): 1 to [`VARIANTS_MAX`] variant name → value, all of one type
//!   (boolean, string, number, or object/array).
//! - `defaultVariant` (required): a variant's name, or `null` for the caller's own default.
//! - `targeting` (optional): a rule (see [`rule`]) resolving to a variant name (`true` and
//!   `false` name the variants `"true"` and `"false"`); `null` or no match means the
//!   default variant; `{}` means no targeting.
//! - `metadata` (optional, on a flag or the whole set): names → string, number or boolean,
//!   returned with each evaluation (a flag's entries win).
//! - `$schema` is accepted and ignored. flagd's `$evaluators` (shared rules) and any other
//!   key are refused, with the JSON pointer of the key.
//!
//! Reading is [`FlagSet::parse`]; a unit that declares `shape: flag_set` in its spec is
//! refused at push (server) and before activation (agent) when its content does not read,
//! every problem named by its JSON pointer.

pub mod rule;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use rule::{EvalError, Rule, escape};

/// A flag set has at most this many flags.
pub const FLAGS_MAX: usize = 10_000;
/// A flag has at most this many variants.
pub const VARIANTS_MAX: usize = 256;
/// A flag key (and a variant name) is at most this long, in bytes.
pub const FLAG_KEY_MAX_BYTES: usize = 256;
/// At most this many metadata entries, on a flag or the set.
pub const METADATA_MAX: usize = 64;

/// A flag set, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagSet {
    pub flags: BTreeMap<String, Flag>,
    pub metadata: Map<String, Value>,
}

/// One flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    pub enabled: bool,
    pub variants: BTreeMap<String, Value>,
    /// `None`: the caller's own default.
    pub default_variant: Option<String>,
    pub targeting: Option<Rule>,
    pub metadata: Map<String, Value>,
}

/// One problem with a flag set: where (a JSON pointer) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagSetError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FlagSetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Why a flag was resolved as it was (OpenFeature's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No targeting: the default variant.
    Static,
    /// Targeting chose the variant.
    TargetingMatch,
    /// A `fractional` chose the variant.
    Split,
    /// Targeting matched nothing: the default variant.
    Default,
    /// The flag is disabled: the caller's own default.
    Disabled,
}

impl Reason {
    /// The name OpenFeature gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
        }
    }
}

/// A flag's resolution: its variant and value, or none (the caller's own default).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub variant: Option<String>,
    pub value: Option<Value>,
    pub reason: Reason,
}

/// Why a flag could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("flag {key:?} is not in the flag set")]
    NotFound { key: String },
    #[error("flag {key:?}: its targeting needs the context's targetingKey, which is missing")]
    TargetingKeyMissing { key: String },
    #[error("flag {key:?}: targeting resolved to {found}, which is not one of its variants")]
    NoSuchVariant { key: String, found: String },
}

fn field_error(errors: &mut Vec<FlagSetError>, path: &str, message: String) {
    if errors.len() < crate::validate::MAX_ISSUES {
        errors.push(FlagSetError {
            path: path.to_owned(),
            message,
        });
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The type a variant's value belongs to (objects and arrays are one: OpenFeature's object).
fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) | Value::Object(_) => "object",
    }
}

fn is_key(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= FLAG_KEY_MAX_BYTES
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn metadata(value: &Value, path: &str, errors: &mut Vec<FlagSetError>) -> Map<String, Value> {
    let Value::Object(map) = value else {
        field_error(
            errors,
            path,
            format!(
                "expected an object of names to strings, numbers or booleans, found {}",
                kind(value)
            ),
        );
        return Map::new();
    };
    if map.len() > METADATA_MAX {
        field_error(
            errors,
            path,
            format!("{} entries; the limit is {METADATA_MAX}", map.len()),
        );
    }
    for (name, entry) in map {
        if !matches!(entry, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            field_error(
                errors,
                &format!("{path}/{}", escape(name)),
                format!(
                    "expected a string, number or boolean, found {}",
                    kind(entry)
                ),
            );
        }
    }
    map.clone()
}

impl FlagSet {
    /// Reads a flag set from a parsed document; every problem, each with its JSON pointer.
    pub fn parse(document: &Value) -> Result<FlagSet, Vec<FlagSetError>> {
        let mut errors = Vec::new();
        let Value::Object(root) = document else {
            field_error(
                &mut errors,
                "",
                format!(
                    "expected an object with \"flags\", found {}",
                    kind(document)
                ),
            );
            return Err(errors);
        };
        let mut set = FlagSet {
            flags: BTreeMap::new(),
            metadata: Map::new(),
        };
        for (key, value) in root {
            let path = format!("/{}", escape(key));
            match key.as_str() {
                "flags" => {}
                "$schema" => {}
                "metadata" => set.metadata = metadata(value, &path, &mut errors),
                "$evaluators" => field_error(
                    &mut errors,
                    &path,
                    "shared evaluators ($evaluators with $ref) are not supported; write each rule in its flag's targeting".to_owned(),
                ),
                _ => field_error(
                    &mut errors,
                    &path,
                    "unknown key; a flag set has flags, metadata and $schema".to_owned(),
                ),
            }
        }
        match root.get("flags") {
            None => field_error(&mut errors, "", "\"flags\" is missing".to_owned()),
            Some(Value::Object(flags)) => {
                if flags.len() > FLAGS_MAX {
                    field_error(
                        &mut errors,
                        "/flags",
                        format!("{} flags; the limit is {FLAGS_MAX}", flags.len()),
                    );
                }
                for (key, value) in flags {
                    let path = format!("/flags/{}", escape(key));
                    if !is_key(key) {
                        field_error(
                            &mut errors,
                            &path,
                            format!(
                                "flag key {key:?}: expected 1 to {FLAG_KEY_MAX_BYTES} ASCII letters, digits, '-', '_', '.' or ':'"
                            ),
                        );
                    }
                    if let Some(flag) = Flag::parse(value, &path, &mut errors) {
                        set.flags.insert(key.clone(), flag);
                    }
                }
            }
            Some(other) => field_error(
                &mut errors,
                "/flags",
                format!(
                    "expected an object of flag key to flag, found {}",
                    kind(other)
                ),
            ),
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Reads a flag set from a unit's bytes, whatever its format: JSON, YAML or TOML, the
    /// first that reads as a flag set (the bytes were validated in their declared format
    /// before they were activated, so at most the guess differs, never the data). On failure,
    /// the problems found reading it as JSON, else as the first format that parses.
    pub fn read(bytes: &[u8]) -> Result<FlagSet, Vec<FlagSetError>> {
        use crate::domain::UnitFormat;
        let mut first_errors = None;
        for format in [UnitFormat::Json, UnitFormat::Yaml, UnitFormat::Toml] {
            let Some(document) = crate::validate::parse_structured(format, bytes) else {
                continue;
            };
            match FlagSet::parse(&document) {
                Ok(set) => return Ok(set),
                Err(errors) => {
                    first_errors.get_or_insert(errors);
                }
            }
        }
        Err(first_errors.unwrap_or_else(|| {
            vec![FlagSetError {
                path: String::new(),
                message: "does not parse as JSON, YAML or TOML".to_owned(),
            }]
        }))
    }

    /// Resolves flag `key` for `context` (the evaluation context's attributes, with
    /// `targetingKey` among them when the caller has one).
    pub fn resolve(
        &self,
        key: &str,
        context: &Map<String, Value>,
    ) -> Result<Resolution, ResolveError> {
        let flag = self.flags.get(key).ok_or_else(|| ResolveError::NotFound {
            key: key.to_owned(),
        })?;
        flag.resolve(key, context)
    }
}

impl Flag {
    fn parse(value: &Value, path: &str, errors: &mut Vec<FlagSetError>) -> Option<Flag> {
        let before = errors.len();
        let Value::Object(map) = value else {
            field_error(
                errors,
                path,
                format!(
                    "expected a flag (an object with state, variants, defaultVariant), found {}",
                    kind(value)
                ),
            );
            return None;
        };
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "state" | "variants" | "defaultVariant" | "targeting" | "metadata"
            ) {
                field_error(
                    errors,
                    &format!("{path}/{}", escape(key)),
                    "unknown key; a flag has state, variants, defaultVariant, targeting and metadata".to_owned(),
                );
            }
        }
        let enabled = match map.get("state") {
            Some(Value::String(state)) if state == "ENABLED" => true,
            Some(Value::String(state)) if state == "DISABLED" => false,
            Some(other) => {
                field_error(
                    errors,
                    &format!("{path}/state"),
                    format!("expected \"ENABLED\" or \"DISABLED\", found {other}"),
                );
                false
            }
            None => {
                field_error(errors, path, "\"state\" is missing".to_owned());
                false
            }
        };
        let mut variants = BTreeMap::new();
        match map.get("variants") {
            Some(Value::Object(entries)) => {
                let at = format!("{path}/variants");
                if entries.is_empty() || entries.len() > VARIANTS_MAX {
                    field_error(
                        errors,
                        &at,
                        format!("{} variants; expected 1 to {VARIANTS_MAX}", entries.len()),
                    );
                }
                let mut first_type: Option<(&str, &'static str)> = None;
                for (name, variant) in entries {
                    let here = format!("{at}/{}", escape(name));
                    if name.is_empty() || name.len() > FLAG_KEY_MAX_BYTES {
                        field_error(
                            errors,
                            &here,
                            format!("a variant name is 1 to {FLAG_KEY_MAX_BYTES} bytes"),
                        );
                    }
                    let this = value_type(variant);
                    if this == "null" {
                        field_error(
                            errors,
                            &here,
                            "a variant's value is a boolean, string, number or object, not null"
                                .to_owned(),
                        );
                    }
                    match first_type {
                        None => first_type = Some((name, this)),
                        Some((first, expected)) if expected != this => field_error(
                            errors,
                            &here,
                            format!(
                                "is a {this}, but variant {first:?} is a {expected}; the variants of one flag share one type"
                            ),
                        ),
                        Some(_) => {}
                    }
                    variants.insert(name.clone(), variant.clone());
                }
            }
            Some(other) => field_error(
                errors,
                &format!("{path}/variants"),
                format!(
                    "expected an object of variant name to value, found {}",
                    kind(other)
                ),
            ),
            None => field_error(errors, path, "\"variants\" is missing".to_owned()),
        }
        let default_variant = match map.get("defaultVariant") {
            Some(Value::Null) => None,
            Some(Value::String(name)) => {
                if !variants.contains_key(name) && map.get("variants").is_some_and(Value::is_object)
                {
                    field_error(
                        errors,
                        &format!("{path}/defaultVariant"),
                        format!(
                            "{name:?} is not one of the variants ({})",
                            variants.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                Some(name.clone())
            }
            Some(other) => {
                field_error(
                    errors,
                    &format!("{path}/defaultVariant"),
                    format!("expected a variant name or null, found {}", kind(other)),
                );
                None
            }
            None => {
                field_error(
                    errors,
                    path,
                    "\"defaultVariant\" is missing (null means the caller's own default)"
                        .to_owned(),
                );
                None
            }
        };
        let targeting = match map.get("targeting") {
            None | Some(Value::Null) => None,
            Some(Value::Object(rule)) if rule.is_empty() => None,
            Some(value) => {
                let at = format!("{path}/targeting");
                match Rule::compile(value, &at) {
                    Ok(rule) => {
                        let mut results = Vec::new();
                        rule.literal_results(&at, &mut results);
                        for (where_, result) in results {
                            let name = match &result {
                                Value::String(name) => Some(name.clone()),
                                Value::Bool(b) => Some(b.to_string()),
                                Value::Null => None,
                                other => {
                                    field_error(
                                        errors,
                                        &where_,
                                        format!(
                                            "targeting resolves to a variant name (a string), found {}",
                                            kind(other)
                                        ),
                                    );
                                    None
                                }
                            };
                            if let Some(name) = name
                                && !variants.contains_key(&name)
                            {
                                field_error(
                                    errors,
                                    &where_,
                                    format!(
                                        "targeting resolves to {name:?}, which is not one of the variants"
                                    ),
                                );
                            }
                        }
                        Some(rule)
                    }
                    Err(rule_errors) => {
                        for error in rule_errors {
                            field_error(errors, &error.path, error.message);
                        }
                        None
                    }
                }
            }
        };
        let metadata = match map.get("metadata") {
            Some(value) => metadata(value, &format!("{path}/metadata"), errors),
            None => Map::new(),
        };
        if errors.len() > before {
            return None;
        }
        Some(Flag {
            enabled,
            variants,
            default_variant,
            targeting,
            metadata,
        })
    }

    fn default(&self, reason: Reason) -> Resolution {
        let value = self
            .default_variant
            .as_ref()
            .and_then(|name| self.variants.get(name))
            .cloned();
        Resolution {
            variant: self.default_variant.clone(),
            value,
            reason,
        }
    }

    /// Resolves this flag (named `key`) for `context`.
    pub fn resolve(
        &self,
        key: &str,
        context: &Map<String, Value>,
    ) -> Result<Resolution, ResolveError> {
        if !self.enabled {
            return Ok(Resolution {
                variant: None,
                value: None,
                reason: Reason::Disabled,
            });
        }
        let Some(rule) = &self.targeting else {
            return Ok(self.default(Reason::Static));
        };
        let mut root = context.clone();
        let mut flagd = Map::new();
        flagd.insert("flagKey".to_owned(), Value::String(key.to_owned()));
        root.insert("$flagd".to_owned(), Value::Object(flagd));
        let root = Value::Object(root);
        let (result, split) = rule.resolve(&root).map_err(|error| match error {
            EvalError::TargetingKeyMissing => ResolveError::TargetingKeyMissing {
                key: key.to_owned(),
            },
        })?;
        let name = match result {
            Value::Null => return Ok(self.default(Reason::Default)),
            Value::String(name) => name,
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(ResolveError::NoSuchVariant {
                    key: key.to_owned(),
                    found: other.to_string(),
                });
            }
        };
        match self.variants.get(&name) {
            Some(value) => Ok(Resolution {
                variant: Some(name),
                value: Some(value.clone()),
                reason: if split {
                    Reason::Split
                } else {
                    Reason::TargetingMatch
                },
            }),
            None => Err(ResolveError::NoSuchVariant {
                key: key.to_owned(),
                found: format!("{name:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn check(document: Value, expect: &[(&str, &str)]) {
        let errors = FlagSet::parse(&document).unwrap_err();
        let found: Vec<(String, String)> = errors
            .iter()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect();
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        for ((path, message), (want_path, want_text)) in found.iter().zip(expect) {
            assert_eq!(path, want_path, "{found:#?}");
            assert!(
                message.contains(want_text),
                "{message:?} lacks {want_text:?}"
            );
        }
    }

    fn set() -> FlagSet {
        FlagSet::parse(&json!({
            "$schema": "https://flagd.dev/schema/v0/flags.json",
            "metadata": {"team": "web"},
            "flags": {
                "banner": {"state": "ENABLED", "variants": {"on": true, "off": false},
                           "defaultVariant": "off",
                           "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on"]}},
                "color": {"state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"},
                          "defaultVariant": "red", "metadata": {"owner": "design"}},
                "split": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a",
                          "targeting": {"fractional": [["a", 50], ["b", 50]]}},
                "off": {"state": "DISABLED", "variants": {"x": {"k": 1}}, "defaultVariant": "x"}
            }
        }))
        .unwrap()
    }

    #[test]
    fn flags_resolve_with_the_reasons_of_openfeature() {
        let set = set();
        let ctx = |v: Value| v.as_object().unwrap().clone();
        let r = set
            .resolve("banner", &ctx(json!({"email": "a@example.com"})))
            .unwrap();
        assert_eq!(
            (r.variant.as_deref(), r.value, r.reason),
            (Some("on"), Some(json!(true)), Reason::TargetingMatch)
        );
        let r = set
            .resolve("banner", &ctx(json!({"email": "a@other.org"})))
            .unwrap();
        assert_eq!(
            (r.variant.as_deref(), r.reason),
            (Some("off"), Reason::Default)
        );
        let r = set.resolve("color", &ctx(json!({}))).unwrap();
        assert_eq!((r.value, r.reason), (Some(json!("#f00")), Reason::Static));
        let r = set
            .resolve("split", &ctx(json!({"targetingKey": "u-1"})))
            .unwrap();
        assert_eq!(r.reason, Reason::Split);
        assert_eq!(
            set.resolve("split", &ctx(json!({}))),
            Err(ResolveError::TargetingKeyMissing {
                key: "split".into()
            })
        );
        let r = set.resolve("off", &ctx(json!({}))).unwrap();
        assert_eq!((r.value, r.reason), (None, Reason::Disabled));
        assert!(matches!(
            set.resolve("nope", &ctx(json!({}))),
            Err(ResolveError::NotFound { .. })
        ));
    }

    #[test]
    fn a_flag_set_reads_from_json_yaml_or_toml() {
        let json = br#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}}}"#;
        let yaml =
            b"flags:\n  f:\n    state: ENABLED\n    variants: {a: 1}\n    defaultVariant: a\n";
        let toml =
            b"[flags.f]\nstate = \"ENABLED\"\ndefaultVariant = \"a\"\n[flags.f.variants]\na = 1\n";
        let from_json = FlagSet::read(json).unwrap();
        assert_eq!(FlagSet::read(yaml).unwrap(), from_json);
        assert_eq!(FlagSet::read(toml).unwrap(), from_json);
        let errors = FlagSet::read(b"{\"flags\": 3}").unwrap_err();
        assert_eq!(errors[0].path, "/flags");
        assert!(FlagSet::read(b"\xff\xfe").is_err());
    }

    #[test]
    fn a_bad_flag_set_is_refused_with_the_path_of_each_bad_field() {
        check(json!([]), &[("", "expected an object")]);
        check(json!({}), &[("", "\"flags\" is missing")]);
        check(
            json!({"flags": {"f": {"state": "ON", "variants": {"a": true, "b": "x"}, "defaultVariant": "c"}}}),
            &[
                ("/flags/f/state", "expected \"ENABLED\" or \"DISABLED\""),
                ("/flags/f/variants/b", "share one type"),
                ("/flags/f/defaultVariant", "not one of the variants"),
            ],
        );
        check(
            json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": true}, "defaultVariant": "a",
                                    "targeting": {"if": [{"in": ["x", {"var": "k"}]}, "b", 3]}}}}),
            &[
                (
                    "/flags/f/targeting/if/1",
                    "\"b\", which is not one of the variants",
                ),
                ("/flags/f/targeting/if/2", "found a number"),
            ],
        );
        check(
            json!({"$evaluators": {}, "flags": {"bad key": {"state": "ENABLED", "variants": {"a": 1},
                   "defaultVariant": "a", "extra": 1, "metadata": {"m": [1]}}}}),
            &[
                ("/$evaluators", "not supported"),
                ("/flags/bad key", "flag key"),
                ("/flags/bad key/extra", "unknown key"),
                (
                    "/flags/bad key/metadata/m",
                    "expected a string, number or boolean",
                ),
            ],
        );
        check(
            json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                   "targeting": {"sem_ver": ["1.0.0", ">", "0.1.0"]}}}}),
            &[("/flags/f/targeting/sem_ver", "not supported")],
        );
    }
}
