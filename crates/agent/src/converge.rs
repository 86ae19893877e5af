//! One desired-state document, carried out: verified ([`crate::verify`]), then each listed
//! unit brought to its version ([`crate::apply`]) and each unit the document removes taken
//! off the node.
//!
//! What is reported, and as what:
//! - a document refused for trust (signature, replay, wrong node, malformed) is `untrusted`,
//!   once per kind of refusal until a document is trusted again (every change brings a new
//!   sequence number): nothing in it was acted on, and no version is blamed for it;
//! - a bundle that cannot be fetched intact is `fetch_failed` (in [`crate::apply`]) and is
//!   fetched again with backoff: a transport fault is never a version's NACK;
//! - a removal is `removed`, with the version that was active (none: nothing was).

use std::sync::Arc;

use failsmall_core::domain::{UnitName, VersionHash};

use crate::apply::{self, Outcome};
use crate::control::ControlPlane;
use crate::verify::{self, Desired, Envelope, Refusal};
use crate::{
    AgentConfig, AgentError, HealthCheckConfig, Shared, now_ms, refresh_staleness, save_freshness,
};

/// What became of one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handled {
    /// Refused: asked for again, more and more slowly.
    Refused,
    /// Trusted and carried out as far as it can be.
    Converged,
    /// Trusted, but a bundle could not be fetched: the same document is carried out again
    /// after a backoff, without waiting for a newer one.
    Retry,
}

/// Handles one desired-state envelope.
pub(crate) async fn on_envelope(
    config: &AgentConfig,
    control: &ControlPlane,
    shared: &Arc<Shared>,
    key: Option<&ed25519_dalek::VerifyingKey>,
    envelope: &Envelope,
) -> Result<Handled, AgentError> {
    let verdict = match shared.root() {
        Some(mut root) => {
            // The server serves a newer root: adopt it first if the trusted one signed for it.
            if envelope
                .root_version
                .is_some_and(|version| version > root.signed.version)
                && crate::root::refresh(control, shared).await
                && let Some(newer) = shared.root()
            {
                root = newer;
            }
            let trusted = shared.with_status(|s| s.seq).unwrap_or(0);
            verify::verify_with_root(&root.signed, envelope, control.node(), trusted, now_ms())
        }
        None => {
            let trusted = shared.with_status(|s| s.seq).unwrap_or(0);
            match key {
                Some(key) => verify::verify(key, envelope, control.node(), trusted),
                None => Err(Refusal::BadKey { key: String::new() }),
            }
        }
    };
    let trusted = shared.with_status(|s| s.seq).unwrap_or(0);
    let desired = match verdict {
        Ok(desired) => desired,
        Err(refusal) => {
            refuse_document(shared, envelope, &refusal);
            return Ok(Handled::Refused);
        }
    };
    shared.trusted_again();
    if desired.seq > trusted {
        shared.disk.save_trusted_seq(desired.seq)?;
    }
    shared.with_status(|s| {
        s.seq = desired.seq;
        s.expires_ms = desired.expires_ms;
    });
    save_freshness(shared);
    refresh_staleness(shared);
    if desired.is_expired(now_ms()) {
        shared.note_refusal(format!(
            "desired-state document seq {} expired at {} ms; keeping what is on disk",
            desired.seq,
            desired.expires_ms.unwrap_or(0)
        ));
        return Ok(Handled::Converged);
    }
    Ok(if converge(config, control, shared, &desired).await {
        Handled::Retry
    } else {
        Handled::Converged
    })
}

/// Reports a refused document as untrusted (once per sequence number). No version is blamed:
/// the document may have been damaged or forged on its way, and a NACK would make the
/// control plane roll back and quarantine a version for what the network did.
fn refuse_document(shared: &Shared, envelope: &Envelope, refusal: &Refusal) {
    shared.note_refusal(refusal.to_string());
    shared.report_untrusted(envelope.seq, refusal);
}

/// Carries out a trusted document; returns whether some bundle must be fetched again.
async fn converge(
    config: &AgentConfig,
    control: &ControlPlane,
    shared: &Arc<Shared>,
    desired: &Desired,
) -> bool {
    shared.forget_refusals_of_units_not_in(desired);
    shared.with_status(|status| {
        for (unit, entry) in &mut status.units {
            if !desired.units.contains_key(unit) {
                entry.desired = None;
                entry.trial = None;
            }
        }
    });
    // A break-glass order in force overrides the desired state for the units it names.
    let orders = crate::break_glass::in_force(shared, now_ms());
    let overridden = |unit: &UnitName| crate::break_glass::override_of(&orders, unit);
    if let Some(nonce) = crate::break_glass::pausing(&orders) {
        // Pause everything: the units the order pinned are kept; nothing else changes.
        for (unit, hash) in &desired.units {
            if let Some((_, Some(target))) = overridden(unit) {
                crate::break_glass::enforce(shared, config, unit, &target).await;
            } else {
                tracing::info!(
                    "unit {unit}: break-glass order {nonce} pauses everything; the desired {} waits",
                    hash.short()
                );
            }
        }
        return false;
    }
    for unit in &desired.removed {
        if overridden(unit).is_some() {
            continue;
        }
        remove(config, shared, unit).await;
    }
    let mut retry = false;
    for (unit, hash) in &desired.units {
        if let Some((nonce, target)) = overridden(unit) {
            tracing::info!(
                "unit {unit}: break-glass order {nonce} is in force; the desired {} waits",
                hash.short()
            );
            if let Some(target) = target {
                crate::break_glass::enforce(shared, config, unit, &target).await;
            }
            continue;
        }
        let trial = desired.trial.get(unit).copied();
        shared.with_status(|s| {
            let entry = s.units.entry(unit.clone()).or_default();
            entry.desired = Some(*hash);
            entry.trial = trial;
        });
        shared.forget_removal(unit);
        shared.forget_other_refusals(unit, hash, trial);
        let local = local_config(config, desired, unit);
        let spec = desired.specs.get(unit);
        let standing = apply::Standing {
            trial,
            stable: desired.stable.get(unit).copied(),
        };
        let outcome =
            apply::converge_unit(control, shared, unit, hash, spec, &local, standing).await;
        retry |= matches!(outcome, Outcome::NotFetched(_));
    }
    retry
}

/// The unit's local configuration, with the plan's health check where the node has none of
/// its own.
fn local_config(
    config: &AgentConfig,
    desired: &Desired,
    unit: &UnitName,
) -> crate::UnitLocalConfig {
    let mut local = config.units.get(unit).cloned().unwrap_or_default();
    if local.health_check.is_none()
        && let Some(check) = desired.health_checks.get(unit)
    {
        match &config.consumer_url {
            Some(base) => {
                local.health_check = Some(
                    HealthCheckConfig::for_plan(
                        format!("{}{}", base.trim_end_matches('/'), check.path),
                        check.expect_status,
                        check.timeout_ms,
                    )
                    .with_window(&config.health_window),
                );
            }
            None => tracing::warn!(
                "unit {unit}: the plan asks for a health check of {}, but no consumer URL is configured (--consumer-url); skipped",
                check.path
            ),
        }
    }
    local
}

/// Takes `unit` off the node: `current` and the last known good go (the stored versions stay),
/// local watchers are told (consumers fall back to their fail mode), the reload command runs,
/// and the removal is reported. A removal that fails on disk is tried again at the next
/// document, and not reported.
async fn remove(config: &AgentConfig, shared: &Arc<Shared>, unit: &UnitName) {
    let active: Option<VersionHash> = shared.active(unit);
    if active.is_some() {
        let (disk, owned) = (shared.disk.clone(), unit.clone());
        if let Err(error) = apply::blocking(move || disk.remove_unit(&owned)).await {
            tracing::warn!("unit {unit}: removing it failed: {error}; tried again");
            return;
        }
        shared.activated(unit, None);
        tracing::info!(
            "unit {unit}: left this node's desired state; removed {}",
            active.map(|h| h.short()).unwrap_or_default()
        );
        if let Some(reload) = config.units.get(unit).and_then(|l| l.reload.as_ref())
            && let Ok(current) = shared.disk.current_path(unit)
            && let Err(error) = reload.run_reload(&current).await
        {
            tracing::warn!("unit {unit}: reload after the removal failed: {error}");
        }
    }
    shared.report_removal(unit, active);
}
