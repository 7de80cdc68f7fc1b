//! Recently checked API keys, so a client sending many requests does not cost a store call
//! per request just to say who it is.
//!
//! An entry is the client (id, name, role) and the SHA-256 of its key, found through the
//! key's non-secret lookup part. Every request still hashes the key it presents and compares
//! it with the entry's hash in constant time; a key that does not match is checked against
//! the store as before, and only keys the store accepted are remembered (never a refusal).
//!
//! An entry is used for less than its time to live, counted from just before the store was
//! asked: a client removed (or its role changed) with `tokenwarden client remove` keeps
//! working on a running daemon for at most [`KEY_CACHE_TTL`] after that change. A reader's
//! grants are not remembered — each request checks its grant in the store — and removing a
//! client removes its grants in the same transaction, so a removed reader gets 404 at once;
//! only an operator key can outlive its removal, and by at most the TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::crypto::{ApiKey, ApiKeyHash};
use crate::engine::SharedClock;
use crate::store::models::Client;

/// How long a key the store accepted is trusted without asking the store again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(2);

/// Keys the store accepted recently, by lookup part. Cheap to clone (shared).
#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<Inner>,
}

struct Inner {
    ttl: TimeDelta,
    clock: SharedClock,
    entries: Mutex<HashMap<String, Entry>>,
}

/// One accepted key: who it belongs to, its hash, and when the store was asked.
struct Entry {
    hash: ApiKeyHash,
    client: Client,
    checked_at: DateTime<Utc>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("ttl", &self.inner.ttl).finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache whose entries are used for less than `ttl` as `clock` counts it (a clock that
    /// goes back makes entries stale, never fresher). A zero `ttl` turns it off.
    pub fn new(ttl: Duration, clock: SharedClock) -> Self {
        let ttl = TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX);
        Self { inner: Arc::new(Inner { ttl, clock, entries: Mutex::new(HashMap::new()) }) }
    }

    /// The moment to pass to [`KeyCache::remember`]: take it before asking the store.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The client whose key is `presented`, if the store accepted that very key less than the
    /// TTL ago. The presented key's hash is compared with the stored one in constant time.
    pub fn client(&self, presented: &str) -> Option<Client> {
        let lookup = ApiKey::lookup_of(presented)?;
        let presented_hash = ApiKeyHash::of(presented);
        let now = self.now();
        let entries = self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(lookup)?;
        let fresh = self.fresh(entry, now);
        let matches = entry.hash.matches_hash(&presented_hash);
        (fresh && matches).then(|| entry.client.clone())
    }

    /// Remembers that the store accepted `presented` as `client`, asked at `checked_at`.
    /// Entries past their TTL are dropped on the way.
    pub fn remember(&self, presented: &str, client: &Client, checked_at: DateTime<Utc>) {
        let Some(lookup) = ApiKey::lookup_of(presented) else {
            return;
        };
        if self.inner.ttl <= TimeDelta::zero() {
            return;
        }
        let entry = Entry { hash: ApiKeyHash::of(presented), client: client.clone(), checked_at };
        let now = self.now();
        let mut entries = self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, kept| self.fresh(kept, now));
        entries.insert(lookup.to_owned(), entry);
    }

    fn fresh(&self, entry: &Entry, now: DateTime<Utc>) -> bool {
        let age = now - entry.checked_at;
        age >= TimeDelta::zero() && age < self.inner.ttl
    }

    /// How many entries are held (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ClientRole;
    use crate::engine::{Clock, ManualClock};

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn client(name: &str) -> Client {
        Client {
            id: format!("id-{name}"),
            name: name.parse().unwrap(),
            role: ClientRole::Operator,
            grants: Vec::new(),
            webhook_url: None,
            created_at: start(),
        }
    }

    fn cache(clock: &Arc<ManualClock>) -> KeyCache {
        KeyCache::new(Duration::from_secs(2), clock.clone())
    }

    #[test]
    fn an_accepted_key_is_served_until_its_ttl_runs_out() {
        let clock = Arc::new(ManualClock::new(start()));
        let keys = cache(&clock);
        let key = ApiKey::generate();
        assert!(keys.client(key.expose()).is_none(), "nothing is known before the store accepted it");
        keys.remember(key.expose(), &client("ops"), clock.now());
        clock.advance(TimeDelta::milliseconds(1_999));
        assert_eq!(keys.client(key.expose()).map(|c| c.id), Some("id-ops".to_owned()));
        clock.advance(TimeDelta::milliseconds(1));
        assert!(keys.client(key.expose()).is_none(), "stale after the TTL: ask the store again");
    }

    #[test]
    fn the_ttl_counts_from_when_the_store_was_asked_and_a_clock_going_back_makes_entries_stale() {
        let clock = Arc::new(ManualClock::new(start()));
        let keys = cache(&clock);
        let key = ApiKey::generate();
        let asked = clock.now();
        clock.advance(TimeDelta::milliseconds(1_500));
        keys.remember(key.expose(), &client("ops"), asked);
        clock.advance(TimeDelta::milliseconds(500));
        assert!(keys.client(key.expose()).is_none(), "2 s after the store was asked, not after the answer");

        keys.remember(key.expose(), &client("ops"), clock.now());
        clock.set(start() - TimeDelta::seconds(1));
        assert!(keys.client(key.expose()).is_none(), "an entry from the future is not trusted");
    }

    #[test]
    fn a_wrong_secret_with_a_known_lookup_part_is_not_served_from_the_cache() {
        let clock = Arc::new(ManualClock::new(start()));
        let keys = cache(&clock);
        let key = ApiKey::generate();
        keys.remember(key.expose(), &client("ops"), clock.now());
        let lookup = ApiKey::lookup_of(key.expose()).unwrap();
        let forged = format!("tw_{lookup}_{}", "A".repeat(43));
        assert_ne!(forged, key.expose());
        assert!(keys.client(&forged).is_none());
        assert!(keys.client("not a key").is_none());
        assert!(keys.client(key.expose()).is_some());
    }

    #[test]
    fn stale_entries_are_dropped_and_a_zero_ttl_remembers_nothing() {
        let clock = Arc::new(ManualClock::new(start()));
        let keys = cache(&clock);
        let (first, second) = (ApiKey::generate(), ApiKey::generate());
        keys.remember(first.expose(), &client("a"), clock.now());
        clock.advance(TimeDelta::seconds(3));
        keys.remember(second.expose(), &client("b"), clock.now());
        assert_eq!(keys.len(), 1, "the stale entry went when the fresh one came");

        let off = KeyCache::new(Duration::ZERO, clock.clone());
        off.remember(first.expose(), &client("a"), clock.now());
        assert!(off.client(first.expose()).is_none());
        assert_eq!(off.len(), 0);
    }
}
