//! Incidents and their public updates (see `crate::incidents`). An incident a changelog row
//! causes is opened by [`on_change`], inside the transaction that writes the row; every
//! incident change writes its own changelog row (`incident_opened`, `incident_updated`,
//! `incident_resolved`, `incident_review`, `incident_update_due`) through `record_change`, so
//! its notifications are in the outbox in the same transaction.

use super::*;
use crate::incidents::{self, Cadence, CadenceAction, Severity, Status};

/// Migration: incidents, their public updates; one open incident per rollout.
pub(super) const MIGRATION: &str = "CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        components TEXT NOT NULL,
        labels TEXT NOT NULL,
        unit TEXT,
        rollout BIGINT,
        cause TEXT NOT NULL,
        opened_by TEXT NOT NULL,
        opened_ms BIGINT NOT NULL,
        resolved_ms BIGINT,
        last_update_ms BIGINT NOT NULL,
        reminded_ms BIGINT,
        review TEXT,
        review_ms BIGINT
    );
    CREATE UNIQUE INDEX incidents_open_rollout ON incidents (rollout)
        WHERE resolved_ms IS NULL AND rollout IS NOT NULL;
    CREATE INDEX incidents_resolved ON incidents (resolved_ms);
    CREATE TABLE incident_updates (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident INTEGER NOT NULL,
        at_ms BIGINT NOT NULL,
        status TEXT NOT NULL,
        severity TEXT NOT NULL,
        body TEXT NOT NULL,
        author TEXT NOT NULL,
        automatic INTEGER NOT NULL
    );
    CREATE INDEX incident_updates_of ON incident_updates (incident, id);";

/// An incident as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentRecord {
    pub id: u64,
    /// Public.
    pub title: String,
    pub severity: Severity,
    pub status: Status,
    /// Public: the units (or services) affected.
    pub components: Vec<String>,
    /// The node labels affected, where known (internal).
    pub labels: Vec<String>,
    pub unit: Option<String>,
    pub rollout: Option<u64>,
    /// The changelog kind that opened it, or `manual`.
    pub cause: String,
    pub opened_by: String,
    pub opened_ms: u64,
    pub resolved_ms: Option<u64>,
    /// The last public update (the cadence counts from it).
    pub last_update_ms: u64,
    pub reminded_ms: Option<u64>,
    /// The post-incident review (markdown), once written; public.
    pub review: Option<String>,
    pub review_ms: Option<u64>,
}

/// One public update of an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentUpdate {
    pub id: u64,
    pub incident: u64,
    pub at_ms: u64,
    pub status: Status,
    pub severity: Severity,
    /// Public text.
    pub body: String,
    /// Who wrote it (internal); `failsmall` for automatic ones.
    pub author: String,
    /// A holding update the cadence published, or the first one of an automatic incident.
    pub automatic: bool,
}

/// An incident to open by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncident {
    pub title: String,
    pub severity: Severity,
    pub components: Vec<String>,
    /// The first public update; a default one when empty.
    pub message: String,
}

/// A change to an incident: a public update, optionally moving its status or severity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentChange {
    pub status: Option<Status>,
    pub severity: Option<Severity>,
    pub message: String,
}

const INCIDENT_COLUMNS: &str = "id, title, severity, status, components, labels, unit, rollout, cause, opened_by, opened_ms, resolved_ms, last_update_ms, reminded_ms, review, review_ms";

fn incident_from_row(row: &Row) -> sql::Result<IncidentRecord> {
    let severity: String = row.get(2)?;
    let status: String = row.get(3)?;
    let StoredJson(components) = row.get(4)?;
    let StoredJson(labels) = row.get(5)?;
    Ok(IncidentRecord {
        id: to_u64(row.get(0)?),
        title: row.get(1)?,
        severity: Severity::parse(&severity).unwrap_or(Severity::Sev1),
        status: Status::parse(&status).unwrap_or(Status::Investigating),
        components,
        labels,
        unit: row.get(6)?,
        rollout: row.get::<_, Option<i64>>(7)?.map(to_u64),
        cause: row.get(8)?,
        opened_by: row.get(9)?,
        opened_ms: to_u64(row.get(10)?),
        resolved_ms: row.get::<_, Option<i64>>(11)?.map(to_u64),
        last_update_ms: to_u64(row.get(12)?),
        reminded_ms: row.get::<_, Option<i64>>(13)?.map(to_u64),
        review: row.get(14)?,
        review_ms: row.get::<_, Option<i64>>(15)?.map(to_u64),
    })
}

fn update_from_row(row: &Row) -> sql::Result<IncidentUpdate> {
    let status: String = row.get(3)?;
    let severity: String = row.get(4)?;
    Ok(IncidentUpdate {
        id: to_u64(row.get(0)?),
        incident: to_u64(row.get(1)?),
        at_ms: to_u64(row.get(2)?),
        status: Status::parse(&status).unwrap_or(Status::Investigating),
        severity: Severity::parse(&severity).unwrap_or(Severity::Sev1),
        body: row.get(5)?,
        author: row.get(6)?,
        automatic: row.get::<_, i64>(7)? != 0,
    })
}

fn json_text<T: Serialize>(value: &T, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn incident_in(tx: &Transaction<'_>, id: u64) -> Result<IncidentRecord, StoreError> {
    tx.query_row(
        &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"),
        params![to_i64(id)],
        incident_from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound {
        kind: "incident",
        key: id.to_string(),
    })
}

#[allow(clippy::too_many_arguments)]
fn insert_update(
    tx: &Transaction<'_>,
    incident: u64,
    at_ms: u64,
    status: Status,
    severity: Severity,
    body: &str,
    author: &str,
    automatic: bool,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO incident_updates (incident, at_ms, status, severity, body, author, automatic)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            to_i64(incident),
            to_i64(at_ms),
            status.as_str(),
            severity.as_str(),
            body,
            author,
            i64::from(automatic)
        ],
    )?;
    Ok(())
}

fn update_count(tx: &Transaction<'_>, incident: u64) -> Result<u64, StoreError> {
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM incident_updates WHERE incident = ?1",
        params![to_i64(incident)],
        |row| row.get(0),
    )?;
    Ok(to_u64(count))
}

/// The changelog row of an incident change; its reason begins `incident ID SEV` (see
/// [`incidents::incident_of_reason`]).
fn record_incident_change(
    tx: &Transaction<'_>,
    incident: &IncidentRecord,
    kind: &str,
    actor: &str,
    at_ms: u64,
    what: &str,
) -> Result<u64, StoreError> {
    let reason = format!(
        "incident {} {} {}: {what}",
        incident.id,
        incident.severity.as_str(),
        incident.status.as_str()
    );
    record_change(
        tx,
        &NewChange {
            at_ms,
            actor,
            kind,
            unit: incident.unit.as_deref(),
            version: None,
            reason: &reason,
            concerns: None,
            rollout: incident.rollout,
            stage: None,
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn insert_incident(
    tx: &Transaction<'_>,
    title: &str,
    severity: Severity,
    components: &[String],
    labels: &[String],
    unit: Option<&str>,
    rollout: Option<u64>,
    cause: &str,
    opened_by: &str,
    at_ms: u64,
) -> Result<u64, StoreError> {
    Ok(tx.query_row(
        "INSERT INTO incidents (title, severity, status, components, labels, unit, rollout, cause, opened_by, opened_ms, last_update_ms)
         VALUES (?1, ?2, 'investigating', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) RETURNING id",
        params![
            title,
            severity.as_str(),
            json_text(&components, "incident components")?,
            json_text(&labels, "incident labels")?,
            unit,
            rollout.map(to_i64),
            cause,
            opened_by,
            to_i64(at_ms)
        ],
        |r| Ok(to_u64(r.get::<_, i64>(0)?)),
    )?)
}

/// Opens the incident changelog row `change` causes, if its kind opens one and its rollout
/// (or, without a rollout, its unit and kind) has none open yet; called by `record_change`
/// in the row's transaction. A later row of the same rollout is in that incident's timeline.
pub(super) fn on_change(tx: &Transaction<'_>, change: &NewChange<'_>) -> Result<(), StoreError> {
    let Some(severity) = incidents::auto_open_severity(change.kind) else {
        return Ok(());
    };
    let open: Option<i64> = match change.rollout {
        Some(rollout) => tx
            .query_row(
                "SELECT id FROM incidents WHERE rollout = ?1 AND resolved_ms IS NULL",
                params![to_i64(rollout)],
                |row| row.get(0),
            )
            .optional()?,
        None => tx
            .query_row(
                "SELECT id FROM incidents WHERE rollout IS NULL AND unit IS ?1 AND cause = ?2
                   AND resolved_ms IS NULL",
                params![change.unit, change.kind],
                |row| row.get(0),
            )
            .optional()?,
    };
    if open.is_some() {
        return Ok(());
    }
    let (title, first_update) = incidents::auto_text(change.kind, change.unit);
    let components: Vec<String> = change.unit.map(str::to_owned).into_iter().collect();
    let labels: Vec<String> = match change.concerns {
        Some(Concerns::Selectors(selectors)) => selectors
            .iter()
            .map(failsmall_core::freeze::describe_selector)
            .collect(),
        Some(Concerns::Node(labels)) => labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        None => Vec::new(),
    };
    let id = insert_incident(
        tx,
        &title,
        severity,
        &components,
        &labels,
        change.unit,
        change.rollout,
        change.kind,
        "failsmall",
        change.at_ms,
    )?;
    insert_update(
        tx,
        id,
        change.at_ms,
        Status::Investigating,
        severity,
        &first_update,
        "failsmall",
        true,
    )?;
    let incident = incident_in(tx, id)?;
    record_incident_change(
        tx,
        &incident,
        "incident_opened",
        "failsmall",
        change.at_ms,
        &format!("opened by {}: {title}", change.kind),
    )?;
    Ok(())
}

impl Store {
    /// Opens an incident by hand; its first public update is `message` (or a default one).
    pub fn open_incident(
        &self,
        new: &NewIncident,
        actor: &str,
        now_ms: u64,
    ) -> Result<IncidentRecord, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            // The first component that names a unit gives the incident its unit (its timeline).
            let mut unit = None;
            for component in &new.components {
                let exists: Option<String> = tx
                    .query_row(
                        "SELECT name FROM units WHERE name = ?1",
                        params![component],
                        |row| row.get(0),
                    )
                    .optional()?;
                if exists.is_some() {
                    unit = exists;
                    break;
                }
            }
            let id = insert_incident(
                &tx,
                &new.title,
                new.severity,
                &new.components,
                &[],
                unit.as_deref(),
                None,
                "manual",
                actor,
                now_ms,
            )?;
            let message = if new.message.trim().is_empty() {
                "We are investigating this issue.".to_owned()
            } else {
                new.message.clone()
            };
            insert_update(
                &tx,
                id,
                now_ms,
                Status::Investigating,
                new.severity,
                &message,
                actor,
                false,
            )?;
            let incident = incident_in(&tx, id)?;
            record_incident_change(
                &tx,
                &incident,
                "incident_opened",
                actor,
                now_ms,
                &format!("opened: {}", new.title),
            )?;
            tx.commit()?;
            Ok(incident)
        })
    }

    /// One incident and its public updates, oldest first.
    pub fn incident(
        &self,
        id: u64,
    ) -> Result<Option<(IncidentRecord, Vec<IncidentUpdate>)>, StoreError> {
        self.with_conn(|conn| {
            let incident = conn
                .query_row(
                    &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"),
                    params![to_i64(id)],
                    incident_from_row,
                )
                .optional()?;
            let Some(incident) = incident else {
                return Ok(None);
            };
            let mut statement = conn.prepare_cached(
                "SELECT id, incident, at_ms, status, severity, body, author, automatic
                 FROM incident_updates WHERE incident = ?1 ORDER BY id LIMIT ?2",
            )?;
            let updates = statement
                .query_map(
                    params![to_i64(id), to_i64(incidents::MAX_UPDATES_PER_INCIDENT)],
                    update_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some((incident, updates)))
        })
    }

    /// Open incidents, and those resolved at or after `resolved_since_ms`, newest first (at
    /// most [`incidents::MAX_LISTED`]).
    pub fn incidents(&self, resolved_since_ms: u64) -> Result<Vec<IncidentRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents
                 WHERE resolved_ms IS NULL OR resolved_ms >= ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = statement
                .query_map(
                    params![to_i64(resolved_since_ms), incidents::MAX_LISTED],
                    incident_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// A public update to an open incident, moving its status (to `resolved`: resolving it)
    /// or severity if asked.
    pub fn update_incident(
        &self,
        id: u64,
        change: &IncidentChange,
        actor: &str,
        now_ms: u64,
    ) -> Result<IncidentRecord, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let before = incident_in(&tx, id)?;
            if before.resolved_ms.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "resolution of incident",
                    key: id.to_string(),
                });
            }
            if update_count(&tx, id)? >= incidents::MAX_UPDATES_PER_INCIDENT {
                return Err(StoreError::Corrupt {
                    what: format!("incident {id}"),
                    reason: format!(
                        "it has {} updates, the most kept; resolve it or open another",
                        incidents::MAX_UPDATES_PER_INCIDENT
                    ),
                });
            }
            let status = change.status.unwrap_or(before.status);
            let severity = change.severity.unwrap_or(before.severity);
            let resolved = status == Status::Resolved;
            tx.execute(
                "UPDATE incidents SET status = ?2, severity = ?3, last_update_ms = ?4,
                   resolved_ms = CASE WHEN ?5 THEN CAST(?4 AS BIGINT) ELSE NULL END WHERE id = ?1",
                params![
                    to_i64(id),
                    status.as_str(),
                    severity.as_str(),
                    to_i64(now_ms),
                    resolved
                ],
            )?;
            insert_update(
                &tx,
                id,
                now_ms,
                status,
                severity,
                &change.message,
                actor,
                false,
            )?;
            let after = incident_in(&tx, id)?;
            let kind = if resolved {
                "incident_resolved"
            } else {
                "incident_updated"
            };
            record_incident_change(&tx, &after, kind, actor, now_ms, &change.message)?;
            tx.commit()?;
            Ok(after)
        })
    }

    /// Attaches (or replaces) an incident's post-incident review.
    pub fn review_incident(
        &self,
        id: u64,
        markdown: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<IncidentRecord, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            incident_in(&tx, id)?;
            tx.execute(
                "UPDATE incidents SET review = ?2, review_ms = ?3 WHERE id = ?1",
                params![to_i64(id), markdown, to_i64(now_ms)],
            )?;
            let incident = incident_in(&tx, id)?;
            record_incident_change(
                &tx,
                &incident,
                "incident_review",
                actor,
                now_ms,
                &format!("post-incident review attached ({} bytes)", markdown.len()),
            )?;
            tx.commit()?;
            Ok(incident)
        })
    }

    /// Keeps the update cadence at `now_ms`: reminds the on-call of updates due soon
    /// (`incident_update_due`) and publishes a holding update for each that is due. Returns
    /// how many incidents it acted on.
    pub fn incidents_cadence(&self, cadence: &Cadence, now_ms: u64) -> Result<usize, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let open: Vec<IncidentRecord> = {
                let mut statement = tx.prepare_cached(&format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE resolved_ms IS NULL
                     ORDER BY id LIMIT ?1"
                ))?;
                statement
                    .query_map(params![incidents::MAX_LISTED], incident_from_row)?
                    .collect::<Result<_, _>>()?
            };
            let mut acted = 0;
            for incident in open {
                let step = incidents::cadence_step(
                    cadence,
                    incident.severity,
                    incident.last_update_ms,
                    incident.reminded_ms,
                    now_ms,
                );
                match step {
                    None => continue,
                    Some(CadenceAction::Remind { due_ms }) => {
                        tx.execute(
                            "UPDATE incidents SET reminded_ms = ?2 WHERE id = ?1",
                            params![to_i64(incident.id), to_i64(now_ms)],
                        )?;
                        record_incident_change(
                            &tx,
                            &incident,
                            "incident_update_due",
                            "failsmall",
                            now_ms,
                            &format!(
                                "a public update is due by {} UTC; without one a holding update is published then",
                                incidents::hh_mm_utc(due_ms)
                            ),
                        )?;
                    }
                    Some(CadenceAction::Hold) => {
                        if update_count(&tx, incident.id)? >= incidents::MAX_UPDATES_PER_INCIDENT {
                            continue;
                        }
                        let text = incidents::holding_text(incident.status, incident.last_update_ms);
                        tx.execute(
                            "UPDATE incidents SET last_update_ms = ?2 WHERE id = ?1",
                            params![to_i64(incident.id), to_i64(now_ms)],
                        )?;
                        insert_update(
                            &tx,
                            incident.id,
                            now_ms,
                            incident.status,
                            incident.severity,
                            &text,
                            "failsmall",
                            true,
                        )?;
                        record_incident_change(
                            &tx,
                            &incident,
                            "incident_updated",
                            "failsmall",
                            now_ms,
                            &format!("holding update published: {text}"),
                        )?;
                    }
                }
                acted += 1;
            }
            tx.commit()?;
            Ok(acted)
        })
    }
}
