//! Output for people (aligned tables, times, ages) and for scripts (JSON).

use std::fmt::Write as _;

use serde::Serialize;

/// Widest column in a table, in characters; longer cells are cut with `…`.
pub const COLUMN_MAX_CHARS: usize = 72;
/// Characters of a version hash shown in tables.
pub const SHORT_HASH_CHARS: usize = 12;

/// A table: a header row and rows of cells, printed with aligned columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn cut(cell: &str) -> String {
    let one_line = cell.replace('\n', " ");
    if one_line.chars().count() <= COLUMN_MAX_CHARS {
        return one_line;
    }
    let mut shown: String = one_line
        .chars()
        .take(COLUMN_MAX_CHARS.saturating_sub(1))
        .collect();
    shown.push('…');
    shown
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cut(c)).collect());
    }

    /// The table as text, one line per row, columns separated by two spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate() {
                let width = cell.chars().count();
                match widths.get_mut(index) {
                    Some(w) => *w = (*w).max(width),
                    None => widths.push(width),
                }
            }
        }
        let mut text = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate() {
                let width = widths.get(index).copied().unwrap_or(0);
                let _ = write!(line, "{cell:<width$}  ");
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The first characters of a version hash.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..SHORT_HASH_CHARS).unwrap_or(hash)
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long before `now_ms` the instant `then_ms` was, for people: `42s ago`, `3m ago`.
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Labels as `key=value,key=value`, in key order.
pub fn labels_text(labels: &failsmall_core::domain::Labels) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

pub use failsmall_core::domain::rfc3339_from_ms as rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_cut_long_cells() {
        let mut table = Table::new(&["ID", "NAME"]);
        table.row(vec!["1".into(), "short".into()]);
        table.row(vec!["200".into(), "x".repeat(100)]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID   NAME");
        assert_eq!(lines[1], "1    short");
        assert!(lines[2].ends_with('…'));
        assert_eq!(lines[2].chars().count(), 5 + COLUMN_MAX_CHARS);
    }

    #[test]
    fn times_and_ages_read_well() {
        assert_eq!(rfc3339(1_763_424_000_000), "2025-11-18T00:00:00Z");
        assert_eq!(ago(10_000, 5_000), "5s ago");
        assert_eq!(ago(200_000, 0), "3m ago");
        assert_eq!(ago(0, 5_000), "0s ago");
        assert_eq!(short_hash("abc"), "abc");
        assert_eq!(short_hash(&"f".repeat(64)).len(), SHORT_HASH_CHARS);
    }
}
