//! `failsmall-agent`: the agent alone, from flags (the same as `failsmall agent`). Used by
//! the crash tests, which kill it at random moments and at fail points.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "failsmall-agent", about = "failsmall's edge agent")]
struct Cli {
    #[command(flatten)]
    flags: failsmall_agent::args::AgentFlags,
}

fn main() -> std::process::ExitCode {
    // With the `failpoints` feature, FAILPOINTS=name=action configures fail points; the
    // crash tests use FAILSMALL_CRASH_AT=name to end the process abruptly there.
    let scenario = fail::FailScenario::setup();
    if let Ok(point) = std::env::var("FAILSMALL_CRASH_AT") {
        let _ = fail::cfg_callback(point, || std::process::abort());
    }
    let cli = Cli::parse();
    // Text logs on stderr, filtered as RUST_LOG says (default info).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let code = match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("failsmall-agent: {error}");
            std::process::ExitCode::FAILURE
        }
    };
    scenario.teardown();
    code
}

fn run(cli: Cli) -> Result<(), failsmall_agent::AgentError> {
    let config = cli.flags.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failsmall_agent::AgentError::Config {
            field: "runtime",
            reason: e.to_string(),
        })?;
    runtime.block_on(failsmall_agent::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    }))
}
