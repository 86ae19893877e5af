//! `failsmall server`: run the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use failsmall_server::ServerConfig;

use crate::Outcome;

pub(crate) mod net;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// A TOML file with any of the settings below, by their names with `_` for `-`
    /// (`data_dir`, `listen`, `desired_ttl = "5m"`, `codex_dirs = [...]`, ...); flags
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only check the whole configuration (flags, the --config file, the Codex's rules), print
    /// every problem, then exit: 0 valid, 1 not.
    #[arg(long)]
    pub check: bool,
    /// Where the store, the signing key and the first admin token live (required here or in
    /// the file, unless --dev).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the state in PostgreSQL (`postgres://user@host:5432/failsmall`) instead of SQLite
    /// in the data dir. Several servers may share one database: one drives the engine under a
    /// lease, the others stand by and answer 503 until they take it over. A password belongs in
    /// the --config file (`store = "..."`, mode 0600), not on a command line others can read
    /// [default: SQLite in the data dir].
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// With --store: how long the engine's lease lasts unrenewed (`10s`, at least `1s`); a
    /// standby takes over about this long after the active server stops [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_lease_ttl_ms)]
    pub lease_ttl: Option<u64>,
    /// With --store: where the other servers reach this one (`https://cp1.internal:7070`);
    /// standbys forward requests to the active server's [default: the listening address, or
    /// this host's name and the listening port when listening on all addresses].
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// Address to listen on (port 0: any free port, printed at start) [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Try it out: a temporary data dir, removed at shutdown (unless --data-dir names one),
    /// and the admin token printed at start.
    #[arg(long)]
    pub dev: bool,
    /// Largest request body (a pushed version is a body), in bytes [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long a desired-state document stays fresh (`30s`, `5m`, ...): an agent that hears
    /// nothing newer by then reports itself stale and keeps serving what it has [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl_ms)]
    pub desired_ttl: Option<u64>,
    /// A node whose agent has not been heard from for this long (`90s`, `5m`, ...) is down:
    /// `failsmall nodes` says so. Agents ask at least every 30 s, so keep it above that
    /// [default: 90s].
    #[arg(long, value_name = "DURATION", value_parser = parse_down_after_ms)]
    pub node_down_after: Option<u64>,
    /// A node whose agent has not been heard from for this long (`7d`, `12h`, ...) is removed
    /// from the fleet, as `failsmall node remove` does; `0s`: never. Silence counts from the
    /// server's start at the earliest [default: 7d].
    #[arg(long, value_name = "DURATION", value_parser = parse_expire_after_ms)]
    pub node_expire_after: Option<u64>,
    /// The Codex (lessons as rules) judges every unit created or changed, push and rollout:
    /// `enforce` refuses a deny with 422 and records warnings in the changelog; `warn` records
    /// every finding and refuses nothing (to adopt it); `off` does not consult it
    /// [default: enforce].
    #[arg(long, value_name = "MODE")]
    pub codex: Option<failsmall_server::codex::CodexMode>,
    /// A directory of team rules (`*.rego`, with their `_test.rego`) added to the starter
    /// Codex; repeatable (given, it replaces the file's `codex_dirs`). A rule that does not
    /// load or whose tests fail stops the server.
    #[arg(long = "codex-dir", value_name = "DIR")]
    pub codex_dirs: Vec<PathBuf>,
    /// Log lines as `text` or `json` (one object per line) on stderr; `RUST_LOG` filters
    /// (default `info`: one line per changelog entry, each failed request with its cause)
    /// [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<crate::logging::LogFormat>,
    /// Once the server answers (its data dir open, its first admin token written), write its
    /// URL (`http://127.0.0.1:40123`) to FILE, whole or not at all: with `--listen
    /// 127.0.0.1:0`, how a script learns the port and knows it may begin.
    #[arg(long, value_name = "FILE")]
    pub addr_file: Option<PathBuf>,
    /// How often an open sev1 incident gets a public update (`30m`, ...); when one is due the
    /// on-call is reminded (`incident_update_due`) and, if nobody writes one, a holding update
    /// is published [default: 30m; at least 1m].
    #[arg(long, value_name = "DURATION", value_parser = parse_cadence_ms)]
    pub incident_update_sev1: Option<u64>,
    /// The same for sev2 incidents [default: 60m].
    #[arg(long, value_name = "DURATION", value_parser = parse_cadence_ms)]
    pub incident_update_sev2: Option<u64>,
    /// The same for sev3 incidents [default: 120m].
    #[arg(long, value_name = "DURATION", value_parser = parse_cadence_ms)]
    pub incident_update_sev3: Option<u64>,
    /// Approvals by other people an online break-glass request needs before its requester
    /// may claim the elevated role (1 to 10) [default: 2].
    #[arg(long, value_name = "N")]
    pub break_glass_approvals: Option<usize>,
    #[command(flatten)]
    pub net: net::NetArgs,
}

/// The server's configuration file (TOML): the flags' settings by their names with `_` for
/// `-`. A key it does not know is an error naming the file, the line and the key.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
    pub lease_ttl: Option<toml::Spanned<String>>,
    pub advertise_url: Option<String>,
    pub listen: Option<SocketAddr>,
    pub max_body_bytes: Option<usize>,
    pub desired_ttl: Option<toml::Spanned<String>>,
    pub node_down_after: Option<toml::Spanned<String>>,
    pub node_expire_after: Option<toml::Spanned<String>>,
    pub codex: Option<toml::Spanned<String>>,
    pub codex_dirs: Option<Vec<PathBuf>>,
    pub log_format: Option<crate::logging::LogFormat>,
    pub addr_file: Option<PathBuf>,
    pub incident_update_sev1: Option<toml::Spanned<String>>,
    pub incident_update_sev2: Option<toml::Spanned<String>>,
    pub incident_update_sev3: Option<toml::Spanned<String>>,
    pub break_glass_approvals: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub header_timeout: Option<toml::Spanned<String>>,
    pub idle_timeout: Option<toml::Spanned<String>>,
}

/// What `failsmall server` runs with: the server's configuration and the command's own
/// settings around it.
struct Loaded {
    config: ServerConfig,
    log_format: crate::logging::LogFormat,
    /// A `--dev` server's own temporary data dir, removed at shutdown.
    temporary_data_dir: Option<PathBuf>,
    addr_file: Option<PathBuf>,
}

/// The server's configuration from the file (`--config`) overridden by the flags, checked
/// whole; every problem found, each naming its flag, or its file, line and key.
fn load(args: &ServerArgs) -> Result<Loaded, Vec<String>> {
    let mut problems = Vec::new();
    let mut text = String::new();
    let file: ServerFile = match &args.config {
        Some(path) => match failsmall_agent::args::read_toml(path) {
            Ok(file) => {
                text = std::fs::read_to_string(path).unwrap_or_default();
                file
            }
            Err(problem) => {
                problems.push(problem);
                ServerFile::default()
            }
        },
        None => ServerFile::default(),
    };
    let config_path = args
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // A setting of the file that does not parse: FILE:LINE: key: why.
    let mut from_file = |key: &str,
                         value: &Option<toml::Spanned<String>>,
                         parse: fn(&str) -> Result<u64, String>|
     -> Option<u64> {
        let value = value.as_ref()?;
        match parse(value.get_ref()) {
            Ok(ms) => Some(ms),
            Err(why) => {
                let line = text
                    .get(..value.span().start)
                    .map_or(0, |head| head.matches('\n').count())
                    .saturating_add(1);
                problems.push(format!("{config_path}:{line}: {key}: {why}"));
                None
            }
        }
    };
    let desired_ttl = from_file("desired_ttl", &file.desired_ttl, parse_ttl_ms);
    let lease_ttl = from_file("lease_ttl", &file.lease_ttl, parse_lease_ttl_ms);
    let header_timeout_ms = from_file("header_timeout", &file.header_timeout, net::parse_ms);
    let idle_timeout_ms = from_file("idle_timeout", &file.idle_timeout, net::parse_ms);
    let node_down_after = from_file(
        "node_down_after",
        &file.node_down_after,
        parse_down_after_ms,
    );
    let node_expire_after = from_file(
        "node_expire_after",
        &file.node_expire_after,
        parse_expire_after_ms,
    );
    let [sev1_file, sev2_file, sev3_file] = [
        from_file(
            "incident_update_sev1",
            &file.incident_update_sev1,
            parse_cadence_ms,
        ),
        from_file(
            "incident_update_sev2",
            &file.incident_update_sev2,
            parse_cadence_ms,
        ),
        from_file(
            "incident_update_sev3",
            &file.incident_update_sev3,
            parse_cadence_ms,
        ),
    ];
    let file_codex = file.codex.as_ref().and_then(|mode| match mode
        .get_ref()
        .parse::<failsmall_server::codex::CodexMode>(
    ) {
        Ok(mode) => Some(mode),
        Err(why) => {
            let line = text
                .get(..mode.span().start)
                .map_or(0, |head| head.matches('\n').count())
                .saturating_add(1);
            problems.push(format!("{config_path}:{line}: codex: {why}"));
            None
        }
    });
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7070)));
    let data_dir = args.data_dir.clone().or(file.data_dir);
    // A dev server's own temporary data dir goes away with it; one the user named stays.
    let mut temporary_data_dir = None;
    let mut config = if args.dev {
        match ServerConfig::dev() {
            Ok(mut config) => {
                config.listen = listen;
                match &data_dir {
                    Some(data_dir) => config.data_dir = data_dir.clone(),
                    None => temporary_data_dir = Some(config.data_dir.clone()),
                }
                config
            }
            Err(error) => {
                problems.push(error.to_string());
                ServerConfig::new(PathBuf::new(), listen)
            }
        }
    } else {
        if data_dir.is_none() {
            problems.push(
                "--data-dir DIR is required (or `data_dir` in the file given by --config, or \
                 --dev to try it out)"
                    .to_owned(),
            );
        }
        ServerConfig::new(data_dir.unwrap_or_default(), listen)
    };
    config.store_url = args.store.clone().or(file.store);
    config.advertise_url = args.advertise_url.clone().or(file.advertise_url);
    if let Some(url) = &config.advertise_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        problems.push(format!(
            "--advertise-url {url}: expected http://HOST:PORT or https://HOST:PORT"
        ));
    }
    config.lease_ttl_ms = args
        .lease_ttl
        .or(lease_ttl)
        .unwrap_or(failsmall_server::ha::LEASE_TTL_MS_DEFAULT);
    if let Some(url) = &config.store_url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        problems.push(format!(
            "--store {}: expected a PostgreSQL URL (postgres://user@host:port/database); \
             leave it out for SQLite in the data dir",
            failsmall_server::store::redact_url(url)
        ));
    }
    config.max_body_bytes = args
        .max_body_bytes
        .or(file.max_body_bytes)
        .unwrap_or(failsmall_server::DEFAULT_MAX_BODY_BYTES);
    config.desired_ttl_ms = args.desired_ttl.or(desired_ttl).unwrap_or(5 * 60_000);
    config.node_down_after_ms = args.node_down_after.or(node_down_after).unwrap_or(90_000);
    config.node_expire_after_ms = args
        .node_expire_after
        .or(node_expire_after)
        .unwrap_or(failsmall_server::NODE_EXPIRE_AFTER_MS_DEFAULT);
    let approvals = args
        .break_glass_approvals
        .or(file.break_glass_approvals)
        .unwrap_or(failsmall_server::api::ELEVATION_APPROVALS_DEFAULT);
    if !(1..=failsmall_server::api::ELEVATION_APPROVALS_MAX).contains(&approvals) {
        problems.push(format!(
            "break-glass approvals {approvals}: expected from 1 to {}",
            failsmall_server::api::ELEVATION_APPROVALS_MAX
        ));
    }
    config.break_glass_approvals = approvals;
    let defaults = failsmall_server::incidents::Cadence::default();
    config.incident_cadence = failsmall_server::incidents::Cadence {
        sev1_ms: args
            .incident_update_sev1
            .or(sev1_file)
            .unwrap_or(defaults.sev1_ms),
        sev2_ms: args
            .incident_update_sev2
            .or(sev2_file)
            .unwrap_or(defaults.sev2_ms),
        sev3_ms: args
            .incident_update_sev3
            .or(sev3_file)
            .unwrap_or(defaults.sev3_ms),
        ..defaults
    };
    config.codex = failsmall_server::codex::CodexConfig {
        mode: args
            .codex
            .or(file_codex)
            .unwrap_or(failsmall_server::codex::CodexMode::Enforce),
        dirs: if args.codex_dirs.is_empty() {
            file.codex_dirs.unwrap_or_default()
        } else {
            args.codex_dirs.clone()
        },
    };
    let net_file = net::NetFile {
        tls_cert: file.tls_cert,
        tls_key: file.tls_key,
        max_connections: file.max_connections,
        max_connections_per_client: file.max_connections_per_client,
        header_timeout_ms,
        idle_timeout_ms,
    };
    if let Err(problem) = args.net.apply(net_file, &mut config) {
        problems.push(problem);
    }
    if args.check
        && let Err(error) = failsmall_server::codex::CodexGate::load(&config.codex)
    {
        problems.push(format!("the Codex: {error}"));
    }
    if problems.is_empty() {
        Ok(Loaded {
            config,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            temporary_data_dir,
            addr_file: args.addr_file.clone().or(file.addr_file.clone()),
        })
    } else {
        Err(problems)
    }
}

/// How long a node may be silent before it is removed: `0s` (never), or at least one second.
fn parse_expire_after_ms(text: &str) -> Result<u64, String> {
    let ms = failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())?;
    if ms > 0 && ms < 1_000 {
        return Err(format!(
            "{text:?} is shorter than 1s; give 0s to never expire nodes"
        ));
    }
    Ok(ms)
}

/// How long a node may be silent before it is down: at least the longest watch (30 s), or a
/// live agent between two watches would look down.
fn parse_lease_ttl_ms(text: &str) -> Result<u64, String> {
    let ms = failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())?;
    if ms < failsmall_server::ha::LEASE_TTL_MS_MIN {
        return Err(format!("{text:?} is shorter than 1s"));
    }
    Ok(ms)
}

fn parse_down_after_ms(text: &str) -> Result<u64, String> {
    let ms = failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())?;
    if ms < 30_000 {
        return Err(format!(
            "{text:?} is shorter than 30s; a live agent asks only every 30s at most"
        ));
    }
    Ok(ms)
}

/// An incident update cadence: a duration of at least one minute.
fn parse_cadence_ms(text: &str) -> Result<u64, String> {
    let ms = failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())?;
    if ms < 60_000 {
        return Err(format!(
            "{text:?} is shorter than 1m; expected an update cadence of at least a minute"
        ));
    }
    Ok(ms)
}

/// A document lifetime: a duration of at least one second.
fn parse_ttl_ms(text: &str) -> Result<u64, String> {
    let ms = failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())?;
    if ms < 1_000 {
        return Err(format!(
            "{text:?} is shorter than 1s; agents would be stale between two documents"
        ));
    }
    Ok(ms)
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Print the public half of the server's signing key (what agents pin).
    Keys {
        /// The server's data dir.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Make a new admin token offline, with access to the data dir, when every admin token is
    /// lost; prints its secret once (stdout). Recorded in the changelog (`admin_recovered`).
    RecoverAdmin(net::RecoverAdminArgs),
}

pub fn run(args: &ServerArgs) -> anyhow::Result<Outcome> {
    if let Some(ServerCommand::RecoverAdmin(recover)) = &args.command {
        return recover.run();
    }
    if let Some(ServerCommand::Keys { data_dir }) = &args.command {
        let public_key = failsmall_server::signing::VersionSigner::load_or_create(data_dir)
            .with_context(|| format!("cannot open the signing key in {}", data_dir.display()))?
            .public_key_hex();
        outln!("{public_key}");
        return Ok(Outcome::Success);
    }
    let Loaded {
        mut config,
        log_format,
        temporary_data_dir,
        addr_file,
    } = match load(args) {
        Ok(loaded) => loaded,
        Err(problems) => bail!(
            "the server's configuration has {} problem(s):\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        ),
    };
    // Written by the server once it answers: its data dir open, its admin token written.
    config.addr_file = addr_file;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if args.check {
        eprintln!("server configuration is valid");
        return Ok(Outcome::Success);
    }
    crate::logging::init(log_format)?;
    if let Some(files) = &config.tls {
        let fingerprint = failsmall_server::tls::certificate_sha256(files)?;
        eprintln!(
            "failsmall server: TLS certificate SHA-256 {fingerprint} (clients may pin it: --pin-sha256 {fingerprint})"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr().context("listener has no address")?;
        eprintln!(
            "failsmall server listening on {scheme}://{address}, data in {}",
            config.data_dir.display()
        );
        failsmall_server::run(config, listener, crate::shutdown::signal()).await?;
        Ok(Outcome::Success)
    });
    if let Some(data_dir) = temporary_data_dir {
        match std::fs::remove_dir_all(&data_dir) {
            Ok(()) => eprintln!("failsmall dev server: removed {}", data_dir.display()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => eprintln!(
                "failsmall dev server: could not remove {}: {error}",
                data_dir.display()
            ),
        }
    }
    served
}
