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

/// Audit rows about `target_name` (or all, when `None`), newest first.
pub fn list(conn: &mut DbConnection, target_name: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
    let mut query = audit_log::table.select(AuditRow::as_select()).into_boxed();
    if let Some(name) = target_name {
        query = query.filter(audit_log::target_name.eq(name.to_owned()));
    }
    Ok(query.order((audit_log::occurred_at.desc(), audit_log::id.desc())).load(conn)?)
}
