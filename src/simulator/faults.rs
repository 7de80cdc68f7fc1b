//! Fault injection: scripted faults for exact tests, random rates for chaos runs and benches.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use super::malformed::Malformation;

/// One injected misbehaviour of a renewal request (rotate or refresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// Answer this status without acting (a 5xx that provably did nothing).
    Status {
        /// The HTTP status.
        status: u16,
    },
    /// Answer 429 with `Retry-After` without acting.
    RateLimited {
        /// Seconds to name in `Retry-After`.
        retry_after_seconds: u64,
    },
    /// Hold the request this long *before* acting (past the client's timeout), then answer 504
    /// without acting: a request stuck in a queue that GitLab gave up on.
    StallBeforeActing {
        /// How long to hold it, in milliseconds.
        delay_ms: u64,
    },
    /// Act, then hold the answer back this long (past the client's timeout).
    SlowAfterCommit {
        /// How long to hold it, in milliseconds.
        delay_ms: u64,
    },
    /// Act, then cut the connection in the middle of the answer.
    DropAfterCommit,
    /// Act, then answer 200 with a malformed body instead of the real answer.
    Malformed {
        /// How the answer is malformed.
        answer: Malformation,
    },
}

/// Which requests a scripted fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    /// Rotate and refresh requests.
    Renewal,
    /// `GET …/self` look-ups.
    Lookup,
    /// Token administration through a managing credential that changes something (create or
    /// revoke access and deploy tokens; write CI/CD variables); lists count as look-ups.
    Admin,
}

/// Random fault rates and a fixed latency, for chaos runs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRates {
    /// Added before every answer, in milliseconds.
    pub latency_ms: u64,
    /// Share of renewals answered 500/502/503 without acting.
    pub server_error: f64,
    /// Share of renewals answered 429 with `Retry-After`.
    pub rate_limited: f64,
    /// Seconds named in those `Retry-After` headers.
    pub retry_after_seconds: u64,
    /// Share of renewals held for `stall_ms` before they are answered 504 without acting.
    pub stall: f64,
    /// How long stalled requests are held, in milliseconds.
    pub stall_ms: u64,
    /// Share of renewals answered only after `slow_ms` (after acting).
    pub slow: f64,
    /// How long slow answers are held, in milliseconds.
    pub slow_ms: u64,
    /// Share of renewals whose answer is cut off after acting.
    pub drop_after_commit: f64,
}

/// Scripted faults waiting for their request, and the random rates.
#[derive(Debug, Default)]
pub struct FaultPlan {
    scripted: VecDeque<(FaultTarget, Fault)>,
    /// The random rates.
    pub rates: FaultRates,
}

impl FaultPlan {
    /// Drops every scripted fault not used yet.
    pub fn clear_scripted(&mut self) {
        self.scripted.clear();
    }

    /// Queues `fault` for the next request of `target`.
    pub fn push(&mut self, target: FaultTarget, fault: Fault) {
        self.scripted.push_back((target, fault));
    }

    /// The fault for a request of `target`: the first scripted one for it, else a random draw.
    pub fn next(&mut self, target: FaultTarget) -> Option<Fault> {
        if let Some(index) = self.scripted.iter().position(|(t, _)| *t == target) {
            return self.scripted.remove(index).map(|(_, fault)| fault);
        }
        if target != FaultTarget::Renewal {
            return None;
        }
        self.draw()
    }

    fn draw(&self) -> Option<Fault> {
        let rates = self.rates;
        let mut roll: f64 = rand::rng().random();
        let mut hit = |rate: f64| {
            roll -= rate;
            roll < 0.0
        };
        if hit(rates.server_error) {
            let status = [500, 502, 503][rand::rng().random_range(0..3)];
            return Some(Fault::Status { status });
        }
        if hit(rates.rate_limited) {
            return Some(Fault::RateLimited { retry_after_seconds: rates.retry_after_seconds });
        }
        if hit(rates.stall) {
            return Some(Fault::StallBeforeActing { delay_ms: rates.stall_ms });
        }
        if hit(rates.slow) {
            return Some(Fault::SlowAfterCommit { delay_ms: rates.slow_ms });
        }
        if hit(rates.drop_after_commit) {
            return Some(Fault::DropAfterCommit);
        }
        None
    }

    /// The fixed latency added to every answer.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.rates.latency_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_faults_go_to_their_target_in_order() {
        let mut plan = FaultPlan::default();
        plan.push(FaultTarget::Renewal, Fault::Status { status: 502 });
        plan.push(FaultTarget::Lookup, Fault::DropAfterCommit);
        plan.push(FaultTarget::Renewal, Fault::DropAfterCommit);
        assert_eq!(plan.next(FaultTarget::Lookup), Some(Fault::DropAfterCommit));
        assert_eq!(plan.next(FaultTarget::Renewal), Some(Fault::Status { status: 502 }));
        assert_eq!(plan.next(FaultTarget::Renewal), Some(Fault::DropAfterCommit));
        assert_eq!(plan.next(FaultTarget::Renewal), None);
    }

    #[test]
    fn a_malformed_answer_fault_reads_from_json_as_the_admin_endpoint_takes_it() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"malformed","answer":{"kind":"oversize","bytes":10485760}}"#).unwrap();
        assert_eq!(fault, Fault::Malformed { answer: Malformation::Oversize { bytes: 10 * 1024 * 1024 } });
        let fault: Fault = serde_json::from_str(r#"{"kind":"malformed","answer":{"kind":"garbage_json"}}"#).unwrap();
        assert_eq!(fault, Fault::Malformed { answer: Malformation::GarbageJson });
    }

    #[test]
    fn random_rates_are_roughly_honoured() {
        let rates = FaultRates { server_error: 0.2, rate_limited: 0.1, ..FaultRates::default() };
        let mut plan = FaultPlan { rates, ..FaultPlan::default() };
        let draws: Vec<_> = (0..10_000).map(|_| plan.next(FaultTarget::Renewal)).collect();
        let errors = draws.iter().filter(|f| matches!(f, Some(Fault::Status { .. }))).count();
        let limited = draws.iter().filter(|f| matches!(f, Some(Fault::RateLimited { .. }))).count();
        assert!((1700..2300).contains(&errors), "{errors}");
        assert!((700..1300).contains(&limited), "{limited}");
        assert_eq!(plan.next(FaultTarget::Lookup), None, "random faults hit renewals only");
    }
}
