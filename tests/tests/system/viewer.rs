//! The viewer API (`POST /auth`, `GET /stream/:msg_id`) over real HTTP with the real engine: the
//! device fingerprint (stored at first boot, printed by the CLI), sessions, files this gateway
//! encrypted and files received from another gateway streamed byte-identical (1 byte, 64 KiB ± 1,
//! 50 MB own; the largest the loopback mail server carries received), `Range` at and inside chunk
//! boundaries, every error status, the stream cap and the idle rule, a revocation ending a running
//! stream, and `strace` showing that no plaintext is written to any file.
//!
//! Tests that need the mail server or `strace` print `SKIPPED: …` where they cannot run, and fail
//! instead under `PRIVITTY_REQUIRE_ALL_TESTS=1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use privitty_tests::edged_stack::{EdgedStack, LicenseState};
use privitty_tests::gateways::{ACCOUNT, EventStream, Gateway, Gateways, secure_join};
use privitty_tests::init_harness::{has_command, skip};
use privitty_tests::support;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const DEADLINE: Duration = Duration::from_secs(60);
const CHUNK: usize = 64 * 1024;
const MB50: usize = 50 * 1000 * 1000;

// ---------------------------------------------------------------------------------------------
// Content and HTTP.

/// `n` bytes that never repeat a 16-byte block (xorshift), after `magic`.
fn content(magic: &[u8], n: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    out.extend_from_slice(&magic[..magic.len().min(n)]);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (n - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    out
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One HTTP/1.1 exchange, body kept as bytes.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The connection ended before `Content-Length` bytes arrived (or with an error).
    cut: bool,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A response being read: the head is in, the body comes as the test asks for it.
struct Open {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
    length: Option<u64>,
}

fn send_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Open {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b).unwrap();
    }
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok());
    Open {
        reader,
        status,
        headers,
        length,
    }
}

impl Open {
    /// Reads exactly `n` body bytes.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.reader.read_exact(&mut buf).expect("body bytes");
        buf
    }

    /// Reads the rest of the body; whether it ended short of its length (or with an error).
    fn finish(mut self, mut body: Vec<u8>) -> Got {
        let ended = self.reader.read_to_end(&mut body);
        let cut = ended.is_err() || self.length.is_some_and(|n| (body.len() as u64) < n);
        Got {
            status: self.status,
            headers: self.headers,
            body,
            cut,
        }
    }
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Got {
    send_request(addr, method, path, headers, body).finish(Vec::new())
}

// ---------------------------------------------------------------------------------------------
// The viewer's calls.

/// `privitty-edge device-fingerprint` on a data directory.
fn cli_fingerprint(accounts: &Path) -> String {
    let out = Command::new(support::bin("privitty-edge"))
        .arg("--accounts")
        .arg(accounts)
        .arg("device-fingerprint")
        .output()
        .expect("run privitty-edge");
    assert!(
        out.status.success(),
        "device-fingerprint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn auth_with(addr: SocketAddr, fingerprint: &str, headers: &[(&str, &str)]) -> Got {
    let body = json!({ "device_fingerprint": fingerprint }).to_string();
    http(addr, "POST", "/auth", headers, Some(body.as_bytes()))
}

/// A viewer token.
fn auth(addr: SocketAddr, fingerprint: &str) -> String {
    let r = auth_with(addr, fingerprint, &[]);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["expires_in"], 3600, "{v}");
    v["token"].as_str().unwrap().to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn stream(addr: SocketAddr, token: &str, msg_id: u64, extra: &[(&str, &str)]) -> Got {
    let auth = bearer(token);
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    http(addr, "GET", &format!("/stream/{msg_id}"), &headers, None)
}

/// A complete 200 of exactly `expected`, with the viewer's headers.
fn assert_streamed(got: &Got, expected: &[u8], content_type: &str, what: &str) {
    assert_eq!(
        got.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&got.body[..got.body.len().min(300)])
    );
    assert!(!got.cut, "{what}: cut short at {}", got.body.len());
    assert_eq!(got.body.len(), expected.len(), "{what}: length");
    assert_eq!(sha(&got.body), sha(expected), "{what}: byte-identical");
    assert_eq!(
        got.header("content-length"),
        Some(expected.len().to_string().as_str()),
        "{what}"
    );
    assert_eq!(got.header("content-type"), Some(content_type), "{what}");
    assert_eq!(got.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(got.header("accept-ranges"), Some("bytes"), "{what}");
}

/// A 206 of bytes `start..=end` of `whole`.
fn assert_part(got: &Got, whole: &[u8], start: usize, end: usize, what: &str) {
    assert_eq!(
        got.status,
        206,
        "{what}: {}",
        String::from_utf8_lossy(&got.body)
    );
    assert!(!got.cut, "{what}: cut short");
    assert_eq!(
        got.header("content-range"),
        Some(format!("bytes {start}-{end}/{}", whole.len()).as_str()),
        "{what}"
    );
    assert_eq!(
        got.header("content-length"),
        Some((end + 1 - start).to_string().as_str()),
        "{what}"
    );
    assert_eq!(sha(&got.body), sha(&whole[start..=end]), "{what}: bytes");
}

fn range(spec: &str) -> [(&'static str, String); 1] {
    [("Range", format!("bytes={spec}"))]
}

fn stream_range(addr: SocketAddr, token: &str, msg_id: u64, spec: &str) -> Got {
    let [(k, v)] = range(spec);
    stream(addr, token, msg_id, &[(k, v.as_str())])
}

// ---------------------------------------------------------------------------------------------
// One gateway's own files.

/// A chat with a (never configured) contact on a single edged.
fn chat(edged: &EdgedStack) -> (u64, u64) {
    let contact = edged.result(
        "create_contact",
        json!([1, "viewer-peer@example.org", "Peer"]),
    );
    let chat = edged.result("create_chat_by_contact_id", json!([1, contact]));
    (chat.as_u64().unwrap(), contact.as_u64().unwrap())
}

/// Encrypts `content` as `name` for the chat and sends the `.prv` (stored, since the account is
/// not configured); returns the message id and the file id.
fn own_file(edged: &EdgedStack, chat: (u64, u64), name: &str, content: &[u8]) -> (u64, String) {
    let path = edged.accounts.join("files").join(name);
    std::fs::write(&path, content).unwrap();
    let sent = edged.result(
        "privitty_send_file",
        json!([1, chat.0, chat.1, path, false, false, 0]),
    );
    let prv = sent["encrypted_path"].as_str().unwrap().to_string();
    std::fs::remove_file(&path).unwrap();
    // Offline the engine answers "No self addr configured" but keeps the message.
    edged.call(
        "send_msg",
        json!([1, chat.0, {"file": prv, "viewtype": "File"}]),
    );
    let want = format!("{name}.prv");
    let ids = edged.result("get_message_ids", json!([1, chat.0, false, false]));
    let id = ids
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .find(|id| edged.result("get_message", json!([1, id]))["fileName"] == want.as_str())
        .unwrap_or_else(|| panic!("no message with {want} in {ids}"));
    (id, sent["file_id"].as_str().unwrap().to_string())
}

fn licensed() -> EdgedStack {
    EdgedStack::builder().license(LicenseState::Active).start()
}

/// Waits for an edged log line with this message (and `check` on its fields).
fn wait_log(edged: &EdgedStack, message: &str, check: impl Fn(&Value) -> bool) -> Value {
    support::eventually(DEADLINE, &format!("log {message:?}"), || {
        edged
            .log_lines()
            .into_iter()
            .find(|l| l["message"].as_str() == Some(message) && check(l))
    })
}

#[test]
fn own_files_stream_byte_identical_with_ranges() {
    let edged = licensed();
    let addr = edged.addr();
    // Stored at first boot; the CLI prints the same.
    let stored = std::fs::read_to_string(edged.accounts.join("device.fingerprint")).unwrap();
    let fingerprint = cli_fingerprint(&edged.accounts);
    assert_eq!(stored.trim(), fingerprint);
    assert_eq!(fingerprint.len(), 64);
    let events = EventStream::open(addr).unwrap();
    let token = auth(addr, &fingerprint.to_uppercase());

    let chat = chat(&edged);
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("one.txt", b"x".to_vec(), "text/plain; charset=utf-8"),
        (
            "below.bin",
            content(b"\x01", CHUNK - 1, 1),
            "application/octet-stream",
        ),
        (
            "exact.png",
            content(b"\x89PNG\r\n\x1a\n", CHUNK, 2),
            "image/png",
        ),
        (
            "above.bin",
            content(b"\x02", CHUNK + 1, 3),
            "application/octet-stream",
        ),
        (
            "big.pdf",
            content(b"%PDF-1.7\n", MB50, 4),
            "application/pdf",
        ),
        ("empty.bin", Vec::new(), "application/octet-stream"),
    ];
    let mut sent = Vec::new();
    for (name, bytes, kind) in &files {
        let (msg, file_id) = own_file(&edged, chat, name, bytes);
        let from = events.cursor();
        let got = stream(addr, &token, msg, &[]);
        assert_streamed(&got, bytes, kind, name);
        assert!(
            got.header("content-disposition")
                .is_some_and(|d| d.ends_with(&format!("''{name}"))),
            "{:?}",
            got.header("content-disposition")
        );
        events.wait_for(from, DEADLINE, "PrivittyFileDecrypted", |e| {
            e["type"] == "PrivittyFileDecrypted" && e["msg_id"] == msg && e["file_id"] == file_id
        });
        sent.push((msg, bytes));
    }

    // Ranges at chunk boundaries and inside chunks, over one and several chunks.
    let (above, above_bytes) = (sent[3].0, sent[3].1);
    let c = CHUNK;
    for (spec, start, end) in [
        ("0-0", 0, 0),
        ("0-65535", 0, c - 1),
        ("65535-65536", c - 1, c),
        ("65536-65536", c, c),
        ("65536-", c, c),
        ("-1", c, c),
        ("-65537", 0, c),
        ("100-70000", 100, c),
        ("0-999999", 0, c),
    ] {
        let got = stream_range(addr, &token, above, spec);
        assert_part(&got, above_bytes, start, end, &format!("above.bin {spec}"));
    }
    let (big, big_bytes) = (sent[4].0, sent[4].1);
    for (start, end) in [
        (c, 3 * c - 1),
        (3 * c - 7, 3 * c + 6),
        (100_000, 3_000_000),
        (MB50 - c, MB50 - 1),
        (MB50 - 1, MB50 - 1),
        (12_345_678, MB50 - 1),
    ] {
        let got = stream_range(addr, &token, big, &format!("{start}-{end}"));
        assert_part(
            &got,
            big_bytes,
            start,
            end,
            &format!("big.pdf {start}-{end}"),
        );
        assert_eq!(got.header("content-type"), Some("application/pdf"));
    }
    // Past the end: 416 naming the size; several ranges or another validator: the whole file.
    let got = stream_range(addr, &token, above, "65537-");
    assert_eq!(got.status, 416);
    assert_eq!(got.header("content-range"), Some("bytes */65537"));
    let got = stream_range(addr, &token, above, "0-1,5-6");
    assert_streamed(&got, above_bytes, "application/octet-stream", "two ranges");
    let got = stream(
        addr,
        &token,
        above,
        &[("Range", "bytes=0-1"), ("If-Range", "\"other\"")],
    );
    assert_streamed(&got, above_bytes, "application/octet-stream", "If-Range");
    let etag = got.header("etag").unwrap().to_string();
    let got = stream(
        addr,
        &token,
        above,
        &[("Range", "bytes=1-2"), ("If-Range", etag.as_str())],
    );
    assert_part(&got, above_bytes, 1, 2, "If-Range with the ETag");

    // Nothing of it stayed on disk: no file anywhere in the data directory holds plaintext.
    let needle = &big_bytes[1_000_000..1_000_064];
    for entry in walk(&edged.accounts) {
        let data = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !data.windows(needle.len()).any(|w| w == needle),
            "plaintext found in {}",
            entry.display()
        );
    }
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// The blob the engine keeps of a message's `.prv` (what the viewer decrypts).
fn blob(edged: &EdgedStack, msg: u64) -> std::path::PathBuf {
    let m = edged.result("get_message", json!([1, msg]));
    std::path::PathBuf::from(m["file"].as_str().unwrap())
}

/// Flips one byte of a file at `offset`.
fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
}

#[test]
fn every_error_status_and_the_limits() {
    let edged = EdgedStack::builder()
        .license(LicenseState::Active)
        .arg("--viewer-max-streams")
        .arg("1")
        .start();
    let addr = edged.addr();
    let fingerprint = cli_fingerprint(&edged.accounts);

    // /auth: its method, its body, the documented refusal.
    let r = http(addr, "GET", "/auth", &[], None);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = http(addr, "POST", "/stream/1", &[], None);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    for bad in [&b"not json"[..], b"{}", b"{\"device_fingerprint\":7}"] {
        let r = http(addr, "POST", "/auth", &[], Some(bad));
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(bad));
        assert!(r.error().contains("device-fingerprint"), "{}", r.error());
    }
    let huge = vec![b' '; 5000];
    assert_eq!(http(addr, "POST", "/auth", &[], Some(&huge)).status, 413);
    let wrong = auth_with(addr, &"0".repeat(64), &[]);
    assert_eq!(wrong.status, 403);
    assert_eq!(
        wrong.json(),
        json!({"error": "Device fingerprint mismatch"})
    );

    // /stream without, with a wrong, and with a replaced token: 401.
    let r = http(addr, "GET", "/stream/1", &[], None);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    assert!(r.error().contains("POST /auth"), "{}", r.error());
    assert_eq!(stream(addr, "not-the-token-at-all", 1, &[]).status, 401);
    let old = auth(addr, &fingerprint);
    let token = auth(addr, &fingerprint);
    let r = stream(addr, &old, 1, &[]);
    assert_eq!(r.status, 401);
    assert!(r.error().contains("replaced"), "{}", r.error());

    // Message ids: malformed 400, no such message or no .prv 404.
    for bad in ["abc", "0", "-1", "99999999999"] {
        let r = http(
            addr,
            "GET",
            &format!("/stream/{bad}"),
            &[("Authorization", &bearer(&token))],
            None,
        );
        assert_eq!(r.status, 400, "{bad}");
    }
    assert_eq!(stream(addr, &token, 999_999, &[]).status, 404);
    let chat = chat(&edged);
    edged.call("send_msg", json!([1, chat.0, {"text": "just text"}]));
    let text_msg = edged.result("get_message_ids", json!([1, chat.0, false, false]))[0]
        .as_u64()
        .unwrap();
    let r = stream(addr, &token, text_msg, &[]);
    assert_eq!(r.status, 404);
    assert!(r.error().contains(".prv"), "{}", r.error());

    // Revoked: 403 with the reason.
    let (revoked, revoked_id) = own_file(&edged, chat, "gone.txt", b"soon revoked");
    assert_eq!(stream(addr, &token, revoked, &[]).status, 200);
    edged.result(
        "privitty_revoke_file_access",
        json!([1, chat.0, revoked_id, 0]),
    );
    let r = stream(addr, &token, revoked, &[]);
    assert_eq!(r.status, 403);
    assert!(r.error().contains("revoked"), "{}", r.error());

    // A damaged chunk: 500 before anything is sent when it is the first, a cut transfer (never a
    // clean end) when a later one fails.
    let first = content(b"", 3 * CHUNK, 5);
    let (msg, _) = own_file(&edged, chat, "damaged-first.bin", &first);
    let path = blob(&edged, msg);
    let header_len = std::fs::metadata(&path).unwrap().len() - (3 * CHUNK + 3 * 16) as u64;
    flip(&path, header_len + 10);
    let r = stream(addr, &token, msg, &[]);
    assert_eq!(r.status, 500);
    assert!(r.error().contains("decryption failed"), "{}", r.error());
    let (msg, _) = own_file(&edged, chat, "damaged-later.bin", &first);
    flip(&blob(&edged, msg), header_len + 2 * (CHUNK as u64 + 16) + 5);
    let r = stream(addr, &token, msg, &[]);
    assert_eq!(r.status, 200);
    assert!(r.cut, "a failed chunk must cut the transfer");
    assert_eq!(r.body.len(), 2 * CHUNK, "the verified chunks only");
    assert_eq!(r.body, first[..2 * CHUNK]);

    // The cap (1 here): a second stream waits for the first; a new session ends the running one.
    let big = content(b"", 40 * 1000 * 1000, 6);
    let (big_msg, _) = own_file(&edged, chat, "big.bin", &big);
    let auth_header = bearer(&token);
    let mut running = send_request(
        addr,
        "GET",
        &format!("/stream/{big_msg}"),
        &[("Authorization", &auth_header)],
        None,
    );
    assert_eq!(running.status, 200);
    let head = running.take(1000);
    let r = stream(addr, &token, big_msg, &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(
        r.error().contains("PRIVITTY_VIEWER_MAX_STREAMS"),
        "{}",
        r.error()
    );
    let token = auth(addr, &fingerprint);
    wait_log(&edged, "viewer stream ended early", |l| {
        l["reason"]
            .as_str()
            .is_some_and(|r| r.contains("new viewer session"))
    });
    let rest = running.finish(head);
    assert!(rest.cut, "ended by the new session");
    assert!(rest.body.len() < big.len());
    assert_eq!(
        rest.body[..],
        big[..rest.body.len()],
        "a prefix, never other bytes"
    );
    // The slot is free again.
    let got = support::eventually(DEADLINE, "the stream slot back", || {
        let r = stream(addr, &token, big_msg, &[]);
        (r.status != 503).then_some(r)
    });
    assert_streamed(&got, &big, "application/octet-stream", "after the cap");
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let edged = EdgedStack::builder()
        .license(LicenseState::Active)
        .arg("--body-timeout")
        .arg("1s")
        .arg("--viewer-max-streams")
        .arg("1")
        .start();
    let addr = edged.addr();
    let token = auth(addr, &cli_fingerprint(&edged.accounts));
    let chat = chat(&edged);
    let big = content(b"", 40 * 1000 * 1000, 7);
    let (msg, _) = own_file(&edged, chat, "stalled.bin", &big);
    let auth_header = bearer(&token);
    let mut stalled = send_request(
        addr,
        "GET",
        &format!("/stream/{msg}"),
        &[("Authorization", &auth_header)],
        None,
    );
    assert_eq!(stalled.status, 200);
    let head = stalled.take(10);
    wait_log(&edged, "viewer stream ended early", |l| {
        l["reason"]
            .as_str()
            .is_some_and(|r| r.contains("body timeout"))
    });
    let rest = stalled.finish(head);
    assert!(rest.cut);
    assert_eq!(rest.body[..], big[..rest.body.len()]);
    // Its slot is free.
    let got = stream(addr, &token, msg, &[]);
    assert_streamed(
        &got,
        &big,
        "application/octet-stream",
        "after the stalled one",
    );
}

#[test]
fn streaming_needs_a_license_and_auth_needs_the_api_token_when_required() {
    let edged = EdgedStack::start();
    let addr = edged.addr();
    let token = auth(addr, &cli_fingerprint(&edged.accounts));
    let r = stream(addr, &token, 1, &[]);
    assert_eq!(r.status, 403);
    let v = r.json();
    assert_eq!(v["status"], "no_license", "{v}");
    assert_eq!(v["reason"], "not_activated", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("privitty-edge license activate"),
        "{v}"
    );
    drop(edged);

    let edged = EdgedStack::builder()
        .license(LicenseState::Active)
        .env("PRIVITTY_API_AUTH", "required")
        .start();
    let addr = edged.addr();
    let fingerprint = cli_fingerprint(&edged.accounts);
    let api = std::fs::read_to_string(edged.accounts.join("api.token")).unwrap();
    let r = auth_with(addr, &fingerprint, &[]);
    assert_eq!(r.status, 401, "the API token first");
    let api_header = bearer(api.trim());
    let r = auth_with(addr, &fingerprint, &[("Authorization", &api_header)]);
    assert_eq!(r.status, 200);
    let token = r.json()["token"].as_str().unwrap().to_string();
    // /stream takes the viewer token (the API token is not one).
    assert_eq!(stream(addr, api.trim(), 1, &[]).status, 401);
    assert_eq!(stream(addr, &token, 999_999, &[]).status, 404);
}

#[test]
fn a_revocation_ends_a_running_stream() {
    let edged = licensed();
    let addr = edged.addr();
    let token = auth(addr, &cli_fingerprint(&edged.accounts));
    let chat = chat(&edged);
    let big = content(b"", 40 * 1000 * 1000, 8);
    let (msg, file_id) = own_file(&edged, chat, "revoked-while-viewed.bin", &big);
    let auth_header = bearer(&token);
    let mut viewing = send_request(
        addr,
        "GET",
        &format!("/stream/{msg}"),
        &[("Authorization", &auth_header)],
        None,
    );
    assert_eq!(viewing.status, 200);
    let head = viewing.take(CHUNK);
    edged.result(
        "privitty_revoke_file_access",
        json!([1, chat.0, file_id, 0]),
    );
    wait_log(&edged, "viewer stream ended early", |l| {
        l["reason"].as_str().is_some_and(|r| r.contains("revoked"))
    });
    let rest = viewing.finish(head);
    assert!(rest.cut, "a revoked stream must not end cleanly");
    assert!(rest.body.len() < big.len());
    assert_eq!(rest.body[..], big[..rest.body.len()]);
    assert_eq!(stream(addr, &token, msg, &[]).status, 403);
}

// ---------------------------------------------------------------------------------------------
// No plaintext on disk, seen from the system calls.

/// One traced system call that writes, or opens for writing.
#[derive(Debug)]
struct Traced {
    call: String,
    /// What the file descriptor is (`/path`, `socket:[…]`, `pipe:[…]`, …).
    target: String,
    data: Vec<u8>,
    line: String,
}

/// `\xHH…` text (strace `-xx`), decoded.
fn unhex(text: &str) -> Vec<u8> {
    text.split("\\x")
        .filter(|h| h.len() >= 2)
        .filter_map(|h| u8::from_str_radix(&h[..2], 16).ok())
        .collect()
}

/// The text between `<` and `>` after `at` (an fd's annotation with `-y`), decoded.
fn annotation(text: &str) -> String {
    text.split_once('<')
        .and_then(|(_, t)| t.split_once('>'))
        .map(|(t, _)| String::from_utf8_lossy(&unhex(t)).into_owned())
        .unwrap_or_default()
}

/// The `"\xHH…"` strings of an strace line (`-xx`), decoded.
fn strings(line: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('"') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else { break };
        let text = &after[..close];
        out.push(unhex(text));
        rest = &after[close + 1..];
    }
    out
}

fn parse_trace(text: &str) -> Vec<Traced> {
    let mut out = Vec::new();
    for line in text.lines() {
        // `1234 write(7</path>, "\x..", 5) = 5`, or its `<unfinished ...>` first half.
        let body = line.split_once(' ').map_or(line, |(_, b)| b.trim_start());
        let Some((call, args)) = body.split_once('(') else {
            continue;
        };
        if !call.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let target = if call == "openat" {
            // The opened file is the result: `= 12</path>`.
            line.rsplit_once("= ")
                .map(|(_, result)| annotation(result))
                .unwrap_or_default()
        } else {
            annotation(args)
        };
        let data = if call == "openat" {
            Vec::new()
        } else {
            strings(args).concat()
        };
        out.push(Traced {
            call: call.to_string(),
            target,
            data,
            line: line.chars().take(300).collect(),
        });
    }
    out
}

/// Whether `data` holds any 16-byte block of `plain` that starts at a multiple of 16 (any run
/// of 31 plaintext bytes does).
fn holds_plaintext(data: &[u8], blocks: &std::collections::HashSet<&[u8]>) -> bool {
    data.windows(16).any(|w| blocks.contains(w))
}

#[test]
fn no_plaintext_is_written_to_any_file() {
    const TEST: &str = "no_plaintext_is_written_to_any_file";
    if !has_command("strace") {
        skip(TEST, "strace is not installed (apt-get install strace)");
        return;
    }
    let edged = licensed();
    let addr = edged.addr();
    let token = auth(addr, &cli_fingerprint(&edged.accounts));
    let chat = chat(&edged);
    let plain = content(b"", 5 * CHUNK + 123, 9);
    let (msg, _) = own_file(&edged, chat, "traced.bin", &plain);

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("trace.log");
    let errors = dir.path().join("strace.err");
    let pid = edged.pid();
    let mut strace = Command::new("strace")
        .args(["-f", "-y", "-xx", "-s", "70000", "-e"])
        .arg("trace=openat,open,creat,write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg,sendfile,copy_file_range,splice")
        .arg("-o")
        .arg(&log)
        .arg("-p")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .expect("run strace");
    // Later threads are followed by -f.
    let attached = support::poll_until(DEADLINE, || {
        let text = std::fs::read_to_string(&errors).unwrap_or_default();
        if let Ok(Some(_)) = strace.try_wait() {
            return Some(Err(text));
        }
        // `Process N attached with M threads`, printed once every thread is attached.
        text.contains("attached").then_some(Ok(()))
    });
    match attached {
        Some(Ok(())) => {}
        Some(Err(why)) => {
            skip(TEST, &format!("strace cannot attach here: {}", why.trim()));
            return;
        }
        None => panic!("strace did not attach to {pid} within {DEADLINE:?}"),
    }

    let got = stream(addr, &token, msg, &[]);
    assert_streamed(&got, &plain, "application/octet-stream", "traced");
    let got = stream_range(addr, &token, msg, "65530-200000");
    assert_part(&got, &plain, 65_530, 200_000, "traced range");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    strace.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let calls = parse_trace(&text);
    let blocks: std::collections::HashSet<&[u8]> = plain.chunks_exact(16).collect();

    // The trace saw the plaintext going out on the socket (so it would see it anywhere else).
    let socket: Vec<u8> = calls
        .iter()
        .filter(|c| c.target.starts_with("socket:"))
        .flat_map(|c| c.data.iter().copied())
        .collect();
    let sample = &plain[3 * CHUNK..3 * CHUNK + 64];
    assert!(
        socket.windows(64).any(|w| w == sample),
        "the trace does not show the stream on its socket ({} bytes traced); trace:\n{}",
        socket.len(),
        text.chars().take(3000).collect::<String>()
    );
    assert!(
        holds_plaintext(&socket, &blocks),
        "the detector finds what the socket carried"
    );
    // No write to a file holds any of it, and nothing is copied into a file by the kernel.
    let to_files: Vec<&Traced> = calls
        .iter()
        .filter(|c| c.call != "openat" && c.call != "open" && c.target.starts_with('/'))
        .collect();
    for c in &to_files {
        assert!(
            !holds_plaintext(&c.data, &blocks),
            "plaintext written to {}: {}",
            c.target,
            c.line
        );
        assert!(
            !matches!(c.call.as_str(), "sendfile" | "copy_file_range" | "splice"),
            "a kernel copy into {}: {}",
            c.target,
            c.line
        );
    }
    let opened: Vec<&str> = calls
        .iter()
        .filter(|c| c.call == "openat" || c.call == "creat")
        .filter(|c| {
            ["O_WRONLY", "O_RDWR", "O_CREAT", "creat("]
                .iter()
                .any(|f| c.line.contains(f))
        })
        .map(|c| c.target.as_str())
        .collect();
    eprintln!(
        "traced: {} calls, {} bytes to the socket, {} writes to files, opened for writing: {opened:?}",
        calls.len(),
        socket.len(),
        to_files.len()
    );
    assert!(
        !opened
            .iter()
            .any(|p| p.starts_with(&*edged.accounts.join("files").to_string_lossy())),
        "a file was created in the files directory: {opened:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Files received from another gateway.

/// `privitty_send_file` (download not allowed) + `send_msg` of the `.prv`; returns the file id.
fn send_protected(gw: &Gateway, chat: u64, contact: u64, name: &str, content: &[u8]) -> String {
    let path = gw.files_dir().join(name);
    std::fs::write(&path, content).unwrap();
    let result = gw.call(
        "privitty_send_file",
        json!([ACCOUNT, chat, contact, path, false, false, 0]),
    );
    std::fs::remove_file(&path).unwrap();
    let prv = result["encrypted_path"].as_str().unwrap().to_owned();
    gw.call(
        "send_msg",
        json!([ACCOUNT, chat, {"file": prv, "viewtype": "File"}]),
    );
    result["file_id"].as_str().unwrap().to_owned()
}

/// How long a mail may take: the engine paces its sends (a few a minute once a burst is used),
/// and every protected file is a mail plus its grant.
const MAIL_DEADLINE: Duration = Duration::from_secs(240);

/// The message id of the incoming `<name>.prv` (events since `from`), once downloaded.
fn receive_prv(gw: &Gateway, from: usize, name: &str) -> u64 {
    let want = format!("{name}.prv");
    let ev = gw.events().wait_for(
        from,
        MAIL_DEADLINE,
        &format!("{}: IncomingMsg with {want}", gw.name),
        |e| {
            e["type"] == "IncomingMsg"
                && e["msg_id"].as_u64().is_some_and(|id| {
                    gw.call("get_message", json!([ACCOUNT, id]))["fileName"] == want.as_str()
                })
        },
    );
    let id = ev.value["msg_id"].as_u64().unwrap();
    // A large file arrives as a pre-message first; the file follows.
    let began = std::time::Instant::now();
    loop {
        let from = gw.events().cursor();
        let m = gw.call("get_message", json!([ACCOUNT, id]));
        if m["downloadState"] == "Done" && m["file"].is_string() {
            return id;
        }
        let left = MAIL_DEADLINE.saturating_sub(began.elapsed());
        gw.events()
            .wait_for(from, left, &format!("{want} downloaded ({m})"), |e| {
                e["msg_id"] == id || (e["type"] == "MsgsChanged" && e["msg_id"] == 0)
            });
    }
}

/// Waits for `PrivittyFileAccessChanged` with `status` about `file` since `from`.
fn wait_access(gw: &Gateway, from: usize, file: &str, status: &str) {
    gw.events().wait_for(
        from,
        MAIL_DEADLINE,
        &format!("{}: access {status} for {file}", gw.name),
        |e| {
            e["type"] == "PrivittyFileAccessChanged"
                && e["file_id"] == file
                && e["status"] == status
        },
    );
}

/// The largest received file: a `.prv` travels base64-encoded in one mail, and the loopback mail
/// server takes mails up to 100 MiB (50 MB of .prv is about 70 MB of mail).
const RECEIVED_BIG: usize = 50 * 1000 * 1000;

#[test]
fn received_files_stream_and_a_revocation_ends_the_stream() {
    const TEST: &str = "received_files_stream_and_a_revocation_ends_the_stream";
    let gw = match Gateways::start(2) {
        Ok(gw) => gw,
        Err(skip) => return skip.report(TEST),
    };
    let ab = secure_join(&gw[0], &gw[1]);
    let (alice, bob) = (&gw[0], &gw[1]);
    let (a_chat, a_bob) = (ab.inviter.chat_id, ab.inviter.contact_id);
    let (fa, fb) = (alice.events().cursor(), bob.events().cursor());
    alice.call("privitty_is_chat_encrypted", json!([ACCOUNT, a_chat]));
    for (g, from) in [(alice, fa), (bob, fb)] {
        g.wait_event(from, "PrivittyPeerHandshakeComplete", |e| {
            e["type"] == "PrivittyPeerHandshakeComplete"
        });
    }
    let addr = bob.addr();
    let token = auth(addr, &cli_fingerprint(&bob.dirs.accounts));

    // Byte-identical at every size, download not allowed (the viewer's point).
    // The big one first, while the engine's send budget is fresh.
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "big.pdf",
            content(b"%PDF-1.7\n", RECEIVED_BIG, 14),
            "application/pdf",
        ),
        ("one.txt", b"y".to_vec(), "text/plain; charset=utf-8"),
        (
            "below.bin",
            content(b"\x01", CHUNK - 1, 11),
            "application/octet-stream",
        ),
        (
            "exact.png",
            content(b"\x89PNG\r\n\x1a\n", CHUNK, 12),
            "image/png",
        ),
        (
            "above.bin",
            content(b"\x02", CHUNK + 1, 13),
            "application/octet-stream",
        ),
    ];
    let mut received = Vec::new();
    for (name, bytes, kind) in &files {
        let fb = bob.events().cursor();
        let file = send_protected(alice, a_chat, a_bob, name, bytes);
        let msg = receive_prv(bob, fb, name);
        wait_access(bob, fb, &file, "active");
        let denied = bob.response("privitty_decrypt_file", json!([ACCOUNT, msg]));
        assert_eq!(denied["error"]["code"], -32032, "no download: {denied}");
        let from = bob.events().cursor();
        assert_streamed(&stream(addr, &token, msg, &[]), bytes, kind, name);
        bob.wait_event(from, "PrivittyFileDecrypted", |e| {
            e["type"] == "PrivittyFileDecrypted" && e["msg_id"] == msg
        });
        received.push((msg, file, bytes));
    }
    let (above, _, above_bytes) = &received[4];
    for (spec, start, end) in [
        ("0-65535", 0, CHUNK - 1),
        ("65535-65536", CHUNK - 1, CHUNK),
        ("65536-", CHUNK, CHUNK),
    ] {
        assert_part(
            &stream_range(addr, &token, *above, spec),
            above_bytes,
            start,
            end,
            spec,
        );
    }
    let (big, big_file, big_bytes) = &received[0];
    for (start, end) in [(CHUNK, 4 * CHUNK - 1), (1_000_001, 9_999_999)] {
        assert_part(
            &stream_range(addr, &token, *big, &format!("{start}-{end}")),
            big_bytes,
            start,
            end,
            "big range",
        );
    }

    // 409 while the key has not arrived: bob holds a .prv whose grant went to another contact.
    let nobody = alice.call(
        "create_contact",
        json!([ACCOUNT, "nobody@example.org", "Nobody"]),
    );
    let fb = bob.events().cursor();
    send_protected(
        alice,
        a_chat,
        nobody.as_u64().unwrap(),
        "early.bin",
        &content(b"", 1000, 10),
    );
    let early_msg = receive_prv(bob, fb, "early.bin");
    let r = stream(addr, &token, early_msg, &[]);
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("not arrived"), "{}", r.error());

    // Denied: 403 with the reason.
    let (one, one_file, _) = &received[1];
    let fb = bob.events().cursor();
    alice.call(
        "privitty_deny_file_access",
        json!([ACCOUNT, a_chat, one_file, a_bob]),
    );
    wait_access(bob, fb, one_file, "denied");
    let r = stream(addr, &token, *one, &[]);
    assert_eq!(r.status, 403);
    assert!(r.error().contains("denied"), "{}", r.error());

    // The owner revokes while bob's viewer is streaming: the stream ends, cut.
    let auth_header = bearer(&token);
    let mut viewing = send_request(
        addr,
        "GET",
        &format!("/stream/{big}"),
        &[("Authorization", &auth_header)],
        None,
    );
    assert_eq!(viewing.status, 200);
    let head = viewing.take(CHUNK);
    alice.call(
        "privitty_revoke_file_access",
        json!([ACCOUNT, a_chat, big_file, a_bob]),
    );
    let line = bob.stack.wait_log("viewer stream ended early", 1);
    eprintln!("revoked while streaming: {line}");
    let rest = viewing.finish(head);
    assert!(rest.cut, "a revoked stream must not end cleanly");
    assert!(rest.body.len() < big_bytes.len());
    assert_eq!(rest.body[..], big_bytes[..rest.body.len()]);
    let r = stream(addr, &token, *big, &[]);
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
}
