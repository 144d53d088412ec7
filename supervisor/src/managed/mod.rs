//! Managed mode: start-up activation, the license watch, generation swaps over a socket the
//! supervisor keeps, crash restarts and periodic sync, around `privitty-edged`.
//!
//! # Layout
//!
//! - [`machine`]: every decision, pure (inputs and `now` in, actions out; no I/O, no clock):
//!   generations and swaps, crash restarts, activation and its deadline, sync, what a stop signal
//!   means, when start-up memory is released.
//! - [`driver`]: the event loop on one thread: turns signals, exits, readiness, license checks and
//!   due timers into inputs and executes the actions; decides nothing.
//! - [`jobs`]: the `privitty-edge license …` children (activate, sync, device-id): their pipes and
//!   reports.
//! - [`watch`]: when the license files may have changed (inotify on the directory, plus a poll).
//! - [`readiness`]: the per-generation notify sockets (`READY=1`).
//! - [`listener`]: the listening socket bound once and handed to each generation, with the
//!   connection and engine hand-over pairs.
//! - [`sync`]: when the periodic sync is due (interval, jitter, the last sync on disk).
//! - [`backoff`]: restart pacing and the crash budget.
//!
//! ```text
//!  start ──► activate (if URL and no privitty.lic: `privitty-edge license activate -` as a child;
//!            ≤ ACTIVATION_TIMEOUT, then in the background)
//!        ──► gen 1: spawn(LISTEN_FDS=5: http, hand-over pair, engine pair; NOTIFY_SOCKET)
//!            ──READY=1──► serving
//!  gen N ready + 100 ms, nothing else going on ──► spare spawned (+ `wake` pipe: exec, runtime,
//!            nothing read; PRIVITTY_SPARE=off: none)
//!  license changed / SIGHUP / sync ──► gen N+1: the spare woken (its number and counters on the
//!            pipe), else spawned; loads license, standby, waits for the lock
//!        ──► swap token, SIGTERM+SIGCONT gen N (serves until the standby, then stops accepting,
//!            hands its connections and its engine over, frees the lock, exits)
//!        ──► gen N+1 takes the lock and the engine, READY=1 ──► serving
//!  unexpected exit ──► restart after backoff; CRASH_LIMIT exits in CRASH_WINDOW ──► exit 70
//!  SIGTERM/INT/QUIT ──► SIGTERM+SIGCONT every generation, SIGKILL after STOP_TIMEOUT, exit with its code
//! ```

pub mod backoff;
pub mod driver;
pub mod jobs;
pub mod listener;
pub mod machine;
pub mod readiness;
pub mod sync;
pub mod watch;

pub use driver::run;
pub use machine::EXIT_CRASH_LOOP;
