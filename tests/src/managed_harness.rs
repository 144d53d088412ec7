//! Harness for privitty-init managed-mode tests: boots privitty-init around the real privitty-edged
//! and engine (and, when a test wants one, the reference license server), follows generations
//! through init's JSON log, and speaks just enough HTTP/1.1 to classify every failed request.
//!
//! Owns: the managed stack's directories and environment, log reading, license files for
//! file-drop provisioning, the raw HTTP client and the load clients. Must not sleep to wait:
//! everything waits on [`support::eventually`] with a deadline.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::init_harness::{Init, InitSpec};
use crate::license_server::LicenseServer;
use crate::support::{self, DumpDirOnFailure};

/// How long any single awaited condition may take before the test fails.
pub use crate::support::DEADLINE;

/// JSON-RPC code of a gated call without a usable license.
pub const LICENSE_REQUIRED: i64 = -32001;

/// A gated method, called with parameters it rejects: licensed, it answers some other error.
pub const GATED_METHOD: &str = "privitty_send_file";

/// The log messages of privitty-init the tests follow (see `supervisor/src/managed`).
pub mod msg {
    pub const LISTENING: &str = "managed mode";
    pub const STARTED: &str = "generation started";
    pub const READY: &str = "generation ready";
    pub const STOPPING_PREVIOUS: &str = "stopping the previous generation";
    pub const UNCHANGED: &str = "license unchanged; no swap";
    pub const INVALID: &str = "the license file is not valid";
    pub const ACTIVATED: &str = "license activated";
    pub const ACTIVATION_SKIPPED: &str = "privitty.lic is present: start-up activation skipped";
    pub const ACTIVATION_LATE: &str = "license activation did not finish in time";
    pub const ACTIVATION_REFUSED: &str = "license activation refused";
    pub const ACTIVATION_RETRY: &str = "license activation failed; retrying";
    pub const ACTIVATION_SUPERSEDED: &str = "a license was installed meanwhile";
    pub const SYNCED: &str = "periodic license sync done";
    pub const UNEXPECTED_EXIT: &str = "generation exited unexpectedly";
    pub const CRASH_LOOP: &str = "crash loop";
}

/// A temp dir for one test: `accounts/` (the data volume), `logs/`, `server/` (license server).
#[derive(Debug)]
pub struct TestDirs {
    // Dropped first (fields drop in order): the listing needs the directory still there.
    _dump: DumpDirOnFailure,
    pub accounts: PathBuf,
    pub logs: PathBuf,
    pub server: PathBuf,
    pub root: tempfile::TempDir,
}

impl TestDirs {
    pub fn new() -> TestDirs {
        let root = tempfile::Builder::new()
            .prefix("privitty-managed-")
            .tempdir()
            .expect("temp dir");
        let accounts = root.path().join("accounts");
        let logs = root.path().join("logs");
        let server = root.path().join("server");
        for d in [&accounts, &logs, &server] {
            std::fs::create_dir_all(d).expect("create test dir");
        }
        TestDirs {
            _dump: DumpDirOnFailure(accounts.clone()),
            root,
            accounts,
            logs,
            server,
        }
    }
}

impl Default for TestDirs {
    fn default() -> TestDirs {
        TestDirs::new()
    }
}

/// How to start the managed stack.
#[derive(Debug, Clone, Default)]
pub struct StackSpec {
    /// Extra environment (overrides the harness defaults).
    pub env: Vec<(String, String)>,
    /// `-- CMD ARGS` instead of the default privitty-edged.
    pub command: Vec<OsString>,
    /// Run init as PID 1 of a new PID namespace.
    pub pid_namespace: bool,
    /// Wait for the listening address (off for stacks expected to die at once).
    pub no_wait: bool,
}

impl StackSpec {
    pub fn env(mut self, key: &str, value: impl Into<String>) -> StackSpec {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Trust `server`'s license key (as `PRIVITTY_LICENSE_PUBKEY`).
    pub fn trusting(self, server: &LicenseServer) -> StackSpec {
        let key = server.pubkey_path().display().to_string();
        self.env("PRIVITTY_LICENSE_PUBKEY", key)
    }
}

/// Reads a stack's log from where it stopped last, parsing only lines that may matter.
#[derive(Debug)]
pub struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LogTail {
    /// Waits for generation `n`'s ready line (returned) among the lines written since the last
    /// call; earlier lines are not read again.
    pub fn wait_generation(&mut self, n: u64) -> Value {
        support::eventually(DEADLINE, &format!("generation {n} ready"), || {
            self.next_lines()
                .into_iter()
                .filter(|l| l.contains(msg::READY))
                .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
                .find(|v| v["message"] == msg::READY && v["generation"].as_u64() == Some(n))
        })
    }

    /// Waits for a line with `message` (returned) among the lines written since the last call;
    /// earlier lines are not read again.
    pub fn wait_message(&mut self, message: &str) -> Value {
        support::eventually(DEADLINE, message, || {
            self.next_lines()
                .into_iter()
                .filter(|l| l.contains(message))
                .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
                .find(|v| v["message"] == message)
        })
    }

    /// The whole lines written since the last look.
    fn next_lines(&mut self) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut fresh = Vec::new();
        let Ok(n) = f.read_to_end(&mut fresh) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&fresh);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        String::from_utf8_lossy(&whole)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// privitty-init in managed mode with its generations of privitty-edged.
#[derive(Debug)]
pub struct Stack {
    pub init: Init,
    pub accounts: PathBuf,
    addr: Option<SocketAddr>,
}

impl Stack {
    pub fn start(name: &str, dirs: &TestDirs, spec: StackSpec) -> Stack {
        let mut args: Vec<OsString> = Vec::new();
        if !spec.command.is_empty() {
            args.push("--".into());
            args.extend(spec.command.iter().cloned());
        }
        let mut init_spec = InitSpec {
            args,
            env: Vec::new(),
            pid_namespace: spec.pid_namespace,
            extra_fds: false,
            init: None,
            cwd: None,
        };
        let defaults = [
            ("PRIVITTY_ACCOUNTS", dirs.accounts.display().to_string()),
            ("PRIVITTY_LISTEN", "127.0.0.1:0".to_string()),
            ("PRIVITTY_ENGINE", support::engine().display().to_string()),
            ("PRIVITTY_LOG", "info,supervisor=debug".to_string()),
            ("PRIVITTY_LOG_FORMAT", "json".to_string()),
            ("PRIVITTY_STOP_TIMEOUT", "5s".to_string()),
            ("PRIVITTY_LICENSE_SYNC_INTERVAL", "0".to_string()),
            ("PRIVITTY_PROFILE", "managed-test".to_string()),
        ];
        for (k, v) in defaults {
            init_spec = init_spec.env(k, &v);
        }
        for (k, v) in &spec.env {
            init_spec = init_spec.env(k, v);
        }
        let init = Init::start(name, init_spec, &dirs.logs);
        let mut stack = Stack {
            init,
            accounts: dirs.accounts.clone(),
            addr: None,
        };
        if !spec.no_wait {
            stack.addr = Some(stack.wait_listening());
        }
        stack
    }

    fn wait_listening(&self) -> SocketAddr {
        let line = self.wait_log(msg::LISTENING, 1);
        line["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in {line}"))
    }

    /// The address privitty-init bound (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("stack started with no_wait")
    }

    /// Every JSON log line so far (init's and its children's, interleaved as written).
    pub fn log(&self) -> Vec<Value> {
        self.init
            .proc
            .stderr()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Log lines whose message starts with `message`.
    pub fn lines(&self, message: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .collect()
    }

    /// Waits until at least `count` lines start with `message`; returns the `count`-th.
    pub fn wait_log(&self, message: &str, count: usize) -> Value {
        support::eventually(DEADLINE, &format!("{count}× log {message:?}"), || {
            if self.exited() {
                // Looking further is pointless, and the panic shows its output.
                let found = self.lines(message);
                return if found.len() >= count {
                    Some(found[count - 1].clone())
                } else {
                    panic!("privitty-init exited before logging {count}× {message:?}")
                };
            }
            let found = self.lines(message);
            (found.len() >= count).then(|| found[count - 1].clone())
        })
    }

    /// Waits for generation `n` to report ready; returns its log line (`generation`, `pid`, `license`).
    pub fn wait_generation(&self, n: u64) -> Value {
        support::eventually(DEADLINE, &format!("generation {n} ready"), || {
            if self.exited() {
                panic!("privitty-init exited before generation {n} was ready");
            }
            self.lines(msg::READY)
                .into_iter()
                .find(|v| v["generation"].as_u64() == Some(n))
        })
    }

    /// A follower of this stack's log from its current end, for benchmarks that wait for many
    /// generations while they measure: [`Stack::wait_generation`] parses the whole log at every
    /// look, and on a shared machine that CPU would be counted against the swaps.
    pub fn tail(&self) -> LogTail {
        let path = self.init.proc.stderr_path.clone();
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        LogTail {
            path,
            offset,
            partial: Vec::new(),
        }
    }

    /// Whether privitty-init has ended (a zombie, or gone).
    pub fn exited(&self) -> bool {
        matches!(self.init.state(), 'Z' | 'X' | '?')
    }

    /// The number of generations started so far.
    pub fn generations_started(&self) -> usize {
        self.lines(msg::STARTED).len()
    }

    /// The pid of generation `n` (from its ready line).
    pub fn edged_pid(&self, n: u64) -> Pid {
        let line = self.wait_generation(n);
        Pid::from_raw(line["pid"].as_i64().expect("pid field") as i32)
    }

    pub fn signal(&self, sig: Signal) {
        self.init.signal(sig);
    }

    /// A gated call's JSON-RPC error code (`None`: it succeeded).
    pub fn gated_call_code(&self) -> Option<i64> {
        let resp = rpc(self.addr(), GATED_METHOD, json!([])).expect("gated call");
        resp.get("error")
            .map(|e| e["code"].as_i64().expect("error code"))
    }

    /// Writes `content` as the license through a rename (how tools and Kubernetes replace files).
    pub fn drop_license_atomically(&self, content: &str) {
        write_atomically(&self.accounts.join("privitty.lic"), content);
    }
}

impl Drop for Stack {
    /// Stops the stack the way a container stop does, so it cleans up after itself; whatever is
    /// left after the deadline is killed by `Init`'s drop.
    fn drop(&mut self) {
        if self.exited() {
            return;
        }
        let _ = nix::sys::signal::kill(self.init.pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(2);
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Writes `path` through a temp file in the same directory and a rename.
pub fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("incoming");
    std::fs::write(&tmp, content).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// Provisions `accounts` for file drops: a fresh `device.uuid`; returns it.
pub fn provision_device(accounts: &Path) -> String {
    let device = uuid::Uuid::new_v4().to_string();
    std::fs::write(accounts.join("device.uuid"), format!("{device}\n")).expect("write device.uuid");
    device
}

/// The `jti` claim of a license JWT.
pub fn jti(jwt: &str) -> String {
    let payload = jwt.split('.').nth(1).expect("JWT payload");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url payload");
    let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["jti"].as_str().expect("jti claim").to_string()
}

// The HTTP/1.1 client of the tests (one for all): [`crate::http`]; re-exported here for the
// tests that reach it through this harness.
pub use crate::http::{Conn, HttpError, HttpResponse};

/// `GET path` on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse, HttpError> {
    Conn::connect(addr)?.request("GET", path, None, false)
}

/// A JSON-RPC call on a fresh connection; the response object (HTTP 200 required).
pub fn rpc(addr: SocketAddr, method: &str, params: Value) -> Result<Value, HttpError> {
    let body = rpc_body(method, params);
    let resp = Conn::connect(addr)?.request("POST", "/rpc", Some(&body), false)?;
    if resp.status != 200 {
        return Err(HttpError::Broken(format!(
            "HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        )));
    }
    serde_json::from_slice(&resp.body).map_err(|e| HttpError::Broken(format!("JSON: {e}")))
}

pub fn rpc_body(method: &str, params: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .expect("serialize")
}

// ---------------------------------------------------------------------------------------------
// Load clients.

/// What a load client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A new connection per request (`Connection: close`).
    Fresh,
    /// One connection reused; reconnects when the server closes it.
    KeepAlive,
}

/// What one load client saw.
#[derive(Debug, Default, Clone)]
pub struct ClientReport {
    pub ok: u64,
    /// Keep-alive retries after a reused connection closed before any response byte (allowed).
    pub retries: u64,
    pub failures: Vec<String>,
    /// (request start, latency) of each successful request.
    pub latencies: Vec<(Instant, Duration)>,
}

/// Runs requests alternating `GET /health` and a gated `POST /rpc` until `stop`; every request
/// must succeed: HTTP 200 and, for the gated call, a JSON-RPC answer that is not -32001.
pub fn load_client(addr: SocketAddr, kind: ClientKind, stop: Arc<AtomicBool>) -> ClientReport {
    let mut report = ClientReport::default();
    let rpc_req = rpc_body(GATED_METHOD, json!([]));
    let mut conn: Option<Conn> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (method, path, body) = if i.is_multiple_of(2) {
            ("GET", "/health", None)
        } else {
            ("POST", "/rpc", Some(rpc_req.as_slice()))
        };
        let start = Instant::now();
        let result = match kind {
            ClientKind::Fresh => {
                Conn::connect(addr).and_then(|mut c| c.request(method, path, body, false))
            }
            ClientKind::KeepAlive => {
                let reused = conn.is_some();
                let first = match conn.take() {
                    Some(c) => Ok(c),
                    None => Conn::connect(addr),
                }
                .and_then(|mut c| c.request(method, path, body, true).map(|r| (c, r)));
                let outcome = match first {
                    Err(HttpError::NoResponse(_)) if reused => {
                        report.retries += 1;
                        Conn::connect(addr)
                            .and_then(|mut c| c.request(method, path, body, true).map(|r| (c, r)))
                    }
                    other => other,
                };
                outcome.map(|(c, r)| {
                    if !r.close {
                        conn = Some(c);
                    }
                    r
                })
            }
        };
        let elapsed = start.elapsed();
        match result {
            Ok(resp) => match judge(path, &resp) {
                Ok(()) => {
                    report.ok += 1;
                    report.latencies.push((start, elapsed));
                }
                Err(why) => report.failures.push(format!("{method} {path}: {why}")),
            },
            Err(e) => report.failures.push(format!("{method} {path}: {e}")),
        }
    }
    report
}

fn judge(path: &str, resp: &HttpResponse) -> Result<(), String> {
    if resp.status != 200 {
        return Err(format!(
            "HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        ));
    }
    if path == "/rpc" {
        let v: Value =
            serde_json::from_slice(&resp.body).map_err(|e| format!("bad JSON-RPC body: {e}"))?;
        if v["error"]["code"].as_i64() == Some(LICENSE_REQUIRED) {
            return Err(format!("gated call refused: {v}"));
        }
    }
    Ok(())
}

/// p50, p99 and max of `samples`, in milliseconds.
pub fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    samples.sort();
    let at = |q: f64| {
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[idx].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99), at(1.0))
}

/// Milliseconds between two wall-clock instants (log timestamps are RFC 3339 wall time).
pub fn wall_ms(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// A log line's `timestamp` as wall time.
pub fn log_time(line: &Value) -> SystemTime {
    let ts = line["timestamp"].as_str().expect("timestamp field");
    humantime::parse_rfc3339(ts)
        .or_else(|_| humantime::parse_rfc3339_weak(ts))
        .unwrap_or_else(|e| panic!("timestamp {ts:?}: {e}"))
}
