//! The receiving end of the systemd notify protocol, one socket per generation.
//!
//! Owns: a private runtime directory, a unix datagram socket in it per generation (removed when
//! the generation is done), the `NOTIFY_SOCKET` value that names it, and parsing the datagrams
//! (`READY=1`, `STATUS=…`, …). Must not decide anything: it only reports what a generation said.
//!
//! A path rather than an abstract name, because common client libraries (edged's among them) only
//! speak to paths; the directory is ours alone (mode 0700), so nobody else can claim readiness.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// What one datagram said; unknown assignments are ignored, as systemd does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notice {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
}

impl Notice {
    /// Parses newline-separated `KEY=VALUE` assignments.
    pub fn parse(datagram: &[u8]) -> Notice {
        let text = String::from_utf8_lossy(datagram);
        let mut notice = Notice::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => notice.ready = true,
                Some(("STOPPING", "1")) => notice.stopping = true,
                Some(("STATUS", s)) => notice.status = Some(s.to_string()),
                _ => {}
            }
        }
        notice
    }
}

/// A new private directory for the notify sockets: under the system temp dir, or, when that is not
/// writable (a read-only root file system), under `fallback` (the accounts directory). The name is
/// random as well as carrying our pid, because every container's init is pid 1 and several may
/// share a temp dir (tests, `--pid=host` set-ups).
pub fn runtime_dir(fallback: &Path) -> io::Result<PathBuf> {
    let pid = std::process::id();
    let mut last = None;
    for base in [std::env::temp_dir(), fallback.to_path_buf()] {
        for _ in 0..8 {
            let dir = base.join(format!(".privitty-init-{pid}-{:08x}", fastrand::u32(..)));
            let made = std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                });
            match made {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free runtime directory name")))
}

/// A bound notify socket for one generation; the socket file is removed on drop.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds `<dir>/gen-<generation>.sock` (non-blocking: poll [`NotifySocket::fd`]).
    pub fn bind(dir: &Path, generation: u64) -> io::Result<NotifySocket> {
        NotifySocket::bind_named(dir, &format!("gen-{generation}"))
    }

    /// Binds `<dir>/<stem>.sock` (the spare's, which learns its generation only when woken).
    pub fn bind_named(dir: &Path, stem: &str) -> io::Result<NotifySocket> {
        let path = dir.join(format!("{stem}.sock"));
        // A leftover of an earlier run with the same pid would make bind fail.
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_nonblocking(true)?;
        Ok(NotifySocket { socket, path })
    }

    /// What to poll for [`NotifySocket::try_recv`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The `NOTIFY_SOCKET` value for the child.
    pub fn env_value(&self) -> OsString {
        self.path.clone().into_os_string()
    }

    /// The next datagram, parsed; `Ok(None)` when none is waiting.
    pub fn try_recv(&self) -> io::Result<Option<Notice>> {
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Ok(Some(Notice::parse(&buf[..n]))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_among_other_assignments() {
        let n = Notice::parse(b"STATUS=serving\nREADY=1\nMAINPID=42\n");
        assert!(n.ready);
        assert!(!n.stopping);
        assert_eq!(n.status.as_deref(), Some("serving"));
    }

    #[test]
    fn ready_must_be_exactly_one() {
        assert!(!Notice::parse(b"READY=0").ready);
        assert!(!Notice::parse(b"READY=10").ready);
        assert!(!Notice::parse(b"XREADY=1").ready);
        assert!(Notice::parse(b"STOPPING=1").stopping);
    }

    /// A directory of this test's own, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("privitty-init-test-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_runtime_dir_is_private() {
        let fallback = Scratch::new("fallback");
        let dir = runtime_dir(&fallback.0).unwrap();
        let _cleanup = Scratch(dir.clone());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn receives_what_a_client_sends_to_the_advertised_path() {
        let dir = Scratch::new("recv");
        let sock = NotifySocket::bind(&dir.0, 7).unwrap();
        assert_eq!(sock.try_recv().unwrap(), None, "nothing sent yet");
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\n", sock.env_value()).unwrap();
        // A datagram sent on a unix socket is queued by the time send_to returns.
        assert!(sock.try_recv().unwrap().expect("the datagram").ready);
    }

    #[test]
    fn each_generation_gets_its_own_socket_removed_when_done() {
        let dir = Scratch::new("each");
        let a = NotifySocket::bind(&dir.0, 1).unwrap();
        let b = NotifySocket::bind(&dir.0, 2).unwrap();
        assert_ne!(a.env_value(), b.env_value());
        let path = PathBuf::from(a.env_value());
        assert!(path.exists());
        drop(a);
        assert!(!path.exists());
    }
}
