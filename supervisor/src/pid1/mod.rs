//! PID-1 duties: the one reaper, signals as events, spawning children, stopping the process tree.
//!
//! Owns: the only `waitpid` in the crate (children's statuses arrive as [`Event::Exited`], routed by
//! pid by whoever spawned them), the signals (see [`signals`] for the table), child subreaper status
//! when not PID 1, and fork/exec (unsafe code lives in `sys` only). Must not: decide what a signal
//! or an exit means — that is the lifecycle's job in `plain` and `managed`.
//!
//! One thread, no async runtime. The handled signals stay blocked for privitty-init's whole life
//! and are taken as they come, as tini does: with `sigtimedwait` when nothing else is waited for
//! (plain mode, a stop), through a `signalfd` polled beside the caller's own fds otherwise (managed
//! mode's notify sockets, license watch and helper pipes). A blocked signal is always queued, even
//! one sent to a namespace's init that has no handler for it (which the kernel drops when it is
//! not blocked), and each queued realtime signal is taken on its own.

pub mod hardening;
pub mod signals;
mod spawn;
mod sys;

pub use sys::close_received;

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

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

/// What [`Pid1::wait`] woke up for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    Event(Event),
    /// `fds[i]` is readable (or its other end is gone).
    Readable(usize),
    /// The deadline passed.
    Timeout,
}

#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error("cannot become child subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(Errno),
    #[error("cannot block the handled signals: {0}")]
    Signals(Errno),
    #[error("cannot create the signalfd: {0}")]
    SignalFd(Errno),
}

/// The reaper and the signals; events come out in order.
#[derive(Debug)]
pub struct Pid1 {
    set: SigSet,
    /// For [`Pid1::wait`]; plain mode never needs it.
    signalfd: Option<SignalFd>,
    /// Events taken from the kernel and not handed out yet (a SIGCHLD reaps many children).
    pending: VecDeque<Event>,
    is_pid1: bool,
}

/// Blocks every handled signal, so one that arrives before [`Pid1::install`] stays pending instead
/// of being lost: the kernel drops a signal sent to a namespace's init that neither has a handler
/// for it nor blocks it, and a `docker stop` during start-up would then wait for its SIGKILL. Call
/// it first thing in `main`.
pub fn block_signals() -> Result<(), Errno> {
    handled_set().thread_block()
}

/// Every signal privitty-init takes: [`signals::HANDLED`] and the realtime ones.
fn handled_set() -> SigSet {
    let mut handled = SigSet::empty();
    for sig in signals::HANDLED {
        handled.add(sig);
    }
    sys::sigset_with(handled, signals::realtime_range())
}

impl Pid1 {
    /// Becomes child subreaper when not PID 1 and blocks every handled signal (from then on they
    /// are taken by [`Pid1::next`] and [`Pid1::wait`]); zombies that exist already are reaped
    /// first. Call it once per process: nothing else may wait for children (a second reaper would
    /// steal statuses).
    pub fn install() -> Result<Pid1, Pid1Error> {
        let is_pid1 = nix::unistd::getpid().as_raw() == 1;
        if !is_pid1 {
            nix::sys::prctl::set_child_subreaper(true).map_err(Pid1Error::Subreaper)?;
        }
        let set = handled_set();
        set.thread_block().map_err(Pid1Error::Signals)?;
        let mut pid1 = Pid1 {
            set,
            signalfd: None,
            pending: VecDeque::new(),
            is_pid1,
        };
        pid1.reap();
        tracing::debug!(is_pid1, "reaper installed, signals blocked");
        Ok(pid1)
    }

    /// Also makes the signalfd that [`Pid1::wait`] polls, so that an error shows at start-up.
    pub fn install_with_fds() -> Result<Pid1, Pid1Error> {
        let mut pid1 = Pid1::install()?;
        let fd = SignalFd::with_flags(&pid1.set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(Pid1Error::SignalFd)?;
        pid1.signalfd = Some(fd);
        Ok(pid1)
    }

    /// Whether we are PID 1 (of the container's PID namespace), rather than a subreaper.
    pub fn is_pid1(&self) -> bool {
        self.is_pid1
    }

    /// The next event; `None` once `deadline` has passed (`None` for no deadline: waits for as
    /// long as it takes).
    pub fn next(&mut self, deadline: Option<Instant>) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            // A deadline already passed still takes what is pending (zero timeout).
            let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
            match sys::sigtimedwait(&self.set, timeout) {
                Ok(Some(signo)) => self.on_signal(signo),
                Ok(None) => return None,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "sigtimedwait failed");
                    return None;
                }
            }
        }
    }

    /// The next event, or which of `fds` became readable, or [`Wake::Timeout`] once `deadline`
    /// has passed. Events come first: an fd is reported only while no signal is pending. Needs
    /// [`Pid1::install_with_fds`].
    pub fn wait(&mut self, deadline: Option<Instant>, fds: &[BorrowedFd<'_>]) -> Wake {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Wake::Event(event);
            }
            let timeout = match deadline {
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Wake::Timeout;
                    }
                    // Rounded up: waking a little late is harmless, spinning until then is not.
                    let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let signalfd = self
                .signalfd
                .as_ref()
                .expect("Pid1::wait needs Pid1::install_with_fds");
            let mut polled: Vec<PollFd<'_>> = Vec::with_capacity(fds.len() + 1);
            polled.push(PollFd::new(signalfd.as_fd(), PollFlags::POLLIN));
            polled.extend(fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
            match nix::poll::poll(&mut polled, timeout) {
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(_) => {
                    let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
                    if ready(&polled[0]) {
                        // One signal at a time: the first is acted on without another syscall.
                        if let Ok(Some(info)) = signalfd.read_signal() {
                            self.on_signal(info.ssi_signo as i32);
                        }
                    } else if let Some(i) = polled[1..].iter().position(ready) {
                        return Wake::Readable(i);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "poll failed");
                    return Wake::Timeout;
                }
            }
        }
    }

    /// Takes every signal the signalfd holds.
    fn drain_signalfd(&mut self) {
        while let Some(Ok(Some(info))) = self.signalfd.as_ref().map(SignalFd::read_signal) {
            self.on_signal(info.ssi_signo as i32);
        }
    }

    /// Queues the event for a taken signal; SIGCHLD runs the reaper instead.
    fn on_signal(&mut self, signo: i32) {
        match (Signal::try_from(signo), Realtime::from_raw(signo)) {
            (Ok(Signal::SIGCHLD), _) => self.reap(),
            (Ok(sig), _) => self.pending.push_back(Event::Signal(sig)),
            (Err(_), Some(rt)) => self.pending.push_back(Event::Realtime(rt)),
            (Err(_), None) => {}
        }
    }

    /// The reaper: collects every exited child's status without blocking and queues each.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    self.pending.push_back(Event::Exited { pid, status });
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    return;
                }
            }
        }
    }

    /// The stop procedure: `signal` (then SIGCONT, so stopped processes can act on it) to each
    /// process group, wait (consuming events) until every child of ours has exited or `timeout`
    /// passed, then SIGKILL what is left (all our descendants), and return as soon as nothing is
    /// left. Signals that arrive meanwhile go to `on_signal` (the lifecycle decides whether they
    /// are passed on); every exit seen meanwhile to `on_exit` (managed mode then closes an
    /// engine handed over by the generation that exited, which nothing else would end). Returns
    /// the status of `main` if it was seen.
    pub fn stop(
        &mut self,
        groups: &[Pid],
        signal: Signal,
        main: Pid,
        timeout: Duration,
        mut on_signal: impl FnMut(&Event),
        mut on_exit: impl FnMut(Pid),
    ) -> Option<WaitStatus> {
        let mut main_status = None;
        for group in groups {
            signal_group(*group, signal);
            signal_group(*group, Signal::SIGCONT);
        }
        let deadline = Instant::now() + timeout;
        if self.wait_for_no_children(
            main,
            &mut main_status,
            deadline,
            &mut on_signal,
            &mut on_exit,
        ) {
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
        let deadline = Instant::now() + timeout.max(Duration::from_secs(1));
        if !self.wait_for_no_children(
            main,
            &mut main_status,
            deadline,
            &mut on_signal,
            &mut on_exit,
        ) {
            tracing::error!("processes survived SIGKILL; exiting anyway");
        }
        main_status
    }

    /// Consumes events until we have no children (true) or `deadline` (false).
    fn wait_for_no_children(
        &mut self,
        main: Pid,
        main_status: &mut Option<WaitStatus>,
        deadline: Instant,
        on_signal: &mut impl FnMut(&Event),
        on_exit: &mut impl FnMut(Pid),
    ) -> bool {
        // Signals a signalfd already holds are not lost: they are taken here too.
        self.drain_signalfd();
        loop {
            while let Some(ev) = self.pending.pop_front() {
                record(ev, main, main_status, on_signal, on_exit);
            }
            if !has_children() {
                return true;
            }
            match self.next(Some(deadline)) {
                Some(ev) => record(ev, main, main_status, on_signal, on_exit),
                None => return !has_children(),
            }
        }
    }
}

/// What the stop procedure does with one event.
fn record(
    ev: Event,
    main: Pid,
    main_status: &mut Option<WaitStatus>,
    on_signal: &mut impl FnMut(&Event),
    on_exit: &mut impl FnMut(Pid),
) {
    match ev {
        Event::Exited { pid, status } => {
            if pid == main {
                *main_status = Some(status);
            } else {
                tracing::debug!(%pid, ?status, "reaped while stopping");
            }
            on_exit(pid);
        }
        Event::Signal(_) | Event::Realtime(_) => on_signal(&ev),
    }
}

/// Drops PID 1's mappings of the start-up code it will not run again (argument parsing, logging
/// set-up, the first spawn): the clean, read-only mappings of its own executable. The pages stay
/// in the page cache, shared with the other processes of the image that map the same file, and
/// what the event loop runs faults back in on first use; PID 1's resident set is then its working
/// set, not everything start-up touched. Mappings with a private (written) page are left alone,
/// so nothing is lost. The heap's free pages go back to the kernel too. Call it once start-up is
/// over.
pub fn release_startup_pages() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let ranges = clean_read_only_mappings(&smaps, &exe.to_string_lossy());
    drop(smaps);
    // Logged before, not after: the log's own code would be the first thing to fault back in.
    tracing::debug!(
        mappings = ranges.len(),
        bytes = ranges.iter().map(|(start, end)| end - start).sum::<usize>(),
        "releasing the start-up pages of the executable"
    );
    sys::release_file_pages(&ranges);
    sys::trim_heap();
}

/// The (start, end) of each mapping of `path` in `smaps` (the text of /proc/<pid>/smaps) that is
/// not writable and has no private page, resident (`Anonymous`) or swapped out (`Swap`): one
/// that was ever written (a relocated page made read-only afterwards) is left alone.
fn clean_read_only_mappings(smaps: &str, path: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read, and how many of the two fields said 0 so far.
    let mut current: Option<((usize, usize), u8)> = None;
    let mut close = |current: &mut Option<((usize, usize), u8)>| {
        if let Some((range, 2)) = current.take() {
            out.push(range);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            close(&mut current);
            let perms = fields.next().unwrap_or("");
            let name = fields.nth(3).unwrap_or("");
            let read_only = perms.as_bytes().get(1) == Some(&b'-');
            current = (name == path && read_only).then_some(((start, end), 0));
        } else if let Some((_, zeros)) = &mut current
            && (first == "Anonymous:" || first == "Swap:")
        {
            if fields.next() == Some("0") {
                *zeros += 1;
            } else {
                current = None;
            }
        }
    }
    close(&mut current);
    out
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
    fn only_clean_read_only_mappings_of_the_executable_are_released() {
        let smaps = "\
00200000-002c5000 r--p 00000000 fd:00 42 /usr/local/bin/privitty-init
Rss:                 532 kB
Anonymous:             0 kB
Swap:                  0 kB
002c5000-00577000 r-xp 000c4000 fd:00 42 /usr/local/bin/privitty-init
Anonymous:             0 kB
Swap:                  0 kB
00578000-0057d000 r--p 00377000 fd:00 42 /usr/local/bin/privitty-init
Anonymous:            20 kB
Swap:                  0 kB
00590000-00591000 r--p 00390000 fd:00 42 /usr/local/bin/privitty-init
Anonymous:             0 kB
Swap:                  4 kB
0057d000-00581000 rw-p 0037b000 fd:00 42 /usr/local/bin/privitty-init
Anonymous:             0 kB
Swap:                  0 kB
00600000-00601000 r--p 00400000 fd:00 42 /usr/local/bin/privitty-init
Anonymous:             0 kB
7f0000000000-7f0000001000 r-xp 00000000 fd:00 43 /usr/lib/libc.so.6
Anonymous:             0 kB
Swap:                  0 kB
";
        // Not: written (anonymous), swapped out, writable, of another file, or with a field
        // missing (the one before libc's mapping has no Swap line).
        assert_eq!(
            clean_read_only_mappings(smaps, "/usr/local/bin/privitty-init"),
            vec![(0x200000, 0x2c5000), (0x2c5000, 0x577000)]
        );
    }

    #[test]
    fn releasing_the_start_up_pages_keeps_the_process_working() {
        release_startup_pages();
        // Code and constants fault back in from the file.
        assert_eq!(exit_code(WaitStatus::Exited(Pid::from_raw(1), 3)), 3);
        assert!(signals::realtime_range().count() > 8);
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
