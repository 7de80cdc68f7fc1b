//! The scheduler: keeps the next-due tokens in memory (a [`Window`]), sleeps until the
//! earliest is due or something changes, and hands due tokens to workers under concurrency
//! limits.
//!
//! It never scans the whole table and never polls the tokens: the window is read through the
//! `next_rotation_at` index only when the data may have changed — a commit by any other
//! connection or process (looked for every [`CHANGE_POLL`] with a counter, not a query of the
//! tokens), a wake-up from the API, or a worker that finished while nothing else is due. An
//! idle scheduler therefore asks the store one `PRAGMA data_version` a second and nothing else
//! (`serve`'s metrics watch, [`super::metrics_watch`], asks one more).
//! Providers whose workers are all busy or that asked for a pause (`Retry-After`) are skipped,
//! and their due tokens wait in the window.
//!
//! The window only says *when* to claim and how many workers each provider has free for it;
//! the claim itself is one batch in the store ([`rotation::claim_due`]), which takes the most
//! urgent due tokens that no other replica is claiming (`SKIP LOCKED` on PostgreSQL). So
//! replicas sharing a database, whose windows all show the same tokens, divide them between
//! them instead of racing for the same rows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, error};

use super::context::EngineContext;
use super::protocol::{RotationReport, execute};
use super::window::{Placement, WINDOW_SIZE, Window};
use crate::store::changes::ChangeWatch;
use crate::store::rotation::{self, DueToken, ProviderRoom};
use crate::telemetry::repeated_warning::{REPEAT_INTERVAL, RepeatedWarning};

/// How often the scheduler looks for commits made by other connections or processes (so a
/// token added by the CLI is seen within this time), and the longest it goes without a pass.
pub const CHANGE_POLL: Duration = Duration::from_secs(1);
/// How far ahead the window reaches (a bound the store can compare: stored times are text on
/// SQLite, where a five-digit year would sort before every real one).
pub const WINDOW_HORIZON: TimeDelta = TimeDelta::days(3650);
/// The actor recorded for scheduled rotations.
pub const SCHEDULER_ACTOR: &str = "scheduler";

/// Concurrency limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rotations in flight at once, overall.
    pub max_concurrency: usize,
    /// Rotations in flight at once against one provider.
    pub per_provider: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_concurrency: 64, per_provider: 8 }
    }
}

/// What the rest of the daemon holds to talk to a running scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    wake: Arc<Notify>,
    last_tick: Arc<AtomicI64>,
}

impl SchedulerHandle {
    /// Asks the scheduler to look again now (a token was added, changed or forced).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// When the scheduler loop last completed a pass.
    pub fn last_tick(&self) -> Option<DateTime<Utc>> {
        match self.last_tick.load(Ordering::Relaxed) {
            0 => None,
            millis => DateTime::from_timestamp_millis(millis),
        }
    }
}

/// The scheduler loop and its workers' shared bookkeeping.
pub struct Scheduler {
    context: Arc<EngineContext>,
    limits: Limits,
    handle: SchedulerHandle,
    overall: Arc<Semaphore>,
    per_provider: Mutex<HashMap<String, Arc<Semaphore>>>,
    blocked_until: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    worker_done: Arc<Notify>,
    reports: Option<tokio::sync::mpsc::UnboundedSender<RotationReport>>,
    claims: Arc<Mutex<ClaimQueue>>,
}

impl Scheduler {
    /// A scheduler over `context` with `limits`.
    pub fn new(context: Arc<EngineContext>, limits: Limits) -> Self {
        Self {
            context,
            limits,
            handle: SchedulerHandle { wake: Arc::new(Notify::new()), last_tick: Arc::new(AtomicI64::new(0)) },
            overall: Arc::new(Semaphore::new(limits.max_concurrency.max(1))),
            per_provider: Mutex::new(HashMap::new()),
            blocked_until: Arc::new(Mutex::new(HashMap::new())),
            worker_done: Arc::new(Notify::new()),
            reports: None,
            claims: Arc::new(Mutex::new(ClaimQueue::default())),
        }
    }

    /// Sends every attempt's report to `sender` (for tests, metrics and the benchmark).
    pub fn with_reports(mut self, sender: tokio::sync::mpsc::UnboundedSender<RotationReport>) -> Self {
        self.reports = Some(sender);
        self
    }

    /// A handle to wake the loop and read its heartbeat.
    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown` turns true; in-flight rotations finish on their own tasks.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut window = Window::default();
        let mut changes: Option<ChangeWatch> = None;
        let mut unwatched =
            RepeatedWarning::new("cannot watch the store for changes; reading the due tokens instead", REPEAT_INTERVAL);
        let mut failing_passes = RepeatedWarning::new("scheduler pass failed; retrying", REPEAT_INTERVAL);
        let mut next_change_check = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if tokio::time::Instant::now() >= next_change_check {
                if self.changed_elsewhere(&mut changes, &mut unwatched).await {
                    window.mark_stale();
                }
                next_change_check = tokio::time::Instant::now() + CHANGE_POLL;
            }
            let wake_at = match self.pass(&mut window).await {
                Ok(wake_at) => {
                    failing_passes.succeeded();
                    wake_at
                }
                Err(err) => {
                    failing_passes.failed(&err);
                    window.mark_stale();
                    DateTime::<Utc>::MAX_UTC
                }
            };
            let tick = Utc::now();
            self.handle.last_tick.store(tick.timestamp_millis(), Ordering::Relaxed);
            metrics::gauge!(crate::telemetry::metrics::SCHEDULER_LAST_TICK)
                .set(tick.timestamp_millis() as f64 / 1000.0);
            tokio::select! {
                () = self.context.clock.sleep_until(wake_at) => {}
                () = tokio::time::sleep_until(next_change_check) => {}
                () = self.handle.wake.notified() => window.mark_stale(),
                () = self.worker_done.notified() => window.note_worker_done(),
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Whether another connection committed since the last look. Without a working watch
    /// (it could not be opened, or it failed) every look counts as a change, so the window is
    /// simply read again.
    async fn changed_elsewhere(&self, changes: &mut Option<ChangeWatch>, unwatched: &mut RepeatedWarning) -> bool {
        unwatched.note(self.context.store.changed_since(changes).await).unwrap_or(true)
    }

    /// One pass: read the window if needed, dispatch what is due now, and say when to look
    /// again (a worker finishing or a change wakes the loop earlier).
    async fn pass(&self, window: &mut Window) -> Result<DateTime<Utc>, crate::store::StoreError> {
        let now = self.context.clock.now();
        if self.overall.available_permits() == 0 {
            return Ok(DateTime::<Utc>::MAX_UTC);
        }
        let (busy, held, held_until) = self.unavailable_providers(now);
        window.note_held(&held);
        if window.needs_read(now) {
            let excluded: Vec<String> = held.iter().cloned().collect();
            let due = self.read_due(now + WINDOW_HORIZON, WINDOW_SIZE, excluded).await?;
            window.replace(due, held.clone());
        }
        let mut waiting_for_busy = self.place_due(window, now, busy, &held);
        let free = self.overall.available_permits();
        if waiting_for_busy && free > 0 && window.may_hide_other_providers() {
            let (busy, held, _) = self.unavailable_providers(now);
            let excluded: Vec<String> = busy.iter().chain(&held).cloned().collect();
            let extra = self.read_due(now, i64::try_from(free).unwrap_or(WINDOW_SIZE), excluded).await?;
            window.merge_other_providers(extra);
            waiting_for_busy = self.place_due(window, now, busy, &held);
        }
        if waiting_for_busy {
            debug!("due tokens wait for a provider's workers");
        }
        let wake_at = window.next_due_after(now).into_iter().chain(held_until).min();
        Ok(wake_at.unwrap_or(DateTime::<Utc>::MAX_UTC))
    }

    /// Up to `limit` tokens due by `horizon`, leaving out `excluded` providers.
    async fn read_due(
        &self,
        horizon: DateTime<Utc>,
        limit: i64,
        excluded: Vec<String>,
    ) -> Result<Vec<DueToken>, crate::store::StoreError> {
        self.context.store.run(move |conn| rotation::due_by(conn, horizon, limit, &excluded)).await
    }

    /// Reserves workers for the window's due tokens and starts one batch claim for them; true
    /// when a due token waits because its provider's workers are all busy.
    fn place_due(
        &self,
        window: &mut Window,
        now: DateTime<Utc>,
        mut busy: HashSet<String>,
        held: &HashSet<String>,
    ) -> bool {
        let mut waiting_for_busy = false;
        let mut batch = Reservations::default();
        window.place_due(now, |token| {
            if held.contains(&token.provider_id) {
                return Placement::Kept;
            }
            if busy.contains(&token.provider_id) {
                waiting_for_busy = true;
                return Placement::Kept;
            }
            let Ok(overall) = self.overall.clone().try_acquire_owned() else {
                return Placement::Full;
            };
            let Ok(provider) = self.provider_semaphore(&token.provider_id).try_acquire_owned() else {
                busy.insert(token.provider_id.clone());
                waiting_for_busy = true;
                return Placement::Kept;
            };
            batch.add(&token.provider_id, Worker { _overall: overall, _provider: provider });
            Placement::Taken
        });
        if !batch.is_empty() {
            self.claim_batch(batch);
        }
        waiting_for_busy
    }

    /// Claims up to the reserved number of due tokens per provider on a task of its own, then
    /// runs each claimed rotation on its own task with one of the reserved workers. Workers
    /// left over (another replica took those tokens, or they are no longer due) are released,
    /// which also makes the loop read its window again.
    ///
    /// One claim runs at a time: workers reserved while it runs wait in the [`ClaimQueue`] and
    /// are claimed together in the next batch. Under load (a worker finishing every
    /// millisecond) the batches grow instead of each finished worker queueing a write
    /// transaction of its own behind the commits of providers' answers.
    fn claim_batch(&self, batch: Reservations) {
        {
            let mut queue = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
            queue.pending.merge(batch);
            if queue.running {
                return;
            }
            queue.running = true;
        }
        let claimer = Claimer {
            context: self.context.clone(),
            worker_done: self.worker_done.clone(),
            blocked_until: self.blocked_until.clone(),
            reports: self.reports.clone(),
        };
        let claims = self.claims.clone();
        tokio::spawn(async move {
            let _running = ClaimerRunning(claims.clone());
            loop {
                let batch = {
                    let mut queue = claims.lock().unwrap_or_else(PoisonError::into_inner);
                    if queue.pending.is_empty() {
                        queue.running = false;
                        return;
                    }
                    std::mem::take(&mut queue.pending)
                };
                claimer.claim_and_start(batch).await;
            }
        });
    }

    /// Providers whose workers are all busy, providers that asked for a pause that has not
    /// ended, and the earliest end of such a pause. Ended pauses are forgotten.
    fn unavailable_providers(&self, now: DateTime<Utc>) -> (HashSet<String>, HashSet<String>, Option<DateTime<Utc>>) {
        let busy = self
            .per_provider
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, semaphore)| semaphore.available_permits() == 0)
            .map(|(provider_id, _)| provider_id.clone())
            .collect();
        let mut blocked = self.blocked_until.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.retain(|_, until| *until > now);
        (busy, blocked.keys().cloned().collect(), blocked.values().min().copied())
    }

    fn provider_semaphore(&self, provider_id: &str) -> Arc<Semaphore> {
        self.per_provider
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(provider_id.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_provider.max(1))))
            .clone()
    }
}

/// Records that providers asked for a pause until the given times (the later time wins).
fn hold_providers(blocked_until: &Mutex<HashMap<String, DateTime<Utc>>>, held: Vec<(String, DateTime<Utc>)>) {
    let mut blocked = blocked_until.lock().unwrap_or_else(PoisonError::into_inner);
    for (provider_id, until) in held {
        let entry = blocked.entry(provider_id).or_insert(until);
        *entry = (*entry).max(until);
    }
}

/// What a claim task needs of the scheduler.
struct Claimer {
    context: Arc<EngineContext>,
    worker_done: Arc<Notify>,
    blocked_until: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    reports: Option<tokio::sync::mpsc::UnboundedSender<RotationReport>>,
}

impl Claimer {
    /// Claims due tokens for `batch`'s reserved workers in one transaction and starts each
    /// claimed rotation on a task of its own; releases the workers nothing was claimed for.
    async fn claim_and_start(&self, mut batch: Reservations) {
        let context = &self.context;
        let rooms = batch.rooms();
        let (owner, lease, now) = (context.owner.clone(), context.lease(), context.clock.now());
        let claimed = context.store.run(move |conn| rotation::claim_due(conn, &rooms, &owner, lease, now)).await;
        let claims = match claimed {
            Ok(claims) => claims,
            Err(err) => {
                error!(error = %err, "cannot claim due tokens");
                drop(batch);
                self.worker_done.notify_one();
                return;
            }
        };
        hold_providers(&self.blocked_until, claims.held);
        for claim in claims.claimed {
            let Some(worker) = batch.take(&claim.provider.id) else {
                error!(token = %claim.token.name, "a claim beyond the reserved workers; its lease will run out");
                continue;
            };
            let (context, worker_done, blocked_until, reports) =
                (context.clone(), self.worker_done.clone(), self.blocked_until.clone(), self.reports.clone());
            tokio::spawn(async move {
                let provider_id = claim.provider.id.clone();
                let report = execute(&context, claim, SCHEDULER_ACTOR).await;
                let now = context.clock.now();
                if let Some(wait) = report.retry_after.and_then(|wait| TimeDelta::from_std(wait).ok()) {
                    hold_providers(&blocked_until, vec![(provider_id, now + wait)]);
                }
                if let Some(reports) = reports {
                    let _ = reports.send(report);
                }
                drop(worker);
                worker_done.notify_one();
            });
        }
        if !batch.is_empty() {
            drop(batch);
            self.worker_done.notify_one();
        }
    }
}

/// Workers reserved for the next batch claim, and whether a claim task is running.
#[derive(Default)]
struct ClaimQueue {
    pending: Reservations,
    running: bool,
}

/// Held by the claim task: if it panics, the next reservation starts a new one.
struct ClaimerRunning(Arc<Mutex<ClaimQueue>>);

impl Drop for ClaimerRunning {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).running = false;
        }
    }
}

/// The permits one rotation holds while it runs: one of all workers and one of its provider's.
struct Worker {
    _overall: OwnedSemaphorePermit,
    _provider: OwnedSemaphorePermit,
}

/// Workers reserved for a batch claim, per provider; dropping them releases them.
#[derive(Default)]
struct Reservations {
    by_provider: HashMap<String, Vec<Worker>>,
}

impl Reservations {
    fn add(&mut self, provider_id: &str, worker: Worker) {
        self.by_provider.entry(provider_id.to_owned()).or_default().push(worker);
    }

    fn is_empty(&self) -> bool {
        self.by_provider.values().all(Vec::is_empty)
    }

    /// Adds `other`'s workers to these.
    fn merge(&mut self, other: Reservations) {
        for (provider_id, workers) in other.by_provider {
            self.by_provider.entry(provider_id).or_default().extend(workers);
        }
    }

    /// How many tokens of each provider the claim may take.
    fn rooms(&self) -> Vec<ProviderRoom> {
        self.by_provider
            .iter()
            .map(|(provider_id, workers)| ProviderRoom { provider_id: provider_id.clone(), room: workers.len() })
            .collect()
    }

    /// One reserved worker for a claimed token of `provider_id`.
    fn take(&mut self, provider_id: &str) -> Option<Worker> {
        self.by_provider.get_mut(provider_id).and_then(Vec::pop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(overall: &Arc<Semaphore>, provider: &Arc<Semaphore>) -> Worker {
        Worker {
            _overall: overall.clone().try_acquire_owned().unwrap(),
            _provider: provider.clone().try_acquire_owned().unwrap(),
        }
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
