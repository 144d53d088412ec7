//! Viewer throughput, same run: one licensed privitty-edged with the real engine, its data
//! directory on tmpfs (`/dev/shm` when there is one, so writing the decrypted copy costs what
//! writing to `/dev/null`-like memory does and disk speed measures nothing), a 100 MB protected file
//! of its own, then ROUNDS rounds of
//! - reading the `.prv` raw (the engine's copy, 1 MiB reads),
//! - `privitty_decrypt_file` (decrypts into the files directory, on tmpfs; the copy is deleted),
//! - `GET /stream/:msg_id` read to the end by a plain HTTP client,
//!
//! printing the median MB/s of each, the ratio stream / decrypt against the goal (≥ 0.8), and
//! edged's RSS before, at its peak during each kind of round, and after. Run by
//! `tests/bench/viewer-bench.sh`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use privitty_tests::edged_stack::{EdgedStack, LicenseState, install_license};
use serde_json::{Value, json};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// edged's resident set in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples edged's RSS every 5 ms while `f` runs; returns its result and the peak.
fn with_peak<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    (out, peak.load(Ordering::Relaxed))
}

/// Pseudo-random bytes (incompressible, so nothing along the way can shortcut them).
fn content(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// `GET /stream/:msg_id` read to the end; returns the body bytes (checked against the length).
fn stream(addr: SocketAddr, token: &str, msg: u64) -> u64 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).ok();
    write!(
        s,
        "GET /stream/{msg} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::with_capacity(256 * 1024, s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "stream: {line}");
    let mut length = 0u64;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap();
        }
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    assert_eq!(got, length, "the whole body");
    got
}

fn raw_read(path: &Path) -> u64 {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let size: usize = env_or("SIZE_MB", 100usize) * 1000 * 1000;
    let rounds: usize = env_or("ROUNDS", 5usize).max(1);
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("privitty-viewer-bench-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new()
            .prefix("privitty-viewer-bench-")
            .tempdir()
    }
    .expect("temp dir");
    let accounts = base.path().join("data");
    let builder = EdgedStack::builder();
    install_license(&accounts, &builder.key, LicenseState::Active);
    let edged = builder
        .accounts(&accounts)
        .env("PRIVITTY_LOG", "info")
        .start();
    let addr = edged.addr();
    let pid = edged.pid();

    // A 100 MB file of this gateway's own, sent (stored: the account is offline).
    let contact = edged.result("create_contact", json!([1, "bench@example.org", "Bench"]));
    let chat = edged.result("create_chat_by_contact_id", json!([1, contact]));
    let plain = accounts.join("files/bench.bin");
    std::fs::write(&plain, content(size)).unwrap();
    let began = Instant::now();
    let sent = edged.result(
        "privitty_send_file",
        json!([1, chat, contact, plain, false, false, 0]),
    );
    let encrypt = began.elapsed();
    std::fs::remove_file(&plain).unwrap();
    let prv = sent["encrypted_path"].as_str().unwrap().to_string();
    edged.call(
        "send_msg",
        json!([1, chat, {"file": prv, "viewtype": "File"}]),
    );
    let ids = edged.result("get_message_ids", json!([1, chat, false, false]));
    let msg = ids
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .find(|id| edged.result("get_message", json!([1, id]))["fileName"] == "bench.bin.prv")
        .expect("the .prv message");
    let blob = edged.result("get_message", json!([1, msg]))["file"]
        .as_str()
        .unwrap()
        .to_string();
    let fingerprint = std::fs::read_to_string(accounts.join("device.fingerprint")).unwrap();
    let token = {
        let body = json!({"device_fingerprint": fingerprint.trim()}).to_string();
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /auth HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let json: Value = serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap();
        json["token"].as_str().expect("token").to_string()
    };
    let prv_size = std::fs::metadata(&blob).unwrap().len();
    println!(
        "file: {size} bytes ({prv_size} as .prv), data directory on {}; encrypted in {:.2} s; {rounds} rounds",
        if shm.is_dir() {
            "tmpfs (/dev/shm)"
        } else {
            "the temp dir"
        },
        encrypt.as_secs_f64()
    );

    let idle = rss_kib(pid);
    let (mut raw, mut dec, mut stm) = (Vec::new(), Vec::new(), Vec::new());
    let (mut dec_peak, mut stm_peak) = (0u64, 0u64);
    for round in 0..rounds {
        // Alternate the order, so neither always runs on a warmer cache.
        let order: [u8; 3] = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for kind in order {
            match kind {
                0 => {
                    let t = Instant::now();
                    let n = raw_read(Path::new(&blob));
                    raw.push(mbps(n, t.elapsed()));
                }
                1 => {
                    let t = Instant::now();
                    let (answer, peak) = with_peak(pid, || {
                        edged.result("privitty_decrypt_file", json!([1, msg]))
                    });
                    let d = t.elapsed();
                    let n = answer["size"].as_u64().expect("size");
                    assert_eq!(n as usize, size);
                    std::fs::remove_file(answer["path"].as_str().unwrap()).unwrap();
                    dec.push(mbps(n, d));
                    dec_peak = dec_peak.max(peak);
                }
                _ => {
                    let t = Instant::now();
                    let (n, peak) = with_peak(pid, || stream(addr, &token, msg));
                    stm.push(mbps(n, t.elapsed()));
                    stm_peak = stm_peak.max(peak);
                }
            }
        }
    }
    let after = rss_kib(pid);
    let (raw, dec, stm) = (median(&mut raw), median(&mut dec), median(&mut stm));
    let ratio = stm / dec;
    println!(
        "read .prv raw                {raw:>8.0} MB/s (plaintext-equivalent bytes: .prv size)"
    );
    println!("privitty_decrypt_file        {dec:>8.0} MB/s (into the files directory on tmpfs)");
    println!(
        "GET /stream/:msg_id          {stm:>8.0} MB/s = {ratio:.2}× the decrypt rate ({} the goal ≥ 0.8×)",
        if ratio >= 0.8 { "meets" } else { "misses" }
    );
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "edged RSS: idle {:.1} MiB; peak during decrypt {:.1} MiB, during /stream {:.1} MiB (+{:.1} MiB for a {} MB file); after {:.1} MiB",
        mib(idle),
        mib(dec_peak),
        mib(stm_peak),
        mib(stm_peak.saturating_sub(idle)),
        size / 1_000_000,
        mib(after)
    );
}
