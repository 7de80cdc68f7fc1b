//! When to rotate: the earlier of "a margin before expiry" and "a fraction of the lifetime",
//! pulled earlier by a per-token jitter so tokens created together do not rotate together.

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use crate::domain::Policy;

/// The jitter never exceeds this fraction of the token's lifetime.
pub const JITTER_FRACTION_OF_LIFETIME: f64 = 0.05;
/// The jitter never exceeds this.
pub const MAX_JITTER: TimeDelta = TimeDelta::hours(1);

/// A number in `[0, 1)` derived from the token's name: the same token always gets the same
/// jitter, different tokens get different ones.
pub fn jitter_unit(token_name: &str) -> f64 {
    let digest = Sha256::digest(token_name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The planned rotation time for a secret issued at `issued_at` that expires at
/// `expires_at`. Never later than `expires_at − rotate_before`; may be in the past (then the
/// token is rotated at once).
pub fn plan_rotation(
    token_name: &str,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    policy: &Policy,
) -> DateTime<Utc> {
    let margin = TimeDelta::from_std(policy.rotate_before.get()).unwrap_or(TimeDelta::MAX);
    let by_margin = expires_at.checked_sub_signed(margin).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let lifetime = (expires_at - issued_at).max(TimeDelta::zero());
    let fraction = policy.rotate_at_fraction.clamp(0.0, 1.0);
    let by_fraction = issued_at + scale(lifetime, fraction);
    let rule = by_margin.min(by_fraction);
    let spread = scale(lifetime, JITTER_FRACTION_OF_LIFETIME).min(MAX_JITTER);
    let jittered = rule - scale(spread, jitter_unit(token_name));
    if jittered < issued_at && rule >= issued_at {
        return issued_at;
    }
    jittered.min(rule)
}

/// The shortest time between rotations a changed policy may plan: a policy that rotates a
/// token right after every rotation would hammer the provider without end.
pub const MIN_ROTATION_INTERVAL: TimeDelta = TimeDelta::minutes(10);

/// The plan of `token` under its own (possibly just changed) overrides and `defaults`, after
/// checking them for its kind ([`Policy::checked`]) and that a fresh secret would be kept at
/// least [`MIN_ROTATION_INTERVAL`] (a GitLab token for the policy's lifetime, an OAuth grant for
/// its access token's current lifetime); `None` when its secret's issue time or expiry is not
/// known yet (the plan stays as it is).
pub fn replanned(
    token: &crate::store::models::Token,
    defaults: &crate::config::PolicyDefaults,
    names: crate::domain::PolicyNames,
) -> Result<Option<DateTime<Utc>>, String> {
    let policy = Policy::checked(token.kind, &token.policy_overrides, defaults, names)?;
    let lifetime = if token.kind.is_oauth_grant() {
        token.issued_at.zip(token.expires_at).map(|(issued_at, expires_at)| expires_at - issued_at)
    } else {
        TimeDelta::from_std(policy.lifetime.get()).ok()
    };
    if let Some(lifetime) = lifetime {
        let margin = TimeDelta::from_std(policy.rotate_before.get()).unwrap_or(TimeDelta::MAX);
        let interval = lifetime
            .checked_sub(&margin)
            .unwrap_or(TimeDelta::MIN)
            .min(scale(lifetime, policy.rotate_at_fraction.clamp(0.0, 1.0)));
        if interval < MIN_ROTATION_INTERVAL {
            return Err(format!(
                "with {} {}, {} {} and a secret that lives {}s, token '{}' would be rotated again less than {} minutes after \
                 every rotation; choose a shorter margin or a larger fraction",
                names.rotate_before,
                policy.rotate_before,
                names.rotate_at_fraction,
                policy.rotate_at_fraction,
                lifetime.num_seconds(),
                token.name,
                MIN_ROTATION_INTERVAL.num_minutes()
            ));
        }
    }
    Ok(match (token.issued_at, token.expires_at) {
        (Some(issued_at), Some(expires_at)) => Some(plan_rotation(token.name.as_str(), issued_at, expires_at, &policy)),
        _ => None,
    })
}

/// `delta × factor`, rounded to whole milliseconds.
fn scale(delta: TimeDelta, factor: f64) -> TimeDelta {
    TimeDelta::milliseconds((delta.num_milliseconds() as f64 * factor) as i64)
}

/// The expiry date to request when rotating a GitLab token now: today (UTC) plus the
/// policy's lifetime in whole days, at least tomorrow.
pub fn requested_gitlab_expiry(now: DateTime<Utc>, policy: &Policy) -> NaiveDate {
    let days = (policy.lifetime.get().as_secs() / 86_400).max(1);
    let today = now.date_naive();
    today.checked_add_days(Days::new(days)).unwrap_or(today)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use proptest::prelude::*;

    fn policy(lifetime_days: u64, before: HumanDuration, fraction: f64) -> Policy {
        Policy { lifetime: HumanDuration::days(lifetime_days), rotate_before: before, rotate_at_fraction: fraction }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn fraction_wins_for_long_lifetimes() {
        let issued = at("2026-01-01T00:00:00Z");
        let expires = at("2026-12-27T00:00:00Z");
        let planned = plan_rotation("t", issued, expires, &policy(360, HumanDuration::days(7), 0.5));
        let by_fraction = issued + (expires - issued) / 2;
        assert!(planned <= by_fraction && planned >= by_fraction - MAX_JITTER, "{planned}");
    }

    #[test]
    fn margin_wins_for_short_lifetimes() {
        let issued = at("2026-01-01T00:00:00Z");
        let expires = at("2026-01-11T00:00:00Z");
        let planned = plan_rotation("t", issued, expires, &policy(10, HumanDuration::days(7), 0.67));
        let by_margin = at("2026-01-04T00:00:00Z");
        assert!(planned <= by_margin && planned >= by_margin - TimeDelta::hours(12), "{planned}");
    }

    #[test]
    fn oauth_access_tokens_rotate_before_the_two_hour_mark() {
        let issued = at("2026-01-01T10:00:00Z");
        let expires = issued + TimeDelta::hours(2);
        let planned = plan_rotation("grant", issued, expires, &policy(30, HumanDuration::minutes(5), 0.67));
        assert!(planned <= issued + TimeDelta::seconds(4824), "{planned}");
        assert!(planned >= issued + TimeDelta::seconds(4824) - TimeDelta::minutes(6), "{planned}");
    }

    #[test]
    fn jitter_is_deterministic_and_spreads_tokens() {
        assert_eq!(jitter_unit("a"), jitter_unit("a"));
        let units: Vec<f64> = (0..100).map(|i| jitter_unit(&format!("token-{i}"))).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        let distinct: std::collections::BTreeSet<u64> = units.iter().map(|u| (u * 1e9) as u64).collect();
        assert_eq!(distinct.len(), 100);
        let issued = at("2026-01-01T00:00:00Z");
        let expires = issued + TimeDelta::days(30);
        let p = policy(30, HumanDuration::days(7), 0.67);
        let times: std::collections::BTreeSet<_> =
            (0..50).map(|i| plan_rotation(&format!("token-{i}"), issued, expires, &p)).collect();
        assert!(times.len() > 45, "tokens created together are spread out");
    }

    #[test]
    fn overdue_tokens_are_planned_in_the_past() {
        let issued = at("2026-01-01T00:00:00Z");
        let expires = at("2026-01-03T00:00:00Z");
        let planned = plan_rotation("t", issued, expires, &policy(30, HumanDuration::days(7), 0.67));
        assert!(planned <= expires - TimeDelta::days(7));
    }

    #[test]
    fn gitlab_expiry_is_a_date_lifetime_days_ahead() {
        let now = at("2026-11-25T23:59:59Z");
        let date = requested_gitlab_expiry(now, &policy(30, HumanDuration::days(7), 0.67));
        assert_eq!(date.to_string(), "2026-12-25");
        let one = requested_gitlab_expiry(now, &policy(1, HumanDuration::minutes(0), 0.67));
        assert_eq!(one.to_string(), "2026-11-26");
    }

    proptest! {
        #[test]
        fn planned_time_is_never_after_expiry_minus_margin(
            issued_secs in 0i64..2_000_000_000,
            lifetime_secs in 0i64..40_000_000,
            margin_secs in 0u64..40_000_000,
            fraction in 0.01f64..=1.0,
            name in "[a-z0-9-]{1,20}",
        ) {
            let issued = DateTime::<Utc>::from_timestamp(issued_secs, 0).unwrap();
            let expires = issued + TimeDelta::seconds(lifetime_secs);
            let p = Policy {
                lifetime: HumanDuration::days(30),
                rotate_before: HumanDuration::new(std::time::Duration::from_secs(margin_secs)),
                rotate_at_fraction: fraction,
            };
            let planned = plan_rotation(&name, issued, expires, &p);
            prop_assert!(planned <= expires - TimeDelta::seconds(margin_secs as i64));
            prop_assert!(planned <= issued + TimeDelta::milliseconds((lifetime_secs as f64 * 1000.0 * fraction) as i64) + TimeDelta::milliseconds(1));
        }
    }
}
