//! `failsmall validate UNIT FILE`: the server's push-time checks, offline. The unit's spec
//! comes from `--spec FILE` or is fetched from the server.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use failsmall_core::domain::VersionHash;
use failsmall_core::validate::{UnitSpec, validate};
use failsmall_wire::units::Unit as UnitRecord;
use serde_json::json;

use super::RemoteArgs;
use super::render::print_json;
use super::versions::PUSH_FILE_MAX_BYTES;
use crate::Outcome;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The unit whose spec the file must satisfy.
    pub unit: String,
    /// The file to check.
    pub file: PathBuf,
    /// Read the unit's spec from this file (JSON, YAML or TOML) instead of the server.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub fn run(args: &ValidateArgs) -> anyhow::Result<Outcome> {
    let content = super::read_file_limited(&args.file, PUSH_FILE_MAX_BYTES)?;
    let spec: UnitSpec = match &args.spec {
        Some(path) => super::unit::load_spec(path)?,
        None => {
            let client = args.remote.connect()?;
            let unit: UnitRecord = client.get(&format!("/v1/units/{}", args.unit), &[])?;
            UnitSpec::from(unit.spec)
        }
    };
    let hash = VersionHash::of(&content).to_string();
    let shown = args.file.display().to_string();
    let verdict = validate(&spec, &content);
    let issues = verdict.as_ref().err().cloned().unwrap_or_default();
    if args.remote.json() {
        print_json(&json!({
            "unit": args.unit,
            "file": shown,
            "hash": hash,
            "size_bytes": content.len(),
            "valid": issues.is_empty(),
            "issues": issues,
        }))?;
    }
    if issues.is_empty() {
        if !args.remote.json() {
            outln!(
                "{shown}: a valid version of unit {} ({} bytes, sha256 {hash})",
                args.unit,
                content.len()
            );
        }
        return Ok(Outcome::Success);
    }
    let lines: Vec<String> = issues
        .iter()
        .map(|issue| {
            if issue.path.is_empty() || issue.message.contains(&issue.path) {
                format!("  {shown}: {}", issue.message)
            } else {
                format!("  {shown}: {}: {}", issue.path, issue.message)
            }
        })
        .collect();
    bail!(
        "{shown} is not a valid version of unit {}; the server would refuse it for {} reason{}:\n{}",
        args.unit,
        issues.len(),
        if issues.len() == 1 { "" } else { "s" },
        lines.join("\n")
    )
}
