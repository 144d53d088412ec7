//! Fuzzes the `.prv` reader (`edged::privitty::format`): `Header::read_from` and the streaming
//! decryption of `PrvReader`, the code a received protected file reaches first.
//!
//! Input: a control byte (bit 0: 0 raw file bytes, 1 constructed; bit 1: drain through `Read`
//! instead of `next_chunk`). Constructed inputs describe a header and a plaintext length; the
//! target encrypts with `format::encrypt` under a key fixed for the process, then applies the
//! 4-byte edits that follow (`privitty_edge_fuzz::mutate`), so the fuzzer explores truncated,
//! reordered, extended and flipped files that were valid.
//!
//! The file key comes from `FileKey::random()` once per process (the format module has no
//! constructor from bytes, and none is needed): whether an input decrypts never depends on the
//! key's value, so crashes replay.
//!
//! Oracles: a header that parses re-encodes to the exact bytes read; a consistent header
//! round-trips; an unedited file decrypts to its plaintext; a file that decrypts completely is
//! byte-identical to the one encrypted (raw bytes never decrypt); released plaintext is always a
//! prefix of the real one; the reader's one buffer never grows and stays under the format's
//! cap; a failed reader keeps failing and a finished one stays finished.

#![no_main]

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use edged::privitty::FileMeta;
use edged::privitty::format::{self, FileKey, Header, PrvReader};
use libfuzzer_sys::fuzz_target;
use privitty_edge_fuzz::input::Cursor;
use privitty_edge_fuzz::mutate;

/// Largest plaintext a constructed input encrypts (16 chunks of the smallest size).
const MAX_PLAIN: usize = 16 * 1024;

fn key() -> &'static FileKey {
    static KEY: OnceLock<FileKey> = OnceLock::new();
    KEY.get_or_init(FileKey::random)
}

/// What reading a file gave.
struct Outcome {
    /// The header when it parsed.
    header: Option<Header>,
    /// Plaintext released before the end or the first error.
    plain: Vec<u8>,
    /// Every chunk verified, including "nothing after the last one".
    complete: bool,
}

fn read_file(file: &[u8], through_read: bool) -> Outcome {
    let path = Path::new("fuzz.prv");
    let mut src = file;
    let Ok((header, header_bytes)) = Header::read_from(&mut src, path) else {
        return Outcome {
            header: None,
            plain: Vec::new(),
            complete: false,
        };
    };
    assert_eq!(
        header.encode(),
        header_bytes,
        "an accepted header must be canonical: {header:?}"
    );
    assert!((format::MIN_CHUNK_SIZE..=format::MAX_CHUNK_SIZE).contains(&header.chunk_size));
    assert!(header.meta.original_name.len() <= format::MAX_NAME_LEN);

    let mut reader = PrvReader::new(src, path, header.clone(), &header_bytes, key());
    let capacity = reader.buffer_capacity();
    assert!(
        capacity <= format::MAX_CHUNK_SIZE as usize + format::TAG_LEN + 64,
        "buffer of {capacity} bytes"
    );
    let mut plain = Vec::new();
    let complete = if through_read {
        let ok = reader.read_to_end(&mut plain).is_ok();
        // A failed reader never reports a clean end; a finished one stays at its end.
        let mut probe = [0u8; 16];
        match reader.read(&mut probe) {
            Ok(0) => assert!(ok, "a failed reader reported a clean end"),
            Ok(n) => panic!("{n} bytes after the end"),
            Err(_) => assert!(!ok, "a finished reader failed"),
        }
        ok
    } else {
        let ok = loop {
            match reader.next_chunk() {
                Ok(Some(chunk)) => plain.extend_from_slice(chunk),
                Ok(None) => break true,
                Err(_) => break false,
            }
            assert_eq!(reader.buffer_capacity(), capacity, "the chunk buffer grew");
        };
        match reader.next_chunk() {
            Ok(None) => assert!(ok, "a failed reader reported a clean end"),
            Ok(Some(_)) => panic!("a chunk after the end"),
            Err(_) => assert!(!ok, "a finished reader failed"),
        }
        ok
    };
    assert_eq!(reader.buffer_capacity(), capacity, "the chunk buffer grew");
    Outcome {
        header: Some(header),
        plain,
        complete,
    }
}

/// A header and plaintext described by the input.
fn construct(input: &mut Cursor<'_>) -> (Header, Vec<u8>) {
    let flags = input.u8();
    let account_id = input.u32();
    let chat_id = input.u32();
    let peer = input.u32();
    let created_at = input.i64();
    let expires_at = input.i64();
    let chunk_size = match input.u8() % 8 {
        0 => format::MIN_CHUNK_SIZE,
        1 => format::MIN_CHUNK_SIZE + 1,
        2 => 3000,
        3 => 4096,
        4 => format::CHUNK_SIZE,
        5 => format::MAX_CHUNK_SIZE,
        6 => format::MAX_CHUNK_SIZE + 1,
        _ => format::MIN_CHUNK_SIZE - 1,
    };
    let name_len = usize::from(input.u16()) % 300;
    let original_name = String::from_utf8_lossy(input.take(name_len)).into_owned();
    let plain_len = usize::from(input.u16()) % (MAX_PLAIN + 1);
    let nonce_prefix = input.array();
    let file_id = uuid::Uuid::from_bytes(input.array());
    let seed = flags.wrapping_mul(31) ^ chat_id as u8;
    let plain: Vec<u8> = (0..plain_len)
        .map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed))
        .collect();
    let header = Header {
        meta: FileMeta {
            file_id,
            account_id,
            chat_id,
            peer_contact_id: (flags & 4 == 0).then_some(peer),
            allow_download: flags & 1 != 0,
            allow_forward: flags & 2 != 0,
            created_at,
            expires_at: (expires_at != 0).then_some(expires_at),
            original_name,
            original_size: plain.len() as u64,
        },
        chunk_size,
        nonce_prefix,
    };
    (header, plain)
}

/// A header the reader must accept: everything `read_from` checks holds.
fn consistent(h: &Header) -> bool {
    (format::MIN_CHUNK_SIZE..=format::MAX_CHUNK_SIZE).contains(&h.chunk_size)
        && h.meta.original_name.len() <= format::MAX_NAME_LEN
        && h.meta.peer_contact_id != Some(0)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let control = input.u8();
    let through_read = control & 2 != 0;
    if control & 1 == 0 {
        let got = read_file(input.rest(), through_read);
        assert!(
            !got.complete,
            "raw bytes decrypted under a key made in this process"
        );
        return;
    }

    let (header, plain) = construct(&mut input);
    let mut file = Vec::new();
    format::encrypt(
        &header,
        key(),
        &mut plain.as_slice(),
        Path::new("plain"),
        &mut file,
        Path::new("fuzz.prv"),
    )
    .expect("encrypting in memory cannot fail");
    if consistent(&header) {
        let encoded = header.encode();
        let (parsed, bytes) = Header::read_from(&mut encoded.as_slice(), Path::new("h"))
            .expect("a consistent header parses");
        assert_eq!((&parsed, &bytes), (&header, &encoded));
    }
    let original = file.clone();
    mutate::apply(&mut file, input.rest());

    let got = read_file(&file, through_read);
    assert!(
        plain.starts_with(&got.plain),
        "released plaintext that was never encrypted"
    );
    if got.complete {
        assert!(file == original, "an edited file decrypted completely");
        assert_eq!(got.plain.len(), plain.len());
    }
    if file == original && consistent(&header) {
        assert!(got.complete, "a valid file did not decrypt");
        assert_eq!(got.header.as_ref(), Some(&header));
    }
});
