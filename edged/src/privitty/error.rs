//! The errors of the Privitty file methods and their JSON-RPC codes.
//!
//! Owns the mapping error → code; must never carry key material (file keys, the master key) in a
//! message, only paths, ids and what the caller can do about it.

use std::io;
use std::path::PathBuf;

use uuid::Uuid;

/// What went wrong in a Privitty file method. Codes are listed in `PRV-FORMAT.md` and by
/// [`PrivittyError::rpc_code`]; -32001 is left to the license gate.
#[derive(Debug, thiserror::Error)]
pub enum PrivittyError {
    /// A parameter has the wrong type, range or shape (the message names it).
    #[error("invalid params: {0}")]
    InvalidParams(String),

    #[error("{path} does not exist; pass the absolute path of an existing file")]
    NotFound { path: PathBuf },

    #[error("{path} is a symbolic link; pass the path of the file it points to")]
    Symlink { path: PathBuf },

    #[error("{path} is a {kind}, not a regular file")]
    NotRegularFile { path: PathBuf, kind: &'static str },

    #[error(
        "permission denied on {path}; make the file readable and its directory writable by the gateway's user"
    )]
    PermissionDenied { path: PathBuf },

    #[error("{path} already exists and is never overwritten; move or delete it, then retry")]
    OutputExists { path: PathBuf },

    #[error(
        "{path} changed size while it was being encrypted (it had {expected} bytes); retry once it is complete"
    )]
    SourceChanged { path: PathBuf, expected: u64 },

    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "unknown file id {file_id}: it was not encrypted on this device, or its key record was deleted"
    )]
    UnknownFile { file_id: Uuid },

    #[error(
        "file {file_id} belongs to account {account_id}, chat {chat_id}; not to account {given_account_id}, chat {given_chat_id}"
    )]
    WrongChat {
        file_id: Uuid,
        account_id: u32,
        chat_id: u32,
        given_account_id: u32,
        given_chat_id: u32,
    },

    #[error(
        "contact {peer_contact_id} is not the recipient of file {file_id} (its recipient is contact {recipient})"
    )]
    NotRecipient {
        file_id: Uuid,
        peer_contact_id: u32,
        recipient: u32,
    },

    #[error("access to file {file_id} was revoked; ask the sender to send it again")]
    Revoked { file_id: Uuid },

    #[error("access to file {file_id} expired at {expires_at}; ask the sender to send it again")]
    Expired { file_id: Uuid, expires_at: String },

    #[error("{path} is not a privitty protected file: {reason}")]
    NotPrv { path: PathBuf, reason: String },

    #[error(
        "{path} uses .prv format version {version}; this gateway reads version 1 only, upgrade it"
    )]
    UnsupportedVersion { path: PathBuf, version: u16 },

    #[error(
        "{path} failed authentication at chunk {chunk}: it was tampered with, reordered or encrypted with another key"
    )]
    Tampered { path: PathBuf, chunk: u64 },

    #[error("{path} is truncated: it ends inside chunk {chunk}")]
    Truncated { path: PathBuf, chunk: u64 },

    #[error("{path} has unexpected data after its last chunk")]
    TrailingData { path: PathBuf },

    #[error(
        "{path} does not match the key record of file {file_id} (its header differs from the one encrypted here)"
    )]
    RecordMismatch { path: PathBuf, file_id: Uuid },

    #[error("key store {path}: {reason}")]
    KeyStore { path: PathBuf, reason: String },
}

impl PrivittyError {
    /// The JSON-RPC error code: -32602 for parameters, -32010…-32050 for the rest (see
    /// `PRV-FORMAT.md`, "Errors").
    pub fn rpc_code(&self) -> i64 {
        match self {
            PrivittyError::InvalidParams(_) => -32602,
            PrivittyError::NotFound { .. } => -32010,
            PrivittyError::Symlink { .. } => -32011,
            PrivittyError::NotRegularFile { .. } => -32012,
            PrivittyError::PermissionDenied { .. } => -32013,
            PrivittyError::OutputExists { .. } => -32014,
            PrivittyError::SourceChanged { .. } => -32015,
            PrivittyError::Io { .. } => -32016,
            PrivittyError::UnknownFile { .. } => -32020,
            PrivittyError::WrongChat { .. } => -32021,
            PrivittyError::NotRecipient { .. } => -32022,
            PrivittyError::Revoked { .. } => -32030,
            PrivittyError::Expired { .. } => -32031,
            PrivittyError::NotPrv { .. } => -32040,
            PrivittyError::UnsupportedVersion { .. } => -32041,
            PrivittyError::Tampered { .. } => -32042,
            PrivittyError::Truncated { .. } => -32043,
            PrivittyError::TrailingData { .. } => -32044,
            PrivittyError::RecordMismatch { .. } => -32045,
            PrivittyError::KeyStore { .. } => -32050,
        }
    }

    /// True when a `.prv` file could not be decrypted because of its content (the viewer answers
    /// "decryption failed"), as opposed to access rules or a missing file.
    pub fn is_decryption_failure(&self) -> bool {
        matches!(
            self,
            PrivittyError::NotPrv { .. }
                | PrivittyError::UnsupportedVersion { .. }
                | PrivittyError::Tampered { .. }
                | PrivittyError::Truncated { .. }
                | PrivittyError::TrailingData { .. }
                | PrivittyError::RecordMismatch { .. }
        )
    }

    /// Maps an I/O error on `path` to the specific variant a caller can act on.
    pub(crate) fn from_io(path: impl Into<PathBuf>, source: io::Error) -> PrivittyError {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::NotFound => PrivittyError::NotFound { path },
            io::ErrorKind::PermissionDenied => PrivittyError::PermissionDenied { path },
            io::ErrorKind::AlreadyExists => PrivittyError::OutputExists { path },
            _ => PrivittyError::Io { path, source },
        }
    }

    pub(crate) fn store(path: impl Into<PathBuf>, reason: impl Into<String>) -> PrivittyError {
        PrivittyError::KeyStore {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
