//! Errors from the store, each a sentence an operator can act on.

use crate::crypto::CryptoError;

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open database {url}: {message}")]
    Open {
        /// The database URL (without password).
        url: String,
        /// What went wrong and what to check.
        message: String,
    },
    /// There is no tokenwarden store where the settings point (a read-only command never
    /// creates one).
    #[error(
        "no tokenwarden store at {url} (check --database-url / TOKENWARDEN_DATABASE_URL and the working \
         directory; `tokenwarden serve` or an add command creates a store)"
    )]
    NoStore {
        /// The database URL (without password).
        url: String,
    },
    /// The store's schema is older than this tokenwarden's, and the command does not migrate.
    #[error(
        "the store at {url} has an older schema ({pending} migration(s) not applied); this command does not \
         migrate: start `tokenwarden serve` of this version once (it migrates), then run it again"
    )]
    SchemaBehind {
        /// The database URL (without password).
        url: String,
        /// How many migrations are not applied.
        pending: usize,
    },
    /// The store was written by a newer tokenwarden.
    #[error("the store at {url} was written by a newer tokenwarden (schema {versions}); use that version or newer")]
    SchemaAhead {
        /// The database URL (without password).
        url: String,
        /// The applied migrations this binary does not know.
        versions: String,
    },
    /// Applying migrations failed.
    #[error("cannot migrate the database schema: {0}")]
    Migration(String),
    /// No connection could be had in time (locked, down or overloaded).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A name is already taken.
    #[error("a {what} named '{name}' already exists")]
    AlreadyExists {
        /// "token", "provider" or "client".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Nothing has that name.
    #[error("no {what} named '{name}'")]
    NotFound {
        /// "token", "provider" or "client".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A token cannot be removed without the operator's word, since clients may read it.
    #[error(
        "token '{token}' is granted to client(s) {clients}; removing it drops their grants: run again with --yes \
         to remove it anyway"
    )]
    StillGranted {
        /// The token.
        token: String,
        /// The clients granted it, comma-separated.
        clients: String,
    },
    /// A daemon (or another tokenwarden command) has the store open, so it cannot be replaced
    /// under it.
    #[error(
        "a tokenwarden daemon is serving this store, or another tokenwarden command has it open (they hold {lock}); \
         stop the daemon (e.g. `systemctl stop tokenwarden`), let the command finish and run restore again"
    )]
    StoreInUse {
        /// The lock file they hold.
        lock: String,
    },
    /// The request contradicts the current state (e.g. removing a provider still in use).
    #[error("{0}")]
    Conflict(String),
    /// The request is not valid for the data it refers to (e.g. a token kind the provider cannot issue).
    #[error("{0}")]
    InvalidInput(String),
    /// A fenced write found that another worker took the rotation lease over.
    #[error("the rotation lease of token '{token}' was taken over (attempt {attempt}); this result was not stored")]
    LeaseLost {
        /// The token.
        token: String,
        /// Our attempt id.
        attempt: String,
    },
    /// A stored value cannot be interpreted.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Sealing or opening a secret failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The database refused or failed a query.
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    /// The blocking task running the query died.
    #[error("database task failed: {0}")]
    TaskFailed(String),
}

impl super::connection::TransactionError for StoreError {
    fn is_retryable_conflict(&self) -> bool {
        matches!(self, StoreError::Query(err) if super::connection::TransactionError::is_retryable_conflict(err))
    }
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::AlreadyExists`].
    pub(crate) fn on_unique(what: &'static str, name: &str) -> impl FnOnce(diesel::result::Error) -> StoreError {
        let name = name.to_owned();
        move |err| match err {
            diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _) => {
                StoreError::AlreadyExists { what, name }
            }
            other => StoreError::Query(other),
        }
    }
}
