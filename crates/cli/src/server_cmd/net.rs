//! `failsmall server`'s network flags: TLS and the limits on connections (the latter also
//! `failsmall relay`'s).

use std::path::PathBuf;

use clap::Args;
use failsmall_server::ServerConfig;
use failsmall_server::serve::{
    ConnectionLimits, HEADER_TIMEOUT_MS_DEFAULT, IDLE_TIMEOUT_MS_DEFAULT, MAX_CONNECTIONS_DEFAULT,
    MAX_CONNECTIONS_PER_CLIENT_DEFAULT,
};

#[derive(Debug, Args)]
pub struct NetArgs {
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first); needs
    /// --tls-key. Agents and the CLI then use https:// and trust it by --ca FILE or the
    /// public root CAs built in.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// The limits on connections, for `failsmall server` and `failsmall relay`.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Most connections open at once. At the bound a new connection replaces the quietest
    /// one with no request in flight (a watch is never cut); when all are busy it is closed
    /// [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections open at once from one IP address; at this bound a new connection
    /// replaces that client's quietest idle one [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections_per_client: Option<usize>,
    /// Longest time for a request's head, or a TLS handshake, to arrive [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub header_timeout: Option<u64>,
    /// A connection with no request in flight and no byte moved for this long is closed
    /// [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_ms)]
    pub idle_timeout: Option<u64>,
}

/// `failsmall server recover-admin`.
#[derive(Debug, Args)]
pub struct RecoverAdminArgs {
    /// The server's data dir (the server may be stopped or running).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The server's PostgreSQL store, when it keeps its state there (`--store` of
    /// `failsmall server`).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The new token's name.
    #[arg(long, default_value = "recovered-admin")]
    pub name: String,
    /// The person it acts for (approvals compare owners).
    #[arg(long, value_name = "PERSON")]
    pub owner: String,
}

impl RecoverAdminArgs {
    pub fn run(&self) -> anyhow::Result<crate::Outcome> {
        let (token, record) = failsmall_server::recover::recover_admin(
            &self.data_dir,
            self.store.as_deref(),
            &self.name,
            &self.owner,
        )?;
        eprintln!(
            "admin token {} {:?} for {} created offline; its secret is shown only now:",
            record.id, record.name, self.owner
        );
        outln!("{token}");
        Ok(crate::Outcome::Success)
    }
}

pub fn parse_ms(text: &str) -> Result<u64, String> {
    failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())
}

/// The network settings a configuration file may hold (durations already parsed).
#[derive(Debug, Default)]
pub struct NetFile {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub header_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
}

impl NetArgs {
    /// Puts the flags, over the file's settings, into `config`; the server checks the bounds
    /// at start. A certificate without its key (or the other way round) is a problem.
    pub fn apply(&self, file: NetFile, config: &mut ServerConfig) -> Result<(), String> {
        config.connections = self.connections.limits(&file);
        let cert = self.tls_cert.clone().or(file.tls_cert);
        let key = self.tls_key.clone().or(file.tls_key);
        match (cert, key) {
            (Some(cert_path), Some(key_path)) => {
                config.tls = Some(failsmall_server::tls::TlsFiles {
                    cert_path,
                    key_path,
                });
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "a TLS certificate needs its key and a key its certificate: give both \
                     tls_cert and tls_key (--tls-cert and --tls-key), or neither"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }
}

impl ConnectionArgs {
    /// The flags, over the file's settings, over the defaults; bounds are checked at start.
    pub fn limits(&self, file: &NetFile) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(MAX_CONNECTIONS_DEFAULT),
            max_connections_per_client: self
                .max_connections_per_client
                .or(file.max_connections_per_client)
                .unwrap_or(MAX_CONNECTIONS_PER_CLIENT_DEFAULT),
            header_timeout_ms: self
                .header_timeout
                .or(file.header_timeout_ms)
                .unwrap_or(HEADER_TIMEOUT_MS_DEFAULT),
            idle_timeout_ms: self
                .idle_timeout
                .or(file.idle_timeout_ms)
                .unwrap_or(IDLE_TIMEOUT_MS_DEFAULT),
        }
    }
}
