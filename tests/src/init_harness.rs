//! Running privitty-init as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`),
//! or directly as a child subreaper, for the PID-1 tests and the init benchmark.
//!
//! Owns: starting init with `privitty-testproc` as its command, finding init's pid as seen from
//! here, listing init's children through our `/proc`, and reading the line files the testproc
//! writes. Must not: sleep to wait (everything waits with [`support::eventually`]).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::support::{self, Proc};

/// How long any single awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Set to `1` to make every test that cannot run here fail instead of being skipped (CI).
pub const REQUIRE_ALL_TESTS: &str = "PRIVITTY_REQUIRE_ALL_TESTS";

/// Reports that `test` cannot run here and returns false, so the caller returns at once. The line
/// bypasses the test harness's output capture, so a skip is seen even when the test "passes";
/// with `PRIVITTY_REQUIRE_ALL_TESTS=1` it is a failure instead.
pub fn skip(test: &str, reason: &str) -> bool {
    if std::env::var(REQUIRE_ALL_TESTS).is_ok_and(|v| v == "1") {
        panic!("{test} cannot run: {reason} ({REQUIRE_ALL_TESTS}=1)");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
    false
}

/// Whether `program` can be run (it answers `--version`).
pub fn has_command(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// True when PID namespaces can be created here (root and `unshare` present); otherwise reports
/// that `test` is skipped (see [`skip`]).
pub fn can_unshare(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skip(
            test,
            "needs root for `unshare --pid` (run the tests as root)",
        );
    }
    if !has_command("unshare") {
        return skip(test, "`unshare` (util-linux) is not installed");
    }
    true
}

/// Sends signal number `signo` to `pid` with the `kill` command: nix's `kill` names only the
/// classic signals, and this crate has no unsafe code for the raw call.
pub fn send_signal_number(pid: Pid, signo: i32) {
    let out = Command::new("kill")
        .args(["-s", &signo.to_string(), &pid.to_string()])
        .output()
        .expect("running kill");
    assert!(
        out.status.success(),
        "kill -s {signo} {pid}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn testproc() -> PathBuf {
    support::bin("privitty-testproc")
}

/// How to launch init.
#[derive(Debug, Clone)]
pub struct InitSpec {
    /// Arguments to privitty-init (e.g. `--plain -- <testproc> …`).
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// Run as PID 1 of a new PID namespace (else as an ordinary child subreaper).
    pub pid_namespace: bool,
    /// File descriptors opened (without CLOEXEC) in init's environment, to check they do not leak.
    pub extra_fds: bool,
    /// The init binary (default: our privitty-init).
    pub init: Option<PathBuf>,
    /// The directory init is started in (default: the test's).
    pub cwd: Option<PathBuf>,
}

impl InitSpec {
    /// `privitty-init --plain -- <testproc> <testproc_args…>` as PID 1.
    pub fn plain(testproc_args: &[&str]) -> InitSpec {
        let mut args: Vec<OsString> = vec!["--plain".into(), "--".into(), testproc().into()];
        args.extend(testproc_args.iter().map(OsString::from));
        InitSpec {
            args,
            env: Vec::new(),
            pid_namespace: true,
            extra_fds: false,
            init: None,
            cwd: None,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> InitSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn without_namespace(mut self) -> InitSpec {
        self.pid_namespace = false;
        self
    }

    pub fn with_extra_fds(mut self) -> InitSpec {
        self.extra_fds = true;
        self
    }

    pub fn in_dir(mut self, dir: &Path) -> InitSpec {
        self.cwd = Some(dir.to_path_buf());
        self
    }
}

/// A running privitty-init; killed (with its namespace) on drop, its output printed on failure.
#[derive(Debug)]
pub struct Init {
    pub proc: Proc,
    /// init's pid as seen from the test (the host side of the namespace).
    pub pid: Pid,
    pub pid_namespace: bool,
}

impl Init {
    pub fn start(name: &str, spec: InitSpec, log_dir: &Path) -> Init {
        let init = spec
            .init
            .clone()
            .unwrap_or_else(|| support::bin("privitty-init"));
        let mut argv: Vec<OsString> = Vec::new();
        if spec.pid_namespace {
            argv.extend(
                ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"].map(OsString::from),
            );
        }
        argv.push(init.into());
        argv.extend(spec.args.iter().cloned());
        let mut cmd = if spec.extra_fds {
            // A shell opens fds 7 and 9 without CLOEXEC, then becomes the launcher.
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg("exec 7</dev/null 9>/dev/null; exec \"$@\"")
                .arg("sh")
                .args(&argv);
            c
        } else {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        };
        cmd.env("PRIVITTY_LOG", "debug");
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        let proc = Proc::spawn(name, cmd, log_dir);
        let launcher = Pid::from_raw(proc.pid() as i32);
        let mut proc = proc;
        let pid = if spec.pid_namespace {
            // An init that exits at once may be gone before it is seen; then signals are moot.
            support::eventually(DEADLINE, "unshare to fork init", || {
                if let Some((p, _)) = children_of(launcher).first() {
                    return Some(*p);
                }
                matches!(proc.child.try_wait(), Ok(Some(_))).then_some(launcher)
            })
        } else {
            launcher
        };
        Init {
            proc,
            pid,
            pid_namespace: spec.pid_namespace,
        }
    }

    /// Sends `sig` to init itself (from outside its namespace, as `docker kill` does).
    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(self.pid, sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig}): {e}\n{}", self.pid, self.proc.output()));
    }

    /// Sends signal number `signo` (a realtime one, say) to init itself.
    pub fn signal_number(&self, signo: i32) {
        send_signal_number(self.pid, signo);
    }

    /// Waits for init to exit; the exit code, with 128+N for death by signal N (as unshare passes
    /// a signal death on by dying of the same signal).
    pub fn wait_exit(&mut self) -> i32 {
        let child = &mut self.proc.child;
        let status = support::eventually(DEADLINE, "init to exit", || {
            child.try_wait().expect("try_wait on init")
        });
        code(status)
    }

    /// init's children as (pid, state letter) from our `/proc`.
    pub fn children(&self) -> Vec<(Pid, char)> {
        children_of(self.pid)
    }

    /// The state letter of init itself (`S`, `R`, `T` for stopped, …).
    pub fn state(&self) -> char {
        stat(self.pid).map(|(_, s)| s).unwrap_or('?')
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        // In a namespace, killing init (Proc's drop kills unshare, which kills init) takes the
        // whole namespace with it. A subreaper's descendants would outlive it: kill them first.
        if !self.pid_namespace && self.proc.child.try_wait().ok().flatten().is_none() {
            let mut queue = vec![self.pid];
            while let Some(p) = queue.pop() {
                for (c, _) in children_of(p) {
                    let _ = nix::sys::signal::kill(c, Signal::SIGKILL);
                    queue.push(c);
                }
            }
        }
    }
}

/// ExitStatus as a shell would show it.
pub fn code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// (ppid, state) of a process from `/proc/<pid>/stat`.
fn stat(pid: Pid) -> Option<(i32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Children of `parent` with their state letters, by scanning `/proc`.
pub fn children_of(parent: Pid) -> Vec<(Pid, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some((ppid, state)) = stat(Pid::from_raw(pid))
            && ppid == parent.as_raw()
        {
            out.push((Pid::from_raw(pid), state));
        }
    }
    out.sort();
    out
}

/// The lines of a testproc report file (empty if it does not exist yet).
pub fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `file` has a line equal to `line`.
pub fn wait_line(file: &Path, line: &str) {
    support::eventually(
        DEADLINE,
        &format!("line {line:?} in {}", file.display()),
        || lines(file).iter().any(|l| l == line).then_some(()),
    )
}

/// Waits until `count` lines starting with `prefix` are in `file`.
pub fn wait_lines_starting(file: &Path, prefix: &str, count: usize) -> Vec<String> {
    support::eventually(DEADLINE, &format!("{count} lines {prefix:?}…"), || {
        let found: Vec<String> = lines(file)
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect();
        (found.len() >= count).then_some(found)
    })
}
