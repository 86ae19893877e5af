//! Online break glass from the CLI: `failsmall break-glass request|requests|approve|claim`.
//! A person asks the control plane for a time-boxed elevated role; other people approve it;
//! the requester claims it once and gets a token that expires on its own.

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::RemoteArgs;
use super::render::{Table, print_json, rfc3339};
use crate::Outcome;

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The role asked for: admin, deployer or approver.
    #[arg(long)]
    pub role: String,
    /// How long the role lasts once granted (1m to 4h), e.g. `30m`.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: String,
    /// Why: the approvers read it, the changelog keeps it.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The request's id.
    pub id: u64,
    /// Why: recorded in the changelog.
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct ClaimArgs {
    /// The request's id (yours, granted).
    pub id: u64,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn describe(request: &Value) -> String {
    let approvals = request
        .get("approvals")
        .and_then(Value::as_array)
        .map(|all| {
            all.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "break-glass request {} by {}: role {} for {} ms, {}; approvals {}/{} ({})",
        text(request, "id"),
        text(request, "requester"),
        text(request, "role"),
        text(request, "duration_ms"),
        text(request, "state"),
        request
            .get("approvals")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
        text(request, "approvals_needed"),
        if approvals.is_empty() {
            "none yet".to_owned()
        } else {
            approvals
        }
    )
}

pub fn request(args: &RequestArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let (_, answer): (u16, Value) = client.send_json(
        Method::POST,
        "/v1/break-glass/requests",
        &json!({"role": args.role, "duration": args.duration, "reason": args.reason}),
    )?;
    if args.remote.json() {
        print_json(&answer)?;
    } else {
        outln!("{}", describe(&answer));
        outln!(
            "approvers run  failsmall break-glass approve {} --reason \"...\"",
            text(&answer, "id")
        );
        outln!(
            "then you run   failsmall break-glass claim {}",
            text(&answer, "id")
        );
    }
    Ok(Outcome::Success)
}

pub fn list(args: &ListArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let answer: Value = client.get("/v1/break-glass/requests", &[])?;
    if args.remote.json() {
        print_json(&answer)?;
        return Ok(Outcome::Success);
    }
    let mut table = Table::new(&[
        "ID",
        "REQUESTER",
        "ROLE",
        "STATE",
        "APPROVALS",
        "ENDS",
        "REASON",
    ]);
    for request in answer
        .get("requests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let approvals = request
            .get("approvals")
            .and_then(Value::as_array)
            .map(|all| {
                all.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        table.row(vec![
            text(request, "id"),
            text(request, "requester"),
            text(request, "role"),
            text(request, "state"),
            format!("{approvals} ({} needed)", text(request, "approvals_needed")),
            request
                .get("ends_ms")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".to_owned(), rfc3339),
            text(request, "reason"),
        ]);
    }
    out!("{}", table.render());
    Ok(Outcome::Success)
}

pub fn approve(args: &ApproveArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let (_, answer): (u16, Value) = client.send_json(
        Method::POST,
        &format!("/v1/break-glass/requests/{}/approve", args.id),
        &json!({"reason": args.reason}),
    )?;
    if args.remote.json() {
        print_json(&answer)?;
    } else {
        outln!("{}", describe(&answer));
    }
    Ok(Outcome::Success)
}

pub fn claim(args: &ClaimArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let (_, answer): (u16, Value) = client.send_json(
        Method::POST,
        &format!("/v1/break-glass/requests/{}/claim", args.id),
        &json!({}),
    )?;
    if args.remote.json() {
        print_json(&answer)?;
        return Ok(Outcome::Success);
    }
    // The secret alone on stdout (as `token create` does), the rest on stderr.
    eprintln!(
        "{}; the token below is shown only now and is refused after {}",
        describe(&answer),
        answer
            .get("ends_ms")
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), rfc3339)
    );
    outln!("{}", text(&answer, "token"));
    Ok(Outcome::Success)
}
