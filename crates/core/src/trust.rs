//! Keys with roles, after TUF's root metadata: an offline root key set signs, M of N, a
//! **root document** naming the online keys that may sign versions and desired-state
//! documents, the break-glass keys, an expiry, a version and an epoch. Agents pin a root
//! (its keys and threshold), never an online key: online keys rotate by a new root version,
//! and a server restored from an older backup is recovered by a new **epoch**, which resets
//! the agents' sequence check (documents name their epoch, so an old epoch's documents are
//! never replayed into a new one).
//!
//! Pure: no IO, no clock (the caller passes the time), no randomness (the caller passes
//! seeds). Wire shape = domain shape here: the signed bytes are this module's own
//! serialization of [`RootDocument`], never text from outside, so a signature cannot be
//! made to cover something other than what is checked.

use std::collections::BTreeSet;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Largest root file accepted, in bytes.
pub const ROOT_FILE_MAX_BYTES: usize = 64 * 1024;
/// Most keys in one role (root, online, break glass, revoked).
pub const ROLE_KEYS_MAX: usize = 32;
/// Most signatures attached to one statement.
pub const SIGNATURES_MAX: usize = 32;

/// What a root document's signatures cover: this prefix, then the document's JSON as this
/// module serializes it.
const ROOT_CONTEXT: &[u8] = b"failsmall-root-v1\n";

/// Which keys may do what, signed by the root keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootDocument {
    /// Every new root document has a higher version; agents never go back.
    pub version: u64,
    /// Raised to recover a server restored from an older backup: agents that accept a root
    /// with a higher epoch start its sequence numbers afresh.
    pub epoch: u64,
    /// After this (ms since the Unix epoch), agents refuse documents signed under this root.
    pub expires_ms: u64,
    /// How many distinct root keys must sign the next root document.
    pub threshold: u32,
    /// The root keys (Ed25519 public keys, hex), held offline.
    pub root_keys: Vec<String>,
    /// The online keys that may sign versions and desired-state documents.
    pub online_keys: Vec<String>,
    /// Keys that once were online and must never be trusted again.
    #[serde(default)]
    pub revoked_keys: Vec<String>,
    /// How many distinct break-glass keys must sign a break-glass order.
    pub break_glass_threshold: u32,
    /// Keys of the people who may break glass.
    pub break_glass_keys: Vec<String>,
}

/// One signature over a statement: the signer's public key and the signature, both hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySignature {
    pub key: String,
    pub signature: String,
}

/// A root document and the signatures gathered for it (`root.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRoot {
    pub signed: RootDocument,
    #[serde(default)]
    pub signatures: Vec<KeySignature>,
}

/// Why a root or a signed statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("root file is {len} bytes; the limit is {ROOT_FILE_MAX_BYTES}")]
    TooLarge { len: usize },
    #[error("root file does not parse: {reason}")]
    Malformed { reason: String },
    #[error("root document field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(
        "{what}: {valid} valid signature(s) by distinct trusted keys; {needed} needed (threshold not met)"
    )]
    Threshold {
        what: String,
        valid: usize,
        needed: u32,
    },
    #[error("root version {found} is not newer than version {trusted} already trusted")]
    NotNewer { found: u64, trusted: u64 },
    #[error("root version {found} lowers the epoch from {trusted} to {epoch}")]
    LowerEpoch {
        found: u64,
        epoch: u64,
        trusted: u64,
    },
    #[error("root version {version} expired at {expires_ms} ms")]
    Expired { version: u64, expires_ms: u64 },
    #[error("key {key:?} is not 64 hex characters of an Ed25519 public key")]
    BadKey { key: String },
}

/// Parses a hex Ed25519 public key.
pub fn parse_public_key(key_hex: &str) -> Result<VerifyingKey, TrustError> {
    let bad = || TrustError::BadKey {
        key: key_hex.chars().take(80).collect(),
    };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(key_hex.trim(), &mut bytes).map_err(|_| bad())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// The public key (hex) of the Ed25519 key with `seed`.
pub fn public_key_hex(seed: &[u8; 32]) -> String {
    hex::encode(SigningKey::from_bytes(seed).verifying_key().to_bytes())
}

/// Parses a private key file's text: 64 hex characters (a 32-byte Ed25519 seed).
pub fn parse_seed(text: &str) -> Option<[u8; 32]> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).ok()?;
    Some(seed)
}

/// Signs `message` with the key of `seed`.
pub fn sign(seed: &[u8; 32], message: &[u8]) -> KeySignature {
    let key = SigningKey::from_bytes(seed);
    KeySignature {
        key: hex::encode(key.verifying_key().to_bytes()),
        signature: hex::encode(key.sign(message).to_bytes()),
    }
}

/// Whether `signature_hex` is `key_hex`'s valid signature of `message`; malformed input is
/// simply not valid.
pub fn verify_signature(key_hex: &str, message: &[u8], signature_hex: &str) -> bool {
    let Ok(key) = parse_public_key(key_hex) else {
        return false;
    };
    let mut signature = [0u8; 64];
    if hex::decode_to_slice(signature_hex.trim(), &mut signature).is_err() {
        return false;
    }
    key.verify(message, &Signature::from_bytes(&signature))
        .is_ok()
}

/// How many distinct keys of `trusted` validly signed `message` among `signatures`. A key
/// that signs twice counts once; a key outside `trusted` counts for nothing.
pub fn count_signers(message: &[u8], signatures: &[KeySignature], trusted: &[String]) -> usize {
    let trusted: BTreeSet<String> = trusted.iter().map(|k| k.trim().to_lowercase()).collect();
    signatures
        .iter()
        .take(SIGNATURES_MAX)
        .filter(|s| trusted.contains(&s.key.trim().to_lowercase()))
        .filter(|s| verify_signature(&s.key, message, &s.signature))
        .map(|s| s.key.trim().to_lowercase())
        .collect::<BTreeSet<_>>()
        .len()
}

/// Refuses unless `threshold` distinct keys of `trusted` signed `message`.
pub fn require_threshold(
    what: &str,
    message: &[u8],
    signatures: &[KeySignature],
    trusted: &[String],
    threshold: u32,
) -> Result<(), TrustError> {
    let valid = count_signers(message, signatures, trusted);
    if threshold == 0 || valid < threshold as usize {
        return Err(TrustError::Threshold {
            what: what.to_owned(),
            valid,
            needed: threshold,
        });
    }
    Ok(())
}

impl RootDocument {
    /// The bytes root keys sign.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut message = ROOT_CONTEXT.to_vec();
        // A struct of strings and integers always serializes.
        message.extend_from_slice(serde_json::to_string(self).unwrap_or_default().as_bytes());
        message
    }

    /// Checks the document's own consistency.
    pub fn validate(&self) -> Result<(), TrustError> {
        fn role(field: &'static str, keys: &[String], min: usize) -> Result<(), TrustError> {
            if keys.len() < min || keys.len() > ROLE_KEYS_MAX {
                return Err(TrustError::Invalid {
                    field,
                    reason: format!("{} key(s); expected {min} to {ROLE_KEYS_MAX}", keys.len()),
                });
            }
            let mut seen = BTreeSet::new();
            for key in keys {
                parse_public_key(key).map_err(|e| TrustError::Invalid {
                    field,
                    reason: e.to_string(),
                })?;
                if !seen.insert(key.trim().to_lowercase()) {
                    return Err(TrustError::Invalid {
                        field,
                        reason: format!("key {key} is listed twice"),
                    });
                }
            }
            Ok(())
        }
        role("root_keys", &self.root_keys, 1)?;
        role("online_keys", &self.online_keys, 1)?;
        role("revoked_keys", &self.revoked_keys, 0)?;
        role("break_glass_keys", &self.break_glass_keys, 0)?;
        let threshold = |field, threshold: u32, keys: &[String]| {
            if threshold == 0 || threshold as usize > keys.len() {
                return Err(TrustError::Invalid {
                    field,
                    reason: format!(
                        "{threshold}; expected 1 to {} (the number of keys)",
                        keys.len()
                    ),
                });
            }
            Ok(())
        };
        threshold("threshold", self.threshold, &self.root_keys)?;
        if !self.break_glass_keys.is_empty() {
            threshold(
                "break_glass_threshold",
                self.break_glass_threshold,
                &self.break_glass_keys,
            )?;
        }
        if let Some(key) = self
            .online_keys
            .iter()
            .find(|k| self.revoked_keys.iter().any(|r| r.eq_ignore_ascii_case(k)))
        {
            return Err(TrustError::Invalid {
                field: "online_keys",
                reason: format!("key {key} is also revoked"),
            });
        }
        if self.version == 0 || self.epoch == 0 {
            return Err(TrustError::Invalid {
                field: "version",
                reason: "version and epoch start at 1".to_owned(),
            });
        }
        Ok(())
    }

    /// Whether `key_hex` may sign versions and desired-state documents under this root.
    pub fn is_online_key(&self, key_hex: &str) -> bool {
        let key = key_hex.trim();
        self.online_keys.iter().any(|k| k.eq_ignore_ascii_case(key))
            && !self
                .revoked_keys
                .iter()
                .any(|k| k.eq_ignore_ascii_case(key))
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms > self.expires_ms
    }
}

impl SignedRoot {
    /// Parses a root file's text (size-checked first).
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        if text.len() > ROOT_FILE_MAX_BYTES {
            return Err(TrustError::TooLarge { len: text.len() });
        }
        serde_json::from_str(text).map_err(|e| TrustError::Malformed {
            reason: e.to_string(),
        })
    }

    /// The file text: pretty JSON, one field a line, for people who pass it around to sign.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Verifies a root on its own (the first one an agent or server is given): consistent,
    /// and signed by the threshold of its own root keys.
    pub fn verify_self(&self) -> Result<&RootDocument, TrustError> {
        self.signed.validate()?;
        require_threshold(
            &format!("root version {}", self.signed.version),
            &self.signed.signed_message(),
            &self.signatures,
            &self.signed.root_keys,
            self.signed.threshold,
        )?;
        Ok(&self.signed)
    }

    /// Adds (or replaces) the signature of the root key with `seed`.
    pub fn sign_with(&mut self, seed: &[u8; 32]) {
        let signature = sign(seed, &self.signed.signed_message());
        self.signatures.retain(|s| s.key != signature.key);
        self.signatures.push(signature);
    }
}

/// Whether `next` may replace `trusted` (TUF's root update): a higher version, an epoch not
/// lower, consistent, signed by the threshold of the trusted root's keys and by the threshold
/// of its own, and not expired at `now_ms`.
pub fn accept_update(
    trusted: &RootDocument,
    next: &SignedRoot,
    now_ms: u64,
) -> Result<RootDocument, TrustError> {
    let document = &next.signed;
    if document.version <= trusted.version {
        return Err(TrustError::NotNewer {
            found: document.version,
            trusted: trusted.version,
        });
    }
    if document.epoch < trusted.epoch {
        return Err(TrustError::LowerEpoch {
            found: document.version,
            epoch: document.epoch,
            trusted: trusted.epoch,
        });
    }
    document.validate()?;
    require_threshold(
        &format!(
            "root version {} (by the keys of trusted version {})",
            document.version, trusted.version
        ),
        &document.signed_message(),
        &next.signatures,
        &trusted.root_keys,
        trusted.threshold,
    )?;
    next.verify_self()?;
    if document.is_expired(now_ms) {
        return Err(TrustError::Expired {
            version: document.version,
            expires_ms: document.expires_ms,
        });
    }
    Ok(document.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(seed: u8) -> String {
        public_key_hex(&[seed; 32])
    }

    fn root(version: u64, epoch: u64, online: u8) -> SignedRoot {
        SignedRoot {
            signed: RootDocument {
                version,
                epoch,
                expires_ms: 1_000,
                threshold: 2,
                root_keys: vec![public(1), public(2), public(3)],
                online_keys: vec![public(online)],
                revoked_keys: vec![],
                break_glass_threshold: 2,
                break_glass_keys: vec![public(1), public(2), public(3)],
            },
            signatures: vec![],
        }
    }

    #[test]
    fn a_root_needs_its_threshold_of_distinct_root_keys() {
        let mut first = root(1, 1, 9);
        assert!(matches!(
            first.verify_self(),
            Err(TrustError::Threshold {
                valid: 0,
                needed: 2,
                ..
            })
        ));
        first.sign_with(&[1; 32]);
        // The same share twice counts once.
        first.sign_with(&[1; 32]);
        let duplicate = first.signatures[0].clone();
        first.signatures.push(duplicate);
        // A key outside the root set counts for nothing.
        first.sign_with(&[7; 32]);
        assert!(matches!(
            first.verify_self(),
            Err(TrustError::Threshold { valid: 1, .. })
        ));
        first.sign_with(&[2; 32]);
        assert_eq!(first.verify_self().unwrap().version, 1);
        // Round trip through the file text keeps the signatures valid.
        let again = SignedRoot::parse(&first.to_text()).unwrap();
        assert!(again.verify_self().is_ok());
        // Any change to the document voids them.
        let mut edited = again.clone();
        edited.signed.online_keys = vec![public(8)];
        assert!(edited.verify_self().is_err());
    }

    #[test]
    fn updates_go_forward_only_and_need_the_trusted_keys() {
        let mut first = root(1, 1, 9);
        first.sign_with(&[1; 32]);
        first.sign_with(&[2; 32]);
        let trusted = first.verify_self().unwrap().clone();
        let mut rotated = root(2, 1, 8);
        rotated.signed.revoked_keys = vec![public(9)];
        rotated.sign_with(&[2; 32]);
        rotated.sign_with(&[3; 32]);
        let next = accept_update(&trusted, &rotated, 10).unwrap();
        assert!(next.is_online_key(&public(8)));
        assert!(!next.is_online_key(&public(9)));
        // Not newer, lower epoch, expired, too few signatures: refused.
        assert!(matches!(
            accept_update(&next, &rotated, 10),
            Err(TrustError::NotNewer { .. })
        ));
        let mut lower = root(3, 0, 8);
        lower.signed.epoch = 0;
        assert!(matches!(
            accept_update(&root(2, 2, 8).signed, &lower, 10),
            Err(TrustError::LowerEpoch { .. })
        ));
        assert!(matches!(
            accept_update(&trusted, &rotated, 2_000),
            Err(TrustError::Expired { .. })
        ));
        let mut one = root(3, 2, 8);
        one.sign_with(&[1; 32]);
        assert!(matches!(
            accept_update(&next, &one, 10),
            Err(TrustError::Threshold { valid: 1, .. })
        ));
        // New root keys must be signed for by the old ones.
        let mut takeover = root(3, 2, 8);
        takeover.signed.root_keys = vec![public(5), public(6)];
        takeover.signed.break_glass_keys = vec![];
        takeover.sign_with(&[5; 32]);
        takeover.sign_with(&[6; 32]);
        assert!(takeover.verify_self().is_ok());
        assert!(matches!(
            accept_update(&next, &takeover, 10),
            Err(TrustError::Threshold { valid: 0, .. })
        ));
    }

    #[test]
    fn inconsistent_roots_say_which_field() {
        let mut bad = root(1, 1, 9);
        bad.signed.threshold = 4;
        assert!(matches!(
            bad.signed.validate(),
            Err(TrustError::Invalid {
                field: "threshold",
                ..
            })
        ));
        let mut revoked = root(1, 1, 9);
        revoked.signed.revoked_keys = vec![public(9)];
        assert!(matches!(
            revoked.signed.validate(),
            Err(TrustError::Invalid {
                field: "online_keys",
                ..
            })
        ));
        let mut twice = root(1, 1, 9);
        twice.signed.online_keys = vec![public(9), public(9)];
        assert!(twice.signed.validate().is_err());
        assert!(matches!(
            SignedRoot::parse("{"),
            Err(TrustError::Malformed { .. })
        ));
        assert!(matches!(
            SignedRoot::parse(&" ".repeat(ROOT_FILE_MAX_BYTES + 1)),
            Err(TrustError::TooLarge { .. })
        ));
    }
}
