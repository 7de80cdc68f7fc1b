//! Operator console sessions. The browser holds a random session id in an HttpOnly cookie;
//! the store keeps only its SHA-256, the operator client it belongs to (a removed client's
//! sessions go with it) and the CSRF token every form of that session must send back.

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::models::{naive, utc};
use super::schema::{clients, ui_sessions};
use super::{DbConnection, StoreError};
use crate::domain::{ClientName, ClientRole};

/// How long a session lasts.
pub const SESSION_LIFETIME: TimeDelta = TimeDelta::hours(12);

/// A session just started: the id for the cookie (shown once) and its CSRF token.
#[derive(Debug)]
pub struct NewSession {
    /// The cookie's value.
    pub id: SecretString,
    /// The token its forms carry.
    pub csrf_token: String,
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The operator signed in.
    pub client: ClientName,
    /// The token its forms carry.
    pub csrf_token: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

/// 32 random bytes, hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

fn id_hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Starts a session for the operator client `client_id` (and removes expired sessions).
pub fn start(conn: &mut DbConnection, client_id: &str, now: DateTime<Utc>) -> Result<NewSession, StoreError> {
    let id = random_hex();
    let csrf_token = random_hex();
    conn.write_transaction(|conn| {
        diesel::delete(ui_sessions::table.filter(ui_sessions::expires_at.le(naive(now)))).execute(conn)?;
        diesel::insert_into(ui_sessions::table)
            .values((
                ui_sessions::id_hash.eq(id_hash(&id)),
                ui_sessions::client_id.eq(client_id),
                ui_sessions::csrf_token.eq(&csrf_token),
                ui_sessions::created_at.eq(naive(now)),
                ui_sessions::expires_at.eq(naive(now + SESSION_LIFETIME)),
            ))
            .execute(conn)?;
        Ok::<_, StoreError>(())
    })?;
    Ok(NewSession { id: SecretString::from(id), csrf_token })
}

/// The live session with cookie value `id`, if any (expired ones and those of clients that are
/// no operators any more are not).
pub fn find(conn: &mut DbConnection, id: &SecretString, now: DateTime<Utc>) -> Result<Option<Session>, StoreError> {
    let found: Option<(String, String, String, chrono::NaiveDateTime)> = ui_sessions::table
        .inner_join(clients::table)
        .filter(ui_sessions::id_hash.eq(id_hash(id.expose_secret())))
        .filter(ui_sessions::expires_at.gt(naive(now)))
        .filter(clients::role.eq(ClientRole::Operator.as_str()))
        .select((clients::name, clients::role, ui_sessions::csrf_token, ui_sessions::expires_at))
        .get_result(conn)
        .optional()?;
    found
        .map(|(name, _, csrf_token, expires_at)| {
            let client = name.parse().map_err(|err| StoreError::Corrupt(format!("client name '{name}': {err}")))?;
            Ok(Session { client, csrf_token, expires_at: utc(expires_at) })
        })
        .transpose()
}

/// Ends the session with cookie value `id` (sign-out).
pub fn end(conn: &mut DbConnection, id: &SecretString) -> Result<(), StoreError> {
    diesel::delete(ui_sessions::table.filter(ui_sessions::id_hash.eq(id_hash(id.expose_secret())))).execute(conn)?;
    Ok(())
}
