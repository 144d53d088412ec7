//! The crate's only unsafe code: fork and the child's side of exec, and the raw signal calls nix
//! has no safe form for (realtime signals, which its `Signal` cannot name; `sigtimedwait`).
//!
//! Owns: the fork, everything the child does before `execve` (new process group, terminal
//! foreground, its standard fds, the listen-fd hand-over, closing every other fd, `LISTEN_PID`,
//! default signal dispositions and mask), and the exec-error pipe that tells the parent why an
//! exec failed; `kill`, `sigtimedwait` and signal-set edits by number. Must not: allocate, lock or
//! log in the child — only async-signal-safe calls on memory prepared before the fork are allowed
//! between fork and exec (privitty-init has one thread, but the rule keeps the child correct
//! whatever the parent becomes).
#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_int, c_uint};
use std::os::fd::{AsRawFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::unistd::Pid;

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// What the child failed at, as reported through the exec-error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Moving the listen fds into place or closing the others.
    Fds,
    /// `execve` itself.
    Exec,
}

#[derive(Debug)]
pub(crate) enum ForkExecError {
    Pipe(Errno),
    Fork(Errno),
    /// The child (already exiting with 127) could not get as far as running the program.
    Child {
        stage: Stage,
        errno: Errno,
    },
}

/// Everything the child needs, built before the fork so the child never allocates.
#[derive(Debug)]
pub(crate) struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    /// `LISTEN_PID=` followed by room for the digits and the NUL, filled in by the child.
    _listen_pid: Option<Box<[u8]>>,
    listen_pid_ptr: *mut u8,
    env_ptrs: Vec<*const c_char>,
    /// The fds that become the child's 0, 1 and 2 (`-1`: keep ours).
    stdio: [RawFd; 3],
    /// Scratch space for the standard fds' temporary copies.
    temp_stdio: [RawFd; 3],
    listen_fds: Vec<RawFd>,
    /// Scratch space for the listen fds' temporary copies (the child writes into its own copy).
    temp_fds: Vec<RawFd>,
    foreground_tty: bool,
    /// The signal the child gets when we end (0: none), and our pid, which the child checks it
    /// still has as its parent once the signal is set up.
    parent_death_signal: c_int,
    parent: libc::pid_t,
    /// Upper bound for the close loop on kernels without close_range (before 5.9).
    max_fd: c_int,
}

impl Prepared {
    /// `env` must not contain a `LISTEN_PID` entry; one is added (with the child's own pid) when
    /// `listen_fds` is not empty.
    pub(crate) fn new(
        path: CString,
        argv: Vec<CString>,
        env: Vec<CString>,
        stdio: [Option<RawFd>; 3],
        listen_fds: Vec<RawFd>,
        foreground_tty: bool,
    ) -> Prepared {
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
        let (listen_pid, listen_pid_ptr) = if listen_fds.is_empty() {
            (None, std::ptr::null_mut())
        } else {
            let mut buf = vec![0u8; LISTEN_PID_PREFIX.len() + 21].into_boxed_slice();
            buf[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
            let ptr = buf.as_mut_ptr();
            env_ptrs.push(ptr as *const c_char);
            (Some(buf), ptr)
        };
        env_ptrs.push(std::ptr::null());
        let max_fd = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft.min(1 << 20) as c_int)
            .unwrap_or(1024);
        Prepared {
            path,
            _argv: argv,
            argv_ptrs,
            _env: env,
            _listen_pid: listen_pid,
            listen_pid_ptr,
            env_ptrs,
            stdio: stdio.map(|fd| fd.unwrap_or(-1)),
            temp_stdio: [-1; 3],
            temp_fds: vec![-1; listen_fds.len()],
            listen_fds,
            foreground_tty,
            parent_death_signal: 0,
            parent: 0,
            max_fd,
        }
    }

    /// The child gets `signal` when this process ends; one started just as we end exits at once.
    pub(crate) fn set_parent_death_signal(&mut self, signal: nix::sys::signal::Signal) {
        self.parent_death_signal = signal as c_int;
        self.parent = nix::unistd::getpid().as_raw();
    }
}

/// Forks and execs `p`. Returns once the child has exec'd (or failed to); never waits for it.
pub(crate) fn fork_exec(p: &mut Prepared) -> Result<Pid, ForkExecError> {
    let (read_end, write_end) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ForkExecError::Pipe)?;
    // Blocking everything around the fork keeps any signal handler (privitty-init has none of its
    // own, but a library may) from running in the child before it resets them.
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )
    .map_err(ForkExecError::Fork)?;
    // SAFETY: the child branch calls only `child`, which is async-signal-safe and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child(p, write_end.as_raw_fd());
    }
    let fork_errno = Errno::last();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    drop(write_end);
    if pid < 0 {
        return Err(ForkExecError::Fork(fork_errno));
    }
    let pid = Pid::from_raw(pid);
    // The child does this too; doing it here as well means the group exists whichever runs first.
    let _ = nix::unistd::setpgid(pid, pid);

    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match nix::unistd::read(&read_end, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if got < report.len() {
        // EOF: the CLOEXEC write end closed, so the exec succeeded.
        return Ok(pid);
    }
    let stage = match u32::from_ne_bytes(report[..4].try_into().expect("4 bytes")) {
        0 => Stage::Exec,
        _ => Stage::Fds,
    };
    let errno = Errno::from_raw(i32::from_ne_bytes(report[4..].try_into().expect("4 bytes")));
    Err(ForkExecError::Child { stage, errno })
}

/// The child between fork and exec. Async-signal-safe calls only, on memory prepared before fork.
fn child(p: &mut Prepared, err_fd: RawFd) -> ! {
    // SAFETY: every call below is async-signal-safe (setpgid, prctl, getppid, getpid, tcsetpgrp,
    // fcntl, dup2, close, close_range, sigaction, sigprocmask, execve, write, _exit) and touches
    // only memory owned by `p`, which was fully built before the fork; this process has a single
    // thread.
    unsafe {
        libc::setpgid(0, 0);
        if p.parent_death_signal > 0 {
            // Kept across exec. Set after the fork: if we ended before, the parent is another
            // process already, and the signal would never come.
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                p.parent_death_signal as libc::c_ulong,
            );
            if libc::getppid() != p.parent {
                libc::_exit(128 + p.parent_death_signal);
            }
        }
        if p.foreground_tty {
            // Allowed from a background group because every signal (SIGTTOU too) is blocked.
            libc::tcsetpgrp(0, libc::getpid());
        }

        let n = p.listen_fds.len() as c_int;
        let first_free = 3 + n;
        // Copies above the target range first, so no fd that is to be moved is clobbered by
        // another's dup2.
        for i in 0..3 {
            if p.stdio[i] >= 0 {
                let t = libc::fcntl(p.stdio[i], libc::F_DUPFD, first_free);
                if t < 0 {
                    fail(err_fd, Stage::Fds);
                }
                p.temp_stdio[i] = t;
            }
        }
        for i in 0..p.listen_fds.len() {
            let t = libc::fcntl(p.listen_fds[i], libc::F_DUPFD, first_free);
            if t < 0 {
                fail(err_fd, Stage::Fds);
            }
            p.temp_fds[i] = t;
        }
        let err_fd = {
            let moved = libc::fcntl(err_fd, libc::F_DUPFD_CLOEXEC, first_free);
            if moved < 0 {
                fail(err_fd, Stage::Fds);
            }
            moved
        };
        for (i, t) in p.temp_stdio.iter().enumerate() {
            // dup2 leaves the new fd without CLOEXEC, which is what the hand-over needs.
            if *t >= 0 && libc::dup2(*t, i as c_int) < 0 {
                fail(err_fd, Stage::Fds);
            }
        }
        for (i, t) in p.temp_fds.iter().enumerate() {
            if libc::dup2(*t, 3 + i as c_int) < 0 {
                fail(err_fd, Stage::Fds);
            }
        }
        if err_fd > first_free {
            close_from_to(first_free, err_fd - 1, p.max_fd);
        }
        close_from_to(err_fd + 1, c_int::MAX, p.max_fd);

        if !p.listen_pid_ptr.is_null() {
            let mut pid = libc::getpid() as u32;
            let mut digits = [0u8; 10];
            let mut len = 0;
            loop {
                digits[len] = b'0' + (pid % 10) as u8;
                len += 1;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            let base = p.listen_pid_ptr.add(LISTEN_PID_PREFIX.len());
            for i in 0..len {
                *base.add(i) = digits[len - 1 - i];
            }
            *base.add(len) = 0;
        }

        // Default dispositions: exec keeps ignored signals ignored (Rust ignores SIGPIPE, and
        // our own parent may have ignored anything, the C library's internal signals included,
        // which its sigaction wrapper refuses to touch). The raw syscall takes a kernel
        // sigaction; all zeroes (at least as large as any architecture's) is SIG_DFL, no
        // flags, empty mask.
        let dfl = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr());
        fail(err_fd, Stage::Exec)
    }
}

/// Reports `errno` for `stage` to the parent and exits 127. Async-signal-safe.
fn fail(err_fd: RawFd, stage: Stage) -> ! {
    let errno = Errno::last_raw();
    let mut report = [0u8; 8];
    let tag: u32 = match stage {
        Stage::Exec => 0,
        Stage::Fds => 1,
    };
    report[..4].copy_from_slice(&tag.to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write and _exit are async-signal-safe; `report` lives on this stack.
    unsafe {
        libc::write(err_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// Closes fds `first..=last`; falls back to a loop bounded by the fd limit without close_range.
fn close_from_to(first: c_int, last: c_int, max_fd: c_int) {
    // SAFETY: raw syscalls on fd numbers only; async-signal-safe.
    unsafe {
        let r = libc::syscall(
            libc::SYS_close_range,
            first as c_uint,
            last as c_uint,
            0 as c_uint,
        );
        if r != 0 {
            let mut fd = first;
            while fd <= last && fd < max_fd {
                libc::close(fd);
                fd += 1;
            }
        }
    }
}

/// `sigtimedwait`: takes one pending signal of `set` (which must be blocked), waiting at most
/// `timeout` (`None`: for as long as it takes). `Ok(None)` when the time ran out.
pub(crate) fn sigtimedwait(
    set: &SigSet,
    timeout: Option<std::time::Duration>,
) -> Result<Option<c_int>, Errno> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `set` is a valid sigset_t, the siginfo pointer may be null, and `ts_ptr` is null or
    // points at `ts`, which outlives the call.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), ts_ptr) };
    match r {
        -1 => match Errno::last() {
            Errno::EAGAIN => Ok(None),
            e => Err(e),
        },
        signo => Ok(Some(signo)),
    }
}

/// Unmaps, from this process only, the pages of `ranges` (clean, read-only mappings of our own
/// executable): they stay in the page cache, shared with every other process that maps the file,
/// and fault back in when run again.
pub(crate) fn release_file_pages(ranges: &[(usize, usize)]) {
    for &(start, end) in ranges {
        // SAFETY: each range is a whole mapping of our executable that is not writable and holds
        // no private (copied-on-write) page, as /proc/self/smaps said: dropping its page-table
        // entries loses nothing, as every page is re-read from the unchanged file on its next
        // access (by any thread). On failure the pages just stay mapped.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Returns the heap's free pages to the kernel (`malloc_trim`): memory that start-up used and
/// freed (argument parsing, the first license check) would otherwise stay resident.
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only rearranges the allocator's free memory; it takes its own lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `kill(pid, signo)` for any signal number (a negative `pid` is a process group).
pub(crate) fn kill_raw(pid: i32, signo: c_int) -> Result<(), Errno> {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    let r = unsafe { libc::kill(pid, signo) };
    if r == 0 { Ok(()) } else { Err(Errno::last()) }
}

/// `set` with the signals numbered `extra` added (nix's `SigSet::add` takes named signals only).
pub(crate) fn sigset_with(set: SigSet, extra: impl IntoIterator<Item = c_int>) -> SigSet {
    let mut raw: libc::sigset_t = *set.as_ref();
    for signo in extra {
        // SAFETY: `raw` is an initialised sigset_t on our stack; sigaddset rejects (EINVAL) a
        // number out of range without touching it.
        unsafe {
            libc::sigaddset(&mut raw, signo);
        }
    }
    // SAFETY: `raw` came from a valid SigSet and was only changed through sigaddset.
    unsafe { SigSet::from_sigset_t_unchecked(raw) }
}

/// Closes `fd` whoever owns it: for tests that lay out fds by number, each in a process of its own.
#[cfg(test)]
pub(crate) fn close_fd_for_test(fd: RawFd) {
    // SAFETY: close on a number; the callers run alone in a process made for one test, where no
    // other code uses `fd`.
    unsafe {
        libc::close(fd);
    }
}

/// Closes a descriptor this process just received through `SCM_RIGHTS`.
pub fn close_received(fd: RawFd) {
    // SAFETY: a descriptor received through SCM_RIGHTS belongs to this process alone; nothing
    // else holds or closes it.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
}
