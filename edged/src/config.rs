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

/// Environment variables read by privitty-edged (the flags of the same meaning win); named,
/// defaulted and explained in [`privitty_base::env`].
pub mod env {
    pub use privitty_base::env::EDGED_STOP_TIMEOUT as STOP_TIMEOUT;
    pub use privitty_base::env::{
        ACCOUNTS, ALLOWED_HOSTS, API_AUTH, API_TOKEN, API_TOKEN_FILE, BODY_TIMEOUT, CORS, ENGINE,
        FILES_DIR, HEADER_TIMEOUT, LICENSE_WARN_BEFORE, LISTEN, MAX_CONNECTIONS, METRICS_AUTH,
        PROFILE, RPC_ALLOW, RPC_MAX_BATCH, RPC_MAX_RESPONSE, SSE_BUFFER, SSE_MAX_CLIENTS,
        SSE_PING_INTERVAL, VIEWER_MAX_STREAMS,
    };
    /// Set by privitty-init for each generation it spawns (absent: edged runs on its own): the
    /// generation's number, and the swaps and crashes privitty-init has seen so far.
    pub use privitty_base::env::{GENERATION, GENERATION_CRASHES, GENERATION_SWAPS};
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
/// Calls in one JSON-RPC batch at most.
pub const DEFAULT_RPC_MAX_BATCH: usize = 100;
pub const MAX_RPC_MAX_BATCH: usize = 10_000;
/// Bytes of JSON-RPC answers per call and per batch at most (16 MiB).
pub const DEFAULT_RPC_MAX_RESPONSE: usize = 16 * 1024 * 1024;
pub const MIN_RPC_MAX_RESPONSE: usize = 4096;
pub const MAX_RPC_MAX_RESPONSE: usize = 1024 * 1024 * 1024;
/// `/events` clients at once (kept below the connection cap so `/health` always has a slot).
pub const DEFAULT_SSE_MAX_CLIENTS: usize = 64;
/// `GET /stream/:msg_id` responses at once (each holds one blocking thread and one chunk buffer).
pub const DEFAULT_VIEWER_MAX_STREAMS: usize = 4;
/// The files directory under the data directory, unless `PRIVITTY_FILES_DIR` names another.
pub const FILES_SUBDIR: &str = "files";
/// `PrivittyLicenseExpiring` starts this long before the license's next deadline.
pub const DEFAULT_LICENSE_WARN_BEFORE: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// The longest `PRIVITTY_LICENSE_WARN_BEFORE` (ten years: longer than any license).
pub const MAX_LICENSE_WARN_BEFORE: Duration = Duration::from_secs(3650 * 24 * 60 * 60);

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
    /// Let web pages call the API: a comma-separated list of origins (`https://viewer.example`), or
    /// `*` for any origin (refused while the API token is required). `--cors` alone means `*`.
    #[arg(long, env = env::CORS, num_args = 0..=1, default_missing_value = "*", value_name = "ORIGINS")]
    pub cors: Option<String>,
    /// When `/rpc` and `/events` need `Authorization: Bearer <token>`: `auto` (required unless the
    /// listen address is loopback), `required`, or `off`. The token: PRIVITTY_API_TOKEN, else the
    /// file PRIVITTY_API_TOKEN_FILE, else <accounts>/api.token (created at first boot).
    #[arg(long, env = env::API_AUTH, default_value = "auto", value_name = "MODE")]
    pub api_auth: String,
    /// Extra Host names a loopback listener answers to (comma-separated); others get 421 (DNS rebinding).
    #[arg(long, env = env::ALLOWED_HOSTS, value_delimiter = ',', value_name = "NAMES")]
    pub allowed_hosts: Vec<String>,
    /// The only directory client-given paths may point into [default: <accounts>/files].
    #[arg(long, env = env::FILES_DIR, value_name = "DIR")]
    pub files_dir: Option<PathBuf>,
    /// Engine methods the policy denies by default that this gateway allows (comma-separated).
    #[arg(long, env = env::RPC_ALLOW, value_delimiter = ',', value_name = "METHODS")]
    pub rpc_allow: Vec<String>,
    /// Calls in one JSON-RPC batch at most.
    #[arg(long, env = env::RPC_MAX_BATCH, default_value_t = DEFAULT_RPC_MAX_BATCH)]
    pub rpc_max_batch: usize,
    /// Size of a JSON-RPC answer (per call and per batch) at most, e.g. 16MiB; larger answers are
    /// replaced by an error.
    #[arg(long, env = env::RPC_MAX_RESPONSE, default_value = "16MiB", value_name = "BYTES")]
    pub rpc_max_response: String,
    /// `/events` clients at once; more get 503 [default: 64, at most half of --max-connections].
    #[arg(long, env = env::SSE_MAX_CLIENTS)]
    pub sse_max_clients: Option<usize>,
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
    /// Who may read `GET /metrics`: `open` (anyone who reaches the port, like /health) or `token`
    /// (the API token, exactly when /rpc needs it: see --api-auth).
    #[arg(long, env = env::METRICS_AUTH, default_value = "open", value_name = "MODE")]
    pub metrics_auth: String,
    /// `PrivittyLicenseExpiring` events and warnings start this long before the license's next
    /// deadline (`expires_at`, then `grace_ends_at`), once a day; `0` turns them off.
    #[arg(long, env = env::LICENSE_WARN_BEFORE, default_value = "14d", value_name = "DURATION")]
    pub license_warn_before: String,
    /// Viewer streams (`GET /stream/:msg_id`) at once; more get 503 [default: 4, at most half of
    /// --max-connections].
    #[arg(long, env = env::VIEWER_MAX_STREAMS)]
    pub viewer_max_streams: Option<usize>,
    /// The generation number privitty-init gave this process (set by privitty-init).
    #[arg(long, env = env::GENERATION, hide = true)]
    pub generation: Option<String>,
    /// Generation swaps privitty-init has made so far (set by privitty-init).
    #[arg(long, env = env::GENERATION_SWAPS, hide = true)]
    pub generation_swaps: Option<String>,
    /// Unexpected exits of earlier generations privitty-init has seen (set by privitty-init).
    #[arg(long, env = env::GENERATION_CRASHES, hide = true)]
    pub generation_crashes: Option<String>,
    /// Benchmarks only: serve /metrics but record nothing per request (measures the recording cost).
    #[arg(long, hide = true)]
    pub bench_no_metrics_recording: bool,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub accounts: PathBuf,
    pub engine: PathBuf,
    pub profile: String,
    pub cors: crate::auth::Cors,
    pub api_auth: crate::auth::AuthSetting,
    /// Where the API token comes from.
    pub api_token: licensectl::api_token::Source,
    pub allowed_hosts: Vec<String>,
    pub files_dir: PathBuf,
    pub policy: crate::policy::Policy,
    pub rpc_max_batch: usize,
    pub rpc_max_response: usize,
    pub sse_max_clients: usize,
    pub viewer_max_streams: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub sse_ping_interval: Duration,
    pub sse_buffer: usize,
    pub stop_timeout: Duration,
    pub wait_for_lock: bool,
    pub metrics_auth: crate::auth::MetricsAuth,
    /// `None`: no expiry warnings (`PRIVITTY_LICENSE_WARN_BEFORE=0`).
    pub license_warn_before: Option<Duration>,
    /// What privitty-init told this generation; `None` when edged runs on its own.
    pub generation: Option<crate::metrics::GenerationInfo>,
    /// Per-request metrics (off only for the benchmark's comparison).
    pub metrics_recording: bool,
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
        let accounts = accounts.into();
        Config {
            listen: DEFAULT_LISTEN.parse().expect("default listen address"),
            files_dir: accounts.join(FILES_SUBDIR),
            api_token: licensectl::api_token::Source::DataDir(
                accounts.join(licensectl::api_token::API_TOKEN_FILE),
            ),
            accounts,
            engine: engine.into(),
            profile: "privitty-edge".to_string(),
            cors: crate::auth::Cors::Off,
            api_auth: crate::auth::AuthSetting::Auto,
            allowed_hosts: Vec::new(),
            policy: crate::policy::Policy::new(&[]).expect("empty allow list"),
            rpc_max_batch: DEFAULT_RPC_MAX_BATCH,
            rpc_max_response: DEFAULT_RPC_MAX_RESPONSE,
            sse_max_clients: DEFAULT_SSE_MAX_CLIENTS,
            viewer_max_streams: DEFAULT_VIEWER_MAX_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            sse_ping_interval: DEFAULT_SSE_PING_INTERVAL,
            sse_buffer: DEFAULT_SSE_BUFFER,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            wait_for_lock: true,
            metrics_auth: crate::auth::MetricsAuth::Open,
            license_warn_before: Some(DEFAULT_LICENSE_WARN_BEFORE),
            generation: None,
            metrics_recording: true,
        }
    }

    /// Validates parsed flags; `path_env` is `$PATH` (for finding the engine), `hostname` the default profile.
    pub fn from_args(
        args: Args,
        path_env: Option<&std::ffi::OsStr>,
        hostname: Option<String>,
    ) -> Result<Config, ConfigError> {
        let token_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let api_token_env = token_env(env::API_TOKEN).map(|v| v.to_string_lossy().into_owned());
        let api_token_file_env = token_env(env::API_TOKEN_FILE).map(PathBuf::from);
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
        let cors = match crate::auth::Cors::parse(args.cors.as_deref().unwrap_or("")) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("--cors / {}: {e}", env::CORS));
                crate::auth::Cors::Off
            }
        };
        let api_auth = crate::auth::AuthSetting::parse(&args.api_auth);
        if api_auth.is_none() {
            problems.push(format!(
                "--api-auth / {}: {:?} is not one of auto, required, off",
                env::API_AUTH,
                args.api_auth
            ));
        }
        let required_here = match (api_auth, listen) {
            (Some(setting), Some(addr)) => setting.resolve(addr) == crate::auth::AuthMode::Required,
            _ => false,
        };
        if required_here && cors == crate::auth::Cors::Any {
            problems.push(format!(
                "--cors / {}: `*` lets every web page read the API while the API token is required; \
                 list the origins instead (e.g. --cors https://viewer.example)",
                env::CORS
            ));
        }
        let api_token = match licensectl::api_token::Source::choose(
            api_token_env.as_deref(),
            api_token_file_env.as_deref(),
            &args.accounts,
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        for h in &args.allowed_hosts {
            if h.is_empty() || h.contains(['/', ' ', '@']) {
                problems.push(format!(
                    "--allowed-hosts / {}: {h:?} is not a host name",
                    env::ALLOWED_HOSTS
                ));
            }
        }
        let policy = match crate::policy::Policy::new(&args.rpc_allow) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("--rpc-allow / {}: {e}", env::RPC_ALLOW));
                None
            }
        };
        if args.rpc_max_batch == 0 || args.rpc_max_batch > MAX_RPC_MAX_BATCH {
            problems.push(format!(
                "--rpc-max-batch / {}: must be between 1 and {MAX_RPC_MAX_BATCH}",
                env::RPC_MAX_BATCH
            ));
        }
        let rpc_max_response = match parse_bytes(&args.rpc_max_response) {
            Some(n) if (MIN_RPC_MAX_RESPONSE..=MAX_RPC_MAX_RESPONSE).contains(&n) => Some(n),
            Some(_) => {
                problems.push(format!(
                    "--rpc-max-response / {}: must be between 4KiB and 1GiB",
                    env::RPC_MAX_RESPONSE
                ));
                None
            }
            None => {
                problems.push(format!(
                    "--rpc-max-response / {}: {:?} is not a size like 16MiB, 512KiB or 1048576",
                    env::RPC_MAX_RESPONSE,
                    args.rpc_max_response
                ));
                None
            }
        };
        let sse_max_clients = args
            .sse_max_clients
            .unwrap_or(DEFAULT_SSE_MAX_CLIENTS.min(args.max_connections / 2).max(1));
        if args
            .sse_max_clients
            .is_some_and(|n| n == 0 || (args.max_connections > 1 && n >= args.max_connections))
        {
            problems.push(format!(
                "--sse-max-clients / {}: must be at least 1 and below --max-connections ({}), so /health and /rpc always have a slot",
                env::SSE_MAX_CLIENTS,
                args.max_connections
            ));
        }
        let viewer_max_streams = args.viewer_max_streams.unwrap_or(
            DEFAULT_VIEWER_MAX_STREAMS
                .min(args.max_connections / 2)
                .max(1),
        );
        if args
            .viewer_max_streams
            .is_some_and(|n| n == 0 || (args.max_connections > 1 && n >= args.max_connections))
        {
            problems.push(format!(
                "--viewer-max-streams / {}: must be at least 1 and below --max-connections ({}), so /health and /rpc always have a slot",
                env::VIEWER_MAX_STREAMS,
                args.max_connections
            ));
        }
        let files_dir = args
            .files_dir
            .clone()
            .unwrap_or_else(|| args.accounts.join(FILES_SUBDIR));
        let mut duration =
            |flag: &str, var: &str, text: &str| match privitty_base::duration::parse_duration(text)
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
        let metrics_auth = crate::auth::MetricsAuth::parse(&args.metrics_auth);
        if metrics_auth.is_none() {
            problems.push(format!(
                "--metrics-auth / {}: {:?} is not one of open, token",
                env::METRICS_AUTH,
                args.metrics_auth
            ));
        }
        let license_warn_before = match privitty_base::duration::parse_duration(
            &args.license_warn_before,
        ) {
            Ok(d) if d.is_zero() => Some(None),
            Ok(d) if d > MAX_LICENSE_WARN_BEFORE => {
                problems.push(format!(
                    "--license-warn-before / {}: must be at most 3650days",
                    env::LICENSE_WARN_BEFORE
                ));
                None
            }
            Ok(d) => Some(Some(d)),
            Err(e) => {
                problems.push(format!(
                    "--license-warn-before / {}: {:?} is not a duration like 14d or 36h, or 0 for off ({e})",
                    env::LICENSE_WARN_BEFORE,
                    args.license_warn_before
                ));
                None
            }
        };
        let generation = generation_info(
            [
                &args.generation,
                &args.generation_swaps,
                &args.generation_crashes,
            ],
            &mut problems,
        );
        match (
            (listen, engine, profile, header_timeout),
            (body_timeout, sse_ping_interval, stop_timeout),
            (api_auth, api_token, policy, rpc_max_response),
        ) {
            (
                (Some(listen), Some(engine), Some(profile), Some(header_timeout)),
                (Some(body_timeout), Some(sse_ping_interval), Some(stop_timeout)),
                (Some(api_auth), Some(api_token), Some(policy), Some(rpc_max_response)),
            ) if problems.is_empty() => Ok(Config {
                listen,
                accounts: args.accounts,
                engine,
                profile,
                cors,
                api_auth,
                api_token,
                allowed_hosts: args.allowed_hosts,
                files_dir,
                policy,
                rpc_max_batch: args.rpc_max_batch,
                rpc_max_response,
                sse_max_clients,
                viewer_max_streams,
                max_connections: args.max_connections,
                header_timeout,
                body_timeout,
                sse_ping_interval,
                sse_buffer: args.sse_buffer,
                stop_timeout,
                wait_for_lock: !args.no_wait_lock,
                metrics_auth: metrics_auth.unwrap_or(crate::auth::MetricsAuth::Open),
                license_warn_before: license_warn_before.flatten(),
                generation,
                metrics_recording: !args.bench_no_metrics_recording,
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

/// What privitty-init handed this generation (`PRIVITTY_GENERATION`, `…_SWAPS`, `…_CRASHES`):
/// `None` without `PRIVITTY_GENERATION` (edged on its own); the counters default to 0.
fn generation_info(
    [generation, swaps, crashes]: [&Option<String>; 3],
    problems: &mut Vec<String>,
) -> Option<crate::metrics::GenerationInfo> {
    let mut number = |value: &Option<String>, flag: &str, var: &str| -> u64 {
        let Some(text) = value.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
            return 0;
        };
        text.parse().unwrap_or_else(|_| {
            problems.push(format!("--{flag} / {var}: {text:?} is not a whole number"));
            0
        })
    };
    let present = generation.as_deref().is_some_and(|g| !g.trim().is_empty());
    let info = crate::metrics::GenerationInfo {
        number: number(generation, "generation", env::GENERATION),
        swaps: number(swaps, "generation-swaps", env::GENERATION_SWAPS),
        crashes: number(crashes, "generation-crashes", env::GENERATION_CRASHES),
    };
    present.then_some(info)
}

/// `16MiB`, `512KiB`, `1GiB`, `2MB`, or plain bytes.
pub fn parse_bytes(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
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
    fn metrics_warnings_and_what_privitty_init_hands_over() {
        let base = ["--engine", "/bin/true"];
        let parse = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            Config::from_args(args(&v), None, Some("gw".into()))
        };
        let c = parse(&[]).unwrap();
        assert_eq!(c.metrics_auth, crate::auth::MetricsAuth::Open);
        assert_eq!(c.license_warn_before, Some(DEFAULT_LICENSE_WARN_BEFORE));
        assert_eq!(c.generation, None, "standalone");
        assert!(c.metrics_recording);
        let c = parse(&[
            "--metrics-auth",
            "TOKEN",
            "--license-warn-before",
            "0",
            "--generation",
            "3",
            "--generation-crashes",
            "1",
            "--bench-no-metrics-recording",
        ])
        .unwrap();
        assert_eq!(c.metrics_auth, crate::auth::MetricsAuth::Token);
        assert_eq!(c.license_warn_before, None, "0 turns warnings off");
        assert_eq!(
            c.generation,
            Some(crate::metrics::GenerationInfo {
                number: 3,
                swaps: 0,
                crashes: 1
            })
        );
        assert!(!c.metrics_recording);
        assert_eq!(
            parse(&["--license-warn-before", "36h"])
                .unwrap()
                .license_warn_before,
            Some(Duration::from_secs(36 * 3600))
        );
        let err = parse(&[
            "--metrics-auth",
            "maybe",
            "--license-warn-before",
            "soon",
            "--generation",
            "two",
        ])
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        for needle in [
            "PRIVITTY_METRICS_AUTH",
            "PRIVITTY_LICENSE_WARN_BEFORE",
            "PRIVITTY_GENERATION",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    /// The variables `--help` lists (one per flag) are the registry's, with its defaults; the API
    /// token has no flag (it would show in `ps`).
    #[test]
    fn help_variables_match_the_env_registry() {
        let cmd = <Args as clap::CommandFactory>::command();
        let no_flag = [env::API_TOKEN, env::API_TOKEN_FILE];
        let problems = privitty_base::env::flag_differences("edged", &cmd, &no_flag);
        assert!(
            problems.is_empty(),
            "privitty-edged's flags and licensectl/base/src/env.rs differ:\n  {}",
            problems.join("\n  ")
        );
    }

    #[test]
    fn missing_engine_on_path_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::from_args(args(&[]), Some(dir.path().as_os_str()), Some("gw".into()))
            .unwrap_err();
        assert!(err.to_string().contains("not found on PATH"), "{err}");
    }
}
