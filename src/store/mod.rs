//! The persistent store: schema, models, queries and migrations, on Diesel.
//!
//! Diesel is blocking, so no query ever runs on a tokio worker thread: [`Store::run`] takes a
//! pooled connection on the blocking pool and hands it to a synchronous query function from
//! one of the submodules. Writes go through [`DbConnection::write_transaction`].

mod answer_batch;
pub use answer_batch::StoredAnswer;
pub mod answer_journal;
pub mod audit;
mod audit_batch;
pub mod authorization_claim;
pub mod authorizations;
pub mod backup;
pub mod changes;
pub mod client_update;
pub mod clients;
mod connection;
pub mod consumers;
pub mod creation;
mod error;
pub mod grant_owners;
pub mod healing;
pub mod job_lock;
pub mod lease_restore;
pub mod meta;
pub mod migrations;
pub mod models;
pub mod outbox;
pub mod overview;
pub mod pending_revocations;
mod pool;
pub mod providers;
pub mod rekey;
pub mod replan;
pub mod revocation;
pub mod rotation;
pub mod schema;
pub mod sinks;
pub mod store_lock;
pub mod tokens;
pub mod ui_sessions;
mod wal_checkpoint;
pub mod write_health;
mod writer_gate;

use std::time::Duration;

use diesel::r2d2::Pool;

pub use connection::{DbConnection, SQLITE_BUSY_TIMEOUT_MS, connect};
pub use error::StoreError;
pub use pool::Manager;

use crate::config::DatabaseUrl;

/// Connections kept in the pool (at most).
pub const POOL_SIZE: u32 = 8;
/// Longest wait for a pooled connection before the store is reported unavailable.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// A handle on the database: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Store {
    pool: Pool<Manager>,
    url: DatabaseUrl,
    audit: audit_batch::AuditBatcher,
    answers: answer_batch::AnswerBatcher,
    writes: write_health::WriteHealth,
    /// Held while any clone of this store lives (SQLite): `restore` refuses to replace it.
    _lock: Option<std::sync::Arc<store_lock::StoreLock>>,
    /// Checkpoints the WAL in the background while any clone lives (SQLite).
    _checkpoint: Option<std::sync::Arc<wal_checkpoint::PeriodicCheckpoint>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

impl Store {
    /// Opens the database, runs pending migrations (harmless when there are none) and
    /// builds the pool; a database a newer tokenwarden migrated is refused
    /// ([`StoreError::SchemaAhead`]), never run on with a schema this binary does not know. Blocking: call before the runtime's work starts, or via
    /// `spawn_blocking`.
    pub fn open(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let lock = store_lock::StoreLock::shared(url)?;
        let mut first = connect(url)
            .map_err(|err| StoreError::Open { url: url.to_string(), message: describe_open_error(url, &err) })?;
        // A status that cannot be read now (another replica is migrating) is left to the
        // migration itself, which waits for that replica.
        if let Ok(migrations::SchemaStatus::Ahead(versions)) = migrations::status(&mut first) {
            return Err(StoreError::SchemaAhead { url: url.to_string(), versions: versions.join(", ") });
        }
        migrations::run(&mut first)?;
        if let DbConnection::Postgres(pg) = &mut first {
            warn_without_autovacuum(pg);
        }
        drop(first);
        Ok(Self::with_pool(url, lock))
    }

    /// Opens an existing store whose schema is this binary's, without creating or migrating
    /// anything: for commands that only read or change what exists. A missing SQLite file, or a
    /// database without tokenwarden's tables, is [`StoreError::NoStore`]; an older or newer
    /// schema is [`StoreError::SchemaBehind`] / [`StoreError::SchemaAhead`]. Blocking.
    pub fn open_existing(url: &DatabaseUrl) -> Result<Self, StoreError> {
        Self::open_unmigrated(url, false)
    }

    /// Opens an existing store as it is, an older schema included, for copying it whole
    /// (`backup` before an upgrade is exactly when the schema is behind this binary); never
    /// creates or migrates anything. Otherwise as [`Store::open_existing`]. Blocking.
    pub fn open_for_copy(url: &DatabaseUrl) -> Result<Self, StoreError> {
        Self::open_unmigrated(url, true)
    }

    fn open_unmigrated(url: &DatabaseUrl, older_schema_allowed: bool) -> Result<Self, StoreError> {
        let no_store = || StoreError::NoStore { url: url.to_string() };
        if let DatabaseUrl::Sqlite(path) = url
            && !path.is_file()
        {
            return Err(no_store());
        }
        let lock = store_lock::StoreLock::shared(url)?;
        let mut first = connect(url)
            .map_err(|err| StoreError::Open { url: url.to_string(), message: describe_open_error(url, &err) })?;
        match migrations::status(&mut first)? {
            migrations::SchemaStatus::Current => {}
            migrations::SchemaStatus::Missing => return Err(no_store()),
            migrations::SchemaStatus::Behind(_) if older_schema_allowed => {}
            migrations::SchemaStatus::Behind(pending) => {
                return Err(StoreError::SchemaBehind { url: url.to_string(), pending });
            }
            migrations::SchemaStatus::Ahead(versions) => {
                return Err(StoreError::SchemaAhead { url: url.to_string(), versions: versions.join(", ") });
            }
        }
        drop(first);
        Ok(Self::with_pool(url, lock))
    }

    /// The store's pool and helpers on a database that is ready, holding `lock`.
    fn with_pool(url: &DatabaseUrl, lock: Option<store_lock::StoreLock>) -> Self {
        let pool = Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(POOL_WAIT)
            .test_on_check_out(false)
            .build_unchecked(Manager::new(url.clone()));
        Self {
            pool,
            url: url.clone(),
            audit: audit_batch::AuditBatcher::default(),
            answers: answer_batch::AnswerBatcher::new(match url {
                DatabaseUrl::Sqlite(_) => answer_batch::SQLITE_STORE_CHUNK,
                DatabaseUrl::Postgres(_) => answer_batch::POSTGRES_STORE_CHUNK,
            }),
            writes: write_health::WriteHealth::default(),
            _lock: lock.map(std::sync::Arc::new),
            _checkpoint: match url {
                DatabaseUrl::Sqlite(path) => {
                    Some(std::sync::Arc::new(wal_checkpoint::PeriodicCheckpoint::start(path.clone())))
                }
                DatabaseUrl::Postgres(_) => None,
            },
        }
    }

    /// The URL this store was opened with.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Runs a synchronous query function on the blocking pool with a pooled connection.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(|err| StoreError::Unavailable(err.to_string()))?;
            let result = f(&mut conn);
            if let Err(err) = &result {
                conn.retire_if_lost(err);
            }
            result
        })
        .await
        .map_err(|err| StoreError::TaskFailed(err.to_string()))?;
        self.writes.observe(&result);
        result
    }

    /// Appends an audit row through a group commit shared with concurrent callers; returns once
    /// it is committed. For hot paths (secret reads); changes record their audit row inside
    /// their own transaction instead. The commits run on a writer thread with a connection of
    /// its own, not on the blocking pool.
    pub async fn record_audit(&self, row: models::AuditRow) -> Result<(), StoreError> {
        let result = self.audit.record(&self.url, row).await;
        self.writes.observe(&result);
        result
    }

    /// Stores a provider's answer through a group commit shared with the answers arriving at
    /// the same time (see [`answer_batch`]): journaled first, then committed; returns the new
    /// version and when the answer became durable once it is committed, or
    /// [`StoreError::LeaseLost`] if another attempt took the token over.
    pub async fn commit_answer(&self, answer: rotation::Answer) -> Result<StoredAnswer, StoreError> {
        let result = self.answers.commit(&self.pool, answer).await;
        self.writes.observe(&result);
        result
    }

    /// A watch on this database that notices commits made by any other connection.
    /// Blocking: opens a connection of its own.
    pub fn watch_changes(&self) -> Result<changes::ChangeWatch, StoreError> {
        changes::ChangeWatch::open(&self.url)
    }

    /// Whether another connection committed since `watch` last looked, asked on a blocking
    /// thread; opens the watch first when there is none. A failed watch is dropped (and opened
    /// again by the next call), so the caller can treat the error as "maybe changed".
    pub async fn changed_since(&self, watch: &mut Option<changes::ChangeWatch>) -> Result<bool, StoreError> {
        let (store, current) = (self.clone(), watch.take());
        let (kept, changed) = tokio::task::spawn_blocking(move || {
            let mut opened = match current {
                Some(opened) => opened,
                None => store.watch_changes()?,
            };
            let changed = opened.changed()?;
            Ok::<_, StoreError>((opened, changed))
        })
        .await
        .map_err(|err| StoreError::TaskFailed(err.to_string()))??;
        *watch = Some(kept);
        Ok(changed)
    }

    /// Checks that the database answers a trivial query and, after a write failed for lack of
    /// space or permission (see [`write_health`]), that a small write goes through again.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            use diesel::connection::SimpleConnection;
            conn.batch_execute("SELECT 1").map_err(StoreError::from)
        })
        .await?;
        let Some(problem) = self.writes.problem() else { return Ok(()) };
        match self.run(meta::probe_write).await {
            Ok(()) => {
                self.writes.clear();
                Ok(())
            }
            Err(err) => {
                Err(StoreError::Unavailable(format!("writes fail ({problem}); a write probe failed too: {err}")))
            }
        }
    }
}

/// Warns when the PostgreSQL server does not vacuum by itself: every claim and commit leaves a
/// dead row version behind (no update of `tokens` can be HOT, see the migration), so without
/// autovacuum the due-time indexes fill with dead entries and every claim slows down.
fn warn_without_autovacuum(conn: &mut diesel::PgConnection) {
    use diesel::RunQueryDsl;
    let setting = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("current_setting('autovacuum')"))
        .get_result::<String>(conn);
    if setting.as_deref() == Ok("off") {
        tracing::warn!(
            "autovacuum is off on this PostgreSQL server: dead rows from rotations will pile up and slow claims \
             down; turn it on, or VACUUM the tokens table regularly"
        );
    }
}

/// Explains a failure to open the database in terms an operator can act on.
fn describe_open_error(url: &DatabaseUrl, err: &diesel::ConnectionError) -> String {
    match url {
        DatabaseUrl::Sqlite(path) => {
            format!("{err} (check that the directory of {} exists and is writable by this user)", path.display())
        }
        DatabaseUrl::Postgres(_) => err.to_string(),
    }
}
