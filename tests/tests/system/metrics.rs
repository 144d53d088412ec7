//! Monitoring, as an operator meets it: `GET /metrics` (what it shows, who may read it, `promtool
//! check metrics` on a live scrape), the license events on `/events` (time passing with no file
//! changing, the snapshot every connection starts with), the shipped alert rules (`promtool check
//! rules`, `promtool test rules`), and a real Prometheus scraping privitty-init → privitty-edged →
//! the engine while the license is activated, revoked, and left to expire.
//!
//! The Prometheus tests need Debian's `prometheus` package (with `promtool`); without it they say
//! `SKIPPED: …`, and fail under `PRIVITTY_REQUIRE_ALL_TESTS=1`. Nothing here sleeps to wait: every
//! wait polls with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use privitty_tests::edged_stack::{EdgedStack, LicenseState};
use privitty_tests::init_harness::children_of;
use privitty_tests::license_server::{LicenseServer, LicenseSpec};
use privitty_tests::managed_harness::{Stack, StackSpec, TestDirs, get, msg};
use privitty_tests::prometheus::{
    self, Prometheus, SCRAPE_INTERVAL, Sample, exposition, promtool, value_of,
};
use privitty_tests::support::{self, eventually, poll_until};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);
/// Prometheus must show a change this soon after edged's `/metrics` does.
const FOLLOW: Duration = Duration::from_secs(2 * SCRAPE_INTERVAL.as_secs());

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `GET /metrics` of `addr` (HTTP 200 required), parsed.
fn scrape(addr: SocketAddr) -> (String, Vec<Sample>) {
    let r = get(addr, "/metrics").expect("GET /metrics");
    let text = String::from_utf8(r.body).expect("UTF-8 metrics");
    assert_eq!(r.status, 200, "{text}");
    let samples = exposition(&text);
    (text, samples)
}

fn status_of(samples: &[Sample]) -> Option<String> {
    samples
        .iter()
        .find(|s| s.is("privitty_license_status", &[]) && s.value == 1.0)
        .and_then(|s| s.label("status").map(str::to_string))
}

/// Polls edged's `/metrics` until `ready` holds; returns the samples and when it was seen.
fn edged_shows(
    addr: SocketAddr,
    what: &str,
    ready: impl Fn(&[Sample]) -> bool,
) -> (Vec<Sample>, Instant) {
    let samples = eventually(
        DEADLINE,
        &format!("edged's /metrics to show {what}"),
        || {
            let r = get(addr, "/metrics").ok().filter(|r| r.status == 200)?;
            let samples = exposition(&String::from_utf8_lossy(&r.body));
            ready(&samples).then_some(samples)
        },
    );
    (samples, Instant::now())
}

/// How long Prometheus took to follow each change (printed at the end of the test).
#[derive(Default)]
struct Latencies(Vec<(String, Duration)>);

impl Latencies {
    /// Waits until `check` holds on Prometheus, at most [`FOLLOW`] after `since` (when edged
    /// showed the change).
    fn follow<T>(&mut self, since: Instant, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let left = FOLLOW.saturating_sub(since.elapsed());
        let found = poll_until(left, &mut check).or_else(check);
        let took = since.elapsed();
        let value = found.unwrap_or_else(|| {
            panic!(
                "Prometheus did not follow within two scrape intervals ({FOLLOW:?}): {what} \
                 (still missing {took:?} after edged showed it)"
            )
        });
        self.0.push((what.to_string(), took));
        value
    }
}

impl Drop for Latencies {
    fn drop(&mut self) {
        for (what, took) in &self.0 {
            eprintln!("prometheus followed in {:>5} ms: {what}", took.as_millis());
        }
    }
}

/// An alert named `name` (pending or firing) with these labels.
fn alert(prom: &Prometheus, name: &str, labels: &[(&str, &str)]) -> Option<prometheus::Alert> {
    prom.alerts()
        .into_iter()
        .find(|a| a.name() == name && labels.iter().all(|(k, v)| a.label(k) == Some(*v)))
}

/// A `GET /events` stream, read event by event.
struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    fn connect(addr: SocketAddr) -> Events {
        let mut stream = TcpStream::connect(addr).expect("connect for /events");
        write!(stream, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request /events");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "/events: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header line");
            if line.trim().is_empty() {
                break;
            }
        }
        Events { reader }
    }

    /// The next `data:` event within `deadline`; `None` when the server closed the stream.
    fn next(&mut self, deadline: Duration) -> Option<Value> {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no event on /events within {deadline:?}");
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .expect("read timeout");
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading /events: {e}"),
            }
            // Chunk sizes and `: ping` comments sit between the events (one chunk each).
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Some(serde_json::from_str(data).expect("an event is JSON"));
            }
        }
    }

    /// The next event whose `type` is `kind`, skipping the others (engine events).
    fn next_of(&mut self, kind: &str, deadline: Duration) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let event = self
                .next(left)
                .unwrap_or_else(|| panic!("/events closed before a {kind} event"));
            if event["type"] == kind {
                return event;
            }
        }
    }
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !prometheus::available("the_alert_rules_pass_promtool_check_and_their_unit_tests") {
        return;
    }
    let dir = prometheus::deploy_dir();
    let rules = dir.join("alerts.yml");
    let out = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(out.status.success(), "promtool check rules: {out:?}");
    let unit = dir.join("alerts_test.yml");
    let out = promtool(&["test", "rules", unit.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// edged serving a socket bound on 0.0.0.0 (as in the image: the API token is required there).
fn exposed(builder: privitty_tests::edged_stack::EdgedBuilder) -> EdgedStack {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind 0.0.0.0:0");
    builder.socket_activated(listener).start()
}

fn api_token(accounts: &Path) -> String {
    let out = std::process::Command::new(support::bin("privitty-edge"))
        .arg("--accounts")
        .arg(accounts)
        .arg("api-token")
        .env_remove("PRIVITTY_API_TOKEN")
        .env_remove("PRIVITTY_API_TOKEN_FILE")
        .output()
        .expect("run privitty-edge api-token");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn metrics_are_open_like_health_unless_asked_to_need_the_token() {
    let edged = exposed(EdgedStack::builder().license(LicenseState::Active));
    // Open by default, even where /rpc needs the token.
    let rpc = edged.request(
        "POST",
        "/rpc",
        Some(r#"{"jsonrpc":"2.0","method":"get_info","params":[1],"id":1}"#),
    );
    assert_eq!(rpc.status, 401, "{rpc:?}");
    let r = edged.request("GET", "/metrics", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let samples = exposition(&r.body);
    assert_eq!(status_of(&samples).as_deref(), Some("active"));
    assert!(!r.body.contains("token") && !r.body.contains("secret"));
    let post = edged.request("POST", "/metrics", Some(""));
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(post.header("allow"), Some("GET"));

    // PRIVITTY_METRICS_AUTH=token: the same check as /rpc.
    let guarded = exposed(
        EdgedStack::builder()
            .license(LicenseState::Active)
            .env("PRIVITTY_METRICS_AUTH", "token"),
    );
    let r = guarded.request("GET", "/metrics", None);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"privitty-edged\"")
    );
    let token = api_token(&guarded.accounts);
    let bearer = format!("Bearer {token}");
    let r = guarded.request_with("GET", "/metrics", &[("Authorization", &bearer)], None);
    assert_eq!(r.status, 200, "{r:?}");
    // /health stays open.
    assert_eq!(guarded.request("GET", "/health", None).status, 200);

    // On loopback the Host check comes first (DNS rebinding), as for /rpc.
    let local = EdgedStack::builder().start();
    let r = local.request_with("GET", "/metrics", &[("Host", "evil.example")], None);
    assert_eq!(r.status, 421, "{r:?}");
}

#[test]
fn calls_are_counted_by_class_and_a_live_scrape_passes_promtool() {
    let edged = EdgedStack::builder().license(LicenseState::Expired).start();
    edged.call("get_info", json!([1]));
    edged.call("get_info", json!([1]));
    edged.call(
        "privitty_send_file",
        json!([1, 10, 10, "x.csv", true, false, 5]),
    );
    edged.call("get_next_event", json!([]));
    edged.call("no_such_method", json!([]));
    edged.call("privitty_license_status", json!([]));
    edged.post_rpc("{broken");
    let (text, samples) = scrape(edged.addr());
    let requests = |class: &str, outcome: &str| {
        value_of(
            &samples,
            "privitty_rpc_requests_total",
            &[("class", class), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("engine", "ok"), Some(2.0), "{text}");
    assert_eq!(requests("gated", "error"), Some(1.0), "{text}");
    assert_eq!(requests("denied", "error"), Some(1.0), "{text}");
    assert_eq!(requests("unknown", "error"), Some(1.0), "{text}");
    assert_eq!(requests("edged", "ok"), Some(1.0), "{text}");
    assert_eq!(requests("invalid", "error"), Some(1.0), "{text}");
    assert_eq!(
        value_of(
            &samples,
            "privitty_gate_rejections_total",
            &[("status", "expired")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &samples,
            "privitty_rpc_request_duration_seconds_count",
            &[("class", "engine")]
        ),
        Some(2.0)
    );
    assert_eq!(value_of(&samples, "privitty_engine_up", &[]), Some(1.0));
    assert_eq!(
        value_of(&samples, "privitty_engine_restarts_total", &[]),
        Some(0.0)
    );
    assert!(
        value_of(&samples, "privitty_generation", &[]).is_none(),
        "standalone edged has no generation"
    );
    if !prometheus::available("calls_are_counted_by_class_and_a_live_scrape_passes_promtool") {
        return;
    }
    let out = promtool(&["check", "metrics"], Some(text.as_bytes()));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn time_passing_changes_the_status_on_events_and_in_the_log_with_no_file_changing() {
    // Active for 15 s from now (edged and its engine start within that, on a busy machine too),
    // then 5 s of grace: the status changes while edged runs.
    let builder = EdgedStack::builder();
    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("data");
    std::fs::create_dir_all(&accounts).unwrap();
    let device = uuid::Uuid::new_v4().to_string();
    std::fs::write(accounts.join("device.uuid"), format!("{device}\n")).unwrap();
    let now = unix_now();
    let (sync_by, exp) = (now + 15, now + 20);
    let claims = json!({
        "ver": 1, "iss": "privitty-license", "aud": "privitty-edge", "sub": "lic-short",
        "jti": uuid::Uuid::new_v4().to_string(), "iat": now - 60, "sync_by": sync_by,
        "exp": exp, "dev": device,
    });
    std::fs::write(accounts.join("privitty.lic"), builder.key.sign(&claims)).unwrap();
    let edged = builder.accounts(&accounts).start();

    let mut events = Events::connect(edged.addr());
    let first = events.next(DEADLINE).expect("a first event");
    assert_eq!(
        first,
        json!({"type":"PrivittyLicenseStatus","status":"active","reason":null,
               "expires_at":sync_by,"grace_ends_at":exp,"generation":null}),
        "every connection starts with the license status"
    );
    let warning = events.next(DEADLINE).expect("a second event");
    assert_eq!(warning["type"], "PrivittyLicenseExpiring", "{warning}");
    assert_eq!(warning["next_status"], "grace_period");
    assert_eq!(warning["at"], sync_by);
    let (_, samples) = scrape(edged.addr());
    assert_eq!(
        value_of(&samples, "privitty_license_expires_timestamp_seconds", &[]),
        Some(sync_by as f64)
    );
    assert_eq!(
        value_of(
            &samples,
            "privitty_license_grace_ends_timestamp_seconds",
            &[]
        ),
        Some(exp as f64)
    );
    assert!(
        value_of(
            &samples,
            "privitty_license_info",
            &[("license_id", "lic-short"), ("reason", "")]
        )
        .is_some()
    );

    let grace = events.next_of("PrivittyLicenseStatusChanged", DEADLINE);
    let at = unix_now();
    assert_eq!(
        grace,
        json!({"type":"PrivittyLicenseStatusChanged","status":"grace_period","previous":"active",
               "reason":null,"expires_at":sync_by,"grace_ends_at":exp})
    );
    assert!(
        (sync_by..=sync_by + 3).contains(&at),
        "the change came at sync_by ({sync_by}), not at {at}"
    );
    let expired = events.next_of("PrivittyLicenseStatusChanged", DEADLINE);
    assert_eq!(expired["status"], "expired");
    assert_eq!(expired["previous"], "grace_period");
    let at = unix_now();
    assert!((exp..=exp + 3).contains(&at), "expired at {at}, exp {exp}");

    // The same transitions, as warnings in the log with the same fields.
    let changes: Vec<Value> = edged
        .log_lines()
        .into_iter()
        .filter(|l| l["message"] == "license status changed")
        .collect();
    assert_eq!(changes.len(), 2, "{changes:#?}");
    for (line, (status, previous)) in changes
        .iter()
        .zip([("grace_period", "active"), ("expired", "grace_period")])
    {
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["previous"], previous, "{line}");
        assert_eq!(line["expires_at"], sync_by, "{line}");
        assert_eq!(line["grace_ends_at"], exp, "{line}");
    }
    let warned = edged
        .log_lines()
        .into_iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("license expiring"))
        })
        .expect("the expiry warning is logged");
    assert_eq!(warned["level"], "WARN");
    assert_eq!(warned["next_status"], "grace_period");
    assert_eq!(warned["at"], sync_by);
    // A client connecting now learns where the license is, and gated calls follow the clock too.
    let mut later = Events::connect(edged.addr());
    let first = later.next(DEADLINE).expect("a first event");
    assert_eq!(first["type"], "PrivittyLicenseStatus");
    assert_eq!(first["status"], "expired");
    let r = edged.call(
        "privitty_send_file",
        json!([1, 10, 10, "x.csv", true, false, 5]),
    );
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let (_, samples) = scrape(edged.addr());
    assert_eq!(status_of(&samples).as_deref(), Some("expired"));
}

/// The pid of the engine under edged `pid`.
/// The engine serving generation `edged`: its child, or, once a swap handed it over, a child of
/// privitty-init (which adopted it when the generation that started it exited).
fn engine_of(init: Pid, edged: Pid) -> Option<Pid> {
    children_of(edged)
        .into_iter()
        .chain(children_of(init))
        .map(|(p, _)| p)
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim().starts_with("deltachat"))
        })
}

fn license_cli(accounts: &Path, server: &LicenseServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(support::bin("privitty-edge"))
        .arg("--accounts")
        .arg(accounts)
        .args(["license"])
        .args(args)
        .env("PRIVITTY_LICENSE_PUBKEY", server.pubkey_path())
        .output()
        .expect("run privitty-edge license")
}

/// The generation counters privitty-init hands each generation, as edged shows them.
fn generation(samples: &[Sample]) -> (f64, f64, f64) {
    let get = |name| value_of(samples, name, &[]);
    let number = get("privitty_generation").unwrap_or_else(|| {
        panic!(
            "privitty_generation is missing: privitty-init does not set PRIVITTY_GENERATION yet \
             (apply the supervisor side of issue 13)"
        )
    });
    (
        number,
        get("privitty_generation_swaps_total").expect("privitty_generation_swaps_total"),
        get("privitty_generation_crashes_total").expect("privitty_generation_crashes_total"),
    )
}

#[test]
fn prometheus_follows_the_license_and_the_alerts_of_a_running_stack() {
    if !prometheus::available("prometheus_follows_the_license_and_the_alerts_of_a_running_stack") {
        return;
    }
    let dirs = TestDirs::new();
    let server = LicenseServer::start(&dirs.server);
    // Unlicensed at first: no delivery URL.
    let stack = Stack::start("init", &dirs, StackSpec::default().trusting(&server));
    stack.wait_generation(1);
    let addr = stack.addr();
    let prom = Prometheus::start(
        &dirs.root.path().join("prometheus"),
        addr,
        &prometheus::rules_file(),
    );
    let mut names = prom.rule_names();
    names.sort();
    assert_eq!(
        names,
        [
            "PrivittyCrashLoop",
            "PrivittyEngineRestarting",
            "PrivittyLicenseExpiringSoon",
            "PrivittyLicenseNotActive",
            "PrivittyLicenseSyncFailing",
        ]
    );
    let mut latency = Latencies::default();

    // 1. No license: the status, the reason, the alert; and the scrape is well-formed. (Prometheus
    // takes up to 5 s to hand a new target to its scraper: the clock starts at its first scrape.)
    eventually(DEADLINE, "Prometheus's first scrape", || {
        prom.value(r#"up{job="privitty-edge"}"#)
            .filter(|v| *v == 1.0)
    });
    let (samples, seen) = edged_shows(addr, "no_license", |s| {
        status_of(s).as_deref() == Some("no_license")
    });
    assert_eq!(generation(&samples), (1.0, 0.0, 0.0));
    let (text, _) = scrape(addr);
    let out = promtool(&["check", "metrics"], Some(text.as_bytes()));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics on a live scrape:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        prom.value(r#"privitty_license_status{status="no_license"}"#),
        Some(1.0)
    );
    assert_eq!(
        prom.value(r#"privitty_license_info{reason="not_activated"}"#),
        Some(1.0)
    );
    let pending = latency.follow(seen, "PrivittyLicenseNotActive (no_license)", || {
        alert(
            &prom,
            "PrivittyLicenseNotActive",
            &[("status", "no_license"), ("severity", "critical")],
        )
    });
    assert!(["pending", "firing"].contains(&pending.state.as_str()));

    // 2. Activation on the running stack: a new generation, active, the alert resolves.
    let url = server.create_license(&LicenseSpec::default());
    let out = license_cli(&dirs.accounts, &server, &["activate", &url]);
    assert!(out.status.success(), "license activate: {out:?}");
    stack.wait_generation(2);
    let (samples, seen) = edged_shows(addr, "active", |s| {
        status_of(s).as_deref() == Some("active")
    });
    assert_eq!(generation(&samples), (2.0, 1.0, 0.0), "one swap");
    let activated_at = value_of(
        &samples,
        "privitty_license_last_sync_success_timestamp_seconds",
        &[],
    )
    .expect("the activation counts as the last successful exchange");
    assert!((activated_at - unix_now() as f64).abs() < 60.0);
    latency.follow(seen, "status active", || {
        (prom.value(r#"privitty_license_status{status="active"}"#) == Some(1.0)).then_some(())
    });
    latency.follow(seen, "generation 2, swaps 1", || {
        (prom.value("privitty_generation") == Some(2.0)
            && prom.value("privitty_generation_swaps_total") == Some(1.0))
        .then_some(())
    });
    latency.follow(seen, "PrivittyLicenseNotActive resolved", || {
        alert(&prom, "PrivittyLicenseNotActive", &[])
            .is_none()
            .then_some(())
    });
    let mut events = Events::connect(addr);
    let first = events.next(DEADLINE).expect("a first event");
    assert_eq!(first["type"], "PrivittyLicenseStatus");
    assert_eq!(first["status"], "active");
    assert_eq!(first["generation"], 2);

    // 3. Revoked on the server, seen by a sync: the swap closes the stream, and the reconnect
    // starts with the new status.
    server.revoke(&url);
    let out = license_cli(&dirs.accounts, &server, &["sync"]);
    assert!(
        !out.status.success(),
        "a sync of a revoked license fails: {out:?}"
    );
    stack.wait_generation(3);
    while events.next(DEADLINE).is_some() {}
    let mut events = Events::connect(addr);
    let first = events.next(DEADLINE).expect("a first event");
    assert_eq!(
        (
            &first["type"],
            &first["status"],
            &first["reason"],
            &first["generation"]
        ),
        (
            &json!("PrivittyLicenseStatus"),
            &json!("no_license"),
            &json!("revoked"),
            &json!(3)
        ),
        "{first}"
    );
    drop(events);
    let (samples, seen) = edged_shows(addr, "no_license (revoked)", |s| {
        status_of(s).as_deref() == Some("no_license")
    });
    assert_eq!(generation(&samples), (3.0, 2.0, 0.0));
    let failed = value_of(
        &samples,
        "privitty_license_last_sync_failure_timestamp_seconds",
        &[],
    )
    .expect("the refused sync is recorded");
    assert!(failed >= activated_at, "{failed} < {activated_at}");
    latency.follow(seen, "status no_license, reason revoked", || {
        (prom.value(r#"privitty_license_status{status="no_license"}"#) == Some(1.0)
            && prom.value(r#"privitty_license_info{reason="revoked"}"#) == Some(1.0))
        .then_some(())
    });
    latency.follow(seen, "last sync failure after the last success", || {
        prom.value(
            "privitty_license_last_sync_failure_timestamp_seconds \
             >= privitty_license_last_sync_success_timestamp_seconds",
        )
    });
    latency.follow(seen, "PrivittyLicenseNotActive (no_license) again", || {
        alert(
            &prom,
            "PrivittyLicenseNotActive",
            &[("status", "no_license")],
        )
    });

    // 4. A license that expires while it runs: active, then grace_period at sync_by and expired
    // at exp, with no file changing and no new generation.
    let short = LicenseSpec {
        entitlement: Duration::from_secs(12),
        grace: Duration::from_secs(6),
        ..LicenseSpec::default()
    };
    let url = server.create_license(&short);
    let out = license_cli(&dirs.accounts, &server, &["activate", &url]);
    assert!(out.status.success(), "license activate: {out:?}");
    stack.wait_generation(4);
    let (samples, seen) = edged_shows(addr, "the short license active", |s| {
        status_of(s).as_deref() == Some("active")
    });
    assert_eq!(generation(&samples), (4.0, 3.0, 0.0));
    let sync_by = value_of(&samples, "privitty_license_expires_timestamp_seconds", &[])
        .expect("expires") as i64;
    let exp = value_of(
        &samples,
        "privitty_license_grace_ends_timestamp_seconds",
        &[],
    )
    .expect("grace_ends") as i64;
    assert_eq!(
        value_of(&samples, "privitty_license_sync_by_timestamp_seconds", &[]),
        Some(sync_by as f64)
    );
    assert!(sync_by < exp, "a grace period: {sync_by} < {exp}");
    let mut events = Events::connect(addr);
    let first = events.next(DEADLINE).expect("a first event");
    assert_eq!(first["status"], "active", "{first}");
    let warning = events.next(DEADLINE).expect("the expiry warning");
    assert_eq!(warning["type"], "PrivittyLicenseExpiring", "{warning}");
    latency.follow(seen, "status active, grace_ends", || {
        (prom.value(r#"privitty_license_status{status="active"}"#) == Some(1.0)
            && prom.value("privitty_license_grace_ends_timestamp_seconds") == Some(exp as f64))
        .then_some(())
    });
    let expiring = latency.follow(seen, "PrivittyLicenseExpiringSoon", || {
        alert(
            &prom,
            "PrivittyLicenseExpiringSoon",
            &[("severity", "warning")],
        )
    });
    assert!(
        expiring.value.parse::<f64>().is_ok_and(|left| left <= 20.0),
        "the alert's value is the time left: {expiring:?}"
    );

    let grace = events.next_of("PrivittyLicenseStatusChanged", DEADLINE);
    assert_eq!(
        (&grace["status"], &grace["previous"]),
        (&json!("grace_period"), &json!("active"))
    );
    let (_, seen) = edged_shows(addr, "grace_period", |s| {
        status_of(s).as_deref() == Some("grace_period")
    });
    latency.follow(seen, "status grace_period (time passing)", || {
        (prom.value(r#"privitty_license_status{status="grace_period"}"#) == Some(1.0)).then_some(())
    });
    latency.follow(
        seen,
        "PrivittyLicenseNotActive (grace_period, warning)",
        || {
            alert(
                &prom,
                "PrivittyLicenseNotActive",
                &[("status", "grace_period"), ("severity", "warning")],
            )
        },
    );
    let expired = events.next_of("PrivittyLicenseStatusChanged", DEADLINE);
    assert_eq!(
        (&expired["status"], &expired["previous"]),
        (&json!("expired"), &json!("grace_period"))
    );
    let (samples, seen) = edged_shows(addr, "expired", |s| {
        status_of(s).as_deref() == Some("expired")
    });
    assert_eq!(
        generation(&samples).0,
        4.0,
        "time alone changed the status: no swap"
    );
    latency.follow(seen, "status expired (time passing)", || {
        (prom.value(r#"privitty_license_status{status="expired"}"#) == Some(1.0)).then_some(())
    });
    latency.follow(seen, "PrivittyLicenseNotActive (expired, critical)", || {
        alert(
            &prom,
            "PrivittyLicenseNotActive",
            &[("status", "expired"), ("severity", "critical")],
        )
    });
    latency.follow(seen, "PrivittyLicenseExpiringSoon resolved", || {
        alert(&prom, "PrivittyLicenseExpiringSoon", &[])
            .is_none()
            .then_some(())
    });
    drop(events);
    assert_eq!(stack.generations_started(), 4, "no swap for time passing");
    let logged: Vec<Value> = stack
        .lines("license status changed")
        .into_iter()
        .filter(|l| l["level"] == "WARN")
        .collect();
    assert!(
        logged
            .iter()
            .any(|l| l["status"] == "grace_period" && l["previous"] == "active"),
        "{logged:#?}"
    );

    // 5. The engine dies once; then two generations crash: the counters and the crash-loop alert.
    let edged = stack.edged_pid(4);
    let engine = eventually(DEADLINE, "the engine of generation 4", || {
        engine_of(stack.init.pid, edged)
    });
    nix::sys::signal::kill(engine, Signal::SIGKILL).expect("kill the engine");
    let (_, seen) = edged_shows(addr, "an engine restart", |s| {
        value_of(s, "privitty_engine_restarts_total", &[]) == Some(1.0)
            && value_of(s, "privitty_engine_up", &[]) == Some(1.0)
    });
    latency.follow(seen, "privitty_engine_restarts_total 1", || {
        (prom.value("privitty_engine_restarts_total") == Some(1.0)).then_some(())
    });
    for (n, crashes) in [(4, 1.0), (5, 2.0)] {
        nix::sys::signal::kill(stack.edged_pid(n), Signal::SIGKILL).expect("kill edged");
        stack.wait_log(msg::UNEXPECTED_EXIT, crashes as usize);
        stack.wait_generation(n + 1);
    }
    let (samples, seen) = edged_shows(addr, "two crashes", |s| {
        value_of(s, "privitty_generation_crashes_total", &[]) == Some(2.0)
    });
    assert_eq!(
        generation(&samples),
        (6.0, 3.0, 2.0),
        "crashes are no swaps"
    );
    latency.follow(seen, "privitty_generation_crashes_total 2", || {
        (prom.value("privitty_generation_crashes_total") == Some(2.0)).then_some(())
    });
    let crash_loop = latency.follow(seen, "PrivittyCrashLoop", || {
        alert(&prom, "PrivittyCrashLoop", &[("severity", "critical")])
    });
    assert_eq!(crash_loop.state, "firing", "no `for`: {crash_loop:?}");
}
