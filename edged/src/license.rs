//! The license as edged holds it for its whole life: loaded once at start-up, evaluated against the
//! clock on every gated call, usage counted, counters and the high-water mark written back.
//!
//! Owns: the [`License`] seam (so the gate and the server can be exercised with a fixed status) and
//! the periodic write-back. Must not: re-read license files after start-up (a new license arrives
//! only with a new generation) or decide which methods are gated.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use licensectl::keys::KeySources;
use licensectl::{AccountsDir, Evaluation, LoadedLicense, TrustedKeys, UsageCounters};

/// Usage counters are merged into the store this often (and at shutdown).
pub const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// The high-water mark is persisted at most this often (and at shutdown).
pub const HIGH_WATER_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// What the gate and the server need from a license.
pub trait License: Send + Sync + std::fmt::Debug + 'static {
    /// Status at `now` (advances the in-memory high-water mark).
    fn evaluate(&self, now: SystemTime) -> Evaluation;
    /// The time access rules use, Unix seconds: `now`, never earlier than the highest time this
    /// license has seen (a clock set back does not extend a grant).
    fn trusted_now(&self, now: SystemTime) -> i64 {
        unix_seconds(now)
    }
    /// The license's id (the `sub` claim, never the delivery TOKEN), when there is one.
    fn license_id(&self) -> Option<String> {
        None
    }
    /// Counts one successful gated call.
    fn record_use(&self, _method: &str) {}
    /// Writes pending usage counters to the accounts directory.
    fn flush_usage(&self) -> Result<(), licensectl::Error> {
        Ok(())
    }
    /// Writes the high-water mark to the accounts directory.
    fn persist_high_water(&self) -> Result<(), licensectl::Error> {
        Ok(())
    }
}

/// A license with one fixed evaluation, for tests and for embedding edged without license files.
#[derive(Debug, Clone)]
pub struct Fixed(pub Evaluation);

impl License for Fixed {
    fn evaluate(&self, _now: SystemTime) -> Evaluation {
        self.0.clone()
    }
}

/// The real thing: the files of the accounts directory as read at start-up.
#[derive(Debug)]
pub struct Loaded {
    dir: AccountsDir,
    license: LoadedLicense,
    usage: UsageCounters,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cannot load the trusted license keys (check /etc/privitty/license-keys and PRIVITTY_LICENSE_PUBKEY)"
    )]
    Keys(#[source] Box<licensectl::Error>),
    #[error("cannot read the license files in {path}")]
    Files {
        path: std::path::PathBuf,
        #[source]
        source: Box<licensectl::Error>,
    },
}

impl Loaded {
    /// Reads the license files once. Invalid or missing files load as `no_license`, not as errors.
    pub fn load(accounts: &std::path::Path) -> Result<Loaded, LoadError> {
        let dir = AccountsDir::new(accounts);
        let keys =
            TrustedKeys::load(&KeySources::from_env()).map_err(|e| LoadError::Keys(Box::new(e)))?;
        let license = LoadedLicense::load(&dir, &keys).map_err(|source| LoadError::Files {
            path: accounts.to_path_buf(),
            source: Box::new(source),
        })?;
        Ok(Loaded {
            dir,
            license,
            usage: UsageCounters::new(),
        })
    }
}

impl License for Loaded {
    fn evaluate(&self, now: SystemTime) -> Evaluation {
        self.license.evaluate(now)
    }

    fn trusted_now(&self, now: SystemTime) -> i64 {
        let _ = self.license.evaluate(now);
        unix_seconds(now).max(self.license.high_water())
    }

    fn license_id(&self) -> Option<String> {
        self.license.claims().map(|c| c.sub.clone())
    }

    fn record_use(&self, method: &str) {
        self.usage.increment(method);
    }

    fn flush_usage(&self) -> Result<(), licensectl::Error> {
        self.usage.flush(&self.dir)
    }

    fn persist_high_water(&self) -> Result<(), licensectl::Error> {
        // The license-aware write follows a reset made by a sync since this generation loaded.
        self.license.persist_high_water(&self.dir)
    }
}

/// Flushes usage every [`USAGE_FLUSH_INTERVAL`] and the high-water mark every [`HIGH_WATER_INTERVAL`]
/// until `stop` fires, then once more each.
pub async fn write_back(license: Arc<dyn License>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut usage_tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
    let mut hw_tick = tokio::time::interval(HIGH_WATER_INTERVAL);
    usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    hw_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Both intervals fire at once at the start; nothing is pending yet, so skip that round.
    usage_tick.tick().await;
    hw_tick.tick().await;
    loop {
        tokio::select! {
            _ = usage_tick.tick() => flush(&license, false).await,
            _ = hw_tick.tick() => flush(&license, true).await,
            _ = crate::stopped(&mut stop) => break,
        }
    }
    flush(&license, false).await;
    flush(&license, true).await;
}

async fn flush(license: &Arc<dyn License>, high_water: bool) {
    let l = license.clone();
    let res = tokio::task::spawn_blocking(move || {
        if high_water {
            l.persist_high_water()
        } else {
            l.flush_usage()
        }
    })
    .await;
    let what = if high_water {
        "high-water mark"
    } else {
        "usage counters"
    };
    match res {
        Ok(Ok(())) => tracing::debug!(what, "license state written"),
        Ok(Err(e)) => tracing::warn!(what, error = %e, "cannot write license state; will retry"),
        Err(e) => tracing::warn!(what, error = %e, "license write-back task failed"),
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, Default)]
    struct Counting {
        usage: AtomicU32,
        high_water: AtomicU32,
    }

    impl License for Counting {
        fn evaluate(&self, _now: SystemTime) -> Evaluation {
            Evaluation {
                status: licensectl::Status::Active,
                reason: None,
                expires_at: None,
                grace_ends_at: None,
            }
        }
        fn flush_usage(&self) -> Result<(), licensectl::Error> {
            self.usage.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn persist_high_water(&self) -> Result<(), licensectl::Error> {
            self.high_water.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_back_on_schedule_and_at_stop() {
        let counting = Arc::new(Counting::default());
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(write_back(counting.clone(), stop));
        // Paused clock: sleeping advances it instantly once every task is idle.
        tokio::time::sleep(HIGH_WATER_INTERVAL + Duration::from_secs(1)).await;
        assert_eq!(
            counting.usage.load(Ordering::SeqCst),
            15,
            "every minute for 15 min"
        );
        assert_eq!(
            counting.high_water.load(Ordering::SeqCst),
            1,
            "once per 15 min"
        );
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(
            counting.usage.load(Ordering::SeqCst),
            16,
            "and once at stop"
        );
        assert_eq!(counting.high_water.load(Ordering::SeqCst), 2);
    }
}
