//! `failsmall relay`: a regional pull-through relay for agents (README: Relays).

use anyhow::Context as _;
use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The control plane's URL, or several (servers of one control plane, or other relays)
    /// separated by commas, tried in turn.
    #[arg(long, value_name = "URL[,URL...]", env = "FAILSMALL_UPSTREAM")]
    pub upstream: String,
    /// Address to listen on (agents' `--addr`).
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub listen: std::net::SocketAddr,
    /// Where bundles and spooled reports are kept (created if missing).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: std::path::PathBuf,
    /// Log lines as `text` or `json` [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<crate::logging::LogFormat>,
    /// Only check the flags, then exit: 0 valid, 1 not.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub connections: crate::server_cmd::net::ConnectionArgs,
}

pub fn run(args: &RelayArgs) -> anyhow::Result<Outcome> {
    let mut config = failsmall_relay::Config::new(&args.upstream, args.cache_dir.clone());
    config.connections = args
        .connections
        .limits(&crate::server_cmd::net::NetFile::default());
    config.validate()?;
    if args.check {
        eprintln!("relay configuration is valid");
        return Ok(Outcome::Success);
    }
    crate::logging::init(args.log_format.unwrap_or_default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr().context("listener has no address")?;
        eprintln!(
            "failsmall relay listening on http://{address}, data in {}",
            args.cache_dir.display()
        );
        failsmall_relay::run(config, listener, crate::shutdown::signal()).await?;
        Ok(Outcome::Success)
    })
}
