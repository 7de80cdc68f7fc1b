//! Changing a client in place: grants given and taken back, a webhook URL set or removed.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use secrecy::SecretString;

use super::audit::{self, AuditTarget};
use super::clients::{grantable, webhook_secret_context};
use super::models::{Client, ClientRow, naive};
use super::schema::{client_grants, clients, outbox, tokens};
use super::{DbConnection, StoreError};
use crate::crypto::Cipher;
use crate::domain::{ClientName, ClientRole, TokenName};

/// What happens to a client's webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookChange {
    /// Left as it is.
    Keep,
    /// Deliveries go to this URL from now on (the signing secret stays; a client without a
    /// webhook gets a new one).
    Set(String),
    /// No more deliveries: the URL and signing secret go, and pending deliveries are abandoned.
    Remove,
}

/// What `client update` changes.
#[derive(Debug, Clone)]
pub struct ClientChange {
    /// Tokens the reader may read from now on (each must exist).
    pub grant: Vec<TokenName>,
    /// Tokens the reader may no longer read (each must be granted now).
    pub revoke: Vec<TokenName>,
    /// The webhook.
    pub webhook: WebhookChange,
}

/// The changed client, and its new webhook signing secret when one was created (shown once).
#[derive(Debug)]
pub struct UpdatedClient {
    /// The client as it is now.
    pub client: Client,
    /// A signing secret created because the client had no webhook before.
    pub webhook_secret: Option<SecretString>,
}

fn invalid(message: String) -> StoreError {
    StoreError::InvalidInput(message)
}

/// Applies `change` to the client `name` in one transaction, with an audit row: nothing is
/// changed when any part is refused (an unknown token, a grant to an operator, a revoke of a
/// grant the client does not hold). `fresh_secret` becomes the signing secret if a webhook is
/// set on a client that has none.
pub fn update(
    conn: &mut DbConnection,
    cipher: &Cipher,
    name: &ClientName,
    change: &ClientChange,
    fresh_secret: SecretString,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<UpdatedClient, StoreError> {
    if change.grant.is_empty() && change.revoke.is_empty() && change.webhook == WebhookChange::Keep {
        return Err(invalid("nothing to change: give --grant, --revoke, --webhook-url or --no-webhook".into()));
    }
    if let Some(both) = change.grant.iter().find(|token| change.revoke.contains(token)) {
        return Err(invalid(format!("'{both}' is both granted and revoked; give it once")));
    }
    conn.write_transaction(|conn| {
        let row: ClientRow = clients::table
            .filter(clients::name.eq(name.as_str()))
            .select(ClientRow::as_select())
            .get_result(conn)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { what: "client", name: name.to_string() })?;
        let client = Client::from_row(row.clone(), Vec::new())?;
        if client.role == ClientRole::Operator && !change.grant.is_empty() {
            return Err(invalid(format!(
                "'{name}' is an operator, which may already read every token; grants are for readers"
            )));
        }
        grant(conn, &row.id, &change.grant)?;
        revoke(conn, &row.id, name, &change.revoke)?;
        let webhook_secret = set_webhook(conn, cipher, &row, &change.webhook, &fresh_secret, now)?;
        diesel::update(clients::table.filter(clients::id.eq(&row.id)))
            .set(clients::updated_at.eq(naive(now)))
            .execute(conn)?;
        let detail = describe(change);
        audit::record(
            conn,
            now,
            actor,
            "client.update",
            AuditTarget { kind: "client", name: name.as_str() },
            Some(detail),
        )?;
        let client = super::clients::list(conn)?
            .into_iter()
            .find(|listed| listed.id == row.id)
            .ok_or_else(|| StoreError::NotFound { what: "client", name: name.to_string() })?;
        Ok(UpdatedClient { client, webhook_secret: webhook_secret.clone() })
    })
}

/// Grants the tokens named (refusing unknown ones); a grant the client holds already stays.
fn grant(conn: &mut DbConnection, client_id: &str, names: &[TokenName]) -> Result<(), StoreError> {
    for token_id in grantable(conn, names)? {
        let held = client_grants::table
            .filter(client_grants::client_id.eq(client_id))
            .filter(client_grants::token_id.eq(&token_id))
            .count()
            .get_result::<i64>(conn)?;
        if held == 0 {
            diesel::insert_into(client_grants::table)
                .values((client_grants::client_id.eq(client_id), client_grants::token_id.eq(&token_id)))
                .execute(conn)?;
        }
    }
    Ok(())
}

/// Takes back grants, refusing a token the client was not granted.
fn revoke(
    conn: &mut DbConnection,
    client_id: &str,
    client: &ClientName,
    names: &[TokenName],
) -> Result<(), StoreError> {
    for token in names {
        let token_id = tokens::table.filter(tokens::name.eq(token.as_str())).select(tokens::id);
        let removed = diesel::delete(
            client_grants::table
                .filter(client_grants::client_id.eq(client_id))
                .filter(client_grants::token_id.eq_any(token_id)),
        )
        .execute(conn)?;
        if removed == 0 {
            return Err(invalid(format!("client '{client}' holds no grant of '{token}' to revoke")));
        }
    }
    Ok(())
}

/// Sets or removes the webhook; returns the signing secret when a new one was stored.
fn set_webhook(
    conn: &mut DbConnection,
    cipher: &Cipher,
    row: &ClientRow,
    change: &WebhookChange,
    fresh_secret: &SecretString,
    now: DateTime<Utc>,
) -> Result<Option<SecretString>, StoreError> {
    let this_client = clients::table.filter(clients::id.eq(&row.id));
    match change {
        WebhookChange::Keep => Ok(None),
        WebhookChange::Set(url) if row.webhook_secret.is_some() => {
            diesel::update(this_client).set(clients::webhook_url.eq(url)).execute(conn)?;
            Ok(None)
        }
        WebhookChange::Set(url) => {
            let sealed = cipher.try_seal(webhook_secret_context(&row.id), fresh_secret)?;
            diesel::update(this_client)
                .set((clients::webhook_url.eq(url), clients::webhook_secret.eq(Some(sealed))))
                .execute(conn)?;
            Ok(Some(fresh_secret.clone()))
        }
        WebhookChange::Remove => {
            diesel::update(this_client)
                .set((clients::webhook_url.eq(None::<String>), clients::webhook_secret.eq(None::<Vec<u8>>)))
                .execute(conn)?;
            let pending = outbox::table
                .filter(outbox::client_id.eq(&row.id))
                .filter(outbox::delivered_at.is_null())
                .filter(outbox::abandoned_at.is_null());
            diesel::update(pending)
                .set((
                    outbox::abandoned_at.eq(Some(naive(now))),
                    outbox::last_error.eq("the client's webhook was removed"),
                ))
                .execute(conn)?;
            Ok(None)
        }
    }
}

/// The audit detail: what was granted, revoked, and what became of the webhook.
fn describe(change: &ClientChange) -> String {
    let join = |names: &[TokenName]| names.iter().map(TokenName::as_str).collect::<Vec<_>>().join(",");
    let mut parts = Vec::new();
    if !change.grant.is_empty() {
        parts.push(format!("granted={}", join(&change.grant)));
    }
    if !change.revoke.is_empty() {
        parts.push(format!("revoked={}", join(&change.revoke)));
    }
    match &change.webhook {
        WebhookChange::Keep => {}
        WebhookChange::Set(_) => parts.push("webhook=set".into()),
        WebhookChange::Remove => parts.push("webhook=removed".into()),
    }
    parts.join(" ")
}
