//! `tokenwarden backup` and `tokenwarden restore`: a consistent copy of a SQLite store taken
//! while the daemon runs, and putting one back while no daemon runs. The master key is not in
//! the copy; it is backed up separately.

use std::path::{Path, PathBuf};

use chrono::Utc;

use super::CliError;
use super::args::{BackupArgs, RestoreArgs};
use super::context::open_store_for_copy;
use crate::config::{DatabaseUrl, Settings};
use crate::crypto::{Cipher, KeyId, MasterKey, locate_master_key};
use crate::store::backup::{self, BackupInfo};
use crate::store::store_lock::StoreLock;

/// What to do instead on PostgreSQL.
const POSTGRES_BACKUP: &str = "backup and restore copy SQLite stores; back a PostgreSQL store up with \
     `pg_dump --format=custom --file=FILE URL` and restore it with `pg_restore --clean --dbname=URL FILE` while \
     no replica runs (keep the master key separately)";

/// `backup --to FILE`: an online, consistent copy of the store, mode 0600, secrets still sealed.
pub async fn backup(settings: Settings, args: BackupArgs) -> Result<(), CliError> {
    if matches!(settings.database_url, DatabaseUrl::Postgres(_)) {
        return Err(CliError::Usage(POSTGRES_BACKUP.into()));
    }
    let store = open_store_for_copy(&settings).await?;
    let target = args.to.clone();
    let info = store.run(move |conn| backup::backup(conn, &target)).await?;
    let older = if info.pending_migrations > 0 {
        format!("; it has an older schema ({} migration(s) not applied), as the store does", info.pending_migrations)
    } else {
        String::new()
    };
    eprintln!(
        "backed up {} to {} ({}{older}); keep the master key{} separately: the backup cannot be read without it",
        settings.database_url,
        args.to.display(),
        describe(&info),
        key_hint(&settings)
    );
    Ok(())
}

/// `restore --from FILE`: checks the file, then replaces the store with it atomically, keeping
/// the replaced file beside it; refused while a daemon serves the store.
pub async fn restore(settings: Settings, args: RestoreArgs) -> Result<(), CliError> {
    let DatabaseUrl::Sqlite(database) = settings.database_url.clone() else {
        return Err(CliError::Usage(POSTGRES_BACKUP.into()));
    };
    let source = args.from.clone();
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let configured_key = configured_key(&settings)?;
    let from = args.from.clone();
    let (info, kept) = tokio::task::spawn_blocking(move || {
        let info = backup::inspect(&source)?;
        if let (Some(sealed_with), Some((path, loaded))) = (info.sealed_with, configured_key)
            && sealed_with != loaded
        {
            return Err(crate::store::StoreError::InvalidInput(format!(
                "{} is sealed with master key {sealed_with}, but the master key at {} is {loaded}: put the \
                 backup's key there (or give --master-key-file) first; nothing was restored",
                from.display(),
                path.display()
            )));
        }
        let _lock = StoreLock::exclusive(&database)?;
        let kept = backup::replace(&database, &source, &stamp)?;
        Ok::<_, crate::store::StoreError>((info, kept))
    })
    .await
    .map_err(|err| CliError::Failed(format!("the restore task failed: {err}")))??;
    let kept = kept.map(|path| format!("; the store it replaced is kept as {}", path.display())).unwrap_or_default();
    let migrate = if info.pending_migrations > 0 { "; `tokenwarden serve` migrates it on start" } else { "" };
    eprintln!(
        "restored {} to {} ({}){kept}{migrate}; start the daemon with the master key the backup was sealed with",
        args.from.display(),
        settings.database_url,
        describe(&info)
    );
    Ok(())
}

/// The master key the restored store will be opened with, with its id, when it can be read
/// now (a restore may come before the key is put back; then nothing is compared).
fn configured_key(settings: &Settings) -> Result<Option<(PathBuf, KeyId)>, CliError> {
    let credentials_directory = std::env::var_os("CREDENTIALS_DIRECTORY");
    let location = locate_master_key(
        settings.master_key_file.as_deref(),
        credentials_directory.as_deref().map(Path::new),
        settings.database_url.default_master_key_file(),
    )?;
    let path = location.path().to_owned();
    Ok(MasterKey::read(&path).ok().map(|key| (path, Cipher::new(&key).key_id())))
}

fn describe(info: &BackupInfo) -> String {
    match info.tokens {
        1 => "1 token".to_owned(),
        n => format!("{n} tokens"),
    }
}

/// The master key file in use, when one is configured or sits beside the database.
fn key_hint(settings: &Settings) -> String {
    settings
        .master_key_file
        .clone()
        .or_else(|| settings.database_url.default_master_key_file())
        .map(|path| format!(" ({})", path.display()))
        .unwrap_or_default()
}
