//! Consistent copies of a SQLite store taken while the daemon runs, and putting one back.
//!
//! Copying `tokenwarden.db` with `cp` while `serve` runs misses every change still in the
//! write-ahead log (`tokenwarden.db-wal`): the newest versions of rotated tokens, whose older
//! secrets the provider has already revoked. [`backup`] uses `VACUUM INTO`, which writes one
//! self-contained file from a single read snapshot (the WAL included) without stopping writers.
//! [`inspect`] checks a file before [`replace`] puts it in place of the store, atomically.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use diesel::prelude::*;
use diesel::sql_types::Text;

use super::migrations::{self, SchemaStatus};
use super::schema::tokens;
use super::{DbConnection, StoreError};

/// What a backup file holds, as far as a restore needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// Tokens in it.
    pub tokens: i64,
    /// Migrations this binary would still apply to it (an older tokenwarden wrote it).
    pub pending_migrations: usize,
    /// The master key its secrets are sealed with, if any secret was ever sealed.
    pub sealed_with: Option<crate::crypto::KeyId>,
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Length of the SQLite file header.
const HEADER_LEN: usize = 100;

fn invalid(message: String) -> StoreError {
    StoreError::InvalidInput(message)
}

/// Creates `target` empty with mode 0600, refusing an existing file or a missing directory, so
/// no secret byte is ever written to a file others may read or to a file that was already there.
fn create_private(target: &Path) -> Result<File, StoreError> {
    let directory = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !directory.is_dir() {
        return Err(invalid(format!("the directory {} does not exist; create it first", directory.display())));
    }
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(target).map_err(|err| match err.kind() {
        std::io::ErrorKind::AlreadyExists => {
            invalid(format!("{} exists already; a backup never overwrites a file: choose a new name", target.display()))
        }
        _ => invalid(format!("cannot create {}: {err}", target.display())),
    })
}

/// Writes a consistent copy of the SQLite store behind `conn` to the new file `target` (mode
/// 0600, secrets still sealed), while other connections and processes go on reading and
/// writing; then checks the copy. A failed backup leaves no file behind.
pub fn backup(conn: &mut DbConnection, target: &Path) -> Result<BackupInfo, StoreError> {
    let DbConnection::Sqlite(inner) = conn else {
        return Err(invalid("backup copies SQLite stores; back a PostgreSQL store up with pg_dump".into()));
    };
    let file = create_private(target)?;
    let written = target
        .to_str()
        .ok_or_else(|| invalid(format!("{} is not a UTF-8 path", target.display())))
        .and_then(|path| {
            diesel::sql_query("VACUUM INTO ?").bind::<Text, _>(path).execute(inner).map_err(StoreError::from)
        })
        .and_then(|_| file.sync_all().map_err(|err| StoreError::Unavailable(format!("cannot sync the backup: {err}"))))
        .and_then(|()| sync_directory(target))
        .and_then(|()| inspect(target));
    if written.is_err() {
        let _ = std::fs::remove_file(target);
    }
    written
}

/// Checks that `source` is a whole tokenwarden SQLite store this binary can use: a SQLite file
/// (not truncated: the header's page count fits the file), intact (`PRAGMA quick_check`), with
/// tokenwarden's schema, not newer than this binary's. Opens it read-only and changes nothing.
pub fn inspect(source: &Path) -> Result<BackupInfo, StoreError> {
    check_header(source)?;
    let mut conn = open_read_only(source)?;
    let check: String = diesel::select(diesel::dsl::sql::<Text>("(SELECT quick_check FROM pragma_quick_check)"))
        .get_result(&mut conn)
        .map_err(|err| invalid(format!("{} is damaged: {err}", source.display())))?;
    if check != "ok" {
        return Err(invalid(format!("{} is damaged: {check}", source.display())));
    }
    let mut conn = DbConnection::Sqlite(conn);
    let pending_migrations = match migrations::status(&mut conn)? {
        SchemaStatus::Missing => {
            return Err(invalid(format!("{} is a SQLite file but not a tokenwarden store", source.display())));
        }
        SchemaStatus::Ahead(versions) => {
            return Err(invalid(format!(
                "{} was written by a newer tokenwarden (schema {}); restore it with that version",
                source.display(),
                versions.join(", ")
            )));
        }
        SchemaStatus::Behind(pending) => pending,
        SchemaStatus::Current => 0,
    };
    let tokens = tokens::table.count().get_result(&mut conn)?;
    let sealed_with = super::meta::sealing_key_id(&mut conn)?;
    Ok(BackupInfo { tokens, pending_migrations, sealed_with })
}

/// Refuses a file that is not SQLite, or shorter than its header says (cut off in a copy).
fn check_header(source: &Path) -> Result<(), StoreError> {
    let not_found = |err: std::io::Error| invalid(format!("cannot read {}: {err}", source.display()));
    let mut file = File::open(source).map_err(not_found)?;
    let length = file.metadata().map_err(not_found)?.len();
    let mut header = [0u8; HEADER_LEN];
    if file.read_exact(&mut header).is_err() || &header[..16] != SQLITE_MAGIC {
        return Err(invalid(format!("{} is not a tokenwarden store (not a SQLite database file)", source.display())));
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        size => u64::from(size),
    };
    let pages = u64::from(u32::from_be_bytes([header[28], header[29], header[30], header[31]]));
    let counter_matches = header[24..28] == header[92..96];
    let truncated = page_size == 0 || length % page_size != 0 || (counter_matches && length < pages * page_size);
    if truncated {
        return Err(invalid(format!(
            "{} is truncated ({length} bytes; its header promises {} pages of {page_size}): take another backup",
            source.display(),
            pages
        )));
    }
    Ok(())
}

/// Opens a SQLite file read-only and as immutable: nothing (no journal, no `-shm`) is written
/// beside it.
fn open_read_only(source: &Path) -> Result<SqliteConnection, StoreError> {
    let path = source.to_str().ok_or_else(|| invalid(format!("{} is not a UTF-8 path", source.display())))?;
    let uri = format!("file:{}?mode=ro&immutable=1", path.replace('%', "%25").replace('?', "%3f").replace('#', "%23"));
    SqliteConnection::establish(&uri).map_err(|err| invalid(format!("cannot open {}: {err}", source.display())))
}

/// Puts the checked backup `source` in place of the SQLite database `database`, atomically: a
/// copy is written (mode 0600) and synced beside the database, the current database's log is
/// checkpointed into it and removed, the current file is kept as `<database>.before-restore-<time>`
/// (returned) and the copy renamed over it. Until that rename the old store is untouched; the
/// caller holds [`super::store_lock::StoreLock::exclusive`].
pub fn replace(database: &Path, source: &Path, stamp: &str) -> Result<Option<PathBuf>, StoreError> {
    let failed = |what: String| move |err: std::io::Error| StoreError::Unavailable(format!("{what}: {err}"));
    let staged = sibling(database, &format!(".restore-{stamp}"));
    let _ = std::fs::remove_file(&staged);
    let copied = create_private(&staged).and_then(|mut out| {
        let mut input = File::open(source).map_err(failed(format!("cannot read {}", source.display())))?;
        std::io::copy(&mut input, &mut out).map_err(failed(format!("cannot write {}", staged.display())))?;
        out.sync_all().map_err(failed(format!("cannot sync {}", staged.display())))
    });
    let replaced = copied.and_then(|()| inspect(&staged)).and_then(|_| swap_in(database, &staged, stamp));
    if replaced.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    replaced
}

/// Folds the current database's log into it, keeps it under a second name and renames the
/// checked copy `staged` over it.
fn swap_in(database: &Path, staged: &Path, stamp: &str) -> Result<Option<PathBuf>, StoreError> {
    let failed = |what: String| move |err: std::io::Error| StoreError::Unavailable(format!("{what}: {err}"));
    let kept = if database.exists() {
        fold_log(database)?;
        let kept = sibling(database, &format!(".before-restore-{stamp}"));
        std::fs::hard_link(database, &kept)
            .map_err(failed(format!("cannot keep the old store as {}", kept.display())))?;
        Some(kept)
    } else {
        None
    };
    std::fs::rename(staged, database).map_err(failed(format!("cannot move the backup to {}", database.display())))?;
    sync_directory(database)?;
    Ok(kept)
}

/// Checkpoints the database's write-ahead log into the file and removes the log, so that no
/// log of the old store is ever replayed into the restored one. Refused, with the log left in
/// place, when SQLite cannot do both (another connection still has the store open).
fn fold_log(database: &Path) -> Result<(), StoreError> {
    let in_use = |what: &str| {
        StoreError::Conflict(format!(
            "cannot {what} of {}: another process has it open; stop it and run restore again",
            database.display()
        ))
    };
    let busy = |what: &'static str| {
        move |err: diesel::result::Error| match err.to_string() {
            words if words.contains("locked") || words.contains("busy") => in_use(what),
            _ => StoreError::from(err),
        }
    };
    let mut conn = super::connection::open_sqlite(database)
        .map_err(|err| StoreError::Unavailable(format!("cannot open {}: {err}", database.display())))?;
    let fold = "fold the write-ahead log into the store";
    let checkpoint: Vec<Checkpoint> =
        diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)").load(&mut conn).map_err(busy(fold))?;
    if checkpoint.iter().any(|row| row.busy != 0) {
        return Err(in_use(fold));
    }
    let leave = "leave write-ahead-log mode";
    let mode: Vec<JournalMode> =
        diesel::sql_query("PRAGMA journal_mode = DELETE").load(&mut conn).map_err(busy(leave))?;
    if !mode.iter().any(|row| row.journal_mode.eq_ignore_ascii_case("delete")) {
        return Err(in_use(leave));
    }
    drop(conn);
    for suffix in ["-wal", "-shm"] {
        let path = sibling(database, suffix);
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Unavailable(format!("cannot remove {}: {err}", path.display())));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The answer of `PRAGMA wal_checkpoint`: `busy` is 1 when the checkpoint could not finish.
#[derive(QueryableByName)]
struct Checkpoint {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    busy: i32,
}

/// The answer of `PRAGMA journal_mode = …`: the mode in force afterwards.
#[derive(QueryableByName)]
struct JournalMode {
    #[diesel(sql_type = Text)]
    journal_mode: String,
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Syncs the directory holding `path`, so a new or renamed entry survives a crash.
fn sync_directory(path: &Path) -> Result<(), StoreError> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| StoreError::Unavailable(format!("cannot sync {}: {err}", directory.display())))
}
