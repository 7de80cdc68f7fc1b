//! Token gauges that follow the store: the `/metrics` gauges are refreshed as soon as any
//! process commits a change (a rotation here or by another replica, a `token pause` or
//! `token rotate` on the command line), not only by the once-a-minute `maintenance.metrics` job.
//!
//! It looks every [`POLL`] with a [`ChangeWatch`] of its own (`PRAGMA data_version` on SQLite,
//! the `LISTEN`ed change notifications on PostgreSQL: a counter, never a table), and refreshes
//! at most once per [`MIN_REFRESH`], so a store that changes all the time costs one gauge
//! query per [`MIN_REFRESH`]. A change shows on `/metrics` within `POLL + MIN_REFRESH` plus the
//! query's own time.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::maintenance::{MaintenanceContext, refresh_metrics};
use crate::store::changes::ChangeWatch;
use crate::telemetry::repeated_warning::{REPEAT_INTERVAL, RepeatedWarning};

/// How often the store is asked whether anything changed.
pub const POLL: Duration = Duration::from_secs(1);
/// The shortest time between two refreshes.
pub const MIN_REFRESH: Duration = Duration::from_secs(2);

/// Refreshes the gauges after every change until `shutdown` turns true.
pub async fn run(context: MaintenanceContext, mut shutdown: watch::Receiver<bool>) {
    let mut changes: Option<ChangeWatch> = None;
    let mut pending = false;
    let mut last_refresh: Option<Instant> = None;
    let mut unwatched = RepeatedWarning::new(
        "the metrics cannot watch the store for changes; refreshing them instead",
        REPEAT_INTERVAL,
    );
    loop {
        pending |= changed(&context, &mut changes, &mut unwatched).await;
        let allowed = last_refresh.is_none_or(|at| at.elapsed() >= MIN_REFRESH);
        if pending && allowed {
            refresh_metrics(&context).await;
            debug!("token gauges refreshed after a change to the store");
            last_refresh = Some(Instant::now());
            pending = false;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Whether the store changed since the last look; a watch that cannot be opened or fails counts
/// as a change (and is opened again next time), so the gauges are never left stale.
async fn changed(
    context: &MaintenanceContext,
    changes: &mut Option<ChangeWatch>,
    unwatched: &mut RepeatedWarning,
) -> bool {
    unwatched.note(context.engine.store.changed_since(changes).await).unwrap_or(true)
}
