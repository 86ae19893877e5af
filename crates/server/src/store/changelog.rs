//! The changelog: record, query, page.

use super::*;

impl Store {
    /// Records a change on its own (for mutations that have no other row).
    pub fn record(&self, change: &NewChange<'_>) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let id = record_change(&tx, change)?;
            fail_at(fail_points::CHANGE_BEFORE_COMMIT)?;
            tx.commit()?;
            fail_at(fail_points::CHANGE_AFTER_COMMIT)?;
            Ok(id)
        })
    }

    /// The team (owner) of each of `units` that still exists.
    pub fn unit_teams(
        &self,
        units: &std::collections::BTreeSet<String>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.with_conn(|conn| {
            let mut statement = conn.prepare_cached("SELECT owner FROM units WHERE name = ?1")?;
            let mut teams = BTreeMap::new();
            for unit in units {
                let owner: Option<String> = statement
                    .query_row(params![unit], |row| row.get(0))
                    .optional()?;
                if let Some(owner) = owner.filter(|owner| !owner.is_empty()) {
                    teams.insert(unit.clone(), owner);
                }
            }
            Ok(teams)
        })
    }

    /// The entries of one page (see [`Store::changelog_page`]).
    pub fn changelog(&self, query: &ChangelogQuery) -> Result<Vec<ChangeRecord>, StoreError> {
        Ok(self.changelog_page(query)?.entries)
    }

    /// One page of the changelog: oldest first from `after_id`, or newest first from
    /// `before_id`; `next_cursor` continues it in the same order. With a label
    /// filter, entries are read in batches and filtered here (the filter reads the JSON of
    /// `concerns`, which SQL dialects spell differently), examining at most
    /// [`MAX_CHANGELOG_SCAN_ROWS`] entries per page.
    pub fn changelog_page(&self, query: &ChangelogQuery) -> Result<ChangelogPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_LIST_ROWS);
        let page_rows = usize::try_from(limit).unwrap_or(usize::MAX);
        let order = if query.newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT id, at_ms, actor, kind, unit, version, reason, concerns, rollout, stage
             FROM changelog
             WHERE id > ?1 AND id < ?2 AND (CAST(?3 AS TEXT) IS NULL OR unit = ?3) AND at_ms >= ?4
               AND (CAST(?6 AS BIGINT) IS NULL OR rollout = ?6)
               AND (CAST(?7 AS TEXT) IS NULL OR unit IN (SELECT name FROM units WHERE owner = ?7))
             ORDER BY id {order} LIMIT ?5"
        );
        // The window still to read: ids in (after, before).
        let mut after = if query.newest_first {
            0
        } else {
            to_i64(query.after_id.unwrap_or(0))
        };
        let mut before = if query.newest_first {
            query.before_id.map_or(i64::MAX, to_i64)
        } else {
            i64::MAX
        };
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(&sql)?;
            let mut page = ChangelogPage::default();
            let mut scanned: u32 = 0;
            loop {
                let rows = stmt.query_map(
                    params![
                        after,
                        before,
                        query.unit,
                        to_i64(query.since_ms.unwrap_or(0)),
                        limit,
                        query.rollout.map(to_i64),
                        query.team
                    ],
                    change_from_row,
                )?;
                let batch = rows.collect::<Result<Vec<_>, _>>()?;
                let exhausted = batch.len() < page_rows;
                let mut last_id = None;
                for entry in batch {
                    scanned = scanned.saturating_add(1);
                    last_id = Some(entry.id);
                    let admitted = query.labels.is_empty()
                        || entry
                            .concerns
                            .as_ref()
                            .is_none_or(|concerns| concerns.admits(&query.labels));
                    if admitted {
                        page.entries.push(entry);
                        if page.entries.len() >= page_rows {
                            break;
                        }
                    }
                }
                let Some(last_id) = last_id else {
                    return Ok(page);
                };
                if query.newest_first {
                    before = to_i64(last_id);
                } else {
                    after = to_i64(last_id);
                }
                let full = page.entries.len() >= page_rows;
                if full || scanned >= MAX_CHANGELOG_SCAN_ROWS {
                    if full || !exhausted {
                        page.next_cursor = Some(last_id);
                    }
                    return Ok(page);
                }
                if exhausted {
                    return Ok(page);
                }
            }
        })
    }
}
