//! A small process with scripted behaviour, run under privitty-init by the PID-1 tests and the
//! init benchmark: exit with a code, die of a signal, record signals, spawn orphans, report its own
//! state. Reports are lines appended to a file (one `write` each, so processes can share a file).
//! It must not sleep to wait: it blocks on signals or pipes.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

#[derive(Debug, Parser)]
#[command(
    name = "privitty-testproc",
    about = "scripted child process for the privitty-init tests"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Exit with CODE.
    Exit { code: i32 },
    /// Die of signal SIG (a number), with its default action.
    KillSelf { signal: i32 },
    /// Block every signal and append "<role> <SIGNAME>" to FILE for each one received (realtime
    /// ones as "SIGRTMIN+n").
    RecordSignals {
        file: PathBuf,
        /// Exit 0 after recording this signal (a name such as SIGTERM); default: never.
        #[arg(long)]
        exit_on: Option<String>,
        /// Also start this many recorders in our process group (roles child-0, child-1, …).
        #[arg(long, default_value_t = 0)]
        group: usize,
        /// exit-on for the group members; default: the same as ours; "none" never exits.
        #[arg(long)]
        group_exit_on: Option<String>,
        #[arg(long, default_value = "main")]
        role: String,
    },
    /// Start COUNT processes that become orphans and exit all at once; append
    /// "orphans COUNT released_ns=T" to FILE once their parent has exited (T: wall clock when it
    /// let them go), then record signals like record-signals (exits on SIGTERM).
    Orphans { count: usize, file: PathBuf },
    /// Benchmark driver: watch the children of init PID until the orphans announced in FILE are
    /// all reaped; prints the reaping time and rate.
    ReapDriver { pid: i32, file: PathBuf },
    /// (internal) Start COUNT leaves holding a pipe to us, then exit so they are orphaned.
    OrphanParent { count: usize },
    /// (internal) Exit when stdin reaches EOF (when the parent is gone).
    OrphanLeaf,
    /// Append our pid, process group, signal mask, ignored signals, open fds and LISTEN_*
    /// variables to FILE, then wait for SIGTERM.
    Report { file: PathBuf },
    /// Block every signal, then exec COMMAND (which starts with them blocked).
    BlockedExec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Benchmark child: for each SIGUSR1 write one byte to FIFO.
    LatencyChild { fifo: PathBuf },
    /// Benchmark driver: SAMPLES times, SIGUSR1 to PID and time until a byte arrives on FIFO;
    /// prints p50/p99/max in microseconds.
    LatencyDriver {
        pid: i32,
        fifo: PathBuf,
        #[arg(long, default_value_t = 2000)]
        samples: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Exit { code } => std::process::exit(code),
        Mode::KillSelf { signal } => kill_self(signal),
        Mode::RecordSignals {
            file,
            exit_on,
            group,
            group_exit_on,
            role,
        } => {
            let exit_on = parse_signal_opt(exit_on.as_deref())?;
            let blocked = block_all();
            let group_exit_on = group_exit_on.or_else(|| exit_on.map(|s| s.as_str().to_string()));
            for i in 0..group {
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.arg("record-signals")
                    .arg(&file)
                    .arg("--role")
                    .arg(format!("child-{i}"));
                if let Some(s) = &group_exit_on {
                    cmd.arg("--exit-on").arg(s);
                }
                cmd.spawn().context("spawning a group member")?;
            }
            record(&file, &role, blocked, exit_on)
        }
        Mode::Orphans { count, file } => {
            let blocked = block_all();
            let out = Command::new(std::env::current_exe()?)
                .arg("orphan-parent")
                .arg(count.to_string())
                .stderr(Stdio::inherit())
                .output()
                .context("running orphan-parent")?;
            if !out.status.success() {
                bail!("orphan-parent failed: {}", out.status);
            }
            let released = String::from_utf8_lossy(&out.stdout).trim().to_string();
            append(&file, &format!("orphans {count} released_ns={released}"))?;
            record(&file, "main", blocked, Some(Signal::SIGTERM))
        }
        Mode::OrphanParent { count } => {
            let mut pipes = Vec::with_capacity(count);
            for _ in 0..count {
                let child = Command::new(std::env::current_exe()?)
                    .arg("orphan-leaf")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("spawning an orphan leaf")?;
                pipes.push(child.stdin);
            }
            println!("{}", now_ns());
            // Exiting closes the write ends: each leaf sees EOF and exits, now an orphan.
            std::process::exit(0)
        }
        Mode::OrphanLeaf => {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            Ok(())
        }
        Mode::Report { file } => {
            let blocked = block_all();
            report(&file)?;
            record(&file, "main", blocked, Some(Signal::SIGTERM))
        }
        Mode::LatencyChild { fifo } => {
            let set = block_all();
            let mut out = OpenOptions::new().write(true).open(&fifo)?;
            loop {
                if set.wait()? == Signal::SIGUSR1 {
                    out.write_all(b"x")?;
                }
            }
        }
        Mode::BlockedExec { command } => {
            block_all();
            // nix's execvp keeps the mask (std's Command would reset it).
            let argv: Vec<std::ffi::CString> = command
                .iter()
                .map(|a| std::ffi::CString::new(a.as_encoded_bytes()))
                .collect::<Result<_, _>>()?;
            let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
            bail!("exec {:?}: {err}", command[0])
        }
        Mode::ReapDriver { pid, file } => reap_driver(Pid::from_raw(pid), &file),
        Mode::LatencyDriver { pid, fifo, samples } => {
            latency_driver(Pid::from_raw(pid), &fifo, samples)
        }
    }
}

/// Blocks every signal in this (single-threaded) process, so they queue for `sigwait`.
fn block_all() -> SigSet {
    let set = SigSet::all();
    set.thread_block().expect("blocking signals");
    set
}

fn parse_signal_opt(name: Option<&str>) -> Result<Option<Signal>> {
    match name {
        None | Some("none") => Ok(None),
        Some(n) => n
            .parse::<Signal>()
            .map(Some)
            .with_context(|| format!("unknown signal {n:?}")),
    }
}

/// Appends one line with a single write, so lines from several processes never interleave.
fn append(file: &Path, line: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    f.write_all(format!("{line}\n").as_bytes())?;
    Ok(())
}

fn record(file: &Path, role: &str, set: SigSet, exit_on: Option<Signal>) -> Result<()> {
    // A signalfd rather than sigwait: it reports realtime signals, which nix's `Signal` cannot name.
    let signals = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).context("signalfd")?;
    let pid = nix::unistd::getpid();
    let pgid = nix::unistd::getpgrp();
    append(file, &format!("{role} ready pid={pid} pgid={pgid}"))?;
    loop {
        let Some(info) = signals.read_signal()? else {
            continue;
        };
        let signo = info.ssi_signo as i32;
        let sig = Signal::try_from(signo).ok();
        if sig == Some(Signal::SIGCHLD) {
            continue;
        }
        let name = match sig {
            Some(sig) => sig.as_str().to_string(),
            None => format!("SIGRTMIN+{}", signo - nix::libc::SIGRTMIN()),
        };
        append(file, &format!("{role} {name}"))?;
        if sig.is_some() && sig == exit_on {
            return Ok(());
        }
    }
}

fn kill_self(signal: i32) -> Result<()> {
    let sig = Signal::try_from(signal).with_context(|| format!("bad signal {signal}"))?;
    // No core files from the core-dumping signals.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)?;
    nix::sys::signal::raise(sig)?;
    // Rust's own SIGSEGV/SIGBUS handler (stack-overflow detection) restores the default action
    // and returns for a signal it did not cause: the second one is delivered with the default.
    nix::sys::signal::raise(sig)?;
    // Signals whose default is to stop or be ignored end up here.
    bail!("still alive after {}", sig.as_str())
}

fn report(file: &Path) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let mut fds: Vec<i32> = Vec::new();
    let dir = std::fs::read_dir("/proc/self/fd")?;
    for entry in dir.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // The directory being listed is itself an open fd; leave it out.
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("/proc/") {
            fds.push(fd);
        }
    }
    fds.sort();
    let fds: Vec<String> = fds.iter().map(i32::to_string).collect();
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "-".into());
    append(
        file,
        &format!(
            "report pid={} pgid={} sigblk={} sigign={} fds={} listen_fds={} listen_pid={}",
            nix::unistd::getpid(),
            nix::unistd::getpgrp(),
            field("SigBlk:"),
            field("SigIgn:"),
            fds.join(","),
            env("LISTEN_FDS"),
            env("LISTEN_PID"),
        ),
    )
}

fn latency_driver(pid: Pid, fifo: &Path, samples: usize) -> Result<()> {
    let mut input = OpenOptions::new().read(true).open(fifo)?;
    let mut byte = [0u8; 1];
    let mut micros = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        nix::sys::signal::kill(pid, Signal::SIGUSR1)?;
        input.read_exact(&mut byte)?;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
    println!(
        "samples={} p50_us={:.1} p99_us={:.1} max_us={:.1}",
        micros.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

/// Wall-clock nanoseconds: comparable between processes on one machine.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Number of children of `pid`, from each of its threads' `children` file.
fn child_count(pid: Pid) -> Result<usize> {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = std::fs::read_to_string(task?.path().join("children")).unwrap_or_default();
        n += text.split_whitespace().count();
    }
    Ok(n)
}

fn reap_driver(pid: Pid, file: &Path) -> Result<()> {
    // Polls continuously (with a short pause) so the moment the last orphan is gone is seen
    // within the pause, whenever the orphans are released.
    let pause = std::time::Duration::from_micros(100);
    loop {
        let done_at = now_ns();
        let children = child_count(pid)?;
        let announced = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("orphans ").map(str::to_string));
        if let Some(line) = announced
            && children == 1
        {
            let (count, released) = line
                .split_once(" released_ns=")
                .context("malformed orphans line")?;
            let count: f64 = count.parse()?;
            let released: u128 = released.parse()?;
            let secs = done_at.saturating_sub(released) as f64 / 1e9;
            println!(
                "orphans={count} reaped_in_ms={:.2} orphans_per_s={:.0}",
                secs * 1e3,
                count / secs
            );
            return Ok(());
        }
        std::thread::sleep(pause);
    }
}
