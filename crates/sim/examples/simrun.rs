//! A small runner for trying scenarios by hand:
//! `cargo run --release -p failsmall-sim --example simrun -- SCENARIO [--seed N] [--plan FILE]... [--svg FILE] [--trace] [--json]`
use failsmall_sim::{RunOptions, Scenario, Strategy, resolve_strategy, run};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let scenario = Scenario::load(&args.next().unwrap_or_else(|| "nov18".to_owned()))?;
    let mut options = RunOptions::default();
    let mut svg = None;
    let mut json = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => options.seed = args.next().and_then(|s| s.parse().ok()),
            "--plan" => options
                .strategies
                .push(resolve_strategy(&args.next().unwrap_or_default())?),
            "--instant" => options.strategies.push(Strategy::Instant),
            "--svg" => svg = args.next(),
            "--trace" => options.trace = true,
            "--json" => json = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let started = std::time::Instant::now();
    let report = run(&scenario, &options)?;
    eprintln!("wall time {:?}", started.elapsed());
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.table());
    }
    if options.trace {
        print!("{}", report.trace());
    }
    if let Some(path) = svg {
        std::fs::write(path, report.svg())?;
    }
    Ok(())
}
