//! The accounts directory and the license files in it (license-protocol.md, "Files").
//!
//! Owns: file names, the exclusive lock for activate/sync/deactivate, atomic writes (temp file in the
//! same directory, fsync, rename, fsync the directory), `device.uuid`. Must not: talk to the network.

use std::path::{Path, PathBuf};

use crate::Error;

pub const DEFAULT_ACCOUNTS_DIR: &str = "/var/lib/privitty";
pub const LICENSE_FILE: &str = "privitty.lic";
pub const DEVICE_UUID_FILE: &str = "device.uuid";
pub const LICENSE_SERVER_FILE: &str = "license_server.txt";
pub const ACTIVATION_FILE: &str = "activation.json";
pub const LOCK_FILE: &str = ".privitty-license.lock";

/// An accounts directory. Cheap to clone; opening it does no I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountsDir {
    path: PathBuf,
}

impl AccountsDir {
    pub fn new(path: impl Into<PathBuf>) -> AccountsDir {
        AccountsDir { path: path.into() }
    }

    /// `--accounts`, else `$PRIVITTY_ACCOUNTS`, else `/var/lib/privitty`.
    pub fn from_env_or_default() -> AccountsDir {
        match std::env::var_os(crate::env::ACCOUNTS) {
            Some(p) if !p.is_empty() => AccountsDir::new(p),
            _ => AccountsDir::new(DEFAULT_ACCOUNTS_DIR),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn license_path(&self) -> PathBuf {
        self.path.join(LICENSE_FILE)
    }

    /// Reads `device.uuid` (None when absent).
    pub fn device_uuid(&self) -> Result<Option<String>, Error> {
        todo!("licensectl: AccountsDir::device_uuid")
    }

    /// Reads `device.uuid`, creating it (atomically) when absent.
    pub fn ensure_device_uuid(&self) -> Result<String, Error> {
        todo!("licensectl: AccountsDir::ensure_device_uuid")
    }

    /// Persists a high-water mark into `activation.json` (when it exists) if it is newer than the
    /// stored one. Takes the lock. Called by long-running processes at most every 15 min and at shutdown.
    pub fn persist_high_water(&self, high_water: i64) -> Result<(), Error> {
        let _ = high_water;
        todo!("licensectl: AccountsDir::persist_high_water")
    }
}
