//! Engine hand-over between generations: a generation that stops for a swap passes its running
//! engine (its three pipes, what it read ahead of the engine's stdout, the call-id counter and
//! the unanswered event long-poll) to the next generation, which takes it over instead of
//! starting an engine of its own. A swap then costs no engine stop and no engine start.
//!
//! Owns: the two inherited `SOCK_SEQPACKET` ends privitty-init provides (`LISTEN_FDNAMES`
//! `engine-send` / `engine-recv`), reading privitty-init's swap token (`PVEDSW01` ‖ generation,
//! u64 big-endian, written by privitty-init before it signals a generation to stop for a swap,
//! read from `engine-send`), the next generation's standby message (`PVEDSB01` ‖ its generation,
//! written to `engine-recv` when it has done all it can before the data-directory lock, read from
//! `engine-send`: the stopping generation serves until then), and the engine message (`PVEDEN01` ‖ u32 length ‖ JSON ‖ read-ahead,
//! with stdin, stdout and stderr as `SCM_RIGHTS`, written to `engine-send`, read from
//! `engine-recv`). Must not: decide whether to hand over (`lib.rs` does: only with a token for
//! this generation) or keep an engine it could not pass on (the caller stops it).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::{Deserialize, Serialize};

use crate::engine::Released;
use crate::handover::{Received, recv_with_fds};

/// `LISTEN_FDNAMES` of the end a stopping generation writes its engine to (and reads the swap
/// token from).
pub const SEND_NAME: &str = "engine-send";
/// `LISTEN_FDNAMES` of the end a starting generation reads an engine from.
pub const RECV_NAME: &str = "engine-recv";
/// privitty-init's "this stop is a swap" message.
const TOKEN_MAGIC: &[u8; 8] = b"PVEDSW01";
/// The next generation's "I only wait for the lock now" message.
const STANDBY_MAGIC: &[u8; 8] = b"PVEDSB01";
/// Format and version of an engine message; another one is refused (its pipes are closed, so
/// that engine stops, and a fresh one is started).
const ENGINE_MAGIC: &[u8; 8] = b"PVEDEN01";
/// Most bytes read ahead of the engine's stdout that travel with it (the start of one answer).
const MAX_READ_AHEAD: usize = 1024 * 1024;
/// Most bytes of the JSON part (the peer agent's knowledge and the calls in flight are most of
/// it: up to 1000 instance ids, up to 1024 call ids; knowledge that does not fit is not sent, and
/// the next generation looks it up itself).
const MAX_META: usize = 32 * 1024;

/// The engine pair's two ends, inherited from privitty-init.
#[derive(Debug)]
pub struct EnginePair {
    send: OwnedFd,
    recv: OwnedFd,
}

/// What a stopping generation found waiting for it on `engine-send`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StopMessages {
    /// privitty-init's token for this generation: the stop is a swap.
    pub swap: bool,
    /// A later generation is on standby.
    pub standby: bool,
}

/// The JSON part of an engine message.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    pid: u32,
    start_time: u64,
    next_id: u64,
    poll_id: Option<u64>,
    /// [`Released::forward`]: the calls in flight, answered over the fourth descriptor (the back
    /// channel). Absent when there are none; a build without it refuses a message with four
    /// descriptors, closing them all, so those calls fail at once in the sender.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    forward: Vec<u64>,
    /// [`Released::carried`]; absent in a message from a build without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    carried: Option<serde_json::Value>,
}

impl EnginePair {
    pub fn new(send: OwnedFd, recv: OwnedFd) -> EnginePair {
        EnginePair { send, recv }
    }

    /// What waits on `engine-send` for a stopping generation: whether privitty-init said that
    /// this stop is a swap (a next generation is there to take the engine), and whether a next
    /// generation already said it is on standby. Tokens for other generations are stale (a
    /// generation that died before reading its own) and dropped. Never blocks.
    pub fn read_stop_messages(&self, generation: u64) -> StopMessages {
        let mut seen = StopMessages::default();
        let mut buf = [0u8; 64];
        // Nobody sends descriptors this way; any that came close as the message is dropped.
        while let Ok(Received { len, .. }) = recv_with_fds(self.send.as_raw_fd(), &mut buf) {
            if len == 0 {
                return seen;
            }
            if len != 16 {
                continue;
            }
            let number = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
            match &buf[..8] {
                m if m == TOKEN_MAGIC => seen.swap |= number == generation,
                m if m == STANDBY_MAGIC => seen.standby |= number > generation,
                _ => {}
            }
        }
        seen
    }

    /// Waits (up to `limit`) until a next generation says it is on standby, reading what arrives
    /// on `engine-send`. False when the time ran out (it may have died, or be slow): the stop
    /// goes on without it.
    pub async fn wait_for_standby(&self, generation: u64, limit: std::time::Duration) -> bool {
        let Ok(fd) = self.send.try_clone() else {
            return false;
        };
        let Ok(ready) = crate::handover::watch_readable(fd) else {
            return false;
        };
        let wait = async {
            loop {
                let Ok(mut guard) = ready.readable().await else {
                    return false;
                };
                if self.read_stop_messages(generation).standby {
                    return true;
                }
                guard.clear_ready();
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    /// Tells a stopping previous generation that this one has done everything it can before the
    /// data-directory lock: from now on, the sooner the lock is free the better.
    pub fn announce_standby(&self, generation: u64) {
        let mut msg = STANDBY_MAGIC.to_vec();
        msg.extend_from_slice(&generation.to_be_bytes());
        if let Err(e) = nix::sys::socket::send(
            self.recv.as_raw_fd(),
            &msg,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            tracing::debug!(error = %e, "cannot announce the standby; the previous generation stops on its own");
        }
    }

    /// Passes `released` to whichever generation reads the other end next. On failure the
    /// engine comes back, for the caller to stop.
    pub fn send(&self, released: Released) -> Result<(), Box<(Released, io::Error)>> {
        if released.read_ahead.len() > MAX_READ_AHEAD {
            let n = released.read_ahead.len();
            return Err(Box::new((
                released,
                io::Error::other(format!(
                    "{n} bytes read ahead is more than a hand-over carries"
                )),
            )));
        }
        // The calls in flight go only with their back channel.
        let back = released
            .back
            .as_ref()
            .filter(|_| !released.forward.is_empty());
        let mut meta = Meta {
            pid: released.pid,
            start_time: released.start_time,
            next_id: released.next_id,
            poll_id: released.poll_id,
            forward: match back {
                Some(_) => released.forward.clone(),
                None => Vec::new(),
            },
            carried: released.carried.clone(),
        };
        let mut bytes = serde_json::to_vec(&meta).expect("meta serializes");
        if bytes.len() > MAX_META {
            // The engine goes anyway; its next owner's agents start from scratch.
            tracing::debug!(
                bytes = bytes.len(),
                "the agents' knowledge is too big to hand over"
            );
            meta.carried = None;
            bytes = serde_json::to_vec(&meta).expect("meta serializes");
        }
        let meta = bytes;
        let mut head = Vec::with_capacity(ENGINE_MAGIC.len() + 4 + meta.len());
        head.extend_from_slice(ENGINE_MAGIC);
        head.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        head.extend_from_slice(&meta);
        let iov = [IoSlice::new(&head), IoSlice::new(&released.read_ahead)];
        let mut fds = vec![
            released.stdin.as_raw_fd(),
            released.stdout.as_raw_fd(),
            released.stderr.as_raw_fd(),
        ];
        if let Some(back) = &back {
            fds.push(back.as_raw_fd());
        }
        let cmsg = [ControlMessage::ScmRights(&fds)];
        match sendmsg::<()>(
            self.send.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            // Our copies close with `released`; the message holds the engine now.
            Ok(_) => Ok(()),
            Err(e) => Err(Box::new((released, io::Error::from(e)))),
        }
    }

    /// The engine the previous generation handed over, if it did. Call once the data-directory
    /// lock is held: the previous generation sends before it lets the lock go, so the message is
    /// there by then. Other messages (another format, a second engine) are refused: their pipes
    /// close, which stops that engine. Never blocks.
    pub fn receive(&self) -> Option<Released> {
        let mut taken: Option<Released> = None;
        let mut buf = vec![0u8; ENGINE_MAGIC.len() + 4 + MAX_META + MAX_READ_AHEAD];
        while let Ok(Received {
            len,
            fds,
            truncated,
        }) = recv_with_fds(self.recv.as_raw_fd(), &mut buf)
        {
            if len == 0 && fds.is_empty() {
                return taken;
            }
            match (decode(&buf[..len], fds), truncated) {
                (Some(released), false) if taken.is_none() => taken = Some(released),
                (Some(released), false) => tracing::warn!(
                    pid = released.pid,
                    "a second engine was handed over; closed its pipes (it stops)"
                ),
                _ => tracing::warn!(
                    bytes = len,
                    truncated,
                    "an engine was handed over in a format this build does not read; closed its pipes (it stops)"
                ),
            }
        }
        taken
    }
}

fn decode(msg: &[u8], fds: Vec<OwnedFd>) -> Option<Released> {
    let rest = msg.strip_prefix(ENGINE_MAGIC.as_slice())?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > MAX_META || rest.len() < len {
        return None;
    }
    let (meta, read_ahead) = rest.split_at(len);
    let meta: Meta = serde_json::from_slice(meta).ok()?;
    let mut fds = fds.into_iter();
    let (Some(stdin), Some(stdout), Some(stderr), back, None) =
        (fds.next(), fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return None;
    };
    // A back channel comes with calls in flight, and only then.
    if back.is_some() == meta.forward.is_empty() {
        return None;
    }
    Some(Released {
        pid: meta.pid,
        start_time: meta.start_time,
        stdin,
        stdout,
        stderr,
        read_ahead: read_ahead.to_vec(),
        next_id: meta.next_id,
        poll_id: meta.poll_id,
        forward: meta.forward,
        back,
        carried: meta.carried,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    use super::*;

    /// The pair as privitty-init holds it: (init's view of `engine-send`, of `engine-recv`).
    fn pair() -> (EnginePair, EnginePair) {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let a2 = a.try_clone().unwrap();
        let b2 = b.try_clone().unwrap();
        (EnginePair::new(a, b), EnginePair::new(a2, b2))
    }

    fn token(pair: &EnginePair, generation: u64) {
        let mut msg = TOKEN_MAGIC.to_vec();
        msg.extend_from_slice(&generation.to_be_bytes());
        nix::sys::socket::send(pair.recv.as_raw_fd(), &msg, MsgFlags::MSG_DONTWAIT).unwrap();
    }

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (std::fs::File::from(r), std::fs::File::from(w))
    }

    #[test]
    fn only_a_token_for_this_generation_means_a_swap() {
        let (old, _new) = pair();
        assert!(!old.read_stop_messages(3).swap, "no token: a plain stop");
        token(&old, 2);
        assert!(
            !old.read_stop_messages(3).swap,
            "a stale token of another generation"
        );
        token(&old, 2);
        token(&old, 3);
        assert!(old.read_stop_messages(3).swap);
        assert!(!old.read_stop_messages(3).swap, "a token is read once");
    }

    #[tokio::test]
    async fn the_stopping_generation_waits_for_a_later_ones_standby_only() {
        let (old, new) = pair();
        let limit = std::time::Duration::from_millis(50);
        // Its own or an earlier generation's standby is not the next one's.
        new.announce_standby(3);
        new.announce_standby(2);
        assert!(
            !old.wait_for_standby(3, limit).await,
            "no later generation is on standby"
        );
        // A standby that came before the token is not lost when the token is read.
        new.announce_standby(4);
        token(&old, 3);
        assert_eq!(
            old.read_stop_messages(3),
            StopMessages {
                swap: true,
                standby: true
            }
        );
        // One that comes while waiting ends the wait.
        let waiting = tokio::spawn(async move {
            old.wait_for_standby(3, std::time::Duration::from_secs(20))
                .await
        });
        tokio::task::yield_now().await;
        new.announce_standby(4);
        assert!(waiting.await.unwrap());
    }

    #[test]
    fn knowledge_too_big_for_the_message_stays_behind_and_the_engine_goes() {
        let (old, new) = pair();
        let (_in_r, in_w) = pipe();
        let (out_r, _out_w) = pipe();
        let (_err_r, err_w) = pipe();
        let instances: Vec<u32> = (1_000_000..1_005_000).collect();
        let released = Released {
            pid: 42,
            start_time: 7,
            stdin: OwnedFd::from(in_w),
            stdout: OwnedFd::from(out_r),
            stderr: OwnedFd::from(err_w),
            read_ahead: Vec::new(),
            next_id: 10,
            poll_id: None,
            forward: Vec::new(),
            back: None,
            carried: Some(serde_json::json!({ "instances": instances })),
        };
        old.send(released).map_err(|failed| failed.1).unwrap();
        let got = new.receive().expect("the engine message");
        assert_eq!((got.pid, got.next_id), (42, 10));
        assert_eq!(got.carried, None);
    }

    #[test]
    fn an_engine_arrives_with_its_pipes_read_ahead_call_state_and_back_channel() {
        let (old, new) = pair();
        let (in_r, in_w) = pipe();
        let (mut out_r, mut out_w) = pipe();
        let (_err_r, err_w) = pipe();
        let (mut back_here, back_there) = std::os::unix::net::UnixStream::pair().unwrap();
        let released = Released {
            pid: 42,
            start_time: 7,
            stdin: OwnedFd::from(in_w),
            stdout: OwnedFd::from(out_r.try_clone().unwrap()),
            stderr: OwnedFd::from(err_w),
            read_ahead: b"{\"jsonrpc\":\"2.0\",\"id\":9,".to_vec(),
            next_id: 10,
            poll_id: Some(9),
            forward: vec![7, 8],
            back: Some(OwnedFd::from(back_there)),
            carried: Some(serde_json::json!({"instances": [12, 40], "addr": "a@example.org"})),
        };
        old.send(released).map_err(|failed| failed.1).unwrap();
        let got = new.receive().expect("the engine message");
        assert_eq!(
            (got.pid, got.start_time, got.next_id, got.poll_id),
            (42, 7, 10, Some(9))
        );
        assert_eq!(got.read_ahead, b"{\"jsonrpc\":\"2.0\",\"id\":9,");
        assert_eq!(
            got.carried,
            Some(serde_json::json!({"instances": [12, 40], "addr": "a@example.org"}))
        );
        // The pipes are the same pipes: what goes into the handed stdin comes out of its pipe.
        std::fs::File::from(got.stdin).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        (&in_r).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        out_w.write_all(b"y").unwrap();
        std::fs::File::from(got.stdout).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"y");
        drop(out_r.read(&mut []));
        // The calls in flight, and the back channel their answers go over.
        assert_eq!(got.forward, [7, 8]);
        std::os::unix::net::UnixStream::from(got.back.expect("the back channel"))
            .write_all(b"z")
            .unwrap();
        back_here.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"z");
        assert!(new.receive().is_none(), "one message, taken once");
    }

    #[test]
    fn calls_in_flight_without_their_back_channel_or_the_reverse_are_refused() {
        let (old, new) = pair();
        let send = |meta: &str, with_back: bool| {
            let (in_r, in_w) = pipe();
            let (out_r, _out_w) = pipe();
            let (_err_r, err_w) = pipe();
            let (back, _back_there) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut fds = vec![in_w.as_raw_fd(), out_r.as_raw_fd(), err_w.as_raw_fd()];
            if with_back {
                fds.push(back.as_raw_fd());
            }
            let mut msg = ENGINE_MAGIC.to_vec();
            msg.extend_from_slice(&(meta.len() as u32).to_be_bytes());
            msg.extend_from_slice(meta.as_bytes());
            sendmsg::<()>(
                old.send.as_raw_fd(),
                &[IoSlice::new(&msg)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            in_r
        };
        let good = r#"{"pid":1,"start_time":2,"next_id":3,"poll_id":null}"#;
        let with_calls = r#"{"pid":1,"start_time":2,"next_id":3,"poll_id":null,"forward":[2]}"#;
        for (meta, with_back) in [(with_calls, false), (good, true)] {
            let stdin = send(meta, with_back);
            assert!(new.receive().is_none(), "{meta} with_back={with_back}");
            // Its stdin was closed: that engine would see the end of its input and stop.
            let mut rest = Vec::new();
            (&stdin).read_to_end(&mut rest).unwrap();
        }
        send(with_calls, true);
        let got = new.receive().expect("calls with their back channel");
        assert_eq!(got.forward, [2]);
    }

    #[test]
    fn another_format_is_refused_and_its_pipes_are_closed() {
        let (old, new) = pair();
        let (in_r, in_w) = pipe();
        let fds = [in_w.as_raw_fd()];
        sendmsg::<()>(
            old.send.as_raw_fd(),
            &[IoSlice::new(b"PVEDEN99{}")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(in_w);
        assert!(new.receive().is_none());
        // The refused stdin is closed: the engine on the other side reads its end.
        let mut b = [0u8; 1];
        assert_eq!((&in_r).read(&mut b).unwrap(), 0);
    }
}
