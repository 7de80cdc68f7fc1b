//! Periodic maintenance on tokio-cron-scheduler: idempotent, state-based sweeps ("everything
//! due as of now"), each run once at start-up, guarded against overlapping itself, and
//! never able to stop the scheduler by failing.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tracing::{error, info};

use super::context::EngineContext;
use super::scheduler::SchedulerHandle;
use crate::store::rotation;

/// Starts the maintenance jobs; keep the returned scheduler alive (dropping it stops them).
pub async fn start(
    sweep_cron: &str,
    context: Arc<EngineContext>,
    handle: SchedulerHandle,
) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    let guard = Arc::new(Mutex::new(()));
    sweep(&context, &handle, &guard).await;
    let job = Job::new_async(sweep_cron, move |_, _| {
        let (context, handle, guard) = (context.clone(), handle.clone(), guard.clone());
        Box::pin(async move { sweep(&context, &handle, &guard).await })
    })?;
    scheduler.add(job).await?;
    scheduler.start().await?;
    Ok(scheduler)
}

/// The sweep: marks GitLab tokens that expired without a rotation, then wakes the scheduler
/// so overdue tokens and leases that ran out are claimed (and resolved by the recovery rules).
pub async fn sweep(context: &EngineContext, handle: &SchedulerHandle, guard: &Mutex<()>) {
    let Ok(_running) = guard.try_lock() else {
        info!("previous sweep still running; skipping this tick");
        return;
    };
    let now = context.clock.now();
    match context.store.run(move |conn| rotation::expire_overdue(conn, now)).await {
        Ok(expired) if !expired.is_empty() => error!(tokens = ?expired, "tokens expired without a successful rotation"),
        Ok(_) => {}
        Err(err) => error!(error = %err, "sweep failed; it runs again at its next tick"),
    }
    handle.wake();
}
