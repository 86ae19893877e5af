//! The engine's state and the step that commits it with its mutation; removals, staleness, deletions, counts.
//!
//! The state is persisted as an append-only log of engine steps (each step's events and the
//! `now_ms` they were applied at, under the revision the step made) plus snapshots of the whole
//! state taken now and then. The state at revision `r` is the newest snapshot at or below `r`
//! with the log rows after it replayed in order: the engine is a pure function of
//! `(state, event, now)`, so replay gives exactly the state the live engine had.

use failsmall_core::engine::{Engine, Event};

use super::*;

/// Log rows kept behind the newest snapshot (for inspection and for replay checks); older
/// ones are deleted when a snapshot is written.
pub const ENGINE_LOG_TAIL_STEPS: u64 = 1_000;

pub(super) const MIGRATION: &str = "
    CREATE TABLE engine_log (
        revision INTEGER PRIMARY KEY,
        now_ms BIGINT NOT NULL,
        events TEXT NOT NULL
    );
    CREATE TABLE engine_snapshots (
        revision INTEGER PRIMARY KEY,
        state TEXT NOT NULL
    );
    INSERT INTO engine_snapshots (revision, state)
        SELECT revision, state FROM engine_state WHERE id = 1 AND state <> '';
    UPDATE engine_state SET state = '' WHERE id = 1;";

/// One engine step in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLogRow {
    /// The revision the step made.
    pub revision: u64,
    pub now_ms: u64,
    /// The step's events in order, a JSON array.
    pub events: String,
}

impl Store {
    /// The engine's revision (0 when no step was saved).
    pub fn engine_revision(&self) -> Result<u64, StoreError> {
        self.with_conn(|conn| Self::engine_revision_in(conn))
    }

    fn engine_revision_in(conn: &impl Queryable) -> Result<u64, StoreError> {
        Ok(conn
            .prepare_cached("SELECT revision FROM engine_state WHERE id = 1")?
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()?
            .map_or(0, to_u64))
    }

    /// The newest snapshot of the engine's state and the revision it is at.
    pub fn engine_snapshot(&self) -> Result<Option<(String, u64)>, StoreError> {
        self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT state, revision FROM engine_snapshots ORDER BY revision DESC LIMIT 1",
                    [],
                    |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))),
                )
                .optional()?)
        })
    }

    /// The logged steps after `revision`, oldest first.
    pub fn engine_log_after(&self, revision: u64) -> Result<Vec<EngineLogRow>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT revision, now_ms, events FROM engine_log WHERE revision > ?1 ORDER BY revision",
            )?;
            let rows = stmt.query_map([to_i64(revision)], |r| {
                Ok(EngineLogRow {
                    revision: to_u64(r.get(0)?),
                    now_ms: to_u64(r.get(1)?),
                    events: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The engine at the stored revision: the newest snapshot with the logged steps after it
    /// replayed (a new engine and revision 0 when nothing was saved). A log that does not
    /// continue the snapshot, or a step the engine refuses on replay, is
    /// [`StoreError::Corrupt`].
    pub fn load_engine(&self) -> Result<(Engine, u64), StoreError> {
        let corrupt = |what: String, reason: String| StoreError::Corrupt { what, reason };
        let (mut engine, from) = match self.engine_snapshot()? {
            Some((text, revision)) => {
                let engine = serde_json::from_str::<Engine>(&text).map_err(|e| {
                    corrupt(
                        format!("engine snapshot at revision {revision}"),
                        e.to_string(),
                    )
                })?;
                (engine, revision)
            }
            None => (Engine::new(), 0),
        };
        let head = self.engine_revision()?;
        let mut at = from;
        for row in self.engine_log_after(from)? {
            let what = || format!("engine log row at revision {}", row.revision);
            if row.revision != at.saturating_add(1) {
                return Err(corrupt(
                    what(),
                    format!("expected revision {} next", at.saturating_add(1)),
                ));
            }
            let events: Vec<Event> =
                serde_json::from_str(&row.events).map_err(|e| corrupt(what(), e.to_string()))?;
            for event in &events {
                engine.step(row.now_ms, event).map_err(|e| {
                    corrupt(what(), format!("the engine refuses it on replay: {e}"))
                })?;
            }
            at = row.revision;
        }
        if at != head {
            return Err(corrupt(
                "engine log".to_owned(),
                format!("it ends at revision {at}, the engine is at revision {head}"),
            ));
        }
        Ok((engine, head))
    }

    /// The engine's state at the stored revision, serialized, and that revision; `None` when
    /// nothing was saved. Replays the log (see [`Store::load_engine`]).
    pub fn engine_state(&self) -> Result<Option<(String, u64)>, StoreError> {
        let (engine, revision) = self.load_engine()?;
        if revision == 0 {
            return Ok(None);
        }
        let text = serde_json::to_string(&engine).map_err(|e| StoreError::Corrupt {
            what: "engine state".to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Some((text, revision)))
    }

    /// Saves `state`, the engine at `revision` (a revision already logged), as the newest
    /// snapshot, then deletes older snapshots and the log rows more than
    /// [`ENGINE_LOG_TAIL_STEPS`] behind it. A snapshot older than the newest is ignored.
    pub fn write_engine_snapshot(&self, revision: u64, state: &str) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            fail_at(fail_points::SNAPSHOT_BEFORE)?;
            let tx = conn.transaction()?;
            let head = Self::engine_revision_in(&tx)?;
            if revision > head {
                return Err(StoreError::Conflict {
                    kind: "engine snapshot",
                    key: "engine".to_owned(),
                    expected: revision,
                    current: head,
                });
            }
            let newest: Option<i64> =
                tx.query_row("SELECT MAX(revision) FROM engine_snapshots", [], |r| {
                    r.get(0)
                })?;
            if newest.is_some_and(|newest| to_u64(newest) >= revision) {
                return Ok(());
            }
            tx.execute(
                "INSERT INTO engine_snapshots (revision, state) VALUES (?1, ?2)",
                params![to_i64(revision), state],
            )?;
            tx.execute(
                "DELETE FROM engine_snapshots WHERE revision < ?1",
                [to_i64(revision)],
            )?;
            tx.execute(
                "DELETE FROM engine_log WHERE revision <= ?1",
                [to_i64(revision.saturating_sub(ENGINE_LOG_TAIL_STEPS))],
            )?;
            tx.commit()?;
            Ok(())
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
    /// [`StoreError::NotFound`]. The step's events go to the engine's log under the new
    /// revision.
    pub fn commit_step_with(
        &self,
        step: &EngineStep<'_>,
        node_rows: &[NodeRow],
        applied: &[AppliedRow],
        removals: &[RemovalRow],
    ) -> Result<u64, StoreError> {
        let registered = step
            .nodes
            .iter()
            .map(|(id, labels)| {
                serde_json::to_string(labels)
                    .map(|text| (*id, text))
                    .map_err(|e| StoreError::Corrupt {
                        what: format!("labels of node {id}"),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.with_conn(|conn| {
            fail_at(fail_points::STEP_BEFORE)?;
            let tx = conn.transaction()?;
            let current = Self::engine_revision_in(&tx)?;
            if current != step.expected_revision {
                return Err(StoreError::Conflict {
                    kind: "engine state",
                    key: "engine".to_owned(),
                    expected: step.expected_revision,
                    current,
                });
            }
            for (id, labels) in &registered {
                tx.prepare_cached(
                    "INSERT INTO nodes (id, labels, registered_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, last_seen_ms = excluded.last_seen_ms",
                )?
                .execute(params![id, labels, to_i64(step.now_ms)])?;
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
            tx.prepare_cached(
                "INSERT INTO engine_state (id, state, revision) VALUES (1, '', ?1)
                 ON CONFLICT (id) DO UPDATE SET revision = excluded.revision",
            )?
            .execute([to_i64(next)])?;
            tx.prepare_cached("INSERT INTO engine_log (revision, now_ms, events) VALUES (?1, ?2, ?3)")?
                .execute(params![to_i64(next), to_i64(step.now_ms), step.events])?;
            fail_at(fail_points::STEP_AFTER_STATE)?;
            for row in applied {
                tx.prepare_cached(
                    "INSERT INTO node_versions (node, unit, version, applied_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (node, unit) DO UPDATE SET version = excluded.version, applied_ms = excluded.applied_ms",
                )?
                .execute(params![row.node, row.unit, row.version, to_i64(row.at_ms)])?;
            }
            for row in removals {
                tx.prepare_cached(
                    "INSERT INTO node_removals (node, unit, since_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (node, unit) DO NOTHING",
                )?
                .execute(params![row.node, row.unit, to_i64(row.at_ms)])?;
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
            .prepare_cached("SELECT id FROM nodes WHERE id = ?1")?
            .query_row([&row.node], |r| r.get(0))
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
                blob_bytes: count(
                    "SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM blobs",
                )?,
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
