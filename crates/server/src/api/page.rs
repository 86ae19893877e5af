//! Pages of the lists the API answers: `?limit=N` (1 to [`LIST_PAGE_MAX`], default the
//! most) and `?after=CURSOR` (the `next` of the page before); every list answer carries `next`,
//! `null` on its last page, so a client that follows it sees every row and none is dropped at
//! a boundary.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use failsmall_core::limits::LIST_PAGE_MAX;
use serde::Deserialize;

use crate::error::ApiError;

/// The lists that page this way (`GET`).
pub const PAGED_ROUTES: [&str; 6] = [
    "/v1/units",
    "/v1/units/{unit}/versions",
    "/v1/nodes",
    "/v1/rollouts",
    "/v1/tokens",
    "/v1/quarantine",
];

/// `limit` and `after`, for the OpenAPI document.
pub fn parameters() -> [serde_json::Value; 2] {
    [
        serde_json::json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": LIST_PAGE_MAX, "default": LIST_PAGE_MAX}, "description": "Rows in this page"}),
        serde_json::json!({"name": "after", "in": "query", "schema": {"type": "string"}, "description": "The `next` of the page before; the answer's `next` is null on the last page"}),
    ]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<u32>,
    after: Option<String>,
}

/// One page asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub after: Option<String>,
}

impl Page {
    /// From the query string; a limit out of range is a 400 naming the range.
    pub fn from_query(query: Result<Query<PageQuery>, QueryRejection>) -> Result<Self, ApiError> {
        let query = match query {
            Ok(Query(query)) => query,
            Err(e) => return Err(ApiError::bad_request(format!("query: {}", e.body_text()))),
        };
        let limit = query.limit.unwrap_or(LIST_PAGE_MAX);
        if limit == 0 || limit > LIST_PAGE_MAX {
            return Err(ApiError::bad_request(format!(
                "limit is {limit}; expected 1 to {LIST_PAGE_MAX}"
            )));
        }
        Ok(Self {
            limit,
            after: query.after.filter(|a| !a.is_empty()),
        })
    }

    /// Rows to fetch: one more than the page, to tell whether another follows.
    pub fn fetch(&self) -> u32 {
        self.limit.saturating_add(1)
    }

    /// The cursor as a number (lists ordered by id); a cursor that is not one is a 400.
    pub fn after_number(&self) -> Result<Option<u64>, ApiError> {
        self.after
            .as_deref()
            .map(|after| {
                after.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "after is {after:?}; expected the `next` of the page before"
                    ))
                })
            })
            .transpose()
    }

    /// Cuts `rows` (fetched with [`Page::fetch`]) to the page; the cursor of the next page,
    /// when there is one, is `key` of the page's last row.
    pub fn split<T>(
        &self,
        mut rows: Vec<T>,
        key: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        if rows.len() <= limit {
            return (rows, None);
        }
        rows.truncate(limit);
        let next = rows.last().map(key);
        (rows, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_paged_route_is_a_get_route_and_documented() {
        let routes = crate::api::route_table();
        let document = crate::api::openapi_document();
        for path in PAGED_ROUTES {
            assert!(
                routes
                    .iter()
                    .any(|r| r.path == path && r.method == axum::http::Method::GET),
                "{path}"
            );
            let parameters = &document["paths"][path]["get"]["parameters"];
            assert!(
                parameters.to_string().contains("\"after\""),
                "{path}: {parameters}"
            );
        }
    }

    #[test]
    fn a_page_names_the_next_only_when_rows_remain() {
        let page = Page {
            limit: 2,
            after: None,
        };
        assert_eq!(page.fetch(), 3);
        assert_eq!(
            page.split(vec![1, 2, 3], |n| n.to_string()),
            (vec![1, 2], Some("2".into()))
        );
        assert_eq!(
            page.split(vec![1, 2], |n| n.to_string()),
            (vec![1, 2], None)
        );
    }
}
