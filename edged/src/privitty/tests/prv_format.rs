//! The `.prv` format: round trips, the documented header bytes, every kind of tampering, throughput.

use super::*;

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
        meta: FileMeta {
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
        },
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
        let record = self.env.p.store.get(header.meta.file_id).unwrap();
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

/// Throughput figures next to a baseline (a plain file copy of the same bytes); prints, never
/// asserts. Run: `cargo test -p edged --release privitty::tests::prv_format::throughput -- --ignored --nocapture`.
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
