//! The token's lease for an authorisation callback: the code exchange is a provider call like
//! a refresh, so it runs under the token's rotation lease (claim → call → commit); the lease
//! owner's name ends in [`AUTHORIZE_LEASE_MARK`]. If the callback dies holding it, the next claim
//! finds the code spent and its answer lost: the grant is lost (`needs_attention`, `grant_lost`),
//! as for a lost refresh. A callback that fails without storing anything puts the token back as
//! it was ([`release`]); a first authorisation's placeholder row is removed.

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;

use super::authorizations::Pending;
use super::grant_owners::{self, AuthorizedAs};
use super::lease_restore::{Before, put_back};
use super::models::{NewTokenRow, utc};
use super::rotation::{Claim, Lease, find_claim_row, take_lease};
use super::schema::tokens;
use super::{DbConnection, StoreError};
use crate::domain::TokenState;

/// Ends the lease owner's name of an authorisation callback's lease.
pub const AUTHORIZE_LEASE_MARK: &str = " (authorizing)";

/// Whether a lease held by `owner` is an authorisation callback's.
pub fn is_authorize_lease(owner: &str) -> bool {
    owner.ends_with(AUTHORIZE_LEASE_MARK)
}

/// The token as it was before the callback claimed it, to put it back if nothing is stored.
#[derive(Debug, Clone)]
pub struct Prior {
    /// The claim created the token's row (a first authorisation).
    pub created: bool,
    /// Who authorised its grant so far.
    pub owner: Option<AuthorizedAs>,
}

/// What claiming the token for a callback found.
#[derive(Debug)]
pub enum AuthorizationClaim {
    /// The lease is ours.
    Claimed {
        /// The claim (its recovery marker is `code_exchange`).
        claim: Box<Claim>,
        /// How to put the token back.
        prior: Prior,
    },
    /// A rotation holds the token's lease right now.
    Busy {
        /// When that lease runs out.
        until: DateTime<Utc>,
    },
    /// The token is not the one the link was made for any more: why.
    Changed(String),
}

/// Takes the lease of the token `pending` authorises (creating its row for a first
/// authorisation), in one transaction, before the code is exchanged.
pub fn claim(
    conn: &mut DbConnection,
    pending: &Pending,
    owner: &str,
    lease: TimeDelta,
    now: DateTime<Utc>,
) -> Result<AuthorizationClaim, StoreError> {
    let name = pending.token_name.as_str();
    conn.write_transaction(|conn| {
        let load = |conn: &mut DbConnection| find_claim_row(conn, name);
        let mut found = load(conn)?;
        let created = match (&pending.token_id, &found) {
            (None, None) => {
                insert_placeholder(conn, pending, now)?;
                found = load(conn)?;
                true
            }
            (None, Some(_)) => {
                return Ok(AuthorizationClaim::Changed(format!(
                    "a token named '{name}' was added since this link was made; ask for a new link"
                )));
            }
            (Some(id), Some(row)) if *id == row.0.id => false,
            (Some(_), _) => {
                return Ok(AuthorizationClaim::Changed(format!(
                    "token '{name}' was removed or replaced since this link was made; ask for a new link"
                )));
            }
        };
        let Some(mut row) = found else {
            return Err(StoreError::Corrupt(format!("token '{name}' vanished inside its claim")));
        };
        if row.0.state == TokenState::Rotating.as_str() {
            let until = row.0.lease_expires_at.map(utc).unwrap_or(now);
            if until > now && !created {
                return Ok(AuthorizationClaim::Busy { until });
            }
            if super::answer_journal::recover(conn, &row.0)? {
                row = load(conn)?.ok_or_else(|| StoreError::Corrupt(format!("token '{name}' vanished")))?;
            }
        }
        let prior = Prior { created, owner: grant_owners::find(conn, &row.0.id)? };
        let owner = format!("{owner}{AUTHORIZE_LEASE_MARK}");
        let claim = take_lease(conn, row, None, &owner, lease, now)?;
        Ok(AuthorizationClaim::Claimed { claim: Box::new(claim), prior })
    })
}

/// The row of a token authorised for the first time, before it has a grant: version 0, no
/// secret, policy defaults. [`claim`] takes its lease at once; the exchange's answer makes it
/// version 1, and a failed exchange removes it.
fn insert_placeholder(conn: &mut DbConnection, pending: &Pending, now: DateTime<Utc>) -> Result<(), StoreError> {
    let policy = crate::domain::PolicyOverrides::default();
    let row = NewTokenRow::placeholder(&pending.token_name, &pending.provider.id, pending.kind, None, &policy, now);
    diesel::insert_into(tokens::table)
        .values(&row)
        .execute(conn)
        .map_err(StoreError::on_unique("token", pending.token_name.as_str()))?;
    Ok(())
}

/// Puts the token back as the callback's claim found it (`before`) — nothing is committed, and
/// a journaled answer of the callback's attempt is dropped — if the callback still holds the
/// lease: the placeholder row of a first authorisation (`created`) is removed.
pub fn release(
    conn: &mut DbConnection,
    lease: &Lease,
    before: &Before,
    created: bool,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        super::answer_journal::forget_attempt(conn, lease)?;
        let fenced =
            tokens::table.filter(tokens::id.eq(&lease.token_id)).filter(tokens::attempt_id.eq(&lease.attempt_id));
        if !created {
            return put_back(conn, lease, before, now);
        }
        if diesel::delete(fenced).execute(conn)? == 1 {
            return Ok(());
        }
        Err(StoreError::LeaseLost { token: lease.token_name.clone(), attempt: lease.attempt_id.clone() })
    })
}
