//! Online break glass from the CLI: `failsmall break-glass request|requests|approve|claim`.
//! A person asks the control plane for a time-boxed elevated role; other people approve it;
//! the requester claims it once and gets a token that expires on its own.

use clap::Args;
use failsmall_wire::elevations::{Elevation, ElevationList};
use reqwest::Method;
use serde_json::json;

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

fn describe(request: &Elevation) -> String {
    let approvals = if request.approvals.is_empty() {
        "none yet".to_owned()
    } else {
        request.approvals.join(", ")
    };
    format!(
        "break-glass request {} by {}: role {} for {} ms, {}; approvals {}/{} ({approvals})",
        request.id,
        request.requester,
        request.role,
        request.duration_ms,
        request.state,
        request.approvals.len(),
        request.approvals_needed,
    )
}

fn ends(request: &Elevation) -> String {
    request.ends_ms.map_or_else(|| "-".to_owned(), rfc3339)
}

pub fn request(args: &RequestArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let (_, answer): (u16, Elevation) = client.send_json(
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
            answer.id
        );
        outln!("then you run   failsmall break-glass claim {}", answer.id);
    }
    Ok(Outcome::Success)
}

pub fn list(args: &ListArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let answer: ElevationList = client.get("/v1/break-glass/requests", &[])?;
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
    for request in &answer.requests {
        table.row(vec![
            request.id.to_string(),
            request.requester.clone(),
            request.role.to_string(),
            request.state.clone(),
            format!(
                "{} ({} needed)",
                request.approvals.join(","),
                request.approvals_needed
            ),
            ends(request),
            request.reason.clone(),
        ]);
    }
    out!("{}", table.render());
    Ok(Outcome::Success)
}

pub fn approve(args: &ApproveArgs) -> anyhow::Result<Outcome> {
    let client = args.remote.connect()?;
    let (_, answer): (u16, Elevation) = client.send_json(
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
    let (_, answer): (u16, Elevation) = client.send_json(
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
        ends(&answer)
    );
    outln!("{}", answer.token.as_deref().unwrap_or("-"));
    Ok(Outcome::Success)
}
