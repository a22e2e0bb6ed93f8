//! Retry policy: when a failed attempt may be tried again, and how long to wait first.
//!
//! The decision (`allows_another`) is pure and deterministic. The delay (`delay_after`) uses the
//! `backoff` crate's exponential backoff with jitter, so it is random (a seeded engine passes its
//! own draw to `delay_with_jitter` instead); the driver calls it and
//! journals the resulting deadline (`next_retry_at`), which is what survives a restart. `backoff`
//! is used only in this file, so it could be swapped here alone.

use std::time::Duration;

use backoff::backoff::Backoff;
use serde::{Deserialize, Serialize};

/// Per-step retry policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Delay before the second attempt.
    pub initial_interval: Duration,
    /// Factor applied to the delay after each failure.
    pub multiplier: f64,
    /// Cap on the delay.
    pub max_interval: Duration,
    /// Jitter: the delay is drawn from `delay * (1 ± randomization_factor)`.
    pub randomization_factor: f64,
    /// Most attempts that may fail before the step gives up (`None`: no limit by count).
    pub max_attempts: Option<u32>,
    /// Longest time from the step's scheduling to its last attempt (`None`: no limit by time).
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    /// 1 s, doubling, capped at 60 s, ±20 % jitter, at most 5 failed attempts, no time limit.
    fn default() -> Self {
        RetryPolicy {
            initial_interval: Duration::from_secs(1),
            multiplier: 2.0,
            max_interval: Duration::from_secs(60),
            randomization_factor: 0.2,
            max_attempts: Some(5),
            max_elapsed: None,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: Some(1),
            ..RetryPolicy::default()
        }
    }

    /// Sets the most failed attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// Sets the first delay (and keeps the cap at least as large).
    pub fn initial_interval(mut self, d: Duration) -> Self {
        self.initial_interval = d;
        self.max_interval = self.max_interval.max(d);
        self
    }

    /// Sets the cap on the delay.
    pub fn max_interval(mut self, d: Duration) -> Self {
        self.max_interval = d;
        self
    }

    /// Sets the time limit from scheduling.
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// Whether, after `failures` failed attempts (the last one `retryable` or not), another
    /// attempt is allowed, `elapsed` after the step was first scheduled. Pure.
    pub fn allows_another(&self, failures: u32, retryable: bool, elapsed: Duration) -> bool {
        if !retryable {
            return false;
        }
        if self.max_attempts.is_some_and(|max| failures >= max) {
            return false;
        }
        if let Some(limit) = self.max_elapsed {
            if elapsed.saturating_add(self.base_delay(failures)) > limit {
                return false;
            }
        }
        true
    }

    /// The delay before the attempt that follows the `failures`-th failure, without jitter.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let exp = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_interval.as_secs_f64() * self.multiplier.powi(exp);
        let capped = secs.min(self.max_interval.as_secs_f64());
        // Huge or non-finite values (a huge interval or multiplier) saturate at the cap.
        Duration::try_from_secs_f64(capped.max(0.0)).unwrap_or(self.max_interval)
    }

    /// The delay before the next attempt, with the jitter given as a uniform draw `unit` in
    /// `[0, 1)` (a seeded engine's): `base * (1 ± randomization_factor)`, capped. Pure.
    pub fn delay_with_jitter(&self, failures: u32, unit: f64) -> Duration {
        let base = self.base_delay(failures);
        let factor = self.randomization_factor.clamp(0.0, 1.0);
        let scale = 1.0 - factor + 2.0 * factor * unit.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * scale)
            .unwrap_or(base)
            .min(self.max_interval)
    }

    /// The delay before the next attempt, with jitter (from `backoff`). A delay too large for
    /// meaningful jitter is used as it is.
    pub fn delay_after(&self, failures: u32) -> Duration {
        // Keep `backoff`'s f64 arithmetic well inside the range where it is meaningful.
        const JITTER_LIMIT: Duration = Duration::from_secs(1 << 40);
        let base = self.base_delay(failures);
        if base > JITTER_LIMIT || self.max_interval > JITTER_LIMIT {
            return base.min(self.max_interval);
        }
        let mut b = backoff::ExponentialBackoff {
            current_interval: self.base_delay(failures),
            initial_interval: self.initial_interval,
            randomization_factor: self.randomization_factor,
            multiplier: self.multiplier,
            max_interval: self.max_interval,
            max_elapsed_time: None,
            ..backoff::ExponentialBackoff::default()
        };
        b.next_backoff()
            .unwrap_or(self.max_interval)
            .min(self.max_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.base_delay(1), Duration::from_secs(1));
        assert_eq!(p.base_delay(2), Duration::from_secs(2));
        assert_eq!(p.base_delay(3), Duration::from_secs(4));
        assert_eq!(p.base_delay(20), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_the_factor() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            let d = p.delay_after(3).as_secs_f64();
            assert!((3.2..=4.8).contains(&d), "{d}");
        }
    }

    #[test]
    fn given_jitter_is_deterministic_and_within_the_factor() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_with_jitter(3, 0.0), Duration::from_secs_f64(3.2));
        assert_eq!(p.delay_with_jitter(3, 0.5), Duration::from_secs(4));
        assert_eq!(p.delay_with_jitter(3, 0.25), p.delay_with_jitter(3, 0.25));
        assert!(p.delay_with_jitter(3, 0.999) <= Duration::from_secs_f64(4.8));
        assert_eq!(
            p.delay_with_jitter(20, 0.999),
            Duration::from_secs(60),
            "capped"
        );
    }

    /// Issue 8, item 2: huge configured delays saturate instead of panicking.
    #[test]
    fn huge_delays_do_not_panic() {
        let p = RetryPolicy {
            initial_interval: Duration::MAX,
            multiplier: 1e300,
            max_interval: Duration::MAX,
            randomization_factor: 0.5,
            max_attempts: None,
            max_elapsed: Some(Duration::MAX),
        };
        assert_eq!(p.base_delay(40), Duration::MAX);
        assert_eq!(p.delay_after(40), Duration::MAX);
        assert!(p.allows_another(3, true, Duration::MAX));
    }

    #[test]
    fn counts_and_elapsed_limit_attempts() {
        let p = RetryPolicy::default().max_attempts(3);
        assert!(p.allows_another(2, true, Duration::ZERO));
        assert!(!p.allows_another(3, true, Duration::ZERO));
        assert!(!p.allows_another(1, false, Duration::ZERO));
        let t = RetryPolicy {
            max_attempts: None,
            ..RetryPolicy::default()
        }
        .max_elapsed(Duration::from_secs(10));
        assert!(t.allows_another(1, true, Duration::from_secs(8)));
        assert!(!t.allows_another(1, true, Duration::from_secs(9) + Duration::from_millis(1)));
    }
}
