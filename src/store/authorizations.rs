//! Consent links handed out and not yet used: one row per `token authorize` or `POST
//! /v1/authorizations`, found again by the hash of the `state` the provider sends back.
//!
//! The state is the callback's only credential, so it is never stored: the row keeps its
//! SHA-256. The PKCE verifier is sealed for the row and dropped when the link is used.
//! [`consume`] marks a link used in the same statement that finds it unused, so a link works
//! once even when two callbacks race; an expired link is refused and used up too.

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;
use secrecy::SecretString;

use super::audit::{self, AuditTarget};
use super::models::{ProviderRow, naive, new_id, utc};
use super::schema::{authorizations, providers};
use super::{DbConnection, StoreError};
use crate::crypto::{Cipher, SealContext};
use crate::domain::{TokenKind, TokenName};

/// Where a link's verifier is sealed.
fn verifier_context(row_id: &str) -> SealContext<'_> {
    SealContext { table: "authorizations", row: row_id, field: "verifier" }
}

/// A consent link to record.
#[derive(Debug)]
pub struct NewAuthorization {
    /// SHA-256 of the state, hex.
    pub state_hash: String,
    /// The token the grant will be stored as.
    pub token_name: TokenName,
    /// The existing token's row id when this re-authorises it; `None` for a new token.
    pub token_id: Option<String>,
    /// The provider's row id.
    pub provider_id: String,
    /// `gitlab-oauth` or `oauth2`.
    pub kind: TokenKind,
    /// The scopes requested, space-separated.
    pub scopes: String,
    /// The redirect URI the request carries (the exchange must send it again).
    pub redirect_uri: String,
    /// Where to send the browser after the callback, if anywhere.
    pub return_to: Option<String>,
    /// The PKCE verifier.
    pub verifier: SecretString,
    /// Who asked for the link.
    pub requested_by: String,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
}

/// Records a consent link (audited as `token.authorize_link`).
pub fn insert(
    conn: &mut DbConnection,
    cipher: &Cipher,
    new: &NewAuthorization,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let id = new_id();
    let verifier = cipher.try_seal(verifier_context(&id), &new.verifier)?;
    conn.write_transaction(|conn| {
        diesel::insert_into(authorizations::table)
            .values((
                authorizations::id.eq(&id),
                authorizations::state_hash.eq(&new.state_hash),
                authorizations::token_name.eq(new.token_name.as_str()),
                authorizations::token_id.eq(new.token_id.as_deref()),
                authorizations::provider_id.eq(&new.provider_id),
                authorizations::kind.eq(new.kind.as_str()),
                authorizations::scopes.eq(&new.scopes),
                authorizations::redirect_uri.eq(&new.redirect_uri),
                authorizations::return_to.eq(new.return_to.as_deref()),
                authorizations::verifier.eq(Some(&verifier)),
                authorizations::requested_by.eq(&new.requested_by),
                authorizations::created_at.eq(naive(now)),
                authorizations::expires_at.eq(naive(new.expires_at)),
            ))
            .execute(conn)?;
        let target = AuditTarget { kind: "token", name: new.token_name.as_str() };
        let detail = if new.token_id.is_some() { "reauthorize" } else { "new" };
        audit::record(conn, now, &new.requested_by, "token.authorize_link", target, Some(detail.to_owned()))
    })
}

/// A link that was just used: everything the callback needs to finish it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The token the grant is stored as.
    pub token_name: TokenName,
    /// The existing token's row id for a re-authorisation.
    pub token_id: Option<String>,
    /// The provider.
    pub provider: ProviderRow,
    /// The token kind.
    pub kind: TokenKind,
    /// The scopes requested.
    pub scopes: String,
    /// The redirect URI the request carried.
    pub redirect_uri: String,
    /// Where to send the browser afterwards.
    pub return_to: Option<String>,
    /// The PKCE verifier, opened.
    pub verifier: SecretString,
    /// Who asked for the link.
    pub requested_by: String,
}

/// What [`consume`] found for a state.
#[derive(Debug)]
pub enum Consumed {
    /// An unused, unexpired link: it is now used.
    Ready(Box<Pending>),
    /// No link has this state.
    Unknown,
    /// The link was used before.
    Used {
        /// Its token.
        token_name: String,
    },
    /// The link expired unused (it is now used up).
    Expired {
        /// Its token.
        token_name: String,
    },
}

/// A link's row as [`consume`] reads it.
#[derive(Queryable, Selectable)]
#[diesel(table_name = authorizations)]
struct LinkRow {
    id: String,
    token_name: String,
    token_id: Option<String>,
    provider_id: String,
    kind: String,
    scopes: String,
    redirect_uri: String,
    return_to: Option<String>,
    verifier: Option<Vec<u8>>,
    requested_by: String,
    expires_at: chrono::NaiveDateTime,
    used_at: Option<chrono::NaiveDateTime>,
}

/// Finds the link whose state hashes to `state_hash` and uses it up, in one transaction: its
/// verifier is opened and cleared, `used_at` set; a second call finds it [`Consumed::Used`].
pub fn consume(
    conn: &mut DbConnection,
    cipher: &Cipher,
    state_hash: &str,
    now: DateTime<Utc>,
) -> Result<Consumed, StoreError> {
    conn.write_transaction(|conn| {
        let found: Option<LinkRow> = authorizations::table
            .filter(authorizations::state_hash.eq(state_hash))
            .select(LinkRow::as_select())
            .get_result(conn)
            .optional()?;
        let Some(link) = found else {
            return Ok(Consumed::Unknown);
        };
        let changed = diesel::update(authorizations::table.filter(authorizations::id.eq(&link.id)))
            .filter(authorizations::used_at.is_null())
            .set((authorizations::used_at.eq(naive(now)), authorizations::verifier.eq(None::<Vec<u8>>)))
            .execute(conn)?;
        let token_name = link.token_name;
        if link.used_at.is_some() || changed == 0 {
            return Ok(Consumed::Used { token_name });
        }
        if utc(link.expires_at) <= now {
            return Ok(Consumed::Expired { token_name });
        }
        let sealed =
            link.verifier.ok_or_else(|| StoreError::Corrupt(format!("consent link {} has no verifier", link.id)))?;
        let verifier = cipher.open(verifier_context(&link.id), &sealed)?;
        let provider = providers::table
            .filter(providers::id.eq(&link.provider_id))
            .select(ProviderRow::as_select())
            .get_result(conn)?;
        Ok(Consumed::Ready(Box::new(Pending {
            token_name: super::rotation::parse("token name", &token_name)?,
            token_id: link.token_id,
            provider,
            kind: super::rotation::parse("token kind", &link.kind)?,
            scopes: link.scopes,
            redirect_uri: link.redirect_uri,
            return_to: link.return_to,
            verifier,
            requested_by: link.requested_by,
        })))
    })
}

/// Removes links used or expired more than `keep` ago (the maintenance sweep).
pub fn purge(conn: &mut DbConnection, keep: TimeDelta, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let before = naive(now - keep);
    Ok(diesel::delete(
        authorizations::table.filter(authorizations::expires_at.lt(before).or(authorizations::used_at.lt(before))),
    )
    .execute(conn)?)
}
