//! The `failsmall` binary: a thin shell of subcommands over the libraries.
//!
//! Exit codes: 0 success, 1 error, 2 usage (clap), 3 the command ran and its verdict is
//! negative (a plan over its limits; a watched rollout rolled back or aborted).
#![forbid(unsafe_code)]

#[macro_use]
mod output;
mod agent_cmd;
mod codex_cmd;
mod demo_cmd;
mod demo_consumer_cmd;
mod loadgen_cmd;
mod ops;
mod plan_cmd;
mod server_cmd;
mod shutdown;
mod sim_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Release configuration gradually under health mediation, with automatic rollback.
#[derive(Debug, Parser)]
#[command(name = "failsmall", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: store, HTTP API, rollouts, signed desired state.
    Server(server_cmd::ServerArgs),
    /// Run the edge agent of one node: verify, validate, apply atomically, report.
    Agent(agent_cmd::AgentArgs),
    /// Replay a scenario on a simulated fleet and compare rollout strategies side by side.
    Sim(sim_cmd::SimArgs),
    /// Run the whole system in this process and replay the 18 Nov and 5 Dec changes through it.
    Demo(demo_cmd::DemoArgs),
    /// Run the demo consumer: an HTTP service that fails like the 18 Nov / 5 Dec proxies, or not.
    DemoConsumer(demo_consumer_cmd::DemoConsumerArgs),
    /// Send a bounded load of GET requests to local consumers and report what they answered.
    Loadgen(loadgen_cmd::LoadgenArgs),
    /// Work with plan files.
    #[command(subcommand)]
    Plan(plan_cmd::PlanCommand),
    /// The Codex: lessons as rules. Check specs and plans offline, list and explain rules.
    #[command(subcommand)]
    Codex(codex_cmd::CodexCommand),
    /// The operator commands: unit, push, diff, rollout, log, nodes, token, validate, completions.
    #[command(flatten)]
    Ops(ops::OpsCommand),
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// What a subcommand concluded, when it ran to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The command ran, and its verdict is negative.
    Negative,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => server_cmd::run(&args),
        Command::Agent(args) => agent_cmd::run(&args),
        Command::Sim(args) => sim_cmd::run(&args),
        Command::Demo(args) => demo_cmd::run(&args),
        Command::DemoConsumer(args) => demo_consumer_cmd::run(&args),
        Command::Loadgen(args) => loadgen_cmd::run(&args),
        Command::Plan(command) => plan_cmd::run(&command),
        Command::Codex(command) => codex_cmd::run(&command),
        Command::Ops(command) => ops::run(&command),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(3),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's arguments are well formed (unique names, valid defaults), checked
    /// for the whole tree at once rather than when a user first runs that subcommand.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
