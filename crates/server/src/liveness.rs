//! Node liveness: every request an agent makes (its watch, its reports, its registration) marks
//! its node seen. The marks are kept in memory, so a request never waits on a write, and are
//! written to the store's `nodes.last_seen_ms` every [`LIVENESS_FLUSH_MS`], in transactions of
//! at most [`crate::store::MARKS_PER_TRANSACTION`] nodes; reads overlay the marks not yet written. A node is *down* when it was
//! last seen longer than the server's `node_down_after_ms` ago: the engine is told
//! ([`Event::Liveness`], one `node_liveness` changelog entry per change) and leaves down nodes
//! out of the stages that start while they are down.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use failsmall_core::domain::NodeId;
use failsmall_core::engine::{ENGINE_ACTOR, Event, name_nodes};

use crate::rollouts::{Cause, EngineHost};
use crate::store::{ChangeRow, Store};

/// How often the marks are written to the store.
pub const LIVENESS_FLUSH_MS: u64 = 2_000;
/// A node not seen for this long is down, unless the server is told otherwise
/// (`failsmall server --node-down-after`). Agents ask for their desired state at least every
/// 30 s (the longest watch), so a live agent is never silent this long.
pub const NODE_DOWN_AFTER_MS_DEFAULT: u64 = 90_000;
/// Most marks kept between two writes: one per node of the largest fleet the engine takes.
pub const MAX_PENDING_MARKS: usize = failsmall_core::engine::MAX_NODES;

/// The marks not yet written to the store.
#[derive(Debug, Default)]
pub struct Liveness {
    pending: Mutex<HashMap<String, u64>>,
}

impl Liveness {
    /// Marks `node` seen at `now_ms`. At [`MAX_PENDING_MARKS`] distinct nodes between two
    /// writes a new node's mark waits for its next request (its earlier marks are kept).
    pub fn seen(&self, node: &str, now_ms: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            if let Some(at_ms) = pending.get_mut(node) {
                *at_ms = (*at_ms).max(now_ms);
            } else if pending.len() < MAX_PENDING_MARKS {
                pending.insert(node.to_owned(), now_ms);
            }
        }
    }

    /// The latest mark of `node` not yet written, if any.
    pub fn pending(&self, node: &str) -> Option<u64> {
        self.pending.lock().ok()?.get(node).copied()
    }

    /// Drops `node`'s mark not yet written (the node was removed).
    pub fn forget(&self, node: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(node);
        }
    }

    /// Takes every mark not yet written.
    fn take(&self) -> Vec<(String, u64)> {
        self.pending
            .lock()
            .map(|mut pending| pending.drain().collect())
            .unwrap_or_default()
    }

    /// Puts back marks whose write failed (a newer mark wins).
    fn put_back(&self, marks: Vec<(String, u64)>) {
        for (node, at_ms) in marks {
            self.seen(&node, at_ms);
        }
    }

    /// Writes the marks every [`LIVENESS_FLUSH_MS`] and tells the engine which nodes went down
    /// or came back ([`Event::Liveness`]), until the task is aborted. For the first
    /// `down_after_ms` after start nothing is judged: agents reconnect to a restarted server.
    pub async fn watch_forever(
        self: Arc<Self>,
        store: Arc<Store>,
        engine: Arc<EngineHost>,
        down_after_ms: u64,
        clock: fn() -> u64,
    ) {
        let started_ms = clock();
        loop {
            tokio::time::sleep(Duration::from_millis(LIVENESS_FLUSH_MS)).await;
            self.flush(&store).await;
            let now_ms = clock();
            if now_ms.saturating_sub(started_ms) > down_after_ms {
                self.judge(&store, &engine, now_ms, down_after_ms).await;
            }
        }
    }

    /// Compares who is silent now with who the engine takes for down, and tells it the change.
    async fn judge(
        &self,
        store: &Arc<Store>,
        engine: &Arc<EngineHost>,
        now_ms: u64,
        down_after_ms: u64,
    ) {
        let reader = Arc::clone(store);
        let Ok(Ok(seen)) = tokio::task::spawn_blocking(move || reader.nodes_last_seen()).await
        else {
            return;
        };
        let silent: BTreeSet<String> = seen
            .into_iter()
            .filter(|(node, at_ms)| {
                let last = self.pending(node).map_or(*at_ms, |p| p.max(*at_ms));
                now_ms.saturating_sub(last) > down_after_ms
            })
            .map(|(node, _)| node)
            .collect();
        let known: BTreeSet<String> = engine
            .read(|engine, _| {
                engine
                    .down_nodes()
                    .into_iter()
                    .map(|node| node.to_string())
                    .collect()
            })
            .await;
        let to_ids = |names: Vec<&String>| -> Vec<NodeId> {
            names
                .into_iter()
                .filter_map(|name| NodeId::new(name.clone()).ok())
                .collect()
        };
        let down = to_ids(silent.difference(&known).collect());
        let up = to_ids(known.difference(&silent).collect());
        if down.is_empty() && up.is_empty() {
            return;
        }
        let change = ChangeRow {
            at_ms: now_ms,
            actor: ENGINE_ACTOR.to_owned(),
            kind: "node_liveness".to_owned(),
            unit: None,
            version: None,
            reason: liveness_reason(&down, &up, down_after_ms),
            concerns: None,
            rollout: None,
            stage: None,
        };
        let event = Event::Liveness { down, up };
        if let Err(error) = engine
            .apply(store, now_ms, event, Cause::Nothing, Some(change))
            .await
        {
            tracing::warn!("node liveness: {error}; judged again");
        }
    }

    /// Writes the marks now; a failed write keeps them for the next one.
    pub async fn flush(&self, store: &Arc<Store>) {
        let marks = self.take();
        if marks.is_empty() {
            return;
        }
        let writer = Arc::clone(store);
        let written = tokio::task::spawn_blocking(move || {
            let result = writer.mark_seen(&marks);
            (marks, result)
        })
        .await;
        match written {
            Ok((_, Ok(()))) => {}
            Ok((marks, Err(error))) => {
                tracing::warn!("writing node liveness: {error}; retried");
                self.put_back(marks);
            }
            Err(error) => tracing::warn!("node liveness task: {error}"),
        }
    }
}

/// "2 nodes down (not heard from for 1m30s): a, b; 1 nodes up again: c", naming at most
/// [`failsmall_core::engine::LEFT_OUT_NAMED_MAX`] of each.
fn liveness_reason(down: &[NodeId], up: &[NodeId], down_after_ms: u64) -> String {
    let mut parts = Vec::new();
    if !down.is_empty() {
        parts.push(format!(
            "{} nodes down (not heard from for {}): {}",
            down.len(),
            failsmall_core::duration::format_ms(down_after_ms),
            name_nodes(down)
        ));
    }
    if !up.is_empty() {
        parts.push(format!("{} nodes up again: {}", up.len(), name_nodes(up)));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_the_latest_time_and_are_taken_once() {
        let liveness = Liveness::default();
        liveness.seen("n1", 10);
        liveness.seen("n1", 5);
        liveness.seen("n2", 7);
        assert_eq!(liveness.pending("n1"), Some(10));
        let mut taken = liveness.take();
        taken.sort();
        assert_eq!(taken, [("n1".to_owned(), 10), ("n2".to_owned(), 7)]);
        assert_eq!(liveness.pending("n1"), None);
        liveness.put_back(vec![("n1".to_owned(), 3)]);
        liveness.seen("n1", 2);
        assert_eq!(liveness.pending("n1"), Some(3));
    }
}
