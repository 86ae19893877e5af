//! Bundles by SHA-256, cached on disk forever (a bundle never changes under its hash), least
//! recently used out first past [`BLOB_CACHE_MAX_BYTES`]. A miss is fetched upstream once
//! however many agents ask at once; what comes is checked against its hash before it is kept
//! or served, and what is read back from disk is checked again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use sha2::{Digest as _, Sha256};

/// Most bytes of bundles kept on disk; the least recently used go first to make room. A
/// bundle larger than this is passed through, not kept.
pub const BLOB_CACHE_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Largest bundle fetched through the relay, in bytes (the agent applies its unit's own,
/// smaller limit to what it reads).
pub const BLOB_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Longest a bundle fetch upstream may take, in milliseconds.
pub const BLOB_FETCH_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Default)]
struct Index {
    /// Hash → (size, last use tick).
    entries: HashMap<String, (u64, u64)>,
    bytes: u64,
    tick: u64,
}

/// The on-disk bundle cache.
#[derive(Debug)]
pub struct BlobCache {
    dir: PathBuf,
    index: Mutex<Index>,
    /// Per hash being fetched, the lock its fetchers share: the first fetches, the others wait
    /// and then read what it kept.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Whether `text` is a SHA-256 in lowercase hex (and so a safe file name).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl BlobCache {
    /// Opens (creates) the cache under `dir`, indexing what an earlier run kept.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut index = Index::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_sha256_hex(&name) {
                // A temporary file of a write cut short.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let size = entry.metadata()?.len();
            index.tick = index.tick.saturating_add(1);
            index.bytes = index.bytes.saturating_add(size);
            index.entries.insert(name, (size, index.tick));
        }
        Ok(Self {
            dir: dir.to_owned(),
            index: Mutex::new(index),
            fetching: Mutex::new(HashMap::new()),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> u64 {
        self.index().bytes
    }

    /// The kept bundle `hash`, checked against its hash (a damaged file is removed).
    pub async fn kept(&self, hash: &str) -> Option<Bytes> {
        {
            let mut index = self.index();
            index.tick = index.tick.saturating_add(1);
            let tick = index.tick;
            let entry = index.entries.get_mut(hash)?;
            entry.1 = tick;
        }
        let path = self.dir.join(hash);
        match tokio::fs::read(&path).await {
            Ok(bytes) if sha256_hex(&bytes) == hash => Some(Bytes::from(bytes)),
            Ok(_) => {
                tracing::warn!(%hash, "cached bundle does not match its hash; removed, fetched again");
                self.forget(hash).await;
                None
            }
            Err(error) => {
                tracing::warn!(%hash, %error, "cached bundle cannot be read; fetched again");
                self.forget(hash).await;
                None
            }
        }
    }

    async fn forget(&self, hash: &str) {
        {
            let mut index = self.index();
            if let Some((size, _)) = index.entries.remove(hash) {
                index.bytes = index.bytes.saturating_sub(size);
            }
        }
        let _ = tokio::fs::remove_file(self.dir.join(hash)).await;
    }

    /// The lock that fetchers of `hash` share.
    pub fn fetch_lock(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(fetching.entry(hash.to_owned()).or_default())
    }

    /// The fetch of `hash` is over: its lock is dropped once nobody holds it.
    pub fn fetch_done(&self, hash: &str) {
        let mut fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        if fetching
            .get(hash)
            .is_some_and(|lock| Arc::strong_count(lock) <= 1)
        {
            fetching.remove(hash);
        }
    }

    /// Keeps `bytes` (already checked to hash to `hash`), making room by removing the least
    /// recently used; a bundle larger than the whole cache is not kept.
    pub async fn keep(&self, hash: &str, bytes: &Bytes) {
        let size = bytes.len() as u64;
        if size > BLOB_CACHE_MAX_BYTES {
            tracing::warn!(%hash, size, limit = BLOB_CACHE_MAX_BYTES, "bundle larger than the cache; served, not kept");
            return;
        }
        let evicted: Vec<String> = {
            let mut index = self.index();
            let mut evicted = Vec::new();
            while index.bytes.saturating_add(size) > BLOB_CACHE_MAX_BYTES {
                let Some(oldest) = index
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, tick))| *tick)
                    .map(|(hash, _)| hash.clone())
                else {
                    break;
                };
                if let Some((old_size, _)) = index.entries.remove(&oldest) {
                    index.bytes = index.bytes.saturating_sub(old_size);
                }
                evicted.push(oldest);
            }
            evicted
        };
        for old in evicted {
            let _ = tokio::fs::remove_file(self.dir.join(&old)).await;
        }
        let temporary = self.dir.join(format!(".{hash}.tmp"));
        let written = async {
            tokio::fs::write(&temporary, bytes).await?;
            tokio::fs::rename(&temporary, self.dir.join(hash)).await
        }
        .await;
        match written {
            Ok(()) => {
                let mut index = self.index();
                index.tick = index.tick.saturating_add(1);
                let tick = index.tick;
                if index
                    .entries
                    .insert(hash.to_owned(), (size, tick))
                    .is_none()
                {
                    index.bytes = index.bytes.saturating_add(size);
                }
            }
            Err(error) => {
                let _ = tokio::fs::remove_file(&temporary).await;
                tracing::warn!(%hash, %error, "cannot keep the bundle on disk; served, not kept");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_damaged_file_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let bytes = Bytes::from_static(b"{\"v\": 1}");
        let hash = sha256_hex(&bytes);
        cache.keep(&hash, &bytes).await;
        assert_eq!(cache.kept(&hash).await, Some(bytes.clone()));
        std::fs::write(dir.path().join(&hash), b"{\"v\": 2}").unwrap();
        assert_eq!(cache.kept(&hash).await, None);
        assert_eq!(cache.bytes(), 0);
        // A new run indexes what the last one kept.
        cache.keep(&hash, &bytes).await;
        let again = BlobCache::open(dir.path()).unwrap();
        assert_eq!(again.bytes(), bytes.len() as u64);
        assert_eq!(again.kept(&hash).await, Some(bytes));
    }

    #[test]
    fn only_lowercase_sha256_hex_names_a_blob() {
        assert!(is_sha256_hex(&sha256_hex(b"x")));
        assert!(!is_sha256_hex("../etc/passwd"));
        assert!(!is_sha256_hex(&sha256_hex(b"x").to_uppercase()));
    }
}
