//! `tokenwarden token add|list|show|history|pause|resume|remove`.

use crate::providers::gitlab_admin::Namespace;
use chrono::Utc;
use serde::Serialize;

use super::args::{OutputArgs, TokenAddArgs, TokenCommand, TokenUpdateArgs};
use super::context::open_store;
use super::output::{print_fields, print_json, print_table, text, time};
use super::secret_input::read_secret_line;
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::domain::{Policy, PolicyNames, PolicyOverrides, TokenKind, TokenName};
use crate::store::Store;
use crate::store::consumers::{self, Consumer};
use crate::store::models::Token;
use crate::store::tokens::{self, NewToken};

/// Runs a `token` subcommand.
pub async fn run(settings: Settings, command: TokenCommand) -> Result<(), CliError> {
    match command {
        TokenCommand::Add(args) => add(settings, args).await,
        TokenCommand::List(output) => list(settings, output).await,
        TokenCommand::Show { name, output } => show(settings, name, output).await,
        TokenCommand::History { name, output } => history(settings, name, output).await,
        TokenCommand::Rotate { name, output } => super::token_rotate::rotate(settings, name, output.json).await,
        TokenCommand::Authorize(args) => super::token_authorize::run(settings, args).await,
        TokenCommand::Create(args) => super::token_create::run(settings, args).await,
        TokenCommand::Heal { name, output } => super::token_create::heal(settings, name, output.json).await,
        TokenCommand::Reauth { name, .. } => super::token_rotate::reauth(settings, name).await,
        TokenCommand::Pause { name } => {
            change(settings, move |store| async move {
                store.run(move |conn| tokens::pause(conn, &name, CLI_ACTOR, Utc::now())).await
            })
            .await
        }
        TokenCommand::Resume { name } => {
            change(settings, move |store| async move {
                store.run(move |conn| tokens::resume(conn, &name, CLI_ACTOR, Utc::now())).await
            })
            .await
        }
        TokenCommand::Update(args) => update(settings, args).await,
        TokenCommand::Remove { name, yes, revoke: true, force } => {
            super::token_revoke::revoke_and_remove(settings, name, yes, force).await
        }
        TokenCommand::Remove { name, yes, revoke: false, .. } => {
            let store = open_store(&settings).await?;
            let shown = name.clone();
            let readers = store.run(move |conn| tokens::remove(conn, &name, yes, CLI_ACTOR, Utc::now())).await?;
            if readers.is_empty() {
                eprintln!("removed token '{shown}'");
            } else {
                eprintln!("removed token '{shown}' and the grants of client(s) {} to read it", readers.join(", "));
            }
            Ok(())
        }
    }
}

/// Applies a state change and reports the token's new state.
async fn change<F, Fut>(settings: Settings, apply: F) -> Result<(), CliError>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<Token, crate::store::StoreError>>,
{
    let store = open_store(&settings).await?;
    let token = apply(store).await?;
    eprintln!("token '{}' is {}", token.name, token.state);
    Ok(())
}

/// A token with its effective policy, as printed by `show` and `list --json`.
#[derive(Serialize)]
struct TokenOutput<'a> {
    #[serde(flatten)]
    token: &'a Token,
    policy: Policy,
}

/// `token show --json`: the token as `token list` prints it, and its consumers.
#[derive(Serialize)]
struct TokenDetailOutput<'a> {
    #[serde(flatten)]
    shown: TokenOutput<'a>,
    consumers: &'a [Consumer],
}

impl<'a> TokenOutput<'a> {
    fn new(token: &'a Token, settings: &Settings) -> Self {
        let policy = Policy::resolve(token.kind, &token.policy_overrides, &settings.policy);
        Self { token, policy }
    }
}

/// The project or group `--project` / `--group` name for a token of `kind`: project access
/// tokens need `--project`, group access tokens `--group`, deploy tokens either; other kinds
/// take neither.
pub(super) fn namespace_flag(
    kind: TokenKind,
    project: Option<&String>,
    group: Option<&String>,
) -> Result<Option<Namespace>, CliError> {
    let given = |value: Option<&String>| value.filter(|value| !value.trim().is_empty()).cloned();
    let usage = |message: String| Err(CliError::Usage(message));
    match (kind, given(project), given(group)) {
        (TokenKind::GitlabProjectAccessToken | TokenKind::GitlabDeployToken, Some(project), None) => {
            Ok(Some(Namespace::Project(project)))
        }
        (TokenKind::GitlabGroupAccessToken | TokenKind::GitlabDeployToken, None, Some(group)) => {
            Ok(Some(Namespace::Group(group)))
        }
        (TokenKind::GitlabProjectAccessToken, _, _) => {
            usage(format!("a {kind} needs --project (numeric id or URL-encoded path)"))
        }
        (TokenKind::GitlabGroupAccessToken, _, _) => {
            usage(format!("a {kind} needs --group (numeric id or URL-encoded path)"))
        }
        (TokenKind::GitlabDeployToken, _, _) => {
            usage(format!("a {kind} needs either --project or --group (numeric id or URL-encoded path)"))
        }
        _ if project.is_some() || group.is_some() => usage(format!(
            "--project and --group apply to project and group access tokens and deploy tokens, not to {kind}"
        )),
        _ => Ok(None),
    }
}

/// Checks the flags against the token kind and builds the policy overrides.
fn validate_add(args: &TokenAddArgs, settings: &Settings) -> Result<(Option<String>, PolicyOverrides), CliError> {
    let usage = |message: String| Err(CliError::Usage(message));
    let kind = args.kind;
    if kind.is_deploy_token() {
        return usage(format!(
            "a {kind} is made by `tokenwarden token create --kind {kind} --manager M` (each successor is made through its manager)"
        ));
    }
    let resource =
        namespace_flag(kind, args.project.as_ref(), args.group.as_ref())?.map(|namespace| namespace.id().to_owned());
    if kind.is_oauth_grant() && !args.refresh_token_stdin {
        return usage(format!("a {kind} grant needs --refresh-token-stdin (the refresh token on standard input)"));
    }
    if kind.is_gitlab_access_token() && !args.secret_stdin {
        return usage(format!("a {kind} needs --secret-stdin (the token on standard input)"));
    }
    let overrides = PolicyOverrides {
        lifetime: args.lifetime,
        rotate_before: args.rotate_before,
        rotate_at_fraction: args.rotate_at_fraction,
    };
    let names = PolicyNames {
        lifetime: "--lifetime",
        rotate_before: "--rotate-before",
        rotate_at_fraction: "--rotate-at-fraction",
    };
    Policy::checked(kind, &overrides, &settings.policy, names).map_err(CliError::Usage)?;
    Ok((resource, overrides))
}

/// Validates the flags, reads the secret from standard input and stores the token.
async fn add(settings: Settings, args: TokenAddArgs) -> Result<(), CliError> {
    let (resource, policy) = validate_add(&args, &settings)?;
    let (secret, refresh_token) = if args.kind.is_oauth_grant() {
        (None, Some(read_secret_line("refresh token")?))
    } else {
        (Some(read_secret_line("access token")?), None)
    };
    let new = NewToken {
        name: args.name,
        provider: args.provider,
        kind: args.kind,
        resource,
        secret,
        refresh_token,
        policy,
        external_id: None,
        issued_at: None,
        expires_at: None,
        next_rotation_at: Some(Utc::now()),
        scopes: None,
    };
    super::token_rotate::add_checked(settings, new).await
}

/// `token update NAME …`: changes the policy (or GitLab name) in place and re-plans at once.
async fn update(settings: Settings, args: TokenUpdateArgs) -> Result<(), CliError> {
    let change = tokens::TokenChange {
        lifetime: args.lifetime,
        rotate_before: args.margin,
        rotate_at_fraction: args.rotate_at_fraction,
        gitlab_name: args.gitlab_name,
    };
    if change.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give --lifetime, --margin, --rotate-at-fraction or --gitlab-name".into(),
        ));
    }
    let names =
        PolicyNames { lifetime: "--lifetime", rotate_before: "--margin", rotate_at_fraction: "--rotate-at-fraction" };
    let store = open_store(&settings).await?;
    let defaults = settings.policy;
    let name = args.name;
    let token = store
        .run(move |conn| {
            let replan = |token: &Token| crate::engine::policy::replanned(token, &defaults, names);
            tokens::update(conn, &name, &change, replan, CLI_ACTOR, Utc::now())
        })
        .await?;
    let shown = TokenOutput::new(&token, &settings);
    if args.output.json {
        return print_json(&shown);
    }
    eprintln!(
        "updated token '{}': lifetime {}, margin {}, rotate at fraction {}; next rotation {}",
        token.name,
        shown.policy.lifetime,
        shown.policy.rotate_before,
        shown.policy.rotate_at_fraction,
        time(token.next_rotation_at)
    );
    Ok(())
}

async fn list(settings: Settings, output: OutputArgs) -> Result<(), CliError> {
    let store = open_store(&settings).await?;
    let list = store.run(tokens::list).await?;
    if output.json {
        let shown: Vec<TokenOutput<'_>> = list.iter().map(|t| TokenOutput::new(t, &settings)).collect();
        return print_json(&shown);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.name.to_string(),
                t.provider.to_string(),
                t.kind.to_string(),
                t.state.to_string(),
                t.version.to_string(),
                time(t.expires_at),
                time(t.next_rotation_at),
            ]
        })
        .collect();
    print_table(&["NAME", "PROVIDER", "KIND", "STATE", "VERSION", "EXPIRES", "NEXT ROTATION"], &rows);
    Ok(())
}

async fn show(settings: Settings, name: TokenName, output: OutputArgs) -> Result<(), CliError> {
    let store = open_store(&settings).await?;
    let (token, consumers) = store
        .run(move |conn| {
            let token = tokens::find_shown(conn, &name, tokens::ReadAs::Operator)?;
            let consumers = consumers::of_token(conn, &token.id)?;
            Ok((token, consumers))
        })
        .await?;
    let shown = TokenOutput::new(&token, &settings);
    if output.json {
        return print_json(&TokenDetailOutput { shown, consumers: &consumers });
    }
    let mut fields = vec![
        ("name", token.name.to_string()),
        ("provider", token.provider.to_string()),
        ("kind", token.kind.to_string()),
    ];
    if let Some(project) = &token.project {
        fields.push(("project", project.clone()));
    }
    if let Some(group) = &token.group {
        fields.push(("group", group.clone()));
    }
    if let Some(gitlab_name) = &token.gitlab_name {
        fields.push(("gitlab name", gitlab_name.clone()));
    }
    if let Some(manager) = &token.manager {
        fields.push(("manager", manager.clone()));
    }
    if let Some(username) = &token.username {
        fields.push(("username", username.clone()));
    }
    if let Some(owner) = &token.authorized_as {
        fields.push((
            "authorized as",
            format!("@{} (id {}, {})", owner.username, owner.id, time(Some(owner.authorized_at))),
        ));
    }
    fields.extend([
        ("state", token.state.to_string()),
        ("version", token.version.to_string()),
        ("expires at", time(token.expires_at)),
        ("next rotation", time(token.next_rotation_at)),
        ("lifetime", shown.policy.lifetime.to_string()),
        ("rotate before", shown.policy.rotate_before.to_string()),
        ("rotate at fraction", shown.policy.rotate_at_fraction.to_string()),
        ("last success", time(token.last_success_at)),
        ("last failure", time(token.last_failure_at)),
        ("last error", text(token.last_error.as_deref())),
        ("attention reason", text(token.attention_reason.as_deref())),
    ]);
    if let Some(remedy) = &token.remedy {
        fields.push(("remedy", remedy.clone()));
    }
    if let Some(rotates) = token.refresh_token_rotates {
        let answer = if rotates { "yes (a new one with every refresh)" } else { "no (the server keeps it valid)" };
        fields.push(("refresh token rotates", answer.to_owned()));
    }
    if let Some(scopes) = &token.scopes {
        fields.push(("scopes", scopes.clone()));
    }
    fields.push(("created", time(Some(token.created_at))));
    for consumer in &consumers {
        let acknowledged = match (consumer.acknowledged_version, consumer.acknowledged_at) {
            (Some(version), Some(at)) => {
                let behind = token.version - version;
                format!("{} uses version {version} (said {}; {behind} behind)", consumer.client, time(Some(at)))
            }
            _ => format!("{} (has not acknowledged a version)", consumer.client),
        };
        fields.push(("consumer", acknowledged));
    }
    for pending in &token.pending_revocations {
        let mut line = format!(
            "version {} (GitLab id {}): when every reader has version {}, at the latest {}",
            pending.version,
            pending.external_id,
            pending.replaced_by_version,
            time(Some(crate::store::models::utc(pending.not_after)))
        );
        if let Some(error) = &pending.last_error {
            line.push_str(&format!(
                "; {} attempt(s) failed, next {}: {}",
                pending.attempts,
                time(Some(crate::store::models::utc(pending.next_attempt_at))),
                super::one_line(error)
            ));
        }
        fields.push(("pending revocation", line));
    }
    print_fields(&fields);
    Ok(())
}

async fn history(settings: Settings, name: TokenName, output: OutputArgs) -> Result<(), CliError> {
    let store = open_store(&settings).await?;
    let entries = store.run(move |conn| tokens::history(conn, &name)).await?;
    if output.json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.version.to_string(),
                e.event.clone(),
                e.actor.clone(),
                time(Some(e.occurred_at)),
                time(e.expires_at),
                e.scopes.as_deref().map_or_else(String::new, |scopes| format!("scope changed to '{scopes}'")),
            ]
        })
        .collect();
    print_table(&["VERSION", "EVENT", "BY", "WHEN", "EXPIRES", "NOTE"], &rows);
    Ok(())
}
