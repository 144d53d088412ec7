//! The key store under `<accounts>/privitty/`: the device master key and one record per
//! encrypted file holding its wrapped (encrypted) file key, policy and revocation state.
//!
//! Owns every byte under that directory. It must never write a file key in clear, never let a
//! key reach a log line, result or error, and never replace a file in place: every write is a
//! temp file in the same directory, fsync, rename, fsync of the directory.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::PrivittyError;
use super::format::FileKey;
use super::meta::FileMeta;

/// Directory of the store inside the accounts directory.
pub const STORE_DIR: &str = "privitty";
/// The device master key: 32 random bytes, mode 0600, created once.
pub const MASTER_KEY_FILE: &str = "master.key";
/// One `<file_id>.json` record per encrypted file.
pub const FILES_DIR: &str = "files";
/// Serialises read-modify-write of records across threads and processes (an old and a new
/// gateway generation may overlap for an instant).
pub const LOCK_FILE: &str = "lock";
/// Record layout version.
pub const RECORD_VERSION: u32 = 1;

const MASTER_KEY_LEN: usize = 32;
const WRAP_NONCE_LEN: usize = 24;
/// Domain separation for wrapped keys; the file id and header digest follow it in the AAD.
const WRAP_AAD_PREFIX: &[u8] = b"privitty-edge/prv/v1/file-key";

/// What the store knows about one encrypted file (the JSON of `files/<file_id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub version: u32,
    /// The description from the file's header. Flattened: its fields are keys of the record
    /// itself, as they were before it was a struct of its own (`record_format_tests`).
    #[serde(flatten)]
    pub meta: FileMeta,
    pub encrypted_path: PathBuf,
    /// Hex SHA-256 of the exact `.prv` header this key belongs to.
    pub header_sha256: String,
    /// Hex of `nonce (24) || XChaCha20-Poly1305(master key, file key) (48)`; `None` once the
    /// key was destroyed by revocation.
    pub wrapped_key: Option<String>,
    /// Group members whose access was revoked while the key stays for the others.
    #[serde(default)]
    pub revoked_peers: Vec<u32>,
    /// Unix seconds of the first revocation.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// The opened store. Holds the master key only as a cipher instance.
pub struct Store {
    dir: PathBuf,
    master: XChaCha20Poly1305,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("master", &"redacted")
            .finish()
    }
}

/// Holds the store's exclusive lock until dropped.
#[derive(Debug)]
pub struct StoreLock(File);

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Store {
    /// Opens `<accounts_dir>/privitty/`, creating it (0700) and the master key (0600) if needed.
    pub fn open(accounts_dir: &Path) -> Result<Store, PrivittyError> {
        let dir = accounts_dir.join(STORE_DIR);
        let files = dir.join(FILES_DIR);
        for d in [&dir, &files] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|e| {
                    PrivittyError::store(d, format!("cannot create the directory: {e}"))
                })?;
            let meta =
                fs::symlink_metadata(d).map_err(|e| PrivittyError::store(d, e.to_string()))?;
            if !meta.is_dir() {
                return Err(PrivittyError::store(d, "is not a directory; move it away"));
            }
        }
        let key = load_or_create_master_key(&dir)?;
        Ok(Store {
            master: XChaCha20Poly1305::new((&key).into()),
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, file_id: Uuid) -> PathBuf {
        self.dir
            .join(FILES_DIR)
            .join(format!("{}.json", file_id.as_hyphenated()))
    }

    /// Takes the exclusive store lock (blocking) for a read-modify-write.
    pub fn lock(&self) -> Result<StoreLock, PrivittyError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| PrivittyError::store(&path, format!("cannot open the lock file: {e}")))?;
        file.lock()
            .map_err(|e| PrivittyError::store(&path, format!("cannot lock: {e}")))?;
        Ok(StoreLock(file))
    }

    /// Encrypts `key` under the master key, bound to `file_id` and the header digest.
    pub fn wrap(&self, file_id: Uuid, header_digest: &[u8; 32], key: &FileKey) -> String {
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let aad = wrap_aad(file_id, header_digest);
        let sealed = self
            .master
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &key.0,
                    aad: &aad,
                },
            )
            .expect("sealing 32 bytes in memory cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        hex::encode(out)
    }

    /// Recovers the file key of `record`; `Revoked` when it was destroyed.
    pub fn unwrap(&self, record: &FileRecord) -> Result<FileKey, PrivittyError> {
        let file_id = record.meta.file_id;
        let path = self.record_path(file_id);
        let Some(wrapped) = &record.wrapped_key else {
            return Err(PrivittyError::Revoked { file_id });
        };
        let bad = |why: &str| PrivittyError::store(&path, why.to_owned());
        let bytes = hex::decode(wrapped).map_err(|_| bad("its wrapped key is not hex"))?;
        let digest = decode_digest(&record.header_sha256)
            .ok_or_else(|| bad("its header digest is not 32 bytes of hex"))?;
        if bytes.len() != WRAP_NONCE_LEN + 32 + 16 {
            return Err(bad("its wrapped key has the wrong length"));
        }
        let (nonce, sealed) = bytes.split_at(WRAP_NONCE_LEN);
        let aad = wrap_aad(file_id, &digest);
        let key = self
            .master
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
            .map_err(|_| bad("its file key does not unwrap with this device's master key (record copied from another device, or master.key replaced)"))?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| bad("its file key has the wrong length"))?;
        Ok(FileKey(key))
    }

    /// Encrypts any small secret under the master key, bound to `aad` (hex of nonce ‖ ciphertext).
    pub fn seal(&self, aad: &[u8], secret: &[u8]) -> String {
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .master
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad })
            .expect("sealing a small secret in memory cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        hex::encode(out)
    }

    /// Opens what [`Store::seal`] made with the same `aad`; `None` when it does not verify.
    pub fn open_sealed(&self, aad: &[u8], sealed: &str) -> Option<Vec<u8>> {
        let bytes = hex::decode(sealed).ok()?;
        if bytes.len() < WRAP_NONCE_LEN + 16 {
            return None;
        }
        let (nonce, ct) = bytes.split_at(WRAP_NONCE_LEN);
        self.master
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
    }

    /// Reads the record of `file_id`; `UnknownFile` when there is none.
    pub fn get(&self, file_id: Uuid) -> Result<FileRecord, PrivittyError> {
        let path = self.record_path(file_id);
        let mut text = String::new();
        match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(mut f) => f
                .read_to_string(&mut text)
                .map_err(|e| PrivittyError::store(&path, format!("cannot read: {e}")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PrivittyError::UnknownFile { file_id });
            }
            Err(e) => return Err(PrivittyError::store(&path, format!("cannot open: {e}"))),
        };
        let record: FileRecord = serde_json::from_str(&text).map_err(|e| {
            PrivittyError::store(
                &path,
                format!("is not a valid record ({e}); restore it from a backup"),
            )
        })?;
        if record.version != RECORD_VERSION || record.meta.file_id != file_id {
            return Err(PrivittyError::store(
                &path,
                "has another version or file id than its name says; restore it from a backup",
            ));
        }
        Ok(record)
    }

    /// Writes a record that must not exist yet.
    pub fn insert(&self, record: &FileRecord) -> Result<(), PrivittyError> {
        self.write(record, false)
    }

    /// Replaces a record; the caller holds [`Store::lock`].
    pub fn update(&self, record: &FileRecord, _lock: &StoreLock) -> Result<(), PrivittyError> {
        self.write(record, true)
    }

    /// Deletes a record (undoing an insert whose `.prv` could not be published).
    pub fn remove(&self, file_id: Uuid) -> Result<(), PrivittyError> {
        let path = self.record_path(file_id);
        fs::remove_file(&path)
            .map_err(|e| PrivittyError::store(&path, format!("cannot remove: {e}")))?;
        sync_dir(&self.dir.join(FILES_DIR))
    }

    fn write(&self, record: &FileRecord, replace: bool) -> Result<(), PrivittyError> {
        let path = self.record_path(record.meta.file_id);
        let json = serde_json::to_vec_pretty(record).expect("a record always serialises");
        write_atomic(&path, &json, replace)
    }
}

fn wrap_aad(file_id: Uuid, header_digest: &[u8; 32]) -> Vec<u8> {
    let mut aad = WRAP_AAD_PREFIX.to_vec();
    aad.extend_from_slice(file_id.as_bytes());
    aad.extend_from_slice(header_digest);
    aad
}

pub fn decode_digest(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

/// Temp file (0600) in the same directory, fsync, rename (or rename-no-replace), fsync the
/// directory: a crash leaves either the old or the new content under `path`, never a torn one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], replace: bool) -> Result<(), PrivittyError> {
    let dir = path.parent().expect("store paths have a parent");
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        PrivittyError::store(path, format!("cannot {what}: {e}"))
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| fail("create a temp file", &e))?;
    tmp.write_all(bytes).map_err(|e| fail("write", &e))?;
    tmp.as_file().sync_all().map_err(|e| fail("fsync", &e))?;
    if replace {
        tmp.persist(path)
            .map_err(|e| fail("rename into place", &e.error))?;
    } else {
        tmp.persist_noclobber(path)
            .map_err(|e| fail("rename into place", &e.error))?;
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), PrivittyError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PrivittyError::store(dir, format!("cannot fsync the directory: {e}")))
}

/// Reads the master key, or creates it once: a racing creator loses the no-replace rename and
/// reads the winner's key, so two processes never end up with different keys.
fn load_or_create_master_key(dir: &Path) -> Result<[u8; MASTER_KEY_LEN], PrivittyError> {
    let path = dir.join(MASTER_KEY_FILE);
    for _ in 0..2 {
        match read_master_key(&path) {
            Ok(key) => return Ok(key),
            Err(None) => {}
            Err(Some(e)) => return Err(e),
        }
        let mut key = [0u8; MASTER_KEY_LEN];
        rand_core::OsRng.fill_bytes(&mut key);
        match write_atomic(&path, &key, false) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created the privitty device master key");
                return Ok(key);
            }
            // Lost a creation race: loop and read the winner's key.
            Err(_) if path.exists() => {}
            Err(e) => return Err(e),
        }
    }
    Err(PrivittyError::store(&path, "cannot be created or read"))
}

/// `Err(None)` = does not exist.
fn read_master_key(path: &Path) -> Result<[u8; MASTER_KEY_LEN], Option<PrivittyError>> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(Some(PrivittyError::store(
                path,
                "is a symbolic link; the master key must be a regular file",
            )));
        }
        Err(e) => {
            return Err(Some(PrivittyError::store(
                path,
                format!("cannot open: {e}"),
            )));
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| Some(PrivittyError::store(path, format!("cannot stat: {e}"))))?;
    if !meta.is_file() {
        return Err(Some(PrivittyError::store(path, "is not a regular file")));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(Some(PrivittyError::store(
            path,
            format!(
                "has mode {:04o}, readable by others; run `chmod 600 {}`",
                meta.mode() & 0o7777,
                path.display()
            ),
        )));
    }
    let mut key = [0u8; MASTER_KEY_LEN];
    let mut extra = [0u8; 1];
    let complete = file.read_exact(&mut key).is_ok() && matches!(file.read(&mut extra), Ok(0));
    if !complete {
        return Err(Some(PrivittyError::store(
            path,
            format!(
                "is {} bytes, expected {MASTER_KEY_LEN}; restore it from a backup (files encrypted with it cannot be read without it)",
                meta.len()
            ),
        )));
    }
    Ok(key)
}

/// Reads a store file of at most `max` bytes without following a symlink; `Ok(None)` when it
/// does not exist.
pub(crate) fn read_capped(path: &Path, max: u64) -> Result<Option<Vec<u8>>, PrivittyError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PrivittyError::store(path, format!("cannot open: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| PrivittyError::store(path, format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(PrivittyError::store(
            path,
            "is not a regular file; move it away",
        ));
    }
    if meta.len() > max {
        return Err(PrivittyError::store(
            path,
            format!(
                "is {} bytes, more than the {max} allowed; restore it from a backup",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PrivittyError::store(path, format!("cannot read: {e}")))?;
    Ok(Some(bytes))
}

/// The record JSON stays what it was before [`FileMeta`] was split out of [`FileRecord`]: the
/// fixtures below are records as the code before the split wrote them (`to_vec_pretty`, as
/// [`Store::insert`] does), captured from it.
#[cfg(test)]
mod record_format_tests {
    use serde_json::Value;

    use super::*;

    /// A one-to-one file that expires, as `privitty_send_file` records it.
    const ONE_TO_ONE: &str = r#"{
  "version": 1,
  "file_id": "5f0c6a8e-2b7d-4c1e-9a3f-0d4e8b6c2a91",
  "account_id": 1,
  "chat_id": 12,
  "peer_contact_id": 20,
  "allow_download": true,
  "allow_forward": false,
  "created_at": 1795774265,
  "expires_at": 1795777865,
  "original_name": "report.pdf",
  "original_size": 1048577,
  "encrypted_path": "/data/files/report.pdf.prv",
  "header_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
  "wrapped_key": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748",
  "revoked_peers": [],
  "revoked_at": null
}"#;

    /// A revoked group file with every number at an extreme: the flattened fields are buffered
    /// by serde before they are read, and must come back exactly (u64 above i64, i64 below 0,
    /// 2^53 + 1 which an f64 would round).
    const EXTREMES: &str = r#"{
  "version": 1,
  "file_id": "c3a1e2f4-7b8d-4e6f-8a9b-1c2d3e4f5a6b",
  "account_id": 4294967295,
  "chat_id": 4294967295,
  "peer_contact_id": null,
  "allow_download": false,
  "allow_forward": true,
  "created_at": -9223372036854775808,
  "expires_at": 9223372036854775807,
  "original_name": "grüße \"quoted\".bin",
  "original_size": 18446744073709551615,
  "encrypted_path": "/data/files/grüße \"quoted\".bin.prv",
  "header_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
  "wrapped_key": null,
  "revoked_peers": [
    7,
    9
  ],
  "revoked_at": 9007199254740993
}"#;

    fn extremes() -> FileRecord {
        FileRecord {
            version: RECORD_VERSION,
            meta: FileMeta {
                file_id: Uuid::parse_str("c3a1e2f4-7b8d-4e6f-8a9b-1c2d3e4f5a6b").unwrap(),
                account_id: u32::MAX,
                chat_id: u32::MAX,
                peer_contact_id: None,
                allow_download: false,
                allow_forward: true,
                created_at: i64::MIN,
                expires_at: Some(i64::MAX),
                original_name: "grüße \"quoted\".bin".to_owned(),
                original_size: u64::MAX,
            },
            encrypted_path: PathBuf::from("/data/files/grüße \"quoted\".bin.prv"),
            header_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                .to_owned(),
            wrapped_key: None,
            revoked_peers: vec![7, 9],
            revoked_at: Some(9_007_199_254_740_993),
        }
    }

    #[test]
    fn records_written_before_file_meta_read_and_write_back_the_same() {
        for fixture in [ONE_TO_ONE, EXTREMES] {
            let record: FileRecord = serde_json::from_str(fixture).unwrap();
            let again = serde_json::to_vec_pretty(&record).unwrap();
            // The contract: the same keys with the same values.
            assert_eq!(
                serde_json::from_slice::<Value>(&again).unwrap(),
                serde_json::from_str::<Value>(fixture).unwrap(),
            );
            // Today even the text is the same (the flattened fields sit where they were); a
            // deliberate reorder of FileMeta's fields may relax this to the check above.
            assert_eq!(String::from_utf8(again).unwrap(), fixture);
        }
        let parsed: FileRecord = serde_json::from_str(EXTREMES).unwrap();
        assert_eq!(parsed, extremes());
        let parsed: FileRecord = serde_json::from_str(ONE_TO_ONE).unwrap();
        assert_eq!(
            (parsed.meta.peer_contact_id, parsed.meta.expires_at),
            (Some(20), Some(1_795_777_865))
        );
        assert_eq!(parsed.meta.original_size, 1_048_577);
    }

    #[test]
    fn a_record_without_revocation_fields_still_reads() {
        // Both may be absent (`#[serde(default)]`); the flattened part must not change that.
        let mut old: Value = serde_json::from_str(ONE_TO_ONE).unwrap();
        let map = old.as_object_mut().unwrap();
        map.remove("revoked_peers");
        map.remove("revoked_at");
        let record: FileRecord = serde_json::from_value(old).unwrap();
        assert!(record.revoked_peers.is_empty() && record.revoked_at.is_none());
        assert_eq!(record.meta.original_name, "report.pdf");
    }

    #[test]
    fn the_store_reads_and_rewrites_an_old_record_unchanged() {
        let accounts = tempfile::tempdir().unwrap();
        let store = Store::open(accounts.path()).unwrap();
        let record = extremes();
        let path = store.record_path(record.meta.file_id);
        fs::write(&path, EXTREMES).unwrap();
        assert_eq!(store.get(record.meta.file_id).unwrap(), record);
        let lock = store.lock().unwrap();
        store.update(&record, &lock).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), EXTREMES);
    }
}
