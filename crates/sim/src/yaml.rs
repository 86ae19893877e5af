//! A small YAML tree with line and column on every node, and a strict reader over it: unknown
//! fields, duplicate keys, aliases and wrong types are errors that name the file, the line and
//! the field.

use failsmall_core::yaml::{self as core_yaml, YamlKind as CoreKind, YamlNode as CoreNode};

use crate::SimError;

/// Largest YAML input accepted, in bytes.
pub const YAML_MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum YamlKind {
    /// The text and whether it was written plain (unquoted).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<YamlNode>),
    Map(Vec<(String, YamlNode)>),
}

/// A node of `failsmall_core::yaml`'s positioned tree, with mapping keys checked to be
/// distinct strings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct YamlNode {
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    pub kind: YamlKind,
}

fn syntax(file: &str, line: usize, column: usize, message: String) -> SimError {
    SimError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// Converts core's tree, refusing non-scalar and duplicate mapping keys.
fn convert(file: &str, node: CoreNode) -> Result<YamlNode, SimError> {
    let (line, column) = (node.line, node.column);
    let kind = match node.kind {
        CoreKind::Scalar { text, plain } => YamlKind::Scalar { text, plain },
        CoreKind::Sequence(items) => YamlKind::Seq(
            items
                .into_iter()
                .map(|item| convert(file, item))
                .collect::<Result<_, _>>()?,
        ),
        CoreKind::Mapping(entries) => {
            let mut converted: Vec<(String, YamlNode)> = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let CoreKind::Scalar { text: name, .. } = key.kind else {
                    return Err(syntax(
                        file,
                        key.line,
                        key.column,
                        "mapping keys must be plain strings".to_owned(),
                    ));
                };
                if converted.iter().any(|(existing, _)| *existing == name) {
                    return Err(syntax(
                        file,
                        key.line,
                        key.column,
                        format!("duplicate key {name:?}"),
                    ));
                }
                converted.push((name, convert(file, value)?));
            }
            YamlKind::Map(converted)
        }
    };
    Ok(YamlNode { line, column, kind })
}

/// Parses one YAML document into a tree.
pub(crate) fn parse(file: &str, text: &str) -> Result<YamlNode, SimError> {
    if text.len() > YAML_MAX_BYTES {
        return Err(SimError::TooLarge {
            file: file.to_owned(),
            size_bytes: text.len(),
            max_bytes: YAML_MAX_BYTES,
        });
    }
    let tree = core_yaml::load(text)
        .map_err(|error| syntax(file, error.line, error.column, error.message))?;
    convert(file, tree)
}

/// Typed, strict access to a YAML node, remembering the file and the field path for errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field<'a> {
    pub file: &'a str,
    pub node: &'a YamlNode,
}

impl<'a> Field<'a> {
    pub fn error(&self, field: &str, message: impl Into<String>) -> SimError {
        SimError::Invalid {
            file: self.file.to_owned(),
            line: self.node.line,
            column: self.node.column,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn kind_name(&self) -> &'static str {
        match &self.node.kind {
            YamlKind::Scalar { .. } => "a scalar",
            YamlKind::Seq(_) => "a list",
            YamlKind::Map(_) => "a mapping",
        }
    }

    /// The scalar's text; a list or mapping is an error.
    pub fn text(&self, field: &str) -> Result<&'a str, SimError> {
        match &self.node.kind {
            YamlKind::Scalar { text, .. } => Ok(text.as_str()),
            _ => Err(self.error(
                field,
                format!("expected a scalar, found {}", self.kind_name()),
            )),
        }
    }

    pub fn string(&self, field: &str) -> Result<String, SimError> {
        self.text(field).map(str::to_owned)
    }

    pub fn f64(&self, field: &str) -> Result<f64, SimError> {
        let text = self.text(field)?;
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|value| value.is_finite())
            .ok_or_else(|| self.error(field, format!("expected a number, found {text:?}")))
    }

    pub fn u64(&self, field: &str) -> Result<u64, SimError> {
        let text = self.text(field)?;
        text.trim().replace('_', "").parse::<u64>().map_err(|_| {
            self.error(
                field,
                format!("expected a whole number >= 0, found {text:?}"),
            )
        })
    }

    pub fn bool(&self, field: &str) -> Result<bool, SimError> {
        match self.text(field)?.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(self.error(field, format!("expected true or false, found {other:?}"))),
        }
    }

    /// A duration such as `500ms`, `10s`, `5m`, `2h`, `1d` (or `0`), in milliseconds.
    pub fn duration_ms(&self, field: &str) -> Result<u64, SimError> {
        let text = self.text(field)?;
        parse_duration_ms(text).ok_or_else(|| {
            self.error(
                field,
                format!(
                    "expected a duration with a unit such as 500ms, 10s, 5m or 2h, found {text:?}"
                ),
            )
        })
    }

    /// A rate written `0.5%` or as a fraction `0.005`, in `0..=1`.
    pub fn rate(&self, field: &str) -> Result<f64, SimError> {
        let text = self.text(field)?;
        parse_rate(text).ok_or_else(|| {
            self.error(
                field,
                format!("expected a rate such as 0.5% or 0.005 (0..=1), found {text:?}"),
            )
        })
    }

    pub fn list(&self, field: &str) -> Result<Vec<Field<'a>>, SimError> {
        match &self.node.kind {
            YamlKind::Seq(items) => Ok(items
                .iter()
                .map(|node| Field {
                    file: self.file,
                    node,
                })
                .collect()),
            _ => Err(self.error(
                field,
                format!("expected a list, found {}", self.kind_name()),
            )),
        }
    }

    pub fn map(&self, field: &str) -> Result<MapReader<'a>, SimError> {
        match &self.node.kind {
            YamlKind::Map(entries) => Ok(MapReader {
                file: self.file,
                field: field.to_owned(),
                node: self.node,
                entries,
                used: vec![false; entries.len()],
            }),
            _ => Err(self.error(
                field,
                format!("expected a mapping, found {}", self.kind_name()),
            )),
        }
    }
}

/// A mapping being read field by field; [`MapReader::finish`] refuses fields nobody read.
#[derive(Debug)]
pub(crate) struct MapReader<'a> {
    file: &'a str,
    field: String,
    node: &'a YamlNode,
    entries: &'a [(String, YamlNode)],
    used: Vec<bool>,
}

impl<'a> MapReader<'a> {
    /// The dotted path of a child field.
    pub fn path(&self, key: &str) -> String {
        if self.field.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.field)
        }
    }

    pub fn optional(&mut self, key: &str) -> Option<Field<'a>> {
        let index = self.entries.iter().position(|(name, _)| name == key)?;
        if let Some(slot) = self.used.get_mut(index) {
            *slot = true;
        }
        self.entries.get(index).map(|(_, node)| Field {
            file: self.file,
            node,
        })
    }

    pub fn required(&mut self, key: &str) -> Result<Field<'a>, SimError> {
        let path = self.path(key);
        self.optional(key).ok_or_else(|| SimError::Invalid {
            file: self.file.to_owned(),
            line: self.node.line,
            column: self.node.column,
            field: path,
            message: "this field is required".to_owned(),
        })
    }

    /// Every entry, in file order, marking all as read (for mappings of arbitrary keys).
    pub fn entries(&mut self) -> Vec<(&'a str, Field<'a>)> {
        self.used.iter_mut().for_each(|slot| *slot = true);
        self.entries
            .iter()
            .map(|(key, node)| {
                (
                    key.as_str(),
                    Field {
                        file: self.file,
                        node,
                    },
                )
            })
            .collect()
    }

    /// Fails on the first field that was never read: it is unknown.
    pub fn finish(self, known: &[&str]) -> Result<(), SimError> {
        for ((key, node), used) in self.entries.iter().zip(self.used.iter()) {
            if !used {
                return Err(SimError::Invalid {
                    file: self.file.to_owned(),
                    line: node.line,
                    column: node.column,
                    field: self.path(key),
                    message: format!("unknown field; expected one of: {}", known.join(", ")),
                });
            }
        }
        Ok(())
    }
}

/// Parses a duration as plan files write it (`500ms`, `10s`, `5m`, `1h30m`), in milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    failsmall_core::duration::parse_duration_ms(text.trim()).ok()
}

/// Parses `0.5%` (percent) or `0.005` (fraction) into a fraction in `0..=1`.
pub fn parse_rate(text: &str) -> Option<f64> {
    let text = text.trim();
    let fraction = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().ok()? / 100.0,
        None => text.parse::<f64>().ok()?,
    };
    (fraction.is_finite() && (0.0..=1.0).contains(&fraction)).then_some(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("10s"), Some(10_000));
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("0s"), Some(0));
        assert_eq!(
            parse_duration_ms("0"),
            None,
            "a unit is required, as in plan files"
        );
        assert_eq!(parse_duration_ms("10"), None);
        assert_eq!(parse_duration_ms("5 parsecs"), None);
        assert_eq!(parse_rate("0.5%"), Some(0.005));
        assert_eq!(parse_rate("0.25"), Some(0.25));
        assert_eq!(parse_rate("150%"), None);
    }

    #[test]
    fn tree_carries_lines_and_refuses_duplicates() {
        let tree = parse("t.yaml", "a: 1\nb:\n  c: [x, y]\n").unwrap();
        let YamlKind::Map(entries) = &tree.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[1].0, "b");
        assert_eq!(entries[1].1.line, 3);
        let error = parse("t.yaml", "a: 1\na: 2\n").unwrap_err().to_string();
        assert!(
            error.contains("t.yaml:2") && error.contains("duplicate"),
            "{error}"
        );
        let error = parse("t.yaml", "a: &x 1\nb: *x\n").unwrap_err().to_string();
        assert!(error.contains("alias"), "{error}");
    }
}
