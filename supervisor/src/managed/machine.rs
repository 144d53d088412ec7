//! The managed-mode lifecycle as a pure state machine: inputs in (signal, child exited, spawned,
//! ready, license checked, timer, activation finished), actions out (spawn, signal, timers, license
//! check, shutdown).
//!
//! Owns every decision about generations: when to start one, when to stop the previous one, what an
//! unexpected exit costs, when a crash loop ends the container. Must not perform I/O, read the clock
//! (every input carries `now`) or hold process handles: the driver in `mod.rs` executes the actions
//! and reports their results back as inputs. Logging is the only effect it has.
//!
//! A swap starts generation N+1 first (it loads its license, then blocks on the accounts-dir lock)
//! and only then asks generation N to stop, so the gap in service is N's drain plus N+1's engine
//! start-up; edged's lock keeps the two engines from ever overlapping.

use std::time::{Duration, Instant};

use licensectl::LicenseIdentity;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::backoff::{Backoff, CrashBudget};
use crate::pid1::Realtime;

/// Exit code when generations exit unexpectedly more than `crash_limit` times within
/// `crash_window` (EX_SOFTWARE).
pub const EXIT_CRASH_LOOP: i32 = crate::config::exit::CRASH_LOOP;

/// Generation number; the first is 1.
pub type Gen = u64;

#[derive(Clone, Debug)]
pub struct Settings {
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub crash_limit: u32,
    pub crash_window: Duration,
    pub backoff: Backoff,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Start-up activation is over (whatever its outcome): generations may start.
    ActivationFinished,
    /// The driver started the process for `Action::Spawn { generation }`, having read `license` just before.
    Spawned {
        generation: Gen,
        pid: Pid,
        license: Option<LicenseIdentity>,
    },
    /// `Action::Spawn { generation }` failed before the program ran; `code` is 126 or 127.
    SpawnFailed {
        generation: Gen,
        code: i32,
    },
    /// The generation sent `READY=1`.
    Ready {
        generation: Gen,
    },
    /// A child of ours ended (any child: orphans are reported too and ignored here).
    Exited {
        pid: Pid,
        status: WaitStatus,
    },
    Signal(Signal),
    /// A realtime signal (SIGRTMIN…SIGRTMAX): forwarded, it has no meaning of its own here.
    Realtime(Realtime),
    /// The result of a license check; `license` is `None` when no valid license is on disk, and
    /// `withdrawn` says that is because its activation was deactivated or revoked (authoritative,
    /// unlike a file that does not verify).
    LicenseChecked {
        license: Option<LicenseIdentity>,
        forced: bool,
        withdrawn: bool,
    },
    Timer(Timer),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The generation must have reported `READY=1` by now.
    ReadyDeadline(Gen),
    /// The stopping generation had its `stop_timeout`; kill what is left of it.
    KillDeadline(Gen),
    /// The backoff after an unexpected exit is over.
    Restart,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start generation `generation`; answer with `Input::Spawned` or `Input::SpawnFailed`.
    Spawn { generation: Gen },
    /// Signal one process (an edged generation, never its whole group: its engine must keep
    /// answering while edged drains in-flight requests).
    Signal { pid: Pid, signal: Signal },
    /// [`Action::Signal`] for a realtime signal.
    SignalRealtime { pid: Pid, signal: Realtime },
    /// SIGKILL a generation's process group: leftovers of an exited or overdue generation.
    KillGroup { pgid: Pid },
    /// Feed `Input::Timer(timer)` back at `at`.
    SetTimer { at: Instant, timer: Timer },
    /// Read and verify the license on disk; answer with `Input::LicenseChecked { forced, .. }`.
    CheckLicense { forced: bool },
    /// Stop every generation (SIGTERM to each edged, SIGKILL after the stop timeout) and exit with
    /// `code`, or, when `None`, with `main`'s exit status (0 when there is no main).
    Shutdown {
        main: Option<Pid>,
        live: Vec<Pid>,
        code: Option<i32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Activating,
    Running,
    ShuttingDown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenPhase {
    /// `Action::Spawn` issued, no pid yet.
    Spawning,
    /// Running, not ready yet (loading its license, waiting for the lock, starting its engine).
    Starting,
    /// Serving.
    Ready,
    /// Sent SIGTERM; its exit is expected.
    Stopping,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub generation: Gen,
    pub pid: Option<Pid>,
    pub phase: GenPhase,
    pub license: Option<LicenseIdentity>,
    pub spawned_at: Instant,
    pub ready_at: Option<Instant>,
}

impl Generation {
    fn live(&self) -> bool {
        self.phase != GenPhase::Stopping
    }
}

#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    phase: Phase,
    next_gen: Gen,
    gens: Vec<Generation>,
    /// A swap was asked for while a generation was still starting: done once it is ready.
    pending_swap: bool,
    restart_at: Option<Instant>,
    crashes: CrashBudget,
    backoff: Backoff,
    ever_ready: bool,
    /// How the last generation that served ended, when it left during a swap and the next one is
    /// not ready yet: a stop then exits with this, not with the newcomer's.
    served: Option<WaitStatus>,
}

impl Machine {
    pub fn new(settings: Settings) -> Machine {
        Machine {
            crashes: CrashBudget::new(settings.crash_limit, settings.crash_window),
            backoff: settings.backoff.clone(),
            settings,
            phase: Phase::Activating,
            next_gen: 1,
            gens: Vec::new(),
            pending_swap: false,
            restart_at: None,
            ever_ready: false,
            served: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn generations(&self) -> &[Generation] {
        &self.gens
    }

    /// The generation that serves (or is about to): the newest one not being stopped.
    pub fn current(&self) -> Option<&Generation> {
        self.gens.iter().rev().find(|g| g.live())
    }

    pub fn restart_pending(&self) -> Option<Instant> {
        self.restart_at
    }

    /// The transition function.
    pub fn step(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::ShuttingDown {
            return out;
        }
        match input {
            Input::ActivationFinished => {
                if self.phase == Phase::Activating {
                    self.phase = Phase::Running;
                    self.start_generation(now, &mut out);
                }
            }
            Input::Spawned {
                generation,
                pid,
                license,
            } => self.on_spawned(now, generation, pid, license, &mut out),
            Input::SpawnFailed { generation, code } => {
                self.on_spawn_failed(now, generation, code, &mut out)
            }
            Input::Ready { generation } => self.on_ready(now, generation, &mut out),
            Input::Exited { pid, status } => self.on_exited(now, pid, status, &mut out),
            Input::Signal(signal) => self.on_signal(signal, &mut out),
            Input::Realtime(signal) => {
                for pid in self.live_pids() {
                    out.push(Action::SignalRealtime { pid, signal });
                }
            }
            Input::LicenseChecked {
                license,
                forced,
                withdrawn,
            } => self.on_license(now, license, forced, withdrawn, &mut out),
            Input::Timer(timer) => self.on_timer(now, timer, &mut out),
        }
        out
    }

    fn start_generation(&mut self, now: Instant, out: &mut Vec<Action>) {
        let generation = self.next_gen;
        self.next_gen += 1;
        self.pending_swap = false;
        self.restart_at = None;
        self.gens.push(Generation {
            generation,
            pid: None,
            phase: GenPhase::Spawning,
            license: None,
            spawned_at: now,
            ready_at: None,
        });
        out.push(Action::Spawn { generation });
    }

    fn stop_generation(&mut self, now: Instant, idx: usize, out: &mut Vec<Action>) {
        let g = &mut self.gens[idx];
        g.phase = GenPhase::Stopping;
        if let Some(pid) = g.pid {
            out.push(Action::Signal {
                pid,
                signal: Signal::SIGTERM,
            });
            out.push(Action::SetTimer {
                at: now + self.settings.stop_timeout,
                timer: Timer::KillDeadline(g.generation),
            });
        }
    }

    fn on_spawned(
        &mut self,
        now: Instant,
        generation: Gen,
        pid: Pid,
        license: Option<LicenseIdentity>,
        out: &mut Vec<Action>,
    ) {
        let Some(idx) = self.gens.iter().position(|g| g.generation == generation) else {
            return;
        };
        let g = &mut self.gens[idx];
        g.pid = Some(pid);
        g.phase = GenPhase::Starting;
        g.license = license;
        g.spawned_at = now;
        tracing::info!(generation, pid = pid.as_raw(), "generation started");
        out.push(Action::SetTimer {
            at: now + self.settings.ready_timeout,
            timer: Timer::ReadyDeadline(generation),
        });
        // The new generation waits on the accounts-dir lock, so the old one can stop now.
        for i in 0..self.gens.len() {
            if i != idx && self.gens[i].live() {
                tracing::info!(
                    generation = self.gens[i].generation,
                    next = generation,
                    "stopping the previous generation"
                );
                self.stop_generation(now, i, out);
            }
        }
    }

    fn on_spawn_failed(&mut self, now: Instant, generation: Gen, code: i32, out: &mut Vec<Action>) {
        let Some(idx) = self.gens.iter().position(|g| g.generation == generation) else {
            return;
        };
        self.gens.remove(idx);
        if !self.ever_ready && !self.gens.iter().any(Generation::live) {
            tracing::error!(generation, code, "cannot start the service; exiting");
            self.shutdown(Some(code), out);
            return;
        }
        tracing::error!(generation, code, "could not start a new generation");
        self.after_failure(now, Duration::ZERO, out);
    }

    fn on_ready(&mut self, now: Instant, generation: Gen, out: &mut Vec<Action>) {
        let Some(g) = self.gens.iter_mut().find(|g| g.generation == generation) else {
            return;
        };
        if g.phase != GenPhase::Starting {
            return;
        }
        g.phase = GenPhase::Ready;
        g.ready_at = Some(now);
        self.ever_ready = true;
        self.served = None;
        tracing::info!(
            generation,
            pid = g.pid.map(Pid::as_raw),
            license = g.license.as_ref().map(|l| l.jti.as_str()),
            startup_ms = now.saturating_duration_since(g.spawned_at).as_millis() as u64,
            "generation ready"
        );
        if self.pending_swap {
            tracing::info!(generation, "starting the swap asked for during start-up");
            self.start_generation(now, out);
        }
    }

    fn on_exited(&mut self, now: Instant, pid: Pid, status: WaitStatus, out: &mut Vec<Action>) {
        let Some(idx) = self.gens.iter().position(|g| g.pid == Some(pid)) else {
            return;
        };
        let g = self.gens.remove(idx);
        // Whatever the generation left behind in its group (its engine) must not outlive it.
        out.push(Action::KillGroup { pgid: pid });
        if g.phase == GenPhase::Stopping {
            tracing::info!(generation = g.generation, pid = pid.as_raw(), status = ?status, "generation stopped");
            if g.ready_at.is_some() {
                self.served = Some(status);
            }
            return;
        }
        let up = g
            .ready_at
            .map_or(Duration::ZERO, |r| now.saturating_duration_since(r));
        tracing::warn!(
            generation = g.generation,
            pid = pid.as_raw(),
            status = ?status,
            was_ready = g.ready_at.is_some(),
            uptime_ms = up.as_millis() as u64,
            "generation exited unexpectedly"
        );
        self.after_failure(now, up, out);
    }

    /// One unexpected end of a generation: charge the crash budget, then make sure something will
    /// serve again.
    fn after_failure(&mut self, now: Instant, uptime: Duration, out: &mut Vec<Action>) {
        if self.crashes.record(now) {
            tracing::error!(
                crashes = self.crashes.recent(),
                window = %humantime::format_duration(self.crashes.window()),
                code = EXIT_CRASH_LOOP,
                "crash loop: giving up so the orchestrator sees it"
            );
            self.shutdown(Some(EXIT_CRASH_LOOP), out);
            return;
        }
        if self.gens.iter().any(Generation::live) || self.restart_at.is_some() {
            return;
        }
        self.backoff.note_uptime(uptime);
        let delay = self.backoff.next_delay();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            crashes = self.crashes.recent(),
            limit = self.crashes.limit(),
            "restarting after backoff"
        );
        let at = now + delay;
        self.restart_at = Some(at);
        out.push(Action::SetTimer {
            at,
            timer: Timer::Restart,
        });
    }

    fn on_signal(&mut self, signal: Signal, out: &mut Vec<Action>) {
        match signal {
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                tracing::info!(signal = %signal, "stopping");
                self.shutdown(None, out);
            }
            Signal::SIGHUP => out.push(Action::CheckLicense { forced: true }),
            other if !crate::pid1::signals::is_forwarded(other) => {}
            other => {
                for pid in self.live_pids() {
                    out.push(Action::Signal { pid, signal: other });
                }
            }
        }
    }

    /// The pids of the generations that are not being stopped: where forwarded signals go.
    fn live_pids(&self) -> Vec<Pid> {
        self.gens
            .iter()
            .filter(|g| g.live())
            .filter_map(|g| g.pid)
            .collect()
    }

    fn on_license(
        &mut self,
        now: Instant,
        license: Option<LicenseIdentity>,
        forced: bool,
        withdrawn: bool,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Running {
            return;
        }
        // With no live generation a restart is pending, and it reads the license anyway.
        let Some(current) = self.current() else {
            return;
        };
        if !forced {
            // A file that does not verify may be a drop in progress or a mistake: the running
            // generation keeps what it loaded. A deactivation or revocation is the license
            // server's (or the operator's) word: it takes effect like a new license does.
            if license.is_none() && !(withdrawn && current.license.is_some()) {
                tracing::debug!("no valid license on disk; no swap");
                return;
            }
            if license == current.license {
                tracing::debug!(
                    license = license.as_ref().map(|l| l.jti.as_str()),
                    "license unchanged; no swap"
                );
                return;
            }
        }
        tracing::info!(
            forced,
            withdrawn,
            from = current.license.as_ref().map(|l| l.jti.as_str()),
            to = license.as_ref().map(|l| l.jti.as_str()),
            "swapping to a new generation"
        );
        if current.phase == GenPhase::Ready {
            self.start_generation(now, out);
        } else {
            // Two generations starting at once would only queue on the lock; one swap after the
            // starting one is ready covers every request made meanwhile.
            self.pending_swap = true;
        }
    }

    fn on_timer(&mut self, now: Instant, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::ReadyDeadline(generation) => {
                let Some(idx) = self
                    .gens
                    .iter()
                    .position(|g| g.generation == generation && g.phase == GenPhase::Starting)
                else {
                    return;
                };
                tracing::error!(
                    generation,
                    timeout = %humantime::format_duration(self.settings.ready_timeout),
                    "generation did not report ready in time; replacing it"
                );
                self.stop_generation(now, idx, out);
                if self.crashes.record(now) {
                    tracing::error!(
                        crashes = self.crashes.recent(),
                        code = EXIT_CRASH_LOOP,
                        "crash loop: giving up so the orchestrator sees it"
                    );
                    self.shutdown(Some(EXIT_CRASH_LOOP), out);
                    return;
                }
                if !self.gens.iter().any(Generation::live) {
                    // It blocks on the lock until the overdue one is gone.
                    self.start_generation(now, out);
                }
            }
            Timer::KillDeadline(generation) => {
                if let Some(g) = self.gens.iter().find(|g| g.generation == generation)
                    && let Some(pid) = g.pid
                {
                    tracing::warn!(generation, pid = pid.as_raw(), "stop timeout; killing");
                    out.push(Action::KillGroup { pgid: pid });
                }
            }
            Timer::Restart => {
                if self.restart_at.is_some_and(|at| at <= now) {
                    self.start_generation(now, out);
                }
            }
        }
    }

    /// The exit code is the one of the generation that served last: during a swap that is the
    /// old generation, even while it is stopping; a newcomer that was not ready yet (and may die
    /// of the SIGTERM before its handlers exist) does not speak for the service.
    fn shutdown(&mut self, code: Option<i32>, out: &mut Vec<Action>) {
        self.phase = Phase::ShuttingDown;
        let served = self.gens.iter().rev().find(|g| g.ready_at.is_some());
        let main = served.or_else(|| self.current()).and_then(|g| g.pid);
        let code = code.or_else(|| {
            served
                .is_none()
                .then(|| self.served.map(crate::pid1::exit_code))
                .flatten()
        });
        let live = self.gens.iter().filter_map(|g| g.pid).collect();
        out.push(Action::Shutdown { main, live, code });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(8),
            crash_limit: 5,
            crash_window: Duration::from_secs(300),
            backoff: Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(10),
                Duration::from_secs(30),
            ),
        }
    }

    fn lic(jti: &str) -> Option<LicenseIdentity> {
        Some(LicenseIdentity {
            sha256: format!("sha-{jti}"),
            jti: jti.to_string(),
            iat: 1,
        })
    }

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    fn exited(n: i32, code: i32) -> Input {
        Input::Exited {
            pid: pid(n),
            status: WaitStatus::Exited(pid(n), code),
        }
    }

    fn term(n: i32) -> Action {
        Action::Signal {
            pid: pid(n),
            signal: Signal::SIGTERM,
        }
    }

    /// A machine whose generation 1 (pid 100) is serving with license "a", at `t0`.
    fn serving() -> (Machine, Instant) {
        let t0 = Instant::now();
        let mut m = Machine::new(settings());
        assert_eq!(
            m.step(t0, Input::ActivationFinished),
            vec![Action::Spawn { generation: 1 }]
        );
        let acts = m.step(
            t0,
            Input::Spawned {
                generation: 1,
                pid: pid(100),
                license: lic("a"),
            },
        );
        assert_eq!(
            acts,
            vec![Action::SetTimer {
                at: t0 + Duration::from_secs(30),
                timer: Timer::ReadyDeadline(1)
            }]
        );
        assert!(m.step(t0, Input::Ready { generation: 1 }).is_empty());
        (m, t0)
    }

    #[test]
    fn nothing_starts_before_activation_finishes() {
        let t0 = Instant::now();
        let mut m = Machine::new(settings());
        assert!(
            m.step(
                t0,
                Input::LicenseChecked {
                    license: lic("a"),
                    forced: true,
                    withdrawn: false,
                }
            )
            .is_empty()
        );
        assert!(m.step(t0, Input::Timer(Timer::Restart)).is_empty());
        assert_eq!(m.phase(), Phase::Activating);
        assert_eq!(
            m.step(t0, Input::ActivationFinished),
            vec![Action::Spawn { generation: 1 }]
        );
    }

    #[test]
    fn a_changed_license_starts_the_next_generation_then_stops_the_old_one() {
        let (mut m, t0) = serving();
        let acts = m.step(
            t0,
            Input::LicenseChecked {
                license: lic("b"),
                forced: false,
                withdrawn: false,
            },
        );
        assert_eq!(acts, vec![Action::Spawn { generation: 2 }]);
        // the old generation keeps serving until the new one is running
        assert_eq!(m.generations()[0].phase, GenPhase::Ready);
        let acts = m.step(
            t0,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: lic("b"),
            },
        );
        assert!(acts.contains(&term(100)), "{acts:?}");
        assert!(acts.contains(&Action::SetTimer {
            at: t0 + Duration::from_secs(8),
            timer: Timer::KillDeadline(1)
        }));
        // the old generation's exit is expected: no restart, its group is cleaned up
        assert_eq!(
            m.step(t0, exited(100, 0)),
            vec![Action::KillGroup { pgid: pid(100) }]
        );
        assert!(m.step(t0, Input::Ready { generation: 2 }).is_empty());
        assert_eq!(m.current().unwrap().generation, 2);
        assert_eq!(m.current().unwrap().phase, GenPhase::Ready);
    }

    #[test]
    fn the_same_license_again_does_not_swap() {
        let (mut m, t0) = serving();
        let acts = m.step(
            t0,
            Input::LicenseChecked {
                license: lic("a"),
                forced: false,
                withdrawn: false,
            },
        );
        assert!(acts.is_empty());
    }

    #[test]
    fn an_invalid_or_missing_license_leaves_the_running_generation_alone() {
        let (mut m, t0) = serving();
        let acts = m.step(
            t0,
            Input::LicenseChecked {
                license: None,
                forced: false,
                withdrawn: false,
            },
        );
        assert!(acts.is_empty());
    }

    #[test]
    fn a_deactivated_or_revoked_activation_swaps_once_so_the_license_stops_being_used() {
        let (mut m, t0) = serving();
        let withdrawn = Input::LicenseChecked {
            license: None,
            forced: false,
            withdrawn: true,
        };
        assert_eq!(
            m.step(t0, withdrawn.clone()),
            vec![Action::Spawn { generation: 2 }]
        );
        m.step(
            t0,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: None,
            },
        );
        m.step(t0, Input::Ready { generation: 2 });
        // The new generation runs without the license: seeing the same state again is no change.
        assert!(m.step(t0, withdrawn).is_empty());
    }

    #[test]
    fn sighup_rechecks_and_a_forced_check_always_swaps() {
        let (mut m, t0) = serving();
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGHUP)),
            vec![Action::CheckLicense { forced: true }]
        );
        assert_eq!(
            m.step(
                t0,
                Input::LicenseChecked {
                    license: lic("a"),
                    forced: true,
                    withdrawn: false,
                }
            ),
            vec![Action::Spawn { generation: 2 }]
        );
    }

    #[test]
    fn swaps_asked_for_during_start_up_are_coalesced_into_one() {
        let (mut m, t0) = serving();
        let forced = Input::LicenseChecked {
            license: lic("a"),
            forced: true,
            withdrawn: false,
        };
        assert_eq!(
            m.step(t0, forced.clone()),
            vec![Action::Spawn { generation: 2 }]
        );
        m.step(
            t0,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: lic("a"),
            },
        );
        // three more SIGHUPs while generation 2 is starting
        for _ in 0..3 {
            assert!(m.step(t0, forced.clone()).is_empty());
        }
        assert_eq!(
            m.step(t0, Input::Ready { generation: 2 }),
            vec![Action::Spawn { generation: 3 }]
        );
        let acts = m.step(
            t0,
            Input::Spawned {
                generation: 3,
                pid: pid(300),
                license: lic("a"),
            },
        );
        assert!(acts.contains(&term(200)));
        assert!(m.step(t0, Input::Ready { generation: 3 }).is_empty());
    }

    #[test]
    fn an_unexpected_exit_restarts_with_growing_backoff() {
        let (mut m, t0) = serving();
        let acts = m.step(t0, exited(100, 1));
        assert_eq!(
            acts,
            vec![
                Action::KillGroup { pgid: pid(100) },
                Action::SetTimer {
                    at: t0 + Duration::from_millis(100),
                    timer: Timer::Restart
                }
            ]
        );
        // an early timer does nothing
        assert!(m.step(t0, Input::Timer(Timer::Restart)).is_empty());
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            m.step(t1, Input::Timer(Timer::Restart)),
            vec![Action::Spawn { generation: 2 }]
        );
        m.step(
            t1,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: lic("a"),
            },
        );
        let acts = m.step(t1, exited(200, 101));
        assert!(acts.contains(&Action::SetTimer {
            at: t1 + Duration::from_millis(200),
            timer: Timer::Restart
        }));
    }

    #[test]
    fn a_crash_after_a_stable_run_restarts_quickly_again() {
        let (mut m, t0) = serving();
        m.step(t0, exited(100, 1));
        let t1 = t0 + Duration::from_millis(100);
        m.step(t1, Input::Timer(Timer::Restart));
        m.step(
            t1,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: lic("a"),
            },
        );
        m.step(t1, Input::Ready { generation: 2 });
        let t2 = t1 + Duration::from_secs(60);
        let acts = m.step(t2, exited(200, 1));
        assert!(acts.contains(&Action::SetTimer {
            at: t2 + Duration::from_millis(100),
            timer: Timer::Restart
        }));
    }

    #[test]
    fn a_crash_loop_exits_non_zero() {
        let mut s = settings();
        s.crash_limit = 2;
        let t0 = Instant::now();
        let mut m = Machine::new(s);
        m.step(t0, Input::ActivationFinished);
        let mut now = t0;
        for n in 1..=3 {
            let p = 100 * n as i32;
            m.step(
                now,
                Input::Spawned {
                    generation: n,
                    pid: pid(p),
                    license: None,
                },
            );
            m.step(now, Input::Ready { generation: n });
            let acts = m.step(now, exited(p, 1));
            if n < 3 {
                now += Duration::from_secs(1);
                assert_eq!(
                    m.step(now, Input::Timer(Timer::Restart)),
                    vec![Action::Spawn { generation: n + 1 }]
                );
            } else {
                assert_eq!(
                    acts.last(),
                    Some(&Action::Shutdown {
                        main: None,
                        live: vec![],
                        code: Some(EXIT_CRASH_LOOP)
                    })
                );
                assert_eq!(m.phase(), Phase::ShuttingDown);
            }
        }
    }

    #[test]
    fn crashes_spread_wider_than_the_window_never_end_the_loop() {
        let mut s = settings();
        s.crash_limit = 1;
        s.crash_window = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut m = Machine::new(s);
        m.step(t0, Input::ActivationFinished);
        let mut now = t0;
        for n in 1..=5u64 {
            let p = 100 * n as i32;
            m.step(
                now,
                Input::Spawned {
                    generation: n,
                    pid: pid(p),
                    license: None,
                },
            );
            let acts = m.step(now, exited(p, 1));
            assert!(
                !acts.iter().any(|a| matches!(a, Action::Shutdown { .. })),
                "{acts:?}"
            );
            now += Duration::from_secs(11);
            assert_eq!(
                m.step(now, Input::Timer(Timer::Restart)),
                vec![Action::Spawn { generation: n + 1 }]
            );
        }
    }

    #[test]
    fn a_new_generation_dying_during_a_swap_is_replaced() {
        let (mut m, t0) = serving();
        m.step(t0, Input::Signal(Signal::SIGHUP));
        m.step(
            t0,
            Input::LicenseChecked {
                license: lic("a"),
                forced: true,
                withdrawn: false,
            },
        );
        m.step(
            t0,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: lic("a"),
            },
        );
        // generation 2 dies before ready while 1 is stopping: another one is scheduled
        let acts = m.step(t0, exited(200, 1));
        assert!(
            acts.iter().any(|a| matches!(
                a,
                Action::SetTimer {
                    timer: Timer::Restart,
                    ..
                }
            )),
            "{acts:?}"
        );
        m.step(t0, exited(100, 0));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            m.step(t1, Input::Timer(Timer::Restart)),
            vec![Action::Spawn { generation: 3 }]
        );
    }

    #[test]
    fn a_generation_that_never_becomes_ready_is_stopped_and_replaced() {
        let t0 = Instant::now();
        let mut m = Machine::new(settings());
        m.step(t0, Input::ActivationFinished);
        m.step(
            t0,
            Input::Spawned {
                generation: 1,
                pid: pid(100),
                license: None,
            },
        );
        let t1 = t0 + Duration::from_secs(30);
        let acts = m.step(t1, Input::Timer(Timer::ReadyDeadline(1)));
        assert_eq!(
            acts,
            vec![
                term(100),
                Action::SetTimer {
                    at: t1 + Duration::from_secs(8),
                    timer: Timer::KillDeadline(1)
                },
                Action::Spawn { generation: 2 },
            ]
        );
        // the overdue one ignores SIGTERM: its group is killed at the deadline
        assert_eq!(
            m.step(t1, Input::Timer(Timer::KillDeadline(1))),
            vec![Action::KillGroup { pgid: pid(100) }]
        );
    }

    #[test]
    fn a_ready_deadline_after_ready_is_ignored() {
        let (mut m, t0) = serving();
        assert!(
            m.step(
                t0 + Duration::from_secs(30),
                Input::Timer(Timer::ReadyDeadline(1))
            )
            .is_empty()
        );
    }

    #[test]
    fn a_missing_program_ends_the_container_with_its_code() {
        let t0 = Instant::now();
        let mut m = Machine::new(settings());
        m.step(t0, Input::ActivationFinished);
        assert_eq!(
            m.step(
                t0,
                Input::SpawnFailed {
                    generation: 1,
                    code: 127
                }
            ),
            vec![Action::Shutdown {
                main: None,
                live: vec![],
                code: Some(127)
            }]
        );
    }

    #[test]
    fn a_spawn_failure_during_a_swap_keeps_the_old_generation_serving() {
        let (mut m, t0) = serving();
        m.step(
            t0,
            Input::LicenseChecked {
                license: lic("b"),
                forced: false,
                withdrawn: false,
            },
        );
        let acts = m.step(
            t0,
            Input::SpawnFailed {
                generation: 2,
                code: 126,
            },
        );
        assert!(acts.is_empty(), "{acts:?}");
        assert_eq!(m.current().unwrap().generation, 1);
        assert_eq!(m.current().unwrap().phase, GenPhase::Ready);
    }

    #[test]
    fn sigterm_shuts_down_with_the_serving_generation_as_main() {
        let (mut m, t0) = serving();
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGTERM)),
            vec![Action::Shutdown {
                main: Some(pid(100)),
                live: vec![pid(100)],
                code: None
            }]
        );
        // nothing happens after that
        assert!(m.step(t0, exited(100, 0)).is_empty());
    }

    /// A swap in progress: generation 2 (pid 200) started, generation 1 (pid 100) told to stop.
    fn swapping() -> (Machine, Instant) {
        let (mut m, t0) = serving();
        m.step(
            t0,
            Input::LicenseChecked {
                license: lic("a"),
                forced: true,
                withdrawn: false,
            },
        );
        m.step(
            t0,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: lic("a"),
            },
        );
        (m, t0)
    }

    #[test]
    fn sigterm_during_a_swap_exits_with_the_code_of_the_generation_that_served() {
        // The new generation may die of the SIGTERM before its handlers exist: its 143 is not
        // how the service stopped.
        let (mut m, t0) = swapping();
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGTERM)),
            vec![Action::Shutdown {
                main: Some(pid(100)),
                live: vec![pid(100), pid(200)],
                code: None
            }]
        );
    }

    #[test]
    fn sigterm_after_the_old_generation_left_but_before_the_new_one_is_ready_keeps_its_code() {
        let (mut m, t0) = swapping();
        m.step(t0, exited(100, 0));
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGTERM)),
            vec![Action::Shutdown {
                main: Some(pid(200)),
                live: vec![pid(200)],
                code: Some(0)
            }]
        );
        // Once the new generation serves, its own exit is what counts.
        let (mut m, t0) = swapping();
        m.step(t0, exited(100, 0));
        m.step(t0, Input::Ready { generation: 2 });
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGTERM)),
            vec![Action::Shutdown {
                main: Some(pid(200)),
                live: vec![pid(200)],
                code: None
            }]
        );
    }

    #[test]
    fn other_signals_are_forwarded_to_the_live_generation_only() {
        let (mut m, t0) = serving();
        m.step(
            t0,
            Input::LicenseChecked {
                license: lic("b"),
                forced: false,
                withdrawn: false,
            },
        );
        m.step(
            t0,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: lic("b"),
            },
        );
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGUSR1)),
            vec![Action::Signal {
                pid: pid(200),
                signal: Signal::SIGUSR1
            }]
        );
    }

    #[test]
    fn realtime_signals_are_forwarded_to_the_live_generation_only() {
        let (mut m, t0) = serving();
        m.step(
            t0,
            Input::LicenseChecked {
                license: lic("b"),
                forced: false,
                withdrawn: false,
            },
        );
        m.step(
            t0,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: lic("b"),
            },
        );
        let rt = Realtime::min_plus(2).unwrap();
        assert_eq!(
            m.step(t0, Input::Realtime(rt)),
            vec![Action::SignalRealtime {
                pid: pid(200),
                signal: rt
            }]
        );
    }

    #[test]
    fn terminal_job_control_signals_are_not_forwarded() {
        let (mut m, t0) = serving();
        for sig in [Signal::SIGTTIN, Signal::SIGTTOU, Signal::SIGCHLD] {
            assert!(
                m.step(t0, Input::Signal(sig)).is_empty(),
                "{sig} was acted on"
            );
        }
    }

    #[test]
    fn orphans_are_ignored() {
        let (mut m, t0) = serving();
        assert!(m.step(t0, exited(4242, 0)).is_empty());
        assert_eq!(m.current().unwrap().phase, GenPhase::Ready);
    }

    #[test]
    fn a_license_change_during_the_restart_backoff_waits_for_the_restart() {
        let (mut m, t0) = serving();
        m.step(t0, exited(100, 1));
        assert!(
            m.step(
                t0,
                Input::LicenseChecked {
                    license: lic("b"),
                    forced: false,
                    withdrawn: false,
                }
            )
            .is_empty()
        );
        assert!(m.restart_pending().is_some());
    }
}
