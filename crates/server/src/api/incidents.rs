//! Incidents: list and show (viewers), open, update, resolve and attach a review (deployers,
//! admins). Each change is one transaction with its changelog row (`incident_opened`,
//! `incident_updated`, `incident_resolved`, `incident_review`, the caller as its actor).
//!
//! Wire shapes (times RFC 3339; severities `sev1`..`sev3`; statuses `investigating`,
//! `identified`, `monitoring`, `resolved`):
//!
//! ```json
//! POST /v1/incidents              {"title": "...", "severity": "sev2",
//!                                  "components": ["bot-features"], "message": "..."}
//! POST /v1/incidents/{id}/updates {"message": "...", "status": "identified", "severity": "sev1"}
//! POST /v1/incidents/{id}/resolve {"message": "..."}
//! PUT  /v1/incidents/{id}/review  {"markdown": "# What happened\n..."}
//! ```

use crate::incidents::{
    self, Cadence, MAX_COMPONENT_BYTES, MAX_COMPONENTS, MAX_REVIEW_BYTES, MAX_TITLE_BYTES,
    MAX_UPDATE_BYTES, Severity, Status,
};
use crate::store::{IncidentChange, IncidentRecord, IncidentUpdate, NewIncident};

use super::*;
use failsmall_wire::requests::{
    OpenIncidentRequest as OpenRequest, ResolveIncidentRequest as ResolveRequest,
    ReviewIncidentRequest as ReviewRequest, UpdateIncidentRequest as UpdateRequest,
};

/// Resolved incidents listed by default, and at most, in days.
pub const RESOLVED_DAYS_DEFAULT: u64 = 14;
pub const RESOLVED_DAYS_MAX: u64 = 90;
const DAY_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    #[serde(default)]
    days: Option<u64>,
}

fn unprocessable(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
}

fn text_field(field: &str, value: &str, max: usize, required: bool) -> Result<(), ApiError> {
    if required && value.trim().is_empty() {
        return Err(unprocessable(format!(
            "{field} is empty; expected some text"
        )));
    }
    if value.len() > max {
        return Err(unprocessable(format!(
            "{field} is {} bytes; expected at most {max}",
            value.len()
        )));
    }
    Ok(())
}

fn severity_field(value: &str) -> Result<Severity, ApiError> {
    Severity::parse(value).ok_or_else(|| {
        unprocessable(format!(
            "severity {value:?} is unknown; expected sev1, sev2 or sev3"
        ))
    })
}

fn status_field(value: &str) -> Result<Status, ApiError> {
    Status::parse(value).ok_or_else(|| {
        unprocessable(format!(
            "status {value:?} is unknown; expected investigating, identified, monitoring or resolved"
        ))
    })
}

/// The days of resolved incidents to list (`?days=`), bounded.
pub(super) fn resolved_since_ms(days: Option<u64>, now: u64) -> Result<u64, ApiError> {
    let days = days.unwrap_or(RESOLVED_DAYS_DEFAULT);
    if days > RESOLVED_DAYS_MAX {
        return Err(ApiError::bad_request(format!(
            "query: days is {days}; expected at most {RESOLVED_DAYS_MAX}"
        )));
    }
    Ok(now.saturating_sub(days.saturating_mul(DAY_MS)))
}

fn update_json(update: &IncidentUpdate) -> failsmall_wire::incidents::IncidentUpdate {
    failsmall_wire::incidents::IncidentUpdate {
        at: rfc3339_from_ms(update.at_ms),
        status: update.status.as_str().to_owned(),
        severity: update.severity.as_str().to_owned(),
        message: update.body.clone(),
        author: update.author.clone(),
        automatic: update.automatic,
    }
}

/// An incident for operators (everything, internal fields included).
fn incident_json(
    incident: &IncidentRecord,
    cadence: &Cadence,
) -> failsmall_wire::incidents::Incident {
    let next_update_due = incident.resolved_ms.is_none().then(|| {
        rfc3339_from_ms(
            incident
                .last_update_ms
                .saturating_add(cadence.every_ms(incident.severity)),
        )
    });
    failsmall_wire::incidents::Incident {
        id: incident.id,
        title: incident.title.clone(),
        severity: incident.severity.as_str().to_owned(),
        status: incident.status.as_str().to_owned(),
        components: incident.components.clone(),
        labels: incident.labels.clone(),
        unit: incident.unit.clone(),
        rollout: incident.rollout,
        cause: incident.cause.clone(),
        opened_by: incident.opened_by.clone(),
        opened: rfc3339_from_ms(incident.opened_ms),
        resolved: incident.resolved_ms.map(rfc3339_from_ms),
        last_update: rfc3339_from_ms(incident.last_update_ms),
        next_update_due,
        review: incident.review.clone(),
        review_at: incident.review_ms.map(rfc3339_from_ms),
    }
}

/// `GET /v1/incidents`: open incidents and those resolved in the last `days` (14).
pub(super) async fn list_incidents(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<axum::Json<failsmall_wire::incidents::IncidentList>, ApiError> {
    let params = query_param(params)?;
    let since = resolved_since_ms(params.days, now_ms())?;
    let rows = db(&state, move |store| Ok(store.incidents(since)?)).await?;
    let cadence = state.cadence();
    let incidents = rows.iter().map(|i| incident_json(i, &cadence)).collect();
    Ok(axum::Json(failsmall_wire::incidents::IncidentList {
        incidents,
    }))
}

/// `GET /v1/incidents/{id}`: the incident, its public updates, and its timeline: the
/// changelog entries of its rollout from the rollout's start, else of its unit from the
/// incident's start (at most [`incidents::MAX_TIMELINE_ENTRIES`]).
pub(super) async fn show_incident(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::incidents::IncidentDetail>, ApiError> {
    let id = path_param(id)?;
    let (incident, updates, timeline) = db(&state, move |store| {
        let Some((incident, updates)) = store.incident(id)? else {
            return Err(ApiError::not_found(format!("incident {id} not found")));
        };
        let timeline = if incident.rollout.is_some() || incident.unit.is_some() {
            let query = ChangelogQuery {
                unit: if incident.rollout.is_some() {
                    None
                } else {
                    incident.unit.clone()
                },
                rollout: incident.rollout,
                // A rollout's whole story (it is bounded); a unit's from the incident's start.
                since_ms: incident.rollout.is_none().then_some(incident.opened_ms),
                limit: incidents::MAX_TIMELINE_ENTRIES,
                ..ChangelogQuery::default()
            };
            store.changelog(&query)?
        } else {
            Vec::new()
        };
        Ok((incident, updates, timeline))
    })
    .await?;
    let timeline = timeline
        .into_iter()
        .map(|entry| failsmall_wire::incidents::TimelineEntry {
            id: entry.id,
            at: rfc3339_from_ms(entry.at_ms),
            kind: entry.kind,
            actor: entry.actor,
            unit: entry.unit,
            version: entry.version,
            rollout: entry.rollout,
            stage: entry.stage,
            reason: entry.reason,
        })
        .collect();
    Ok(axum::Json(failsmall_wire::incidents::IncidentDetail {
        incident: incident_json(&incident, &state.cadence()),
        updates: updates.iter().map(update_json).collect(),
        timeline,
    }))
}

/// `POST /v1/incidents`: open one by hand.
pub(super) async fn open_incident(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::incidents::Incident>), ApiError> {
    let request: OpenRequest = json_body(body)?;
    text_field("title", &request.title, MAX_TITLE_BYTES, true)?;
    text_field("message", &request.message, MAX_UPDATE_BYTES, false)?;
    let severity = severity_field(&request.severity)?;
    if request.components.len() > MAX_COMPONENTS {
        return Err(unprocessable(format!(
            "components names {}; expected at most {MAX_COMPONENTS}",
            request.components.len()
        )));
    }
    for component in &request.components {
        text_field("components[]", component, MAX_COMPONENT_BYTES, true)?;
    }
    let new = NewIncident {
        title: request.title.trim().to_owned(),
        severity,
        components: request.components,
        message: request.message,
    };
    let actor = caller.name.clone();
    let incident = db(&state, move |store| {
        Ok(store.open_incident(&new, &actor, now_ms())?)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(incident_json(&incident, &state.cadence())),
    ))
}

async fn change_incident(
    state: &AppState,
    caller: &Caller,
    id: u64,
    change: IncidentChange,
) -> Result<axum::Json<failsmall_wire::incidents::Incident>, ApiError> {
    let actor = caller.name.clone();
    let incident = db(state, move |store| {
        let Some((incident, updates)) = store.incident(id)? else {
            return Err(ApiError::not_found(format!("incident {id} not found")));
        };
        if incident.resolved_ms.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "resolved",
                format!("incident {id} is resolved; open a new one, or attach its review"),
            ));
        }
        if u64::try_from(updates.len()).unwrap_or(u64::MAX) >= incidents::MAX_UPDATES_PER_INCIDENT {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused",
                format!(
                    "incident {id} has {} updates, the most kept; resolve it",
                    incidents::MAX_UPDATES_PER_INCIDENT
                ),
            ));
        }
        Ok(store.update_incident(id, &change, &actor, now_ms())?)
    })
    .await?;
    Ok(axum::Json(incident_json(&incident, &state.cadence())))
}

/// `POST /v1/incidents/{id}/updates`: a public update, optionally moving status or severity.
pub(super) async fn update_incident(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::incidents::Incident>, ApiError> {
    let id = path_param(id)?;
    let request: UpdateRequest = json_body(body)?;
    text_field("message", &request.message, MAX_UPDATE_BYTES, true)?;
    let change = IncidentChange {
        status: request.status.as_deref().map(status_field).transpose()?,
        severity: request
            .severity
            .as_deref()
            .map(severity_field)
            .transpose()?,
        message: request.message,
    };
    change_incident(&state, &caller, id, change).await
}

/// `POST /v1/incidents/{id}/resolve`.
pub(super) async fn resolve_incident(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::incidents::Incident>, ApiError> {
    let id = path_param(id)?;
    let request: ResolveRequest = match body {
        Ok(bytes) if bytes.is_empty() => ResolveRequest::default(),
        body => json_body(body)?,
    };
    text_field("message", &request.message, MAX_UPDATE_BYTES, false)?;
    let message = if request.message.trim().is_empty() {
        "This incident has been resolved.".to_owned()
    } else {
        request.message
    };
    let change = IncidentChange {
        status: Some(Status::Resolved),
        severity: None,
        message,
    };
    change_incident(&state, &caller, id, change).await
}

/// `PUT /v1/incidents/{id}/review`: attach (or replace) the post-incident review.
pub(super) async fn review_incident(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::incidents::Incident>, ApiError> {
    let id = path_param(id)?;
    let request: ReviewRequest = json_body(body)?;
    text_field("markdown", &request.markdown, MAX_REVIEW_BYTES, true)?;
    let actor = caller.name.clone();
    let incident = db(&state, move |store| {
        Ok(store.review_incident(id, &request.markdown, &actor, now_ms())?)
    })
    .await?;
    Ok(axum::Json(incident_json(&incident, &state.cadence())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented "some text" pattern and the server's check agree on every character a
    /// one-character text may be (schemathesis once sent `"\u0085"`: schema-valid, refused).
    #[test]
    fn the_documented_some_text_pattern_is_the_servers_check() {
        let document = crate::api::openapi::openapi_document();
        for (schema, field) in [
            ("UpdateIncidentRequest", "message"),
            ("OpenIncidentRequest", "title"),
            ("ReviewIncidentRequest", "markdown"),
        ] {
            let property = &document["components"]["schemas"][schema]["properties"][field];
            let validator = jsonschema::validator_for(property).unwrap();
            let chars = (0u32..0x3100)
                .chain([0xfeff, 0x1_f600])
                .filter_map(char::from_u32);
            for c in chars {
                let text = c.to_string();
                let documented = validator.is_valid(&serde_json::Value::String(text.clone()));
                let accepted = text_field(field, &text, 4096, true).is_ok();
                assert_eq!(
                    documented,
                    accepted,
                    "{schema}.{field}: U+{:04X}",
                    u32::from(c)
                );
            }
        }
    }
}
