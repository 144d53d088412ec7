//! Starting a child: PATH resolution, the environment with the socket-activation variables, and
//! the mapping of failures to 127/126. Must not wait for the child (the reaper reports its exit).

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::{AccessFlags, Pid, access};
use privitty_base::env;

use super::sys::{self, ForkExecError, Prepared, Stage};
use crate::config::exit;

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct SpawnSpec {
    /// Resolved against `PATH` when it has no `/`.
    pub program: OsString,
    /// argv[1..].
    pub args: Vec<OsString>,
    /// Added to (overriding) our environment.
    pub env: Vec<(OsString, OsString)>,
    /// Left out of our environment (secrets the child has no use for).
    pub env_remove: Vec<OsString>,
    /// The fds that become the child's standard input, output and error (`None`: ours).
    pub stdio: [Option<RawFd>; 3],
    /// Handed over as fd 3.. with `LISTEN_FDS`, `LISTEN_PID` (the child's own pid) and
    /// `LISTEN_FDNAMES`.
    pub listen_fds: Vec<(RawFd, String)>,
    /// Give the child's process group the terminal's foreground (stdin must be a terminal).
    pub foreground_tty: bool,
    /// Sent to the child when privitty-init ends (`PR_SET_PDEATHSIG`, kept across exec); a child
    /// started just as privitty-init ends exits at once. As PID 1 the kernel ends every process of
    /// the namespace anyway; elsewhere this keeps a child from serving on, orphaned.
    pub parent_death_signal: Option<Signal>,
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "command {program:?} not found on PATH ({path}): install it, or give its full path after `--`"
    )]
    NotFoundOnPath { program: OsString, path: String },
    #[error("command {} does not exist: check the path given after `--`", path.display())]
    NotFound { path: PathBuf },
    #[error(
        "command {} is not executable ({source}): make it executable (chmod +x) and check that its \
         file system is not mounted noexec and that it is a binary or script for this machine",
        path.display()
    )]
    NotExecutable { path: PathBuf, source: Errno },
    #[error("cannot hand the listening sockets to {}: {source}", path.display())]
    Fds { path: PathBuf, source: Errno },
    #[error("{what} contains a NUL byte: {value:?}")]
    Nul { what: &'static str, value: OsString },
    #[error("cannot start {}: {source}; the system may be out of processes or memory", path.display())]
    Fork { path: PathBuf, source: Errno },
}

impl SpawnError {
    /// 127 when the command was not found, 126 when it could not be executed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFoundOnPath { .. } | SpawnError::NotFound { .. } => exit::NOT_FOUND,
            SpawnError::NotExecutable { .. } | SpawnError::Nul { .. } => exit::NOT_EXECUTABLE,
            SpawnError::Fds { .. } | SpawnError::Fork { .. } => exit::FAILURE,
        }
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starts `spec` in its own process group with default signal mask and dispositions and no fds
/// beyond 0-2 (ours, or `spec.stdio`) and the listen fds. Returns once the program runs; never
/// waits for it.
pub fn spawn(spec: &SpawnSpec) -> Result<Pid, SpawnError> {
    let env = environment(spec)?;
    let path_var = env
        .iter()
        .find_map(|e| e.as_bytes().strip_prefix(b"PATH="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let path = resolve(&spec.program, &path_var)?;
    let c_path = cstring("the command path", path.as_os_str())?;
    let mut argv = vec![cstring("the command", &spec.program)?];
    for a in &spec.args {
        argv.push(cstring("an argument", a)?);
    }
    let fds = spec.listen_fds.iter().map(|(fd, _)| *fd).collect();
    let mut prepared = Prepared::new(c_path, argv, env, spec.stdio, fds, spec.foreground_tty);
    if let Some(signal) = spec.parent_death_signal {
        prepared.set_parent_death_signal(signal);
    }
    match sys::fork_exec(&mut prepared) {
        Ok(pid) => Ok(pid),
        Err(ForkExecError::Pipe(source) | ForkExecError::Fork(source)) => {
            Err(SpawnError::Fork { path, source })
        }
        Err(ForkExecError::Child {
            stage: Stage::Fds,
            errno,
            ..
        }) => Err(SpawnError::Fds {
            path,
            source: errno,
        }),
        Err(ForkExecError::Child {
            stage: Stage::Exec,
            errno,
            ..
        }) => Err(match errno {
            Errno::ENOENT => SpawnError::NotFound { path },
            source => SpawnError::NotExecutable { path, source },
        }),
    }
}

/// Our environment, overridden by `spec.env`, without inherited socket-activation variables
/// (they describe our fds, not the child's), plus fresh ones when fds are handed over.
fn environment(spec: &SpawnSpec) -> Result<Vec<CString>, SpawnError> {
    const ACTIVATION: [&str; 3] = [env::LISTEN_FDS, env::LISTEN_PID, env::LISTEN_FDNAMES];
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !ACTIVATION.iter().any(|a| k == a))
        .filter(|(k, _)| !spec.env.iter().any(|(o, _)| o == k))
        .filter(|(k, _)| !spec.env_remove.contains(k))
        .collect();
    vars.extend(
        spec.env
            .iter()
            .filter(|(k, _)| !ACTIVATION.iter().any(|a| k == a))
            .cloned(),
    );
    if !spec.listen_fds.is_empty() {
        vars.push((
            env::LISTEN_FDS.into(),
            spec.listen_fds.len().to_string().into(),
        ));
        let names: Vec<&str> = spec.listen_fds.iter().map(|(_, n)| n.as_str()).collect();
        vars.push((env::LISTEN_FDNAMES.into(), names.join(":").into()));
        // LISTEN_PID is added by the child itself: only it knows its pid before exec.
    }
    vars.into_iter()
        .map(|(k, v)| {
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend(v.into_vec());
            CString::new(entry).map_err(|e| SpawnError::Nul {
                what: "an environment variable",
                value: OsString::from_vec(e.into_vec()),
            })
        })
        .collect()
}

fn cstring(what: &'static str, s: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul {
        what,
        value: s.to_os_string(),
    })
}

/// A program with a `/` is used as is (exec reports problems); otherwise the first executable
/// match on PATH, else 126 for a match that is not executable, else 127.
fn resolve(program: &OsStr, path_var: &str) -> Result<PathBuf, SpawnError> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let mut not_executable = None;
    if !program.is_empty() {
        for dir in path_var.split(':') {
            let dir = if dir.is_empty() { "." } else { dir };
            let candidate = Path::new(dir).join(program);
            if !candidate.is_file() {
                continue;
            }
            match access(&candidate, AccessFlags::X_OK) {
                Ok(()) => return Ok(candidate),
                Err(source) => {
                    not_executable.get_or_insert(SpawnError::NotExecutable {
                        path: candidate,
                        source,
                    });
                }
            }
        }
    }
    Err(
        not_executable.unwrap_or_else(|| SpawnError::NotFoundOnPath {
            program: program.to_os_string(),
            path: path_var.to_string(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_finds_executables_and_classifies_failures() {
        assert_eq!(
            resolve(OsStr::new("sh"), "/nonexistent:/bin:/usr/bin").unwrap(),
            PathBuf::from("/bin/sh")
        );
        let e = resolve(OsStr::new("no-such-privitty-cmd"), "/bin").unwrap_err();
        assert_eq!(e.exit_code(), 127, "{e}");
        assert!(e.to_string().contains("not found"), "{e}");
        assert_eq!(
            resolve(OsStr::new("./x"), "/bin").unwrap(),
            PathBuf::from("./x")
        );
    }

    #[test]
    fn hands_over_listen_fds_with_the_childs_own_pid() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (pid, line, fds) = shell_report(
            "$LISTEN_PID $$ $LISTEN_FDS $LISTEN_FDNAMES $(readlink /proc/$$/fd/3)",
            listener.as_raw_fd(),
            "spawn",
        );
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 5, "{line}");
        assert_eq!(f[0], f[1], "LISTEN_PID is not the child's pid: {line}");
        assert_eq!(f[0], pid.to_string(), "{line}");
        assert_eq!(&f[2..4], ["1", "http"], "{line}");
        assert!(
            f[4].starts_with("socket:"),
            "fd 3 is not the socket: {line}"
        );
        assert_eq!(fds, handed_over_fds(), "unexpected fds");
    }

    /// Runs `test` again in a process of its own with `PRIVITTY_SPAWN_FD_CASE` set: the cases lay
    /// out fds by number, which other tests' threads would disturb in a shared process.
    fn in_own_process(test: &str) {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(FD_CASE, "1")
            .output()
            .expect("run the test binary");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{test} failed in its own process:\n{text}"
        );
    }

    const FD_CASE: &str = "PRIVITTY_SPAWN_FD_CASE";

    /// Spawns `sh` with `listen_fd` handed over, has it echo `fields` (shell words) into a file
    /// and then become `ls` of its own fds, waits for it to exit 0, and returns its pid, the line
    /// it echoed and the fds `ls` listed. The listing is taken after `exec`, so no fd of the
    /// shell's own (a command substitution's pipe, whose write end the shell closes only after its
    /// fork) is in it: only the handed-over fds and `ls`'s own directory, the lowest free fd.
    fn shell_report(fields: &str, listen_fd: RawFd, tag: &str) -> (Pid, String, Vec<String>) {
        let out = std::env::temp_dir().join(format!("privitty-{tag}-{}", std::process::id()));
        let script = format!(
            "echo \"{fields}\" > {out}; exec ls /proc/self/fd >> {out}",
            out = out.display()
        );
        let spec = SpawnSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            listen_fds: vec![(listen_fd, "http".into())],
            ..SpawnSpec::default()
        };
        let pid = spawn(&spec).expect("spawn sh");
        let status = nix::sys::wait::waitpid(pid, None).expect("waitpid");
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
        let text = std::fs::read_to_string(&out).expect("sh's report");
        let _ = std::fs::remove_file(&out);
        let mut lines = text.lines();
        let line = lines.next().unwrap_or_default().to_string();
        (pid, line, lines.map(str::to_string).collect())
    }

    /// The fds `ls` must list in the child: this process's open stdio (inherited), the socket on
    /// 3, and `ls`'s own directory on the lowest number left free. Anything more leaked through.
    fn handed_over_fds() -> Vec<String> {
        let mut fds: Vec<RawFd> = (0..3)
            .filter(|fd| std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists())
            .chain([3])
            .collect();
        let lowest_free = (0..).find(|fd| !fds.contains(fd)).expect("a free fd");
        fds.push(lowest_free);
        fds.sort_unstable();
        fds.iter().map(RawFd::to_string).collect()
    }

    /// Spawns a shell that reports its fd 3 and fds; checks fd 3 is `listener`'s socket.
    fn check_hand_over(listen_fd: RawFd, expected_socket: &str) {
        let (_, line, fds) =
            shell_report("$LISTEN_FDS $(readlink /proc/$$/fd/3)", listen_fd, "fdcase");
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 2, "{line}");
        assert_eq!(f[0], "1", "{line}");
        assert_eq!(
            f[1], expected_socket,
            "fd 3 is not the listening socket: {line}"
        );
        assert_eq!(fds, handed_over_fds(), "unexpected fds");
    }

    fn socket_name(fd: RawFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .expect("readlink")
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn hands_over_a_listen_fd_that_already_is_fd_3() {
        use std::os::fd::AsRawFd;
        if std::env::var_os(FD_CASE).is_none() {
            return in_own_process(
                "pid1::spawn::tests::hands_over_a_listen_fd_that_already_is_fd_3",
            );
        }
        sys::close_fd_for_test(3);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert_eq!(listener.as_raw_fd(), 3, "the listener did not land on fd 3");
        check_hand_over(3, &socket_name(3));
    }

    #[test]
    fn an_exec_error_pipe_on_fd_3_neither_clobbers_nor_is_clobbered_by_the_hand_over() {
        use std::os::fd::AsRawFd;
        if std::env::var_os(FD_CASE).is_none() {
            return in_own_process(
                "pid1::spawn::tests::an_exec_error_pipe_on_fd_3_neither_clobbers_nor_is_clobbered_by_the_hand_over",
            );
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let socket = socket_name(listener.as_raw_fd());
        // With fds 0 and 3 free, the exec-error pipe takes 0 (read) and 3 (write): the write end
        // sits exactly where the socket must go.
        for fd in [0, 3] {
            if fd != listener.as_raw_fd() {
                sys::close_fd_for_test(fd);
            }
        }
        let listen_fd = if listener.as_raw_fd() == 3 {
            let moved = nix::fcntl::fcntl(&listener, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                .expect("move the listener up");
            // Its fd 3 is closed by hand below; dropping it would close that number again.
            std::mem::forget(listener);
            sys::close_fd_for_test(3);
            moved
        } else {
            listener.as_raw_fd()
        };
        let (probe_r, probe_w) = nix::unistd::pipe().expect("probe pipe");
        assert_eq!(
            (probe_r.as_raw_fd(), probe_w.as_raw_fd()),
            (0, 3),
            "fds 0 and 3 are not the lowest free ones"
        );
        drop((probe_r, probe_w));
        // An exec failure must still come back through the pipe, not look like a success.
        let missing = SpawnSpec {
            program: "/nonexistent/privitty-cmd".into(),
            listen_fds: vec![(listen_fd, "http".into())],
            ..SpawnSpec::default()
        };
        let err = spawn(&missing).expect_err("exec of a missing program succeeded");
        assert_eq!(err.exit_code(), 127, "{err}");
        check_hand_over(listen_fd, &socket);
    }

    #[test]
    fn environment_carries_activation_variables() {
        let spec = SpawnSpec {
            program: "x".into(),
            env: vec![("PRIVITTY_TEST_VAR".into(), "1".into())],
            env_remove: vec!["PATH".into()],
            listen_fds: vec![(7, "http".into())],
            ..SpawnSpec::default()
        };
        let env = environment(&spec).unwrap();
        let has = |s: &str| env.iter().any(|e| e.as_bytes() == s.as_bytes());
        assert!(has("PRIVITTY_TEST_VAR=1"));
        assert!(has("LISTEN_FDS=1"));
        assert!(has("LISTEN_FDNAMES=http"));
        assert!(!env.iter().any(|e| e.as_bytes().starts_with(b"PATH=")));
        assert!(!env.iter().any(|e| e.as_bytes().starts_with(b"LISTEN_PID=")));
    }
}
