//! The license watch: notices that the license files in the accounts directory may have changed.
//!
//! Owns: the directory watch (inotify: atomic renames, `docker cp`, Kubernetes `..data` symlink
//! swaps), the periodic poll for filesystems where inotify is silent (NFS, some bind mounts,
//! Docker Desktop shares), and the debounce that turns a burst of events into one check. Must not
//! read or judge license content: it only says "look again"; the driver verifies. It runs on the
//! driver's one thread: its inotify fd is polled with the others, its deadline joins the timers.
//!
//! The directory is watched rather than the file because a rename replaces the file's inode, and
//! a watch on the old inode would never fire again.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use licensectl::accounts::{ACTIVATION_FILE, DEVICE_UUID_FILE, LICENSE_FILE};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Quiet time after the last event before checking: one `docker cp` or rename is many events.
pub const DEBOUNCE_QUIET: Duration = Duration::from_millis(50);
/// A writer that never pauses (a slow copy) is still checked this often.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// Collapses a burst of events into one firing: `quiet` after the last event, but no later than
/// `max` after the first.
#[derive(Clone, Debug)]
pub struct Debounce {
    quiet: Duration,
    max: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub fn new(quiet: Duration, max: Duration) -> Debounce {
        Debounce {
            quiet,
            max,
            first: None,
            last: None,
        }
    }

    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending burst should fire, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        Some((self.last? + self.quiet).min(self.first? + self.max))
    }

    /// True (and the burst forgotten) when the deadline has passed.
    pub fn fire(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(at) if at <= now => {
                self.first = None;
                self.last = None;
                true
            }
            _ => false,
        }
    }
}

/// Whether a directory entry can change which license a new generation would load.
pub fn is_relevant(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    // `..data` and its timestamped targets are how Kubernetes swaps mounted secrets.
    name == LICENSE_FILE
        || name == ACTIVATION_FILE
        || name == DEVICE_UUID_FILE
        || name.starts_with("..")
}

/// The inotify events that can mean new content. Opens, reads and closes after reading are not
/// asked for: every license check reads the files, and counting those would make the watch
/// trigger itself forever.
pub fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// Whether an inotify event calls for a look at the files. An overflowed queue, or the directory
/// itself gone or moved, may hide any change: look again to be safe.
pub fn wants_check(mask: AddWatchFlags, name: Option<&OsStr>) -> bool {
    let anything = AddWatchFlags::IN_Q_OVERFLOW
        | AddWatchFlags::IN_IGNORED
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF;
    mask.intersects(anything) || name.is_some_and(is_relevant)
}

/// Cheap identity of the license files on disk (following symlinks): any replacement, rewrite or
/// touch changes it. The poll compares these instead of reading and verifying every time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<FileStamp>>);

/// device, inode, length, mtime (s, ns), ctime (s, ns).
type FileStamp = (u64, u64, u64, i64, i64, i64, i64);

impl Fingerprint {
    pub fn of(dir: &Path) -> Fingerprint {
        Fingerprint(
            [LICENSE_FILE, ACTIVATION_FILE, DEVICE_UUID_FILE]
                .iter()
                .map(|name| {
                    std::fs::metadata(dir.join(name)).ok().map(|m| {
                        (
                            m.dev(),
                            m.ino(),
                            m.len(),
                            m.mtime(),
                            m.mtime_nsec(),
                            m.ctime(),
                            m.ctime_nsec(),
                        )
                    })
                })
                .collect(),
        )
    }
}

/// The watch of one directory: an inotify fd to poll, a debounce and a poll schedule.
#[derive(Debug)]
pub struct LicenseWatch {
    dir: PathBuf,
    /// `None` when inotify cannot be used (or stopped working): the poll alone is left.
    inotify: Option<Inotify>,
    debounce: Debounce,
    poll_interval: Duration,
    next_poll: Instant,
    /// The fingerprint at the last report (or at the start).
    seen: Fingerprint,
}

impl LicenseWatch {
    /// Starts watching `dir`. When inotify cannot be used, logs why and relies on the poll alone.
    pub fn start(dir: PathBuf, poll_interval: Duration, now: Instant) -> LicenseWatch {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| i.add_watch(dir.as_path(), watch_mask()).map(|_| i));
        let inotify = match inotify {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    poll = %humantime::format_duration(poll_interval),
                    "cannot watch the accounts directory; relying on the poll alone"
                );
                None
            }
        };
        let poll_interval = poll_interval.max(Duration::from_millis(10));
        // Taken now, so a change made right after `start` returns is seen as one.
        let seen = Fingerprint::of(&dir);
        LicenseWatch {
            dir,
            inotify,
            debounce: Debounce::new(DEBOUNCE_QUIET, DEBOUNCE_MAX),
            poll_interval,
            next_poll: now + poll_interval,
            seen,
        }
    }

    /// The fd to poll (while inotify works).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(AsFd::as_fd)
    }

    /// The fd is readable: takes its events; a relevant one starts (or extends) a debounce.
    pub fn on_readable(&mut self, now: Instant) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        loop {
            match inotify.read_events() {
                Ok(events) => {
                    let relevant = events
                        .iter()
                        .any(|e| wants_check(e.mask, e.name.as_deref()));
                    if relevant {
                        self.debounce.event(now);
                    }
                    if events
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
                    {
                        tracing::warn!(
                            dir = %self.dir.display(),
                            "the accounts directory is no longer watched (removed or unmounted); \
                             relying on the poll alone"
                        );
                        self.inotify = None;
                        return;
                    }
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "inotify failed; relying on the poll alone");
                    self.inotify = None;
                    self.debounce.event(now);
                    return;
                }
            }
        }
    }

    /// When [`LicenseWatch::on_time`] wants to run next.
    pub fn deadline(&self) -> Instant {
        self.debounce
            .deadline()
            .map_or(self.next_poll, |d| d.min(self.next_poll))
    }

    /// Runs what is due at `now`; true means "the license files may have changed: look again".
    pub fn on_time(&mut self, now: Instant) -> bool {
        if self.debounce.fire(now) {
            self.seen = Fingerprint::of(&self.dir);
            return true;
        }
        if now < self.next_poll {
            return false;
        }
        self.next_poll = now + self.poll_interval;
        let current = Fingerprint::of(&self.dir);
        if current == self.seen {
            return false;
        }
        tracing::debug!(dir = %self.dir.display(), "poll saw the license files change");
        self.seen = current;
        // A burst still settling is left to the debounce; the poll catches silent filesystems.
        self.debounce.deadline().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    const MS: Duration = Duration::from_millis(1);

    /// A fresh directory removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new() -> TestDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "privitty-init-watch-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_burst_fires_once_after_it_goes_quiet() {
        let t0 = Instant::now();
        let mut d = Debounce::new(100 * MS, 1000 * MS);
        assert_eq!(d.deadline(), None);
        d.event(t0);
        d.event(t0 + 50 * MS);
        assert_eq!(d.deadline(), Some(t0 + 150 * MS));
        assert!(!d.fire(t0 + 149 * MS));
        assert!(d.fire(t0 + 150 * MS));
        assert!(!d.fire(t0 + 500 * MS), "fires once per burst");
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn a_writer_that_never_pauses_is_still_checked_after_max() {
        let t0 = Instant::now();
        let mut d = Debounce::new(100 * MS, 1000 * MS);
        let mut t = t0;
        let mut fired_at = None;
        while t < t0 + 3000 * MS {
            d.event(t);
            if d.fire(t) {
                fired_at = Some(t);
                break;
            }
            t += 50 * MS;
        }
        assert_eq!(fired_at, Some(t0 + 1000 * MS));
    }

    #[test]
    fn only_license_related_names_are_relevant() {
        for yes in [
            "privitty.lic",
            "activation.json",
            "device.uuid",
            "..data",
            "..2026_11_27",
        ] {
            assert!(is_relevant(OsStr::new(yes)), "{yes}");
        }
        for no in [
            "accounts",
            "usage.json",
            ".privitty-license.lock",
            "privitty.lic.tmp",
        ] {
            assert!(!is_relevant(OsStr::new(no)), "{no}");
        }
    }

    #[test]
    fn reading_the_license_is_never_asked_for() {
        let mask = watch_mask();
        for read in [
            AddWatchFlags::IN_ACCESS,
            AddWatchFlags::IN_OPEN,
            AddWatchFlags::IN_CLOSE_NOWRITE,
        ] {
            assert!(!mask.contains(read), "{read:?}");
        }
        for change in [
            AddWatchFlags::IN_CLOSE_WRITE,
            AddWatchFlags::IN_MOVED_TO,
            AddWatchFlags::IN_CREATE,
            AddWatchFlags::IN_DELETE,
        ] {
            assert!(mask.contains(change), "{change:?}");
        }
    }

    #[test]
    fn an_overflow_or_a_lost_directory_is_checked_and_unrelated_names_are_not() {
        let ours = OsStr::new(LICENSE_FILE);
        assert!(wants_check(AddWatchFlags::IN_Q_OVERFLOW, None));
        assert!(wants_check(AddWatchFlags::IN_DELETE_SELF, None));
        assert!(wants_check(AddWatchFlags::IN_IGNORED, None));
        assert!(wants_check(AddWatchFlags::IN_MOVED_TO, Some(ours)));
        assert!(wants_check(
            AddWatchFlags::IN_CLOSE_WRITE,
            Some(OsStr::new("..data"))
        ));
        assert!(!wants_check(
            AddWatchFlags::IN_CREATE,
            Some(OsStr::new("accounts.toml"))
        ));
        assert!(!wants_check(AddWatchFlags::IN_MODIFY, None));
    }

    #[test]
    fn the_fingerprint_changes_on_replace_rewrite_and_removal() {
        let dir = TestDir::new();
        let lic = dir.path().join(LICENSE_FILE);
        let empty = Fingerprint::of(dir.path());
        std::fs::write(&lic, "one").unwrap();
        let one = Fingerprint::of(dir.path());
        assert_ne!(empty, one);
        assert_eq!(one, Fingerprint::of(dir.path()), "stable when untouched");
        let tmp = dir.path().join("x.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &lic).unwrap();
        let two = Fingerprint::of(dir.path());
        assert_ne!(one, two);
        std::fs::remove_file(&lic).unwrap();
        assert_eq!(Fingerprint::of(dir.path()), empty);
    }

    /// Drives `watch` as the driver does (polling its fd until its deadline) until it reports a
    /// change, or panics after a generous deadline.
    fn expect_change(watch: &mut LicenseWatch, what: &str) {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let now = Instant::now();
            assert!(now < give_up, "no change reported for {what}");
            if watch.on_time(now) {
                return;
            }
            let wait = watch.deadline().min(give_up).saturating_duration_since(now);
            let timeout = PollTimeout::try_from(wait.as_millis().max(1) as i32).unwrap();
            let readable = match watch.fd() {
                Some(fd) => {
                    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
                    nix::poll::poll(&mut fds, timeout).unwrap() > 0
                }
                None => {
                    nix::poll::poll(&mut [], timeout).unwrap();
                    false
                }
            };
            if readable {
                watch.on_readable(Instant::now());
            }
        }
    }

    #[test]
    fn an_atomic_rename_into_the_directory_is_reported() {
        let dir = TestDir::new();
        // a poll interval far beyond the test proves inotify did it
        let mut watch = LicenseWatch::start(
            dir.path().to_path_buf(),
            Duration::from_secs(3600),
            Instant::now(),
        );
        assert!(watch.fd().is_some(), "inotify is available here");
        let tmp = dir.path().join(".incoming");
        std::fs::write(&tmp, "license").unwrap();
        std::fs::rename(&tmp, dir.path().join(LICENSE_FILE)).unwrap();
        expect_change(&mut watch, "an atomic rename");
    }

    #[test]
    fn the_poll_alone_notices_a_change() {
        let dir = TestDir::new();
        let mut watch = LicenseWatch::start(dir.path().to_path_buf(), 20 * MS, Instant::now());
        // no inotify at all: like NFS
        watch.inotify = None;
        std::fs::write(dir.path().join(LICENSE_FILE), "x").unwrap();
        expect_change(&mut watch, "a poll");
    }

    #[test]
    fn reading_the_files_reports_nothing() {
        let dir = TestDir::new();
        std::fs::write(dir.path().join(LICENSE_FILE), "x").unwrap();
        let mut watch = LicenseWatch::start(
            dir.path().to_path_buf(),
            Duration::from_secs(3600),
            Instant::now(),
        );
        let _ = std::fs::read(dir.path().join(LICENSE_FILE)).unwrap();
        // Whatever inotify queued for the read (nothing: it is not asked for) is taken now.
        watch.on_readable(Instant::now());
        assert_eq!(watch.debounce.deadline(), None, "a read started a debounce");
    }
}
