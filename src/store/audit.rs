//! The audit log: who did what to which token, provider or client, and when.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::models::{AuditRow, naive, new_id};
use super::schema::audit_log;
use super::{DbConnection, StoreError};

/// What an audit row is about.
#[derive(Debug, Clone, Copy)]
pub struct AuditTarget<'a> {
    /// `token`, `provider` or `client`.
    pub kind: &'static str,
    /// The target's name.
    pub name: &'a str,
}

/// An audit row, ready to insert.
pub fn row(now: DateTime<Utc>, actor: &str, action: &str, target: AuditTarget<'_>, detail: Option<String>) -> AuditRow {
    AuditRow {
        id: new_id(),
        occurred_at: naive(now),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target_kind: target.kind.to_owned(),
        target_name: target.name.to_owned(),
        detail,
    }
}

/// Appends one audit row; call it inside the transaction that made the change.
pub fn record(
    conn: &mut DbConnection,
    now: DateTime<Utc>,
    actor: &str,
    action: &str,
    target: AuditTarget<'_>,
    detail: Option<String>,
) -> Result<(), StoreError> {
    diesel::insert_into(audit_log::table).values(&row(now, actor, action, target, detail)).execute(conn)?;
    Ok(())
}

/// Deletes audit rows older than `older_than`; returns how many.
pub fn prune(conn: &mut DbConnection, older_than: DateTime<Utc>) -> Result<usize, StoreError> {
    conn.write_transaction(|conn| {
        Ok(diesel::delete(audit_log::table.filter(audit_log::occurred_at.lt(naive(older_than)))).execute(conn)?)
    })
}

/// Which audit rows [`search`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only rows about the token of this name (not a provider or client that shares it).
    pub token: Option<String>,
    /// Only rows that occurred at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many rows (the newest).
    pub limit: Option<u32>,
}

/// Audit rows matching `query`, newest first. The filter, the order and the limit are all
/// applied by the database: a token's rows come from the index `audit_log_target
/// (target_name, occurred_at)`, the others from `audit_log_time (occurred_at)`, read
/// backwards, so neither the whole table nor a sort of it is ever needed.
pub fn search(conn: &mut DbConnection, query: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
    let mut sql = audit_log::table.select(AuditRow::as_select()).into_boxed();
    if let Some(token) = &query.token {
        sql = sql.filter(audit_log::target_name.eq(token.clone())).filter(audit_log::target_kind.eq("token"));
    }
    if let Some(since) = query.since {
        sql = sql.filter(audit_log::occurred_at.ge(naive(since)));
    }
    sql = sql.order((audit_log::occurred_at.desc(), audit_log::id.desc()));
    if let Some(limit) = query.limit {
        sql = sql.limit(i64::from(limit));
    }
    Ok(sql.load(conn)?)
}

/// Audit rows about anything named `target_name` (token, provider or client; all rows when
/// `None`), newest first. For the operator's view of one token, use [`search`].
pub fn list(conn: &mut DbConnection, target_name: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
    let mut query = audit_log::table.select(AuditRow::as_select()).into_boxed();
    if let Some(name) = target_name {
        query = query.filter(audit_log::target_name.eq(name.to_owned()));
    }
    Ok(query.order((audit_log::occurred_at.desc(), audit_log::id.desc())).load(conn)?)
}
