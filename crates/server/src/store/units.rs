//! Units: create, edit, read, page.

use super::*;

impl Store {
    /// Creates a unit without a plan or validator command (see [`Store::create_unit_with`]).
    pub fn create_unit(
        &self,
        name: &str,
        spec: &UnitSpec,
        owner: &str,
        description: &str,
        change: &NewChange<'_>,
    ) -> Result<UnitRecord, StoreError> {
        let fields = UnitFields {
            spec,
            owner,
            description,
            plan: None,
            validator: ValidatorChange::Set(None),
        };
        self.create_unit_with(name, &fields, change)
    }

    /// Creates a unit with every field; [`ValidatorChange::Keep`] means none.
    pub fn create_unit_with(
        &self,
        name: &str,
        fields: &UnitFields<'_>,
        change: &NewChange<'_>,
    ) -> Result<UnitRecord, StoreError> {
        let UnitFields {
            spec,
            owner,
            description,
            plan,
            validator,
        } = fields;
        let spec_text = spec_json(name, spec)?;
        let validator_text = match validator {
            ValidatorChange::Keep => None,
            ValidatorChange::Set(validator) => validator_json(name, *validator)?,
        };
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let exists: Option<i64> =
                tx.query_row("SELECT 1 FROM units WHERE name = ?1", [name], |r| r.get(0)).optional()?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists { kind: "unit", key: name.to_owned() });
            }
            tx.execute(
                "INSERT INTO units (name, spec, owner, description, revision, created_ms, updated_ms, plan, validator)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5, ?6, ?7)",
                params![name, spec_text, owner, description, change.at_ms, plan, validator_text],
            )?;
            record_change(&tx, change)?;
            let unit = Self::unit_in(&tx, name)?;
            tx.commit()?;
            Ok(unit)
        })
    }

    /// Replaces a unit's spec, owner and description, and clears its plan, if its revision is
    /// still `expected_revision`; the validator command is kept (see [`Store::update_unit_with`]).
    pub fn update_unit(
        &self,
        name: &str,
        expected_revision: u64,
        spec: &UnitSpec,
        owner: &str,
        description: &str,
        change: &NewChange<'_>,
    ) -> Result<UnitRecord, StoreError> {
        let fields = UnitFields {
            spec,
            owner,
            description,
            plan: None,
            validator: ValidatorChange::Keep,
        };
        self.update_unit_with(name, expected_revision, &fields, change)
    }

    /// Replaces a unit's fields if its revision is still `expected_revision`; the validator
    /// command only when [`ValidatorChange::Set`].
    pub fn update_unit_with(
        &self,
        name: &str,
        expected_revision: u64,
        fields: &UnitFields<'_>,
        change: &NewChange<'_>,
    ) -> Result<UnitRecord, StoreError> {
        let UnitFields {
            spec,
            owner,
            description,
            plan,
            validator,
        } = fields;
        let spec_text = spec_json(name, spec)?;
        let validator_text = match validator {
            ValidatorChange::Keep => None,
            ValidatorChange::Set(validator) => validator_json(name, *validator)?,
        };
        let set_validator = matches!(validator, ValidatorChange::Set(_));
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let current = Self::unit_in(&tx, name)?;
            if current.revision != expected_revision {
                return Err(StoreError::Conflict {
                    kind: "unit",
                    key: name.to_owned(),
                    expected: expected_revision,
                    current: current.revision,
                });
            }
            tx.execute(
                "UPDATE units SET spec = ?2, owner = ?3, description = ?4, revision = revision + 1,
                 updated_ms = ?5, plan = ?7 WHERE name = ?1 AND revision = ?6",
                params![
                    name,
                    spec_text,
                    owner,
                    description,
                    change.at_ms,
                    expected_revision,
                    plan
                ],
            )?;
            if set_validator {
                tx.execute(
                    "UPDATE units SET validator = ?2 WHERE name = ?1",
                    params![name, validator_text],
                )?;
            }
            record_change(&tx, change)?;
            let unit = Self::unit_in(&tx, name)?;
            tx.commit()?;
            Ok(unit)
        })
    }

    pub(super) fn unit_in(conn: &impl Queryable, name: &str) -> Result<UnitRecord, StoreError> {
        let row = conn
            .query_row(
                "SELECT name, spec, owner, description, revision, created_ms, updated_ms, plan, validator FROM units WHERE name = ?1",
                [name],
                unit_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound { kind: "unit", key: name.to_owned() })?;
        Ok(row)
    }

    pub fn unit(&self, name: &str) -> Result<UnitRecord, StoreError> {
        self.with_conn(|conn| Self::unit_in(conn, name))
    }

    pub fn units(&self, limit: u32) -> Result<Vec<UnitRecord>, StoreError> {
        self.units_after(None, limit)
    }

    /// One page of units by name: at most `limit` (at most one more than [`MAX_LIST_ROWS`],
    /// to tell a next page) whose names come after `after`.
    pub fn units_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UnitRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, spec, owner, description, revision, created_ms, updated_ms, plan, validator FROM units
                 WHERE name > ?1 ORDER BY name LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![after.unwrap_or(""), limit.min(PAGE_FETCH_MAX)],
                unit_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Every unit, page by page (at most the engine's `MAX_UNITS`).
    pub fn all_units(&self) -> Result<Vec<UnitRecord>, StoreError> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map(|u: &UnitRecord| u.name.clone());
            let page = self.units_after(after.as_deref(), MAX_LIST_ROWS)?;
            let full = page.len() >= MAX_LIST_ROWS as usize;
            all.extend(page);
            if !full || all.len() >= failsmall_core::engine::MAX_UNITS {
                return Ok(all);
            }
        }
    }
}
