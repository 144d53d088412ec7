//! The `privitty-edge` / `licensectl` command line.
//!
//! Owns: argument parsing, the output formats (`license status` prints the status word alone on its
//! first line) and the mapping of errors to the documented exit codes. Builds the one tokio
//! current-thread runtime the CLI uses. Must not: print the TOKEN or the device secret.
//!
//! Two spellings, one program: `privitty-edge license status|activate|sync|deactivate` (the
//! product's documented form; the bare `privitty-edge status` is refused with a pointer to it, so
//! there is one way to write it in the product's scripts), and `licensectl status|activate|sync|
//! deactivate` (the license tool's own name takes the license commands directly; `licensectl
//! license …` works too). Both run the same code, with the same output and exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};

use crate::keys::KeySources;
use crate::{
    AccountsDir, ActivateRequest, DeliveryUrl, Error, ErrorKind, StatusReport, TrustedKeys,
};

/// Exit codes (documented in the README; scripts and tests depend on them).
pub mod exit {
    pub const OK: u8 = 0;
    pub const INTERNAL: u8 = 1;
    pub const USAGE: u8 = 2;
    /// `license status`: the license does not allow gated calls (expired, no_license).
    pub const NOT_USABLE: u8 = 3;
    pub const LOCAL_FILES: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const UNREACHABLE: u8 = 6;
    pub const STATE: u8 = 7;
}

/// The line a failed `license activate|sync` adds to standard error after the error when the server
/// asked to wait (`Retry-After`): `retry after: <whole seconds>s`. privitty-init runs these
/// commands as children and honours it.
pub const RETRY_AFTER_PREFIX: &str = "retry after: ";

/// The name the CLI runs under, which decides how the license commands are spelt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// `privitty-edge license status|activate|sync|deactivate` (the documented spelling).
    PrivittyEdge,
    /// `licensectl status|activate|sync|deactivate` (and `licensectl license …`).
    Licensectl,
}

/// The exit code for a library error.
pub fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Usage => exit::USAGE,
        ErrorKind::LocalFiles => exit::LOCAL_FILES,
        ErrorKind::Refused => exit::REFUSED,
        ErrorKind::Unreachable => exit::UNREACHABLE,
        ErrorKind::State => exit::STATE,
    }
}

const AFTER_HELP: &str = "Environment: PRIVITTY_ACCOUNTS (accounts directory), PRIVITTY_LICENSE_PUBKEY \
    (extra trusted license keys: PEM text or a path), SSL_CERT_FILE (extra CA bundle for the license \
    server), HTTPS_PROXY/NO_PROXY, PRIVITTY_PROFILE (device name on activation), PRIVITTY_LOG, \
    PRIVITTY_LOG_FORMAT.\n\nExit codes: 0 ok; 1 internal error; 2 usage error; 3 license not usable \
    (status); 4 local file error; 5 refused by the license server; 6 license server unreachable or \
    transient failure; 7 local state does not allow it (not activated).";

#[derive(Debug, Parser)]
#[command(
    name = "privitty-edge",
    version,
    about = "Privitty Edge command line: license management, the API token, the viewer fingerprint and the container health check",
    after_help = AFTER_HELP
)]
struct Cli {
    /// The accounts (data) directory holding the license files [default: $PRIVITTY_ACCOUNTS, else
    /// /var/lib/privitty].
    // Not clap's `env`: an empty PRIVITTY_ACCOUNTS means unset here, as in every other binary.
    #[arg(long, global = true, value_name = "DIR")]
    accounts: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `licensectl`: the license commands at the top level, then everything `privitty-edge` has.
#[derive(Debug, Parser)]
#[command(
    name = "licensectl",
    version,
    about = "Privitty Edge license tool: `licensectl status|activate|sync|deactivate` (the same \
             program as `privitty-edge license …`), the API token and the container health check",
    after_help = AFTER_HELP
)]
struct LicensectlCli {
    /// The accounts (data) directory holding the license files [default: $PRIVITTY_ACCOUNTS, else
    /// /var/lib/privitty].
    #[arg(long, global = true, value_name = "DIR")]
    accounts: Option<PathBuf>,
    #[command(subcommand)]
    command: LicensectlCommand,
}

#[derive(Debug, Subcommand)]
enum LicensectlCommand {
    #[command(flatten)]
    License(LicenseCommand),
    #[command(flatten)]
    Other(Command),
}

impl From<LicensectlCli> for Cli {
    fn from(c: LicensectlCli) -> Cli {
        Cli {
            accounts: c.accounts,
            command: match c.command {
                LicensectlCommand::License(command) => Command::License { command },
                LicensectlCommand::Other(command) => command,
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage this device's license (works on the files in the accounts directory).
    License {
        #[command(subcommand)]
        command: LicenseCommand,
    },
    /// Print the API token that `/rpc` and `/events` require (`Authorization: Bearer <token>`).
    /// The token comes from PRIVITTY_API_TOKEN, else the file PRIVITTY_API_TOKEN_FILE names, else
    /// <accounts>/api.token (created at first boot, mode 0600).
    ApiToken {
        /// Replace <accounts>/api.token with a new token and print it. The running daemon takes it
        /// within a second, without a restart; the old token stops working.
        #[arg(long)]
        rotate: bool,
    },
    /// Print the device fingerprint a local viewer sends to `POST /auth`
    /// (`{"device_fingerprint":"<this>"}`): SHA-256 over the primary MAC address and the machine
    /// id (or, without a machine id, the device identity), stored at first boot in
    /// <accounts>/device.fingerprint and never recomputed.
    DeviceFingerprint,
    /// Check the local daemon: exit 0 when GET /health answers 200 with status ok, else 1.
    Health {
        /// Base URL of privitty-edged [default: from PRIVITTY_LISTEN (an unspecified address such
        /// as 0.0.0.0 means loopback), else http://127.0.0.1:7200].
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LicenseCommand {
    /// Activate this device with a delivery URL (https://<host>/v1/license/<TOKEN>); `-` reads it
    /// from standard input. Safe to repeat: a device never takes a second seat.
    Activate {
        #[arg(value_name = "URL")]
        url: String,
    },
    /// Show the license status: the status word alone on the first line, then details.
    /// Exits 0 when the license allows sends (active, grace_period), 3 when not.
    Status {
        /// Print the full report as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Refresh the license from the server and report usage.
    Sync,
    /// Print this device's identity (`device.uuid`), creating it when absent. privitty-init runs
    /// it at first boot, so that `license status` shows the identity a license issued offline
    /// must name.
    #[command(hide = true)]
    DeviceId,
    /// Release this device's seat on the server; the license file is kept for inspection as privitty.lic.revoked.
    Deactivate {
        /// Only mark the device deactivated locally, without contacting the server.
        #[arg(long)]
        local_only: bool,
    },
}

/// Runs the `privitty-edge` CLI and returns the process exit code (documented in the README).
pub fn main() -> ExitCode {
    main_as(Name::PrivittyEdge)
}

/// Runs the CLI under `name` (see [`Name`]) with this process's arguments.
pub fn main_as(name: Name) -> ExitCode {
    let cli = match parse(name, std::env::args_os()) {
        Ok(cli) => cli,
        // clap exits 0 for --help/--version.
        Err(e) if !e.use_stderr() => e.exit(),
        // Usage errors (exit 2) echo unexpected arguments: a delivery URL typed in the wrong place
        // must not print its TOKEN.
        Err(e) => {
            eprint!("{}", crate::url::redact_in(&e.render().to_string()));
            if let Some(tip) = bare_license_command_tip(name, &e) {
                eprintln!("{tip}");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(exit::USAGE));
        }
    };
    privitty_base::logging::init("warn");
    ExitCode::from(run(cli))
}

fn parse(
    name: Name,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<Cli, clap::Error> {
    match name {
        Name::PrivittyEdge => Cli::try_parse_from(args),
        Name::Licensectl => LicensectlCli::try_parse_from(args).map(Cli::from),
    }
}

/// `privitty-edge status` (the `licensectl` spelling) points at `privitty-edge license status`.
fn bare_license_command_tip(name: Name, e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind as ClapKind};
    if name != Name::PrivittyEdge || e.kind() != ClapKind::InvalidSubcommand {
        return None;
    }
    let Some(ContextValue::String(given)) = e.get(ContextKind::InvalidSubcommand) else {
        return None;
    };
    ["status", "activate", "sync", "deactivate"]
        .contains(&given.as_str())
        .then(|| {
            format!(
                "the license commands are `privitty-edge license {given}` (or `licensectl {given}`)"
            )
        })
}

fn run(cli: Cli) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INTERNAL;
        }
    };
    let dir = cli
        .accounts
        .map_or_else(AccountsDir::from_env_or_default, AccountsDir::new);
    let result = match cli.command {
        Command::Health { url } => {
            let url = url.unwrap_or_else(|| {
                privitty_base::health::url_for_listen(
                    std::env::var(privitty_base::env::LISTEN).ok().as_deref(),
                )
            });
            return health(&runtime, &url);
        }
        Command::License { command } => runtime.block_on(license(&dir, command)),
        Command::ApiToken { rotate } => return api_token(dir.path(), rotate),
        Command::DeviceFingerprint => device_fingerprint(&dir),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Lib(e)) => {
            eprintln!("error: {e}");
            if let Some(after) = e.retry_after() {
                // Whole seconds, rounded up: waiting less than asked would only be refused again.
                let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                eprintln!("{RETRY_AFTER_PREFIX}{secs}s");
            }
            exit_code(e.kind())
        }
        Err(Failure::Internal(msg)) => {
            eprintln!("error: {msg}");
            exit::INTERNAL
        }
    }
}

enum Failure {
    Lib(Error),
    Internal(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Lib(e)
    }
}

fn io_failure(e: std::io::Error) -> Failure {
    Failure::Internal(format!("cannot write to standard output: {e}"))
}

fn health(runtime: &tokio::runtime::Runtime, url: &str) -> u8 {
    match runtime.block_on(privitty_base::health::check_health(url)) {
        Ok(()) => {
            println!("ok");
            exit::OK
        }
        Err(problem) => {
            eprintln!("unhealthy: {problem}");
            exit::INTERNAL
        }
    }
}

/// `api-token [--rotate]`: prints the token alone on one line (for `$(…)` in scripts).
fn api_token(accounts: &std::path::Path, rotate: bool) -> u8 {
    use crate::api_token::{self, ApiTokenError, Source};
    let result = Source::from_env(accounts).and_then(|source| {
        if rotate {
            api_token::rotate(&source, accounts)
        } else {
            let env = std::env::var(api_token::ENV_TOKEN).ok();
            api_token::current(&source, env.as_deref(), accounts)
        }
    });
    match result {
        Ok(token) => {
            println!("{token}");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                ApiTokenError::BothSet | ApiTokenError::Invalid { .. } => exit::USAGE,
                ApiTokenError::NotRotatable(_) => exit::STATE,
                _ => exit::LOCAL_FILES,
            }
        }
    }
}

/// `device-fingerprint`: prints the fingerprint alone on one line (for `$(…)` in scripts).
fn device_fingerprint(dir: &AccountsDir) -> Result<u8, Failure> {
    let stored = crate::fingerprint::ensure(dir, &crate::fingerprint::HostSources::system())?;
    println!("{}", stored.fingerprint);
    Ok(exit::OK)
}

fn keys() -> Result<TrustedKeys, Error> {
    TrustedKeys::load(&KeySources::from_env())
}

async fn license(dir: &AccountsDir, command: LicenseCommand) -> Result<u8, Failure> {
    let mut out = std::io::stdout().lock();
    match command {
        LicenseCommand::Activate { url } => {
            let url = read_url(&url)?;
            let keys = keys()?;
            let done = crate::activate(dir, &url, &keys, &ActivateRequest::from_env()).await?;
            let seat = if done.new_seat {
                "new seat"
            } else {
                "this device already held a seat"
            };
            writeln!(out, "activated ({seat})").map_err(io_failure)?;
            writeln!(out, "license server: {}", url.redacted()).map_err(io_failure)?;
            writeln!(out, "activation id: {}", done.activation_id).map_err(io_failure)?;
            writeln!(out, "license jti: {}", done.license.jti).map_err(io_failure)?;
            writeln!(
                out,
                "in the container the daemon picks the license up by itself; a standalone privitty-edged \
                 loads it at its next start"
            )
                .map_err(io_failure)?;
            Ok(exit::OK)
        }
        LicenseCommand::Status { json } => {
            let keys = keys()?;
            let report = crate::status::report(dir, &keys, SystemTime::now())?;
            if json {
                let text = serde_json::to_string_pretty(&report)
                    .map_err(|e| Failure::Internal(e.to_string()))?;
                writeln!(out, "{text}").map_err(io_failure)?;
            } else {
                out.write_all(format_status(&report).as_bytes())
                    .map_err(io_failure)?;
            }
            Ok(if report.status.allows_gated() {
                exit::OK
            } else {
                exit::NOT_USABLE
            })
        }
        LicenseCommand::Sync => {
            let keys = keys()?;
            let done = crate::sync(dir, &keys).await?;
            let what = if done.license_changed {
                "license updated"
            } else {
                "license unchanged"
            };
            writeln!(
                out,
                "synced ({what}; {} usage report(s) acknowledged)",
                done.acked_reports
            )
            .map_err(io_failure)?;
            writeln!(out, "license jti: {}", done.license.jti).map_err(io_failure)?;
            Ok(exit::OK)
        }
        LicenseCommand::DeviceId => {
            let id = dir.ensure_device_uuid()?;
            writeln!(out, "{id}").map_err(io_failure)?;
            Ok(exit::OK)
        }
        LicenseCommand::Deactivate { local_only } => {
            crate::deactivate(dir, local_only).await?;
            if local_only {
                writeln!(out, "deactivated locally (the seat is still held on the server until an administrator frees it)")
            } else {
                writeln!(out, "deactivated (the seat was released on the server; privitty.lic is kept for inspection as privitty.lic.revoked)")
            }
            .map_err(io_failure)?;
            Ok(exit::OK)
        }
    }
}

/// The URL argument; `-` reads it from standard input so it stays out of the process list.
fn read_url(arg: &str) -> Result<DeliveryUrl, Error> {
    if arg == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Error::InvalidUrl {
                shown: "(standard input)".into(),
                problem: format!("cannot read it: {e}"),
            })?;
        return DeliveryUrl::parse(&line);
    }
    DeliveryUrl::parse(arg)
}

/// The text form of `license status`: the status word alone, then `key: value` lines (`-` when
/// unknown).
pub fn format_status(r: &StatusReport) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let features = if r.features.is_empty() {
        "-".to_string()
    } else {
        r.features.join(", ")
    };
    let lines = [
        ("license id", dash(&r.license_id)),
        ("customer", dash(&r.customer)),
        ("features", features),
        (
            "reason",
            r.reason.map_or_else(|| "-".to_string(), |x| x.to_string()),
        ),
        ("expires", dash(&r.expires_at)),
        ("grace ends", dash(&r.grace_ends_at)),
        ("device uuid", dash(&r.device_uuid)),
        ("activation id", dash(&r.activation_id)),
        ("license server", dash(&r.license_server)),
        ("last sync ok", dash(&r.last_sync_ok_at)),
        ("last sync error", dash(&r.last_sync_error)),
        ("last activation error", dash(&r.last_activation_error)),
    ];
    let mut text = format!("{}\n", r.status);
    for (k, v) in lines {
        text.push_str(&format!("{k}: {v}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
        LicensectlCli::command().debug_assert();
    }

    /// The variables the `--help` text names are settings of the registry that this CLI reads.
    #[test]
    fn help_variables_are_in_the_env_registry() {
        // The help of every command and subcommand (`health --help` names PRIVITTY_LISTEN).
        fn all_help(cmd: &mut clap::Command, out: &mut String) {
            out.push_str(&cmd.render_long_help().to_string());
            for sub in cmd.get_subcommands_mut() {
                all_help(sub, out);
            }
        }
        let mut help = String::new();
        let mut cmd = Cli::command();
        cmd.build();
        all_help(&mut cmd, &mut help);
        assert!(help.contains("PRIVITTY_LISTEN"), "{help}");
        let named: Vec<&str> = help
            .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .filter(|w| {
                w.starts_with("PRIVITTY_") || w.ends_with("_PROXY") || *w == "SSL_CERT_FILE"
            })
            .collect();
        assert!(named.len() >= 5, "{named:?}\n{help}");
        for name in named {
            let var = privitty_base::env::setting(name);
            assert!(
                var.is_some_and(|v| v.is_read_by("CLI") || v.is_read_by("activation")),
                "--help names {name}, which licensectl/base/src/env.rs VARS does not list as read by \
                 the CLI: {var:?}"
            );
        }
    }

    fn parsed(name: Name, args: &[&str]) -> Result<Cli, clap::Error> {
        let argv0 = match name {
            Name::PrivittyEdge => "privitty-edge",
            Name::Licensectl => "licensectl",
        };
        parse(
            name,
            std::iter::once(argv0)
                .chain(args.iter().copied())
                .map(Into::into),
        )
    }

    #[test]
    fn licensectl_takes_the_license_commands_directly_and_privitty_edge_does_not() {
        for args in [
            &["status", "--json"][..],
            &["license", "status", "--json"][..],
        ] {
            let cli = parsed(Name::Licensectl, args).unwrap();
            assert!(
                matches!(
                    cli.command,
                    Command::License {
                        command: LicenseCommand::Status { json: true }
                    }
                ),
                "{args:?}: {cli:?}"
            );
        }
        let cli = parsed(Name::Licensectl, &["--accounts", "/a", "activate", "-"]).unwrap();
        assert_eq!(cli.accounts, Some(PathBuf::from("/a")));
        assert!(matches!(
            cli.command,
            Command::License {
                command: LicenseCommand::Activate { .. }
            }
        ));
        for args in [
            &["sync"][..],
            &["deactivate", "--local-only"],
            &["api-token"],
            &["health"],
        ] {
            assert!(parsed(Name::Licensectl, args).is_ok(), "{args:?}");
        }
        assert!(parsed(Name::PrivittyEdge, &["license", "sync"]).is_ok());
        for bare in ["status", "activate", "sync", "deactivate"] {
            let e = parsed(Name::PrivittyEdge, &[bare]).unwrap_err();
            let tip = bare_license_command_tip(Name::PrivittyEdge, &e).expect("a tip");
            assert!(
                tip.contains(&format!("privitty-edge license {bare}")),
                "{tip}"
            );
        }
        let e = parsed(Name::PrivittyEdge, &["frobnicate"]).unwrap_err();
        assert_eq!(bare_license_command_tip(Name::PrivittyEdge, &e), None);
    }

    #[test]
    fn exit_codes_match_the_documented_table() {
        assert_eq!(exit_code(ErrorKind::Usage), 2);
        assert_eq!(exit_code(ErrorKind::LocalFiles), 4);
        assert_eq!(exit_code(ErrorKind::Refused), 5);
        assert_eq!(exit_code(ErrorKind::Unreachable), 6);
        assert_eq!(exit_code(ErrorKind::State), 7);
    }

    #[test]
    fn accounts_flag_works_before_and_after_the_subcommand() {
        let a = Cli::try_parse_from(["privitty-edge", "--accounts", "/a", "license", "status"])
            .unwrap();
        assert_eq!(a.accounts, Some(PathBuf::from("/a")));
        let b = Cli::try_parse_from([
            "privitty-edge",
            "license",
            "status",
            "--json",
            "--accounts",
            "/b",
        ])
        .unwrap();
        assert_eq!(b.accounts, Some(PathBuf::from("/b")));
        assert!(Cli::try_parse_from(["privitty-edge", "license", "frobnicate"]).is_err());
    }

    #[test]
    fn status_text_starts_with_the_word_alone() {
        let r = StatusReport {
            status: crate::Status::NoLicense,
            reason: Some(crate::Reason::NotActivated),
            license_id: None,
            customer: None,
            features: vec![],
            expires_at: None,
            grace_ends_at: None,
            device_uuid: None,
            activation_id: None,
            license_server: None,
            last_sync_ok_at: None,
            last_sync_error: None,
            last_activation_error: None,
        };
        let text = format_status(&r);
        assert_eq!(text.lines().next(), Some("no_license"));
        assert!(text.contains("\nreason: not_activated\n"), "{text}");
        assert!(text.contains("\nlicense server: -\n"), "{text}");
    }
}
