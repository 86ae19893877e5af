//! Tokens: create, look up, page, revoke.

use super::*;

impl Store {
    pub fn create_token(
        &self,
        name: &str,
        role: Role,
        token_sha256: &str,
        change: &NewChange<'_>,
    ) -> Result<TokenRecord, StoreError> {
        self.create_token_for(name, role, None, token_sha256, change)
    }

    /// Creates a token; `node` binds it to the one node it may act for (agent tokens).
    pub fn create_token_for(
        &self,
        name: &str,
        role: Role,
        node: Option<&str>,
        token_sha256: &str,
        change: &NewChange<'_>,
    ) -> Result<TokenRecord, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let id = tx.query_row(
                "INSERT INTO tokens (name, role, token_sha256, created_ms, node) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                params![name, role.as_str(), token_sha256, change.at_ms, node],
                |r| Ok(to_u64(r.get::<_, i64>(0)?)),
            )?;
            record_change(&tx, change)?;
            let token = Self::token_in(&tx, id)?;
            tx.commit()?;
            Ok(token)
        })
    }

    pub(super) fn token_in(conn: &impl Queryable, id: u64) -> Result<TokenRecord, StoreError> {
        let row = conn
            .query_row(
                "SELECT id, name, role, created_ms, revoked_ms, node, owner, expires_ms FROM tokens WHERE id = ?1",
                [to_i64(id)],
                token_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "token",
                key: id.to_string(),
            })?;
        Ok(row)
    }

    /// The active (not revoked) token with this hash.
    pub fn active_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.with_conn(|conn| {
            let row = conn
                .query_row(
                    "SELECT id, name, role, created_ms, revoked_ms, node, owner, expires_ms FROM tokens
                     WHERE token_sha256 = ?1 AND revoked_ms IS NULL",
                    [token_sha256],
                    token_from_row,
                )
                .optional()?;
            Ok(row)
        })
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.tokens_after(None, MAX_LIST_ROWS)
    }

    /// One page of tokens by id: at most `limit` (at most one more than [`MAX_LIST_ROWS`])
    /// whose ids come after `after`.
    pub fn tokens_after(
        &self,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, name, role, created_ms, revoked_ms, node, owner, expires_ms FROM tokens WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![after.map_or(0, to_i64), limit.min(PAGE_FETCH_MAX)],
                token_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Revokes a token; revoking a revoked token changes nothing.
    pub fn revoke_token(&self, id: u64, change: &NewChange<'_>) -> Result<TokenRecord, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let token = Self::token_in(&tx, id)?;
            if token.revoked_ms.is_none() {
                if token.role == Role::Admin {
                    trust::ensure_another_admin(&tx, id)?;
                }
                tx.execute(
                    "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1",
                    params![to_i64(id), to_i64(change.at_ms)],
                )?;
                record_change(&tx, change)?;
            }
            let token = Self::token_in(&tx, id)?;
            tx.commit()?;
            Ok(token)
        })
    }

    pub fn token_count(&self) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            Ok(to_u64(conn.query_row(
                "SELECT COUNT(*) FROM tokens",
                [],
                |r| r.get(0),
            )?))
        })
    }
}
