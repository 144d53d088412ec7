//! The accounts directory and the license files in it (license-protocol.md, "Files").
//!
//! Owns: the exclusive lock for activate/sync/deactivate, atomic writes (temp file in the same
//! directory, fsync, rename, fsync the directory), bounded reads, `device.uuid`, the
//! `activation.json` and `sync_state.json` records, and moving a withdrawn license aside
//! (`privitty.lic.revoked`). The file names themselves are in [`crate::vocab`] (re-exported here).
//! Must not: talk to the network.
//!
//! Trust boundary: everything in the accounts directory is untrusted input (it is a data volume that
//! other processes and users can write). Every file is opened through [`open_in_dir`]: never
//! through a symlink (`O_NOFOLLOW`), never blocking in `open` (`O_NONBLOCK`: a FIFO planted under a
//! license file name would otherwise stall whoever holds the license lock), then checked to be a
//! regular file (`fstat`) and read up to a size cap, so no file in the volume can redirect, hang or
//! exhaust a reader.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::vocab::MAX_LICENSE_BYTES;
use privitty_base::env;

pub use crate::vocab::{
    ACTIVATION_FILE, DEFAULT_ACCOUNTS_DIR, DEVICE_UUID_FILE, LICENSE_FILE, LICENSE_SERVER_FILE,
    LOCK_FILE, MAX_META_BYTES, REVOKED_LICENSE_FILE, SYNC_STATE_FILE, rfc3339, rfc3339_unix,
    unix_secs,
};

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

/// `sync_state.json`: the last transient sync failure (cleared by a successful sync), and the last
/// definitive refusal of an activation (cleared by a successful activation), e.g. the seat limit
/// of a device beyond a license's seats. Informational: `status` shows it, nothing decides on it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncState {
    pub last_sync_error: Option<String>,
    pub last_sync_error_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activation_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activation_error_at: Option<String>,
}

/// The exclusive directory lock; released on drop.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl AccountsDir {
    pub fn new(path: impl Into<PathBuf>) -> AccountsDir {
        AccountsDir { path: path.into() }
    }

    /// `--accounts`, else `$PRIVITTY_ACCOUNTS`, else `/var/lib/privitty`.
    pub fn from_env_or_default() -> AccountsDir {
        match std::env::var_os(env::ACCOUNTS) {
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
        if std::fs::symlink_metadata(self.file(ACTIVATION_FILE)).is_ok() {
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

    /// Reads `activation.json` (None when absent). Content that does not parse is
    /// [`Error::CorruptFile`]; a symlink, FIFO, directory, … in its place is
    /// [`Error::NotRegularFile`].
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

    /// Reads `privitty.lic` (never through a symlink, never blocking). `Ok(None)` when absent;
    /// `Ok(Some(Err(())))` when it is a symlink, not a regular file, or larger than 64 KiB.
    pub fn read_license(&self) -> Result<Option<Result<Vec<u8>, ()>>, Error> {
        let path = self.license_path();
        match read_bounded(&path, MAX_LICENSE_BYTES as u64) {
            Ok(Found::Absent) => Ok(None),
            Ok(Found::Bytes(bytes)) => Ok(Some(Ok(bytes))),
            Ok(Found::NotRegular(_) | Found::TooLarge) => Ok(Some(Err(()))),
            Err(e) => Err(Error::read(path, e)),
        }
    }

    /// Moves `privitty.lic` aside to `privitty.lic.revoked` (replacing an older one) and fsyncs the
    /// directory. Called under the lock when the device sees its activation withdrawn, *before*
    /// `activation.json` records the new state: a crash in between leaves no license in place and
    /// the activation still `active` (the next sync learns the withdrawal again), never a recorded
    /// withdrawal next to a license that an older `activation.json` put back would revive.
    /// Returns whether a license was moved.
    pub fn retire_license(&self) -> Result<bool, Error> {
        let from = self.license_path();
        match std::fs::symlink_metadata(&from) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::write(from, e)),
        }
        if let Err(e) = std::fs::rename(&from, self.file(REVOKED_LICENSE_FILE)) {
            // Something planted as privitty.lic.revoked (a directory, say) must not keep the
            // license in its place: remove it instead. Anything but a regular file under the
            // license name never verifies, so it can stay.
            tracing::warn!(
                error = %e,
                file = %self.file(REVOKED_LICENSE_FILE).display(),
                "cannot keep the withdrawn license for inspection; removing it instead"
            );
            let regular = std::fs::symlink_metadata(&from).is_ok_and(|m| m.file_type().is_file());
            if regular {
                std::fs::remove_file(&from).map_err(|e| Error::write(&from, e))?;
            }
        }
        self.sync_dir()?;
        Ok(true)
    }

    /// Takes the exclusive lock, blocking until it is free. Blocks the thread: async callers use
    /// [`AccountsDir::lock`].
    pub fn lock_blocking(&self) -> Result<DirLock, Error> {
        let file = self.open_lock_file()?;
        file.lock()
            .map_err(|e| Error::write(self.file(LOCK_FILE), e))?;
        Ok(DirLock { _file: file })
    }

    /// Takes the exclusive lock without blocking the async runtime: the lock file is opened and
    /// waited for on a blocking thread.
    pub async fn lock(&self) -> Result<DirLock, Error> {
        let dir = self.clone();
        let path = self.file(LOCK_FILE);
        tokio::task::spawn_blocking(move || {
            let file = dir.open_lock_file()?;
            match file.try_lock() {
                Ok(()) => return Ok(DirLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::write(dir.file(LOCK_FILE), e));
                }
            }
            tracing::debug!(dir = %dir.path.display(), "waiting for another license operation to finish");
            file.lock()
                .map(|()| DirLock { _file: file })
                .map_err(|e| Error::write(dir.file(LOCK_FILE), e))
        })
        .await
        .map_err(|e| Error::write(&path, std::io::Error::other(e)))?
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
                .custom_flags(OPEN_FLAGS)
                .open(&path)
        };
        let refuse = |e: std::io::Error| match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => Error::CorruptFile {
                path: path.clone(),
                problem: "it is a symlink, which is never followed".into(),
                remedy: "remove it (it is recreated as needed) and check who can write to the accounts directory",
            },
            Some(code) if code == nix::errno::Errno::EISDIR as i32 => Error::NotRegularFile {
                path: path.clone(),
                kind: "a directory",
            },
            Some(code) if code == nix::errno::Errno::ENXIO as i32 => Error::NotRegularFile {
                path: path.clone(),
                kind: "a socket",
            },
            _ => Error::write(&path, e),
        };
        let file = match open(true, true) {
            Ok(file) => {
                match_directory_owner(&self.path, &file).map_err(|e| Error::write(&path, e))?;
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match open(true, false) {
                Ok(file) => file,
                // flock works on a read-only descriptor too (a lock file created by another user).
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    open(false, false).map_err(refuse)?
                }
                Err(e) => return Err(refuse(e)),
            },
            Err(e) => return Err(refuse(e)),
        };
        // A FIFO or device under the lock file's name opens without blocking; it is still not a
        // lock file.
        let meta = file.metadata().map_err(|e| Error::write(&path, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::NotRegularFile {
                path,
                kind: kind_of(meta.file_type()),
            });
        }
        Ok(file)
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
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NONBLOCK).bits())
            .open(&self.path)
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

/// The flags of every open of a file in the accounts directory: a symlink is never followed (it
/// could point anywhere), a FIFO never blocks the open (it would stall whoever holds the license
/// lock), and a terminal device never becomes the controlling terminal.
const OPEN_FLAGS: i32 = nix::fcntl::OFlag::O_NOFOLLOW.bits()
    | nix::fcntl::OFlag::O_NONBLOCK.bits()
    | nix::fcntl::OFlag::O_NOCTTY.bits();

/// Opens a file of the accounts directory for reading with [`OPEN_FLAGS`].
pub(crate) fn open_in_dir(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OPEN_FLAGS)
        .open(path)
}

/// What a bounded read of a file in the accounts directory found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Absent,
    /// A symlink, FIFO, socket, device or directory under the file's name; never read.
    NotRegular(&'static str),
    /// Larger than the cap; not read beyond it.
    TooLarge,
    Bytes(Vec<u8>),
}

/// Reads a whole small file without following a symlink or blocking, after checking (`fstat` on
/// the open descriptor, so nothing can be swapped in between) that it is a regular file of at most
/// `limit` bytes; reading stops at the cap even if the file grows meanwhile.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Found> {
    let file = match open_in_dir(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return Ok(Found::NotRegular("a symlink"));
        }
        // open(2) on a UNIX socket.
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) => {
            return Ok(Found::NotRegular("a socket"));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(Found::NotRegular(kind_of(meta.file_type())));
    }
    if meta.len() > limit {
        return Ok(Found::TooLarge);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Ok(Found::TooLarge);
    }
    Ok(Found::Bytes(bytes))
}

/// How a file type that is not a regular file is named in messages.
fn kind_of(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Reads a whole small file (see [`read_bounded`]); `None` when it does not exist. Not a regular
/// file → [`Error::NotRegularFile`]; larger than `limit` → [`Error::CorruptFile`].
pub(crate) fn read_optional(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, Error> {
    match read_bounded(path, limit) {
        Ok(Found::Absent) => Ok(None),
        Ok(Found::Bytes(bytes)) => Ok(Some(bytes)),
        Ok(Found::NotRegular(kind)) => Err(Error::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        }),
        Ok(Found::TooLarge) => Err(Error::CorruptFile {
            path: path.to_path_buf(),
            problem: format!("it is larger than {limit} bytes"),
            remedy: "restore it from a backup",
        }),
        Err(e) => Err(Error::read(path, e)),
    }
}

/// Reads `sync_state.json`; anything unreadable counts as absent (it is informational only).
pub fn read_sync_state(dir: &AccountsDir) -> Option<SyncState> {
    let path = dir.file(SYNC_STATE_FILE);
    let bytes = read_optional(&path, MAX_META_BYTES).ok()??;
    serde_json::from_slice(&bytes).ok()
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
    fn unknown_numbers_come_back_unchanged_after_a_rewrite() {
        // Numbers the server put in fields this version does not know are written back as the
        // same value: a float far from an integer used to come back one unit in the last
        // place off after parse → write → parse.
        let text = r#"{"activation_id":"a","device_secret":"s","state":"active","seq":1,
            "high_water":1,"high_water_epoch":0,
            "future":{"x":[1,233333333333333333333333333333333.5,2.2250738585072011e-308,0.1]}}"#;
        let a: Activation = serde_json::from_str(text).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        dir.write_activation(&a).unwrap();
        let again = dir.activation().unwrap().unwrap();
        assert_eq!(again, a);
        assert_eq!(dir.activation().unwrap().unwrap(), again);
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
