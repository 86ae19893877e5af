//! `failsmall token`: the control plane's access tokens (admin only). A token's secret is shown
//! once, when it is created; the server keeps only its SHA-256.

use std::str::FromStr as _;

use clap::{Args, Subcommand};
use failsmall_wire::requests::Role;
use failsmall_wire::tokens::Token as TokenRecord;
use reqwest::Method;
use serde_json::json;

use super::RemoteArgs;
use super::render::{Table, print_json, rfc3339};
use crate::Outcome;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown this once; only its hash is stored).
    Create(CreateArgs),
    /// List the tokens: id, name, role, node, created, revoked (never the secrets).
    List,
    /// Rotate a token: a new secret (printed once) for the same name, role, node, owner and
    /// expiry; the old secret is refused from then on.
    Rotate {
        /// The token's id, from `failsmall token list`.
        #[arg(value_parser = parse_token_id)]
        id: u64,
    },
    /// Revoke a token: every request that carries it is refused from then on.
    Revoke {
        /// The token's id, from `failsmall token list`.
        #[arg(value_parser = parse_token_id)]
        id: u64,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Who or what holds it, e.g. `ci-deploy`, `alice`, or the node's id.
    pub name: String,
    /// viewer, deployer, approver, admin, or agent (register, watch, fetch, report for one
    /// node).
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// The node an agent token acts for (required with `--role agent`, refused otherwise).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// The person the token acts for (approvals compare owners: a token of the pusher's
    /// owner cannot approve). Default: you, the creator; agent tokens have none.
    #[arg(long, value_name = "PERSON")]
    pub owner: Option<String>,
    /// How long the token is accepted (`30d`, `12h`, at least `1m`); default: until revoked.
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::from_str(text)
}

fn parse_token_id(text: &str) -> Result<u64, String> {
    text.trim().parse::<u64>().map_err(|_| {
        format!("token id {text:?}: expected a number such as 3 (see `failsmall token list`)")
    })
}

use failsmall_wire::tokens::{NewToken as Created, TokenList};

pub fn run(args: &TokenArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    match &args.command {
        TokenCommand::Create(create) => {
            let body = json!({
                "name": create.name,
                "role": create.role,
                "node": create.node,
                "owner": create.owner,
                "expires_in": create.expires_in,
            });
            let (_, created): (u16, Created) =
                client.send_json(Method::POST, "/v1/tokens", &body)?;
            if args.remote.json() {
                print_json(&created)?;
            } else {
                // The secret alone on stdout, so `TOKEN=$(failsmall token create ...)` works;
                // what it is goes to stderr.
                eprintln!(
                    "token {} {:?} ({}{}) created; its secret is shown only now:",
                    created.record.id,
                    created.record.name,
                    created.record.role,
                    node_text(created.record.node.as_deref())
                );
                outln!("{}", created.token);
            }
        }
        TokenCommand::List => {
            let list: TokenList = client.get_all("/v1/tokens", "tokens")?;
            if args.remote.json() {
                print_json(&list.tokens)?;
            } else {
                out!("{}", table(&list.tokens).render());
            }
        }
        TokenCommand::Rotate { id } => {
            let (_, created): (u16, Created) =
                client.send_json(Method::POST, &format!("/v1/tokens/{id}/rotate"), &json!({}))?;
            if args.remote.json() {
                print_json(&created)?;
            } else {
                eprintln!(
                    "token {id} rotated: token {} {:?} ({}) replaces it; its secret is shown only now:",
                    created.record.id, created.record.name, created.record.role
                );
                outln!("{}", created.token);
            }
        }
        TokenCommand::Revoke { id } => {
            let (_, record): (u16, TokenRecord) =
                client.send_json(Method::DELETE, &format!("/v1/tokens/{id}"), &json!({}))?;
            if args.remote.json() {
                print_json(&record)?;
            } else {
                outln!(
                    "token {} {:?} ({}) revoked",
                    record.id,
                    record.name,
                    record.role
                );
            }
        }
    }
    Ok(Outcome::Success)
}

/// ` for node n1`, or nothing.
fn node_text(node: Option<&str>) -> String {
    node.map(|node| format!(" for node {node}"))
        .unwrap_or_default()
}

fn table(tokens: &[TokenRecord]) -> Table {
    let mut table = Table::new(&[
        "ID", "NAME", "ROLE", "NODE", "OWNER", "CREATED", "EXPIRES", "REVOKED",
    ]);
    for token in tokens {
        table.row(vec![
            token.id.to_string(),
            token.name.clone(),
            token.role.to_string(),
            token.node.clone().unwrap_or_else(|| "-".to_owned()),
            token.owner.clone().unwrap_or_else(|| token.name.clone()),
            rfc3339(token.created_ms),
            token.expires_ms.map_or_else(|| "-".to_owned(), rfc3339),
            token.revoked_ms.map_or_else(|| "-".to_owned(), rfc3339),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_ids_parse_or_say_what_is_expected() {
        assert_eq!(parse_role("approver"), Ok(Role::Approver));
        assert!(parse_role("root").unwrap_err().contains("expected viewer"));
        assert_eq!(parse_token_id("12"), Ok(12));
        assert!(parse_token_id("r12").unwrap_err().contains("token list"));
    }

    #[test]
    fn the_table_shows_node_and_revocation_or_a_dash() {
        let tokens = [
            TokenRecord {
                id: 1,
                name: "ci".to_owned(),
                role: Role::Deployer,
                created_ms: 0,
                revoked_ms: None,
                node: None,
                owner: Some("alice".to_owned()),
                expires_ms: None,
            },
            TokenRecord {
                id: 2,
                name: "fra-03-017".to_owned(),
                role: Role::Agent,
                created_ms: 0,
                revoked_ms: Some(1_000),
                node: Some("fra-03-017".to_owned()),
                owner: None,
                expires_ms: None,
            },
        ];
        let text = table(&tokens).render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("ci") && lines[1].contains("deployer"),
            "{text}"
        );
        assert!(lines[1].trim_end().ends_with('-'), "{text}");
        assert!(lines[1].contains("alice"), "{text}");
        assert!(
            lines[2].contains("fra-03-017") && lines[2].contains("agent"),
            "{text}"
        );
        assert!(lines[2].contains("1970-01-01T00:00:01"), "{text}");
    }
}
