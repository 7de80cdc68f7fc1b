//! Queries on providers.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use secrecy::SecretString;

use super::audit::{self, AuditTarget};
use super::models::{Provider, ProviderRow, naive, new_id};
use super::schema::{providers, tokens};
use super::{DbConnection, StoreError};
use crate::crypto::{Cipher, SealContext};
use crate::domain::{ProviderKind, ProviderName};

/// What an operator gives to add a provider.
#[derive(Debug)]
pub struct NewProvider {
    /// Unique name.
    pub name: ProviderName,
    /// GitLab or generic OAuth 2.0.
    pub kind: ProviderKind,
    /// GitLab base URL.
    pub url: Option<String>,
    /// OAuth 2.0 token endpoint.
    pub token_url: Option<String>,
    /// OAuth application id.
    pub client_id: Option<String>,
    /// OAuth application secret.
    pub client_secret: Option<SecretString>,
    /// Redirect URI sent with refresh requests.
    pub redirect_uri: Option<String>,
}

/// Where a provider's client secret is sealed.
pub fn client_secret_context(row_id: &str) -> SealContext<'_> {
    SealContext { table: "providers", row: row_id, field: "client_secret" }
}

/// Adds a provider, sealing its client secret.
pub fn insert(
    conn: &mut DbConnection,
    cipher: &Cipher,
    new: &NewProvider,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Provider, StoreError> {
    let id = new_id();
    let row = ProviderRow {
        client_secret: new
            .client_secret
            .as_ref()
            .map(|secret| cipher.try_seal(client_secret_context(&id), secret))
            .transpose()?,
        id,
        name: new.name.to_string(),
        kind: new.kind.to_string(),
        url: new.url.clone(),
        token_url: new.token_url.clone(),
        client_id: new.client_id.clone(),
        redirect_uri: new.redirect_uri.clone(),
        created_at: naive(now),
        updated_at: naive(now),
        not_before: None,
    };
    conn.write_transaction(|conn| {
        diesel::insert_into(providers::table)
            .values(&row)
            .execute(conn)
            .map_err(StoreError::on_unique("provider", new.name.as_str()))?;
        let target = AuditTarget { kind: "provider", name: new.name.as_str() };
        audit::record(conn, now, actor, "provider.add", target, Some(format!("kind={}", new.kind)))?;
        Provider::try_from(row.clone())
    })
}

/// All providers, by name.
pub fn list(conn: &mut DbConnection) -> Result<Vec<Provider>, StoreError> {
    providers::table
        .select(ProviderRow::as_select())
        .order(providers::name.asc())
        .load(conn)?
        .into_iter()
        .map(Provider::try_from)
        .collect()
}

/// The provider named `name`, with its row (including the sealed secret).
pub fn find_row(conn: &mut DbConnection, name: &ProviderName) -> Result<ProviderRow, StoreError> {
    providers::table
        .filter(providers::name.eq(name.as_str()))
        .select(ProviderRow::as_select())
        .get_result(conn)
        .optional()?
        .ok_or_else(|| StoreError::NotFound { what: "provider", name: name.to_string() })
}

/// Removes a provider; refused while any token uses it.
pub fn remove(conn: &mut DbConnection, name: &ProviderName, actor: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        let row = find_row(conn, name)?;
        let users: i64 = tokens::table.filter(tokens::provider_id.eq(&row.id)).count().get_result(conn)?;
        if users > 0 {
            return Err(StoreError::Conflict(format!(
                "provider '{name}' is used by {users} token(s); remove them first"
            )));
        }
        diesel::delete(providers::table.filter(providers::id.eq(&row.id))).execute(conn)?;
        let target = AuditTarget { kind: "provider", name: name.as_str() };
        audit::record(conn, now, actor, "provider.remove", target, None)
    })
}
