//! The `.prv` byte format, version 1: header encoding and the streaming AEAD (XChaCha20-Poly1305
//! in the STREAM construction, big-endian 32-bit counter) over fixed-size chunks.
//!
//! Owns the bytes of a `.prv` file and nothing else: it never touches the key store, never
//! decides access (revocation, expiry) and never buffers more than one chunk. `PRV-FORMAT.md`
//! documents every byte written here; change both together.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::stream::{EncryptorBE32, NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::PrivittyError;
use super::meta::FileMeta;

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
    /// The file's description; the key store's record keeps the same one.
    pub meta: FileMeta,
    pub chunk_size: u32,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    /// The exact header bytes (version 1, no key slots).
    pub fn encode(&self) -> Vec<u8> {
        let meta = &self.meta;
        let name = meta.original_name.as_bytes();
        let mut flags = 0u16;
        if meta.allow_download {
            flags |= FLAG_ALLOW_DOWNLOAD;
        }
        if meta.allow_forward {
            flags |= FLAG_ALLOW_FORWARD;
        }
        if meta.peer_contact_id.is_none() {
            flags |= FLAG_GROUP;
        }
        let header_len = (FIXED_LEN + name.len() + 2) as u32;
        let mut out = Vec::with_capacity(header_len as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&header_len.to_be_bytes());
        out.extend_from_slice(meta.file_id.as_bytes());
        out.extend_from_slice(&meta.account_id.to_be_bytes());
        out.extend_from_slice(&meta.chat_id.to_be_bytes());
        out.extend_from_slice(&meta.peer_contact_id.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&meta.created_at.to_be_bytes());
        out.extend_from_slice(&meta.expires_at.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&meta.original_size.to_be_bytes());
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
            meta: FileMeta {
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
            },
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
        self.meta
            .original_size
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
            (self.meta.original_size - last * chunk) as usize
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
        expected: header.meta.original_size,
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
/// an error after some plaintext as a failed transfer. Over a seekable source it can start at any
/// chunk ([`PrvReader::seek_to_chunk`]): each chunk's nonce carries its own index and last flag.
pub struct PrvReader<R> {
    src: R,
    path: PathBuf,
    header: Header,
    /// Length of the header: where chunk 0 starts.
    header_len: u64,
    aad: [u8; 32],
    /// STREAM with the position given per chunk: the reader keeps the counter itself
    /// (`next_chunk`), so it can start anywhere.
    stream: StreamBE32<XChaCha20Poly1305>,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out through `Read`.
    pos: usize,
    next_chunk: u64,
    /// Set once the last chunk verified: nothing can follow it.
    finished: bool,
    /// Set once a chunk failed: a reader that failed never reports a clean end.
    failed: bool,
}

impl<R> std::fmt::Debug for PrvReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrvReader")
            .field("path", &self.path)
            .field("file_id", &self.header.meta.file_id)
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
        let stream = StreamBE32::from_aead(cipher, (&header.nonce_prefix).into());
        let capacity = header.chunk_size as usize + TAG_LEN;
        PrvReader {
            src,
            path: path.to_path_buf(),
            header_len: header_bytes.len() as u64,
            aad: header_digest(header_bytes),
            header,
            stream,
            buf: Vec::with_capacity(capacity),
            pos: 0,
            next_chunk: 0,
            finished: false,
            failed: false,
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Capacity of the one chunk buffer; constant for the reader's life (tests check it).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn fail(&mut self, error: PrivittyError) -> PrivittyError {
        self.failed = true;
        error
    }

    /// The next verified plaintext chunk, or `None` after the last one (which also proved there
    /// is nothing after it).
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>, PrivittyError> {
        let index = self.next_chunk;
        if self.failed {
            // An earlier chunk failed: keep failing rather than look like a clean end.
            return Err(PrivittyError::Tampered {
                path: self.path.clone(),
                chunk: index,
            });
        }
        if self.finished {
            return Ok(None);
        }
        // STREAM's counter is 32 bits: a header claiming more chunks cannot be a real file.
        let Ok(position) = u32::try_from(index) else {
            let e = PrivittyError::Tampered {
                path: self.path.clone(),
                chunk: index,
            };
            return Err(self.fail(e));
        };
        let last = index + 1 == self.header.chunk_count();
        let sealed_len = self.header.plain_len(index) + TAG_LEN;
        self.buf.resize(sealed_len, 0);
        let read = read_full(&mut self.src, &mut self.buf, &self.path);
        match read {
            Ok(n) if n == sealed_len => {}
            Ok(_) => {
                let e = PrivittyError::Truncated {
                    path: self.path.clone(),
                    chunk: index,
                };
                return Err(self.fail(e));
            }
            Err(e) => return Err(self.fail(e)),
        }
        if self
            .stream
            .decrypt_in_place(position, last, &self.aad, &mut self.buf)
            .is_err()
        {
            let e = PrivittyError::Tampered {
                path: self.path.clone(),
                chunk: index,
            };
            return Err(self.fail(e));
        }
        if last {
            let mut probe = [0u8; 1];
            match read_full(&mut self.src, &mut probe, &self.path) {
                Ok(0) => {}
                Ok(_) => {
                    let e = PrivittyError::TrailingData {
                        path: self.path.clone(),
                    };
                    return Err(self.fail(e));
                }
                Err(e) => return Err(self.fail(e)),
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

impl<R: Read + Seek> PrvReader<R> {
    /// Makes chunk `index` (0-based) the next one [`PrvReader::next_chunk`] returns, to read from
    /// an offset (HTTP `Range`): plaintext offset `o` is in chunk `o / chunk_size`. Chunks are
    /// still verified one by one, so no unverified byte is released, and reading on to the last
    /// chunk still proves there is nothing after it. An index past the last chunk is refused
    /// (`Truncated`); a reader that failed keeps failing.
    pub fn seek_to_chunk(&mut self, index: u64) -> Result<(), PrivittyError> {
        if self.failed {
            return Err(PrivittyError::Tampered {
                path: self.path.clone(),
                chunk: self.next_chunk,
            });
        }
        let past_end = || PrivittyError::Truncated {
            path: self.path.clone(),
            chunk: index,
        };
        if index >= self.header.chunk_count() {
            return Err(past_end());
        }
        let sealed = u64::from(self.header.chunk_size) + TAG_LEN as u64;
        let offset = index
            .checked_mul(sealed)
            .and_then(|o| o.checked_add(self.header_len))
            .ok_or_else(past_end)?;
        self.src
            .seek(SeekFrom::Start(offset))
            .map_err(|e| PrivittyError::from_io(&self.path, e))?;
        self.finished = false;
        self.next_chunk = index;
        self.buf.clear();
        self.pos = 0;
        Ok(())
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

#[cfg(test)]
mod seek_tests {
    use std::io::Cursor;

    use super::*;

    const C: u32 = MIN_CHUNK_SIZE;

    /// A `.prv` of `size` bytes in memory with small chunks, its plaintext and its key.
    fn sealed(size: u64) -> (Vec<u8>, Vec<u8>, FileKey) {
        let plain: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        let header = Header {
            meta: FileMeta {
                file_id: Uuid::new_v4(),
                account_id: 1,
                chat_id: 10,
                peer_contact_id: Some(11),
                allow_download: false,
                allow_forward: false,
                created_at: 0,
                expires_at: None,
                original_name: "seek.bin".to_owned(),
                original_size: size,
            },
            chunk_size: C,
            nonce_prefix: [3; NONCE_PREFIX_LEN],
        };
        let key = FileKey::random();
        let mut out = Vec::new();
        encrypt(
            &header,
            &key,
            &mut &plain[..],
            Path::new("/src"),
            &mut out,
            Path::new("/dst"),
        )
        .unwrap();
        (out, plain, key)
    }

    fn reader(bytes: &[u8], key: &FileKey) -> PrvReader<Cursor<Vec<u8>>> {
        let mut src = Cursor::new(bytes.to_vec());
        let (header, header_bytes) = Header::read_from(&mut src, Path::new("/t.prv")).unwrap();
        PrvReader::new(src, Path::new("/t.prv"), header, &header_bytes, key)
    }

    /// Everything from chunk `index` on, through `next_chunk`.
    fn rest(r: &mut PrvReader<Cursor<Vec<u8>>>) -> Result<Vec<u8>, PrivittyError> {
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk()? {
            out.extend_from_slice(c);
        }
        Ok(out)
    }

    #[test]
    fn every_chunk_is_a_starting_point_and_chunks_still_verify() {
        let size = 4 * u64::from(C) + 5;
        let (bytes, plain, key) = sealed(size);
        for index in 0..5u64 {
            let mut r = reader(&bytes, &key);
            r.seek_to_chunk(index).unwrap();
            let from = (index * u64::from(C)) as usize;
            assert_eq!(rest(&mut r).unwrap(), plain[from..], "from chunk {index}");
            assert_eq!(r.buffer_capacity(), C as usize + TAG_LEN);
        }
        // Back and forth on one reader, also after the end, and through `Read`.
        let mut r = reader(&bytes, &key);
        r.seek_to_chunk(4).unwrap();
        assert_eq!(rest(&mut r).unwrap(), plain[4 * C as usize..]);
        r.seek_to_chunk(1).unwrap();
        let mut two = vec![0; C as usize + 10];
        r.read_exact(&mut two).unwrap();
        assert_eq!(two, plain[C as usize..2 * C as usize + 10]);
        // Past the last chunk: refused, and the reader is still usable.
        assert!(matches!(
            r.seek_to_chunk(5),
            Err(PrivittyError::Truncated { chunk: 5, .. })
        ));
        r.seek_to_chunk(0).unwrap();
        assert_eq!(rest(&mut r).unwrap(), plain);
    }

    #[test]
    fn a_seek_cannot_pass_off_a_chunk_as_another_or_hide_damage() {
        let size = 3 * u64::from(C);
        let (bytes, plain, key) = sealed(size);
        let header_len = bytes.len() - (size as usize + 3 * TAG_LEN);
        let sealed_len = C as usize + TAG_LEN;
        // Chunk 1 swapped with chunk 0: starting at chunk 1 finds chunk 0's bytes, which fail.
        let mut swapped = bytes.clone();
        let (c0, c1) = (header_len, header_len + sealed_len);
        let first: Vec<u8> = swapped[c0..c1].to_vec();
        let second: Vec<u8> = swapped[c1..c1 + sealed_len].to_vec();
        swapped[c0..c1].copy_from_slice(&second);
        swapped[c1..c1 + sealed_len].copy_from_slice(&first);
        let mut r = reader(&swapped, &key);
        r.seek_to_chunk(1).unwrap();
        assert!(matches!(
            r.next_chunk(),
            Err(PrivittyError::Tampered { chunk: 1, .. })
        ));
        // A reader that failed keeps failing, also when asked to seek.
        assert!(r.seek_to_chunk(2).is_err());
        assert!(r.next_chunk().is_err());
        // The last chunk starting point still checks for trailing bytes.
        let mut longer = bytes.clone();
        longer.push(0);
        let mut r = reader(&longer, &key);
        r.seek_to_chunk(2).unwrap();
        assert!(matches!(
            r.next_chunk(),
            Err(PrivittyError::TrailingData { .. })
        ));
        // A file cut inside chunk 2, read from chunk 2.
        let mut r = reader(&bytes[..bytes.len() - 1], &key);
        r.seek_to_chunk(2).unwrap();
        assert!(matches!(
            r.next_chunk(),
            Err(PrivittyError::Truncated { chunk: 2, .. })
        ));
        // Untouched: chunk 2 alone is the plaintext's last third.
        let mut r = reader(&bytes, &key);
        r.seek_to_chunk(2).unwrap();
        assert_eq!(rest(&mut r).unwrap(), plain[2 * C as usize..]);
    }

    #[test]
    fn an_empty_file_has_one_starting_point() {
        let (bytes, _, key) = sealed(0);
        let mut r = reader(&bytes, &key);
        r.seek_to_chunk(0).unwrap();
        assert_eq!(r.next_chunk().unwrap(), Some(&[][..]));
        assert_eq!(r.next_chunk().unwrap(), None);
        assert!(r.seek_to_chunk(1).is_err());
    }
}
