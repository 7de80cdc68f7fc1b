//! What the operator console's overview reads: tokens per state and every token's expiry, each
//! one narrow query (the overview stays fast with tens of thousands of tokens).

use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::prelude::*;

use super::models::utc;
use super::schema::tokens;
use super::{DbConnection, StoreError};
use crate::domain::TokenState;

/// How many tokens are in each state, in the order of [`TokenState`]'s variants as stored.
pub fn counts_by_state(conn: &mut DbConnection) -> Result<Vec<(TokenState, i64)>, StoreError> {
    let rows: Vec<(String, i64)> =
        tokens::table.group_by(tokens::state).select((tokens::state, count_star())).load(conn)?;
    rows.into_iter().map(|(state, count)| Ok((super::rotation::parse("token state", &state)?, count))).collect()
}

/// One token on the expiry timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryPoint {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: TokenState,
    /// When its current secret expires (`None`: not known yet).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Every token's state and expiry, soonest first.
pub fn expiry_points(conn: &mut DbConnection) -> Result<Vec<ExpiryPoint>, StoreError> {
    let rows: Vec<(String, String, Option<chrono::NaiveDateTime>)> = tokens::table
        .select((tokens::name, tokens::state, tokens::expires_at))
        .order(tokens::expires_at.asc())
        .load(conn)?;
    rows.into_iter()
        .map(|(name, state, expires_at)| {
            Ok(ExpiryPoint {
                name,
                state: super::rotation::parse("token state", &state)?,
                expires_at: expires_at.map(utc),
            })
        })
        .collect()
}
