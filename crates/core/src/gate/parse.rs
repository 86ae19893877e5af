//! Lexer, parser and dimension checker of gate expressions: text to a typed [`GateExpr`].

use super::*;

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
    let gate = Gate {
        source: source.trim().to_owned(),
        expr,
    };
    if gate.reads_custom() && reads_built_in(&gate.expr) {
        return Err(GateError {
            column: 1,
            message: "a gate reads either custom metrics (custom.NAME) or built-in ones, not \
                      both: write them as two gates"
                .to_owned(),
        });
    }
    Ok(GateLine::Gate(gate))
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
    Custom(Group, String),
    BurnRate(BurnWindow),
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
            TokenKind::Ident(name)
                if name.eq_ignore_ascii_case("custom") && self.peek() == Some(&TokenKind::Dot) =>
            {
                let name = self.parse_custom_name()?;
                Ok(Node {
                    kind: NodeKind::Custom(Group::Canary, name),
                    column,
                })
            }
            TokenKind::Ident(name) if name.eq_ignore_ascii_case("baseline") => {
                self.expect(
                    &TokenKind::Dot,
                    "`.` and a metric after `baseline`, e.g. baseline.error_rate",
                )?;
                if self.peek_keyword("custom")
                    && self.tokens.get(self.position + 1).map(|t| &t.kind) == Some(&TokenKind::Dot)
                {
                    self.position += 1;
                    let name = self.parse_custom_name()?;
                    return Ok(Node {
                        kind: NodeKind::Custom(Group::Baseline, name),
                        column,
                    });
                }
                if let Some(TokenKind::Ident(name)) = self.peek()
                    && burn_rate_window(name).is_some()
                {
                    return Err(GateError {
                        column,
                        message: format!(
                            "a burn rate is the service's (its SLOs), not the baseline's; write `{name}` alone"
                        ),
                    });
                }
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
                None => match burn_rate_window(&name) {
                    Some(Some(window)) => Ok(Node {
                        kind: NodeKind::BurnRate(window),
                        column,
                    }),
                    Some(None) => Err(GateError {
                        column,
                        message: format!(
                            "unknown burn-rate window in `{name}`; expected one of: {}",
                            burn_rate_names()
                        ),
                    }),
                    None => Err(GateError {
                        column,
                        message: format!(
                            "unknown metric `{name}`; expected one of: {}, {}, baseline.<metric>, custom.<name>, significant(...), NOT",
                            metric_names(),
                            burn_rate_names()
                        ),
                    }),
                },
            },
            _ => Err(self.error(expected)),
        }
    }

    /// After `custom`: `. NAME`, a custom metric's name.
    fn parse_custom_name(&mut self) -> Result<String, GateError> {
        self.expect(&TokenKind::Dot, "`.` after custom")?;
        let column = self.column();
        match self.next() {
            Some(Token {
                kind: TokenKind::Ident(name),
                ..
            }) if crate::health::valid_custom_metric_name(&name) => Ok(name),
            _ => Err(GateError {
                column,
                message: format!(
                    "expected a custom metric's name after `custom.` ([a-z][a-z0-9_]*, at most \
                     {} bytes), as the plan's health_source.prometheus.metrics declares it",
                    crate::health::CUSTOM_METRIC_NAME_MAX_BYTES
                ),
            }),
        }
    }

    /// After `significant`: `( metric > baseline . metric [, alpha = NUMBER] )`.
    fn parse_significant(&mut self, column: usize) -> Result<Node, GateError> {
        self.expect(
            &TokenKind::LParen,
            "`(` after significant, e.g. significant(error_rate > baseline.error_rate)",
        )?;
        let metric_column = self.column();
        if self.peek_keyword("custom") {
            return Err(GateError {
                column: metric_column,
                message: "significant supports error_rate and the latency quantiles; compare a \
                          custom metric with arithmetic, e.g. custom.queue_depth > 1.5 * \
                          baseline.custom.queue_depth"
                    .to_owned(),
            });
        }
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
        if metric != Metric::ErrorRate && metric.quantile().is_none() {
            return Err(GateError {
                column: metric_column,
                message: format!(
                    "significant supports error_rate and the latency quantiles (p50_latency .. p999_latency), found {}",
                    metric.name()
                ),
            });
        }
        let mut alpha = ALPHA_DEFAULT;
        if self.peek() == Some(&TokenKind::Comma) {
            self.position += 1;
            if !self.peek_keyword("alpha") {
                return Err(self.error("alpha = NUMBER, e.g. alpha = 1e-4"));
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
                                  e.g. alpha = 1e-4"
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

/// `Some(window)` for `burn_rate_<window>` (`Some(None)`: the prefix with an unknown window);
/// `None` for any other name.
fn burn_rate_window(name: &str) -> Option<Option<BurnWindow>> {
    let lower = name.to_ascii_lowercase();
    let window = lower.strip_prefix("burn_rate_")?;
    Some(BurnWindow::from_name(window))
}

fn burn_rate_names() -> String {
    crate::slo::BURN_WINDOWS
        .iter()
        .map(|w| format!("burn_rate_{}", w.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn metric_names() -> String {
    Metric::ALL
        .iter()
        .map(|metric| metric.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `expr` reads a built-in metric or a burn rate (`significant(...)` included).
fn reads_built_in(expr: &GateExpr) -> bool {
    fn value(v: &Value) -> bool {
        match v {
            Value::Literal { .. } | Value::Custom { .. } => false,
            Value::Metric { .. } | Value::BurnRate { .. } => true,
            Value::Arith { left, right, .. } => value(left) || value(right),
        }
    }
    match expr {
        GateExpr::Compare { left, right, .. } => value(left) || value(right),
        GateExpr::Significant { .. } => true,
        GateExpr::Not(inner) => reads_built_in(inner),
        GateExpr::And(all) | GateExpr::Or(all) => all.iter().any(reads_built_in),
    }
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
        NodeKind::Arith(..)
        | NodeKind::Number { .. }
        | NodeKind::Metric(..)
        | NodeKind::Custom(..)
        | NodeKind::BurnRate(..) => Err(GateError {
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
        NodeKind::BurnRate(window) => Ok((Value::BurnRate { window: *window }, Scalar)),
        NodeKind::Custom(group, name) => Ok((
            Value::Custom {
                group: *group,
                name: name.clone(),
            },
            Scalar,
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
pub(super) fn arith_dimension(op: ArithOp, left: Dimension, right: Dimension) -> Option<Dimension> {
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
