//! `failsmall agent`: run the edge agent for one node.

use anyhow::Context as _;
use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub flags: failsmall_agent::args::AgentFlags,
    /// Only check the flags and the unit configuration file, then exit.
    #[arg(long)]
    pub check: bool,
    /// Log lines as `text` or `json` (one object per line) on stderr; `RUST_LOG` filters.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: crate::logging::LogFormat,
}

pub fn run(args: &AgentArgs) -> anyhow::Result<Outcome> {
    let config = args
        .flags
        .clone()
        .into_config()
        .context("the agent's configuration is not valid")?;
    if args.check {
        eprintln!("agent configuration is valid");
        return Ok(Outcome::Success);
    }
    crate::logging::init(args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        failsmall_agent::run(config, crate::shutdown::signal())
            .await
            .context("the agent stopped")?;
        Ok(Outcome::Success)
    })
}
