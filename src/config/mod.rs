//! Settings from flags, environment (`TOKENWARDEN_*`), an optional TOML file and defaults,
//! in that order of precedence.
//!
//! Every value is validated here, before anything starts, and every error names the key
//! and where the bad value came from (a flag, a variable or a file), so an operator knows
//! exactly what to fix.

mod database_url;
mod duration;
mod file;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use database_url::{DEFAULT_KEY_FILE_NAME, DatabaseUrl, InvalidDatabaseUrl};
pub use duration::{HumanDuration, InvalidDuration};
use file::{FileConfig, FileMaintenance, FileOauth, FilePolicy, FileScheduler};

/// Default database when nothing else is configured.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://tokenwarden.db";
/// Default listen address of the API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Longest lifetime GitLab accepts for an access token.
pub const MAX_GITLAB_LIFETIME: HumanDuration = HumanDuration::days(365);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for journald and log shippers.
    Json,
}

/// Rotation policy defaults applied to tokens that do not override them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyDefaults {
    /// Expiry requested when a GitLab access token is rotated.
    pub gitlab_lifetime: HumanDuration,
    /// Minimum margin before expiry for GitLab access tokens.
    pub gitlab_rotate_before: HumanDuration,
    /// Minimum margin before expiry for OAuth access tokens.
    pub oauth_rotate_before: HumanDuration,
    /// Rotate when this fraction of the lifetime has passed.
    pub rotate_at_fraction: f64,
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        Self {
            gitlab_lifetime: HumanDuration::days(30),
            gitlab_rotate_before: HumanDuration::days(7),
            oauth_rotate_before: HumanDuration::minutes(5),
            rotate_at_fraction: 0.67,
        }
    }
}

/// Scheduler tunables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    /// Rotations in flight at once, overall.
    pub max_concurrency: usize,
    /// Rotations in flight at once against one provider.
    pub provider_concurrency: usize,
    /// Timeout of one provider HTTP request.
    pub provider_timeout: HumanDuration,
    /// Ceiling of the first retry's wait after a transient failure.
    pub retry_base: HumanDuration,
    /// Longest wait between retries.
    pub retry_max: HumanDuration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            provider_concurrency: 8,
            provider_timeout: HumanDuration::new(std::time::Duration::from_secs(30)),
            retry_base: HumanDuration::new(std::time::Duration::from_secs(10)),
            retry_max: HumanDuration::minutes(60),
        }
    }
}

/// How OAuth answers are read (`[oauth]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OauthConfig {
    /// Access-token lifetime assumed when a refresh answer has no `expires_in`.
    pub assumed_lifetime: HumanDuration,
    /// How long a consent link (`token authorize`, `POST /v1/authorizations`) stays usable.
    pub authorization_timeout: HumanDuration,
}

impl Default for OauthConfig {
    fn default() -> Self {
        Self { assumed_lifetime: HumanDuration::minutes(60), authorization_timeout: HumanDuration::minutes(10) }
    }
}

/// Cron expressions (six fields, with seconds) for periodic maintenance jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceConfig {
    /// The sweep that resolves stuck leases and marks expired tokens.
    pub sweep: String,
    /// The validation sweep that asks GitLab whether each access token still works.
    pub validate: String,
    /// Pruning of old audit rows.
    pub prune: String,
    /// Refreshing the gauges `/metrics` exports.
    pub metrics: String,
    /// How long audit rows are kept.
    pub audit_retention: HumanDuration,
    /// How long delivered webhook deliveries (and their recorded attempts) are kept.
    pub outbox_retention: HumanDuration,
}

/// Default sweep schedule: every minute.
pub const DEFAULT_SWEEP_CRON: &str = "0 * * * * *";
/// Default validation schedule: every hour.
pub const DEFAULT_VALIDATE_CRON: &str = "0 17 * * * *";
/// Default pruning schedule: daily at 03:30 UTC.
pub const DEFAULT_PRUNE_CRON: &str = "0 30 3 * * *";
/// Default metrics refresh: every minute (a light read of name, state and expiry).
pub const DEFAULT_METRICS_CRON: &str = "30 * * * * *";

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            sweep: DEFAULT_SWEEP_CRON.to_owned(),
            validate: DEFAULT_VALIDATE_CRON.to_owned(),
            prune: DEFAULT_PRUNE_CRON.to_owned(),
            metrics: DEFAULT_METRICS_CRON.to_owned(),
            audit_retention: HumanDuration::days(365),
            outbox_retention: HumanDuration::days(7),
        }
    }
}

/// Fully resolved and validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the store lives.
    pub database_url: DatabaseUrl,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// An explicitly configured master key file, if any.
    pub master_key_file: Option<PathBuf>,
    /// Master keys that only open values sealed before a key rotation (never seal).
    pub retired_master_key_files: Vec<PathBuf>,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Rotation policy defaults.
    pub policy: PolicyDefaults,
    /// Scheduler tunables.
    pub scheduler: SchedulerConfig,
    /// Periodic maintenance schedules.
    pub maintenance: MaintenanceConfig,
    /// How OAuth answers are read.
    pub oauth: OauthConfig,
    /// The API's certificate and key when it serves HTTPS.
    pub tls: Option<TlsFiles>,
    /// Whether plain HTTP may be served on an address outside loopback (behind a proxy that
    /// terminates TLS).
    pub allow_plaintext: bool,
    /// The address users' browsers reach tokenwarden at, without a trailing slash.
    pub public_url: String,
}

impl Settings {
    /// The OAuth redirect URI every authorisation uses: `<public_url>/oauth/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.public_url)
    }
}

/// Where the API's certificate chain and private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Raw values given as command-line flags (the highest precedence).
#[derive(Debug, Clone, Default)]
pub struct FlagValues {
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--database-url`
    pub database_url: Option<String>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--master-key-file`
    pub master_key_file: Option<PathBuf>,
    /// `--log-format`
    pub log_format: Option<String>,
    /// `--tls-cert-file`
    pub tls_cert_file: Option<PathBuf>,
    /// `--tls-key-file`
    pub tls_key_file: Option<PathBuf>,
    /// `--allow-plaintext`
    pub allow_plaintext: bool,
    /// `--public-url`
    pub public_url: Option<String>,
}

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// A key in the TOML file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

/// A configuration problem that stops tokenwarden before it starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    UnreadableFile {
        /// The file named by `--config` or `TOKENWARDEN_CONFIG`.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a wrongly typed value.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// `line N, column M: ` and the parser's explanation, on one line and without the
        /// file's text (which may hold a password).
        message: String,
    },
    /// A value is present but invalid.
    #[error("invalid value for `{key}` in {origin}: {message}")]
    Invalid {
        /// The setting, e.g. `database_url` or `policy.gitlab_lifetime`.
        key: &'static str,
        /// Where the bad value came from.
        origin: Origin,
        /// What is wrong with it.
        message: String,
    },
}

/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "TOKENWARDEN_CONFIG";
/// Environment variable for the database URL.
pub const ENV_DATABASE_URL: &str = "TOKENWARDEN_DATABASE_URL";
/// Environment variable for the listen address.
pub const ENV_LISTEN: &str = "TOKENWARDEN_LISTEN";
/// Environment variable for the master key file.
pub const ENV_MASTER_KEY_FILE: &str = "TOKENWARDEN_MASTER_KEY_FILE";
/// Environment variable for the retired master key files (`:`-separated paths).
pub const ENV_RETIRED_MASTER_KEY_FILES: &str = "TOKENWARDEN_RETIRED_MASTER_KEY_FILES";
/// Environment variable for the log format.
pub const ENV_LOG_FORMAT: &str = "TOKENWARDEN_LOG_FORMAT";
/// Environment variable for the API's TLS certificate chain (PEM).
pub const ENV_TLS_CERT_FILE: &str = "TOKENWARDEN_TLS_CERT_FILE";
/// Environment variable for the API's TLS private key (PEM).
pub const ENV_TLS_KEY_FILE: &str = "TOKENWARDEN_TLS_KEY_FILE";
/// Environment variable allowing plain HTTP outside loopback (`true` or `false`).
pub const ENV_ALLOW_PLAINTEXT: &str = "TOKENWARDEN_ALLOW_PLAINTEXT";
/// Environment variable for the address users' browsers reach tokenwarden at.
pub const ENV_PUBLIC_URL: &str = "TOKENWARDEN_PUBLIC_URL";

/// HTTPS configured by half: `given` is set (in `origin`) but `missing` is not.
fn half_of_tls(given: &'static str, missing: &str, origin: Origin) -> ConfigError {
    ConfigError::Invalid { key: given, origin, message: format!("HTTPS needs {missing} too") }
}

/// Loads settings from the process environment and the given flags.
pub fn load(flags: &FlagValues) -> Result<Settings, ConfigError> {
    resolve(flags, &|name| std::env::var(name).ok())
}

/// Resolves settings with precedence flags > environment > file > defaults;
/// `env` looks up an environment variable (injectable for tests).
pub fn resolve(flags: &FlagValues, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let config_path = flags.config.clone().or_else(|| env(ENV_CONFIG).map(PathBuf::from));
    let file = match &config_path {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    let file_origin = || Origin::File(config_path.clone().unwrap_or_default());

    let pick = |flag: &Option<String>, flag_name: &'static str, var: &'static str, from_file: &Option<String>| {
        if let Some(value) = flag {
            return Some((value.clone(), Origin::Flag(flag_name)));
        }
        if let Some(value) = env(var) {
            return Some((value, Origin::Env(var)));
        }
        from_file.clone().map(|value| (value, file_origin()))
    };

    let (url_text, url_origin) = pick(&flags.database_url, "--database-url", ENV_DATABASE_URL, &file.database_url)
        .unwrap_or_else(|| (DEFAULT_DATABASE_URL.to_owned(), Origin::Default));
    let database_url = DatabaseUrl::parse(&url_text).map_err(|err| ConfigError::Invalid {
        key: "database_url",
        origin: url_origin,
        message: err.to_string(),
    })?;

    let (listen_text, listen_origin) = pick(&flags.listen, "--listen", ENV_LISTEN, &file.listen)
        .unwrap_or_else(|| (DEFAULT_LISTEN.to_owned(), Origin::Default));
    let listen = listen_text.parse().map_err(|_| ConfigError::Invalid {
        key: "listen",
        origin: listen_origin,
        message: format!("'{listen_text}' is not an address such as 127.0.0.1:8787 or [::1]:8787"),
    })?;

    let key_flag = flags.master_key_file.as_ref().map(|p| p.display().to_string());
    let master_key_file = pick(&key_flag, "--master-key-file", ENV_MASTER_KEY_FILE, &file.master_key_file)
        .map(|(text, origin)| non_empty_path(&text, "master_key_file", origin))
        .transpose()?;

    let retired_master_key_files = match env(ENV_RETIRED_MASTER_KEY_FILES) {
        Some(text) => text
            .split(':')
            .map(|path| non_empty_path(path, "retired_master_key_files", Origin::Env(ENV_RETIRED_MASTER_KEY_FILES)))
            .collect::<Result<Vec<_>, _>>()?,
        None => (file.retired_master_key_files.clone().unwrap_or_default().iter())
            .map(|path| non_empty_path(path, "retired_master_key_files", file_origin()))
            .collect::<Result<Vec<_>, _>>()?,
    };

    let log_format = match pick(&flags.log_format, "--log-format", ENV_LOG_FORMAT, &file.log_format) {
        None => LogFormat::default(),
        Some((text, origin)) => parse_log_format(&text, origin)?,
    };

    let path_flag = |flag: &Option<PathBuf>| flag.as_ref().map(|p| p.display().to_string());
    let cert = pick(&path_flag(&flags.tls_cert_file), "--tls-cert-file", ENV_TLS_CERT_FILE, &file.tls_cert_file);
    let key = pick(&path_flag(&flags.tls_key_file), "--tls-key-file", ENV_TLS_KEY_FILE, &file.tls_key_file);
    let tls = match (cert, key) {
        (Some((cert, cert_origin)), Some((key, key_origin))) => Some(TlsFiles {
            cert: non_empty_path(&cert, "tls_cert_file", cert_origin)?,
            key: non_empty_path(&key, "tls_key_file", key_origin)?,
        }),
        (None, None) => None,
        (Some((_, origin)), None) => return Err(half_of_tls("tls_cert_file", "tls_key_file", origin)),
        (None, Some((_, origin))) => return Err(half_of_tls("tls_key_file", "tls_cert_file", origin)),
    };
    let plaintext_flag = flags.allow_plaintext.then(|| "true".to_owned());
    let allow_plaintext = match pick(
        &plaintext_flag,
        "--allow-plaintext",
        ENV_ALLOW_PLAINTEXT,
        &file.allow_plaintext.map(|b| b.to_string()),
    ) {
        None => false,
        Some((text, origin)) => text.parse::<bool>().map_err(|_| ConfigError::Invalid {
            key: "allow_plaintext",
            origin,
            message: format!("'{text}' is not true or false"),
        })?,
    };

    let public_url = match pick(&flags.public_url, "--public-url", ENV_PUBLIC_URL, &file.public_url) {
        Some((text, origin)) => parse_public_url(&text, origin)?,
        None => format!("{}://{listen}", if tls.is_some() { "https" } else { "http" }),
    };

    let policy = resolve_policy(&file.policy.unwrap_or_default(), &file_origin)?;
    let scheduler = resolve_scheduler(&file.scheduler.unwrap_or_default(), &file_origin)?;
    let maintenance = resolve_maintenance(&file.maintenance.unwrap_or_default(), &file_origin)?;
    let oauth = resolve_oauth(&file.oauth.unwrap_or_default(), &file_origin)?;
    Ok(Settings {
        database_url,
        listen,
        master_key_file,
        retired_master_key_files,
        log_format,
        policy,
        scheduler,
        maintenance,
        oauth,
        tls,
        allow_plaintext,
        public_url,
    })
}

/// Checks `public_url`: an absolute http(s) URL with a host and neither query nor fragment (a
/// path is kept, for a proxy that serves tokenwarden under a prefix); the trailing slash goes.
fn parse_public_url(text: &str, origin: Origin) -> Result<String, ConfigError> {
    let invalid =
        |message: &str| ConfigError::Invalid { key: "public_url", origin: origin.clone(), message: message.to_owned() };
    let parsed = url::Url::parse(text).map_err(|err| invalid(&format!("'{text}' is not a URL ({err})")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(&format!("'{text}' is not an http:// or https:// URL with a host")));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err(invalid(&format!("'{text}' must not carry a query, a fragment or a user")));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// Applies the `[oauth]` table over the defaults: a lifetime between 1 minute and 366 days.
fn resolve_oauth(file: &FileOauth, file_origin: &dyn Fn() -> Origin) -> Result<OauthConfig, ConfigError> {
    let key = "oauth.assumed_lifetime";
    let assumed_lifetime =
        file_duration(key, &file.assumed_lifetime, OauthConfig::default().assumed_lifetime, file_origin)?;
    if assumed_lifetime < HumanDuration::minutes(1) || assumed_lifetime > HumanDuration::days(366) {
        let message = "must be between 1m and 366d".to_owned();
        return Err(ConfigError::Invalid { key, origin: file_origin(), message });
    }
    let key = "oauth.authorization_timeout";
    let authorization_timeout =
        file_duration(key, &file.authorization_timeout, OauthConfig::default().authorization_timeout, file_origin)?;
    if authorization_timeout < HumanDuration::minutes(1) || authorization_timeout > HumanDuration::minutes(24 * 60) {
        let message = "must be between 1m and 24h".to_owned();
        return Err(ConfigError::Invalid { key, origin: file_origin(), message });
    }
    Ok(OauthConfig { assumed_lifetime, authorization_timeout })
}

/// Reads and parses the TOML file, rejecting unknown keys.
fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::UnreadableFile { path: path.to_owned(), source })?;
    file::parse(&text).map_err(|message| ConfigError::Syntax { path: path.to_owned(), message })
}

/// Rejects an empty path, which would otherwise silently mean "the current directory".
fn non_empty_path(text: &str, key: &'static str, origin: Origin) -> Result<PathBuf, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::Invalid { key, origin, message: "the path is empty".to_owned() });
    }
    Ok(PathBuf::from(text))
}

/// Parses `text` or `json`.
fn parse_log_format(text: &str, origin: Origin) -> Result<LogFormat, ConfigError> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(ConfigError::Invalid {
            key: "log_format",
            origin,
            message: format!("'{text}' is neither 'text' nor 'json'"),
        }),
    }
}

/// Applies the `[policy]` table over the defaults and checks the bounds.
fn resolve_policy(file: &FilePolicy, file_origin: &dyn Fn() -> Origin) -> Result<PolicyDefaults, ConfigError> {
    let defaults = PolicyDefaults::default();
    let duration = |key: &'static str, value: &Option<String>, default: HumanDuration| match value {
        None => Ok(default),
        Some(text) => text.parse::<HumanDuration>().map_err(|err| ConfigError::Invalid {
            key,
            origin: file_origin(),
            message: err.to_string(),
        }),
    };
    let policy = PolicyDefaults {
        gitlab_lifetime: duration("policy.gitlab_lifetime", &file.gitlab_lifetime, defaults.gitlab_lifetime)?,
        gitlab_rotate_before: duration(
            "policy.gitlab_rotate_before",
            &file.gitlab_rotate_before,
            defaults.gitlab_rotate_before,
        )?,
        oauth_rotate_before: duration(
            "policy.oauth_rotate_before",
            &file.oauth_rotate_before,
            defaults.oauth_rotate_before,
        )?,
        rotate_at_fraction: file.rotate_at_fraction.unwrap_or(defaults.rotate_at_fraction),
    };
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, origin: file_origin(), message };
    validate_lifetime(policy.gitlab_lifetime).map_err(|m| invalid("policy.gitlab_lifetime", m))?;
    validate_fraction(policy.rotate_at_fraction).map_err(|m| invalid("policy.rotate_at_fraction", m))?;
    if policy.gitlab_rotate_before >= policy.gitlab_lifetime {
        return Err(invalid(
            "policy.gitlab_rotate_before",
            format!(
                "{} is not shorter than policy.gitlab_lifetime ({})",
                policy.gitlab_rotate_before, policy.gitlab_lifetime
            ),
        ));
    }
    Ok(policy)
}

/// Parses an optional duration from the file, naming the key on error.
fn file_duration(
    key: &'static str,
    value: &Option<String>,
    default: HumanDuration,
    file_origin: &dyn Fn() -> Origin,
) -> Result<HumanDuration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => text.parse::<HumanDuration>().map_err(|err| ConfigError::Invalid {
            key,
            origin: file_origin(),
            message: err.to_string(),
        }),
    }
}

/// Applies the `[scheduler]` table over the defaults and checks the bounds.
fn resolve_scheduler(file: &FileScheduler, file_origin: &dyn Fn() -> Origin) -> Result<SchedulerConfig, ConfigError> {
    let defaults = SchedulerConfig::default();
    let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
        key,
        origin: file_origin(),
        message: message.to_owned(),
    };
    let config = SchedulerConfig {
        max_concurrency: file.max_concurrency.unwrap_or(defaults.max_concurrency),
        provider_concurrency: file.provider_concurrency.unwrap_or(defaults.provider_concurrency),
        provider_timeout: file_duration(
            "scheduler.provider_timeout",
            &file.provider_timeout,
            defaults.provider_timeout,
            file_origin,
        )?,
        retry_base: file_duration("scheduler.retry_base", &file.retry_base, defaults.retry_base, file_origin)?,
        retry_max: file_duration("scheduler.retry_max", &file.retry_max, defaults.retry_max, file_origin)?,
    };
    if config.max_concurrency == 0 || config.max_concurrency > 4096 {
        return Err(invalid("scheduler.max_concurrency", "must be between 1 and 4096"));
    }
    if config.provider_concurrency == 0 || config.provider_concurrency > config.max_concurrency {
        return Err(invalid("scheduler.provider_concurrency", "must be between 1 and scheduler.max_concurrency"));
    }
    if config.provider_timeout.get().is_zero() || config.provider_timeout > HumanDuration::minutes(10) {
        return Err(invalid("scheduler.provider_timeout", "must be between 1s and 10m"));
    }
    if config.retry_base.get().is_zero() || config.retry_base > config.retry_max {
        return Err(invalid("scheduler.retry_base", "must be at least 1s and at most scheduler.retry_max"));
    }
    Ok(config)
}

/// Applies the `[maintenance]` table and checks each cron expression parses.
fn resolve_maintenance(
    file: &FileMaintenance,
    file_origin: &dyn Fn() -> Origin,
) -> Result<MaintenanceConfig, ConfigError> {
    let cron = |key: &'static str, value: &Option<String>, default: &str| {
        let expression = value.clone().unwrap_or_else(|| default.to_owned());
        validate_cron(&expression).map_err(|message| ConfigError::Invalid { key, origin: file_origin(), message })?;
        Ok::<String, ConfigError>(expression)
    };
    let defaults = MaintenanceConfig::default();
    Ok(MaintenanceConfig {
        sweep: cron("maintenance.sweep", &file.sweep, DEFAULT_SWEEP_CRON)?,
        validate: cron("maintenance.validate", &file.validate, DEFAULT_VALIDATE_CRON)?,
        prune: cron("maintenance.prune", &file.prune, DEFAULT_PRUNE_CRON)?,
        metrics: cron("maintenance.metrics", &file.metrics, DEFAULT_METRICS_CRON)?,
        audit_retention: file_duration(
            "maintenance.audit_retention",
            &file.audit_retention,
            defaults.audit_retention,
            file_origin,
        )?,
        outbox_retention: file_duration(
            "maintenance.outbox_retention",
            &file.outbox_retention,
            defaults.outbox_retention,
            file_origin,
        )?,
    })
}

/// Checks a six-field cron expression (seconds first), as tokio-cron-scheduler reads it.
pub fn validate_cron(expression: &str) -> Result<(), String> {
    tokio_cron_scheduler::Job::new_async(expression, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|err| format!("'{expression}' is not a cron expression with seconds (e.g. \"0 * * * * *\"): {err}"))
}

/// Checks a GitLab token lifetime: at least one day (expiry is a date), at most 365 days.
pub fn validate_lifetime(lifetime: HumanDuration) -> Result<(), String> {
    if lifetime < HumanDuration::days(1) || lifetime > MAX_GITLAB_LIFETIME {
        return Err(format!("{lifetime} is outside 1d..365d (GitLab expiry is a date, at most 365 days ahead)"));
    }
    Ok(())
}

/// Checks a rotation fraction: greater than 0 and at most 1.
pub fn validate_fraction(fraction: f64) -> Result<(), String> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(format!("{fraction} is not in (0, 1]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
