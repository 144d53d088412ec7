//! Minimal-init mode (`--plain`, or run as `tini`/`dumb-init`): run CMD, reap everything, forward
//! every signal as itself, stop the tree after TERM/INT/QUIT, exit with CMD's code. Owns the plain
//! lifecycle; must not do license work or restart CMD.
//!
//! ```text
//!            spawn CMD ──fails──▶ exit 127 / 126
//!                │
//!                ▼  chdir("/")  (CMD keeps the directory it was started in)
//!   ┌────────▶ Running ── forwarded signal ──▶ killpg(CMD's group, sig)
//!   │   orphan   │  │
//!   └─ reaped ───┘  ├── TERM/INT/QUIT ──▶ killpg(CMD's group, sig), stop(tree, timeout)
//!                   │                          ──▶ exit CMD's code / 128+N (-e: some → 0)
//!                   └── CMD exited ─────▶ stop(rest of tree) ──▶ exit CMD's code / 128+N
//! ```
//!
//! Signals that arrive during the stop are still forwarded (a QUIT for a graceful stop may be
//! followed by a TERM for a fast one), so what CMD sees matches tini and dumb-init.

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::config::{Config, exit};
use crate::pid1::{self, Event, Pid1, Realtime, SpawnSpec, signals};

/// What the plain lifecycle does in response to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing (an orphan was reaped, or a signal that is not forwarded).
    None,
    /// Send the signal to CMD's process group.
    Forward(Signal),
    /// Send the realtime signal to CMD's process group.
    ForwardRealtime(Realtime),
    /// Send the signal to CMD's process group, stop the whole tree (SIGKILL after the stop
    /// timeout), then exit with CMD's status.
    Stop(Signal),
    /// CMD exited with this status: stop what is left of the tree, then exit with it.
    Finish(WaitStatus),
}

/// The transition function of plain mode: pure, so it is tested without processes.
pub fn transition(child: Pid, event: &Event) -> Action {
    match event {
        Event::Signal(sig) if signals::STOP.contains(sig) => Action::Stop(*sig),
        Event::Signal(sig) if signals::is_forwarded(*sig) => Action::Forward(*sig),
        Event::Signal(_) => Action::None,
        Event::Realtime(sig) => Action::ForwardRealtime(*sig),
        Event::Exited { pid, status } if *pid == child => Action::Finish(*status),
        Event::Exited { .. } => Action::None,
    }
}

/// What a signal that arrives while the tree is stopping does: it is passed on as it would have
/// been before (a second stop signal too); nothing else changes.
pub fn while_stopping(child: Pid, event: &Event) -> Action {
    match transition(child, event) {
        Action::Stop(sig) => Action::Forward(sig),
        Action::Forward(sig) => Action::Forward(sig),
        Action::ForwardRealtime(sig) => Action::ForwardRealtime(sig),
        Action::None | Action::Finish(_) => Action::None,
    }
}

/// The exit code for CMD's status, with `-e` codes turned into 0.
pub fn exit_code(status: WaitStatus, remap_to_zero: &[i32]) -> i32 {
    let code = pid1::exit_code(status);
    if remap_to_zero.contains(&code) {
        0
    } else {
        code
    }
}

/// Runs plain mode to the end; returns the process exit code.
pub fn run(config: &Config, pid1: &mut Pid1) -> i32 {
    let spec = SpawnSpec {
        program: config.command[0].clone(),
        args: config.command[1..].to_vec(),
        foreground_tty: nix::unistd::isatty(std::io::stdin()).unwrap_or(false),
        ..SpawnSpec::default()
    };
    let child = match pid1::spawn(&spec) {
        Ok(pid) => pid,
        Err(e) => {
            tracing::error!("{e}");
            return e.exit_code();
        }
    };
    tracing::info!(pid = child.as_raw(), command = ?config.command, "started");
    // Like dumb-init: PID 1 must not keep a directory busy (a mount under it could not be
    // unmounted) for the container's life. CMD was started in ours and keeps it.
    if let Err(e) = nix::unistd::chdir("/") {
        tracing::warn!(error = %e, "cannot change to the root directory");
    }
    pid1::release_startup_pages();
    let remap = &config.remap_to_zero;
    let stopping = |event: &Event| forward(child, while_stopping(child, event));
    loop {
        let Some(event) = pid1.next(None) else {
            // Only an unexpected sigtimedwait failure gets here: no signal could be seen again.
            tracing::error!("cannot wait for signals any more; stopping");
            pid1.stop(
                &[child],
                Signal::SIGTERM,
                child,
                config.stop_timeout,
                stopping,
                |_| {},
            );
            return exit::FAILURE;
        };
        match transition(child, &event) {
            Action::None => {
                if let Event::Exited { pid, status } = event {
                    tracing::debug!(pid = pid.as_raw(), ?status, "reaped orphan");
                } else {
                    tracing::debug!(?event, "ignored");
                }
            }
            action @ (Action::Forward(_) | Action::ForwardRealtime(_)) => forward(child, action),
            Action::Stop(sig) => {
                tracing::info!(signal = %sig, timeout = ?config.stop_timeout, "stopping");
                let status = pid1.stop(&[child], sig, child, config.stop_timeout, stopping, |_| {});
                return finish(status, remap);
            }
            Action::Finish(status) => {
                tracing::info!(pid = child.as_raw(), ?status, "command exited");
                // Whatever CMD left in its group, or orphaned to us, goes with it.
                pid1.stop(
                    &[child],
                    Signal::SIGTERM,
                    child,
                    config.stop_timeout,
                    stopping,
                    |_| {},
                );
                return finish(Some(status), remap);
            }
        }
    }
}

/// Carries out a forwarding action (others are not forwarding and do nothing here).
fn forward(child: Pid, action: Action) {
    match action {
        Action::Forward(sig) => {
            tracing::debug!(signal = %sig, group = child.as_raw(), "forwarding");
            pid1::signal_group(child, sig);
        }
        Action::ForwardRealtime(sig) => {
            tracing::debug!(signal = %sig, group = child.as_raw(), "forwarding");
            pid1::signal_group_realtime(child, sig);
        }
        Action::None | Action::Stop(_) | Action::Finish(_) => {}
    }
}

fn finish(status: Option<WaitStatus>, remap_to_zero: &[i32]) -> i32 {
    match status {
        Some(status) => exit_code(status, remap_to_zero),
        None => {
            tracing::error!("the command's exit status was never seen");
            exit::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: Pid = Pid::from_raw(42);

    #[test]
    fn stop_signals_stop_and_are_passed_on_as_themselves() {
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
            assert_eq!(transition(CHILD, &Event::Signal(sig)), Action::Stop(sig));
        }
    }

    #[test]
    fn signals_during_the_stop_are_still_forwarded() {
        for sig in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGUSR1,
        ] {
            assert_eq!(
                while_stopping(CHILD, &Event::Signal(sig)),
                Action::Forward(sig)
            );
        }
        let rt = Realtime::min_plus(1).unwrap();
        assert_eq!(
            while_stopping(CHILD, &Event::Realtime(rt)),
            Action::ForwardRealtime(rt)
        );
        for sig in [Signal::SIGTTIN, Signal::SIGTTOU] {
            assert_eq!(while_stopping(CHILD, &Event::Signal(sig)), Action::None);
        }
    }

    #[test]
    fn realtime_signals_are_forwarded() {
        for sig in pid1::signals::realtime_range().filter_map(Realtime::from_raw) {
            assert_eq!(
                transition(CHILD, &Event::Realtime(sig)),
                Action::ForwardRealtime(sig)
            );
        }
    }

    #[test]
    fn other_signals_are_forwarded_and_job_control_input_ignored() {
        for sig in [
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGWINCH,
            Signal::SIGCONT,
            Signal::SIGALRM,
            Signal::SIGTSTP,
        ] {
            assert_eq!(transition(CHILD, &Event::Signal(sig)), Action::Forward(sig));
        }
        for sig in [Signal::SIGTTIN, Signal::SIGTTOU] {
            assert_eq!(transition(CHILD, &Event::Signal(sig)), Action::None);
        }
    }

    #[test]
    fn child_exit_finishes_and_orphans_are_just_reaped() {
        let status = WaitStatus::Exited(CHILD, 3);
        assert_eq!(
            transition(CHILD, &Event::Exited { pid: CHILD, status }),
            Action::Finish(status)
        );
        let orphan = Pid::from_raw(77);
        let status = WaitStatus::Signaled(orphan, Signal::SIGKILL, false);
        assert_eq!(
            transition(
                CHILD,
                &Event::Exited {
                    pid: orphan,
                    status
                }
            ),
            Action::None
        );
    }

    #[test]
    fn finish_maps_statuses() {
        assert_eq!(finish(Some(WaitStatus::Exited(CHILD, 7)), &[]), 7);
        assert_eq!(
            finish(
                Some(WaitStatus::Signaled(CHILD, Signal::SIGTERM, false)),
                &[]
            ),
            143
        );
        assert_eq!(finish(None, &[]), exit::FAILURE);
    }

    #[test]
    fn listed_exit_codes_become_zero() {
        let remap = [143, 3];
        let term = WaitStatus::Signaled(CHILD, Signal::SIGTERM, false);
        assert_eq!(exit_code(term, &remap), 0);
        assert_eq!(exit_code(WaitStatus::Exited(CHILD, 3), &remap), 0);
        assert_eq!(exit_code(WaitStatus::Exited(CHILD, 4), &remap), 4);
        let int = WaitStatus::Signaled(CHILD, Signal::SIGINT, false);
        assert_eq!(exit_code(int, &remap), 130);
        // Our own failure is not the child's code.
        assert_eq!(finish(None, &[1]), exit::FAILURE);
    }
}
