//! `failsmall push UNIT FILE -m MSG` and `failsmall diff UNIT V1 V2`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use failsmall_core::plan::Plan;
use failsmall_wire::Version;
use failsmall_wire::rollouts::Rollout as RolloutView;
use failsmall_wire::units::Unit as UnitRecord;
use reqwest::Method;
use serde_json::json;

use super::RemoteArgs;
use super::client::ApiClient;
use super::render::{print_json, short_hash};
use super::rollout::{stage_text, status_name};
use crate::Outcome;

/// Largest file pushed, in bytes (the server's default body limit).
pub const PUSH_FILE_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Largest plan file read, in bytes.
pub const PLAN_FILE_MAX_BYTES: u64 = 1024 * 1024;
/// Shortest version hash prefix accepted by `diff`.
pub const HASH_PREFIX_MIN_CHARS: usize = 4;
/// The plan `push` uses when no `--plan` is given.
pub const DEFAULT_PLAN_NAME: &str = "examples/plans/default.yaml";
pub const DEFAULT_PLAN_TEXT: &str = include_str!("../../../../examples/plans/default.yaml");

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The unit to push to.
    pub unit: String,
    /// The file whose bytes become the new version.
    pub file: PathBuf,
    /// Why: recorded with the version and in the changelog.
    #[arg(short = 'm', long)]
    pub message: String,
    /// The plan to roll out through (YAML or JSON) [default: the unit's own plan, else the
    /// built-in default plan: employees, 10% of free, free, pro + business, enterprise]. Not
    /// for a unit with its own plan.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Only store the version; start no rollout (not for a unit with its own plan).
    #[arg(long, conflicts_with = "plan")]
    pub no_rollout: bool,
    /// Refuse the push unless the unit's newest version is this hash.
    #[arg(long, value_name = "HASH")]
    pub parent: Option<String>,
    /// Store the version even if validation fails (admin only; recorded in the changelog).
    #[arg(long)]
    pub skip_validation: bool,
    /// Roll out a quarantined version anyway (admin only).
    #[arg(long)]
    pub override_quarantine: bool,
    /// Roll out during a freeze (admin only; the message is the reason, logged).
    #[arg(long)]
    pub override_freeze: bool,
    /// Start the rollout although an SLO of the unit has spent its error budget (admin only;
    /// the message is the reason, recorded in the changelog).
    #[arg(long)]
    pub override_error_budget: bool,
    /// Then follow the rollout it started as `rollout watch` does: exits 0 when it completes,
    /// 3 when it is rolled back or aborted.
    #[arg(long, conflicts_with = "no_rollout")]
    pub watch: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The unit.
    pub unit: String,
    /// The older version (a hash, or a unique prefix of at least 4 characters).
    pub from: String,
    /// The newer version (a hash, or a unique prefix of at least 4 characters).
    pub to: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

use failsmall_wire::versions::VersionList;

/// Reads and parses a plan file; every error as `file:line:column: field: message`.
pub fn load_plan(path: Option<&Path>) -> anyhow::Result<(String, String)> {
    let (name, text) = match path {
        Some(path) => (
            path.display().to_string(),
            super::read_text_limited(path, PLAN_FILE_MAX_BYTES)?,
        ),
        None => (DEFAULT_PLAN_NAME.to_owned(), DEFAULT_PLAN_TEXT.to_owned()),
    };
    if let Err(errors) = Plan::parse(&name, &text) {
        bail!("the plan is refused; nothing was pushed:\n{errors}");
    }
    Ok((name, text))
}

/// A push's answer: the version, and the rollout the unit's own plan started (if any).
use failsmall_wire::versions::PushedVersion as Pushed;

pub fn push(args: &PushArgs) -> anyhow::Result<Outcome> {
    // Everything local is checked before anything reaches the server.
    if let Some(plan) = &args.plan {
        load_plan(Some(plan))?;
    }
    let content = super::read_file_limited(&args.file, PUSH_FILE_MAX_BYTES)?;
    let client = args.remote.connect()?;
    // A unit with its own plan rolls out every push through it, on the server.
    let unit: UnitRecord = client.get(&format!("/v1/units/{}", args.unit), &[])?;
    let plan = match (&unit.plan, args.no_rollout) {
        (Some(_), true) => bail!(
            "unit {} rolls out every push through its own plan, so --no-rollout cannot hold; \
             remove the plan first (`failsmall unit edit {} --no-plan`); nothing was pushed",
            args.unit,
            args.unit
        ),
        (Some(_), false) if args.plan.is_some() => bail!(
            "unit {} rolls out every push through its own plan; drop --plan, or change the \
             unit's plan (`failsmall unit edit {} --plan FILE`); nothing was pushed",
            args.unit,
            args.unit
        ),
        (Some(own), false) => Some((format!("the plan of unit {}", args.unit), own.clone())),
        (None, true) => None,
        (None, false) => Some(load_plan(args.plan.as_deref())?),
    };
    let mut query = vec![("message", args.message.clone())];
    if let Some(parent) = &args.parent {
        query.push(("parent", parent.clone()));
    }
    if args.override_freeze {
        query.push(("override_freeze", "true".to_owned()));
    }
    if args.skip_validation {
        query.push(("skip_validation", "true".to_owned()));
    }
    if args.override_error_budget {
        query.push(("override_error_budget", "true".to_owned()));
    }
    let path = format!("/v1/units/{}/versions", args.unit);
    let (status, pushed): (u16, Pushed) = client.post_bytes(&path, &query, content)?;
    let (version, started) = (pushed.version, pushed.rollout);
    let created = status == 201;
    let rollout: Option<RolloutView> = match &plan {
        // The unit's plan started it with the push.
        _ if started.is_some() => started,
        None => None,
        Some((plan_file, plan_text)) => request_rollout(
            &client,
            &RolloutRequest {
                unit: &args.unit,
                version: &version.hash,
                plan_file,
                plan_text,
                reason: &args.message,
                override_quarantine: args.override_quarantine,
                override_error_budget: args.override_error_budget,
            },
        )?,
    };
    let watched = if args.watch {
        rollout.as_ref().map(|view| view.id)
    } else {
        None
    };
    if args.remote.json() {
        print_json(&json!({"version": version, "created": created, "rollout": rollout}))?;
        return follow(watched, &args.remote);
    }
    let novelty = if created { "new" } else { "already stored" };
    outln!("version  {} ({novelty})", version.hash);
    if version.validation_skipped {
        outln!("warning  validation was skipped for this version");
    }
    match rollout {
        Some(view) => {
            outln!(
                "rollout  {} {}: {} (plan {})",
                view.id,
                status_name(view.status),
                stage_text(&view),
                view.plan
            );
            outln!("follow   failsmall rollout watch {}", view.id);
        }
        None if args.no_rollout => outln!("rollout  none (--no-rollout)"),
        None => outln!("rollout  none started"),
    }
    follow(watched, &args.remote)
}

/// `--watch`: follow the rollout a command started, if any.
pub fn follow(rollout: Option<u64>, remote: &RemoteArgs) -> anyhow::Result<Outcome> {
    match rollout {
        Some(id) => super::watch::run(
            &super::watch::WatchArgs {
                id,
                interval: super::watch::INTERVAL_DEFAULT.to_owned(),
                timeout: super::watch::TIMEOUT_DEFAULT.to_owned(),
            },
            remote,
        ),
        None => Ok(Outcome::Success),
    }
}

/// A rollout to request: `version` of `unit` through a plan.
pub struct RolloutRequest<'a> {
    pub unit: &'a str,
    pub version: &'a str,
    pub plan_file: &'a str,
    pub plan_text: &'a str,
    pub reason: &'a str,
    pub override_quarantine: bool,
    pub override_error_budget: bool,
}

/// Starts (or queues) a rollout; the server's view of it.
pub fn request_rollout(
    client: &ApiClient,
    request: &RolloutRequest<'_>,
) -> anyhow::Result<Option<RolloutView>> {
    let body = json!({
        "unit": request.unit,
        "version": request.version,
        "plan": request.plan_text,
        "plan_file": request.plan_file,
        "reason": request.reason,
        "override_quarantine": request.override_quarantine,
        "override_error_budget": request.override_error_budget,
    });
    let (_, view): (u16, Option<RolloutView>) =
        client.send_json(Method::POST, "/v1/rollouts", &body)?;
    Ok(view)
}

/// A full hash for `given`: itself when it is 64 characters, else the one version of `unit`
/// whose hash starts with it.
pub fn resolve_hash(client: &ApiClient, unit: &str, given: &str) -> anyhow::Result<String> {
    let given = given.trim().to_ascii_lowercase();
    if given.len() == 64 {
        return Ok(given);
    }
    if given.len() < HASH_PREFIX_MIN_CHARS || !given.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "version {given:?}: expected a hash or a hexadecimal prefix of at least \
             {HASH_PREFIX_MIN_CHARS} characters (see `failsmall unit show {unit}`)"
        );
    }
    let list: VersionList = client.get_all(&format!("/v1/units/{unit}/versions"), "versions")?;
    let matching: Vec<&Version> = list
        .versions
        .iter()
        .map(|entry| &entry.version)
        .filter(|v| v.hash.starts_with(&given))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.hash.clone()),
        [] => bail!(
            "unit {unit} has no version starting with {given} (see `failsmall unit show {unit}`)"
        ),
        many => bail!(
            "{given} matches {} versions of unit {unit}; give more characters",
            many.len()
        ),
    }
}

pub fn diff(args: &DiffArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let from = resolve_hash(&client, &args.unit, &args.from)?;
    let to = resolve_hash(&client, &args.unit, &args.to)?;
    let path = format!("/v1/units/{}/diff", args.unit);
    let text = client.get_text(&path, &[("from", from.clone()), ("to", to.clone())])?;
    if args.remote.json() {
        print_json(&json!({"unit": args.unit, "from": from, "to": to, "diff": text}))?;
    } else if text.is_empty() {
        outln!(
            "versions {} and {} have the same content",
            short_hash(&from),
            short_hash(&to)
        );
    } else {
        out!("{text}");
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_plan_parses() {
        let (name, text) = load_plan(None).unwrap();
        assert_eq!(name, DEFAULT_PLAN_NAME);
        assert!(Plan::parse(&name, &text).is_ok());
    }

    #[test]
    fn a_bad_plan_is_refused_with_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.yaml");
        std::fs::write(
            &path,
            "name: p\nstages:\n  - name: one\n    bake: forever\n",
        )
        .unwrap();
        let error = load_plan(Some(&path)).unwrap_err().to_string();
        let expected = format!("{}:4:", path.display());
        assert!(error.contains(&expected), "{error}");
        assert!(error.contains("stages[0].bake"), "{error}");
    }
}
