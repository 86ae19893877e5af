//! Domain types (store rows, engine views) into wire types ([`failsmall_wire`]): handlers
//! answer with wire types only, so the JSON shapes agents and the CLI read are declared in
//! one crate, apart from how the server stores things.

use std::collections::BTreeMap;

use crate::auth::Role;
use crate::error::ApiError;
use crate::store::{
    AppliedVersion, ChangeRecord, ChangelogPage, NodeRecord, TokenRecord, UnitRecord,
};
use crate::validator::ValidatorCommand;

impl From<AppliedVersion> for failsmall_wire::AppliedVersion {
    fn from(applied: AppliedVersion) -> Self {
        Self {
            version: applied.version,
            applied_ms: applied.applied_ms,
        }
    }
}

impl From<NodeRecord> for failsmall_wire::Node {
    fn from(node: NodeRecord) -> Self {
        Self {
            id: node.id,
            labels: node.labels,
            registered_ms: node.registered_ms,
            last_seen_ms: node.last_seen_ms,
            stale_since_ms: node.stale_since_ms,
            versions: node
                .versions
                .into_iter()
                .map(|(unit, applied)| (unit, applied.into()))
                .collect(),
        }
    }
}

/// A changelog entry with its unit's team (`None`: the unit is gone, or the entry is about no
/// unit).
pub(super) fn change_entry(
    entry: ChangeRecord,
    team: Option<String>,
) -> Result<failsmall_wire::ChangeEntry, ApiError> {
    let concerns = entry
        .concerns
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ApiError::internal(format!("changelog entry {}: {e}", entry.id)))?;
    Ok(failsmall_wire::ChangeEntry {
        id: entry.id,
        at_ms: entry.at_ms,
        actor: entry.actor,
        kind: entry.kind,
        unit: entry.unit,
        version: entry.version,
        reason: entry.reason,
        concerns,
        rollout: entry.rollout,
        stage: entry.stage,
        team,
    })
}

/// A changelog page, each entry with its unit's team from `teams` (unit name to team).
pub(super) fn changelog_page(
    page: ChangelogPage,
    teams: &BTreeMap<String, String>,
) -> Result<failsmall_wire::ChangelogPage, ApiError> {
    let entries = page
        .entries
        .into_iter()
        .map(|entry| {
            let team = entry
                .unit
                .as_ref()
                .and_then(|unit| teams.get(unit))
                .cloned();
            change_entry(entry, team)
        })
        .collect::<Result<_, _>>()?;
    Ok(failsmall_wire::ChangelogPage {
        entries,
        next_cursor: page.next_cursor,
    })
}

impl From<crate::store::VersionRecord> for failsmall_wire::Version {
    fn from(version: crate::store::VersionRecord) -> Self {
        Self {
            unit: version.unit,
            hash: version.hash,
            seq: version.seq,
            size_bytes: version.size_bytes,
            author: version.author,
            message: version.message,
            parent: version.parent,
            created_ms: version.created_ms,
            signature: version.signature,
            validation_skipped: version.validation_skipped,
        }
    }
}

/// A rollout the engine just made or changed, as the API answers it: a 500 naming `what`
/// when the engine no longer holds it (never for a step that succeeded).
pub(super) fn rollout(
    view: Option<failsmall_core::engine::RolloutView>,
    what: &str,
) -> Result<failsmall_wire::rollouts::Rollout, ApiError> {
    view.map(Into::into)
        .ok_or_else(|| ApiError::internal(format!("{what}: the engine holds no such rollout")))
}

impl From<failsmall_wire::requests::Role> for crate::auth::Role {
    fn from(role: failsmall_wire::requests::Role) -> Self {
        use failsmall_wire::requests::Role as Wire;
        match role {
            Wire::Viewer => Self::Viewer,
            Wire::Deployer => Self::Deployer,
            Wire::Approver => Self::Approver,
            Wire::Admin => Self::Admin,
            Wire::Agent => Self::Agent,
        }
    }
}

impl From<failsmall_wire::units::ValidatorCommand> for ValidatorCommand {
    fn from(validator: failsmall_wire::units::ValidatorCommand) -> Self {
        Self {
            command: validator.command,
            timeout_ms: validator.timeout_ms,
        }
    }
}

impl From<ValidatorCommand> for failsmall_wire::units::ValidatorCommand {
    fn from(validator: ValidatorCommand) -> Self {
        Self {
            command: validator.command,
            timeout_ms: validator.timeout_ms,
        }
    }
}

impl From<UnitRecord> for failsmall_wire::units::Unit {
    fn from(unit: UnitRecord) -> Self {
        Self {
            name: unit.name,
            spec: unit.spec.into(),
            owner: unit.owner,
            description: unit.description,
            revision: unit.revision,
            created_ms: unit.created_ms,
            updated_ms: unit.updated_ms,
            plan: unit.plan,
            validator: unit.validator.map(Into::into),
        }
    }
}

impl From<Role> for failsmall_wire::requests::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Viewer => Self::Viewer,
            Role::Deployer => Self::Deployer,
            Role::Approver => Self::Approver,
            Role::Admin => Self::Admin,
            Role::Agent => Self::Agent,
        }
    }
}

impl From<TokenRecord> for failsmall_wire::tokens::Token {
    fn from(token: TokenRecord) -> Self {
        Self {
            id: token.id,
            name: token.name,
            role: token.role.into(),
            created_ms: token.created_ms,
            revoked_ms: token.revoked_ms,
            node: token.node,
            owner: token.owner,
            expires_ms: token.expires_ms,
        }
    }
}
