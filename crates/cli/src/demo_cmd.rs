//! `failsmall demo`: the whole system in one process on 127.0.0.1, in about a minute.
//!
//! An embedded control plane (temporary data dir, ports chosen by the OS), 30 nodes (3 regions
//! × 5 cohorts × 2; each an agent task plus a demo consumer task, half of them the older `fl1`
//! proxy generation, naive consumers outside the `us` region) and a load generator driving
//! every consumer. Then three acts, each rolled out through `examples/plans/demo.yaml` (the
//! stages of the default plan with bakes of seconds) and shown live from the changelog:
//!
//! 1. a good feature file: every stage passes, the rollout completes;
//! 2. the 18 Nov oversized feature file, with the server's validation skipped by the admin: the
//!    first stage's agents refuse it (NACK), the rollout reverts on its own;
//! 3. the 5 Dec killswitch rules file: the `fl1` consumers of the first stage fail, the error
//!    rate gate fails, the rollout reverts on its own.
//!
//! Each rollback opens an incident, and the control plane notifies it through its outbox: the
//! demo runs its own webhook receiver on 127.0.0.1, subscribed as a signed generic webhook and
//! as a Slack one, and shows what arrived (event, incident, dedup key, signature checked) next
//! to the public status page.
//!
//! It ends with a summary per act (outcome, nodes exposed, requests failed, time to detect,
//! time to revert) and the last changelog entries; `-o json` prints only the summary.

#[path = "demo/api.rs"]
mod api;
#[path = "demo/fleet.rs"]
mod fleet;
#[path = "demo/summary.rs"]
mod summary;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use failsmall_agent::scrape::{self, MetricNames};
use failsmall_demo::loadgen::{self, LoadConfig};
use failsmall_demo::webhook;
use failsmall_server::{ServerConfig, ServerError};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{Outcome, Output};
use api::Api;
use fleet::{RunningNode, TaskResult};
use summary::{ActOutcome, ActSummary};

/// The demo's plan (the stages of the default plan, bakes of seconds).
const DEMO_PLAN: &str = include_str!("../../../examples/plans/demo.yaml");
const DEMO_PLAN_FILE: &str = "examples/plans/demo.yaml";
/// The plan that puts the first rules file everywhere before the acts.
const INSTANT_PLAN: &str = "name: instant\nsoak: 0s\nstages:\n  - name: everywhere\n    bake: 0s\n    min_requests: 0\n    gates: []\n    hard_signals: { rejections: 0, crashes: 0, health_check_failures: 0, silent_nodes: 0 }\n";
const BOT_FEATURES: &[u8] = include_bytes!("../../../examples/units/bot-features.json");
const BOT_FEATURES_NOV18: &[u8] =
    include_bytes!("../../../examples/units/bot-features-oversized.json");
const RULES: &[u8] = include_bytes!("../../../examples/units/rules.json");
const RULES_DEC5: &[u8] = include_bytes!("../../../examples/units/rules-killswitch.json");

const FEATURES_UNIT: &str = failsmall_demo::consumer::FEATURES_UNIT;
const RULES_UNIT: &str = failsmall_demo::consumer::RULES_UNIT;
/// The cohort the plan's first stage selects.
const FIRST_STAGE_COHORT: &str = "employee";
/// The principal who approves the stages that wait for a person: not the pusher.
const APPROVER: &str = "on-call";

/// Requests per second the load generator sends, over all consumers.
const LOAD_RPS: u32 = 600;
/// Most requests of the load generator in flight.
const LOAD_CONCURRENCY: usize = 128;
/// The load runs at most this long; the demo stops it earlier.
const LOAD_MAX_MS: u64 = 180_000;
/// With `--keep-running`, the load runs at most this long.
const LOAD_KEEP_RUNNING_MS: u64 = loadgen::DURATION_MAX_MS;
/// The whole demo, from start to summary, must end within this; every wait is cut at it.
const DEMO_LIMIT_MS: u64 = 110_000;
/// One act's rollout must end within this.
const ACT_LIMIT_MS: u64 = 45_000;
/// Waiting for the server, the fleet, a setup rollout.
const SETUP_LIMIT_MS: u64 = 20_000;
/// Between two looks at the rollout and the changelog.
const POLL_MS: u64 = 200;
/// After an act, so the consumers' counters include its last requests.
const SETTLE_MS: u64 = 1_000;
/// How long an act waits for its incident's notification to reach the demo's receiver.
const NOTIFY_WAIT_MS: u64 = 5_000;
/// The secret the demo's generic webhook signs with (the receiver checks the signature).
const DEMO_WEBHOOK_SECRET: &str = "demo-webhook-secret";
/// The events the demo's receiver subscribes to.
const DEMO_WEBHOOK_EVENTS: [&str; 2] = ["incident_opened", "rollout_rolled_back"];
/// Changelog entries shown at the end.
const CHANGELOG_SHOWN: usize = 12;
/// Changelog pages read in one look.
const CHANGELOG_PAGES_MAX: usize = 20;
const CHANGELOG_PAGE: u32 = 200;
/// Tasks get this long to stop at shutdown.
const SHUTDOWN_LIMIT_MS: u64 = 15_000;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Output format: a live story and tables for people, only the JSON summary for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Leave the server, the fleet and the load up after the acts, and print how to point the
    /// CLI at them; Ctrl-C stops everything.
    #[arg(long)]
    pub keep_running: bool,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(demo(args));
    runtime.shutdown_timeout(Duration::from_millis(SHUTDOWN_LIMIT_MS));
    result
}

/// One act: what is pushed, how, and what a correct system does with it.
#[derive(Debug, Clone, Copy)]
struct Act {
    number: u32,
    name: &'static str,
    title: &'static str,
    unit: &'static str,
    content: &'static [u8],
    message: &'static str,
    skip_validation: bool,
    /// Pushed to a unit with a plan (the push starts the rollout), or pushed then rolled out
    /// through `POST /v1/rollouts`.
    unit_has_plan: bool,
    expected: ActOutcome,
}

const ACTS: [Act; 3] = [
    Act {
        number: 1,
        name: "good",
        title: "a good feature file goes out in waves",
        unit: FEATURES_UNIT,
        content: BOT_FEATURES,
        message: "bot features: 60 features, weekly refresh",
        skip_validation: false,
        unit_has_plan: true,
        expected: ActOutcome::Completed,
    },
    Act {
        number: 2,
        name: "nov18",
        title: "18 Nov: the oversized feature file, server validation skipped by the admin",
        unit: FEATURES_UNIT,
        content: BOT_FEATURES_NOV18,
        message: "bot features: regenerated (412 features)",
        skip_validation: true,
        unit_has_plan: true,
        expected: ActOutcome::RolledBack,
    },
    Act {
        number: 3,
        name: "dec5",
        title: "5 Dec: a killswitch on an `execute` rule (fl1 proxies mishandle it)",
        unit: RULES_UNIT,
        content: RULES_DEC5,
        message: "rules: killswitch r-300-managed-challenge",
        skip_validation: false,
        unit_has_plan: false,
        expected: ActOutcome::RolledBack,
    },
];

async fn demo(args: &DemoArgs) -> anyhow::Result<Outcome> {
    let root = temporary_root()?;
    let (stop, stopping) = watch::channel(false);
    let mut tasks: JoinSet<TaskResult> = JoinSet::new();
    let result = Demo::start(args, &root, &stopping, &mut tasks).await;
    let outcome = match result {
        Ok(mut demo) => {
            // Ctrl-C at any time still stops every task and removes the data dir.
            let played = tokio::select! {
                played = demo.play() => played,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            };
            let played = match played {
                Ok(outcome) if demo.keep_running => demo
                    .keep_running_until_interrupted()
                    .await
                    .map(|()| outcome),
                other => other,
            };
            demo.load.abort();
            played
        }
        Err(error) => Err(error),
    };
    let _ = stop.send(true);
    let stopped = tokio::time::timeout(Duration::from_millis(SHUTDOWN_LIMIT_MS), async {
        let mut failures = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(message)) => failures.push(message),
                Err(error) => failures.push(format!("a task ended abnormally: {error}")),
            }
        }
        failures
    })
    .await;
    match stopped {
        Ok(failures) => {
            for failure in failures.iter().take(10) {
                eprintln!("failsmall demo: {failure}");
            }
        }
        Err(_) => {
            eprintln!(
                "failsmall demo: some tasks did not stop within {SHUTDOWN_LIMIT_MS} ms; leaving them"
            );
            tasks.abort_all();
        }
    }
    if let Err(error) = std::fs::remove_dir_all(&root) {
        eprintln!(
            "failsmall demo: could not remove {}: {error}",
            root.display()
        );
    }
    outcome
}

/// A fresh private directory under the system's temporary directory.
fn temporary_root() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let root =
        std::env::temp_dir().join(format!("failsmall-demo-{}-{nanos:09}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(root)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The changelog read so far: a cursor and the latest entries.
#[derive(Debug, Default)]
struct Changelog {
    cursor: Option<u64>,
    recent: VecDeque<Value>,
}

impl Changelog {
    /// Entries newer than the cursor, oldest first.
    async fn read_new(&mut self, api: &Api) -> anyhow::Result<Vec<Value>> {
        let mut fresh = Vec::new();
        for _ in 0..CHANGELOG_PAGES_MAX {
            let path = match self.cursor {
                Some(cursor) => format!("/v1/changelog?limit={CHANGELOG_PAGE}&cursor={cursor}"),
                None => format!("/v1/changelog?limit={CHANGELOG_PAGE}"),
            };
            let page = api.get(&path).await?;
            let entries = page
                .get("entries")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let full = entries.len() >= CHANGELOG_PAGE as usize;
            for entry in entries {
                if let Some(id) = entry.get("id").and_then(Value::as_u64) {
                    self.cursor = Some(id);
                }
                if self.recent.len() >= CHANGELOG_SHOWN {
                    self.recent.pop_front();
                }
                self.recent.push_back(entry.clone());
                fresh.push(entry);
            }
            if !full {
                break;
            }
        }
        Ok(fresh)
    }
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Everything that runs, and what the acts found.
struct Demo {
    show: bool,
    json: bool,
    keep_running: bool,
    started: Instant,
    /// The wall clock at start, to place changelog entries.
    started_ms: u64,
    api: Api,
    /// [`APPROVER`]'s client: the approver role, another principal than the admin who pushes.
    approver: Api,
    nodes: Vec<RunningNode>,
    load: tokio::task::JoinHandle<()>,
    changelog: Changelog,
    /// The demo's own webhook receiver: its base URL and what it got.
    receiver: (String, webhook::Inbox),
}

impl Demo {
    async fn start(
        args: &DemoArgs,
        root: &Path,
        stopping: &watch::Receiver<bool>,
        tasks: &mut JoinSet<TaskResult>,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let started_ms = now_ms();
        let show = args.output == Output::Table;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the server's port on 127.0.0.1")?;
        let address = listener
            .local_addr()
            .context("reading the server's address")?;
        let config = ServerConfig::new(root.join("server"), address);
        let token_path = config.admin_token_path();
        let server_stop = fleet::stopped(stopping.clone());
        tasks.spawn(async move {
            failsmall_server::run(config, listener, server_stop)
                .await
                .map_err(|e: ServerError| format!("server: {e}"))
        });
        let base = format!("http://{address}");
        let token = wait_for_token(&base, &token_path).await?;
        let api = Api::new(base, token)?;
        let approver = api
            .post_json(
                "/v1/tokens",
                &json!({"name": APPROVER, "role": "approver", "owner": APPROVER}),
            )
            .await?;
        let approver = Api::new(api.base.clone(), text(&approver, "token").to_owned())?;
        if approver.token.is_empty() {
            bail!("the embedded server gave no approver token");
        }
        if show {
            outln!("failsmall demo: the whole system in this process, on 127.0.0.1");
            outln!("  server      {} (data in {})", api.base, root.display());
        }
        let receiver = start_receiver(&api, stopping, tasks).await?;
        if show {
            outln!(
                "  webhooks    {}/generic (signed JSON) and {}/slack receive {}",
                receiver.0,
                receiver.0,
                DEMO_WEBHOOK_EVENTS.join(", ")
            );
        }

        let signing = api.get("/v1/signing-key").await?;
        let server_key = text(&signing, "public_key").to_owned();
        if server_key.is_empty() {
            bail!("the embedded server gave no signing key: {signing}");
        }
        let specs = fleet::node_specs();
        let mut nodes = Vec::with_capacity(specs.len());
        for spec in specs {
            nodes.push(fleet::start_node(&api, &server_key, spec, root, stopping, tasks).await?);
        }
        wait_registered(&api, nodes.len()).await?;
        if show {
            outln!(
                "  fleet       {} nodes: regions {} × cohorts {} × {} (one fl1, one fl2 proxy each);",
                nodes.len(),
                fleet::REGIONS.join("/"),
                fleet::COHORTS.join("/"),
                fleet::NODES_PER_CELL
            );
            outln!(
                "              consumers read the feature file naively, except in region {} (client library)",
                fleet::SAFE_REGION
            );
        }

        let targets: Vec<String> = nodes
            .iter()
            .map(|node| format!("{}/", node.consumer_url))
            .collect();
        let duration_ms = if args.keep_running {
            LOAD_KEEP_RUNNING_MS
        } else {
            LOAD_MAX_MS
        };
        let mut load = LoadConfig::new(targets, LOAD_RPS, duration_ms);
        load.concurrency = LOAD_CONCURRENCY;
        load.validate().context("the demo's load")?;
        let load = tokio::spawn(async move {
            if let Err(error) = loadgen::run(&load).await {
                eprintln!("failsmall demo: load generator: {error}");
            }
        });
        if show {
            outln!("  load        {LOAD_RPS} requests/s spread over every consumer");
        }

        let mut demo = Self {
            show,
            json: args.output == Output::Json,
            keep_running: args.keep_running,
            started,
            started_ms,
            api,
            approver,
            nodes,
            load,
            changelog: Changelog::default(),
            receiver,
        };
        demo.create_units().await?;
        Ok(demo)
    }

    fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn deadline(&self) -> Instant {
        self.started + Duration::from_millis(DEMO_LIMIT_MS)
    }

    /// The feature unit (with the demo plan: every push starts a rollout) and the rules unit
    /// (rolled out explicitly), whose first version goes everywhere at once before the acts.
    async fn create_units(&mut self) -> anyhow::Result<()> {
        let features_spec = json!({
            "format": "json",
            "max_bytes": 1024 * 1024,
            "max_entries": [{"path": "/features", "max": failsmall_demo::features::FEATURES_MAX}],
        });
        self.api
            .post_json(
                "/v1/units",
                &json!({
                    "name": FEATURES_UNIT, "spec": features_spec, "owner": "bot-management",
                    "description": "bot-detection feature file, at most 200 features",
                    "plan": DEMO_PLAN,
                }),
            )
            .await?;
        let rules_spec = json!({"format": "json", "max_bytes": 64 * 1024});
        self.api
            .post_json(
                "/v1/units",
                &json!({
                    "name": RULES_UNIT, "spec": rules_spec, "owner": "edge-rules",
                    "description": "managed rules with killswitches",
                }),
            )
            .await?;
        let pushed = self
            .api
            .push(RULES_UNIT, RULES, "rules: initial set", false)
            .await?;
        let hash = text(&pushed, "hash").to_owned();
        let view = self
            .api
            .post_json(
                "/v1/rollouts",
                &json!({"unit": RULES_UNIT, "version": hash, "plan": INSTANT_PLAN,
                        "plan_file": "instant", "reason": "the demo fleet's first rules"}),
            )
            .await?;
        let id = rollout_id(&view)?;
        let limit = Instant::now() + Duration::from_millis(SETUP_LIMIT_MS);
        loop {
            let view = self.api.get(&format!("/v1/rollouts/{id}")).await?;
            let everywhere = self
                .nodes
                .iter()
                .all(|node| node.serving(RULES_UNIT).as_deref() == Some(hash.as_str()));
            if text(&view, "status") == "completed" && everywhere {
                break;
            }
            if Instant::now() > limit {
                bail!(
                    "the first rules file did not reach every node within {SETUP_LIMIT_MS} ms: {view}"
                );
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        // The setup's entries are not part of any act.
        self.changelog.read_new(&self.api).await?;
        if self.show {
            outln!(
                "  ready       in {:.1}s; rules {} on every node",
                self.elapsed_s(),
                short(&hash)
            );
        }
        Ok(())
    }

    async fn play(&mut self) -> anyhow::Result<Outcome> {
        let mut acts = Vec::with_capacity(ACTS.len());
        for act in ACTS {
            acts.push(self.play_act(&act).await?);
        }
        if self.json {
            let text = serde_json::to_string_pretty(&acts).context("encoding the summary")?;
            outln!("{text}");
        } else {
            outln!();
            outln!("summary ({:.1}s in all)", self.elapsed_s());
            out!("{}", summary::table(&acts));
            outln!();
            outln!("last changelog entries");
            self.changelog.read_new(&self.api).await?;
            for entry in &self.changelog.recent {
                outln!(
                    "  {:<20} {:<13} {:<18} {}",
                    text(entry, "kind"),
                    text(entry, "unit"),
                    text(entry, "actor"),
                    text(entry, "reason")
                );
            }
        }
        Ok(if summary::all_as_expected(&acts) {
            Outcome::Success
        } else {
            Outcome::Negative
        })
    }

    async fn keep_running_until_interrupted(&self) -> anyhow::Result<()> {
        let say = |line: String| {
            if self.json {
                eprintln!("{line}");
            } else {
                outln!("{line}");
            }
        };
        say(String::new());
        say(format!(
            "the dashboard: {}/ (sign in with the admin token below, or the approver's to approve)",
            self.api.base
        ));
        say(format!(
            "the public status page: {}/status (no token; each rollback above opened an incident: `failsmall incident list`)",
            self.api.base
        ));
        say("everything keeps running; point the CLI at it from another terminal:".into());
        say(format!("  export FAILSMALL_ADDR={}", self.api.base));
        say(format!("  export FAILSMALL_TOKEN={}", self.api.token));
        say(format!(
            "  (approvals come from another principal: FAILSMALL_TOKEN={} failsmall rollout approve ID)",
            self.approver.token
        ));
        say("  failsmall rollout list; failsmall log; failsmall nodes".into());
        say("press Ctrl-C to stop everything".into());
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        Ok(())
    }

    /// The sum of every consumer's failed requests so far.
    async fn requests_failed_total(&self) -> u64 {
        let names = MetricNames::default();
        let http = reqwest::Client::new();
        let mut scrapes = JoinSet::new();
        for node in &self.nodes {
            let url = format!("{}/metrics", node.consumer_url);
            let http = http.clone();
            let names = names.clone();
            scrapes.spawn(async move {
                let page = http
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                Some(scrape::parse(&page, &names).errors)
            });
        }
        let mut total = 0.0;
        while let Some(joined) = scrapes.join_next().await {
            if let Ok(Some(errors)) = joined {
                total += errors;
            }
        }
        // Counters are whole numbers well below 2^53.
        total.max(0.0).round() as u64
    }

    /// Approves rollout `id`'s current stage as [`APPROVER`]; false (and said why) if the
    /// server refused, so the next look tries again.
    async fn approve(&self, id: u64, view: &Value) -> bool {
        let stage = view
            .get("stage_name")
            .and_then(Value::as_str)
            .unwrap_or("the stage");
        let reason = format!("{stage} passed its gates on the demo's load");
        let path = format!("/v1/rollouts/{id}/approve");
        if self.show {
            outln!(
                "  [{:>5.1}s] {:<18} r{id} after stage {stage}, the next stage waits for a person other than the pusher before it exposes its nodes; {APPROVER} approves",
                self.elapsed_s(),
                "awaiting_approval",
            );
        }
        match self
            .approver
            .post_json(&path, &json!({ "reason": reason }))
            .await
        {
            Ok(_) => true,
            Err(error) => {
                if self.show {
                    outln!("  approval of rollout {id} refused: {error:#}");
                }
                false
            }
        }
    }

    async fn play_act(&mut self, act: &Act) -> anyhow::Result<ActSummary> {
        if self.show {
            outln!();
            outln!("act {}: {}", act.number, act.title);
        }
        let failed_before = self.requests_failed_total().await;
        let pushed_ms = now_ms();
        let pushed = self
            .api
            .push(act.unit, act.content, act.message, act.skip_validation)
            .await?;
        let hash = text(&pushed, "hash").to_owned();
        let view = if act.unit_has_plan {
            pushed.get("rollout").cloned().unwrap_or(Value::Null)
        } else {
            self.api
                .post_json(
                    "/v1/rollouts",
                    &json!({"unit": act.unit, "version": hash, "plan": DEMO_PLAN,
                            "plan_file": DEMO_PLAN_FILE, "reason": act.message}),
                )
                .await?
        };
        let id = rollout_id(&view)?;
        let limit = (Instant::now() + Duration::from_millis(ACT_LIMIT_MS)).min(self.deadline());
        let mut detected_ms: Option<u64> = None;
        let mut reverted_ms: Option<u64> = None;
        let mut nodes_exposed = 0;
        let mut approved = false;
        let outcome = loop {
            // The rollout first, then the changelog: every entry up to the status seen is shown.
            let view = self.api.get(&format!("/v1/rollouts/{id}")).await?;
            for entry in self.changelog.read_new(&self.api).await? {
                if text(&entry, "unit") != act.unit {
                    continue;
                }
                let kind = text(&entry, "kind");
                let at_ms = entry.get("at_ms").and_then(Value::as_u64);
                if kind == "rolled_back"
                    && detected_ms.is_none()
                    && let Some(at_ms) = at_ms
                {
                    detected_ms = Some(at_ms.max(pushed_ms));
                }
                if self.show {
                    let elapsed_ms = at_ms.map_or_else(
                        || self.elapsed_ms(),
                        |at| at.saturating_sub(self.started_ms),
                    );
                    outln!(
                        "  [{:>5.1}s] {:<18} {}",
                        summary::seconds(elapsed_ms),
                        kind,
                        text(&entry, "reason")
                    );
                }
            }
            if text(&view, "phase") == "awaiting_approval" && !approved {
                approved = self.approve(id, &view).await;
            }
            nodes_exposed = view
                .get("nodes_exposed")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .max(nodes_exposed);
            match ActOutcome::of_status(text(&view, "status")) {
                Some(ActOutcome::RolledBack) => {
                    if detected_ms.is_none() {
                        detected_ms = view.get("ended_ms").and_then(Value::as_u64);
                    }
                    let anywhere = self
                        .nodes
                        .iter()
                        .any(|node| node.serving(act.unit).as_deref() == Some(hash.as_str()));
                    if !anywhere {
                        reverted_ms = Some(now_ms());
                        break ActOutcome::RolledBack;
                    }
                }
                Some(ended) => break ended,
                None => {}
            }
            if Instant::now() > limit {
                if self.show {
                    outln!("  rollout {id} did not end within the act's time limit");
                }
                break ActOutcome::Unfinished;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        };
        tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
        let failed_after = self.requests_failed_total().await;
        let detect_s = detected_ms.map(|at| summary::seconds(at.saturating_sub(pushed_ms)));
        let revert_s = match (detected_ms, reverted_ms) {
            (Some(detected), Some(reverted)) => {
                Some(summary::seconds(reverted.saturating_sub(detected)))
            }
            _ => None,
        };
        let first_stage_nodes = self
            .nodes
            .iter()
            .filter(|node| node.spec.cohort == FIRST_STAGE_COHORT)
            .count() as u64;
        // A rollback opens an incident in the same transaction (see the server's incidents).
        let incidents = self.api.get("/v1/incidents").await?;
        let incident = incidents
            .get("incidents")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|incident| incident.get("rollout").and_then(Value::as_u64) == Some(id))
            .map(|incident| summary::IncidentBrief {
                id: incident
                    .get("id")
                    .and_then(Value::as_u64)
                    .unwrap_or_default(),
                severity: text(incident, "severity").to_owned(),
                title: text(incident, "title").to_owned(),
                notified: None,
            });
        let incident = match incident {
            Some(mut incident) => {
                incident.notified = self.notified(incident.id).await;
                Some(incident)
            }
            None => None,
        };
        let result = ActSummary {
            act: act.number,
            name: act.name.to_owned(),
            unit: act.unit.to_owned(),
            outcome,
            expected: act.expected,
            nodes_exposed,
            nodes_total: self.nodes.len() as u64,
            first_stage_nodes,
            requests_failed: failed_after.saturating_sub(failed_before),
            detect_s,
            revert_s,
            incident,
        };
        if self.show {
            outln!(
                "  → {} · {} of {} nodes exposed · {} requests failed",
                result.outcome.as_str(),
                result.nodes_exposed,
                result.nodes_total,
                result.requests_failed
            );
            if let Some(incident) = &result.incident {
                outln!(
                    "  → incident {} ({}) opened: {}; public at {}/status",
                    incident.id,
                    incident.severity,
                    incident.title,
                    self.api.base
                );
                match &incident.notified {
                    Some(notified) => {
                        outln!(
                            "  → notified {}/generic: event {} · incident {} · dedup key {} · delivery {} · signature {}",
                            self.receiver.0,
                            notified.event,
                            notified
                                .incident
                                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                            notified.dedup_key,
                            notified.delivery,
                            if notified.signature_ok { "ok" } else { "WRONG" }
                        );
                        if let Some(slack) = &notified.slack_text {
                            outln!("  → notified {}/slack: {slack}", self.receiver.0);
                        }
                    }
                    None => outln!(
                        "  → no notification of incident {} reached {} within {NOTIFY_WAIT_MS} ms",
                        incident.id,
                        self.receiver.0
                    ),
                }
            }
        }
        Ok(result)
    }
}

impl Demo {
    /// What the demo's receiver got for incident `id`'s opening (waiting at most
    /// [`NOTIFY_WAIT_MS`] for the generic one): the signed JSON's fields, and the Slack text.
    async fn notified(&self, id: u64) -> Option<summary::NotifiedBrief> {
        let inbox = &self.receiver.1;
        let limit = Instant::now() + Duration::from_millis(NOTIFY_WAIT_MS);
        loop {
            let got = inbox.received();
            let opened = |path: &str| {
                got.iter().find_map(|received| {
                    let body: Value = serde_json::from_str(&received.body).ok()?;
                    let names_it = match path {
                        "/generic" => body.get("incident").and_then(Value::as_u64) == Some(id),
                        // `rollout 5 of rules: incident opened: incident 3 sev2 ...`.
                        _ => text(&body, "text").contains(&format!(": incident {id} ")),
                    };
                    (received.path == path && received.event == "incident_opened" && names_it)
                        .then(|| (received.clone(), body))
                })
            };
            if let Some((generic, body)) = opened("/generic") {
                let slack = opened("/slack").map(|(_, body)| text(&body, "text").to_owned());
                if slack.is_some() || Instant::now() > limit {
                    let expected = failsmall_server::notify::signature(
                        DEMO_WEBHOOK_SECRET,
                        generic.body.as_bytes(),
                    );
                    return Some(summary::NotifiedBrief {
                        event: generic.event.clone(),
                        incident: body.get("incident").and_then(Value::as_u64),
                        dedup_key: text(&body, "dedup_key").to_owned(),
                        delivery: generic.delivery.clone(),
                        signature_ok: generic.signature.as_deref() == Some(expected.as_str()),
                        slack_text: slack,
                    });
                }
            }
            if Instant::now() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }
}

/// Starts the demo's webhook receiver on 127.0.0.1 (until the demo stops) and subscribes it to
/// [`DEMO_WEBHOOK_EVENTS`], as a signed generic webhook and as a Slack one.
async fn start_receiver(
    api: &Api,
    stopping: &watch::Receiver<bool>,
    tasks: &mut JoinSet<TaskResult>,
) -> anyhow::Result<(String, webhook::Inbox)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the webhook receiver's port on 127.0.0.1")?;
    let address = listener
        .local_addr()
        .context("reading the webhook receiver's address")?;
    let inbox = webhook::Inbox::default();
    let stop = fleet::stopped(stopping.clone());
    let recorded = inbox.clone();
    tasks.spawn(async move {
        webhook::run(listener, recorded, stop)
            .await
            .map_err(|e| format!("webhook receiver: {e}"))
    });
    let base = format!("http://{address}");
    api.post_json(
        "/v1/webhooks",
        &json!({"name": "demo-generic", "url": format!("{base}/generic"), "kind": "generic",
                "events": DEMO_WEBHOOK_EVENTS, "secret": DEMO_WEBHOOK_SECRET}),
    )
    .await?;
    api.post_json(
        "/v1/webhooks",
        &json!({"name": "demo-slack", "url": format!("{base}/slack"), "kind": "slack",
                "events": DEMO_WEBHOOK_EVENTS}),
    )
    .await?;
    Ok((base, inbox))
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn rollout_id(view: &Value) -> anyhow::Result<u64> {
    match view.get("id").and_then(Value::as_u64) {
        Some(id) => Ok(id),
        None => bail!("the server started no rollout: {view}"),
    }
}

/// Waits until the server answers and its first admin token is on disk.
async fn wait_for_token(base: &str, token_path: &Path) -> anyhow::Result<String> {
    let limit = Instant::now() + Duration::from_millis(SETUP_LIMIT_MS);
    let http = reqwest::Client::new();
    loop {
        let healthy = http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if healthy && let Ok(token) = std::fs::read_to_string(token_path) {
            let token = token.trim().to_owned();
            if !token.is_empty() {
                return Ok(token);
            }
        }
        if Instant::now() > limit {
            bail!(
                "the embedded server at {base} did not start within {SETUP_LIMIT_MS} ms (admin token expected in {})",
                token_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `count` nodes have registered.
async fn wait_registered(api: &Api, count: usize) -> anyhow::Result<()> {
    let limit = Instant::now() + Duration::from_millis(SETUP_LIMIT_MS);
    loop {
        let answer = api.get("/v1/nodes").await?;
        let registered = answer
            .get("nodes")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if registered >= count {
            return Ok(());
        }
        if Instant::now() > limit {
            bail!("{registered} of {count} nodes registered within {SETUP_LIMIT_MS} ms");
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsmall_core::domain::{NodeId, UnitName};
    use failsmall_core::plan::Plan;
    use failsmall_core::select::stage_selects;

    /// How many demo nodes each stage of the demo plan selects for `unit`.
    fn selected_per_stage(unit: &str) -> Vec<usize> {
        let plan = Plan::parse(DEMO_PLAN_FILE, DEMO_PLAN).unwrap();
        let unit = UnitName::new(unit).unwrap();
        let nodes = fleet::node_specs();
        plan.stages
            .iter()
            .map(|stage| {
                nodes
                    .iter()
                    .filter(|node| {
                        let id = NodeId::new(node.id.clone()).unwrap();
                        stage_selects(stage, &unit, &id, &node.labels())
                    })
                    .count()
            })
            .collect()
    }

    #[test]
    fn the_demo_plan_has_the_default_plans_waves_on_the_demo_fleet() {
        let default = Plan::parse(
            "default.yaml",
            include_str!("../../../examples/plans/default.yaml"),
        )
        .unwrap();
        let demo = Plan::parse(DEMO_PLAN_FILE, DEMO_PLAN).unwrap();
        assert_eq!(demo.stages.len(), default.stages.len());
        for stage in &demo.stages {
            assert!(
                stage.bake_ms <= 5_000,
                "{}: bake {} ms",
                stage.name,
                stage.bake_ms
            );
        }
        let approvals: Vec<bool> = demo.stages.iter().map(|stage| stage.approval).collect();
        let default_approvals: Vec<bool> =
            default.stages.iter().map(|stage| stage.approval).collect();
        assert_eq!(approvals, default_approvals);
        // employees, then one free node, then the other free ones, pro + business, enterprise.
        assert_eq!(selected_per_stage(FEATURES_UNIT), vec![6, 1, 6, 12, 6]);
        assert_eq!(selected_per_stage(RULES_UNIT)[0], 6);
    }

    #[test]
    fn the_first_stage_is_the_employee_cohort() {
        let first = selected_per_stage(FEATURES_UNIT)[0];
        let employees = fleet::node_specs()
            .iter()
            .filter(|node| node.cohort == FIRST_STAGE_COHORT)
            .count();
        assert_eq!(first, employees);
    }

    #[test]
    fn the_acts_push_the_incident_files() {
        let [good, nov18, dec5] = ACTS;
        assert_eq!(good.expected, ActOutcome::Completed);
        assert!(!good.skip_validation);
        assert!(nov18.skip_validation, "act 2 shows the net behind the net");
        assert_eq!(nov18.expected, ActOutcome::RolledBack);
        let features: serde_json::Value = serde_json::from_slice(nov18.content).unwrap();
        assert!(
            features["features"].as_array().unwrap().len() > failsmall_demo::features::FEATURES_MAX
        );
        assert_eq!(dec5.unit, RULES_UNIT);
        assert_eq!(dec5.expected, ActOutcome::RolledBack);
        let rules: serde_json::Value = serde_json::from_slice(dec5.content).unwrap();
        assert!(
            rules["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|rule| rule["killswitch"] == true && rule["action"] == "execute")
        );
    }

    #[test]
    fn the_instant_plan_parses() {
        let plan = Plan::parse("instant", INSTANT_PLAN).unwrap();
        assert_eq!(plan.stages.len(), 1);
    }
}
