//! Embedded migrations, one tree per backend, applied at start.
//!
//! On PostgreSQL several replicas may start at the same moment: the first takes an advisory
//! lock and migrates, the others wait on the lock and then find nothing pending. Each migration
//! runs in its own transaction (PostgreSQL DDL is transactional), so a replica killed while
//! migrating leaves the schema at the last whole step.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::{PgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{DbConnection, StoreError};

/// The SQLite schema history, compiled into the binary.
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
/// The PostgreSQL schema history, compiled into the binary.
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// The advisory-lock key that serializes migrations between replicas ("tokenwar" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x746f_6b65_6e77_6172;

/// Applies every pending migration; running it again applies nothing.
pub fn run(conn: &mut DbConnection) -> Result<(), StoreError> {
    match conn {
        DbConnection::Sqlite(inner) => {
            inner.run_pending_migrations(SQLITE_MIGRATIONS).map(|_| ()).map_err(migration_error)
        }
        DbConnection::Postgres(inner) => run_postgres(inner),
    }
}

/// Migrates a PostgreSQL database under the advisory lock, skipping the lock when nothing is
/// pending (the common start of a replica, which then takes no lock at all).
fn run_postgres(conn: &mut PgConnection) -> Result<(), StoreError> {
    if schema_is_current(conn) {
        return Ok(());
    }
    // The lock comes before the harness creates its own bookkeeping table: two replicas creating
    // it at once would collide in PostgreSQL's catalog. Waiting for it may take as long as the
    // other replica's migration, so this connection (used for nothing else) waits without the
    // session's lock timeout.
    conn.batch_execute(&format!("SET lock_timeout = 0; SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
    let migrated = conn.run_pending_migrations(POSTGRES_MIGRATIONS).map(|_| ()).map_err(migration_error);
    let unlocked = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
    migrated?;
    unlocked.map_err(StoreError::from)
}

/// True when every embedded migration is applied. Any error (no bookkeeping table yet) means
/// "not known to be current", and the caller migrates under the lock.
fn schema_is_current(conn: &mut PgConnection) -> bool {
    let Ok(exists) = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "to_regclass('__diesel_schema_migrations') IS NOT NULL",
    ))
    .get_result::<bool>(conn) else {
        return false;
    };
    exists && matches!(conn.has_pending_migration(POSTGRES_MIGRATIONS), Ok(false))
}

/// Diesel's bookkeeping table of applied migrations, read (never created) by [`status`].
mod bookkeeping {
    diesel::table! {
        /// One row per applied migration.
        __diesel_schema_migrations (version) {
            version -> Text,
        }
    }
}

/// How a database's schema compares with the migrations compiled into this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaStatus {
    /// No tokenwarden schema at all (an empty file, or a PostgreSQL database without our tables).
    Missing,
    /// Every migration this binary knows is applied, and no other.
    Current,
    /// Written by an older tokenwarden: this many migrations are not applied yet.
    Behind(usize),
    /// Written by a newer tokenwarden: these applied migrations are unknown to this binary.
    Ahead(Vec<String>),
}

/// Compares the database's applied migrations with the embedded ones, without writing anything
/// (Diesel's own harness would create its bookkeeping table on a database that has none).
pub fn status(conn: &mut DbConnection) -> Result<SchemaStatus, StoreError> {
    let (exists_sql, known) = match conn {
        DbConnection::Sqlite(_) => (
            "(SELECT count(*) FROM sqlite_master WHERE type = 'table' \
             AND name IN ('__diesel_schema_migrations', 'tokens')) = 2",
            embedded_versions::<diesel::sqlite::Sqlite>(&SQLITE_MIGRATIONS)?,
        ),
        DbConnection::Postgres(_) => (
            "to_regclass('__diesel_schema_migrations') IS NOT NULL AND to_regclass('tokens') IS NOT NULL",
            embedded_versions::<diesel::pg::Pg>(&POSTGRES_MIGRATIONS)?,
        ),
    };
    let exists = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(exists_sql)).get_result::<bool>(conn)?;
    if !exists {
        return Ok(SchemaStatus::Missing);
    }
    use diesel::QueryDsl;
    let applied: Vec<String> = bookkeeping::__diesel_schema_migrations::table
        .select(bookkeeping::__diesel_schema_migrations::version)
        .load(conn)?;
    let unknown: Vec<String> = applied.iter().filter(|version| !known.contains(version)).cloned().collect();
    if !unknown.is_empty() {
        return Ok(SchemaStatus::Ahead(unknown));
    }
    let pending = known.iter().filter(|version| !applied.contains(version)).count();
    Ok(if pending == 0 { SchemaStatus::Current } else { SchemaStatus::Behind(pending) })
}

/// The versions of the embedded migrations, as Diesel records them when it applies them.
fn embedded_versions<DB: diesel::backend::Backend>(source: &EmbeddedMigrations) -> Result<Vec<String>, StoreError>
where
    EmbeddedMigrations: MigrationSource<DB>,
{
    let migrations = MigrationSource::<DB>::migrations(source).map_err(migration_error)?;
    Ok(migrations.iter().map(|migration| migration.name().version().to_string()).collect())
}

fn migration_error(err: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
    StoreError::Migration(err.to_string())
}

#[cfg(test)]
mod tests {
    use diesel::Connection;
    use diesel::sql_types::Text;

    use super::*;

    /// Reverts the newest migrations until `version` is no longer applied.
    fn revert_through(conn: &mut diesel::SqliteConnection, version: &str) {
        loop {
            let reverted = conn.revert_last_migration(SQLITE_MIGRATIONS).expect("revert a migration");
            if reverted.to_string().replace('-', "").starts_with(&version.replace('-', "")) {
                return;
            }
        }
    }

    #[derive(diesel::QueryableByName)]
    struct Dropped {
        #[diesel(sql_type = Text)]
        target_name: String,
        #[diesel(sql_type = Text)]
        detail: String,
    }

    #[test]
    fn grants_by_name_of_no_token_are_dropped_with_an_audit_row_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        conn.run_pending_migrations(SQLITE_MIGRATIONS).unwrap();
        revert_through(&mut conn, "2026-12-03-000041");
        conn.batch_execute(
            "INSERT INTO providers (id, name, kind, created_at, updated_at)
                 VALUES ('p', 'gitlab', 'gitlab', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP);
             INSERT INTO tokens (id, name, provider_id, kind, version, state, attempt_count, created_at, updated_at)
                 VALUES ('t', 'deploy', 'p', 'gitlab-project-access-token', 1, 'active', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP);
             INSERT INTO clients (id, name, role, api_key_lookup, api_key_hash, created_at, updated_at)
                 VALUES ('c', 'ci', 'reader', 'lookup', x'00', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP);
             INSERT INTO client_grants (client_id, token_name) VALUES ('c', 'deploy'), ('c', 'future');",
        )
        .unwrap();

        conn.run_pending_migrations(SQLITE_MIGRATIONS).unwrap();

        let kept: Vec<Dropped> = diesel::sql_query(
            "SELECT c.name AS target_name, g.token_id AS detail FROM client_grants g JOIN clients c ON c.id = g.client_id",
        )
        .load(&mut conn)
        .unwrap();
        assert_eq!(kept.iter().map(|g| (g.target_name.as_str(), g.detail.as_str())).collect::<Vec<_>>(), [("ci", "t")]);
        let dropped: Vec<Dropped> = diesel::sql_query(
            "SELECT target_name, detail FROM audit_log WHERE action = 'client.grant_dropped' AND actor = 'migration'",
        )
        .load(&mut conn)
        .unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].target_name, "ci");
        assert!(dropped[0].detail.starts_with("token=future "), "{}", dropped[0].detail);
    }
}
