//! Protocol-client and operation tests against a scripted HTTP server on loopback (real sockets,
//! real reqwest). The full system tests against the reference server live in the tests crate.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::accounts::{ActivationState, REVOKED_LICENSE_FILE};
use crate::client::{ActivateBody, Client};
use crate::error::TransientCause;
use crate::jwt::tests::{new_key, trusted};
use crate::{ErrorKind, LoadedLicense, Reason, Status, UsageCounters};

#[path = "integrity_tests.rs"]
mod integrity;

const TOKEN: &str = "SECRETTOKEN0123456789";

#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

struct Resp {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn json_resp(status: u16, body: Value) -> Resp {
    Resp {
        status,
        headers: vec![("Content-Type", "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn error_resp(status: u16, code: &str) -> Resp {
    json_resp(
        status,
        json!({"error": code, "message": format!("nope: {code} for token {TOKEN}")}),
    )
}

type Handler = Box<dyn FnMut(&Req) -> Resp + Send>;

/// A scripted license server: each request is answered by the current handler and recorded.
struct Server {
    port: u16,
    handler: Arc<Mutex<Handler>>,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handler: Arc<Mutex<Handler>> =
            Arc::new(Mutex::new(Box::new(|_: &Req| error_resp(500, "unset"))));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s) = (handler.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (h, s) = (h.clone(), s.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    s.lock().unwrap().push(req.clone());
                    let resp = (h.lock().unwrap())(&req);
                    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", resp.status);
                    for (k, v) in &resp.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str(&format!("Content-Length: {}\r\n\r\n", resp.body.len()));
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&resp.body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Server {
            port,
            handler,
            seen,
        }
    }

    fn url(&self) -> DeliveryUrl {
        DeliveryUrl::parse(&format!(
            "http://127.0.0.1:{}/v1/license/{TOKEN}",
            self.port
        ))
        .unwrap()
    }

    fn answer(&self, f: impl FnMut(&Req) -> Resp + Send + 'static) {
        *self.handler.lock().unwrap() = Box::new(f);
    }

    fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(sock: &mut S) -> Option<Req> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    Some(Req {
        method,
        path,
        headers,
        body,
    })
}

/// The device uuid from `/v1/license/<TOKEN>/devices/<uuid>[/sync]`.
fn device_of(req: &Req) -> String {
    req.path.split('/').nth(5).unwrap_or_default().to_string()
}

fn license_for(key: &SigningKey, dev: &str, act: &str, iat: i64, nce: Option<&str>) -> String {
    let mut c = crate::jwt::tests::claims(iat, iat + 86_400, iat + 2 * 86_400);
    c.dev = dev.to_string();
    c.act = Some(act.to_string());
    c.jti = format!("jti-{iat}");
    c.nce = nce.map(str::to_string);
    crate::jwt::sign(&c, key)
}

fn now() -> i64 {
    crate::accounts::unix_secs(SystemTime::now())
}

/// A well-behaved activation endpoint: 201 the first time, 200 after.
fn activation_handler(key: SigningKey, act: &'static str) -> impl FnMut(&Req) -> Resp + Send {
    let mut seated = false;
    move |req| {
        assert_eq!(req.method, "PUT");
        let dev = device_of(req);
        let nonce = req.body["nonce"].as_str().map(str::to_string);
        let status = if seated { 200 } else { 201 };
        seated = true;
        json_resp(
            status,
            json!({
                "activation_id": act,
                "device_secret": "dev-secret-1",
                "license_jwt": license_for(&key, &dev, act, now() - 10, nonce.as_deref()),
                "server_time": now(),
            }),
        )
    }
}

fn req() -> ActivateRequest {
    ActivateRequest {
        device_name: "gw01".into(),
        client_version: "0.1.0".into(),
        platform: "linux-x86_64".into(),
    }
}

fn names(dir: &AccountsDir) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != crate::accounts::LOCK_FILE)
        .collect();
    v.sort();
    v
}

fn mode(path: std::path::PathBuf) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn assert_no_token(e: &Error) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(TOKEN), "the TOKEN leaked: {text}");
    assert!(
        !text.contains("dev-secret-1"),
        "the device secret leaked: {text}"
    );
}

async fn activated() -> (Server, tempfile::TempDir, AccountsDir, SigningKey) {
    let server = Server::start().await;
    let key = new_key();
    server.answer(activation_handler(key.clone(), "act-1"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(tmp.path());
    activate(&dir, &server.url(), &trusted(&key), &req())
        .await
        .unwrap();
    (server, tmp, dir, key)
}

#[tokio::test]
async fn activate_commits_the_files_and_is_idempotent() {
    let server = Server::start().await;
    let key = new_key();
    server.answer(activation_handler(key.clone(), "act-1"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(tmp.path());
    let keys = trusted(&key);

    let first = activate(&dir, &server.url(), &keys, &req()).await.unwrap();
    assert!(first.new_seat);
    assert_eq!(first.activation_id, "act-1");
    assert_eq!(
        names(&dir),
        vec![
            ACTIVATION_FILE,
            DEVICE_UUID_FILE,
            LICENSE_SERVER_FILE,
            LICENSE_FILE
        ]
    );
    assert_eq!(mode(dir.file(ACTIVATION_FILE)), 0o600);
    assert_eq!(mode(dir.file(LICENSE_SERVER_FILE)), 0o600);
    let uuid = dir.device_uuid().unwrap().unwrap();
    let a = dir.activation().unwrap().unwrap();
    assert_eq!(
        (a.state, a.seq, a.device_secret.as_str()),
        (ActivationState::Active, 0, "dev-secret-1")
    );
    assert!(a.lic_jti.is_some() && a.activated_at.is_some());
    assert_eq!(
        Some(a.high_water),
        a.lic_iat,
        "the mark starts at the signed iat"
    );

    let r = &server.requests()[0];
    assert_eq!(r.path, format!("/v1/license/{TOKEN}/devices/{uuid}"));
    assert_eq!(r.body["device_name"], "gw01");
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(r.body["nonce"].as_str().is_some_and(|n| !n.is_empty()));

    let report = crate::status::report(&dir, &keys, SystemTime::now()).unwrap();
    assert_eq!(report.status, Status::Active);
    assert!(!serde_json::to_string(&report).unwrap().contains(TOKEN));

    let again = activate(&dir, &server.url(), &keys, &req()).await.unwrap();
    assert!(!again.new_seat);
    assert_eq!(
        dir.device_uuid().unwrap().unwrap(),
        uuid,
        "the device identity is stable"
    );
    assert_eq!(device_of(&server.requests()[1]), uuid);
}

#[tokio::test]
async fn definitive_refusals_change_nothing_and_say_what_to_do() {
    let server = Server::start().await;
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(tmp.path());
    for (status, code, hint) in [
        (
            409,
            "seat_limit",
            "deactivate another device or ask your administrator for more seats",
        ),
        (404, "unknown_token", "check the delivery URL"),
        (410, "revoked", "revoked"),
        (410, "license_expired", "renew"),
    ] {
        server.answer(move |_| error_resp(status, code));
        let e = activate(&dir, &server.url(), &trusted(&key), &req())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        assert_eq!(e.refusal_code(), Some(code));
        let text = e.to_string();
        assert!(text.contains(hint) && text.contains("127.0.0.1"), "{text}");
        assert_no_token(&e);
        assert_eq!(
            names(&dir),
            vec![DEVICE_UUID_FILE, SYNC_STATE_FILE],
            "only the identity, and the refusal recorded for `license status`"
        );
        let recorded = read_sync_state(&dir)
            .unwrap()
            .last_activation_error
            .unwrap();
        assert!(recorded.contains(code), "{recorded}");
        assert!(!recorded.contains(TOKEN), "the TOKEN leaked: {recorded}");
    }
}

#[tokio::test]
async fn transient_failures_are_classified_and_change_nothing() {
    let server = Server::start().await;
    let key = new_key();
    let other = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(tmp.path());
    let keys = trusted(&key);
    let good = |k: SigningKey| {
        move |r: &Req| {
            json_resp(
                200,
                json!({"activation_id":"act-1","device_secret":"dev-secret-1",
                       "license_jwt": license_for(&k, &device_of(r), "act-1", now(), None), "server_time": now()}),
            )
        }
    };

    server.answer(|_| error_resp(503, "maintenance"));
    let e = activate(&dir, &server.url(), &keys, &req())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unreachable {
                cause: TransientCause::Status(503),
                ..
            }
        ),
        "{e}"
    );

    server.answer(|_| {
        let mut r = error_resp(429, "slow_down");
        r.headers.push(("Retry-After", "7".into()));
        r
    });
    let e = activate(&dir, &server.url(), &keys, &req())
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (ErrorKind::Unreachable, Some(Duration::from_secs(7)))
    );
    assert!(e.is_transient());

    server.answer(|_| error_resp(408, "timeout"));
    assert!(
        activate(&dir, &server.url(), &keys, &req())
            .await
            .unwrap_err()
            .is_transient()
    );

    server.answer(|_| Resp {
        status: 200,
        headers: vec![],
        body: b"<html>portal</html>".to_vec(),
    });
    let e = activate(&dir, &server.url(), &keys, &req())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unreachable {
                cause: TransientCause::BadResponse,
                ..
            }
        ),
        "{e}"
    );

    server.answer(|_| json_resp(200, json!({"pad": "x".repeat(70 * 1024)})));
    let e = activate(&dir, &server.url(), &keys, &req())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("64 KiB"), "{e}");

    server.answer(good(other));
    let e = activate(&dir, &server.url(), &keys, &req())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unreachable {
                cause: TransientCause::BadLicense(Reason::UntrustedKey),
                ..
            }
        ),
        "{e}"
    );
    assert_no_token(&e);
    assert_eq!(names(&dir), vec![DEVICE_UUID_FILE]);

    // A license for another device from a trusted key is rejected too.
    server.answer(move |_| {
        json_resp(
            201,
            json!({"activation_id":"act-1","device_secret":"s",
                   "license_jwt": license_for(&key, "other-device", "act-1", now(), None), "server_time": now()}),
        )
    });
    let e = activate(&dir, &server.url(), &keys, &req())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unreachable {
                cause: TransientCause::BadLicense(Reason::WrongDevice),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(names(&dir), vec![DEVICE_UUID_FILE]);
}

#[tokio::test]
async fn connection_and_tls_failures_are_transient_with_hints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(tmp.path());
    let keys = trusted(&new_key());
    // A port with nothing listening: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = DeliveryUrl::parse(&format!("http://127.0.0.1:{port}/v1/license/{TOKEN}")).unwrap();
    let e = activate(&dir, &url, &keys, &req()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unreachable {
                cause: TransientCause::Connect,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("HTTPS_PROXY"), "{e}");
    assert_no_token(&e);

    // https to a server that answers in plain HTTP: the handshake fails.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = plain.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = plain.accept().await {
            let _ = sock
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = sock.shutdown().await;
        }
    });
    let url = DeliveryUrl::parse(&format!("https://127.0.0.1:{port}/v1/license/{TOKEN}")).unwrap();
    let e = activate(&dir, &url, &keys, &req()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unreachable {
                cause: TransientCause::Tls,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}");
    assert_no_token(&e);
}

#[tokio::test]
async fn sync_refreshes_the_license_and_delivers_usage_exactly_once() {
    let (server, _tmp, dir, key) = activated().await;
    let keys = trusted(&key);
    let before = dir.activation().unwrap().unwrap();
    let counters = UsageCounters::new();
    counters.increment("privitty_send_file");
    counters.increment("privitty_send_file");
    counters.flush(&dir).unwrap();

    // The response is lost: the report must survive and be resent with the same id.
    server.answer(|_| error_resp(502, "bad_gateway"));
    let e = sync(&dir, &keys).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable);
    assert_eq!(
        dir.activation().unwrap().unwrap(),
        before,
        "a transient error leaves activation.json alone"
    );
    assert!(
        read_sync_state(&dir)
            .and_then(|s| s.last_sync_error)
            .is_some_and(|m| m.contains("502"))
    );
    let report = crate::status::report(&dir, &keys, SystemTime::now()).unwrap();
    assert!(report.last_sync_error.is_some());
    let first_ids: Vec<Value> = server.requests().last().unwrap().body["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["report_id"].clone())
        .collect();
    assert_eq!(first_ids.len(), 1);

    let k = key.clone();
    server.answer(move |r| {
        assert_eq!(r.headers.get("authorization").map(String::as_str), Some("Bearer dev-secret-1"));
        let ids: Vec<Value> = r.body["usage"].as_array().unwrap().iter().map(|u| u["report_id"].clone()).collect();
        json_resp(
            200,
            json!({"license_jwt": license_for(&k, &device_of(r), "act-1", now() + 5, r.body["nonce"].as_str()),
                   "server_time": now(), "acked_report_ids": ids}),
        )
    });
    let done = sync(&dir, &keys).await.unwrap();
    assert!(done.license_changed);
    assert_eq!(done.acked_reports, 1);
    let sent = server.requests().last().unwrap().clone();
    assert_eq!(sent.method, "POST");
    assert!(sent.path.ends_with("/sync"));
    assert_eq!(sent.body["activation_id"], "act-1");
    assert_eq!(sent.body["seq"], 0);
    assert_eq!(sent.body["current_jti"], json!(before.lic_jti));
    assert_eq!(
        sent.body["usage"][0]["report_id"], first_ids[0],
        "same report_id after the lost response"
    );
    assert_eq!(sent.body["usage"][0]["counters"]["privitty_send_file"], 2);

    let after = dir.activation().unwrap().unwrap();
    assert_eq!(after.seq, 1);
    assert!(after.last_sync_ok_at.is_some() && after.last_sync_error.is_none());
    assert_ne!(after.lic_jti, before.lic_jti);
    assert!(
        crate::usage::UsageStore::read(&dir)
            .unwrap()
            .pending
            .is_empty()
    );
    assert!(
        read_sync_state(&dir).is_none(),
        "a good sync clears the transient error"
    );
    assert_eq!(
        crate::status::report(&dir, &keys, SystemTime::now())
            .unwrap()
            .status,
        Status::Active
    );

    // An older license from the server never replaces the newer one on disk.
    let on_disk = std::fs::read(dir.license_path()).unwrap();
    let k = key.clone();
    server.answer(move |r| {
        json_resp(200, json!({"license_jwt": license_for(&k, &device_of(r), "act-1", now() - 3600, None), "server_time": now()}))
    });
    let done = sync(&dir, &keys).await.unwrap();
    assert!(!done.license_changed);
    assert_eq!(std::fs::read(dir.license_path()).unwrap(), on_disk);
    assert_eq!(server.requests().last().unwrap().body["seq"], 1);
}

#[tokio::test]
async fn sync_refusals_are_recorded_and_410_ends_the_activation() {
    for (code, state, reason) in [
        ("revoked", ActivationState::Revoked, Reason::Revoked),
        (
            "deactivated",
            ActivationState::Deactivated,
            Reason::Deactivated,
        ),
    ] {
        let (server, _tmp, dir, key) = activated().await;
        server.answer(move |_| error_resp(410, code));
        let e = sync(&dir, &trusted(&key)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert_no_token(&e);
        let a = dir.activation().unwrap().unwrap();
        assert_eq!(a.state, state);
        assert!(
            a.last_sync_error
                .as_deref()
                .is_some_and(|m| m.contains(code) && !m.contains(TOKEN))
        );
        let report = crate::status::report(&dir, &trusted(&key), SystemTime::now()).unwrap();
        assert_eq!(
            (report.status, report.reason),
            (Status::NoLicense, Some(reason))
        );
        // Further syncs are refused locally until the device is activated again.
        assert_eq!(
            sync(&dir, &trusted(&key)).await.unwrap_err().kind(),
            ErrorKind::State
        );
    }

    let (server, _tmp, dir, key) = activated().await;
    server.answer(|_| error_resp(401, "bad_secret"));
    let e = sync(&dir, &trusted(&key)).await.unwrap_err();
    assert_eq!(e.refusal_code(), Some("bad_secret"));
    assert_eq!(
        dir.activation().unwrap().unwrap().state,
        ActivationState::Active
    );
}

#[tokio::test]
async fn a_withdrawal_moves_the_license_aside_so_no_older_file_revives_it() {
    for code in ["revoked", "deactivated"] {
        let (server, tmp, dir, key) = activated().await;
        let keys = trusted(&key);
        let before_lic = std::fs::read(dir.license_path()).unwrap();
        let before_act = std::fs::read(dir.file(ACTIVATION_FILE)).unwrap();
        server.answer(move |_| error_resp(410, code));
        sync(&dir, &keys).await.unwrap_err();
        assert!(!dir.license_path().exists(), "{code}: privitty.lic moved");
        assert_eq!(
            std::fs::read(dir.file(REVOKED_LICENSE_FILE)).unwrap(),
            before_lic
        );
        // One file put back from before the withdrawal is not enough.
        std::fs::write(dir.license_path(), &before_lic).unwrap();
        let e = LoadedLicense::load(&dir, &keys)
            .unwrap()
            .evaluate(SystemTime::now());
        assert_eq!(e.status, Status::NoLicense, "{code}: old privitty.lic");
        std::fs::remove_file(dir.license_path()).unwrap();
        let withdrawn = std::fs::read(dir.file(ACTIVATION_FILE)).unwrap();
        std::fs::write(dir.file(ACTIVATION_FILE), &before_act).unwrap();
        let e = LoadedLicense::load(&dir, &keys)
            .unwrap()
            .evaluate(SystemTime::now());
        assert_eq!(e.status, Status::NoLicense, "{code}: old activation.json");
        // Nor is activation.json removed with the old license back.
        std::fs::remove_file(dir.file(ACTIVATION_FILE)).unwrap();
        std::fs::write(dir.license_path(), &before_lic).unwrap();
        let e = LoadedLicense::load(&dir, &keys)
            .unwrap()
            .evaluate(SystemTime::now());
        assert_eq!(
            (e.status, e.reason),
            (Status::NoLicense, Some(Reason::ActivationMissing)),
            "{code}: activation.json moved out"
        );
        // A license left in place next to a recorded withdrawal (written by an older version) is
        // moved aside by the next sync, which the state refuses.
        std::fs::write(dir.file(ACTIVATION_FILE), &withdrawn).unwrap();
        std::fs::remove_file(dir.file(REVOKED_LICENSE_FILE)).unwrap();
        assert_eq!(
            sync(&dir, &keys).await.unwrap_err().kind(),
            ErrorKind::State
        );
        assert!(!dir.license_path().exists(), "{code}: leftover moved aside");
        assert_eq!(
            std::fs::read(dir.file(REVOKED_LICENSE_FILE)).unwrap(),
            before_lic
        );
        drop(tmp);
    }
}

#[tokio::test]
async fn server_time_never_moves_the_high_water_mark() {
    let server = Server::start().await;
    let key = new_key();
    let keys = trusted(&key);
    let tmp = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(tmp.path());
    // A server (or anything between) that says it is ten years later, and then ten years earlier.
    let skewed = |key: SigningKey, shift: i64| {
        move |r: &Req| {
            let nonce = r.body["nonce"].as_str().map(str::to_string);
            json_resp(
                200,
                json!({"activation_id": "act-1", "device_secret": "dev-secret-1",
                       "license_jwt": license_for(&key, &device_of(r), "act-1", now(), nonce.as_deref()),
                       "server_time": now() + shift, "acked_report_ids": []}),
            )
        }
    };
    let ten_years = TEN_YEARS.as_secs() as i64;
    server.answer(skewed(key.clone(), ten_years));
    activate(&dir, &server.url(), &keys, &req()).await.unwrap();
    let a = dir.activation().unwrap().unwrap();
    assert_eq!(Some(a.high_water), a.lic_iat);
    assert!(a.high_water <= now());
    assert_eq!(
        crate::status::report(&dir, &keys, SystemTime::now())
            .unwrap()
            .status,
        Status::Active
    );
    server.answer(skewed(key.clone(), ten_years));
    sync(&dir, &keys).await.unwrap();
    let a = dir.activation().unwrap().unwrap();
    assert_eq!(
        Some(a.high_water),
        a.lic_iat,
        "sync resets to the signed iat"
    );
    assert!(a.high_water <= now());
    // A mark ahead (a clock that was wrong) is reset to the new license's iat, not further back.
    let mut ahead = a.clone();
    ahead.high_water = now() + ten_years;
    dir.write_activation(&ahead).unwrap();
    server.answer(skewed(key.clone(), -ten_years));
    sync(&dir, &keys).await.unwrap();
    let a = dir.activation().unwrap().unwrap();
    assert_eq!(Some(a.high_water), a.lic_iat);
    assert!(a.high_water >= now() - 5, "{} vs {}", a.high_water, now());
}

#[tokio::test]
async fn sync_and_deactivate_need_an_activation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(tmp.path());
    let e = sync(&dir, &trusted(&new_key())).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::State);
    assert!(e.to_string().contains("license activate"), "{e}");
    assert_eq!(
        deactivate(&dir, false).await.unwrap_err().kind(),
        ErrorKind::State
    );
    assert_eq!(
        deactivate(&dir, true).await.unwrap_err().kind(),
        ErrorKind::State
    );
}

#[tokio::test]
async fn deactivate_releases_the_seat_keeps_the_file_and_allows_reactivation() {
    let (server, _tmp, dir, key) = activated().await;
    let keys = trusted(&key);
    let uuid = dir.device_uuid().unwrap().unwrap();

    server.answer(|_| error_resp(401, "bad_secret"));
    let e = deactivate(&dir, false).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert!(e.to_string().contains("--local-only"), "{e}");
    assert_eq!(
        dir.activation().unwrap().unwrap().state,
        ActivationState::Active
    );

    server.answer(|_| Resp {
        status: 204,
        headers: vec![],
        body: vec![],
    });
    deactivate(&dir, false).await.unwrap();
    let r = server.requests().last().unwrap().clone();
    assert_eq!(
        (r.method.as_str(), r.path.clone()),
        ("DELETE", format!("/v1/license/{TOKEN}/devices/{uuid}"))
    );
    assert_eq!(
        r.headers.get("authorization").map(String::as_str),
        Some("Bearer dev-secret-1")
    );
    let a = dir.activation().unwrap().unwrap();
    assert_eq!(a.state, ActivationState::Deactivated);
    assert!(a.deactivated_at.is_some());
    assert!(
        !dir.license_path().exists(),
        "the license file leaves its place"
    );
    assert!(
        dir.file(REVOKED_LICENSE_FILE).is_file(),
        "the license file is kept for inspection"
    );
    let report = crate::status::report(&dir, &keys, SystemTime::now()).unwrap();
    assert_eq!(
        (report.status, report.reason),
        (Status::NoLicense, Some(Reason::Deactivated))
    );

    // Activating again takes a new seat under a new activation id, on the same device identity.
    server.answer(activation_handler(key.clone(), "act-2"));
    let again = activate(&dir, &server.url(), &keys, &req()).await.unwrap();
    assert_eq!(again.activation_id, "act-2");
    assert_eq!(dir.device_uuid().unwrap().unwrap(), uuid);
    let a = dir.activation().unwrap().unwrap();
    assert_eq!(
        (a.state, a.seq, a.deactivated_at.clone()),
        (ActivationState::Active, 0, None)
    );
    assert_eq!(
        crate::status::report(&dir, &keys, SystemTime::now())
            .unwrap()
            .status,
        Status::Active
    );

    // --local-only never contacts the server.
    let count = server.requests().len();
    deactivate(&dir, true).await.unwrap();
    assert_eq!(server.requests().len(), count);
    assert_eq!(
        dir.activation().unwrap().unwrap().state,
        ActivationState::Deactivated
    );
}

#[tokio::test]
async fn activate_without_trusted_keys_is_refused_before_any_request() {
    let server = Server::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(tmp.path());
    let e = activate(&dir, &server.url(), &TrustedKeys::default(), &req())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoTrustedKeys { .. }), "{e}");
    assert!(server.requests().is_empty());
}

/// A TLS license server with a certificate from a private CA; returns its port and the CA's PEM.
async fn tls_server() -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                if read_request(&mut tls).await.is_none() {
                    return;
                }
                let body = json!({"error":"unknown_token","message":"no such token"}).to_string();
                let head = format!(
                    "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn https_trusts_the_extra_ca_bundle_in_addition_to_the_system_roots() {
    let (port, ca_pem) = tls_server().await;
    let url = DeliveryUrl::parse(&format!("https://127.0.0.1:{port}/v1/license/{TOKEN}")).unwrap();
    let body = ActivateBody {
        device_name: "gw",
        client_version: "0",
        platform: "linux",
        nonce: "n",
    };
    let uuid = "0b6a4a39-52f9-4a8e-9b5d-0123456789ab";

    let e = Client::with_extra_ca(&url, None)
        .unwrap()
        .activate(uuid, &body)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::Unreachable {
                cause: TransientCause::Tls,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("extra-ca.pem");
    std::fs::write(&bundle, &ca_pem).unwrap();
    let e = Client::with_extra_ca(&url, Some(&bundle))
        .unwrap()
        .activate(uuid, &body)
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.refusal_code(),
        Some("unknown_token"),
        "TLS to the private CA works: {e}"
    );

    std::fs::write(&bundle, "not a bundle").unwrap();
    let e = Client::with_extra_ca(&url, Some(&bundle)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::LocalFiles);
    assert!(e.to_string().contains("extra-ca.pem"), "{e}");
    let e = Client::with_extra_ca(&url, Some(&tmp.path().join("missing.pem")))
        .err()
        .unwrap();
    assert!(e.to_string().contains("missing.pem"), "{e}");
}

/// A well-behaved sync endpoint: a fresh license for the device, the server's clock, every report acked.
fn sync_handler(key: SigningKey) -> impl FnMut(&Req) -> Resp + Send {
    move |r| {
        let ids: Vec<Value> = r.body["usage"]
            .as_array()
            .map(|a| a.iter().map(|u| u["report_id"].clone()).collect())
            .unwrap_or_default();
        json_resp(
            200,
            json!({"license_jwt": license_for(&key, &device_of(r), "act-1", now(), r.body["nonce"].as_str()),
                   "server_time": now(), "acked_report_ids": ids}),
        )
    }
}

const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);

#[tokio::test]
async fn a_running_generation_never_undoes_the_high_water_reset_of_a_sync() {
    let (server, _tmp, dir, key) = activated().await;
    let keys = trusted(&key);
    // A generation (edged) loaded now sees the clock jump ten years ahead (a bad NTP answer): its
    // in-memory mark follows, the license is expired for it.
    let lic = LoadedLicense::load(&dir, &keys).unwrap();
    assert_eq!(
        lic.evaluate(SystemTime::now() + TEN_YEARS).status,
        Status::Expired
    );
    // The clock is fixed and a verified sync resets the mark to the server's time.
    server.answer(sync_handler(key.clone()));
    sync(&dir, &keys).await.unwrap();
    let reset = dir.activation().unwrap().unwrap().high_water;
    assert!(reset <= now() + 5, "the sync reset the mark: {reset}");
    // The generation writes its in-memory mark back, periodically and at shutdown, with the
    // value-only call: the older reading must not come back.
    dir.persist_high_water(lic.high_water()).unwrap();
    let stored = dir.activation().unwrap().unwrap().high_water;
    assert!(
        stored <= now() + 5,
        "a pre-sync reading undid the reset: {stored} > now {}",
        now()
    );
    assert_eq!(
        crate::status::report(&dir, &keys, SystemTime::now())
            .unwrap()
            .status,
        Status::Active
    );
    // The generation-aware call does the same, and also brings the running generation back to
    // the reset mark.
    lic.persist_high_water(&dir).unwrap();
    assert!(dir.activation().unwrap().unwrap().high_water <= now() + 5);
    assert_eq!(lic.evaluate(SystemTime::now()).status, Status::Active);
    assert!(lic.high_water() <= now() + 5);
}

#[tokio::test]
async fn the_generation_aware_persist_keeps_readings_ahead_of_a_clock_set_back() {
    let (server, _tmp, dir, key) = activated().await;
    let keys = trusted(&key);
    let lic = LoadedLicense::load(&dir, &keys).unwrap();
    // Read an hour ahead, then the clock is set back: without a sync in between the reading is
    // persisted in full, so a restart does not give the hour back.
    let ahead = SystemTime::now() + Duration::from_secs(3600);
    lic.evaluate(ahead);
    lic.persist_high_water(&dir).unwrap();
    assert_eq!(
        dir.activation().unwrap().unwrap().high_water,
        crate::accounts::unix_secs(ahead)
    );
    // Persisting never moves the stored mark back.
    let stale = LoadedLicense::load(&dir, &keys).unwrap();
    stale.persist_high_water(&dir).unwrap();
    assert_eq!(
        dir.activation().unwrap().unwrap().high_water,
        crate::accounts::unix_secs(ahead)
    );
    // Once activation.json holds another activation, the old generation writes nothing.
    server.answer(activation_handler(key.clone(), "act-2"));
    activate(&dir, &server.url(), &keys, &req()).await.unwrap();
    let fresh = dir.activation().unwrap().unwrap();
    lic.evaluate(ahead + Duration::from_secs(3600));
    lic.persist_high_water(&dir).unwrap();
    assert_eq!(dir.activation().unwrap().unwrap(), fresh);
    // A license without an activation (file-drop) has nothing to persist into.
    std::fs::remove_file(dir.file(ACTIVATION_FILE)).unwrap();
    lic.persist_high_water(&dir).unwrap();
    assert!(!dir.file(ACTIVATION_FILE).exists());
}

#[tokio::test]
async fn a_redirect_is_transient_and_changes_nothing() {
    let (server, _tmp, dir, key) = activated().await;
    let before = dir.activation().unwrap().unwrap();
    let port = server.port;
    server.answer(move |_| Resp {
        status: 302,
        headers: vec![("Location", format!("http://127.0.0.1:{port}/portal/login"))],
        body: vec![],
    });
    let e = sync(&dir, &trusted(&key)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.to_string().contains("redirect"), "{e}");
    assert_no_token(&e);
    assert_eq!(
        dir.activation().unwrap().unwrap(),
        before,
        "a redirect (captive portal, proxy) is not a refusal: activation.json stays as it was"
    );
    assert_eq!(server.requests().len(), 2, "the redirect is not followed");
}

#[tokio::test]
async fn a_refusal_code_that_repeats_the_token_is_scrubbed() {
    let server = Server::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(tmp.path());
    server.answer(|_| {
        json_resp(
            404,
            json!({"error": format!("unknown_token:{TOKEN}"), "message": "no such token"}),
        )
    });
    let e = activate(&dir, &server.url(), &trusted(&new_key()), &req())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert_no_token(&e);
    assert!(!e.refusal_code().unwrap_or_default().contains(TOKEN));
}
