//! Queries on providers.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use secrecy::SecretString;

use super::audit::{self, AuditTarget};
use super::models::{Provider, ProviderRow, naive, new_id};
use super::schema::{providers, tokens};
use super::{DbConnection, StoreError};
use crate::crypto::{Cipher, SealContext};
use crate::domain::{CLIENT_CREDENTIALS_REJECTED, ClientAuth, ProviderKind, ProviderName, TokenState};

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

/// How a provider's client authenticates and what discovery found (`provider add --issuer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEndpoints {
    /// How the OAuth client authenticates at the token endpoint.
    pub client_auth: ClientAuth,
    /// The issuer the endpoints were discovered from.
    pub issuer: Option<String>,
    /// The discovered authorization endpoint.
    pub authorization_url: Option<String>,
    /// The discovered revocation endpoint.
    pub revocation_url: Option<String>,
    /// Scopes authorisations request (space-separated; `None`: the kind's default).
    pub scopes: Option<String>,
}

impl ProviderEndpoints {
    /// Nothing discovered; the default client authentication for `kind`.
    pub fn default_for(kind: ProviderKind) -> Self {
        Self {
            client_auth: ClientAuth::default_for(kind),
            issuer: None,
            authorization_url: None,
            revocation_url: None,
            scopes: None,
        }
    }
}

/// Where a provider's client secret is sealed.
pub fn client_secret_context(row_id: &str) -> SealContext<'_> {
    SealContext { table: "providers", row: row_id, field: "client_secret" }
}

/// Adds a provider with its kind's default client authentication, sealing its client secret.
pub fn insert(
    conn: &mut DbConnection,
    cipher: &Cipher,
    new: &NewProvider,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Provider, StoreError> {
    insert_with(conn, cipher, new, &ProviderEndpoints::default_for(new.kind), actor, now)
}

/// Adds a provider with the given client authentication and discovered endpoints.
pub fn insert_with(
    conn: &mut DbConnection,
    cipher: &Cipher,
    new: &NewProvider,
    endpoints: &ProviderEndpoints,
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
        client_auth: endpoints.client_auth.to_string(),
        issuer: endpoints.issuer.clone(),
        authorization_url: endpoints.authorization_url.clone(),
        revocation_url: endpoints.revocation_url.clone(),
        scopes: endpoints.scopes.clone(),
    };
    conn.write_transaction(|conn| {
        diesel::insert_into(providers::table)
            .values(&row)
            .execute(conn)
            .map_err(StoreError::on_unique("provider", new.name.as_str()))?;
        let target = AuditTarget { kind: "provider", name: new.name.as_str() };
        let detail = format!("kind={} client_auth={}", new.kind, endpoints.client_auth);
        audit::record(conn, now, actor, "provider.add", target, Some(detail))?;
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

/// The provider named `name`, without its secret.
pub fn find(conn: &mut DbConnection, name: &ProviderName) -> Result<Provider, StoreError> {
    Provider::try_from(find_row(conn, name)?)
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

/// What `provider update` changes; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ProviderChanges {
    /// New GitLab base URL.
    pub url: Option<String>,
    /// New token endpoint.
    pub token_url: Option<String>,
    /// New OAuth application id.
    pub client_id: Option<String>,
    /// New OAuth application secret.
    pub client_secret: Option<SecretString>,
    /// New redirect URI.
    pub redirect_uri: Option<String>,
    /// New client authentication method.
    pub client_auth: Option<ClientAuth>,
    /// New scopes for authorisations (space-separated).
    pub scopes: Option<String>,
    /// New authorization endpoint.
    pub authorization_url: Option<String>,
}

impl ProviderChanges {
    /// True when the client's credentials or the way they are sent change: refusals of the old
    /// ones (`client_credentials_rejected`) no longer apply.
    pub fn changes_client(&self) -> bool {
        self.client_id.is_some() || self.client_secret.is_some() || self.client_auth.is_some()
    }

    /// The names of the changed fields, for the audit log (never a value).
    pub fn changed_fields(&self) -> Vec<&'static str> {
        let fields = [
            ("url", self.url.is_some()),
            ("token_url", self.token_url.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("redirect_uri", self.redirect_uri.is_some()),
            ("client_auth", self.client_auth.is_some()),
            ("scopes", self.scopes.is_some()),
            ("authorization_url", self.authorization_url.is_some()),
        ];
        fields.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect()
    }
}

/// A provider after `update`, with the tokens whose client refusal it cleared.
#[derive(Debug)]
pub struct ProviderUpdated {
    /// The provider as it is now.
    pub provider: Provider,
    /// Tokens taken out of `needs_attention` (`client_credentials_rejected`) and due now.
    pub released: Vec<String>,
}

/// Changes a provider in one audited transaction. When the client credentials change, its
/// tokens refused for the old ones (`client_credentials_rejected`: their refresh tokens were
/// not used) become due at once, for the ordinary claim → call → commit path to retry.
pub fn update(
    conn: &mut DbConnection,
    cipher: &Cipher,
    name: &ProviderName,
    changes: &ProviderChanges,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<ProviderUpdated, StoreError> {
    conn.write_transaction(|conn| {
        let row = find_row(conn, name)?;
        let sealed = changes
            .client_secret
            .as_ref()
            .map(|secret| cipher.try_seal(client_secret_context(&row.id), secret))
            .transpose()?;
        diesel::update(providers::table.filter(providers::id.eq(&row.id)))
            .set((
                changes.url.as_ref().map(|url| providers::url.eq(url)),
                changes.token_url.as_ref().map(|url| providers::token_url.eq(url)),
                changes.client_id.as_ref().map(|id| providers::client_id.eq(id)),
                sealed.as_ref().map(|secret| providers::client_secret.eq(secret)),
                changes.redirect_uri.as_ref().map(|uri| providers::redirect_uri.eq(uri)),
                changes.client_auth.map(|method| providers::client_auth.eq(method.as_str())),
                changes.scopes.as_ref().map(|scopes| providers::scopes.eq(scopes)),
                changes.authorization_url.as_ref().map(|url| providers::authorization_url.eq(url)),
                providers::updated_at.eq(naive(now)),
            ))
            .execute(conn)?;
        let target = AuditTarget { kind: "provider", name: name.as_str() };
        let detail = format!("changed={}", changes.changed_fields().join(","));
        audit::record(conn, now, actor, "provider.update", target, Some(detail))?;
        let released = if changes.changes_client() { release_rejected(conn, &row.id, actor, now)? } else { Vec::new() };
        Ok(ProviderUpdated { provider: Provider::try_from(find_row(conn, name)?)?, released })
    })
}

/// Makes the provider's tokens in `needs_attention` for `client_credentials_rejected` due now.
fn release_rejected(
    conn: &mut DbConnection,
    provider_id: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let rejected = tokens::table
        .filter(tokens::provider_id.eq(provider_id))
        .filter(tokens::state.eq(TokenState::NeedsAttention.as_str()))
        .filter(tokens::attention_reason.eq(CLIENT_CREDENTIALS_REJECTED));
    let names: Vec<String> = rejected.select(tokens::name).order(tokens::name.asc()).load(conn)?;
    diesel::update(rejected)
        .set((
            tokens::state.eq(TokenState::Active.as_str()),
            tokens::attention_reason.eq(None::<String>),
            tokens::next_rotation_at.eq(naive(now)),
            tokens::attempt_count.eq(0),
            tokens::recovery.eq(None::<String>),
            tokens::updated_at.eq(naive(now)),
        ))
        .execute(conn)?;
    for name in &names {
        let target = AuditTarget { kind: "token", name };
        audit::record(conn, now, actor, "token.retry", target, Some(CLIENT_CREDENTIALS_REJECTED.to_owned()))?;
    }
    Ok(names)
}
