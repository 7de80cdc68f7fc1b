//! Periodic maintenance on tokio-cron-scheduler: idempotent, state-based jobs ("everything
//! due as of now"), guarded against overlapping themselves, never able to stop the scheduler
//! by failing (a failed run is logged and simply runs again at its next tick).
//!
//! `tokenwarden serve` also calls [`replan`] once at start-up: every `active` token is
//! re-planned under the configured policy, so a policy changed in the configuration applies to
//! all tokens from the next start on, not only to those rotated afterwards.
//!
//! - **sweep**: marks GitLab tokens that expired without a rotation, then wakes the scheduler
//!   so overdue tokens and leases that ran out are claimed (and resolved by the recovery rules);
//! - **validate**: asks GitLab (`GET …/self`, which never triggers reuse detection) whether each
//!   tracked access token still works, so one revoked outside tokenwarden needs attention
//!   within one run instead of at its next rotation; on PostgreSQL only one replica runs it at
//!   a time (the others skip that tick);
//! - **prune**: deletes audit rows past their retention, and webhook deliveries delivered longer
//!   ago than `maintenance.outbox_retention` with their recorded attempts (pending deliveries
//!   are never pruned);
//! - **metrics**: refreshes the per-state and per-token gauges.
//!
//! The sweep, pruning and metrics also run once at start-up (the cron scheduler does not
//! replay runs missed while the daemon was down).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tracing::{error, info, warn};

use super::context::{EngineContext, build_provider};
use super::policy::plan_rotation;
use super::scheduler::SchedulerHandle;
use crate::config::{MaintenanceConfig, PolicyDefaults};
use crate::domain::{Policy, TokenName, TokenState};
use crate::notify::DeliveryCounters;
use crate::providers::{Credential, ProviderError};
use crate::store::StoreError;
use crate::store::job_lock as store_job_lock;
use crate::store::models::Token;
use crate::store::replan::{self as store_replan, ReplanSummary, ScheduledToken};
use crate::store::{audit, outbox, providers, rotation, tokens};
use crate::telemetry::metrics;

/// Most validation look-ups in flight at once (GitLab rate-limits per user).
pub const VALIDATION_CONCURRENCY: usize = 4;
/// Tokens read per page by the validation sweep (never all of them at once).
const VALIDATION_PAGE: i64 = 1_000;

/// What the jobs need besides the engine.
#[derive(Debug, Clone)]
pub struct MaintenanceContext {
    /// The engine (store, cipher, clock, HTTP client).
    pub engine: Arc<EngineContext>,
    /// To wake the scheduler after a sweep.
    pub scheduler: SchedulerHandle,
    /// The webhook dispatcher's counters, exported as metrics.
    pub deliveries: Option<Arc<DeliveryCounters>>,
    /// How long audit rows are kept.
    pub audit_retention: TimeDelta,
}

/// Starts the jobs on `config`'s schedules; keep the returned scheduler alive (dropping it
/// stops them).
pub async fn start(config: &MaintenanceConfig, context: MaintenanceContext) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    let context = Arc::new(context);
    let outbox_retention = TimeDelta::from_std(config.outbox_retention.get()).unwrap_or(TimeDelta::MAX);
    let prune_all = move |c: Arc<MaintenanceContext>| async move {
        prune(&c).await;
        prune_deliveries(&c, outbox_retention).await;
        prune_consent_links(&c).await;
    };
    sweep(&context).await;
    prune_all(context.clone()).await;
    refresh_metrics(&context).await;
    add(&scheduler, &config.sweep, "sweep", &context, |c| async move { sweep(&c).await }).await?;
    add(&scheduler, &config.validate, "validate", &context, |c| async move { validate(&c).await }).await?;
    add(&scheduler, &config.prune, "prune", &context, prune_all).await?;
    add(&scheduler, &config.metrics, "metrics", &context, |c| async move { refresh_metrics(&c).await }).await?;
    scheduler.start().await?;
    Ok(scheduler)
}

/// Adds one job that skips a tick while its previous run is still going.
async fn add<F, Fut>(
    scheduler: &JobScheduler,
    cron: &str,
    name: &'static str,
    context: &Arc<MaintenanceContext>,
    run: F,
) -> Result<(), JobSchedulerError>
where
    F: Fn(Arc<MaintenanceContext>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let guard = Arc::new(Mutex::new(()));
    let context = context.clone();
    let job = Job::new_async(cron, move |_, _| {
        let (guard, context, run) = (guard.clone(), context.clone(), run.clone());
        Box::pin(async move {
            let Ok(_running) = guard.try_lock() else {
                info!(job = name, "previous run still going; skipping this tick");
                return;
            };
            run(context).await;
        })
    })?;
    scheduler.add(job).await?;
    Ok(())
}

/// Marks GitLab tokens that expired without a rotation, heals the managed tokens that are due
/// (see [`super::heal`]), then wakes the scheduler.
pub async fn sweep(context: &MaintenanceContext) {
    let now = context.engine.clock.now();
    match context.engine.store.run(move |conn| rotation::expire_overdue(conn, now)).await {
        Ok(expired) if !expired.is_empty() => error!(tokens = ?expired, "tokens expired without a successful rotation"),
        Ok(_) => {}
        Err(err) => error!(error = %err, "sweep failed; it runs again at its next tick"),
    }
    let healed = super::heal::heal_due(&context.engine).await;
    if healed > 0 {
        info!(healed, "healed managed tokens whose rotation answer was lost");
    }
    context.scheduler.wake();
}

/// Re-plans every `active` token whose planned rotation differs from its plan under the
/// configured policy (see [`crate::store::replan`]), logs how many were re-planned and wakes
/// the scheduler. Run once when the engine starts, so a changed policy applies to every token.
pub async fn replan(context: &MaintenanceContext) -> Result<ReplanSummary, StoreError> {
    let (defaults, now) = (context.engine.policy, context.engine.clock.now());
    let started = Instant::now();
    let summary = context
        .engine
        .store
        .run(move |conn| store_replan::replan(conn, now, |token| plan_under(&defaults, token)))
        .await?;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let ReplanSummary { scheduled, differing, replanned } = summary;
    let changed_meanwhile = differing.saturating_sub(replanned);
    info!(replanned, scheduled, changed_meanwhile, elapsed_ms, "re-planned tokens under the configured policy");
    context.scheduler.wake();
    Ok(summary)
}

/// When `token` should rotate under `defaults` and its own overrides.
pub fn plan_under(defaults: &PolicyDefaults, token: &ScheduledToken) -> DateTime<Utc> {
    let policy = Policy::resolve(token.kind, &token.overrides, defaults);
    plan_rotation(&token.name, token.issued_at, token.expires_at, &policy)
}

/// Asks GitLab about every settled access token (a deploy token cannot look itself up); a dead
/// one needs attention at once.
pub async fn validate(context: &MaintenanceContext) {
    let url = context.engine.store.url().clone();
    let lock = match tokio::task::spawn_blocking(move || store_job_lock::try_lock(&url, "validate")).await {
        Ok(Ok(Some(lock))) => lock,
        Ok(Ok(None)) => return info!("validation skipped: another replica is running it"),
        Ok(Err(err)) => {
            return error!(error = %err, "validation could not take its lock; it runs again at its next tick");
        }
        Err(err) => return error!(error = %err, "validation could not take its lock; it runs again at its next tick"),
    };
    let (mut flagged, mut after) = (0, None::<TokenName>);
    loop {
        let from = after.clone();
        let page =
            match context.engine.store.run(move |conn| tokens::list_page(conn, from.as_ref(), VALIDATION_PAGE)).await {
                Ok(page) => page,
                Err(err) => {
                    return error!(error = %err, "validation could not list tokens; it runs again at its next tick");
                }
            };
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        let full_page = i64::try_from(page.len()).unwrap_or(i64::MAX) == VALIDATION_PAGE;
        let checked = page.into_iter().filter(|t| {
            t.kind.is_gitlab_access_token() && matches!(t.state, TokenState::Active | TokenState::Retrying)
        });
        let limit = Arc::new(tokio::sync::Semaphore::new(VALIDATION_CONCURRENCY));
        let mut runs = tokio::task::JoinSet::new();
        for token in checked {
            let (engine, limit) = (context.engine.clone(), limit.clone());
            runs.spawn(async move {
                let _permit = limit.acquire_owned().await;
                validate_one(&engine, token).await
            });
        }
        while let Some(result) = runs.join_next().await {
            flagged += usize::from(result.unwrap_or(false));
        }
        if !full_page {
            break;
        }
    }
    info!(flagged, "validation sweep finished");
    drop(lock);
}

/// Looks one token up; a 401 flags it `needs_attention` (unless a rotation changed it
/// meanwhile). Returns whether it was flagged.
async fn validate_one(engine: &EngineContext, token: Token) -> bool {
    let name = token.name.clone();
    let (cipher, lookup) = (engine.cipher.clone(), name.clone());
    let provider_name = token.provider.clone();
    let read = engine
        .store
        .run(move |conn| {
            let (current, secret) = tokens::read_current(conn, &cipher, &lookup)?;
            let provider = providers::find_row(conn, &provider_name)?;
            Ok((current, secret, provider))
        })
        .await;
    let (current, secret, provider_row) = match read {
        Ok(read) => read,
        Err(err) => {
            warn!(token = %name, error = %err, "validation could not read the token");
            return false;
        }
    };
    let resource = current.project.as_deref().or(current.group.as_deref());
    let provider = match build_provider(engine, &provider_row, current.kind, resource) {
        Ok(provider) => provider,
        Err(err) => {
            warn!(token = %name, error = %err, "validation could not build the provider");
            return false;
        }
    };
    let now = engine.clock.now();
    let credential = Credential { secret, refresh_token: None, requested_expiry: now.date_naive(), requested_at: now };
    let reason = match provider.inspect(&credential).await {
        Ok(Some(info)) if info.active && !info.revoked => return false,
        Ok(None) => return false,
        Ok(Some(_)) => "GitLab reports the token inactive or revoked".to_owned(),
        Err(ProviderError::Permanent { message, .. }) => message,
        Err(err) => {
            warn!(token = %name, error = %err, "validation look-up failed; trying again next run");
            return false;
        }
    };
    let error = format!("revoked outside tokenwarden (found by the validation sweep): {reason}");
    let version = current.version;
    let flagged = engine
        .store
        .run(move |conn| rotation::flag_needs_attention(conn, &name, version, "revoked", &error, now))
        .await;
    match flagged {
        Ok(true) => error!(token = %current.name, "token was revoked outside tokenwarden; needs attention"),
        Ok(false) => info!(token = %current.name, "token changed while it was validated; left as it is"),
        Err(ref err) => warn!(token = %current.name, error = %err, "could not flag a revoked token"),
    }
    matches!(flagged, Ok(true))
}

/// Deletes audit rows past their retention.
pub async fn prune(context: &MaintenanceContext) {
    let older_than = context.engine.clock.now() - context.audit_retention;
    match context.engine.store.run(move |conn| audit::prune(conn, older_than)).await {
        Ok(0) => {}
        Ok(pruned) => info!(pruned, "pruned old audit rows"),
        Err(err) => error!(error = %err, "pruning failed; it runs again at its next tick"),
    }
}

/// Deletes webhook deliveries delivered more than `retention` ago, with their recorded
/// attempts; pending and abandoned deliveries stay.
pub async fn prune_deliveries(context: &MaintenanceContext, retention: TimeDelta) {
    let older_than =
        context.engine.clock.now().checked_sub_signed(retention).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    match context.engine.store.run(move |conn| outbox::prune_delivered(conn, older_than)).await {
        Ok(0) => {}
        Ok(pruned) => info!(pruned, "pruned delivered webhook deliveries and their attempts"),
        Err(err) => error!(error = %err, "pruning webhook deliveries failed; it runs again at its next tick"),
    }
}

/// How long used or expired consent links are kept (for a late second click to be told
/// "used already" rather than "not known").
pub const CONSENT_LINK_RETENTION: TimeDelta = TimeDelta::days(1);

/// Deletes consent links used or expired more than [`CONSENT_LINK_RETENTION`] ago.
pub async fn prune_consent_links(context: &MaintenanceContext) {
    let now = context.engine.clock.now();
    let pruned = context
        .engine
        .store
        .run(move |conn| crate::store::authorizations::purge(conn, CONSENT_LINK_RETENTION, now))
        .await;
    match pruned {
        Ok(0) => {}
        Ok(pruned) => info!(pruned, "pruned used and expired consent links"),
        Err(err) => error!(error = %err, "pruning consent links failed; it runs again at its next tick"),
    }
}

/// Refreshes the gauges `/metrics` exports from the store and the dispatcher.
pub async fn refresh_metrics(context: &MaintenanceContext) {
    let limit = metrics::TOKEN_EXPIRY_SERIES_LIMIT;
    match context.engine.store.run(move |conn| tokens::gauges(conn, limit)).await {
        Ok(gauges) => metrics::refresh_token_gauges(&gauges),
        Err(err) => warn!(error = %err, "metrics refresh could not list tokens"),
    }
    if let Some(deliveries) = &context.deliveries {
        metrics::refresh_webhook_counters(deliveries);
    }
}
