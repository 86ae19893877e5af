//! The apply path of one unit: fetch by hash, check the hash, validate (the server's rules,
//! then the local validator), store, activate atomically, reload, health-check; on any
//! failure after activation, put back the last known good at once and report.
//!
//! Fail points (feature `failpoints`) sit between every step: `agent::fetched`,
//! `agent::validated`, `agent::after_version_stored`, `agent::before_current_written`,
//! `agent::before_current_renamed`, `agent::after_current_renamed`,
//! `agent::after_current_synced`, `agent::reloaded`, `agent::checked`, `agent::before_good`,
//! `agent::before_rename` (inside every atomic write).

use std::path::Path;
use std::sync::Arc;

use failsmall_core::domain::{UnitName, VersionHash};
use failsmall_core::validate::{MAX_BYTES_CEILING, UnitSpec, validate};

use crate::control::{ControlPlane, Report, cut_reason};
use crate::disk::{DataDir, DiskError};
use crate::{Shared, UnitLocalConfig};

/// What became of one apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The version was already active and known good.
    AlreadyActive,
    /// The version was refused earlier in this run; nothing was tried.
    PreviouslyRefused,
    /// Applied, checked, now the last known good.
    Applied,
    /// Refused before activation; the active version did not change.
    Refused(String),
    /// Activated, then failed; the last known good was put back.
    RolledBack(String),
    /// The bundle could not be fetched intact (unreachable, a hash mismatch, an answer too
    /// large); fetched again with backoff.
    NotFetched(String),
    /// Writing to disk failed; the last known good was kept.
    DiskFailed(String),
}

macro_rules! step_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| Outcome::DiskFailed(format!(
            "crash point {} reached",
            $name
        )));
    };
}

/// Where the control plane's judgement of a unit stands, as the desired-state document says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// The rollout still judging the listed version, if any: the ACK answers it, and while it
    /// judges, the version is not the last known good.
    pub trial: Option<u64>,
    /// The unit's stable version: when it is what this node runs, it is the last known good,
    /// even if the next rollout names a newer version in the same document.
    pub stable: Option<VersionHash>,
}

/// Brings `unit` to `hash` (see the module documentation) and reports the verdict.
pub async fn converge_unit(
    control: &ControlPlane,
    shared: &Arc<Shared>,
    unit: &UnitName,
    hash: &VersionHash,
    spec: Option<&UnitSpec>,
    local: &UnitLocalConfig,
    standing: Standing,
) -> Outcome {
    let outcome = converge_inner(control, shared, unit, hash, spec, local, standing).await;
    let error = match &outcome {
        Outcome::Refused(reason)
        | Outcome::RolledBack(reason)
        | Outcome::NotFetched(reason)
        | Outcome::DiskFailed(reason) => Some(reason.clone()),
        _ => None,
    };
    // One line per change of what the node runs, or refusal to change it.
    let version = hash.short();
    match &outcome {
        Outcome::Applied => tracing::info!(%unit, %version, "applied"),
        Outcome::Refused(reason) => tracing::warn!(%unit, %version, %reason, "refused"),
        Outcome::RolledBack(reason) => {
            tracing::warn!(%unit, %version, %reason, "reverted to the last known good")
        }
        Outcome::NotFetched(reason) => {
            tracing::warn!(%unit, %version, %reason, "not fetched; fetched again")
        }
        Outcome::DiskFailed(reason) => {
            tracing::error!(%unit, %version, %reason, "disk failed; last known good kept")
        }
        Outcome::AlreadyActive | Outcome::PreviouslyRefused => {}
    }
    shared.with_status(|s| {
        let entry = s.units.entry(unit.clone()).or_default();
        if error.is_some() || outcome == Outcome::Applied {
            entry.last_error = error;
        }
    });
    outcome
}

async fn converge_inner(
    control: &ControlPlane,
    shared: &Arc<Shared>,
    unit: &UnitName,
    hash: &VersionHash,
    spec: Option<&UnitSpec>,
    local: &UnitLocalConfig,
    standing: Standing,
) -> Outcome {
    let disk = &shared.disk;
    let trial = standing.trial;
    let active = shared.active(unit);
    let mut good = disk.good(unit).ok().flatten();
    // What this node runs passed its rollout and soak: its last known good, before anything
    // newer is tried.
    if let Some(running) = active
        && standing.stable == Some(running)
        && good != Some(running)
    {
        if let Err(error) = settle_good(disk, unit, &running, good).await {
            return Outcome::DiskFailed(error.to_string());
        }
        good = Some(running);
        shared.activated(unit, Some(running));
    }
    if active == Some(*hash) && good == Some(*hash) {
        shared.acknowledge(unit, hash, trial, false);
        return Outcome::AlreadyActive;
    }
    if shared.is_refused(unit, hash) {
        return Outcome::PreviouslyRefused;
    }
    if active == Some(*hash) {
        // Active and checked, not yet the last known good: on trial. Once no rollout judges
        // it any more (its soak passed), it becomes the last known good.
        if trial.is_none() {
            if let Err(error) = settle_good(disk, unit, hash, good).await {
                return Outcome::DiskFailed(error.to_string());
            }
            shared.activated(unit, Some(*hash));
        }
        shared.acknowledge(unit, hash, trial, false);
        return Outcome::AlreadyActive;
    }
    // 1. The bytes: stored already, or fetched by hash (at most the unit's limit).
    let stored = {
        let (disk, unit, hash) = (disk.clone(), unit.clone(), *hash);
        blocking(move || disk.version(&unit, &hash)).await
    };
    let bytes = match stored {
        Ok(Some(bytes)) => bytes,
        Ok(None) | Err(_) => {
            let limit = spec.map_or(MAX_BYTES_CEILING, |s| s.max_bytes.min(MAX_BYTES_CEILING));
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            match control.blob(hash, limit).await {
                Ok(bytes) => bytes,
                Err(crate::control::ControlError::TooLarge { .. }) => {
                    // The server checked the size at push: a larger answer is not the bundle
                    // the hash names.
                    return fetch_failed(
                        shared,
                        unit,
                        hash,
                        format!("the answer is larger than the unit's max_bytes {limit}"),
                    );
                }
                Err(error) => return fetch_failed(shared, unit, hash, error.to_string()),
            }
        }
    };
    step_point!("agent::fetched");
    // Hashing and validating a large bundle is CPU work: off the async threads.
    let owned_spec = spec.cloned();
    let checked = tokio::task::spawn_blocking(move || {
        let actual = VersionHash::of(&bytes);
        let issues = match &owned_spec {
            Some(spec) => validate(spec, &bytes).err(),
            None => None,
        };
        (bytes, actual, issues)
    })
    .await;
    let (bytes, actual, issues) = match checked {
        Ok(checked) => checked,
        Err(error) => return Outcome::DiskFailed(format!("validation task failed: {error}")),
    };
    if actual != *hash {
        return fetch_failed(
            shared,
            unit,
            hash,
            format!("bundle hash mismatch: expected sha256 {hash}, got {actual}"),
        );
    }
    shared.forget_fetch_failure(unit, hash);
    // 2. The server's own rules (checked above), then the node's validator.
    if let Some(issues) = issues {
        let reasons: Vec<String> = issues.iter().take(5).map(ToString::to_string).collect();
        return refuse(
            shared,
            unit,
            hash,
            format!("validation failed: {}", reasons.join("; ")),
        );
    }
    let stored = match store(disk, unit, hash, bytes).await {
        Ok(path) => path,
        Err(error) => return Outcome::DiskFailed(error.to_string()),
    };
    if let Some(validator) = &local.validate
        && let Err(error) = validator.run(&stored).await
    {
        return refuse(shared, unit, hash, format!("local validator: {error}"));
    }
    step_point!("agent::validated");
    // 3. Activate: `current` is replaced by rename.
    if let Err(error) = activate(disk, unit, hash).await {
        return Outcome::DiskFailed(error.to_string());
    }
    shared.activated(unit, Some(*hash));
    // 4. Reload, then the health check; a failure puts back the last known good.
    let current = match disk.current_path(unit) {
        Ok(path) => path,
        Err(error) => return Outcome::DiskFailed(error.to_string()),
    };
    if let Some(reload) = &local.reload
        && let Err(error) = reload.run_reload(&current).await
    {
        let reason = format!("reload command: {error}");
        return roll_back(shared, unit, hash, good, local, Failure::Reload(reason)).await;
    }
    step_point!("agent::reloaded");
    if let Some(check) = &local.health_check
        && let Err(reason) = crate::check::run(check, &current).await
    {
        return roll_back(
            shared,
            unit,
            hash,
            good,
            local,
            Failure::HealthCheck(reason),
        )
        .await;
    }
    step_point!("agent::checked");
    // 5. On trial while a rollout judges it (the last known good stays the one before, and
    //    is what a failure puts back); otherwise now the last known good.
    let settled = match trial {
        Some(_) => {
            let (disk, unit, hash) = (disk.clone(), unit.clone(), *hash);
            blocking(move || disk.set_trial(&unit, Some(&hash))).await
        }
        None => settle_good(disk, unit, hash, good).await,
    };
    if let Err(error) = settled {
        return Outcome::DiskFailed(error.to_string());
    }
    shared.activated(unit, Some(*hash));
    shared.acknowledge(unit, hash, trial, true);
    Outcome::Applied
}

/// `hash` is now the last known good: recorded, the trial mark cleared, and old versions
/// beyond the few kept pruned (never `hash` nor the good one before it).
async fn settle_good(
    disk: &DataDir,
    unit: &UnitName,
    hash: &VersionHash,
    before: Option<VersionHash>,
) -> Result<(), DiskError> {
    mark_good(disk, unit, hash).await?;
    let (owned, owned_unit) = (disk.clone(), unit.clone());
    blocking(move || owned.set_trial(&owned_unit, None)).await?;
    let keep = [Some(*hash), before]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    let _ = disk.prune(unit, &keep);
    Ok(())
}

/// The bundle could not be fetched intact: a transport fault, reported as such (once per
/// version and run) and fetched again with backoff; never the version's NACK.
fn fetch_failed(shared: &Shared, unit: &UnitName, hash: &VersionHash, reason: String) -> Outcome {
    shared.report_fetch_failure(unit, hash, &reason);
    Outcome::NotFetched(reason)
}

fn refuse(shared: &Shared, unit: &UnitName, hash: &VersionHash, reason: String) -> Outcome {
    shared.refuse(unit, hash);
    shared.note_refusal(format!("unit {unit} version {}: {reason}", hash.short()));
    shared.reports.push(Report::Rejected {
        unit: unit.clone(),
        version: *hash,
        reason: cut_reason(&reason),
    });
    Outcome::Refused(reason)
}

enum Failure {
    Reload(String),
    HealthCheck(String),
}

/// Puts back the last known good (then reloads the consumer again) and reports the failure.
async fn roll_back(
    shared: &Arc<Shared>,
    unit: &UnitName,
    hash: &VersionHash,
    good: Option<VersionHash>,
    local: &UnitLocalConfig,
    failure: Failure,
) -> Outcome {
    shared.refuse(unit, hash);
    // First put back the last known good, then tell: the report says what the node runs.
    let restored = match good {
        Some(good) => restore(shared, unit, &good, local).await,
        None => deactivate(shared, unit).await,
    };
    let (reason, health_check) = match failure {
        Failure::Reload(reason) => (reason, false),
        Failure::HealthCheck(reason) => (reason, true),
    };
    let reason = format!("{reason}; {restored}");
    shared.note_refusal(format!("unit {unit} version {}: {reason}", hash.short()));
    let (unit, version, cut) = (unit.clone(), *hash, cut_reason(&reason));
    shared.reports.push(if health_check {
        Report::HealthCheckFailed {
            unit,
            version,
            reason: cut,
        }
    } else {
        Report::Rejected {
            unit,
            version,
            reason: cut,
        }
    });
    Outcome::RolledBack(reason)
}

/// Puts `good` back as the active version; says what happened.
pub async fn restore(
    shared: &Arc<Shared>,
    unit: &UnitName,
    good: &VersionHash,
    local: &UnitLocalConfig,
) -> String {
    if let Err(error) = activate(&shared.disk, unit, good).await {
        return format!("putting back {} failed: {error}", good.short());
    }
    shared.activated(unit, Some(*good));
    if let (Some(reload), Ok(current)) = (&local.reload, shared.disk.current_path(unit))
        && let Err(error) = reload.run_reload(&current).await
    {
        return format!(
            "put back the last known good {}, but its reload failed: {error}",
            good.short()
        );
    }
    format!("put back the last known good {}", good.short())
}

/// With no last known good, the failed first version does not stay active: `current` is
/// removed, as it was before, so a consumer that starts or reloads falls to its fail mode
/// (its safe default, or closed) instead of loading it. Says what happened.
async fn deactivate(shared: &Arc<Shared>, unit: &UnitName) -> String {
    let disk = shared.disk.clone();
    let owned = unit.clone();
    match blocking(move || disk.deactivate(&owned)).await {
        Ok(()) => {
            shared.activated(unit, None);
            "no last known good to put back: removed it from current".to_owned()
        }
        Err(error) => format!("no last known good to put back, and removing it failed: {error}"),
    }
}

async fn store(
    disk: &DataDir,
    unit: &UnitName,
    hash: &VersionHash,
    bytes: Vec<u8>,
) -> Result<std::path::PathBuf, DiskError> {
    let (disk, unit, hash) = (disk.clone(), unit.clone(), *hash);
    blocking(move || disk.store_version(&unit, &hash, &bytes)).await
}

async fn activate(disk: &DataDir, unit: &UnitName, hash: &VersionHash) -> Result<(), DiskError> {
    let (disk, unit, hash) = (disk.clone(), unit.clone(), *hash);
    blocking(move || disk.activate(&unit, &hash)).await
}

async fn mark_good(disk: &DataDir, unit: &UnitName, hash: &VersionHash) -> Result<(), DiskError> {
    let (disk, unit, hash) = (disk.clone(), unit.clone(), *hash);
    blocking(move || disk.set_good(&unit, &hash)).await
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DiskError> + Send + 'static,
) -> Result<T, DiskError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(DiskError::Io {
            what: "disk task",
            path: Path::new("").to_owned(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}
