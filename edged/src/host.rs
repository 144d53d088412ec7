//! What edged takes from its host: the listening socket (inherited through systemd socket
//! activation, or bound here), the exclusive lock on the data directory, the readiness message,
//! the CPU it yields once a swap has taken its work, and the heap a spare faults in ahead of it.
//!
//! Owns: `LISTEN_FDS` handling (the listener, the connection and the engine hand-over pairs),
//! `<accounts>/.edged.lock`, `NOTIFY_SOCKET` messages, the process's nice value, a spare's C
//! library heap settings. Must not:
//! change the process environment itself (the socket-activation crate clears `LISTEN_*` so the
//! engine does not inherit them) or hold the lock anywhere but for edged's whole life.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

/// The lock file that keeps two edged (and so two engines) off one data directory.
pub const LOCK_FILE: &str = ".edged.lock";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot take the inherited listening socket (LISTEN_FDS, fd 3)")]
    Inherited(#[source] std::io::Error),
    #[error(transparent)]
    Bind(#[from] privitty_base::listen::BindError),
    #[error("cannot create the data directory {path} (check --accounts and its owner)")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot lock {path} (a symlink or anything but a regular file there is refused: remove it)"
    )]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another privitty-edged is running on {path} (it holds {LOCK_FILE}); stop it, or start without --no-wait-lock to wait for it"
    )]
    Busy { path: PathBuf },
}

/// The descriptors of the connection hand-over pair, when privitty-init passed them
/// (`LISTEN_FDNAMES` `handover-send` and `handover-recv`, see [`crate::handover`]).
#[derive(Debug)]
pub struct HandoverFds {
    pub send: std::os::fd::OwnedFd,
    pub recv: std::os::fd::OwnedFd,
}

static HANDOVER: std::sync::Mutex<Option<HandoverFds>> = std::sync::Mutex::new(None);

static ENGINE_PAIR: std::sync::Mutex<Option<crate::engine_handover::EnginePair>> =
    std::sync::Mutex::new(None);

static WAKE: std::sync::Mutex<Option<std::os::fd::OwnedFd>> = std::sync::Mutex::new(None);

/// The descriptor a spare generation waits on ([`crate::spare`], `LISTEN_FDNAMES` `wake`), when
/// privitty-init started this process as a spare; taken once.
pub fn take_wake() -> Option<std::os::fd::OwnedFd> {
    WAKE.lock().map(|mut w| w.take()).unwrap_or(None)
}

/// The engine hand-over pair [`take_listener`] found (`LISTEN_FDNAMES` `engine-send` and
/// `engine-recv`, see [`crate::engine_handover`]); taken once.
pub fn take_engine_pair() -> Option<crate::engine_handover::EnginePair> {
    ENGINE_PAIR.lock().map(|mut h| h.take()).unwrap_or(None)
}

/// Takes one inherited descriptor by index, owned and close-on-exec at once: the engine, spawned
/// later, must not inherit it.
fn take_named(
    fds: &mut listenfd::ListenFd,
    index: Option<usize>,
) -> Result<Option<std::os::fd::OwnedFd>, HostError> {
    let Some(index) = index else {
        return Ok(None);
    };
    let Some(fd) = fds.take_raw_fd(index).map_err(HostError::Inherited)? else {
        return Ok(None);
    };
    let fd = crate::handover::adopt(fd);
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| HostError::Inherited(e.into()))?;
    Ok(Some(fd))
}

/// Takes two inherited descriptors by name, both or neither (see [`take_named`]).
fn take_named_pair(
    fds: &mut listenfd::ListenFd,
    first: Option<usize>,
    second: Option<usize>,
) -> Result<Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>, HostError> {
    let (Some(first), Some(second)) = (first, second) else {
        return Ok(None);
    };
    let first = take_named(fds, Some(first))?;
    let second = take_named(fds, Some(second))?;
    Ok(first.zip(second))
}

/// The hand-over descriptors [`take_listener`] found (taken once: the HTTP server adopts them).
pub fn take_handover() -> Option<HandoverFds> {
    HANDOVER.lock().map(|mut h| h.take()).unwrap_or(None)
}

/// The listener from `LISTEN_FDS` when present (the one named `http` in `LISTEN_FDNAMES`, else fd
/// 3), else `addr` bound here; also keeps the hand-over pair for [`take_handover`]. Call before any
/// thread starts: taking the inherited sockets clears `LISTEN_FDS`/`LISTEN_PID`.
pub fn take_listener(addr: SocketAddr) -> Result<(TcpListener, &'static str), HostError> {
    let names: Vec<String> = std::env::var(privitty_base::env::LISTEN_FDNAMES)
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        let count = fds.len();
        let index = |name: &str| names.iter().position(|n| n == name).filter(|i| *i < count);
        let http = index("http").unwrap_or(0);
        let handover = take_named_pair(
            &mut fds,
            index(crate::handover::SEND_NAME),
            index(crate::handover::RECV_NAME),
        )?;
        let engine = take_named_pair(
            &mut fds,
            index(crate::engine_handover::SEND_NAME),
            index(crate::engine_handover::RECV_NAME),
        )?;
        let wake = take_named(&mut fds, index(crate::spare::WAKE_NAME))?;
        let named = handover.is_some() || engine.is_some() || wake.is_some();
        if let Some(wake) = wake {
            *WAKE.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
        }
        if let Some((send, recv)) = handover {
            *HANDOVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(HandoverFds { send, recv });
        }
        if let Some((send, recv)) = engine {
            *ENGINE_PAIR.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(crate::engine_handover::EnginePair::new(send, recv));
        }
        if !named && count > 1 {
            tracing::warn!(
                count,
                "several sockets inherited; serving on the first (fd 3)"
            );
        }
        if let Some(l) = fds.take_tcp_listener(http).map_err(HostError::Inherited)? {
            l.set_nonblocking(true).map_err(HostError::Inherited)?;
            return Ok((l, "inherited"));
        }
        return Err(HostError::Inherited(std::io::Error::new(
            ErrorKind::InvalidInput,
            "fd 3 is not a TCP listening socket",
        )));
    }
    // The same socket privitty-init would have handed over; connections beyond the connection
    // cap wait in its backlog.
    let l = privitty_base::listen::bind(addr)?;
    l.set_nonblocking(true)
        .map_err(|source| HostError::Bind(privitty_base::listen::BindError { addr, source }))?;
    Ok((l, "bound"))
}

/// Held for edged's whole life; dropping it releases the data directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

/// Creates the data directory and locks it. When another edged holds it: waits for it to exit
/// (`wait = true`, how the supervisor hands over between generations) or fails with [`HostError::Busy`].
pub async fn lock_data_dir(dir: &Path, wait: bool) -> Result<DataDirLock, HostError> {
    std::fs::create_dir_all(dir).map_err(|source| HostError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(LOCK_FILE);
    // O_NOFOLLOW: a link planted in the data volume must not make edged create or lock another
    // file; O_NONBLOCK: a FIFO planted there must not hang start-up (it then fails the flock).
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
            .open(&path)
            .map_err(|source| HostError::Lock {
                path: path.clone(),
                source,
            })?
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(HostError::Lock {
            path,
            source: std::io::Error::other("it is not a regular file; remove it"),
        });
    }
    match file.try_lock() {
        Ok(()) => return Ok(DataDirLock { _file: file, path }),
        Err(std::fs::TryLockError::Error(source)) => return Err(HostError::Lock { path, source }),
        Err(std::fs::TryLockError::WouldBlock) if !wait => {
            return Err(HostError::Busy {
                path: dir.to_path_buf(),
            });
        }
        Err(std::fs::TryLockError::WouldBlock) => {}
    }
    tracing::info!(path = %path.display(), "waiting for the previous privitty-edged to release the data directory");
    let p = path.clone();
    let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|e| HostError::Lock {
            path: p.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| HostError::Lock { path: p, source })?;
    Ok(DataDirLock { _file: file, path })
}

/// Tells the service manager (when `NOTIFY_SOCKET` is set) that edged is ready.
pub fn notify_ready(status: &str) {
    let pid = std::process::id();
    let states = [
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::MainPid(pid),
        sd_notify::NotifyState::Status(status),
    ];
    if let Err(e) = sd_notify::notify(false, &states) {
        tracing::warn!(error = %e, "cannot send READY=1 to NOTIFY_SOCKET");
    }
}

/// Lowers every thread of this process to the lowest CPU priority (nice 19); threads started
/// later inherit it. For a generation that has handed everything over: lowering needs no
/// privilege, and nothing raises it again. Best effort: a thread that ended meanwhile is skipped.
pub fn lower_priority() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let tid = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(tid) = tid {
            // On Linux `PRIO_PROCESS` with a thread id sets that thread's nice value.
            let _ = rustix::process::setpriority_process(Some(tid), LOWEST_PRIORITY);
        }
    }
}

/// The highest nice value: the least CPU when others want it.
const LOWEST_PRIORITY: i32 = 19;

/// Heap each thread a spare starts while it waits faults in (written, then freed and kept). A
/// woken spare's two worker arenas grew by about 1.5 MiB each between the wake-up and the end of
/// the catch-up (about 540 page faults, 88 % of the new generation's faults there, measured with
/// `perf record -e page-faults` under half load): that is what the warm-up moves out of the swap.
pub const SPARE_HEAP_PER_THREAD: usize = 2 << 20;

/// Freed heap an arena keeps instead of returning it to the kernel: above what a spare warmed, so
/// the warm-up is not undone by its own `free`.
const KEPT_FREED_HEAP: usize = 4 * SPARE_HEAP_PER_THREAD;

/// While true, each thread the runtime starts faults in [`SPARE_HEAP_PER_THREAD`] of heap.
static WARMING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For a spare, before its runtime starts its threads: freed heap is kept (up to
/// [`KEPT_FREED_HEAP`] per arena) and every thread started until [`spare_woken`] faults in its
/// heap at once ([`warm_thread_heap`], the runtime's thread-start hook). A spare then pays its
/// first page faults while it waits, next to a serving generation that has the machine to itself,
/// instead of in the swap's catch-up. A generation started from scratch does none of this: its
/// start is on the swap's path, where faulting ahead costs more than it saves.
pub fn prepare_spare_heap() {
    keep_freed_heap(KEPT_FREED_HEAP);
    WARMING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The spare is woken: threads started from now on (a blocking thread that waits for the lock)
/// are on the swap's path and start as they are.
pub fn spare_woken() {
    WARMING.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// The runtime's thread-start hook (see [`prepare_spare_heap`]): while a spare waits, writes 64
/// KiB of this thread's stack and [`SPARE_HEAP_PER_THREAD`] of heap in pieces the allocator serves
/// from this thread's arena (under its 128 KiB direct-mapping threshold), then frees them; the
/// arena keeps the pages.
pub fn warm_thread_heap() {
    warm_this_thread(SPARE_HEAP_PER_THREAD);
}

/// The same for the spare's main thread, which runs the top of the serving path (`run`) from
/// the main heap and needs far less of it (20 pages after a wake-up, against about 270 per worker).
pub fn warm_main_thread() {
    warm_this_thread(256 << 10);
}

/// Returns the bytes of heap it wrote (fewer than `heap` when the spare was woken meanwhile).
fn warm_this_thread(heap: usize) -> usize {
    if !WARMING.load(std::sync::atomic::Ordering::Relaxed) {
        return 0;
    }
    // The deepest the serving path goes on a thread's stack, in round figures: its pages too.
    let mut stack = [0u8; 64 << 10];
    std::hint::black_box(&mut stack);
    const PIECE: usize = 64 << 10;
    let mut pieces: Vec<Vec<u8>> = Vec::with_capacity(heap / PIECE);
    for n in 0..heap / PIECE {
        // Paced: one piece (16 page faults, about 40 µs of CPU here) per millisecond, so the
        // spare's warm-up is a trickle beside the serving generation rather than a burst of a
        // few milliseconds that requests queue behind; and it stops when the spare is woken.
        if n > 0 {
            std::thread::sleep(WARM_PACE);
            if !WARMING.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
        }
        let mut piece = Vec::with_capacity(PIECE);
        // Written, not just reserved: a fresh page is faulted in at its first write.
        piece.resize(PIECE, 0xA5);
        pieces.push(piece);
    }
    let warmed = pieces.len() * PIECE;
    // Not optimised away: the writes are what the warm-up is for.
    drop(std::hint::black_box(pieces));
    warmed
}

/// The pause between two pieces of a spare thread's warm-up (32 pieces per worker).
const WARM_PACE: std::time::Duration = std::time::Duration::from_millis(1);

/// Raises the C library's trim threshold: freed memory at the top of a heap is kept up to `bytes`
/// instead of returned at 128 KiB (this also fixes the direct-mapping threshold at its 128 KiB
/// start value). Only the GNU C library has it; elsewhere a no-op.
fn keep_freed_heap(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let value = i32::try_from(bytes).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets a parameter of the allocator, and is safe to call at any time
        // from any thread; here it runs before the runtime starts its threads.
        #[allow(unsafe_code)]
        let set = unsafe { nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, value) };
        if set != 1 {
            tracing::debug!(
                bytes,
                "the C library refused the trim threshold; the heap warm-up may not last"
            );
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// Tells the service manager edged is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process [`lower_priority_lowers_every_thread_of_the_process`] runs: the
    /// change is the whole process's, so it is made in a process of its own.
    const PRIORITY_CHILD: &str = "PRIVITTY_TEST_LOWER_PRIORITY_CHILD";

    /// The nice value of each thread of this process (field 19 of `/proc/self/task/*/stat`).
    fn nice_of_every_thread() -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .map(|stat| {
                let after_comm = &stat[stat.rfind(") ").unwrap() + 2..];
                after_comm
                    .split_whitespace()
                    .nth(16)
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    /// Runs one test of this binary again in a process of its own, with `marker` set so that it
    /// takes its child's part there (for what changes the whole process: priorities, the
    /// allocator's settings).
    fn run_in_child(test: &str, marker: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture"])
            .env(marker, "1")
            .output()
            .unwrap()
    }

    /// Set in the child process [`a_spare_thread_faults_its_heap_in_once_and_keeps_it`] runs: the
    /// allocator's settings are the whole process's.
    const HEAP_CHILD: &str = "PRIVITTY_TEST_SPARE_HEAP_CHILD";

    /// Page faults of the calling thread so far (field 10 of `/proc/thread-self/stat`).
    fn faults_of_this_thread() -> u64 {
        faults_of("/proc/thread-self/stat")
    }

    /// Minor page faults of a thread, from its `stat` file.
    fn faults_of(stat: &str) -> u64 {
        let stat = std::fs::read_to_string(stat).unwrap();
        let after_comm = &stat[stat.rfind(") ").unwrap() + 2..];
        after_comm
            .split_whitespace()
            .nth(7)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The page faults `work` costs the thread it runs on, in a new thread (a new arena).
    fn faults_in_a_new_thread(work: impl Fn() + Send + 'static) -> Vec<u64> {
        std::thread::spawn(move || {
            (0..2)
                .map(|_| {
                    let before = faults_of_this_thread();
                    work();
                    faults_of_this_thread() - before
                })
                .collect()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_spare_thread_faults_its_heap_in_once_and_keeps_it() {
        if std::env::var_os(HEAP_CHILD).is_some() {
            let pages = (SPARE_HEAP_PER_THREAD / 4096) as u64;
            prepare_spare_heap();
            // A thread started while the spare waits: its first warm-up faults the pages in, and
            // a second one (what the woken generation then allocates) finds them kept.
            let warming = faults_in_a_new_thread(warm_thread_heap);
            spare_woken();
            // A thread started after the wake-up starts as it is.
            let woken = faults_in_a_new_thread(warm_thread_heap);
            println!("faults: while waiting {warming:?}, after the wake-up {woken:?}");
            // With transparent huge pages always on, an arena's 2 MiB may come in one fault.
            let huge = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .is_ok_and(|t| t.contains("[always]"));
            let first = if huge { 1 } else { pages * 3 / 4 };
            assert!(warming[0] >= first, "{warming:?} of {pages} pages");
            assert!(
                warming[1] <= pages / 8,
                "the warmed heap was not kept: {warming:?}"
            );
            assert!(woken.iter().all(|f| *f <= pages / 8), "{woken:?}");
            // A warm-up under way when the spare is woken stops at its next piece: the swap does
            // not wait for the rest (8 MiB would take 127 paced pieces).
            prepare_spare_heap();
            let (tid_tx, tid) = std::sync::mpsc::channel();
            let warming = std::thread::spawn(move || {
                tid_tx.send(nix::unistd::gettid()).unwrap();
                warm_this_thread(8 << 20)
            });
            // Woken once the warm-up is seen writing (its thread faults pages in).
            let stat = format!("/proc/self/task/{}/stat", tid.recv().unwrap());
            let started = faults_of(&stat);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while faults_of(&stat) < started + 16 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the warm-up never started"
                );
                std::thread::yield_now();
            }
            spare_woken();
            let warmed = warming.join().unwrap();
            assert!(warmed < 8 << 20, "the warm-up went on after the wake-up");
            println!(
                "heap warmed once and kept; a warm-up stopped at the wake-up after {warmed} bytes"
            );
            return;
        }
        let out = run_in_child(
            "host::tests::a_spare_thread_faults_its_heap_in_once_and_keeps_it",
            HEAP_CHILD,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("heap warmed once and kept"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn lower_priority_lowers_every_thread_of_the_process() {
        if std::env::var_os(PRIORITY_CHILD).is_some() {
            // A thread started before, waiting; the harness's own threads are there too.
            let (release, wait) = std::sync::mpsc::channel::<()>();
            let waiting = std::thread::spawn(move || wait.recv());
            if nice_of_every_thread().contains(&LOWEST_PRIORITY) {
                println!("SKIPPED: this test process runs at nice {LOWEST_PRIORITY} already");
                return;
            }
            lower_priority();
            let nice = nice_of_every_thread();
            release.send(()).unwrap();
            waiting.join().unwrap().unwrap();
            assert!(nice.len() >= 3, "{nice:?}");
            assert!(nice.iter().all(|n| *n == LOWEST_PRIORITY), "{nice:?}");
            println!("every thread at nice {LOWEST_PRIORITY}: {nice:?}");
            return;
        }
        let out = run_in_child(
            "host::tests::lower_priority_lowers_every_thread_of_the_process",
            PRIORITY_CHILD,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(skipped) = stdout.lines().find(|l| l.starts_with("SKIPPED")) {
            eprintln!("{skipped}");
            return;
        }
        assert!(
            out.status.success() && stdout.contains("every thread at nice 19"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[tokio::test]
    async fn second_locker_is_refused_without_wait_and_admitted_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path(), true).await.unwrap();
        let err = lock_data_dir(dir.path(), false).await.unwrap_err();
        assert!(matches!(err, HostError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("another privitty-edged"));
        let waiter = tokio::spawn({
            let p = dir.path().to_path_buf();
            async move { lock_data_dir(&p, true).await }
        });
        drop(first);
        waiter.await.unwrap().expect("lock after release");
    }
}
