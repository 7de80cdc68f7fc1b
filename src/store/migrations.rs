//! Embedded migrations, one tree per backend, applied at start.
//!
//! On PostgreSQL several replicas may start at the same moment: the first takes an advisory
//! lock and migrates, the others wait on the lock and then find nothing pending. Each migration
//! runs in its own transaction (PostgreSQL DDL is transactional), so a replica killed while
//! migrating leaves the schema at the last whole step.

use diesel::connection::SimpleConnection;
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

fn migration_error(err: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
    StoreError::Migration(err.to_string())
}
