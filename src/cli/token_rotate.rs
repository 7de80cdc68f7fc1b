//! `tokenwarden token rotate` and `token reauth`, and the first contact with the provider
//! on `token add`: everything on the command line that talks to a provider.

use chrono::Utc;

use super::context::{KeyCreation, create_store, open_cipher, open_store};
use super::engine::engine_context;
use super::output::print_json;
use super::secret_input::read_secret_line;
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::domain::{Policy, TokenName, TokenState};
use crate::engine::policy::plan_rotation;
use crate::engine::{EngineContext, ForcedRotation, RotationOutcome, build_provider, rotate_now};
use crate::providers::gitlab::expiry_instant;
use crate::providers::{Credential, ProviderError, TokenInfo};
use crate::store::models::ProviderRow;
use crate::store::rotation;
use crate::store::tokens::{self, NewToken, SecretField, secret_context};
use crate::store::{Store, providers};

/// `token rotate NAME`: a forced rotation; exit 0 only when the token ends rotated.
pub async fn rotate(settings: Settings, name: TokenName, json: bool) -> Result<(), CliError> {
    let store = open_store(&settings).await?;
    ensure_token_exists(&store, &name).await?;
    let cipher = open_cipher(&settings, &store, KeyCreation::Forbidden).await?;
    let context = engine_context(&settings, store.clone(), cipher, "cli")?;
    let result = rotate_now(&context, &name, CLI_ACTOR).await?;
    report_forced(&store, &name, result, json).await
}

/// Prints what a forced rotation did and maps it to success or failure.
async fn report_forced(store: &Store, name: &TokenName, result: ForcedRotation, json: bool) -> Result<(), CliError> {
    let token = {
        let name = name.clone();
        store.run(move |conn| tokens::find(conn, &name)).await?
    };
    if json {
        print_json(&token)?;
    }
    match result {
        ForcedRotation::Attempted(report) => match report.outcome {
            RotationOutcome::Rotated { version, .. } => {
                eprintln!("rotated '{name}' to version {version}");
                Ok(())
            }
            RotationOutcome::Retrying { next_attempt_at, error } => Err(CliError::Failed(format!(
                "rotation of '{name}' failed for now ({error}); the next attempt is at {next_attempt_at}"
            ))),
            RotationOutcome::NeedsAttention { reason, error } => {
                Err(CliError::Failed(format!("rotation of '{name}' failed permanently ({reason}): {error}")))
            }
            RotationOutcome::LeaseLost => Err(CliError::Failed(format!(
                "another worker took the rotation of '{name}' over; see `tokenwarden token show {name}`"
            ))),
            RotationOutcome::StoreFailed { error } => Err(CliError::Failed(format!(
                "the provider answered but the result could not be stored ({error}); '{name}' will be recovered"
            ))),
        },
        ForcedRotation::CompletedElsewhere { state: TokenState::Active, version } => {
            eprintln!("a rotation of '{name}' already in flight finished: version {version}");
            Ok(())
        }
        ForcedRotation::CompletedElsewhere { state, .. } => Err(CliError::Failed(format!(
            "a rotation of '{name}' already in flight ended in state {state}: {}",
            token.last_error.unwrap_or_default()
        ))),
        ForcedRotation::Refused(state) => {
            Err(CliError::Failed(refusal(name, state, token.attention_reason.as_deref(), token.provider.as_str())))
        }
    }
}

/// Why a forced rotation is refused in `state`, and what to do.
fn refusal(name: &TokenName, state: TokenState, reason: Option<&str>, provider: &str) -> String {
    match state {
        TokenState::Paused => format!("token '{name}' is paused; run `tokenwarden token resume {name}` first"),
        TokenState::NeedsAttention if reason == Some(crate::domain::CLIENT_CREDENTIALS_REJECTED) => format!(
            "token '{name}' needs attention: the provider rejected its client credentials; update the provider's client secret with `tokenwarden provider update {provider} --client-secret-stdin` (the token is retried at once)"
        ),
        TokenState::NeedsAttention => format!(
            "token '{name}' needs attention ({}); re-authorise it with `token reauth` (OAuth) or remove and re-add it",
            reason.unwrap_or("no reason recorded")
        ),
        TokenState::Expired => format!("token '{name}' has expired; issue a new one and add it again"),
        other => format!("token '{name}' cannot be rotated in state {other}"),
    }
}

/// `token reauth NAME --refresh-token-stdin`: store the new refresh token, then refresh now.
pub async fn reauth(settings: Settings, name: TokenName) -> Result<(), CliError> {
    let refresh_token = read_secret_line("refresh token")?;
    let store = open_store(&settings).await?;
    ensure_token_exists(&store, &name).await?;
    let cipher = open_cipher(&settings, &store, KeyCreation::Forbidden).await?;
    let context = engine_context(&settings, store.clone(), cipher, "cli")?;
    {
        let (name, cipher) = (name.clone(), context.cipher.clone());
        store
            .run(move |conn| {
                let seal =
                    |row_id: &str| cipher.try_seal(secret_context(row_id, SecretField::RefreshToken), &refresh_token);
                rotation::reauthorize(conn, &name, seal, CLI_ACTOR, Utc::now())
            })
            .await?;
    }
    let result = rotate_now(&context, &name, CLI_ACTOR).await?;
    report_forced(&store, &name, result, false).await
}

/// Stores a new token after first contact with its provider: a GitLab token is looked up
/// (`…/self`) to learn its id, scopes and expiry; an OAuth grant is refreshed once, through
/// the same claim/commit path as any rotation.
///
/// The name and the provider are checked before the master key is opened, so that a command
/// refused for them never generates a key file.
pub async fn add_checked(settings: Settings, mut new: NewToken) -> Result<(), CliError> {
    let store = create_store(&settings).await?;
    ensure_name_is_free(&store, &new.name).await?;
    let provider = {
        let (provider_name, kind) = (new.provider.clone(), new.kind);
        store
            .run(move |conn| {
                let row = providers::find_row(conn, &provider_name)?;
                tokens::check_compatible(kind, &row)?;
                Ok(row)
            })
            .await?
    };
    let cipher = open_cipher(&settings, &store, KeyCreation::Allowed).await?;
    let context = engine_context(&settings, store.clone(), cipher, "cli")?;
    if new.kind.is_gitlab_access_token() {
        let info = look_up_gitlab_token(&context, &provider, &new).await?;
        describe_gitlab_token(&mut new, &info, &settings);
        let token = insert(&context, new).await?;
        eprintln!("added token '{}' ({}, expires {})", token.name, token.kind, super::output::time(token.expires_at));
        return Ok(());
    }
    let name = new.name.clone();
    insert(&context, new).await?;
    match rotate_now(&context, &name, CLI_ACTOR).await? {
        ForcedRotation::Attempted(report) => match report.outcome {
            RotationOutcome::Rotated { version, expires_at } => {
                let expires = super::output::time(expires_at);
                eprintln!("added grant '{name}' and refreshed it (version {version}, access token expires {expires})");
                Ok(())
            }
            RotationOutcome::NeedsAttention { reason, error } => {
                let forget = name.clone();
                let why = format!("the provider refused the refresh token ({reason})");
                store.run(move |conn| tokens::undo_add(conn, &forget, CLI_ACTOR, Utc::now(), &why)).await?;
                Err(CliError::Failed(format!(
                    "the provider refused the refresh token ({reason}): {error}; nothing was added"
                )))
            }
            other => {
                eprintln!(
                    "added grant '{name}', but its first refresh did not complete ({other:?}); the daemon will retry"
                );
                Ok(())
            }
        },
        other => Err(CliError::Failed(format!("added grant '{name}', but could not refresh it: {other:?}"))),
    }
}

/// Refuses an unknown token before the master key is opened.
async fn ensure_token_exists(store: &Store, name: &TokenName) -> Result<(), CliError> {
    let name = name.clone();
    store.run(move |conn| tokens::find(conn, &name).map(|_| ())).await?;
    Ok(())
}

/// Refuses a taken name before the provider is contacted (an OAuth refresh would use the grant).
async fn ensure_name_is_free(store: &Store, name: &TokenName) -> Result<(), CliError> {
    let name = name.clone();
    let existing = store.run(move |conn| tokens::find(conn, &name).map(|token| token.name)).await;
    match existing {
        Ok(name) => Err(crate::store::StoreError::AlreadyExists { what: "token", name: name.to_string() }.into()),
        Err(crate::store::StoreError::NotFound { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn insert(context: &EngineContext, new: NewToken) -> Result<crate::store::models::Token, CliError> {
    let cipher = context.cipher.clone();
    Ok(context.store.run(move |conn| tokens::insert(conn, &cipher, &new, CLI_ACTOR, Utc::now())).await?)
}

/// GitLab's `error_description` when an expired token is presented (its API answers 401).
const GITLAB_EXPIRED_DESCRIPTION: &str = "Token has expired";
/// Why `token add` refuses an expired GitLab token.
const EXPIRED: &str = "GitLab reports this token as expired; issue a new one and add that";

/// Asks GitLab about the token and refuses one that is revoked, expired or cannot rotate itself.
async fn look_up_gitlab_token(
    context: &EngineContext,
    row: &ProviderRow,
    new: &NewToken,
) -> Result<TokenInfo, CliError> {
    let resource = new.resource.as_deref();
    let provider = build_provider(context, row, new.kind, resource).map_err(CliError::Usage)?;
    let credential = Credential {
        secret: new.secret.clone(),
        refresh_token: None,
        requested_expiry: Utc::now().date_naive(),
        requested_at: Utc::now(),
    };
    let info = match provider.inspect(&credential).await {
        Ok(Some(info)) => info,
        Ok(None) => return Err(CliError::Failed("the provider cannot look tokens up".into())),
        Err(ProviderError::Permanent { message, .. }) if message.contains(GITLAB_EXPIRED_DESCRIPTION) => {
            return Err(CliError::Usage(EXPIRED.into()));
        }
        // GitLab's own refusals already say so (not said twice); a bare status gets the context.
        Err(ProviderError::Permanent { message, .. }) if message.starts_with("GitLab ") => {
            return Err(CliError::Usage(message));
        }
        Err(ProviderError::Permanent { message, .. }) => {
            return Err(CliError::Usage(format!("GitLab refused the token: {message}")));
        }
        Err(err) => return Err(CliError::Failed(format!("cannot look the token up at GitLab: {err}"))),
    };
    if info.revoked || !info.active {
        return Err(CliError::Usage("GitLab reports this token as revoked or inactive; issue a new one".into()));
    }
    if info.expires_at.is_some_and(|date| expiry_instant(date) <= Utc::now()) {
        return Err(CliError::Usage(EXPIRED.into()));
    }
    if !info.can_rotate_itself() {
        return Err(CliError::Usage(format!(
            "this token's scopes ({}) do not let it rotate itself: it needs the `api` or `self_rotate` scope",
            info.scopes.join(", ")
        )));
    }
    Ok(info)
}

/// Fills in what GitLab said: id, scopes, issue time, expiry and the first planned rotation.
fn describe_gitlab_token(new: &mut NewToken, info: &TokenInfo, settings: &Settings) {
    let now = Utc::now();
    let policy = Policy::resolve(new.kind, &new.policy, &settings.policy);
    new.external_id = Some(info.id.clone());
    new.scopes = Some(info.scopes.join(","));
    new.issued_at = Some(info.created_at.unwrap_or(now).min(now));
    new.expires_at = info.expires_at.map(expiry_instant);
    new.next_rotation_at = match (new.issued_at, new.expires_at) {
        (Some(issued_at), Some(expires_at)) => Some(plan_rotation(new.name.as_str(), issued_at, expires_at, &policy)),
        _ => Some(now),
    };
}
