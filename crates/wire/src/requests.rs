//! Request bodies the server takes, as it reads them (unknown fields are refused).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Deployer,
    Approver,
    Admin,
    Agent,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Deployer,
        Role::Approver,
        Role::Admin,
        Role::Agent,
    ];

    /// The role as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "role {s:?} is unknown; expected viewer, deployer, approver, admin or agent"
                )
            })
    }
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    pub role: Role,
    /// The node an agent token acts for: required for `agent`, refused for other roles
    /// (422).
    #[serde(default)]
    #[schema(schema_with = crate::schema::optional_node_id)]
    pub node: Option<String>,
    /// The person the token acts for; default: the creator, for people's roles.
    #[serde(default)]
    pub owner: Option<String>,
    /// How long it is accepted (`30d`, `12h`); default: until revoked.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// `PUT /v1/nodes/{node}`: an agent registers its node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterNodeRequest {
    /// At most 64 labels; keys of 1 to 256 bytes, values of at most 256.
    #[serde(default)]
    #[schema(schema_with = crate::schema::labels)]
    pub labels: BTreeMap<String, String>,
}

/// An incident's bounds: its title, an update's message, a component's name and a review,
/// in bytes, and the most components one names.
pub const INCIDENT_TITLE_MAX_BYTES: usize = 200;
pub const INCIDENT_UPDATE_MAX_BYTES: usize = 4 * 1024;
pub const INCIDENT_COMPONENT_MAX_BYTES: usize = 128;
pub const INCIDENT_REVIEW_MAX_BYTES: usize = 64 * 1024;
pub const INCIDENT_COMPONENTS_MAX: usize = 32;

/// An incident's severity.
pub const SEVERITIES: [&str; 3] = ["sev1", "sev2", "sev3"];

/// `POST /v1/incidents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenIncidentRequest {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub title: String,
    /// `sev1`, `sev2` or `sev3`.
    #[schema(pattern = "^sev[123]$")]
    pub severity: String,
    #[serde(default)]
    #[schema(schema_with = crate::schema::incident_components)]
    pub components: Vec<String>,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub message: String,
}

/// `POST /v1/incidents/{id}/updates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIncidentRequest {
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = r"[^\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub message: String,
    /// `investigating`, `identified`, `monitoring` or `resolved`; absent: unchanged.
    #[serde(default)]
    #[schema(pattern = "^(investigating|identified|monitoring|resolved)$")]
    pub status: Option<String>,
    /// `sev1`, `sev2` or `sev3`; absent: unchanged.
    #[serde(default)]
    #[schema(pattern = "^sev[123]$")]
    pub severity: Option<String>,
}

/// `PUT /v1/incidents/{id}/review`: the post-incident review, Markdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewIncidentRequest {
    #[schema(
        min_length = 1,
        max_length = 65536,
        pattern = r"[^\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub markdown: String,
}

/// `POST /v1/incidents/{id}/resolve`: an optional closing message; an empty body is `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveIncidentRequest {
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub message: String,
}

/// A body of only an optional reason (approvals, lifts, resolutions); an empty body is `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    #[serde(default)]
    #[schema(schema_with = crate::schema::text)]
    pub reason: String,
}

/// A body of only a reason that must say something (stopping the line, lifting a
/// quarantine): it goes to the changelog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequiredReasonRequest {
    #[schema(schema_with = crate::schema::required_text)]
    pub reason: String,
}

/// `POST /v1/break-glass/requests`: ask for a role for a while (`duration` from 1m to 4h, 422
/// outside that).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ElevationRequest {
    /// `admin`, `deployer` or `approver` (another role is 422).
    pub role: Role,
    /// `30m`, `2h`: how long the role lasts once granted.
    #[schema(pattern = "^[0-9]+(s|m|h|d)$")]
    pub duration: String,
    #[schema(schema_with = crate::schema::required_text)]
    pub reason: String,
}

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// `http://` or `https://`.
    #[schema(pattern = "^https?://")]
    pub url: String,
    /// `slack`, `pagerduty` or `generic`.
    #[schema(pattern = "^(slack|pagerduty|generic)$")]
    pub kind: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub secret: Option<String>,
}
