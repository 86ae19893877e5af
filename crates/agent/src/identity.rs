//! Who the control plane takes this agent for, asked at each (re)connection before it
//! registers: an agent refuses to run on a token that retrying cannot make right.
//!
//! - a token the control plane refuses as invalid (401: mistyped, revoked): stop;
//! - a token whose role is not `agent` (an admin's, a deployer's): stop — an agent acts for
//!   one node and must not hold the keys to the fleet;
//! - an agent token bound to another node: stop, naming both nodes and where this agent's id
//!   came from;
//! - anything else (unreachable, a 5xx, a timeout): retry with backoff.
//!
//! A control plane that does not know `GET /v1/whoami` (404) is taken at its word: the
//! routes about the node still check the token.

use crate::AgentError;
use crate::control::{ControlError, ControlPlane, Identity};

/// Where the agent's node id came from, for the messages that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeIdFrom {
    /// `--node-id`.
    Flag,
    /// Saved in the data dir by an earlier run.
    DataDir,
    /// Made up at this start: no `--node-id` and none saved.
    New,
}

impl NodeIdFrom {
    pub fn describe(self) -> &'static str {
        match self {
            NodeIdFrom::Flag => "from --node-id",
            NodeIdFrom::DataDir => "saved in the data dir",
            NodeIdFrom::New => "made up at start: no --node-id was given and none was saved",
        }
    }
}

/// Why one identity check did not pass.
#[derive(Debug)]
pub enum Trouble {
    /// It may pass later: log, back off, try again.
    Retry(String),
    /// It will not: the agent stops with this error.
    Fatal(AgentError),
}

/// Judges what the control plane says of the token against this agent's node.
pub fn judge(identity: &Identity, node: &str, from: NodeIdFrom) -> Result<(), String> {
    let name = identity.name.as_deref().unwrap_or("?");
    let role = identity.role.as_deref().unwrap_or("none");
    if role != "agent" {
        return Err(format!(
            "the token {name:?} has role {role}; an agent runs only on an agent token bound \
             to its node (an admin makes one: failsmall token create {node} --role agent --node {node})"
        ));
    }
    match identity.node.as_deref() {
        Some(bound) if bound == node => Ok(()),
        Some(bound) => Err(format!(
            "the token {name:?} is bound to node {bound}, but this agent is node {node} ({}); \
             start it with --node-id {bound}, or give it node {node}'s token",
            from.describe()
        )),
        None => Err(format!(
            "the agent token {name:?} is bound to no node; make one with --node {node}"
        )),
    }
}

/// Asks the control plane who the token is and judges it (see the module's doc).
pub async fn check(control: &ControlPlane, from: NodeIdFrom) -> Result<(), Trouble> {
    match control.whoami().await {
        Ok(identity) => judge(&identity, control.node(), from)
            .map_err(|reason| Trouble::Fatal(AgentError::Refused(reason))),
        Err(ControlError::Status {
            status: 401, body, ..
        }) => {
            // The API's error shape: say its message, not the JSON.
            let said = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("error")
                        .and_then(|e| e.get("message"))
                        .and_then(|m| m.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or(body);
            Err(Trouble::Fatal(AgentError::Refused(format!(
                "the token was refused as invalid (401: {said}); check --token / FAILSMALL_TOKEN: \
                 it may be mistyped, revoked, or made by another control plane"
            ))))
        }
        Err(ControlError::Status { status: 404, .. }) => Ok(()),
        Err(error) => Err(Trouble::Retry(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(role: &str, node: Option<&str>) -> Identity {
        Identity {
            name: Some("t".to_owned()),
            role: Some(role.to_owned()),
            node: node.map(str::to_owned),
        }
    }

    #[test]
    fn only_an_agent_token_of_this_node_passes() {
        assert_eq!(
            judge(&identity("agent", Some("n1")), "n1", NodeIdFrom::Flag),
            Ok(())
        );
        let admin = judge(&identity("admin", None), "n1", NodeIdFrom::Flag).unwrap_err();
        assert!(admin.contains("has role admin"), "{admin}");
        assert!(admin.contains("--role agent --node n1"), "{admin}");
        let other = judge(&identity("agent", Some("n2")), "n1", NodeIdFrom::New).unwrap_err();
        assert!(
            other.contains("bound to node n2, but this agent is node n1"),
            "{other}"
        );
        assert!(other.contains("--node-id n2"), "{other}");
        assert!(other.contains("no --node-id was given"), "{other}");
    }
}
