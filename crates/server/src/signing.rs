//! The server's Ed25519 key: created in the data dir at first start (mode 0600), it signs
//! every version at push; agents verify with the public key from `/v1/signing-key`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The key file's name inside the data dir: 64 hex characters (the 32-byte seed).
pub const KEY_FILE: &str = "signing.key";

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

/// The server's signing key.
#[derive(Debug)]
pub struct VersionSigner {
    key: SigningKey,
}

impl VersionSigner {
    /// Loads the key from `data_dir`, creating it (mode 0600) if there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, SigningError> {
        let path = data_dir.join(KEY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let mut seed = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut seed)
                    .map_err(|_| SigningError::Malformed { path })?;
                Ok(Self {
                    key: SigningKey::from_bytes(&seed),
                })
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
                Ok(Self {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            Err(source) => Err(SigningError::Io { path, source }),
        }
    }

    /// The signature (hex) of version `hash_hex` of `unit`.
    pub fn sign_version(&self, unit: &str, hash_hex: &str) -> String {
        hex::encode(self.key.sign(&version_message(unit, hash_hex)).to_bytes())
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
        hex::encode(self.key.verifying_key().to_bytes())
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
