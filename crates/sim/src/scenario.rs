//! Scenario files: a fleet, the versions a producer publishes over virtual time, how bad
//! versions hurt, and which strategies to compare.
//!
//! # Scenario file format
//! ```yaml
//! name: nov18                  # required
//! description: ...             # optional
//! unit: bot-features           # the unit versions belong to unless they name one; default sim-config
//! units:                       # optional: more units, or a unit that starts empty
//!   - { name: waf-rules, initial: false }   # initial (default true): every node starts on a
//!                                           # known-good version of it; false: a first version
//! seed: 18                     # default seed (a run's seed overrides it); default 1
//! duration: 2h                 # required; virtual time, at most 7d
//! health_interval: 10s         # default 10s; at least 100ms
//! node_down_after: 90s         # the server's silence before a node is down; default 90s
//! fleet:                       # see FleetSpec: regions, pops_per_region, nodes_per_pop,
//!   regions: [us-east-1, eu-west-1]   # labels (shares), traffic_weight, requests_per_s,
//!   labels: { cohort: { employee: 0.02, free: 0.98 } }   # error_rate, latency_ms,
//!   error_rate_by_label: { cohort: { employee: 0.4% } }  # error_rate_by_label, latency_ms_by_label
//! versions:                    # published at fixed times, each rolled out through the plan
//!   - { at: 0s, name: good-1, effect: none }
//!   - { at: 10m, name: bad-1, effect: { crash: true, when: { generation: fl1 }, onset: 2m } }
//!   - { at: 10m, name: rules-2, unit: waf-rules, effect: { error_rate: 5% } }
//! producer:                    # optional: publishes every `every`, following `pattern`
//!   every: 5m                  # (versions of the scenario's `unit`)
//!   start: 0s                  # default 0s
//!   pattern: [good, bad]
//!   bad_effect: { crash: true }
//!   bad_distinct: false        # default false: every bad version is the same bytes
//! incidents:                   # fleet-wide, whatever version a node runs
//!   - { from: 20m, until: 50m, error_rate: 2%, latency_x: 3, when: { region: us-east-1 } }
//! dead_nodes:                  # agents that stop: no health, no ACK, no request at all
//!   - { at: 0s, share: 5%, when: { cohort: free } }   # or `nodes: 3`; optional `until: 30m`
//! slos:                        # optional: SLOs counted from the agents' health, as the server does
//!   - { name: availability, target: 99.9%, window: 30d, unit: bot-features, when: { region: us-east-1 } }
//! strategies: [instant, examples/plans/default.yaml]   # the default
//! manual_revert_after: 25m     # instant: a person reverts a bad version this long after its push
//! ```
//! Effects: `crash` (every request fails and the consumer goes down: the node sends no more
//! health, and its agent reports the crash within one health interval while the version is on
//! trial; inside the post-apply window of a plan with a health check it NACKs), `nack` (the agent
//! rejects the version), `error_rate_x` (multiply), `error_rate` (set; both relative to the
//! fleet's `error_rate`), `latency_add_ms`, restricted by `when` (labels) and delayed by `onset`.
//! A version's effect hurts only the nodes running it; the agent scrapes one consumer and reports
//! that sample for every unit the node runs, so it shows in the health of each of them, and a
//! crash is reported for every unit whose active version is on trial.
//!
//! Incidents: from `from` until `until`, a matching node fails `error_rate` of the requests
//! background noise did not fail and its median latency is multiplied by `latency_x`.
//!
//! Dead nodes: which nodes (among those matching `when`) is drawn from the run's seed. The server
//! checks liveness every 2 s, judges nothing in its first `node_down_after`, and tells the engine
//! `Liveness { down }` once a node was last heard from more than `node_down_after` ago, and
//! `up` at the first check after it is heard from again (it then applies what it missed).
//!
//! SLOs: like `failsmall slo create` (`unit` defaults to the scenario's `unit`, `when` is the
//! selector). Every health sample an agent sends counts in the SLOs covering its node, and
//! every 5 s (`failsmall_core::slo::BURN_FEED_INTERVAL_MS`) the units whose running rollouts
//! have burn-rate gates get the service's burn rates (`Event::BurnRates`), as the server's
//! feed does; without SLOs a burn-rate gate is inconclusive, as on a server without them.
//!
//! Unknown fields, duplicate keys and aliases are errors naming the file, the line and the
//! field.

use std::collections::BTreeMap;
use std::path::Path;

use failsmall_core::domain::VersionHash;
use serde::Serialize;

use crate::SimError;
use crate::fleet::FleetSpec;
use crate::yaml::{self, Field, YAML_MAX_BYTES};

/// Longest virtual time a scenario may cover.
pub const SCENARIO_MAX_DURATION_MS: u64 = 7 * 24 * 3_600_000;
/// Shortest health interval.
pub const SCENARIO_MIN_HEALTH_INTERVAL_MS: u64 = 100;
/// Most versions pushed over a scenario (scheduled plus produced).
pub const SCENARIO_MAX_PUSHES: usize = 10_000;
/// Most strategies compared in one run.
pub const SCENARIO_MAX_STRATEGIES: usize = 16;
/// Longest delay before an effect sets in.
const EFFECT_MAX_ONSET_MS: u64 = 24 * 3_600_000;
/// Most units one scenario may roll out.
pub const SCENARIO_MAX_UNITS: usize = 64;
/// Most fleet-wide incidents, and most groups of dead nodes, in one scenario.
pub const SCENARIO_MAX_WINDOWS: usize = 1_000;
/// Largest latency factor of an incident.
const INCIDENT_MAX_LATENCY_X: f64 = 1_000.0;
/// The server's default silence before a node is down (`failsmall server --node-down-after`,
/// `crates/server/src/liveness.rs`).
pub const NODE_DOWN_AFTER_MS_DEFAULT: u64 = 90_000;
/// The unit of a scenario that names none.
pub const DEFAULT_UNIT: &str = "sim-config";

/// The scenarios shipped with failsmall, usable by name from any directory.
pub const BUILT_IN: [(&str, &str); 7] = [
    ("nov18", include_str!("../../../scenarios/nov18.yaml")),
    ("dec5", include_str!("../../../scenarios/dec5.yaml")),
    ("healthy", include_str!("../../../scenarios/healthy.yaml")),
    ("subtle", include_str!("../../../scenarios/subtle.yaml")),
    ("late15", include_str!("../../../scenarios/late15.yaml")),
    ("late30", include_str!("../../../scenarios/late30.yaml")),
    (
        "bench-30k",
        include_str!("../../../scenarios/bench-30k.yaml"),
    ),
];

/// How a version hurts the nodes that run it. The default is no effect (a good version).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Effect {
    /// Every request on a matching node fails, and its consumer reports a crash once.
    pub crash: bool,
    /// The node's agent rejects the version (NACK) and keeps the one it had.
    pub nack: bool,
    /// Multiplies the background error rate.
    pub error_rate_x: Option<f64>,
    /// Sets the error rate (0..=1), after any multiplication.
    pub error_rate: Option<f64>,
    /// Added to the median latency.
    pub latency_add_ms: f64,
    /// Only nodes with all these labels are hurt; empty: every node.
    pub when: BTreeMap<String, String>,
    /// Delay after the node applies the version before the effect begins.
    pub onset_ms: u64,
}

impl Effect {
    /// True when the version hurts nobody.
    pub fn is_none(&self) -> bool {
        !self.crash
            && !self.nack
            && self.error_rate_x.is_none()
            && self.error_rate.is_none()
            && self.latency_add_ms == 0.0
    }

    fn from_yaml(field: Field<'_>, path: &str) -> Result<Effect, SimError> {
        if let Ok(text) = field.text(path) {
            return match text.trim() {
                "none" | "" => Ok(Effect::default()),
                other => Err(field.error(
                    path,
                    format!("expected `none` or a mapping of effects, found {other:?}"),
                )),
            };
        }
        let mut map = field.map(path)?;
        let mut effect = Effect::default();
        if let Some(value) = map.optional("crash") {
            effect.crash = value.bool(&map.path("crash"))?;
        }
        if let Some(value) = map.optional("nack") {
            effect.nack = value.bool(&map.path("nack"))?;
        }
        if let Some(value) = map.optional("error_rate_x") {
            let path = map.path("error_rate_x");
            let factor = value.f64(&path)?;
            if !(0.0..=1_000_000.0).contains(&factor) {
                return Err(value.error(&path, "expected a factor from 0 to 1000000"));
            }
            effect.error_rate_x = Some(factor);
        }
        if let Some(value) = map.optional("error_rate") {
            effect.error_rate = Some(value.rate(&map.path("error_rate"))?);
        }
        if let Some(value) = map.optional("latency_add_ms") {
            let path = map.path("latency_add_ms");
            let added = value.f64(&path)?;
            if !(0.0..=600_000.0).contains(&added) {
                return Err(value.error(&path, "expected from 0 to 600000 ms"));
            }
            effect.latency_add_ms = added;
        }
        if let Some(value) = map.optional("when") {
            let path = map.path("when");
            let mut labels = value.map(&path)?;
            for (key, label_value) in labels.entries() {
                effect.when.insert(
                    key.to_owned(),
                    label_value.string(&format!("{path}.{key}"))?,
                );
            }
        }
        if let Some(value) = map.optional("onset") {
            let path = map.path("onset");
            effect.onset_ms = value.duration_ms(&path)?;
            if effect.onset_ms > EFFECT_MAX_ONSET_MS {
                return Err(value.error(&path, "expected an onset of at most 24h"));
            }
        }
        map.finish(&[
            "crash",
            "nack",
            "error_rate_x",
            "error_rate",
            "latency_add_ms",
            "when",
            "onset",
        ])?;
        Ok(effect)
    }

    /// Whether a node with `labels` is hurt.
    pub fn applies_to(&self, labels: &failsmall_core::domain::Labels) -> bool {
        self.when
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// A version published at a fixed time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduledVersion {
    pub at_ms: u64,
    pub name: String,
    /// The unit it belongs to (the scenario's `unit` unless the entry names one).
    pub unit: String,
    pub effect: Effect,
}

/// A unit the scenario rolls out, and whether every node starts with a version of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitSpec {
    pub name: String,
    /// True: every node runs a known-good initial version at time 0. False: no node runs any
    /// version of the unit before its first push (a unit's first version).
    pub initial: bool,
}

/// A fleet-wide incident: from `from_ms` until `until_ms`, every node matching `when` fails
/// an extra share of its requests and answers slower, whatever version it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub from_ms: u64,
    pub until_ms: u64,
    /// Extra error rate: the share of the requests background noise did not fail that fail.
    pub error_rate: f64,
    /// Multiplies the median latency.
    pub latency_x: f64,
    /// Only nodes with all these labels; empty: every node.
    pub when: BTreeMap<String, String>,
}

/// How many nodes of a group die.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadCount {
    Nodes(u64),
    Share(f64),
}

/// Nodes that stop at `at_ms`: no agent request of any kind (no health, no ACK, no watch),
/// until `until_ms` if any. Which nodes is drawn from the seed among those matching `when`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadNodes {
    pub at_ms: u64,
    pub until_ms: Option<u64>,
    pub count: DeadCount,
    pub when: BTreeMap<String, String>,
}

/// Whether a produced version is good or bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionKind {
    Good,
    Bad,
}

/// A source that publishes a version every `every_ms`, following `pattern` in a loop.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Producer {
    pub every_ms: u64,
    /// First publication.
    pub start_ms: u64,
    pub pattern: Vec<VersionKind>,
    pub bad_effect: Effect,
    /// When false, every bad version is the same bytes (the same hash).
    pub bad_distinct: bool,
}

/// One publication, resolved: when, what, its content hash and effect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Push {
    pub at_ms: u64,
    pub name: String,
    pub unit: String,
    pub hash: VersionHash,
    pub effect: Effect,
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Where it came from (a path, or `built-in:NAME`).
    pub source: String,
    /// The unit versions belong to unless they name one.
    pub unit: String,
    /// Every unit rolled out, the default unit first.
    pub units: Vec<UnitSpec>,
    pub incidents: Vec<Incident>,
    pub dead_nodes: Vec<DeadNodes>,
    /// SLOs the control plane counts from the agents' health, for burn-rate gates.
    pub slos: Vec<failsmall_core::slo::SloSpec>,
    /// The server's silence before a node is down.
    pub node_down_after_ms: u64,
    pub seed: u64,
    pub duration_ms: u64,
    pub health_interval_ms: u64,
    pub fleet: FleetSpec,
    pub versions: Vec<ScheduledVersion>,
    pub producer: Option<Producer>,
    /// `instant` or a plan file path, in order.
    pub strategies: Vec<String>,
    /// Instant strategy: a person reverts a bad version this long after its first exposure.
    pub manual_revert_after_ms: u64,
}

const SCENARIO_FIELDS: [&str; 16] = [
    "name",
    "description",
    "unit",
    "units",
    "incidents",
    "dead_nodes",
    "slos",
    "node_down_after",
    "seed",
    "duration",
    "health_interval",
    "fleet",
    "versions",
    "producer",
    "strategies",
    "manual_revert_after",
];

impl Scenario {
    /// Loads a scenario from a file path, or by the name of a built-in one (`nov18`, `dec5`,
    /// `healthy`, `subtle`, `bench-30k`). A file named `scenarios/NAME.yaml` under the
    /// current directory wins over the built-in copy.
    pub fn load(name_or_path: &str) -> Result<Scenario, SimError> {
        let as_path = Path::new(name_or_path);
        let named = Path::new("scenarios").join(format!("{name_or_path}.yaml"));
        for path in [as_path, named.as_path()] {
            if path.is_file() {
                let shown = path.display().to_string();
                let metadata = std::fs::metadata(path).map_err(|error| SimError::Read {
                    path: shown.clone(),
                    message: error.to_string(),
                })?;
                if metadata.len() > YAML_MAX_BYTES as u64 {
                    return Err(SimError::TooLarge {
                        file: shown,
                        size_bytes: usize::try_from(metadata.len()).unwrap_or(usize::MAX),
                        max_bytes: YAML_MAX_BYTES,
                    });
                }
                let text = std::fs::read_to_string(path).map_err(|error| SimError::Read {
                    path: shown.clone(),
                    message: error.to_string(),
                })?;
                return Scenario::parse(&shown, &text);
            }
        }
        Scenario::built_in(name_or_path)
    }

    /// One of the scenarios compiled into the binary.
    pub fn built_in(name: &str) -> Result<Scenario, SimError> {
        let text = BUILT_IN
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, text)| *text)
            .ok_or_else(|| SimError::UnknownScenario {
                name: name.to_owned(),
                known: BUILT_IN
                    .iter()
                    .map(|(known, _)| *known)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mut scenario = Scenario::parse(&format!("scenarios/{name}.yaml"), text)?;
        scenario.source = format!("built-in:{name}");
        Ok(scenario)
    }

    /// Parses and validates a scenario; every error names the file, the line and the field.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, SimError> {
        let tree = yaml::parse(file, text)?;
        let root = Field { file, node: &tree };
        let mut map = root.map("")?;
        let name = map.required("name")?.string("name")?;
        let description = match map.optional("description") {
            Some(value) => value.string("description")?,
            None => String::new(),
        };
        let unit = match map.optional("unit") {
            Some(value) => {
                let unit = value.string("unit")?;
                failsmall_core::domain::UnitName::new(unit.clone())
                    .map_err(|error| value.error("unit", error.to_string()))?;
                unit
            }
            None => DEFAULT_UNIT.to_owned(),
        };
        let seed = match map.optional("seed") {
            Some(value) => value.u64("seed")?,
            None => 1,
        };
        let duration_field = map.required("duration")?;
        let duration_ms = duration_field.duration_ms("duration")?;
        if duration_ms == 0 || duration_ms > SCENARIO_MAX_DURATION_MS {
            return Err(duration_field.error("duration", "expected more than 0 and at most 7d"));
        }
        let health_interval_ms = match map.optional("health_interval") {
            Some(value) => {
                let interval_ms = value.duration_ms("health_interval")?;
                if interval_ms < SCENARIO_MIN_HEALTH_INTERVAL_MS || interval_ms > duration_ms {
                    return Err(value.error(
                        "health_interval",
                        "expected at least 100ms and at most the duration",
                    ));
                }
                interval_ms
            }
            None => 10_000,
        };
        let fleet = match map.optional("fleet") {
            Some(value) => FleetSpec::from_yaml(value, "fleet")?,
            None => FleetSpec::default(),
        };
        let mut versions = Vec::new();
        if let Some(list) = map.optional("versions") {
            for (index, item) in list.list("versions")?.into_iter().enumerate() {
                let path = format!("versions[{index}]");
                let mut entry = item.map(&path)?;
                let at_ms = entry.required("at")?.duration_ms(&format!("{path}.at"))?;
                let name = entry.required("name")?.string(&format!("{path}.name"))?;
                let version_unit = match entry.optional("unit") {
                    Some(value) => unit_name(value, &format!("{path}.unit"))?,
                    None => unit.clone(),
                };
                let effect = match entry.optional("effect") {
                    Some(value) => Effect::from_yaml(value, &format!("{path}.effect"))?,
                    None => Effect::default(),
                };
                entry.finish(&["at", "name", "unit", "effect"])?;
                versions.push(ScheduledVersion {
                    at_ms,
                    name,
                    unit: version_unit,
                    effect,
                });
            }
        }
        let producer = match map.optional("producer") {
            Some(value) => Some(Producer::from_yaml(value)?),
            None => None,
        };
        let strategies = match map.optional("strategies") {
            Some(list) => {
                let items = list.list("strategies")?;
                if items.is_empty() || items.len() > SCENARIO_MAX_STRATEGIES {
                    return Err(list.error(
                        "strategies",
                        format!("expected 1 to {SCENARIO_MAX_STRATEGIES} strategies"),
                    ));
                }
                items
                    .iter()
                    .map(|item| item.string("strategies"))
                    .collect::<Result<_, _>>()?
            }
            None => vec![
                "instant".to_owned(),
                "examples/plans/default.yaml".to_owned(),
            ],
        };
        let manual_revert_after_ms = match map.optional("manual_revert_after") {
            Some(value) => value.duration_ms("manual_revert_after")?,
            None => 25 * 60_000,
        };
        let mut units = vec![UnitSpec {
            name: unit.clone(),
            initial: true,
        }];
        let mut listed = std::collections::BTreeSet::new();
        if let Some(list) = map.optional("units") {
            let items = list.list("units")?;
            if items.len() > SCENARIO_MAX_UNITS {
                return Err(list.error(
                    "units",
                    format!("expected at most {SCENARIO_MAX_UNITS} units"),
                ));
            }
            for (index, item) in items.into_iter().enumerate() {
                let path = format!("units[{index}]");
                let mut entry = item.map(&path)?;
                let name = unit_name(entry.required("name")?, &format!("{path}.name"))?;
                let initial = match entry.optional("initial") {
                    Some(value) => value.bool(&format!("{path}.initial"))?,
                    None => true,
                };
                entry.finish(&["name", "initial"])?;
                if !listed.insert(name.clone()) {
                    return Err(item.error(&path, format!("unit {name:?} is listed twice")));
                }
                if let Some(known) = units.iter_mut().find(|known| known.name == name) {
                    known.initial = initial;
                } else {
                    units.push(UnitSpec { name, initial });
                }
            }
        }
        for version in &versions {
            if !units.iter().any(|known| known.name == version.unit) {
                if units.len() >= SCENARIO_MAX_UNITS {
                    return Err(root.error(
                        "versions",
                        format!("expected at most {SCENARIO_MAX_UNITS} units"),
                    ));
                }
                units.push(UnitSpec {
                    name: version.unit.clone(),
                    initial: true,
                });
            }
        }
        let mut incidents = Vec::new();
        if let Some(list) = map.optional("incidents") {
            let items = list.list("incidents")?;
            if items.len() > SCENARIO_MAX_WINDOWS {
                return Err(list.error(
                    "incidents",
                    format!("expected at most {SCENARIO_MAX_WINDOWS} incidents"),
                ));
            }
            for (index, item) in items.into_iter().enumerate() {
                incidents.push(Incident::from_yaml(item, &format!("incidents[{index}]"))?);
            }
        }
        let mut dead_nodes = Vec::new();
        if let Some(list) = map.optional("dead_nodes") {
            let items = list.list("dead_nodes")?;
            if items.len() > SCENARIO_MAX_WINDOWS {
                return Err(list.error(
                    "dead_nodes",
                    format!("expected at most {SCENARIO_MAX_WINDOWS} groups"),
                ));
            }
            for (index, item) in items.into_iter().enumerate() {
                dead_nodes.push(DeadNodes::from_yaml(item, &format!("dead_nodes[{index}]"))?);
            }
        }
        let mut slos = Vec::new();
        if let Some(list) = map.optional("slos") {
            let items = list.list("slos")?;
            if items.len() > failsmall_core::slo::SLOS_MAX {
                return Err(list.error(
                    "slos",
                    format!("expected at most {} SLOs", failsmall_core::slo::SLOS_MAX),
                ));
            }
            for (index, item) in items.into_iter().enumerate() {
                let slo = slo_from_yaml(item, &format!("slos[{index}]"), &unit)?;
                if slos
                    .iter()
                    .any(|other: &failsmall_core::slo::SloSpec| other.name == slo.name)
                {
                    return Err(item.error(
                        &format!("slos[{index}].name"),
                        format!("SLO {:?} is defined twice", slo.name),
                    ));
                }
                slos.push(slo);
            }
        }
        let node_down_after_ms = match map.optional("node_down_after") {
            Some(value) => {
                let after_ms = value.duration_ms("node_down_after")?;
                if after_ms == 0 || after_ms > SCENARIO_MAX_DURATION_MS {
                    return Err(
                        value.error("node_down_after", "expected more than 0 and at most 7d")
                    );
                }
                after_ms
            }
            None => NODE_DOWN_AFTER_MS_DEFAULT,
        };
        map.finish(&SCENARIO_FIELDS)?;
        let scenario = Scenario {
            name,
            description,
            source: file.to_owned(),
            unit,
            units,
            incidents,
            dead_nodes,
            slos,
            node_down_after_ms,
            seed,
            duration_ms,
            health_interval_ms,
            fleet,
            versions,
            producer,
            strategies,
            manual_revert_after_ms,
        };
        let pushes = scenario.pushes_count();
        if pushes > SCENARIO_MAX_PUSHES as u64 {
            return Err(root.error(
                "producer",
                format!("{pushes} versions would be pushed; the limit is {SCENARIO_MAX_PUSHES}"),
            ));
        }
        Ok(scenario)
    }

    fn pushes_count(&self) -> u64 {
        let produced = self.producer.as_ref().map_or(0, |producer| {
            if producer.start_ms >= self.duration_ms {
                0
            } else {
                (self.duration_ms - producer.start_ms).div_ceil(producer.every_ms.max(1))
            }
        });
        produced.saturating_add(self.versions.len() as u64)
    }

    /// Every publication before the end, in time order (scheduled versions first on ties).
    /// Content, and so the hash, is distinct per name; bad produced versions share one hash
    /// unless the producer says `bad_distinct`.
    pub fn pushes(&self) -> Vec<Push> {
        let mut pushes: Vec<Push> = self
            .versions
            .iter()
            .filter(|version| version.at_ms < self.duration_ms)
            .map(|version| Push {
                at_ms: version.at_ms,
                name: version.name.clone(),
                unit: version.unit.clone(),
                hash: VersionHash::of(
                    format!("{}/{}/{}", self.name, version.unit, version.name).as_bytes(),
                ),
                effect: version.effect.clone(),
            })
            .collect();
        if let Some(producer) = &self.producer {
            let mut good = 0u64;
            let mut bad = 0u64;
            let mut at_ms = producer.start_ms;
            let mut index = 0usize;
            while at_ms < self.duration_ms && pushes.len() < SCENARIO_MAX_PUSHES {
                let kind = producer.pattern.get(index % producer.pattern.len().max(1));
                let (name, content, effect) = match kind {
                    Some(VersionKind::Bad) => {
                        bad += 1;
                        let content = if producer.bad_distinct {
                            format!("{}/{}/bad-{bad}", self.name, self.unit)
                        } else {
                            format!("{}/{}/bad", self.name, self.unit)
                        };
                        (format!("bad-{bad}"), content, producer.bad_effect.clone())
                    }
                    _ => {
                        good += 1;
                        (
                            format!("good-{good}"),
                            format!("{}/{}/good-{good}", self.name, self.unit),
                            Effect::default(),
                        )
                    }
                };
                pushes.push(Push {
                    at_ms,
                    name,
                    unit: self.unit.clone(),
                    hash: VersionHash::of(content.as_bytes()),
                    effect,
                });
                at_ms = at_ms.saturating_add(producer.every_ms.max(1));
                index += 1;
            }
        }
        pushes.sort_by_key(|push| push.at_ms);
        pushes
    }
}

/// Checks a unit name as the engine does.
fn unit_name(field: Field<'_>, path: &str) -> Result<String, SimError> {
    let unit = field.string(path)?;
    failsmall_core::domain::UnitName::new(unit.clone())
        .map_err(|error| field.error(path, error.to_string()))?;
    Ok(unit)
}

/// Reads `when: { label: value }`.
/// One `slos:` item: `{ name, target: 99.9%, window: 30d, unit?, when? }`.
fn slo_from_yaml(
    field: Field<'_>,
    path: &str,
    default_unit: &str,
) -> Result<failsmall_core::slo::SloSpec, SimError> {
    let mut map = field.map(path)?;
    let name_field = map.required("name")?;
    let name = name_field.string(&map.path("name"))?;
    let target = map.required("target")?;
    let target_percent = target.rate(&map.path("target"))? * 100.0;
    let window = map.required("window")?;
    let window_ms = failsmall_core::slo::parse_window_ms(window.text(&map.path("window"))?)
        .map_err(|error| window.error(&map.path("window"), error.to_string()))?;
    let unit = match map.optional("unit") {
        Some(value) => {
            let unit = value.string(&map.path("unit"))?;
            failsmall_core::domain::UnitName::new(unit.clone())
                .map_err(|error| value.error(&map.path("unit"), error.to_string()))?;
            unit
        }
        None => default_unit.to_owned(),
    };
    let unit = failsmall_core::domain::UnitName::new(unit)
        .map_err(|error| field.error(path, error.to_string()))?;
    let selector = match map.optional("when") {
        Some(value) => labels_from_yaml(value, &map.path("when"))?,
        None => BTreeMap::new(),
    };
    map.finish(&["name", "target", "window", "unit", "when"])?;
    let spec = failsmall_core::slo::SloSpec {
        name,
        unit,
        selector,
        target_percent,
        window_ms,
        block_rollouts_when_exhausted: false,
        description: String::new(),
        prometheus: None,
    };
    spec.validate()
        .map_err(|error| field.error(path, error.to_string()))?;
    Ok(spec)
}

fn labels_from_yaml(field: Field<'_>, path: &str) -> Result<BTreeMap<String, String>, SimError> {
    let mut labels = field.map(path)?;
    let mut out = BTreeMap::new();
    for (key, value) in labels.entries() {
        out.insert(key.to_owned(), value.string(&format!("{path}.{key}"))?);
    }
    Ok(out)
}

impl Incident {
    fn from_yaml(field: Field<'_>, path: &str) -> Result<Incident, SimError> {
        let mut map = field.map(path)?;
        let from_ms = map.required("from")?.duration_ms(&map.path("from"))?;
        let until_field = map.required("until")?;
        let until_ms = until_field.duration_ms(&map.path("until"))?;
        if until_ms <= from_ms {
            return Err(until_field.error(&map.path("until"), "expected a time after `from`"));
        }
        let error_rate = match map.optional("error_rate") {
            Some(value) => value.rate(&map.path("error_rate"))?,
            None => 0.0,
        };
        let latency_x = match map.optional("latency_x") {
            Some(value) => {
                let factor_path = map.path("latency_x");
                let factor = value.f64(&factor_path)?;
                if !(0.0..=INCIDENT_MAX_LATENCY_X).contains(&factor) {
                    return Err(value.error(&factor_path, "expected a factor from 0 to 1000"));
                }
                factor
            }
            None => 1.0,
        };
        let when = match map.optional("when") {
            Some(value) => labels_from_yaml(value, &map.path("when"))?,
            None => BTreeMap::new(),
        };
        if error_rate == 0.0 && latency_x == 1.0 {
            return Err(field.error(path, "say how the incident hurts: error_rate or latency_x"));
        }
        map.finish(&["from", "until", "error_rate", "latency_x", "when"])?;
        Ok(Incident {
            from_ms,
            until_ms,
            error_rate,
            latency_x,
            when,
        })
    }

    /// Whether a node with `labels` is hit.
    pub fn applies_to(&self, labels: &failsmall_core::domain::Labels) -> bool {
        self.when
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

impl DeadNodes {
    fn from_yaml(field: Field<'_>, path: &str) -> Result<DeadNodes, SimError> {
        let mut map = field.map(path)?;
        let at_ms = map.required("at")?.duration_ms(&map.path("at"))?;
        let until_ms = match map.optional("until") {
            Some(value) => {
                let until_ms = value.duration_ms(&map.path("until"))?;
                if until_ms <= at_ms {
                    return Err(value.error(&map.path("until"), "expected a time after `at`"));
                }
                Some(until_ms)
            }
            None => None,
        };
        let count = match (map.optional("nodes"), map.optional("share")) {
            (Some(value), None) => DeadCount::Nodes(value.u64(&map.path("nodes"))?),
            (None, Some(value)) => DeadCount::Share(value.rate(&map.path("share"))?),
            _ => {
                return Err(
                    field.error(path, "expected exactly one of `nodes` (a count) or `share`")
                );
            }
        };
        let when = match map.optional("when") {
            Some(value) => labels_from_yaml(value, &map.path("when"))?,
            None => BTreeMap::new(),
        };
        map.finish(&["at", "until", "nodes", "share", "when"])?;
        Ok(DeadNodes {
            at_ms,
            until_ms,
            count,
            when,
        })
    }

    /// Whether a node with `labels` may be among the dead.
    pub fn applies_to(&self, labels: &failsmall_core::domain::Labels) -> bool {
        self.when
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

impl Producer {
    fn from_yaml(field: Field<'_>) -> Result<Producer, SimError> {
        let mut map = field.map("producer")?;
        let every_field = map.required("every")?;
        let every_ms = every_field.duration_ms("producer.every")?;
        if every_ms < 1_000 {
            return Err(every_field.error("producer.every", "expected at least 1s"));
        }
        let start_ms = match map.optional("start") {
            Some(value) => value.duration_ms("producer.start")?,
            None => 0,
        };
        let pattern_field = map.required("pattern")?;
        let mut pattern = Vec::new();
        for item in pattern_field.list("producer.pattern")? {
            pattern.push(match item.text("producer.pattern")? {
                "good" => VersionKind::Good,
                "bad" => VersionKind::Bad,
                other => {
                    return Err(item.error(
                        "producer.pattern",
                        format!("expected good or bad, found {other:?}"),
                    ));
                }
            });
        }
        if pattern.is_empty() || pattern.len() > 1_000 {
            return Err(pattern_field.error("producer.pattern", "expected 1 to 1000 entries"));
        }
        let bad_effect = match map.optional("bad_effect") {
            Some(value) => Effect::from_yaml(value, "producer.bad_effect")?,
            None => Effect::default(),
        };
        if pattern.contains(&VersionKind::Bad) && bad_effect.is_none() {
            return Err(field.error(
                "producer.bad_effect",
                "the pattern has bad versions; say how they hurt (e.g. { crash: true })",
            ));
        }
        let bad_distinct = match map.optional("bad_distinct") {
            Some(value) => value.bool("producer.bad_distinct")?,
            None => false,
        };
        map.finish(&["every", "start", "pattern", "bad_effect", "bad_distinct"])?;
        Ok(Producer {
            every_ms,
            start_ms,
            pattern,
            bad_effect,
            bad_distinct,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_scenarios_parse() {
        for (name, _) in BUILT_IN {
            let scenario = Scenario::built_in(name).unwrap();
            assert_eq!(scenario.name, name);
            assert!(!scenario.pushes().is_empty(), "{name}");
        }
    }

    #[test]
    fn producer_alternates_and_bad_versions_share_a_hash() {
        let scenario = Scenario::built_in("nov18").unwrap();
        let pushes = scenario.pushes();
        let bad: Vec<&Push> = pushes
            .iter()
            .filter(|push| !push.effect.is_none())
            .collect();
        let good: Vec<&Push> = pushes.iter().filter(|push| push.effect.is_none()).collect();
        assert!(bad.len() >= 2 && good.len() >= 2);
        assert!(bad.iter().all(|push| push.hash == bad[0].hash));
        assert_ne!(good[0].hash, good[1].hash);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text =
            "name: x\nduration: 1h\nversions:\n  - { at: 0s, name: a, effect: { crash: yes } }\n";
        let error = Scenario::parse("x.yaml", text).unwrap_err().to_string();
        assert!(error.starts_with("x.yaml:4:"), "{error}");
        assert!(error.contains("versions[0].effect.crash"), "{error}");
        let error = Scenario::parse("x.yaml", "name: x\nduration: 1h\nsed: 3\n").unwrap_err();
        assert!(error.to_string().starts_with("x.yaml:3:"), "{error}");
        assert!(error.to_string().contains("sed: unknown field"), "{error}");
        let error = Scenario::load("no-such-scenario").unwrap_err().to_string();
        assert!(error.contains("nov18"), "{error}");
    }

    #[test]
    fn new_sections_parse_and_their_errors_name_file_line_and_field() {
        let text = "\
name: x
duration: 1h
unit: a
units:
  - { name: b, initial: false }
incidents:
  - { from: 5m, until: 10m, error_rate: 2%, latency_x: 3, when: { region: r } }
dead_nodes:
  - { at: 0s, share: 10% }
  - { at: 1m, until: 5m, nodes: 2 }
node_down_after: 2m
versions:
  - { at: 0s, name: v1 }
  - { at: 0s, name: w1, unit: b, effect: { error_rate: 5% } }
  - { at: 0s, name: c1, unit: c }
";
        let scenario = Scenario::parse("x.yaml", text).unwrap();
        let units: Vec<(&str, bool)> = scenario
            .units
            .iter()
            .map(|unit| (unit.name.as_str(), unit.initial))
            .collect();
        assert_eq!(units, [("a", true), ("b", false), ("c", true)]);
        assert_eq!(scenario.incidents.len(), 1);
        assert_eq!(scenario.dead_nodes[1].count, DeadCount::Nodes(2));
        assert_eq!(scenario.node_down_after_ms, 120_000);
        let pushes = scenario.pushes();
        assert_eq!(pushes[1].unit, "b");
        assert_ne!(pushes[0].hash, pushes[1].hash);
        for (text, at, field) in [
            (
                "name: x\nduration: 1h\nincidents:\n  - { from: 5m, until: 5m, error_rate: 1% }\n",
                "x.yaml:4:",
                "incidents[0].until",
            ),
            (
                "name: x\nduration: 1h\nincidents:\n  - { from: 5m, until: 6m }\n",
                "x.yaml:4:",
                "incidents[0]",
            ),
            (
                "name: x\nduration: 1h\ndead_nodes:\n  - { at: 0s, nodes: 1, share: 1% }\n",
                "x.yaml:4:",
                "dead_nodes[0]",
            ),
            (
                "name: x\nduration: 1h\nunits:\n  - { name: b }\n  - { name: b }\n",
                "x.yaml:5:",
                "units[1]",
            ),
            (
                "name: x\nduration: 1h\nversions:\n  - { at: 0s, name: v, unit: \"a b\" }\n",
                "x.yaml:4:",
                "versions[0].unit",
            ),
            (
                "name: x\nduration: 1h\nfleet:\n  error_rate_by_label:\n    cohort: { e: 200% }\n",
                "x.yaml:5:",
                "fleet.error_rate_by_label.cohort.e",
            ),
        ] {
            let error = Scenario::parse("x.yaml", text).unwrap_err().to_string();
            assert!(error.starts_with(at), "{error}");
            assert!(error.contains(field), "{error}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn scenario_files_never_panic(text in "[a-z_:{}\\[\\], 0-9.%\n-]{0,300}") {
            let _ = Scenario::parse("fuzz.yaml", &text);
        }

        #[test]
        fn any_valid_number_of_nodes_per_pop_parses(nodes in 1u32..2_000, rate in 0u32..100) {
            let text = format!(
                "name: p\nduration: 1h\nfleet:\n  nodes_per_pop: {nodes}\n  error_rate: {rate}%\n"
            );
            let scenario = Scenario::parse("p.yaml", &text).unwrap();
            prop_assert_eq!(scenario.fleet.nodes_per_pop, nodes);
            prop_assert!((scenario.fleet.error_rate - f64::from(rate) / 100.0).abs() < 1e-12);
        }
    }
}
