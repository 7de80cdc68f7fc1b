//! The lock a running daemon holds on a SQLite store, so that `restore` can tell it is running.
//!
//! `serve` holds a shared `flock` on `<database>.lock` for as long as it runs; `restore` takes
//! it exclusively, and fails at once while any daemon holds it (a daemon would go on writing to
//! the replaced file and lose every change). The kernel drops the lock with the process, however
//! it ends (SIGKILL included), so a crashed daemon never leaves a stale lock behind. PostgreSQL
//! stores have no such file: they are restored with PostgreSQL's own tools.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::config::DatabaseUrl;

/// A held lock on a store; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

/// The lock file of the SQLite database at `database`: the same path with `.lock` appended.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    PathBuf::from(path)
}

fn open(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|err| StoreError::Unavailable(format!("cannot open the lock file {}: {err}", path.display())))
}

impl DaemonLock {
    /// The lock a daemon holds while it serves a SQLite store (shared: it does not stop another
    /// daemon, only a restore); `None` for PostgreSQL. Fails while a restore replaces the store.
    pub fn for_serve(url: &DatabaseUrl) -> Result<Option<Self>, StoreError> {
        let DatabaseUrl::Sqlite(database) = url else { return Ok(None) };
        let path = lock_path(database);
        let file = open(&path)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(TryLockError::WouldBlock) => Err(StoreError::Conflict(format!(
                "a restore of {url} is in progress (it holds {}); start the daemon when it has finished",
                path.display()
            ))),
            Err(TryLockError::Error(err)) => {
                Err(StoreError::Unavailable(format!("cannot lock {}: {err}", path.display())))
            }
        }
    }

    /// The lock a restore holds while it replaces the SQLite database at `database`: refused
    /// at once ([`StoreError::DaemonRunning`]) while a daemon serves that store.
    pub fn for_restore(database: &Path) -> Result<Self, StoreError> {
        let path = lock_path(database);
        let file = open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StoreError::DaemonRunning { lock: path.display().to_string() }),
            Err(TryLockError::Error(err)) => {
                Err(StoreError::Unavailable(format!("cannot lock {}: {err}", path.display())))
            }
        }
    }
}
