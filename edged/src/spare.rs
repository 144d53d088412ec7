//! The spare generation: an edged that privitty-init starts ahead of the next swap and that waits,
//! started but idle, until it is told which generation it is.
//!
//! Owns: the wake message (`PVEDWK01`, then the generation's number, the swaps and the crashes
//! privitty-init has seen, each a big-endian u64: 32 bytes) and waiting for it on the inherited
//! `wake` descriptor (`LISTEN_FDNAMES`), the read end of a pipe whose write end privitty-init
//! keeps. Must not: read the license, the data directory or anything else that may change before
//! the wake-up; a spare that has been woken does exactly what a generation started at that moment
//! would.
//!
//! What a spare saves a swap is the process's start: exec, the dynamic loader, the C library's
//! and the runtime's set-up, the worker threads, and the page faults of their first heap
//! ([`crate::host::prepare_spare_heap`]). They run while the serving generation has the machine
//! to itself instead of at the swap, next to its drain and its catch-up.

use std::io;
use std::os::fd::OwnedFd;

use crate::metrics::GenerationInfo;

/// The `LISTEN_FDNAMES` name of the descriptor a spare waits on.
pub const WAKE_NAME: &str = "wake";

const MAGIC: &[u8; 8] = b"PVEDWK01";

/// The length of a wake message.
pub const WAKE_LEN: usize = 32;

/// Why a spare could not be woken.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("cannot read the wake-up message from privitty-init")]
    Read(#[source] io::Error),
    #[error(
        "the wake-up message from privitty-init is not in this build's format ({0} bytes); \
         privitty-init and privitty-edged must come from the same release"
    )]
    Format(usize),
}

/// Parses a complete wake message.
pub fn decode(message: &[u8]) -> Result<GenerationInfo, WakeError> {
    if message.len() != WAKE_LEN || &message[..8] != MAGIC {
        return Err(WakeError::Format(message.len()));
    }
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&message[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    Ok(GenerationInfo {
        number: word(8),
        swaps: word(16),
        crashes: word(24),
    })
}

/// Waits for the wake message on `fd`. `Ok(None)`: privitty-init closed the pipe without waking
/// this spare (it stopped, or no longer needs a spare): the process ends cleanly, having done
/// nothing.
pub async fn wait(fd: OwnedFd) -> Result<Option<GenerationInfo>, WakeError> {
    use tokio::io::AsyncReadExt;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(WakeError::Read)?;
    let mut message = [0u8; WAKE_LEN];
    let mut filled = 0;
    while filled < WAKE_LEN {
        match pipe.read(&mut message[filled..]).await {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(WakeError::Format(filled)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WakeError::Read(e)),
        }
    }
    decode(&message).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The wake message for `info`, as privitty-init writes it (`listener::wake_message`).
    fn encode(info: GenerationInfo) -> [u8; WAKE_LEN] {
        let mut message = [0u8; WAKE_LEN];
        message[..8].copy_from_slice(MAGIC);
        message[8..16].copy_from_slice(&info.number.to_be_bytes());
        message[16..24].copy_from_slice(&info.swaps.to_be_bytes());
        message[24..32].copy_from_slice(&info.crashes.to_be_bytes());
        message
    }

    fn info() -> GenerationInfo {
        GenerationInfo {
            number: 7,
            swaps: 5,
            crashes: 1,
        }
    }

    #[test]
    fn a_wake_message_reads_back_as_written() {
        assert_eq!(decode(&encode(info())).unwrap(), info());
        // The bytes privitty-init's `listener::wake_message(7, 5, 1)` is tested to write.
        let mut written = b"PVEDWK01".to_vec();
        for value in [7u64, 5, 1] {
            written.extend_from_slice(&value.to_be_bytes());
        }
        assert_eq!(decode(&written).unwrap(), info());
    }

    #[test]
    fn another_format_is_refused() {
        let mut message = encode(info());
        message[7] = b'2';
        assert!(matches!(decode(&message), Err(WakeError::Format(32))));
        assert!(matches!(decode(&message[..31]), Err(WakeError::Format(31))));
    }

    #[tokio::test]
    async fn a_message_written_in_pieces_wakes_the_spare() {
        let (rx, tx) = nix::unistd::pipe().unwrap();
        let waiting = tokio::spawn(wait(rx));
        let mut tx = std::fs::File::from(tx);
        let message = encode(info());
        tx.write_all(&message[..5]).unwrap();
        tx.flush().unwrap();
        tokio::task::yield_now().await;
        tx.write_all(&message[5..]).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), Some(info()));
    }

    #[tokio::test]
    async fn a_closed_pipe_dismisses_the_spare_and_a_cut_message_is_an_error() {
        let (rx, tx) = nix::unistd::pipe().unwrap();
        drop(tx);
        assert_eq!(wait(rx).await.unwrap(), None);

        let (rx, tx) = nix::unistd::pipe().unwrap();
        std::fs::File::from(tx).write_all(b"PVEDWK").unwrap();
        assert!(matches!(wait(rx).await, Err(WakeError::Format(6))));
    }
}
