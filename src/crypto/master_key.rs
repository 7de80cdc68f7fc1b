//! Finding, reading and creating the master key.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretBox};

use super::CryptoError;

/// Length of the AES-256 master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;
/// File name of the master key inside `$CREDENTIALS_DIRECTORY` under systemd.
pub const SYSTEMD_CREDENTIAL_NAME: &str = "master-key";

/// The 256-bit master key; never printed.
pub struct MasterKey(SecretBox<[u8; MASTER_KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; MASTER_KEY_LEN];
        rand::fill(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The raw key bytes.
    pub(super) fn bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        self.0.expose_secret()
    }

    /// Reads a key file holding 64 hexadecimal characters (surrounding white space
    /// allowed) or exactly 32 raw bytes.
    pub fn read(path: &Path) -> Result<Self, CryptoError> {
        let contents =
            std::fs::read(path).map_err(|source| CryptoError::UnreadableKey { path: path.to_owned(), source })?;
        let malformed = || CryptoError::MalformedKey { path: path.to_owned() };
        if let Ok(raw) = <[u8; MASTER_KEY_LEN]>::try_from(contents.as_slice()) {
            return Ok(Self::from_bytes(raw));
        }
        let text = std::str::from_utf8(&contents).map_err(|_| malformed())?.trim();
        let mut bytes = [0u8; MASTER_KEY_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| malformed())?;
        Ok(Self::from_bytes(bytes))
    }

    /// Generates a key and writes it, in hexadecimal, to a new file with mode 0600.
    /// Fails if the file already exists, so an existing key is never overwritten.
    pub fn create(path: &Path) -> Result<Self, CryptoError> {
        let key = Self::generate();
        let cannot_create = |source| CryptoError::CannotCreateKey { path: path.to_owned(), source };
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(cannot_create)?;
        let mut encoded = hex::encode(key.bytes());
        encoded.push('\n');
        let written = file.write_all(encoded.as_bytes()).and_then(|()| file.sync_all());
        if let Err(source) = written {
            let _ = std::fs::remove_file(path);
            return Err(cannot_create(source));
        }
        Ok(key)
    }
}

/// Where the master key comes from, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// Given by `--master-key-file`, `TOKENWARDEN_MASTER_KEY_FILE` or `master_key_file`.
    Configured(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/master-key`, passed by systemd's `LoadCredential=`.
    SystemdCredential(PathBuf),
    /// `tokenwarden.key` beside the SQLite database; may be generated on first use.
    BesideDatabase(PathBuf),
}

impl KeyLocation {
    /// The file this location points at.
    pub fn path(&self) -> &Path {
        match self {
            Self::Configured(path) | Self::SystemdCredential(path) | Self::BesideDatabase(path) => path,
        }
    }
}

/// Chooses where to read the master key: a configured file first, then a systemd
/// credential if present, then the default beside a SQLite database.
pub fn locate_master_key(
    configured: Option<&Path>,
    credentials_directory: Option<&Path>,
    beside_database: Option<PathBuf>,
) -> Result<KeyLocation, CryptoError> {
    if let Some(path) = configured {
        return Ok(KeyLocation::Configured(path.to_owned()));
    }
    if let Some(dir) = credentials_directory {
        let credential = dir.join(SYSTEMD_CREDENTIAL_NAME);
        if credential.exists() {
            return Ok(KeyLocation::SystemdCredential(credential));
        }
    }
    beside_database.map(KeyLocation::BesideDatabase).ok_or(CryptoError::NoKeyConfigured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_key_file_has_mode_0600_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenwarden.key");
        let created = MasterKey::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(MasterKey::read(&path).unwrap().bytes(), created.bytes());
    }

    #[test]
    fn create_never_overwrites_an_existing_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenwarden.key");
        std::fs::write(&path, "keep me").unwrap();
        assert!(matches!(MasterKey::create(&path), Err(CryptoError::CannotCreateKey { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[test]
    fn reads_raw_and_hex_keys_and_rejects_others() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        assert_eq!(MasterKey::read(&raw).unwrap().bytes(), &[7u8; 32]);
        let hexed = dir.path().join("hex");
        std::fs::write(&hexed, format!("  {}\n", "07".repeat(32))).unwrap();
        assert_eq!(MasterKey::read(&hexed).unwrap().bytes(), &[7u8; 32]);
        let short = dir.path().join("short");
        std::fs::write(&short, "abcd").unwrap();
        let err = MasterKey::read(&short).unwrap_err();
        assert!(err.to_string().contains("64 hexadecimal"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = MasterKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{key:?}"), "MasterKey([REDACTED])");
    }

    #[test]
    fn location_prefers_configured_then_credential_then_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SYSTEMD_CREDENTIAL_NAME), "x").unwrap();
        let configured = PathBuf::from("/etc/tw.key");
        let beside = Some(PathBuf::from("tokenwarden.key"));
        assert_eq!(
            locate_master_key(Some(&configured), Some(dir.path()), beside.clone()).unwrap(),
            KeyLocation::Configured(configured)
        );
        assert_eq!(
            locate_master_key(None, Some(dir.path()), beside.clone()).unwrap(),
            KeyLocation::SystemdCredential(dir.path().join(SYSTEMD_CREDENTIAL_NAME))
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            locate_master_key(None, Some(empty.path()), beside.clone()).unwrap(),
            KeyLocation::BesideDatabase("tokenwarden.key".into())
        );
        assert!(matches!(locate_master_key(None, None, None), Err(CryptoError::NoKeyConfigured)));
    }
}
