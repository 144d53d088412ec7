//! Library errors. Each names the path, value or peer involved and, when the user can act, what to do.
//! Never includes the TOKEN or the device secret.

use std::time::Duration;

/// Groups errors by what the caller does about them; the CLI maps each to its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input from the user (URL syntax, http to a non-loopback host, …).
    Usage,
    /// The accounts directory or a file in it cannot be read or written.
    LocalFiles,
    /// The server gave a definitive refusal (unknown token, seat limit, revoked, bad secret, …).
    Refused,
    /// Transient: unreachable, timeout, 408/429/5xx, a bad body or a JWT that does not verify.
    Unreachable,
    /// The local state does not allow the operation (e.g. sync before activation).
    State,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Placeholder(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        todo!("licensectl: Error::kind")
    }

    /// True for errors worth retrying (transient server or network errors).
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Unreachable
    }

    /// The server's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        None
    }
}
