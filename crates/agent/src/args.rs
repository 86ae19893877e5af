//! The agent's command-line flags, shared by `failsmall agent` and the crate's own binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use failsmall_core::domain::UnitName;

use crate::check::HealthWindow;
use crate::command::Role;
use crate::{AgentConfig, AgentError, ConsumerMetrics, UnitLocalConfig};

/// Largest unit configuration file read, in bytes.
pub const UNIT_CONFIG_MAX_BYTES: u64 = 1024 * 1024;

/// How log lines are written (`--log-format`, `log_format` in a configuration file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `failsmall agent`: serve one node. Every setting may also come from a TOML file
/// (`--config`, see [`AgentFile`]); a flag (or its environment variable) overrides the file.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentFlags {
    /// A TOML file with any of the settings below, by their names with `_` for `-`
    /// (`addr`, `data_dir`, `labels = { region = "eu" }`, ...); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The control plane's URL, e.g. http://127.0.0.1:7070 (as the operator commands take it;
    /// `--server` is the same flag); or several, separated by commas (servers of one control
    /// plane, or relays): a server that is unreachable or answers 500/502/503/504 makes the
    /// agent try the next one after its backoff. Required here or in the file.
    #[arg(
        long = "addr",
        visible_alias = "server",
        env = "FAILSMALL_ADDR",
        value_name = "URL"
    )]
    pub server: Option<String>,
    /// An agent token bound to this node (`failsmall token create NODE --role agent --node
    /// NODE`); any other token is refused at start. Required here or in the file.
    #[arg(long, env = "FAILSMALL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The node's labels: key=value,key=value (region, pop, cohort, ...).
    #[arg(long)]
    pub labels: Option<String>,
    /// Where the agent keeps versions and state. Required here or in the file.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The node's id (default: saved in the data dir, or a new one).
    #[arg(long)]
    pub node_id: Option<String>,
    /// The local API's address (loopback only), e.g. 127.0.0.1:7071.
    #[arg(long)]
    pub local_api: Option<SocketAddr>,
    /// The server's Ed25519 public key (hex). Without it the key is fetched at first start
    /// and pinned in the data dir (trust on first use).
    #[arg(long)]
    pub server_key: Option<String>,
    /// A signed root file (`root.json` from `failsmall keys init-root` and `keys sign`):
    /// trust the online keys it names instead of pinning the server's key on first use.
    /// Pinned in the data dir; newer roots come from the server, checked against it.
    #[arg(long, value_name = "FILE", env = "FAILSMALL_ROOT")]
    pub root: Option<PathBuf>,
    /// A PEM CA bundle: for an https:// --server, trust only these CAs (default: the
    /// public root CAs built in).
    #[arg(long, value_name = "FILE", env = "FAILSMALL_CA")]
    pub ca: Option<PathBuf>,
    /// For an https:// --server, trust only the certificate with this SHA-256 (hex, as
    /// `failsmall server` prints it), instead of any CA: a self-signed server needs no CA.
    #[arg(
        long,
        value_name = "HEX",
        env = "FAILSMALL_PIN_SHA256",
        conflicts_with = "ca"
    )]
    pub pin_sha256: Option<String>,
    /// A JSON file: unit name -> {validate, reload, health_check} (local commands and checks).
    #[arg(long)]
    pub unit_config: Option<PathBuf>,
    /// The local consumer's base URL, where a plan's post-apply health check path is asked.
    #[arg(long)]
    pub consumer_url: Option<String>,
    /// The local consumer's Prometheus endpoint, scraped for health (a refused connection
    /// means the consumer is down).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// The local consumer's pid file: the consumer is down when its process is gone.
    #[arg(long)]
    pub consumer_pid_file: Option<PathBuf>,
    /// The local consumer's systemd unit: the consumer is down when it is not active.
    #[arg(long)]
    pub consumer_systemd_unit: Option<String>,
    /// How often health is reported (and the metrics scraped), in milliseconds; keep it well
    /// under the plans' `silence` [default: 5000].
    #[arg(long)]
    pub health_interval_ms: Option<u64>,
    /// How long one watch request waits for news, in milliseconds [default: 25000].
    #[arg(long)]
    pub watch_wait_ms: Option<u64>,
    /// Largest delay between reconnection attempts, in milliseconds [default: 5000].
    #[arg(long)]
    pub backoff_max_ms: Option<u64>,
    /// How often what each unit's `current` serves is hashed and compared with the active
    /// version (a damaged file is restored and reported), in milliseconds [default: 60000].
    #[arg(long)]
    pub integrity_interval_ms: Option<u64>,
    /// A plan-declared post-apply health check must pass continuously this long, in
    /// milliseconds (a unit's own `health_check` sets its own `window_ms`) [default: 3000].
    #[arg(long)]
    pub check_window_ms: Option<u64>,
    /// Time between two probes of a plan-declared health check, in milliseconds
    /// [default: 250].
    #[arg(long)]
    pub check_interval_ms: Option<u64>,
    /// A plan-declared health check fails when no full window passed this long after the
    /// reload, in milliseconds (greater than the window) [default: 30000].
    #[arg(long)]
    pub check_deadline_ms: Option<u64>,
    /// Log lines as `text` or `json` (one object per line) on stderr; `RUST_LOG` filters
    /// [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// A flag unit (its content a flag set) served over OFREP on the local API
    /// (`/ofrep/v1/evaluate/flags`); repeat it to serve several, their flags merged (a flag
    /// key in two of them is an error for that key).
    #[arg(long = "ofrep-unit", value_name = "UNIT")]
    pub ofrep_units: Vec<String>,
}

/// The agent's configuration file (TOML): the flags' settings by their names with `_` for
/// `-`, `labels` as a table. A key it does not know is an error naming the file, the line and
/// the key.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub addr: Option<String>,
    pub token: Option<String>,
    pub node_id: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub data_dir: Option<PathBuf>,
    pub local_api: Option<SocketAddr>,
    pub server_key: Option<String>,
    pub root: Option<PathBuf>,
    pub unit_config: Option<PathBuf>,
    pub consumer_url: Option<String>,
    pub metrics_url: Option<String>,
    pub consumer_pid_file: Option<PathBuf>,
    pub consumer_systemd_unit: Option<String>,
    pub health_interval_ms: Option<u64>,
    pub watch_wait_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub integrity_interval_ms: Option<u64>,
    pub check_window_ms: Option<u64>,
    pub check_interval_ms: Option<u64>,
    pub check_deadline_ms: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub ofrep_units: Option<Vec<String>>,
}

/// Largest configuration file read, in bytes.
pub const CONFIG_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// Reads and parses a TOML configuration file of type `T` (at most
/// [`CONFIG_FILE_MAX_BYTES`]); an error names the file and, for a parse error, the line,
/// column and key.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > CONFIG_FILE_MAX_BYTES {
        return Err(format!(
            "{}: {len} bytes; the limit is {CONFIG_FILE_MAX_BYTES}",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let message = e.to_string();
        format!("{}: {}", path.display(), message.trim_end())
    })
}

/// Parses `key=value,key=value`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, AgentError> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(AgentError::Config {
                field: "labels",
                reason: format!("{pair:?} is not key=value"),
            });
        };
        if key.trim().is_empty() {
            return Err(AgentError::Config {
                field: "labels",
                reason: format!("{pair:?} has an empty key"),
            });
        }
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

/// What the flags and the file make together.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: AgentConfig,
    pub log_format: LogFormat,
}

impl AgentFlags {
    /// The configuration these flags describe (reads the unit configuration file).
    pub fn into_config(self) -> Result<AgentConfig, AgentError> {
        self.load().map(|loaded| loaded.config)
    }

    /// The configuration of the file (`--config`) overridden by the flags, checked whole:
    /// an error lists every problem found.
    pub fn load(self) -> Result<Loaded, AgentError> {
        let mut problems = Vec::new();
        let file: AgentFile = match &self.config {
            Some(path) => read_toml(path).unwrap_or_else(|problem| {
                problems.push(problem);
                AgentFile::default()
            }),
            None => AgentFile::default(),
        };
        let missing = |flag: &str, env: Option<&str>, key: &str| {
            let env = env.map(|e| format!(" (or {e})")).unwrap_or_default();
            format!("--{flag}{env} is required, or `{key}` in the file given by --config")
        };
        let server = self.server.or(file.addr);
        let token = self.token.or(file.token);
        let data_dir = self.data_dir.or(file.data_dir);
        if server.is_none() {
            problems.push(missing("addr", Some("FAILSMALL_ADDR"), "addr"));
        }
        if token.is_none() {
            problems.push(missing("token", Some("FAILSMALL_TOKEN"), "token"));
        }
        if data_dir.is_none() {
            problems.push(missing("data-dir", None, "data_dir"));
        }
        let mut config = AgentConfig::new(
            server.as_deref().unwrap_or("http://missing"),
            token.as_deref().unwrap_or("missing"),
            data_dir.unwrap_or_default(),
        );
        match self.labels {
            Some(text) => match parse_labels(&text) {
                Ok(labels) => config.labels = labels,
                Err(error) => problems.push(error.to_string()),
            },
            None => config.labels = file.labels.unwrap_or_default(),
        }
        config.node_id = self.node_id.or(file.node_id);
        config.local_api = self.local_api.or(file.local_api);
        config.server_key = self.server_key.or(file.server_key);
        config.root = self.root.or(file.root);
        config.ca_path = self.ca;
        config.pin_sha256 = self.pin_sha256;
        config.consumer_url = self.consumer_url.or(file.consumer_url);
        config.liveness = crate::ConsumerLiveness {
            pid_file: self.consumer_pid_file.or(file.consumer_pid_file),
            systemd_unit: self.consumer_systemd_unit.or(file.consumer_systemd_unit),
        };
        config.watch_wait_ms = self
            .watch_wait_ms
            .or(file.watch_wait_ms)
            .unwrap_or(config.watch_wait_ms);
        config.health_interval_ms = self
            .health_interval_ms
            .or(file.health_interval_ms)
            .unwrap_or(config.health_interval_ms);
        config.backoff_max_ms = self
            .backoff_max_ms
            .or(file.backoff_max_ms)
            .unwrap_or(config.backoff_max_ms)
            .max(config.backoff_min_ms);
        let integrity_interval_ms = self
            .integrity_interval_ms
            .or(file.integrity_interval_ms)
            .unwrap_or(crate::integrity::INTERVAL_MS_DEFAULT);
        let interval = crate::integrity::INTERVAL_MS_MIN..=crate::integrity::INTERVAL_MS_MAX;
        if !interval.contains(&integrity_interval_ms) {
            problems.push(format!(
                "integrity-interval-ms: {integrity_interval_ms} is out of range; expected {} to {}",
                interval.start(),
                interval.end()
            ));
        }
        config.integrity_interval_ms = integrity_interval_ms;
        config.health_window = HealthWindow {
            window_ms: self
                .check_window_ms
                .or(file.check_window_ms)
                .unwrap_or(crate::check::WINDOW_MS_DEFAULT),
            interval_ms: self
                .check_interval_ms
                .or(file.check_interval_ms)
                .unwrap_or(crate::check::INTERVAL_MS_DEFAULT),
            deadline_ms: self
                .check_deadline_ms
                .or(file.check_deadline_ms)
                .unwrap_or(crate::check::DEADLINE_MS_DEFAULT),
        };
        problems.extend(
            config
                .health_window
                .check("check")
                .into_iter()
                .map(|p| p.replace("check.", "--check-").replace("_ms", "-ms")),
        );
        if let Some(url) = self.metrics_url.or(file.metrics_url) {
            config.metrics = Some(ConsumerMetrics {
                url,
                names: Default::default(),
                interval_ms: config.health_interval_ms,
            });
        }
        let ofrep_units = if self.ofrep_units.is_empty() {
            file.ofrep_units.unwrap_or_default()
        } else {
            self.ofrep_units
        };
        for name in ofrep_units {
            match UnitName::new(name.clone()) {
                Ok(unit) => config.ofrep_units.push(unit),
                Err(error) => problems.push(format!("ofrep-unit {name:?}: {error}")),
            }
        }
        if let Some(path) = self.unit_config.or(file.unit_config) {
            match read_unit_config(&path) {
                Ok(units) => config.units = units,
                Err(error) => problems.push(error.to_string()),
            }
        }
        if server.is_some()
            && token.is_some()
            && let Err(error) = config.validate()
        {
            problems.push(error.to_string());
        }
        if !problems.is_empty() {
            return Err(AgentError::Invalid { problems });
        }
        Ok(Loaded {
            config,
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

fn read_unit_config(path: &PathBuf) -> Result<BTreeMap<UnitName, UnitLocalConfig>, AgentError> {
    let bad = |reason: String| AgentError::Config {
        field: "unit-config",
        reason: format!("{}: {reason}", path.display()),
    };
    let len = std::fs::metadata(path)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if len > UNIT_CONFIG_MAX_BYTES {
        return Err(bad(format!(
            "{len} bytes; the limit is {UNIT_CONFIG_MAX_BYTES}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let units: BTreeMap<UnitName, UnitLocalConfig> = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "line {} column {}: {e}; expected {{\"<unit>\": {{\"validate\": ..., \"reload\": ..., \"health_check\": ...}}}}",
            e.line(),
            e.column()
        ))
    })?;
    let mut problems = Vec::new();
    for (unit, local) in &units {
        problems.extend(check_unit(unit, local));
    }
    if problems.is_empty() {
        Ok(units)
    } else {
        Err(bad(problems.join("; ")))
    }
}

/// Every problem of one unit's local configuration, each naming its field
/// (`<unit>.validate.args`, `<unit>.health_check.window_ms`, ...).
pub fn check_unit(unit: &UnitName, local: &UnitLocalConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let commands = [
        ("validate", local.validate.as_ref(), Role::Validator),
        ("reload", local.reload.as_ref(), Role::Reload),
    ];
    for (field, command, role) in commands {
        if let Some(command) = command
            && let Err(found) = command.check(role)
        {
            problems.extend(found.into_iter().map(|p| format!("{unit}.{field}: {p}")));
        }
    }
    if let Some(check) = &local.health_check {
        problems.extend(check.check(&format!("{unit}.health_check")));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_config_file_parses_and_errors_name_the_line() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let good = dir.join("units.json");
        std::fs::write(
            &good,
            r#"{"features": {
                "validate": {"program": "/usr/bin/proxy", "args": ["--check", "{path}"], "timeout_ms": 2000},
                "reload": {"program": "systemctl", "args": ["reload", "proxy"]},
                "health_check": {"url": "http://127.0.0.1:8080/health"}
            }}"#,
        )
        .unwrap();
        let units = read_unit_config(&good).unwrap();
        let features = units.get(&UnitName::new("features").unwrap()).unwrap();
        assert_eq!(features.validate.as_ref().unwrap().timeout_ms, 2000);
        assert_eq!(
            features.reload.as_ref().unwrap().timeout_ms,
            10_000,
            "default"
        );
        assert_eq!(features.health_check.as_ref().unwrap().expect_status, 200);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"features\": {\n  \"reload\": 3}}").unwrap();
        let error = read_unit_config(&bad).unwrap_err().to_string();
        assert!(error.contains("bad.json: line 2"), "{error}");
        let unknown = dir.join("unknown.json");
        std::fs::write(&unknown, r#"{"features": {"relaod": null}}"#).unwrap();
        let error = read_unit_config(&unknown).unwrap_err().to_string();
        assert!(error.contains("unknown field `relaod`"), "{error}");
        let blind = dir.join("blind.json");
        std::fs::write(
            &blind,
            r#"{"features": {"validate": {"program": "proxy", "args": ["--check"]}}}"#,
        )
        .unwrap();
        let error = read_unit_config(&blind).unwrap_err().to_string();
        assert!(
            error.contains("features.validate: no argument holds {path}"),
            "{error}"
        );
        let windowless = dir.join("windowless.json");
        std::fs::write(
            &windowless,
            r#"{"features": {"health_check": {"url": "http://127.0.0.1:8080/health",
                "window_ms": 5000, "deadline_ms": 4000, "ready": {"program": ""}}}}"#,
        )
        .unwrap();
        let error = read_unit_config(&windowless).unwrap_err().to_string();
        assert!(
            error.contains("features.health_check.deadline_ms 4000 must be greater than features.health_check.window_ms 5000"),
            "{error}"
        );
        assert!(
            error.contains("features.health_check.ready: program is empty"),
            "{error}"
        );
        let typo = dir.join("typo.json");
        std::fs::write(
            &typo,
            r#"{"features": {"health_check": {"url": "http://x", "windw_ms": 1}}}"#,
        )
        .unwrap();
        let error = read_unit_config(&typo).unwrap_err().to_string();
        assert!(error.contains("unknown field `windw_ms`"), "{error}");
    }

    #[test]
    fn the_example_unit_config_loads() {
        let example = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/agent/units.json"
        ));
        let units = read_unit_config(&example).unwrap();
        let nginx = units.get(&UnitName::new("proxy-nginx").unwrap()).unwrap();
        assert_eq!(nginx.reload.as_ref().unwrap().args, ["-s", "reload"]);
        assert_eq!(units.len(), 2);
    }

    #[test]
    fn labels_parse_and_errors_say_which_pair() {
        let labels = parse_labels("region=eu, pop=ams,cohort=free").unwrap();
        assert_eq!(labels.get("pop").map(String::as_str), Some("ams"));
        assert_eq!(labels.len(), 3);
        assert!(parse_labels("").unwrap().is_empty());
        let error = parse_labels("region").unwrap_err().to_string();
        assert!(error.contains("\"region\" is not key=value"), "{error}");
        assert!(parse_labels("=x").is_err());
    }
}
