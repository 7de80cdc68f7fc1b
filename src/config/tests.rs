//! Precedence and error paths of configuration loading.

use super::*;
use std::collections::HashMap;

fn env_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned()
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("tokenwarden.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn defaults_apply_when_nothing_is_given() {
    let settings = resolve(&FlagValues::default(), &env_from(&[])).unwrap();
    assert_eq!(settings.database_url, DatabaseUrl::Sqlite("tokenwarden.db".into()));
    assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(settings.master_key_file, None);
    assert_eq!(settings.policy, PolicyDefaults::default());
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "database_url = \"sqlite://file.db\"\nlisten = \"127.0.0.1:1001\"\nmaster_key_file = \"file.key\"\n",
    );
    let env = env_from(&[
        (ENV_CONFIG, path.to_str().unwrap()),
        (ENV_LISTEN, "127.0.0.1:1002"),
        (ENV_MASTER_KEY_FILE, "env.key"),
    ]);
    let flags = FlagValues { master_key_file: Some("flag.key".into()), ..FlagValues::default() };
    let settings = resolve(&flags, &env).unwrap();
    assert_eq!(settings.database_url, DatabaseUrl::Sqlite("file.db".into()), "file beats default");
    assert_eq!(settings.listen.to_string(), "127.0.0.1:1002", "environment beats file");
    assert_eq!(settings.master_key_file, Some(PathBuf::from("flag.key")), "flag beats environment");
}

#[test]
fn config_flag_beats_config_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "listen = \"127.0.0.1:1003\"\n");
    let env = env_from(&[(ENV_CONFIG, "/nonexistent/tokenwarden.toml")]);
    let flags = FlagValues { config: Some(path), ..FlagValues::default() };
    assert_eq!(resolve(&flags, &env).unwrap().listen.to_string(), "127.0.0.1:1003");
}

#[test]
fn policy_table_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "[policy]\ngitlab_lifetime = \"90d\"\ngitlab_rotate_before = \"10d\"\noauth_rotate_before = \"10m\"\nrotate_at_fraction = 0.5\n",
    );
    let flags = FlagValues { config: Some(path), ..FlagValues::default() };
    let policy = resolve(&flags, &env_from(&[])).unwrap().policy;
    assert_eq!(policy.gitlab_lifetime, HumanDuration::days(90));
    assert_eq!(policy.gitlab_rotate_before, HumanDuration::days(10));
    assert_eq!(policy.oauth_rotate_before, HumanDuration::minutes(10));
    assert_eq!(policy.rotate_at_fraction, 0.5);
}

fn error_for_file(text: &str) -> (String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, text);
    let flags = FlagValues { config: Some(path.clone()), ..FlagValues::default() };
    (resolve(&flags, &env_from(&[])).unwrap_err().to_string(), path)
}

#[test]
fn unknown_key_is_named_with_the_file() {
    let (message, path) = error_for_file("databse_url = \"sqlite://x.db\"\n");
    assert!(message.contains("databse_url"), "{message}");
    assert!(message.contains(path.to_str().unwrap()), "{message}");
}

#[test]
fn unknown_key_in_policy_table_is_named() {
    let (message, _) = error_for_file("[policy]\nlifetime = \"30d\"\n");
    assert!(message.contains("lifetime"), "{message}");
}

#[test]
fn bad_duration_is_named_with_key_and_file() {
    let (message, path) = error_for_file("[policy]\ngitlab_lifetime = \"30 days\"\n");
    assert!(message.contains("policy.gitlab_lifetime"), "{message}");
    assert!(message.contains("30 days"), "{message}");
    assert!(message.contains(path.to_str().unwrap()), "{message}");
}

#[test]
fn lifetime_above_gitlab_maximum_is_rejected() {
    let (message, _) = error_for_file("[policy]\ngitlab_lifetime = \"400d\"\n");
    assert!(message.contains("policy.gitlab_lifetime"), "{message}");
    assert!(message.contains("365d"), "{message}");
}

#[test]
fn bad_fraction_is_rejected() {
    let (message, _) = error_for_file("[policy]\nrotate_at_fraction = 1.5\n");
    assert!(message.contains("policy.rotate_at_fraction"), "{message}");
}

#[test]
fn bad_database_url_in_file_is_named() {
    let (message, path) = error_for_file("database_url = \"mysql://db/x\"\n");
    assert!(message.contains("database_url"), "{message}");
    assert!(message.contains("mysql://db/x"), "{message}");
    assert!(message.contains(path.to_str().unwrap()), "{message}");
}

#[test]
fn bad_database_url_in_environment_names_the_variable() {
    let err = resolve(&FlagValues::default(), &env_from(&[(ENV_DATABASE_URL, "nope")])).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(ENV_DATABASE_URL), "{message}");
}

#[test]
fn bad_listen_flag_names_the_flag() {
    let flags = FlagValues { listen: Some("localhost".into()), ..FlagValues::default() };
    let message = resolve(&flags, &env_from(&[])).unwrap_err().to_string();
    assert!(message.contains("--listen"), "{message}");
}

#[test]
fn tls_files_come_as_a_pair_and_allow_plaintext_is_true_or_false() {
    let both = env_from(&[(ENV_TLS_CERT_FILE, "/etc/tw/cert.pem"), (ENV_TLS_KEY_FILE, "/etc/tw/key.pem")]);
    let settings = resolve(&FlagValues::default(), &both).unwrap();
    let tls = settings.tls.unwrap();
    assert_eq!((tls.cert.to_str(), tls.key.to_str()), (Some("/etc/tw/cert.pem"), Some("/etc/tw/key.pem")));
    assert!(!settings.allow_plaintext);
    let message = resolve(&FlagValues::default(), &env_from(&[(ENV_TLS_KEY_FILE, "/k.pem")])).unwrap_err().to_string();
    assert!(message.contains(ENV_TLS_KEY_FILE) && message.contains("needs tls_cert_file too"), "{message}");
    let message = resolve(&FlagValues::default(), &env_from(&[(ENV_ALLOW_PLAINTEXT, "yes")])).unwrap_err().to_string();
    assert!(message.contains(ENV_ALLOW_PLAINTEXT) && message.contains("not true or false"), "{message}");
    let flags = FlagValues { allow_plaintext: true, ..FlagValues::default() };
    assert!(resolve(&flags, &env_from(&[(ENV_ALLOW_PLAINTEXT, "false")])).unwrap().allow_plaintext, "the flag wins");
}

#[test]
fn wrongly_typed_value_is_a_syntax_error_naming_the_key() {
    let (message, _) = error_for_file("listen = 8787\n");
    assert!(message.contains("listen"), "{message}");
}

#[test]
fn unreadable_file_is_named() {
    let flags = FlagValues { config: Some("/nonexistent/dir/tokenwarden.toml".into()), ..FlagValues::default() };
    let err = resolve(&flags, &env_from(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::UnreadableFile { .. }));
    assert!(err.to_string().contains("/nonexistent/dir/tokenwarden.toml"));
}

#[test]
fn bad_log_format_is_named() {
    let message = resolve(&FlagValues::default(), &env_from(&[(ENV_LOG_FORMAT, "xml")])).unwrap_err().to_string();
    assert!(message.contains("log_format") && message.contains(ENV_LOG_FORMAT), "{message}");
}

#[test]
fn scheduler_and_maintenance_tables_override_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "[scheduler]\nmax_concurrency = 16\nprovider_concurrency = 4\nprovider_timeout = \"5s\"\nretry_base = \"2s\"\nretry_max = \"10m\"\n[maintenance]\nsweep = \"*/10 * * * * *\"\n",
    );
    let flags = FlagValues { config: Some(path), ..FlagValues::default() };
    let settings = resolve(&flags, &env_from(&[])).unwrap();
    assert_eq!(settings.scheduler.max_concurrency, 16);
    assert_eq!(settings.scheduler.provider_concurrency, 4);
    assert_eq!(settings.scheduler.provider_timeout, "5s".parse().unwrap());
    assert_eq!(settings.maintenance.sweep, "*/10 * * * * *");
}

#[test]
fn delivered_webhooks_are_kept_seven_days_unless_configured() {
    let settings = resolve(&FlagValues::default(), &env_from(&[])).unwrap();
    assert_eq!(settings.maintenance.outbox_retention, HumanDuration::days(7));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[maintenance]\noutbox_retention = \"36h\"\n");
    let flags = FlagValues { config: Some(path), ..FlagValues::default() };
    let settings = resolve(&flags, &env_from(&[])).unwrap();
    assert_eq!(settings.maintenance.outbox_retention, "36h".parse().unwrap());
    assert_eq!(settings.maintenance.audit_retention, HumanDuration::days(365), "the audit retention is separate");
}

#[test]
fn bad_cron_and_bad_limits_are_named() {
    let (message, _) = error_for_file("[maintenance]\nsweep = \"every minute\"\n");
    assert!(message.contains("maintenance.sweep"), "{message}");
    let (message, _) = error_for_file("[maintenance]\nvalidate = \"hourly\"\n");
    assert!(message.contains("maintenance.validate"), "{message}");
    let (message, _) = error_for_file("[maintenance]\naudit_retention = \"a year\"\n");
    assert!(message.contains("maintenance.audit_retention"), "{message}");
    let (message, _) = error_for_file("[maintenance]\noutbox_retention = \"a week\"\n");
    assert!(message.contains("maintenance.outbox_retention") && message.contains("a week"), "{message}");
    let (message, _) = error_for_file("[scheduler]\nprovider_concurrency = 0\n");
    assert!(message.contains("scheduler.provider_concurrency"), "{message}");
    let (message, _) = error_for_file("[scheduler]\nprovider_timeout = \"soon\"\n");
    assert!(message.contains("scheduler.provider_timeout"), "{message}");
}

#[test]
fn oauth_assumed_lifetime_defaults_to_an_hour_and_is_read_from_the_oauth_table() {
    let settings = resolve(&FlagValues::default(), &env_from(&[])).unwrap();
    assert_eq!(settings.oauth.assumed_lifetime, HumanDuration::minutes(60));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[oauth]\nassumed_lifetime = \"15m\"\n");
    let flags = FlagValues { config: Some(path), ..FlagValues::default() };
    assert_eq!(resolve(&flags, &env_from(&[])).unwrap().oauth.assumed_lifetime, HumanDuration::minutes(15));
}

#[test]
fn an_oauth_assumed_lifetime_out_of_bounds_is_named() {
    for bad in ["0s", "30s", "400d", "soon"] {
        let (message, _) = error_for_file(&format!("[oauth]\nassumed_lifetime = \"{bad}\"\n"));
        assert!(message.contains("oauth.assumed_lifetime"), "{bad}: {message}");
    }
}
