//! The shape of the optional TOML config file. Unknown keys are errors.

use serde::Deserialize;

/// Parses the file's text. A syntax error, an unknown key or a wrongly typed value is
/// described on one line, `line N, column M: what`, without quoting the file: the line in
/// question may hold a password (say, a `database_url` under a mistyped key).
pub(super) fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|err| describe(text, &err))
}

/// One line for a TOML error: where it is, and the parser's message with quoted values hidden.
fn describe(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let message = hide_quoted_values(&message);
    let Some(span) = err.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    match key_at(text, line) {
        Some(key) if !message.contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(&key))) => {
            format!("line {line}, column {column}: `{key}`: {message}")
        }
        _ => format!("line {line}, column {column}: {message}"),
    }
}

/// The key assigned on line `line` (1-based), with its table, e.g. `policy.gitlab_lifetime`;
/// `None` unless the line is a plain `key = value`. Only the key is read, never the value.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let (key, _) = lines.get(line.checked_sub(1)?)?.split_once('=')?;
    let is_key_text = |part: &str| {
        !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
    };
    let key = key.trim();
    if !is_key_text(key) {
        return None;
    }
    let table = lines[..line - 1].iter().rev().map(|l| l.trim()).find_map(|l| {
        let inner = l.strip_prefix('[')?.split('#').next()?.trim().strip_suffix(']')?;
        is_key_text(inner.trim()).then(|| inner.trim().to_owned())
    });
    let key: String = key.split('.').map(str::trim).collect::<Vec<_>>().join(".");
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key,
    })
}

/// Replaces every double-quoted part of a parser message (serde quotes the offending string
/// value, e.g. `invalid type: string "…", expected f64`) with `"…"`; key names, which serde
/// writes between backticks, stay.
fn hide_quoted_values(message: &str) -> String {
    let mut shown = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        shown.push(c);
        if c != '"' {
            continue;
        }
        let mut escaped = false;
        for inner in chars.by_ref() {
            match inner {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => break,
                _ => escaped = false,
            }
        }
        shown.push_str("…\"");
    }
    shown
}

/// Top-level keys of the config file; values are validated in [`super::resolve`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub master_key_file: Option<String>,
    pub retired_master_key_files: Option<Vec<String>>,
    pub log_format: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub allow_plaintext: Option<bool>,
    pub public_url: Option<String>,
    pub policy: Option<FilePolicy>,
    pub scheduler: Option<FileScheduler>,
    pub maintenance: Option<FileMaintenance>,
    pub oauth: Option<FileOauth>,
}

/// The `[oauth]` table: how OAuth answers are read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileOauth {
    pub assumed_lifetime: Option<String>,
    pub authorization_timeout: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn error_for(text: &str) -> String {
        parse(text).map(|_| ()).expect_err("the text is refused")
    }

    #[test]
    fn an_unknown_key_is_located_by_line_and_column_on_one_line_without_its_value() {
        let text = "listen = \"127.0.0.1:8787\"\n\n  databse_url = \"postgres://u:PASSWORD@db/tw\"\n";
        let message = error_for(text);
        assert!(message.starts_with("line 3, column 3: unknown field `databse_url`"), "{message}");
        assert!(!message.contains("PASSWORD") && !message.contains('\n'), "{message}");
    }

    #[test]
    fn a_wrongly_typed_value_is_not_quoted() {
        let message = error_for("[policy]\nrotate_at_fraction = \"s3cr\\\"et-value\"\n");
        assert!(message.starts_with("line 2, column "), "{message}");
        assert!(message.contains("invalid type"), "{message}");
        assert!(!message.contains("s3cr") && !message.contains("et-value"), "{message}");
    }

    #[test]
    fn a_syntax_error_is_one_line_without_the_source_text() {
        for text in [
            "database_url = \"postgres://u:PASSWORD@db/tw\n",
            "[policy\ngitlab_lifetime = \"30d\"\nx = \"PASSWORD\"\n",
            "database_url = postgres://u:PASSWORD@db/tw\n",
            "database_url = \"a\"\ndatabase_url = \"PASSWORD\"\n",
        ] {
            let message = error_for(text);
            assert!(message.starts_with("line "), "{text}: {message}");
            assert!(!message.contains("PASSWORD") && !message.contains('\n'), "{text}: {message}");
        }
    }

    #[test]
    fn a_wrongly_typed_value_names_its_key_with_the_table() {
        let message = error_for("listen = 8787\n");
        assert_eq!(message, "line 1, column 10: `listen`: invalid type: integer `8787`, expected a string");
        let message = error_for("# tokenwarden\n[scheduler]\nmax_concurrency = \"many\"\n");
        assert!(message.starts_with("line 3, column 19: `scheduler.max_concurrency`: invalid type"), "{message}");
    }

    #[test]
    fn quoted_values_are_hidden_but_key_names_stay() {
        assert_eq!(
            hide_quoted_values("invalid type: string \"a\\\"b\", expected `f64` for key `policy`"),
            "invalid type: string \"…\", expected `f64` for key `policy`"
        );
        assert_eq!(hide_quoted_values("unterminated \"abc"), "unterminated \"…\"");
    }
}
