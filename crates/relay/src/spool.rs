//! Agents' reports that could not go upstream yet, kept on disk (one file each, written and
//! synced before the agent is answered) and sent in the order they came, so that neither an
//! upstream outage nor a relay restart loses one. While a node has reports waiting, its new
//! ones wait behind them: each node's reports reach the control plane in order.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::http::Method;
use serde::{Deserialize, Serialize};

use crate::upstream::{
    Outgoing, UPSTREAM_ANSWER_MAX_BYTES, UPSTREAM_TIMEOUT_MS, Upstreams, jittered,
};

/// Most reports (requests, each one report or one agent's batch) waiting on disk; past it a
/// report is answered 503 and its agent keeps it and sends it again.
pub const REPORTS_SPOOLED_MAX: usize = 100_000;

/// One spooled request, as written on disk. It holds the agent's `Authorization` header: the
/// spool directory is readable by the relay's user only.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spooled {
    node: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
}

#[derive(Debug, Default)]
struct Queue {
    /// Sequence number and node of each waiting report, oldest first.
    waiting: VecDeque<(u64, String)>,
    per_node: HashMap<String, usize>,
    next_seq: u64,
}

/// Why a report was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "the relay holds {REPORTS_SPOOLED_MAX} reports for its upstream already; send again later"
    )]
    Full,
    #[error("the report body is not UTF-8 text")]
    NotText,
    #[error("cannot write the report to the spool: {0}")]
    Disk(String),
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    queue: Mutex<Queue>,
    ready: tokio::sync::Notify,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

impl Spool {
    /// Opens (creates, mode 0700) the spool under `dir`, with what an earlier run left.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let seq = name
                .strip_suffix(".json")
                .and_then(|stem| stem.parse::<u64>().ok());
            match seq {
                Some(seq) => found.push((seq, entry.path())),
                // A temporary file of a write cut short: never acknowledged.
                None => drop(std::fs::remove_file(entry.path())),
            }
        }
        found.sort();
        let mut queue = Queue::default();
        for (seq, path) in found {
            let spooled: Option<Spooled> = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let Some(spooled) = spooled else {
                tracing::warn!(path = %path.display(), "spooled report does not parse; removed");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            *queue.per_node.entry(spooled.node.clone()).or_default() += 1;
            queue.waiting.push_back((seq, spooled.node));
            queue.next_seq = queue.next_seq.max(seq.saturating_add(1));
        }
        if !queue.waiting.is_empty() {
            tracing::info!(
                reports = queue.waiting.len(),
                "reports spooled by an earlier run are sent upstream"
            );
        }
        Ok(Self {
            dir: dir.to_owned(),
            queue: Mutex::new(queue),
            ready: tokio::sync::Notify::new(),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reports waiting.
    pub fn len(&self) -> usize {
        self.queue().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `node` has reports waiting (its new ones must wait behind them).
    pub fn holds(&self, node: &str) -> bool {
        self.queue().per_node.get(node).is_some_and(|n| *n > 0)
    }

    /// Writes one report request to disk (synced) and queues it.
    pub async fn push(
        &self,
        node: &str,
        authorization: Option<String>,
        content_type: Option<String>,
        body: &Bytes,
    ) -> Result<(), SpoolError> {
        let body = std::str::from_utf8(body)
            .map_err(|_| SpoolError::NotText)?
            .to_owned();
        let seq = {
            let mut queue = self.queue();
            if queue.waiting.len() >= REPORTS_SPOOLED_MAX {
                return Err(SpoolError::Full);
            }
            let seq = queue.next_seq;
            queue.next_seq = seq.saturating_add(1);
            seq
        };
        let spooled = Spooled {
            node: node.to_owned(),
            authorization,
            content_type,
            body,
        };
        let text = serde_json::to_vec(&spooled).map_err(|e| SpoolError::Disk(e.to_string()))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_synced(&dir, seq, &text))
            .await
            .map_err(|e| SpoolError::Disk(e.to_string()))?
            .map_err(|e| SpoolError::Disk(e.to_string()))?;
        {
            let mut queue = self.queue();
            // Sequence numbers are taken in order but written concurrently: keep the queue
            // sorted.
            let at = queue.waiting.partition_point(|(s, _)| *s < seq);
            queue.waiting.insert(at, (seq, node.to_owned()));
            *queue.per_node.entry(node.to_owned()).or_default() += 1;
        }
        self.ready.notify_one();
        Ok(())
    }

    fn front(&self) -> Option<(u64, String)> {
        self.queue().waiting.front().cloned()
    }

    fn remove(&self, seq: u64) {
        {
            let mut queue = self.queue();
            if let Some(at) = queue.waiting.iter().position(|(s, _)| *s == seq)
                && let Some((_, node)) = queue.waiting.remove(at)
                && let Some(count) = queue.per_node.get_mut(&node)
            {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    queue.per_node.remove(&node);
                }
            }
        }
        let _ = std::fs::remove_file(self.dir.join(file_name(seq)));
    }

    /// Sends the spooled reports upstream, oldest first, until `shutdown`.
    pub async fn drain(
        self: Arc<Self>,
        upstreams: Arc<Upstreams>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff_ms = crate::upstream::UPSTREAM_BACKOFF_MIN_MS;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let Some((seq, node)) = self.front() else {
                tokio::select! {
                    () = self.ready.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            let pause_ms = match self.send_one(&upstreams, seq, &node).await {
                Ok(()) => {
                    backoff_ms = crate::upstream::UPSTREAM_BACKOFF_MIN_MS;
                    continue;
                }
                Err(why) => {
                    let pause_ms = jittered(backoff_ms).max(upstreams.away_for_ms());
                    tracing::debug!(%why, pause_ms, "spooled reports wait for the upstream");
                    backoff_ms = backoff_ms
                        .saturating_mul(2)
                        .min(crate::upstream::UPSTREAM_BACKOFF_MAX_MS);
                    pause_ms
                }
            };
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(pause_ms)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Sends spooled report `seq`; `Err` when it should be sent again later. A report the
    /// control plane refuses for what it says is dropped (and logged): sending it again
    /// cannot help.
    async fn send_one(&self, upstreams: &Upstreams, seq: u64, node: &str) -> Result<(), String> {
        let path = self.dir.join(file_name(seq));
        let spooled: Spooled = match tokio::fs::read(&path)
            .await
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        {
            Ok(spooled) => spooled,
            Err(error) => {
                tracing::warn!(%node, %error, "spooled report cannot be read; dropped");
                self.remove(seq);
                return Ok(());
            }
        };
        let request = Outgoing {
            method: Method::POST,
            path: format!("/v1/nodes/{}/reports", spooled.node),
            authorization: spooled.authorization,
            content_type: spooled.content_type,
            body: Bytes::from(spooled.body),
            timeout_ms: UPSTREAM_TIMEOUT_MS,
            limit_bytes: UPSTREAM_ANSWER_MAX_BYTES,
            watch: false,
        };
        let answer = upstreams.send(&request).await.map_err(|e| e.to_string())?;
        match answer.status {
            200..=299 => {
                self.remove(seq);
                Ok(())
            }
            408 | 409 | 429 | 500..=599 => Err(format!("upstream answered {}", answer.status)),
            status => {
                tracing::warn!(
                    %node,
                    status,
                    answer = %String::from_utf8_lossy(&answer.body),
                    "spooled report refused upstream; dropped"
                );
                self.remove(seq);
                Ok(())
            }
        }
    }
}

fn write_synced(dir: &Path, seq: u64, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let temporary = dir.join(format!(".{seq}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(text)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(file_name(seq)))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spooled_reports_outlive_the_process_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for i in 0..3 {
            let body = Bytes::from(format!("{{\"i\": {i}}}"));
            spool
                .push("n1", Some("Bearer t".into()), None, &body)
                .await
                .unwrap();
        }
        spool
            .push("n2", None, None, &Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert!(spool.holds("n1") && spool.holds("n2"));
        let again = Spool::open(dir.path()).unwrap();
        assert_eq!(again.len(), 4);
        let order: Vec<_> = again.queue().waiting.iter().cloned().collect();
        assert_eq!(
            order.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
            ["n1", "n1", "n1", "n2"]
        );
        again.remove(order[0].0);
        assert_eq!(Spool::open(dir.path()).unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_body_that_is_not_text_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let refused = spool
            .push("n1", None, None, &Bytes::from_static(&[0xff, 0xfe]))
            .await;
        assert!(matches!(refused, Err(SpoolError::NotText)));
        assert!(spool.is_empty());
    }
}
