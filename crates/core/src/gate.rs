//! Gate expressions: failure conditions on the health of a stage's canary nodes compared with
//! its baseline nodes, e.g. `p99_latency > 200ms OR error_rate > 0.5%`.
//!
//! A gate is a FAILURE condition: when it evaluates true, the stage fails and the rollout rolls
//! back.
//!
//! # Grammar
//! Keywords (`OR`, `AND`, `NOT`, `significant`, `alpha`, `baseline`, `min_requests`) are
//! case-insensitive.
//! ```text
//! gate    := or | "min_requests" INT
//! or      := and ("OR" and)*
//! and     := unary ("AND" unary)*
//! unary   := "NOT" unary | "(" or ")" | cmp
//!          | "significant" "(" metric ">" "baseline." metric ["," "alpha" "=" NUMBER] ")"
//! cmp     := sum (">" | ">=" | "<" | "<=") sum
//! sum     := prod (("+"|"-") prod)*
//! prod    := atom (("*"|"/") atom)*
//! atom    := NUMBER [unit] | metric | "baseline." metric | "(" sum ")"
//! unit    := "ms" | "s" | "%"
//! metric  := error_rate | requests | errors | p50_latency | p90_latency | p95_latency
//!          | p99_latency | p999_latency | rejections | crashes | health_check_failures
//!          | silent_nodes
//! ```
//! A metric alone means the canary's; `baseline.metric` means the baseline's.
//!
//! # Dimensions
//! Every value has a dimension, checked when the gate is parsed:
//! - latency, in milliseconds: `200ms`, `0.2s`, `p99_latency`;
//! - ratio: `0.5%`, `error_rate`;
//! - count: `requests`, `errors`, `rejections`, `crashes`, `health_check_failures`,
//!   `silent_nodes`; bare numbers compare with counts (`rejections > 0`);
//! - scalar: bare numbers in `*` and `/` (`1.5 * baseline.error_rate`).
//!
//! `scalar * x = x`, `x / scalar = x`, `count * ratio = count`, `count / count = ratio`,
//! `latency / latency = scalar`, `ratio / ratio = scalar`; `+` and `-` need equal dimensions
//! (a bare number added to a count is a count). Both sides of a comparison must have the same
//! dimension: `p99_latency > 0.5%` is refused, and `error_rate > 0.005` is refused with the
//! suggestion `0.5%`.
//!
//! # Evaluation
//! Three-valued (Kleene) logic. A comparison that reads a rate or a latency (`error_rate`,
//! `pNN_latency`) of a group with fewer than `min_requests` requests is Inconclusive, for the
//! baseline too; a reference to the baseline when there is none is Inconclusive. Counts are
//! always conclusive. `OR` fails if any side fails, else is inconclusive if any side is, else
//! passes; `AND` is the dual; `NOT` swaps pass and fail.
//!
//! `significant(error_rate > baseline.error_rate)` is a one-sided two-proportion z-test with
//! pooled variance ([`crate::stats::two_proportion_z`]); it fails when the canary's error rate
//! is higher than the baseline's with a p-value below `alpha`. The default alpha is
//! [`ALPHA_DEFAULT`] = 1e-6 *per evaluation*: a stage whose gates are evaluated N times has, by
//! the union bound, at most `N × alpha` chance of failing a healthy version by chance (1e-3
//! for a thousand evaluations).
//!
//! `min_requests N` written as a gate line is not a condition: it sets the stage's
//! `min_requests` (see [`parse_gate_line`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::health::GroupMetrics;
use crate::stats::two_proportion_z;

/// Longest gate expression accepted, in bytes.
pub const GATE_SOURCE_MAX_BYTES: usize = 1024;
/// Most tokens in one gate expression.
pub const GATE_TOKENS_MAX: usize = 256;
/// Deepest nesting of parentheses and `NOT` in one gate expression.
pub const GATE_DEPTH_MAX: usize = 32;
/// Default significance level of `significant(...)`, per evaluation.
pub const ALPHA_DEFAULT: f64 = 1e-6;
/// Largest `min_requests` a gate line may set.
pub const MIN_REQUESTS_MAX: u64 = 1_000_000_000;
/// Largest number literal accepted (in its written unit).
const NUMBER_MAX: f64 = 1e15;

/// One gate of a stage, as written and as parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// The expression as the plan file wrote it.
    pub source: String,
    pub expr: GateExpr,
}

/// A health metric of a group of nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ErrorRate,
    Requests,
    Errors,
    P50Latency,
    P90Latency,
    P95Latency,
    P99Latency,
    P999Latency,
    Rejections,
    Crashes,
    HealthCheckFailures,
    SilentNodes,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::ErrorRate,
        Metric::Requests,
        Metric::Errors,
        Metric::P50Latency,
        Metric::P90Latency,
        Metric::P95Latency,
        Metric::P99Latency,
        Metric::P999Latency,
        Metric::Rejections,
        Metric::Crashes,
        Metric::HealthCheckFailures,
        Metric::SilentNodes,
    ];

    /// The name gate expressions use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::Requests => "requests",
            Metric::Errors => "errors",
            Metric::P50Latency => "p50_latency",
            Metric::P90Latency => "p90_latency",
            Metric::P95Latency => "p95_latency",
            Metric::P99Latency => "p99_latency",
            Metric::P999Latency => "p999_latency",
            Metric::Rejections => "rejections",
            Metric::Crashes => "crashes",
            Metric::HealthCheckFailures => "health_check_failures",
            Metric::SilentNodes => "silent_nodes",
        }
    }

    /// The metric called `name` (ASCII case-insensitive).
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL
            .into_iter()
            .find(|metric| metric.name().eq_ignore_ascii_case(name))
    }

    pub fn dimension(self) -> Dimension {
        match self {
            Metric::ErrorRate => Dimension::Ratio,
            Metric::P50Latency
            | Metric::P90Latency
            | Metric::P95Latency
            | Metric::P99Latency
            | Metric::P999Latency => Dimension::Latency,
            Metric::Requests
            | Metric::Errors
            | Metric::Rejections
            | Metric::Crashes
            | Metric::HealthCheckFailures
            | Metric::SilentNodes => Dimension::Count,
        }
    }

    /// Latency quantile (0..=1) for latency metrics.
    fn quantile(self) -> Option<f64> {
        match self {
            Metric::P50Latency => Some(0.50),
            Metric::P90Latency => Some(0.90),
            Metric::P95Latency => Some(0.95),
            Metric::P99Latency => Some(0.99),
            Metric::P999Latency => Some(0.999),
            _ => None,
        }
    }

    fn value_of(self, group: &GroupMetrics) -> Option<f64> {
        match self {
            Metric::ErrorRate => group.error_rate(),
            Metric::Requests => Some(group.requests() as f64),
            Metric::Errors => Some(group.errors() as f64),
            Metric::Rejections => Some(group.rejections as f64),
            Metric::Crashes => Some(group.crashes as f64),
            Metric::HealthCheckFailures => Some(group.health_check_failures as f64),
            Metric::SilentNodes => Some(group.silent_nodes as f64),
            Metric::P50Latency
            | Metric::P90Latency
            | Metric::P95Latency
            | Metric::P99Latency
            | Metric::P999Latency => self.quantile().and_then(|q| group.latency_quantile_ms(q)),
        }
    }
}

/// What kind of quantity a value is; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Milliseconds.
    Latency,
    /// A fraction, written in percent.
    Ratio,
    /// A number of things.
    Count,
    /// A bare number.
    Scalar,
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dimension::Latency => "latency in ms",
            Dimension::Ratio => "ratio in %",
            Dimension::Count => "count",
            Dimension::Scalar => "bare number",
        })
    }
}

/// Whose metrics a reference reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Nodes of the stage that have the new version.
    Canary,
    /// Nodes that do not have it yet.
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl ArithOp {
    fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }

    /// The symbol of the negation, for "not failing" details.
    fn negated_symbol(self) -> &'static str {
        match self {
            CmpOp::Gt => "<=",
            CmpOp::Ge => "<",
            CmpOp::Lt => ">=",
            CmpOp::Le => ">",
        }
    }

    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
        }
    }
}

/// A number-valued expression. Literals hold canonical units: milliseconds for latencies,
/// fractions (0..=1) for ratios.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Literal {
        value: f64,
        dimension: Dimension,
    },
    Metric {
        group: Group,
        metric: Metric,
    },
    Arith {
        op: ArithOp,
        left: Box<Value>,
        right: Box<Value>,
    },
}

/// A parsed, dimension-checked gate: true means the stage fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateExpr {
    Compare {
        left: Value,
        op: CmpOp,
        right: Value,
    },
    /// One-sided two-proportion z-test of the canary's `metric` against the baseline's.
    Significant {
        metric: Metric,
        alpha: f64,
    },
    Not(Box<GateExpr>),
    And(Vec<GateExpr>),
    Or(Vec<GateExpr>),
}

/// What a gate concluded, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    /// The failure condition is false on enough data.
    Pass { detail: String },
    /// The failure condition is true.
    Fail { detail: String },
    /// Not enough data to say: hold, never promote.
    Inconclusive { detail: String },
}

/// Why a gate expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {column}: {message}")]
pub struct GateError {
    /// 1-based character position in the expression.
    pub column: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

/// One line of a stage's `gates:` list.
#[derive(Debug, Clone, PartialEq)]
pub enum GateLine {
    /// A failure condition.
    Gate(Gate),
    /// `min_requests N`: sets the stage's minimum sample; not a condition.
    MinRequests(u64),
}

/// Parses one line of a `gates:` list: a gate expression or `min_requests N`.
pub fn parse_gate_line(source: &str) -> Result<GateLine, GateError> {
    if source.len() > GATE_SOURCE_MAX_BYTES {
        return Err(GateError {
            column: 1,
            message: format!(
                "gate is {} bytes long; the limit is {GATE_SOURCE_MAX_BYTES} bytes",
                source.len()
            ),
        });
    }
    let tokens = lex(source)?;
    let mut parser = Parser {
        tokens,
        position: 0,
        depth: 0,
        end_column: source.chars().count() + 1,
    };
    if parser.peek_keyword("min_requests") {
        parser.position += 1;
        let column = parser.column();
        let count = match parser.next() {
            Some(Token {
                kind:
                    TokenKind::Number {
                        value,
                        unit: None,
                        integer: true,
                        ..
                    },
                ..
            }) if value <= MIN_REQUESTS_MAX as f64 => value as u64,
            _ => {
                return Err(GateError {
                    column,
                    message: format!(
                        "expected a whole number of requests after min_requests, at most {MIN_REQUESTS_MAX}, e.g. `min_requests 1000`"
                    ),
                });
            }
        };
        parser.expect_end()?;
        return Ok(GateLine::MinRequests(count));
    }
    let node = parser.parse_or()?;
    parser.expect_end()?;
    let expr = check_condition(&node)?;
    Ok(GateLine::Gate(Gate {
        source: source.trim().to_owned(),
        expr,
    }))
}

impl Gate {
    /// Parses a gate expression (not a `min_requests` line).
    pub fn parse(source: &str) -> Result<Gate, GateError> {
        match parse_gate_line(source)? {
            GateLine::Gate(gate) => Ok(gate),
            GateLine::MinRequests(_) => Err(GateError {
                column: 1,
                message: "`min_requests N` sets a stage's minimum sample; it is not a condition"
                    .to_owned(),
            }),
        }
    }

    /// Whether the condition reads the baseline (then it needs the baseline's data too).
    pub fn reads_baseline(&self) -> bool {
        fn value(v: &Value) -> bool {
            match v {
                Value::Literal { .. } => false,
                Value::Metric { group, .. } => *group == Group::Baseline,
                Value::Arith { left, right, .. } => value(left) || value(right),
            }
        }
        fn expr(e: &GateExpr) -> bool {
            match e {
                GateExpr::Compare { left, right, .. } => value(left) || value(right),
                GateExpr::Significant { .. } => true,
                GateExpr::Not(inner) => expr(inner),
                GateExpr::And(all) | GateExpr::Or(all) => all.iter().any(expr),
            }
        }
        expr(&self.expr)
    }

    /// Evaluates the failure condition on the canary, against the baseline when there is one.
    pub fn evaluate(
        &self,
        canary: &GroupMetrics,
        baseline: Option<&GroupMetrics>,
        min_requests: u64,
    ) -> Verdict {
        let context = EvalContext {
            canary,
            baseline,
            min_requests,
        };
        let (truth, detail) = context.condition(&self.expr);
        match truth {
            Truth::True => Verdict::Fail { detail },
            Truth::False => Verdict::Pass { detail },
            Truth::Unknown => Verdict::Inconclusive { detail },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Ms,
    S,
    Percent,
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Number {
        value: f64,
        unit: Option<Unit>,
        integer: bool,
        text: String,
    },
    Ident(String),
    Dot,
    LParen,
    RParen,
    Comma,
    Equals,
    Cmp(CmpOp),
    Arith(ArithOp),
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    kind: TokenKind,
    /// 1-based character position.
    column: usize,
}

fn describe_token(kind: &TokenKind) -> String {
    match kind {
        TokenKind::Number { text, .. } => format!("`{text}`"),
        TokenKind::Ident(name) => format!("`{name}`"),
        TokenKind::Dot => "`.`".to_owned(),
        TokenKind::LParen => "`(`".to_owned(),
        TokenKind::RParen => "`)`".to_owned(),
        TokenKind::Comma => "`,`".to_owned(),
        TokenKind::Equals => "`=`".to_owned(),
        TokenKind::Cmp(op) => format!("`{}`", op.symbol()),
        TokenKind::Arith(op) => format!("`{}`", op.symbol()),
    }
}

fn lex(source: &str) -> Result<Vec<Token>, GateError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0usize;
    let at = |i: usize| chars.get(i).copied();
    // Every round consumes at least one character.
    while let Some(c) = at(index) {
        let column = index + 1;
        if c.is_whitespace() {
            index += 1;
            continue;
        }
        if tokens.len() >= GATE_TOKENS_MAX {
            return Err(GateError {
                column,
                message: format!("gate has more than {GATE_TOKENS_MAX} tokens"),
            });
        }
        let (kind, length) = if c.is_ascii_digit() {
            lex_number(&chars, index)?
        } else if c.is_ascii_alphabetic() || c == '_' {
            let length = chars
                .iter()
                .skip(index)
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .count();
            let name: String = chars.iter().skip(index).take(length).collect();
            (TokenKind::Ident(name), length)
        } else {
            let next = at(index + 1);
            match (c, next) {
                ('>', Some('=')) => (TokenKind::Cmp(CmpOp::Ge), 2),
                ('<', Some('=')) => (TokenKind::Cmp(CmpOp::Le), 2),
                ('>', _) => (TokenKind::Cmp(CmpOp::Gt), 1),
                ('<', _) => (TokenKind::Cmp(CmpOp::Lt), 1),
                ('+', _) => (TokenKind::Arith(ArithOp::Add), 1),
                ('-', _) => (TokenKind::Arith(ArithOp::Sub), 1),
                ('*', _) => (TokenKind::Arith(ArithOp::Mul), 1),
                ('/', _) => (TokenKind::Arith(ArithOp::Div), 1),
                ('(', _) => (TokenKind::LParen, 1),
                (')', _) => (TokenKind::RParen, 1),
                (',', _) => (TokenKind::Comma, 1),
                ('.', _) => (TokenKind::Dot, 1),
                ('=', Some('=')) => {
                    return Err(GateError {
                        column,
                        message: "`==` is not a comparison; expected >, >=, < or <=".to_owned(),
                    });
                }
                ('=', _) => (TokenKind::Equals, 1),
                _ => {
                    return Err(GateError {
                        column,
                        message: format!(
                            "unexpected character {c:?}; expected a metric, a number, an operator (> >= < <= + - * /) or parentheses"
                        ),
                    });
                }
            }
        };
        tokens.push(Token { kind, column });
        index += length.max(1);
    }
    Ok(tokens)
}

/// Lexes `digits [. digits] [e [+-] digits] [ms | s | %]` starting at `start`.
fn lex_number(chars: &[char], start: usize) -> Result<(TokenKind, usize), GateError> {
    let at = |i: usize| chars.get(i).copied();
    let digits_from = |i: usize| {
        chars
            .iter()
            .skip(i)
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut end = start + digits_from(start);
    let mut integer = true;
    if at(end) == Some('.') && at(end + 1).is_some_and(|c| c.is_ascii_digit()) {
        integer = false;
        end += 1 + digits_from(end + 1);
    }
    if matches!(at(end), Some('e' | 'E')) {
        let sign = usize::from(matches!(at(end + 1), Some('+' | '-')));
        if at(end + 1 + sign).is_some_and(|c| c.is_ascii_digit()) {
            integer = false;
            end += 1 + sign + digits_from(end + 1 + sign);
        }
    }
    let text: String = chars.iter().skip(start).take(end - start).collect();
    let value: f64 = text.parse().map_err(|_| GateError {
        column: start + 1,
        message: format!("`{text}` is not a number"),
    })?;
    if !value.is_finite() || value > NUMBER_MAX {
        return Err(GateError {
            column: start + 1,
            message: format!("number `{text}` is larger than the limit {NUMBER_MAX:e}"),
        });
    }
    let unit_length = chars
        .iter()
        .skip(end)
        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
        .count();
    let unit_text: String = chars.iter().skip(end).take(unit_length).collect();
    let (unit, consumed) = if at(end) == Some('%') {
        (Some(Unit::Percent), 1)
    } else if unit_text.is_empty() {
        (None, 0)
    } else if unit_text.eq_ignore_ascii_case("ms") {
        (Some(Unit::Ms), unit_length)
    } else if unit_text.eq_ignore_ascii_case("s") {
        (Some(Unit::S), unit_length)
    } else {
        return Err(GateError {
            column: end + 1,
            message: format!(
                "unknown unit `{unit_text}` after `{text}`; expected ms, s or % (e.g. 200ms, 0.2s, 0.5%)"
            ),
        });
    };
    let full_text: String = chars
        .iter()
        .skip(start)
        .take(end - start + consumed)
        .collect();
    Ok((
        TokenKind::Number {
            value,
            unit,
            integer,
            text: full_text,
        },
        end - start + consumed,
    ))
}

// ---------------------------------------------------------------------------------------------
// Parser: builds an untyped tree, then `check_condition` / `check_value` type it.

#[derive(Debug, Clone, PartialEq)]
enum NodeKind {
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Compare(CmpOp, Box<Node>, Box<Node>),
    Arith(ArithOp, Box<Node>, Box<Node>),
    Number {
        value: f64,
        unit: Option<Unit>,
        text: String,
    },
    Metric(Group, Metric),
    Significant {
        metric: Metric,
        alpha: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    kind: NodeKind,
    column: usize,
}

#[derive(Debug)]
struct Parser {
    tokens: Vec<Token>,
    position: usize,
    depth: usize,
    end_column: usize,
}

impl Parser {
    fn peek(&self) -> Option<&TokenKind> {
        self.tokens.get(self.position).map(|token| &token.kind)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        if token.is_some() {
            self.position += 1;
        }
        token
    }

    fn column(&self) -> usize {
        self.tokens
            .get(self.position)
            .map_or(self.end_column, |token| token.column)
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(TokenKind::Ident(name)) if name.eq_ignore_ascii_case(keyword))
    }

    fn found(&self) -> String {
        self.peek()
            .map_or_else(|| "the end of the gate".to_owned(), describe_token)
    }

    fn error(&self, expected: &str) -> GateError {
        GateError {
            column: self.column(),
            message: format!("expected {expected}, found {}", self.found()),
        }
    }

    fn expect(&mut self, kind: &TokenKind, expected: &str) -> Result<(), GateError> {
        if self.peek() == Some(kind) {
            self.position += 1;
            Ok(())
        } else {
            Err(self.error(expected))
        }
    }

    fn expect_end(&self) -> Result<(), GateError> {
        if self.peek().is_none() {
            Ok(())
        } else {
            Err(self.error("OR, AND, an operator or the end of the gate"))
        }
    }

    fn enter(&mut self) -> Result<(), GateError> {
        self.depth += 1;
        if self.depth > GATE_DEPTH_MAX {
            return Err(GateError {
                column: self.column(),
                message: format!("gate nests deeper than {GATE_DEPTH_MAX} levels"),
            });
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Node, GateError> {
        let column = self.column();
        let mut parts = vec![self.parse_and()?];
        while self.peek_keyword("or") {
            self.position += 1;
            parts.push(self.parse_and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Node {
                kind: NodeKind::Or(parts),
                column,
            }
        })
    }

    fn parse_and(&mut self) -> Result<Node, GateError> {
        let column = self.column();
        let mut parts = vec![self.parse_not()?];
        while self.peek_keyword("and") {
            self.position += 1;
            parts.push(self.parse_not()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Node {
                kind: NodeKind::And(parts),
                column,
            }
        })
    }

    fn parse_not(&mut self) -> Result<Node, GateError> {
        let column = self.column();
        if self.peek_keyword("not") {
            self.position += 1;
            self.enter()?;
            let inner = self.parse_not()?;
            self.depth -= 1;
            return Ok(Node {
                kind: NodeKind::Not(Box::new(inner)),
                column,
            });
        }
        self.parse_compare()
    }

    fn parse_compare(&mut self) -> Result<Node, GateError> {
        let left = self.parse_sum()?;
        let Some(TokenKind::Cmp(op)) = self.peek().cloned() else {
            return Ok(left);
        };
        let op_column = self.column();
        self.position += 1;
        let right = self.parse_sum()?;
        if let Some(TokenKind::Cmp(_)) = self.peek() {
            return Err(GateError {
                column: self.column(),
                message: "comparisons cannot be chained; join them with AND".to_owned(),
            });
        }
        Ok(Node {
            kind: NodeKind::Compare(op, Box::new(left), Box::new(right)),
            column: op_column,
        })
    }

    fn parse_sum(&mut self) -> Result<Node, GateError> {
        let mut left = self.parse_product()?;
        while let Some(TokenKind::Arith(op @ (ArithOp::Add | ArithOp::Sub))) = self.peek().cloned()
        {
            let column = self.column();
            self.position += 1;
            let right = self.parse_product()?;
            left = Node {
                kind: NodeKind::Arith(op, Box::new(left), Box::new(right)),
                column,
            };
        }
        Ok(left)
    }

    fn parse_product(&mut self) -> Result<Node, GateError> {
        let mut left = self.parse_atom()?;
        while let Some(TokenKind::Arith(op @ (ArithOp::Mul | ArithOp::Div))) = self.peek().cloned()
        {
            let column = self.column();
            self.position += 1;
            let right = self.parse_atom()?;
            left = Node {
                kind: NodeKind::Arith(op, Box::new(left), Box::new(right)),
                column,
            };
        }
        Ok(left)
    }

    fn parse_metric_name(&mut self) -> Result<Metric, GateError> {
        let column = self.column();
        let Some(TokenKind::Ident(name)) = self.peek().cloned() else {
            return Err(self.error(&format!("a metric ({})", metric_names())));
        };
        self.position += 1;
        Metric::from_name(&name).ok_or_else(|| GateError {
            column,
            message: format!(
                "unknown metric `{name}`; expected one of: {}",
                metric_names()
            ),
        })
    }

    fn parse_atom(&mut self) -> Result<Node, GateError> {
        let column = self.column();
        let expected = "a metric, a number or `(`";
        let Some(kind) = self.peek().cloned() else {
            return Err(self.error(expected));
        };
        if !matches!(
            kind,
            TokenKind::Number { .. } | TokenKind::LParen | TokenKind::Ident(_)
        ) {
            return Err(self.error(expected));
        }
        self.position += 1;
        match kind {
            TokenKind::Number {
                value, unit, text, ..
            } => Ok(Node {
                kind: NodeKind::Number { value, unit, text },
                column,
            }),
            TokenKind::LParen => {
                self.enter()?;
                let inner = self.parse_or()?;
                self.expect(&TokenKind::RParen, "`)`")?;
                self.depth -= 1;
                Ok(inner)
            }
            TokenKind::Ident(name) if name.eq_ignore_ascii_case("baseline") => {
                self.expect(
                    &TokenKind::Dot,
                    "`.` and a metric after `baseline`, e.g. baseline.error_rate",
                )?;
                let metric = self.parse_metric_name()?;
                Ok(Node {
                    kind: NodeKind::Metric(Group::Baseline, metric),
                    column,
                })
            }
            TokenKind::Ident(name) if name.eq_ignore_ascii_case("significant") => {
                self.parse_significant(column)
            }
            TokenKind::Ident(name) => match Metric::from_name(&name) {
                Some(metric) => Ok(Node {
                    kind: NodeKind::Metric(Group::Canary, metric),
                    column,
                }),
                None => Err(GateError {
                    column,
                    message: format!(
                        "unknown metric `{name}`; expected one of: {}, baseline.<metric>, significant(...), NOT",
                        metric_names()
                    ),
                }),
            },
            _ => Err(self.error(expected)),
        }
    }

    /// After `significant`: `( metric > baseline . metric [, alpha = NUMBER] )`.
    fn parse_significant(&mut self, column: usize) -> Result<Node, GateError> {
        self.expect(
            &TokenKind::LParen,
            "`(` after significant, e.g. significant(error_rate > baseline.error_rate)",
        )?;
        let metric_column = self.column();
        let metric = self.parse_metric_name()?;
        self.expect(
            &TokenKind::Cmp(CmpOp::Gt),
            "`>` (significant tests whether the canary is higher)",
        )?;
        if !self.peek_keyword("baseline") {
            return Err(self.error(&format!("baseline.{}", metric.name())));
        }
        self.position += 1;
        self.expect(&TokenKind::Dot, "`.` after baseline")?;
        let baseline_column = self.column();
        let baseline_metric = self.parse_metric_name()?;
        if baseline_metric != metric {
            return Err(GateError {
                column: baseline_column,
                message: format!(
                    "significant compares one metric with itself; expected baseline.{}, found baseline.{}",
                    metric.name(),
                    baseline_metric.name()
                ),
            });
        }
        if metric != Metric::ErrorRate {
            return Err(GateError {
                column: metric_column,
                message: format!(
                    "significant supports error_rate only (a two-proportion test needs errors out of requests), found {}",
                    metric.name()
                ),
            });
        }
        let mut alpha = ALPHA_DEFAULT;
        if self.peek() == Some(&TokenKind::Comma) {
            self.position += 1;
            if !self.peek_keyword("alpha") {
                return Err(self.error("alpha = NUMBER, e.g. alpha = 1e-6"));
            }
            self.position += 1;
            self.expect(&TokenKind::Equals, "`=` after alpha")?;
            let alpha_column = self.column();
            match self.next() {
                Some(Token {
                    kind:
                        TokenKind::Number {
                            value, unit: None, ..
                        },
                    ..
                }) if value > 0.0 && value <= 0.5 => {
                    alpha = value;
                }
                _ => {
                    return Err(GateError {
                        column: alpha_column,
                        message: "expected alpha as a bare number with 0 < alpha <= 0.5, \
                                  e.g. alpha = 1e-6"
                            .to_owned(),
                    });
                }
            }
        }
        self.expect(&TokenKind::RParen, "`)` closing significant(")?;
        Ok(Node {
            kind: NodeKind::Significant { metric, alpha },
            column,
        })
    }
}

fn metric_names() -> String {
    Metric::ALL
        .iter()
        .map(|metric| metric.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_condition(node: &Node) -> Result<GateExpr, GateError> {
    match &node.kind {
        NodeKind::Or(parts) => Ok(GateExpr::Or(
            parts
                .iter()
                .map(check_condition)
                .collect::<Result<_, _>>()?,
        )),
        NodeKind::And(parts) => Ok(GateExpr::And(
            parts
                .iter()
                .map(check_condition)
                .collect::<Result<_, _>>()?,
        )),
        NodeKind::Not(inner) => Ok(GateExpr::Not(Box::new(check_condition(inner)?))),
        NodeKind::Significant { metric, alpha } => Ok(GateExpr::Significant {
            metric: *metric,
            alpha: *alpha,
        }),
        NodeKind::Compare(op, left, right) => check_compare(*op, left, right, node.column),
        NodeKind::Arith(..) | NodeKind::Number { .. } | NodeKind::Metric(..) => Err(GateError {
            column: node.column,
            message: "expected a condition such as `error_rate > 0.5%`, found a value alone"
                .to_owned(),
        }),
    }
}

fn check_compare(
    op: CmpOp,
    left: &Node,
    right: &Node,
    column: usize,
) -> Result<GateExpr, GateError> {
    let (left_value, left_dimension) = check_value(left)?;
    let (right_value, right_dimension) = check_value(right)?;
    if !left_value.reads_metric() && !right_value.reads_metric() {
        return Err(GateError {
            column,
            message: "comparison reads no metric; expected a metric on at least one side"
                .to_owned(),
        });
    }
    use Dimension::{Count, Latency, Ratio, Scalar};
    let compatible = left_dimension == right_dimension
        || matches!(
            (left_dimension, right_dimension),
            (Count, Scalar) | (Scalar, Count)
        );
    if !compatible {
        let mut message = format!(
            "cannot compare `{left_value}` ({left_dimension}) with `{right_value}` ({right_dimension})"
        );
        for (dimension, other) in [
            (left_dimension, &right_value),
            (right_dimension, &left_value),
        ] {
            if let Value::Literal {
                value,
                dimension: Scalar,
            } = other
            {
                match dimension {
                    Ratio => message.push_str(&format!(
                        "; write ratios in percent: {}%",
                        format_number(value * 100.0)
                    )),
                    Latency => message.push_str(&format!(
                        "; write latencies with a unit: {}ms",
                        format_number(*value)
                    )),
                    _ => {}
                }
            }
        }
        return Err(GateError { column, message });
    }
    Ok(GateExpr::Compare {
        left: left_value,
        op,
        right: right_value,
    })
}

fn check_value(node: &Node) -> Result<(Value, Dimension), GateError> {
    use Dimension::{Latency, Ratio, Scalar};
    match &node.kind {
        NodeKind::Number { value, unit, .. } => {
            let (value, dimension) = match unit {
                None => (*value, Scalar),
                Some(Unit::Ms) => (*value, Latency),
                Some(Unit::S) => (*value * 1000.0, Latency),
                Some(Unit::Percent) => (*value / 100.0, Ratio),
            };
            Ok((Value::Literal { value, dimension }, dimension))
        }
        NodeKind::Metric(group, metric) => Ok((
            Value::Metric {
                group: *group,
                metric: *metric,
            },
            metric.dimension(),
        )),
        NodeKind::Arith(op, left, right) => {
            let (left_value, left_dimension) = check_value(left)?;
            let (right_value, right_dimension) = check_value(right)?;
            let dimension = arith_dimension(*op, left_dimension, right_dimension);
            let Some(dimension) = dimension else {
                return Err(GateError {
                    column: node.column,
                    message: format!(
                        "cannot compute `{left_value}` ({left_dimension}) {} `{right_value}` ({right_dimension}); expected e.g. 1.5 * baseline.error_rate or p99_latency + 50ms",
                        op.symbol()
                    ),
                });
            };
            Ok((
                Value::Arith {
                    op: *op,
                    left: Box::new(left_value),
                    right: Box::new(right_value),
                },
                dimension,
            ))
        }
        NodeKind::Or(_)
        | NodeKind::And(_)
        | NodeKind::Not(_)
        | NodeKind::Compare(..)
        | NodeKind::Significant { .. } => Err(GateError {
            column: node.column,
            message: "expected a value (a metric or a number), found a condition".to_owned(),
        }),
    }
}

/// The dimension of `left op right`, or `None` when the operation makes no sense.
fn arith_dimension(op: ArithOp, left: Dimension, right: Dimension) -> Option<Dimension> {
    use ArithOp::{Add, Div, Mul, Sub};
    use Dimension::{Count, Ratio, Scalar};
    match (op, left, right) {
        (Add | Sub, a, b) if a == b => Some(a),
        (Add | Sub, Count, Scalar) | (Add | Sub, Scalar, Count) => Some(Count),
        (Mul, Scalar, other) | (Mul, other, Scalar) => Some(other),
        (Mul, Count, Ratio) | (Mul, Ratio, Count) => Some(Count),
        (Div, other, Scalar) => Some(other),
        (Div, Count, Count) => Some(Ratio),
        (Div, a, b) if a == b => Some(Scalar),
        _ => None,
    }
}

impl Value {
    fn reads_metric(&self) -> bool {
        match self {
            Value::Literal { .. } => false,
            Value::Metric { .. } => true,
            Value::Arith { left, right, .. } => left.reads_metric() || right.reads_metric(),
        }
    }

    /// The dimension of the value (literals keep the dimension they were written with).
    pub fn dimension(&self) -> Dimension {
        match self {
            Value::Literal { dimension, .. } => *dimension,
            Value::Metric { metric, .. } => metric.dimension(),
            // Only dimension-checked values exist outside this module's parser, so the
            // fallback is never taken for parsed gates.
            Value::Arith { op, left, right } => {
                arith_dimension(*op, left.dimension(), right.dimension())
                    .unwrap_or(Dimension::Scalar)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Display: canonical text, used in verdict details.

fn format_number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 0.01 {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else if value.abs() >= 1e-4 {
        let text = format!("{value:.6}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        format!("{value:.2e}")
    }
}

fn format_in(dimension: Dimension, value: f64) -> String {
    match dimension {
        Dimension::Latency => format!("{}ms", format_number(value)),
        Dimension::Ratio => format!("{}%", format_number(value * 100.0)),
        Dimension::Count | Dimension::Scalar => format_number(value),
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Literal { value, dimension } => f.write_str(&format_in(*dimension, *value)),
            Value::Metric {
                group: Group::Canary,
                metric,
            } => f.write_str(metric.name()),
            Value::Metric {
                group: Group::Baseline,
                metric,
            } => {
                write!(f, "baseline.{}", metric.name())
            }
            Value::Arith { op, left, right } => {
                for (index, side) in [left, right].into_iter().enumerate() {
                    if index == 1 {
                        write!(f, " {} ", op.symbol())?;
                    }
                    if matches!(**side, Value::Arith { .. }) {
                        write!(f, "({side})")?;
                    } else {
                        write!(f, "{side}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for GateExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, parts: &[GateExpr], keyword: &str| {
            for (index, part) in parts.iter().enumerate() {
                if index > 0 {
                    write!(f, " {keyword} ")?;
                }
                if matches!(part, GateExpr::Or(_) | GateExpr::And(_)) {
                    write!(f, "({part})")?;
                } else {
                    write!(f, "{part}")?;
                }
            }
            Ok(())
        };
        match self {
            GateExpr::Compare { left, op, right } => write!(f, "{left} {} {right}", op.symbol()),
            GateExpr::Significant { metric, alpha } => {
                write!(
                    f,
                    "significant({0} > baseline.{0}, alpha={alpha:e})",
                    metric.name()
                )
            }
            GateExpr::Not(inner) => write!(f, "NOT ({inner})"),
            GateExpr::And(parts) => join(f, parts, "AND"),
            GateExpr::Or(parts) => join(f, parts, "OR"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Unknown,
}

#[derive(Debug)]
struct EvalContext<'a> {
    canary: &'a GroupMetrics,
    baseline: Option<&'a GroupMetrics>,
    min_requests: u64,
}

impl EvalContext<'_> {
    /// The group's metrics, or why they cannot be used for `metric`.
    fn group(&self, group: Group, metric: Metric) -> Result<&GroupMetrics, String> {
        let (metrics, name) = match group {
            Group::Canary => (self.canary, "canary"),
            Group::Baseline => (
                self.baseline
                    .ok_or_else(|| "no baseline nodes to compare with".to_owned())?,
                "baseline",
            ),
        };
        let needs_sample = metric.dimension() != Dimension::Count;
        if needs_sample && metrics.requests() < self.min_requests {
            return Err(format!(
                "{name} has {} requests, fewer than min_requests {}",
                metrics.requests(),
                self.min_requests
            ));
        }
        Ok(metrics)
    }

    fn value(&self, value: &Value) -> Result<f64, String> {
        match value {
            Value::Literal { value, .. } => Ok(*value),
            Value::Metric { group, metric } => {
                let metrics = self.group(*group, *metric)?;
                metric.value_of(metrics).ok_or_else(|| {
                    format!("{value} has no data (no requests or no latency observations)")
                })
            }
            Value::Arith { op, left, right } => {
                let left = self.value(left)?;
                let right = self.value(right)?;
                let result = match op {
                    ArithOp::Add => left + right,
                    ArithOp::Sub => left - right,
                    ArithOp::Mul => left * right,
                    ArithOp::Div if right == 0.0 => {
                        return Err(format!("{value} divides by zero"));
                    }
                    ArithOp::Div => left / right,
                };
                if result.is_finite() {
                    Ok(result)
                } else {
                    Err(format!("{value} is not a finite number"))
                }
            }
        }
    }

    /// `p99_latency 312.4ms`, `200ms`, or `1.5 * baseline.error_rate = 0.15%`.
    fn describe(value: &Value, number: f64) -> String {
        let shown = format_in(value.dimension(), number);
        match value {
            Value::Literal { .. } => shown,
            Value::Metric { .. } => format!("{value} {shown}"),
            Value::Arith { .. } => format!("{value} = {shown}"),
        }
    }

    fn condition(&self, expr: &GateExpr) -> (Truth, String) {
        match expr {
            GateExpr::Compare { left, op, right } => match (self.value(left), self.value(right)) {
                (Ok(l), Ok(r)) => {
                    let (left_text, right_text) =
                        (Self::describe(left, l), Self::describe(right, r));
                    if op.holds(l, r) {
                        (
                            Truth::True,
                            format!("{left_text} {} {right_text}", op.symbol()),
                        )
                    } else {
                        (
                            Truth::False,
                            format!("{left_text} {} {right_text}", op.negated_symbol()),
                        )
                    }
                }
                (Err(reason), _) | (_, Err(reason)) => {
                    (Truth::Unknown, format!("{expr}: inconclusive, {reason}"))
                }
            },
            GateExpr::Significant { metric, alpha } => self.significant(*metric, *alpha),
            GateExpr::Not(inner) => {
                let (truth, detail) = self.condition(inner);
                let truth = match truth {
                    Truth::True => Truth::False,
                    Truth::False => Truth::True,
                    Truth::Unknown => Truth::Unknown,
                };
                (truth, format!("NOT ({detail})"))
            }
            GateExpr::Or(parts) => self.combine(parts, Truth::True, Truth::False),
            GateExpr::And(parts) => self.combine(parts, Truth::False, Truth::True),
        }
    }

    /// Kleene OR (`dominant` = True) or AND (`dominant` = False): any dominant part decides;
    /// else any unknown part makes the whole unknown; else every part is `otherwise`.
    fn combine(&self, parts: &[GateExpr], dominant: Truth, otherwise: Truth) -> (Truth, String) {
        let results: Vec<(Truth, String)> = parts.iter().map(|part| self.condition(part)).collect();
        let truth = if results.iter().any(|(truth, _)| *truth == dominant) {
            dominant
        } else if results.iter().any(|(truth, _)| *truth == Truth::Unknown) {
            Truth::Unknown
        } else {
            otherwise
        };
        let detail = results
            .iter()
            .filter(|(part_truth, _)| *part_truth == truth)
            .map(|(_, detail)| detail.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        (truth, detail)
    }

    fn significant(&self, metric: Metric, alpha: f64) -> (Truth, String) {
        let name = metric.name();
        let groups = self
            .group(Group::Canary, metric)
            .and_then(|canary| Ok((canary, self.group(Group::Baseline, metric)?)));
        let (canary, baseline) = match groups {
            Ok(groups) => groups,
            Err(reason) => {
                return (
                    Truth::Unknown,
                    format!("significant({name} > baseline.{name}): inconclusive, {reason}"),
                );
            }
        };
        let Some(test) = two_proportion_z(
            canary.errors(),
            canary.requests(),
            baseline.errors(),
            baseline.requests(),
        ) else {
            return (
                Truth::Unknown,
                format!(
                    "significant({name} > baseline.{name}): inconclusive, a group has no requests"
                ),
            );
        };
        let rate =
            |group: &GroupMetrics| format_in(Dimension::Ratio, group.error_rate().unwrap_or(0.0));
        let failing = test.p_value < alpha;
        let detail = format!(
            "{name} {} ({}/{}) vs baseline {} ({}/{}): z={:.2}, p={:.1e} {} alpha {alpha:e}",
            rate(canary),
            canary.errors(),
            canary.requests(),
            rate(baseline),
            baseline.errors(),
            baseline.requests(),
            test.z,
            test.p_value,
            if failing { "<" } else { ">=" },
        );
        (if failing { Truth::True } else { Truth::False }, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{HealthSample, LatencyHistogram};
    use proptest::prelude::*;

    /// A group with `requests` requests, `errors` errors, every request at `latency_ms`.
    fn group(requests: u64, errors: u64, latency_ms: f64) -> GroupMetrics {
        let mut latency = LatencyHistogram::default();
        latency.record(latency_ms, requests);
        GroupMetrics {
            nodes: 10,
            sample: HealthSample {
                requests,
                errors,
                latency,
            },
            ..Default::default()
        }
    }

    /// Parses `source`, evaluates it, and checks the verdict's kind and that its detail
    /// contains `detail_part`.
    fn check(
        source: &str,
        canary: &GroupMetrics,
        baseline: Option<&GroupMetrics>,
        expected: &str,
        detail_part: &str,
    ) {
        let gate = Gate::parse(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        let verdict = gate.evaluate(canary, baseline, 500);
        let (kind, detail) = match &verdict {
            Verdict::Pass { detail } => ("pass", detail),
            Verdict::Fail { detail } => ("fail", detail),
            Verdict::Inconclusive { detail } => ("inconclusive", detail),
        };
        assert_eq!(kind, expected, "{source}: {verdict:?}");
        assert!(
            detail.contains(detail_part),
            "{source}: {detail:?} lacks {detail_part:?}"
        );
    }

    fn parse_error(source: &str) -> GateError {
        match parse_gate_line(source) {
            Ok(line) => panic!("{source} parsed as {line:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn latency_or_error_rate() {
        let gate = "p99_latency > 200ms OR error_rate > 0.5%";
        check(gate, &group(1000, 1, 100.0), None, "pass", "p99_latency ");
        check(gate, &group(1000, 1, 400.0), None, "fail", "> 200ms");
        check(
            gate,
            &group(1000, 10, 100.0),
            None,
            "fail",
            "error_rate 1% > 0.5%",
        );
        check(
            gate,
            &group(100, 50, 100.0),
            None,
            "inconclusive",
            "fewer than min_requests 500",
        );
        // OR with one failing side fails even when the other is inconclusive.
        check(
            "rejections > 0 OR error_rate > 0.5%",
            &GroupMetrics {
                rejections: 1,
                ..group(10, 0, 1.0)
            },
            None,
            "fail",
            "rejections 1 > 0",
        );
    }

    #[test]
    fn seconds_are_milliseconds() {
        check(
            "p99_latency > 0.2s",
            &group(1000, 0, 400.0),
            None,
            "fail",
            "> 200ms",
        );
        check(
            "p50_latency >= 1s",
            &group(1000, 0, 400.0),
            None,
            "pass",
            "< 1000ms",
        );
    }

    #[test]
    fn relative_to_baseline() {
        let gate = "error_rate > 1.5 * baseline.error_rate";
        let baseline = group(10_000, 10, 50.0);
        check(
            gate,
            &group(1000, 1, 50.0),
            Some(&baseline),
            "pass",
            "1.5 * baseline.error_rate = 0.15%",
        );
        check(
            gate,
            &group(1000, 2, 50.0),
            Some(&baseline),
            "fail",
            "error_rate 0.2% > 1.5 * baseline.error_rate = 0.15%",
        );
        check(
            gate,
            &group(1000, 2, 50.0),
            None,
            "inconclusive",
            "no baseline",
        );
        check(
            gate,
            &group(1000, 2, 50.0),
            Some(&group(100, 0, 50.0)),
            "inconclusive",
            "baseline has 100 requests",
        );
        check(
            "error_rate / baseline.error_rate > 2",
            &group(1000, 3, 1.0),
            Some(&baseline),
            "fail",
            "= 3",
        );
        check(
            "error_rate / baseline.error_rate > 2",
            &group(1000, 3, 1.0),
            Some(&group(1000, 0, 1.0)),
            "inconclusive",
            "divides by zero",
        );
        check(
            "p99_latency > baseline.p99_latency + 50ms",
            &group(1000, 0, 400.0),
            Some(&group(1000, 0, 100.0)),
            "fail",
            "baseline.p99_latency + 50ms",
        );
        check(
            "errors > requests * 1%",
            &group(1000, 20, 1.0),
            None,
            "fail",
            "errors 20 > requests * 1% = 10",
        );
        check(
            "errors / requests > 1%",
            &group(1000, 5, 1.0),
            None,
            "pass",
            "= 0.5%",
        );
    }

    #[test]
    fn counts_are_always_conclusive() {
        let canary = GroupMetrics {
            crashes: 2,
            ..GroupMetrics::default()
        };
        check("crashes >= 1", &canary, None, "fail", "crashes 2 >= 1");
        check("crashes > 5", &canary, None, "pass", "crashes 2 <= 5");
        check(
            "silent_nodes > 0 OR health_check_failures > 0",
            &canary,
            None,
            "pass",
            "silent_nodes 0 <= 0",
        );
        check(
            "baseline.crashes > 0",
            &canary,
            None,
            "inconclusive",
            "no baseline",
        );
    }

    #[test]
    fn kleene_logic() {
        let small = group(10, 5, 1.0);
        let crashed = GroupMetrics {
            crashes: 1,
            ..small
        };
        // AND: false side decides; unknown otherwise.
        check(
            "error_rate > 1% AND crashes > 0",
            &small,
            None,
            "pass",
            "crashes 0 <= 0",
        );
        check(
            "error_rate > 1% AND crashes > 0",
            &crashed,
            None,
            "inconclusive",
            "inconclusive",
        );
        // OR: true side decides.
        check(
            "error_rate > 1% OR crashes > 0",
            &crashed,
            None,
            "fail",
            "crashes 1 > 0",
        );
        check(
            "error_rate > 1% OR crashes > 0",
            &small,
            None,
            "inconclusive",
            "inconclusive",
        );
        // NOT swaps pass and fail, keeps inconclusive.
        check(
            "NOT crashes > 0",
            &crashed,
            None,
            "pass",
            "NOT (crashes 1 > 0)",
        );
        check("not (crashes > 0)", &small, None, "fail", "NOT");
        check("NOT error_rate > 1%", &small, None, "inconclusive", "NOT");
        // Precedence: AND binds tighter than OR; parentheses regroup.
        check(
            "crashes > 0 OR crashes > 5 AND requests > 0",
            &crashed,
            None,
            "fail",
            "",
        );
        check(
            "(crashes > 0 OR crashes > 5) AND requests > 100",
            &crashed,
            None,
            "pass",
            "requests 10 <= 100",
        );
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let gate = Gate::parse(
            "crashes > 0 or Not (errors > 1) AND SIGNIFICANT(error_rate > BASELINE.error_rate)",
        )
        .unwrap();
        assert!(matches!(gate.expr, GateExpr::Or(ref parts) if parts.len() == 2));
    }

    #[test]
    fn significance_test() {
        let gate = "significant(error_rate > baseline.error_rate)";
        let baseline = group(10_000, 10, 1.0);
        check(
            gate,
            &group(5000, 21, 1.0),
            Some(&baseline),
            "pass",
            "error_rate 0.42% (21/5000) vs baseline 0.1% (10/10000): z=4.07, p=2.4e-5 >= alpha 1e-6",
        );
        check(
            gate,
            &group(5000, 40, 1.0),
            Some(&baseline),
            "fail",
            "< alpha 1e-6",
        );
        check(
            gate,
            &group(5000, 40, 1.0),
            None,
            "inconclusive",
            "no baseline",
        );
        check(
            gate,
            &group(100, 40, 1.0),
            Some(&baseline),
            "inconclusive",
            "canary has 100 requests",
        );
        let lenient = "significant(error_rate > baseline.error_rate, alpha = 0.001)";
        check(
            lenient,
            &group(5000, 21, 1.0),
            Some(&baseline),
            "fail",
            "< alpha 1e-3",
        );
        // A lower canary error rate never fails.
        check(
            lenient,
            &group(5000, 0, 1.0),
            Some(&baseline),
            "pass",
            "z=-",
        );
    }

    #[test]
    fn min_requests_line() {
        assert_eq!(
            parse_gate_line("min_requests 1000"),
            Ok(GateLine::MinRequests(1000))
        );
        assert_eq!(
            parse_gate_line("MIN_REQUESTS 0"),
            Ok(GateLine::MinRequests(0))
        );
        assert!(
            parse_error("min_requests 1.5")
                .message
                .contains("whole number")
        );
        assert!(
            parse_error("min_requests 100 requests")
                .message
                .contains("end of the gate")
        );
        assert!(Gate::parse("min_requests 10").is_err());
    }

    #[test]
    fn dimension_errors_name_both_sides() {
        let error = parse_error("p99_latency > 0.5%");
        assert!(
            error.message.contains("latency in ms") && error.message.contains("ratio in %"),
            "{error}"
        );
        assert_eq!(error.column, 13);
        let error = parse_error("error_rate > 0.005");
        assert!(error.message.contains("0.5%"), "{error}");
        let error = parse_error("p99_latency > 200");
        assert!(error.message.contains("200ms"), "{error}");
        let error = parse_error("requests > 5ms");
        assert!(
            error.message.contains("(count)") && error.message.contains("(latency in ms)"),
            "{error}"
        );
        let error = parse_error("p99_latency + 1% > 200ms");
        assert!(error.message.contains("cannot compute"), "{error}");
        let error = parse_error("error_rate * error_rate > 1%");
        assert!(error.message.contains("cannot compute"), "{error}");
        let error = parse_error("2 / error_rate > 1");
        assert!(error.message.contains("cannot compute"), "{error}");
        // Scalars and counts mix; ratio / ratio is a scalar.
        assert!(Gate::parse("rejections + 1 > 2").is_ok());
        assert!(Gate::parse("error_rate / baseline.error_rate > 1.5").is_ok());
        assert!(Gate::parse("p99_latency / baseline.p99_latency > 2").is_ok());
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        let error = parse_error("error_rat > 1%");
        assert_eq!(error.column, 1);
        assert!(
            error.message.contains("unknown metric `error_rat`"),
            "{error}"
        );
        let error = parse_error("error_rate > 1% OR");
        assert_eq!(error.column, 19);
        assert!(error.message.contains("end of the gate"), "{error}");
        assert!(parse_error("error_rate").message.contains("value alone"));
        assert!(
            parse_error("p99_latency > 200m")
                .message
                .contains("unknown unit `m`")
        );
        assert!(parse_error("1 > 2").message.contains("reads no metric"));
        assert!(parse_error("1 < errors < 5").message.contains("chained"));
        assert!(parse_error("errors == 1").message.contains("=="));
        assert!(
            parse_error("errors > 1 $")
                .message
                .contains("unexpected character")
        );
        assert!(parse_error("(errors > 1").message.contains("`)`"));
        assert!(
            parse_error("baseline.nope > 1")
                .message
                .contains("unknown metric `nope`")
        );
        assert!(parse_error("errors > 1e99").message.contains("limit"));
        assert!(parse_error("").message.contains("found the end"));
        assert!(parse_error(&"(".repeat(40)).message.contains("deeper"));
        assert!(
            parse_error(&"errors>1 OR ".repeat(70))
                .message
                .contains("tokens")
        );
        assert!(parse_error(&"x".repeat(2000)).message.contains("bytes"));
        assert!(
            parse_error("errors > 1 AND 1")
                .message
                .contains("value alone")
        );
        assert!(
            parse_error("(errors > 1) + 1 > 2")
                .message
                .contains("found a condition")
        );
    }

    #[test]
    fn significant_errors() {
        assert!(
            parse_error("significant(p99_latency > baseline.p99_latency)")
                .message
                .contains("error_rate only")
        );
        assert!(
            parse_error("significant(error_rate > baseline.errors)")
                .message
                .contains("with itself")
        );
        assert!(
            parse_error("significant(error_rate > 1%)")
                .message
                .contains("baseline.error_rate")
        );
        assert!(
            parse_error("significant(error_rate > baseline.error_rate, alpha = 0)")
                .message
                .contains("0 < alpha")
        );
        assert!(
            parse_error("significant(error_rate > baseline.error_rate, alpha = 1%)")
                .message
                .contains("bare number")
        );
        assert!(
            parse_error("significant(error_rate < baseline.error_rate)")
                .message
                .contains("`>`")
        );
    }

    #[test]
    fn display_is_canonical_and_reparses() {
        for source in [
            "p99_latency > 200ms OR error_rate > 0.5%",
            "error_rate > 1.5 * baseline.error_rate",
            "NOT (crashes > 0 AND (errors + 1) * 2 > 10)",
            "significant(error_rate > baseline.error_rate, alpha = 0.001)",
            "p99_latency > 0.25s",
        ] {
            let gate = Gate::parse(source).unwrap();
            let text = gate.expr.to_string();
            let again = Gate::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(again.expr, gate.expr, "{source} -> {text}");
        }
    }

    proptest! {
        #[test]
        fn parser_never_panics(source in "\\PC{0,120}") {
            let _ = parse_gate_line(&source);
        }

        #[test]
        fn parser_never_panics_on_gate_like_text(
            words in proptest::collection::vec(
                prop_oneof![
                    Just("error_rate"), Just("baseline"), Just("."), Just("p99_latency"),
                    Just("requests"), Just("crashes"), Just(">"), Just(">="), Just("<"),
                    Just("+"), Just("*"), Just("/"), Just("-"), Just("("), Just(")"),
                    Just("OR"), Just("AND"), Just("NOT"), Just("significant"), Just(","),
                    Just("alpha"), Just("="), Just("0.5%"), Just("200ms"), Just("1.5"),
                    Just("0"), Just("1e-6"), Just("min_requests"), Just("2s"),
                ],
                0..24,
            )
        ) {
            let source = words.join(" ");
            if let Ok(GateLine::Gate(gate)) = parse_gate_line(&source) {
                let _ = gate.evaluate(&group(1000, 3, 120.0), Some(&group(0, 0, 1.0)), 500);
                let _ = gate.evaluate(&GroupMetrics::default(), None, 0);
            }
        }
    }
}
