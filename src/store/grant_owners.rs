//! Who consented to each OAuth grant: the provider's user id and username, learnt when the
//! grant was authorised in the browser (GitLab's `GET /api/v4/user`). A re-authorisation must
//! come from the same user; `token show` and the API show it as `authorized_as`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::models::{naive, utc};
use super::schema::grant_owners;
use super::{DbConnection, StoreError};

/// The user who authorised a grant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GrantOwner {
    /// The provider's user id (GitLab's numeric id, as text).
    pub id: String,
    /// The username.
    pub username: String,
}

/// A grant's owner with when they last authorised it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AuthorizedAs {
    /// The provider's user id (GitLab's numeric id, as text).
    pub id: String,
    /// The username.
    pub username: String,
    /// When they last authorised the grant.
    pub authorized_at: DateTime<Utc>,
}

/// The owner of the grant of token row `token_id`, if one was learnt.
pub fn find(conn: &mut DbConnection, token_id: &str) -> Result<Option<AuthorizedAs>, StoreError> {
    let row: Option<(String, String, chrono::NaiveDateTime)> = grant_owners::table
        .filter(grant_owners::token_id.eq(token_id))
        .select((grant_owners::user_id, grant_owners::username, grant_owners::authorized_at))
        .get_result(conn)
        .optional()?;
    Ok(row.map(|(id, username, at)| AuthorizedAs { id, username, authorized_at: utc(at) }))
}

/// Records `owner` as the grant's owner (inside the commit of its authorisation). The caller
/// has checked, while holding the token's lease, that a re-authorisation is the same user's;
/// a username may have changed at the provider and is updated.
pub fn record(
    conn: &mut DbConnection,
    token_id: &str,
    owner: &GrantOwner,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    diesel::delete(grant_owners::table.filter(grant_owners::token_id.eq(token_id))).execute(conn)?;
    diesel::insert_into(grant_owners::table)
        .values((
            grant_owners::token_id.eq(token_id),
            grant_owners::user_id.eq(&owner.id),
            grant_owners::username.eq(&owner.username),
            grant_owners::authorized_at.eq(naive(now)),
        ))
        .execute(conn)?;
    Ok(())
}
