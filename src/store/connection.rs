//! Database connections: one enum over the supported backends, a pool manager that applies
//! each backend's settings on connect, and write transactions that never deadlock on SQLite.

use std::path::Path;

use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::result::DatabaseErrorKind;
use diesel::{Connection, PgConnection, SqliteConnection};

use crate::config::DatabaseUrl;
use crate::store::writer_gate::{WritePriority, WriterGate};

/// How long SQLite waits for a lock held by another connection or process.
pub const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// One writer at a time within this process (see [`WriterGate`]). Other processes still wait
/// through the busy timeout.
static PROCESS_WRITER: WriterGate = WriterGate::new();

/// A connection to whichever backend the database URL selected. All model and query code
/// is written against this one type (Diesel's `MultiConnection`), so adding a backend
/// adds a variant here and a migration tree, not a second copy of the queries. The few
/// statements only one backend has (row locks with `SKIP LOCKED`, `PRAGMA`, `LISTEN`) match
/// on the variant and run on the inner connection.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    /// The embedded SQLite database (the default).
    Sqlite(SqliteConnection),
    /// A PostgreSQL server, shared by several replicas.
    Postgres(PgConnection),
}

/// An error a write transaction may end with, telling whether trying the whole transaction
/// again can succeed (PostgreSQL aborted it because a concurrent transaction changed a row
/// it had read, or chose it as a deadlock's victim).
pub trait TransactionError: From<diesel::result::Error> {
    /// True when the transaction lost a race with another one and may simply be run again.
    fn is_retryable_conflict(&self) -> bool;
}

impl TransactionError for diesel::result::Error {
    fn is_retryable_conflict(&self) -> bool {
        match self {
            diesel::result::Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
            diesel::result::Error::DatabaseError(DatabaseErrorKind::Unknown, info) => {
                info.message().starts_with("deadlock detected")
            }
            _ => false,
        }
    }
}

/// How often a PostgreSQL write transaction that lost a race is run again before its
/// conflict is returned.
const MAX_CONFLICT_RETRIES: u32 = 8;

impl DbConnection {
    /// Runs `f` in a transaction that behaves as if it were the only writer: what it reads
    /// stays true until it commits.
    ///
    /// On SQLite that is `BEGIN IMMEDIATE`, which takes the write lock up front (a deferred
    /// transaction that upgrades from read to write fails with `SQLITE_BUSY` at once, ignoring
    /// the busy timeout). On PostgreSQL it is `REPEATABLE READ`: a transaction that writes a row
    /// another replica changed after it read it is aborted by the server and `f` runs again, up
    /// to [`MAX_CONFLICT_RETRIES`] times, so every read-check-write in the store keeps the
    /// meaning it has on SQLite. `f` must therefore have no effect outside the database.
    pub fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnMut(&mut Self) -> Result<T, E>,
        E: TransactionError,
    {
        self.prioritised_write_transaction(WritePriority::Normal, f)
    }

    /// [`Self::write_transaction`] for storing what a provider answered: on SQLite it takes
    /// the process's writer slot before every ordinary writer still waiting for it, since
    /// until it commits a crash loses a credential the provider has already replaced.
    pub fn answer_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnMut(&mut Self) -> Result<T, E>,
        E: TransactionError,
    {
        self.prioritised_write_transaction(WritePriority::ProviderAnswer, f)
    }

    fn prioritised_write_transaction<T, E, F>(&mut self, priority: WritePriority, mut f: F) -> Result<T, E>
    where
        F: FnMut(&mut Self) -> Result<T, E>,
        E: TransactionError,
    {
        if matches!(self, DbConnection::Sqlite(_)) {
            let _writer = PROCESS_WRITER.acquire(priority);
            return self.transaction_with(&mut f, "BEGIN IMMEDIATE");
        }
        let mut retries = 0;
        loop {
            match self.transaction_with(&mut f, "BEGIN ISOLATION LEVEL REPEATABLE READ") {
                Err(err) if err.is_retryable_conflict() && retries < MAX_CONFLICT_RETRIES => {
                    retries += 1;
                    crate::telemetry::metrics::record_transaction_retry();
                    std::thread::sleep(conflict_pause(retries));
                }
                result => return result,
            }
        }
    }

    /// Runs `f` in a transaction for claiming work with row locks. On SQLite it is the same
    /// `BEGIN IMMEDIATE` as [`Self::write_transaction`]; on PostgreSQL it is `READ COMMITTED`,
    /// where `SELECT … FOR NO KEY UPDATE SKIP LOCKED` passes over rows another replica is
    /// claiming instead of failing, and every `UPDATE … WHERE` re-checks its condition on the
    /// row's newest version after waiting for a lock.
    pub fn claim_transaction<T, E, F>(&mut self, mut f: F) -> Result<T, E>
    where
        F: FnMut(&mut Self) -> Result<T, E>,
        E: TransactionError,
    {
        match self {
            DbConnection::Sqlite(_) => self.write_transaction(f),
            DbConnection::Postgres(_) => self.transaction_with(&mut f, "BEGIN ISOLATION LEVEL READ COMMITTED"),
        }
    }

    /// One attempt of a transaction begun with `begin`: commit on `Ok`, roll back on `Err`.
    fn transaction_with<T, E, F>(&mut self, f: &mut F, begin: &str) -> Result<T, E>
    where
        F: FnMut(&mut Self) -> Result<T, E>,
        E: TransactionError,
    {
        match self {
            DbConnection::Sqlite(inner) => AnsiTransactionManager::begin_transaction_sql(inner, begin)?,
            DbConnection::Postgres(inner) => AnsiTransactionManager::begin_transaction_sql(inner, begin)?,
        }
        let outcome = f(self);
        let ended = match (&outcome, &mut *self) {
            (Ok(_), DbConnection::Sqlite(inner)) => AnsiTransactionManager::commit_transaction(inner),
            (Ok(_), DbConnection::Postgres(inner)) => AnsiTransactionManager::commit_transaction(inner),
            (Err(_), DbConnection::Sqlite(inner)) => AnsiTransactionManager::rollback_transaction(inner),
            (Err(_), DbConnection::Postgres(inner)) => AnsiTransactionManager::rollback_transaction(inner),
        };
        match (outcome, ended) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(commit_failed)) => Err(commit_failed.into()),
            (Err(err), _) => Err(err),
        }
    }
}

/// A short, jittered pause before running a conflicted transaction again, growing with each try.
fn conflict_pause(retry: u32) -> Duration {
    use rand::Rng;
    let ceiling_ms = 2u64 << retry.min(6);
    Duration::from_millis(rand::rng().random_range(1..=ceiling_ms))
}

/// Opens a SQLite database file and applies tokenwarden's connection settings:
/// busy timeout first, then WAL, `synchronous=NORMAL`, foreign keys, and checkpoints at commit
/// only past a safety net (a store checkpoints in the background, see `store::wal_checkpoint`).
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
         PRAGMA foreign_keys = ON;
         PRAGMA wal_autocheckpoint = {};",
        super::wal_checkpoint::SAFETY_NET_PAGES
    ))
    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// How long a PostgreSQL statement waits for a row or table lock before failing: a store call
/// that cannot get its lock is reported (a 503, a retried rotation), never left hanging.
const POSTGRES_LOCK_TIMEOUT: &str = "5s";
/// A session idle inside a transaction this long is ended by the server, releasing its locks
/// (a replica wedged mid-transaction must not hold rows forever).
const POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";

/// Opens a PostgreSQL connection and applies tokenwarden's session settings (Diesel itself
/// sets the time zone to UTC and the client encoding to UTF-8).
pub fn open_postgres(url: &str) -> diesel::ConnectionResult<PgConnection> {
    let mut conn = PgConnection::establish(url)?;
    conn.batch_execute(&format!(
        "SET lock_timeout = '{POSTGRES_LOCK_TIMEOUT}';
         SET idle_in_transaction_session_timeout = '{POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT}';
         SET application_name = 'tokenwarden';"
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
        DatabaseUrl::Postgres(url) => open_postgres(url).map(DbConnection::Postgres),
    }
}
