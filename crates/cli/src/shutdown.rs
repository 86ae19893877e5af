//! How long-running subcommands learn that they should stop.

/// Completes on Ctrl-C or SIGTERM (what `systemctl stop` sends). The handlers are installed
/// when this is called (inside the runtime), not at the future's first poll: a SIGTERM that
/// comes before the daemon first polls its shutdown future still stops it gracefully.
pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
