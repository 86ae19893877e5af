//! Break-glass orders: an emergency instruction to agents ("unit U: pin version H", "unit U:
//! go back to the last known good") for a selection of nodes, signed by M of the N
//! break-glass keys a root names ([`crate::trust::RootDocument::break_glass_keys`]), with a
//! reason, a short expiry and a nonce. Agents verify an order against the root they pin and
//! need nothing else: it works with the control plane down.
//!
//! Pure: the caller passes the time; the signed bytes are this module's own serialization of
//! [`Order`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{UnitName, VersionHash};
use crate::trust::{KeySignature, RootDocument, TrustError, require_threshold};

/// Longest an order may stay in force: a break glass is for the hours an outage lasts, not a
/// way to run the fleet.
pub const ORDER_TTL_MAX_MS: u64 = 6 * 3600 * 1000;
/// Most actions in one order.
pub const ACTIONS_MAX: usize = 64;
/// Most label pairs in an order's selector.
pub const SELECTOR_MAX: usize = 16;
/// Longest nonce, in bytes.
pub const NONCE_MAX_BYTES: usize = 128;
/// Largest order file accepted, in bytes.
pub const ORDER_FILE_MAX_BYTES: usize = 64 * 1024;

const ORDER_CONTEXT: &[u8] = b"failsmall-break-glass-v1\n";

/// What an order does to one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Serve this version (it must be stored on the node already).
    Pin { unit: String, version: String },
    /// Serve the node's last known good version of the unit.
    Revert { unit: String },
}

impl Action {
    pub fn unit(&self) -> &str {
        match self {
            Self::Pin { unit, .. } | Self::Revert { unit } => unit,
        }
    }
}

/// An emergency order, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Unique per order: an agent accepts each nonce once.
    pub nonce: String,
    /// Why, for the people reading the logs later.
    pub reason: String,
    /// When it was written, and when it stops being in force (ms since the Unix epoch).
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// Which nodes: labels they must all have (`node` matches the node id); empty: every node.
    pub selector: BTreeMap<String, String>,
    pub actions: Vec<Action>,
    /// Earlier orders (by nonce) this one lifts before they expire: their units go back to
    /// the desired state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifts: Vec<String>,
    /// Pause everything: every unit of the selected nodes keeps what it serves, and nothing
    /// from the control plane is applied or removed there, until the order expires or is
    /// lifted (its actions still pin or revert the units they name).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_all: bool,
}

/// An order and the signatures gathered for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedOrder {
    pub order: Order,
    #[serde(default)]
    pub signatures: Vec<KeySignature>,
}

/// Why an order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("break-glass order does not parse: {reason}")]
    Malformed { reason: String },
    #[error("break-glass order field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("break-glass order {nonce}: expired at {expires_ms} ms")]
    Expired { nonce: String, expires_ms: u64 },
    #[error("break-glass order {nonce}: issued at {issued_ms} ms, in the future")]
    NotYet { nonce: String, issued_ms: u64 },
    #[error("break-glass order {nonce}: already used (replay refused)")]
    Replayed { nonce: String },
    #[error("break-glass order {nonce}: {source}")]
    Trust { nonce: String, source: TrustError },
    #[error("break-glass order {nonce}: the trusted root names no break-glass keys")]
    NoKeys { nonce: String },
}

/// How far in the future an order's issue time may be (clocks differ), in milliseconds.
pub const CLOCK_SKEW_MAX_MS: u64 = 5 * 60 * 1000;

impl Order {
    /// The bytes break-glass keys sign.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut message = ORDER_CONTEXT.to_vec();
        message.extend_from_slice(serde_json::to_string(self).unwrap_or_default().as_bytes());
        message
    }

    /// Checks the order's own consistency (not its signatures, nor the time).
    pub fn validate(&self) -> Result<(), OrderError> {
        let invalid = |field, reason: String| OrderError::Invalid { field, reason };
        if self.nonce.trim().is_empty() || self.nonce.len() > NONCE_MAX_BYTES {
            return Err(invalid(
                "nonce",
                format!("expected 1 to {NONCE_MAX_BYTES} bytes"),
            ));
        }
        if self.reason.trim().is_empty() || self.reason.len() > crate::limits::TEXT_MAX_BYTES {
            return Err(invalid(
                "reason",
                format!(
                    "expected 1 to {} bytes: say why",
                    crate::limits::TEXT_MAX_BYTES
                ),
            ));
        }
        if self.expires_ms <= self.issued_ms || self.expires_ms - self.issued_ms > ORDER_TTL_MAX_MS
        {
            return Err(invalid(
                "expires_ms",
                format!(
                    "in force for {} ms; expected more than 0 and at most {ORDER_TTL_MAX_MS} ms",
                    self.expires_ms.saturating_sub(self.issued_ms)
                ),
            ));
        }
        if self.selector.len() > SELECTOR_MAX {
            return Err(invalid(
                "selector",
                format!(
                    "{} labels; the limit is {SELECTOR_MAX}",
                    self.selector.len()
                ),
            ));
        }
        if self.actions.len() > ACTIONS_MAX || self.lifts.len() > ACTIONS_MAX {
            return Err(invalid(
                "actions",
                format!(
                    "{} actions and {} lifts; the limit is {ACTIONS_MAX} of each",
                    self.actions.len(),
                    self.lifts.len()
                ),
            ));
        }
        if self.actions.is_empty() && self.lifts.is_empty() && !self.pause_all {
            return Err(invalid(
                "actions",
                "none, nothing lifted, no pause: an order must do something".to_owned(),
            ));
        }
        if let Some(nonce) = self
            .lifts
            .iter()
            .find(|n| n.trim().is_empty() || n.len() > NONCE_MAX_BYTES || **n == self.nonce)
        {
            return Err(invalid(
                "lifts",
                format!("{nonce:?} is not another order's nonce"),
            ));
        }
        let mut units = std::collections::BTreeSet::new();
        for action in &self.actions {
            UnitName::new(action.unit().to_owned())
                .map_err(|e| invalid("actions", e.to_string()))?;
            if !units.insert(action.unit()) {
                return Err(invalid(
                    "actions",
                    format!("unit {} has two actions", action.unit()),
                ));
            }
            if let Action::Pin { version, .. } = action {
                version.parse::<VersionHash>().map_err(|_| {
                    invalid(
                        "actions",
                        format!("version {version:?} is not a SHA-256 hex"),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Whether the order selects the node `node` with `labels`.
    pub fn selects(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(key, value)| {
            if key == "node" {
                value == node
            } else {
                labels.get(key) == Some(value)
            }
        })
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }
}

impl SignedOrder {
    /// Parses an order file's text (size-checked first).
    pub fn parse(text: &str) -> Result<Self, OrderError> {
        if text.len() > ORDER_FILE_MAX_BYTES {
            return Err(OrderError::Malformed {
                reason: format!("{} bytes; the limit is {ORDER_FILE_MAX_BYTES}", text.len()),
            });
        }
        serde_json::from_str(text).map_err(|e| OrderError::Malformed {
            reason: e.to_string(),
        })
    }

    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Adds (or replaces) the signature of the key with `seed`.
    pub fn sign_with(&mut self, seed: &[u8; 32]) {
        let signature = crate::trust::sign(seed, &self.order.signed_message());
        self.signatures.retain(|s| s.key != signature.key);
        self.signatures.push(signature);
    }

    /// Verifies the order against `root` at `now_ms`: consistent, in force, and signed by the
    /// root's break-glass threshold. Replays are the caller's to refuse (it keeps the nonces).
    pub fn verify(&self, root: &RootDocument, now_ms: u64) -> Result<&Order, OrderError> {
        let order = &self.order;
        order.validate()?;
        let nonce = order.nonce.clone();
        if root.break_glass_keys.is_empty() {
            return Err(OrderError::NoKeys { nonce });
        }
        require_threshold(
            "break-glass order",
            &order.signed_message(),
            &self.signatures,
            &root.break_glass_keys,
            root.break_glass_threshold,
        )
        .map_err(|source| OrderError::Trust {
            nonce: nonce.clone(),
            source,
        })?;
        if order.is_expired(now_ms) {
            return Err(OrderError::Expired {
                nonce,
                expires_ms: order.expires_ms,
            });
        }
        if order.issued_ms > now_ms.saturating_add(CLOCK_SKEW_MAX_MS) {
            return Err(OrderError::NotYet {
                nonce,
                issued_ms: order.issued_ms,
            });
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::public_key_hex;

    fn root() -> RootDocument {
        RootDocument {
            version: 1,
            epoch: 1,
            expires_ms: u64::MAX,
            threshold: 2,
            root_keys: vec![public_key_hex(&[1; 32]), public_key_hex(&[2; 32])],
            online_keys: vec![public_key_hex(&[9; 32])],
            revoked_keys: vec![],
            break_glass_threshold: 2,
            break_glass_keys: (1..=3).map(|s| public_key_hex(&[s; 32])).collect(),
        }
    }

    fn order() -> SignedOrder {
        SignedOrder {
            order: Order {
                nonce: "n-1".into(),
                reason: "bad file everywhere".into(),
                issued_ms: 1_000,
                expires_ms: 1_000 + 3600 * 1000,
                selector: BTreeMap::from([("region".into(), "eu".into())]),
                lifts: vec![],
                pause_all: false,
                actions: vec![
                    Action::Revert {
                        unit: "features".into(),
                    },
                    Action::Pin {
                        unit: "rules".into(),
                        version: VersionHash::of(b"r").to_string(),
                    },
                ],
            },
            signatures: vec![],
        }
    }

    #[test]
    fn an_order_needs_m_of_the_break_glass_keys() {
        let mut signed = order();
        signed.sign_with(&[1; 32]);
        // A key outside the break-glass set counts for nothing.
        signed.sign_with(&[9; 32]);
        let error = signed.verify(&root(), 2_000).unwrap_err();
        assert!(error.to_string().contains("threshold not met"), "{error}");
        signed.sign_with(&[3; 32]);
        assert_eq!(signed.verify(&root(), 2_000).unwrap().nonce, "n-1");
        let again = SignedOrder::parse(&signed.to_text()).unwrap();
        assert!(again.verify(&root(), 2_000).is_ok());
        // Any change voids the signatures.
        let mut edited = again.clone();
        edited.order.selector.clear();
        assert!(matches!(
            edited.verify(&root(), 2_000),
            Err(OrderError::Trust { .. })
        ));
    }

    #[test]
    fn expiry_bounds_and_consistency_are_checked() {
        let mut signed = order();
        signed.sign_with(&[1; 32]);
        signed.sign_with(&[2; 32]);
        assert!(matches!(
            signed.verify(&root(), 1_000 + 3600 * 1000),
            Err(OrderError::Expired { .. })
        ));
        // Issued 1 s ahead of this clock: within the skew allowed.
        assert!(signed.verify(&root(), 0).is_ok());
        let mut long = order();
        long.order.expires_ms = long.order.issued_ms + ORDER_TTL_MAX_MS + 1;
        assert!(matches!(
            long.order.validate(),
            Err(OrderError::Invalid {
                field: "expires_ms",
                ..
            })
        ));
        let mut twice = order();
        twice.order.actions.push(Action::Revert {
            unit: "rules".into(),
        });
        assert!(twice.order.validate().is_err());
        let mut lift_only = order();
        lift_only.order.actions.clear();
        assert!(lift_only.order.validate().is_err());
        lift_only.order.lifts = vec!["n-0".into()];
        assert!(lift_only.order.validate().is_ok());
        lift_only.order.lifts = vec!["n-1".into()];
        assert!(
            lift_only.order.validate().is_err(),
            "an order cannot lift itself"
        );
        let mut no_reason = order();
        no_reason.order.reason = " ".into();
        assert!(no_reason.order.validate().is_err());
        let labels = BTreeMap::from([("region".to_owned(), "eu".to_owned())]);
        assert!(order().order.selects("n1", &labels));
        assert!(!order().order.selects("n1", &BTreeMap::new()));
        let mut by_node = order();
        by_node.order.selector = BTreeMap::from([("node".into(), "n2".into())]);
        assert!(by_node.order.selects("n2", &BTreeMap::new()));
        assert!(!by_node.order.selects("n1", &labels));
    }
}
