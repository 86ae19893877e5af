//! A small webhook receiver on 127.0.0.1 for `failsmall demo`: it records what the control
//! plane's notifications deliver (the event, the delivery id, the signature header and the
//! body), so the demo can show, next to the status page, what a chat channel or an on-call
//! tool would have received. It answers every `POST` 200 and keeps at most
//! [`RECEIVED_MAX`] notifications (later ones are counted, not kept).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// Most notifications kept.
pub const RECEIVED_MAX: usize = 64;
/// Largest body accepted, in bytes (the control plane's payloads are at most 64 KiB).
pub const BODY_MAX_BYTES: usize = 64 * 1024;

/// The header naming the event, the delivery id and the signature (as the control plane sends
/// them).
const EVENT_HEADER: &str = "x-failsmall-event";
const DELIVERY_HEADER: &str = "x-failsmall-delivery";
const SIGNATURE_HEADER: &str = "x-failsmall-signature";

/// One notification received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The path it was posted to (`/generic`, `/slack`, ...), which names the subscription.
    pub path: String,
    pub event: String,
    pub delivery: String,
    pub signature: Option<String>,
    pub body: String,
}

/// What the receiver got so far; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    inner: Arc<Mutex<InboxInner>>,
}

#[derive(Debug, Default)]
struct InboxInner {
    received: Vec<Received>,
    dropped: u64,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxInner> {
        // A poisoned lock only means a handler panicked mid-push; the list is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The notifications kept, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Notifications received beyond [`RECEIVED_MAX`] (not kept).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    fn push(&self, received: Received) {
        let mut inner = self.lock();
        if inner.received.len() < RECEIVED_MAX {
            inner.received.push(received);
        } else {
            inner.dropped = inner.dropped.saturating_add(1);
        }
    }
}

async fn receive(
    State(inbox): State<Inbox>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    inbox.push(Received {
        path: format!("/{path}"),
        event: header(EVENT_HEADER).unwrap_or_default(),
        delivery: header(DELIVERY_HEADER).unwrap_or_default(),
        signature: header(SIGNATURE_HEADER),
        body,
    });
    StatusCode::OK
}

/// Serves on `listener` until `shutdown` completes, recording into `inbox`.
pub async fn run(
    listener: tokio::net::TcpListener,
    inbox: Inbox,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/{*path}", post(receive))
        .layer(DefaultBodyLimit::max(BODY_MAX_BYTES))
        .with_state(inbox);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_records_what_is_posted_with_its_headers_and_keeps_a_bounded_list() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/generic", listener.local_addr().unwrap());
        let inbox = Inbox::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, inbox.clone(), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        for n in 0..=RECEIVED_MAX {
            let answer = client
                .post(&url)
                .header(EVENT_HEADER, "incident_opened")
                .header(DELIVERY_HEADER, format!("failsmall-{n}-1"))
                .header(SIGNATURE_HEADER, "sha256=00")
                .body(format!("{{\"n\": {n}}}"))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), reqwest::StatusCode::OK);
        }
        let got = inbox.received();
        assert_eq!(got.len(), RECEIVED_MAX);
        assert_eq!(inbox.dropped(), 1);
        let first = got.first().unwrap();
        assert_eq!(first.path, "/generic");
        assert_eq!(first.event, "incident_opened");
        assert_eq!(first.delivery, "failsmall-0-1");
        assert_eq!(first.signature.as_deref(), Some("sha256=00"));
        assert_eq!(first.body, "{\"n\": 0}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
