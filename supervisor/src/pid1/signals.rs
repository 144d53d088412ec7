//! Which signals privitty-init catches, and what each means. Owns the signal table; must not act on
//! signals itself (the lifecycle in `plain`/`managed` decides what to do with each event).
//!
//! | signal | handled as |
//! |---|---|
//! | TERM, INT, QUIT | event → stop the process tree (plain: the signal itself goes to the child's group first; managed: SIGTERM to edged) |
//! | HUP | event → plain: forwarded; managed: new generation |
//! | USR1 USR2 WINCH CONT ALRM TSTP ABRT URG XCPU XFSZ VTALRM PROF IO PWR STKFLT | event → forwarded to the child's group |
//! | SIGRTMIN … SIGRTMAX | [`Realtime`] event → forwarded (both modes) |
//! | TTIN, TTOU | event → ignored: blocked, they never stop us (tcsetpgrp from a background group) |
//! | CHLD | the reaper: `waitpid(-1, WNOHANG)` until nothing is left, one `Exited` event each |
//! | PIPE | left ignored (as Rust sets it): a write to a closed log pipe must not kill PID 1, and a sent SIGPIPE cannot be told from that one, so it is not forwarded |
//! | ILL FPE SEGV BUS TRAP SYS | default: they are synchronous faults of our own code |
//! | KILL, STOP | cannot be caught |
//!
//! Each of these is blocked from the first line of `main` for privitty-init's whole life
//! ([`super::block_signals`]) and taken with `sigtimedwait` or a `signalfd`: the kernel drops a
//! signal sent to the init of a PID namespace that neither has a handler nor is blocked, but a
//! blocked one always stays pending, so nothing is lost, not even during start-up. Realtime signals
//! keep their queueing: each instance sent is taken, and forwarded, on its own.

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

/// A realtime signal, `SIGRTMIN+n` (nix's [`Signal`] names only the classic ones). The range is
/// the C library's: it keeps the first few kernel realtime signals for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Realtime(i32);

impl Realtime {
    /// The realtime signal with this number, if it is one the C library leaves to applications.
    pub fn from_raw(signo: i32) -> Option<Realtime> {
        realtime_range().contains(&signo).then_some(Realtime(signo))
    }

    /// `SIGRTMIN + offset`, if that is within the range.
    pub fn min_plus(offset: i32) -> Option<Realtime> {
        Realtime::from_raw(nix::libc::SIGRTMIN() + offset)
    }

    /// The signal number.
    pub fn raw(self) -> i32 {
        self.0
    }
}

impl std::fmt::Display for Realtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SIGRTMIN+{}", self.0 - nix::libc::SIGRTMIN())
    }
}

/// SIGRTMIN..=SIGRTMAX as this process's C library defines them.
pub fn realtime_range() -> std::ops::RangeInclusive<i32> {
    nix::libc::SIGRTMIN()..=nix::libc::SIGRTMAX()
}

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

    #[test]
    fn realtime_signals_are_named_from_sigrtmin() {
        let range = realtime_range();
        assert!(range.end() - range.start() >= 8, "{range:?}");
        let first = Realtime::from_raw(*range.start()).unwrap();
        assert_eq!(first.to_string(), "SIGRTMIN+0");
        assert_eq!(Realtime::min_plus(3).unwrap().raw(), range.start() + 3);
        assert!(Realtime::from_raw(*range.end()).is_some());
        assert!(Realtime::from_raw(range.end() + 1).is_none());
        assert!(Realtime::from_raw(Signal::SIGUSR1 as i32).is_none());
        // The C library's own (32, 33 with glibc) are not ours to catch or forward.
        assert!(Realtime::from_raw(32).is_none());
    }
}
