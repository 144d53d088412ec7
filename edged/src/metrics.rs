//! Prometheus metrics for `GET /metrics`, written in the Prometheus text format (0.0.4) by the
//! `prometheus-client` crate.
//!
//! Owns: every metric's name, labels and help text (the table in README.md), the recording of each
//! JSON-RPC call ([`Metrics::record_call`]), and the scrape-time collector that reads the license,
//! the engine, the SSE hub and what privitty-init handed this generation. Must not: make a scrape
//! wait for the engine, or read files on the async runtime (the sync times are read in
//! `spawn_blocking`, at most once per [`SYNC_INFO_MAX_AGE`]).
//!
//! Counters live as long as this process: a generation swap starts them again from 0, which
//! Prometheus's `rate()` and `increase()` treat as a counter reset. The supervisor's own counters
//! (generation, swaps, crashes) come from privitty-init's environment, so they go on across swaps.
//!
//! Trust boundary: `activation.json` and `sync_state.json` are in the untrusted data volume; they are
//! read with licensectl's size-capped readers, and a file that does not parse only hides its times.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use licensectl::{AccountsDir, Status};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::Engine;
use crate::events::Hub;
use crate::gate::{Access, PRIVITTY_METHODS};
use crate::license::License;
use crate::rpc::{LICENSE_REQUIRED, RpcError};

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The last sync times are read from the data directory at most this often (a scrape in between
/// shows the cached ones).
pub const SYNC_INFO_MAX_AGE: Duration = Duration::from_secs(1);
/// Upper bounds (seconds) of `privitty_rpc_request_duration_seconds`: 100 µs (a gate rejection) to
/// 10 s (a slow engine call).
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const STATUSES: [Status; 4] = [
    Status::Active,
    Status::GracePeriod,
    Status::Expired,
    Status::NoLicense,
];
/// The statuses a gated call can be rejected under.
const REJECTING: [Status; 2] = [Status::Expired, Status::NoLicense];

/// What kind of method a JSON-RPC call named: the `class` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// A Delta Chat method the policy lets through to the engine.
    Engine,
    /// A licensed Privitty method (the file methods, and unknown `privitty_*` names).
    Gated,
    /// A method (or a setting) the method policy refuses (-32003).
    Denied,
    /// edged's own methods (`privitty_license_status`).
    Edged,
    /// A method nobody has (-32601).
    Unknown,
    /// Not a call at all: a body that is not JSON, an invalid request object, an oversized batch.
    Invalid,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Engine,
        Class::Gated,
        Class::Denied,
        Class::Edged,
        Class::Unknown,
        Class::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Engine => "engine",
            Class::Gated => "gated",
            Class::Denied => "denied",
            Class::Edged => "edged",
            Class::Unknown => "unknown",
            Class::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What privitty-init handed this generation in its environment (see `config::env::GENERATION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenerationInfo {
    /// 1 for the first generation, +1 for each one started after it.
    pub number: u64,
    /// Generations started to replace a serving one (new license, withdrawal, SIGHUP).
    pub swaps: u64,
    /// Generations that ended unexpectedly (each one restarted after a backoff).
    pub crashes: u64,
}

/// Where the values read at scrape time come from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub license: Arc<dyn License>,
    /// `None` in tests without an engine: the engine's metrics are left out.
    pub engine: Option<Engine>,
    pub hub: Hub,
    pub generation: Option<GenerationInfo>,
    /// Where `activation.json` and `sync_state.json` are (the sync times); `None` leaves them out.
    pub accounts: Option<AccountsDir>,
}

/// The last successful and failed exchanges with the license server, as the data directory
/// records them (unix seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncTimes {
    /// The last successful sync, or the activation when no sync succeeded since.
    pub last_success: Option<i64>,
    /// The last failed sync since the last successful one (a success clears it).
    pub last_failure: Option<i64>,
}

#[derive(Debug, Default)]
struct SyncCache {
    read_at: Option<Instant>,
    times: SyncTimes,
}

/// The metrics of one edged process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Off only for the benchmark that measures what recording costs.
    recording: bool,
    /// `[class][ok, error]`, created up front so every series exists from the start.
    requests: [[Counter; 2]; Class::ALL.len()],
    durations: [Histogram; Class::ALL.len()],
    rejections: [Counter; REJECTING.len()],
    usage: Vec<(&'static str, Counter)>,
    accounts: Option<AccountsDir>,
    sync: Arc<Mutex<SyncCache>>,
}

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    pub fn new(sources: Sources, recording: bool) -> Metrics {
        let mut registry = Registry::default();
        let requests_family = Family::<Labels2, Counter>::default();
        let durations_family =
            Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let rejections_family = Family::<Labels1, Counter>::default();
        let usage_family = Family::<Labels1, Counter>::default();
        let requests = Class::ALL.map(|class| {
            ["ok", "error"].map(|outcome| {
                requests_family
                    .get_or_create(&[("class", class.as_str()), ("outcome", outcome)])
                    .clone()
            })
        });
        let durations = Class::ALL.map(|class| {
            durations_family
                .get_or_create(&[("class", class.as_str())])
                .clone()
        });
        let rejections = REJECTING.map(|status| {
            rejections_family
                .get_or_create(&[("status", status.as_str())])
                .clone()
        });
        let usage = PRIVITTY_METHODS
            .iter()
            .filter(|(_, access)| *access == Access::Licensed)
            .map(|(name, _)| {
                (
                    *name,
                    usage_family.get_or_create(&[("feature", *name)]).clone(),
                )
            })
            .collect();
        registry.register(
            "privitty_rpc_requests",
            "JSON-RPC calls answered by this edged, by method class (engine, gated, denied, edged, unknown, invalid) and outcome (ok, error)",
            requests_family,
        );
        registry.register(
            "privitty_rpc_request_duration_seconds",
            "Time from a JSON-RPC call's start to its answer, by method class (gate rejections, answered before the call starts, and long polls such as wait_next_msgs are left out)",
            durations_family,
        );
        registry.register(
            "privitty_gate_rejections",
            "Gated calls refused for want of a usable license (-32001), by the license status at the time",
            rejections_family,
        );
        registry.register(
            "privitty_usage",
            "Successful licensed calls by feature (the method name), as counted for the license server's usage reports",
            usage_family,
        );
        let sync = Arc::new(Mutex::new(SyncCache::default()));
        let accounts = sources.accounts.clone();
        registry.register_collector(Box::new(Live {
            sources,
            started_at: SystemTime::now(),
            sync: sync.clone(),
        }));
        Metrics {
            registry,
            recording,
            requests,
            durations,
            rejections,
            usage,
            accounts,
            sync,
        }
    }

    /// Whether calls are recorded (the benchmark turns it off).
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// Records one call: its class, outcome and duration (`started` = `None`: not timed, as for a
    /// long poll), a gate rejection, and the usage of a licensed call that succeeded.
    pub fn record_call(
        &self,
        class: Class,
        method: &str,
        result: Result<(), &RpcError>,
        licensed: bool,
        started: Option<Instant>,
    ) {
        if !self.recording {
            return;
        }
        self.requests[class.index()][usize::from(result.is_err())].inc();
        if let Some(started) = started {
            self.durations[class.index()].observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(_) if licensed => {
                if let Some((_, counter)) = self.usage.iter().find(|(name, _)| *name == method) {
                    counter.inc();
                }
            }
            Err(e) if e.code == LICENSE_REQUIRED => {
                let status = e
                    .data
                    .as_ref()
                    .and_then(|d| d.get("status"))
                    .and_then(|s| s.as_str());
                if let Some(i) = REJECTING.iter().position(|s| Some(s.as_str()) == status) {
                    self.rejections[i].inc();
                }
            }
            _ => {}
        }
    }

    /// Records a request that was not a call (broken JSON, an invalid request object).
    pub fn record_invalid(&self) {
        if self.recording {
            self.requests[Class::Invalid.index()][1].inc();
        }
    }

    /// The text of one scrape. Reads the sync times first when the cached ones are older than
    /// [`SYNC_INFO_MAX_AGE`].
    pub async fn render(&self) -> String {
        self.refresh_sync_times().await;
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }

    async fn refresh_sync_times(&self) {
        let Some(dir) = &self.accounts else { return };
        let fresh = self
            .sync
            .lock()
            .expect("sync cache lock")
            .read_at
            .is_some_and(|at| at.elapsed() < SYNC_INFO_MAX_AGE);
        if fresh {
            return;
        }
        let dir = dir.clone();
        let times = tokio::task::spawn_blocking(move || sync_times(&dir))
            .await
            .unwrap_or_default();
        let mut cache = self.sync.lock().expect("sync cache lock");
        cache.read_at = Some(Instant::now());
        cache.times = times;
    }
}

/// Reads the last sync times from `activation.json` (successes, refusals) and `sync_state.json`
/// (transient failures). Blocking.
pub fn sync_times(dir: &AccountsDir) -> SyncTimes {
    let activation = dir.activation().ok().flatten();
    let state = licensectl::ops::read_sync_state(dir);
    let last_success = activation.as_ref().and_then(|a| {
        let synced = a.last_sync_ok_at.as_deref().and_then(unix_of);
        let activated = a.activated_at.as_deref().and_then(unix_of);
        synced.max(activated)
    });
    // A refusal is recorded as "<RFC 3339 time>: <error>" in activation.json.
    let refused = activation
        .as_ref()
        .and_then(|a| a.last_sync_error.as_deref())
        .and_then(|e| e.split_once(": "))
        .and_then(|(at, _)| unix_of(at));
    let transient = state
        .and_then(|s| s.last_sync_error_at)
        .as_deref()
        .and_then(unix_of);
    SyncTimes {
        last_success,
        last_failure: refused.max(transient),
    }
}

fn unix_of(rfc3339: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(rfc3339.trim()).ok()?;
    Some(licensectl::accounts::unix_secs(t))
}

/// The values read at each scrape.
#[derive(Debug)]
struct Live {
    sources: Sources,
    started_at: SystemTime,
    sync: Arc<Mutex<SyncCache>>,
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: Option<i64>,
) -> Result<(), std::fmt::Error> {
    if let Some(v) = value {
        encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&v)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.sources;
        let eval = s.license.evaluate(SystemTime::now());
        {
            let mut family = encoder.encode_descriptor(
                "privitty_license_status",
                "The license status as the gate sees it now: 1 for the current status word, 0 for the others.",
                None,
                MetricType::Gauge,
            )?;
            for status in STATUSES {
                family
                    .encode_family(&[("status", status.as_str())])?
                    .encode_gauge(&i64::from(eval.status == status))?;
            }
        }
        {
            let license_id = s.license.license_id().unwrap_or_default();
            let labels: [(&str, &str); 3] = [
                ("status", eval.status.as_str()),
                ("reason", eval.reason.map_or("", |r| r.as_str())),
                ("license_id", &license_id),
            ];
            encoder
                .encode_descriptor(
                    "privitty_license",
                    "The license: its status, why it is not usable (reason, empty when it is) and its id.",
                    None,
                    MetricType::Info,
                )?
                .encode_info(&labels)?;
        }
        gauge(
            &mut encoder,
            "privitty_license_expires_timestamp_seconds",
            "When the license expires into its grace period (the API's expires_at, the license's sync_by), unix seconds.",
            eval.expires_at,
        )?;
        gauge(
            &mut encoder,
            "privitty_license_sync_by_timestamp_seconds",
            "The license's sync_by claim, unix seconds: the same instant as privitty_license_expires_timestamp_seconds.",
            eval.expires_at,
        )?;
        gauge(
            &mut encoder,
            "privitty_license_grace_ends_timestamp_seconds",
            "When the grace period ends and gated calls stop (the API's grace_ends_at, the license's exp), unix seconds.",
            eval.grace_ends_at,
        )?;
        let sync = self.sync.lock().expect("sync cache lock").times;
        gauge(
            &mut encoder,
            "privitty_license_last_sync_success_timestamp_seconds",
            "The last successful exchange with the license server (sync, or the activation before any sync), unix seconds.",
            sync.last_success,
        )?;
        gauge(
            &mut encoder,
            "privitty_license_last_sync_failure_timestamp_seconds",
            "The last failed license sync since the last successful one, unix seconds.",
            sync.last_failure,
        )?;
        if let Some(g) = s.generation {
            gauge(
                &mut encoder,
                "privitty_generation",
                "The number privitty-init gave this privitty-edged generation (1 for the first).",
                Some(g.number as i64),
            )?;
            counter(
                &mut encoder,
                "privitty_generation_swaps",
                "Generations privitty-init started to replace a serving one (new license, withdrawal, SIGHUP) since it started.",
                g.swaps,
            )?;
            counter(
                &mut encoder,
                "privitty_generation_crashes",
                "Generations of privitty-edged that ended unexpectedly and were restarted, since privitty-init started.",
                g.crashes,
            )?;
        }
        if let Some(engine) = &s.engine {
            counter(
                &mut encoder,
                "privitty_engine_restarts",
                "Restarts of the messaging engine after it died, in this privitty-edged.",
                engine.restarts(),
            )?;
            gauge(
                &mut encoder,
                "privitty_engine_up",
                "1 while the messaging engine runs, 0 while it is being restarted.",
                Some(i64::from(engine.pid().is_some())),
            )?;
        }
        gauge(
            &mut encoder,
            "privitty_sse_clients",
            "Clients connected to GET /events.",
            Some(s.hub.clients() as i64),
        )?;
        gauge(
            &mut encoder,
            "privitty_edged_start_time_seconds",
            "When this privitty-edged started, unix seconds.",
            Some(licensectl::accounts::unix_secs(self.started_at)),
        )?;
        encoder
            .encode_descriptor(
                "privitty_edged_build",
                "The version of privitty-edged.",
                None,
                MetricType::Info,
            )?
            .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::Fixed;
    use licensectl::{Evaluation, Reason};

    fn metrics(status: Status, generation: Option<GenerationInfo>, recording: bool) -> Metrics {
        let license = Fixed(Evaluation {
            status,
            reason: (status == Status::NoLicense).then_some(Reason::Revoked),
            expires_at: Some(1_000),
            grace_ends_at: Some(2_000),
        });
        Metrics::new(
            Sources {
                license: Arc::new(license),
                engine: None,
                hub: Hub::new(4),
                generation,
                accounts: None,
            },
            recording,
        )
    }

    /// The value of the sample whose line starts with `series` followed by a space.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().expect("a number"))
    }

    #[tokio::test]
    async fn license_series_follow_the_evaluation() {
        let text = metrics(Status::GracePeriod, None, true).render().await;
        assert_eq!(
            sample(&text, r#"privitty_license_status{status="grace_period"}"#),
            Some(1.0)
        );
        for other in ["active", "expired", "no_license"] {
            assert_eq!(
                sample(
                    &text,
                    &format!(r#"privitty_license_status{{status="{other}"}}"#)
                ),
                Some(0.0),
                "{text}"
            );
        }
        assert_eq!(
            sample(&text, "privitty_license_expires_timestamp_seconds"),
            Some(1000.0)
        );
        assert_eq!(
            sample(&text, "privitty_license_sync_by_timestamp_seconds"),
            Some(1000.0)
        );
        assert_eq!(
            sample(&text, "privitty_license_grace_ends_timestamp_seconds"),
            Some(2000.0)
        );
        assert!(
            text.contains(
                r#"privitty_license_info{status="grace_period",reason="",license_id=""} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE privitty_license_info gauge"),
            "{text}"
        );
        assert!(!text.contains("privitty_generation"), "standalone: {text}");
        assert!(!text.contains("privitty_license_last_sync"), "{text}");

        let text = metrics(Status::NoLicense, None, true).render().await;
        assert!(
            text.contains(r#"privitty_license_info{status="no_license",reason="revoked""#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn generation_counters_come_from_privitty_init() {
        let info = GenerationInfo {
            number: 4,
            swaps: 2,
            crashes: 1,
        };
        let text = metrics(Status::Active, Some(info), true).render().await;
        assert_eq!(sample(&text, "privitty_generation"), Some(4.0));
        assert_eq!(sample(&text, "privitty_generation_swaps_total"), Some(2.0));
        assert_eq!(
            sample(&text, "privitty_generation_crashes_total"),
            Some(1.0)
        );
        assert!(
            text.contains("# TYPE privitty_generation_swaps_total counter"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn calls_are_counted_by_class_and_outcome_and_timed() {
        let m = metrics(Status::Expired, None, true);
        m.record_call(
            Class::Engine,
            "get_info",
            Ok(()),
            false,
            Some(Instant::now()),
        );
        m.record_call(
            Class::Gated,
            "privitty_send_file",
            Ok(()),
            true,
            Some(Instant::now()),
        );
        let rejected = crate::gate::rejection(&Evaluation {
            status: Status::Expired,
            reason: None,
            expires_at: Some(1),
            grace_ends_at: Some(2),
        });
        m.record_call(
            Class::Gated,
            "privitty_send_file",
            Err(&rejected),
            false,
            None,
        );
        let denied = RpcError::new(-32003, "denied");
        m.record_call(Class::Denied, "get_next_event", Err(&denied), false, None);
        m.record_invalid();
        let text = m.render().await;
        for (series, value) in [
            (
                r#"privitty_rpc_requests_total{class="engine",outcome="ok"}"#,
                1.0,
            ),
            (
                r#"privitty_rpc_requests_total{class="gated",outcome="ok"}"#,
                1.0,
            ),
            (
                r#"privitty_rpc_requests_total{class="gated",outcome="error"}"#,
                1.0,
            ),
            (
                r#"privitty_rpc_requests_total{class="denied",outcome="error"}"#,
                1.0,
            ),
            (
                r#"privitty_rpc_requests_total{class="invalid",outcome="error"}"#,
                1.0,
            ),
            (
                r#"privitty_rpc_requests_total{class="edged",outcome="ok"}"#,
                0.0,
            ),
            (r#"privitty_gate_rejections_total{status="expired"}"#, 1.0),
            (
                r#"privitty_gate_rejections_total{status="no_license"}"#,
                0.0,
            ),
            (r#"privitty_usage_total{feature="privitty_send_file"}"#, 1.0),
            (
                r#"privitty_usage_total{feature="privitty_send_group_file"}"#,
                0.0,
            ),
            (
                r#"privitty_rpc_request_duration_seconds_count{class="gated"}"#,
                1.0,
            ),
            (
                r#"privitty_rpc_request_duration_seconds_count{class="denied"}"#,
                0.0,
            ),
            ("privitty_sse_clients", 0.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        assert!(
            text.contains(
                r#"privitty_rpc_request_duration_seconds_bucket{class="engine",le="0.0001"}"#
            ),
            "{text}"
        );

        let off = metrics(Status::Active, None, false);
        off.record_call(Class::Engine, "get_info", Ok(()), false, None);
        let text = off.render().await;
        assert_eq!(
            sample(
                &text,
                r#"privitty_rpc_requests_total{class="engine",outcome="ok"}"#
            ),
            Some(0.0),
            "nothing is recorded while recording is off"
        );
    }

    #[test]
    fn sync_times_come_from_the_activation_record_and_the_sync_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        assert_eq!(sync_times(&dir), SyncTimes::default());
        std::fs::write(
            tmp.path().join("activation.json"),
            r#"{"activation_id":"a","device_secret":"s","state":"active",
                "activated_at":"2026-01-01T00:00:00Z","last_sync_ok_at":"2026-01-02T00:00:00Z",
                "last_sync_error":"2026-01-03T00:00:00Z: refused: 401 bad_secret"}"#,
        )
        .unwrap();
        let day = 86_400;
        let jan1 = 1_767_225_600;
        assert_eq!(
            sync_times(&dir),
            SyncTimes {
                last_success: Some(jan1 + day),
                last_failure: Some(jan1 + 2 * day),
            }
        );
        std::fs::write(
            tmp.path().join(licensectl::ops::SYNC_STATE_FILE),
            r#"{"last_sync_error":"x","last_sync_error_at":"2026-01-04T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(sync_times(&dir).last_failure, Some(jan1 + 3 * day));
        std::fs::write(tmp.path().join("activation.json"), "{broken").unwrap();
        assert_eq!(
            sync_times(&dir),
            SyncTimes {
                last_success: None,
                last_failure: Some(jan1 + 3 * day),
            }
        );
    }
}
