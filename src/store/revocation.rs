//! `token remove --revoke`: the credential is revoked at the provider under the token's own
//! rotation lease (claim → call → commit, like a rotation), so no rotation can run meanwhile
//! and replace the secret being revoked.
//!
//! The claim marks the lease by its owner's name ([`REVOKE_LEASE_MARK`]). If the process dies
//! holding it, the lease runs out and the next claim of any kind marks the token
//! `needs_attention` (`revoke_interrupted`) instead of recovering a rotation that never was. A revocation the
//! provider refused puts back exactly what the claim found (state, lease, recovery marker).

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;

use super::audit::{self, AuditTarget};
use super::models::utc;
use super::rotation::{Claim, Lease, find_claim_row, parse, take_lease};
use super::schema::tokens;
use super::{DbConnection, StoreError};
use crate::domain::{Recovery, TokenName, TokenState};

/// Ends the lease owner's name of a revocation's lease.
pub const REVOKE_LEASE_MARK: &str = " (revoking)";

/// Whether a lease held by `owner` is a revocation's.
pub fn is_revoke_lease(owner: &str) -> bool {
    owner.ends_with(REVOKE_LEASE_MARK)
}

/// A held lease for revoking one token.
#[derive(Debug)]
pub struct RevokeClaim {
    /// The lease, the sealed credential and the token's state before the claim.
    pub claim: Claim,
    /// The `needs_attention` reason it had, if any (a rotation answer lost before: a successor
    /// token may live at the provider).
    pub attention_reason: Option<String>,
}

/// Takes the lease of `name` to revoke it, in any state but a rotation in flight (or another
/// revocation); refused while the provider asked for a pause.
pub fn claim(
    conn: &mut DbConnection,
    name: &TokenName,
    owner: &str,
    lease: TimeDelta,
    now: DateTime<Utc>,
) -> Result<RevokeClaim, StoreError> {
    conn.write_transaction(|conn| {
        let found = find_claim_row(conn, name.as_str())?
            .ok_or_else(|| StoreError::NotFound { what: "token", name: name.to_string() })?;
        let row = &found.0;
        let lease_until = row.lease_expires_at.map(utc).unwrap_or(now);
        if row.state == TokenState::Rotating.as_str() && lease_until > now {
            let what = if row.lease_owner.as_deref().is_some_and(is_revoke_lease) {
                "another `token remove --revoke` holds it"
            } else {
                "it is being rotated right now"
            };
            return Err(StoreError::Conflict(format!(
                "token '{name}' cannot be revoked now: {what} (lease until {}); try again then",
                lease_until.format("%H:%M:%S UTC")
            )));
        }
        if let Some(until) = found.1.not_before.map(utc).filter(|&until| until > now) {
            return Err(StoreError::Conflict(format!(
                "provider '{}' asked for a pause until {}; revoke token '{name}' after that",
                found.1.name,
                until.format("%H:%M:%S UTC")
            )));
        }
        let attention_reason = row.attention_reason.clone();
        // The marker of an earlier unknown outcome stays (a claim after a failed revocation
        // must still probe first); only the owner's name tells the lease is a revocation's.
        let recovery: Option<Recovery> = row.recovery.as_deref().map(|r| parse("recovery", r)).transpose()?;
        let owner = format!("{owner}{REVOKE_LEASE_MARK}");
        let claim = take_lease(conn, found, recovery, &owner, lease, now)?;
        Ok(RevokeClaim { claim, attention_reason })
    })
}

/// The provider revoked the credential (or it no longer worked): removes the token and its
/// grants, fenced by the lease, and audits `detail`. Returns the readers whose grants went.
pub fn remove_revoked(
    conn: &mut DbConnection,
    lease: &Lease,
    actor: &str,
    detail: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    conn.write_transaction(|conn| {
        let held: i64 = tokens::table
            .filter(tokens::id.eq(&lease.token_id))
            .filter(tokens::attempt_id.eq(&lease.attempt_id))
            .count()
            .get_result(conn)?;
        if held != 1 {
            return Err(StoreError::LeaseLost { token: lease.token_name.clone(), attempt: lease.attempt_id.clone() });
        }
        let readers = super::clients::granted(conn, &lease.token_id)?;
        super::tokens::delete_with_grants(conn, &lease.token_id)?;
        let detail = format!("{} {detail}", super::tokens::removal_detail(lease.version, &readers));
        let target = AuditTarget { kind: "token", name: &lease.token_name };
        audit::record(conn, now, actor, "token.remove", target, Some(detail))?;
        Ok(readers)
    })
}

/// The revocation failed and the token stays: puts back what the claim found, fenced by the
/// lease, and audits why.
pub fn release(
    conn: &mut DbConnection,
    lease: &Lease,
    before: &super::lease_restore::Before,
    actor: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        super::lease_restore::put_back(conn, lease, before, now)?;
        let target = AuditTarget { kind: "token", name: &lease.token_name };
        audit::record(conn, now, actor, "token.revoke_failed", target, Some(why.to_owned()))
    })
}
