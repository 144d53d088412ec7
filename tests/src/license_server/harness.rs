//! Test harness: runs the real `privitty-license-server` binary in a state dir and administers it
//! through its real `admin` subcommands. Owns the server process for a test's lifetime (killed on
//! drop, output printed when the test fails). Must not: reach into the server's files behind its back
//! (tests read only what users could: `license-pubkey.pem`, `ca.pem`, admin output).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{Proc, bin, eventually};

use super::signing::pubkey_path;
use super::tls::ca_path;

const BINARY: &str = "privitty-license-server";
const START_DEADLINE: Duration = Duration::from_secs(30);

/// What `create_license` asks for. Defaults: 1 seat, entitlement 30 d, sync window 7 d, grace 14 d,
/// offline allowance 30 d. Durations are whole seconds on the server (sub-second values round up).
#[derive(Clone, Debug)]
pub struct LicenseSpec {
    pub seats: u32,
    pub entitlement: Duration,
    pub sync_window: Duration,
    pub grace: Duration,
    pub offline_allowance: Duration,
    pub customer: Option<String>,
    pub features: Vec<String>,
}

impl Default for LicenseSpec {
    fn default() -> LicenseSpec {
        const DAY: u64 = 24 * 3600;
        LicenseSpec {
            seats: 1,
            entitlement: Duration::from_secs(30 * DAY),
            sync_window: Duration::from_secs(7 * DAY),
            grace: Duration::from_secs(14 * DAY),
            offline_allowance: Duration::from_secs(30 * DAY),
            customer: None,
            features: Vec::new(),
        }
    }
}

/// A misbehaviour for the next protocol calls (see `privitty-license-server admin fault --help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `500` with an error body; state untouched.
    Status500,
    /// `429` with `Retry-After` (whole seconds); state untouched.
    TooManyRequests { retry_after: Duration },
    /// Answers normally after this delay.
    Delay(Duration),
    /// `200` whose body is not JSON; state untouched.
    Garbage200,
    /// Answers normally with a JWT signed by an untrusted key.
    WrongKey,
    /// Clears a pending fault.
    None,
}

/// A running reference license server. Its logs are kept under `<dir>/logs/` and printed when the
/// test fails, so drop it before the temp dir that holds `dir`.
#[derive(Debug)]
pub struct LicenseServer {
    state_dir: PathBuf,
    tls_names: Option<Vec<String>>,
    /// The address bound (port 0 at first); a restart binds the same host.
    listen_host: String,
    /// `--public-url`, when devices reach the server by another address.
    public_url: Option<String>,
    base_url: String,
    proc: Option<Proc>,
    generation: u32,
}

impl LicenseServer {
    /// Starts a plain-HTTP server on `127.0.0.1:0` with its state in `dir`.
    pub fn start(dir: &Path) -> LicenseServer {
        LicenseServer::launch(dir, None)
    }

    /// Starts an HTTPS server whose certificate covers `names` (issued by `ca_path()`).
    pub fn start_tls(dir: &Path, names: &[&str]) -> LicenseServer {
        let names = names.iter().map(|s| s.to_string()).collect();
        LicenseServer::launch(dir, Some(names))
    }

    /// Starts an HTTPS server bound to `host` (an IPv4 address or a bracketed IPv6 one; the kernel
    /// picks the port) whose certificate covers `names`, with `public_url` (when given) as the base
    /// of the delivery URLs. For devices that reach the server by another address than loopback,
    /// e.g. containers reaching the host through their bridge's gateway.
    pub fn start_tls_on(
        dir: &Path,
        host: &str,
        names: &[&str],
        public_url: Option<&str>,
    ) -> LicenseServer {
        let mut server = LicenseServer {
            state_dir: dir.to_path_buf(),
            tls_names: Some(names.iter().map(|s| s.to_string()).collect()),
            listen_host: host.to_string(),
            public_url: public_url.map(str::to_string),
            base_url: String::new(),
            proc: None,
            generation: 0,
        };
        server.spawn(&format!("{}:0", server.listen_host));
        server
    }

    fn launch(dir: &Path, tls_names: Option<Vec<String>>) -> LicenseServer {
        let mut server = LicenseServer {
            state_dir: dir.to_path_buf(),
            tls_names,
            listen_host: "127.0.0.1".to_string(),
            public_url: None,
            base_url: String::new(),
            proc: None,
            generation: 0,
        };
        server.spawn("127.0.0.1:0");
        server
    }

    /// Spawns the binary and waits for its `listening <url>` line; `None` if it exited first.
    fn try_spawn(&mut self, listen: &str) -> Option<()> {
        self.generation += 1;
        let mut cmd = Command::new(bin(BINARY));
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--listen", listen]);
        if let Some(names) = &self.tls_names {
            cmd.arg("--tls").arg("--tls-names").arg(names.join(","));
        }
        if let Some(url) = &self.public_url {
            cmd.arg("--public-url").arg(url);
        }
        if std::env::var_os("PRIVITTY_LOG").is_none() {
            cmd.env("PRIVITTY_LOG", "info,privitty_tests=debug");
        }
        let name = format!("license-server-{}", self.generation);
        let mut proc = Proc::spawn(&name, cmd, &self.state_dir.join("logs"));
        let line = eventually(
            START_DEADLINE,
            "the license server's `listening` line",
            || {
                if let Some((line, _)) = proc.stdout().split_once('\n') {
                    return Some(Some(line.to_string()));
                }
                // exited before listening: report it instead of waiting out the deadline
                proc.child.try_wait().expect("try_wait").map(|_| None)
            },
        );
        let Some(line) = line else {
            eprintln!("{}", proc.output());
            return None;
        };
        let url = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}\n{}", proc.output()));
        self.base_url = url.to_string();
        self.proc = Some(proc);
        Some(())
    }

    fn spawn(&mut self, listen: &str) {
        if self.try_spawn(listen).is_none() {
            panic!("privitty-license-server exited before listening on {listen} (output above)");
        }
    }

    /// Stops the server (SIGTERM, waits for exit). State stays in the state dir.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal(nix::sys::signal::Signal::SIGTERM);
            proc.wait_timeout(START_DEADLINE);
        }
    }

    /// Stops and starts the server on the same state dir, on the same port when it is still free.
    pub fn restart(&mut self) {
        let port = self.port();
        self.stop();
        let host = self.listen_host.clone();
        if self.try_spawn(&format!("{host}:{port}")).is_none() {
            self.spawn(&format!("{host}:0"));
        }
    }

    /// e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn port(&self) -> u16 {
        self.base_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("base url ends with a port")
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The public key devices must trust (`PRIVITTY_LICENSE_PUBKEY`).
    pub fn pubkey_path(&self) -> PathBuf {
        pubkey_path(&self.state_dir)
    }

    /// The CA that issued the HTTPS certificate (`SSL_CERT_FILE`); exists only for `start_tls` and
    /// `start_tls_on`.
    pub fn ca_path(&self) -> PathBuf {
        ca_path(&self.state_dir)
    }

    /// The server's stdout and stderr so far (for failure messages).
    pub fn output(&self) -> String {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }

    /// Runs `privitty-license-server admin --state-dir DIR <args>`; panics with its output on failure.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(bin(BINARY))
            .arg("admin")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .output()
            .expect("running privitty-license-server admin");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`privitty-license-server admin {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Creates a license; returns its delivery URL `<base>/v1/license/<TOKEN>`.
    pub fn create_license(&self, spec: &LicenseSpec) -> String {
        let fmt = |d: Duration| format!("{}ms", d.as_millis());
        let seats = spec.seats.to_string();
        let (ent, sync, grace, offline) = (
            fmt(spec.entitlement),
            fmt(spec.sync_window),
            fmt(spec.grace),
            fmt(spec.offline_allowance),
        );
        let mut args = vec![
            "create-license",
            "--seats",
            &seats,
            "--entitlement",
            &ent,
            "--sync-window",
            &sync,
            "--grace",
            &grace,
            "--offline-allowance",
            &offline,
        ];
        if let Some(c) = &spec.customer {
            args.extend(["--customer", c]);
        }
        for f in &spec.features {
            args.extend(["--feature", f]);
        }
        self.admin(&args).trim().to_string()
    }

    /// Revokes a license by id or TOKEN (or its delivery URL).
    pub fn revoke(&self, license: &str) {
        let key = license.rsplit('/').next().unwrap_or(license);
        // `--`: a TOKEN may start with `-`.
        self.admin(&["revoke", "--", key]);
    }

    /// Every activation the server knows, as `list-activations --json` prints them.
    pub fn activations(&self) -> Vec<serde_json::Value> {
        let out = self.admin(&["list-activations", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("list-activations --json: {e}: {out}"))
    }

    /// A license JWT for `device` without an activation (file-drop provisioning). `license` is a
    /// license id, TOKEN or delivery URL.
    pub fn issue_offline(&self, license: &str, device: &str) -> String {
        let key = license.rsplit('/').next().unwrap_or(license);
        // `--license=…`: a TOKEN may start with `-`, which as a separate argument reads as a flag.
        let license = format!("--license={key}");
        let device = format!("--device={device}");
        self.admin(&["issue-offline", &license, &device])
            .trim()
            .to_string()
    }

    /// Applies `fault` to the next `count` protocol calls (replacing any pending fault).
    pub fn fault(&self, fault: Fault, count: u32) {
        let count_s = count.to_string();
        let mut args = vec!["fault"];
        let extra;
        match fault {
            Fault::Status500 => args.push("500"),
            Fault::TooManyRequests { retry_after } => {
                extra = retry_after.as_secs().to_string();
                args.extend(["429", "--retry-after", &extra]);
            }
            Fault::Delay(d) => {
                extra = d.as_millis().to_string();
                args.extend(["delay", "--ms", &extra]);
            }
            Fault::Garbage200 => args.push("garbage-200"),
            Fault::WrongKey => args.push("wrong-key"),
            Fault::None => {
                args.extend(["500", "--count", "0"]);
                self.admin(&args);
                return;
            }
        }
        args.extend(["--count", &count_s]);
        self.admin(&args);
    }
}
