//! `failsmall server`: run the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use failsmall_server::ServerConfig;

use crate::Outcome;

mod net;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// Where the store, the signing key and the first admin token live.
    #[arg(long, value_name = "DIR", required_unless_present = "dev")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Try it out: a temporary data dir, removed at shutdown (unless --data-dir names one),
    /// and the admin token printed at start.
    #[arg(long)]
    pub dev: bool,
    /// Largest request body (a pushed version is a body), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = failsmall_server::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// How long a desired-state document stays fresh (`30s`, `5m`, ...): an agent that hears
    /// nothing newer by then reports itself stale and keeps serving what it has.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_ttl_ms)]
    pub desired_ttl: u64,
    /// A node whose agent has not been heard from for this long (`90s`, `5m`, ...) is down:
    /// `failsmall nodes` says so. Agents ask at least every 30 s, so keep it above that.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_down_after_ms)]
    pub node_down_after: u64,
    /// A node whose agent has not been heard from for this long (`7d`, `12h`, ...) is removed
    /// from the fleet, as `failsmall node remove` does; `0s`: never. Silence counts from the
    /// server's start at the earliest.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_expire_after_ms)]
    pub node_expire_after: u64,
    /// The Codex (lessons as rules) judges every unit created or changed, push and rollout:
    /// `enforce` refuses a deny with 422 and records warnings in the changelog; `warn` records
    /// every finding and refuses nothing (to adopt it); `off` does not consult it.
    #[arg(long, value_name = "MODE", default_value = "enforce")]
    pub codex: failsmall_server::codex::CodexMode,
    /// A directory of team rules (`*.rego`, with their `_test.rego`) added to the starter
    /// Codex; repeatable. A rule that does not load or whose tests fail stops the server.
    #[arg(long = "codex-dir", value_name = "DIR")]
    pub codex_dirs: Vec<PathBuf>,
    #[command(flatten)]
    pub net: net::NetArgs,
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
fn parse_down_after_ms(text: &str) -> Result<u64, String> {
    let ms = failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())?;
    if ms < 30_000 {
        return Err(format!(
            "{text:?} is shorter than 30s; a live agent asks only every 30s at most"
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
    // A dev server's own temporary data dir goes away with it; one the user named stays.
    let mut temporary_data_dir = None;
    let mut config = if args.dev {
        let mut config = ServerConfig::dev()?;
        config.listen = args.listen;
        match &args.data_dir {
            Some(data_dir) => config.data_dir = data_dir.clone(),
            None => temporary_data_dir = Some(config.data_dir.clone()),
        }
        config
    } else {
        match &args.data_dir {
            Some(data_dir) => ServerConfig::new(data_dir, args.listen),
            None => bail!("--data-dir DIR is required (or --dev to try it out)"),
        }
    };
    config.max_body_bytes = args.max_body_bytes;
    config.desired_ttl_ms = args.desired_ttl;
    config.node_down_after_ms = args.node_down_after;
    config.node_expire_after_ms = args.node_expire_after;
    config.codex = failsmall_server::codex::CodexConfig {
        mode: args.codex,
        dirs: args.codex_dirs.clone(),
    };
    args.net.apply(&mut config);
    let scheme = args.net.scheme();
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
