//! The engine's lease on a shared PostgreSQL store: one server drives the engine, the others
//! stand by.
//!
//! The lease is a row (`leases`, name `engine`) with its holder, an epoch and an expiry read on
//! the database's clock, so servers' clocks never have to agree. A server takes the lease when
//! it is free or expired, raising the epoch; the holder renews it well before it expires. The
//! epoch is a fencing token: once held, every write transaction on the connection first reads
//! the lease row `FOR SHARE` and refuses to go on under another epoch
//! ([`sql::SqlError::Fenced`]). A takeover's update waits for those share locks, so a write of
//! the old holder either commits before the takeover or is refused after it: a server that was
//! paused or cut off past its lease can never commit, whatever it believes.
//!
//! SQLite needs none of this: one server owns its data dir (a file lock, `startup.rs`).

use super::sql::{self, OptionalExtension as _, Queryable as _};
use super::{Store, StoreError, to_i64, to_u64};

pub(super) const MIGRATION: &str = "CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        url TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL
    );";

/// The lease's row.
const ENGINE_LEASE: &str = "engine";
/// The database's clock, in milliseconds since the epoch.
const DB_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// Who holds the lease, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    /// Where the holder serves (what standbys forward requests to).
    pub url: String,
    pub epoch: u64,
    /// Milliseconds until it expires unless renewed (0: expired).
    pub expires_in_ms: u64,
}

/// What an attempt to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAttempt {
    /// Taken at this epoch; this store's writes are fenced by it from now on.
    Taken { epoch: u64 },
    /// Another server holds it.
    HeldBy(LeaseHolder),
}

impl Store {
    /// Takes the engine's lease for `holder`, serving at `url`, for `ttl_ms` when it is free
    /// or expired. Only a PostgreSQL store has a lease; on SQLite it is always taken (epoch 0).
    pub fn try_take_lease(
        &self,
        holder: &str,
        url: &str,
        ttl_ms: u64,
    ) -> Result<LeaseAttempt, StoreError> {
        self.with_conn_unwatched(|conn| {
            if !conn.is_postgres() {
                return Ok(LeaseAttempt::Taken { epoch: 0 });
            }
            let taken = conn
                .query_row(
                    &format!(
                        "INSERT INTO leases (name, holder, url, epoch, expires_ms)
                         VALUES (?1, ?2, ?4, 1, {DB_NOW_MS} + ?3)
                         ON CONFLICT (name) DO UPDATE
                            SET holder = excluded.holder, url = excluded.url,
                                epoch = leases.epoch + 1, expires_ms = excluded.expires_ms
                            WHERE leases.expires_ms < {DB_NOW_MS}
                         RETURNING epoch"
                    ),
                    sql::params![ENGINE_LEASE, holder, to_i64(ttl_ms), url],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            if let Some(epoch) = taken {
                conn.set_fence(epoch);
                return Ok(LeaseAttempt::Taken {
                    epoch: to_u64(epoch),
                });
            }
            let held = conn.query_row(
                &format!(
                    "SELECT holder, url, epoch, expires_ms - {DB_NOW_MS} FROM leases WHERE name = ?1"
                ),
                [ENGINE_LEASE],
                |r| {
                    Ok(LeaseHolder {
                        holder: r.get(0)?,
                        url: r.get(1)?,
                        epoch: to_u64(r.get(2)?),
                        expires_in_ms: to_u64(r.get::<_, i64>(3)?.max(0)),
                    })
                },
            )?;
            Ok(LeaseAttempt::HeldBy(held))
        })
    }

    /// Renews the lease this store holds for `ttl_ms` more; `false` when it is no longer ours
    /// (another server took it: this one must stop driving the engine).
    pub fn renew_lease(&self, ttl_ms: u64) -> Result<bool, StoreError> {
        self.with_conn_unwatched(|conn| {
            let Some(epoch) = conn.fence() else {
                return Ok(!conn.is_postgres());
            };
            match conn.execute(
                &format!(
                    "UPDATE leases SET expires_ms = {DB_NOW_MS} + ?3 WHERE name = ?1 AND epoch = ?2"
                ),
                sql::params![ENGINE_LEASE, epoch, to_i64(ttl_ms)],
            ) {
                Ok(renewed) => Ok(renewed == 1),
                Err(sql::SqlError::Fenced { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Has PostgreSQL end this server's session when it sits in a transaction for `ms`: a
    /// server paused mid-transaction (its share lock on the lease row held) would otherwise
    /// stop every takeover for as long as it stays paused.
    pub fn bound_idle_transactions(&self, ms: u64) -> Result<(), StoreError> {
        self.with_conn_unwatched(|conn| {
            conn.set_session(&format!(
                "SET idle_in_transaction_session_timeout = {}",
                ms.max(1)
            ))?;
            Ok(())
        })
    }

    /// Gives the lease up at shutdown, so a standby takes over at once.
    pub fn release_lease(&self) -> Result<(), StoreError> {
        self.with_conn_unwatched(|conn| {
            if let Some(epoch) = conn.fence() {
                conn.execute(
                    "UPDATE leases SET expires_ms = 0 WHERE name = ?1 AND epoch = ?2",
                    sql::params![ENGINE_LEASE, epoch],
                )?;
            }
            Ok(())
        })
    }
}
