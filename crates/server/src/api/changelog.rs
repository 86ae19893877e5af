//! The changelog: list, follow, verify.

use super::*;

/// Most `label` filters one changelog request may carry.
pub const MAX_LABEL_FILTERS: usize = 16;

/// The changelog's query parameters: `unit`, `rollout`, `since_ms`, `limit`, `cursor`, `order` at most once each,
/// `label=KEY=VALUE` repeatable (entries must concern nodes with every such label).
#[derive(Debug, Default)]
pub(super) struct ChangelogParams {
    unit: Option<String>,
    team: Option<String>,
    rollout: Option<u64>,
    since_ms: Option<u64>,
    limit: Option<u32>,
    cursor: Option<u64>,
    /// `newest` lists newest first (and `cursor` then reads on below it).
    newest_first: Option<bool>,
    labels: Vec<(String, String)>,
}

pub(super) fn once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), ApiError> {
    if slot.replace(value).is_some() {
        return Err(ApiError::bad_request(format!(
            "query: {name} is given more than once; expected at most one"
        )));
    }
    Ok(())
}

pub(super) fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "query: {name}={value:?} is not a non-negative integer"
        ))
    })
}

/// `KEY=VALUE`, with the key and value limits of node labels.
pub(super) fn label_filter(value: &str) -> Result<(String, String), ApiError> {
    let bad = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_label",
            format!("query: label={value:?}: {why}"),
        )
        .with_detail(json!({"expected": "label=KEY=VALUE, e.g. label=region=eu-west-1"}))
    };
    let Some((key, wanted)) = value.split_once('=') else {
        return Err(bad("expected KEY=VALUE".to_owned()));
    };
    if key.is_empty() || key.len() > MAX_LABEL_BYTES || wanted.len() > MAX_LABEL_BYTES {
        return Err(bad(format!(
            "keys must be 1 to {MAX_LABEL_BYTES} bytes, values at most {MAX_LABEL_BYTES}"
        )));
    }
    Ok((key.to_owned(), wanted.to_owned()))
}

/// The most digits of a rollout id in a filter: every such number is a u64, so the document
/// can state the bound as a pattern (`^r?[0-9]{1,19}$`).
pub(super) const ROLLOUT_ID_DIGITS_MAX: usize = 19;

impl ChangelogParams {
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut params = Self::default();
        for (name, value) in pairs {
            match name.as_str() {
                "unit" => once(&mut params.unit, "unit", value)?,
                "team" => {
                    text_field("team", &value)?;
                    once(&mut params.team, "team", value)?;
                }
                "rollout" => {
                    let digits = value.strip_prefix('r').unwrap_or(&value);
                    let id = (digits.len() <= ROLLOUT_ID_DIGITS_MAX
                        && !digits.is_empty()
                        && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| digits.parse().ok())
                        .flatten()
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "query: rollout={value:?} is not a rollout id; expected e.g. r3 or 3 (at most {ROLLOUT_ID_DIGITS_MAX} digits)"
                            ))
                        })?;
                    once(&mut params.rollout, "rollout", id)?;
                }
                "since_ms" => once(&mut params.since_ms, "since_ms", number(&name, &value)?)?,
                "limit" => once(&mut params.limit, "limit", number(&name, &value)?)?,
                "cursor" => once(&mut params.cursor, "cursor", number(&name, &value)?)?,
                "order" => {
                    let newest_first = match value.as_str() {
                        "oldest" => false,
                        "newest" => true,
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "query: order={value:?}; expected oldest or newest"
                            )));
                        }
                    };
                    once(&mut params.newest_first, "order", newest_first)?;
                }
                "label" => {
                    if params.labels.len() >= MAX_LABEL_FILTERS {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_label",
                            format!("query: more than {MAX_LABEL_FILTERS} label filters"),
                        ));
                    }
                    params.labels.push(label_filter(&value)?);
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "query: unknown parameter {name:?}; expected unit, team, rollout, since_ms, limit, cursor, order or label"
                    )));
                }
            }
        }
        Ok(params)
    }

    /// The store's query; `newest_first` is the route's order when `order` is not given.
    fn into_query(self, newest_first: bool) -> Result<ChangelogQuery, ApiError> {
        let newest_first = self.newest_first.unwrap_or(newest_first);
        let unit = self
            .unit
            .as_deref()
            .map(unit_name)
            .transpose()?
            .map(String::from);
        let limit = self.limit.unwrap_or(CHANGELOG_PAGE_DEFAULT);
        if limit == 0 || limit > MAX_LIST_ROWS {
            return Err(ApiError::bad_request(format!(
                "limit is {limit}; expected 1 to {MAX_LIST_ROWS}"
            )));
        }
        Ok(ChangelogQuery {
            unit,
            team: self.team,
            rollout: self.rollout,
            labels: self.labels,
            since_ms: self.since_ms,
            after_id: self.cursor.filter(|_| !newest_first),
            before_id: self.cursor.filter(|_| newest_first),
            limit,
            newest_first,
        })
    }
}

pub(super) fn changelog_query(
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
    newest_first: bool,
) -> Result<ChangelogQuery, ApiError> {
    ChangelogParams::parse(query_param(params)?)?.into_query(newest_first)
}

pub(super) async fn changelog(
    State(state): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<axum::Json<failsmall_wire::ChangelogPage>, ApiError> {
    let query = changelog_query(params, false)?;
    let (page, teams) = db(&state, move |store| {
        let page = store.changelog_page(&query)?;
        let units = page
            .entries
            .iter()
            .filter_map(|entry| entry.unit.clone())
            .collect();
        Ok((page, store.unit_teams(&units)?))
    })
    .await?;
    // Each entry with its unit's team (the unit's owner), when the unit still exists.
    Ok(axum::Json(convert::changelog_page(page, &teams)?))
}

pub(super) fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(super) async fn changelog_feed(
    State(state): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = changelog_query(params, true)?;
    let entries = db(&state, move |store| Ok(store.changelog(&query)?)).await?;
    let updated = rfc3339_from_ms(entries.first().map_or(0, |e| e.at_ms));
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n\
         <title>failsmall changelog</title>\n<id>urn:failsmall:changelog</id>\n<updated>{updated}</updated>\n"
    );
    for entry in &entries {
        let title = format!(
            "{} {}{}",
            entry.kind,
            entry.unit.as_deref().unwrap_or(""),
            entry
                .version
                .as_deref()
                .map(|v| format!("@{}", v.get(..12).unwrap_or(v)))
                .unwrap_or_default()
        );
        xml.push_str(&format!(
            "<entry>\n<id>urn:failsmall:change:{}</id>\n<title>{}</title>\n<updated>{}</updated>\n\
             <author><name>{}</name></author>\n<content type=\"text\">{}</content>\n</entry>\n",
            entry.id,
            xml_escape(title.trim()),
            rfc3339_from_ms(entry.at_ms),
            xml_escape(&entry.actor),
            xml_escape(&entry.reason)
        ));
    }
    xml.push_str("</feed>\n");
    Ok((
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
        xml,
    )
        .into_response())
}
