//! `token create`: a token made at GitLab through a managing credential. The create call is a
//! provider call like a rotation, so it runs under the new token's own rotation lease: the row
//! is written first (version 0, no secret, lease owner marked [`CREATE_LEASE_MARK`]) with what
//! it is created with, the answer is then journaled and committed as version 1 — or the row is
//! removed when GitLab provably made nothing ([`abandon`]). A process that dies holding the lease
//! leaves the token `needs_attention` (`create_interrupted`): GitLab may hold a token of that
//! name tokenwarden never saw.

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;

use super::models::{NewTokenRow, ProviderRow, TokenRow};
use super::rotation::{Claim, ClaimRow, Lease, take_lease};
use super::schema::{providers, token_managers, tokens};
use super::{DbConnection, StoreError};
use crate::domain::{PolicyOverrides, TokenKind, TokenName};

/// Ends the lease owner's name of a `token create`'s lease.
pub const CREATE_LEASE_MARK: &str = " (creating)";

/// `needs_attention` reason of a token whose creation was interrupted.
pub const CREATE_INTERRUPTED: &str = "create_interrupted";

/// Whether a lease held by `owner` is a `token create`'s.
pub fn is_create_lease(owner: &str) -> bool {
    owner.ends_with(CREATE_LEASE_MARK)
}

/// How long an old deploy token stays valid after its successor is committed, when readers do
/// not all acknowledge the new version sooner.
pub const DEFAULT_OVERLAP: TimeDelta = TimeDelta::hours(1);

/// A token to create at GitLab.
#[derive(Debug, Clone)]
pub struct NewManagedToken {
    /// Its name in tokenwarden.
    pub name: TokenName,
    /// Project or group access token, or deploy token.
    pub kind: TokenKind,
    /// The provider's row id.
    pub provider_id: String,
    /// `project` or `group`.
    pub resource_kind: String,
    /// The project or group.
    pub resource: String,
    /// Its name at GitLab.
    pub gitlab_name: String,
    /// The managing token's row id.
    pub manager_id: String,
    /// Its role (10 … 50).
    pub access_level: i32,
    /// Its scopes, space-separated.
    pub scopes: String,
    /// Its policy overrides.
    pub policy: PolicyOverrides,
    /// Deploy tokens: how long the old one outlives its successor at most.
    pub overlap: Option<TimeDelta>,
}

/// How a managed token was made, to make it again.
#[derive(Debug, Clone)]
pub struct ManagedSpec {
    /// The managing token's row id.
    pub manager_id: String,
    /// The managing token's name.
    pub manager: TokenName,
    /// The role it was created with.
    pub access_level: u8,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its name at GitLab.
    pub gitlab_name: String,
    /// `project` or `group`.
    pub resource_kind: String,
    /// Its project or group.
    pub resource: String,
    /// Deploy tokens: how long an old one outlives its successor at most.
    pub overlap: TimeDelta,
}

/// How the token with row id `token_id` was made, if `token create` made it.
pub fn spec_by_id(conn: &mut DbConnection, token_id: &str) -> Result<Option<ManagedSpec>, StoreError> {
    let row: TokenRow = tokens::table.filter(tokens::id.eq(token_id)).select(TokenRow::as_select()).get_result(conn)?;
    spec_of(conn, &row)
}

/// How the token of `row` was made, if `token create` made it.
pub fn spec_of(conn: &mut DbConnection, row: &TokenRow) -> Result<Option<ManagedSpec>, StoreError> {
    let managed: Option<(String, i32, String, Option<i64>, String)> = token_managers::table
        .inner_join(tokens::table.on(tokens::id.eq(token_managers::manager_id)))
        .filter(token_managers::token_id.eq(&row.id))
        .select((
            token_managers::manager_id,
            token_managers::access_level,
            token_managers::scopes,
            token_managers::overlap_seconds,
            tokens::name,
        ))
        .get_result(conn)
        .optional()?;
    let Some((manager_id, access_level, scopes, overlap, manager)) = managed else { return Ok(None) };
    let kind: TokenKind = super::rotation::parse("token kind", &row.kind)?;
    let resource_kind = row.namespace_kind(kind).unwrap_or(super::models::PROJECT).to_owned();
    Ok(Some(ManagedSpec {
        manager_id,
        manager: super::rotation::parse("token name", &manager)?,
        access_level: u8::try_from(access_level).unwrap_or(30),
        scopes: scopes.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        gitlab_name: row.gitlab_name.clone().unwrap_or_else(|| format!("tokenwarden: {}", row.name)),
        resource_kind,
        resource: row.resource.clone().unwrap_or_default(),
        overlap: overlap.map_or(DEFAULT_OVERLAP, TimeDelta::seconds),
    }))
}

/// Writes the new token's row and its manager, and takes its lease, in one transaction
/// (refused when the name is taken).
pub fn claim_new(
    conn: &mut DbConnection,
    new: &NewManagedToken,
    owner: &str,
    lease: TimeDelta,
    now: DateTime<Utc>,
) -> Result<Claim, StoreError> {
    conn.write_transaction(|conn| {
        let row = NewTokenRow::placeholder(
            &new.name,
            &new.provider_id,
            new.kind,
            Some(new.resource.clone()),
            &new.policy,
            now,
        );
        let id = row.id.clone();
        diesel::insert_into(tokens::table)
            .values(&row)
            .execute(conn)
            .map_err(StoreError::on_unique("token", new.name.as_str()))?;
        diesel::update(tokens::table.filter(tokens::id.eq(&id)))
            .set((
                tokens::gitlab_name.eq(&new.gitlab_name),
                tokens::scopes.eq(&new.scopes),
                tokens::resource_kind.eq(&new.resource_kind),
            ))
            .execute(conn)?;
        diesel::insert_into(token_managers::table)
            .values((
                token_managers::token_id.eq(&id),
                token_managers::manager_id.eq(&new.manager_id),
                token_managers::access_level.eq(new.access_level),
                token_managers::scopes.eq(&new.scopes),
                token_managers::overlap_seconds.eq(new.overlap.map(|overlap| overlap.num_seconds())),
            ))
            .execute(conn)?;
        let found: ClaimRow = tokens::table
            .inner_join(providers::table)
            .filter(tokens::id.eq(&id))
            .select((TokenRow::as_select(), ProviderRow::as_select(), tokens::secret, tokens::refresh_token))
            .get_result(conn)?;
        take_lease(conn, found, None, &format!("{owner}{CREATE_LEASE_MARK}"), lease, now)
    })
}

/// GitLab provably made nothing (or what it made was revoked): removes the new token's row,
/// fenced by the lease.
pub fn abandon(conn: &mut DbConnection, lease: &Lease) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        super::answer_journal::forget_attempt(conn, lease)?;
        let changed = diesel::delete(
            tokens::table.filter(tokens::id.eq(&lease.token_id)).filter(tokens::attempt_id.eq(&lease.attempt_id)),
        )
        .execute(conn)?;
        if changed == 1 {
            return Ok(());
        }
        Err(StoreError::LeaseLost { token: lease.token_name.clone(), attempt: lease.attempt_id.clone() })
    })
}

/// The names of the tokens the token with row id `manager_id` manages.
pub fn managed_by(conn: &mut DbConnection, manager_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(token_managers::table
        .inner_join(tokens::table)
        .filter(token_managers::manager_id.eq(manager_id))
        .select(tokens::name)
        .order(tokens::name.asc())
        .load(conn)?)
}

/// Tokens whose manager needs attention or has expired, as (token, manager, the manager's
/// state): they rotate on their own, but cannot be healed or made again until it is fixed.
pub fn with_broken_manager(conn: &mut DbConnection) -> Result<Vec<(String, String, String)>, StoreError> {
    let managers = diesel::alias!(tokens as managers);
    let broken = [crate::domain::TokenState::NeedsAttention.as_str(), crate::domain::TokenState::Expired.as_str()];
    Ok(token_managers::table
        .inner_join(tokens::table.on(tokens::id.eq(token_managers::token_id)))
        .inner_join(managers.on(managers.field(tokens::id).eq(token_managers::manager_id)))
        .filter(managers.field(tokens::state).eq_any(broken))
        .select((tokens::name, managers.field(tokens::name), managers.field(tokens::state)))
        .order(tokens::name.asc())
        .load(conn)?)
}

/// The name of the token managing the token with row id `token_id`, if `token create` made it.
pub fn manager_of(conn: &mut DbConnection, token_id: &str) -> Result<Option<String>, StoreError> {
    let manager_id: Option<String> = token_managers::table
        .filter(token_managers::token_id.eq(token_id))
        .select(token_managers::manager_id)
        .get_result(conn)
        .optional()?;
    let Some(manager_id) = manager_id else { return Ok(None) };
    Ok(tokens::table.filter(tokens::id.eq(manager_id)).select(tokens::name).get_result(conn).optional()?)
}
