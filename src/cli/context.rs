//! Opening the store and the master key for a command.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::CliError;
use crate::config::Settings;
use crate::crypto::{Cipher, CryptoError, KeyLocation, MasterKey, locate_master_key};
use crate::store::{Store, StoreError, meta};

/// A master key file this process generated and has not announced yet.
static CREATED_KEY: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Takes the path of the master key file this process generated, if it did and nobody has
/// announced it yet (`serve` logs it at once; other commands report it when they end).
pub fn created_key_file() -> Option<PathBuf> {
    CREATED_KEY.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// What to tell the operator about a generated master key file.
pub fn created_key_notice(path: &Path) -> String {
    format!(
        "created a new master key file {} (mode 0600); back it up: without it the stored secrets cannot be read",
        path.display()
    )
}

/// Opens the store named by the settings, creating and migrating it when needed: only for
/// `serve` and the commands that add something.
pub async fn create_store(settings: &Settings) -> Result<Store, CliError> {
    let url = settings.database_url.clone();
    blocking_open(move || Store::open(&url)).await
}

/// Opens the existing, migrated store named by the settings; never creates or migrates one
/// (see [`Store::open_existing`]): for the commands that read or change what is there.
pub async fn open_store(settings: &Settings) -> Result<Store, CliError> {
    let url = settings.database_url.clone();
    blocking_open(move || Store::open_existing(&url)).await
}

/// Opens the existing store named by the settings as it is, an older schema included, without
/// migrating it (see [`Store::open_for_copy`]): for `backup`.
pub async fn open_store_for_copy(settings: &Settings) -> Result<Store, CliError> {
    let url = settings.database_url.clone();
    blocking_open(move || Store::open_for_copy(&url)).await
}

async fn blocking_open(open: impl FnOnce() -> Result<Store, StoreError> + Send + 'static) -> Result<Store, CliError> {
    let store = tokio::task::spawn_blocking(open)
        .await
        .map_err(|err| CliError::Failed(format!("opening the store failed: {err}")))??;
    Ok(store)
}

/// Whether [`open_cipher`] may generate the default master key file when there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCreation {
    /// `serve` and the adding commands: a new SQLite store gets its key file.
    Allowed,
    /// Every other command: a missing key is an error.
    Forbidden,
}

/// Loads the master key and checks it against the database.
///
/// With the SQLite default and no key anywhere, a key file is created beside the database
/// (mode 0600) — but only while the database holds no sealed secret; a database sealed with
/// a key that has gone missing is an error, never a silent new key. The new file is
/// recorded for [`created_key_file`], so that the command announces it exactly once.
///
/// With [`KeyCreation::Forbidden`] a missing key file is an error, whatever the database holds.
pub async fn open_cipher(settings: &Settings, store: &Store, creation: KeyCreation) -> Result<Cipher, CliError> {
    let credentials_directory = std::env::var_os("CREDENTIALS_DIRECTORY");
    let location = locate_master_key(
        settings.master_key_file.as_deref(),
        credentials_directory.as_deref().map(Path::new),
        settings.database_url.default_master_key_file(),
    )?;
    let sealed_with = store.run(meta::sealing_key_id).await?;
    let key = match (&location, sealed_with) {
        (KeyLocation::BesideDatabase(path), None) if !path.exists() && creation == KeyCreation::Allowed => {
            let key = MasterKey::create(path)?;
            *CREATED_KEY.lock().unwrap_or_else(PoisonError::into_inner) = Some(path.clone());
            key
        }
        (KeyLocation::BesideDatabase(path), Some(expected)) if !path.exists() => {
            return Err(CryptoError::KeyFileMissing { path: path.clone(), expected }.into());
        }
        _ => MasterKey::read(location.path())?,
    };
    let retired =
        settings.retired_master_key_files.iter().map(|path| MasterKey::read(path)).collect::<Result<Vec<_>, _>>()?;
    let cipher = Cipher::new(&key).with_retired(&retired);
    let check = Cipher::new(&key).with_retired(&retired);
    store.run(move |conn| meta::verify_or_record_key(conn, &check)).await.map_err(|err| match err {
        StoreError::Crypto(crypto) => CliError::from(crypto),
        other => CliError::from(other),
    })?;
    Ok(cipher)
}
