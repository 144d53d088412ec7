//! Signals, turned into the one event edged reacts to: stop.
//!
//! | signal  | effect |
//! |---------|--------|
//! | SIGTERM | graceful stop: no new connections, in-flight requests finish, SSE streams end, engine stopped, exit 0 |
//! | SIGINT  | same as SIGTERM |
//!
//! Must not: do any of the stopping itself.

use std::future::Future;

/// Installs the handlers now (so a signal during start-up is not lost) and returns a future that
/// resolves at the first SIGTERM or SIGINT. Call inside the runtime.
pub fn stop_requested() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stop requested");
    })
}
