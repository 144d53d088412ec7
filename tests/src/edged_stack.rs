//! Starting privitty-edged (standalone, with the real engine) for system tests.
//!
//! Owns: a temp data directory with (optionally) a license signed by a test key, the edged process
//! on port 0 with its own `NOTIFY_SOCKET` (readiness = `READY=1`, never a sleep), a small blocking
//! HTTP/1.1 client for exact status/header/body checks, and finding the engine (edged's child) via
//! /proc. Must not: reach the network, or leave processes behind (the process is killed on drop).

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{DumpDirOnFailure, Proc, bin, engine};

/// How long start-up may take before a test fails (the engine answers in ~10 ms; debug builds and a
/// busy 2-core machine need far more headroom).
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// A license-signing key for tests, trusted by edged through `PRIVITTY_LICENSE_PUBKEY`.
#[derive(Debug, Clone)]
pub struct TestKey {
    signing: SigningKey,
}

impl Default for TestKey {
    fn default() -> Self {
        TestKey::generate()
    }
}

impl TestKey {
    pub fn generate() -> TestKey {
        TestKey {
            signing: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// PEM of the public key (the value of `PRIVITTY_LICENSE_PUBKEY`).
    pub fn public_pem(&self) -> String {
        self.signing
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("public key PEM")
    }

    /// First 16 hex digits of SHA-256 over the raw public key.
    pub fn kid(&self) -> String {
        hex::encode(Sha256::digest(self.signing.verifying_key().as_bytes()))[..16].to_string()
    }

    /// A compact JWS over `claims` with the license header.
    pub fn sign(&self, claims: &Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = json!({"alg":"EdDSA","typ":"privitty-lic+jwt","kid":self.kid()});
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let sig = self.signing.sign(input.as_bytes());
        format!("{input}.{}", b64.encode(sig.to_bytes()))
    }
}

/// The license a test puts in the data directory before edged starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LicenseState {
    /// No `privitty.lic`: `no_license` / `not_activated`.
    Missing,
    Active,
    /// Past `sync_by`, before `exp`.
    GracePeriod,
    /// Past `exp`.
    Expired,
    /// Signed by a key edged does not trust: `no_license` / `untrusted_key`.
    Untrusted,
}

impl LicenseState {
    /// The status word edged reports for it.
    pub fn status(self) -> &'static str {
        match self {
            LicenseState::Active => "active",
            LicenseState::GracePeriod => "grace_period",
            LicenseState::Expired => "expired",
            LicenseState::Missing | LicenseState::Untrusted => "no_license",
        }
    }

    pub fn allows_gated(self) -> bool {
        matches!(self, LicenseState::Active | LicenseState::GracePeriod)
    }

    pub const ALL: [LicenseState; 5] = [
        LicenseState::Missing,
        LicenseState::Active,
        LicenseState::GracePeriod,
        LicenseState::Expired,
        LicenseState::Untrusted,
    ];
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Writes `device.uuid` and, unless `Missing`, a `privitty.lic` in the given state signed by `key`
/// (or by a fresh untrusted key for `Untrusted`). No `activation.json`: a file-drop license.
pub fn install_license(accounts: &Path, key: &TestKey, state: LicenseState) {
    std::fs::create_dir_all(accounts).expect("create accounts dir");
    let device = uuid::Uuid::new_v4().to_string();
    std::fs::write(accounts.join("device.uuid"), format!("{device}\n")).expect("write device.uuid");
    let now = unix_now();
    let day = 86_400;
    let (iat, sync_by, exp) = match state {
        LicenseState::Missing => return,
        LicenseState::Active | LicenseState::Untrusted => (now - 60, now + day, now + 2 * day),
        LicenseState::GracePeriod => (now - 2 * day, now - 3600, now + day),
        LicenseState::Expired => (now - 3 * day, now - 2 * day, now - day),
    };
    let claims = json!({
        "ver": 1, "iss": "privitty-license", "aud": "privitty-edge",
        "sub": "lic-test", "jti": uuid::Uuid::new_v4().to_string(),
        "iat": iat, "sync_by": sync_by, "exp": exp, "dev": device,
        "customer": "edged tests",
    });
    let jwt = if state == LicenseState::Untrusted {
        TestKey::generate().sign(&claims)
    } else {
        key.sign(&claims)
    };
    std::fs::write(accounts.join("privitty.lic"), jwt).expect("write privitty.lic");
}

/// Options for [`EdgedStack`].
#[derive(Debug, Clone)]
pub struct EdgedBuilder {
    pub license: LicenseState,
    pub key: TestKey,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Reuse this data directory (e.g. a second edged on the same one); default: a fresh temp dir.
    pub accounts: Option<PathBuf>,
    /// Hand this socket over as fd 3 with `LISTEN_FDS=1` (systemd socket activation) instead of `--listen`.
    pub inherit: Option<Arc<std::net::TcpListener>>,
}

impl Default for EdgedBuilder {
    fn default() -> Self {
        EdgedBuilder {
            license: LicenseState::Missing,
            key: TestKey::generate(),
            args: Vec::new(),
            env: Vec::new(),
            accounts: None,
            inherit: None,
        }
    }
}

impl EdgedBuilder {
    pub fn license(mut self, state: LicenseState) -> Self {
        self.license = state;
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn accounts(mut self, dir: impl Into<PathBuf>) -> Self {
        self.accounts = Some(dir.into());
        self
    }

    /// Socket activation: edged gets `listener` as fd 3 (what privitty-init does).
    pub fn socket_activated(mut self, listener: std::net::TcpListener) -> Self {
        self.inherit = Some(Arc::new(listener));
        self
    }

    /// Spawns edged without waiting for readiness (for tests of start-up failures).
    pub fn spawn(self) -> EdgedStack {
        let dir = tempfile::tempdir().expect("temp dir");
        let accounts = self
            .accounts
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        if self.accounts.is_none() {
            install_license(&accounts, &self.key, self.license);
        }
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        let mut cmd = match &self.inherit {
            None => {
                let mut c = Command::new(bin("privitty-edged"));
                c.arg("--listen").arg("127.0.0.1:0");
                c
            }
            Some(listener) => {
                // The shell moves the socket to fd 3 and execs edged, as a service manager would.
                let fd = listener.as_raw_fd();
                nix::fcntl::fcntl(
                    listener.as_fd(),
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )
                .expect("clear FD_CLOEXEC on the listener");
                let mut c = Command::new("/bin/bash");
                c.arg("-c")
                    .arg(if fd == 3 {
                        "exec \"$0\" \"$@\"".to_string()
                    } else {
                        format!("exec \"$0\" \"$@\" 3<&{fd} {fd}<&-")
                    })
                    .arg(bin("privitty-edged"))
                    .env("LISTEN_FDS", "1")
                    .env("LISTEN_FDNAMES", "http");
                c
            }
        };
        cmd.arg("--accounts")
            .arg(&accounts)
            .args(&self.args)
            .env("PRIVITTY_ENGINE", engine())
            .env("PRIVITTY_PROFILE", "edged-test")
            .env("PRIVITTY_LICENSE_PUBKEY", self.key.public_pem())
            .env("PRIVITTY_LOG", "debug")
            .env("PRIVITTY_LOG_FORMAT", "json")
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("LISTEN_PID");
        if self.inherit.is_none() {
            cmd.env_remove("LISTEN_FDS");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("privitty-edged", cmd, &dir.path().join("logs"));
        if let Some(listener) = &self.inherit {
            // Only edged holds the socket from now on (this process's copy closes with the builder).
            let _ = nix::fcntl::fcntl(
                listener.as_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
        EdgedStack {
            proc,
            addr: None,
            accounts: accounts.clone(),
            notify,
            _dump: DumpDirOnFailure(accounts),
            _dir: dir,
        }
    }

    /// Spawns edged expecting it to fail: waits for its exit and returns the status with its
    /// stderr and stdout.
    pub fn spawn_and_wait_exit(self) -> (ExitStatus, String) {
        let mut stack = self.spawn();
        let status = wait_exit(&mut stack.proc, START_DEADLINE);
        (status, stack.proc.output())
    }

    /// Spawns edged and waits for `READY=1`.
    pub fn start(self) -> EdgedStack {
        let mut stack = self.spawn();
        stack.wait_ready();
        stack
    }
}

/// A running privitty-edged with its temp data directory.
#[derive(Debug)]
pub struct EdgedStack {
    pub proc: Proc,
    addr: Option<SocketAddr>,
    pub accounts: PathBuf,
    notify: UnixDatagram,
    _dump: DumpDirOnFailure,
    _dir: tempfile::TempDir,
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

impl EdgedStack {
    pub fn builder() -> EdgedBuilder {
        EdgedBuilder::default()
    }

    /// Default options: no license.
    pub fn start() -> EdgedStack {
        EdgedBuilder::default().start()
    }

    /// Waits for `READY=1` on the notify socket, then reads the bound address from the log.
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        self.notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("notify timeout");
        let mut buf = [0u8; 4096];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l == "READY=1") {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Some(status) = self.proc.child.try_wait().expect("try_wait") {
                panic!("privitty-edged exited before READY=1 ({status})");
            }
            assert!(
                start.elapsed() < START_DEADLINE,
                "privitty-edged not ready after {START_DEADLINE:?}"
            );
        }
        self.addr = Some(
            self.logged_addr()
                .expect("a `listening` log line with addr before READY=1"),
        );
    }

    /// The address from the `listening addr=…` log line.
    pub fn logged_addr(&self) -> Option<SocketAddr> {
        self.log_lines()
            .into_iter()
            .find(|l| l["message"] == "listening")
            .and_then(|l| l["addr"].as_str()?.parse().ok())
    }

    /// edged's log (stderr) as JSON objects.
    pub fn log_lines(&self) -> Vec<Value> {
        self.proc
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The address edged serves on (known once it is ready).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("edged is ready")
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The engine: edged's child process, from /proc.
    pub fn engine_pid(&self) -> Option<u32> {
        let pid = self.pid();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let mut all: Vec<u32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        // Threads of a multi-threaded process each list their own children.
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    all.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
                }
            }
        }
        all.into_iter().find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|n| n.trim().starts_with("deltachat"))
        })
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.proc.signal(nix::sys::signal::Signal::SIGTERM);
        wait_exit(&mut self.proc, Duration::from_secs(30))
    }

    /// One HTTP/1.1 request on a fresh connection (`Connection: close`).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.request_with(method, path, &[], body)
    }

    /// [`EdgedStack::request`] with extra headers (`Host` given here replaces the default one).
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {}\r\n", self.addr()));
        }
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
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body.unwrap_or("").as_bytes());
        self.raw_exchange(&raw)
    }

    /// Writes raw bytes on a fresh connection and parses the response (read until the server
    /// closes; [`crate::http::exchange_raw`]).
    pub fn raw_exchange(&self, raw: &[u8]) -> Reply {
        let r = crate::http::exchange_raw(self.addr(), raw).unwrap_or_else(|e| {
            let head = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
            panic!("{}: {head:?}…: {e}", self.addr())
        });
        Reply {
            status: r.status,
            body: r.text(),
            headers: r.headers,
        }
    }

    /// `POST /rpc` with a JSON body.
    pub fn post_rpc(&self, body: &str) -> Reply {
        self.request("POST", "/rpc", Some(body))
    }

    /// Calls a method (id 1) and returns the whole JSON-RPC response (`Value::Null` for HTTP 204).
    pub fn call(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc":"2.0","method":method,"params":params,"id":1}).to_string();
        let r = self.post_rpc(&body);
        match r.status {
            204 => Value::Null,
            200 => r.json(),
            s => panic!("{method}: HTTP {s}: {}", r.body),
        }
    }

    /// Calls a method and returns its `result`, panicking on a JSON-RPC error.
    pub fn result(&self, method: &str, params: Value) -> Value {
        let r = self.call(method, params.clone());
        if r.is_null() {
            return Value::Null;
        }
        assert!(r.get("error").is_none(), "{method} {params}: {r}");
        r["result"].clone()
    }
}

/// Waits until `proc` exited (panics after `deadline`) and returns its status.
pub fn wait_exit(proc: &mut Proc, deadline: Duration) -> ExitStatus {
    let name = proc.name.clone();
    crate::support::eventually(deadline, &format!("{name} to exit"), || {
        proc.child.try_wait().expect("try_wait")
    })
}
