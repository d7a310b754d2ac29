//! [`Backoff`]: exponential retry delays, the one rule behind every "try again later" of the
//! node (tracker redials, relay reservations). Pure: the caller passes the time.

use std::time::{Duration, Instant};

/// A delay that starts at `min`, doubles after each failure up to `max`, and starts over after
/// a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) const fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The delay the next retry waits.
    pub(crate) fn delay(&self) -> Duration {
        self.current
    }

    /// When to try again after a failure at `now`; the delay after that doubles (up to `max`).
    pub(crate) fn failed(&mut self, now: Instant) -> Instant {
        let at = now + self.current;
        self.current = (self.current * 2).min(self.max);
        at
    }

    /// A success: the next failure waits `min` again.
    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }

    /// Changes the ceiling (the tracker names its announce interval); the current delay is
    /// capped to it.
    pub(crate) fn set_max(&mut self, max: Duration) {
        self.max = max.max(self.min);
        self.current = self.current.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling_and_start_over_after_a_success() {
        let now = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let waits: Vec<u64> = (0..6).map(|_| (b.failed(now) - now).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.failed(now) - now, Duration::from_secs(1));
        b.set_max(Duration::from_millis(1500));
        assert_eq!(
            b.delay(),
            Duration::from_millis(1500),
            "capped to the new ceiling"
        );
        b.set_max(Duration::ZERO);
        assert_eq!(b.delay(), Duration::from_secs(1), "never below the floor");
    }
}
