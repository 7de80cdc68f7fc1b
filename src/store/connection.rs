//! Database connections: one enum over the supported backends, a pool manager that applies
//! each backend's settings on connect, and write transactions that never deadlock on SQLite.

use std::path::Path;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::r2d2::{self, R2D2Connection};
use diesel::{Connection, SqliteConnection};

use crate::config::DatabaseUrl;

/// How long SQLite waits for a lock held by another connection or process.
pub const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// One writer at a time within this process: SQLite allows one anyway, and a waiter queued
/// here is woken the moment the writer is done, where SQLite's busy handler would sleep in
/// steps of milliseconds. Other processes still wait through the busy timeout.
static PROCESS_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A connection to whichever backend the database URL selected. All model and query code
/// is written against this one type (Diesel's `MultiConnection`), so adding a backend
/// adds a variant here and a migration tree, not a second copy of the queries.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    /// The embedded SQLite database (the default).
    Sqlite(SqliteConnection),
}

impl DbConnection {
    /// Runs `f` in a transaction that takes the write lock up front.
    ///
    /// On SQLite a deferred transaction that upgrades from read to write fails with
    /// `SQLITE_BUSY` at once, ignoring the busy timeout; `BEGIN IMMEDIATE` waits instead.
    pub fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        let _writer = PROCESS_WRITER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let DbConnection::Sqlite(inner) = self;
        AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(value) => {
                let DbConnection::Sqlite(inner) = self;
                AnsiTransactionManager::commit_transaction(inner)?;
                Ok(value)
            }
            Err(err) => {
                let DbConnection::Sqlite(inner) = self;
                AnsiTransactionManager::rollback_transaction(inner)?;
                Err(err)
            }
        }
    }
}

/// Opens a SQLite database file and applies tokenwarden's connection settings:
/// busy timeout first, then WAL, `synchronous=NORMAL` and foreign keys.
pub fn open_sqlite(path: &Path) -> diesel::ConnectionResult<SqliteConnection> {
    let path_text = path
        .to_str()
        .ok_or_else(|| diesel::ConnectionError::InvalidConnectionUrl("the database path is not valid UTF-8".into()))?;
    create_private_file(path)
        .map_err(|err| diesel::ConnectionError::BadConnection(format!("cannot create {}: {err}", path.display())))?;
    let mut conn = SqliteConnection::establish(path_text)?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;"
    ))
    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Creates an empty database file readable only by its owner, unless it exists already.
/// SQLite gives its `-wal` and `-shm` files the same permissions.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Opens a connection for `url`.
pub fn connect(url: &DatabaseUrl) -> diesel::ConnectionResult<DbConnection> {
    match url {
        DatabaseUrl::Sqlite(path) => open_sqlite(path).map(DbConnection::Sqlite),
        DatabaseUrl::Postgres(_) => Err(diesel::ConnectionError::BadConnection(
            "PostgreSQL is not supported by this build yet; use a sqlite:// database URL".into(),
        )),
    }
}

/// An r2d2 manager that opens connections with [`connect`].
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
}

impl Manager {
    /// A manager for `url`.
    pub fn new(url: DatabaseUrl) -> Self {
        Self { url }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        connect(&self.url).map_err(r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}
