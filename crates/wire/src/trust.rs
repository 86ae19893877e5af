//! Trust: the signed root document and the changelog's hash chain.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The keys agents trust, signed by the root keys (`root.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RootDocument {
    /// Every new root document has a higher version; agents never go back.
    pub version: u64,
    /// Raised to recover a server restored from an older backup.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeySignature {
    pub key: String,
    pub signature: String,
}

/// `GET /v1/root`: the root file the server was started with, as it is (agents verify it
/// against the root they pin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignedRoot {
    pub signed: RootDocument,
    #[serde(default)]
    pub signatures: Vec<KeySignature>,
}

/// The newest changelog row: its id and hash (`null` on an empty changelog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChainHead {
    pub id: Option<u64>,
    pub hash: Option<String>,
}

/// The first changelog row whose hash does not match its content and the row before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChainBreak {
    /// The row's id.
    pub id: u64,
    pub reason: String,
}

/// The head of an intact changelog signed with the server's key: keep it outside the server
/// and give it back to `verify` later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    pub row: u64,
    pub hash: String,
    /// Ed25519 signature (hex) of the row and hash.
    pub signature: String,
    /// The server's public key (hex).
    pub public_key: String,
}

/// Whether an earlier checkpoint's row still has its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EarlierCheckpoint {
    pub row: u64,
    pub hash: String,
    pub holds: bool,
    /// What was found, in words.
    pub reason: String,
}

/// `GET /v1/changelog/verify`: every row's hash recomputed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangelogVerification {
    /// No row is broken and the earlier checkpoint, if given, holds.
    pub intact: bool,
    /// Rows checked.
    pub rows: u64,
    pub head: ChainHead,
    /// `null` when every row holds.
    pub first_break: Option<ChainBreak>,
    /// The head signed, when the chain is intact; else `null`.
    pub checkpoint: Option<Checkpoint>,
    /// The earlier checkpoint given (`checkpoint_row`, `checkpoint_hash`) and whether it
    /// holds; `null` without one.
    pub earlier_checkpoint: Option<EarlierCheckpoint>,
}
