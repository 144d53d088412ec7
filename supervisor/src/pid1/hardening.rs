//! Process-wide settings made once, at the top of `main`: privitty-init is not dumpable, managed
//! mode's private umask, and the parent-death signal (`-p`).
//!
//! Owns: those three system calls and why each is made. Must not: decide when they apply (that is
//! `main`, from the configuration) or touch the children's settings beyond what they inherit.
//!
//! - **Not dumpable** (`PR_SET_DUMPABLE=0`): privitty-init's environment holds the license TOKEN
//!   (`PRIVITTY_LICENSE_URL`), and any process of the same uid could otherwise read
//!   `/proc/<pid>/environ` and `/proc/<pid>/mem` or attach a debugger. Its `/proc` entries then
//!   belong to root, and it leaves no core file. Children are not affected: exec of an ordinary
//!   (not setuid) program makes a process dumpable again.
//! - **umask 077** (managed mode): everything privitty-init and its children create — the engine's
//!   database, edged's files, the readiness sockets — is private to the container's user. Plain
//!   mode keeps the inherited umask, as tini and dumb-init do: it runs someone else's program.
//! - **Parent-death signal** (`-p SIGNAL`, as tini's): when the process that started
//!   privitty-init dies, the kernel sends SIGNAL to privitty-init, which handles it like the
//!   same signal sent by hand (a catchable one is forwarded to the child).

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::Pid;

/// The umask of managed mode: no group or other bits on anything created.
pub const PRIVATE_UMASK: u32 = 0o077;

/// Makes this process not dumpable: its memory and environment are closed to processes of the
/// same uid (`/proc/<pid>/environ`, `mem`, ptrace) and it leaves no core file.
pub fn make_undumpable() -> Result<(), Errno> {
    nix::sys::prctl::set_dumpable(false)
}

/// Sets the umask to [`PRIVATE_UMASK`]; children inherit it.
pub fn set_private_umask() {
    nix::sys::stat::umask(Mode::from_bits_truncate(PRIVATE_UMASK));
}

/// Asks the kernel to send `sig` to us when our parent dies. `parent` is our parent as seen at
/// the very start of `main`: when it is already gone (we were re-parented before the request was
/// made), the signal is sent now, as it would have been. Signals are blocked from the start of
/// `main`, so it stays pending until it is taken rather than being lost.
pub fn set_parent_death_signal(sig: Signal, parent: Pid) -> Result<(), Errno> {
    nix::sys::prctl::set_pdeathsig(sig)?;
    if nix::unistd::getppid() != parent {
        nix::sys::signal::kill(nix::unistd::getpid(), sig)?;
    }
    Ok(())
}
