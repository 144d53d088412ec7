//! The license watch: notices that the license files in the accounts directory may have changed.
//!
//! Owns: the directory watch (inotify through `notify`: atomic renames, `docker cp`, Kubernetes
//! `..data` symlink swaps), the periodic poll for filesystems where inotify is silent (NFS, some
//! bind mounts, Docker Desktop shares), and the debounce that turns a burst of events into one
//! check. Must not read or judge license content: it only says "look again"; the driver verifies.
//!
//! The directory is watched rather than the file because a rename replaces the file's inode, and
//! a watch on the old inode would never fire again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use licensectl::accounts::{ACTIVATION_FILE, DEVICE_UUID_FILE, LICENSE_FILE};
use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

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

/// Whether an event can mean new content. Opens and reads are not: every license check reads the
/// file, and counting those would make the watch trigger itself forever.
pub fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
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

/// A running watch; dropping it stops the inotify watch (the task ends when its receiver is gone).
#[derive(Debug)]
pub struct LicenseWatch {
    _watcher: Option<RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LicenseWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LicenseWatch {
    /// Starts watching `dir`; sends `()` on `changed` whenever the license files may have changed.
    /// When inotify cannot be used, logs why and relies on the poll alone. Must run inside a tokio
    /// runtime.
    pub fn start(
        dir: PathBuf,
        poll_interval: Duration,
        changed: mpsc::UnboundedSender<()>,
    ) -> LicenseWatch {
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let watcher = match start_inotify(&dir, raw_tx) {
            Ok(w) => Some(w),
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
        // Taken now, so a change made right after `start` returns is seen as one.
        let seen = Fingerprint::of(&dir);
        let task = tokio::spawn(run(dir, seen, poll_interval, raw_rx, changed));
        LicenseWatch {
            _watcher: watcher,
            task,
        }
    }
}

/// Whether a watcher report calls for a look at the files. An overflowed queue, a rescan request or
/// an error may hide any change: look again to be safe.
pub fn wants_check(res: &notify::Result<notify::Event>) -> bool {
    match res {
        Ok(ev) => {
            ev.need_rescan()
                || (is_change(&ev.kind)
                    && (ev.paths.is_empty()
                        || ev
                            .paths
                            .iter()
                            .any(|p| p.file_name().is_some_and(is_relevant))))
        }
        Err(_) => true,
    }
}

fn start_inotify(
    dir: &Path,
    raw_tx: mpsc::UnboundedSender<()>,
) -> Result<RecommendedWatcher, notify::Error> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if wants_check(&res) {
            let _ = raw_tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

async fn run(
    dir: PathBuf,
    mut seen: Fingerprint,
    poll_interval: Duration,
    mut raw: mpsc::UnboundedReceiver<()>,
    changed: mpsc::UnboundedSender<()>,
) {
    let mut debounce = Debounce::new(DEBOUNCE_QUIET, DEBOUNCE_MAX);
    let mut poll = tokio::time::interval(poll_interval.max(Duration::from_millis(10)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inotify_alive = true;
    loop {
        let deadline = debounce.deadline();
        tokio::select! {
            ev = raw.recv(), if inotify_alive => match ev {
                Some(()) => debounce.event(Instant::now()),
                None => inotify_alive = false,
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                if debounce.fire(Instant::now()) {
                    seen = Fingerprint::of(&dir);
                    if changed.send(()).is_err() {
                        return;
                    }
                }
            }
            _ = poll.tick() => {
                let now = Fingerprint::of(&dir);
                if now != seen {
                    tracing::debug!(dir = %dir.display(), "poll saw the license files change");
                    seen = now;
                    // A burst still settling is left to the debounce; the poll catches silent filesystems.
                    if debounce.deadline().is_none() && changed.send(()).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
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
    fn reading_the_license_is_not_a_change() {
        use notify::event::{CreateKind, RemoveKind, RenameMode};
        for no in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(!is_change(&no), "{no:?}");
        }
        for yes in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(is_change(&yes), "{yes:?}");
        }
    }

    #[test]
    fn an_overflow_or_error_is_checked_and_unrelated_names_are_not() {
        use notify::event::{CreateKind, Flag};
        let dir = Path::new("/var/lib/privitty");
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(wants_check(&Ok(overflow)));
        assert!(wants_check(&Err(notify::Error::generic("inotify failed"))));
        let ours = notify::Event::new(EventKind::Create(CreateKind::File))
            .add_path(dir.join(LICENSE_FILE));
        assert!(wants_check(&Ok(ours)));
        let other = notify::Event::new(EventKind::Create(CreateKind::File))
            .add_path(dir.join("accounts.toml"));
        assert!(!wants_check(&Ok(other)));
        let read = notify::Event::new(EventKind::Access(AccessKind::Read))
            .add_path(dir.join(LICENSE_FILE));
        assert!(!wants_check(&Ok(read)));
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

    async fn expect_change(rx: &mut mpsc::UnboundedReceiver<()>, what: &str) {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no change reported for {what}"))
            .expect("watch alive");
    }

    #[tokio::test]
    async fn an_atomic_rename_into_the_directory_is_reported() {
        let dir = TestDir::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // a poll interval far beyond the test proves inotify did it
        let _watch = LicenseWatch::start(dir.path().to_path_buf(), Duration::from_secs(3600), tx);
        let tmp = dir.path().join(".incoming");
        std::fs::write(&tmp, "license").unwrap();
        std::fs::rename(&tmp, dir.path().join(LICENSE_FILE)).unwrap();
        expect_change(&mut rx, "an atomic rename").await;
    }

    #[tokio::test]
    async fn the_poll_alone_notices_a_change() {
        let dir = TestDir::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        // no inotify at all: like NFS
        drop(raw_tx);
        let seen = Fingerprint::of(dir.path());
        let task = tokio::spawn(run(dir.path().to_path_buf(), seen, 20 * MS, raw_rx, tx));
        std::fs::write(dir.path().join(LICENSE_FILE), "x").unwrap();
        expect_change(&mut rx, "a poll").await;
        task.abort();
    }
}
