//! Nodes: liveness marks, heartbeats, pages.

use super::*;

/// Most liveness marks written in one transaction (see [`Store::mark_seen`]).
pub const MARKS_PER_TRANSACTION: usize = 500;

impl Store {
    /// Records when nodes were last heard from, [`MARKS_PER_TRANSACTION`] nodes per
    /// transaction; a time never goes back, and an unknown node is skipped (it may have been
    /// removed since). On an error, the marks of the chunks before are written (writing them
    /// again changes nothing).
    pub fn mark_seen(&self, marks: &[(String, u64)]) -> Result<(), StoreError> {
        // A transaction per chunk: other store work (a push, an operator's read) runs between
        // two, instead of waiting for the marks of a whole fleet that was just answered.
        for chunk in marks.chunks(MARKS_PER_TRANSACTION) {
            self.with_conn(|conn| {
                let tx = conn.transaction()?;
                {
                    let mut update = tx.prepare_cached(
                        "UPDATE nodes SET last_seen_ms = CASE WHEN last_seen_ms < ?2 THEN ?2 ELSE last_seen_ms END WHERE id = ?1",
                    )?;
                    for (node, at_ms) in chunk {
                        update.execute(params![node, to_i64(*at_ms)])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Every node and when it was last heard from (at most the engine's node limit).
    pub fn nodes_last_seen(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt =
                conn.prepare("SELECT id, last_seen_ms FROM nodes ORDER BY id LIMIT ?1")?;
            let limit = i64::try_from(failsmall_core::engine::MAX_NODES).unwrap_or(i64::MAX);
            let rows = stmt.query_map([limit], |row| {
                Ok((row.get::<_, String>(0)?, to_u64(row.get(1)?)))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn heartbeat(&self, id: &str, now_ms: u64) -> Result<NodeRecord, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let updated = tx.execute(
                "UPDATE nodes SET last_seen_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            if updated == 0 {
                return Err(StoreError::NotFound {
                    kind: "node",
                    key: id.to_owned(),
                });
            }
            let node = Self::node_in(&tx, id)?.ok_or_else(|| StoreError::NotFound {
                kind: "node",
                key: id.to_owned(),
            })?;
            tx.commit()?;
            Ok(node)
        })
    }

    pub(super) fn node_in(
        conn: &impl Queryable,
        id: &str,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let row = conn
            .query_row(
                "SELECT id, labels, registered_ms, last_seen_ms, stale_since_ms FROM nodes WHERE id = ?1",
                [id],
                node_from_row,
            )
            .optional()?;
        Ok(row)
    }

    pub fn nodes(&self, limit: u32) -> Result<Vec<NodeRecord>, StoreError> {
        self.nodes_page(None, limit).map(|(nodes, _)| nodes)
    }

    /// Every node (at most `max`), page by page.
    pub fn all_nodes(&self, max: u32) -> Result<Vec<NodeRecord>, StoreError> {
        let mut all: Vec<NodeRecord> = Vec::new();
        loop {
            let after = all.last().map(|node| node.id.clone());
            let (page, more) = self.nodes_page(after.as_deref(), MAX_LIST_ROWS)?;
            let empty = page.is_empty();
            all.extend(page);
            if !more || empty || all.len() >= usize::try_from(max).unwrap_or(usize::MAX) {
                all.truncate(usize::try_from(max).unwrap_or(usize::MAX));
                return Ok(all);
            }
        }
    }

    /// One page of nodes by id, each with every version it applied: at most `limit` (at most
    /// [`MAX_LIST_ROWS`]) whose ids come after `after`, and whether more nodes follow. The
    /// applied versions read for one page are bounded by [`NODE_VERSIONS_PAGE_MAX`]: when a
    /// page's nodes have more, the page ends before the first node whose versions were not all
    /// read (the next page starts with it), so no node is shown with some of its versions.
    pub fn nodes_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<NodeRecord>, bool), StoreError> {
        let limit = limit.clamp(1, MAX_LIST_ROWS);
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, labels, registered_ms, last_seen_ms, stale_since_ms FROM nodes
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![after.unwrap_or(""), limit.saturating_add(1)],
                node_from_row,
            )?;
            let mut nodes = rows.collect::<Result<Vec<_>, _>>()?;
            let page_len = usize::try_from(limit).unwrap_or(usize::MAX);
            let mut more = nodes.len() > page_len;
            nodes.truncate(page_len);
            let (first, last) = match (nodes.first(), nodes.last()) {
                (Some(first), Some(last)) => (first.id.clone(), last.id.clone()),
                _ => return Ok((nodes, more)),
            };
            let mut stmt = conn.prepare(
                "SELECT node, unit, version, applied_ms FROM node_versions
                 WHERE node >= ?1 AND node <= ?2 ORDER BY node, unit LIMIT ?3",
            )?;
            let applied = stmt.query_map(
                params![first, last, NODE_VERSIONS_PAGE_MAX.saturating_add(1)],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        AppliedVersion {
                            version: row.get(2)?,
                            applied_ms: to_u64(row.get(3)?),
                        },
                    ))
                },
            )?;
            let mut rows = applied.collect::<Result<Vec<_>, _>>()?;
            let budget = usize::try_from(NODE_VERSIONS_PAGE_MAX).unwrap_or(usize::MAX);
            if rows.len() > budget {
                // The node of the row past the budget may not have all its versions read: the
                // page ends before it. It is never the first (a node has fewer versions than
                // the budget), so every page holds a node.
                if let Some((cut, _, _)) = rows.last().cloned() {
                    rows.retain(|(node, _, _)| *node < cut);
                    nodes.retain(|node| node.id < cut);
                    more = true;
                }
            }
            let mut by_node: BTreeMap<String, BTreeMap<String, AppliedVersion>> = BTreeMap::new();
            for (node, unit, version) in rows {
                by_node.entry(node).or_default().insert(unit, version);
            }
            for node in &mut nodes {
                if let Some(versions) = by_node.remove(&node.id) {
                    node.versions = versions;
                }
            }
            Ok((nodes, more))
        })
    }
}
