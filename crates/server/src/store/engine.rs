//! The engine's state and the step that commits it with its mutation; removals, staleness, deletions, counts.

use super::*;

impl Store {
    /// The engine's serialized state and its revision (0 when none was saved).
    pub fn engine_state(&self) -> Result<Option<(String, u64)>, StoreError> {
        self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT state, revision FROM engine_state WHERE id = 1",
                    [],
                    |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))),
                )
                .optional()?)
        })
    }

    /// Persists an engine step and its cause atomically; returns the new engine revision.
    /// A different current revision is a conflict and nothing is written.
    pub fn commit_step(&self, step: &EngineStep<'_>) -> Result<u64, StoreError> {
        self.commit_step_with(step, &[], &[], &[])
    }

    /// [`Store::commit_step`], and in the same transaction what its batch of reports brought
    /// besides engine events (`node_rows`: staleness, removals done, notes, each with its
    /// changelog row), the ACKs it took (`applied`) and the units it took from nodes
    /// (`removals`). A node that is not registered fails the whole step with
    /// [`StoreError::NotFound`].
    pub fn commit_step_with(
        &self,
        step: &EngineStep<'_>,
        node_rows: &[NodeRow],
        applied: &[AppliedRow],
        removals: &[RemovalRow],
    ) -> Result<u64, StoreError> {
        let labels_text = match step.node {
            Some((id, labels)) => {
                Some(
                    serde_json::to_string(labels).map_err(|e| StoreError::Corrupt {
                        what: format!("labels of node {id}"),
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        self.with_conn(|conn| {
            fail_at(fail_points::STEP_BEFORE)?;
            let tx = conn.transaction()?;
            let current: u64 = tx
                .query_row("SELECT revision FROM engine_state WHERE id = 1", [], |r| r.get::<_, i64>(0))
                .optional()?
                .map_or(0, to_u64);
            if current != step.expected_revision {
                return Err(StoreError::Conflict {
                    kind: "engine state",
                    key: "engine".to_owned(),
                    expected: step.expected_revision,
                    current,
                });
            }
            if let (Some((id, _)), Some(labels)) = (step.node, &labels_text) {
                let at_ms = step.changes.first().map_or(0, |c| c.at_ms);
                tx.execute(
                    "INSERT INTO nodes (id, labels, registered_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, last_seen_ms = excluded.last_seen_ms",
                    params![id, labels, at_ms],
                )?;
            }
            if let Some(version) = step.version {
                let (_, created) = Self::insert_version(&tx, version)?;
                if !created {
                    return Err(StoreError::AlreadyExists {
                        kind: "version",
                        key: format!("{}@{}", version.unit, version.hash),
                    });
                }
            }
            let next = current.saturating_add(1);
            tx.execute(
                "INSERT INTO engine_state (id, state, revision) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, revision = excluded.revision",
                params![step.state, next],
            )?;
            fail_at(fail_points::STEP_AFTER_STATE)?;
            for row in applied {
                tx.execute(
                    "INSERT INTO node_versions (node, unit, version, applied_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (node, unit) DO UPDATE SET version = excluded.version, applied_ms = excluded.applied_ms",
                    params![row.node, row.unit, row.version, to_i64(row.at_ms)],
                )?;
            }
            for row in removals {
                tx.execute(
                    "INSERT INTO node_removals (node, unit, since_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (node, unit) DO NOTHING",
                    params![row.node, row.unit, to_i64(row.at_ms)],
                )?;
            }
            for row in node_rows {
                Self::apply_node_row(&tx, row)?;
            }
            for change in step.changes {
                record_change(&tx, &change.as_new())?;
            }
            fail_at(fail_points::STEP_BEFORE_COMMIT)?;
            tx.commit()?;
            fail_at(fail_points::STEP_AFTER_COMMIT)?;
            Ok(next)
        })
    }

    pub(super) fn apply_node_row(tx: &Transaction<'_>, row: &NodeRow) -> Result<(), StoreError> {
        let known: Option<String> = tx
            .query_row("SELECT id FROM nodes WHERE id = ?1", [&row.node], |r| {
                r.get(0)
            })
            .optional()?;
        if known.is_none() {
            return Err(StoreError::NotFound {
                kind: "node",
                key: row.node.clone(),
            });
        }
        match &row.effect {
            NodeEffect::Staleness(since_ms) => Self::set_staleness(tx, row, *since_ms),
            NodeEffect::Removed { unit } => {
                let pending = tx.execute(
                    "DELETE FROM node_removals WHERE node = ?1 AND unit = ?2",
                    params![row.node, unit],
                )?;
                tx.execute(
                    "DELETE FROM node_versions WHERE node = ?1 AND unit = ?2",
                    params![row.node, unit],
                )?;
                if pending > 0 {
                    record_change(tx, &row.change.as_new())?;
                }
                Ok(())
            }
            NodeEffect::Note => {
                record_change(tx, &row.change.as_new())?;
                Ok(())
            }
        }
    }

    /// The units `node` must remove (see [`RemovalRow`]), at most [`MAX_LIST_ROWS`].
    pub fn removals_of(&self, node: &str) -> Result<Vec<String>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare("SELECT unit FROM node_removals WHERE node = ?1 ORDER BY unit LIMIT ?2")?;
            let rows = stmt.query_map(params![node, MAX_LIST_ROWS], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub(super) fn set_staleness(
        tx: &Transaction<'_>,
        row: &NodeRow,
        stale_since_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let before: Option<Option<i64>> = tx
            .query_row(
                "SELECT stale_since_ms FROM nodes WHERE id = ?1",
                [&row.node],
                |r| r.get(0),
            )
            .optional()?;
        let Some(before) = before else {
            return Err(StoreError::NotFound {
                kind: "node",
                key: row.node.clone(),
            });
        };
        if before.is_none() && stale_since_ms.is_none() {
            return Ok(());
        }
        tx.execute(
            "UPDATE nodes SET stale_since_ms = ?2 WHERE id = ?1",
            params![row.node, stale_since_ms.map(to_i64)],
        )?;
        record_change(tx, &row.change.as_new())?;
        Ok(())
    }

    /// The node's stored labels, if it is registered.
    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.with_conn(|conn| Self::node_in(conn, id))
    }

    /// Deletes a unit, its versions, what nodes reported applied of it, and the bytes no other
    /// unit's version holds, recording `change` in the same transaction. The changelog keeps
    /// every entry about it; removals nodes still owe stay until they report them. A unit
    /// already gone is [`StoreError::NotFound`].
    pub fn delete_unit(&self, name: &str, change: &NewChange<'_>) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let deleted_versions = tx.execute("DELETE FROM versions WHERE unit = ?1", [name])?;
            tx.execute("DELETE FROM node_versions WHERE unit = ?1", [name])?;
            if tx.execute("DELETE FROM units WHERE name = ?1", [name])? == 0 {
                return Err(StoreError::NotFound {
                    kind: "unit",
                    key: name.to_owned(),
                });
            }
            tx.execute(
                "DELETE FROM blobs WHERE sha256 NOT IN (SELECT hash FROM versions)",
                [],
            )?;
            record_change(&tx, change)?;
            tx.commit()?;
            Ok(u64::try_from(deleted_versions).unwrap_or(u64::MAX))
        })
    }

    /// Deletes a node's row, its applied versions and the removals it still owed, recording
    /// `change` in the same transaction. A node already gone is [`StoreError::NotFound`].
    pub fn delete_node(&self, id: &str, change: &NewChange<'_>) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM node_versions WHERE node = ?1", [id])?;
            tx.execute("DELETE FROM node_removals WHERE node = ?1", [id])?;
            if tx.execute("DELETE FROM nodes WHERE id = ?1", [id])? == 0 {
                return Err(StoreError::NotFound {
                    kind: "node",
                    key: id.to_owned(),
                });
            }
            record_change(&tx, change)?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.with_conn(|conn| {
            let count = |sql: &str| -> Result<u64, StoreError> {
                Ok(to_u64(conn.query_row(sql, [], |r| r.get(0))?))
            };
            Ok(StoreCounts {
                units: count("SELECT COUNT(*) FROM units")?,
                versions: count("SELECT COUNT(*) FROM versions")?,
                nodes: count("SELECT COUNT(*) FROM nodes")?,
                nodes_stale: count("SELECT COUNT(*) FROM nodes WHERE stale_since_ms IS NOT NULL")?,
                blob_bytes: count("SELECT COALESCE(SUM(size_bytes), 0) FROM blobs")?,
                changelog_entries: count("SELECT COUNT(*) FROM changelog")?,
                rollouts_ended: {
                    let mut ended = [0; ROLLOUT_END_KINDS.len()];
                    let mut stmt =
                        conn.prepare("SELECT COUNT(*) FROM changelog WHERE kind = ?1")?;
                    for (slot, kind) in ended.iter_mut().zip(ROLLOUT_END_KINDS) {
                        *slot = to_u64(stmt.query_row([kind], |r| r.get(0))?);
                    }
                    ended
                },
            })
        })
    }
}
