//! Tokens: create, list, revoke, rotate.

use super::*;
use failsmall_wire::requests::CreateTokenRequest;

pub(super) async fn list_tokens(
    State(state): State<AppState>,
    query: Result<Query<page::PageQuery>, QueryRejection>,
) -> Result<axum::Json<failsmall_wire::tokens::TokenList>, ApiError> {
    let page = page::Page::from_query(query)?;
    let (after, fetch) = (page.after_number()?, page.fetch());
    let rows = db(&state, move |store| Ok(store.tokens_after(after, fetch)?)).await?;
    let (tokens, next) = page.split(rows, |token| token.id.to_string());
    let tokens: Vec<failsmall_wire::tokens::Token> = tokens.into_iter().map(Into::into).collect();
    Ok(axum::Json(failsmall_wire::tokens::TokenList {
        tokens,
        next,
    }))
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<failsmall_wire::tokens::NewToken>), ApiError> {
    let request: CreateTokenRequest = json_body(body)?;
    if request.name.is_empty() || request.name.len() > 128 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_name",
            "token name must be 1 to 128 bytes",
        ));
    }
    let node = match (Role::from(request.role), request.node.as_deref()) {
        (Role::Agent, Some(node)) => Some(node_id(node)?.to_string()),
        (Role::Agent, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "node_required",
                "an agent token acts for one node; give its id as \"node\"",
            ));
        }
        (role, Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "node_not_allowed",
                format!("only agent tokens are bound to a node, not {role} tokens"),
            ));
        }
        (_, None) => None,
    };
    let (owner, expires_ms) = trust::owner_and_expiry(
        &caller,
        Role::from(request.role),
        request.owner.as_deref(),
        request.expires_in.as_deref(),
        now_ms(),
    )?;
    let token =
        new_token().map_err(|e| ApiError::internal(format!("no randomness for a token: {e}")))?;
    let hash = token_sha256(&token);
    let record = db(&state, move |store| {
        let bound = node
            .as_deref()
            .map(|node| format!(" for node {node}"))
            .unwrap_or_default();
        let reason = format!(
            "token {:?} with role {}{bound}{}",
            request.name,
            Role::from(request.role),
            trust::owner_and_expiry_text(owner.as_deref(), expires_ms)
        );
        let change = NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "token_created",
            unit: None,
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        let new = crate::store::NewToken {
            name: &request.name,
            role: Role::from(request.role),
            node: node.as_deref(),
            owner: owner.as_deref(),
            expires_ms,
            token_sha256: &hash,
        };
        Ok(store.create_token_with(&new, &change)?)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(failsmall_wire::tokens::NewToken {
            token,
            record: record.into(),
            replaces: None,
        }),
    ))
}

pub(super) async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<axum::Json<failsmall_wire::tokens::Token>, ApiError> {
    let id = path_param(id)?;
    let record = db(&state, move |store| {
        let reason = format!("token {id}");
        let change = NewChange {
            at_ms: now_ms(),
            actor: &caller.name,
            kind: "token_revoked",
            unit: None,
            version: None,
            reason: &reason,
            concerns: None,
            rollout: None,
            stage: None,
        };
        Ok(store.revoke_token(id, &change)?)
    })
    .await?;
    state.shared.tokens.clear();
    Ok(axum::Json(failsmall_wire::tokens::Token::from(record)))
}
