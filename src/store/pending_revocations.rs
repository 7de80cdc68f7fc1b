//! Old credentials waiting to be revoked at GitLab through a manager: a deploy token replaced by
//! its successor stays valid until every reader granted the token has acknowledged the new
//! version (and every sink of it has received it), or until its overlap ends, whichever is
//! first. The row is written in the transaction that committed the successor (like the outbox),
//! so a crash never forgets an old token; a worker claims due rows under a short lease (another
//! replica leaves them alone), revokes, and records the outcome, retrying failures with backoff.
//! Rows have no foreign key: removing the token does not cancel the revocation of its old secret.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use serde::{Deserialize, Serialize};

use super::audit::{self, AuditTarget};
use super::models::{naive, new_id};
use super::rotation::Lease;
use super::schema::{pending_revocations, providers, tokens};
use super::{DbConnection, StoreError};

/// What a committed successor retires: the previous secret, revoked through `manager_id` by
/// `not_after` at the latest. Carried in the answer (and its journal row) so a commit after a
/// crash still records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retirement {
    /// The managing token's row id.
    pub manager_id: String,
    /// The retired token's kind.
    pub token_kind: String,
    /// `project` or `group`.
    pub resource_kind: String,
    /// The project or group.
    pub resource: String,
    /// The end of the overlap: revoked then even if a reader never acknowledged.
    pub not_after: DateTime<Utc>,
}

/// One old credential to revoke (or revoked).
#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = pending_revocations)]
pub struct PendingRevocation {
    /// Row id.
    #[serde(skip)]
    pub id: String,
    /// The token's row id.
    #[serde(skip)]
    pub token_id: String,
    /// The token's name.
    #[serde(skip)]
    pub token_name: String,
    /// The provider's row id.
    #[serde(skip)]
    pub provider_id: String,
    /// The managing token's row id.
    #[serde(skip)]
    pub manager_id: String,
    /// The token's kind.
    #[serde(skip)]
    pub token_kind: String,
    /// `project` or `group`.
    #[serde(skip)]
    pub resource_kind: String,
    /// The project or group.
    #[serde(skip)]
    pub resource: String,
    /// GitLab's id of the old credential.
    pub external_id: String,
    /// The old version.
    pub version: i64,
    /// The version that replaced it.
    pub replaced_by_version: i64,
    /// Revoked then at the latest (the end of the overlap).
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "as_utc")]
    pub not_after: NaiveDateTime,
    /// When it was queued.
    #[serde(skip)]
    pub created_at: NaiveDateTime,
    /// Failed attempts so far.
    pub attempts: i32,
    /// Not tried again before then.
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "as_utc")]
    pub next_attempt_at: NaiveDateTime,
    /// A worker's claim.
    #[serde(skip)]
    pub lease_until: Option<NaiveDateTime>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was revoked (only done revocations have it; `token show` lists those waiting).
    #[serde(skip)]
    pub revoked_at: Option<NaiveDateTime>,
}

/// Writes a stored (UTC) time as RFC 3339 with its offset, like every other time in the API.
fn as_utc<S: serde::Serializer>(at: &NaiveDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&super::models::utc(*at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Every reader granted the token has acknowledged the successor and every sink of the token
/// has received it (true for a token without readers and sinks, or one removed since).
const CONSUMERS_CAUGHT_UP: &str = "NOT EXISTS (SELECT 1 FROM client_grants \
     JOIN clients ON clients.id = client_grants.client_id \
     WHERE client_grants.token_id = pending_revocations.token_id AND clients.role = 'reader' \
     AND (client_grants.acknowledged_version IS NULL \
          OR client_grants.acknowledged_version < pending_revocations.replaced_by_version)) \
     AND NOT EXISTS (SELECT 1 FROM sinks WHERE sinks.token_id = pending_revocations.token_id \
     AND (sinks.delivered_version IS NULL OR sinks.delivered_version < pending_revocations.replaced_by_version))";

/// Queues the revocation of the secret `lease` held (if GitLab named it and the successor is
/// another one); call inside the transaction that commits `replaced_by`.
pub(super) fn record(
    conn: &mut DbConnection,
    lease: &Lease,
    new_external_id: Option<&String>,
    retirement: &Retirement,
    replaced_by: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(old) = lease.external_id.as_ref().filter(|old| Some(*old) != new_external_id) else {
        return Ok(());
    };
    diesel::insert_into(pending_revocations::table)
        .values((
            pending_revocations::id.eq(new_id()),
            pending_revocations::token_id.eq(&lease.token_id),
            pending_revocations::token_name.eq(&lease.token_name),
            pending_revocations::provider_id.eq(&lease.provider_id),
            pending_revocations::manager_id.eq(&retirement.manager_id),
            pending_revocations::token_kind.eq(&retirement.token_kind),
            pending_revocations::resource_kind.eq(&retirement.resource_kind),
            pending_revocations::resource.eq(&retirement.resource),
            pending_revocations::external_id.eq(old),
            pending_revocations::version.eq(lease.version),
            pending_revocations::replaced_by_version.eq(replaced_by),
            pending_revocations::not_after.eq(naive(retirement.not_after)),
            pending_revocations::created_at.eq(naive(now)),
            pending_revocations::attempts.eq(0),
            pending_revocations::next_attempt_at.eq(naive(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Claims up to `limit` revocations that are due now — their consumers caught up or their overlap
/// over, not waiting for a retry, not claimed by a live worker — for `lease`; only those of token
/// row `token_id` when one is given.
pub fn claim_due(
    conn: &mut DbConnection,
    token_id: Option<&str>,
    limit: i64,
    lease: TimeDelta,
    now: DateTime<Utc>,
) -> Result<Vec<PendingRevocation>, StoreError> {
    let at = naive(now);
    let mut due = pending_revocations::table.into_boxed();
    if let Some(token_id) = token_id {
        due = due.filter(pending_revocations::token_id.eq(token_id));
    }
    let candidates: Vec<PendingRevocation> = due
        .filter(pending_revocations::revoked_at.is_null())
        .filter(pending_revocations::next_attempt_at.le(at))
        .filter(pending_revocations::lease_until.is_null().or(pending_revocations::lease_until.le(at)))
        .filter(pending_revocations::not_after.le(at).or(sql::<Bool>(CONSUMERS_CAUGHT_UP)))
        .order(pending_revocations::not_after.asc())
        .limit(limit)
        .select(PendingRevocation::as_select())
        .load(conn)?;
    if candidates.is_empty() {
        return Ok(candidates);
    }
    conn.write_transaction(|conn| {
        let mut claimed = Vec::new();
        for row in &candidates {
            let changed = diesel::update(
                pending_revocations::table
                    .filter(pending_revocations::id.eq(&row.id))
                    .filter(pending_revocations::revoked_at.is_null())
                    .filter(pending_revocations::lease_until.is_null().or(pending_revocations::lease_until.le(at))),
            )
            .set(pending_revocations::lease_until.eq(naive(now + lease)))
            .execute(conn)?;
            if changed == 1 {
                claimed.push(PendingRevocation { lease_until: Some(naive(now + lease)), ..row.clone() });
            }
        }
        Ok(claimed)
    })
}

/// Records that `row` was revoked (or was already gone) and audits it.
pub fn record_revoked(
    conn: &mut DbConnection,
    row: &PendingRevocation,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        diesel::update(pending_revocations::table.filter(pending_revocations::id.eq(&row.id)))
            .set((
                pending_revocations::revoked_at.eq(naive(now)),
                pending_revocations::lease_until.eq(None::<NaiveDateTime>),
                pending_revocations::last_error.eq(None::<String>),
            ))
            .execute(conn)?;
        let detail = format!("version={} id={} after={why}", row.version, row.external_id);
        let target = AuditTarget { kind: "token", name: &row.token_name };
        audit::record(conn, now, "revoker", "token.revoke_previous", target, Some(detail))
    })
}

/// Records a failed attempt: `error`, and not again before `retry_at`.
pub fn record_failure(
    conn: &mut DbConnection,
    row: &PendingRevocation,
    error: &str,
    retry_at: DateTime<Utc>,
) -> Result<i32, StoreError> {
    let attempts = row.attempts + 1;
    diesel::update(pending_revocations::table.filter(pending_revocations::id.eq(&row.id)))
        .set((
            pending_revocations::attempts.eq(attempts),
            pending_revocations::last_error.eq(error),
            pending_revocations::next_attempt_at.eq(naive(retry_at)),
            pending_revocations::lease_until.eq(None::<NaiveDateTime>),
        ))
        .execute(conn)?;
    Ok(attempts)
}

/// The names of `row`'s provider and manager, if both still exist.
pub fn provider_and_manager(
    conn: &mut DbConnection,
    row: &PendingRevocation,
) -> Result<Option<(String, String)>, StoreError> {
    let provider: Option<String> =
        providers::table.filter(providers::id.eq(&row.provider_id)).select(providers::name).first(conn).optional()?;
    let manager: Option<String> =
        tokens::table.filter(tokens::id.eq(&row.manager_id)).select(tokens::name).first(conn).optional()?;
    Ok(provider.zip(manager))
}

/// The revocations of token row `token_id` not done yet, oldest first (`token show`).
pub fn pending_for(conn: &mut DbConnection, token_id: &str) -> Result<Vec<PendingRevocation>, StoreError> {
    Ok(pending_revocations::table
        .filter(pending_revocations::token_id.eq(token_id))
        .filter(pending_revocations::revoked_at.is_null())
        .order(pending_revocations::version.asc())
        .select(PendingRevocation::as_select())
        .load(conn)?)
}

/// The names of tokens whose old secrets still wait for a revocation through `manager_id` (a
/// manager cannot be removed before they are done).
pub fn waiting_on_manager(conn: &mut DbConnection, manager_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(pending_revocations::table
        .filter(pending_revocations::manager_id.eq(manager_id))
        .filter(pending_revocations::revoked_at.is_null())
        .select(pending_revocations::token_name)
        .distinct()
        .load(conn)?)
}

/// Revocations not done after `min_attempts` failures, as (token, version, last error) (`check`).
pub fn failing(conn: &mut DbConnection, min_attempts: i32) -> Result<Vec<(String, i64, String)>, StoreError> {
    let rows: Vec<(String, i64, Option<String>)> = pending_revocations::table
        .filter(pending_revocations::revoked_at.is_null())
        .filter(pending_revocations::attempts.ge(min_attempts))
        .order((pending_revocations::token_name.asc(), pending_revocations::version.asc()))
        .select((pending_revocations::token_name, pending_revocations::version, pending_revocations::last_error))
        .load(conn)?;
    Ok(rows.into_iter().map(|(token, version, error)| (token, version, error.unwrap_or_default())).collect())
}
