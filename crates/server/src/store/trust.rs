//! The store's side of trust: tokens with an owner and an expiry, the last admin token, and
//! the changelog's hash chain.
//!
//! **The chain.** Each changelog row carries `hash = SHA-256(previous row's hash, "\n", the
//! row's content)`, hex, where the content is the JSON array `[id, at_ms, actor, kind, unit,
//! version, reason, concerns, rollout, stage]` as stored, and the first row's previous hash is
//! empty. It is written in the transaction that writes the row. Rows from before the chain
//! existed are chained once, when the store is upgraded (`changelog_chain` records when);
//! after that a row without a hash is a break. Verification recomputes each row's hash from
//! the *stored* hash of the row before it, so an edited row is reported as itself, a deleted
//! or reordered one at the row after it.
//!
//! What it does not catch alone: someone who rewrites every hash after the row they edit
//! (the hash needs no secret) or who deletes the newest rows. Comparing the head
//! (`GET /v1/changelog/verify` gives it) with a copy kept elsewhere catches both.

use super::sql::{self, OptionalExtension as _, Queryable, Row, Transaction, params};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{Store, StoreError, TokenRecord, record_change, to_i64, to_u64};
use crate::auth::Role;
use crate::store::NewChange;

/// Rows verified per lock of the store, so a long history does not stall writers.
const VERIFY_CHUNK_ROWS: i64 = 5_000;

/// A token to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken<'a> {
    pub name: &'a str,
    pub role: Role,
    /// The node an agent token acts for.
    pub node: Option<&'a str>,
    /// The person the token acts for; none: the token's name.
    pub owner: Option<&'a str>,
    /// When it stops being accepted; none: never.
    pub expires_ms: Option<u64>,
    pub token_sha256: &'a str,
}

/// The first row at which the changelog's chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// The changelog row's id.
    pub id: u64,
    pub reason: String,
}

/// What verifying the changelog found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Rows checked.
    pub rows: u64,
    /// The newest row's id and hash: keep a copy elsewhere to detect a rewritten tail.
    pub head_id: Option<u64>,
    pub head_hash: Option<String>,
    /// None: every row's hash matches its content and the row before it.
    pub first_break: Option<ChainBreak>,
}

impl ChainReport {
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// A changelog row's hash from the previous row's hash and the row's content.
fn chain_hash(previous: &str, content: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(b"\n");
    hasher.update(content.as_bytes());
    hex::encode(hasher.finalize())
}

/// The columns a row's hash covers, in order.
const CONTENT_COLUMNS: &str =
    "id, at_ms, actor, kind, unit, version, reason, concerns, rollout, stage, hash";

/// One row: its id, its content as hashed, its stored hash.
fn content_of(row: &Row) -> sql::Result<(u64, String, Option<String>)> {
    let id: i64 = row.get(0)?;
    let content = serde_json::json!([
        id,
        row.get::<_, i64>(1)?,
        row.get::<_, String>(2)?,
        row.get::<_, String>(3)?,
        row.get::<_, Option<String>>(4)?,
        row.get::<_, Option<String>>(5)?,
        row.get::<_, String>(6)?,
        row.get::<_, Option<String>>(7)?,
        row.get::<_, Option<i64>>(8)?,
        row.get::<_, Option<String>>(9)?,
    ])
    .to_string();
    Ok((to_u64(id), content, row.get(10)?))
}

/// Chains the row `id`, just inserted, onto the row before it.
pub(super) fn chain_row(tx: &Transaction<'_>, id: u64) -> Result<(), StoreError> {
    let previous: Option<Option<String>> = tx
        .query_row(
            "SELECT hash FROM changelog WHERE id < ?1 ORDER BY id DESC LIMIT 1",
            [to_i64(id)],
            |row| row.get(0),
        )
        .optional()?;
    let (_, content, _) = tx.query_row(
        &format!("SELECT {CONTENT_COLUMNS} FROM changelog WHERE id = ?1"),
        [to_i64(id)],
        content_of,
    )?;
    let hash = chain_hash(&previous.flatten().unwrap_or_default(), &content);
    tx.execute(
        "UPDATE changelog SET hash = ?2 WHERE id = ?1",
        params![to_i64(id), hash],
    )?;
    Ok(())
}

/// Refuses to revoke admin token `id` unless another admin token is neither revoked nor
/// ever expires: the installation always keeps an admin (one that expires would leave none
/// once it did).
pub(super) fn ensure_another_admin(conn: &impl Queryable, id: u64) -> Result<(), StoreError> {
    let others: i64 = conn.query_row(
        "SELECT COUNT(*) FROM tokens WHERE role = 'admin' AND revoked_ms IS NULL
         AND expires_ms IS NULL AND id != ?1",
        params![to_i64(id)],
        |row| row.get(0),
    )?;
    if others == 0 {
        return Err(StoreError::LastAdmin { id });
    }
    Ok(())
}

impl Store {
    /// Creates a token with its owner and expiry, and its changelog entry.
    pub fn create_token_with(
        &self,
        token: &NewToken<'_>,
        change: &NewChange<'_>,
    ) -> Result<TokenRecord, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let id = tx.query_row(
                "INSERT INTO tokens (name, role, token_sha256, created_ms, node, owner, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                params![
                    token.name,
                    token.role.as_str(),
                    token.token_sha256,
                    to_i64(change.at_ms),
                    token.node,
                    token.owner,
                    token.expires_ms.map(to_i64)
                ],
                |r| Ok(to_u64(r.get::<_, i64>(0)?)),
            )?;
            record_change(&tx, change)?;
            let record = Self::token_in(&tx, id)?;
            tx.commit()?;
            Ok(record)
        })
    }

    /// Rotates token `id`: a new token with the same name, role, node, owner and expiry (whose
    /// hash is `token_sha256`) replaces it, and it is revoked, in one transaction. An admin
    /// token may rotate itself: its successor is in place before it goes.
    pub fn rotate_token(
        &self,
        id: u64,
        token_sha256: &str,
        change: &NewChange<'_>,
    ) -> Result<TokenRecord, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let old = Self::token_in(&tx, id)?;
            if old.revoked_ms.is_some() {
                return Err(StoreError::NotFound {
                    kind: "unrevoked token",
                    key: id.to_string(),
                });
            }
            let new_id = tx.query_row(
                "INSERT INTO tokens (name, role, token_sha256, created_ms, node, owner, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                params![
                    old.name,
                    old.role.as_str(),
                    token_sha256,
                    to_i64(change.at_ms),
                    old.node,
                    old.owner,
                    old.expires_ms.map(to_i64)
                ],
                |r| Ok(to_u64(r.get::<_, i64>(0)?)),
            )?;
            tx.execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1",
                params![to_i64(id), to_i64(change.at_ms)],
            )?;
            record_change(&tx, change)?;
            let record = Self::token_in(&tx, new_id)?;
            tx.commit()?;
            Ok(record)
        })
    }

    /// Chains the rows written before the changelog had a chain, once, at the upgrade.
    pub(super) fn chain_upgrade(&self) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let done: Option<i64> = tx
                .query_row(
                    "SELECT chained_ms FROM changelog_chain WHERE id = 1",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            if done.is_some() {
                return Ok(());
            }
            let rows = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {CONTENT_COLUMNS} FROM changelog ORDER BY id"
                ))?;
                let rows = stmt.query_map([], content_of)?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            let mut previous = String::new();
            for (id, content, _) in rows {
                let hash = chain_hash(&previous, &content);
                tx.execute(
                    "UPDATE changelog SET hash = ?2 WHERE id = ?1",
                    params![to_i64(id), hash],
                )?;
                previous = hash;
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            tx.execute(
                "INSERT INTO changelog_chain (id, chained_ms) VALUES (1, ?1)",
                [now_ms],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The stored chain hash of changelog row `id`; none: no such row (or no hash).
    pub fn changelog_hash(&self, id: u64) -> Result<Option<String>, StoreError> {
        self.with_conn(|conn| {
            let hash: Option<Option<String>> = conn
                .query_row(
                    "SELECT hash FROM changelog WHERE id = ?1",
                    [to_i64(id)],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(hash.flatten())
        })
    }

    /// The changelog chain's first break as the last verification found it (the server
    /// verifies at start and on `GET /v1/changelog/verify`).
    pub fn changelog_break(&self) -> Option<ChainBreak> {
        self.chain_break
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Recomputes every changelog row's hash and reports the first that does not hold; the
    /// break is remembered for [`Store::changelog_break`].
    pub fn verify_changelog(&self) -> Result<ChainReport, StoreError> {
        let report = self.verify_changelog_rows()?;
        *self
            .chain_break
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = report.first_break.clone();
        Ok(report)
    }

    fn verify_changelog_rows(&self) -> Result<ChainReport, StoreError> {
        let mut report = ChainReport {
            rows: 0,
            head_id: None,
            head_hash: None,
            first_break: None,
        };
        let mut previous = String::new();
        let mut after: i64 = -1;
        loop {
            let chunk = self.with_conn(|conn| {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {CONTENT_COLUMNS} FROM changelog WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))?;
                let rows = stmt.query_map(params![after, VERIFY_CHUNK_ROWS], |row| {
                    // A row whose columns no longer read as written is a break, not a failure.
                    match content_of(row) {
                        Ok(read) => Ok(Ok(read)),
                        Err(error) => Ok(Err((row.get::<_, i64>(0).map(to_u64)?, error))),
                    }
                })?;
                Ok(rows.collect::<Result<Vec<_>, sql::SqlError>>()?)
            })?;
            let Some(last) = chunk.last() else {
                return Ok(report);
            };
            after = to_i64(match last {
                Ok((id, _, _)) | Err((id, _)) => *id,
            });
            for row in chunk {
                report.rows = report.rows.saturating_add(1);
                let (id, content, stored) = match row {
                    Ok(read) => read,
                    Err((id, error)) => {
                        report.first_break.get_or_insert(ChainBreak {
                            id,
                            reason: format!("row {id} does not read as written: {error}"),
                        });
                        report.head_id = Some(id);
                        report.head_hash = None;
                        previous = String::new();
                        continue;
                    }
                };
                let expected = chain_hash(&previous, &content);
                if report.first_break.is_none() {
                    let reason = match &stored {
                        None => Some(format!(
                            "row {id} has no hash: it was written around the chain or its hash was removed"
                        )),
                        Some(stored) if *stored != expected => Some(format!(
                            "row {id}'s hash {stored} is not {expected}, the hash of its content after the row before it: \
                             row {id} was edited, or a row before it was deleted or reordered"
                        )),
                        Some(_) => None,
                    };
                    if let Some(reason) = reason {
                        report.first_break = Some(ChainBreak { id, reason });
                    }
                }
                previous = stored.clone().unwrap_or_default();
                report.head_id = Some(id);
                report.head_hash = stored;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(reason: &'a str) -> NewChange<'a> {
        NewChange {
            at_ms: 1,
            actor: "alice",
            kind: "token_created",
            unit: None,
            version: None,
            reason,
            concerns: None,
            rollout: None,
            stage: None,
        }
    }

    fn token<'a>(name: &'a str, role: Role, hash: &'a str) -> NewToken<'a> {
        NewToken {
            name,
            role,
            node: None,
            owner: Some("alice"),
            expires_ms: Some(99),
            token_sha256: hash,
        }
    }

    #[test]
    fn the_chain_holds_and_an_edited_or_deleted_row_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        for index in 0..5 {
            let hash = format!("h{index}");
            let reason = format!("token {index}");
            store
                .create_token_with(&token("t", Role::Viewer, &hash), &change(&reason))
                .unwrap();
        }
        let report = store.verify_changelog().unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.rows, 5);
        assert_eq!(report.head_id, Some(5));
        store
            .with_conn(|conn| {
                conn.execute("UPDATE changelog SET reason = 'nothing' WHERE id = 3", [])?;
                Ok(())
            })
            .unwrap();
        let report = store.verify_changelog().unwrap();
        assert_eq!(
            report.first_break.as_ref().map(|b| b.id),
            Some(3),
            "{report:?}"
        );
        store
            .with_conn(|conn| {
                conn.execute("UPDATE changelog SET reason = 'token 2' WHERE id = 3", [])?;
                conn.execute("DELETE FROM changelog WHERE id = 2", [])?;
                Ok(())
            })
            .unwrap();
        let report = store.verify_changelog().unwrap();
        assert_eq!(
            report.first_break.as_ref().map(|b| b.id),
            Some(3),
            "{report:?}"
        );
        assert!(report.first_break.unwrap().reason.contains("deleted"));
    }

    #[test]
    fn the_last_admin_token_cannot_be_revoked_and_owner_and_expiry_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let first = store
            .create_token_with(&token("root", Role::Admin, "a"), &change("a"))
            .unwrap();
        assert_eq!(first.owner.as_deref(), Some("alice"));
        assert_eq!(first.expires_ms, Some(99));
        // It expires: it does not count as the other admin.
        let second = store
            .create_token_with(
                &NewToken {
                    expires_ms: None,
                    ..token("root2", Role::Admin, "b")
                },
                &change("b"),
            )
            .unwrap();
        let at = |ms| NewChange {
            at_ms: ms,
            ..change("revoke")
        };
        assert!(matches!(
            store.revoke_token(second.id, &at(50)),
            Err(StoreError::LastAdmin { .. })
        ));
        // The expiring one may go, the one that never expires may not, not even by itself.
        store.revoke_token(first.id, &at(60)).unwrap();
        assert!(matches!(
            store.revoke_token(second.id, &at(70)),
            Err(StoreError::LastAdmin { .. })
        ));
    }
}
