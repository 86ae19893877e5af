//! `failsmall unit create|list|show|edit|delete`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};
use failsmall_core::duration::{format_ms, parse_duration_ms};
use failsmall_core::plan::Plan;
use failsmall_core::validate::UnitSpec;
use failsmall_core::yaml;
use failsmall_wire::Version;
use failsmall_wire::units::Unit as UnitRecord;
use failsmall_wire::units::{UnitDeleted, UnitList};
use failsmall_wire::units::{
    VALIDATOR_TIMEOUT_DEFAULT_MS as DEFAULT_TIMEOUT_MS, VALIDATOR_TIMEOUT_MAX_MS as MAX_TIMEOUT_MS,
    ValidatorCommand,
};
use failsmall_wire::versions::VersionList;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::RemoteArgs;
use super::render::{Table, ago, now_ms, print_json, rfc3339, short_hash};
use crate::Outcome;

/// Largest unit spec file read, in bytes.
pub const SPEC_FILE_MAX_BYTES: u64 = 1024 * 1024;
/// Versions listed by `unit show`.
pub const SHOW_VERSIONS_MAX: usize = 10;
/// Largest unit plan file read, in bytes.
pub const PLAN_FILE_MAX_BYTES: u64 = super::versions::PLAN_FILE_MAX_BYTES;

#[derive(Debug, Args)]
pub struct UnitArgs {
    #[command(subcommand)]
    pub command: UnitCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum UnitCommand {
    /// Create a unit from a spec file (JSON, YAML or TOML): format, limits, schema, fail mode;
    /// optionally with a plan and a validator command.
    Create {
        /// The unit's name.
        name: String,
        /// The spec file.
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// The team that owns it.
        #[arg(long, default_value = "")]
        owner: String,
        /// What it configures.
        #[arg(long, default_value = "")]
        description: String,
        /// The plan file (YAML or JSON) every push rolls out through, checked before sending
        /// [default: none of its own: a push rolls out through its `--plan FILE`, else the
        /// built-in default plan].
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
        #[command(flatten)]
        validator: ValidatorArgs,
    },
    /// List units.
    List,
    /// Show a unit: its spec, what a push will do (its plan, else the built-in default plan),
    /// its validator and latest versions.
    Show {
        /// The unit's name.
        name: String,
    },
    /// Delete a unit and its versions (admin); every node removes it. Refused while a rollout
    /// of it is queued, running or paused.
    Delete {
        /// The unit's name.
        name: String,
        /// Why: recorded in the changelog.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Change a unit's spec, owner, description, plan or validator command (at the revision
    /// just read); what is not given stays as it is.
    Edit {
        /// The unit's name.
        name: String,
        /// A new spec file.
        #[arg(long, value_name = "FILE")]
        spec: Option<PathBuf>,
        /// A new owner.
        #[arg(long)]
        owner: Option<String>,
        /// A new description.
        #[arg(long)]
        description: Option<String>,
        /// A new plan file (YAML or JSON), checked before sending.
        #[arg(long, value_name = "FILE", conflicts_with = "no_plan")]
        plan: Option<PathBuf>,
        /// Remove the plan: pushes then roll out through their `--plan FILE`, else the built-in
        /// default plan (`push --no-rollout` only stores).
        #[arg(long)]
        no_plan: bool,
        #[command(flatten)]
        validator: ValidatorArgs,
        /// Remove the validator command (admin only).
        #[arg(long, conflicts_with = "validator")]
        no_validator: bool,
    },
}

/// A validator command from flags: the program, its arguments, its timeout.
#[derive(Debug, Args)]
pub struct ValidatorArgs {
    /// The program the server runs on every pushed version: the version's bytes on its stdin,
    /// and `{path}` in an argument replaced by a file holding them; an argument must hold
    /// `{path}` or be `-` (no shell; admin only).
    #[arg(long, value_name = "PROGRAM")]
    validator: Option<String>,
    /// An argument to the validator program (repeatable, in order).
    #[arg(
        long,
        value_name = "ARG",
        requires = "validator",
        allow_hyphen_values = true
    )]
    validator_arg: Vec<String>,
    /// How long the validator may run before the push is refused, e.g. 5s, 500ms
    /// [default: 5s].
    #[arg(long, value_name = "DURATION", requires = "validator")]
    validator_timeout: Option<String>,
}

impl ValidatorArgs {
    /// The validator command the flags describe, checked; none when `--validator` is absent.
    fn command(&self) -> anyhow::Result<Option<ValidatorCommand>> {
        let Some(program) = &self.validator else {
            return Ok(None);
        };
        let timeout_ms = match &self.validator_timeout {
            None => DEFAULT_TIMEOUT_MS,
            Some(text) => validator_timeout_ms(text)?,
        };
        let validator = ValidatorCommand {
            command: std::iter::once(program.clone())
                .chain(self.validator_arg.iter().cloned())
                .collect(),
            timeout_ms,
        };
        // The server's own check, run here so a bad command is refused before any request.
        let checked = failsmall_server::validator::ValidatorCommand {
            command: validator.command.clone(),
            timeout_ms,
        };
        if let Err(errors) = checked.check() {
            let reasons: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
            bail!(
                "--validator {program:?}: the command is unusable:\n{}",
                reasons.join("\n")
            );
        }
        Ok(Some(validator))
    }
}

/// `--validator-timeout`: a duration from 1 ms to the server's limit.
fn validator_timeout_ms(text: &str) -> anyhow::Result<u64> {
    let timeout_ms = parse_duration_ms(text)
        .map_err(|e| anyhow::anyhow!("--validator-timeout {text:?}: {e}"))?;
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        bail!(
            "--validator-timeout {text:?}: expected from 1ms to {}",
            format_ms(MAX_TIMEOUT_MS)
        );
    }
    Ok(timeout_ms)
}

/// Reads a unit's plan file and checks it as the server will; every error as
/// `file:line:column: field: message`.
pub fn load_unit_plan(path: &Path) -> anyhow::Result<String> {
    let text = super::read_text_limited(path, PLAN_FILE_MAX_BYTES)?;
    if let Err(errors) = Plan::parse(&path.display().to_string(), &text) {
        bail!("the plan is refused; the unit was not changed:\n{errors}");
    }
    Ok(text)
}

pub fn run(args: &UnitArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let json_output = args.remote.json();
    match &args.command {
        UnitCommand::Create {
            name,
            spec,
            owner,
            description,
            plan,
            validator,
        } => {
            // Everything local is checked before anything reaches the server.
            let (_, spec) = load_spec_as_written(spec)?;
            let plan = plan.as_deref().map(load_unit_plan).transpose()?;
            let validator = validator.command()?;
            let mut body = Map::new();
            body.insert("name".to_owned(), json!(name));
            body.insert("spec".to_owned(), spec);
            body.insert("owner".to_owned(), json!(owner));
            body.insert("description".to_owned(), json!(description));
            if let Some(plan) = plan {
                body.insert("plan".to_owned(), json!(plan));
            }
            if let Some(validator) = validator {
                body.insert("validator".to_owned(), json!(validator));
            }
            let body = Value::Object(body);
            let (_, unit): (u16, UnitRecord) =
                client.send_json(Method::POST, "/v1/units", &body)?;
            if json_output {
                print_json(&unit)?;
            } else {
                outln!("unit {} created (revision {})", unit.name, unit.revision);
            }
        }
        UnitCommand::List => {
            let list: UnitList = client.get_all("/v1/units", "units")?;
            if json_output {
                print_json(&list.units)?;
            } else {
                let now = now_ms();
                let mut table =
                    Table::new(&["NAME", "FORMAT", "MAX BYTES", "OWNER", "REV", "UPDATED"]);
                for unit in &list.units {
                    table.row(vec![
                        unit.name.clone(),
                        format_name(&unit.spec),
                        unit.spec.max_bytes.to_string(),
                        unit.owner.clone(),
                        unit.revision.to_string(),
                        ago(now, unit.updated_ms),
                    ]);
                }
                out!("{}", table.render());
            }
        }
        UnitCommand::Show { name } => {
            let path = format!("/v1/units/{name}");
            let unit: UnitRecord = client.get(&path, &[])?;
            let list: VersionList = client.get_all(&format!("{path}/versions"), "versions")?;
            let versions: Vec<Version> = list.versions.into_iter().map(|v| v.version).collect();
            if json_output {
                print_json(&json!({"unit": unit, "versions": versions}))?;
            } else {
                show(&unit, &versions)?;
            }
        }
        UnitCommand::Delete { name, reason } => {
            let (_, answer): (u16, UnitDeleted) = client.send_json(
                Method::DELETE,
                &format!("/v1/units/{name}"),
                &json!({"reason": reason}),
            )?;
            if json_output {
                print_json(&answer)?;
            } else {
                let versions = answer.versions_deleted;
                outln!("unit {name} deleted with its {versions} versions; every node removes it");
            }
        }
        UnitCommand::Edit {
            name,
            spec,
            owner,
            description,
            plan,
            no_plan,
            validator,
            no_validator,
        } => {
            if spec.is_none()
                && owner.is_none()
                && description.is_none()
                && plan.is_none()
                && !no_plan
                && validator.validator.is_none()
                && !no_validator
            {
                bail!(
                    "nothing to change: give --spec FILE, --owner, --description, --plan FILE, \
                     --no-plan, --validator PROGRAM (with --validator-arg ARG and \
                     --validator-timeout DURATION) or --no-validator"
                );
            }
            // Everything local is checked before anything reaches the server.
            let new_spec = spec.as_deref().map(load_spec_as_written).transpose()?;
            let new_plan = plan.as_deref().map(load_unit_plan).transpose()?;
            let new_validator = validator.command()?;
            let path = format!("/v1/units/{name}");
            let current: UnitRecord = client.get(&path, &[])?;
            let mut body = Map::new();
            body.insert("revision".to_owned(), json!(current.revision));
            let spec = new_spec.map_or_else(|| json!(current.spec), |(_, written)| written);
            body.insert("spec".to_owned(), spec);
            let owner = owner.clone().unwrap_or(current.owner);
            body.insert("owner".to_owned(), json!(owner));
            let description = description.clone().unwrap_or(current.description);
            body.insert("description".to_owned(), json!(description));
            // Left out, the plan and the validator stay as they are on the server.
            if let Some(plan) = new_plan {
                body.insert("plan".to_owned(), json!(plan));
            } else if *no_plan {
                body.insert("plan".to_owned(), Value::Null);
            }
            if let Some(validator) = new_validator {
                body.insert("validator".to_owned(), json!(validator));
            } else if *no_validator {
                body.insert("validator".to_owned(), Value::Null);
            }
            let body = Value::Object(body);
            let (_, unit): (u16, UnitRecord) = client.send_json(Method::PUT, &path, &body)?;
            if json_output {
                print_json(&unit)?;
            } else {
                outln!(
                    "unit {} updated (revision {} → {})",
                    unit.name,
                    current.revision,
                    unit.revision
                );
            }
        }
    }
    Ok(Outcome::Success)
}

fn format_name(spec: &failsmall_wire::units::UnitSpec) -> String {
    serde_json::to_value(spec.format)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn show(unit: &UnitRecord, versions: &[Version]) -> anyhow::Result<()> {
    outln!("unit         {}", unit.name);
    outln!("owner        {}", unit.owner);
    outln!("description  {}", unit.description);
    outln!("revision     {}", unit.revision);
    outln!("created      {}", rfc3339(unit.created_ms));
    outln!("updated      {}", rfc3339(unit.updated_ms));
    outln!("plan         {}", plan_summary(unit));
    outln!(
        "validator    {}",
        validator_summary(unit.validator.as_ref())
    );
    outln!("spec");
    for line in serde_json::to_string_pretty(&unit.spec)?.lines() {
        outln!("  {line}");
    }
    if versions.is_empty() {
        outln!(
            "no versions yet; push one with `failsmall push {} FILE -m MESSAGE`",
            unit.name
        );
        return Ok(());
    }
    outln!();
    let mut table = Table::new(&["SEQ", "VERSION", "BYTES", "AUTHOR", "CREATED", "MESSAGE"]);
    for version in versions.iter().take(SHOW_VERSIONS_MAX) {
        let mut message = version.message.clone();
        if version.validation_skipped {
            message.push_str(" [validation skipped]");
        }
        table.row(vec![
            version.seq.to_string(),
            short_hash(&version.hash).to_owned(),
            version.size_bytes.to_string(),
            version.author.clone(),
            rfc3339(version.created_ms),
            message,
        ]);
    }
    out!("{}", table.render());
    Ok(())
}

/// What a push of the unit will do: roll out through its own plan, or (with none) through the
/// plan the pusher names, else the built-in default plan; each with its stages.
fn plan_summary(unit: &UnitRecord) -> String {
    let Some(text) = &unit.plan else {
        let default = match Plan::parse(
            super::versions::DEFAULT_PLAN_NAME,
            super::versions::DEFAULT_PLAN_TEXT,
        ) {
            Ok(plan) => plan_text(&plan),
            Err(_) => "the built-in default plan".to_owned(),
        };
        return format!(
            "none of its own: a push rolls out through `--plan FILE` when given, else the \
             built-in default plan {default}; `push --no-rollout` only stores the version"
        );
    };
    match Plan::parse(&format!("{}.plan", unit.name), text) {
        Ok(plan) => format!(
            "{} (its own; every push rolls out through it)",
            plan_text(&plan)
        ),
        Err(errors) => format!(
            "unreadable ({} errors; see `-o json` for its text)",
            errors.errors.len()
        ),
    }
}

/// `default: employees (bake 2m) → free-10 (10%, bake 5m) → ... ; soak 1h`.
fn plan_text(plan: &Plan) -> String {
    let stages: Vec<String> = plan
        .stages
        .iter()
        .map(|stage| {
            let mut notes = Vec::new();
            if stage.percent.basis_points < 10_000 {
                let whole = stage.percent.basis_points / 100;
                let rest = stage.percent.basis_points % 100;
                notes.push(if rest == 0 {
                    format!("{whole}%")
                } else {
                    format!("{whole}.{rest:02}%")
                });
            }
            notes.push(format!("bake {}", format_ms(stage.bake_ms)));
            if stage.approval {
                notes.push("approval".to_owned());
            }
            format!("{} ({})", stage.name, notes.join(", "))
        })
        .collect();
    format!(
        "{}: {}; soak {}",
        plan.name,
        stages.join(" → "),
        format_ms(plan.soak_ms)
    )
}

/// The validator's argv, each argument quoted where it would be ambiguous, and its timeout.
fn validator_summary(validator: Option<&ValidatorCommand>) -> String {
    let Some(validator) = validator else {
        return "none".to_owned();
    };
    let argv: Vec<String> = validator
        .command
        .iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\'');
            if plain {
                arg.clone()
            } else {
                format!("{arg:?}")
            }
        })
        .collect();
    format!(
        "{} (timeout {})",
        argv.join(" "),
        format_ms(validator.timeout_ms)
    )
}

/// Reads a unit spec from a JSON, YAML (`.yaml`, `.yml`) or TOML (`.toml`) file and checks it.
pub fn load_spec(path: &Path) -> anyhow::Result<UnitSpec> {
    load_spec_as_written(path).map(|(spec, _)| spec)
}

/// [`load_spec`], and the spec as its file writes it (without the defaults of what it leaves
/// out): what the server is sent, so that its Codex sees what the author declared.
pub fn load_spec_as_written(path: &Path) -> anyhow::Result<(UnitSpec, Value)> {
    let text = super::read_text_limited(path, SPEC_FILE_MAX_BYTES)?;
    let shown = path.display();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let written: Value = match extension.as_deref() {
        Some("toml") => toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{shown}: {}", e.to_string().trim()))?,
        Some("yaml" | "yml") => yaml::load(&text)
            .map_err(|e| anyhow::anyhow!("{shown}:{}:{}: {}", e.line, e.column, e.message))?
            .to_json(),
        _ => serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{shown}:{}:{}: {e}", e.line(), e.column()))?,
    };
    let spec: UnitSpec =
        serde_json::from_value(written.clone()).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    if let Err(errors) = spec.check() {
        let reasons: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
        bail!(
            "{shown}: the unit spec is unusable:\n{}",
            reasons.join("\n")
        );
    }
    Ok((spec, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn specs_load_from_json_yaml_and_toml_alike() {
        let dir = tempfile::tempdir().unwrap();
        let json = temp_file(
            &dir,
            "s.json",
            r#"{"format": "json", "max_bytes": 4096, "max_entries": [{"path": "/features", "max": 200}]}"#,
        );
        let yaml = temp_file(
            &dir,
            "s.yaml",
            "format: json\nmax_bytes: 4096\nmax_entries:\n  - path: /features\n    max: 200\n",
        );
        let toml = temp_file(
            &dir,
            "s.toml",
            "format = \"json\"\nmax_bytes = 4096\n[[max_entries]]\npath = \"/features\"\nmax = 200\n",
        );
        let from_json = load_spec(&json).unwrap();
        assert_eq!(load_spec(&yaml).unwrap(), from_json);
        assert_eq!(load_spec(&toml).unwrap(), from_json);
        assert_eq!(from_json.max_bytes, 4096);
    }

    #[test]
    fn validator_flags_become_a_checked_command_and_show_as_argv_and_timeout() {
        let flags = |program: Option<&str>, args: &[&str], timeout: Option<&str>| ValidatorArgs {
            validator: program.map(str::to_owned),
            validator_arg: args.iter().map(|a| (*a).to_owned()).collect(),
            validator_timeout: timeout.map(str::to_owned),
        };
        assert_eq!(flags(None, &[], None).command().unwrap(), None);
        let command = flags(Some("/bin/cat"), &["-u", "{path}"], None)
            .command()
            .unwrap()
            .unwrap();
        assert_eq!(command.command, ["/bin/cat", "-u", "{path}"]);
        assert_eq!(command.timeout_ms, DEFAULT_TIMEOUT_MS);
        let command = flags(Some("parse"), &["--check", "a b", "", "-"], Some("500ms"))
            .command()
            .unwrap();
        assert_eq!(
            validator_summary(command.as_ref()),
            r#"parse --check "a b" "" - (timeout 500ms)"#
        );
        // A command that names no input is refused before anything is sent.
        let error = flags(Some("parse"), &["--check"], None)
            .command()
            .unwrap_err();
        assert!(format!("{error:#}").contains("{path}"), "{error:#}");
        assert_eq!(validator_summary(None), "none");
        for bad in ["5", "0s", "2m"] {
            let error = flags(Some("parse"), &[], Some(bad)).command().unwrap_err();
            assert!(error.to_string().contains("--validator-timeout"), "{error}");
        }
        let error = flags(Some(""), &[], None).command().unwrap_err();
        assert!(format!("{error:#}").contains("program"), "{error:#}");
    }

    #[test]
    fn a_bad_spec_names_the_file_and_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let broken = temp_file(
            &dir,
            "broken.json",
            "{\"format\": \"json\",\n \"max_bytes\": }",
        );
        let error = format!("{:#}", load_spec(&broken).unwrap_err());
        assert!(error.contains("broken.json:2:"), "{error}");
        let unusable = temp_file(
            &dir,
            "unusable.json",
            r#"{"format": "json", "max_bytes": 0}"#,
        );
        let error = format!("{:#}", load_spec(&unusable).unwrap_err());
        assert!(error.contains("max_bytes is 0"), "{error}");
        let missing = format!(
            "{:#}",
            load_spec(Path::new("/nonexistent/spec.json")).unwrap_err()
        );
        assert!(missing.contains("/nonexistent/spec.json"), "{missing}");
    }
}
