//! The schedule of the periodic license sync: every `PRIVITTY_LICENSE_SYNC_INTERVAL`, with jitter
//! so a fleet started together does not call the server together. The interval counts from the
//! last successful sync recorded in `activation.json`, not from start-up, so restarts do not
//! postpone it.
//!
//! Owns the arithmetic (pure, for the machine) and reading the last sync time (for the driver's
//! start-up facts). Must not run the sync: the machine runs `privitty-edge license sync` as a
//! child, and a refreshed license goes through the same check-and-swap path as a dropped file.

use std::time::{Duration, SystemTime};

use licensectl::AccountsDir;

/// The next wait: `interval` ± 10 %, from a uniform `unit` in [0, 1).
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    let factor = 0.9 + 0.2 * unit.clamp(0.0, 1.0);
    interval.mul_f64(factor)
}

/// How far an overdue sync after start-up is spread at most.
pub const OVERDUE_SPREAD: Duration = Duration::from_secs(10);

/// The first wait after start-up, `since` the last successful sync (or the activation) when that
/// is known.
pub fn first_wait(interval: Duration, since: Option<Duration>, unit: f64) -> Duration {
    let full = jittered(interval, unit);
    let Some(since) = since else {
        return full;
    };
    match full.checked_sub(since) {
        Some(rest) if !rest.is_zero() => rest,
        _ => OVERDUE_SPREAD
            .min(interval / 10)
            .mul_f64(unit.clamp(0.0, 1.0)),
    }
}

/// How long before `now` `dir` last synced successfully, else was activated; `None` when that is
/// not recorded, or recorded in the future (the clock went back: it says nothing).
pub fn since_last_sync(dir: &AccountsDir, now: SystemTime) -> Option<Duration> {
    let activation = dir.activation().ok()??;
    let at = activation.last_sync_ok_at.or(activation.activated_at)?;
    let at = humantime::parse_rfc3339_weak(&at).ok()?;
    now.duration_since(at).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_does_not_postpone_the_sync() {
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3600);
        // Synced 20 h ago: the next sync is due in about 4 h, not a whole day after the restart.
        assert_eq!(first_wait(day, Some(20 * hour), 0.5), 4 * hour);
        // Overdue (a container restarted daily would otherwise never sync): soon, spread a little.
        let overdue = first_wait(day, Some(3 * day), 0.5);
        assert!(overdue <= OVERDUE_SPREAD, "{overdue:?}");
        assert!(first_wait(day, Some(3 * day), 0.0) < overdue);
        // Never synced (or a clock that went back): a whole (jittered) interval.
        assert_eq!(first_wait(day, None, 0.5), day);
        // A short interval spreads over a tenth of it at most.
        let second = Duration::from_secs(1);
        assert!(first_wait(second, Some(day), 0.999) <= second / 10);
    }

    #[test]
    fn the_last_sync_comes_from_activation_json_and_a_future_one_says_nothing() {
        let tmp = std::env::temp_dir().join(format!("privitty-init-sync-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let dir = AccountsDir::new(&tmp);
        let now = humantime::parse_rfc3339("2026-11-27T12:00:00Z").unwrap();
        assert_eq!(since_last_sync(&dir, now), None, "no activation.json");
        std::fs::write(
            tmp.join(licensectl::accounts::ACTIVATION_FILE),
            r#"{"activation_id":"a","device_secret":"s","state":"active",
                "activated_at":"2026-11-27T10:00:00Z","last_sync_ok_at":"2026-11-27T11:00:00Z"}"#,
        )
        .unwrap();
        let since = since_last_sync(&dir, now);
        let past = humantime::parse_rfc3339("2026-11-27T10:30:00Z").unwrap();
        let _ = std::fs::remove_dir_all(&tmp);
        assert_eq!(since, Some(Duration::from_secs(3600)));
        assert_eq!(
            since_last_sync(&dir, past),
            None,
            "a sync recorded in the future"
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let day = Duration::from_secs(86_400);
        assert_eq!(jittered(day, 0.0), day.mul_f64(0.9));
        assert_eq!(jittered(day, 0.5), day);
        assert!(jittered(day, 0.999_999) <= day.mul_f64(1.1));
        assert_eq!(jittered(day, 7.0), day.mul_f64(1.1), "clamped");
    }
}
