//! The demo consumer: an HTTP service that answers like a proxy would and reads the units
//! `bot-features` and `rules` from the agent's stable paths `DIR/units/<unit>/current`.
//!
//! - `GET /`: 200 with a small body, or 500 when the node is broken (see below). Counted in
//!   the metrics.
//! - `GET /health`: the same answer, not counted (for the agent's post-apply check).
//! - `GET /metrics`: Prometheus text: this service's counters ([`DemoMetrics`]), the client
//!   library's metrics for each unit, and the rejection reports.
//! - `GET /state`: JSON: the mode, the generation, and what each unit serves.
//!
//! **Naive mode fails every request** (it does not exit): once it has loaded a feature file
//! over [`FEATURES_MAX`], every `GET /` answers 500 with the error the 18 Nov proxy unwrapped,
//! until a good file replaces it. A failing node is easier to observe than a dead one, and the
//! agent sees it in both the error rate and the post-apply health check.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use failsmall_client::{Config, ConfigError, FailMode, FileWatch, Source};
use failsmall_core::domain::VersionHash;
use serde_json::json;

pub use crate::features::FEATURES_MAX;
use crate::features::{FeatureFile, FeatureTable};
use crate::metrics::DemoMetrics;
use crate::reject::{self, ReportCounts};
pub use crate::rules::Generation;
use crate::rules::RuleSet;

/// The feature unit's name.
pub const FEATURES_UNIT: &str = "bot-features";
/// The rules unit's name.
pub const RULES_UNIT: &str = "rules";
/// Most requests answered at once; more get 503.
pub const IN_FLIGHT_MAX: usize = 4_096;
/// Default interval between two looks at the unit files, in milliseconds.
pub const POLL_INTERVAL_DEFAULT_MS: u64 = 100;
/// Shortest interval between two looks at the unit files, in milliseconds.
pub const POLL_INTERVAL_MIN_MS: u64 = 10;
/// One log line per this many failed requests (the first one is always logged).
const FAULT_LOG_EVERY: u64 = 1_000;

/// How the consumer reads the feature file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reads the file itself; a file over the limit breaks every request (18 Nov).
    Naive,
    /// Reads it through `failsmall-client`: a bad file is rejected, reported, and the last good
    /// one keeps serving.
    Safe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Naive => "naive",
            Self::Safe => "safe",
        }
    }
}

/// What a consumer needs to run.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The agent's data dir: units are read from `units_dir/units/<unit>/current`.
    pub units_dir: PathBuf,
    pub mode: Mode,
    pub generation: Generation,
    /// Where rejections are POSTed (safe mode); see [`crate::reject`] for the URL template.
    pub reject_url: Option<String>,
    /// How often the unit files are looked at, in milliseconds.
    pub poll_interval_ms: u64,
}

impl ConsumerConfig {
    pub fn new(units_dir: impl Into<PathBuf>, mode: Mode, generation: Generation) -> Self {
        Self {
            units_dir: units_dir.into(),
            mode,
            generation,
            reject_url: None,
            poll_interval_ms: POLL_INTERVAL_DEFAULT_MS,
        }
    }

    /// The stable path of a unit's active file.
    pub fn unit_path(&self, unit: &str) -> PathBuf {
        self.units_dir.join("units").join(unit).join("current")
    }

    /// Checks the configuration before anything runs.
    pub fn validate(&self) -> Result<(), ConsumerError> {
        if let Some(url) = &self.reject_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConsumerError::Config {
                field: "reject-url",
                reason: format!("{url:?} is not an http:// URL"),
            });
        }
        if self.poll_interval_ms < POLL_INTERVAL_MIN_MS {
            return Err(ConsumerError::Config {
                field: "poll-interval-ms",
                reason: format!(
                    "{} ms; the shortest is {POLL_INTERVAL_MIN_MS} ms",
                    self.poll_interval_ms
                ),
            });
        }
        Ok(())
    }
}

/// Why the consumer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("demo consumer: --{field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("demo consumer: {0}")]
    Client(#[from] ConfigError),
    #[error("demo consumer: serving HTTP failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What a naive consumer loaded last: the table, or the error it will fail every request with.
#[derive(Debug)]
struct NaiveLoaded {
    version: Option<VersionHash>,
    table: Result<FeatureTable, String>,
}

#[derive(Debug)]
enum Features {
    Naive(RwLock<Arc<NaiveLoaded>>),
    Safe(Arc<Config<FeatureTable>>),
}

/// One running consumer's state, shared by its handlers.
#[derive(Debug)]
struct Consumer {
    config: ConsumerConfig,
    features: Features,
    rules: Arc<Config<RuleSet>>,
    metrics: DemoMetrics,
    report_counts: Arc<ReportCounts>,
    in_flight: AtomicUsize,
    faults: AtomicU64,
}

impl Consumer {
    /// How this node answers a request now.
    fn answer(&self) -> (StatusCode, String) {
        let feature_count = match &self.features {
            Features::Naive(loaded) => {
                let loaded = loaded.read().map(|l| Arc::clone(&l)).ok();
                match loaded.as_deref().map(|l| &l.table) {
                    Some(Ok(table)) => table.len(),
                    Some(Err(error)) => {
                        return self.fault(format!(
                            "{FEATURES_UNIT}: called `Result::unwrap()` on an `Err` value: {error}"
                        ));
                    }
                    None => return self.fault(format!("{FEATURES_UNIT}: state lock poisoned")),
                }
            }
            Features::Safe(config) => match config.with(|snapshot| snapshot.value.len()) {
                Ok(count) => count,
                Err(error) => return self.fault(error.to_string()),
            },
        };
        let evaluated = self
            .rules
            .with(|snapshot| snapshot.value.evaluate(self.config.generation));
        match evaluated {
            Ok(Ok(outcome)) => (
                StatusCode::OK,
                format!(
                    "ok: {feature_count} features, {} rules run, {} skipped\n",
                    outcome.rules_run, outcome.rules_skipped
                ),
            ),
            Ok(Err(fault)) => self.fault(format!("{RULES_UNIT}: {fault}")),
            Err(error) => self.fault(error.to_string()),
        }
    }

    fn fault(&self, message: String) -> (StatusCode, String) {
        let faults = self.faults.fetch_add(1, Ordering::Relaxed);
        if faults.is_multiple_of(FAULT_LOG_EVERY) {
            eprintln!(
                "demo-consumer ({} {}): request failed ({} so far): {message}",
                self.config.mode.as_str(),
                self.config.generation.as_str(),
                faults.saturating_add(1)
            );
        }
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n"))
    }

    fn state_json(&self) -> serde_json::Value {
        let features = match &self.features {
            Features::Naive(loaded) => match loaded.read() {
                Ok(loaded) => json!({
                    "version": loaded.version.map(|v| v.to_string()),
                    "count": loaded.table.as_ref().ok().map(FeatureTable::len),
                    "error": loaded.table.as_ref().err(),
                }),
                Err(_) => json!({"error": "state lock poisoned"}),
            },
            Features::Safe(config) => json!({
                "version": version_of(config.source()),
                "count": config.with(|s| s.value.len()).ok(),
                "rejections": config.metrics().rejections,
            }),
        };
        json!({
            "mode": self.config.mode.as_str(),
            "generation": self.config.generation.as_str(),
            "features": features,
            "rules": {
                "version": version_of(self.rules.source()),
                "count": self.rules.with(|s| s.value.rules.len()).ok(),
                "rejections": self.rules.metrics().rejections,
            },
        })
    }

    fn prometheus_text(&self) -> String {
        let mut text = self.metrics.prometheus_text();
        text.push_str("# TYPE demo_info gauge\n");
        text.push_str(&format!(
            "demo_info{{mode=\"{}\",generation=\"{}\"}} 1\n",
            self.config.mode.as_str(),
            self.config.generation.as_str()
        ));
        if let Features::Safe(config) = &self.features {
            text.push_str(&config.metrics().prometheus_text());
        }
        text.push_str(&self.rules.metrics().prometheus_text());
        text.push_str(&self.report_counts.prometheus_text());
        text
    }
}

fn version_of(source: Option<Source>) -> Option<String> {
    match source {
        Some(Source::Version(hash)) => Some(hash.to_string()),
        Some(Source::SafeDefault) => Some("safe-default".to_owned()),
        None => None,
    }
}

/// Counts the requests being answered; gives the slot back when dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit(consumer: &Consumer) -> Option<InFlight<'_>> {
    let before = consumer.in_flight.fetch_add(1, Ordering::Relaxed);
    let guard = InFlight(&consumer.in_flight);
    (before < IN_FLIGHT_MAX).then_some(guard)
}

async fn root(State(consumer): State<Arc<Consumer>>) -> Response {
    let started = Instant::now();
    let Some(_slot) = admit(&consumer) else {
        consumer
            .metrics
            .record(StatusCode::SERVICE_UNAVAILABLE.as_u16(), started.elapsed());
        return (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response();
    };
    let (status, body) = consumer.answer();
    consumer.metrics.record(status.as_u16(), started.elapsed());
    (status, body).into_response()
}

async fn health(State(consumer): State<Arc<Consumer>>) -> Response {
    consumer.answer().into_response()
}

async fn metrics(State(consumer): State<Arc<Consumer>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        consumer.prometheus_text(),
    )
        .into_response()
}

async fn state(State(consumer): State<Arc<Consumer>>) -> Response {
    axum::Json(consumer.state_json()).into_response()
}

/// Reads `path` whenever its bytes change and loads it the naive way, until `stop` is set.
async fn naive_watch(consumer: Arc<Consumer>, path: PathBuf, stop: Arc<tokio::sync::Notify>) {
    let Features::Naive(slot) = &consumer.features else {
        return;
    };
    let mut seen: Option<VersionHash> = None;
    let interval = Duration::from_millis(consumer.config.poll_interval_ms);
    loop {
        let read_path = path.clone();
        let read = tokio::task::spawn_blocking(move || read_bounded(&read_path)).await;
        if let Ok(Ok(Some(bytes))) = read {
            let version = VersionHash::of(&bytes);
            if seen != Some(version) {
                seen = Some(version);
                let table = FeatureFile::parse(&bytes)
                    .and_then(FeatureTable::load)
                    .map_err(|e| e.to_string());
                match &table {
                    Ok(table) => eprintln!(
                        "demo-consumer (naive): {FEATURES_UNIT} version {} loaded, {} features",
                        version.short(),
                        table.len()
                    ),
                    Err(error) => eprintln!(
                        "demo-consumer (naive): {FEATURES_UNIT} version {} loaded: {error}; every request will fail",
                        version.short()
                    ),
                }
                if let Ok(mut current) = slot.write() {
                    *current = Arc::new(NaiveLoaded {
                        version: Some(version),
                        table,
                    });
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.notified() => return,
        }
    }
}

/// The file's bytes; `None` when it does not exist (yet).
fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let len = match std::fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    if len > crate::features::FEATURE_FILE_MAX_BYTES as u64 {
        // Parsing reports the size; do not read it all.
        return Ok(Some(vec![
            b' ';
            crate::features::FEATURE_FILE_MAX_BYTES + 1
        ]));
    }
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Serves on `listener` until `shutdown` completes.
pub async fn run(
    config: ConsumerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ConsumerError> {
    config.validate()?;
    let report_counts = Arc::new(ReportCounts::default());
    let reporter = match (&config.reject_url, config.mode) {
        (Some(url), Mode::Safe) => {
            let (reporter, sender) = reject::reporter(url.clone(), Arc::clone(&report_counts));
            tokio::spawn(sender);
            Some(reporter)
        }
        _ => None,
    };
    let mut rules = Config::<RuleSet>::builder(RULES_UNIT)
        .fail_mode(FailMode::Open)
        .safe_default(RuleSet::default());
    if let Some(reporter) = &reporter {
        rules = rules.reporter(reporter.clone());
    }
    let rules = Arc::new(rules.build()?);
    let features = match config.mode {
        Mode::Naive => Features::Naive(RwLock::new(Arc::new(NaiveLoaded {
            version: None,
            table: Ok(FeatureTable::empty()),
        }))),
        Mode::Safe => {
            let mut builder = Config::<FeatureTable>::builder(FEATURES_UNIT)
                .fail_mode(FailMode::Open)
                .safe_default(FeatureTable::empty());
            if let Some(reporter) = &reporter {
                builder = builder.reporter(reporter.clone());
            }
            Features::Safe(Arc::new(builder.build()?))
        }
    };
    let consumer = Arc::new(Consumer {
        config,
        features,
        rules,
        metrics: DemoMetrics::new(),
        report_counts,
        in_flight: AtomicUsize::new(0),
        faults: AtomicU64::new(0),
    });
    let poll_ms = consumer.config.poll_interval_ms;
    let mut watches: Vec<FileWatch> = Vec::with_capacity(2);
    watches.push(
        consumer
            .rules
            .watch_file(consumer.config.unit_path(RULES_UNIT), poll_ms),
    );
    let stop_naive = Arc::new(tokio::sync::Notify::new());
    match &consumer.features {
        Features::Safe(features) => {
            watches.push(features.watch_file(consumer.config.unit_path(FEATURES_UNIT), poll_ms));
        }
        Features::Naive(_) => {
            tokio::spawn(naive_watch(
                Arc::clone(&consumer),
                consumer.config.unit_path(FEATURES_UNIT),
                Arc::clone(&stop_naive),
            ));
        }
    }
    let router = Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/state", get(state))
        .with_state(Arc::clone(&consumer));
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ConsumerError::Serve);
    stop_naive.notify_one();
    // Dropping the watches stops their threads; do it off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(watches)).await;
    served
}
