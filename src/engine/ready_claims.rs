//! Rotations claimed ahead of a free worker, per provider. When a provider's workers are all
//! busy and more of its tokens are due, the scheduler claims a few of them ahead
//! ([`crate::store::rotation::ProviderRoom::ahead`]); a worker that finishes takes the next one
//! here and starts it at once, instead of leaving its slot empty while a claim is written.
//!
//! A ready claim is an ordinary lease in the store, so a process killed while it waits here
//! leaves it to the recovery rules like an attempt cut short (a probe for GitLab tokens, the
//! single retry for an OAuth grant, which succeeds because the grant was never sent). It is
//! taken only while its lease still covers a whole attempt; otherwise, on shutdown, and when its
//! provider asks for a pause, it is handed back to be put back in the store untouched.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use crate::store::rotation::Claim;

/// What the queue needs to know of a claim.
pub trait Leased {
    /// The provider whose worker may run it.
    fn provider_id(&self) -> &str;
    /// When its lease runs out.
    fn lease_expires_at(&self) -> DateTime<Utc>;
}

impl Leased for Claim {
    fn provider_id(&self) -> &str {
        &self.provider.id
    }

    fn lease_expires_at(&self) -> DateTime<Utc> {
        self.lease_expires_at
    }
}

/// Claims waiting for a worker of their provider, oldest first; closed on shutdown.
pub struct ReadyClaims<C> {
    inner: Mutex<Inner<C>>,
}

struct Inner<C> {
    by_provider: HashMap<String, VecDeque<C>>,
    closed: bool,
}

impl<C: Leased> Default for ReadyClaims<C> {
    fn default() -> Self {
        Self { inner: Mutex::new(Inner { by_provider: HashMap::new(), closed: false }) }
    }
}

impl<C: Leased> ReadyClaims<C> {
    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many more claims of `provider_id` to take ahead to hold `target` (none once closed).
    pub fn room(&self, provider_id: &str, target: usize) -> usize {
        let inner = self.lock();
        if inner.closed {
            return 0;
        }
        target.saturating_sub(inner.by_provider.get(provider_id).map_or(0, VecDeque::len))
    }

    /// Whether `provider_id`'s claims have fallen to half of `target` or fewer, so that a
    /// claim topping them up takes several at once (never once closed).
    pub fn wants_refill(&self, provider_id: &str, target: usize) -> bool {
        let inner = self.lock();
        !inner.closed && inner.by_provider.get(provider_id).map_or(0, VecDeque::len) <= target / 2
    }

    /// Adds `claims`; once closed they are handed back instead, to be put back.
    pub fn offer(&self, claims: Vec<C>) -> Vec<C> {
        let mut inner = self.lock();
        if inner.closed {
            return claims;
        }
        for claim in claims {
            inner.by_provider.entry(claim.provider_id().to_owned()).or_default().push_back(claim);
        }
        Vec::new()
    }

    /// The oldest claim of `provider_id` whose lease lasts until `needed_until`, and the
    /// claims of it passed over because theirs does not (to be put back).
    pub fn take(&self, provider_id: &str, needed_until: DateTime<Utc>) -> (Option<C>, Vec<C>) {
        let mut inner = self.lock();
        let mut expiring = Vec::new();
        let Some(queue) = inner.by_provider.get_mut(provider_id) else {
            return (None, expiring);
        };
        while let Some(claim) = queue.pop_front() {
            if claim.lease_expires_at() >= needed_until {
                return (Some(claim), expiring);
            }
            expiring.push(claim);
        }
        inner.by_provider.remove(provider_id);
        (None, expiring)
    }

    /// Every claim of `provider_id` (it asked for a pause).
    pub fn take_all_of(&self, provider_id: &str) -> Vec<C> {
        self.lock().by_provider.remove(provider_id).map(Vec::from).unwrap_or_default()
    }

    /// The providers with claims waiting.
    pub fn providers(&self) -> Vec<String> {
        let inner = self.lock();
        inner.by_provider.iter().filter(|(_, queue)| !queue.is_empty()).map(|(id, _)| id.clone()).collect()
    }

    /// Closes the queue (shutdown) and hands back every claim in it.
    pub fn close(&self) -> Vec<C> {
        let mut inner = self.lock();
        inner.closed = true;
        inner.by_provider.drain().flat_map(|(_, queue)| queue).collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[derive(Debug, PartialEq)]
    struct Ready(&'static str, &'static str, DateTime<Utc>);

    impl Leased for Ready {
        fn provider_id(&self) -> &str {
            self.0
        }

        fn lease_expires_at(&self) -> DateTime<Utc> {
            self.2
        }
    }

    #[test]
    fn a_worker_takes_the_oldest_claim_of_its_provider_whose_lease_covers_an_attempt() {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let (short, long) = (now + TimeDelta::seconds(30), now + TimeDelta::seconds(300));
        let ready = ReadyClaims::default();
        assert_eq!(ready.room("a", 3), 3);
        assert!(
            ready
                .offer(vec![Ready("a", "expiring", short), Ready("b", "other", long), Ready("a", "next", long)])
                .is_empty()
        );
        assert_eq!(ready.room("a", 3), 1);
        assert_eq!(ready.room("a", 1), 0);
        assert!(!ready.wants_refill("a", 3), "two of three left");
        assert!(ready.wants_refill("a", 4), "two of four left");

        let (taken, expiring) = ready.take("a", now + TimeDelta::seconds(120));
        assert_eq!(taken, Some(Ready("a", "next", long)));
        assert_eq!(expiring, [Ready("a", "expiring", short)]);
        assert_eq!(ready.take("a", now), (None, vec![]));
        assert_eq!(ready.providers(), ["b"]);
        assert_eq!(ready.take_all_of("b"), [Ready("b", "other", long)]);
        assert!(ready.providers().is_empty());
    }

    #[test]
    fn closing_hands_back_every_claim_and_refuses_later_ones() {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let ready = ReadyClaims::default();
        ready.offer(vec![Ready("a", "1", now), Ready("b", "2", now)]);
        let mut back = ready.close();
        back.sort_by_key(|claim| claim.1);
        assert_eq!(back, [Ready("a", "1", now), Ready("b", "2", now)]);
        assert_eq!(ready.offer(vec![Ready("a", "3", now)]), [Ready("a", "3", now)]);
        assert_eq!(ready.room("a", 2), 0);
        assert!(!ready.wants_refill("a", 2));
        assert_eq!(ready.take("a", now), (None, vec![]));
    }
}
