//! Managed mode's driver: the one thread that runs it. Owns the listening socket, the hand-over
//! and engine pairs, the per-generation notify sockets, the license watch, the license commands'
//! pipes (through [`Jobs`]) and the timers; turns what happens into [`Input`]s for the
//! [`Machine`] and executes the [`Action`]s it answers with, on one thread: [`Pid1::wait`] polls
//! every fd beside the signals.
//!
//! Must not make lifecycle decisions (what to start, stop, signal, retry or when to give up: each
//! is the machine's, pure and unit-tested without processes): every signal it sends and every
//! timer it sets is an action. Must not wait for children: the reaper in `pid1` reports every
//! exit; a license command's goes to [`Jobs::finish`]. What it still does on its own is reading:
//! the facts at start-up ([`Boot`]), the license on disk ([`Input::LicenseChecked`], with the log
//! line that says why an invalid file is ignored) and the readiness messages.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Instant, SystemTime};

use licensectl::keys::KeySources;
use licensectl::{AccountsDir, LicenseIdentity, LoadedLicense, Reason, TrustedKeys};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use privitty_base::env;

use super::backoff::Backoff;
use super::jobs::{Jobs, Stream};
use super::machine::{self, Action, Boot, Input, Machine, Settings, Timer};
use super::{listener, readiness, sync, watch};
use crate::config::{Config, exit};
use crate::pid1::{self, Event, Pid1, SpawnSpec, Wake};

/// Runs managed mode until the container stops; returns the process exit code. `pid1` must come
/// from [`Pid1::install_with_fds`].
pub fn run(config: &Config, pid1: &mut Pid1) -> i32 {
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
    let handover = match listener::handover() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the connection hand-over socket pair");
            return exit::FAILURE;
        }
    };
    let engines = match listener::engine_pair() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the engine hand-over socket pair");
            return exit::FAILURE;
        }
    };
    let runtime_dir = match readiness::runtime_dir(dir.path()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a private directory for the readiness sockets");
            return exit::FAILURE;
        }
    };

    let now = Instant::now();
    let watch = watch::LicenseWatch::start(dir.path().to_path_buf(), m.poll_interval, now);
    let license_file = std::fs::symlink_metadata(dir.license_path()).is_ok();
    let boot = Boot {
        // A license file (valid or not: an invalid one is reported below, not activated over), or
        // an activation record (even a deactivated or revoked one, whose privitty.lic was moved
        // aside): start-up activation must not take a new seat over it.
        license_present: license_file || !licensectl::needs_activation(&dir, &keys),
        device_identity_present: std::fs::symlink_metadata(
            dir.file(licensectl::accounts::DEVICE_UUID_FILE),
        )
        .is_ok(),
        since_last_sync: sync::since_last_sync(&dir, SystemTime::now()),
    };
    let mut driver = Driver {
        config,
        jobs: Jobs::new(
            crate::config::license_cli(),
            dir.path(),
            m.license_url.clone(),
        ),
        dir,
        keys,
        listener,
        handover,
        engines,
        machine: Machine::new(Settings {
            ready_timeout: m.ready_timeout,
            stop_timeout: config.stop_timeout,
            crash_limit: m.crash_limit,
            crash_window: m.crash_window,
            backoff: Backoff::default(),
            activate: m.license_url.is_some(),
            activation_timeout: m.activation_timeout,
            sync_interval: m.sync_interval,
            seed: fastrand::u64(..),
            spare_after: m.spare.then_some(machine::SPARE_AFTER),
        }),
        watch,
        timers: Vec::new(),
        readiness: HashMap::new(),
        last_check: None,
        runtime_dir,
        spare: None,
        spares: 0,
    };
    if license_file {
        // Says now why a license file that is present would not be used (the first generation
        // reuses this check), rather than only at the next change.
        driver.check(false);
    }
    let code = driver.event_loop(pid1, Input::Boot(boot));
    let _ = std::fs::remove_dir_all(&driver.runtime_dir);
    code
}

struct Driver<'a> {
    config: &'a Config,
    dir: AccountsDir,
    keys: TrustedKeys,
    listener: TcpListener,
    /// Inherited by every generation next to the listener (see `listener::Handover`).
    handover: listener::Handover,
    /// Inherited by every generation next to the listener (see `listener::EnginePair`).
    engines: listener::EnginePair,
    machine: Machine,
    watch: watch::LicenseWatch,
    jobs: Jobs,
    timers: Vec<(Instant, Timer)>,
    /// The notify socket of each running generation, by pid.
    readiness: HashMap<Pid, (machine::Gen, readiness::NotifySocket)>,
    /// The files' fingerprint and the license found at the last check.
    last_check: Option<(watch::Fingerprint, Option<LicenseIdentity>)>,
    /// Where the per-generation notify sockets live.
    runtime_dir: std::path::PathBuf,
    /// The spare, waiting to be woken.
    spare: Option<SpareProcess>,
    /// Spares started so far (names their notify sockets).
    spares: u64,
}

/// A spare edged ([`Action::SpawnSpare`]): its pid, the write end of the pipe it waits on (closing
/// it dismisses the spare: it exits 0), and the notify socket it was given.
struct SpareProcess {
    pid: Pid,
    wake: OwnedFd,
    notify: readiness::NotifySocket,
}

/// Whose fd [`Pid1::wait`] reported.
#[derive(Clone, Copy, Debug)]
enum Source {
    Watch,
    Notify(Pid),
    Job(Pid, Stream),
}

impl Driver<'_> {
    fn event_loop(&mut self, pid1: &mut Pid1, first: Input) -> i32 {
        let mut inputs = VecDeque::from([first]);
        loop {
            while let Some(input) = inputs.pop_front() {
                if let Input::Exited { pid, .. } = &input {
                    self.readiness.remove(pid);
                    if self.spare.as_ref().is_some_and(|s| s.pid == *pid) {
                        self.spare = None;
                    }
                }
                for action in self.machine.step(Instant::now(), input) {
                    if let Some(code) = self.execute(pid1, action, &mut inputs) {
                        return code;
                    }
                }
            }
            // Then what fell due meanwhile: after what the last wake-up brought, so that a
            // signal goes on at once, before any license check.
            let now = Instant::now();
            if self.watch.on_time(now) {
                inputs.push_back(self.check(false));
            }
            if self.timers.iter().any(|(at, _)| *at <= now) {
                let (due, later): (Vec<_>, Vec<_>) =
                    self.timers.drain(..).partition(|(at, _)| *at <= now);
                self.timers = later;
                inputs.extend(due.into_iter().map(|(_, t)| Input::Timer(t)));
            }
            if !inputs.is_empty() {
                continue;
            }
            let deadline = self
                .timers
                .iter()
                .map(|(at, _)| *at)
                .chain([self.watch.deadline()])
                .min();
            let (sources, wake) = {
                let mut sources = Vec::new();
                let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
                if let Some(fd) = self.watch.fd() {
                    sources.push(Source::Watch);
                    fds.push(fd);
                }
                for (pid, (_, socket)) in &self.readiness {
                    sources.push(Source::Notify(*pid));
                    fds.push(socket.fd());
                }
                for (pid, stream, fd) in self.jobs.fds() {
                    sources.push(Source::Job(pid, stream));
                    fds.push(fd);
                }
                (sources, pid1.wait(deadline, &fds))
            };
            match wake {
                Wake::Event(Event::Signal(signal)) => inputs.push_back(Input::Signal(signal)),
                Wake::Event(Event::Realtime(signal)) => inputs.push_back(Input::Realtime(signal)),
                Wake::Event(Event::Exited { pid, status }) => {
                    inputs.push_back(match self.jobs.finish(pid, status) {
                        Some((job, report)) => Input::JobFinished { job, report },
                        None => Input::Exited { pid, status },
                    })
                }
                Wake::Readable(i) => match sources[i] {
                    Source::Watch => self.watch.on_readable(Instant::now()),
                    Source::Notify(pid) => {
                        if let Some(input) = self.on_notify(pid) {
                            inputs.push_back(input);
                        }
                    }
                    Source::Job(pid, stream) => self.jobs.on_readable(pid, stream),
                },
                Wake::Timeout => {}
            }
        }
    }

    /// A generation's notify socket is readable: `Ready` once it said `READY=1`.
    fn on_notify(&mut self, pid: Pid) -> Option<Input> {
        let (generation, socket) = self.readiness.get(&pid)?;
        let generation = *generation;
        let mut ready = false;
        loop {
            match socket.try_recv() {
                Ok(Some(n)) => {
                    if let Some(status) = &n.status {
                        tracing::debug!(generation, status = %status, "generation status");
                    }
                    ready |= n.ready;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(generation, error = %e, "readiness socket failed");
                    self.readiness.remove(&pid);
                    break;
                }
            }
        }
        ready.then_some(Input::Ready { generation })
    }

    /// Executes one action; `Some(code)` ends managed mode with that exit code.
    fn execute(
        &mut self,
        pid1: &mut Pid1,
        action: Action,
        inputs: &mut VecDeque<Input>,
    ) -> Option<i32> {
        match action {
            // Queued before the next `pid1` event is even read: a child that exits at once has
            // its pid known to the machine before its `Exited` arrives.
            Action::Spawn { generation } => inputs.push_back(self.spawn(generation)),
            Action::SpawnSpare => inputs.push_back(self.spawn_spare()),
            Action::Wake { generation } => inputs.push_back(self.wake(generation)),
            Action::SpawnJob { job } => inputs.push_back(match self.jobs.spawn(job) {
                Ok(pid) => Input::JobSpawned { job, pid },
                Err(report) => Input::JobFinished { job, report },
            }),
            Action::Signal { pid, signal } => signal_process(pid, signal),
            Action::SignalRealtime { pid, signal } => pid1::signal_realtime(pid, signal),
            Action::SignalGroup { pgid, signal } => pid1::signal_group(pgid, signal),
            Action::SetTimer { at, timer } => self.timers.push((at, timer)),
            Action::CheckLicense { forced } => inputs.push_back(self.check(forced)),
            Action::ReleaseStartupPages => pid1::release_startup_pages(),
            Action::CloseHandedConnections => {
                let closed = listener::close_handed(&self.handover);
                if closed > 0 {
                    tracing::warn!(
                        connections = closed,
                        "closed the connections handed over to a generation that did not start"
                    );
                }
            }
            Action::OfferEngine { generation } => {
                // Without the token the generation stops its engine, as it would at a container
                // stop: slower for the next one, never wrong.
                if let Err(e) = listener::offer_engine(&self.engines, generation) {
                    tracing::warn!(
                        generation,
                        error = %e,
                        "cannot offer the messaging engine to the next generation; it stops its own"
                    );
                }
            }
            Action::Shutdown { main, code } => return Some(self.shutdown(pid1, main, code)),
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
        // edged's metrics: counters that go on across generations (edged's own start again at
        // each swap).
        let counters = [
            (env::GENERATION, generation),
            (env::GENERATION_SWAPS, self.machine.swaps()),
            (env::GENERATION_CRASHES, self.machine.crashes_total()),
        ]
        .map(|(name, value)| (name.into(), value.to_string().into()));
        let spec = self.spawn_spec(&notify, counters.into(), None);
        match pid1::spawn(&spec) {
            Ok(pid) => {
                self.readiness.insert(pid, (generation, notify));
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

    /// Starts a spare: the same program, environment and descriptors as a generation, plus the
    /// read end of a pipe named `wake`, and none of the generation's counters (they come with
    /// the wake message).
    fn spawn_spare(&mut self) -> Input {
        self.spares += 1;
        let failed = |error: &dyn std::fmt::Display, code| {
            tracing::warn!(
                error = %error,
                "cannot start a spare; the next generation starts from scratch (slower, nothing \
                 else changes)"
            );
            Input::SpareFailed { code }
        };
        let notify = match readiness::NotifySocket::bind_named(
            &self.runtime_dir,
            &format!("spare-{}", self.spares),
        ) {
            Ok(s) => s,
            Err(e) => return failed(&e, exit::FAILURE),
        };
        // Both ends close-on-exec: the spare gets its end through the spawn's descriptor list.
        let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return failed(&e, exit::FAILURE),
        };
        let spec = self.spawn_spec(&notify, Vec::new(), Some(&read));
        match pid1::spawn(&spec) {
            Ok(pid) => {
                self.spare = Some(SpareProcess {
                    pid,
                    wake: write,
                    notify,
                });
                Input::SpareSpawned { pid }
            }
            Err(e) => failed(&e, e.exit_code()),
        }
    }

    /// Wakes the spare as `generation`: the wake message carries what a generation otherwise
    /// finds in its environment.
    fn wake(&mut self, generation: machine::Gen) -> Input {
        let Some(spare) = self.spare.take() else {
            return Input::WakeFailed { generation };
        };
        let license = self.license_for_spawn();
        let message = listener::wake_message(
            generation,
            self.machine.swaps(),
            self.machine.crashes_total(),
        );
        // A pipe takes a 32-byte write whole or not at all (PIPE_BUF); the spare may have died
        // (EPIPE: SIGPIPE is ignored here).
        match nix::unistd::write(&spare.wake, &message) {
            Ok(n) if n == message.len() => {
                tracing::debug!(generation, pid = spare.pid.as_raw(), "spare woken");
                self.readiness.insert(spare.pid, (generation, spare.notify));
                Input::Spawned {
                    generation,
                    pid: spare.pid,
                    license,
                }
            }
            result => {
                tracing::warn!(
                    generation,
                    pid = spare.pid.as_raw(),
                    result = ?result,
                    "cannot wake the spare; it is stopped"
                );
                signal_process(spare.pid, Signal::SIGKILL);
                Input::WakeFailed { generation }
            }
        }
    }

    /// How a generation (or a spare, with its `wake` descriptor) is started.
    fn spawn_spec(
        &self,
        notify: &readiness::NotifySocket,
        counters: Vec<(OsString, OsString)>,
        wake: Option<&OwnedFd>,
    ) -> SpawnSpec {
        let command = &self.config.command;
        let mut listen_fds = vec![
            (self.listener.as_raw_fd(), listener::FD_NAME.to_string()),
            (
                self.handover.send.as_raw_fd(),
                listener::HANDOVER_SEND.to_string(),
            ),
            (
                self.handover.recv.as_raw_fd(),
                listener::HANDOVER_RECV.to_string(),
            ),
            (
                self.engines.send.as_raw_fd(),
                listener::ENGINE_SEND.to_string(),
            ),
            (
                self.engines.recv.as_raw_fd(),
                listener::ENGINE_RECV.to_string(),
            ),
        ];
        if let Some(wake) = wake {
            listen_fds.push((wake.as_raw_fd(), listener::WAKE.to_string()));
        }
        let mut env = vec![
            (env::NOTIFY_SOCKET.into(), notify.env_value()),
            (
                OsString::from(env::ACCOUNTS),
                self.dir.path().as_os_str().to_os_string(),
            ),
        ];
        env.extend(counters);
        SpawnSpec {
            program: command[0].clone(),
            args: command[1..].to_vec(),
            env,
            // Consumed here; edged and its engine never need the TOKEN (or where to read it).
            env_remove: vec![
                crate::config::env::LICENSE_URL.into(),
                crate::config::env::LICENSE_URL_FILE.into(),
            ],
            listen_fds,
            // Outside a PID namespace, a generation left behind by a privitty-init that was
            // killed would go on serving and hold the data-directory lock, and a privitty-init
            // started again would wait for it; it stops instead (a spare also sees its pipe end).
            parent_death_signal: Some(Signal::SIGTERM),
            ..SpawnSpec::default()
        }
    }

    /// Reads and verifies the license on disk, logging why an invalid one is ignored.
    fn check(&mut self, forced: bool) -> Input {
        let seen = watch::Fingerprint::of(self.dir.path());
        let present = std::fs::symlink_metadata(self.dir.license_path()).is_ok();
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
            present,
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

    fn close_untaken_engines(&self) {
        close_untaken_engines(&self.engines);
    }

    /// The stop signals went out with the actions before this one: waits for the tree, kills
    /// what is left after the stop timeout, and says with which code to exit.
    fn shutdown(&mut self, pid1: &mut Pid1, main: Option<Pid>, code: Option<i32>) -> i32 {
        let started = Instant::now();
        // An engine handed over that no generation took: its stdin stays open while the pair's
        // buffer holds it, so it would only end at the stop timeout's SIGKILL. Closed now, and
        // again whenever a process exits during the wait (a generation a swap had told to stop
        // hands its engine over just before it exits, maybe to a next one that is gone), it sees
        // EOF and exits with the rest. A next generation that is still there takes it over and
        // stops it itself, or finds it closed: either way it ends with its stdin.
        self.close_untaken_engines();
        // Its wake pipe closed, a spare ends on its own (exit 0); it gets no signal.
        self.spare = None;
        let engines = &self.engines;
        let status = pid1.stop(
            &[],
            Signal::SIGTERM,
            main.unwrap_or(Pid::from_raw(0)),
            self.config.stop_timeout,
            pid1::ignore_while_stopping,
            |_| close_untaken_engines(engines),
        );
        self.readiness.clear();
        self.close_untaken_engines();
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

/// Signals one process; one that is already gone is not an error.
fn signal_process(pid: Pid, signal: Signal) {
    match nix::sys::signal::kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid = pid.as_raw(), signal = %signal, error = %e, "cannot signal"),
    }
}

/// Closes the engines waiting in the engine pair, and the swap tokens nobody read. Only at exit:
/// until then a later generation may still take an engine over.
fn close_untaken_engines(pair: &listener::EnginePair) {
    let engines = listener::close_engines(pair);
    if engines > 0 {
        tracing::warn!(
            engines,
            "closed a messaging engine handed over to a generation that did not take it; it \
             stops on its own (its stdin is closed)"
        );
    }
}
