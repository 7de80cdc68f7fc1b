//! Embedded migrations, one tree per backend, applied at start.

use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{DbConnection, StoreError};

/// The SQLite schema history, compiled into the binary.
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Applies every pending migration; running it again applies nothing.
pub fn run(conn: &mut DbConnection) -> Result<(), StoreError> {
    let DbConnection::Sqlite(inner) = conn;
    inner.run_pending_migrations(SQLITE_MIGRATIONS).map(|_| ()).map_err(|err| StoreError::Migration(err.to_string()))
}
