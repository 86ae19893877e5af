//! `failsmall plan check PLAN`: how much a plan exposes before its first gate, and how long a
//! rollback can take.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use failsmall_core::duration::{format_ms, parse_duration_ms};
use failsmall_core::plan::Plan;
use failsmall_sim::{FleetSpec, PlanCheckLimits, PlanCheckOptions, check_plan};

use crate::{Outcome, Output};

/// Largest plan or fleet file read.
const FILE_MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Parse and validate a plan, then analyse it against a fleet: the worst-case share of
    /// nodes and traffic exposed before the first gate can fail, and the worst-case time from
    /// first exposure to full rollback. Exits 3 when either is over its limit.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The plan file (YAML or JSON).
    pub plan: PathBuf,
    /// A fleet file, or a scenario file whose `fleet:` section to use (default: a built-in
    /// fleet of 3 regions with the five cohorts).
    #[arg(long, value_name = "FILE")]
    pub fleet: Option<PathBuf>,
    /// Largest share of nodes or traffic that may be exposed before the first gate can fail.
    #[arg(long, value_name = "PERCENT", default_value = "5%")]
    pub max_exposure: String,
    /// Longest worst-case time from first exposure to full rollback.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub max_rollback: String,
    /// Assumed time for a desired version to reach every node.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub propagation: String,
    /// Unit name the plan would roll out (node selection depends on it).
    #[arg(long, default_value = "plan-check")]
    pub unit: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub fn run(command: &PlanCommand) -> anyhow::Result<Outcome> {
    match command {
        PlanCommand::Check(args) => check(args),
    }
}

fn read_limited(path: &Path) -> anyhow::Result<String> {
    let size_bytes = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size_bytes > FILE_MAX_BYTES {
        bail!(
            "{}: {size_bytes} bytes; the limit is {FILE_MAX_BYTES}",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parses `5%`, `12.5%` or `0.05` into a fraction 0..=1.
fn parse_fraction(flag: &str, text: &str) -> anyhow::Result<f64> {
    let value = match text.trim().strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.trim().parse::<f64>(),
    };
    match value {
        Ok(fraction) if (0.0..=1.0).contains(&fraction) => Ok(fraction),
        _ => bail!("{flag} {text:?}: expected a percentage from 0% to 100%, e.g. 5%"),
    }
}

fn parse_duration_flag(flag: &str, text: &str) -> anyhow::Result<u64> {
    parse_duration_ms(text).map_err(|error| anyhow::anyhow!("{flag} {text:?}: {error}"))
}

fn check(args: &CheckArgs) -> anyhow::Result<Outcome> {
    let limits = PlanCheckLimits {
        exposure_fraction_max: Some(parse_fraction("--max-exposure", &args.max_exposure)?),
        rollback_ms_max: Some(parse_duration_flag("--max-rollback", &args.max_rollback)?),
    };
    let propagation_ms = parse_duration_flag("--propagation", &args.propagation)?;
    let plan_name = args.plan.display().to_string();
    let plan = Plan::parse(&plan_name, &read_limited(&args.plan)?)?;
    let fleet = match &args.fleet {
        Some(path) => FleetSpec::parse(&path.display().to_string(), &read_limited(path)?)?,
        None => FleetSpec::parse("examples/fleet.yaml (built in)", BUILT_IN_FLEET)?,
    };
    let options = PlanCheckOptions {
        propagation_ms,
        unit: args.unit.clone(),
        ..PlanCheckOptions::default()
    };
    let report = check_plan(&plan, &fleet, &options)?;
    let broken = report.exceeds(&limits);
    match args.output {
        Output::Table => {
            out!("{}", report.text());
            if broken.is_empty() {
                outln!(
                    "within limits: exposure before the first gate <= {}, rollback <= {}",
                    args.max_exposure,
                    format_ms(limits.rollback_ms_max.unwrap_or_default())
                );
            }
            for line in &broken {
                outln!("OVER LIMIT: {line}");
            }
        }
        Output::Json => {
            let mut json = report.to_json();
            if let Some(object) = json.as_object_mut() {
                object.insert("over_limits".to_owned(), serde_json::json!(broken));
            }
            outln!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    Ok(if broken.is_empty() {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}

const BUILT_IN_FLEET: &str = include_str!("../../../examples/fleet.yaml");
