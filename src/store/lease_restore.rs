//! Putting a token back as a claim found it, for the lease holders that are not rotations
//! (`token remove --revoke`, a heal, an authorisation callback) when their provider call changed
//! nothing, and for rotations claimed ahead of a free worker that never started: the token's
//! state, recovery marker and any dead worker's lease return exactly, so the ordinary recovery
//! rules still apply to them.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use super::models::{TokenRow, naive};
use super::rotation::Lease;
use super::schema::tokens;
use super::{DbConnection, StoreError};

/// What a claim found, to put back.
#[derive(Debug, Clone)]
pub struct Before {
    state: String,
    recovery: Option<String>,
    lease_owner: Option<String>,
    lease_expires_at: Option<NaiveDateTime>,
    attempt_id: Option<String>,
}

impl Before {
    /// What `row` holds now (read inside the claim's transaction, before the lease is taken).
    pub fn of(row: &TokenRow) -> Self {
        Self {
            state: row.state.clone(),
            recovery: row.recovery.clone(),
            lease_owner: row.lease_owner.clone(),
            lease_expires_at: row.lease_expires_at,
            attempt_id: row.attempt_id.clone(),
        }
    }
}

/// Puts `before` back, inside the caller's transaction, only while `lease` is still held
/// ([`StoreError::LeaseLost`] otherwise).
pub fn put_back(conn: &mut DbConnection, lease: &Lease, before: &Before, now: DateTime<Utc>) -> Result<(), StoreError> {
    let changed = diesel::update(
        tokens::table.filter(tokens::id.eq(&lease.token_id)).filter(tokens::attempt_id.eq(&lease.attempt_id)),
    )
    .set((
        tokens::state.eq(&before.state),
        tokens::recovery.eq(&before.recovery),
        tokens::lease_owner.eq(&before.lease_owner),
        tokens::lease_expires_at.eq(before.lease_expires_at),
        tokens::attempt_id.eq(&before.attempt_id),
        tokens::updated_at.eq(naive(now)),
    ))
    .execute(conn)?;
    if changed != 1 {
        return Err(StoreError::LeaseLost { token: lease.token_name.clone(), attempt: lease.attempt_id.clone() });
    }
    Ok(())
}

/// Puts back rotations that were claimed but never started (each `(lease, before)`), in one
/// transaction; one whose lease is no longer held is left alone. How many were put back.
pub fn put_back_unstarted(
    conn: &mut DbConnection,
    claims: &[(Lease, Before)],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    conn.write_transaction(|conn| {
        let mut restored = 0;
        for (lease, before) in claims {
            match put_back(conn, lease, before, now) {
                Ok(()) => restored += 1,
                Err(StoreError::LeaseLost { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(restored)
    })
}
