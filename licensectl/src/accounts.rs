//! The accounts directory and the license files in it (license-protocol.md, "Files").
//!
//! Owns: file names, the exclusive lock for activate/sync/deactivate, atomic writes (temp file in the
//! same directory, fsync, rename, fsync the directory), `device.uuid`, the `activation.json` record.
//! Must not: talk to the network.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::Error;

pub const DEFAULT_ACCOUNTS_DIR: &str = "/var/lib/privitty";
pub const LICENSE_FILE: &str = "privitty.lic";
pub const DEVICE_UUID_FILE: &str = "device.uuid";
pub const LICENSE_SERVER_FILE: &str = "license_server.txt";
pub const ACTIVATION_FILE: &str = "activation.json";
pub const LOCK_FILE: &str = ".privitty-license.lock";

/// Small metadata files are never legitimately larger than this.
pub(crate) const MAX_META_BYTES: u64 = 1024 * 1024;

/// An accounts directory. Cheap to clone; opening it does no I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountsDir {
    path: PathBuf,
}

/// `activation.json`'s `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationState {
    Active,
    Deactivated,
    Revoked,
}

impl ActivationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationState::Active => "active",
            ActivationState::Deactivated => "deactivated",
            ActivationState::Revoked => "revoked",
        }
    }
}

/// `activation.json`, the commit record of an activation. Times ending in `_at` are RFC 3339 text;
/// `high_water` and `lic_iat` are unix seconds. Unknown fields are kept when the file is rewritten.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub activation_id: String,
    pub device_secret: String,
    pub state: ActivationState,
    #[serde(default)]
    pub lic_jti: Option<String>,
    #[serde(default)]
    pub lic_iat: Option<i64>,
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub high_water: i64,
    /// Extension: counts the verified resets of `high_water` (activate, sync). A process that
    /// loaded the license before the latest reset holds readings from before it and must not
    /// write them back (see [`crate::LoadedLicense::persist_high_water`]).
    #[serde(default)]
    pub high_water_epoch: u64,
    #[serde(default)]
    pub last_sync_ok_at: Option<String>,
    #[serde(default)]
    pub last_sync_error: Option<String>,
    #[serde(default)]
    pub activated_at: Option<String>,
    #[serde(default)]
    pub deactivated_at: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("activation_id", &self.activation_id)
            .field("device_secret", &"(redacted)")
            .field("state", &self.state)
            .field("lic_jti", &self.lic_jti)
            .field("lic_iat", &self.lic_iat)
            .field("seq", &self.seq)
            .field("high_water", &self.high_water)
            .field("high_water_epoch", &self.high_water_epoch)
            .finish_non_exhaustive()
    }
}

/// The exclusive directory lock; released on drop.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

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

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads `device.uuid` (None when absent).
    pub fn device_uuid(&self) -> Result<Option<String>, Error> {
        let path = self.file(DEVICE_UUID_FILE);
        let Some(bytes) = read_optional(&path, 1024)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        match uuid::Uuid::parse_str(&text) {
            Ok(u) if text.len() == 36 => Ok(Some(u.hyphenated().to_string())),
            _ => Err(Error::CorruptFile {
                path,
                problem: "it does not hold a hyphenated UUID".into(),
                remedy: "restore it from a backup (deleting it loses this device's activation)",
            }),
        }
    }

    /// Reads `device.uuid`, creating it (atomically) when absent.
    pub fn ensure_device_uuid(&self) -> Result<String, Error> {
        if let Some(existing) = self.device_uuid()? {
            return Ok(existing);
        }
        let _lock = self.lock_blocking()?;
        self.ensure_device_uuid_locked()
    }

    /// As [`AccountsDir::ensure_device_uuid`], for callers that already hold the lock.
    pub(crate) fn ensure_device_uuid_locked(&self) -> Result<String, Error> {
        if let Some(existing) = self.device_uuid()? {
            return Ok(existing);
        }
        if self.file(ACTIVATION_FILE).exists() {
            // A new identity would silently orphan the seat the activation holds.
            return Err(Error::MissingFile {
                path: self.file(DEVICE_UUID_FILE),
                remedy: "the activation in activation.json depends on it: restore it from a backup (or move activation.json away to start over as a new device)",
            });
        }
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        self.write_atomic(DEVICE_UUID_FILE, format!("{id}\n").as_bytes(), 0o644)?;
        tracing::info!(device_uuid = %id, dir = %self.path.display(), "created device identity");
        Ok(id)
    }

    /// Reads `activation.json` (None when absent; corrupt content is an error).
    pub fn activation(&self) -> Result<Option<Activation>, Error> {
        let path = self.file(ACTIVATION_FILE);
        let Some(bytes) = read_optional(&path, MAX_META_BYTES)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::CorruptFile {
                path,
                problem: e.to_string(),
                remedy: "restore it from a backup, or delete it and activate again",
            })
    }

    /// Writes `activation.json` atomically, mode 0600. Caller holds the lock.
    pub fn write_activation(&self, activation: &Activation) -> Result<(), Error> {
        let mut json = serde_json::to_vec_pretty(activation).expect("activation serializes");
        json.push(b'\n');
        self.write_atomic(ACTIVATION_FILE, &json, 0o600)
    }

    /// Reads `license_server.txt` as text (None when absent).
    pub fn license_server(&self) -> Result<Option<String>, Error> {
        Ok(read_optional(&self.file(LICENSE_SERVER_FILE), 4096)?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string()))
    }

    /// Reads `privitty.lic` without following a symlink. `Ok(None)` when absent;
    /// `Ok(Some(Err(())))` when it is a symlink, not a regular file, or larger than 64 KiB.
    pub fn read_license(&self) -> Result<Option<Result<Vec<u8>, ()>>, Error> {
        let path = self.license_path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::read(path, e)),
        };
        if !meta.file_type().is_file() {
            return Ok(Some(Err(())));
        }
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // ELOOP: replaced by a symlink between the two calls.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
                return Ok(Some(Err(())));
            }
            Err(e) => return Err(Error::read(path, e)),
        };
        let limit = crate::jwt::MAX_LICENSE_BYTES as u64;
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::read(&path, e))?;
        if bytes.len() as u64 > limit {
            return Ok(Some(Err(())));
        }
        Ok(Some(Ok(bytes)))
    }

    /// Takes the exclusive lock, blocking until it is free. Blocks the thread: async callers use
    /// [`AccountsDir::lock`].
    pub fn lock_blocking(&self) -> Result<DirLock, Error> {
        let file = self.open_lock_file()?;
        file.lock()
            .map_err(|e| Error::write(self.file(LOCK_FILE), e))?;
        Ok(DirLock { _file: file })
    }

    /// Takes the exclusive lock without blocking the async runtime.
    pub async fn lock(&self) -> Result<DirLock, Error> {
        let file = self.open_lock_file()?;
        match file.try_lock() {
            Ok(()) => return Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::write(self.file(LOCK_FILE), e));
            }
        }
        tracing::debug!(dir = %self.path.display(), "waiting for another license operation to finish");
        let path = self.file(LOCK_FILE);
        tokio::task::spawn_blocking(move || file.lock().map(|()| DirLock { _file: file }))
            .await
            .map_err(|e| Error::write(&path, std::io::Error::other(e)))?
            .map_err(|e| Error::write(path, e))
    }

    /// Opens the lock file without following a symlink, and gives it the directory's owner only
    /// when this call created it: the data volume belongs to the service user, who could plant a
    /// link to a root-owned file for a root `docker exec` to open and chown.
    fn open_lock_file(&self) -> Result<File, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.file(LOCK_FILE);
        let open = |write: bool, create_new: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .create_new(create_new)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&path)
        };
        let refuse = |e: std::io::Error| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                Error::CorruptFile {
                    path: path.clone(),
                    problem: "it is a symlink, which is never followed".into(),
                    remedy: "remove it (it is recreated as needed) and check who can write to the accounts directory",
                }
            } else {
                Error::write(&path, e)
            }
        };
        match open(true, true) {
            Ok(file) => {
                match_directory_owner(&self.path, &file).map_err(|e| Error::write(&path, e))?;
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(refuse(e)),
        }
        match open(true, false) {
            Ok(file) => Ok(file),
            // flock works on a read-only descriptor too (a lock file created by another user).
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                open(false, false).map_err(refuse)
            }
            Err(e) => Err(refuse(e)),
        }
    }

    /// Creates the directory (mode 0700) when it does not exist yet; used by `activate` only.
    pub fn create(&self) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|e| Error::write(&self.path, e))
    }

    /// Replaces `name` atomically: temp file in the same directory, write, fsync, chmod, rename,
    /// fsync the directory. Readers see the old or the new content, never a mix.
    pub fn write_atomic(&self, name: &str, content: &[u8], mode: u32) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        let target = self.file(name);
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempfile_in(&self.path)
            .map_err(|e| Error::write(&target, e))?;
        match_directory_owner(&self.path, tmp.as_file()).map_err(|e| Error::write(&target, e))?;
        tmp.write_all(content)
            .map_err(|e| Error::write(&target, e))?;
        // The umask may have narrowed the creation mode; set it exactly.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::write(&target, e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::write(&target, e))?;
        tmp.persist(&target)
            .map_err(|e| Error::write(&target, e.error))?;
        self.sync_dir()
    }

    /// Removes `name` (absent is fine) and fsyncs the directory.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        match std::fs::remove_file(self.file(name)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::write(self.file(name), e)),
        }
    }

    fn sync_dir(&self) -> Result<(), Error> {
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::write(&self.path, e))
    }

    /// Persists a high-water mark into `activation.json` (when it exists) if it is newer than the
    /// stored one, but never beyond the present clock. Takes the lock (blocking: call it from
    /// `spawn_blocking` in async code). Called by long-running processes at most every 15 min and
    /// at shutdown.
    ///
    /// A bare value cannot tell a reading taken before the latest verified sync (which reset the
    /// mark to the server's time) from one taken after it, so a value ahead of the clock is capped:
    /// otherwise a generation that saw a wrong clock would undo the reset at its next write-back.
    /// [`crate::LoadedLicense::persist_high_water`] knows when its readings were taken and keeps
    /// them in full; prefer it.
    pub fn persist_high_water(&self, high_water: i64) -> Result<(), Error> {
        let high_water = high_water.min(unix_secs(SystemTime::now()));
        if !self.file(ACTIVATION_FILE).exists() {
            return Ok(());
        }
        let _lock = self.lock_blocking()?;
        let Some(mut activation) = self.activation()? else {
            return Ok(());
        };
        if high_water <= activation.high_water {
            return Ok(());
        }
        activation.high_water = high_water;
        self.write_activation(&activation)
    }
}

/// When run as root (`docker exec` default) on a directory owned by the service user, new files
/// get the directory's owner, so the daemon can still read the 0600 files and take the lock.
fn match_directory_owner(dir: &Path, file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let dir_meta = std::fs::metadata(dir)?;
    let file_meta = file.metadata()?;
    if dir_meta.uid() == 0 || (file_meta.uid(), file_meta.gid()) == (dir_meta.uid(), dir_meta.gid())
    {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(dir_meta.uid()), Some(dir_meta.gid()))
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW: a symlink planted on the data volume must not redirect the read.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

/// Reads a whole small file; `None` when it does not exist. Larger than `limit` → corrupt.
pub(crate) fn read_optional(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::read(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::read(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::CorruptFile {
            path: path.to_path_buf(),
            problem: format!("it is larger than {limit} bytes"),
            remedy: "restore it from a backup",
        });
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> Activation {
        Activation {
            activation_id: "act-1".into(),
            device_secret: "very-secret".into(),
            state: ActivationState::Active,
            lic_jti: Some("j".into()),
            lic_iat: Some(10),
            seq: 1,
            high_water: 100,
            high_water_epoch: 0,
            last_sync_ok_at: None,
            last_sync_error: None,
            activated_at: Some(rfc3339_unix(100)),
            deactivated_at: None,
            extra: Default::default(),
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_writes_leave_no_temp_files_and_set_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        dir.write_activation(&sample()).unwrap();
        dir.write_atomic(LICENSE_SERVER_FILE, b"https://h/v1/license/T\n", 0o600)
            .unwrap();
        dir.write_atomic(LICENSE_FILE, b"x.y.z", 0o644).unwrap();
        dir.write_atomic(LICENSE_FILE, b"x.y.z2", 0o644).unwrap();
        assert_eq!(
            entries(tmp.path()),
            vec![ACTIVATION_FILE, LICENSE_SERVER_FILE, LICENSE_FILE]
        );
        for (name, mode) in [
            (ACTIVATION_FILE, 0o600),
            (LICENSE_SERVER_FILE, 0o600),
            (LICENSE_FILE, 0o644),
        ] {
            let m = std::fs::metadata(tmp.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(m, mode, "{name}");
        }
        assert_eq!(dir.activation().unwrap().unwrap(), sample());
        assert_eq!(std::fs::read(dir.license_path()).unwrap(), b"x.y.z2");
    }

    #[test]
    fn activation_keeps_unknown_fields_and_hides_the_secret_in_debug() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        let mut a = sample();
        a.extra.insert("future".into(), serde_json::json!({"x":1}));
        dir.write_activation(&a).unwrap();
        assert_eq!(
            dir.activation().unwrap().unwrap().extra["future"],
            serde_json::json!({"x":1})
        );
        assert!(!format!("{a:?}").contains("very-secret"));
        std::fs::write(tmp.path().join(ACTIVATION_FILE), "{not json").unwrap();
        let e = dir.activation().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::LocalFiles);
        assert!(e.to_string().contains(ACTIVATION_FILE), "{e}");
    }

    #[test]
    fn device_uuid_is_created_once_and_never_while_activated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        assert_eq!(dir.device_uuid().unwrap(), None);
        let id = dir.ensure_device_uuid().unwrap();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        assert_eq!(id, id.to_lowercase());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(DEVICE_UUID_FILE)).unwrap(),
            format!("{id}\n")
        );
        assert_eq!(dir.ensure_device_uuid().unwrap(), id);
        dir.write_activation(&sample()).unwrap();
        std::fs::remove_file(tmp.path().join(DEVICE_UUID_FILE)).unwrap();
        assert!(dir.ensure_device_uuid().is_err());
        std::fs::write(tmp.path().join(DEVICE_UUID_FILE), "garbage\n").unwrap();
        assert!(dir.device_uuid().is_err());
    }

    #[test]
    fn files_written_as_root_get_the_directory_owner() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(tmp.path(), Some(1000), Some(1000)).unwrap();
        let dir = AccountsDir::new(tmp.path());
        dir.write_activation(&sample()).unwrap();
        let _lock = dir.lock_blocking().unwrap();
        for name in [ACTIVATION_FILE, LOCK_FILE] {
            let m = std::fs::metadata(tmp.path().join(name)).unwrap();
            assert_eq!((m.uid(), m.gid()), (1000, 1000), "{name}");
        }
    }

    #[test]
    fn high_water_only_moves_forward() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        dir.persist_high_water(500).unwrap();
        assert!(
            !tmp.path().join(ACTIVATION_FILE).exists(),
            "no activation.json is created"
        );
        dir.write_activation(&sample()).unwrap();
        dir.persist_high_water(500).unwrap();
        dir.persist_high_water(400).unwrap();
        assert_eq!(dir.activation().unwrap().unwrap().high_water, 500);
    }

    #[test]
    fn a_planted_lock_symlink_is_neither_followed_nor_chowned() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "root's file\n").unwrap();
        let accounts = tmp.path().join("accounts");
        std::fs::create_dir(&accounts).unwrap();
        let dir = AccountsDir::new(&accounts);
        std::os::unix::fs::symlink(&victim, dir.file(LOCK_FILE)).unwrap();
        let before = std::fs::metadata(&victim).unwrap();
        if nix::unistd::geteuid().is_root() {
            // The data volume belongs to the service user, who could plant the link.
            std::os::unix::fs::chown(&accounts, Some(1000), Some(1000)).unwrap();
        }
        let e = dir.lock_blocking().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::LocalFiles);
        assert!(e.to_string().contains(LOCK_FILE), "{e}");
        assert!(e.to_string().contains("symlink"), "{e}");
        let after = std::fs::metadata(&victim).unwrap();
        assert_eq!(
            (after.uid(), after.gid()),
            (before.uid(), before.gid()),
            "the link target changed owner"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's file\n");
    }

    #[test]
    fn oversized_side_files_are_refused_not_read_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        // Valid JSON, padded past any sane size: read whole, it would parse.
        let mut big = b"{\"pending\":[]}".to_vec();
        big.resize(2 * MAX_META_BYTES as usize, b' ');
        std::fs::write(dir.file(crate::usage::USAGE_FILE), &big).unwrap();
        let e = crate::usage::UsageStore::read(&dir).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::LocalFiles);
        assert!(e.to_string().contains(crate::usage::USAGE_FILE), "{e}");
        let state = format!(
            "{{\"last_sync_error\":\"x\"}}{}",
            " ".repeat(2 * MAX_META_BYTES as usize)
        );
        std::fs::write(dir.file(crate::ops::SYNC_STATE_FILE), state).unwrap();
        assert!(crate::ops::read_sync_state(&dir).is_none());
    }

    #[test]
    fn license_symlinks_and_oversized_files_are_flagged() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        assert_eq!(dir.read_license().unwrap(), None);
        std::fs::write(tmp.path().join("real"), "a.b.c").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), dir.license_path()).unwrap();
        assert_eq!(dir.read_license().unwrap(), Some(Err(())));
        std::fs::remove_file(dir.license_path()).unwrap();
        std::fs::write(
            dir.license_path(),
            vec![b'a'; crate::jwt::MAX_LICENSE_BYTES + 1],
        )
        .unwrap();
        assert_eq!(dir.read_license().unwrap(), Some(Err(())));
        std::fs::write(dir.license_path(), "a.b.c").unwrap();
        assert_eq!(dir.read_license().unwrap(), Some(Ok(b"a.b.c".to_vec())));
    }
}
