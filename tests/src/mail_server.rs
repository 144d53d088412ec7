//! A real mail server (Debian's postfix + dovecot on 127.0.0.1, plain authentication, every
//! `@example.org` address accepted) for tests with two or more gateways, run by
//! `tests/scripts/mail-server.sh` in a temp dir and stopped when the guard drops — also when the
//! test fails, and then its logs are printed.
//!
//! Owns: the script's temp dir, reading the ports it picked, and fresh accounts for the engine's
//! `add_or_update_transport`. Must not: use fixed ports, touch anything outside its temp dir (the
//! script installs the Debian packages when missing, which needs root), or let a test pass
//! silently when the server cannot run here: [`MailServer::start`] returns a [`Skip`] the test
//! reports, and panics instead under `PRIVITTY_REQUIRE_ALL_TESTS=1`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::init_harness::{REQUIRE_ALL_TESTS, skip};

/// The domain every account lives in.
pub const DOMAIN: &str = "example.org";

/// The script's exit code for "cannot run here" (packages missing without root to install them).
const CANNOT_RUN: i32 = 3;

/// Why a test that needs the mail server cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip(pub String);

impl Skip {
    /// Prints `SKIPPED: <test>: <reason>` past the test harness's capture (a skip is seen even
    /// though the test "passes"); panics under `PRIVITTY_REQUIRE_ALL_TESTS=1`.
    pub fn report(&self, test: &str) {
        skip(test, &self.0);
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A running mail server; stopped (and waited for) on drop.
#[derive(Debug)]
pub struct MailServer {
    pub imap_port: u16,
    pub smtp_port: u16,
    pub domain: String,
    /// How long `start` took (the packages' install included, when it happened).
    pub start_time: Duration,
    dir: tempfile::TempDir,
}

/// `tests/scripts/mail-server.sh`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mail-server.sh")
}

impl MailServer {
    /// Starts a mail server in a fresh temp dir. `Err(Skip)` when it cannot run here (the reason
    /// says what is missing); panics when it can but fails, printing its logs, and instead of a
    /// skip when `PRIVITTY_REQUIRE_ALL_TESTS=1`.
    pub fn start() -> Result<MailServer, Skip> {
        let dir = tempfile::Builder::new()
            .prefix("privitty-mail-")
            .tempdir()
            .expect("temp dir for the mail server");
        let began = Instant::now();
        let (code, stderr) = run_script("start", dir.path());
        let start_time = began.elapsed();
        if code == Some(CANNOT_RUN) {
            let reason = format!(
                "the loopback mail server cannot run here: {}",
                last_line(&stderr)
            );
            if std::env::var(REQUIRE_ALL_TESTS).is_ok_and(|v| v == "1") {
                panic!("{reason} ({REQUIRE_ALL_TESTS}=1)");
            }
            return Err(Skip(reason));
        }
        assert_eq!(
            code,
            Some(0),
            "mail-server.sh start failed:\n{stderr}\n{}",
            describe_logs(dir.path())
        );
        let ports = dir.path().join("ports.json");
        let text = std::fs::read_to_string(&ports)
            .unwrap_or_else(|e| panic!("{}: {e}\n{stderr}", ports.display()));
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}: {text:?}", ports.display()));
        let port = |key: &str| {
            v[key]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("no {key} in {text}"))
        };
        Ok(MailServer {
            imap_port: port("imap_port"),
            smtp_port: port("smtp_port"),
            domain: v["domain"].as_str().unwrap_or(DOMAIN).to_string(),
            start_time,
            dir,
        })
    }

    /// The directory holding the server's configuration, mail, queue and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh random address on this server, as the engine's transport config for
    /// `add_or_update_transport` (plain IMAP and SMTP on loopback: with security left automatic
    /// the engine tries only TLS and STARTTLS).
    pub fn account(&self) -> Value {
        let id = uuid::Uuid::new_v4().simple().to_string();
        json!({
            "addr": format!("gw-{}@{}", &id[..12], self.domain),
            "password": &id[12..],
            "imapServer": "127.0.0.1",
            "imapPort": self.imap_port,
            "imapSecurity": "plain",
            "smtpServer": "127.0.0.1",
            "smtpPort": self.smtp_port,
            "smtpSecurity": "plain",
        })
    }

    /// Stops the daemons and waits until they are gone; returns how long that took.
    pub fn stop(&self) -> Duration {
        let began = Instant::now();
        let (code, stderr) = run_script("stop", self.dir.path());
        assert_eq!(code, Some(0), "mail-server.sh stop failed:\n{stderr}");
        began.elapsed()
    }

    /// dovecot's and postfix's logs, for failure messages.
    pub fn logs(&self) -> String {
        describe_logs(self.dir.path())
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let (code, stderr) = run_script("stop", self.dir.path());
        if code != Some(0) {
            eprintln!("mail-server.sh stop failed ({code:?}):\n{stderr}");
        }
    }
}

/// Runs the script with its output in files, never pipes: a daemon that inherited a pipe would
/// keep a reader waiting for EOF. Returns the exit code and stderr.
fn run_script(command: &str, dir: &Path) -> (Option<i32>, String) {
    let out_path = dir.join(format!("script-{command}.out"));
    let err_path = dir.join(format!("script-{command}.err"));
    let out = File::create(&out_path).expect("create the script's stdout file");
    let err = File::create(&err_path).expect("create the script's stderr file");
    let status = Command::new("bash")
        .arg(script())
        .arg(command)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script().display()));
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status.code(), stderr)
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no message)")
        .trim_start_matches("mail-server.sh: ")
}

/// The last lines of every log under `<dir>/logs`.
fn describe_logs(dir: &Path) -> String {
    let logs = dir.join("logs");
    let mut out = format!("----- mail server logs in {} -----\n", logs.display());
    let mut entries: Vec<_> = std::fs::read_dir(&logs)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        out.push_str(&format!(
            "--- {} ---\n{}\n",
            path.display(),
            tail.join("\n")
        ));
    }
    out
}
