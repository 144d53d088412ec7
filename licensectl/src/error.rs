//! Library errors. Each names the path, value or peer involved and, when the user can act, what to do.
//! Never includes the TOKEN or the device secret.
//!
//! Owns: the error variants and their grouping into [`ErrorKind`] (which the CLI maps to exit codes).
//! Must not: format secrets; server-provided text is passed through [`crate::url::DeliveryUrl::scrub`]
//! before it gets here.

use std::path::PathBuf;
use std::time::Duration;

use crate::vocab::{ACTIVATION_FILE, Reason};

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

/// Why a request to the license server failed transiently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransientCause {
    /// TCP connect or DNS failed.
    Connect,
    /// The TLS handshake failed (unknown CA, intercepting proxy, …).
    Tls,
    /// Connect (10 s) or whole-request (30 s) timeout.
    Timeout,
    /// `408`, `429`, `5xx`, or a status the protocol never sends (a `3xx` redirect, not followed).
    Status(u16),
    /// A success status whose body is not the documented JSON (or is over 64 KiB).
    BadResponse,
    /// The license JWT in a success response did not verify.
    BadLicense(Reason),
    /// Anything else reqwest reports while sending or reading.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The delivery URL is malformed. `shown` is a redacted rendering of the input.
    #[error(
        "invalid license URL {shown}: {problem}; expected https://<host>[:port]/v1/license/<TOKEN> \
         (check the delivery URL your administrator sent)"
    )]
    InvalidUrl { shown: String, problem: String },

    /// `http://` to a host that is not loopback.
    #[error(
        "refusing insecure license URL http://{host}/…: plain http is allowed only to loopback hosts \
         (127.0.0.0/8, [::1], localhost); use the https:// URL"
    )]
    InsecureUrl { host: String },

    /// A trusted-key source could not be used.
    #[error("bad license key in {source_name}: {problem}")]
    BadKey {
        source_name: String,
        problem: String,
        from_env: bool,
    },

    /// No trusted key is configured at all, so no license can verify.
    #[error(
        "no trusted license keys are configured: set PRIVITTY_LICENSE_PUBKEY (PEM text or a path to a PEM \
         file) or install keys in {dir}"
    )]
    NoTrustedKeys { dir: String },

    #[error("cannot read {}: {source}; check the accounts directory's permissions", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write {}: {source}; check that the accounts directory exists, is writable and not full", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A local file exists but its content is unusable.
    #[error("{} is corrupt: {problem}; {remedy}", path.display())]
    CorruptFile {
        path: PathBuf,
        problem: String,
        remedy: &'static str,
    },

    /// Something other than a regular file (a symlink, FIFO, directory, device, socket) sits under
    /// the name of a license file; it is neither followed nor read.
    #[error(
        "{} is {kind}, not a regular file; it is never followed or read: move it away (the license \
         commands recreate what they need) and check who can write to the accounts directory",
        path.display()
    )]
    NotRegularFile { path: PathBuf, kind: &'static str },

    /// A file the local state needs is missing.
    #[error("{} is missing; {remedy}", path.display())]
    MissingFile { path: PathBuf, remedy: &'static str },

    /// The extra CA bundle could not be used.
    #[error("cannot use the CA bundle {} (SSL_CERT_FILE): {problem}", path.display())]
    CaBundle { path: PathBuf, problem: String },

    /// A definitive refusal from the license server.
    #[error("license server {host} refused the {operation}: {code} ({message}); {hint}")]
    Refused {
        host: String,
        operation: &'static str,
        status: u16,
        /// The server's `error` code, e.g. `seat_limit`.
        code: String,
        /// The server's `message`, with the TOKEN scrubbed.
        message: String,
        hint: &'static str,
    },

    /// A transient failure talking to the license server; nothing local was changed.
    #[error(
        "license server {host} did not complete the {operation}: {detail}{}; nothing was changed locally, try again later",
        hint_suffix(hint)
    )]
    Unreachable {
        host: String,
        operation: &'static str,
        cause: TransientCause,
        detail: String,
        hint: Option<&'static str>,
        retry_after: Option<Duration>,
    },

    /// The device was never activated (no `activation.json`).
    #[error(
        "this device is not activated (no {} in {}); run `privitty-edge license activate <url>` first",
        ACTIVATION_FILE,
        dir.display()
    )]
    NotActivated { dir: PathBuf },

    /// The activation is no longer active (deactivated or revoked).
    #[error(
        "this device's activation is {state} ({}); run `privitty-edge license activate <url>` to activate it again",
        dir.display()
    )]
    Inactive { dir: PathBuf, state: &'static str },

    /// Could not build the HTTP client.
    #[error("cannot set up the HTTPS client: {0}")]
    Client(String),
}

fn hint_suffix(hint: &Option<&'static str>) -> String {
    match hint {
        Some(h) => format!(" ({h})"),
        None => String::new(),
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidUrl { .. } | Error::InsecureUrl { .. } | Error::NoTrustedKeys { .. } => {
                ErrorKind::Usage
            }
            Error::BadKey { from_env: true, .. } => ErrorKind::Usage,
            Error::BadKey {
                from_env: false, ..
            } => ErrorKind::LocalFiles,
            Error::Read { .. }
            | Error::Write { .. }
            | Error::CorruptFile { .. }
            | Error::NotRegularFile { .. }
            | Error::MissingFile { .. }
            | Error::CaBundle { .. } => ErrorKind::LocalFiles,
            Error::Client(_) => ErrorKind::LocalFiles,
            Error::Refused { .. } => ErrorKind::Refused,
            Error::Unreachable { .. } => ErrorKind::Unreachable,
            Error::NotActivated { .. } | Error::Inactive { .. } => ErrorKind::State,
        }
    }

    /// True for errors worth retrying (transient server or network errors).
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Unreachable
    }

    /// The server's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unreachable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The server's error code for a definitive refusal (`seat_limit`, `revoked`, …).
    pub fn refusal_code(&self) -> Option<&str> {
        match self {
            Error::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Read {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Write {
            path: path.into(),
            source,
        }
    }
}
