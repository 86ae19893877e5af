//! The log of `failsmall server` and `failsmall agent`: `tracing` events on stderr, filtered
//! as `RUST_LOG` says (`EnvFilter` syntax: `info`, `failsmall_server=debug,warn`, ...;
//! default `info`), as text for people or one JSON object per line (`--log-format json`).
//! A JSON line carries `timestamp`, `level`, `target`, the event's fields (`message` and the
//! rest), and `span`/`spans` (e.g. a request's `request_id`, `method`, `path`).

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

pub use failsmall_agent::args::LogFormat;

/// Installs the process's subscriber; `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .with_context(|| format!("RUST_LOG={directives:?} is not a valid log filter"))?,
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}
