//! The shape of the optional TOML config file. Unknown keys are errors.

use serde::Deserialize;

/// Top-level keys of the config file; values are validated in [`super::resolve`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub master_key_file: Option<String>,
    pub log_format: Option<String>,
    pub policy: Option<FilePolicy>,
}

/// The `[policy]` table: defaults for tokens that do not override them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePolicy {
    pub gitlab_lifetime: Option<String>,
    pub gitlab_rotate_before: Option<String>,
    pub oauth_rotate_before: Option<String>,
    pub rotate_at_fraction: Option<f64>,
}
