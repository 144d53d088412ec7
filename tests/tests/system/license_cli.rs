//! System tests of the license protocol: the reference license server spoken to directly over HTTP
//! (`server_*`), and the real `privitty-edge license …` CLI against the real server (`cli_*`).
//!
//! Everything runs as real processes over loopback in temp dirs; on failure the server's output and
//! the device directory are printed. Waiting is done with `eventually`, never with sleeps.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use privitty_tests::license_server::{Fault, LicenseServer, LicenseSpec};
use privitty_tests::support::{DumpDirOnFailure, bin, eventually};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- shared set-up

/// A temp root holding the server's state dir and the device directories.
struct World {
    // declared first so it is dropped first: its output, printed on failure, lives under `root`
    server: LicenseServer,
    root: tempfile::TempDir,
}

fn world() -> World {
    let root = tempfile::tempdir().expect("tempdir");
    let server = LicenseServer::start(&root.path().join("server"));
    World { server, root }
}

fn tls_world() -> World {
    let root = tempfile::tempdir().expect("tempdir");
    let server = LicenseServer::start_tls(&root.path().join("server"), &["localhost", "127.0.0.1"]);
    World { server, root }
}

/// A device's accounts directory, printed when the test fails.
struct Device {
    dir: PathBuf,
    _dump: DumpDirOnFailure,
}

impl World {
    fn device(&self, name: &str) -> Device {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("device dir");
        Device {
            _dump: DumpDirOnFailure(dir.clone()),
            dir,
        }
    }

    fn license(&self) -> String {
        self.server.create_license(&LicenseSpec::default())
    }

    /// A `privitty-edge --accounts DIR license …` command trusting this server's key; no proxy, no
    /// extra CA unless a test adds one.
    fn edge_cmd(&self, dev: &Device, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("privitty-edge"));
        self.prepare(&mut cmd, dev, args);
        cmd
    }

    fn prepare(&self, cmd: &mut Command, dev: &Device, args: &[&str]) {
        cmd.arg("--accounts")
            .arg(&dev.dir)
            .arg("license")
            .args(args)
            .env("PRIVITTY_LICENSE_PUBKEY", self.server.pubkey_path())
            .env("PRIVITTY_PROFILE", "test-gateway")
            .env_remove("PRIVITTY_ACCOUNTS")
            .env_remove("SSL_CERT_FILE")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy");
    }

    fn edge(&self, dev: &Device, args: &[&str]) -> Run {
        Run::of(self.edge_cmd(dev, args), args)
    }

    fn status(&self, dev: &Device) -> Value {
        let run = self.edge(dev, &["status", "--json"]);
        assert!(
            run.code == 0 || run.code == 3,
            "status --json must exit 0 or 3: {run:?}"
        );
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {run:?}"))
    }

    fn activate(&self, dev: &Device, url: &str) -> Run {
        let run = self.edge(dev, &["activate", url]);
        assert_eq!(
            run.code,
            0,
            "activate failed: {run:?}\n{}",
            self.server.output()
        );
        run
    }
}

/// A finished CLI run.
struct Run {
    args: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`privitty-edge license {}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    fn of(mut cmd: Command, args: &[&str]) -> Run {
        let out = cmd.output().expect("running privitty-edge");
        Run {
            args: args.join(" "),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The license files the protocol defines; a transient error must leave them byte-identical.
const LICENSE_FILES: [&str; 4] = [
    "privitty.lic",
    "device.uuid",
    "license_server.txt",
    "activation.json",
];

/// The protocol's license files of a device dir, as text with their modes (readable in a diff).
fn license_files(dir: &Path) -> BTreeMap<&'static str, Option<(String, u32)>> {
    LICENSE_FILES
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            let content = std::fs::read(&path)
                .ok()
                .map(|b| (String::from_utf8_lossy(&b).into_owned(), mode(&path)));
            (name, content)
        })
        .collect()
}

/// The regular files of a device dir with contents and modes, leaving out the lock file and
/// hidden temp files (those are not state).
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read device dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(entry.path()).expect("metadata");
        if name.starts_with('.') || !meta.is_file() {
            continue;
        }
        let bytes = std::fs::read(entry.path()).expect("read file");
        files.insert(name, (bytes, meta.permissions().mode() & 0o777));
    }
    files
}

fn restore(dir: &Path, snap: &BTreeMap<String, (Vec<u8>, u32)>) {
    std::fs::remove_dir_all(dir).expect("clear device dir");
    std::fs::create_dir_all(dir).expect("device dir");
    for (name, (bytes, mode)) in snap {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("restore file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).expect("chmod");
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn activation_json(dev: &Device) -> Value {
    serde_json::from_str(&read(&dev.dir, "activation.json")).expect("activation.json is JSON")
}

fn token_of(url: &str) -> &str {
    url.rsplit('/').next().expect("url has a token")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// A host tool a test drives (`strace`, `faketime`); panics with the package to install.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: apt-get install {name}"))
}

// ---------------------------------------------------------------- JWT helpers

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn jwt_parts(jwt: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "compact JWS has three parts: {jwt}");
    let dec = |s: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).expect("base64url")).expect("json")
    };
    (dec(parts[0]), dec(parts[1]))
}

fn server_signing_key(server: &LicenseServer) -> SigningKey {
    let pem =
        std::fs::read_to_string(server.state_dir().join("signing-key.pem")).expect("signing key");
    SigningKey::from_pkcs8_pem(&pem).expect("pkcs8 ed25519 key")
}

fn kid_of(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

fn sign_jwt(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn verify_jwt(server: &LicenseServer, jwt: &str) -> Value {
    let pem = std::fs::read_to_string(server.pubkey_path()).expect("pubkey");
    let key = VerifyingKey::from_public_key_pem(&pem).expect("spki pem");
    let (header, claims) = jwt_parts(jwt);
    assert_eq!(
        header,
        json!({"alg": "EdDSA", "typ": "privitty-lic+jwt", "kid": kid_of(&key)})
    );
    let (input, sig) = jwt.rsplit_once('.').expect("signature part");
    let sig = ed25519_dalek::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).expect("b64"))
        .expect("sig");
    key.verify(input.as_bytes(), &sig)
        .expect("license JWT verifies with the server's public key");
    claims
}

// ---------------------------------------------------------------- direct HTTP client

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {}", self.status, self.body))
    }
}

fn http(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<Value>,
    ca: Option<&Path>,
) -> Result<Answer, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut builder = reqwest::Client::builder().no_proxy().timeout(DEADLINE);
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).expect("ca");
            builder =
                builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("ca pem"));
        }
        let client = builder.build().expect("client");
        let mut req = client.request(method.parse().expect("method"), url);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let body = resp.text().await.map_err(|e| format!("{e:?}"))?;
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    })
}

fn put_activate(url: &str, device: &str, nonce: &str) -> Answer {
    let body = json!({"device_name": "gw", "client_version": "test", "platform": "linux-x86_64", "nonce": nonce});
    http(
        "PUT",
        &format!("{url}/devices/{device}"),
        None,
        Some(body),
        None,
    )
    .expect("activate call")
}

fn post_sync(url: &str, device: &str, secret: Option<&str>, body: Value) -> Answer {
    http(
        "POST",
        &format!("{url}/devices/{device}/sync"),
        secret,
        Some(body),
        None,
    )
    .expect("sync call")
}

fn delete(url: &str, device: &str, secret: Option<&str>) -> Answer {
    http(
        "DELETE",
        &format!("{url}/devices/{device}"),
        secret,
        None,
        None,
    )
    .expect("deactivate call")
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ================================================================ the server, over HTTP

#[test]
fn server_activate_sync_deactivate_follow_the_protocol() {
    let w = world();
    let spec = LicenseSpec {
        seats: 1,
        customer: Some("acme".into()),
        features: vec!["files".into(), "revoke".into()],
        ..LicenseSpec::default()
    };
    let url = w.server.create_license(&spec);
    assert!(
        url.starts_with(&format!("{}/v1/license/", w.server.base_url())),
        "{url}"
    );
    let token = token_of(&url);
    assert!(
        token.len() >= 20
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
    );
    let (dev1, dev2) = (new_uuid(), new_uuid());

    let first = put_activate(&url, &dev1, "nonce-1");
    assert_eq!(first.status, 201, "{}", first.body);
    let first = first.json();
    let act = first["activation_id"]
        .as_str()
        .expect("activation_id")
        .to_string();
    let secret = first["device_secret"]
        .as_str()
        .expect("device_secret")
        .to_string();
    let claims = verify_jwt(&w.server, first["license_jwt"].as_str().expect("jwt"));
    assert_eq!(claims["ver"], 1);
    assert_eq!(claims["iss"], "privitty-license");
    assert_eq!(claims["aud"], "privitty-edge");
    assert_eq!(claims["dev"], dev1.as_str());
    assert_eq!(claims["act"], act.as_str());
    assert_eq!(claims["nce"], "nonce-1");
    assert_eq!(claims["customer"], "acme");
    assert_eq!(claims["seats"], 1);
    assert_eq!(claims["features"], json!(["files", "revoke"]));
    assert_ne!(
        claims["sub"], token,
        "sub is the license id, never the TOKEN"
    );
    let (iat, sync_by, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["sync_by"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(sync_by - iat, 7 * 86400, "sync_by = iat + sync window");
    assert_eq!(exp - iat, 30 * 86400, "exp = iat + offline allowance");
    assert!((first["server_time"].as_i64().unwrap() - iat).abs() <= 1);

    // a retried activation: same seat, same secret, fresh license
    let again = put_activate(&url, &dev1, "nonce-2");
    assert_eq!(again.status, 200, "{}", again.body);
    let again = again.json();
    assert_eq!(again["activation_id"], act.as_str());
    assert_eq!(again["device_secret"], secret.as_str());
    let claims2 = verify_jwt(&w.server, again["license_jwt"].as_str().unwrap());
    assert_ne!(claims2["jti"], claims["jti"]);
    assert_eq!(claims2["nce"], "nonce-2");

    let full = put_activate(&url, &dev2, "n");
    assert_eq!(full.status, 409, "{}", full.body);
    assert_eq!(full.json()["error"], "seat_limit");
    assert!(
        full.json()["message"]
            .as_str()
            .unwrap()
            .contains("deactivate another device")
    );

    // sync: auth, usage idempotent per report_id
    let usage = json!({"activation_id": act, "current_jti": claims2["jti"], "seq": 1, "nonce": "s1",
        "usage": [{"report_id": "r1", "period_start": 0, "period_end": 10, "counters": {"files_sent": 3}}]});
    assert_eq!(post_sync(&url, &dev1, None, usage.clone()).status, 401);
    let bad = post_sync(&url, &dev1, Some("wrong"), usage.clone());
    assert_eq!(
        (bad.status, bad.json()["error"].clone()),
        (401, json!("bad_secret"))
    );
    let nobody = post_sync(&url, &dev2, Some(&secret), usage.clone());
    assert_eq!(
        (nobody.status, nobody.json()["error"].clone()),
        (404, json!("not_activated"))
    );
    for seq in [1, 2] {
        let mut body = usage.clone();
        body["seq"] = json!(seq);
        let ok = post_sync(&url, &dev1, Some(&secret), body);
        assert_eq!(ok.status, 200, "{}", ok.body);
        let ok = ok.json();
        assert_eq!(ok["acked_report_ids"], json!(["r1"]));
        let c = verify_jwt(&w.server, ok["license_jwt"].as_str().unwrap());
        assert_eq!(
            (c["act"].clone(), c["nce"].clone()),
            (json!(act), json!("s1"))
        );
    }
    let acts = w.server.activations();
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert_eq!(
        acts[0]["usage"],
        json!({"files_sent": 3}),
        "a report sent twice counts once"
    );
    assert_eq!(acts[0]["sync_seqs"], json!([1, 2]));
    assert!(
        !serde_json::to_string(&acts).unwrap().contains(&secret),
        "no device secret in admin output"
    );

    // deactivate: secret checked, idempotent, seat freed
    assert_eq!(delete(&url, &dev1, Some("wrong")).status, 401);
    assert_eq!(delete(&url, &dev1, Some(&secret)).status, 204);
    assert_eq!(
        delete(&url, &dev1, Some(&secret)).status,
        204,
        "already released is still 204"
    );
    let gone = post_sync(&url, &dev1, Some(&secret), usage.clone());
    assert_eq!(
        (gone.status, gone.json()["error"].clone()),
        (410, json!("deactivated"))
    );
    assert_eq!(
        put_activate(&url, &dev2, "n").status,
        201,
        "the freed seat goes to another device"
    );
    assert_eq!(
        put_activate(&url, &dev1, "n").status,
        409,
        "the first device has no seat any more"
    );

    // unknown token, bad device id, revocation
    let unknown = put_activate(
        &format!("{}/v1/license/NoSuchToken", w.server.base_url()),
        &dev1,
        "n",
    );
    assert_eq!(
        (unknown.status, unknown.json()["error"].clone()),
        (404, json!("unknown_token"))
    );
    assert_eq!(put_activate(&url, "not-a-uuid", "n").status, 400);
    w.server.revoke(&url);
    let revoked = put_activate(&url, &dev2, "n");
    assert_eq!(
        (revoked.status, revoked.json()["error"].clone()),
        (410, json!("revoked"))
    );
    let secret2 = device_secret_from_state(&w, &dev2);
    let revoked_sync = post_sync(&url, &dev2, Some(&secret2), json!({"seq": 1}));
    assert_eq!(
        (revoked_sync.status, revoked_sync.json()["error"].clone()),
        (410, json!("revoked"))
    );

    let log = w.server.output();
    assert!(
        log.contains("activated"),
        "server logs its lifecycle: {log}"
    );
    assert!(
        !log.contains(token),
        "the TOKEN must never be logged:\n{log}"
    );
    assert!(
        !log.contains(&secret),
        "a device secret must never be logged"
    );
}

/// The second device's secret, from the admin-visible state (a revoked license answers no activation).
fn device_secret_from_state(w: &World, device: &str) -> String {
    let state: Value =
        serde_json::from_str(&read(w.server.state_dir(), "state.json")).expect("state.json");
    state["activations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["device_uuid"] == device)
        .and_then(|a| a["device_secret"].as_str())
        .expect("device holds an activation")
        .to_string()
}

#[test]
fn server_restart_keeps_seats_key_and_port() {
    let mut w = world();
    let url = w.license();
    let dev = new_uuid();
    let first = put_activate(&url, &dev, "n").json();
    let pubkey = std::fs::read(w.server.pubkey_path()).unwrap();
    let port = w.server.port();
    for path in ["signing-key.pem", "state.json", "admin-token"] {
        assert_eq!(mode(&w.server.state_dir().join(path)), 0o600, "{path} mode");
    }

    w.server.restart();
    assert_eq!(w.server.port(), port, "restart keeps the port");
    assert_eq!(
        std::fs::read(w.server.pubkey_path()).unwrap(),
        pubkey,
        "the signing key is kept"
    );
    let again = put_activate(&url, &dev, "n");
    assert_eq!(
        again.status, 200,
        "the seat survived the restart: {}",
        again.body
    );
    assert_eq!(again.json()["activation_id"], first["activation_id"]);
    verify_jwt(&w.server, again.json()["license_jwt"].as_str().unwrap());
    assert_eq!(put_activate(&url, &new_uuid(), "n").status, 409);
}

#[test]
fn server_faults_apply_to_the_next_protocol_calls_only() {
    let w = world();
    let url = w.license();
    let dev = new_uuid();

    w.server.fault(Fault::Status500, 2);
    // admin calls are never affected by a fault
    assert_eq!(w.server.activations().len(), 0);
    assert_eq!(put_activate(&url, &dev, "n").status, 500);
    assert_eq!(put_activate(&url, &dev, "n").status, 500);
    assert!(
        w.server.activations().is_empty(),
        "a 500 fault changes nothing"
    );

    w.server.fault(
        Fault::TooManyRequests {
            retry_after: Duration::from_secs(7),
        },
        1,
    );
    let limited = put_activate(&url, &dev, "n");
    assert_eq!(
        (limited.status, limited.retry_after.as_deref()),
        (429, Some("7"))
    );

    w.server.fault(Fault::Garbage200, 1);
    let garbage = put_activate(&url, &dev, "n");
    assert_eq!(garbage.status, 200);
    assert!(
        serde_json::from_str::<Value>(&garbage.body).is_err(),
        "garbage-200 is not JSON"
    );

    w.server.fault(Fault::WrongKey, 1);
    let wrong = put_activate(&url, &dev, "n").json();
    let (header, _) = jwt_parts(wrong["license_jwt"].as_str().unwrap());
    let pem = std::fs::read_to_string(w.server.pubkey_path()).unwrap();
    let trusted_kid = kid_of(&VerifyingKey::from_public_key_pem(&pem).unwrap());
    assert_ne!(
        header["kid"],
        trusted_kid.as_str(),
        "wrong-key signs with another key"
    );

    w.server.fault(Fault::Delay(Duration::from_millis(200)), 1);
    assert_eq!(
        put_activate(&url, &dev, "n").status,
        200,
        "delay answers normally"
    );

    w.server.fault(Fault::Status500, 5);
    w.server.fault(Fault::None, 0);
    assert_eq!(
        put_activate(&url, &dev, "n").status,
        200,
        "Fault::None clears"
    );

    let no_admin = http(
        "GET",
        &format!("{}/admin/v1/activations", w.server.base_url()),
        None,
        None,
        None,
    )
    .unwrap();
    assert_eq!(no_admin.status, 401);
    let huge = http(
        "PUT",
        &format!("{url}/devices/{dev}"),
        None,
        Some(json!({"nonce": "x".repeat(70_000)})),
        None,
    )
    .unwrap();
    assert_eq!(huge.status, 413);
}

#[test]
fn server_license_with_ended_entitlement_is_refused() {
    let w = world();
    let url = w.server.create_license(&LicenseSpec {
        entitlement: Duration::from_secs(2),
        grace: Duration::from_secs(1),
        ..LicenseSpec::default()
    });
    let dev = new_uuid();
    let first = put_activate(&url, &dev, "n");
    assert_eq!(first.status, 201, "{}", first.body);
    let secret = first.json()["device_secret"].as_str().unwrap().to_string();
    let answer = eventually(
        DEADLINE,
        "activation to be refused after the entitlement",
        || {
            let a = put_activate(&url, &new_uuid(), "n");
            (a.status == 410).then_some(a)
        },
    );
    assert_eq!(answer.json()["error"], "license_expired");
    let synced = eventually(
        DEADLINE,
        "sync to be refused after entitlement + grace",
        || {
            let a = post_sync(&url, &dev, Some(&secret), json!({"seq": 1}));
            (a.status != 200).then_some(a)
        },
    );
    assert_eq!(
        (synced.status, synced.json()["error"].clone()),
        (410, json!("license_expired"))
    );
}

#[test]
fn server_offline_license_has_no_activation() {
    let w = world();
    let url = w.license();
    let dev = new_uuid();
    let claims = verify_jwt(&w.server, &w.server.issue_offline(&url, &dev));
    assert_eq!(claims["dev"], dev.as_str());
    assert!(claims.get("act").is_none(), "{claims}");
    assert!(w.server.activations().is_empty());
}

#[test]
fn server_tls_needs_its_ca() {
    let w = tls_world();
    let url = w.license();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let dev = new_uuid();
    let body = json!({"nonce": "n"});
    let ok = http(
        "PUT",
        &format!("{url}/devices/{dev}"),
        None,
        Some(body.clone()),
        Some(&w.server.ca_path()),
    )
    .expect("https with the CA");
    assert_eq!(ok.status, 201, "{}", ok.body);
    let err = http(
        "PUT",
        &format!("{url}/devices/{dev}"),
        None,
        Some(body),
        None,
    )
    .err()
    .expect("https without the CA fails");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

// ================================================================ the CLI against the server

/// The status word on line 1, the rest `key: value` lines.
fn status_text(w: &World, dev: &Device) -> (String, Run) {
    let run = w.edge(dev, &["status"]);
    let mut lines = run.stdout.lines();
    let word = lines.next().unwrap_or_default().trim().to_string();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains(": "),
            "status lines after the first are `key: value`: {line:?}\n{run:?}"
        );
    }
    (word, run)
}

#[test]
fn cli_lifecycle_activate_status_sync_deactivate() {
    let w = world();
    let url = w.server.create_license(&LicenseSpec {
        customer: Some("acme".into()),
        features: vec!["files".into()],
        ..LicenseSpec::default()
    });
    let a = w.device("a");

    let none = w.status(&a);
    assert_eq!(
        (none["status"].clone(), none["reason"].clone()),
        (json!("no_license"), json!("not_activated"))
    );
    let (word, run) = status_text(&w, &a);
    assert_eq!((word.as_str(), run.code), ("no_license", 3), "{run:?}");

    w.activate(&a, &url);
    let uuid = read(&a.dir, "device.uuid");
    assert!(uuid.ends_with('\n'));
    let parsed = uuid::Uuid::parse_str(uuid.trim()).expect("device.uuid is a UUID");
    assert_eq!(parsed.get_version_num(), 4);
    assert_eq!(
        uuid.trim(),
        parsed.hyphenated().to_string(),
        "lowercase hyphenated"
    );
    assert_eq!(read(&a.dir, "license_server.txt").trim(), url);
    assert_eq!(mode(&a.dir.join("license_server.txt")), 0o600);
    assert_eq!(mode(&a.dir.join("activation.json")), 0o600);
    let acts = w.server.activations();
    assert_eq!(acts.len(), 1, "{acts:?}");
    let activation = activation_json(&a);
    assert_eq!(activation["activation_id"], acts[0]["activation_id"]);
    assert_eq!(activation["state"], "active");
    assert_eq!(acts[0]["device_uuid"], uuid.trim());
    assert_eq!(
        acts[0]["device_name"], "test-gateway",
        "device name from PRIVITTY_PROFILE"
    );
    let claims = verify_jwt(&w.server, &read(&a.dir, "privitty.lic"));

    let (word, run) = status_text(&w, &a);
    assert_eq!((word.as_str(), run.code), ("active", 0), "{run:?}");
    for key in [
        "license id",
        "customer",
        "reason",
        "expires",
        "grace ends",
        "device uuid",
        "activation id",
        "license server",
        "last sync ok",
        "last sync error",
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{key}: "))),
            "status shows `{key}: …`: {run:?}"
        );
    }
    assert!(
        run.stdout
            .contains(&format!("device uuid: {}", uuid.trim())),
        "{run:?}"
    );
    let st = w.status(&a);
    assert_eq!(st["status"], "active");
    assert_eq!(st["license_id"], claims["sub"]);
    assert_eq!(st["customer"], "acme");
    assert_eq!(st["features"], json!(["files"]));
    assert_eq!(st["device_uuid"], uuid.trim());
    assert_eq!(st["activation_id"], acts[0]["activation_id"]);
    for field in [
        "reason",
        "expires_at",
        "grace_ends_at",
        "license_server",
        "last_sync_ok_at",
        "last_sync_error",
    ] {
        assert!(st.get(field).is_some(), "status --json has `{field}`: {st}");
    }
    let shown = st["license_server"].as_str().expect("license_server shown");
    assert!(
        shown.contains("(redacted)") && !shown.contains(token_of(&url)),
        "{shown}"
    );

    let seq_before = activation_json(&a)["seq"].as_u64().unwrap_or(0);
    let sync = w.edge(&a, &["sync"]);
    assert_eq!(sync.code, 0, "{sync:?}");
    let after = activation_json(&a);
    assert_eq!(
        after["seq"].as_u64().unwrap_or(0),
        seq_before + 1,
        "sync advances seq: {after}"
    );
    assert!(!after["last_sync_ok_at"].is_null(), "{after}");
    assert!(
        w.server.activations()[0]["last_sync_at"].is_i64(),
        "the server saw the sync"
    );
    assert_ne!(
        verify_jwt(&w.server, &read(&a.dir, "privitty.lic"))["jti"],
        claims["jti"],
        "sync stored a fresh license"
    );
    assert!(!w.status(&a)["last_sync_ok_at"].is_null());

    let lic_before = read(&a.dir, "privitty.lic");
    let deact = w.edge(&a, &["deactivate"]);
    assert_eq!(deact.code, 0, "{deact:?}");
    assert!(
        !a.dir.join("privitty.lic").exists(),
        "deactivate moves privitty.lic out of its place"
    );
    assert_eq!(
        read(&a.dir, "privitty.lic.revoked"),
        lic_before,
        "deactivate keeps the license for inspection"
    );
    assert_eq!(activation_json(&a)["state"], "deactivated");
    let st = w.status(&a);
    assert_eq!(
        (st["status"].clone(), st["reason"].clone()),
        (json!("no_license"), json!("deactivated"))
    );
    assert_eq!(w.edge(&a, &["status"]).code, 3);
    assert_eq!(
        w.server.activations()[0]["state"],
        "deactivated",
        "the seat was released on the server"
    );

    let sync = w.edge(&a, &["sync"]);
    assert_eq!(
        sync.code, 7,
        "sync after deactivation is refused locally: {sync:?}"
    );

    // the freed seat goes to a second device
    let b = w.device("b");
    w.activate(&b, &url);
    assert_eq!(w.status(&b)["status"], "active");
}

#[test]
fn cli_reactivation_takes_no_second_seat() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let first = activation_json(&a)["activation_id"].clone();
    let second = w.activate(&a, &url);
    assert_eq!(activation_json(&a)["activation_id"], first, "{second:?}");
    let acts = w.server.activations();
    assert_eq!(acts.len(), 1, "one seat: {acts:?}");
    assert_eq!(w.status(&a)["status"], "active");
    let listing = w.server.admin(&["list-activations"]);
    assert_eq!(
        listing.lines().filter(|l| l.contains("active")).count(),
        1,
        "{listing}"
    );
}

#[test]
fn cli_seat_limit_refuses_a_second_device_until_the_first_deactivates() {
    let w = world();
    let url = w.license();
    let (a, b) = (w.device("a"), w.device("b"));
    w.activate(&a, &url);
    let refused = w.edge(&b, &["activate", &url]);
    assert_eq!(refused.code, 5, "{refused:?}");
    let text = refused.stderr.to_lowercase();
    assert!(
        text.contains("deactivat") || text.contains("administrator"),
        "the message says what to do: {refused:?}"
    );
    assert!(!b.dir.join("privitty.lic").exists());
    let st = w.status(&b);
    assert_eq!(st["status"], "no_license");
    // `license status` says why, until an activation succeeds.
    let why = st["last_activation_error"].as_str().unwrap_or_default();
    assert!(why.contains("seat_limit"), "{st}");
    let text = w.edge(&b, &["status"]);
    assert!(
        text.stdout.contains("last activation error: ") && text.stdout.contains("seat_limit"),
        "{text:?}"
    );

    assert_eq!(w.edge(&a, &["deactivate"]).code, 0);
    w.activate(&b, &url);
    let st = w.status(&b);
    assert_eq!(st["status"], "active");
    assert!(st["last_activation_error"].is_null(), "cleared: {st}");
}

#[test]
fn cli_unknown_and_revoked_tokens_are_refused() {
    let w = world();
    let a = w.device("a");
    let unknown = format!("{}/v1/license/NoSuchToken123", w.server.base_url());
    let run = w.edge(&a, &["activate", &unknown]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(!a.dir.join("privitty.lic").exists());
    assert_eq!(w.status(&a)["reason"], "not_activated");

    let url = w.license();
    w.server.revoke(&url);
    let b = w.device("b");
    let run = w.edge(&b, &["activate", &url]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("revoked"), "{run:?}");

    // revoked after activation: sync learns it, status says so
    let url = w.license();
    let c = w.device("c");
    w.activate(&c, &url);
    w.server.revoke(&url);
    let run = w.edge(&c, &["sync"]);
    assert_eq!(run.code, 5, "{run:?}");
    let st = w.status(&c);
    assert_eq!(
        (st["status"].clone(), st["reason"].clone()),
        (json!("no_license"), json!("revoked"))
    );
}

#[test]
fn cli_transient_faults_change_nothing() {
    let mut w = world();
    // room for `fresh`: a wrong-key answer is a lost response, the server did activate it
    let url = w.server.create_license(&LicenseSpec {
        seats: 3,
        ..LicenseSpec::default()
    });
    let a = w.device("a");
    w.activate(&a, &url);
    let before = license_files(&a.dir);
    // `last_sync_error` is expected to change: it reports the failure
    let usable = |mut st: Value| {
        st["last_sync_error"] = Value::Null;
        st
    };
    let status_before = usable(w.status(&a));
    let fresh = w.device("fresh");

    let faults = [
        ("500", Fault::Status500),
        (
            "429",
            Fault::TooManyRequests {
                retry_after: Duration::from_secs(1),
            },
        ),
        ("garbage-200", Fault::Garbage200),
        ("wrong-key", Fault::WrongKey),
    ];
    for (name, fault) in faults {
        // enough for every retry the client may make
        w.server.fault(fault, 1000);
        for args in [vec!["sync"], vec!["activate", &url]] {
            let run = w.edge(&a, &args);
            assert_eq!(run.code, 6, "{name}: transient errors exit 6: {run:?}");
            assert_eq!(
                license_files(&a.dir),
                before,
                "{name}: `{}` left the files byte-identical",
                args.join(" ")
            );
            assert_eq!(
                usable(w.status(&a)),
                status_before,
                "{name}: status unchanged"
            );
        }
        let run = w.edge(&fresh, &["activate", &url]);
        assert_eq!(run.code, 6, "{name}: {run:?}");
        assert!(
            !fresh.dir.join("privitty.lic").exists() && !fresh.dir.join("activation.json").exists()
        );
        w.server.fault(Fault::None, 0);
    }
    assert!(
        w.server.activations().len() <= 2,
        "retries took no extra seats: {:?}",
        w.server.activations()
    );

    let st = w.status(&a);
    assert!(
        st["last_sync_error"].is_string(),
        "status reports the failed sync: {st}"
    );

    // a short delay is just a slow answer
    w.server.fault(Fault::Delay(Duration::from_millis(300)), 1);
    assert_eq!(w.edge(&a, &["sync"]).code, 0);
    let after_sync = license_files(&a.dir);
    let st = w.status(&a);
    assert!(
        st["last_sync_error"].is_null() && st["last_sync_ok_at"].is_string(),
        "{st}"
    );

    // server gone: unreachable is transient too
    w.server.stop();
    let run = w.edge(&a, &["sync"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert_eq!(license_files(&a.dir), after_sync);
    assert_eq!(w.status(&a)["status"], "active");
}

/// Rewrites `privitty.lic` of a freshly activated copy of `src` and returns the status it gets.
fn status_with_license(w: &World, src: &Device, name: &str, license: &str) -> Value {
    let dev = w.device(name);
    restore(&dev.dir, &snapshot(&src.dir));
    std::fs::write(dev.dir.join("privitty.lic"), license).expect("write license");
    let st = w.status(&dev);
    let expected = if st["status"] == "active" { 0 } else { 3 };
    assert_eq!(
        w.edge(&dev, &["status"]).code,
        expected,
        "{name}: exit code of status {st}"
    );
    st
}

#[test]
fn cli_invalid_license_files_are_no_license_with_the_reason() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let good = read(&a.dir, "privitty.lic");
    let (header, claims) = jwt_parts(&good);
    let key = server_signing_key(&w.server);
    let other = SigningKey::generate(&mut rand_core::OsRng);
    let other_header =
        json!({"alg": "EdDSA", "typ": "privitty-lic+jwt", "kid": kid_of(&other.verifying_key())});
    let parts: Vec<&str> = good.trim().split('.').collect();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        f(&mut c);
        sign_jwt(&key, &header, &c)
    };

    // control: re-signing the same claims with the server's key is accepted
    assert_eq!(
        status_with_license(&w, &a, "control", &with(&|_| {}))["status"],
        "active"
    );
    let _ = std::fs::remove_dir_all(w.root.path().join("control"));

    let mut tampered_claims = claims.clone();
    tampered_claims["seats"] = json!(1000);
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64(tampered_claims.to_string().as_bytes()),
        parts[2]
    );
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let tampered_sig = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    let alg_none = format!(
        "{}.{}.",
        b64(
            json!({"alg": "none", "typ": "privitty-lic+jwt", "kid": header["kid"]})
                .to_string()
                .as_bytes()
        ),
        parts[1]
    );
    let hs_header = json!({"alg": "HS256", "typ": "privitty-lic+jwt", "kid": header["kid"]});
    let hs_input = format!("{}.{}", b64(hs_header.to_string().as_bytes()), parts[1]);
    let pubkey_pem = std::fs::read(w.server.pubkey_path()).unwrap();
    let hs256 = format!(
        "{hs_input}.{}",
        b64(&hmac_sha256(&pubkey_pem, hs_input.as_bytes()))
    );
    let unknown_kid = sign_jwt(&other, &other_header, &claims);
    let crit = sign_jwt(
        &key,
        &json!({"alg": "EdDSA", "typ": "privitty-lic+jwt", "kid": header["kid"], "crit": ["x"], "x": 1}),
        &claims,
    );
    let iat = claims["iat"].as_i64().unwrap();

    let cases: Vec<(&str, String, &[&str])> = vec![
        ("tampered-payload", tampered_payload, &["invalid_signature"]),
        ("tampered-signature", tampered_sig, &["invalid_signature"]),
        ("alg-none", alg_none, &["invalid_signature"]),
        ("hs256", hs256, &["invalid_signature"]),
        ("unknown-kid", unknown_kid, &["untrusted_key"]),
        (
            "crit-header",
            crit,
            &["invalid_signature", "corrupt", "unsupported_version"],
        ),
        (
            "wrong-aud",
            with(&|c| c["aud"] = json!("someone-else")),
            &["corrupt"],
        ),
        (
            "wrong-iss",
            with(&|c| c["iss"] = json!("someone-else")),
            &["corrupt"],
        ),
        (
            "exp-before-iat",
            with(&|c| c["exp"] = json!(iat - 10)),
            &["corrupt"],
        ),
        (
            "sync-by-after-exp",
            with(&|c| c["sync_by"] = json!(c["exp"].as_i64().unwrap() + 10)),
            &["corrupt"],
        ),
        (
            "ver-2",
            with(&|c| c["ver"] = json!(2)),
            &["unsupported_version"],
        ),
        (
            "other-activation",
            with(&|c| c["act"] = json!("act-someone-else")),
            &["activation_mismatch"],
        ),
        ("not-a-jwt", "hello".to_string(), &["corrupt"]),
        (
            "oversized",
            format!("{}.{}.{}", parts[0], "A".repeat(2 * 1024 * 1024), parts[2]),
            &["corrupt"],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, license, reasons) in &cases {
        let st = status_with_license(&w, &a, name, license);
        let reason = st["reason"].as_str().unwrap_or("-").to_string();
        if st["status"] != "no_license" || !reasons.contains(&reason.as_str()) {
            wrong.push(format!(
                "{name}: expected no_license/{reasons:?}, got {}/{reason}",
                st["status"]
            ));
        }
    }

    // a license copied from another device's directory
    let b = w.device("b");
    let url_b = w.license();
    w.activate(&b, &url_b);
    std::fs::copy(b.dir.join("privitty.lic"), a.dir.join("privitty.lic")).unwrap();
    let st = w.status(&a);
    if (st["status"].as_str(), st["reason"].as_str()) != (Some("no_license"), Some("wrong_device"))
    {
        wrong.push(format!(
            "copied-from-another-device: expected no_license/wrong_device, got {st}"
        ));
    }

    // privitty.lic as a symlink (to a valid license of this very device)
    let elsewhere = w.root.path().join("elsewhere.lic");
    std::fs::write(&elsewhere, &good).unwrap();
    std::fs::remove_file(a.dir.join("privitty.lic")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, a.dir.join("privitty.lic")).unwrap();
    let st = w.status(&a);
    if st["status"] != "no_license" {
        wrong.push(format!("symlink: expected no_license, got {st}"));
    }
    assert!(
        wrong.is_empty(),
        "invalid licenses not rejected as expected:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn cli_offline_license_is_usable_but_cannot_sync() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    let device = uuid::Uuid::new_v4().to_string();
    std::fs::write(a.dir.join("device.uuid"), format!("{device}\n")).unwrap();
    std::fs::write(
        a.dir.join("privitty.lic"),
        w.server.issue_offline(&url, &device),
    )
    .unwrap();
    let st = w.status(&a);
    assert_eq!(st["status"], "active", "{st}");
    let run = w.edge(&a, &["sync"]);
    assert_eq!(
        run.code, 7,
        "a file-drop license has no activation to sync: {run:?}"
    );
}

#[test]
fn cli_status_moves_active_grace_expired_as_time_passes() {
    let w = world();
    let url = w.server.create_license(&LicenseSpec {
        entitlement: Duration::from_secs(4),
        grace: Duration::from_secs(3),
        ..LicenseSpec::default()
    });
    let a = w.device("a");
    w.activate(&a, &url);
    let st = w.status(&a);
    assert_eq!(st["status"], "active", "{st}");
    assert!(
        st["expires_at"].is_string() && st["grace_ends_at"].is_string(),
        "{st}"
    );
    eventually(DEADLINE, "status grace_period", || {
        let (word, run) = status_text(&w, &a);
        assert!(word == "active" || word == "grace_period", "{run:?}");
        (word == "grace_period").then(|| assert_eq!(run.code, 0, "grace_period is usable"))
    });
    eventually(DEADLINE, "status expired", || {
        let (word, run) = status_text(&w, &a);
        assert!(word == "grace_period" || word == "expired", "{run:?}");
        (word == "expired").then(|| assert_eq!(run.code, 3, "expired is not usable"))
    });
}

#[test]
fn cli_setting_the_clock_back_never_extends_a_license() {
    let w = world();
    // entitlement ends soon; the grace period is long, so a sync inside it brings a license whose
    // sync_by is already reached
    let url = w.server.create_license(&LicenseSpec {
        entitlement: Duration::from_secs(4),
        grace: Duration::from_secs(3600),
        ..LicenseSpec::default()
    });
    let a = w.device("a");
    w.activate(&a, &url);
    let at = |offset: &str, args: &[&str]| {
        let mut cmd = Command::new(tool("faketime"));
        cmd.args(["-f", offset]).arg(bin("privitty-edge"));
        w.prepare(&mut cmd, &a, args);
        Run::of(cmd, &[args, &["(under faketime", offset, ")"]].concat())
    };
    let status_at = |offset: &str| -> Value {
        let run = at(offset, &["status", "--json"]);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
    };
    // control: the fake clock does reach the CLI (a day ahead is past entitlement + grace)
    assert_eq!(
        status_at("+1d")["status"],
        "expired",
        "faketime must affect privitty-edge"
    );

    eventually(DEADLINE, "status grace_period", || {
        (w.status(&a)["status"] == "grace_period").then_some(())
    });
    let run = w.edge(&a, &["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(w.status(&a)["status"], "grace_period");
    let files = license_files(&a.dir);

    for offset in ["-1h", "-2d", "-400d"] {
        assert_eq!(
            status_at(offset)["status"],
            "grace_period",
            "clock {offset} brought back `active`"
        );
    }
    assert_eq!(license_files(&a.dir), files, "status only reads");
    // a sync with the clock set back keeps the license in its grace period too
    let run = at("-1d", &["sync"]);
    assert!(run.code == 0 || run.code == 6, "{run:?}");
    assert_eq!(w.status(&a)["status"], "grace_period", "{run:?}");
    assert_eq!(status_at("-1d")["status"], "grace_period");
}

/// Runs `args` under strace, SIGKILLing the CLI at the `n`th call of `syscalls`; true if it was
/// killed (a run that was not must exit 0).
fn run_killed_at(w: &World, dev: &Device, args: &[&str], syscalls: &str, n: u32) -> bool {
    run_killed_at_expecting(w, dev, args, syscalls, n, 0)
}

/// As [`run_killed_at`], for a command whose uninterrupted run exits `code`.
fn run_killed_at_expecting(
    w: &World,
    dev: &Device,
    args: &[&str],
    syscalls: &str,
    n: u32,
    code: i32,
) -> bool {
    let trace = dev.dir.with_extension("strace");
    let mut cmd = Command::new(tool("strace"));
    cmd.arg("-f")
        .arg("-o")
        .arg(&trace)
        .arg("-e")
        .arg(format!("trace={syscalls}"))
        .arg("-e")
        .arg(format!("inject={syscalls}:signal=KILL:when={n}"))
        .arg(bin("privitty-edge"));
    w.prepare(&mut cmd, dev, args);
    let run = Run::of(cmd, args);
    let trace = std::fs::read_to_string(&trace).unwrap_or_default();
    let killed = trace.contains("killed by SIGKILL");
    if !killed {
        assert_eq!(run.code, code, "uninterrupted run: {run:?}\n{trace}");
    }
    killed
}

/// After a kill the directory holds a complete old or new state: every file parses, the license
/// verifies, and status is one of `allowed`.
fn assert_not_torn(w: &World, dev: &Device, allowed: &[&str], what: &str) {
    if dev.dir.join("activation.json").exists() {
        let text = read(&dev.dir, "activation.json");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: torn activation.json ({e}): {text:?}"));
        assert!(v["activation_id"].is_string(), "{what}: {v}");
        assert!(
            dev.dir.join("privitty.lic").exists(),
            "{what}: activation.json committed without privitty.lic"
        );
    }
    let run = w.edge(dev, &["status", "--json"]);
    let st: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {run:?}"));
    let word = st["status"].as_str().unwrap_or_default();
    assert!(
        allowed.contains(&word),
        "{what}: status {st} not in {allowed:?}"
    );
    if word == "no_license" {
        // Before the commit record: nothing, or a license without the activation it names.
        assert!(
            st["reason"] == "not_activated" || st["reason"] == "activation_missing",
            "{what}: a half-written file shows as {st}"
        );
    }
}

#[test]
fn cli_sigkill_during_activate_or_sync_never_tears_the_directory() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    // creates device.uuid (the URL is refused, and the refusal is recorded for `license status`
    // in sync_state.json), so every attempt below is the same device
    let unknown = format!("{}/v1/license/NoSuchToken", w.server.base_url());
    assert_eq!(w.edge(&a, &["activate", &unknown]).code, 5);
    let empty = snapshot(&a.dir);
    assert_eq!(
        empty.keys().collect::<Vec<_>>(),
        vec!["device.uuid", "sync_state.json"]
    );

    for syscalls in ["fsync,fdatasync", "rename,renameat,renameat2"] {
        let mut kills = 0;
        for n in 1.. {
            assert!(n < 200, "activate never completed under {syscalls}");
            restore(&a.dir, &empty);
            let killed = run_killed_at(&w, &a, &["activate", &url], syscalls, n);
            let what = format!("activate killed at {syscalls} #{n}");
            assert_not_torn(&w, &a, &["no_license", "active"], &what);
            if !killed {
                break;
            }
            kills += 1;
        }
        eprintln!("activate: killed at each of its first {kills} {syscalls} calls, then completed");
        assert!(
            kills >= 2,
            "activate was interrupted only {kills} times at {syscalls}: injection did not bite"
        );
        assert_eq!(w.status(&a)["status"], "active");
        assert_eq!(
            w.server.activations().len(),
            1,
            "retried activations took one seat"
        );
    }

    let activated = snapshot(&a.dir);
    let seq = activation_json(&a)["seq"].as_u64().unwrap_or(0);
    for syscalls in ["fsync,fdatasync", "rename,renameat,renameat2"] {
        let mut kills = 0;
        for n in 1.. {
            assert!(n < 200, "sync never completed under {syscalls}");
            restore(&a.dir, &activated);
            let killed = run_killed_at(&w, &a, &["sync"], syscalls, n);
            assert_not_torn(
                &w,
                &a,
                &["active"],
                &format!("sync killed at {syscalls} #{n}"),
            );
            if !killed {
                break;
            }
            kills += 1;
        }
        eprintln!("sync: killed at each of its first {kills} {syscalls} calls, then completed");
        assert!(kills >= 1, "sync was never interrupted at {syscalls}");
        assert_eq!(activation_json(&a)["seq"].as_u64().unwrap_or(0), seq + 1);
    }
}

#[test]
fn cli_concurrent_syncs_serialize() {
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let seq = activation_json(&a)["seq"].as_u64().unwrap_or(0);
    // the first sync to reach the server is held there, so the second one runs while it is in flight
    w.server.fault(Fault::Delay(Duration::from_millis(700)), 1);
    let spawn = |cmd: &mut Command| {
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let p1 = spawn(&mut w.edge_cmd(&a, &["sync"]));
    let p2 = spawn(&mut w.edge_cmd(&a, &["sync"]));
    for p in [p1, p2] {
        let out = p.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        activation_json(&a)["seq"].as_u64().unwrap_or(0),
        seq + 2,
        "each sync advanced seq once"
    );
    let seqs: Vec<u64> = w.server.activations()[0]["sync_seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2, "{seqs:?}");
    assert_eq!(
        seqs[1],
        seqs[0] + 1,
        "the server saw the concurrent syncs one after another: {seqs:?}"
    );
    assert_eq!(w.status(&a)["status"], "active");
}

#[test]
fn cli_refuses_bad_and_insecure_urls() {
    let w = world();
    let a = w.device("a");
    for url in [
        "http://example.com/v1/license/TOKEN123",
        "http://10.0.0.1/v1/license/TOKEN123",
        "ftp://127.0.0.1/v1/license/TOKEN123",
        "https://example.com/v2/license/TOKEN123",
        "https://example.com/v1/license/bad token",
        "not a url",
    ] {
        let run = w.edge(&a, &["activate", url]);
        assert_eq!(run.code, 2, "{url}: {run:?}");
    }
    assert!(!a.dir.join("privitty.lic").exists());
}

#[test]
fn cli_token_appears_only_in_the_delivery_url_file() {
    let w = world();
    let url = w.license();
    let token = token_of(&url).to_string();
    let (a, b) = (w.device("a"), w.device("b"));
    let mut runs = Vec::new();
    let mut edge = |dev: &Device, args: &[&str]| {
        let mut cmd = w.edge_cmd(dev, args);
        cmd.env("PRIVITTY_LOG", "trace");
        let run = Run::of(cmd, args);
        runs.push(run);
    };
    edge(&a, &["activate", &url]);
    edge(&a, &["status"]);
    edge(&a, &["status", "--json"]);
    edge(&a, &["sync"]);
    edge(&b, &["activate", &url]); // refused: seat limit
    w.server.fault(Fault::Status500, 1000);
    edge(&a, &["sync"]); // transient
    w.server.fault(Fault::None, 0);
    edge(&a, &["deactivate"]);
    edge(&a, &["status"]);
    assert_eq!(runs[0].code, 0, "{:?}", runs[0]);
    assert_eq!(runs[4].code, 5, "{:?}", runs[4]);
    for run in &runs {
        assert!(
            !run.stdout.contains(&token) && !run.stderr.contains(&token),
            "TOKEN leaked: {run:?}"
        );
    }
    for dev in [&a, &b] {
        for (name, (bytes, _)) in snapshot(&dev.dir) {
            if name != "license_server.txt" {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(&token),
                    "TOKEN in {name}"
                );
            }
        }
    }
    assert!(
        !w.server.output().contains(&token),
        "TOKEN in the server's log"
    );
}

#[test]
fn cli_https_with_the_ca_works_and_without_it_fails_with_a_hint() {
    let w = tls_world();
    let url = w.license();
    let (a, b) = (w.device("a"), w.device("b"));
    let mut cmd = w.edge_cmd(&a, &["activate", &url]);
    cmd.env("SSL_CERT_FILE", w.server.ca_path());
    let run = Run::of(cmd, &["activate", "(SSL_CERT_FILE set)"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", w.server.output());
    assert_eq!(w.status(&a)["status"], "active");

    let run = w.edge(&b, &["activate", &url]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("SSL_CERT_FILE") || run.stderr.contains("CA"),
        "the error hints at the CA: {run:?}"
    );
    assert!(!b.dir.join("privitty.lic").exists());
}

#[test]
fn cli_local_only_deactivate_keeps_the_server_seat() {
    let mut w = world();
    let url = w.license();
    let (a, b) = (w.device("a"), w.device("b"));
    w.activate(&a, &url);
    w.server.stop();
    let run = w.edge(&a, &["deactivate", "--local-only"]);
    assert_eq!(run.code, 0, "--local-only needs no server: {run:?}");
    let st = w.status(&a);
    assert_eq!(
        (st["status"].clone(), st["reason"].clone()),
        (json!("no_license"), json!("deactivated"))
    );
    assert!(!a.dir.join("privitty.lic").exists());
    assert!(a.dir.join("privitty.lic.revoked").is_file());

    w.server.restart();
    assert_eq!(
        w.server.activations()[0]["state"],
        "active",
        "the seat is still held on the server"
    );
    let run = w.edge(&b, &["activate", &url]);
    assert_eq!(run.code, 5, "{run:?}");
}

#[test]
fn cli_unusable_accounts_dir_is_a_local_file_error() {
    let w = world();
    let url = w.license();
    let file = w.root.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let dev = Device {
        dir: file.clone(),
        _dump: DumpDirOnFailure(w.root.path().to_path_buf()),
    };
    let run = w.edge(&dev, &["activate", &url]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("not-a-dir"),
        "the error names the path: {run:?}"
    );
    assert!(
        w.server.activations().is_empty(),
        "nothing reached the server"
    );
}

// ================================================================ integrity: no file in the volume revives a license

/// Whoever can write the data volume can delete, replace, roll back or edit any file in it; the
/// license signature is the only thing they cannot forge. These tests play that attacker against
/// the real CLI and the real server.
///
/// Asserts that `status` (text and `--json`) does not call the license usable, and returns the
/// `--json` report (`Null` when status failed with a local file error).
fn assert_not_usable(w: &World, dev: &Device, what: &str) -> Value {
    let (word, run) = status_text(w, dev);
    assert!(
        run.code != 0 && word != "active" && word != "grace_period",
        "{what}: status is usable: {run:?}"
    );
    let run = w.edge(dev, &["status", "--json"]);
    assert!(run.code == 3 || run.code == 4, "{what}: {run:?}");
    let st: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    assert!(
        st["status"] != "active" && st["status"] != "grace_period",
        "{what}: {st}"
    );
    st
}

/// A device activated on a fresh license, which the server then revokes and a `license sync`
/// learns; returns the device and its files as they were just before the revocation.
fn revoked_device(w: &World, name: &str) -> (Device, BTreeMap<String, (Vec<u8>, u32)>) {
    let url = w.license();
    let dev = w.device(name);
    w.activate(&dev, &url);
    assert_eq!(w.status(&dev)["status"], "active");
    let before = snapshot(&dev.dir);
    w.server.revoke(&url);
    let run = w.edge(&dev, &["sync"]);
    assert_eq!(run.code, 5, "the sync learns the revocation: {run:?}");
    let st = assert_not_usable(w, &dev, "after the sync");
    assert_eq!(st["reason"], "revoked", "{st}");
    (dev, before)
}

/// Issue 8: after `admin revoke` and a sync, moving activation.json out of the volume printed
/// `active` again.
#[test]
fn cli_a_revoked_license_stays_unusable_with_activation_json_moved_out() {
    let w = world();
    let (a, before) = revoked_device(&w, "a");
    let aside = w.root.path().join("activation.json.aside");
    std::fs::rename(a.dir.join("activation.json"), &aside).unwrap();
    assert_not_usable(&w, &a, "activation.json moved out");
    // The revocation moved the license out of its place, kept for inspection.
    assert!(!a.dir.join("privitty.lic").exists());
    let kept = std::fs::read(a.dir.join("privitty.lic.revoked")).expect("privitty.lic.revoked");
    assert_eq!(kept, before["privitty.lic"].0);
    // Even with the license moved back in place: a license that names an activation needs it.
    std::fs::copy(
        a.dir.join("privitty.lic.revoked"),
        a.dir.join("privitty.lic"),
    )
    .unwrap();
    let st = assert_not_usable(&w, &a, "activation.json moved out, license moved back");
    assert_eq!(st["reason"], "activation_missing", "{st}");
    // Nor does a sync bring anything back: there is no activation to sync.
    assert_eq!(w.edge(&a, &["sync"]).code, 7);
    assert_not_usable(&w, &a, "after a sync");
}

/// Issue 8: editing `state` (or `high_water`) in activation.json revived a revoked license.
#[test]
fn cli_editing_activation_json_does_not_revive_a_revoked_license() {
    let w = world();
    let (a, _) = revoked_device(&w, "a");
    let mut act = activation_json(&a);
    act["state"] = json!("active");
    let write = |v: &Value| {
        std::fs::write(a.dir.join("activation.json"), v.to_string()).expect("edit activation.json")
    };
    write(&act);
    assert_not_usable(&w, &a, "state edited back to active");
    act["high_water"] = json!(0);
    act["high_water_epoch"] = json!(0);
    act["last_sync_error"] = Value::Null;
    write(&act);
    assert_not_usable(&w, &a, "state and high_water edited");
    // The edited record makes the device sync again; the server still says revoked.
    let run = w.edge(&a, &["sync"]);
    assert_eq!(run.code, 5, "{run:?}");
    let st = assert_not_usable(&w, &a, "after the sync");
    assert_eq!(st["reason"], "revoked", "{st}");
}

/// Issue 8: a FIFO named activation.json blocked the sync inside open() while it held the license
/// lock (and `status` too). Every command must finish promptly with an error naming the file.
#[test]
fn cli_a_fifo_in_place_of_a_license_file_never_hangs_a_command() {
    use privitty_tests::support::Proc;
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let logs = w.root.path().join("logs");
    // (file replaced by a FIFO, command, expected exit code)
    let cases: [(&str, &[&str], i32); 6] = [
        ("activation.json", &["status"], 4),
        ("activation.json", &["status", "--json"], 4),
        ("activation.json", &["sync"], 4),
        ("activation.json", &["deactivate"], 4),
        ("device.uuid", &["status"], 4),
        (".privitty-license.lock", &["sync"], 4),
    ];
    let files = snapshot(&a.dir);
    for (n, (file, args, code)) in cases.into_iter().enumerate() {
        restore(&a.dir, &files);
        let path = a.dir.join(file);
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut proc = Proc::spawn(&format!("case-{n}"), w.edge_cmd(&a, args), &logs);
        let what = format!("`license {}` with {file} a FIFO", args.join(" "));
        let status = proc
            .wait_timeout(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{what}: still running after 15 s (blocked on the FIFO)"));
        assert_eq!(status.code(), Some(code), "{what}\n{}", proc.output());
        let stderr = proc.stderr();
        assert!(
            stderr.contains(file) && stderr.contains("FIFO"),
            "{what}: the error names the file and what it is: {stderr}"
        );
    }
    restore(&a.dir, &files);
    assert_eq!(w.status(&a)["status"], "active");
}

/// An older `privitty.lic` (taken before the revocation) copied back, alone, through a symlink, or
/// with activation.json moved out, never counts.
#[test]
fn cli_an_older_license_copied_back_after_a_revocation_is_not_usable() {
    let w = world();
    let (a, before) = revoked_device(&w, "a");
    let older = &before["privitty.lic"].0;
    std::fs::write(a.dir.join("privitty.lic"), older).unwrap();
    let st = assert_not_usable(&w, &a, "older privitty.lic copied back");
    assert_eq!(st["reason"], "revoked", "{st}");

    std::fs::remove_file(a.dir.join("privitty.lic")).unwrap();
    let elsewhere = w.root.path().join("older.lic");
    std::fs::write(&elsewhere, older).unwrap();
    std::os::unix::fs::symlink(&elsewhere, a.dir.join("privitty.lic")).unwrap();
    assert_not_usable(&w, &a, "privitty.lic a symlink to the older copy");

    std::fs::remove_file(a.dir.join("privitty.lic")).unwrap();
    std::fs::write(a.dir.join("privitty.lic"), older).unwrap();
    std::fs::remove_file(a.dir.join("activation.json")).unwrap();
    let st = assert_not_usable(&w, &a, "older privitty.lic back, activation.json removed");
    assert_eq!(st["reason"], "activation_missing", "{st}");

    // activation.json as a symlink to its own older copy (active) is not followed either.
    let older_act = w.root.path().join("older-activation.json");
    std::fs::write(&older_act, &before["activation.json"].0).unwrap();
    std::os::unix::fs::symlink(&older_act, a.dir.join("activation.json")).unwrap();
    assert_not_usable(&w, &a, "activation.json a symlink to its older copy");
    let run = w.edge(&a, &["status"]);
    assert!(
        run.stderr.contains("activation.json") && run.stderr.contains("symlink"),
        "{run:?}"
    );

    // After a deactivation the same holds.
    let url = w.license();
    let b = w.device("b");
    w.activate(&b, &url);
    let older = read(&b.dir, "privitty.lic");
    assert_eq!(w.edge(&b, &["deactivate"]).code, 0);
    std::fs::write(b.dir.join("privitty.lic"), older).unwrap();
    let st = assert_not_usable(&w, &b, "older privitty.lic copied back after deactivate");
    assert_eq!(st["reason"], "deactivated", "{st}");
}

/// The state a withdrawal can leave, killed anywhere: activation.json parses; once it records the
/// withdrawal, no license is in place (so no older copy of activation.json can revive it); and
/// status is `active` only while nothing was recorded yet.
fn assert_withdrawal_safe(w: &World, dev: &Device, what: &str) {
    let act = activation_json(dev);
    let state = act["state"].as_str().unwrap_or_default().to_string();
    let st = w.status(dev);
    if state == "active" {
        assert!(
            st["status"] == "active" || st["status"] == "no_license",
            "{what}: {st}"
        );
        if st["status"] == "active" {
            assert!(
                !dev.dir.join("privitty.lic.revoked").exists(),
                "{what}: a license moved aside, and another usable in place"
            );
        }
    } else {
        assert!(
            !dev.dir.join("privitty.lic").exists(),
            "{what}: activation.json says {state} next to a license"
        );
        assert_eq!(st["status"], "no_license", "{what}: {st}");
        assert_eq!(st["reason"], state.as_str(), "{what}: {st}");
    }
}

#[test]
fn cli_sigkill_during_a_revocation_or_deactivation_never_leaves_a_usable_license() {
    let w = world();
    // Revocation learnt by a sync.
    let revoked_url = w.license();
    let a = w.device("a");
    w.activate(&a, &revoked_url);
    let activated = snapshot(&a.dir);
    w.server.revoke(&revoked_url);
    // Deactivation by the operator (the server answers 204 again after a lost answer).
    let url = w.license();
    let b = w.device("b");
    w.activate(&b, &url);
    let b_activated = snapshot(&b.dir);

    for (dev, files, args, code) in [
        (&a, &activated, &["sync"][..], 5),
        (&b, &b_activated, &["deactivate"][..], 0),
    ] {
        // strace counts each syscall separately: the move aside is a `rename`, the atomic writes
        // `renameat`, so each gets its own round to be interrupted at every call.
        for syscalls in ["fsync,fdatasync", "rename", "renameat,renameat2"] {
            let mut kills = 0;
            for n in 1.. {
                assert!(n < 200, "{args:?} never completed under {syscalls}");
                restore(&dev.dir, files);
                let killed = run_killed_at_expecting(&w, dev, args, syscalls, n, code);
                let what = format!("`license {}` killed at {syscalls} #{n}", args.join(" "));
                assert_withdrawal_safe(&w, dev, &what);
                // The next run finishes the withdrawal (or finds it recorded: exit 7).
                let run = w.edge(dev, args);
                assert!(
                    run.code == code || run.code == 7,
                    "{what}, then run again: {run:?}"
                );
                assert_withdrawal_safe(&w, dev, &format!("{what}, then run again"));
                assert_ne!(activation_json(dev)["state"], "active", "{what}: {run:?}");
                if !killed {
                    break;
                }
                kills += 1;
            }
            eprintln!(
                "{args:?}: killed at each of its first {kills} {syscalls} calls, then completed"
            );
            assert!(kills >= 1, "{args:?} was never interrupted at {syscalls}");
        }
    }
}

// ================================================================ figures (not assertions)

/// Prints per-call figures next to a baseline: server calls against a 404 on the same listener (the
/// HTTP stack without work), CLI commands against `privitty-edge --version` (process start).
/// `cargo test -p privitty-tests --release --test system license_cli::bench -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: prints figures"]
fn bench_license_server_and_cli() {
    let w = world();
    let url = w.server.create_license(&LicenseSpec {
        seats: 100_000,
        ..LicenseSpec::default()
    });
    const N: usize = 200;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let per_call = |what: &str, elapsed: Duration, n: usize| {
        let ms = elapsed.as_secs_f64() * 1000.0 / n as f64;
        eprintln!("{what:<48} {ms:>8.2} ms/call {:>8.0} calls/s", 1000.0 / ms);
    };
    let devices: Vec<(String, String)> = rt.block_on(async {
        let start = std::time::Instant::now();
        for _ in 0..N {
            let r = client.get(format!("{}/nothing", w.server.base_url())).send().await.unwrap();
            assert_eq!(r.status(), 404);
        }
        per_call("baseline: 404 on the same listener", start.elapsed(), N);
        let start = std::time::Instant::now();
        let mut devices = Vec::new();
        for _ in 0..N {
            let dev = new_uuid();
            let r = client
                .put(format!("{url}/devices/{dev}"))
                .json(&json!({"nonce": "n"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            devices.push((dev, v["device_secret"].as_str().unwrap().to_string()));
        }
        per_call(&format!("activate, new seat (state of {N} seats)"), start.elapsed(), N);
        let start = std::time::Instant::now();
        for (i, (dev, secret)) in devices.iter().enumerate() {
            let body = json!({"seq": 1, "usage": [{"report_id": format!("r{i}"), "counters": {"files": 1}}]});
            let r = client
                .post(format!("{url}/devices/{dev}/sync"))
                .bearer_auth(secret)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        per_call("sync with one usage report", start.elapsed(), N);
        devices
    });
    drop(devices);

    let a = w.device("a");
    const RUNS: usize = 20;
    let time_runs = |what: &str, args: &[&str], expect: i32| {
        let start = std::time::Instant::now();
        for _ in 0..RUNS {
            let run = w.edge(&a, args);
            assert_eq!(run.code, expect, "{run:?}");
        }
        per_call(what, start.elapsed(), RUNS);
    };
    let start = std::time::Instant::now();
    for _ in 0..RUNS {
        let out = Command::new(bin("privitty-edge"))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    per_call("baseline: privitty-edge --version", start.elapsed(), RUNS);
    time_runs("privitty-edge license status (no license)", &["status"], 3);
    let url1 = w.license();
    time_runs(
        "privitty-edge license activate (same device)",
        &["activate", &url1],
        0,
    );
    time_runs("privitty-edge license status", &["status"], 0);
    time_runs("privitty-edge license sync", &["sync"], 0);
}

// ================================================================ review findings

/// The data volume belongs to the service user, so whoever runs as that user can plant a symlink as
/// the lock file. A root `docker exec … license sync` must neither follow it nor hand the target
/// to the volume's owner (the lock file is chowned to the directory owner when root creates it).
#[test]
fn cli_planted_lock_symlink_is_refused_and_its_target_untouched() {
    use std::os::unix::fs::MetadataExt as _;
    let w = world();
    let url = w.license();
    let a = w.device("a");
    w.activate(&a, &url);
    let victim = w.root.path().join("root-only.conf");
    std::fs::write(&victim, "owned by root\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let lock = a.dir.join(".privitty-license.lock");
    let _ = std::fs::remove_file(&lock);
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    if std::fs::metadata(&victim).unwrap().uid() == 0 {
        std::os::unix::fs::chown(&a.dir, Some(1000), Some(1000)).unwrap();
    }
    let before_owner = std::fs::metadata(&victim)
        .map(|m| (m.uid(), m.gid(), m.mode()))
        .unwrap();
    let files = license_files(&a.dir);

    for args in [&["sync"][..], &["deactivate"][..], &["activate", &url][..]] {
        let run = w.edge(&a, args);
        assert_eq!(
            run.code, 4,
            "a symlinked lock file is a local file error: {run:?}"
        );
        assert!(
            run.stderr.contains(".privitty-license.lock") && run.stderr.contains("symlink"),
            "the error names the file and the problem: {run:?}"
        );
        let after = std::fs::metadata(&victim)
            .map(|m| (m.uid(), m.gid(), m.mode()))
            .unwrap();
        assert_eq!(
            after, before_owner,
            "`{}` changed the link target's owner or mode",
            args[0]
        );
        assert_eq!(read(w.root.path(), "root-only.conf"), "owned by root\n");
        assert_eq!(
            license_files(&a.dir),
            files,
            "`{}` changed the license files",
            args[0]
        );
    }
    // status only reads and never takes the lock
    assert_eq!(w.status(&a)["status"], "active");

    // once the link is gone, the lock file is recreated and the commands work again
    std::fs::remove_file(&lock).unwrap();
    let run = w.edge(&a, &["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(std::fs::symlink_metadata(&lock).unwrap().is_file());
}
