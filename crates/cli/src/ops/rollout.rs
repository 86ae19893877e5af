//! `failsmall rollout start|list|status|watch|pause|resume|promote|abort|rollback|approve|undo|retry`.

use anyhow::bail;
use clap::{Args, Subcommand};
use failsmall_core::duration::format_ms;
use failsmall_core::engine::Command;
use failsmall_wire::rollouts::{
    GateReport, Rollout as RolloutView, RolloutList, RolloutStatus, StagePhase, Verdict,
};
use reqwest::Method;
use serde_json::json;

use failsmall_wire::units::Unit as UnitRecord;

use super::RemoteArgs;
use super::client::ApiClient;
use super::render::{Table, ago, now_ms, print_json, rfc3339, short_hash};
use crate::Outcome;

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// A rollout's id, as printed (`7` or `r7`).
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The rollout's id (`7` or `r7`).
    #[arg(value_parser = parse_rollout_id)]
    pub id: u64,
}

/// A rollout's id and why it is being steered.
#[derive(Debug, Args)]
pub struct SteerArgs {
    /// The rollout's id (`7` or `r7`).
    #[arg(value_parser = parse_rollout_id)]
    pub id: u64,
    /// Why: recorded in the changelog.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// A version already stored, to roll out (again).
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The unit.
    pub unit: String,
    /// The version: a hash, or a unique prefix of at least 4 characters.
    #[arg(value_name = "VERSION")]
    pub hash: String,
    /// The plan (YAML or JSON) [default: the unit's own plan, else the built-in default plan].
    #[arg(long, value_name = "FILE")]
    pub plan: Option<std::path::PathBuf>,
    /// Why: recorded in the changelog.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Roll out a quarantined version anyway, e.g. once its consumer is fixed (admin only).
    #[arg(long)]
    pub override_quarantine: bool,
    /// Start it although an SLO of the unit has spent its error budget (admin only; needs
    /// --reason, recorded in the changelog).
    #[arg(long)]
    pub override_error_budget: bool,
    /// Then follow the rollout as `rollout watch` does: exits 0 when it completes, 3 when it
    /// is rolled back or aborted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Roll out a version already stored (an older one, or a quarantined one once fixed).
    Start(StartArgs),
    /// List rollouts, newest first.
    List {
        /// Only this unit's rollouts.
        #[arg(long)]
        unit: Option<String>,
        /// Only rollouts that have not ended.
        #[arg(long)]
        active: bool,
    },
    /// Show where a rollout is: stage, nodes, bake, gates.
    Status(IdArgs),
    /// Follow a rollout until it ends: exits 0 when it completes, 3 when it is rolled back or
    /// aborted.
    Watch(super::watch::WatchArgs),
    /// Hold the rollout where it is.
    Pause(SteerArgs),
    /// Continue a paused rollout.
    Resume(SteerArgs),
    /// Skip the rest of the current stage's bake (its gates must not be failing).
    Promote(SteerArgs),
    /// Stop the rollout where it is; nodes that have the version keep it.
    Abort(SteerArgs),
    /// Revert every node the rollout reached to the version it had before (of an aborted
    /// rollout: the nodes it left on its version), and quarantine the version.
    Rollback(SteerArgs),
    /// Go back to the version that was stable before the unit's current stable one, through
    /// the unit's plan (else the built-in default plan), or at once with --fast.
    Undo(super::everyday::UndoArgs),
    /// Roll out a rolled back or aborted rollout's version again, through the same plan.
    Retry(super::everyday::RetryArgs),
    /// Approve the current stage (needs the approver role, and someone other than the pusher).
    Approve(SteerArgs),
}

/// Parses `7` or `r7`.
pub fn parse_rollout_id(text: &str) -> Result<u64, String> {
    let digits = text.trim().strip_prefix('r').unwrap_or(text.trim());
    digits
        .parse::<u64>()
        .map_err(|_| format!("rollout id {text:?}: expected a number such as 7 or r7"))
}

/// GET one rollout.
pub fn fetch(client: &ApiClient, id: u64) -> Result<RolloutView, super::client::ClientError> {
    client.get(&format!("/v1/rollouts/{id}"), &[])
}

pub fn run(args: &RolloutArgs) -> anyhow::Result<Outcome> {
    if let RolloutCommand::Watch(watch) = &args.command {
        return super::watch::run(watch, &args.remote);
    }
    let client = args.remote.connect()?;
    let json_output = args.remote.json();
    let (steer, command) = match &args.command {
        RolloutCommand::Start(start_args) => {
            let started = start(&client, start_args, json_output)?;
            return super::versions::follow(started.filter(|_| start_args.watch), &args.remote);
        }
        RolloutCommand::Undo(undo) => {
            let started = super::everyday::undo(&client, undo, json_output)?;
            return super::versions::follow(started.filter(|_| undo.watch), &args.remote);
        }
        RolloutCommand::Retry(retry) => {
            let started = super::everyday::retry(&client, retry, json_output)?;
            return super::versions::follow(started.filter(|_| retry.watch), &args.remote);
        }
        RolloutCommand::List { unit, active } => {
            let list: RolloutList = client.get_all("/v1/rollouts", "rollouts")?;
            let views: Vec<RolloutView> = list
                .rollouts
                .into_iter()
                .filter(|v| unit.as_deref().is_none_or(|u| v.unit.as_str() == u))
                .filter(|v| !*active || !v.status.is_terminal())
                .collect();
            if json_output {
                print_json(&views)?;
            } else {
                out!("{}", list_table(&views, now_ms()).render());
            }
            return Ok(Outcome::Success);
        }
        RolloutCommand::Status(id) => {
            let view = fetch(&client, id.id)?;
            if json_output {
                print_json(&view)?;
            } else {
                out!("{}", status_text(&view));
                for (stage, why) in skipped_stages(&client, id.id)? {
                    outln!("skipped   stage {stage}: {why}");
                }
            }
            return Ok(Outcome::Success);
        }
        RolloutCommand::Watch(_) => bail!("rollout watch is handled above"),
        RolloutCommand::Pause(steer) => (steer, Command::Pause),
        RolloutCommand::Resume(steer) => (steer, Command::Resume),
        RolloutCommand::Promote(steer) => (steer, Command::Promote),
        RolloutCommand::Abort(steer) => (steer, Command::Abort),
        RolloutCommand::Rollback(steer) => (steer, Command::Rollback),
        RolloutCommand::Approve(steer) => (steer, Command::Approve),
    };
    let (path, body) = if command == Command::Approve {
        (
            format!("/v1/rollouts/{}/approve", steer.id),
            json!({"reason": steer.reason}),
        )
    } else {
        (
            format!("/v1/rollouts/{}/commands", steer.id),
            json!({"command": command, "reason": steer.reason}),
        )
    };
    let (_, view): (u16, Option<RolloutView>) = client.send_json(Method::POST, &path, &body)?;
    if json_output {
        print_json(&view)?;
    } else {
        match view {
            Some(view) => outln!(
                "rollout {}: {} sent; now {}, {}",
                view.id,
                command_name(command),
                status_name(view.status),
                stage_text(&view)
            ),
            None => outln!("rollout {}: {} sent", steer.id, command_name(command)),
        }
    }
    Ok(Outcome::Success)
}

/// `rollout start`: the id of the rollout it started, if the server started one at once.
fn start(client: &ApiClient, args: &StartArgs, json_output: bool) -> anyhow::Result<Option<u64>> {
    let unit: UnitRecord = client.get(&format!("/v1/units/{}", args.unit), &[])?;
    let (plan_file, plan_text) = match (&args.plan, &unit.plan) {
        (None, Some(own)) => (format!("the plan of unit {}", args.unit), own.clone()),
        (given, _) => super::versions::load_plan(given.as_deref())?,
    };
    let version = super::versions::resolve_hash(client, &args.unit, &args.hash)?;
    let view = super::versions::request_rollout(
        client,
        &super::versions::RolloutRequest {
            unit: &args.unit,
            version: &version,
            plan_file: &plan_file,
            plan_text: &plan_text,
            reason: &args.reason,
            override_quarantine: args.override_quarantine,
            override_error_budget: args.override_error_budget,
        },
    )?;
    let started = view.as_ref().map(|view| view.id);
    if json_output {
        print_json(&view)?;
        return Ok(started);
    }
    match view {
        Some(view) => {
            outln!(
                "rollout {} of {} {}: {} {} (plan {})",
                view.id,
                args.unit,
                short_hash(&version),
                status_name(view.status),
                stage_text(&view),
                view.plan
            );
            outln!("follow  failsmall rollout watch {}", view.id);
        }
        None => outln!(
            "rollout of {} {} requested",
            args.unit,
            short_hash(&version)
        ),
    }
    Ok(started)
}

fn command_name(command: Command) -> String {
    serde_json::to_value(command)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `running`, `rolled_back`, ...
pub fn status_name(status: RolloutStatus) -> String {
    status.as_str().to_owned()
}

/// `applying`, `baking`, ...
pub fn phase_name(phase: &StagePhase) -> &'static str {
    match phase {
        StagePhase::Applying => "applying",
        StagePhase::Baking { .. } => "baking",
        StagePhase::Holding => "holding",
        StagePhase::AwaitingApproval => "awaiting approval",
        StagePhase::Passed => "passed",
        StagePhase::Soaking { .. } => "soaking",
        StagePhase::Observing { .. } => "observing (before exposing)",
    }
}

/// `stage 2/5 free-10 (baking)`; a rollout a freeze holds says so, with the freeze's reason:
/// `stage 1/5 employees (held by freeze 3: holiday change freeze)`.
pub fn stage_text(view: &RolloutView) -> String {
    let phase = if view.status.is_terminal() {
        String::new()
    } else if let Some(held) = &view.held_by_freeze {
        format!(" (held by {held})")
    } else {
        format!(" ({})", phase_name(&view.phase))
    };
    format!(
        "stage {}/{} {}{phase}",
        view.stage_index.saturating_add(1),
        view.stages_total,
        view.stage_name
    )
}

/// What the changelog says of a stage that passed at once because it selected no node.
const NO_NODE_MARK: &str = "no nodes selected by this stage";

use failsmall_wire::ChangelogPage;

/// The stages of rollout `id` that selected no node and so passed at once, in order, with
/// why (from the rollout's changelog).
pub fn skipped_stages(
    client: &ApiClient,
    id: u64,
) -> Result<Vec<(String, String)>, super::client::ClientError> {
    Ok(stage_endings(client, id)?
        .into_iter()
        .filter(|(_, what)| what.starts_with("skipped: "))
        .collect())
}

/// How each stage of a rollout ended so far, in order: `skipped: why` (it selected no node)
/// or `passed: why` (with its gates' last numbers), from the changelog.
pub fn stage_endings(
    client: &ApiClient,
    id: u64,
) -> Result<Vec<(String, String)>, super::client::ClientError> {
    let page: ChangelogPage = client.get(
        "/v1/changelog",
        &[("rollout", id.to_string()), ("limit", "1000".to_owned())],
    )?;
    let mut entries = page.entries;
    entries.sort_by_key(|entry| entry.id);
    Ok(entries
        .into_iter()
        .filter_map(|entry| {
            let why = entry
                .reason
                .split_once(": ")
                .map_or(entry.reason.as_str(), |(_, why)| why)
                .to_owned();
            let what = match entry.kind.as_str() {
                "stage_started" if entry.reason.contains(NO_NODE_MARK) => format!("skipped: {why}"),
                "stage_passed" => format!("passed: {why}"),
                _ => return None,
            };
            Some((entry.stage.unwrap_or_default(), what))
        })
        .collect())
}

/// How to approve a rollout that waits for it: the exact command, and who may run it.
pub fn approval_hint(view: &RolloutView) -> Option<String> {
    (view.phase == StagePhase::AwaitingApproval && !view.status.is_terminal()).then(|| {
        format!(
            "waiting for approval: failsmall rollout approve {} --reason \"...\" (an approver or \
             admin token of someone other than {}, who started it)",
            view.id, view.actor
        )
    })
}

/// `2/3 nodes applied (this stage selects 1)`: applied out of exposed, which never exceeds it.
pub fn nodes_text(view: &RolloutView) -> String {
    format!(
        "{}/{} nodes applied (this stage selects {})",
        view.nodes_applied.min(view.nodes_exposed),
        view.nodes_exposed,
        view.nodes_targeted
    )
}

/// `pass`, `FAIL` or `inconclusive`, and the numbers behind it.
pub fn verdict_text(verdict: &Verdict) -> (&'static str, &str) {
    match verdict {
        Verdict::Pass { detail } => ("pass", detail),
        Verdict::Fail { detail } => ("FAIL", detail),
        Verdict::Inconclusive { detail } => ("inconclusive", detail),
    }
}

/// A gate's verdict and numbers in one line, without repeating the expression when the
/// detail already starts with it.
pub fn gate_line(gate: &GateReport) -> String {
    let (verdict, detail) = verdict_text(&gate.verdict);
    match detail.strip_prefix(gate.gate.as_str()) {
        Some(rest) if rest.contains(verdict) => format!("gate {detail}"),
        _ => format!("gate {}: {verdict}: {detail}", gate.gate),
    }
}

/// A duration left, rounded up to whole seconds from one second on.
pub fn time_left(duration_ms: u64) -> String {
    if duration_ms < 1000 {
        return format_ms(duration_ms);
    }
    format_ms(duration_ms.div_ceil(1000).saturating_mul(1000))
}

fn list_table(views: &[RolloutView], now: u64) -> Table {
    let mut table = Table::new(&[
        "ID", "UNIT", "VERSION", "STATUS", "STAGE", "EXPOSED", "PLAN", "STARTED",
    ]);
    for view in views {
        table.row(vec![
            view.id.to_string(),
            view.unit.clone(),
            short_hash(&view.version).to_owned(),
            status_name(view.status),
            stage_text(view),
            view.nodes_exposed.to_string(),
            view.plan.clone(),
            ago(now, view.created_ms),
        ]);
    }
    table
}

/// Everything `rollout status` shows, for people.
pub fn status_text(view: &RolloutView) -> String {
    let mut lines = vec![
        format!("rollout   {}", view.id),
        format!("unit      {}", view.unit),
        format!("version   {}", view.version),
        format!("plan      {}", view.plan),
        format!("status    {}", status_name(view.status)),
        format!("stage     {}", stage_text(view)),
        format!(
            "nodes     {} of {} exposed applied; this stage selects {}",
            view.nodes_applied.min(view.nodes_exposed),
            view.nodes_exposed,
            view.nodes_targeted
        ),
    ];
    if let Some(hint) = approval_hint(view) {
        lines.push(format!("approval  {hint}"));
    }
    if let Some(bake_ms) = view.bake_remaining_ms {
        lines.push(format!("bake      {} left", time_left(bake_ms)));
    }
    if let Some(soak_ms) = view.soak_remaining_ms {
        lines.push(format!(
            "soak      {} left (`failsmall rollout promote {}` ends it now)",
            time_left(soak_ms),
            view.id
        ));
    }
    let canary = &view.canary;
    lines.push(format!(
        "canary    {} nodes, {} requests, {} errors, {} NACKs, {} crashes, {} failed checks, {} silent",
        canary.nodes,
        canary.requests(),
        canary.errors(),
        canary.rejections,
        canary.crashes,
        canary.health_check_failures,
        canary.silent_nodes
    ));
    if let Some(silence) = &view.silence
        && silence.silent > 0
    {
        lines.push(format!("silence   {}", silence_line(silence)));
    }
    lines.push(format!(
        "started   {} by {}: {}",
        rfc3339(view.created_ms),
        view.actor,
        view.reason
    ));
    if let Some(ended_ms) = view.ended_ms {
        lines.push(format!("ended     {}", rfc3339(ended_ms)));
    }
    if let Some(outcome) = &view.outcome {
        lines.push(format!("outcome   {outcome}"));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    if !view.gates.is_empty() {
        text.push_str("gates (at their latest evaluation; the canary line above is live)\n");
        for gate in &view.gates {
            text.push_str(&format!("  {}\n", gate_line(gate)));
        }
    }
    text
}

/// The silence judgement in one line: how many canary nodes are silent, against what, and
/// what that means for the stage.
fn silence_line(silence: &failsmall_wire::rollouts::Silence) -> String {
    let against = match (silence.baseline_silent, silence.baseline_watched) {
        (Some(silent), Some(watched)) => format!("unexposed nodes: {silent} of {watched} silent"),
        _ => "no unexposed node to compare with".to_owned(),
    };
    let meaning = if silence.silent <= silence.tolerated {
        "what the fleet shows: not held against the version".to_owned()
    } else if silence.silent <= silence.blame_above {
        format!(
            "more than the fleet's {} explains: the stage holds until they speak again",
            silence.tolerated
        )
    } else {
        format!(
            "more than chance explains ({}): a hard signal at the plan's threshold",
            silence.blame_above
        )
    };
    format!(
        "{} of {} canary nodes silent; {against}; {meaning}",
        silence.silent, silence.watched
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_lines_do_not_repeat_the_expression() {
        let report = |verdict| GateReport {
            gate: "error_rate > 0.5%".to_owned(),
            verdict,
        };
        let repeated = report(Verdict::Inconclusive {
            detail: "error_rate > 0.5%: inconclusive, 0 requests".to_owned(),
        });
        assert_eq!(
            gate_line(&repeated),
            "gate error_rate > 0.5%: inconclusive, 0 requests"
        );
        let bare = report(Verdict::Fail {
            detail: "error_rate 2.0% vs limit 0.5%".to_owned(),
        });
        assert_eq!(
            gate_line(&bare),
            "gate error_rate > 0.5%: FAIL: error_rate 2.0% vs limit 0.5%"
        );
    }

    #[test]
    fn time_left_rounds_up_to_seconds() {
        assert_eq!(time_left(3_997), format_ms(4_000));
        assert_eq!(time_left(983), format_ms(983));
    }

    #[test]
    fn the_silence_line_says_what_the_silence_means() {
        let silence = |silent, baseline: Option<(u64, u64)>| failsmall_wire::rollouts::Silence {
            silent,
            watched: 210,
            baseline_silent: baseline.map(|(silent, _)| silent),
            baseline_watched: baseline.map(|(_, watched)| watched),
            tolerated: 1,
            blame_above: 17,
        };
        assert_eq!(
            silence_line(&silence(1, Some((0, 194)))),
            "1 of 210 canary nodes silent; unexposed nodes: 0 of 194 silent; what the fleet \
             shows: not held against the version"
        );
        assert!(silence_line(&silence(3, Some((0, 194)))).contains("the stage holds"));
        let blamed = silence_line(&silence(42, None));
        assert!(
            blamed.contains("no unexposed node to compare with") && blamed.contains("hard signal"),
            "{blamed}"
        );
    }

    #[test]
    fn rollout_ids_read_with_or_without_the_r() {
        assert_eq!(parse_rollout_id("7"), Ok(7));
        assert_eq!(parse_rollout_id("r12"), Ok(12));
        assert!(parse_rollout_id("seven").unwrap_err().contains("seven"));
    }
}
