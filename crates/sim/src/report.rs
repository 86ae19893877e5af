//! What a run measured, per strategy, and how it is shown: a text table, JSON, an SVG
//! timeline and a trace.

use std::fmt::Write as _;

use serde::Serialize;

/// Numbers of one strategy over one scenario.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct StrategyMetrics {
    /// Requests served over the whole run.
    pub requests_total: u64,
    /// Requests that failed for any reason, background noise included.
    pub requests_errors: u64,
    /// Requests that failed because of a bad version (background noise excluded).
    pub requests_failed: u64,
    /// `requests_failed / requests_total`.
    pub requests_failed_fraction: f64,
    /// Peak share of nodes running a bad version at the same time.
    pub nodes_exposed_max_fraction: f64,
    /// Peak share of nodes on which a bad version's effect had set in (its onset passed) at the
    /// same time: the nodes that actually failed. Below `nodes_exposed_max_fraction` when the
    /// failure starts late.
    pub nodes_failing_max_fraction: f64,
    /// First node running a bad version.
    pub first_bad_exposure_ms: Option<u64>,
    /// First rollback decision (automatic or a person's) at or after the first bad exposure.
    pub first_rollback_after_exposure_ms: Option<u64>,
    /// First moment, after the first bad exposure, with no node on a bad version.
    pub first_recovery_ms: Option<u64>,
    /// First bad exposure → first rollback decision, in seconds.
    pub detect_s: Option<f64>,
    /// First bad exposure → no node on a bad version, in seconds.
    pub recover_s: Option<f64>,
    /// Rollbacks: the engine's, plus manual reverts under the instant strategy.
    pub rollbacks: u64,
    /// The rollbacks that reverted a bad version (the others reverted a good one).
    pub rollbacks_of_bad_versions: u64,
    pub pushes_accepted: u64,
    /// Pushes the engine refused (quarantined hash, full queue).
    pub pushes_refused: u64,
    pub versions_completed: u64,
    /// Rollouts of bad versions started (or queued), and those that completed.
    pub rollouts_of_bad_versions: u64,
    pub bad_versions_completed: u64,
    /// Versions the engine quarantined, and those of them that were good.
    pub quarantines: u64,
    pub quarantines_of_good_versions: u64,
    /// Stages held: inconclusive at their timeout, or the fleet unhealthy.
    pub holds: u64,
    /// Nodes that ran a bad version at some time.
    pub nodes_ran_bad: u64,
    /// Nodes on which a bad version's effect showed (its onset passed while they ran it, or
    /// their consumer went down inside the post-apply window).
    pub nodes_failed: u64,
}

impl StrategyMetrics {
    pub(crate) fn finish(&mut self, _duration_ms: u64) {
        self.requests_failed_fraction = if self.requests_total > 0 {
            self.requests_failed as f64 / self.requests_total as f64
        } else {
            0.0
        };
        let since_exposure = |at: Option<u64>| {
            self.first_bad_exposure_ms
                .zip(at)
                .map(|(first, at)| at.saturating_sub(first) as f64 / 1_000.0)
        };
        self.detect_s = since_exposure(self.first_rollback_after_exposure_ms);
        self.recover_s = since_exposure(self.first_recovery_ms);
    }
}

/// One point of the timeline, at the end of a health interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimelinePoint {
    pub at_ms: u64,
    /// Errors per request over the whole fleet in the interval.
    pub error_rate: f64,
    pub nodes_bad_fraction: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerKind {
    /// A stage started.
    Stage,
    /// A rollback was decided.
    Rollback,
}

/// Something worth a mark on the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Marker {
    pub at_ms: u64,
    pub kind: MarkerKind,
    /// The stage's name, or who rolled back.
    pub label: String,
}

/// One strategy's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyRun {
    pub strategy: String,
    pub metrics: StrategyMetrics,
    pub timeline: Vec<TimelinePoint>,
    pub markers: Vec<Marker>,
    /// One line per event, `t=SSSSSS.mmm node=... event=...` (empty unless asked for).
    pub trace: Vec<String>,
    /// Nodes that were ever told to run a bad version, sorted by node number.
    pub exposed_bad_nodes: Vec<String>,
}

/// A whole run: every strategy over one scenario and seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub scenario: String,
    pub seed: u64,
    pub duration_ms: u64,
    pub health_interval_ms: u64,
    pub nodes: u64,
    pub runs: Vec<StrategyRun>,
}

/// Renders one metric of a strategy as a table cell.
type MetricCell = fn(&StrategyMetrics) -> String;

fn seconds_or_dash(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"))
}

fn percent(fraction: f64) -> String {
    format!("{:.4}%", fraction * 100.0)
}

const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl SimReport {
    /// Strategies side by side, for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} (seed {}): {} nodes, {:.0} min of virtual time, health every {}s",
            self.scenario,
            self.seed,
            self.nodes,
            self.duration_ms as f64 / 60_000.0,
            self.health_interval_ms / 1_000
        );
        let rows: [(&str, MetricCell); 11] = [
            ("requests", |m| m.requests_total.to_string()),
            ("requests failed", |m| m.requests_failed.to_string()),
            ("requests failed %", |m| percent(m.requests_failed_fraction)),
            ("peak nodes on bad %", |m| {
                percent(m.nodes_exposed_max_fraction)
            }),
            ("time to detect", |m| seconds_or_dash(m.detect_s)),
            ("time to recover", |m| seconds_or_dash(m.recover_s)),
            ("rollbacks", |m| m.rollbacks.to_string()),
            ("rollbacks of bad", |m| {
                m.rollbacks_of_bad_versions.to_string()
            }),
            ("pushes accepted", |m| m.pushes_accepted.to_string()),
            ("pushes refused", |m| m.pushes_refused.to_string()),
            ("versions completed", |m| m.versions_completed.to_string()),
        ];
        let width = self
            .runs
            .iter()
            .map(|run| run.strategy.len())
            .max()
            .unwrap_or(0)
            .max(14);
        let _ = write!(out, "{:<22}", "");
        for run in &self.runs {
            let _ = write!(out, " {:>width$}", run.strategy);
        }
        out.push('\n');
        for (name, cell) in rows {
            let _ = write!(out, "{name:<22}");
            for run in &self.runs {
                let _ = write!(out, " {:>width$}", cell(&run.metrics));
            }
            out.push('\n');
        }
        out
    }

    /// One JSON object per strategy, each naming the scenario and the seed.
    pub fn to_json(&self) -> serde_json::Value {
        let runs = self
            .runs
            .iter()
            .map(|run| {
                let m = &run.metrics;
                serde_json::json!({
                    "scenario": self.scenario,
                    "seed": self.seed,
                    "strategy": run.strategy,
                    "nodes": self.nodes,
                    "requests_total": m.requests_total,
                    "requests_errors": m.requests_errors,
                    "requests_failed": m.requests_failed,
                    "requests_failed_fraction": m.requests_failed_fraction,
                    "nodes_exposed_max_fraction": m.nodes_exposed_max_fraction,
                    "detect_s": m.detect_s,
                    "recover_s": m.recover_s,
                    "rollbacks": m.rollbacks,
                    "rollbacks_of_bad_versions": m.rollbacks_of_bad_versions,
                    "pushes_accepted": m.pushes_accepted,
                    "pushes_refused": m.pushes_refused,
                    "versions_completed": m.versions_completed,
                })
            })
            .collect();
        serde_json::Value::Array(runs)
    }

    /// Every strategy's trace: a `# scenario=... seed=... strategy=...` header, then one line
    /// per event, `t=SSSSSS.mmm node=... event=...`.
    pub fn trace(&self) -> String {
        let mut out = String::new();
        for run in &self.runs {
            let _ = writeln!(
                out,
                "# scenario={} seed={} strategy={}",
                self.scenario, self.seed, run.strategy
            );
            for line in &run.trace {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// The fleet error rate over time, one line per strategy, with stage boundaries, rollback
    /// markers, axes and a legend.
    pub fn svg(&self) -> String {
        const WIDTH: f64 = 960.0;
        const HEIGHT: f64 = 420.0;
        const LEFT: f64 = 70.0;
        const RIGHT: f64 = 200.0;
        const TOP: f64 = 40.0;
        const BOTTOM: f64 = 50.0;
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let duration_ms = self.duration_ms.max(1) as f64;
        let peak = self
            .runs
            .iter()
            .flat_map(|run| run.timeline.iter().map(|point| point.error_rate))
            .fold(0.0f64, f64::max);
        let y_max = nice_ceiling(peak.max(0.002));
        let x_of = |at_ms: u64| LEFT + plot_w * (at_ms as f64 / duration_ms).min(1.0);
        let y_of = |rate: f64| TOP + plot_h * (1.0 - (rate / y_max).clamp(0.0, 1.0));
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="22" font-size="15">{} (seed {}): fleet error rate by strategy</text>"#,
            escape(&self.scenario),
            self.seed
        );
        // Axes and ticks.
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/>"#,
            TOP + plot_h,
            LEFT + plot_w,
            TOP + plot_h,
            TOP + plot_h
        );
        for tick in 0..=5 {
            let rate = y_max * f64::from(tick) / 5.0;
            let y = y_of(rate);
            let _ = writeln!(
                svg,
                r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                format_rate(rate)
            );
        }
        for tick in 0..=6u64 {
            let at_ms = self.duration_ms * tick / 6;
            let x = x_of(at_ms);
            let _ = writeln!(
                svg,
                r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}m</text>"#,
                TOP + plot_h,
                TOP + plot_h + 5.0,
                TOP + plot_h + 18.0,
                at_ms / 60_000
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">virtual time (minutes)</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 10.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">fleet error rate</text>"#,
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0
        );
        for (index, run) in self.runs.iter().enumerate() {
            let color = COLORS.get(index % COLORS.len()).copied().unwrap_or("black");
            for marker in run.markers.iter().filter(|m| m.kind == MarkerKind::Stage) {
                let x = x_of(marker.at_ms);
                let _ = writeln!(
                    svg,
                    r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="{color}" stroke-opacity="0.25" stroke-dasharray="2,3"><title>{}: stage {}</title></line>"#,
                    TOP + plot_h,
                    escape(&run.strategy),
                    escape(&marker.label)
                );
            }
            let mut points = String::new();
            for point in &run.timeline {
                let _ = write!(
                    points,
                    "{:.1},{:.1} ",
                    x_of(point.at_ms),
                    y_of(point.error_rate)
                );
            }
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                points.trim_end()
            );
            for marker in run
                .markers
                .iter()
                .filter(|m| m.kind == MarkerKind::Rollback)
            {
                let x = x_of(marker.at_ms);
                let y = TOP + 4.0 + 10.0 * index as f64;
                let _ = writeln!(
                    svg,
                    r#"<path d="M {:.1} {:.1} L {:.1} {:.1} L {:.1} {:.1} Z" fill="{color}"><title>{}: rollback by {}</title></path>"#,
                    x - 5.0,
                    y,
                    x + 5.0,
                    y,
                    x,
                    y + 8.0,
                    escape(&run.strategy),
                    escape(&marker.label)
                );
            }
            let legend_y = TOP + 10.0 + 20.0 * index as f64;
            let legend_x = LEFT + plot_w + 16.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{legend_x}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                legend_x + 24.0,
                legend_x + 30.0,
                legend_y + 4.0,
                escape(&run.strategy)
            );
        }
        let notes_y = TOP + 20.0 + 20.0 * self.runs.len() as f64;
        let legend_x = LEFT + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{legend_x}" y1="{notes_y}" x2="{}" y2="{notes_y}" stroke="#888" stroke-dasharray="2,3"/><text x="{}" y="{}">stage started</text>"##,
            legend_x + 24.0,
            legend_x + 30.0,
            notes_y + 4.0
        );
        let _ = writeln!(
            svg,
            r##"<path d="M {} {} L {} {} L {} {} Z" fill="#888"/><text x="{}" y="{}">rollback</text>"##,
            legend_x + 7.0,
            notes_y + 14.0,
            legend_x + 17.0,
            notes_y + 14.0,
            legend_x + 12.0,
            notes_y + 22.0,
            legend_x + 30.0,
            notes_y + 22.0
        );
        svg.push_str("</svg>\n");
        svg
    }
}

/// The smallest of 1, 2, 5 × 10^k at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    let mut step = 1e-6;
    for _ in 0..40 {
        for factor in [1.0, 2.0, 5.0] {
            if step * factor >= value {
                return step * factor;
            }
        }
        step *= 10.0;
    }
    1.0
}

fn format_rate(rate: f64) -> String {
    let percent = rate * 100.0;
    if percent == 0.0 {
        "0%".to_owned()
    } else if percent >= 1.0 {
        format!("{percent:.0}%")
    } else {
        format!("{percent:.2}%")
    }
}
