//! The `.prv` byte format, version 1: header encoding and the streaming AEAD (XChaCha20-Poly1305
//! in the STREAM construction, big-endian 32-bit counter) over fixed-size chunks.
//!
//! Owns the bytes of a `.prv` file and nothing else: it never touches the key store, never
//! decides access (revocation, expiry) and never buffers more than one chunk. `PRV-FORMAT.md`
//! documents every byte written here; change both together.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::PrivittyError;

/// First 8 bytes of every `.prv` file (PNG-style: a non-ASCII byte, then CR LF, ^Z, LF, so
/// text-mode transfers that mangle line endings are detected at once).
pub const MAGIC: [u8; 8] = *b"\x89PRV\r\n\x1a\n";
/// The only format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Plaintext bytes per chunk written by this version.
pub const CHUNK_SIZE: u32 = 64 * 1024;
/// Bounds a reader accepts for the chunk size, so a hostile header cannot make it allocate much.
pub const MIN_CHUNK_SIZE: u32 = 1024;
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// Poly1305 tag appended to every chunk.
pub const TAG_LEN: usize = 16;
/// XChaCha20's 24-byte nonce minus STREAM's 5 bytes (32-bit counter + last-chunk flag).
pub const NONCE_PREFIX_LEN: usize = 19;
/// Length of the fixed part of the header, before the original file name.
pub const FIXED_LEN: usize = 93;
/// Longest original file name stored (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

const FLAG_ALLOW_DOWNLOAD: u16 = 1 << 0;
const FLAG_ALLOW_FORWARD: u16 = 1 << 1;
const FLAG_GROUP: u16 = 1 << 2;
const KNOWN_FLAGS: u16 = FLAG_ALLOW_DOWNLOAD | FLAG_ALLOW_FORWARD | FLAG_GROUP;

/// A 256-bit per-file key. Deliberately not `Debug`/`Display`, so it cannot end up in a log line.
#[derive(Clone)]
pub struct FileKey(pub(crate) [u8; 32]);

impl FileKey {
    pub fn random() -> FileKey {
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        FileKey(key)
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(redacted)")
    }
}

/// Everything the header says about a file. The whole header is authenticated: its SHA-256 is
/// the associated data of every chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub file_id: Uuid,
    pub account_id: u32,
    pub chat_id: u32,
    /// `None` for a group file.
    pub peer_contact_id: Option<u32>,
    pub allow_download: bool,
    pub allow_forward: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` = never expires.
    pub expires_at: Option<i64>,
    pub original_name: String,
    pub original_size: u64,
    pub chunk_size: u32,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    /// The exact header bytes (version 1, no key slots).
    pub fn encode(&self) -> Vec<u8> {
        let name = self.original_name.as_bytes();
        let mut flags = 0u16;
        if self.allow_download {
            flags |= FLAG_ALLOW_DOWNLOAD;
        }
        if self.allow_forward {
            flags |= FLAG_ALLOW_FORWARD;
        }
        if self.peer_contact_id.is_none() {
            flags |= FLAG_GROUP;
        }
        let header_len = (FIXED_LEN + name.len() + 2) as u32;
        let mut out = Vec::with_capacity(header_len as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&header_len.to_be_bytes());
        out.extend_from_slice(self.file_id.as_bytes());
        out.extend_from_slice(&self.account_id.to_be_bytes());
        out.extend_from_slice(&self.chat_id.to_be_bytes());
        out.extend_from_slice(&self.peer_contact_id.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.original_size.to_be_bytes());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        // Key-slot count: reserved for per-peer wrapped keys (PRV-FORMAT.md), 0 in version 1.
        out.extend_from_slice(&0u16.to_be_bytes());
        debug_assert_eq!(out.len(), header_len as usize);
        out
    }

    /// Reads and parses a header from the start of `src`, returning it with its exact bytes.
    /// Nothing here is authentic yet: that is proven by the first chunk.
    pub fn read_from(src: &mut impl Read, path: &Path) -> Result<(Header, Vec<u8>), PrivittyError> {
        let not_prv = |reason: &str| PrivittyError::NotPrv {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let mut fixed = [0u8; FIXED_LEN];
        read_full(src, &mut fixed, path).and_then(|n| {
            if n == FIXED_LEN {
                Ok(())
            } else {
                Err(not_prv("it is shorter than a .prv header"))
            }
        })?;
        if fixed[..8] != MAGIC {
            return Err(not_prv("it does not start with the .prv magic bytes"));
        }
        let be16 = |at: usize| u16::from_be_bytes([fixed[at], fixed[at + 1]]);
        let be32 = |at: usize| u32::from_be_bytes(fixed[at..at + 4].try_into().expect("4 bytes"));
        let be64 = |at: usize| u64::from_be_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
        let version = be16(8);
        if version != VERSION {
            return Err(PrivittyError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let flags = be16(10);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(not_prv("its header has unknown flags set"));
        }
        let header_len = be32(12) as usize;
        let chunk_size = be32(68);
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(not_prv("its chunk size is out of range"));
        }
        let name_len = be16(91) as usize;
        if name_len > MAX_NAME_LEN || header_len != FIXED_LEN + name_len + 2 {
            return Err(not_prv("its header length is inconsistent"));
        }
        let mut rest = vec![0u8; name_len + 2];
        if read_full(src, &mut rest, path)? != rest.len() {
            return Err(not_prv("it ends inside its header"));
        }
        let slots = u16::from_be_bytes([rest[name_len], rest[name_len + 1]]);
        if slots != 0 {
            return Err(not_prv(
                "it carries peer key slots, which version 1 does not read",
            ));
        }
        let original_name = String::from_utf8(rest[..name_len].to_vec())
            .map_err(|_| not_prv("its original file name is not UTF-8"))?;
        let peer = be32(40);
        let group = flags & FLAG_GROUP != 0;
        if group != (peer == 0) {
            return Err(not_prv("its group flag and peer contact id disagree"));
        }
        let expires_at = be64(52) as i64;
        let header = Header {
            file_id: Uuid::from_bytes(fixed[16..32].try_into().expect("16 bytes")),
            account_id: be32(32),
            chat_id: be32(36),
            peer_contact_id: (!group).then_some(peer),
            allow_download: flags & FLAG_ALLOW_DOWNLOAD != 0,
            allow_forward: flags & FLAG_ALLOW_FORWARD != 0,
            created_at: be64(44) as i64,
            expires_at: (expires_at != 0).then_some(expires_at),
            original_name,
            original_size: be64(60),
            chunk_size,
            nonce_prefix: fixed[72..72 + NONCE_PREFIX_LEN]
                .try_into()
                .expect("19 bytes"),
        };
        let mut bytes = Vec::with_capacity(header_len);
        bytes.extend_from_slice(&fixed);
        bytes.extend_from_slice(&rest);
        Ok((header, bytes))
    }

    /// Number of chunks a file of this size has: at least one (an empty file is one empty,
    /// authenticated last chunk).
    pub fn chunk_count(&self) -> u64 {
        self.original_size
            .div_ceil(u64::from(self.chunk_size))
            .max(1)
    }

    /// Plaintext length of chunk `index` (0-based).
    fn plain_len(&self, index: u64) -> usize {
        let chunk = u64::from(self.chunk_size);
        let last = self.chunk_count() - 1;
        if index < last {
            chunk as usize
        } else {
            (self.original_size - last * chunk) as usize
        }
    }
}

/// SHA-256 over the exact header bytes: the associated data of every chunk, and what the key
/// store records to bind a key to one header.
pub fn header_digest(header_bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(header_bytes).into()
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_full(src: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize, PrivittyError> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PrivittyError::from_io(path, e)),
        }
    }
    Ok(filled)
}

/// Encrypts exactly `header.original_size` bytes of `src` into `dst` (header first), one chunk
/// at a time through a single reused buffer. `src_path` and `dst_path` only name files in
/// errors. Fails with `SourceChanged` if `src` holds fewer or more bytes than the header says.
pub fn encrypt(
    header: &Header,
    key: &FileKey,
    src: &mut impl Read,
    src_path: &Path,
    dst: &mut impl Write,
    dst_path: &Path,
) -> Result<[u8; 32], PrivittyError> {
    let header_bytes = header.encode();
    let aad = header_digest(&header_bytes);
    let write_err = |e| PrivittyError::from_io(dst_path, e);
    dst.write_all(&header_bytes).map_err(write_err)?;

    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let mut stream = Some(EncryptorBE32::from_aead(
        cipher,
        (&header.nonce_prefix).into(),
    ));
    let mut buf: Vec<u8> = Vec::with_capacity(header.chunk_size as usize + TAG_LEN);
    let changed = || PrivittyError::SourceChanged {
        path: src_path.to_path_buf(),
        expected: header.original_size,
    };
    let last = header.chunk_count() - 1;
    for index in 0..=last {
        let len = header.plain_len(index);
        buf.resize(len, 0);
        if read_full(src, &mut buf, src_path)? != len {
            return Err(changed());
        }
        let sealed = if index == last {
            // `encrypt_last` consumes the encryptor: no chunk can follow the last one.
            stream
                .take()
                .expect("one last chunk")
                .encrypt_last_in_place(&aad, &mut buf)
        } else {
            stream
                .as_mut()
                .expect("chunks before the last")
                .encrypt_next_in_place(&aad, &mut buf)
        };
        // Cannot fail for in-memory buffers below the counter limit; kept as an error, not a panic.
        sealed.map_err(|_| PrivittyError::Io {
            path: dst_path.to_path_buf(),
            source: io::Error::other("chunk encryption failed"),
        })?;
        dst.write_all(&buf).map_err(write_err)?;
    }
    let mut probe = [0u8; 1];
    if read_full(src, &mut probe, src_path)? != 0 {
        return Err(changed());
    }
    dst.flush().map_err(write_err)?;
    Ok(aad)
}

/// Streams the plaintext of a `.prv` file, one authenticated chunk at a time, through one
/// buffer of `chunk_size + 16` bytes allocated up front (memory stays constant whatever the
/// file size). A chunk is only released after its tag verified; truncation, trailing data and
/// reordering are reported as errors, at the latest on the last chunk, so a consumer must treat
/// an error after some plaintext as a failed transfer.
pub struct PrvReader<R> {
    src: R,
    path: PathBuf,
    header: Header,
    aad: [u8; 32],
    stream: Option<DecryptorBE32<XChaCha20Poly1305>>,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out through `Read`.
    pos: usize,
    next_chunk: u64,
    /// Set once the last chunk verified; a reader that failed never reports a clean end.
    finished: bool,
}

impl<R> std::fmt::Debug for PrvReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrvReader")
            .field("path", &self.path)
            .field("file_id", &self.header.file_id)
            .field("next_chunk", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

impl<R: Read> PrvReader<R> {
    /// Starts decrypting after the header (already read from `src` by [`Header::read_from`]).
    pub fn new(
        src: R,
        path: &Path,
        header: Header,
        header_bytes: &[u8],
        key: &FileKey,
    ) -> PrvReader<R> {
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        let stream = DecryptorBE32::from_aead(cipher, (&header.nonce_prefix).into());
        let capacity = header.chunk_size as usize + TAG_LEN;
        PrvReader {
            src,
            path: path.to_path_buf(),
            aad: header_digest(header_bytes),
            header,
            stream: Some(stream),
            buf: Vec::with_capacity(capacity),
            pos: 0,
            next_chunk: 0,
            finished: false,
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Capacity of the one chunk buffer; constant for the reader's life (tests check it).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next verified plaintext chunk, or `None` after the last one (which also proved there
    /// is nothing after it).
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>, PrivittyError> {
        let index = self.next_chunk;
        let Some(mut stream) = self.stream.take() else {
            if self.finished {
                return Ok(None);
            }
            // An earlier chunk failed: keep failing rather than look like a clean end.
            return Err(PrivittyError::Tampered {
                path: self.path.clone(),
                chunk: index,
            });
        };
        let last = index + 1 == self.header.chunk_count();
        let sealed_len = self.header.plain_len(index) + TAG_LEN;
        self.buf.resize(sealed_len, 0);
        if read_full(&mut self.src, &mut self.buf, &self.path)? != sealed_len {
            return Err(PrivittyError::Truncated {
                path: self.path.clone(),
                chunk: index,
            });
        }
        let opened = if last {
            stream.decrypt_last_in_place(&self.aad, &mut self.buf)
        } else {
            let opened = stream.decrypt_next_in_place(&self.aad, &mut self.buf);
            self.stream = Some(stream);
            opened
        };
        if opened.is_err() {
            self.stream = None;
            return Err(PrivittyError::Tampered {
                path: self.path.clone(),
                chunk: index,
            });
        }
        if last {
            let mut probe = [0u8; 1];
            if read_full(&mut self.src, &mut probe, &self.path)? != 0 {
                return Err(PrivittyError::TrailingData {
                    path: self.path.clone(),
                });
            }
        }
        self.finished = last;
        self.next_chunk += 1;
        self.pos = 0;
        Ok(Some(&self.buf))
    }

    /// Copies the whole plaintext into `out`, chunk by chunk; returns the bytes written.
    pub fn decrypt_to(&mut self, out: &mut impl Write) -> Result<u64, PrivittyError> {
        let path = self.path.clone();
        let mut total = 0u64;
        while let Some(chunk) = self.next_chunk()? {
            out.write_all(chunk).map_err(|e| PrivittyError::Io {
                path: path.clone(),
                source: e,
            })?;
            total += chunk.len() as u64;
        }
        out.flush()
            .map_err(|e| PrivittyError::Io { path, source: e })?;
        Ok(total)
    }
}

impl<R: Read> Read for PrvReader<R> {
    /// Errors come as `io::ErrorKind::InvalidData` wrapping the [`PrivittyError`]
    /// (`err.get_ref()` + `downcast_ref`).
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.next_chunk() {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(0),
                Err(e) => {
                    // The buffer holds the failed chunk's sealed bytes: never hand them out on a
                    // later read (the reader keeps failing through `next_chunk`).
                    self.buf.clear();
                    self.pos = 0;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            // An empty last chunk yields no bytes: that is the end.
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
