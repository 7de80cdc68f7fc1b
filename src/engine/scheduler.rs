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
//! the claim itself is one batch in the store ([`rotation::claim_due`], run by the
//! [`Dispatcher`]), which takes the most urgent due tokens that no other replica is claiming
//! (`SKIP LOCKED` on PostgreSQL). So replicas sharing a database, whose windows all show the
//! same tokens, divide them between them instead of racing for the same rows. A provider whose
//! workers are all busy while more of its tokens are due gets a few claims ahead, which its
//! workers start as they finish.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, Semaphore, watch};
use tracing::debug;

use super::context::EngineContext;
use super::dispatch::{Dispatcher, Reservations, Worker};
use super::protocol::RotationReport;
use super::window::{Placement, WINDOW_SIZE, Window};
use crate::store::changes::ChangeWatch;
use crate::store::rotation::{self, DueToken};
use crate::telemetry::repeated_warning::{REPEAT_INTERVAL, RepeatedWarning};

/// How often the scheduler looks for commits made by other connections or processes (so a
/// token added by the CLI is seen within this time), and the longest it goes without a pass.
pub const CHANGE_POLL: Duration = Duration::from_secs(1);
/// How far ahead the window reaches (a bound the store can compare: stored times are text on
/// SQLite, where a five-digit year would sort before every real one).
pub const WINDOW_HORIZON: TimeDelta = TimeDelta::days(3650);
/// The actor recorded for scheduled rotations.
pub const SCHEDULER_ACTOR: &str = "scheduler";
/// Ready claims kept per provider whose workers are all busy, as a share of its workers.
const READY_SHARE: usize = 4;

/// How many claims ahead to keep for a busy provider: one per [`READY_SHARE`] of its workers.
fn ready_per_provider(limits: Limits) -> usize {
    limits.per_provider.max(1).div_ceil(READY_SHARE)
}

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
    worker_done: Arc<Notify>,
    dispatcher: Arc<Dispatcher>,
}

impl Scheduler {
    /// A scheduler over `context` with `limits`.
    pub fn new(context: Arc<EngineContext>, limits: Limits) -> Self {
        let worker_done = Arc::new(Notify::new());
        Self {
            dispatcher: Arc::new(Dispatcher::new(
                context.clone(),
                worker_done.clone(),
                None,
                ready_per_provider(limits),
            )),
            context,
            limits,
            handle: SchedulerHandle { wake: Arc::new(Notify::new()), last_tick: Arc::new(AtomicI64::new(0)) },
            overall: Arc::new(Semaphore::new(limits.max_concurrency.max(1))),
            per_provider: Mutex::new(HashMap::new()),
            worker_done,
        }
    }

    /// Sends every attempt's report to `sender` (for tests, metrics and the benchmark).
    pub fn with_reports(mut self, sender: tokio::sync::mpsc::UnboundedSender<RotationReport>) -> Self {
        let ready = ready_per_provider(self.limits);
        self.dispatcher =
            Arc::new(Dispatcher::new(self.context.clone(), self.worker_done.clone(), Some(sender), ready));
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
                self.dispatcher.close().await;
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
        self.dispatcher.start_ready(|provider_id| self.reserve(provider_id)).await;
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

    /// Reserves workers for the window's due tokens and starts one batch claim for them, with
    /// claims ahead for providers whose workers are all busy while more of their tokens are
    /// due; true when a due token waits because its provider's workers are all busy.
    fn place_due(
        &self,
        window: &mut Window,
        now: DateTime<Utc>,
        mut busy: HashSet<String>,
        held: &HashSet<String>,
    ) -> bool {
        let mut waiting_for_busy = false;
        let mut batch = Reservations::default();
        let mut ahead = HashSet::new();
        window.place_due(now, |token| {
            if held.contains(&token.provider_id) {
                return Placement::Kept;
            }
            if busy.contains(&token.provider_id) {
                waiting_for_busy = true;
                ahead.insert(token.provider_id.clone());
                return Placement::Kept;
            }
            let provider_semaphore = self.provider_semaphore(&token.provider_id);
            let Ok(overall) = self.overall.clone().try_acquire_owned() else {
                if provider_semaphore.available_permits() < self.limits.per_provider.max(1) {
                    ahead.insert(token.provider_id.clone());
                }
                return Placement::Full;
            };
            let Ok(provider) = provider_semaphore.try_acquire_owned() else {
                busy.insert(token.provider_id.clone());
                waiting_for_busy = true;
                ahead.insert(token.provider_id.clone());
                return Placement::Kept;
            };
            batch.add(&token.provider_id, Worker::new(overall, provider));
            Placement::Taken
        });
        if !batch.is_empty() || !ahead.is_empty() {
            self.dispatcher.claim(batch, ahead);
        }
        waiting_for_busy
    }

    /// A free worker for a token of `provider_id`, if one of all workers and one of its
    /// provider's are free.
    fn reserve(&self, provider_id: &str) -> Option<Worker> {
        let overall = self.overall.clone().try_acquire_owned().ok()?;
        let provider = self.provider_semaphore(provider_id).try_acquire_owned().ok()?;
        Some(Worker::new(overall, provider))
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
        let (held, held_until) = self.dispatcher.held_providers(now);
        (busy, held, held_until)
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
