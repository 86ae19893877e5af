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
