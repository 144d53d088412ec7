//! The `privitty-edge` binary as scripts use it: exit codes, the status output format, and that the
//! TOKEN never appears in its output. A small scripted HTTP server on loopback plays the license
//! server (the full system tests against the reference server live in the tests crate).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use licensectl::jwt::LicenseClaims;
use serde_json::{Value, json};

const TOKEN: &str = "CLITESTTOKEN0123456789";

/// A key of a handler's answer that becomes a `Retry-After` header instead of body content.
const RETRY_AFTER_KEY: &str = "__retry_after";

/// (status, body) for a request (method, path, body).
type Handler = Box<dyn Fn(&str, &str, &Value) -> (u16, Value) + Send>;

struct Server {
    port: u16,
    handler: Arc<Mutex<Handler>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handler: Arc<Mutex<Handler>> =
            Arc::new(Mutex::new(Box::new(|_, _, _| (500, json!({})))));
        let h = handler.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut parts = first.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, mut resp) = (h.lock().unwrap())(method, path, &body);
                // A handler asks for a `Retry-After` header with this key in its answer.
                let retry_after = resp
                    .as_object_mut()
                    .and_then(|o| o.remove(RETRY_AFTER_KEY))
                    .map(|v| format!("Retry-After: {v}\r\n"))
                    .unwrap_or_default();
                let text = if status == 204 {
                    String::new()
                } else {
                    resp.to_string()
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nConnection: close\r\n{retry_after}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        Server { port, handler }
    }

    fn answer(&self, f: impl Fn(&str, &str, &Value) -> (u16, Value) + Send + 'static) {
        *self.handler.lock().unwrap() = Box::new(f);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/license/{TOKEN}", self.port)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn license(key: &SigningKey, dev: &str, act: &str, iat: i64, sync_by: i64, exp: i64) -> String {
    let claims = LicenseClaims {
        ver: 1,
        iss: "privitty-license".into(),
        aud: "privitty-edge".into(),
        sub: "lic-cli".into(),
        jti: format!("jti-{iat}"),
        iat,
        sync_by,
        exp,
        dev: dev.into(),
        act: Some(act.into()),
        customer: Some("ACME".into()),
        seats: Some(2),
        features: vec![],
        nce: None,
    };
    licensectl::jwt::sign(&claims, key)
}

/// A well-behaved server for `key`: activation, sync and deactivation all succeed.
fn good_server(server: &Server, key: &SigningKey, sync_by: i64, exp: i64) {
    let key = key.clone();
    server.answer(move |method, path, _| {
        let dev = path.split('/').nth(5).unwrap_or_default().to_string();
        match method {
            "PUT" => (
                201,
                json!({"activation_id":"act-9","device_secret":"cli-secret","server_time":now(),
                       "license_jwt": license(&key, &dev, "act-9", now() - 5, sync_by, exp)}),
            ),
            "POST" => (
                200,
                json!({"server_time":now(),"acked_report_ids":[],
                       "license_jwt": license(&key, &dev, "act-9", now(), sync_by, exp)}),
            ),
            _ => (204, Value::Null),
        }
    });
}

fn run(dir: &Path, key: Option<&SigningKey>, args: &[&str]) -> Output {
    run_bin(env!("CARGO_BIN_EXE_privitty-edge"), dir, key, args, None)
}

/// Runs `bin` (`privitty-edge` or `licensectl`) with `--accounts dir`, the trusted `key` and
/// `stdin` as its standard input; fails the test when a secret shows in its output.
fn run_bin(
    bin: &str,
    dir: &Path,
    key: Option<&SigningKey>,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut cmd = Command::new(bin);
    cmd.arg("--accounts")
        .arg(dir)
        .args(args)
        .env_remove("PRIVITTY_ACCOUNTS")
        .env_remove("SSL_CERT_FILE");
    cmd.env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy");
    match key {
        Some(k) => cmd.env(
            "PRIVITTY_LICENSE_PUBKEY",
            k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
        ),
        None => cmd.env_remove("PRIVITTY_LICENSE_PUBKEY"),
    };
    let out = match stdin {
        None => cmd.output().unwrap(),
        Some(text) => {
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    };
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(TOKEN), "the TOKEN leaked in {args:?}: {all}");
    assert!(
        !all.contains("cli-secret"),
        "the device secret leaked in {args:?}: {all}"
    );
    out
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_of_an_empty_directory_is_no_license_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(tmp.path(), None, &["license", "status"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().next(), Some("no_license"));
    assert!(text.contains("\nreason: not_activated\n"), "{text}");
    let out = run(tmp.path(), None, &["license", "status", "--json"]);
    assert_eq!(code(&out), 3);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["status"].as_str(), json["reason"].as_str()),
        (Some("no_license"), Some("not_activated"))
    );
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "status wrote nothing"
    );
}

#[test]
fn usage_and_state_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[9; 32]);
    let insecure = format!("http://license.example.com/v1/license/{TOKEN}");
    let out = run(tmp.path(), Some(&key), &["license", "activate", &insecure]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("https"), "{}", stderr(&out));
    let bad_token = format!("https://license.example.com/v1/license/{TOKEN}$");
    assert_eq!(
        code(&run(
            tmp.path(),
            Some(&key),
            &["license", "activate", &bad_token]
        )),
        2
    );
    assert_eq!(
        code(&run(tmp.path(), Some(&key), &["license", "frobnicate"])),
        2
    );
    assert_eq!(code(&run(tmp.path(), Some(&key), &["license", "sync"])), 7);
    assert_eq!(
        code(&run(tmp.path(), Some(&key), &["license", "deactivate"])),
        7
    );
    assert_eq!(
        code(&run(
            tmp.path(),
            Some(&key),
            &["license", "deactivate", "--local-only"]
        )),
        7
    );

    std::fs::write(tmp.path().join("activation.json"), "{corrupt").unwrap();
    let out = run(tmp.path(), Some(&key), &["license", "status"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("activation.json"), "{}", stderr(&out));
}

#[test]
fn refused_and_unreachable_exit_5_and_6() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    let server = Server::start();
    server.answer(|_, _, _| {
        (
            409,
            json!({"error":"seat_limit","message":"all 2 seats are taken"}),
        )
    });
    let out = run(
        tmp.path(),
        Some(&key),
        &["license", "activate", &server.url()],
    );
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("deactivate another device or ask your administrator for more seats")
    );

    server.answer(|_, _, _| (503, json!({"error":"maintenance","message":"back soon"})));
    let out = run(
        tmp.path(),
        Some(&key),
        &["license", "activate", &server.url()],
    );
    assert_eq!(code(&out), 6, "{}", stderr(&out));

    // A port bound but never listening: connections are refused, and no server started by a
    // test running beside this one can take the port meanwhile.
    let reserved =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let closed = reserved.local_addr().unwrap().as_socket().unwrap().port();
    let url = format!("http://127.0.0.1:{closed}/v1/license/{TOKEN}");
    assert_eq!(
        code(&run(tmp.path(), Some(&key), &["license", "activate", &url])),
        6
    );
    assert_eq!(
        code(&run(tmp.path(), Some(&key), &["license", "status"])),
        3,
        "nothing was activated"
    );
}

#[test]
fn activate_status_sync_deactivate_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let server = Server::start();
    good_server(&server, &key, now() + 3600, now() + 7200);

    let out = run(
        tmp.path(),
        Some(&key),
        &["license", "activate", &server.url()],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("activated (new seat)"),
        "{}",
        stdout(&out)
    );

    let out = run(tmp.path(), Some(&key), &["license", "status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().next(), Some("active"));
    for line in [
        "license id: lic-cli",
        "customer: ACME",
        "activation id: act-9",
        "reason: -",
        "last sync error: -",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let server_line = text
        .lines()
        .find(|l| l.starts_with("license server: "))
        .unwrap();
    assert!(
        server_line.ends_with("/v1/license/CLI…(redacted)"),
        "{server_line}"
    );

    let out = run(tmp.path(), Some(&key), &["license", "sync"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // Without the key the license on disk is no longer trusted.
    let out = run(tmp.path(), None, &["license", "status"]);
    assert_eq!(code(&out), 3);
    assert!(
        stdout(&out).contains("reason: untrusted_key"),
        "{}",
        stdout(&out)
    );

    let out = run(tmp.path(), Some(&key), &["license", "deactivate"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(tmp.path(), Some(&key), &["license", "status"]);
    assert_eq!(code(&out), 3);
    assert!(
        stdout(&out).starts_with("no_license\n") && stdout(&out).contains("reason: deactivated")
    );
    assert_eq!(code(&run(tmp.path(), Some(&key), &["license", "sync"])), 7);
    // The license leaves its place, kept aside for inspection.
    assert!(!tmp.path().join("privitty.lic").exists());
    assert!(tmp.path().join("privitty.lic.revoked").is_file());
}

#[test]
fn grace_period_still_exits_0_and_expired_exits_3() {
    let key = SigningKey::from_bytes(&[3; 32]);
    let server = Server::start();
    for (sync_by, exp, word, exit) in [
        (now() - 10, now() + 3600, "grace_period", 0),
        (now() - 10, now() - 5, "expired", 3),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        // The test license is issued before its sync_by so `iat ≤ sync_by` holds.
        let k = key.clone();
        server.answer(move |_, path, _| {
            let dev = path.split('/').nth(5).unwrap_or_default().to_string();
            (
                201,
                json!({"activation_id":"act-9","device_secret":"cli-secret","server_time":now(),
                       "license_jwt": license(&k, &dev, "act-9", sync_by - 100, sync_by, exp)}),
            )
        });
        let out = run(
            tmp.path(),
            Some(&key),
            &["license", "activate", &server.url()],
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let out = run(tmp.path(), Some(&key), &["license", "status"]);
        assert_eq!(
            (stdout(&out).lines().next(), code(&out)),
            (Some(word), exit),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn health_checks_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start();
    let base = format!("http://127.0.0.1:{}", server.port);
    server.answer(|_, path, _| {
        assert_eq!(path, "/health");
        (
            200,
            json!({"status":"ok","service":"privitty-edged","version":"0.1.0"}),
        )
    });
    assert_eq!(code(&run(tmp.path(), None, &["health", "--url", &base])), 0);
    server.answer(|_, _, _| (503, json!({"status":"starting"})));
    assert_eq!(code(&run(tmp.path(), None, &["health", "--url", &base])), 1);
    server.answer(|_, _, _| (200, json!({"status":"degraded"})));
    assert_eq!(code(&run(tmp.path(), None, &["health", "--url", &base])), 1);
}

#[test]
fn accounts_dir_comes_from_the_flag_then_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[4; 32]);
    let server = Server::start();
    good_server(&server, &key, now() + 3600, now() + 7200);
    assert_eq!(
        code(&run(
            tmp.path(),
            Some(&key),
            &["license", "activate", &server.url()]
        )),
        0
    );
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_licensectl"))
        .args(["license", "status"])
        .env("PRIVITTY_ACCOUNTS", tmp.path())
        .env("PRIVITTY_LICENSE_PUBKEY", &pem)
        .output()
        .unwrap();
    assert_eq!(
        (code(&out), stdout(&out).lines().next()),
        (0, Some("active")),
        "{}",
        stderr(&out)
    );
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_licensectl"))
        .args([
            "--accounts",
            empty.path().to_str().unwrap(),
            "license",
            "status",
        ])
        .env("PRIVITTY_ACCOUNTS", tmp.path())
        .env("PRIVITTY_LICENSE_PUBKEY", &pem)
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "the flag wins over the environment");
}

#[test]
fn a_misplaced_url_argument_is_a_usage_error_without_the_token() {
    // clap echoes what it did not expect; forgetting `activate` must not print the TOKEN.
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("https://license.example.com/v1/license/{TOKEN}");
    for args in [
        vec!["license", url.as_str()],
        vec!["license", "activate", url.as_str(), url.as_str()],
        vec!["license", "status", url.as_str()],
        vec![url.as_str()],
    ] {
        // `run` fails the test when the TOKEN appears in stdout or stderr.
        let out = run(tmp.path(), None, &args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("license.example.com/v1/license/"),
            "the error still shows where the URL went: {}",
            stderr(&out)
        );
    }
    let out = run(tmp.path(), None, &["--help"]);
    assert_eq!(code(&out), 0, "--help still exits 0");
    assert!(stdout(&out).contains("license"), "--help prints to stdout");
}

/// `licensectl status|activate|sync|deactivate` is the same program as `privitty-edge license …`:
/// the same output and exit codes at every step, side by side on two accounts directories.
#[test]
fn licensectl_takes_the_license_commands_directly_with_the_same_output_and_codes() {
    let edge = env!("CARGO_BIN_EXE_privitty-edge");
    let ctl = env!("CARGO_BIN_EXE_licensectl");
    let key = SigningKey::from_bytes(&[6; 32]);
    let server = Server::start();
    good_server(&server, &key, now() + 3600, now() + 7200);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = server.url();
    // The machine- and time-dependent parts of the output: each directory has its own device,
    // and the test server names a license after the second it was issued in (the two commands
    // of a step may fall on either side of a second).
    let same = |x: &Output, y: &Output| {
        let scrub = |o: &Output| {
            stdout(o)
                .lines()
                .filter(|l| !l.starts_with("device uuid: ") && !l.starts_with("last sync ok: "))
                .map(|l| match l.strip_prefix("license jti: jti-") {
                    Some(secs) if secs.parse::<i64>().is_ok() => "license jti: jti-<issued>".into(),
                    _ => l.to_string(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            (code(x), scrub(x)),
            (code(y), scrub(y)),
            "{}{}",
            stderr(x),
            stderr(y)
        );
    };
    /// privitty-edge's arguments, licensectl's, standard input, the expected exit code.
    type Step<'a> = (&'a [&'a str], &'a [&'a str], Option<&'a str>, i32);
    let steps: [Step<'_>; 7] = [
        (&["license", "status"], &["status"], None, 3),
        (
            &["license", "activate", "-"],
            &["activate", "-"],
            Some(&url),
            0,
        ),
        (&["license", "status"], &["status"], None, 0),
        (
            &["license", "status", "--json"],
            &["status", "--json"],
            None,
            0,
        ),
        (&["license", "sync"], &["sync"], None, 0),
        (&["license", "deactivate"], &["deactivate"], None, 0),
        (&["license", "sync"], &["sync"], None, 7),
    ];
    for (edge_args, ctl_args, stdin, expected) in steps {
        let x = run_bin(edge, a.path(), Some(&key), edge_args, stdin);
        let y = run_bin(ctl, b.path(), Some(&key), ctl_args, stdin);
        if edge_args.contains(&"--json") {
            // Compare the documents without the per-device fields.
            let doc = |o: &Output| {
                let mut v: Value = serde_json::from_slice(&o.stdout).unwrap();
                for k in ["device_uuid", "last_sync_ok_at"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                (code(o), v)
            };
            assert_eq!(doc(&x), doc(&y));
        } else {
            same(&x, &y);
        }
        assert_eq!(
            code(&y),
            expected,
            "licensectl {ctl_args:?}: {}",
            stderr(&y)
        );
    }
    // `licensectl license status` (the privitty-edge spelling) keeps working.
    let out = run_bin(ctl, b.path(), Some(&key), &["license", "status"], None);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
}

#[test]
fn privitty_edge_keeps_the_documented_spelling_and_points_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    for bare in ["status", "activate", "sync", "deactivate"] {
        let out = run(tmp.path(), None, &[bare]);
        assert_eq!(code(&out), 2, "privitty-edge {bare}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("privitty-edge license {bare}")),
            "{}",
            stderr(&out)
        );
    }
    let out = run_bin(
        env!("CARGO_BIN_EXE_licensectl"),
        tmp.path(),
        None,
        &["--help"],
        None,
    );
    assert_eq!(code(&out), 0);
    let help = stdout(&out);
    for command in [
        "status",
        "activate",
        "sync",
        "deactivate",
        "api-token",
        "health",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "licensectl --help lacks {command}:\n{help}"
        );
    }
}

#[test]
fn a_transient_failure_says_how_long_the_server_asked_to_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[8; 32]);
    let server = Server::start();
    server.answer(|_, _, _| (503, json!({"error":"maintenance","message":"back soon"})));
    let out = run(
        tmp.path(),
        Some(&key),
        &["license", "activate", &server.url()],
    );
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(!stderr(&out).contains("retry after: "), "{}", stderr(&out));
    server.answer(|_, _, _| (429, json!({"error":"slow_down", RETRY_AFTER_KEY: 7})));
    let out = run_bin(
        env!("CARGO_BIN_EXE_licensectl"),
        tmp.path(),
        Some(&key),
        &["activate", &server.url()],
        None,
    );
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    // Its own line after the error, for privitty-init (which runs `activate` as a child).
    let line = format!("{}7s", licensectl::cli::RETRY_AFTER_PREFIX);
    assert!(stderr(&out).lines().any(|l| l == line), "{}", stderr(&out));
}

/// privitty-init runs `license device-id` at first boot (hidden: not a documented command).
#[test]
fn device_id_creates_the_identity_once_and_prints_it() {
    let tmp = tempfile::tempdir().unwrap();
    let first = run(tmp.path(), None, &["license", "device-id"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let id = stdout(&first).trim().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id:?}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("device.uuid"))
            .unwrap()
            .trim(),
        id
    );
    let again = run(tmp.path(), None, &["license", "device-id"]);
    assert_eq!(stdout(&again).trim(), id, "the identity is kept");
}
