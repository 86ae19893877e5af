//! `failsmall rollout watch ID`: follow a rollout until it ends. Progress bars per stage on a
//! terminal (nodes applied of nodes targeted, bake left, each gate's numbers against its
//! limit); plain timestamped lines when stdout is not a terminal; one JSON view per line with
//! `-o json`. Exits 0 when the rollout completes, 3 when it is rolled back or aborted.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use failsmall_core::duration::{format_ms, parse_duration_ms};
use failsmall_wire::rollouts::{Rollout as RolloutView, RolloutStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::RemoteArgs;
use super::client::ClientError;
use super::render::{now_ms, rfc3339};
use super::rollout::{
    approval_hint, fetch, gate_line, nodes_text, parse_rollout_id, phase_name, stage_endings,
    stage_text, status_name, time_left, verdict_text,
};
use crate::Outcome;

/// Shortest and longest poll interval, in milliseconds.
pub const INTERVAL_MIN_MS: u64 = 50;
pub const INTERVAL_MAX_MS: u64 = 60_000;
/// Longest watch, in milliseconds (a week).
pub const TIMEOUT_MAX_MS: u64 = 7 * 24 * 3600 * 1000;
/// Consecutive failed polls (server unreachable) before giving up.
pub const POLL_FAILURES_MAX: u32 = 20;
/// Longest pause between retries of a failed poll, in milliseconds.
pub const RETRY_BACKOFF_MAX_MS: u64 = 5_000;
/// `--interval` and `--timeout` when not given.
pub const INTERVAL_DEFAULT: &str = "500ms";
pub const TIMEOUT_DEFAULT: &str = "2h";
/// Plain output repeats an unchanged line this often, in milliseconds.
pub const PLAIN_HEARTBEAT_MS: u64 = 10_000;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The rollout's id (`7` or `r7`).
    #[arg(value_parser = parse_rollout_id)]
    pub id: u64,
    /// How often to ask the server.
    #[arg(long, value_name = "DURATION", default_value = INTERVAL_DEFAULT)]
    pub interval: String,
    /// Give up (exit 1) when the rollout has not ended after this long.
    #[arg(long, value_name = "DURATION", default_value = TIMEOUT_DEFAULT)]
    pub timeout: String,
}

fn duration_flag(flag: &str, text: &str, min_ms: u64, max_ms: u64) -> anyhow::Result<u64> {
    let value_ms = parse_duration_ms(text)
        .with_context(|| format!("{flag} {text:?}: expected e.g. 500ms, 2s, 1h"))?;
    if !(min_ms..=max_ms).contains(&value_ms) {
        bail!(
            "{flag} {text:?}: expected from {} to {}",
            format_ms(min_ms),
            format_ms(max_ms)
        );
    }
    Ok(value_ms)
}

/// How progress is shown.
trait Progress {
    /// A stage that ended: `skipped: why` (it selected no node) or `passed: why`.
    fn stage_ended(&mut self, stage: &str, what: &str) -> anyhow::Result<()>;
    fn update(&mut self, view: &RolloutView, now_ms: u64) -> anyhow::Result<()>;
    fn finish(&mut self, view: &RolloutView) -> anyhow::Result<()>;
}

pub fn run(args: &WatchArgs, remote: &RemoteArgs) -> anyhow::Result<Outcome> {
    let interval_ms = duration_flag(
        "--interval",
        &args.interval,
        INTERVAL_MIN_MS,
        INTERVAL_MAX_MS,
    )?;
    let timeout_ms = duration_flag("--timeout", &args.timeout, INTERVAL_MIN_MS, TIMEOUT_MAX_MS)?;
    let client = remote.connect()?;
    let mut progress: Box<dyn Progress> = if remote.json() {
        Box::new(JsonLines::default())
    } else if std::io::stdout().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(Lines::default())
    };
    let polls_max = timeout_ms / interval_ms + 1;
    let mut failures: u32 = 0;
    // The stage (and whether the rollout ended) when skipped stages were last looked for.
    let mut last_stage: Option<(u64, bool)> = None;
    let mut ended_shown = 0usize;
    for _ in 0..polls_max {
        let view = match fetch(&client, args.id) {
            Ok(view) => {
                failures = 0;
                view
            }
            Err(error @ ClientError::Unreachable { .. }) => {
                failures = failures.saturating_add(1);
                if failures >= POLL_FAILURES_MAX {
                    return Err(anyhow::Error::new(error)
                        .context(format!("gave up after {failures} failed polls")));
                }
                let backoff_ms = interval_ms
                    .saturating_mul(1 << failures.min(16))
                    .min(RETRY_BACKOFF_MAX_MS);
                eprintln!(
                    "{} server unreachable ({failures}/{POLL_FAILURES_MAX}); retrying in {}",
                    rfc3339(now_ms()),
                    format_ms(backoff_ms)
                );
                std::thread::sleep(Duration::from_millis(backoff_ms));
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if last_stage != Some((view.stage_index, view.status.is_terminal())) {
            last_stage = Some((view.stage_index, view.status.is_terminal()));
            if let Ok(ended) = stage_endings(&client, args.id) {
                for (stage, what) in ended.iter().skip(ended_shown) {
                    progress.stage_ended(stage, what)?;
                }
                ended_shown = ended_shown.max(ended.len());
            }
        }
        if view.status.is_terminal() {
            progress.finish(&view)?;
            return Ok(match view.status {
                RolloutStatus::Completed => Outcome::Success,
                _ => Outcome::Negative,
            });
        }
        progress.update(&view, now_ms())?;
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
    bail!(
        "rollout {} has not ended after {}; it goes on without this watch (raise --timeout)",
        args.id,
        format_ms(timeout_ms)
    )
}

/// One line about where the rollout is.
fn summary(view: &RolloutView) -> String {
    let mut text = format!(
        "r{} {} {}: {}",
        view.id,
        status_name(view.status),
        stage_text(view),
        nodes_text(view)
    );
    if let Some(bake_ms) = view.bake_remaining_ms {
        text.push_str(&format!(", bake {} left", time_left(bake_ms)));
    }
    if let Some(soak_ms) = view.soak_remaining_ms {
        text.push_str(&format!(", soak {} left", time_left(soak_ms)));
    }
    if let Some(hint) = approval_hint(view) {
        text.push_str(&format!("; {hint}"));
    }
    text
}

fn final_line(view: &RolloutView) -> String {
    format!(
        "rollout {} {} at {} after {} exposed nodes: {}",
        view.id,
        status_name(view.status),
        stage_text(view),
        view.nodes_exposed,
        view.outcome.as_deref().unwrap_or("no reason recorded")
    )
}

/// Plain timestamped lines: one when anything but the clock changes, and a reminder every
/// [`PLAIN_HEARTBEAT_MS`].
#[derive(Debug, Default)]
struct Lines {
    last_key: String,
    last_printed_ms: u64,
}

impl Lines {
    fn key(view: &RolloutView) -> String {
        let gates: Vec<String> = view
            .gates
            .iter()
            .map(|g| format!("{}={}", g.gate, verdict_text(&g.verdict).0))
            .collect();
        format!(
            "{:?} {} {} {} {} {} {}",
            view.status,
            view.stage_index,
            phase_name(&view.phase),
            view.nodes_applied,
            view.nodes_targeted,
            view.nodes_exposed,
            gates.join(",")
        )
    }
}

impl Lines {
    /// What to print for `view` at `now_ms`: nothing when only the clock moved, unless a
    /// heartbeat is due.
    fn lines_for(&mut self, view: &RolloutView, now_ms: u64) -> Vec<String> {
        let key = Self::key(view);
        let heartbeat_due = now_ms.saturating_sub(self.last_printed_ms) >= PLAIN_HEARTBEAT_MS;
        if key == self.last_key && !heartbeat_due {
            return Vec::new();
        }
        let at = rfc3339(now_ms);
        let mut lines = vec![format!("{at} {}", summary(view))];
        lines.extend(
            view.gates
                .iter()
                .map(|gate| format!("{at}   {}", gate_line(gate))),
        );
        self.last_key = key;
        self.last_printed_ms = now_ms;
        lines
    }
}

impl Progress for Lines {
    fn stage_ended(&mut self, stage: &str, what: &str) -> anyhow::Result<()> {
        outln!("{} stage {stage} {what}", rfc3339(now_ms()));
        Ok(())
    }

    fn update(&mut self, view: &RolloutView, now_ms: u64) -> anyhow::Result<()> {
        for line in self.lines_for(view, now_ms) {
            outln!("{line}");
        }
        Ok(())
    }

    fn finish(&mut self, view: &RolloutView) -> anyhow::Result<()> {
        outln!("{} {}", rfc3339(now_ms()), final_line(view));
        Ok(())
    }
}

/// One compact JSON view per line, when the view changed.
#[derive(Debug, Default)]
struct JsonLines {
    last: String,
}

impl Progress for JsonLines {
    fn stage_ended(&mut self, stage: &str, what: &str) -> anyhow::Result<()> {
        let (how, why) = what.split_once(": ").unwrap_or((what, ""));
        outln!("{}", serde_json::json!({"stage": stage, how: why}));
        Ok(())
    }

    fn update(&mut self, view: &RolloutView, _now_ms: u64) -> anyhow::Result<()> {
        let line = serde_json::to_string(view)?;
        if line != self.last {
            outln!("{line}");
            self.last = line;
        }
        Ok(())
    }

    fn finish(&mut self, view: &RolloutView) -> anyhow::Result<()> {
        outln!("{}", serde_json::to_string(view)?);
        Ok(())
    }
}

/// A bar per stage (nodes applied of nodes targeted, phase, bake left) and a line per gate.
struct Bars {
    multi: MultiProgress,
    stage_style: ProgressStyle,
    gate_style: ProgressStyle,
    /// The stage shown, its bar and its gates' lines.
    current: Option<(u64, ProgressBar, Vec<ProgressBar>)>,
}

impl std::fmt::Debug for Bars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bars").finish_non_exhaustive()
    }
}

impl Bars {
    fn new() -> Self {
        let stage_style = ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} exposed nodes applied  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let gate_style = ProgressStyle::with_template("    {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            stage_style,
            gate_style,
            current: None,
        }
    }

    fn close_stage(&mut self, message: &str) {
        if let Some((_, bar, gates)) = self.current.take() {
            bar.finish_with_message(message.to_owned());
            for gate in gates {
                gate.finish();
            }
        }
    }
}

impl Progress for Bars {
    fn stage_ended(&mut self, stage: &str, what: &str) -> anyhow::Result<()> {
        self.multi.suspend(|| outln!("stage {stage} {what}"));
        Ok(())
    }

    fn update(&mut self, view: &RolloutView, _now_ms: u64) -> anyhow::Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|(index, _, _)| *index != view.stage_index)
        {
            self.close_stage("passed");
        }
        let (_, bar, gates) = self.current.get_or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(view.nodes_exposed));
            bar.set_style(self.stage_style.clone());
            bar.set_prefix(format!(
                "stage {}/{} {}",
                view.stage_index.saturating_add(1),
                view.stages_total,
                view.stage_name
            ));
            (view.stage_index, bar, Vec::new())
        });
        bar.set_length(view.nodes_exposed);
        bar.set_position(view.nodes_applied.min(view.nodes_exposed));
        let mut message = format!(
            "{} · this stage selects {}",
            phase_name(&view.phase),
            view.nodes_targeted
        );
        if let Some(bake_ms) = view.bake_remaining_ms {
            message.push_str(&format!(" · bake {} left", time_left(bake_ms)));
        }
        if let Some(soak_ms) = view.soak_remaining_ms {
            message.push_str(&format!(" · soak {} left", time_left(soak_ms)));
        }
        if view.status != RolloutStatus::Running {
            message = format!("{} · {message}", status_name(view.status).to_uppercase());
        }
        if let Some(hint) = approval_hint(view) {
            message.push_str(&format!(" · {hint}"));
        }
        bar.set_message(message);
        for (index, gate) in view.gates.iter().enumerate() {
            let line = match gates.get(index) {
                Some(line) => line.clone(),
                None => {
                    let line = self.multi.add(ProgressBar::new(0));
                    line.set_style(self.gate_style.clone());
                    gates.push(line.clone());
                    line
                }
            };
            line.set_message(gate_line(gate));
        }
        Ok(())
    }

    fn finish(&mut self, view: &RolloutView) -> anyhow::Result<()> {
        let message = if view.status == RolloutStatus::Completed {
            "passed"
        } else {
            "stopped"
        };
        if self.current.is_none() {
            self.update(view, now_ms())?;
        }
        self.close_stage(message);
        self.multi.suspend(|| outln!("{}", final_line(view)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsmall_core::domain::VersionHash;
    use failsmall_wire::rollouts::{GateReport, GroupMetrics, StagePhase, Verdict};

    fn view(nodes_applied: u64, bake_remaining_ms: Option<u64>) -> RolloutView {
        RolloutView {
            id: 7,
            unit: "features".to_owned(),
            version: VersionHash::of(b"v").to_string(),
            plan: "default".to_owned(),
            actor: "ann".to_owned(),
            reason: "more bots".to_owned(),
            status: RolloutStatus::Running,
            phase: StagePhase::Applying,
            stage_index: 0,
            stage_name: "employees".to_owned(),
            stages_total: 5,
            nodes_targeted: 4,
            nodes_applied,
            nodes_exposed: 4,
            bake_remaining_ms,
            soak_remaining_ms: None,
            gates: vec![GateReport {
                gate: "error_rate > 0.5%".to_owned(),
                verdict: Verdict::Pass {
                    detail: "error_rate 0.1% ≤ 0.5%".to_owned(),
                },
            }],
            canary: GroupMetrics::default(),
            created_ms: 0,
            ended_ms: None,
            outcome: None,
            held_by_freeze: None,
            silence: None,
        }
    }

    #[test]
    fn plain_lines_print_changes_and_a_heartbeat_not_every_poll() {
        let mut lines = Lines::default();
        let printed = lines.lines_for(&view(1, None), 1_763_424_000_000);
        assert_eq!(
            printed,
            [
                "2025-11-18T00:00:00Z r7 running stage 1/5 employees (applying): 1/4 nodes applied (this stage selects 4)",
                "2025-11-18T00:00:00Z   gate error_rate > 0.5%: pass: error_rate 0.1% ≤ 0.5%",
            ]
        );
        // Only the bake clock moved: nothing, until the heartbeat is due.
        assert!(
            lines
                .lines_for(&view(1, Some(5_000)), 1_763_424_001_000)
                .is_empty()
        );
        let heartbeat = 1_763_424_000_000 + PLAIN_HEARTBEAT_MS;
        assert_eq!(lines.lines_for(&view(1, Some(4_000)), heartbeat).len(), 2);
        // A node applied: printed at once.
        let printed = lines.lines_for(&view(2, Some(4_000)), heartbeat + 1);
        assert!(
            printed[0].contains("2/4 nodes applied (this stage selects 4), bake 4s left"),
            "{printed:?}"
        );
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(
            duration_flag("--interval", "500ms", 50, 60_000).unwrap(),
            500
        );
        let error = duration_flag("--interval", "1ms", 50, 60_000)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--interval"), "{error}");
        assert!(duration_flag("--timeout", "soon", 50, 60_000).is_err());
    }
}
