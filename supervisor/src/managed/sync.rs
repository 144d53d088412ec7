//! Periodic license sync: refreshes `privitty.lic` and reports usage every
//! `PRIVITTY_LICENSE_SYNC_INTERVAL`, with jitter so a fleet started together does not call the
//! server together.
//!
//! Owns the schedule only. Must not swap generations: a refreshed license is announced on the
//! channel and goes through the same check-and-swap path as a dropped file.

use std::time::Duration;

use licensectl::accounts::ACTIVATION_FILE;
use licensectl::{AccountsDir, TrustedKeys};
use tokio::sync::mpsc;

/// The next wait: `interval` ± 10 %, from a uniform `unit` in [0, 1).
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    let factor = 0.9 + 0.2 * unit.clamp(0.0, 1.0);
    interval.mul_f64(factor)
}

/// Syncs forever; sends `()` on `changed` when the server sent a new license.
pub async fn run(
    dir: AccountsDir,
    keys: TrustedKeys,
    interval: Duration,
    changed: mpsc::UnboundedSender<()>,
) {
    loop {
        let wait = jittered(interval, fastrand::f64());
        tracing::debug!(next_in = %humantime::format_duration(wait), "license sync scheduled");
        tokio::time::sleep(wait).await;
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
    fn jitter_stays_within_ten_percent() {
        let day = Duration::from_secs(86_400);
        assert_eq!(jittered(day, 0.0), day.mul_f64(0.9));
        assert_eq!(jittered(day, 0.5), day);
        assert!(jittered(day, 0.999_999) <= day.mul_f64(1.1));
        assert_eq!(jittered(day, 7.0), day.mul_f64(1.1), "clamped");
    }
}
