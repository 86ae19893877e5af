//! Nodes: register, list, remove, liveness.

use super::*;
use crate::batcher::SubmitError;
use failsmall_wire::requests::RegisterNodeRequest;

pub(super) fn node_id(id: &str) -> Result<NodeId, ApiError> {
    NodeId::new(id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_node_id", e.to_string()))
}

pub(super) async fn register_node(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    node: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<failsmall_wire::Node>, ApiError> {
    let id = node_id(&path_param(node)?)?;
    let request: RegisterNodeRequest = json_body(body)?;
    if request.labels.len() > MAX_LABELS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_labels",
            format!(
                "node {id} has {} labels; the limit is {MAX_LABELS}",
                request.labels.len()
            ),
        ));
    }
    if let Some((key, value)) = request
        .labels
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_label",
            format!(
                "label {key:?}={value:?}: keys must be 1 to {MAX_LABEL_BYTES} bytes, values at most {MAX_LABEL_BYTES}"
            ),
        ));
    }
    let lookup = id.clone();
    let known = db(&state, move |store| Ok(store.node(lookup.as_str())?)).await?;
    if known.is_some_and(|node| node.labels == request.labels) {
        // Nothing changed: a re-registration only says the node is alive.
        let node = db(&state, move |store| {
            Ok(store.heartbeat(id.as_str(), now_ms())?)
        })
        .await?;
        return Ok(axum::Json(node.into()));
    }
    let at_ms = now_ms();
    let labels_text = serde_json::to_string(&request.labels).unwrap_or_default();
    let change = ChangeRow {
        at_ms,
        actor: caller.name.clone(),
        kind: "node_registered".to_owned(),
        unit: None,
        version: None,
        reason: format!("node {id} labels {labels_text}"),
        concerns: Some(Concerns::Node(request.labels.clone())),
        rollout: None,
        stage: None,
    };
    let event = Event::NodeRegistered {
        node: id.clone(),
        labels: request.labels.clone(),
    };
    let cause = Cause::Node {
        id: id.clone(),
        labels: request.labels,
    };
    // Committed with the registrations (and reports) other requests bring meanwhile, in one
    // step: a fleet that registers at once costs a few commits, not one each.
    state
        .shared
        .reports
        .submit(vec![(event, Some(change))], cause)
        .await
        .map_err(|error| match error {
            SubmitError::Step(error) => step_error(error),
            busy @ (SubmitError::Busy | SubmitError::Closed) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                busy.to_string(),
            ),
        })?;
    let node = db(&state, move |store| {
        store
            .node(id.as_str())?
            .ok_or_else(|| ApiError::not_found(format!("node {id} not found")))
    })
    .await?;
    Ok(axum::Json(node.into()))
}

pub(super) async fn heartbeat(
    State(state): State<AppState>,
    node: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::Node>, ApiError> {
    let id = node_id(&path_param(node)?)?;
    let node = db(&state, move |store| {
        Ok(store.heartbeat(id.as_str(), now_ms())?)
    })
    .await?;
    Ok(axum::Json(node.into()))
}

/// The nodes, each with when its agent was last heard from (marks not yet written included),
/// and the threshold after which a node is down.
pub(super) async fn list_nodes(
    State(state): State<AppState>,
    query: Result<Query<page::PageQuery>, QueryRejection>,
) -> Result<axum::Json<failsmall_wire::NodeList>, ApiError> {
    let page = page::Page::from_query(query)?;
    let (after, limit) = (page.after.clone(), page.limit);
    // A page ends early rather than show a node with some of its versions (see nodes_page).
    let (mut nodes, more) = db(&state, move |store| {
        Ok(store.nodes_page(after.as_deref(), limit)?)
    })
    .await?;
    let next = more
        .then(|| nodes.last().map(|node| node.id.clone()))
        .flatten();
    for node in &mut nodes {
        if let Some(seen_ms) = state.shared.liveness.pending(&node.id) {
            node.last_seen_ms = node.last_seen_ms.max(seen_ms);
        }
    }
    Ok(axum::Json(failsmall_wire::NodeList {
        nodes: nodes.into_iter().map(Into::into).collect(),
        next,
        now_ms: now_ms(),
        down_after_ms: state.shared.node_down_after_ms,
    }))
}
