//! Privitty protected files: the `privitty_*` JSON-RPC methods that turn a file into a `.prv`
//! file (streaming AEAD, per-file key), revoke access to it and report its state, plus the
//! streaming decryption API the viewer (`/auth`, `/stream`) builds on.
//!
//! Owns the `.prv` format (`format`), the key store under `<accounts>/privitty/` (`store`), the
//! description of a file both of them carry (`meta`) and the method parameters (`params`);
//! `PRV-FORMAT.md` documents them. It must not talk to
//! the engine, check the license (edged gates every method in [`Privitty::METHODS`]) or write
//! plaintext anywhere: decryption only streams into a caller's writer. File keys never leave it
//! in clear, not in results, events, errors or logs. All I/O is blocking: callers run it on a
//! blocking thread.

mod error;
pub mod format;
mod meta;
pub(crate) mod params;
pub mod store;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use uuid::Uuid;

pub use error::PrivittyError;
pub use format::{FileKey, Header, PrvReader};
pub use meta::FileMeta;
pub use params::MAX_DURATION_MINUTES;
pub use store::{FileRecord, Store};
pub(crate) use store::{read_capped, write_atomic};

use params::Params;

/// Extension appended to the encrypted file's path.
pub const PRV_EXTENSION: &str = "prv";

/// The Privitty file methods over one key store. `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct Privitty {
    store: Store,
}

/// The answer of one method: the JSON-RPC `result` and the events to publish on SSE.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub result: Value,
    /// Events for SSE in the documented shape, e.g.
    /// `{"type":"PrivittyFileEncrypted","account_id":1,"chat_id":7,"file_id":"…"}`.
    pub events: Vec<Value>,
}

/// What to encrypt: the typed form of `privitty_send_file` / `privitty_send_group_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptRequest {
    pub account_id: u32,
    pub chat_id: u32,
    /// `None` for a group chat.
    pub peer_contact_id: Option<u32>,
    /// Absolute path of the plaintext file; the result is `<path>.prv` beside it.
    pub path: PathBuf,
    pub allow_download: bool,
    pub allow_forward: bool,
    /// 0 = never expires.
    pub duration_minutes: u64,
}

/// A `.prv` file that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    pub encrypted_path: PathBuf,
    pub file_id: Uuid,
    /// Unix seconds; `None` = never.
    pub expires_at: Option<i64>,
    pub record: FileRecord,
}

/// What a revocation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub record: FileRecord,
    /// The file key no longer exists: nobody can decrypt the file on this device any more.
    pub key_destroyed: bool,
    /// Nothing changed: this access was already revoked (the call is idempotent).
    pub already_revoked: bool,
}

/// Parameter names, in order, as documented (they appear in -32602 messages).
const SEND_FILE_PARAMS: &[&str] = &[
    "account_id",
    "chat_id",
    "peer_contact_id",
    "path",
    "allow_download",
    "allow_forward",
    "duration_minutes",
];
const SEND_GROUP_FILE_PARAMS: &[&str] = &[
    "account_id",
    "chat_id",
    "path",
    "allow_download",
    "allow_forward",
    "duration_minutes",
];
const REVOKE_PARAMS: &[&str] = &["account_id", "chat_id", "file_id", "peer_contact_id"];
const FILE_INFO_PARAMS: &[&str] = &["account_id", "file_id"];

impl Privitty {
    /// Names of the methods it implements (every one is license-gated by edged).
    pub const METHODS: &'static [&'static str] = &[
        "privitty_send_file",
        "privitty_send_group_file",
        "privitty_revoke_file_access",
        "privitty_get_file_info",
    ];

    /// Opens (creating if needed) the key store under `<accounts_dir>/privitty/`.
    pub fn open(accounts_dir: &Path) -> Result<Privitty, PrivittyError> {
        Ok(Privitty {
            store: Store::open(accounts_dir)?,
        })
    }

    /// The key store directory (`<accounts_dir>/privitty`).
    pub fn store_dir(&self) -> &Path {
        self.store.dir()
    }

    /// Runs one method with positional JSON-RPC params; blocking file I/O (edged calls it in
    /// spawn_blocking). None = not a method of this module.
    pub fn call(&self, method: &str, params: &[Value]) -> Option<Result<Outcome, PrivittyError>> {
        self.call_at(method, params, SystemTime::now())
    }

    /// [`Privitty::call`] with the clock as a parameter (expiry is computed from `now`).
    pub fn call_at(
        &self,
        method: &str,
        params: &[Value],
        now: SystemTime,
    ) -> Option<Result<Outcome, PrivittyError>> {
        let outcome = match method {
            "privitty_send_file" => self.rpc_send_file(method, params, now, true),
            "privitty_send_group_file" => self.rpc_send_file(method, params, now, false),
            "privitty_revoke_file_access" => self.rpc_revoke(method, params, now),
            "privitty_get_file_info" => self.rpc_file_info(method, params, now),
            _ => return None,
        };
        if let Err(e) = &outcome {
            tracing::debug!(method, code = e.rpc_code(), error = %e, "privitty call failed");
        }
        Some(outcome)
    }

    fn rpc_send_file(
        &self,
        method: &str,
        values: &[Value],
        now: SystemTime,
        direct: bool,
    ) -> Result<Outcome, PrivittyError> {
        let request = if direct {
            let p = Params::new(method, values, SEND_FILE_PARAMS)?;
            EncryptRequest {
                account_id: p.id(0, 1)?,
                chat_id: p.id(1, 1)?,
                peer_contact_id: Some(p.id(2, 1)?),
                path: p.absolute_path(3)?,
                allow_download: p.bool(4)?,
                allow_forward: p.bool(5)?,
                duration_minutes: p.minutes(6)?,
            }
        } else {
            let p = Params::new(method, values, SEND_GROUP_FILE_PARAMS)?;
            EncryptRequest {
                account_id: p.id(0, 1)?,
                chat_id: p.id(1, 1)?,
                peer_contact_id: None,
                path: p.absolute_path(2)?,
                allow_download: p.bool(3)?,
                allow_forward: p.bool(4)?,
                duration_minutes: p.minutes(5)?,
            }
        };
        let done = self.encrypt_file(&request, now)?;
        let mut event = json!({
            "type": "PrivittyFileEncrypted",
            "account_id": request.account_id,
            "chat_id": request.chat_id,
            "file_id": done.file_id,
        });
        if let Some(peer) = request.peer_contact_id {
            event["peer_contact_id"] = json!(peer);
        }
        Ok(Outcome {
            result: json!({
                "encrypted_path": done.encrypted_path,
                "file_id": done.file_id,
                "expires_at": done.expires_at.map(rfc3339),
            }),
            events: vec![event],
        })
    }

    fn rpc_revoke(
        &self,
        method: &str,
        values: &[Value],
        now: SystemTime,
    ) -> Result<Outcome, PrivittyError> {
        let p = Params::new(method, values, REVOKE_PARAMS)?;
        let (account_id, chat_id, file_id) = (p.id(0, 1)?, p.id(1, 1)?, p.file_id(2)?);
        let peer = p.id(3, 0)?;
        let done = self.revoke(account_id, chat_id, file_id, peer, now)?;
        let events = if done.already_revoked {
            Vec::new()
        } else {
            vec![json!({
                "type": "PrivittyFileAccessRevoked",
                "account_id": account_id,
                "chat_id": chat_id,
                "file_id": file_id,
                "peer_contact_id": peer,
            })]
        };
        Ok(Outcome {
            result: json!({
                "file_id": file_id,
                "peer_contact_id": peer,
                "revoked": true,
                "key_destroyed": done.key_destroyed,
                "already_revoked": done.already_revoked,
            }),
            events,
        })
    }

    fn rpc_file_info(
        &self,
        method: &str,
        values: &[Value],
        now: SystemTime,
    ) -> Result<Outcome, PrivittyError> {
        let p = Params::new(method, values, FILE_INFO_PARAMS)?;
        let (account_id, file_id) = (p.id(0, 1)?, p.file_id(1)?);
        let record = self.store.get(file_id)?;
        if record.meta.account_id != account_id {
            return Err(PrivittyError::UnknownFile { file_id });
        }
        Ok(Outcome {
            result: file_info(&record, now),
            events: Vec::new(),
        })
    }

    /// Encrypts `request.path` into `<path>.prv`, records its wrapped key, and only then
    /// publishes the `.prv` under its final name with a no-replace rename, so a crash leaves
    /// no torn `.prv` (at worst a `.prv-*.tmp` beside it and an unused key record).
    pub fn encrypt_file(
        &self,
        request: &EncryptRequest,
        now: SystemTime,
    ) -> Result<Encrypted, PrivittyError> {
        let path = &request.path;
        if !path.is_absolute() {
            return Err(PrivittyError::InvalidParams(format!(
                "path {} must be absolute",
                path.display()
            )));
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(PrivittyError::InvalidParams(format!(
                "path {} must name a file",
                path.display()
            )));
        };
        if request.peer_contact_id == Some(0) {
            // 0 marks a group file in the header; a one-to-one file needs a real contact.
            return Err(PrivittyError::InvalidParams(
                "peer_contact_id must be at least 1 (use None for a group file)".to_owned(),
            ));
        }
        if request.duration_minutes > MAX_DURATION_MINUTES {
            return Err(PrivittyError::InvalidParams(format!(
                "duration_minutes must be at most {MAX_DURATION_MINUTES}, got {}",
                request.duration_minutes
            )));
        }
        let name = name.to_str().ok_or_else(|| {
            PrivittyError::InvalidParams(format!("file name of {} must be UTF-8", path.display()))
        })?;
        let mut source = open_regular_file(path)?;
        let size = source
            .metadata()
            .map_err(|e| PrivittyError::from_io(path, e))?
            .len();

        let mut out_name = name.to_owned();
        out_name.push('.');
        out_name.push_str(PRV_EXTENSION);
        let out_path = dir.join(&out_name);
        // Checked early to fail before any work; the final rename re-checks atomically.
        match std::fs::symlink_metadata(&out_path) {
            Ok(_) => return Err(PrivittyError::OutputExists { path: out_path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PrivittyError::from_io(&out_path, e)),
        }

        let created_at = unix_seconds(now);
        let expires_at = (request.duration_minutes > 0)
            .then(|| created_at + request.duration_minutes as i64 * 60);
        let mut nonce_prefix = [0u8; format::NONCE_PREFIX_LEN];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce_prefix);
        let header = Header {
            meta: FileMeta {
                file_id: Uuid::new_v4(),
                account_id: request.account_id,
                chat_id: request.chat_id,
                peer_contact_id: request.peer_contact_id,
                allow_download: request.allow_download,
                allow_forward: request.allow_forward,
                created_at,
                expires_at,
                original_name: name.to_owned(),
                original_size: size,
            },
            chunk_size: format::CHUNK_SIZE,
            nonce_prefix,
        };
        let key = FileKey::random();

        let mut tmp = tempfile::Builder::new()
            .prefix(".prv-")
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| PrivittyError::from_io(dir, e))?;
        let digest = {
            let mut out = io::BufWriter::with_capacity(
                format::CHUNK_SIZE as usize + format::TAG_LEN,
                tmp.as_file_mut(),
            );
            let digest = format::encrypt(&header, &key, &mut source, path, &mut out, &out_path)?;
            out.flush()
                .map_err(|e| PrivittyError::from_io(&out_path, e))?;
            digest
        };
        tmp.as_file()
            .sync_all()
            .map_err(|e| PrivittyError::from_io(&out_path, e))?;

        let file_id = header.meta.file_id;
        let record = FileRecord {
            version: store::RECORD_VERSION,
            meta: header.meta.clone(),
            encrypted_path: out_path.clone(),
            header_sha256: hex::encode(digest),
            wrapped_key: Some(self.store.wrap(file_id, &digest, &key)),
            revoked_peers: Vec::new(),
            revoked_at: None,
        };
        self.store.insert(&record)?;
        if let Err(e) = tmp.persist_noclobber(&out_path) {
            // The temp file is deleted when `e` drops; the record must go with it.
            let _ = self.store.remove(file_id);
            return Err(PrivittyError::from_io(&out_path, e.error));
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| PrivittyError::from_io(dir, e))?;
        tracing::debug!(
            %file_id,
            account_id = header.meta.account_id,
            chat_id = header.meta.chat_id,
            size,
            group = header.meta.peer_contact_id.is_none(),
            "encrypted a privitty file"
        );
        Ok(Encrypted {
            encrypted_path: out_path,
            file_id,
            expires_at,
            record,
        })
    }

    /// Revokes `peer_contact_id`'s access to `file_id` (0 = every recipient). For a one-to-one
    /// file, or with 0, the file key is destroyed; for one member of a group the member is
    /// listed as revoked and the key stays for the others. Idempotent.
    pub fn revoke(
        &self,
        account_id: u32,
        chat_id: u32,
        file_id: Uuid,
        peer_contact_id: u32,
        now: SystemTime,
    ) -> Result<Revocation, PrivittyError> {
        let lock = self.store.lock()?;
        let mut record = self.store.get(file_id)?;
        if (record.meta.account_id, record.meta.chat_id) != (account_id, chat_id) {
            return Err(PrivittyError::WrongChat {
                file_id,
                account_id: record.meta.account_id,
                chat_id: record.meta.chat_id,
                given_account_id: account_id,
                given_chat_id: chat_id,
            });
        }
        let destroy = match record.meta.peer_contact_id {
            Some(recipient) if peer_contact_id != 0 && peer_contact_id != recipient => {
                return Err(PrivittyError::NotRecipient {
                    file_id,
                    peer_contact_id,
                    recipient,
                });
            }
            Some(_) => true,
            None => peer_contact_id == 0,
        };
        let already_revoked = record.wrapped_key.is_none()
            || (!destroy && record.revoked_peers.contains(&peer_contact_id));
        if !already_revoked {
            if destroy {
                record.wrapped_key = None;
            }
            if peer_contact_id != 0 && !record.revoked_peers.contains(&peer_contact_id) {
                record.revoked_peers.push(peer_contact_id);
            }
            record.revoked_at.get_or_insert(unix_seconds(now));
            self.store.update(&record, &lock)?;
            tracing::debug!(%file_id, account_id, chat_id, peer_contact_id, key_destroyed = destroy, "revoked privitty file access");
        }
        Ok(Revocation {
            key_destroyed: record.wrapped_key.is_none(),
            already_revoked,
            record,
        })
    }

    /// The key store (the peer protocol seals its identities and received keys with it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The record and key of a file encrypted here, for sealing it to a recipient; `Revoked`
    /// once the key was destroyed.
    pub fn owner_key(&self, file_id: Uuid) -> Result<(FileRecord, FileKey), PrivittyError> {
        let record = self.store.get(file_id)?;
        let key = self.store.unwrap(&record)?;
        Ok((record, key))
    }

    /// The key record of `file_id` (policy and revocation state; never the key).
    pub fn file_record(&self, file_id: Uuid) -> Result<FileRecord, PrivittyError> {
        self.store.get(file_id)
    }

    /// Opens a `.prv` file for streaming decryption on this device (the viewer's entry point):
    /// refuses symlinks, unknown files, revoked or expired access, and a header other than the
    /// one recorded at encryption. The returned reader verifies every chunk before releasing it.
    pub fn open_reader(&self, path: &Path) -> Result<PrvReader<File>, PrivittyError> {
        self.open_reader_for(path, None, SystemTime::now())
    }

    /// [`Privitty::open_reader`] on behalf of a group member (refused when that member's access
    /// was revoked), with the clock as a parameter.
    pub fn open_reader_for(
        &self,
        path: &Path,
        peer_contact_id: Option<u32>,
        now: SystemTime,
    ) -> Result<PrvReader<File>, PrivittyError> {
        let mut file = open_regular_file(path)?;
        let (header, header_bytes) = Header::read_from(&mut file, path)?;
        let record = self.store.get(header.meta.file_id)?;
        let recorded = store::decode_digest(&record.header_sha256);
        if recorded != Some(format::header_digest(&header_bytes)) {
            return Err(PrivittyError::RecordMismatch {
                path: path.to_path_buf(),
                file_id: header.meta.file_id,
            });
        }
        let revoked_peer = peer_contact_id.is_some_and(|p| record.revoked_peers.contains(&p));
        if record.wrapped_key.is_none() || revoked_peer {
            return Err(PrivittyError::Revoked {
                file_id: header.meta.file_id,
            });
        }
        if let Some(expires_at) = record.meta.expires_at.filter(|t| unix_seconds(now) >= *t) {
            return Err(PrivittyError::Expired {
                file_id: header.meta.file_id,
                expires_at: rfc3339(expires_at),
            });
        }
        let key = self.store.unwrap(&record)?;
        Ok(PrvReader::new(file, path, header, &header_bytes, &key))
    }

    /// Decrypts a whole `.prv` file into `out` (never to disk by itself); returns its header and
    /// the number of plaintext bytes written. On error `out` may hold a verified prefix.
    pub fn decrypt_to(
        &self,
        path: &Path,
        out: &mut impl Write,
    ) -> Result<(Header, u64), PrivittyError> {
        let mut reader = self.open_reader(path)?;
        let bytes = reader.decrypt_to(out)?;
        Ok((reader.header().clone(), bytes))
    }

    /// The SSE event the viewer publishes after streaming a file.
    pub fn decrypted_event(header: &Header) -> Value {
        json!({
            "type": "PrivittyFileDecrypted",
            "account_id": header.meta.account_id,
            "chat_id": header.meta.chat_id,
            "file_id": header.meta.file_id,
        })
    }
}

/// The `privitty_get_file_info` result.
fn file_info(record: &FileRecord, now: SystemTime) -> Value {
    let expired = record
        .meta
        .expires_at
        .is_some_and(|t| unix_seconds(now) >= t);
    let status = if record.wrapped_key.is_none() {
        "revoked"
    } else if expired {
        "expired"
    } else {
        "active"
    };
    json!({
        "file_id": record.meta.file_id,
        "account_id": record.meta.account_id,
        "chat_id": record.meta.chat_id,
        "peer_contact_id": record.meta.peer_contact_id,
        "group": record.meta.peer_contact_id.is_none(),
        "allow_download": record.meta.allow_download,
        "allow_forward": record.meta.allow_forward,
        "created_at": rfc3339(record.meta.created_at),
        "expires_at": record.meta.expires_at.map(rfc3339),
        "status": status,
        "revoked_peers": record.revoked_peers,
        "revoked_at": record.revoked_at.map(rfc3339),
        "original_name": record.meta.original_name,
        "original_size": record.meta.original_size,
        "encrypted_path": record.encrypted_path,
    })
}

/// Opens `path` for reading only if it is a regular file reached without following a symlink
/// in its last component (`O_NOFOLLOW`; `O_NONBLOCK` so a FIFO cannot hang the open).
pub(crate) fn open_regular_file(path: &Path) -> Result<File, PrivittyError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(
            nix::libc::O_NOFOLLOW
                | nix::libc::O_NONBLOCK
                | nix::libc::O_NOCTTY
                | nix::libc::O_CLOEXEC,
        )
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP)
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) =>
            {
                PrivittyError::Symlink {
                    path: path.to_path_buf(),
                }
            }
            Some(nix::libc::ENXIO) => PrivittyError::NotRegularFile {
                path: path.to_path_buf(),
                kind: "socket",
            },
            Some(nix::libc::ENOTDIR) => PrivittyError::NotFound {
                path: path.to_path_buf(),
            },
            _ => PrivittyError::from_io(path, e),
        })?;
    let kind = file
        .metadata()
        .map_err(|e| PrivittyError::from_io(path, e))?
        .file_type();
    let not_regular = |kind| PrivittyError::NotRegularFile {
        path: path.to_path_buf(),
        kind,
    };
    if kind.is_dir() {
        return Err(not_regular("directory"));
    }
    if kind.is_fifo() {
        return Err(not_regular("named pipe"));
    }
    if kind.is_socket() {
        return Err(not_regular("socket"));
    }
    if kind.is_block_device() || kind.is_char_device() {
        return Err(not_regular("device"));
    }
    if !kind.is_file() {
        return Err(not_regular("special file"));
    }
    Ok(file)
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// RFC 3339 in UTC with seconds, e.g. `2026-11-27T10:31:05Z`.
pub(crate) fn rfc3339(unix: i64) -> String {
    let t = if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_seconds(t).to_string()
}
