//! The root the agent trusts ([`failsmall_core::trust`]): given at install (`--root FILE`),
//! pinned in the data dir, and replaced only by a newer root that the trusted one's key
//! holders signed for (TUF's root update). Documents are then trusted because the root names
//! the key that signed them, never because a server says so.
//!
//! A newer root is looked for when the server says it serves one (`root_version` on the
//! desired-state envelope) and when a document is refused for its key or epoch. A root of a
//! higher epoch starts the sequence check afresh: that is how a server restored from an older
//! backup is let back in, by the root key holders, and never by trusting a lower sequence.
//!
//! Without a root (no `--root`, none pinned) the agent pins the server's key on first use,
//! with a warning.

use failsmall_core::trust::{SignedRoot, accept_update};

use crate::control::ControlPlane;
use crate::disk::DataDir;
use crate::{AgentConfig, AgentError, Shared, now_ms};

/// Loads the root at start: the pinned one, or the one given with `--root` when it is newer
/// (or nothing is pinned). The given file must verify on its own (its threshold of its own
/// root keys); a given root older than the pinned one is ignored with a note (the pinned one
/// was reached from it or another the holders signed).
pub(crate) fn load(config: &AgentConfig, disk: &DataDir) -> Result<Option<SignedRoot>, AgentError> {
    let bad = |field: &'static str, reason: String| AgentError::Config { field, reason };
    let pinned = match disk.pinned_root()? {
        Some(text) => {
            let root = SignedRoot::parse(&text)
                .and_then(|root| root.verify_self().map(|_| root.clone()))
                .map_err(|e| {
                    bad(
                        "root",
                        format!(
                            "the root pinned in {} does not verify: {e}",
                            config.data_dir.join("root.json").display()
                        ),
                    )
                })?;
            Some(root)
        }
        None => None,
    };
    let Some(path) = &config.root else {
        return Ok(pinned);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("root", format!("{}: {e}", path.display())))?;
    let given = SignedRoot::parse(&text)
        .and_then(|root| root.verify_self().map(|_| root.clone()))
        .map_err(|e| bad("root", format!("{}: {e}", path.display())))?;
    match pinned {
        Some(pinned) if pinned.signed.version >= given.signed.version => {
            if pinned.signed.root_keys != given.signed.root_keys {
                tracing::warn!(
                    given = given.signed.version,
                    pinned = pinned.signed.version,
                    "the root given with --root has other root keys than the one pinned; keeping the pinned root"
                );
            }
            Ok(Some(pinned))
        }
        Some(pinned) => {
            // A newer given root must be reachable from the pinned one.
            let next = accept_update(&pinned.signed, &given, now_ms())
                .map_err(|e| bad("root", format!("{}: {e}", path.display())))?;
            adopt(disk, &pinned, &given, next.epoch)?;
            Ok(Some(given))
        }
        None => {
            disk.pin_root(&given.to_text())?;
            disk.start_epoch(given.signed.epoch)?;
            tracing::info!(
                version = given.signed.version,
                epoch = given.signed.epoch,
                "pinned the root given with --root"
            );
            Ok(Some(given))
        }
    }
}

/// Pins `next` after `trusted`; a higher epoch starts the sequence check afresh.
fn adopt(
    disk: &DataDir,
    trusted: &SignedRoot,
    next: &SignedRoot,
    epoch: u64,
) -> Result<(), AgentError> {
    disk.pin_root(&next.to_text())?;
    if epoch > trusted.signed.epoch || disk.seq_epoch()? != epoch {
        disk.start_epoch(epoch)?;
    }
    Ok(())
}

/// The sequence number to trust at start: the saved one if it belongs to the root's epoch,
/// else 0 (a crash while a new epoch was being adopted).
pub(crate) fn trusted_seq(disk: &DataDir, root: Option<&SignedRoot>) -> Result<u64, AgentError> {
    let seq = disk.trusted_seq()?;
    let Some(root) = root else {
        return Ok(seq);
    };
    if disk.seq_epoch()? != root.signed.epoch {
        disk.start_epoch(root.signed.epoch)?;
        return Ok(0);
    }
    Ok(seq)
}

/// Fetches the server's root and adopts it if the trusted root signed for it. Returns whether
/// the trusted root changed; a root that does not verify is refused and said.
pub(crate) async fn refresh(control: &ControlPlane, shared: &Shared) -> bool {
    let Some(trusted) = shared.root() else {
        return false;
    };
    let text = match control.root().await {
        Ok(text) => text,
        Err(error) => {
            tracing::warn!(%error, "could not fetch the server's root");
            return false;
        }
    };
    let next = match SignedRoot::parse(&text) {
        Ok(next) => next,
        Err(error) => {
            shared.note_refusal(format!("the server's root: {error}"));
            return false;
        }
    };
    if next.signed.version <= trusted.signed.version {
        return false;
    }
    let document = match accept_update(&trusted.signed, &next, now_ms()) {
        Ok(document) => document,
        Err(error) => {
            tracing::error!(%error, "refused the server's root");
            shared.note_refusal(format!("the server's root refused: {error}"));
            return false;
        }
    };
    if let Err(error) = adopt(&shared.disk, &trusted, &next, document.epoch) {
        tracing::error!(%error, "could not pin the new root; keeping the trusted one");
        return false;
    }
    if document.epoch > trusted.signed.epoch {
        tracing::warn!(
            version = document.version,
            epoch = document.epoch,
            "a root of a new epoch: the sequence check starts afresh"
        );
        shared.with_status(|s| s.seq = 0);
    } else {
        tracing::info!(version = document.version, "adopted a newer root");
    }
    shared.set_root(next);
    true
}
