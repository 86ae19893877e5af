//! `failsmall log --verify`: the server recomputes the changelog's hash chain; an intact chain
//! exits 0, a broken one 3 with the first broken row.

use serde::{Deserialize, Serialize};

use super::RemoteArgs;
use super::render::print_json;
use crate::Outcome;

/// The server's verdict (`GET /v1/changelog/verify`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Verification {
    pub intact: bool,
    pub rows: u64,
    pub head: Head,
    pub first_break: Option<Break>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Head {
    pub id: Option<u64>,
    pub hash: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Break {
    pub id: u64,
    pub reason: String,
}

pub fn run(remote: &RemoteArgs) -> anyhow::Result<Outcome> {
    let client = remote.connect()?;
    let verdict: Verification = client.get("/v1/changelog/verify", &[])?;
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
    }
    Ok(if verdict.intact {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}
