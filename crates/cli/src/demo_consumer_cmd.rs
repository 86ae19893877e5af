//! `failsmall demo-consumer`: the demo consumer, an HTTP service that reads `bot-features` and
//! `rules` from an agent's data dir and fails (or not) the way the 18 Nov and 5 Dec proxies did.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use failsmall_demo::{ConsumerConfig, Generation, Mode};

use crate::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Reads the feature file itself: over 200 features, every request fails with 500.
    Naive,
    /// Reads it through failsmall-client: a bad file is rejected and reported, the last good
    /// one keeps serving.
    Safe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenerationArg {
    /// The older proxy: a killswitched `execute` rule fails every request.
    Fl1,
    /// The newer proxy: handles it.
    Fl2,
}

#[derive(Debug, Args)]
pub struct DemoConsumerArgs {
    /// The agent's data dir: units are read from DIR/units/<unit>/current.
    #[arg(long, value_name = "DIR")]
    pub units_dir: PathBuf,
    /// Address to listen on (port 0: any free port; the address is printed at start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[arg(long, value_enum, default_value_t = ModeArg::Safe)]
    pub mode: ModeArg,
    #[arg(long, value_enum, default_value_t = GenerationArg::Fl2)]
    pub generation: GenerationArg,
    /// Where rejected versions are POSTed (safe mode). `{unit}` is replaced by the unit's
    /// name and the body is then `{"version","reason"}` (the agent's local API:
    /// http://127.0.0.1:7071/v1/units/{unit}/rejections); without `{unit}` the body is
    /// `{"unit","version","reason"}`.
    #[arg(long, value_name = "URL")]
    pub reject_url: Option<String>,
    /// How often the unit files are looked at, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = failsmall_demo::consumer::POLL_INTERVAL_DEFAULT_MS)]
    pub poll_interval_ms: u64,
    /// Once listening, write the consumer's URL (`http://127.0.0.1:40123`) to FILE, whole or
    /// not at all: with `--listen 127.0.0.1:0`, how a script learns the port.
    #[arg(long, value_name = "FILE")]
    pub addr_file: Option<PathBuf>,
}

pub fn run(args: &DemoConsumerArgs) -> anyhow::Result<Outcome> {
    let mode = match args.mode {
        ModeArg::Naive => Mode::Naive,
        ModeArg::Safe => Mode::Safe,
    };
    let generation = match args.generation {
        GenerationArg::Fl1 => Generation::Fl1,
        GenerationArg::Fl2 => Generation::Fl2,
    };
    let mut config = ConsumerConfig::new(&args.units_dir, mode, generation);
    config.reject_url = args.reject_url.clone();
    config.poll_interval_ms = args.poll_interval_ms;
    config.validate()?;
    if mode == Mode::Naive && config.reject_url.is_some() {
        eprintln!(
            "warning: --reject-url is ignored in naive mode (a naive consumer reports nothing)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr().context("listener has no address")?;
        outln!(
            "failsmall demo-consumer listening on http://{address} (mode {}, generation {}, units in {})",
            mode.as_str(),
            generation.as_str(),
            args.units_dir.display()
        );
        if let Some(path) = &args.addr_file {
            crate::write_addr_file(path, &format!("http://{address}"))?;
        }
        failsmall_demo::consumer::run(config, listener, crate::shutdown::signal()).await?;
        Ok(Outcome::Success)
    })
}
