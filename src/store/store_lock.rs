//! The lock every process holds on a SQLite store while it has the store open, so that
//! `restore` never replaces the file under a writer.
//!
//! Every [`super::Store`] on SQLite holds a shared `flock` on `<database>.lock`, taken before its
//! first connection and released when its last clone is dropped: `serve`, and every command that
//! reads or changes the store (`token rotate`, `provider update`, `backup`, …). `restore` takes
//! the lock exclusively and fails at once while anyone holds it: a process with the store open
//! would go on writing to the replaced file (or its log) and lose every change. The kernel drops
//! the lock with the process, however it ends (SIGKILL included), so a crash never leaves a stale
//! lock behind. PostgreSQL stores have no such file: they are restored with PostgreSQL's own tools.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::config::DatabaseUrl;

/// A held lock on a store; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// The lock file of the SQLite database at `database`: the same path with `.lock` appended.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    PathBuf::from(path)
}

/// Opens (creating, mode 0600) the lock file; a user who may only read the directory opens an
/// existing lock file read-only, which `flock` accepts just as well.
pub(super) fn open(database: &Path, path: &Path) -> Result<File, StoreError> {
    let created = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path);
    match created {
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => File::open(path),
        other => other,
    }
    .map_err(|err| StoreError::Open {
        url: database.display().to_string(),
        message: format!(
            "cannot open its lock file {}: {err} (check that the directory exists and is writable by this user)",
            path.display()
        ),
    })
}

impl StoreLock {
    /// The lock a process holds while it has a SQLite store open (shared: any number of
    /// daemons and commands at once, but no restore); `None` for PostgreSQL. Fails while a
    /// restore replaces the store.
    pub fn shared(url: &DatabaseUrl) -> Result<Option<Self>, StoreError> {
        let DatabaseUrl::Sqlite(database) = url else { return Ok(None) };
        let path = lock_path(database);
        let file = open(database, &path)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(TryLockError::WouldBlock) => Err(StoreError::Conflict(format!(
                "a restore of {url} is in progress (it holds {}); try again when it has finished",
                path.display()
            ))),
            Err(TryLockError::Error(err)) => {
                Err(StoreError::Unavailable(format!("cannot lock {}: {err}", path.display())))
            }
        }
    }

    /// The lock a restore holds while it replaces the SQLite database at `database`: refused
    /// at once ([`StoreError::StoreInUse`]) while any process has that store open.
    pub fn exclusive(database: &Path) -> Result<Self, StoreError> {
        let path = lock_path(database);
        let file = open(database, &path)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StoreError::StoreInUse { lock: path.display().to_string() }),
            Err(TryLockError::Error(err)) => {
                Err(StoreError::Unavailable(format!("cannot lock {}: {err}", path.display())))
            }
        }
    }
}
