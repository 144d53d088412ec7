//! Shared helpers for system tests: locating the binaries and the engine, spawning processes whose
//! output is kept in files and printed when a test fails, and `eventually` (poll with a deadline
//! instead of sleeping).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any single awaited condition may take before the test fails (the harnesses and the
/// HTTP client use it; here, at the bottom, so that none of them depends on another for it).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The directory holding the workspace's built binaries (`target/debug` or `target/release`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // test binaries live in target/<profile>/deps/
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary such as `privitty-edged`; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` before the system tests",
        path.display()
    );
    path
}

/// The Delta Chat engine: `$PRIVITTY_ENGINE`, else `target/engine/deltachat-rpc-server`
/// (installed by `tests/scripts/fetch-engine.sh`).
pub fn engine() -> PathBuf {
    if let Some(p) = std::env::var_os("PRIVITTY_ENGINE") {
        return PathBuf::from(p);
    }
    let path = target_dir()
        .parent()
        .expect("target dir")
        .join("engine/deltachat-rpc-server");
    assert!(
        path.is_file(),
        "{} is missing: run tests/scripts/fetch-engine.sh (or set PRIVITTY_ENGINE)",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, or panics after `deadline` saying what was awaited.
pub fn eventually<T>(deadline: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    poll_until(deadline, check)
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// Polls `check` (with a short, growing pause) until it returns `Some`; `None` after `deadline`.
pub fn poll_until<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Async twin of [`eventually`].
pub async fn eventually_async<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A child process whose stdout and stderr go to files in `log_dir`. Killed on drop; when the test
/// is failing (panicking), its output is printed.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin null and output captured under `log_dir/<name>.{out,err}`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        std::fs::create_dir_all(log_dir).expect("create log dir");
        let stdout_path = log_dir.join(format!("{name}.out"));
        let stderr_path = log_dir.join(format!("{name}.err"));
        let out = File::create(&stdout_path).expect("create stdout log");
        let err = File::create(&stderr_path).expect("create stderr log");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Both streams, labelled, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "----- {} stdout -----\n{}\n----- {} stderr -----\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// Waits for exit up to `deadline`; `None` if it is still running then.
    pub fn wait_timeout(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        poll_until(deadline, || self.child.try_wait().expect("try_wait"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lists a directory's files with sizes and, for small text files, their contents — printed on
/// failure so a broken test shows the data dir it left. Secrets in it are test secrets.
pub fn describe_dir(dir: &Path) -> String {
    let mut out = format!("----- files in {} -----\n", dir.display());
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).collect(),
        Err(e) => return format!("{out}(unreadable: {e})\n"),
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        out.push_str(&format!("{} ({} bytes)\n", path.display(), meta.len()));
        if meta.is_file()
            && meta.len() < 4096
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            out.push_str(&text);
            out.push('\n');
        }
    }
    out
}

/// Prints `describe_dir(dir)` if the current test is failing, when dropped.
#[derive(Debug)]
pub struct DumpDirOnFailure(pub PathBuf);

impl Drop for DumpDirOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", describe_dir(&self.0));
        }
    }
}
