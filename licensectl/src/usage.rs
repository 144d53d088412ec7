//! Usage counters: edged counts successful gated calls in memory and flushes them into the usage store
//! in the accounts directory; `sync` closes the open period into reports with a `report_id` and sends
//! them until the server acknowledges them (idempotent per `report_id`).
//!
//! Owns: `usage.json` (`{"open":{"period_start","counters"},"pending":[report…]}`, unix seconds).
//! Must not: talk to the network (ops.rs sends the reports).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::accounts::{AccountsDir, read_optional};
use crate::error::Error;
use crate::vocab::{MAX_META_BYTES, unix_secs};

pub use crate::vocab::USAGE_FILE;
/// Reports kept while the server does not acknowledge them; the oldest are dropped beyond this so
/// a device that never syncs does not grow the file without bound.
pub const MAX_PENDING_REPORTS: usize = 1000;

#[derive(Debug, Default)]
pub struct UsageCounters {
    pending: Mutex<BTreeMap<String, u64>>,
}

impl UsageCounters {
    pub fn new() -> UsageCounters {
        UsageCounters::default()
    }

    pub fn increment(&self, name: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(name) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                pending.insert(name.to_string(), 1);
            }
        }
    }

    /// Counts not yet flushed (for tests and diagnostics).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Merges the pending counts into the store under the lock and clears them. On error the counts
    /// stay pending in memory. Blocking (file lock and fsync): call it from `spawn_blocking` in
    /// async code.
    pub fn flush(&self, dir: &AccountsDir) -> Result<(), Error> {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if taken.is_empty() {
            return Ok(());
        }
        let result = (|| {
            let _lock = dir.lock_blocking()?;
            let mut store = UsageStore::read(dir)?;
            store.add(&taken, SystemTime::now());
            store.write(dir)
        })();
        if result.is_err() {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (name, n) in taken {
                let slot = pending.entry(name).or_insert(0);
                *slot = slot.saturating_add(n);
            }
        }
        result
    }
}

/// One closed period, as sent in a sync request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub report_id: String,
    pub period_start: i64,
    pub period_end: i64,
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPeriod {
    pub period_start: i64,
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

/// The content of `usage.json`. Callers hold the directory lock between `read` and `write`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageStore {
    #[serde(default)]
    pub open: Option<OpenPeriod>,
    #[serde(default)]
    pub pending: Vec<UsageReport>,
}

impl UsageStore {
    /// Reads the store; absent → empty. A corrupt file is an error (a flush must not erase it).
    pub fn read(dir: &AccountsDir) -> Result<UsageStore, Error> {
        let path = dir.file(USAGE_FILE);
        let Some(bytes) = read_optional(&path, MAX_META_BYTES)? else {
            return Ok(UsageStore::default());
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::CorruptFile {
            path,
            problem: e.to_string(),
            remedy: "delete it (unsent usage counts are lost) and run the command again",
        })
    }

    pub fn write(&self, dir: &AccountsDir) -> Result<(), Error> {
        let json = serde_json::to_vec(self).expect("usage store serializes");
        dir.write_atomic(USAGE_FILE, &json, 0o600)
    }

    pub fn add(&mut self, counts: &BTreeMap<String, u64>, now: SystemTime) {
        let open = self.open.get_or_insert_with(|| OpenPeriod {
            period_start: unix_secs(now),
            ..Default::default()
        });
        for (name, n) in counts {
            let slot = open.counters.entry(name.clone()).or_insert(0);
            *slot = slot.saturating_add(*n);
        }
    }

    /// Closes the open period (if it counted anything) into a pending report with a fresh
    /// `report_id`. Returns true when a report was added.
    pub fn close_period(&mut self, now: SystemTime) -> bool {
        let Some(open) = self.open.take() else {
            return false;
        };
        if open.counters.values().all(|n| *n == 0) {
            return false;
        }
        self.pending.push(UsageReport {
            report_id: uuid::Uuid::new_v4().to_string(),
            period_start: open.period_start,
            period_end: unix_secs(now).max(open.period_start),
            counters: open.counters,
        });
        if self.pending.len() > MAX_PENDING_REPORTS {
            let excess = self.pending.len() - MAX_PENDING_REPORTS;
            self.pending.drain(..excess);
        }
        true
    }

    /// Drops the reports the server acknowledged; returns how many were dropped.
    pub fn remove_acked(&mut self, acked: &[String]) -> usize {
        let before = self.pending.len();
        self.pending.retain(|r| !acked.contains(&r.report_id));
        before - self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counters_flush_merge_and_close_into_reports() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        let counters = UsageCounters::new();
        counters.flush(&dir).unwrap();
        assert!(
            !dir.file(USAGE_FILE).exists(),
            "an empty flush writes nothing"
        );
        counters.increment("privitty_send_file");
        counters.increment("privitty_send_file");
        counters.increment("privitty_revoke_file_access");
        counters.flush(&dir).unwrap();
        assert!(counters.snapshot().is_empty());
        counters.increment("privitty_send_file");
        counters.flush(&dir).unwrap();

        let mut store = UsageStore::read(&dir).unwrap();
        let open = store.open.clone().unwrap();
        assert_eq!(open.counters["privitty_send_file"], 3);
        assert_eq!(open.counters["privitty_revoke_file_access"], 1);

        let later = SystemTime::now() + Duration::from_secs(60);
        assert!(store.close_period(later));
        assert!(!store.close_period(later), "nothing left to close");
        store.write(&dir).unwrap();
        let round = UsageStore::read(&dir).unwrap();
        assert_eq!(round, store);
        assert_eq!(round.pending.len(), 1);
        let report = round.pending[0].clone();
        assert!(uuid::Uuid::parse_str(&report.report_id).is_ok());
        assert!(report.period_end >= report.period_start);

        let mut store = round;
        assert_eq!(store.remove_acked(&["other".into()]), 0);
        assert_eq!(
            store.remove_acked(std::slice::from_ref(&report.report_id)),
            1
        );
        assert!(store.pending.is_empty());
    }

    #[test]
    fn failed_flush_keeps_counts_in_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path().join("missing"));
        let counters = UsageCounters::new();
        counters.increment("a");
        assert!(counters.flush(&dir).is_err());
        counters.increment("a");
        assert_eq!(counters.snapshot()["a"], 2);
    }

    #[test]
    fn corrupt_store_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        std::fs::write(dir.file(USAGE_FILE), "{oops").unwrap();
        let counters = UsageCounters::new();
        counters.increment("a");
        assert_eq!(
            counters.flush(&dir).unwrap_err().kind(),
            crate::ErrorKind::LocalFiles
        );
        assert_eq!(
            std::fs::read_to_string(dir.file(USAGE_FILE)).unwrap(),
            "{oops"
        );
    }
}
