//! The image under podman (rootful): the documented `docker run`, `docker exec … license` commands,
//! restart, SIGHUP, stop, zombie reaping, the health check and file-drop provisioning, against the
//! reference license server over HTTPS with its own CA.
//!
//! Runs only when `PRIVITTY_IMAGE` names a built image (`tests/container/build-image.sh`), with the
//! podman configuration of `tests/container/podman-env.sh` exported by the caller. Owns the containers,
//! volumes and license servers it starts (unique names, removed by a drop guard even on failure).
//! Must not: touch containers, volumes or images it did not create, or reach any address other than
//! loopback and the podman bridge's gateway (the host side of our own bridge).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use privitty_tests::license_server::{LicenseServer, LicenseSpec};
use privitty_tests::support::{describe_dir, eventually, target_dir};
use serde_json::{Value, json};

const ACCOUNTS: &str = "/var/lib/privitty";
/// Where the reference server's CA and public key are mounted (read-only) in every container.
const CA_IN_CONTAINER: &str = "/etc/privitty/test-ca.pem";
const KEY_IN_CONTAINER: &str = "/etc/privitty/license-keys/reference-server.pem";
const TESTPROC_IN_CONTAINER: &str = "/usr/local/bin/privitty-testproc";
/// First start includes the engine's first run and (with a URL) activation.
const START_DEADLINE: Duration = Duration::from_secs(90);
/// The contract for a license that arrives while running (activate, file drop).
const PICKUP_DEADLINE: Duration = Duration::from_secs(10);
/// A generation swap after SIGHUP, observed from outside.
const SWAP_DEADLINE: Duration = Duration::from_secs(30);
const LICENSE_REQUIRED: i64 = -32001;
/// privitty-init's log lines the steps wait for (its messages; fields around them may vary).
const LOG_ACTIVATION_SKIPPED: &str = "start-up activation skipped";
const LOG_GENERATION_READY: &str = "generation ready";
const LOG_LICENSE_INVALID: &str = "the license file is not valid";

/// The image under test. These tests are `#[ignore]`d in the workspace run (they need a built image
/// and root); tests/container/test.sh runs them with `--ignored`, and then a missing image fails.
fn image() -> Option<String> {
    let image = std::env::var("PRIVITTY_IMAGE")
        .ok()
        .filter(|s| !s.is_empty());
    assert!(
        image.is_some(),
        "PRIVITTY_IMAGE is unset: run these through tests/container/test.sh (it builds the image)"
    );
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        eprintln!(
            "note: CONTAINERS_CONF is unset; on machines where plain podman fails, \
             `source tests/container/podman-env.sh` first"
        );
    }
    image
}

/// The static `privitty-testproc` staged by build-image.sh (bind-mounted into test containers only:
/// the image has no shell and no test tools).
fn testproc() -> PathBuf {
    if let Some(p) = std::env::var_os("PRIVITTY_TESTPROC_STATIC") {
        let path = PathBuf::from(p);
        assert!(
            path.is_absolute() && path.is_file(),
            "PRIVITTY_TESTPROC_STATIC={} must be the absolute path of a static privitty-testproc",
            path.display()
        );
        return path;
    }
    let path = target_dir()
        .parent()
        .expect("target dir")
        .join("container-test/privitty-testproc");
    assert!(
        path.is_file(),
        "{} is missing: tests/container/build-image.sh builds it (static) next to the image, \
         or set PRIVITTY_TESTPROC_STATIC",
        path.display()
    );
    path
}

/// A name no other run uses: re-runs and parallel tests never meet each other's leftovers.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("pe-test-{prefix}-{secs}-{}-{n}", std::process::id())
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running podman {}: {e} (is podman installed?)",
                args.join(" ")
            )
        })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs podman and returns its stdout; panics with its output when it fails.
fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "`podman {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The containers and volumes one test created; on drop prints what a failure needs (every
/// container's `podman logs` and processes, every volume's files) and removes them all.
#[derive(Debug)]
struct Podman {
    image: String,
    containers: Vec<String>,
    volumes: Vec<String>,
    /// Host files mounted into every device container (CA, public key, testproc).
    mounts: Vec<String>,
}

impl Podman {
    fn new(image: String) -> Podman {
        Podman {
            image,
            containers: Vec::new(),
            volumes: Vec::new(),
            mounts: Vec::new(),
        }
    }

    fn volume(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        podman_ok(&["volume", "create", &name]);
        self.volumes.push(name.clone());
        name
    }

    fn mountpoint(volume: &str) -> PathBuf {
        PathBuf::from(
            podman_ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume]).trim(),
        )
    }

    /// A container that only keeps the podman bridge up, so its gateway address exists on the host
    /// before the license server binds it (the bridge comes and goes with its containers).
    fn sentinel(&mut self, testproc: &Path) -> String {
        let name = unique("bridge");
        let mount = format!("{}:{TESTPROC_IN_CONTAINER}:ro", testproc.display());
        self.containers.push(name.clone());
        podman_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "-v",
            &mount,
            "--entrypoint",
            TESTPROC_IN_CONTAINER,
            &self.image,
            "record-signals",
            "/dev/null",
            "--exit-on",
            "SIGTERM",
        ]);
        name
    }

    /// `podman run -d` of the image with the test mounts, `env` (`KEY=VALUE`), the volume on the
    /// accounts directory and port 7200 published on loopback (`host_port` 0: podman picks one).
    /// Returns the published port.
    fn run(&mut self, name: &str, volume: &str, host_port: u16, env: &[String]) -> u16 {
        self.run_with(name, volume, host_port, env, &[])
    }

    /// [`Podman::run`] with extra `podman run` options (e.g. the hardened security settings).
    fn run_with(
        &mut self,
        name: &str,
        volume: &str,
        host_port: u16,
        env: &[String],
        options: &[&str],
    ) -> u16 {
        let publish = if host_port == 0 {
            "127.0.0.1::7200".to_string()
        } else {
            format!("127.0.0.1:{host_port}:7200")
        };
        let vol = format!("{volume}:{ACCOUNTS}");
        let mut args: Vec<String> = ["run", "-d", "--name", name, "-p", &publish, "-v", &vol]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for m in &self.mounts {
            args.extend(["-v".to_string(), m.clone()]);
        }
        for e in env {
            args.extend(["-e".to_string(), e.clone()]);
        }
        args.extend(options.iter().map(|o| o.to_string()));
        args.push(self.image.clone());
        self.containers.push(name.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        podman_ok(&args);
        pin_bridge_address();
        published_port(name)
    }
}

/// Keeps the podman bridge's MAC address while containers come and go. A Linux bridge without an
/// address of its own takes its lowest port's, so removing a container can change it, and the
/// containers still running keep the old one for the gateway in their ARP cache: their
/// connections to the host (the license server there) then fail for 10 s and more (seen in about
/// one run of four, with this image and the one before it). Setting the bridge's address to the
/// one it has makes it the bridge's own. Done after every start: the bridge is created anew when
/// a container starts after the last one was removed.
fn pin_bridge_address() {
    let bridge = podman_ok(&[
        "network",
        "inspect",
        "podman",
        "--format",
        "{{.NetworkInterface}}",
    ]);
    let bridge = bridge.trim();
    let sys = Path::new("/sys/class/net").join(bridge);
    // 3 (NET_ADDR_SET): pinned already.
    if std::fs::read_to_string(sys.join("addr_assign_type")).is_ok_and(|t| t.trim() == "3") {
        return;
    }
    let mac = std::fs::read_to_string(sys.join("address"))
        .unwrap_or_else(|e| panic!("the podman bridge {bridge:?} has no address to read: {e}"));
    let out = std::process::Command::new("ip")
        .args(["link", "set", "dev", bridge, "address", mac.trim()])
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "cannot pin the address of the podman bridge {bridge}: {}",
        text(&out.stderr)
    );
}

impl Drop for Podman {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                let logs = podman(&["logs", c]);
                eprintln!(
                    "----- podman logs {c} -----\n{}{}",
                    text(&logs.stdout),
                    text(&logs.stderr)
                );
                let top = podman(&["top", c, "pid", "ppid", "state", "comm"]);
                eprintln!("----- podman top {c} -----\n{}", text(&top.stdout));
            }
            for v in &self.volumes {
                eprintln!("{}", describe_dir(&Podman::mountpoint(v)));
            }
        }
        for c in &self.containers {
            // -v: also the anonymous volume the image's VOLUME gives a container without -v.
            let _ = podman(&["rm", "-f", "-v", "-t", "0", c]);
        }
        for v in &self.volumes {
            let _ = podman(&["volume", "rm", "-f", v]);
        }
    }
}

fn published_port(container: &str) -> u16 {
    let out = podman_ok(&["port", container, "7200/tcp"]);
    out.lines()
        .find_map(|l| l.trim().rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no published port for {container} in {out:?}"))
}

/// 7200 as documented when it is free on loopback, else a port podman picks (0).
fn documented_port_or_any() -> u16 {
    match TcpListener::bind("127.0.0.1:7200") {
        Ok(_) => 7200,
        Err(_) => {
            eprintln!("note: 127.0.0.1:7200 is taken on this host; publishing on another port");
            0
        }
    }
}

fn gateway() -> String {
    let out = podman_ok(&[
        "network",
        "inspect",
        "podman",
        "--format",
        "{{range .Subnets}}{{.Gateway}} {{end}}",
    ]);
    out.split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap_or_else(|| panic!("no IPv4 gateway on the podman network: {out:?}"))
        .to_string()
}

/// The reference license server on the podman bridge's gateway, and copies of its CA and public
/// key (mode 0644) to mount read-only into the containers.
fn license_server(pod: &mut Podman, dir: &Path) -> LicenseServer {
    let gw = gateway();
    let server = LicenseServer::start_tls_on(&dir.join("license-server"), &gw, &[&gw], None);
    let ca = dir.join("ca.pem");
    let key = dir.join("license-key.pem");
    std::fs::copy(server.ca_path(), &ca).expect("copy ca.pem");
    std::fs::copy(server.pubkey_path(), &key).expect("copy license-pubkey.pem");
    for f in [&ca, &key] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    pod.mounts
        .push(format!("{}:{CA_IN_CONTAINER}:ro", ca.display()));
    pod.mounts
        .push(format!("{}:{KEY_IN_CONTAINER}:ro", key.display()));
    server
}

fn base_env(profile: &str) -> Vec<String> {
    vec![
        format!("PRIVITTY_PROFILE={profile}"),
        format!("SSL_CERT_FILE={CA_IN_CONTAINER}"),
    ]
}

// ----------------------------------------------------------------------------- HTTP over loopback

/// The API token of the container published on each host port (the image listens on 0.0.0.0, so
/// the token is required), as `docker exec … privitty-edge api-token` printed it.
static TOKENS: LazyLock<Mutex<HashMap<u16, String>>> = LazyLock::new(Mutex::default);

/// `podman exec <c> privitty-edge api-token`: the documented way to get the token; every later
/// request to `port` carries it.
fn authorize(port: u16, container: &str) -> String {
    let out = podman(&[
        "exec",
        container,
        "privitty-edge",
        "--accounts",
        ACCOUNTS,
        "api-token",
    ]);
    assert!(out.status.success(), "api-token: {}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(token.len() >= 32, "a generated token: {token:?}");
    TOKENS.lock().unwrap().insert(port, token.clone());
    token
}

/// One HTTP/1.1 request (`Connection: close`) to 127.0.0.1:`port` with the port's token; returns
/// status and body.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let token = TOKENS.lock().unwrap().get(&port).cloned();
    http_as(port, token.as_deref(), method, path, body)
}

/// [`http`] with the given token (or none).
fn http_as(
    port: u16,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let body = body.unwrap_or("");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = privitty_tests::http::exchange_raw(addr, req.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((r.status, r.text()))
}

fn health_ok(port: u16) -> bool {
    matches!(http(port, "GET", "/health", None), Ok((200, body)) if body.contains("\"ok\""))
}

fn wait_health(port: u16, what: &str) -> Duration {
    let start = Instant::now();
    eventually(START_DEADLINE, what, || health_ok(port).then_some(()));
    start.elapsed()
}

/// A JSON-RPC call; returns the HTTP status and the parsed body (`null` for 204).
fn rpc(port: u16, method: &str, params: Value) -> std::io::Result<(u16, Value)> {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let (status, body) = http(port, "POST", "/rpc", Some(&req))?;
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body)
            .map_err(|e| std::io::Error::other(format!("/rpc answered {body:?}: {e}")))?
    };
    Ok((status, value))
}

/// The gated call of the contract; returns the whole JSON-RPC answer.
fn gated_call(port: u16) -> Value {
    let params = json!([
        1,
        10,
        10,
        format!("{ACCOUNTS}/no-such-file.txt"),
        true,
        false,
        60
    ]);
    let (status, body) =
        rpc(port, "privitty_send_file", params).expect("calling privitty_send_file");
    assert_eq!(status, 200, "privitty_send_file: HTTP {status} {body}");
    body
}

fn error_code(answer: &Value) -> Option<i64> {
    answer.pointer("/error/code").and_then(Value::as_i64)
}

fn assert_gated_refused(port: u16, status_word: &str) {
    let answer = gated_call(port);
    assert_eq!(
        error_code(&answer),
        Some(LICENSE_REQUIRED),
        "a gated call without a license must get -32001: {answer}"
    );
    let message = answer
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(
        message.starts_with(&format!(
            "Privitty license required: status is '{status_word}'."
        )),
        "documented -32001 message: {answer}"
    );
}

/// Polls the gated call until it is no longer refused for the license; returns that answer (an
/// error of the call itself is fine: the test's arguments name no real chat or file).
fn wait_gated_allowed(port: u16, what: &str) -> Value {
    eventually(PICKUP_DEADLINE, what, || {
        let answer = gated_call(port);
        (error_code(&answer) != Some(LICENSE_REQUIRED)).then_some(answer)
    })
}

// ----------------------------------------------------------------------------- inside the container

/// `podman exec <c> privitty-edge --accounts /var/lib/privitty license <args>`.
fn license_cmd(container: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "exec",
        container,
        "privitty-edge",
        "--accounts",
        ACCOUNTS,
        "license",
    ];
    all.extend_from_slice(args);
    podman(&all)
}

#[derive(Debug)]
struct Status {
    word: String,
    code: Option<i32>,
    text: String,
}

impl Status {
    fn field(&self, key: &str) -> String {
        let prefix = format!("{key}: ");
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no `{key}` in license status:\n{}", self.text))
            .trim()
            .to_string()
    }
}

fn license_status(container: &str) -> Status {
    let out = license_cmd(container, &["status"]);
    let text = format!("{}{}", text(&out.stdout), text(&out.stderr));
    Status {
        word: text.lines().next().unwrap_or("").trim().to_string(),
        code: out.status.code(),
        text,
    }
}

fn logs(container: &str) -> String {
    let out = podman(&["logs", container]);
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// `podman top` rows: (pid, ppid, state, comm).
fn processes(container: &str) -> Vec<(u32, u32, String, String)> {
    podman_ok(&["top", container, "pid", "ppid", "state", "comm"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
                f.next()?.to_string(),
                f.collect::<Vec<_>>().join(" "),
            ))
        })
        .collect()
}

/// The pids of privitty-edged (one per live generation).
fn edged_pids(container: &str) -> Vec<u32> {
    processes(container)
        .into_iter()
        .filter(|(_, _, _, comm)| comm == "privitty-edged")
        .map(|(pid, ..)| pid)
        .collect()
}

/// The serving generation's pid and the spare's, sorted, once both are there and nothing else is
/// (a swap's old generation gone).
fn settled_edged_pids(container: &str) -> Vec<u32> {
    eventually(
        Duration::from_secs(10),
        "one serving privitty-edged and its spare",
        || {
            let mut pids = edged_pids(container);
            pids.sort_unstable();
            (pids.len() == 2).then_some(pids)
        },
    )
}

/// The pid of the generation that became ready last (privitty-init's `generation ready … pid=N`).
fn serving_pid(container: &str) -> u32 {
    let logs = logs(container);
    let line = logs
        .lines()
        .rfind(|l| l.contains(LOG_GENERATION_READY))
        .unwrap_or_else(|| panic!("no `{LOG_GENERATION_READY}` line:\n{logs}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pid=")?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

fn started_at(container: &str) -> String {
    podman_ok(&["inspect", "--format", "{{.State.StartedAt}}", container])
        .trim()
        .to_string()
}

fn activations_of(server: &LicenseServer, device: &str) -> Vec<Value> {
    server
        .activations()
        .into_iter()
        .filter(|a| a["device_uuid"] == device)
        .collect()
}

/// Writes `content` to a 0644 host file and `podman cp`s it to the container's privitty.lic.
fn drop_license(container: &str, dir: &Path, name: &str, content: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let file = dir.join(name);
    std::fs::write(&file, format!("{}\n", content.trim())).expect("write license file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let dest = format!("{container}:{ACCOUNTS}/privitty.lic");
    podman_ok(&["cp", &file.display().to_string(), &dest]);
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

// ----------------------------------------------------------------------------- the tests

/// The security model in the image: the token from `docker exec … api-token`, a client without it
/// refused, the default-deny of the method policy, paths confined to the files directory, and the
/// README cookbook with the token.
fn security_model(port: u16, container: &str, volume: &str) {
    let info = json!({"jsonrpc":"2.0","id":1,"method":"get_info","params":[1]}).to_string();
    let (status, body) = http_as(port, None, "POST", "/rpc", Some(&info)).expect("/rpc");
    assert_eq!(status, 401, "no token on 0.0.0.0: {body}");
    let (status, _) = http_as(port, None, "GET", "/events", None).expect("/events");
    assert_eq!(status, 401, "/events without a token");
    let (status, _) = http_as(
        port,
        Some("not-the-token-0123456789"),
        "POST",
        "/rpc",
        Some(&info),
    )
    .expect("/rpc");
    assert_eq!(status, 401, "a wrong token");
    let token = authorize(port, container);
    assert!(
        !logs(container).contains(&token),
        "the API token is never logged"
    );
    let (status, answer) = rpc(port, "get_info", json!([1])).expect("get_info");
    assert_eq!(status, 200, "{answer}");
    assert!(answer["result"].is_object(), "{answer}");
    // Default-deny: a URL fetch by the engine, a key export, the event queue.
    for (method, params) in [
        ("get_http_response", json!([1, "http://169.254.169.254/"])),
        ("export_self_keys", json!([1, ACCOUNTS, null])),
        ("get_next_event", json!([])),
    ] {
        let (_, answer) = rpc(port, method, params).expect(method);
        assert_eq!(error_code(&answer), Some(-32003), "{method}: {answer}");
    }
    // Paths: PID 1's environment and the license files are out of reach; the files directory works.
    let contact = rpc(port, "create_contact", json!([1, "bob@example.org", "Bob"]))
        .unwrap()
        .1["result"]
        .clone();
    let chat = rpc(port, "create_chat_by_contact_id", json!([1, contact]))
        .unwrap()
        .1["result"]
        .clone();
    for path in [
        "/proc/1/environ",
        "/var/lib/privitty/activation.json",
        "../license_server.txt",
    ] {
        let (_, answer) = rpc(
            port,
            "send_msg",
            json!([1, chat, {"text": "x", "file": path}]),
        )
        .unwrap();
        assert_eq!(error_code(&answer), Some(-32602), "{path}: {answer}");
    }
    let files = Podman::mountpoint(volume).join("files");
    std::fs::write(files.join("report.csv"), "report\n").expect("write into the files directory");
    std::os::unix::fs::chown(files.join("report.csv"), Some(1000), Some(1000)).unwrap();
    let (_, answer) = rpc(
        port,
        "privitty_send_file",
        json!([1, chat, contact, "report.csv", true, false, 60]),
    )
    .unwrap();
    assert_eq!(
        answer
            .pointer("/result/encrypted_path")
            .and_then(Value::as_str),
        Some("/var/lib/privitty/files/report.csv.prv"),
        "{answer}"
    );
    let (_, answer) = rpc(
        port,
        "send_msg",
        json!([1, chat, {"text": "protected", "file": "report.csv.prv", "viewtype": "File"}]),
    )
    .unwrap();
    assert_ne!(error_code(&answer), Some(-32602), "{answer}");
    eprintln!("step ok: token from exec api-token, 401 without it, default-deny, files directory");
}

/// The documented `docker run` with a delivery URL, then everything a running device goes through:
/// restart, SIGHUP under load, exec orphans, health check, sync, stop, a new container on the same
/// volume, deactivate.
#[test]
#[ignore = "needs the image and rootful podman: run tests/container/test.sh"]
fn licensed_container_lifecycle() {
    let Some(image) = image() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let testproc = testproc();
    let mut pod = Podman::new(image);
    pod.mounts
        .push(format!("{}:{TESTPROC_IN_CONTAINER}:ro", testproc.display()));
    pod.sentinel(&testproc);
    let baseline = podman_run_baseline(&pod.image, &testproc);
    let server = license_server(&mut pod, tmp.path());
    let url = server.create_license(&LicenseSpec {
        seats: 2,
        ..LicenseSpec::default()
    });
    let volume = pod.volume("data");
    let mut env = base_env("gateway01");
    env.push(format!("PRIVITTY_LICENSE_URL={url}"));

    // run -d with the URL: activation before serving, then /health.
    let name = unique("edged");
    let start = Instant::now();
    let port = pod.run(&name, &volume, documented_port_or_any(), &env);
    wait_health(
        port,
        "/health ok after `podman run -d` with PRIVITTY_LICENSE_URL",
    );
    let first_start = start.elapsed();
    security_model(port, &name, &volume);
    let status = license_status(&name);
    assert_eq!(
        status.word, "active",
        "license status after start-up activation:\n{}",
        status.text
    );
    assert_eq!(
        status.code,
        Some(0),
        "exit code of `license status` when active"
    );
    let device = status.field("device uuid");
    let seats = activations_of(&server, &device);
    assert_eq!(seats.len(), 1, "one seat for this device: {seats:?}");
    let activation_id = seats[0]["activation_id"].clone();
    assert_eq!(server.activations().len(), 1, "one seat in all");
    assert!(
        !logs(&name).contains(LOG_ACTIVATION_SKIPPED),
        "first boot must activate, not skip"
    );
    let token = url
        .rsplit('/')
        .next()
        .expect("delivery URL ends with the TOKEN");
    assert!(
        !logs(&name).contains(token),
        "the TOKEN must never be logged"
    );
    eprintln!("step ok: run -d with the URL → /health ok, status active (device {device})");

    // restart: activation skipped (logged), same device, no new seat.
    let start = Instant::now();
    podman_ok(&["restart", &name]);
    wait_health(port, "/health ok after `podman restart`");
    let restart_to_health = start.elapsed();
    assert_eq!(
        count(&logs(&name), LOG_ACTIVATION_SKIPPED),
        1,
        "restart logs that start-up activation was skipped"
    );
    let status = license_status(&name);
    assert_eq!(status.word, "active", "after restart:\n{}", status.text);
    assert_eq!(
        status.field("device uuid"),
        device,
        "restart keeps device.uuid"
    );
    let seats = server.activations();
    assert_eq!(seats.len(), 1, "restart takes no new seat: {seats:?}");
    assert_eq!(seats[0]["activation_id"], activation_id, "same activation");
    eprintln!("step ok: restart → activation skipped, same device.uuid, no new seat");

    // SIGHUP: a new generation, and no failed request while it swaps. Beside the serving
    // generation there is the spare (PRIVITTY_SPARE is on by default), which the swap wakes.
    let before = serving_pid(&name);
    let spare = eventually(
        Duration::from_secs(10),
        "the spare beside the serving privitty-edged",
        || {
            let pids = edged_pids(&name);
            (pids.len() == 2 && pids.contains(&before))
                .then(|| pids.into_iter().find(|p| *p != before))
                .flatten()
        },
    );
    let ready_before = count(&logs(&name), LOG_GENERATION_READY);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, served) = (stop.clone(), served.clone());
        std::thread::spawn(move || request_loop(port, &stop, &served))
    };
    // One keep-alive connection that never reconnects: handed over to the new generation.
    let keep_alive = {
        let stop = stop.clone();
        std::thread::spawn(move || keep_alive_loop(port, &stop))
    };
    let at_least = |n: usize, what: &str| {
        eventually(Duration::from_secs(10), what, || {
            (served.load(Ordering::Relaxed) >= n).then_some(())
        })
    };
    at_least(50, "the request loop to be under way before SIGHUP");
    podman_ok(&["kill", "-s", "HUP", &name]);
    let swap_start = Instant::now();
    let after = eventually(
        SWAP_DEADLINE,
        "a new privitty-edged generation after SIGHUP, the old one gone",
        || {
            (count(&logs(&name), LOG_GENERATION_READY) > ready_before
                && !edged_pids(&name).contains(&before))
            .then(|| serving_pid(&name))
        },
    );
    assert_eq!(
        after,
        spare,
        "the swap woke the spare: {:?}",
        processes(&name)
    );
    let swap_seen = swap_start.elapsed();
    // Keep the load going past the swap, so requests hit the new generation too.
    at_least(
        served.load(Ordering::Relaxed) + 200,
        "requests served by the new generation",
    );
    stop.store(true, Ordering::Relaxed);
    let load = load.join().expect("request loop");
    let kept = keep_alive.join().expect("keep-alive loop");
    assert!(
        kept.as_ref().is_ok_and(|n| *n > 0),
        "the keep-alive connection across the SIGHUP swap: {kept:?}"
    );
    assert!(load.ok > 0, "the request loop made requests");
    assert!(
        load.failures.is_empty(),
        "requests failed across the SIGHUP swap ({} ok): {:?}",
        load.ok,
        load.failures
    );
    eprintln!(
        "step ok: kill -s HUP → the spare (pid {after}) serves (was {before}), {} requests, none failed",
        load.ok
    );

    // Orphans of `exec` are reaped by PID 1.
    let out = podman_ok(&["exec", &name, TESTPROC_IN_CONTAINER, "orphan-parent", "20"]);
    assert!(
        !out.trim().is_empty(),
        "orphan-parent reports when it let its children go"
    );
    eventually(
        Duration::from_secs(10),
        "no zombie and no orphan left in the container",
        || {
            let ps = processes(&name);
            (!ps.iter().any(|(_, _, state, comm)| {
                state.starts_with('Z') || comm.starts_with("privitty-testp")
            }))
            .then_some(())
        },
    );
    eprintln!("step ok: 20 processes orphaned by exec were reaped");

    // HEALTHCHECK, without curl in the image.
    let out = podman(&["healthcheck", "run", &name]);
    assert!(
        out.status.success(),
        "`podman healthcheck run` → {}: {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    eprintln!("step ok: healthcheck run → healthy");

    // license sync.
    let out = license_cmd(&name, &["sync"]);
    assert!(
        out.status.success() && text(&out.stdout).starts_with("synced"),
        "license sync: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let status = license_status(&name);
    assert_eq!(status.word, "active", "after sync:\n{}", status.text);
    assert_ne!(status.field("last sync ok"), "-", "status shows the sync");
    let seats = server.activations();
    assert!(
        !seats[0]["last_sync_at"].is_null(),
        "server saw the sync: {seats:?}"
    );
    eprintln!("step ok: exec license sync → synced, status shows it");

    // stop: SIGTERM handled, exit 0, no SIGKILL.
    let start = Instant::now();
    podman_ok(&["stop", "-t", "10", &name]);
    let stop_time = start.elapsed();
    let code = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(
        code.trim(),
        "0",
        "exit code after `podman stop` (137 = SIGKILLed)"
    );
    eprintln!("step ok: stop → exit 0");

    // rm + a new container on the same volume: same device, no new seat.
    podman_ok(&["rm", &name]);
    let name2 = unique("edged");
    let start = Instant::now();
    let port2 = pod.run(&name2, &volume, port, &env);
    wait_health(port2, "/health ok of a new container on the same volume");
    authorize(port2, &name2);
    let second_start = start.elapsed();
    assert_eq!(
        count(&logs(&name2), LOG_ACTIVATION_SKIPPED),
        1,
        "a new container on an activated volume skips activation"
    );
    let status = license_status(&name2);
    assert_eq!(status.word, "active", "new container:\n{}", status.text);
    assert_eq!(
        status.field("device uuid"),
        device,
        "the volume keeps device.uuid"
    );
    let seats = server.activations();
    assert_eq!(
        seats.len(),
        1,
        "a new container takes no new seat: {seats:?}"
    );
    assert_eq!(seats[0]["activation_id"], activation_id, "same activation");
    eprintln!("step ok: rm + run on the same volume → same device.uuid, no new seat");

    // license deactivate: the seat is released, status says so.
    let out = license_cmd(&name2, &["deactivate"]);
    assert!(
        out.status.success(),
        "license deactivate: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let status = license_status(&name2);
    assert_eq!(
        status.word, "no_license",
        "after deactivate:\n{}",
        status.text
    );
    assert_eq!(status.field("reason"), "deactivated");
    assert_eq!(status.code, Some(3), "status exit code when not usable");
    let seats = activations_of(&server, &device);
    assert_eq!(
        seats[0]["state"], "deactivated",
        "seat released on the server: {seats:?}"
    );
    // A deactivated device is unlicensed (license-protocol.md): the running service follows.
    eventually(
        PICKUP_DEADLINE,
        "gated calls to be refused after deactivate",
        || (error_code(&gated_call(port2)) == Some(LICENSE_REQUIRED)).then_some(()),
    );
    assert_gated_refused(port2, "no_license");
    eprintln!(
        "step ok: exec license deactivate → seat released, status no_license/deactivated, \
         gated calls get -32001"
    );

    println!(
        "figures: start→/health ok {:.2} s (first boot, with activation), {:.2} s (restart), \
         {:.2} s (new container, activated volume) — baseline: `podman run` of a process that \
         exits at once {:.2} s; SIGHUP → new generation seen after {:.2} s; {} requests across \
         the swap (max {:.1} ms, p50 {:.1} ms); podman stop {:.2} s (timeout 10 s)",
        first_start.as_secs_f64(),
        restart_to_health.as_secs_f64(),
        second_start.as_secs_f64(),
        baseline.as_secs_f64(),
        swap_seen.as_secs_f64(),
        load.ok,
        load.max_ms,
        load.p50_ms,
        stop_time.as_secs_f64()
    );
    drop(pod);
}

/// What podman itself costs: `podman run --rm` of the image with a process that exits at once.
fn podman_run_baseline(image: &str, testproc: &Path) -> Duration {
    let mount = format!("{}:{TESTPROC_IN_CONTAINER}:ro", testproc.display());
    let start = Instant::now();
    podman_ok(&[
        "run",
        "--rm",
        "-v",
        &mount,
        "--entrypoint",
        TESTPROC_IN_CONTAINER,
        image,
        "exit",
        "0",
    ]);
    start.elapsed()
}

#[derive(Debug, Default)]
struct Load {
    ok: usize,
    failures: Vec<String>,
    max_ms: f64,
    p50_ms: f64,
}

/// /health and an engine-backed JSON-RPC call, alternately, until `stop`; every failure recorded,
/// `served` counts the answered ones as they happen.
/// `/health` over one keep-alive connection until `stop`, never reconnecting: the number of
/// answers, or the first failure.
fn keep_alive_loop(port: u16, stop: &AtomicBool) -> Result<usize, String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        w.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .map_err(|e| format!("after {n} answers, write: {e}"))?;
        let mut line = String::new();
        r.read_line(&mut line)
            .map_err(|e| format!("after {n} answers, read: {e}"))?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(format!("after {n} answers: {line:?}"));
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).map_err(|e| e.to_string())?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| format!("bad {h:?}"))?;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

fn request_loop(port: u16, stop: &AtomicBool, served: &AtomicUsize) -> Load {
    let mut load = Load::default();
    let mut times = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let t = Instant::now();
        let result = if i.is_multiple_of(2) {
            match http(port, "GET", "/health", None) {
                Ok((200, _)) => Ok(()),
                Ok((s, b)) => Err(format!("/health → {s} {b}")),
                Err(e) => Err(format!("/health → {e}")),
            }
        } else {
            match rpc(port, "get_system_info", json!([])) {
                Ok((200, v)) if v.get("result").is_some() => Ok(()),
                Ok((s, v)) => Err(format!("get_system_info → {s} {v}")),
                Err(e) => Err(format!("get_system_info → {e}")),
            }
        };
        times.push(t.elapsed().as_secs_f64() * 1e3);
        match result {
            Ok(()) => {
                load.ok += 1;
                served.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => load.failures.push(e),
        }
    }
    times.sort_by(f64::total_cmp);
    load.max_ms = times.last().copied().unwrap_or_default();
    load.p50_ms = times.get(times.len() / 2).copied().unwrap_or_default();
    load
}

/// Started without a URL: gated calls get -32001; `exec … license activate URL` lifts it without a
/// restart.
#[test]
#[ignore = "needs the image and rootful podman: run tests/container/test.sh"]
fn late_activation_takes_effect_without_restart() {
    let Some(image) = image() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let testproc = testproc();
    let mut pod = Podman::new(image);
    pod.sentinel(&testproc);
    let server = license_server(&mut pod, tmp.path());
    let url = server.create_license(&LicenseSpec::default());
    let volume = pod.volume("late");
    let name = unique("late");
    let start = Instant::now();
    let port = pod.run(&name, &volume, 0, &base_env("gateway02"));
    wait_health(port, "/health ok of a container started without a URL");
    authorize(port, &name);
    let start_to_health = start.elapsed();
    let started = started_at(&name);

    let status = license_status(&name);
    assert_eq!(status.word, "no_license", "without a URL:\n{}", status.text);
    assert_gated_refused(port, "no_license");
    eprintln!("step ok: no URL → privitty_send_file gets -32001");

    let activate_start = Instant::now();
    let out = license_cmd(&name, &["activate", &url]);
    let activate_exec = activate_start.elapsed();
    assert!(
        out.status.success(),
        "license activate: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        !text(&out.stdout).contains(url.rsplit('/').next().unwrap_or("-")),
        "activate must not print the TOKEN"
    );
    let answer = wait_gated_allowed(port, "the gated call to stop getting -32001 after activate");
    let pickup = activate_start.elapsed();
    assert_eq!(started_at(&name), started, "no container restart");
    assert_eq!(license_status(&name).word, "active");
    assert_eq!(server.activations().len(), 1, "one seat");
    eprintln!("step ok: exec license activate → gated call allowed without restart: {answer}");
    println!(
        "figures: start→/health ok {:.2} s (no URL); `exec … license activate` {:.2} s; \
         from its start to the gated call allowed {:.2} s (deadline {} s)",
        start_to_health.as_secs_f64(),
        activate_exec.as_secs_f64(),
        pickup.as_secs_f64(),
        PICKUP_DEADLINE.as_secs()
    );
}

/// File-drop provisioning: a license issued offline for this device, copied into the volume, takes
/// effect without restart; invalid files are rejected and change nothing.
#[test]
#[ignore = "needs the image and rootful podman: run tests/container/test.sh"]
fn file_drop_provisioning() {
    let Some(image) = image() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let testproc = testproc();
    let mut pod = Podman::new(image);
    pod.sentinel(&testproc);
    let server = license_server(&mut pod, tmp.path());
    let url = server.create_license(&LicenseSpec::default());
    let volume = pod.volume("drop");
    let name = unique("drop");
    let port = pod.run(&name, &volume, 0, &base_env("gateway03"));
    wait_health(port, "/health ok of a container started without a URL");
    authorize(port, &name);
    let started = started_at(&name);
    let status = license_status(&name);
    assert_eq!(status.word, "no_license", "without a URL:\n{}", status.text);
    let device = status.field("device uuid");
    assert!(
        uuid::Uuid::parse_str(&device).is_ok(),
        "first boot stores the device identity (device.uuid), which file-drop provisioning needs; \
         status shows {device:?}"
    );
    let edged = settled_edged_pids(&name);

    // Invalid: a license for another device.
    let other = uuid::Uuid::new_v4().to_string();
    let rejected_before = count(&logs(&name), LOG_LICENSE_INVALID);
    drop_license(
        &name,
        tmp.path(),
        "other.lic",
        &server.issue_offline(&url, &other),
    );
    eventually(
        PICKUP_DEADLINE,
        "the supervisor to log that the dropped file is not valid",
        || (count(&logs(&name), LOG_LICENSE_INVALID) > rejected_before).then_some(()),
    );
    let status = license_status(&name);
    assert_eq!(
        status.word, "no_license",
        "after an invalid drop:\n{}",
        status.text
    );
    assert_eq!(status.field("reason"), "wrong_device", "{}", status.text);
    assert_gated_refused(port, "no_license");
    assert!(health_ok(port), "service unchanged after an invalid drop");
    assert_eq!(
        settled_edged_pids(&name),
        edged,
        "no new generation for an invalid drop"
    );
    eprintln!("step ok: a license for another device → rejected (wrong_device), service unchanged");

    // Valid: issued offline for this device.
    let valid = server.issue_offline(&url, &device);
    let drop_start = Instant::now();
    drop_license(&name, tmp.path(), "mine.lic", &valid);
    let answer = wait_gated_allowed(port, "the dropped license to take effect");
    let pickup = drop_start.elapsed();
    assert_eq!(license_status(&name).word, "active");
    assert_eq!(started_at(&name), started, "no container restart");
    assert!(server.activations().is_empty(), "a file drop takes no seat");
    let edged = settled_edged_pids(&name);
    eprintln!(
        "step ok: a valid offline license dropped → gated call allowed without restart: {answer}"
    );

    // Invalid over a working license: the running generation keeps its license.
    let rejected_before = count(&logs(&name), LOG_LICENSE_INVALID);
    drop_license(&name, tmp.path(), "garbage.lic", "this is not a license");
    eventually(
        PICKUP_DEADLINE,
        "the supervisor to log that the dropped file is not valid",
        || (count(&logs(&name), LOG_LICENSE_INVALID) > rejected_before).then_some(()),
    );
    assert_eq!(license_status(&name).field("reason"), "corrupt");
    assert_ne!(
        error_code(&gated_call(port)),
        Some(LICENSE_REQUIRED),
        "an invalid drop must not take the running license away"
    );
    assert_eq!(
        settled_edged_pids(&name),
        edged,
        "no new generation for an invalid drop"
    );
    eprintln!("step ok: garbage over a working license → rejected, service unchanged");
    println!(
        "figures: valid file drop (from `podman cp`) → gated call allowed after {:.2} s",
        pickup.as_secs_f64()
    );
}

/// The security settings of deploy/kubernetes (non-root 1000, read-only root file system, every
/// capability dropped, no privilege escalation, /tmp the only other writable path).
const HARDENED: &[&str] = &[
    "--read-only",
    "--cap-drop=ALL",
    "--security-opt",
    "no-new-privileges",
    "--user",
    "1000:1000",
    "--tmpfs",
    "/tmp:rw,size=64m",
];

/// A fleet from one delivery URL with three seats, with the manifests' security settings: three
/// devices take three seats; a fourth serves unlicensed and `license status` names the seat limit;
/// re-creating a device on its volume takes no new seat; `license deactivate` before removing a
/// device frees its seat for the fourth.
#[test]
#[ignore = "needs the image and rootful podman: run tests/container/test.sh"]
fn fleet_rehearsal_with_the_hardened_settings() {
    let Some(image) = image() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let testproc = testproc();
    let mut pod = Podman::new(image);
    pod.sentinel(&testproc);
    let server = license_server(&mut pod, tmp.path());
    let url = server.create_license(&LicenseSpec {
        seats: 3,
        ..LicenseSpec::default()
    });
    let mut env = base_env("fleet");
    env.push(format!("PRIVITTY_LICENSE_URL={url}"));
    let mut devices = Vec::new();
    for i in 0..4 {
        let volume = pod.volume(&format!("fleet{i}"));
        let name = unique(&format!("fleet{i}"));
        let port = pod.run_with(&name, &volume, 0, &env, HARDENED);
        devices.push((name, volume, port));
    }
    for (name, _, port) in &devices {
        wait_health(*port, &format!("/health of {name} (hardened)"));
    }
    let words: Vec<String> = devices
        .iter()
        .map(|(n, _, _)| license_status(n).word)
        .collect();
    let active = words.iter().filter(|w| *w == "active").count();
    assert_eq!(active, 3, "three seats, three active devices: {words:?}");
    assert_eq!(server.activations().len(), 3, "three seats taken");
    let (fourth, _) = devices
        .iter()
        .map(|(n, _, _)| (n.clone(), license_status(n)))
        .find(|(_, s)| s.word != "active")
        .expect("one device without a seat");
    let status = license_status(&fourth);
    assert_eq!(status.word, "no_license", "{}", status.text);
    assert!(
        status.field("last activation error").contains("seat_limit"),
        "license status names the seat limit:\n{}",
        status.text
    );
    eprintln!("step ok: 3 seats → 3 active devices; the 4th is no_license (seat_limit)");

    // Re-create a licensed device on its volume: same identity, no new seat.
    let (first, first_volume, _) = devices
        .iter()
        .find(|(n, _, _)| *n != fourth)
        .cloned()
        .unwrap();
    let device = license_status(&first).field("device uuid");
    podman_ok(&["rm", "-f", "-t", "8", &first]);
    let again = unique("fleet-again");
    let port = pod.run_with(&again, &first_volume, 0, &env, HARDENED);
    wait_health(port, "/health of the re-created device");
    let status = license_status(&again);
    assert_eq!(status.word, "active", "{}", status.text);
    assert_eq!(status.field("device uuid"), device, "same device");
    assert_eq!(
        server.activations().len(),
        3,
        "re-creating takes no new seat"
    );
    eprintln!("step ok: re-created on its volume → same device, no new seat");

    // Decommission one device properly: its seat goes to the fourth.
    let out = license_cmd(&again, &["deactivate"]);
    assert!(out.status.success(), "deactivate: {}", text(&out.stderr));
    podman_ok(&["rm", "-f", "-t", "8", &again]);
    podman_ok(&["volume", "rm", "-f", &first_volume]);
    let out = license_cmd(&fourth, &["activate", &url]);
    assert!(
        out.status.success(),
        "the freed seat: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let status = license_status(&fourth);
    assert_eq!(status.word, "active", "{}", status.text);
    assert_eq!(
        status.field("last activation error"),
        "-",
        "{}",
        status.text
    );
    eprintln!("step ok: deactivate + remove frees the seat; the 4th device activates");
}
