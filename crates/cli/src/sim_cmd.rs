//! `failsmall sim SCENARIO`: replay a scenario against strategies on a simulated fleet.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use failsmall_sim::{RunOptions, Scenario};

use crate::{Outcome, Output};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// A built-in scenario (nov18, dec5, healthy, subtle) or the path of a scenario file.
    pub scenario: String,
    /// Seed for the fleet, noise and delays (default: the scenario's). Printed with the result.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Strategies to compare: `instant` or a plan file; repeat the flag for several
    /// (default: the scenario's list).
    #[arg(long = "strategy", value_name = "instant|PLAN")]
    pub strategies: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Also write an SVG timeline (error rate over time, stages, rollbacks) to this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print a one-line-per-event trace of every strategy's run.
    #[arg(long)]
    pub trace: bool,
}

pub fn run(args: &SimArgs) -> anyhow::Result<Outcome> {
    let scenario = Scenario::load(&args.scenario)?;
    let strategies = args
        .strategies
        .iter()
        .map(|spec| failsmall_sim::resolve_strategy(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let options = RunOptions {
        seed: args.seed,
        strategies,
        trace: args.trace,
    };
    let report = failsmall_sim::run(&scenario, &options)?;
    if args.trace {
        out!("{}", report.trace());
    }
    match args.output {
        Output::Table => out!("{}", report.table()),
        Output::Json => outln!("{}", serde_json::to_string_pretty(&report.to_json())?),
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.svg())
            .with_context(|| format!("cannot write the SVG timeline to {}", path.display()))?;
        if args.output == Output::Table {
            outln!("timeline written to {}", path.display());
        }
    }
    Ok(Outcome::Success)
}
