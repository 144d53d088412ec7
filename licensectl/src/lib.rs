//! The Privitty Edge license library: everything `license-protocol.md` specifies, in one place, so the
//! CLI (`privitty-edge license …`), the supervisor (start-up activation, watch, periodic sync) and edged
//! (the gate, usage counters) share one implementation of the rules.
//!
//! It owns: the delivery URL and its redaction, trusted keys, JWT verification, the status rules with
//! the high-water clock, the atomic file store in the accounts directory with its lock, the protocol
//! client, and the usage-counter store. It must not start servers or own a tokio runtime in its core
//! types: the network operations are `async fn`s that run on the caller's runtime.

pub mod accounts;
pub mod api_token;
pub mod cli;
pub mod client;
pub mod error;
pub mod fingerprint;
pub mod jwt;
pub mod keys;
pub mod logging;
pub mod ops;
pub mod status;
pub mod url;
pub mod usage;

pub use accounts::AccountsDir;
pub use error::{Error, ErrorKind};
pub use keys::TrustedKeys;
pub use ops::{ActivateRequest, Activated, Synced, activate, deactivate, sync};
pub use status::{
    Evaluation, LicenseIdentity, LoadedLicense, Reason, Status, StatusReport, needs_activation,
};
pub use url::DeliveryUrl;
pub use usage::UsageCounters;

/// Environment variables read by the library (each binary documents them in its `--help`).
pub mod env {
    /// The accounts (data) directory; default [`super::accounts::DEFAULT_ACCOUNTS_DIR`].
    pub const ACCOUNTS: &str = "PRIVITTY_ACCOUNTS";
    /// Extra trusted license keys: PEM text, or a path to a PEM file; several keys allowed.
    pub const LICENSE_PUBKEY: &str = "PRIVITTY_LICENSE_PUBKEY";
    /// Extra CA bundle trusted for the license server, in addition to the system roots.
    pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
    /// Log filter and format, shared by all binaries.
    pub const LOG: &str = "PRIVITTY_LOG";
    pub const LOG_FORMAT: &str = "PRIVITTY_LOG_FORMAT";
}
