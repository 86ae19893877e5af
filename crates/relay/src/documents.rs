//! Each node's latest desired-state answer, kept in memory until its document expires, to be
//! served while no upstream answers; and identical long polls in flight at once shared, so
//! they make one upstream request.
//!
//! The relay cannot read a document's trust (it holds no key): what it keeps is the answer
//! exactly as upstream sent it, and the agent verifies it as ever. It reads only `seq` and the
//! document's `expires_ms`, to know what is newer and what is too old to serve.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use serde::Deserialize;

use crate::upstream::{Answer, UpstreamError};

/// Most nodes whose latest document is kept; past it, the one kept longest is dropped.
pub const DOCUMENTS_KEPT_MAX: usize = 100_000;

/// One kept answer.
#[derive(Debug, Clone)]
pub struct Kept {
    pub seq: u64,
    pub expires_ms: u64,
    /// SHA-256 of the `Authorization` header it was fetched with: served only to the same.
    pub token_sha256: String,
    pub body: Bytes,
    kept_at: u64,
}

#[derive(Debug, Deserialize)]
struct AnswerShape {
    seq: u64,
    document: String,
}

#[derive(Debug, Deserialize)]
struct DocumentShape {
    expires_ms: u64,
}

/// `seq` and `expires_ms` of a desired-state answer, if it has the expected shape.
pub fn read_answer(body: &[u8]) -> Option<(u64, u64)> {
    let answer: AnswerShape = serde_json::from_slice(body).ok()?;
    let document: DocumentShape = serde_json::from_str(&answer.document).ok()?;
    Some((answer.seq, document.expires_ms))
}

type Flight = Arc<tokio::sync::OnceCell<Result<Answer, UpstreamError>>>;

#[derive(Debug, Default)]
pub struct Documents {
    kept: Mutex<(HashMap<String, Kept>, u64)>,
    flights: Mutex<HashMap<String, Flight>>,
}

impl Documents {
    /// The answer kept for `node` for the holder of `token_sha256`, unless it expired by
    /// `now_ms`.
    pub fn kept(&self, node: &str, token_sha256: &str, now_ms: u64) -> Option<Kept> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.0
            .get(node)
            .filter(|k| k.token_sha256 == token_sha256 && k.expires_ms > now_ms)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `body` (an upstream 200 answer for `node`) unless an answer with a higher
    /// sequence number is kept already.
    pub fn keep(&self, node: &str, token_sha256: &str, body: &Bytes) {
        let Some((seq, expires_ms)) = read_answer(body) else {
            tracing::warn!(%node, "upstream desired-state answer has no seq/expires_ms; not kept");
            return;
        };
        let mut guard = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let (kept, counter) = &mut *guard;
        *counter = counter.saturating_add(1);
        if kept
            .get(node)
            .is_some_and(|k| k.seq > seq && k.token_sha256 == token_sha256)
        {
            return;
        }
        if !kept.contains_key(node)
            && kept.len() >= DOCUMENTS_KEPT_MAX
            && let Some(oldest) = kept
                .iter()
                .min_by_key(|(_, k)| k.kept_at)
                .map(|(n, _)| n.clone())
        {
            kept.remove(&oldest);
        }
        kept.insert(
            node.to_owned(),
            Kept {
                seq,
                expires_ms,
                token_sha256: token_sha256.to_owned(),
                body: body.clone(),
                kept_at: *counter,
            },
        );
    }

    /// The answer to the poll `key`: one upstream request (`fetch`) for every identical poll
    /// in flight at once.
    pub async fn shared<F, Fut>(&self, key: &str, fetch: F) -> Result<Answer, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Answer, UpstreamError>>,
    {
        let flight: Flight = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(flights.entry(key.to_owned()).or_default())
        };
        let answer = flight.get_or_init(fetch).await.clone();
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, &flight))
        {
            flights.remove(key);
        }
        answer
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answer(seq: u64, expires_ms: u64) -> Bytes {
        let document =
            serde_json::json!({"node": "n1", "seq": seq, "expires_ms": expires_ms}).to_string();
        Bytes::from(
            serde_json::json!({"seq": seq, "document": document, "signature": "s"}).to_string(),
        )
    }

    #[test]
    fn kept_until_expiry_for_the_same_token_and_never_replaced_by_an_older() {
        let documents = Documents::default();
        documents.keep("n1", "t", &answer(5, 1_000));
        documents.keep("n1", "t", &answer(4, 2_000));
        let kept = documents.kept("n1", "t", 999).unwrap();
        assert_eq!((kept.seq, kept.expires_ms), (5, 1_000));
        assert!(documents.kept("n1", "t", 1_000).is_none(), "expired");
        assert!(documents.kept("n1", "other", 0).is_none(), "another token");
        documents.keep("n1", "t", &Bytes::from_static(b"{\"seq\": 9}"));
        assert_eq!(
            documents.kept("n1", "t", 0).unwrap().seq,
            5,
            "malformed: not kept"
        );
    }

    #[tokio::test]
    async fn identical_polls_in_flight_share_one_fetch() {
        let documents = Arc::new(Documents::default());
        let fetched = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut polls = Vec::new();
        for _ in 0..5 {
            let (documents, fetched, gate) = (documents.clone(), fetched.clone(), gate.clone());
            polls.push(tokio::spawn(async move {
                documents
                    .shared("n1?after=1", || async move {
                        fetched.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        gate.notified().await;
                        Ok(Answer {
                            status: 200,
                            content_type: None,
                            body: answer(2, 9),
                        })
                    })
                    .await
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        gate.notify_one();
        for poll in polls {
            assert_eq!(poll.await.unwrap().unwrap().status, 200);
        }
        assert_eq!(fetched.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
