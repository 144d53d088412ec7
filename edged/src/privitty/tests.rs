//! Unit tests of the Privitty module: real files in temp dirs, the real key store, the real
//! cipher. Each test prints the files under its temp dirs when it fails.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use uuid::Uuid;

use super::format::{self, CHUNK_SIZE, FIXED_LEN, TAG_LEN};
use super::*;

/// Lists every file (with size and mode) under the given dirs if the test panics.
struct DumpOnPanic(Vec<PathBuf>);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for root in &self.0 {
            eprintln!("--- files under {}", root.display());
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if let Ok(meta) = fs::symlink_metadata(&path) {
                        eprintln!(
                            "{:o} {:>10} {}",
                            meta.permissions().mode(),
                            meta.len(),
                            path.display()
                        );
                        if meta.is_dir() {
                            stack.push(path);
                        }
                    }
                }
            }
        }
    }
}

struct Env {
    // First, so it lists the files before the temp dirs are deleted.
    _dump: DumpOnPanic,
    accounts: TempDir,
    data: TempDir,
    p: Privitty,
}

impl Env {
    fn new() -> Env {
        let accounts = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let p = Privitty::open(accounts.path()).unwrap();
        let _dump = DumpOnPanic(vec![accounts.path().to_owned(), data.path().to_owned()]);
        Env {
            _dump,
            accounts,
            data,
            p,
        }
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.data.path().join(name);
        fs::write(&path, content).unwrap();
        path
    }

    fn send(&self, path: &Path, minutes: u64) -> Outcome {
        self.p
            .call(
                "privitty_send_file",
                &[
                    json!(1),
                    json!(12),
                    json!(20),
                    json!(path),
                    json!(true),
                    json!(false),
                    json!(minutes),
                ],
            )
            .expect("a privitty method")
            .unwrap()
    }

    fn send_group(&self, path: &Path) -> Outcome {
        self.p
            .call(
                "privitty_send_group_file",
                &[
                    json!(1),
                    json!(13),
                    json!(path),
                    json!(false),
                    json!(true),
                    json!(0),
                ],
            )
            .expect("a privitty method")
            .unwrap()
    }

    fn decrypt(&self, path: &Path) -> Result<Vec<u8>, PrivittyError> {
        let mut out = Vec::new();
        self.p.decrypt_to(path, &mut out)?;
        Ok(out)
    }

    /// Names in the data dir and the store's record dir, to prove a failed call wrote nothing.
    fn snapshot(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dir in [
            self.data.path().to_owned(),
            self.p.store_dir().join(store::FILES_DIR),
        ] {
            for entry in fs::read_dir(&dir).unwrap() {
                names.push(entry.unwrap().path().display().to_string());
            }
        }
        names.sort();
        names
    }
}

fn file_id_of(outcome: &Outcome) -> Uuid {
    Uuid::parse_str(outcome.result["file_id"].as_str().unwrap()).unwrap()
}

fn prv_path(outcome: &Outcome) -> PathBuf {
    PathBuf::from(outcome.result["encrypted_path"].as_str().unwrap())
}

/// Deterministic, incompressible test content.
fn pseudo_random(seed: u64, buf: &mut [u8]) {
    let mut x = seed | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn round_trip(size: usize) {
    let env = Env::new();
    let mut content = vec![0u8; size];
    pseudo_random(size as u64, &mut content);
    let path = env.file("report.pdf", &content);
    let out = env.send(&path, 0);

    let prv = prv_path(&out);
    assert_eq!(prv, env.data.path().join("report.pdf.prv"));
    assert_eq!(out.result["expires_at"], Value::Null);
    let file_id = file_id_of(&out);
    assert_eq!(
        out.events,
        vec![
            json!({"type":"PrivittyFileEncrypted","account_id":1,"chat_id":12,"file_id":file_id,"peer_contact_id":20})
        ]
    );
    let chunks = size.div_ceil(CHUNK_SIZE as usize).max(1);
    let header_len = FIXED_LEN + "report.pdf".len() + 2;
    assert_eq!(
        fs::metadata(&prv).unwrap().len() as usize,
        header_len + size + chunks * TAG_LEN,
        "a .prv is its header plus one tag per chunk"
    );
    assert_ne!(
        fs::read(&prv).unwrap()[header_len..],
        content[..],
        "content is encrypted"
    );
    assert_eq!(env.decrypt(&prv).unwrap(), content);
    assert_eq!(
        fs::read(&path).unwrap(),
        content,
        "the source is left alone"
    );
}

#[test]
fn round_trip_empty_file() {
    round_trip(0);
}

#[test]
fn round_trip_small_file() {
    round_trip(1);
    round_trip(1000);
}

#[test]
fn round_trip_exact_chunk_multiples_and_one_past() {
    round_trip(CHUNK_SIZE as usize);
    round_trip(2 * CHUNK_SIZE as usize);
    round_trip(2 * CHUNK_SIZE as usize + 1);
    round_trip(CHUNK_SIZE as usize - 1);
}

#[test]
fn large_file_streams_through_fixed_buffers() {
    const SIZE: u64 = 20 * 1024 * 1024 + 12345;
    let env = Env::new();
    let path = env.data.path().join("video.bin");
    let mut expected = Sha256::new();
    {
        let mut f = fs::File::create(&path).unwrap();
        let mut block = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        while written < SIZE {
            let n = block.len().min((SIZE - written) as usize);
            pseudo_random(written + 7, &mut block[..n]);
            f.write_all(&block[..n]).unwrap();
            expected.update(&block[..n]);
            written += n as u64;
        }
    }
    let expected = expected.finalize();
    let prv = prv_path(&env.send(&path, 0));

    // Chunk API: every chunk fits the one buffer allocated up front, and that buffer never grows.
    let mut reader = env.p.open_reader(&prv).unwrap();
    let capacity = reader.buffer_capacity();
    assert_eq!(capacity, CHUNK_SIZE as usize + TAG_LEN);
    let mut hasher = Sha256::new();
    let (mut total, mut chunks) = (0u64, 0u64);
    while let Some(chunk) = reader.next_chunk().unwrap() {
        assert!(chunk.len() <= CHUNK_SIZE as usize);
        hasher.update(chunk);
        total += chunk.len() as u64;
        chunks += 1;
    }
    assert_eq!(
        reader.buffer_capacity(),
        capacity,
        "the chunk buffer never reallocates"
    );
    assert_eq!(
        (total, chunks),
        (SIZE, SIZE.div_ceil(u64::from(CHUNK_SIZE)))
    );
    assert_eq!(hasher.finalize(), expected);

    // io::Read API with a small caller buffer.
    let mut reader = env.p.open_reader(&prv).unwrap();
    let mut hasher = Sha256::new();
    let mut small = [0u8; 1000];
    loop {
        let n = reader.read(&mut small).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&small[..n]);
    }
    assert_eq!(hasher.finalize(), expected);
    assert_eq!(reader.buffer_capacity(), capacity);
}

#[test]
fn encryption_writes_one_chunk_at_a_time() {
    /// Records the largest single write.
    struct Widest(usize, u64);
    impl Write for Widest {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.max(buf.len());
            self.1 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    const SIZE: u64 = 5 * CHUNK_SIZE as u64 + 3;
    let header = Header {
        file_id: Uuid::new_v4(),
        account_id: 1,
        chat_id: 12,
        peer_contact_id: None,
        allow_download: false,
        allow_forward: false,
        created_at: 0,
        expires_at: None,
        original_name: "stream".to_owned(),
        original_size: SIZE,
        chunk_size: CHUNK_SIZE,
        nonce_prefix: [7; format::NONCE_PREFIX_LEN],
    };
    let mut out = Widest(0, 0);
    let mut src = std::io::repeat(0x5a).take(SIZE);
    format::encrypt(
        &header,
        &FileKey::random(),
        &mut src,
        Path::new("/src"),
        &mut out,
        Path::new("/dst"),
    )
    .unwrap();
    assert_eq!(
        out.0,
        CHUNK_SIZE as usize + TAG_LEN,
        "never more than one sealed chunk at once"
    );
    assert_eq!(
        out.1,
        header.encode().len() as u64 + SIZE + 6 * TAG_LEN as u64
    );

    // A source longer or shorter than the size it had when opened is refused.
    let mut longer = std::io::repeat(0x5a).take(SIZE + 1);
    let err = format::encrypt(
        &header,
        &FileKey::random(),
        &mut longer,
        Path::new("/src"),
        &mut std::io::sink(),
        Path::new("/dst"),
    )
    .unwrap_err();
    assert!(
        matches!(err, PrivittyError::SourceChanged { expected: SIZE, .. }),
        "{err}"
    );
    let mut shorter = std::io::repeat(0x5a).take(SIZE - 1);
    let err = format::encrypt(
        &header,
        &FileKey::random(),
        &mut shorter,
        Path::new("/src"),
        &mut std::io::sink(),
        Path::new("/dst"),
    )
    .unwrap_err();
    assert!(matches!(err, PrivittyError::SourceChanged { .. }), "{err}");
}

#[test]
fn header_bytes_are_as_documented() {
    let env = Env::new();
    let path = env.file("a.txt", b"hello");
    let before = SystemTime::now();
    let out = env.send(&path, 90);
    let bytes = fs::read(prv_path(&out)).unwrap();
    let file_id = file_id_of(&out);
    assert_eq!(&bytes[0..8], b"\x89PRV\r\n\x1a\n");
    assert_eq!(&bytes[8..10], &[0, 1], "version 1");
    assert_eq!(
        &bytes[10..12],
        &[0, 0b01],
        "allow_download only, not a group"
    );
    assert_eq!(
        u32::from_be_bytes(bytes[12..16].try_into().unwrap()),
        93 + 5 + 2
    );
    assert_eq!(&bytes[16..32], file_id.as_bytes());
    assert_eq!(u32::from_be_bytes(bytes[32..36].try_into().unwrap()), 1);
    assert_eq!(u32::from_be_bytes(bytes[36..40].try_into().unwrap()), 12);
    assert_eq!(u32::from_be_bytes(bytes[40..44].try_into().unwrap()), 20);
    let created = i64::from_be_bytes(bytes[44..52].try_into().unwrap());
    assert!(created >= unix_seconds(before));
    assert_eq!(
        i64::from_be_bytes(bytes[52..60].try_into().unwrap()),
        created + 90 * 60
    );
    assert_eq!(u64::from_be_bytes(bytes[60..68].try_into().unwrap()), 5);
    assert_eq!(
        u32::from_be_bytes(bytes[68..72].try_into().unwrap()),
        CHUNK_SIZE
    );
    assert_eq!(u16::from_be_bytes(bytes[91..93].try_into().unwrap()), 5);
    assert_eq!(&bytes[93..98], b"a.txt");
    assert_eq!(&bytes[98..100], &[0, 0], "no key slots");
    assert_eq!(bytes.len(), 100 + 5 + TAG_LEN);
    assert_eq!(out.result["expires_at"], json!(rfc3339(created + 90 * 60)));

    let group = env.send_group(&env.file("g.txt", b"x"));
    let bytes = fs::read(prv_path(&group)).unwrap();
    assert_eq!(&bytes[10..12], &[0, 0b110], "allow_forward + group");
    assert_eq!(&bytes[40..44], &[0, 0, 0, 0], "no peer in a group file");
    assert_eq!(&bytes[52..60], &[0; 8], "no expiry");
    assert_eq!(group.events[0].get("peer_contact_id"), None);
}

/// A three-chunk file and its key, for tampering at the format level.
struct Sample {
    env: Env,
    prv: PathBuf,
    bytes: Vec<u8>,
    header_len: usize,
    content: Vec<u8>,
}

impl Sample {
    fn new() -> Sample {
        let env = Env::new();
        let mut content = vec![0u8; 2 * CHUNK_SIZE as usize + 100];
        pseudo_random(3, &mut content);
        let path = env.file("three.bin", &content);
        let prv = prv_path(&env.send(&path, 0));
        let bytes = fs::read(&prv).unwrap();
        Sample {
            header_len: FIXED_LEN + "three.bin".len() + 2,
            env,
            prv,
            bytes,
            content,
        }
    }

    fn chunk_at(&self, index: usize) -> usize {
        self.header_len + index * (CHUNK_SIZE as usize + TAG_LEN)
    }

    /// Writes `bytes` as a new `.prv` and decrypts it through the store.
    fn decrypt_variant(&self, name: &str, bytes: &[u8]) -> Result<Vec<u8>, PrivittyError> {
        let path = self.env.data.path().join(name);
        fs::write(&path, bytes).unwrap();
        self.env.decrypt(&path)
    }

    /// Decrypts `bytes` with `key`, bypassing the store's header check, to exercise the AEAD.
    fn decrypt_with_key(&self, bytes: &[u8], key: &FileKey) -> Result<Vec<u8>, PrivittyError> {
        let mut src = bytes;
        let (header, header_bytes) = Header::read_from(&mut src, Path::new("/variant.prv"))?;
        let mut out = Vec::new();
        PrvReader::new(src, Path::new("/variant.prv"), header, &header_bytes, key)
            .decrypt_to(&mut out)?;
        Ok(out)
    }

    fn key(&self) -> FileKey {
        let mut src = &self.bytes[..];
        let (header, _) = Header::read_from(&mut src, &self.prv).unwrap();
        let record = self.env.p.store.get(header.file_id).unwrap();
        self.env.p.store.unwrap(&record).unwrap()
    }
}

#[test]
fn untouched_sample_decrypts() {
    let s = Sample::new();
    assert_eq!(s.decrypt_variant("copy.prv", &s.bytes).unwrap(), s.content);
    assert_eq!(s.decrypt_with_key(&s.bytes, &s.key()).unwrap(), s.content);
}

#[test]
fn tampered_header_is_refused() {
    let s = Sample::new();
    let mut bytes = s.bytes.clone();
    bytes[39] ^= 1; // chat id
    let err = s.decrypt_variant("chat.prv", &bytes).unwrap_err();
    assert!(matches!(err, PrivittyError::RecordMismatch { .. }), "{err}");
    // Even with the right key the header is authenticated by every chunk.
    let err = s.decrypt_with_key(&bytes, &s.key()).unwrap_err();
    assert!(
        matches!(err, PrivittyError::Tampered { chunk: 0, .. }),
        "{err}"
    );
    assert_eq!(err.rpc_code(), -32042);
    assert!(err.is_decryption_failure());

    let mut bytes = s.bytes.clone();
    bytes[0] = b'P';
    let err = s.decrypt_variant("magic.prv", &bytes).unwrap_err();
    assert!(matches!(err, PrivittyError::NotPrv { .. }), "{err}");

    let mut bytes = s.bytes.clone();
    bytes[9] = 2;
    let err = s.decrypt_variant("version.prv", &bytes).unwrap_err();
    assert!(
        matches!(err, PrivittyError::UnsupportedVersion { version: 2, .. }),
        "{err}"
    );

    let mut bytes = s.bytes.clone();
    bytes[10] = 0x80;
    let err = s.decrypt_variant("flags.prv", &bytes).unwrap_err();
    assert!(err.to_string().contains("unknown flags"), "{err}");

    let err = s.decrypt_variant("short.prv", &s.bytes[..50]).unwrap_err();
    assert!(matches!(err, PrivittyError::NotPrv { .. }), "{err}");
}

#[test]
fn tampered_chunk_is_refused_and_only_verified_chunks_are_released() {
    let s = Sample::new();
    let mut bytes = s.bytes.clone();
    let at = s.chunk_at(1) + 10;
    bytes[at] ^= 0x40;
    let path = s.env.data.path().join("chunk.prv");
    fs::write(&path, &bytes).unwrap();
    let mut reader = s.env.p.open_reader(&path).unwrap();
    assert_eq!(
        reader.next_chunk().unwrap().unwrap(),
        &s.content[..CHUNK_SIZE as usize]
    );
    let err = reader.next_chunk().unwrap_err();
    assert!(
        matches!(err, PrivittyError::Tampered { chunk: 1, .. }),
        "{err}"
    );
    let again = reader.next_chunk().unwrap_err();
    assert!(
        matches!(again, PrivittyError::Tampered { .. }),
        "a failed reader never ends cleanly: {again}"
    );

    // Through io::Read the error is InvalidData wrapping the same error.
    let mut reader = s.env.p.open_reader(&path).unwrap();
    let err = std::io::copy(&mut reader, &mut std::io::sink()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<PrivittyError>())
        .unwrap();
    assert!(matches!(inner, PrivittyError::Tampered { chunk: 1, .. }));
    // A caller that reads on after the error gets the error again, never the sealed bytes of the
    // chunk that failed (found by the prv_reader fuzz target).
    let mut out = [0u8; 64];
    for _ in 0..3 {
        let again = std::io::Read::read(&mut reader, &mut out).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::InvalidData);
    }
    // Truncated in the last chunk: the same.
    let cut = &s.bytes[..s.bytes.len() - 1];
    let path = s.env.data.path().join("cut.prv");
    fs::write(&path, cut).unwrap();
    let mut reader = s.env.p.open_reader(&path).unwrap();
    assert!(std::io::copy(&mut reader, &mut std::io::sink()).is_err());
    assert!(std::io::Read::read(&mut reader, &mut out).is_err());
}

#[test]
fn reordered_chunks_are_refused() {
    let s = Sample::new();
    let mut bytes = s.bytes.clone();
    let (a, b, step) = (s.chunk_at(0), s.chunk_at(1), CHUNK_SIZE as usize + TAG_LEN);
    let first = bytes[a..a + step].to_vec();
    bytes.copy_within(b..b + step, a);
    bytes[b..b + step].copy_from_slice(&first);
    let err = s.decrypt_variant("swapped.prv", &bytes).unwrap_err();
    assert!(
        matches!(err, PrivittyError::Tampered { chunk: 0, .. }),
        "{err}"
    );
}

#[test]
fn truncated_files_are_refused() {
    let s = Sample::new();
    let err = s
        .decrypt_variant("minus1.prv", &s.bytes[..s.bytes.len() - 1])
        .unwrap_err();
    assert!(
        matches!(err, PrivittyError::Truncated { chunk: 2, .. }),
        "{err}"
    );
    assert_eq!(err.rpc_code(), -32043);
    // Cut exactly at a chunk boundary: the header says how many chunks there must be.
    let err = s
        .decrypt_variant("minus-chunk.prv", &s.bytes[..s.chunk_at(2)])
        .unwrap_err();
    assert!(
        matches!(err, PrivittyError::Truncated { chunk: 2, .. }),
        "{err}"
    );
    let err = s
        .decrypt_variant("header-only.prv", &s.bytes[..s.header_len])
        .unwrap_err();
    assert!(
        matches!(err, PrivittyError::Truncated { chunk: 0, .. }),
        "{err}"
    );
}

#[test]
fn extended_files_are_refused() {
    let s = Sample::new();
    let mut bytes = s.bytes.clone();
    bytes.push(0);
    let err = s.decrypt_variant("plus1.prv", &bytes).unwrap_err();
    assert!(matches!(err, PrivittyError::TrailingData { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32044);
    let mut bytes = s.bytes.clone();
    bytes.extend_from_slice(&s.bytes[s.chunk_at(2)..]);
    let err = s.decrypt_variant("plus-chunk.prv", &bytes).unwrap_err();
    assert!(matches!(err, PrivittyError::TrailingData { .. }), "{err}");
}

#[test]
fn wrong_key_is_refused() {
    let s = Sample::new();
    let err = s
        .decrypt_with_key(&s.bytes, &FileKey::random())
        .unwrap_err();
    assert!(
        matches!(err, PrivittyError::Tampered { chunk: 0, .. }),
        "{err}"
    );

    // The record copied into another device's store does not unwrap under its master key.
    let other = Env::new();
    let records = |p: &Privitty| p.store_dir().join(store::FILES_DIR);
    for entry in fs::read_dir(records(&s.env.p)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), records(&other.p).join(entry.file_name())).unwrap();
    }
    let err = other.decrypt(&s.prv).unwrap_err();
    assert!(matches!(err, PrivittyError::KeyStore { .. }), "{err}");
    assert!(err.to_string().contains("does not unwrap"), "{err}");
}

#[test]
fn unknown_file_is_refused() {
    let s = Sample::new();
    let other = Env::new();
    let err = other.decrypt(&s.prv).unwrap_err();
    assert!(matches!(err, PrivittyError::UnknownFile { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32020);
}

#[test]
fn revoking_a_direct_file_destroys_its_key() {
    let env = Env::new();
    let content = b"secret plans".to_vec();
    let out = env.send(&env.file("plans.txt", &content), 0);
    let (prv, file_id) = (prv_path(&out), file_id_of(&out));
    assert_eq!(env.decrypt(&prv).unwrap(), content);

    let revoke = |peer: u32, chat: u32| {
        env.p
            .call(
                "privitty_revoke_file_access",
                &[json!(1), json!(chat), json!(file_id), json!(peer)],
            )
            .unwrap()
    };
    let err = revoke(21, 12).unwrap_err();
    assert!(
        matches!(err, PrivittyError::NotRecipient { recipient: 20, .. }),
        "{err}"
    );
    let err = revoke(20, 99).unwrap_err();
    assert!(
        matches!(err, PrivittyError::WrongChat { chat_id: 12, .. }),
        "{err}"
    );
    assert_eq!(
        env.decrypt(&prv).unwrap(),
        content,
        "failed revocations change nothing"
    );

    let done = revoke(20, 12).unwrap();
    assert_eq!(
        done.events,
        vec![
            json!({"type":"PrivittyFileAccessRevoked","account_id":1,"chat_id":12,"file_id":file_id,"peer_contact_id":20})
        ]
    );
    assert_eq!(done.result["key_destroyed"], json!(true));
    assert_eq!(done.result["already_revoked"], json!(false));
    let err = env.decrypt(&prv).unwrap_err();
    assert!(matches!(err, PrivittyError::Revoked { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32030);

    let record = env.p.file_record(file_id).unwrap();
    assert_eq!(
        record.wrapped_key, None,
        "the wrapped key is gone from the store"
    );
    let info = env
        .p
        .call("privitty_get_file_info", &[json!(1), json!(file_id)])
        .unwrap()
        .unwrap();
    assert_eq!(info.result["status"], json!("revoked"));
    assert_eq!(info.result["revoked_peers"], json!([20]));
    assert!(info.result["revoked_at"].is_string());

    let again = revoke(20, 12).unwrap();
    assert_eq!(again.result["already_revoked"], json!(true));
    assert!(
        again.events.is_empty(),
        "an idempotent repeat emits nothing"
    );

    // The revocation survives a restart.
    drop(env.p);
    let p = Privitty::open(env.accounts.path()).unwrap();
    assert!(matches!(
        p.decrypt_to(&prv, &mut Vec::new()),
        Err(PrivittyError::Revoked { .. })
    ));
}

#[test]
fn revoking_a_group_member_keeps_the_key_for_the_others() {
    let env = Env::new();
    let out = env.send_group(&env.file("minutes.txt", b"group content"));
    let (prv, file_id) = (prv_path(&out), file_id_of(&out));
    let revoke = |peer: u32| {
        env.p
            .call(
                "privitty_revoke_file_access",
                &[json!(1), json!(13), json!(file_id), json!(peer)],
            )
            .unwrap()
            .unwrap()
    };
    let done = revoke(31);
    assert_eq!(done.result["key_destroyed"], json!(false));
    let now = SystemTime::now();
    assert!(matches!(
        env.p.open_reader_for(&prv, Some(31), now),
        Err(PrivittyError::Revoked { .. })
    ));
    assert!(env.p.open_reader_for(&prv, Some(32), now).is_ok());
    assert_eq!(env.decrypt(&prv).unwrap(), b"group content");
    let info = env
        .p
        .call("privitty_get_file_info", &[json!(1), json!(file_id)])
        .unwrap()
        .unwrap();
    assert_eq!(info.result["status"], json!("active"));
    assert_eq!(info.result["group"], json!(true));
    assert_eq!(info.result["revoked_peers"], json!([31]));

    let all = revoke(0);
    assert_eq!(all.result["key_destroyed"], json!(true));
    assert_eq!(all.events.len(), 1);
    assert!(matches!(
        env.decrypt(&prv),
        Err(PrivittyError::Revoked { .. })
    ));
}

#[test]
fn expiry_is_enforced_from_the_recorded_time() {
    let env = Env::new();
    let start = SystemTime::now();
    let path = env.file("brief.txt", b"short-lived");
    let out = env
        .p
        .call_at(
            "privitty_send_file",
            &[
                json!(1),
                json!(12),
                json!(20),
                json!(path),
                json!(false),
                json!(false),
                json!(1),
            ],
            start,
        )
        .unwrap()
        .unwrap();
    let (prv, file_id) = (prv_path(&out), file_id_of(&out));
    let expires_at = unix_seconds(start) + 60;
    assert_eq!(out.result["expires_at"], json!(rfc3339(expires_at)));
    let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64);
    assert!(
        env.p
            .open_reader_for(&prv, None, at(expires_at - 1))
            .is_ok()
    );
    let err = env
        .p
        .open_reader_for(&prv, None, at(expires_at))
        .unwrap_err();
    assert!(matches!(err, PrivittyError::Expired { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32031);
    let info = env
        .p
        .call_at(
            "privitty_get_file_info",
            &[json!(1), json!(file_id)],
            at(expires_at),
        )
        .unwrap()
        .unwrap();
    assert_eq!(info.result["status"], json!("expired"));
}

#[test]
fn relative_path_is_invalid_params() {
    let env = Env::new();
    let before = env.snapshot();
    let err = env
        .p
        .call(
            "privitty_send_file",
            &[
                json!(1),
                json!(12),
                json!(20),
                json!("docs/a.txt"),
                json!(true),
                json!(true),
                json!(0),
            ],
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(err.rpc_code(), -32602);
    assert!(
        err.to_string()
            .contains("parameter 4 `path` must be an absolute path"),
        "{err}"
    );
    assert!(err.to_string().contains("\"docs/a.txt\""), "{err}");
    assert_eq!(env.snapshot(), before);
}

fn send_err(env: &Env, path: &Path) -> PrivittyError {
    let before = env.snapshot();
    let err = send_err_unchecked(env, path);
    assert_eq!(
        env.snapshot(),
        before,
        "a failed call writes nothing ({err})"
    );
    err
}

fn send_err_unchecked(env: &Env, path: &Path) -> PrivittyError {
    env.p
        .call(
            "privitty_send_file",
            &[
                json!(1),
                json!(12),
                json!(20),
                json!(path),
                json!(true),
                json!(true),
                json!(0),
            ],
        )
        .unwrap()
        .unwrap_err()
}

#[test]
fn symlinks_are_refused() {
    let env = Env::new();
    let target = env.file("real.txt", b"x");
    let link = env.data.path().join("link.txt");
    symlink(&target, &link).unwrap();
    let err = send_err(&env, &link);
    assert!(matches!(err, PrivittyError::Symlink { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32011);
    assert!(err.to_string().contains("link.txt"), "{err}");

    // A symlink (even dangling) where the .prv would go counts as an existing output.
    symlink(
        env.data.path().join("elsewhere"),
        env.data.path().join("real.txt.prv"),
    )
    .unwrap();
    let err = send_err(&env, &target);
    assert!(matches!(err, PrivittyError::OutputExists { .. }), "{err}");
    assert!(!env.data.path().join("elsewhere").exists());
}

#[test]
fn directories_and_fifos_are_refused() {
    let env = Env::new();
    let dir = env.data.path().join("folder");
    fs::create_dir(&dir).unwrap();
    let err = send_err(&env, &dir);
    assert!(
        matches!(
            err,
            PrivittyError::NotRegularFile {
                kind: "directory",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.rpc_code(), -32012);

    let fifo = env.data.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = send_err(&env, &fifo);
    assert!(
        matches!(
            err,
            PrivittyError::NotRegularFile {
                kind: "named pipe",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_file_is_refused() {
    let env = Env::new();
    let err = send_err(&env, &env.data.path().join("nope.txt"));
    assert!(matches!(err, PrivittyError::NotFound { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32010);
    assert!(err.to_string().contains("nope.txt"), "{err}");
    let err = send_err(&env, &env.data.path().join("no-dir/nope.txt"));
    assert!(matches!(err, PrivittyError::NotFound { .. }), "{err}");
}

#[test]
fn unreadable_file_is_refused() {
    let env = Env::new();
    fs::set_permissions(env.data.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = env.file("locked.txt", b"x");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads anything: drop to an unprivileged filesystem uid on a dedicated thread (fsuid is
    // per thread and clears the DAC override capabilities).
    let before = env.snapshot();
    let err = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if nix::unistd::geteuid().is_root() {
                    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(65534));
                }
                assert!(
                    fs::File::open(&path).is_err(),
                    "the file must be unreadable for this test"
                );
                send_err_unchecked(&env, &path)
            })
            .join()
            .unwrap()
    });
    assert_eq!(
        env.snapshot(),
        before,
        "a failed call writes nothing ({err})"
    );
    assert!(
        matches!(err, PrivittyError::PermissionDenied { .. }),
        "{err}"
    );
    assert_eq!(err.rpc_code(), -32013);
    assert!(err.to_string().contains("locked.txt"), "{err}");
}

#[test]
fn unwritable_directory_is_refused() {
    let env = Env::new();
    fs::set_permissions(env.data.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = env.file("readable.txt", b"x");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let before = env.snapshot();
    let err = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if nix::unistd::geteuid().is_root() {
                    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(65534));
                }
                send_err_unchecked(&env, &path)
            })
            .join()
            .unwrap()
    });
    assert_eq!(
        env.snapshot(),
        before,
        "a failed call writes nothing ({err})"
    );
    assert!(
        matches!(err, PrivittyError::PermissionDenied { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&env.data.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn existing_prv_is_never_overwritten() {
    let env = Env::new();
    let path = env.file("doc.txt", b"new content");
    let existing = env.file("doc.txt.prv", b"precious");
    let err = send_err(&env, &path);
    assert!(matches!(err, PrivittyError::OutputExists { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32014);
    assert_eq!(fs::read(&existing).unwrap(), b"precious");

    // Sending twice: the second refuses rather than replace the first.
    let env = Env::new();
    let path = env.file("doc.txt", b"content");
    let first = env.send(&path, 0);
    let prv_before = fs::read(prv_path(&first)).unwrap();
    let err = send_err(&env, &path);
    assert!(matches!(err, PrivittyError::OutputExists { .. }), "{err}");
    assert_eq!(fs::read(prv_path(&first)).unwrap(), prv_before);
}

#[test]
fn store_survives_reopen_and_keeps_secrets_private() {
    let env = Env::new();
    let out = env.send(&env.file("keep.txt", b"kept"), 0);
    let (prv, file_id) = (prv_path(&out), file_id_of(&out));

    let store_dir = env.accounts.path().join(store::STORE_DIR);
    let master = store_dir.join(store::MASTER_KEY_FILE);
    let meta = fs::metadata(&master).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    assert_eq!(
        fs::metadata(&store_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let record_path = store_dir
        .join(store::FILES_DIR)
        .join(format!("{file_id}.json"));
    assert_eq!(
        fs::metadata(&record_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The clear file key appears nowhere: not in the record, the result, the events or Debug.
    let mut src = fs::File::open(&prv).unwrap();
    let (header, _) = Header::read_from(&mut src, &prv).unwrap();
    let key = env
        .p
        .store
        .unwrap(&env.p.store.get(header.file_id).unwrap())
        .unwrap();
    let key_hex = hex::encode(key.0);
    let master_hex = hex::encode(fs::read(&master).unwrap());
    let visible = format!(
        "{} {} {:?} {:?} {:?}",
        fs::read_to_string(&record_path).unwrap(),
        out.result,
        out.events,
        env.p,
        key
    );
    assert!(
        !visible.contains(&key_hex) && !visible.contains(&master_hex),
        "{visible}"
    );

    let master_before = fs::read(&master).unwrap();
    drop(env.p);
    let p = Privitty::open(env.accounts.path()).unwrap();
    assert_eq!(
        fs::read(&master).unwrap(),
        master_before,
        "the master key is created once"
    );
    let mut plain = Vec::new();
    p.decrypt_to(&prv, &mut plain).unwrap();
    assert_eq!(plain, b"kept");
    let leftovers: Vec<_> = fs::read_dir(&store_dir)
        .unwrap()
        .chain(fs::read_dir(store_dir.join(store::FILES_DIR)).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}

#[test]
fn unsafe_master_key_files_are_refused() {
    let accounts = tempfile::tempdir().unwrap();
    let _dump = DumpOnPanic(vec![accounts.path().to_owned()]);
    drop(Privitty::open(accounts.path()).unwrap());
    let master = accounts.path().join("privitty/master.key");

    fs::set_permissions(&master, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Privitty::open(accounts.path()).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    assert_eq!(err.rpc_code(), -32050);

    fs::set_permissions(&master, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&master, [0u8; 31]).unwrap();
    let err = Privitty::open(accounts.path()).unwrap_err();
    assert!(
        err.to_string().contains("is 31 bytes, expected 32"),
        "{err}"
    );
    assert_eq!(
        fs::read(&master).unwrap().len(),
        31,
        "a damaged key is never silently replaced"
    );
}

#[test]
fn parameters_are_checked_exactly() {
    let env = Env::new();
    let path = env.file("p.txt", b"x");
    let p = json!(path);
    let id = json!(Uuid::new_v4());
    let cases: Vec<(&str, Vec<Value>, &str)> = vec![
        (
            "privitty_send_file",
            vec![json!(1)],
            "privitty_send_file takes 7 parameters [account_id, chat_id, peer_contact_id, path, allow_download, allow_forward, duration_minutes], got 1",
        ),
        (
            "privitty_send_file",
            vec![
                json!("1"),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 1 `account_id` must be an integer from 1 to 4294967295, got \"1\"",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12.5),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 2 `chat_id` must be an integer",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(0),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 2 `chat_id` must be an integer from 1",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(-3),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 3 `peer_contact_id` must be an integer from 1",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                json!(42),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 4 `path` must be a string with an absolute file path, got the number 42",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                json!("/tmp/"),
                json!(true),
                json!(true),
                json!(0),
            ],
            "parameter 4 `path` must be the path of a file",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(1),
                json!(true),
                json!(0),
            ],
            "parameter 5 `allow_download` must be a boolean (true or false), got the number 1",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(null),
                json!(0),
            ],
            "parameter 6 `allow_forward` must be a boolean (true or false), got null",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(-1),
            ],
            "parameter 7 `duration_minutes` must be an integer number of minutes from 0 (no expiry)",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!("60"),
            ],
            "parameter 7 `duration_minutes`",
        ),
        (
            "privitty_send_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(MAX_DURATION_MINUTES + 1),
            ],
            "parameter 7 `duration_minutes`",
        ),
        (
            "privitty_send_group_file",
            vec![
                json!(1),
                json!(12),
                json!(20),
                p.clone(),
                json!(true),
                json!(true),
                json!(0),
            ],
            "privitty_send_group_file takes 6 parameters",
        ),
        (
            "privitty_send_group_file",
            vec![
                json!(1),
                json!(12),
                p.clone(),
                json!(true),
                json!("yes"),
                json!(0),
            ],
            "parameter 5 `allow_forward` must be a boolean",
        ),
        (
            "privitty_revoke_file_access",
            vec![json!(1), json!(12), json!("abc"), json!(20)],
            "parameter 3 `file_id` must be a file id string as returned by privitty_send_file (a UUID), got \"abc\"",
        ),
        (
            "privitty_revoke_file_access",
            vec![json!(1), json!(12), id.clone(), json!(true)],
            "parameter 4 `peer_contact_id` must be an integer from 0",
        ),
        (
            "privitty_get_file_info",
            vec![json!(1), json!([id.clone()])],
            "parameter 2 `file_id` must be a file id string",
        ),
    ];
    let before = env.snapshot();
    for (method, params, expected) in cases {
        let err = env
            .p
            .call(method, &params)
            .expect("a privitty method")
            .unwrap_err();
        assert_eq!(err.rpc_code(), -32602, "{method} {params:?}: {err}");
        assert!(
            err.to_string().contains(expected),
            "{method} {params:?}:\n  got      {err}\n  expected {expected}"
        );
    }
    assert_eq!(env.snapshot(), before);
    assert!(
        env.p.call("get_info", &[json!(1)]).is_none(),
        "not a method of this module"
    );
    for method in Privitty::METHODS {
        assert!(
            env.p.call(method, &[]).is_some(),
            "{method} is listed and implemented"
        );
    }
    let err = env
        .p
        .call("privitty_get_file_info", &[json!(1), id])
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PrivittyError::UnknownFile { .. }), "{err}");
}

#[test]
fn privitty_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Privitty>();
    shared::<PrivittyError>();
}

#[test]
fn concurrent_revocations_of_one_group_file_are_all_kept() {
    let env = Env::new();
    let out = env.send_group(&env.file("shared.txt", b"s"));
    let file_id = file_id_of(&out);
    std::thread::scope(|scope| {
        for peer in 40..48u32 {
            let p = &env.p;
            scope.spawn(move || p.revoke(1, 13, file_id, peer, SystemTime::now()).unwrap());
        }
    });
    let mut revoked = env.p.file_record(file_id).unwrap().revoked_peers;
    revoked.sort();
    assert_eq!(revoked, (40..48).collect::<Vec<_>>());
}

/// Throughput figures next to a baseline (a plain file copy of the same bytes); prints, never
/// asserts. Run: `cargo test -p edged --release privitty::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: run explicitly in release mode"]
fn throughput() {
    const SIZE: usize = 256 * 1024 * 1024;
    let env = Env::new();
    let path = env.data.path().join("bench.bin");
    {
        let mut f = fs::File::create(&path).unwrap();
        let mut block = vec![0u8; 1024 * 1024];
        for i in 0..SIZE / block.len() {
            pseudo_random(i as u64, &mut block);
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    let mib = (SIZE / (1024 * 1024)) as f64;
    let rate = |start: std::time::Instant| mib / start.elapsed().as_secs_f64();

    let start = std::time::Instant::now();
    fs::copy(&path, env.data.path().join("copy.bin")).unwrap();
    let copy = rate(start);
    let start = std::time::Instant::now();
    let prv = prv_path(&env.send(&path, 0));
    let encrypt = rate(start);
    let start = std::time::Instant::now();
    let mut reader = env.p.open_reader(&prv).unwrap();
    let mut total = 0usize;
    while let Some(chunk) = reader.next_chunk().unwrap() {
        total += chunk.len();
    }
    assert_eq!(total, SIZE);
    let decrypt = rate(start);
    println!(
        "privitty throughput over {mib} MiB: baseline file copy {copy:.0} MiB/s, encrypt to .prv (incl. fsync) {encrypt:.0} MiB/s, streaming decrypt {decrypt:.0} MiB/s"
    );
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: unknown");
    println!(
        "peak resident memory of the whole test process: {}",
        peak.trim_start_matches("VmHWM:").trim()
    );
}
