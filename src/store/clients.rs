//! Queries on API clients and their grants.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use secrecy::SecretString;

use super::audit::{self, AuditTarget};
use super::models::{Client, ClientRow, naive, new_id, utc};
use super::schema::{client_grants, clients, tokens};
use super::{DbConnection, StoreError};
use crate::crypto::{ApiKey, ApiKeyHash, Cipher, SealContext};
use crate::domain::{ClientName, ClientRole, TokenName};

/// What an operator gives to create a client.
#[derive(Debug)]
pub struct NewClient {
    /// Unique name.
    pub name: ClientName,
    /// Operator or reader.
    pub role: ClientRole,
    /// Tokens a reader may read.
    pub grants: Vec<TokenName>,
    /// Where to send webhooks.
    pub webhook_url: Option<String>,
}

/// What is shown once when a client is created.
#[derive(Debug)]
pub struct CreatedClient {
    /// The stored client.
    pub client: Client,
    /// Its API key (stored only as a hash).
    pub api_key: ApiKey,
    /// Its webhook signing secret, with a webhook.
    pub webhook_secret: Option<SecretString>,
}

/// Where a client's webhook secret is sealed.
pub fn webhook_secret_context(row_id: &str) -> SealContext<'_> {
    SealContext { table: "clients", row: row_id, field: "webhook_secret" }
}

fn client_target(name: &str) -> AuditTarget<'_> {
    AuditTarget { kind: "client", name }
}

/// Creates a client with a fresh API key and, with a webhook, a fresh signing secret.
pub fn insert(
    conn: &mut DbConnection,
    cipher: &Cipher,
    new: &NewClient,
    webhook_secret: Option<SecretString>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<CreatedClient, StoreError> {
    let id = new_id();
    let api_key = ApiKey::generate();
    let row = ClientRow {
        webhook_secret: webhook_secret
            .as_ref()
            .map(|secret| cipher.try_seal(webhook_secret_context(&id), secret))
            .transpose()?,
        id: id.clone(),
        name: new.name.to_string(),
        role: new.role.to_string(),
        api_key_lookup: api_key.lookup.clone(),
        api_key_hash: api_key.hash.0.to_vec(),
        webhook_url: new.webhook_url.clone(),
        created_at: naive(now),
        updated_at: naive(now),
    };
    let grants: Vec<String> = new.grants.iter().map(ToString::to_string).collect();
    let client = conn.write_transaction(|conn| {
        let token_ids = grantable(conn, &new.grants)?;
        diesel::insert_into(clients::table)
            .values(&row)
            .execute(conn)
            .map_err(StoreError::on_unique("client", new.name.as_str()))?;
        for token_id in &token_ids {
            diesel::insert_into(client_grants::table)
                .values((client_grants::client_id.eq(&id), client_grants::token_id.eq(token_id)))
                .execute(conn)?;
        }
        let detail = format!("role={} grants={}", new.role, grants.join(","));
        audit::record(conn, now, actor, "client.add", client_target(new.name.as_str()), Some(detail))?;
        Client::from_row(row.clone(), grants.clone())
    })?;
    Ok(CreatedClient { client, api_key, webhook_secret })
}

/// The ids of the tokens named, in order; a name no token has is refused (a grant refers to one
/// existing token, never to whatever is added under that name later).
pub fn grantable(conn: &mut DbConnection, names: &[TokenName]) -> Result<Vec<String>, StoreError> {
    names
        .iter()
        .map(|name| {
            tokens::table
                .filter(tokens::name.eq(name.as_str()))
                .select(tokens::id)
                .get_result::<String>(conn)
                .optional()?
                .ok_or_else(|| StoreError::InvalidInput(format!("cannot grant '{name}': no token has that name")))
        })
        .collect()
}

/// The names of the clients granted the token with row id `token_id`, by name.
pub fn granted(conn: &mut DbConnection, token_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(client_grants::table
        .inner_join(clients::table)
        .filter(client_grants::token_id.eq(token_id))
        .select(clients::name)
        .order(clients::name.asc())
        .load(conn)?)
}

/// All clients with their grants, by name.
pub fn list(conn: &mut DbConnection) -> Result<Vec<Client>, StoreError> {
    let rows: Vec<ClientRow> = clients::table.select(ClientRow::as_select()).order(clients::name.asc()).load(conn)?;
    let mut grants: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (client_id, token_name) in client_grants::table
        .inner_join(tokens::table)
        .select((client_grants::client_id, tokens::name))
        .order(tokens::name.asc())
        .load::<(String, String)>(conn)?
    {
        grants.entry(client_id).or_default().push(token_name);
    }
    rows.into_iter()
        .map(|row| {
            let granted = grants.remove(&row.id).unwrap_or_default();
            Client::from_row(row, granted)
        })
        .collect()
}

/// The client whose API key is `presented`, if any, with its grants; the hash is compared in
/// constant time.
pub fn authenticate(conn: &mut DbConnection, presented: &str) -> Result<Option<Client>, StoreError> {
    let Some(mut client) = authenticate_key(conn, presented)? else {
        return Ok(None);
    };
    client.grants = granted_names(conn, &client.id)?;
    Ok(Some(client))
}

/// The names of the tokens client `client_id` may read, by name.
fn granted_names(conn: &mut DbConnection, client_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(client_grants::table
        .inner_join(tokens::table)
        .filter(client_grants::client_id.eq(client_id))
        .select(tokens::name)
        .order(tokens::name.asc())
        .load(conn)?)
}

/// The client whose API key is `presented`, if any, WITHOUT its grants (`grants` is empty):
/// for the API, which checks one grant per request inside the read it guards
/// ([`super::tokens::find_as`], [`super::tokens::read_current_as`]). The hash is compared in
/// constant time.
///
/// `api_key_lookup` is unique, so the row is read with `get_result` and no `LIMIT`: diesel's
/// `.first()` binds its `LIMIT 1` as a parameter, and the bundled SQLite (3.53) plans with a
/// bound `LIMIT`'s value, so every execution of such a cached statement re-prepares it (parse
/// and plan again). On the API's hot path that was a third of the CPU time.
pub fn authenticate_key(conn: &mut DbConnection, presented: &str) -> Result<Option<Client>, StoreError> {
    let Some(lookup) = ApiKey::lookup_of(presented) else {
        return Ok(None);
    };
    let current = clients::table
        .filter(clients::api_key_lookup.eq(lookup))
        .select(ClientRow::as_select())
        .get_result(conn)
        .optional()?;
    if let Some(row) = current {
        return matching(row.api_key_hash.clone(), row, presented);
    }
    // A key replaced by `client rotate-key` works until its overlap ends.
    let previous: Option<(ClientRow, Option<Vec<u8>>, Option<chrono::NaiveDateTime>)> = clients::table
        .filter(clients::previous_key_lookup.eq(lookup))
        .select((ClientRow::as_select(), clients::previous_key_hash, clients::previous_key_expires_at))
        .get_result(conn)
        .optional()?;
    match previous {
        Some((row, Some(hash), Some(until))) if utc(until) > Utc::now() => matching(hash, row, presented),
        _ => Ok(None),
    }
}

/// The client of `row` if `presented` hashes to `stored` (compared in constant time).
fn matching(stored: Vec<u8>, row: ClientRow, presented: &str) -> Result<Option<Client>, StoreError> {
    let stored = <[u8; 32]>::try_from(stored.as_slice())
        .map_err(|_| StoreError::Corrupt(format!("api key hash of client '{}'", row.name)))?;
    if !ApiKeyHash(stored).matches(presented) {
        return Ok(None);
    }
    Client::from_row(row, Vec::new()).map(Some)
}

/// Gives client `name` a new API key; the one it had stays valid for `overlap` (not at all when
/// zero). A key still in an earlier overlap stops working now: at most two keys are valid.
pub fn rotate_key(
    conn: &mut DbConnection,
    name: &ClientName,
    overlap: chrono::TimeDelta,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<ApiKey, StoreError> {
    conn.write_transaction(|conn| {
        let (lookup, hash): (String, Vec<u8>) = clients::table
            .filter(clients::name.eq(name.as_str()))
            .select((clients::api_key_lookup, clients::api_key_hash))
            .get_result(conn)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { what: "client", name: name.to_string() })?;
        let kept = (overlap > chrono::TimeDelta::zero()).then_some(());
        let api_key = ApiKey::generate();
        diesel::update(clients::table.filter(clients::name.eq(name.as_str())))
            .set((
                clients::api_key_lookup.eq(&api_key.lookup),
                clients::api_key_hash.eq(api_key.hash.0.to_vec()),
                clients::previous_key_lookup.eq(kept.map(|()| lookup)),
                clients::previous_key_hash.eq(kept.map(|()| hash)),
                clients::previous_key_expires_at.eq(kept.map(|()| naive(now + overlap))),
                clients::updated_at.eq(naive(now)),
            ))
            .execute(conn)?;
        let detail = format!("overlap={}s", overlap.num_seconds());
        audit::record(conn, now, actor, "client.rotate_key", client_target(name.as_str()), Some(detail))?;
        Ok(api_key)
    })
}

/// Gives client `name` the webhook signing secret `fresh`; deliveries carry a signature with
/// the secret it had too for `overlap` (not at all when zero). Refused for a client without a
/// webhook.
pub fn rotate_webhook_secret(
    conn: &mut DbConnection,
    cipher: &Cipher,
    name: &ClientName,
    fresh: &SecretString,
    overlap: chrono::TimeDelta,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        let (id, sealed): (String, Option<Vec<u8>>) = clients::table
            .filter(clients::name.eq(name.as_str()))
            .select((clients::id, clients::webhook_secret))
            .get_result(conn)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { what: "client", name: name.to_string() })?;
        let Some(sealed) = sealed else {
            return Err(StoreError::InvalidInput(format!(
                "client '{name}' has no webhook, so no webhook secret; give it one with `client update {name} --webhook-url URL`"
            )));
        };
        let kept = (overlap > chrono::TimeDelta::zero()).then_some(());
        let new_sealed = cipher.try_seal(webhook_secret_context(&id), fresh)?;
        diesel::update(clients::table.filter(clients::id.eq(&id)))
            .set((
                clients::webhook_secret.eq(new_sealed),
                clients::previous_webhook_secret.eq(kept.map(|()| sealed)),
                clients::previous_webhook_secret_expires_at.eq(kept.map(|()| naive(now + overlap))),
                clients::updated_at.eq(naive(now)),
            ))
            .execute(conn)?;
        let detail = format!("overlap={}s", overlap.num_seconds());
        audit::record(conn, now, actor, "client.rotate_webhook_secret", client_target(name.as_str()), Some(detail))?;
        Ok(())
    })
}

/// Removes a client, its grants and its pending deliveries.
pub fn remove(conn: &mut DbConnection, name: &ClientName, actor: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.write_transaction(|conn| {
        let deleted = diesel::delete(clients::table.filter(clients::name.eq(name.as_str()))).execute(conn)?;
        if deleted == 0 {
            return Err(StoreError::NotFound { what: "client", name: name.to_string() });
        }
        audit::record(conn, now, actor, "client.remove", client_target(name.as_str()), None)
    })
}
