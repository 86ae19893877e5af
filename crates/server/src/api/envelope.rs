//! The envelope: the one layer every request passes through on its way in and out (the
//! router's outermost). It runs the request inside its `request` span (see [`crate::trace`])
//! and echoes its id, logs the answer (5xx at error level, the rest at debug), counts answers
//! by class for `/metrics`, and marks a changelog read whose chain is broken.
//!
//! One layer with a future of a named type (kept inline in the router's own box), not one
//! `from_fn` middleware per concern, each with a boxed future and a clone of the service: a
//! parked long poll keeps its whole chain of futures for up to half a document's lifetime, so
//! each of those is memory held per connected agent (ARCHITECTURE.md, "Memory per
//! connection").

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use super::AppState;
use super::trust::CHANGELOG_INTEGRITY_HEADER;
use crate::trace::{REQUEST_ID_HEADER, request_id};

/// Wraps the router's services in an [`Envelope`].
#[derive(Clone)]
pub(super) struct EnvelopeLayer {
    pub(super) state: AppState,
}

impl<S> tower_layer::Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Envelope {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct Envelope<S> {
    inner: S,
    state: AppState,
}

impl<S> tower_service::Service<Request> for Envelope<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EnvelopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let id = request_id(request.headers().get(REQUEST_ID_HEADER));
        let is_changelog = request.uri().path().starts_with("/v1/changelog");
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            method = %request.method(),
            path = %request.uri().path(),
        );
        // The inner future owns all it needs (the router's futures do not borrow the
        // service), so the service is called here, once ready, and not cloned per request.
        let answering = self.inner.call(request).instrument(span);
        EnvelopeFuture {
            answering,
            state: self.state.clone(),
            started: Instant::now(),
            is_changelog,
            id,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, inside the request's span, then enveloped.
    pub(super) struct EnvelopeFuture<F> {
        #[pin]
        answering: Instrumented<F>,
        state: AppState,
        started: Instant,
        is_changelog: bool,
        id: String,
    }
}

impl<F> Future for EnvelopeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Ok(mut response) = std::task::ready!(this.answering.as_mut().poll(cx));
        let status = response.status().as_u16();
        let class = usize::from(status / 100).saturating_sub(1);
        if let Some(counter) = this.state.shared.counters.responses_by_class.get(class) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if *this.is_changelog
            && let Some(broken) = this.state.shared.store.changelog_break()
            && let Ok(value) = HeaderValue::from_str(&format!("broken at row {}", broken.id))
        {
            response
                .headers_mut()
                .insert(CHANGELOG_INTEGRITY_HEADER, value);
        }
        let elapsed_ms = u64::try_from(this.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        this.answering.span().in_scope(|| {
            if status >= 500 {
                tracing::error!(status, elapsed_ms, "answered");
            } else {
                tracing::debug!(status, elapsed_ms, "answered");
            }
        });
        if let Ok(value) = HeaderValue::from_str(this.id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        Poll::Ready(Ok(response))
    }
}
