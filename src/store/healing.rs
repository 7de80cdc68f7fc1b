//! Healing: a token tokenwarden created through a manager (`token create`) whose rotation answer
//! was lost (`rotation_response_lost`) — or whose create was interrupted — is replaced through
//! that manager: same GitLab name, scopes, access level and policy. The heal runs under the
//! token's own lease (owner marked [`HEAL_LEASE_MARK`]); this module claims it, says which
//! tokens are due, and puts a token back when a heal fails.

use chrono::{DateTime, TimeDelta, Utc};
use diesel::dsl::max;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Timestamp};

use super::creation::ManagedSpec;
use super::lease_restore::{Before, put_back};
use super::models::{naive, utc};
use super::rotation::{Claim, Lease, find_claim_row, take_lease};
use super::schema::{token_history, token_managers, tokens};
use super::{DbConnection, StoreError};
use crate::domain::{TokenName, TokenState};

/// Ends the lease owner's name of a heal's lease.
pub const HEAL_LEASE_MARK: &str = " (healing)";

/// The `needs_attention` reasons a heal repairs on its own.
pub const HEALABLE_REASONS: [&str; 2] = ["rotation_response_lost", super::creation::CREATE_INTERRUPTED];

/// At most one automatic heal per token in this long.
pub const HEAL_INTERVAL: TimeDelta = TimeDelta::hours(1);

/// Whether a lease held by `owner` is a heal's.
pub fn is_heal_lease(owner: &str) -> bool {
    owner.ends_with(HEAL_LEASE_MARK)
}

/// A heal's lease on one token.
#[derive(Debug)]
pub struct HealClaim {
    /// The lease (the token as it was before, and what to put back).
    pub claim: Claim,
    /// How to make the token again.
    pub spec: ManagedSpec,
}

/// The managed tokens a heal may repair now: `needs_attention` for a healable reason, and not
/// healed within [`HEAL_INTERVAL`].
pub fn due(conn: &mut DbConnection, now: DateTime<Utc>) -> Result<Vec<TokenName>, StoreError> {
    let healed_lately = sql::<Bool>(
        "NOT EXISTS (SELECT 1 FROM token_history WHERE token_history.token_id = tokens.id \
         AND token_history.event = 'healed' AND token_history.occurred_at > ",
    )
    .bind::<Timestamp, _>(naive(now - HEAL_INTERVAL))
    .sql(")");
    let names: Vec<String> = tokens::table
        .inner_join(token_managers::table)
        .filter(tokens::state.eq(TokenState::NeedsAttention.as_str()))
        .filter(tokens::attention_reason.eq_any(HEALABLE_REASONS))
        .filter(healed_lately)
        .select(tokens::name)
        .load(conn)?;
    names.iter().map(|name| super::rotation::parse("token name", name)).collect()
}

fn last_healed(conn: &mut DbConnection, token_id: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let at: Option<chrono::NaiveDateTime> = token_history::table
        .filter(token_history::token_id.eq(token_id))
        .filter(token_history::event.eq("healed"))
        .select(max(token_history::occurred_at))
        .get_result(conn)?;
    Ok(at.map(utc))
}

/// Takes the lease of `name` for a heal. Without `forced` only a token [`due`] lists is taken;
/// `forced` (`token heal NAME`) takes any managed token no live lease holds.
pub fn claim(
    conn: &mut DbConnection,
    name: &TokenName,
    forced: bool,
    owner: &str,
    lease: TimeDelta,
    now: DateTime<Utc>,
) -> Result<HealClaim, StoreError> {
    conn.write_transaction(|conn| {
        let found = find_claim_row(conn, name.as_str())?
            .ok_or_else(|| StoreError::NotFound { what: "token", name: name.to_string() })?;
        let row = &found.0;
        let Some(spec) = super::creation::spec_of(conn, row)? else {
            return Err(StoreError::InvalidInput(format!(
                "token '{name}' was not made by `token create`, so there is no manager to make it again; issue a new token and add it"
            )));
        };
        if row.state == TokenState::Rotating.as_str() && row.lease_expires_at.map(utc).is_some_and(|until| until > now) {
            return Err(StoreError::Conflict(format!("token '{name}' is being rotated right now; heal it afterwards")));
        }
        let healable = row.state == TokenState::NeedsAttention.as_str()
            && row.attention_reason.as_deref().is_some_and(|reason| HEALABLE_REASONS.contains(&reason))
            && last_healed(conn, &row.id)?.is_none_or(|at| at + HEAL_INTERVAL <= now);
        if !forced && !healable {
            return Err(StoreError::Conflict(format!("token '{name}' is not due for a heal")));
        }
        let claim = take_lease(conn, found, None, &format!("{owner}{HEAL_LEASE_MARK}"), lease, now)?;
        Ok(HealClaim { claim, spec })
    })
}

/// A heal that made nothing: puts the token back as the claim found it, with `error` as its
/// last error.
pub fn release(
    conn: &mut DbConnection,
    lease: &Lease,
    before: &Before,
    error: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        super::answer_journal::forget_attempt(conn, lease)?;
        put_back(conn, lease, before, now)?;
        diesel::update(tokens::table.filter(tokens::id.eq(&lease.token_id)))
            .set((tokens::last_error.eq(error), tokens::last_failure_at.eq(naive(now))))
            .execute(conn)?;
        Ok(())
    })
}
