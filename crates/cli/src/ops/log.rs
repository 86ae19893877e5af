//! `failsmall log`: the changelog, newest last, with filters; `--follow` keeps printing what
//! is written after.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use failsmall_core::duration::parse_duration_ms;
use failsmall_wire::ChangeEntry;
use serde::Deserialize;

use super::RemoteArgs;
use super::client::{ApiClient, ClientError};
use super::render::{Table, now_ms, print_json, rfc3339, short_hash};
use super::rollout::parse_rollout_id;
use crate::Outcome;

/// Most entries `--limit` may ask for.
pub const LOG_LIMIT_MAX: u32 = 10_000;
/// Entries asked for per request.
pub const LOG_PAGE_ENTRIES: u32 = 1000;
/// Most pages read for the newest `--limit` entries (newest first; with label filters a page
/// may hold few of them).
pub const LOG_PAGES_MAX: u32 = 1000;
/// With `--follow`, between two looks for new entries, in milliseconds.
pub const FOLLOW_POLL_MS: u64 = 1_000;
/// With `--follow`, most pages read in one look (the rest comes in the next).
pub const FOLLOW_PAGES_MAX: u32 = 10;
/// With `--follow`, the longest wait between two tries while the server is unreachable.
pub const FOLLOW_BACKOFF_MAX_MS: u64 = 30_000;

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only this unit's entries.
    #[arg(long)]
    pub unit: Option<String>,
    /// Only entries about the units this team owns (a unit's owner is its team).
    #[arg(long)]
    pub team: Option<String>,
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
    /// Then keep printing new entries as they are written, one line each (one JSON object per
    /// line with `-o json`), until interrupted; an unreachable server is retried.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Verify the changelog's hash chain instead (admin): exit 0 when intact, 3 naming the
    /// first edited, deleted or reordered row.
    #[arg(long, conflicts_with = "follow")]
    pub verify: bool,
    /// With --verify: an earlier checkpoint, `ROW:HASH` (from an earlier `log --verify`),
    /// that row ROW must still match; a rewritten or truncated history does not.
    #[arg(long, value_name = "ROW:HASH", requires = "verify")]
    pub checkpoint: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Deserialize)]
struct ChangelogPage {
    entries: Vec<ChangeEntry>,
    next_cursor: Option<u64>,
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
    if args.verify {
        return super::log_verify::run(&args.remote, args.checkpoint.as_deref());
    }
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
    let entries = newest(&client, args, since)?;
    if args.follow {
        for entry in &entries {
            print_line(entry, args.remote.json())?;
        }
        // On from the newest entry shown, else from the newest entry of all.
        let cursor = match entries.last() {
            Some(entry) => Some(entry.id),
            None => {
                let query = [("order", "newest".to_owned()), ("limit", "1".to_owned())];
                let page: ChangelogPage = client.get("/v1/changelog", &query)?;
                page.entries.first().map(|entry| entry.id)
            }
        };
        return follow(&client, args, cursor);
    }
    if args.remote.json() {
        print_json(&entries)?;
        return Ok(Outcome::Success);
    }
    let mut table = Table::new(&["ID", "TIME", "ACTOR", "KIND", "UNIT", "VERSION", "REASON"]);
    for entry in &entries {
        table.row(cells(entry));
    }
    out!("{}", table.render());
    Ok(Outcome::Success)
}

/// The newest `--limit` entries that pass the filters, oldest first: read newest first, page
/// after page, until there are enough or no more.
fn newest(
    client: &ApiClient,
    args: &LogArgs,
    since: Option<u64>,
) -> Result<Vec<ChangeEntry>, ClientError> {
    let keep = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let mut entries: Vec<ChangeEntry> = Vec::new();
    let mut cursor = None;
    for _ in 0..LOG_PAGES_MAX {
        let wanted = keep.saturating_sub(entries.len());
        let page_limit =
            u32::try_from(wanted).map_or(LOG_PAGE_ENTRIES, |w| w.min(LOG_PAGE_ENTRIES));
        let mut query = query(args, since, cursor, page_limit);
        query.push(("order", "newest".to_owned()));
        let page: ChangelogPage = client.get("/v1/changelog", &query)?;
        entries.extend(page.entries);
        if entries.len() >= keep {
            entries.truncate(keep);
            break;
        }
        match page.next_cursor {
            Some(next) if Some(next) != cursor => cursor = Some(next),
            _ => break,
        }
    }
    entries.reverse();
    Ok(entries)
}

/// Reads on, oldest first, from `cursor` (at most [`FOLLOW_PAGES_MAX`] pages), handing each
/// entry to `each` and moving `cursor` past what was read.
fn read_on(
    client: &ApiClient,
    args: &LogArgs,
    cursor: &mut Option<u64>,
    mut each: impl FnMut(ChangeEntry),
) -> Result<(), ClientError> {
    for _ in 0..FOLLOW_PAGES_MAX {
        let query = query(args, None, *cursor, LOG_PAGE_ENTRIES);
        let page: ChangelogPage = client.get("/v1/changelog", &query)?;
        let last_id = page.entries.last().map(|entry| entry.id);
        for entry in page.entries {
            each(entry);
        }
        let next = page.next_cursor.or(last_id).max(*cursor);
        let more = page.next_cursor.is_some() && next != *cursor;
        *cursor = next;
        if !more {
            break;
        }
    }
    Ok(())
}

/// The changelog query for `args` from `cursor` on, `limit` entries a page.
fn query(
    args: &LogArgs,
    since: Option<u64>,
    cursor: Option<u64>,
    limit: u32,
) -> Vec<(&'static str, String)> {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(unit) = &args.unit {
        query.push(("unit", unit.clone()));
    }
    if let Some(team) = &args.team {
        query.push(("team", team.clone()));
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
    query
}

/// Prints what is written after `cursor`, forever; an unreachable server is retried with a
/// growing pause, any other refusal ends the command.
fn follow(client: &ApiClient, args: &LogArgs, mut cursor: Option<u64>) -> anyhow::Result<Outcome> {
    let json = args.remote.json();
    let mut failures: u32 = 0;
    loop {
        let mut printed = Ok(());
        let looked = read_on(client, args, &mut cursor, |entry| {
            if printed.is_ok() {
                printed = print_line(&entry, json);
            }
        });
        printed?;
        let pause_ms = match looked {
            Ok(()) => {
                failures = 0;
                FOLLOW_POLL_MS
            }
            Err(error @ ClientError::Unreachable { .. }) => {
                failures = failures.saturating_add(1);
                let pause_ms = FOLLOW_POLL_MS
                    .saturating_mul(1 << failures.min(16))
                    .min(FOLLOW_BACKOFF_MAX_MS);
                eprintln!(
                    "{} {error}; retrying in {} s",
                    rfc3339(now_ms()),
                    pause_ms / 1_000
                );
                pause_ms
            }
            Err(error) => return Err(error.into()),
        };
        std::thread::sleep(Duration::from_millis(pause_ms));
    }
}

/// One entry on one line: the table's cells, or compact JSON.
fn print_line(entry: &ChangeEntry, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string(entry)?);
    } else {
        outln!("{}", cells(entry).join("  "));
    }
    Ok(())
}

/// id, time, actor, kind, unit, version, reason.
fn cells(entry: &ChangeEntry) -> Vec<String> {
    vec![
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
    ]
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
