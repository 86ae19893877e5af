//! Names and identities: units, versions, nodes, labels.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Milliseconds. Wall-clock milliseconds since the Unix epoch in the server, virtual
/// milliseconds in the simulator; the engine does not care which.
pub type TimeMs = u64;

/// `ms` (milliseconds since the Unix epoch) as RFC 3339 in UTC, to the second:
/// `2025-11-18T11:20:00Z`. Formats a given instant; reads no clock.
pub fn rfc3339_from_ms(ms: TimeMs) -> String {
    let instant = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(instant).to_string()
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name {name:?} is {len} bytes long; the limit is {max}")]
    TooLong {
        kind: &'static str,
        name: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{kind} name {name:?} has {found:?} at byte {at}; expected ASCII letters, digits, '.', '_' or '-'"
    )]
    BadChar {
        kind: &'static str,
        name: String,
        found: char,
        at: usize,
    },
    #[error(
        "{kind} name {name:?} starts with {found:?}; expected an ASCII letter or digit first (names are file and URL path segments: '.', '..' and hidden names are not)"
    )]
    BadStart {
        kind: &'static str,
        name: String,
        found: char,
    },
}

fn check_name(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            len: name.len(),
            max,
        });
    }
    if let Some(found) = name.chars().next().filter(|c| !c.is_ascii_alphanumeric()) {
        return Err(NameError::BadStart {
            kind,
            name: name.to_owned(),
            found,
        });
    }
    if let Some((at, found)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            kind,
            name: name.to_owned(),
            found,
            at,
        });
    }
    Ok(())
}

macro_rules! checked_name {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub const MAX_BYTES: usize = $max;

            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                check_name($kind, &name, Self::MAX_BYTES)?;
                Ok(Self(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(name: String) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(name: &str) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_name!(
    /// A unit's name, e.g. `bot-features` or `waf-rules`.
    UnitName,
    "unit",
    64
);
checked_name!(
    /// A node's identity, unique in the fleet, e.g. `fra-03-017`.
    NodeId,
    "node",
    128
);

/// The SHA-256 of a version's bytes: its identity everywhere (store, wire, quarantine).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VersionHash([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version hash {given:?} is not 64 hexadecimal characters (a SHA-256)")]
pub struct VersionHashError {
    pub given: String,
}

impl VersionHash {
    /// The content hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex characters, for people.
    pub fn short(&self) -> String {
        let mut hex = hex::encode(self.0);
        hex.truncate(12);
        hex
    }
}

impl fmt::Display for VersionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for VersionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionHash({})", self.short())
    }
}

impl FromStr for VersionHash {
    type Err = VersionHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| VersionHashError {
            given: s.to_owned(),
        })?;
        Ok(Self(bytes))
    }
}

impl TryFrom<String> for VersionHash {
    type Error = VersionHashError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<VersionHash> for String {
    fn from(hash: VersionHash) -> String {
        hash.to_string()
    }
}

/// A node's labels: `region`, `pop`, `cohort`, `generation`, and any others.
pub type Labels = BTreeMap<String, String>;

/// One consuming process or host, served by one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub labels: Labels,
}

/// An immutable, content-addressed snapshot of a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub unit: UnitName,
    pub hash: VersionHash,
    pub size_bytes: u64,
    pub author: String,
    pub message: String,
    pub parent: Option<VersionHash>,
    pub created_ms: TimeMs,
}

/// How a unit's bytes are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitFormat {
    Json,
    Yaml,
    Toml,
    Raw,
}

/// What a consumer does when it has no valid version at all (it always fails stale first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Use the unit's declared safe default.
    Open,
    /// Return an error to the caller.
    Closed,
}

/// Identifies one rollout; assigned by the engine, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RolloutId(pub u64);

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(UnitName::new("bot-features").is_ok());
        assert!(matches!(UnitName::new(""), Err(NameError::Empty { .. })));
        assert!(matches!(
            UnitName::new("a b"),
            Err(NameError::BadChar { at: 1, .. })
        ));
        assert!(matches!(
            UnitName::new("x".repeat(65)),
            Err(NameError::TooLong { .. })
        ));
        // Names are directory names on agents and URL path segments: never `.`, `..` or
        // hidden.
        for bad in [".", "..", ".hidden", "-flag", "_x"] {
            assert!(
                matches!(UnitName::new(bad), Err(NameError::BadStart { .. })),
                "{bad}"
            );
            assert!(NodeId::new(bad).is_err(), "{bad}");
        }
        assert!(UnitName::new("v1.2_x-y").is_ok());
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_from_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_from_ms(1_763_424_000_999), "2025-11-18T00:00:00Z");
        assert_eq!(rfc3339_from_ms(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn version_hash_round_trips_through_hex() {
        let hash = VersionHash::of(b"features: []");
        let text = hash.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<VersionHash>().unwrap(), hash);
        assert!("zz".parse::<VersionHash>().is_err());
    }
}
