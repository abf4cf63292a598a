//! Exponential backoff with jitter for retryable failures.

use std::time::Duration;

/// How retryable failures are retried.
///
/// Attempt `n` (counting the first retry as 1) waits
/// `d = min(max_delay, base_delay * 2^(n-1))` scaled into `[d/2, d)` by a
/// random jitter, and no retry starts once `max_elapsed` has passed since
/// the first attempt started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Total attempts, including the first (1 means no retry).
    pub max_attempts: u32,
    /// The delay before the first retry, before jitter.
    pub base_delay: Duration,
    /// The largest delay between attempts.
    pub max_delay: Duration,
    /// No retry starts after this much time since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(30 * 60),
            max_elapsed: Duration::from_secs(6 * 3600),
        }
    }
}

impl RetryPolicy {
    /// A policy with the given limits.
    pub fn new(
        max_attempts: u32,
        base_delay: Duration,
        max_delay: Duration,
        max_elapsed: Duration,
    ) -> Self {
        Self {
            max_attempts,
            base_delay,
            max_delay,
            max_elapsed,
        }
    }

    /// The delay before retry number `retry` (1-based) without jitter.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(31);
        self.base_delay
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delay before retry number `retry` with `jitter` in `[0, 1)`:
    /// `ceiling / 2 + ceiling / 2 * jitter`.
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// The delay before the next attempt, or `None` when no retry is left:
    /// `attempts` were made so far and `elapsed` has passed since the first.
    pub fn next_delay(&self, attempts: u32, elapsed: Duration, jitter: f64) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay = self.delay(attempts, jitter);
        (elapsed + delay <= self.max_elapsed).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(
            6,
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let got: Vec<u64> = (1..=6).map(|n| policy().ceiling(n).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 60, 60, 60]);
    }

    #[test]
    fn jitter_spans_the_upper_half() {
        assert_eq!(policy().delay(2, 0.0), Duration::from_secs(10));
        assert_eq!(policy().delay(2, 0.5), Duration::from_secs(15));
        assert!(policy().delay(2, 0.999) < Duration::from_secs(20));
    }

    #[test]
    fn stops_after_max_attempts_and_max_elapsed() {
        let p = policy();
        assert!(p.next_delay(5, Duration::ZERO, 0.0).is_some());
        assert!(p.next_delay(6, Duration::ZERO, 0.0).is_none());
        assert!(p.next_delay(1, Duration::from_secs(3596), 0.0).is_none());
        assert_eq!(
            p.next_delay(1, Duration::from_secs(3590), 0.0),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        assert_eq!(policy().ceiling(u32::MAX), Duration::from_secs(60));
    }
}
