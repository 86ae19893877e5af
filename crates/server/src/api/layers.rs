//! Middleware layers: authorization by route class, response counters, fallbacks.

use super::*;

pub(super) async fn authorize(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = if request.method() == Method::HEAD {
        Method::GET
    } else {
        request.method().clone()
    };
    let access =
        matched.and_then(|path| state.shared.access.get(&(method, path.as_str())).copied());
    let Some(access) = access else {
        state.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is not classified; access denied",
        )
        .into_response();
    };
    let caller = match authenticate(&state, access, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => {
            state.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
            return error.into_response();
        }
    };
    // A route about one node admits an agent only for the node its token is bound to.
    if let Ok(params) = request.extract_parts::<RawPathParams>().await
        && let Some((_, node)) = params.iter().find(|(name, _)| *name == "node")
        && !caller.may_act_for(node)
    {
        state.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
        let bound = caller.node.as_deref().unwrap_or("no node");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {} is bound to {bound}; it may not act for node {node}",
                caller.name
            ),
        )
        .with_detail(json!({"token_node": caller.node, "node": node}))
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

pub(super) async fn authenticate(
    state: &AppState,
    access: Access,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let anonymous = Caller {
        name: "anonymous".to_owned(),
        token: "anonymous".to_owned(),
        role: None,
        node: None,
    };
    if access == Access::Public {
        return Ok(anonymous);
    }
    let unauthorized = |message: &str| {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            .with_detail(json!({"expected": "Authorization: Bearer <token>"}))
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("this route needs a bearer token"));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .ok_or_else(|| unauthorized("the Authorization header is not 'Bearer <token>'"))?;
    let hash = token_sha256(token);
    let record = match state.shared.tokens.get(&hash) {
        Some(record) => Some(record),
        None => {
            let lookup = hash.clone();
            let record = db(state, move |store| Ok(store.active_token(&lookup)?)).await?;
            if let Some(record) = &record {
                state.shared.tokens.keep(hash, record.clone());
            }
            record
        }
    };
    let Some(record) = record else {
        return Err(unauthorized("the token is unknown or revoked"));
    };
    trust::refuse_expired(&record, now_ms())?;
    if !access.admits(Some(record.role)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {} may not use this route", record.role),
        )
        .with_detail(json!({"role": record.role, "access": access})));
    }
    Ok(Caller {
        name: record.owner.clone().unwrap_or_else(|| record.name.clone()),
        token: record.name,
        role: Some(record.role),
        node: record.node,
    })
}

pub(super) async fn count_responses(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let class = usize::from(response.status().as_u16() / 100).saturating_sub(1);
    if let Some(counter) = state.shared.counters.responses_by_class.get(class) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    response
}

pub(super) async fn unknown_route() -> ApiError {
    ApiError::not_found("no such route; see /v1/openapi.json")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
