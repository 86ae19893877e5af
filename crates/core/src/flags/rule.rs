//! Targeting rules: the subset of flagd's JsonLogic that a flag set may use, compiled once
//! (when the flag set is read) and evaluated against an evaluation context.
//!
//! An operator is an object with one key. Supported: `var` (a dotted path into the context,
//! with an optional default: `{"var": ["user.plan", "free"]}`), `if` (`[cond, then, cond,
//! then, ..., else]`), `==`, `!=`, `===`, `!==` (no type coercion; numbers compare by value),
//! `<`, `<=`, `>`, `>=` (numbers, or two strings), `!`, `!!`, `and`, `or`, `in` (a substring
//! of a string, or an element of an array), `starts_with`, `ends_with`, `cat`, and
//! `fractional`. Anything else is refused when the flag set is read, with the JSON pointer of
//! the operator.
//!
//! `fractional` (`[bucket_by?, [variant, weight], ...]`) puts a context in a bucket by the
//! 32-bit MurmurHash3 (x86, seed 0) of `bucket_by` (a string; default the flag's key followed
//! by the context's `targetingKey`): the bucket is `hash × total_weight / 2^32`, walked over
//! the weights in order. The same key always lands in the same variant; which variant a
//! given key lands in may differ from flagd's own hashing.
//!
//! Evaluation has no loops, so its cost is bounded by the rule's size, which
//! [`RULE_NODES_MAX`] and [`RULE_DEPTH_MAX`] limit.

use serde_json::{Map, Value};

/// A rule has at most this many nodes (operators and literals).
pub const RULE_NODES_MAX: usize = 1_000;
/// A rule nests at most this deep.
pub const RULE_DEPTH_MAX: usize = 32;
/// A `fractional` has at most this many buckets.
pub const FRACTIONAL_BUCKETS_MAX: usize = 100;
/// A bucket's weight is at most this.
pub const FRACTIONAL_WEIGHT_MAX: u64 = 1_000_000;

/// A compiled targeting rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Literal(Value),
    Array(Vec<Rule>),
    Var {
        path: Vec<String>,
        default: Option<Box<Rule>>,
    },
    If(Vec<Rule>),
    Compare(Compare, Box<Rule>, Box<Rule>),
    Not(Box<Rule>),
    Truthy(Box<Rule>),
    And(Vec<Rule>),
    Or(Vec<Rule>),
    In(Box<Rule>, Box<Rule>),
    StartsWith(Box<Rule>, Box<Rule>),
    EndsWith(Box<Rule>, Box<Rule>),
    Cat(Vec<Rule>),
    Fractional {
        bucket_by: Option<Box<Rule>>,
        buckets: Vec<(String, u64)>,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// Why a rule did not compile: the JSON pointer of the bad node and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub path: String,
    pub message: String,
}

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// A `fractional` without `bucket_by` needs the context's `targetingKey`.
    TargetingKeyMissing,
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub(crate) fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

struct Compiler {
    nodes: usize,
    errors: Vec<RuleError>,
}

impl Compiler {
    fn error(&mut self, path: &str, message: String) {
        self.errors.push(RuleError {
            path: path.to_owned(),
            message,
        });
    }

    fn compile(&mut self, value: &Value, path: &str, depth: usize) -> Option<Rule> {
        self.nodes = self.nodes.saturating_add(1);
        if self.nodes > RULE_NODES_MAX {
            if self.nodes == RULE_NODES_MAX + 1 {
                self.error(
                    path,
                    format!("the rule has more than {RULE_NODES_MAX} nodes"),
                );
            }
            return None;
        }
        if depth > RULE_DEPTH_MAX {
            self.error(
                path,
                format!("the rule nests deeper than {RULE_DEPTH_MAX} levels"),
            );
            return None;
        }
        match value {
            Value::Array(items) => {
                let mut rules = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    rules.push(self.compile(item, &format!("{path}/{index}"), depth + 1)?);
                }
                Some(Rule::Array(rules))
            }
            Value::Object(map) => self.operator(map, path, depth),
            scalar => Some(Rule::Literal(scalar.clone())),
        }
    }

    fn operator(&mut self, map: &Map<String, Value>, path: &str, depth: usize) -> Option<Rule> {
        let mut entries = map.iter();
        let (Some((name, args)), None) = (entries.next(), entries.next()) else {
            self.error(
                path,
                format!(
                    "an operator is an object with one key (e.g. {{\"var\": \"email\"}}); found {} keys",
                    map.len()
                ),
            );
            return None;
        };
        let at = format!("{path}/{}", escape(name));
        let args_path = |index: usize| {
            if args.is_array() {
                format!("{at}/{index}")
            } else {
                at.clone()
            }
        };
        let list: Vec<&Value> = match args {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        let compile_args = |this: &mut Self, min: usize, max: usize| -> Option<Vec<Rule>> {
            if list.len() < min || list.len() > max {
                let expected = if min == max {
                    format!("{min}")
                } else if max == usize::MAX {
                    format!("at least {min}")
                } else {
                    format!("{min} to {max}")
                };
                this.error(
                    &at,
                    format!("{name} takes {expected} arguments; found {}", list.len()),
                );
                return None;
            }
            let mut rules = Vec::with_capacity(list.len());
            for (index, item) in list.iter().enumerate() {
                rules.push(this.compile(item, &args_path(index), depth + 1)?);
            }
            Some(rules)
        };
        let two = |mut rules: Vec<Rule>| -> Option<(Box<Rule>, Box<Rule>)> {
            let second = rules.pop()?;
            let first = rules.pop()?;
            Some((Box::new(first), Box::new(second)))
        };
        let compare = |this: &mut Self, op: Compare| {
            compile_args(this, 2, 2)
                .and_then(two)
                .map(|(a, b)| Rule::Compare(op, a, b))
        };
        match name.as_str() {
            "var" => self.var(&list, &at, depth),
            "if" => {
                let rules = compile_args(self, 1, usize::MAX)?;
                Some(Rule::If(rules))
            }
            "==" | "===" => compare(self, Compare::Equal),
            "!=" | "!==" => compare(self, Compare::NotEqual),
            "<" => compare(self, Compare::Less),
            "<=" => compare(self, Compare::LessOrEqual),
            ">" => compare(self, Compare::Greater),
            ">=" => compare(self, Compare::GreaterOrEqual),
            "!" => {
                let mut rules = compile_args(self, 1, 1)?;
                rules.pop().map(|rule| Rule::Not(Box::new(rule)))
            }
            "!!" => {
                let mut rules = compile_args(self, 1, 1)?;
                rules.pop().map(|rule| Rule::Truthy(Box::new(rule)))
            }
            "and" => compile_args(self, 1, usize::MAX).map(Rule::And),
            "or" => compile_args(self, 1, usize::MAX).map(Rule::Or),
            "in" => compile_args(self, 2, 2)
                .and_then(two)
                .map(|(a, b)| Rule::In(a, b)),
            "starts_with" => compile_args(self, 2, 2)
                .and_then(two)
                .map(|(a, b)| Rule::StartsWith(a, b)),
            "ends_with" => compile_args(self, 2, 2)
                .and_then(two)
                .map(|(a, b)| Rule::EndsWith(a, b)),
            "cat" => compile_args(self, 1, usize::MAX).map(Rule::Cat),
            "fractional" => self.fractional(&list, &at, depth),
            other => {
                self.error(
                    &at,
                    format!(
                        "operator {other:?} is not supported; expected one of var, if, ==, !=, ===, !==, <, <=, >, >=, !, !!, and, or, in, starts_with, ends_with, cat, fractional"
                    ),
                );
                None
            }
        }
    }

    fn var(&mut self, list: &[&Value], at: &str, depth: usize) -> Option<Rule> {
        let (name, default) = match list {
            [name] => (*name, None),
            [name, default] => (*name, Some(*default)),
            _ => {
                self.error(
                    at,
                    format!(
                        "var takes a path and an optional default; found {} arguments",
                        list.len()
                    ),
                );
                return None;
            }
        };
        let Value::String(name) = name else {
            self.error(
                at,
                "var's path must be a string such as \"user.plan\"".to_owned(),
            );
            return None;
        };
        let path = if name.is_empty() {
            Vec::new()
        } else {
            name.split('.').map(str::to_owned).collect()
        };
        let default = match default {
            None => None,
            Some(value) => Some(Box::new(self.compile(
                value,
                &format!("{at}/1"),
                depth + 1,
            )?)),
        };
        Some(Rule::Var { path, default })
    }

    fn fractional(&mut self, list: &[&Value], at: &str, depth: usize) -> Option<Rule> {
        let (bucket_by, buckets) = match list.split_first() {
            Some((first, rest)) if !first.is_array() => (
                Some(Box::new(self.compile(
                    first,
                    &format!("{at}/0"),
                    depth + 1,
                )?)),
                (rest, 1),
            ),
            _ => (None, (list, 0)),
        };
        let (buckets, offset) = buckets;
        if buckets.is_empty() || buckets.len() > FRACTIONAL_BUCKETS_MAX {
            self.error(
                at,
                format!(
                    "fractional takes 1 to {FRACTIONAL_BUCKETS_MAX} buckets [variant, weight]; found {}",
                    buckets.len()
                ),
            );
            return None;
        }
        let mut out = Vec::with_capacity(buckets.len());
        let mut total: u64 = 0;
        for (index, bucket) in buckets.iter().enumerate() {
            let here = format!("{at}/{}", index + offset);
            let parsed = match bucket.as_array().map(Vec::as_slice) {
                Some([Value::String(variant)]) => Some((variant.clone(), 1)),
                Some([Value::String(variant), Value::Number(weight)]) => weight
                    .as_u64()
                    .filter(|w| *w <= FRACTIONAL_WEIGHT_MAX)
                    .map(|w| (variant.clone(), w)),
                _ => None,
            };
            match parsed {
                Some((variant, weight)) => {
                    total = total.saturating_add(weight);
                    out.push((variant, weight));
                }
                None => self.error(
                    &here,
                    format!(
                        "a fractional bucket is [variant name, whole weight from 0 to {FRACTIONAL_WEIGHT_MAX}]; found {bucket}"
                    ),
                ),
            }
        }
        if out.len() != buckets.len() {
            return None;
        }
        if total == 0 {
            self.error(at, "fractional's weights add up to 0".to_owned());
            return None;
        }
        Some(Rule::Fractional {
            bucket_by,
            buckets: out,
        })
    }
}

impl Rule {
    /// Compiles `value`, found at the JSON pointer `path`; every error found, with its path.
    pub fn compile(value: &Value, path: &str) -> Result<Rule, Vec<RuleError>> {
        let mut compiler = Compiler {
            nodes: 0,
            errors: Vec::new(),
        };
        let rule = compiler.compile(value, path, 0);
        match rule {
            Some(rule) if compiler.errors.is_empty() => Ok(rule),
            _ => {
                if compiler.errors.is_empty() {
                    compiler.error(path, "the rule does not compile".to_owned());
                }
                Err(compiler.errors)
            }
        }
    }

    /// Every variant name the rule can resolve to as a literal (the results of `if` branches
    /// and `fractional` buckets), each with its JSON pointer under `path`, so a flag set can
    /// check them against its variants when it is read.
    pub fn literal_results(&self, path: &str, out: &mut Vec<(String, Value)>) {
        match self {
            Rule::Literal(value) => out.push((path.to_owned(), value.clone())),
            Rule::If(rules) => {
                let count = rules.len();
                for (index, rule) in rules.iter().enumerate() {
                    let is_result = index % 2 == 1 || index + 1 == count;
                    if is_result {
                        rule.literal_results(&format!("{path}/if/{index}"), out);
                    }
                }
            }
            Rule::Fractional { bucket_by, buckets } => {
                let offset = usize::from(bucket_by.is_some());
                for (index, (variant, _)) in buckets.iter().enumerate() {
                    out.push((
                        format!("{path}/fractional/{}/0", index + offset),
                        Value::String(variant.clone()),
                    ));
                }
            }
            _ => {}
        }
    }

    /// What the rule resolves to for `context` (an object holding the evaluation context,
    /// `targetingKey` and `$flagd.flagKey`), and whether a `fractional` chose it.
    pub fn resolve(&self, context: &Value) -> Result<(Value, bool), EvalError> {
        match self {
            Rule::If(rules) => {
                let mut index = 0;
                while let Some(rule) = rules.get(index) {
                    match rules.get(index + 1) {
                        None => return rule.resolve(context),
                        Some(then) => {
                            if truthy(&rule.eval(context)?) {
                                return then.resolve(context);
                            }
                        }
                    }
                    index += 2;
                }
                Ok((Value::Null, false))
            }
            Rule::Fractional { .. } => Ok((self.eval(context)?, true)),
            other => Ok((other.eval(context)?, false)),
        }
    }

    /// The rule's value for `context`.
    pub fn eval(&self, context: &Value) -> Result<Value, EvalError> {
        Ok(match self {
            Rule::Literal(value) => value.clone(),
            Rule::Array(rules) => Value::Array(
                rules
                    .iter()
                    .map(|rule| rule.eval(context))
                    .collect::<Result<_, _>>()?,
            ),
            Rule::Var { path, default } => {
                let mut here = Some(context);
                for segment in path {
                    here = here.and_then(|value| match value {
                        Value::Object(map) => map.get(segment),
                        Value::Array(items) => segment
                            .parse::<usize>()
                            .ok()
                            .and_then(|index| items.get(index)),
                        _ => None,
                    });
                }
                match (here, default) {
                    (Some(value), _) if !value.is_null() => value.clone(),
                    (_, Some(default)) => default.eval(context)?,
                    _ => Value::Null,
                }
            }
            Rule::If(_) => self.resolve(context)?.0,
            Rule::Compare(op, a, b) => {
                Value::Bool(compare(*op, &a.eval(context)?, &b.eval(context)?))
            }
            Rule::Not(rule) => Value::Bool(!truthy(&rule.eval(context)?)),
            Rule::Truthy(rule) => Value::Bool(truthy(&rule.eval(context)?)),
            Rule::And(rules) => {
                let mut last = Value::Bool(true);
                for rule in rules {
                    last = rule.eval(context)?;
                    if !truthy(&last) {
                        break;
                    }
                }
                last
            }
            Rule::Or(rules) => {
                let mut last = Value::Bool(false);
                for rule in rules {
                    last = rule.eval(context)?;
                    if truthy(&last) {
                        break;
                    }
                }
                last
            }
            Rule::In(needle, haystack) => {
                let needle = needle.eval(context)?;
                Value::Bool(match haystack.eval(context)? {
                    Value::String(text) => needle.as_str().is_some_and(|n| text.contains(n)),
                    Value::Array(items) => items.iter().any(|item| equal(item, &needle)),
                    _ => false,
                })
            }
            Rule::StartsWith(text, prefix) => {
                let (text, prefix) = (text.eval(context)?, prefix.eval(context)?);
                Value::Bool(
                    matches!((text.as_str(), prefix.as_str()), (Some(t), Some(p)) if t.starts_with(p)),
                )
            }
            Rule::EndsWith(text, suffix) => {
                let (text, suffix) = (text.eval(context)?, suffix.eval(context)?);
                Value::Bool(
                    matches!((text.as_str(), suffix.as_str()), (Some(t), Some(s)) if t.ends_with(s)),
                )
            }
            Rule::Cat(rules) => {
                let mut text = String::new();
                for rule in rules {
                    text.push_str(&stringify(&rule.eval(context)?));
                }
                Value::String(text)
            }
            Rule::Fractional { bucket_by, buckets } => {
                let key = match bucket_by {
                    Some(rule) => match rule.eval(context)? {
                        Value::String(text) => text,
                        Value::Null => return Err(EvalError::TargetingKeyMissing),
                        other => stringify(&other),
                    },
                    None => {
                        let targeting_key = context
                            .get("targetingKey")
                            .and_then(Value::as_str)
                            .filter(|key| !key.is_empty())
                            .ok_or(EvalError::TargetingKeyMissing)?;
                        let flag_key = context
                            .get("$flagd")
                            .and_then(|flagd| flagd.get("flagKey"))
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        format!("{flag_key}{targeting_key}")
                    }
                };
                match pick_bucket(&key, buckets) {
                    Some(variant) => Value::String(variant.to_owned()),
                    None => Value::Null,
                }
            }
        })
    }
}

/// The bucket `key` falls in.
fn pick_bucket<'a>(key: &str, buckets: &'a [(String, u64)]) -> Option<&'a str> {
    let total: u64 = buckets.iter().map(|(_, weight)| *weight).sum();
    let hash = u64::from(murmur3_x86_32(key.as_bytes(), 0));
    // hash < 2^32 and total <= 100 * 1e6 < 2^27, so the product fits in a u64.
    let bucket = hash.saturating_mul(total) >> 32;
    let mut upper: u64 = 0;
    for (variant, weight) in buckets {
        upper = upper.saturating_add(*weight);
        if bucket < upper {
            return Some(variant);
        }
    }
    buckets.last().map(|(variant, _)| variant.as_str())
}

/// JsonLogic truthiness: `false`, `null`, `0`, `""` and `[]` are false.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(_) => true,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn compare(op: Compare, a: &Value, b: &Value) -> bool {
    use std::cmp::Ordering;
    let order = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match op {
        Compare::Equal => equal(a, b),
        Compare::NotEqual => !equal(a, b),
        Compare::Less => order == Some(Ordering::Less),
        Compare::LessOrEqual => matches!(order, Some(Ordering::Less | Ordering::Equal)),
        Compare::Greater => order == Some(Ordering::Greater),
        Compare::GreaterOrEqual => matches!(order, Some(Ordering::Greater | Ordering::Equal)),
    }
}

fn stringify(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// MurmurHash3, x86 32-bit variant.
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut hash = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = chunk
            .iter()
            .rev()
            .fold(0u32, |acc, byte| (acc << 8) | u32::from(*byte));
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        hash ^= k;
        hash = hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = tail
            .iter()
            .rev()
            .fold(0u32, |acc, byte| (acc << 8) | u32::from(*byte));
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        hash ^= k;
    }
    // The length is mixed in modulo 2^32, as the reference does.
    hash ^= data.len() as u32;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^= hash >> 16;
    hash
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        assert_eq!(murmur3_x86_32(b"", 0), 0);
        assert_eq!(murmur3_x86_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_x86_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(
            murmur3_x86_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    fn eval(rule: Value, context: Value) -> Value {
        Rule::compile(&rule, "").unwrap().eval(&context).unwrap()
    }

    #[test]
    fn operators_evaluate_as_documented() {
        let context = json!({"targetingKey": "u1", "email": "ann@example.com", "plan": "pro",
                             "age": 30, "tags": ["beta"], "user": {"org": "acme"}});
        assert_eq!(eval(json!({"var": "user.org"}), context.clone()), "acme");
        assert_eq!(eval(json!({"var": ["nope", 7]}), context.clone()), 7);
        assert_eq!(
            eval(json!({"==": [{"var": "age"}, 30.0]}), context.clone()),
            true
        );
        assert_eq!(
            eval(json!({"==": [{"var": "age"}, "30"]}), context.clone()),
            false
        );
        assert_eq!(
            eval(json!({">=": [{"var": "age"}, 18]}), context.clone()),
            true
        );
        assert_eq!(
            eval(
                json!({"in": [{"var": "plan"}, ["pro", "team"]]}),
                context.clone()
            ),
            true
        );
        assert_eq!(
            eval(
                json!({"in": ["@example", {"var": "email"}]}),
                context.clone()
            ),
            true
        );
        assert_eq!(
            eval(json!({"in": ["beta", {"var": "tags"}]}), context.clone()),
            true
        );
        assert_eq!(
            eval(
                json!({"ends_with": [{"var": "email"}, "@example.com"]}),
                context.clone()
            ),
            true
        );
        assert_eq!(
            eval(
                json!({"starts_with": [{"var": "email"}, "bob"]}),
                context.clone()
            ),
            false
        );
        assert_eq!(
            eval(
                json!({"starts_with": [{"var": "age"}, "3"]}),
                context.clone()
            ),
            false
        );
        assert_eq!(
            eval(json!({"and": [true, {"var": "plan"}]}), context.clone()),
            "pro"
        );
        assert_eq!(
            eval(json!({"or": [0, "", {"var": "missing"}]}), context.clone()),
            Value::Null
        );
        assert_eq!(
            eval(json!({"!": [{"var": "missing"}]}), context.clone()),
            true
        );
        assert_eq!(
            eval(json!({"cat": ["a", 1, {"var": "plan"}]}), context.clone()),
            "a1pro"
        );
        assert_eq!(
            eval(
                json!({"if": [{"==": [{"var": "plan"}, "free"]}, "a", {"var": "plan"}, "b", "c"]}),
                context
            ),
            "b"
        );
    }

    #[test]
    fn fractional_is_stable_and_spreads_by_weight() {
        let rule = Rule::compile(&json!({"fractional": [["on", 25], ["off", 75]]}), "").unwrap();
        let mut on = 0;
        for i in 0..4_000 {
            let context = json!({"targetingKey": format!("user-{i}"), "$flagd": {"flagKey": "f"}});
            let (first, split) = rule.resolve(&context).unwrap();
            assert!(split);
            assert_eq!(rule.resolve(&context).unwrap().0, first, "stable");
            if first == "on" {
                on += 1;
            }
        }
        assert!((800..1_200).contains(&on), "{on} of 4000 in a 25% bucket");
        assert_eq!(
            rule.eval(&json!({"$flagd": {"flagKey": "f"}})),
            Err(EvalError::TargetingKeyMissing)
        );
        let by_email =
            Rule::compile(&json!({"fractional": [{"var": "email"}, ["a"], ["b"]]}), "").unwrap();
        assert!(by_email.eval(&json!({"email": "x@y"})).unwrap().is_string());
    }

    #[test]
    fn bad_rules_are_refused_with_the_path_of_the_bad_node() {
        let errors = Rule::compile(
            &json!({"if": [{"regex": ["a", "b"]}, "on", {"var": 3}]}),
            "/flags/f/targeting",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "/flags/f/targeting/if/0/regex");
        assert!(errors[0].message.contains("not supported"), "{errors:?}");
        let errors = Rule::compile(&json!({"==": [1]}), "/t").unwrap_err();
        assert_eq!(errors[0].path, "/t/==");
        assert!(errors[0].message.contains("takes 2 arguments"));
        let errors = Rule::compile(&json!({"fractional": [["a", -1]]}), "/t").unwrap_err();
        assert_eq!(errors[0].path, "/t/fractional/0");
        let mut deep = json!(true);
        for _ in 0..40 {
            deep = json!({"!": [deep]});
        }
        let errors = Rule::compile(&deep, "").unwrap_err();
        assert!(errors[0].message.contains("deeper than 32"), "{errors:?}");
        let wide = Value::Array((0..2_000).map(|i| json!(i)).collect());
        let errors = Rule::compile(&json!({"in": [1, wide]}), "").unwrap_err();
        assert!(
            errors[0].message.contains("more than 1000 nodes"),
            "{errors:?}"
        );
    }
}
