//! The answer journal: where a provider's answer becomes durable first.
//!
//! From the moment a provider acts on a rotation until its answer is committed, a killed process
//! loses a credential the provider has already replaced. Committing an answer in full (the
//! token's row, its history, outbox, sink and audit rows) takes several statements; writing it
//! here takes one row. So the answers that arrive together are journaled in one short
//! transaction ([`write`]) and committed in full afterwards (which deletes their rows); if the
//! process dies in between, the next claim of the token's expired lease commits the journaled
//! answer ([`recover`]) instead of probing the provider or retrying a refresh that would find
//! the grant used up. A journal row is fenced like the commit it stands for: it is committed
//! only while its attempt still holds the token's lease.
//!
//! The sealed secret and refresh token are sealed for the token's row, exactly as the commit
//! will store them; key rotation re-seals them like the token's own columns.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use tracing::{info, warn};

use super::models::{TokenRow, naive};
use super::rotation::{self, Answer};
use super::schema::answer_journal;
use super::{DbConnection, StoreError};

/// Journals `answers` in one transaction (the first step of their commit); when it returns,
/// every answer survives a killed process, and if that process never commits them the next
/// claim of each token's expired lease does. An answer journaled before (its attempt retrying a
/// failed commit) is replaced.
pub fn write(conn: &mut DbConnection, answers: &[Answer], now: DateTime<Utc>) -> Result<(), StoreError> {
    let payloads = answers
        .iter()
        .map(|answer| {
            serde_json::to_string(answer).map_err(|err| {
                StoreError::Corrupt(format!("cannot journal the answer for {}: {err}", answer.lease.token_name))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let token_ids: Vec<&str> = answers.iter().map(|answer| answer.lease.token_id.as_str()).collect();
    let rows: Vec<_> = answers
        .iter()
        .zip(&payloads)
        .map(|(answer, payload)| {
            (
                answer_journal::token_id.eq(&answer.lease.token_id),
                answer_journal::attempt_id.eq(&answer.lease.attempt_id),
                answer_journal::secret.eq(Some(&answer.success.secret)),
                answer_journal::refresh_token.eq(answer.success.refresh_token.as_ref()),
                answer_journal::answer.eq(payload),
                answer_journal::journaled_at.eq(naive(now)),
            )
        })
        .collect();
    // Two statements for the whole batch on PostgreSQL (a round trip each); on SQLite, which
    // has no round trips, one cached insert per row (Diesel inserts several rows at once there
    // only outside a multi-backend connection).
    conn.answer_transaction(|conn| {
        diesel::delete(answer_journal::table.filter(answer_journal::token_id.eq_any(&token_ids))).execute(conn)?;
        match conn {
            DbConnection::Postgres(pg) => {
                diesel::insert_into(answer_journal::table).values(&rows).execute(pg)?;
            }
            other => {
                for row in &rows {
                    diesel::insert_into(answer_journal::table).values(*row).execute(other)?;
                }
            }
        }
        Ok(())
    })
}

/// Deletes the journal row of the token with row id `token_id`, if any (its answer was
/// committed, or it belongs to an attempt that no longer holds the lease).
pub(super) fn forget(conn: &mut DbConnection, token_id: &str) -> Result<(), StoreError> {
    diesel::delete(answer_journal::table.filter(answer_journal::token_id.eq(token_id))).execute(conn)?;
    Ok(())
}

/// Deletes the journal row of `lease`'s attempt, if any: its commit was refused because another
/// attempt took the token over.
pub(super) fn forget_attempt(conn: &mut DbConnection, lease: &rotation::Lease) -> Result<(), StoreError> {
    diesel::delete(
        answer_journal::table
            .filter(answer_journal::token_id.eq(&lease.token_id))
            .filter(answer_journal::attempt_id.eq(&lease.attempt_id)),
    )
    .execute(conn)?;
    Ok(())
}

/// A journal row as read back: attempt id, sealed secret, sealed refresh token, the rest as JSON.
type JournalRow = (String, Option<Vec<u8>>, Option<Vec<u8>>, String);

/// Inside a claim's transaction, for a token whose lease ran out: commits the answer its
/// attempt journaled before its process died, if there is one, and returns whether it did. A
/// row of another attempt (or one its commit refuses) is deleted.
pub(super) fn recover(conn: &mut DbConnection, row: &TokenRow) -> Result<bool, StoreError> {
    let found: Option<JournalRow> = answer_journal::table
        .filter(answer_journal::token_id.eq(&row.id))
        .select((
            answer_journal::attempt_id,
            answer_journal::secret,
            answer_journal::refresh_token,
            answer_journal::answer,
        ))
        .get_result(conn)
        .optional()?;
    let Some((attempt_id, secret, refresh_token, payload)) = found else {
        return Ok(false);
    };
    if row.attempt_id.as_deref() != Some(attempt_id.as_str()) {
        forget(conn, &row.id)?;
        return Ok(false);
    }
    let mut answer: Answer = match serde_json::from_str(&payload) {
        Ok(answer) => answer,
        Err(err) => {
            // Never let one unreadable row stop every claim: the token is recovered as after an
            // unknown outcome instead (a probe, or the single retry of a grant).
            warn!(token = %row.name, error = %err, "a journaled answer is unreadable; recovering the token as after an unknown outcome");
            forget(conn, &row.id)?;
            return Ok(false);
        }
    };
    if answer.authorized.as_ref().is_some_and(|authorized| authorized.awaiting_user)
        && super::grant_owners::find(conn, &row.id)?.is_some()
    {
        // A code exchange's answer whose user was never learnt: storing it could put another
        // user's grant on this token. The token's lease mark makes the claim treat it as lost.
        warn!(token = %row.name, "a journaled authorisation whose user was never checked is not committed over the grant's owner");
        forget(conn, &row.id)?;
        return Ok(false);
    }
    answer.success.secret = secret.unwrap_or_default();
    answer.success.refresh_token = refresh_token;
    match rotation::store_answer(conn, &answer) {
        Ok(version) => {
            info!(token = %row.name, version, "committed a provider's answer journaled before its process stopped");
            Ok(true)
        }
        Err(StoreError::LeaseLost { .. }) => {
            forget(conn, &row.id)?;
            Ok(false)
        }
        Err(err) => Err(err),
    }
}
