//! Validation of a unit's bytes against its declared [`UnitSpec`].
//!
//! Pure and shared: the server runs it before it stores a version, the agent before it
//! activates one, the offline CLI on a file. [`validate`] returns every reason a file is
//! refused (up to [`MAX_ISSUES`]), not only the first, e.g.
//! `features: 412 entries, limit 200`.
//!
//! Structured formats (JSON, YAML, TOML) are parsed into one JSON data model, so a schema,
//! entry limits and uniqueness rules mean the same thing whatever the file's format.
//! Duplicate keys are always refused: a parser that silently keeps one of two values is how a
//! reviewed file and a deployed file come to differ.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::domain::{FailMode, UnitFormat};

/// No unit may declare a larger `max_bytes` than this (64 MiB).
pub const MAX_BYTES_CEILING: u64 = 64 * 1024 * 1024;
/// At most this many issues are listed; the rest are counted in one final issue.
pub const MAX_ISSUES: usize = 100;
/// At most this many entry limits, and as many uniqueness rules, per spec.
pub const MAX_RULES: usize = 64;
/// A YAML document may expand (through aliases) to at most this many nodes.
pub const MAX_YAML_NODES: u64 = 1_000_000;
/// Nesting deeper than this is refused.
pub const MAX_DEPTH: usize = 128;

/// What a unit declares about its bytes. Parsed from the unit's definition, checked with
/// [`UnitSpec::check`], applied with [`validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    pub format: UnitFormat,
    /// A JSON Schema the parsed document must satisfy. Only local references resolve; nothing
    /// is fetched over the network or from files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// The largest file accepted, in bytes (at most [`MAX_BYTES_CEILING`]).
    pub max_bytes: u64,
    /// Limits on the number of entries of the array or object at a JSON pointer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub max_entries: Vec<EntryLimit>,
    /// Arrays whose entries (or whose entries' key field) must be distinct.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unique_entries: Vec<UniqueEntries>,
    /// What a consumer does when it has no valid version at all; it always fails stale first.
    #[serde(default = "fail_mode_closed")]
    pub fail_mode: FailMode,
    /// The content a consumer uses when it fails open. Required by `fail_mode: open`, and it
    /// must itself pass validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_default: Option<String>,
    /// What the content is, beyond its format: `flag_set` checks it as a flag set
    /// ([`crate::flags`]), which the agent can serve over OFREP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Shape>,
}

/// A content shape a unit can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A set of feature flags (a documented subset of flagd's flag definitions).
    FlagSet,
}

fn fail_mode_closed() -> FailMode {
    FailMode::Closed
}

/// "The array or object at `path` has at most `max` entries."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryLimit {
    /// A JSON pointer (RFC 6901), e.g. `/features`; `""` is the whole document.
    pub path: String,
    pub max: u64,
}

/// "The entries of the array at `path` are distinct": whole entries, or the value of the
/// field `key` of each entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniqueEntries {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Why a spec itself is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("max_bytes is {max_bytes}; expected 1 to {MAX_BYTES_CEILING}")]
    MaxBytes { max_bytes: u64 },
    #[error("{rule} has {count} rules; the limit is {MAX_RULES}")]
    TooManyRules { rule: &'static str, count: usize },
    #[error(
        "{rule} path {path:?} is not a JSON pointer; expected \"\" or a path starting with '/'"
    )]
    BadPointer { rule: &'static str, path: String },
    #[error("unique_entries at {path:?} has an empty key; omit it to compare whole entries")]
    EmptyKey { path: String },
    #[error("format raw has no structure; {field} needs json, yaml or toml")]
    RawWithStructure { field: &'static str },
    #[error("schema does not compile: {reason}")]
    Schema { reason: String },
    #[error("fail_mode open needs a safe_default to serve")]
    OpenWithoutSafeDefault,
    #[error("safe_default does not pass this unit's own validation: {reasons}")]
    SafeDefaultInvalid { reasons: String },
}

/// What kind of problem a file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// The spec itself is unusable (see [`SpecError`]).
    SpecInvalid,
    TooLarge,
    NotUtf8,
    Parse,
    DuplicateKey,
    Schema,
    TooManyEntries,
    /// A rule's path leads to a scalar, or uniqueness to something that is not an array.
    WrongShape,
    DuplicateEntry,
    MissingKey,
    /// More issues than [`MAX_ISSUES`]; this one counts the rest.
    TooManyIssues,
    /// The content does not read as the shape the unit declares (a flag set).
    Shape,
}

/// One reason a file is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationIssue {
    pub kind: IssueKind,
    /// A JSON pointer into the document (`""` for the whole file).
    pub path: String,
    /// A sentence for people, naming the place, what was found and what was expected.
    pub message: String,
}

impl fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl UnitSpec {
    /// A spec for `format` with only a size limit.
    pub fn new(format: UnitFormat, max_bytes: u64) -> Self {
        Self {
            format,
            schema: None,
            max_bytes,
            max_entries: Vec::new(),
            unique_entries: Vec::new(),
            fail_mode: FailMode::Closed,
            safe_default: None,
            shape: None,
        }
    }

    /// Checks the spec itself; returns every problem.
    pub fn check(&self) -> Result<(), Vec<SpecError>> {
        let mut errors = self.check_structure();
        if errors.is_empty() && self.fail_mode == FailMode::Open {
            match &self.safe_default {
                None => errors.push(SpecError::OpenWithoutSafeDefault),
                Some(text) => {
                    if let Err(issues) = validate_checked(self, text.as_bytes()) {
                        let reasons: Vec<String> =
                            issues.iter().map(|i| i.message.clone()).collect();
                        errors.push(SpecError::SafeDefaultInvalid {
                            reasons: reasons.join("; "),
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Everything but the safe default (which needs a valid structure to be checked).
    fn check_structure(&self) -> Vec<SpecError> {
        let mut errors = Vec::new();
        if self.max_bytes == 0 || self.max_bytes > MAX_BYTES_CEILING {
            errors.push(SpecError::MaxBytes {
                max_bytes: self.max_bytes,
            });
        }
        if self.max_entries.len() > MAX_RULES {
            errors.push(SpecError::TooManyRules {
                rule: "max_entries",
                count: self.max_entries.len(),
            });
        }
        if self.unique_entries.len() > MAX_RULES {
            errors.push(SpecError::TooManyRules {
                rule: "unique_entries",
                count: self.unique_entries.len(),
            });
        }
        for limit in &self.max_entries {
            if !is_pointer(&limit.path) {
                errors.push(SpecError::BadPointer {
                    rule: "max_entries",
                    path: limit.path.clone(),
                });
            }
        }
        for rule in &self.unique_entries {
            if !is_pointer(&rule.path) {
                errors.push(SpecError::BadPointer {
                    rule: "unique_entries",
                    path: rule.path.clone(),
                });
            }
            if rule.key.as_deref() == Some("") {
                errors.push(SpecError::EmptyKey {
                    path: rule.path.clone(),
                });
            }
        }
        if self.format == UnitFormat::Raw {
            if self.schema.is_some() {
                errors.push(SpecError::RawWithStructure { field: "schema" });
            }
            if !self.max_entries.is_empty() {
                errors.push(SpecError::RawWithStructure {
                    field: "max_entries",
                });
            }
            if !self.unique_entries.is_empty() {
                errors.push(SpecError::RawWithStructure {
                    field: "unique_entries",
                });
            }
            if self.shape.is_some() {
                errors.push(SpecError::RawWithStructure { field: "shape" });
            }
        }
        if let Some(schema) = &self.schema
            && let Err(error) = jsonschema::validator_for(schema)
        {
            errors.push(SpecError::Schema {
                reason: error.to_string(),
            });
        }
        errors
    }
}

fn is_pointer(path: &str) -> bool {
    path.is_empty() || path.starts_with('/')
}

/// Validates `bytes` against `spec`. On `Err`, every reason found (at most [`MAX_ISSUES`],
/// then one [`IssueKind::TooManyIssues`]); an unusable spec is reported as
/// [`IssueKind::SpecInvalid`] issues.
pub fn validate(spec: &UnitSpec, bytes: &[u8]) -> Result<(), Vec<ValidationIssue>> {
    if let Err(errors) = spec.check() {
        return Err(errors
            .iter()
            .map(|e| ValidationIssue {
                kind: IssueKind::SpecInvalid,
                path: String::new(),
                message: format!("unit spec: {e}"),
            })
            .collect());
    }
    validate_checked(spec, bytes)
}

/// Collects issues up to [`MAX_ISSUES`] and counts the rest.
#[derive(Debug, Default)]
struct Issues {
    listed: Vec<ValidationIssue>,
    omitted: u64,
}

impl Issues {
    fn push(&mut self, kind: IssueKind, path: &str, message: String) {
        if self.listed.len() < MAX_ISSUES {
            self.listed.push(ValidationIssue {
                kind,
                path: path.to_owned(),
                message,
            });
        } else {
            self.omitted = self.omitted.saturating_add(1);
        }
    }

    fn finish(mut self) -> Result<(), Vec<ValidationIssue>> {
        if self.omitted > 0 {
            self.listed.push(ValidationIssue {
                kind: IssueKind::TooManyIssues,
                path: String::new(),
                message: format!(
                    "{} more issues not listed (the limit is {MAX_ISSUES})",
                    self.omitted
                ),
            });
        }
        if self.listed.is_empty() {
            Ok(())
        } else {
            Err(self.listed)
        }
    }
}

/// Validation with a spec whose structure is known to be usable.
fn validate_checked(spec: &UnitSpec, bytes: &[u8]) -> Result<(), Vec<ValidationIssue>> {
    let mut issues = Issues::default();
    let size_bytes = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size_bytes > spec.max_bytes {
        issues.push(
            IssueKind::TooLarge,
            "",
            format!("size: {size_bytes} bytes, limit {}", spec.max_bytes),
        );
        if size_bytes > MAX_BYTES_CEILING {
            // Too large to be worth parsing at all.
            return issues.finish();
        }
    }
    let document = match spec.format {
        UnitFormat::Raw => return issues.finish(),
        UnitFormat::Json => parse_json(bytes, &mut issues),
        UnitFormat::Yaml | UnitFormat::Toml => match std::str::from_utf8(bytes) {
            Err(error) => {
                issues.push(
                    IssueKind::NotUtf8,
                    "",
                    format!("encoding: not UTF-8 at byte {}", error.valid_up_to()),
                );
                None
            }
            Ok(text) if spec.format == UnitFormat::Yaml => parse_yaml(text, &mut issues),
            Ok(text) => parse_toml(text, &mut issues),
        },
    };
    if let Some(document) = document {
        check_document(spec, &document, &mut issues);
    }
    issues.finish()
}

fn check_document(spec: &UnitSpec, document: &Value, issues: &mut Issues) {
    if let Some(schema) = &spec.schema {
        match jsonschema::validator_for(schema) {
            Ok(validator) => {
                for error in validator.iter_errors(document) {
                    let path = error.instance_path().as_str().to_owned();
                    let message = format!("{}: {error}", label(&path));
                    issues.push(IssueKind::Schema, &path, message);
                }
            }
            Err(error) => issues.push(
                IssueKind::SpecInvalid,
                "",
                format!("unit spec: schema does not compile: {error}"),
            ),
        }
    }
    for limit in &spec.max_entries {
        let count = match document.pointer(&limit.path) {
            None => continue,
            Some(Value::Array(entries)) => entries.len(),
            Some(Value::Object(entries)) => entries.len(),
            Some(other) => {
                issues.push(
                    IssueKind::WrongShape,
                    &limit.path,
                    format!(
                        "{}: is {}, expected an array or object (max_entries {})",
                        label(&limit.path),
                        kind_of(other),
                        limit.max
                    ),
                );
                continue;
            }
        };
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        if count > limit.max {
            issues.push(
                IssueKind::TooManyEntries,
                &limit.path,
                format!(
                    "{}: {count} entries, limit {}",
                    label(&limit.path),
                    limit.max
                ),
            );
        }
    }
    for rule in &spec.unique_entries {
        check_unique(rule, document, issues);
    }
    if spec.shape == Some(Shape::FlagSet)
        && let Err(errors) = crate::flags::FlagSet::parse(document)
    {
        for error in errors {
            let message = format!("flag set: {error}");
            issues.push(IssueKind::Shape, &error.path, message);
        }
    }
}

fn check_unique(rule: &UniqueEntries, document: &Value, issues: &mut Issues) {
    let entries = match document.pointer(&rule.path) {
        None => return,
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            issues.push(
                IssueKind::WrongShape,
                &rule.path,
                format!(
                    "{}: is {}, expected an array (unique_entries)",
                    label(&rule.path),
                    kind_of(other)
                ),
            );
            return;
        }
    };
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let entry_path = format!("{}/{index}", rule.path);
        let identity = match &rule.key {
            None => canonical(entry),
            Some(key) => match entry.get(key) {
                Some(value) => canonical(value),
                None => {
                    issues.push(
                        IssueKind::MissingKey,
                        &entry_path,
                        format!("{}: entry {index} has no field {key:?}", label(&rule.path)),
                    );
                    continue;
                }
            },
        };
        if let Some(first) = first_seen.get(&identity) {
            let what = match &rule.key {
                Some(key) => format!(" ({key} = {identity})"),
                None => String::new(),
            };
            issues.push(
                IssueKind::DuplicateEntry,
                &entry_path,
                format!(
                    "{}: entry {index} duplicates entry {first}{what}",
                    label(&rule.path)
                ),
            );
        } else {
            first_seen.insert(identity, index);
        }
    }
}

/// A JSON pointer as people read it in a message: `features`, `rules/3/action`, `(root)`.
fn label(path: &str) -> &str {
    match path.strip_prefix('/') {
        Some(rest) => rest,
        None if path.is_empty() => "(root)",
        None => path,
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A text for `value` that is the same for equal values whatever their key order.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let ordered: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                let mut out = Map::new();
                for (k, v) in ordered {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sorted(value)).unwrap_or_default()
}

/// Escapes a key for use as one JSON pointer segment.
fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

// ---------------------------------------------------------------------------------------------
// JSON, with duplicate keys detected (serde_json alone keeps the last value silently).

struct JsonSeed<'a> {
    duplicates: &'a mut Vec<String>,
    path: String,
}

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}/{}", self.path, items.len());
            let seed = JsonSeed {
                duplicates: &mut *self.duplicates,
                path,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = format!("{}/{}", self.path, pointer_segment(&key));
            let seed = JsonSeed {
                duplicates: &mut *self.duplicates,
                path: path.clone(),
            };
            let value = map.next_value_seed(seed)?;
            if object.insert(key, value).is_some() {
                self.duplicates.push(path);
            }
        }
        Ok(Value::Object(object))
    }
}

/// Parses `bytes` as `format` into the JSON data model, with the same limits and duplicate
/// key rules as [`validate`] (no spec checks); `None` for raw or on any parse issue.
pub fn parse_structured(format: UnitFormat, bytes: &[u8]) -> Option<Value> {
    let mut issues = Issues::default();
    let parsed = match format {
        UnitFormat::Raw => None,
        UnitFormat::Json => parse_json(bytes, &mut issues),
        UnitFormat::Yaml => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| parse_yaml(text, &mut issues)),
        UnitFormat::Toml => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| parse_toml(text, &mut issues)),
    };
    parsed.filter(|_| issues.listed.is_empty())
}

fn parse_json(bytes: &[u8], issues: &mut Issues) -> Option<Value> {
    let mut duplicates = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let seed = JsonSeed {
        duplicates: &mut duplicates,
        path: String::new(),
    };
    let parsed = seed.deserialize(&mut deserializer).and_then(|value| {
        deserializer.end()?;
        Ok(value)
    });
    match parsed {
        Ok(value) => {
            for path in &duplicates {
                issues.push(
                    IssueKind::DuplicateKey,
                    path,
                    format!("{}: duplicate key", label(path)),
                );
            }
            Some(value)
        }
        Err(error) => {
            issues.push(IssueKind::Parse, "", format!("JSON: {error}"));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// YAML

/// Counts the nodes a YAML stream expands to, aliases included, before anything is built:
/// the loader copies an anchored node at every alias, so a few hundred bytes could otherwise
/// expand to billions of nodes.
#[derive(Debug, Default)]
struct YamlNodeBudget {
    anchored_nodes: HashMap<usize, u64>,
    open: Vec<(usize, u64)>,
    total_nodes: u64,
}

impl YamlNodeBudget {
    fn add(&mut self, nodes: u64) {
        match self.open.last_mut() {
            Some((_, count)) => *count = count.saturating_add(nodes),
            None => self.total_nodes = self.total_nodes.saturating_add(nodes),
        }
    }
}

impl yaml_rust2::parser::EventReceiver for YamlNodeBudget {
    fn on_event(&mut self, event: yaml_rust2::Event) {
        use yaml_rust2::Event;
        match event {
            Event::Scalar(_, _, anchor, _) => {
                if anchor > 0 {
                    self.anchored_nodes.insert(anchor, 1);
                }
                self.add(1);
            }
            Event::Alias(anchor) => {
                let nodes = self.anchored_nodes.get(&anchor).copied().unwrap_or(1);
                self.add(nodes);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.open.push((anchor, 1));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, count)) = self.open.pop() {
                    if anchor > 0 {
                        self.anchored_nodes.insert(anchor, count);
                    }
                    self.add(count);
                }
            }
            _ => {}
        }
    }
}

fn parse_yaml(text: &str, issues: &mut Issues) -> Option<Value> {
    use yaml_rust2::Event;
    use yaml_rust2::parser::EventReceiver as _;
    let mut budget = YamlNodeBudget::default();
    let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
    // The events are read in a loop, not through `Parser::load`: it (like `YamlLoader`)
    // recurses once per level of nesting, so a version nested a few thousand levels deep
    // would overflow the stack. Nesting beyond what `yaml_to_json` takes is refused here,
    // before anything recursive runs. Every event consumes input: the bound is never reached
    // by a parser that terminates.
    let mut depth = 0usize;
    let mut ended = false;
    for _ in 0..text.len().saturating_mul(4).saturating_add(16) {
        let event = match parser.next_token() {
            Ok((event, _)) => event,
            Err(error) => {
                issues.push(IssueKind::Parse, "", format!("YAML: {error}"));
                return None;
            }
        };
        match event {
            Event::StreamEnd => {
                ended = true;
                break;
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth = depth.saturating_add(1);
                if depth > MAX_DEPTH.saturating_add(1) {
                    issues.push(
                        IssueKind::Parse,
                        "",
                        format!("YAML: nested deeper than {MAX_DEPTH} levels"),
                    );
                    return None;
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
        budget.on_event(event);
    }
    if !ended {
        issues.push(
            IssueKind::Parse,
            "",
            "YAML: the parser did not reach the end".to_owned(),
        );
        return None;
    }
    if budget.total_nodes > MAX_YAML_NODES {
        issues.push(
            IssueKind::TooLarge,
            "",
            format!(
                "YAML: expands to {} nodes through aliases, limit {MAX_YAML_NODES}",
                budget.total_nodes
            ),
        );
        return None;
    }
    let documents = match yaml_rust2::YamlLoader::load_from_str(text) {
        Ok(documents) => documents,
        Err(error) => {
            let kind = if error.info().contains("duplicated key") {
                IssueKind::DuplicateKey
            } else {
                IssueKind::Parse
            };
            issues.push(kind, "", format!("YAML: {error}"));
            return None;
        }
    };
    let mut documents = documents.into_iter();
    let first = documents.next();
    let extra = documents.count();
    if extra > 0 {
        issues.push(
            IssueKind::Parse,
            "",
            format!("YAML: {} documents, expected one", extra.saturating_add(1)),
        );
        return None;
    }
    match first {
        None => Some(Value::Null),
        Some(document) => yaml_to_json(&document, "", 0, issues),
    }
}

fn yaml_to_json(
    node: &yaml_rust2::Yaml,
    path: &str,
    depth: usize,
    issues: &mut Issues,
) -> Option<Value> {
    use yaml_rust2::Yaml;
    if depth > MAX_DEPTH {
        issues.push(
            IssueKind::Parse,
            path,
            format!("{}: nested deeper than {MAX_DEPTH}", label(path)),
        );
        return None;
    }
    match node {
        Yaml::Null => Some(Value::Null),
        Yaml::Boolean(b) => Some(Value::Bool(*b)),
        Yaml::Integer(i) => Some(Value::Number((*i).into())),
        Yaml::String(s) => Some(Value::String(s.clone())),
        Yaml::Real(text) => match node.as_f64().and_then(Number::from_f64) {
            Some(number) => Some(Value::Number(number)),
            None => {
                issues.push(
                    IssueKind::Parse,
                    path,
                    format!("{}: {text:?} is not a finite number", label(path)),
                );
                None
            }
        },
        Yaml::Array(items) => array_to_json(items, path, depth, issues, yaml_to_json),
        Yaml::Hash(entries) => {
            let mut out = Map::new();
            let mut ok = true;
            for (key, value) in entries {
                let key = match key {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Null => "null".to_owned(),
                    _ => {
                        issues.push(
                            IssueKind::Parse,
                            path,
                            format!("{}: a mapping key is not a scalar", label(path)),
                        );
                        ok = false;
                        continue;
                    }
                };
                let child = format!("{path}/{}", pointer_segment(&key));
                match yaml_to_json(value, &child, depth.saturating_add(1), issues) {
                    Some(value) => {
                        if out.insert(key, value).is_some() {
                            issues.push(
                                IssueKind::DuplicateKey,
                                &child,
                                format!("{}: duplicate key", label(&child)),
                            );
                        }
                    }
                    None => ok = false,
                }
            }
            ok.then_some(Value::Object(out))
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            issues.push(
                IssueKind::Parse,
                path,
                format!(
                    "{}: a value that cannot be read (unknown alias or bad tag)",
                    label(path)
                ),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TOML (the TOML grammar itself refuses duplicate keys)

fn parse_toml(text: &str, issues: &mut Issues) -> Option<Value> {
    match toml::from_str::<toml::Table>(text) {
        Ok(table) => toml_table_to_json(&table, "", 0, issues),
        Err(error) => {
            let line = error.span().map(|span| {
                text.get(..span.start)
                    .unwrap_or("")
                    .matches('\n')
                    .count()
                    .saturating_add(1)
            });
            let message = error.message().to_owned();
            let kind = if message.contains("duplicate") {
                IssueKind::DuplicateKey
            } else {
                IssueKind::Parse
            };
            let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
            issues.push(kind, "", format!("TOML{at}: {message}"));
            None
        }
    }
}

/// Converts each item of a parsed array with `convert`, one nesting level deeper; every item's
/// issues are reported, and the array is `None` when any item failed.
fn array_to_json<T>(
    items: &[T],
    path: &str,
    depth: usize,
    issues: &mut Issues,
    convert: fn(&T, &str, usize, &mut Issues) -> Option<Value>,
) -> Option<Value> {
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (index, item) in items.iter().enumerate() {
        match convert(
            item,
            &format!("{path}/{index}"),
            depth.saturating_add(1),
            issues,
        ) {
            Some(value) => out.push(value),
            None => ok = false,
        }
    }
    ok.then_some(Value::Array(out))
}

fn toml_table_to_json(
    table: &toml::Table,
    path: &str,
    depth: usize,
    issues: &mut Issues,
) -> Option<Value> {
    let mut out = Map::new();
    let mut ok = true;
    for (key, value) in table {
        let child = format!("{path}/{}", pointer_segment(key));
        match toml_to_json(value, &child, depth.saturating_add(1), issues) {
            Some(value) => {
                out.insert(key.clone(), value);
            }
            None => ok = false,
        }
    }
    ok.then_some(Value::Object(out))
}

fn toml_to_json(
    node: &toml::Value,
    path: &str,
    depth: usize,
    issues: &mut Issues,
) -> Option<Value> {
    use toml::Value as T;
    if depth > MAX_DEPTH {
        issues.push(
            IssueKind::Parse,
            path,
            format!("{}: nested deeper than {MAX_DEPTH}", label(path)),
        );
        return None;
    }
    match node {
        T::String(s) => Some(Value::String(s.clone())),
        T::Integer(i) => Some(Value::Number((*i).into())),
        T::Boolean(b) => Some(Value::Bool(*b)),
        T::Datetime(datetime) => Some(Value::String(datetime.to_string())),
        T::Float(f) => match Number::from_f64(*f) {
            Some(number) => Some(Value::Number(number)),
            None => {
                issues.push(
                    IssueKind::Parse,
                    path,
                    format!("{}: {f} is not a finite number", label(path)),
                );
                None
            }
        },
        T::Array(items) => array_to_json(items, path, depth, issues, toml_to_json),
        T::Table(table) => toml_table_to_json(table, path, depth, issues),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(format: UnitFormat) -> UnitSpec {
        UnitSpec::new(format, 1024 * 1024)
    }

    /// A unit declaring `shape: flag_set` refuses a flag file that does not read as one,
    /// naming the bad field, in YAML as in JSON; a good one passes; raw cannot declare it.
    #[test]
    fn a_flag_set_unit_refuses_a_bad_flag_file_with_the_path_of_the_field() {
        let mut flags = spec(UnitFormat::Yaml);
        flags.shape = Some(Shape::FlagSet);
        let good = "flags:\n  f:\n    state: ENABLED\n    variants: {on: true, off: false}\n    defaultVariant: off\n";
        assert_eq!(validate(&flags, good.as_bytes()), Ok(()));
        let bad = good.replace("defaultVariant: off", "defaultVariant: maybe");
        let issues = validate(&flags, bad.as_bytes()).unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].kind, IssueKind::Shape);
        assert_eq!(issues[0].path, "/flags/f/defaultVariant");
        assert!(
            issues[0].message.starts_with(
                "flag set: /flags/f/defaultVariant: \"maybe\" is not one of the variants"
            ),
            "{}",
            issues[0].message
        );
        let mut raw = spec(UnitFormat::Raw);
        raw.shape = Some(Shape::FlagSet);
        assert!(raw.check().is_err());
        let parsed: UnitSpec =
            serde_json::from_value(json!({"format": "json", "max_bytes": 10, "shape": "flag_set"}))
                .unwrap();
        assert_eq!(parsed.shape, Some(Shape::FlagSet));
    }

    /// Nesting far beyond `MAX_DEPTH`, in every format and style, is refused with a reason;
    /// nothing recursive meets it (a stack overflow would abort the server or the agent).
    #[test]
    fn nesting_thousands_deep_is_refused_not_a_crash() {
        let levels = 100_000;
        let cases = [
            (UnitFormat::Yaml, format!("{}1", "- ".repeat(levels))),
            (
                UnitFormat::Yaml,
                format!("{}1{}", "[".repeat(levels), "]".repeat(levels)),
            ),
            (UnitFormat::Yaml, {
                let mut text = String::new();
                for level in 0..levels {
                    text.push_str(&" ".repeat(level % 64));
                    text.push_str("k:\n");
                }
                text
            }),
            (
                UnitFormat::Json,
                format!("{}1{}", "[".repeat(levels), "]".repeat(levels)),
            ),
            (
                UnitFormat::Toml,
                format!("a = {}1{}", "[".repeat(levels), "]".repeat(levels)),
            ),
        ];
        for (format, text) in cases {
            let issues = validate(&spec(format), text.as_bytes()).unwrap_err();
            assert!(!issues.is_empty(), "{format:?}");
        }
    }

    fn kinds(result: Result<(), Vec<ValidationIssue>>) -> Vec<IssueKind> {
        result
            .err()
            .unwrap_or_default()
            .iter()
            .map(|i| i.kind)
            .collect()
    }

    fn messages(result: Result<(), Vec<ValidationIssue>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .iter()
            .map(|i| i.message.clone())
            .collect()
    }

    fn features_json(count: usize) -> String {
        let features: Vec<Value> = (0..count)
            .map(|i| json!({"name": format!("f{i}")}))
            .collect();
        json!({ "features": features }).to_string()
    }

    #[test]
    fn valid_files_pass_in_every_format() {
        assert_eq!(
            validate(&spec(UnitFormat::Json), br#"{"a": [1, 2]}"#),
            Ok(())
        );
        assert_eq!(
            validate(&spec(UnitFormat::Yaml), b"a:\n  - 1\n  - 2\n"),
            Ok(())
        );
        assert_eq!(validate(&spec(UnitFormat::Toml), b"a = [1, 2]\n"), Ok(()));
        assert_eq!(
            validate(&spec(UnitFormat::Raw), &[0xff, 0x00, 0x01]),
            Ok(())
        );
    }

    #[test]
    fn size_limit_names_size_and_limit() {
        let spec = UnitSpec::new(UnitFormat::Raw, 4);
        assert_eq!(
            messages(validate(&spec, b"12345")),
            vec!["size: 5 bytes, limit 4"]
        );
        assert_eq!(validate(&spec, b"1234"), Ok(()));
    }

    #[test]
    fn entry_limit_reports_count_and_limit() {
        let mut spec = spec(UnitFormat::Json);
        spec.max_entries.push(EntryLimit {
            path: "/features".into(),
            max: 200,
        });
        assert_eq!(validate(&spec, features_json(200).as_bytes()), Ok(()));
        let result = validate(&spec, features_json(412).as_bytes());
        assert_eq!(messages(result), vec!["features: 412 entries, limit 200"]);
    }

    #[test]
    fn entry_limit_counts_object_keys_and_ignores_absent_paths() {
        let mut spec = spec(UnitFormat::Yaml);
        spec.max_entries.push(EntryLimit {
            path: "/flags".into(),
            max: 1,
        });
        spec.max_entries.push(EntryLimit {
            path: "/absent".into(),
            max: 0,
        });
        assert_eq!(
            kinds(validate(&spec, b"flags: {a: 1, b: 2}\n")),
            vec![IssueKind::TooManyEntries]
        );
        assert_eq!(
            kinds(validate(&spec, b"flags: 3\n")),
            vec![IssueKind::WrongShape]
        );
        assert_eq!(validate(&spec, b"flags: {a: 1}\n"), Ok(()));
    }

    #[test]
    fn every_reason_is_returned_not_only_the_first() {
        let mut spec = UnitSpec::new(UnitFormat::Json, 60);
        spec.max_entries.push(EntryLimit {
            path: "/features".into(),
            max: 2,
        });
        spec.unique_entries.push(UniqueEntries {
            path: "/features".into(),
            key: Some("name".into()),
        });
        spec.schema = Some(json!({"type": "object", "required": ["version"]}));
        let text = r#"{"features": [{"name": "a"}, {"name": "a"}, {"name": "b"}], "x": 1, "x": 2}"#;
        let found = kinds(validate(&spec, text.as_bytes()));
        for expected in [
            IssueKind::TooLarge,
            IssueKind::DuplicateKey,
            IssueKind::Schema,
            IssueKind::TooManyEntries,
            IssueKind::DuplicateEntry,
        ] {
            assert!(
                found.contains(&expected),
                "{expected:?} missing from {found:?}"
            );
        }
    }

    #[test]
    fn json_duplicate_keys_are_found_at_any_depth() {
        let result = validate(
            &spec(UnitFormat::Json),
            br#"{"a": {"b": 1, "b": 2}, "c": [{"d": 1, "d": 1}]}"#,
        );
        let issues = result.err().unwrap_or_default();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, vec!["/a/b", "/c/0/d"]);
        assert!(issues.iter().all(|i| i.kind == IssueKind::DuplicateKey));
    }

    #[test]
    fn yaml_and_toml_duplicate_keys_are_refused() {
        assert_eq!(
            kinds(validate(&spec(UnitFormat::Yaml), b"a: 1\na: 2\n")),
            vec![IssueKind::DuplicateKey]
        );
        assert_eq!(
            kinds(validate(&spec(UnitFormat::Yaml), b"1: x\n'1': y\n")),
            vec![IssueKind::DuplicateKey]
        );
        assert_eq!(
            kinds(validate(&spec(UnitFormat::Toml), b"a = 1\na = 2\n")),
            vec![IssueKind::DuplicateKey]
        );
    }

    #[test]
    fn duplicate_entries_whole_or_by_key() {
        let mut whole = spec(UnitFormat::Json);
        whole.unique_entries.push(UniqueEntries {
            path: "/rules".into(),
            key: None,
        });
        let text = br#"{"rules": [{"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 2}]}"#;
        assert_eq!(
            messages(validate(&whole, text)),
            vec!["rules: entry 1 duplicates entry 0"]
        );

        let mut keyed = spec(UnitFormat::Json);
        keyed.unique_entries.push(UniqueEntries {
            path: "/rules".into(),
            key: Some("id".into()),
        });
        let text = br#"{"rules": [{"id": 7, "v": 1}, {"id": 8}, {"id": 7, "v": 2}, {"v": 3}]}"#;
        let issues = validate(&keyed, text).err().unwrap_or_default();
        assert_eq!(issues.len(), 2);
        assert_eq!(
            issues[0].message,
            "rules: entry 2 duplicates entry 0 (id = 7)"
        );
        assert_eq!(issues[0].path, "/rules/2");
        assert_eq!(issues[1].kind, IssueKind::MissingKey);

        assert_eq!(
            kinds(validate(&keyed, br#"{"rules": {"a": 1}}"#)),
            vec![IssueKind::WrongShape]
        );
    }

    #[test]
    fn schema_errors_carry_the_instance_path() {
        let mut spec = spec(UnitFormat::Toml);
        spec.schema = Some(json!({
            "type": "object",
            "properties": {"limit": {"type": "integer", "maximum": 10}, "name": {"type": "string"}}
        }));
        let issues = validate(&spec, b"limit = 11\nname = 3\n")
            .err()
            .unwrap_or_default();
        assert_eq!(issues.len(), 2);
        assert!(issues.iter().all(|i| i.kind == IssueKind::Schema));
        let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, vec!["/limit", "/name"]);
        assert_eq!(validate(&spec, b"limit = 10\nname = \"x\"\n"), Ok(()));
    }

    #[test]
    fn parse_errors_are_issues_not_panics() {
        assert_eq!(
            kinds(validate(&spec(UnitFormat::Json), b"{\"a\": ")),
            vec![IssueKind::Parse]
        );
        assert_eq!(
            kinds(validate(&spec(UnitFormat::Json), b"{} {}")),
            vec![IssueKind::Parse]
        );
        assert_eq!(
            kinds(validate(&spec(UnitFormat::Yaml), b"a: [1, 2\n")),
            vec![IssueKind::Parse]
        );
        assert_eq!(
            kinds(validate(&spec(UnitFormat::Yaml), b"a: 1\n---\nb: 2\n")),
            vec![IssueKind::Parse]
        );
        assert_eq!(
            kinds(validate(&spec(UnitFormat::Toml), b"a = \n")),
            vec![IssueKind::Parse]
        );
        assert_eq!(
            kinds(validate(&spec(UnitFormat::Toml), &[0x61, 0xff])),
            vec![IssueKind::NotUtf8]
        );
        let nan = validate(&spec(UnitFormat::Toml), b"a = nan\n");
        assert_eq!(kinds(nan), vec![IssueKind::Parse]);
    }

    #[test]
    fn toml_parse_error_names_the_line() {
        let text = messages(validate(
            &spec(UnitFormat::Toml),
            b"a = 1\nb = 2\nc = = 3\n",
        ));
        assert!(
            text.first().is_some_and(|m| m.contains("line 3")),
            "{text:?}"
        );
    }

    #[test]
    fn yaml_alias_bombs_are_refused_before_expansion() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..8 {
            let prev = level - 1;
            let refs = vec![format!("*a{prev}"); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        let issues = validate(&spec(UnitFormat::Yaml), text.as_bytes())
            .err()
            .unwrap_or_default();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].kind, IssueKind::TooLarge);
        // A few aliases are fine.
        assert_eq!(
            validate(&spec(UnitFormat::Yaml), b"a: &x [1]\nb: *x\n"),
            Ok(())
        );
    }

    #[test]
    fn issues_are_capped_and_the_rest_counted() {
        let mut spec = spec(UnitFormat::Json);
        spec.unique_entries.push(UniqueEntries {
            path: "".into(),
            key: None,
        });
        let text = serde_json::to_string(&vec![1; 250]).unwrap_or_default();
        let issues = validate(&spec, text.as_bytes()).err().unwrap_or_default();
        assert_eq!(issues.len(), MAX_ISSUES + 1);
        let last = issues.last().map(|i| (i.kind, i.message.clone()));
        assert_eq!(
            last,
            Some((
                IssueKind::TooManyIssues,
                "149 more issues not listed (the limit is 100)".into()
            ))
        );
    }

    #[test]
    fn spec_problems_are_all_reported() {
        let mut bad = UnitSpec::new(UnitFormat::Raw, 0);
        bad.schema = Some(json!({"type": 12}));
        bad.max_entries.push(EntryLimit {
            path: "features".into(),
            max: 1,
        });
        bad.unique_entries.push(UniqueEntries {
            path: "/x".into(),
            key: Some(String::new()),
        });
        let errors = bad.check().err().unwrap_or_default();
        assert!(errors.contains(&SpecError::MaxBytes { max_bytes: 0 }));
        assert!(errors.contains(&SpecError::BadPointer {
            rule: "max_entries",
            path: "features".into()
        }));
        assert!(errors.contains(&SpecError::EmptyKey { path: "/x".into() }));
        assert!(errors.contains(&SpecError::RawWithStructure { field: "schema" }));
        assert!(errors.iter().any(|e| matches!(e, SpecError::Schema { .. })));
        assert!(
            kinds(validate(&bad, b"x"))
                .iter()
                .all(|k| *k == IssueKind::SpecInvalid)
        );
    }

    #[test]
    fn remote_schema_references_are_not_fetched() {
        let mut spec = spec(UnitFormat::Json);
        spec.schema = Some(json!({"$ref": "https://example.com/schema.json"}));
        assert!(matches!(
            spec.check().err().unwrap_or_default().as_slice(),
            [SpecError::Schema { .. }]
        ));
    }

    #[test]
    fn fail_open_needs_a_valid_safe_default() {
        let mut spec = spec(UnitFormat::Json);
        spec.max_entries.push(EntryLimit {
            path: "/features".into(),
            max: 2,
        });
        spec.fail_mode = FailMode::Open;
        assert_eq!(spec.check(), Err(vec![SpecError::OpenWithoutSafeDefault]));
        spec.safe_default = Some(features_json(3));
        assert!(matches!(
            spec.check().err().unwrap_or_default().as_slice(),
            [SpecError::SafeDefaultInvalid { .. }]
        ));
        spec.safe_default = Some(features_json(0));
        assert_eq!(spec.check(), Ok(()));
    }

    #[test]
    fn spec_deserializes_with_safe_defaults_and_refuses_unknown_fields() {
        let spec: UnitSpec = serde_json::from_value(json!({"format": "json", "max_bytes": 10}))
            .unwrap_or_else(|_| UnitSpec::new(UnitFormat::Raw, 1));
        assert_eq!(spec.fail_mode, FailMode::Closed);
        assert_eq!(spec.format, UnitFormat::Json);
        let unknown = serde_json::from_value::<UnitSpec>(
            json!({"format": "json", "max_bytes": 10, "colour": 1}),
        );
        assert!(unknown.is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                for format in [UnitFormat::Json, UnitFormat::Yaml, UnitFormat::Toml, UnitFormat::Raw] {
                    let mut spec = UnitSpec::new(format, 128);
                    if format != UnitFormat::Raw {
                        spec.max_entries.push(EntryLimit { path: "/a".into(), max: 2 });
                        spec.unique_entries.push(UniqueEntries { path: "/a".into(), key: Some("k".into()) });
                    }
                    let _ = validate(&spec, &bytes);
                }
            }

            #[test]
            fn entry_limit_is_exact(count in 0usize..50, max in 0u64..50) {
                let mut spec = UnitSpec::new(UnitFormat::Json, 1024 * 1024);
                spec.max_entries.push(EntryLimit { path: "/features".into(), max });
                let result = validate(&spec, features_json(count).as_bytes());
                prop_assert_eq!(result.is_ok(), (count as u64) <= max);
            }
        }
    }
}
