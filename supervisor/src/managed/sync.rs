//! Periodic license sync: refreshes `privitty.lic` and reports usage every
//! `PRIVITTY_LICENSE_SYNC_INTERVAL`, with jitter so a fleet started together does not call the
//! server together. The interval counts from the last successful sync recorded in
//! `activation.json`, not from start-up, so restarts do not postpone it.
//!
//! Owns the schedule only. Must not swap generations: a refreshed license is announced on the
//! channel and goes through the same check-and-swap path as a dropped file.

use std::time::{Duration, SystemTime};

use licensectl::accounts::ACTIVATION_FILE;
use licensectl::{AccountsDir, TrustedKeys};
use tokio::sync::mpsc;

/// The next wait: `interval` ± 10 %, from a uniform `unit` in [0, 1).
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    let factor = 0.9 + 0.2 * unit.clamp(0.0, 1.0);
    interval.mul_f64(factor)
}

/// How far an overdue sync after start-up is spread at most.
pub const OVERDUE_SPREAD: Duration = Duration::from_secs(10);

/// The first wait after start-up, from the last successful sync (or the activation) at `last`.
pub fn first_wait(
    interval: Duration,
    last: Option<SystemTime>,
    now: SystemTime,
    unit: f64,
) -> Duration {
    let full = jittered(interval, unit);
    // A `last` in the future (the clock went back) says nothing: wait the whole interval.
    let Some(since) = last.and_then(|last| now.duration_since(last).ok()) else {
        return full;
    };
    match full.checked_sub(since) {
        Some(rest) if !rest.is_zero() => rest,
        _ => OVERDUE_SPREAD
            .min(interval / 10)
            .mul_f64(unit.clamp(0.0, 1.0)),
    }
}

/// When `dir` last synced successfully, else when it was activated.
fn last_sync(dir: &AccountsDir) -> Option<SystemTime> {
    let activation = dir.activation().ok()??;
    let at = activation.last_sync_ok_at.or(activation.activated_at)?;
    humantime::parse_rfc3339_weak(&at).ok()
}

/// Syncs forever; sends `()` on `changed` when the server sent a new license.
pub async fn run(
    dir: AccountsDir,
    keys: TrustedKeys,
    interval: Duration,
    changed: mpsc::UnboundedSender<()>,
) {
    // Counted from the last sync rather than from start-up: a container restarted more often
    // than the interval would otherwise never sync.
    let mut wait = first_wait(
        interval,
        last_sync(&dir),
        SystemTime::now(),
        fastrand::f64(),
    );
    loop {
        tracing::debug!(next_in = %humantime::format_duration(wait), "license sync scheduled");
        tokio::time::sleep(wait).await;
        wait = jittered(interval, fastrand::f64());
        if !dir.path().join(ACTIVATION_FILE).exists() {
            tracing::debug!("no activation yet; skipping the license sync");
            continue;
        }
        match licensectl::sync(&dir, &keys).await {
            Ok(synced) => {
                tracing::info!(
                    license = %synced.license.jti,
                    changed = synced.license_changed,
                    acked_reports = synced.acked_reports,
                    "periodic license sync done"
                );
                if synced.license_changed && changed.send(()).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "license sync failed; the current license stays in use and the next sync retries"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_does_not_postpone_the_sync() {
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3600);
        let now = SystemTime::UNIX_EPOCH + 1000 * day;
        // Synced 20 h ago: the next sync is due in about 4 h, not a whole day after the restart.
        assert_eq!(first_wait(day, Some(now - 20 * hour), now, 0.5), 4 * hour);
        // Overdue (a container restarted daily would otherwise never sync): soon, spread a little.
        let overdue = first_wait(day, Some(now - 3 * day), now, 0.5);
        assert!(overdue <= OVERDUE_SPREAD, "{overdue:?}");
        assert!(first_wait(day, Some(now - 3 * day), now, 0.0) < overdue);
        // Never synced, or a clock that went back: a whole (jittered) interval.
        assert_eq!(first_wait(day, None, now, 0.5), day);
        assert_eq!(first_wait(day, Some(now + hour), now, 0.5), day);
        // A short interval spreads over a tenth of it at most.
        let second = Duration::from_secs(1);
        assert!(first_wait(second, Some(now - day), now, 0.999) <= second / 10);
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
