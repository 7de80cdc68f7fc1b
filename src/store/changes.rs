//! Noticing that another connection or process committed something, without reading a table,
//! so the scheduler can keep its window of due tokens in memory and re-read it only when the
//! data may have changed.
//!
//! On SQLite this is `PRAGMA data_version` on a connection of its own: the number changes
//! whenever any *other* connection (this process's pool, the CLI, another process) commits.
//! On PostgreSQL the watch's connection `LISTEN`s on [`CHANGES_CHANNEL`], which triggers on
//! `tokens` and `providers` notify at every commit that changed them (whoever made it: any
//! replica, the CLI, a hand-written statement); the watch drains what arrived, without a
//! round trip, and pings the server now and then so a dead connection is noticed.

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use diesel::{QueryableByName, RunQueryDsl};

use super::{DbConnection, StoreError, connect};
use crate::config::DatabaseUrl;

/// The notification channel the PostgreSQL schema's triggers send on.
pub const CHANGES_CHANNEL: &str = "tokenwarden_changes";
/// On PostgreSQL, every this many looks the watch also asks the server a trivial question:
/// draining notifications reads the socket but would not notice a silently dead server.
const PING_EVERY: u32 = 10;

/// A dedicated connection that tells whether the database changed since it last looked.
pub struct ChangeWatch {
    conn: DbConnection,
    last_seen: Option<i64>,
    looks: u32,
    /// On PostgreSQL, the schema whose notifications count (the payload names the schema).
    schema: String,
}

impl std::fmt::Debug for ChangeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeWatch").field("last_seen", &self.last_seen).finish()
    }
}

#[derive(QueryableByName)]
struct DataVersion {
    #[diesel(sql_type = BigInt)]
    data_version: i64,
}

impl ChangeWatch {
    /// Opens the watch's own connection to `url`. Blocking.
    pub fn open(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let mut conn = connect(url).map_err(|err| StoreError::Unavailable(err.to_string()))?;
        let schema = match &mut conn {
            DbConnection::Sqlite(inner) => {
                inner.batch_execute("SELECT 1")?;
                String::new()
            }
            DbConnection::Postgres(inner) => {
                inner.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))?;
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("current_schema()")).get_result(inner)?
            }
        };
        Ok(Self { conn, last_seen: None, looks: 0, schema })
    }

    /// True when another connection committed since the last call (and on the first call).
    /// Blocking, and cheap: it reads a counter, no table.
    pub fn changed(&mut self) -> Result<bool, StoreError> {
        self.looks = self.looks.wrapping_add(1);
        let current = match &mut self.conn {
            DbConnection::Sqlite(inner) => {
                diesel::sql_query("PRAGMA data_version").get_result::<DataVersion>(inner)?.data_version
            }
            DbConnection::Postgres(inner) => {
                if self.looks.is_multiple_of(PING_EVERY) {
                    inner.batch_execute("SELECT 1")?;
                }
                let mut arrived = 0;
                for notification in inner.notifications_iter() {
                    arrived += i64::from(notification?.payload == self.schema);
                }
                self.last_seen.unwrap_or(0) + arrived
            }
        };
        let changed = self.last_seen != Some(current);
        self.last_seen = Some(current);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_by_another_connection_is_noticed_once_and_a_quiet_database_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::parse(&format!("sqlite://{}", dir.path().join("t.db").display())).unwrap();
        let mut writer = connect(&url).unwrap();
        writer.batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
        let mut watch = ChangeWatch::open(&url).unwrap();
        assert!(watch.changed().unwrap(), "the first look always counts as a change");
        assert!(!watch.changed().unwrap(), "nothing was committed");
        writer.batch_execute("INSERT INTO t VALUES (1)").unwrap();
        assert!(watch.changed().unwrap(), "another connection committed");
        assert!(!watch.changed().unwrap(), "and that change is reported once");
    }
}
