//! The Privitty Edge license library: everything `license-protocol.md` specifies, in one place, so the
//! CLI (`privitty-edge license …`), the supervisor (start-up activation, watch, periodic sync) and edged
//! (the gate, usage counters) share one implementation of the rules.
//!
//! It owns: the delivery URL and its redaction, trusted keys, JWT verification, the status rules with
//! the high-water clock, the atomic file store in the accounts directory with its lock, the protocol
//! client, and the usage-counter store. It must not start servers or own a tokio runtime in its core
//! types: the network operations are `async fn`s that run on the caller's runtime.
//!
//! # Layout
//!
//! The modules form layers; a module uses only the layers below it (never one beside or above:
//! `privitty-base`'s `layers.rs` fails the tests on an import cycle). From the bottom:
//!
//! 0. [`vocab`] — the shared words and limits: [`Status`], [`Reason`], the file names of the
//!    accounts directory, the size caps, unix-seconds and RFC 3339 helpers. It imports nothing
//!    from this crate.
//! 1. [`error`] — [`Error`], [`ErrorKind`], `TransientCause`: every failure, naming the path or
//!    peer and the fix.
//! 2. [`url`] — the delivery URL, its checks and redaction; [`keys`] — trusted keys and `kid`;
//!    [`accounts`] — the accounts directory: bounded reads, atomic writes, the lock, `device.uuid`,
//!    the `activation.json` and `sync_state.json` records, moving a withdrawn license aside.
//! 3. [`jwt`] — verifying (and, for servers and tests, signing) `privitty.lic`.
//! 4. [`status`] — the status rules, [`LoadedLicense`], the `license status` report;
//!    [`usage`] — the usage counters and `usage.json`.
//! 5. [`client`] — the protocol v1 HTTP client and the classification of its failures.
//! 6. [`ops`] — `activate`, `sync`, `deactivate`: protocol calls plus file commits, under the lock.
//! 7. [`cli`] — the `privitty-edge` / `licensectl` command line and its exit codes.
//!
//! Beside the license rules, used by the binaries: [`api_token`] and [`fingerprint`] (layer 3, the
//! HTTP API token and the device fingerprint, stored in the accounts directory).
//!
//! Below all of them is the `privitty-base` crate (`licensectl/base/`): the environment variable
//! registry, logging, the duration syntax, restart pacing, the listening socket and the health
//! probe, which every binary shares and which have nothing to do with licenses. `layers.rs`, the
//! import-cycle check of every crate, lives there too.
//!
//! This root only declares the modules and re-exports the names the other crates use; the older
//! paths (`accounts::unix_secs`, `ops::read_sync_state`, `jwt::MAX_LICENSE_BYTES`, …) stay as
//! re-exports from the module that used to define them.

pub mod accounts;
pub mod api_token;
pub mod cli;
pub mod client;
pub mod error;
pub mod fingerprint;
pub mod jwt;
pub mod keys;
pub mod ops;
pub mod status;
pub mod url;
pub mod usage;
pub mod vocab;

pub use accounts::AccountsDir;
pub use error::{Error, ErrorKind};
pub use keys::TrustedKeys;
pub use ops::{ActivateRequest, Activated, Synced, activate, deactivate, sync};
pub use status::{Evaluation, LicenseIdentity, LoadedLicense, StatusReport, needs_activation};
pub use url::DeliveryUrl;
pub use usage::UsageCounters;
pub use vocab::{Reason, Status};
