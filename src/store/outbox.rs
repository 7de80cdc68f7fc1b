//! The transactional outbox: webhook deliveries written in the same transaction as the
//! change that caused them, so a crash never loses one.

use chrono::{DateTime, SecondsFormat, Utc};
use diesel::prelude::*;
use serde_json::json;

use super::models::{naive, new_id};
use super::schema::{client_grants, clients, outbox};
use super::{DbConnection, StoreError};
use crate::domain::ClientRole;

/// The events a client can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new secret was committed.
    Rotated,
    /// A streak of transient failures crossed the alert threshold.
    Failed,
    /// A permanent failure: a human must act.
    NeedsAttention,
}

impl Event {
    /// The event name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Rotated => "token.rotated",
            Event::Failed => "token.failed",
            Event::NeedsAttention => "token.needs_attention",
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
    let granted =
        client_grants::table.filter(client_grants::token_name.eq(token_name)).select(client_grants::client_id);
    let subscribers: Vec<String> = clients::table
        .filter(clients::webhook_url.is_not_null())
        .filter(clients::role.eq(ClientRole::Operator.as_str()).or(clients::id.eq_any(granted)))
        .select(clients::id)
        .load(conn)?;
    for client_id in &subscribers {
        let id = new_id();
        let payload = json!({
            "id": id,
            "event": event.as_str(),
            "token": token_name,
            "version": version,
            "expires_at": expires_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            "occurred_at": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        });
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

/// Pending deliveries for `token_name` (for tests and diagnostics): (event, payload).
pub fn pending_for_token(conn: &mut DbConnection, token_name: &str) -> Result<Vec<(String, String)>, StoreError> {
    Ok(outbox::table
        .filter(outbox::token_name.eq(token_name))
        .filter(outbox::delivered_at.is_null())
        .order(outbox::created_at.asc())
        .select((outbox::event, outbox::payload))
        .load(conn)?)
}
