//! Middleware layers: authorization by route class, fallbacks.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::*;

/// Authorizes each request to a route by the route's access class and the caller's token
/// (route layer: it runs once the route is matched).
#[derive(Clone)]
pub(super) struct AuthorizeLayer {
    pub(super) state: AppState,
}

impl<S> tower_layer::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct Authorize<S> {
    inner: S,
    state: AppState,
}

impl<S> tower_service::Service<Request> for Authorize<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AuthorizeFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The service made ready is the one called, once the check has passed.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        AuthorizeFuture {
            step: AuthorizeStep::Checking {
                check: Box::pin(admit(self.state.clone(), request)),
                inner: Some(inner),
            },
        }
    }
}

type Check = Pin<Box<dyn Future<Output = Result<Request, Response>> + Send>>;

pin_project_lite::pin_project! {
    /// The check (boxed: it is done with before the route answers), then the route's answer,
    /// kept inline: what a parked long poll holds of this layer is the answer alone.
    pub(super) struct AuthorizeFuture<S: tower_service::Service<Request>> {
        #[pin]
        step: AuthorizeStep<S>,
    }
}

pin_project_lite::pin_project! {
    #[project = AuthorizeStepProj]
    enum AuthorizeStep<S: tower_service::Service<Request>> {
        Checking { check: Check, inner: Option<S> },
        Answering { #[pin] answer: S::Future },
    }
}

impl<S> Future for AuthorizeFuture<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut step = self.project().step;
        loop {
            match step.as_mut().project() {
                AuthorizeStepProj::Checking { check, inner } => {
                    let request = match std::task::ready!(check.as_mut().poll(cx)) {
                        Ok(request) => request,
                        Err(refused) => return Poll::Ready(Ok(refused)),
                    };
                    let Some(mut inner) = inner.take() else {
                        // Only the step above takes it, and it leaves this state at once.
                        let lost = ApiError::internal("authorization lost its route");
                        return Poll::Ready(Ok(lost.into_response()));
                    };
                    let answer = inner.call(request);
                    step.set(AuthorizeStep::Answering { answer });
                }
                AuthorizeStepProj::Answering { answer } => return answer.poll(cx),
            }
        }
    }
}

/// The request with its `Caller` when the caller may use the matched route, else the refusal.
async fn admit(state: AppState, mut request: Request) -> Result<Request, Response> {
    let method = if request.method() == Method::HEAD {
        Method::GET
    } else {
        request.method().clone()
    };
    let access = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| state.shared.access.get(&(method, path.as_str())).copied());
    let Some(access) = access else {
        state.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is not classified; access denied",
        )
        .into_response());
    };
    let caller = match authenticate(&state, access, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => {
            state.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
            return Err(error.into_response());
        }
    };
    // A route about one node admits an agent only for the node its token is bound to.
    if let Ok(params) = request.extract_parts::<RawPathParams>().await
        && let Some((_, node)) = params.iter().find(|(name, _)| *name == "node")
        && !caller.may_act_for(node)
    {
        state.shared.counters.denied.fetch_add(1, Ordering::Relaxed);
        let bound = caller.node.as_deref().unwrap_or("no node");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {} is bound to {bound}; it may not act for node {node}",
                caller.name
            ),
        )
        .with_detail(json!({"token_node": caller.node, "node": node}))
        .into_response());
    }
    request.extensions_mut().insert(caller);
    Ok(request)
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
