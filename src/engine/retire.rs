//! The revocation worker: revokes old deploy tokens through their managers once they are due
//! ([`crate::store::pending_revocations`]: every reader acknowledged the successor, or the
//! overlap ended). Each pass claims due rows under a short lease, so replicas sharing a database
//! never revoke the same row twice at once; a failure is retried with jittered exponential
//! backoff and shown in `token show` and `check`. A process killed mid-pass leaves its rows
//! unrevoked and the lease runs out: the next pass revokes them (a token already gone counts as
//! revoked). An acknowledgement or a committed successor wakes the worker at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::EngineContext;
use super::backoff::Backoff;
use super::create::{open_admin, place_of};
use crate::domain::{ProviderName, TokenKind, TokenName};
use crate::providers::gitlab_admin::Namespace;
use crate::store::StoreError;
use crate::store::pending_revocations::{self, PendingRevocation};
use crate::telemetry::repeated_warning::{REPEAT_INTERVAL, RepeatedWarning};

/// Longest sleep between passes when nothing wakes the worker (bounds how late an
/// acknowledgement recorded by another replica, or the end of an overlap, is acted on).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Revocations claimed per pass.
const BATCH: i64 = 32;
/// Waits between failed attempts.
const BACKOFF: Backoff = Backoff { base: Duration::from_secs(10), max: Duration::from_secs(3600) };
/// Failed attempts after which `check` warns about a revocation.
pub const WARN_AFTER_ATTEMPTS: i32 = 3;

/// Runs passes until `shutdown` turns true.
pub async fn run(context: Arc<EngineContext>, mut shutdown: watch::Receiver<bool>) {
    let mut failing = RepeatedWarning::new("cannot claim the due revocations; trying again", REPEAT_INTERVAL);
    loop {
        if *shutdown.borrow() {
            return;
        }
        failing.note(pass(&context, None).await);
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = context.revocations.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// One pass of the worker, for a caller that cannot wait for it (a test, a process without the
/// worker): claims the due revocations and carries them out; returns how many were revoked.
pub async fn revoke_due(context: &EngineContext) -> usize {
    pass(context, None).await.unwrap_or_else(|err| {
        warn!(error = %err, "cannot claim the due revocations; the worker tries again");
        0
    })
}

/// As [`revoke_due`], for the revocations of token row `token_id` only (a heal revokes what it
/// replaced before it returns, and nothing else).
pub async fn revoke_due_of(context: &EngineContext, token_id: &str) -> usize {
    pass(context, Some(token_id.to_owned())).await.unwrap_or_else(|err| {
        warn!(error = %err, "cannot claim the token's due revocations; the worker tries again");
        0
    })
}

/// Claims the due revocations (of `token_id` only, if given) and carries them out; how many were
/// revoked.
async fn pass(context: &EngineContext, token_id: Option<String>) -> Result<usize, StoreError> {
    // A claim keeps other workers away as long as a rotation's lease: a revoke request at its
    // longest and the recording, so a process killed mid-revocation holds its rows that long.
    let (now, lease) = (context.clock.now(), context.lease());
    let claimed = context
        .store
        .run(move |conn| pending_revocations::claim_due(conn, token_id.as_deref(), BATCH, lease, now))
        .await?;
    let mut revoked = 0;
    for row in claimed {
        match revoke_one(context, &row).await {
            Ok(true) => revoked += 1,
            Ok(false) => {}
            Err(err) => {
                warn!(token = %row.token_name, version = row.version, error = %err, "cannot record a revocation")
            }
        }
    }
    Ok(revoked)
}

/// Revokes one claimed row through its manager and records the outcome: whether it was revoked.
async fn revoke_one(context: &EngineContext, row: &PendingRevocation) -> Result<bool, StoreError> {
    let now = context.clock.now();
    match call(context, row).await {
        Ok(()) => {
            let why = if now >= crate::store::models::utc(row.not_after) { "overlap" } else { "acknowledged" };
            info!(token = %row.token_name, version = row.version, id = %row.external_id, after = why, "revoked the old secret");
            metrics::counter!(crate::telemetry::metrics::REVOCATIONS, "outcome" => "revoked").increment(1);
            let done = row.clone();
            context.store.run(move |conn| pending_revocations::record_revoked(conn, &done, why, now)).await?;
            Ok(true)
        }
        Err(error) => {
            let retry_at = BACKOFF.next_attempt(row.attempts + 1, now, None, None);
            warn!(token = %row.token_name, version = row.version, error = %error, retry_at = %retry_at, "the old secret could not be revoked; retrying");
            metrics::counter!(crate::telemetry::metrics::REVOCATIONS, "outcome" => "failed").increment(1);
            let failed = row.clone();
            context.store.run(move |conn| pending_revocations::record_failure(conn, &failed, &error, retry_at)).await?;
            Ok(false)
        }
    }
}

/// `DELETE` at GitLab through the row's manager; any failure as one message.
async fn call(context: &EngineContext, row: &PendingRevocation) -> Result<(), String> {
    let found = row.clone();
    let names = context
        .store
        .run(move |conn| pending_revocations::provider_and_manager(conn, &found))
        .await
        .map_err(|err| err.to_string())?;
    let (provider, manager) = names.ok_or("its manager or provider was removed; revoke it at GitLab")?;
    let provider: ProviderName = provider.parse().map_err(|err| format!("provider name {provider:?}: {err}"))?;
    let manager: TokenName = manager.parse().map_err(|err| format!("token name {manager:?}: {err}"))?;
    let kind: TokenKind = row.token_kind.parse().map_err(|err| format!("{err}"))?;
    let place = Namespace::from_parts(&row.resource_kind, &row.resource)
        .and_then(|namespace| place_of(kind, namespace))
        .ok_or_else(|| format!("a {kind} in a {} is not revoked through a manager", row.resource_kind))?;
    let id: u64 = row.external_id.parse().map_err(|_| format!("GitLab id {:?} is not a number", row.external_id))?;
    let (admin, _) = open_admin(context, &provider, kind, &manager).await.map_err(|err| err.to_string())?;
    admin.revoke(&place, id).await.map_err(|err| err.to_string())
}
