//! One replica at a time for a periodic job that talks to providers (the validation sweep):
//! replicas sharing a PostgreSQL database would otherwise each ask GitLab about every token.
//!
//! On PostgreSQL the lock is a session advisory lock on a connection of its own, taken with
//! `pg_try_advisory_lock` (a replica that finds it held skips that run) and released when the
//! guard is dropped — or by the server when the holder dies, since its session ends. On SQLite
//! there is one daemon per database, and the guard of [`try_lock`] holds nothing; a job that
//! commands may start (`key rotate`) takes [`try_lock_across_processes`], which on SQLite holds
//! an exclusive `flock` on `<database>.<job>.lock` (dropped by the kernel with the process).

use diesel::sql_types::{BigInt, Bool};
use diesel::{PgConnection, RunQueryDsl};

use super::{DbConnection, StoreError, connect};
use crate::config::DatabaseUrl;

/// Keeps a job's lock for as long as it lives.
pub struct JobLock {
    session: Option<PgConnection>,
    _file: Option<std::fs::File>,
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock")
            .field("held_on_postgres", &self.session.is_some())
            .field("held_on_file", &self._file.is_some())
            .finish()
    }
}

/// The lock for `job`, or `None` when another replica holds it. Blocking.
pub fn try_lock(url: &DatabaseUrl, job: &str) -> Result<Option<JobLock>, StoreError> {
    let DatabaseUrl::Postgres(_) = url else {
        return Ok(Some(JobLock { session: None, _file: None }));
    };
    let DbConnection::Postgres(mut session) = connect(url).map_err(|err| StoreError::Unavailable(err.to_string()))?
    else {
        return Err(StoreError::Unavailable("a postgres:// URL opened another backend".into()));
    };
    let key = job_key(job);
    let taken = diesel::select(diesel::dsl::sql::<Bool>("pg_try_advisory_lock(").bind::<BigInt, _>(key).sql(")"))
        .get_result::<bool>(&mut session)?;
    Ok(taken.then_some(JobLock { session: Some(session), _file: None }))
}

/// Like [`try_lock`], but on SQLite too only one process at a time holds it: an exclusive
/// `flock` on `<database>.<job>.lock`. `None` when another process holds it. Blocking.
pub fn try_lock_across_processes(url: &DatabaseUrl, job: &str) -> Result<Option<JobLock>, StoreError> {
    let DatabaseUrl::Sqlite(database) = url else { return try_lock(url, job) };
    let mut path = database.as_os_str().to_owned();
    path.push(format!(".{job}.lock"));
    let path = std::path::PathBuf::from(path);
    let file = super::store_lock::open(database, &path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(JobLock { session: None, _file: Some(file) })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(err)) => {
            Err(StoreError::Unavailable(format!("cannot lock {}: {err}", path.display())))
        }
    }
}

/// A stable 64-bit advisory-lock key for a job name (FNV-1a), distinct from the migration lock's.
fn job_key(job: &str) -> i64 {
    let hash = format!("tokenwarden-job:{job}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
    i64::from_ne_bytes(hash.to_ne_bytes())
}
