//! `tokenwarden token create NAME`: a project or group access token or a deploy token made at
//! GitLab through a managing token and tracked from version 1 (the secret is never printed); and `token heal
//! NAME`, which makes it again through that manager.

use super::args::TokenCreateArgs;
use super::context::{KeyCreation, open_cipher, open_store};
use super::engine::engine_context;
use super::output::{print_json, time};
use super::{CLI_ACTOR, CliError};
use crate::config::{MAX_GITLAB_LIFETIME, Settings};
use crate::domain::{Policy, PolicyNames, PolicyOverrides, TokenKind};
use crate::engine::create::{CreateError, CreateRequest, create_token};

/// The scopes GitLab accepts for a deploy token.
const DEPLOY_TOKEN_SCOPES: &[&str] =
    &["read_repository", "read_registry", "write_registry", "read_package_registry", "write_package_registry"];

/// GitLab's roles by name, as `--access-level` takes them.
const ROLES: &[(&str, u8)] =
    &[("guest", 10), ("planner", 15), ("reporter", 20), ("developer", 30), ("maintainer", 40), ("owner", 50)];

/// Runs `token create`.
pub async fn run(settings: Settings, args: TokenCreateArgs) -> Result<(), CliError> {
    let (request, capped) = validate(&args, &settings)?;
    if let Some(notice) = &capped {
        eprintln!("{notice}");
    }
    let store = open_store(&settings).await?;
    let cipher = open_cipher(&settings, &store, KeyCreation::Forbidden).await?;
    let context = engine_context(&settings, store, cipher, "cli")?;
    let token = create_token(&context, request, CLI_ACTOR).await.map_err(cli_error)?;
    if args.output.json {
        return print_json(&token);
    }
    eprintln!(
        "created '{}' at GitLab as {:?} (id {}), expires {}; the secret is stored, never printed",
        token.name,
        token.gitlab_name.as_deref().unwrap_or_default(),
        token.external_id.as_deref().unwrap_or("?"),
        time(token.expires_at)
    );
    Ok(())
}

/// Runs `token heal NAME`.
pub async fn heal(settings: Settings, name: crate::domain::TokenName, json: bool) -> Result<(), CliError> {
    let store = open_store(&settings).await?;
    let cipher = open_cipher(&settings, &store, KeyCreation::Forbidden).await?;
    let context = engine_context(&settings, store, cipher, "cli")?;
    let token = crate::engine::heal::heal(&context, &name, CLI_ACTOR, true).await.map_err(cli_error)?;
    if json {
        return print_json(&token);
    }
    eprintln!("healed '{}': version {}, expires {}", token.name, token.version, time(token.expires_at));
    Ok(())
}

fn cli_error(err: CreateError) -> CliError {
    match err {
        CreateError::Invalid(message) => CliError::Usage(message),
        CreateError::Refused(message) => CliError::Failed(message),
        CreateError::Store(err) => err.into(),
    }
}

/// The request the flags describe, or a usage error; with a notice when `--lifetime` was beyond
/// GitLab's maximum and the maximum is used instead.
fn validate(args: &TokenCreateArgs, settings: &Settings) -> Result<(CreateRequest, Option<String>), CliError> {
    let usage = |message: String| Err(CliError::Usage(message));
    let kind = args.kind;
    if !matches!(
        kind,
        TokenKind::GitlabProjectAccessToken | TokenKind::GitlabGroupAccessToken | TokenKind::GitlabDeployToken
    ) {
        return usage(format!(
            "token create makes gitlab-project-access-token, gitlab-group-access-token and gitlab-deploy-token, not {kind}"
        ));
    }
    let Some(namespace) = super::token::namespace_flag(kind, args.project.as_ref(), args.group.as_ref())? else {
        return usage(format!("a {kind} needs --project or --group"));
    };
    if args.overlap.is_some() && !kind.is_deploy_token() {
        return usage(format!(
            "--overlap applies to deploy tokens (an access token is rotated in place), not to {kind}"
        ));
    }
    if kind.is_deploy_token()
        && let Some(bad) = args.scopes.iter().find(|scope| !DEPLOY_TOKEN_SCOPES.contains(&scope.as_str()))
    {
        return usage(format!("--scope {bad:?} is not a deploy token scope: {}", DEPLOY_TOKEN_SCOPES.join(", ")));
    }
    let Some(&(_, access_level)) = ROLES.iter().find(|(name, _)| *name == args.access_level.as_str()) else {
        return usage(format!(
            "--access-level '{}' is not a role: guest, planner, reporter, developer, maintainer or owner",
            args.access_level
        ));
    };
    crate::oauth::link::check_scope_list(&args.scopes).map_err(|err| CliError::Usage(err.to_string()))?;
    if let Some(name) = &args.gitlab_name
        && let Err(message) = crate::store::tokens::check_gitlab_name(name)
    {
        return usage(message);
    }
    let (lifetime, capped) = match args.lifetime {
        Some(asked) if asked > MAX_GITLAB_LIFETIME => (
            Some(MAX_GITLAB_LIFETIME),
            Some(format!(
                "--lifetime {asked} is beyond GitLab's maximum token lifetime: capped at {MAX_GITLAB_LIFETIME} (and so is every rotation)"
            )),
        ),
        asked => (asked, None),
    };
    let policy = PolicyOverrides { lifetime, rotate_before: args.rotate_before, rotate_at_fraction: None };
    let names = PolicyNames {
        lifetime: "--lifetime",
        rotate_before: "--rotate-before",
        rotate_at_fraction: "--rotate-at-fraction",
    };
    Policy::checked(args.kind, &policy, &settings.policy, names).map_err(CliError::Usage)?;
    let request = CreateRequest {
        name: args.name.clone(),
        provider: args.provider.clone(),
        kind,
        namespace,
        manager: args.manager.clone(),
        gitlab_name: args.gitlab_name.clone(),
        scopes: args.scopes.clone(),
        access_level,
        policy,
        overlap: args
            .overlap
            .map(|overlap| chrono::TimeDelta::from_std(overlap.get()).unwrap_or(chrono::TimeDelta::MAX)),
    };
    Ok((request, capped))
}
