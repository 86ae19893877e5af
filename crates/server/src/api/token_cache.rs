//! Token lookups kept in memory for a moment, so that authenticating a request (every agent's
//! long poll and bundle fetch) does not read the store each time: when a change reaches every
//! node, each node's requests would otherwise queue on the store's one connection.
//!
//! Only tokens found active are kept, for at most [`TOKEN_CACHE_TTL_MS`]; a revoked, rotated
//! or claimed token is dropped at once ([`TokenCache::clear`] from those routes), and expiry
//! is still checked on every request against the kept record.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::TokenRecord;

/// Longest time a token lookup is reused, in milliseconds.
pub const TOKEN_CACHE_TTL_MS: u64 = 1_000;
/// Most tokens kept; past it the cache starts over.
pub const TOKEN_CACHE_MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct TokenCache {
    kept: Mutex<HashMap<String, (Instant, TokenRecord)>>,
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, TokenRecord)>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The record kept for the token whose SHA-256 is `hash`, if read less than
    /// [`TOKEN_CACHE_TTL_MS`] ago.
    pub(super) fn get(&self, hash: &str) -> Option<TokenRecord> {
        let kept = self.lock();
        let (at, record) = kept.get(hash)?;
        (at.elapsed() < Duration::from_millis(TOKEN_CACHE_TTL_MS)).then(|| record.clone())
    }

    /// Keeps an active token's record, read just now.
    pub(super) fn keep(&self, hash: String, record: TokenRecord) {
        let mut kept = self.lock();
        if kept.len() >= TOKEN_CACHE_MAX_ENTRIES {
            kept.clear();
        }
        kept.insert(hash, (Instant::now(), record));
    }

    /// Forgets every kept token (a token was revoked, rotated or claimed).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}
