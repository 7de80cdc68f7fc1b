//! `tokenwarden audit`: who did what to which token, provider or client, and when.

use chrono::{TimeDelta, Utc};
use serde::Serialize;

use super::CliError;
use super::args::AuditArgs;
use super::context::open_store;
use super::output::{print_json, print_table, text, time};
use crate::config::Settings;
use crate::store::audit;
use crate::store::models::{AuditRow, utc};

/// One audit entry as printed.
#[derive(Debug, Serialize)]
struct Entry {
    occurred_at: chrono::DateTime<Utc>,
    actor: String,
    action: String,
    target_kind: String,
    target: String,
    detail: Option<String>,
}

impl From<AuditRow> for Entry {
    fn from(row: AuditRow) -> Self {
        Self {
            occurred_at: utc(row.occurred_at),
            actor: row.actor,
            action: row.action,
            target_kind: row.target_kind,
            target: row.target_name,
            detail: row.detail,
        }
    }
}

/// Prints audit rows, newest first, optionally for one token and since a time ago.
pub async fn run(settings: Settings, args: AuditArgs) -> Result<(), CliError> {
    let store = open_store(&settings).await?;
    let token = args.token.map(|name| name.to_string());
    let rows = store.run(move |conn| audit::list(conn, token.as_deref())).await?;
    let since = args.since.map(|ago| Utc::now() - TimeDelta::from_std(ago.get()).unwrap_or(TimeDelta::MAX));
    let entries: Vec<Entry> = rows
        .into_iter()
        .map(Entry::from)
        .filter(|entry| since.is_none_or(|since| entry.occurred_at >= since))
        .collect();
    if args.output.json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let target = format!("{} {}", e.target_kind, e.target);
            vec![time(Some(e.occurred_at)), e.actor.clone(), e.action.clone(), target, text(e.detail.as_deref())]
        })
        .collect();
    print_table(&["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"], &rows);
    Ok(())
}
