//! Managed mode: start-up activation, the license watch, generation swaps over a socket the
//! supervisor keeps, crash restarts and periodic sync, around `privitty-edged`.
//!
//! This module is the driver: it owns the listening socket, the per-generation notify sockets, the
//! timers and the background tasks, turns what happens into [`machine::Input`]s and executes the
//! [`machine::Action`]s. Must not make lifecycle decisions itself (they are in [`machine`], pure and
//! unit-tested) and must not wait for children (the reaper in `pid1` reports every exit).
//!
//! ```text
//!  start ──► activate (if URL and no privitty.lic; ≤ ACTIVATION_TIMEOUT, then in the background)
//!        ──► gen 1: spawn(LISTEN_FDS=3, NOTIFY_SOCKET) ──READY=1──► serving
//!  license changed / SIGHUP / sync ──► gen N+1 spawned (loads license, waits for the lock)
//!        ──► SIGTERM gen N (stops accepting, drains, stops its engine, exits, frees the lock)
//!        ──► gen N+1 takes the lock, starts its engine, READY=1 ──► serving
//!  unexpected exit ──► restart after backoff; CRASH_LIMIT exits in CRASH_WINDOW ──► exit 70
//!  SIGTERM/INT/QUIT ──► SIGTERM every generation, SIGKILL after STOP_TIMEOUT, exit with its code
//! ```

pub mod activation;
pub mod backoff;
pub mod listener;
pub mod machine;
pub mod readiness;
pub mod sync;
pub mod watch;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::Instant;

use licensectl::keys::KeySources;
use licensectl::{AccountsDir, LicenseIdentity, LoadedLicense, Reason, TrustedKeys};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{Config, exit};
use crate::pid1::{self, Event, Pid1, SpawnSpec};
use backoff::Backoff;
use machine::{Action, Input, Machine, Settings, Timer};

pub use machine::EXIT_CRASH_LOOP;

/// What background tasks tell the driver.
#[derive(Debug)]
enum Note {
    Ready { generation: machine::Gen },
    Activation(activation::Outcome),
    LicenseMaybeChanged,
}

/// Runs managed mode until the container stops; returns the process exit code.
pub async fn run(config: &Config, pid1: &mut Pid1) -> i32 {
    let m = &config.managed;
    let dir = AccountsDir::new(&m.accounts);
    if let Err(e) = std::fs::create_dir_all(dir.path()) {
        tracing::error!(
            dir = %dir.path().display(),
            error = %e,
            "cannot create the accounts directory; check the volume and its permissions"
        );
        return exit::FAILURE;
    }
    // First boot stores the device identity, licensed or not, so that an operator can read it from
    // `license status` and have a license issued offline for this device (file-drop provisioning).
    // In the background: it may wait for the license lock held by a `license …` command, and
    // start-up (and a stop) must not wait with it.
    let identity_dir = dir.clone();
    drop(tokio::task::spawn_blocking(move || {
        if let Err(e) = identity_dir.ensure_device_uuid() {
            tracing::error!(
                error = %e,
                "cannot store the device identity; gated calls stay unavailable until this is fixed"
            );
        }
    }));
    let keys = match TrustedKeys::load(&KeySources::from_env()) {
        Ok(keys) => keys,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the trusted license keys");
            return exit::CONFIG;
        }
    };
    let listener = match listener::bind(m.listen) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return exit::FAILURE;
        }
    };
    tracing::info!(
        listen = %listener.local_addr().map_or_else(|_| m.listen.to_string(), |a| a.to_string()),
        accounts = %dir.path().display(),
        "managed mode"
    );

    let runtime_dir = match readiness::runtime_dir(dir.path()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a private directory for the readiness sockets");
            return exit::FAILURE;
        }
    };

    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let (watch_tx, watch_rx) = mpsc::unbounded_channel();
    let _watch = watch::LicenseWatch::start(dir.path().to_path_buf(), m.poll_interval, watch_tx);

    let mut background: Vec<JoinHandle<()>> = Vec::new();
    if let Some(interval) = m.sync_interval {
        let (tx, mut rx) = mpsc::unbounded_channel();
        background.push(tokio::spawn(sync::run(
            dir.clone(),
            keys.clone(),
            interval,
            tx,
        )));
        let notes = notes_tx.clone();
        background.push(tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let _ = notes.send(Note::LicenseMaybeChanged);
            }
        }));
    }

    let mut driver = Driver {
        config,
        dir,
        keys,
        listener,
        machine: Machine::new(Settings {
            ready_timeout: m.ready_timeout,
            stop_timeout: config.stop_timeout,
            crash_limit: m.crash_limit,
            crash_window: m.crash_window,
            backoff: Backoff::default(),
        }),
        notes_tx,
        timers: Vec::new(),
        readiness: HashMap::new(),
        last_check: None,
        runtime_dir,
        activation_deadline: None,
    };

    let mut first = VecDeque::new();
    match &m.license_url {
        Some(url) if !driver.dir.license_path().exists() => {
            tracing::info!(
                url = %url,
                timeout = %humantime::format_duration(m.activation_timeout),
                "no license yet: activating before serving"
            );
            let (tx, mut rx) = mpsc::unbounded_channel();
            background.push(tokio::spawn(activation::run(
                driver.dir.clone(),
                url.clone(),
                driver.keys.clone(),
                tx,
            )));
            let notes = driver.notes_tx.clone();
            background.push(tokio::spawn(async move {
                if let Some(outcome) = rx.recv().await {
                    let _ = notes.send(Note::Activation(outcome));
                }
            }));
            driver.activation_deadline = Some(Instant::now() + m.activation_timeout);
        }
        Some(_) => {
            tracing::info!("privitty.lic is present: start-up activation skipped");
            first.push_back(Input::ActivationFinished);
        }
        None => first.push_back(Input::ActivationFinished),
    }
    if driver.activation_deadline.is_none()
        && std::fs::symlink_metadata(driver.dir.license_path()).is_ok()
    {
        // Says now why a license file that is present would not be used (the first generation
        // reuses this check), rather than only at the next change.
        driver.check(false);
    }

    let code = driver.event_loop(pid1, first, notes_rx, watch_rx).await;
    for task in background {
        task.abort();
    }
    let _ = std::fs::remove_dir_all(&driver.runtime_dir);
    code
}

struct Driver<'a> {
    config: &'a Config,
    dir: AccountsDir,
    keys: TrustedKeys,
    listener: TcpListener,
    machine: Machine,
    notes_tx: mpsc::UnboundedSender<Note>,
    timers: Vec<(Instant, Timer)>,
    /// The notify-socket reader of each running generation, by pid.
    readiness: HashMap<Pid, JoinHandle<()>>,
    /// The files' fingerprint and the license found at the last check.
    last_check: Option<(watch::Fingerprint, Option<LicenseIdentity>)>,
    /// Where the per-generation notify sockets live.
    runtime_dir: std::path::PathBuf,
    /// While start-up activation may still hold back the first generation.
    activation_deadline: Option<Instant>,
}

impl Driver<'_> {
    async fn event_loop(
        &mut self,
        pid1: &mut Pid1,
        first: VecDeque<Input>,
        mut notes: mpsc::UnboundedReceiver<Note>,
        mut watch: mpsc::UnboundedReceiver<()>,
    ) -> i32 {
        let mut inputs = first;
        loop {
            while let Some(input) = inputs.pop_front() {
                if let Input::Exited { pid, .. } = &input
                    && let Some(task) = self.readiness.remove(pid)
                {
                    task.abort();
                }
                for action in self.machine.step(Instant::now(), input) {
                    if let Some(code) = self.execute(pid1, action, &mut inputs).await {
                        return code;
                    }
                }
            }
            let next_timer = self
                .timers
                .iter()
                .map(|(at, _)| *at)
                .chain(self.activation_deadline)
                .min();
            tokio::select! {
                event = pid1.next() => inputs.push_back(match event {
                    Event::Signal(signal) => Input::Signal(signal),
                    Event::Realtime(signal) => Input::Realtime(signal),
                    Event::Exited { pid, status } => Input::Exited { pid, status },
                }),
                Some(note) = notes.recv() => match note {
                    Note::Ready { generation } => inputs.push_back(Input::Ready { generation }),
                    Note::Activation(outcome) => {
                        if self.activation_deadline.take().is_some() {
                            inputs.push_back(Input::ActivationFinished);
                        } else if matches!(
                            outcome,
                            activation::Outcome::Activated { .. } | activation::Outcome::Superseded
                        ) {
                            inputs.push_back(self.check(false));
                        }
                    }
                    Note::LicenseMaybeChanged => inputs.push_back(self.check(false)),
                },
                Some(()) = watch.recv() => inputs.push_back(self.check(false)),
                _ = sleep_until(next_timer), if next_timer.is_some() => {
                    let now = Instant::now();
                    if self.activation_deadline.is_some_and(|at| at <= now) {
                        self.activation_deadline = None;
                        tracing::warn!(
                            timeout = %humantime::format_duration(self.config.managed.activation_timeout),
                            "license activation did not finish in time: starting unlicensed \
                             (read-only calls work) and retrying in the background"
                        );
                        inputs.push_back(Input::ActivationFinished);
                    }
                    let (due, later): (Vec<_>, Vec<_>) =
                        self.timers.drain(..).partition(|(at, _)| *at <= now);
                    self.timers = later;
                    inputs.extend(due.into_iter().map(|(_, t)| Input::Timer(t)));
                }
            }
        }
    }

    /// Executes one action; `Some(code)` ends managed mode with that exit code.
    async fn execute(
        &mut self,
        pid1: &mut Pid1,
        action: Action,
        inputs: &mut VecDeque<Input>,
    ) -> Option<i32> {
        match action {
            // Queued before the next `pid1` event is even read: a child that exits at once has
            // its pid known to the machine before its `Exited` arrives.
            Action::Spawn { generation } => inputs.push_back(self.spawn(generation)),
            Action::Signal { pid, signal } => {
                signal_generation(pid, signal);
                if signal == Signal::SIGTERM {
                    // A generation stopped by a forwarded SIGTSTP acts on SIGTERM only once
                    // continued; otherwise it would hold the data-dir lock until the kill deadline.
                    signal_generation(pid, Signal::SIGCONT);
                }
            }
            Action::SignalRealtime { pid, signal } => pid1::signal_realtime(pid, signal),
            Action::KillGroup { pgid } => pid1::signal_group(pgid, Signal::SIGKILL),
            Action::SetTimer { at, timer } => self.timers.push((at, timer)),
            Action::CheckLicense { forced } => inputs.push_back(self.check(forced)),
            Action::Shutdown { main, live, code } => {
                return Some(self.shutdown(pid1, main, &live, code).await);
            }
        }
        None
    }

    fn spawn(&mut self, generation: machine::Gen) -> Input {
        let failed = |code| Input::SpawnFailed { generation, code };
        let license = self.license_for_spawn();
        let notify = match readiness::NotifySocket::bind(&self.runtime_dir, generation) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(generation, error = %e, "cannot create the readiness socket");
                return failed(exit::FAILURE);
            }
        };
        let command = &self.config.command;
        let spec = SpawnSpec {
            program: command[0].clone(),
            args: command[1..].to_vec(),
            env: vec![
                ("NOTIFY_SOCKET".into(), notify.env_value()),
                (
                    OsString::from(licensectl::env::ACCOUNTS),
                    self.dir.path().as_os_str().to_os_string(),
                ),
            ],
            // Consumed here; edged and its engine never need the TOKEN (or where to read it).
            env_remove: vec![
                crate::config::env::LICENSE_URL.into(),
                crate::config::env::LICENSE_URL_FILE.into(),
            ],
            listen_fds: vec![(self.listener.as_raw_fd(), listener::FD_NAME.to_string())],
            foreground_tty: false,
        };
        match pid1::spawn(&spec) {
            Ok(pid) => {
                let notes = self.notes_tx.clone();
                let task = tokio::spawn(async move {
                    loop {
                        match notify.recv().await {
                            Ok(n) => {
                                if let Some(status) = &n.status {
                                    tracing::debug!(generation, status = %status, "generation status");
                                }
                                if n.ready && notes.send(Note::Ready { generation }).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(generation, error = %e, "readiness socket failed");
                                return;
                            }
                        }
                    }
                });
                self.readiness.insert(pid, task);
                Input::Spawned {
                    generation,
                    pid,
                    license,
                }
            }
            Err(e) => {
                tracing::error!(generation, error = %e, "cannot start privitty-edged");
                failed(e.exit_code())
            }
        }
    }

    /// Reads and verifies the license on disk, logging why an invalid one is ignored.
    fn check(&mut self, forced: bool) -> Input {
        let seen = watch::Fingerprint::of(self.dir.path());
        let mut withdrawn = false;
        let license = match LoadedLicense::load(&self.dir, &self.keys) {
            Ok(loaded) => {
                match loaded.invalid_reason() {
                    _ if loaded.identity().is_some() => {}
                    Some(reason @ (Reason::Deactivated | Reason::Revoked)) => {
                        withdrawn = true;
                        tracing::info!(
                            reason = %reason,
                            "the activation was withdrawn: gated calls stop with the next generation"
                        );
                    }
                    Some(Reason::NotActivated) | None => {}
                    Some(reason) => self.explain_invalid(reason),
                }
                loaded.identity().cloned()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the license files");
                None
            }
        };
        self.last_check = Some((seen, license.clone()));
        Input::LicenseChecked {
            license,
            forced,
            withdrawn,
        }
    }

    /// Logs why the license on disk is not used, and what to do about it.
    fn explain_invalid(&self, reason: Reason) {
        let file = self.dir.license_path();
        let symlink = std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink());
        if symlink {
            // Kubernetes mounts secrets and config maps as symlinks through `..data`.
            tracing::warn!(
                file = %file.display(),
                reason = %reason,
                "the license file is not valid: it is a symlink, which is never followed (a link on \
                 the data volume could point anywhere). Copy the file into the accounts directory \
                 instead (with Kubernetes: mount the secret with subPath, or copy it in with an init \
                 container); until then it is ignored and a running generation keeps the license \
                 it loaded"
            );
        } else {
            tracing::warn!(
                file = %file.display(),
                reason = %reason,
                "the license file is not valid; it is ignored and a running generation keeps the \
                 license it loaded (`privitty-edge license status` shows details)"
            );
        }
    }

    /// The license a new generation is about to load, for the swap comparison. Reuses the check
    /// that usually just preceded the swap when the files have not changed since: verifying costs
    /// more than the rest of starting a generation.
    fn license_for_spawn(&self) -> Option<LicenseIdentity> {
        if let Some((seen, license)) = &self.last_check
            && *seen == watch::Fingerprint::of(self.dir.path())
        {
            return license.clone();
        }
        LoadedLicense::load(&self.dir, &self.keys)
            .ok()
            .and_then(|l| l.identity().cloned())
    }

    async fn shutdown(
        &mut self,
        pid1: &mut Pid1,
        main: Option<Pid>,
        live: &[Pid],
        code: Option<i32>,
    ) -> i32 {
        // edged first, not its group: its engine must answer while edged drains requests.
        for pid in live {
            signal_generation(*pid, Signal::SIGTERM);
            // As in a swap: a stopped edged must be able to act on it (see `execute`).
            signal_generation(*pid, Signal::SIGCONT);
        }
        let started = Instant::now();
        let status = pid1
            .stop(
                &[],
                Signal::SIGTERM,
                main.unwrap_or(Pid::from_raw(0)),
                self.config.stop_timeout,
                pid1::ignore_while_stopping,
            )
            .await;
        for (_, task) in self.readiness.drain() {
            task.abort();
        }
        let code = code.unwrap_or_else(|| status.map_or(0, pid1::exit_code));
        tracing::info!(
            code,
            main = main.map(Pid::as_raw),
            status = ?status,
            stop_ms = started.elapsed().as_millis() as u64,
            "stopped"
        );
        code
    }
}

/// Signals one edged; one that is already gone is not an error.
fn signal_generation(pid: Pid, signal: Signal) {
    match nix::sys::signal::kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid = pid.as_raw(), signal = %signal, error = %e, "cannot signal"),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
