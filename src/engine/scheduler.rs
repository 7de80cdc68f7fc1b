//! The scheduler: keeps the next-due tokens in memory (a [`Window`]), sleeps until the
//! earliest is due or something changes, and hands due tokens to workers under concurrency
//! limits.
//!
//! It never scans the whole table and never polls the tokens: the window is read through the
//! `next_rotation_at` index only when the data may have changed — a commit by any other
//! connection or process (looked for every [`CHANGE_POLL`] with a counter, not a query of the
//! tokens), a wake-up from the API, or a worker that finished while nothing else is due. An
//! idle daemon therefore asks the store one `PRAGMA data_version` a second and nothing else.
//! Providers whose workers are all busy or that asked for a pause (`Retry-After`) are skipped,
//! and their due tokens wait in the window.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{debug, error, warn};

use super::context::EngineContext;
use super::protocol::{RotationReport, execute};
use super::window::{Placement, WINDOW_SIZE, Window};
use crate::domain::TokenName;
use crate::store::changes::ChangeWatch;
use crate::store::rotation::{self, ClaimMode, ClaimResult, DueToken};

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
    in_flight: Arc<Mutex<HashSet<TokenName>>>,
    blocked_until: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    worker_done: Arc<Notify>,
    reports: Option<tokio::sync::mpsc::UnboundedSender<RotationReport>>,
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
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            blocked_until: Arc::new(Mutex::new(HashMap::new())),
            worker_done: Arc::new(Notify::new()),
            reports: None,
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
        let mut next_change_check = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if tokio::time::Instant::now() >= next_change_check {
                if self.changed_elsewhere(&mut changes).await {
                    window.mark_stale();
                }
                next_change_check = tokio::time::Instant::now() + CHANGE_POLL;
            }
            let wake_at = match self.pass(&mut window).await {
                Ok(wake_at) => wake_at,
                Err(err) => {
                    error!(error = %err, "scheduler pass failed; retrying");
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
    async fn changed_elsewhere(&self, changes: &mut Option<ChangeWatch>) -> bool {
        let (store, current) = (self.context.store.clone(), changes.take());
        let looked = tokio::task::spawn_blocking(move || {
            let mut watch = match current {
                Some(watch) => watch,
                None => store.watch_changes()?,
            };
            let changed = watch.changed()?;
            Ok::<_, crate::store::StoreError>((watch, changed))
        })
        .await;
        match looked {
            Ok(Ok((watch, changed))) => {
                *changes = Some(watch);
                changed
            }
            Ok(Err(err)) => {
                warn!(error = %err, "cannot watch the store for changes; reading the due tokens instead");
                true
            }
            Err(err) => {
                warn!(error = %err, "the change watch failed; reading the due tokens instead");
                true
            }
        }
    }

    /// One pass: read the window if needed, dispatch what is due now, and say when to look
    /// again (a worker finishing or a change wakes the loop earlier).
    async fn pass(&self, window: &mut Window) -> Result<DateTime<Utc>, crate::store::StoreError> {
        let now = self.context.clock.now();
        if self.overall.available_permits() == 0 {
            return Ok(DateTime::<Utc>::MAX_UTC);
        }
        let (busy, held, held_until) = self.unavailable_providers(now);
        if window.needs_read(now) {
            let excluded: Vec<String> = held.iter().cloned().collect();
            let due = self.read_due(now + WINDOW_HORIZON, WINDOW_SIZE, excluded).await?;
            window.replace(due);
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

    /// Starts workers for the window's due tokens; true when a due token waits because its
    /// provider's workers are all busy.
    fn place_due(
        &self,
        window: &mut Window,
        now: DateTime<Utc>,
        mut busy: HashSet<String>,
        held: &HashSet<String>,
    ) -> bool {
        let mut waiting_for_busy = false;
        window.place_due(now, |token| {
            if held.contains(&token.provider_id) {
                return Placement::Kept;
            }
            if busy.contains(&token.provider_id) {
                waiting_for_busy = true;
                return Placement::Kept;
            }
            match self.dispatch(token) {
                Dispatch::Started | Dispatch::AlreadyInFlight => Placement::Taken,
                Dispatch::ProviderBusy => {
                    busy.insert(token.provider_id.clone());
                    waiting_for_busy = true;
                    Placement::Kept
                }
                Dispatch::AllBusy => Placement::Full,
            }
        });
        waiting_for_busy
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

    /// Starts a worker for `token` if limits allow and it is not already in flight here.
    fn dispatch(&self, token: &DueToken) -> Dispatch {
        if self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).contains(&token.name) {
            return Dispatch::AlreadyInFlight;
        }
        let Ok(overall) = self.overall.clone().try_acquire_owned() else {
            return Dispatch::AllBusy;
        };
        let Ok(provider) = self.provider_semaphore(&token.provider_id).try_acquire_owned() else {
            return Dispatch::ProviderBusy;
        };
        let token = token.clone();
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(token.name.clone());
        let context = self.context.clone();
        let in_flight = self.in_flight.clone();
        let worker_done = self.worker_done.clone();
        let blocked_until = self.blocked_until.clone();
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let outcome = claim_and_execute(&context, &token.name).await;
            let (report, hold_until) = match outcome {
                Some(ClaimOutcome::Executed(report)) => {
                    let now = context.clock.now();
                    let until = report.retry_after.and_then(|wait| TimeDelta::from_std(wait).ok()).map(|w| now + w);
                    (Some(report), until)
                }
                Some(ClaimOutcome::ProviderHeld(until)) => (None, Some(until)),
                None => (None, None),
            };
            if let Some(until) = hold_until {
                let mut blocked = blocked_until.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = blocked.entry(token.provider_id.clone()).or_insert(until);
                *entry = (*entry).max(until);
            }
            if let (Some(report), Some(reports)) = (report, reports) {
                let _ = reports.send(report);
            }
            in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(&token.name);
            drop((overall, provider));
            worker_done.notify_one();
        });
        Dispatch::Started
    }
}

/// What [`Scheduler::dispatch`] did.
enum Dispatch {
    /// A worker started.
    Started,
    /// A worker of this process already has the token.
    AlreadyInFlight,
    /// Every worker for the token's provider is busy.
    ProviderBusy,
    /// Every worker is busy.
    AllBusy,
}

/// What a worker's claim led to.
enum ClaimOutcome {
    /// The claim was taken and the attempt ran.
    Executed(RotationReport),
    /// The provider asked for a pause (its `Retry-After`, recorded in the store) until then.
    ProviderHeld(DateTime<Utc>),
}

/// Claims `name` for a scheduled rotation and runs it; `None` when there was nothing to do.
async fn claim_and_execute(context: &EngineContext, name: &TokenName) -> Option<ClaimOutcome> {
    let (owner, lease, now) = (context.owner.clone(), context.lease(), context.clock.now());
    let claim_name = name.clone();
    let claimed = context
        .store
        .run(move |conn| rotation::claim(conn, &claim_name, ClaimMode::Scheduled, &owner, lease, now))
        .await;
    match claimed {
        Ok(ClaimResult::Claimed(claim)) => {
            Some(ClaimOutcome::Executed(execute(context, *claim, SCHEDULER_ACTOR).await))
        }
        Ok(ClaimResult::Wait { until }) => Some(ClaimOutcome::ProviderHeld(until)),
        Ok(_) => None,
        Err(err) => {
            error!(token = %name, error = %err, "cannot claim a due token");
            None
        }
    }
}
