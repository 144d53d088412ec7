//! Connection hand-over between generations: a draining generation passes each keep-alive
//! connection, at a request boundary and with the bytes it already read ahead, to the next
//! generation, which serves it as if it had accepted it. Nothing is closed, so a client that never
//! retries never notices the swap.
//!
//! Owns: the two inherited `SOCK_SEQPACKET` ends privitty-init provides (`LISTEN_FDNAMES`
//! `handover-send` / `handover-recv`, the two ends of one socket pair every generation inherits),
//! the message format (one message per connection: the TCP socket as `SCM_RIGHTS`, and
//! `MAGIC ‖ peer address ‖ buffered bytes`), and [`Prefixed`], the stream that replays the buffered
//! bytes before reading the socket. Must not: decide when to hand over (the HTTP server does, at a
//! request boundary), or keep a connection it could not pass on (the caller closes it, as a stop
//! without hand-over does).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg, setsockopt, sockopt,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `LISTEN_FDNAMES` of the end a draining generation writes to.
pub const SEND_NAME: &str = "handover-send";
/// `LISTEN_FDNAMES` of the end a serving generation reads from.
pub const RECV_NAME: &str = "handover-recv";
/// Format and version of a hand-over message; a generation refuses (closes) any other.
const MAGIC: &[u8; 8] = b"PVEDHO01";
/// Most bytes read ahead that travel with a connection (hyper reads at most this much ahead of a
/// request it has not parsed); a connection with more is closed instead.
pub const MAX_BUFFERED: usize = 512 * 1024;
/// Socket buffer asked for, so a burst of connections with read-ahead bytes fits.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// The end a draining generation writes connections to.
#[derive(Debug)]
pub struct Sender(OwnedFd);

/// The end a serving generation reads connections from.
#[derive(Debug)]
pub struct Receiver {
    fd: AsyncFd<OwnedFd>,
    /// One message's room, allocated once: the connections of a swap arrive in a burst, exactly
    /// when the next generation is about to serve, and zeroing half a mebibyte for each of them
    /// was 43 % of its CPU in that gap (64 connections).
    buf: Vec<u8>,
}

/// A connection handed over by the previous generation.
#[derive(Debug)]
pub struct Handed {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    /// Bytes the previous generation had read but not handled (a pipelined or partial request).
    pub buffered: Vec<u8>,
}

/// Why a hand-over failed (the caller then closes the connection).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0} bytes read ahead is more than a hand-over carries")]
    TooMuchBuffered(usize),
    #[error("the next generation does not take connections now: {0}")]
    Socket(#[source] nix::Error),
}

/// Takes ownership of an inherited descriptor.
#[allow(unsafe_code)]
pub(crate) fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was handed to this process for it alone (inherited through LISTEN_FDS, or
    // received just now through SCM_RIGHTS); nothing else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One message read from a `SOCK_SEQPACKET` end.
pub(crate) struct Received {
    pub len: usize,
    /// The descriptors it carried, owned (close-on-exec) from now on.
    pub fds: Vec<OwnedFd>,
    /// The message or its descriptors did not fit: what was cut is gone.
    pub truncated: bool,
}

/// Reads one message and the descriptors it carries without blocking (`WouldBlock` when none
/// waits). Used for both hand-over pairs.
pub(crate) fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(raw.into_iter().map(adopt));
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated,
    })
}

/// Registers an owned descriptor with the runtime for readiness.
#[allow(unsafe_code)]
pub(crate) fn watch_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` stays open and keeps its number for as long as the `AsyncFd` owns it.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

impl Sender {
    /// Uses the inherited `handover-send` descriptor.
    pub fn new(fd: OwnedFd) -> io::Result<Sender> {
        let _ = setsockopt(&fd, sockopt::SndBuf, &SOCKET_BUFFER);
        Ok(Sender(fd))
    }

    /// Passes `stream` (with what was read ahead of it) to whichever generation reads the other
    /// end. Never blocks: a full socket (nobody reading) is an error and the caller closes the
    /// connection.
    pub fn send(
        &self,
        stream: &impl AsFd,
        peer: SocketAddr,
        buffered: &[u8],
    ) -> Result<(), SendError> {
        if buffered.len() > MAX_BUFFERED {
            return Err(SendError::TooMuchBuffered(buffered.len()));
        }
        let head = encode_head(peer);
        let iov = [IoSlice::new(&head), IoSlice::new(buffered)];
        let fds = [stream.as_fd().as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            self.0.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(SendError::Socket)?;
        Ok(())
    }
}

impl Receiver {
    /// Uses the inherited `handover-recv` descriptor (must be called inside the runtime).
    pub fn new(fd: OwnedFd) -> io::Result<Receiver> {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &SOCKET_BUFFER);
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)?;
        Ok(Receiver {
            fd: watch_readable(fd)?,
            // Zeroed by the allocator's fresh pages: only what messages touch is ever faulted in.
            buf: vec![0u8; MAGIC.len() + 2 + 64 + MAX_BUFFERED],
        })
    }

    /// The next connection handed over. A message in another format (a build that speaks
    /// another version) is refused: its connection is closed, and the next one is read.
    pub async fn recv(&mut self) -> io::Result<Handed> {
        let Receiver { fd, buf } = self;
        loop {
            let mut guard = fd.readable().await?;
            let got = guard.try_io(|fd| recv_with_fds(fd.as_raw_fd(), buf));
            let Received {
                len,
                mut fds,
                truncated,
            } = match got {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            if len == 0 && fds.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the hand-over socket was closed",
                ));
            }
            match (decode(&buf[..len]), fds.len(), truncated) {
                (Some((peer, buffered)), 1, false) => {
                    let stream = std::net::TcpStream::from(fds.remove(0));
                    return Ok(Handed {
                        stream,
                        peer,
                        buffered: buffered.to_vec(),
                    });
                }
                _ => {
                    // Dropping `fds` closes whatever arrived.
                    tracing::warn!(
                        bytes = len,
                        fds = fds.len(),
                        truncated,
                        "a connection was handed over in a format this build does not read; closed it"
                    );
                }
            }
        }
    }
}

fn encode_head(peer: SocketAddr) -> Vec<u8> {
    let peer = peer.to_string();
    let mut head = Vec::with_capacity(MAGIC.len() + 2 + peer.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(peer.len() as u16).to_be_bytes());
    head.extend_from_slice(peer.as_bytes());
    head
}

fn decode(msg: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let rest = msg.strip_prefix(MAGIC.as_slice())?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = u16::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    let (peer, buffered) = rest.split_at(len);
    let peer = std::str::from_utf8(peer).ok()?.parse().ok()?;
    Some((peer, buffered))
}

/// A stream that first yields `prefix` (bytes read ahead by the previous generation), then reads
/// the inner stream; writes go straight through.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Prefixed<T> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The inner stream and the prefix bytes not read yet.
    pub fn into_parts(self) -> (T, Vec<u8>) {
        let rest = self.prefix[self.pos..].to_vec();
        (self.inner, rest)
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn pair() -> (Sender, OwnedFd) {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        (Sender::new(a).unwrap(), b)
    }

    #[tokio::test]
    async fn a_connection_arrives_with_its_peer_and_read_ahead_bytes() {
        let (sender, recv_end) = pair();
        let mut receiver = Receiver::new(recv_end).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        client.write_all(b"still in the kernel").unwrap();
        sender
            .send(&server, peer, b"GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        drop(server); // the sender's copy closes; the connection lives on in the message
        let handed = receiver.recv().await.unwrap();
        assert_eq!(handed.peer, peer);
        assert_eq!(handed.buffered, b"GET / HTTP/1.1\r\nHost: x\r\n");
        handed.stream.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(handed.stream).unwrap();
        let mut io = Prefixed::new(handed.buffered, stream);
        let want = b"GET / HTTP/1.1\r\nHost: x\r\nstill in the kernel";
        let mut all = vec![0u8; want.len()];
        io.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..], want);
        io.write_all(b"answer").await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"answer");
    }

    #[tokio::test]
    async fn another_format_is_closed_and_the_next_connection_still_arrives() {
        let (sender, recv_end) = pair();
        let raw_send = sender.0.as_raw_fd();
        let mut receiver = Receiver::new(recv_end).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut first = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (s1, _) = listener.accept().unwrap();
        // A future build's message: other magic.
        let fds = [s1.as_raw_fd()];
        sendmsg::<()>(
            raw_send,
            &[IoSlice::new(b"PVEDHO99xx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(s1);
        let _second = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (s2, p2) = listener.accept().unwrap();
        sender.send(&s2, p2, b"").unwrap();
        let handed = receiver.recv().await.unwrap();
        assert_eq!(handed.peer, p2);
        // The refused connection was closed: its client reads EOF, not a hang.
        first
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(first.read(&mut b).unwrap(), 0);
    }

    #[tokio::test]
    async fn the_reused_buffer_never_leaks_one_message_into_the_next() {
        let (sender, recv_end) = pair();
        let mut receiver = Receiver::new(recv_end).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut kept = Vec::new();
        // A long read-ahead first, then shorter ones: each arrives with its own bytes only.
        for (i, len) in [100_000usize, 10, 0, 50_000, 1].into_iter().enumerate() {
            kept.push(std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap());
            let (server, peer) = listener.accept().unwrap();
            let bytes = vec![b'a' + i as u8; len];
            sender.send(&server, peer, &bytes).unwrap();
            let handed = receiver.recv().await.unwrap();
            assert_eq!(handed.peer, peer);
            assert_eq!(handed.buffered, bytes, "message {i}");
        }
    }

    #[test]
    fn too_much_read_ahead_is_refused_before_sending() {
        let (sender, _recv) = pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (s, p) = listener.accept().unwrap();
        let err = sender
            .send(&s, p, &vec![0u8; MAX_BUFFERED + 1])
            .unwrap_err();
        assert!(matches!(err, SendError::TooMuchBuffered(_)), "{err}");
    }

    #[test]
    fn nobody_reading_is_an_error_not_a_block() {
        let (sender, _recv) = pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut failed = false;
        let mut clients = Vec::new();
        for _ in 0..100_000 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            let (s, p) = listener.accept().unwrap();
            if sender.send(&s, p, &[7u8; 64 * 1024]).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "a full socket must refuse, not block");
    }
}
