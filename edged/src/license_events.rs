//! License events on `/events` and in the log: `PrivittyLicenseStatusChanged` when the evaluated
//! status changes while edged runs (time passing: `active → grace_period → expired`, with no file
//! changing), `PrivittyLicenseExpiring` once a day from `PRIVITTY_LICENSE_WARN_BEFORE` before the
//! next deadline, and the snapshot every `/events` connection starts with.
//!
//! Owns: the shapes of these events, the watch loop that wakes at the license's next transition
//! (and at least every [`RECHECK`], so a clock that jumps is followed), and the snapshot. Must not:
//! re-read license files (a new license comes with a new generation, and its clients reconnect to
//! the snapshot) or decide what the gate allows.
//!
//! Why a snapshot instead of event ids and a replay: a license change usually means a generation
//! swap, and the new process has no history to replay. Every connection therefore begins with
//! `PrivittyLicenseStatus` (the status now), followed by `PrivittyLicenseExpiring` when a warning
//! applies, so a client that reconnects (as `EventSource` does) never misses where the license is.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use licensectl::accounts::unix_secs;
use licensectl::{Evaluation, Status};
use serde::Serialize;
use tokio::sync::watch;

use crate::events::Hub;
use crate::license::License;

/// The status is evaluated again at least this often, whatever the license's next deadline.
pub const RECHECK: Duration = Duration::from_secs(60);
/// `PrivittyLicenseExpiring` is repeated this often while it applies.
pub const WARN_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// The wall clock the license is evaluated against (tests drive it with tokio's paused clock).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// The license's status as last published, and what a new `/events` connection is told first.
pub struct LicenseEvents {
    license: Arc<dyn License>,
    warn_before: Option<Duration>,
    clock: Clock,
    generation: Option<u64>,
    current: Mutex<Evaluation>,
}

impl std::fmt::Debug for LicenseEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseEvents")
            .field("warn_before", &self.warn_before)
            .field("generation", &self.generation)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl LicenseEvents {
    /// `warn_before` = `None`: no expiry warnings. `generation`: privitty-init's number for this
    /// process, shown in the snapshot.
    pub fn new(
        license: Arc<dyn License>,
        warn_before: Option<Duration>,
        clock: Clock,
        generation: Option<u64>,
    ) -> Arc<LicenseEvents> {
        let current = license.evaluate(clock());
        Arc::new(LicenseEvents {
            license,
            warn_before,
            clock,
            generation,
            current: Mutex::new(current),
        })
    }

    /// The status last published.
    pub fn current(&self) -> Evaluation {
        self.current.lock().expect("license events lock").clone()
    }

    /// The events a new `/events` connection starts with (serialized): `PrivittyLicenseStatus`,
    /// then `PrivittyLicenseExpiring` when a warning applies now. The caller subscribes to the hub
    /// before asking, so a change published meanwhile arrives after this (at worst twice), never
    /// not at all.
    pub fn greeting(&self) -> Vec<String> {
        let eval = self.current();
        let mut out = vec![status_event(&eval, self.generation).text()];
        let now = (self.clock)();
        if let Some((next, at)) = next_change(&eval)
            && self.within_warning(now, at)
        {
            out.push(expiring_event(&eval, next, at, now).text());
        }
        out
    }

    fn within_warning(&self, now: SystemTime, at: i64) -> bool {
        self.warn_before.is_some_and(|before| {
            unix_secs(now) >= at.saturating_sub(before.as_secs().min(i64::MAX as u64) as i64)
        })
    }

    /// Publishes the changes and warnings until `stop` turns true.
    pub async fn run(self: Arc<LicenseEvents>, hub: Hub, mut stop: watch::Receiver<bool>) {
        let mut last_warned: Option<SystemTime> = None;
        loop {
            let now = (self.clock)();
            let eval = self.license.evaluate(now);
            let previous = std::mem::replace(
                &mut *self.current.lock().expect("license events lock"),
                eval.clone(),
            );
            if previous.status != eval.status {
                tracing::warn!(
                    status = eval.status.as_str(),
                    previous = previous.status.as_str(),
                    reason = eval.reason.map(|r| r.as_str()),
                    expires_at = eval.expires_at,
                    grace_ends_at = eval.grace_ends_at,
                    "license status changed"
                );
                hub.publish(&changed_event(&eval, previous.status));
            }
            let mut wait = RECHECK;
            if let Some((next, at)) = next_change(&eval) {
                // A license that did not move on at its deadline does not follow the clock (a
                // fixed one): wait the recheck interval rather than spin.
                if at > unix_secs(now) {
                    wait = wait.min(until(now, at));
                }
                if let Some(before) = self.warn_before {
                    if self.within_warning(now, at) {
                        let due = last_warned.is_none_or(|w| {
                            now.duration_since(w).unwrap_or(Duration::ZERO) >= WARN_EVERY
                        });
                        if due {
                            let event = expiring_event(&eval, next, at, now);
                            tracing::warn!(
                                status = eval.status.as_str(),
                                next_status = next.as_str(),
                                at,
                                in_seconds = event.in_seconds,
                                expires_at = eval.expires_at,
                                grace_ends_at = eval.grace_ends_at,
                                "license expiring: renew it (privitty-edge license sync, or license activate <url>)"
                            );
                            hub.publish(&event);
                            last_warned = Some(now);
                        }
                        if let Some(next_warning) =
                            last_warned.and_then(|w| w.checked_add(WARN_EVERY))
                        {
                            wait = wait.min(next_warning.duration_since(now).unwrap_or(RECHECK));
                        }
                    } else {
                        let from = at.saturating_sub(before.as_secs().min(i64::MAX as u64) as i64);
                        wait = wait.min(until(now, from));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = crate::stopped(&mut stop) => return,
            }
        }
    }
}

/// The next status the clock alone leads to, and when (unix seconds).
pub fn next_change(eval: &Evaluation) -> Option<(Status, i64)> {
    match (eval.status, eval.expires_at, eval.grace_ends_at) {
        (Status::Active, Some(sync_by), Some(exp)) if sync_by < exp => {
            Some((Status::GracePeriod, sync_by))
        }
        (Status::Active | Status::GracePeriod, _, Some(exp)) => Some((Status::Expired, exp)),
        _ => None,
    }
}

/// From `now` to unix second `at` (zero when it passed; [`RECHECK`] when it is out of range).
fn until(now: SystemTime, at: i64) -> Duration {
    let Ok(at) = u64::try_from(at) else {
        return Duration::ZERO;
    };
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(at))
        .map_or(RECHECK, |t| t.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The fields every license event has, in the documented order (`type` first).
#[derive(Clone, Debug, Serialize)]
pub struct LicenseEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_seconds: Option<i64>,
    pub reason: Option<&'static str>,
    pub expires_at: Option<i64>,
    pub grace_ends_at: Option<i64>,
    /// Only in the snapshot: privitty-init's number for this generation (`null` standalone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<Option<u64>>,
}

impl LicenseEvent {
    fn of(kind: &'static str, eval: &Evaluation) -> LicenseEvent {
        LicenseEvent {
            kind,
            status: eval.status.as_str(),
            previous: None,
            next_status: None,
            at: None,
            in_seconds: None,
            reason: eval.reason.map(|r| r.as_str()),
            expires_at: eval.expires_at,
            grace_ends_at: eval.grace_ends_at,
            generation: None,
        }
    }

    pub fn text(&self) -> String {
        serde_json::to_string(self).expect("license events serialize")
    }
}

/// `PrivittyLicenseStatus`: the status now (the first event of every `/events` connection).
pub fn status_event(eval: &Evaluation, generation: Option<u64>) -> LicenseEvent {
    LicenseEvent {
        generation: Some(generation),
        ..LicenseEvent::of("PrivittyLicenseStatus", eval)
    }
}

/// `PrivittyLicenseStatusChanged`.
pub fn changed_event(eval: &Evaluation, previous: Status) -> LicenseEvent {
    LicenseEvent {
        previous: Some(previous.as_str()),
        ..LicenseEvent::of("PrivittyLicenseStatusChanged", eval)
    }
}

/// `PrivittyLicenseExpiring`: `next` status at unix second `at`.
pub fn expiring_event(eval: &Evaluation, next: Status, at: i64, now: SystemTime) -> LicenseEvent {
    LicenseEvent {
        next_status: Some(next.as_str()),
        at: Some(at),
        in_seconds: Some(at.saturating_sub(unix_secs(now)).max(0)),
        ..LicenseEvent::of("PrivittyLicenseExpiring", eval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use tokio::sync::broadcast;

    /// The status rules of license-protocol.md for a license valid until `sync_by` (then grace
    /// until `exp`), against the clock it is asked with.
    #[derive(Debug)]
    struct Timed {
        sync_by: i64,
        exp: i64,
    }

    impl License for Timed {
        fn evaluate(&self, now: SystemTime) -> Evaluation {
            let t = unix_secs(now);
            let status = if t >= self.exp {
                Status::Expired
            } else if t >= self.sync_by {
                Status::GracePeriod
            } else {
                Status::Active
            };
            Evaluation {
                status,
                reason: None,
                expires_at: Some(self.sync_by),
                grace_ends_at: Some(self.exp),
            }
        }
    }

    /// A wall clock that moves with tokio's (paused) clock, starting at unix second `start`.
    fn paused_clock(start: i64) -> Clock {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(start as u64);
        let origin = tokio::time::Instant::now();
        Arc::new(move || base + origin.elapsed())
    }

    async fn next(rx: &mut broadcast::Receiver<Arc<str>>) -> Value {
        let text = rx.recv().await.expect("an event");
        assert!(
            text.starts_with(r#"{"type":"PrivittyLicense"#),
            "type first: {text}"
        );
        serde_json::from_str(&text).unwrap()
    }

    const T0: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    #[tokio::test(start_paused = true)]
    async fn time_passing_changes_the_status_and_warns_once_a_day() {
        let hub = Hub::new(64);
        let mut rx = hub.subscribe();
        // Active for 20 days, then 3 days of grace.
        let license = Arc::new(Timed {
            sync_by: T0 + 20 * DAY,
            exp: T0 + 23 * DAY,
        });
        let events = LicenseEvents::new(
            license,
            Some(Duration::from_secs(14 * DAY as u64)),
            paused_clock(T0),
            Some(3),
        );
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(events.clone().run(hub.clone(), stop));

        // Paused clock: each recv lets time jump to the watcher's next wake-up.
        let warn = next(&mut rx).await;
        assert_eq!(warn["type"], "PrivittyLicenseExpiring");
        assert_eq!(warn["status"], "active");
        assert_eq!(warn["next_status"], "grace_period");
        assert_eq!(warn["at"], T0 + 20 * DAY);
        assert_eq!(warn["in_seconds"], 14 * DAY, "14 days before: {warn}");
        for day in 1..6 {
            let again = next(&mut rx).await;
            assert_eq!(again["type"], "PrivittyLicenseExpiring", "day {day}");
            assert_eq!(again["in_seconds"], (14 - day) * DAY, "once a day: {again}");
        }
        // Warnings every day until day 20, when grace starts; expired on day 23.
        let mut seen = Vec::new();
        while seen.len() < 50 {
            let e = next(&mut rx).await;
            let done = e["type"] == "PrivittyLicenseStatusChanged" && e["status"] == "expired";
            seen.push(e);
            if done {
                break;
            }
        }
        let changes: Vec<&Value> = seen
            .iter()
            .filter(|e| e["type"] == "PrivittyLicenseStatusChanged")
            .collect();
        assert_eq!(changes.len(), 2, "{seen:#?}");
        assert_eq!(
            *changes[0],
            json!({"type":"PrivittyLicenseStatusChanged","status":"grace_period","previous":"active",
                   "reason":null,"expires_at":T0 + 20 * DAY,"grace_ends_at":T0 + 23 * DAY})
        );
        assert_eq!(changes[1]["status"], "expired");
        assert_eq!(changes[1]["previous"], "grace_period");
        assert!(
            seen.iter()
                .any(|e| e["type"] == "PrivittyLicenseExpiring" && e["next_status"] == "expired"),
            "in grace, the warning names the end of grace: {seen:#?}"
        );
        // Expired: nothing more to say, and the snapshot tells a new client where things are.
        assert_eq!(events.current().status, Status::Expired);
        let greeting = events.greeting();
        assert_eq!(greeting.len(), 1);
        let first: Value = serde_json::from_str(&greeting[0]).unwrap();
        assert_eq!(
            first,
            json!({"type":"PrivittyLicenseStatus","status":"expired","reason":null,
                   "expires_at":T0 + 20 * DAY,"grace_ends_at":T0 + 23 * DAY,"generation":3})
        );
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_greeting_carries_a_warning_that_applies_and_zero_turns_warnings_off() {
        let license = Arc::new(Timed {
            sync_by: T0 + 2 * DAY,
            exp: T0 + 9 * DAY,
        });
        let events = LicenseEvents::new(
            license.clone(),
            Some(Duration::from_secs(3 * DAY as u64)),
            paused_clock(T0),
            None,
        );
        let greeting = events.greeting();
        assert_eq!(greeting.len(), 2, "{greeting:?}");
        let warn: Value = serde_json::from_str(&greeting[1]).unwrap();
        assert_eq!(warn["type"], "PrivittyLicenseExpiring");
        assert_eq!(warn["in_seconds"], 2 * DAY);

        let quiet = LicenseEvents::new(license, None, paused_clock(T0), None);
        assert_eq!(quiet.greeting().len(), 1);
        let hub = Hub::new(8);
        let mut rx = hub.subscribe();
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(quiet.run(hub.clone(), stop));
        // The first event is the change to grace two days later: no warning before it.
        let e = next(&mut rx).await;
        assert_eq!(e["type"], "PrivittyLicenseStatusChanged");
        assert_eq!(e["status"], "grace_period");
    }

    #[tokio::test(start_paused = true)]
    async fn a_license_that_ignores_the_clock_does_not_make_the_watcher_spin() {
        let fixed = crate::license::Fixed(Evaluation {
            status: Status::Active,
            reason: None,
            expires_at: Some(1),
            grace_ends_at: Some(2),
        });
        let events = LicenseEvents::new(
            Arc::new(fixed),
            Some(Duration::from_secs(60)),
            paused_clock(T0),
            None,
        );
        let hub = Hub::new(8);
        let mut rx = hub.subscribe();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(events.run(hub.clone(), stop));
        let first = next(&mut rx).await;
        assert_eq!(first["type"], "PrivittyLicenseExpiring");
        let started = tokio::time::Instant::now();
        let second = next(&mut rx).await;
        assert_eq!(second["type"], "PrivittyLicenseExpiring");
        assert!(
            started.elapsed() >= WARN_EVERY - RECHECK,
            "the next warning a day later, not at once"
        );
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn next_change_follows_the_status_table() {
        let e = |status, s, x| Evaluation {
            status,
            reason: None,
            expires_at: s,
            grace_ends_at: x,
        };
        assert_eq!(
            next_change(&e(Status::Active, Some(10), Some(20))),
            Some((Status::GracePeriod, 10))
        );
        assert_eq!(
            next_change(&e(Status::Active, Some(20), Some(20))),
            Some((Status::Expired, 20)),
            "no grace period at all"
        );
        assert_eq!(
            next_change(&e(Status::GracePeriod, Some(10), Some(20))),
            Some((Status::Expired, 20))
        );
        assert_eq!(next_change(&e(Status::Expired, Some(10), Some(20))), None);
        assert_eq!(next_change(&e(Status::NoLicense, None, None)), None);
    }
}
