//! Verification of a desired-state document: the signature against the pinned server key,
//! the node it names, a sequence number that never goes back, and its expiry.
//!
//! Wire shapes ([`Envelope`], [`WireDocument`]) stay here; [`Desired`] is what the agent
//! acts on. Everything here is pure: the caller passes the time.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use failsmall_core::domain::{UnitName, VersionHash};
use failsmall_core::plan::HealthCheck;
use failsmall_core::validate::UnitSpec;
use serde::Deserialize;

/// Largest desired-state document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = failsmall_core::limits::DESIRED_DOCUMENT_MAX_BYTES;
/// Most units in one document.
pub const MAX_UNITS: usize = failsmall_core::limits::DESIRED_UNITS_MAX;

/// What `GET /v1/nodes/{node}/desired` returns.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub seq: u64,
    /// The signed text, exactly as signed.
    pub document: String,
    /// Ed25519 signature (hex) of `failsmall-desired-v1\n` followed by `document`.
    pub signature: String,
    /// The online key that signed (hex). With a pinned root it must be one the root names.
    #[serde(default)]
    pub key: Option<String>,
    /// The version of the root the server serves: an agent whose root is older fetches the
    /// newer one (`GET /v1/root`) and verifies it against the one it trusts.
    #[serde(default)]
    pub root_version: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct WireDocument {
    node: String,
    seq: u64,
    /// The root epoch the document is signed under; absent from servers without a root.
    #[serde(default)]
    epoch: u64,
    /// Per listed unit, the signature of its version (`failsmall-version-v1`).
    #[serde(default)]
    versions: BTreeMap<String, String>,
    units: BTreeMap<String, String>,
    /// Absent in documents from servers that do not set an expiry: they never expire.
    #[serde(default)]
    expires_ms: Option<u64>,
    #[serde(default)]
    specs: BTreeMap<String, UnitSpec>,
    #[serde(default)]
    health_checks: BTreeMap<String, HealthCheck>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    trial: BTreeMap<String, u64>,
    #[serde(default)]
    stable: BTreeMap<String, String>,
}

/// A verified desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub seq: u64,
    pub epoch: u64,
    pub units: BTreeMap<UnitName, VersionHash>,
    pub specs: BTreeMap<UnitName, UnitSpec>,
    /// The plan's post-apply health check, for versions a rollout is bringing.
    pub health_checks: BTreeMap<UnitName, HealthCheck>,
    /// Units to remove from the node: a rollback took every version of them from it. A unit
    /// merely absent from `units` is left as it is.
    pub removed: BTreeSet<UnitName>,
    /// Per unit, the rollout still judging the version listed for it (its stages, or its
    /// soak): that version is ACKed for this rollout, and is not yet the last known good.
    pub trial: BTreeMap<UnitName, u64>,
    /// Per unit, its stable version (its latest rollout that completed, soak included).
    pub stable: BTreeMap<UnitName, VersionHash>,
    pub expires_ms: Option<u64>,
}

impl Desired {
    /// Whether the document is past its expiry at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|expires| now_ms > expires)
    }
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("pinned server key {key:?} is not 64 hex characters of an Ed25519 public key")]
    BadKey { key: String },
    #[error(
        "desired-state document seq {seq}: signature does not verify against the pinned server key"
    )]
    Signature { seq: u64 },
    #[error("desired-state document is {len} bytes; the limit is {MAX_DOCUMENT_BYTES}")]
    TooLarge { len: usize },
    #[error("desired-state document does not parse: {reason}")]
    Malformed { reason: String },
    #[error("desired-state document is for node {found:?}; this agent is node {expected:?}")]
    WrongNode { found: String, expected: String },
    #[error(
        "desired-state document seq {seq} is older than seq {trusted} already trusted; replay refused"
    )]
    Older { seq: u64, trusted: u64 },
    #[error("desired-state document: envelope seq {envelope} differs from signed seq {signed}")]
    SeqMismatch { envelope: u64, signed: u64 },
    #[error(
        "desired-state document seq {seq}: unit {unit}: the version's signature does not verify against the document's key"
    )]
    VersionSignature { seq: u64, unit: String },
    #[error(
        "desired-state document seq {seq} is signed by key {key:?}, which root version {root_version} does not name as an online key (or revokes)"
    )]
    UnknownKey {
        seq: u64,
        key: String,
        root_version: u64,
    },
    #[error(
        "desired-state document seq {seq} is of epoch {found}; the trusted root (version {root_version}) is of epoch {expected}"
    )]
    Epoch {
        seq: u64,
        found: u64,
        expected: u64,
        root_version: u64,
    },
    #[error(
        "the trusted root version {root_version} expired at {expires_ms} ms: the root key holders must sign a new one (README: Keys); keeping what is active"
    )]
    RootExpired { root_version: u64, expires_ms: u64 },
}

impl Refusal {
    /// What kind of refusal this is, whatever the document's sequence number: documents come
    /// with a new one at every change, and the same fault is reported once.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadKey { .. } => "bad_key",
            Self::Signature { .. } => "signature",
            Self::TooLarge { .. } => "too_large",
            Self::Malformed { .. } => "malformed",
            Self::WrongNode { .. } => "wrong_node",
            Self::Older { .. } => "older",
            Self::SeqMismatch { .. } => "seq_mismatch",
            Self::VersionSignature { .. } => "version_signature",
            Self::UnknownKey { .. } => "unknown_key",
            Self::Epoch { .. } => "epoch",
            Self::RootExpired { .. } => "root_expired",
        }
    }
}

/// Parses a hex Ed25519 public key.
pub fn parse_key(key_hex: &str) -> Result<VerifyingKey, Refusal> {
    let bad = || Refusal::BadKey {
        key: key_hex.chars().take(80).collect(),
    };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(key_hex.trim(), &mut bytes).map_err(|_| bad())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// The signed message of a desired-state document (the server's `desired_message`).
fn desired_message(document: &str) -> Vec<u8> {
    let mut message = b"failsmall-desired-v1\n".to_vec();
    message.extend_from_slice(document.as_bytes());
    message
}

/// The signed message of a version (the server's `version_message`).
fn version_message(unit: &str, hash_hex: &str) -> Vec<u8> {
    format!("failsmall-version-v1\nunit {unit}\nsha256 {hash_hex}\n").into_bytes()
}

/// Verifies `envelope` under a pinned `root`: signed by an online key the root names (and
/// does not revoke), of the root's epoch, the root not expired at `now_ms`; then as
/// [`verify`] does.
pub fn verify_with_root(
    root: &failsmall_core::trust::RootDocument,
    envelope: &Envelope,
    node: &str,
    trusted_seq: u64,
    now_ms: u64,
) -> Result<Desired, Refusal> {
    if root.is_expired(now_ms) {
        return Err(Refusal::RootExpired {
            root_version: root.version,
            expires_ms: root.expires_ms,
        });
    }
    let named = envelope.key.as_deref().unwrap_or("");
    if !root.is_online_key(named) {
        return Err(Refusal::UnknownKey {
            seq: envelope.seq,
            key: named.chars().take(80).collect(),
            root_version: root.version,
        });
    }
    let key = parse_key(named)?;
    let desired = verify(&key, envelope, node, trusted_seq)?;
    if desired.epoch != root.epoch {
        return Err(Refusal::Epoch {
            seq: desired.seq,
            found: desired.epoch,
            expected: root.epoch,
            root_version: root.version,
        });
    }
    Ok(desired)
}

/// Verifies `envelope` for `node`: signature by `key`, the node, and a sequence number not
/// below `trusted_seq`. Expiry is the caller's to judge with [`Desired::is_expired`].
pub fn verify(
    key: &VerifyingKey,
    envelope: &Envelope,
    node: &str,
    trusted_seq: u64,
) -> Result<Desired, Refusal> {
    if envelope.document.len() > MAX_DOCUMENT_BYTES {
        return Err(Refusal::TooLarge {
            len: envelope.document.len(),
        });
    }
    let mut signature = [0u8; 64];
    hex::decode_to_slice(envelope.signature.trim(), &mut signature)
        .map_err(|_| Refusal::Signature { seq: envelope.seq })?;
    key.verify(
        &desired_message(&envelope.document),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| Refusal::Signature { seq: envelope.seq })?;
    let wire: WireDocument =
        serde_json::from_str(&envelope.document).map_err(|e| Refusal::Malformed {
            reason: e.to_string(),
        })?;
    if wire.node != node {
        return Err(Refusal::WrongNode {
            found: wire.node,
            expected: node.to_owned(),
        });
    }
    if wire.seq != envelope.seq {
        return Err(Refusal::SeqMismatch {
            envelope: envelope.seq,
            signed: wire.seq,
        });
    }
    if wire.seq < trusted_seq {
        return Err(Refusal::Older {
            seq: wire.seq,
            trusted: trusted_seq,
        });
    }
    let most = wire
        .units
        .len()
        .max(wire.specs.len())
        .max(wire.health_checks.len())
        .max(wire.removed.len())
        .max(wire.trial.len())
        .max(wire.stable.len());
    if most > MAX_UNITS {
        return Err(Refusal::Malformed {
            reason: format!("{most} units; the limit is {MAX_UNITS}"),
        });
    }
    let mut units = BTreeMap::new();
    for (name, hash) in wire.units {
        let unit = UnitName::new(name.clone()).map_err(|e| Refusal::Malformed {
            reason: e.to_string(),
        })?;
        let hash: VersionHash = hash.parse().map_err(|_| Refusal::Malformed {
            reason: format!("unit {name}: version {hash:?} is not a SHA-256 hex"),
        })?;
        units.insert(unit, hash);
    }
    // Every version as well as the document: a listed version without its own valid
    // signature is refused, whole document with it.
    for (unit, hash) in &units {
        let valid = wire.versions.get(unit.as_str()).is_some_and(|signature| {
            let mut bytes = [0u8; 64];
            hex::decode_to_slice(signature.trim(), &mut bytes).is_ok()
                && key
                    .verify(
                        &version_message(unit.as_str(), &hash.to_string()),
                        &Signature::from_bytes(&bytes),
                    )
                    .is_ok()
        });
        if !valid {
            return Err(Refusal::VersionSignature {
                seq: wire.seq,
                unit: unit.to_string(),
            });
        }
    }
    let mut specs = BTreeMap::new();
    for (name, spec) in wire.specs {
        let unit = UnitName::new(name).map_err(|e| Refusal::Malformed {
            reason: e.to_string(),
        })?;
        specs.insert(unit, spec);
    }
    let mut health_checks = BTreeMap::new();
    for (name, check) in wire.health_checks {
        let unit = UnitName::new(name).map_err(|e| Refusal::Malformed {
            reason: e.to_string(),
        })?;
        health_checks.insert(unit, check);
    }
    let named = |name: String| {
        UnitName::new(name).map_err(|e| Refusal::Malformed {
            reason: e.to_string(),
        })
    };
    let mut removed = BTreeSet::new();
    for name in wire.removed {
        let unit = named(name)?;
        if units.contains_key(&unit) {
            return Err(Refusal::Malformed {
                reason: format!("unit {unit} is both listed and removed"),
            });
        }
        removed.insert(unit);
    }
    let mut trial = BTreeMap::new();
    for (name, rollout) in wire.trial {
        trial.insert(named(name)?, rollout);
    }
    let mut stable = BTreeMap::new();
    for (name, hash) in wire.stable {
        let hash = hash.parse().map_err(|_| Refusal::Malformed {
            reason: format!("unit {name}: stable version {hash:?} is not a SHA-256 hex"),
        })?;
        stable.insert(named(name)?, hash);
    }
    Ok(Desired {
        seq: wire.seq,
        epoch: wire.epoch,
        units,
        specs,
        health_checks,
        removed,
        trial,
        stable,
        expires_ms: wire.expires_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    #[test]
    fn the_agent_accepts_what_the_server_may_send() {
        // One home: the server refuses up front what would exceed these (core::limits).
        assert_eq!(
            MAX_DOCUMENT_BYTES,
            failsmall_core::limits::DESIRED_DOCUMENT_MAX_BYTES
        );
        assert_eq!(MAX_UNITS, failsmall_core::limits::DESIRED_UNITS_MAX);
        assert_eq!(
            crate::control::REASON_MAX_BYTES,
            failsmall_core::limits::TEXT_MAX_BYTES
        );
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn version_signature(signer: &SigningKey, unit: &str, hash: &str) -> String {
        hex::encode(signer.sign(&version_message(unit, hash)).to_bytes())
    }

    fn envelope(signer: &SigningKey, node: &str, seq: u64, expires_ms: u64) -> Envelope {
        let hash = VersionHash::of(b"x").to_string();
        let document = json!({
            "node": node, "seq": seq, "units": {"features": hash},
            "versions": {"features": version_signature(signer, "features", &hash)},
            "expires_ms": expires_ms,
            "specs": {"features": {"format": "json", "max_bytes": 100}},
            "health_checks": {"features": {"path": "/health", "expect_status": 200, "timeout_ms": 500}},
        })
        .to_string();
        let signature = hex::encode(signer.sign(&desired_message(&document)).to_bytes());
        Envelope {
            seq,
            document,
            signature,
            key: Some(hex::encode(signer.verifying_key().to_bytes())),
            root_version: None,
        }
    }

    /// One helper for every case: the verdict on `envelope` for node `n1`, trusting seq 5.
    fn check(envelope: &Envelope, expect: Result<u64, Refusal>) {
        let verifying = key(1).verifying_key();
        let verdict = verify(&verifying, envelope, "n1", 5).map(|d| d.seq);
        assert_eq!(verdict, expect);
    }

    #[test]
    fn a_signed_newer_document_for_this_node_verifies() {
        check(&envelope(&key(1), "n1", 7, 10), Ok(7));
        check(&envelope(&key(1), "n1", 5, 10), Ok(5));
        let desired = verify(
            &key(1).verifying_key(),
            &envelope(&key(1), "n1", 7, 10),
            "n1",
            0,
        )
        .unwrap();
        assert_eq!(desired.units.len(), 1);
        assert_eq!(desired.specs.len(), 1);
        let check = desired.health_checks.values().next().unwrap();
        assert_eq!((check.path.as_str(), check.timeout_ms), ("/health", 500));
        assert!(!desired.is_expired(10));
        assert!(desired.is_expired(11));
    }

    fn signed(signer: &SigningKey, document: &serde_json::Value) -> Envelope {
        let mut document = document.clone();
        let units = document["units"].as_object().cloned().unwrap_or_default();
        let versions: serde_json::Map<String, serde_json::Value> = units
            .iter()
            .map(|(unit, hash)| {
                let signature = version_signature(signer, unit, hash.as_str().unwrap());
                (unit.clone(), json!(signature))
            })
            .collect();
        document["versions"] = json!(versions);
        let document = document.to_string();
        let signature = hex::encode(signer.sign(&desired_message(&document)).to_bytes());
        Envelope {
            seq: 7,
            document,
            signature,
            key: None,
            root_version: None,
        }
    }

    #[test]
    fn removals_trials_and_stable_versions_are_read_and_checked() {
        let (a, b) = (VersionHash::of(b"a"), VersionHash::of(b"b"));
        let document = json!({
            "node": "n1", "seq": 7, "units": {"features": a.to_string()},
            "removed": ["rules"], "trial": {"features": 12},
            "stable": {"features": b.to_string()},
        });
        let desired = verify(
            &key(1).verifying_key(),
            &signed(&key(1), &document),
            "n1",
            0,
        )
        .unwrap();
        let unit = |name: &str| UnitName::new(name).unwrap();
        assert!(desired.removed.contains(&unit("rules")));
        assert_eq!(desired.trial.get(&unit("features")), Some(&12));
        assert_eq!(desired.stable.get(&unit("features")), Some(&b));
        // A unit both listed and removed is a contradiction, not an instruction.
        let both = json!({
            "node": "n1", "seq": 7, "units": {"features": a.to_string()},
            "removed": ["features"],
        });
        assert!(matches!(
            verify(&key(1).verifying_key(), &signed(&key(1), &both), "n1", 0),
            Err(Refusal::Malformed { .. })
        ));
        let bad_stable = json!({
            "node": "n1", "seq": 7, "units": {}, "stable": {"features": "nope"},
        });
        assert!(matches!(
            verify(
                &key(1).verifying_key(),
                &signed(&key(1), &bad_stable),
                "n1",
                0
            ),
            Err(Refusal::Malformed { .. })
        ));
    }

    #[test]
    fn refusals_say_why() {
        check(
            &envelope(&key(2), "n1", 7, 10),
            Err(Refusal::Signature { seq: 7 }),
        );
        check(
            &envelope(&key(1), "n1", 4, 10),
            Err(Refusal::Older { seq: 4, trusted: 5 }),
        );
        check(
            &envelope(&key(1), "n2", 7, 10),
            Err(Refusal::WrongNode {
                found: "n2".into(),
                expected: "n1".into(),
            }),
        );
        let mut tampered = envelope(&key(1), "n1", 7, 10);
        tampered.document = tampered.document.replace("\"seq\":7", "\"seq\":8");
        check(&tampered, Err(Refusal::Signature { seq: 7 }));
        let mut relabelled = envelope(&key(1), "n1", 7, 10);
        relabelled.seq = 9;
        check(
            &relabelled,
            Err(Refusal::SeqMismatch {
                envelope: 9,
                signed: 7,
            }),
        );
        let mut garbage = envelope(&key(1), "n1", 7, 10);
        garbage.signature = "zz".into();
        check(&garbage, Err(Refusal::Signature { seq: 7 }));
    }

    #[test]
    fn a_tampered_or_missing_version_signature_is_refused() {
        let hash = VersionHash::of(b"x").to_string();
        let other = VersionHash::of(b"y").to_string();
        // Signed for another version, another unit, or by another key: each refused, even
        // inside a document whose own signature is good.
        for versions in [
            json!({"features": version_signature(&key(1), "features", &other)}),
            json!({"features": version_signature(&key(1), "rules", &hash)}),
            json!({"features": version_signature(&key(2), "features", &hash)}),
            json!({}),
        ] {
            let document = json!({
                "node": "n1", "seq": 7, "units": {"features": hash}, "versions": versions,
            })
            .to_string();
            let signature = hex::encode(key(1).sign(&desired_message(&document)).to_bytes());
            let envelope = Envelope {
                seq: 7,
                document,
                signature,
                key: None,
                root_version: None,
            };
            check(
                &envelope,
                Err(Refusal::VersionSignature {
                    seq: 7,
                    unit: "features".into(),
                }),
            );
        }
    }

    #[test]
    fn under_a_root_only_its_online_keys_and_its_epoch_are_trusted() {
        use failsmall_core::trust::{RootDocument, public_key_hex};
        let online = hex::encode(key(1).verifying_key().to_bytes());
        let root = RootDocument {
            version: 4,
            epoch: 0,
            expires_ms: 100,
            threshold: 1,
            root_keys: vec![public_key_hex(&[7; 32])],
            online_keys: vec![online.clone()],
            revoked_keys: vec![hex::encode(key(2).verifying_key().to_bytes())],
            break_glass_threshold: 0,
            break_glass_keys: vec![],
        };
        // The test documents carry no epoch: epoch 0.
        let good = envelope(&key(1), "n1", 7, 10);
        assert_eq!(verify_with_root(&root, &good, "n1", 5, 10).unwrap().seq, 7);
        // A revoked key, or one the root does not name, is refused though it signed well.
        let revoked = envelope(&key(2), "n1", 7, 10);
        assert_eq!(
            verify_with_root(&root, &revoked, "n1", 5, 10)
                .unwrap_err()
                .kind(),
            "unknown_key"
        );
        let mut unnamed = good.clone();
        unnamed.key = None;
        assert_eq!(
            verify_with_root(&root, &unnamed, "n1", 5, 10)
                .unwrap_err()
                .kind(),
            "unknown_key"
        );
        let later = RootDocument {
            epoch: 2,
            ..root.clone()
        };
        assert_eq!(
            verify_with_root(&later, &good, "n1", 5, 10)
                .unwrap_err()
                .kind(),
            "epoch"
        );
        assert_eq!(
            verify_with_root(&root, &good, "n1", 5, 101)
                .unwrap_err()
                .kind(),
            "root_expired"
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(parse_key("nothex").is_err());
        assert!(parse_key(&hex::encode(key(3).verifying_key().to_bytes())).is_ok());
    }
}
