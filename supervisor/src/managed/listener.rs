//! The listening socket the supervisor binds once and hands to every generation.
//!
//! Owns: binding `PRIVITTY_LISTEN` (with [`privitty_base::listen::bind`], as a lone edged does) and
//! the connection hand-over pair. Must not accept: connections that arrive while no generation
//! accepts wait in this socket's backlog, and the backlog lives as long as we keep the socket open
//! — which is our whole life.

use std::io;

pub use privitty_base::listen::{BACKLOG, BindError, bind};

/// The `LISTEN_FDNAMES` entry edged's socket gets.
pub const FD_NAME: &str = "http";
/// The `LISTEN_FDNAMES` entries of the connection hand-over pair: a draining generation writes its
/// keep-alive connections to `handover-send`, the serving one reads them from `handover-recv`.
pub const HANDOVER_SEND: &str = "handover-send";
pub const HANDOVER_RECV: &str = "handover-recv";

/// The two ends of the connection hand-over channel (one `SOCK_SEQPACKET` socket pair, kept open
/// for our whole life and inherited by every generation). Connections in flight between two
/// generations live in this pair's buffer, so they survive a generation that dies before reading
/// them: the next one does.
#[derive(Debug)]
pub struct Handover {
    pub send: std::os::fd::OwnedFd,
    pub recv: std::os::fd::OwnedFd,
}

/// Creates the hand-over pair (close-on-exec: spawning a generation hands its ends over
/// explicitly).
pub fn handover() -> io::Result<Handover> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (send, recv) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    Ok(Handover { send, recv })
}

/// Reads every message waiting in the hand-over pair and closes the connections they carry;
/// returns how many. Never blocks.
pub fn close_handed(pair: &Handover) -> usize {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, RawFd};
    let mut closed = 0;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let Ok(msg) = recvmsg::<()>(
            pair.recv.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) else {
            return closed;
        };
        let Ok(cmsgs) = msg.cmsgs() else {
            return closed;
        };
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    crate::pid1::close_received(fd);
                    closed += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream;

    #[test]
    fn handed_connections_are_closed_when_nobody_takes_them() {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::os::fd::AsRawFd;
        let pair = handover().unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let fds = [server.as_raw_fd()];
        sendmsg::<()>(
            pair.send.as_raw_fd(),
            &[io::IoSlice::new(b"handed")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(server);
        assert_eq!(close_handed(&pair), 1);
        assert_eq!(close_handed(&pair), 0, "nothing left");
        // The client sees a clean end, not a hang.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 0);
    }
}
