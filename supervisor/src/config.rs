//! Configuration: every option and variable of `privitty-init`, parsed and validated in one place.
//!
//! Owns: the variable names (documented constants), their defaults, the `--help` text (options,
//! variables, signals, exit codes) and the validation that reports every problem at once. Must not:
//! touch the process environment (`std::env::set_var`), bind sockets or start anything.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Parser};
use nix::sys::signal::Signal;
use privitty_base::duration::parse_duration;

/// Environment variables read by `privitty-init` (the CLI flags mirror them); named, defaulted and
/// explained in [`privitty_base::env`].
pub mod env {
    pub use privitty_base::env::{
        ACCOUNTS, ACTIVATION_TIMEOUT, CRASH_LIMIT, CRASH_WINDOW, LICENSE_POLL_INTERVAL,
        LICENSE_SYNC_INTERVAL, LICENSE_URL, LICENSE_URL_FILE, LISTEN, READY_TIMEOUT, SPARE,
        STOP_TIMEOUT,
    };
}

/// The command started when none is given.
pub const DEFAULT_COMMAND: &str = "privitty-edged";
/// The license command line that managed mode runs for activation, sync and the device identity
/// (`privitty-edge license …`), found like [`DEFAULT_COMMAND`].
pub const LICENSE_CLI: &str = "privitty-edge";
/// Names under which privitty-init runs in plain mode without `--plain` (a symlink named like the
/// init it replaces, so an image can swap it in with no other edit).
pub const PLAIN_NAMES: [&str; 2] = ["tini", "dumb-init"];
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7200";
pub const DEFAULT_STOP_TIMEOUT: &str = "8s";
pub const DEFAULT_ACTIVATION_TIMEOUT: &str = "30s";
pub const DEFAULT_SYNC_INTERVAL: &str = "24h";
pub const DEFAULT_POLL_INTERVAL: &str = "2s";
pub const DEFAULT_READY_TIMEOUT: &str = "30s";
pub const DEFAULT_CRASH_LIMIT: &str = "5";
pub const DEFAULT_SPARE: &str = "on";
pub const DEFAULT_CRASH_WINDOW: &str = "5m";
/// The longest duration accepted (`100y`): every duration is added to the clock, and a sum past
/// the clock's range would panic.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Exit codes of `privitty-init` itself (besides the child's own code, passed through).
pub mod exit {
    /// Internal failure of the supervisor (e.g. it could not block its signals).
    pub const FAILURE: i32 = 1;
    /// Invalid options or variables.
    pub const CONFIG: i32 = 2;
    /// Managed mode: privitty-edged exited unexpectedly more than PRIVITTY_CRASH_LIMIT times
    /// within PRIVITTY_CRASH_WINDOW; the orchestrator should see the crash loop.
    pub const CRASH_LOOP: i32 = 70;
    /// The command was found but could not be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
}

const HELP_TAIL: &str = "\
Modes:
  default   managed mode: start-up license activation, license watch, generation swaps,
            crash restarts and periodic sync around privitty-edged
  --plain   minimal init: runs CMD, reaps zombies, forwards signals, exits when CMD exits;
            also when privitty-init is run under the name tini or dumb-init (a symlink)

Signals (sent to privitty-init):
  TERM, INT, QUIT      stop. plain: the signal itself to the child's process group; managed:
                       TERM to each privitty-edged, which drains and stops its engine. Then
                       wait up to PRIVITTY_STOP_TIMEOUT for the whole process tree, SIGKILL what
                       is left; returns as soon as everything has exited
  HUP                  plain: forwarded to the child's group; managed: re-check the license and
                       start a new generation
  USR1 USR2 WINCH CONT ALRM TSTP ABRT URG XCPU XFSZ VTALRM PROF IO PWR STKFLT, RTMIN..RTMAX
                       plain: forwarded to the child's process group; managed: to the running
                       privitty-edged
  TTIN, TTOU           ignored (they never stop privitty-init)
  CHLD                 reaps every exited child, including orphans re-parented to privitty-init
  PIPE                 ignored
  KILL, STOP           cannot be caught

tini compatibility (plain mode): -s and -g are accepted (privitty-init is a subreaper when not
PID 1 and signals the child's process group), -e CODE turns the child's exit code CODE into 0,
-p SIGNAL asks for SIGNAL when privitty-init's parent dies, -v raises the log level. Plain mode
logs only warnings and errors unless -v or PRIVITTY_LOG asks for more.

Exit codes:
  N        the child's exit code
  128+N    the child was killed by signal N (e.g. 137 after SIGKILL, 143 after SIGTERM)
  1        internal failure of privitty-init
  2        invalid options or variables (every problem is listed)
  70       managed: crash loop (privitty-edged exited unexpectedly more than
           PRIVITTY_CRASH_LIMIT times within PRIVITTY_CRASH_WINDOW)
  126      CMD was found but could not be executed (permissions, not an executable, ...)
  127      CMD was not found

Durations take units: 500ms, 8s, 2m, 24h (at most 100y).";

/// The command line, mirroring the variables; validated into [`Config`] by [`Config::from_cli`].
#[derive(Debug, Parser)]
#[command(
    name = "privitty-init",
    version,
    about = "PID 1 of the Privitty Edge container: reaps zombies, forwards signals, stops the \
             process tree, and (unless --plain) supervises privitty-edged and its license",
    after_help = HELP_TAIL
)]
pub struct Cli {
    /// Minimal init: no license work, no restarts; exits when CMD exits.
    #[arg(long)]
    pub plain: bool,

    /// More log output (repeatable: -vv, -vvv); PRIVITTY_LOG, when set, decides instead.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    /// tini's subreaper flag: accepted; privitty-init always is a subreaper when not PID 1.
    #[arg(short = 's')]
    pub subreaper: bool,

    /// tini's process-group flag: accepted; signals always go to the child's process group.
    #[arg(short = 'g')]
    pub process_group: bool,

    /// Plain mode: when the child exits with CODE (128+N after signal N), exit 0 (repeatable).
    #[arg(short = 'e', value_name = "CODE", allow_negative_numbers = true)]
    pub remap_exit: Vec<String>,

    /// Have the kernel send SIGNAL (e.g. SIGTERM, SIGKILL) to privitty-init when its parent dies.
    #[arg(short = 'p', value_name = "SIGNAL")]
    pub parent_death_signal: Option<String>,

    /// Accounts (data) directory holding the license files.
    #[arg(long, value_name = "DIR", env = env::ACCOUNTS,
          default_value = licensectl::accounts::DEFAULT_ACCOUNTS_DIR)]
    pub accounts: PathBuf,

    /// Address to bind once and hand to each privitty-edged generation (socket activation).
    #[arg(long, value_name = "ADDR:PORT", env = env::LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// Delivery URL for start-up activation. It contains a secret: prefer the variable or
    /// --license-url-file, since arguments are visible to every process.
    #[arg(long, value_name = "URL", env = env::LICENSE_URL, hide_env_values = true)]
    pub license_url: Option<String>,

    /// File whose trimmed content is the delivery URL (e.g. a Docker or Kubernetes secret).
    #[arg(long, value_name = "PATH", env = env::LICENSE_URL_FILE)]
    pub license_url_file: Option<OsString>,

    /// How long a stop waits after its signal before SIGKILL (keep it under Docker's 10s).
    #[arg(long, value_name = "DURATION", env = env::STOP_TIMEOUT, default_value = DEFAULT_STOP_TIMEOUT)]
    pub stop_timeout: String,

    /// How long start-up activation may take.
    #[arg(long, value_name = "DURATION", env = env::ACTIVATION_TIMEOUT,
          default_value = DEFAULT_ACTIVATION_TIMEOUT)]
    pub activation_timeout: String,

    /// Period of the license sync (a random jitter is added); 0 turns it off.
    #[arg(long, value_name = "DURATION", env = env::LICENSE_SYNC_INTERVAL,
          default_value = DEFAULT_SYNC_INTERVAL)]
    pub license_sync_interval: String,

    /// Period of the license-file poll (inotify is silent on NFS and some bind mounts).
    #[arg(long, value_name = "DURATION", env = env::LICENSE_POLL_INTERVAL,
          default_value = DEFAULT_POLL_INTERVAL)]
    pub license_poll_interval: String,

    /// How long a new privitty-edged generation may take to report ready.
    #[arg(long, value_name = "DURATION", env = env::READY_TIMEOUT, default_value = DEFAULT_READY_TIMEOUT)]
    pub ready_timeout: String,

    /// Keep a spare privitty-edged started ahead of the next swap (on|off).
    #[arg(long, value_name = "on|off", env = env::SPARE, default_value = DEFAULT_SPARE)]
    pub spare: String,

    /// Unexpected exits tolerated within --crash-window before giving up (exit non-zero).
    #[arg(long, value_name = "N", env = env::CRASH_LIMIT, default_value = DEFAULT_CRASH_LIMIT,
          allow_negative_numbers = true)]
    pub crash_limit: String,

    /// The window --crash-limit counts in.
    #[arg(long, value_name = "DURATION", env = env::CRASH_WINDOW, default_value = DEFAULT_CRASH_WINDOW)]
    pub crash_window: String,

    /// The command to run and its arguments [default: privitty-edged next to privitty-init, else on PATH].
    #[arg(value_name = "CMD", trailing_var_arg = true)]
    pub command: Vec<OsString>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--plain` (or run as `tini`/`dumb-init`): minimal init (no license work, no restarts).
    pub plain: bool,
    /// CMD and its arguments; never empty.
    pub command: Vec<OsString>,
    pub stop_timeout: Duration,
    /// How many `-v`.
    pub verbosity: u8,
    /// `-e`: the child's exit codes that become 0 (plain mode).
    pub remap_to_zero: Vec<i32>,
    /// `-p`: the signal the kernel sends us when our parent dies.
    pub parent_death_signal: Option<Signal>,
    pub managed: ManagedConfig,
}

/// Options only managed mode uses (validated in plain mode too, so a typo never waits for a switch).
#[derive(Debug, Clone)]
pub struct ManagedConfig {
    pub accounts: PathBuf,
    pub listen: SocketAddr,
    pub license_url: Option<licensectl::DeliveryUrl>,
    pub activation_timeout: Duration,
    /// `None` when the sync is off (`0`).
    pub sync_interval: Option<Duration>,
    pub poll_interval: Duration,
    pub ready_timeout: Duration,
    pub crash_limit: u32,
    pub crash_window: Duration,
    /// Keep a spare edged started ahead of the next swap.
    pub spare: bool,
}

/// One invalid option or variable. Never shows the license URL's TOKEN.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error(
        "{name}: {value:?} is not a duration ({source}); write it with a unit, e.g. 500ms, 8s, 2m, 24h"
    )]
    Duration {
        name: String,
        value: String,
        source: humantime::DurationError,
    },
    #[error("{name}: {value:?} must not be 0")]
    ZeroDuration { name: String, value: String },
    #[error("{name}: {value:?} is too long; the longest accepted is 100y")]
    LongDuration { name: String, value: String },
    #[error(
        "{name}: {value:?} is not a socket address ({source}); write it as ADDR:PORT, e.g. 0.0.0.0:7200"
    )]
    Listen {
        name: String,
        value: String,
        source: std::net::AddrParseError,
    },
    #[error("{name}: {value:?} is not a whole number of exits; write e.g. 5")]
    CrashLimit { name: String, value: String },
    #[error("{name}: {value:?} is neither `on` nor `off`; write one of them")]
    Switch { name: String, value: String },
    #[error(
        "both {} and {} are set; set only one of them",
        env::LICENSE_URL,
        env::LICENSE_URL_FILE
    )]
    BothLicenseUrls,
    #[error("cannot read {} ({}): {source}; check the path and its permissions", path.display(), env::LICENSE_URL_FILE)]
    LicenseUrlFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    LicenseUrl {
        origin: String,
        source: licensectl::Error,
    },
    #[error("the command is empty: give CMD after `--`, or nothing to run {DEFAULT_COMMAND}")]
    EmptyCommand,
    #[error(
        "run as {name}, privitty-init needs the command to run: {name} [OPTIONS] -- CMD [ARGS…]"
    )]
    NoCommand { name: String },
    #[error("-e {value:?}: not an exit code; give a number from 0 to 255, e.g. -e 143")]
    ExitCode { value: String },
    #[error(
        "-p {value:?}: not a signal; give its name or number, e.g. -p SIGTERM, -p SIGKILL, -p 10"
    )]
    Signal { value: String },
    #[error("{flag} applies to plain mode only: add --plain, or leave it out")]
    PlainOnly { flag: &'static str },
}

/// Why the configuration was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unknown option, missing value, `--help` or `--version` (clap prints and picks the exit code).
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// Every invalid value, listed at once.
    #[error("invalid configuration:{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

impl Config {
    /// Parses this process's arguments and environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::try_parse_from(std::env::args_os())
    }

    /// Parses the given arguments (the first is the program name: one of [`PLAIN_NAMES`] means
    /// plain mode); variables come from the process environment, as clap reads them.
    pub fn try_parse_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let plain_name = args.first().and_then(|arg0| plain_name(arg0));
        Config::validate(Cli::try_parse_from(&args)?, plain_name)
    }

    /// The log filter used when `PRIVITTY_LOG` is not set: plain mode is quiet (warnings and
    /// errors, as tini and dumb-init), managed mode tells its lifecycle; each `-v` adds a level.
    pub fn log_filter(&self) -> &'static str {
        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        let base = if self.plain { 1 } else { 2 };
        LEVELS[(base + usize::from(self.verbosity)).min(LEVELS.len() - 1)]
    }

    /// Validates every value, collecting all problems.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        Config::validate(cli, None)
    }

    /// [`Config::from_cli`] for a program run under `plain_name` (`tini`, `dumb-init`), which
    /// means plain mode and a command that must be given.
    fn validate(mut cli: Cli, plain_name: Option<&str>) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        if let Some(name) = plain_name {
            cli.plain = true;
            if cli.command.is_empty() {
                problems.push(Problem::NoCommand {
                    name: name.to_string(),
                });
            }
        }
        let mut duration =
            |var: &str, flag: &str, value: &str, zero_ok: bool| -> Option<Duration> {
                let name = origin(var, flag);
                match parse_duration(value) {
                    Ok(d) if d.is_zero() && !zero_ok => {
                        problems.push(Problem::ZeroDuration {
                            name: name.clone(),
                            value: value.to_string(),
                        });
                        None
                    }
                    Ok(d) if d > MAX_DURATION => {
                        problems.push(Problem::LongDuration {
                            name,
                            value: value.to_string(),
                        });
                        None
                    }
                    Ok(d) => Some(d),
                    Err(source) => {
                        problems.push(Problem::Duration {
                            name,
                            value: value.to_string(),
                            source,
                        });
                        None
                    }
                }
            };
        let stop_timeout = duration(env::STOP_TIMEOUT, "--stop-timeout", &cli.stop_timeout, true);
        let activation_timeout = duration(
            env::ACTIVATION_TIMEOUT,
            "--activation-timeout",
            &cli.activation_timeout,
            false,
        );
        let sync_interval = duration(
            env::LICENSE_SYNC_INTERVAL,
            "--license-sync-interval",
            &cli.license_sync_interval,
            true,
        );
        let poll_interval = duration(
            env::LICENSE_POLL_INTERVAL,
            "--license-poll-interval",
            &cli.license_poll_interval,
            false,
        );
        let ready_timeout = duration(
            env::READY_TIMEOUT,
            "--ready-timeout",
            &cli.ready_timeout,
            false,
        );
        let crash_window = duration(
            env::CRASH_WINDOW,
            "--crash-window",
            &cli.crash_window,
            false,
        );

        let listen = match cli.listen.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(source) => {
                problems.push(Problem::Listen {
                    name: origin(env::LISTEN, "--listen"),
                    value: cli.listen.clone(),
                    source,
                });
                None
            }
        };
        let crash_limit = match cli.crash_limit.trim().parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(Problem::CrashLimit {
                    name: origin(env::CRASH_LIMIT, "--crash-limit"),
                    value: cli.crash_limit.clone(),
                });
                None
            }
        };
        let spare = match cli.spare.trim().to_ascii_lowercase().as_str() {
            "on" => true,
            "off" => false,
            _ => {
                problems.push(Problem::Switch {
                    name: origin(env::SPARE, "--spare"),
                    value: cli.spare.clone(),
                });
                false
            }
        };
        let license_url = license_url(
            cli.license_url.as_deref(),
            // Empty means unset, as for the URL itself (compose files pass `${VAR:-}`).
            cli.license_url_file
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(Path::new),
            &mut problems,
        );
        let command = if cli.command.is_empty() {
            vec![default_command()]
        } else {
            cli.command
        };
        if command[0].is_empty() {
            problems.push(Problem::EmptyCommand);
        }
        let mut remap_to_zero = Vec::new();
        for value in &cli.remap_exit {
            match value.trim().parse::<u8>() {
                Ok(code) => remap_to_zero.push(i32::from(code)),
                Err(_) => problems.push(Problem::ExitCode {
                    value: value.clone(),
                }),
            }
        }
        if !cli.remap_exit.is_empty() && !cli.plain {
            problems.push(Problem::PlainOnly { flag: "-e" });
        }
        let parent_death_signal = cli.parent_death_signal.as_deref().and_then(|value| {
            let sig = parse_signal(value);
            if sig.is_none() {
                problems.push(Problem::Signal {
                    value: value.to_string(),
                });
            }
            sig
        });

        match (
            stop_timeout,
            activation_timeout,
            sync_interval,
            poll_interval,
            ready_timeout,
            crash_window,
            listen,
            crash_limit,
        ) {
            (
                Some(stop_timeout),
                Some(activation_timeout),
                Some(sync_interval),
                Some(poll_interval),
                Some(ready_timeout),
                Some(crash_window),
                Some(listen),
                Some(crash_limit),
            ) if problems.is_empty() => Ok(Config {
                plain: cli.plain,
                command,
                stop_timeout,
                verbosity: cli.verbose,
                remap_to_zero,
                parent_death_signal,
                managed: ManagedConfig {
                    accounts: cli.accounts,
                    listen,
                    license_url,
                    activation_timeout,
                    sync_interval: (!sync_interval.is_zero()).then_some(sync_interval),
                    poll_interval,
                    ready_timeout,
                    crash_limit,
                    crash_window,
                    spare,
                },
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

/// The plain-mode name we were run under (`tini`, `dumb-init`), if any.
fn plain_name(arg0: &OsString) -> Option<&'static str> {
    let name = Path::new(arg0).file_name()?;
    PLAIN_NAMES.into_iter().find(|n| name == *n)
}

/// A signal by name (`SIGTERM`, `TERM`, any case) or number.
fn parse_signal(value: &str) -> Option<Signal> {
    let value = value.trim();
    if let Ok(n) = value.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = value.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

/// How a problem names its value: both ways it can be given.
fn origin(var: &str, flag: &str) -> String {
    format!("{var} ({flag})")
}

fn license_url(
    inline: Option<&str>,
    file: Option<&Path>,
    problems: &mut Vec<Problem>,
) -> Option<licensectl::DeliveryUrl> {
    let inline = inline.map(str::trim).filter(|s| !s.is_empty());
    let (text, origin) = match (inline, file) {
        (Some(_), Some(_)) => {
            problems.push(Problem::BothLicenseUrls);
            return None;
        }
        (None, None) => return None,
        (Some(text), None) => (text.to_string(), env::LICENSE_URL.to_string()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => (
                text.trim().to_string(),
                format!("{} ({})", env::LICENSE_URL_FILE, path.display()),
            ),
            Err(source) => {
                problems.push(Problem::LicenseUrlFile {
                    path: path.to_path_buf(),
                    source,
                });
                return None;
            }
        },
    };
    match licensectl::DeliveryUrl::parse(&text) {
        Ok(url) => Some(url),
        Err(source) => {
            problems.push(Problem::LicenseUrl { origin, source });
            None
        }
    }
}

/// `privitty-edged` next to our own executable (the image's layout), else the bare name for a
/// PATH search at spawn time.
fn default_command() -> OsString {
    beside_us(DEFAULT_COMMAND)
}

/// [`LICENSE_CLI`] next to our own executable, else the bare name for a PATH search.
pub fn license_cli() -> OsString {
    beside_us(LICENSE_CLI)
}

/// `name` next to our own executable (resolved: in the image, privitty-init's directory holds
/// every name), else `name` alone, for a PATH search at spawn time.
fn beside_us(name: &str) -> OsString {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|candidate| candidate.is_file())
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::try_parse_from(std::iter::once("privitty-init").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_trailing_command() {
        let c = parse(&["--plain", "--", "sleep", "-x", "1"]).unwrap();
        assert!(c.plain);
        assert_eq!(c.command, vec!["sleep", "-x", "1"]);
        let c = parse(&["--plain", "ls", "-l"]).unwrap();
        assert_eq!(c.command, vec!["ls", "-l"]);
        // Everything after the command is its own, a `--` included.
        let c = parse(&["--plain", "sh", "-c", "x", "--", "-e"]).unwrap();
        assert_eq!(c.command, vec!["sh", "-c", "x", "--", "-e"]);
    }

    #[test]
    fn default_command_is_edged() {
        let c = parse(&["--stop-timeout", "1s"]).unwrap();
        assert!(
            c.command[0].to_string_lossy().ends_with(DEFAULT_COMMAND),
            "{:?}",
            c.command
        );
        assert_eq!(c.command.len(), 1);
    }

    #[test]
    fn durations_and_zero_sync() {
        let c = parse(&[
            "--stop-timeout",
            "250ms",
            "--license-sync-interval",
            "0",
            "--crash-limit",
            "3",
            "--listen",
            "0.0.0.0:7300",
        ])
        .unwrap();
        assert_eq!(c.stop_timeout, Duration::from_millis(250));
        assert_eq!(c.managed.sync_interval, None);
        assert_eq!(c.managed.crash_limit, 3);
        assert_eq!(c.managed.listen, "0.0.0.0:7300".parse().unwrap());
    }

    #[test]
    fn the_spare_is_on_unless_switched_off_and_anything_else_is_refused() {
        assert!(parse(&[]).unwrap().managed.spare);
        assert!(!parse(&["--spare", "off"]).unwrap().managed.spare);
        assert!(parse(&["--spare", " ON "]).unwrap().managed.spare);
        let err = parse(&["--spare", "maybe"]).unwrap_err().to_string();
        assert!(
            err.contains("PRIVITTY_SPARE (--spare): \"maybe\" is neither `on` nor `off`"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(&[
            "--stop-timeout",
            "8",
            "--listen",
            "nowhere",
            "--crash-limit",
            "-1",
            "--ready-timeout",
            "0",
            "--",
            "x",
        ])
        .unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(problems.len(), 4, "{err}");
        let text = err.to_string();
        for needle in [
            env::STOP_TIMEOUT,
            env::LISTEN,
            env::CRASH_LIMIT,
            env::READY_TIMEOUT,
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
    }

    #[test]
    fn durations_too_long_to_schedule_are_refused() {
        // Far enough that adding it to the clock overflows: PID 1 would panic at the first stop.
        let err = parse(&[
            "--stop-timeout",
            "500000000000y",
            "--ready-timeout",
            "500000000000y",
            "--crash-window",
            "500000000000y",
            "--license-sync-interval",
            "500000000000y",
            "--",
            "x",
        ])
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            env::STOP_TIMEOUT,
            env::READY_TIMEOUT,
            env::CRASH_WINDOW,
            env::LICENSE_SYNC_INTERVAL,
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
        let c = parse(&["--stop-timeout", "100y", "--", "x"]).unwrap();
        assert_eq!(c.stop_timeout, MAX_DURATION);
    }

    #[test]
    fn empty_license_url_settings_mean_unset() {
        // Compose files pass `PRIVITTY_LICENSE_URL_FILE: ${URL_FILE:-}`: empty, not a usage error.
        let c = parse(&["--license-url-file", "", "--license-url", " ", "--", "x"]).unwrap();
        assert!(c.managed.license_url.is_none());
    }

    #[test]
    fn unreadable_license_url_file_is_a_problem() {
        let err =
            parse(&["--license-url-file", "/nonexistent/privitty/url", "--", "x"]).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/privitty/url"),
            "{err}"
        );
    }

    #[test]
    fn tini_options_are_accepted_in_plain_mode() {
        let c = parse(&[
            "--plain", "-s", "-g", "-e", "143", "-e130", "-p", "SIGUSR1", "-vv", "--", "sleep",
            "-e", "1",
        ])
        .unwrap();
        assert_eq!(c.remap_to_zero, vec![143, 130]);
        assert_eq!(c.parent_death_signal, Some(Signal::SIGUSR1));
        assert_eq!(c.verbosity, 2);
        // Options after the command are the command's.
        assert_eq!(c.command, vec!["sleep", "-e", "1"]);
        // tini's own spelling needs no `--`.
        let c = parse(&["--plain", "-sg", "sleep", "1"]).unwrap();
        assert_eq!(c.command, vec!["sleep", "1"]);
        for (value, sig) in [
            ("SIGKILL", Signal::SIGKILL),
            ("term", Signal::SIGTERM),
            ("10", Signal::SIGUSR1),
        ] {
            let c = parse(&["--plain", "-p", value, "--", "x"]).unwrap();
            assert_eq!(c.parent_death_signal, Some(sig), "{value}");
        }
    }

    #[test]
    fn bad_tini_option_values_are_reported_with_the_rest() {
        let err = parse(&[
            "-e",
            "256",
            "-e",
            "x",
            "-p",
            "SIGNOPE",
            "--stop-timeout",
            "8",
            "--",
            "x",
        ])
        .unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        // Two bad codes, the signal, -e outside plain mode, the duration.
        assert_eq!(problems.len(), 5, "{err}");
        let text = err.to_string();
        for needle in ["\"256\"", "SIGNOPE", "plain mode only", env::STOP_TIMEOUT] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
    }

    #[test]
    fn run_as_tini_or_dumb_init_means_plain_mode() {
        for name in ["tini", "/usr/bin/tini", "dumb-init", "/sbin/dumb-init"] {
            let c = Config::try_parse_from([name, "-e", "143", "--", "sleep", "1"]).unwrap();
            assert!(c.plain, "{name}");
            assert_eq!(c.command, vec!["sleep", "1"]);
            assert_eq!(c.remap_to_zero, vec![143]);
            let err = Config::try_parse_from([name]).unwrap_err();
            assert!(
                err.to_string().contains("needs the command"),
                "{name}: {err}"
            );
        }
        let c = Config::try_parse_from(["/usr/bin/privitty-init", "--", "x"]).unwrap();
        assert!(!c.plain);
        let c = Config::try_parse_from(["tini-static", "--", "x"]).unwrap();
        assert!(!c.plain, "only the exact names switch modes");
    }

    #[test]
    fn plain_mode_is_quiet_unless_asked() {
        let level = |args: &[&str]| parse(args).unwrap().log_filter();
        assert_eq!(level(&["--plain", "--", "x"]), "warn");
        assert_eq!(level(&["--plain", "-v", "--", "x"]), "info");
        assert_eq!(level(&["--plain", "-vv", "--", "x"]), "debug");
        assert_eq!(level(&["--plain", "-vvvvv", "--", "x"]), "trace");
        assert_eq!(level(&["--", "x"]), "info");
        assert_eq!(level(&["--verbose", "--", "x"]), "debug");
    }

    /// The variables `--help` lists (one per flag) are the registry's, with its defaults.
    #[test]
    fn help_variables_match_the_env_registry() {
        let cmd = <Cli as clap::CommandFactory>::command();
        let problems = privitty_base::env::flag_differences("init", &cmd, &[]);
        assert!(
            problems.is_empty(),
            "privitty-init's flags and licensectl/base/src/env.rs differ:\n  {}",
            problems.join("\n  ")
        );
    }

    #[test]
    fn help_documents_signals_and_exit_codes() {
        let err = parse(&["--help"]).unwrap_err();
        let ConfigError::Usage(e) = err else {
            panic!("expected clap help")
        };
        let text = e.to_string();
        for needle in [
            "PRIVITTY_STOP_TIMEOUT",
            "PRIVITTY_LICENSE_URL_FILE",
            "PRIVITTY_CRASH_WINDOW",
            "SIGKILL",
            "127",
            "126",
            "128+N",
            "TTIN",
        ] {
            assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
        }
    }
}
