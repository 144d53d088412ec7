//! System tests of the license protocol: the reference license server spoken to directly over HTTP
//! (`server_*`), and the real `privitty-edge license …` CLI against the real server (`cli_*`).
//!
//! Everything runs as real processes over loopback in temp dirs; on failure the server's output and
//! the device directory are printed. Waiting is done with `eventually`, never with sleeps.
//!
//! Areas: [`server`] (the protocol, spoken directly), [`cli`] (the commands against the server),
//! [`integrity`] (no file in the volume and no SIGKILL revives a license or tears the directory),
//! [`bench`] (figures, ignored). This module holds the set-up they share.

mod bench;
mod cli;
mod integrity;
mod server;

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

// ---------------------------------------------------------------- used by cli and integrity

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
