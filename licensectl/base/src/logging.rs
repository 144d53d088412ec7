//! Logging set-up shared by every binary: `PRIVITTY_LOG` (an `EnvFilter` directive, default `info`)
//! and `PRIVITTY_LOG_FORMAT` (`text` or `json`), always to stderr so stdout stays for command output.
//!
//! Owns: the global subscriber. Must not: be called twice in a process, or from library code.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. An invalid `PRIVITTY_LOG` falls back to `default` with a warning
/// rather than silencing the process.
pub fn init(default: &str) {
    let (filter, bad_filter) = match std::env::var(crate::env::LOG) {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(default), Some(format!("{spec:?}: {e}"))),
        },
        _ => (EnvFilter::new(default), None),
    };
    let json = std::env::var(crate::env::LOG_FORMAT).is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Colour only on a terminal: `docker logs` and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    if let Some(problem) = bad_filter {
        tracing::warn!(
            "ignoring invalid {}={problem}; using {default:?}",
            crate::env::LOG
        );
    }
}
