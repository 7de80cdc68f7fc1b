//! Encryption at rest and API-key hashing.
//!
//! Every secret tokenwarden stores (tokens, refresh and access tokens, client secrets,
//! webhook signing secrets) is sealed with AES-256-GCM under the master key. The associated
//! data binds each ciphertext to its table, row and field, so a ciphertext copied into
//! another row or column fails to open. Each ciphertext names the key that sealed it, so a
//! wrong master key is reported as such rather than as corruption.

mod api_key;
mod master_key;
mod seal;

pub use api_key::{ApiKey, ApiKeyHash, generate_webhook_secret};
pub use master_key::{KeyLocation, MasterKey, locate_master_key};
pub use seal::{Cipher, KeyId, SealContext};

use std::path::PathBuf;

/// A problem with the master key or with a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The master key file could not be read.
    #[error("cannot read master key file {path}: {source}")]
    UnreadableKey {
        /// The key file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The master key file exists but does not hold a key.
    #[error(
        "master key file {path} does not hold a key: expected 64 hexadecimal characters (e.g. from `openssl rand -hex 32`) or 32 raw bytes"
    )]
    MalformedKey {
        /// The key file.
        path: PathBuf,
    },
    /// The master key file could not be created.
    #[error("cannot create master key file {path}: {source}")]
    CannotCreateKey {
        /// The key file.
        path: PathBuf,
        /// Why it could not be created.
        source: std::io::Error,
    },
    /// No master key was configured and none may be generated (PostgreSQL).
    #[error(
        "no master key: with PostgreSQL, give --master-key-file (or TOKENWARDEN_MASTER_KEY_FILE) and share the same key with every replica"
    )]
    NoKeyConfigured,
    /// The database holds secrets but the key file beside it is missing.
    #[error(
        "the database holds secrets sealed with master key {expected}, but no key file exists at {path}; restore that key file or point --master-key-file at it"
    )]
    KeyFileMissing {
        /// Where the key was looked for.
        path: PathBuf,
        /// The id of the key that sealed the database.
        expected: KeyId,
    },
    /// The value was sealed with a different master key than the one loaded.
    #[error(
        "wrong master key: the stored secrets were sealed with key {sealed_with}, but the loaded key is {loaded}; point --master-key-file at the key this database was created with (while rotating the master key, list the old key in retired_master_key_files)"
    )]
    WrongKey {
        /// The key id recorded in the ciphertext.
        sealed_with: KeyId,
        /// The key id of the loaded master key.
        loaded: KeyId,
    },
    /// The ciphertext failed authentication: it was altered or moved from another row or field.
    #[error("sealed {field} of {table} row {row} failed authentication: it was altered or copied from another row")]
    Tampered {
        /// The table.
        table: &'static str,
        /// The row id.
        row: String,
        /// The column.
        field: &'static str,
    },
    /// The stored bytes are not a ciphertext in tokenwarden's format.
    #[error("sealed {field} of {table} row {row} is not in tokenwarden's sealed format")]
    Malformed {
        /// The table.
        table: &'static str,
        /// The row id.
        row: String,
        /// The column.
        field: &'static str,
    },
    /// AES-GCM refused to encrypt the value (it does so only past 64 GiB).
    #[error("cannot seal the {field} of {table} row {row}: the value is too long to encrypt")]
    CannotSeal {
        /// The table.
        table: &'static str,
        /// The row id.
        row: String,
        /// The column.
        field: &'static str,
    },
}
