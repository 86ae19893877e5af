//! `failsmall server`'s network flags: TLS and the limits on connections.

use std::path::PathBuf;

use clap::Args;
use failsmall_server::ServerConfig;
use failsmall_server::serve::{MAX_CONNECTIONS_DEFAULT, MAX_CONNECTIONS_PER_CLIENT_DEFAULT};

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
    /// Most connections open at once. At the bound a new connection replaces the quietest
    /// one with no request in flight (a watch is never cut); when all are busy it is closed.
    #[arg(long, value_name = "N", default_value_t = MAX_CONNECTIONS_DEFAULT)]
    pub max_connections: usize,
    /// Most connections open at once from one IP address; at this bound a new connection
    /// replaces that client's quietest idle one.
    #[arg(long, value_name = "N", default_value_t = MAX_CONNECTIONS_PER_CLIENT_DEFAULT)]
    pub max_connections_per_client: usize,
    /// Longest time for a request's head, or a TLS handshake, to arrive (`10s`).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_ms)]
    pub header_timeout: u64,
    /// A connection with no request in flight and no byte moved for this long is closed
    /// (`60s`).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_ms)]
    pub idle_timeout: u64,
}

/// `failsmall server recover-admin`.
#[derive(Debug, Args)]
pub struct RecoverAdminArgs {
    /// The server's data dir (the server may be stopped or running).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The new token's name.
    #[arg(long, default_value = "recovered-admin")]
    pub name: String,
    /// The person it acts for (approvals compare owners).
    #[arg(long, value_name = "PERSON")]
    pub owner: String,
}

impl RecoverAdminArgs {
    pub fn run(&self) -> anyhow::Result<crate::Outcome> {
        let (token, record) =
            failsmall_server::recover::recover_admin(&self.data_dir, &self.name, &self.owner)?;
        eprintln!(
            "admin token {} {:?} for {} created offline; its secret is shown only now:",
            record.id, record.name, self.owner
        );
        outln!("{token}");
        Ok(crate::Outcome::Success)
    }
}

fn parse_ms(text: &str) -> Result<u64, String> {
    failsmall_core::duration::parse_duration_ms(text).map_err(|e| e.to_string())
}

impl NetArgs {
    /// Puts the flags into `config`; the server checks the bounds at start.
    pub fn apply(&self, config: &mut ServerConfig) {
        if let (Some(cert_path), Some(key_path)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(failsmall_server::tls::TlsFiles {
                cert_path: cert_path.clone(),
                key_path: key_path.clone(),
            });
        }
        config.connections = failsmall_server::serve::ConnectionLimits {
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            header_timeout_ms: self.header_timeout,
            idle_timeout_ms: self.idle_timeout,
        };
    }

    /// `https` when serving TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsmall_server::serve::{HEADER_TIMEOUT_MS_DEFAULT, IDLE_TIMEOUT_MS_DEFAULT};

    #[test]
    fn the_defaults_are_the_servers() {
        assert_eq!(
            parse_ms("10s").unwrap(),
            HEADER_TIMEOUT_MS_DEFAULT,
            "--header-timeout default"
        );
        assert_eq!(parse_ms("60s").unwrap(), IDLE_TIMEOUT_MS_DEFAULT);
    }
}
