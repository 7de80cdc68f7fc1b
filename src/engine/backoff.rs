//! How long to wait after a transient failure: exponential with full jitter, honouring the
//! provider's `Retry-After`, and capped so that several attempts still fit before expiry.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;

/// Attempts that should still fit between now and expiry.
pub const ATTEMPTS_BEFORE_EXPIRY: i32 = 4;
/// Shortest wait between attempts.
pub const MIN_WAIT: Duration = Duration::from_secs(1);

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The ceiling of the first retry's wait.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::from_secs(10), max: Duration::from_secs(3600) }
    }
}

impl Backoff {
    /// The ceiling for attempt number `attempt` (1 for the first retry): `base × 2^(attempt-1)`,
    /// at most `max`, and at most a quarter of the time left before expiry.
    pub fn ceiling(&self, attempt: i32, now: DateTime<Utc>, expires_at: Option<DateTime<Utc>>) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(30);
        let mut ceiling = self.base.saturating_mul(1u32 << exponent).min(self.max);
        if let Some(expires_at) = expires_at {
            let left = (expires_at - now).to_std().unwrap_or_default();
            ceiling = ceiling.min(left / ATTEMPTS_BEFORE_EXPIRY as u32);
        }
        ceiling.max(MIN_WAIT)
    }

    /// When to try again: a random wait up to the ceiling (full jitter), never sooner than
    /// `retry_after`.
    pub fn next_attempt(
        &self,
        attempt: i32,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        retry_after: Option<Duration>,
    ) -> DateTime<Utc> {
        let ceiling = self.ceiling(attempt, now, expires_at);
        let jittered = rand::rng().random_range(MIN_WAIT..=ceiling.max(MIN_WAIT));
        let wait = retry_after.map_or(jittered, |asked| jittered.max(asked));
        now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_maximum() {
        let backoff = Backoff::default();
        let now = Utc::now();
        assert_eq!(backoff.ceiling(1, now, None), Duration::from_secs(10));
        assert_eq!(backoff.ceiling(2, now, None), Duration::from_secs(20));
        assert_eq!(backoff.ceiling(4, now, None), Duration::from_secs(80));
        assert_eq!(backoff.ceiling(40, now, None), Duration::from_secs(3600));
    }

    #[test]
    fn ceiling_leaves_room_for_several_attempts_before_expiry() {
        let backoff = Backoff::default();
        let now = Utc::now();
        let expires = now + TimeDelta::minutes(4);
        assert_eq!(backoff.ceiling(20, now, Some(expires)), Duration::from_secs(60));
        assert_eq!(backoff.ceiling(20, now, Some(now)), MIN_WAIT);
    }

    #[test]
    fn next_attempt_is_within_bounds_and_honours_retry_after() {
        let backoff = Backoff::default();
        let now = Utc::now();
        for attempt in 1..10 {
            let next = backoff.next_attempt(attempt, now, None, None);
            assert!(next >= now + TimeDelta::seconds(1));
            assert!(next <= now + TimeDelta::from_std(backoff.ceiling(attempt, now, None)).unwrap());
            let asked = backoff.next_attempt(attempt, now, None, Some(Duration::from_secs(7200)));
            assert!(asked >= now + TimeDelta::hours(2), "Retry-After is never cut short");
        }
    }
}
