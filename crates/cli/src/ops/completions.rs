//! `failsmall completions SHELL`: a completion script for bash, zsh, fish, elvish or
//! PowerShell on stdout.

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

pub fn run(args: &CompletionsArgs) -> anyhow::Result<Outcome> {
    let mut command = crate::Cli::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "failsmall",
        &mut std::io::stdout(),
    );
    Ok(Outcome::Success)
}
