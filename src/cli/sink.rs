//! `tokenwarden sink add|list|show|remove`: where a token's current secret is delivered after
//! every rotation (see README, "Sinks").

use chrono::Utc;

use super::args::{SinkAddArgs, SinkCommand, SinkKind};
use super::context::open_store;
use super::output::{print_fields, print_json, print_table, text, time};
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::domain::{ProviderKind, ProviderName, TokenName};
use crate::sinks::file::{FileFormat, FileSettings};
use crate::sinks::gitlab_variable::{self, Namespace, VariableSettings};
use crate::store::models::utc;
use crate::store::sinks::{self, Sink};

/// Runs a `sink` subcommand.
pub async fn run(settings: Settings, command: SinkCommand) -> Result<(), CliError> {
    match command {
        SinkCommand::Add(args) => add(settings, *args).await,
        SinkCommand::List(output) => {
            let store = open_store(&settings).await?;
            let all = store.run(sinks::list).await?;
            if output.json {
                return print_json(&all);
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|sink| {
                    vec![
                        sink.row.name.clone(),
                        sink.token.clone(),
                        sink.row.kind.clone(),
                        sink.row.state.clone(),
                        held(sink),
                        text(sink.row.last_error.as_deref()),
                    ]
                })
                .collect();
            print_table(&["NAME", "TOKEN", "KIND", "STATE", "HOLDS", "LAST ERROR"], &rows);
            Ok(())
        }
        SinkCommand::Show { name, output } => {
            let store = open_store(&settings).await?;
            let sink = store.run(move |conn| sinks::find(conn, name.as_str())).await?;
            if output.json {
                return print_json(&sink);
            }
            let mut fields = vec![
                ("name", sink.row.name.clone()),
                ("token", sink.token.clone()),
                ("kind", sink.row.kind.clone()),
                ("state", sink.row.state.clone()),
                ("holds", held(&sink)),
                ("delivered at", time(sink.row.delivered_at.map(utc))),
                ("failed attempts", sink.row.attempts.to_string()),
                ("last error", text(sink.row.last_error.as_deref())),
            ];
            if let Some(settings) = sink.settings.as_object() {
                for (key, value) in settings {
                    fields.push((key.as_str(), value.to_string()));
                }
            }
            print_fields(&fields);
            Ok(())
        }
        SinkCommand::Remove { name } => {
            let store = open_store(&settings).await?;
            let shown = name.clone();
            store.run(move |conn| sinks::remove(conn, name.as_str(), CLI_ACTOR, Utc::now())).await?;
            eprintln!("removed sink '{shown}' (the file it wrote stays)");
            Ok(())
        }
    }
}

/// "version N of M", or what is pending.
fn held(sink: &Sink) -> String {
    match sink.row.delivered_version {
        Some(version) => format!("version {version} of {}", sink.token_version),
        None => format!("nothing yet (version {} pending)", sink.token_version),
    }
}

async fn add(settings: Settings, args: SinkAddArgs) -> Result<(), CliError> {
    let (kind, settings_json, place) = match args.kind {
        SinkKind::File => {
            let file = file_settings(&args)?;
            let place = file.path.display().to_string();
            (crate::sinks::FILE, to_json(&file)?, place)
        }
        SinkKind::GitlabCiVariable => {
            let variable = variable_settings(&args)?;
            let place = format!("CI/CD variable {} of {}", variable.key, variable.namespace.describe());
            (crate::sinks::GITLAB_CI_VARIABLE, to_json(&variable)?, place)
        }
    };
    let store = open_store(&settings).await?;
    if let Some(manager) = args.manager.clone() {
        let provider = args.provider.clone();
        store.run(move |conn| check_manager(conn, &manager, provider.as_ref())).await?;
    }
    let (name, token) = (args.name.clone(), args.token.clone());
    let sink = store
        .run(move |conn| sinks::add(conn, name.as_str(), &token, kind, &settings_json, CLI_ACTOR, Utc::now()))
        .await?;
    if args.output.json {
        return print_json(&sink);
    }
    eprintln!(
        "added sink '{}': token '{}' version {} will be written to {place} by `tokenwarden serve`, and every new version after it",
        sink.row.name, sink.token, sink.token_version,
    );
    Ok(())
}

fn to_json(settings: &impl serde::Serialize) -> Result<serde_json::Value, CliError> {
    serde_json::to_value(settings).map_err(|err| CliError::Failed(err.to_string()))
}

/// A manager must exist, belong to the sink's provider, and be a GitLab token.
fn check_manager(
    conn: &mut crate::store::DbConnection,
    manager: &TokenName,
    provider: Option<&ProviderName>,
) -> Result<(), crate::store::StoreError> {
    let token = crate::store::tokens::find(conn, manager)?;
    let invalid = |message: String| Err(crate::store::StoreError::InvalidInput(message));
    if provider.is_some_and(|provider| *provider != token.provider) {
        return invalid(format!(
            "--manager {manager} belongs to provider '{}', not to --provider {}",
            token.provider,
            provider.map(ProviderName::as_str).unwrap_or_default()
        ));
    }
    if token.kind.provider_kind() != ProviderKind::Gitlab {
        return invalid(format!(
            "--manager {manager} is a {} token; a GitLab token or grant writes CI/CD variables",
            token.kind
        ));
    }
    Ok(())
}

/// Checks the CI/CD variable flags: a provider, a manager, exactly one of project and group, a
/// valid key; no file flags.
fn variable_settings(args: &SinkAddArgs) -> Result<VariableSettings, CliError> {
    let usage = |message: &str| CliError::Usage(message.to_owned());
    if args.path.is_some() || !args.exec.is_empty() {
        return Err(usage("--path and --exec are for file sinks; a gitlab-ci-variable sink takes --key"));
    }
    let provider = args.provider.clone().ok_or_else(|| usage("a gitlab-ci-variable sink needs --provider"))?;
    let manager = args.manager.clone().ok_or_else(|| {
        usage("a gitlab-ci-variable sink needs --manager TOKEN (a Maintainer's or Owner's token with the api scope)")
    })?;
    let namespace = match (&args.project, &args.group) {
        (Some(project), None) => Namespace::Project(project.clone()),
        (None, Some(group)) => Namespace::Group(group.clone()),
        _ => return Err(usage("a gitlab-ci-variable sink needs --project ID or --group ID")),
    };
    let key = args.key.clone().ok_or_else(|| usage("a gitlab-ci-variable sink needs --key"))?;
    gitlab_variable::check_key(&key).map_err(CliError::Usage)?;
    if args.environment_scope.is_empty() || args.environment_scope.chars().any(char::is_whitespace) {
        return Err(usage("--environment-scope must be '*' or an environment name or pattern"));
    }
    Ok(VariableSettings {
        provider: provider.to_string(),
        namespace,
        key,
        manager: manager.to_string(),
        environment_scope: args.environment_scope.clone(),
        protected: args.protected,
    })
}

/// Checks the flags: an existing directory, an absolute path, an octal mode without bits for
/// others, an env variable name, a program.
fn file_settings(args: &SinkAddArgs) -> Result<FileSettings, CliError> {
    let usage = |message: String| Err(CliError::Usage(message));
    if args.provider.is_some()
        || args.manager.is_some()
        || args.key.is_some()
        || args.project.is_some()
        || args.group.is_some()
    {
        return usage(
            "--provider, --manager, --key, --project and --group are for gitlab-ci-variable sinks".to_owned(),
        );
    }
    let Some(path) = args.path.clone() else {
        return usage("a file sink needs --path FILE".to_owned());
    };
    if !path.is_absolute() {
        return usage(format!("--path {} must be absolute (serve may run in another directory)", path.display()));
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => return usage(format!("the directory of --path {} does not exist", path.display())),
    }
    if path.is_dir() {
        return usage(format!("--path {} is a directory; name a file in it", path.display()));
    }
    let Ok(mode) = u32::from_str_radix(args.mode.trim_start_matches("0o"), 8) else {
        return usage(format!("--mode '{}' is not an octal mode such as 0600", args.mode));
    };
    if mode > 0o777 || mode & 0o400 == 0 {
        return usage(format!("--mode {:o} must be at most 0777 and let the owner read the file", mode));
    }
    if mode & 0o007 != 0 {
        return usage(format!("--mode {mode:04o} lets every user read the secret; use 0600, 0640 or 0660"));
    }
    let env_ok = args.env_var.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && args.env_var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if args.format == FileFormat::Env && !env_ok {
        return usage(format!("--env-var '{}' is not a variable name (letters, digits, '_')", args.env_var));
    }
    let timeout = args.exec_timeout.get().as_secs();
    if !(1..=3600).contains(&timeout) {
        return usage(format!("--exec-timeout {} must be between 1s and 1h", args.exec_timeout));
    }
    Ok(FileSettings {
        path,
        mode,
        format: args.format,
        env_var: args.env_var.clone(),
        exec: args.exec.clone(),
        exec_timeout_secs: timeout,
    })
}
