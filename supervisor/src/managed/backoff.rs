//! Restart pacing: the crash budget that ends a crash loop, and the backoff between restarts
//! (shared with edged's engine restarts: [`privitty_base::pacing::Backoff`]).
//!
//! Owns the arithmetic only. Must not read the clock: every method takes `now`, so the lifecycle
//! machine stays pure and these rules are tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use privitty_base::pacing::Backoff;

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
