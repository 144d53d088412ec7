//! The API as an attacker on the network sees it: real privitty-edged, real engine, real HTTP over
//! loopback. Each test is one hole of the security issue, closed: the token on a non-loopback
//! listener (and its rotation through the CLI), the method policy, path confinement, the batch and
//! response caps, the SSE cap that keeps `/health` answering, the Host check, CORS, file modes and
//! the lock-file symlink.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use privitty_tests::edged_stack::{EdgedStack, LicenseState, Reply};
use privitty_tests::support::{bin, eventually};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

fn rpc_body(method: &str, params: Value) -> String {
    json!({"jsonrpc":"2.0","method":method,"params":params,"id":1}).to_string()
}

fn with_token<'a>(token: &'a str, buf: &'a mut String) -> [(&'a str, &'a str); 1] {
    *buf = format!("Bearer {token}");
    [("Authorization", buf.as_str())]
}

fn cli(accounts: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("privitty-edge"))
        .arg("--accounts")
        .arg(accounts)
        .args(args)
        .env_remove("PRIVITTY_API_TOKEN")
        .env_remove("PRIVITTY_API_TOKEN_FILE")
        .output()
        .expect("run privitty-edge")
}

fn api_token(accounts: &std::path::Path, rotate: bool) -> String {
    let args: &[&str] = if rotate {
        &["api-token", "--rotate"]
    } else {
        &["api-token"]
    };
    let out = cli(accounts, args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// edged serving a socket bound on 0.0.0.0 (as in the image): the token is required.
fn exposed() -> EdgedStack {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind 0.0.0.0:0");
    EdgedStack::builder()
        .license(LicenseState::Active)
        .socket_activated(listener)
        .start()
}

#[test]
fn a_non_loopback_listener_requires_the_token_and_rotation_needs_no_restart() {
    let edged = exposed();
    // /health stays open and tells nothing secret.
    let health = edged.request("GET", "/health", None);
    assert_eq!(health.status, 200, "{health:?}");
    assert!(!health.body.contains("secret") && !health.body.contains("token"));

    let body = rpc_body("get_info", json!([1]));
    for (path, method, b) in [
        ("/rpc", "POST", Some(body.as_str())),
        ("/events", "GET", None),
    ] {
        let r = edged.request(method, path, b);
        assert_eq!(r.status, 401, "{path} without a token: {r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"privitty-edged\"")
        );
        assert!(r.body.contains("privitty-edge api-token"), "{}", r.body);
    }
    let mut buf = String::new();
    let r = edged.request_with(
        "POST",
        "/rpc",
        &with_token("wrong-token-0123456789", &mut buf),
        Some(&body),
    );
    assert_eq!(r.status, 401);

    // The token the CLI prints (created by edged at first boot, 0600) lets the client in.
    let token = api_token(&edged.accounts, false);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(edged.accounts.join("api.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let r = edged.request_with("POST", "/rpc", &with_token(&token, &mut buf), Some(&body));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["result"].is_object(), "{}", r.body);

    // Rotation: the new token works on its first request, the old one stops within a second.
    let rotated = api_token(&edged.accounts, true);
    assert_ne!(rotated, token);
    let r = edged.request_with("POST", "/rpc", &with_token(&rotated, &mut buf), Some(&body));
    assert_eq!(r.status, 200, "the rotated token at once: {r:?}");
    eventually(DEADLINE, "the old token to be refused", || {
        let mut b = String::new();
        let r = edged.request_with("POST", "/rpc", &with_token(&token, &mut b), Some(&body));
        (r.status == 401).then_some(())
    });
    // An SSE client with the token is served.
    let mut s = TcpStream::connect(edged.addr()).unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {rotated}\r\n\r\n",
        edged.addr()
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

#[test]
fn the_cli_refuses_to_rotate_a_token_it_does_not_own() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("privitty-edge"))
        .arg("--accounts")
        .arg(dir.path())
        .args(["api-token", "--rotate"])
        .env("PRIVITTY_API_TOKEN", "fixed-token-0123456789")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PRIVITTY_API_TOKEN"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("fixed-token"));
}

/// The methods the issue names: network-reaching, exporting/importing, account-removing and
/// event-stealing ones answer -32003 naming the setting, without reaching the engine.
const DENIED: &[(&str, &str)] = &[
    (
        "get_http_response",
        r#"[1,"http://169.254.169.254/latest/meta-data/"]"#,
    ),
    ("export_backup", r#"[1,"/tmp",null]"#),
    ("import_backup", r#"[1,"/tmp/x.tar",null]"#),
    ("export_self_keys", r#"[1,"/tmp",null]"#),
    ("import_self_keys", r#"[1,"/tmp",null]"#),
    ("provide_backup", "[1]"),
    ("get_backup", r#"[1,"DCBACKUP:x"]"#),
    ("remove_account", "[1]"),
    ("add_account", "[]"),
    ("migrate_account", r#"["/tmp/dc.db"]"#),
    ("get_next_event", "[]"),
    ("get_next_event_batch", "[]"),
    ("send_webxdc_realtime_data", "[1,1,[1]]"),
];

#[test]
fn dangerous_methods_are_denied_by_default_and_allowed_by_the_setting() {
    let edged = EdgedStack::builder().start();
    for (method, params) in DENIED {
        let r = edged.call(method, serde_json::from_str(params).unwrap());
        assert_eq!(r["error"]["code"], -32003, "{method}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("PRIVITTY_RPC_ALLOW={method}")),
            "{msg}"
        );
        assert_eq!(r["error"]["data"]["setting"], "PRIVITTY_RPC_ALLOW");
    }
    // Still there: the account edged manages.
    assert_eq!(edged.result("get_all_account_ids", json!([])), json!([1]));
    // Realtime channels (public relays) are off, and a client cannot turn them on.
    assert_eq!(
        edged.result("get_config", json!([1, "webxdc_realtime_enabled"])),
        json!("0")
    );
    for (method, params) in [
        ("set_config", json!([1, "webxdc_realtime_enabled", "1"])),
        (
            "batch_set_config",
            json!([1, {"webxdc_realtime_enabled": "1"}]),
        ),
    ] {
        let r = edged.call(method, params);
        assert_eq!(r["error"]["code"], -32003, "{method}: {r}");
    }
    assert_eq!(
        edged.result("get_config", json!([1, "webxdc_realtime_enabled"])),
        json!("0")
    );
    drop(edged);

    let edged = EdgedStack::builder()
        .env("PRIVITTY_RPC_ALLOW", "get_next_event_batch,get_system_info")
        .spawn_and_wait_exit();
    assert_eq!(
        edged.0.code(),
        Some(2),
        "an allowed method in the list: {}",
        edged.1
    );
    assert!(edged.1.contains("allowed already"), "{}", edged.1);

    let edged = EdgedStack::builder()
        .env("PRIVITTY_RPC_ALLOW", "sleep")
        .start();
    let r = edged.call("sleep", json!([0.01]));
    assert_ne!(r["error"]["code"], -32003, "allowed by the operator: {r}");
}

#[test]
fn client_paths_are_confined_to_the_files_directory() {
    let edged = EdgedStack::builder().license(LicenseState::Active).start();
    let files = edged.accounts.join("files");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&files).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "files dir mode");
    let contact = edged.result("create_contact", json!([1, "bob@example.org", "Bob"]));
    let chat = edged.result("create_chat_by_contact_id", json!([1, contact]));
    let outside = [
        "/proc/1/environ".to_string(),
        "/etc/passwd".to_string(),
        edged.accounts.join("activation.json").display().to_string(),
        edged.accounts.join("privitty.lic").display().to_string(),
        "../privitty.lic".to_string(),
        "/nonexistent/x".to_string(),
    ];
    // A link inside the files directory that points out is refused too.
    std::os::unix::fs::symlink(edged.accounts.join("privitty.lic"), files.join("lic")).unwrap();
    for path in outside.iter().map(String::as_str).chain(["lic"]) {
        for (method, params) in [
            ("send_msg", json!([1, chat, {"text": "x", "file": path}])),
            (
                "privitty_send_file",
                json!([1, chat, contact, path, true, false, 5]),
            ),
            ("set_chat_profile_image", json!([1, chat, path])),
            ("send_sticker", json!([1, chat, path])),
            ("set_config", json!([1, "selfavatar", path])),
            ("copy_to_blob_dir", json!([1, path])),
            ("import_vcard", json!([1, path])),
        ] {
            let r = edged.call(method, params);
            assert_eq!(r["error"]["code"], -32602, "{method} {path}: {r}");
            let msg = r["error"]["message"].as_str().unwrap();
            assert!(
                msg.contains("outside the files directory"),
                "{method} {path}: {msg}"
            );
        }
    }
    let r = edged.call("save_msg_file", json!([1, 10, "/tmp/stolen"]));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    // Inside: relative names work, the .prv lands beside the input, 0600.
    std::fs::write(files.join("report.csv"), "a,b\n").unwrap();
    let sent = edged.result(
        "privitty_send_file",
        json!([1, chat, contact, "report.csv", true, false, 5]),
    );
    let prv = std::path::PathBuf::from(sent["encrypted_path"].as_str().unwrap());
    assert_eq!(
        prv,
        std::fs::canonicalize(&files)
            .unwrap()
            .join("report.csv.prv")
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&prv).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let r = edged.call(
        "send_msg",
        json!([1, chat, {"text": "x", "file": "report.csv.prv", "viewtype": "File"}]),
    );
    assert_ne!(r["error"]["code"], -32602, "{r}");
    // Files the engine and edged create are for the service user only (umask 077).
    let db = find_file(&edged.accounts, "dc.db").expect("dc.db");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&db).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "{} is {mode:o}", db.display());
}

fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if e.file_type().ok()?.is_dir()
            && let Some(found) = find_file(&p, name)
        {
            return Some(found);
        }
    }
    None
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn one_request_cannot_exhaust_memory() {
    let edged = EdgedStack::builder()
        .env("PRIVITTY_RPC_MAX_RESPONSE", "4MiB")
        .start();
    // A 1 MB setting (the engine keeps it); 200 reads of it would be a 200 MB answer.
    let big = "x".repeat(1_000_000);
    edged.result("set_config", json!([1, "ui.big", big]));
    let over = (0..101)
        .map(|i| json!({"jsonrpc":"2.0","method":"get_info","params":[1],"id":i}))
        .collect::<Vec<_>>();
    let r = edged.post_rpc(&Value::Array(over).to_string()).json();
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PRIVITTY_RPC_MAX_BATCH")
    );

    let before = vm_hwm_kib(edged.pid());
    let batch = (0..100)
        .map(|i| json!({"jsonrpc":"2.0","method":"get_config","params":[1,"ui.big"],"id":i}))
        .collect::<Vec<_>>();
    let reply = edged.post_rpc(&Value::Array(batch).to_string());
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.len() < 4 * 1024 * 1024 + 100 * 1024,
        "answer {} bytes",
        reply.body.len()
    );
    let answers = reply.json();
    let answers = answers.as_array().unwrap();
    let served = answers.iter().filter(|a| a.get("result").is_some()).count();
    let refused = answers
        .iter()
        .filter(|a| a["error"]["code"] == -32004)
        .count();
    assert_eq!(
        (served + refused, served),
        (100, 4),
        "served within 4 MiB, the rest refused"
    );
    let after = vm_hwm_kib(edged.pid());
    assert!(
        after < before + 64 * 1024,
        "edged peak RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn a_single_answer_over_the_cap_is_an_error() {
    let edged = EdgedStack::builder()
        .env("PRIVITTY_RPC_MAX_RESPONSE", "512KiB")
        .start();
    edged.result("set_config", json!([1, "ui.big", "y".repeat(600_000)]));
    let r = edged.call("get_config", json!([1, "ui.big"]));
    assert_eq!(r["error"]["code"], -32004, "{r}");
    assert_eq!(r["error"]["data"]["setting"], "PRIVITTY_RPC_MAX_RESPONSE");
    // The connection and the engine are fine afterwards.
    assert_eq!(
        edged.result("get_config", json!([1, "displayname"])),
        json!("edged-test")
    );
}

#[test]
fn idle_event_streams_cannot_starve_health() {
    // The defaults: 512 connections, 64 of them may be /events clients.
    let edged = EdgedStack::builder().start();
    let mut streams = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..70 {
        let mut s = TcpStream::connect(edged.addr()).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(s, "GET /events HTTP/1.1\r\nHost: {}\r\n\r\n", edged.addr()).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        match &head {
            b"HTTP/1.1 200" => ok += 1,
            b"HTTP/1.1 503" => refused += 1,
            other => panic!("{}", String::from_utf8_lossy(other)),
        }
        streams.push(s);
    }
    assert_eq!((ok, refused), (64, 6));
    let h = edged.request("GET", "/health", None);
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.json()["sse_clients"], 64);
    // A smaller cap is a setting.
    let edged = EdgedStack::builder()
        .arg("--max-connections")
        .arg("8")
        .arg("--sse-max-clients")
        .arg("2")
        .start();
    let mut codes = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(edged.addr()).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(s, "GET /events HTTP/1.1\r\nHost: {}\r\n\r\n", edged.addr()).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        codes.push(String::from_utf8_lossy(&head[9..]).to_string());
        streams.push(s);
    }
    assert_eq!(codes, ["200", "200", "503"]);
    assert_eq!(edged.request("GET", "/health", None).status, 200);
}

#[test]
fn a_loopback_listener_checks_host_and_cors_origins() {
    let edged = EdgedStack::builder()
        .arg("--cors")
        .arg("https://viewer.example")
        .start();
    let body = rpc_body("get_info", json!([1]));
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1.
    for path in ["/rpc", "/events"] {
        let method = if path == "/rpc" { "POST" } else { "GET" };
        let r = edged.request_with(
            method,
            path,
            &[("Host", "evil.example")],
            Some(body.as_str()).filter(|_| method == "POST"),
        );
        assert_eq!(r.status, 421, "{path}: {r:?}");
    }
    let port = edged.addr().port().to_string();
    let localhost = format!("localhost:{port}");
    let r = edged.request_with("POST", "/rpc", &[("Host", &localhost)], Some(&body));
    assert_eq!(r.status, 200);
    // CORS: the listed origin is let in and echoed, never `*`; another origin is refused.
    let r: Reply = edged.request_with(
        "POST",
        "/rpc",
        &[("Origin", "https://viewer.example")],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://viewer.example")
    );
    let r = edged.request_with(
        "POST",
        "/rpc",
        &[("Origin", "https://evil.example")],
        Some(&body),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), None);
    // On loopback the token is optional, but a wrong one is still refused.
    let r = edged.request_with(
        "POST",
        "/rpc",
        &[("Authorization", "Bearer not-the-token-0000")],
        Some(&body),
    );
    assert_eq!(r.status, 401);

    // `*` while the token is required is a configuration error.
    let (status, out) = EdgedStack::builder()
        .arg("--cors")
        .arg("*")
        .arg("--api-auth")
        .arg("required")
        .spawn_and_wait_exit();
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("list the origins"), "{out}");
}

#[test]
fn a_planted_lock_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("data");
    std::fs::create_dir_all(&accounts).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, accounts.join(".edged.lock")).unwrap();
    let (status, out) = EdgedStack::builder()
        .accounts(accounts)
        .spawn_and_wait_exit();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains(".edged.lock"), "{out}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
}
