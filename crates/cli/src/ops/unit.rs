//! `failsmall unit create|list|show|edit`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};
use failsmall_core::validate::UnitSpec;
use failsmall_core::yaml::{self, YamlKind, YamlNode};
use failsmall_server::store::{UnitRecord, VersionRecord};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::RemoteArgs;
use super::render::{Table, ago, now_ms, print_json, rfc3339, short_hash};
use crate::Outcome;

/// Largest unit spec file read, in bytes.
pub const SPEC_FILE_MAX_BYTES: u64 = 1024 * 1024;
/// Versions listed by `unit show`.
pub const SHOW_VERSIONS_MAX: usize = 10;

#[derive(Debug, Args)]
pub struct UnitArgs {
    #[command(subcommand)]
    pub command: UnitCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum UnitCommand {
    /// Create a unit from a spec file (JSON, YAML or TOML): format, limits, schema, fail mode.
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
    },
    /// List units.
    List,
    /// Show a unit: its spec and latest versions.
    Show {
        /// The unit's name.
        name: String,
    },
    /// Change a unit's spec, owner or description (at the revision just read).
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
    },
}

#[derive(Debug, Deserialize)]
struct UnitList {
    units: Vec<UnitRecord>,
}

#[derive(Debug, Deserialize)]
struct VersionList {
    versions: Vec<VersionRecord>,
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
        } => {
            let spec = load_spec(spec)?;
            let body =
                json!({"name": name, "spec": spec, "owner": owner, "description": description});
            let (_, unit): (u16, UnitRecord) =
                client.send_json(Method::POST, "/v1/units", &body)?;
            if json_output {
                print_json(&unit)?;
            } else {
                outln!("unit {} created (revision {})", unit.name, unit.revision);
            }
        }
        UnitCommand::List => {
            let list: UnitList = client.get("/v1/units", &[])?;
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
            let versions: VersionList = client.get(&format!("{path}/versions"), &[])?;
            if json_output {
                print_json(&json!({"unit": unit, "versions": versions.versions}))?;
            } else {
                show(&unit, &versions.versions)?;
            }
        }
        UnitCommand::Edit {
            name,
            spec,
            owner,
            description,
        } => {
            if spec.is_none() && owner.is_none() && description.is_none() {
                bail!("nothing to change: give --spec FILE, --owner or --description");
            }
            let path = format!("/v1/units/{name}");
            let current: UnitRecord = client.get(&path, &[])?;
            let spec = match spec {
                Some(file) => load_spec(file)?,
                None => current.spec.clone(),
            };
            let body = json!({
                "revision": current.revision,
                "spec": spec,
                "owner": owner.clone().unwrap_or(current.owner),
                "description": description.clone().unwrap_or(current.description),
            });
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

fn format_name(spec: &UnitSpec) -> String {
    serde_json::to_value(spec.format)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn show(unit: &UnitRecord, versions: &[VersionRecord]) -> anyhow::Result<()> {
    outln!("unit         {}", unit.name);
    outln!("owner        {}", unit.owner);
    outln!("description  {}", unit.description);
    outln!("revision     {}", unit.revision);
    outln!("created      {}", rfc3339(unit.created_ms));
    outln!("updated      {}", rfc3339(unit.updated_ms));
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

/// Reads a unit spec from a JSON, YAML (`.yaml`, `.yml`) or TOML (`.toml`) file and checks it.
pub fn load_spec(path: &Path) -> anyhow::Result<UnitSpec> {
    let text = super::read_text_limited(path, SPEC_FILE_MAX_BYTES)?;
    let shown = path.display();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let spec: UnitSpec = match extension.as_deref() {
        Some("toml") => toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{shown}: {}", e.to_string().trim()))?,
        Some("yaml" | "yml") => {
            let tree = yaml::load(&text)
                .map_err(|e| anyhow::anyhow!("{shown}:{}:{}: {}", e.line, e.column, e.message))?;
            serde_json::from_value(yaml_to_json(&tree))
                .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?
        }
        _ => serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{shown}:{}:{}: {e}", e.line(), e.column()))?,
    };
    if let Err(errors) = spec.check() {
        let reasons: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
        bail!(
            "{shown}: the unit spec is unusable:\n{}",
            reasons.join("\n")
        );
    }
    Ok(spec)
}

/// A YAML tree as JSON: plain scalars become null, booleans and numbers where they read as
/// such; quoted scalars stay strings.
fn yaml_to_json(node: &YamlNode) -> Value {
    match &node.kind {
        _ if node.is_null() => Value::Null,
        YamlKind::Scalar { text, plain: true } => match text.as_str() {
            "true" | "True" | "TRUE" => Value::Bool(true),
            "false" | "False" | "FALSE" => Value::Bool(false),
            _ => text
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| text.parse::<u64>().map(Value::from))
                .ok()
                .or_else(|| {
                    text.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(Value::from)
                })
                .unwrap_or_else(|| Value::String(text.clone())),
        },
        YamlKind::Scalar { text, .. } => Value::String(text.clone()),
        YamlKind::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        YamlKind::Mapping(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, value)| {
                    let key = match &key.kind {
                        YamlKind::Scalar { text, .. } => text.clone(),
                        _ => yaml_to_json(key).to_string(),
                    };
                    (key, yaml_to_json(value))
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("failsmall-cli-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn specs_load_from_json_yaml_and_toml_alike() {
        let json = temp_file(
            "s.json",
            r#"{"format": "json", "max_bytes": 4096, "max_entries": [{"path": "/features", "max": 200}]}"#,
        );
        let yaml = temp_file(
            "s.yaml",
            "format: json\nmax_bytes: 4096\nmax_entries:\n  - path: /features\n    max: 200\n",
        );
        let toml = temp_file(
            "s.toml",
            "format = \"json\"\nmax_bytes = 4096\n[[max_entries]]\npath = \"/features\"\nmax = 200\n",
        );
        let from_json = load_spec(&json).unwrap();
        assert_eq!(load_spec(&yaml).unwrap(), from_json);
        assert_eq!(load_spec(&toml).unwrap(), from_json);
        assert_eq!(from_json.max_bytes, 4096);
    }

    #[test]
    fn a_bad_spec_names_the_file_and_the_place() {
        let broken = temp_file("broken.json", "{\"format\": \"json\",\n \"max_bytes\": }");
        let error = format!("{:#}", load_spec(&broken).unwrap_err());
        assert!(error.contains("broken.json:2:"), "{error}");
        let unusable = temp_file("unusable.json", r#"{"format": "json", "max_bytes": 0}"#);
        let error = format!("{:#}", load_spec(&unusable).unwrap_err());
        assert!(error.contains("max_bytes is 0"), "{error}");
        let missing = format!(
            "{:#}",
            load_spec(Path::new("/nonexistent/spec.json")).unwrap_err()
        );
        assert!(missing.contains("/nonexistent/spec.json"), "{missing}");
    }
}
