//! Desired-state documents for many nodes at once: the long poll's answers
//! ([`super::agent::desired`]).
//!
//! A change reaches many nodes with the same content: the same versions, and so the same
//! specs, health checks, stable versions and version signatures. What the engine decides for
//! one node (its units' versions, the rollouts still judging them, the units it must remove)
//! is the document's [`Shape`]; everything in a document but the node's id and its expiry is
//! encoded once per engine revision and shape ([`Shared`]), and each node's document is that
//! text with its own id and expiry appended. Each node's document is still signed on its own:
//! it names the node, so a relay cannot hand one node's document to another.
//!
//! Building and signing run on the blocking pool, a few at a time
//! ([`super::agent::DESIRED_BUILDS_AT_ONCE`]), so that a fan-out to every node leaves the async
//! workers to the requests that wait on them (a push, an operator's read).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use failsmall_core::domain::{UnitName, VersionHash};
use failsmall_core::engine::Engine;
use failsmall_core::limits::{DESIRED_DOCUMENT_MAX_BYTES, DESIRED_UNITS_MAX};
use failsmall_core::plan::HealthCheck;
use failsmall_core::validate::UnitSpec;

use crate::error::ApiError;
use crate::signing::VersionSigner;

/// Most distinct document shapes kept for one engine revision; past it the cache starts over.
/// A fleet in one rollout has a handful (the nodes the stage reached, those it did not).
pub const DOCUMENT_SHAPES_CACHED_MAX: usize = 256;
/// Most bytes of encoded text kept (a shape's text and its escaped copy); past it the cache
/// starts over. A document may be up to [`DESIRED_DOCUMENT_MAX_BYTES`], so the shape bound
/// alone would allow hundreds of MiB.
pub const DOCUMENT_CACHE_MAX_BYTES: usize = 32 * 1024 * 1024;

/// What the engine decides for one node: the part of its document that differs between nodes
/// besides its id and expiry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    /// Each unit the node should run, with its version, in the store's order of units.
    pub units: Vec<(UnitName, VersionHash)>,
    /// For a listed unit, the rollout still judging its version on the node.
    pub trial: Vec<(UnitName, u64)>,
    /// Units the node must remove.
    pub removed: Vec<String>,
}

impl Shape {
    /// The shape of `node`'s document: its versions of `names` (the units in the store, in
    /// order), their trials, and those of `pending_removals` it should not run again.
    pub(super) fn of(
        engine: &Engine,
        node: &failsmall_core::domain::NodeId,
        names: &[UnitName],
        pending_removals: &[String],
    ) -> Self {
        let units: Vec<(UnitName, VersionHash)> = names
            .iter()
            .filter_map(|unit| Some((unit.clone(), engine.desired(node, unit)?)))
            .collect();
        let trial = units
            .iter()
            .filter_map(|(unit, _)| Some((unit.clone(), engine.trial(node, unit)?.0)))
            .collect();
        // A removal stays pending until the node reports it done; a unit the node should run
        // again meanwhile is not removed.
        let removed = pending_removals
            .iter()
            .filter(|unit| {
                !units
                    .iter()
                    .any(|(listed, _)| listed.as_str() == unit.as_str())
            })
            .cloned()
            .collect();
        Self {
            units,
            trial,
            removed,
        }
    }
}

/// What the documents of one shape share, unit-wide, read from the engine with the shape.
#[derive(Debug)]
pub(super) struct UnitParts {
    /// For a listed version that a rollout is bringing, its plan's post-apply health check.
    health_checks: BTreeMap<String, HealthCheck>,
    /// Per listed unit, its stable version.
    stable: BTreeMap<String, String>,
}

impl UnitParts {
    pub(super) fn read(engine: &Engine, shape: &Shape) -> Self {
        let mut health_checks = BTreeMap::new();
        let mut stable = BTreeMap::new();
        for (unit, hash) in &shape.units {
            if let Some(check) = engine.health_check(unit, hash) {
                health_checks.insert(unit.to_string(), check.clone());
            }
            if let Some(version) = engine.stable(unit) {
                stable.insert(unit.to_string(), version.to_string());
            }
        }
        Self {
            health_checks,
            stable,
        }
    }
}

/// A document without its node and expiry (see [`Shared::head`]). The fields are those of
/// the document agents read (`crates/agent/src/verify.rs`, `WireDocument`).
#[derive(Debug, serde::Serialize)]
struct SharedDocument {
    seq: u64,
    /// The root's epoch this document is signed under (0 without a root): agents refuse a
    /// document of another epoch than the root they trust.
    epoch: u64,
    /// Unit name → version hash, for every unit the node should run.
    units: BTreeMap<String, String>,
    /// Each listed unit's validation spec, so the agent validates with the server's rules.
    specs: BTreeMap<String, UnitSpec>,
    /// For a listed version that a rollout is bringing, its plan's post-apply health check.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    health_checks: BTreeMap<String, HealthCheck>,
    /// Units the node must remove: a rollback took every version of them from it. The node
    /// removes each (its consumers fall back to their fail mode) and reports `removed`; a unit
    /// merely absent from `units` is left as it is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed: Vec<String>,
    /// Per listed unit, the rollout still judging its version on this node (its stages or its
    /// soak): the node ACKs the version for that rollout, and keeps its previous last known
    /// good until no rollout judges it any more.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    trial: BTreeMap<String, u64>,
    /// Per listed unit, its stable version (the latest whose rollout completed, soak
    /// included): a node running it makes it its last known good even when the next rollout
    /// already names a newer version.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    stable: BTreeMap<String, String>,
    /// Per listed unit, the online key's signature of its version
    /// ([`crate::signing::version_message`]): agents verify each version as well as the
    /// document.
    versions: BTreeMap<String, Arc<str>>,
}

/// What every document of one shape at one revision shares, encoded once.
#[derive(Debug)]
pub(super) struct Shared {
    /// The document's text without its closing brace and its last two fields: `expires_ms`
    /// (after this instant, ms since the Unix epoch, server clock, an agent that has heard
    /// nothing newer reports itself stale and keeps serving what it has) and `node`.
    head: String,
    /// `head` escaped as the contents of a JSON string: the answer carries the document as a
    /// string.
    head_escaped: String,
    /// Units listed.
    units: usize,
}

impl Shared {
    /// Bytes of text kept for this shape.
    fn bytes(&self) -> usize {
        self.head.len().saturating_add(self.head_escaped.len())
    }

    /// Encodes the shared part of the documents of `shape` at revision `seq`.
    pub(super) fn encode(
        seq: u64,
        shape: &Shape,
        parts: UnitParts,
        specs: &HashMap<String, UnitSpec>,
        signer: &VersionSigner,
    ) -> Result<Self, ApiError> {
        let document = SharedDocument {
            seq,
            epoch: signer.epoch(),
            units: shape
                .units
                .iter()
                .map(|(unit, hash)| (unit.to_string(), hash.to_string()))
                .collect(),
            specs: shape
                .units
                .iter()
                .filter_map(|(unit, _)| Some((unit.to_string(), specs.get(unit.as_str())?.clone())))
                .collect(),
            health_checks: parts.health_checks,
            removed: shape.removed.clone(),
            trial: shape
                .trial
                .iter()
                .map(|(unit, rollout)| (unit.to_string(), *rollout))
                .collect(),
            stable: parts.stable,
            // Each version's signature is computed once, whatever the number of nodes.
            versions: shape
                .units
                .iter()
                .map(|(unit, hash)| {
                    let hash = hash.to_string();
                    (
                        unit.to_string(),
                        signer.version_signature(unit.as_str(), &hash),
                    )
                })
                .collect(),
        };
        let text = serde_json::to_string(&document)
            .map_err(|e| ApiError::internal(format!("desired state does not serialize: {e}")))?;
        // An object with at least `seq`: the node's own fields follow after a comma.
        let head = text
            .strip_suffix('}')
            .ok_or_else(|| ApiError::internal("desired state is not encoded as an object"))?
            .to_owned();
        let head_escaped = json_string_contents(&head)?;
        Ok(Self {
            head,
            head_escaped,
            units: shape.units.len(),
        })
    }
}

/// Encoded shared parts, by shape, for one engine revision and one view of the store.
#[derive(Debug, Default)]
pub(super) struct DocumentCache {
    kept: Mutex<KeptShapes>,
}

#[derive(Debug, Default)]
struct KeptShapes {
    seq: u64,
    /// The view of the store the shapes were encoded from ([`super::agent`]'s `StoreView`).
    view: u64,
    shapes: HashMap<Shape, Arc<Shared>>,
    /// Bytes of text kept in `shapes`.
    bytes: usize,
}

impl DocumentCache {
    /// The shared part kept for `shape` at revision `seq` from view `view`.
    pub(super) fn get(&self, seq: u64, view: u64, shape: &Shape) -> Option<Arc<Shared>> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.seq != seq || kept.view != view {
            return None;
        }
        kept.shapes.get(shape).cloned()
    }

    /// Keeps `shared` for `shape` at revision `seq` from view `view`; what was kept for another
    /// revision or view goes.
    pub(super) fn keep(&self, seq: u64, view: u64, shape: Shape, shared: Arc<Shared>) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        // A build that read an older revision than the one kept does not push it out.
        if (seq, view) < (kept.seq, kept.view) {
            return;
        }
        let bytes = shared.bytes();
        if bytes > DOCUMENT_CACHE_MAX_BYTES {
            return;
        }
        if kept.seq != seq
            || kept.view != view
            || kept.shapes.len() >= DOCUMENT_SHAPES_CACHED_MAX
            || kept.bytes.saturating_add(bytes) > DOCUMENT_CACHE_MAX_BYTES
        {
            *kept = KeptShapes {
                seq,
                view,
                shapes: HashMap::new(),
                bytes: 0,
            };
        }
        if let Some(replaced) = kept.shapes.insert(shape, shared) {
            kept.bytes = kept.bytes.saturating_sub(replaced.bytes());
        }
        kept.bytes = kept.bytes.saturating_add(bytes);
    }
}

/// `text` as the contents of a JSON string (escaped, without the quotes).
fn json_string_contents(text: &str) -> Result<String, ApiError> {
    let quoted = serde_json::to_string(text)
        .map_err(|e| ApiError::internal(format!("text does not serialize: {e}")))?;
    quoted
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .map(str::to_owned)
        .ok_or_else(|| ApiError::internal("a JSON string without its quotes"))
}

/// The long poll's answer for `node`: `{"seq", "document", "signature", "key",
/// "root_version"}`, where `document` is `shared`'s text with the node's expiry and id, signed
/// for this node alone.
pub(super) fn answer(
    shared: &Shared,
    seq: u64,
    node: &str,
    expires_ms: u64,
    signer: &VersionSigner,
) -> Result<Vec<u8>, ApiError> {
    let node_json = serde_json::to_string(node)
        .map_err(|e| ApiError::internal(format!("node id does not serialize: {e}")))?;
    let tail = format!(",\"expires_ms\":{expires_ms},\"node\":{node_json}}}");
    let mut document = String::with_capacity(shared.head.len().saturating_add(tail.len()));
    document.push_str(&shared.head);
    document.push_str(&tail);
    // Pushes and unit changes that could pass the agent's limits are refused up front (see
    // `check_desired_budget`); a document over them all the same is the server's fault, said
    // loudly rather than sent to be refused.
    let (bytes, units) = (document.len(), shared.units);
    if bytes > DESIRED_DOCUMENT_MAX_BYTES || units > DESIRED_UNITS_MAX {
        return Err(ApiError::internal(format!(
            "the desired state of node {node} is {bytes} bytes with {units} units; an agent accepts \
             at most {DESIRED_DOCUMENT_MAX_BYTES} bytes and {DESIRED_UNITS_MAX} units"
        )));
    }
    let signature = signer.sign_desired(&document);
    let key = serde_json::to_string(&signer.public_key_hex())
        .map_err(|e| ApiError::internal(format!("key does not serialize: {e}")))?;
    let root_version = signer
        .root()
        .map_or_else(|| "null".to_owned(), |r| r.document.version.to_string());
    let tail_escaped = json_string_contents(&tail)?;
    let mut answer = Vec::with_capacity(
        shared
            .head_escaped
            .len()
            .saturating_add(tail_escaped.len())
            .saturating_add(key.len())
            .saturating_add(256),
    );
    answer.extend_from_slice(format!("{{\"seq\":{seq},\"document\":\"").as_bytes());
    answer.extend_from_slice(shared.head_escaped.as_bytes());
    answer.extend_from_slice(tail_escaped.as_bytes());
    answer.extend_from_slice(
        format!("\",\"signature\":\"{signature}\",\"key\":{key},\"root_version\":{root_version}}}")
            .as_bytes(),
    );
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn unit(name: &str) -> UnitName {
        UnitName::new(name).unwrap()
    }

    fn hash(byte: u8) -> VersionHash {
        VersionHash::of(&[byte])
    }

    /// A shape of two units, one on trial with a health check, and a spec whose text needs
    /// escaping inside the answer.
    fn sample() -> (Shape, UnitParts, HashMap<String, UnitSpec>) {
        let shape = Shape {
            units: vec![
                (unit("waf-rules"), hash(1)),
                (unit("bot-features"), hash(2)),
            ],
            trial: vec![(unit("waf-rules"), 7)],
            removed: vec!["old-unit".to_owned()],
        };
        let parts = UnitParts {
            health_checks: BTreeMap::from([(
                "waf-rules".to_owned(),
                HealthCheck {
                    path: "/healthz?q=\"é\"".to_owned(),
                    expect_status: 200,
                    timeout_ms: 1000,
                },
            )]),
            stable: BTreeMap::from([("bot-features".to_owned(), hash(2).to_string())]),
        };
        let spec: UnitSpec = serde_json::from_value(json!({
            "format": "json",
            "max_bytes": 4096,
            "fail_mode": "open",
            "safe_default": "{\"rules\": [\"a\\tb\", \"é\"]}\n",
        }))
        .unwrap();
        let specs = HashMap::from([
            ("waf-rules".to_owned(), spec.clone()),
            ("bot-features".to_owned(), spec),
        ]);
        (shape, parts, specs)
    }

    #[test]
    fn an_answer_carries_the_shared_text_with_the_nodes_own_fields_signed_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let signer = VersionSigner::load_or_create(dir.path()).unwrap();
        let (shape, parts, specs) = sample();
        let shared = Shared::encode(42, &shape, parts, &specs, &signer).unwrap();
        let bytes = answer(&shared, 42, "fra-03-017", 1_700_000_000_000, &signer).unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(answer["seq"], 42);
        assert_eq!(answer["root_version"], Value::Null);
        let key = answer["key"].as_str().unwrap();
        assert_eq!(key, signer.public_key_hex());
        let text = answer["document"].as_str().unwrap();
        let signature = answer["signature"].as_str().unwrap();
        assert!(crate::signing::verify_desired(key, text, signature));
        let document: Value = serde_json::from_str(text).unwrap();
        assert_eq!(document["node"], "fra-03-017");
        assert_eq!(document["expires_ms"], 1_700_000_000_000u64);
        assert_eq!(document["seq"], 42);
        assert_eq!(document["epoch"], 0);
        assert_eq!(document["units"]["waf-rules"], hash(1).to_string());
        assert_eq!(document["units"]["bot-features"], hash(2).to_string());
        assert_eq!(
            document["specs"]["waf-rules"],
            serde_json::to_value(&specs["waf-rules"]).unwrap()
        );
        assert_eq!(
            document["health_checks"]["waf-rules"]["path"],
            "/healthz?q=\"é\""
        );
        assert_eq!(document["trial"], json!({"waf-rules": 7}));
        assert_eq!(
            document["stable"],
            json!({"bot-features": hash(2).to_string()})
        );
        assert_eq!(document["removed"], json!(["old-unit"]));
        for (name, version) in [("waf-rules", hash(1)), ("bot-features", hash(2))] {
            let signature = document["versions"][name].as_str().unwrap();
            assert!(crate::signing::verify_version(
                key,
                name,
                &version.to_string(),
                signature
            ));
        }
        // Another node's document shares the text but is its own, signed for it alone.
        let other: Value = serde_json::from_slice(
            &super::answer(&shared, 42, "fra-03-018", 1_700_000_000_000, &signer).unwrap(),
        )
        .unwrap();
        let other_text = other["document"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(other_text).unwrap()["node"],
            "fra-03-018"
        );
        assert!(!crate::signing::verify_desired(key, other_text, signature));
    }

    #[test]
    fn empty_parts_are_left_out_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let signer = VersionSigner::load_or_create(dir.path()).unwrap();
        let shape = Shape {
            units: Vec::new(),
            trial: Vec::new(),
            removed: Vec::new(),
        };
        let parts = UnitParts {
            health_checks: BTreeMap::new(),
            stable: BTreeMap::new(),
        };
        let shared = Shared::encode(1, &shape, parts, &HashMap::new(), &signer).unwrap();
        let bytes = answer(&shared, 1, "n1", 5, &signer).unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        let document: Value = serde_json::from_str(answer["document"].as_str().unwrap()).unwrap();
        assert_eq!(
            document,
            json!({"seq": 1, "epoch": 0, "units": {}, "specs": {}, "versions": {},
                   "expires_ms": 5, "node": "n1"})
        );
    }

    #[test]
    fn the_cache_keeps_one_revision_and_view_and_an_older_build_does_not_push_it_out() {
        let cache = DocumentCache::default();
        let dir = tempfile::tempdir().unwrap();
        let signer = VersionSigner::load_or_create(dir.path()).unwrap();
        let (shape, parts, specs) = sample();
        let shared = Arc::new(Shared::encode(5, &shape, parts, &specs, &signer).unwrap());
        assert!(cache.get(5, 1, &shape).is_none());
        cache.keep(5, 1, shape.clone(), Arc::clone(&shared));
        assert!(cache.get(5, 1, &shape).is_some());
        assert!(cache.get(6, 1, &shape).is_none(), "another revision");
        assert!(cache.get(5, 2, &shape).is_none(), "another view");
        cache.keep(4, 1, shape.clone(), Arc::clone(&shared));
        assert!(cache.get(5, 1, &shape).is_some(), "an older build left it");
        cache.keep(6, 1, shape.clone(), shared);
        assert!(
            cache.get(5, 1, &shape).is_none(),
            "a newer revision replaced it"
        );
        assert!(cache.get(6, 1, &shape).is_some());
    }

    #[test]
    fn the_cache_holds_at_most_its_bytes() {
        let cache = DocumentCache::default();
        let half = DOCUMENT_CACHE_MAX_BYTES / 2;
        let text = |bytes: usize| Shared {
            head: "a".repeat(bytes / 2),
            head_escaped: "a".repeat(bytes / 2),
            units: 0,
        };
        let shape = |count: usize| Shape {
            units: Vec::new(),
            trial: Vec::new(),
            removed: (0..count).map(|i| format!("u{i}")).collect(),
        };
        cache.keep(1, 1, shape(1), Arc::new(text(half)));
        cache.keep(1, 1, shape(2), Arc::new(text(half - 2)));
        assert!(cache.get(1, 1, &shape(1)).is_some());
        assert!(cache.get(1, 1, &shape(2)).is_some());
        // A third would pass the bound: the cache starts over with it.
        cache.keep(1, 1, shape(3), Arc::new(text(1024)));
        assert!(cache.get(1, 1, &shape(1)).is_none());
        assert!(cache.get(1, 1, &shape(3)).is_some());
        // Text larger than the whole bound is not kept at all.
        cache.keep(1, 1, shape(4), Arc::new(text(DOCUMENT_CACHE_MAX_BYTES + 2)));
        assert!(cache.get(1, 1, &shape(4)).is_none());
        assert!(cache.get(1, 1, &shape(3)).is_some());
    }
}
