//! Restart pacing: the exponential backoff between attempts that privitty-init uses for edged
//! generations and start-up activation, and edged for its engine.
//!
//! Owns the arithmetic only. Must not read the clock: callers pass the uptime, so the rules are
//! tested without waiting. Imports nothing from this crate (leaf layer).

use std::time::Duration;

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
}
