//! privitty-load: an HTTP/1.1 load generator for privitty-edged's benchmarks, and the minimal hyper
//! server they compare against.
//!
//! `privitty-load run --url URL [--connections N] [--duration 5s] [--body JSON]` keeps N keep-alive
//! connections busy (each sends its next request when the previous answer arrived) and prints one
//! line: throughput and p50/p99 latency. `privitty-load baseline-server [--listen ADDR]` serves a
//! constant `/health` with the same hyper set-up and no application logic. `privitty-load
//! make-license --accounts DIR --pubkey-out FILE [--state active]` writes a test license (for the
//! gate micro-benchmark). Only for measuring: it never runs in production.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use privitty_tests::edged_stack::{LicenseState, TestKey, install_license};

#[derive(Debug, Parser)]
#[command(
    name = "privitty-load",
    about = "Load generator and baseline server for privitty-edged benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Load a URL with N concurrent keep-alive connections and print throughput and latency.
    Run {
        /// e.g. http://127.0.0.1:7200/health or http://127.0.0.1:7200/rpc
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, default_value = "5s")]
        duration: humantime::Duration,
        /// POST this body (JSON) instead of a GET.
        #[arg(long)]
        body: Option<String>,
        /// Printed first on the result line.
        #[arg(long, default_value = "load")]
        label: String,
        /// Send `Authorization: Bearer <TOKEN>` with every request (read from this file).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Requests per second in all, spread evenly over the connections (default: each
        /// connection sends back to back). Latency then counts from when a request was due, so
        /// time spent waiting behind a slow answer is measured too.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Serve a constant /health (the baseline: hyper alone, same runtime set-up as edged).
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Write device.uuid and a privitty.lic signed by a fresh test key; the key's PEM goes to --pubkey-out.
    MakeLicense {
        #[arg(long)]
        accounts: PathBuf,
        #[arg(long)]
        pubkey_out: PathBuf,
        /// active, grace_period or expired
        #[arg(long, default_value = "active")]
        state: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Run {
            url,
            connections,
            duration,
            body,
            label,
            token_file,
            rate,
        } => {
            let token = match token_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            rt.block_on(run(
                url,
                connections.max(1),
                duration.into(),
                body,
                label,
                token,
                rate,
            ))
        }
        Cmd::BaselineServer { listen } => rt.block_on(baseline(listen)),
        Cmd::MakeLicense {
            accounts,
            pubkey_out,
            state,
        } => {
            let state = match state.as_str() {
                "active" => LicenseState::Active,
                "grace_period" => LicenseState::GracePeriod,
                "expired" => LicenseState::Expired,
                other => bail!("unknown --state {other:?}: use active, grace_period or expired"),
            };
            let key = TestKey::generate();
            install_license(&accounts, &key, state);
            std::fs::write(&pubkey_out, key.public_pem())
                .with_context(|| format!("writing {}", pubkey_out.display()))?;
            Ok(())
        }
    }
}

struct Target {
    addr: String,
    path: String,
    host: String,
    /// `Authorization` header value, when the run sends a token.
    auth: Option<String>,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs"))?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    Ok(Target {
        addr: host.to_string(),
        path,
        host: host.to_string(),
        auth: None,
    })
}

async fn run(
    url: String,
    connections: usize,
    duration: Duration,
    body: Option<String>,
    label: String,
    token: Option<String>,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    // Each connection's interval between two requests, when paced.
    let interval = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(connections as f64 / r));
    let mut target = parse_url(&url)?;
    target.auth = token.map(|t| format!("Bearer {t}"));
    let target = std::sync::Arc::new(target);
    let body = body.map(Bytes::from);
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let target = target.clone();
        let body = body.clone();
        tasks.spawn(async move { one_connection(&target, body, deadline, interval).await });
    }
    let mut latencies: Vec<u32> = Vec::new();
    let (mut non_2xx, mut socket_errors) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let tally = r??;
        latencies.extend(tally.latencies);
        non_2xx += tally.non_2xx;
        socket_errors += tally.socket_errors;
    }
    latencies.sort_unstable();
    let n = latencies.len();
    let pct = |p: f64| {
        latencies
            .get(((n as f64 * p) as usize).min(n.saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{label} conns={connections} requests={n} rps={:.0} p50_us={} p99_us={} max_us={} errors={non_2xx} socket_errors={socket_errors}",
        n as f64 / duration.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or(0),
    );
    Ok(())
}

/// What one connection saw.
#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<u32>,
    /// Answers that were not 2xx.
    non_2xx: u64,
    /// Requests that got no answer (the connection broke); the client then reconnects.
    socket_errors: u64,
}

/// One keep-alive connection sending requests back to back until `deadline`; a broken
/// connection is counted and replaced.
async fn one_connection(
    target: &Target,
    body: Option<Bytes>,
    deadline: Instant,
    interval: Option<Duration>,
) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        latencies: Vec::with_capacity(100_000),
        ..Tally::default()
    };
    // When paced: the time the next request is due (a random phase spreads the connections).
    let mut due = interval.map(|i| Instant::now() + i.mul_f64(fastrand::f64()));
    'connect: while Instant::now() < deadline {
        let stream = tokio::net::TcpStream::connect(&target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        while Instant::now() < deadline {
            let mut req = match &body {
                Some(b) => Request::post(&target.path)
                    .header("host", &target.host)
                    .header("content-type", "application/json")
                    .body(Full::new(b.clone()))?,
                None => Request::get(&target.path)
                    .header("host", &target.host)
                    .body(Full::new(Bytes::new()))?,
            };
            if let Some(auth) = &target.auth {
                req.headers_mut().insert("authorization", auth.parse()?);
            }
            if let (Some(at), Some(i)) = (due.as_mut(), interval) {
                tokio::time::sleep_until((*at).into()).await;
                *at += i;
            }
            // Paced: from when the request was due, so waiting behind a slow answer counts.
            let start = due
                .zip(interval)
                .map_or_else(Instant::now, |(next, i)| next - i);
            let answer = async {
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let ok = resp.status().is_success();
                resp.into_body().collect().await?;
                Ok::<bool, hyper::Error>(ok)
            }
            .await;
            match answer {
                Ok(ok) => {
                    tally.latencies.push(start.elapsed().as_micros() as u32);
                    if !ok {
                        tally.non_2xx += 1;
                    }
                }
                Err(_) => {
                    tally.socket_errors += 1;
                    continue 'connect;
                }
            }
        }
    }
    Ok(tally)
}

async fn baseline(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("listening addr={}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(
                            br#"{"status":"ok","service":"baseline","version":"0.0.0"}"#,
                        )))
                        .expect("response"),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
