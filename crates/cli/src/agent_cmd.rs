//! `failsmall agent`: run the edge agent for one node.

use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub flags: failsmall_agent::args::AgentFlags,
    /// Only check the whole configuration (flags, the --config file, the unit configuration
    /// file), print every problem, then exit: 0 valid, 1 not.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &AgentArgs) -> anyhow::Result<Outcome> {
    let loaded = args
        .flags
        .clone()
        .load()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.check {
        eprintln!("agent configuration is valid");
        return Ok(Outcome::Success);
    }
    crate::logging::init(loaded.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        failsmall_agent::run(loaded.config, crate::shutdown::signal())
            .await
            .map_err(|e| anyhow::anyhow!("the agent stopped: {e}"))?;
        Ok(Outcome::Success)
    })
}
