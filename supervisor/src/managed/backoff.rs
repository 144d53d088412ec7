//! Restart pacing: exponential backoff between restarts and the crash budget that ends a crash loop.
//!
//! Owns the arithmetic only. Must not read the clock: every method takes `now`, so the lifecycle
//! machine stays pure and these rules are tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Delay before the next restart: `initial · 2^attempt`, capped at `max`. A generation that stayed up
/// for `stable` resets it, so one crash after a long healthy run restarts quickly again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub stable: Duration,
    attempt: u32,
}

impl Backoff {
    pub const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
    pub const DEFAULT_MAX: Duration = Duration::from_secs(10);
    pub const DEFAULT_STABLE: Duration = Duration::from_secs(30);

    pub fn new(initial: Duration, max: Duration, stable: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            stable,
            attempt: 0,
        }
    }

    /// The delay for the next restart; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.attempt = self.attempt.saturating_add(1);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Forgets earlier failures when the generation that just ended had been up for `stable`.
    pub fn note_uptime(&mut self, up: Duration) {
        if up >= self.stable {
            self.attempt = 0;
        }
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(
            Backoff::DEFAULT_INITIAL,
            Backoff::DEFAULT_MAX,
            Backoff::DEFAULT_STABLE,
        )
    }
}

/// Counts unexpected exits in a sliding window; more than `limit` within `window` is a crash loop.
#[derive(Clone, Debug)]
pub struct CrashBudget {
    limit: u32,
    window: Duration,
    exits: VecDeque<Instant>,
}

impl CrashBudget {
    /// `limit` unexpected exits are tolerated; with 0, the first one already ends the loop.
    pub fn new(limit: u32, window: Duration) -> CrashBudget {
        CrashBudget {
            limit,
            window,
            exits: VecDeque::new(),
        }
    }

    /// Records one unexpected exit at `now`; true when that exhausts the budget.
    pub fn record(&mut self, now: Instant) -> bool {
        while let Some(&first) = self.exits.front() {
            if now.saturating_duration_since(first) >= self.window {
                self.exits.pop_front();
            } else {
                break;
            }
        }
        self.exits.push_back(now);
        self.exits.len() > self.limit as usize
    }

    /// Unexpected exits currently inside the window (as of the last `record`).
    pub fn recent(&self) -> usize {
        self.exits.len()
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, 30_000 * MS);
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            vec![100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
    }

    #[test]
    fn backoff_survives_many_attempts_without_overflow() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(10), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(10));
        }
    }

    #[test]
    fn a_stable_run_resets_the_backoff_and_a_short_one_does_not() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(10), Duration::from_secs(30));
        b.next_delay();
        b.next_delay();
        b.note_uptime(Duration::from_secs(29));
        assert_eq!(b.next_delay(), 400 * MS);
        b.note_uptime(Duration::from_secs(30));
        assert_eq!(b.next_delay(), 100 * MS);
    }

    #[test]
    fn crash_budget_trips_beyond_the_limit_within_the_window() {
        let t0 = Instant::now();
        let mut c = CrashBudget::new(2, Duration::from_secs(60));
        assert!(!c.record(t0));
        assert!(!c.record(t0 + Duration::from_secs(10)));
        assert!(c.record(t0 + Duration::from_secs(20)));
    }

    #[test]
    fn crash_budget_forgets_exits_older_than_the_window() {
        let t0 = Instant::now();
        let mut c = CrashBudget::new(2, Duration::from_secs(60));
        assert!(!c.record(t0));
        assert!(!c.record(t0 + Duration::from_secs(30)));
        // the first exit left the window: only two remain inside it
        assert!(!c.record(t0 + Duration::from_secs(61)));
        assert_eq!(c.recent(), 2);
        assert!(c.record(t0 + Duration::from_secs(62)));
    }

    #[test]
    fn a_zero_limit_means_the_first_exit_ends_the_loop() {
        let mut c = CrashBudget::new(0, Duration::from_secs(60));
        assert!(c.record(Instant::now()));
    }
}
