//! privitty-load: an HTTP/1.1 load generator for privitty-edged's benchmarks, and the minimal hyper
//! server they compare against.
//!
//! `privitty-load run --url URL [--connections N] [--duration 5s] [--body JSON] [--rate R]` keeps
//! N keep-alive connections busy (each sends its next request when the previous answer arrived,
//! or, with `--rate`, when it is due) and prints one line: throughput and p50/p99 latency.
//! `privitty-load baseline-server [--listen ADDR]` serves a constant `/health` (and answers any
//! POST the same way) with the same hyper set-up and no application logic. `privitty-load
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
        /// time spent waiting behind a slow answer is measured too. A paced request leaves when it
        /// is due, to the microsecond (timerfd), not at the runtime timer's next millisecond
        /// tick: that wait would be counted as the server's latency.
        #[arg(long)]
        rate: Option<f64>,
        /// Paced runs: write each request slower than --slow-over to FILE, a line each:
        /// `<unix time it was due, µs> <latency, µs>` (to line slow requests up with a log).
        #[arg(long, value_name = "FILE", requires = "rate")]
        slow_log: Option<PathBuf>,
        #[arg(long, default_value = "2ms")]
        slow_over: humantime::Duration,
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
            slow_log,
            slow_over,
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
            let load = Load {
                connections: connections.max(1),
                duration: duration.into(),
                body,
                label,
                token,
            };
            match rate.filter(|r| *r > 0.0) {
                Some(rate) => rt.block_on(run_paced(&url, &load, rate, slow_log, slow_over.into())),
                None => rt.block_on(run(&url, &load)),
            }
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

/// What to load, for either mode.
struct Load {
    connections: usize,
    duration: Duration,
    body: Option<String>,
    label: String,
    token: Option<String>,
}

/// Closed loop: each connection sends its next request when the previous answer arrived.
async fn run(url: &str, load: &Load) -> anyhow::Result<()> {
    let mut target = parse_url(url)?;
    target.auth = load.token.as_ref().map(|t| format!("Bearer {t}"));
    let target = std::sync::Arc::new(target);
    let body = load.body.clone().map(Bytes::from);
    let deadline = Instant::now() + load.duration;
    let ticks = cpu_ticks();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..load.connections {
        let target = target.clone();
        let body = body.clone();
        tasks.spawn(async move { one_connection(&target, body, deadline).await });
    }
    let mut all = Tally::default();
    while let Some(r) = tasks.join_next().await {
        all.add(r??);
    }
    all.print(load, cpu_share(ticks, cpu_ticks()));
    Ok(())
}

/// Paced: `rate` requests per second in all, spread evenly over the connections.
async fn run_paced(
    url: &str,
    load: &Load,
    rate: f64,
    slow_log: Option<PathBuf>,
    slow_over: Duration,
) -> anyhow::Result<()> {
    let mut target = parse_url(url)?;
    target.auth = load.token.as_ref().map(|t| format!("Bearer {t}"));
    let request = std::sync::Arc::new(raw_request(&target, load.body.as_deref()));
    let interval = Duration::from_secs_f64(load.connections as f64 / rate);
    let began = Instant::now();
    let began_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let deadline = began + load.duration;
    let ticks = cpu_ticks();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..load.connections {
        let addr = target.addr.clone();
        let request = request.clone();
        tasks.spawn(async move {
            paced_connection(&addr, &request, deadline, interval, slow_over).await
        });
    }
    let mut all = Tally::default();
    let mut slow = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (tally, s) = r??;
        all.add(tally);
        slow.extend(s);
    }
    all.print(load, cpu_share(ticks, cpu_ticks()));
    if let Some(path) = slow_log {
        slow.sort_unstable();
        let mut text = String::new();
        for (due, latency) in slow {
            let unix = began_unix + due.duration_since(began);
            text.push_str(&format!("{} {latency}\n", unix.as_micros()));
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The bytes of one request (the same for every request of a run).
fn raw_request(target: &Target, body: Option<&str>) -> Vec<u8> {
    let mut head = match body {
        Some(b) => format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            target.path,
            target.host,
            b.len()
        ),
        None => format!("GET {} HTTP/1.1\r\nhost: {}\r\n", target.path, target.host),
    };
    if let Some(auth) = &target.auth {
        head.push_str(&format!("authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default().as_bytes());
    bytes
}

/// A sleep to the microsecond: the runtime's own timer rounds up to its next millisecond tick,
/// and that wait would be counted as the server's latency.
struct PreciseSleep(tokio::io::unix::AsyncFd<Timer>);

/// A timerfd, as the raw descriptor the runtime's reactor registers.
struct Timer(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl PreciseSleep {
    fn new() -> anyhow::Result<Self> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let timer = Timer(TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?);
        // SAFETY: the AsyncFd owns the TimerFd, which owns its descriptor: it stays open, and the
        // same, until the AsyncFd is dropped.
        #[allow(unsafe_code)]
        let fd =
            unsafe { tokio::io::unix::AsyncFd::register(timer) }.map_err(|e| e.into_parts().1)?;
        Ok(Self(fd))
    }

    async fn until(&self, at: Instant) -> anyhow::Result<()> {
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        let Some(wait) = at
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(());
        };
        self.0.get_ref().0.set(
            Expiration::OneShot(nix::sys::time::TimeSpec::from_duration(wait)),
            TimerSetTimeFlags::empty(),
        )?;
        loop {
            let mut ready = self.0.readable().await?;
            // Reads the expiry count; EAGAIN (not expired yet) clears the readiness.
            match ready.try_io(|fd| {
                let mut count = [0u8; 8];
                nix::unistd::read(&fd.get_ref().0, &mut count).map_err(std::io::Error::from)
            }) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

/// One paced keep-alive connection: waits until the next request is due, sends it, reads the
/// whole answer. A broken connection is counted and replaced.
async fn paced_connection(
    addr: &str,
    request: &[u8],
    deadline: Instant,
    interval: Duration,
    slow_over: Duration,
) -> anyhow::Result<(Tally, Vec<(Instant, u32)>)> {
    use tokio::io::AsyncWriteExt;
    let sleep = PreciseSleep::new()?;
    let mut tally = Tally {
        latencies: Vec::with_capacity(200_000),
        ..Tally::default()
    };
    let mut slow = Vec::new();
    // A random phase spreads the connections over the interval.
    let mut due = Instant::now() + interval.mul_f64(fastrand::f64());
    let mut buf = Vec::with_capacity(4096);
    'connect: while due < deadline {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        while due < deadline {
            sleep.until(due).await?;
            let answer = async {
                stream.write_all(request).await?;
                read_answer(&mut stream, &mut buf).await
            };
            // Never hang: an answer that does not come in 10 s is a socket error.
            let answer = tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 10 s")));
            // From when it was due: waiting behind a slow answer counts.
            let latency = due.elapsed().as_micros() as u32;
            let at = due;
            due += interval;
            match answer {
                Ok(status) => {
                    tally.latencies.push(latency);
                    if Duration::from_micros(latency.into()) > slow_over {
                        slow.push((at, latency));
                    }
                    if !(200..300).contains(&status) {
                        tally.non_2xx += 1;
                    }
                }
                Err(e) => {
                    tally.socket_error(format!("{e:#}"));
                    continue 'connect;
                }
            }
        }
    }
    Ok((tally, slow))
}

/// Reads one whole answer (head and a `content-length` body) and returns its status. A
/// connection that closes, an answer in another framing, or bytes beyond it are errors.
async fn read_answer(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    loop {
        if stream.read_buf(buf).await? == 0 {
            bail!("the connection closed");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = resp.parse(buf)? else {
            continue;
        };
        let status = resp.code.unwrap_or(0);
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .context("an answer without content-length")?;
        let total = head + length;
        while buf.len() < total {
            if stream.read_buf(buf).await? == 0 {
                bail!("the connection closed in an answer");
            }
        }
        if buf.len() > total {
            bail!("bytes beyond the answer");
        }
        return Ok(status);
    }
}

/// What one connection saw.
#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<u32>,
    /// Answers that were not 2xx.
    non_2xx: u64,
    /// Requests that got no answer (the connection broke); the client then reconnects.
    socket_errors: u64,
    /// What the first of them was, for the result line.
    first_socket_error: Option<String>,
}

impl Tally {
    fn socket_error(&mut self, what: String) {
        self.socket_errors += 1;
        self.first_socket_error.get_or_insert(what);
    }

    fn add(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.non_2xx += other.non_2xx;
        self.socket_errors += other.socket_errors;
        if self.first_socket_error.is_none() {
            self.first_socket_error = other.first_socket_error;
        }
    }

    /// The result line; `cpu`: the machine's CPU over the run ([`cpu_share`]).
    fn print(mut self, load: &Load, cpu: Option<CpuShare>) {
        self.latencies.sort_unstable();
        let latencies = &self.latencies;
        let n = latencies.len();
        let pct = |p: f64| {
            latencies
                .get(((n as f64 * p) as usize).min(n.saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{} conns={} requests={n} rps={:.0} p50_us={} p99_us={} max_us={} errors={} socket_errors={}{}{}",
            load.label,
            load.connections,
            n as f64 / load.duration.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            latencies.last().copied().unwrap_or(0),
            self.non_2xx,
            self.socket_errors,
            cpu.map(|c| format!(" cpu_busy={:.0}% steal={:.1}%", c.busy, c.steal))
                .unwrap_or_default(),
            self.first_socket_error
                .map(|e| format!(" first_socket_error={e:?}"))
                .unwrap_or_default(),
        );
    }
}

/// The machine's CPU time counters (`/proc/stat`'s first line), in ticks.
#[derive(Clone, Copy, Debug)]
struct CpuTicks {
    /// All but idle and iowait: user, nice, system, the interrupts (loopback traffic is mostly
    /// softirq time), and steal.
    busy: u64,
    /// Time the hypervisor gave to others while this machine's CPUs had work: a latency spike no
    /// process here caused.
    steal: u64,
    total: u64,
}

/// Percent of the machine's CPU (all cores) between two [`cpu_ticks`] readings.
#[derive(Clone, Copy, Debug)]
struct CpuShare {
    busy: f64,
    steal: f64,
}

fn cpu_ticks() -> Option<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some(CpuTicks {
        busy: total - idle,
        steal: *fields.get(7)?,
        total,
    })
}

fn cpu_share(before: Option<CpuTicks>, after: Option<CpuTicks>) -> Option<CpuShare> {
    let (a, b) = (before?, after?);
    let total = b.total.checked_sub(a.total).filter(|t| *t > 0)? as f64;
    Some(CpuShare {
        busy: b.busy.saturating_sub(a.busy) as f64 * 100.0 / total,
        steal: b.steal.saturating_sub(a.steal) as f64 * 100.0 / total,
    })
}

/// One keep-alive connection sending requests back to back until `deadline`; a broken
/// connection is counted and replaced.
async fn one_connection(
    target: &Target,
    body: Option<Bytes>,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        latencies: Vec::with_capacity(100_000),
        ..Tally::default()
    };
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
            let start = Instant::now();
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
                Err(e) => {
                    tally.socket_error(e.to_string());
                    continue 'connect;
                }
            }
        }
    }
    Ok(tally)
}

async fn baseline(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // One write: a reader of the log never sees the line without its address.
    let line = format!("listening addr={}\n", listener.local_addr()?);
    std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes())?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                // A POST's body is read, as a server that looks at it would.
                let _ = req.into_body().collect().await;
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
