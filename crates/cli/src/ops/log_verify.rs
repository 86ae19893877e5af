//! `failsmall log --verify`: the server recomputes the changelog's hash chain; an intact chain
//! exits 0, a broken one 3 with the first broken row.

use anyhow::bail;

use super::RemoteArgs;
use super::render::print_json;
use crate::Outcome;

pub use failsmall_wire::trust::ChangelogVerification as Verification;

/// `ROW:HASH` as query parameters.
fn checkpoint_query(text: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let Some((row, hash)) = text.split_once(':') else {
        bail!("--checkpoint {text:?}: expected ROW:HASH, e.g. 42:9f86d0...");
    };
    let Ok(row) = row.trim().parse::<u64>() else {
        bail!("--checkpoint {text:?}: the row {row:?} is not a number");
    };
    let hash = hash.trim();
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--checkpoint {text:?}: the hash is not 64 hex characters");
    }
    Ok(vec![
        ("checkpoint_row", row.to_string()),
        ("checkpoint_hash", hash.to_ascii_lowercase()),
    ])
}

pub fn run(remote: &RemoteArgs, checkpoint: Option<&str>) -> anyhow::Result<Outcome> {
    let query = checkpoint
        .map(checkpoint_query)
        .transpose()?
        .unwrap_or_default();
    let client = remote.connect()?;
    let verdict: Verification = client.get("/v1/changelog/verify", &query)?;
    if remote.json() {
        print_json(&verdict)?;
    } else {
        match &verdict.first_break {
            None => outln!(
                "changelog intact: {} rows; head row {} hash {} (keep a copy elsewhere to detect a rewritten tail)",
                verdict.rows,
                verdict
                    .head
                    .id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                verdict.head.hash.as_deref().unwrap_or("-")
            ),
            Some(broken) => outln!(
                "changelog BROKEN at row {} of {}: {}",
                broken.id,
                verdict.rows,
                broken.reason
            ),
        }
        if let Some(earlier) = &verdict.earlier_checkpoint {
            let said = if earlier.holds { "holds" } else { "BROKEN" };
            outln!("earlier checkpoint {said}: {}", earlier.reason);
        }
        if let Some(checkpoint) = &verdict.checkpoint {
            outln!(
                "signed checkpoint: --checkpoint {}:{} (signature {} by key {})",
                checkpoint.row,
                checkpoint.hash,
                checkpoint.signature,
                checkpoint.public_key
            );
        }
    }
    Ok(if verdict.intact {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}
