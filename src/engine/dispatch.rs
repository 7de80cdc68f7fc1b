//! Claiming due tokens for reserved workers and running them: the scheduler's half that talks
//! to the store and the providers. The [`super::scheduler::Scheduler`] decides how many workers
//! each provider gets; the [`Dispatcher`] claims that many due tokens in one batch, runs each
//! claimed rotation on a task of its own, and keeps a provider whose workers are all busy
//! supplied with a few claims taken ahead ([`ReadyClaims`]), so a worker that finishes starts
//! its next rotation at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::{debug, error, warn};

use super::context::EngineContext;
use super::protocol::{RotationReport, execute};
use super::ready_claims::ReadyClaims;
use super::scheduler::SCHEDULER_ACTOR;
use crate::store::lease_restore;
use crate::store::rotation::{self, Claim, ProviderRoom};

/// Claims the scheduler's reserved workers, runs them, and keeps the claims taken ahead.
pub struct Dispatcher {
    context: Arc<EngineContext>,
    worker_done: Arc<Notify>,
    blocked_until: Mutex<HashMap<String, DateTime<Utc>>>,
    reports: Option<tokio::sync::mpsc::UnboundedSender<RotationReport>>,
    claims: Mutex<ClaimQueue>,
    ready: ReadyClaims<Claim>,
    ready_per_provider: usize,
}

impl Dispatcher {
    /// A dispatcher over `context` keeping up to `ready_per_provider` claims ahead for a busy
    /// provider; `worker_done` is notified whenever a worker is released.
    pub fn new(
        context: Arc<EngineContext>,
        worker_done: Arc<Notify>,
        reports: Option<tokio::sync::mpsc::UnboundedSender<RotationReport>>,
        ready_per_provider: usize,
    ) -> Self {
        Self {
            context,
            worker_done,
            blocked_until: Mutex::new(HashMap::new()),
            reports,
            claims: Mutex::new(ClaimQueue::default()),
            ready: ReadyClaims::default(),
            ready_per_provider,
        }
    }

    /// Claims up to the reserved number of due tokens per provider on a task of its own, plus
    /// claims ahead for the providers in `ahead`, then runs each claimed rotation on its own
    /// task with one of the reserved workers. Workers left over (another replica took those
    /// tokens, or they are no longer due) are released, which also makes the loop read its
    /// window again.
    ///
    /// One claim runs at a time: requests made while it runs wait in the [`ClaimQueue`] and
    /// are claimed together in the next batch. Under load (a worker finishing every
    /// millisecond) the batches grow instead of each finished worker queueing a write
    /// transaction of its own behind the commits of providers' answers.
    pub fn claim(self: &Arc<Self>, batch: Reservations, ahead: HashSet<String>) {
        {
            let mut queue = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
            queue.pending.merge(batch);
            queue.ahead.extend(ahead);
            if queue.running || queue.is_empty() {
                return;
            }
            queue.running = true;
        }
        let dispatcher = self.clone();
        tokio::spawn(async move {
            let _running = ClaimerRunning(dispatcher.clone());
            loop {
                let (batch, ahead) = {
                    let mut queue = dispatcher.claims.lock().unwrap_or_else(PoisonError::into_inner);
                    if queue.is_empty() {
                        queue.running = false;
                        return;
                    }
                    (std::mem::take(&mut queue.pending), std::mem::take(&mut queue.ahead))
                };
                dispatcher.claim_and_start(batch, ahead).await;
            }
        });
    }

    /// Claims due tokens for `batch`'s reserved workers and ahead for `ahead`'s providers in
    /// one transaction, starts each rotation claimed for a worker on a task of its own and
    /// keeps those claimed ahead; releases the workers nothing was claimed for.
    async fn claim_and_start(self: &Arc<Self>, mut batch: Reservations, ahead: HashSet<String>) {
        let context = &self.context;
        let mut rooms = batch.rooms();
        for provider_id in ahead {
            let room = self.ready.room(&provider_id, self.ready_per_provider);
            match rooms.iter_mut().find(|room| room.provider_id == provider_id) {
                Some(found) => found.ahead = room,
                None if room > 0 => rooms.push(ProviderRoom { provider_id, room: 0, ahead: room }),
                None => {}
            }
        }
        if rooms.is_empty() {
            return;
        }
        let (owner, lease, now) = (context.owner.clone(), context.lease(), context.clock.now());
        let ahead_lease = ahead_lease(lease);
        let claimed =
            context.store.run(move |conn| rotation::claim_due(conn, &rooms, &owner, lease, ahead_lease, now)).await;
        let claims = match claimed {
            Ok(claims) => claims,
            Err(err) => {
                error!(error = %err, "cannot claim due tokens");
                drop(batch);
                self.worker_done.notify_one();
                return;
            }
        };
        self.hold_providers(claims.held);
        let mut extra = claims.ahead;
        for claim in claims.claimed {
            match batch.take(&claim.provider.id) {
                Some(worker) => self.start(claim, worker),
                None => extra.push(claim),
            }
        }
        if !extra.is_empty() {
            debug!(count = extra.len(), "claimed ahead of free workers");
            let refused = self.ready.offer(extra);
            self.put_back(refused).await;
            self.worker_done.notify_one();
        }
        if !batch.is_empty() {
            drop(batch);
            self.worker_done.notify_one();
        }
    }

    /// Runs `claim` with `worker` on a task of its own; the worker then runs the ready claims
    /// of its provider until none is left, and is released.
    fn start(self: &Arc<Self>, claim: Claim, worker: Worker) {
        let dispatcher = self.clone();
        tokio::spawn(async move {
            let mut claim = claim;
            loop {
                let provider_id = claim.provider.id.clone();
                let report = execute(&dispatcher.context, claim, SCHEDULER_ACTOR).await;
                let now = dispatcher.context.clock.now();
                if let Some(wait) = report.retry_after.and_then(|wait| TimeDelta::from_std(wait).ok()) {
                    dispatcher.hold_providers(vec![(provider_id.clone(), now + wait)]);
                }
                if let Some(reports) = &dispatcher.reports {
                    let _ = reports.send(report);
                }
                match dispatcher.take_ready(&provider_id).await {
                    Some(next) => {
                        if dispatcher.ready.wants_refill(&provider_id, dispatcher.ready_per_provider) {
                            dispatcher.claim(Reservations::default(), HashSet::from([provider_id]));
                        }
                        claim = next;
                    }
                    None => break,
                }
            }
            drop(worker);
            dispatcher.worker_done.notify_one();
        });
    }

    /// Starts ready claims on the free workers `reserve` gives (it reserves one for a
    /// provider, or says there is none): claims whose provider's workers were all taken when
    /// they became ready.
    pub async fn start_ready(self: &Arc<Self>, mut reserve: impl FnMut(&str) -> Option<Worker>) {
        for provider_id in self.ready.providers() {
            while let Some(worker) = reserve(&provider_id) {
                let Some(claim) = self.take_ready(&provider_id).await else { break };
                self.start(claim, worker);
            }
        }
    }

    /// The next ready claim of `provider_id` that may start now. Claims whose lease no longer
    /// covers an attempt, and all of them while the provider asked for a pause, are put back.
    async fn take_ready(&self, provider_id: &str) -> Option<Claim> {
        let now = self.context.clock.now();
        if self.held_until(provider_id).is_some_and(|until| until > now) {
            self.put_back(self.ready.take_all_of(provider_id)).await;
            return None;
        }
        let (next, expiring) = self.ready.take(provider_id, now + self.context.lease());
        self.put_back(expiring).await;
        next
    }

    /// Closes the ready claims (shutdown) and puts every one back in the store.
    pub async fn close(&self) {
        self.put_back(self.ready.close()).await;
    }

    /// Puts back claims that were never started, as they were before the claim.
    async fn put_back(&self, claims: Vec<Claim>) {
        if claims.is_empty() {
            return;
        }
        let count = claims.len();
        let leases: Vec<_> = claims.iter().map(|claim| (claim.lease(), claim.before.clone())).collect();
        let now = self.context.clock.now();
        let restored = self.context.store.run(move |conn| lease_restore::put_back_unstarted(conn, &leases, now)).await;
        match restored {
            Ok(restored) => debug!(count, restored, "put back claims that were never started"),
            Err(err) => warn!(
                count,
                error = %err,
                "cannot put back claims that were never started; they are claimed again when their leases run out"
            ),
        }
    }

    /// Records that providers asked for a pause until the given times (the later time wins).
    pub fn hold_providers(&self, held: Vec<(String, DateTime<Utc>)>) {
        let mut blocked = self.blocked_until.lock().unwrap_or_else(PoisonError::into_inner);
        for (provider_id, until) in held {
            let entry = blocked.entry(provider_id).or_insert(until);
            *entry = (*entry).max(until);
        }
    }

    fn held_until(&self, provider_id: &str) -> Option<DateTime<Utc>> {
        self.blocked_until.lock().unwrap_or_else(PoisonError::into_inner).get(provider_id).copied()
    }

    /// Providers that asked for a pause that has not ended, and the earliest end of such a
    /// pause. Ended pauses are forgotten.
    pub fn held_providers(&self, now: DateTime<Utc>) -> (HashSet<String>, Option<DateTime<Utc>>) {
        let mut blocked = self.blocked_until.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.retain(|_, until| *until > now);
        (blocked.keys().cloned().collect(), blocked.values().min().copied())
    }
}

/// The lease of a claim taken ahead: it covers the wait for a worker (at most one attempt of
/// another rotation) and then a whole attempt of its own.
fn ahead_lease(lease: TimeDelta) -> TimeDelta {
    lease * 2
}

/// Workers reserved for the next batch claim, providers wanting claims ahead, and whether a
/// claim task is running.
#[derive(Default)]
struct ClaimQueue {
    pending: Reservations,
    ahead: HashSet<String>,
    running: bool,
}

impl ClaimQueue {
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.ahead.is_empty()
    }
}

/// Held by the claim task: if it panics, the next request starts a new one.
struct ClaimerRunning(Arc<Dispatcher>);

impl Drop for ClaimerRunning {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.claims.lock().unwrap_or_else(PoisonError::into_inner).running = false;
        }
    }
}

/// The permits one rotation holds while it runs: one of all workers and one of its provider's.
pub struct Worker {
    _overall: OwnedSemaphorePermit,
    _provider: OwnedSemaphorePermit,
}

impl Worker {
    /// A worker holding `overall` and `provider`.
    pub fn new(overall: OwnedSemaphorePermit, provider: OwnedSemaphorePermit) -> Self {
        Self { _overall: overall, _provider: provider }
    }
}

/// Workers reserved for a batch claim, per provider; dropping them releases them.
#[derive(Default)]
pub struct Reservations {
    by_provider: HashMap<String, Vec<Worker>>,
}

impl Reservations {
    /// Adds `worker` for a token of `provider_id`.
    pub fn add(&mut self, provider_id: &str, worker: Worker) {
        self.by_provider.entry(provider_id.to_owned()).or_default().push(worker);
    }

    /// No worker reserved.
    pub fn is_empty(&self) -> bool {
        self.by_provider.values().all(Vec::is_empty)
    }

    /// Adds `other`'s workers to these.
    fn merge(&mut self, other: Reservations) {
        for (provider_id, workers) in other.by_provider {
            self.by_provider.entry(provider_id).or_default().extend(workers);
        }
    }

    /// How many tokens of each provider the claim may take for these workers.
    fn rooms(&self) -> Vec<ProviderRoom> {
        self.by_provider
            .iter()
            .filter(|(_, workers)| !workers.is_empty())
            .map(|(provider_id, workers)| ProviderRoom {
                provider_id: provider_id.clone(),
                room: workers.len(),
                ahead: 0,
            })
            .collect()
    }

    /// One reserved worker for a claimed token of `provider_id`.
    fn take(&mut self, provider_id: &str) -> Option<Worker> {
        self.by_provider.get_mut(provider_id).and_then(Vec::pop)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    fn worker(overall: &Arc<Semaphore>, provider: &Arc<Semaphore>) -> Worker {
        Worker::new(overall.clone().try_acquire_owned().unwrap(), provider.clone().try_acquire_owned().unwrap())
    }

    #[test]
    fn reservations_made_while_a_claim_runs_are_claimed_together_and_free_their_permits_when_dropped() {
        let overall = Arc::new(Semaphore::new(4));
        let (a, b) = (Arc::new(Semaphore::new(4)), Arc::new(Semaphore::new(4)));
        let mut queue = ClaimQueue::default();
        for (provider, semaphore) in [("a", &a), ("b", &b), ("a", &a)] {
            let mut batch = Reservations::default();
            batch.add(provider, worker(&overall, semaphore));
            queue.pending.merge(batch);
        }
        let mut rooms: Vec<(String, usize)> =
            queue.pending.rooms().into_iter().map(|room| (room.provider_id, room.room)).collect();
        rooms.sort();
        assert_eq!(rooms, [("a".to_owned(), 2), ("b".to_owned(), 1)]);
        assert_eq!(overall.available_permits(), 1);
        let mut batch = std::mem::take(&mut queue.pending);
        assert!(queue.pending.is_empty());
        assert!(batch.take("a").is_some());
        drop(batch);
        assert_eq!((overall.available_permits(), a.available_permits(), b.available_permits()), (4, 4, 4));
    }
}
