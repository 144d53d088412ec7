//! The shared vocabulary of the license rules: the status words and `no_license` reasons, the names
//! of the license files in the accounts directory, the size caps, and the time helpers (unix
//! seconds, RFC 3339 text).
//!
//! Owns: words and limits that several layers need, so none of them has to reach up to another
//! for a name. Must not: import anything from this crate (it is the bottom layer), do I/O, or
//! hold rules: what a word means is decided by the module that uses it (`status` decides when a
//! license is `expired`, `jwt` which check yields `corrupt`).

use std::time::SystemTime;

use serde::Serialize;

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
    /// The license names an activation (`act`), and `activation.json` is absent, unreadable, not a
    /// regular file, or not an activation record at all.
    ActivationMissing,
    /// `activation.json` holds another activation than the license names (or exists beside a
    /// license without `act`), or it recorded a newer license than `privitty.lic`.
    ActivationMismatch,
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
            Reason::ActivationMissing => "activation_missing",
            Reason::ActivationMismatch => "activation_mismatch",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accounts directory when neither `--accounts` nor `PRIVITTY_ACCOUNTS` names one.
pub const DEFAULT_ACCOUNTS_DIR: &str = "/var/lib/privitty";
pub const LICENSE_FILE: &str = "privitty.lic";
/// Where `privitty.lic` goes when the device sees its activation withdrawn (revoked, deactivated):
/// kept for inspection, never read by the status rules.
pub const REVOKED_LICENSE_FILE: &str = "privitty.lic.revoked";
pub const DEVICE_UUID_FILE: &str = "device.uuid";
pub const LICENSE_SERVER_FILE: &str = "license_server.txt";
pub const ACTIVATION_FILE: &str = "activation.json";
pub const LOCK_FILE: &str = ".privitty-license.lock";
/// Usage counts flushed by the daemon and reports not yet acknowledged.
pub const USAGE_FILE: &str = "usage.json";
/// Transient sync failures are recorded here, never in the license files.
pub const SYNC_STATE_FILE: &str = "sync_state.json";

/// Largest `privitty.lic` (and JWT in a response) accepted.
pub const MAX_LICENSE_BYTES: usize = 64 * 1024;
/// Small metadata files are never legitimately larger than this.
pub const MAX_META_BYTES: u64 = 1024 * 1024;

/// The last second RFC 3339 text (four-digit years) can show: 9999-12-31T23:59:59Z.
const MAX_RFC3339_SECS: i64 = 253_402_300_799;

/// RFC 3339 (seconds) text for a time.
pub fn rfc3339(t: SystemTime) -> String {
    rfc3339_unix(unix_secs(t))
}

/// RFC 3339 text for unix seconds, clamped to 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z: a
/// license may say "never" with a huge `exp`, and the formatter cannot show times outside that range.
pub fn rfc3339_unix(secs: i64) -> String {
    let secs = secs.clamp(0, MAX_RFC3339_SECS) as u64;
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// Unix seconds of a time (negative before 1970).
pub fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
