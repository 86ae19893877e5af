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
}

#[derive(Debug, Deserialize)]
struct WireDocument {
    node: String,
    seq: u64,
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
        let hash = hash.parse().map_err(|_| Refusal::Malformed {
            reason: format!("unit {name}: version {hash:?} is not a SHA-256 hex"),
        })?;
        units.insert(unit, hash);
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

    fn envelope(signer: &SigningKey, node: &str, seq: u64, expires_ms: u64) -> Envelope {
        let hash = VersionHash::of(b"x").to_string();
        let document = json!({
            "node": node, "seq": seq, "units": {"features": hash},
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
        let document = document.to_string();
        let signature = hex::encode(signer.sign(&desired_message(&document)).to_bytes());
        Envelope {
            seq: 7,
            document,
            signature,
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
    fn bad_keys_are_refused() {
        assert!(parse_key("nothex").is_err());
        assert!(parse_key(&hex::encode(key(3).verifying_key().to_bytes())).is_ok());
    }
}
