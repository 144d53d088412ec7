//! The operations `activate`, `sync`, `deactivate`: protocol calls plus the file commits, under the
//! directory lock. A transient error never changes local files.

use crate::{AccountsDir, DeliveryUrl, Error, TrustedKeys};
use crate::status::LicenseIdentity;

#[derive(Clone, Debug)]
pub struct ActivateRequest {
    /// `PRIVITTY_PROFILE`, else the hostname.
    pub device_name: String,
    pub client_version: String,
    pub platform: String,
}

impl ActivateRequest {
    /// Device name from `PRIVITTY_PROFILE`, else the hostname; this crate's version; `linux-<arch>`.
    pub fn from_env() -> ActivateRequest {
        todo!("licensectl: ActivateRequest::from_env")
    }
}

#[derive(Clone, Debug)]
pub struct Activated {
    pub activation_id: String,
    /// true for `201` (a new seat), false for `200` (this device already held one).
    pub new_seat: bool,
    pub license: LicenseIdentity,
}

#[derive(Clone, Debug)]
pub struct Synced {
    /// true when the server sent a license different from the one on disk (and it was stored).
    pub license_changed: bool,
    pub license: LicenseIdentity,
    pub acked_reports: usize,
}

pub async fn activate(dir: &AccountsDir, url: &DeliveryUrl, keys: &TrustedKeys, req: &ActivateRequest) -> Result<Activated, Error> {
    let _ = (dir, url, keys, req);
    todo!("licensectl: activate")
}

pub async fn sync(dir: &AccountsDir, keys: &TrustedKeys) -> Result<Synced, Error> {
    let _ = (dir, keys);
    todo!("licensectl: sync")
}

/// Releases the seat on the server (unless `local_only`) and marks `activation.json` deactivated;
/// `privitty.lic` is kept for inspection.
pub async fn deactivate(dir: &AccountsDir, local_only: bool) -> Result<(), Error> {
    let _ = (dir, local_only);
    todo!("licensectl: deactivate")
}
