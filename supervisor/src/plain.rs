//! Minimal-init mode (`--plain`): run CMD, reap everything, forward signals, stop the tree on
//! TERM/INT/QUIT, exit with CMD's code. Owns the plain lifecycle; must not do license work or
//! restart CMD.
//!
//! ```text
//!            spawn CMD ──fails──▶ exit 127 / 126
//!                │
//!                ▼
//!   ┌────────▶ Running ── forwarded signal ──▶ killpg(CMD's group, sig)
//!   │   orphan   │  │
//!   └─ reaped ───┘  ├── TERM/INT/QUIT ──▶ stop(tree, timeout) ──▶ exit CMD's code / 128+N
//!                   └── CMD exited ─────▶ stop(rest of tree)  ──▶ exit CMD's code / 128+N
//! ```

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::config::{Config, exit};
use crate::pid1::{self, Event, Pid1, SpawnSpec, signals};

/// What the plain lifecycle does in response to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing (an orphan was reaped, or a signal that is not forwarded).
    None,
    /// Send the signal to CMD's process group.
    Forward(Signal),
    /// Stop the whole tree, then exit with CMD's status.
    Stop,
    /// CMD exited with this status: stop what is left of the tree, then exit with it.
    Finish(WaitStatus),
}

/// The transition function of plain mode: pure, so it is tested without processes.
pub fn transition(child: Pid, event: &Event) -> Action {
    match event {
        Event::Signal(sig) if signals::STOP.contains(sig) => Action::Stop,
        Event::Signal(sig) if signals::is_forwarded(*sig) => Action::Forward(*sig),
        Event::Signal(_) => Action::None,
        Event::Exited { pid, status } if *pid == child => Action::Finish(*status),
        Event::Exited { .. } => Action::None,
    }
}

/// Runs plain mode to the end; returns the process exit code.
pub async fn run(config: &Config, pid1: &mut Pid1) -> i32 {
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
    loop {
        let event = pid1.next().await;
        match transition(child, &event) {
            Action::None => {
                if let Event::Exited { pid, status } = event {
                    tracing::debug!(pid = pid.as_raw(), ?status, "reaped orphan");
                } else {
                    tracing::debug!(?event, "ignored");
                }
            }
            Action::Forward(sig) => {
                tracing::debug!(signal = %sig, group = child.as_raw(), "forwarding");
                pid1::signal_group(child, sig);
            }
            Action::Stop => {
                tracing::info!(?event, timeout = ?config.stop_timeout, "stopping");
                let status = pid1.stop(&[child], child, config.stop_timeout).await;
                return finish(status);
            }
            Action::Finish(status) => {
                tracing::info!(pid = child.as_raw(), ?status, "command exited");
                // Whatever CMD left in its group, or orphaned to us, goes with it.
                pid1.stop(&[child], child, config.stop_timeout).await;
                return finish(Some(status));
            }
        }
    }
}

fn finish(status: Option<WaitStatus>) -> i32 {
    match status {
        Some(status) => pid1::exit_code(status),
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
    fn stop_signals_stop() {
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
            assert_eq!(transition(CHILD, &Event::Signal(sig)), Action::Stop);
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
        assert_eq!(finish(Some(WaitStatus::Exited(CHILD, 7))), 7);
        assert_eq!(
            finish(Some(WaitStatus::Signaled(CHILD, Signal::SIGTERM, false))),
            143
        );
        assert_eq!(finish(None), exit::FAILURE);
    }
}
