//! Service level objectives: create, list, delete (each with its changelog row).

use failsmall_core::slo::SloSpec;

use super::*;

impl Store {
    /// Stores a new SLO with its changelog row; [`StoreError::AlreadyExists`] for a name
    /// taken, [`StoreError::NotFound`] when its unit is gone.
    pub fn create_slo(&self, spec: &SloSpec, change: &NewChange<'_>) -> Result<(), StoreError> {
        let text = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            what: format!("slo {}", spec.name),
            reason: e.to_string(),
        })?;
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let unit_known = tx
                .query_row(
                    "SELECT 1 FROM units WHERE name = ?1",
                    [spec.unit.as_str()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !unit_known {
                return Err(StoreError::NotFound {
                    kind: "unit",
                    key: spec.unit.to_string(),
                });
            }
            let taken = tx
                .query_row("SELECT 1 FROM slos WHERE name = ?1", [&spec.name], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            if taken {
                return Err(StoreError::AlreadyExists {
                    kind: "slo",
                    key: spec.name.clone(),
                });
            }
            tx.execute(
                "INSERT INTO slos (name, unit, spec, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![spec.name, spec.unit.as_str(), text, to_i64(change.at_ms)],
            )?;
            record_change(&tx, change)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Every SLO, by name (at most [`failsmall_core::slo::SLOS_MAX`], which the API keeps).
    pub fn slos(&self) -> Result<Vec<SloSpec>, StoreError> {
        self.with_conn(|conn| {
            let mut statement = conn.prepare("SELECT name, spec FROM slos ORDER BY name")?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(name, text)| {
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                        what: format!("slo {name}"),
                        reason: e.to_string(),
                    })
                })
                .collect()
        })
    }

    /// Deletes an SLO with its changelog row; [`StoreError::NotFound`] when there is none.
    pub fn delete_slo(&self, name: &str, change: &NewChange<'_>) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let deleted = tx.execute("DELETE FROM slos WHERE name = ?1", [name])?;
            tx.execute("DELETE FROM slo_buckets WHERE slo = ?1", [name])?;
            if deleted == 0 {
                return Err(StoreError::NotFound {
                    kind: "slo",
                    key: name.to_owned(),
                });
            }
            record_change(&tx, change)?;
            tx.commit()?;
            Ok(())
        })
    }
}

/// One stored bucket of an SLO's event counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SloBucketRow {
    pub slo: String,
    /// A minute or an hour, in milliseconds.
    pub width_ms: u64,
    /// The bucket's start divided by its width.
    pub index: u64,
    pub total: u64,
    pub bad: u64,
}

/// What an SLO keeps from: buckets of each width older than these indexes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SloHorizon {
    pub slo: String,
    pub oldest_minute: u64,
    pub oldest_hour: u64,
}

impl Store {
    /// Every stored bucket of every SLO.
    pub fn slo_buckets(&self) -> Result<Vec<SloBucketRow>, StoreError> {
        self.with_conn(|conn| {
            let mut statement =
                conn.prepare("SELECT slo, width_ms, idx, total, bad FROM slo_buckets")?;
            let rows = statement
                .query_map([], |row| {
                    Ok(SloBucketRow {
                        slo: row.get(0)?,
                        width_ms: to_u64(row.get(1)?),
                        index: to_u64(row.get(2)?),
                        total: to_u64(row.get(3)?),
                        bad: to_u64(row.get(4)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Writes buckets (each replaces what its row held) of SLOs that still exist, and deletes
    /// each SLO's buckets past its horizon, in one transaction.
    pub fn save_slo_buckets(
        &self,
        rows: &[SloBucketRow],
        horizons: &[SloHorizon],
    ) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            for row in rows {
                tx.execute(
                    "INSERT INTO slo_buckets (slo, width_ms, idx, total, bad)
                     SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM slos WHERE name = ?1)
                     ON CONFLICT (slo, width_ms, idx) DO UPDATE SET total = excluded.total, bad = excluded.bad",
                    params![
                        row.slo,
                        to_i64(row.width_ms),
                        to_i64(row.index),
                        to_i64(row.total),
                        to_i64(row.bad)
                    ],
                )?;
            }
            for horizon in horizons {
                tx.execute(
                    "DELETE FROM slo_buckets WHERE slo = ?1 AND ((width_ms = ?2 AND idx < ?3) OR (width_ms = ?4 AND idx < ?5))",
                    params![
                        horizon.slo,
                        to_i64(failsmall_core::slo::MINUTE_MS),
                        to_i64(horizon.oldest_minute),
                        to_i64(failsmall_core::slo::HOUR_MS),
                        to_i64(horizon.oldest_hour)
                    ],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}
