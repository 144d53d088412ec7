//! Status rules (license-protocol.md, "Status, evaluated at every check").
//!
//! Owns: the `Status`/`Reason` words, evaluation against a clock with the high-water rule
//! `t = max(now, high_water, iat)`, and the license as loaded from an accounts directory at one moment.
//! Must not: touch the network, or write anything (`LoadedLicense::load` only reads).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::SystemTime;

use serde::Serialize;

use crate::jwt::LicenseClaims;
use crate::{AccountsDir, Error, TrustedKeys};

/// The word users grep for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    GracePeriod,
    Expired,
    NoLicense,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::GracePeriod => "grace_period",
            Status::Expired => "expired",
            Status::NoLicense => "no_license",
        }
    }

    /// `active` and `grace_period` allow gated calls.
    pub fn allows_gated(self) -> bool {
        matches!(self, Status::Active | Status::GracePeriod)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the status is `no_license`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    NotActivated,
    InvalidSignature,
    UntrustedKey,
    WrongDevice,
    Corrupt,
    UnsupportedVersion,
    Deactivated,
    Revoked,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotActivated => "not_activated",
            Reason::InvalidSignature => "invalid_signature",
            Reason::UntrustedKey => "untrusted_key",
            Reason::WrongDevice => "wrong_device",
            Reason::Corrupt => "corrupt",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::Deactivated => "deactivated",
            Reason::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one check. `expires_at` is the JWT's `sync_by` (grace starts there),
/// `grace_ends_at` its `exp` (sends blocked from there); both are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub status: Status,
    pub reason: Option<Reason>,
    pub expires_at: Option<i64>,
    pub grace_ends_at: Option<i64>,
}

/// Identifies the license content a generation loaded; the supervisor swaps only when it changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LicenseIdentity {
    /// SHA-256 (hex) of the `privitty.lic` bytes.
    pub sha256: String,
    pub jti: String,
    pub iat: i64,
}

/// The license files of an accounts directory as read at one moment (edged reads them once at start-up).
/// Invalid content is not an error: it loads as `no_license` with the reason.
#[derive(Debug)]
pub struct LoadedLicense {
    claims: Option<LicenseClaims>,
    invalid: Option<Reason>,
    identity: Option<LicenseIdentity>,
    /// Highest time seen (unix seconds): starts at `max(activation.json high_water, iat)` and only grows.
    high_water: AtomicI64,
}

impl LoadedLicense {
    /// Reads `privitty.lic`, `device.uuid` and `activation.json` and verifies the license.
    /// Errors only when the directory cannot be read (I/O other than "not found").
    pub fn load(dir: &AccountsDir, keys: &TrustedKeys) -> Result<LoadedLicense, Error> {
        let _ = (dir, keys);
        todo!("licensectl: LoadedLicense::load")
    }

    /// Evaluates the status at `now`, advancing the in-memory high-water mark.
    pub fn evaluate(&self, now: SystemTime) -> Evaluation {
        let _ = now;
        let _ = self.high_water.load(Ordering::Relaxed);
        todo!("licensectl: LoadedLicense::evaluate")
    }

    pub fn claims(&self) -> Option<&LicenseClaims> {
        self.claims.as_ref()
    }

    /// Why the file on disk did not verify, when it did not.
    pub fn invalid_reason(&self) -> Option<Reason> {
        self.invalid
    }

    /// `None` when there is no valid license.
    pub fn identity(&self) -> Option<&LicenseIdentity> {
        self.identity.as_ref()
    }

    /// The in-memory high-water mark (unix seconds), for persisting.
    pub fn high_water(&self) -> i64 {
        self.high_water.load(Ordering::Relaxed)
    }
}

/// Everything `privitty-edge license status [--json]` shows.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub status: Status,
    pub reason: Option<Reason>,
    pub license_id: Option<String>,
    pub customer: Option<String>,
    pub features: Vec<String>,
    /// RFC 3339.
    pub expires_at: Option<String>,
    pub grace_ends_at: Option<String>,
    pub device_uuid: Option<String>,
    pub activation_id: Option<String>,
    /// Redacted delivery URL.
    pub license_server: Option<String>,
    pub last_sync_ok_at: Option<String>,
    pub last_sync_error: Option<String>,
}

/// Reads the directory and builds the report (reads only, never writes).
pub fn report(dir: &AccountsDir, keys: &TrustedKeys, now: SystemTime) -> Result<StatusReport, Error> {
    let _ = (dir, keys, now);
    todo!("licensectl: status::report")
}
