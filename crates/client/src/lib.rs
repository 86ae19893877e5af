//! failsmall-client: read a unit of configuration the way failsmall means it.
//!
//! A [`Config<T>`] holds the last valid value of one unit. Reads are lock-free and
//! allocation-free; a new version is parsed and validated by the consumer's own
//! [`UnitValue::from_bytes`] before it is used, and a version that fails is never used: the
//! previous value stays (**fail stale**) and the rejection is reported, so the agent can NACK it
//! and the rollout's gate fails. With no valid version at all (at start), the unit's
//! [`FailMode`] decides: `Open` serves the declared safe default, `Closed` returns an error.
//!
//! ```
//! use failsmall_client::{Config, FailMode, UnitValue};
//!
//! struct Features(Vec<String>);
//!
//! impl UnitValue for Features {
//!     fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
//!         let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
//!         let features: Vec<String> = text.lines().map(str::to_owned).collect();
//!         if features.len() > 200 {
//!             return Err(format!("{} features, limit 200", features.len()));
//!         }
//!         Ok(Features(features))
//!     }
//! }
//!
//! let config = Config::<Features>::builder("bot-features")
//!     .fail_mode(FailMode::Open)
//!     .safe_default(Features(Vec::new()))
//!     .build()?;
//! config.offer(b"ua_entropy\nja3_rarity").expect("a valid version");
//! assert!(config.offer("f\n".repeat(412).as_bytes()).is_err()); // rejected, not used
//! assert_eq!(config.get()?.value.0.len(), 2); // still the last good version
//! # Ok::<(), failsmall_client::ConfigError>(())
//! ```
#![forbid(unsafe_code)]

pub mod agent;
mod file;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwapOption, Cache};
pub use failsmall_core::domain::FailMode;
use failsmall_core::domain::{NameError, UnitName, VersionHash};

pub use file::{FileWatch, POLL_INTERVAL_MIN_MS};

/// A unit's typed value: the consumer parses and validates a version's bytes.
pub trait UnitValue: Sized + Send + Sync + 'static {
    /// Parses and validates one version. An `Err` (with the reason, for people) rejects the
    /// version: it is not used, and the previous value stays.
    fn from_bytes(bytes: &[u8]) -> Result<Self, String>;
}

/// Where a consumer's rejections go: the agent, which NACKs the version.
pub trait RejectionReporter: Send + Sync {
    fn rejected(&self, unit: &UnitName, version: &VersionHash, reason: &str);
}

impl<F> RejectionReporter for F
where
    F: Fn(&UnitName, &VersionHash, &str) + Send + Sync,
{
    fn rejected(&self, unit: &UnitName, version: &VersionHash, reason: &str) {
        self(unit, version, reason);
    }
}

/// Where the value being served came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A version that parsed and validated.
    Version(VersionHash),
    /// The unit's declared safe default (fail open: no valid version yet).
    SafeDefault,
}

/// A value with its origin. Immutable once published.
#[derive(Debug)]
pub struct Snapshot<T> {
    pub value: T,
    pub source: Source,
}

/// Why a read or a build failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unit {unit}: no valid version yet and the fail mode is closed")]
    Unavailable { unit: UnitName },
    #[error("unit {unit}: fail mode open needs a safe default; call .safe_default(value)")]
    MissingSafeDefault { unit: UnitName },
    #[error(transparent)]
    Name(#[from] NameError),
}

/// A version that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unit {unit}: version {} rejected: {reason}", .version.short())]
pub struct Rejection {
    pub unit: UnitName,
    pub version: VersionHash,
    pub reason: String,
}

/// What [`Config::offer`] did with a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// The version is now served.
    Activated(VersionHash),
    /// The version was already served; nothing changed.
    Unchanged(VersionHash),
}

/// Most bytes of a rejection reason kept and reported.
pub const REASON_MAX_BYTES: usize = 1024;

/// The live value of one unit.
pub struct Config<T> {
    unit: UnitName,
    fail_mode: FailMode,
    current: ArcSwapOption<Snapshot<T>>,
    /// What fail mode `Open` serves (none in fail mode `Closed`), kept for a withdrawal.
    safe_default: Option<Arc<Snapshot<T>>>,
    reporter: Option<Arc<dyn RejectionReporter>>,
    versions_activated: AtomicU64,
    rejections: AtomicU64,
}

impl<T> std::fmt::Debug for Config<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("unit", &self.unit)
            .field("fail_mode", &self.fail_mode)
            .field("source", &self.source())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Config`]: unit name, fail mode, safe default, rejection reporter.
pub struct ConfigBuilder<T> {
    unit: String,
    fail_mode: FailMode,
    safe_default: Option<T>,
    reporter: Option<Arc<dyn RejectionReporter>>,
}

impl<T> std::fmt::Debug for ConfigBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("unit", &self.unit)
            .field("fail_mode", &self.fail_mode)
            .finish_non_exhaustive()
    }
}

impl<T: UnitValue> ConfigBuilder<T> {
    /// What to do with no valid version at all; `Closed` unless set.
    pub fn fail_mode(mut self, fail_mode: FailMode) -> Self {
        self.fail_mode = fail_mode;
        self
    }

    /// The value served in fail mode `Open` until a valid version arrives.
    pub fn safe_default(mut self, value: T) -> Self {
        self.safe_default = Some(value);
        self
    }

    /// Where rejections are reported (the agent's local API, a log, a test's list).
    pub fn reporter(mut self, reporter: impl RejectionReporter + 'static) -> Self {
        self.reporter = Some(Arc::new(reporter));
        self
    }

    pub fn build(self) -> Result<Config<T>, ConfigError> {
        let unit = UnitName::new(self.unit)?;
        let current = match (self.fail_mode, self.safe_default) {
            (FailMode::Open, Some(value)) => Some(Arc::new(Snapshot {
                value,
                source: Source::SafeDefault,
            })),
            (FailMode::Open, None) => return Err(ConfigError::MissingSafeDefault { unit }),
            (FailMode::Closed, _) => None,
        };
        Ok(Config {
            unit,
            fail_mode: self.fail_mode,
            current: ArcSwapOption::new(current.clone()),
            safe_default: current,
            reporter: self.reporter,
            versions_activated: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
        })
    }
}

impl<T: UnitValue> Config<T> {
    pub fn builder(unit: impl Into<String>) -> ConfigBuilder<T> {
        ConfigBuilder {
            unit: unit.into(),
            fail_mode: FailMode::Closed,
            safe_default: None,
            reporter: None,
        }
    }
}

impl<T> Config<T> {
    pub fn unit(&self) -> &UnitName {
        &self.unit
    }

    /// The value being served: lock-free and allocation-free once this thread has read (one
    /// reference count; a thread's first read may claim its slot in arc-swap's debt list).
    /// For the hottest paths, [`Config::reader`] avoids even that.
    pub fn get(&self) -> Result<Arc<Snapshot<T>>, ConfigError> {
        self.current
            .load_full()
            .ok_or_else(|| ConfigError::Unavailable {
                unit: self.unit.clone(),
            })
    }

    /// Runs `read` on the value being served, without touching any reference count.
    pub fn with<R>(&self, read: impl FnOnce(&Snapshot<T>) -> R) -> Result<R, ConfigError> {
        match &*self.current.load() {
            Some(snapshot) => Ok(read(snapshot)),
            None => Err(ConfigError::Unavailable {
                unit: self.unit.clone(),
            }),
        }
    }

    /// A per-thread reader whose `get` costs a single atomic load when nothing changed.
    pub fn reader(&self) -> Reader<'_, T> {
        Reader {
            unit: &self.unit,
            cache: Cache::new(&self.current),
        }
    }

    /// Where the value being served came from; `None` when nothing is served (fail closed).
    pub fn source(&self) -> Option<Source> {
        self.current.load().as_ref().map(|snapshot| snapshot.source)
    }

    /// Counters and state for people and Prometheus.
    pub fn metrics(&self) -> ConfigMetrics {
        ConfigMetrics {
            unit: self.unit.clone(),
            fail_mode: self.fail_mode,
            source: self.source(),
            versions_activated: self.versions_activated.load(Ordering::Relaxed),
            rejections: self.rejections.load(Ordering::Relaxed),
        }
    }
}

impl<T: UnitValue> Config<T> {
    /// Offers a new version's bytes. The version is used only if `T::from_bytes` accepts it;
    /// otherwise the previous value stays and the rejection is counted and reported.
    pub fn offer(&self, bytes: &[u8]) -> Result<Offered, Rejection> {
        let version = VersionHash::of(bytes);
        if self.source() == Some(Source::Version(version)) {
            return Ok(Offered::Unchanged(version));
        }
        match T::from_bytes(bytes) {
            Ok(value) => {
                self.current.store(Some(Arc::new(Snapshot {
                    value,
                    source: Source::Version(version),
                })));
                self.versions_activated.fetch_add(1, Ordering::Relaxed);
                Ok(Offered::Activated(version))
            }
            Err(reason) => {
                let reason = truncate(reason, REASON_MAX_BYTES);
                self.rejections.fetch_add(1, Ordering::Relaxed);
                if let Some(reporter) = &self.reporter {
                    reporter.rejected(&self.unit, &version, &reason);
                }
                Err(Rejection {
                    unit: self.unit.clone(),
                    version,
                    reason,
                })
            }
        }
    }
}

impl<T> Config<T> {
    /// The unit was taken off this node (a rollback removed its only version): what was served
    /// goes, and the fail mode answers again, as before any version came (`Open`: the safe
    /// default; `Closed`: errors). Returns whether anything changed.
    pub fn withdraw(&self) -> bool {
        let before = self.source();
        self.current.store(self.safe_default.clone());
        before != self.source()
    }
}

/// A cached reader for one thread: see [`Config::reader`].
pub struct Reader<'a, T> {
    unit: &'a UnitName,
    cache: Cache<&'a ArcSwapOption<Snapshot<T>>, Option<Arc<Snapshot<T>>>>,
}

impl<T> std::fmt::Debug for Reader<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("unit", self.unit)
            .finish_non_exhaustive()
    }
}

impl<T> Reader<'_, T> {
    /// The value being served: lock-free, allocation-free, no reference count when unchanged.
    pub fn get(&mut self) -> Result<&Snapshot<T>, ConfigError> {
        let unit = self.unit;
        self.cache
            .load()
            .as_deref()
            .ok_or_else(|| ConfigError::Unavailable { unit: unit.clone() })
    }
}

/// A unit's client-side state, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMetrics {
    pub unit: UnitName,
    pub fail_mode: FailMode,
    pub source: Option<Source>,
    pub versions_activated: u64,
    pub rejections: u64,
}

impl ConfigMetrics {
    /// Which policy is answering reads now: `stale` (a real version, possibly not the newest
    /// offered), `open` (safe default) or `closed` (errors).
    pub fn mode_in_use(&self) -> &'static str {
        match self.source {
            Some(Source::Version(_)) => "stale",
            Some(Source::SafeDefault) => "open",
            None => "closed",
        }
    }

    /// Prometheus text exposition of these numbers.
    pub fn prometheus_text(&self) -> String {
        let unit = self.unit.as_str();
        let version = match self.source {
            Some(Source::Version(hash)) => hash.to_string(),
            Some(Source::SafeDefault) => "safe-default".to_owned(),
            None => "none".to_owned(),
        };
        let mut text = String::new();
        text.push_str("# TYPE failsmall_client_version_info gauge\n");
        text.push_str(&format!(
            "failsmall_client_version_info{{unit=\"{unit}\",version=\"{version}\"}} 1\n"
        ));
        text.push_str("# TYPE failsmall_client_versions_activated_total counter\n");
        text.push_str(&format!(
            "failsmall_client_versions_activated_total{{unit=\"{unit}\"}} {}\n",
            self.versions_activated
        ));
        text.push_str("# TYPE failsmall_client_rejections_total counter\n");
        text.push_str(&format!(
            "failsmall_client_rejections_total{{unit=\"{unit}\"}} {}\n",
            self.rejections
        ));
        text.push_str("# TYPE failsmall_client_fail_mode_in_use gauge\n");
        for mode in ["stale", "open", "closed"] {
            let active = u8::from(mode == self.mode_in_use());
            text.push_str(&format!(
                "failsmall_client_fail_mode_in_use{{unit=\"{unit}\",mode=\"{mode}\"}} {active}\n"
            ));
        }
        text
    }
}

/// Cuts `text` to at most `max_bytes`, on a character boundary.
fn truncate(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let cut = (0..=max_bytes)
            .rev()
            .find(|at| text.is_char_boundary(*at))
            .unwrap_or(0);
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, PartialEq)]
    struct Limit(u32);

    impl UnitValue for Limit {
        fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
            let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
            let value: u32 = text
                .trim()
                .parse()
                .map_err(|e| format!("{text:?} is not a number: {e}"))?;
            if value > 200 {
                return Err(format!("{value} entries, limit 200"));
            }
            Ok(Limit(value))
        }
    }

    fn closed() -> Config<Limit> {
        Config::builder("limits").build().unwrap()
    }

    #[test]
    fn fails_closed_until_a_valid_version_arrives() {
        let config = closed();
        assert!(matches!(config.get(), Err(ConfigError::Unavailable { .. })));
        assert!(config.offer(b"oops").is_err());
        assert!(config.get().is_err());
        assert_eq!(config.metrics().mode_in_use(), "closed");
        let hash = VersionHash::of(b"10");
        assert_eq!(config.offer(b"10"), Ok(Offered::Activated(hash)));
        assert_eq!(config.get().unwrap().value, Limit(10));
        assert_eq!(config.get().unwrap().source, Source::Version(hash));
    }

    #[test]
    fn fails_open_with_the_safe_default() {
        let config = Config::builder("limits")
            .fail_mode(FailMode::Open)
            .safe_default(Limit(0))
            .build()
            .unwrap();
        assert_eq!(config.get().unwrap().value, Limit(0));
        assert_eq!(config.get().unwrap().source, Source::SafeDefault);
        assert_eq!(config.metrics().mode_in_use(), "open");
        let missing = Config::<Limit>::builder("limits")
            .fail_mode(FailMode::Open)
            .build();
        assert!(matches!(
            missing,
            Err(ConfigError::MissingSafeDefault { .. })
        ));
    }

    #[test]
    fn a_unit_taken_off_the_node_falls_back_to_its_fail_mode() {
        let open = Config::builder("limits")
            .fail_mode(FailMode::Open)
            .safe_default(Limit(0))
            .build()
            .unwrap();
        open.offer(b"10").unwrap();
        assert!(open.withdraw());
        assert_eq!(open.get().unwrap().source, Source::SafeDefault);
        assert!(!open.withdraw(), "nothing changes a second time");
        let closed = closed();
        closed.offer(b"10").unwrap();
        assert!(closed.withdraw());
        assert!(matches!(closed.get(), Err(ConfigError::Unavailable { .. })));
        assert_eq!(closed.metrics().mode_in_use(), "closed");
    }

    #[test]
    fn a_bad_version_is_never_used_and_is_reported() {
        let reported = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&reported);
        let config = Config::<Limit>::builder("limits")
            .reporter(
                move |unit: &UnitName, version: &VersionHash, reason: &str| {
                    sink.lock()
                        .unwrap()
                        .push((unit.to_string(), *version, reason.to_owned()));
                },
            )
            .build()
            .unwrap();
        config.offer(b"60").unwrap();
        let rejection = config.offer(b"412").unwrap_err();
        assert_eq!(rejection.reason, "412 entries, limit 200");
        assert_eq!(config.get().unwrap().value, Limit(60), "fail stale");
        assert_eq!(
            *reported.lock().unwrap(),
            vec![(
                "limits".to_owned(),
                VersionHash::of(b"412"),
                "412 entries, limit 200".to_owned()
            )]
        );
        let metrics = config.metrics();
        assert_eq!((metrics.versions_activated, metrics.rejections), (1, 1));
        assert_eq!(metrics.mode_in_use(), "stale");
        let text = metrics.prometheus_text();
        assert!(
            text.contains("failsmall_client_rejections_total{unit=\"limits\"} 1"),
            "{text}"
        );
        assert!(text.contains("mode=\"stale\"} 1"), "{text}");
    }

    #[test]
    fn offering_the_served_version_again_changes_nothing() {
        let config = closed();
        config.offer(b"7").unwrap();
        assert_eq!(
            config.offer(b"7"),
            Ok(Offered::Unchanged(VersionHash::of(b"7")))
        );
        assert_eq!(config.metrics().versions_activated, 1);
    }

    #[test]
    fn readers_see_new_versions() {
        let config = closed();
        let mut reader = config.reader();
        assert!(reader.get().is_err());
        config.offer(b"1").unwrap();
        assert_eq!(reader.get().unwrap().value, Limit(1));
        config.offer(b"2").unwrap();
        assert_eq!(reader.get().unwrap().value, Limit(2));
        assert_eq!(config.with(|snapshot| snapshot.value.0).unwrap(), 2);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let reason = truncate("é".repeat(1000), REASON_MAX_BYTES);
        assert!(reason.len() <= REASON_MAX_BYTES && reason.is_char_boundary(reason.len()));
    }
}
