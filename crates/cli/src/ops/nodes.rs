//! `failsmall nodes`: the nodes the server knows.

use clap::Args;
use failsmall_wire::Node;
use serde::Deserialize;

use super::RemoteArgs;
use super::render::{Table, ago, labels_text, now_ms, print_json, rfc3339, short_hash};
use crate::Outcome;

#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Only nodes with this label, `key=value` (repeatable; all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only nodes that serve stale configuration (their desired state expired, by their
    /// agent's report).
    #[arg(long)]
    pub stale: bool,
    /// Only nodes that are down (their agent not heard from for longer than the server's
    /// `--node-down-after`).
    #[arg(long)]
    pub down: bool,
    /// First wait until at least N of the nodes these filters select are alive (as a script
    /// does after starting agents), then list them; exit 1 if they are not by `--timeout`.
    #[arg(long, value_name = "N")]
    pub wait_for: Option<usize>,
    /// How long `--wait-for` waits.
    #[arg(long, value_name = "DURATION", default_value = "1m", requires = "wait_for",
          value_parser = parse_wait_timeout_ms)]
    pub timeout: u64,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// The longest `--wait-for` wait, in milliseconds (an hour).
pub const WAIT_TIMEOUT_MAX_MS: u64 = 3_600_000;
/// How often `--wait-for` asks, in milliseconds.
const WAIT_POLL_MS: u64 = 250;

fn parse_wait_timeout_ms(text: &str) -> Result<u64, String> {
    let ms = failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())?;
    if ms == 0 || ms > WAIT_TIMEOUT_MAX_MS {
        return Err(format!("{text:?}: expected from 1ms to 1h"));
    }
    Ok(ms)
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!(
            "label {text:?}: expected KEY=VALUE, e.g. cohort=free"
        )),
    }
}

#[derive(Debug, Deserialize)]
struct NodeList {
    nodes: Vec<Node>,
    /// The server's clock when it answered, and its threshold for down (absent from older
    /// servers: then every node reads as alive).
    #[serde(default)]
    now_ms: Option<u64>,
    #[serde(default)]
    down_after_ms: Option<u64>,
}

impl NodeList {
    /// Whether `node` is down, by the server's clock and threshold.
    fn is_down(&self, node: &Node) -> bool {
        match (self.now_ms, self.down_after_ms) {
            (Some(now_ms), Some(after_ms)) => now_ms.saturating_sub(node.last_seen_ms) > after_ms,
            _ => false,
        }
    }
}

fn selected<'a>(args: &NodesArgs, list: &'a NodeList) -> Vec<&'a Node> {
    list.nodes
        .iter()
        .filter(|node| {
            args.labels
                .iter()
                .all(|(key, value)| node.labels.get(key) == Some(value))
                && (!args.stale || node.stale_since_ms.is_some())
                && (!args.down || list.is_down(node))
        })
        .collect()
}

pub fn run(args: &NodesArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let mut list: NodeList = client.get_all("/v1/nodes", "nodes")?;
    if let Some(wanted) = args.wait_for {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(args.timeout);
        loop {
            let alive = selected(args, &list)
                .iter()
                .filter(|node| !list.is_down(node))
                .count();
            if alive >= wanted {
                break;
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{alive} of the {wanted} nodes waited for are alive after {}",
                    failsmall_core::duration::format_ms(args.timeout)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(WAIT_POLL_MS));
            list = client.get_all("/v1/nodes", "nodes")?;
        }
    }
    let nodes = selected(args, &list);
    if args.remote.json() {
        print_json(&nodes)?;
        return Ok(Outcome::Success);
    }
    let now = list.now_ms.unwrap_or_else(now_ms);
    let state_header = match list.down_after_ms {
        Some(after_ms) => format!(
            "STATE (down after {})",
            failsmall_core::duration::format_ms(after_ms)
        ),
        None => "STATE".to_owned(),
    };
    let mut table = Table::new(&[
        "NODE",
        "LABELS",
        "VERSIONS",
        &state_header,
        "LAST SEEN",
        "STALE",
        "REGISTERED",
    ]);
    for node in &nodes {
        table.row(vec![
            node.id.clone(),
            labels_text(&node.labels),
            versions_text(node),
            if list.is_down(node) { "down" } else { "alive" }.to_owned(),
            ago(now, node.last_seen_ms),
            stale_text(now, node.stale_since_ms),
            rfc3339(node.registered_ms),
        ]);
    }
    out!("{}", table.render());
    Ok(Outcome::Success)
}

/// `unit=3f2a9c1e04b7,...` (the versions the node reported applied), or `-`.
fn versions_text(node: &Node) -> String {
    if node.versions.is_empty() {
        return "-".to_owned();
    }
    node.versions
        .iter()
        .map(|(unit, applied)| format!("{unit}={}", short_hash(&applied.version)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `-` for a fresh node; `since 12m` for one stale for twelve minutes.
fn stale_text(now_ms: u64, stale_since_ms: Option<u64>) -> String {
    match stale_since_ms {
        None => "-".to_owned(),
        Some(since_ms) => {
            let age = ago(now_ms, since_ms);
            format!("since {}", age.strip_suffix(" ago").unwrap_or(&age))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_reads_as_a_dash_or_its_age() {
        assert_eq!(stale_text(1_000_000, None), "-");
        assert_eq!(
            stale_text(1_000_000, Some(1_000_000 - 723_000)),
            "since 12m"
        );
        assert_eq!(stale_text(5_000, Some(9_000)), "since 0s");
    }

    #[test]
    fn labels_parse_as_key_value() {
        assert_eq!(
            parse_label("cohort=free"),
            Ok(("cohort".to_owned(), "free".to_owned()))
        );
        assert!(parse_label("cohort").is_err());
        assert!(parse_label("=x").is_err());
    }
}
