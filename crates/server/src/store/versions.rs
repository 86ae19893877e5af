//! Versions and their blobs: push, read, page.

use super::*;

impl Store {
    /// Stores a version and its blob. Pushing bytes the unit already has returns the existing
    /// version and `false`, and records nothing.
    pub fn push_version(
        &self,
        version: &NewVersion<'_>,
        changes: &[NewChange<'_>],
    ) -> Result<(VersionRecord, bool), StoreError> {
        self.with_conn(|conn| {
            fail_at(fail_points::PUSH_BEFORE)?;
            let tx = conn.transaction()?;
            let (stored, created) = Self::insert_version(&tx, version)?;
            if !created {
                return Ok((stored, false));
            }
            for change in changes {
                record_change(&tx, change)?;
            }
            fail_at(fail_points::PUSH_BEFORE_COMMIT)?;
            tx.commit()?;
            fail_at(fail_points::PUSH_AFTER_COMMIT)?;
            Ok((stored, true))
        })
    }

    /// Inserts a version and its blob in `tx`; bytes the unit already has give the existing
    /// version and `false`, and write nothing.
    pub(super) fn insert_version(
        tx: &Transaction<'_>,
        version: &NewVersion<'_>,
    ) -> Result<(VersionRecord, bool), StoreError> {
        Self::unit_in(tx, version.unit)?;
        if let Some(existing) = Self::version_in(tx, version.unit, version.hash)? {
            return Ok((existing, false));
        }
        let head: Option<(String, i64)> = tx
            .query_row(
                "SELECT hash, seq FROM versions WHERE unit = ?1 ORDER BY seq DESC LIMIT 1",
                [version.unit],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let head_hash = head.as_ref().map(|(hash, _)| hash.as_str());
        let head_seq = head.as_ref().map_or(0, |(_, seq)| to_u64(*seq));
        if let Some(expected) = version.expected_parent
            && expected != head_hash
        {
            return Err(StoreError::Conflict {
                kind: "unit head",
                key: version.unit.to_owned(),
                expected: 0,
                current: head_seq,
            });
        }
        let size_bytes = u64::try_from(version.content.len()).unwrap_or(u64::MAX);
        tx.execute(
            "INSERT INTO blobs (sha256, size_bytes, content) VALUES (?1, ?2, ?3) ON CONFLICT (sha256) DO NOTHING",
            params![version.hash, size_bytes, version.content],
        )?;
        fail_at(fail_points::PUSH_AFTER_BLOB)?;
        tx.execute(
            &format!("INSERT INTO versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                version.unit,
                version.hash,
                head_seq.saturating_add(1),
                size_bytes,
                version.author,
                version.message,
                head_hash,
                version.created_ms,
                version.signature,
                version.validation_skipped
            ],
        )?;
        let stored = Self::version_in(tx, version.unit, version.hash)?.ok_or_else(|| {
            StoreError::NotFound {
                kind: "version",
                key: version.hash.to_owned(),
            }
        })?;
        Ok((stored, true))
    }

    pub(super) fn version_in(
        conn: &impl Queryable,
        unit: &str,
        hash: &str,
    ) -> Result<Option<VersionRecord>, StoreError> {
        Ok(conn
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE unit = ?1 AND hash = ?2"),
                [unit, hash],
                version_from_row,
            )
            .optional()?)
    }

    pub fn version(&self, unit: &str, hash: &str) -> Result<VersionRecord, StoreError> {
        self.with_conn(|conn| {
            Self::unit_in(conn, unit)?;
            Self::version_in(conn, unit, hash)?.ok_or_else(|| StoreError::NotFound {
                kind: "version",
                key: format!("{unit}@{hash}"),
            })
        })
    }

    /// A unit's versions, newest first.
    pub fn versions(&self, unit: &str, limit: u32) -> Result<Vec<VersionRecord>, StoreError> {
        self.versions_before(unit, None, limit)
    }

    /// One page of a unit's versions, newest first: at most `limit` (at most one more than
    /// [`MAX_LIST_ROWS`]) older than sequence `before`.
    pub fn versions_before(
        &self,
        unit: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        self.with_conn(|conn| {
            Self::unit_in(conn, unit)?;
            let mut stmt = conn.prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions WHERE unit = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
            ))?;
            let before = before.map_or(i64::MAX, to_i64);
            let rows = stmt.query_map(
                params![unit, before, limit.min(PAGE_FETCH_MAX)],
                version_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The bytes whose SHA-256 (hex) is `sha256`.
    pub fn blob(&self, sha256: &str) -> Result<Vec<u8>, StoreError> {
        self.with_conn(|conn| {
            conn.query_row(
                "SELECT content FROM blobs WHERE sha256 = ?1",
                [sha256],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "blob",
                key: sha256.to_owned(),
            })
        })
    }
}
