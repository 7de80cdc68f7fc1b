//! The scheduler: keeps the next-due tokens in view, sleeps until the earliest is due or
//! something changes, and hands due tokens to workers under concurrency limits.
//!
//! It never scans the whole table: each pass reads, through the `next_rotation_at` index, only
//! as many tokens due within [`LOOKAHEAD`] as there are free workers (at most [`BATCH`]),
//! leaving out providers whose workers are all busy or that asked for a pause (`Retry-After`).
//! An idle pass is one small indexed query per [`IDLE_POLL`] — which is also how changes made
//! by the CLI in another process are noticed within a second. While every worker is busy it
//! does not query at all: a worker that finishes wakes it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{debug, error};

use super::context::EngineContext;
use super::protocol::{RotationReport, execute};
use crate::domain::TokenName;
use crate::store::rotation::{self, ClaimMode, ClaimResult, DueToken};

/// Longest sleep between passes (bounds how late a change from another process is seen).
pub const IDLE_POLL: Duration = Duration::from_secs(1);
/// How far ahead a pass looks for due tokens.
pub const LOOKAHEAD: TimeDelta = TimeDelta::seconds(1);
/// Most tokens read per pass.
pub const BATCH: i64 = 512;
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
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wake_at = match self.pass().await {
                Ok(wake_at) => wake_at,
                Err(err) => {
                    error!(error = %err, "scheduler pass failed; retrying");
                    self.context.clock.now() + TimeDelta::from_std(IDLE_POLL).unwrap_or_default()
                }
            };
            let tick = Utc::now();
            self.handle.last_tick.store(tick.timestamp_millis(), Ordering::Relaxed);
            metrics::gauge!(crate::telemetry::metrics::SCHEDULER_LAST_TICK)
                .set(tick.timestamp_millis() as f64 / 1000.0);
            tokio::select! {
                () = self.context.clock.sleep_until(wake_at) => {}
                () = self.handle.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One pass: dispatch what is due now, and say when to look again.
    async fn pass(&self) -> Result<DateTime<Utc>, crate::store::StoreError> {
        let now = self.context.clock.now();
        let mut wake_at = now + TimeDelta::from_std(IDLE_POLL).unwrap_or_default();
        let free = self.overall.available_permits();
        if free == 0 {
            return Ok(wake_at);
        }
        let (excluded, held_until) = self.unavailable_providers(now);
        if let Some(until) = held_until {
            wake_at = wake_at.min(until);
        }
        let (horizon, limit) = (now + LOOKAHEAD, i64::try_from(free).unwrap_or(BATCH).min(BATCH));
        let due = self.context.store.run(move |conn| rotation::due_by(conn, horizon, limit, &excluded)).await?;
        for token in due {
            if token.due_at > now {
                wake_at = wake_at.min(token.due_at);
                continue;
            }
            if !self.dispatch(token) {
                debug!("concurrency limit reached; waiting for a worker");
            }
        }
        Ok(wake_at)
    }

    /// Providers a pass must leave out: every worker for them is busy, or they asked for a
    /// pause that has not ended (and the earliest such end). Ended pauses are forgotten.
    fn unavailable_providers(&self, now: DateTime<Utc>) -> (Vec<String>, Option<DateTime<Utc>>) {
        let mut excluded: Vec<String> = self
            .per_provider
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, semaphore)| semaphore.available_permits() == 0)
            .map(|(provider_id, _)| provider_id.clone())
            .collect();
        let mut blocked = self.blocked_until.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.retain(|_, until| *until > now);
        excluded.extend(blocked.keys().cloned());
        (excluded, blocked.values().min().copied())
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
    fn dispatch(&self, token: DueToken) -> bool {
        if self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).contains(&token.name) {
            return true;
        }
        let Ok(overall) = self.overall.clone().try_acquire_owned() else {
            return false;
        };
        let Ok(provider) = self.provider_semaphore(&token.provider_id).try_acquire_owned() else {
            return false;
        };
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(token.name.clone());
        let context = self.context.clone();
        let in_flight = self.in_flight.clone();
        let wake = self.handle.wake.clone();
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
            wake.notify_one();
        });
        true
    }
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
