//! Which signals privitty-init catches, and what each means. Owns the signal table; must not act on
//! signals itself (the lifecycle in `plain`/`managed` decides what to do with each event).
//!
//! | signal | handled as |
//! |---|---|
//! | TERM, INT, QUIT | event → stop the process tree |
//! | HUP | event → plain: forwarded; managed: new generation |
//! | USR1 USR2 WINCH CONT ALRM TSTP ABRT URG XCPU XFSZ VTALRM PROF IO PWR STKFLT | event → forwarded to the child's group |
//! | TTIN, TTOU | event → ignored: a handler means they never stop us (tcsetpgrp from a background group) |
//! | CHLD | the reaper: `waitpid(-1, WNOHANG)` until nothing is left, one `Exited` event each |
//! | PIPE | left ignored (as Rust sets it): a write to a closed log pipe must not kill PID 1 |
//! | ILL FPE SEGV BUS TRAP SYS | default: they are synchronous faults of our own code |
//! | KILL, STOP | cannot be caught |
//!
//! A handler is needed for each of these because the kernel drops signals without a handler that
//! are sent to the init of a PID namespace. Until the handlers exist they are blocked
//! ([`super::block_signals`], first thing in `main`), so one sent during start-up stays pending.

use nix::sys::signal::Signal;

/// Signals that stop the process tree.
pub const STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Terminal job-control signals that must never stop PID 1 and are not forwarded.
pub const IGNORED: [Signal; 2] = [Signal::SIGTTIN, Signal::SIGTTOU];

/// Every signal turned into an event (STOP, the forwarded ones and IGNORED).
pub const HANDLED: [Signal; 22] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
    Signal::SIGTSTP,
    Signal::SIGABRT,
    Signal::SIGURG,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGSTKFLT,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    // Not an event of its own: it triggers the reaper, which reports `Exited` events.
    Signal::SIGCHLD,
];

/// Whether `sig` is one that plain mode forwards to the child's process group.
pub fn is_forwarded(sig: Signal) -> bool {
    HANDLED.contains(&sig)
        && !STOP.contains(&sig)
        && !IGNORED.contains(&sig)
        && sig != Signal::SIGCHLD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert!(is_forwarded(Signal::SIGHUP));
        assert!(is_forwarded(Signal::SIGWINCH));
        assert!(is_forwarded(Signal::SIGTSTP));
        for s in STOP.iter().chain(&IGNORED) {
            assert!(HANDLED.contains(s));
            assert!(!is_forwarded(*s));
        }
        assert!(!is_forwarded(Signal::SIGCHLD));
        assert!(!is_forwarded(Signal::SIGPIPE));
        assert!(!is_forwarded(Signal::SIGKILL));
        assert_eq!(HANDLED.iter().filter(|s| is_forwarded(**s)).count(), 16);
    }
}
