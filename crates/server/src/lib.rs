//! failsmall-server: the control plane's store, HTTP API, access control and version signing.
//!
//! [`run`] is the whole server: it opens (or creates) the data dir, applies the store's
//! migrations, loads or creates the signing key, makes the first admin token on first start,
//! and serves the API on the given listener until `shutdown` completes.
//!
//! A unit may name a validator command (the consumer's own parser in check mode); the server
//! runs it on every pushed version before storing it, see [`validator`]. Changelog entries
//! record which nodes they concern (`store::Concerns`), so `/v1/changelog?label=KEY=VALUE`
//! can return what concerns, say, one region.
//!
//! Data dir layout: `failsmall.db` (SQLite, WAL), `signing.key` (0600), `admin.token` (0600,
//! written once at first start), `server.lock` (held by the one server using the data dir,
//! see [`startup`]).

pub mod api;
pub mod auth;
pub mod batcher;
pub mod codex;
mod dashboard;
pub mod error;
pub mod ha;
pub mod incidents;
pub mod liveness;
pub mod notify;
pub mod prometheus;
pub mod recover;
pub mod rollouts;
/// The connection layer (its own crate, shared with the relay).
pub use failsmall_serve as serve;
pub mod signing;
pub mod slo;
pub mod startup;
pub mod store;
pub mod tls;
pub mod validator;

pub mod trace;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::Role;
use crate::signing::{SigningError, VersionSigner};
use crate::store::{NewChange, Store, StoreError};

/// The database file's name inside the data dir.
pub const DB_FILE: &str = "failsmall.db";
/// The first admin token's file inside the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Default request body limit (versions are pushed as the body), in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Where the server keeps its state and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Where the state is kept: `None` is SQLite in the data dir ([`DB_FILE`]);
    /// `postgres://user@host:port/db` is PostgreSQL (the data dir still holds the signing
    /// key and the first admin token).
    pub store_url: Option<String>,
    /// The address the caller binds; [`run`] serves whatever listener it is given.
    pub listen: SocketAddr,
    /// Largest request body, in bytes; larger requests get 413.
    pub max_body_bytes: usize,
    /// Development mode: prints the admin token at start.
    pub dev: bool,
    /// How long a desired-state document stays fresh, in milliseconds (default
    /// [`api::DESIRED_TTL_MS`], 5 minutes; 0 is taken as 1). An agent that heard nothing newer
    /// by then reports itself stale and keeps serving what it has.
    pub desired_ttl_ms: u64,
    /// A node whose agent has not been heard from for this long is down
    /// ([`liveness::NODE_DOWN_AFTER_MS_DEFAULT`]).
    pub node_down_after_ms: u64,
    /// A node whose agent has not been heard from for this long is removed from the fleet
    /// (`node_removed` in the changelog); 0: never ([`NODE_EXPIRE_AFTER_MS_DEFAULT`]).
    pub node_expire_after_ms: u64,
    /// The Codex's mode and team rule directories; [`ServerConfig::new`] leaves it off (an
    /// embedder chooses), `failsmall server` enforces it unless told otherwise.
    pub codex: codex::CodexConfig,
    /// Serve HTTPS with this certificate and key; none: plain HTTP.
    pub tls: Option<tls::TlsFiles>,
    /// Header and idle timeouts and the bound on open connections.
    pub connections: serve::ConnectionLimits,
    /// Once the server answers (its data dir open, its admin token written), its URL is
    /// written to this file, whole or not at all.
    pub addr_file: Option<PathBuf>,
    /// How notifications are delivered (retries, timeouts).
    pub notify: notify::NotifyConfig,
    /// Incidents' update cadence per severity (see [`incidents`]).
    pub incident_cadence: incidents::Cadence,
    /// Approvals by other people an online break-glass request needs (1 to 10; default 2).
    pub break_glass_approvals: usize,
    /// The engine's lease on a shared PostgreSQL store, in milliseconds (see [`ha`]): a
    /// standby takes over within about this long after the active server stops renewing it.
    pub lease_ttl_ms: u64,
    /// Where the other servers on a shared store reach this one (standbys forward requests to
    /// the active server's); none: this host's name and the listening port, or the listening
    /// address when it names one host.
    pub advertise_url: Option<String>,
}

/// Nodes silent for a week are removed from the fleet unless the server is told otherwise
/// (`failsmall server --node-expire-after`).
pub const NODE_EXPIRE_AFTER_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            store_url: None,
            listen,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            dev: false,
            desired_ttl_ms: api::DESIRED_TTL_MS,
            node_down_after_ms: liveness::NODE_DOWN_AFTER_MS_DEFAULT,
            node_expire_after_ms: NODE_EXPIRE_AFTER_MS_DEFAULT,
            codex: codex::CodexConfig::default(),
            tls: None,
            connections: serve::ConnectionLimits::default(),
            addr_file: None,
            notify: notify::NotifyConfig::default(),
            incident_cadence: incidents::Cadence::default(),
            break_glass_approvals: api::ELEVATION_APPROVALS_DEFAULT,
            lease_ttl_ms: ha::LEASE_TTL_MS_DEFAULT,
            advertise_url: None,
        }
    }

    /// A development server: a fresh data dir under the system's temporary directory,
    /// listening on 127.0.0.1:7070; its admin token is printed at start.
    pub fn dev() -> Result<Self, ServerError> {
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| ServerError::Random(e.to_string()))?;
        let data_dir = std::env::temp_dir().join(format!("failsmall-dev-{}", hex::encode(suffix)));
        let listen = SocketAddr::from(([127, 0, 0, 1], 7070));
        Ok(Self {
            dev: true,
            ..Self::new(data_dir, listen)
        })
    }

    /// Where the first admin token is written.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join(ADMIN_TOKEN_FILE)
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error("admin token file {path}: {source}")]
    AdminToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness: {0}")]
    Random(String),
    #[error("rollout engine: {0}")]
    Engine(String),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("connection limits: {0}")]
    Limits(String),
    #[error("incident update cadence: {0}")]
    Cadence(String),
    #[error("the Codex: {0}")]
    Codex(#[from] failsmall_codex::CodexError),
    #[error(transparent)]
    Locked(#[from] startup::LockError),
    #[error(
        "this server lost the engine's lease to another server and stopped serving; \
         start it again to stand by"
    )]
    Deposed,
}

/// Serves the control plane on `listener` until `shutdown` completes, then finishes the
/// requests in flight and returns.
pub async fn run(
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.connections.validate().map_err(ServerError::Limits)?;
    config
        .incident_cadence
        .validate()
        .map_err(ServerError::Cadence)?;
    let tls = config.tls.as_ref().map(tls::load).transpose()?;
    let codex = codex::CodexGate::load(&config.codex)?;
    create_private_dir(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    // Held until `run` returns: a second server on this data dir is refused at start.
    let _data_dir_lock = startup::lock_data_dir(&config.data_dir)?;
    // The caller's shutdown, as a flag both a standby and the active server wait on.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let data_dir = config.data_dir.clone();
    let store_url = config.store_url.clone();
    let store = tokio::task::spawn_blocking(move || open_store(&data_dir, store_url.as_deref()))
        .await
        .map_err(|e| ServerError::Random(format!("startup task failed: {e}")))??;
    let store = Arc::new(store);
    // Said by the lease's keeper when another server took the lease: this one stops serving.
    let (deposed_tx, mut deposed) = tokio::sync::watch::channel(false);
    // On a shared store: stand by until this server holds the engine's lease, then keep it
    // from that moment on (a slow start must not let it lapse).
    let (listener, lease_keeper) = if config.store_url.is_some() {
        match ha::take_the_lease(
            &config,
            &store,
            listener,
            tls.clone(),
            stop.clone(),
            deposed_tx,
        )
        .await?
        {
            Some((listener, keeper)) => (listener, Some(keeper)),
            // Told to stop while standing by.
            None => return Ok(()),
        }
    } else {
        (listener, None)
    };
    let data_dir = config.data_dir.clone();
    let prepared = Arc::clone(&store);
    let (signer, admin_token) =
        tokio::task::spawn_blocking(move || prepare_data_dir(&prepared, &data_dir))
            .await
            .map_err(|e| ServerError::Random(format!("startup task failed: {e}")))??;
    // Before serving: every connected agent holds a descriptor.
    startup::raise_open_file_limit("server");
    if config.dev {
        let address = listener.local_addr().map_err(ServerError::Serve)?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let token_line = match admin_token {
            Some(token) => format!("admin token: {token}"),
            None => format!("admin token: in {}", config.admin_token_path().display()),
        };
        // A closed stdout must not stop the server (println! would panic).
        let _ = writeln!(
            std::io::stdout(),
            "failsmall dev server on {scheme}://{address}, data in {}\n{token_line}",
            config.data_dir.display()
        );
    }
    let engine =
        rollouts::EngineHost::load(&store).map_err(|e| ServerError::Engine(e.to_string()))?;
    let engine = Arc::new(engine);
    let ticker = tokio::spawn(Arc::clone(&engine).tick_forever(Arc::clone(&store), api::now_ms));
    let health_reader = tokio::spawn(prometheus::poll_forever(
        Arc::clone(&engine),
        Arc::clone(&store),
        api::now_ms,
    ));
    let notifier = tokio::spawn(notify::deliver_forever(
        Arc::clone(&store),
        config.notify,
        api::now_ms,
    ));
    let slos = Arc::new(slo::SloBook::load(&store)?);
    let burn_feed = tokio::spawn(slo::feed_burn_rates_forever(
        Arc::clone(&slos),
        Arc::clone(&engine),
        Arc::clone(&store),
        api::now_ms,
    ));
    let last_flush_store = Arc::clone(&store);
    let slo_reader = tokio::spawn(slo::read_prometheus_forever(Arc::clone(&slos), api::now_ms));
    let slo_flusher = tokio::spawn(slo::flush_forever(
        Arc::clone(&slos),
        Arc::clone(&store),
        api::now_ms,
    ));
    let cadence = tokio::spawn(incidents::cadence_forever(
        Arc::clone(&store),
        config.incident_cadence,
        api::now_ms,
    ));
    let state = api::AppState::new(store, Arc::clone(&engine), signer, config.desired_ttl_ms)
        .with_slos(Arc::clone(&slos))
        .with_cadence(config.incident_cadence)
        .with_break_glass_approvals(config.break_glass_approvals)
        .with_node_down_after_ms(config.node_down_after_ms)
        .with_scratch_dir(config.data_dir.clone())
        .with_codex(codex);
    let liveness = tokio::spawn(state.liveness().watch_forever(
        state.store(),
        Arc::clone(&engine),
        config.node_down_after_ms,
        api::now_ms,
    ));
    let expiry = (config.node_expire_after_ms > 0).then(|| {
        tokio::spawn(api::expire_forever(
            state.clone(),
            config.node_expire_after_ms,
        ))
    });
    let router = api::router(state, config.max_body_bytes);
    if let Some(path) = &config.addr_file {
        let address = listener.local_addr().map_err(ServerError::Serve)?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        write_whole(path, format!("{scheme}://{address}\n").as_bytes()).map_err(|source| {
            ServerError::DataDir {
                path: path.clone(),
                source,
            }
        })?;
    }
    let snapshot_engine = Arc::clone(&engine);
    let was_deposed = deposed.clone();
    let mut stop = stop;
    // Graceful shutdown waits for the requests in flight; long polls among them end at once.
    let closing = async move {
        // A closed channel is no reason to stop: without a lease nobody ever deposes this
        // server, and the caller's shutdown alone ends it.
        let deposed = async {
            if deposed.wait_for(|deposed| *deposed).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => {}
            () = deposed => {}
        }
        engine.close();
    };
    let served = serve::serve(listener, router, tls, config.connections, closing)
        .await
        .map_err(ServerError::Serve);
    ticker.abort();
    health_reader.abort();
    burn_feed.abort();
    notifier.abort();
    slo_reader.abort();
    slo_flusher.abort();
    let last_store = Arc::clone(&last_flush_store);
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(error) = slos.flush(&last_store, api::now_ms()) {
            tracing::warn!(%error, "slo: event counts not saved at shutdown");
        }
    })
    .await;
    cadence.abort();
    liveness.abort();
    if let Some(expiry) = expiry {
        expiry.abort();
    }
    if *was_deposed.borrow() {
        return served.and(Err(ServerError::Deposed));
    }
    // A snapshot of the engine, so that the next start replays no log.
    if let Err(error) = snapshot_engine.snapshot_now(&last_flush_store).await {
        tracing::warn!(%error, "engine snapshot not saved at shutdown");
    }
    if let Some(keeper) = lease_keeper {
        drop(keeper);
        // A standby takes over at once instead of waiting out the lease.
        let store = Arc::clone(&last_flush_store);
        match tokio::task::spawn_blocking(move || store.release_lease()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the engine's lease was not released"),
            Err(error) => tracing::warn!(%error, "the lease release task failed"),
        }
    }
    served
}

/// Writes `bytes` to `path` whole or not at all: a temporary file beside it, then a rename.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// Opens the store and key; on first start creates the admin token (returned only then).
#[cfg(test)]
fn open_data_dir(
    data_dir: &Path,
    store_url: Option<&str>,
) -> Result<(Store, VersionSigner, Option<String>), ServerError> {
    let store = open_store(data_dir, store_url)?;
    let (signer, token) = prepare_data_dir(&store, data_dir)?;
    Ok((store, signer, token))
}

/// Opens the store: SQLite in the data dir, or PostgreSQL at `store_url`.
fn open_store(data_dir: &Path, store_url: Option<&str>) -> Result<Store, ServerError> {
    create_private_dir(data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    Ok(match store_url {
        None => Store::open(&data_dir.join(DB_FILE))?,
        Some(url) => Store::open_postgres(url)?,
    })
}

/// Checks the changelog, opens the key; on first start creates the admin token (returned
/// only then). On a shared store only the lease's holder gets here.
fn prepare_data_dir(
    store: &Store,
    data_dir: &Path,
) -> Result<(VersionSigner, Option<String>), ServerError> {
    // An edited history is never served silently: the break is said now, on every changelog
    // answer (a header) and by `GET /v1/changelog/verify`.
    if let Some(broken) = store.verify_changelog()?.first_break {
        let _ = writeln!(
            std::io::stderr(),
            "failsmall server: the changelog's hash chain is broken at row {}: {}",
            broken.id,
            broken.reason
        );
    }
    // A data dir with no token was never used: the only time a key may be created.
    let first_start = store.token_count()? == 0;
    let signer = VersionSigner::open(data_dir, first_start)?;
    let admin_token = if first_start {
        Some(bootstrap_admin(store, data_dir)?)
    } else {
        None
    };
    // Said after the first admin token exists: a first start that logs has finished it.
    match signer.root() {
        Some(root) => tracing::info!(
            version = root.document.version,
            epoch = root.document.epoch,
            "serving the root in {}",
            data_dir.join(signing::ROOT_FILE).display()
        ),
        None => tracing::warn!(
            "no {} in the data dir: agents trust this server's key on first use, and a lost \
             key or a restored backup locks them out. For production, set up an offline root \
             (`failsmall keys init-root`, README: Keys)",
            signing::ROOT_FILE
        ),
    }
    Ok((signer, admin_token))
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

fn bootstrap_admin(store: &Store, data_dir: &Path) -> Result<String, ServerError> {
    let token = auth::new_token().map_err(|e| ServerError::Random(e.to_string()))?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    // A token file left from an earlier database would name a token that no longer exists.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ServerError::AdminToken { path, source }),
    }
    signing::write_private(&path, format!("{token}\n").as_bytes()).map_err(|source| {
        ServerError::AdminToken {
            path: path.clone(),
            source,
        }
    })?;
    let change = NewChange {
        at_ms: api::now_ms(),
        actor: "failsmall",
        kind: "token_created",
        unit: None,
        version: None,
        reason: "first admin token, written to the data dir at first start",
        concerns: None,
        rollout: None,
        stage: None,
    };
    store.create_token("admin", Role::Admin, &auth::token_sha256(&token), &change)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_config_uses_a_fresh_private_temporary_dir() {
        let first = ServerConfig::dev().unwrap();
        let second = ServerConfig::dev().unwrap();
        assert!(first.dev);
        assert!(first.data_dir.starts_with(std::env::temp_dir()));
        assert_ne!(first.data_dir, second.data_dir);
        assert_eq!(
            first.admin_token_path(),
            first.data_dir.join(ADMIN_TOKEN_FILE)
        );
    }

    #[test]
    fn first_start_writes_one_admin_token_and_restarts_keep_it() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("data");
        let (store, _, token) = open_data_dir(&dir, None).unwrap();
        let token = token.unwrap();
        let on_disk = std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE)).unwrap();
        assert_eq!(on_disk.trim(), token);
        let admin = store
            .active_token(&auth::token_sha256(&token))
            .unwrap()
            .unwrap();
        assert_eq!(admin.role, Role::Admin);
        drop(store);
        let (_, _, again) = open_data_dir(&dir, None).unwrap();
        assert_eq!(again, None);
        let on_disk_after = std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE)).unwrap();
        assert_eq!(on_disk_after, on_disk);
    }
}
