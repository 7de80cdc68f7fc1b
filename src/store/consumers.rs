//! Consumers of a token: the readers granted it, and the version each last said it uses
//! (`POST /v1/tokens/{name}/ack`), for `token show`, the API and the version-lag gauge.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::audit::{self, AuditTarget};
use super::models::{naive, utc};
use super::schema::{client_grants, clients, tokens};
use super::{DbConnection, StoreError};
use crate::domain::TokenName;

/// A reader granted a token, and what it acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Consumer {
    /// The reader's client name.
    pub client: String,
    /// The version it last said it uses, if it ever did.
    pub acknowledged_version: Option<i64>,
    /// When it said so.
    pub acknowledged_at: Option<DateTime<Utc>>,
}

/// One consumer's distance from the token's current version (only consumers that have
/// acknowledged some version: one that never does has no lag to speak of).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLag {
    /// The token's name.
    pub token: String,
    /// The reader's client name.
    pub client: String,
    /// Current version minus the acknowledged one (0 when up to date).
    pub versions_behind: i64,
}

/// The readers granted token `token_id`, by client name.
pub fn of_token(conn: &mut DbConnection, token_id: &str) -> Result<Vec<Consumer>, StoreError> {
    let rows: Vec<(String, Option<i64>, Option<chrono::NaiveDateTime>)> = client_grants::table
        .inner_join(clients::table.on(clients::id.eq(client_grants::client_id)))
        .filter(client_grants::token_id.eq(token_id))
        .order(clients::name.asc())
        .select((clients::name, client_grants::acknowledged_version, client_grants::acknowledged_at))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(client, acknowledged_version, at)| Consumer {
            client,
            acknowledged_version,
            acknowledged_at: at.map(utc),
        })
        .collect())
}

/// Records that reader `client_id` (named `client_name`) now uses `version` of token `name`:
/// refused as an unknown token unless the reader is granted it, and as a conflict unless
/// `version` is one the token has had (1 to its current version). Audited as the reader.
pub fn acknowledge(
    conn: &mut DbConnection,
    client_id: &str,
    client_name: &str,
    name: &TokenName,
    version: i64,
    now: DateTime<Utc>,
) -> Result<Consumer, StoreError> {
    conn.write_transaction(|conn| {
        let granted: Option<(String, i64)> = tokens::table
            .inner_join(
                client_grants::table
                    .on(client_grants::token_id.eq(tokens::id).and(client_grants::client_id.eq(client_id))),
            )
            .filter(tokens::name.eq(name.as_str()))
            .select((tokens::id, tokens::version))
            .get_result(conn)
            .optional()?;
        let (token_id, current) =
            granted.ok_or_else(|| StoreError::NotFound { what: "token", name: name.to_string() })?;
        if !(1..=current).contains(&version) {
            return Err(StoreError::Conflict(format!(
                "token {name} has no version {version}: its versions run from 1 to {current}"
            )));
        }
        diesel::update(client_grants::table)
            .filter(client_grants::client_id.eq(client_id))
            .filter(client_grants::token_id.eq(&token_id))
            .set((client_grants::acknowledged_version.eq(version), client_grants::acknowledged_at.eq(naive(now))))
            .execute(conn)?;
        let target = AuditTarget { kind: "token", name: name.as_str() };
        audit::record(conn, now, client_name, "token.acknowledged", target, Some(format!("version={version}")))?;
        Ok(Consumer { client: client_name.to_owned(), acknowledged_version: Some(version), acknowledged_at: Some(now) })
    })
}

/// The version lag of every consumer that has acknowledged a version, most behind first, at
/// most `limit` of them (each is a metric series).
pub fn lags(conn: &mut DbConnection, limit: i64) -> Result<Vec<ConsumerLag>, StoreError> {
    let rows: Vec<(String, String, i64, Option<i64>)> = client_grants::table
        .inner_join(tokens::table.on(tokens::id.eq(client_grants::token_id)))
        .inner_join(clients::table.on(clients::id.eq(client_grants::client_id)))
        .filter(client_grants::acknowledged_version.is_not_null())
        .order(diesel::dsl::sql::<diesel::sql_types::BigInt>("client_grants.acknowledged_version - tokens.version"))
        .limit(limit)
        .select((tokens::name, clients::name, tokens::version, client_grants::acknowledged_version))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(token, client, current, acknowledged)| {
            Some(ConsumerLag { token, client, versions_behind: (current - acknowledged?).max(0) })
        })
        .collect())
}
