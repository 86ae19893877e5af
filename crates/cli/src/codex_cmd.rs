//! `failsmall codex`: the Codex offline — check a repository of unit specs and plans (for CI),
//! list the rules, explain one.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use failsmall_codex::offline::{self, built_in_fleet, check_paths, fleet_from_file};
use failsmall_codex::{Codex, RuleConfig};

use crate::Outcome;

#[derive(Debug, Subcommand)]
pub enum CodexCommand {
    /// Judge every unit spec and plan under PATH... by the Codex. Exits 3 when a deny rule is
    /// violated, 1 when a file does not load; warnings alone exit 0.
    Check(CheckArgs),
    /// Print every rule: id, severity, sentence, link.
    List(RulesArgs),
    /// Print one rule: its sentence, link, where it comes from, and its explanation.
    Explain(ExplainArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// SARIF 2.1.0, for code-scanning UIs.
    Sarif,
}

#[derive(Debug, Args)]
pub struct RulesArgs {
    /// A directory of team rules (`*.rego`) added to the starter Codex; repeatable.
    #[arg(long = "codex-dir", value_name = "DIR")]
    pub codex_dirs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Files or directories (walked recursively) holding unit specs and plans.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub rules: RulesArgs,
    /// The fleet plans are analysed over: a fleet file, or a scenario whose `fleet:` to use
    /// (default: examples/fleet.yaml, built in).
    #[arg(long, value_name = "FILE")]
    pub fleet: Option<PathBuf>,
    /// A label whose values distinguish consumer builds (default: generation); repeatable.
    #[arg(long = "build-label", value_name = "LABEL")]
    pub build_labels: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The rule's id, e.g. first-gate-covers-builds.
    pub rule: String,
    #[command(flatten)]
    pub rules: RulesArgs,
}

pub fn run(command: &CodexCommand) -> anyhow::Result<Outcome> {
    match command {
        CodexCommand::Check(args) => check(args),
        CodexCommand::List(args) => list(args),
        CodexCommand::Explain(args) => explain(args),
    }
}

fn load(args: &RulesArgs) -> anyhow::Result<Codex> {
    Codex::load(&args.codex_dirs).context("cannot load the Codex")
}

fn check(args: &CheckArgs) -> anyhow::Result<Outcome> {
    let codex = load(&args.rules)?;
    let fleet = match &args.fleet {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            fleet_from_file(&path.display().to_string(), &text)?
        }
        None => built_in_fleet()?,
    };
    let mut config = RuleConfig::default();
    if !args.build_labels.is_empty() {
        config.build_labels = args.build_labels.clone();
    }
    let report = check_paths(&codex, &args.paths, &fleet, &config)?;
    match args.format {
        Format::Text => out!("{}", offline::text(&report)),
        Format::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        Format::Sarif => outln!(
            "{}",
            serde_json::to_string_pretty(&failsmall_codex::sarif::sarif(&codex, &report))?
        ),
    }
    if !report.errors.is_empty() {
        bail!(
            "{} file(s) could not be loaded: {}",
            report.errors.len(),
            report.errors.join("; ")
        );
    }
    Ok(if report.denied() > 0 {
        Outcome::Negative
    } else {
        Outcome::Success
    })
}

fn list(args: &RulesArgs) -> anyhow::Result<Outcome> {
    let codex = load(args)?;
    for rule in codex.rules() {
        outln!(
            "{:<26} {:<5} {}\n{:<32} {}",
            rule.id,
            rule.severity.as_str(),
            rule.sentence,
            "",
            rule.link
        );
    }
    Ok(Outcome::Success)
}

fn explain(args: &ExplainArgs) -> anyhow::Result<Outcome> {
    let codex = load(&args.rules)?;
    let Some(rule) = codex.rule(&args.rule) else {
        let known: Vec<&str> = codex.rules().iter().map(|r| r.id.as_str()).collect();
        bail!(
            "no rule {:?}; the rules are: {}",
            args.rule,
            known.join(", ")
        );
    };
    outln!("{} ({})", rule.id, rule.severity.as_str());
    outln!("{}", rule.sentence);
    outln!("why: {}", rule.link);
    outln!(
        "from: {}{}",
        rule.file,
        if rule.starter { " (starter Codex)" } else { "" }
    );
    if let Some(doc) = Codex::starter_doc(&rule.id).filter(|_| rule.starter) {
        outln!("\n{}", doc.trim_end());
    }
    Ok(Outcome::Success)
}
