//! The server's online Ed25519 key: created in the data dir at first start only (mode 0600),
//! it signs every version and every desired-state document. With a root (`root.json` in the
//! data dir, see [`failsmall_core::trust`]) agents trust the key because the root names it;
//! without one, they pin the key from `/v1/signing-key` on first use.
//!
//! A data dir that was used before and has lost its key is refused at start: minting a new
//! key silently would lock out every agent that trusts the old one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The key file's name inside the data dir: 64 hex characters (the 32-byte seed).
pub const KEY_FILE: &str = "signing.key";
/// A rotated-to key, made by `failsmall keys rotate`: promoted to [`KEY_FILE`] at the first
/// start whose root names it (the old key is kept as `signing.key.retired`).
pub const NEXT_KEY_FILE: &str = "signing.key.next";
/// The root file's name inside the data dir (optional: without it agents pin the key on first
/// use).
pub const ROOT_FILE: &str = "root.json";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing key {path} is not 64 hexadecimal characters (a 32-byte Ed25519 seed)")]
    Malformed { path: PathBuf },
    #[error("no randomness for a new signing key: {0}")]
    Random(getrandom::Error),
    #[error(
        "signing key {path} is missing, but this data dir has been used before: agents trust \
         the key that was there, and a new one would be refused by all of them. Restore the \
         file from a backup; or, if it is lost for good, create a new online key with \
         `failsmall keys add --data-dir DIR --root ROOT.json`, have the root key holders sign \
         the new root (`failsmall keys sign`) and start again (README: Keys)"
    )]
    Missing { path: PathBuf },
    #[error("root {path}: {reason}")]
    Root { path: PathBuf, reason: String },
}

/// The root the server serves to agents, as the file says it.
#[derive(Debug, Clone)]
pub struct ServedRoot {
    /// The file's text, served as is (`GET /v1/root`).
    pub text: String,
    pub document: failsmall_core::trust::RootDocument,
}

/// What a version's signature covers: the unit's name and the content's SHA-256 (hex), so a
/// signed version of one unit cannot be passed off as a version of another.
pub fn version_message(unit: &str, hash_hex: &str) -> Vec<u8> {
    format!("failsmall-version-v1\nunit {unit}\nsha256 {hash_hex}\n").into_bytes()
}

/// What a desired-state document's signature covers: the document's exact text.
pub fn desired_message(document: &str) -> Vec<u8> {
    let mut message = b"failsmall-desired-v1\n".to_vec();
    message.extend_from_slice(document.as_bytes());
    message
}

/// What a changelog checkpoint's signature covers: the newest row's id and its chain hash,
/// which commit to every row before it.
pub fn checkpoint_message(head_id: u64, head_hash: &str) -> Vec<u8> {
    format!("failsmall-changelog-checkpoint-v1\nrow {head_id}\nsha256 {head_hash}\n").into_bytes()
}

/// Whether `signature_hex` is a valid signature by `public_key_hex` of the changelog
/// checkpoint (`head_id`, `head_hash`).
pub fn verify_checkpoint(
    public_key_hex: &str,
    head_id: u64,
    head_hash: &str,
    signature_hex: &str,
) -> bool {
    verify(
        public_key_hex,
        &checkpoint_message(head_id, head_hash),
        signature_hex,
    )
}

/// Most version signatures kept (see [`VersionSigner::sign_version`]); past it the cache
/// starts over.
pub const VERSION_SIGNATURES_CACHED_MAX: usize = 16_384;

/// The server's signing key, and the root that names it (if any).
#[derive(Debug)]
pub struct VersionSigner {
    key: SigningKey,
    root: Option<ServedRoot>,
    /// Signatures of versions by (unit, hash): a version never changes, and ed25519 is
    /// deterministic, so each is computed once rather than once per node per answer.
    versions: std::sync::Mutex<std::collections::HashMap<(String, String), std::sync::Arc<str>>>,
    /// The public key in hex, computed once.
    public_hex: String,
}

impl VersionSigner {
    /// Loads the key from `data_dir`, creating it (mode 0600) if there is none; and the root
    /// file, if there is one.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, SigningError> {
        Self::open(data_dir, true)
    }

    /// Loads the key from `data_dir`; creates it only when `first_start` (a data dir that
    /// was never used). Loads `root.json` if present: it must be signed by its threshold and
    /// name this key as an online key.
    pub fn open(data_dir: &Path, first_start: bool) -> Result<Self, SigningError> {
        let root = load_root(data_dir)?;
        if let Some(root) = &root {
            promote_next_key(data_dir, &root.document)?;
        }
        let key = load_key(data_dir, first_start)?;
        let public_hex = hex::encode(key.verifying_key().to_bytes());
        let signer = Self {
            key,
            root,
            versions: std::sync::Mutex::default(),
            public_hex,
        };
        if let Some(root) = &signer.root {
            let public = signer.public_key_hex();
            if !root.document.is_online_key(&public) {
                return Err(SigningError::Root {
                    path: data_dir.join(ROOT_FILE),
                    reason: format!(
                        "version {} does not name this server's key {public} as an online key; \
                         add it (`failsmall keys add --root FILE --key {public}`), have the root \
                         key holders sign, and put the signed file here",
                        root.document.version
                    ),
                });
            }
        }
        Ok(signer)
    }

    /// The root the server serves, if it has one.
    pub fn root(&self) -> Option<&ServedRoot> {
        self.root.as_ref()
    }

    /// The epoch documents are signed under: the root's, or 0 without a root.
    pub fn epoch(&self) -> u64 {
        self.root.as_ref().map_or(0, |r| r.document.epoch)
    }
}

/// Puts the rotated-to key in place when the root names it and no longer names the current
/// one; the current one is kept beside, as `signing.key.retired`.
fn promote_next_key(
    data_dir: &Path,
    root: &failsmall_core::trust::RootDocument,
) -> Result<(), SigningError> {
    let next = data_dir.join(NEXT_KEY_FILE);
    let seed = match fs::read_to_string(&next) {
        Ok(text) => failsmall_core::trust::parse_seed(&text)
            .ok_or_else(|| SigningError::Malformed { path: next.clone() })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(SigningError::Io { path: next, source }),
    };
    if !root.is_online_key(&failsmall_core::trust::public_key_hex(&seed)) {
        return Ok(());
    }
    let current = data_dir.join(KEY_FILE);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SigningError::Io { path, source }
    };
    if current.exists() {
        let retired = data_dir.join(format!("{KEY_FILE}.retired"));
        match fs::remove_file(&retired) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SigningError::Io {
                    path: retired,
                    source,
                });
            }
        }
        fs::rename(&current, &retired).map_err(io(&current))?;
    }
    fs::rename(&next, &current).map_err(io(&next))?;
    if let Ok(dir) = fs::File::open(data_dir) {
        dir.sync_all().map_err(io(data_dir))?;
    }
    tracing::info!(
        "rotated the online key: {} is now {KEY_FILE}",
        NEXT_KEY_FILE
    );
    Ok(())
}

/// Creates a new online key (`file` in `data_dir`, mode 0600) where there is none; its public
/// key, hex. An existing key is never replaced.
pub fn create_key_file(data_dir: &Path, file: &str) -> Result<String, SigningError> {
    let path = data_dir.join(file);
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(SigningError::Random)?;
    write_private(&path, hex::encode(seed).as_bytes())
        .map_err(|source| SigningError::Io { path, source })?;
    Ok(failsmall_core::trust::public_key_hex(&seed))
}

/// The public key (hex) of the key file `file` in `data_dir`, if there is one.
pub fn key_file_public(data_dir: &Path, file: &str) -> Result<Option<String>, SigningError> {
    let path = data_dir.join(file);
    match fs::read_to_string(&path) {
        Ok(text) => failsmall_core::trust::parse_seed(&text)
            .map(|seed| Some(failsmall_core::trust::public_key_hex(&seed)))
            .ok_or(SigningError::Malformed { path }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SigningError::Io { path, source }),
    }
}

/// Creates a new online key in `data_dir` (mode 0600) where there is none; its public key,
/// hex. An existing key is never replaced.
pub fn create_key(data_dir: &Path) -> Result<String, SigningError> {
    create_key_file(data_dir, KEY_FILE)
}

/// Reads the root file in `data_dir`, if any, and checks it on its own.
fn load_root(data_dir: &Path) -> Result<Option<ServedRoot>, SigningError> {
    let path = data_dir.join(ROOT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SigningError::Io { path, source }),
    };
    let root = failsmall_core::trust::SignedRoot::parse(&text).map_err(|e| SigningError::Root {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let document = root
        .verify_self()
        .map_err(|e| SigningError::Root {
            path: path.clone(),
            reason: e.to_string(),
        })?
        .clone();
    Ok(Some(ServedRoot { text, document }))
}

fn load_key(data_dir: &Path, first_start: bool) -> Result<SigningKey, SigningError> {
    {
        let path = data_dir.join(KEY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let mut seed = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut seed)
                    .map_err(|_| SigningError::Malformed { path })?;
                Ok(SigningKey::from_bytes(&seed))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !first_start => {
                Err(SigningError::Missing { path })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(SigningError::Random)?;
                write_private(&path, hex::encode(seed).as_bytes()).map_err(|source| {
                    SigningError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
                Ok(SigningKey::from_bytes(&seed))
            }
            Err(source) => Err(SigningError::Io { path, source }),
        }
    }
}

impl VersionSigner {
    /// The signature (hex) of version `hash_hex` of `unit`.
    pub fn sign_version(&self, unit: &str, hash_hex: &str) -> String {
        hex::encode(self.key.sign(&version_message(unit, hash_hex)).to_bytes())
    }

    /// [`Self::sign_version`], computed once per (unit, hash) and kept (at most
    /// [`VERSION_SIGNATURES_CACHED_MAX`]): what each desired-state answer lists.
    pub fn version_signature(&self, unit: &str, hash_hex: &str) -> std::sync::Arc<str> {
        let key = (unit.to_owned(), hash_hex.to_owned());
        let mut cached = self
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(signature) = cached.get(&key) {
            return std::sync::Arc::clone(signature);
        }
        let signature: std::sync::Arc<str> = self.sign_version(unit, hash_hex).into();
        if cached.len() >= VERSION_SIGNATURES_CACHED_MAX {
            cached.clear();
        }
        cached.insert(key, std::sync::Arc::clone(&signature));
        signature
    }

    /// The signature (hex) of a desired-state document.
    pub fn sign_desired(&self, document: &str) -> String {
        hex::encode(self.key.sign(&desired_message(document)).to_bytes())
    }

    /// The signature (hex) of a changelog checkpoint.
    pub fn sign_checkpoint(&self, head_id: u64, head_hash: &str) -> String {
        hex::encode(
            self.key
                .sign(&checkpoint_message(head_id, head_hash))
                .to_bytes(),
        )
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        self.public_hex.clone()
    }
}

/// Whether `signature_hex` is a valid signature by `public_key_hex` of the desired-state
/// `document`.
pub fn verify_desired(public_key_hex: &str, document: &str, signature_hex: &str) -> bool {
    verify(public_key_hex, &desired_message(document), signature_hex)
}

fn verify(public_key_hex: &str, message: &[u8], signature_hex: &str) -> bool {
    let mut key = [0u8; 32];
    let mut signature = [0u8; 64];
    if hex::decode_to_slice(public_key_hex, &mut key).is_err()
        || hex::decode_to_slice(signature_hex, &mut signature).is_err()
    {
        return false;
    }
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    key.verify(message, &Signature::from_bytes(&signature))
        .is_ok()
}

/// Whether `signature_hex` is a valid signature by `public_key_hex` of version `hash_hex` of
/// `unit`. Malformed input is simply not valid.
pub fn verify_version(
    public_key_hex: &str,
    unit: &str,
    hash_hex: &str,
    signature_hex: &str,
) -> bool {
    verify(
        public_key_hex,
        &version_message(unit, hash_hex),
        signature_hex,
    )
}

/// Creates `path` with mode 0600 and writes `content`; fails if the file exists.
/// Writes a new private (0600) file whole or not at all: the content goes to `<path>.tmp`,
/// is synced, then linked to `path`, which must not exist yet. A crash at any instant leaves
/// no file at `path` or the whole one, never a truncated key or token.
pub(crate) fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    // A file left by a crash before the link is only ever a partial copy: replace it.
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    // A hard link never replaces an existing file, unlike a rename.
    let linked = fs::hard_link(&temporary, path);
    fs::remove_file(&temporary)?;
    linked?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = fs::File::open(dir)
    {
        dir.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_key_left_by_a_crash_is_not_loaded() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        // A crash after the temporary file was created, before it was linked.
        fs::write(dir.join(format!("{KEY_FILE}.tmp")), b"12ab").unwrap();
        let first = VersionSigner::load_or_create(dir).unwrap();
        assert!(!dir.join(format!("{KEY_FILE}.tmp")).exists());
        let second = VersionSigner::load_or_create(dir).unwrap();
        assert_eq!(first.public_key_hex(), second.public_key_hex());
        // An existing key is never replaced.
        assert!(write_private(&dir.join(KEY_FILE), b"other").is_err());
        let third = VersionSigner::load_or_create(dir).unwrap();
        assert_eq!(first.public_key_hex(), third.public_key_hex());
    }

    #[test]
    fn a_used_data_dir_without_its_key_is_refused_not_given_a_new_one() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let first = VersionSigner::open(dir, true).unwrap();
        fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let error = VersionSigner::open(dir, false).unwrap_err();
        assert!(matches!(error, SigningError::Missing { .. }), "{error}");
        assert!(error.to_string().contains("Restore the file"), "{error}");
        assert!(!dir.join(KEY_FILE).exists());
        // An explicit new key is another key, and is never written over an existing one.
        let second = create_key(dir).unwrap();
        assert_ne!(second, first.public_key_hex());
        assert!(create_key(dir).is_err());
    }

    #[test]
    fn a_root_must_be_signed_and_name_this_server_key() {
        use failsmall_core::trust::{RootDocument, SignedRoot, public_key_hex};
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let signer = VersionSigner::open(dir, true).unwrap();
        assert_eq!(signer.epoch(), 0);
        let mut root = SignedRoot {
            signed: RootDocument {
                version: 1,
                epoch: 3,
                expires_ms: u64::MAX,
                threshold: 1,
                root_keys: vec![public_key_hex(&[1; 32])],
                online_keys: vec![public_key_hex(&[9; 32])],
                revoked_keys: vec![],
                break_glass_threshold: 0,
                break_glass_keys: vec![],
            },
            signatures: vec![],
        };
        fs::write(dir.join(ROOT_FILE), root.to_text()).unwrap();
        let unsigned = VersionSigner::open(dir, false).unwrap_err().to_string();
        assert!(unsigned.contains("threshold not met"), "{unsigned}");
        root.sign_with(&[1; 32]);
        fs::write(dir.join(ROOT_FILE), root.to_text()).unwrap();
        let other = VersionSigner::open(dir, false).unwrap_err().to_string();
        assert!(other.contains("does not name this server's key"), "{other}");
        root.signed.online_keys = vec![signer.public_key_hex()];
        root.signatures.clear();
        root.sign_with(&[1; 32]);
        fs::write(dir.join(ROOT_FILE), root.to_text()).unwrap();
        let named = VersionSigner::open(dir, false).unwrap();
        assert_eq!(named.epoch(), 3);
        assert_eq!(named.root().unwrap().document.version, 1);
    }

    #[test]
    fn key_is_created_once_private_and_reloaded() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let first = VersionSigner::load_or_create(dir).unwrap();
        let second = VersionSigner::load_or_create(dir).unwrap();
        assert_eq!(first.public_key_hex(), second.public_key_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let signature = first.sign_version("u", "ab");
        assert_eq!(&*first.version_signature("u", "ab"), signature);
        assert_eq!(&*first.version_signature("u", "ab"), signature);
        assert!(verify_version(
            &first.public_key_hex(),
            "u",
            "ab",
            &signature
        ));
        assert!(!verify_version(
            &first.public_key_hex(),
            "other",
            "ab",
            &signature
        ));
        assert!(!verify_version(&first.public_key_hex(), "u", "ab", "zz"));
    }
}
