//! What the in-memory view of desired state (`api::agent::DesiredView`) reads from the store
//! in one go, once per change instead of once per long-poll answer: every registered node's id
//! and every pending removal.

use std::collections::{HashMap, HashSet};

use super::sql::{Queryable, params};
use super::{Store, StoreError};

impl Store {
    /// The ids of the registered nodes (at most `max`) and the units each node must remove
    /// (at most `max` rows in all).
    #[allow(clippy::type_complexity)]
    pub fn desired_view_rows(
        &self,
        max: u32,
    ) -> Result<(HashSet<String>, HashMap<String, Vec<String>>), StoreError> {
        self.with_conn(|conn| {
            let mut nodes = HashSet::new();
            let mut stmt = conn.prepare_cached("SELECT id FROM nodes LIMIT ?1")?;
            for id in stmt.query_map(params![max], |r| r.get::<_, String>(0))? {
                nodes.insert(id?);
            }
            let mut removals: HashMap<String, Vec<String>> = HashMap::new();
            let mut stmt = conn.prepare_cached(
                "SELECT node, unit FROM node_removals ORDER BY node, unit LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![max], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (node, unit) = row?;
                removals.entry(node).or_default().push(unit);
            }
            Ok((nodes, removals))
        })
    }
}
