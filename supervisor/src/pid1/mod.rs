//! PID-1 duties: the one reaper, signals as events, spawning children, stopping the process tree.
//!
//! Owns: the only `waitpid` in the crate (children's statuses arrive as [`Event::Exited`], routed by
//! pid by whoever spawned them), the signal handlers (see [`signals`] for the table), child subreaper
//! status when not PID 1, and fork/exec (unsafe code lives in `sys` only). Must not: decide what a
//! signal or an exit means — that is the lifecycle's job in `plain` and `managed`.

pub mod hardening;
pub mod signals;
mod spawn;
mod sys;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use tokio::sync::mpsc;

pub use signals::Realtime;
pub use spawn::{SpawnError, SpawnSpec, spawn};

/// Something that happened to PID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A caught signal (see [`signals::HANDLED`]; SIGCHLD never appears, it drives the reaper).
    Signal(Signal),
    /// A caught realtime signal (SIGRTMIN…SIGRTMAX).
    Realtime(Realtime),
    /// A child of ours (spawned, or an orphan re-parented to us) exited and was reaped.
    Exited { pid: Pid, status: WaitStatus },
}

#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error("cannot become child subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(Errno),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the signal thread: {0}")]
    Thread(std::io::Error),
}

/// The reaper and the signal handlers; events arrive in order on one channel.
#[derive(Debug)]
pub struct Pid1 {
    events: mpsc::UnboundedReceiver<Event>,
    handle: signal_hook::iterator::Handle,
    is_pid1: bool,
}

/// Blocks every handled signal in the calling thread, so one that arrives before [`Pid1::install`]
/// stays pending instead of being lost: the kernel drops a signal sent to a namespace's init that
/// has no handler for it, and a `docker stop` during start-up would then wait for its SIGKILL.
/// Call it first thing in `main`, before any thread starts (threads inherit the mask); the signal
/// thread unblocks them and receives what is pending.
pub fn block_signals() -> Result<(), Errno> {
    handled_set().thread_block()
}

/// Every signal the signal thread takes: [`signals::HANDLED`] and the realtime ones.
fn handled_set() -> SigSet {
    let mut handled = SigSet::empty();
    for sig in signals::HANDLED {
        handled.add(sig);
    }
    sys::sigset_with(handled, signals::realtime_range())
}

impl Pid1 {
    /// Becomes child subreaper when not PID 1, installs handlers for every forwardable signal
    /// (a thread turns them into events), and starts the reaper, which is triggered by SIGCHLD.
    /// Zombies that exist already are reaped at once. Call it once per process: from then on
    /// nothing else may wait for children (a second reaper would steal statuses).
    pub fn install() -> Result<Pid1, Pid1Error> {
        let is_pid1 = nix::unistd::getpid().as_raw() == 1;
        if !is_pid1 {
            nix::sys::prctl::set_child_subreaper(true).map_err(Pid1Error::Subreaper)?;
        }
        let raw: Vec<i32> = signals::HANDLED
            .iter()
            .map(|s| *s as i32)
            .chain(signals::realtime_range())
            .collect();
        let mut sigs = signal_hook::iterator::Signals::new(&raw).map_err(Pid1Error::Signals)?;
        let handle = sigs.handle();
        let (tx, events) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("pid1-signals".into())
            .spawn(move || {
                // A parent may have started us with signals blocked; this thread takes them all.
                if let Err(e) = handled_set().thread_unblock() {
                    tracing::warn!(error = %e, "cannot unblock the handled signals");
                }
                reap(&tx);
                for raw in sigs.forever() {
                    let event = match (Signal::try_from(raw), Realtime::from_raw(raw)) {
                        (Ok(Signal::SIGCHLD), _) => {
                            reap(&tx);
                            continue;
                        }
                        (Ok(sig), _) => Event::Signal(sig),
                        (Err(_), Some(rt)) => Event::Realtime(rt),
                        (Err(_), None) => continue,
                    };
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            })
            .map_err(Pid1Error::Thread)?;
        tracing::debug!(is_pid1, "reaper and signal handlers installed");
        Ok(Pid1 {
            events,
            handle,
            is_pid1,
        })
    }

    /// Whether we are PID 1 (of the container's PID namespace), rather than a subreaper.
    pub fn is_pid1(&self) -> bool {
        self.is_pid1
    }

    /// The next event.
    pub async fn next(&mut self) -> Event {
        self.events
            .recv()
            .await
            .expect("the signal thread lives as long as Pid1")
    }

    /// The stop procedure: `signal` (then SIGCONT, so stopped processes can act on it) to each
    /// process group, wait (consuming events) until every child of ours has exited or `timeout`
    /// passed, then SIGKILL what is left (all our descendants), and return as soon as nothing is
    /// left. Signals that arrive meanwhile go to `on_signal` (the lifecycle decides whether they
    /// are passed on). Returns the status of `main` if it was seen.
    pub async fn stop(
        &mut self,
        groups: &[Pid],
        signal: Signal,
        main: Pid,
        timeout: Duration,
        mut on_signal: impl FnMut(&Event),
    ) -> Option<WaitStatus> {
        let mut main_status = None;
        for group in groups {
            signal_group(*group, signal);
            signal_group(*group, Signal::SIGCONT);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if self
            .wait_for_no_children(main, &mut main_status, deadline, &mut on_signal)
            .await
        {
            tracing::debug!(signal = %signal, "every process exited after the stop signal");
            return main_status;
        }
        let left = descendants(nix::unistd::getpid());
        tracing::warn!(
            timeout = %humantime::format_duration(timeout),
            processes = left.len(),
            "processes still running after the stop timeout; sending SIGKILL"
        );
        for group in groups {
            signal_group(*group, Signal::SIGKILL);
        }
        if self.is_pid1 {
            // As a namespace's init, -1 means every other process in the namespace: this works
            // even where /proc is not mounted. Never as a subreaper, where it means the machine.
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        }
        kill_descendants();
        // SIGKILL cannot be refused, but a process in uninterruptible sleep dies only when its
        // I/O ends; bound that wait too rather than hang the container's stop.
        let deadline = tokio::time::Instant::now() + timeout.max(Duration::from_secs(1));
        loop {
            if self
                .wait_for_no_children(main, &mut main_status, deadline, &mut on_signal)
                .await
            {
                return main_status;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!("processes survived SIGKILL; exiting anyway");
                return main_status;
            }
        }
    }

    /// Consumes events until we have no children (true) or `deadline` (false).
    async fn wait_for_no_children(
        &mut self,
        main: Pid,
        main_status: &mut Option<WaitStatus>,
        deadline: tokio::time::Instant,
        on_signal: &mut impl FnMut(&Event),
    ) -> bool {
        let mut record = |ev: Event| match ev {
            Event::Exited { pid, status } if pid == main => *main_status = Some(status),
            Event::Exited { pid, status } => {
                tracing::debug!(%pid, ?status, "reaped while stopping")
            }
            Event::Signal(_) | Event::Realtime(_) => on_signal(&ev),
        };
        loop {
            while let Ok(ev) = self.events.try_recv() {
                record(ev);
            }
            if !has_children() {
                return true;
            }
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => record(ev),
                    None => return false,
                },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// The reaper: collects every exited child's status without blocking and reports each.
fn reap(tx: &mpsc::UnboundedSender<Event>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                // The receiver may be gone during shutdown; reaping must go on regardless.
                let _ = tx.send(Event::Exited { pid, status });
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "waitpid failed");
                return;
            }
        }
    }
}

/// Whether any child (running or not yet reaped) is left. `WNOWAIT` leaves statuses to the reaper.
fn has_children() -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::All, flags) {
            Err(Errno::ECHILD) => return false,
            Err(Errno::EINTR) => continue,
            _ => return true,
        }
    }
}

/// SIGKILLs every descendant until none is left to find; killing a parent re-parents its children
/// to us, so a second pass catches anything that forked meanwhile.
fn kill_descendants() {
    let me = nix::unistd::getpid();
    let mut killed = HashSet::new();
    loop {
        let fresh: Vec<Pid> = descendants(me)
            .into_iter()
            .filter(|p| !killed.contains(p))
            .collect();
        if fresh.is_empty() {
            return;
        }
        for pid in fresh {
            let _ = kill(pid, Signal::SIGKILL);
            killed.insert(pid);
        }
    }
}

/// Our descendants, from `/proc/<pid>/stat` (ppid is the 4th field, after the `(comm)` that may
/// itself contain spaces and parentheses).
fn descendants(root: Pid) -> Vec<Pid> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut queue = vec![root.as_raw()];
    while let Some(p) = queue.pop() {
        for c in children.get(&p).into_iter().flatten() {
            out.push(Pid::from_raw(*c));
            queue.push(*c);
        }
    }
    out
}

/// The exit code for a child's status: its code, or 128+N when signal N killed it.
pub fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        // Stops and continues are not reported by the reaper (no WUNTRACED/WCONTINUED).
        _ => crate::config::exit::FAILURE,
    }
}

/// Sends `sig` to process group `group`; a group that is already gone is not an error.
pub fn signal_group(group: Pid, sig: Signal) {
    match killpg(group, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(%group, signal = %sig, error = %e, "cannot signal process group"),
    }
}

/// [`signal_group`] for a realtime signal.
pub fn signal_group_realtime(group: Pid, sig: Realtime) {
    // kill(-1) would mean every process we may signal, not a group.
    if group.as_raw() <= 1 {
        return;
    }
    match sys::kill_raw(-group.as_raw(), sig.raw()) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(%group, signal = %sig, error = %e, "cannot signal process group"),
    }
}

/// Sends a realtime signal to one process; one that is already gone is not an error.
pub fn signal_realtime(pid: Pid, sig: Realtime) {
    match sys::kill_raw(pid.as_raw(), sig.raw()) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(%pid, signal = %sig, error = %e, "cannot signal"),
    }
}

/// What a lifecycle that does not act on signals during a stop passes to [`Pid1::stop`].
pub fn ignore_while_stopping(event: &Event) {
    tracing::info!(?event, "already stopping; signal not acted on");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let p = Pid::from_raw(10);
        assert_eq!(exit_code(WaitStatus::Exited(p, 0)), 0);
        assert_eq!(exit_code(WaitStatus::Exited(p, 255)), 255);
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            137
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGTERM, true)),
            143
        );
    }

    #[test]
    fn descendants_sees_through_proc() {
        // The test process has no children: nothing to find, and /proc parsing must not panic.
        let mine = descendants(nix::unistd::getpid());
        assert!(mine.iter().all(|p| p.as_raw() > 0));
        assert!(
            !descendants(Pid::from_raw(1)).is_empty(),
            "PID 1 has descendants"
        );
    }
}
