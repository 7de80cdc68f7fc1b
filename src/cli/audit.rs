//! `tokenwarden audit`: who did what to which token, provider or client, and when.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::CliError;
use super::args::AuditArgs;
use super::context::open_store;
use super::output::{print_json, print_table, text, time};
use crate::config::{HumanDuration, Settings};
use crate::store::audit::{self, AuditQuery};
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

/// The instant `ago` before `now`, or a usage error when that lies before the earliest time
/// that can be represented (e.g. `--since 300000000d`).
pub fn since(now: DateTime<Utc>, ago: HumanDuration) -> Result<DateTime<Utc>, CliError> {
    TimeDelta::from_std(ago.get()).ok().and_then(|ago| now.checked_sub_signed(ago)).ok_or_else(|| {
        CliError::Usage(format!("--since {ago} reaches back further than any date; give a shorter duration"))
    })
}

/// Prints audit rows, newest first, optionally for one token, since a time ago, and at most
/// a number of them; the database does the filtering.
pub async fn run(settings: Settings, args: AuditArgs) -> Result<(), CliError> {
    let query = AuditQuery {
        token: args.token.map(|name| name.to_string()),
        since: args.since.map(|ago| since(Utc::now(), ago)).transpose()?,
        limit: args.limit,
    };
    let store = open_store(&settings).await?;
    let rows = store.run(move |conn| audit::search(conn, &query)).await?;
    let entries: Vec<Entry> = rows.into_iter().map(Entry::from).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_the_duration_before_now() {
        let now = Utc::now();
        assert_eq!(since(now, HumanDuration::days(7)).unwrap(), now - TimeDelta::days(7));
    }

    #[test]
    fn since_beyond_any_date_is_a_usage_error_not_a_panic() {
        for days in [300_000_000, 106_751_991_167_300] {
            let err = since(Utc::now(), HumanDuration::days(days)).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("--since"), "{err}");
        }
    }
}
