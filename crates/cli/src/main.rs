//! The `failsmall` binary: a thin shell of subcommands over the libraries.
//!
//! Exit codes: 0 success, 1 error, 2 usage (clap), 3 the command ran and its verdict is
//! negative (a plan over its limits; a watched rollout rolled back or aborted).
#![forbid(unsafe_code)]

#[macro_use]
mod output;
mod agent_cmd;
mod break_glass_cmd;
mod codex_cmd;
mod demo_cmd;
mod demo_consumer_cmd;
mod keys_cmd;
mod loadgen_cmd;
mod logging;
mod ops;
mod plan_cmd;
mod relay_cmd;
mod server_cmd;
mod shutdown;
mod sim_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// jemalloc rather than the system allocator: its background thread returns the pages freed
/// after a burst of requests (a fan-out to every connected agent) to the system within seconds,
/// so the server's memory comes back to its level before the burst (ARCHITECTURE.md,
/// failsmall-server, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Release configuration gradually under health mediation, with automatic rollback.
#[derive(Debug, Parser)]
#[command(
    name = "failsmall",
    version,
    about,
    propagate_version = true,
    after_help = "The operator commands take --addr URL, --token TOKEN and -o table|json before or \
                  after the subcommand: `failsmall --addr http://cp:7070 -o json rollout list`."
)]
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
    /// Run a regional pull-through relay for agents: one hop nearer them, caching bundles and
    /// documents, spooling reports while the control plane is away.
    Relay(relay_cmd::RelayArgs),
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
    /// The offline root and the online keys: init the root, sign with a share, add, rotate
    /// and revoke online keys, start a new epoch (README: Keys).
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Emergency orders straight to agents, with the control plane down: draft, sign M of N,
    /// apply, status (README: Break glass).
    #[command(subcommand)]
    BreakGlass(break_glass_cmd::BreakGlassCommand),
    /// The Codex: lessons as rules. Check specs and plans offline, list and explain rules.
    #[command(subcommand)]
    Codex(codex_cmd::CodexCommand),
    /// The operator commands: unit, push, diff, rollout, log, nodes, token, validate, version,
    /// versions, quarantine, node, whoami, status, completions.
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

/// The flags every operator command takes (`--addr`, `--token`, `-o`/`--output`), given
/// before the subcommand (`failsmall --addr URL unit list`), are moved right after the
/// subcommand's name, where the subcommand's own global flags accept them: so they work before
/// or after it. Everything else is left where it is.
fn hoist_global_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut iter = args.into_iter();
    let mut out: Vec<std::ffi::OsString> = iter.next().into_iter().collect();
    let mut hoisted = Vec::new();
    let rest: Vec<std::ffi::OsString> = iter.collect();
    let mut index = 0;
    while let Some(arg) = rest.get(index) {
        let text = arg.to_string_lossy();
        let takes_value = matches!(
            text.as_ref(),
            "--addr" | "--token" | "--ca" | "--pin-sha256" | "-o" | "--output"
        );
        let joined = ["--addr=", "--token=", "--ca=", "--pin-sha256=", "--output="]
            .iter()
            .any(|prefix| text.starts_with(prefix))
            || (text.starts_with("-o") && text.len() > 2 && !text.starts_with("--"));
        if takes_value {
            hoisted.push(arg.clone());
            if let Some(value) = rest.get(index + 1) {
                hoisted.push(value.clone());
            }
            index += 2;
        } else if joined {
            hoisted.push(arg.clone());
            index += 1;
        } else {
            break;
        }
    }
    let mut remaining = rest.into_iter().skip(index);
    if hoisted.is_empty() {
        out.extend(remaining);
        return out;
    }
    match remaining.next() {
        // The subcommand's name, then the flags, then the rest.
        Some(subcommand) => {
            out.push(subcommand);
            out.extend(hoisted);
            out.extend(remaining);
        }
        None => out.extend(hoisted),
    }
    out
}

/// Writes `url` to `path` whole or not at all (a temporary file beside it, then a rename), so
/// a script waiting for the file never reads half an address.
fn write_addr_file(path: &std::path::Path, url: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    std::fs::write(&temporary, format!("{url}\n"))
        .with_context(|| format!("cannot write the address file {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot write the address file {}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(hoist_global_flags(std::env::args_os().collect()));
    let result = match cli.command {
        Command::Server(args) => server_cmd::run(&args),
        Command::Agent(args) => agent_cmd::run(&args),
        Command::Relay(args) => relay_cmd::run(&args),
        Command::Sim(args) => sim_cmd::run(&args),
        Command::Demo(args) => demo_cmd::run(&args),
        Command::DemoConsumer(args) => demo_consumer_cmd::run(&args),
        Command::Loadgen(args) => loadgen_cmd::run(&args),
        Command::Plan(command) => plan_cmd::run(&command),
        Command::Keys(command) => keys_cmd::run(&command),
        Command::BreakGlass(command) => break_glass_cmd::run(&command),
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

    /// The README's reference names every command (as `failsmall SUB ...`) and every long
    /// flag of each, so that a flag cannot be added without telling people.
    #[test]
    fn the_readme_names_every_command_and_flag() {
        let readme = include_str!("../../../README.md");
        let mut missing = Vec::new();
        let mut stack = vec![(String::from("failsmall"), super::Cli::command())];
        while let Some((path, command)) = stack.pop() {
            for sub in command.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                let sub_path = format!("{path} {}", sub.get_name());
                // A subcommand is named in full (`failsmall rollout undo`), or among its
                // siblings (`failsmall rollout pause|resume|...`).
                let named = readme.contains(&sub_path)
                    || readme.lines().any(|line| {
                        line.contains(&format!("{path} "))
                            && line
                                .split(|c: char| c.is_whitespace() || c == '|' || c == '`')
                                .any(|word| word == sub.get_name())
                    });
                if !named {
                    missing.push(sub_path.clone());
                }
                stack.push((sub_path, sub.clone()));
            }
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else {
                    continue;
                };
                if matches!(long, "help" | "version") {
                    continue;
                }
                // Named long, or by its short form (`-o json`, `-m "..."`).
                let short = arg
                    .get_short()
                    .is_some_and(|short| readme.contains(&format!(" -{short} ")));
                if !readme.contains(&format!("--{long}")) && !short {
                    missing.push(format!("{path} --{long}"));
                }
            }
        }
        missing.sort();
        assert!(
            missing.is_empty(),
            "README.md does not name: {}",
            missing.join(", ")
        );
    }

    fn hoisted(args: &[&str]) -> Vec<String> {
        super::hoist_global_flags(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn global_flags_before_the_subcommand_move_after_its_name() {
        assert_eq!(
            hoisted(&["failsmall", "--addr", "h:1", "-o", "json", "unit", "list"]),
            ["failsmall", "unit", "--addr", "h:1", "-o", "json", "list"]
        );
        assert_eq!(
            hoisted(&["failsmall", "--token=t", "-ojson", "nodes"]),
            ["failsmall", "nodes", "--token=t", "-ojson"]
        );
        // Anything else stays where it is.
        let untouched = ["failsmall", "unit", "list", "--addr", "h:1"];
        assert_eq!(hoisted(&untouched), untouched);
        assert_eq!(hoisted(&["failsmall", "--help"]), ["failsmall", "--help"]);
    }
}
