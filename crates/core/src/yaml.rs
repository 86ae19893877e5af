//! A YAML tree whose nodes know their line and column, so that every error about a file
//! (plan, scenario, fleet) can say where it is. Built from yaml-rust2's event parser with
//! limits on nesting and size; aliases and multiple documents are refused.

/// Deepest nesting of collections.
pub const YAML_DEPTH_MAX: usize = 16;
/// Most events (values, collection starts and ends) in one file.
pub const YAML_EVENTS_MAX: usize = 200_000;

/// Mapping entries in file order, keys with their positions.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YamlKind {
    Scalar { text: String, plain: bool },
    Sequence(Vec<YamlNode>),
    Mapping(Vec<(YamlNode, YamlNode)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlNode {
    pub kind: YamlKind,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
}

impl YamlNode {
    /// A YAML tree as JSON: plain scalars become null, booleans and numbers where they read as
    /// such; quoted scalars stay strings (as `failsmall unit create --spec` and `failsmall
    /// codex check` read a spec).
    pub fn to_json(&self) -> serde_json::Value {
        let node = self;
        match &node.kind {
            _ if node.is_null() => serde_json::Value::Null,
            YamlKind::Scalar { text, plain: true } => match text.as_str() {
                "true" | "True" | "TRUE" => serde_json::Value::Bool(true),
                "false" | "False" | "FALSE" => serde_json::Value::Bool(false),
                _ => text
                    .parse::<i64>()
                    .map(serde_json::Value::from)
                    .or_else(|_| text.parse::<u64>().map(serde_json::Value::from))
                    .ok()
                    .or_else(|| {
                        text.parse::<f64>()
                            .ok()
                            .filter(|f| f.is_finite())
                            .map(serde_json::Value::from)
                    })
                    .unwrap_or_else(|| serde_json::Value::String(text.clone())),
            },
            YamlKind::Scalar { text, .. } => serde_json::Value::String(text.clone()),
            YamlKind::Sequence(items) => {
                serde_json::Value::Array(items.iter().map(YamlNode::to_json).collect())
            }
            YamlKind::Mapping(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(key, value)| {
                        let key = match &key.kind {
                            YamlKind::Scalar { text, .. } => text.clone(),
                            _ => key.to_json().to_string(),
                        };
                        (key, value.to_json())
                    })
                    .collect(),
            ),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, YamlKind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for "found ..." in messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            _ if self.is_null() => "nothing (null)".to_owned(),
            YamlKind::Scalar { text, .. } => {
                let mut shown: String = text.chars().take(40).collect();
                if shown.len() < text.len() {
                    shown.push_str("...");
                }
                format!("`{shown}`")
            }
            YamlKind::Sequence(_) => "a list".to_owned(),
            YamlKind::Mapping(_) => "a mapping".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    pub message: String,
}

#[derive(Debug)]
enum Frame {
    Sequence {
        items: Vec<YamlNode>,
        line: usize,
        column: usize,
    },
    Mapping {
        entries: Vec<(YamlNode, YamlNode)>,
        key: Option<YamlNode>,
        line: usize,
        column: usize,
    },
}

/// Reads exactly one YAML document into a tree of positioned nodes.
pub fn load(text: &str) -> Result<YamlNode, YamlError> {
    use yaml_rust2::parser::{Event, Parser};
    use yaml_rust2::scanner::TScalarStyle;

    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<YamlNode> = None;
    let mut documents = 0usize;
    for _ in 0..YAML_EVENTS_MAX {
        let (event, marker) = parser.next_token().map_err(|error| YamlError {
            line: error.marker().line(),
            column: error.marker().col() + 1,
            message: format!("YAML syntax error: {}", error.info()),
        })?;
        let (line, column) = (marker.line(), marker.col() + 1);
        let error = |message: &str| YamlError {
            line,
            column,
            message: message.to_owned(),
        };
        let node = match event {
            Event::StreamEnd => {
                return root.ok_or_else(|| error("the file is empty; expected a mapping"));
            }
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(error(
                        "the file holds more than one YAML document; expected exactly one",
                    ));
                }
                continue;
            }
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
            Event::Alias(_) => {
                return Err(error(
                    "YAML aliases (*name) are not supported; write the value out",
                ));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= YAML_DEPTH_MAX {
                    return Err(error(&format!(
                        "the file nests deeper than {YAML_DEPTH_MAX} levels"
                    )));
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Sequence {
                        items: Vec::new(),
                        line,
                        column,
                    }
                } else {
                    Frame::Mapping {
                        entries: Vec::new(),
                        key: None,
                        line,
                        column,
                    }
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Sequence {
                    items,
                    line,
                    column,
                }) => YamlNode {
                    kind: YamlKind::Sequence(items),
                    line,
                    column,
                },
                Some(Frame::Mapping {
                    entries,
                    line,
                    column,
                    ..
                }) => {
                    // A block mapping's start event sits after its first key: point at the key.
                    // A flow mapping's start is its `{`, before the first key.
                    let (line, column) = match entries.first() {
                        Some((key, _)) if (key.line, key.column) < (line, column) => {
                            (key.line, key.column)
                        }
                        _ => (line, column),
                    };
                    YamlNode {
                        kind: YamlKind::Mapping(entries),
                        line,
                        column,
                    }
                }
                None => return Err(error("YAML collection ends without starting")),
            },
            Event::Scalar(text, style, ..) => YamlNode {
                kind: YamlKind::Scalar {
                    text,
                    plain: style == TScalarStyle::Plain,
                },
                line,
                column,
            },
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(key_node) => entries.push((key_node, node)),
            },
        }
    }
    Err(YamlError {
        line: 1,
        column: 1,
        message: format!("the file has more than {YAML_EVENTS_MAX} YAML values"),
    })
}

/// The value of `key` in a mapping node.
pub fn field_value<'n>(node: &'n YamlNode, key: &str) -> Option<&'n YamlNode> {
    let YamlKind::Mapping(entries) = &node.kind else {
        return None;
    };
    entries
        .iter()
        .find_map(|(key_node, value)| match &key_node.kind {
            YamlKind::Scalar { text, .. } if text == key => Some(value),
            _ => None,
        })
}
