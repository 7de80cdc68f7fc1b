//! The transactional outbox: webhook deliveries written in the same transaction as the
//! change that caused them, so a crash never loses one.
//!
//! The engine writes rows ([`enqueue`]); the notify dispatcher claims due rows under a short
//! lease ([`claim_due`]), sends them, and records each attempt ([`record_success`],
//! [`record_failure`]), both on the delivery and as a row of its own in `webhook_attempts`
//! ([`attempts`]). A delivery keeps its id across retries; a lease that runs out (its
//! dispatcher died) makes the row claimable again, so delivery is at least once. Delivered
//! rows and their attempts are pruned after a retention ([`prune_delivered`]).

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeDelta, Utc};
use diesel::dsl::min;
use diesel::prelude::*;
use serde_json::json;

use super::models::{naive, new_id, utc};
use super::schema::{client_grants, clients, outbox, tokens, webhook_attempts};
use super::{DbConnection, StoreError};
use crate::domain::ClientRole;

/// The events a client can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new secret was committed.
    Rotated,
    /// A streak of transient failures crossed the alert threshold.
    Failed,
    /// A permanent failure: a human must act (the body says why and what to do).
    NeedsAttention,
    /// A user authorised the token's OAuth grant (a first connection or a re-authorisation).
    Authorized,
}

impl Event {
    /// The event name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Rotated => "token.rotated",
            Event::Failed => "token.failed",
            Event::NeedsAttention => "token.needs_attention",
            Event::Authorized => "token.authorized",
        }
    }
}

/// Writes one delivery per subscribed client (a webhook, and operator role or a grant for the
/// token); call inside the transaction that made the change. Returns how many were written.
pub fn enqueue(
    conn: &mut DbConnection,
    event: Event,
    token_name: &str,
    version: i64,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let token_id = tokens::table.filter(tokens::name.eq(token_name)).select(tokens::id);
    let granted =
        client_grants::table.filter(client_grants::token_id.eq_any(token_id)).select(client_grants::client_id);
    let subscribers: Vec<String> = clients::table
        .filter(clients::webhook_url.is_not_null())
        .filter(clients::role.eq(ClientRole::Operator.as_str()).or(clients::id.eq_any(granted)))
        .select(clients::id)
        .load(conn)?;
    let attention = match event {
        Event::NeedsAttention if !subscribers.is_empty() => Some(attention_of(conn, token_name)?),
        _ => None,
    };
    for client_id in &subscribers {
        let id = new_id();
        let mut payload = json!({
            "id": id,
            "event": event.as_str(),
            "token": token_name,
            "version": version,
            "expires_at": expires_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            "occurred_at": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        });
        if let Some((reason, remedy)) = &attention {
            payload["reason"] = json!(reason);
            payload["remedy"] = json!(remedy);
        }
        diesel::insert_into(outbox::table)
            .values((
                outbox::id.eq(&id),
                outbox::client_id.eq(client_id),
                outbox::event.eq(event.as_str()),
                outbox::token_name.eq(token_name),
                outbox::payload.eq(payload.to_string()),
                outbox::created_at.eq(naive(now)),
                outbox::next_attempt_at.eq(naive(now)),
            ))
            .execute(conn)?;
    }
    Ok(subscribers.len())
}

/// Why `token_name` needs attention and what a human does about it, for the webhook body:
/// its recorded reason (or its state, e.g. `expired`) and the remedy (`reauthorize` for an
/// OAuth grant, `replace` for an access token nobody can heal, …; see [`super::models::remedy`]).
fn attention_of(conn: &mut DbConnection, token_name: &str) -> Result<(String, &'static str), StoreError> {
    let (kind, state, reason): (String, String, Option<String>) = tokens::table
        .filter(tokens::name.eq(token_name))
        .select((tokens::kind, tokens::state, tokens::attention_reason))
        .get_result(conn)?;
    let kind: crate::domain::TokenKind = super::rotation::parse("token kind", &kind)?;
    let reason = reason.unwrap_or(state);
    let remedy = super::models::remedy(kind, &reason);
    Ok((reason, remedy))
}

/// Pending (neither delivered nor abandoned) deliveries for `token_name` (for tests and
/// diagnostics): (event, payload).
pub fn pending_for_token(conn: &mut DbConnection, token_name: &str) -> Result<Vec<(String, String)>, StoreError> {
    Ok(outbox::table
        .filter(outbox::token_name.eq(token_name))
        .filter(outbox::delivered_at.is_null())
        .filter(outbox::abandoned_at.is_null())
        .order(outbox::created_at.asc())
        .select((outbox::event, outbox::payload))
        .load(conn)?)
}

/// A delivery claimed for sending, with where to send it and the key to sign it with.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// The delivery id (also the payload's `id`; stable across retries).
    pub id: String,
    /// The receiving client's row id.
    pub client_id: String,
    /// The receiving client's name (for logs).
    pub client_name: String,
    /// The event name (`token.rotated`, …).
    pub event: String,
    /// The JSON body, byte for byte as it was committed.
    pub payload: String,
    /// When the change that caused it was committed.
    pub created_at: DateTime<Utc>,
    /// Attempts recorded before this one.
    pub attempts: i32,
    /// The client's webhook URL (`None` if it was removed since).
    pub webhook_url: Option<String>,
    /// The client's sealed webhook secret; open it with [`super::clients::webhook_secret_context`].
    pub sealed_secret: Option<Vec<u8>>,
    /// The secret it had before `client rotate-webhook-secret`, while their overlap lasts
    /// (sealed the same way): deliveries are signed with both.
    pub previous_sealed_secret: Option<Vec<u8>>,
}

/// What happens to a delivery after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this moment.
    RetryAt(DateTime<Utc>),
    /// Stop trying: the retry window is over.
    Abandon,
}

/// How a failed attempt was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureRecorded {
    /// The delivery will be tried again.
    Retrying,
    /// The delivery was abandoned.
    Abandoned,
    /// Nothing was written: the lease had passed to another dispatcher, or the row is gone.
    LeaseLost,
}

/// One delivery as stored, for tests and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The delivery id.
    pub id: String,
    /// The receiving client's row id.
    pub client_id: String,
    /// The event name.
    pub event: String,
    /// The token it is about.
    pub token_name: String,
    /// The JSON body.
    pub payload: String,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it is (or was) next due.
    pub next_attempt_at: DateTime<Utc>,
    /// Attempts recorded so far.
    pub attempts: i32,
    /// When a receiver accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// Until when a dispatcher holds it.
    pub leased_until: Option<DateTime<Utc>>,
    /// Which dispatcher holds it.
    pub lease_owner: Option<String>,
    /// When it was given up.
    pub abandoned_at: Option<DateTime<Utc>>,
}

/// A full `outbox` row as Diesel reads it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox)]
struct DeliveryRow {
    id: String,
    client_id: String,
    event: String,
    token_name: String,
    payload: String,
    created_at: NaiveDateTime,
    next_attempt_at: NaiveDateTime,
    attempts: i32,
    delivered_at: Option<NaiveDateTime>,
    last_error: Option<String>,
    leased_until: Option<NaiveDateTime>,
    lease_owner: Option<String>,
    abandoned_at: Option<NaiveDateTime>,
}

impl From<DeliveryRow> for Delivery {
    fn from(row: DeliveryRow) -> Self {
        Self {
            id: row.id,
            client_id: row.client_id,
            event: row.event,
            token_name: row.token_name,
            payload: row.payload,
            created_at: utc(row.created_at),
            next_attempt_at: utc(row.next_attempt_at),
            attempts: row.attempts,
            delivered_at: row.delivered_at.map(utc),
            last_error: row.last_error,
            leased_until: row.leased_until.map(utc),
            lease_owner: row.lease_owner,
            abandoned_at: row.abandoned_at.map(utc),
        }
    }
}

/// The columns of a delivery joined with its client's webhook settings.
type ClaimColumns = (
    (String, String, String, String, String, NaiveDateTime, i32, Option<String>, Option<Vec<u8>>),
    (Option<Vec<u8>>, Option<NaiveDateTime>),
);

/// Neither delivered nor abandoned, and due at `now`.
#[diesel::dsl::auto_type]
fn due(now: NaiveDateTime) -> _ {
    outbox::delivered_at.is_null().and(outbox::abandoned_at.is_null()).and(outbox::next_attempt_at.le(now))
}

/// Clients that have a delivery under a live lease (in flight somewhere), plus `busy_clients`.
fn clients_in_flight(
    conn: &mut DbConnection,
    now: NaiveDateTime,
    busy_clients: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut leased: Vec<String> =
        outbox::table.filter(outbox::leased_until.gt(now)).select(outbox::client_id).distinct().load(conn)?;
    leased.extend(busy_clients.iter().cloned());
    Ok(leased)
}

/// Claims up to `limit` due deliveries for `owner` until `now + lease`, oldest first and at
/// most one per client: clients with a delivery under a live lease (anywhere) and those in
/// `busy_clients` (in flight in this process) are skipped. One write transaction, so two
/// dispatchers on one database never claim the same row; when nothing is due, only a read.
pub fn claim_due(
    conn: &mut DbConnection,
    owner: &str,
    now: DateTime<Utc>,
    lease: TimeDelta,
    limit: usize,
    busy_clients: &[String],
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (now, until) = (naive(now), naive(now + lease));
    let anything_due = outbox::table.filter(due(now)).select(outbox::id).first::<String>(conn).optional()?.is_some();
    if !anything_due {
        return Ok(Vec::new());
    }
    conn.write_transaction(|conn| {
        let in_flight = clients_in_flight(conn, now, busy_clients)?;
        let ready: Vec<(String, Option<NaiveDateTime>)> = outbox::table
            .filter(due(now))
            .filter(outbox::client_id.ne_all(&in_flight))
            .group_by(outbox::client_id)
            .select((outbox::client_id, min(outbox::created_at)))
            .order_by(min(outbox::created_at).asc())
            .limit(limit)
            .load(conn)?;
        let mut claimed = Vec::with_capacity(ready.len());
        for (client_id, _) in ready {
            if let Some(delivery) = oldest_due_for_client(conn, &client_id, now)? {
                claimed.push(delivery);
            }
        }
        if claimed.is_empty() {
            return Ok(claimed);
        }
        let ids: Vec<&str> = claimed.iter().map(|d| d.id.as_str()).collect();
        diesel::update(outbox::table.filter(outbox::id.eq_any(&ids)))
            .set((outbox::leased_until.eq(until), outbox::lease_owner.eq(owner)))
            .execute(conn)?;
        Ok(claimed)
    })
}

/// The oldest due delivery of one client, with the client's webhook URL and sealed secret.
fn oldest_due_for_client(
    conn: &mut DbConnection,
    client_id: &str,
    now: NaiveDateTime,
) -> Result<Option<ClaimedDelivery>, StoreError> {
    let row: Option<ClaimColumns> = outbox::table
        .inner_join(clients::table)
        .filter(outbox::client_id.eq(client_id))
        .filter(due(now))
        .order((outbox::created_at.asc(), outbox::id.asc()))
        .select((
            (
                outbox::id,
                outbox::client_id,
                clients::name,
                outbox::event,
                outbox::payload,
                outbox::created_at,
                outbox::attempts,
                clients::webhook_url,
                clients::webhook_secret,
            ),
            (clients::previous_webhook_secret, clients::previous_webhook_secret_expires_at),
        ))
        .first(conn)
        .optional()?;
    Ok(row.map(|(delivery, (previous, previous_until))| {
        let (id, client_id, client_name, event, payload, created_at, attempts, webhook_url, sealed_secret) = delivery;
        let previous_sealed_secret = previous.filter(|_| previous_until.is_some_and(|until| until > now));
        ClaimedDelivery {
            id,
            client_id,
            client_name,
            event,
            payload,
            created_at: utc(created_at),
            attempts,
            webhook_url,
            sealed_secret,
            previous_sealed_secret,
        }
    }))
}

/// When a dispatcher should look again: the earliest moment a pending delivery of a client
/// not in `busy_clients` falls due, or a live lease held elsewhere runs out.
pub fn next_wake_at(
    conn: &mut DbConnection,
    now: DateTime<Utc>,
    busy_clients: &[String],
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let now = naive(now);
    let in_flight = clients_in_flight(conn, now, busy_clients)?;
    let next_due: Option<NaiveDateTime> = outbox::table
        .filter(outbox::delivered_at.is_null())
        .filter(outbox::abandoned_at.is_null())
        .filter(outbox::client_id.ne_all(&in_flight))
        .select(min(outbox::next_attempt_at))
        .get_result(conn)?;
    let lease_ends: Option<NaiveDateTime> = outbox::table
        .filter(outbox::leased_until.gt(now))
        .filter(outbox::client_id.ne_all(busy_clients))
        .select(min(outbox::leased_until))
        .get_result(conn)?;
    Ok(next_due.into_iter().chain(lease_ends).min().map(utc))
}

/// One attempt to deliver, as the dispatcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When the request was sent.
    pub attempted_at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why the attempt failed (no URL, no secret); `None` when the receiver accepted it.
    pub error: Option<String>,
    /// From sending the request to its outcome.
    pub duration: Duration,
}

/// A row of `webhook_attempts` as Diesel reads it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_attempts)]
struct AttemptRow {
    attempted_at: NaiveDateTime,
    status: Option<i32>,
    error: Option<String>,
    duration_ms: i64,
}

impl TryFrom<AttemptRow> for Attempt {
    type Error = StoreError;

    fn try_from(row: AttemptRow) -> Result<Self, StoreError> {
        let status = row
            .status
            .map(|status| u16::try_from(status).map_err(|_| StoreError::Corrupt(format!("webhook status {status}"))))
            .transpose()?;
        let millis = u64::try_from(row.duration_ms)
            .map_err(|_| StoreError::Corrupt(format!("webhook attempt duration {} ms", row.duration_ms)))?;
        Ok(Self {
            attempted_at: utc(row.attempted_at),
            status,
            error: row.error,
            duration: Duration::from_millis(millis),
        })
    }
}

/// Writes `attempt` at delivery `id`, if the delivery still exists (another process may have
/// pruned it, or its client was removed, while the request was in flight).
fn insert_attempt(conn: &mut DbConnection, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
    let exists = outbox::table.filter(outbox::id.eq(id)).select(outbox::id).first::<String>(conn).optional()?;
    if exists.is_none() {
        return Ok(());
    }
    let duration_ms = i64::try_from(attempt.duration.as_millis()).unwrap_or(i64::MAX);
    diesel::insert_into(webhook_attempts::table)
        .values((
            webhook_attempts::id.eq(new_id()),
            webhook_attempts::delivery_id.eq(id),
            webhook_attempts::attempted_at.eq(naive(attempt.attempted_at)),
            webhook_attempts::status.eq(attempt.status.map(i32::from)),
            webhook_attempts::error.eq(attempt.error.as_deref()),
            webhook_attempts::duration_ms.eq(duration_ms),
        ))
        .execute(conn)?;
    Ok(())
}

/// Records that a receiver accepted the delivery: delivered now, one more attempt, lease
/// released, and the attempt's row. A success counts even if the lease had passed to another
/// dispatcher (which may have abandoned it meanwhile). Returns whether the row was still
/// undelivered.
pub fn record_success(
    conn: &mut DbConnection,
    id: &str,
    attempt: &Attempt,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    conn.write_transaction(|conn| {
        let updated = diesel::update(outbox::table.filter(outbox::id.eq(id)).filter(outbox::delivered_at.is_null()))
            .set((
                outbox::delivered_at.eq(naive(now)),
                outbox::attempts.eq(outbox::attempts + 1),
                outbox::leased_until.eq(None::<NaiveDateTime>),
                outbox::lease_owner.eq(None::<String>),
                outbox::abandoned_at.eq(None::<NaiveDateTime>),
            ))
            .execute(conn)?;
        insert_attempt(conn, id, attempt)?;
        Ok(updated > 0)
    })
}

/// Records a failed attempt by `owner`: one more attempt, its error, and either the next
/// attempt's time or abandonment; releases the lease. Fenced by the lease owner, so a
/// dispatcher whose lease ran out cannot reschedule a delivery another one is sending — but
/// the attempt's own row is written either way (the receiver did get the request).
pub fn record_failure(
    conn: &mut DbConnection,
    id: &str,
    owner: &str,
    attempt: &Attempt,
    now: DateTime<Utc>,
    after: AfterFailure,
) -> Result<FailureRecorded, StoreError> {
    let (next_attempt_at, abandoned_at, recorded) = match after {
        AfterFailure::RetryAt(at) => (naive(at), None, FailureRecorded::Retrying),
        AfterFailure::Abandon => (naive(now), Some(naive(now)), FailureRecorded::Abandoned),
    };
    let error = attempt.error.as_deref().unwrap_or("the attempt failed");
    conn.write_transaction(|conn| {
        let target = outbox::table
            .filter(outbox::id.eq(id))
            .filter(outbox::lease_owner.eq(owner))
            .filter(outbox::delivered_at.is_null())
            .filter(outbox::abandoned_at.is_null());
        let updated = diesel::update(target)
            .set((
                outbox::attempts.eq(outbox::attempts + 1),
                outbox::last_error.eq(error),
                outbox::leased_until.eq(None::<NaiveDateTime>),
                outbox::lease_owner.eq(None::<String>),
                outbox::next_attempt_at.eq(next_attempt_at),
                outbox::abandoned_at.eq(abandoned_at),
            ))
            .execute(conn)?;
        insert_attempt(conn, id, attempt)?;
        Ok(if updated == 0 { FailureRecorded::LeaseLost } else { recorded })
    })
}

/// Deletes deliveries delivered before `older_than`, and their attempts; pending and abandoned
/// deliveries stay. Returns how many deliveries were deleted.
pub fn prune_delivered(conn: &mut DbConnection, older_than: DateTime<Utc>) -> Result<usize, StoreError> {
    conn.write_transaction(|conn| {
        let old = outbox::table.filter(outbox::delivered_at.lt(naive(older_than))).select(outbox::id);
        diesel::delete(webhook_attempts::table.filter(webhook_attempts::delivery_id.eq_any(old))).execute(conn)?;
        Ok(diesel::delete(outbox::table.filter(outbox::delivered_at.lt(naive(older_than)))).execute(conn)?)
    })
}

/// Every recorded attempt at delivery `id`, oldest first (for tests and diagnostics).
pub fn attempts(conn: &mut DbConnection, id: &str) -> Result<Vec<Attempt>, StoreError> {
    let rows: Vec<AttemptRow> = webhook_attempts::table
        .filter(webhook_attempts::delivery_id.eq(id))
        .order((webhook_attempts::attempted_at.asc(), webhook_attempts::id.asc()))
        .select(AttemptRow::as_select())
        .load(conn)?;
    rows.into_iter().map(Attempt::try_from).collect()
}

/// Every delivery about `token_name`, oldest first (for tests and diagnostics).
pub fn deliveries_for_token(conn: &mut DbConnection, token_name: &str) -> Result<Vec<Delivery>, StoreError> {
    let rows: Vec<DeliveryRow> = outbox::table
        .filter(outbox::token_name.eq(token_name))
        .order((outbox::created_at.asc(), outbox::id.asc()))
        .select(DeliveryRow::as_select())
        .load(conn)?;
    Ok(rows.into_iter().map(Delivery::from).collect())
}

/// One delivery by id (for tests and diagnostics).
pub fn find(conn: &mut DbConnection, id: &str) -> Result<Option<Delivery>, StoreError> {
    let row: Option<DeliveryRow> =
        outbox::table.filter(outbox::id.eq(id)).select(DeliveryRow::as_select()).get_result(conn).optional()?;
    Ok(row.map(Delivery::from))
}
