//! Access control: bearer tokens, roles, and which roles each class of route admits.
//!
//! Deny by default: a request passes only if its route is classified (see
//! [`crate::api::route_table`]) and its class admits the caller's role.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads units, versions, nodes, the changelog.
    Viewer,
    /// Viewer, and creates units and pushes versions.
    Deployer,
    /// Viewer, and approves stages.
    Approver,
    /// Everything, including tokens.
    Admin,
    /// A node's agent: registers, heartbeats, watches, fetches blobs, reports.
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

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role {given:?} is unknown; expected viewer, deployer, approver, admin or agent")]
pub struct RoleError {
    pub given: String,
}

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, RoleError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| RoleError {
                given: s.to_owned(),
            })
    }
}

/// The class of a route: which callers it admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone, without a token (health, API description, public key).
    Public,
    /// People who may look: viewer, deployer, approver, admin.
    Read,
    /// Content fetched by hash: people who may look, and agents.
    Fetch,
    /// Changes to units and versions: deployer, admin.
    Deploy,
    /// Stage approvals: approver, admin.
    Approve,
    /// Agent reports (register, heartbeat): agent, admin.
    AgentReport,
    /// Tokens and overrides: admin.
    Admin,
}

impl Access {
    /// Whether a caller with `role` (`None`: no token) may use a route of this class.
    pub fn admits(self, role: Option<Role>) -> bool {
        use Role::*;
        let Some(role) = role else {
            return self == Access::Public;
        };
        match self {
            Access::Public => true,
            Access::Read => matches!(role, Viewer | Deployer | Approver | Admin),
            Access::Fetch => matches!(role, Viewer | Deployer | Approver | Admin | Agent),
            Access::Deploy => matches!(role, Deployer | Admin),
            Access::Approve => matches!(role, Approver | Admin),
            Access::AgentReport => matches!(role, Agent | Admin),
            Access::Admin => role == Admin,
        }
    }
}

/// The bytes of a new token: `fs_` and 64 hex characters (32 random bytes).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("fs_{}", hex::encode(bytes)))
}

/// What the store keeps of a token: its SHA-256, hex.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The caller of a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The person (or service) acting: the token's owner, else its name. The actor in the
    /// changelog, and what approvals compare with the pusher; `anonymous` without a token.
    pub name: String,
    /// The token's own name; `anonymous` without a token.
    pub token: String,
    pub role: Option<Role>,
    /// The node an agent token is bound to.
    pub node: Option<String>,
}

impl Caller {
    /// Whether the caller may act for `node` on a node's routes: an agent only for the node
    /// its token is bound to, people by their role alone.
    pub fn may_act_for(&self, node: &str) -> bool {
        match self.role {
            Some(Role::Agent) => self.node.as_deref() == Some(node),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn only_public_admits_anonymous_and_admin_is_admitted_everywhere() {
        for access in [
            Access::Public,
            Access::Read,
            Access::Fetch,
            Access::Deploy,
            Access::Approve,
            Access::AgentReport,
            Access::Admin,
        ] {
            assert_eq!(access.admits(None), access == Access::Public);
            assert!(access.admits(Some(Role::Admin)));
        }
        assert!(!Access::Read.admits(Some(Role::Agent)));
        assert!(Access::Fetch.admits(Some(Role::Agent)));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 67);
        assert_eq!(token_sha256(&a).len(), 64);
        assert_ne!(token_sha256(&a), a);
    }

    #[test]
    fn an_agent_acts_only_for_its_own_node() {
        let agent = |node: Option<&str>| Caller {
            name: "a".to_owned(),
            token: "a".to_owned(),
            role: Some(Role::Agent),
            node: node.map(str::to_owned),
        };
        assert!(agent(Some("n1")).may_act_for("n1"));
        assert!(!agent(Some("n1")).may_act_for("n2"));
        assert!(!agent(None).may_act_for("n1"));
        let admin = Caller {
            name: "root".to_owned(),
            token: "root".to_owned(),
            role: Some(Role::Admin),
            node: None,
        };
        assert!(admin.may_act_for("n1"));
    }
}
