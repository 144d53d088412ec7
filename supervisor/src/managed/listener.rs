//! The listening socket the supervisor binds once and hands to every generation.
//!
//! Owns: binding `PRIVITTY_LISTEN` (with [`privitty_base::listen::bind`], as a lone edged does),
//! the connection hand-over pair and the engine pair (the swap token's encoding included). Must not
//! accept: connections that arrive while no generation accepts wait in this socket's backlog, and
//! the backlog lives as long as we keep the socket open — which is our whole life. Must not read
//! what the pairs carry except to close it: connections and engines belong to the generations;
//! privitty-init only ends what none of them took.

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
    let (send, recv) = seqpacket_pair()?;
    Ok(Handover { send, recv })
}

/// A close-on-exec `SOCK_SEQPACKET` socket pair: messages keep their bounds, and descriptors
/// travel with them.
fn seqpacket_pair() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// The `LISTEN_FDNAMES` entries of the engine pair: a draining generation writes its messaging
/// engine (the `deltachat-rpc-server` child's stdio pipes) to `engine-send`, the next one reads it
/// from `engine-recv`. The swap token goes the other way: privitty-init writes it to `engine-recv`,
/// so that it is read from `engine-send`, where a draining generation reads.
pub const ENGINE_SEND: &str = "engine-send";
pub const ENGINE_RECV: &str = "engine-recv";

/// The first 8 bytes of a swap token; the stopped generation's number (u64, big-endian) follows.
pub const SWAP_TOKEN_MAGIC: &[u8; 8] = b"PVEDSW01";

/// The `LISTEN_FDNAMES` entry a spare (and only a spare) gets: the read end of a pipe on which it
/// waits for its wake message (see `Action::SpawnSpare`).
pub const WAKE: &str = "wake";

/// The wake message for a spare that becomes generation `generation`: `PVEDWK01`, then the
/// generation's number, the swaps and the crashes so far (each a big-endian u64), what a
/// generation started from scratch finds in its environment.
pub fn wake_message(generation: u64, swaps: u64, crashes: u64) -> [u8; 32] {
    let mut message = [0u8; 32];
    message[..8].copy_from_slice(b"PVEDWK01");
    for (i, value) in [generation, swaps, crashes].into_iter().enumerate() {
        message[8 + 8 * i..16 + 8 * i].copy_from_slice(&value.to_be_bytes());
    }
    message
}

/// The two ends of the engine hand-over channel (one `SOCK_SEQPACKET` socket pair, kept open for
/// our whole life and inherited by every generation, like [`Handover`]). An engine in flight
/// between two generations lives in this pair's buffer, so it survives a generation that dies
/// before reading it; one nobody reads is closed at exit ([`close_engines`]).
#[derive(Debug)]
pub struct EnginePair {
    pub send: std::os::fd::OwnedFd,
    pub recv: std::os::fd::OwnedFd,
}

/// Creates the engine pair (close-on-exec: spawning a generation hands its ends over explicitly).
/// The default buffers are enough: a message is a token or a few descriptors with a short header.
pub fn engine_pair() -> io::Result<EnginePair> {
    let (send, recv) = seqpacket_pair()?;
    Ok(EnginePair { send, recv })
}

/// Writes the swap token for `generation`: one 16-byte message, [`SWAP_TOKEN_MAGIC`] then the
/// number big-endian, on the `engine-recv` end so that the generation told to stop reads it from
/// `engine-send`. Never blocks: a full buffer is an error, and the generation then stops its
/// engine instead of handing it over.
pub fn offer_engine(pair: &EnginePair, generation: u64) -> io::Result<()> {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd;
    let mut token = [0u8; 16];
    token[..8].copy_from_slice(SWAP_TOKEN_MAGIC);
    token[8..].copy_from_slice(&generation.to_be_bytes());
    // A SOCK_SEQPACKET message is written whole or not at all.
    send(
        pair.recv.as_raw_fd(),
        &token,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// Reads every message waiting in the engine pair without blocking: on `engine-recv`, the engines
/// a draining generation handed over and no generation took (their descriptors are closed, so the
/// engine sees its stdin close and exits); on `engine-send`, the swap tokens nobody read
/// (discarded). Returns how many messages carried descriptors. Only at exit: until then a later
/// generation may still adopt an engine.
pub fn close_engines(pair: &EnginePair) -> usize {
    let (engines, _) = drain(&pair.recv);
    // A token carries no descriptors; one that does is closed all the same.
    drain(&pair.send);
    engines
}

/// Reads `end` empty and closes every descriptor its messages carry; returns how many messages
/// carried at least one, and how many descriptors were closed. Never blocks.
fn drain(end: &std::os::fd::OwnedFd) -> (usize, usize) {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, RawFd};
    let (mut carried, mut closed) = (0, 0);
    // As for the hand-over pair: a longer message is cut, its rest discarded with it, and its
    // descriptors arrive all the same.
    let mut buf = vec![0u8; 1024 * 1024 + 64];
    loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        // An engine is three pipes; room for more (the kernel closes any that do not fit).
        let mut space = nix::cmsg_space!([RawFd; 16]);
        let Ok(msg) = recvmsg::<()>(
            end.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) else {
            return (carried, closed);
        };
        let Ok(cmsgs) = msg.cmsgs() else {
            return (carried, closed);
        };
        let mut any = false;
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    crate::pid1::close_received(fd);
                    closed += 1;
                    any = true;
                }
            }
        }
        carried += usize::from(any);
    }
}

/// Reads every message waiting in the hand-over pair and closes the connections they carry;
/// returns how many. Never blocks.
pub fn close_handed(pair: &Handover) -> usize {
    drain(&pair.recv).1
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

    #[test]
    fn the_swap_token_is_16_bytes_read_from_the_send_end() {
        let pair = engine_pair().unwrap();
        offer_engine(&pair, 0x0102_0304_0506_0708).unwrap();
        let mut buf = [0u8; 64];
        let n = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&pair.send),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .unwrap();
        assert_eq!(&buf[..n], b"PVEDSW01\x01\x02\x03\x04\x05\x06\x07\x08");
        assert_eq!(&buf[..8], SWAP_TOKEN_MAGIC);
        // A token carries no descriptors: it is not counted as an engine.
        offer_engine(&pair, 1).unwrap();
        assert_eq!(close_engines(&pair), 0);
    }

    #[test]
    fn the_wake_message_is_the_one_edged_reads() {
        // The same bytes as edged's `spare::tests` decode.
        let mut expected = b"PVEDWK01".to_vec();
        for value in [7u64, 5, 1] {
            expected.extend_from_slice(&value.to_be_bytes());
        }
        assert_eq!(wake_message(7, 5, 1).to_vec(), expected);
    }

    #[test]
    fn an_engine_nobody_takes_is_closed_and_unread_tokens_are_discarded() {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::os::fd::AsRawFd;
        let pair = engine_pair().unwrap();
        // Stand-ins for the engine's stdin (we keep the read end: the engine) and stdout (we keep
        // the write end: the engine's side).
        let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
        let (stdout_r, stdout_w) = nix::unistd::pipe().unwrap();
        let fds = [stdin_w.as_raw_fd(), stdout_r.as_raw_fd()];
        sendmsg::<()>(
            pair.send.as_raw_fd(),
            &[io::IoSlice::new(b"engine")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop((stdin_w, stdout_r));
        offer_engine(&pair, 7).unwrap();
        offer_engine(&pair, 8).unwrap();
        assert_eq!(close_engines(&pair), 1);
        assert_eq!(close_engines(&pair), 0, "nothing left");
        // The engine's stdin reads EOF (it exits), and its writes fail with EPIPE.
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(&stdin_r, &mut b).unwrap(), 0);
        assert_eq!(
            nix::unistd::write(&stdout_w, b"x"),
            Err(nix::errno::Errno::EPIPE)
        );
        // The tokens are gone from the send end too.
        let mut buf = [0u8; 64];
        assert_eq!(
            nix::sys::socket::recv(pair.send.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT),
            Err(nix::errno::Errno::EAGAIN)
        );
    }
}
