//! `failsmall log`: the changelog, newest last, with filters.

use std::collections::VecDeque;

use anyhow::bail;
use clap::Args;
use failsmall_core::duration::parse_duration_ms;
use failsmall_server::store::ChangeRecord;
use serde::Deserialize;

use super::RemoteArgs;
use super::render::{Table, now_ms, print_json, rfc3339, short_hash};
use crate::Outcome;

/// Most entries `--limit` may ask for.
pub const LOG_LIMIT_MAX: u32 = 10_000;
/// Entries asked for per request.
pub const LOG_PAGE_ENTRIES: u32 = 1000;
/// Most pages read (the changelog is read oldest first and the newest `--limit` kept).
pub const LOG_PAGES_MAX: u32 = 1000;

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only this unit's entries.
    #[arg(long)]
    pub unit: Option<String>,
    /// Only this rollout's entries (`r3` or `3`).
    #[arg(long, value_name = "ID", value_parser = parse_rollout_id)]
    pub rollout: Option<u64>,
    /// Only entries newer than this: a duration ago (`30m`, `2h`) or milliseconds since the
    /// Unix epoch.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only entries that concern nodes with this label (`region=eu-west-1`); repeat for
    /// several. Fleet-wide entries always match.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Show at most this many entries, the newest.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(LOG_LIMIT_MAX)))]
    pub limit: u32,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Deserialize)]
struct ChangelogPage {
    entries: Vec<ChangeRecord>,
    next_cursor: Option<u64>,
}

/// A rollout id as written in the changelog (`r3`) or bare (`3`).
fn parse_rollout_id(text: &str) -> Result<u64, String> {
    text.strip_prefix('r')
        .unwrap_or(text)
        .parse()
        .map_err(|_| format!("{text:?} is not a rollout id; expected e.g. r3 or 3"))
}

/// `--since` as milliseconds since the Unix epoch.
pub fn since_ms(text: &str, now_ms: u64) -> anyhow::Result<u64> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Ok(text.parse::<u64>()?);
    }
    match parse_duration_ms(text) {
        Ok(ago_ms) => Ok(now_ms.saturating_sub(ago_ms)),
        Err(e) => bail!(
            "--since {text:?}: {e}; expected a duration ago such as 30m or 2h, or milliseconds since the Unix epoch"
        ),
    }
}

pub fn run(args: &LogArgs) -> anyhow::Result<Outcome> {
    if let Some(bad) = args.labels.iter().find(|label| {
        label
            .split_once('=')
            .is_none_or(|(key, value)| key.is_empty() || value.is_empty())
    }) {
        bail!("--label {bad:?}: expected KEY=VALUE, e.g. --label region=eu-west-1");
    }
    let since = args
        .since
        .as_deref()
        .map(|s| since_ms(s, now_ms()))
        .transpose()?;
    let client = args.remote.connect()?;
    let keep = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let mut newest: VecDeque<ChangeRecord> = VecDeque::new();
    let mut cursor: Option<u64> = None;
    for _ in 0..LOG_PAGES_MAX {
        let mut query = vec![("limit", LOG_PAGE_ENTRIES.to_string())];
        if let Some(unit) = &args.unit {
            query.push(("unit", unit.clone()));
        }
        if let Some(rollout) = args.rollout {
            query.push(("rollout", rollout.to_string()));
        }
        if let Some(since) = since {
            query.push(("since_ms", since.to_string()));
        }
        for label in &args.labels {
            query.push(("label", label.clone()));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_string()));
        }
        let page: ChangelogPage = client.get("/v1/changelog", &query)?;
        for entry in page.entries {
            if newest.len() == keep {
                newest.pop_front();
            }
            newest.push_back(entry);
        }
        match page.next_cursor {
            Some(next) if Some(next) != cursor => cursor = Some(next),
            _ => break,
        }
    }
    let entries: Vec<ChangeRecord> = newest.into();
    if args.remote.json() {
        print_json(&entries)?;
        return Ok(Outcome::Success);
    }
    let mut table = Table::new(&["ID", "TIME", "ACTOR", "KIND", "UNIT", "VERSION", "REASON"]);
    for entry in &entries {
        table.row(vec![
            entry.id.to_string(),
            rfc3339(entry.at_ms),
            entry.actor.clone(),
            entry.kind.clone(),
            entry.unit.clone().unwrap_or_default(),
            entry
                .version
                .as_deref()
                .map(short_hash)
                .unwrap_or_default()
                .to_owned(),
            entry.reason.clone(),
        ]);
    }
    out!("{}", table.render());
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_durations_ago_and_epoch_milliseconds() {
        assert_eq!(since_ms("30m", 10_000_000).unwrap(), 10_000_000 - 1_800_000);
        assert_eq!(since_ms("1763424000000", 0).unwrap(), 1_763_424_000_000);
        assert_eq!(since_ms("2h", 5).unwrap(), 0);
        let error = since_ms("yesterday", 0).unwrap_err().to_string();
        assert!(error.contains("yesterday"), "{error}");
    }
}
