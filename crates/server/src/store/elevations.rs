//! Online break glass: requests for a time-boxed elevated role, their approvals by other
//! people, and the one claim that mints the expiring token. Each change is one transaction
//! with its changelog row.

use super::*;

/// A request for an elevated role, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElevationRecord {
    pub id: u64,
    /// The person who asked (a token's owner).
    pub requester: String,
    pub role: Role,
    /// How long the elevated role lasts, counted from the grant.
    pub duration_ms: u64,
    pub reason: String,
    pub created_ms: u64,
    /// Who approved, in order; distinct people, never the requester.
    pub approvals: Vec<String>,
    /// When enough people approved.
    pub granted_ms: Option<u64>,
    /// When the requester took the token (once).
    pub claimed_ms: Option<u64>,
    /// The elevated token's id, once claimed.
    pub token_id: Option<u64>,
}

/// A store change to an elevation that its state does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElevationOutcome {
    Done(ElevationRecord),
    /// Refused, and why (nothing was written).
    Refused(String),
}

const COLUMNS: &str = "id, requester, role, duration_ms, reason, created_ms, approvals, granted_ms, claimed_ms, token_id";

fn elevation_from_row(row: &Row) -> sql::Result<ElevationRecord> {
    let role: String = row.get(2)?;
    let approvals: String = row.get(6)?;
    Ok(ElevationRecord {
        id: to_u64(row.get(0)?),
        requester: row.get(1)?,
        role: role.parse::<Role>().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?,
        duration_ms: to_u64(row.get(3)?),
        reason: row.get(4)?,
        created_ms: to_u64(row.get(5)?),
        approvals: serde_json::from_str(&approvals).unwrap_or_default(),
        granted_ms: row.get::<_, Option<i64>>(7)?.map(to_u64),
        claimed_ms: row.get::<_, Option<i64>>(8)?.map(to_u64),
        token_id: row.get::<_, Option<i64>>(9)?.map(to_u64),
    })
}

impl Store {
    /// Records a request (and its changelog row).
    pub fn create_elevation(
        &self,
        requester: &str,
        role: Role,
        duration_ms: u64,
        reason: &str,
        change: &NewChange<'_>,
    ) -> Result<ElevationRecord, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let id = tx.query_row(
                "INSERT INTO elevations (requester, role, duration_ms, reason, created_ms, approvals)
                 VALUES (?1, ?2, ?3, ?4, ?5, '[]') RETURNING id",
                params![
                    requester,
                    role.as_str(),
                    to_i64(duration_ms),
                    reason,
                    to_i64(change.at_ms)
                ],
                |r| Ok(to_u64(r.get::<_, i64>(0)?)),
            )?;
            record_change(&tx, change)?;
            let record = Self::elevation_in(&tx, id)?;
            tx.commit()?;
            Ok(record)
        })
    }

    fn elevation_in(conn: &impl Queryable, id: u64) -> Result<ElevationRecord, StoreError> {
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM elevations WHERE id = ?1"),
            [to_i64(id)],
            elevation_from_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            kind: "break-glass request",
            key: id.to_string(),
        })
    }

    pub fn elevation(&self, id: u64) -> Result<ElevationRecord, StoreError> {
        self.with_conn(|conn| Self::elevation_in(conn, id))
    }

    /// The newest `limit` requests, newest first.
    pub fn elevations(&self, limit: u32) -> Result<Vec<ElevationRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM elevations ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = statement
                .query_map([i64::from(limit)], elevation_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Requests not yet granted and created after `since_ms`: how many are pending.
    pub fn pending_elevations(&self, since_ms: u64) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            let count: i64 = conn.query_row(
                "SELECT COUNT(*) FROM elevations WHERE granted_ms IS NULL AND created_ms > ?1",
                [to_i64(since_ms)],
                |r| r.get(0),
            )?;
            Ok(to_u64(count))
        })
    }

    /// `approver` approves request `id`; with `needed` approvals it is granted. Refused when
    /// the request was granted already, is older than `pending_since_ms`, or `approver` is the
    /// requester or approved it before.
    pub fn approve_elevation(
        &self,
        id: u64,
        approver: &str,
        needed: usize,
        pending_since_ms: u64,
        change: &NewChange<'_>,
    ) -> Result<ElevationOutcome, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let mut record = Self::elevation_in(&tx, id)?;
            let refusal = if record.granted_ms.is_some() {
                Some(format!("break-glass request {id} is granted already"))
            } else if record.created_ms <= pending_since_ms {
                Some(format!(
                    "break-glass request {id} expired unapproved; ask again"
                ))
            } else if record.requester == approver {
                Some(format!(
                    "{approver} asked for break-glass request {id} and so cannot approve it; \
                     another person must"
                ))
            } else if record.approvals.iter().any(|a| a == approver) {
                Some(format!(
                    "{approver} approved break-glass request {id} already; another person must"
                ))
            } else {
                None
            };
            if let Some(why) = refusal {
                return Ok(ElevationOutcome::Refused(why));
            }
            record.approvals.push(approver.to_owned());
            let granted = record.approvals.len() >= needed;
            let approvals =
                serde_json::to_string(&record.approvals).map_err(|e| StoreError::Corrupt {
                    what: format!("approvals of break-glass request {id}"),
                    reason: e.to_string(),
                })?;
            tx.execute(
                "UPDATE elevations SET approvals = ?2, granted_ms = ?3 WHERE id = ?1",
                params![
                    to_i64(id),
                    approvals,
                    granted.then_some(to_i64(change.at_ms))
                ],
            )?;
            record_change(&tx, change)?;
            let record = Self::elevation_in(&tx, id)?;
            tx.commit()?;
            Ok(ElevationOutcome::Done(record))
        })
    }

    /// The requester takes the granted role, once: `token` is inserted (its expiry counted
    /// from the grant) with `change` (the break-glass changelog row).
    pub fn claim_elevation(
        &self,
        id: u64,
        claimer: &str,
        token: &NewToken<'_>,
        change: &NewChange<'_>,
    ) -> Result<ElevationOutcome, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let record = Self::elevation_in(&tx, id)?;
            let refusal = if record.requester != claimer {
                Some(format!(
                    "break-glass request {id} is {}'s; only they may claim it",
                    record.requester
                ))
            } else if record.granted_ms.is_none() {
                Some(format!(
                    "break-glass request {id} has {} approval(s) and is not granted yet",
                    record.approvals.len()
                ))
            } else if record.claimed_ms.is_some() {
                Some(format!(
                    "break-glass request {id} was claimed already; its token was shown once"
                ))
            } else if token.expires_ms.is_some_and(|at| at <= change.at_ms) {
                Some(format!(
                    "break-glass request {id}'s time ran out before it was claimed; ask again"
                ))
            } else {
                None
            };
            if let Some(why) = refusal {
                return Ok(ElevationOutcome::Refused(why));
            }
            let token_id = tx.query_row(
                "INSERT INTO tokens (name, role, token_sha256, created_ms, node, owner, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6) RETURNING id",
                params![
                    token.name,
                    token.role.as_str(),
                    token.token_sha256,
                    to_i64(change.at_ms),
                    token.owner,
                    token.expires_ms.map(to_i64)
                ],
                |r| r.get::<_, i64>(0),
            )?;
            tx.execute(
                "UPDATE elevations SET claimed_ms = ?2, token_id = ?3 WHERE id = ?1",
                params![to_i64(id), to_i64(change.at_ms), token_id],
            )?;
            record_change(&tx, change)?;
            let record = Self::elevation_in(&tx, id)?;
            tx.commit()?;
            Ok(ElevationOutcome::Done(record))
        })
    }
}
