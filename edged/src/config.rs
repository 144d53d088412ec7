//! Configuration of privitty-edged: flags, the environment variables they mirror, defaults, and
//! validation.
//!
//! Owns: every setting's name and default (one documented constant each) and turning flags plus
//! environment into a checked [`Config`], reporting all problems at once. Must not: bind sockets,
//! spawn anything, or modify the process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

/// Environment variables read by privitty-edged (the flags of the same meaning win).
pub mod env {
    pub const LISTEN: &str = "PRIVITTY_LISTEN";
    pub const ACCOUNTS: &str = licensectl::env::ACCOUNTS;
    pub const ENGINE: &str = "PRIVITTY_ENGINE";
    pub const PROFILE: &str = "PRIVITTY_PROFILE";
    pub const CORS: &str = "PRIVITTY_CORS";
    pub const MAX_CONNECTIONS: &str = "PRIVITTY_MAX_CONNECTIONS";
    pub const HEADER_TIMEOUT: &str = "PRIVITTY_HEADER_TIMEOUT";
    pub const BODY_TIMEOUT: &str = "PRIVITTY_BODY_TIMEOUT";
    pub const SSE_PING_INTERVAL: &str = "PRIVITTY_SSE_PING_INTERVAL";
    pub const SSE_BUFFER: &str = "PRIVITTY_SSE_BUFFER";
    pub const STOP_TIMEOUT: &str = "PRIVITTY_EDGED_STOP_TIMEOUT";
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7200";
pub const DEFAULT_ENGINE: &str = "deltachat-rpc-server";
/// Request bodies above this answer 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Limits of the settings: larger values overflow timers and counters (a panic at start-up or on
/// the first connection), or preallocate per-client buffers no device has memory for.
pub const MAX_CONNECTIONS_LIMIT: usize = 65_536;
pub const MAX_SSE_BUFFER: usize = 1_000_000;
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SSE_PING_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_SSE_BUFFER: usize = 1024;
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags, each mirroring an environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "privitty-edged",
    version,
    about = "Privitty Edge daemon: Delta Chat JSON-RPC over HTTP with the Privitty license gate",
    after_help = "Exit codes: 0 clean stop, 1 runtime failure, 2 configuration or usage error.\n\
                  When LISTEN_FDS is set (systemd socket activation, fd 3) the inherited socket is used \
                  instead of --listen."
)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; logged as `listening addr=…`).
    #[arg(long, env = env::LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// The data directory: license files, `accounts/` (the engine's), `privitty/` (file keys).
    #[arg(long, env = env::ACCOUNTS, default_value = licensectl::accounts::DEFAULT_ACCOUNTS_DIR)]
    pub accounts: PathBuf,
    /// The Delta Chat engine: a path, or a name looked up on PATH.
    #[arg(long, env = env::ENGINE, default_value = DEFAULT_ENGINE)]
    pub engine: String,
    /// Display name of account 1 (default: the hostname).
    #[arg(long, env = env::PROFILE)]
    pub profile: Option<String>,
    /// Answer CORS preflights and add `Access-Control-Allow-Origin: *` (off by default).
    #[arg(long, env = env::CORS, value_parser = clap::builder::BoolishValueParser::new())]
    pub cors: bool,
    /// Connections served at once; further ones wait in the kernel backlog (never refused).
    #[arg(long, env = env::MAX_CONNECTIONS, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Time a client has to send a request's headers; also how long an idle keep-alive connection stays open.
    #[arg(long, env = env::HEADER_TIMEOUT, default_value = "10s")]
    pub header_timeout: String,
    /// Time a client has to send a request body.
    #[arg(long, env = env::BODY_TIMEOUT, default_value = "30s")]
    pub body_timeout: String,
    /// Interval of the `: ping` keep-alive comment on /events.
    #[arg(long, env = env::SSE_PING_INTERVAL, default_value = "15s")]
    pub sse_ping_interval: String,
    /// Events buffered per /events client before it gets `event: lag`.
    #[arg(long, env = env::SSE_BUFFER, default_value_t = DEFAULT_SSE_BUFFER)]
    pub sse_buffer: usize,
    /// Deadline for a graceful stop (in-flight requests, SSE streams, the engine).
    #[arg(long, env = env::STOP_TIMEOUT, default_value = "5s")]
    pub stop_timeout: String,
    /// Fail at once when another privitty-edged holds the accounts directory, instead of waiting for it.
    #[arg(long)]
    pub no_wait_lock: bool,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub accounts: PathBuf,
    pub engine: PathBuf,
    pub profile: String,
    pub cors: bool,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub sse_ping_interval: Duration,
    pub sse_buffer: usize,
    pub stop_timeout: Duration,
    pub wait_for_lock: bool,
}

/// Every problem found in the configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .problems.join("\n  "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Config {
    /// Defaults for a data directory and engine, as a test or an embedding would start from.
    pub fn new(accounts: impl Into<PathBuf>, engine: impl Into<PathBuf>) -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("default listen address"),
            accounts: accounts.into(),
            engine: engine.into(),
            profile: "privitty-edge".to_string(),
            cors: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            sse_ping_interval: DEFAULT_SSE_PING_INTERVAL,
            sse_buffer: DEFAULT_SSE_BUFFER,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            wait_for_lock: true,
        }
    }

    /// Validates parsed flags; `path_env` is `$PATH` (for finding the engine), `hostname` the default profile.
    pub fn from_args(
        args: Args,
        path_env: Option<&std::ffi::OsStr>,
        hostname: Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let listen = match args.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "--listen / {}: {:?} is not an ip:port address (e.g. {DEFAULT_LISTEN} or 0.0.0.0:7200)",
                    env::LISTEN,
                    args.listen
                ));
                None
            }
        };
        if args.accounts.as_os_str().is_empty() {
            problems.push(format!("--accounts / {}: must not be empty", env::ACCOUNTS));
        } else if args.accounts.exists() && !args.accounts.is_dir() {
            problems.push(format!(
                "--accounts / {}: {} exists and is not a directory",
                env::ACCOUNTS,
                args.accounts.display()
            ));
        }
        let engine = match find_engine(&args.engine, path_env) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("--engine / {}: {e}", env::ENGINE));
                None
            }
        };
        let profile = match args.profile.or(hostname) {
            Some(p) if !p.trim().is_empty() => Some(p.trim().to_string()),
            _ => {
                problems.push(format!(
                    "--profile / {}: empty, and the hostname is unknown; set a gateway name",
                    env::PROFILE
                ));
                None
            }
        };
        if args.max_connections == 0 {
            problems.push(format!(
                "--max-connections / {}: must be at least 1",
                env::MAX_CONNECTIONS
            ));
        }
        if args.max_connections > MAX_CONNECTIONS_LIMIT {
            problems.push(format!(
                "--max-connections / {}: must be at most {MAX_CONNECTIONS_LIMIT}",
                env::MAX_CONNECTIONS
            ));
        }
        if args.sse_buffer == 0 {
            problems.push(format!(
                "--sse-buffer / {}: must be at least 1",
                env::SSE_BUFFER
            ));
        }
        if args.sse_buffer > MAX_SSE_BUFFER {
            problems.push(format!(
                "--sse-buffer / {}: must be at most {MAX_SSE_BUFFER}",
                env::SSE_BUFFER
            ));
        }
        let mut duration = |flag: &str, var: &str, text: &str| match humantime::parse_duration(text)
        {
            Ok(d) if d.is_zero() => {
                problems.push(format!("--{flag} / {var}: must be more than 0"));
                None
            }
            Ok(d) if d > MAX_DURATION => {
                problems.push(format!(
                    "--{flag} / {var}: must be at most {}",
                    humantime::format_duration(MAX_DURATION)
                ));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!(
                    "--{flag} / {var}: {text:?} is not a duration like 10s or 500ms ({e})"
                ));
                None
            }
        };
        let header_timeout = duration("header-timeout", env::HEADER_TIMEOUT, &args.header_timeout);
        let body_timeout = duration("body-timeout", env::BODY_TIMEOUT, &args.body_timeout);
        let sse_ping_interval = duration(
            "sse-ping-interval",
            env::SSE_PING_INTERVAL,
            &args.sse_ping_interval,
        );
        let stop_timeout = duration("stop-timeout", env::STOP_TIMEOUT, &args.stop_timeout);
        match (
            listen,
            engine,
            profile,
            header_timeout,
            body_timeout,
            sse_ping_interval,
            stop_timeout,
        ) {
            (
                Some(listen),
                Some(engine),
                Some(profile),
                Some(header_timeout),
                Some(body_timeout),
                Some(sse_ping_interval),
                Some(stop_timeout),
            ) if problems.is_empty() => Ok(Config {
                listen,
                accounts: args.accounts,
                engine,
                profile,
                cors: args.cors,
                max_connections: args.max_connections,
                header_timeout,
                body_timeout,
                sse_ping_interval,
                sse_buffer: args.sse_buffer,
                stop_timeout,
                wait_for_lock: !args.no_wait_lock,
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

/// The hostname, for the default profile.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A value with a slash is a path; a bare name is looked up on `PATH` like a shell would.
fn find_engine(engine: &str, path_env: Option<&std::ffi::OsStr>) -> Result<PathBuf, String> {
    if engine.is_empty() {
        return Err("must not be empty".to_string());
    }
    if engine.contains('/') {
        let p = PathBuf::from(engine);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!("{engine} is not an executable file"))
        };
    }
    let found = path_env
        .map(std::env::split_paths)
        .into_iter()
        .flatten()
        .map(|dir| dir.join(engine))
        .find(|p| is_executable(p));
    found.ok_or_else(|| {
        format!(
            "{engine:?} was not found on PATH; install deltachat-rpc-server or set the full path"
        )
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["privitty-edged"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("flags parse")
    }

    #[test]
    fn reports_every_problem_at_once() {
        let err = Config::from_args(
            args(&[
                "--listen",
                "nowhere",
                "--engine",
                "/nonexistent/engine",
                "--header-timeout",
                "soon",
                "--max-connections",
                "0",
            ]),
            None,
            Some("gw".into()),
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        for needle in [
            "--listen",
            "--engine",
            "--header-timeout",
            "--max-connections",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn values_too_large_to_use_are_refused_not_panicked_on() {
        let err = Config::from_args(
            args(&[
                "--stop-timeout",
                "18446744073709551615s",
                "--header-timeout",
                "100years",
                "--sse-ping-interval",
                "18446744073709551615s",
                "--body-timeout",
                "2days",
                "--max-connections",
                "4294967296",
                "--sse-buffer",
                "18446744073709551615",
                "--engine",
                "/bin/true",
            ]),
            None,
            Some("gw".into()),
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 6, "{text}");
        for needle in [
            "--stop-timeout / PRIVITTY_EDGED_STOP_TIMEOUT: must be at most 1day",
            "--header-timeout",
            "--sse-ping-interval",
            "--body-timeout",
            "--max-connections / PRIVITTY_MAX_CONNECTIONS: must be at most 65536",
            "--sse-buffer / PRIVITTY_SSE_BUFFER: must be at most 1000000",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        // The limits themselves are accepted.
        Config::from_args(
            args(&[
                "--stop-timeout",
                "1day",
                "--max-connections",
                "65536",
                "--sse-buffer",
                "1000000",
                "--engine",
                "/bin/true",
            ]),
            None,
            Some("gw".into()),
        )
        .expect("limits are valid");
    }

    #[test]
    fn engine_found_on_path_and_profile_defaults_to_hostname() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("deltachat-rpc-server");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = Config::from_args(
            args(&["--listen", "127.0.0.1:0"]),
            Some(dir.path().as_os_str()),
            Some("host7".into()),
        )
        .unwrap();
        assert_eq!(c.engine, exe);
        assert_eq!(c.profile, "host7");
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.header_timeout, DEFAULT_HEADER_TIMEOUT);
    }

    #[test]
    fn missing_engine_on_path_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::from_args(args(&[]), Some(dir.path().as_os_str()), Some("gw".into()))
            .unwrap_err();
        assert!(err.to_string().contains("not found on PATH"), "{err}");
    }
}
