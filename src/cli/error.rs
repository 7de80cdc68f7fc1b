//! How command failures map to exit codes.

use crate::config::ConfigError;
use crate::crypto::CryptoError;
use crate::store::StoreError;

/// A command failure, carrying the exit code class and a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or bad input (exit 2): the operator must change the command or its input.
    #[error("{0}")]
    Usage(String),
    /// The operation failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }

    /// The same error with `note` appended to its one-line message.
    pub fn with_note(self, note: &str) -> Self {
        match self {
            CliError::Usage(message) => CliError::Usage(format!("{message}; {note}")),
            CliError::Failed(message) => CliError::Failed(format!("{message}; {note}")),
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(err: ConfigError) -> Self {
        CliError::Usage(err.to_string())
    }
}

impl From<CryptoError> for CliError {
    fn from(err: CryptoError) -> Self {
        CliError::Failed(err.to_string())
    }
}

impl From<StoreError> for CliError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::AlreadyExists { .. }
            | StoreError::NotFound { .. }
            | StoreError::InvalidInput(_)
            | StoreError::NoStore { .. }
            | StoreError::StillGranted { .. } => CliError::Usage(err.to_string()),
            other => CliError::Failed(other.to_string()),
        }
    }
}
