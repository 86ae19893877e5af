//! Request ids: every HTTP request runs inside a `request` span that carries its id (the
//! caller's `x-request-id` when it is a short token, else a new one), its method and path; the
//! id is echoed in the answer's `x-request-id` header. An answer of 5xx is logged at error level
//! with its status and time (the handler logs its cause inside the same span: see
//! [`crate::error::ApiError`]); others at debug level. The router's envelope layer
//! (`api/envelope.rs`) does this for each request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderValue;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a caller.
const REQUEST_ID_MAX_BYTES: usize = 64;

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// A prefix that tells this process's ids from another run's.
fn run_prefix() -> u32 {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // Without randomness the ids are still unique within the run.
        let _ = getrandom::fill(&mut bytes);
        u32::from_le_bytes(bytes)
    })
}

/// The caller's id when it is a short token of `[A-Za-z0-9._-]`, else a new one.
pub fn request_id(given: Option<&HeaderValue>) -> String {
    let given = given.and_then(|value| value.to_str().ok()).filter(|id| {
        !id.is_empty()
            && id.len() <= REQUEST_ID_MAX_BYTES
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    });
    match given {
        Some(id) => id.to_owned(),
        None => format!(
            "{:08x}-{}",
            run_prefix(),
            NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_short_id_is_kept_and_anything_else_replaced() {
        let kept = HeaderValue::from_static("ci-run.42_a");
        assert_eq!(request_id(Some(&kept)), "ci-run.42_a");
        let odd = HeaderValue::from_static("has space");
        let made = request_id(Some(&odd));
        assert_ne!(made, "has space");
        assert_ne!(request_id(None), request_id(None), "each new id is unique");
        let long = HeaderValue::from_str(&"a".repeat(65)).unwrap();
        assert_ne!(request_id(Some(&long)).len(), 65);
    }
}
