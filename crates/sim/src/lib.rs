//! failsmall-sim: a discrete-event fleet simulator in virtual time that drives the real engine.
//!
//! A [`Scenario`] describes a fleet, what a producer publishes and how bad versions hurt; [`run`]
//! replays it once per strategy (an instant global push, or a rollout plan) on the real
//! `failsmall_core::engine::Engine`, with one seeded random generator, and reports what each
//! strategy cost. [`plan_check`] answers, without simulating, how much of a fleet a plan
//! exposes before its first gate can fail and how long a rollback can take.
//!
//! Architecture invariant: the simulator never decides anything about a rollout itself; every
//! stage transition and rollback comes from the engine's actions.
#![forbid(unsafe_code)]

pub mod fleet;
pub mod plan_check;
pub mod report;
pub mod scenario;
mod sim;
mod slo;
mod yaml;

pub use fleet::{Fleet, FleetSpec};
pub use plan_check::{
    PlanCheckLimits, PlanCheckOptions, PlanCheckReport, check_plan, check_plan_on_nodes,
};
pub use report::{SimReport, StrategyMetrics, StrategyRun};
pub use scenario::{Effect, Scenario};
pub use sim::{APPLY_DELAY_MAX_MS, RunOptions, Strategy, instant_plan};
pub use yaml::{parse_duration_ms, parse_rate};

/// Why a scenario, a fleet file or a run failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("{file}:{line}:{column}: YAML syntax: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}:{line}:{column}: {field}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    #[error("{file}: {size_bytes} bytes; the limit is {max_bytes}")]
    TooLarge {
        file: String,
        size_bytes: usize,
        max_bytes: usize,
    },
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("no scenario {name:?}: not a file, and not one of the built-in scenarios ({known})")]
    UnknownScenario { name: String, known: String },
    #[error("{what}: {value} is over the limit of {max}")]
    Limit { what: String, value: u64, max: u64 },
    #[error("plan {source_name}: {message}")]
    Plan {
        source_name: String,
        message: String,
    },
    #[error("engine refused {event} at t={at_ms}ms: {message}")]
    Engine {
        event: String,
        at_ms: u64,
        message: String,
    },
}

/// Most bytes of a plan file.
const PLAN_MAX_BYTES: u64 = 1 << 20;

/// The example plans shipped with failsmall, so scenarios naming them work from any directory.
const BUILT_IN_PLANS: [(&str, &str); 2] = [
    (
        "examples/plans/default.yaml",
        include_str!("../../../examples/plans/default.yaml"),
    ),
    (
        "examples/plans/seed-hmd.yaml",
        include_str!("../../../examples/plans/seed-hmd.yaml"),
    ),
];

/// Turns a strategy as written (`instant`, or a plan file path) into a [`Strategy`]. The
/// example plans (`examples/plans/default.yaml`, `examples/plans/seed-hmd.yaml`) resolve to
/// the built-in copies when no such file exists under the current directory.
pub fn resolve_strategy(spec: &str) -> Result<Strategy, SimError> {
    if spec == "instant" || spec == "examples/plans/instant.yaml" {
        return Ok(Strategy::Instant);
    }
    let path = std::path::Path::new(spec);
    if !path.exists()
        && let Some((_, text)) = BUILT_IN_PLANS.iter().find(|(name, _)| *name == spec)
    {
        let plan =
            failsmall_core::plan::Plan::parse(spec, text).map_err(|errors| SimError::Plan {
                source_name: spec.to_owned(),
                message: errors.to_string(),
            })?;
        return Ok(Strategy::Plan {
            label: strategy_label(spec),
            plan,
        });
    }
    let read_error = |error: std::io::Error| SimError::Read {
        path: spec.to_owned(),
        message: error.to_string(),
    };
    let size_bytes = std::fs::metadata(path).map_err(read_error)?.len();
    if size_bytes > PLAN_MAX_BYTES {
        return Err(SimError::TooLarge {
            file: spec.to_owned(),
            size_bytes: usize::try_from(size_bytes).unwrap_or(usize::MAX),
            max_bytes: PLAN_MAX_BYTES as usize,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let plan = failsmall_core::plan::Plan::parse(spec, &text).map_err(|errors| SimError::Plan {
        source_name: spec.to_owned(),
        message: errors.to_string(),
    })?;
    Ok(Strategy::Plan {
        label: strategy_label(spec),
        plan,
    })
}

/// A short label for a plan path: its file stem.
fn strategy_label(spec: &str) -> String {
    std::path::Path::new(spec)
        .file_stem()
        .and_then(|stem| stem.to_str())
        .map_or_else(|| spec.to_owned(), |stem| format!("plan:{stem}"))
}

/// Runs every strategy over the scenario on the same fleet, seed and producer.
pub fn run(scenario: &Scenario, options: &RunOptions) -> Result<SimReport, SimError> {
    run_with_health_filter(scenario, options, true)
}

/// [`run`], choosing whether only the health reports the engine uses are sent to it (`true`,
/// the fast default) or every node's (`false`). Both must give identical reports.
pub fn run_with_health_filter(
    scenario: &Scenario,
    options: &RunOptions,
    health_filter: bool,
) -> Result<SimReport, SimError> {
    let seed = options.seed.unwrap_or(scenario.seed);
    let strategies = if options.strategies.is_empty() {
        scenario
            .strategies
            .iter()
            .map(|spec| resolve_strategy(spec))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        options.strategies.clone()
    };
    if strategies.len() > scenario::SCENARIO_MAX_STRATEGIES {
        return Err(SimError::Limit {
            what: "strategies in one run".to_owned(),
            value: strategies.len() as u64,
            max: scenario::SCENARIO_MAX_STRATEGIES as u64,
        });
    }
    let fleet = scenario.fleet.build(seed)?;
    let pushes = scenario.pushes();
    let runs = strategies
        .iter()
        .map(|strategy| {
            sim::run_strategy(
                scenario,
                &fleet,
                strategy,
                &pushes,
                seed,
                options.trace,
                health_filter,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SimReport {
        scenario: scenario.name.clone(),
        seed,
        duration_ms: scenario.duration_ms,
        health_interval_ms: scenario.health_interval_ms,
        nodes: fleet.nodes.len() as u64,
        runs,
    })
}
