//! The `privitty-license-server` command line: `serve` and the `admin …` subcommands. Owns argument
//! parsing and what the commands print on stdout. Must not: exit the process (main maps errors).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use super::admin::AdminClient;
use super::server::{CreateLicense, FaultKind, FaultRequest, IssueOffline, Prepared, ServeOptions};
use super::tls::DEFAULT_NAMES;

/// Reference license server for Privitty Edge (license protocol v1), for local tries and tests.
#[derive(Debug, Parser)]
#[command(name = "privitty-license-server", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve protocol v1 and the admin API; prints `listening <base URL>` as the first stdout line.
    Serve {
        /// Keys, state, admin token, CA; created on first start.
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Serve HTTPS with a certificate from a CA kept in the state dir (`ca.pem`).
        #[arg(long)]
        tls: bool,
        /// Names (DNS names or IP addresses) the server certificate covers.
        #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_NAMES.iter().map(|s| s.to_string()))]
        tls_names: Vec<String>,
        /// Base of the delivery URLs `create-license` prints, when devices reach this server by
        /// another address (e.g. `https://host.docker.internal:7300`). Default: the listening URL.
        #[arg(long)]
        public_url: Option<String>,
    },
    /// Administer a running server (reads `server-url` and `admin-token` from the state dir).
    Admin {
        #[arg(long)]
        state_dir: PathBuf,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a license; prints its delivery URL `<base>/v1/license/<TOKEN>`.
    CreateLicense {
        #[arg(long, default_value_t = 1)]
        seats: u32,
        /// Entitlement from now (humantime: `30d`, `2s`).
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        entitlement: Duration,
        /// How long a license stays `active` after each sync.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        sync_window: Duration,
        /// Grace period after the entitlement ends.
        #[arg(long, default_value = "14d", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// How long a license stays usable without any sync.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        offline_allowance: Duration,
        #[arg(long)]
        customer: Option<String>,
        /// A feature name (repeatable).
        #[arg(long = "feature")]
        features: Vec<String>,
        /// Print `{"license_id","delivery_url","entitlement_end"}` instead of the URL alone.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a license (by license id or TOKEN): activation and sync answer `410 revoked`.
    Revoke { license: String },
    /// List licenses with seat use.
    ListLicenses,
    /// List every device activation (seat), active or released.
    ListActivations {
        #[arg(long)]
        json: bool,
    },
    /// Print a license JWT for a device without an activation (`act` absent): file-drop provisioning.
    IssueOffline {
        /// License id or TOKEN.
        #[arg(long)]
        license: String,
        /// The device's UUID (its `device.uuid`).
        #[arg(long)]
        device: String,
    },
    /// Make the next protocol calls misbehave (admin calls are never affected). Replaces any pending
    /// fault; `--count 0` clears it.
    Fault {
        kind: FaultName,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Seconds for the `Retry-After` header of `429`.
        #[arg(long, default_value_t = 1)]
        retry_after: u64,
        /// Milliseconds for `delay`.
        #[arg(long, default_value_t = 500)]
        ms: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FaultName {
    /// 500 with an error body.
    #[value(name = "500")]
    Status500,
    /// 429 with `Retry-After`.
    #[value(name = "429")]
    Status429,
    /// Answer normally after `--ms`.
    Delay,
    /// 200 whose body is not JSON.
    #[value(name = "garbage-200")]
    Garbage200,
    /// A JWT signed by a key nobody trusts.
    #[value(name = "wrong-key")]
    WrongKey,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            state_dir,
            listen,
            tls,
            tls_names,
            public_url,
        } => {
            let opts = ServeOptions {
                state_dir,
                listen,
                tls_names: tls.then_some(tls_names),
                public_url,
            };
            let shutdown = shutdown_signal()?;
            let prepared = Prepared::bind(&opts).await?;
            {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                writeln!(out, "listening {}", prepared.base_url).context("writing to stdout")?;
                out.flush().context("writing to stdout")?;
            }
            prepared.serve(shutdown).await?;
            Ok(())
        }
        Command::Admin { state_dir, command } => {
            let client = AdminClient::from_state_dir(&state_dir)?;
            admin(&client, command).await
        }
    }
}

/// Resolves on SIGTERM or SIGINT. Installed before serving, so a signal that arrives right after
/// the `listening` line is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn secs(d: Duration) -> u64 {
    // A sub-second entitlement would round to nothing: round up so `--entitlement 500ms` is 1 s.
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

async fn admin(client: &AdminClient, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::CreateLicense {
            seats,
            entitlement,
            sync_window,
            grace,
            offline_allowance,
            customer,
            features,
            json,
        } => {
            let created = client
                .create_license(&CreateLicense {
                    seats,
                    entitlement: secs(entitlement),
                    sync_window: secs(sync_window),
                    grace: secs(grace),
                    offline_allowance: secs(offline_allowance),
                    customer,
                    features,
                })
                .await?;
            if json {
                println!("{created}");
            } else {
                println!("{}", created["delivery_url"].as_str().unwrap_or_default());
            }
        }
        AdminCommand::Revoke { license } => {
            let v = client.revoke(&license).await?;
            println!("revoked {}", v["license_id"].as_str().unwrap_or_default());
        }
        AdminCommand::ListLicenses => {
            let v = client.licenses().await?;
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        }
        AdminCommand::ListActivations { json } => {
            let v = client.activations().await?;
            if json {
                println!("{v}");
            } else {
                println!("LICENSE\tDEVICE\tACTIVATION\tSTATE\tDEVICE NAME\tLAST SYNC");
                for a in v.as_array().into_iter().flatten() {
                    let s = |k: &str| a[k].as_str().map_or("-".to_string(), str::to_string);
                    let last = a["last_sync_at"]
                        .as_i64()
                        .map_or("-".to_string(), |t| t.to_string());
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{last}",
                        s("license_id"),
                        s("device_uuid"),
                        s("activation_id"),
                        s("state"),
                        s("device_name"),
                    );
                }
            }
        }
        AdminCommand::IssueOffline { license, device } => {
            let jwt = client
                .issue_offline(&IssueOffline { license, device })
                .await?;
            println!("{jwt}");
        }
        AdminCommand::Fault {
            kind,
            count,
            retry_after,
            ms,
        } => {
            let kind = match kind {
                FaultName::Status500 => FaultKind::Status500,
                FaultName::Status429 => FaultKind::TooManyRequests { retry_after },
                FaultName::Delay => FaultKind::Delay { ms },
                FaultName::Garbage200 => FaultKind::Garbage200,
                FaultName::WrongKey => FaultKind::WrongKey,
            };
            client.fault(&FaultRequest { kind, count }).await?;
        }
    }
    Ok(())
}
