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
    pub scheduler: Option<FileScheduler>,
    pub maintenance: Option<FileMaintenance>,
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

/// The `[scheduler]` table: concurrency, provider timeouts and retry backoff.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileScheduler {
    pub max_concurrency: Option<usize>,
    pub provider_concurrency: Option<usize>,
    pub provider_timeout: Option<String>,
    pub retry_base: Option<String>,
    pub retry_max: Option<String>,
}

/// The `[maintenance]` table: cron expressions (with seconds) for periodic jobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileMaintenance {
    pub sweep: Option<String>,
    pub validate: Option<String>,
    pub prune: Option<String>,
    pub metrics: Option<String>,
    pub audit_retention: Option<String>,
    pub outbox_retention: Option<String>,
}
