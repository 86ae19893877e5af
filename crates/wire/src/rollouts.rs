//! Rollouts: start one, command it, approve a stage, retry one that ended badly.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/rollouts`. `plan` is a plan file's text (YAML; JSON accepted), parsed and
/// checked (422 naming the file, line and field); the unit and version must exist (404).
/// Overrides are an admin's (403) and need a `reason` (422).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRolloutRequest {
    #[schema(schema_with = crate::schema::unit_name)]
    pub unit: String,
    #[schema(schema_with = crate::schema::hash)]
    pub version: String,
    pub plan: String,
    /// The plan file's name, for error messages.
    #[serde(default)]
    pub plan_file: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub reason: String,
    #[serde(default)]
    pub override_quarantine: bool,
    /// Start during a freeze (logged in the rollout's reason).
    #[serde(default)]
    pub override_freeze: bool,
    /// Start although the unit's error budget is spent.
    #[serde(default)]
    pub override_error_budget: bool,
}

/// An operator's command on a rollout (`approve` goes to `/v1/rollouts/{id}/approve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutCommand {
    Pause,
    Resume,
    /// Skip the rest of the current stage's bake; on a soaking rollout, end the soak.
    Promote,
    /// Stop where it is: exposed nodes keep the new version.
    Abort,
    /// Revert every exposed node.
    Rollback,
}

/// `POST /v1/rollouts/{id}/commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub command: RolloutCommand,
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub reason: String,
}

/// `POST /v1/rollouts/{id}/retry`: the same version through the same plan; an empty body is
/// `{}`. Overrides are an admin's (403) and need a `reason` (422).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub reason: String,
    #[serde(default)]
    pub override_quarantine: bool,
    #[serde(default)]
    pub override_error_budget: bool,
}
