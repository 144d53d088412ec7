//! License commands run as children of PID 1: `privitty-edge license activate -` (the delivery
//! URL on its standard input), `license sync` and `license device-id`, so that privitty-init itself
//! runs no HTTP or TLS code and keeps no memory for them between runs.
//!
//! Owns: spawning them (the `privitty-edge` next to privitty-init, else on `PATH`), the pipes of
//! their standard input, output and error, and turning what they printed into a
//! [`JobReport`]. Their log lines go on to our standard error as they come (a command waiting for
//! the license lock says so while it waits); the `error: …` and `retry after: …` lines are held
//! back, because the machine logs them in its own line. Must not decide anything (retry, give up:
//! that is the machine's job) and must not wait for them (the reaper reports their exits and the
//! driver hands them to [`Jobs::finish`]).
//!
//! The TOKEN never reaches an argument list or a log: it goes through a pipe to the command's
//! standard input, and the command never prints it (its own tests check that).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use licensectl::DeliveryUrl;
use licensectl::cli::RETRY_AFTER_PREFIX;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::machine::{Job, JobReport};
use crate::config::exit;
use crate::pid1::{self, SpawnSpec};

/// What is kept of a command's standard output (its few lines of result).
const MAX_OUTPUT: usize = 64 * 1024;

/// Which of a command's outputs an fd is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// The running license commands.
#[derive(Debug)]
pub struct Jobs {
    /// `privitty-edge`: a path, or a name looked up on `PATH`.
    cli: OsString,
    accounts: PathBuf,
    url: Option<DeliveryUrl>,
    running: HashMap<Pid, Running>,
}

#[derive(Debug)]
struct Running {
    job: Job,
    out: Capture,
    err: Capture,
    /// The lines held back from standard error.
    error: Option<String>,
    retry_after: Option<std::time::Duration>,
}

#[derive(Debug, Default)]
struct Capture {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
}

impl Jobs {
    pub fn new(cli: OsString, accounts: &Path, url: Option<DeliveryUrl>) -> Jobs {
        Jobs {
            cli,
            accounts: accounts.to_path_buf(),
            url,
            running: HashMap::new(),
        }
    }

    /// Starts `job`. An error is the report of a command that never ran (126/127, or 1).
    pub fn spawn(&mut self, job: Job) -> Result<Pid, JobReport> {
        let failed = |code: i32, error: String| JobReport {
            code,
            error: Some(error),
            ..JobReport::default()
        };
        let mut args: Vec<OsString> = vec![
            "--accounts".into(),
            self.accounts.clone().into_os_string(),
            "license".into(),
        ];
        let stdin = match job {
            Job::Activate => {
                args.extend(["activate".into(), "-".into()]);
                let Some(url) = &self.url else {
                    return Err(failed(
                        exit::FAILURE,
                        "no delivery URL is configured".into(),
                    ));
                };
                // The URL's Display is redacted: the TOKEN never reaches a log.
                tracing::debug!(url = %url, "activating with `privitty-edge license activate -`");
                Some(
                    url_pipe(url).map_err(|e| {
                        failed(exit::FAILURE, format!("cannot hand the URL over: {e}"))
                    })?,
                )
            }
            Job::Sync => {
                args.push("sync".into());
                None
            }
            Job::DeviceIdentity => {
                args.push("device-id".into());
                None
            }
        };
        let pipe = || {
            output_pipe().map_err(|e| failed(exit::FAILURE, format!("cannot create a pipe: {e}")))
        };
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        let spec = SpawnSpec {
            program: self.cli.clone(),
            args,
            env: vec![(
                privitty_base::env::ACCOUNTS.into(),
                self.accounts.clone().into_os_string(),
            )],
            env_remove: vec![
                crate::config::env::LICENSE_URL.into(),
                crate::config::env::LICENSE_URL_FILE.into(),
            ],
            stdio: [
                stdin.as_ref().map(AsRawFd::as_raw_fd),
                Some(out_write.as_raw_fd()),
                Some(err_write.as_raw_fd()),
            ],
            ..SpawnSpec::default()
        };
        let pid = pid1::spawn(&spec).map_err(|e| failed(e.exit_code(), e.to_string()))?;
        // Ours are closed now (dropped), so the reads see EOF once the command is gone.
        drop((stdin, out_write, err_write));
        tracing::debug!(?job, pid = pid.as_raw(), "license command started");
        self.running.insert(
            pid,
            Running {
                job,
                out: Capture {
                    fd: Some(out_read),
                    buf: Vec::new(),
                },
                err: Capture {
                    fd: Some(err_read),
                    buf: Vec::new(),
                },
                error: None,
                retry_after: None,
            },
        );
        Ok(pid)
    }

    /// The output fds to poll, with whose they are.
    pub fn fds(&self) -> Vec<(Pid, Stream, BorrowedFd<'_>)> {
        let mut fds = Vec::new();
        for (pid, r) in &self.running {
            if let Some(fd) = &r.out.fd {
                fds.push((*pid, Stream::Out, fd.as_fd()));
            }
            if let Some(fd) = &r.err.fd {
                fds.push((*pid, Stream::Err, fd.as_fd()));
            }
        }
        fds
    }

    /// The command's `stream` is readable: takes what is there.
    pub fn on_readable(&mut self, pid: Pid, stream: Stream) {
        if let Some(r) = self.running.get_mut(&pid) {
            r.read(stream);
        }
    }

    /// The reaper saw `pid` exit: if it is a license command, what it did.
    pub fn finish(&mut self, pid: Pid, status: WaitStatus) -> Option<(Job, JobReport)> {
        let mut r = self.running.remove(&pid)?;
        // Whatever it wrote before exiting is still in the pipes.
        r.read(Stream::Out);
        r.read(Stream::Err);
        r.flush_err_line(true);
        let out = String::from_utf8_lossy(&r.out.buf);
        let report = JobReport {
            code: pid1::exit_code(status),
            error: r.error,
            retry_after: r.retry_after,
            summary: out.lines().next().map(str::to_string),
            jti: out
                .lines()
                .find_map(|l| l.strip_prefix("license jti: "))
                .map(str::to_string),
        };
        tracing::debug!(job = ?r.job, pid = pid.as_raw(), code = report.code, "license command ended");
        Some((r.job, report))
    }
}

impl Running {
    /// Reads what `stream` holds now; at EOF (or an error) stops polling it.
    fn read(&mut self, stream: Stream) {
        let capture = match stream {
            Stream::Out => &mut self.out,
            Stream::Err => &mut self.err,
        };
        let Some(fd) = &capture.fd else {
            return;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => {
                    capture.fd = None;
                    break;
                }
                Ok(n) => {
                    if stream == Stream::Err || capture.buf.len() < MAX_OUTPUT {
                        capture.buf.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(_) => {
                    capture.fd = None;
                    break;
                }
            }
        }
        if stream == Stream::Err {
            self.flush_err_line(false);
        }
    }

    /// Passes the complete lines of standard error on (all of it with `all`), holding back the
    /// ones the machine reports itself.
    fn flush_err_line(&mut self, all: bool) {
        let buf = std::mem::take(&mut self.err.buf);
        let mut rest = &buf[..];
        let mut stderr = std::io::stderr().lock();
        while !rest.is_empty() {
            let (line, next) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                // A partial line waits for its end, unless it is all there is to come or it is
                // unreasonably long.
                None if all || rest.len() >= MAX_OUTPUT => (rest, &rest[rest.len()..]),
                None => break,
            };
            rest = next;
            let text = String::from_utf8_lossy(line);
            if let Some(error) = text.strip_prefix("error: ") {
                self.error = Some(error.trim_end().to_string());
            } else if let Some(after) = text.strip_prefix(RETRY_AFTER_PREFIX) {
                self.retry_after = privitty_base::duration::parse_duration(after).ok();
            } else {
                let _ = stderr.write_all(line);
                let _ = stderr.write_all(b"\n");
            }
        }
        self.err.buf = rest.to_vec();
    }
}

/// A pipe holding `url` and a newline, read end first (the write end is closed: EOF follows).
fn url_pipe(url: &DeliveryUrl) -> Result<OwnedFd, Errno> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let text = format!("{}\n", url.expose_secret());
    // A pipe holds 64 KiB: a URL fits at once, or something is wrong with it.
    let n = nix::unistd::write(&write, text.as_bytes())?;
    if n != text.len() {
        return Err(Errno::E2BIG);
    }
    Ok(read)
}

/// A pipe for a command's output: (our read end, non-blocking; the command's write end).
fn output_pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Running {
        Running {
            job: Job::Activate,
            out: Capture::default(),
            err: Capture::default(),
            error: None,
            retry_after: None,
        }
    }

    #[test]
    fn the_error_and_retry_lines_are_held_back_and_parsed() {
        let mut r = running();
        r.err.buf = b"error: license server h did not complete the activation: HTTP 429 (retry after 7 s)\n\
                      retry after: 7s\npartial"
            .to_vec();
        r.flush_err_line(false);
        assert_eq!(r.retry_after, Some(std::time::Duration::from_secs(7)));
        assert!(r.error.as_deref().unwrap().starts_with("license server h"));
        assert_eq!(r.err.buf, b"partial", "a partial line waits for its end");
        r.flush_err_line(true);
        assert!(r.err.buf.is_empty());
    }

    /// Runs `script` (a shell script standing in for privitty-edge) as `job`, and reports.
    fn run_script(job: Job, script: &str) -> JobReport {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir();
        let path = dir.join(format!("privitty-job-{}-{job:?}.sh", std::process::id()));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let _cleanup = RemoveOnDrop(path.clone());
        let url =
            DeliveryUrl::parse("https://license.example.com/v1/license/JOBTESTTOKEN").unwrap();
        let mut jobs = Jobs::new(path.into_os_string(), &dir, Some(url));
        let pid = jobs.spawn(job).expect("spawn");
        // Its output until both pipes are at EOF (it exited), as the driver polls them.
        loop {
            let fds = jobs.fds();
            if fds.is_empty() {
                break;
            }
            let mut polled: Vec<_> = fds
                .iter()
                .map(|(_, _, fd)| nix::poll::PollFd::new(*fd, nix::poll::PollFlags::POLLIN))
                .collect();
            nix::poll::poll(&mut polled, nix::poll::PollTimeout::NONE).unwrap();
            let ready: Vec<_> = fds
                .iter()
                .zip(&polled)
                .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
                .map(|((pid, stream, _), _)| (*pid, *stream))
                .collect();
            for (pid, stream) in ready {
                jobs.on_readable(pid, stream);
            }
        }
        // The test owns this child: waiting for it here stands in for the reaper.
        let status = nix::sys::wait::waitpid(pid, None).unwrap();
        jobs.finish(pid, status).expect("a job").1
    }

    /// Removes a file on drop.
    struct RemoveOnDrop(PathBuf);

    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn activation_gets_the_url_on_stdin_never_in_its_arguments() {
        let report = run_script(
            Job::Activate,
            r#"read url; case "$*" in *TOKEN*) echo "error: token in argv"; exit 9;; esac
               echo "activated (new seat)"; echo "license jti: J1"
               echo "error: got $url" >&2; echo "retry after: 3s" >&2; exit 6"#,
        );
        assert_eq!(report.code, 6);
        assert_eq!(report.summary.as_deref(), Some("activated (new seat)"));
        assert_eq!(report.jti.as_deref(), Some("J1"));
        assert_eq!(
            report.error.as_deref(),
            Some("got https://license.example.com/v1/license/JOBTESTTOKEN"),
            "the URL arrived on stdin"
        );
        assert_eq!(report.retry_after, Some(std::time::Duration::from_secs(3)));
    }

    #[test]
    fn a_command_that_cannot_start_reports_127() {
        let mut jobs = Jobs::new("/nonexistent/privitty-edge".into(), Path::new("/tmp"), None);
        let report = jobs
            .spawn(Job::Sync)
            .expect_err("spawned a missing program");
        assert_eq!(report.code, 127);
        assert!(report.error.unwrap().contains("/nonexistent/privitty-edge"));
    }
}
