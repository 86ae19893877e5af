//! Deterministic, stable node selection for stages.
//!
//! Architecture invariant: which nodes a stage selects depends only on the unit's name, the
//! node's id and labels, and the plan. Each node falls in a bucket in `0..BUCKETS`, computed
//! from SHA-256 (so it is the same on every machine, every run, in every language); a stage
//! with `percent` selects the nodes matching its selector whose bucket is below
//! `percent.basis_points`. The nodes exposed at stage `i` are the union of the selections of
//! stages `0..=i`, so they only grow.

use sha2::{Digest, Sha256};

use crate::domain::{Labels, NodeId, UnitName};
use crate::plan::{Percent, Stage};

/// Number of buckets: one per basis point.
pub const BUCKETS: u32 = 10_000;

/// The node's bucket for the unit, in `0..BUCKETS`: the first 8 bytes of
/// SHA-256(unit name, 0x00, node id), big-endian, modulo [`BUCKETS`].
pub fn bucket(unit: &UnitName, node: &NodeId) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(unit.as_str().as_bytes());
    hasher.update([0u8]);
    hasher.update(node.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    for (slot, byte) in first.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    let wide = u64::from_be_bytes(first) % u64::from(BUCKETS);
    // `wide` < 10_000, so it always fits.
    u32::try_from(wide).unwrap_or(BUCKETS - 1)
}

/// Whether a node in `bucket` falls inside `percent`.
pub fn bucket_within(bucket: u32, percent: Percent) -> bool {
    bucket < percent.basis_points
}

/// Whether `stage` selects the node (selector and percent).
pub fn stage_selects(stage: &Stage, unit: &UnitName, node: &NodeId, labels: &Labels) -> bool {
    stage.selector.matches(labels) && bucket_within(bucket(unit, node), stage.percent)
}

/// Whether any of `stages[..=upto]` selects the node: membership in the set exposed once stage
/// `upto` is entered. The node's bucket is computed once.
pub fn exposed_by(
    stages: &[Stage],
    upto: usize,
    unit: &UnitName,
    node: &NodeId,
    labels: &Labels,
) -> bool {
    let mut node_bucket = None;
    for stage in stages.iter().take(upto.saturating_add(1)) {
        if !stage.selector.matches(labels) {
            continue;
        }
        let node_bucket = *node_bucket.get_or_insert_with(|| bucket(unit, node));
        if bucket_within(node_bucket, stage.percent) {
            return true;
        }
    }
    false
}

/// The nodes exposed once stage `upto` is entered, over `nodes`, sorted by id.
pub fn exposed_set<'a>(
    stages: &[Stage],
    upto: usize,
    unit: &UnitName,
    nodes: impl IntoIterator<Item = (&'a NodeId, &'a Labels)>,
) -> Vec<NodeId> {
    let mut exposed: Vec<NodeId> = nodes
        .into_iter()
        .filter(|(node, labels)| exposed_by(stages, upto, unit, node, labels))
        .map(|(node, _)| node.clone())
        .collect();
    exposed.sort();
    exposed.dedup();
    exposed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{HardSignals, Selector};

    fn stage(percent_bp: u32, labels: &[(&str, &str)]) -> Stage {
        let mut selector = Selector::default();
        for (key, value) in labels {
            selector
                .labels
                .entry((*key).to_owned())
                .or_default()
                .push((*value).to_owned());
        }
        Stage {
            name: "s".into(),
            selector,
            percent: Percent {
                basis_points: percent_bp,
            },
            bake_ms: 0,
            timeout_ms: 0,
            gates: vec![],
            min_requests: 0,
            hard_signals: HardSignals::default(),
            silence_ms: 0,
            approval: false,
            approvers: 0,
        }
    }

    #[test]
    fn bucket_is_stable_and_spread() {
        let unit = UnitName::new("bot-features").unwrap();
        let node = NodeId::new("fra-03-017").unwrap();
        // Pinned: the value must never change between releases or machines.
        let pinned = bucket(&unit, &node);
        assert_eq!(pinned, bucket(&unit, &node));
        let mut digest = Sha256::new();
        digest.update(b"bot-features\0fra-03-017");
        let bytes = digest.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes[..8]);
        assert_eq!(u64::from(pinned), u64::from_be_bytes(first) % 10_000);

        let below_half = (0..2_000)
            .filter(|i| bucket(&unit, &NodeId::new(format!("n{i}")).unwrap()) < 5_000)
            .count();
        assert!((850..=1_150).contains(&below_half), "{below_half}");
    }

    #[test]
    fn percent_bounds_select_none_and_all() {
        let unit = UnitName::new("u").unwrap();
        let node = NodeId::new("n1").unwrap();
        let labels = Labels::new();
        assert!(!stage_selects(&stage(0, &[]), &unit, &node, &labels));
        assert!(stage_selects(&stage(10_000, &[]), &unit, &node, &labels));
    }

    #[test]
    fn exposure_is_a_union_over_earlier_stages() {
        let unit = UnitName::new("u").unwrap();
        let stages = vec![stage(10_000, &[("cohort", "employee")]), stage(0, &[])];
        let node = NodeId::new("n1").unwrap();
        let mut labels = Labels::new();
        labels.insert("cohort".into(), "employee".into());
        assert!(exposed_by(&stages, 0, &unit, &node, &labels));
        assert!(exposed_by(&stages, 1, &unit, &node, &labels));
        labels.insert("cohort".into(), "free".into());
        assert!(!exposed_by(&stages, 1, &unit, &node, &labels));
    }
}
