//! `tokenwarden provider update`: change a provider's URLs or client credentials, then retry
//! at once — through the ordinary lease — the tokens the old client credentials had failed.

use chrono::Utc;
use serde::Serialize;

use super::args::ProviderUpdateArgs;
use super::context::{KeyCreation, open_cipher, open_store};
use super::engine::engine_context;
use super::output::print_json;
use super::provider::validate_http_url;
use super::secret_input::read_secret_line;
use super::{CLI_ACTOR, CliError};
use crate::config::Settings;
use crate::domain::{ProviderKind, TokenName};
use crate::engine::{ForcedRotation, RotationOutcome, rotate_now};
use crate::store::models::Provider;
use crate::store::providers::{self, ProviderChanges};

/// What `provider update --json` prints: the provider and what happened to each released token.
#[derive(Debug, Serialize)]
struct UpdateOutput {
    provider: Provider,
    retried: Vec<Retried>,
}

/// One token retried after the update.
#[derive(Debug, Serialize)]
struct Retried {
    token: String,
    outcome: String,
}

/// Validates the flags, reads a new secret if asked, stores the change and retries.
pub async fn run(settings: Settings, args: ProviderUpdateArgs) -> Result<(), CliError> {
    let name = args.name.clone();
    let changes = validate(&args)?;
    let store = open_store(&settings).await?;
    let existing = {
        let name = name.clone();
        store.run(move |conn| providers::find(conn, &name)).await?
    };
    check_kind(&existing, &changes)?;
    let changes = ProviderChanges {
        client_secret: if args.fields.client_secret_stdin {
            Some(read_secret_line("OAuth client secret")?)
        } else {
            None
        },
        ..changes
    };
    let context =
        engine_context(&settings, store.clone(), open_cipher(&settings, &store, KeyCreation::Forbidden).await?, "cli")?;
    let updated = {
        let (name, cipher) = (name.clone(), context.cipher.clone());
        store.run(move |conn| providers::update(conn, &cipher, &name, &changes, CLI_ACTOR, Utc::now())).await?
    };
    eprintln!("updated provider '{name}'");
    let mut retried = Vec::new();
    for token in &updated.released {
        let token_name: TokenName =
            token.parse().map_err(|err| CliError::Failed(format!("stored token name '{token}': {err}")))?;
        let outcome = describe(rotate_now(&context, &token_name, CLI_ACTOR).await?);
        eprintln!("retried '{token}' with the new client credentials: {outcome}");
        retried.push(Retried { token: token.clone(), outcome });
    }
    if args.output.json {
        return print_json(&UpdateOutput { provider: updated.provider, retried });
    }
    Ok(())
}

/// The changes the flags ask for (the secret is read later, after every check passed).
fn validate(args: &ProviderUpdateArgs) -> Result<ProviderChanges, CliError> {
    let changes = ProviderChanges {
        url: args.fields.url.as_deref().map(|u| validate_http_url("--url", u)).transpose()?,
        token_url: args.fields.token_url.as_deref().map(|u| validate_http_url("--token-url", u)).transpose()?,
        client_id: args.fields.client_id.clone(),
        client_secret: None,
        redirect_uri: args
            .fields
            .redirect_uri
            .as_deref()
            .map(|u| validate_http_url("--redirect-uri", u))
            .transpose()?,
        client_auth: args.fields.client_auth,
        scopes: super::provider::scopes_flag(&args.fields.scopes)?,
        authorization_url: args
            .fields
            .authorize_url
            .as_deref()
            .map(|u| validate_http_url("--authorize-url", u))
            .transpose()?,
    };
    if changes.client_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
        return Err(CliError::Usage("--client-id is empty".into()));
    }
    if changes.changed_fields().is_empty() && !args.fields.client_secret_stdin {
        return Err(CliError::Usage(
            "nothing to change: give --url, --token-url, --client-id, --client-secret-stdin, --redirect-uri, --client-auth, --scope or --authorize-url"
                .into(),
        ));
    }
    Ok(changes)
}

/// Refuses a change that does not fit the provider's kind.
fn check_kind(provider: &Provider, changes: &ProviderChanges) -> Result<(), CliError> {
    match provider.kind {
        ProviderKind::Gitlab if changes.token_url.is_some() => Err(CliError::Usage(format!(
            "provider '{}' is a gitlab provider: it takes --url, not --token-url",
            provider.name
        ))),
        ProviderKind::Gitlab if changes.authorization_url.is_some() => Err(CliError::Usage(format!(
            "provider '{}' is a gitlab provider: its authorization endpoint is {{url}}/oauth/authorize",
            provider.name
        ))),
        ProviderKind::Oauth2 if changes.url.is_some() => Err(CliError::Usage(format!(
            "provider '{}' is an oauth2 provider: it takes --token-url, not --url",
            provider.name
        ))),
        _ => Ok(()),
    }
}

/// A forced rotation's result in a few words.
fn describe(result: ForcedRotation) -> String {
    match result {
        ForcedRotation::Attempted(report) => match report.outcome {
            RotationOutcome::Rotated { version, .. } => format!("rotated to version {version}"),
            RotationOutcome::Retrying { error, .. } => format!("failed for now, will retry: {error}"),
            RotationOutcome::NeedsAttention { reason, error } => format!("needs attention ({reason}): {error}"),
            RotationOutcome::LeaseLost => "taken over by another worker".to_owned(),
            RotationOutcome::StoreFailed { error } => format!("result not stored: {error}"),
        },
        ForcedRotation::CompletedElsewhere { state, version } => {
            format!("rotated by another worker: {state}, version {version}")
        }
        ForcedRotation::Refused(state) => format!("not retried: the token is {state}"),
    }
}
