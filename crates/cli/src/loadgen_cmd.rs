//! `failsmall loadgen`: a bounded load generator for local demo consumers.

use anyhow::Context as _;
use clap::Args;
use failsmall_demo::LoadConfig;
use failsmall_demo::loadgen::{LoadReport, parse_duration_ms};

use crate::{Outcome, Output};

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// A URL on loopback to send GET requests to; repeat for several (used in turn).
    #[arg(long = "target", value_name = "URL", required = true)]
    pub targets: Vec<String>,
    /// Requests per second, over all targets.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub rps: u32,
    /// How long to send, e.g. 30s, 500ms, 2m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration_ms)]
    pub duration: u64,
    /// Most requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub concurrency: usize,
    /// Time limit of one request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2_000)]
    pub timeout_ms: u64,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub fn run(args: &LoadgenArgs) -> anyhow::Result<Outcome> {
    let mut config = LoadConfig::new(args.targets.clone(), args.rps, args.duration);
    config.concurrency = args.concurrency;
    config.timeout_ms = args.timeout_ms;
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(failsmall_demo::loadgen::run(&config))?;
    match args.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot write the report as JSON")?
        ),
        Output::Table => print_table(&report),
    }
    Ok(Outcome::Success)
}

fn print_table(report: &LoadReport) {
    let ms = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
    outln!(
        "requests sent  {} of {} planned in {} ms ({} rps for {} ms)",
        report.requests_sent,
        report.requests_planned,
        report.elapsed_ms,
        report.rps,
        report.duration_ms
    );
    outln!("errors         {}", report.errors);
    outln!(
        "latency        p50 {}  p99 {}",
        ms(report.latency_p50_ms),
        ms(report.latency_p99_ms)
    );
    outln!(
        "{:<40} {:>8} {:>8}  responses by status",
        "TARGET",
        "SENT",
        "ERRORS"
    );
    for target in &report.targets {
        let statuses: Vec<String> = target
            .responses_by_status
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        outln!(
            "{:<40} {:>8} {:>8}  {}",
            target.target,
            target.requests_sent,
            target.errors,
            statuses.join(", ")
        );
    }
}
