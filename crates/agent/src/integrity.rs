//! What `current` serves is what the agent believes active, or it is put right and reported.
//!
//! `current` is its own copy of a stored version (see [`crate::disk`]), so a write into it
//! (a stray process, an editor, a bad disk) damages only it. At start ([`crate::recover`]) and
//! then every `integrity_interval_ms` this module hashes what `current` serves and compares
//! it with the version the agent believes active. On a mismatch it restores `current` from
//! the verified stored copy `versions/<hash>` (or, when that copy is gone or damaged too, from
//! the last known good), runs the unit's reload command, and reports
//! [`Report::Repaired`](crate::control::Report::Repaired). When no verified copy is left it
//! removes `current`: the node never silently serves bytes that match no signed version.
//!
//! An apply in progress also makes `current` differ from the belief for a moment (the new
//! version is renamed in before the agent records it), but always with the bytes of a stored
//! version, or none. Such a difference is repaired only when the next round still sees it
//! unchanged; bytes that match no stored version are repaired at once.
//!
//! Bounded: at most [`UNITS_PER_ROUND`] units are hashed per round, in turn.

use std::collections::BTreeMap;
use std::sync::Arc;

use failsmall_core::domain::{UnitName, VersionHash};
use tokio::sync::watch;

use crate::control::{Report, cut_reason};
use crate::disk::{DataDir, DiskError};
use crate::{AgentConfig, AgentError, Shared};

/// How often `current` is checked, by default.
pub const INTERVAL_MS_DEFAULT: u64 = 60_000;
/// The shortest interval between two rounds.
pub const INTERVAL_MS_MIN: u64 = 100;
/// The longest interval between two rounds.
pub const INTERVAL_MS_MAX: u64 = 24 * 3_600_000;
/// Most units hashed in one round (the others in the next rounds).
pub const UNITS_PER_ROUND: usize = 64;

/// What one look at a unit's `current` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// It serves the believed version (or nothing is believed active).
    Intact,
    /// It serves another stored version, or nothing: maybe an apply in progress.
    Differs(Option<VersionHash>),
    /// It serves bytes that match no stored version.
    Damaged(VersionHash),
}

/// Hashes what `unit`'s `current` serves and compares it with `believed`.
pub fn inspect(
    disk: &DataDir,
    unit: &UnitName,
    believed: Option<VersionHash>,
) -> Result<Finding, DiskError> {
    let Some(believed) = believed else {
        return Ok(Finding::Intact);
    };
    let served = disk.current(unit)?.map(|(_, hash)| hash);
    match served {
        Some(hash) if hash == believed => Ok(Finding::Intact),
        Some(hash) if disk.version(unit, &hash)?.is_none() => Ok(Finding::Damaged(hash)),
        other => Ok(Finding::Differs(other)),
    }
}

/// Puts back `believed` from its verified copy, else the last known good; returns the
/// version now in `current` (none: no verified copy was left, and `current` was removed) and
/// what happened, for the report.
pub fn restore(
    disk: &DataDir,
    unit: &UnitName,
    believed: VersionHash,
    served: Option<VersionHash>,
) -> Result<(Option<VersionHash>, String), DiskError> {
    let what = match served {
        Some(hash) => format!(
            "current served sha256 {hash}, not the active {}",
            believed.short()
        ),
        None => format!("current was missing, not the active {}", believed.short()),
    };
    let good = disk.good(unit).ok().flatten();
    let mut skipped = Vec::new();
    for candidate in std::iter::once(believed).chain(good.filter(|g| *g != believed)) {
        match disk.activate(unit, &candidate) {
            Ok(()) => {
                let how = if candidate == believed {
                    format!("restored {} from its verified copy", candidate.short())
                } else {
                    format!(
                        "{}; restored the last known good {} from its verified copy",
                        skipped.join("; "),
                        candidate.short()
                    )
                };
                return Ok((Some(candidate), format!("{what}; {how}")));
            }
            Err(DiskError::Corrupt { .. }) => skipped.push(format!(
                "the stored copy of {} is missing or damaged",
                candidate.short()
            )),
            Err(error) => return Err(error),
        }
    }
    disk.deactivate(unit)?;
    Ok((
        None,
        format!(
            "{what}; {}; no verified copy left: removed current",
            skipped.join("; ")
        ),
    ))
}

/// Checks `current` every `config.integrity_interval_ms` until the agent stops; first runs
/// the reload command of the units [`crate::recover`] repaired at start.
pub async fn run(
    config: AgentConfig,
    shared: Arc<Shared>,
    repaired_at_start: Vec<UnitName>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    for unit in &repaired_at_start {
        reload(&config, &shared, unit).await;
    }
    let interval_ms = config
        .integrity_interval_ms
        .clamp(INTERVAL_MS_MIN, INTERVAL_MS_MAX);
    let mut cursor: Option<UnitName> = None;
    let mut suspects: BTreeMap<UnitName, (Option<VersionHash>, Option<VersionHash>)> =
        BTreeMap::new();
    loop {
        if crate::pause(interval_ms, &mut stopped).await {
            return Ok(());
        }
        let units = round(&shared, cursor.as_ref());
        cursor = units.last().cloned();
        for unit in units {
            check_unit(&config, &shared, &unit, &mut suspects).await;
        }
    }
}

/// The next units to check: up to [`UNITS_PER_ROUND`] after `cursor`, wrapping around.
fn round(shared: &Shared, cursor: Option<&UnitName>) -> Vec<UnitName> {
    let units: Vec<UnitName> = shared
        .with_status(|s| s.units.keys().cloned().collect())
        .unwrap_or_default();
    let start = cursor.map_or(0, |c| units.iter().take_while(|u| *u <= c).count());
    units
        .iter()
        .cycle()
        .skip(start)
        .take(UNITS_PER_ROUND.min(units.len()))
        .cloned()
        .collect()
}

async fn check_unit(
    config: &AgentConfig,
    shared: &Arc<Shared>,
    unit: &UnitName,
    suspects: &mut BTreeMap<UnitName, (Option<VersionHash>, Option<VersionHash>)>,
) {
    let believed = shared.active(unit);
    let (disk, owned) = (shared.disk.clone(), unit.clone());
    let finding = crate::apply::blocking(move || inspect(&disk, &owned, believed)).await;
    let (believed, served) = match (believed, finding) {
        (_, Err(error)) => {
            tracing::warn!("unit {unit}: checking current failed: {error}");
            return;
        }
        (Some(believed), Ok(Finding::Damaged(hash))) => (believed, Some(hash)),
        (Some(believed), Ok(Finding::Differs(served))) => {
            // Repaired only when the next round sees the same difference.
            let seen = (Some(believed), served);
            if suspects.get(unit) != Some(&seen) {
                suspects.insert(unit.clone(), seen);
                return;
            }
            (believed, served)
        }
        (_, Ok(_)) => {
            suspects.remove(unit);
            return;
        }
    };
    suspects.remove(unit);
    let (disk, owned) = (shared.disk.clone(), unit.clone());
    let restored = crate::apply::blocking(move || restore(&disk, &owned, believed, served)).await;
    let (now, reason) = match restored {
        Ok(done) => done,
        Err(error) => {
            tracing::warn!(
                "unit {unit}: current does not serve {} and restoring it failed: {error}",
                believed.short()
            );
            return;
        }
    };
    shared.activated(unit, now);
    reload(config, shared, unit).await;
    repaired(shared, unit, now.unwrap_or(believed), &reason);
}

/// Tells and reports a repair of `unit` (now serving `version`, or nothing).
pub(crate) fn repaired(shared: &Shared, unit: &UnitName, version: VersionHash, reason: &str) {
    tracing::info!("unit {unit}: {reason}");
    shared.reports.push(Report::Repaired {
        unit: unit.clone(),
        version,
        reason: cut_reason(reason),
    });
}

async fn reload(config: &AgentConfig, shared: &Shared, unit: &UnitName) {
    if let Some(reload) = config.units.get(unit).and_then(|l| l.reload.as_ref())
        && let Ok(current) = shared.disk.current_path(unit)
        && let Err(error) = reload.run_reload(&current).await
    {
        tracing::warn!("unit {unit}: reload after the repair failed: {error}");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn stored(disk: &DataDir, unit: &UnitName, bytes: &[u8]) -> VersionHash {
        let hash = VersionHash::of(bytes);
        disk.store_version(unit, &hash, bytes).unwrap();
        hash
    }

    fn scribble(disk: &DataDir, unit: &UnitName) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(disk.current_path(unit).unwrap())
            .unwrap()
            .write_all(b"#")
            .unwrap();
    }

    #[test]
    fn damaged_bytes_are_found_and_restored_from_the_verified_copy() {
        let scratch = tempfile::tempdir().unwrap();
        let disk = DataDir::open(scratch.path()).unwrap();
        let unit = UnitName::new("features").unwrap();
        let v1 = stored(&disk, &unit, b"v1 bytes");
        disk.activate(&unit, &v1).unwrap();
        assert_eq!(inspect(&disk, &unit, Some(v1)).unwrap(), Finding::Intact);
        scribble(&disk, &unit);
        let Finding::Damaged(served) = inspect(&disk, &unit, Some(v1)).unwrap() else {
            panic!("not found damaged");
        };
        let (now, reason) = restore(&disk, &unit, v1, Some(served)).unwrap();
        assert_eq!(now, Some(v1));
        assert!(reason.contains("restored"), "{reason}");
        assert_eq!(disk.current(&unit).unwrap().unwrap().1, v1);
        // Another stored version is only a difference (maybe an apply in flight).
        let v2 = stored(&disk, &unit, b"v2 bytes");
        disk.activate(&unit, &v2).unwrap();
        assert_eq!(
            inspect(&disk, &unit, Some(v1)).unwrap(),
            Finding::Differs(Some(v2))
        );
        assert_eq!(inspect(&disk, &unit, None).unwrap(), Finding::Intact);
    }

    #[test]
    fn a_damaged_copy_falls_back_to_the_last_known_good_then_to_nothing() {
        let scratch = tempfile::tempdir().unwrap();
        let disk = DataDir::open(scratch.path()).unwrap();
        let unit = UnitName::new("features").unwrap();
        let good = stored(&disk, &unit, b"good");
        disk.set_good(&unit, &good).unwrap();
        let v2 = stored(&disk, &unit, b"v2");
        disk.activate(&unit, &v2).unwrap();
        scribble(&disk, &unit);
        let versions = disk.unit_dir(&unit).unwrap().join("versions");
        std::fs::write(versions.join(v2.to_string()), b"rot").unwrap();
        let (now, reason) = restore(&disk, &unit, v2, None).unwrap();
        assert_eq!(now, Some(good));
        assert!(reason.contains("restored the last known good"), "{reason}");
        assert_eq!(disk.current(&unit).unwrap().unwrap().1, good);
        std::fs::write(versions.join(good.to_string()), b"rot").unwrap();
        scribble(&disk, &unit);
        let (now, reason) = restore(&disk, &unit, v2, None).unwrap();
        assert_eq!(now, None);
        assert!(reason.ends_with("removed current"), "{reason}");
        assert_eq!(disk.current(&unit).unwrap(), None);
    }
}
