//! The public status page, without a token: `GET /status` (HTML), `/status.json` and
//! `/status/feed.atom` (every public update as an Atom entry).
//!
//! API boundary: this is the one view of incidents for people outside. It is built from
//! [`PublicIncident`] alone, which holds only what is public: titles, severities, statuses,
//! component names (unit names), public update texts, times and the post-incident review.
//! Never node ids, version hashes, tokens, actors, reasons or changelog text.
//!
//! Components are every unit, by name (at most [`MAX_COMPONENTS_SHOWN`]); a component with an
//! open incident shows the worst open severity's status (`major_outage` for sev1,
//! `partial_outage` for sev2, `degraded_performance` for sev3), else `operational`.

use std::collections::BTreeMap;

use super::changelog::xml_escape;
use super::incidents::resolved_since_ms;
use super::*;
use crate::incidents::Severity;

/// Most components the page shows.
pub const MAX_COMPONENTS_SHOWN: u32 = 500;
/// Most entries in the Atom feed.
pub const MAX_FEED_ENTRIES: usize = 200;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusParams {
    #[serde(default)]
    days: Option<u64>,
}

#[derive(Debug, Clone)]
struct PublicUpdate {
    at: String,
    at_ms: u64,
    id: u64,
    status: &'static str,
    message: String,
}

#[derive(Debug, Clone)]
struct PublicIncident {
    id: u64,
    title: String,
    severity: &'static str,
    status: &'static str,
    components: Vec<String>,
    opened: String,
    resolved: Option<String>,
    /// Newest first.
    updates: Vec<PublicUpdate>,
    review: Option<String>,
}

#[derive(Debug, Clone)]
struct PublicComponent {
    name: String,
    status: &'static str,
}

#[derive(Debug, Clone)]
struct PublicStatus {
    /// `operational`, or the worst open incident's component status.
    status: &'static str,
    updated: String,
    components: Vec<PublicComponent>,
    open: Vec<PublicIncident>,
    resolved: Vec<PublicIncident>,
    resolved_days: u64,
}

async fn load(state: &AppState, days: Option<u64>) -> Result<PublicStatus, ApiError> {
    let now = now_ms();
    let since = resolved_since_ms(days, now)?;
    let (units, incidents) = db(state, move |store| {
        let units = store.units(MAX_COMPONENTS_SHOWN)?;
        let mut incidents = Vec::new();
        for incident in store.incidents(since)? {
            if let Some(found) = store.incident(incident.id)? {
                incidents.push(found);
            }
        }
        Ok((units, incidents))
    })
    .await?;
    let mut worst: BTreeMap<String, Severity> = BTreeMap::new();
    let mut open = Vec::new();
    let mut resolved = Vec::new();
    for (incident, updates) in incidents {
        let public = PublicIncident {
            id: incident.id,
            title: incident.title.clone(),
            severity: incident.severity.as_str(),
            status: incident.status.as_str(),
            components: incident.components.clone(),
            opened: rfc3339_from_ms(incident.opened_ms),
            resolved: incident.resolved_ms.map(rfc3339_from_ms),
            updates: updates
                .iter()
                .rev()
                .map(|update| PublicUpdate {
                    at: rfc3339_from_ms(update.at_ms),
                    at_ms: update.at_ms,
                    id: update.id,
                    status: update.status.as_str(),
                    message: update.body.clone(),
                })
                .collect(),
            review: incident.review.clone(),
        };
        if incident.resolved_ms.is_none() {
            for component in &incident.components {
                let entry = worst.entry(component.clone()).or_insert(incident.severity);
                *entry = (*entry).min(incident.severity);
            }
            open.push(public);
        } else {
            resolved.push(public);
        }
    }
    let components = units
        .iter()
        .map(|unit| PublicComponent {
            name: unit.name.clone(),
            status: worst
                .get(&unit.name)
                .map_or("operational", |severity| severity.component_status()),
        })
        .collect();
    let overall = worst
        .values()
        .min()
        .map_or("operational", |severity| severity.component_status());
    Ok(PublicStatus {
        status: overall,
        updated: rfc3339_from_ms(now),
        components,
        open,
        resolved,
        resolved_days: days.unwrap_or(super::incidents::RESOLVED_DAYS_DEFAULT),
    })
}

/// `GET /status.json`.
pub(super) async fn json(
    State(state): State<AppState>,
    params: Result<Query<StatusParams>, QueryRejection>,
) -> Result<axum::Json<failsmall_wire::incidents::PublicStatus>, ApiError> {
    let params = query_param(params)?;
    let status = load(&state, params.days).await?;
    Ok(axum::Json(status.into()))
}

impl From<PublicIncident> for failsmall_wire::incidents::PublicIncident {
    fn from(incident: PublicIncident) -> Self {
        Self {
            id: incident.id,
            title: incident.title,
            severity: incident.severity.to_owned(),
            status: incident.status.to_owned(),
            components: incident.components,
            opened: incident.opened,
            resolved: incident.resolved,
            updates: incident
                .updates
                .into_iter()
                .map(|update| failsmall_wire::incidents::PublicUpdate {
                    at: update.at,
                    status: update.status.to_owned(),
                    message: update.message,
                })
                .collect(),
            review: incident.review,
        }
    }
}

impl From<PublicStatus> for failsmall_wire::incidents::PublicStatus {
    fn from(status: PublicStatus) -> Self {
        Self {
            status: status.status.to_owned(),
            updated: status.updated,
            components: status
                .components
                .into_iter()
                .map(|component| failsmall_wire::incidents::PublicComponent {
                    name: component.name,
                    status: component.status.to_owned(),
                })
                .collect(),
            open: status.open.into_iter().map(Into::into).collect(),
            resolved: status.resolved.into_iter().map(Into::into).collect(),
            resolved_days: status.resolved_days,
        }
    }
}

fn label(status: &str) -> String {
    let mut text = status.replace('_', " ");
    if let Some(first) = text.get(..1) {
        text = format!(
            "{}{}",
            first.to_uppercase(),
            text.get(1..).unwrap_or_default()
        );
    }
    text
}

fn incident_html(html: &mut String, incident: &PublicIncident) {
    html.push_str(&format!(
        "<article class=\"incident {}\"><h3>{} <span class=\"badge\">{}</span> <span class=\"badge\">{}</span></h3>\n<p class=\"meta\">Affects {} · opened {}{}</p>\n<ol class=\"updates\">\n",
        incident.severity,
        xml_escape(&incident.title),
        incident.severity,
        xml_escape(&label(incident.status)),
        xml_escape(&incident.components.join(", ")),
        incident.opened,
        incident
            .resolved
            .as_deref()
            .map(|at| format!(" · resolved {at}"))
            .unwrap_or_default(),
    ));
    for update in &incident.updates {
        html.push_str(&format!(
            "<li><strong>{}</strong> <time>{}</time><p>{}</p></li>\n",
            xml_escape(&label(update.status)),
            update.at,
            xml_escape(&update.message)
        ));
    }
    html.push_str("</ol>\n");
    if let Some(review) = &incident.review {
        html.push_str(&format!(
            "<details open><summary>Post-incident review</summary><pre class=\"review\">{}</pre></details>\n",
            xml_escape(review)
        ));
    }
    html.push_str("</article>\n");
}

/// `GET /status`: the page for people (HTML, no script).
pub(super) async fn page(
    State(state): State<AppState>,
    params: Result<Query<StatusParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query_param(params)?;
    let status = load(&state, params.days).await?;
    let mut html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Status</title>\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"alternate\" type=\"application/atom+xml\" href=\"/status/feed.atom\">\n\
         <style>body{{font:15px/1.5 system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}}\
         .badge{{font-size:.75rem;padding:.1rem .4rem;border-radius:.3rem;background:#eee}}\
         .operational{{color:#1a7f37}}.major_outage,.sev1{{color:#c0262d}}.partial_outage,.sev2{{color:#b54708}}\
         .degraded_performance,.sev3{{color:#8a6d00}}pre.review{{white-space:pre-wrap}}</style></head>\n\
         <body>\n<h1>Status</h1>\n<p class=\"overall {}\">{}</p>\n<p class=\"meta\">Updated {}</p>\n\
         <h2>Components</h2>\n<ul class=\"components\">\n",
        status.status,
        if status.status == "operational" {
            "All systems operational".to_owned()
        } else {
            label(status.status)
        },
        status.updated
    );
    for component in &status.components {
        html.push_str(&format!(
            "<li>{} <span class=\"{}\">{}</span></li>\n",
            xml_escape(&component.name),
            component.status,
            label(component.status)
        ));
    }
    html.push_str("</ul>\n<h2>Open incidents</h2>\n");
    if status.open.is_empty() {
        html.push_str("<p>No open incidents.</p>\n");
    }
    for incident in &status.open {
        incident_html(&mut html, incident);
    }
    html.push_str(&format!(
        "<h2>Resolved in the last {} days</h2>\n",
        status.resolved_days
    ));
    if status.resolved.is_empty() {
        html.push_str("<p>None.</p>\n");
    }
    for incident in &status.resolved {
        incident_html(&mut html, incident);
    }
    html.push_str("<p><a href=\"/status.json\">JSON</a> · <a href=\"/status/feed.atom\">Atom feed</a></p>\n</body></html>\n");
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response())
}

/// `GET /status/feed.atom`: each public update of the incidents shown, newest first.
pub(super) async fn feed(
    State(state): State<AppState>,
    params: Result<Query<StatusParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query_param(params)?;
    let status = load(&state, params.days).await?;
    let mut entries: Vec<(&PublicIncident, &PublicUpdate)> = status
        .open
        .iter()
        .chain(&status.resolved)
        .flat_map(|incident| {
            incident
                .updates
                .iter()
                .map(move |update| (incident, update))
        })
        .collect();
    entries.sort_by_key(|(_, update)| std::cmp::Reverse((update.at_ms, update.id)));
    entries.truncate(MAX_FEED_ENTRIES);
    let updated = entries
        .first()
        .map_or_else(|| status.updated.clone(), |(_, update)| update.at.clone());
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n\
         <title>Status</title>\n<id>urn:failsmall:status</id>\n<updated>{updated}</updated>\n\
         <link rel=\"alternate\" href=\"/status\"/>\n"
    );
    for (incident, update) in entries {
        xml.push_str(&format!(
            "<entry>\n<id>urn:failsmall:incident:{}:update:{}</id>\n<title>{} ({}): {}</title>\n\
             <updated>{}</updated>\n<author><name>Status</name></author>\n\
             <content type=\"text\">{}</content>\n</entry>\n",
            incident.id,
            update.id,
            xml_escape(&incident.title),
            incident.severity,
            xml_escape(&label(update.status)),
            update.at,
            xml_escape(&update.message)
        ));
    }
    xml.push_str("</feed>\n");
    Ok((
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
        xml,
    )
        .into_response())
}
