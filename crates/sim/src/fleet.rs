//! The fleet: regions × POPs × nodes, labels assigned in exact shares from a seed, and traffic
//! weights per label value.

use std::collections::BTreeMap;

use failsmall_core::domain::{Labels, Node, NodeId};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::SimError;
use crate::yaml::{self, Field};

/// Most nodes a fleet may have.
pub const FLEET_MAX_NODES: u64 = 1_000_000;
/// Most regions, and most values of one label.
const FLEET_MAX_NAMES: usize = 1_000;

/// A fleet as a scenario or fleet file describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetSpec {
    pub regions: Vec<String>,
    pub pops_per_region: u32,
    pub nodes_per_pop: u32,
    /// Label key → (value, share of nodes), shares summing to 1.
    pub labels: BTreeMap<String, Vec<(String, f64)>>,
    /// Label key → value → requests-per-second multiplier (1.0 when absent).
    pub traffic_weight: BTreeMap<String, BTreeMap<String, f64>>,
    /// Mean requests per second per node of weight 1.
    pub requests_per_s: f64,
    /// Background error rate, 0..=1.
    pub error_rate: f64,
    /// Background median latency.
    pub latency_ms: f64,
    /// Label key → value → background error rate of the nodes with that label (a node matching
    /// several takes the largest; a node matching none, `error_rate`).
    pub error_rate_by_label: BTreeMap<String, BTreeMap<String, f64>>,
    /// Label key → value → background median latency, like `error_rate_by_label`.
    pub latency_ms_by_label: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            regions: vec!["region-1".to_owned()],
            pops_per_region: 1,
            nodes_per_pop: 10,
            labels: BTreeMap::new(),
            traffic_weight: BTreeMap::new(),
            requests_per_s: 50.0,
            error_rate: 0.001,
            latency_ms: 40.0,
            error_rate_by_label: BTreeMap::new(),
            latency_ms_by_label: BTreeMap::new(),
        }
    }
}

/// A built fleet: nodes in a fixed order (node number = index), with their traffic weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub nodes: Vec<Node>,
    /// Requests-per-second multiplier per node, same order as `nodes`.
    pub traffic_weight: Vec<f64>,
    /// Background error rate per node, same order as `nodes`.
    pub error_rate: Vec<f64>,
    /// Background median latency per node, same order as `nodes`.
    pub latency_ms: Vec<f64>,
}

/// Longest background median latency.
const FLEET_MAX_LATENCY_MS: f64 = 60_000.0;

const FLEET_FIELDS: [&str; 10] = [
    "regions",
    "pops_per_region",
    "nodes_per_pop",
    "labels",
    "traffic_weight",
    "requests_per_s",
    "error_rate",
    "latency_ms",
    "error_rate_by_label",
    "latency_ms_by_label",
];

impl FleetSpec {
    /// Parses a standalone fleet file (the same shape as a scenario's `fleet:` section).
    pub fn parse(file: &str, text: &str) -> Result<FleetSpec, SimError> {
        let tree = yaml::parse(file, text)?;
        let root = Field { file, node: &tree };
        let mut top = root.map("")?;
        // A fleet file may be either the section itself or a document with a `fleet:` key.
        if let Some(section) = top.optional("fleet") {
            let spec = FleetSpec::from_yaml(section, "fleet")?;
            top.finish(&["fleet"])?;
            return Ok(spec);
        }
        FleetSpec::from_yaml(root, "")
    }

    pub(crate) fn from_yaml(field: Field<'_>, path: &str) -> Result<FleetSpec, SimError> {
        let mut map = field.map(path)?;
        let defaults = FleetSpec::default();
        let regions = match map.optional("regions") {
            Some(list) => {
                let path = map.path("regions");
                let items = list.list(&path)?;
                if items.is_empty() || items.len() > FLEET_MAX_NAMES {
                    return Err(
                        list.error(&path, format!("expected 1 to {FLEET_MAX_NAMES} regions"))
                    );
                }
                items
                    .iter()
                    .map(|item| item.string(&path))
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => defaults.regions,
        };
        let mut count = |key: &str, default: u32| -> Result<u32, SimError> {
            match map.optional(key) {
                Some(value) => {
                    let path = if path.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{path}.{key}")
                    };
                    let number = value.u64(&path)?;
                    u32::try_from(number)
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| value.error(&path, "expected a count from 1 to 4294967295"))
                }
                None => Ok(default),
            }
        };
        let pops_per_region = count("pops_per_region", defaults.pops_per_region)?;
        let nodes_per_pop = count("nodes_per_pop", defaults.nodes_per_pop)?;
        let mut labels = BTreeMap::new();
        if let Some(section) = map.optional("labels") {
            let section_path = map.path("labels");
            let mut keys = section.map(&section_path)?;
            for (key, shares_field) in keys.entries() {
                let key_path = format!("{section_path}.{key}");
                let mut shares_map = shares_field.map(&key_path)?;
                let mut shares = Vec::new();
                for (value, share) in shares_map.entries() {
                    let share_path = format!("{key_path}.{value}");
                    let share_value = share.rate(&share_path)?;
                    shares.push((value.to_owned(), share_value));
                }
                let total: f64 = shares.iter().map(|(_, share)| share).sum();
                if shares.is_empty() || shares.len() > FLEET_MAX_NAMES || (total - 1.0).abs() > 0.01
                {
                    return Err(shares_field.error(
                        &key_path,
                        format!("expected 1 to {FLEET_MAX_NAMES} shares summing to 1, found a sum of {total}"),
                    ));
                }
                if key == "region" || key == "pop" {
                    return Err(shares_field.error(
                        &key_path,
                        "region and pop labels come from the fleet's layout",
                    ));
                }
                labels.insert(key.to_owned(), shares);
            }
        }
        let mut traffic_weight = BTreeMap::new();
        if let Some(section) = map.optional("traffic_weight") {
            let section_path = map.path("traffic_weight");
            let mut keys = section.map(&section_path)?;
            for (key, weights_field) in keys.entries() {
                let key_path = format!("{section_path}.{key}");
                let mut weights_map = weights_field.map(&key_path)?;
                let mut weights = BTreeMap::new();
                for (value, weight) in weights_map.entries() {
                    let weight_path = format!("{key_path}.{value}");
                    let number = weight.f64(&weight_path)?;
                    if !(0.0..=1_000.0).contains(&number) {
                        return Err(
                            weight.error(&weight_path, "expected a multiplier from 0 to 1000")
                        );
                    }
                    weights.insert(value.to_owned(), number);
                }
                traffic_weight.insert(key.to_owned(), weights);
            }
        }
        let requests_per_s = match map.optional("requests_per_s") {
            Some(value) => {
                let path = map.path("requests_per_s");
                let number = value.f64(&path)?;
                if !(0.0..=1_000_000.0).contains(&number) {
                    return Err(
                        value.error(&path, "expected requests per second from 0 to 1000000")
                    );
                }
                number
            }
            None => defaults.requests_per_s,
        };
        let error_rate = match map.optional("error_rate") {
            Some(value) => value.rate(&map.path("error_rate"))?,
            None => defaults.error_rate,
        };
        let latency_ms = match map.optional("latency_ms") {
            Some(value) => {
                let path = map.path("latency_ms");
                let number = value.f64(&path)?;
                if !(0.0..=FLEET_MAX_LATENCY_MS).contains(&number) {
                    return Err(value.error(&path, "expected a latency from 0 to 60000 ms"));
                }
                number
            }
            None => defaults.latency_ms,
        };
        let error_rate_by_label = match map.optional("error_rate_by_label") {
            Some(section) => {
                let section_path = map.path("error_rate_by_label");
                by_label(section, &section_path, |value, path| value.rate(path))?
            }
            None => BTreeMap::new(),
        };
        let latency_ms_by_label = match map.optional("latency_ms_by_label") {
            Some(section) => {
                let section_path = map.path("latency_ms_by_label");
                by_label(section, &section_path, |value, path| {
                    let number = value.f64(path)?;
                    if (0.0..=FLEET_MAX_LATENCY_MS).contains(&number) {
                        Ok(number)
                    } else {
                        Err(value.error(path, "expected a latency from 0 to 60000 ms"))
                    }
                })?
            }
            None => BTreeMap::new(),
        };
        map.finish(&FLEET_FIELDS)?;
        let spec = FleetSpec {
            regions,
            pops_per_region,
            nodes_per_pop,
            labels,
            traffic_weight,
            requests_per_s,
            error_rate,
            latency_ms,
            error_rate_by_label,
            latency_ms_by_label,
        };
        let nodes = spec.node_count();
        if nodes > FLEET_MAX_NODES {
            return Err(field.error(
                path,
                format!("the fleet has {nodes} nodes; the limit is {FLEET_MAX_NODES}"),
            ));
        }
        Ok(spec)
    }

    /// Regions × POPs per region × nodes per POP.
    pub fn node_count(&self) -> u64 {
        (self.regions.len() as u64)
            .saturating_mul(u64::from(self.pops_per_region))
            .saturating_mul(u64::from(self.nodes_per_pop))
    }

    /// Builds the fleet. Node `i` is `{region}-p{pop}-n{node}`. Labels are dealt in key order;
    /// each key's values are dealt in exact shares (largest remainder) within every group of
    /// nodes that agree on the keys dealt before it, then shuffled with a generator seeded from
    /// `seed` and the key, so the same seed always gives the same fleet and every cohort holds
    /// every generation in proportion.
    pub fn build(&self, seed: u64) -> Result<Fleet, SimError> {
        let count = self.node_count();
        if count > FLEET_MAX_NODES || count == 0 {
            return Err(SimError::Limit {
                what: "fleet nodes".to_owned(),
                value: count,
                max: FLEET_MAX_NODES,
            });
        }
        let count = usize::try_from(count).map_err(|_| SimError::Limit {
            what: "fleet nodes".to_owned(),
            value: count,
            max: FLEET_MAX_NODES,
        })?;
        let mut nodes = Vec::with_capacity(count);
        for region in &self.regions {
            for pop in 0..self.pops_per_region {
                let pop_name = format!("{region}-p{pop:02}");
                for number in 0..self.nodes_per_pop {
                    let name = format!("{pop_name}-n{number:03}");
                    let id = NodeId::new(name.clone()).map_err(|error| SimError::Invalid {
                        file: "fleet".to_owned(),
                        line: 0,
                        column: 0,
                        field: "regions".to_owned(),
                        message: format!("node id {name:?}: {error}"),
                    })?;
                    let mut labels = Labels::new();
                    labels.insert("region".to_owned(), region.clone());
                    labels.insert("pop".to_owned(), pop_name.clone());
                    nodes.push(Node { id, labels });
                }
            }
        }
        let mut dealt_keys: Vec<&String> = Vec::new();
        for (key, shares) in &self.labels {
            // Deal within each group of nodes that share the values of the labels dealt so
            // far, so that every cohort (say) holds every generation in proportion.
            let mut groups: BTreeMap<Vec<&str>, Vec<usize>> = BTreeMap::new();
            for (index, node) in nodes.iter().enumerate() {
                let group = dealt_keys
                    .iter()
                    .map(|dealt| node.labels.get(*dealt).map_or("", String::as_str))
                    .collect();
                groups.entry(group).or_default().push(index);
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ label_key_hash(key));
            let mut assigned: Vec<(usize, usize)> = Vec::with_capacity(count);
            for members in groups.values() {
                let mut order: Vec<usize> = Vec::with_capacity(members.len());
                for (value_index, how_many) in deal_shares(shares, members.len()).iter().enumerate()
                {
                    order.extend(std::iter::repeat_n(value_index, *how_many));
                }
                order.shuffle(&mut rng);
                assigned.extend(members.iter().copied().zip(order));
            }
            for (node_index, value_index) in assigned {
                if let (Some(node), Some((value, _))) =
                    (nodes.get_mut(node_index), shares.get(value_index))
                {
                    node.labels.insert(key.clone(), value.clone());
                }
            }
            dealt_keys.push(key);
        }
        let traffic_weight = nodes
            .iter()
            .map(|node| self.weight_of(&node.labels))
            .collect();
        let error_rate = nodes
            .iter()
            .map(|node| by_label_value(&self.error_rate_by_label, &node.labels, self.error_rate))
            .collect();
        let latency_ms = nodes
            .iter()
            .map(|node| by_label_value(&self.latency_ms_by_label, &node.labels, self.latency_ms))
            .collect();
        Ok(Fleet {
            nodes,
            traffic_weight,
            error_rate,
            latency_ms,
        })
    }

    /// The requests-per-second multiplier for a node with `labels`: the product of its labels'
    /// weights.
    pub fn weight_of(&self, labels: &Labels) -> f64 {
        self.traffic_weight
            .iter()
            .filter_map(|(key, weights)| labels.get(key).and_then(|value| weights.get(value)))
            .product()
    }
}

/// Reads a `label key → value → number` section, each number read by `read`.
fn by_label(
    section: Field<'_>,
    section_path: &str,
    read: impl Fn(&Field<'_>, &str) -> Result<f64, SimError>,
) -> Result<BTreeMap<String, BTreeMap<String, f64>>, SimError> {
    let mut keys = section.map(section_path)?;
    let mut out = BTreeMap::new();
    for (key, values_field) in keys.entries() {
        let key_path = format!("{section_path}.{key}");
        let mut values_map = values_field.map(&key_path)?;
        let mut values = BTreeMap::new();
        for (value, number) in values_map.entries() {
            values.insert(
                value.to_owned(),
                read(&number, &format!("{key_path}.{value}"))?,
            );
        }
        out.insert(key.to_owned(), values);
    }
    Ok(out)
}

/// The largest value a node's labels take in `by_label`, or `default` when none matches.
fn by_label_value(
    by_label: &BTreeMap<String, BTreeMap<String, f64>>,
    labels: &Labels,
    default: f64,
) -> f64 {
    by_label
        .iter()
        .filter_map(|(key, values)| labels.get(key).and_then(|value| values.get(value)))
        .copied()
        .reduce(f64::max)
        .unwrap_or(default)
}

/// Splits `count` items across shares by the largest-remainder method: the counts sum to
/// `count` exactly and each is within one of `share × count`.
fn deal_shares(shares: &[(String, f64)], count: usize) -> Vec<usize> {
    let total: f64 = shares.iter().map(|(_, share)| share).sum();
    if total <= 0.0 {
        return vec![0; shares.len()];
    }
    let exact: Vec<f64> = shares
        .iter()
        .map(|(_, share)| share / total * count as f64)
        .collect();
    let mut dealt: Vec<usize> = exact.iter().map(|value| value.floor() as usize).collect();
    let mut left = count.saturating_sub(dealt.iter().sum());
    let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
    by_remainder.sort_by(|a, b| {
        let rem = |i: &usize| exact.get(*i).map_or(0.0, |v| v - v.floor());
        rem(b).total_cmp(&rem(a)).then(a.cmp(b))
    });
    for index in by_remainder {
        if left == 0 {
            break;
        }
        if let Some(slot) = dealt.get_mut(index) {
            *slot += 1;
            left -= 1;
        }
    }
    dealt
}

/// FNV-1a of a label key, to give each label its own shuffle.
fn label_key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "\
regions: [a, b]
pops_per_region: 2
nodes_per_pop: 25
labels:
  cohort: { free: 0.5, pro: 0.3, enterprise: 0.2 }
traffic_weight:
  cohort: { enterprise: 3.0 }
";

    #[test]
    fn shares_are_exact_and_seeded() {
        let spec = FleetSpec::parse("fleet.yaml", SPEC).unwrap();
        let fleet = spec.build(7).unwrap();
        assert_eq!(fleet.nodes.len(), 100);
        let enterprise = fleet
            .nodes
            .iter()
            .filter(|n| n.labels.get("cohort").map(String::as_str) == Some("enterprise"))
            .count();
        assert_eq!(enterprise, 20);
        let weight: f64 = fleet.traffic_weight.iter().sum();
        assert!((weight - (80.0 + 60.0)).abs() < 1e-9, "{weight}");
        assert_eq!(fleet, spec.build(7).unwrap());
        assert_ne!(fleet, spec.build(8).unwrap());
        assert_eq!(fleet.nodes[0].id.as_str(), "a-p00-n000");
        assert_eq!(fleet.nodes[0].labels["pop"], "a-p00");
    }

    #[test]
    fn unknown_fields_and_bad_shares_are_refused_with_lines() {
        let error = FleetSpec::parse("f.yaml", "regions: [a]\nnodes_per_pod: 3\n").unwrap_err();
        assert!(error.to_string().starts_with("f.yaml:2:"), "{error}");
        assert!(error.to_string().contains("nodes_per_pod"), "{error}");
        let error =
            FleetSpec::parse("f.yaml", "labels:\n  cohort: { a: 0.5, b: 0.2 }\n").unwrap_err();
        assert!(error.to_string().contains("summing to 1"), "{error}");
    }

    #[test]
    fn dealing_is_exact() {
        let shares = vec![("a".to_owned(), 0.28), ("b".to_owned(), 0.72)];
        assert_eq!(deal_shares(&shares, 10), vec![3, 7]);
        assert_eq!(deal_shares(&shares, 100), vec![28, 72]);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn dealt_counts_sum_exactly_and_stay_within_one(
            shares in proptest::collection::vec(0.001f64..1.0, 1..8),
            count in 0usize..5_000,
        ) {
            let named: Vec<(String, f64)> =
                shares.iter().enumerate().map(|(i, s)| (format!("v{i}"), *s)).collect();
            let total: f64 = shares.iter().sum();
            let dealt = deal_shares(&named, count);
            prop_assert_eq!(dealt.iter().sum::<usize>(), count);
            for (dealt, share) in dealt.iter().zip(shares.iter()) {
                let exact = share / total * count as f64;
                prop_assert!((*dealt as f64 - exact).abs() < 1.0 + 1e-9);
            }
        }

        #[test]
        fn fleet_files_never_panic(text in "[a-z_:{}\\[\\], 0-9.%\n-]{0,200}") {
            let _ = FleetSpec::parse("fuzz.yaml", &text);
        }
    }
}

#[cfg(test)]
mod stratified {
    use super::*;

    #[test]
    fn every_cohort_holds_every_generation() {
        let spec = FleetSpec::parse(
            "f.yaml",
            "regions: [a, b, c]\npops_per_region: 4\nnodes_per_pop: 10\nlabels:\n  cohort: { employee: 0.02, free: 0.98 }\n  generation: { fl1: 0.28, fl2: 0.72 }\n",
        )
        .unwrap();
        for seed in 0..20 {
            let fleet = spec.build(seed).unwrap();
            let employees: Vec<&Node> = fleet
                .nodes
                .iter()
                .filter(|n| n.labels["cohort"] == "employee")
                .collect();
            assert_eq!(employees.len(), 2);
            assert_eq!(
                employees
                    .iter()
                    .filter(|n| n.labels["generation"] == "fl1")
                    .count(),
                1
            );
            let fl1 = fleet
                .nodes
                .iter()
                .filter(|n| n.labels["generation"] == "fl1")
                .count();
            assert!((33..=35).contains(&fl1), "{fl1}");
        }
    }
}
