//! Which store to use, parsed from `sqlite://PATH` or `postgres://…`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Name of the master key file created beside a SQLite database.
pub const DEFAULT_KEY_FILE_NAME: &str = "tokenwarden.key";

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An embedded SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL server, shared by several replicas.
    Postgres(String),
}

/// A database URL of neither accepted form. Its message shows the URL without a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{}' is not a database URL: use sqlite://PATH (e.g. sqlite://tokenwarden.db) or postgres://USER@HOST/DB",
    without_credentials(.0)
)]
pub struct InvalidDatabaseUrl(pub String);

/// `text` with whatever precedes an `@` after the scheme (user and password) replaced by `…`,
/// so that a mistyped URL is never echoed with its password.
fn without_credentials(text: &str) -> String {
    let Some(at) = text.rfind('@') else {
        return text.to_owned();
    };
    let start = text.find("://").map_or(0, |scheme_end| scheme_end + 3);
    if start > at {
        return text.to_owned();
    }
    format!("{}…{}", &text[..start], &text[at..])
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH` (relative or, with a third slash, absolute) or `postgres://…`.
    pub fn parse(text: &str) -> Result<Self, InvalidDatabaseUrl> {
        let invalid = || InvalidDatabaseUrl(text.to_owned());
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let parsed = url::Url::parse(text).map_err(|_| invalid())?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid());
            }
            return Ok(Self::Postgres(text.to_owned()));
        }
        Err(invalid())
    }

    /// The default master key file: `tokenwarden.key` beside a SQLite database;
    /// PostgreSQL has none (the key must be given explicitly).
    pub fn default_master_key_file(&self) -> Option<PathBuf> {
        match self {
            Self::Sqlite(path) => {
                let dir = path.parent().unwrap_or(Path::new(""));
                Some(dir.join(DEFAULT_KEY_FILE_NAME))
            }
            Self::Postgres(_) => None,
        }
    }
}

impl fmt::Display for DatabaseUrl {
    /// Prints the URL without any password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(text) => match url::Url::parse(text) {
                Ok(mut parsed) => {
                    if parsed.password().is_some() {
                        let _ = parsed.set_password(Some("REDACTED"));
                    }
                    f.write_str(parsed.as_str())
                }
                Err(_) => f.write_str("postgres://[unparseable]"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_relative_and_absolute() {
        assert_eq!(DatabaseUrl::parse("sqlite://tokenwarden.db"), Ok(DatabaseUrl::Sqlite("tokenwarden.db".into())));
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/tw/tw.db"),
            Ok(DatabaseUrl::Sqlite("/var/lib/tw/tw.db".into()))
        );
    }

    #[test]
    fn key_file_sits_beside_the_database() {
        let rel = DatabaseUrl::parse("sqlite://tokenwarden.db").unwrap();
        assert_eq!(rel.default_master_key_file(), Some(PathBuf::from("tokenwarden.key")));
        let abs = DatabaseUrl::parse("sqlite:///var/lib/tw/tw.db").unwrap();
        assert_eq!(abs.default_master_key_file(), Some(PathBuf::from("/var/lib/tw/tokenwarden.key")));
        let pg = DatabaseUrl::parse("postgres://postgres@127.0.0.1/test").unwrap();
        assert_eq!(pg.default_master_key_file(), None);
    }

    #[test]
    fn rejects_other_schemes_and_empty_paths() {
        for bad in ["", "tokenwarden.db", "sqlite://", "mysql://x/y", "postgres://", "http://x"] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rejected_url_is_echoed_without_its_password() {
        for bad in ["postgress://u:hunter2@db/tw", "postgres//u:hunter2@db/tw", "mysql://u:hunter2@db/tw"] {
            let message = DatabaseUrl::parse(bad).unwrap_err().to_string();
            assert!(!message.contains("hunter2"), "{message}");
            assert!(message.contains("@db/tw"), "the rest of the URL is shown: {message}");
        }
        let message = DatabaseUrl::parse("tokenwarden.db").unwrap_err().to_string();
        assert!(message.contains("'tokenwarden.db'"), "{message}");
    }

    #[test]
    fn display_hides_the_password() {
        let url = DatabaseUrl::parse("postgres://u:hunter2@db.internal/tw").unwrap();
        assert!(!url.to_string().contains("hunter2"));
    }
}
