//! The reference license server (license-protocol.md, protocol v1), its admin API and CLI, and the
//! test harness that runs it as a real process.
//!
//! It owns the server side of the protocol: licenses, seats, usage acknowledgement, signing, TLS for
//! local tries, fault injection for tests. It must not be used by production code, and it never logs a
//! TOKEN or a device secret (see [`redact`]). Documentation for users: `tests/LICENSE-SERVER.md`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::RngCore as _;

pub mod admin;
pub mod cli;
mod harness;
pub mod server;
pub mod signing;
pub mod state;
pub mod tls;

pub use harness::{Fault, LicenseServer, LicenseSpec};

/// Written at start: the base URL the admin commands (and the harness) use to reach the server.
pub const SERVER_URL_FILE: &str = "server-url";

/// Errors of the server and its admin client. Never contains a TOKEN or a device secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable key: {problem}; move it away to generate a new one")]
    BadKeyFile { path: PathBuf, problem: String },
    #[error(
        "{path} is not valid server state: {problem}; fix or remove it (removing forgets every license)"
    )]
    BadState { path: PathBuf, problem: String },
    #[error("tls set-up failed: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is missing: start `privitty-license-server serve --state-dir {dir}` first", dir = .path.parent().unwrap_or(Path::new(".")).display())]
    NotStarted { path: PathBuf },
    #[error("license server at {url} is unreachable: {problem}")]
    Unreachable { url: String, problem: String },
    #[error("license server refused ({status}, {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("invalid argument: {0}")]
    Usage(String),
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `bytes` random bytes as URL-safe base64 (within the protocol's TOKEN alphabet).
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// How a TOKEN (or device secret) appears in logs: its first three characters only.
pub fn redact(secret: &str) -> String {
    let head: String = secret.chars().take(3).collect();
    format!("{head}…(redacted)")
}
