//! Failed API authentication made visible: every refusal is counted in
//! `tokenwarden_api_auth_failures_total{reason}`, and logged at most once a minute per source
//! address, with how many refusals the line stands for — never the key that was presented.
//!
//! A burst of 2,000 bad requests from one address therefore costs one log line at once, and one
//! more line (counting the rest) when [`AuthFailures::flush`] runs a minute later; `serve` runs it
//! every [`LOG_INTERVAL`].
//!
//! Reasons: `missing` (no `Authorization: Bearer` header), `malformed` (not a bearer header, or
//! not shaped like a tokenwarden API key), `unknown` (no client has that key), `revoked` (the
//! key was accepted by this daemon earlier and no longer is: its client was removed or its key
//! replaced; a daemon started after the removal cannot tell, and counts it `unknown`), and
//! `forbidden` (a reader's key where an operator key is needed).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tracing::warn;

use crate::engine::SharedClock;
use crate::telemetry::metrics;

/// At most one log line per source address per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Source addresses tracked at once; refusals from further addresses share one entry, logged
/// as `source=other`, so a scan from many addresses cannot grow memory without bound.
const MAX_SOURCES: usize = 10_000;
/// Key lookup parts remembered as once accepted (to tell `revoked` from `unknown`); past this,
/// newly accepted keys are no longer remembered and their later refusals count as `unknown`.
const MAX_ACCEPTED: usize = 100_000;

/// Why a request's credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <key>`, or a key not shaped like one.
    Malformed,
    /// A well-formed key no client has.
    Unknown,
    /// A key this daemon accepted before and the store no longer does.
    Revoked,
    /// A valid key without the role the request needs.
    Forbidden,
}

impl AuthFailure {
    /// Every reason, in the order of [`metrics::AUTH_FAILURE_REASONS`].
    pub const ALL: [AuthFailure; 5] = [Self::Missing, Self::Malformed, Self::Unknown, Self::Revoked, Self::Forbidden];

    /// The metric label and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::Forbidden => "forbidden",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Missing => 0,
            Self::Malformed => 1,
            Self::Unknown => 2,
            Self::Revoked => 3,
            Self::Forbidden => 4,
        }
    }
}

/// Refusals from one source not yet logged, and when it was last logged.
#[derive(Default)]
struct Source {
    pending: [u64; 5],
    logged_at: Option<DateTime<Utc>>,
}

impl Source {
    fn pending_total(&self) -> u64 {
        self.pending.iter().sum()
    }
}

/// Counts, rate-limits and logs failed authentication. Cheap to clone (shared).
#[derive(Clone)]
pub struct AuthFailures {
    inner: Arc<Inner>,
}

struct Inner {
    clock: SharedClock,
    interval: TimeDelta,
    sources: Mutex<HashMap<Option<IpAddr>, Source>>,
    accepted: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for AuthFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthFailures").field("interval", &self.inner.interval).finish_non_exhaustive()
    }
}

impl AuthFailures {
    /// Failures logged at most once per [`LOG_INTERVAL`] per address, as `clock` counts time.
    pub fn new(clock: SharedClock) -> Self {
        let interval = TimeDelta::from_std(LOG_INTERVAL).unwrap_or(TimeDelta::MAX);
        let inner = Inner { clock, interval, sources: Mutex::default(), accepted: Mutex::default() };
        Self { inner: Arc::new(inner) }
    }

    /// Notes that the store accepted the key with this lookup part, so a later refusal of it
    /// counts as `revoked`.
    pub fn note_accepted(&self, lookup: &str) {
        let mut accepted = self.inner.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        if accepted.len() < MAX_ACCEPTED || accepted.contains(lookup) {
            accepted.insert(lookup.to_owned());
        }
    }

    /// `revoked` when the key with this lookup part was accepted before, else `unknown`.
    pub fn refused_key(&self, lookup: &str) -> AuthFailure {
        let accepted = self.inner.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        if accepted.contains(lookup) { AuthFailure::Revoked } else { AuthFailure::Unknown }
    }

    /// Counts one refusal from `source` and logs it unless that source was logged less than
    /// [`LOG_INTERVAL`] ago.
    pub fn record(&self, source: Option<IpAddr>, reason: AuthFailure) {
        metrics::record_auth_failure(reason.as_str());
        let now = self.inner.clock.now();
        let mut sources = self.inner.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if sources.len() < MAX_SOURCES || sources.contains_key(&source) { source } else { None };
        let entry = sources.entry(key).or_default();
        entry.pending[reason.index()] += 1;
        if self.due(entry, now) {
            log(key, entry, now);
        }
    }

    /// Logs every source with refusals not yet logged whose last line is at least
    /// [`LOG_INTERVAL`] old, and forgets sources quiet for that long.
    pub fn flush(&self) {
        let now = self.inner.clock.now();
        let mut sources = self.inner.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources.retain(|source, entry| {
            if entry.pending_total() == 0 {
                return !self.due(entry, now);
            }
            if self.due(entry, now) {
                log(*source, entry, now);
            }
            true
        });
    }

    /// Logs every source's refusals not yet logged, however recent its last line: for a
    /// daemon that stops, so that no refusal goes unreported.
    pub fn flush_pending(&self) {
        let now = self.inner.clock.now();
        let mut sources = self.inner.sources.lock().unwrap_or_else(PoisonError::into_inner);
        for (source, entry) in sources.iter_mut().filter(|(_, entry)| entry.pending_total() > 0) {
            log(*source, entry, now);
        }
    }

    fn due(&self, entry: &Source, now: DateTime<Utc>) -> bool {
        entry.logged_at.is_none_or(|at| now - at >= self.inner.interval || now < at)
    }
}

/// One line for `source`'s pending refusals, which it then clears.
fn log(source: Option<IpAddr>, entry: &mut Source, now: DateTime<Utc>) {
    let failures = entry.pending_total();
    let reasons = AuthFailure::ALL
        .iter()
        .filter(|reason| entry.pending[reason.index()] > 0)
        .map(|reason| format!("{}:{}", reason.as_str(), entry.pending[reason.index()]))
        .collect::<Vec<_>>()
        .join(",");
    let source = source.map_or_else(|| "other".to_owned(), |ip| ip.to_string());
    warn!(%source, failures, %reasons, "API requests refused for their credentials (at most one line a minute per address)");
    entry.pending = [0; 5];
    entry.logged_at = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ManualClock;
    use crate::telemetry::captured_log::lines_logged;

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_burst_from_one_address_is_one_line_at_once_and_one_line_with_the_rest_a_minute_later() {
        let clock = Arc::new(ManualClock::new(start()));
        let failures = AuthFailures::new(clock.clone());
        let (one, two): (IpAddr, IpAddr) = ("192.0.2.7".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let burst = lines_logged(|| {
            for _ in 0..2_000 {
                failures.record(Some(one), AuthFailure::Unknown);
            }
            failures.record(Some(two), AuthFailure::Missing);
            clock.advance(TimeDelta::seconds(59));
            failures.record(Some(one), AuthFailure::Malformed);
            failures.flush();
        });
        assert_eq!(burst.len(), 2, "one line per address within the minute: {burst:#?}");
        assert!(burst[0].contains("source=192.0.2.7") && burst[0].contains("failures=1 "), "{burst:#?}");
        assert!(burst[1].contains("source=2001:db8::1") && burst[1].contains("reasons=missing:1"), "{burst:#?}");

        clock.advance(TimeDelta::seconds(1));
        let later = lines_logged(|| failures.flush());
        assert_eq!(later.len(), 1, "only the address with refusals not yet logged: {later:#?}");
        assert!(later[0].contains("source=192.0.2.7") && later[0].contains("failures=2000 "), "{later:#?}");
        assert!(later[0].contains("reasons=malformed:1,unknown:1999"), "{later:#?}");

        clock.advance(TimeDelta::seconds(60));
        assert!(lines_logged(|| failures.flush()).is_empty(), "nothing new, nothing logged");
        assert!(failures.inner.sources.lock().unwrap().is_empty(), "quiet sources are forgotten");
    }

    #[test]
    fn refusals_not_yet_logged_are_logged_when_the_daemon_stops() {
        let clock = Arc::new(ManualClock::new(start()));
        let failures = AuthFailures::new(clock.clone());
        let source: IpAddr = "192.0.2.9".parse().unwrap();
        let first = lines_logged(|| {
            failures.record(Some(source), AuthFailure::Unknown);
            failures.record(Some(source), AuthFailure::Revoked);
            failures.flush();
        });
        assert_eq!(first.len(), 1, "{first:#?}");
        clock.advance(TimeDelta::seconds(5));
        assert!(lines_logged(|| failures.flush()).is_empty(), "within the minute the periodic flush waits");
        let last = lines_logged(|| failures.flush_pending());
        assert_eq!(last.len(), 1, "{last:#?}");
        assert!(last[0].contains("reasons=revoked:1"), "{last:#?}");
        assert!(lines_logged(|| failures.flush_pending()).is_empty(), "nothing is logged twice");
    }

    #[test]
    fn a_key_accepted_before_is_revoked_and_any_other_is_unknown() {
        let failures = AuthFailures::new(Arc::new(ManualClock::new(start())));
        assert_eq!(failures.refused_key("abcdefghijkl"), AuthFailure::Unknown);
        failures.note_accepted("abcdefghijkl");
        assert_eq!(failures.refused_key("abcdefghijkl"), AuthFailure::Revoked);
        assert_eq!(failures.refused_key("mnopqrstuvwx"), AuthFailure::Unknown);
    }

    #[test]
    fn the_reasons_are_the_exported_label_values() {
        let names: Vec<_> = AuthFailure::ALL.iter().map(|reason| reason.as_str()).collect();
        assert_eq!(names, metrics::AUTH_FAILURE_REASONS);
        assert!(AuthFailure::ALL.iter().enumerate().all(|(i, reason)| reason.index() == i));
    }
}
