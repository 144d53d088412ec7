//! The managed-mode lifecycle as a pure state machine: inputs in (start-up facts, signal, child
//! exited, spawned, ready, license checked, license command finished, timer), actions out (spawn a
//! generation or a license command, signal a process or a group, offer the engine to the next
//! generation, timers, license check, release the start-up pages, shutdown).
//!
//! Owns every decision about generations and license work: when to start a generation, when to
//! stop the previous one and what stopping it means (SIGTERM then SIGCONT to edged alone, SIGKILL
//! to its group after the stop timeout), when a stopping generation may hand its engine over (at
//! a swap only), what an unexpected exit costs, when a crash loop ends the container, what a stop
//! of the container signals and what it exits with; whether start-up activation runs, how long it
//! may hold the first generation back (a timer), when it is retried (honouring the server's
//! `Retry-After`), when it gives up or is superseded by a license installed meanwhile; when the
//! periodic sync runs and what its outcome leads to; when start-up is over (the memory it took can
//! go). Must not perform I/O, read the clock (every input carries `now`) or hold process handles:
//! the driver (`driver.rs`) executes the actions and reports their results back as inputs.
//! Logging is the only effect it has; its randomness (the sync jitter) comes from a seed.
//!
//! License work runs as child processes (`privitty-edge license activate|sync|device-id`, see
//! [`Job`]), so PID 1 runs no HTTP or TLS code; their documented exit codes say what happened
//! (0 done, 5 refused, 6 transient, 4 local files, 7 local state).
//!
//! A swap starts generation N+1 first (it loads its license, then blocks on the accounts-dir lock)
//! and only then asks generation N to stop, so the gap in service is N's drain plus N+1's engine
//! start-up; edged's lock keeps the two engines from ever overlapping. Generation N+1 is the spare
//! when there is one ([`Action::SpawnSpare`]): an edged process started [`SPARE_AFTER`] a
//! generation became ready, while nothing else goes on, which waits, idle, until it is woken with
//! its generation's number. A spare that ends is no crash; the next start then spawns as before.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use licensectl::LicenseIdentity;
use licensectl::cli::exit as cli_exit;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::backoff::{Backoff, CrashBudget};
use super::sync;
use crate::pid1::Realtime;

/// Exit code when generations exit unexpectedly more than `crash_limit` times within
/// `crash_window` (EX_SOFTWARE).
pub const EXIT_CRASH_LOOP: i32 = crate::config::exit::CRASH_LOOP;

/// Retry pacing of start-up activation after a transient failure the server gave no
/// `Retry-After` for.
pub const ACTIVATION_RETRY_INITIAL: Duration = Duration::from_millis(250);
pub const ACTIVATION_RETRY_MAX: Duration = Duration::from_secs(30);

/// Generation number; the first is 1.
pub type Gen = u64;

#[derive(Clone, Debug)]
pub struct Settings {
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub crash_limit: u32,
    pub crash_window: Duration,
    pub backoff: Backoff,
    /// A delivery URL is configured: activate at start-up when there is no license.
    pub activate: bool,
    /// How long start-up activation may hold the first generation back.
    pub activation_timeout: Duration,
    /// `None`: no periodic sync.
    pub sync_interval: Option<Duration>,
    /// Seeds the sync jitter (random in production, fixed in tests).
    pub seed: u64,
    /// How long after a generation became ready a spare is started (`None`: no spares). See
    /// [`Action::SpawnSpare`].
    pub spare_after: Option<Duration>,
}

/// What the driver finds before anything starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Boot {
    /// `privitty.lic` exists (whatever it holds).
    pub license_present: bool,
    /// `device.uuid` exists.
    pub device_identity_present: bool,
    /// How long ago the last successful sync (or the activation) was, per `activation.json`;
    /// `None` when unknown, or when the recorded time is in the future (the clock went back).
    pub since_last_sync: Option<Duration>,
}

/// A license command privitty-init runs as a child process, reaped like every other child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    /// `privitty-edge license activate -`, the delivery URL on its standard input (never in argv).
    Activate,
    /// `privitty-edge license sync`.
    Sync,
    /// `privitty-edge license device-id`: stores the device identity at first boot.
    DeviceIdentity,
}

/// How a license command ended: its exit code and what it said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobReport {
    /// Its exit code; 128+N when signal N killed it; 126/127 when it could not be started.
    pub code: i32,
    /// The error it printed (`error: …`, without the prefix; never holds the TOKEN).
    pub error: Option<String>,
    /// How long the license server asked to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// Its first line of output (`activated (new seat)`, `synced (license updated; …)`).
    pub summary: Option<String>,
    /// The license it installed or refreshed (`license jti: …`).
    pub jti: Option<String>,
}

impl JobReport {
    /// Whether trying again later may succeed: the server was unreachable or answered with a
    /// transient error (6), the command failed internally (1) or was killed (128+N).
    fn transient(&self) -> bool {
        let code = self.code;
        code == i32::from(cli_exit::UNREACHABLE)
            || code == i32::from(cli_exit::INTERNAL)
            || code > 128
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The first input: what the driver found on disk. Start-up activation or the first
    /// generation follows.
    Boot(Boot),
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
    /// The driver started the spare asked for by `Action::SpawnSpare`.
    SpareSpawned {
        pid: Pid,
    },
    /// `Action::SpawnSpare` failed before the program ran.
    SpareFailed {
        code: i32,
    },
    /// `Action::Wake { generation }` could not reach the spare (it is gone, or its pipe is
    /// broken); the driver has killed what is left of it.
    WakeFailed {
        generation: Gen,
    },
    /// The generation sent `READY=1`.
    Ready {
        generation: Gen,
    },
    /// A child of ours ended (any child but a license command: orphans are reported too and
    /// ignored here).
    Exited {
        pid: Pid,
        status: WaitStatus,
    },
    Signal(Signal),
    /// A realtime signal (SIGRTMIN…SIGRTMAX): forwarded, it has no meaning of its own here.
    Realtime(Realtime),
    /// The result of a license check; `license` is `None` when no valid license is on disk, and
    /// `withdrawn` says that is because its activation was deactivated or revoked (authoritative,
    /// unlike a file that does not verify). `present`: a `privitty.lic` exists, valid or not.
    LicenseChecked {
        license: Option<LicenseIdentity>,
        forced: bool,
        withdrawn: bool,
        present: bool,
    },
    /// The process for `Action::SpawnJob { job }` runs.
    JobSpawned {
        job: Job,
        pid: Pid,
    },
    /// The license command ended (or could not be started: code 126/127).
    JobFinished {
        job: Job,
        report: JobReport,
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
    /// Start-up activation has had `activation_timeout`: the first generation starts anyway.
    ActivationDeadline,
    /// The wait after a transient activation failure is over.
    ActivationRetry,
    /// The periodic license sync is due.
    Sync,
    /// Swaps have been quiet for [`RELEASE_QUIET`]: the start-up pages can go.
    ReleasePages,
    /// `spare_after` has passed since a generation became ready: time for a spare.
    Spare,
}

/// How long after a generation became ready privitty-init starts a spare (`PRIVITTY_SPARE`):
/// after the catch-up that follows a swap (the requests that waited for it), so that the spare's
/// start does not compete with it, and long before a license change usually comes.
pub const SPARE_AFTER: Duration = Duration::from_millis(100);

/// How long after a generation became ready (other than the first) privitty-init releases its
/// start-up pages: the swap's own code faults back in at the next swap, so releasing after each
/// one of a burst (a license server pushing, a script sending SIGHUP) would spend its CPU on
/// every swap, while clients wait for the new generation.
pub const RELEASE_QUIET: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start generation `generation`; answer with `Input::Spawned` or `Input::SpawnFailed`.
    Spawn { generation: Gen },
    /// Start a spare: privitty-edged as it would start for a generation, but told (by the
    /// `wake` descriptor) to wait, its runtime set up and nothing read, until `Action::Wake`
    /// names its generation. It takes exec, the loader and the runtime's start out of the next
    /// swap. Answer with `Input::SpareSpawned` or `Input::SpareFailed`.
    SpawnSpare,
    /// Start generation `generation` by waking the spare; answer with `Input::Spawned` (its pid
    /// the spare's) or `Input::WakeFailed`.
    Wake { generation: Gen },
    /// Signal one process (an edged generation, never its whole group: its engine must keep
    /// answering while edged drains in-flight requests).
    Signal { pid: Pid, signal: Signal },
    /// [`Action::Signal`] for a realtime signal.
    SignalRealtime { pid: Pid, signal: Realtime },
    /// Signal a whole process group: SIGKILL to what is left of an exited or overdue generation,
    /// SIGTERM to a license command at a stop. One that is already gone is not an error.
    SignalGroup { pgid: Pid, signal: Signal },
    /// Feed `Input::Timer(timer)` back at `at`.
    SetTimer { at: Instant, timer: Timer },
    /// Read and verify the license on disk; answer with `Input::LicenseChecked { forced, .. }`.
    CheckLicense { forced: bool },
    /// Run the license command `job`; answer with `Input::JobSpawned`, then `Input::JobFinished`.
    SpawnJob { job: Job },
    /// Write the swap token for `generation` to the engine pair. Comes just before that
    /// generation's stop signals, and only when a swap stops it (the next generation was just
    /// spawned): a generation told to stop with its token may hand its running engine over instead
    /// of stopping it. One stopped without a token (a stop of the container, a missed ready
    /// deadline) stops its engine: nothing would take it over. A token that cannot be written
    /// costs the next generation an engine start, nothing more.
    OfferEngine { generation: Gen },
    /// Close the connections waiting in the hand-over pair: the generation that was to take them
    /// over from its predecessor ended before serving, and no generation serves now. Closed,
    /// they end cleanly for their clients instead of waiting for a restart that may never serve.
    CloseHandedConnections,
    /// A generation serves again, after start-up or a swap: what starting it took (pages of our
    /// own executable, freed heap) is not needed until the next start (see
    /// `pid1::release_startup_pages`).
    ReleaseStartupPages,
    /// The last action: the stop signals went out with the actions before it. Wait up to the stop
    /// timeout for every process to exit, SIGKILL what is left, and exit with `code`, or, when
    /// `None`, with `main`'s exit status (0 when there is no main).
    Shutdown {
        main: Option<Pid>,
        code: Option<i32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Start-up activation holds the first generation back.
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

/// The spare generation ([`Action::SpawnSpare`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spare {
    None,
    /// `Action::SpawnSpare` issued, no pid yet.
    Spawning,
    /// Started, waiting to be woken.
    Waiting(Pid),
}

/// Where start-up activation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Not configured, not needed (a license was present), or over.
    Idle,
    /// Attempt `n` runs.
    Running(u32),
    /// Attempt `n` failed transiently; [`Timer::ActivationRetry`] starts the next one.
    Waiting(u32),
    /// The retry after attempt `n` is due: a license check says first whether a license was
    /// installed meanwhile.
    Checking(u32),
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
    /// When the start-up pages are to be released ([`Timer::ReleasePages`]), if they are.
    release_at: Option<Instant>,
    /// How the last generation that served ended, when it left during a swap and the next one is
    /// not ready yet: a stop then exits with this, not with the newcomer's.
    served: Option<WaitStatus>,
    /// Generations started to replace a serving one, since start (handed to each generation).
    swaps: u64,
    /// Generations that ended unexpectedly or never became ready, since start.
    crashes_total: u64,
    activation: Activation,
    activation_backoff: Backoff,
    /// Whether a `privitty.lic` was on disk at the last look (start-up, or a license check).
    license_present: bool,
    spare: Spare,
    /// License commands asked for (the pid once it runs).
    jobs: BTreeMap<Job, Option<Pid>>,
    rng: fastrand::Rng,
}

impl Machine {
    pub fn new(settings: Settings) -> Machine {
        Machine {
            crashes: CrashBudget::new(settings.crash_limit, settings.crash_window),
            backoff: settings.backoff.clone(),
            rng: fastrand::Rng::with_seed(settings.seed),
            settings,
            phase: Phase::Activating,
            next_gen: 1,
            gens: Vec::new(),
            pending_swap: false,
            restart_at: None,
            ever_ready: false,
            release_at: None,
            served: None,
            swaps: 0,
            crashes_total: 0,
            activation: Activation::Idle,
            activation_backoff: Backoff::new(
                ACTIVATION_RETRY_INITIAL,
                ACTIVATION_RETRY_MAX,
                Duration::MAX,
            ),
            license_present: false,
            spare: Spare::None,
            jobs: BTreeMap::new(),
        }
    }

    /// The spare, if one is there or being started.
    pub fn spare(&self) -> Spare {
        self.spare
    }

    /// Swaps so far: generations started to replace a serving one (a new license, a withdrawal,
    /// SIGHUP). Each generation gets it as `PRIVITTY_GENERATION_SWAPS`.
    pub fn swaps(&self) -> u64 {
        self.swaps
    }

    /// Generations so far that exited unexpectedly, failed to start, or missed the ready
    /// deadline. Each generation gets it as `PRIVITTY_GENERATION_CRASHES`.
    pub fn crashes_total(&self) -> u64 {
        self.crashes_total
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn activation(&self) -> Activation {
        self.activation
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
            Input::Boot(boot) => self.on_boot(now, boot, &mut out),
            Input::Spawned {
                generation,
                pid,
                license,
            } => self.on_spawned(now, generation, pid, license, &mut out),
            Input::SpawnFailed { generation, code } => {
                self.on_spawn_failed(now, generation, code, &mut out)
            }
            Input::Ready { generation } => self.on_ready(now, generation, &mut out),
            Input::SpareSpawned { pid } => {
                if self.spare == Spare::Spawning {
                    self.spare = Spare::Waiting(pid);
                    tracing::info!(
                        pid = pid.as_raw(),
                        "spare started: it waits, idle, to become the next generation"
                    );
                }
            }
            Input::SpareFailed { code } => {
                // The driver said why; the next generation to become ready tries again.
                self.spare = Spare::None;
                tracing::debug!(code, "no spare");
            }
            Input::WakeFailed { generation } => {
                tracing::warn!(
                    generation,
                    "the spare could not be woken; starting the generation from scratch"
                );
                if self
                    .gens
                    .iter()
                    .any(|g| g.generation == generation && g.phase == GenPhase::Spawning)
                {
                    out.push(Action::Spawn { generation });
                }
            }
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
                present,
            } => {
                self.license_present = present;
                self.on_license(now, license, forced, withdrawn, &mut out);
                if let Activation::Checking(attempt) = self.activation {
                    self.retry_activation(now, attempt, &mut out);
                }
            }
            Input::JobSpawned { job, pid } => {
                if let Some(slot) = self.jobs.get_mut(&job) {
                    *slot = Some(pid);
                }
            }
            Input::JobFinished { job, report } => {
                self.jobs.remove(&job);
                match job {
                    Job::Activate => self.on_activation_done(now, report, &mut out),
                    Job::Sync => self.on_sync_done(now, report, &mut out),
                    Job::DeviceIdentity => on_identity_done(&report),
                }
            }
            Input::Timer(timer) => self.on_timer(now, timer, &mut out),
        }
        out
    }

    fn on_boot(&mut self, now: Instant, boot: Boot, out: &mut Vec<Action>) {
        if self.phase != Phase::Activating || !self.gens.is_empty() {
            return;
        }
        self.license_present = boot.license_present;
        if let Some(interval) = self.settings.sync_interval {
            let wait = sync::first_wait(interval, boot.since_last_sync, self.rng.f64());
            self.schedule_sync(now, wait, out);
        }
        if self.settings.activate && !boot.license_present {
            tracing::info!(
                timeout = %humantime::format_duration(self.settings.activation_timeout),
                "no license yet: activating before serving"
            );
            self.activation = Activation::Running(1);
            self.spawn_job(Job::Activate, out);
            out.push(Action::SetTimer {
                at: now + self.settings.activation_timeout,
                timer: Timer::ActivationDeadline,
            });
            return;
        }
        if self.settings.activate {
            tracing::info!("privitty.lic is present: start-up activation skipped");
        }
        if !boot.device_identity_present {
            // So that an operator can read it from `license status` and have a license issued
            // offline for this device (file-drop provisioning).
            self.spawn_job(Job::DeviceIdentity, out);
        }
        self.end_activation_phase(now, out);
    }

    /// The first generation starts (once): activation is over, or it is left to the background.
    fn end_activation_phase(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.phase == Phase::Activating {
            self.phase = Phase::Running;
            self.start_generation(now, out);
        }
    }

    fn spawn_job(&mut self, job: Job, out: &mut Vec<Action>) {
        self.jobs.insert(job, None);
        out.push(Action::SpawnJob { job });
    }

    fn schedule_sync(&mut self, now: Instant, wait: Duration, out: &mut Vec<Action>) {
        tracing::debug!(next_in = %humantime::format_duration(wait), "license sync scheduled");
        out.push(Action::SetTimer {
            at: now + wait,
            timer: Timer::Sync,
        });
    }

    fn on_activation_done(&mut self, now: Instant, report: JobReport, out: &mut Vec<Action>) {
        let attempt = match self.activation {
            Activation::Running(n) | Activation::Waiting(n) | Activation::Checking(n) => n,
            Activation::Idle => 1,
        };
        let error = report.error.as_deref().unwrap_or("");
        if report.code == i32::from(cli_exit::OK) {
            tracing::info!(
                attempt,
                license = report.jti.as_deref(),
                new_seat = report
                    .summary
                    .as_deref()
                    .is_some_and(|s| s.contains("new seat")),
                "license activated"
            );
            self.activation = Activation::Idle;
            if self.phase == Phase::Activating {
                self.end_activation_phase(now, out);
            } else {
                // Late (in the background): it takes effect like any new license.
                out.push(Action::CheckLicense { forced: false });
            }
            return;
        }
        if report.transient() {
            let delay = report
                .retry_after
                .unwrap_or_else(|| self.activation_backoff.next_delay());
            tracing::warn!(
                attempt,
                code = report.code,
                error,
                retry_in_ms = delay.as_millis() as u64,
                "license activation failed; retrying"
            );
            self.activation = Activation::Waiting(attempt);
            out.push(Action::SetTimer {
                at: now + delay,
                timer: Timer::ActivationRetry,
            });
            return;
        }
        if report.code == i32::from(cli_exit::REFUSED) {
            tracing::error!(
                attempt,
                error,
                "license activation refused; not retrying. Gated calls stay blocked until a \
                 license is installed: check the delivery URL with your administrator, then run \
                 `privitty-edge license activate <url>` (no restart needed)"
            );
        } else {
            tracing::error!(
                attempt,
                code = report.code,
                error,
                "license activation failed for a reason retrying cannot fix; not retrying. Fix \
                 what the error names, then run `privitty-edge license activate <url>` (no \
                 restart needed)"
            );
        }
        self.activation = Activation::Idle;
        self.end_activation_phase(now, out);
    }

    /// The wait after a transient failure is over: look at the files first (a license may have
    /// been installed meanwhile, and activating now would take a second seat and replace it).
    fn on_activation_retry(&mut self, out: &mut Vec<Action>) {
        if let Activation::Waiting(attempt) = self.activation {
            self.activation = Activation::Checking(attempt);
            out.push(Action::CheckLicense { forced: false });
        }
    }

    /// After the check that [`Machine::on_activation_retry`] asked for: the next attempt, or the
    /// end of activation when a license is there now.
    fn retry_activation(&mut self, now: Instant, attempt: u32, out: &mut Vec<Action>) {
        if self.license_present {
            tracing::info!(
                attempt = attempt + 1,
                "a license was installed meanwhile; start-up activation stops (the installed \
                 license is used, and no second seat is taken)"
            );
            self.activation = Activation::Idle;
            // Serving already: the check that saw the new license has swapped to it.
            self.end_activation_phase(now, out);
            return;
        }
        self.activation = Activation::Running(attempt + 1);
        self.spawn_job(Job::Activate, out);
    }

    fn on_sync_done(&mut self, now: Instant, report: JobReport, out: &mut Vec<Action>) {
        match report.code {
            0 => tracing::info!(
                license = report.jti.as_deref(),
                changed = report
                    .summary
                    .as_deref()
                    .is_some_and(|s| s.contains("license updated")),
                "periodic license sync done"
            ),
            code if code == i32::from(cli_exit::STATE) => {
                tracing::debug!("not activated (or the activation was withdrawn); no license sync")
            }
            code => tracing::warn!(
                code,
                error = report.error.as_deref().unwrap_or(""),
                "license sync failed; the current license stays in use and the next sync retries"
            ),
        }
        // A refreshed license, or one the server revoked (which the sync moved aside), goes
        // through the same check as a dropped file; an unchanged one does not swap.
        if report.code == 0 || report.code == i32::from(cli_exit::REFUSED) {
            out.push(Action::CheckLicense { forced: false });
        }
        if let Some(interval) = self.settings.sync_interval {
            let wait = sync::jittered(interval, self.rng.f64());
            self.schedule_sync(now, wait, out);
        }
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
        if let Spare::Waiting(_) = self.spare {
            self.spare = Spare::None;
            out.push(Action::Wake { generation });
        } else {
            out.push(Action::Spawn { generation });
        }
    }

    /// Whether now is a good time to start a spare: one generation serves and nothing else is
    /// going on (no swap, no restart), and there is no spare yet.
    fn spare_wanted(&self) -> bool {
        self.settings.spare_after.is_some()
            && self.phase == Phase::Running
            && self.spare == Spare::None
            && !self.pending_swap
            && self.restart_at.is_none()
            && !self.gens.is_empty()
            && self.gens.iter().all(|g| g.phase == GenPhase::Ready)
    }

    /// `swap`: the next generation was just spawned to replace this one, which may then hand its
    /// engine over (the token goes out before the signals, so it is there when edged drains).
    fn stop_generation(&mut self, now: Instant, idx: usize, swap: bool, out: &mut Vec<Action>) {
        let g = &mut self.gens[idx];
        g.phase = GenPhase::Stopping;
        if let Some(pid) = g.pid {
            if swap {
                out.push(Action::OfferEngine {
                    generation: g.generation,
                });
            }
            ask_to_stop(pid, out);
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
                self.stop_generation(now, i, true, out);
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
        let first = !self.ever_ready;
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
            self.swaps += 1;
            self.start_generation(now, out);
            return;
        }
        if let Some(after) = self.settings.spare_after
            && self.spare == Spare::None
        {
            out.push(Action::SetTimer {
                at: now + after,
                timer: Timer::Spare,
            });
        }
        if first {
            out.push(Action::ReleaseStartupPages);
        } else {
            let at = now + RELEASE_QUIET;
            self.release_at = Some(at);
            out.push(Action::SetTimer {
                at,
                timer: Timer::ReleasePages,
            });
        }
    }

    fn on_exited(&mut self, now: Instant, pid: Pid, status: WaitStatus, out: &mut Vec<Action>) {
        if self.spare == Spare::Waiting(pid) {
            // It never served: no crash, no restart. The next swap starts from scratch, and the
            // next generation to become ready brings a new spare.
            self.spare = Spare::None;
            tracing::warn!(
                pid = pid.as_raw(),
                status = ?status,
                "the spare ended before it was needed; the next generation starts from scratch"
            );
            return;
        }
        let Some(idx) = self.gens.iter().position(|g| g.pid == Some(pid)) else {
            return;
        };
        let g = self.gens.remove(idx);
        // Whatever the generation left behind in its group (its engine) must not outlive it.
        out.push(Action::SignalGroup {
            pgid: pid,
            signal: Signal::SIGKILL,
        });
        if g.phase == GenPhase::Stopping {
            tracing::info!(generation = g.generation, pid = pid.as_raw(), status = ?status, "generation stopped");
            if g.ready_at.is_some() {
                self.served = Some(status);
            }
            return;
        }
        if !self.gens.iter().any(|g| g.phase == GenPhase::Ready) {
            out.push(Action::CloseHandedConnections);
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
        self.crashes_total += 1;
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
            self.swaps += 1;
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
                // No token: its replacement is not running yet, and an engine that did not make
                // its generation ready in time is no engine to keep.
                self.stop_generation(now, idx, false, out);
                self.crashes_total += 1;
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
                    out.push(Action::SignalGroup {
                        pgid: pid,
                        signal: Signal::SIGKILL,
                    });
                }
            }
            Timer::Restart => {
                if self.restart_at.is_some_and(|at| at <= now) {
                    self.start_generation(now, out);
                }
            }
            Timer::ActivationDeadline => {
                if self.phase == Phase::Activating {
                    tracing::warn!(
                        timeout = %humantime::format_duration(self.settings.activation_timeout),
                        "license activation did not finish in time: starting unlicensed \
                         (read-only calls work) and retrying in the background"
                    );
                    self.end_activation_phase(now, out);
                }
            }
            Timer::ActivationRetry => self.on_activation_retry(out),
            Timer::Sync => {
                if !self.jobs.contains_key(&Job::Sync) {
                    self.spawn_job(Job::Sync, out);
                }
            }
            // An earlier timer of a burst, or one that fires during the next swap (whose ready
            // sets a new one), does nothing.
            Timer::ReleasePages => {
                let starting = self
                    .gens
                    .iter()
                    .any(|g| matches!(g.phase, GenPhase::Spawning | GenPhase::Starting));
                if !starting && self.release_at.is_some_and(|at| at <= now) {
                    self.release_at = None;
                    out.push(Action::ReleaseStartupPages);
                }
            }
            Timer::Spare => {
                if self.spare_wanted() {
                    self.spare = Spare::Spawning;
                    out.push(Action::SpawnSpare);
                } else if let Some(after) = self.settings.spare_after
                    && self.spare == Spare::None
                    && self.gens.iter().any(|g| g.phase == GenPhase::Ready)
                {
                    // The previous generation is still stopping (or a swap began): later.
                    out.push(Action::SetTimer {
                        at: now + after,
                        timer: Timer::Spare,
                    });
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
        // edged first, not its group: its engine must answer while edged drains requests. Every
        // generation, the stopping ones too: a repeated SIGTERM is harmless, and one stopped by a
        // forwarded SIGTSTP gets its SIGCONT.
        for pid in self.gens.iter().filter_map(|g| g.pid) {
            ask_to_stop(pid, out);
        }
        // A spare gets no signal: the driver closes its wake pipe, and it exits 0 without a word
        // (a SIGTERM would have it log a stop of a generation it never was).
        // A license command (waiting for the lock, or for the server) has nothing to finish.
        for pid in self.jobs.values().flatten() {
            out.push(Action::SignalGroup {
                pgid: *pid,
                signal: Signal::SIGTERM,
            });
        }
        out.push(Action::Shutdown { main, code });
    }
}

/// What a stop signal to a generation means: SIGTERM, then SIGCONT. A generation stopped by a
/// forwarded SIGTSTP acts on SIGTERM only once continued; otherwise it would hold the data-dir
/// lock (and the next generation would wait) until the kill deadline.
fn ask_to_stop(pid: Pid, out: &mut Vec<Action>) {
    for signal in [Signal::SIGTERM, Signal::SIGCONT] {
        out.push(Action::Signal { pid, signal });
    }
}

fn on_identity_done(report: &JobReport) {
    if report.code == 0 {
        tracing::debug!("device identity stored");
    } else {
        tracing::error!(
            code = report.code,
            error = report.error.as_deref().unwrap_or(""),
            "cannot store the device identity; gated calls stay unavailable until this is fixed"
        );
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
            activate: false,
            activation_timeout: Duration::from_secs(30),
            sync_interval: None,
            seed: 7,
            spare_after: None,
        }
    }

    /// Start-up with nothing to do before the first generation.
    fn boot() -> Input {
        Input::Boot(Boot {
            device_identity_present: true,
            ..Boot::default()
        })
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

    fn cont(n: i32) -> Action {
        Action::Signal {
            pid: pid(n),
            signal: Signal::SIGCONT,
        }
    }

    fn kill_group(n: i32) -> Action {
        Action::SignalGroup {
            pgid: pid(n),
            signal: Signal::SIGKILL,
        }
    }

    /// A stop of the whole tree: SIGTERM then SIGCONT to each generation, SIGTERM to each license
    /// command's group, then the wait for them all and the exit.
    fn stop(gens: &[i32], jobs: &[i32], main: Option<i32>, code: Option<i32>) -> Vec<Action> {
        let mut acts: Vec<Action> = gens.iter().flat_map(|&n| [term(n), cont(n)]).collect();
        acts.extend(jobs.iter().map(|&n| Action::SignalGroup {
            pgid: pid(n),
            signal: Signal::SIGTERM,
        }));
        acts.push(Action::Shutdown {
            main: main.map(pid),
            code,
        });
        acts
    }

    /// A machine whose generation 1 (pid 100) is serving with license "a", at `t0`.
    /// Generation 1 spawned without a license, not ready yet.
    fn starting_unlicensed() -> (Machine, Instant) {
        let t0 = Instant::now();
        let mut m = Machine::new(settings());
        m.step(t0, boot());
        m.step(
            t0,
            Input::Spawned {
                generation: 1,
                pid: pid(100),
                license: None,
            },
        );
        (m, t0)
    }

    fn serving() -> (Machine, Instant) {
        let t0 = Instant::now();
        let mut m = Machine::new(settings());
        assert_eq!(m.step(t0, boot()), vec![Action::Spawn { generation: 1 }]);
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
        assert_eq!(
            m.step(t0, Input::Ready { generation: 1 }),
            vec![Action::ReleaseStartupPages]
        );
        (m, t0)
    }

    /// [`serving`] with spares on, once the spare is due: generation 1 (pid 100) serves, and
    /// `Action::SpawnSpare` has just gone out (at the returned time).
    fn spare_asked_for() -> (Machine, Instant) {
        let t0 = Instant::now();
        let mut m = Machine::new(Settings {
            spare_after: Some(SPARE_AFTER),
            ..settings()
        });
        m.step(t0, boot());
        m.step(
            t0,
            Input::Spawned {
                generation: 1,
                pid: pid(100),
                license: lic("a"),
            },
        );
        let acts = m.step(t0, Input::Ready { generation: 1 });
        assert_eq!(
            acts,
            vec![
                Action::SetTimer {
                    at: t0 + SPARE_AFTER,
                    timer: Timer::Spare
                },
                Action::ReleaseStartupPages
            ]
        );
        let t1 = t0 + SPARE_AFTER;
        assert_eq!(
            m.step(t1, Input::Timer(Timer::Spare)),
            vec![Action::SpawnSpare]
        );
        assert_eq!(m.spare(), Spare::Spawning);
        (m, t1)
    }

    /// [`serving`] with spares on: generation 1 (pid 100) serves, and the spare (pid 900) waits.
    fn serving_with_spare() -> (Machine, Instant) {
        let (mut m, t1) = spare_asked_for();
        assert!(m.step(t1, Input::SpareSpawned { pid: pid(900) }).is_empty());
        assert_eq!(m.spare(), Spare::Waiting(pid(900)));
        (m, t1)
    }

    fn new_license(jti: &str) -> Input {
        Input::LicenseChecked {
            license: lic(jti),
            forced: false,
            withdrawn: false,
            present: true,
        }
    }

    #[test]
    fn a_swap_wakes_the_spare_and_the_next_ready_brings_a_new_one() {
        let (mut m, t1) = serving_with_spare();
        assert_eq!(
            m.step(t1, new_license("b")),
            vec![Action::Wake { generation: 2 }]
        );
        assert_eq!(m.spare(), Spare::None);
        assert_eq!(m.swaps(), 1);
        // The driver answers as for a spawn, with the spare's pid; the rest of the swap is the same.
        let acts = m.step(
            t1,
            Input::Spawned {
                generation: 2,
                pid: pid(900),
                license: lic("b"),
            },
        );
        assert!(acts.contains(&Action::OfferEngine { generation: 1 }));
        assert!(acts.contains(&term(100)));
        // No spare while the swap goes on: its start would compete with the swap.
        assert!(m.step(t1, Input::Timer(Timer::Spare)).is_empty());
        m.step(t1, exited(100, 0));
        let acts = m.step(t1, Input::Ready { generation: 2 });
        assert!(acts.contains(&Action::SetTimer {
            at: t1 + SPARE_AFTER,
            timer: Timer::Spare
        }));
        assert_eq!(
            m.step(t1 + SPARE_AFTER, Input::Timer(Timer::Spare)),
            vec![Action::SpawnSpare]
        );
        assert_eq!(m.generations()[0].pid, Some(pid(900)));
    }

    #[test]
    fn a_spare_waits_while_the_previous_generation_is_still_stopping() {
        let (mut m, t1) = serving_with_spare();
        m.step(t1, new_license("b"));
        m.step(
            t1,
            Input::Spawned {
                generation: 2,
                pid: pid(900),
                license: lic("b"),
            },
        );
        m.step(t1, Input::Ready { generation: 2 });
        // Generation 1 has not exited yet: the timer is set again rather than a spare started.
        let t2 = t1 + SPARE_AFTER;
        assert_eq!(
            m.step(t2, Input::Timer(Timer::Spare)),
            vec![Action::SetTimer {
                at: t2 + SPARE_AFTER,
                timer: Timer::Spare
            }]
        );
        m.step(t2, exited(100, 0));
        assert_eq!(
            m.step(t2 + SPARE_AFTER, Input::Timer(Timer::Spare)),
            vec![Action::SpawnSpare]
        );
    }

    #[test]
    fn a_spare_that_ends_is_no_crash_and_the_next_swap_starts_from_scratch() {
        let (mut m, t1) = serving_with_spare();
        assert!(
            m.step(t1, exited(900, 137)).is_empty(),
            "no restart, no kill"
        );
        assert_eq!((m.spare(), m.crashes_total()), (Spare::None, 0));
        assert_eq!(
            m.step(t1, new_license("b")),
            vec![Action::Spawn { generation: 2 }]
        );
    }

    #[test]
    fn a_spare_that_cannot_be_woken_is_replaced_by_a_spawn() {
        let (mut m, t1) = serving_with_spare();
        assert_eq!(
            m.step(t1, new_license("b")),
            vec![Action::Wake { generation: 2 }]
        );
        assert_eq!(
            m.step(t1, Input::WakeFailed { generation: 2 }),
            vec![Action::Spawn { generation: 2 }]
        );
        // Its exit, reported later, is nobody's: the generation has no pid yet.
        assert!(m.step(t1, exited(900, 1)).is_empty());
        assert_eq!(m.crashes_total(), 0);
    }

    #[test]
    fn a_crashed_generation_is_restarted_from_the_spare() {
        let (mut m, t1) = serving_with_spare();
        m.step(t1, exited(100, 1));
        assert_eq!(m.crashes_total(), 1);
        let restart = m.restart_pending().unwrap();
        assert_eq!(
            m.step(restart, Input::Timer(Timer::Restart)),
            vec![Action::Wake { generation: 2 }]
        );
    }

    #[test]
    fn a_stop_leaves_the_spare_to_its_pipe_and_a_failed_spare_is_not_retried_until_the_next_ready()
    {
        let (mut m, t1) = serving_with_spare();
        // The spare (900) is not signalled: the driver's shutdown closes its pipe.
        assert_eq!(
            m.step(t1, Input::Signal(Signal::SIGTERM)),
            stop(&[100], &[], Some(100), None)
        );

        let (mut m, t0) = serving();
        // Spares off (the default of these tests): no timer was set, and none comes.
        assert!(m.step(t0, Input::Timer(Timer::Spare)).is_empty());

        let (mut m, t0) = spare_asked_for();
        // No timer, so no retry loop: the next ready sets one.
        assert!(m.step(t0, Input::SpareFailed { code: 127 }).is_empty());
        assert_eq!(m.spare(), Spare::None);
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
                    present: true,
                }
            )
            .is_empty()
        );
        assert!(m.step(t0, Input::Timer(Timer::Restart)).is_empty());
        assert_eq!(m.phase(), Phase::Activating);
        assert_eq!(m.step(t0, boot()), vec![Action::Spawn { generation: 1 }]);
    }

    #[test]
    fn swaps_and_crashes_are_counted_for_the_next_generations() {
        let (mut m, t0) = serving();
        assert_eq!((m.swaps(), m.crashes_total()), (0, 0));
        let swap = Input::LicenseChecked {
            license: lic("b"),
            forced: false,
            withdrawn: false,
            present: true,
        };
        assert_eq!(m.step(t0, swap), vec![Action::Spawn { generation: 2 }]);
        assert_eq!(
            (m.swaps(), m.crashes_total()),
            (1, 0),
            "counted before the spawn"
        );
        m.step(
            t0,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: lic("b"),
            },
        );
        m.step(t0, exited(100, 0));
        m.step(t0, Input::Ready { generation: 2 });
        // An unexpected exit is counted before the restart it leads to.
        m.step(t0, exited(200, 1));
        assert_eq!((m.swaps(), m.crashes_total()), (1, 1));
        let restart = t0 + Duration::from_secs(60);
        assert_eq!(
            m.step(restart, Input::Timer(Timer::Restart)),
            vec![Action::Spawn { generation: 3 }]
        );
        assert_eq!(
            (m.swaps(), m.crashes_total()),
            (1, 1),
            "a restart is no swap"
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
                present: true,
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
        assert!(
            acts.contains(&Action::OfferEngine { generation: 1 }),
            "{acts:?}"
        );
        assert!(acts.contains(&Action::SetTimer {
            at: t0 + Duration::from_secs(8),
            timer: Timer::KillDeadline(1)
        }));
        // the old generation's exit is expected: no restart, its group is cleaned up
        assert_eq!(m.step(t0, exited(100, 0)), vec![kill_group(100)]);
        assert_eq!(
            m.step(t0, Input::Ready { generation: 2 }),
            vec![Action::SetTimer {
                at: t0 + RELEASE_QUIET,
                timer: Timer::ReleasePages
            }]
        );
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
                present: true,
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
                present: true,
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
            present: true,
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
                    present: true,
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
            present: true,
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
        assert_eq!(
            m.step(t0, Input::Ready { generation: 3 }),
            vec![Action::SetTimer {
                at: t0 + RELEASE_QUIET,
                timer: Timer::ReleasePages
            }]
        );
    }

    #[test]
    fn an_unexpected_exit_restarts_with_growing_backoff() {
        let (mut m, t0) = serving();
        let acts = m.step(t0, exited(100, 1));
        assert_eq!(
            acts,
            vec![
                kill_group(100),
                // Nothing serves now: connections handed over to nobody are closed.
                Action::CloseHandedConnections,
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
        m.step(t0, boot());
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
        m.step(t0, boot());
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
                present: true,
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
        // generation 2 dies before ready while 1 is stopping: another one is scheduled, and what
        // 1 handed over so far is closed rather than left waiting for it
        let acts = m.step(t0, exited(200, 1));
        assert!(acts.contains(&Action::CloseHandedConnections), "{acts:?}");
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
        let (mut m, t0) = starting_unlicensed();
        let t1 = t0 + Duration::from_secs(30);
        let acts = m.step(t1, Input::Timer(Timer::ReadyDeadline(1)));
        assert_eq!(
            acts,
            vec![
                term(100),
                cont(100),
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
            vec![kill_group(100)]
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
        m.step(t0, boot());
        assert_eq!(
            m.step(
                t0,
                Input::SpawnFailed {
                    generation: 1,
                    code: 127
                }
            ),
            stop(&[], &[], None, Some(127))
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
                present: true,
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
            stop(&[100], &[], Some(100), None)
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
                present: true,
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
            stop(&[100, 200], &[], Some(100), None)
        );
    }

    #[test]
    fn sigterm_after_the_old_generation_left_but_before_the_new_one_is_ready_keeps_its_code() {
        let (mut m, t0) = swapping();
        m.step(t0, exited(100, 0));
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGTERM)),
            stop(&[200], &[], Some(200), Some(0))
        );
        // Once the new generation serves, its own exit is what counts.
        let (mut m, t0) = swapping();
        m.step(t0, exited(100, 0));
        m.step(t0, Input::Ready { generation: 2 });
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGTERM)),
            stop(&[200], &[], Some(200), None)
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
                present: true,
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
                present: true,
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
                    present: true,
                }
            )
            .is_empty()
        );
        assert!(m.restart_pending().is_some());
    }

    fn activating() -> Settings {
        Settings {
            activate: true,
            ..settings()
        }
    }

    fn report(code: i32) -> JobReport {
        JobReport {
            code,
            ..JobReport::default()
        }
    }

    fn job_done(job: Job, code: i32) -> Input {
        Input::JobFinished {
            job,
            report: report(code),
        }
    }

    fn checked(present: bool) -> Input {
        Input::LicenseChecked {
            license: present.then(|| lic("x")).flatten(),
            forced: false,
            withdrawn: false,
            present,
        }
    }

    /// Booted without a license and with a URL: activation attempt 1 runs (pid 50).
    fn activation_started() -> (Machine, Instant) {
        let t0 = Instant::now();
        let mut m = Machine::new(activating());
        assert_eq!(
            m.step(t0, Input::Boot(Boot::default())),
            vec![
                Action::SpawnJob { job: Job::Activate },
                Action::SetTimer {
                    at: t0 + Duration::from_secs(30),
                    timer: Timer::ActivationDeadline
                },
            ]
        );
        assert!(
            m.step(
                t0,
                Input::JobSpawned {
                    job: Job::Activate,
                    pid: pid(50)
                }
            )
            .is_empty()
        );
        (m, t0)
    }

    #[test]
    fn startup_activation_holds_the_first_generation_back_until_it_succeeds() {
        let (mut m, t0) = activation_started();
        assert_eq!(m.phase(), Phase::Activating);
        // A license check meanwhile (the activation writing files) starts nothing.
        assert!(m.step(t0, checked(true)).is_empty());
        assert_eq!(
            m.step(t0, job_done(Job::Activate, 0)),
            vec![Action::Spawn { generation: 1 }]
        );
        assert_eq!(m.activation(), Activation::Idle);
        // The deadline that comes later changes nothing.
        assert!(
            m.step(t0, Input::Timer(Timer::ActivationDeadline))
                .is_empty()
        );
    }

    #[test]
    fn transient_failures_are_retried_after_retry_after_or_a_growing_backoff() {
        let (mut m, t0) = activation_started();
        let told = Input::JobFinished {
            job: Job::Activate,
            report: JobReport {
                code: 6,
                retry_after: Some(Duration::from_secs(1)),
                error: Some("HTTP 429".into()),
                ..JobReport::default()
            },
        };
        assert_eq!(
            m.step(t0, told),
            vec![Action::SetTimer {
                at: t0 + Duration::from_secs(1),
                timer: Timer::ActivationRetry
            }]
        );
        assert_eq!(m.activation(), Activation::Waiting(1));
        let t1 = t0 + Duration::from_secs(1);
        // The files first: no license was installed meanwhile, so attempt 2 runs.
        assert_eq!(
            m.step(t1, Input::Timer(Timer::ActivationRetry)),
            vec![Action::CheckLicense { forced: false }]
        );
        assert_eq!(
            m.step(t1, checked(false)),
            vec![Action::SpawnJob { job: Job::Activate }]
        );
        assert_eq!(m.activation(), Activation::Running(2));
        // Without Retry-After: 250 ms, then 500 ms. An internal failure or a kill is retried too.
        for (code, delay) in [(6, 250), (1, 500), (137, 1000)] {
            assert_eq!(
                m.step(t1, job_done(Job::Activate, code)),
                vec![Action::SetTimer {
                    at: t1 + Duration::from_millis(delay),
                    timer: Timer::ActivationRetry
                }],
                "code {code}"
            );
            m.step(t1, Input::Timer(Timer::ActivationRetry));
            m.step(t1, checked(false));
        }
        assert_eq!(m.phase(), Phase::Activating, "still held back");
    }

    #[test]
    fn the_deadline_starts_the_first_generation_and_a_late_activation_is_checked() {
        let (mut m, t0) = activation_started();
        m.step(t0, job_done(Job::Activate, 6));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            m.step(t1, Input::Timer(Timer::ActivationDeadline)),
            vec![Action::Spawn { generation: 1 }]
        );
        m.step(t1, Input::Timer(Timer::ActivationRetry));
        m.step(t1, checked(false));
        assert_eq!(
            m.step(t1, job_done(Job::Activate, 0)),
            vec![Action::CheckLicense { forced: false }]
        );
    }

    #[test]
    fn a_refusal_or_a_local_problem_is_not_retried() {
        for code in [5, 4, 2, 127] {
            let (mut m, t0) = activation_started();
            assert_eq!(
                m.step(t0, job_done(Job::Activate, code)),
                vec![Action::Spawn { generation: 1 }],
                "code {code}"
            );
            assert_eq!(m.activation(), Activation::Idle);
            assert!(m.step(t0, Input::Timer(Timer::ActivationRetry)).is_empty());
        }
    }

    #[test]
    fn a_license_installed_while_waiting_to_retry_ends_activation_without_a_second_seat() {
        let (mut m, t0) = activation_started();
        m.step(t0, job_done(Job::Activate, 6));
        // `privitty-edge license activate` run by hand, or a file drop, found by the check made
        // before the retry (whether or not the watch has reported it yet).
        assert_eq!(
            m.step(t0, Input::Timer(Timer::ActivationRetry)),
            vec![Action::CheckLicense { forced: false }]
        );
        assert_eq!(
            m.step(t0, checked(true)),
            vec![Action::Spawn { generation: 1 }],
            "no second activation"
        );
        assert_eq!(m.activation(), Activation::Idle);
    }

    #[test]
    fn a_license_present_at_start_skips_activation_and_a_missing_identity_is_created() {
        let t0 = Instant::now();
        let mut m = Machine::new(activating());
        assert_eq!(
            m.step(
                t0,
                Input::Boot(Boot {
                    license_present: true,
                    device_identity_present: true,
                    since_last_sync: None,
                })
            ),
            vec![Action::Spawn { generation: 1 }]
        );
        let mut m = Machine::new(settings());
        assert_eq!(
            m.step(t0, Input::Boot(Boot::default())),
            vec![
                Action::SpawnJob {
                    job: Job::DeviceIdentity
                },
                Action::Spawn { generation: 1 }
            ]
        );
        // Its outcome is only logged.
        assert!(m.step(t0, job_done(Job::DeviceIdentity, 4)).is_empty());
    }

    #[test]
    fn the_periodic_sync_runs_on_schedule_and_its_license_is_checked() {
        let hour = Duration::from_secs(3600);
        let t0 = Instant::now();
        let mut m = Machine::new(Settings {
            sync_interval: Some(hour),
            ..settings()
        });
        let acts = m.step(
            t0,
            Input::Boot(Boot {
                device_identity_present: true,
                license_present: true,
                since_last_sync: Some(Duration::from_secs(50 * 60)),
            }),
        );
        // Synced 50 minutes ago: due in 4 to 16 minutes (the jitter), not a whole hour.
        let Some(Action::SetTimer {
            at,
            timer: Timer::Sync,
        }) = acts.first()
        else {
            panic!("{acts:?}")
        };
        let first = *at - t0;
        assert!(
            first >= Duration::from_secs(240) && first <= Duration::from_secs(960),
            "{first:?}"
        );
        let t1 = *at;
        assert_eq!(
            m.step(t1, Input::Timer(Timer::Sync)),
            vec![Action::SpawnJob { job: Job::Sync }]
        );
        m.step(
            t1,
            Input::JobSpawned {
                job: Job::Sync,
                pid: pid(60),
            },
        );
        // A second due sync while one runs starts nothing.
        assert!(m.step(t1, Input::Timer(Timer::Sync)).is_empty());
        let acts = m.step(t1, job_done(Job::Sync, 0));
        assert_eq!(acts[0], Action::CheckLicense { forced: false });
        let Action::SetTimer {
            at,
            timer: Timer::Sync,
        } = acts[1]
        else {
            panic!("{acts:?}")
        };
        assert!(at - t1 >= hour.mul_f64(0.9) && at - t1 <= hour.mul_f64(1.1));
        // Not activated: nothing to check, the next one is still scheduled.
        m.step(at, Input::Timer(Timer::Sync));
        let acts = m.step(at, job_done(Job::Sync, 7));
        assert!(
            matches!(
                acts.as_slice(),
                [Action::SetTimer {
                    timer: Timer::Sync,
                    ..
                }]
            ),
            "{acts:?}"
        );
    }

    #[test]
    fn a_stop_also_ends_the_license_commands_that_run() {
        let (mut m, t0) = activation_started();
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGTERM)),
            stop(&[], &[50], None, None)
        );
        // Its exit (143) is no longer looked at.
        assert!(m.step(t0, job_done(Job::Activate, 143)).is_empty());
    }

    #[test]
    fn a_swap_stops_the_old_generation_with_sigterm_then_sigcont() {
        // Stopped by a forwarded SIGTSTP, the old generation acts on SIGTERM only once continued;
        // without the SIGCONT the new one would wait for the data-dir lock until the kill deadline.
        let (mut m, t0) = serving();
        assert_eq!(
            m.step(t0, Input::Signal(Signal::SIGTSTP)),
            vec![Action::Signal {
                pid: pid(100),
                signal: Signal::SIGTSTP
            }]
        );
        m.step(t0, Input::Signal(Signal::SIGHUP));
        m.step(
            t0,
            Input::LicenseChecked {
                license: lic("a"),
                forced: true,
                withdrawn: false,
                present: true,
            },
        );
        assert_eq!(
            m.step(
                t0,
                Input::Spawned {
                    generation: 2,
                    pid: pid(200),
                    license: lic("a"),
                }
            ),
            vec![
                Action::SetTimer {
                    at: t0 + Duration::from_secs(30),
                    timer: Timer::ReadyDeadline(2)
                },
                // The swap token first: it is waiting when the old generation starts to drain.
                Action::OfferEngine { generation: 1 },
                term(100),
                cont(100),
                Action::SetTimer {
                    at: t0 + Duration::from_secs(8),
                    timer: Timer::KillDeadline(1)
                },
            ]
        );
    }

    #[test]
    fn only_a_swap_offers_the_engine_to_the_next_generation() {
        let offers = |acts: &[Action]| {
            acts.iter()
                .filter(|a| matches!(a, Action::OfferEngine { .. }))
                .count()
        };
        // A stop of the container: nothing would take the engine over, while serving or while a
        // swap is under way (generation 1 had its token at the swap, not again now).
        let (mut m, t0) = serving();
        let acts = m.step(t0, Input::Signal(Signal::SIGTERM));
        assert_eq!(offers(&acts), 0, "{acts:?}");
        let (mut m, t0) = swapping();
        let acts = m.step(t0, Input::Signal(Signal::SIGTERM));
        assert_eq!(offers(&acts), 0, "{acts:?}");

        // A missed ready deadline: the overdue generation gets no token, nor does the one that
        // replaces it stop anything when it starts.
        let (mut m, t0) = starting_unlicensed();
        let t1 = t0 + Duration::from_secs(30);
        let acts = m.step(t1, Input::Timer(Timer::ReadyDeadline(1)));
        assert!(acts.contains(&term(100)), "{acts:?}");
        assert_eq!(offers(&acts), 0, "{acts:?}");
        let acts = m.step(
            t1,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: None,
            },
        );
        assert_eq!(offers(&acts), 0, "{acts:?}");
    }

    #[test]
    fn a_stop_sends_sigterm_then_sigcont_to_each_generation_and_sigterm_to_each_license_command() {
        // A serving generation, a stopping one, and the background activation that still runs.
        let (mut m, t0) = activation_started();
        let t1 = t0 + Duration::from_secs(30);
        m.step(t1, Input::Timer(Timer::ActivationDeadline));
        m.step(
            t1,
            Input::Spawned {
                generation: 1,
                pid: pid(100),
                license: None,
            },
        );
        m.step(t1, Input::Ready { generation: 1 });
        m.step(t1, Input::Signal(Signal::SIGHUP));
        m.step(
            t1,
            Input::LicenseChecked {
                license: None,
                forced: true,
                withdrawn: false,
                present: false,
            },
        );
        m.step(
            t1,
            Input::Spawned {
                generation: 2,
                pid: pid(200),
                license: None,
            },
        );
        assert_eq!(
            m.step(t1, Input::Signal(Signal::SIGQUIT)),
            vec![
                // edged alone, not its group: its engine answers while edged drains.
                term(100),
                cont(100),
                term(200),
                cont(200),
                Action::SignalGroup {
                    pgid: pid(50),
                    signal: Signal::SIGTERM
                },
                // The generation that served speaks for the service.
                Action::Shutdown {
                    main: Some(pid(100)),
                    code: None
                },
            ]
        );
        assert_eq!(m.phase(), Phase::ShuttingDown);
    }

    #[test]
    fn start_up_memory_is_released_once_swaps_are_quiet() {
        // The first generation at once (`serving` asserts it); after a swap, only once swaps
        // have been quiet for RELEASE_QUIET.
        let release = |at| Action::SetTimer {
            at,
            timer: Timer::ReleasePages,
        };
        let (mut m, t0) = swapping();
        assert_eq!(
            m.step(t0, Input::Ready { generation: 2 }),
            vec![release(t0 + RELEASE_QUIET)]
        );
        // A repeated READY=1 is not a new start.
        assert!(m.step(t0, Input::Ready { generation: 2 }).is_empty());
        // A restart after a crash, before the quiet time is over: the earlier timer does nothing.
        m.step(t0, exited(200, 1));
        let t1 = t0 + Duration::from_millis(100);
        m.step(t1, Input::Timer(Timer::Restart));
        m.step(
            t1,
            Input::Spawned {
                generation: 3,
                pid: pid(300),
                license: lic("a"),
            },
        );
        assert_eq!(
            m.step(t1, Input::Ready { generation: 3 }),
            vec![release(t1 + RELEASE_QUIET)]
        );
        assert!(
            m.step(t0 + RELEASE_QUIET, Input::Timer(Timer::ReleasePages))
                .is_empty()
        );
        // Not while a swap asked for during start-up is about to start another one.
        m.step(t1, Input::Signal(Signal::SIGHUP));
        let forced = Input::LicenseChecked {
            license: lic("a"),
            forced: true,
            withdrawn: false,
            present: true,
        };
        m.step(t1, forced.clone());
        m.step(
            t1,
            Input::Spawned {
                generation: 4,
                pid: pid(400),
                license: lic("a"),
            },
        );
        m.step(t1, forced);
        assert_eq!(
            m.step(t1, Input::Ready { generation: 4 }),
            vec![Action::Spawn { generation: 5 }]
        );
        // Nor while that one starts.
        assert!(
            m.step(t1 + RELEASE_QUIET, Input::Timer(Timer::ReleasePages))
                .is_empty()
        );
        m.step(
            t1,
            Input::Spawned {
                generation: 5,
                pid: pid(500),
                license: lic("a"),
            },
        );
        let t2 = t1 + RELEASE_QUIET;
        assert_eq!(
            m.step(t2, Input::Ready { generation: 5 }),
            vec![release(t2 + RELEASE_QUIET)]
        );
        // Quiet since: released.
        assert_eq!(
            m.step(t2 + RELEASE_QUIET, Input::Timer(Timer::ReleasePages)),
            vec![Action::ReleaseStartupPages]
        );
        assert!(
            m.step(t2 + RELEASE_QUIET, Input::Timer(Timer::ReleasePages))
                .is_empty()
        );
    }

    #[test]
    fn the_activation_deadline_starts_unlicensed_and_a_success_after_it_swaps() {
        let (mut m, t0) = activation_started();
        // Due while the command (pid 50) still runs: the first generation starts unlicensed.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            m.step(t1, Input::Timer(Timer::ActivationDeadline)),
            vec![Action::Spawn { generation: 1 }]
        );
        assert_eq!(m.phase(), Phase::Running);
        assert_eq!(m.activation(), Activation::Running(1));
        m.step(
            t1,
            Input::Spawned {
                generation: 1,
                pid: pid(100),
                license: None,
            },
        );
        m.step(t1, Input::Ready { generation: 1 });
        // The command's outcome arrives as an input: the license it installed is checked like a
        // dropped file, and swapped to.
        assert_eq!(
            m.step(t1, job_done(Job::Activate, 0)),
            vec![Action::CheckLicense { forced: false }]
        );
        assert_eq!(m.activation(), Activation::Idle);
        assert_eq!(
            m.step(t1, checked(true)),
            vec![Action::Spawn { generation: 2 }]
        );
        // A stale deadline changes nothing.
        assert!(
            m.step(t1, Input::Timer(Timer::ActivationDeadline))
                .is_empty()
        );
    }

    #[test]
    fn a_sync_outcome_decides_whether_the_license_is_checked_again() {
        let hour = Duration::from_secs(3600);
        let t0 = Instant::now();
        let mut m = Machine::new(Settings {
            sync_interval: Some(hour),
            ..settings()
        });
        m.step(t0, boot());
        // Updated (0) or revoked and moved aside (5): the files changed. Transient (6), internal
        // (1), killed (137), not activated (7): they did not.
        for (code, check) in [
            (0, true),
            (5, true),
            (6, false),
            (1, false),
            (137, false),
            (7, false),
        ] {
            assert_eq!(
                m.step(t0, Input::Timer(Timer::Sync)),
                vec![Action::SpawnJob { job: Job::Sync }],
                "code {code}"
            );
            let acts = m.step(t0, job_done(Job::Sync, code));
            assert_eq!(
                acts.contains(&Action::CheckLicense { forced: false }),
                check,
                "code {code}: {acts:?}"
            );
            assert!(
                matches!(
                    acts.last(),
                    Some(Action::SetTimer {
                        timer: Timer::Sync,
                        ..
                    })
                ),
                "code {code}: the next sync is scheduled: {acts:?}"
            );
        }
    }
}
